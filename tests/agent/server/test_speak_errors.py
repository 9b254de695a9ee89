"""/api/v1/speak guards and errors on a real server (espeak): every error code that can be provoked, garbage and
oversized messages (the session and the server survive), auth on and off, the session cap, idle timeouts."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from agent.server import Engines
from voices.registry import SHIPPED_DIR, VoiceRegistry

from .conftest import (
    LONG_TEXT,
    await_until,
    collect_speak,
    get_json,
    open_session,
    recv,
    recv_json,
    speak_threads,
)

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def live(espeak, server_factory):
    return server_factory(espeak, max_message_bytes=64 * 1024)


async def speak_ok(ws, text: str = "Still working.") -> dict:
    await ws.send(json.dumps({"type": "speak", "text": text}))
    frames, _, end = await collect_speak(ws)
    assert end["type"] == "complete", end
    assert frames
    return end


async def expect_closed(ws, code: int) -> None:
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == code, (ws.close_code, ws.close_reason)


# --- garbage --------------------------------------------------------------------------------------------
GARBAGE = [
    ("not json at all", "malformed JSON"),
    ('{"type": "speak", "text": "unterminated', "malformed JSON"),
    ("[1, 2, 3]", "must be a JSON object, got list"),
    ('"just a string"', "must be a JSON object, got str"),
    ('{"text": "no type"}', "no string 'type'"),
    ('{"type": 5}', "no string 'type'"),
    ('{"type": "dance"}', "unknown message type 'dance'"),
    ('{"type": "start", "sampleRate": "fast"}', "sampleRate"),
    ('{"type": "start", "sampleRate": 24000.5}', "sampleRate"),
    ('{"type": "start", "sampleRate": 4000}', "sampleRate"),
    ('{"type": "start", "sampleRate": 96000}', "sampleRate"),
    ('{"type": "start", "encoding": "mp3"}', "encoding"),
    ('{"type": "start", "audioFormat": "xml"}', "audioFormat"),
    ('{"type": "start", "bogus": 1}', "unknown field 'bogus'"),
    ('{"type": "start", "language": "Klingon"}', "unsupported language 'Klingon'"),
    ('{"type": "speak", "text": "hi", "priority": "urgent"}', "priority"),
    ('{"type": "cancel", "now": true}', "unknown field 'now'"),
]


async def test_garbage_messages_get_errors_and_the_session_survives(live):
    ws, _, _ = await open_session(live.speak_url, {"sampleRate": 16_000})
    try:
        for raw, expected in GARBAGE:
            await ws.send(raw)
            msg = await recv_json(ws)
            assert msg["type"] == "error" and msg["code"] == "INVALID_MESSAGE", (raw, msg)
            assert expected in msg["message"], (raw, msg["message"])
            assert msg["recoverable"] is True
        await ws.send(b"\x00\x01\x02\x03")
        msg = await recv_json(ws)
        assert msg["code"] == "INVALID_MESSAGE" and "binary frames are not accepted" in msg["message"]
        # the start that failed on its language did not change the session: still 16 kHz
        end = await speak_ok(ws)
        assert end["audioLengthMs"] > 0
    finally:
        await ws.close()


async def test_oversized_messages(live):
    limit = 64 * 1024
    ws, _, _ = await open_session(live.speak_url, {})
    try:
        await ws.send(json.dumps({"type": "speak", "text": "x" * (limit + 10)}))
        msg = await recv_json(ws)
        assert msg["code"] == "INVALID_MESSAGE" and f"the limit is {limit} bytes" in msg["message"]
        await ws.send(b"\x00" * (limit + 1))
        msg = await recv_json(ws)
        assert msg["code"] == "INVALID_MESSAGE" and f"the limit is {limit} bytes" in msg["message"]
        await speak_ok(ws)
    finally:
        await ws.close()
    assert get_json(live, "/healthz").json()["status"] == "ok"


async def test_speak_before_start(live):
    ws, _, _ = await open_session(live.speak_url)
    try:
        await ws.send(json.dumps({"type": "speak", "text": "Too early.", "requestId": "early"}))
        msg = await recv_json(ws)
        assert msg == {
            "type": "error",
            "code": "INVALID_MESSAGE",
            "message": "send a start message before speak",
            "recoverable": True,
            "requestId": "early",
        }
    finally:
        await ws.close()


# --- INVALID_TEXT ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("", "text is empty"),
        ("   \n\t ", "text is empty"),
        (None, "text is missing"),
        (42, "text must be a string, got int"),
        (["a"], "text must be a string, got list"),
        ("y" * 2001, "the limit is 2000"),
    ],
)
async def test_invalid_text(live, text, expected):
    ws, _, _ = await open_session(live.speak_url, {})
    try:
        msg: dict = {"type": "speak", "requestId": "t"}
        if text is not None:
            msg["text"] = text
        await ws.send(json.dumps(msg))
        err = await recv_json(ws)
        assert err["code"] == "INVALID_TEXT" and expected in err["message"] and err["recoverable"] is True
        assert err["requestId"] == "t"
        await speak_ok(ws)
    finally:
        await ws.close()


async def test_engine_side_text_limit_is_invalid_text(espeak, server_factory):
    """The server may allow longer texts than the engine: the engine's refusal is INVALID_TEXT too."""
    live = server_factory(espeak, max_text_chars=5000)
    ws, _, _ = await open_session(live.speak_url, {})
    try:
        await ws.send(json.dumps({"type": "speak", "text": "word " * 600, "requestId": "big"}))
        _, _, end = await collect_speak(ws)
        assert end["code"] == "INVALID_TEXT" and "limit is 2000" in end["message"] and end["requestId"] == "big"
        await speak_ok(ws)
    finally:
        await ws.close()


