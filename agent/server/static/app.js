// Duplex voice chat: WebRTC (pipecat SmallWebRTC, POST /api/offer) or the /ws fallback (raw PCM16), plain JS.
// The page follows the server: which models load and how far (/healthz), whether it accepts sessions, whether it
// went away; it asks for the access token when the server wants one, and says what to do when the microphone
// cannot be had (a page on plain http under another host name).
"use strict";
const $ = (id) => document.getElementById(id);

// ---- the access token: from ?token= (moved into this tab's storage and out of the address bar), or typed ---------
const TOKEN_KEY = "duplex-token";
let token = (() => {
  const params = new URLSearchParams(location.search);
  const given = params.get("token");
  if (given !== null) {
    sessionStorage.setItem(TOKEN_KEY, given);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY);
})();
const relayOnly = new URLSearchParams(location.search).get("relay") === "1"; // test a TURN server: relay only
const authHeaders = () => (token ? { Authorization: `Bearer ${token}` } : {});
const withToken = (url, params = {}) => {
  const u = new URL(url, location.href);
  for (const [k, v] of Object.entries(params)) if (v) u.searchParams.set(k, v);
  if (token) u.searchParams.set("token", token);
  return u;
};

class AuthError extends Error {}

async function api(path, options = {}) {
  const r = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
  if (r.status === 401) {
    const err = (await r.json().catch(() => ({}))).error || {};
    askToken(token ? "That token is not valid: paste the right one." : null);
    throw new AuthError(err.message || "this server needs an access token");
  }
  return r;
}

function askToken(why) {
  $("notice-auth").hidden = false;
  if (why) $("token-why").textContent = why;
  refreshStart();
}

$("token-form").onsubmit = async (e) => {
  e.preventDefault();
  const value = $("token-input").value.trim();
  if (!value) return;
  token = value;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("notice-auth").hidden = true;
  $("token-input").value = "";
  await loadSetup();
};

// ---- UI state -----------------------------------------------------------------------------------------------------
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
window.duplexLevel = 0;

const STEPS = [ // breakdownMs keys shown under each turn; the bar shows the ones that add up to voice-to-voice
  ["vad_stop_wait", "VAD stop", "vad"],
  ["turn_end_wait", "turn end", "turn"],
  ["stt", "STT", null],
  ["llm_first_sentence", "LLM first sentence", "llm"],
  ["tts_first_audio", "TTS first audio", "tts"],
];

function showLatency(ev) {
  const b = ev.breakdownMs || {};
  const li = document.createElement("li");
  const total = document.createElement("div");
  total.className = "total";
  total.textContent = `${(ev.voiceToVoiceMs / 1000).toFixed(2)} s voice-to-voice`;
  const bar = document.createElement("div");
  bar.className = "bar";
  for (const [key, label, cls] of STEPS) {
    if (!cls || !b[key]) continue;
    const seg = document.createElement("span");
    seg.className = cls;
    seg.style.flex = String(Math.max(0, b[key]));
    seg.title = `${label}: ${b[key]} ms`;
    bar.appendChild(seg);
  }
  const parts = document.createElement("div");
  parts.className = "parts";
  parts.textContent = STEPS.filter(([key]) => b[key] !== undefined && b[key] !== null)
    .map(([key, label]) => `${label} ${b[key]} ms`).join(" · ");
  li.append(total, bar, parts);
  $("latencies").appendChild(li);
}

