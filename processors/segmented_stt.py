"""``EngineSTTService``: the one pipecat adapter for every Duplex STT engine (Parakeet, pocketsphinx, ...).

It builds on pipecat's ``SegmentedSTTService``, which keeps ~1 s of audio before the user speaks, grows the buffer
between ``VADUserStartedSpeakingFrame`` and ``VADUserStoppedSpeakingFrame`` (broadcast by the user aggregator, so they
usually reach us travelling upstream), pads the segment with ``trailing_silence_secs`` of silence and queues it for
``run_stt`` on a background task. This class only translates:

* input audio at any rate (telephony 8 kHz, browsers 48 kHz) and channel count is buffered at the service rate and
  resampled to the engines' 16 kHz; frames whose rate differs from the pipeline's are converted on the way in with
  one stream resampler, so their seams do not click;
* words while the user speaks: from the VAD start (with the pre-roll) the utterance is handed to an ``STTStream``
  piece by piece, in one worker thread of the service's own. An engine that decodes incrementally (``open_stream``:
  pocketsphinx) gets every ``stream_piece_s`` of audio and costs about what that piece costs, so its final
  transcript is ready when the VAD stops, after decoding only the last piece; any other engine gets a
  ``RetranscribingStream`` when ``interim_interval_s`` is set (the growing utterance transcribed again every that
  much new speech, never more than one pass at a time, none past ``interim_max_s``) and a final pass at the VAD stop;
  without either, the final pass over the segment is all. An engine that holds the GIL while it decodes
  (``holds_gil``: pocketsphinx) is not fed while the bot speaks: each piece would stall the event loop, and with it
  the bot's audio and a barge-in's interruption; what gathered is fed when the bot stops, or decoded at the VAD stop.
  While the bot's audio is paused (``bot_audio_paused``: a barge-in being decided) it is fed again: nothing the user
  hears waits on the loop then, and the words are what the barge-in is decided on. Such an engine gets a backlog
  (the pre-roll, what gathered meanwhile) one piece per call, so the loop never waits for more than one piece;
* hypotheses that change become ``InterimTranscriptionFrame``s (unless ``interim_interval_s`` is None) while the user
  still speaks; those arriving after the VAD stop are dropped (the final transcript supersedes them);
* the final transcript leaves as a ``TranscriptionFrame`` (user_id, timestamp, language, ``result`` = the engine's
  ``Transcript``, ``metadata["vad_stop_at"]`` = when the VAD stop that ended its segment came, on the loop's clock),
  with TTFB (VAD stop -> transcript, from pipecat's STTService) and processing-time metrics, followed by a
  ``SegmentTranscribedFrame`` for every segment, words or not, error or not, in order with the transcript:
  whoever must wait for the STT's verdict on a stretch of speech (end of turn, false-interruption recovery) knows
  when it has it, however late the transcript travels behind queued frames;
* errors (bad audio, engine failures) become non-fatal ``ErrorFrame``s naming the engine; the service stays usable.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    DataFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_latency import DEFAULT_TTFS_P99
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.transcriptions.language import Language
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.tracing.service_decorators import traced_stt

from processors.audio import (
    STT_MAX_SEGMENT_SECONDS,
    STT_SAMPLE_RATE,
    StreamResampler,
    float_to_pcm16,
    pcm16_to_float,
    resample,
)
from processors.stt_engine import (
    RetranscribingStream,
    StreamingSTTEngine,
    STTEngine,
    STTError,
    STTInputError,
    STTStream,
    Transcript,
    transcribe_long,
)

TRAILING_SILENCE_S = 0.5  # appended to each segment before its final pass (pipecat's default: models finish words)
STREAM_PIECE_S = 0.1  # an incremental stream gets the utterance in pieces of this much audio


@dataclass
class SegmentTranscribedFrame(DataFrame):
    """The STT has finished one VAD-bounded segment: pushed after its ``TranscriptionFrame`` (if it heard words), in
    the same ordered stream, so a processor that sees this has seen the segment's transcript. Uninterruptible, like
    the transcript: an interruption decided on the transcript (a barge-in) must not drop it, or what waits for the
    STT's verdict on the segment would wait for nothing."""

    interruptible: bool = field(default=False, init=False)
    words: int = 0
    vad_stop_at: float | None = None  # when the VAD stop that ended the segment came (the loop's clock)


