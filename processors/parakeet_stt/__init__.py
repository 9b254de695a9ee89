"""NVIDIA Parakeet TDT speech-to-text through NeMo: ``ParakeetEngine`` (plain) and ``ParakeetSTTService`` (pipecat).

``from processors.parakeet_stt import ParakeetEngine, ParakeetSTTService``; the service is imported lazily, so the
engine works without pipecat.
"""

from .engine import DEFAULT_PARAKEET_MODEL, ParakeetEngine, resolve_device

__all__ = ["DEFAULT_PARAKEET_MODEL", "ParakeetEngine", "ParakeetSTTService", "resolve_device"]


def __getattr__(name: str):
    if name == "ParakeetSTTService":
        from .service import ParakeetSTTService

        return ParakeetSTTService
    raise AttributeError(name)
