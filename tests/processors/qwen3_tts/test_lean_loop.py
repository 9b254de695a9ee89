"""The lean frame loop (static caches, no HF generate) against the reference FrameLoop and upstream's own pieces, on the
tiny random model: exact codes (greedy and seeded sampling), EOS, the engine switch, static buffers, and the GPU
path's shared structure (masked attention, position-gathered RoPE) on CPU. The graphs themselves: test_cuda_graphs.py
(emulated, CPU) and test_gpu.py (a real GPU)."""

from __future__ import annotations

import threading

import pytest
import torch

from processors.qwen3_tts import Qwen3TTSEngine
from processors.qwen3_tts.cuda_graphs import build_lean_talker
from processors.qwen3_tts.frame_loop import FrameLoop, capture_prompt
from processors.qwen3_tts.lean_loop import LeanFrameLoop, LeanTalker, _rope, _talker_rope
from processors.qwen3_tts.voice import to_model_device
from testkit.qwen3_tts_model import make_reference_audio

GREEDY = dict(do_sample=False, subtalker_dosample=False)
TEXT = "Hello there, this is a lean loop test."
N = 24


@pytest.fixture(scope="module")
def engine(tiny_qwen_never_eos_dir):
    torch.set_num_threads(1)
    return Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir)


@pytest.fixture(scope="module")
def ref_audio():
    return make_reference_audio(seconds=4.0, sample_rate=24000, seed=1), 24000


@pytest.fixture(scope="module", params=["icl", "x_vector"])
def voice(request, engine, ref_audio):
    return engine.create_voice(ref_audio, "A short reference sentence for cloning." if request.param == "icl" else None)


def _prompt(engine, voice, text=TEXT, n=N, **gen):
    return capture_prompt(engine.tts_model, text=text, language="English",
                          voice_clone_prompt=[to_model_device(voice, engine.device, engine.dtype)],
                          max_new_tokens=n + 1, **gen)  # fmt: skip


def _reference(engine, voice, n=N, **gen) -> torch.Tensor:
    return torch.stack(list(FrameLoop(engine.tts_model.model.talker, _prompt(engine, voice, n=n, **gen), n).frames()))


def _lean(lean, engine, voice, n=N, **gen) -> torch.Tensor:
    return torch.stack([c.clone() for c in LeanFrameLoop(lean, _prompt(engine, voice, n=n, **gen), n).frames()])


def test_greedy_codes_equal_reference(engine, voice):
    ref = _reference(engine, voice, **GREEDY)
    ours = _lean(LeanTalker(engine.tts_model.model.talker), engine, voice, **GREEDY)
    assert ref.shape == (N, 16)
    assert len(set(ref[:, 0].tolist())) > 3, "the tiny model must produce varied codes for equality to mean anything"
    assert torch.equal(ours, ref)


def test_seeded_sampling_equals_reference(engine, voice):
    torch.manual_seed(11)
    ref = _reference(engine, voice)
    torch.manual_seed(11)
    ours = _lean(LeanTalker(engine.tts_model.model.talker), engine, voice)
    assert torch.equal(ours, ref)
    torch.manual_seed(12)
    other = _lean(LeanTalker(engine.tts_model.model.talker), engine, voice)
    assert not torch.equal(other, ref)  # sampling is live, not greedy in disguise


def test_stops_at_eos_like_reference(tiny_qwen_dir, ref_audio):
    eng = Qwen3TTSEngine.from_pretrained(tiny_qwen_dir)
    vp = eng.create_voice(ref_audio)
    prompt = capture_prompt(eng.tts_model, text=TEXT, language="English",
                            voice_clone_prompt=[to_model_device(vp, eng.device, eng.dtype)], **GREEDY)  # fmt: skip
    ref = list(FrameLoop(eng.tts_model.model.talker, prompt, 500).frames())
    loop = LeanFrameLoop(LeanTalker(eng.tts_model.model.talker), prompt, 500)
    ours = list(loop.frames())
    assert 3 < len(ref) < 500 and not loop.hit_budget
    assert torch.equal(torch.stack(ours), torch.stack(ref))


def test_engine_switch(tiny_qwen_never_eos_dir, engine, voice):
    assert engine.loop == "lean"
    ref_engine = Qwen3TTSEngine(engine.tts_model, engine.model_id, loop="reference")
    a = engine.synthesize(TEXT, voice, "English", max_new_tokens=N + 1, **GREEDY)
    assert set(engine.last_stats.timings) >= {"generate_s", "decode_s", "prefill_s", "talker_s", "predictor_s"}
    b = ref_engine.synthesize(TEXT, voice, "English", max_new_tokens=N + 1, **GREEDY)
    assert len(a) == len(b) == N * 1920
    assert torch.equal(torch.from_numpy(a), torch.from_numpy(b))
    with pytest.raises(ValueError, match="loop"):
        Qwen3TTSEngine(engine.tts_model, engine.model_id, loop="fast")


