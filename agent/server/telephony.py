"""Telephony: ``/telephony/twilio`` takes a Twilio Media Streams WebSocket (8 kHz mu-law JSON events) and runs one voice
agent per call through pipecat's ``TwilioFrameSerializer``.

The pipeline runs at 8 kHz in and out, the rate of the call: the serializer then converts mu-law <-> PCM without a
resampler (pipecat's soxr stream resampler holds back ~95-140 ms at 8k<->16k, a latency trap on every frame, see
/work/shared/notes/pipecat.md); Silero VAD takes 8 kHz as is; only the STT (16 kHz) and the TTS output (22.05/24 kHz ->
8 kHz, once per reply chunk) resample inside their services. On barge-in pipecat's ``InterruptionFrame`` makes the
serializer send Twilio ``{"event": "clear", "streamSid"}``, so audio buffered at Twilio stops at once. The call is
detected as telephony (the serializer), so the echo guard is on with ``turn.echo_guard=auto``.

Auth: with a server token set, the stream URL must carry ``?token=<token>`` (Twilio cannot send headers on a
stream; put it in the ``<Stream url=...>``). TwiML: docs/server.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from processors.audio import TELEPHONY_SAMPLE_RATE

from .guards import presented_token, token_matches
from .context import get_context
from .sessions import build_session_agent, resolve_voice, run_voice_session

log = logging.getLogger("duplex.server")

TWILIO_KIND = "twilio"
START_TIMEOUT_S = 10.0

router = APIRouter()


async def _read_twilio_start(websocket: WebSocket) -> dict[str, Any]:
    """Read Twilio's ``connected`` and ``start`` events; return the ``start`` event."""
    async def read() -> dict[str, Any]:
        while True:
            message = json.loads(await websocket.receive_text())
            if message.get("event") == "start":
                return message
            if message.get("event") not in ("connected",):
                raise ValueError(f"expected Twilio 'connected'/'start', got {message.get('event')!r}")

    return await asyncio.wait_for(read(), START_TIMEOUT_S)


@router.websocket("/telephony/twilio")
async def twilio_stream(websocket: WebSocket) -> None:
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

    ctx = get_context(websocket)
    await websocket.accept()
    if not token_matches(ctx.auth_token, presented_token(websocket)):
        ctx.metrics.errors.inc(kind=TWILIO_KIND, code="UNAUTHORIZED")
        await websocket.close(1008)
        return
    if ctx.engines.pipeline_state != "ready":
        ctx.metrics.errors.inc(kind=TWILIO_KIND, code="MODEL_LOADING")
        await websocket.close(1013)
        return
    slot = ctx.sessions.try_acquire(TWILIO_KIND)
    if slot is None:
        await websocket.close(1013)
        return
    try:
        try:
            start = await _read_twilio_start(websocket)
            info = start["start"]
            stream_sid = start.get("streamSid") or info["streamSid"]
        except (asyncio.TimeoutError, ValueError, KeyError, TypeError) as e:
            log.warning("twilio: bad stream start (%s)", e)
            ctx.metrics.errors.inc(kind=TWILIO_KIND, code="INVALID_MESSAGE")
            await websocket.close(1008)
            return
        custom = info.get("customParameters") or {}
        voice, voice_id, warning = await resolve_voice(ctx, custom.get("voice") or websocket.query_params.get("voice"))
        if warning:
            log.warning("twilio: %s", warning)
        serializer = TwilioFrameSerializer(
            stream_sid=stream_sid, call_sid=info.get("callSid"),
            params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
        )
        transport = FastAPIWebsocketTransport(
            websocket,
            FastAPIWebsocketParams(audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False,
                                   serializer=serializer, allowed_origins=[]),
        )
        agent = await build_session_agent(ctx, transport, telephony=True,
                                          audio_in_sample_rate=TELEPHONY_SAMPLE_RATE,
                                          audio_out_sample_rate=TELEPHONY_SAMPLE_RATE, voice=voice)

        @transport.event_handler("on_client_disconnected")
        async def _gone(_transport: Any, _client: Any) -> None:
            await agent.worker.cancel()

        log.info("twilio: call %s stream %s (voice %s)", info.get("callSid"), stream_sid, voice_id)
        await run_voice_session(ctx, agent, kind=TWILIO_KIND)
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("twilio session failed")
        ctx.metrics.errors.inc(kind=TWILIO_KIND, code="SESSION_ERROR")
    finally:
        slot.release()
