"""CMU PocketSphinx (bundled en-us model) as the WEAK offline fallback STT: ``PocketsphinxEngine`` (plain) and
``PocketsphinxSTTService`` (pipecat, imported lazily so the engine works without pipecat). One engine per process,
``engine.session()`` per voice session."""

from .engine import PocketsphinxEngine, PocketsphinxSession, dither_digital_silence

__all__ = ["PocketsphinxEngine", "PocketsphinxSTTService", "PocketsphinxSession", "dither_digital_silence"]


def __getattr__(name: str):
    if name == "PocketsphinxSTTService":
        from .service import PocketsphinxSTTService

        return PocketsphinxSTTService
    raise AttributeError(name)
