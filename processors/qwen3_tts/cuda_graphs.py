"""GPU path for the lean loop: the same ``LeanTalker`` steps, replayed as CUDA graphs (bf16, static caches).

Why: on a GPU one frame is ~16 x (5 or 28 layers x ~15 kernels) small launches, so launch latency, not bandwidth,
bounds a frame; faster-qwen3-tts reaches RTF 0.2-0.26 (compute/audio) on RTX 4090/H100 only by capturing the
per-frame work in CUDA graphs. Here, per batch size (and sub-talker sampling settings), two graphs are captured from
the eager code paths of ``lean_loop.LeanTalker``, unchanged:

* the talker step: ``masked`` attention (one SDPA over the whole static cache with a ``pos``-derived mask; RoPE rows
  gathered by ``pos``), so nothing in it depends on a Python int that changes per frame;
* the code predictor's 15 steps including sub-talker sampling (HF's temperature / top-k / top-p processors and
  ``torch.multinomial`` are shape-static; CUDA RNG is graph-safe).

The codebook-0 sampling stays eager (its repetition penalty reads a growing token list), and one host sync per frame
reads the token for the EOS check. Talker graphs are recaptured when the cache grows (positions come in steps of
``cache_granule``). Prefill stays eager (one per utterance, variable length). Everything a graph reads or writes
across replays (caches, ``emb_sum``, ``pos``, ``codes``, ``code_emb``, ``logits0``, the workspaces) is allocated
eagerly, outside the graphs; only their temporaries live in the graphs' private pools.

NOT RUN HERE: this machine has no GPU. ``tests/qwen3_tts/test_lean_loop.py`` runs the shared pieces (masked attention,
position-gathered RoPE, batched slots) on CPU and the graph tests only where CUDA is present (``-m gpu``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .lean_loop import LeanTalker, StreamSampler


class CudaGraphTalker(LeanTalker):
    """``LeanTalker`` whose per-frame steps replay CUDA graphs."""

    cache_granule = 1024

    def __init__(self, talker: torch.nn.Module, max_batch: int = 1, warmup: int = 2):
        if not torch.cuda.is_available() or next(talker.parameters()).device.type != "cuda":
            raise RuntimeError("CudaGraphTalker needs the model on a CUDA device")
        super().__init__(talker, max_batch=max_batch, attention="masked")
        self.warmup = warmup
        self._talker_graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._pred_graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._in_hidden = torch.zeros(max_batch, self.hidden, dtype=self.dtype, device=self.device)
        self._in_tok = torch.zeros(max_batch, dtype=torch.long, device=self.device)
        self._out_hidden = torch.zeros(max_batch, self.hidden, dtype=self.dtype, device=self.device)

    def _capture(self, fn: Callable[[], None]) -> torch.cuda.CUDAGraph:
        """Warm up ``fn`` on a side stream (lazy inits, cuBLAS workspaces), then capture it."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # a private memory pool: graphs may be recaptured and replayed in any order
            fn()
        return graph

    # --- talker step --------------------------------------------------------------------------------------------
    def step(self, n: int, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        key = (n, self.stack.capacity)
        graph = self._talker_graphs.get(key)
        if graph is None:
            if any(k[1] != self.stack.capacity for k in self._talker_graphs):
                self._talker_graphs.clear()  # the caches were reallocated: old graphs point at freed memory

            def fn():  # idempotent: the warm-up runs write the same cache rows the replay writes
                hidden, logits = LeanTalker.step(self, n, starts)
                self._out_hidden[:n].copy_(hidden)
                if logits.data_ptr() != self.logits0.data_ptr():
                    self.logits0[:n].copy_(logits)

            graph = self._capture(fn)
            self._talker_graphs[key] = graph
        graph.replay()
        return self._out_hidden[:n], self.logits0[:n]

    # --- code predictor -----------------------------------------------------------------------------------------
    def predict(
        self, n: int, hidden: torch.Tensor, token0: torch.Tensor, samplers: list[StreamSampler]
    ) -> torch.Tensor:
        self._in_hidden[:n].copy_(hidden)
        self._in_tok[:n].copy_(token0)
        key = (n, tuple(s.sub_key for s in samplers))
        graph = self._pred_graphs.get(key)
        if graph is None:
            graph = self._capture(lambda: LeanTalker.predict(self, n, self._in_hidden[:n], self._in_tok[:n], samplers))
            self._pred_graphs[key] = graph
        graph.replay()
        return self.codes[:n]
