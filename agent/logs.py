"""One log level for everything a ``duplex`` command prints: our own loggers (stdlib ``logging``), pipecat's and
ours that use loguru, and uvicorn's (``duplex serve`` passes the same level to uvicorn). ``--log-level warning``
then prints warnings and errors only, from every library, instead of pipecat's per-frame DEBUG lines.

A few library messages that say nothing a user can act on are dropped at every level (``QUIET``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOGURU_FORMAT = "{time:YYYY-MM-DD HH:mm:ss,SSS} {level} {name}: {message}"

# (logger name, message prefix): library messages dropped whatever the level, with why.
QUIET: tuple[tuple[str, str], ...] = (
    # SmallWebRTC looks for a camera track on every call; the page sends audio only, so this is every call's noise
    ("pipecat.transports.smallwebrtc.connection", "No video transceiver"),
    ("pipecat.transports.smallwebrtc.connection", "No screen video transceiver"),
)


def _quiet(name: str, message: str) -> bool:
    return any(name == logger and message.startswith(prefix) for logger, prefix in QUIET)


class _QuietFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _quiet(record.name, record.getMessage())


def _loguru_filter(record: dict[str, Any]) -> bool:
    return not _quiet(record["name"] or "", record["message"])


def configure_logging(level: str = "info") -> None:
    """Send stdlib logging and loguru to stderr at ``level`` (one of ``LEVELS``), replacing earlier handlers."""
    level = level.lower()
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    number = getattr(logging, level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_QuietFilter())
    logging.basicConfig(level=number, handlers=[handler], force=True)
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=level.upper(), format=LOGURU_FORMAT, filter=_loguru_filter, colorize=False)
