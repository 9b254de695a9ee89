"""The Duplex agent server (FastAPI): ``create_app(settings, engines)``; see ``app.py`` and docs/server.md."""

from .app import create_app
from .context import Engines, ServerContext, get_context

__all__ = ["create_app", "Engines", "ServerContext", "get_context"]
