"""The engine catalogue: every engine Duplex can run, one row each, and the one place that answers "which engine,
built how".

A row (``EngineEntry``) says what kind of engine it is (``tts``, ``stt``, ``llm``), its name (the value of
``--tts`` / ``--stt``), its options model (merged into its kind's settings group, so ``DUPLEX_TTS__MODEL`` reaches
Qwen3-TTS), how ``auto`` judges whether this machine runs it well and why, how it loads (once per process), how a
session gets its own engine from the loaded one (the loaded one, or a light per-session view of it), and its pipecat
service.
Engine selection (``choose``), ``duplex serve``, voice sessions, replays, ``duplex speak`` and the benchmarks all read
this table. Adding an engine = its package (a plain engine, a thin adapter, an options model) + one row here.

``auto`` tries the rows of a kind in order and takes the first that says yes; the reason logged is why the better
ones were passed over. Nothing here imports torch, NeMo or pipecat at import time: rows load their packages lazily.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from processors.llm.options import LLMOptions
from processors.openai_tts.options import OpenAITTSOptions
from processors.parakeet_stt.options import ParakeetOptions
from processors.qwen3_tts.options import Qwen3TTSOptions

Kind = Literal["tts", "stt", "llm"]
KINDS: tuple[Kind, ...] = ("tts", "stt", "llm")
AUTO = "auto"


class ModelUnavailable(RuntimeError):
    """A chosen engine's model cannot be had (not cached and no network, a bad path, a failed load)."""


@dataclass(frozen=True)
class Choice:
    """The engine picked for a kind, and why (logged, and shown on ``/healthz`` and the page)."""

    engine: str
    reason: str


@dataclass(frozen=True)
class EngineEntry:
    """One engine (see module docstring). ``options`` is the kind's whole settings group when called."""

    kind: Kind
    name: str
    summary: str
    auto: Callable[[Any, str | None], tuple[bool, str]]  # (options, device) -> (runs well here?, why)
    load: Callable[[Any, str | None], Any]  # (options, device) -> the engine a process shares
    service: Callable[..., Any]  # (engine, options, **kwargs) -> pipecat service
    options: type[BaseModel] | None = None
    # loaded engine -> a session's own engine (None: the loaded one, shared). Sessions come and go all day: make it a
    # light view with the session's state on the loaded model, never a second copy of the model.
    per_session: Callable[[Any], Any] | None = None
    fallback: bool = False  # runs anywhere; chosen by ``auto`` only when the rows before it cannot run here
    model: Callable[[Any], str | None] | None = None  # options -> the model it loads (shown while it loads)
    remote: bool = False  # lives elsewhere (an endpoint): checked before the local engines load

    def session_engine(self, loaded: Any) -> Any:
        """The engine one session uses: the loaded one, or the row's per-session view of it."""
        return loaded if self.per_session is None else self.per_session(loaded)


# --- availability checks -------------------------------------------------------------------------------------------
def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def hf_available(repo_id: str, filename: str) -> tuple[bool, str]:
    """(True, how) when a hub model is in the local cache or the hub answers (one request, no retries); never
    raises."""
    from processors import hub

    if hub.cached_snapshot(repo_id, (filename,)) is not None:
        return True, "weights are in the local Hugging Face cache"
    ok, why = hub.probe_hub(repo_id)
    if ok:
        return True, "weights will be downloaded from the Hugging Face hub on first use"
    return False, f"weights are not cached and {why}"


def _local_path(model: str) -> bool:
    return os.path.exists(os.path.expanduser(model))


# --- TTS rows ------------------------------------------------------------------------------------------------------
def _openai_tts_auto(options: Any, device: str | None) -> tuple[bool, str]:
    if options.endpoint:
        return True, f"speech endpoint {options.endpoint} (model {options.model})"
    return False, "no speech endpoint configured"


def _openai_tts_load(options: Any, device: str | None) -> Any:
    from processors.openai_tts import OpenAISpeechEngine

    if not options.endpoint:
        raise ModelUnavailable("--tts openai needs the endpoint's base URL (DUPLEX_TTS__ENDPOINT=http://host:8091/v1)")
    return OpenAISpeechEngine(
        options.endpoint,
        model=options.model,
        api_key=options.endpoint_api_key,
        send_language=options.endpoint_language,
        sample_rate=options.endpoint_sample_rate,
        languages=options.endpoint_languages,
        timeout_s=options.endpoint_timeout_s,
    )


