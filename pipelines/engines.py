"""The engines of a process, loaded once and shared by every session, and the pipecat services one session runs on
them. Which engine and how it loads come from the engine catalogue (``processors.catalogue``).

``load_engines(options)`` chooses each kind's engine (one logged line each, with its reason), loads it and records
it on an ``Engines`` container, which a server may create empty and fill in the background (``duplex serve`` answers
while weights download; ``/healthz`` shows the states). ``session_services`` builds one session's STT, LLM and TTS
services on the loaded engines: the STT engine per the catalogue (shared, or a per-session view), the shared LLM, and
the shared TTS speaking the session's voice, whose runtime voice switches go through the given resolver (the
server's registry and voice cache).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

from processors import catalogue
from processors.catalogue import Choice, EngineEntry, ModelUnavailable
from processors.tts_engine import TTSEngine
from voices.loader import VoiceLoader
from voices.registry import VoiceRegistry

from .options import AgentOptions

__all__ = ["Engines", "ModelUnavailable", "create_services", "load_engines", "session_services"]

log = logging.getLogger("duplex.engines")

EngineState = Literal["loading", "ready", "failed"]


class Engines:
    """The loaded engines (TTS, STT, LLM), why each was chosen, and whether they are ready.

    ``Engines(tts=engine)`` for a server that only speaks (``/api/v1/speak``); ``Engines()`` filled later by
    ``load_engines(options, engines=...)`` (or ``set_tts`` / ``set_pipeline_ready`` / ``fail``) while a server already
    answers: until then speak sessions get ``MODEL_LOADING`` and voice sessions are refused with the same code.
    """

    def __init__(self, tts: TTSEngine | None = None, *, stt: Any = None, llm: Any = None):
        self._lock = threading.Lock()
        self._tts = tts
        self._tts_error: str | None = None
        self._pipeline_ready = False
        self._pipeline_error: str | None = None
        self.stt = stt  # the loaded STT engine (sessions get theirs from ``session_stt``)
        self.llm = llm  # the local LLM engine; None with an OpenAI-compatible endpoint (it holds the model)
        self.choices: dict[str, Choice] = {}  # kind -> the catalogue's choice and its reason

    @property
    def tts(self) -> TTSEngine | None:
        return self._tts

    @property
    def tts_state(self) -> EngineState:
        with self._lock:
            if self._tts is not None:
                return "ready"
            return "failed" if self._tts_error else "loading"

    @property
    def tts_error(self) -> str | None:
        return self._tts_error

    @property
    def pipeline_state(self) -> EngineState:
        """Whether voice sessions (TTS + STT + LLM) can start."""
        with self._lock:
            if self._pipeline_error:
                return "failed"
            return "ready" if self._pipeline_ready and self._tts is not None else "loading"

    @property
    def pipeline_error(self) -> str | None:
        return self._pipeline_error or self._tts_error

    def set_tts(self, engine: TTSEngine) -> None:
        with self._lock:
            self._tts, self._tts_error = engine, None

    def fail_tts(self, message: str) -> None:
        with self._lock:
            self._tts, self._tts_error = None, message or "the TTS model failed to load"
            self._pipeline_error = self._tts_error

    def set_pipeline_ready(self, *, stt: Any, llm: Any = None) -> None:
        """STT and LLM loaded (``llm``: the local engine, or None for an endpoint)."""
        with self._lock:
            self.stt, self.llm = stt, llm
            self._pipeline_ready, self._pipeline_error = True, None

    def fail(self, message: str) -> None:
        """A model other than the TTS cannot be had: voice sessions are refused with this reason (speak goes on)."""
        with self._lock:
            self._pipeline_error = message or "a model failed to load"

    def entry(self, kind: catalogue.Kind) -> EngineEntry:
        """The catalogue row of the loaded engine of ``kind``."""
        choice = self.choices.get(kind)
        if choice is not None:
            return catalogue.entry(kind, choice.engine)
        if kind == "llm":  # a loaded engine is the in-process model; none means an endpoint holds it
            return catalogue.entry(kind, "local" if self.llm is not None else "openai-compatible")
        engine = self._tts if kind == "tts" else self.stt
        name = getattr(engine, "name", None)
        if name is None:
            raise ModelUnavailable(f"no {kind.upper()} engine is loaded")
        return catalogue.entry(kind, name)

    def session_stt(self) -> Any:
        """The STT engine for a new session: the loaded one, or the catalogue row's per-session view of it (cheap:
        the model stays loaded once)."""
        if self.stt is None:
            raise ModelUnavailable("no STT engine is loaded")
        return self.entry("stt").session_engine(self.stt)

    def describe(self) -> dict[str, dict[str, str]]:
        """``{"tts": {"engine", "reason", "state"}, "stt": ..., "llm": ...}`` for ``/healthz`` and the page."""
        out: dict[str, dict[str, str]] = {}
        for kind in catalogue.KINDS:
            choice = self.choices.get(kind)
            state = self.tts_state if kind == "tts" else self.pipeline_state
            out[kind] = {
                "engine": getattr(choice, "engine", "?"),
                "reason": getattr(choice, "reason", ""),
                "state": state,
            }
        return out


def load_engines(
    options: AgentOptions,
    *,
    engines: Engines | None = None,
    progress: Callable[[str], None] | None = None,
    kinds: tuple[catalogue.Kind, ...] = catalogue.KINDS,
) -> Engines:
    """Choose and load every engine once, into ``engines`` (a new container if None), and return it.

    Raises ``ModelUnavailable`` with a clear message when a chosen model cannot be had, after recording the failure on
    ``engines`` (so a server loading in the background reports it on ``/healthz`` and to sessions). ``kinds``: load
    only these (``duplex speak`` needs just the TTS)."""
    say = progress or (lambda msg: log.info(msg))
    engines = engines if engines is not None else Engines()
    groups = {"tts": options.tts, "stt": options.stt, "llm": options.llm}
    for kind in kinds:
        try:
            engines.choices[kind] = catalogue.choose(kind, groups[kind], options.device)
        except (ModelUnavailable, ValueError) as e:
            _record_failure(engines, kind, str(e))
            raise ModelUnavailable(str(e)) from e
    for kind in kinds:
        say(f"{kind.upper()}: {engines.choices[kind].engine} ({engines.choices[kind].reason})")
    loaded: dict[str, Any] = {}
    for kind in kinds:
        row = catalogue.entry(kind, engines.choices[kind].engine)
        say(f"loading the {kind.upper()} engine {row.name} ...")
        try:
            loaded[kind] = row.load(groups[kind], options.device)
        except Exception as e:
            _record_failure(engines, kind, f"{kind.upper()} {row.name}: {e}")
            raise ModelUnavailable(f"cannot load the {kind.upper()} engine {row.name!r}: {e}") from e
        if kind == "tts":
            engines.set_tts(loaded[kind])
        elif kind == "stt":
            engines.stt = loaded[kind]
        else:
            engines.llm = loaded[kind]
    if "stt" in kinds and "llm" in kinds:
        engines.set_pipeline_ready(stt=loaded["stt"], llm=loaded["llm"])
    say("all engines ready")
    return engines


def _record_failure(engines: Engines, kind: str, message: str) -> None:
    if kind == "tts":
        engines.fail_tts(message)
    else:
        engines.fail(message)


def session_services(
    engines: Engines,
    options: AgentOptions,
    *,
    stt_engine: Any,
    voice: Any,
    voices: Callable[[str], Any] | None = None,
    tts_kwargs: dict[str, Any] | None = None,
) -> tuple[Any, Any, Any]:
    """(stt, llm, tts) pipecat services for one session. ``stt_engine``: from ``engines.session_stt()``; ``voice``:
    the TTS engine's voice object for this session; ``voices``: voice id -> voice object for runtime switches."""
    stt = engines.entry("stt").service(stt_engine, options.stt)
    llm = engines.entry("llm").service(engines.llm, options.llm)
    tts = engines.entry("tts").service(engines.tts, options.tts, voice=voice, voices=voices, **(tts_kwargs or {}))
    return stt, llm, tts


