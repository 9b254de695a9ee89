"""Holding the bot's audio while the pipeline decides whether the user is interrupting, with the played-word
timeline kept true to what was heard.

When the user makes a sound over the bot, stopping at once and throwing the reply away is wrong for a "mhm" or a
cough, and talking on until the words are known is wrong for "stop". So the bot *holds*: its audio pauses between
two output chunks (within one 40 ms chunk of the decision to hold), everything generated stays queued, and then

* ``release()``: the audio plays on from the exact sample where it stopped (nothing re-generated), or
* ``drop()``: the hold ends in an interruption (pipecat's ``InterruptionFrame`` clears the queues as usual); the
  chunk the output was holding in hand is discarded with the rest.

Two pieces do it, sharing one ``PlaybackHold``:

* ``PlaybackHold.install(output)`` wraps the output transport's ``write_audio_frame``: while held, the write of the
  next chunk waits. Any output transport works the same (it is where playback is paced), and the wait is inside the
  transport's own audio task, so the order of audio and the frames queued between chunks is untouched.
* ``PlaybackClock``, a processor just before the output transport, releases the frames that carry a presentation
  time (the TTS word timestamps and the reply's end) when their audio plays: at ``pts`` plus the time the audio was
  held so far in this stretch of speech. Without it the output's own clock would release the words of held audio
  on schedule, and the context would claim words the user never heard; with it, an interrupted reply keeps exactly
  the words played before the hold, and a resumed one gets each word when it is really played.

Time is the pipeline clock (nanoseconds): the virtual clock in replays, the system clock in sessions.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger
from pipecat.frames.frames import (
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    MixerControlFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    SpriteFrame,
    SystemFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.utils import obj_id

DROP_SETTLE_S = 0.5  # after drop(): longest wait for the output to report it cleared its queue
STARTED_NS = 5_000_000  # a word whose audio began less than 5 ms before the audio stopped was not heard
# frames the output transport handles in order with the audio whatever their pts (it queues only the others by time)
UNTIMED = (SystemFrame, OutputAudioRawFrame, OutputImageRawFrame, SpriteFrame, MixerControlFrame, TTSStoppedFrame)


@dataclass(frozen=True)
class HoldEvent:
    """One step of a hold, for metrics, replays and logs (``t``: seconds on the pipeline clock)."""

    t: float
    kind: str  # "hold" | "audio_stopped" | "release" | "drop"


class PlaybackHold:
    """Pauses and resumes the bot's audio at the output transport (see the module docstring).

    ``hold()`` / ``release()`` / ``drop()`` are called from the event loop (the turn-start strategy); the wrapped
    write runs in the output transport's audio task on the same loop."""

    def __init__(self) -> None:
        self._output: FrameProcessor | None = None
        self._held = False
        self._held_since: int | None = None  # clock ns of hold()
        self._stopped_at: int | None = None  # clock ns when the audio actually stopped (a write began waiting)
        self._dropping = False  # drop() until the output reports it cleared its queue
        self._dropped_at: int | None = None  # where the audio stopped for good (the barrier while dropping)
        self._drop_before_id = 0  # chunks built before the last drop() are stale
        self._wake = asyncio.Event()
        self._wake.set()
        self._drop_timer: asyncio.TimerHandle | None = None
        self._listeners: list[Callable[[], None]] = []
        self.shift_ns = 0  # how long the audio was held in the current stretch of speech
        self.events: list[HoldEvent] = []
        self.holds = 0  # for tests and diagnostics
        self.releases = 0
        self.drops = 0

    # -- wiring ---------------------------------------------------------------------------------------------------

    def install(self, output: FrameProcessor) -> None:
        """Make ``output`` (a pipecat output transport) wait while held before writing each audio chunk."""
        if self._output is not None:
            raise RuntimeError("a PlaybackHold serves one output transport")
        self._output = output
        write = output.write_audio_frame

        async def held_write(frame: OutputAudioRawFrame) -> bool:
            if await self._wait(frame):
                return await write(frame)
            return False  # a chunk of an interrupted reply: never played

        output.write_audio_frame = held_write

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` after every change of state (hold, audio stopped, release, drop)."""
        self._listeners.append(callback)

    def now_ns(self) -> int:
        """The pipeline clock, read from the output transport (its word timestamps' clock); the event loop's time
        before the hold is installed."""
        if self._output is None:
            return int(asyncio.get_running_loop().time() * 1e9)
        return self._output.get_clock().get_time()

    # -- state ------------------------------------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        return self._held

    @property
    def barrier_ns(self) -> int | None:
        """Audio from this time on has not played: while held, where it stopped (or when the hold began if no chunk
        has waited yet); after ``drop()`` until the output has cleared its queue, where it had stopped. None
        otherwise."""
        if self._held:
            return self._stopped_at if self._stopped_at is not None else self._held_since
        return self._dropped_at if self._dropping else None

    # -- control ----------------------------------------------------------------------------------------------------

    def hold(self) -> None:
        if self._held:
            return
        self._held = True
        self._held_since = self.now_ns()
        self._stopped_at = None
        self._wake.clear()
        self.holds += 1
        self._event("hold")

    def release(self) -> None:
        """Play on from where the audio stopped."""
        if not self._held:
            return
        if self._stopped_at is not None:
            self.shift_ns += max(0, self.now_ns() - self._stopped_at)
        self._held = False
        self._held_since = self._stopped_at = None
        self.releases += 1
        self._event("release")
        if not self._dropping:
            self._wake.set()

    def drop(self) -> None:
        """The hold ends in an interruption: chunks built until now are never played. The waiting write stays
        parked until the output has cleared its queue (``output_cleared``; at most ``DROP_SETTLE_S``), so it cannot
        pick up a stale chunk in between."""
        was_held = self._held
        self._dropped_at = self.barrier_ns if was_held else self.now_ns()
        self._held = False
        self._held_since = self._stopped_at = None
        self.shift_ns = 0
        self._drop_before_id = obj_id()
        self._dropping = True
        self._wake.clear()
        if was_held:
            self.drops += 1
            self._event("drop")
        if self._drop_timer is not None:
            self._drop_timer.cancel()
        self._drop_timer = asyncio.get_running_loop().call_later(DROP_SETTLE_S, self.output_cleared)

    def output_cleared(self) -> None:
        """The output transport dropped its queued audio (it reported the bot stopped speaking): new audio may
        play; a stretch of speech ended, so the word timeline starts afresh."""
        if self._drop_timer is not None:
            self._drop_timer.cancel()
            self._drop_timer = None
        if not self._held:
            self.shift_ns = 0
        if self._dropping:
            self._dropping = False
            if not self._held:
                self._wake.set()
            self._notify()

    # -- internals ---------------------------------------------------------------------------------------------------

    async def _wait(self, frame: Frame) -> bool:
        """In the output's audio task, before a chunk is written: False if it must not be played."""
        while not self._wake.is_set():
            if self._held and self._stopped_at is None:
                self._stopped_at = self.now_ns()
                self._event("audio_stopped")
            await self._wake.wait()
        return frame.id >= self._drop_before_id

    def _event(self, kind: str) -> None:
        t = self.now_ns() / 1e9
        self.events.append(HoldEvent(t, kind))
        logger.debug(f"playback {kind} at {t:.3f} s")
        self._notify()

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()


class PlaybackClock(FrameProcessor):
    """Just before the output transport: releases timed frames (``pts``: TTS word timestamps, the reply's end) when
    their audio plays, ``PlaybackHold.shift_ns`` later than scheduled and never while their audio is held (see the
    module docstring). Frames without a presentation time pass at once, in order."""

    def __init__(self, hold: PlaybackHold, **kwargs):
        super().__init__(**kwargs)
        self._hold = hold
        self._heap: list[tuple[int, int, Frame]] = []  # (pts, arrival, frame)
        self._counter = itertools.count()
        self._changed = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._task: asyncio.Task | None = None
        hold.add_listener(self._changed.set)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.UPSTREAM:
            if isinstance(frame, BotStoppedSpeakingFrame):
                self._hold.output_cleared()
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, InterruptionFrame):
            self._heap = [item for item in self._heap if not item[2].interruptible]
            heapq.heapify(self._heap)
            self._changed.set()
        elif isinstance(frame, CancelFrame):
            await self._stop_task()
        elif isinstance(frame, EndFrame):
            self._hold.release()
            await self._empty.wait()  # the last words go out before the end
            await self._stop_task()
        elif frame.pts and not isinstance(frame, UNTIMED):
            self._ensure_task()
            heapq.heappush(self._heap, (frame.pts, next(self._counter), frame))
            self._empty.clear()
            self._changed.set()
            return
        await self.push_frame(frame, direction)

    def _ensure_task(self) -> None:
        if self._task is None:
            self._task = self.create_task(self._release_loop(), "playback_clock")

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await self.cancel_task(task)

    async def cleanup(self):
        await super().cleanup()
        await self._stop_task()

    async def _release_loop(self) -> None:
        while True:
            self._changed.clear()
            if not self._heap:
                self._empty.set()
                await self._changed.wait()
                continue
            pts, _, frame = self._heap[0]
            due = pts + self._hold.shift_ns
            barrier = self._hold.barrier_ns
            now = self.get_clock().get_time()
            if barrier is not None and due > barrier - STARTED_NS:
                await self._changed.wait()  # its audio is held: wait for release (or drop)
                continue
            if due > now:
                try:
                    await asyncio.wait_for(self._changed.wait(), (due - now) / 1e9)
                except TimeoutError:
                    pass
                continue
            heapq.heappop(self._heap)
            frame.pts = due
            await self.push_frame(frame)
