"""Streaming Qwen3-TTS-12Hz Base with voice cloning: ``Qwen3TTSEngine`` (plain) and ``Qwen3TTSService`` (pipecat).

``from processors.qwen3_tts import Qwen3TTSEngine, Qwen3TTSService``; the service is imported lazily so the
engine works without pipecat.
"""

from .engine import DEFAULT_MODEL, SUPPORTED_LANGUAGES, ModelUnavailableError, Qwen3TTSEngine, StreamStats
from .voice import VoicePrompt

__all__ = [
    "DEFAULT_MODEL",
    "SUPPORTED_LANGUAGES",
    "ModelUnavailableError",
    "Qwen3TTSEngine",
    "Qwen3TTSService",
    "StreamStats",
    "VoicePrompt",
]


def __getattr__(name: str):
    if name == "Qwen3TTSService":
        from .service import Qwen3TTSService

        return Qwen3TTSService
    raise AttributeError(name)
