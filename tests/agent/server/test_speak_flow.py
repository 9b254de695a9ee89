"""/api/v1/speak on a real uvicorn server with each real engine: the full flow in both audio formats, both
encodings and four rates; cancel mid-stream; priority pre-emption and queue order; a client that vanishes."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import numpy as np
import pytest

from processors.audio import CODEC_FRAME_MS, StreamResampler

from .conftest import (
    LONG_TEXT,
    await_until,
    collect_speak,
    decode,
    open_session,
    recv,
    recv_json,
    speak_threads,
    wait_until,
)

TEXT = "Hello there. This is a streaming speech test."
SHORT = "Hi there."  # for the (slow, sampled) Qwen3 engine where the text's length does not matter


def text_for(engine) -> str:
    return TEXT if engine.name == "espeak" else SHORT


RATES = (8_000, 16_000, 24_000, 48_000)


@pytest.fixture(scope="module")
def live(any_engine, server_factory):
    live = server_factory(any_engine)
    # the app builds the default voice in the background at startup (Qwen3: reference encoding, seconds cold)
    assert wait_until(live.ctx.default_voice_loaded, 300.0)
    return live


def reference(engine, live, text: str, rate: int) -> np.ndarray:
    """What the server should send: the engine's stream through one StreamResampler."""
    voice = engine.load_voice(live.ctx.registry.default().spec())
    rs = StreamResampler(engine.sample_rate, rate)
    parts = [rs.process(c) for c in engine.stream(text, voice, "English")]
    parts.append(rs.flush())
    return np.concatenate(parts)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize("encoding", ["pcm16", "pcm32f"])
@pytest.mark.parametrize("rate", RATES)
async def test_binary_audio(live, any_engine, rate, encoding):
    if any_engine.name != "espeak" and encoding == "pcm32f" and rate != 24_000:
        pytest.skip("encoding and resampling do not depend on the engine: espeak covers the full grid")
    ws, ready, started = await open_session(live.speak_url, {"sampleRate": rate, "encoding": encoding})
    try:
        assert ready["capabilities"]["streaming"] is True and "English" in ready["capabilities"]["languages"]
        assert ready["voiceLoaded"] is True and ready["sessionId"]
        assert started == {
            "type": "started",
            "sampleRate": rate,
            "encoding": encoding,
            "voice": "default",
            "language": "English",
            "audioFormat": "binary",
            "pacing": "asap",
        }
        text = text_for(any_engine)
        await ws.send(json.dumps({"type": "speak", "text": text, "requestId": "r1"}))
        frames, messages, end = await collect_speak(ws)
    finally:
        await ws.close()
    assert messages == []
    assert end["type"] == "complete", end
    assert end["requestId"] == "r1" and end["charactersProcessed"] == len(text)
    width = 2 if encoding == "pcm16" else 4
    assert all(len(f) % width == 0 for f in frames)
    # never more than one codec frame of audio per WebSocket frame
    assert max(len(f) for f in frames) <= rate * CODEC_FRAME_MS // 1000 * width
    audio = decode(b"".join(frames), encoding)
    assert end["audioLengthMs"] == pytest.approx(len(audio) / rate * 1000, abs=0.01)
    assert 0 < end["firstAudioMs"] <= end["durationMs"]
    assert np.max(np.abs(audio)) > 0.01
    if any_engine.name == "espeak":  # varies by a few samples per call: compare length (the rate) and level
        expected = reference(any_engine, live, TEXT, rate)
        assert len(audio) == pytest.approx(len(expected), rel=0.005)
        assert rms(audio) == pytest.approx(rms(expected), rel=0.1)
    else:  # sampled: check the rate through the length of what the engine made (whole codec frames)
        frames_at_24k = len(audio) * 24_000 / rate / 1920
        assert abs(frames_at_24k - round(frames_at_24k)) < 0.05 and round(frames_at_24k) >= 1


@pytest.mark.parametrize("encoding", ["pcm16", "pcm32f"])
async def test_json_audio(live, any_engine, encoding):
    rate = 16_000
    ws, _, started = await open_session(
        live.speak_url, {"sampleRate": rate, "encoding": encoding, "audioFormat": "json"}
    )
    try:
        assert started["audioFormat"] == "json"
        await ws.send(json.dumps({"type": "speak", "text": text_for(any_engine), "requestId": "j1"}))
        frames, messages, end = await collect_speak(ws)
    finally:
        await ws.close()
    assert frames == [], "JSON audio must not also send binary frames"
    assert end["type"] == "complete" and end["requestId"] == "j1"
    assert messages and all(m["type"] == "audioChunk" for m in messages)
    assert [m["sequenceNumber"] for m in messages] == list(range(len(messages)))
    assert [m["isFinal"] for m in messages] == [False] * (len(messages) - 1) + [True]
    assert all(m["requestId"] == "j1" for m in messages)
    position = 0
    chunks = []
    for m in messages:
        assert m["timestampMs"] == pytest.approx(position / rate * 1000, abs=0.01)
        pcm = decode(base64.b64decode(m["data"]), encoding)
        chunks.append(pcm)
        position += len(pcm)
    audio = np.concatenate(chunks)
    assert end["audioLengthMs"] == pytest.approx(len(audio) / rate * 1000, abs=0.01)
    if any_engine.name == "espeak":
        expected = reference(any_engine, live, TEXT, rate)
        assert len(audio) == pytest.approx(len(expected), rel=0.005)
        assert rms(audio) == pytest.approx(rms(expected), rel=0.1)


