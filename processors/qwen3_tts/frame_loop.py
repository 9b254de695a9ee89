"""The Qwen3-TTS talker + code-predictor loop, driven one 80 ms codec frame at a time.

Upstream (``Qwen3TTSForConditionalGeneration.generate``) builds the talker prompt and then hands it to HF
``generate``, which returns only when the whole utterance is done. We let upstream build the prompt (so the prompt is
upstream's own, byte for byte) by intercepting the call to ``talker.generate``, then run the loop ourselves:

    prefill -> codebook-0 token t0
    for each frame k:   t_k is EOS or the budget is spent -> stop
                        code predictor: 15 steps -> codebooks 1..15        (yield the 16 codes of frame k)
                        talker step on sum(code embeddings) + text/pad     -> t_{k+1}

Sampling applies the same HF logits processors, in the same order, as upstream's ``generate`` calls (repetition
penalty, min-new-tokens EOS guard, suppressed control codes; then temperature, top-k, top-p), and draws with
``torch.multinomial`` like HF, so greedy decoding reproduces upstream codes exactly. The engine's default is the
lean loop (``lean_loop.py``: static caches, batched per-stream sampling); this one trades speed for
obviously-upstream semantics and is the reference the lean loop is tested against.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


class _PromptCaptured(Exception):
    def __init__(self, kwargs: dict[str, Any]):
        super().__init__("prompt captured")
        self.kwargs = kwargs


@dataclass
class TalkerPrompt:
    """Everything upstream passes to ``talker.generate`` for one utterance (batch of one)."""

    inputs_embeds: torch.Tensor  # (1, L, hidden)
    trailing_text_hidden: torch.Tensor  # (1, T, hidden): text embeddings fed one per frame, then tts_pad
    tts_pad_embed: torch.Tensor  # (1, 1, hidden)
    options: dict[str, Any]  # sampling options and limits as upstream set them


def capture_prompt(tts_model: Any, **voice_clone_kwargs: Any) -> TalkerPrompt:
    """Run upstream ``generate_voice_clone`` up to where it would start HF ``generate``, and return the prompt.

    ``tts_model`` is a ``qwen_tts.Qwen3TTSModel``. The caller holds the engine lock (the talker is patched briefly).
    """
    talker = tts_model.model.talker

    def _intercept(**kwargs: Any) -> None:
        raise _PromptCaptured(kwargs)

    talker.generate = _intercept  # instance attribute shadows the method
    try:
        tts_model.generate_voice_clone(**voice_clone_kwargs)
    except _PromptCaptured as captured:
        kw = captured.kwargs
    else:  # pragma: no cover - upstream changed shape
        raise RuntimeError("qwen-tts did not call talker.generate; this qwen-tts version is not supported")
    finally:
        del talker.generate
    if kw["inputs_embeds"].shape[0] != 1:
        raise RuntimeError("only single-utterance prompts are supported")
    options = {
        k: v
        for k, v in kw.items()
        if k not in ("inputs_embeds", "attention_mask", "trailing_text_hidden", "tts_pad_embed")
    }
    return TalkerPrompt(kw["inputs_embeds"], kw["trailing_text_hidden"], kw["tts_pad_embed"], options)


def _processors(
    *,
    do_sample: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float = 1.0,
    min_new_tokens: int = 0,
    eos: int | None = None,
    suppress: list[int] | None = None,
    device: torch.device,
) -> LogitsProcessorList:
    """Logits processors in the order HF ``GenerationMixin._get_logits_processor`` (transformers 4.57) applies them."""
    procs = LogitsProcessorList()
    if repetition_penalty is not None and repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty=repetition_penalty))
    if min_new_tokens and eos is not None:
        procs.append(
            MinNewTokensLengthLogitsProcessor(0, min_new_tokens, torch.tensor([eos], device=device), device=device)
        )
    if suppress:
        procs.append(SuppressTokensLogitsProcessor(suppress, device=device))
    if do_sample:
        if temperature is not None and temperature != 1.0:
            procs.append(TemperatureLogitsWarper(temperature))
        if top_k is not None and top_k != 0:
            procs.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
        if top_p is not None and top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return procs


def _pick(scores: torch.Tensor, do_sample: bool) -> torch.Tensor:
    if do_sample:
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
    return torch.argmax(scores, dim=-1)


class StopPolicy:
    """When a frame loop stops, shared by every loop: the end token, the frame budget (``hit_budget``) or ``cancel``
    (``cancelled``), checked before each frame and again after each yield, so cancelling costs at most one frame."""

    max_frames: int
    hit_budget = False
    cancelled = False

    def stop_before_frame(self, token: torch.Tensor, eos: int, frame: int, cancel: threading.Event | None) -> bool:
        if int(token) == eos:
            return True
        if frame >= self.max_frames:
            self.hit_budget = True
            return True
        return self.stop_if_cancelled(cancel)

    def stop_if_cancelled(self, cancel: threading.Event | None) -> bool:
        if cancel is not None and cancel.is_set():
            self.cancelled = True
            return True
        return False


class FrameLoop(StopPolicy):
    """Generates the 16 codes of each frame for one prompt. Single use, not thread-safe (hold the engine lock)."""

    def __init__(self, talker: Any, prompt: TalkerPrompt, max_frames: int):
        self.talker = talker
        self.prompt = prompt
        o = prompt.options
        self.eos = int(o["eos_token_id"])
        self.max_new_tokens = int(o["max_new_tokens"])
        # upstream's generate samples max_new_tokens tokens, so it emits at most max_new_tokens - 1 frames
        self.max_frames = max(0, min(max_frames, self.max_new_tokens - 1))
        self.num_code_groups = int(talker.config.num_code_groups)
        device = prompt.inputs_embeds.device
        self._talker_procs = _processors(
            do_sample=bool(o["do_sample"]),
            temperature=o["temperature"],
            top_k=o["top_k"],
            top_p=o["top_p"],
            repetition_penalty=o["repetition_penalty"],
            min_new_tokens=int(o.get("min_new_tokens", 0)),
            eos=self.eos,
            suppress=list(o.get("suppress_tokens") or []),
            device=device,
        )
        self._talker_sample = bool(o["do_sample"])
        self._sub_procs = _processors(
            do_sample=bool(o["subtalker_dosample"]),
            temperature=o["subtalker_temperature"],
            top_k=o["subtalker_top_k"],
            top_p=o["subtalker_top_p"],
            device=device,
        )
        self._sub_sample = bool(o["subtalker_dosample"])

    def _talker_token(self, hidden_last: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        logits = self.talker.codec_head(hidden_last)[:, -1, :].float()
        return _pick(self._talker_procs(generated, logits), self._talker_sample)

    def _predict_codes(self, past_hidden: torch.Tensor, token0: torch.Tensor) -> torch.Tensor:
        """Codebooks 1..15 for a frame whose codebook 0 is ``token0``."""
        predictor = self.talker.code_predictor
        embed0 = self.talker.get_input_embeddings()(token0.view(1, 1))
        cache = DynamicCache()
        out = predictor(inputs_embeds=torch.cat((past_hidden, embed0), dim=1), past_key_values=cache, use_cache=True)
        step = out.generation_steps
        generated = torch.zeros((1, 0), dtype=torch.long, device=token0.device)
        codes = [token0.view(1)]
        for i in range(self.num_code_groups - 1):
            tok = _pick(self._sub_procs(generated, out.logits[:, -1, :].float()), self._sub_sample)
            codes.append(tok.view(1))
            generated = torch.cat([generated, tok.view(1, 1)], dim=1)
            if i == self.num_code_groups - 2:
                break
            out = predictor(input_ids=tok.view(1, 1), past_key_values=cache, use_cache=True, generation_steps=step)
            step = out.generation_steps
        return torch.cat(codes)

    def _next_input(self, codes: torch.Tensor, frame_index: int) -> torch.Tensor:
        embeds = [self.talker.get_input_embeddings()(codes[:1].view(1, 1))]
        table = self.talker.code_predictor.get_input_embeddings()
        for i in range(self.num_code_groups - 1):
            embeds.append(table[i](codes[i + 1 : i + 2].view(1, 1)))
        x = torch.cat(embeds, dim=1).sum(1, keepdim=True)
        trailing = self.prompt.trailing_text_hidden
        if frame_index < trailing.shape[1]:
            return x + trailing[:, frame_index].unsqueeze(1)
        return x + self.prompt.tts_pad_embed

    @torch.inference_mode()
    def frames(self, cancel: threading.Event | None = None) -> Iterator[torch.Tensor]:
        """Yields LongTensor (16,) per frame until EOS, the frame budget, or ``cancel``."""
        model = self.talker.model
        cache = DynamicCache()
        out = model(inputs_embeds=self.prompt.inputs_embeds, past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1:, :]
        generated = torch.zeros((1, 0), dtype=torch.long, device=hidden.device)
        token = self._talker_token(hidden, generated)
        generated = torch.cat([generated, token.view(1, 1)], dim=1)
        frame = 0
        while not self.stop_before_frame(token, self.eos, frame, cancel):
            codes = self._predict_codes(hidden, token)
            yield codes
            if self.stop_if_cancelled(cancel):
                return
            out = model(inputs_embeds=self._next_input(codes, frame), past_key_values=cache, use_cache=True)
            hidden = out.last_hidden_state[:, -1:, :]
            token = self._talker_token(hidden, generated)
            generated = torch.cat([generated, token.view(1, 1)], dim=1)
            frame += 1