# --- voices -----------------------------------------------------------------------------------------
async def test_voice_not_found_falls_back_to_default(live):
    ws, _, _ = await open_session(live.speak_url)
    try:
        await ws.send(json.dumps({"type": "start", "voice": "no-such-voice", "pacing": "asap"}))
        err = await recv_json(ws)
        assert err["code"] == "VOICE_NOT_FOUND" and err["recoverable"] is True
        assert "'no-such-voice' not found" in err["message"] and "default voice 'default'" in err["message"]
        started = await recv_json(ws)
        assert started["type"] == "started" and started["voice"] == "default"
        await speak_ok(ws)
    finally:
        await ws.close()


async def test_unusable_voice_is_synthesis_error_with_fallback(any_engine, server_factory, tmp_path):
    """A registered voice the engine cannot build: espeak cannot speak its language; Qwen3 cannot decode its
    (since damaged) reference. SYNTHESIS_ERROR, then the default voice."""
    registry = VoiceRegistry(tmp_path / "voices")
    clip = SHIPPED_DIR / "default" / "reference.wav"
    bad = registry.add(
        clip,
        name="Broken",
        voice_id="broken",
        transcript="A reference clip.",
        language="Klingon" if any_engine.name == "espeak" else "English",
    )
    if any_engine.name != "espeak":
        bad.reference_path.write_bytes(b"RIFF garbage that is not a WAV file")
    live = server_factory(any_engine, registry=registry)
    ws, _, _ = await open_session(live.speak_url)
    try:
        await ws.send(json.dumps({"type": "start", "voice": "broken", "pacing": "asap"}))
        err = await recv_json(ws, timeout=120)
        assert err["code"] == "SYNTHESIS_ERROR" and err["recoverable"] is True, err
        assert "voice 'broken' cannot be used" in err["message"] and "using the default voice" in err["message"]
        started = await recv_json(ws, timeout=120)
        assert started["voice"] == "default"
        await speak_ok(ws, "Fine.")
    finally:
        await ws.close()


# --- MODEL_LOADING -------------------------------------------------------------------------------------
async def test_model_loading_then_ready(espeak, server_factory):
    engines = Engines()
    live = server_factory(engines=engines)
    assert get_json(live, "/readyz").status_code == 503
    assert get_json(live, "/healthz").json()["status"] == "loading"
    ws, ready, _ = await open_session(live.speak_url)
    try:
        assert ready["voiceLoaded"] is False and ready["capabilities"]["languages"] == []
        await ws.send(json.dumps({"type": "start"}))
        err = await recv_json(ws)
        assert err["code"] == "MODEL_LOADING" and err["recoverable"] is True and "still loading" in err["message"]
        await ws.send(json.dumps({"type": "speak", "text": "Not yet."}))
        assert (await recv_json(ws))["message"] == "send a start message before speak"
        engines.set_tts(espeak)  # what duplex serve does once the model is loaded
        await ws.send(json.dumps({"type": "start", "pacing": "asap"}))
        assert (await recv_json(ws))["type"] == "started"
        await speak_ok(ws)
    finally:
        await ws.close()
    assert get_json(live, "/readyz").status_code == 200


