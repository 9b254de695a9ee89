"""The virtual clock for replays: an asyncio event loop whose time jumps to the next timer when nothing is running.

``VirtualTimeLoop`` is a ``SelectorEventLoop`` whose ``time()`` is virtual. Every ``asyncio.sleep``, ``wait_for``
timeout and ``call_later`` in the process therefore runs on virtual time: the transport's 20 ms feeding, the output's
playback pacing, pipecat's turn-stop timers (speech timeout, user-turn-stop timeout, false-interruption timeout),
the scripted LLM's token pacing. When the loop has nothing ready it would block in ``select(timeout)`` until the
next timer; instead it polls I/O and, if nothing is there and no worker thread is busy, moves virtual time forward by
``timeout`` at once. So a replay runs as fast as its computation allows.

Compute takes no virtual time. While a worker thread is busy (a pending ``run_in_executor`` / ``asyncio.to_thread``
job, e.g. the STT; or a live thread named like a per-job engine worker: ``tts-*``, ``duplex-llm-*``) virtual time is
frozen and the loop waits for it in real time, so its result lands at the same virtual instant on every run.
Silero VAD (pipecat runs it in an executor) is such a job too; whatever runs on the loop thread itself also
takes no virtual time. Results from workers are handed over in a fixed order, once the loop has nothing else to do
at that instant and every worker is idle (``VirtualTimeLoop``): queued as they arrived, a VAD decision and the TTS's
first audio computed in the same instant met in real-time order, and the same scenario could barge in or not.

pipecat also reads the wall clock directly (``time.time()`` / ``time.monotonic()``) in a few modules: the output
transport's bot-speaking / bot-stopped-speaking detection, the VAD controller's idle-audio watchdog, the STT
service's keepalive and last-transcript time, the Smart Turn stop strategy's STT deadline and Smart Turn's audio
buffer times, the soxr stream resampler's reset-after-a-gap, and the worker's flush progress.
``patched_wall_clock(loop)`` swaps those modules' ``time`` for a shim whose ``time()`` / ``monotonic()``
(and ``*_ns``) read the loop's virtual time; everything else in the shim is the real ``time`` module. The pipeline
clock (``FramePushed.timestamp``, recorded event times) is ``LoopClock``, also the loop's time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import itertools
import selectors
import threading
import time as _real_time
import weakref
from collections.abc import Iterator
from typing import Any

from loguru import logger
from pipecat.clocks.base_clock import BaseClock

# modules of pipecat 1.14 that read the wall clock directly (see the module docstring)
WALL_CLOCK_MODULES = (
    "pipecat.transports.base_output",
    "pipecat.audio.vad.vad_controller",
    "pipecat.services.stt_service",
    "pipecat.turns.user_stop.turn_analyzer_user_turn_stop_strategy",
    "pipecat.pipeline.worker",
    "pipecat.audio.resamplers.soxr_stream_resampler",
    "pipecat.audio.turn.smart_turn.base_smart_turn",
)
# per-job worker threads of our engines (processors.engine_tts_service, processors.llm)
BUSY_THREAD_PREFIXES = ("tts-", "duplex-llm")
VIRTUAL_EPOCH = 1_800_000_000.0  # what time.time() reads at virtual time 0
HANDOVER_WAIT_S = 5.0  # real seconds to wait for busy workers before handing their results over anyway


class ReplayStalled(RuntimeError):
    """A worker thread kept virtual time frozen for too long (real seconds)."""


class _VirtualSelector:
    """Wraps the loop's selector: when the loop has nothing ready, workers' results are handed over (in a fixed
    order, once every worker is idle) and, if there are none, an empty wait moves virtual time instead of
    sleeping."""

    def __init__(self, selector: selectors.BaseSelector, loop: VirtualTimeLoop):
        self._selector = selector
        self._loop = loop

    def select(self, timeout: float | None = None):
        if timeout is not None and timeout <= 0:
            return self._selector.select(0)  # the loop has callbacks ready: let it run them first
        loop = self._loop
        if loop.busy():  # a worker computes: virtual time stands still, wait for it in real time
            events = self._selector.select(0.002)
            if not events:
                loop.check_stall()
            if not loop.waited_too_long():
                return events
        loop.stall_since = None
        if loop.hand_over():
            return self._selector.select(0)
        events = self._selector.select(0)
        if events or timeout is None:
            return events or self._selector.select(None)
        loop.advance(timeout)
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._selector, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (see the module docstring).

    Determinism: results from other threads (executor jobs, and callbacks engine threads post with
    ``call_soon_threadsafe``) are not queued the moment they arrive, which would interleave them with the loop's own
    work in real-time order. They wait in an inbox until the loop has nothing else ready at this virtual instant and
    every worker is idle, then join the ready queue in a fixed order: executor jobs in the order they were
    submitted, then each thread's callbacks in the order it posted them, threads in the order the loop first saw
    them. So a VAD decision and the TTS's first audio computed in the same instant always meet in the same order.
    """

    def __init__(self, *, max_stall_s: float = 120.0, busy_thread_prefixes: tuple[str, ...] = BUSY_THREAD_PREFIXES):
        super().__init__()
        self._vt = 0.0
        self._pending_jobs = 0
        self.max_stall_s = max_stall_s
        self.busy_thread_prefixes = busy_thread_prefixes
        self._selector = _VirtualSelector(self._selector, self)
        self.stall_since: float | None = None
        self._inbox: list[tuple[tuple, asyncio.Handle]] = []
        self._inbox_lock = threading.Lock()
        self._job_seq = itertools.count()
        self._post_seq = itertools.count()
        self._thread_ranks: weakref.WeakKeyDictionary[threading.Thread, int] = weakref.WeakKeyDictionary()
        self._rank_seq = itertools.count()
        self.unordered_handovers = 0  # hand-overs forced while a worker was still busy (order not guaranteed)

    def time(self) -> float:
        return self._vt

    def advance(self, seconds: float) -> None:
        self._vt += max(0.0, seconds)

    # -- results from other threads ------------------------------------------------------------------------------

    def _rank(self, thread: threading.Thread) -> int:
        rank = self._thread_ranks.get(thread)
        if rank is None:
            rank = self._thread_ranks[thread] = next(self._rank_seq)
        return rank

    def call_soon_threadsafe(self, callback, *args, context=None):
        if self._thread_id is None or threading.get_ident() == self._thread_id:
            return super().call_soon_threadsafe(callback, *args, context=context)
        self._check_closed()
        handle = asyncio.Handle(callback, args, self, context)
        thread = threading.current_thread()
        with self._inbox_lock:
            self._inbox.append(((1, self._rank(thread), next(self._post_seq)), handle))
        self._write_to_self()
        return handle

    def run_in_executor(self, executor, func, *args):
        if executor is None:
            executor = self._default_executor
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            return super().run_in_executor(executor, func, *args)
        self._check_closed()
        future = self.create_future()
        key = (0, next(self._job_seq))
        with self._inbox_lock:
            self._pending_jobs += 1

        def run():
            try:
                outcome = (func(*args), None)
            except BaseException as e:  # handed to the awaiting task
                outcome = (None, e)
            with self._inbox_lock:
                self._pending_jobs -= 1
                self._inbox.append((key, asyncio.Handle(_settle, (future, *outcome), self, None)))
            self._write_to_self()

        try:
            executor.submit(run)
        except BaseException:
            with self._inbox_lock:
                self._pending_jobs -= 1
            raise
        return future

    def hand_over(self) -> bool:
        """Move the inbox to the ready queue in its fixed order; False if it was empty."""
        with self._inbox_lock:
            inbox, self._inbox = self._inbox, []
        for _, handle in sorted(inbox, key=lambda item: item[0]):
            if not handle.cancelled():
                self._ready.append(handle)
        if inbox and self.busy():
            self.unordered_handovers += 1
            logger.debug("virtual clock: handed results over while a worker was still busy (order not guaranteed)")
        return bool(inbox)

    def waited_too_long(self) -> bool:
        """Workers have been busy for ``HANDOVER_WAIT_S`` while results wait: hand them over anyway (liveness)."""
        return (
            bool(self._inbox)
            and self.stall_since is not None
            and (_real_time.monotonic() - self.stall_since > HANDOVER_WAIT_S)
        )

    def check_stall(self) -> None:
        now = _real_time.monotonic()
        self.stall_since = self.stall_since or now
        if now - self.stall_since > self.max_stall_s:
            raise ReplayStalled(f"a worker thread held virtual time still for over {self.max_stall_s:g} s (real)")

    def busy(self) -> bool:
        if self._pending_jobs > 0:
            return True
        prefixes = self.busy_thread_prefixes
        busy = False
        for t in threading.enumerate():
            self._rank(t)
            busy = busy or (t.name.startswith(prefixes) and t.is_alive())
        return busy


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class LoopClock(BaseClock):
    """The pipeline clock on the running loop's time (virtual under ``VirtualTimeLoop``), in nanoseconds."""

    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self):
        self._loop = asyncio.get_running_loop()

    def get_time(self) -> int:
        loop = self._loop or asyncio.get_running_loop()
        return int(loop.time() * 1e9)


