"""The LLM step: ``LocalLLMEngine`` (in-process, no pipecat), ``LocalLLMService`` (its pipecat adapter) and
``create_llm_service`` (local or any OpenAI-compatible endpoint, from ``LLMOptions``).

The engine names import eagerly (plain Python); the pipecat-dependent ones load on first use.
"""

from __future__ import annotations

from typing import Any

from .local_engine import (
    GenerationStats,
    LLMError,
    LLMInputError,
    LLMUnavailableError,
    LocalLLMEngine,
    bundled_gguf_path,
    default_cache_root,
    get_shared_engine,
)
from .options import DEFAULT_SYSTEM_PROMPT, LLMOptions

_LAZY = {
    "LocalLLMService": ".local_service",
    "chat_messages": ".local_service",
    "create_llm_service": ".factory",
    "LLMEndpointError": ".factory",
    "check_endpoint": ".endpoint",
}

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "LLMOptions",
    "GenerationStats",
    "LLMError",
    "LLMInputError",
    "LLMUnavailableError",
    "LocalLLMEngine",
    "bundled_gguf_path",
    "default_cache_root",
    "get_shared_engine",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
