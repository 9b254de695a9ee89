"""BatchScheduler on the tiny random model: batched greedy output per stream equals the unbatched lean loop's, while
streams join, finish at different lengths, get cancelled, and overflow max_batch; plus the engine integration
(concurrent ``stream`` calls on one engine) and the masked-attention (GPU-structure) batch on CPU."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from processors.qwen3_tts import Qwen3TTSEngine
from processors.qwen3_tts.batching import BatchScheduler
from processors.qwen3_tts.frame_loop import capture_prompt
from processors.qwen3_tts.lean_loop import LeanFrameLoop, LeanTalker
from processors.qwen3_tts.voice import to_model_device
from processors.tts_engine import TTSError
from testkit.qwen3_tts_model import make_reference_audio

GREEDY = dict(do_sample=False, subtalker_dosample=False)
JOBS = [  # text, voice index, frame budget: different prompt lengths and different stopping points
    ("Hello there, this is the first batched stream.", 0, 30),
    ("Short one.", 1, 9),
    ("A somewhat longer sentence that keeps going for quite a while longer.", 0, 41),
    ("Fourth voice here.", 1, 17),
    ("And a fifth that waits for a free slot.", 0, 23),
]


@pytest.fixture(scope="module")
def engine(tiny_qwen_never_eos_dir):
    torch.set_num_threads(1)
    return Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir)


@pytest.fixture(scope="module")
def voices(engine):
    ref = (make_reference_audio(4.0, 24000, seed=1), 24000)
    return [engine.create_voice(ref, "A short reference sentence for cloning."), engine.create_voice(ref)]


def _prompt(engine, voice, text, **gen):
    return capture_prompt(engine.tts_model, text=text, language="English",
                          voice_clone_prompt=[to_model_device(voice, engine.device, engine.dtype)], **gen)  # fmt: skip


@pytest.fixture(scope="module")
def prompts(engine, voices):
    return [_prompt(engine, voices[v], text, **GREEDY) for text, v, _ in JOBS]


@pytest.fixture(scope="module")
def solo(engine, prompts):
    """Each job alone on the lean loop (which equals upstream: test_lean_loop.py)."""
    lean = LeanTalker(engine.tts_model.model.talker)
    return [torch.stack([c.clone() for c in LeanFrameLoop(lean, p, budget).frames()])
            for p, (_, _, budget) in zip(prompts, JOBS)]  # fmt: skip


def _run_all(sched, prompts, budgets, cancel_after=None):
    """Consume every stream in its own thread; returns the frames per stream and the stream handles."""
    streams = [sched.submit(p, b) for p, b in zip(prompts, budgets)]
    out: list[list[torch.Tensor]] = [[] for _ in streams]

    def consume(i):
        cancel = threading.Event()
        for codes in streams[i].frames(cancel):
            out[i].append(codes.clone())
            if cancel_after and i in cancel_after and len(out[i]) == cancel_after[i]:
                cancel.set()

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(streams))]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    assert not any(t.is_alive() for t in threads)
    return out, streams


@pytest.mark.parametrize("max_batch", [1, 3, 8])
def test_batched_equals_unbatched(engine, prompts, solo, max_batch):
    with BatchScheduler(engine.tts_model.model.talker, max_batch=max_batch) as sched:
        out, streams = _run_all(sched, prompts, [b for _, _, b in JOBS])
    for i, (frames, s) in enumerate(zip(out, streams)):
        assert len(frames) == JOBS[i][2] and s.hit_budget and not s.cancelled
        assert torch.equal(torch.stack(frames), solo[i]), f"stream {i} differs"
    assert sched.max_active == min(max_batch, len(JOBS))
    if max_batch > 1:  # steps were shared: fewer batched steps than frames
        assert sched.steps < sched.frames_out


def test_cancel_one_stream_leaves_others_exact(engine, prompts, solo):
    with BatchScheduler(engine.tts_model.model.talker, max_batch=4) as sched:
        out, streams = _run_all(sched, prompts[:4], [b for _, _, b in JOBS[:4]], cancel_after={0: 5, 2: 11})
    for i in (0, 2):
        assert streams[i].cancelled and len(out[i]) == {0: 5, 2: 11}[i]  # nothing delivered after cancel
        assert torch.equal(torch.stack(out[i]), solo[i][: len(out[i])])
    for i in (1, 3):
        assert not streams[i].cancelled and torch.equal(torch.stack(out[i]), solo[i])


def test_masked_attention_batch_equals_unbatched(engine, prompts, solo):
    """The GPU path's batched attention (one SDPA over all slots with per-stream position masks), run on CPU."""
    with BatchScheduler(engine.tts_model.model.talker, max_batch=4) as sched:
        sched.lean = LeanTalker(engine.tts_model.model.talker, max_batch=4, attention="masked")
        out, _ = _run_all(sched, prompts[:4], [b for _, _, b in JOBS[:4]])
    for i in range(4):
        assert torch.equal(torch.stack(out[i]), solo[i])


