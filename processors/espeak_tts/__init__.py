"""libespeak-ng (from the espeakng-loader wheel) as the offline fallback TTS: ``EspeakEngine`` (plain) and
``EspeakTTSService`` (pipecat).

``from processors.espeak_tts import EspeakEngine, EspeakTTSService``; the service is imported lazily so the engine
works without pipecat.
"""

from .engine import (
    LANGUAGE_VOICES,
    SUPPORTED_LANGUAGES,
    EspeakEngine,
    EspeakVoice,
    InvalidOptionError,
    StreamStats,
    split_sentences,
)

__all__ = [
    "LANGUAGE_VOICES",
    "SUPPORTED_LANGUAGES",
    "EspeakEngine",
    "EspeakTTSService",
    "EspeakVoice",
    "InvalidOptionError",
    "StreamStats",
    "split_sentences",
]


def __getattr__(name: str):
    if name == "EspeakTTSService":
        from .service import EspeakTTSService

        return EspeakTTSService
    raise AttributeError(name)
