"""``/v1/realtime`` with the official ``openai`` SDK's realtime client (GA ``client.realtime`` and beta
``client.beta.realtime``) pointed at a real uvicorn server with the fallback engines (espeak, pocketsphinx, the bundled
SmolLM2): a spoken turn from a speech clip with server VAD, a text turn, a barge-in (the reply's audio stops, the
truncation arrives, the next reply follows), ``response.cancel`` + the client's own truncate, a manual
(``turn_detection: null``) G.711 turn in the beta dialect, malformed and oversized events answered with ``error``
on a session that goes on, auth, and a client that vanishes mid-reply (slot and threads freed).
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import json
import time
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI

from agent.server import Engines, create_app
from agent.server import realtime as realtime_router
from processors.audio import REALTIME_PCM_SAMPLE_RATE, TELEPHONY_SAMPLE_RATE, float_to_pcm16
from testkit.clips import speech

from .conftest import LiveServer, await_until, make_settings, speak_threads

pytestmark = pytest.mark.slow

CHUNK_MS = 40


def pcm24(clip: str) -> bytes:
    return float_to_pcm16(speech(clip, REALTIME_PCM_SAMPLE_RATE))


def speech_bounds(pcm: bytes, rate: int = REALTIME_PCM_SAMPLE_RATE) -> tuple[float, float]:
    """(onset, end) of the speech in a clip, seconds: its first and last sample above -34 dBFS."""
    loud = np.flatnonzero(np.abs(np.frombuffer(pcm, "<i2")) > 0.02 * 32768)
    return loud[0] / rate, (loud[-1] + 1) / rate


def silence(ms: int, rate: int = REALTIME_PCM_SAMPLE_RATE) -> bytes:
    return bytes(2 * int(rate * ms / 1000))


def first_audio_seconds(live: LiveServer, kind: str, headers: dict | None = None) -> tuple[float, int]:
    """(sum, count) of the server's voice-to-voice histogram for ``kind``, from ``/metrics`` (recorded when a session
    ends)."""
    text = httpx.get(live.http + "/metrics", headers=headers, timeout=10).text
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for part in values:
            if line.startswith(f'duplex_first_audio_seconds_{part}{{kind="{kind}"}}'):
                values[part] = float(line.split()[-1])
    return values["sum"], int(values["count"])


def client_for(live: LiveServer, api_key: str = "unused") -> AsyncOpenAI:
    return AsyncOpenAI(api_key=api_key, websocket_base_url=f"ws://127.0.0.1:{live.port}/v1")


async def stream(conn: Any, pcm: bytes, rate: int = REALTIME_PCM_SAMPLE_RATE, encode=None, pace: float = 1.0) -> float:
    """Append ``pcm`` in 40 ms chunks at ``pace`` x real time; returns the monotonic time the last chunk went."""
    step = 2 * int(rate * CHUNK_MS / 1000)
    t0 = time.monotonic()
    for n, i in enumerate(range(0, len(pcm), step)):
        chunk = pcm[i : i + step]
        if encode is not None:
            chunk = encode(chunk)
        await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        await asyncio.sleep(max(0.0, t0 + (n + 1) * CHUNK_MS / 1000 / pace - time.monotonic()))
    return time.monotonic()


class Recorder:
    """Reads events (as dicts) with their arrival time."""

    def __init__(self, conn: Any):
        self.conn = conn
        self.events: list[dict] = []
        self.times: list[float] = []

    async def until(self, predicate, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out; got {[e['type'] for e in self.events]}"
            event = (await asyncio.wait_for(self.conn.recv(), remaining)).to_dict()
            self.events.append(event)
            self.times.append(time.monotonic())
            if predicate(event):
                return event

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    def first_time(self, kind: str, after: float = 0.0) -> float:
        return next(t for e, t in zip(self.events, self.times, strict=True) if e["type"] == kind and t >= after)


def is_type(kind: str):
    return lambda e: e["type"] == kind


async def setup_session(conn: Any, rec: Recorder, **session: Any) -> dict:
    created = await rec.until(is_type("session.created"), 10)
    assert created["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    await conn.session.update(session={"type": "realtime", **session})
    return await rec.until(is_type("session.updated"), 10)


async def test_spoken_turn_server_vad(agent_server):
    sum0, n0 = first_audio_seconds(agent_server, "realtime")
    async with client_for(agent_server).realtime.connect(model="duplex") as conn:
        rec = Recorder(conn)
        updated = await setup_session(
            conn,
            rec,
            instructions="You are a helpful assistant. Answer in one short English sentence.",
            audio={
                "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": {"type": "server_vad"}},
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"},
            },
        )
        assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        assert updated["session"]["audio"]["output"]["voice"] == "default"  # OpenAI's voices are not registry voices
        assert updated["session"]["instructions"].startswith("You are a helpful")
        question = pcm24("flite_weather_kal16.wav")
        t_start = time.monotonic()
        sender = asyncio.create_task(stream(conn, silence(400) + question + silence(4000), pace=1.0))
        t_speech_end = t_start + 0.4 + speech_bounds(question)[1]
        try:
            transcribed = await rec.until(is_type("conversation.item.input_audio_transcription.completed"), 30)
            await rec.until(is_type("response.output_audio.delta"), 30)
            done = await rec.until(is_type("response.done"), 60)
        finally:
            sender.cancel()
    assert "weather" in transcribed["transcript"].lower(), transcribed
    kinds = [e["type"] for e in rec.events]
    for kind in (
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
    ):
        assert kind in kinds, (kind, kinds)
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped")
    assert kinds.index("response.created") < kinds.index("response.output_audio.delta")
    assert done["response"]["status"] == "completed", done
    transcript = done["response"]["output"][0]["content"][0]["transcript"]
    assert transcript.strip(), done
    deltas = "".join(e["delta"] for e in rec.of("response.output_audio_transcript.delta"))
    assert deltas.split() == transcript.split()
    audio = b"".join(base64.b64decode(e["delta"]) for e in rec.of("response.output_audio.delta"))
    assert len(audio) > REALTIME_PCM_SAMPLE_RATE  # > 0.5 s of 24 kHz PCM16
    assert np.abs(np.frombuffer(audio, "<i2")).max() > 1000
    assert await await_until(lambda: not agent_server.ctx.sessions.active, 10)
    sum1, n1 = first_audio_seconds(agent_server, "realtime")
    assert n1 == n0 + 1
    v2v_ms = 1000 * (rec.first_time("response.output_audio.delta") - t_speech_end)
    stopped_ms = 1000 * (
        rec.first_time("response.output_audio.delta") - rec.first_time("input_audio_buffer.speech_stopped")
    )
    print(
        f"\nrealtime (openai SDK, server VAD): voice-to-voice (end of the question's speech sent -> first audio delta) "
        f"{v2v_ms:.0f} ms; server voice-to-voice {1000 * (sum1 - sum0):.0f} ms; speech_stopped -> first audio "
        f"{stopped_ms:.0f} ms; "
        f"user={transcribed['transcript']!r} bot={transcript!r}"
    )


async def text_turn(conn: Any, rec: Recorder, text: str) -> None:
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )
    await conn.response.create()


async def test_text_turn(agent_server):
    async with client_for(agent_server).realtime.connect(model="duplex") as conn:
        rec = Recorder(conn)
        await setup_session(conn, rec, audio={"input": {"turn_detection": None}})
        await text_turn(conn, rec, "What is the capital of France?")
        await conn.response.create()  # one response at a time
        busy = await rec.until(is_type("error"), 10)
        assert busy["error"]["code"] == "conversation_already_has_active_response", busy
        added = next(e for e in rec.events if e["type"] == "conversation.item.added")
        assert added["item"]["role"] == "user"
        assert added["item"]["content"][0]["text"] == "What is the capital of France?"
        done = await rec.until(is_type("response.done"), 60)
        # a retrieve returns the assistant item, with the transcript of what was spoken
        item_id = done["response"]["output"][0]["id"]
        await conn.conversation.item.retrieve(item_id=item_id)
        retrieved = await rec.until(is_type("conversation.item.retrieved"), 10)
    assert done["response"]["status"] == "completed", done
    assert rec.of("response.output_audio.delta"), "no audio"
    assert retrieved["item"]["role"] == "assistant"
    assert retrieved["item"]["content"][0]["transcript"] == done["response"]["output"][0]["content"][0]["transcript"]


async def test_barge_in_truncates_and_next_reply_follows(agent_server):
    async with client_for(agent_server).realtime.connect(model="duplex") as conn:
        rec = Recorder(conn)
        await setup_session(conn, rec)  # server VAD (the default)
        sender = asyncio.create_task(stream(conn, silence(600)))
        await text_turn(conn, rec, "Tell me a long story about a brave little dog.")
        first = await rec.until(is_type("response.output_audio.delta"), 60)
        await sender
        interruption = pcm24("flite_story_slt.wav")
        t_barge = time.monotonic() + speech_bounds(interruption)[0]  # when its speech starts
        sender = asyncio.create_task(stream(conn, interruption + silence(5000)))
        try:
            await rec.until(is_type("input_audio_buffer.speech_started"), 20)
            truncated = await rec.until(is_type("conversation.item.truncated"), 10)
            cancelled = await rec.until(is_type("response.done"), 10)
            n_after_cancel = len(rec.events)
            nxt = await rec.until(lambda e: e["type"] == "response.created", 60)
            await rec.until(is_type("response.done"), 60)
        finally:
            sender.cancel()
    response_id = first["response_id"]
    assert cancelled["response"]["id"] == response_id
    assert cancelled["response"]["status"] == "cancelled", cancelled
    assert cancelled["response"]["status_details"]["reason"] == "turn_detected"
    assert truncated["item_id"] == first["item_id"]
    sent_ms = sum(
        len(base64.b64decode(e["delta"])) / 2 / 24
        for e in rec.of("response.output_audio.delta")
        if e["response_id"] == response_id
    )
    assert 0 < truncated["audio_end_ms"] <= sent_ms + 1, (truncated, sent_ms)
    # no audio of the interrupted reply after its truncation
    i_trunc = rec.events.index(truncated)
    assert not [
        e
        for e in rec.events[i_trunc:]
        if e["type"] == "response.output_audio.delta" and e["response_id"] == response_id
    ]
    spoken = cancelled["response"]["output"][0]["content"][0]["transcript"]
    assert cancelled["response"]["output"][0]["status"] == "incomplete"
    assert nxt["response"]["id"] != response_id and n_after_cancel <= rec.events.index(nxt)
    t_speech = rec.first_time("input_audio_buffer.speech_started", after=t_barge)
    t_trunc = rec.first_time("conversation.item.truncated", after=t_barge)
    print(
        f"\nrealtime barge-in: speech onset -> speech_started {1000 * (t_speech - t_barge):.0f} ms, -> truncated "
        f"{1000 * (t_trunc - t_barge):.0f} ms; kept {truncated['audio_end_ms']} of {sent_ms:.0f} ms sent; "
        f"spoken={spoken!r}"
    )


async def test_response_cancel_and_client_truncate(agent_server):
    async with client_for(agent_server).realtime.connect(model="duplex") as conn:
        rec = Recorder(conn)
        await setup_session(conn, rec, audio={"input": {"turn_detection": None}})
        await text_turn(conn, rec, "Tell me a long story about a brave little dog.")
        first = await rec.until(is_type("response.output_audio.delta"), 60)
        await conn.response.cancel()
        done = await rec.until(is_type("response.done"), 10)
        n_done = len(rec.events)
        await conn.conversation.item.truncate(item_id=first["item_id"], content_index=0, audio_end_ms=0)
        truncated = await rec.until(is_type("conversation.item.truncated"), 10)
        await conn.response.cancel()  # nothing left to cancel
        error = await rec.until(is_type("error"), 10)
        await asyncio.sleep(0.5)  # any stray audio of the cancelled reply would be here by now
        await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
        await rec.until(is_type("session.updated"), 10)
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    assert truncated["audio_end_ms"] == 0 and truncated["item_id"] == first["item_id"]
    assert error["error"]["code"] == "response_cancel_not_active"
    assert not [e for e in rec.events[n_done:] if e["type"] == "response.output_audio.delta"]


async def test_manual_g711_turn_beta_dialect(agent_server):
    client = client_for(agent_server)
    ulaw = audioop.lin2ulaw(float_to_pcm16(speech("flite_weather_kal16.wav", TELEPHONY_SAMPLE_RATE)), 2)
    async with client.beta.realtime.connect(model="duplex") as conn:
        rec = Recorder(conn)
        created = await rec.until(is_type("session.created"), 10)
        assert created["session"]["input_audio_format"] == "pcm16"
        await conn.session.update(
            session={
                "modalities": ["audio", "text"],
                "input_audio_format": "g711_ulaw",
                "output_audio_format": "g711_ulaw",
                "turn_detection": None,
                "voice": "alloy",
            }
        )
        updated = await rec.until(is_type("session.updated"), 10)
        assert updated["session"]["turn_detection"] is None
        await conn.input_audio_buffer.commit()  # nothing appended yet
        empty = await rec.until(is_type("error"), 10)
        for i in range(0, len(ulaw), 1600):  # no pacing needed: the server holds the audio until commit
            await conn.input_audio_buffer.append(audio=base64.b64encode(ulaw[i : i + 1600]).decode())
        await conn.input_audio_buffer.commit()
        committed = await rec.until(is_type("input_audio_buffer.committed"), 10)
        transcribed = await rec.until(is_type("conversation.item.input_audio_transcription.completed"), 30)
        await conn.response.create()
        await rec.until(is_type("response.audio.delta"), 60)
        done = await rec.until(is_type("response.done"), 60)
    assert empty["error"]["code"] == "input_audio_buffer_commit_empty"
    assert transcribed["item_id"] == committed["item_id"]
    assert "weather" in transcribed["transcript"].lower(), transcribed
    assert "conversation.item.created" in [e["type"] for e in rec.events]
    assert done["response"]["status"] == "completed"
    audio = b"".join(base64.b64decode(e["delta"]) for e in rec.of("response.audio.delta"))
    pcm = np.frombuffer(audioop.ulaw2lin(audio, 2), "<i2")
    assert len(pcm) > TELEPHONY_SAMPLE_RATE // 2 and np.abs(pcm).max() > 1000
    assert rec.of("response.audio_transcript.delta")


async def test_bad_events_get_errors_and_the_session_goes_on(agent_server):
    url = f"ws://127.0.0.1:{agent_server.port}/v1/realtime?model=duplex"
    async with websockets.connect(url, max_size=None) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"

        async def error_for(message: str | bytes) -> dict:
            await ws.send(message)
            event = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert event["type"] == "error", event
            return event["error"]

        assert (await error_for("{not json"))["code"] == "invalid_json"
        assert (await error_for('{"type": "session.destroy", "event_id": "e1"}'))["event_id"] == "e1"
        assert (await error_for('{"type": "input_audio_buffer.append"}'))["code"] == "invalid_event"
        assert (await error_for('{"type": "input_audio_buffer.append", "audio": "%%%"}'))["code"] == "invalid_value"
        assert (await error_for(b"\x00\x01"))["code"] == "invalid_event"
        assert (await error_for("[1, 2]"))["code"] == "invalid_event"
        big = json.dumps(
            {
                "type": "input_audio_buffer.append",
                "audio": "A" * (agent_server.ctx.settings.server.max_message_bytes + 8),
            }
        )
        assert (await error_for(big))["code"] == "message_too_large"
        odd = base64.b64encode(b"\x00\x01\x02").decode()
        assert (await error_for(json.dumps({"type": "input_audio_buffer.append", "audio": odd})))[
            "code"
        ] == "invalid_value"
        tools = {
            "type": "session.update",
            "session": {"type": "realtime", "tools": [{"type": "function", "name": "f"}]},
        }
        assert (await error_for(json.dumps(tools)))["code"] == "UNSUPPORTED"
        assert json.loads(await ws.recv())["type"] == "session.updated"  # the rest of that update applied
        assert (await error_for('{"type": "output_audio_buffer.clear"}'))["code"] == "UNSUPPORTED"
        bad_item = {"type": "conversation.item.create", "item": {"type": "function_call", "name": "f"}}
        assert (await error_for(json.dumps(bad_item)))["code"] == "UNSUPPORTED"
        await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "still here"}}))
        assert json.loads(await ws.recv())["session"]["instructions"] == "still here"
    assert await await_until(lambda: not agent_server.ctx.sessions.active, 10)


async def test_vanished_client_mid_reply_frees_slot_and_threads(agent_server):
    before = {t.ident for t in speak_threads()}
    url = f"ws://127.0.0.1:{agent_server.port}/v1/realtime?model=duplex"
    ws = await websockets.connect(url, max_size=None)
    assert json.loads(await ws.recv())["type"] == "session.created"
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a long story."}]}
    await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
    await ws.send(json.dumps({"type": "response.create"}))
    while json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] != "response.output_audio.delta":
        pass
    assert agent_server.ctx.sessions.active_by_kind().get("realtime") == 1
    ws.transport.abort()  # no close handshake: the client is simply gone
    assert await await_until(lambda: not agent_server.ctx.sessions.active, 15), (
        agent_server.ctx.sessions.active_by_kind()
    )
    assert await await_until(lambda: {t.ident for t in speak_threads()} <= before, 15), speak_threads()
    # the server still serves
    async with client_for(agent_server).realtime.connect(model="duplex") as conn:
        assert (await conn.recv()).type == "session.created"


async def test_auth_and_loading(tmp_path):
    settings = make_settings(tmp_path, auth_token="rt-token")
    live = LiveServer(create_app(settings, Engines(), routers=[realtime_router.router])).start()
    try:
        async with client_for(live, api_key="wrong").realtime.connect(model="duplex") as conn:
            event = await conn.recv()
        assert event.type == "error" and event.error.code == "invalid_api_key", event
        async with client_for(live, api_key="rt-token").realtime.connect(model="duplex") as conn:
            event = await conn.recv()  # past auth: the models are not loaded here
        assert event.type == "error" and event.error.code == "model_loading", event
        url = f"ws://127.0.0.1:{live.port}/v1/realtime"
        async with websockets.connect(url, subprotocols=["realtime", "openai-insecure-api-key.rt-token"]) as ws:
            assert ws.subprotocol == "realtime"
            assert json.loads(await ws.recv())["error"]["code"] == "model_loading"
        assert not live.ctx.sessions.active
    finally:
        live.stop()
