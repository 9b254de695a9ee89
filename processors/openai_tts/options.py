"""What a user sets to speak through an OpenAI-compatible speech endpoint (``--tts openai``, ``DUPLEX_TTS__*``): its
base URL, key and model (vLLM-Omni serving Qwen3-TTS, another Duplex server, OpenAI). Free of heavy imports."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from processors.qwen3_tts.options import DEFAULT_MODEL, SUPPORTED_LANGUAGES

# The languages the default model (Qwen3-TTS) speaks: what vLLM-Omni serves it with.
DEFAULT_LANGUAGES = SUPPORTED_LANGUAGES


class OpenAITTSOptions(BaseModel):
    """``endpoint``: the base URL the OpenAI SDK would take (``http://host:8091/v1``); ``model`` is the model name
    there (shared with the Qwen3-TTS row: the same hub id is what vLLM-Omni serves)."""

    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_MODEL
    endpoint: str | None = None
    endpoint_api_key: str = ""
    endpoint_language: bool = True  # send "language" (vLLM-Omni and Duplex take it; OpenAI's own API refuses it)
    endpoint_sample_rate: int = Field(24_000, ge=8_000, le=48_000)  # the endpoint's "pcm" rate (OpenAI: 24 kHz)
    endpoint_languages: list[str] = Field(default_factory=lambda: list(DEFAULT_LANGUAGES))
    endpoint_timeout_s: float = Field(30.0, gt=0.0)  # connect, first audio, and any gap between chunks
