"""Streaming Qwen3-TTS-12Hz Base with voice cloning: ``Qwen3TTSEngine`` (plain) and ``Qwen3TTSService`` (pipecat).

``from processors.qwen3_tts import Qwen3TTSEngine, Qwen3TTSService``. Names load on first use, so the options
(``processors.qwen3_tts.options``) are read without importing torch, and the engine works without pipecat.
"""

from __future__ import annotations

import importlib
from typing import Any

from .options import DEFAULT_MODEL, Qwen3TTSOptions

_LAZY = {
    "SUPPORTED_LANGUAGES": ".engine",
    "ModelUnavailableError": ".engine",
    "Qwen3TTSEngine": ".engine",
    "StreamStats": ".engine",
    "VoicePrompt": ".voice",
    "Qwen3TTSService": ".service",
}

__all__ = ["DEFAULT_MODEL", "Qwen3TTSOptions", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
