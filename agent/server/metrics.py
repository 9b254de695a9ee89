"""A tiny Prometheus metrics registry (counters, gauges, histograms with labels) and the server's own metrics.

``prometheus_client`` is not a dependency; the text exposition format (version 0.0.4) is a few lines, so the server
writes it itself. Everything is thread-safe: speak workers and routers may record from any thread.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Iterable[str] = ()):
        self.name, self.help = name, help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def _labels(self, key: tuple[str, ...], extra: str = "") -> str:
        parts = [f'{n}="{_escape(v)}"' for n, v in zip(self.label_names, key)]
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}" if parts else ""

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", *self._samples()]

    def _samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Iterable[str] = ()):
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {} if self.label_names else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def _samples(self) -> list[str]:
        with self._lock:
            return [f"{self.name}{self._labels(k)} {_fmt(v)}" for k, v in sorted(self._values.items())]


class Gauge(Counter):
    kind = "gauge"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labels: Iterable[str] = (), buckets: Iterable[float] = LATENCY_BUCKETS
    ):
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(float(b) for b in buckets)) + (math.inf,)
        self._data: dict[tuple[str, ...], tuple[list[int], float, int]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total, n = self._data.get(key) or ([0] * len(self.buckets), 0.0, 0)
            for i, b in enumerate(self.buckets):
                if value <= b:
                    counts[i] += 1
                    break
            self._data[key] = (counts, total + value, n + 1)

    def count(self, **labels: str) -> int:
        with self._lock:
            data = self._data.get(self._key(labels))
            return data[2] if data else 0

    def _samples(self) -> list[str]:
        out = []
        with self._lock:
            for key, (counts, total, n) in sorted(self._data.items()):
                acc = 0
                for b, c in zip(self.buckets, counts):
                    acc += c
                    le = 'le="' + _fmt(b) + '"'
                    out.append(f"{self.name}_bucket{self._labels(key, le)} {acc}")
                out.append(f"{self.name}_sum{self._labels(key)} {_fmt(total)}")
                out.append(f"{self.name}_count{self._labels(key)} {n}")
        return out


class MetricsRegistry:
    """Named metrics; ``render()`` gives the Prometheus text format."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _add(self, metric: _Metric) -> _Metric:
        with self._lock:
            existing = self._metrics.get(metric.name)
            if existing is not None:
                if type(existing) is not type(metric) or existing.label_names != metric.label_names:
                    raise ValueError(f"metric {metric.name} is already registered differently")
                return existing
            self._metrics[metric.name] = metric
            return metric

    def counter(self, name: str, help_text: str, labels: Iterable[str] = ()) -> Counter:
        return self._add(Counter(name, help_text, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help_text: str, labels: Iterable[str] = ()) -> Gauge:
        return self._add(Gauge(name, help_text, labels))  # type: ignore[return-value]

    def histogram(
        self, name: str, help_text: str, labels: Iterable[str] = (), buckets: Iterable[float] = LATENCY_BUCKETS
    ) -> Histogram:
        return self._add(Histogram(name, help_text, labels, buckets))  # type: ignore[return-value]

    def render(self) -> str:
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for m in metrics:
            lines.extend(m.render())
        return "\n".join(lines) + "\n"


class ServerMetrics(MetricsRegistry):
    """The metrics every part of the server records. ``kind`` labels the entry point: ``speak`` for /api/v1/speak;
    the pipeline routers (browser, telephony) use their own kinds with the same metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions_active = self.gauge("duplex_sessions_active", "Sessions open now.", ["kind"])
        self.sessions_total = self.counter("duplex_sessions_total", "Sessions accepted.", ["kind"])
        self.sessions_rejected = self.counter("duplex_sessions_rejected_total", "Sessions refused.", ["kind", "reason"])
        self.turns = self.counter(
            "duplex_turns_total", "Turns (speak requests, agent replies) by outcome.", ["kind", "outcome"]
        )
        self.first_audio = self.histogram(
            "duplex_first_audio_seconds",
            "Latency to the first audio sent: speak received -> first frame (speak); user stops -> bot audio (chat).",
            ["kind"],
        )
        self.turn_seconds = self.histogram(
            "duplex_turn_seconds", "Wall time of a turn until its last audio frame.", ["kind"], DURATION_BUCKETS
        )
        self.audio_seconds = self.counter("duplex_audio_seconds_total", "Seconds of audio sent to clients.", ["kind"])
        self.errors = self.counter("duplex_errors_total", "Errors sent to clients, by code.", ["kind", "code"])
        self.models_ready = self.gauge(
            "duplex_model_ready", "1 when a model is loaded, 0 while loading or failed.", ["model"]
        )
