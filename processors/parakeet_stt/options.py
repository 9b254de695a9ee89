"""What a user can set for Parakeet (``DUPLEX_STT__MODEL`` / ``duplex serve --stt-model``), next to the engine."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

DEFAULT_PARAKEET_MODEL = "nvidia/parakeet-tdt-0.6b-v2"


class ParakeetOptions(BaseModel):
    """Which Parakeet checkpoint to load."""

    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_PARAKEET_MODEL  # hub id or local .nemo file
