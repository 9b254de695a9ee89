"""Cancelling a Qwen3-TTS stream at the default chunking (first chunk after 1 frame, then every 4), from another
thread, in the middle of a chunk: at most one codec frame is generated after the cancel event is set (frames are
counted on the frame loop by ``testkit.frame_probe``, not inferred from the chunks), and no chunk is yielded after it.
Both loops one stream at a time, and the batched engine (``max_streams``, what ``duplex serve`` loads), where frames
are counted on the scheduler's step worker.

The tiny never-EOS model keeps generating until stopped, so every stop here is the cancel's doing."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
import torch

from processors.qwen3_tts import Qwen3TTSEngine
from testkit.frame_probe import FrameProbe
from testkit.qwen3_tts_model import make_reference_audio

GREEDY = dict(do_sample=False, subtalker_dosample=False)
TEXT = "This reply is long enough to keep the engine busy until it is cancelled by the listener."


@pytest.fixture(scope="module", params=["lean", "reference", "batched"])
def engine(request, tiny_qwen_never_eos_dir):
    torch.set_num_threads(1)
    if request.param == "batched":
        eng = Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir, max_streams=2)
    else:
        eng = Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir, loop=request.param)
    assert (eng.first_chunk_frames, eng.chunk_frames) == (1, 4), "the default chunking is what this file tests"
    assert (eng.scheduler is not None) == (request.param == "batched")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def voice(engine):
    return engine.create_voice((make_reference_audio(4.0, 24000, seed=3), 24000), "A short reference for cloning.")


def _consume(engine, voice, cancel, got: list, done: threading.Event) -> None:
    try:
        for chunk in engine.stream(TEXT, voice, "English", cancel, max_frames=400, **GREEDY):
            got.append((time.perf_counter(), cancel.is_set(), len(chunk)))
    finally:
        done.set()


@pytest.mark.parametrize("hold_at", [2, 3, 6])
def test_cancel_mid_chunk_generates_at_most_one_more_frame(engine, voice, hold_at):
    """Frames 2-5 make the second chunk, 6-9 the third: the cancel lands after frame ``hold_at``, with 1-3 frames of
    its chunk still to generate, set by a thread other than the one iterating the stream."""
    cancel = threading.Event()
    got: list = []
    done = threading.Event()
    with FrameProbe(engine, hold_at=hold_at) as probe:
        consumer = threading.Thread(target=_consume, args=(engine, voice, cancel, got, done), name="consumer")
        consumer.start()
        assert probe.held.wait(60), "the stream never reached the frame to cancel at"
        # the chunks of the frames made before the hold reach the reader first (frames are made apart from it)
        whole_chunks = 1 if hold_at < 6 else 2
        deadline = time.monotonic() + 30
        while len(got) < whole_chunks and time.monotonic() < deadline:
            time.sleep(0.002)
        threading.Thread(target=cancel.set, name="canceller").start()
        assert done.wait(30) and not probe.hold_expired
        consumer.join(5)
    assert not consumer.is_alive()
    kind = "batched" if engine.scheduler else engine.loop
    print(f"\n[{kind}] cancel after frame {hold_at}: {probe.generated} frames, {probe.after_cancel} after it")
    assert probe.generated >= hold_at
    assert probe.after_cancel <= 1, f"{probe.after_cancel} codec frames generated after the cancel event"
    assert not [g for g in got if g[1]], "a chunk was yielded after the cancel event"
    assert sum(n for _, _, n in got) == (1 if hold_at < 6 else 5) * 1920  # the chunks finished before the cancel
    assert engine.last_stats.cancelled


def test_cancel_at_random_moments(engine, voice):
    """The cancel event set at arbitrary moments (a few frame times into the stream) from another thread."""
    rng = random.Random(7)
    # one frame's time where the test runs, measured now, so the moments spread over the first chunks
    with FrameProbe(engine) as probe:
        gen = engine.stream(TEXT, voice, "English", threading.Event(), max_frames=6, **GREEDY)
        list(gen)
        frame_s = (probe.frame_times[-1] - probe.frame_times[0]) / max(1, probe.generated - 1)
    for trial in range(6):
        cancel = threading.Event()
        got: list = []
        done = threading.Event()
        with FrameProbe(engine) as probe:
            timer = threading.Timer(rng.uniform(0.5, 9.0) * frame_s, cancel.set)
            consumer = threading.Thread(target=_consume, args=(engine, voice, cancel, got, done))
            consumer.start()
            timer.start()
            assert done.wait(60)
            consumer.join(5)
            timer.join(5)
        assert probe.after_cancel <= 1, (trial, probe.frames)
        assert not [g for g in got if g[1]], trial
        assert probe.generated < 40, "the stream ran on after the cancel"


def test_cancel_before_the_first_frame(engine, voice):
    cancel = threading.Event()
    cancel.set()
    with FrameProbe(engine) as probe:
        chunks = list(engine.stream(TEXT, voice, "English", cancel, max_frames=400, **GREEDY))
    assert chunks == [] and probe.generated == 0 and engine.last_stats.cancelled


def test_probe_counts_every_frame(engine, voice):
    """The probe itself: an uncancelled stream of 9 frames counts 9 frames, none of them after a cancel."""
    with FrameProbe(engine) as probe:
        chunks = list(engine.stream(TEXT, voice, "English", threading.Event(), max_frames=9, **GREEDY))
    assert probe.generated == 9 and probe.after_cancel == 0
    assert [len(c) // 1920 for c in chunks] == [1, 4, 4]
    assert np.abs(np.concatenate(chunks)).max() > 1e-3
