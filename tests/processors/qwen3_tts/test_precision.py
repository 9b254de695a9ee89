"""Precision options (bf16, weight-only int8, torch.ao dynamic int8) on the tiny random model: the kernels compute what
they claim, quantisation replaces exactly the per-step linears, every loop runs the quantised model, the lean loop
stays exact against the reference loop at the same precision, and the drift measures are right.

Drift on the full-size model is measured by ``duplex bench tts`` (docs/benchmarks.md); quality on real weights is
unverified."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from processors.qwen3_tts import Qwen3TTSEngine
from processors.qwen3_tts.precision import (
    Int8Linear,
    _Dense,
    _PackedBF16,
    bf16_supported,
    make_linear,
    quantize_talker,
    snr_db,
    token_agreement,
    weight_bytes_per_frame,
)
from testkit.qwen3_tts_model import make_reference_audio

GREEDY = dict(do_sample=False, subtalker_dosample=False)
TEXT = "Precision options should still speak."
N = 16
needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="CPU without AVX512-BF16/AMX")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ref_audio():
    return make_reference_audio(seconds=4.0, sample_rate=24000, seed=1), 24000


def test_int8_linear_is_per_channel_symmetric():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48, bias=True)
    lin.weight.data[3] *= 50  # one loud row must not cost the others their resolution (per-channel scales)
    q = Int8Linear(lin, torch.float32)
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() <= 127
    err = (q.dequantized() - lin.weight).abs()
    assert torch.all(err <= q.scale[:, None] / 2 + 1e-7)
    assert err[0].max() < err[3].max() / 10
    x = torch.randn(5, 64)
    expected = x @ q.dequantized().T + lin.bias
    assert torch.allclose(q(x), expected, atol=1e-4, rtol=1e-4)
    assert torch.allclose(q(x.view(5, 1, 64)).view(5, 48), q(x))  # upstream's 3-D inputs


@needs_bf16
def test_packed_bf16_kernel_matches_linear():
    torch.manual_seed(0)
    lin = nn.Linear(256, 192, bias=False).to(torch.bfloat16)
    kernel = make_linear(lin)
    assert isinstance(kernel, _PackedBF16)
    x = torch.randn(1, 256, dtype=torch.bfloat16)
    assert torch.allclose(kernel(x, None).float(), nn.functional.linear(x, lin.weight).float(), atol=2e-2, rtol=2e-2)


def test_dense_kernel_is_exactly_f_linear():
    torch.manual_seed(0)
    lin = nn.Linear(96, 80, bias=True)
    kernel = make_linear(lin)
    assert isinstance(kernel, _Dense)
    x = torch.randn(3, 96)
    out = torch.empty(3, 80)
    y = kernel(x, out)
    assert y.data_ptr() == out.data_ptr() and torch.equal(y, nn.functional.linear(x, lin.weight, lin.bias))


@pytest.mark.parametrize("mode", ["int8", "int8-dynamic"])
def test_quantize_replaces_the_per_step_linears(tiny_qwen_never_eos_dir, mode):
    eng = Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir, dtype="float32")
    talker = eng.tts_model.model.talker
    before = weight_bytes_per_frame(talker)
    n_layers = len(talker.model.layers) + len(talker.code_predictor.model.layers)
    expected = 7 * n_layers + 1 + len(talker.code_predictor.lm_head)
    assert quantize_talker(talker, mode) == expected
    assert quantize_talker(talker, mode) == 0  # idempotent
    assert isinstance(talker.model.text_embedding, nn.Embedding)  # embeddings and text projection untouched
    assert isinstance(talker.text_projection.linear_fc1, nn.Linear)
    after = weight_bytes_per_frame(talker)
    assert before / after > 3.0  # ~4x fewer bytes per frame (norm weights and scales stay wider)


def test_weight_bytes_per_frame_counts_the_predictor_15_times(tiny_qwen_never_eos_dir):
    eng = Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir)
    talker = eng.tts_model.model.talker
    p = lambda mods: sum(q.numel() * 4 for m in mods for q in m.parameters())
    norms_free = p(talker.model.layers) + talker.codec_head.weight.numel() * 4
    pred = p(talker.code_predictor.model.layers) + talker.code_predictor.lm_head[0].weight.numel() * 4
    assert weight_bytes_per_frame(talker) == norms_free + 15 * pred


def test_bad_quantize_mode(tiny_qwen_never_eos_dir):
    with pytest.raises(ValueError, match="quantize"):
        Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir, quantize="int4")


def test_int8_dynamic_needs_fp32(tiny_qwen_never_eos_dir):
    eng = Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir, dtype="bfloat16")
    with pytest.raises(ValueError, match="float32"):
        quantize_talker(eng.tts_model.model.talker, "int8-dynamic")


@pytest.mark.parametrize("options", [dict(dtype="bfloat16"), dict(quantize="int8"), dict(quantize="int8-dynamic")],
                         ids=["bf16", "int8", "int8-dynamic"])  # fmt: skip
def test_lean_equals_reference_at_same_precision(tiny_qwen_never_eos_dir, ref_audio, options):
    """Quantised/bf16 models run in every loop (the per-step linears are swapped at load), and the lean loop with the
    same kernels gives the reference loop's output exactly: the lean loop adds no error of its own at any precision."""
    lean = Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir, **options)
    ref = Qwen3TTSEngine(lean.tts_model, lean.model_id, loop="reference")
    vp = lean.create_voice(ref_audio, "A short reference sentence for cloning.")
    a = lean.synthesize(TEXT, vp, "English", max_new_tokens=N + 1, **GREEDY)
    b = ref.synthesize(TEXT, vp, "English", max_new_tokens=N + 1, **GREEDY)
    assert len(a) == len(b) == N * 1920 and np.abs(a).max() > 1e-3
    assert np.array_equal(a, b)
    if options.get("quantize") == "int8":
        assert lean.dtype == (torch.bfloat16 if bf16_supported() else torch.float32)  # int8 weights, bf16 activations
        assert lean.model_id.endswith("|int8")


