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
    """Models the caller loads once and shares with every session; the app never loads models itself.

    The app may start before a model is ready (so ``duplex serve`` can answer while weights download): pass
    ``Engines()`` and call ``set_tts`` when the engine is loaded, or ``fail_tts`` with the reason if it cannot be.
    Until then speak sessions get ``MODEL_LOADING``. ``stt`` and ``llm`` are for the pipeline routers.
    """

    def __init__(self, tts: TTSEngine | None = None, *, stt: Any = None, llm: Any = None, **extra: Any):
        self._lock = threading.Lock()
        self._tts = tts
        self._tts_error: str | None = None
        self.stt = stt
        self.llm = llm
        self.extra = extra

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

    def set_tts(self, engine: TTSEngine) -> None:
        with self._lock:
            self._tts, self._tts_error = engine, None

    def fail_tts(self, message: str) -> None:
        with self._lock:
            self._tts, self._tts_error = None, message or "the TTS model failed to load"


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
