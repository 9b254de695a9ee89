"""CMU PocketSphinx (bundled en-us model) as the WEAK offline fallback STT: ``PocketsphinxEngine`` (plain) and
``PocketsphinxSTTService`` (pipecat, imported lazily so the engine works without pipecat). One per session."""

from .engine import PocketsphinxEngine, dither_digital_silence

__all__ = ["PocketsphinxEngine", "PocketsphinxSTTService", "dither_digital_silence"]


def __getattr__(name: str):
    if name == "PocketsphinxSTTService":
        from .service import PocketsphinxSTTService

        return PocketsphinxSTTService
    raise AttributeError(name)
