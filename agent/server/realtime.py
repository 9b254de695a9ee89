"""``/v1/realtime``: the OpenAI Realtime protocol over WebSocket, on the same voice pipeline as every other session.

An app built on the official ``openai`` SDK's realtime client (``client.realtime.connect`` or the beta
``client.beta.realtime.connect``) points its ``websocket_base_url`` at ``ws://host:port/v1`` and talks to Duplex
instead of OpenAI. The protocol lives at the edge only: ``RealtimeSerializer`` turns client events into pipeline
frames (audio in) and pipeline audio into ``response.output_audio.delta`` events, ``RealtimeEvents`` (an observer)
turns the pipeline's turn, transcript and reply frames into the protocol's events, and ``RealtimeSession`` keeps the
conversation's items and the response in flight. The pipeline itself is ``build_session_agent`` on the shared engines,
with the server's turn policy, session cap, metrics (kind ``realtime``) and token.

Turns: with ``turn_detection`` ``server_vad`` (the default; ``semantic_vad`` is taken as the same) input audio goes
into the pipeline as it arrives, and the server's VAD and turn policy decide when the user has finished and when a
barge-in interrupts the reply. With ``turn_detection: null`` the audio is held at the edge until
``input_audio_buffer.commit``; it is then transcribed by the session's STT engine and added to the conversation, and
``response.create`` asks for the reply. Text items (``conversation.item.create`` with ``input_text``) work in both.

Barge-in: the reply's audio is sent paced (pipecat's websocket output paces it near real time), so the server knows
how much of it the client can have played; when the user interrupts it sends ``conversation.item.truncated`` with that
``audio_end_ms`` and keeps, as the item's transcript and in the LLM context, only the words spoken until then. A
client's own ``conversation.item.truncate`` (what the SDK's apps send when they stop playback) is honoured the same
way. The pipeline starts with the first event that needs it (audio, an item, a response), so a ``session.update``
sent first decides its audio rates: 16 kHz in / 24 kHz out for ``pcm16``, 8 kHz both ways for G.711 (no resampler on a
phone bridge's path); formats changed later are converted at the edge.
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import binascii
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    InterruptionWorkerFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMMessagesAppendFrame,
    LLMRunFrame,
    LLMUpdateSettingsFrame,
    OutputAudioRawFrame,
    TranscriptionFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.services.settings import LLMSettings
from pipecat.transports.base_output import BaseOutputTransport

from processors.audio import (
    REALTIME_PCM_SAMPLE_RATE,
    STT_SAMPLE_RATE,
    TELEPHONY_SAMPLE_RATE,
    TTS_SAMPLE_RATE,
    StreamResampler,
    float_to_pcm16,
    pcm16_to_float,
)
from processors.stt_engine import transcribe_long
from processors.threads import run_in_thread

from .context import ServerContext, get_context
from .guards import presented_token, token_matches
from .realtime_protocol import (
    AppendEvent,
    AudioFormat,
    ClearEvent,
    CommitEvent,
    Dialect,
    ItemCreateEvent,
    ItemDeleteEvent,
    ItemRetrieveEvent,
    ItemTruncateEvent,
    OutputAudioClearEvent,
    ProtocolError,
    ResponseCancelEvent,
    ResponseCreateEvent,
    ServerEvents,
    SessionConfig,
    SessionUpdateEvent,
    TranscriptionSessionUpdateEvent,
    message_item,
    new_id,
    parse_client_event,
    unsupported,
)
from .sessions import SessionActivity, SessionEnd, build_session_agent, resolve_voice, run_voice_session

log = logging.getLogger("duplex.server")

KIND = "realtime"
MAX_BUFFER_SECONDS = 300.0  # input held for a manual commit; beyond it appends are refused until commit/clear
MIN_COMMIT_MS = 100.0  # OpenAI's floor for a commit
MAX_ITEMS = 1000  # items remembered for retrieve/truncate/delete (the LLM context has its own budget)
START_TIMEOUT_S = 15.0

router = APIRouter()


def format_rate(fmt: AudioFormat) -> int:
    return REALTIME_PCM_SAMPLE_RATE if fmt == "pcm16" else TELEPHONY_SAMPLE_RATE


def decode_audio(data: bytes, fmt: AudioFormat) -> bytes:
    """Client audio -> PCM16 at the format's rate."""
    if fmt == "pcm16":
        if len(data) % 2:
            raise ProtocolError("invalid_value", "pcm16 audio must be a whole number of 16-bit samples", param="audio")
        return data
    return audioop.ulaw2lin(data, 2) if fmt == "g711_ulaw" else audioop.alaw2lin(data, 2)


