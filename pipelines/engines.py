"""Pipecat services from settings: ``create_tts_service`` and ``create_stt_service`` (the LLM has
``processors.llm.create_llm_service``).

Engine choice for ``auto`` is ``agent.engines.choose_tts`` / ``choose_stt`` (one place decides, with a logged reason).
A loaded engine can be passed in, so a server shares one model across sessions; without one, these load it.
"""

from __future__ import annotations

from typing import Any

from loguru import logger

from agent.settings import Settings


def _resolve(kind: str, settings: Settings) -> str:
    from agent import engines

    choice = engines.choose_tts(settings) if kind == "tts" else engines.choose_stt(settings)
    logger.info(f"{kind.upper()} engine: {choice.engine} ({choice.reason})")
    return choice.engine


def create_tts_service(settings: Settings, *, engine: Any = None, voice: Any = None, **kwargs: Any):
    """``EspeakTTSService`` or ``Qwen3TTSService`` for ``settings.tts`` (``engine``: an already loaded engine of the
    chosen kind; ``voice``: that engine's voice object, else the registry's voice for ``settings.tts.voice``)."""
    name = settings.tts.engine if settings.tts.engine != "auto" else _resolve("tts", settings)
    language = settings.tts.language
    if name == "espeak":
        from processors.espeak_tts import EspeakEngine, EspeakTTSService

        engine = engine or EspeakEngine()
        if voice is None and settings.tts.voice is None:
            return EspeakTTSService(engine=engine, language=language, **kwargs)
        if voice is None:
            return EspeakTTSService(engine=engine, voice_id=settings.tts.voice, language=language, **kwargs)
        return EspeakTTSService(engine=engine, voice=voice, language=language, **kwargs)
    if name == "qwen3":
        from processors.qwen3_tts import Qwen3TTSEngine, Qwen3TTSService
        from voices.registry import VoiceRegistry

        if engine is None:
            engine = Qwen3TTSEngine.from_pretrained(
                settings.tts.model,
                device=settings.device,
                first_chunk_frames=settings.tts.first_chunk_frames,
                chunk_frames=settings.tts.chunk_frames,
            )
        registry = VoiceRegistry.from_settings(settings)
        if voice is None:
            spec = (registry.get(settings.tts.voice) if settings.tts.voice else registry.default()).spec()
            voice = engine.load_voice(spec)
        generation = {"temperature": settings.tts.temperature, "top_k": settings.tts.top_k}
        return Qwen3TTSService(
            engine=engine,
            voice=voice,
            voice_id=settings.tts.voice,
            voices=lambda voice_id: engine.load_voice(registry.get(voice_id).spec()),
            language=language,
            generation=generation,
            **kwargs,
        )
    raise ValueError(f"unknown TTS engine {name!r} (qwen3, espeak, auto)")


def create_stt_service(settings: Settings, *, engine: Any = None, **kwargs: Any):
    """``EngineSTTService`` over Parakeet or pocketsphinx for ``settings.stt`` (``engine``: an already loaded
    ``STTEngine``, which also decides the kind)."""
    from processors.segmented_stt import EngineSTTService

    if engine is None:
        name = settings.stt.engine if settings.stt.engine != "auto" else _resolve("stt", settings)
        if name == "parakeet":
            from processors.parakeet_stt import ParakeetEngine

            engine = ParakeetEngine.from_pretrained(settings.stt.model, device=settings.device)
        elif name == "pocketsphinx":
            from processors.pocketsphinx_stt import PocketsphinxEngine

            engine = PocketsphinxEngine()
        else:
            raise ValueError(f"unknown STT engine {name!r} (parakeet, pocketsphinx, auto)")
    interim = settings.stt.interim_interval_s
    if interim and getattr(engine, "name", "") == "pocketsphinx":
        # pocketsphinx holds the GIL while it decodes: re-transcribing the growing utterance every second stalls the
        # event loop (measured: VAD stops 2-4 s late on a 6.6 s utterance), so its interim passes stay off
        logger.info("pocketsphinx: interim transcripts off (decoding holds the GIL and would stall the pipeline)")
        interim = None
    return EngineSTTService(engine, interim_interval_s=interim, **kwargs)
