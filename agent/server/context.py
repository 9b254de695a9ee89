"""What every route shares: the engines loaded once by the caller, the voice registry, metrics and the session cap.

``create_app`` puts one ``ServerContext`` on ``app.state.duplex``; routers (speak, voices, and later browser chat and
telephony) read it with ``get_context(request_or_websocket)``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.requests import HTTPConnection

from processors.tts_engine import TTSEngine
from voices.registry import Voice, VoiceRegistry

from .guards import SessionLimiter
from .metrics import ServerMetrics
from .threads import run_in_thread

log = logging.getLogger("duplex.server")

EngineState = Literal["loading", "ready", "failed"]


class Engines:
    """The engines of a process, loaded once (``agent.engines.load_engines``) and shared by every session.

    One container for the whole server: the TTS engine (``/api/v1/speak`` needs only that), the STT (Parakeet shared,
    or a fresh pocketsphinx decoder per session: ``new_stt_engine``), the local LLM engine, and why each was chosen
    (``describe``, shown on ``/healthz`` and the page). The app may start before the models are ready (so
    ``duplex serve`` answers while weights download): pass ``Engines()`` and let ``load_engines(settings,
    engines=...)`` fill it in the background, or call ``set_tts`` / ``set_pipeline_ready`` / ``fail`` yourself.
    Until then speak sessions get ``MODEL_LOADING`` and voice-chat sessions are refused with the same code.
    """

    def __init__(self, tts: TTSEngine | None = None, *, stt: Any = None, llm: Any = None, **extra: Any):
        self._lock = threading.Lock()
        self._tts = tts
        self._tts_error: str | None = None
        self._pipeline_ready = False
        self._pipeline_error: str | None = None
        self.stt = stt  # a shared STT engine (Parakeet); None = a fresh pocketsphinx decoder per session
        self.llm = llm  # a shared local LLM engine; None = the OpenAI-compatible endpoint in the settings
        self.choices: dict[str, Any] = {}  # "tts"/"stt"/"llm" -> agent.engines.Choice
        self.extra = extra

    @property
    def tts(self) -> TTSEngine | None:
        return self._tts

    @property
    def llm_engine(self) -> Any:
        return self.llm

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
        """Whether voice-chat sessions (TTS + STT + LLM) can start."""
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

    def set_pipeline_ready(self, *, stt: Any = None, llm: Any = None) -> None:
        """STT and LLM loaded (``stt``: shared engine or None; ``llm``: local engine or None)."""
        with self._lock:
            self.stt, self.llm = stt, llm
            self._pipeline_ready, self._pipeline_error = True, None

    def fail(self, message: str) -> None:
        """A model other than the TTS cannot be had: voice chat is refused with this reason (speak goes on)."""
        with self._lock:
            self._pipeline_error = message or "a model failed to load"

    def new_stt_engine(self) -> Any:
        """The STT engine for a new session: a shared one (Parakeet has its own lock), else a fresh pocketsphinx
        decoder (it carries per-speaker channel normalisation; ~0.3 s, ~100 MB): call it off the event loop."""
        if self.stt is not None:
            return self.stt
        from processors.pocketsphinx_stt import PocketsphinxEngine

        return PocketsphinxEngine()

    def describe(self) -> dict[str, dict[str, str]]:
        """``{"tts": {"engine", "reason", "state"}, "stt": ..., "llm": ...}`` for ``/healthz`` and the page."""
        out: dict[str, dict[str, str]] = {}
        for kind in ("tts", "stt", "llm"):
            choice = self.choices.get(kind)
            state = self.tts_state if kind == "tts" else self.pipeline_state
            out[kind] = {
                "engine": getattr(choice, "engine", "?"),
                "reason": getattr(choice, "reason", ""),
                "state": state,
            }
        return out


class VoiceLoader:
    """Engine voice objects for registry voices, loaded off the event loop and remembered (LRU) per engine, voice
    and reference file version, so a session start does not re-read the reference each time."""

    def __init__(self, max_items: int = 32):
        self.max_items = max_items
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(engine: TTSEngine, voice: Voice) -> tuple:
        try:
            st = voice.reference_path.stat()
            version = (st.st_mtime_ns, st.st_size)
        except OSError:
            version = None
        return (id(engine), voice.id, str(voice.folder), version, voice.manifest.model_dump_json())

    def cached(self, engine: TTSEngine, voice: Voice) -> Any | None:
        with self._lock:
            return self._cache.get(self._key(engine, voice))

    async def load(self, engine: TTSEngine, voice: Voice) -> Any:
        key = self._key(engine, voice)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        obj = await run_in_thread(engine.load_voice, voice.spec(), name=f"duplex-voice-{voice.id}")
        with self._lock:
            self._cache[key] = obj
            while len(self._cache) > self.max_items:
                self._cache.popitem(last=False)
        return obj

    def forget(self, voice_id: str) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[1] == voice_id]:
                del self._cache[key]


@dataclass
class ServerContext:
    settings: Any  # agent.settings.Settings
    engines: Engines
    registry: VoiceRegistry
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    sessions: SessionLimiter | None = None
    voices: VoiceLoader = field(default_factory=VoiceLoader)
    speak_sessions: set = field(default_factory=set)  # live speak sessions, for shutdown
    voice_sessions: dict = field(default_factory=dict)  # id -> live voice-chat VoiceAgent; cancelled at shutdown
    shutdown_hooks: list = field(default_factory=list)  # async callables the app awaits at shutdown (routers' cleanup)

    def __post_init__(self) -> None:
        if self.sessions is None:
            self.sessions = SessionLimiter(self.settings.server.max_sessions, self.metrics)

    @property
    def auth_token(self) -> str | None:
        return self.settings.server.auth_token or None

    def default_voice_loaded(self) -> bool:
        engine = self.engines.tts
        if engine is None:
            return False
        try:
            return self.voices.cached(engine, self.registry.default()) is not None
        except Exception:
            return False


def get_context(conn: HTTPConnection) -> ServerContext:
    return conn.app.state.duplex