def encode_audio(pcm: bytes, fmt: AudioFormat) -> bytes:
    if fmt == "pcm16":
        return pcm
    return audioop.lin2ulaw(pcm, 2) if fmt == "g711_ulaw" else audioop.lin2alaw(pcm, 2)


class Resampler:
    """PCM16 bytes from one rate to another, one stream per direction (no clicks at chunk seams)."""

    def __init__(self, src: int, dst: int):
        self.src, self.dst = src, dst
        self._stream = StreamResampler(src, dst) if src != dst else None

    def __call__(self, pcm: bytes) -> bytes:
        if self._stream is None or not pcm:
            return pcm
        return float_to_pcm16(self._stream.process(pcm16_to_float(pcm)))


@dataclass
class Response:
    """The reply in flight: one assistant message item with one audio part."""

    id: str
    item_id: str
    sent_ms: float = 0.0  # audio sent to the client
    first_sent: float | None = None  # monotonic time of the first delta
    words: list[tuple[str, float]] = field(default_factory=list)  # (word, audio ms sent when it was released)
    cancel_reason: str | None = None
    resampler: Resampler | None = None

    def played_ms(self) -> float:
        """What the client can have played: the audio sent, but no more than the time since the first delta."""
        if self.first_sent is None:
            return 0.0
        return min(self.sent_ms, (time.monotonic() - self.first_sent) * 1000.0)

    def transcript(self, upto_ms: float | None = None) -> str:
        words = [w for w, at in self.words if upto_ms is None or at <= upto_ms]
        return " ".join(words).strip()


