"""Blocking engine work driven from an event loop: in plain threads that end with their job, and are joined.

``asyncio.to_thread`` parks its workers in a pool that outlives the call; here every thread ends with its job, so a
finished session leaves no thread behind (tests count ``threading.enumerate()``).

* ``run_in_thread(fn, ...)``: one blocking call, awaited.
* ``ThreadedStream(produce, ...)``: a blocking generator (an engine's ``stream``) iterated in its own thread, its
  items handed to the loop as they come (``async for``). The generator gets a ``threading.Event`` that is set when
  the consumer stops early (``aclose``, a cancelled task, an error), so an engine stops within one step; the thread
  is then joined. ``max_ahead`` bounds how far the producer may run ahead of a slow consumer.
* ``watch(event, callback, timeout_s=...)``: for an engine whose step is a blocking wait on something else (a remote
  replica's next chunk, an HTTP read), which cannot look at its cancel event while it waits: ``callback`` is called
  within ``WATCH_POLL_S`` of the event being set (or of a deadline passing), from one shared watcher thread that
  lives only while something is watched. The callback breaks the wait (cancels the remote call, shuts the socket).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")

JOIN_WARN_S = 10.0  # a producer still running this long after its cancel event is logged
WATCH_POLL_S = 0.005  # how often the watcher looks at watched events: the added latency of a watched cancel


async def run_in_thread(fn: Callable[..., T], *args: Any, name: str = "duplex-worker", **kwargs: Any) -> T:
    """Run ``fn`` in a new thread and await its result. If the awaiting task is cancelled the thread still runs to
    completion (it cannot be interrupted) and exits on its own; its result is dropped."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if done.done():
            return
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)

    def target() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:  # delivered to the awaiting task
            outcome = (False, e)
        else:
            outcome = (True, result)
        try:
            loop.call_soon_threadsafe(deliver, *outcome)
        except RuntimeError:  # the loop is closed: nobody is waiting
            pass

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        return await done
    finally:
        if done.done():
            thread.join()  # it has delivered; join only reaps it


_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class ThreadedStream(Generic[T]):
    """``async for item in ThreadedStream(lambda cancel: engine.stream(..., cancel=cancel))``: see module docstring.

    ``produce(cancel)`` is called in the worker thread and returns an iterator; its exceptions are re-raised by the
    ``async for``. Use ``async with`` (or call ``aclose``) so the worker is stopped and joined on every way out."""

    def __init__(
        self,
        produce: Callable[[threading.Event], Iterator[T]],
        *,
        cancel: threading.Event | None = None,
        max_ahead: int | None = None,
        name: str = "duplex-stream",
    ):
        self.cancel_event = cancel or threading.Event()
        self._produce = produce
        self._name = name
        self._room = threading.Semaphore(max_ahead) if max_ahead else None
        self._queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished: asyncio.Future | None = None
        self.thread: threading.Thread | None = None

    # --- consumer side (event loop) -------------------------------------------------------------------------------
    def start(self) -> ThreadedStream[T]:
        if self.thread is not None:
            return self
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._finished = self._loop.create_future()
        self.thread = threading.Thread(target=self._work, name=self._name, daemon=True)
        self.thread.start()
        return self

    def __aiter__(self) -> ThreadedStream[T]:
        return self.start()

    async def __anext__(self) -> T:
        self.start()
        assert self._queue is not None
        if self.cancel_event.is_set():  # a stopped stream hands out nothing more, queued or not
            raise StopAsyncIteration
        item = await self._queue.get()
        if self.cancel_event.is_set():
            raise StopAsyncIteration
        if item is _END:
            self._queue.put_nowait(_END)  # later calls end too
            raise StopAsyncIteration
        if isinstance(item, _Failure):
            self._queue.put_nowait(_END)
            raise item.error
        if self._room is not None:
            self._room.release()
        return item

    async def __aenter__(self) -> ThreadedStream[T]:
        return self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def cancel(self) -> None:
        """Ask the producer to stop (the engine sees the event within one step); thread-safe, idempotent."""
        self.cancel_event.set()
        if self._room is not None:
            self._room.release()  # a producer waiting for room wakes up and sees the event
        if self._loop is not None and self._queue is not None:
            try:  # a consumer waiting for the next item wakes up now, not after the engine's current step
                self._loop.call_soon_threadsafe(self._queue.put_nowait, _END)
            except RuntimeError:
                pass

    async def aclose(self) -> None:
        """Stop the producer and wait for its thread to end."""
        self.cancel()
        if self.thread is None or self._finished is None:
            return
        try:
            done, _ = await asyncio.wait({self._finished}, timeout=JOIN_WARN_S)
            if not done:
                import logging

                logging.getLogger("duplex.threads").warning(
                    "%s still running %g s after its cancel event (engine busy?)", self._name, JOIN_WARN_S
                )
                await self._finished
        except asyncio.CancelledError:
            self.thread.join(timeout=5.0)  # the loop is going away: one engine step, not longer
            raise
        self.thread.join(timeout=1.0)

    # --- producer side (worker thread) ----------------------------------------------------------------------------
    def _put(self, item: Any) -> bool:
        assert self._loop is not None and self._queue is not None
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
            return True
        except RuntimeError:  # the loop is closed
            self.cancel_event.set()
            return False

    def _wait_for_room(self) -> bool:
        if self._room is None:
            return not self.cancel_event.is_set()
        while not self._room.acquire(timeout=0.5):
            if self.cancel_event.is_set() or (self._loop is not None and self._loop.is_closed()):
                return False
        return not self.cancel_event.is_set()

    def _work(self) -> None:
        iterator = None
        try:
            iterator = self._produce(self.cancel_event)
            for item in iterator:
                if self.cancel_event.is_set() or not self._wait_for_room() or not self._put(item):
                    return
        except Exception as e:
            if not self.cancel_event.is_set():
                self._put(_Failure(e))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()  # releases what an unfinished generator holds (engine locks)
                except Exception:
                    pass
            self._put(_END)
            try:
                assert self._loop is not None and self._finished is not None
                finished = self._finished
                self._loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))
            except RuntimeError:
                pass


