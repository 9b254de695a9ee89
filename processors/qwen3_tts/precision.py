"""Precision options for the Qwen3-TTS talker and code predictor: bf16, int8 weights, and the linear kernels the lean
loop calls.

Decoding is memory-bound (every weight is read once per step), so bytes per weight set the floor: fp32 4, bf16 2,
int8 1. Options:

* ``dtype=bfloat16`` (load-time, upstream's own ``dtype=``): everything in bf16, as upstream runs on a GPU. On CPUs with
  AVX512-BF16/AMX (``bf16_supported()``) the linears use oneDNN with weights reordered once for M=1 ("packed");
  plain bf16 ``F.linear`` is slower per byte than fp32 there.
* ``quantize="int8"``: weight-only int8 (symmetric, per output channel) for every linear of the talker layers, the
  code predictor layers and both heads; activations stay in the model dtype (``_weight_int8pack_mm`` wants bf16).
* ``quantize="int8-dynamic"``: torch.ao dynamic quantisation (fbgemm): int8 weights per channel AND activations
  quantised per call (per tensor, 7-bit range); fp32 model. The fastest option measured here, and the coarsest:
  an activation outlier dimension takes the quantiser's range (see the drift table in docs/benchmarks.md).
  torch.ao quantisation is
  deprecated upstream in favour of torchao (not a dependency here); it works in torch 2.13 and may go away later.

Embeddings, norms and the text projection stay as loaded. Quality on real weights is UNVERIFIED (real weights cannot
be downloaded here); ``benchmarks/tts.py`` measures drift against fp32 on the full-size random model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

QUANTIZE_MODES = (None, "int8", "int8-dynamic")


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """True when bf16 matmuls run natively on ``device`` (a CUDA GPU with bf16, a CPU with AVX512-BF16 / AMX-BF16)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


# --------------------------------------------------------------------------------------------------------------------
# Quantised linear modules (drop-in for nn.Linear inside upstream's modules, so every loop can run them)
# --------------------------------------------------------------------------------------------------------------------


class Int8Linear(nn.Module):
    """Weight-only int8 linear: ``y = x @ (q * scale[:, None]).T + bias``, q int8 (out, in), scale per output row."""

    def __init__(self, linear: nn.Linear, act_dtype: torch.dtype):
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(act_dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(act_dtype))
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.act_dtype = act_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(self.act_dtype), self.qweight, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scale.float()[:, None]


class PackedBF16Linear(nn.Module):
    """bf16 linear with its weight reordered once for oneDNN (AVX512-BF16/AMX); replaces nn.Linear so the weight is
    held once (the reordered copy) and every loop uses the fast kernel."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), self.packed, self.bias, "none", [], "")
        return y.view(*shape[:-1], self.out_features)


def _loop_linears(talker: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every linear the frame loop reads per step."""
    out: list[tuple[nn.Module, str]] = []
    for stack in (talker.model.layers, talker.code_predictor.model.layers):
        for layer in stack:
            for parent, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                                  (layer.mlp, ("gate_proj", "up_proj", "down_proj"))):  # fmt: skip
                out += [(parent, n) for n in names]
    out.append((talker, "codec_head"))
    heads = talker.code_predictor.lm_head
    out += [(heads, str(i)) for i in range(len(heads))]
    return out


def prepare_talker(talker: nn.Module, quantize: str | None = None) -> int:
    """Load-time precision transform of the per-step linears: ``quantize_talker`` when asked, else bf16 weights on a
    bf16-capable CPU become ``PackedBF16Linear``. Returns how many linears were replaced."""
    if quantize:
        return quantize_talker(talker, quantize)
    w = talker.model.norm.weight
    if w.dtype != torch.bfloat16 or w.device.type != "cpu" or not bf16_supported():
        return 0
    n = 0
    for parent, name in _loop_linears(talker):
        lin = getattr(parent, name)
        if isinstance(lin, nn.Linear):
            setattr(parent, name, PackedBF16Linear(lin))
            n += 1
    return n


def quantize_talker(talker: nn.Module, mode: str | None) -> int:
    """Replace the talker's and code predictor's per-step linears in place; returns how many were replaced.

    The replaced modules keep upstream's forward signature, so upstream's loop, ``FrameLoop`` and the lean loop all run
    the quantised model (and the fp32/bf16 weights are freed)."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, not {mode!r}")
    if mode is None:
        return 0
    act = talker.model.norm.weight.dtype
    if talker.model.norm.weight.device.type != "cpu":
        raise ValueError("the int8 kernels here are CPU-only (fbgemm, _weight_int8pack_mm); on a GPU use dtype=bf16")
    if mode == "int8-dynamic":
        if act != torch.float32:
            raise ValueError("int8-dynamic quantises fp32 activations: load the model with dtype=float32")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.nn.quantized.dynamic import Linear as DynLinear
            from torch.ao.quantization import per_channel_dynamic_qconfig

            def convert(lin: nn.Linear) -> nn.Module:
                lin.qconfig = per_channel_dynamic_qconfig
                return DynLinear.from_float(lin)
    else:
        if act == torch.float32:
            # the int8 kernel is fast with bf16 activations only; fp32 models quantise through bf16 activations
            act = torch.bfloat16 if bf16_supported() else torch.float32

        def convert(lin: nn.Linear) -> nn.Module:
            return Int8Linear(lin, act)

    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices: see the module docstring
        for parent, name in _loop_linears(talker):
            lin = getattr(parent, name)
            if isinstance(lin, nn.Linear):
                setattr(parent, name, convert(lin))
                n += 1
    return n


# --------------------------------------------------------------------------------------------------------------------
# Kernels for the lean loop: kernel(x2d, out) -> y2d (``out`` is used when the kernel supports it, else ignored)
# --------------------------------------------------------------------------------------------------------------------


class _Dense:
    """fp32 (and bf16 without native support): exactly upstream's ``F.linear`` arithmetic, written into ``out``."""

    def __init__(self, lin: nn.Linear):
        self.wt = lin.weight.detach().t()
        self.bias = None if lin.bias is None else lin.bias.detach()

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        if self.bias is not None:
            return torch.addmm(self.bias, x, self.wt) if out is None else torch.addmm(self.bias, x, self.wt, out=out)
        return torch.mm(x, self.wt) if out is None else torch.mm(x, self.wt, out=out)