def _engine_tts_service(engine: Any, options: Any, *, voice: Any = None, voices: Any = None, **kwargs: Any) -> Any:
    from processors.engine_tts_service import EngineTTSService

    return EngineTTSService(
        engine, voice=voice, voice_id=options.voice, voices=voices, language=options.language, **kwargs
    )


def _qwen3_auto(options: Any, device: str | None) -> tuple[bool, str]:
    if not (cuda_available() and not (device or "").startswith("cpu")):
        return False, "no CUDA GPU: Qwen3-TTS 0.6B runs several times slower than real time on a CPU"
    if _local_path(options.model):
        return True, f"CUDA GPU and a local model directory ({options.model})"
    ok, how = hf_available(options.model, "config.json")
    return ok, f"CUDA GPU; {how}" if ok else f"Qwen3-TTS: {how}"


def _qwen3_load(options: Any, device: str | None) -> Any:
    from processors.qwen3_tts import Qwen3TTSEngine

    engine = Qwen3TTSEngine.from_pretrained(
        options.model,
        device=device,
        first_chunk_frames=options.first_chunk_frames,
        chunk_frames=options.chunk_frames,
        max_streams=options.max_streams,
    )
    engine.warmup()  # CUDA graphs captured now, not during the first conversation
    return engine


def _qwen3_service(engine: Any, options: Any, *, voice: Any = None, voices: Any = None, **kwargs: Any) -> Any:
    from processors.qwen3_tts import Qwen3TTSService

    return Qwen3TTSService(
        engine=engine,
        voice=voice,
        voice_id=options.voice,
        voices=voices,
        language=options.language,
        generation=options.generation(),
        **kwargs,
    )


def _espeak_load(options: Any, device: str | None) -> Any:
    from processors.espeak_tts import EspeakEngine

    return EspeakEngine()


def _espeak_service(engine: Any, options: Any, *, voice: Any = None, voices: Any = None, **kwargs: Any) -> Any:
    from processors.espeak_tts import EspeakTTSService

    return EspeakTTSService(
        engine=engine, voice=voice, voice_id=options.voice, voices=voices, language=options.language, **kwargs
    )


# --- STT rows ------------------------------------------------------------------------------------------------------
def _parakeet_auto(options: Any, device: str | None) -> tuple[bool, str]:
    if _local_path(options.model):
        return True, f"local model file ({options.model})"
    ok, how = hf_available(options.model, options.model.rsplit("/", 1)[-1] + ".nemo")
    return ok, how if ok else f"Parakeet: {how}"


def _parakeet_load(options: Any, device: str | None) -> Any:
    from processors.parakeet_stt import ParakeetEngine

    return ParakeetEngine.from_pretrained(options.model, device=device)


def _pocketsphinx_load(options: Any, device: str | None) -> Any:
    from processors.pocketsphinx_stt import PocketsphinxEngine

    return PocketsphinxEngine()


def _pocketsphinx_session(loaded: Any) -> Any:
    # the decoder carries per-speaker channel normalisation across utterances: each session keeps its own, on the
    # process's one decoder (a decoder per session cost tens of MB the C allocator never gave back)
    return loaded.session()


def stt_service(engine: Any, options: Any, **kwargs: Any) -> Any:
    """``EngineSTTService`` (the one STT adapter) over any ``STTEngine``, with the kind's options."""
    from processors.segmented_stt import EngineSTTService
    from processors.stt_engine import StreamingSTTEngine

    interim = options.interim_interval_s
    if interim and getattr(engine, "holds_gil", False) and not isinstance(engine, StreamingSTTEngine):
        # an engine that holds the GIL while it decodes would stall the event loop if it re-transcribed the growing
        # utterance every second (measured with pocketsphinx's whole-utterance passes: VAD stops 2-4 s late on a
        # 6.6 s utterance); one that decodes incrementally only ever decodes the newest 0.1 s
        interim = None
    return EngineSTTService(engine, interim_interval_s=interim, **kwargs)


