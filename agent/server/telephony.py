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

Bad input never hangs up a call: the start event is read (within ``START_TIMEOUT_S``) before a session slot is
taken, and a bad one closes the socket with 1008; afterwards an event the serializer cannot use (not JSON, not an
object, a media payload that is not base64, oversized) is dropped and counted (``duplex_errors_total{code=
"INVALID_MESSAGE"}``) and the call goes on. A call whose media stops altogether ends after the voice idle timeout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from processors.audio import TELEPHONY_SAMPLE_RATE

from .context import get_context
from .guards import client_json, presented_token, token_matches
from .sessions import build_session_agent, resolve_voice, run_voice_session
from .telephony_marks import marking_serializer

log = logging.getLogger("duplex.server")

START_TIMEOUT_S = 10.0

router = APIRouter()


MAX_MEDIA_BYTES = 8000  # decoded audio in one media event: 1 s at 8 kHz (carriers send 20 ms)
MAX_EVENT_CHARS = 64 * 1024


async def _read_start(websocket: WebSocket) -> dict[str, Any]:
    """Read the carrier's first events up to its ``start`` event (Twilio/Telnyx send ``connected`` first)."""

    async def read() -> dict[str, Any]:
        while True:
            message = client_json(await websocket.receive_text())
            if not isinstance(message, dict):
                raise ValueError(f"an event must be a JSON object, got {type(message).__name__}")
            if message.get("event") == "start":
                return message
            if message.get("event") != "connected":
                raise ValueError(f"expected 'connected'/'start', got {str(message.get('event'))[:40]!r}")

    return await asyncio.wait_for(read(), START_TIMEOUT_S)


class _Media(BaseModel):
    payload: str = Field(max_length=(MAX_MEDIA_BYTES + 2) // 3 * 4)


class _Dtmf(BaseModel):
    digit: str = Field(min_length=1, max_length=1)


class CarrierEvent(BaseModel):
    """What the carriers' serializers read from an event, checked before they read it: a JSON object with an
    ``event`` name; a ``media`` event's ``media.payload`` is base64 of at most ``MAX_MEDIA_BYTES``; a ``dtmf``
    event's ``dtmf.digit`` one character. Other fields and other events (``mark``, ``stop``...) pass as they are."""

    model_config = ConfigDict(extra="allow")
    event: str = Field(max_length=64)
    media: _Media | None = None
    dtmf: _Dtmf | None = None

    @classmethod
    def check(cls, data: str | bytes) -> str | None:
        """Why ``data`` is not a usable event, or None."""
        if len(data) > MAX_EVENT_CHARS:
            return f"an event of {len(data)} bytes (the limit is {MAX_EVENT_CHARS})"
        try:
            message = client_json(data)
            if not isinstance(message, dict):
                return f"not a JSON object ({type(message).__name__})"
            event = cls.model_validate(message)
            if event.event == "media":
                if event.media is None:
                    return "a media event without media.payload"
                base64.b64decode(event.media.payload, validate=True)
            elif event.event == "dtmf" and event.dtmf is None:
                return "a dtmf event without dtmf.digit"
        except ValidationError as e:
            return f"bad fields ({e.errors()[0]['loc']}: {e.errors()[0]['msg']})"
        except (ValueError, binascii.Error) as e:
            return str(e)[:120]
        return None


class _GuardedEvents:
    """Put before a pipecat carrier serializer: events it would choke on (an exception in ``deserialize`` ends the
    transport's receive loop, which hangs up the call) are dropped and counted instead; the call goes on."""

    _metrics: Any = None
    _kind = ""

    async def deserialize(self, data: str | bytes) -> Any:
        why = CarrierEvent.check(data)
        if why is None:
            try:
                return await super().deserialize(data)  # type: ignore[misc]
            except Exception as e:
                why = f"the serializer failed: {type(e).__name__}: {e}"
        log.debug("%s: dropped an event: %s", self._kind, why)
        if self._metrics is not None:
            self._metrics.errors.inc(kind=self._kind, code="INVALID_MESSAGE")
        return None


def _serializer(kind: str, stream_id: str | None, **kwargs: Any) -> tuple[Any, Any]:
    """The carrier's marking serializer and its playout (``agent.server.telephony_marks``), behind the event guard."""
    return marking_serializer(kind, stream_id, mixin=_GuardedEvents, **kwargs)


def _id(value: Any, name: str, *, required: bool = True) -> str | None:
    """An id from a start event: a short string (or None when optional and absent)."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > 128:
        raise ValueError(f"{name} must be a string of 1-128 characters")
    return value


def _twilio(message: dict[str, Any]) -> tuple[Any, Any, str | None, dict]:
    from pipecat.serializers.twilio import TwilioFrameSerializer

    start = message["start"]
    serializer, playout = _serializer(
        "twilio",
        _id(message.get("streamSid") or start["streamSid"], "streamSid"),
        call_sid=_id(start.get("callSid"), "callSid", required=False),
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    return serializer, playout, start.get("callSid"), start.get("customParameters") or {}


def _telnyx(message: dict[str, Any]) -> tuple[Any, Any, str | None, dict]:
    from pipecat.serializers.telnyx import TelnyxFrameSerializer

    start = message.get("start") or {}
    encoding = (start.get("media_format") or {}).get("encoding") or "PCMU"
    if encoding not in ("PCMU", "PCMA"):
        raise ValueError(f"unsupported Telnyx encoding {str(encoding)[:20]!r} (PCMU or PCMA)")
    serializer, playout = _serializer(
        "telnyx",
        _id(message["stream_id"], "stream_id"),
        outbound_encoding=encoding,
        inbound_encoding=encoding,
        call_control_id=_id(start.get("call_control_id"), "call_control_id", required=False),
        params=TelnyxFrameSerializer.InputParams(auto_hang_up=False),
    )
    return serializer, playout, start.get("call_control_id"), start.get("custom_parameters") or {}


def _plivo(message: dict[str, Any]) -> tuple[Any, Any, str | None, dict]:
    from pipecat.serializers.plivo import PlivoFrameSerializer

    start = message["start"]
    serializer, playout = _serializer(
        "plivo",
        _id(start["streamId"], "streamId"),
        call_id=_id(start.get("callId"), "callId", required=False),
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
    try:  # the start event first (bounded by START_TIMEOUT_S), so a socket that never sends one takes no slot
        serializer, playout, call_id, custom = CARRIERS[kind](await _read_start(websocket))
    except WebSocketDisconnect:
        return
    except (TimeoutError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("%s: bad stream start (%s)", kind, e)
        ctx.metrics.errors.inc(kind=kind, code="INVALID_MESSAGE")
        await websocket.close(1008)
        return
    serializer._metrics, serializer._kind = ctx.metrics, kind
    slot = ctx.sessions.try_acquire(kind)
    if slot is None:
        ctx.metrics.errors.inc(kind=kind, code="RATE_LIMITED")
        await websocket.close(1013)
        return
    try:
        voice_id = custom.get("voice") if isinstance(custom, dict) else None
        voice_id = voice_id if isinstance(voice_id, str) else None
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
