"""The GPU path (``cuda_graphs.py``) proven on a CPU: ``CudaGraphTalker`` with an emulated graph runner
(``testkit/cuda_graph_emulator.py``: replays fail on freed or replaced tensors, captures fail on host syncs), driven
through the batch scheduler and the engine; ``CudaGraphRunner`` under a mocked ``torch.cuda``; the host-sync budget of
the eager loop; the attention layout and cache sizes the fused SDPA kernels need. Tiny random model, greedy unless a
test says otherwise; the eager reference is the masked-attention ``LeanTalker`` at the same cache granule (16
positions here, so caches grow and windows change within a few frames)."""

from __future__ import annotations

import contextlib
import logging
import threading

import pytest
import torch

from processors.qwen3_tts import Qwen3TTSEngine
from processors.qwen3_tts import cuda_graphs as cg
from processors.qwen3_tts.batching import BatchScheduler
from processors.qwen3_tts.cuda_graphs import CudaGraphRunner, CudaGraphTalker
from processors.qwen3_tts.frame_loop import capture_prompt
from processors.qwen3_tts.lean_loop import LeanFrameLoop, LeanTalker
from processors.qwen3_tts.timing import StepTimer
from processors.qwen3_tts.voice import to_model_device
from testkit.cuda_graph_emulator import EmulatedGraphRunner, StorageRecorder
from testkit.qwen3_tts_model import make_reference_audio

GREEDY = dict(do_sample=False, subtalker_dosample=False)
TEXTS = [
    "Hello there, this is the first stream of the graph test.",
    "Short one.",
    "A third voice with its own settings.",
]


@pytest.fixture(scope="module")
def engine(tiny_qwen_never_eos_dir):
    torch.set_num_threads(1)
    return Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir)


@pytest.fixture(scope="module")
def voice(engine):
    return engine.create_voice((make_reference_audio(4.0, 24000, seed=1), 24000))  # x-vector: 10-position prompts


def _prompt(engine, voice, text, **gen):
    return capture_prompt(engine.tts_model, text=text, language="English",
                          voice_clone_prompt=[to_model_device(voice, engine.device, engine.dtype)], **gen)  # fmt: skip


def _run(lean, prompt, frames):
    return torch.stack([c.clone() for c in LeanFrameLoop(lean, prompt, frames).frames()])


G = 16  # cache granule of these tests


def _eager(engine, prompt, frames):
    """The reference: the eager masked-attention loop (what the graphs capture), one stream."""
    return _run(LeanTalker(engine.tts_model.model.talker, attention="masked", granule=G), prompt, frames)


def _graphs(engine, runner, max_batch=1, base_positions=32):
    return CudaGraphTalker(engine.tts_model.model.talker, max_batch, runner=runner, base_positions=base_positions,
                           granule=G)  # fmt: skip


def _record_batch_sizes(lean) -> list[int]:
    sizes: list[int] = []
    step = lean.step

    def recording(n, starts):
        sizes.append(n)
        return step(n, starts)

    lean.step = recording
    return sizes


# --------------------------------------------------------------------------------------------------------------------
# Graph lifetimes: batch size 1 -> 2 -> 1, cache growth
# --------------------------------------------------------------------------------------------------------------------


def test_batch_1_2_1_replays_only_live_memory(engine, voice):
    """Stream A alone (1-row graphs), B joins (2 rows), B leaves, A alone again: every replay reads memory that is
    still the memory it captured (no freed index buffer, no replaced tensor), and both streams get the eager codes."""
    talker = engine.tts_model.model.talker
    pa, pb = _prompt(engine, voice, TEXTS[0], **GREEDY), _prompt(engine, voice, TEXTS[1], **GREEDY)
    runner = EmulatedGraphRunner()
    with BatchScheduler(talker, max_batch=4) as sched:
        sched.lean = _graphs(engine, runner, max_batch=4, base_positions=64)
        sizes = _record_batch_sizes(sched.lean)
        a, b = sched.submit(pa, 50), sched.submit(pb, 6)
        got_a, got_b = [], []
        joined = threading.Thread(target=lambda: got_b.extend(c.clone() for c in b.frames()))
        for codes in a.frames():
            got_a.append(codes.clone())
            if len(got_a) == 3:
                joined.start()
        joined.join(timeout=60)
    first2, last2 = sizes.index(2), len(sizes) - 1 - sizes[::-1].index(2)
    assert 1 in sizes[:first2] and 1 in sizes[last2:], f"no 1 -> 2 -> 1 sequence: {sizes}"
    assert runner.replays > len(sizes)  # every step and predictor call replayed a graph
    assert torch.equal(torch.stack(got_a), _eager(engine, pa, 50))
    assert torch.equal(torch.stack(got_b), _eager(engine, pb, 6))


