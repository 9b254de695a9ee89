"""Voice prompts for Qwen3-TTS cloning, and their caches.

A ``VoicePrompt`` wraps upstream's ``VoiceClonePromptItem`` (``.prompt``), so it can be passed straight to
qwen-tts's own ``generate_voice_clone(voice_clone_prompt=[vp.prompt])``. Computing one encodes the reference with the
codec encoder and the speaker encoder (~0.1-1 s), so prompts are cached in memory (LRU) and on disk. The disk format
is safetensors (tensors) + JSON (metadata): never pickle, so a cache folder cannot execute code when loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

CACHE_FORMAT_VERSION = 1


@dataclass
class VoicePrompt:
    """A cloned voice, ready for synthesis."""

    key: str  # hash of (model, reference audio, transcript, mode)
    prompt: Any  # qwen_tts.VoiceClonePromptItem
    reference_seconds: float
    # decoder state primed with the reference codes (ICL mode); built on first use, memory only
    _primed_decoder: Any = field(default=None, repr=False, compare=False)

    @property
    def mode(self) -> str:
        return "x_vector" if self.prompt.x_vector_only_mode else "icl"

    @property
    def ref_text(self) -> str | None:
        return self.prompt.ref_text


def prompt_key(model_id: str, samples: np.ndarray, sample_rate: int, ref_text: str | None, x_vector_only: bool) -> str:
    h = hashlib.sha256()
    h.update(f"v{CACHE_FORMAT_VERSION}|{model_id}|{sample_rate}|{'x' if x_vector_only else 'icl'}|".encode())
    h.update((ref_text or "").encode("utf-8"))
    h.update(b"|")
    h.update(np.ascontiguousarray(samples, dtype=np.float32).tobytes())
    return h.hexdigest()[:32]


class VoicePromptCache:
    """Memory LRU in front of an on-disk store. Thread-safe."""

    def __init__(self, directory: Path | None, max_items: int = 32):
        self.directory = Path(directory) if directory else None
        self.max_items = max_items
        self._memory: OrderedDict[str, VoicePrompt] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, directory: Path | None = None) -> VoicePrompt | None:
        with self._lock:
            vp = self._memory.get(key)
            if vp is not None:
                self._memory.move_to_end(key)
                return vp
        vp = self._load(key, directory or self.directory)
        if vp is not None:
            self._remember(vp)
        return vp

    def put(self, vp: VoicePrompt, directory: Path | None = None) -> None:
        self._remember(vp)
        target = directory or self.directory
        if target is not None:
            self._save(vp, Path(target))

    def _remember(self, vp: VoicePrompt) -> None:
        with self._lock:
            self._memory[vp.key] = vp
            self._memory.move_to_end(vp.key)
            while len(self._memory) > self.max_items:
                self._memory.popitem(last=False)

    @staticmethod
    def _paths(directory: Path, key: str) -> tuple[Path, Path]:
        return directory / f"{key}.safetensors", directory / f"{key}.json"

    def _save(self, vp: VoicePrompt, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        tensors_path, meta_path = self._paths(directory, vp.key)
        tensors = {"ref_spk_embedding": vp.prompt.ref_spk_embedding.detach().float().cpu().contiguous()}
        if vp.prompt.ref_code is not None:
            tensors["ref_code"] = vp.prompt.ref_code.detach().long().cpu().contiguous()
        meta = {
            "format": CACHE_FORMAT_VERSION,
            "key": vp.key,
            "x_vector_only_mode": bool(vp.prompt.x_vector_only_mode),
            "icl_mode": bool(vp.prompt.icl_mode),
            "ref_text": vp.prompt.ref_text,
            "reference_seconds": vp.reference_seconds,
        }
        # write both files under temporary names, then rename: a crash never leaves a half entry
        fd, tmp_t = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(fd)
        save_file(tensors, tmp_t)
        fd, tmp_m = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
        os.replace(tmp_t, tensors_path)
        os.replace(tmp_m, meta_path)

    @classmethod
    def _load(cls, key: str, directory: Path | None) -> VoicePrompt | None:
        if directory is None:
            return None
        tensors_path, meta_path = cls._paths(Path(directory), key)
        if not (tensors_path.is_file() and meta_path.is_file()):
            return None
        try:
            from safetensors.torch import load_file

            from processors.compat import ensure_qwen_tts_importable

            ensure_qwen_tts_importable()
            from qwen_tts import VoiceClonePromptItem

            meta = json.loads(meta_path.read_text())
            if meta.get("format") != CACHE_FORMAT_VERSION or meta.get("key") != key:
                return None
            tensors = load_file(str(tensors_path))
            item = VoiceClonePromptItem(
                ref_code=tensors.get("ref_code"),
                ref_spk_embedding=tensors["ref_spk_embedding"],
                x_vector_only_mode=bool(meta["x_vector_only_mode"]),
                icl_mode=bool(meta["icl_mode"]),
                ref_text=meta.get("ref_text"),
            )
            return VoicePrompt(key=key, prompt=item, reference_seconds=float(meta.get("reference_seconds", 0.0)))
        except Exception:  # a corrupt entry is recomputed, never fatal
            return None


def to_model_device(vp: VoicePrompt, device: torch.device, dtype: torch.dtype) -> Any:
    """The upstream prompt item with its tensors on the model's device (codes stay integer)."""
    from processors.compat import ensure_qwen_tts_importable

    ensure_qwen_tts_importable()
    from qwen_tts import VoiceClonePromptItem

    p = vp.prompt
    return VoiceClonePromptItem(
        ref_code=None if p.ref_code is None else p.ref_code.to(device),
        ref_spk_embedding=p.ref_spk_embedding.to(device=device, dtype=dtype),
        x_vector_only_mode=p.x_vector_only_mode,
        icl_mode=p.icl_mode,
        ref_text=p.ref_text,
    )
