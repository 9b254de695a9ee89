"""A lean Qwen3-TTS frame loop: static KV caches, no HF ``generate``/``DynamicCache``, no per-step tensor rebuilding.

Why: decoding one 80 ms frame reads every talker weight once and every code-predictor weight 15 times, so the floor
is memory bandwidth. Upstream (and ``frame_loop.FrameLoop``) add HF's per-call machinery on top: ``generate`` inside
every frame, mask construction, cache objects growing by ``torch.cat``, output dataclasses. Here the same arithmetic
runs on plain tensors:

* weights are upstream's own tensors (no copy); bf16 and int8 linears are swapped in at load time by
  ``precision.prepare_talker``, so every loop runs the same kernels;
* talker and code predictor each get a static KV cache ``(batch, kv_heads, positions, head_dim)`` written in place.
  The talker's has a base size that it keeps; an utterance that needs more (up to ``max_positions``) gets a larger
  cache for as long as it runs, and the base one is used again when no stream needs more;
* activations live in preallocated per-shape workspaces; fp32 linears and the elementwise ops write into them
  (``out=``); what still allocates per step is SDPA's output, the outputs of the bf16/int8 kernels (they have no
  ``out=``) and the samplers' temporaries, all a few KB;
* q, k (and v) of a layer sit side by side, so q and k are normalised and rotated in one go;
* the 15 predictor steps are a plain Python loop over the same layer code;
* per-stream state lives in per-slot buffers (last hidden state, codebook-0 token, sampling settings: ``sampling.py``),
  so one step serves any set of streams and CUDA graphs (``cuda_graphs.py``) can replay it;
* one host sync per frame (per batched step): ``read_status`` reads every stream's codebook-0 token and its
  non-finite flag at once. On a GPU the code predictor for the frame is queued before that read (``overlap``), so
  the device works while the host waits; the predictor's work for a stream that turns out to have ended is dropped;
* threads: ``torch.get_num_threads()`` as set by the process (``Qwen3TTSEngine(threads=...)`` sets it per
  generation). On a small shared CPU 1 thread is the robust choice: 2 threads only pay off when the other core is idle
  (docs/benchmarks.md).

Exactness on a CPU: every op is the one upstream runs, on the same shapes, in the same order (RMSNorm as
pow/mean/rsqrt/mul, RoPE as ``q*cos + rotate_half(q)*sin``, SDPA, heads over all prompt rows like upstream; sampling
is HF's arithmetic per row, ``sampling.py``), so output equals upstream's bit for bit at any precision, greedy or seeded
sampling; ``tests/processors/qwen3_tts/test_streaming_parity.py`` and ``test_lean_loop.py`` guard it. Batched steps
(M > 1) may round differently in the last bits on other kernels. On a GPU the graph path runs the masked attention
below and CUDA's kernels, so its output is close to upstream's but not bit-identical (bf16 especially): GPU checks
compare graphs with the eager loop on the same device, not with a CPU run.

Batching: one ``LeanTalker`` serves up to ``max_batch`` streams in slots ``0..n-1``; linears then run with M = n, so
each weight is read once per step for all streams (``batching.py`` schedules them). A stream's prompt is prefilled
apart (``prefill_apart``: into KV caches of its own, reading only weights, so another thread may run it while the
steps go on) and copied into its slot at a frame boundary (``adopt``). Attention is per stream
(``attention="sliced"``: each stream attends to exactly its own prefix) or, for CUDA graphs, one call over a window
of the static cache with a position mask (``attention="masked"``, fixed shapes). The masked call is laid out for
the fused kernels: the query heads that share a KV head become that head's query rows ``(batch, kv_heads, group,
head_dim)``, so no ``enable_gqa`` is needed, and the mask is an additive float tensor in the model dtype; the window
is the smallest power-of-two multiple of ``CACHE_GRANULE`` that covers the furthest stream, so a long utterance
does not slow the frames of later short ones.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from processors.tts_engine import TTSError

from .frame_loop import StopPolicy, TalkerPrompt
from .precision import make_linear
from .sampling import NumericalError, RowSampler, SamplingSettings
from .timing import StepTimer

log = logging.getLogger("duplex.qwen3_tts")

CACHE_GRANULE = 256  # talker cache sizes and attention windows come in multiples of this many positions
MAX_POSITIONS = 8192  # talker cache cap per stream: prompt + frames (8192 positions: over 10 minutes of audio)


# --------------------------------------------------------------------------------------------------------------------
# One decoder stack (talker: 28 layers, code predictor: 5) over a static KV cache
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _LayerWeights:
    q: Any
    k: Any
    v: Any
    o: Any
    gate: Any
    up: Any
    down: Any
    ln1: torch.Tensor
    ln2: torch.Tensor
    qk_norm: torch.Tensor  # (heads + kv_heads, head_dim): q_norm's weight per query head, then k_norm's per kv head


class _Work:
    """Activation buffers and their views for one (batch, tokens) shape; rows = batch x tokens.

    q, k and v are written side by side into ``qkv``, so q and k are normalised and rotated in one go (per head,
    exactly upstream's arithmetic)."""

    def __init__(
        self, batch: int, tokens: int, hidden: int, n_heads: int, n_kv: int, head_dim: int, inter: int, dtype, device
    ):
        e = lambda *s: torch.empty(*s, dtype=dtype, device=device)
        rows, H, KV, D = batch * tokens, n_heads, n_kv, head_dim
        self.x = e(rows, hidden)  # residual stream
        self.h = e(rows, hidden)  # normed input of a sublayer
        self.sq = e(rows, hidden)
        self.var = e(rows, 1)
        self.qkv = e(rows, (H + 2 * KV) * D)
        self.q_out, self.k_out, self.v_out = (
            self.qkv[:, : H * D],
            self.qkv[:, H * D : (H + KV) * D],
            self.qkv[:, (H + KV) * D :],
        )
        heads = self.qkv.view(batch, tokens, H + 2 * KV, D)
        self.qk = heads[:, :, : H + KV]  # (batch, tokens, H + KV, D), a strided view
        self.v = heads[:, :, H + KV :]  # (batch, tokens, KV, D)
        self.qk_sq, self.qk_n, self.qk_rot, self.qk_emb = (e(batch, tokens, H + KV, D) for _ in range(4))
        self.qk_var = e(batch, tokens, H + KV, 1)
        self.q4 = self.qk_emb[:, :, :H].transpose(1, 2)  # (batch, H, tokens, D) for SDPA
        self.k = self.qk_emb[:, :, H:]  # (batch, tokens, KV, D)
        self.attn = e(batch, tokens, H, D)
        if tokens == 1:  # decode: the query heads of each KV head as its query rows (masked attention)
            self.q_grouped = self.qk_emb[:, 0, :H].view(batch, KV, H // KV, D)
            self.attn_grouped = self.attn.view(batch, KV, H // KV, D)
        self.attn2d = self.attn.view(rows, H * D)
        self.o = e(rows, hidden)
        self.g = e(rows, inter)
        self.u = e(rows, inter)
        self.d = e(rows, hidden)
        self.cos = e(batch, head_dim)
        self.sin = e(batch, head_dim)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float, out: torch.Tensor, sq: torch.Tensor, var: torch.Tensor):
    """Upstream's Qwen3TTSRMSNorm over the last dim, op for op (float32 statistics), into ``out``."""
    if x.dtype == torch.float32:
        torch.pow(x, 2, out=sq)
        torch.mean(sq, -1, keepdim=True, out=var)
        var.add_(eps).rsqrt_()
        torch.mul(x, var, out=out)
        return out.mul_(w)
    xf = x.float()
    var = xf.pow(2).mean(-1, keepdim=True)
    out.copy_(xf * torch.rsqrt(var + eps))
    return out.mul_(w)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rot: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``x*cos + rotate_half(x)*sin`` (upstream's formula and op order) into ``out``; x, rot, out: (..., heads, D)."""
    half = x.shape[-1] // 2
    torch.neg(x[..., half:], out=rot[..., :half])
    rot[..., half:].copy_(x[..., :half])
    torch.mul(x, cos, out=out)
    rot.mul_(sin)
    return out.add_(rot)


def _into(y: torch.Tensor, out: torch.Tensor) -> None:
    """Kernels without ``out=`` return a new tensor: copy it where the next op reads."""
    if y.data_ptr() != out.data_ptr():
        out.copy_(y)


class DecoderStack:
    """The layers of a Qwen3 decoder (talker or code predictor) with a static KV cache for ``max_batch`` streams.

    Everything a step reads besides the caches (RoPE tables, slot indices, position range, attention mask) is
    allocated once for ``max_positions`` and sliced, so its memory never moves (CUDA graphs keep raw pointers)."""

    def __init__(
        self,
        model: torch.nn.Module,
        rope_table: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
        max_batch: int,
        attention: str,
        max_positions: int = MAX_POSITIONS,
        granule: int = CACHE_GRANULE,
    ):
        cfg = model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
        self.hidden = cfg.hidden_size
        self.inter = cfg.intermediate_size
        self.eps = cfg.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.n_layers = cfg.num_hidden_layers
        if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", False):
            raise NotImplementedError("sliding-window attention is not used by Qwen3-TTS and not supported here")
        self.layers = []
        for layer in model.layers[: self.n_layers]:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(_LayerWeights(
                q=make_linear(a.q_proj), k=make_linear(a.k_proj), v=make_linear(a.v_proj), o=make_linear(a.o_proj),
                gate=make_linear(m.gate_proj), up=make_linear(m.up_proj), down=make_linear(m.down_proj),
                ln1=layer.input_layernorm.weight, ln2=layer.post_attention_layernorm.weight,
                qk_norm=torch.cat([a.q_norm.weight.expand(self.n_heads, -1), a.k_norm.weight.expand(self.n_kv, -1)]),
            ))  # fmt: skip
        self.norm = model.norm.weight
        self.dtype = self.norm.dtype
        self.device = self.norm.device
        self.max_batch = max_batch
        if attention not in ("sliced", "masked"):
            raise ValueError("attention must be 'sliced' or 'masked'")
        self.attention = attention
        self.max_positions = max_positions
        self.granule = granule  # cache sizes and attention windows are multiples of it
        self.cos, self.sin = rope_table(max_positions)
        self.slots = torch.arange(max_batch, device=self.device)
        if attention == "masked":
            self._positions = torch.arange(max_positions, device=self.device)
            self._hidden = torch.zeros(max_batch, max_positions, dtype=torch.bool, device=self.device)
            self._mask = torch.zeros(max_batch, max_positions, dtype=self.dtype, device=self.device)
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []
        self.capacity = 0
        self.base_capacity = 0  # the first cache allocated is kept for good; larger ones only while needed
        self.tier = 0  # 0: the base cache; another number per larger cache allocated since
        self._base: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._tiers = 0
        self._work: dict[tuple[int, int], _Work] = {}

    # --- buffers --------------------------------------------------------------------------------------------------
    def ensure_capacity(self, positions: int, granule: int = 1) -> bool:
        """Caches for at least ``positions`` positions (contents kept); True when a new cache was allocated.

        The first allocation is the base cache, kept for good; a larger one replaces the current one (the base is
        kept aside) until ``restore_base``. Masked attention reads whole windows, so its caches start zeroed (an
        unwritten NaN times a zero weight is NaN); sliced attention reads only written positions, and untouched
        pages of an empty CPU buffer cost no memory."""
        if positions <= self.capacity:
            return False
        if positions > self.max_positions:
            raise ValueError(f"{positions} positions exceed this cache's cap of {self.max_positions}")
        cap = min(-(-positions // granule) * granule, self.max_positions)
        shape = (self.max_batch, self.n_kv, cap, self.head_dim)
        alloc = torch.zeros if self.attention == "masked" else torch.empty
        new_k = [alloc(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        new_v = [alloc(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        for old, new in ((self.k_cache, new_k), (self.v_cache, new_v)):
            for o, n in zip(old, new):
                n[:, :, : self.capacity].copy_(o)
        if self._base is None:
            self._base, self.base_capacity, self.tier = (new_k, new_v), cap, 0
        else:
            self._tiers += 1
            self.tier = self._tiers
        self.k_cache, self.v_cache, self.capacity = new_k, new_v, cap
        return True

    def restore_base(self, slots: int, positions: int) -> bool:
        """Back to the base cache when streams ``0..slots-1`` need at most ``positions`` positions (their first
        ``positions`` are copied over); the larger cache is freed. True when it switched."""
        if self.tier == 0 or self._base is None or positions > self.base_capacity:
            return False
        base_k, base_v = self._base
        for cur, base in ((self.k_cache, base_k), (self.v_cache, base_v)):
            for c, b in zip(cur, base):
                b[:slots, :, :positions].copy_(c[:slots, :, :positions])
        self.k_cache, self.v_cache, self.capacity, self.tier = base_k, base_v, self.base_capacity, 0
        return True

    def window_for(self, positions: int) -> int:
        """Attention window (masked attention) covering ``positions``: the granule times a power of two, at most the
        capacity; few distinct windows, so few CUDA graphs."""
        w = self.granule
        while w < positions:
            w *= 2
        return min(w, self.capacity)

    def windows(self) -> list[int]:
        """Every window ``window_for`` can return at the current capacity."""
        out, w = [], self.granule
        while w < self.capacity:
            out.append(w)
            w *= 2
        return [*out, self.capacity]

    def work(self, batch: int, tokens: int, keep: bool = True) -> _Work:
        """The workspace for (batch, tokens); ``keep=False``: a fresh one nobody else holds (any thread may use it)."""
        w = self._work.get((batch, tokens)) if keep else None
        if w is None:
            w = _Work(batch, tokens, self.hidden, self.n_heads, self.n_kv, self.head_dim, self.inter, self.dtype,
                      self.device)  # fmt: skip
            if keep:
                self._work[(batch, tokens)] = w
        return w

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Move one stream's cache (first ``length`` positions) from slot ``src`` to slot ``dst``."""
        for c in self.k_cache + self.v_cache:
            c[dst, :, :length].copy_(c[src, :, :length])

    # --- forward --------------------------------------------------------------------------------------------------
    def forward(
        self,
        w: _Work,
        batch: int,
        tokens: int,
        starts: list[int] | None,
        pos: torch.Tensor | None = None,
        slot: int = 0,
        window: int | None = None,
        cache: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Run all layers on ``w.x`` ((batch*tokens, hidden), row b*tokens + t = stream b, position starts[b] + t).

        Streams occupy cache slots ``slot .. slot+batch-1``. ``tokens > 1`` only at a stream's start (prefill: all
        starts 0, causal attention). ``pos`` (batch,) LongTensor holds the positions on the device: needed when
        starts differ and for masked attention, which reads the cache window ``window`` (default: the one covering
        ``max(starts) + 1``; with an explicit window ``starts`` may be None). ``cache``: (k, v) lists of caches of
        the stream's own to use instead of the shared ones (a prefill apart from the batch). Returns the final-normed
        hidden states (a workspace buffer, valid until the next call)."""
        D = self.head_dim
        masked = self.attention == "masked" and tokens == 1
        same = starts is not None and all(s == starts[0] for s in starts)
        if masked:
            if pos is None:
                raise ValueError("masked attention needs `pos`")
            window = window or self.window_for(max(starts) + 1)
            cos = torch.index_select(self.cos, 0, pos, out=w.cos).view(batch, 1, 1, D)
            sin = torch.index_select(self.sin, 0, pos, out=w.sin).view(batch, 1, 1, D)
            hidden = self._hidden[:batch, :window]
            torch.gt(self._positions[:window].unsqueeze(0), pos.unsqueeze(1), out=hidden)  # key j hidden iff j > pos[b]
            mask = self._mask[:batch, :window]
            mask.zero_().masked_fill_(hidden, float("-inf"))
            mask = mask.view(batch, 1, 1, window)
            rows = self.slots[slot : slot + batch]
        elif same:
            s0 = starts[0]
            cos = self.cos[s0 : s0 + tokens].view(1, tokens, 1, D)
            sin = self.sin[s0 : s0 + tokens].view(1, tokens, 1, D)
        else:
            if tokens != 1 or pos is None:
                raise ValueError("streams at different positions step one token at a time, with `pos`")
            cos = torch.index_select(self.cos, 0, pos, out=w.cos).view(batch, 1, 1, D)
            sin = torch.index_select(self.sin, 0, pos, out=w.sin).view(batch, 1, 1, D)
        x = w.x
        cslice = slice(slot, slot + batch)
        q4, k, v, attn = w.q4, w.k, w.v, w.attn
        for li, L in enumerate(self.layers):
            h = _rms(x, L.ln1, self.eps, w.h, w.sq, w.var)
            _into(L.q(h, w.q_out), w.q_out)
            _into(L.k(h, w.k_out), w.k_out)
            _into(L.v(h, w.v_out), w.v_out)
            qk = _rms(w.qk, L.qk_norm, self.eps, w.qk_n, w.qk_sq, w.qk_var)
            _rope(qk, cos, sin, w.qk_rot, w.qk_emb)  # -> q4 (batch, H, tokens, D), k (batch, tokens, KV, D)
            kc, vc = (self.k_cache[li], self.v_cache[li]) if cache is None else (cache[0][li], cache[1][li])
            if masked:
                kc.transpose(1, 2).index_put_((rows, pos), k[:, 0])
                vc.transpose(1, 2).index_put_((rows, pos), v[:, 0])
                out = F.scaled_dot_product_attention(
                    w.q_grouped, kc[cslice, :, :window], vc[cslice, :, :window], attn_mask=mask, scale=self.scale
                )
                w.attn_grouped.copy_(out)
            elif same:
                s0 = starts[0]
                end = s0 + tokens
                kc[cslice, :, s0:end].copy_(k.transpose(1, 2))
                vc[cslice, :, s0:end].copy_(v.transpose(1, 2))
                out = F.scaled_dot_product_attention(
                    q4,
                    kc[cslice, :, :end],
                    vc[cslice, :, :end],
                    scale=self.scale,
                    is_causal=tokens > 1,
                    enable_gqa=True,
                )
                attn.copy_(out.transpose(1, 2))
            else:
                for b, s in enumerate(starts):
                    c = slot + b
                    kc[c, :, s].copy_(k[b, 0])
                    vc[c, :, s].copy_(v[b, 0])
                    out = F.scaled_dot_product_attention(
                        q4[b : b + 1],
                        kc[c : c + 1, :, : s + 1],
                        vc[c : c + 1, :, : s + 1],
                        scale=self.scale,
                        enable_gqa=True,
                    )
                    attn[b].copy_(out[0].transpose(0, 1))
            x.add_(L.o(w.attn2d, w.o))
            h = _rms(x, L.ln2, self.eps, w.h, w.sq, w.var)
            g = F.silu(L.gate(h, w.g), inplace=True)
            g.mul_(L.up(h, w.u))
            x.add_(L.down(g, w.d))
        return _rms(x, self.norm, self.eps, w.h, w.sq, w.var)


# --------------------------------------------------------------------------------------------------------------------
# Talker + code predictor
# --------------------------------------------------------------------------------------------------------------------


def _talker_rope(talker) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """cos/sin rows for positions 0..n-1 from upstream's own rotary module.

    Qwen3-TTS text-only prompts use the same position on all three MRoPE axes, so upstream's interleaved section
    selection picks the axis-0 values everywhere: the table row for position p is ``cos[0, 0, p]``."""
    rotary = talker.model.rotary_emb
    dtype = talker.model.norm.weight.dtype

    def table(n: int):
        pos = torch.arange(n, device=rotary.inv_freq.device).view(1, 1, n).expand(3, 1, n)
        cos, sin = rotary(torch.empty(0, dtype=dtype, device=pos.device), pos)
        return cos[0, 0].contiguous(), sin[0, 0].contiguous()

    return table


def _predictor_rope(predictor) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    rotary = predictor.model.rotary_emb
    dtype = predictor.model.norm.weight.dtype

    def table(n: int):
        pos = torch.arange(n, device=rotary.inv_freq.device).view(1, n)
        cos, sin = rotary(torch.empty(0, dtype=dtype, device=pos.device), pos)
        return cos[0].contiguous(), sin[0].contiguous()

    return table


@dataclass
class Prefill:
    """A stream's prompt run through the talker apart from the batch (``LeanTalker.prefill_apart``): its own KV
    caches, its last hidden state and codebook-0 logits, ready to be copied into a slot (``LeanTalker.adopt``)."""

    length: int  # prompt positions
    k: list[torch.Tensor]  # per layer (1, kv_heads, length, head_dim)
    v: list[torch.Tensor]
    hidden: torch.Tensor  # (hidden,)
    logits: torch.Tensor  # (vocab,)
    ready: Any = None  # on a GPU: a CUDA event recorded after the work, on the stream that ran it


class LeanTalker:
    """Talker + code predictor on static caches for up to ``max_batch`` streams (slots 0..n-1).

    ``base_positions`` (default: one granule): the talker cache kept for good; longer utterances get a larger one
    while they run. Per slot it holds a stream's state between calls: the talker's last hidden state
    (``hidden_rows``), its codebook-0 token and non-finite flag (``status``), its position (``pos``) and its sampling
    settings. A frame is ``predict`` (codebooks 0..15 into ``codes``), ``next_inputs``, ``step`` (talker),
    ``sample_talker`` (next codebook-0 token), with one ``read_status`` for the host's stop decisions.

    Shares upstream's weights (read-only), so several ``LeanTalker`` objects may serve one model from different
    threads; one object is used by one thread at a time.
    """

    def __init__(
        self,
        talker: torch.nn.Module,
        max_batch: int = 1,
        attention: str = "sliced",
        *,
        max_positions: int = MAX_POSITIONS,
        granule: int = CACHE_GRANULE,
        base_positions: int | None = None,
    ):
        self.talker = talker
        self.cache_granule = granule  # multiple of 16: the memory-efficient attention kernel's key alignment
        self.max_batch = max_batch
        cfg = talker.config
        self.num_code_groups = int(cfg.num_code_groups)
        predictor = talker.code_predictor
        self.stack = DecoderStack(talker.model, _talker_rope(talker), max_batch, attention, max_positions, granule)
        self.pred = DecoderStack(predictor.model, _predictor_rope(predictor), max_batch, "sliced",
                                 self.num_code_groups + 1)  # fmt: skip
        self.pred.ensure_capacity(self.num_code_groups + 1)
        self.stack.ensure_capacity(min(base_positions or granule, max_positions), granule)  # the base cache
        self.codec_head = make_linear(talker.codec_head)
        self.lm_heads = [make_linear(h) for h in predictor.lm_head]
        proj = predictor.small_to_mtp_projection
        self.mtp_proj = None if isinstance(proj, torch.nn.Identity) else make_linear(proj)
        self.embed0 = talker.model.codec_embedding.weight
        self.embeds = [e.weight for e in predictor.model.codec_embedding]
        self.hidden = cfg.hidden_size
        self.dtype = self.stack.dtype
        self.device = self.stack.device
        n, G, Hd = max_batch, self.num_code_groups, self.hidden
        self.codes = torch.zeros(n, G, dtype=torch.long, device=self.device)
        self.code_emb = torch.zeros(n, G, Hd, dtype=self.dtype, device=self.device)  # the 16 code embeddings
        self.emb_sum = torch.zeros(n, 1, Hd, dtype=self.dtype, device=self.device)
        self.logits0 = torch.zeros(n, cfg.vocab_size, dtype=self.dtype, device=self.device)
        self.hidden_rows = torch.zeros(n, Hd, dtype=self.dtype, device=self.device)  # the predictor's input
        self.pos = torch.zeros(n, dtype=torch.long, device=self.device)
        # per slot: codebook-0 token and non-finite flag, side by side so one read brings both to the host
        self.status = torch.zeros(n, 2, dtype=torch.long, device=self.device)
        self.tok0, self.fault = self.status[:, 0], self.status[:, 1]
        self.talker_sampling = RowSampler(n, cfg.vocab_size, self.device, track=True)
        self.sub_sampling = RowSampler(n, int(predictor.config.vocab_size), self.device)
        # queue the code predictor before the host waits for the token (pays on a GPU, where ops are asynchronous;
        # on a CPU it would only add one wasted predictor run per utterance)
        self.overlap = self.device.type == "cuda"
        self.timer = StepTimer(self.device)
        self.timings = {"prefill_s": 0.0, "talker_s": 0.0, "predictor_s": 0.0}

    # --- streams and slots ----------------------------------------------------------------------------------------
    def join(self, slot: int, sampler: StreamSampler) -> None:
        """A stream takes ``slot``: its sampling settings, no tokens yet, no fault."""
        self.talker_sampling.set_row(slot, sampler.talker, suppress=sampler.suppress, eos=sampler.eos)
        self.sub_sampling.set_row(slot, sampler.sub)
        self.status[slot] = 0
        self.pos[slot] = 0

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Move a stream from slot ``src`` to ``dst``: its first ``length`` cache positions and all its state."""
        self.stack.copy_slot(src, dst, length)
        for t in (self.hidden_rows, self.pos, self.status, self.codes, self.code_emb, self.emb_sum, self.logits0):
            t[dst].copy_(t[src])
        self.talker_sampling.move_row(src, dst)
        self.sub_sampling.move_row(src, dst)

    def clear_slot(self, slot: int) -> None:
        """Zero a slot's cache and state after a stream with non-finite values left it: masked attention reads
        whole windows (hidden positions with weight 0, and 0 * NaN is NaN), so NaN left behind would poison the
        next stream in this slot."""
        for c in self.stack.k_cache + self.stack.v_cache:
            c[slot].zero_()
        for t in (self.hidden_rows, self.emb_sum, self.code_emb, self.logits0):
            t[slot].zero_()

    def free_slot(self, slot: int) -> None:
        """A slot nobody uses: position 0, so padded graph rows (``cuda_graphs.py``) write inside any cache."""
        self.pos[slot] = 0

    def frames_that_fit(self, prompt_len: int, max_frames: int) -> int:
        """``max_frames`` cut to what the cache cap holds for a prompt of ``prompt_len`` positions."""
        room = self.stack.max_positions - prompt_len - 1
        if room < 0:
            raise TTSError(
                f"the prompt has {prompt_len} positions; the talker cache holds at most {self.stack.max_positions}"
            )
        if max_frames > room:
            log.warning(
                "Qwen3-TTS: %d frames requested after a %d-position prompt; the talker cache holds %d positions, "
                "so the utterance ends after %d frames",
                max_frames,
                prompt_len,
                self.stack.max_positions,
                room,
            )
        return min(max_frames, room)

    def reserve(self, positions: int) -> None:
        """Cache room for ``positions`` positions (before a prefill)."""
        self.stack.ensure_capacity(positions, self.cache_granule)

    def release(self, slots: int, positions: int) -> None:
        """Streams ``0..slots-1`` now need at most ``positions`` positions: back to the base cache if that fits."""
        self.stack.restore_base(slots, positions)

    def warmup(self) -> int:
        """Nothing to prepare for eager steps (``cuda_graphs.CudaGraphTalker`` captures its graphs here); returns
        how many graphs were captured."""
        return 0

    # --- talker ---------------------------------------------------------------------------------------------------
    def prefill(
        self, slot: int, inputs_embeds: torch.Tensor, capacity: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run a stream's prompt (1, L, hidden) into cache slot ``slot`` (``prefill_apart``, then ``adopt``); fills
        ``hidden_rows[slot]`` and ``logits0[slot]`` and returns them ((1, H), (1, V) views). ``capacity``: positions
        to reserve."""
        with self.timer.span("prefill_s", self.timings):
            self.adopt(slot, self.prefill_apart(inputs_embeds), capacity)
        return self.hidden_rows[slot : slot + 1], self.logits0[slot : slot + 1]

    def prefill_apart(self, inputs_embeds: torch.Tensor) -> Prefill:
        """Run a stream's prompt (1, L, hidden) through the talker into KV caches of its own.

        It reads only weights and writes only buffers of its own, so another thread may run it while the batched
        steps go on (on a GPU on its own CUDA stream: wait for ``Prefill.ready`` before handing it over); ``adopt``
        then brings the stream into a slot at a frame boundary. Like upstream, the codec head runs over every prompt
        row (the row count changes kernels' rounding)."""
        st = self.stack
        L = inputs_embeds.shape[1]
        shape = (1, st.n_kv, L, st.head_dim)
        k = [torch.empty(shape, dtype=st.dtype, device=st.device) for _ in range(st.n_layers)]
        v = [torch.empty(shape, dtype=st.dtype, device=st.device) for _ in range(st.n_layers)]
        w = st.work(1, L, keep=False)
        w.x.copy_(inputs_embeds[0])
        hidden = st.forward(w, 1, L, [0], cache=(k, v))
        logits = self.codec_head(hidden, None)
        done = Prefill(L, k, v, hidden[-1].clone(), logits[-1].clone())
        if st.device.type == "cuda":
            done.ready = torch.cuda.Event()
            done.ready.record(torch.cuda.current_stream(st.device))
        return done

    def adopt(self, slot: int, prefill: Prefill, capacity: int | None = None) -> None:
        """Copy a ``Prefill`` into cache slot ``slot`` and the slot's state rows (``hidden_rows``, ``logits0``), by
        the thread that runs the steps; ``capacity``: positions to reserve first. A copy of the prompt's positions:
        far cheaper than the prefill itself."""
        L = prefill.length
        self.reserve(max(capacity or 0, L + 1))
        stream = None
        if prefill.ready is not None:  # made on another CUDA stream: this one waits for it on the device
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(prefill.ready)
        for dst, src in zip(self.stack.k_cache + self.stack.v_cache, prefill.k + prefill.v):
            dst[slot, :, :L].copy_(src[0])
        self.hidden_rows[slot].copy_(prefill.hidden)
        self.logits0[slot].copy_(prefill.logits)
        if stream is not None:  # its buffers are not reused by their own stream before these copies ran
            for t in (*prefill.k, *prefill.v, prefill.hidden, prefill.logits):
                t.record_stream(stream)

    def step(self, n: int, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One talker step for streams 0..n-1 on ``self.emb_sum[:n]`` (already holding the next input embeddings).

        ``starts``: each stream's position; ``self.pos[:n]`` must hold the same values. Fills and returns
        (``hidden_rows[:n]``, ``logits0[:n]``)."""
        with self.timer.span("talker_s", self.timings):
            window = self.stack.window_for(max(starts) + 1) if self.stack.attention == "masked" else None
            self._talker_step(n, starts, window)
        return self.hidden_rows[:n], self.logits0[:n]

    def _talker_step(self, n: int, starts: list[int] | None, window: int | None) -> None:
        w = self.stack.work(n, 1)
        w.x.copy_(self.emb_sum[:n, 0])
        hidden = self.stack.forward(w, n, 1, starts, self.pos[:n], window=window)
        self.hidden_rows[:n].copy_(hidden)
        _into(self.codec_head(hidden, self.logits0[:n]), self.logits0[:n])

    def sample_talker(self, start: int, n: int) -> torch.Tensor:
        """Codebook-0 tokens for slots ``start..start+n`` from ``logits0`` (each with its stream's settings) into
        ``tok0``; rows with non-finite logits set their ``fault`` flag. Eager (the repetition penalty follows each
        stream's tokens)."""
        r = slice(start, start + n)
        with self.timer.span("talker_s", self.timings):
            tok, bad = self.talker_sampling.sample(self.logits0[r], start, n)
            self.tok0[r].copy_(tok)
            self.fault[r].logical_or_(bad)
        return self.tok0[r]

    def read_status(self, n: int) -> list[list[int]]:
        """``[codebook-0 token, non-finite flag]`` of slots 0..n-1: the one host sync per step."""
        return self.status[:n].tolist()

    def next_inputs(self, n: int, text_rows: list[torch.Tensor]) -> None:
        """``emb_sum[b] = sum of stream b's 16 code embeddings + text_rows[b]`` (upstream's next talker input)."""
        torch.sum(self.code_emb[:n], dim=1, keepdim=True, out=self.emb_sum[:n])
        for b, row in enumerate(text_rows):
            self.emb_sum[b].add_(row)

    # --- code predictor -------------------------------------------------------------------------------------------
    def pick_sub(self, n: int, logits: torch.Tensor, static: bool = False) -> torch.Tensor:
        """Tokens (n,) of one sub-talker step from logits (n, V), each row with its stream's settings; rows with
        non-finite logits set their ``fault`` flag."""
        tok, bad = self.sub_sampling.sample(logits, 0, n, static=static)
        self.fault[:n].logical_or_(bad)
        return tok

    def predict(self, n: int) -> torch.Tensor:
        """Codebooks 0..15 of streams 0..n-1 from ``hidden_rows[:n]`` and ``tok0[:n]``: fills and returns
        ``self.codes[:n]`` (and ``self.code_emb[:n]``, the embeddings the next talker input sums)."""
        with self.timer.span("predictor_s", self.timings):
            self._predict(n)
        return self.codes[:n]

    def _predict(self, n: int, static: bool = False) -> None:
        G, p = self.num_code_groups, self.pred
        codes, emb, token0 = self.codes[:n], self.code_emb[:n], self.tok0[:n]
        codes[:, 0].copy_(token0)
        torch.index_select(self.embed0, 0, token0, out=emb[:, 0])
        # prefill: [past_hidden, embed(code 0)] at positions 0, 1
        w2 = p.work(n, 2)
        x2 = w2.x.view(n, 2, -1)
        x2[:, 0].copy_(self.hidden_rows[:n])
        x2[:, 1].copy_(emb[:, 0])
        if self.mtp_proj is not None:
            w2.x.copy_(self.mtp_proj(w2.x, None))
        h = p.forward(w2, n, 2, [0] * n)
        logits = self.lm_heads[0](h, None).view(n, 2, -1)[:, -1]
        w1 = p.work(n, 1)
        for g in range(1, G):
            tok = self.pick_sub(n, logits, static)
            codes[:, g].copy_(tok)
            torch.index_select(self.embeds[g - 1], 0, codes[:, g], out=emb[:, g])
            if g == G - 1:
                break
            if self.mtp_proj is None:
                w1.x.copy_(emb[:, g])
            else:
                w1.x.copy_(self.mtp_proj(emb[:, g], None))
            h = p.forward(w1, n, 1, [g + 1] * n)
            logits = self.lm_heads[g](h, None)


# --------------------------------------------------------------------------------------------------------------------
# Single-stream driver with FrameLoop's interface
# --------------------------------------------------------------------------------------------------------------------


class StreamSampler:
    """One stream's sampling: its settings for codebook 0 and the sub-talker, end token and suppressed ids (from
    upstream's options), and the text row each frame adds."""

    def __init__(self, prompt: TalkerPrompt):
        o = prompt.options
        self.prompt = prompt
        self.eos = int(o["eos_token_id"])
        self.talker = SamplingSettings.talker(o)
        self.sub = SamplingSettings.sub_talker(o)
        self.suppress = tuple(int(i) for i in (o.get("suppress_tokens") or ()))

    def text_row(self, frame: int) -> torch.Tensor:
        """What upstream adds to frame ``frame``'s talker input: the next text embedding, then ``tts_pad``."""
        trailing = self.prompt.trailing_text_hidden
        return trailing[0, frame : frame + 1] if frame < trailing.shape[1] else self.prompt.tts_pad_embed[0]


def frame_limit(prompt: TalkerPrompt, max_frames: int) -> int:
    """upstream's generate samples max_new_tokens tokens, so it emits at most max_new_tokens - 1 frames."""
    return max(0, min(max_frames, int(prompt.options["max_new_tokens"]) - 1))


def numerical_error(frame: int) -> NumericalError:
    return NumericalError(
        f"Qwen3-TTS produced non-finite logits (NaN or inf) at frame {frame}; the utterance was stopped"
    )


class LeanFrameLoop(StopPolicy):
    """Generates the 16 codes of each frame for one prompt on a ``LeanTalker`` (slot 0). Same interface and output as
    ``frame_loop.FrameLoop``. Single use; the caller holds the engine lock (the ``LeanTalker`` is shared)."""

    def __init__(self, lean: LeanTalker, prompt: TalkerPrompt, max_frames: int, threads: int | None = None):
        self.lean = lean
        self.prompt = prompt
        self.max_frames = frame_limit(prompt, max_frames)
        self.threads = threads
        self.timings: dict[str, float] = {}

    @torch.inference_mode()
    def frames(self, cancel: threading.Event | None = None) -> Iterator[torch.Tensor]:
        """Yields LongTensor (16,) per frame (rows of one per-utterance buffer) until EOS, the budget, or ``cancel``.
        Raises ``NumericalError`` when the model's logits turn non-finite."""
        if self.threads:
            torch.set_num_threads(self.threads)
        lean = self.lean
        for k in lean.timings:
            lean.timings[k] = 0.0
        try:
            yield from self._frames(lean, cancel)
        finally:
            lean.release(0, 0)
            lean.timer.resolve(wait=True)
            self.timings = dict(lean.timings)

    def _frames(self, lean: LeanTalker, cancel: threading.Event | None) -> Iterator[torch.Tensor]:
        prompt = self.prompt
        L = prompt.inputs_embeds.shape[1]
        sampler = StreamSampler(prompt)
        self.max_frames = lean.frames_that_fit(L, self.max_frames)
        lean.join(0, sampler)
        lean.prefill(0, prompt.inputs_embeds, L + self.max_frames + 1)
        lean.sample_talker(0, 1)
        out = torch.empty(self.max_frames + 1, lean.num_code_groups, dtype=torch.long, device=lean.device)
        frame = 0
        while True:
            queued = lean.overlap and frame < self.max_frames and not (cancel is not None and cancel.is_set())
            if queued:
                lean.predict(1)
            token, fault = lean.read_status(1)[0]
            if fault:
                lean.clear_slot(0)
                raise numerical_error(frame)
            if self.stop_before_frame(token, sampler.eos, frame, cancel):
                return
            if not queued:
                lean.predict(1)
            out[frame].copy_(lean.codes[0])
            yield out[frame]
            if self.stop_if_cancelled(cancel):
                return
            lean.next_inputs(1, [sampler.text_row(frame)])
            lean.pos[0] = L + frame
            lean.step(1, [L + frame])
            lean.sample_talker(0, 1)
            frame += 1
