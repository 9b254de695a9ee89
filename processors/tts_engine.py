"""What every TTS engine offers, so adapters, the server and benchmarks treat Qwen3-TTS and the fallbacks alike.

An engine is plain Python (no pipecat): ``stream`` yields float32 mono chunks at ``engine.sample_rate`` while it
generates, and stops within one step of ``cancel`` being set.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

MAX_TEXT_CHARS = 2_000  # one request; the LLM step feeds sentences, far below this


class TTSError(Exception):
    """A synthesis failure with a message fit for the user."""


class InvalidTextError(TTSError, ValueError):
    """Empty, whitespace-only or over-long text."""


class UnsupportedLanguageError(TTSError, ValueError):
    """A language the engine cannot speak; the message lists the valid ones."""


class VoiceError(TTSError, ValueError):
    """A voice that cannot be used (unknown id, bad reference audio)."""


class EngineUnavailableError(TTSError):
    """The engine could not finish: a remote replica or endpoint died, vanished or did not answer in time. Nothing is
    wrong with the request; the next one goes to a live replica. Voice sessions say that they could not finish
    (``EngineTTSService``) and go on; ``/api/v1/speak`` reports ``SYNTHESIS_ERROR`` for that speak only."""


@dataclass(frozen=True)
class VoiceSpec:
    """What the voice registry knows about a voice; each engine turns it into its own voice object."""

    id: str
    name: str = ""
    language: str = "English"
    reference_audio: Path | None = None
    transcript: str | None = None
    x_vector_only: bool = False
    cache_dir: Path | None = None  # where the engine may keep computed prompts for this voice


@runtime_checkable
class TTSEngine(Protocol):
    """The engine interface (see module docstring)."""

    name: str
    sample_rate: int

    @property
    def languages(self) -> tuple[str, ...]: ...

    def load_voice(self, spec: VoiceSpec) -> Any:
        """The engine's voice object for a registry entry (cached by the engine)."""

    def stream(
        self,
        text: str,
        voice: Any,
        language: str = "English",
        cancel: threading.Event | None = None,
        **generation: Any,
    ) -> Iterator[np.ndarray]: ...

    def synthesize(self, text: str, voice: Any, language: str = "English", **generation: Any) -> np.ndarray: ...


@runtime_checkable
class TimedTTSEngine(TTSEngine, Protocol):
    """An engine that knows where each word starts in its audio (espeak: its word events). Adapters then time the
    words exactly instead of estimating them from the text."""

    def stream_timed(
        self,
        text: str,
        voice: Any,
        language: str = "English",
        cancel: threading.Event | None = None,
        **generation: Any,
    ) -> Iterator[tuple[np.ndarray, list[tuple[str, float]]]]:
        """``stream``'s chunks, each with the words that start in it: ``(word, seconds from the first sample)``."""


def validate_text(text: Any, max_chars: int = MAX_TEXT_CHARS) -> str:
    """The text to speak, stripped; raises InvalidTextError for empty, non-string or over-long text."""
    if not isinstance(text, str):
        raise InvalidTextError(f"text must be a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise InvalidTextError("text is empty")
    if len(stripped) > max_chars:
        raise InvalidTextError(f"text is {len(stripped)} characters long; the limit is {max_chars}")
    return stripped


def resolve_language(language: Any, supported: tuple[str, ...], *, allow_auto: bool = True) -> str:
    """Case-insensitive match against ``supported`` (canonical spelling returned); 'auto' passes through."""
    if not isinstance(language, str) or not language.strip():
        raise UnsupportedLanguageError(
            f"language must be one of: {', '.join(supported)}" + (", auto" if allow_auto else "")
        )
    wanted = language.strip().lower()
    if allow_auto and wanted == "auto":
        return "auto"
    for name in supported:
        if name.lower() == wanted:
            return name
    valid = ", ".join(supported) + (", auto" if allow_auto else "")
    raise UnsupportedLanguageError(f"unsupported language {language!r}; valid languages: {valid}")


def collect(chunks: Iterator[np.ndarray]) -> np.ndarray:
    """Concatenate a chunk stream into one waveform."""
    parts = [np.asarray(c, dtype=np.float32) for c in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
