"""NVIDIA Parakeet TDT speech-to-text through NeMo: ``ParakeetEngine`` (plain) and ``ParakeetSTTService`` (pipecat).

``from processors.parakeet_stt import ParakeetEngine, ParakeetSTTService``; the service is imported lazily, so the
engine works without pipecat. ``build_tiny_parakeet_nemo`` makes a tiny random ``.nemo`` for offline tests.
"""

from .engine import DEFAULT_PARAKEET_MODEL, ParakeetEngine, resolve_device
from .random_model import PARAKEET_TDT_V2_SIZES, build_parakeet_like_model, build_tiny_parakeet_nemo

__all__ = [
    "DEFAULT_PARAKEET_MODEL", "PARAKEET_TDT_V2_SIZES", "ParakeetEngine", "ParakeetSTTService",
    "build_parakeet_like_model", "build_tiny_parakeet_nemo", "resolve_device",
]


def __getattr__(name: str):
    if name == "ParakeetSTTService":
        from .service import ParakeetSTTService

        return ParakeetSTTService
    raise AttributeError(name)