@needs_bf16
def test_bf16_load_packs_the_per_step_linears_once(tiny_qwen_never_eos_dir):
    from processors.qwen3_tts.precision import PackedBF16Linear

    eng = Qwen3TTSEngine.from_pretrained(tiny_qwen_never_eos_dir, dtype="bfloat16")
    talker = eng.tts_model.model.talker
    assert isinstance(talker.codec_head, PackedBF16Linear)
    assert all(isinstance(layer.mlp.down_proj, PackedBF16Linear) for layer in talker.code_predictor.model.layers)
    assert not any(isinstance(m, nn.Linear) for layer in talker.model.layers for m in layer.modules())
    assert isinstance(talker.text_projection.linear_fc1, nn.Linear)  # prompt-side modules stay as loaded
    assert isinstance(make_linear(talker.codec_head), _PackedBF16)


def test_token_agreement():
    assert token_agreement([1, 2, 3, 4], [1, 2, 3, 4]) == (1.0, 4)
    assert token_agreement([1, 2, 9, 4], [1, 2, 3, 4]) == (0.75, 2)
    assert token_agreement(np.array([5, 6]), np.array([5, 6, 7])) == (1.0, 2)
    assert token_agreement([], []) == (1.0, 0)


def test_snr_db():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(48000).astype(np.float32)
    assert snr_db(ref, ref) == float("inf")
    noisy = ref + 0.1 * rng.standard_normal(48000).astype(np.float32)
    assert abs(snr_db(ref, noisy) - 20.0) < 0.2  # signal power 1, noise power 0.01
    assert abs(snr_db(ref, 0.5 * ref) - 6.02) < 0.01


@pytest.mark.parametrize("quantize", ["int8", "int8-dynamic"])
def test_cpu_only_quantisation_on_cuda_is_refused_before_loading(tiny_qwen_dir, monkeypatch, quantize):
    """The int8 kernels are CPU-only: asking for them on a GPU fails at once, before minutes of loading weights."""
    from processors.compat import ensure_qwen_tts_importable

    ensure_qwen_tts_importable()
    import qwen_tts

    loads = []

    def no_load(cls, *args, **kwargs):
        loads.append(args)
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(qwen_tts.Qwen3TTSModel, "from_pretrained", classmethod(no_load))
    with pytest.raises(ValueError, match="CPU-only"):
        Qwen3TTSEngine.from_pretrained(tiny_qwen_dir, device="cuda:0", quantize=quantize)
    with pytest.raises(ValueError, match="quantize must be one of"):
        Qwen3TTSEngine.from_pretrained(tiny_qwen_dir, device="cpu", quantize="int4")
    assert loads == []