class RealtimeSession:
    """One ``/v1/realtime`` connection: its configuration, items and response, and the pipeline once started."""

    def __init__(self, ctx: ServerContext, websocket: WebSocket, dialect: Dialect, voice: str | None):
        self.ctx = ctx
        self.websocket = websocket
        self.events = ServerEvents(dialect)
        self.config = SessionConfig(voice=ctx.registry.default().id)
        if voice:
            self.config.voice = self.registry_voice(voice)
        self.agent: Any = None
        self.transport: Any = None
        self.observer: RealtimeEvents | None = None
        self.run_task: asyncio.Task | None = None
        self.in_rate = STT_SAMPLE_RATE  # the pipeline's rates, fixed when it starts
        self.out_rate = TTS_SAMPLE_RATE
        self._in_resampler: Resampler | None = None
        self.input_ms = 0.0  # input audio received, ms
        self.buffer = bytearray()  # manual turns: PCM16 at the pipeline's input rate, until commit
        self.items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.response: Response | None = None
        self.audio_started = False  # a reply's audio has been sent: the voice is fixed from then on
        self.discarding = False  # after a cancelled reply, until the next one starts: its late audio is dropped
        self.requested = False  # a response.create not yet started by the LLM (one at a time, as OpenAI's)
        self.speech_item_id: str | None = None  # the user item the current server-VAD turn will become
        self._work: asyncio.Queue = asyncio.Queue()  # ordered slow work (transcribe, then add, then respond)
        self._worker: asyncio.Task | None = None
        self._in_order = asyncio.Lock()  # client events are handled one at a time, in the order they came
        self.closed = False
        self.activity = SessionActivity()  # every client event counts: text turns and held audio send no frames

    # --- sending -------------------------------------------------------------------------------------------------
    async def send(self, *events: dict[str, Any]) -> None:
        for event in events:
            if self.closed:
                return
            try:
                await self.websocket.send_text(json.dumps(event))
            except Exception as e:  # gone: the transport notices and ends the session
                log.debug("realtime: event not delivered: %s", e)
                self.closed = True

    async def send_end(self, event: dict[str, Any]) -> None:
        """The server ends the session (``SessionEnd``: the idle watchdog): its reason as an ``error`` event."""
        await self.send(self.events.error(ProtocolError(event["code"].lower(), event["message"], kind="server_error")))

    async def send_error(self, error: ProtocolError, event_id: str | None = None) -> None:
        self.ctx.metrics.errors.inc(kind=KIND, code=error.code)
        await self.send(self.events.error(error, event_id))

    def last_item_id(self) -> str | None:
        return next(reversed(self.items), None)

    def remember(self, item: dict[str, Any]) -> str | None:
        previous = self.last_item_id()
        self.items[item["id"]] = item
        while len(self.items) > MAX_ITEMS:
            self.items.popitem(last=False)
        return previous

    # --- the pipeline ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Build and run the voice agent with the formats and voice configured so far."""
        from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

        voice, voice_id, warning = await resolve_voice(self.ctx, self.config.voice)
        if warning:
            log.info("realtime: %s", warning)
        self.config.voice = voice_id
        telephony = self.config.input_format != "pcm16"
        self.in_rate = TELEPHONY_SAMPLE_RATE if telephony else STT_SAMPLE_RATE
        self.out_rate = TELEPHONY_SAMPLE_RATE if self.config.output_format != "pcm16" else TTS_SAMPLE_RATE
        transport = FastAPIWebsocketTransport(
            self.websocket,
            FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                add_wav_header=False,
                serializer=RealtimeSerializer(self),
                allowed_origins=[],
            ),
        )
        self.observer = RealtimeEvents(self)
        agent = await build_session_agent(
            self.ctx,
            transport,
            telephony=telephony,
            audio_in_sample_rate=self.in_rate,
            audio_out_sample_rate=self.out_rate,
            voice=voice,
            events=self.observer,
        )
        started = asyncio.Event()

        @transport.event_handler("on_client_connected")
        async def _connected(_transport: Any, _client: Any) -> None:
            started.set()

        @transport.event_handler("on_client_disconnected")
        async def _gone(_transport: Any, _client: Any) -> None:
            self.closed = True
            await agent.worker.cancel()

        self.agent, self.transport = agent, transport
        end = SessionEnd(self.send_end)
        self.run_task = asyncio.create_task(
            run_voice_session(self.ctx, agent, kind=KIND, end=end, activity=self.activity)
        )
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({waiter, self.run_task}, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not started.is_set():
            raise RuntimeError("the voice pipeline did not start")
        if self.config.instructions:
            await self.set_instructions(self.config.instructions)
        self._worker = asyncio.create_task(self._work_loop())

    def registry_voice(self, voice_id: str) -> str:
        """The registry voice the session will speak with: ``voice_id`` if the registry has it, else the default
        (OpenAI's voice names, e.g. ``alloy``, are not registry voices)."""
        from voices.registry import VoiceNotFoundError

        try:
            return self.ctx.registry.get(voice_id).id
        except VoiceNotFoundError:
            return self.ctx.registry.default().id

    async def set_instructions(self, text: str) -> None:
        await self.agent.worker.queue_frame(LLMUpdateSettingsFrame(delta=LLMSettings(system_instruction=text or None)))

    async def _work_loop(self) -> None:
        while True:
            job = await self._work.get()
            try:
                await job()
            except Exception as e:
                log.exception("realtime: work failed")
                await self.send_error(ProtocolError("server_error", str(e), kind="server_error"))

    def later(self, job: Any) -> None:
        self._work.put_nowait(job)

    async def close(self) -> None:
        self.closed = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self.observer is not None:
            self.observer.close()

    # --- client events ---------------------------------------------------------------------------------------------
    NEEDS_PIPELINE = (AppendEvent, CommitEvent, ItemCreateEvent, ResponseCreateEvent)

    async def receive(self, data: str | bytes) -> Frame | None:
        """One client message -> the frame for the pipeline (input audio), if any. Never raises: a bad event is
        answered with an ``error`` event and the session goes on. The event that starts the pipeline is still being
        handled when the transport begins reading: the lock keeps the next events behind it."""
        async with self._in_order:
            return await self._receive(data)

    async def _receive(self, data: str | bytes) -> Frame | None:
        event_id = None
        try:
            if isinstance(data, bytes):
                raise ProtocolError("invalid_event", "binary messages are not part of the protocol: send JSON events")
            limit = self.ctx.settings.server.max_message_bytes
            if len(data) > limit:
                raise ProtocolError("message_too_large", f"the message is {len(data)} bytes; the limit is {limit}")
            event = parse_client_event(data)
            event_id = event.event_id
            self.activity.heard()
            if self.agent is None and isinstance(event, self.NEEDS_PIPELINE):
                await self.start()
                frame = await self.handle(event)
                if frame is not None:  # the transport's own reading starts with the next message
                    await self.transport.input().push_audio_frame(frame)
                return None
            return await self.handle(event)
        except ProtocolError as e:
            await self.send_error(e, event_id or getattr(e, "event_id", None))
        except Exception as e:
            log.exception("realtime: event failed")
            await self.send_error(ProtocolError("server_error", str(e), kind="server_error"), event_id)
        return None

    async def handle(self, event: Any) -> Frame | None:
        if isinstance(event, AppendEvent):
            return self.append(event)
        if isinstance(event, SessionUpdateEvent):
            await self.session_update(event)
        elif isinstance(event, CommitEvent):
            await self.commit(event)
        elif isinstance(event, ClearEvent):
            self.buffer.clear()
            await self.send(self.events.event("input_audio_buffer.cleared"))
        elif isinstance(event, ItemCreateEvent):
            await self.item_create(event)
        elif isinstance(event, ItemTruncateEvent):
            await self.item_truncate(event)
        elif isinstance(event, ItemDeleteEvent):
            await self.item_delete(event)
        elif isinstance(event, ItemRetrieveEvent):
            item = self.items.get(event.item_id)
            if item is None:
                raise ProtocolError("item_not_found", f"no item {event.item_id!r}", param="item_id")
            await self.send(self.events.event("conversation.item.retrieved", item=item))
        elif isinstance(event, ResponseCreateEvent):
            await self.response_create(event)
        elif isinstance(event, ResponseCancelEvent):
            await self.response_cancel(event)
        elif isinstance(event, OutputAudioClearEvent):
            raise unsupported(
                "output_audio_buffer.clear (WebRTC/SIP only): send response.cancel, then conversation.item.truncate"
            )
        elif isinstance(event, TranscriptionSessionUpdateEvent):
            raise unsupported("a transcription session")
        return None

    async def session_update(self, event: SessionUpdateEvent) -> None:
        before = self.config.model_copy(deep=True)
        errors = self.config.apply(event.session)
        if self.config.voice != before.voice and self.agent is None:
            self.config.voice = self.registry_voice(self.config.voice)
        if self.agent is not None:
            if self.config.voice != before.voice:
                self.config.voice = before.voice
                errors.append(
                    ProtocolError(
                        "invalid_value",
                        "the voice is set when the conversation starts (its first audio, "
                        "item or response); it cannot change afterwards",
                        param="session.voice",
                    )
                )
            if self.config.instructions != before.instructions:
                await self.set_instructions(self.config.instructions)
        if self.config.input_format != before.input_format:
            self._in_resampler = None
        if (before.turn_detection is None) != (self.config.turn_detection is None):
            self.buffer.clear()
        for error in errors:
            await self.send_error(error, event.event_id)
        await self.send(self.events.event("session.updated", session=self.config.describe(self.events.dialect)))

    def append(self, event: AppendEvent) -> Frame | None:
        try:
            data = base64.b64decode(event.audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid_value", "audio is not valid base64", param="audio") from None
        pcm = decode_audio(data, self.config.input_format)
        rate = format_rate(self.config.input_format)
        if self._in_resampler is None or self._in_resampler.src != rate:
            self._in_resampler = Resampler(rate, self.in_rate)
        pcm = self._in_resampler(pcm)
        if not pcm:
            return None
        ms = len(pcm) / 2 / self.in_rate * 1000.0
        if self.config.turn_detection is None:
            if (len(self.buffer) / 2 / self.in_rate) + ms / 1000.0 > MAX_BUFFER_SECONDS:
                raise ProtocolError(
                    "input_audio_buffer_full",
                    f"the input audio buffer holds {MAX_BUFFER_SECONDS:g} s at most: commit or clear it",
                )
            self.buffer.extend(pcm)
            return None
        self.input_ms += ms
        return InputAudioRawFrame(audio=pcm, sample_rate=self.in_rate, num_channels=1)

    async def commit(self, event: CommitEvent) -> None:
        if self.config.turn_detection is not None:
            raise ProtocolError(
                "invalid_value",
                "with server_vad the server commits the audio itself; input_audio_buffer.commit is for "
                "turn_detection null",
            )
        ms = len(self.buffer) / 2 / self.in_rate * 1000.0
        if ms < MIN_COMMIT_MS:
            raise ProtocolError(
                "input_audio_buffer_commit_empty",
                f"buffer too small: {ms:.0f} ms of audio; a commit needs at least {MIN_COMMIT_MS:.0f} ms",
            )
        pcm = bytes(self.buffer)
        self.buffer.clear()
        item_id = new_id("item")
        item = message_item(item_id, "user", [{"type": "input_audio", "transcript": None}])
        previous = self.remember(item)
        await self.send(
            self.events.event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id),
            *self.events.item_added(item, previous),
        )
        self.later(lambda: self.transcribe_item(item, previous, pcm, self.in_rate))

    async def transcribe_item(self, item: dict[str, Any], previous: str | None, pcm: bytes, rate: int) -> None:
        """Transcribe a committed buffer (or an audio item) with the session's STT engine, then add the words to the
        conversation as the user's message."""
        engine = getattr(self.agent.stt, "engine", None)
        if engine is None:
            engine = await run_in_thread(self.ctx.engines.session_stt, name="duplex-stt-load")
        audio = pcm16_to_float(pcm)
        transcript = await run_in_thread(
            lambda: transcribe_long(engine, audio if rate == STT_SAMPLE_RATE else _to_stt_rate(audio, rate)),
            name="duplex-realtime-stt",
        )
        text = getattr(transcript, "text", str(transcript)).strip()
        item["content"][0]["transcript"] = text
        await self.send(
            self.events.event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item["id"],
                content_index=0,
                transcript=text,
            ),
            *self.events.item_done(item, previous),
        )
        if text:
            await self.agent.worker.queue_frame(
                LLMMessagesAppendFrame(messages=[{"role": "user", "content": text}], run_llm=False)
            )

    async def item_create(self, event: ItemCreateEvent) -> None:
        item_in = event.item
        if item_in.type != "message":
            raise unsupported(f"a {item_in.type} item (function calling)", "item.type")
        if event.previous_item_id not in (None, self.last_item_id()) and not (
            event.previous_item_id == "root" and not self.items
        ):
            raise unsupported("inserting an item before the end of the conversation", "previous_item_id")
        if item_in.id is not None and item_in.id in self.items:
            raise ProtocolError("invalid_value", f"an item {item_in.id!r} exists already", param="item.id")
        role = item_in.role or "user"
        parts = item_in.content or []
        if not parts:
            raise ProtocolError("invalid_value", "a message item needs content", param="item.content")
        texts, audio_parts, content = [], [], []
        for i, part in enumerate(parts):
            if part.type in ("input_text", "text", "output_text"):
                if not part.text:
                    raise ProtocolError("invalid_value", "a text part needs text", param=f"item.content.{i}.text")
                texts.append(part.text)
                content.append({"type": part.type, "text": part.text})
            elif part.type == "input_audio" and role == "user":
                if not part.audio:
                    raise ProtocolError("invalid_value", "an input_audio part needs audio", param=f"item.content.{i}")
                audio_parts.append(part.audio)
                content.append({"type": "input_audio", "transcript": None})
            else:
                raise unsupported(f"a {part.type!r} part in a {role} message", f"item.content.{i}.type")
        if audio_parts and (texts or len(audio_parts) > 1):
            raise unsupported("a message mixing audio with other parts", "item.content")
        item = message_item(item_in.id or new_id("item"), role, content)
        previous = self.remember(item)
        await self.send(*self.events.item_added(item, previous))
        if audio_parts:
            try:
                data = base64.b64decode(audio_parts[0], validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError(
                    "invalid_value", "audio is not valid base64", param="item.content.0.audio"
                ) from None
            pcm = decode_audio(data, self.config.input_format)
            rate = format_rate(self.config.input_format)
            self.later(lambda: self.transcribe_item(item, previous, pcm, rate))
            return
        await self.send(*self.events.item_done(item, previous))
        text = "\n".join(texts)

        async def add() -> None:
            await self.agent.worker.queue_frame(
                LLMMessagesAppendFrame(messages=[{"role": role, "content": text}], run_llm=False)
            )

        self.later(add)

    async def response_create(self, event: ResponseCreateEvent) -> None:
        if self.response is not None or self.requested:
            active = self.response.id if self.response is not None else "(starting)"
            raise ProtocolError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {active}. Wait until the "
                "response is finished before creating a new one.",
            )
        params = event.response
        if params is not None:
            if params.unknown_fields("response."):
                raise ProtocolError(
                    "unknown_parameter", f"unknown fields: {', '.join(params.unknown_fields('response.'))}"
                )
            if params.tools:
                raise unsupported("function calling (tools)", "response.tools")
            if params.conversation not in (None, "auto"):
                raise unsupported("an out-of-band response (conversation 'none')", "response.conversation")
            if params.input is not None:
                raise unsupported("a response on custom input", "response.input")
            if params.instructions:
                raise unsupported("per-response instructions (set them with session.update)", "response.instructions")
            for name in ("output_modalities", "modalities"):
                modalities = getattr(params, name)
                if modalities is not None and "audio" not in modalities:
                    raise unsupported("a text-only response", f"response.{name}")

        async def run() -> None:
            await self.agent.worker.queue_frame(LLMRunFrame())

        self.requested = True
        self.later(run)

    async def response_cancel(self, event: ResponseCancelEvent) -> None:
        response = self.response
        if response is None:
            raise ProtocolError("response_cancel_not_active", "there is no response in progress to cancel")
        if event.response_id not in (None, response.id):
            raise ProtocolError(
                "invalid_value", f"response {event.response_id!r} is not in progress", param="response_id"
            )
        await self.interrupt(response, "client_cancelled")

    async def interrupt(self, response: Response, reason: str) -> None:
        """Stop the reply in the pipeline (LLM, TTS, queued audio) and finish it as cancelled."""
        response.cancel_reason = reason
        await self.agent.worker.queue_frame(InterruptionWorkerFrame())
        await self.finish_response("cancelled", reason)

    async def item_truncate(self, event: ItemTruncateEvent) -> None:
        item = self.items.get(event.item_id)
        if item is None:
            raise ProtocolError("item_not_found", f"no item {event.item_id!r}", param="item_id")
        if item["role"] != "assistant" or event.content_index != 0 or not item.get("_words"):
            raise ProtocolError("invalid_value", "only an assistant audio item can be truncated", param="item_id")
        if self.response is not None and self.response.item_id == event.item_id:
            await self.interrupt(self.response, "client_cancelled")
        audio_ms = item["_audio_ms"]
        if event.audio_end_ms > audio_ms + 1:
            raise ProtocolError(
                "invalid_value",
                f"audio_end_ms {event.audio_end_ms} is beyond the item's audio ({audio_ms:.0f} ms)",
                param="audio_end_ms",
            )
        await self.truncate(item, float(event.audio_end_ms))

    async def truncate(self, item: dict[str, Any], audio_end_ms: float) -> None:
        """Keep the words spoken until ``audio_end_ms``, in the item and in the LLM context."""
        words = [w for w, at in item["_words"] if at <= audio_end_ms]
        old = item["content"][0].get("transcript") or ""
        text = " ".join(words).strip()
        item["content"][0]["transcript"] = text
        if text != old:
            self.rewrite_context(old, text)
        await self.send(
            self.events.event(
                "conversation.item.truncated",
                item_id=item["id"],
                content_index=0,
                audio_end_ms=int(audio_end_ms),
            )
        )

    def rewrite_context(self, old: str, new: str) -> None:
        """Replace the last assistant message saying ``old`` (the aggregator wrote what was spoken) with ``new``."""
        context = self.agent.context
        messages = list(context.get_messages())
        for i in range(len(messages) - 1, -1, -1):
            m = messages[i]
            if isinstance(m, dict) and m.get("role") == "assistant":
                content = m.get("content")
                if isinstance(content, str) and _same_words(content, old):
                    if new:
                        messages[i] = {**m, "content": new}
                    else:
                        del messages[i]
                    context.set_messages(messages)
                return

    async def item_delete(self, event: ItemDeleteEvent) -> None:
        item = self.items.pop(event.item_id, None)
        if item is None:
            raise ProtocolError("item_not_found", f"no item {event.item_id!r}", param="item_id")
        text = " ".join(p.get("text") or p.get("transcript") or "" for p in item["content"]).strip()
        if self.agent is not None and text:
            messages = list(self.agent.context.get_messages())
            for i in range(len(messages) - 1, -1, -1):
                m = messages[i]
                if isinstance(m, dict) and m.get("role") == item["role"] and _same_words(str(m.get("content")), text):
                    del messages[i]
                    self.agent.context.set_messages(messages)
                    break
        await self.send(self.events.event("conversation.item.deleted", item_id=event.item_id))

    # --- the reply -------------------------------------------------------------------------------------------------
    async def open_response(self) -> Response:
        if self.response is not None:
            await self.finish_response("completed")
        self.discarding = self.requested = False
        response = Response(id=new_id("resp"), item_id=new_id("item"))
        self.response = response
        item = message_item(response.item_id, "assistant", [], status="in_progress")
        item["_words"], item["_audio_ms"] = response.words, 0.0
        previous = self.remember(item)
        part = {"type": self.events.audio_part, "transcript": ""}
        await self.send(
            self.events.event(
                "response.created",
                response={
                    "id": response.id,
                    "object": "realtime.response",
                    "status": "in_progress",
                    "status_details": None,
                    "output": [],
                    "usage": None,
                },
            ),
            self.events.event(
                "response.output_item.added", response_id=response.id, output_index=0, item=_public(item)
            ),
            *self.events.item_added(_public(item), previous),
            self.events.event(
                "response.content_part.added",
                response_id=response.id,
                item_id=response.item_id,
                output_index=0,
                content_index=0,
                part=part,
            ),
        )
        return response

    async def finish_response(self, status: str, reason: str | None = None) -> None:
        response = self.response
        if response is None:
            return
        self.response = None
        self.discarding = status == "cancelled"
        item = self.items.get(response.item_id) or message_item(response.item_id, "assistant", [])
        if status == "cancelled" and reason == "turn_detected" and response.sent_ms > 0:
            await self.truncate_spoken(item, response)
        transcript = response.transcript(item.get("_end_ms"))
        part = {"type": self.events.audio_part, "transcript": transcript}
        item["content"] = [part]
        item["status"] = "completed" if status == "completed" else "incomplete"
        item["_audio_ms"] = response.sent_ms
        ids = {"response_id": response.id, "item_id": response.item_id, "output_index": 0, "content_index": 0}
        public = _public(item)
        details = None if status == "completed" else {"type": status, "reason": reason}
        await self.send(
            self.events.event("response.output_audio.done", **ids),
            self.events.event("response.output_audio_transcript.done", **ids, transcript=transcript),
            self.events.event("response.content_part.done", **ids, part=part),
            self.events.event("response.output_item.done", response_id=response.id, output_index=0, item=public),
            *self.events.item_done(public, None),
            self.events.event(
                "response.done",
                response={
                    "id": response.id,
                    "object": "realtime.response",
                    "status": status,
                    "status_details": details,
                    "output": [public],
                    "usage": None,
                },
            ),
        )

    async def truncate_spoken(self, item: dict[str, Any], response: Response) -> None:
        """Barge-in: the item ends where the client's playback had got to."""
        end_ms = response.played_ms()
        item["_end_ms"] = end_ms
        item["content"] = [{"type": self.events.audio_part, "transcript": response.transcript()}]
        await self.truncate(item, end_ms)

    async def audio_delta(self, pcm: bytes, rate: int) -> str | None:
        """The ``response.output_audio.delta`` for a chunk of the reply's audio (opening a response if none is: speech
        that no LLM reply started), or None for the tail of a cancelled reply still on its way out."""
        if self.response is None and self.discarding:
            return None
        response = self.response or await self.open_response()
        fmt = self.config.output_format
        target = format_rate(fmt)
        if response.resampler is None or response.resampler.src != rate or response.resampler.dst != target:
            response.resampler = Resampler(rate, target)
        out = encode_audio(response.resampler(pcm), fmt)
        if not out:
            return None
        if response.first_sent is None:
            response.first_sent = time.monotonic()
            self.audio_started = True
        response.sent_ms += len(pcm) / 2 / rate * 1000.0
        event = self.events.event(
            "response.output_audio.delta",
            response_id=response.id,
            item_id=response.item_id,
            output_index=0,
            content_index=0,
            delta=base64.b64encode(out).decode("ascii"),
        )
        return json.dumps(event)


