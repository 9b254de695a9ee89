"""Edge checks shared by every route: bearer-token auth, the concurrent-session cap, upload limits, HTTP errors.

Auth: when ``ServerSettings.auth_token`` is set, every API route and WebSocket needs it, as ``Authorization: Bearer
<token>``, as ``?token=<token>`` (browsers cannot set WebSocket headers), or, on ``/api/v1/speak`` only, as
``authToken`` in the ``start`` message. ``/healthz`` and ``/readyz`` stay open for probes.

Sessions: one ``SessionLimiter`` per app caps concurrent sessions of every kind (speak, browser, telephony) together.

Client JSON: ``client_json`` parses what a client sends on any socket, turning every way it can be malformed (bad
syntax, bytes that are not UTF-8, nesting deep enough to exhaust the parser's recursion) into ``ValueError``.
"""

from __future__ import annotations

import hmac
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

UPLOAD_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small text fields around the audio part
MAX_CONCURRENT_UPLOADS = 2  # voice uploads read and decoded at once (each holds up to 20 MiB + 30 s of audio)
UPLOAD_WAIT_S = 30.0  # an upload waits this long for its turn, then 503


class ApiError(Exception):
    """An HTTP API error: ``{"error": {"code": ..., "message": ...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def api_error_response(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status, headers=exc.headers
    )


# --- auth ------------------------------------------------------------------------------------------
def token_matches(expected: str | None, given: Any) -> bool:
    """Constant-time comparison; True when no token is configured."""
    if not expected:
        return True
    if not isinstance(given, str) or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def presented_token(conn: HTTPConnection) -> str | None:
    """The token from ``Authorization: Bearer`` or ``?token=``; None when neither is present."""
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return ""  # present but not a bearer token: counts as a wrong token
    token = conn.query_params.get("token")
    return token if token is not None else None


def check_auth(conn: HTTPConnection, expected: str | None) -> None:
    """Raise 401 unless the request carries the token (no-op when auth is off)."""
    if not expected:
        return
    token = presented_token(conn)
    if token is None:
        raise ApiError(
            401,
            "UNAUTHORIZED",
            "this server needs a token: send 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": "Bearer"},
        )
    if not token_matches(expected, token):
        raise ApiError(
            401, "UNAUTHORIZED", "the token is not valid", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )


def require_auth(request: Request) -> None:
    """FastAPI dependency for HTTP routes: the app's token (``app.state.duplex.auth_token``) when one is set."""
    check_auth(request, request.app.state.duplex.auth_token)


# --- sessions --------------------------------------------------------------------------------------
@dataclass
class SessionSlot:
    """One admitted session; ``release()`` (idempotent) frees it."""

    limiter: SessionLimiter
    kind: str
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        self.limiter._release(self)

    def __enter__(self) -> SessionSlot:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class SessionLimiter:
    """At most ``max_sessions`` sessions at once, all kinds together. Thread-safe."""

    def __init__(self, max_sessions: int, metrics: Any = None):
        self.max_sessions = int(max_sessions)
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()
        self._metrics = metrics

    @property
    def active(self) -> int:
        with self._lock:
            return sum(self._active.values())

    def active_by_kind(self) -> dict[str, int]:
        with self._lock:
            return dict(self._active)

    def try_acquire(self, kind: str) -> SessionSlot | None:
        with self._lock:
            if sum(self._active.values()) >= self.max_sessions:
                if self._metrics is not None:
                    self._metrics.sessions_rejected.inc(kind=kind, reason="RATE_LIMITED")
                return None
            self._active[kind] = self._active.get(kind, 0) + 1
        if self._metrics is not None:
            self._metrics.sessions_active.inc(kind=kind)
            self._metrics.sessions_total.inc(kind=kind)
        return SessionSlot(self, kind)

    def _release(self, slot: SessionSlot) -> None:
        with self._lock:
            if slot._released:
                return
            slot._released = True
            self._active[slot.kind] -= 1
        if self._metrics is not None:
            self._metrics.sessions_active.dec(kind=slot.kind)


# --- uploads ---------------------------------------------------------------------------------------
def check_upload_length(request: Request, max_bytes: int) -> None:
    """Refuse a body before reading it: it must declare its length, and that length must fit the limit."""
    length = request.headers.get("content-length")
    if length is None:
        raise ApiError(411, "LENGTH_REQUIRED", "send the upload with a Content-Length header")
    try:
        n = int(length)
    except ValueError:
        raise ApiError(400, "INVALID_REQUEST", f"bad Content-Length {length!r}") from None
    if n > max_bytes + UPLOAD_FORM_OVERHEAD:
        raise ApiError(
            413,
            "PAYLOAD_TOO_LARGE",
            f"the upload is {n} bytes; the limit is {max_bytes} bytes ({max_bytes / (1 << 20):g} MiB) of audio",
        )


# --- client JSON -----------------------------------------------------------------------------------
def client_json(raw: str | bytes) -> Any:
    """``json.loads`` for a client's message; ``ValueError`` with the reason when it is not usable JSON."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError:
        raise ValueError("malformed JSON: not UTF-8") from None
    except RecursionError:  # the parser recurses once per nesting level (about 1000 levels)
        raise ValueError("malformed JSON: nested too deeply") from None


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """A small JSON request body, refused before it is read when it is not JSON (415) or too large (413: by its
    ``Content-Length``, or while it streams in without one); malformed JSON is a 400."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "send the body as JSON (Content-Type: application/json)")
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "INVALID_REQUEST", f"bad Content-Length {length[:20]!r}")
        if int(length) > max_bytes:
            raise ApiError(413, "PAYLOAD_TOO_LARGE", f"the body is {length} bytes; the limit is {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, "PAYLOAD_TOO_LARGE", f"the body is over the limit of {max_bytes} bytes")
    try:
        return client_json(bytes(body))
    except ValueError as e:
        raise ApiError(400, "INVALID_REQUEST", str(e)) from None
