"""``ParakeetSTTService``: NVIDIA Parakeet TDT (NeMo) as a pipecat STT service.

All behaviour (VAD-bounded segments, worker threads, resampling from the pipeline rate, interim transcripts,
errors as ErrorFrames, metrics) is the shared ``EngineSTTService``; this class only builds the engine.

    stt = ParakeetSTTService()                                        # nvidia/parakeet-tdt-0.6b-v2, CUDA if present
    stt = ParakeetSTTService(model="/models/parakeet.nemo", device="cpu", interim_interval_s=1.0)
    stt = ParakeetSTTService(engine=shared_engine)                    # one loaded model for several sessions
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from processors.segmented_stt import EngineSTTService

from .engine import DEFAULT_PARAKEET_MODEL, ParakeetEngine


class ParakeetSTTService(EngineSTTService):
    """Parakeet TDT as a pipecat 1.14 segmented STT service (see module docstring)."""

    def __init__(
        self,
        *,
        engine: ParakeetEngine | None = None,
        model: str | Path = DEFAULT_PARAKEET_MODEL,
        device: str | None = None,
        **kwargs: Any,
    ):
        """``engine``: a loaded (shareable, thread-safe) ``ParakeetEngine``; otherwise ``model`` (hub id or .nemo)
        is loaded on ``device`` (None: CUDA when present). Other arguments go to ``EngineSTTService``."""
        super().__init__(engine or ParakeetEngine.from_pretrained(model, device), **kwargs)