function onEvent(ev) {
  if (ev.label === "rtvi-ai") return; // pipecat client protocol, for pipecat's client SDKs on the same channel
  window.duplexEvents.push(ev);
  switch (ev.type) {
    case "ready":
      if (ev.engines) showEngines(ev.engines);
      ui.state("listening");
      $("text").disabled = $("send").disabled = false; // the events channel is open: typed turns can go
      $("text").placeholder = session && session.mic ? "Type to the bot (or just speak)" : "Type to the bot";
      ui.add("system", `connected (voice ${ev.voice}${ev.language ? `, ${ev.language}` : ""})` +
        (session && !session.mic ? ": no microphone, type to talk" : ""));
      break;
    case "state":
      ui.state(ev.state);
      break;
    case "transcript":
      if (ev.role === "user") {
        if (ev.final) {
          if (ui.userInterim) { ui.userInterim.remove(); ui.userInterim = null; }
          ui.add("user", ev.text, ev.typed ? "typed" : "");
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
    case "latency":
      showLatency(ev);
      break;
    case "interrupted":
      if (player) player.flush();
      ui.botLine = null;
      break;
    case "flush": // the bot holds for a sound over it: what it sends next continues where we had got to
      if (player) player.flush();
      break;
    case "warning":
      ui.add("system", ev.message);
      break;
    case "error":
      ui.add("system", `${ev.code}: ${ev.message}`, "error");
      if (ev.code === "UNAUTHORIZED") askToken("That token is not valid: paste the right one.");
      if (!ev.recoverable) ui.state("error");
      break;
  }
}

// ---- the server: engines, loading progress, readiness, going away ------------------------------------------------
let health = null, config = null, needSetup = true;

function fmtBytes(n) {
  if (n === null || n === undefined) return "?";
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(0)} MB` : `${(n / 1e3).toFixed(0)} kB`;
}

function showEngines(engines) {
  $("engines").textContent = ["tts", "stt", "llm"]
    .map((k) => `${k.toUpperCase()}: ${engines[k].engine}${engines[k].state !== "ready" ? ` (${engines[k].state})` : ""}`)
    .join(" · ");
  $("engines").title = ["tts", "stt", "llm"].map((k) => `${k}: ${engines[k].reason}`).join("\n");
  const fallbacks = ["tts", "stt", "llm"].filter((k) => engines[k].fallback);
  const note = $("notice-fallback");
  note.hidden = !fallbacks.length;
  if (fallbacks.length) {
    note.innerHTML = "<b>Fallback engines are live:</b> ";
    const list = document.createElement("span");
    list.textContent = fallbacks.map((k) => `${k.toUpperCase()} ${engines[k].engine} (${engines[k].reason})`).join("; ");
    note.append(list, document.createTextNode(
      ". They run on any machine but sound robotic, recognise less and cannot clone voices; the engines Duplex is " +
      "built for are Qwen3-TTS (a CUDA GPU) and Parakeet."));
  }
}

function showLoading(h) {
  const el = $("notice-loading");
  el.hidden = h.status !== "loading";
  if (el.hidden) return;
  el.innerHTML = "<b>Loading the models.</b> Start is enabled when they are ready.<br>";
  for (const k of ["tts", "stt", "llm"]) {
    const e = h.engines[k];
    const line = document.createElement("div");
    line.className = `loading-${k}`;
    let what = `${k.toUpperCase()} ${e.engine}${e.model ? ` (${e.model})` : ""}: `;
    if (e.state === "ready") what += "ready";
    else if (e.state === "waiting") what += "waiting";
    else if (e.download && e.step === "downloading") {
      const { receivedBytes: got, totalBytes: total } = e.download;
      what += `downloading ${total ? `${Math.floor((100 * got) / total)} % (${fmtBytes(got)} of ${fmtBytes(total)})`
        : fmtBytes(got)}`;
    } else what += e.step ? `${e.step}…` : "loading…";
    line.textContent = what;
    if (e.download && e.download.totalBytes && e.state !== "ready") {
      const bar = document.createElement("span");
      bar.className = "progress";
      bar.innerHTML = "<span></span>";
      bar.firstChild.style.width = `${Math.min(100, (100 * e.download.receivedBytes) / e.download.totalBytes)}%`;
      line.append(" ", bar);
    }
    el.appendChild(line);
  }
}

function showFailed(h) {
  const el = $("notice-failed");
  el.hidden = h.status !== "failed";
  if (el.hidden) return;
  const errors = ["tts", "stt", "llm"].map((k) => h.engines[k].error).filter(Boolean);
  const why = errors.length ? errors.join("; ") : (h.models.pipeline.error || h.models.tts.error || "unknown");
  el.textContent = `The server cannot start voice sessions: ${why}. Restart it with another engine or the model in place.`;
}

function showLanguages(h) {
  const sel = $("language");
  const keep = sel.value || (config && config.language) || "English";
  const langs = (h.models && h.models.tts.languages && h.models.tts.languages.length) ? h.models.tts.languages : [keep];
  if (sel.options.length === langs.length) return;
  sel.innerHTML = "";
  for (const l of langs) sel.appendChild(new Option(l, l));
  sel.value = langs.includes(keep) ? keep : langs[0];
}

function refreshStart() {
  const ok = health && health.ready && !session && $("notice-auth").hidden && !needSetup;
  $("connect").disabled = !ok;
  if (health && health.status === "ok" && !health.ready && !session) {
    $("connect").title = `the server is at its session limit (${health.sessions.max}); Start comes back when one ends`;
  } else $("connect").title = "";
}

let healthFailures = 0;
async function pollHealth() {
  try {
    const r = await fetch("/healthz", { cache: "no-store" });
    const h = await r.json();
    health = window.duplexHealth = h;
    healthFailures = 0;
    $("notice-offline").hidden = true;
    showEngines(h.engines);
    showLoading(h);
    showFailed(h);
    showLanguages(h);
    if (needSetup && $("notice-auth").hidden) await loadSetup();
  } catch (e) {
    healthFailures += 1;
    health = window.duplexHealth = null;
    $("notice-offline").hidden = false;
    $("engines").textContent = "server unreachable";
    if (session && healthFailures >= 2) hangup("the server stopped answering", "disconnected");
  }
  refreshStart();
  const busy = !health || health.status === "loading";
  setTimeout(pollHealth, session ? 3000 : busy ? 1000 : 5000);
}

async function loadSetup() {
  try {
    const r = await api("/api/config");
    if (!r.ok) return;
    config = await r.json();
    needSetup = false;
    $("notice-auth").hidden = true;
    await loadVoices();
  } catch (e) {
    if (!(e instanceof AuthError)) console.warn(e);
  }
  refreshStart();
}

async function loadVoices(select) {
  const r = await api("/api/v1/voices");
  if (!r.ok) return;
  const body = await r.json();
  const sel = $("voice");
  sel.innerHTML = "";
  for (const v of body.voices) {
    sel.appendChild(new Option(`${v.name} (${v.language})${v.isDefault ? " — default" : ""}`, v.id));
  }
  sel.value = select || body.default;
}

// ---- the microphone: secure context, picker, level meter, mute ---------------------------------------------------
const micUsable = window.isSecureContext && !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
if (!micUsable) {
  $("notice-insecure").hidden = false;
  $("insecure-origin").textContent = location.origin;
  const local = `${location.protocol}//localhost${location.port ? `:${location.port}` : ""}${location.pathname}`;
  $("insecure-local").textContent = local;
  $("insecure-local").href = local;
  $("connect").textContent = "Start (typing only)";
  $("record").disabled = true;
  $("record").title = "recording needs the microphone: upload a clip instead";
  $("mic").disabled = true;
}

async function openMic() {
  if (!micUsable) return null;
  const deviceId = $("mic").value;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        deviceId: deviceId ? { exact: deviceId } : undefined,
        echoCancellation: true, noiseSuppression: true, autoGainControl: true,
      },
    });
    await listMics();
    return stream;
  } catch (e) {
    ui.add("system", `no microphone (${e.name === "NotAllowedError" ? "blocked: allow it in the address bar" : e.message}); type to talk`, "error");
    return null;
  }
}