def test_static_buffers_are_reused(engine, voice):
    lean = LeanTalker(engine.tts_model.model.talker)
    _lean(lean, engine, voice, **GREEDY)
    caches = [c.data_ptr() for c in lean.stack.k_cache + lean.stack.v_cache + lean.pred.k_cache]
    work = lean.stack.work(1, 1)
    x_ptr = work.x.data_ptr()
    # a second, shorter utterance fits: nothing is reallocated, and the result does not depend on the first one
    second = _lean(lean, engine, voice, n=N // 2, **GREEDY)
    assert [c.data_ptr() for c in lean.stack.k_cache + lean.stack.v_cache + lean.pred.k_cache] == caches
    assert lean.stack.work(1, 1) is work and work.x.data_ptr() == x_ptr
    assert torch.equal(second, _lean(LeanTalker(engine.tts_model.model.talker), engine, voice, n=N // 2, **GREEDY))


def test_cache_growth_keeps_contents_and_shrinks_back(engine):
    """A larger cache keeps what the stream wrote; when no stream needs it any more the base cache (kept aside, so
    graphs captured on it stay valid) comes back with the live positions copied over."""
    lean = LeanTalker(engine.tts_model.model.talker, granule=16, base_positions=10)
    stack = lean.stack
    assert stack.capacity == stack.base_capacity == 16 and stack.tier == 0
    base = stack.k_cache[0]
    for c in stack.k_cache:
        c[:, :, :16].normal_()
    before = [c[:, :, :16].clone() for c in stack.k_cache]
    stack.ensure_capacity(40, granule=8)
    assert stack.capacity == 40 and stack.tier == 1 and stack.cos.shape[0] == stack.max_positions
    assert all(torch.equal(c[:, :, :16], b) for c, b in zip(stack.k_cache, before))
    stack.k_cache[0][:, :, 12:14] = 7.0  # written while the larger cache was in use
    assert not stack.restore_base(1, 20)  # a stream still needs more than the base holds
    assert stack.restore_base(1, 14)
    assert stack.capacity == 16 and stack.tier == 0 and stack.k_cache[0] is base
    assert torch.equal(base[0, :, 12:14], torch.full_like(base[0, :, 12:14], 7.0))
    with pytest.raises(ValueError, match="cap"):
        stack.ensure_capacity(stack.max_positions + 1)


def test_rope_table_equals_upstream(engine):
    """Our table + _rope equals upstream's MRoPE path (rotary module + apply_multimodal_rotary_pos_emb) bit for bit."""
    from qwen_tts.core.models.modeling_qwen3_tts import apply_multimodal_rotary_pos_emb

    talker = engine.tts_model.model.talker
    cfg = talker.config
    n, heads, d = 50, cfg.num_attention_heads, cfg.head_dim
    q = torch.randn(1, heads, n, d)
    pos = torch.arange(n).view(1, 1, n).expand(3, 1, n)
    cos, sin = talker.model.rotary_emb(q, pos)
    up_q, _ = apply_multimodal_rotary_pos_emb(q, q, cos, sin, cfg.rope_scaling["mrope_section"],
                                              cfg.rope_scaling["interleaved"])  # fmt: skip
    tcos, tsin = _talker_rope(talker)(n)
    x = q.transpose(1, 2).contiguous().view(1, n, heads, d)
    ours = _rope(x, tcos.view(1, n, 1, d), tsin.view(1, n, 1, d), torch.empty_like(x), torch.empty_like(x))
    assert torch.equal(ours, up_q.transpose(1, 2))


def test_masked_attention_equals_reference(engine, voice):
    """The GPU path's attention (one SDPA over the static cache with a position mask, RoPE rows gathered by
    position) runs on CPU too and gives the same greedy codes."""
    ref = _reference(engine, voice, **GREEDY)
    lean = LeanTalker(engine.tts_model.model.talker, attention="masked")
    assert torch.equal(_lean(lean, engine, voice, **GREEDY), ref)


def test_masked_caches_start_zeroed(engine):
    """Masked attention multiplies every cached value (weight 0 for masked ones), so unwritten positions must hold
    finite values: NaN garbage from an uninitialised buffer would poison every output (a flaky batch test found it)."""
    lean = LeanTalker(engine.tts_model.model.talker, max_batch=2, attention="masked")
    lean.stack.ensure_capacity(256, granule=256)
    assert all(int(torch.count_nonzero(c)) == 0 for c in lean.stack.k_cache + lean.stack.v_cache)
    lean.stack.k_cache[0][:, :, :10] = 1.0
    lean.stack.ensure_capacity(600, granule=256)  # growth: old rows kept, new rows zero
    assert int(torch.count_nonzero(lean.stack.k_cache[0])) == 2 * 10 * lean.stack.n_kv * lean.stack.head_dim


def test_cancel_and_budget(engine, voice):
    lean = LeanTalker(engine.tts_model.model.talker)
    loop = LeanFrameLoop(lean, _prompt(engine, voice, n=200, **GREEDY), 7)
    assert len(list(loop.frames())) == 7 and loop.hit_budget
    cancel = threading.Event()
    loop = LeanFrameLoop(lean, _prompt(engine, voice, n=200, **GREEDY), 100)
    got = []
    for codes in loop.frames(cancel):
        got.append(codes)
        if len(got) == 3:
            cancel.set()
    assert len(got) == 3 and loop.cancelled and not loop.hit_budget


def test_build_lean_talker_picks_cpu_runner(engine):
    assert type(build_lean_talker(engine.tts_model.model.talker)) is LeanTalker


def test_cuda_graph_runner_refuses_cpu_model(engine):
    from processors.qwen3_tts.cuda_graphs import CudaGraphTalker

    with pytest.raises(RuntimeError, match="CUDA"):
        CudaGraphTalker(engine.tts_model.model.talker)
