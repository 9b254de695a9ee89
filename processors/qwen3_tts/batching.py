"""Batching across sessions: one worker steps every active Qwen3-TTS stream together, so each weight is read once per
step for all of them (decoding is memory-bound: n streams cost far less than n times one stream).

``BatchScheduler(talker, max_batch)`` owns a ``LeanTalker`` with ``max_batch`` cache slots and a worker thread.
``submit(prompt, max_frames, cancel)`` returns a ``BatchedStream`` with ``FrameLoop``'s interface (``frames(cancel)``,
``hit_budget``, ``cancelled``, ``timings``), so the engine can use it in place of its own loop
(``Qwen3TTSEngine(..., scheduler=BatchScheduler(...))``).

Per step: new streams are prefilled one by one into free slots (their prompts differ in length; a prefill pauses the
batch for its duration), then codebook 0 of every active stream -> one batched 15-step code predictor -> frames are
handed out -> one batched talker step (each stream attends to its own prefix). Streams that stop (EOS, budget,
cancel) leave at the step boundary and streams from the end move into the gaps, so active streams are always
slots ``0..n-1``. Greedy output per stream equals the unbatched lean loop's (tests); batched linears round differently
from M=1 ones in the last bits, and with sampling the streams share the global RNG, so seeded sampled runs differ
from unbatched ones.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator

import torch

from .frame_loop import TalkerPrompt
from .lean_loop import LeanTalker, StreamSampler, build_lean_talker, frame_limit

log = logging.getLogger("duplex.qwen3_tts")

_DONE = object()


class BatchedStream:
    """One stream in a ``BatchScheduler``; iterate ``frames()`` for its codes (LongTensor (16,) per frame)."""

    def __init__(
        self, scheduler: BatchScheduler, prompt: TalkerPrompt, max_frames: int, cancel: threading.Event | None
    ):
        self.scheduler = scheduler
        self.prompt = prompt
        self.max_frames = frame_limit(prompt, max_frames)
        self.cancel_event = cancel or threading.Event()
        self.hit_budget = False
        self.cancelled = False
        self.error: BaseException | None = None
        self.timings: dict[str, float] = {}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._started = False
        # worker-side state
        self.slot = -1
        self.sampler: StreamSampler | None = None
        self.frame = 0
        self.prompt_len = prompt.inputs_embeds.shape[1]
        self.token: torch.Tensor | None = None
        self.out: torch.Tensor | None = None

    def frames(self, cancel: threading.Event | None = None) -> Iterator[torch.Tensor]:
        """Frames as the scheduler makes them, until EOS, the budget or cancel (``cancel`` or the submit-time one).

        After cancel nothing more is delivered, and the worker generates at most one more frame for this stream (it
        checks cancel at every step)."""
        if self._started:
            raise RuntimeError("a BatchedStream can be iterated once")
        self._started = True
        self.scheduler._admit(self)
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    self.cancel_event.set()
                if self.cancel_event.is_set():
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
            raise RuntimeError("batched Qwen3-TTS worker failed") from self.error

    def _finish(self, **flags: bool) -> None:
        for k, v in flags.items():
            setattr(self, k, v)
        self._queue.put(_DONE)


class BatchScheduler:
    """Steps up to ``max_batch`` streams of one talker together on one worker thread. Thread-safe ``submit``."""

    def __init__(self, talker: torch.nn.Module, max_batch: int = 8, threads: int | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.talker = talker
        self.max_batch = max_batch
        self.threads = threads
        self.lean: LeanTalker = build_lean_talker(talker, max_batch=max_batch)
        self._waiting: list[BatchedStream] = []
        self._active: list[BatchedStream] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # batched steps run (for tests and benchmarks)
        self.frames_out = 0
        self.max_active = 0

    # --- public ---------------------------------------------------------------------------------------------------
    def submit(self, prompt: TalkerPrompt, max_frames: int, cancel: threading.Event | None = None) -> BatchedStream:
        """A stream for ``prompt`` (from ``frame_loop.capture_prompt``); it starts when its ``frames()`` is iterated."""
        if prompt.inputs_embeds.shape[0] != 1:
            raise ValueError("one prompt per stream")
        return BatchedStream(self, prompt, max_frames, cancel)

    def close(self) -> None:
        """Stop the worker; streams still running end as cancelled."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> BatchScheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- worker ---------------------------------------------------------------------------------------------------
    def _admit(self, stream: BatchedStream) -> None:
        with self._cv:
            if self._closed:
                stream._finish(cancelled=True)
                return
            self._waiting.append(stream)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="qwen3-tts-batch", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while not self._closed and not self._waiting and not self._active:
                            self._cv.wait()
                        if self._closed:
                            break
                        room = self.max_batch - len(self._active)
                        joining, self._waiting = self._waiting[:room], self._waiting[room:]
                    for s in joining:
                        self._prefill(s)
                    if self._active:
                        self._step()
        except BaseException as e:
            log.exception("Qwen3-TTS batch worker failed")
            with self._cv:
                streams = self._active + self._waiting
                self._active, self._waiting = [], []
                self._closed = True
            for s in streams:
                s.error = e
                s._finish()
            return
        for s in self._active + self._waiting:
            s._finish(cancelled=True)

    def _prefill(self, s: BatchedStream) -> None:
        lean = self.lean
        t = time.perf_counter()
        s.slot = len(self._active)
        s.sampler = StreamSampler(s.prompt, s.max_frames, lean.device)
        s.out = torch.empty(s.max_frames + 1, lean.num_code_groups, dtype=torch.long, device=lean.device)
        hidden, logits = lean.prefill(s.slot, s.prompt.inputs_embeds, s.prompt_len + s.max_frames + 1)
        self._hidden_rows()[s.slot].copy_(hidden[0])
        lean.pos[s.slot] = s.prompt_len  # position of the stream's first talker step
        s.token = s.sampler.talker_token(logits)
        s.timings = {"prefill_s": time.perf_counter() - t, "talker_s": 0.0, "predictor_s": 0.0}
        self._active.append(s)
        self.max_active = max(self.max_active, len(self._active))

    def _hidden_rows(self) -> torch.Tensor:
        """The talker's last hidden state per slot (the predictor's input)."""
        h = getattr(self, "_hidden", None)
        if h is None:
            lean = self.lean
            h = self._hidden = torch.empty(self.max_batch, lean.hidden, dtype=lean.dtype, device=lean.device)
            self._tok = torch.zeros(self.max_batch, dtype=torch.long, device=lean.device)
        return h

    def _stopped(self, s: BatchedStream) -> bool:
        if int(s.token) == s.sampler.eos:
            s._finish()
            return True
        if s.frame >= s.max_frames:
            s._finish(hit_budget=True)
            return True
        if s.cancel_event.is_set():
            s._finish(cancelled=True)
            return True
        return False

    def _remove(self, gone: list[BatchedStream]) -> None:
        """Drop finished streams; streams beyond the new count move into the freed slots, so slots stay 0..n-1
        (a move copies one stream's KV cache; the others stay where they are)."""
        if not gone:
            return
        keep = [s for s in self._active if s not in gone]
        n = len(keep)
        holes = sorted(s.slot for s in gone if s.slot < n)
        movers = [s for s in keep if s.slot >= n]  # as many as holes
        hidden, lean = self._hidden_rows(), self.lean
        for hole, s in zip(holes, movers):
            lean.stack.copy_slot(s.slot, hole, s.prompt_len + s.frame)
            hidden[hole].copy_(hidden[s.slot])
            lean.pos[hole] = lean.pos[s.slot]
            # this frame's codes and their embeddings (the next talker input sums them when removal follows the
            # code predictor)
            lean.code_emb[hole].copy_(lean.code_emb[s.slot])
            lean.codes[hole].copy_(lean.codes[s.slot])
            s.slot = hole
        self._active = sorted(keep, key=lambda s: s.slot)

    def _step(self) -> None:
        lean = self.lean
        self._remove([s for s in self._active if self._stopped(s)])
        n = len(self._active)
        if n == 0:
            return
        active = self._active
        tokens = self._tok[:n]
        for b, s in enumerate(active):
            tokens[b : b + 1].copy_(s.token)

        t = time.perf_counter()
        codes = lean.predict(n, self._hidden_rows()[:n], tokens, [s.sampler for s in active])
        t_pred = time.perf_counter() - t
        for b, s in enumerate(active):
            s.out[s.frame].copy_(codes[b])
            s._queue.put(s.out[s.frame])
            s.timings["predictor_s"] += t_pred / n
        self.frames_out += n
        # streams cancelled while their frame was handed out stop here, like the single-stream loop
        cancelled = [s for s in active if s.cancel_event.is_set()]
        for s in cancelled:
            s._finish(cancelled=True)
        self._remove(cancelled)
        active = self._active
        n = len(active)
        if n == 0:
            return
        t = time.perf_counter()
        lean.next_inputs(n, [s.sampler.text_row(s.frame) for s in active])
        starts = [s.prompt_len + s.frame for s in active]  # == lean.pos[:n]
        hidden, logits = lean.step(n, starts)
        self._hidden_rows()[:n].copy_(hidden)
        lean.pos[:n].add_(1)
        for b, s in enumerate(active):
            s.token = s.sampler.talker_token(logits[b : b + 1])
            s.frame += 1
        t_talk = time.perf_counter() - t
        for s in active:
            s.timings["talker_s"] += t_talk / n
        self.steps += 1