def test_cache_growth_recaptures_and_equals_eager(engine, voice):
    """A short utterance on the base cache, then one longer than it (a larger cache: talker graphs captured for it,
    dropped after), then a short one again (the base cache's graphs still valid, nothing recaptured)."""
    lean = _graphs(engine, EmulatedGraphRunner(), base_positions=32)
    assert lean.warmup() == 3  # predictor; talker for windows 16 and 32
    short, long = _prompt(engine, voice, TEXTS[1], **GREEDY), _prompt(engine, voice, TEXTS[0], **GREEDY)
    n_long = 60 - 1 - long.inputs_embeds.shape[1]  # 60 positions: a 64-position cache on both sides
    assert torch.equal(_run(lean, short, 15), _eager(engine, short, 15))
    assert lean.captures == 3
    assert torch.equal(_run(lean, long, n_long), _eager(engine, long, n_long))
    assert lean.captures == 6  # the larger cache's talker graphs, windows 16, 32 and 64
    assert lean.stack.capacity == 32 and lean.stack.tier == 0  # back on the base cache
    assert all(k[1] == 0 for k in lean.graphs if k[0] == "talker")  # the larger cache's graphs are gone
    assert torch.equal(_run(lean, short, 15), _eager(engine, short, 15))
    assert lean.captures == 6


# --------------------------------------------------------------------------------------------------------------------
# Bounded keys captured at warm-up, no syncs in graphs, per-stream settings
# --------------------------------------------------------------------------------------------------------------------

MIXED = [
    dict(do_sample=False, subtalker_dosample=False),  # greedy everywhere
    {},  # the model's defaults: sampling, top-k 50, temperature 0.9, repetition penalty
    dict(subtalker_temperature=0.5, subtalker_top_p=0.8, subtalker_top_k=0, temperature=0.7),
]


def test_warmup_captures_every_key_and_streams_capture_nothing(engine, voice):
    """Warm-up captures the predictor per batch bucket and the talker per bucket and window, every capture without
    a host sync (the emulator fails a capture that syncs). Streams with mixed sampling settings then run at 1, 2 and
    3 streams without a single new capture, and the greedy stream gets its solo codes beside sampled ones."""
    talker = engine.tts_model.model.talker
    runner = EmulatedGraphRunner()
    with BatchScheduler(talker, max_batch=4) as sched:
        sched.lean = lean = _graphs(engine, runner, max_batch=4)
        assert sched.warmup() == 9
        assert set(lean.graphs) == {("predictor", rows) for rows in (1, 2, 4)} | {
            ("talker", 0, rows, window) for rows in (1, 2, 4) for window in (16, 32)}  # fmt: skip
        sizes = _record_batch_sizes(lean)
        prompts = [_prompt(engine, voice, t, **g) for t, g in zip(TEXTS, MIXED)]
        streams = [sched.submit(p, 20 - 5 * i) for i, p in enumerate(prompts)]
        out: list[list[torch.Tensor]] = [[] for _ in streams]
        threads = [threading.Thread(target=lambda i=i: out[i].extend(c.clone() for c in streams[i].frames()))
                   for i in range(3)]  # fmt: skip
        [t.start() for t in threads]
        [t.join(timeout=60) for t in threads]
    assert {1, 2, 3} <= set(sizes) and len(runner.captured) == 9 and lean.captures == 9
    assert [len(o) for o in out] == [20, 15, 10]
    assert torch.equal(torch.stack(out[0]), _eager(engine, prompts[0], 20))
    for o in out[1:]:
        assert ((torch.stack(o) >= 0) & (torch.stack(o) < 3072)).all()


