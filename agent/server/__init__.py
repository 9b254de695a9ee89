"""The Duplex agent server (FastAPI): ``create_app(settings, engines)``; see ``app.py`` and docs/server.md."""

from pipelines.engines import Engines

from .app import create_app
from .context import ServerContext, get_context

__all__ = ["Engines", "ServerContext", "create_app", "get_context"]
