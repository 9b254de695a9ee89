// Duplex voice chat: WebRTC (pipecat SmallWebRTC, POST /api/offer) or the /ws fallback (raw PCM16), plain JS.
"use strict";
const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};
const withToken = (url, params = {}) => {
  const u = new URL(url, location.href);
  for (const [k, v] of Object.entries(params)) if (v) u.searchParams.set(k, v);
  if (token) u.searchParams.set("token", token);
  return u;
};

// ---- UI state -------------------------------------------------------------------------------------------------
const ui = {
  state(s) { const el = $("state"); el.textContent = s; el.className = `state ${s}`; window.duplexState = s; },
  botLine: null,
  userInterim: null,
  add(role, text, cls = "") {
    const div = document.createElement("div");
    div.className = `msg ${role} ${cls}`;
    div.innerHTML = `<b>${role === "user" ? "You" : role === "bot" ? "Bot" : "•"}</b><span></span>`;
    div.lastChild.textContent = text;
    $("transcript").appendChild(div);
    $("transcript").scrollTop = 1e9;
    return div;
  },
};
window.duplexEvents = [];

function onEvent(ev) {
  if (ev.label === "rtvi-ai") return; // pipecat client protocol, for pipecat's client SDKs on the same channel
  window.duplexEvents.push(ev);
  switch (ev.type) {
    case "ready":
      if (ev.engines) showEngines(ev.engines);
      ui.state("listening");
      ui.add("system", `connected (voice ${ev.voice})`);
      break;
    case "state":
      ui.state(ev.state);
      break;
    case "transcript":
      if (ev.role === "user") {
        if (ev.final) {
          if (ui.userInterim) { ui.userInterim.remove(); ui.userInterim = null; }
          ui.add("user", ev.text);
          ui.botLine = null;
        } else {
          if (!ui.userInterim) ui.userInterim = ui.add("user", "", "interim");
          ui.userInterim.lastChild.textContent = ev.text;
        }
      } else {
        if (!ui.botLine) ui.botLine = ui.add("bot", "");
        const span = ui.botLine.lastChild;
        span.textContent = (span.textContent + " " + ev.text).replace(/\s+/g, " ").trim();
      }
      break;
    case "latency": {
      const li = document.createElement("li");
      const b = ev.breakdownMs || {};
      li.textContent = `${ev.voiceToVoiceMs} ms`;
      li.title = Object.entries(b).map(([k, v]) => `${k}: ${v ?? "-"} ms`).join("\n");
      $("latencies").appendChild(li);
      break;
    }
    case "interrupted":
      if (player) player.flush();
      ui.botLine = null;
      break;
    case "warning":
      ui.add("system", ev.message);
      break;
    case "error":
      ui.state("error");
      ui.add("system", `${ev.code}: ${ev.message}`);
      break;
  }
}

let liveEngines = null;
function showEngines(engines) {
  liveEngines = engines;
  $("engines").textContent = ["tts", "stt", "llm"]
    .map((k) => `${k.toUpperCase()}: ${engines[k].engine}${engines[k].state !== "ready" ? ` (${engines[k].state})` : ""}`)
    .join(" · ");
  $("engines").title = ["tts", "stt", "llm"].map((k) => `${k}: ${engines[k].reason}`).join("\n");
}

async function refreshHealth() {
  try {
    const h = await (await fetch("/healthz")).json();
    if (h.engines) showEngines(h.engines);
    return h;
  } catch (e) { $("engines").textContent = "server unreachable"; }
}

async function loadVoices(select) {
  const r = await fetch("/api/v1/voices", { headers: authHeaders });
  if (!r.ok) return;
  const body = await r.json();
  const sel = $("voice");
  sel.innerHTML = "";
  for (const v of body.voices) {
    const o = document.createElement("option");
    o.value = v.id;
    o.textContent = `${v.name} (${v.language})${v.isDefault ? " — default" : ""}`;
    sel.appendChild(o);
  }
  sel.value = select || body.default;
}

// ---- WebRTC ---------------------------------------------------------------------------------------------------
let pc = null, ws = null, micStream = null, capture = null, player = null;

function waitIceGathering(conn) {
  if (conn.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => { if (conn.iceGatheringState === "complete") { conn.removeEventListener("icegatheringstatechange", check); resolve(); } };
    conn.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000); // host candidates are enough on a LAN/loopback
  });
}