def test_engine_streams_concurrently(engine, voices):
    """Several ``stream`` calls on one engine with a scheduler run at the same time and give the audio each would
    give alone."""
    jobs = JOBS[:3]
    alone = [engine.synthesize(t, voices[v], "English", max_frames=b, **GREEDY) for t, v, b in jobs]
    with BatchScheduler(engine.tts_model.model.talker, max_batch=4) as sched:
        batched = Qwen3TTSEngine(engine.tts_model, engine.model_id, scheduler=sched)
        batched.voices = engine.voices
        got: list[np.ndarray | None] = [None] * len(jobs)

        def run(i):
            t, v, b = jobs[i]
            got[i] = batched.synthesize(t, voices[v], "English", max_frames=b, **GREEDY)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        [t.start() for t in threads]
        [t.join(timeout=120) for t in threads]
        assert sched.max_active >= 2  # they really overlapped
    for a, b in zip(alone, got):
        assert b is not None and len(a) == len(b) and np.array_equal(a, b)


def test_sampled_streams_run(engine, voices):
    """Sampling per stream (own processors) works in a batch; the shared RNG makes it differ from solo runs."""
    sampled = [_prompt(engine, voices[0], JOBS[0][0]), _prompt(engine, voices[1], JOBS[1][0], temperature=0.5)]
    with BatchScheduler(engine.tts_model.model.talker, max_batch=2) as sched:
        out, streams = _run_all(sched, sampled, [12, 12])
    assert all(len(o) == 12 and not s.cancelled for o, s in zip(out, streams))
    codes = torch.stack(out[0])
    assert ((codes >= 0) & (codes < 3072)).all() and len(set(codes[:, 0].tolist())) > 3


def test_closed_scheduler_and_bad_args(engine, prompts):
    with pytest.raises(ValueError):
        BatchScheduler(engine.tts_model.model.talker, max_batch=0)
    sched = BatchScheduler(engine.tts_model.model.talker, max_batch=2)
    sched.close()
    s = sched.submit(prompts[0], 5)
    with pytest.raises(TTSError, match="closed"):  # a closed scheduler refuses loudly, never a silent empty stream
        list(s.frames())
    with pytest.raises(RuntimeError):
        list(s.frames())  # single use


def test_failed_batched_step_fails_current_and_later_streams_loudly(engine, prompts, solo):
    """An exception in a batched step: the stream in it raises (with the cause), a stream submitted while the fault
    persists raises too (no silent empty stream), and once the fault is gone the next stream gets its exact codes."""
    talker = engine.tts_model.model.talker
    with BatchScheduler(talker, max_batch=2) as sched:
        boom = RuntimeError("injected fault in the talker step")
        real_step = sched.lean.step

        def broken(n, starts):
            raise boom

        sched.lean.step = broken
        current = sched.submit(prompts[0], 10)
        with pytest.raises(Exception) as err:
            list(current.frames())
        assert err.value is boom or err.value.__cause__ is boom
        later = sched.submit(prompts[1], 5)
        with pytest.raises(Exception) as err:
            list(later.frames())
        assert err.value is boom or err.value.__cause__ is boom
        sched.lean.step = real_step
        again = sched.submit(prompts[1], JOBS[1][2])
        assert torch.equal(torch.stack([c.clone() for c in again.frames()]), solo[1])
    assert sched.failures == 2


def test_bad_settings_fail_only_their_stream(engine, voices, prompts, solo):
    """A stream whose settings are invalid raises ValueError; the stream running beside it is untouched."""
    bad = _prompt(engine, voices[0], JOBS[1][0], do_sample=True, temperature=0.0)
    with BatchScheduler(engine.tts_model.model.talker, max_batch=2) as sched:
        good = sched.submit(prompts[0], JOBS[0][2])
        got: list[torch.Tensor] = []
        t = threading.Thread(target=lambda: got.extend(c.clone() for c in good.frames()))
        t.start()
        with pytest.raises(ValueError, match="temperature"):
            list(sched.submit(bad, 5).frames())
        t.join(timeout=60)
    assert torch.equal(torch.stack(got), solo[0])


def test_cancel_stops_delivery_within_one_frame(engine, prompts):
    """Cancel from the consumer: nothing more is delivered, and the worker generates at most one more frame."""
    with BatchScheduler(engine.tts_model.model.talker, max_batch=2) as sched:
        cancel = threading.Event()
        s = sched.submit(prompts[0], 200)
        got = 0
        for _ in s.frames(cancel):
            got += 1
            if got == 5:
                cancel.set()
                made = sched.frames_out
        assert got == 5 and s.cancelled
        for _ in range(200):  # the worker retires it at its next step
            if not sched._active:
                break
            threading.Event().wait(0.01)
        assert not sched._active and sched.frames_out <= made + 1


