"""``PocketsphinxSTTService``: the pocketsphinx en-us WEAK fallback as a pipecat STT service.

For when no Parakeet model is available: English only, 3-13 % WER on clean read speech and much worse on noisy or
telephone audio. All behaviour is the shared ``EngineSTTService``; this class only builds the engine. Create one
service (and so one engine) per session: the decoder carries channel normalisation between utterances.

    stt = PocketsphinxSTTService()                                 # bundled en-us model, no download
    stt = PocketsphinxSTTService(interim_interval_s=1.0)
"""

from __future__ import annotations

from typing import Any

from processors.segmented_stt import EngineSTTService

from .engine import PocketsphinxEngine


class PocketsphinxSTTService(EngineSTTService):
    """PocketSphinx as a pipecat 1.14 segmented STT service (weak fallback; see module docstring)."""

    def __init__(
        self,
        *,
        engine: PocketsphinxEngine | None = None,
        **kwargs: Any,
    ):
        """``engine``: this session's own ``PocketsphinxEngine`` (a new one is made if omitted; do not share one
        between sessions). Other arguments go to ``EngineSTTService``."""
        super().__init__(engine or PocketsphinxEngine(), **kwargs)
