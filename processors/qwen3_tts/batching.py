"""Batching across sessions: one worker steps every active Qwen3-TTS stream together, so each weight is read once per
step for all of them (decoding is memory-bound: n streams cost far less than n times one stream).

``BatchScheduler(talker, max_batch)`` owns a ``LeanTalker`` (``CudaGraphTalker`` on a GPU) with ``max_batch`` cache
slots and two threads. ``submit(prompt, max_frames, cancel)`` returns a ``BatchedStream`` with ``FrameLoop``'s
interface (``frames(cancel)``, ``hit_budget``, ``cancelled``, ``timings``), so the engine can use it in place of its
own loop (``Qwen3TTSEngine(..., max_streams=n)`` builds one).

A new stream's prefill (its whole prompt through the talker: the costliest single step of a stream) runs on the
prefill thread, beside the batched steps, into KV caches of the stream's own (``LeanTalker.prefill_apart``; on a GPU
on its own CUDA stream): the running streams do not wait for it. Streams are prefilled in arrival order while fewer
than ``max_batch + 1`` are running or prefilled (one is prepared ahead for the next free slot). At the next frame
boundary the step worker copies the prefilled stream into a free slot (``LeanTalker.adopt``: a copy of the prompt's
positions) and it joins the batch.

Per step: prefilled streams join; then the batched code predictor (on a GPU queued before the host waits), one host
sync that reads every stream's codebook-0 token, the stop decisions (end token, budget, cancel, non-finite logits),
frames handed out, one batched talker step and the batched codebook-0 sampling. Streams join and leave only at these
step boundaries; streams from the end move into the gaps, so active streams are always slots ``0..n-1``. Each stream
samples with its own settings (``sampling.py``), so a greedy stream gives its solo output even beside sampled ones
(tests). Batched linears may round differently from M=1 ones in the last bits on some kernels, and with sampling
the streams share the global RNG, so seeded sampled runs differ from unbatched ones.

Slow consumers never hold the batch: the worker hands each frame (16 codes) to the stream's queue and goes on. A
stream whose consumer does not read (a client pacing audio in real time, a stalled socket) keeps its slot and runs
ahead to its end; its codes wait in its queue (128 bytes a frame, at most its frame budget, which its output buffer
already holds), and its slot is free as soon as it is done, sooner than if it were paced. Cancel (or closing the
``frames()`` generator) retires it at the next step.

Memory per slot: the talker's KV cache holds ``2 x layers x kv_heads x head_dim`` values per position and slot
(28 x 8 x 128 for the 0.6B model: 114 KB per position in bf16, 229 KB in fp32), for the positions the longest running
stream needs (prompt + frames, a multiple of 256; on a GPU a base of 1024 positions, ~117 MB per slot in bf16, and up
to 4096 while a long utterance runs). Each cache spans all ``max_batch`` slots, so on a GPU ``max_batch`` x that is
allocated; on a CPU the untouched pages of an empty cache cost nothing. A prefill apart holds its prompt's positions
once more until it joins (~17 MB for a 150-position prompt in bf16).

Failures are loud: a stream whose own setup fails (bad settings, a prompt over the cache cap, its prefill) raises
alone; an exception in a batched step fails every stream in that step, each raising it from ``frames()``, and the
worker goes on with the streams that come next (they start from fresh slots; if the fault persists, they raise too).
Nothing ends silently as cancelled except by ``cancel`` or ``close()``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator

import torch

from processors.tts_engine import TTSError

from .cuda_graphs import build_lean_talker
from .frame_loop import TalkerPrompt
from .lean_loop import LeanTalker, Prefill, StreamSampler, frame_limit, numerical_error

log = logging.getLogger("duplex.qwen3_tts")

_DONE = object()


class BatchWorkerError(TTSError):
    """A batched step failed; the cause is chained."""


class BatchedStream:
    """One stream in a ``BatchScheduler``; iterate ``frames()`` for its codes (LongTensor (16,) per frame)."""

    def __init__(
        self, scheduler: BatchScheduler, prompt: TalkerPrompt, max_frames: int, cancel: threading.Event | None
    ):
        self.scheduler = scheduler
        self.prompt = prompt
        self.max_frames = frame_limit(prompt, max_frames)
        self.cancel_event = cancel or threading.Event()
        self._reader_cancel: threading.Event | None = None  # the event given to ``frames()``
        self.hit_budget = False
        self.cancelled = False
        self.error: BaseException | None = None
        self.timings: dict[str, float] = {"prefill_s": 0.0, "talker_s": 0.0, "predictor_s": 0.0}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._started = False
        # worker-side state
        self.slot = -1
        self.sampler: StreamSampler | None = None
        self.prefilled: Prefill | None = None  # its prompt through the talker, until it joins a slot
        self.frame = 0
        self.prompt_len = prompt.inputs_embeds.shape[1]
        self.out: torch.Tensor | None = None

    def frames(self, cancel: threading.Event | None = None) -> Iterator[torch.Tensor]:
        """Frames as the scheduler makes them, until EOS, the budget or cancel (``cancel`` or the submit-time one).

        After cancel nothing more is delivered, and the worker generates at most one more frame for this stream (it
        checks cancel at every step). Raises when the stream failed (its own setup, a failed batched step, non-finite
        logits, a closed scheduler)."""
        if self._started:
            raise RuntimeError("a BatchedStream can be iterated once")
        self._started = True
        self._reader_cancel = cancel
        self.scheduler._admit(self)
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    self.cancel_event.set()
                if self.cancel_event.is_set() and self.error is None:
                    self.cancelled = True  # frames already queued are dropped: nothing is delivered after cancel
                    break
                try:
                    item = self._queue.get(timeout=0.05)
                except queue.Empty:
                    continue
                if item is _DONE:
                    break
                yield item
        finally:
            self.cancel_event.set()  # a closed generator stops its stream at the next step
        if self.error is not None:
            if isinstance(self.error, (TTSError, ValueError)):
                raise self.error
            raise BatchWorkerError(
                f"Qwen3-TTS batch step failed: {type(self.error).__name__}: {self.error}"
            ) from self.error

    def stop_requested(self) -> bool:
        """Cancelled by either event. The worker reads the reader's event itself, so a cancel stops generation at
        the next step even while the reader is busy elsewhere (decoding the previous chunk, say)."""
        reader = self._reader_cancel
        return self.cancel_event.is_set() or (reader is not None and reader.is_set())

    def _finish(self, error: BaseException | None = None, **flags: bool) -> None:
        if error is not None:
            self.error = error
        for k, v in flags.items():
            setattr(self, k, v)
        self._queue.put(_DONE)


class BatchScheduler:
    """Steps up to ``max_batch`` streams of one talker together on one worker thread, and prefills new streams on
    another beside it. Thread-safe ``submit``."""

    def __init__(self, talker: torch.nn.Module, max_batch: int = 8, threads: int | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.talker = talker
        self.max_batch = max_batch
        # torch threads of its workers: a new thread starts with OpenMP's default (every core), not the process's
        # setting, so each worker sets it; default: the count of the thread that builds the scheduler
        self.threads = threads or torch.get_num_threads()
        self.lean: LeanTalker = build_lean_talker(talker, max_batch=max_batch)
        self._waiting: list[BatchedStream] = []  # submitted, not prefilled yet (arrival order)
        self._ready: list[BatchedStream] = []  # prefilled, joining at the next frame boundary
        self._active: list[BatchedStream] = []  # in slots 0..n-1 (the step worker's)
        self._cv = threading.Condition()
        self._step_lock = threading.Lock()  # the worker's steps and ``warmup`` never use the talker at once
        self._closed = False
        self._threads: list[threading.Thread] = []
        self.steps = 0  # batched steps run (for tests and benchmarks)
        self.frames_out = 0
        self.max_active = 0
        self.prefills = 0  # prompts prefilled beside the batch
        self.failures = 0  # batched steps that raised

    # --- public ---------------------------------------------------------------------------------------------------
    def submit(self, prompt: TalkerPrompt, max_frames: int, cancel: threading.Event | None = None) -> BatchedStream:
        """A stream for ``prompt`` (from ``frame_loop.capture_prompt``); it starts when its ``frames()`` is iterated."""
        if prompt.inputs_embeds.shape[0] != 1:
            raise ValueError("one prompt per stream")
        return BatchedStream(self, prompt, max_frames, cancel)

    def warmup(self) -> int:
        """Prepare the talker (CUDA graphs on a GPU) before the first stream; returns the graphs captured."""
        with self._step_lock:
            return self.lean.warmup()

    def close(self) -> None:
        """Stop the threads; streams still running end as cancelled, streams submitted later raise."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=10)

    def __enter__(self) -> BatchScheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- threads --------------------------------------------------------------------------------------------------
    def _admit(self, stream: BatchedStream) -> None:
        with self._cv:
            if self._closed:
                stream._finish(TTSError("the Qwen3-TTS batch scheduler is closed"))
                return
            self._waiting.append(stream)
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._run, name="qwen3-tts-batch", daemon=True),
                    threading.Thread(target=self._run_prefills, name="qwen3-tts-prefill", daemon=True),
                ]
                for t in self._threads:
                    t.start()
            self._cv.notify_all()

    def _run(self) -> None:
        """The step worker: prefilled streams join at frame boundaries; every active stream steps together."""
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while not self._closed and not self._ready and not self._active:
                            self._cv.wait()
                        if self._closed:
                            break
                        room = self.max_batch - len(self._active)
                        joining, self._ready = self._ready[:room], self._ready[room:]
                    with self._step_lock:
                        try:
                            for s in joining:
                                self._join(s)
                            if self._active:
                                self._step()
                        except Exception as e:
                            self.failures += 1
                            log.exception("Qwen3-TTS: a batched step failed; its %d stream(s) end with the error",
                                          len(self._active))  # fmt: skip
                            self._fail_active(e)
        except BaseException as e:  # the worker itself is going away: nobody may wait forever
            with self._cv:
                self._closed = True
                self._cv.notify_all()
            self._fail_active(e)
            self._fail_waiting(e)
            raise
        with self._cv:
            streams, self._active = self._active, []
            streams += self._ready + self._waiting
            self._ready, self._waiting = [], []
        for s in streams:
            s._finish(cancelled=True)

    def _run_prefills(self) -> None:
        """The prefill worker: new streams' prompts through the talker, in arrival order, beside the batched steps
        (on a GPU on a CUDA stream of its own)."""
        torch.set_num_threads(self.threads)
        device = self.lean.device
        own_stream = torch.cuda.stream(torch.cuda.Stream(device)) if device.type == "cuda" else contextlib.nullcontext()
        current: BatchedStream | None = None
        try:
            with torch.inference_mode(), own_stream:
                while True:
                    with self._cv:
                        while not self._closed and not (self._waiting and self._room_to_prefill()):
                            self._cv.wait()
                        if self._closed:
                            return
                        current = self._waiting.pop(0)
                    self._prefill(current)
                    current = None
        except BaseException as e:
            with self._cv:
                self._closed = True
                self._cv.notify_all()
            if current is not None:
                current._finish(e)
            self._fail_waiting(e)
            raise

    def _room_to_prefill(self) -> bool:
        """Prefill while fewer than ``max_batch + 1`` streams run or wait prefilled (one ready for the next slot)."""
        return len(self._active) + len(self._ready) <= self.max_batch

    def _prefill(self, s: BatchedStream) -> None:
        """Prepare one stream on the prefill thread; a failure here is that stream's alone."""
        if s.stop_requested():
            s._finish(cancelled=True)
            return
        try:
            s.sampler = StreamSampler(s.prompt)  # bad settings raise here, before any work
            s.max_frames = self.lean.frames_that_fit(s.prompt_len, s.max_frames)
            t = time.perf_counter()
            s.prefilled = self.lean.prefill_apart(s.prompt.inputs_embeds)
            if s.prefilled.ready is not None:
                s.prefilled.ready.synchronize()  # done before it is handed over: the batch never waits for it
            s.timings["prefill_s"] += time.perf_counter() - t
        except Exception as e:
            s.prefilled = None
            s._finish(e)
            return
        self.prefills += 1
        with self._cv:
            if self._closed:
                s.prefilled = None
                s._finish(cancelled=True)
                return
            self._ready.append(s)
            self._cv.notify_all()

    def _fail_active(self, error: BaseException) -> None:
        """Every stream of the failed step raises ``error``; the slots start clean for the streams that follow."""
        streams, self._active = self._active, []
        for s in streams:
            self._done(s, error)
        try:
            for slot in range(self.max_batch):
                self.lean.clear_slot(slot)
                self.lean.free_slot(slot)
            self.lean.release(0, 0)
        except Exception:  # a dead device fails here too; the next streams will say so loudly
            log.exception("Qwen3-TTS: could not reset the batch slots after a failed step")
        with self._cv:
            self._cv.notify_all()  # the slots are free: the prefill worker may go on

    def _fail_waiting(self, error: BaseException) -> None:
        """Streams not in a slot yet (waiting or prefilled) raise ``error``."""
        with self._cv:
            streams = self._waiting + self._ready
            self._waiting, self._ready = [], []
        for s in streams:
            s._finish(error)

    def _done(self, s: BatchedStream, error: BaseException | None = None, **flags: bool) -> None:
        try:
            self.lean.timer.resolve(wait=True)  # its timings are final before its consumer reads them
        except Exception:  # a failed device: the stream still ends, with its error
            log.debug("Qwen3-TTS: timings unavailable", exc_info=True)
        s._finish(error, **flags)

    def _join(self, s: BatchedStream) -> None:
        """Bring a prefilled stream into the next free slot (a copy of its prompt's positions); a failure here is
        that stream's alone."""
        lean = self.lean
        slot = len(self._active)
        prefilled, s.prefilled = s.prefilled, None
        if s.stop_requested():
            self._done(s, cancelled=True)
            return
        try:
            lean.join(slot, s.sampler)
            with lean.timer.span("prefill_s", s.timings):
                lean.adopt(slot, prefilled, s.prompt_len + s.max_frames + 1)
                lean.pos[slot] = s.prompt_len  # position of the stream's first talker step
                lean.sample_talker(slot, 1)
            s.out = torch.empty(s.max_frames + 1, lean.num_code_groups, dtype=torch.long, device=lean.device)
        except Exception as e:
            lean.free_slot(slot)
            self._done(s, e)
            return
        s.slot = slot
        self._active.append(s)
        self.max_active = max(self.max_active, len(self._active))

    def _remove(self, gone: list[BatchedStream]) -> None:
        """Drop streams that ended (already marked); streams beyond the new count move into the freed slots, so
        slots stay 0..n-1 (a move copies one stream's KV cache and state; the others stay where they are)."""
        if not gone:
            return
        keep = [s for s in self._active if s not in gone]
        n = len(keep)
        holes = sorted(s.slot for s in gone if s.slot < n)
        movers = sorted((s for s in keep if s.slot >= n), key=lambda s: s.slot)  # as many as holes
        lean = self.lean
        for s in gone:
            if s.error is not None:
                lean.clear_slot(s.slot)  # it may have left NaN behind
        for hole, s in zip(holes, movers):
            lean.move_slot(s.slot, hole, s.prompt_len + s.frame)
            s.slot = hole
        for slot in range(n, n + len(gone)):
            lean.free_slot(slot)
        self._active = sorted(keep, key=lambda s: s.slot)
        lean.release(n, max((s.prompt_len + s.max_frames + 1 for s in keep), default=0))
        for s in gone:
            self._done(s, s.error, hit_budget=s.hit_budget, cancelled=s.cancelled)
        with self._cv:
            self._cv.notify_all()  # room for the prefill worker

    def _step(self) -> None:
        lean = self.lean
        active = self._active
        n = len(active)
        # the code predictor for this frame, queued before the host waits (a GPU keeps working meanwhile)
        queued = lean.overlap and any(s.frame < s.max_frames and not s.stop_requested() for s in active)
        if queued:
            with lean.timer.span("predictor_s", *[s.timings for s in active]):
                lean.predict(n)
        status = lean.read_status(n)  # the one host sync per step
        lean.timer.resolve()
        gone = []
        for s, (token, fault) in zip(active, status):
            if fault:
                s.error = numerical_error(s.frame)
            elif token == s.sampler.eos:
                pass
            elif s.frame >= s.max_frames:
                s.hit_budget = True
            elif s.stop_requested():
                s.cancelled = True
            else:
                continue
            gone.append(s)
        self._remove(gone)
        active = self._active
        n = len(active)
        if n == 0:
            return
        if not queued:
            with lean.timer.span("predictor_s", *[s.timings for s in active]):
                lean.predict(n)
        codes = lean.codes
        for b, s in enumerate(active):
            s.out[s.frame].copy_(codes[b])
            s._queue.put(s.out[s.frame])
        self.frames_out += n
        # streams cancelled while their frame was handed out stop here, like the single-stream loop
        cancelled = [s for s in active if s.stop_requested()]
        for s in cancelled:
            s.cancelled = True
        self._remove(cancelled)
        active = self._active
        n = len(active)
        if n == 0:
            return
        with lean.timer.span("talker_s", *[s.timings for s in active]):
            lean.next_inputs(n, [s.sampler.text_row(s.frame) for s in active])
            lean.step(n, [s.prompt_len + s.frame for s in active])  # == lean.pos[:n]
            lean.pos[:n].add_(1)
            lean.sample_talker(0, n)
        for s in active:
            s.frame += 1
        self.steps += 1
