"""Keep the auth token out of the logs.

Twilio streams and browsers can only authenticate with ``?token=<token>`` in the URL, and uvicorn logs every request
line and every WebSocket accept with its query string (``"GET /api/v1/voices?token=..." 200``, ``"WebSocket
/ws?token=..." [accepted]``). ``install_token_redaction`` puts a filter on the loggers that write URLs, replacing the
value of every ``token=`` query parameter with ``***`` in the message and its arguments before any handler sees it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

URL_LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn")  # where uvicorn writes request lines and WS accepts
_TOKEN = re.compile(r"((?:^|[?&;])token=)[^&;#\s\"']*", re.IGNORECASE)
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with the value of every ``token=`` query parameter replaced by ``***``."""
    return _TOKEN.sub(rf"\g<1>{REDACTED}", text) if "token=" in text.lower() else text


def _redact_arg(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class TokenRedactionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        return True


def install_token_redaction() -> None:
    """Idempotent; the filters survive uvicorn's own logging configuration (``dictConfig`` keeps logger filters)."""
    for name in URL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TokenRedactionFilter) for f in logger.filters):
            logger.addFilter(TokenRedactionFilter())
