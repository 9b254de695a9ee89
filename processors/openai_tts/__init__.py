"""Any OpenAI-compatible speech endpoint (``POST {endpoint}/audio/speech``) as a TTS engine: ``OpenAISpeechEngine``.
vLLM-Omni serves Qwen3-TTS that way; so does ``duplex serve`` (``/v1/audio/speech``)."""

from .engine import OpenAISpeechEngine
from .options import OpenAITTSOptions

__all__ = ["OpenAISpeechEngine", "OpenAITTSOptions"]