async def test_cancel_mid_stream_realtime(live, any_engine):
    """Paced output (realtime, 160 ms lead): after cancel, at most the lead plus one frame in flight arrives, then
    CANCELLED; the session then speaks again."""
    rate, lead_ms = 24_000, 160
    ws, _, _ = await open_session(live.speak_url, {"sampleRate": rate, "pacing": "realtime", "pacingLeadMs": lead_ms})
    try:
        await ws.send(json.dumps({"type": "speak", "text": LONG_TEXT, "requestId": "long"}))
        received = 0
        while received < rate // 2:  # let half a second of audio arrive
            frame = await recv(ws)
            assert isinstance(frame, bytes), frame
            received += len(frame) // 2
        t_cancel = time.perf_counter()
        await ws.send(json.dumps({"type": "cancel"}))
        after, t_last = 0, t_cancel
        while True:
            frame = await recv(ws)
            if isinstance(frame, bytes):
                after += len(frame) // 2
                t_last = time.perf_counter()
                continue
            t_end = time.perf_counter()
            break
        assert frame == {
            "type": "error",
            "code": "CANCELLED",
            "message": "cancelled by the client",
            "recoverable": True,
            "requestId": "long",
        }
        after_ms = after / rate * 1000
        print(
            f"\n[{any_engine.name}] realtime cancel: {after_ms:.0f} ms of audio after cancel, last frame "
            f"{(t_last - t_cancel) * 1000:.1f} ms and CANCELLED {(t_end - t_cancel) * 1000:.1f} ms after cancel"
        )
        assert after_ms <= lead_ms + 2 * CODEC_FRAME_MS
        assert t_end - t_cancel < 0.5
        # nothing more for the cancelled speak; the session still works
        await ws.send(json.dumps({"type": "start", "sampleRate": rate, "pacing": "asap"}))
        assert (await recv_json(ws))["type"] == "started"
        await ws.send(json.dumps({"type": "speak", "text": "Still here.", "requestId": "next"}))
        frames, messages, end = await collect_speak(ws)
        assert end["type"] == "complete" and end["requestId"] == "next" and frames
    finally:
        await ws.close()


async def test_cancel_mid_stream_asap(live, any_engine):
    """Unpaced output: the server stops sending within one engine chunk of receiving cancel; the client measures
    when the last frame arrived."""
    ws, _, _ = await open_session(live.speak_url, {"sampleRate": 24_000})
    try:
        await ws.send(json.dumps({"type": "speak", "text": LONG_TEXT, "requestId": "long"}))
        assert isinstance(await recv(ws), bytes)
        t_cancel = time.perf_counter()
        await ws.send(json.dumps({"type": "cancel"}))
        t_last, after = t_cancel, 0
        while True:
            frame = await recv(ws)
            if isinstance(frame, bytes):
                t_last = time.perf_counter()
                after += len(frame) // 2
                continue
            break
        assert frame["code"] == "CANCELLED" and frame["requestId"] == "long"
        print(
            f"\n[{any_engine.name}] asap cancel: last frame {(t_last - t_cancel) * 1000:.1f} ms after cancel, "
            f"{after / 24:.0f} ms of audio (already sent) after cancel"
        )
        assert t_last - t_cancel < 0.5
    finally:
        await ws.close()


