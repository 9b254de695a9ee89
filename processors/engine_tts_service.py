"""``EngineTTSService``: the one pipecat adapter for every Duplex TTS engine (Qwen3-TTS, espeak, ...).

It translates frames and threads, nothing else:

* ``engine.stream`` runs in a worker thread (``processors.threads.ThreadedStream``); chunks leave as
  ``TTSAudioRawFrame``s as soon as they arrive, resampled to the pipeline's output rate by ONE stream resampler
  per utterance (per-chunk resampling restarts the filter and clicks at every seam);
* on interruption, cancellation or shutdown the worker's ``threading.Event`` is set in ``finally``; engines stop
  within one step (one codec frame for Qwen3-TTS), so the thread is gone within one frame. A pipecat task
  cancellation alone would leave a ``to_thread`` worker running;
* word timestamps come from the engine when it knows where each word starts in its audio (``stream_timed``, e.g.
  espeak's word events); otherwise they are estimated from each word's share of the audio (``WordTimer``). Either
  way they are released as the audio covering them is produced, and the output transport releases each word when
  its audio plays, so an interrupted reply leaves the played words in the assistant context;
* voice and language are pipecat settings, switchable at runtime with ``TTSUpdateSettingsFrame``;
  engine errors become ``ErrorFrame``s with the engine's message. When the engine could not finish for a reason
  outside the request (``EngineUnavailableError``: a remote replica died mid-utterance), the service first says
  ``failure_notice`` through the engine (a live replica), so the caller hears why the bot stopped, and the
  conversation goes on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from typing import Any

from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame, TTSTextFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.transcriptions.language import Language

from processors.audio import StreamResampler, float_to_pcm16
from processors.threads import ThreadedStream
from processors.tts_engine import EngineUnavailableError, TimedTTSEngine, TTSEngine, TTSError, VoiceError

# pipecat Language codes -> the language names our engines use
LANGUAGE_NAMES = {
    "en": "English",
    "zh": "Chinese",
    "cmn": "Chinese",
    "ja": "Japanese",
    "ko": "Korean",
    "de": "German",
    "fr": "French",
    "ru": "Russian",
    "pt": "Portuguese",
    "es": "Spanish",
    "it": "Italian",
}


FAILURE_NOTICE = "Sorry, I could not finish that."


class WordTimer:
    """Estimates word start times from each word's share of the characters, releasing a word once the audio that
    reaches its start exists. Times are seconds of audio from the utterance start and never go backwards."""

    def __init__(self, text: str, seconds_per_char: float = 0.065):
        self.words = text.split()
        total = sum(len(w) + 1 for w in self.words) or 1
        starts, acc = [], 0
        for w in self.words:
            starts.append(acc / total)
            acc += len(w) + 1
        self._fractions = starts
        self._expected = total * seconds_per_char
        self._next = 0
        self._last = 0.0

    def advance(self, audio_seconds: float, final: bool = False) -> list[tuple[str, float]]:
        duration = audio_seconds if final else max(audio_seconds, self._expected)
        out = []
        while self._next < len(self.words):
            t = self._fractions[self._next] * duration
            if not final and t > audio_seconds:
                break
            t = max(t, self._last)
            out.append((self.words[self._next], t))
            self._last = t
            self._next += 1
        return out


class EngineTTSService(TTSService):
    """Any ``TTSEngine`` as a pipecat TTS service (see module docstring)."""

    def __init__(
        self,
        engine: TTSEngine,
        *,
        voice: Any = None,
        voice_id: str | None = None,
        voices: Mapping[str, Any] | Callable[[str], Any] | None = None,
        language: str = "English",
        generation: dict[str, Any] | None = None,
        sample_rate: int | None = None,
        failure_notice: str | None = FAILURE_NOTICE,
        **kwargs: Any,
    ):
        """``voice``: the engine's default voice object; ``voices``: id -> voice object (a mapping, or a callable
        that raises ``VoiceError``/``KeyError`` for unknown ids), used when settings name a voice id;
        ``failure_notice``: what the bot says when the engine could not finish (None: nothing)."""
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            push_text_frames=False,
            sample_rate=sample_rate,
            settings=TTSSettings(model=engine.name, voice=voice_id, language=language),
            **kwargs,
        )
        self._engine = engine
        self._default_voice = voice
        self._voices = voices
        self._generation = dict(generation or {})
        self._failure_notice = failure_notice
        self._active: set[ThreadedStream] = set()
        # Seconds of audio already produced per audio context: pipecat reuses one context for all sentences of a
        # reply and times words from the context's first audio, so each sentence's word times start from here.
        self._context_seconds: dict[str, float] = {}
        self.last_stream: ThreadedStream | None = None  # for tests and diagnostics

    @property
    def engine(self) -> TTSEngine:
        return self._engine

    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> str | None:
        code = str(language.value).split("-")[0].lower()
        return LANGUAGE_NAMES.get(code)

    def _resolve_voice(self, voice_id: Any) -> Any:
        if not voice_id:
            if self._default_voice is None:
                raise VoiceError("no voice configured")
            return self._default_voice
        if self._voices is None:
            raise VoiceError(f"unknown voice {voice_id!r}: no voice registry configured")
        try:
            if callable(self._voices):
                return self._voices(voice_id)
            return self._voices[voice_id]
        except KeyError:
            raise VoiceError(f"unknown voice {voice_id!r}") from None

    async def _update_settings(self, delta: TTSSettings) -> dict[str, Any]:
        changed = await super()._update_settings(delta)
        if "voice" in changed:
            try:
                await asyncio.to_thread(self._resolve_voice, self._settings.voice)
            except (TTSError, ValueError) as e:
                self._settings.voice = changed["voice"]  # keep the voice that works
                await self.push_error(f"{self._engine.name} TTS: cannot switch voice: {e}")
        return changed

    async def stop(self, frame):
        self._cancel_all()
        await super().stop(frame)

    async def cancel(self, frame):
        self._cancel_all()
        await super().cancel(frame)

    def _cancel_all(self) -> None:
        for stream in list(self._active):
            stream.cancel()

    async def on_audio_context_interrupted(self, context_id: str):
        self._context_seconds.pop(context_id, None)
        await super().on_audio_context_interrupted(context_id)

    async def on_audio_context_completed(self, context_id: str):
        self._context_seconds.pop(context_id, None)
        await super().on_audio_context_completed(context_id)

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        language = str(self._settings.language or "English")
        voice_id = self._settings.voice
        offset = self._context_seconds.get(context_id, 0.0)  # earlier sentences of this context
        await self.start_tts_usage_metrics(text)
        try:
            async for frame in self._utterance(text, voice_id, language, context_id, offset):
                yield frame
        except Exception as e:  # the engine's error, raised in its thread
            message = str(e) if isinstance(e, (TTSError, ValueError)) else f"{type(e).__name__}: {e}"
            logger.error(f"{self} {self._engine.name} TTS failed: {message}")
            if isinstance(e, EngineUnavailableError) and self._failure_notice:
                # a remote engine lost its replica: say so with a live one, and let the conversation go on
                try:
                    notice_offset = self._context_seconds.get(context_id, offset)
                    async for frame in self._utterance(
                        self._failure_notice, voice_id, language, context_id, notice_offset, words=False
                    ):
                        yield frame
                    # its text follows its audio (pipecat's word tracking knows only the text it asked for)
                    said = TTSTextFrame(self._failure_notice, text_type="sentence")
                    said.will_be_spoken, said.context_id, said.append_to_context = True, context_id, True
                    yield said
                except Exception as e2:
                    logger.warning(f"{self} could not say that it could not finish: {e2}")
            yield ErrorFrame(error=f"{self._engine.name} TTS: {message}")

    async def _utterance(
        self, text: str, voice_id: Any, language: str, context_id: str, offset: float, *, words: bool = True
    ) -> AsyncGenerator[Frame, None]:
        """One text through the engine: audio frames and (``words``) word timestamps as the chunks come; raises the
        engine's error."""

        # an engine that reports where its words start (TimedTTSEngine) is believed; others are estimated
        timed = isinstance(self._engine, TimedTTSEngine)

        def produce(cancel: threading.Event) -> Iterator[Any]:
            voice = self._resolve_voice(voice_id)
            if timed:
                return self._engine.stream_timed(text, voice, language, cancel, **self._generation)
            return self._engine.stream(text, voice, language, cancel, **self._generation)

        stream = ThreadedStream(produce, name=f"tts-{self._engine.name}-{context_id[:8]}")
        self.last_stream = stream
        resampler = StreamResampler(self._engine.sample_rate, self.sample_rate)
        timer = WordTimer(text)
        produced = 0  # engine samples so far

        def shifted(words: list[tuple[str, float]]) -> list[tuple[str, float]]:
            return [(w, offset + t) for w, t in words]

        self._active.add(stream)
        try:
            async with stream:
                async for item in stream:
                    chunk, released = item if timed else (item, None)
                    produced += len(chunk)
                    audio = resampler.process(chunk)
                    if len(audio):
                        yield TTSAudioRawFrame(float_to_pcm16(audio), self.sample_rate, 1, context_id=context_id)
                    if released is None:
                        released = timer.advance(produced / self._engine.sample_rate)
                    if released and words:
                        await self.add_word_timestamps(shifted(released), context_id)
            tail = resampler.flush()
            if len(tail):
                yield TTSAudioRawFrame(float_to_pcm16(tail), self.sample_rate, 1, context_id=context_id)
            released = [] if timed else timer.advance(produced / self._engine.sample_rate, final=True)
            if released and produced and words:
                await self.add_word_timestamps(shifted(released), context_id)
        finally:
            if produced:
                self._context_seconds[context_id] = offset + produced / self._engine.sample_rate
            stream.cancel()  # interruption, cancellation, error or done: the worker stops within one engine step
            self._active.discard(stream)