def _stt_service(engine: Any, options: Any, **kwargs: Any) -> Any:
    return stt_service(engine, options, **kwargs)


# --- LLM rows ------------------------------------------------------------------------------------------------------
def _local_llm_auto(options: Any, device: str | None) -> tuple[bool, str]:
    if options.is_local:
        return True, "no LLM endpoint configured: the bundled SmolLM2-135M (toy quality) runs in-process"
    return False, f"endpoint {options.backend}"


def _local_llm_load(options: Any, device: str | None) -> Any:
    from processors.llm.local_engine import get_shared_engine

    return get_shared_engine(options.model or None)


def _openai_auto(options: Any, device: str | None) -> tuple[bool, str]:
    if options.is_local:
        return False, "no endpoint configured"
    return True, f"endpoint {options.backend} (model {options.model or '?'})"


def _openai_load(options: Any, device: str | None) -> Any:
    from processors.llm import check_endpoint, create_llm_service

    create_llm_service(options)  # validates the URL and the model name; the endpoint holds the model
    return check_endpoint(options)  # it answers, takes the key and serves the model, or a message saying what to do


def _local_llm_model(options: Any) -> str:
    return options.model or "SmolLM2-135M-Instruct (bundled)"


def _llm_service(engine: Any, options: Any, **kwargs: Any) -> Any:
    from processors.llm import create_llm_service

    return create_llm_service(options, engine=engine, **kwargs)


CATALOGUE: tuple[EngineEntry, ...] = (
    EngineEntry(
        kind="tts",
        name="openai",
        summary="an OpenAI-compatible speech endpoint (vLLM-Omni serving Qwen3-TTS, another duplex serve, OpenAI)",
        options=OpenAITTSOptions,
        auto=_openai_tts_auto,
        load=_openai_tts_load,
        service=_engine_tts_service,
        model=lambda options: f"{options.model} at {options.endpoint}",
        remote=True,
    ),
    EngineEntry(
        kind="tts",
        name="qwen3",
        summary="Qwen3-TTS-12Hz-0.6B-Base: streaming voice cloning (a CUDA GPU for real time)",
        options=Qwen3TTSOptions,
        auto=_qwen3_auto,
        load=_qwen3_load,
        service=_qwen3_service,
        model=lambda options: options.model,
    ),
    EngineEntry(
        kind="tts",
        name="espeak",
        summary="espeak-ng from the espeakng-loader wheel: offline, robotic, no cloning",
        auto=lambda options, device: (True, "espeak-ng ships in a wheel and runs anywhere"),
        fallback=True,
        load=_espeak_load,
        service=_espeak_service,
    ),
    EngineEntry(
        kind="stt",
        name="parakeet",
        summary="NVIDIA Parakeet TDT 0.6B through NeMo (faster than real time on a CPU); re-transcribes for interims",
        options=ParakeetOptions,
        auto=_parakeet_auto,
        load=_parakeet_load,
        service=_stt_service,
        model=lambda options: options.model,
    ),
    EngineEntry(
        kind="stt",
        name="pocketsphinx",
        summary="CMU PocketSphinx with the en-us model from its wheel: offline, a weak fallback; decodes incrementally",
        auto=lambda options, device: (True, "pocketsphinx ships in a wheel and runs anywhere"),
        fallback=True,
        load=_pocketsphinx_load,
        per_session=_pocketsphinx_session,
        service=_stt_service,
    ),
    EngineEntry(
        kind="llm",
        name="local",
        summary="an in-process chat model: the bundled SmolLM2-135M, or a local directory / hub id",
        options=LLMOptions,
        auto=_local_llm_auto,
        load=_local_llm_load,
        service=_llm_service,
        model=_local_llm_model,
    ),
    EngineEntry(
        kind="llm",
        name="openai-compatible",
        summary="any OpenAI-compatible chat completions endpoint (vLLM, SGLang, Ollama, OpenAI)",
        options=LLMOptions,
        auto=_openai_auto,
        load=_openai_load,
        service=_llm_service,
        model=lambda options: f"{options.model} at {options.backend}",
        remote=True,
    ),
)