async function listMics() {
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audioinput");
  const sel = $("mic");
  const keep = sel.value;
  sel.innerHTML = "";
  sel.appendChild(new Option("default", ""));
  devices.forEach((d, i) => { if (d.deviceId && d.deviceId !== "default") sel.appendChild(new Option(d.label || `microphone ${i + 1}`, d.deviceId)); });
  sel.value = [...sel.options].some((o) => o.value === keep) ? keep : "";
}

let meter = null;
function startMeter(stream) {
  stopMeter();
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    const db = 20 * Math.log10(Math.sqrt(sum / buf.length) + 1e-9);
    const level = session && session.muted ? 0 : Math.max(0, Math.min(1, (db + 60) / 60));
    window.duplexLevel = level;
    $("level").style.width = `${Math.round(level * 100)}%`;
  }, 100);
  meter = { ctx, timer };
}
function stopMeter() {
  if (!meter) return;
  clearInterval(meter.timer);
  meter.ctx.close();
  meter = null;
  window.duplexLevel = 0;
  $("level").style.width = "0";
}

function setMuted(muted) {
  if (!session || !session.mic) return;
  session.muted = muted;
  session.mic.getAudioTracks().forEach((t) => { t.enabled = !muted; });
  $("mute").textContent = muted ? "Unmute" : "Mute";
  $("mute").setAttribute("aria-pressed", String(muted));
}

