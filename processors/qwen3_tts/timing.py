"""Per-step timings that are true on a GPU too.

On a CPU every op is synchronous, so the host clock around a step measures it. On a GPU the host clock around a step
measures only the kernel launches (or a whole graph capture, which synchronises): the GPU work runs later. There the
spans are CUDA events, read once the device has passed them (``resolve``), never forcing a sync per step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch


class StepTimer:
    """Adds the seconds of named spans into timing dicts (split evenly when a span is shared by several streams)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.events = device.type == "cuda"
        self._pending: list[tuple[str, Any, Any, tuple[dict[str, float], ...]]] = []

    @contextlib.contextmanager
    def span(self, key: str, *targets: dict[str, float]) -> Iterator[None]:
        if not self.events:
            t = time.perf_counter()
            yield
            _add(key, time.perf_counter() - t, targets)
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        stream = torch.cuda.current_stream(self.device)  # the engine's device, whichever device is current
        start.record(stream)
        yield
        end.record(stream)
        self._pending.append((key, start, end, targets))

    def resolve(self, wait: bool = False) -> None:
        """Add the spans the device has finished (all of them with ``wait``, which waits for the last one)."""
        keep = []
        for key, start, end, targets in self._pending:
            if wait:
                end.synchronize()
            elif not end.query():
                keep.append((key, start, end, targets))
                continue
            _add(key, start.elapsed_time(end) / 1000.0, targets)
        self._pending = keep


def _add(key: str, seconds: float, targets: tuple[dict[str, float], ...]) -> None:
    for d in targets:
        d[key] = d.get(key, 0.0) + seconds / len(targets)