def create_services(
    options: AgentOptions,
    *,
    registry: VoiceRegistry | None = None,
    loader: VoiceLoader | None = None,
    stt: Any = None,
    llm: Any = None,
    tts: Any = None,
    tts_kwargs: dict[str, Any] | None = None,
) -> tuple[Any, Any, Any]:
    """Services for one agent outside a server: the given ones, and the missing ones loaded from ``options`` with the
    catalogue (each engine loaded here, not shared). The TTS speaks ``options.tts.voice`` from ``registry``
    (default: the shipped voices only)."""
    kinds = tuple(k for k, given in (("tts", tts), ("stt", stt), ("llm", llm)) if given is None)
    if not kinds:
        return stt, llm, tts
    engines = load_engines(options, kinds=kinds)
    if stt is None:
        stt = engines.entry("stt").service(engines.session_stt(), options.stt)
    if llm is None:
        llm = engines.entry("llm").service(engines.llm, options.llm)
    if tts is None:
        engine = engines.tts
        registry = registry or VoiceRegistry(None, default_voice=options.tts.voice)
        loader = loader or VoiceLoader()
        voice_spec = registry.get(options.tts.voice) if options.tts.voice else registry.default()
        tts = engines.entry("tts").service(
            engine,
            options.tts,
            voice=loader.get(engine, voice_spec),
            voices=loader.resolver(registry, engine),
            **(tts_kwargs or {}),
        )
    return stt, llm, tts
