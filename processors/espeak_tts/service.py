"""``EspeakTTSService``: the pipecat adapter for ``EspeakEngine`` (the offline fallback TTS).

All behaviour (worker thread, cancel-on-interrupt, seamless resampling from 22.05 kHz to the pipeline rate, word
timestamps, runtime voice/language switching, errors as ErrorFrames) is the shared ``EngineTTSService``; this class
only names the engine, gives it a default voice, lets voice ids like ``f3``, ``German+m3`` or ``en-gb`` select espeak
voices at runtime, and knows the extra languages espeak speaks.

    tts = EspeakTTSService()                                  # English, 175 words per minute
    tts = EspeakTTSService(voice_id="en-gb+f3", rate=200)     # any pipecat pipeline, no model download
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pipecat.transcriptions.language import Language

from processors.engine_tts_service import LANGUAGE_NAMES, EngineTTSService

from .engine import LANGUAGE_VOICES, EspeakEngine, EspeakVoice

# ISO 639 codes of the extra (non-Qwen) languages -> our language names
_EXTRA_LANGUAGE_NAMES = {code.split("-")[0]: name for name, code in LANGUAGE_VOICES.items()} | {"no": "Norwegian"}


class EspeakTTSService(EngineTTSService):
    """libespeak-ng as a pipecat 1.14 TTS service (see module docstring)."""

    def __init__(
        self,
        *,
        engine: EspeakEngine | None = None,
        voice: EspeakVoice | None = None,
        voice_id: str | None = None,
        voices: Mapping[str, Any] | Callable[[str], Any] | None = None,
        language: str = "English",
        rate: int | None = None,
        generation: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        """``engine``: a shared ``EspeakEngine`` (one is created if omitted); ``voice``: the default voice (the espeak
        voice for ``language`` if omitted); ``voices``: id -> voice, by default ``engine.voice_from_id``;
        ``rate``: speaking rate in words per minute (80-450), shorthand for ``generation={"rate": ...}``."""
        engine = engine or EspeakEngine()
        if voice is None:
            voice = engine.voice_from_id(voice_id) if voice_id else engine.create_voice(language)
        generation = dict(generation or {})
        if rate is not None:
            generation["rate"] = rate
        engine.stream("check", voice, language, **generation)  # bad language/options fail here, not mid-call
        super().__init__(
            engine,
            voice=voice,
            voice_id=voice_id,
            voices=voices or engine.voice_from_id,
            language=language,
            generation=generation,
            **kwargs,
        )

    def language_to_service_language(self, language: Language) -> str | None:
        code = str(language.value).split("-")[0].lower()
        return LANGUAGE_NAMES.get(code) or _EXTRA_LANGUAGE_NAMES.get(code)
