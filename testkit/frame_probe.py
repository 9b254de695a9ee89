"""``FrameProbe``: counts the codec frames a ``Qwen3TTSEngine`` generates after its stream's cancel event is set.

Why: "cancelling stops within one frame" is a claim about work done, so it is measured on the frame loop itself, not
on the chunks the engine chooses to yield (with 4-frame chunks an engine can stop yielding at once and still
generate up to four frames nobody hears). The probe wraps, on one engine object:

* ``engine.stream``: to capture the ``cancel`` event of each call (the event the adapter, the server or the test
  hands to the engine);
* ``engine._frame_loop``: every frame the talker/code-predictor loop yields is one frame generated; for each, the
  probe records whether that stream's cancel event was already set when the frame was done. On a batched engine
  (``max_streams``) the loop is a ``BatchedStream`` whose frames are made on the scheduler's step worker, which may
  run ahead of the reader: there a frame counts when the worker hands it to the stream's queue, on the worker.

``hold_at=N`` holds the frame loop right after its N-th frame until the cancel event is set (by another thread),
so a cancel lands at a known point, mid-chunk, on any machine; ``held`` is set while it waits (on a batched engine
the step worker waits, before the frame reaches the reader).

    with FrameProbe(engine, hold_at=2) as probe:
        ... start engine.stream(...) in one thread, wait for probe.held, set the cancel event in another ...
    assert probe.after_cancel <= 1
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any


class FrameProbe:
    """See the module docstring. Use as a context manager; one stream at a time."""

    def __init__(self, engine: Any, *, hold_at: int | None = None, hold_timeout_s: float = 60.0):
        self.engine = engine
        self.hold_at = hold_at
        self.hold_timeout_s = hold_timeout_s
        self.cancel: threading.Event | None = None  # the cancel event of the current stream
        self.frames: list[bool] = []  # per generated frame: was the cancel event set when it was done
        self.frame_times: list[float] = []  # perf_counter() when each frame was done
        self.cancel_seen_at: float | None = None  # perf_counter() when the probe first saw the event set
        self.held = threading.Event()  # the loop is waiting at frame ``hold_at``
        self.hold_expired = False  # nobody set the cancel event within hold_timeout_s

    # --- what was measured ----------------------------------------------------------------------------------------
    @property
    def generated(self) -> int:
        return len(self.frames)

    @property
    def after_cancel(self) -> int:
        """Frames finished while the cancel event was already set (a frame in progress when it was set counts)."""
        return sum(self.frames)

    # --- installation -------------------------------------------------------------------------------------------
    def __enter__(self) -> FrameProbe:
        engine = self.engine
        stream, frame_loop = engine.stream, engine._frame_loop

        def probed_stream(text: str, voice: Any, language: str = "English", cancel=None, **kwargs: Any):
            self.cancel = cancel
            self.frames, self.frame_times, self.cancel_seen_at = [], [], None
            self.held.clear()
            return stream(text, voice, language, cancel, **kwargs)

        def probed_frame_loop(prompt: Any, budget: int) -> Any:
            loop = frame_loop(prompt, budget)
            if hasattr(loop, "_queue"):  # a BatchedStream: count where the worker hands frames out
                loop._queue = _CountingQueue(loop._queue, self._done)
                return loop
            frames = loop.frames

            def counted(cancel: threading.Event | None = None) -> Iterator[Any]:
                for codes in frames(cancel):
                    yield self._done(codes)

            loop.frames = counted
            return loop

        engine.stream, engine._frame_loop = probed_stream, probed_frame_loop
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in ("stream", "_frame_loop"):
            self.engine.__dict__.pop(name, None)
        self.held.set()  # never leave a loop waiting

    # --- in the generating thread ---------------------------------------------------------------------------------
    def _is_cancelled(self) -> bool:
        if self.cancel is not None and self.cancel.is_set():
            if self.cancel_seen_at is None:
                self.cancel_seen_at = time.perf_counter()
            return True
        return False

    def _done(self, codes: Any) -> Any:
        self.frames.append(self._is_cancelled())
        self.frame_times.append(time.perf_counter())
        if self.hold_at is not None and len(self.frames) == self.hold_at and not self.frames[-1]:
            if self.cancel is None:
                raise RuntimeError("FrameProbe(hold_at=...): the stream was started without a cancel event")
            self.held.set()
            if not self.cancel.wait(self.hold_timeout_s):
                self.hold_expired = True
        return codes


class _CountingQueue:
    """A batched stream's frame queue that reports every frame put into it (on the step worker) before passing it
    on; the end marker passes uncounted."""

    def __init__(self, inner: Any, done: Any):
        self.inner = inner
        self.done = done

    def put(self, item: Any) -> None:
        if hasattr(item, "shape"):  # a frame's codes; the end marker is a plain object
            item = self.done(item)
        self.inner.put(item)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.get(*args, **kwargs)
