"""Parakeet TDT speech-to-text through NeMo: one VAD-bounded utterance in, a Transcript with word timings out.

Thread-safety: safe to call from several threads; calls are serialised by a lock, because a NeMo model is not
re-entrant (``transcribe`` flips train/eval mode, swaps decoding config and builds a dataloader per call).
One engine can therefore serve several sessions, one utterance at a time.

NeMo quirks handled here:
* ``restore_from``/``from_pretrained`` return the model in train mode, and ``transcribe`` restores whatever mode
  it found: we ``eval()`` after loading and again after every call, so dropout never leaks into results.
* NeMo pads clips under 1 s on both sides, shifting word times; we pad on the right ourselves first.
* Empty audio gives an empty transcript without touching the model; bad dtype/shape/rate/NaN raise STTInputError.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from processors.audio import STT_MIN_CLIP_SECONDS, STT_SAMPLE_RATE
from processors.stt_engine import Stopwatch, STTError, Transcript, Word, validate_audio

from .options import DEFAULT_PARAKEET_MODEL

# Speech end -> final transcript P99 in a pipeline: VAD stop_secs 0.2 + one real-size pass (measured on a 2-core CPU:
# 0.44-0.65 s for 2 s, 0.64-1.03 s for 5 s of audio) + at most one interim pass queued ahead of it. GPU: ~tens of ms.
TTFS_P99_CPU_S = 1.5
TTFS_P99_CUDA_S = 0.5


def resolve_device(device: Any = None) -> str:
    """``None`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; explicit values are checked."""
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    name = str(device)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise STTError(f"device {name!r} requested but torch sees no CUDA GPU (torch {torch.__version__})")
    try:
        torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise STTError(f"invalid device {name!r}: {e}") from e
    return name


def _is_local_model(model: str) -> bool:
    """A ``.nemo`` path (existing or not, so a typo gives "file not found") rather than an ``org/name`` hub id."""
    return model.endswith(".nemo") or model.startswith(("/", "./", "../", "~")) or Path(model).exists()


class ParakeetEngine:
    """NVIDIA Parakeet TDT (or any NeMo ``ASRModel`` with ``transcribe``) as an STT engine."""

    name = "parakeet"

    def __init__(
        self,
        model: Any,
        *,
        device: str = "cpu",
        language: str | None = "en",
        word_timestamps: bool = True,
        model_name: str = "",
    ):
        """Wrap an already loaded NeMo ASR model; most callers want :meth:`from_pretrained`.

        ``language``: what the model recognises ("en" for parakeet-tdt-0.6b-v2; None for the multilingual v3,
        which picks the language itself). ``word_timestamps``: ask the decoder for word timings.
        """
        self.model = model
        self.device = device
        self.language = language
        self.model_name = model_name or type(model).__name__
        self.word_timestamps = bool(word_timestamps)
        self._lock = threading.Lock()
        self._time_per_frame = self._frame_seconds(model)
        if self.word_timestamps:
            self._enable_timestamps()
        self.model.eval()

    @property
    def ttfs_p99_s(self) -> float:
        """Speech end -> final transcript P99 for pipecat's turn-stop strategies (see TTFS_P99_*)."""
        return TTFS_P99_CUDA_S if str(self.device).startswith("cuda") else TTFS_P99_CPU_S

    # --- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = DEFAULT_PARAKEET_MODEL,
        device: str | None = None,
        *,
        language: str | None = "en",
        word_timestamps: bool = True,
    ) -> ParakeetEngine:
        """Load a Hugging Face hub id (``"nvidia/parakeet-tdt-0.6b-v2"``, downloaded into the HF cache on first use;
        offline with ``HF_HUB_OFFLINE=1`` once cached) or a local ``.nemo`` file.

        ``device``: None picks CUDA when present, else CPU (logged). Raises STTError with a clear message when the
        file is missing, the download fails or the file is not a NeMo ASR model.
        """
        from processors.compat import ensure_nemo_importable
        from processors.hub import HUB_ID, HubModelError, fetch

        dev = resolve_device(device)
        model = os.path.expanduser(str(model))
        local = _is_local_model(model)
        if local and not Path(model).is_file():
            raise STTError(
                f"Parakeet model file not found: {model} (expected a .nemo file or a hub id like "
                f"{DEFAULT_PARAKEET_MODEL!r})"
            )
        path: str | None = model if local else None  # None: a NeMo catalogue name, NeMo's own from_pretrained
        if not local and HUB_ID.match(model):  # a hub id: its .nemo from the cache, or downloaded now; at once
            # when it cannot be had (not the hub client's minute of retries)
            nemo = model.rsplit("/", 1)[-1] + ".nemo"
            try:
                path = str(fetch(model, what="the Parakeet model", required=(nemo,), allow_patterns=("*.nemo",)) / nemo)
            except HubModelError as e:
                raise STTError(str(e)) from None
        logger.info(f"Parakeet: loading {model!r} on {dev}" + (" (no CUDA GPU found)" if dev == "cpu" else ""))
        ensure_nemo_importable()
        try:
            import torch
            from nemo.collections.asr.models import ASRModel
        except ImportError as e:
            raise STTError(f"NeMo ASR is not importable ({e}); install nemo_toolkit[asr]") from e

        with Stopwatch() as sw:
            try:
                if path is not None:
                    asr = ASRModel.restore_from(restore_path=path, map_location=torch.device(dev))
                else:
                    asr = ASRModel.from_pretrained(model_name=model, map_location=torch.device(dev))
            except (OSError, ConnectionError) as e:
                raise STTError(f"could not read or download Parakeet model {model!r}: {e}") from e
            except Exception as e:  # corrupt archive, wrong model class, config errors
                raise STTError(f"could not load Parakeet model {model!r}: {type(e).__name__}: {e}") from e
        if not hasattr(asr, "transcribe"):
            raise STTError(f"{model!r} is a {type(asr).__name__}, not a speech recognition model")
        logger.info(f"Parakeet: {type(asr).__name__} loaded in {sw.seconds:.2f} s on {dev}")
        return cls(asr, device=dev, language=language, word_timestamps=word_timestamps, model_name=model)

    # --- transcription --------------------------------------------------------------------------------
    def transcribe(self, audio: np.ndarray, sample_rate: int = STT_SAMPLE_RATE) -> Transcript:
        """Transcribe one utterance (float32 mono 16 kHz). Blocks; serialised with other callers."""
        audio = validate_audio(audio, sample_rate)
        seconds = audio.size / STT_SAMPLE_RATE
        if audio.size == 0:
            return Transcript(text="", language=self.language, audio_seconds=0.0, compute_seconds=0.0)
        min_samples = int(STT_MIN_CLIP_SECONDS * STT_SAMPLE_RATE)
        if audio.size < min_samples:  # pad on the right so word times keep their origin
            audio = np.concatenate([audio, np.zeros(min_samples - audio.size, dtype=np.float32)])
        with self._lock, Stopwatch() as sw:
            try:
                out = self.model.transcribe([audio], batch_size=1, return_hypotheses=True, verbose=False)
            except Exception as e:
                raise STTError(f"Parakeet transcription failed: {type(e).__name__}: {e}") from e
            finally:
                self.model.eval()  # transcribe restores the mode it found; never leave train mode behind
        hyp = self._first_hypothesis(out)
        text = (hyp if isinstance(hyp, str) else getattr(hyp, "text", "") or "").strip()
        words = self._words(hyp, seconds) if text else ()
        return Transcript(
            text=text, words=words, language=self.language, audio_seconds=seconds, compute_seconds=sw.seconds
        )

    def warmup(self) -> float:
        """One transcription of 1 s of silence (first calls build decoding state); returns its seconds."""
        return self.transcribe(np.zeros(STT_SAMPLE_RATE, dtype=np.float32)).compute_seconds

    # --- helpers ----------------------------------------------------------------------------------------
    def _enable_timestamps(self) -> None:
        """Switch the decoder to compute timestamps once, instead of per call (NeMo logs and rebuilds each time)."""
        cfg = getattr(self.model, "cfg", None)
        if cfg is None or "decoding" not in cfg or not hasattr(self.model, "change_decoding_strategy"):
            self.word_timestamps = False
            return
        from omegaconf import open_dict

        if cfg.decoding.get("compute_timestamps", None) is not True:
            decoding = cfg.decoding.copy()
            with open_dict(decoding):
                decoding.compute_timestamps = True
            self.model.change_decoding_strategy(decoding, verbose=False)

    @staticmethod
    def _frame_seconds(model: Any) -> float:
        """Seconds per encoder output frame (window stride x subsampling), to turn offsets into times."""
        try:
            stride = float(model.cfg.preprocessor.window_stride)
            factor = int(getattr(model.encoder, "subsampling_factor", 1))
            return stride * factor
        except Exception:
            return 0.0

    @staticmethod
    def _first_hypothesis(out: Any) -> Any:
        # NeMo returns [hyp, ...], or (best_hyps, all_hyps) for some decoders / older versions.
        if isinstance(out, tuple):
            out = out[0]
        if isinstance(out, list) and out and isinstance(out[0], list):
            out = out[0]
        if not out:
            return ""
        return out[0]

    def _words(self, hyp: Any, seconds: float) -> tuple[Word, ...]:
        stamps = getattr(hyp, "timestamp", None)
        if not self.word_timestamps or not isinstance(stamps, dict) or not self._time_per_frame:
            return ()
        words = []
        for w in stamps.get("word") or ():
            try:
                start = float(w["start_offset"]) * self._time_per_frame
                end = float(w["end_offset"]) * self._time_per_frame
                token = str(w["word"]).strip()
            except (KeyError, TypeError, ValueError):
                return ()
            if token:
                words.append(Word(token, min(start, seconds), min(max(end, start), seconds)))
        return tuple(words)
