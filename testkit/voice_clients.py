"""Scripted clients of the server's voice-chat sockets, speaking real audio (``testkit.clips.speech``): a ``/ws``
browser-style client and a Twilio Media Streams caller. Tests, the memory benchmark and the soak use them.

Each client opens a session, optionally speaks one clip (with silence around it, as a microphone would send), waits
for the bot's reply to finish (its ``state`` events on ``/ws``; the end of its media on Twilio), and hangs up.
``speed`` > 1 sends the audio faster than real time (the VAD counts frames, not wall time, so turns still work).
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from processors.audio import STT_SAMPLE_RATE, TELEPHONY_SAMPLE_RATE, TRANSPORT_FRAME_MS, float_to_pcm16
from testkit.clips import speech

DEFAULT_CLIP = "flite_weather_kal16.wav"


@dataclass
class VoiceResult:
    """What one scripted session saw."""

    ready: dict | None = None
    first_audio_s: float | None = None  # end of the user's speech -> first bot audio received
    bot_audio_s: float = 0.0
    events: list[dict] = field(default_factory=list)
    close_code: int | None = None
    error: str | None = None

    @property
    def replied(self) -> bool:
        return self.first_audio_s is not None


def _frames(audio: np.ndarray, rate: int) -> list[np.ndarray]:
    n = rate * TRANSPORT_FRAME_MS // 1000
    audio = np.concatenate([audio, np.zeros((-len(audio)) % n, np.float32)])
    return [audio[i : i + n] for i in range(0, len(audio), n)]


class _Pacer:
    def __init__(self, speed: float):
        self.t0, self.n, self.step = time.monotonic(), 0, TRANSPORT_FRAME_MS / 1000 / max(speed, 1e-6)

    async def tick(self) -> None:
        self.n += 1
        delay = self.t0 + self.n * self.step - time.monotonic()
        await asyncio.sleep(max(0.0, delay))


async def ws_session(
    base: str,
    *,
    clip: str | None = DEFAULT_CLIP,
    speed: float = 1.0,
    token: str | None = None,
    reply_timeout_s: float = 60.0,
    ready_timeout_s: float = 30.0,
) -> VoiceResult:
    """One ``/ws`` session on ``base`` (``ws://host:port``): ready, then the clip (or nothing), the reply, stop."""
    import websockets

    result = VoiceResult()
    url = f"{base}/ws" + (f"?token={token}" if token else "")
    silence = float_to_pcm16(np.zeros(STT_SAMPLE_RATE * TRANSPORT_FRAME_MS // 1000, np.float32))
    async with websockets.connect(url, max_size=None) as ws:
        result.ready = json.loads(await asyncio.wait_for(ws.recv(), ready_timeout_s))
        if result.ready.get("type") != "ready":
            result.error = f"no ready: {result.ready}"
            return result
        if clip is None:
            await ws.send(silence)
            await ws.send(json.dumps({"type": "stop"}))
            return result
        speech_end: float | None = None
        done = asyncio.Event()

        async def reader() -> None:
            spoke = False
            async for msg in ws:
                if isinstance(msg, bytes):
                    if speech_end is not None and result.first_audio_s is None:
                        result.first_audio_s = time.monotonic() - speech_end
                    result.bot_audio_s += len(msg) / 2 / result.ready["outputSampleRate"]
                    continue
                event = json.loads(msg)
                result.events.append(event)
                if event.get("type") == "state":
                    spoke = spoke or event.get("state") == "speaking"
                    if spoke and event.get("state") == "listening":
                        done.set()

        read_task = asyncio.create_task(reader())
        try:
            pacer = _Pacer(speed)
            audio = np.concatenate([np.zeros(STT_SAMPLE_RATE // 5, np.float32), speech(clip, STT_SAMPLE_RATE)])
            for frame in _frames(audio, STT_SAMPLE_RATE):
                await ws.send(float_to_pcm16(frame))
                await pacer.tick()
            speech_end = time.monotonic()
            pacer = _Pacer(1.0)  # after the speech: silence in real time, as an open microphone sends it
            deadline = speech_end + reply_timeout_s
            while not done.is_set() and time.monotonic() < deadline and not read_task.done():
                await ws.send(silence)
                await pacer.tick()
            if not done.is_set():
                result.error = "no complete reply"
            await ws.send(json.dumps({"type": "stop"}))
            try:
                await asyncio.wait_for(ws.wait_closed(), 10)
            except TimeoutError:
                result.error = result.error or "the server did not end the session on stop"
        finally:
            read_task.cancel()
            await asyncio.gather(read_task, return_exceptions=True)
        result.close_code = ws.close_code
    return result


def mulaw_payloads(audio: np.ndarray) -> list[str]:
    """8 kHz float audio -> base64 mu-law payloads of 20 ms, as Twilio sends them."""
    return [
        base64.b64encode(audioop.lin2ulaw(float_to_pcm16(f), 2)).decode() for f in _frames(audio, TELEPHONY_SAMPLE_RATE)
    ]


def twilio_start(stream_sid: str, call_sid: str = "CA0", **custom: Any) -> list[str]:
    """Twilio's ``connected`` and ``start`` events for a new stream."""
    start = {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": stream_sid,
        "start": {
            "streamSid": stream_sid,
            "accountSid": "AC0",
            "callSid": call_sid,
            "tracks": ["inbound"],
            "customParameters": custom,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": TELEPHONY_SAMPLE_RATE, "channels": 1},
        },
    }
    return [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}), json.dumps(start)]


def twilio_media(stream_sid: str, payload: str, seq: int) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "streamSid": stream_sid,
            "media": {"track": "inbound", "chunk": str(seq), "timestamp": str(seq * 20), "payload": payload},
        }
    )


async def twilio_call(
    base: str,
    *,
    clip: str | None = DEFAULT_CLIP,
    speed: float = 1.0,
    token: str | None = None,
    reply_timeout_s: float = 60.0,
    reply_gap_s: float = 1.5,
) -> VoiceResult:
    """One simulated Twilio call: start, the clip (or 1 s of silence), media until the reply ends (no bot media for
    ``reply_gap_s``), Twilio's ``stop``, hang up."""
    import websockets

    result = VoiceResult()
    sid = f"MZ{time.monotonic_ns():032d}"[-34:]
    url = f"{base}/telephony/twilio" + (f"?token={token}" if token else "")
    silence = mulaw_payloads(np.zeros(TELEPHONY_SAMPLE_RATE * TRANSPORT_FRAME_MS // 1000, np.float32))[0]
    last_media: list[float] = []
    async with websockets.connect(url, max_size=None) as ws:
        for message in twilio_start(sid):
            await ws.send(message)
        speech_end: float | None = None

        async def reader() -> None:
            async for msg in ws:
                event = json.loads(msg)
                if event.get("event") == "media":
                    now = time.monotonic()
                    last_media.append(now)
                    if speech_end is not None and result.first_audio_s is None:
                        result.first_audio_s = now - speech_end
                    result.bot_audio_s += len(base64.b64decode(event["media"]["payload"])) / TELEPHONY_SAMPLE_RATE
                else:
                    result.events.append(event)

        read_task = asyncio.create_task(reader())
        seq = 1
        try:
            audio = np.zeros(TELEPHONY_SAMPLE_RATE, np.float32)
            if clip is not None:
                audio = np.concatenate([audio[: TELEPHONY_SAMPLE_RATE // 5], speech(clip, TELEPHONY_SAMPLE_RATE)])
            pacer = _Pacer(speed)
            for payload in mulaw_payloads(audio):
                seq += 1
                await ws.send(twilio_media(sid, payload, seq))
                await pacer.tick()
            speech_end = time.monotonic()
            if clip is not None:
                pacer = _Pacer(1.0)
                deadline = speech_end + reply_timeout_s
                while time.monotonic() < deadline and not read_task.done():
                    now = time.monotonic()
                    if last_media and now - last_media[-1] > reply_gap_s:
                        break
                    seq += 1
                    await ws.send(twilio_media(sid, silence, seq))
                    await pacer.tick()
                if result.first_audio_s is None:
                    gone = (
                        f"the server closed the call ({ws.close_code}, {ws.close_reason!r})" if read_task.done() else ""
                    )
                    result.error = f"no reply within {reply_timeout_s:g} s" if not gone else f"no reply: {gone}"
            await ws.send(json.dumps({"event": "stop", "sequenceNumber": str(seq + 1), "streamSid": sid}))
        finally:
            read_task.cancel()
            await asyncio.gather(read_task, return_exceptions=True)
    result.close_code = ws.close_code
    return result
