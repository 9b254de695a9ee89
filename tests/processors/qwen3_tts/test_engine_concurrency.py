"""Concurrent ``Qwen3TTSEngine.stream`` calls on one engine: batched (``max_streams``, what the catalogue loads) and
one at a time (``max_streams=0``). A consumer that stops reading never keeps another stream waiting, greedy audio per
stream equals the unbatched audio, cancel and close stop generation and leave no thread behind."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from processors import catalogue
from processors.qwen3_tts import Qwen3TTSEngine
from testkit.qwen3_tts_model import make_reference_audio

GREEDY = dict(do_sample=False, subtalker_dosample=False)
JOBS = [  # text, frame budget: different lengths
    ("Hello there, this is the first concurrent stream.", 30),
    ("Short one.", 9),
    ("A somewhat longer sentence that keeps going for quite a while longer.", 41),
    ("Fourth voice here.", 17),
]


@pytest.fixture(scope="module")
def engine(tiny_qwen_never_eos_dir):
    torch.set_num_threads(1)
    return Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir)  # max_streams=0: one stream at a time


@pytest.fixture(scope="module")
def voice(engine):
    return engine.create_voice((make_reference_audio(4.0, 24000, seed=1), 24000), "A short reference sentence.")


@pytest.fixture(scope="module")
def alone(engine, voice):
    return [engine.synthesize(text, voice, "English", max_frames=n, chunk_frames=1, **GREEDY) for text, n in JOBS]


def _generator_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "qwen3-tts-generate"]


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


@pytest.mark.parametrize("max_streams", [0, 2], ids=["one-at-a-time", "batched"])
def test_a_consumer_that_stops_reading_keeps_nobody_waiting(engine, voice, alone, max_streams):
    """Stream 1 hands out its first chunk and is then not read; stream 2, from another thread, completes meanwhile.
    (Before: the engine lock was held while stream 1's consumer was away, so stream 2 waited for all of it.)"""
    eng = Qwen3TTSEngine(engine.tts_model, engine.model_id, max_streams=max_streams)
    eng.voices = engine.voices
    try:
        first = eng.stream(JOBS[2][0], voice, "English", max_frames=JOBS[2][1], chunk_frames=1, **GREEDY)
        head = next(first)
        done: list[np.ndarray] = []
        short = dict(max_frames=JOBS[1][1], chunk_frames=1, **GREEDY)
        t = threading.Thread(target=lambda: done.append(eng.synthesize(JOBS[1][0], voice, "English", **short)))
        t.start()
        t.join(timeout=60)
        assert not t.is_alive() and np.array_equal(done[0], alone[1])
        rest = np.concatenate([head, *first])
        assert np.array_equal(rest, alone[2])
    finally:
        eng.close()


def test_batched_engine_streams_joining_at_different_times_equal_unbatched(engine, voice, alone):
    """Four streams of different lengths on an engine with 3 slots, each starting while the others are mid-stream:
    every stream's audio equals its unbatched audio."""
    eng = Qwen3TTSEngine(engine.tts_model, engine.model_id, max_streams=3)
    eng.voices = engine.voices
    chunks: list[list[np.ndarray]] = [[] for _ in JOBS]

    def run(i):
        text, n = JOBS[i]
        chunks[i].extend(eng.stream(text, voice, "English", max_frames=n, chunk_frames=1, **GREEDY))

    threads = []
    try:
        for i in range(len(JOBS)):
            if i:
                _wait_for(lambda k=i - 1: len(chunks[k]) >= 3 or not threads[k].is_alive())
            threads.append(threading.Thread(target=run, args=(i,)))
            threads[-1].start()
        [t.join(timeout=120) for t in threads]
        assert eng.scheduler.max_active >= 2  # they really overlapped
    finally:
        eng.close()
    for i, got in enumerate(chunks):
        assert np.array_equal(np.concatenate(got), alone[i]), f"stream {i} differs"


def test_closing_an_unbatched_stream_stops_its_generator_thread(engine, voice):
    """A stream closed early (or cancelled) stops generating within one frame; its thread is joined by the close."""
    before = len(_generator_threads())
    gen = engine.stream(JOBS[2][0] * 3, voice, "English", max_frames=400, chunk_frames=1, **GREEDY)
    next(gen)
    gen.close()
    assert len(_generator_threads()) == before
    cancel = threading.Event()
    gen = engine.stream(JOBS[2][0] * 3, voice, "English", cancel, max_frames=400, chunk_frames=1, **GREEDY)
    next(gen)
    cancel.set()
    assert list(gen) == [] and engine.last_stats.cancelled
    assert len(_generator_threads()) == before
    assert len(engine.synthesize(JOBS[1][0], voice, "English", max_frames=5, **GREEDY)) > 0  # the lock was released


def test_catalogue_loads_a_batched_engine(tiny_qwen_dir):
    """``duplex serve`` (and every catalogue load) batches Qwen3-TTS by default: ``max_streams`` slots."""
    options = catalogue.TTSOptions(engine="qwen3", model=str(tiny_qwen_dir))
    assert options.max_streams == 10
    eng = catalogue.entry("tts", "qwen3").load(options, "cpu")
    try:
        assert eng.max_streams == 10 and eng.scheduler.max_batch == 10
    finally:
        eng.close()
    eng = catalogue.entry("tts", "qwen3").load(options.model_copy(update={"max_streams": 0}), "cpu")
    assert eng.max_streams == 0 and eng.scheduler is None


def test_batched_greedy_stream_beside_a_sampled_one_keeps_its_output(engine, voice, alone):
    """Sampling settings are per stream: a greedy stream batched with a sampled one (the model's defaults) gives its
    unbatched greedy audio."""
    eng = Qwen3TTSEngine(engine.tts_model, engine.model_id, max_streams=2)
    eng.voices = engine.voices
    got: dict[str, np.ndarray] = {}

    def run(name, text, n, gen):
        got[name] = eng.synthesize(text, voice, "English", max_frames=n, chunk_frames=1, **gen)

    try:
        threads = [threading.Thread(target=run, args=("greedy", *JOBS[0], GREEDY)),
                   threading.Thread(target=run, args=("sampled", *JOBS[2], {}))]  # fmt: skip
        [t.start() for t in threads]
        [t.join(timeout=120) for t in threads]
        assert eng.scheduler.max_active == 2
    finally:
        eng.close()
    assert np.array_equal(got["greedy"], alone[0])
    assert len(got["sampled"]) == len(alone[2]) and not np.array_equal(got["sampled"], alone[2])


@pytest.mark.parametrize("max_streams", [0, 2], ids=["one-at-a-time", "batched"])
def test_cancel_stops_generation_within_one_frame(engine, voice, max_streams):
    """Cancel mid-stream: nothing more is delivered, and at most one more frame is generated after the cancel (the
    stream may have run ahead of its reader before it)."""
    eng = Qwen3TTSEngine(engine.tts_model, engine.model_id, max_streams=max_streams)
    eng.voices = engine.voices
    generated: list[int] = []
    if max_streams:
        made = lambda: eng.scheduler.frames_out
    else:
        real_loop = eng._frame_loop

        def counted_loop(prompt, budget):
            loop = real_loop(prompt, budget)
            real_frames = loop.frames

            def frames(cancel=None):
                for codes in real_frames(cancel):
                    generated.append(1)
                    yield codes

            loop.frames = frames
            return loop

        eng._frame_loop = counted_loop
        made = lambda: len(generated)
    try:
        cancel = threading.Event()
        gen = eng.stream(JOBS[2][0] * 4, voice, "English", cancel, max_frames=400, chunk_frames=1, **GREEDY)
        next(gen)
        cancel.set()
        at_cancel = made()
        assert list(gen) == [] and eng.last_stats.cancelled
        if max_streams:
            _wait_for(lambda: not eng.scheduler._active)
        else:
            assert not _generator_threads()  # joined when the stream ended
        assert made() <= at_cancel + 1 and made() < 400
    finally:
        eng.close()
