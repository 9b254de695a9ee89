"""GPU path for the lean loop: the same ``LeanTalker`` steps, replayed as CUDA graphs (bf16, static caches).

Why: on a GPU one frame is ~16 x (5 or 28 layers x ~15 kernels) small launches, so launch latency, not bandwidth,
bounds a frame; faster-qwen3-tts reaches RTF 0.2-0.26 (compute/audio) on RTX 4090/H100 only by capturing the
per-frame work in CUDA graphs. Two kinds of graph are captured from the eager code of ``lean_loop.LeanTalker``:

* the talker step: ``masked`` attention over a window of the static cache, RoPE rows gathered by ``pos``; one graph
  per (batch size, window);
* the code predictor's 15 steps including sub-talker sampling (``sampling.RowSampler`` in its fixed-work form:
  every stream's settings are tensor values, so one graph per batch size serves any mix of settings).

Batch sizes are bucketed (1, 2, 4, ... up to ``max_batch``; a batch of 3 runs the 4-row graph, the spare row on a
free slot), windows too (``DecoderStack.window_for``), so the keys are few and ``warmup()`` captures all of them for
the base cache when the engine loads: no capture pauses a live conversation. An utterance longer than the base cache
gets a larger cache for its duration; graphs for it are captured when first needed (logged) and dropped with it.

Capture safety (``CudaGraphRunner``):

* every capture and replay runs under the engine's device (``torch.cuda.device``), on a capture stream created on
  that device: without that a model on ``cuda:1`` captures on device 0, and its graphs do nothing;
* one process-wide lock serialises captures (two engines, or an engine and its batch worker), and the capture mode
  is ``thread_local``, so other threads' GPU work (Parakeet, the codec decoder of other sessions) neither breaks the
  capture nor is broken by it;
* every graph shares one memory pool; nothing allocated inside a graph outlives it (outputs land in static buffers),
  so graphs sharing the pool can replay in any order;
* the warm-up runs before each capture leave the RNG as it was (a seeded first utterance equals a later one);
* a capture that fails logs one line and the talker runs eagerly from then on (same results, slower).

The codebook-0 sampling stays eager (per stream: repetition penalty over its own tokens), and one host sync per
frame reads every stream's token (``LeanTalker.read_status``), with the code predictor already queued.

This path needs a CUDA GPU; ``tests/processors/qwen3_tts/test_cuda_graphs.py`` runs the same talker on a CPU with an
emulated graph runner (``testkit/cuda_graph_emulator.py``) and a mocked ``torch.cuda``, and ``scripts/gpu-check.sh``
runs the real thing on a GPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from .lean_loop import CACHE_GRANULE, LeanTalker

log = logging.getLogger("duplex.qwen3_tts")

CAPTURE_LOCK = threading.Lock()  # one CUDA graph capture at a time in this process
BASE_POSITIONS = 1024  # base talker cache on a GPU: a prompt and over a minute of audio (~117 MB per slot, 0.6B bf16)
GPU_MAX_POSITIONS = 4096  # the largest cache a long utterance may get (every slot has it while it lasts)


class CudaGraphRunner:
    """Captures and replays CUDA graphs on one device (see the module docstring for why each step is there).

    ``check_input_liveness``: torch's own check that no tensor a graph reads was freed before a replay (debugging;
    ``scripts/gpu-check.sh`` turns it on)."""

    def __init__(self, device: torch.device | str, *, warmup_runs: int = 2, check_input_liveness: bool = False):
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError(f"CUDA graphs need a CUDA device, not {self.device}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.warmup_runs = warmup_runs
        self.check_input_liveness = check_input_liveness
        self._stream = None  # one capture stream per runner: graphs sharing a pool must be captured on one stream
        self._pool = None

    def capture(self, fn: Callable[[], None]) -> Any:
        """Warm ``fn`` up on the capture stream (lazy inits, cuBLAS workspaces), then record it into a graph."""
        with CAPTURE_LOCK, torch.cuda.device(self.device):
            if self._stream is None:
                self._stream = torch.cuda.Stream(device=self.device)
                self._pool = torch.cuda.graph_pool_handle()
            current = torch.cuda.current_stream(self.device)
            self._stream.wait_stream(current)
            with torch.cuda.stream(self._stream):
                for _ in range(self.warmup_runs):
                    fn()
            current.wait_stream(self._stream)
            graph = torch.cuda.CUDAGraph()
            options: dict[str, Any] = dict(pool=self._pool, stream=self._stream, capture_error_mode="thread_local")
            if self.check_input_liveness:
                options["check_input_liveness"] = True
            with torch.cuda.graph(graph, **options):
                fn()
            return graph

    def replay(self, graph: Any) -> None:
        with torch.cuda.device(self.device):
            graph.replay()


def batch_buckets(max_batch: int) -> list[int]:
    """Batch sizes that get graphs: powers of two below ``max_batch``, and ``max_batch``."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return [*out, max_batch]