async function switchMic() {
  if (!session || !session.mic) return;
  const stream = await openMic();
  if (!stream) return;
  session.mic.getTracks().forEach((t) => t.stop());
  session.mic = stream;
  if (session.sender) await session.sender.replaceTrack(stream.getAudioTracks()[0]);
  if (session.capture) { stopCapture(); startCapture(session.inputRate); }
  setMuted(session.muted);
  startMeter(stream);
}

// ---- WebRTC ---------------------------------------------------------------------------------------------------
let session = null, player = null;

function waitIceGathering(conn) {
  if (conn.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => { if (conn.iceGatheringState === "complete") { conn.removeEventListener("icegatheringstatechange", check); resolve(); } };
    conn.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, (config && config.iceServers.length) ? 6000 : 3000); // host candidates suffice on a LAN
  });
}

function silentTrack() { // typing only: the server's peer still gets an audio track, of silence
  const ctx = new AudioContext();
  session.silence = ctx;
  return ctx.createMediaStreamDestination().stream.getAudioTracks()[0];
}

async function connectWebRTC(voice, language) {
  const pc = new RTCPeerConnection({ iceServers: (config && config.iceServers) || [], iceTransportPolicy: relayOnly ? "relay" : "all" });
  session.pc = pc;
  const dc = pc.createDataChannel("duplex");
  session.dc = dc;
  dc.onmessage = (e) => { try { onEvent(JSON.parse(e.data)); } catch (_) {} };
  dc.onclose = () => { if (session && session.pc === pc) hangup("the server ended the session", "disconnected"); };
  const track = session.mic ? session.mic.getAudioTracks()[0] : silentTrack();
  session.sender = pc.addTransceiver(track, { direction: "sendrecv" }).sender;
  pc.ontrack = (e) => { $("bot-audio").srcObject = e.streams[0] || new MediaStream([e.track]); };
  pc.onconnectionstatechange = () => {
    if (session && session.pc === pc && ["failed", "closed"].includes(pc.connectionState)) {
      hangup(`the connection to the server ${pc.connectionState === "failed" ? "failed" : "closed"}`, "disconnected");
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  await waitIceGathering(pc);
  const r = await api(withToken("/api/offer", { voice, language }), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
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

const CLOSE_REASONS = {
  1000: "the session ended",
  1001: "the server is going away",
  1006: "the connection to the server was lost",
  1008: "the server refused the token",
  1011: "the server failed",
  1012: "the server is restarting or stopping",
  1013: "the server is busy: try again in a moment",
};

async function connectWS(voice, language) {
  const url = withToken("/ws", { voice, language });
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  session.ws = ws;
  ws.binaryType = "arraybuffer";
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error("the WebSocket did not open")); });
  ws.onclose = (e) => {
    if (session && session.ws === ws) hangup(CLOSE_REASONS[e.code] || `the connection closed (${e.code})`, e.code === 1000 ? "idle" : "disconnected");
  };
  ws.onmessage = (e) => {
    if (typeof e.data === "string") {
      const ev = JSON.parse(e.data);
      if (ev.type === "ready") {
        player = new Player(ev.outputSampleRate);
        session.inputRate = ev.inputSampleRate;
        if (session.mic) startCapture(ev.inputSampleRate);
      }
      onEvent(ev);
    } else if (player) {
      player.play(e.data);
    }
  };
}

function startCapture(rate) {
  const ctx = new AudioContext({ sampleRate: rate });
  const src = ctx.createMediaStreamSource(session.mic);
  const proc = ctx.createScriptProcessor(1024, 1, 1); // ~64 ms at 16 kHz; AudioWorklet would need a second file
  proc.onaudioprocess = (e) => {
    const ws = session && session.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const f = e.inputBuffer.getChannelData(0);
    const pcm = new Int16Array(f.length);
    if (!session.muted) for (let i = 0; i < f.length; i++) pcm[i] = Math.max(-1, Math.min(1, f[i])) * 32767;
    ws.send(pcm.buffer);
  };
  src.connect(proc);
  proc.connect(ctx.destination);
  session.capture = { ctx, src, proc };
}

function stopCapture() {
  const c = session && session.capture;
  if (!c) return;
  c.proc.disconnect(); c.src.disconnect(); c.ctx.close();
  session.capture = null;
}

// ---- typed turns ------------------------------------------------------------------------------------------------
function sendText(text) {
  const message = JSON.stringify({ type: "text", text });
  if (session && session.dc && session.dc.readyState === "open") session.dc.send(message);
  else if (session && session.ws && session.ws.readyState === WebSocket.OPEN) session.ws.send(message);
  else return false;
  return true;
}

$("text-form").onsubmit = (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (text && sendText(text)) $("text").value = "";
};

// ---- connect / hang up ----------------------------------------------------------------------------------------
function setInCall(on) {
  $("hangup").disabled = !on;
  $("mute").disabled = !on || !(session && session.mic);
  if (!on) {
    $("text").disabled = $("send").disabled = true;
    $("text").placeholder = "Start, then speak, or type here";
  }
  refreshStart();
}

async function connect() {
  if (session) return;
  session = { mic: null, muted: false };
  $("connect").disabled = true;
  ui.state("connecting");
  const voice = $("voice").value, language = $("language").value;
  try {
    session.mic = await openMic();
    if (session.mic) startMeter(session.mic);
    if ($("transport").value === "webrtc") await connectWebRTC(voice, language);
    else await connectWS(voice, language);
    setInCall(true);
  } catch (e) {
    if (!(e instanceof AuthError)) ui.add("system", `could not connect: ${e.message}`, "error");
    hangup();
    ui.state("error");
  }
}

function hangup(reason, finalState = "idle") {
  const s = session;
  if (!s) return;
  session = null;
  if (reason) ui.add("system", reason, finalState === "disconnected" ? "error" : "");
  if (s.pc) s.pc.close();
  if (s.ws) { try { s.ws.send(JSON.stringify({ type: "stop" })); } catch (_) {} s.ws.close(); }
  if (s.capture) { s.capture.proc.disconnect(); s.capture.src.disconnect(); s.capture.ctx.close(); }
  if (s.silence) s.silence.close();
  if (player) { player.close(); player = null; }
  if (s.mic) s.mic.getTracks().forEach((t) => t.stop());
  stopMeter();
  $("mute").textContent = "Mute";
  $("mute").setAttribute("aria-pressed", "false");
  ui.userInterim = null;
  ui.botLine = null;
  setInCall(false);
  ui.state(finalState);
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
  let r;
  try {
    r = await api("/api/v1/voices", { method: "POST", body: form });
  } catch (e) {
    $("clone-status").textContent = e instanceof AuthError ? "needs the access token (above)" : `failed: ${e.message}`;
    return;
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) { $("clone-status").textContent = `${body.error?.code}: ${body.error?.message}`; return; }
  await loadVoices(body.id);
  const espeak = health && health.engines.tts.engine === "espeak";
  $("clone-status").textContent = `voice "${body.name}" added and selected` +
    (session ? ": hang up and start again to hear it" : "") +
    (espeak ? " (the espeak fallback cannot clone voices: run the server with --tts qwen3 to hear yours)" : "");
}

$("connect").onclick = connect;
$("hangup").onclick = () => hangup("hung up");
$("mute").onclick = () => setMuted(!(session && session.muted));
$("mic").onchange = switchMic;
$("record").onclick = toggleRecord;
$("clone-file").onchange = () => { $("clone-save").disabled = !$("clone-file").files.length && !cloneBlob; };
$("clone-save").onclick = saveVoice;
pollHealth();