def test_seeded_sampling_unaffected_by_capture(engine, voice):
    """Capturing (with its warm-up runs) leaves the RNG alone: a seeded sampled utterance on a talker that captures
    its graphs on the way equals the same seeded utterance on the eager loop."""
    prompt = _prompt(engine, voice, TEXTS[0])  # the model's sampling defaults
    torch.manual_seed(5)
    eager = _eager(engine, prompt, 16)
    torch.manual_seed(5)
    graphs = _run(_graphs(engine, EmulatedGraphRunner()), prompt, 16)
    assert torch.equal(graphs, eager)
    assert len(set(eager[:, 0].tolist())) > 3


def test_capture_failure_falls_back_to_eager_with_one_log_line(engine, voice, caplog):
    prompt = _prompt(engine, voice, TEXTS[0], **GREEDY)
    runner = EmulatedGraphRunner(fail_capture=lambda fn: True)
    lean = _graphs(engine, runner)
    with caplog.at_level(logging.WARNING, logger="duplex.qwen3_tts"):
        assert torch.equal(_run(lean, prompt, 12), _eager(engine, prompt, 12))
        assert torch.equal(_run(lean, prompt, 12), _eager(engine, prompt, 12))
    assert lean.eager_reason and not lean.graphs and runner.replays == 0
    assert len([r for r in caplog.records if "capture failed" in r.message]) == 1


# --------------------------------------------------------------------------------------------------------------------
# Host syncs per frame in the eager loops
# --------------------------------------------------------------------------------------------------------------------


def _count_status_reads(lean) -> list[int]:
    reads = [0]
    read = lean.read_status

    def counting(n):
        reads[0] += 1
        return read(n)

    lean.read_status = counting
    return reads


def test_eager_loop_syncs_once_per_frame(engine, voice):
    """Default sampling (repetition penalty, suppressed control ids, min-new-tokens guard): the only host sync per
    frame is the one status read (HF's suppress processor alone cost two per frame: ``isin`` over 1023 ids)."""
    prompt = _prompt(engine, voice, TEXTS[0])
    lean = LeanTalker(engine.tts_model.model.talker)
    _run(lean, prompt, 2)  # builds the suppressed-id mask once (one copy to the device per list, per process)
    reads = _count_status_reads(lean)
    rec = StorageRecorder()
    loop = LeanFrameLoop(lean, prompt, 12)
    with torch.inference_mode(), rec:
        frames = [c.clone() for c in loop.frames()]
    assert len(frames) == 12
    assert rec.syncs == []
    assert reads[0] <= len(frames) + 1  # one per frame, and the one that sees the budget


def test_batched_steps_sync_once_per_step(engine, voice):
    talker = engine.tts_model.model.talker
    prompts = [_prompt(engine, voice, t, **g) for t, g in zip(TEXTS, MIXED)]
    with BatchScheduler(talker, max_batch=4) as sched:
        reads = _count_status_reads(sched.lean)
        syncs: list[str] = []
        step = sched._step

        def recorded_step():
            rec = StorageRecorder()
            with rec:
                step()
            syncs.extend(rec.syncs)

        sched._step = recorded_step
        streams = [sched.submit(p, 10) for p in prompts]
        threads = [threading.Thread(target=lambda s=s: list(s.frames())) for s in streams]
        [t.start() for t in threads]
        [t.join(timeout=60) for t in threads]
    assert syncs == [] and sched.steps >= 10
    assert reads[0] <= sched.steps + 3  # one per step (plus the steps that only retire streams)


# --------------------------------------------------------------------------------------------------------------------
# Attention layout and cache size
# --------------------------------------------------------------------------------------------------------------------


