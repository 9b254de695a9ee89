"""The voice-chat entry points on a real uvicorn server (loopback) with the real fallback engines (espeak TTS,
pocketsphinx STT, the bundled SmolLM2) loaded by ``pipelines.engines.load_engines``, exactly as ``duplex serve`` does.

* ``/ws``: a client streams a recorded utterance as 20 ms PCM16 frames (real time), gets transcripts, state events,
  a latency event and the bot's audio.
* ``/telephony/twilio``: a simulated Twilio Media Streams client (``connected``/``start``/``media`` with base64
  mu-law 20 ms frames, ``stop``) completes a turn; a barge-in gets ``clear`` and no more audio of that reply.
Nothing is scripted: what the bot says is whatever SmolLM2 answers.
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import json
import time

import numpy as np
import pytest
import websockets

from processors.audio import float_to_pcm16
from testkit.clips import speech

FRAME_S = 0.02


def frames(audio: np.ndarray, rate: int) -> list[np.ndarray]:
    n = int(rate * FRAME_S)
    audio = np.concatenate([audio, np.zeros((-len(audio)) % n, np.float32)])
    return [audio[i : i + n] for i in range(0, len(audio), n)]


def words(text: str) -> set[str]:
    return {w.strip(".,!?'\"").lower() for w in text.split() if w.strip(".,!?'\"")}


class Pacer:
    """Sends 20 ms frames on a real-time schedule."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.n = 0

    async def tick(self):
        self.n += 1
        delay = self.t0 + self.n * FRAME_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


# --- /ws -------------------------------------------------------------------------------------------------------------
async def test_ws_completes_one_turn(agent_server):
    rate = 16000
    utterance = frames(speech("flite_weather_kal16.wav", rate), rate)
    silence = np.zeros(int(rate * FRAME_S), np.float32)
    events: list[dict] = []
    audio: list[tuple[float, int]] = []  # (arrival time, bytes)

    async with websockets.connect(f"ws://127.0.0.1:{agent_server.port}/ws", max_size=None) as ws:
        ready = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert ready["type"] == "ready", ready
        assert ready["inputSampleRate"] == 16000 and ready["outputSampleRate"] == 24000
        assert ready["engines"]["tts"]["engine"] == "espeak" and ready["engines"]["stt"]["engine"] == "pocketsphinx"
        assert agent_server.ctx.sessions.active_by_kind().get("browser_ws") == 1

        async def reader():
            async for msg in ws:
                if isinstance(msg, bytes):
                    audio.append((time.monotonic(), len(msg)))
                else:
                    events.append(json.loads(msg))

        read_task = asyncio.create_task(reader())
        pacer = Pacer()
        for _ in range(10):
            await ws.send(float_to_pcm16(silence))
            await pacer.tick()
        for f in utterance:
            await ws.send(float_to_pcm16(f))
            await pacer.tick()
        speech_end = time.monotonic()
        deadline = speech_end + 40

        def bot_done():
            states = [e.get("state") for e in events if e["type"] == "state"]
            return "speaking" in states and states[-1] == "listening" and states.index("speaking") < len(states) - 1

        while time.monotonic() < deadline and not bot_done():
            await ws.send(float_to_pcm16(silence))
            await pacer.tick()
        await ws.send(json.dumps({"type": "stop"}))
        await ws.close()
        read_task.cancel()
        await asyncio.gather(read_task, return_exceptions=True)

    assert bot_done(), events
    user = " ".join(e["text"] for e in events if e["type"] == "transcript" and e["role"] == "user" and e["final"])
    assert {"weather", "paris"} <= words(user), user
    bot = " ".join(e["text"] for e in events if e["type"] == "transcript" and e["role"] == "bot")
    assert bot.strip(), events
    bot_audio_s = sum(n for _, n in audio) / 2 / 24000
    assert bot_audio_s > 0.5, bot_audio_s
    latency = [e for e in events if e["type"] == "latency"]
    assert latency and latency[0]["voiceToVoiceMs"] > 0, events
    client_v2v = audio[0][0] - speech_end
    print(
        f"\n/ws turn: server voice-to-voice {latency[0]['voiceToVoiceMs']} ms "
        f"(breakdown {latency[0]['breakdownMs']}); client speech end -> first bot audio {client_v2v * 1000:.0f} ms; "
        f"user={user!r} bot={bot!r} ({bot_audio_s:.1f} s of audio)"
    )
    # the session's slot is freed once the client is gone
    for _ in range(100):
        if not agent_server.ctx.sessions.active_by_kind().get("browser_ws"):
            break
        await asyncio.sleep(0.05)
    assert not agent_server.ctx.sessions.active_by_kind().get("browser_ws")
    assert agent_server.ctx.metrics.turns.value(kind="browser_ws", outcome="complete") >= 1
    assert agent_server.ctx.metrics.first_audio.count(kind="browser_ws") >= 1


