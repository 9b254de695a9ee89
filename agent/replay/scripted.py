"""Scripted stand-ins for scenarios that must know the words: an ``STTEngine`` returning prepared transcripts and a
pipecat LLM service streaming prepared replies. Everything else in a replay (VAD, turn strategies, TTS, transport,
interruptions) is the real pipeline. Both behave like the real parts where timing matters: the STT runs in the
segmented STT service's worker thread, the LLM streams word by word and is cancelled by interruptions.

How scripted replies are counted: one reply per answer the user hears. A request that was interrupted
(``InterruptionFrame``, or ``EagerEndOfTurnCancelFrame`` for a speculative one) and of which nothing played — no
``BotStartedSpeakingFrame`` (the output transport sends it upstream too) came after it before the next request —
gives its reply to the next request again: the user went on talking after a pause and the turn was split, or barged
in while the bot was still thinking. Every other request uses its reply up, including one cut by a barge-in after
the bot started speaking it (the user heard part of it) and one answered while the bot was still speaking the
previous reply (no interruption: ``turn.barge_in: false``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    EagerEndOfTurnCancelFrame,
    Frame,
    InterruptionFrame,
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


@dataclass
class ScriptedRequest:
    """One LLM request: the context it saw, the reply it was given, and what became of it."""

    messages: list[dict]
    reply: str
    index: int | None  # the reply's position in the script (None: the script had run out)
    heard: bool = False  # the bot started speaking after this request
    interrupted: bool = False  # an interruption came before the bot started speaking it
    withdrawn: bool = False  # interrupted and never heard: its reply went to the next request
    cancelled: bool = False  # its stream was cancelled before the last word


class ScriptedLLMService(LLMService):
    """Streams prepared replies (one per answer the user hears: see the module docstring) word by word, ``token_s``
    apart (``tail_token_s`` after the first sentence, to keep a reply streaming while its first sentence is spoken).
    ``log`` has one ``ScriptedRequest`` per request."""

    FALLBACK = "I have nothing more to say."

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
        self.log: list[ScriptedRequest] = []
        self._reply_index = 0  # the script's next unused reply

    @property
    def requests(self) -> list[list[dict]]:
        """The context of every request, in order."""
        return [r.messages for r in self.log]

    @property
    def cancelled(self) -> int:
        """Requests whose stream was cancelled before its last word."""
        return sum(r.cancelled for r in self.log)

    @property
    def used(self) -> int:
        """Replies used up so far."""
        return self._reply_index

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)  # an InterruptionFrame cancels a reply being streamed
        last = self.log[-1] if self.log else None
        if isinstance(frame, BotStartedSpeakingFrame):
            if last is not None:
                last.heard = True
        elif isinstance(frame, (InterruptionFrame, EagerEndOfTurnCancelFrame)):
            if last is not None and not last.heard:
                last.interrupted = True
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        # decided only now: the bot's first audio and an interruption can come in the same instant, and the upstream
        # BotStartedSpeakingFrame may reach us just after the InterruptionFrame
        if last is not None and last.interrupted and not last.heard and last.index is not None:
            last.withdrawn = True  # nothing of it was heard: this request gets the same reply
            self._reply_index = last.index
        index = self._reply_index if self._reply_index < len(self.replies) else None
        reply = self.replies[index] if index is not None else self.FALLBACK
        request = ScriptedRequest([dict(m) for m in frame.context.get_messages()], reply, index)
        self.log.append(request)
        if index is not None:
            self._reply_index = index + 1
        await self.push_frame(LLMFullResponseStartFrame())
        try:
            first_sentence_done = False
            for i, word in enumerate(reply.split(" ")):
                await asyncio.sleep(self.tail_token_s if first_sentence_done else self.token_s)
                await self.push_frame(LLMTextFrame(word if i == 0 else f" {word}"))
                first_sentence_done = first_sentence_done or word.endswith((".", "!", "?"))
        except asyncio.CancelledError:
            request.cancelled = True
            raise
        finally:
            await self.push_frame(LLMFullResponseEndFrame())
