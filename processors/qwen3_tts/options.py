"""What a user can set for Qwen3-TTS (``DUPLEX_TTS__*`` / ``duplex serve --tts-model``), next to the engine that
reads it. Kept free of torch so that settings load without the model stack."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# The languages the model speaks (its own names for them).
SUPPORTED_LANGUAGES = (
    "Chinese",
    "English",
    "Japanese",
    "Korean",
    "German",
    "French",
    "Russian",
    "Portuguese",
    "Spanish",
    "Italian",
)

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-Base"


class Qwen3TTSOptions(BaseModel):
    """The model to load, how audio is chunked, and how codec tokens are sampled."""

    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_MODEL  # hub id or local directory
    first_chunk_frames: int = Field(1, ge=1, le=16)  # codec frames (80 ms each) before the first audio chunk
    chunk_frames: int = Field(4, ge=1, le=64)  # codec frames per later chunk
    # streams generated together in one batch (``batching.BatchScheduler``); 0 = one stream at a time. Memory per
    # stream on a GPU: ~117 MB of talker cache in bf16 for the first 1024 positions (prompt + 80 ms frames), up to
    # 4x that while a long utterance runs; on a CPU only the positions used are touched (229 KB each in fp32)
    max_streams: int = Field(10, ge=0, le=64)
    temperature: float = Field(0.9, ge=0.0)
    top_k: int = Field(50, ge=0)

    def generation(self) -> dict[str, float | int]:
        """Sampling settings as ``Qwen3TTSEngine.stream`` takes them."""
        return {"temperature": self.temperature, "top_k": self.top_k}