async function connectWebRTC(voice) {
  micStream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  pc = new RTCPeerConnection();
  const dc = pc.createDataChannel("duplex");
  dc.onmessage = (e) => { try { onEvent(JSON.parse(e.data)); } catch (_) {} };
  pc.addTransceiver(micStream.getAudioTracks()[0], { direction: "sendrecv" });
  pc.ontrack = (e) => { $("bot-audio").srcObject = e.streams[0] || new MediaStream([e.track]); };
  pc.onconnectionstatechange = () => {
    if (["failed", "closed", "disconnected"].includes(pc?.connectionState)) hangup(`WebRTC ${pc.connectionState}`);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await waitIceGathering(pc);
  const r = await fetch(withToken("/api/offer", { voice }), {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  if (!r.ok) {
    const err = (await r.json().catch(() => ({}))).error || { code: r.status, message: r.statusText };
    throw new Error(`${err.code}: ${err.message}`);
  }
  await pc.setRemoteDescription(await r.json());
}

// ---- WebSocket fallback: PCM16 16 kHz up, PCM16 24 kHz down ---------------------------------------------------
class Player {
  constructor(rate) { this.ctx = new AudioContext({ sampleRate: rate }); this.rate = rate; this.next = 0; this.sources = new Set(); }
  play(buf) {
    const pcm = new Int16Array(buf);
    if (!pcm.length) return;
    const b = this.ctx.createBuffer(1, pcm.length, this.rate);
    const ch = b.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
    const src = this.ctx.createBufferSource();
    src.buffer = b;
    src.connect(this.ctx.destination);
    const now = this.ctx.currentTime;
    if (this.next < now) this.next = now + 0.05;
    src.start(this.next);
    this.next += b.duration;
    this.sources.add(src);
    src.onended = () => this.sources.delete(src);
  }
  flush() { for (const s of this.sources) { try { s.stop(); } catch (_) {} } this.sources.clear(); this.next = 0; }
  close() { this.flush(); this.ctx.close(); }
}

async function connectWS(voice) {
  micStream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const url = withToken("/ws", { voice });
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error("WebSocket failed")); });
  ws.onclose = () => hangup("disconnected");
  ws.onmessage = (e) => {
    if (typeof e.data === "string") {
      const ev = JSON.parse(e.data);
      if (ev.type === "ready") { player = new Player(ev.outputSampleRate); startCapture(ev.inputSampleRate); }
      onEvent(ev);
    } else if (player) {
      player.play(e.data);
    }
  };
}

function startCapture(rate) {
  const ctx = new AudioContext({ sampleRate: rate });
  const src = ctx.createMediaStreamSource(micStream);
  const proc = ctx.createScriptProcessor(1024, 1, 1); // ~64 ms at 16 kHz; AudioWorklet would need a second file
  proc.onaudioprocess = (e) => {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const f = e.inputBuffer.getChannelData(0);
    const pcm = new Int16Array(f.length);
    for (let i = 0; i < f.length; i++) pcm[i] = Math.max(-1, Math.min(1, f[i])) * 32767;
    ws.send(pcm.buffer);
  };
  src.connect(proc);
  proc.connect(ctx.destination);
  capture = { ctx, src, proc };
}

// ---- connect / hang up ----------------------------------------------------------------------------------------
async function connect() {
  $("connect").disabled = true;
  ui.state("connecting");
  const voice = $("voice").value;
  try {
    if ($("transport").value === "webrtc") await connectWebRTC(voice);
    else await connectWS(voice);
    $("hangup").disabled = false;
  } catch (e) {
    ui.add("system", `could not connect: ${e.message}`);
    hangup();
    ui.state("error");
  }
}

function hangup(reason) {
  if (reason && (pc || ws)) ui.add("system", reason);
  const p = pc, w = ws;
  pc = null; ws = null;
  if (p) p.close();
  if (w) { try { w.send(JSON.stringify({ type: "stop" })); } catch (_) {} w.close(); }
  if (capture) { capture.proc.disconnect(); capture.src.disconnect(); capture.ctx.close(); capture = null; }
  if (player) { player.close(); player = null; }
  if (micStream) { micStream.getTracks().forEach((t) => t.stop()); micStream = null; }
  $("connect").disabled = false;
  $("hangup").disabled = true;
  ui.state("idle");
}

// ---- clone my voice -------------------------------------------------------------------------------------------
let cloneBlob = null, recorder = null;
async function toggleRecord() {
  if (recorder) { recorder.stop(); return; }
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    cloneBlob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
    recorder = null;
    $("record").textContent = "Record";
    $("clone-status").textContent = `recorded ${(cloneBlob.size / 1024).toFixed(0)} KB`;
    $("clone-save").disabled = false;
  };
  recorder.start();
  $("record").textContent = "Stop (5-10 s)";
  $("clone-status").textContent = "recording…";
  setTimeout(() => recorder && recorder.state === "recording" && recorder.stop(), 10000);
}

async function saveVoice() {
  const file = $("clone-file").files[0];
  const audio = file || cloneBlob;
  if (!audio) return;
  const form = new FormData();
  form.append("audio", audio, file ? file.name : "recording.webm");
  form.append("name", $("clone-name").value || "my voice");
  form.append("transcript", $("clone-transcript").value);
  $("clone-status").textContent = "building the voice…";
  const r = await fetch("/api/v1/voices", { method: "POST", body: form, headers: authHeaders });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) { $("clone-status").textContent = `${body.error?.code}: ${body.error?.message}`; return; }
  await loadVoices(body.id);
  const espeak = liveEngines && liveEngines.tts.engine === "espeak";
  $("clone-status").textContent = `voice "${body.name}" added and selected` +
    (pc || ws ? ": hang up and start again to hear it" : "") +
    (espeak ? " (the espeak fallback cannot clone voices: run the server with --tts qwen3 to hear yours)" : "");
}

$("connect").onclick = connect;
$("hangup").onclick = () => hangup("hung up");
$("record").onclick = toggleRecord;
$("clone-file").onchange = () => { $("clone-save").disabled = !$("clone-file").files.length && !cloneBlob; };
$("clone-save").onclick = saveVoice;
refreshHealth();
setInterval(() => { if (!pc && !ws) refreshHealth(); }, 5000);
loadVoices();