class _VirtualTimeModule:
    """``time`` with ``time()`` / ``monotonic()`` (and ``_ns``) reading the loop's virtual time."""

    def __init__(self, loop: VirtualTimeLoop):
        self._loop = loop

    def time(self) -> float:
        return VIRTUAL_EPOCH + self._loop.time()

    def monotonic(self) -> float:
        return self._loop.time()

    def time_ns(self) -> int:
        return int(self.time() * 1e9)

    def monotonic_ns(self) -> int:
        return int(self._loop.time() * 1e9)

    def __getattr__(self, name: str) -> Any:
        return getattr(_real_time, name)


@contextlib.contextmanager
def patched_wall_clock(loop: VirtualTimeLoop) -> Iterator[None]:
    """Point the ``time`` of pipecat's wall-clock-reading modules at ``loop``'s virtual time (restored on exit)."""
    shim = _VirtualTimeModule(loop)
    saved = []
    try:
        for name in WALL_CLOCK_MODULES:
            module = importlib.import_module(name)
            if getattr(module, "time", None) is not _real_time:
                raise RuntimeError(f"{name}.time is not the time module: pipecat changed, review agent/replay/clock.py")
            saved.append(module)
            module.time = shim
        yield
    finally:
        for module in saved:
            module.time = _real_time
