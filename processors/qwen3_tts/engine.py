"""``Qwen3TTSEngine``: streaming Qwen3-TTS-12Hz Base with voice cloning. Plain Python, no pipecat.

Upstream ``qwen-tts`` returns a waveform only when the whole utterance is done. Here the talker/code-predictor loop
runs one 80 ms codec frame at a time (``frame_loop.py``) and new frames are decoded exactly and incrementally
(``codec_stream.py``: the whole-sequence decode at any length, where upstream windows utterances past 300 frames),
so the first audio leaves after the first ``first_chunk_frames`` frames and generation stops within one frame of
``cancel`` being set.

Concurrency: upstream's prompt building is not re-entrant (the frame loop patches the talker briefly), so it runs
under the engine lock, as does voice creation. Frames are made apart from the consumer, and the consumer (the
thread iterating ``stream``) decodes them to audio, so a consumer that reads slowly (a client pacing audio out in
real time) never holds up another stream:

* ``max_streams=n`` (what ``duplex serve`` and the catalogue load, n = 10 by default): a
  ``batching.BatchScheduler`` steps up to n streams together, one more stream waiting for a free slot is prefilled
  beside the batch;
* ``max_streams=0``: one stream generates at a time, on a thread of its own that holds the engine lock while it
  generates, never while the consumer is away; its frames wait in a queue for the consumer.

Either way cancel (or closing the generator) stops generation within one frame.

On a GPU the frame loop replays CUDA graphs (``cuda_graphs.py``); call ``warmup()`` once after loading so they are
captured before the first request rather than during it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from processors.audio import (
    REFERENCE_MAX_SECONDS,
    REFERENCE_MIN_SECONDS,
    REFERENCE_TAIL_SILENCE_SECONDS,
    TTS_SAMPLE_RATE,
    AudioError,
    AudioSource,
    check_duration,
    load_audio,
)
from processors.compat import ensure_qwen_tts_importable
from processors.tts_engine import (
    MAX_TEXT_CHARS,
    TTSError,
    VoiceError,
    VoiceSpec,
    collect,
    resolve_language,
    validate_text,
)

from .batching import BatchScheduler
from .codec_stream import StreamingCodecDecoder
from .cuda_graphs import build_lean_talker
from .frame_loop import FrameLoop, capture_prompt
from .lean_loop import LeanFrameLoop
from .options import DEFAULT_MODEL, SUPPORTED_LANGUAGES
from .precision import QUANTIZE_MODES, prepare_talker
from .voice import VoicePrompt, VoicePromptCache, prompt_key, to_model_device

log = logging.getLogger("duplex.qwen3_tts")

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")


REQUIRED_FILES = ("config.json", "model.safetensors")  # what a usable model directory or cached snapshot holds


_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class _AnyEvent:
    """Set when any of its events is (what the frame loops read as ``cancel``)."""

    def __init__(self, *events: threading.Event | None):
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


class ModelUnavailableError(TTSError):
    """The model cannot be loaded (not cached and no network, bad path, corrupt files)."""


@dataclass
class StreamStats:
    """What the last ``stream`` did; read it after the generator finishes."""

    frames: int = 0
    chunks: int = 0
    samples: int = 0
    first_chunk_s: float | None = None  # time from the call to the first chunk
    total_s: float = 0.0
    frame_budget: int = 0
    hit_budget: bool = False
    cancelled: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def frame_budget(text: str, floor: int = 40, per_char: float = 2.0, per_cjk_char: float = 6.0) -> int:
    """Runaway guard: the most frames a text may take. Real speech runs ~0.8 frames per Latin character and ~3 per
    CJK character; this allows 2.5x that plus a floor, so it only stops generations that missed their end token."""
    cjk = len(_CJK.findall(text))
    return int(floor + per_char * (len(text) - cjk) + per_cjk_char * cjk)


def pick_device(device: str | None, dtype: str | torch.dtype | None) -> tuple[str, torch.dtype]:
    """CUDA + bfloat16 when a GPU is present, else CPU + float32, unless told otherwise."""
    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if isinstance(dtype, str):
        dtype = {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }[dtype.lower()]
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return str(device), dtype


class Qwen3TTSEngine:
    """Streaming voice-cloning TTS on qwen-tts's own model classes (see module docstring for thread-safety)."""

    name = "qwen3"
    sample_rate = TTS_SAMPLE_RATE

    def __init__(
        self,
        tts_model: Any,
        model_id: str,
        *,
        first_chunk_frames: int = 1,
        chunk_frames: int = 4,
        cache_dir: str | Path | None = None,
        max_text_chars: int = MAX_TEXT_CHARS,
        loop: str = "lean",
        threads: int | None = None,
        scheduler: Any = None,
        max_streams: int = 0,
    ):
        if first_chunk_frames < 1 or chunk_frames < 1:
            raise ValueError("first_chunk_frames and chunk_frames must be >= 1")
        if loop not in ("lean", "reference"):
            raise ValueError("loop must be 'lean' (static caches, lean_loop.py) or 'reference' (frame_loop.py)")
        self.loop = loop
        # torch threads in every thread that runs this engine's work (a new thread starts with OpenMP's default,
        # every core, whatever the process set; set here, a busy shared CPU is not oversubscribed); None: the count
        # of the thread that builds the engine
        self.threads = threads or torch.get_num_threads()
        self._lean = None  # LeanTalker, built on first use
        if max_streams < 0:
            raise ValueError("max_streams must be >= 0 (0: one stream at a time, unbatched)")
        if scheduler is None and max_streams > 0:
            scheduler = BatchScheduler(tts_model.model.talker, max_batch=max_streams, threads=self.threads)
        # batching.BatchScheduler: streams of this engine run concurrently, stepped together (module docstring)
        self.scheduler = scheduler
        self.tts_model = tts_model  # qwen_tts.Qwen3TTSModel
        self.model_id = model_id
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames
        self.max_text_chars = max_text_chars
        self.voices = VoicePromptCache(Path(cache_dir) if cache_dir else None)
        self._lock = threading.Lock()
        self.last_stats = StreamStats()
        model = tts_model.model
        self.device = next(model.talker.parameters()).device
        self.dtype = next(model.talker.parameters()).dtype
        self.codec_decoder = model.speech_tokenizer.model.decoder
        supported = model.get_supported_languages() or []
        self._languages = (
            tuple(lang for lang in SUPPORTED_LANGUAGES if lang.lower() in {s.lower() for s in supported})
            or SUPPORTED_LANGUAGES
        )

    # --- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = DEFAULT_MODEL,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        quantize: str | None = None,
        decoder_dtype: str | torch.dtype | None = None,
        **options: Any,
    ) -> Qwen3TTSEngine:
        """Load from a Hugging Face hub id (downloaded into the HF cache, with progress) or a local directory.

        ``quantize``: None, "int8" (weight-only, bf16 activations where supported) or "int8-dynamic" (torch.ao, fp32);
        see ``precision.py``. With ``quantize="int8"`` and no dtype the model loads in bf16 where supported.
        ``decoder_dtype``: the codec decoder's dtype when it should differ from ``dtype`` (bf16 halves its cost on
        AMX CPUs; see docs/benchmarks.md for its drift)."""
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, not {quantize!r}")
        if quantize and pick_device(device, dtype)[0].startswith("cuda"):
            # refused before loading (the int8 kernels are CPU-only), not after minutes of loading
            raise ValueError(
                f"quantize={quantize!r} is CPU-only (fbgemm, _weight_int8pack_mm); on a GPU use dtype=bfloat16"
            )
        from processors.hub import HubModelError, fetch

        try:  # at once when it cannot be had: before the hub client's minute of retries, and before importing qwen_tts
            path = fetch(model, what="the Qwen3-TTS model", required=REQUIRED_FILES)
        except HubModelError as e:
            raise ModelUnavailableError(str(e)) from None
        ensure_qwen_tts_importable()
        from qwen_tts import Qwen3TTSModel

        if quantize == "int8" and dtype is None:
            from .precision import bf16_supported

            dtype = torch.bfloat16 if bf16_supported() else None
        device, torch_dtype = pick_device(device, dtype)
        log.info("Qwen3-TTS: loading %s on %s as %s", model, device, str(torch_dtype).replace("torch.", ""))
        t0 = time.perf_counter()
        try:
            tts_model = Qwen3TTSModel.from_pretrained(str(path), device_map=device, dtype=torch_dtype)
        except Exception as e:  # missing or corrupt files, safetensors errors...
            raise ModelUnavailableError(
                f"cannot load the Qwen3-TTS model {str(model)!r}: {path} is not a complete Qwen3-TTS model "
                f"({type(e).__name__}: {e})"
            ) from e
        tts_model.model.eval()
        prepare_talker(tts_model.model.talker, quantize)  # int8 weights, or bf16 weights packed for this CPU
        if decoder_dtype is not None:
            tts_model.model.speech_tokenizer.model.decoder.to(pick_device(device, decoder_dtype)[1])
        log.info("Qwen3-TTS: loaded in %.1f s", time.perf_counter() - t0)
        model_id = str(Path(model).resolve()) if Path(str(model)).exists() else str(model)
        suffix = (f"|{quantize}" if quantize else "") + (f"|decoder {decoder_dtype}" if decoder_dtype else "")
        return cls(tts_model, f"{model_id}|{torch_dtype}{suffix}", **options)

    @property
    def languages(self) -> tuple[str, ...]:
        return self._languages

    @property
    def max_streams(self) -> int:
        """Streams generated together (0: one at a time)."""
        return self.scheduler.max_batch if self.scheduler is not None else 0

    def close(self) -> None:
        """Stop the batch scheduler's threads (running streams end as cancelled); the engine is unusable after."""
        if self.scheduler is not None:
            self.scheduler.close()

    def warmup(self) -> dict[str, float]:
        """Prepare generation before the first request: on a GPU, capture every CUDA graph the frame loop needs
        (``cuda_graphs.py``), so no capture pauses a live stream or races other threads' GPU work; on a CPU it only
        builds the lean loop's runner (cheap). Call it once after loading; safe to call again.

        Returns what it did: graphs captured and seconds taken."""
        t = time.perf_counter()
        if self.loop == "reference" and self.scheduler is None:
            return {"graphs": 0, "seconds": 0.0}
        if self.scheduler is not None:
            graphs = self.scheduler.warmup()
        else:
            with self._lock:
                if self._lean is None:
                    self._lean = build_lean_talker(self.tts_model.model.talker)
                graphs = self._lean.warmup()
        took = time.perf_counter() - t
        if graphs:
            log.info("Qwen3-TTS: captured %d CUDA graphs in %.1f s", graphs, took)
        return {"graphs": graphs, "seconds": took}

    # --- voices ------------------------------------------------------------------------------------
    def create_voice(
        self,
        ref_audio: AudioSource,
        ref_text: str | None = None,
        x_vector_only: bool = False,
        *,
        cache_dir: str | Path | None = None,
    ) -> VoicePrompt:
        """A voice prompt from a 3-30 s reference clip (any rate, WAV/FLAC/OGG/MP3/WebM...).

        With a transcript the prompt uses in-context learning (better cloning); without one, or with
        ``x_vector_only=True``, only the speaker embedding. 0.5 s of silence is appended to the reference
        before encoding, so its last phoneme does not leak into the first generated word.
        """
        try:
            audio = load_audio(ref_audio)
            check_duration(audio, REFERENCE_MIN_SECONDS, REFERENCE_MAX_SECONDS, "reference audio")
        except AudioError as e:
            raise VoiceError(str(e)) from e
        ref_text = (ref_text or "").strip() or None
        if ref_text is not None:
            ref_text = validate_text(ref_text, self.max_text_chars)
        x_vector_only = bool(x_vector_only or ref_text is None)
        tail = np.zeros(int(round(REFERENCE_TAIL_SILENCE_SECONDS * audio.sample_rate)), dtype=np.float32)
        samples = np.concatenate([audio.samples, tail])
        key = prompt_key(self.model_id, samples, audio.sample_rate, ref_text, x_vector_only)
        directory = Path(cache_dir) if cache_dir else None
        cached = self.voices.get(key, directory)
        if cached is not None:
            return cached
        with self._lock:
            items = self.tts_model.create_voice_clone_prompt(
                ref_audio=(samples, audio.sample_rate), ref_text=ref_text, x_vector_only_mode=x_vector_only
            )
        item = items[0]
        item.ref_spk_embedding = item.ref_spk_embedding.detach().cpu()
        if item.ref_code is not None:
            item.ref_code = item.ref_code.detach().cpu()
        vp = VoicePrompt(key=key, prompt=item, reference_seconds=audio.seconds)
        self.voices.put(vp, directory)
        log.info("Qwen3-TTS: voice %s (%s, %.1f s reference)", key[:8], vp.mode, audio.seconds)
        return vp

    def load_voice(self, spec: VoiceSpec) -> VoicePrompt:
        if spec.reference_audio is None:
            raise VoiceError(f"voice {spec.id!r} has no reference audio; Qwen3-TTS Base clones voices from a reference")
        return self.create_voice(spec.reference_audio, spec.transcript, spec.x_vector_only, cache_dir=spec.cache_dir)

    # --- synthesis ---------------------------------------------------------------------------------
    def _decoder_for(self, voice: VoicePrompt) -> StreamingCodecDecoder:
        """A fresh decoder state; in ICL mode primed with the reference codes (computed once per voice)."""
        if voice.prompt.ref_code is None:
            return StreamingCodecDecoder(self.codec_decoder)
        primed = voice._primed_decoder
        if primed is None or primed.decoder is not self.codec_decoder:
            primed = StreamingCodecDecoder(self.codec_decoder)
            primed.decode(voice.prompt.ref_code.to(self.device))
            voice._primed_decoder = primed
        return primed.fork()

    def stream(
        self,
        text: str,
        voice: VoicePrompt,
        language: str = "English",
        cancel: threading.Event | None = None,
        *,
        first_chunk_frames: int | None = None,
        chunk_frames: int | None = None,
        max_frames: int | None = None,
        **generation: Any,
    ) -> Iterator[np.ndarray]:
        """Float32 mono chunks at 24 kHz while the model generates.

        ``generation``: upstream's sampling options (do_sample, top_k, top_p, temperature, repetition_penalty,
        subtalker_*, max_new_tokens); unset ones take the model's generate_config defaults. ``max_frames`` overrides
        the runaway guard's text-length budget. Validation errors are raised at the call, before any frame.
        """
        text = validate_text(text, self.max_text_chars)
        lang = resolve_language(language, self.languages)
        if not isinstance(voice, VoicePrompt):
            raise VoiceError(f"voice must be a VoicePrompt from create_voice/load_voice, got {type(voice).__name__}")
        first = first_chunk_frames or self.first_chunk_frames
        every = chunk_frames or self.chunk_frames
        if first < 1 or every < 1:
            raise ValueError("first_chunk_frames and chunk_frames must be >= 1")
        budget = max_frames if max_frames is not None else frame_budget(text)
        return self._stream(text, voice, "Auto" if lang == "auto" else lang, cancel, first, every, budget, generation)

    def _stream(self, text, voice, lang, cancel, first, every, budget, generation) -> Iterator[np.ndarray]:
        stats = StreamStats(frame_budget=budget)
        t0 = time.perf_counter()
        self.last_stats = stats
        torch.set_num_threads(self.threads)  # the consumer's thread decodes
        try:
            with self._lock:
                prompt = capture_prompt(
                    self.tts_model,
                    text=text,
                    language=lang,
                    voice_clone_prompt=[to_model_device(voice, self.device, self.dtype)],
                    **generation,
                )
                decoder = self._decoder_for(voice)
            loop = self._frame_loop(prompt, budget)
            cancelled = lambda: cancel is not None and cancel.is_set()
            frames = loop.frames(cancel) if self.scheduler is not None else self._generate_apart(loop, cancel)
            with contextlib.closing(frames):
                pending: list[torch.Tensor] = []
                t_gen = t_dec = 0.0
                while True:
                    t_mark = time.perf_counter()
                    codes = next(frames, None)
                    t_gen += time.perf_counter() - t_mark
                    if codes is not None:
                        stats.frames += 1
                        pending.append(codes)
                        if len(pending) < (first if stats.chunks == 0 else every):
                            continue
                    if not pending or cancelled():
                        break
                    t_mark = time.perf_counter()
                    chunk = self._decode(decoder, pending)
                    t_dec += time.perf_counter() - t_mark
                    pending = []
                    if cancelled():
                        break
                    stats.chunks += 1
                    stats.samples += len(chunk)
                    if stats.first_chunk_s is None:
                        stats.first_chunk_s = time.perf_counter() - t0
                    yield chunk
                    if codes is None:
                        break
            stats.hit_budget = loop.hit_budget
            stats.cancelled = loop.cancelled or bool(cancel is not None and cancel.is_set())
            stats.timings = {"generate_s": t_gen, "decode_s": t_dec, **getattr(loop, "timings", {})}
            if loop.hit_budget:
                log.warning(
                    "Qwen3-TTS: runaway guard stopped generation at %d frames (%.1f s of audio) for %d "
                    "characters of text: the model missed its end token",
                    stats.frames,
                    stats.frames * 0.08,
                    len(text),
                )
        finally:
            stats.total_s = time.perf_counter() - t0

    def _generate_apart(self, loop: Any, cancel: threading.Event | None) -> Iterator[torch.Tensor]:
        """Without a scheduler: ``loop``'s frames, made on a thread of their own that holds the engine lock while it
        generates (one stream at a time) and hands each frame over through a queue. The lock is never held while the
        consumer is away, so a slow consumer does not keep the next stream waiting; its frames wait in the queue
        (128 bytes each, at most its frame budget). Closing this generator stops the thread within one frame and
        joins it."""
        stop = threading.Event()
        either = _AnyEvent(stop, cancel)
        frames: queue.SimpleQueue = queue.SimpleQueue()

        def generate() -> None:
            torch.set_num_threads(self.threads)
            try:
                while not self._lock.acquire(timeout=0.05):  # another stream is generating
                    if either.is_set():
                        return
                try:
                    for codes in loop.frames(either):
                        frames.put(codes)
                finally:
                    self._lock.release()
            except BaseException as e:  # raised by the consumer
                frames.put(_Failed(e))
            finally:
                frames.put(_END)

        thread = threading.Thread(target=generate, name="qwen3-tts-generate", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    item = frames.get(timeout=0.05)
                except queue.Empty:
                    if either.is_set():
                        return  # cancelled: nothing more is delivered
                    continue
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            stop.set()
            thread.join()

    def _frame_loop(self, prompt, budget: int):
        """The loop chosen by ``loop=`` (or the scheduler's stream); the lean one keeps its static caches across
        utterances (used under the engine lock)."""
        if self.scheduler is not None:
            return self.scheduler.submit(prompt, budget)
        if self.loop == "reference":
            return FrameLoop(self.tts_model.model.talker, prompt, budget)
        if self._lean is None:
            with self._lock:
                if self._lean is None:
                    self._lean = build_lean_talker(self.tts_model.model.talker)
        return LeanFrameLoop(self._lean, prompt, budget, threads=self.threads)

    def _decode(self, decoder: StreamingCodecDecoder, frames: list[torch.Tensor]) -> np.ndarray:
        wav = decoder.decode(torch.stack(frames).to(self.device))
        return wav.float().cpu().numpy().astype(np.float32, copy=False)

    def synthesize(self, text: str, voice: VoicePrompt, language: str = "English", **generation: Any) -> np.ndarray:
        """The whole waveform (float32, 24 kHz), built on ``stream``."""
        return collect(self.stream(text, voice, language, **generation))
