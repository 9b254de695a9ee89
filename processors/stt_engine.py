"""What every speech-to-text engine offers, so one pipecat adapter (``processors/segmented_stt.py``) serves them all.

An engine is plain Python (no pipecat): ``transcribe`` takes one whole utterance as float32 mono samples at
``STT_SAMPLE_RATE`` (16 kHz) and returns a :class:`Transcript`. It blocks; callers on an event loop run it in a
worker thread. Each engine's docstring states whether calls from several threads at once are safe (engines
serialise them with a lock where the model is not re-entrant).

Words while the user speaks: an engine that decodes incrementally also offers ``open_stream()`` (the
:class:`StreamingSTTEngine` protocol): an :class:`STTStream` takes the utterance piece by piece as it is spoken,
gives its hypothesis so far after each piece, and the final transcript at the end at the cost of only the last
piece. Any other engine can re-transcribe the growing utterance (:class:`RetranscribingStream`): words early too,
at the price of a whole pass each time, and a final pass at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from processors.audio import STT_MAX_SEGMENT_SECONDS, STT_SAMPLE_RATE, AudioError


class STTError(Exception):
    """A transcription failure with a message fit for the user."""


class STTUnavailableError(STTError):
    """The engine could not answer: a remote replica died or did not answer in time (after retries on live ones).
    The utterance is lost; the session goes on and the next utterance is tried again."""


class STTInputError(STTError, AudioError):
    """Audio the engine cannot transcribe: wrong dtype, shape or rate, NaN/inf samples, too long.

    Also an ``AudioError`` (a ``ValueError``), like every other bad-audio error in Duplex.
    """


class Word(NamedTuple):
    """One recognised word and where it lies in the utterance (seconds from the start of the audio).
    A named tuple, so ``for word, start_s, end_s in transcript.words`` works."""

    word: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Transcript:
    """One utterance's result.

    ``words`` is empty when the engine gives no word timings (or the text is empty); it is never made up.
    ``audio_seconds`` is the length of the audio given (before any padding the engine does itself);
    ``compute_seconds`` the wall time the engine spent, so ``rtf`` = compute / audio.
    """

    text: str
    words: tuple[Word, ...] = field(default_factory=tuple)
    language: str | None = None
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0

    @property
    def rtf(self) -> float:
        """Real-time factor (compute seconds per audio second); 0 for empty audio."""
        return self.compute_seconds / self.audio_seconds if self.audio_seconds > 0 else 0.0

    @property
    def is_empty(self) -> bool:
        return not self.text.strip()


@runtime_checkable
class STTEngine(Protocol):
    """The engine interface (see module docstring)."""

    name: str
    language: str | None  # what it recognises ("en"), None if it detects the language itself
    # Optional: ``ttfs_p99_s`` (float), P99 seconds from the end of speech to the final transcript in a pipeline
    # (VAD stop_secs + one pass + a queued interim pass); EngineSTTService hands it to pipecat's turn-stop strategies.
    # Optional: ``holds_gil`` (bool), True when ``transcribe`` blocks other Python threads while it runs, so the
    # adapter skips re-transcribing passes that would stall the event loop (an incremental stream is cheap enough).
    # Optional: ``open_stream()`` (see ``StreamingSTTEngine``) when it decodes incrementally.

    def transcribe(self, audio: np.ndarray, sample_rate: int = STT_SAMPLE_RATE) -> Transcript:
        """Transcribe one utterance; raises STTInputError for unusable audio, STTError when the model fails."""
        ...


class STTStream(Protocol):
    """One utterance decoded as it is spoken (from an engine's ``open_stream``). Calls come from one thread at a
    time (the adapter's worker); the stream holds whatever it needs of the engine until ``finish`` or ``close``."""

    def feed(self, audio: np.ndarray) -> Transcript | None:
        """Add the next piece (float32 mono 16 kHz); the hypothesis so far, or None when it has not changed."""
        ...

    def finish(self) -> Transcript:
        """The final transcript of everything fed (the stream is closed: no more calls)."""
        ...

    def close(self) -> None:
        """Drop the utterance unfinished (idempotent; a finished stream is already closed)."""
        ...


@runtime_checkable
class StreamingSTTEngine(STTEngine, Protocol):
    """An engine that decodes incrementally: a hypothesis per piece almost for free, the final one at the end.
    ``source_rate``: the rate the audio was captured at before it was resampled to 16 kHz (8000 for a telephone
    call: an engine may decode narrowband audio differently)."""

    def open_stream(self, source_rate: int = STT_SAMPLE_RATE) -> STTStream: ...


class RetranscribingStream:
    """``STTStream`` over any engine: keeps the utterance and transcribes all of it again (``transcribe_long``) when
    ``interval_s`` of new audio has come since the last pass (None: never before the end) and the utterance is at
    most ``max_s`` long; ``finish`` transcribes it whole with ``trailing_pad_s`` of silence (models drop a last word
    that ends abruptly). Each pass costs what one final pass costs: words early, not a cheaper final."""

    def __init__(
        self,
        engine: STTEngine,
        *,
        interval_s: float | None = None,
        max_s: float = 15.0,
        trailing_pad_s: float = 0.5,
        max_segment_s: float = STT_MAX_SEGMENT_SECONDS,
    ):
        self.engine = engine
        self.interval_s = interval_s
        self.max_s = max_s
        self.trailing_pad_s = trailing_pad_s
        self.max_segment_s = max_segment_s
        self._pieces: list[np.ndarray] = []
        self._samples = 0
        self._since_pass = 0
        self._last_text: str | None = None
        self.passes = 0

    def feed(self, audio: np.ndarray) -> Transcript | None:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        self._pieces.append(audio)
        self._samples += audio.size
        self._since_pass += audio.size
        if self.interval_s is None or self._since_pass < int(self.interval_s * STT_SAMPLE_RATE):
            return None
        if self._samples > self.max_s * STT_SAMPLE_RATE:
            return None
        self._since_pass = 0
        self.passes += 1
        transcript = transcribe_long(self.engine, self._audio(), max_seconds=self.max_segment_s)
        if transcript.text == self._last_text:
            return None
        self._last_text = transcript.text
        return transcript

    def finish(self) -> Transcript:
        pad = np.zeros(int(self.trailing_pad_s * STT_SAMPLE_RATE), np.float32)
        audio = np.concatenate([self._audio(), pad])
        self._pieces = []
        return transcribe_long(self.engine, audio, max_seconds=self.max_segment_s)

    def close(self) -> None:
        self._pieces = []

    def _audio(self) -> np.ndarray:
        return np.concatenate(self._pieces) if self._pieces else np.zeros(0, np.float32)


def validate_audio(
    audio: object,
    sample_rate: int = STT_SAMPLE_RATE,
    *,
    max_seconds: float = STT_MAX_SEGMENT_SECONDS,
) -> np.ndarray:
    """The utterance as a 1-D float32 array at 16 kHz, or STTInputError saying what is wrong.

    Deliberately strict: engines do not resample or convert (the adapter does), so a caller passing
    int16 PCM, stereo, 8 kHz audio or NaNs learns at once instead of getting a silently wrong transcript.
    """
    if not isinstance(audio, np.ndarray):
        raise STTInputError(f"audio must be a numpy array, got {type(audio).__name__}")
    if audio.dtype != np.float32:
        raise STTInputError(
            f"audio must be float32 in [-1, 1], got dtype {audio.dtype} "
            "(convert int16 PCM with processors.audio.pcm16_to_float or to_mono_float32)"
        )
    if audio.ndim != 1:
        raise STTInputError(f"audio must be mono 1-D samples, got shape {audio.shape} (use to_mono_float32)")
    if not isinstance(sample_rate, (int, np.integer)) or int(sample_rate) != STT_SAMPLE_RATE:
        raise STTInputError(
            f"audio must be {STT_SAMPLE_RATE} Hz, got {sample_rate!r} Hz "
            "(resample with processors.audio.resample first)"
        )
    if audio.size and not np.all(np.isfinite(audio)):
        raise STTInputError("audio contains NaN or infinite samples")
    seconds = audio.size / STT_SAMPLE_RATE
    if seconds > max_seconds:
        raise STTInputError(
            f"audio is {seconds:.1f} s long; engines take one VAD-bounded utterance of at most {max_seconds:g} s"
        )
    return np.ascontiguousarray(audio)


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds`` — compute time for ``Transcript.compute_seconds``."""

    def __enter__(self) -> Stopwatch:
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0


def transcribe_long(
    engine: STTEngine,
    audio: np.ndarray,
    *,
    max_seconds: float = STT_MAX_SEGMENT_SECONDS,
) -> Transcript:
    """``engine.transcribe`` for audio of any length: pieces of at most ``max_seconds`` (cut where the signal is
    quietest in the piece's last 10 %), joined into one Transcript with word times on the whole audio's clock.

    A monologue longer than one engine call should take still yields one transcript instead of an error.
    """
    audio = validate_audio(audio, max_seconds=float("inf"))
    limit = int(max_seconds * STT_SAMPLE_RATE)
    if audio.size <= limit:
        return engine.transcribe(audio, STT_SAMPLE_RATE)
    texts, words, compute, language = [], [], 0.0, None
    start = 0
    while start < audio.size:
        end = min(start + limit, audio.size)
        if end < audio.size:  # cut at the quietest 20 ms window near the end of the piece
            win = int(0.02 * STT_SAMPLE_RATE)
            lo = start + int(0.9 * limit)
            tail = audio[lo:end]
            n = tail.size // win
            if n > 1:
                energy = (tail[: n * win].reshape(n, win) ** 2).mean(axis=1)
                end = lo + int(np.argmin(energy)) * win + win // 2
        part = engine.transcribe(audio[start:end], STT_SAMPLE_RATE)
        offset = start / STT_SAMPLE_RATE
        if part.text.strip():
            texts.append(part.text.strip())
        words.extend(Word(w.word, w.start_s + offset, w.end_s + offset) for w in part.words)
        compute += part.compute_seconds
        language = language or part.language
        start = end
    return Transcript(
        text=" ".join(texts),
        words=tuple(words),
        language=language,
        audio_seconds=audio.size / STT_SAMPLE_RATE,
        compute_seconds=compute,
    )