async def test_model_failed(server_factory):
    engines = Engines()
    engines.fail_tts("cannot load Qwen3-TTS model 'x': offline")
    live = server_factory(engines=engines)
    health = get_json(live, "/healthz").json()
    assert health["status"] == "failed" and "offline" in health["models"]["tts"]["error"]
    ws, _, _ = await open_session(live.speak_url)
    try:
        await ws.send(json.dumps({"type": "start"}))
        err = await recv_json(ws)
        assert err["code"] == "MODEL_LOADING" and err["recoverable"] is False and "offline" in err["message"]
    finally:
        await ws.close()


# --- RATE_LIMITED ---------------------------------------------------------------------------------------
async def test_ten_sessions_and_one_refused(espeak, server_factory):
    live = server_factory(espeak)  # default cap: 10
    assert live.ctx.sessions.max_sessions == 10
    sessions = await asyncio.gather(*[open_session(live.speak_url, {"sampleRate": 16_000}) for _ in range(10)])
    try:
        # all ten speak at once
        async def speak(ws, i):
            await ws.send(json.dumps({"type": "speak", "text": f"Session {i} speaking.", "requestId": str(i)}))
            return await collect_speak(ws)

        results = await asyncio.gather(*[speak(ws, i) for i, (ws, _, _) in enumerate(sessions)])
        assert [end["requestId"] for _, _, end in results] == [str(i) for i in range(10)]
        assert all(end["type"] == "complete" and frames for frames, _, end in results)
        # the eleventh is refused
        extra = await websockets.connect(live.speak_url)
        err = await recv_json(extra)
        assert err["code"] == "RATE_LIMITED" and err["recoverable"] is False and "limit of 10" in err["message"]
        assert (await recv_json(extra))["type"] == "stopped"
        await expect_closed(extra, 1013)
        assert live.ctx.sessions.active == 10
    finally:
        for ws, _, _ in sessions[:1]:
            await ws.close()
    # a freed slot admits the next client
    assert await await_until(lambda: live.ctx.sessions.active == 9)
    ws, _, _ = await open_session(live.speak_url, {})
    await speak_ok(ws)
    await ws.close()
    for ws, _, _ in sessions[1:]:
        await ws.close()
    assert await await_until(lambda: live.ctx.sessions.active == 0)
    metrics = httpx.get(live.http + "/metrics").text
    assert 'duplex_sessions_rejected_total{kind="speak",reason="RATE_LIMITED"} 1' in metrics


async def test_too_many_queued_speaks(live):
    ws, _, _ = await open_session(live.speak_url, {"pacing": "realtime"})
    try:
        for i in range(34):  # one speaking + 32 queued + one refused
            await ws.send(json.dumps({"type": "speak", "text": f"Queued {i}. " * 3, "requestId": str(i)}))
        refused = None
        while refused is None:
            frame = await recv(ws)
            if isinstance(frame, dict):
                refused = frame
        assert refused["code"] == "RATE_LIMITED" and refused["recoverable"] is True and refused["requestId"] == "33"
        await ws.send(json.dumps({"type": "cancel"}))
        cancelled = []
        while len(cancelled) < 33:
            frame = await recv(ws)
            if isinstance(frame, dict):
                assert frame["code"] == "CANCELLED", frame
                cancelled.append(frame["requestId"])
        assert cancelled == [str(i) for i in range(33)]
    finally:
        await ws.close()


# --- TIMEOUT --------------------------------------------------------------------------------------------
async def test_idle_timeout(espeak, server_factory):
    live = server_factory(espeak, idle_timeout_s=0.6)
    ws, _, _ = await open_session(live.speak_url, {"pacing": "realtime", "pacingLeadMs": 0})
    # speaking counts as activity: 1.5 s of paced audio outlasts the 0.6 s idle timeout
    await ws.send(json.dumps({"type": "speak", "text": "One, two, three, four."}))
    frames, _, end = await collect_speak(ws)
    assert end["type"] == "complete" and end["audioLengthMs"] > 1000
    err = await recv_json(ws, timeout=3)
    assert err["code"] == "TIMEOUT" and err["recoverable"] is False and "0.6 s" in err["message"]
    assert await recv_json(ws) == {"type": "stopped", "reason": "idle timeout"}
    await expect_closed(ws, 1000)
    assert await await_until(lambda: live.ctx.sessions.active == 0)


