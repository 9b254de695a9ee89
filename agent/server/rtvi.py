"""``/rtvi/ws``: pipecat's client protocol (RTVI) over a WebSocket, for ``@pipecat-ai/websocket-transport`` (and the
pipecat client SDKs and voice-ui-kit built on it).

The wire format is pipecat's own: protobuf frames (``ProtobufFrameSerializer``) carrying the microphone's PCM16
(16 kHz by default), the bot's PCM16 at 24 kHz, and RTVI messages as JSON inside message frames. The session is the
same voice agent as every other entry point, with ``rtvi=True``: pipecat's ``RTVIProcessor`` answers ``client-ready``
with ``bot-ready`` and its observer reports transcripts, speaking state, metrics and errors. WebRTC clients
(``@pipecat-ai/small-webrtc-transport``) use ``/api/offer`` instead, which speaks RTVI on its data channel.

Auth: ``?token=<token>`` (the transport's ``connect({wsUrl, token})`` appends it) or a bearer header; refusals close
the socket (1008 unauthorized, 1013 loading or at the session cap) since the protocol has no error message before
the session exists.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pipecat.frames.frames import Frame, InputAudioRawFrame, InputTransportMessageFrame
from pipecat.frames.protobufs import frames_pb2
from pipecat.serializers.protobuf import ProtobufFrameSerializer

from processors.audio import STT_SAMPLE_RATE, TTS_SAMPLE_RATE, StreamResampler, float_to_pcm16, pcm16_to_float

from .context import get_context
from .guards import client_json, presented_token, token_matches
from .sessions import build_session_agent, resolve_voice, run_voice_session

log = logging.getLogger("duplex.server")

KIND = "rtvi_ws"

router = APIRouter()


class RTVIProtobufSerializer(ProtobufFrameSerializer):
    """pipecat's protobuf serializer, made safe at the edge: a message that is not a frame, or a frame of no kind a
    client may send, is dropped (pipecat's would end the session's receive loop, or log an error per message), and
    microphone audio at another rate or in stereo is brought to the pipeline's mono input rate."""

    def __init__(self, sample_rate: int = STT_SAMPLE_RATE, **kwargs: Any):
        super().__init__(**kwargs)
        self._rate = sample_rate
        self._resampler: StreamResampler | None = None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if not isinstance(data, bytes):
            log.debug("rtvi ws: text message ignored (the protocol is binary protobuf)")
            return None
        try:
            proto = frames_pb2.Frame.FromString(data)
            kind = proto.WhichOneof("frame")
            if kind not in self.DESERIALIZABLE_FIELDS:  # pipecat's would log an error for a client's junk
                log.debug("rtvi ws: a protobuf frame of no known kind (%s) dropped", kind)
                return None
            if kind == "message":  # parsed here: pipecat's logs an error for each message that is not JSON
                return InputTransportMessageFrame(message=client_json(proto.message.data))
            frame = await super().deserialize(data)
        except Exception as e:
            log.debug("rtvi ws: not a protobuf frame (%s)", e)
            return None
        if isinstance(frame, InputAudioRawFrame):
            return self._mono_at_rate(frame)
        return frame

    def _mono_at_rate(self, frame: InputAudioRawFrame) -> InputAudioRawFrame | None:
        if not frame.audio or len(frame.audio) % 2 or frame.num_channels < 1 or frame.sample_rate <= 0:
            return None
        audio = pcm16_to_float(frame.audio)
        if frame.num_channels > 1:
            audio = audio[: len(audio) - len(audio) % frame.num_channels].reshape(-1, frame.num_channels).mean(axis=1)
        if frame.sample_rate != self._rate:
            if self._resampler is None or self._resampler.src_rate != frame.sample_rate:
                self._resampler = StreamResampler(frame.sample_rate, self._rate)
            audio = self._resampler.process(audio)
        elif frame.num_channels == 1:
            return frame
        if not len(audio):
            return None
        return InputAudioRawFrame(audio=float_to_pcm16(audio), sample_rate=self._rate, num_channels=1)


@router.websocket("/rtvi/ws")
async def rtvi_ws(websocket: WebSocket) -> None:
    from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

    ctx = get_context(websocket)
    await websocket.accept()
    if not token_matches(ctx.auth_token, presented_token(websocket)):
        ctx.metrics.errors.inc(kind=KIND, code="UNAUTHORIZED")
        return await websocket.close(1008)
    if ctx.engines.pipeline_state != "ready":
        ctx.metrics.errors.inc(kind=KIND, code="MODEL_LOADING")
        return await websocket.close(1013)
    slot = ctx.sessions.try_acquire(KIND)
    if slot is None:
        return await websocket.close(1013)
    try:
        voice, voice_id, warning = await resolve_voice(ctx, websocket.query_params.get("voice"))
        if warning:
            log.info("rtvi ws: %s", warning)
        transport = FastAPIWebsocketTransport(
            websocket,
            FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                add_wav_header=False,
                serializer=RTVIProtobufSerializer(STT_SAMPLE_RATE),
                allowed_origins=[],
            ),
        )
        agent = await build_session_agent(
            ctx,
            transport,
            telephony=False,
            audio_in_sample_rate=STT_SAMPLE_RATE,
            audio_out_sample_rate=TTS_SAMPLE_RATE,
            voice=voice,
            rtvi=True,
        )

        @transport.event_handler("on_client_disconnected")
        async def _gone(_transport: Any, _client: Any) -> None:
            await agent.worker.cancel()

        await run_voice_session(ctx, agent, kind=KIND)
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("rtvi ws session failed")
        ctx.metrics.errors.inc(kind=KIND, code="SESSION_ERROR")
    finally:
        slot.release()
