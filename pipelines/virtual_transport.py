"""A virtual pipecat transport: scripted user audio in, every output frame recorded with its time.

``VirtualTransport(schedule, background=...)`` is a ``BaseTransport``. Its input feeds ``InputAudioRawFrame``s of
20 ms (silence between utterances, and after the last one until the pipeline stops; ``BackgroundTrack``s — room
tone, street, a TV — mixed under all of it) and its output "plays" bot audio at the speed of the clock (a chunk's
write returns when the chunk has played), recording:

* ``received``  — every downstream frame that reached the output, ``(time, frame)``;
* ``audio``     — every bot audio chunk written, ``AudioChunk(start, end, pcm, sample_rate)``;
* ``user_speech`` / ``user_segments`` — ground truth from the utterances' own audio (before any background is mixed
  in): each utterance's voiced span, and each voiced stretch (``voiced_segments``, or the utterance's labels);
* ``user_words`` — the words an utterance is labelled with (``UserUtterance.words``), on the clock, from the moment
  it starts playing (a labelled STT reads them);
* ``events``    — a timeline: ``user_speech_start`` / ``user_speech_end`` (the utterance's voiced span, ground truth),
  ``bot_started_speaking`` / ``bot_stopped_speaking`` (what the output pushes), ``interruption`` (an
  ``InterruptionFrame`` reaching the output, i.e. the client).

Utterances are scheduled at an absolute time or relative to an event: ``after="bot_started_speaking", offset_s=1.0``
is a barge-in one second into the bot's reply (anchors: ``start``, ``previous_end``, ``bot_started_speaking``,
``bot_stopped_speaking``; a bot anchor means the first such event after the previous utterance ended).

Clock: the transport reads and waits on a ``MediaClock`` (``now()`` seconds, ``await sleep_until(t)``). By default it
is real time on the pipeline's own clock, so recorded times and ``FramePushed.timestamp`` share one axis. A
virtual clock (conversation replay, ``agent.replay.clock``) plugs in by implementing ``MediaClock`` and handing the
same clock to ``PipelineWorker(clock=...)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from processors.audio import STT_SAMPLE_RATE, TRANSPORT_FRAME_MS, float_to_pcm16, pcm16_to_float, resample

Anchor = Literal["start", "previous_end", "bot_started_speaking", "bot_stopped_speaking"]


class MediaClock(Protocol):
    """Where the transport reads time and waits (seconds on the pipeline clock's axis)."""

    def now(self) -> float: ...

    async def sleep_until(self, t: float) -> None: ...


class PipelineClock:
    """Real time, read from a processor's pipeline clock (pipecat's ``SystemClock`` unless the worker has another)."""

    def __init__(self, processor: FrameProcessor):
        self._processor = processor

    def now(self) -> float:
        return self._processor.get_clock().get_time() / 1e9

    async def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


def voiced_segments(
    audio: np.ndarray,
    sample_rate: int,
    *,
    range_db: float = 30.0,
    floor_margin_db: float = 10.0,
    max_gap_s: float = 0.2,
    min_segment_s: float = 0.03,
    window_s: float = 0.01,
) -> list[tuple[float, float]]:
    """The voiced stretches of ``audio`` as ``[(start, end), ...]`` seconds, robust to a steady noise floor.

    Energy in 10 ms windows: a window is voiced when it is within ``range_db`` of the loudest window and
    ``floor_margin_db`` above the noise floor (the 10th percentile of the windows, taken no higher than
    ``2 * floor_margin_db`` below the peak, so that audio voiced throughout, or very noisy, still gives spans).
    Gaps shorter than ``max_gap_s`` (stops, the silences between words: shorter than the VAD's default stop_secs,
    so they never end a VAD segment either) are closed; stretches shorter than ``min_segment_s`` (clicks) are
    dropped, and so are those shorter than 0.1 s that stay 20 dB below the peak and lie 0.1 s or more apart from
    louder speech (a breath, a lip smack, a codec's start-up transient). Room tone, hiss or hum under the speech
    therefore does not count as speech; noise that is not steady (a TV, a street) does: give labels for such audio."""
    n = max(1, int(round(sample_rate * window_s)))
    frames = len(audio) // n
    if frames == 0:
        return []
    power = np.mean(np.asarray(audio[: frames * n], dtype=np.float64).reshape(frames, n) ** 2, axis=1)
    db = 10 * np.log10(np.maximum(power, 1e-10))
    peak = float(db.max())
    if peak <= -99.0:
        return []
    floor = float(np.percentile(db, 10))
    threshold = max(peak - range_db, min(floor + floor_margin_db, peak - floor_margin_db))
    voiced = db >= threshold
    # runs of voiced windows; isolated faint blips dropped; gaps closed; clicks dropped
    edges = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]])))
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
    max_gap = int(round(max_gap_s / window_s))
    short = int(round(0.1 / window_s))  # a faint blip: shorter than this, 20 dB below the peak, this far from speech
    faint = [b - a < short and db[a:b].max() < peak - 20.0 for a, b in runs]
    strong = [r for r, f in zip(runs, faint) if not f]
    kept = [
        (a, b) for (a, b), f in zip(runs, faint) if not f or any(a - sb < short and sa - b < short for sa, sb in strong)
    ]
    merged: list[list[int]] = []
    for a, b in kept:
        if merged and a - merged[-1][1] < max_gap:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    min_len = int(round(min_segment_s / window_s))
    return [(a * window_s, b * window_s) for a, b in merged if b - a >= min_len]