def _public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if not k.startswith("_")}


def _same_words(a: str, b: str) -> bool:
    return a.split() == b.split()


def _to_stt_rate(audio: np.ndarray, rate: int) -> np.ndarray:
    from processors.audio import resample

    return resample(audio, rate, STT_SAMPLE_RATE)


class RealtimeSerializer(FrameSerializer):
    """Client events <-> frames: ``input_audio_buffer.append`` becomes input audio (the other events act on the
    session and become no frame); the reply's audio becomes ``response.output_audio.delta`` events."""

    def __init__(self, session: RealtimeSession, **kwargs: Any):
        super().__init__(**kwargs)
        self._session = session

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if isinstance(frame, OutputAudioRawFrame):
            try:
                return await self._session.audio_delta(frame.audio, frame.sample_rate)
            except Exception:
                log.exception("realtime: audio delta failed")
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        return await self._session.receive(data)


class RealtimeEvents(BaseObserver):
    """Pipeline frames -> Realtime events: the user's speech and transcript (server VAD turns), the reply's start,
    its words as they are played, its end, and barge-in."""

    def __init__(self, session: RealtimeSession, **kwargs: Any):
        super().__init__(**kwargs)
        self._session = session
        self._seen: OrderedDict[int, None] = OrderedDict()
        self.agent: Any = None

    def _first(self, frame: Frame) -> bool:
        if frame.id in self._seen:
            return False
        self._seen[frame.id] = None
        while len(self._seen) > 512:
            self._seen.popitem(last=False)
        return True

    def close(self) -> None:
        self._seen.clear()

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        session = self._session
        at_output = isinstance(data.source, BaseOutputTransport)
        if isinstance(frame, TTSTextFrame):
            if at_output and self._first(frame) and session.response is not None:
                response = session.response
                word = frame.text.strip()
                if word:
                    response.words.append((word, response.sent_ms))
                    await session.send(
                        session.events.event(
                            "response.output_audio_transcript.delta",
                            response_id=response.id,
                            item_id=response.item_id,
                            output_index=0,
                            content_index=0,
                            delta=(" " if len(response.words) > 1 else "") + word,
                        )
                    )
            return
        if isinstance(frame, LLMFullResponseEndFrame):
            if at_output and session.response is not None:
                await session.finish_response("completed")
            return
        if isinstance(frame, InterruptionFrame):
            if at_output and self._first(frame) and session.response is not None:
                await session.finish_response("cancelled", "turn_detected")
            return
        if not isinstance(
            frame,
            (
                LLMFullResponseStartFrame,
                UserStartedSpeakingFrame,
                UserStoppedSpeakingFrame,
                TranscriptionFrame,
                ErrorFrame,
            ),
        ) or not self._first(frame):
            return
        if isinstance(frame, LLMFullResponseStartFrame):
            await session.open_response()
        elif isinstance(frame, ErrorFrame):
            session.requested = False
            await session.send_error(ProtocolError("server_error", frame.error, kind="server_error"))
        elif session.config.turn_detection is None:
            return
        elif isinstance(frame, UserStartedSpeakingFrame):
            session.speech_item_id = new_id("item")
            start_ms = max(0.0, session.input_ms - session.ctx.settings.vad.start_secs * 1000.0)
            await session.send(
                session.events.event(
                    "input_audio_buffer.speech_started", audio_start_ms=int(start_ms), item_id=session.speech_item_id
                )
            )
        elif isinstance(frame, UserStoppedSpeakingFrame):
            await session.send(
                session.events.event(
                    "input_audio_buffer.speech_stopped",
                    audio_end_ms=int(session.input_ms),
                    item_id=session.speech_item_id or new_id("item"),
                )
            )
        elif isinstance(frame, TranscriptionFrame):
            item_id, session.speech_item_id = session.speech_item_id or new_id("item"), None
            item = message_item(item_id, "user", [{"type": "input_audio", "transcript": frame.text}])
            previous = session.remember(item)
            await session.send(
                session.events.event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id),
                *session.events.item_added(item, previous),
                session.events.event(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript=frame.text,
                ),
                *session.events.item_done(item, previous),
            )


