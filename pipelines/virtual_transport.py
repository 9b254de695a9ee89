"""A virtual pipecat transport: scripted user audio in, every output frame recorded with its time.

``VirtualTransport(schedule)`` is a ``BaseTransport``. Its input feeds ``InputAudioRawFrame``s of 20 ms (silence
between utterances, and after the last one until the pipeline stops) and its output "plays" bot audio at the
speed of the clock (a chunk's write returns when the chunk has played), recording:

* ``received``  — every downstream frame that reached the output, ``(time, frame)``;
* ``audio``     — every bot audio chunk written, ``AudioChunk(start, end, pcm, sample_rate)``;
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


def voiced_span(
    audio: np.ndarray, sample_rate: int, rel_db: float = -30.0, window_s: float = 0.01
) -> tuple[float, float]:
    """(start, end) seconds of the part of ``audio`` louder than ``rel_db`` below its loudest 10 ms window."""
    n = max(1, int(sample_rate * window_s))
    frames = len(audio) // n
    if frames == 0:
        return 0.0, len(audio) / sample_rate
    rms = np.sqrt(np.mean(audio[: frames * n].reshape(frames, n) ** 2, axis=1))
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (rel_db / 20)) if rms.max() > 0 else np.array([], dtype=int)
    if loud.size == 0:
        return 0.0, 0.0
    return float(loud[0] * window_s), float((loud[-1] + 1) * window_s)


@dataclass
class UserUtterance:
    """One stretch of user audio (float32 mono) and when it starts."""

    audio: np.ndarray
    sample_rate: int = STT_SAMPLE_RATE
    at_s: float | None = None  # absolute time from the start of feeding; overrides ``after``
    after: Anchor = "previous_end"
    offset_s: float = 0.0
    label: str = ""

    def __post_init__(self):
        self.audio = np.asarray(self.audio, dtype=np.float32).reshape(-1)


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
        silence = bytes(2 * n)
        idx = 0  # next utterance in vt.schedule (utterances may be added while feeding)
        t0 = clock.now()
        vt.feed_started_at = t0
        prev_end = t0
        current: tuple[UserUtterance, bytes, float, float] | None = None
        pos, started, k = 0, t0, 0
        while True:
            tick = t0 + k * step
            await clock.sleep_until(tick)
            if current is None and idx < len(vt.schedule):
                start = vt.resolve_start(vt.schedule[idx], t0, prev_end)
                if start is not None and tick >= start - 1e-9:
                    current, pos, started = self._prepare(vt.schedule[idx], rate), 0, tick
                    idx += 1
                    vt.record(started + current[2], "user_speech_start", current[0].label)
            if current is not None:
                utt, pcm, v0, v1 = current
                chunk = pcm[pos : pos + 2 * n]
                pos += 2 * n
                if pos >= len(pcm):
                    vt.record(started + v1, "user_speech_end", utt.label)
                    vt.user_speech.append((started + v0, started + v1, utt.label))
                    prev_end = started + len(pcm) / 2 / rate
                    current = None
                    if idx >= len(vt.schedule):
                        vt.schedule_done.set()
                chunk = chunk + bytes(2 * n - len(chunk))
            else:
                chunk = silence
            await self.push_audio_frame(InputAudioRawFrame(audio=chunk, sample_rate=rate, num_channels=1))
            k += 1

    @staticmethod
    def _prepare(utt: UserUtterance, rate: int) -> tuple[UserUtterance, bytes, float, float]:
        audio = resample(utt.audio, utt.sample_rate, rate) if utt.sample_rate != rate else utt.audio
        v0, v1 = voiced_span(audio, rate)
        return utt, float_to_pcm16(audio), v0, v1


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
        params: TransportParams | None = None,
        clock: MediaClock | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.params = params or TransportParams(audio_in_enabled=True, audio_out_enabled=True)
        self.schedule = list(schedule)
        self._clock = clock
        self._input: VirtualInputTransport | None = None
        self._output: VirtualOutputTransport | None = None
        self.received: list[tuple[float, Frame]] = []
        self.audio: list[AudioChunk] = []
        self.events: list[TimelineEvent] = []
        self.user_speech: list[tuple[float, float, str]] = []  # (voiced start, voiced end, label) as fed
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
