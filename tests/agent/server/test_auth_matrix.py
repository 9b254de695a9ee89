"""The bearer token on every route of the full ``duplex serve`` app, generated from ``app.routes``: HTTP routes (each
method), the browser WebSocket, every telephony provider, ``/api/v1/speak`` — and any route added later, without
touching this file. Each is refused without the token and with a wrong one, and accepted with it (header or
``?token=``). Only the routes in ``PUBLIC`` (probes, the page, the API docs) answer without it, and that list is
checked against the app too, so it cannot go stale.

The engines are left loading (``Engines()``): an accepted voice session then stops at ``MODEL_LOADING``, which is past
the token check, and nothing heavy runs."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
import websockets

from agent.serve import build_app
from agent.server import Engines
from agent.settings import ServerSettings, Settings

from .conftest import LiveServer

TOKEN = "matrix-s3cret"
# (method, path) that answer without a token: health probes, the browser page and its files, the API docs
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/"),
    ("GET", "/static/{name}"),
    ("GET", "/favicon.ico"),
    ("GET", "/api/docs"),
    ("GET", "/api/openapi.json"),
    ("GET", "/docs/oauth2-redirect"),
}
PATH_VALUES = {"name": "style.css", "voice_id": "no-such-voice"}  # for path parameters; anything else gets "x"
AUTH_CLOSE = 1008


def _flatten(routes: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(path, route) for every route, through included routers (FastAPI keeps them nested)."""
    out = []
    for route in routes:
        if hasattr(route, "path"):
            out.append((prefix + route.path, route))
        elif hasattr(route, "original_router"):  # an included router
            out += _flatten(route.original_router.routes, prefix + route.include_context.prefix)
        else:
            raise AssertionError(f"a route this test cannot read: {route!r}; teach _flatten about it")
    return out


def endpoints(app) -> list[tuple[str, str]]:
    """(method, path) of every endpoint; WebSockets as method "WS"."""
    out = set()
    for path, route in _flatten(app.routes):
        methods = getattr(route, "methods", None)
        if methods:
            out |= {(m, path) for m in methods if m != "HEAD"}
        elif "websocket" in type(route).__name__.lower():
            out.add(("WS", path))
        else:
            raise AssertionError(f"route {path} is neither HTTP nor WebSocket: {route!r}")
    return sorted(out)


def _app(tmp_dir) -> Any:
    settings = Settings(voices_dir=tmp_dir, server=ServerSettings(auth_token=TOKEN, idle_timeout_s=1.0))
    return build_app(settings, Engines())


ROUTES = endpoints(_app("/nonexistent-duplex-voices"))  # the same app the server below runs, read at collection
GUARDED = [e for e in ROUTES if e not in PUBLIC]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = LiveServer(_app(tmp_path_factory.mktemp("voices"))).start()
    yield server
    server.stop()


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: PATH_VALUES.get(m.group(1), "x"), path)


def _presented(how: str) -> tuple[dict[str, str], dict[str, str]]:
    """(headers, query) presenting the token ``how``."""
    return {
        "none": ({}, {}),
        "wrong-header": ({"Authorization": "Bearer wrong"}, {}),
        "wrong-query": ({}, {"token": "wrong"}),
        "header": ({"Authorization": f"Bearer {TOKEN}"}, {}),
        "query": ({}, {"token": TOKEN}),
    }[how]


async def _ws_outcome(live: LiveServer, path: str, how: str) -> tuple[str, Any]:
    """Connect and watch for up to a few seconds: ("refused", why) when the server refuses for the token (an
    UNAUTHORIZED message or close code 1008), else ("accepted", what it did instead)."""
    headers, query = _presented(how)
    url = f"ws://127.0.0.1:{live.port}{_url(path)}" + (f"?token={query['token']}" if query else "")
    async with websockets.connect(url, additional_headers=headers) as ws:
        try:
            while True:
                frame = await asyncio.wait_for(ws.recv(), 5)
                if isinstance(frame, str):
                    message = json.loads(frame)
                    if message.get("code") == "UNAUTHORIZED":
                        return "refused", message
                    if (message.get("error") or {}).get("type") == "authentication_error":
                        continue  # the Realtime convention: an error event, then the close decides
                    if message.get("type") == "error":
                        return "accepted", message  # refused for another reason, past the token
        except websockets.ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            return ("refused" if code == AUTH_CLOSE else "accepted"), f"closed {code}"
        except TimeoutError:
            return "accepted", "still open"


def _http(live: LiveServer, method: str, path: str, how: str) -> httpx.Response:
    headers, query = _presented(how)
    return httpx.request(method, live.http + _url(path), headers=headers, params=query, timeout=10)


def _id(endpoint: tuple[str, str]) -> str:
    return f"{endpoint[0]} {endpoint[1]}"


def test_every_kind_of_entry_point_is_in_the_matrix():
    """The matrix covers what the README lists (so a broken route walk cannot make it empty)."""
    paths = {p for _, p in GUARDED}
    assert {"/api/v1/speak", "/ws", "/telephony/twilio", "/telephony/telnyx", "/telephony/plivo"} <= paths
    assert {("POST", "/api/offer"), ("PATCH", "/api/offer"), ("GET", "/metrics")} <= set(GUARDED)
    assert {("GET", "/api/v1/voices"), ("POST", "/api/v1/voices")} <= set(GUARDED)
    assert {("GET", "/api/v1/voices/{voice_id}"), ("DELETE", "/api/v1/voices/{voice_id}")} <= set(GUARDED)
    assert PUBLIC <= set(ROUTES), f"PUBLIC names routes the app does not have: {PUBLIC - set(ROUTES)}"


@pytest.mark.parametrize("how", ["none", "wrong-header", "wrong-query"])
@pytest.mark.parametrize("endpoint", GUARDED, ids=_id)
async def test_refused_without_the_token(live, endpoint, how):
    method, path = endpoint
    if method == "WS":
        outcome, what = await _ws_outcome(live, path, how)
        assert outcome == "refused", f"{path} let a client in without the token: {what}"
    else:
        r = _http(live, method, path, how)
        assert r.status_code == 401, f"{method} {path} without the token: {r.status_code} {r.text[:200]}"
        assert r.json()["error"]["code"] == "UNAUTHORIZED" and r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("how", ["header", "query"])
@pytest.mark.parametrize("endpoint", GUARDED, ids=_id)
async def test_accepted_with_the_token(live, endpoint, how):
    method, path = endpoint
    if method == "WS":
        outcome, what = await _ws_outcome(live, path, how)
        assert outcome == "accepted", f"{path} refused the right token: {what}"
    else:
        r = _http(live, method, path, how)
        assert r.status_code not in (401, 403), f"{method} {path} with the token: {r.status_code} {r.text[:200]}"


@pytest.mark.parametrize("endpoint", sorted(PUBLIC), ids=_id)
def test_public_routes_need_no_token(live, endpoint):
    method, path = endpoint
    r = _http(live, method, path, "none")
    assert r.status_code not in (401, 403), f"{method} {path}: {r.status_code}"  # /readyz: 503 while loading
