"""The engines of a process, loaded once and shared by every session, and the pipecat services one session runs on
them. Which engine and how it loads come from the engine catalogue (``processors.catalogue``), through a placement:
in this process (``catalogue.IN_PROCESS``), or on Ray Serve replicas when ``options.ray.enabled``
(``processors.ray_serve.RayPlacement``: the same rows, whose engines are remote engines with the same interface).

``load_engines(options)`` chooses each kind's engine (one logged line each, with its reason), loads it and records
it and its row on an ``Engines`` container, which a server may create empty and fill in the background
(``duplex serve`` answers while weights download; ``/healthz`` shows the states). ``session_services`` builds one
session's STT, LLM and TTS services on the loaded engines: the STT engine per the catalogue (shared, or fresh per
session), the shared LLM, and the shared TTS speaking the session's voice, whose runtime voice switches go through
the given resolver (the server's registry and voice cache).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from processors import catalogue
from processors.catalogue import Choice, EngineEntry, ModelUnavailable
from processors.tts_engine import TTSEngine
from voices.loader import VoiceLoader
from voices.registry import VoiceRegistry

from .options import AgentOptions

__all__ = [
    "Engines",
    "LoadStatus",
    "ModelUnavailable",
    "create_services",
    "load_engines",
    "placement_for",
    "session_services",
]

log = logging.getLogger("duplex.engines")

EngineState = Literal["loading", "ready", "failed"]
LoadState = Literal["waiting", "loading", "ready", "failed"]


@dataclass
class LoadStatus:
    """Where one kind's engine is in loading: for ``/healthz`` and the page ("which model, how far")."""

    state: LoadState = "waiting"
    model: str | None = None  # the model being loaded (hub id, path, endpoint), when the engine has one
    step: str = ""  # "downloading", "loading", "checking the endpoint" ... while loading
    received_bytes: int | None = None  # download progress, when a download is under way or done
    total_bytes: int | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # what the loaded engine reports (e.g. the LLM endpoint)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state}
        if self.model:
            out["model"] = self.model
        if self.step and self.state == "loading":
            out["step"] = self.step
        if self.received_bytes is not None:
            out["download"] = {"receivedBytes": self.received_bytes, "totalBytes": self.total_bytes}
        if self.error:
            out["error"] = self.error
        out.update(self.detail)
        return out