def voiced_span(audio: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(start, end) seconds from the first voiced stretch's start to the last one's end (``voiced_segments``);
    (0, 0) for silence."""
    segments = voiced_segments(audio, sample_rate)
    return (segments[0][0], segments[-1][1]) if segments else (0.0, 0.0)


@dataclass
class UserUtterance:
    """One stretch of user audio (float32 mono) and when it starts. ``segments``: its voiced stretches as
    ``[(start, end), ...]`` seconds from its first sample, when known (labels); None = ``voiced_segments``.
    ``words``: what is said, ``[(start, end, word), ...]`` seconds from its first sample (labels; optional)."""

    audio: np.ndarray
    sample_rate: int = STT_SAMPLE_RATE
    at_s: float | None = None  # absolute time from the start of feeding; overrides ``after``
    after: Anchor = "previous_end"
    offset_s: float = 0.0
    label: str = ""
    segments: Sequence[tuple[float, float]] | None = None
    words: Sequence[tuple[float, float, str]] = ()

    def __post_init__(self):
        self.audio = np.asarray(self.audio, dtype=np.float32).reshape(-1)


@dataclass
class BackgroundTrack:
    """Sound under the whole conversation (room tone, street, a TV), mixed into the input stream from ``start_s``
    (seconds from the start of feeding) until ``end_s`` (None: until the transport stops); ``loop`` repeats it."""

    audio: np.ndarray
    sample_rate: int = STT_SAMPLE_RATE
    start_s: float = 0.0
    end_s: float | None = None
    loop: bool = True
    label: str = ""

    def __post_init__(self):
        self.audio = np.asarray(self.audio, dtype=np.float32).reshape(-1)

    def at_rate(self, rate: int) -> BackgroundTrack:
        if rate == self.sample_rate:
            return self
        audio = resample(self.audio, self.sample_rate, rate)
        return BackgroundTrack(audio, rate, self.start_s, self.end_s, self.loop, self.label)

    def samples(self, first: int, n: int) -> np.ndarray:
        """Samples ``first .. first + n`` of the feed timeline (at this track's rate): zeros outside the track."""
        out = np.zeros(n, dtype=np.float32)
        start = int(round(self.start_s * self.sample_rate))
        end = None if self.end_s is None else int(round(self.end_s * self.sample_rate))
        idx = np.arange(first, first + n) - start
        live = idx >= 0
        if end is not None:
            live &= idx < end - start
        if len(self.audio) == 0:
            return out
        if self.loop:
            idx = idx % len(self.audio)
        else:
            live &= idx < len(self.audio)
        out[live] = self.audio[idx[live]]
        return out


@dataclass
class AudioChunk:
    start: float
    end: float
    pcm: bytes
    sample_rate: int


@dataclass
class TimelineEvent:
    t: float
    kind: str
    label: str = ""


class VirtualInputTransport(BaseInputTransport):
    """Feeds the schedule as 20 ms ``InputAudioRawFrame``s in real (clock) time."""

    def __init__(self, transport: VirtualTransport, params: TransportParams, **kwargs):
        super().__init__(params, **kwargs)
        self._transport = transport
        self._feeder: asyncio.Task | None = None

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)
        if self._feeder is None:
            self._feeder = self.create_task(self._feed(), "feed")

    async def stop(self, frame: EndFrame):
        await self._stop_feeder()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame):
        await self._stop_feeder()
        await super().cancel(frame)

    async def _stop_feeder(self):
        feeder, self._feeder = self._feeder, None
        if feeder:
            await self.cancel_task(feeder)

    async def _feed(self):
        vt = self._transport
        clock = vt.clock_for(self)
        rate = self.sample_rate
        step = TRANSPORT_FRAME_MS / 1000
        n = int(rate * step)
        background = [track.at_rate(rate) for track in vt.background]
        idx = 0  # next utterance in vt.schedule (utterances may be added while feeding)
        t0 = clock.now()
        vt.feed_started_at = t0
        prev_end = t0
        current: _Prepared | None = None
        pos, started, k = 0, t0, 0
        while True:
            tick = t0 + k * step
            await clock.sleep_until(tick)
            if current is None and idx < len(vt.schedule):
                start = vt.resolve_start(vt.schedule[idx], t0, prev_end)
                if start is not None and tick >= start - 1e-9:
                    current, pos, started = self._prepare(vt.schedule[idx], rate), 0, tick
                    idx += 1
                    vt.record(started + current.span[0], "user_speech_start", current.utterance.label)
                    vt.user_words.extend((started + a, started + b, w) for a, b, w in current.utterance.words)
            chunk = np.zeros(n, dtype=np.float32)
            if current is not None:
                part = current.audio[pos : pos + n]
                chunk[: len(part)] = part
                pos += n
                if pos >= len(current.audio):
                    label = current.utterance.label
                    vt.record(started + current.span[1], "user_speech_end", label)
                    vt.user_speech.append((started + current.span[0], started + current.span[1], label))
                    vt.user_segments.extend((started + a, started + b, label) for a, b in current.segments)
                    prev_end = started + len(current.audio) / rate
                    current = None
                    if idx >= len(vt.schedule):
                        vt.schedule_done.set()
            for track in background:
                chunk += track.samples(k * n, n)
            await self.push_audio_frame(
                InputAudioRawFrame(audio=float_to_pcm16(chunk), sample_rate=rate, num_channels=1)
            )
            k += 1

    @staticmethod
    def _prepare(utt: UserUtterance, rate: int) -> _Prepared:
        audio = resample(utt.audio, utt.sample_rate, rate) if utt.sample_rate != rate else utt.audio
        if utt.segments is not None:
            segments = sorted((float(a), float(b)) for a, b in utt.segments)
        else:
            segments = voiced_segments(audio, rate)
        span = (segments[0][0], segments[-1][1]) if segments else (0.0, 0.0)
        return _Prepared(utt, audio, segments, span)