def frame_language(code: str | None) -> Language | None:
    """An engine's language code ("en", "en-US") as a pipecat ``Language``; None when unknown."""
    if not code:
        return None
    for candidate in (code, code.split("-")[0].lower()):
        try:
            return Language(candidate)
        except ValueError:
            continue
    return None


@dataclass
class _Utterance:
    """One VAD-bounded utterance on its way through a stream: audio not yet fed, the stream (opened by the first
    feed), the feed in flight, whether streaming broke (the final pass then transcribes the segment instead)."""

    number: int
    pending: bytearray = field(default_factory=bytearray)
    stream: STTStream | None = None
    feeding: asyncio.Future | None = None
    failed: bool = False
    resampler: StreamResampler | None = None
    last_text: str = ""


class EngineSTTService(SegmentedSTTService):
    """Any ``STTEngine`` as a pipecat segmented STT service (see module docstring)."""

    def __init__(
        self,
        engine: STTEngine,
        *,
        interim_interval_s: float | None = None,
        interim_max_s: float = 15.0,
        sample_rate: int | None = None,
        trailing_silence_secs: float = TRAILING_SILENCE_S,
        ttfs_p99_latency: float | None = None,
        max_segment_s: float = STT_MAX_SEGMENT_SECONDS,
        stream_piece_s: float = STREAM_PIECE_S,
        **kwargs: Any,
    ):
        """``interim_interval_s``: interim transcripts while the user speaks (None or <= 0: none); for an engine that
        does not decode incrementally, also how much new speech between re-transcribing passes.
        ``sample_rate``: the rate audio is buffered at (default: the pipeline's input rate).
        ``ttfs_p99_latency``: speech end -> final transcript P99 that turn-stop strategies wait for (seconds;
        default: the engine's ``ttfs_p99_s``, else pipecat's 1.0).
        ``max_segment_s``: longer utterances are transcribed in pieces of at most this length.
        ``stream_piece_s``: how much audio an incremental stream gets at a time."""
        if interim_interval_s is not None and interim_interval_s <= 0:
            interim_interval_s = None
        super().__init__(
            sample_rate=sample_rate,
            trailing_silence_secs=trailing_silence_secs,
            ttfs_p99_latency=(
                ttfs_p99_latency if ttfs_p99_latency is not None else getattr(engine, "ttfs_p99_s", DEFAULT_TTFS_P99)
            ),
            settings=STTSettings(
                model=getattr(engine, "model_name", None) or getattr(engine, "name", type(engine).__name__),
                language=getattr(engine, "language", None),
            ),
            **kwargs,
        )
        self._engine = engine
        self._interim_interval_s = interim_interval_s
        self._interim_max_s = float(interim_max_s)
        self._max_segment_s = float(max_segment_s)
        self._incremental = isinstance(engine, StreamingSTTEngine)
        self._piece_s = stream_piece_s if self._incremental else (interim_interval_s or 0.0)
        self._streams: Callable[[], STTStream] | None = self._stream_factory()
        self._utterance_count = 0
        self._current: _Utterance | None = None  # the utterance the user is speaking
        self._closing: deque[tuple[_Utterance | None, float]] = deque()  # per queued segment, in order
        self._worker: ThreadPoolExecutor | None = None
        self._input_resampler: StreamResampler | None = None
        self._odd_frame_reported = False
        self.interim_passes = 0  # hypotheses computed / pieces held back because one was computing (diagnostics)
        self.interim_skipped = 0
        # an engine that holds the GIL while it decodes stalls the event loop for each piece (pocketsphinx: up to
        # 0.1-0.2 s on a loaded CPU), which delays a barge-in's interruption: while the bot speaks its stream waits
        self._hold_while_bot_speaks = bool(getattr(engine, "holds_gil", False))
        self._bot_speaking = False
        self._bot_paused = False
        self.pieces_held_for_bot = 0  # pieces not fed because the bot was speaking (diagnostics)

    def _stream_factory(self) -> Callable[[], STTStream] | None:
        if self._incremental:
            return lambda: self._engine.open_stream(source_rate=self.sample_rate)  # type: ignore[attr-defined]
        if self._interim_interval_s is not None:
            return lambda: RetranscribingStream(
                self._engine,
                interval_s=self._interim_interval_s,
                max_s=self._interim_max_s,
                trailing_pad_s=self._trailing_silence_secs,
                max_segment_s=self._max_segment_s,
            )
        return None

    @property
    def engine(self) -> STTEngine:
        return self._engine

    @property
    def streams(self) -> bool:
        """Whether utterances go through a stream as they are spoken (words early)."""
        return self._streams is not None

    @property
    def wants_wav_segments(self) -> bool:
        return False  # raw 16-bit PCM at self.sample_rate

    def can_generate_metrics(self) -> bool:
        return True

    def _classify_error(self, exception: Exception) -> ErrorCategory | None:
        # One bad segment says nothing about the next: never let pipecat mark the service unusable for it.
        if isinstance(exception, STTInputError):
            return ErrorCategory.APPLICATION
        if isinstance(exception, STTError):
            return ErrorCategory.UNKNOWN
        return None

    # --- the worker thread -----------------------------------------------------------------------------------
    async def _in_worker(self, fn, *args):
        """``fn(*args)`` in this service's worker thread: stream calls of one utterance run in order, one at a time."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt")
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    # --- lifecycle -------------------------------------------------------------------------------------
    async def stop(self, frame: EndFrame):
        await super().stop(frame)  # transcribes the queued segments first
        await self._close_streams()

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        await self._close_streams()

    async def cleanup(self):
        # A pipeline cancelled while it starts (a client gone right after connecting) cleans the service up without
        # calling cancel(): stop its streams and tasks here, or the segment task stays pending with the session's state.
        await self._close_streams()
        await self._cancel_segment_task()
        await super().cleanup()

    async def _close_streams(self) -> None:
        """Close every stream still open (in the worker, after whatever it is doing) and stop the worker."""
        open_ones = [u for u in [self._current, *(u for u, _ in self._closing)] if u is not None]
        self._current = None
        self._closing.clear()
        for u in open_ones:
            if u.stream is not None:
                stream, u.stream = u.stream, None
                try:
                    await self._in_worker(stream.close)
                except Exception as e:
                    logger.debug(f"{self}: closing a stream failed: {e}")
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=False)

    def bot_audio_paused(self, paused: bool) -> None:
        """The bot's audio is paused while it speaks (a barge-in being decided), or plays again. Called from the
        event loop by whoever pauses it (``pipelines.playback.PlaybackHold``): while paused, an engine that holds
        the GIL is fed, so the words that decide the barge-in come while the user speaks, not only at the VAD stop."""
        self._bot_paused = paused
        if paused and self._current is not None and self._user_speaking:
            self._maybe_feed(self._current)  # what gathered since the bot began to speak over the user

    # --- frames in ----------------------------------------------------------------------------------------
    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
        await super().process_frame(frame, direction)

    async def _handle_user_started_speaking(self, frame: VADUserStartedSpeakingFrame):
        await super()._handle_user_started_speaking(frame)
        self._utterance_count += 1
        stale, self._current = self._current, None
        if stale is not None and stale.stream is not None:  # a start without a stop: that utterance is over
            await self._in_worker(stale.stream.close)
        if self._streams is not None and not self._muted:
            # the pre-roll already buffered holds the speech onset the VAD needed time to confirm
            self._current = _Utterance(self._utterance_count, pending=bytearray(self._audio_buffer))
            self._maybe_feed(self._current)

    async def _handle_user_stopped_speaking(self, frame: VADUserStoppedSpeakingFrame):
        utterance, self._current = self._current, None
        if self.is_usable:  # pipecat queues the segment (and we pair it with its stream and time) only then
            self._closing.append((utterance, asyncio.get_running_loop().time()))
        elif utterance is not None and utterance.stream is not None:
            await self._in_worker(utterance.stream.close)
        await super()._handle_user_stopped_speaking(frame)

    async def process_audio_frame(self, frame: InputAudioRawFrame, direction: FrameDirection):
        if self._muted:
            return
        frame = self._at_service_rate(frame)
        if frame is None:
            return
        await super().process_audio_frame(frame, direction)
        if self._current is not None and self._user_speaking:
            self._current.pending += frame.audio
            self._maybe_feed(self._current)

    def _at_service_rate(self, frame: InputAudioRawFrame) -> InputAudioRawFrame | None:
        """The frame as mono 16-bit PCM at ``self.sample_rate`` (converted copy when needed; None = drop it)."""
        channels = max(1, int(frame.num_channels or 1))
        if len(frame.audio) % (2 * channels):
            if not self._odd_frame_reported:
                self._odd_frame_reported = True
                logger.warning(
                    f"{self}: dropping audio frames whose size is not whole 16-bit samples "
                    f"({len(frame.audio)} bytes, {channels} channel(s))"
                )
            return None
        if frame.sample_rate == self.sample_rate and channels == 1:
            return frame
        samples = pcm16_to_float(frame.audio)
        if channels > 1:
            samples = samples.reshape(-1, channels).mean(axis=1)
        if frame.sample_rate != self.sample_rate:
            if self._input_resampler is None or self._input_resampler.src_rate != frame.sample_rate:
                logger.info(f"{self}: input frames at {frame.sample_rate} Hz, resampling to {self.sample_rate} Hz")
                self._input_resampler = StreamResampler(frame.sample_rate, self.sample_rate)
            samples = self._input_resampler.process(samples)
        out = copy.copy(frame)
        out.audio = float_to_pcm16(samples)
        out.sample_rate, out.num_channels = self.sample_rate, 1
        out.num_frames = len(out.audio) // 2
        return out

    # --- the stream -------------------------------------------------------------------------------------------
    def _maybe_feed(self, u: _Utterance) -> None:
        """Hand the pending audio to the stream once a piece has gathered and the previous piece is done."""
        piece_bytes = int(self._piece_s * self.sample_rate) * 2
        if u.failed or len(u.pending) < piece_bytes:
            return
        if self._bot_speaking and self._hold_while_bot_speaks and not self._bot_paused:
            self.pieces_held_for_bot += 1  # fed once the bot stops or pauses, or decoded at the VAD stop
            return
        if u.feeding is not None and not u.feeding.done():
            self.interim_skipped += 1
            return
        if self._hold_while_bot_speaks:
            # a backlog (the pre-roll at the VAD start, what gathered while the bot spoke) goes one piece per call:
            # the worker lets go of the GIL between calls, so the loop stalls for one piece's decode, not the lot
            pcm, u.pending = bytes(u.pending[:piece_bytes]), u.pending[piece_bytes:]
        else:
            pcm, u.pending = bytes(u.pending), bytearray()
        u.feeding = self.create_task(self._feed(u, pcm), name="stt_stream_feed")

    def _at_model_rate(self, u: _Utterance, pcm: bytes) -> np.ndarray:
        audio = pcm16_to_float(pcm)
        if self.sample_rate == STT_SAMPLE_RATE:
            return audio
        if u.resampler is None:
            u.resampler = StreamResampler(self.sample_rate, STT_SAMPLE_RATE)
        return u.resampler.process(audio)

    def _feed_in_worker(self, u: _Utterance, audio: np.ndarray) -> Transcript | None:
        if u.stream is None:
            assert self._streams is not None
            u.stream = self._streams()
        return u.stream.feed(audio)

    async def _feed(self, u: _Utterance, pcm: bytes) -> None:
        try:
            hypothesis = await self._in_worker(self._feed_in_worker, u, self._at_model_rate(u, pcm))
        except Exception as e:  # the final pass will transcribe the whole segment instead
            logger.debug(f"{self}: streaming failed ({type(e).__name__}: {e}); the segment will be transcribed whole")
            u.failed = True
            return
        current = u is self._current and self._user_speaking  # else the VAD stopped: the final supersedes it
        if hypothesis is not None:
            self.interim_passes += 1
            if current and self._interim_interval_s is not None and not hypothesis.is_empty:
                if hypothesis.text != u.last_text:
                    u.last_text = hypothesis.text
                    await self.push_frame(
                        InterimTranscriptionFrame(
                            text=hypothesis.text,
                            user_id=self._user_id,
                            timestamp=time_now_iso8601(),
                            language=frame_language(hypothesis.language),
                            result=hypothesis,
                        )
                    )
        if current:  # what gathered while this piece was decoded (this task is u.feeding: it ends here)
            u.feeding = None
            self._maybe_feed(u)

    def _finish_in_worker(self, u: _Utterance, audio: np.ndarray) -> Transcript:
        if u.stream is None:
            assert self._streams is not None
            u.stream = self._streams()
        stream = u.stream
        try:
            if audio.size:
                stream.feed(audio)
            transcript = stream.finish()
        except BaseException:
            stream.close()
            raise
        finally:
            u.stream = None
        return transcript

    # --- final pass ----------------------------------------------------------------------------------------
    def _transcribe_pcm(self, pcm: bytes) -> Transcript:
        """Worker thread: PCM16 at the service rate -> float32 16 kHz -> engine (split if very long)."""
        audio = pcm16_to_float(pcm)
        if self.sample_rate != STT_SAMPLE_RATE:
            audio = resample(audio, self.sample_rate, STT_SAMPLE_RATE)
        return transcribe_long(self._engine, audio, max_seconds=self._max_segment_s)

    async def _final(self, u: _Utterance | None, pcm: bytes) -> Transcript:
        """The segment's final transcript: the stream finished (only what it had not been fed is decoded now), or
        the whole segment in one pass."""
        while u is not None and u.feeding is not None and not u.feeding.done():
            await asyncio.shield(u.feeding)  # a feed may chain the next before it ends
        if u is not None and not u.failed:
            rest, u.pending = bytes(u.pending), bytearray()
            try:
                return await self._in_worker(self._finish_in_worker, u, self._at_model_rate(u, rest))
            except STTInputError:
                raise
            except Exception as e:
                logger.debug(f"{self}: finishing the stream failed ({type(e).__name__}: {e}); transcribing whole")
        return await self._in_worker(self._transcribe_pcm, pcm)

    @traced_stt
    async def _handle_transcription(self, transcript: str, is_final: bool, language: Language | None = None):
        """Tracing hook (pipecat's OpenTelemetry span for the segment)."""

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        """Transcribe one VAD-bounded segment (raw PCM16 mono at ``self.sample_rate``)."""
        name = getattr(self._engine, "name", type(self._engine).__name__)
        utterance, vad_stop_at = self._closing.popleft() if self._closing else (None, asyncio.get_running_loop().time())
        await self.start_processing_metrics()
        try:
            transcript = await self._final(utterance, audio)
        except STTInputError as e:
            await self.stop_processing_metrics()
            yield ErrorFrame(error=f"{name} STT: unusable audio: {e}", exception=e, category=ErrorCategory.APPLICATION)
            yield SegmentTranscribedFrame(vad_stop_at=vad_stop_at)
            return
        except Exception as e:
            await self.stop_processing_metrics()
            yield ErrorFrame(error=f"{name} STT failed: {e}", exception=e, category=ErrorCategory.UNKNOWN)
            yield SegmentTranscribedFrame(vad_stop_at=vad_stop_at)
            return
        await self.stop_processing_metrics()
        if transcript.is_empty:
            logger.debug(f"{self}: no words in {transcript.audio_seconds:.2f} s segment")
            yield SegmentTranscribedFrame(vad_stop_at=vad_stop_at)
            return
        language = frame_language(transcript.language)
        await self._handle_transcription(transcript.text, True, language)
        logger.debug(
            f"{self}: [{transcript.text}] ({transcript.audio_seconds:.2f} s audio, "
            f"{transcript.compute_seconds:.2f} s compute)"
        )
        frame = TranscriptionFrame(
            text=transcript.text,
            user_id=self._user_id,
            timestamp=time_now_iso8601(),
            language=language,
            result=transcript,
        )
        frame.metadata["vad_stop_at"] = vad_stop_at
        yield frame
        yield SegmentTranscribedFrame(vad_stop_at=vad_stop_at, words=len(transcript.text.split()))
