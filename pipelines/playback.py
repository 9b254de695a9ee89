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

Where the far end says what it played (a phone carrier acknowledging marks), ``RemotePlayout`` makes "played"
mean *heard*: the output sends a mark after each chunk, words are released only once the far end confirmed playing
their audio, and a hold clears the far end's buffer at once (the output had sent ahead of playback) and plays the
cut audio again, from the confirmed point, on release. Carrier message formats live with the carriers
(``agent.server.telephony_marks``).

Time is the pipeline clock (nanoseconds): the virtual clock in replays, the system clock in sessions.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

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
    OutputTransportMessageUrgentFrame,
    SpriteFrame,
    SystemFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.utils import obj_id

DROP_SETTLE_S = 0.5  # after drop(): longest wait for the output to report it cleared its queue
STARTED_NS = 5_000_000  # a word whose audio began less than 5 ms before the audio stopped was not heard
MAX_UNCONFIRMED = 1500  # chunks kept for a client that confirms nothing (60 s of 40 ms chunks)
# frames the output transport handles in order with the audio whatever their pts (it queues only the others by time)
UNTIMED = (SystemFrame, OutputAudioRawFrame, OutputImageRawFrame, SpriteFrame, MixerControlFrame, TTSStoppedFrame)


@dataclass(frozen=True)
class HoldEvent:
    """One step of a hold, for metrics, replays and logs (``t``: seconds on the pipeline clock)."""

    t: float
    kind: str  # "hold" | "audio_stopped" | "release" | "drop"


class MarkProtocol(Protocol):
    """A client's playback messages: the one that asks to be told when the audio sent before it has played (None: the
    client has no such message), and the one that makes it discard the audio it buffered."""

    def mark_message(self, name: str) -> dict[str, Any] | None: ...

    def clear_message(self) -> dict[str, Any]: ...


@dataclass
class _Sent:
    seq: int
    start_ns: int  # where the chunk plays on the word-timestamp timeline
    end_ns: int
    frame: OutputAudioRawFrame  # kept until acknowledged: played again after a pause cut it