@dataclass
class _Prepared:
    """An utterance at the transport rate, with its voiced stretches (seconds from its first sample)."""

    utterance: UserUtterance
    audio: np.ndarray
    segments: list[tuple[float, float]]
    span: tuple[float, float]


class VirtualOutputTransport(BaseOutputTransport):
    """Records every frame reaching the client and plays audio at clock speed."""

    def __init__(self, transport: VirtualTransport, params: TransportParams, **kwargs):
        super().__init__(params, **kwargs)
        self._transport = transport
        self._play_until = 0.0

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if direction == FrameDirection.DOWNSTREAM and not isinstance(frame, OutputAudioRawFrame):
            vt = self._transport
            vt.received.append((vt.clock_for(self).now(), frame))
            if isinstance(frame, InterruptionFrame):
                vt.record(vt.clock_for(self).now(), "interruption")
        await super().process_frame(frame, direction)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        if direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, BotStartedSpeakingFrame):
                self._transport.record(self._transport.clock_for(self).now(), "bot_started_speaking")
            elif isinstance(frame, BotStoppedSpeakingFrame):
                self._transport.record(self._transport.clock_for(self).now(), "bot_stopped_speaking")
        await super().push_frame(frame, direction)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        vt = self._transport
        clock = vt.clock_for(self)
        start = max(clock.now(), self._play_until)
        end = start + len(frame.audio) / (2 * frame.num_channels * frame.sample_rate)
        self._play_until = end
        vt.audio.append(AudioChunk(start, end, bytes(frame.audio), frame.sample_rate))
        await clock.sleep_until(end)
        return True


