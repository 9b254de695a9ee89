"""``EngineSTTService``: the one pipecat adapter for every Duplex STT engine (Parakeet, pocketsphinx, ...).

It builds on pipecat's ``SegmentedSTTService``, which keeps ~1 s of audio before the user speaks, grows the buffer
between ``VADUserStartedSpeakingFrame`` and ``VADUserStoppedSpeakingFrame`` (broadcast by the user aggregator, so they
usually reach us travelling upstream), pads the segment with ``trailing_silence_secs`` of silence and queues it for
``run_stt`` on a background task. This class only translates:

* input audio at any rate (telephony 8 kHz, browsers 48 kHz) and channel count is buffered at the service rate and
  resampled to the engines' 16 kHz per segment; frames whose rate differs from the pipeline's are converted on
  the way in with one stream resampler, so their seams do not click;
* ``engine.transcribe`` runs in a worker thread (``asyncio.to_thread``), never on the event loop; the result leaves
  as a ``TranscriptionFrame`` (user_id, timestamp, language, ``result`` = the engine's ``Transcript``), with TTFB
  (VAD stop -> transcript, from pipecat's STTService) and processing-time metrics;
* optional interim transcripts: while the user speaks, about every ``interim_interval_s`` of new speech the growing
  utterance is re-transcribed on another worker thread and pushed as an ``InterimTranscriptionFrame``, so turn and
  interruption policy can act on words rather than VAD alone. A pass is skipped while the previous one still
  runs, results that arrive after the VAD stop are dropped (the final transcript supersedes them), and passes stop
  once the utterance exceeds ``interim_max_s`` (each pass re-reads the whole utterance);
* errors (bad audio, engine failures) become non-fatal ``ErrorFrame``s naming the engine; the service stays usable;
* after each segment, words or not, error or not, a ``SegmentTranscribedFrame`` follows its transcript downstream, in
  order with it: whoever must wait for the STT's verdict on a stretch of speech (false-interruption recovery) knows
  when it has it, however late the transcript travels behind queued frames.

Engines serialise their own calls, so a final pass waits for at most one running interim pass.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
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
from processors.stt_engine import STTEngine, STTError, STTInputError, Transcript, transcribe_long


@dataclass
class SegmentTranscribedFrame(DataFrame):
    """The STT has finished one VAD-bounded segment: pushed after its ``TranscriptionFrame`` (if it heard words), in
    the same ordered stream, so a processor that sees this has seen the segment's transcript."""

    words: int = 0


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


