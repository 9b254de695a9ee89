"""``Qwen3TTSService``: the pipecat adapter for ``Qwen3TTSEngine``.

All behaviour (worker thread, cancel-on-interrupt, seamless resampling, word timestamps, runtime voice/language
switching, errors as ErrorFrames) is the shared ``EngineTTSService``; this class only names the engine.

    engine = Qwen3TTSEngine.from_pretrained()                     # or a local directory
    voice = engine.create_voice("me.wav", "What I said in the clip.")
    tts = Qwen3TTSService(engine=engine, voice=voice)             # then use it in any pipecat pipeline
"""

from __future__ import annotations

from typing import Any

from processors.engine_tts_service import EngineTTSService

from .engine import Qwen3TTSEngine
from .voice import VoicePrompt


class Qwen3TTSService(EngineTTSService):
    """Streaming Qwen3-TTS voice cloning for pipecat 1.14."""

    def __init__(self, *, engine: Qwen3TTSEngine, voice: VoicePrompt | None = None, **kwargs: Any):
        super().__init__(engine, voice=voice, **kwargs)