class VirtualTransport(BaseTransport):
    """Scripted user audio in, recorded bot output out (see module docstring)."""

    def __init__(
        self,
        schedule: Sequence[UserUtterance] = (),
        *,
        background: Sequence[BackgroundTrack] = (),
        params: TransportParams | None = None,
        clock: MediaClock | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.params = params or TransportParams(audio_in_enabled=True, audio_out_enabled=True)
        self.schedule = list(schedule)
        self.background = list(background)
        self._clock = clock
        self._input: VirtualInputTransport | None = None
        self._output: VirtualOutputTransport | None = None
        self.received: list[tuple[float, Frame]] = []
        self.audio: list[AudioChunk] = []
        self.events: list[TimelineEvent] = []
        self.user_speech: list[tuple[float, float, str]] = []  # (voiced start, voiced end, label) per utterance
        self.user_segments: list[tuple[float, float, str]] = []  # (start, end, label) per voiced stretch
        self.user_words: list[tuple[float, float, str]] = []  # (start, end, word) labelled, from the start of feeding
        self.schedule_done = asyncio.Event()
        self.feed_started_at: float | None = None
        if not self.schedule:
            self.schedule_done.set()

    # -- BaseTransport -----------------------------------------------------------------------------------------

    def input(self) -> VirtualInputTransport:
        if self._input is None:
            self._input = VirtualInputTransport(self, self.params, name=f"{self.name}#input")
        return self._input

    def output(self) -> VirtualOutputTransport:
        if self._output is None:
            self._output = VirtualOutputTransport(self, self.params, name=f"{self.name}#output")
        return self._output

    # -- clock and timeline ------------------------------------------------------------------------------------

    def clock_for(self, processor: FrameProcessor) -> MediaClock:
        if self._clock is None:
            self._clock = PipelineClock(processor)
        return self._clock

    def now(self) -> float:
        if self._clock is None:
            raise RuntimeError("the transport has not started yet")
        return self._clock.now()

    def record(self, t: float, kind: str, label: str = "") -> None:
        self.events.append(TimelineEvent(float(t), kind, label))

    def resolve_start(self, utt: UserUtterance, t0: float, prev_end: float) -> float | None:
        """When ``utt`` starts, or None while its anchor event has not happened yet."""
        if utt.at_s is not None:
            return t0 + utt.at_s
        if utt.after == "start":
            return t0 + utt.offset_s
        if utt.after == "previous_end":
            return prev_end + utt.offset_s
        anchor = next((e.t for e in self.events if e.kind == utt.after and e.t >= prev_end), None)
        return None if anchor is None else anchor + utt.offset_s

    def add(self, utterance: UserUtterance) -> None:
        """Append to the schedule (before or while feeding)."""
        self.schedule.append(utterance)
        self.schedule_done.clear()

    # -- queries for tests and reports -------------------------------------------------------------------------

    def event_times(self, kind: str) -> list[float]:
        return [e.t for e in self.events if e.kind == kind]

    def frames(self, frame_type: type | tuple[type, ...]) -> list[tuple[float, Frame]]:
        return [(t, f) for t, f in self.received if isinstance(f, frame_type)]

    def audio_between(self, t0: float = float("-inf"), t1: float = float("inf")) -> list[AudioChunk]:
        """Chunks whose playback overlaps [t0, t1)."""
        return [c for c in self.audio if c.end > t0 and c.start < t1]

    def bot_audio(self, chunks: Sequence[AudioChunk] | None = None) -> tuple[np.ndarray, int]:
        """The bot's audio as played (float32), and its rate."""
        chunks = self.audio if chunks is None else chunks
        if not chunks:
            return np.zeros(0, dtype=np.float32), 0
        return np.concatenate([pcm16_to_float(c.pcm) for c in chunks]), chunks[0].sample_rate

    def bot_speech_seconds(self, chunks: Sequence[AudioChunk] | None = None, threshold: float = 0.01) -> float:
        """Seconds of non-silent bot audio (10 ms windows above ``threshold`` peak)."""
        audio, rate = self.bot_audio(chunks)
        if not rate:
            return 0.0
        n = rate // 100
        frames = len(audio) // n
        peaks = np.abs(audio[: frames * n].reshape(frames, n)).max(axis=1) if frames else np.zeros(0)
        return float((peaks > threshold).sum()) * 0.01

    async def wait_for(self, condition: Callable[[], bool], timeout: float, poll_s: float = 0.01) -> None:
        """Wait (real time) until ``condition()`` holds; TimeoutError with the timeline otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if loop.time() > deadline:
                raise TimeoutError(f"condition not met within {timeout:g} s; timeline: {self.timeline_text()}")
            await asyncio.sleep(poll_s)

    def timeline_text(self) -> str:
        """The events so far on one line, for failure messages."""
        return ", ".join(f"{e.kind}{'(' + e.label + ')' if e.label else ''}@{e.t:.2f}" for e in self.events)