class CudaGraphTalker(LeanTalker):
    """``LeanTalker`` whose per-frame steps replay CUDA graphs.

    ``runner``: what captures and replays (default: a ``CudaGraphRunner`` on the model's device; tests pass an
    emulator). ``base_positions``: the base cache that ``warmup`` captures for."""

    def __init__(
        self,
        talker: torch.nn.Module,
        max_batch: int = 1,
        *,
        runner: Any = None,
        base_positions: int = BASE_POSITIONS,
        max_positions: int = GPU_MAX_POSITIONS,
        granule: int = CACHE_GRANULE,
    ):
        device = next(talker.parameters()).device
        runner = runner if runner is not None else CudaGraphRunner(device)
        self.base_positions = min(base_positions, max_positions)
        super().__init__(talker, max_batch=max_batch, attention="masked", max_positions=max_positions,
                         granule=granule, base_positions=self.base_positions)  # fmt: skip
        self.runner = runner
        self.buckets = batch_buckets(max_batch)
        self.overlap = True
        self.graphs: dict[tuple, Any] = {}  # ("talker", cache tier, rows, window) / ("predictor", rows)
        self.captures = 0  # graphs captured so far (warm-up included)
        self.capture_s = 0.0
        self.warmed_up = False
        self.eager_reason: str | None = None  # set when a capture failed: the steps then run eagerly

    # --- graphs ---------------------------------------------------------------------------------------------------
    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def warmup(self) -> int:
        """Capture every graph the base cache can need: the predictor per batch bucket, the talker per batch bucket
        and window. Returns how many graphs were captured."""
        before = self.captures
        with torch.inference_mode():
            self.reserve(self.base_positions)
            for rows in self.buckets:
                self._graph(("predictor", rows), lambda rows=rows: self._predict(rows, static=True))
                for window in self.stack.windows():
                    self._graph(self._talker_key(rows, window), self._talker_fn(rows, window))
        self.warmed_up = True
        return self.captures - before

    def _talker_key(self, rows: int, window: int) -> tuple:
        return ("talker", self.stack.tier, rows, window)

    def _talker_fn(self, rows: int, window: int) -> Callable[[], None]:
        return lambda: self._talker_step(rows, None, window)

    def _graph(self, key: tuple, fn: Callable[[], None]) -> Any:
        """The graph for ``key``, captured now if it is new; None when graphs are off (a capture failed)."""
        graph = self.graphs.get(key)
        if graph is not None or self.eager_reason is not None:
            return graph
        t = time.perf_counter()
        try:
            # warm-up runs execute ``fn`` (sampling draws random numbers): the RNG is left as it was
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                graph = self.runner.capture(fn)
        except Exception as e:
            self.eager_reason = f"{type(e).__name__}: {e}"
            self.graphs.clear()
            log.warning("Qwen3-TTS: CUDA graph capture failed (%s); the talker runs eagerly from now on", e)
            return None
        dt = time.perf_counter() - t
        self.captures += 1
        self.capture_s += dt
        if self.warmed_up:
            log.info("Qwen3-TTS: captured CUDA graph %s during a stream (%.0f ms)", key, 1000 * dt)
        self.graphs[key] = graph
        return graph

    def _drop_stale_graphs(self) -> None:
        """Talker graphs of a cache that is gone point at freed memory: drop them (the base cache's stay)."""
        live = {0, self.stack.tier}
        for key in [k for k in self.graphs if k[0] == "talker" and k[1] not in live]:
            del self.graphs[key]

    def reserve(self, positions: int) -> None:
        # larger caches come in powers of two of the base, so a long utterance reallocates (and recaptures) rarely
        target = max(positions, self.base_positions)
        if target > self.stack.capacity and self.stack.capacity:
            cap = self.stack.capacity
            while cap < target:
                cap *= 2
            target = min(cap, self.stack.max_positions)
        if self.stack.ensure_capacity(target, self.cache_granule):
            self._drop_stale_graphs()

    def release(self, slots: int, positions: int) -> None:
        if self.stack.restore_base(slots, positions):
            self._drop_stale_graphs()

    # --- steps ----------------------------------------------------------------------------------------------------
    def step(self, n: int, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows, window = self.bucket(n), self.stack.window_for(max(starts) + 1)
        with self.timer.span("talker_s", self.timings):
            graph = self._graph(self._talker_key(rows, window), self._talker_fn(rows, window))
            if graph is None:
                self._talker_step(n, starts, window)
            else:
                self.runner.replay(graph)
        return self.hidden_rows[:n], self.logits0[:n]

    def predict(self, n: int) -> torch.Tensor:
        rows = self.bucket(n)
        with self.timer.span("predictor_s", self.timings):
            graph = self._graph(("predictor", rows), lambda: self._predict(rows, static=True))
            if graph is None:
                self._predict(n)
            else:
                self.runner.replay(graph)
        return self.codes[:n]


def build_lean_talker(talker: torch.nn.Module, max_batch: int = 1) -> LeanTalker:
    """The runner for the talker's device: CUDA graphs on a GPU, eager static caches on a CPU."""
    device = next(talker.parameters()).device
    if device.type == "cuda":
        return CudaGraphTalker(talker, max_batch=max_batch)
    return LeanTalker(talker, max_batch=max_batch)