def entries(kind: Kind) -> tuple[EngineEntry, ...]:
    return tuple(e for e in CATALOGUE if e.kind == kind)


def names(kind: Kind) -> tuple[str, ...]:
    return tuple(e.name for e in entries(kind))


def entry(kind: Kind, name: str) -> EngineEntry:
    for e in entries(kind):
        if e.name == name:
            return e
    raise ValueError(f"unknown {kind.upper()} engine {name!r} ({', '.join((*names(kind), AUTO))})")


def choose(kind: Kind, options: Any, device: str | None = None) -> Choice:
    """The engine for ``kind``: the one named in ``options.engine``, or for ``auto`` the first row that runs well
    here, with the reason."""
    wanted = getattr(options, "engine", AUTO)
    if wanted != AUTO:
        entry(kind, wanted)  # unknown names fail here
        return Choice(wanted, f"--{kind} {wanted}")
    passed_over: list[str] = []
    for e in entries(kind):
        ok, why = e.auto(options, device)
        if ok:
            # a fallback is explained by why the better engines were passed over
            return Choice(e.name, "; ".join(passed_over) if e.fallback and passed_over else why)
        passed_over.append(why)
    raise ModelUnavailable(f"no {kind.upper()} engine can run here: " + "; ".join(passed_over))


class InProcess:
    """Where engines run by default: in this process, loaded with the rows as they are. A placement answers
    ``choose`` and ``row`` for ``pipelines.engines.load_engines``; ``processors.ray_serve.RayPlacement`` is the other
    one (the same rows, loaded on Ray Serve replicas)."""

    name = "in-process"

    def choose(self, kind: Kind, options: Any, device: str | None = None) -> Choice:
        return choose(kind, options, device)

    def row(self, kind: Kind, name: str) -> EngineEntry:
        return entry(kind, name)

    def where(self, kind: Kind) -> str:
        return self.name

    def close(self) -> None:
        pass


IN_PROCESS = InProcess()


# --- settings groups -------------------------------------------------------------------------------------------------
class TTSChoice(BaseModel):
    """Which TTS engine (``auto`` or a catalogue name), and the default voice and language for every engine."""

    model_config = ConfigDict(extra="forbid")

    engine: str = AUTO
    voice: str | None = None  # voice id from the registry; None = the registry's default
    language: str = "English"

    @field_validator("engine")
    @classmethod
    def _known(cls, v: str) -> str:
        if v != AUTO:
            entry("tts", v)
        return v


class STTChoice(BaseModel):
    """Which STT engine, and how often the adapter re-transcribes a growing utterance for interim words."""

    model_config = ConfigDict(extra="forbid")

    engine: str = AUTO
    interim_interval_s: float | None = 1.0  # None (or <= 0) = no interim transcripts

    @field_validator("engine")
    @classmethod
    def _known(cls, v: str) -> str:
        if v != AUTO:
            entry("stt", v)
        return v


def _group(name: str, kind: Kind, base: type[BaseModel], doc: str) -> type[BaseModel]:
    """``base`` plus the options models of the kind's rows, as one flat settings group (one env prefix)."""
    extra: list[type[BaseModel]] = []
    for e in entries(kind):
        if e.options is not None and e.options is not base and e.options not in extra:
            extra.append(e.options)
    bases = (base, *reversed(extra)) if extra else (base,)
    return type(name, bases, {"__module__": __name__, "__doc__": doc})


TTSOptions = _group("TTSOptions", "tts", TTSChoice, "TTS settings: the choice, and each TTS engine's options.")
STTOptions = _group("STTOptions", "stt", STTChoice, "STT settings: the choice, and each STT engine's options.")

__all__ = [
    "AUTO", "CATALOGUE", "IN_PROCESS", "KINDS", "Choice", "EngineEntry", "InProcess", "LLMOptions", "ModelUnavailable",
    "STTChoice", "STTOptions", "TTSChoice", "TTSOptions", "choose", "cuda_available", "entries", "entry",
    "hf_available", "names", "stt_service",
]  # fmt: skip
