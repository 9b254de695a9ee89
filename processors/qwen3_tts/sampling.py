"""Token sampling for the lean loops: upstream's logits processors, batched over streams with each stream's settings
held in device tensors (one row per cache slot).

Why: per-stream processor objects made the code predictor's CUDA graphs depend on every ordered combination of
sub-talker settings (one capture per combination, mid-conversation), and HF's suppress-tokens and min-new-tokens
processors run ``torch.isin`` over the vocabulary, which costs two host syncs per call on CUDA. Here one code path
serves any mix of settings: a graph captured for a batch size replays for every later combination, because the
settings are values in tensors it reads, never Python constants baked into it. Nothing here waits for the device.

Per row the arithmetic is HF's (``transformers`` 4.57), in HF's order, so the lean loop keeps reproducing upstream
(tests compare against HF's processors):

* repetition penalty over the tokens generated so far (a per-row "seen" mask; HF gathers and scatters the same
  values), then the min-new-tokens EOS guard, then the suppressed ids (precomputed masks instead of ``isin``);
* greedy rows: argmax; sampling rows: temperature, top-k (the k-th largest value per row), top-p (HF's sorted
  cumulative-probability cut), softmax and ``torch.multinomial``.

A setting that is off is a no-op value (temperature 1, k = vocabulary, top-p cut below every cumulative
probability, penalty 1), which leaves the row's values bit for bit unchanged.

Non-finite logits (NaN or inf, e.g. an overflow) would make ``torch.multinomial`` fire a device-side assert on CUDA,
which kills the process's CUDA context. Such rows are flagged instead and given a valid placeholder token; the loops
read the flag with the token and end that stream with ``NumericalError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from processors.tts_engine import TTSError


class NumericalError(TTSError):
    """The model produced non-finite logits (NaN or inf); the stream cannot go on."""


@dataclass(frozen=True)
class SamplingSettings:
    """One stream's settings for one sampler (codebook 0 or the sub-talker), as upstream's generate takes them."""

    do_sample: bool
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0

    def __post_init__(self):
        # HF's processors refuse these values at construction; refuse them here, before any frame
        if self.do_sample:
            if self.temperature is None or not float(self.temperature) > 0:
                raise ValueError(f"temperature must be > 0 when sampling, not {self.temperature!r}")
            if self.top_k is not None and int(self.top_k) < 0:
                raise ValueError(f"top_k must be >= 0, not {self.top_k!r}")
            if self.top_p is not None and not 0.0 <= float(self.top_p) <= 1.0:
                raise ValueError(f"top_p must be in [0, 1], not {self.top_p!r}")
        if self.repetition_penalty is not None and not float(self.repetition_penalty) > 0:
            raise ValueError(f"repetition_penalty must be > 0, not {self.repetition_penalty!r}")

    @classmethod
    def talker(cls, options: dict[str, Any]) -> SamplingSettings:
        """Codebook 0: upstream's talker options."""
        return cls(
            do_sample=bool(options["do_sample"]),
            temperature=options["temperature"],
            top_k=options["top_k"],
            top_p=options["top_p"],
            repetition_penalty=options["repetition_penalty"],
            min_new_tokens=int(options.get("min_new_tokens", 0) or 0),
        )

    @classmethod
    def sub_talker(cls, options: dict[str, Any]) -> SamplingSettings:
        """Codebooks 1..15: upstream's ``subtalker_*`` options (no penalty, no EOS guard)."""
        return cls(
            do_sample=bool(options["subtalker_dosample"]),
            temperature=options["subtalker_temperature"],
            top_k=options["subtalker_top_k"],
            top_p=options["subtalker_top_p"],
        )

    # what each processor contributes when it is on (HF adds a warper only when sampling and when it changes scores)
    @property
    def temperature_on(self) -> bool:
        return self.do_sample and self.temperature is not None and float(self.temperature) != 1.0

    @property
    def top_k_on(self) -> bool:
        return self.do_sample and self.top_k is not None and int(self.top_k) != 0

    @property
    def top_p_on(self) -> bool:
        return self.do_sample and self.top_p is not None and float(self.top_p) < 1.0

    @property
    def penalty_on(self) -> bool:
        return self.repetition_penalty is not None and float(self.repetition_penalty) != 1.0