async def test_ws_barge_in_interrupts(agent_server):
    """Speech while the bot talks: ``interrupted`` arrives and no audio of that reply follows it."""
    rate = 16000
    first = frames(speech("flite_story_slt.wav", rate), rate)
    barge = frames(speech("flite_table_rms.wav", rate), rate)
    silence = float_to_pcm16(np.zeros(int(rate * FRAME_S), np.float32))
    events: list[tuple[float, dict]] = []
    audio: list[float] = []
    async with websockets.connect(f"ws://127.0.0.1:{agent_server.port}/ws", max_size=None) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "ready"

        async def reader():
            async for msg in ws:
                if isinstance(msg, bytes):
                    audio.append(time.monotonic())
                else:
                    events.append((time.monotonic(), json.loads(msg)))

        read_task = asyncio.create_task(reader())
        pacer = Pacer()
        for f in first:
            await ws.send(float_to_pcm16(f))
            await pacer.tick()
        speech_end = time.monotonic()
        while time.monotonic() < speech_end + 40 and not [t for t in audio if t > speech_end]:
            await ws.send(silence)
            await pacer.tick()
        first_audio = next(t for t in audio if t > speech_end)
        while time.monotonic() < first_audio + 0.8:
            await ws.send(silence)
            await pacer.tick()
        barge_start = time.monotonic()
        for f in barge:
            await ws.send(float_to_pcm16(f))
            await pacer.tick()
        barge_end = time.monotonic()
        await ws.close()
        read_task.cancel()
        await asyncio.gather(read_task, return_exceptions=True)
    interrupted = [t for t, e in events if e["type"] == "interrupted" and t > barge_start]
    assert interrupted, [e for _, e in events]
    assert len([1 for t, e in events if e["type"] == "interrupted" and t > barge_start]) == 1
    late = [t for t in audio if interrupted[0] < t < barge_end]  # sent in order with the audio: none after it
    assert not late, f"{len(late)} audio frames after interrupted"
    print(f"\n/ws barge-in: interrupted {(interrupted[0] - barge_start) * 1000:.0f} ms after speech onset")


# --- Twilio ----------------------------------------------------------------------------------------------------------
def mulaw_frames(audio: np.ndarray) -> list[str]:
    out = []
    for f in frames(audio, 8000):
        pcm = float_to_pcm16(f)
        out.append(base64.b64encode(audioop.lin2ulaw(pcm, 2)).decode())
    return out


