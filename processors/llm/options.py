"""What a user can set for the LLM step (``DUPLEX_LLM__*`` / ``duplex serve --llm ...``), next to the code that
builds the service from it (``factory.create_llm_service``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Your answers are spoken aloud, so reply in one to three short, "
    "plain sentences. Never use markdown, lists, emojis or code. If you did not understand, ask briefly."
)
LOCAL_BACKEND = "local"


class LLMOptions(BaseModel):
    """``backend``: ``"local"`` (the bundled SmolLM2, or ``model`` as a local directory / hub id) or the base URL of
    an OpenAI-compatible chat completions API (``model`` is then the model name at that endpoint)."""

    model_config = ConfigDict(extra="forbid")

    backend: str = LOCAL_BACKEND
    model: str = ""
    api_key: str = ""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tokens: int = Field(120, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0.0)

    @property
    def is_local(self) -> bool:
        return self.backend.strip().lower() == LOCAL_BACKEND