class _PackedBF16:
    """bf16 on CPU: oneDNN linear with the weight reordered once (AVX512-BF16/AMX); faster per byte than plain bf16
    ``F.linear`` here."""

    def __init__(self, lin: nn.Linear | PackedBF16Linear):
        if isinstance(lin, PackedBF16Linear):
            self.packed, self.bias = lin.packed, lin.bias
        else:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(lin.weight.detach(), 1)
            self.bias = None if lin.bias is None else lin.bias.detach()

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class _Int8:
    def __init__(self, mod: Int8Linear):
        self.q, self.scale, self.bias, self.act = mod.qweight, mod.scale, mod.bias, mod.act_dtype

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.to(self.act), self.q, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y if y.dtype == x.dtype else y.to(x.dtype)


class _DynamicInt8:
    """torch.ao dynamic int8 linear, calling its fbgemm op directly (the module's Python forward costs ~30 ms/frame)."""

    def __init__(self, mod: nn.Module):
        self.packed = mod._packed_params._packed_params
        self.reduce_range = not (mod.version is None or mod.version < 4)

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        if self.reduce_range:
            return torch.ops.quantized.linear_dynamic(x, self.packed, reduce_range=True)
        return torch.ops.quantized.linear_dynamic(x, self.packed)


class _Module:
    """Anything else with an nn.Linear-like forward."""

    def __init__(self, mod: nn.Module):
        self.mod = mod

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        return self.mod(x)


def make_linear(mod: nn.Module, packed_bf16: bool | None = None) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """The fastest exact-enough kernel for one linear module (see module docstring)."""
    if isinstance(mod, Int8Linear):
        return _Int8(mod)
    if isinstance(mod, PackedBF16Linear):
        return _PackedBF16(mod)
    if isinstance(mod, nn.Linear):
        w = mod.weight
        if packed_bf16 is None:
            packed_bf16 = w.dtype == torch.bfloat16 and w.device.type == "cpu" and bf16_supported()
        if packed_bf16:
            return _PackedBF16(mod)
        return _Dense(mod)
    if type(mod).__module__.startswith("torch.ao.nn.quantized.dynamic") and mod._packed_params.dtype == torch.qint8:
        return _DynamicInt8(mod)
    return _Module(mod)


def weight_bytes_per_frame(talker: nn.Module) -> int:
    """Bytes of weights one frame reads: the talker layers and codec head once, the predictor layers and one lm_head
    per step 15 times (the memory-bandwidth floor's numerator)."""

    def nbytes(mod: nn.Module) -> int:
        if isinstance(mod, Int8Linear):
            return mod.qweight.numel() + mod.scale.numel() * mod.scale.element_size()
        if isinstance(mod, PackedBF16Linear):
            return mod.in_features * mod.out_features * 2
        if isinstance(mod, nn.Linear):
            return mod.weight.numel() * mod.weight.element_size()
        w = getattr(mod, "weight", None)
        w = w() if callable(w) else w
        if isinstance(w, torch.Tensor):
            return w.numel() * (1 if w.is_quantized else w.element_size())
        return sum(p.numel() * p.element_size() for p in mod.parameters())

    def stack(layers) -> int:
        total = 0
        for layer in layers:
            a, m = layer.self_attn, layer.mlp
            total += sum(
                nbytes(x) for x in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
            )
            total += sum(p.numel() * p.element_size() for p in (layer.input_layernorm.weight,
                         layer.post_attention_layernorm.weight, a.q_norm.weight, a.k_norm.weight))  # fmt: skip
        return total

    pred = talker.code_predictor
    steps = talker.config.num_code_groups - 1
    head = nbytes(pred.lm_head[0])
    return stack(talker.model.layers) + nbytes(talker.codec_head) + steps * (stack(pred.model.layers) + head)


# --------------------------------------------------------------------------------------------------------------------
# Drift measures
# --------------------------------------------------------------------------------------------------------------------


def token_agreement(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> tuple[float, int]:
    """(fraction of equal tokens over the common length, index of the first difference or the common length)."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    n = min(len(a), len(b))
    if n == 0:
        return 1.0, 0
    eq = a[:n] == b[:n]
    first = int(np.argmin(eq)) if not eq.all() else n
    return float(eq.mean()), first


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-noise ratio of ``test`` against ``reference`` in dB over the common length (inf when identical)."""
    n = min(len(reference), len(test))
    ref = np.asarray(reference[:n], dtype=np.float64)
    err = ref - np.asarray(test[:n], dtype=np.float64)
    p_err = float(np.mean(err**2))
    if p_err == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(float(np.mean(ref**2)), 1e-30) / p_err))