class RowSampler:
    """Sampling settings for ``rows`` cache slots over a vocabulary of ``vocab`` ids, and batched sampling.

    ``track=True`` (codebook 0): the sampler remembers each row's generated tokens (repetition penalty) and their
    count (min-new-tokens guard). Settings are written with ``set_row`` when a stream takes a slot and moved with
    ``move_row``; the tensors themselves never change, so CUDA graphs that read them stay valid."""

    def __init__(self, rows: int, vocab: int, device: torch.device, *, track: bool = False):
        self.rows, self.vocab, self.device, self.track = rows, vocab, device, track
        f32 = dict(dtype=torch.float32, device=device)
        self.temperature = torch.ones(rows, 1, **f32)
        self.kth = torch.full((rows, 1), vocab - 1, dtype=torch.long, device=device)  # k - 1 (vocab - 1: keep all)
        self.top_p_cut = torch.full((rows, 1), -1.0, **f32)  # 1 - top_p; -1 is below every cumulative probability
        self.penalty = torch.ones(rows, 1, **f32)
        self.sampling = torch.zeros(rows, 1, dtype=torch.bool, device=device)
        self.banned = torch.zeros(rows, vocab, dtype=torch.bool, device=device)  # suppressed ids
        self.eos_mask = torch.zeros(rows, vocab, dtype=torch.bool, device=device)  # the EOS id (min-new-tokens)
        self.min_new = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.count = torch.zeros(rows, 1, dtype=torch.long, device=device)  # tokens generated so far
        self.seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device)  # which ids were generated
        self._ones = torch.ones(rows, 1, dtype=torch.bool, device=device)
        self.settings: list[SamplingSettings | None] = [None] * rows  # host copies (which work the eager path skips)
        self._kth = [vocab - 1] * rows  # host copy of ``kth`` (the eager top-k width, without reading the device)
        self._masks: dict[tuple[int, ...], torch.Tensor] = {}

    # --- settings -------------------------------------------------------------------------------------------------
    def set_row(self, row: int, s: SamplingSettings, *, suppress: Sequence[int] = (), eos: int | None = None) -> None:
        """A stream takes slot ``row``: its settings, and no tokens generated yet."""
        V = self.vocab
        self.settings[row] = s
        self.temperature[row] = float(s.temperature) if s.temperature_on else 1.0
        self._kth[row] = min(max(int(s.top_k), 1), V) - 1 if s.top_k_on else V - 1
        self.kth[row] = self._kth[row]
        self.top_p_cut[row] = 1 - float(s.top_p) if s.top_p_on else -1.0
        self.penalty[row] = float(s.repetition_penalty) if s.penalty_on else 1.0
        self.sampling[row] = s.do_sample
        self.banned[row].copy_(self._suppress_mask(tuple(suppress)))
        self.eos_mask[row] = False
        guard = bool(s.min_new_tokens) and eos is not None and 0 <= eos < V
        if guard:
            self.eos_mask[row, eos] = True
        self.min_new[row] = int(s.min_new_tokens) if guard else 0
        self.count[row] = 0
        self.seen[row] = False

    def _suppress_mask(self, ids: tuple[int, ...]) -> torch.Tensor:
        """The vocabulary mask of ``ids``, built once per list (building it copies the list to the device)."""
        mask = self._masks.get(ids)
        if mask is None:
            mask = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
            valid = [i for i in ids if 0 <= i < self.vocab]
            if valid:
                mask[torch.tensor(valid, dtype=torch.long, device=self.device)] = True
            self._masks[ids] = mask
        return mask

    def move_row(self, src: int, dst: int) -> None:
        for t in (self.temperature, self.kth, self.top_p_cut, self.penalty, self.sampling, self.banned,
                  self.eos_mask, self.min_new, self.count, self.seen):  # fmt: skip
            t[dst].copy_(t[src])
        self.settings[dst] = self.settings[src]
        self._kth[dst] = self._kth[src]

    # --- sampling -------------------------------------------------------------------------------------------------
    def sample(
        self, logits: torch.Tensor, start: int, n: int, *, static: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (n,) long and a non-finite flag (n,) bool for rows ``start..start+n`` from ``logits`` (n, vocab).

        ``static=True`` runs every stage whatever the rows' settings (fixed work for a CUDA graph); otherwise stages
        no row needs are skipped (the same values: a stage that is off changes nothing). With ``track`` the tokens
        are recorded for the penalty and the min-new-tokens guard."""
        r = slice(start, start + n)
        live = [s for s in self.settings[r] if s is not None]
        need = lambda prop: static or any(getattr(s, prop) for s in live)
        scores = logits.float()
        if self.track:
            if need("penalty_on"):
                p = self.penalty[r]
                scores = torch.where(self.seen[r], torch.where(scores < 0, scores * p, scores / p), scores)
            if static or any(s.min_new_tokens for s in live):
                scores = scores.masked_fill(self.eos_mask[r] & (self.count[r] < self.min_new[r]), float("-inf"))
        scores = scores.masked_fill(self.banned[r], float("-inf"))
        bad = torch.isnan(scores).any(-1)
        greedy = torch.argmax(scores, dim=-1)
        if static or any(s.do_sample for s in live):
            w = scores
            if need("temperature_on"):
                w = w / self.temperature[r]
            if need("top_k_on"):
                kmax = self.vocab if static else max(self._kth[start : start + n]) + 1
                top = torch.topk(w, kmax, dim=-1).values
                w = w.masked_fill(w < torch.gather(top, 1, self.kth[r].clamp(max=kmax - 1)), float("-inf"))
            if need("top_p_on"):
                sorted_w, order = torch.sort(w, descending=False)
                remove = sorted_w.softmax(dim=-1).cumsum(dim=-1) <= self.top_p_cut[r]
                remove[..., -1:] = False
                w = w.masked_fill(remove.scatter(1, order, remove), float("-inf"))
            probs = torch.softmax(w, dim=-1)
            # a row without a valid distribution (NaN anywhere, or nothing left) gets a placeholder one instead of
            # reaching multinomial, which asserts on the device for it
            invalid = torch.isnan(probs).any(-1, keepdim=True) | ~(probs.sum(-1, keepdim=True) > 0)
            probs = probs.masked_fill(invalid, 0.0)
            probs[:, :1].masked_fill_(invalid, 1.0)
            drawn = torch.multinomial(probs, num_samples=1).squeeze(1)
            sampling = self.sampling[r, 0]
            tokens = torch.where(sampling, drawn, greedy)
            bad = bad | (invalid[:, 0] & sampling)
        else:
            tokens = greedy
        tokens = tokens.masked_fill(bad, 0)  # a valid id for the embedding lookups that follow on the device
        if self.track:
            self.seen[r].scatter_(1, tokens.unsqueeze(1), self._ones[r])
            self.count[r] += 1
        return tokens, bad
