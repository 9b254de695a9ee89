"""Exact incremental decoding of the Qwen3-TTS 12 Hz codec.

Every op in the codec decoder is causal (causal convolutions, a causal sliding-window transformer), so instead of
re-decoding a window of frames with left context (approximate, and ~7x the work at 4-frame chunks) we carry the
state each layer needs from one chunk to the next:

* causal convolutions keep their last ``kernel - stride`` input samples (zeros at the start, like ``F.pad``);
* causal transposed convolutions (kernel = 2 x stride) keep their last input frame and emit only the
  output positions that belong to the new frames;
* the sliding-window transformer keeps its KV cache;
* everything else (codebook lookup, SnakeBeta, LayerNorm, Linear) is per time step.

Decoding frames in any chunking gives the full decode up to float rounding, at any length. (Upstream's
``chunked_decode`` re-decodes sequences longer than 300 frames in windows with 25 frames of left context, so past
frame 300 upstream is the approximation; ``tests/processors/qwen3_tts/test_long_utterance.py``.) In voice-clone ICL
mode the reference codes are decoded first to prime the state (upstream decodes ``cat(ref, new)`` and cuts the
reference off); a primed state can be copied and reused for every utterance of that voice.

This walker mirrors ``Qwen3TTSTokenizerV2Decoder.forward`` of qwen-tts 0.1.1; a parity test guards it.
"""

from __future__ import annotations

import copy

import torch


def _module_types():
    from qwen_tts.core.tokenizer_12hz import modeling_qwen3_tts_tokenizer_v2 as m

    return m


class StreamingCodecDecoder:
    """Holds the per-layer state of one stream through one ``Qwen3TTSTokenizerV2Decoder``. Not thread-safe."""

    def __init__(self, decoder: torch.nn.Module):
        self.decoder = decoder
        self.samples_per_frame = int(decoder.total_upsample)
        self._conv_tails: dict[int, torch.Tensor] = {}
        self._trans_prev: dict[int, torch.Tensor] = {}
        self._kv = None
        self.frames_decoded = 0
        m = _module_types()
        self._CausalConv = m.Qwen3TTSTokenizerV2CausalConvNet
        self._CausalTransConv = m.Qwen3TTSTokenizerV2CausalTransConvNet
        self._ConvNeXt = m.Qwen3TTSTokenizerV2ConvNeXtBlock
        self._Residual = m.Qwen3TTSTokenizerV2DecoderDecoderResidualUnit
        self._Block = m.Qwen3TTSTokenizerV2DecoderDecoderBlock

    def fork(self) -> StreamingCodecDecoder:
        """An independent copy of this state (e.g. the state after a voice's reference codes)."""
        clone = copy.copy(self)
        clone._conv_tails = {k: v.clone() for k, v in self._conv_tails.items()}
        clone._trans_prev = {k: v.clone() for k, v in self._trans_prev.items()}
        clone._kv = copy.deepcopy(self._kv)
        return clone

    # --- stateful layers ---------------------------------------------------------------------------
    def _conv(self, layer, x: torch.Tensor) -> torch.Tensor:
        if layer.stride != 1:
            raise NotImplementedError("strided causal convolutions are not used by the 12 Hz decoder")
        pad = layer.padding
        if pad == 0:
            return layer.conv(x)
        tail = self._conv_tails.get(id(layer))
        if tail is None:
            tail = x.new_zeros(x.shape[0], x.shape[1], pad)
        xin = torch.cat([tail, x], dim=-1)
        self._conv_tails[id(layer)] = xin[..., -pad:]
        return layer.conv(xin)

    def _trans_conv(self, layer, x: torch.Tensor) -> torch.Tensor:
        conv = layer.conv
        stride, kernel = conv.stride[0], conv.kernel_size[0]
        if kernel == stride:  # no overlap between frames: purely local
            return layer(x)
        if kernel != 2 * stride:
            raise NotImplementedError(f"transposed conv with kernel {kernel} and stride {stride}")
        prev = self._trans_prev.get(id(layer))
        if prev is None:
            prev = x.new_zeros(x.shape[0], x.shape[1], 1)
        xin = torch.cat([prev, x], dim=-1)
        self._trans_prev[id(layer)] = xin[..., -1:]
        out = conv(xin)  # length (T + 2) * stride; new frames own [stride, (T + 1) * stride)
        return out[..., stride : (x.shape[-1] + 1) * stride]

    def _convnext(self, block, x: torch.Tensor) -> torch.Tensor:
        h = self._conv(block.dwconv, x).permute(0, 2, 1)
        h = block.pwconv2(block.act(block.pwconv1(block.norm(h))))
        return x + (block.gamma * h).permute(0, 2, 1)

    def _residual(self, unit, x: torch.Tensor) -> torch.Tensor:
        h = self._conv(unit.conv1, unit.act1(x))
        h = self._conv(unit.conv2, unit.act2(h))
        return h + x

    def _apply(self, module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(module, self._CausalConv):
            return self._conv(module, x)
        if isinstance(module, self._CausalTransConv):
            return self._trans_conv(module, x)
        if isinstance(module, self._ConvNeXt):
            return self._convnext(module, x)
        if isinstance(module, self._Residual):
            return self._residual(module, x)
        if isinstance(module, self._Block):
            for sub in module.block:
                x = self._apply(sub, x)
            return x
        return module(x)  # per-time-step modules (SnakeBeta)

    # --- public ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: LongTensor (frames, 16) -> float waveform (frames * samples_per_frame,), clamped to [-1, 1]."""
        from transformers.cache_utils import DynamicCache

        dec = self.decoder
        if codes.ndim != 2 or codes.shape[1] != dec.config.num_quantizers:
            raise ValueError(f"expected codes of shape (frames, {dec.config.num_quantizers}), got {tuple(codes.shape)}")
        if codes.shape[0] == 0:
            return torch.zeros(0)
        codes = codes.clamp(min=0).transpose(0, 1).unsqueeze(0)  # (1, 16, T)
        hidden = dec.quantizer.decode(codes)
        hidden = self._conv(dec.pre_conv, hidden).transpose(1, 2)
        if self._kv is None:
            self._kv = DynamicCache(config=dec.pre_transformer.config)
        hidden = dec.pre_transformer(inputs_embeds=hidden, past_key_values=self._kv, use_cache=True).last_hidden_state
        hidden = hidden.permute(0, 2, 1)
        for blocks in dec.upsample:
            for block in blocks:
                hidden = self._apply(block, hidden)
        for block in dec.decoder:
            hidden = self._apply(block, hidden)
        self.frames_decoded += codes.shape[-1]
        return hidden.clamp(min=-1, max=1).reshape(-1)