# --- watched events ------------------------------------------------------------------------------------------------
WatchReason = Literal["set", "timeout"]


class Watch:
    """One watched event (see ``watch``). ``fired`` is None, ``"set"`` or ``"timeout"`` once the callback ran."""

    def __init__(self, event: threading.Event, callback: Callable[[WatchReason], None], deadline: float | None):
        self.event = event
        self.callback = callback
        self.deadline = deadline
        self.fired: WatchReason | None = None

    def extend(self, timeout_s: float | None) -> None:
        """A new deadline ``timeout_s`` from now (None: no deadline), e.g. after each chunk that arrived in time."""
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def stop(self) -> None:
        """Stop watching (idempotent); the callback is not called after this returns, unless it is running."""
        _WATCHER.remove(self)


class _Watcher:
    """The one thread behind ``watch``: started with the first watch, gone once nothing is watched."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: set[Watch] = set()
        self._thread: threading.Thread | None = None

    def add(self, w: Watch) -> None:
        with self._lock:
            self._watches.add(w)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="duplex-watch", daemon=True)
                self._thread.start()

    def remove(self, w: Watch) -> None:
        with self._lock:
            self._watches.discard(w)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._watches:
                    self._thread = None
                    return
                now = time.monotonic()
                due: list[tuple[Watch, WatchReason]] = []
                for w in self._watches:
                    if w.event.is_set():
                        due.append((w, "set"))
                    elif w.deadline is not None and now >= w.deadline:
                        due.append((w, "timeout"))
                for w, _ in due:
                    self._watches.discard(w)
            for w, reason in due:
                w.fired = reason
                try:
                    w.callback(reason)
                except Exception:  # a callback that fails must not stop the others
                    import logging

                    logging.getLogger("duplex.threads").exception("watch callback failed")
            time.sleep(WATCH_POLL_S)


_WATCHER = _Watcher()


def watch(
    event: threading.Event | None, callback: Callable[[WatchReason], None], *, timeout_s: float | None = None
) -> Watch:
    """Call ``callback("set")`` once ``event`` is set, or ``callback("timeout")`` once ``timeout_s`` passes first
    (see module docstring). Call ``stop()`` on the result when done. The callback runs in the watcher thread: keep
    it short (break a wait, set a flag). ``event=None`` watches only the deadline."""
    w = Watch(event if event is not None else threading.Event(), callback, None)
    w.extend(timeout_s)
    _WATCHER.add(w)
    return w
