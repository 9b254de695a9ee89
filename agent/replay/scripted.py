"""Scripted stand-ins for scenarios that must know the words: an ``STTEngine`` returning prepared transcripts and a
pipecat LLM service streaming prepared replies. Everything else in a replay (VAD, turn strategies, TTS, transport,
interruptions) is the real pipeline. Both behave like the real parts where timing matters: the STT runs in the
segmented STT service's worker thread, the LLM streams word by word and is cancelled by interruptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
from pipecat.frames.frames import (
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings

from processors.audio import STT_SAMPLE_RATE
from processors.stt_engine import Transcript


class ScriptedSTTEngine:
    """``STTEngine`` protocol: returns ``texts`` in order, one per segment ("" once they run out)."""

    name = "scripted"
    language = "en"

    def __init__(self, texts: Sequence[str]):
        self.texts = list(texts)
        self.calls: list[float] = []  # seconds of audio per call

    def transcribe(self, audio: np.ndarray, sample_rate: int = STT_SAMPLE_RATE) -> Transcript:
        self.calls.append(len(audio) / sample_rate)
        text = self.texts.pop(0) if self.texts else ""
        return Transcript(text=text, language="en", audio_seconds=len(audio) / sample_rate)


class ScriptedLLMService(LLMService):
    """Streams prepared replies (one per ``LLMContextFrame``) word by word, ``token_s`` apart (``tail_token_s`` after
    the first sentence, to keep a reply streaming while its first sentence is spoken)."""

    def __init__(self, replies: Sequence[str], *, token_s: float = 0.02, tail_token_s: float | None = None, **kwargs):
        fields = (
            "model",
            "system_instruction",
            "temperature",
            "max_tokens",
            "top_p",
            "top_k",
            "frequency_penalty",
            "presence_penalty",
            "seed",
            "filter_incomplete_user_turns",
            "user_turn_completion_config",
        )
        settings = LLMSettings(**dict.fromkeys(fields), use_provider_thinking_default=False, extra={})
        super().__init__(settings=settings, **kwargs)
        self.replies = list(replies)
        self.token_s = token_s
        self.tail_token_s = token_s if tail_token_s is None else tail_token_s
        self.requests: list[list[dict]] = []
        self.cancelled = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        self.requests.append([dict(m) for m in frame.context.get_messages()])
        reply = self.replies.pop(0) if self.replies else "I have nothing more to say."
        await self.push_frame(LLMFullResponseStartFrame())
        try:
            first_sentence_done = False
            for i, word in enumerate(reply.split(" ")):
                await asyncio.sleep(self.tail_token_s if first_sentence_done else self.token_s)
                await self.push_frame(LLMTextFrame(word if i == 0 else f" {word}"))
                first_sentence_done = first_sentence_done or word.endswith((".", "!", "?"))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            await self.push_frame(LLMFullResponseEndFrame())