def _dialect_and_token(websocket: WebSocket) -> tuple[Dialect, str | None, str | None]:
    """The dialect (``OpenAI-Beta: realtime=v1`` or the browser subprotocol ``openai-beta.realtime-v1``), the token
    offered as a browser subprotocol (``openai-insecure-api-key.<token>``), and the subprotocol to accept."""
    protocols = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    beta = "realtime=v1" in websocket.headers.get("openai-beta", "") or "openai-beta.realtime-v1" in protocols
    token = next((p.split(".", 1)[1] for p in protocols if p.startswith("openai-insecure-api-key.")), None)
    accept = "realtime" if "realtime" in protocols else None
    return ("beta" if beta else "ga"), token, accept


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    ctx = get_context(websocket)
    dialect, offered_token, subprotocol = _dialect_and_token(websocket)
    await websocket.accept(subprotocol=subprotocol)
    events = ServerEvents(dialect)

    async def refuse(code: str, message: str, close_code: int, kind: str = "invalid_request_error") -> None:
        ctx.metrics.errors.inc(kind=KIND, code=code)
        try:
            await websocket.send_text(json.dumps(events.error(ProtocolError(code, message, kind=kind))))
            await websocket.close(close_code)
        except Exception:
            pass

    token = presented_token(websocket)
    if token is None:
        token = offered_token
    if not token_matches(ctx.auth_token, token):
        return await refuse(
            "invalid_api_key",
            "this server needs its token as the API key (Authorization: Bearer)",
            1008,
            "authentication_error",
        )
    if ctx.engines.pipeline_state != "ready":
        return await refuse("model_loading", "the models are still loading; retry in a moment", 1013, "server_error")
    slot = ctx.sessions.try_acquire(KIND)
    if slot is None:
        return await refuse("rate_limited", "the server is at its session limit", 1013, "rate_limit_error")
    session = RealtimeSession(ctx, websocket, dialect, websocket.query_params.get("voice"))
    try:
        await session.send(events.event("session.created", session=session.config.describe(dialect)))
        idle = ctx.settings.server.voice_idle_timeout_s
        while session.agent is None and not session.closed:  # until an event needs the pipeline
            try:
                message = await asyncio.wait_for(websocket.receive(), idle)
            except TimeoutError:
                ctx.metrics.errors.inc(kind=KIND, code="TIMEOUT")
                error = ProtocolError(
                    "timeout", f"no event from the client for {idle:g} s; closing", kind="server_error"
                )
                await session.send(events.error(error))
                raise
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text") if message.get("text") is not None else message.get("bytes", b"")
            await session.receive(data)
        if session.run_task is not None:
            await session.run_task
    except (WebSocketDisconnect, TimeoutError):
        pass
    except Exception:
        log.exception("realtime session failed")
        ctx.metrics.errors.inc(kind=KIND, code="SESSION_ERROR")
    finally:
        if session.run_task is not None and not session.run_task.done():
            await session.agent.worker.cancel()
            await asyncio.gather(session.run_task, return_exceptions=True)
        await session.close()
        slot.release()
        try:
            await websocket.close()
        except Exception:
            pass
