"""``/api/v1/speak`` cancel on Qwen3-TTS at the default chunking (1 frame, then 4), measured where the work happens:
codec frames are counted on the engine's frame loop (``testkit.frame_probe``) while a real client talks to a real
uvicorn server. A cancel stops the engine within one frame; no audio byte follows ``CANCELLED``; and the audio the
client gets never includes a frame generated after the server set the speak's cancel event."""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

from processors.audio import CODEC_FRAME_SAMPLES
from testkit.frame_probe import FrameProbe

from .conftest import LONG_TEXT, await_until, make_engine, open_session, recv, speak_threads, wait_until

RATE = 24_000  # the engine's rate: one codec frame is CODEC_FRAME_SAMPLES samples on the wire


@pytest.fixture(scope="module")
def qwen3(engine_root):
    engine = make_engine("qwen3", engine_root)
    assert (engine.first_chunk_frames, engine.chunk_frames) == (1, 4)
    return engine


@pytest.fixture(scope="module")
def live(qwen3, server_factory):
    live = server_factory(qwen3)
    assert wait_until(live.ctx.default_voice_loaded, 300.0)
    return live


async def _until_cancelled(ws) -> tuple[int, dict]:
    """Audio samples received, then the first JSON message."""
    samples = 0
    while True:
        frame = await recv(ws, 30)
        if isinstance(frame, bytes):
            samples += len(frame) // 2
            continue
        return samples, frame


async def _nothing_more(ws, live) -> None:
    """After CANCELLED: the worker ends and nothing more arrives for the cancelled speak."""
    assert await await_until(lambda: not speak_threads(), 10.0), "the speak worker did not end"
    with pytest.raises(asyncio.TimeoutError):
        frame = await recv(ws, 0.5)
        raise AssertionError(f"after CANCELLED the client got {frame if isinstance(frame, dict) else 'audio'}")


async def test_cancel_mid_chunk(live, qwen3):
    """The engine is held after frame 3 (mid second chunk) until the server sets the speak's cancel event."""
    ws, _, _ = await open_session(live.speak_url, {"sampleRate": RATE})
    try:
        with FrameProbe(qwen3, hold_at=3) as probe:
            await ws.send(json.dumps({"type": "speak", "text": LONG_TEXT, "requestId": "long"}))
            first = await recv(ws, 60)
            assert isinstance(first, bytes) and len(first) // 2 == CODEC_FRAME_SAMPLES  # the first chunk: 1 frame
            assert await await_until(probe.held.is_set, 60.0)
            await ws.send(json.dumps({"type": "cancel"}))
            between, end = await _until_cancelled(ws)
            assert end["type"] == "error" and end["code"] == "CANCELLED" and end["requestId"] == "long", end
            await _nothing_more(ws, live)
        assert not probe.hold_expired
        print(f"\nmid-chunk cancel: {probe.generated} frames, {probe.after_cancel} after the event, {between} samples")
        assert probe.after_cancel <= 1, f"{probe.after_cancel} codec frames generated after the cancel event"
        assert between == 0, "the frames of the unfinished chunk must not be sent"
    finally:
        await ws.close()


@pytest.mark.parametrize("trial", range(3))
async def test_cancel_at_arbitrary_moments(live, qwen3, trial):
    """Cancel after a random amount of audio has arrived, without holding the engine: the frames generated after the
    server set the cancel event are at most one, and none of their audio reaches the client."""
    rng = random.Random(trial)
    ws, _, _ = await open_session(live.speak_url, {"sampleRate": RATE})
    try:
        with FrameProbe(qwen3) as probe:
            await ws.send(json.dumps({"type": "speak", "text": LONG_TEXT, "requestId": f"t{trial}"}))
            wanted, received = rng.randint(1, 12) * CODEC_FRAME_SAMPLES, 0
            while received < wanted:
                frame = await recv(ws, 60)
                assert isinstance(frame, bytes), frame
                received += len(frame) // 2
            await ws.send(json.dumps({"type": "cancel"}))
            between, end = await _until_cancelled(ws)
            assert end["code"] == "CANCELLED", end
            await _nothing_more(ws, live)
        before_event = probe.generated - probe.after_cancel
        print(
            f"\ncancel after {received} samples: {probe.generated} frames generated, {probe.after_cancel} after the "
            f"event; {between} samples between cancel and CANCELLED"
        )
        assert probe.cancel is not None and probe.cancel.is_set()
        assert probe.after_cancel <= 1, f"{probe.after_cancel} codec frames generated after the cancel event"
        # what the client got is audio of frames finished before the event (the engine decodes no later frame)
        assert received + between <= before_event * CODEC_FRAME_SAMPLES
    finally:
        await ws.close()


async def test_cancel_while_paced(live, qwen3):
    """Realtime pacing with no lead: the player is in the middle of sending a chunk frame by frame when the cancel
    arrives; the rest of that chunk is dropped, nothing follows CANCELLED."""
    ws, _, _ = await open_session(live.speak_url, {"sampleRate": RATE, "pacing": "realtime", "pacingLeadMs": 0})
    try:
        with FrameProbe(qwen3) as probe:
            await ws.send(json.dumps({"type": "speak", "text": LONG_TEXT, "requestId": "paced"}))
            received = 0
            while received < 2 * CODEC_FRAME_SAMPLES:  # the first chunk, and the first frame of the second
                frame = await recv(ws, 60)
                assert isinstance(frame, bytes), frame
                received += len(frame) // 2
            t_cancel = time.perf_counter()
            await ws.send(json.dumps({"type": "cancel"}))
            between, end = await _until_cancelled(ws)
            waited = time.perf_counter() - t_cancel
            assert end["code"] == "CANCELLED", end
            await _nothing_more(ws, live)
        assert probe.after_cancel <= 1
        # paced with no lead, the server is never ahead of real time: until it handled the cancel it sent at most
        # one frame per 80 ms (plus the one being paced out)
        assert between <= waited * RATE + CODEC_FRAME_SAMPLES, (between, waited)
    finally:
        await ws.close()
