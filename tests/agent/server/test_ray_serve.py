"""``duplex serve --ray`` on a local Ray instance (2 CPUs): the agent server as ``agent.serve`` builds it, its TTS and
STT engines loaded by ``load_engines`` as Ray Serve deployments (``settings.ray``), over real uvicorn and sockets.

* speak flow (``/api/v1/speak`` and ``/v1/audio/speech``) and a full voice turn over ``/ws`` through remote espeak and
  pocketsphinx replicas (the LLM, the bundled SmolLM2, stays in the agent process);
* 10 concurrent speak sessions, paced in real time, on two TTS replicas;
* a TTS replica killed mid-utterance (Qwen3-TTS, tiny random model, two replicas): ``/api/v1/speak`` reports the
  failure for that speak and the next speak completes; in a voice session the bot says it could not finish, and the
  next turn is answered by the live replica.

Slow (Ray, replica processes): marked ``slow``; CI runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import time

import numpy as np
import pytest
import websockets

from agent.settings import LLMSettings, ServerSettings, Settings, STTSettings, TTSSettings
from processors.audio import float_to_pcm16
from processors.ray_serve.options import DeploymentOptions, RayOptions
from testkit.clips import speech
from tests.conftest import delete_apps

from .conftest import LiveServer, await_until, collect_speak, get_json, open_session, recv_json

pytestmark = pytest.mark.slow

FRAME_S = 0.02
SENTENCE = "Every session gets its audio from a replica on the Ray cluster, as it is generated."


def ray_settings(tmp_path_factory, prefix: str, tts: TTSSettings, engines: list[str], **server) -> Settings:
    small = DeploymentOptions(replicas=2, cpus=0.1)
    return Settings(
        voices_dir=tmp_path_factory.mktemp("voices"),
        tts=tts,
        stt=STTSettings(engine="pocketsphinx"),
        llm=LLMSettings(backend="local", max_tokens=24, temperature=0.0),
        server=ServerSettings(idle_timeout_s=60, **server),
        ray=RayOptions(enabled=True, app_prefix=prefix, engines=engines, tts=small, stt=small, request_timeout_s=20),
    )


def start_server(settings: Settings) -> LiveServer:
    from agent.serve import build_app
    from pipelines.engines import load_engines

    engines = load_engines(settings)
    return LiveServer(build_app(settings, engines)).start()


@pytest.fixture(scope="module")
def ray_server(ray_cluster, tmp_path_factory):
    """espeak TTS and pocketsphinx STT on Ray (two replicas each); SmolLM2 in the agent process."""
    settings = ray_settings(tmp_path_factory, "t-server", TTSSettings(engine="espeak"), ["tts", "stt"])
    live = start_server(settings)
    yield live
    live.stop()
    delete_apps("t-server")


@pytest.fixture(scope="module")
def qwen_ray_server(ray_cluster, tmp_path_factory, tiny_qwen_never_eos_dir):
    """Qwen3-TTS (tiny random model that talks until its runaway guard) on two Ray replicas; STT and LLM local."""
    tts = TTSSettings(engine="qwen3", model=str(tiny_qwen_never_eos_dir))
    settings = ray_settings(tmp_path_factory, "t-kill", tts, ["tts"], max_sessions=4)
    settings.device = "cpu"
    live = start_server(settings)
    yield live
    live.stop()
    delete_apps("t-kill")


# --- a /ws voice client ----------------------------------------------------------------------------------------------
class VoiceClient:
    """A ``/ws`` client that streams 20 ms PCM16 frames in real time and records events and audio arrivals."""

    def __init__(self, ws):
        self.ws = ws
        self.events: list[tuple[float, dict]] = []
        self.audio: list[tuple[float, int]] = []
        self.t0 = time.monotonic()
        self.n = 0
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if isinstance(msg, bytes):
                self.audio.append((time.monotonic(), len(msg)))
            else:
                self.events.append((time.monotonic(), json.loads(msg)))

    async def send(self, frame: np.ndarray) -> None:
        await self.ws.send(float_to_pcm16(frame))
        self.n += 1
        delay = self.t0 + self.n * FRAME_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def say(self, clip: str) -> float:
        audio = speech(clip, 16000)
        n = int(16000 * FRAME_S)
        audio = np.concatenate([audio, np.zeros((-len(audio)) % n, np.float32)])
        for i in range(0, len(audio), n):
            await self.send(audio[i : i + n])
        return time.monotonic()

    async def silence_until(self, predicate, timeout: float) -> bool:
        frame = np.zeros(int(16000 * FRAME_S), np.float32)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            await self.send(frame)
        return predicate()

    def bot_words(self, since: float = 0.0) -> str:
        return " ".join(
            e["text"] for t, e in self.events if t >= since and e["type"] == "transcript" and e["role"] == "bot"
        )

    def user_text(self) -> str:
        return " ".join(
            e["text"] for _, e in self.events if e["type"] == "transcript" and e["role"] == "user" and e["final"]
        )

    def audio_after(self, t: float) -> float:
        return sum(n for at, n in self.audio if at > t) / 2 / 24000

    async def close(self) -> None:
        await self.ws.send(json.dumps({"type": "stop"}))
        await self.ws.close()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


# --- espeak + pocketsphinx on Ray ------------------------------------------------------------------------------------
async def test_speak_flow_through_remote_engines(ray_server):
    health = get_json(ray_server, "/healthz").json()
    assert health["engines"]["tts"]["placement"] == "ray" and health["engines"]["stt"]["placement"] == "ray"
    assert health["engines"]["llm"]["placement"] == "in-process"
    ws, ready, started = await open_session(ray_server.speak_url, {"sampleRate": 24000})
    await ws.send(json.dumps({"type": "speak", "text": SENTENCE}))
    frames, _, end = await collect_speak(ws)
    await ws.close()
    assert end["type"] == "complete", end
    assert sum(len(f) for f in frames) / 2 / 24000 > 2.0
    import httpx

    r = httpx.post(
        f"{ray_server.http}/v1/audio/speech",
        json={"model": "tts-1", "input": SENTENCE, "voice": "default", "response_format": "pcm"},
        timeout=30,
    )
    assert r.status_code == 200 and len(r.content) / 2 / 24000 > 2.0


async def test_full_voice_turn_through_remote_engines(ray_server):
    async with websockets.connect(f"ws://127.0.0.1:{ray_server.port}/ws", max_size=None) as ws:
        ready = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert ready["type"] == "ready", ready
        client = VoiceClient(ws)
        await client.silence_until(lambda: False, 0.2)
        spoke = await client.say("flite_weather_kal16.wav")

        def replied() -> bool:
            states = [e.get("state") for _, e in client.events if e["type"] == "state"]
            return "speaking" in states and states[-1] == "listening"

        assert await client.silence_until(replied, 40), client.events
        await client.close()
    assert {"weather", "paris"} <= set(client.user_text().lower().split()), client.user_text()
    assert client.bot_words().strip() and client.audio_after(spoke) > 0.5
    latency = [e for _, e in client.events if e["type"] == "latency"]
    assert latency, client.events
    print(f"\n/ws turn on Ray: voice-to-voice {latency[0]['voiceToVoiceMs']} ms ({latency[0]['breakdownMs']})")


async def test_ten_concurrent_speak_sessions(ray_server):
    # the cap is 10 sessions: the previous test's session must have released its slot
    assert await await_until(lambda: not ray_server.ctx.sessions.active, 10)

    async def one(i: int) -> tuple[float, float, float]:
        ws, _, _ = await open_session(ray_server.speak_url, {"sampleRate": 24000, "pacing": "realtime"})
        t0 = time.monotonic()
        await ws.send(json.dumps({"type": "speak", "text": f"Session {i}. {SENTENCE}"}))
        first = None
        while True:
            frame = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(frame, bytes):
                first = first or time.monotonic()
                continue
            end = json.loads(frame)
            if end["type"] in ("complete", "error"):
                break
        await ws.close()
        assert end["type"] == "complete", end
        return t0, first, time.monotonic()

    runs = await asyncio.gather(*(one(i) for i in range(10)))
    firsts = sorted(first - t0 for t0, first, _ in runs)
    assert max(first for _, first, _ in runs) < min(done for _, _, done in runs), runs  # all were speaking at once
    p50, worst = statistics.median(firsts), firsts[-1]
    print(
        f"\n10 speak sessions at once, 2 espeak replicas: first audio p50 {p50 * 1000:.0f} ms, max {worst * 1000:.0f}"
    )
    assert await await_until(lambda: not ray_server.ctx.sessions.active, 10)


# --- a replica that dies mid-utterance -------------------------------------------------------------------------------
async def replicas_alive(live, n: int = 2, timeout: float = 120.0) -> None:
    """Wait until ``n`` TTS replicas answer (Serve replaces a killed one within seconds; Qwen3 loads meanwhile)."""
    handle = live.ctx.engines.tts._handle
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        results = await asyncio.to_thread(
            lambda: handle.broadcast("stats").results(timeout_s=20, return_exceptions=True)
        )
        if len([r for r in results if isinstance(r, dict)]) >= n:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"fewer than {n} replicas after {timeout:g} s")


async def kill_serving_replica(live, timeout: float = 30.0) -> int:
    engine = live.ctx.engines.tts
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        serving = [s for s in engine.streams_in_flight() if s.chunks > 0]
        if serving:
            os.kill(serving[0].pid, signal.SIGKILL)
            return serving[0].pid
        await asyncio.sleep(0.005)
    raise AssertionError("no stream in flight")


async def test_speak_reports_a_dead_replica_and_goes_on(qwen_ray_server):
    await replicas_alive(qwen_ray_server)
    ws, _, _ = await open_session(qwen_ray_server.speak_url, {"sampleRate": 24000})
    await ws.send(json.dumps({"type": "speak", "text": SENTENCE, "requestId": "one"}))
    victim = await kill_serving_replica(qwen_ray_server)
    _, _, end = await collect_speak(ws)
    assert end["type"] == "error" and end["code"] == "SYNTHESIS_ERROR" and end["recoverable"], end
    assert "stopped" in end["message"], end
    await ws.send(json.dumps({"type": "speak", "text": "Short one.", "requestId": "two"}))
    frames, _, end = await collect_speak(ws, timeout=60)
    assert end["type"] == "complete" and frames, end
    assert qwen_ray_server.ctx.engines.tts.last_stats.pid != victim
    await ws.close()


async def test_voice_session_says_it_could_not_finish_and_goes_on(qwen_ray_server):
    await replicas_alive(qwen_ray_server)
    async with websockets.connect(f"ws://127.0.0.1:{qwen_ray_server.port}/ws", max_size=None) as ws:
        assert (await recv_json(ws, 15))["type"] == "ready"
        client = VoiceClient(ws)
        await client.silence_until(lambda: False, 0.2)
        spoke = await client.say("flite_weather_kal16.wav")
        assert await client.silence_until(lambda: client.audio_after(spoke) > 0, 40), client.events
        victim = await kill_serving_replica(qwen_ray_server)
        killed = time.monotonic()
        # the notice is spoken by the live replica and played: its words reach the client as they play
        assert await client.silence_until(lambda: "finish" in client.bot_words(killed).lower(), 30), client.events
        assert qwen_ray_server.ctx.engines.tts.last_stats.pid != victim
        # the conversation goes on: another turn, answered by the live replica
        again = await client.say("flite_pizza_kal16.wav")
        assert await client.silence_until(lambda: client.audio_after(again + 0.3) > 0.5, 60), client.events
        await client.close()
    states = [e.get("state") for _, e in client.events if e["type"] == "state"]
    assert states.count("thinking") >= 2, states
    print(f"\nafter the kill the bot said: {client.bot_words(killed)!r}")