def test_masked_attention_is_laid_out_for_fused_kernels_over_a_window(engine, voice, monkeypatch):
    """Decode attention: the query heads of each KV head as its query rows (no ``enable_gqa``), an additive mask in
    the model dtype, last dimensions contiguous, a key length that is the window covering the stream (a multiple of
    16, as the memory-efficient kernel wants), not the whole cache: after a long utterance grew the cache, a short
    one attends over its own small window on the base cache again."""
    import processors.qwen3_tts.lean_loop as ll

    calls = []
    sdpa = ll.F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kw):
        calls.append((tuple(q.shape), tuple(k.shape), attn_mask, kw, q.stride(-1), k.stride(-1), v.stride(-1)))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    lean = LeanTalker(engine.tts_model.model.talker, attention="masked", granule=G)
    long, short = _prompt(engine, voice, TEXTS[0], **GREEDY), _prompt(engine, voice, TEXTS[1], **GREEDY)
    _run(lean, long, 100 - long.inputs_embeds.shape[1])
    assert lean.stack.capacity == lean.stack.base_capacity == G  # the larger cache is gone
    monkeypatch.setattr(ll.F, "scaled_dot_product_attention", recording)
    _run(lean, short, 10)  # positions 10..19: windows 16, then 32 (the cache grows again for it)
    decode = [c for c in calls if c[2] is not None]
    assert decode, "no masked decode attention ran"
    st = lean.stack
    assert sorted({c[1][2] for c in decode}) == [16, 32]
    for q, k, mask, kw, *strides in decode:
        assert q == (1, st.n_kv, st.n_heads // st.n_kv, st.head_dim) and "enable_gqa" not in kw
        assert k[:2] == (1, st.n_kv) and k[3] == st.head_dim and k[2] % 16 == 0
        assert mask.dtype == lean.dtype and mask.shape == (1, 1, 1, k[2]) and strides == [1, 1, 1]


# --------------------------------------------------------------------------------------------------------------------
# CudaGraphRunner under a mocked torch.cuda: device, lock, capture mode, one pool
# --------------------------------------------------------------------------------------------------------------------


class FakeCuda:
    """Just enough of ``torch.cuda`` to see where captures and replays happen."""

    def __init__(self):
        self.device_now = 0
        self.stream_now = None
        self.log: list[tuple] = []
        fake = self

        class Stream:
            def __init__(self, device=None, **_):
                self.device = torch.device(device).index if device is not None else fake.device_now

            def wait_stream(self, other):
                pass

        class CUDAGraph:
            def replay(self):
                fake.log.append(("replay", fake.device_now))

        self.Stream, self.CUDAGraph = Stream, CUDAGraph

    def is_available(self):
        return True

    def current_device(self):
        return self.device_now

    def current_stream(self, device=None):
        return self.Stream(device)

    @contextlib.contextmanager
    def device(self, d):
        prev, self.device_now = self.device_now, torch.device(d).index
        try:
            yield
        finally:
            self.device_now = prev

    @contextlib.contextmanager
    def stream(self, s):
        prev, self.stream_now = self.stream_now, s
        try:
            yield
        finally:
            self.stream_now = prev

    def graph_pool_handle(self):
        return object()

    @contextlib.contextmanager
    def graph(self, g, pool=None, stream=None, capture_error_mode="global", **_):
        self.log.append(("capture", self.device_now, cg.CAPTURE_LOCK.locked(), capture_error_mode, pool,
                         stream.device if stream is not None else None))  # fmt: skip
        with self.stream(stream):  # like torch.cuda.graph: the capture stream is current inside
            yield


@pytest.fixture()
def fake_cuda(monkeypatch):
    fake = FakeCuda()
    for name in ("is_available", "current_device", "current_stream", "device", "stream", "graph_pool_handle",
                 "graph", "Stream", "CUDAGraph"):  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    return fake


def test_runner_captures_and_replays_on_the_engine_device(fake_cuda):
    runner = CudaGraphRunner("cuda:1")
    seen = []
    fn = lambda: seen.append((fake_cuda.device_now, fake_cuda.stream_now.device, cg.CAPTURE_LOCK.locked()))
    g1, g2 = runner.capture(fn), runner.capture(fn)
    runner.replay(g1)
    runner.replay(g2)
    assert seen and all(s == (1, 1, True) for s in seen)  # warm-ups and captures: device 1, its stream, locked
    captures = [e for e in fake_cuda.log if e[0] == "capture"]
    assert [e[1:4] for e in captures] == [(1, True, "thread_local")] * 2
    assert captures[0][4] is captures[1][4] is not None and captures[0][5] == 1  # one pool, device-1 stream
    assert [e for e in fake_cuda.log if e[0] == "replay"] == [("replay", 1)] * 2
    assert not cg.CAPTURE_LOCK.locked() and fake_cuda.device_now == 0


def test_graph_talker_on_a_second_gpu_never_touches_device_0(engine, voice, fake_cuda):
    """The whole talker (warm-up, steps) with its runner on cuda:1: every capture and replay on device 1."""
    lean = _graphs(engine, CudaGraphRunner("cuda:1"))
    lean.warmup()
    _run(lean, _prompt(engine, voice, TEXTS[1], **GREEDY), 4)
    assert {e[1] for e in fake_cuda.log} == {1}
    assert sum(e[0] == "replay" for e in fake_cuda.log) >= 8 and sum(e[0] == "capture" for e in fake_cuda.log) == 3


def test_step_timer_uses_cuda_events_on_a_gpu(monkeypatch):
    """On a GPU the host clock around a step sees only kernel launches: spans are CUDA events, read when done."""

    class Event:
        def __init__(self, enable_timing=False):
            self.t, self.done = None, False

        def record(self, stream=None):
            self.t = len(recorded)
            recorded.append(self)

        def query(self):
            return self.done

        def synchronize(self):
            self.done = True

        def elapsed_time(self, end):
            return 40.0 * (end.t - self.t)  # ms

    recorded: list[Event] = []
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    timer = StepTimer(torch.device("cuda", 0))
    a, b = {}, {}
    with timer.span("talker_s", a, b):
        pass
    timer.resolve()
    assert a == {} and b == {}  # not finished on the device yet: nothing forced
    timer.resolve(wait=True)
    assert a == b == {"talker_s": 0.02}


# --------------------------------------------------------------------------------------------------------------------
# Qwen3TTSEngine.warmup
# --------------------------------------------------------------------------------------------------------------------


def test_engine_warmup_captures_at_load_and_streams_capture_nothing(engine, voice):
    """On a CPU ``warmup`` only builds the eager runner; with a graph talker it captures every graph, and synthesis
    afterwards captures nothing and sounds like the eager loop; with a scheduler it warms the scheduler's talker."""
    talker = engine.tts_model.model.talker
    cpu = Qwen3TTSEngine(engine.tts_model, engine.model_id)
    assert cpu.warmup()["graphs"] == 0 and type(cpu._lean) is LeanTalker
    runner = EmulatedGraphRunner()
    gpu_like = Qwen3TTSEngine(engine.tts_model, engine.model_id)
    gpu_like._lean = _graphs(engine, runner)
    assert gpu_like.warmup()["graphs"] == 3 and len(runner.captured) == 3
    wav = gpu_like.synthesize(TEXTS[0], voice, "English", max_frames=10, **GREEDY)
    assert len(runner.captured) == 3 and runner.replays >= 20
    eager = Qwen3TTSEngine(engine.tts_model, engine.model_id)
    eager._lean = LeanTalker(talker, attention="masked", granule=G)
    assert torch.equal(torch.from_numpy(wav), torch.from_numpy(eager.synthesize(TEXTS[0], voice, "English",
                                                                                 max_frames=10, **GREEDY)))  # fmt: skip
    with BatchScheduler(talker, max_batch=2) as sched:
        sched.lean = _graphs(engine, EmulatedGraphRunner(), max_batch=2)
        assert Qwen3TTSEngine(engine.tts_model, engine.model_id, scheduler=sched).warmup()["graphs"] == 6