async def test_twilio_turn_and_barge_in_clear(agent_server):
    stream_sid = "MZ00000000000000000000000000000001"
    first = mulaw_frames(speech("flite_story_slt.wav", 8000))
    barge = mulaw_frames(speech("flite_table_rms.wav", 8000))
    silence = mulaw_frames(np.zeros(int(8000 * FRAME_S), np.float32))[0]
    received: list[tuple[float, dict]] = []

    async with websockets.connect(f"ws://127.0.0.1:{agent_server.port}/telephony/twilio", max_size=None) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(
            json.dumps(
                {
                    "event": "start",
                    "sequenceNumber": "1",
                    "streamSid": stream_sid,
                    "start": {
                        "streamSid": stream_sid,
                        "accountSid": "AC0",
                        "callSid": "CA0",
                        "tracks": ["inbound"],
                        "customParameters": {},
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    },
                }
            )
        )

        async def reader():
            async for msg in ws:
                received.append((time.monotonic(), json.loads(msg)))

        read_task = asyncio.create_task(reader())
        seq = 1
        pacer = Pacer()

        async def send_media(payload: str):
            nonlocal seq
            seq += 1
            await ws.send(
                json.dumps(
                    {
                        "event": "media",
                        "sequenceNumber": str(seq),
                        "streamSid": stream_sid,
                        "media": {
                            "track": "inbound",
                            "chunk": str(seq),
                            "timestamp": str(seq * 20),
                            "payload": payload,
                        },
                    }
                )
            )
            await pacer.tick()

        def media_after(t: float) -> list[float]:
            return [ts for ts, m in received if m.get("event") == "media" and ts > t]

        for _ in range(10):
            await send_media(silence)
        for p in first:
            await send_media(p)
        speech_end = time.monotonic()
        deadline = speech_end + 40
        while time.monotonic() < deadline and not media_after(speech_end):
            await send_media(silence)
        assert media_after(speech_end), "no bot audio for the first turn"
        first_audio = media_after(speech_end)[0]
        # let the bot talk for a moment (past the echo guard's sustained-speech bar), then barge in
        while time.monotonic() < first_audio + 0.8:
            await send_media(silence)
        assert not any(m.get("event") == "clear" for _, m in received)
        barge_start = time.monotonic()
        for p in barge:
            await send_media(p)
        barge_end = time.monotonic()
        # quiet after the barge-in: no audio of the interrupted reply may follow the clear
        while time.monotonic() < barge_end + 0.5:
            await send_media(silence)
        await ws.send(
            json.dumps(
                {
                    "event": "stop",
                    "sequenceNumber": str(seq + 1),
                    "streamSid": stream_sid,
                    "stop": {"accountSid": "AC0", "callSid": "CA0"},
                }
            )
        )
        await ws.close()
        read_task.cancel()
        await asyncio.gather(read_task, return_exceptions=True)

    for _, m in received:
        assert m.get("streamSid") == stream_sid, m
    clears = [ts for ts, m in received if m.get("event") == "clear"]
    assert clears, "no clear on barge-in"
    clear_at = clears[0]
    assert barge_start < clear_at < barge_end, (clear_at - barge_start, barge_end - barge_start)
    # the interrupted reply's audio stops at the clear: the next media could only be a new reply, which needs the
    # user's turn to end first (speech end + VAD stop + turn timeout)
    late = [ts for ts in media_after(clear_at) if ts < barge_end + 0.5]
    assert not late, f"{len(late)} media messages after clear, {late[0] - clear_at:.3f} s after it"
    reply_audio_s = (
        sum(
            len(base64.b64decode(m["media"]["payload"]))
            for ts, m in received
            if m.get("event") == "media" and speech_end < ts < clear_at
        )
        / 8000
    )
    print(
        f"\ntwilio: first reply audio {(first_audio - speech_end) * 1000:.0f} ms after speech end; "
        f"clear {(clear_at - barge_start) * 1000:.0f} ms after barge-in speech onset; "
        f"{reply_audio_s:.2f} s of reply media before the clear"
    )


@pytest.mark.parametrize(
    "kind,start",
    [
        (
            "telnyx",
            {
                "event": "start",
                "stream_id": "st-1",
                "start": {
                    "call_control_id": "cc-1",
                    "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
                },
            },
        ),
        ("plivo", {"event": "start", "start": {"streamId": "st-2", "callId": "call-2"}}),
    ],
)
async def test_other_carriers_start_a_session(agent_server, kind, start):
    """Telnyx and Plivo through pipecat's serializers: the start event is parsed, a session runs and takes a slot,
    and hanging up frees it. (The pipeline behind them is the one the Twilio test drives through a whole turn.)"""
    silence = mulaw_frames(np.zeros(int(8000 * FRAME_S), np.float32))[0]
    async with websockets.connect(f"ws://127.0.0.1:{agent_server.port}/telephony/{kind}") as ws:
        if kind == "telnyx":
            await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
        await ws.send(json.dumps(start))
        pacer = Pacer()
        for _ in range(50):
            await ws.send(json.dumps({"event": "media", "media": {"track": "inbound", "payload": silence}}))
            await pacer.tick()
        assert agent_server.ctx.sessions.active_by_kind().get(kind) == 1
    for _ in range(100):
        if not agent_server.ctx.sessions.active_by_kind().get(kind):
            break
        await asyncio.sleep(0.05)
    assert not agent_server.ctx.sessions.active_by_kind().get(kind)
