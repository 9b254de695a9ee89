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

# Speech end -> final transcript P99 for turn-stop strategies: VAD stop_secs 0.2 plus a real-size CPU pass
# (0.49 s for 2 s, 0.96 s for 5 s of audio, /work/shared/notes/parakeet.md) plus at most one interim pass queued
# ahead of it. On a GPU pass ttfs_p99_latency explicitly (a pass is a few tens of ms there).
PARAKEET_CPU_TTFS_P99 = 1.5


class ParakeetSTTService(EngineSTTService):
    """Parakeet TDT as a pipecat 1.14 segmented STT service (see module docstring)."""

    def __init__(
        self,
        *,
        engine: ParakeetEngine | None = None,
        model: str | Path = DEFAULT_PARAKEET_MODEL,
        device: str | None = None,
        ttfs_p99_latency: float | None = None,
        **kwargs: Any,
    ):
        """``engine``: a loaded (shareable, thread-safe) ``ParakeetEngine``; otherwise ``model`` (hub id or .nemo)
        is loaded on ``device`` (None: CUDA when present). Other arguments go to ``EngineSTTService``."""
        engine = engine or ParakeetEngine.from_pretrained(model, device)
        if ttfs_p99_latency is None:
            ttfs_p99_latency = 0.5 if str(engine.device).startswith("cuda") else PARAKEET_CPU_TTFS_P99
        super().__init__(engine, ttfs_p99_latency=ttfs_p99_latency, **kwargs)
