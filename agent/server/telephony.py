"""Telephony: ``/telephony/twilio`` takes a Twilio Media Streams WebSocket (8 kHz mu-law JSON events) and runs one voice
agent per call through pipecat's ``TwilioFrameSerializer``; ``/telephony/telnyx`` and ``/telephony/plivo`` do the same
with pipecat's Telnyx and Plivo serializers (their start events differ; the pipeline is the same).

The pipeline runs at 8 kHz in and out, the rate of the call: the serializer then converts mu-law <-> PCM without a
resampler (pipecat's soxr stream resampler holds back ~95-140 ms at 8k<->16k, a latency trap on every frame);
Silero VAD takes 8 kHz as is; only the STT (16 kHz) and the TTS output (22.05/24 kHz ->
8 kHz, once per reply chunk) resample inside their services. On barge-in pipecat's ``InterruptionFrame`` makes the
serializer send Twilio ``{"event": "clear", "streamSid"}`` (Telnyx ``clear``, Plivo ``clearAudio``), so audio
buffered at the carrier stops at once. The call is
detected as telephony (the serializer), so the echo guard is on with ``turn.echo_guard=auto``. When a step of the
pipeline fails (an LLM endpoint gone, say) the caller hears a short apology and the call goes on.

Played words (``turn.carrier_marks``, on by default): the server sends audio ahead of playback, so what it sent is
not what the caller heard. Each carrier's playback acknowledgements (Twilio and Telnyx ``mark``, Plivo
``checkpoint`` / ``playedStream``; ``agent.server.telephony_marks``) tell the pipeline what was played: the context
after a barge-in holds the words the caller heard, and the barge-in hold clears the carrier's buffer at once and
plays the cut audio again from the confirmed point if it was not an interruption.

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

from .context import get_context
from .guards import presented_token, token_matches
from .sessions import build_session_agent, resolve_voice, run_voice_session
from .telephony_marks import marking_serializer

log = logging.getLogger("duplex.server")

START_TIMEOUT_S = 10.0

router = APIRouter()


async def _read_start(websocket: WebSocket) -> dict[str, Any]:
    """Read the carrier's first events up to its ``start`` event (Twilio/Telnyx send ``connected`` first)."""

    async def read() -> dict[str, Any]:
        while True:
            message = json.loads(await websocket.receive_text())
            if message.get("event") == "start":
                return message
            if message.get("event") != "connected":
                raise ValueError(f"expected 'connected'/'start', got {message.get('event')!r}")

    return await asyncio.wait_for(read(), START_TIMEOUT_S)


def _twilio(message: dict[str, Any]) -> tuple[Any, Any, str | None, dict]:
    from pipecat.serializers.twilio import TwilioFrameSerializer

    start = message["start"]
    serializer, playout = marking_serializer(
        "twilio",
        message.get("streamSid") or start["streamSid"],
        call_sid=start.get("callSid"),
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    return serializer, playout, start.get("callSid"), start.get("customParameters") or {}


def _telnyx(message: dict[str, Any]) -> tuple[Any, Any, str | None, dict]:
    from pipecat.serializers.telnyx import TelnyxFrameSerializer

    start = message.get("start") or {}
    encoding = (start.get("media_format") or {}).get("encoding") or "PCMU"
    serializer, playout = marking_serializer(
        "telnyx",
        message["stream_id"],
        outbound_encoding=encoding,
        inbound_encoding=encoding,
        call_control_id=start.get("call_control_id"),
        params=TelnyxFrameSerializer.InputParams(auto_hang_up=False),
    )
    return serializer, playout, start.get("call_control_id"), start.get("custom_parameters") or {}


def _plivo(message: dict[str, Any]) -> tuple[Any, Any, str | None, dict]:
    from pipecat.serializers.plivo import PlivoFrameSerializer

    start = message["start"]
    serializer, playout = marking_serializer(
        "plivo",
        start["streamId"],
        call_id=start.get("callId"),
        params=PlivoFrameSerializer.InputParams(auto_hang_up=False),
    )
    return serializer, playout, start.get("callId"), message.get("extra_headers") or {}


CARRIERS = {"twilio": _twilio, "telnyx": _telnyx, "plivo": _plivo}


async def _carrier_stream(websocket: WebSocket, kind: str) -> None:
    from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

    ctx = get_context(websocket)
    await websocket.accept()
    if not token_matches(ctx.auth_token, presented_token(websocket)):
        ctx.metrics.errors.inc(kind=kind, code="UNAUTHORIZED")
        await websocket.close(1008)
        return
    if ctx.engines.pipeline_state != "ready":
        ctx.metrics.errors.inc(kind=kind, code="MODEL_LOADING")
        await websocket.close(1013)
        return
    slot = ctx.sessions.try_acquire(kind)
    if slot is None:
        await websocket.close(1013)
        return
    try:
        try:
            serializer, playout, call_id, custom = CARRIERS[kind](await _read_start(websocket))
        except (TimeoutError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("%s: bad stream start (%s)", kind, e)
            ctx.metrics.errors.inc(kind=kind, code="INVALID_MESSAGE")
            await websocket.close(1008)
            return
        voice_id = custom.get("voice") if isinstance(custom, dict) else None
        voice, voice_id, warning = await resolve_voice(ctx, voice_id or websocket.query_params.get("voice"))
        if warning:
            log.warning("%s: %s", kind, warning)
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
        agent = await build_session_agent(
            ctx,
            transport,
            telephony=True,
            audio_in_sample_rate=TELEPHONY_SAMPLE_RATE,
            audio_out_sample_rate=TELEPHONY_SAMPLE_RATE,
            voice=voice,
            playout=playout if ctx.settings.turn.carrier_marks else None,
            kind=kind,
        )

        @transport.event_handler("on_client_disconnected")
        async def _gone(_transport: Any, _client: Any) -> None:
            await agent.worker.cancel()

        log.info("%s: call %s (voice %s)", kind, call_id, voice_id)
        await run_voice_session(ctx, agent, kind=kind)
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("%s session failed", kind)
        ctx.metrics.errors.inc(kind=kind, code="SESSION_ERROR")
    finally:
        slot.release()


@router.websocket("/telephony/twilio")
async def twilio_stream(websocket: WebSocket) -> None:
    await _carrier_stream(websocket, "twilio")


@router.websocket("/telephony/telnyx")
async def telnyx_stream(websocket: WebSocket) -> None:
    await _carrier_stream(websocket, "telnyx")


@router.websocket("/telephony/plivo")
async def plivo_stream(websocket: WebSocket) -> None:
    await _carrier_stream(websocket, "plivo")