class EngineSTTService(SegmentedSTTService):
    """Any ``STTEngine`` as a pipecat segmented STT service (see module docstring)."""

    def __init__(
        self,
        engine: STTEngine,
        *,
        interim_interval_s: float | None = None,
        interim_max_s: float = 15.0,
        sample_rate: int | None = None,
        trailing_silence_secs: float = 0.5,
        ttfs_p99_latency: float | None = None,
        max_segment_s: float = STT_MAX_SEGMENT_SECONDS,
        **kwargs: Any,
    ):
        """``interim_interval_s``: re-transcribe the growing utterance after about this much new speech (None or
        <= 0: off). ``sample_rate``: the rate audio is buffered at (default: the pipeline's input rate).
        ``ttfs_p99_latency``: speech end -> final transcript P99 that turn-stop strategies wait for (seconds;
        default: the engine's ``ttfs_p99_s``, else pipecat's 1.0).
        ``max_segment_s``: longer utterances are transcribed in pieces of at most this length."""
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
        self._utterance = 0  # bumped at every VAD start and stop: interim results of an older value are stale
        self._interim_task: asyncio.Task | None = None
        self._speech_bytes_since_interim = 0
        self._input_resampler: StreamResampler | None = None
        self._odd_frame_reported = False
        self.interim_passes = 0  # passes started / skipped because one was running (diagnostics, tests)
        self.interim_skipped = 0

    @property
    def engine(self) -> STTEngine:
        return self._engine

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

    # --- lifecycle -------------------------------------------------------------------------------------
    async def stop(self, frame: EndFrame):
        await self._cancel_interim()
        await super().stop(frame)  # transcribes the queued segments first

    async def cancel(self, frame: CancelFrame):
        await self._cancel_interim()
        await super().cancel(frame)

    async def cleanup(self):
        # A pipeline cancelled while it starts (a client gone right after connecting) cleans the service up without
        # calling cancel(): stop its tasks here, or the segment task stays pending with the session's state.
        await self._cancel_interim()
        await self._cancel_segment_task()
        await super().cleanup()

    async def _cancel_interim(self) -> None:
        if self._interim_task is not None and not self._interim_task.done():
            await self.cancel_task(self._interim_task)  # the worker thread finishes; its result is dropped
        self._interim_task = None

    # --- frames in ----------------------------------------------------------------------------------------
    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._utterance += 1
            self._speech_bytes_since_interim = 0
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._utterance += 1  # an interim pass still running now belongs to a finished utterance
        await super().process_frame(frame, direction)

    async def process_audio_frame(self, frame: InputAudioRawFrame, direction: FrameDirection):
        if self._muted:
            return
        frame = self._at_service_rate(frame)
        if frame is None:
            return
        await super().process_audio_frame(frame, direction)
        if self._interim_interval_s is not None and self._user_speaking:
            self._speech_bytes_since_interim += len(frame.audio)
            if self._speech_bytes_since_interim >= int(self._interim_interval_s * self.sample_rate) * 2:
                self._maybe_start_interim()

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

    # --- interim passes -------------------------------------------------------------------------------------
    def _maybe_start_interim(self) -> None:
        if self._interim_task is not None and not self._interim_task.done():
            self.interim_skipped += 1
            return
        if len(self._audio_buffer) > self._interim_max_s * self.sample_rate * 2:
            return
        self._speech_bytes_since_interim = 0
        self.interim_passes += 1
        self._interim_task = self.create_task(
            self._interim_pass(self._utterance, bytes(self._audio_buffer)), name="stt_interim"
        )

    async def _interim_pass(self, utterance: int, pcm: bytes) -> None:
        try:
            transcript = await asyncio.to_thread(self._transcribe_pcm, pcm)
        except Exception as e:  # the final pass reports errors; an interim failure is only logged
            logger.debug(f"{self}: interim transcription failed: {e}")
            return
        if utterance != self._utterance or not self._user_speaking or transcript.is_empty:
            return
        await self.push_frame(
            InterimTranscriptionFrame(
                text=transcript.text,
                user_id=self._user_id,
                timestamp=time_now_iso8601(),
                language=frame_language(transcript.language),
                result=transcript,
            )
        )

    # --- final pass ----------------------------------------------------------------------------------------
    def _transcribe_pcm(self, pcm: bytes) -> Transcript:
        """Worker thread: PCM16 at the service rate -> float32 16 kHz -> engine (split if very long)."""
        audio = pcm16_to_float(pcm)
        if self.sample_rate != STT_SAMPLE_RATE:
            audio = resample(audio, self.sample_rate, STT_SAMPLE_RATE)
        return transcribe_long(self._engine, audio, max_seconds=self._max_segment_s)

    @traced_stt
    async def _handle_transcription(self, transcript: str, is_final: bool, language: Language | None = None):
        """Tracing hook (pipecat's OpenTelemetry span for the segment)."""

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        """Transcribe one VAD-bounded segment (raw PCM16 mono at ``self.sample_rate``)."""
        name = getattr(self._engine, "name", type(self._engine).__name__)
        await self.start_processing_metrics()
        try:
            transcript = await asyncio.to_thread(self._transcribe_pcm, audio)
        except STTInputError as e:
            await self.stop_processing_metrics()
            yield ErrorFrame(error=f"{name} STT: unusable audio: {e}", exception=e, category=ErrorCategory.APPLICATION)
            yield SegmentTranscribedFrame()
            return
        except Exception as e:
            await self.stop_processing_metrics()
            yield ErrorFrame(error=f"{name} STT failed: {e}", exception=e, category=ErrorCategory.UNKNOWN)
            yield SegmentTranscribedFrame()
            return
        await self.stop_processing_metrics()
        if transcript.is_empty:
            logger.debug(f"{self}: no words in {transcript.audio_seconds:.2f} s segment")
            yield SegmentTranscribedFrame()
            return
        language = frame_language(transcript.language)
        await self._handle_transcription(transcript.text, True, language)
        logger.debug(
            f"{self}: [{transcript.text}] ({transcript.audio_seconds:.2f} s audio, "
            f"{transcript.compute_seconds:.2f} s compute)"
        )
        yield TranscriptionFrame(
            text=transcript.text,
            user_id=self._user_id,
            timestamp=time_now_iso8601(),
            language=language,
            result=transcript,
        )
        yield SegmentTranscribedFrame(words=len(transcript.text.split()))
