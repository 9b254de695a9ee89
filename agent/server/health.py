"""``/healthz`` (liveness: always 200 while the process serves, with each engine's loading state: which model, how
far a download is, why it failed), ``/readyz`` (200 when the server accepts sessions: every engine loaded and a free
session slot; else 503) and ``/metrics`` (Prometheus text format; needs the token when auth is on)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from .context import ServerContext, get_context
from .guards import require_auth
from .metrics import CONTENT_TYPE

router = APIRouter()


def health(ctx: ServerContext) -> dict[str, Any]:
    engine = ctx.engines.tts
    state = ctx.engines.tts_state
    tts: dict[str, Any] = {"state": state}
    if engine is not None:
        tts.update(engine=engine.name, sampleRate=engine.sample_rate, languages=list(engine.languages))
    if state == "failed":
        tts["error"] = ctx.engines.tts_error
    pipeline: dict[str, Any] = {"state": ctx.engines.pipeline_state}
    if pipeline["state"] == "failed":
        pipeline["error"] = ctx.engines.pipeline_error
    overall = ctx.engines.state
    accepting = overall == "ready" and ctx.sessions.active < ctx.sessions.max_sessions
    return {
        "status": "ok" if overall == "ready" else overall,
        "ready": accepting,  # what /readyz answers: sessions are accepted now
        "models": {"tts": tts, "pipeline": pipeline},
        "engines": ctx.engines.describe(),
        "sessions": {
            "active": ctx.sessions.active,
            "max": ctx.sessions.max_sessions,
            "byKind": ctx.sessions.active_by_kind(),
        },
        "auth": bool(ctx.auth_token),
    }


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    return health(get_context(request))


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    body = health(get_context(request))
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@router.get("/metrics", dependencies=[Depends(require_auth)])
async def metrics(request: Request) -> PlainTextResponse:
    ctx = get_context(request)
    for kind, info in ctx.engines.describe().items():
        ctx.metrics.models_ready.set(1.0 if info["state"] == "ready" else 0.0, model=kind)
    return PlainTextResponse(ctx.metrics.render(), media_type=CONTENT_TYPE)
