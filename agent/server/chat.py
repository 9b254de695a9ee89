"""Browser voice chat: the page at ``/``, WebRTC through pipecat's SmallWebRTC (``POST /api/offer``) and a WebSocket
fallback (``/ws``). Each connection is one ``build_voice_agent`` session on the shared engines, holding a session
slot until the client goes away. ``GET /api/config`` gives the page what it needs first (the ICE servers, STUN/TURN
with credentials, and the limits); it needs the token when auth is on.

``/ws`` protocol (documented in docs/server.md), kept as plain as a browser or a script can speak it:

* client -> server: binary frames of raw PCM16 little-endian mono at 16 kHz (any length; 20 ms is usual); text
  messages (``agent.server.chat_protocol``): ``{"type": "text", "text"}`` a typed turn, ``{"type": "stop"}``.
  Query: ``?voice=<id>``, ``?language=<name>`` (the bot speaks and answers in it), ``?token=``.
* server -> client: text ``{"type": "ready", "sessionId", "inputSampleRate": 16000, "outputSampleRate": 24000,
  "encoding": "pcm16", "voice", "language", "engines"}`` first; then binary frames of raw PCM16 mono at 24 kHz (the
  bot's voice, 40 ms each, paced in real time) and text events (``agent.server.sessions.SessionEvents``: ``state``,
  ``transcript``, ``latency``, ``interrupted`` — on ``interrupted`` drop audio not yet played, like Twilio's
  ``clear`` —, ``warning``, and ``error`` with ``recoverable: true`` when a step fails mid-session) and ``flush``
  (the bot holds while it judges a sound over it: drop audio not yet played; if it plays on, the audio from where
  the page had got to comes again).
  Refusals: ``{"type": "error", "code", "message"}`` then close (``MODEL_LOADING``/``RATE_LIMITED``: 1013,
  ``UNAUTHORIZED``: 1008).

WebRTC: the page posts its offer (``{"sdp", "type", "pc_id"?}``, non-trickle: ICE gathered first) to ``/api/offer``
with ``?voice=<id>&language=<name>``; the answer comes back as ``{"sdp", "type", "pc_id"}``. Events travel as JSON on
the page's data channel, and the page's typed turns go the other way on it; ``PATCH /api/offer`` takes trickled ICE
candidates (pipecat's format) for clients that trickle. The server's peer uses the configured ICE servers too. The
same session speaks RTVI (messages labelled ``rtvi-ai``) on that channel, so pipecat's client SDKs
(``@pipecat-ai/client-js`` with ``@pipecat-ai/small-webrtc-transport``, voice-ui-kit) connect to ``/api/offer`` as
they connect to pipecat's own runner; the page ignores those messages, RTVI clients ignore the page's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
)
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.transports.base_transport import TransportParams

from pipelines.playback import RemotePlayout
from processors.audio import STT_SAMPLE_RATE, TTS_SAMPLE_RATE

from .context import ServerContext, get_context
from .guards import ApiError, check_auth, presented_token, token_matches
from .sessions import (
    SessionEvents,
    SessionInput,
    build_session_agent,
    resolve_language,
    resolve_voice,
    run_voice_session,
)

log = logging.getLogger("duplex.server")

STATIC_DIR = Path(__file__).resolve().parent / "static"
WS_KIND = "browser_ws"
WEBRTC_KIND = "browser_webrtc"

router = APIRouter()


class BrowserFlush:
    """``/ws`` playback messages for ``pipelines.playback.RemotePlayout``: the page confirms nothing (the clock is
    trusted); ``{"type": "flush"}`` makes it drop the audio it buffered when the bot holds for a sound over it (the
    held audio is sent again from where the page had got to if the bot plays on)."""

    @staticmethod
    def mark_message(name: str) -> None:
        return None

    @staticmethod
    def clear_message() -> dict[str, Any]:
        return {"type": "flush"}


class RawPCMSerializer(FrameSerializer):
    """``/ws`` wire format: binary = raw PCM16 mono (in at the pipeline's input rate, out at its output rate); text =
    JSON control/event messages. An ``InterruptionFrame`` becomes ``{"type": "interrupted"}`` so the client drops
    what it still buffers."""

    def __init__(
        self,
        sample_rate: int = STT_SAMPLE_RATE,
        on_message: Callable[[str], Awaitable[None]] | None = None,
        **kwargs: Any,
    ):
        """``on_message``: called with each text frame from the client (``SessionInput.handle``)."""
        super().__init__(**kwargs)
        self._in_rate = sample_rate
        self.on_message = on_message

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if isinstance(frame, OutputAudioRawFrame):
            return frame.audio
        if isinstance(frame, InterruptionFrame):
            return json.dumps({"type": "interrupted"})
        if isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)):
            return json.dumps(frame.message)
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if isinstance(data, bytes):
            if not data or len(data) % 2:
                return None  # not PCM16: ignore rather than crash the session
            return InputAudioRawFrame(audio=data, sample_rate=self._in_rate, num_channels=1)
        if self.on_message is not None:
            await self.on_message(data)
        return None


def _pipeline_unavailable(ctx: ServerContext) -> tuple[str, str] | None:
    state = ctx.engines.pipeline_state
    if state == "ready":
        return None
    if state == "failed":
        return "MODEL_LOADING", f"the voice pipeline cannot start: {ctx.engines.pipeline_error}"
    loading = [
        f"{kind.upper()} {info['engine']}" + (f" ({info['model']})" if info.get("model") else "")
        for kind, info in ctx.engines.describe().items()
        if info["state"] != "ready"
    ]
    still = f" ({', '.join(loading)})" if loading else ""
    return "MODEL_LOADING", f"the models are still loading{still}; retry in a moment"


# --- page ----------------------------------------------------------------------------------------------------------
@router.get("/api/config")
async def client_config(request: Request) -> dict[str, Any]:
    """What the page needs before it connects: the ICE servers (STUN/TURN, with credentials) and the limits. Needs
    the token when auth is on, so the page also uses it to check a token the person typed."""
    ctx = get_context(request)
    check_auth(request, ctx.auth_token)
    return {
        "iceServers": [server.browser() for server in ctx.settings.server.ice_servers],
        "maxTextChars": ctx.settings.server.max_text_chars,
        "language": ctx.settings.tts.language,
    }


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str) -> FileResponse:
    path = (STATIC_DIR / name).resolve()
    if path.parent != STATIC_DIR or not path.is_file():
        raise ApiError(404, "NOT_FOUND", f"no static file {name!r}")
    return FileResponse(path, headers={"Cache-Control": "no-cache"})


# --- WebSocket fallback --------------------------------------------------------------------------------------------
@router.websocket("/ws")
async def ws_chat(websocket: WebSocket) -> None:
    from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

    ctx = get_context(websocket)
    await websocket.accept()

    async def refuse(code: str, message: str, close_code: int) -> None:
        ctx.metrics.errors.inc(kind=WS_KIND, code=code)
        await websocket.send_text(json.dumps({"type": "error", "code": code, "message": message}))
        await websocket.close(close_code)

    if not token_matches(ctx.auth_token, presented_token(websocket)):
        return await refuse("UNAUTHORIZED", "this server needs ?token=<token>", 1008)
    if (why := _pipeline_unavailable(ctx)) is not None:
        return await refuse(*why, 1013)
    slot = ctx.sessions.try_acquire(WS_KIND)
    if slot is None:
        return await refuse("RATE_LIMITED", "the server is at its session limit", 1013)
    events: SessionEvents | None = None
    client_input: SessionInput | None = None
    try:
        voice, voice_id, warning = await resolve_voice(ctx, websocket.query_params.get("voice"))
        language, language_warning = resolve_language(ctx, websocket.query_params.get("language"))

        async def send_event(event: dict[str, Any]) -> None:
            await websocket.send_text(json.dumps(event))

        serializer = RawPCMSerializer(STT_SAMPLE_RATE)
        transport = FastAPIWebsocketTransport(
            websocket,
            FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                add_wav_header=False,
                serializer=serializer,
                allowed_origins=[],
            ),
        )
        events = SessionEvents(send_event, interruptions=False)  # the serializer sends them, in order with the audio
        agent = await build_session_agent(
            ctx,
            transport,
            telephony=False,
            audio_in_sample_rate=STT_SAMPLE_RATE,
            audio_out_sample_rate=TTS_SAMPLE_RATE,
            voice=voice,
            events=events,
            language=language,
            kind=WS_KIND,
            playout=RemotePlayout(BrowserFlush()),
        )
        client_input = SessionInput(ctx, agent, events, kind=WS_KIND)
        serializer.on_message = client_input.handle

        @transport.event_handler("on_client_disconnected")
        async def _gone(_transport: Any, _client: Any) -> None:
            await agent.worker.cancel()

        session_id = uuid.uuid4().hex[:12]
        await websocket.send_text(
            json.dumps(
                {
                    "type": "ready",
                    "sessionId": session_id,
                    "inputSampleRate": STT_SAMPLE_RATE,
                    "outputSampleRate": TTS_SAMPLE_RATE,
                    "encoding": "pcm16",
                    "voice": voice_id,
                    "language": language or ctx.settings.tts.language,
                    "engines": ctx.engines.describe(),
                }
            )
        )
        for message in (warning, language_warning):
            if message:
                await send_event({"type": "warning", "message": message})
        await run_voice_session(ctx, agent, kind=WS_KIND)
    except WebSocketDisconnect:
        pass
    except Exception as e:
        log.exception("voice session failed")
        ctx.metrics.errors.inc(kind=WS_KIND, code="SESSION_ERROR")
        try:
            await websocket.send_text(json.dumps({"type": "error", "code": "SESSION_ERROR", "message": str(e)}))
            await websocket.close(1011)
        except Exception:
            pass
    finally:
        if events is not None:
            events.close()
        if client_input is not None:
            client_input.close()
        slot.release()


# --- WebRTC --------------------------------------------------------------------------------------------------------
def _webrtc_handler(request: Request) -> Any:
    from pipecat.transports.smallwebrtc.request_handler import SmallWebRTCRequestHandler

    state = request.app.state
    if getattr(state, "duplex_webrtc", None) is None:
        from pipecat.transports.smallwebrtc.connection import IceServer

        servers = get_context(request).settings.server.ice_servers
        ice = [IceServer(urls=s.urls, username=s.username, credential=s.credential) for s in servers]
        handler = SmallWebRTCRequestHandler(ice_servers=ice or None)
        tasks: set[asyncio.Task] = set()
        state.duplex_webrtc, state.duplex_webrtc_tasks = handler, tasks

        async def close_all() -> None:
            """At shutdown: close every peer connection, then let the sessions finish (they release their slots)."""
            await handler.close()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        get_context(request).shutdown_hooks.append(close_all)
    return state.duplex_webrtc


async def _run_webrtc_session(
    ctx: ServerContext,
    connection: Any,
    voice: Any,
    voice_id: str,
    warnings: list[str],
    slot: Any,
    language: str | None = None,
) -> None:
    from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

    events: SessionEvents | None = None
    client_input: SessionInput | None = None
    try:

        async def send_event(event: dict[str, Any]) -> None:
            connection.send_app_message(event)

        transport = SmallWebRTCTransport(
            webrtc_connection=connection,
            params=TransportParams(audio_in_enabled=True, audio_out_enabled=True),
        )
        events = SessionEvents(send_event)
        agent = await build_session_agent(
            ctx,
            transport,
            telephony=False,
            audio_in_sample_rate=STT_SAMPLE_RATE,
            audio_out_sample_rate=TTS_SAMPLE_RATE,
            voice=voice,
            events=events,
            language=language,
            kind=WEBRTC_KIND,
            rtvi=True,  # pipecat's client SDKs (client-js + small-webrtc-transport) talk RTVI on the data channel
        )
        client_input = SessionInput(ctx, agent, events, kind=WEBRTC_KIND)

        @transport.event_handler("on_client_connected")
        async def _hello(_transport: Any, _client: Any) -> None:
            await send_event(
                {
                    "type": "ready",
                    "voice": voice_id,
                    "language": language or ctx.settings.tts.language,
                    "engines": ctx.engines.describe(),
                    "outputSampleRate": TTS_SAMPLE_RATE,
                }
            )
            for message in warnings:
                await send_event({"type": "warning", "message": message})

        @transport.event_handler("on_app_message")
        async def _message(_transport: Any, message: Any, _sender: Any) -> None:
            await client_input.handle(message)

        @transport.event_handler("on_client_disconnected")
        async def _gone(_transport: Any, _client: Any) -> None:
            await agent.worker.cancel()

        await run_voice_session(ctx, agent, kind=WEBRTC_KIND)
    except Exception:
        log.exception("WebRTC session failed")
        ctx.metrics.errors.inc(kind=WEBRTC_KIND, code="SESSION_ERROR")
    finally:
        if events is not None:
            events.close()
        if client_input is not None:
            client_input.close()
        slot.release()
        try:
            await connection.disconnect()
        except Exception:
            pass


@router.post("/api/offer")
async def webrtc_offer(request: Request) -> JSONResponse:
    """SDP offer -> answer; starts a voice session on the new peer connection."""
    from pipecat.transports.smallwebrtc.request_handler import SmallWebRTCRequest

    ctx = get_context(request)
    check_auth(request, ctx.auth_token)
    try:
        body = await request.json()
        offer = SmallWebRTCRequest(
            sdp=str(body["sdp"]), type=str(body["type"]), pc_id=body.get("pc_id"), restart_pc=body.get("restart_pc")
        )
    except Exception:
        raise ApiError(400, "INVALID_REQUEST", 'send JSON {"sdp": ..., "type": "offer"}') from None
    handler = _webrtc_handler(request)
    is_new = not (offer.pc_id and offer.pc_id in handler._pcs_map)
    slot = None
    voice = voice_id = warning = language = None
    warnings: list[str] = []
    if is_new:
        if (why := _pipeline_unavailable(ctx)) is not None:
            raise ApiError(503, why[0], why[1], {"Retry-After": "5"})
        slot = ctx.sessions.try_acquire(WEBRTC_KIND)
        if slot is None:
            ctx.metrics.errors.inc(kind=WEBRTC_KIND, code="RATE_LIMITED")
            raise ApiError(429, "RATE_LIMITED", "the server is at its session limit")
        try:
            voice, voice_id, warning = await resolve_voice(ctx, request.query_params.get("voice"))
            language, language_warning = resolve_language(ctx, request.query_params.get("language"))
        except Exception:
            slot.release()
            raise
        warnings = [w for w in (warning, language_warning) if w]
    started = False

    async def on_connection(connection: Any) -> None:
        nonlocal started
        task = asyncio.create_task(_run_webrtc_session(ctx, connection, voice, voice_id, warnings, slot, language))
        request.app.state.duplex_webrtc_tasks.add(task)
        task.add_done_callback(request.app.state.duplex_webrtc_tasks.discard)
        started = True

    try:
        answer = await handler.handle_web_request(offer, on_connection)
    finally:
        if slot is not None and not started:
            slot.release()
    return JSONResponse(answer)


@router.patch("/api/offer")
async def webrtc_ice(request: Request) -> dict[str, str]:
    from pipecat.transports.smallwebrtc.request_handler import IceCandidate, SmallWebRTCPatchRequest

    ctx = get_context(request)
    check_auth(request, ctx.auth_token)
    try:
        body = await request.json()
        patch = SmallWebRTCPatchRequest(pc_id=body["pc_id"], candidates=[IceCandidate(**c) for c in body["candidates"]])
    except Exception:
        raise ApiError(400, "INVALID_REQUEST", 'send JSON {"pc_id": ..., "candidates": [...]}') from None
    await _webrtc_handler(request).handle_patch_request(patch)
    return {"status": "ok"}
