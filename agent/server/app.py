"""``create_app``: the one FastAPI app behind ``duplex serve``.

The caller loads the models once and passes them in (``Engines``); the app never loads a model per request. Routes:
``/api/v1/speak`` (WebSocket TTS), ``/v1/audio/speech`` (OpenAI's speech API), ``/api/v1/voices``, ``/healthz``,
``/readyz``, ``/metrics``. The pipeline
entry points (browser page, WebRTC offer, ``/ws``, telephony) are further ``APIRouter``s passed as ``routers`` (or
included later with ``app.include_router``); they read the shared state with ``get_context(request_or_ws)``
(settings, engines, voice registry, metrics, the session cap) and should take a slot from ``ctx.sessions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

from fastapi import APIRouter, FastAPI

from agent.settings import Settings
from pipelines.engines import Engines
from voices.registry import VoiceRegistry

from . import health, openai_speech, speak, voices_api
from .context import ServerContext
from .guards import ApiError, api_error_response

log = logging.getLogger("duplex.server")


async def _preload_default_voice(ctx: ServerContext) -> None:
    """Build the default voice as soon as the TTS engine is ready, so the first session does not wait for it."""
    while ctx.engines.tts_state == "loading":
        await asyncio.sleep(0.2)
    engine = ctx.engines.tts
    if engine is None:
        return
    try:
        voice = ctx.registry.default()
        await ctx.voices.load(engine, voice)
        log.info("default voice %r ready on %s", voice.id, engine.name)
    except Exception as e:  # sessions report it when they try the voice
        log.warning("cannot preload the default voice: %s", e)


def create_app(
    settings: Settings,
    engines: Engines,
    *,
    registry: VoiceRegistry | None = None,
    routers: Iterable[APIRouter] = (),
) -> FastAPI:
    """The server app.

    ``settings``: ``agent.settings.Settings`` (``server`` limits and token, ``tts.voice``/``tts.language``, voice dir).
    ``engines``: models loaded by the caller; ``Engines(tts=engine)``, or ``Engines()`` now and ``set_tts``/``fail_tts``
    later while the server already answers (MODEL_LOADING until then).
    ``registry``: defaults to ``settings.voice_registry()``.
    """
    ctx = ServerContext(
        settings=settings,
        engines=engines,
        registry=registry if registry is not None else settings.voice_registry(),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        preload = asyncio.create_task(_preload_default_voice(ctx))
        try:
            yield
        finally:
            preload.cancel()
            for session in list(ctx.speak_sessions):
                session.abort()  # engines stop within one step; sessions then join their workers
            for agent in list(ctx.voice_sessions.values()):  # WebRTC sessions have no uvicorn connection to close them
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(agent.worker.cancel(), 5)
            for hook in list(ctx.shutdown_hooks):  # routers' own cleanup (e.g. WebRTC peer connections)
                try:
                    await asyncio.wait_for(hook(), 10)
                except Exception as e:
                    log.warning("shutdown hook failed: %r", e)
            await asyncio.gather(preload, return_exceptions=True)

    app = FastAPI(
        title="Duplex",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.duplex = ctx
    if settings.server.cors_origins:  # a client app on its own origin (e.g. a pipecat client-js or voice-ui-kit page)
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.server.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_exception_handler(ApiError, api_error_response)  # type: ignore[arg-type]
    app.include_router(health.router)
    app.include_router(voices_api.router)
    app.include_router(speak.router)
    app.include_router(openai_speech.router)
    for router in routers:
        app.include_router(router)
    return app