def _frames_of(stream, out: list, cancel=None, gate: threading.Event | None = None, after: int = 0):
    """Consume ``stream`` into ``out`` (a thread target); with ``gate``, stop reading after ``after`` frames until
    the gate opens (a consumer that does not read)."""
    for codes in stream.frames(cancel):
        out.append(codes.clone())
        if gate is not None and len(out) == after:
            assert gate.wait(timeout=60)


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_prefill_runs_beside_the_batch(engine, prompts, solo):
    """While a new stream's prefill is in progress (held open here), the running stream keeps getting frames: the
    prefill does not pause the batch. Then the new stream joins and both give their solo codes."""
    talker = engine.tts_model.model.talker
    with BatchScheduler(talker, max_batch=2) as sched:
        real = sched.lean.prefill_apart
        entered, release = threading.Event(), threading.Event()

        def held(inputs_embeds):
            if inputs_embeds is prompts[2].inputs_embeds:
                entered.set()
                assert release.wait(timeout=60)
            return real(inputs_embeds)

        sched.lean.prefill_apart = held
        a, b = sched.submit(prompts[0], JOBS[0][2]), sched.submit(prompts[2], JOBS[2][2])
        got_a: list[torch.Tensor] = []
        got_b: list[torch.Tensor] = []
        ta = threading.Thread(target=_frames_of, args=(a, got_a))
        ta.start()
        _wait_for(lambda: len(got_a) >= 2)
        tb = threading.Thread(target=_frames_of, args=(b, got_b))
        tb.start()
        assert entered.wait(timeout=60)
        during = len(got_a)
        _wait_for(lambda: len(got_a) >= during + 5)  # the batch goes on while b's prefill runs
        assert b.slot < 0 and not got_b
        release.set()
        ta.join(timeout=60)
        tb.join(timeout=60)
    assert torch.equal(torch.stack(got_a), solo[0]) and torch.equal(torch.stack(got_b), solo[2])
    assert sched.max_active == 2 and sched.prefills == 2


def test_streams_joining_at_different_times_equal_solo(engine, prompts, solo):
    """Streams of different lengths start while others are mid-utterance (and one waits for a free slot): each
    gives exactly its solo greedy codes."""
    talker = engine.tts_model.model.talker
    starts = {0: None, 1: (0, 3), 2: (0, 7), 3: (2, 4), 4: (3, 2)}  # stream -> (stream, frames it has) before it starts
    with BatchScheduler(talker, max_batch=3) as sched:
        streams = [sched.submit(p, b) for p, (_, _, b) in zip(prompts, JOBS)]
        out: list[list[torch.Tensor]] = [[] for _ in streams]
        threads = []
        for i, after in starts.items():
            if after is not None:
                k, frames = after
                _wait_for(lambda k=k, frames=frames: len(out[k]) >= frames or not threads[k].is_alive())
            t = threading.Thread(target=_frames_of, args=(streams[i], out[i]))
            t.start()
            threads.append(t)
        [t.join(timeout=120) for t in threads]
    for i in range(len(JOBS)):
        assert torch.equal(torch.stack(out[i]), solo[i]), f"stream {i} differs"
    assert sched.max_active == 3


def test_slow_consumer_does_not_hold_the_batch(engine, prompts, solo):
    """A consumer that stops reading (a client pacing audio in real time) does not slow the others: its stream runs
    ahead to its end (its codes wait in its queue), the other stream finishes meanwhile, and the slow one's codes
    are still exact when it reads them."""
    talker = engine.tts_model.model.talker
    with BatchScheduler(talker, max_batch=2) as sched:
        slow, fast = sched.submit(prompts[2], JOBS[2][2]), sched.submit(prompts[0], JOBS[0][2])
        gate = threading.Event()
        got_slow: list[torch.Tensor] = []
        got_fast: list[torch.Tensor] = []
        ts = threading.Thread(target=_frames_of, args=(slow, got_slow), kwargs=dict(gate=gate, after=1))
        ts.start()
        _wait_for(lambda: len(got_slow) == 1)
        tf = threading.Thread(target=_frames_of, args=(fast, got_fast))
        tf.start()
        tf.join(timeout=60)
        assert not tf.is_alive() and len(got_fast) == JOBS[0][2]
        _wait_for(lambda: not sched._active)  # the slow stream generated everything without being read
        assert len(got_slow) == 1 and slow._queue.qsize() >= JOBS[2][2] - 1
        gate.set()
        ts.join(timeout=60)
    assert torch.equal(torch.stack(got_fast), solo[0]) and torch.equal(torch.stack(got_slow), solo[2])