async def test_priority_preempts_and_queue_order(live, any_engine):
    ws, _, _ = await open_session(live.speak_url, {"pacing": "realtime", "pacingLeadMs": 0})
    try:
        await ws.send(json.dumps({"type": "speak", "text": LONG_TEXT, "requestId": "a"}))  # paced: still speaking
        await ws.send(json.dumps({"type": "start", "pacing": "asap"}))  # later speaks are unpaced
        assert (await recv_json(ws))["type"] == "started"
        for rid in ("b", "c"):
            await ws.send(json.dumps({"type": "speak", "text": f"Normal speak {rid}.", "requestId": rid}))
        while not isinstance(await recv(ws), bytes):  # "a" is playing
            pass
        await ws.send(json.dumps({"type": "speak", "text": "Urgent news.", "priority": "high", "requestId": "h1"}))
        await ws.send(json.dumps({"type": "speak", "text": "More urgent news.", "priority": "high", "requestId": "h2"}))
        ends = []
        while len(ends) < 5:
            _, _, end = await collect_speak(ws)
            ends.append((end["type"], end.get("code"), end["requestId"]))
        # "a" is cut off; high-priority speaks go first, in order, and do not cut each other off; then b, c
        assert ends == [
            ("error", "CANCELLED", "a"),
            ("complete", None, "h1"),
            ("complete", None, "h2"),
            ("complete", None, "b"),
            ("complete", None, "c"),
        ]
    finally:
        await ws.close()


async def test_normal_speaks_queue_in_order(live):
    ws, _, _ = await open_session(live.speak_url, {"sampleRate": 8_000})
    try:
        for i in range(4):
            await ws.send(json.dumps({"type": "speak", "text": f"Sentence {i}.", "requestId": str(i)}))
        order = []
        for _ in range(4):
            frames, _, end = await collect_speak(ws)
            assert end["type"] == "complete" and frames
            order.append(end["requestId"])
        assert order == ["0", "1", "2", "3"]
    finally:
        await ws.close()


@pytest.mark.parametrize("reads", [True, False], ids=["reading", "not-reading"])
async def test_client_vanishing_mid_stream_frees_thread_and_slot(live, reads):
    """Abort the TCP connection mid-stream (no close handshake): the worker thread ends and the slot is freed."""
    ws, _, _ = await open_session(live.speak_url, {"sampleRate": 48_000})  # warm: voice loaded, loop threads exist
    await ws.send(json.dumps({"type": "speak", "text": "Warm up.", "requestId": "w"}))
    await collect_speak(ws)
    await ws.close()
    assert await await_until(lambda: live.ctx.sessions.active == 0)
    baseline = set(threading.enumerate())

    start = {"sampleRate": 48_000, "encoding": "pcm32f", "pacing": "realtime" if reads else "asap"}
    ws, _, _ = await open_session(live.speak_url, start)
    await ws.send(json.dumps({"type": "speak", "text": LONG_TEXT}))
    if reads:
        for _ in range(3):
            assert isinstance(await recv(ws), bytes)
    else:
        await asyncio.sleep(0.3)  # the server fills the socket and blocks on it
    assert live.ctx.sessions.active == 1
    assert speak_threads(), "a speak worker should be running"
    ws.transport.abort()
    assert await await_until(lambda: live.ctx.sessions.active == 0 and not speak_threads(), 10.0)
    leaked = set(threading.enumerate()) - baseline
    assert not leaked, f"threads left behind: {leaked}"
    # the server keeps serving
    ws, _, _ = await open_session(live.speak_url, {"sampleRate": 16_000})
    await ws.send(json.dumps({"type": "speak", "text": "Next client."}))
    _, _, end = await collect_speak(ws)
    assert end["type"] == "complete"
    await ws.close()


async def test_stop_ends_session(live):
    ws, _, _ = await open_session(live.speak_url, {"pacing": "realtime"})
    await ws.send(json.dumps({"type": "speak", "text": LONG_TEXT}))
    assert isinstance(await recv(ws), bytes)
    await ws.send(json.dumps({"type": "stop", "reason": "user hung up"}))
    while True:
        frame = await recv(ws)
        if isinstance(frame, dict):
            break
    assert frame == {"type": "stopped", "reason": "user hung up"}
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1000
    assert await await_until(lambda: live.ctx.sessions.active == 0 and not speak_threads())


async def test_default_pacing_is_realtime(live, any_engine):
    """Without ``pacing`` the server paces: audio never runs more than the 160 ms lead ahead of real time."""
    ws, _, _ = await open_session(live.speak_url)
    try:
        await ws.send(json.dumps({"type": "start"}))
        started = await recv_json(ws)
        assert started["pacing"] == "realtime"
        await ws.send(json.dumps({"type": "speak", "text": text_for(any_engine)}))
        received, t_first, worst_lead = 0, None, 0.0
        while True:
            frame = await recv(ws, timeout=60)
            if isinstance(frame, dict):
                break
            now = time.perf_counter()
            t_first = t_first or now
            received += len(frame) // 2
            worst_lead = max(worst_lead, received / 24_000 - (now - t_first))
        assert frame["type"] == "complete"
        assert received / 24_000 > 0.3
        assert worst_lead <= 0.160 + 2 * CODEC_FRAME_MS / 1000  # the lead, plus the frame being sent
    finally:
        await ws.close()
