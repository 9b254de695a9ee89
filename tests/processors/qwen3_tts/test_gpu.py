"""The CUDA-graph path on a real GPU (``-m gpu``; skipped cleanly without CUDA; ``scripts/gpu-check.sh`` runs them).

Every capture runs with torch's ``check_input_liveness=True`` (a replay that would read freed memory raises). A
single-threaded driver steps a fixed join/leave plan (1 -> 2 -> 1 -> 4 streams) on the graphs and on the eager
masked loop of the same device and dtype, so both run the same kernels on the same row counts: their codes must be
equal. Tiny model in fp32 and the full-size random model in bf16; cache growth; a speech recogniser busy on the same
GPU in another thread while the graphs are captured; the SDPA kernel the decode attention gets."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from processors.qwen3_tts import Qwen3TTSEngine
from processors.qwen3_tts.cuda_graphs import CudaGraphRunner, CudaGraphTalker, build_lean_talker
from processors.qwen3_tts.frame_loop import capture_prompt
from processors.qwen3_tts.lean_loop import LeanFrameLoop, LeanTalker, StreamSampler
from processors.qwen3_tts.voice import to_model_device
from testkit.qwen3_tts_model import cached_random_model_dir, default_cache_dir, make_reference_audio

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GREEDY = dict(do_sample=False, subtalker_dosample=False)
TEXTS = [
    "Hello there, this is the first stream on the graphs.",
    "A second one joins.",
    "Then three more at once.",
    "Four of them now.",
    "And the last one.",
]
# stream index -> (step it joins at, frames): 1 -> 2 -> 1 -> 4 streams
PLAN = {0: (0, 40), 1: (5, 8), 2: (20, 12), 3: (20, 12), 4: (20, 12)}


@pytest.fixture(scope="module", params=["tiny", "full"])
def engine(request, tiny_qwen_never_eos_dir):
    if request.param == "tiny":
        return Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir, device="cuda:0", dtype="float32")
    return Qwen3TTSEngine.from_pretrained(cached_random_model_dir(default_cache_dir(), "full"), device="cuda:0")


@pytest.fixture(scope="module")
def prompts(engine):
    voice = engine.create_voice((make_reference_audio(4.0, 24000, seed=1), 24000), "A short reference sentence.")
    return [capture_prompt(engine.tts_model, text=t, language="English",
                           voice_clone_prompt=[to_model_device(voice, engine.device, engine.dtype)], **GREEDY)
            for t in TEXTS]  # fmt: skip


def _graphs(engine, max_batch=4, **kw):
    runner = CudaGraphRunner(engine.device, check_input_liveness=True)
    return CudaGraphTalker(engine.tts_model.model.talker, max_batch, runner=runner, **kw)


def drive(lean: LeanTalker, prompts, plan) -> dict[int, torch.Tensor]:
    """Step ``plan``'s streams (index -> (join step, frames)) together on ``lean``, single-threaded, the way the batch
    scheduler does (join into the next slot, leave at the budget, later streams move into the gaps)."""
    active: list[dict] = []
    out: dict[int, list[torch.Tensor]] = {}
    last_join = max(step for step, _ in plan.values())
    step = 0
    with torch.inference_mode():
        while active or step <= last_join:
            for i in sorted(i for i, (at, _) in plan.items() if at == step):
                p, slot = prompts[i], len(active)
                s = dict(
                    i=i, slot=slot, frame=0, frames=plan[i][1], L=p.inputs_embeds.shape[1], sampler=StreamSampler(p)
                )
                lean.join(slot, s["sampler"])
                lean.prefill(slot, p.inputs_embeds, s["L"] + s["frames"] + 1)
                lean.pos[slot] = s["L"]
                lean.sample_talker(slot, 1)
                active.append(s)
                out[i] = []
            if active:
                n = len(active)
                codes = lean.predict(n).clone()
                status = lean.read_status(n)
                keep = []
                for b, s in enumerate(active):
                    assert not status[b][1], "non-finite logits"
                    if status[b][0] != s["sampler"].eos and s["frame"] < s["frames"]:
                        out[s["i"]].append(codes[b])
                        keep.append(s)
                for new, s in enumerate(keep):
                    if s["slot"] != new:
                        lean.move_slot(s["slot"], new, s["L"] + s["frame"])
                        s["slot"] = new
                for slot in range(len(keep), n):
                    lean.free_slot(slot)
                active = keep
                if active:
                    n = len(active)
                    lean.next_inputs(n, [s["sampler"].text_row(s["frame"]) for s in active])
                    lean.step(n, [s["L"] + s["frame"] for s in active])
                    lean.pos[:n].add_(1)
                    lean.sample_talker(0, n)
                    for s in active:
                        s["frame"] += 1
            step += 1
    return {i: torch.stack(c).cpu() for i, c in out.items()}


def test_graphs_equal_eager_through_batch_sizes_1_2_1_4(engine, prompts):
    graphs = _graphs(engine, base_positions=256)
    assert graphs.warmup() == 3 + 3  # predictor and talker (window 256) for 1, 2 and 4 rows
    got = drive(graphs, prompts, PLAN)
    eager = drive(LeanTalker(engine.tts_model.model.talker, 4, attention="masked"), prompts, PLAN)
    assert graphs.eager_reason is None and graphs.captures == 6
    for i in PLAN:
        assert got[i].shape == (PLAN[i][1], 16)
        assert torch.equal(got[i], eager[i]), f"stream {i}"


def test_cache_growth_recaptures_on_gpu(engine, prompts):
    graphs = _graphs(engine, max_batch=1, base_positions=256)
    graphs.warmup()
    n = 300 - prompts[0].inputs_embeds.shape[1]
    loop = lambda lean, f: torch.stack([c.clone() for c in LeanFrameLoop(lean, prompts[0], f).frames()]).cpu()
    eager = LeanTalker(engine.tts_model.model.talker, attention="masked")
    assert torch.equal(loop(graphs, n), loop(eager, n))
    assert graphs.captures > 2 and graphs.stack.capacity == 256 and graphs.eager_reason is None
    assert torch.equal(loop(graphs, 20), loop(eager, 20))


def test_capture_while_speech_recognition_runs_on_the_gpu(engine, tiny_nemo):
    """Parakeet transcribing on the same GPU in another thread (allocations, syncs) during every capture."""
    import numpy as np

    from processors.parakeet_stt import ParakeetEngine

    stt = ParakeetEngine.from_pretrained(str(tiny_nemo), device=str(engine.device))
    stop, errors, runs = threading.Event(), [], [0]
    audio = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1

    def transcribe():
        try:
            while not stop.is_set():
                stt.transcribe(audio)
                torch.empty(int(np.random.randint(1, 64)) * 2**20, device=engine.device).fill_(1)
                runs[0] += 1
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=transcribe)
    t.start()
    try:
        time.sleep(0.5)
        graphs = _graphs(engine, max_batch=4, base_positions=1024)
        captured = graphs.warmup()
    finally:
        stop.set()
        t.join(timeout=60)
    assert not errors and runs[0] > 0
    assert graphs.eager_reason is None and captured == 3 + 3 * 3  # windows 256, 512, 1024


def test_decode_attention_gets_a_fused_sdpa_kernel(engine, prompts):
    """Logs the SDPA kernel the masked decode step runs; bf16 on sm80+ must get a fused one, not the math path."""
    lean = LeanTalker(engine.tts_model.model.talker, attention="masked")
    names = sdpa_kernels(lean, prompts[0])
    print(f"\nSDPA kernels for the decode step ({engine.dtype}, {torch.cuda.get_device_name()}): {names}")
    fused = [k for k in names if any(s in k.lower() for s in ("fmha", "efficient", "flash", "cudnn"))]
    if engine.dtype == torch.bfloat16 and torch.cuda.get_device_capability()[0] >= 8:
        assert fused, f"decode attention fell back to the math kernels: {names}"


def sdpa_kernels(lean: LeanTalker, prompt) -> list[str]:
    """CUDA kernel names of one masked decode attention call (profiled)."""
    from torch.profiler import ProfilerActivity, profile

    import processors.qwen3_tts.lean_loop as ll

    seen: list[str] = []
    sdpa = ll.F.scaled_dot_product_attention

    def once(*a, **k):
        if k.get("attn_mask") is None or seen:
            return sdpa(*a, **k)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            out = sdpa(*a, **k)
            torch.cuda.synchronize()
        seen.extend(sorted({e.name for e in prof.events() if e.device_type.name == "CUDA"}))
        return out

    ll.F.scaled_dot_product_attention = once
    try:
        list(LeanFrameLoop(lean, prompt, 2).frames())
    finally:
        ll.F.scaled_dot_product_attention = sdpa
    return seen


def test_engine_on_gpu_warms_up_and_streams(engine, prompts):
    """The engine picks the graph talker on CUDA, ``warmup`` captures, and a stream after it captures nothing and
    reports GPU-timed steps."""
    eng = Qwen3TTSEngine(engine.tts_model, engine.model_id)
    done = eng.warmup()
    assert isinstance(eng._lean, CudaGraphTalker) and done["graphs"] >= 2
    voice = eng.create_voice((make_reference_audio(4.0, 24000, seed=1), 24000))
    before = eng._lean.captures
    wav = eng.synthesize(TEXTS[0], voice, "English", max_frames=24, **GREEDY)
    assert eng._lean.captures == before and len(wav) == 24 * 1920 and abs(wav).max() > 1e-4
    assert eng.last_stats.timings["talker_s"] > 0 and eng.last_stats.timings["predictor_s"] > 0
    assert isinstance(build_lean_talker(engine.tts_model.model.talker), CudaGraphTalker)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_gpu(tiny_qwen_never_eos_dir):
    """A model on cuda:1 captures and replays there (graphs on device 0 would replay nothing)."""
    eng = Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir, device="cuda:1", dtype="float32")
    voice = eng.create_voice((make_reference_audio(4.0, 24000, seed=1), 24000))
    p = capture_prompt(eng.tts_model, text=TEXTS[0], language="English",
                       voice_clone_prompt=[to_model_device(voice, eng.device, eng.dtype)], **GREEDY)  # fmt: skip
    graphs = _graphs(eng, max_batch=1, base_positions=256)
    graphs.warmup()
    loop = lambda lean: torch.stack([c.clone() for c in LeanFrameLoop(lean, p, 20).frames()]).cpu()
    assert torch.equal(loop(graphs), loop(LeanTalker(eng.tts_model.model.talker, attention="masked")))
