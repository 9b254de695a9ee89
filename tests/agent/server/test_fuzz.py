"""Protocol fuzzing on a real server (fallback engines, auth on): random and mutated messages on every socket
(speak, ``/ws``, the telephony sockets, ``/v1/realtime``, ``/rtvi/ws``) and bodies on ``/api/offer`` and
``/v1/audio/speech`` (``testkit.protocol_fuzz``). Each reply must be one the protocol defines (or none: ignored),
each close code a defined one, each HTTP status a defined one; the server must log no crash, leak no slot and no
thread, and a healthy speak session and a healthy ``/ws`` session must keep working alongside the whole time.

Seeded and bounded: ``DUPLEX_FUZZ_CASES`` cases per target (default 400, 3600 in all), ``DUPLEX_FUZZ_SEED``
(default 0). A new entry point is one more ``Target`` in ``TARGETS``: its path, seed messages, opening messages and
a check of what it may answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import time
import typing
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import websockets
from loguru import logger

from agent.server.protocol import ErrorCode
from processors.audio import float_to_pcm16
from testkit.protocol_fuzz import FuzzReport, Target, fuzz_http, fuzz_ws, json_reply
from testkit.voice_clients import mulaw_payloads, twilio_media, twilio_start

from .conftest import await_until, fallback_voice_server, speak_threads

CASES = int(os.environ.get("DUPLEX_FUZZ_CASES", "400"))
SEED = int(os.environ.get("DUPLEX_FUZZ_SEED", "0"))
TOKEN = "fuzz-token"
PAYLOAD = mulaw_payloads(np.zeros(160, np.float32))[0]
PCM = float_to_pcm16(np.zeros(320, np.float32))


# --- what each entry point may answer ---------------------------------------------------------------------------------
def speak_reply(reply) -> str | None:
    data, why = json_reply(reply, "type", {"ready", "started", "audioChunk", "complete", "error", "stopped"})
    if data is not None and data["type"] == "error" and data.get("code") not in typing.get_args(ErrorCode):
        return f"undefined error code {data.get('code')!r}"
    return why


def ws_reply(reply) -> str | None:
    events = {"ready", "state", "transcript", "interrupted", "latency", "warning", "error", "stopped"}
    data, why = json_reply(reply, "type", events)
    codes = {"INVALID_MESSAGE", "TIMEOUT", "RATE_LIMITED", "UNAUTHORIZED", "MODEL_LOADING"}
    if data is not None and data["type"] == "error" and data.get("code") not in codes:
        return f"undefined error {data}"
    return why


REALTIME_EVENTS = ("session.", "input_audio_buffer.", "conversation.", "response.")


def realtime_reply(reply) -> str | None:
    if isinstance(reply, bytes):
        return "a binary reply on /v1/realtime"
    try:
        data = json.loads(reply)
        kind = data["type"]
    except Exception:
        return f"not an event: {reply[:80]!r}"
    if kind == "error":
        error = data.get("error")
        ok = isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("message"), str)
        return None if ok else f"malformed error event {data}"
    return None if kind.startswith(REALTIME_EVENTS) else f"undefined event {kind!r}"


def carrier_reply(*events: str):
    return lambda reply: json_reply(reply, "event", set(events))[1]


def http_error(reply: str) -> str | None:
    try:
        error = json.loads(reply)["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
    except Exception:
        return f"not an error body: {reply[:120]!r}"
    return None


# --- seeds ----------------------------------------------------------------------------------------------------------
def speak_seeds() -> list:
    return [
        {"type": "start", "pacing": "asap"},
        {"type": "start", "sampleRate": 16000, "encoding": "pcm32f", "audioFormat": "json", "pacing": "asap"},
        {"type": "speak", "text": "Hello there.", "requestId": "r1"},
        {"type": "speak", "text": "Quick!", "priority": "high"},
        {"type": "cancel"},
        {"type": "stop", "reason": "done"},
    ]


def twilio_seeds() -> list:
    return [
        json.loads(twilio_media("MZ" + "f" * 32, PAYLOAD, 5)),
        {"event": "dtmf", "streamSid": "MZ" + "f" * 32, "dtmf": {"track": "inbound_track", "digit": "5"}},
        {"event": "mark", "streamSid": "MZ" + "f" * 32, "mark": {"name": "m1"}},
        {"event": "stop", "streamSid": "MZ" + "f" * 32, "stop": {"callSid": "CA0"}},
    ]


def media_seeds() -> list:
    return [
        {"event": "media", "media": {"track": "inbound", "payload": PAYLOAD}},
        {"event": "dtmf", "dtmf": {"digit": "1"}},
    ]


def realtime_seeds() -> list:
    audio = base64.b64encode(float_to_pcm16(np.zeros(480, np.float32))).decode()
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi."}]}
    return [
        {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}},
        {"type": "session.update", "session": {"turn_detection": None, "input_audio_format": "g711_ulaw"}},
        {"type": "input_audio_buffer.append", "audio": audio},
        {"type": "input_audio_buffer.commit"},
        {"type": "input_audio_buffer.clear"},
        {"type": "conversation.item.create", "item": item},
        {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 10},
        {"type": "conversation.item.delete", "item_id": "nope"},
        {"type": "response.create"},
        {"type": "response.cancel"},
    ]


def rtvi_seeds() -> list:
    from pipecat.frames.protobufs import frames_pb2

    audio = frames_pb2.Frame(audio=frames_pb2.AudioRawFrame(audio=PCM, sample_rate=16000, num_channels=1))
    ready = {"label": "rtvi-ai", "type": "client-ready", "id": "1", "data": {"version": "1.0.0"}}
    message = frames_pb2.Frame(message=frames_pb2.MessageFrame(data=json.dumps(ready)))
    text = frames_pb2.Frame(text=frames_pb2.TextFrame(text="hello"))
    return [audio.SerializeToString(), message.SerializeToString(), text.SerializeToString(), "hello"]


_OFFER_SDP: list[str] = []  # made by the test before the fuzzing starts (ICE gathering takes seconds)


def offer_seeds() -> list:
    if not _OFFER_SDP:
        with ThreadPoolExecutor(1) as pool:  # called from an event loop: make the offer on a loop of its own
            _OFFER_SDP.append(pool.submit(asyncio.run, _offer_sdp()).result())
    sdp = _OFFER_SDP[0]
    rng = random.Random(SEED)
    lines = sdp.split("\r\n")
    variants = [sdp, sdp.replace("m=audio", "m=video"), sdp.replace("a=ice-ufrag", "a=ice-nope")]
    for _ in range(6):
        broken = list(lines)
        for _ in range(rng.randrange(1, 4)):
            broken.pop(rng.randrange(len(broken)))
        variants.append("\r\n".join(broken))
    candidates = [{"candidate": "", "sdp_mid": "0", "sdp_mline_index": 0}]
    return [("POST", "application/json", {"sdp": v, "type": "offer"}) for v in variants] + [
        ("PATCH", "application/json", {"pc_id": "nope", "candidates": candidates})
    ]


async def _offer_sdp() -> str:
    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack

    pc = RTCPeerConnection()
    pc.createDataChannel("duplex")
    pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


TARGETS = [
    Target(
        "speak",
        "/api/v1/speak",
        "ws",
        speak_seeds,
        speak_reply,
        opening=lambda rng: [json.dumps({"type": "start", "pacing": "asap", "authToken": TOKEN})],
    ),
    Target("ws", "/ws", "ws", lambda: [PCM, PCM[:320], {"type": "stop"}, "hello"], ws_reply),
    Target(
        "twilio",
        "/telephony/twilio",
        "ws",
        twilio_seeds,
        carrier_reply("media", "clear", "mark"),
        opening=lambda rng: twilio_start("MZ" + "f" * 32),
    ),
    Target(
        "telnyx",
        "/telephony/telnyx",
        "ws",
        media_seeds,
        carrier_reply("media", "clear", "mark"),
        opening=lambda rng: [
            json.dumps({"event": "connected"}),
            json.dumps({"event": "start", "stream_id": "st", "start": {"media_format": {"encoding": "PCMU"}}}),
        ],
    ),
    Target(
        "plivo",
        "/telephony/plivo",
        "ws",
        media_seeds,
        carrier_reply("playAudio", "clearAudio", "checkpoint"),
        opening=lambda rng: [json.dumps({"event": "start", "start": {"streamId": "st", "callId": "c"}})],
    ),
    Target("offer", "/api/offer", "http", offer_seeds, http_error),
    Target("realtime", "/v1/realtime", "ws", realtime_seeds, realtime_reply),
    Target("rtvi", "/rtvi/ws", "ws", rtvi_seeds),  # protobuf replies: what counts is no crash, no leak
    Target(
        "speech",
        "/v1/audio/speech",
        "http",
        lambda: [("POST", "application/json", {"model": "tts-1", "input": "Hi.", "voice": "default"})],
        http_error,
        http_statuses=frozenset({200, 400, 401, 404, 405, 408, 411, 413, 429, 503}),
    ),
]


# --- the server and its healthy sessions ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = fallback_voice_server(
        tmp_path_factory.mktemp("voices"),
        auth_token=TOKEN,
        max_sessions=6,
        idle_timeout_s=5,
        voice_connect_timeout_s=2,
        voice_idle_timeout_s=3,
        send_timeout_s=3,
        max_speak_audio_s=20,
        max_message_bytes=256 * 1024,
    )
    yield live
    live.stop()


class Healthy:
    """A speak session that speaks every second and a ``/ws`` session streaming silence, alongside the fuzzing."""

    def __init__(self, port: int):
        self.port, self.problems, self.speaks = port, [], 0
        self.stop = asyncio.Event()

    async def speak(self) -> None:
        url = f"ws://127.0.0.1:{self.port}/api/v1/speak?token={TOKEN}"
        async with websockets.connect(url, max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "start", "pacing": "asap"}))
            assert json.loads(await ws.recv())["type"] == "started"
            while not self.stop.is_set():
                await ws.send(json.dumps({"type": "speak", "text": "Still here."}))
                t0 = time.monotonic()
                while True:
                    msg = await asyncio.wait_for(ws.recv(), 30)
                    if isinstance(msg, str):
                        end = json.loads(msg)
                        break
                if end["type"] != "complete":
                    self.problems.append(f"healthy speak: {end}")
                elif time.monotonic() - t0 > 10:
                    self.problems.append(f"healthy speak took {time.monotonic() - t0:.1f} s")
                self.speaks += 1
                try:
                    await asyncio.wait_for(self.stop.wait(), 1.0)
                except TimeoutError:
                    pass

    async def voice(self) -> None:
        url = f"ws://127.0.0.1:{self.port}/ws?token={TOKEN}"
        async with websockets.connect(url, max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            events: list = []
            reader = asyncio.create_task(self._collect(ws, events))
            try:
                while not self.stop.is_set():
                    await ws.send(PCM)
                    await asyncio.sleep(0.02)
            except websockets.ConnectionClosed:
                self.problems.append(f"healthy /ws closed by the server: {events[-3:]}")
                return
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await ws.send(json.dumps({"type": "stop"}))
            replies = []
            try:
                async for msg in ws:
                    replies.append(msg)
            except websockets.ConnectionClosed:
                pass
            if not any(isinstance(m, str) and json.loads(m).get("type") == "stopped" for m in replies):
                self.problems.append(f"healthy /ws did not end on stop: {[m for m in replies if isinstance(m, str)]}")

    @staticmethod
    async def _collect(ws, events: list) -> None:
        async for msg in ws:
            if isinstance(msg, str):
                events.append(json.loads(msg))


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()[:300]}")


def _connect(rng: random.Random, url: str) -> str:
    """Most connections carry the token; some none, some a wrong one."""
    roll = rng.random()
    return url if roll < 0.05 else url + "?token=wrong" if roll < 0.1 else url + f"?token={TOKEN}"


async def test_fuzz_every_entry_point(server):
    if not _OFFER_SDP:
        _OFFER_SDP.append(await _offer_sdp())
    rng = random.Random(SEED)
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    pipecat_errors: list[str] = []
    sink = logger.add(lambda m: pipecat_errors.append(str(m)[:300]), level="ERROR")
    healthy = Healthy(server.port)
    speak_task, voice_task = asyncio.create_task(healthy.speak()), asyncio.create_task(healthy.voice())
    reports: dict[str, FuzzReport] = {}
    t0 = time.monotonic()
    try:
        assert await await_until(lambda: server.ctx.sessions.active == 2, timeout=20)
        for target in TARGETS:
            if target.kind == "ws":
                report = await fuzz_ws(
                    f"ws://127.0.0.1:{server.port}{target.path}", target, rng, CASES, connect=_connect
                )
            else:
                report = await fuzz_http(server.http, target, rng, CASES, headers={"Authorization": f"Bearer {TOKEN}"})
            reports[target.name] = report
            assert not report.problems, report.problems
            # no slot outlives its connection (voice sessions end within the connect/idle timeouts)
            assert await await_until(lambda: server.ctx.sessions.active == 2, timeout=20), (
                target.name,
                server.ctx.sessions.active_by_kind(),
            )
            assert not speak_task.done() and not voice_task.done(), (target.name, healthy.problems)
    finally:
        healthy.stop.set()
        await asyncio.gather(speak_task, voice_task, return_exceptions=True)
        logging.getLogger().removeHandler(errors)
        logger.remove(sink)
    for task in (speak_task, voice_task):
        if task.exception() is not None:
            raise task.exception()
    assert not healthy.problems, healthy.problems
    assert healthy.speaks >= 5, healthy.speaks
    assert not errors.records, errors.records[:10]
    assert not pipecat_errors, pipecat_errors[:10]
    assert await await_until(lambda: server.ctx.sessions.active == 0 and not speak_threads(), timeout=20)
    total = sum(r.cases for r in reports.values())
    summary = {name: (r.cases, r.connections, dict(r.close_codes or r.statuses)) for name, r in reports.items()}
    print(f"\nfuzz: {total} cases in {time.monotonic() - t0:.0f} s, seed {SEED}: {summary}")
    assert total >= CASES * len(TARGETS)
