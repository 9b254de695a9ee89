"""What a hostile, broken or vanished client does to a voice session (``/ws``, telephony) on a real server with the
fallback engines: ``stop`` ends a ``/ws`` session; a client that sends no audio is ended by the connect and idle
timeouts (a quiet user on an open call is not); malformed frames and carrier events are answered or dropped, and
the call goes on to a full turn; nothing holds a slot it should not."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
import websockets

from agent.serve import build_app
from agent.settings import LLMSettings, ServerSettings, Settings, STTSettings, TTSSettings
from pipelines.engines import load_engines
from processors.audio import float_to_pcm16
from testkit.local_servers import ChatEndpoint
from testkit.voice_clients import mulaw_payloads, twilio_media, twilio_start

from .conftest import LiveServer, await_until, fallback_voice_server

CONNECT_S, IDLE_S = 2.0, 3.0
SILENCE = float_to_pcm16(np.zeros(320, np.float32))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = fallback_voice_server(
        tmp_path_factory.mktemp("voices"),
        llm_max_tokens=12,
        voice_connect_timeout_s=CONNECT_S,
        voice_idle_timeout_s=IDLE_S,
        max_sessions=4,
    )
    yield live
    live.stop()


def base(server) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def read_until_closed(ws, timeout: float) -> list:
    """Every frame until the server closes (JSON decoded); fails if it does not close in time."""
    out = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            msg = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
            out.append(json.loads(msg) if isinstance(msg, str) else msg)
    except websockets.ConnectionClosed:
        return out
    except TimeoutError:
        raise AssertionError(f"the server did not close within {timeout} s; got {out[-5:]}") from None


async def free(server) -> None:
    assert await await_until(lambda: server.ctx.sessions.active == 0, timeout=10), server.ctx.sessions.active_by_kind()


# --- /ws -------------------------------------------------------------------------------------------------------------
async def test_ws_stop_ends_the_session(server):
    async with websockets.connect(base(server) + "/ws") as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        for _ in range(5):
            await ws.send(SILENCE)
        t0 = time.monotonic()
        await ws.send(json.dumps({"type": "stop", "reason": "bye"}))
        got = await read_until_closed(ws, 5)
        assert {"type": "stopped", "reason": "bye"} in got, got
        assert ws.close_code == 1000 and time.monotonic() - t0 < 3
    await free(server)


async def test_ws_client_that_sends_no_audio_is_ended(server):
    async with websockets.connect(base(server) + "/ws") as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        t0 = time.monotonic()
        got = await read_until_closed(ws, CONNECT_S + 5)
        timeout = [m for m in got if isinstance(m, dict) and m.get("code") == "TIMEOUT"]
        assert timeout and "within 2 s" in timeout[0]["message"], got
        # the server's clock started before it sent `ready`, this one after it came
        assert CONNECT_S - 0.25 <= time.monotonic() - t0 < CONNECT_S + 3 and ws.close_code == 1000
    await free(server)
    assert server.ctx.metrics.errors.value(kind="browser_ws", code="TIMEOUT") >= 1


async def test_ws_quiet_user_stays_and_a_stalled_stream_is_ended(server):
    """Silence frames (an open microphone, nobody speaking) keep a session past the idle timeout; when the frames
    stop, the session ends after the idle timeout."""
    async with websockets.connect(base(server) + "/ws") as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        t0 = time.monotonic()
        while time.monotonic() - t0 < IDLE_S + 1.5:
            await ws.send(SILENCE)
            await asyncio.sleep(0.02)
        assert server.ctx.sessions.active == 1
        stalled = time.monotonic()
        got = await read_until_closed(ws, IDLE_S + 5)
        assert any(isinstance(m, dict) and m.get("code") == "TIMEOUT" and "for 3 s" in m["message"] for m in got)
        assert IDLE_S - 0.1 <= time.monotonic() - stalled < IDLE_S + 3  # the last frame left just before
    await free(server)


@pytest.mark.parametrize(
    "frame,reason",
    [
        (b"\x01\x02\x03", "not PCM16"),
        (b"\0\0" * 16000 * 2, "at most 1 s"),
        ("hello", "a message must be JSON"),
        ('{"type": "dance"}', "unknown message type 'dance'"),
        ("[" * 1000 + "]" * 1000, "nested too deeply"),
        ("{" * 3000, "a message must be JSON"),
        ('{"type": "stop", "reason": 5}', "invalid stop message: reason"),
        ('{"type": "text", "text": "' + "x" * 30_000 + '"}', "a message must be at most"),
    ],
)
async def test_ws_bad_frames_are_answered_and_the_session_goes_on(server, frame, reason):
    async with websockets.connect(base(server) + "/ws") as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(SILENCE)
        await ws.send(frame)
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert msg["type"] == "error" and msg["code"] == "INVALID_MESSAGE" and reason in msg["message"], msg
        await ws.send(SILENCE)
        assert server.ctx.sessions.active == 1
        await ws.send(json.dumps({"type": "stop"}))
        assert any(m.get("type") == "stopped" for m in await read_until_closed(ws, 5) if isinstance(m, dict))
    await free(server)


async def test_a_client_waiting_for_a_slow_reply_is_not_idle(tmp_path):
    """A typed turn, then no input while the LLM takes twice the idle timeout to answer: it is the server's turn, so
    the session waits for the reply instead of ending."""
    with ChatEndpoint(models=["scripted"]) as llm:
        llm.delay_s = 2 * IDLE_S
        settings = Settings(
            voices_dir=tmp_path,
            tts=TTSSettings(engine="espeak"),
            stt=STTSettings(engine="pocketsphinx"),
            llm=LLMSettings(backend=llm.url, model="scripted"),
            server=ServerSettings(voice_connect_timeout_s=CONNECT_S, voice_idle_timeout_s=IDLE_S),
        )
        live = LiveServer(build_app(settings, load_engines(settings))).start()
        try:
            async with websockets.connect(base(live) + "/ws") as ws:
                assert json.loads(await ws.recv())["type"] == "ready"
                await ws.send(json.dumps({"type": "text", "text": "What is the weather like?"}))
                deadline = time.monotonic() + 4 * IDLE_S + 20
                while True:
                    msg = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
                    if isinstance(msg, bytes):
                        break  # the reply's audio
                    event = json.loads(msg)
                    assert event.get("code") != "TIMEOUT", event
                await ws.send(json.dumps({"type": "stop"}))
                await read_until_closed(ws, 10)
            await free(live)
        finally:
            live.stop()


# --- telephony -------------------------------------------------------------------------------------------------------
MALFORMED_TWILIO = [
    "[1,2,3]",
    '"media"',
    '{"event":"media","media":"x"}',
    '{"event":"media","media":{"payload":"not base64!"}}',
    '{"event":"media","media":{"payload":5}}',
    '{"event":"media"}',
    '{"event":"dtmf","dtmf":"1"}',
    '{"event":"dtmf","dtmf":{"digit":"12"}}',
    '{"event":7}',
    "not json",
    "[" * 1000 + "]" * 1000,
    b"\xff\xfe binary garbage",
    '{"event":"media","media":{"payload":"' + "A" * 20000 + '"}}',
]


async def test_twilio_malformed_events_keep_the_call(server):
    """Each malformed event used to hang up the call (close 1000); now they are dropped, and the call still
    completes a whole turn afterwards."""
    from testkit.clips import speech

    sid = "MZ" + "1" * 32
    silence = mulaw_payloads(np.zeros(160, np.float32))[0]
    async with websockets.connect(base(server) + "/telephony/twilio", max_size=None) as ws:
        for message in twilio_start(sid):
            await ws.send(message)
        seq = 2
        for bad in MALFORMED_TWILIO:
            await ws.send(bad)
            seq += 1
            await ws.send(twilio_media(sid, silence, seq))
        await asyncio.sleep(0.3)
        assert server.ctx.sessions.active_by_kind().get("twilio") == 1  # still on the call
        media: list[float] = []

        async def reader():
            async for msg in ws:
                if json.loads(msg).get("event") == "media":
                    media.append(time.monotonic())

        read_task = asyncio.create_task(reader())
        for payload in mulaw_payloads(speech("flite_weather_kal16.wav", 8000)):
            seq += 1
            await ws.send(twilio_media(sid, payload, seq))
            await asyncio.sleep(0.005)
        deadline = time.monotonic() + 40
        while not media and time.monotonic() < deadline:
            seq += 1
            await ws.send(twilio_media(sid, silence, seq))
            await asyncio.sleep(0.02)
        read_task.cancel()
        await asyncio.gather(read_task, return_exceptions=True)
        assert media, "no reply after the malformed events"
    await free(server)
    assert server.ctx.metrics.errors.value(kind="twilio", code="INVALID_MESSAGE") >= len(MALFORMED_TWILIO)


async def test_twilio_call_whose_media_stops_is_ended(server):
    sid = "MZ" + "2" * 32
    async with websockets.connect(base(server) + "/telephony/twilio") as ws:
        for message in twilio_start(sid):
            await ws.send(message)
        t0 = time.monotonic()
        await read_until_closed(ws, CONNECT_S + 5)
        assert CONNECT_S <= time.monotonic() - t0 < CONNECT_S + 3
    await free(server)


async def test_telephony_socket_without_start_takes_no_slot(server):
    async with websockets.connect(base(server) + "/telephony/plivo") as ws:
        await asyncio.sleep(0.5)
        assert server.ctx.sessions.active == 0  # no slot until a valid start event
        await ws.send('{"event": "start", "start": {"streamId": 5}}')  # a bad start: refused
        await read_until_closed(ws, 5)
        assert ws.close_code == 1008
    await free(server)


# --- OpenAI Realtime -------------------------------------------------------------------------------------------------
async def test_realtime_socket_that_sends_nothing_is_closed(server):
    async with websockets.connect(base(server) + "/v1/realtime") as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        assert server.ctx.sessions.active == 1
        t0 = time.monotonic()
        got = await read_until_closed(ws, IDLE_S + 5)
        assert IDLE_S - 0.25 <= time.monotonic() - t0 < IDLE_S + 3  # its clock started before session.created
        assert any(m.get("type") == "error" and m["error"]["code"] == "timeout" for m in got), got
    await free(server)


async def test_realtime_text_only_client_is_not_idle_while_it_talks(server):
    """A client that types (conversation items, no audio) is heard: the connect timeout is for clients that send
    nothing at all, and the idle timeout counts from its last event or the end of the bot's reply."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}
    async with websockets.connect(base(server) + "/v1/realtime") as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await ws.send(json.dumps({"type": "response.create"}))
        deadline = time.monotonic() + 60
        while json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))["type"] != "response.done":
            pass
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3 * IDLE_S:  # events that make no pipeline frame, well past the timeouts
            await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "Be brief."}}))
            while (event := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "session.updated":
                assert event["type"] != "error" or event["error"]["code"] != "timeout", event
            await asyncio.sleep(IDLE_S / 3)
        got = await read_until_closed(ws, IDLE_S + 5)  # then silent: ended by the idle timeout
        assert any(m.get("type") == "error" and m["error"]["code"] == "timeout" for m in got), got[-3:]
    await free(server)
