"""A lean Qwen3-TTS frame loop: static KV caches, no HF ``generate``/``DynamicCache``, no per-step tensor rebuilding.

Why: decoding one 80 ms frame reads every talker weight once and every code-predictor weight 15 times, so the floor
is memory bandwidth. Upstream (and ``frame_loop.FrameLoop``) add HF's per-call machinery on top: ``generate`` inside
every frame, mask construction, cache objects growing by ``torch.cat``, output dataclasses. Here the same arithmetic
runs on plain tensors:

* weights are upstream's own tensors (no copy); bf16 and int8 linears are swapped in at load time by
  ``precision.prepare_talker``, so every loop runs the same kernels;
* talker and code predictor each get a static KV cache ``(batch, positions, kv_heads, head_dim)`` written in place
  (the talker's grows in steps of 256 positions when an utterance needs more, once, before its first frame);
* activations live in preallocated per-shape workspaces; fp32 linears and the elementwise ops write into them
  (``out=``); what still allocates per step is SDPA's output, the outputs of the bf16/int8 kernels (they have no
  ``out=``) and the sampling processors' temporaries, all a few KB;
* q, k (and v) of a layer sit side by side, so q and k are normalised and rotated in one go;
* the 15 predictor steps are a plain Python loop over the same layer code;
* threads: ``torch.get_num_threads()`` as set by the process (``Qwen3TTSEngine(threads=...)`` sets it per
  generation). On this 2-core shared box 1 thread is the robust choice: 2 threads only pay off when the other core
  is idle and fall apart when it is not (docs/benchmarks.md).

Exactness: every op is the one upstream runs, on the same shapes, in the same order (RMSNorm as pow/mean/rsqrt/mul,
RoPE as ``q*cos + rotate_half(q)*sin``, SDPA with ``enable_gqa``, heads over all prompt rows like upstream), so output
is upstream's bit for bit at any precision, greedy or seeded sampling (checked on the full-size model too);
``tests/qwen3_tts/test_streaming_parity.py`` and ``test_lean_loop.py`` guard it. Sampling uses ``frame_loop``'s
processors and ``torch.multinomial`` in upstream's order. Batched steps (M > 1) round differently in the last bits.

Batching: one ``LeanTalker`` serves up to ``max_batch`` streams in slots ``0..n-1``; linears then run with M = n, so
each weight is read once per step for all streams (``batching.py`` schedules them). Attention is per stream
(``attention="sliced"``: each stream attends to exactly its own prefix) or, for CUDA graphs, one call over the whole
static cache with a position mask (``attention="masked"``, fixed shapes; ``cuda_graphs.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .frame_loop import StopPolicy, TalkerPrompt, _pick, _processors
from .precision import make_linear

CACHE_GRANULE = 256  # talker cache capacity grows in steps of this many positions


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
        self.attn2d = self.attn.view(rows, H * D)
        self.o = e(rows, hidden)
        self.g = e(rows, inter)
        self.u = e(rows, inter)
        self.d = e(rows, hidden)
        self.cos = e(batch, head_dim)
        self.sin = e(batch, head_dim)
        self.mask = torch.empty(batch, 1, dtype=torch.bool, device=device)  # resized on use (masked attention)


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
    """The layers of a Qwen3 decoder (talker or code predictor) with a static KV cache for ``max_batch`` streams."""

    def __init__(
        self,
        model: torch.nn.Module,
        rope_table: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
        max_batch: int,
        attention: str,
        quantized_ok: bool = True,
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
        self._rope_table = rope_table
        self.cos = self.sin = None
        self.max_batch = max_batch
        if attention not in ("sliced", "masked"):
            raise ValueError("attention must be 'sliced' or 'masked'")
        self.attention = attention
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []
        self.capacity = 0
        self._work: dict[tuple[int, int], _Work] = {}
        self._arange = None

    # --- buffers --------------------------------------------------------------------------------------------------
    def ensure_capacity(self, positions: int, granule: int = 1) -> None:
        """Caches and RoPE tables for at least ``positions`` positions (kept on growth; untouched pages cost no RSS)."""
        if positions <= self.capacity:
            return
        cap = -(-positions // granule) * granule
        shape = (self.max_batch, cap, self.n_kv, self.head_dim)
        # masked attention reads every position (masked ones with weight 0, but 0 * NaN garbage is NaN): zero them;
        # sliced attention reads only written positions, and untouched pages of an empty buffer cost no memory
        alloc = torch.zeros if self.attention == "masked" else torch.empty
        new_k = [alloc(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        new_v = [alloc(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        for old, new in ((self.k_cache, new_k), (self.v_cache, new_v)):
            for o, n in zip(old, new):
                n[:, : self.capacity].copy_(o)
        self.k_cache, self.v_cache = new_k, new_v
        self.cos, self.sin = self._rope_table(cap)
        self._arange = torch.arange(cap, device=self.device)
        self.capacity = cap

    def work(self, batch: int, tokens: int, keep: bool = True) -> _Work:
        w = self._work.get((batch, tokens))
        if w is None:
            w = _Work(batch, tokens, self.hidden, self.n_heads, self.n_kv, self.head_dim, self.inter, self.dtype,
                      self.device)  # fmt: skip
            if keep:
                self._work[(batch, tokens)] = w
        return w

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Move one stream's cache (first ``length`` positions) from slot ``src`` to slot ``dst``."""
        for c in self.k_cache + self.v_cache:
            c[dst, :length].copy_(c[src, :length])

    # --- forward --------------------------------------------------------------------------------------------------
    def forward(
        self, w: _Work, batch: int, tokens: int, starts: list[int], pos: torch.Tensor | None = None, slot: int = 0
    ) -> torch.Tensor:
        """Run all layers on ``w.x`` ((batch*tokens, hidden), row b*tokens + t = stream b, position starts[b] + t).

        Streams occupy cache slots ``slot .. slot+batch-1``. ``tokens > 1`` only at a stream's start (prefill: all
        starts 0, causal attention). ``pos`` (batch,) LongTensor holds ``starts`` on the device: needed when starts
        differ and for masked attention. Returns the final-normed hidden states (a workspace buffer, valid until the
        next call)."""
        same = all(s == starts[0] for s in starts)
        D = self.head_dim
        masked = self.attention == "masked" and tokens == 1
        if same and not masked:
            s0 = starts[0]
            cos = self.cos[s0 : s0 + tokens].view(1, tokens, 1, D)
            sin = self.sin[s0 : s0 + tokens].view(1, tokens, 1, D)
        else:
            if tokens != 1 or pos is None:
                raise ValueError(
                    "streams at different positions (and masked attention) step one token at a time, with `pos`"
                )
            cos = torch.index_select(self.cos, 0, pos, out=w.cos).view(batch, 1, 1, D)
            sin = torch.index_select(self.sin, 0, pos, out=w.sin).view(batch, 1, 1, D)
        if masked:
            if w.mask.shape != (batch, self.capacity):
                w.mask = torch.empty(batch, self.capacity, dtype=torch.bool, device=self.device)
            torch.le(self._arange.unsqueeze(0), pos.unsqueeze(1), out=w.mask)  # key j visible iff j <= pos[b]
            mask = w.mask.view(batch, 1, 1, self.capacity)
            rows = self._bidx(batch) + slot
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
            kc, vc = self.k_cache[li], self.v_cache[li]
            if masked:
                kc.index_put_((rows, pos), k[:, 0])
                vc.index_put_((rows, pos), v[:, 0])
                out = F.scaled_dot_product_attention(
                    q4,
                    kc[cslice].transpose(1, 2),
                    vc[cslice].transpose(1, 2),
                    attn_mask=mask,
                    scale=self.scale,
                    enable_gqa=True,
                )
                attn.copy_(out.transpose(1, 2))
            elif same:
                s0 = starts[0]
                end = s0 + tokens
                kc[cslice, s0:end].copy_(k)
                vc[cslice, s0:end].copy_(v)
                out = F.scaled_dot_product_attention(
                    q4,
                    kc[cslice, :end].transpose(1, 2),
                    vc[cslice, :end].transpose(1, 2),
                    scale=self.scale,
                    is_causal=tokens > 1,
                    enable_gqa=True,
                )
                attn.copy_(out.transpose(1, 2))
            else:
                for b, s in enumerate(starts):
                    c = slot + b
                    kc[c, s].copy_(k[b, 0])
                    vc[c, s].copy_(v[b, 0])
                    out = F.scaled_dot_product_attention(
                        q4[b : b + 1],
                        kc[c : c + 1, : s + 1].transpose(1, 2),
                        vc[c : c + 1, : s + 1].transpose(1, 2),
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

    def _bidx(self, batch: int) -> torch.Tensor:
        b = getattr(self, "_bidx_cache", None)
        if b is None or b.numel() != batch:
            b = self._bidx_cache = torch.arange(batch, device=self.device)
        return b


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


class LeanTalker:
    """Talker + code predictor on static caches for up to ``max_batch`` streams (slots 0..n-1).

    Shares upstream's weights (read-only), so several ``LeanTalker`` objects may serve one model from different
    threads; one object is used by one thread at a time.
    """

    cache_granule = CACHE_GRANULE

    def __init__(self, talker: torch.nn.Module, max_batch: int = 1, attention: str = "sliced"):
        self.talker = talker
        self.max_batch = max_batch
        cfg = talker.config
        self.num_code_groups = int(cfg.num_code_groups)
        predictor = talker.code_predictor
        self.stack = DecoderStack(talker.model, _talker_rope(talker), max_batch, attention)
        self.pred = DecoderStack(predictor.model, _predictor_rope(predictor), max_batch, "sliced")  # static anyway
        self.pred.ensure_capacity(self.num_code_groups + 1)
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
        self.code_emb = torch.empty(n, G, Hd, dtype=self.dtype, device=self.device)  # the 16 code embeddings
        self.emb_sum = torch.empty(n, 1, Hd, dtype=self.dtype, device=self.device)
        self.logits0 = torch.empty(n, cfg.vocab_size, dtype=self.dtype, device=self.device)
        self.pos = torch.zeros(n, dtype=torch.long, device=self.device)
        self._sub_tok = torch.zeros(n, dtype=torch.long, device=self.device)
        self.timings = {"prefill_s": 0.0, "talker_s": 0.0, "predictor_s": 0.0}

    # --- talker ---------------------------------------------------------------------------------------------------
    def prefill(self, slot: int, inputs_embeds: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run a stream's prompt (1, L, hidden) into cache slot ``slot``; returns (last hidden (1, H), logits (1, V)).

        Like upstream, the codec head runs over every prompt row (the row count changes kernels' rounding)."""
        t = time.perf_counter()
        L = inputs_embeds.shape[1]
        self.stack.ensure_capacity(max(capacity, L + 1), self.cache_granule)
        w = self.stack.work(1, L, keep=False)
        w.x.copy_(inputs_embeds[0])
        hidden = self.stack.forward(w, 1, L, [0], slot=slot)
        logits = self.codec_head(hidden, None)
        self.timings["prefill_s"] += time.perf_counter() - t
        return hidden[-1:].clone(), logits[-1:]

    def step(self, n: int, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One talker step for streams 0..n-1 on ``self.emb_sum[:n]`` (already holding the next input embeddings).

        ``starts``: each stream's position; ``self.pos[:n]`` must hold the same values. Returns (hidden (n, H),
        logits (n, V)), workspace buffers valid until the next step."""
        t = time.perf_counter()
        w = self.stack.work(n, 1)
        w.x.copy_(self.emb_sum[:n, 0])
        hidden = self.stack.forward(w, n, 1, starts, self.pos[:n])
        logits = self.codec_head(hidden, self.logits0[:n])
        self.timings["talker_s"] += time.perf_counter() - t
        return hidden, logits

    def next_inputs(self, n: int, text_rows: list[torch.Tensor]) -> None:
        """``emb_sum[b] = sum of stream b's 16 code embeddings + text_rows[b]`` (upstream's next talker input)."""
        torch.sum(self.code_emb[:n], dim=1, keepdim=True, out=self.emb_sum[:n])
        for b, row in enumerate(text_rows):
            self.emb_sum[b].add_(row)

    # --- code predictor -------------------------------------------------------------------------------------------
    def pick_sub(self, samplers: list[StreamSampler], logits: torch.Tensor) -> torch.Tensor:
        """Tokens (n,) of one sub-talker step from logits (n, V), each row with its stream's processors."""
        if all(s.sub_greedy for s in samplers):
            return torch.argmax(logits, dim=-1)  # what every row's (empty) processor list + argmax picks, in one call
        if len(samplers) == 1:
            return samplers[0].sub_token(logits)
        out = self._sub_tok[: len(samplers)]
        for b, s in enumerate(samplers):
            out[b : b + 1].copy_(s.sub_token(logits[b : b + 1]))
        return out

    def predict(
        self, n: int, hidden: torch.Tensor, token0: torch.Tensor, samplers: list[StreamSampler]
    ) -> torch.Tensor:
        """Codebooks 1..15 for streams 0..n-1 given the talker's last hidden (n, H) and codebook-0 tokens (n,).

        Each row samples with its stream's sub-talker processors (``samplers[b]``). Fills ``self.codes[:n]`` and
        ``self.code_emb[:n]`` (the embeddings the next talker input sums) and returns ``self.codes[:n]``."""
        t = time.perf_counter()
        G, p = self.num_code_groups, self.pred
        codes, emb = self.codes[:n], self.code_emb[:n]
        codes[:, 0].copy_(token0)
        torch.index_select(self.embed0, 0, token0, out=emb[:, 0])
        # prefill: [past_hidden, embed(code 0)] at positions 0, 1
        w2 = p.work(n, 2)
        x2 = w2.x.view(n, 2, -1)
        x2[:, 0].copy_(hidden)
        x2[:, 1].copy_(emb[:, 0])
        if self.mtp_proj is not None:
            w2.x.copy_(self.mtp_proj(w2.x, None))
        h = p.forward(w2, n, 2, [0] * n)
        logits = self.lm_heads[0](h, None).view(n, 2, -1)[:, -1]
        w1 = p.work(n, 1)
        for g in range(1, G):
            tok = self.pick_sub(samplers, logits)
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
        self.timings["predictor_s"] += time.perf_counter() - t
        return codes


# --------------------------------------------------------------------------------------------------------------------
# Single-stream driver with FrameLoop's interface
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class StreamSampler:
    """One stream's sampling state: upstream's processors for codebook 0 and for the sub-talker, and the tokens so
    far (the repetition penalty and the min-new-tokens EOS guard read them), in a preallocated buffer."""

    prompt: TalkerPrompt
    max_frames: int
    device: torch.device
    eos: int = 0
    generated: torch.Tensor = field(init=False)
    n_generated: int = 0

    def __post_init__(self):
        o = self.prompt.options
        self.eos = int(o["eos_token_id"])
        self.talker_procs = _processors(
            do_sample=bool(o["do_sample"]), temperature=o["temperature"], top_k=o["top_k"], top_p=o["top_p"],
            repetition_penalty=o["repetition_penalty"], min_new_tokens=int(o.get("min_new_tokens", 0)),
            eos=self.eos, suppress=list(o.get("suppress_tokens") or []), device=self.device,
        )  # fmt: skip
        self.talker_sample = bool(o["do_sample"])
        self.sub_procs = _processors(
            do_sample=bool(o["subtalker_dosample"]), temperature=o["subtalker_temperature"],
            top_k=o["subtalker_top_k"], top_p=o["subtalker_top_p"], device=self.device,
        )  # fmt: skip
        self.sub_sample = bool(o["subtalker_dosample"])
        self.sub_greedy = not self.sub_sample and len(self.sub_procs) == 0
        # what the sub-talker's sampling depends on (CUDA graphs are captured per combination)
        self.sub_key = (self.sub_sample, o["subtalker_temperature"], o["subtalker_top_k"], o["subtalker_top_p"])
        self.generated = torch.zeros(1, self.max_frames + 2, dtype=torch.long, device=self.device)
        self._no_ids = self.generated[:, :0]

    def talker_token(self, logits: torch.Tensor) -> torch.Tensor:
        """Codebook-0 token (1,) from logits (1, V); appended to the generated tokens."""
        tok = _pick(self.talker_procs(self.generated[:, : self.n_generated], logits.float()), self.talker_sample)
        self.generated[0, self.n_generated] = tok[0]
        self.n_generated += 1
        return tok

    def sub_token(self, logits: torch.Tensor) -> torch.Tensor:
        return _pick(self.sub_procs(self._no_ids, logits.float()), self.sub_sample)

    def text_row(self, frame: int) -> torch.Tensor:
        """What upstream adds to frame ``frame``'s talker input: the next text embedding, then ``tts_pad``."""
        trailing = self.prompt.trailing_text_hidden
        return trailing[0, frame : frame + 1] if frame < trailing.shape[1] else self.prompt.tts_pad_embed[0]


def frame_limit(prompt: TalkerPrompt, max_frames: int) -> int:
    """upstream's generate samples max_new_tokens tokens, so it emits at most max_new_tokens - 1 frames."""
    return max(0, min(max_frames, int(prompt.options["max_new_tokens"]) - 1))


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
        """Yields LongTensor (16,) per frame (rows of one per-utterance buffer) until EOS, the budget, or ``cancel``."""
        if self.threads:
            torch.set_num_threads(self.threads)
        lean = self.lean
        for k in lean.timings:
            lean.timings[k] = 0.0
        try:
            yield from self._frames(lean, cancel)
        finally:
            self.timings = dict(lean.timings)

    def _frames(self, lean: LeanTalker, cancel: threading.Event | None) -> Iterator[torch.Tensor]:
        prompt = self.prompt
        L = prompt.inputs_embeds.shape[1]
        sampler = StreamSampler(prompt, self.max_frames, lean.device)
        out = torch.empty(self.max_frames + 1, lean.num_code_groups, dtype=torch.long, device=lean.device)
        hidden, logits = lean.prefill(0, prompt.inputs_embeds, L + self.max_frames + 1)
        token = sampler.talker_token(logits)
        frame = 0
        samplers = [sampler]
        while not self.stop_before_frame(token, sampler.eos, frame, cancel):
            codes = lean.predict(1, hidden, token, samplers)
            out[frame].copy_(codes[0])
            yield out[frame]
            if self.stop_if_cancelled(cancel):
                return
            lean.next_inputs(1, [sampler.text_row(frame)])
            lean.pos[0] = L + frame
            hidden, logits = lean.step(1, [L + frame])
            token = sampler.talker_token(logits)
            frame += 1


def build_lean_talker(talker: torch.nn.Module, max_batch: int = 1) -> LeanTalker:
    """The runner for the talker's device: CUDA graphs on a GPU (``cuda_graphs.py``), eager static caches on CPU."""
    device = next(talker.parameters()).device
    if device.type == "cuda":
        from .cuda_graphs import CudaGraphTalker

        return CudaGraphTalker(talker, max_batch=max_batch)
    return LeanTalker(talker, max_batch=max_batch)
