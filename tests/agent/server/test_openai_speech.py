"""``POST /v1/audio/speech`` on a real server (espeak) through the official ``openai`` SDK and raw HTTP: streaming,
every format decoded back, speed, errors with their statuses, auth, the session cap, and hostile clients (one that
vanishes mid-stream, one that stops reading, one that never sends its body): the slot comes back and no worker
thread is left."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import httpx
import numpy as np
import openai
import pytest

from agent.server import openai_speech
from processors.audio import load_audio

from .conftest import LONG_TEXT, await_until, speak_threads, wait_until

TOKEN = "speech-token"
TEXT = "Hello from the speech endpoint. This sentence is long enough to come in several chunks."


@pytest.fixture(scope="module")
def live(espeak, server_factory):
    return server_factory(espeak, max_sessions=2)


@pytest.fixture(scope="module")
def authed(espeak, server_factory):
    return server_factory(espeak, auth_token=TOKEN)


def client(live, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.http}/v1", api_key=api_key, max_retries=0, timeout=30)


def voice_id(live) -> str:
    return live.ctx.registry.default().id


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def speech(live, fmt: str = "pcm", text: str = TEXT, **extra) -> tuple[bytes, list[int]]:
    """(the whole body, the size of each piece the SDK got as it streamed)."""
    sizes: list[int] = []
    body = b""
    with client(live).audio.speech.with_streaming_response.create(
        model="tts-1", voice=voice_id(live), input=text, response_format=fmt, **extra
    ) as response:
        assert response.headers["content-type"].startswith(openai_speech.FORMATS[fmt][0])
        for piece in response.iter_bytes(4096):
            sizes.append(len(piece))
            body += piece
    return body, sizes


def test_sdk_streams_pcm_as_it_is_generated(live):
    body, sizes = speech(live, "pcm", LONG_TEXT)
    audio = pcm(body)
    assert len(sizes) > 10  # arrived in pieces, not one blob
    seconds = len(audio) / 24000
    assert seconds > 20, seconds  # 15 sentences of espeak
    assert np.abs(audio).max() > 0.05
    assert live.ctx.metrics.first_audio.count(kind="openai_speech") >= 1


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "aac", "flac"])
def test_every_format_decodes_to_the_same_speech(live, fmt):
    reference = len(pcm(speech(live, "pcm")[0])) / 24000
    body, _ = speech(live, fmt)
    if fmt == "wav":
        assert body[:4] == b"RIFF" and body[8:16] == b"WAVEfmt "
        channels, rate, _, _, bits = struct.unpack("<HIIHH", body[22:36])
        assert (channels, rate, bits) == (1, 24000, 16)
        seconds = (len(body) - 44) / 2 / 24000
    else:
        decoded = load_audio(body)
        assert decoded.sample_rate in (24000, 48000)  # Ogg Opus decodes at 48 kHz
        seconds = decoded.seconds
    # codecs pad their first and last frames (AAC, MP3: a few tens of ms)
    assert abs(seconds - reference) < 0.12, (fmt, seconds, reference)


def test_speed_changes_duration_not_content(live):
    normal = len(pcm(speech(live, "pcm")[0]))
    fast = len(pcm(speech(live, "pcm", speed=2.0)[0]))
    slow = len(pcm(speech(live, "pcm", speed=0.25)[0]))
    assert 0.45 < fast / normal < 0.55, fast / normal
    assert 3.8 < slow / normal < 4.2, slow / normal


def test_engine_voice_ids_and_language_extension(live):
    body = httpx.post(
        f"{live.http}/v1/audio/speech",
        json={"model": "espeak", "input": "Guten Tag.", "voice": "German+m3", "response_format": "pcm"},
        timeout=30,
    )
    assert body.status_code == 200 and len(body.content) > 24000
    body = httpx.post(
        f"{live.http}/v1/audio/speech",
        json={"model": "x", "input": "Bonjour.", "voice": {"id": voice_id(live)}, "language": "French"},
        timeout=30,
    )
    assert body.status_code == 200 and body.headers["content-type"] == "audio/mpeg"  # mp3 is the API's default


@pytest.mark.parametrize(
    "payload, status, words",
    [
        ({"model": "tts-1", "input": "hi", "voice": "alloy"}, 400, "voice 'alloy'"),
        ({"model": "tts-1", "input": "   ", "voice": "default"}, 400, "input: text is empty"),
        ({"model": "tts-1", "input": "x" * 5000, "voice": "default"}, 400, "limit is"),
        ({"model": "tts-1", "input": "hi", "voice": "default", "response_format": "ogg"}, 400, "response_format"),
        ({"model": "tts-1", "input": "hi", "voice": "default", "speed": 9}, 400, "speed"),
        ({"model": "tts-1", "input": "hi", "voice": "default", "stream_format": "sse"}, 400, "sse"),
        ({"model": "tts-1", "input": "hi", "voice": "default", "temperature": 1}, 400, "temperature"),
        ({"model": "tts-1", "input": "hi", "voice": "default", "language": "Klingon"}, 400, "Klingon"),
        ({"input": "hi", "voice": "default"}, 400, "model"),
        ({"model": "tts-1", "input": 5, "voice": "default"}, 400, "input"),
    ],
)
def test_bad_requests_get_400_with_the_reason(live, payload, status, words):
    r = httpx.post(f"{live.http}/v1/audio/speech", json=payload, timeout=30)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"], r.json()


def test_sdk_raises_its_own_errors(live, authed):
    with pytest.raises(openai.BadRequestError, match="alloy"):
        client(live).audio.speech.create(model="tts-1", voice="alloy", input="hi")
    with pytest.raises(openai.AuthenticationError):
        client(authed, "wrong").audio.speech.create(model="tts-1", voice="default", input="hi")
    ok = client(authed, TOKEN).audio.speech.create(model="tts-1", voice="default", input="hi", response_format="pcm")
    assert len(ok.content) > 1000


def test_body_guards(live):
    r = httpx.post(f"{live.http}/v1/audio/speech", content=b"not json", timeout=10)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    big = b'{"model": "x", "voice": "default", "input": "' + b"a" * (2 << 20) + b'"}'
    r = httpx.post(f"{live.http}/v1/audio/speech", content=big, timeout=10)
    assert r.status_code == 413
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as s:  # no Content-Length
        s.sendall(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        assert b" 411 " in s.recv(4096).split(b"\r\n")[0]


def test_session_cap_and_a_client_that_vanishes_mid_stream(live):
    base_threads = len(speak_threads())
    # a long text slowed 4x: more audio than the loopback socket buffers hold, so these stay open until read
    request = {"model": "x", "input": LONG_TEXT, "voice": "default", "response_format": "pcm", "speed": 0.25}
    held = [httpx.stream("POST", f"{live.http}/v1/audio/speech", timeout=30, json=request) for _ in range(2)]
    responses = [h.__enter__() for h in held]
    try:
        assert all(r.status_code == 200 for r in responses)
        pieces = [r.iter_raw(1024) for r in responses]  # kept: a dropped iterator closes its response
        for piece in pieces:
            next(piece)
        assert live.ctx.sessions.active_by_kind().get("openai_speech") == 2
        with pytest.raises(openai.RateLimitError, match="limit of 2"):
            client(live).audio.speech.create(model="tts-1", voice="default", input="hi")
    finally:
        for h in held:  # close mid-stream: the server notices the disconnect
            h.__exit__(None, None, None)
    assert wait_until(lambda: not live.ctx.sessions.active_by_kind().get("openai_speech"), 10)
    assert wait_until(lambda: len(speak_threads()) <= base_threads, 10), speak_threads()
    assert live.ctx.metrics.turns.value(kind="openai_speech", outcome="cancelled") >= 2


async def test_a_client_that_stops_reading_is_dropped(live, monkeypatch):
    monkeypatch.setattr(openai_speech, "SEND_STALL_S", 1.0)
    base_threads = len(speak_threads())
    text = LONG_TEXT
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port, limit=1024)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = (
        f'{{"model": "x", "voice": "default", "response_format": "pcm", "speed": 0.25, "input": "{text}"}}'
    ).encode()
    writer.write(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")  # headers, then read nothing more
    t0 = time.monotonic()
    assert await await_until(lambda: not live.ctx.sessions.active_by_kind().get("openai_speech"), 30)
    assert time.monotonic() - t0 < 25
    assert await await_until(lambda: len(speak_threads()) <= base_threads, 10), speak_threads()
    assert live.ctx.metrics.errors.value(kind="openai_speech", code="CLIENT_STALLED") >= 1
    writer.close()


def test_a_body_that_never_arrives_times_out(live, monkeypatch):
    monkeypatch.setattr(openai_speech, "BODY_TIMEOUT_S", 0.5)
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as s:
        s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        assert b" 408 " in s.recv(4096).split(b"\r\n")[0]
    assert not live.ctx.sessions.active_by_kind().get("openai_speech")
