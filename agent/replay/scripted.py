"""Scripted stand-ins for scenarios that must know the words: ``STTEngine``s returning prepared transcripts (in order,
one per segment; or the scenario's word labels, wherever the VAD cuts the segments) and a pipecat LLM service
streaming prepared replies. Everything else in a replay (VAD, turn strategies, TTS, transport,
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
from collections.abc import Callable, Sequence
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
from processors.segmented_stt import EngineSTTService
from processors.stt_engine import Transcript, Word


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


LabelledWord = tuple[float, float, str]  # (start, end, word) on the replay's clock


class LabelledSTTEngine:
    """``STTEngine`` protocol: hears exactly the words the scenario labels, wherever the VAD cuts the segments.

    ``words()`` gives every labelled word fed so far, ``(start, end, word)`` on the clock that ``now()`` reads (the
    transport's). Audio handed to ``transcribe`` ends ``trailing_pad_s`` of padding after ``now()`` (the segmented
    STT appends that much silence to each segment; the pass runs at the VAD stop, and compute takes no time on the
    virtual clock), so it covers ``now() - (seconds - trailing_pad_s)`` .. ``now()``: the transcript is the words
    whose middle lies in that stretch. Words are where the labels put them (spread over each sound's voiced span),
    so a segment that ends inside a word hears the word if most of it was said."""

    name = "labelled"
    language = "en"

    def __init__(self, words: Callable[[], Sequence[LabelledWord]], now: Callable[[], float], trailing_pad_s: float):
        self._words = words
        self._now = now
        self.trailing_pad_s = trailing_pad_s
        self.calls: list[tuple[float, float]] = []  # (start, end) clock times each call covered

    def heard(self, start: float, end: float) -> list[LabelledWord]:
        """The labelled words whose middle lies in ``start`` .. ``end`` (clock times), in order."""
        return sorted(w for w in self._words() if start <= (w[0] + w[1]) / 2 < end)

    def transcribe(self, audio: np.ndarray, sample_rate: int = STT_SAMPLE_RATE) -> Transcript:
        seconds = len(audio) / sample_rate
        end = self._now()
        start = end - max(0.0, seconds - self.trailing_pad_s)
        self.calls.append((start, end))
        return self._transcript(self.heard(start, end), start, seconds)

    def open_stream(self, source_rate: int = STT_SAMPLE_RATE) -> LabelledSTTStream:
        """Words as the utterance is spoken: it incrementally decodes, as far as the adapter can tell."""
        return LabelledSTTStream(self)

    def _transcript(self, words: list[LabelledWord], start: float, seconds: float) -> Transcript:
        return Transcript(
            text=" ".join(w for _, _, w in words),
            words=tuple(Word(w, max(0.0, a - start), min(seconds, b - start)) for a, b, w in words),
            language="en",
            audio_seconds=seconds,
        )


class LabelledSTTStream:
    """``STTStream`` of ``LabelledSTTEngine``: the first piece (the pre-roll, fed at the VAD start) ends ``now()``,
    the rest follow it back to back; the hypothesis is the labelled words already said in the audio fed (ended by
    its end), the final transcript the words whose middle lies in it."""

    def __init__(self, engine: LabelledSTTEngine):
        self._engine = engine
        self._start: float | None = None
        self._seconds = 0.0
        self._last: str | None = None

    def feed(self, audio: np.ndarray) -> Transcript | None:
        self._seconds += len(audio) / STT_SAMPLE_RATE
        if self._start is None:  # the first piece (the pre-roll at the VAD start) ends now
            self._start = self._engine._now() - self._seconds
        end = self._start + self._seconds  # the audio's own time: a late feed (a slow STT) does not hear ahead
        words = [w for w in self._engine.heard(self._start, end) if w[1] <= end]
        text = " ".join(w for _, _, w in words)
        if text == self._last:
            return None
        self._last = text
        return self._engine._transcript(words, self._start, self._seconds)

    def finish(self) -> Transcript:
        start = self._start if self._start is not None else self._engine._now()
        end = start + self._seconds
        self._engine.calls.append((start, end))
        return self._engine._transcript(self._engine.heard(start, end), start, self._seconds)

    def close(self) -> None:
        pass


class SlowSTTService(EngineSTTService):
    """``EngineSTTService`` whose final transcripts come ``latency_s`` after their segment ended, on the loop's clock:
    a slow STT on the virtual clock (where the engine's compute takes no time). Segments still queue one after the
    other, as they do behind a busy engine."""

    def __init__(self, engine, *, latency_s: float, **kwargs):
        super().__init__(engine, **kwargs)
        self.latency_s = latency_s

    async def run_stt(self, audio: bytes):
        await asyncio.sleep(self.latency_s)
        async for frame in super().run_stt(audio):
            yield frame


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