class Engines:
    """The loaded engines (TTS, STT, LLM), why each was chosen, and how far each one is in loading.

    ``Engines(tts=engine)`` for a server that only speaks (``/api/v1/speak``); ``Engines(expect=KINDS)`` filled later
    by ``load_engines(options, engines=...)`` (or ``set_tts`` / ``set_pipeline_ready`` / ``fail``) while a server
    already answers: until then speak sessions get ``MODEL_LOADING`` and voice sessions are refused with the same
    code. ``ready`` holds once every expected engine is loaded (the kinds in ``expect`` and those set since).
    """

    def __init__(self, tts: TTSEngine | None = None, *, stt: Any = None, llm: Any = None, expect: tuple[str, ...] = ()):
        self._lock = threading.Lock()
        self._tts = tts
        self._tts_error: str | None = None
        self._pipeline_ready = False
        self._pipeline_error: str | None = None
        self.stt = stt  # the loaded STT engine (sessions get theirs from ``session_stt``)
        self.llm = llm  # the local LLM engine; for an OpenAI-compatible endpoint, what its check found
        self.choices: dict[str, Choice] = {}  # kind -> the catalogue's choice and its reason
        self.status: dict[str, LoadStatus] = {kind: LoadStatus() for kind in catalogue.KINDS}
        self._expected: set[str] = set(expect)
        for kind, engine in (("tts", tts), ("stt", stt), ("llm", llm)):
            if engine is not None:
                self._expected.add(kind)
                self.status[kind].state = "ready"
        self.rows: dict[str, EngineEntry] = {}  # kind -> the row the engine was loaded with (its placement's)
        self.placement: Any = catalogue.IN_PROCESS

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

    @property
    def state(self) -> EngineState:
        """``ready`` once every expected engine is loaded, ``failed`` once one cannot be, else ``loading``."""
        with self._lock:
            kinds = sorted(self._expected)
            states = [self.status[k].state for k in kinds]
            if self._tts_error or self._pipeline_error or "failed" in states:
                return "failed"
            return "ready" if kinds and all(s == "ready" for s in states) else "loading"

    def expect(self, kinds: tuple[str, ...]) -> None:
        """The kinds this process serves: ``state`` waits for all of them."""
        with self._lock:
            self._expected.update(kinds)

    def loading(self, kind: str, *, model: str | None = None, step: str = "loading") -> None:
        with self._lock:
            self._expected.add(kind)
            status = self.status[kind]
            status.state, status.step, status.error = "loading", step, None
            status.model = model or status.model

    def downloading(self, kind: str, received: int, total: int | None) -> None:
        """Download progress of ``kind``'s model (bytes received so far, of ``total`` when known)."""
        with self._lock:
            status = self.status[kind]
            status.step, status.received_bytes, status.total_bytes = "downloading", received, total

    def loaded(self, kind: str, engine: Any = None) -> None:
        """``kind``'s engine is loaded; what it reports about itself (``engine.describe()``) shows on ``/healthz``."""
        describe = getattr(engine, "describe", None)
        detail = describe() if callable(describe) else {}
        with self._lock:
            self._expected.add(kind)
            status = self.status[kind]
            status.state, status.step, status.error, status.detail = "ready", "", None, dict(detail)

    def set_tts(self, engine: TTSEngine) -> None:
        with self._lock:
            self._tts, self._tts_error = engine, None
        self.loaded("tts")

    def fail_tts(self, message: str) -> None:
        with self._lock:
            self._tts, self._tts_error = None, message or "the TTS model failed to load"
            self._pipeline_error = self._tts_error
            self._expected.add("tts")
            self.status["tts"].state, self.status["tts"].error = "failed", self._tts_error

    def set_pipeline_ready(self, *, stt: Any, llm: Any = None) -> None:
        """STT and LLM loaded (``llm``: the local engine, or what the endpoint check found)."""
        with self._lock:
            self.stt, self.llm = stt, llm
            self._pipeline_ready, self._pipeline_error = True, None
        for kind, engine in (("stt", stt), ("llm", llm)):
            if self.status[kind].state != "ready":
                self.loaded(kind, engine)

    def fail(self, message: str, kind: str | None = None) -> None:
        """A model other than the TTS cannot be had: voice sessions are refused with this reason (speak goes on)."""
        with self._lock:
            self._pipeline_error = message or "a model failed to load"
            if kind is not None:
                self._expected.add(kind)
                self.status[kind].state, self.status[kind].error = "failed", self._pipeline_error

    def entry(self, kind: catalogue.Kind) -> EngineEntry:
        """The catalogue row of the loaded engine of ``kind`` (as its placement made it)."""
        row = self.rows.get(kind)
        if row is not None:
            return row
        choice = self.choices.get(kind)
        if choice is not None:
            return catalogue.entry(kind, choice.engine)
        if kind == "llm":  # the in-process model, or an endpoint (none loaded, or what its check found)
            from processors.llm.endpoint import EndpointCheck

            remote = self.llm is None or isinstance(self.llm, EndpointCheck)
            return catalogue.entry(kind, "openai-compatible" if remote else "local")
        engine = self._tts if kind == "tts" else self.stt
        name = getattr(engine, "name", None)
        if name is None:
            raise ModelUnavailable(f"no {kind.upper()} engine is loaded")
        return catalogue.entry(kind, name)

    def session_stt(self) -> Any:
        """The STT engine for a new session (blocking for engines made per session: call it off the event loop)."""
        if self.stt is None:
            raise ModelUnavailable("no STT engine is loaded")
        return self.entry("stt").session_engine(self.stt)

    def describe(self) -> dict[str, dict[str, Any]]:
        """``{"tts": {"engine", "reason", "state", "fallback", "model"?, "step"?, "download"?, "error"?, ...},
        "stt": ..., "llm": ...}`` for ``/healthz`` and the page. ``fallback``: the engine runs anywhere but is not
        the one Duplex is built for (the page says so)."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            statuses = {kind: self.status[kind].describe() for kind in catalogue.KINDS}
        for kind in catalogue.KINDS:
            choice = self.choices.get(kind)
            name = getattr(choice, "engine", "?")
            fallback = False
            if choice is not None:
                fallback = catalogue.entry(kind, name).fallback
            status = statuses[kind]
            if status["state"] == "waiting" and kind not in self._expected:
                status["state"] = self.tts_state if kind == "tts" else self.pipeline_state
            out[kind] = {
                "engine": name,
                "reason": getattr(choice, "reason", ""),
                "fallback": fallback,
                "placement": self.placement.where(kind),
                **status,
            }
        return out

    def close(self) -> None:
        """Release what the placement holds (a Ray instance this process started); engines stay usable until then."""
        self.placement.close()


def placement_for(options: AgentOptions) -> Any:
    """Where the engines of ``options`` run: ``catalogue.IN_PROCESS``, or Ray Serve when ``options.ray.enabled``."""
    if options.ray.enabled:
        from processors.ray_serve import RayPlacement

        return RayPlacement(options.ray)
    return catalogue.IN_PROCESS


def load_engines(
    options: AgentOptions,
    *,
    engines: Engines | None = None,
    progress: Callable[[str], None] | None = None,
    kinds: tuple[catalogue.Kind, ...] = catalogue.KINDS,
) -> Engines:
    """Choose and load every engine once, into ``engines`` (a new container if None), and return it.

    Engines that live elsewhere (an LLM endpoint) are checked first: a second, before minutes of local loading.
    Each kind's ``engines.status`` says which model is loading and, for a download, how many bytes arrived.
    Raises ``ModelUnavailable`` with a clear message when a chosen model cannot be had, after recording the failure on
    ``engines`` (so a server loading in the background reports it on ``/healthz`` and to sessions). ``kinds``: load
    only these (``duplex speak`` needs just the TTS)."""
    from processors import hub

    say = progress or (lambda msg: log.info(msg))
    engines = engines if engines is not None else Engines()
    engines.expect(kinds)
    placement = engines.placement = placement_for(options)
    groups = {"tts": options.tts, "stt": options.stt, "llm": options.llm}
    for kind in kinds:
        try:
            engines.choices[kind] = placement.choose(kind, groups[kind], options.device)
        except (ModelUnavailable, ValueError) as e:
            _record_failure(engines, kind, str(e))
            raise ModelUnavailable(str(e)) from e
    for kind in kinds:
        say(f"{kind.upper()}: {engines.choices[kind].engine} ({engines.choices[kind].reason})")
    rows = {kind: placement.row(kind, engines.choices[kind].engine) for kind in kinds}
    loaded: dict[str, Any] = {}
    for kind in sorted(kinds, key=lambda k: not rows[k].remote):
        row = engines.rows[kind] = rows[kind]
        model = row.model(groups[kind]) if row.model is not None else None
        engines.loading(kind, model=model, step="checking" if row.remote else "loading")
        say(f"loading the {kind.upper()} engine {row.name}" + (f" ({model})" if model else "") + " ...")

        def on_download(repo: str, received: int, total: int | None, kind: str = kind) -> None:
            engines.downloading(kind, received, total)

        try:
            with hub.report_downloads(on_download):
                loaded[kind] = row.load(groups[kind], options.device)
        except Exception as e:
            _record_failure(engines, kind, f"{kind.upper()} {row.name}: {e}")
            raise ModelUnavailable(f"cannot load the {kind.upper()} engine {row.name!r}: {e}") from e
        if kind == "tts":
            engines.set_tts(loaded[kind])
        elif kind == "stt":
            engines.stt = loaded[kind]
            engines.loaded(kind, loaded[kind])
        else:
            engines.llm = loaded[kind]
            engines.loaded(kind, loaded[kind])
    if "stt" in kinds and "llm" in kinds:
        engines.set_pipeline_ready(stt=loaded["stt"], llm=loaded["llm"])
    say("all engines ready")
    return engines


def _record_failure(engines: Engines, kind: str, message: str) -> None:
    if kind == "tts":
        engines.fail_tts(message)
    else:
        engines.fail(message, kind)


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