class RemotePlayout:
    """Playback at the far end of a transport that sends audio ahead of it (a phone carrier, a browser on a
    WebSocket), known from the client's acknowledgements where it gives them (see the module docstring).

    ``install(output)`` wraps the output's ``write_audio_frame``: after each chunk it sends ``protocol``'s mark
    (``duplex-<n>``) and notes where the chunk plays on the word-timestamp timeline (back to back from the first
    chunk of a stretch of speech: the output may send ahead of playback, the far end plays in real time).
    ``acknowledged(name)`` (the carrier's echo of a mark, from its serializer) moves the *heard* point to the end of
    that chunk. Until a first acknowledgement arrives the far end is not known to answer marks, and ``heard_ns``
    is None (the clock is trusted, as without marks).

    ``pause()`` (the hold) sends the carrier's clear (it discards what it buffered; a carrier that echoes the marks
    it discarded is ignored from then on) and keeps the audio sent after the heard point, cut at that exact sample,
    to be played again first on ``resume()``; ``cleared()`` (a barge-in: the serializer sends the transport's clear
    for the ``InterruptionFrame``) forgets it.
    """

    def __init__(self, protocol: MarkProtocol):
        self.protocol = protocol
        self._output: FrameProcessor | None = None
        self._sent: deque[_Sent] = deque()
        self._seq = 0
        self._ignore_through = 0  # acknowledgements of marks up to this one are echoes of a clear
        self._play_end_ns = 0  # where the last chunk sent ends on the timeline
        self._heard_ns: int | None = None  # end of the last chunk the far end confirmed playing
        self._heard_at_ns = 0  # when that confirmation arrived
        self._resend: list[OutputAudioRawFrame] = []
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[], None]] = []
        self.marks_sent = 0  # for tests and diagnostics
        self.acknowledged_marks = 0
        self.resent_s = 0.0

    @property
    def confirmed(self) -> bool:
        """The far end has acknowledged at least one mark: it answers them."""
        return self._heard_ns is not None

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` after every acknowledgement."""
        self._listeners.append(callback)

    def install(self, output: FrameProcessor) -> None:
        self._output = output
        write = output.write_audio_frame

        async def marked_write(frame: OutputAudioRawFrame) -> bool:
            async with self._lock:  # a pause waits for the chunk being sent, so the clear comes after it
                if self._resend:
                    pending, self._resend = self._resend, []
                    for cut in pending:
                        if not await self._write(write, cut):
                            return False
                return await self._write(write, frame)

        output.write_audio_frame = marked_write

    def _now(self) -> int:
        assert self._output is not None
        return self._output.get_clock().get_time()

    async def _write(self, write, frame: OutputAudioRawFrame) -> bool:
        start = max(self._now(), self._play_end_ns)
        if not await write(frame):
            return False
        seconds = len(frame.audio) / (2 * max(1, frame.num_channels) * frame.sample_rate)
        end = start + int(seconds * 1e9)
        self._play_end_ns = end
        self._seq += 1
        self._sent.append(_Sent(self._seq, start, end, frame))
        if len(self._sent) > MAX_UNCONFIRMED:  # a client that confirms nothing: keep what a pause could need
            self._sent.popleft()
        mark = self.protocol.mark_message(f"duplex-{self._seq}")
        if mark is not None:
            await self._send(mark)
            self.marks_sent += 1
        return True

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._output is not None
        await self._output.send_message(OutputTransportMessageUrgentFrame(message=message))

    def acknowledged(self, name: str) -> None:
        """The far end played the audio sent before mark ``name``."""
        try:
            seq = int(str(name).removeprefix("duplex-"))
        except ValueError:
            return  # not one of ours
        if seq <= self._ignore_through or self._output is None:
            return
        while self._sent and self._sent[0].seq <= seq:
            done = self._sent.popleft()
            self._heard_ns = done.end_ns
        self._heard_at_ns = self._now()
        self.acknowledged_marks += 1
        for callback in self._listeners:
            callback()

    def playing(self, now_ns: int) -> bool:
        """Audio sent is still due to play at the far end (the output sent ahead of playback)."""
        return self._play_end_ns > now_ns

    def heard_ns(self, now_ns: int) -> int | None:
        """How far the far end has played on the timeline: the last confirmed chunk's end, plus the time since the
        confirmation up to the end of the next chunk (its mark is on the way). None: no confirmation yet."""
        if self._heard_ns is None:
            return None
        if not self._sent:
            return self._heard_ns
        return min(self._heard_ns + max(0, now_ns - self._heard_at_ns), self._sent[0].end_ns)

    async def pause(self) -> int:
        """Stop the far end at once (clear its buffer); returns the timeline instant it had played to. The audio
        sent after that is played again on ``resume``."""
        async with self._lock:
            return await self._pause()

    async def _pause(self) -> int:
        now = self._now()
        heard = self.heard_ns(now)
        if heard is None:  # no confirmations: the far end is assumed to play on schedule
            heard = min(now, self._play_end_ns)
        await self._send(self.protocol.clear_message())
        self._ignore_through = self._seq
        cut: list[OutputAudioRawFrame] = []
        for sent in self._sent:
            if sent.end_ns <= heard:
                continue
            frame = sent.frame
            if sent.start_ns < heard:
                width = 2 * max(1, frame.num_channels)
                skip = int((heard - sent.start_ns) / 1e9 * frame.sample_rate) * width
                frame = OutputAudioRawFrame(frame.audio[skip:], frame.sample_rate, frame.num_channels)
            if frame.audio:
                cut.append(frame)
        self._sent.clear()
        self._resend = cut + self._resend
        self._play_end_ns = heard
        self.resent_s += sum(len(f.audio) / (2 * max(1, f.num_channels) * f.sample_rate) for f in cut)
        return heard

    async def resume(self, write_waiting: bool) -> None:
        """Play on: the cut audio goes first. With a write waiting at the output it goes out just before that
        chunk; otherwise it is queued to the output as the bot's audio."""
        if write_waiting or not self._resend or self._output is None:
            return
        pending, self._resend = self._resend, []
        for frame in pending:
            await self._output.queue_frame(TTSAudioRawFrame(frame.audio, frame.sample_rate, frame.num_channels))

    def cleared(self) -> None:
        """A clear went to the far end (a barge-in): what it had not played is gone for good."""
        self._ignore_through = self._seq
        self._sent.clear()
        self._resend = []
        self._play_end_ns = 0


class PlaybackHold:
    """Pauses and resumes the bot's audio at the output transport (see the module docstring).

    ``hold()`` / ``release()`` / ``drop()`` are called from the event loop (the turn-start strategy); the wrapped
    write runs in the output transport's audio task on the same loop."""

    def __init__(self, playout: RemotePlayout | None = None) -> None:
        self.playout = playout  # the far end's acknowledgements, when the transport has them
        self._output: FrameProcessor | None = None
        self._held = False
        self._waiting = False  # a write is parked in the output's audio task
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
        self.words: deque[tuple[str, float]] = deque(maxlen=512)  # last words timed: (text, scheduled s), diagnostics
        self.events: deque[HoldEvent] = deque(maxlen=1024)  # the last steps of holds (metrics, replays, logs)
        self.holds = 0  # for tests and diagnostics
        self.releases = 0
        self.drops = 0

    # -- wiring ---------------------------------------------------------------------------------------------------

    def install(self, output: FrameProcessor) -> None:
        """Make ``output`` (a pipecat output transport) wait while held before writing each audio chunk."""
        if self._output is not None:
            raise RuntimeError("a PlaybackHold serves one output transport")
        self._output = output
        if self.playout is not None:
            self.playout.install(output)  # inside the hold: marks follow the chunks that are really sent
            self.playout.add_listener(self._notify)
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
    def audio_stopped(self) -> bool:
        """Held, and the bot's audio has stopped: the output is parked before its next chunk, or the far end's
        buffer was cleared."""
        return self._held and self._stopped_at is not None

    def far_end_playing(self) -> bool:
        """The client is still playing audio the output sent ahead (after the output itself went quiet)."""
        return self.playout is not None and self._output is not None and self.playout.playing(self.now_ns())

    @property
    def barrier_ns(self) -> int | None:
        """Audio from this time on has not played: while held, where it stopped (or when the hold began if no chunk
        has waited yet); after ``drop()`` until the output has cleared its queue, where it had stopped. None
        otherwise."""
        if self._held:
            return self._stopped_at if self._stopped_at is not None else self._held_since
        return self._dropped_at if self._dropping else None

    # -- control ----------------------------------------------------------------------------------------------------

    async def hold(self) -> None:
        if self._held:
            return
        self._held = True
        self._held_since = self.now_ns()
        self._stopped_at = None
        self._wake.clear()
        self.holds += 1
        self._event("hold")
        if self.playout is not None:  # the far end has audio buffered ahead: clear it now
            self._stopped_at = await self.playout.pause()
            self._event("audio_stopped")

    async def release(self) -> None:
        """Play on from where the audio stopped."""
        if not self._held:
            return
        if self._stopped_at is not None:
            self.shift_ns += max(0, self.now_ns() - self._stopped_at)
        self._held = False
        self._held_since = self._stopped_at = None
        self.releases += 1
        self._event("release")
        if self.playout is not None:
            await self.playout.resume(write_waiting=self._waiting)
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
        self._drop_before_id = obj_id()
        self._dropping = True
        self._wake.clear()
        if self.playout is not None:
            self.playout.cleared()
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
            self._waiting = True
            try:
                await self._wake.wait()
            finally:
                self._waiting = False
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
        self._ending = False
        hold.add_listener(self._changed.set)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.UPSTREAM:
            if isinstance(frame, BotStoppedSpeakingFrame):
                self._hold.output_cleared()
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, InterruptionFrame):
            await self._release_heard()  # what the far end confirmed before the clear still counts
            if self._hold.playout is not None:
                self._hold.playout.cleared()  # the transport's clear discards what the client buffered
            self._heap = [item for item in self._heap if not item[2].interruptible]
            heapq.heapify(self._heap)
            self._changed.set()
        elif isinstance(frame, CancelFrame):
            await self._stop_task()
        elif isinstance(frame, EndFrame):
            await self._hold.release()
            self._ending = True  # no more waiting for the far end's confirmations
            self._changed.set()
            await self._empty.wait()  # the last words go out before the end
            await self._stop_task()
        elif frame.pts and not isinstance(frame, UNTIMED):
            if isinstance(frame, TTSTextFrame):
                self._hold.words.append((frame.text, frame.pts / 1e9))
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
            if barrier is not None and due > barrier - STARTED_NS and not self._ending:
                await self._changed.wait()  # its audio is held: wait for release (or drop)
                continue
            if due > now and not self._ending:
                await self._wait_changed((due - now) / 1e9)
                continue
            heard = self._heard(now)
            if heard is not None and due > heard and not self._ending:
                await self._wait_changed(None)  # played here, not yet confirmed by the far end
                continue
            heapq.heappop(self._heap)
            frame.pts = due
            await self.push_frame(frame)

    def _heard(self, now: int) -> int | None:
        playout = self._hold.playout
        return None if playout is None else playout.heard_ns(now)

    async def _wait_changed(self, timeout_s: float | None) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except TimeoutError:
            pass

    async def _release_heard(self) -> None:
        """Before an interruption clears the queue: push the frames whose audio the far end confirmed."""
        now = self.get_clock().get_time()
        heard = self._heard(now)
        if heard is None:
            return
        barrier = self._hold.barrier_ns
        limit = min(heard, now, barrier - STARTED_NS if barrier is not None else heard)
        while self._heap and self._heap[0][0] + self._hold.shift_ns <= limit:
            pts, _, frame = heapq.heappop(self._heap)
            frame.pts = pts + self._hold.shift_ns
            await self.push_frame(frame)