# --- auth ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_live(espeak, server_factory):
    return server_factory(espeak, auth_token=TOKEN, idle_timeout_s=1.0)


@pytest.mark.parametrize("how", ["header", "query", "start"])
async def test_auth_accepts_the_token(auth_live, how):
    url, headers, start = auth_live.speak_url, None, {}
    if how == "header":
        headers = {"Authorization": f"Bearer {TOKEN}"}
    elif how == "query":
        url += f"?token={TOKEN}"
    else:
        start = {"authToken": TOKEN}
    ws, _, started = await open_session(url, start, headers=headers)
    try:
        assert started["type"] == "started"
        await speak_ok(ws)
    finally:
        await ws.close()


@pytest.mark.parametrize(
    "how",
    ["wrong-header", "not-bearer", "wrong-query", "wrong-start", "no-token-start", "speak-first", "garbage-first"],
)
async def test_auth_refuses(auth_live, how):
    url, headers = auth_live.speak_url, None
    if how == "wrong-header":
        headers = {"Authorization": "Bearer nope"}
    elif how == "not-bearer":
        headers = {"Authorization": f"Basic {TOKEN}"}
    elif how == "wrong-query":
        url += "?token=nope"
    ws = await websockets.connect(url, additional_headers=headers)
    try:
        first = await recv_json(ws)
        if how in ("wrong-header", "not-bearer", "wrong-query"):
            err = first  # refused at once, before ready
        else:
            assert first["type"] == "ready"
            send = {
                "wrong-start": {"type": "start", "authToken": "nope"},
                "no-token-start": {"type": "start"},
                "speak-first": {"type": "speak", "text": "hello"},
            }.get(how)
            await ws.send(json.dumps(send) if send else "garbage")
            err = await recv_json(ws)
        assert err["type"] == "error" and err["code"] == "UNAUTHORIZED" and err["recoverable"] is False, err
        assert (await recv_json(ws))["type"] == "stopped"
        await expect_closed(ws, 1008)
    finally:
        await ws.close()
    assert await await_until(lambda: auth_live.ctx.sessions.active == 0)
    metrics = httpx.get(auth_live.http + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert 'duplex_sessions_rejected_total{kind="speak",reason="UNAUTHORIZED"}' in metrics


async def test_auth_timeout_for_silent_unauthenticated_client(auth_live):
    ws = await websockets.connect(auth_live.speak_url)
    assert (await recv_json(ws))["type"] == "ready"
    err = await recv_json(ws, timeout=5)
    assert err["code"] == "UNAUTHORIZED" and "within 1 s" in err["message"]
    await expect_closed(ws, 1008)


def test_http_auth(auth_live):
    base = auth_live.http
    r = httpx.get(base + "/api/v1/voices")
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(base + "/api/v1/voices", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(base + "/api/v1/voices", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert httpx.get(base + f"/api/v1/voices?token={TOKEN}").status_code == 200
    assert httpx.delete(base + "/api/v1/voices/default").status_code == 401
    assert httpx.post(base + "/api/v1/voices", files={"audio": ("a.wav", b"x")}, data={"name": "n"}).status_code == 401
    assert httpx.get(base + "/metrics").status_code == 401
    assert httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert httpx.get(base + "/healthz").status_code == 200  # probes stay open
    assert httpx.get(base + "/healthz").json()["auth"] is True


def test_auth_off_needs_nothing(live):
    assert httpx.get(live.http + "/api/v1/voices").status_code == 200
    assert httpx.get(live.http + "/metrics").status_code == 200
    assert get_json(live, "/healthz").json()["auth"] is False


async def test_server_still_serves_after_everything(live):
    ws, _, _ = await open_session(live.speak_url, {"sampleRate": 8000})
    await speak_ok(ws)
    await ws.close()
    assert await await_until(lambda: live.ctx.sessions.active == 0 and not speak_threads())


async def test_server_shutdown_mid_stream_leaves_no_threads(espeak, server_factory):
    live = server_factory(espeak)
    ws, _, _ = await open_session(live.speak_url, {"pacing": "realtime"})
    await ws.send(json.dumps({"type": "speak", "text": LONG_TEXT}))
    assert isinstance(await recv(ws), bytes)
    assert speak_threads()
    await asyncio.get_running_loop().run_in_executor(None, live.stop)
    assert not live.thread.is_alive()
    assert not speak_threads()
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code in (1012, 1001, 1006)
