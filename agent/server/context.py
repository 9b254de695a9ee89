"""What every route shares: the engines loaded once by the caller (``pipelines.engines.Engines``), the voice
registry and its voice cache, metrics and the session cap.

``create_app`` puts one ``ServerContext`` on ``app.state.duplex``; routers (speak, voices, and later browser chat and
telephony) read it with ``get_context(request_or_websocket)``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from agent.settings import Settings
from pipelines.engines import Engines
from voices.loader import VoiceLoader
from voices.registry import VoiceRegistry

from .guards import MAX_CONCURRENT_UPLOADS, SessionLimiter
from .metrics import ServerMetrics

log = logging.getLogger("duplex.server")


@dataclass
class ServerContext:
    settings: Settings
    engines: Engines
    registry: VoiceRegistry
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    sessions: SessionLimiter | None = None
    voices: VoiceLoader = field(default_factory=VoiceLoader)
    speak_sessions: set = field(default_factory=set)  # live speak sessions, for shutdown
    voice_sessions: dict = field(default_factory=dict)  # id -> live voice-chat VoiceAgent; cancelled at shutdown
    shutdown_hooks: list = field(default_factory=list)  # async callables the app awaits at shutdown (routers' cleanup)
    # voice uploads being read and decoded; the rest wait (their bodies stay spooled on disk meanwhile)
    uploads: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_UPLOADS))

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
