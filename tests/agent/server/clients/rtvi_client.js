// A pipecat client app as users write one: @pipecat-ai/client-js with @pipecat-ai/small-webrtc-transport (?transport=
// webrtc, to /api/offer) or @pipecat-ai/websocket-transport (?transport=websocket, to /rtvi/ws), pointed at
// `duplex serve`. The test bundles it with esbuild and drives it over the DevTools protocol. The microphone is a
// WebAudio stream that plays speech clips on cue (window.say), so a barge-in can land while the bot speaks. The
// transports' media manager is their WavMediaManager: the default one drives the microphone through daily-js, which
// fetches its call-machine bundle from Daily's CDN at run time (not reachable offline).
import { PipecatClient } from "@pipecat-ai/client-js";
import { SmallWebRTCTransport, WavMediaManager } from "@pipecat-ai/small-webrtc-transport";
import { WebSocketTransport, WavMediaManager as WsWavMediaManager } from "@pipecat-ai/websocket-transport";

const params = new URLSearchParams(location.search);
const server = params.get("server");
const token = params.get("token");
const kind = params.get("transport") || "webrtc";
const t0 = performance.now();
window.rtviEvents = [];
const log = (type, data) => window.rtviEvents.push({ type, t: performance.now() - t0, ...data });

const audio = new AudioContext({ sampleRate: 48000 });
const mic = audio.createMediaStreamDestination();
const silence = audio.createConstantSource(); // keeps the track running between clips
silence.offset.value = 0;
silence.connect(mic);
silence.start();
window.say = async (url) => {
  const data = await (await fetch(url)).arrayBuffer();
  const buffer = await audio.decodeAudioData(data);
  const source = audio.createBufferSource();
  source.buffer = buffer;
  source.connect(mic);
  source.start();
  log("say", { url, durationMs: buffer.duration * 1000 });
  source.onended = () => log("said", { url });
};
const realGetUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (constraints) =>
  constraints && constraints.audio && !constraints.video
    ? new MediaStream(mic.stream.getAudioTracks().map((t) => t.clone())) // a caller may stop its track
    : realGetUserMedia(constraints);

const client = new PipecatClient({
  transport:
    kind === "websocket"
      ? new WebSocketTransport({ mediaManager: new WsWavMediaManager(512, 16000) })
      : new SmallWebRTCTransport({ mediaManager: new WavMediaManager() }),
  enableMic: true,
  enableCam: false,
  callbacks: {
    onConnected: () => log("connected"),
    onDisconnected: () => log("disconnected"),
    onBotReady: (data) => log("bot-ready", { data }),
    onUserStartedSpeaking: () => log("user-started-speaking"),
    onUserStoppedSpeaking: () => log("user-stopped-speaking"),
    onBotStartedSpeaking: () => log("bot-started-speaking"),
    onBotStoppedSpeaking: () => log("bot-stopped-speaking"),
    onUserTranscript: (data) => log("user-transcript", { text: data.text, final: data.final }),
    onBotOutput: (data) => log("bot-output", { text: data.text, spoken: data.spoken }),
    onBotTtsText: (data) => log("bot-tts-text", { text: data.text }),
    onMetrics: (data) => log("metrics", { data }),
    onError: (message) => log("error", { data: message.data }),
    onTrackStarted: (track, participant) => {
      log("track-started", { kind: track.kind, local: !!participant?.local });
      if (track.kind === "audio" && !participant?.local) {
        // play the bot and watch its level: the first loud sample marks the reply reaching the ear
        const el = new Audio();
        el.srcObject = new MediaStream([track]);
        el.play().catch(() => {});
        const analyser = audio.createAnalyser();
        audio.createMediaStreamSource(new MediaStream([track])).connect(analyser);
        const buf = new Float32Array(analyser.fftSize);
        let loud = false;
        setInterval(() => {
          analyser.getFloatTimeDomainData(buf);
          const peak = buf.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
          if (peak > 0.02 && !loud) log("bot-audio-on", { peak });
          if (peak <= 0.02 && loud) log("bot-audio-off");
          loud = peak > 0.02;
        }, 10);
      }
    },
  },
});
window.client = client;
window.connectClient = async () => {
  try {
    if (kind === "websocket") {
      await client.connect({ wsUrl: `${server.replace(/^http/, "ws")}/rtvi/ws`, token });
    } else {
      await client.connect({
        webrtcRequestParams: {
          endpoint: `${server}/api/offer`,
          headers: new Headers({ Authorization: `Bearer ${token}` }),
        },
      });
    }
    log("connect-resolved");
  } catch (e) {
    log("connect-failed", { message: String(e) });
  }
};
window.disconnectClient = async () => {
  await client.disconnect();
  log("disconnect-resolved");
};
