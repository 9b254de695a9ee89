"""A CUDA graph emulator for CPU tests of the GPU path (``processors/qwen3_tts/cuda_graphs.py``).

A real graph records kernels with raw pointers to every tensor they touch and replays exactly those kernels on
exactly those addresses. So a graph breaks, silently, when:

* a tensor it reads was freed and its memory reused (use-after-free: one session's K/V written into another's);
* the Python code would now read a different tensor (a replaced buffer) than the one baked into the graph;
* a tensor allocated inside the graph is still used after it (another graph sharing the pool overwrites it);
* the captured code waits for the device (``.item()``, ``nonzero``, ``isin``...: the capture fails).

``EmulatedGraphRunner`` has ``CudaGraphRunner``'s interface (``capture(fn)``, ``replay(graph)``). Its capture runs
``fn``'s warm-ups, then runs ``fn`` under a ``TorchDispatchMode`` that records every tensor storage the step uses but
did not create, the storages it creates, and every op that would make the host wait on a GPU; a sync fails the
capture like CUDA would, and storages created inside it must be dead when it ends. Its replay asserts that every
recorded storage is still alive, runs ``fn`` again under the same mode and asserts that it uses no storage the
capture did not record (a real graph would use the old one); then the step's results are the eager ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# ops that make the host wait for the device on CUDA (data-dependent output sizes, or a value read back)
SYNC_OPS = {
    aten._local_scalar_dense.default,  # .item(), int(t), float(t), bool(t)
    aten.item.default,  # the same under inference_mode
    aten.nonzero.default,
    aten.masked_select.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten._unique.default,
    aten._unique2.default,
    aten.isin.Tensor_Tensor,  # sorting path for large test sets: two unique() calls
    aten.isin.Tensor_Scalar,
    aten.isin.Scalar_Tensor,
    aten.equal.default,
    aten.is_nonzero.default,
    aten.repeat_interleave.Tensor,
    aten.bincount.default,
}


def _is_sync(func, args) -> bool:
    if func in SYNC_OPS:
        return True
    if func in (aten.lift_fresh.default, aten.lift_fresh_copy.default):
        return args[0].dim() > 0  # torch.tensor(list) on a GPU: a copy from pageable host memory
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
        indices = args[1] if len(args) > 1 else ()
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)  # boolean masks: nonzero
    return False


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _tensors(obj):
    """The tensors in an op's arguments or results (tuples, lists, dicts of them)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


class StorageRecorder(TorchDispatchMode):
    """Records storages used (not created), storages created, and host-syncing ops, while active."""

    def __init__(self):
        super().__init__()
        self.used: dict[int, tuple[StorageWeakRef, str]] = {}
        self.created: dict[int, StorageWeakRef] = {}
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_sync(func, args):
            self.syncs.append(str(func))
        literal = func in (aten.lift_fresh.default, aten.lift_fresh_copy.default)
        for t in _tensors((args, kwargs)):
            # a Python number turned into a tensor stays on the host on a GPU (a kernel argument): not graph memory
            if t.untyped_storage().nbytes() > 0 and not literal:
                k = _key(t)
                if k not in self.created and k not in self.used:
                    self.used[k] = (StorageWeakRef(t.untyped_storage()), f"{func} {tuple(t.shape)} {t.dtype}")
        out = func(*args, **kwargs)
        for t in _tensors(out):
            if t.untyped_storage().nbytes() > 0:
                k = _key(t)
                if k not in self.used and k not in self.created:
                    self.created[k] = StorageWeakRef(t.untyped_storage())
        return out


class GraphError(AssertionError):
    """What a real CUDA graph would do wrong here (or refuse to capture)."""


@dataclass
class EmulatedGraph:
    fn: Callable[[], None]
    used: dict[int, tuple[StorageWeakRef, str]]
    replays: int = 0
    syncs_at_replay: list[str] = field(default_factory=list)


class EmulatedGraphRunner:
    """Stands in for ``cuda_graphs.CudaGraphRunner`` on a CPU; counts captures and replays."""

    def __init__(self, warmup_runs: int = 2, fail_capture: Callable[[Callable[[], None]], bool] | None = None):
        self.warmup_runs = warmup_runs
        self.captured: list[EmulatedGraph] = []
        self.replays = 0
        self.fail_capture = fail_capture  # tests: make a capture fail like an invalidated CUDA capture

    def capture(self, fn: Callable[[], None]) -> EmulatedGraph:
        for _ in range(self.warmup_runs):
            fn()
        rec = StorageRecorder()
        with rec:
            fn()
        if self.fail_capture is not None and self.fail_capture(fn):
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing (emulated)")
        if rec.syncs:
            raise GraphError(f"operation not permitted when stream is capturing: host sync {sorted(set(rec.syncs))}")
        escaped = [k for k, ref in rec.created.items() if not ref.expired()]
        if escaped:
            raise GraphError(f"{len(escaped)} tensor(s) allocated inside the graph outlive it (pool memory reused)")
        graph = EmulatedGraph(fn, rec.used)
        self.captured.append(graph)
        return graph

    def replay(self, graph: EmulatedGraph) -> None:
        dead = [what for ref, what in graph.used.values() if ref.expired()]
        if dead:
            raise GraphError(f"use after free: the graph reads {len(dead)} freed tensor(s), e.g. {dead[0]}")
        rec = StorageRecorder()
        with rec:
            graph.fn()
        moved = [what for k, (_, what) in rec.used.items() if k not in graph.used]
        if moved:
            raise GraphError(f"stale pointers: the step now uses {len(moved)} tensor(s) the graph never saw, "
                             f"e.g. {moved[0]}")  # fmt: skip
        graph.replays += 1
        graph.syncs_at_replay = rec.syncs
        self.replays += 1
