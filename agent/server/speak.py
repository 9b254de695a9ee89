"""``/api/v1/speak``: streaming TTS over a WebSocket (protocol in ``protocol.py``, contract in docs/server.md).

Per session, two tasks: the reader parses client messages (start, speak, cancel, stop) and the player takes speaks
from the queue one at a time. Each speak runs ``engine.stream`` in its own worker thread with a ``threading.Event``;
the worker resamples to the client's rate with one ``StreamResampler`` per speak, encodes, and cuts the audio into
frames of at most one codec frame (80 ms), which the player sends as they come.

Cancellation (``cancel``, a high-priority speak pre-empting a normal one, ``stop``, a vanished client, shutdown):
the reader sets the speak's event and, holding the send lock, sends ``CANCELLED``; the player checks the flag under
the same lock before every frame, so no frame of a cancelled speak follows its ``CANCELLED`` error, and the engine
stops within one step. The worker (``processors.threads.ThreadedStream``) is always joined before the session
releases its slot, so a client that disconnects mid-stream leaves no thread behind.

What a client may hold: nothing before it authenticates (with auth on, a connection without the token waits, with no
slot and no ``ready``, for a ``start`` carrying it); then one slot, at most ``MAX_QUEUED_SPEAKS`` speaks, each at most
``max_speak_audio_s`` of audio, ``MAX_BUFFERED_CHUNKS`` engine chunks ahead of the socket, and sends that complete
within ``send_timeout_s`` (a client that stops reading is closed once the socket's buffers are full).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from processors.audio import CODEC_FRAME_MS, StreamResampler, float_to_pcm16
from processors.threads import ThreadedStream
from processors.tts_engine import InvalidTextError, TTSEngine, UnsupportedLanguageError, resolve_language, validate_text
from voices.registry import VoiceNotFoundError

from .context import ServerContext, get_context
from .guards import presented_token, token_matches
from .protocol import (
    AudioChunkMessage,
    CancelMessage,
    Capabilities,
    CompleteMessage,
    ErrorMessage,
    ProtocolError,
    ReadyMessage,
    SpeakMessage,
    StartedMessage,
    StartMessage,
    StopMessage,
    StoppedMessage,
    parse_client_message,
)

log = logging.getLogger("duplex.server.speak")
router = APIRouter()

KIND = "speak"
MAX_QUEUED_SPEAKS = 32  # per session; beyond it RATE_LIMITED
MAX_BUFFERED_CHUNKS = 8  # engine chunks a worker may run ahead of the socket
AUTH_TIMEOUT_S = 10.0  # an unauthenticated connection must send start with its token within this
WORKER_JOIN_WARN_S = 10.0
_SEND_ERRORS = (WebSocketDisconnect, RuntimeError, OSError, ConnectionError)
_CLOSING: set[asyncio.Task] = set()  # background closes of sockets whose client stopped reading


@dataclass(frozen=True)
class StreamConfig:
    """What a ``start`` settled; each speak keeps the config current when it was received."""

    sample_rate: int
    encoding: str
    audio_format: str
    pacing: str
    pacing_lead_s: float
    voice_id: str
    voice: Any  # the engine's voice object
    language: str

    @property
    def frame_samples(self) -> int:
        return max(1, self.sample_rate * CODEC_FRAME_MS // 1000)

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm16" else 4

    def encode(self, samples: np.ndarray) -> list[bytes]:
        """Float32 samples at the output rate -> PCM frames of at most one codec frame each."""
        out = []
        n = self.frame_samples
        for i in range(0, len(samples), n):
            piece = samples[i : i + n]
            out.append(float_to_pcm16(piece) if self.encoding == "pcm16" else np.asarray(piece, dtype="<f4").tobytes())
        return out


@dataclass
class _Chunk:
    frames: list[bytes]
    final: bool


@dataclass
class SpeakJob:
    text: str
    priority: str
    request_id: str | None
    config: StreamConfig
    received: float
    cancel_event: threading.Event = field(default_factory=threading.Event)
    cancelled_async: asyncio.Event = field(default_factory=asyncio.Event)
    stream: ThreadedStream | None = None

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def cancel(self) -> None:
        """Stop this speak: the engine (event), the worker's wait for room, and the player's wait for a chunk."""
        if self.cancel_event.is_set():
            return
        self.cancel_event.set()
        self.cancelled_async.set()
        if self.stream is not None:
            self.stream.cancel()


class SpeakSession:
    def __init__(self, ws: WebSocket, ctx: ServerContext):
        self.ws = ws
        self.ctx = ctx
        self.id = uuid.uuid4().hex[:12]
        self.config: StreamConfig | None = None
        self.queue: deque[SpeakJob] = deque()
        self.current: SpeakJob | None = None
        self.authed = not ctx.auth_token
        self.closing = False
        self.send_lock = asyncio.Lock()
        self.wakeup = asyncio.Event()
        self.last_activity = time.monotonic()
        self.streams: set[ThreadedStream] = set()  # speaks' engine streams whose threads may still run
        self.stuck = False  # the client stopped reading (a send timed out)

    # --- sending -----------------------------------------------------------------------------------
    async def _send_text_locked(self, text: str) -> None:
        await self._send_raw(text)

    async def _send_raw(self, payload: bytes | str) -> bool:
        """Send one frame; False (and the session closing) when the client is gone, or when the send cannot
        complete within ``send_timeout_s``: the socket's buffers are full because the client does not read."""
        if self.closing:
            return False
        try:
            async with asyncio.timeout(self.ctx.settings.server.send_timeout_s):
                if isinstance(payload, bytes):
                    await self.ws.send_bytes(payload)
                else:
                    await self.ws.send_text(payload)
            return True
        except TimeoutError:
            self._not_reading()
        except _SEND_ERRORS:
            self.closing = True
        return False

    def _not_reading(self) -> None:
        wait = self.ctx.settings.server.send_timeout_s
        log.info("speak session %s: the client has not read anything for %g s; closing the session", self.id, wait)
        self.ctx.metrics.errors.inc(kind=KIND, code="TIMEOUT")
        self.closing = self.stuck = True
        self.abort()

    async def send(self, message: Any) -> None:
        async with self.send_lock:
            await self._send_text_locked(message.dump())

    async def error(self, code: str, message: str, recoverable: bool = True, request_id: str | None = None) -> None:
        self.ctx.metrics.errors.inc(kind=KIND, code=code)
        await self.send(ErrorMessage(code=code, message=message, recoverable=recoverable, request_id=request_id))

    async def fatal(self, code: str, message: str, close_code: int, reason: str) -> None:
        """A non-recoverable error, ``stopped``, and close."""
        if code == "UNAUTHORIZED":
            self.ctx.metrics.sessions_rejected.inc(kind=KIND, reason=code)
        await self.error(code, message, recoverable=False)
        await self.send(StoppedMessage(reason=reason))
        await self.close(close_code, reason)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.abort()
        if self.closing:
            return
        self.closing = True
        try:
            if self.ws.application_state == WebSocketState.CONNECTED:
                async with asyncio.timeout(self.ctx.settings.server.send_timeout_s):
                    await self.ws.close(code, reason[:120])
        except (*_SEND_ERRORS, TimeoutError):
            pass

    def _close_stuck(self) -> None:
        """Close a socket whose client does not read, in the background: the close frame waits behind the audio
        the client has not read, until it reads or the connection dies (uvicorn's keepalive pings end it)."""

        async def close() -> None:
            with contextlib.suppress(*_SEND_ERRORS):
                if self.ws.application_state == WebSocketState.CONNECTED:
                    await self.ws.close(1008, "client not reading")

        task = asyncio.get_running_loop().create_task(close(), name=f"speak-close-{self.id}")
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)

    def abort(self) -> None:
        """Cancel every speak without telling the client (shutdown, disconnect)."""
        jobs = list(self.queue)
        self.queue.clear()
        if self.current is not None:
            jobs.append(self.current)
        for job in jobs:
            job.cancel()

    # --- lifecycle ---------------------------------------------------------------------------------
    async def run(self) -> None:
        ctx = self.ctx
        try:
            await self.ws.accept()
        except _SEND_ERRORS:
            return
        first: StartMessage | None = None  # the start that carried the token, when it came that way
        token = presented_token(self.ws)
        if ctx.auth_token and token is not None:
            if not token_matches(ctx.auth_token, token):
                await self.fatal("UNAUTHORIZED", "the token is not valid", 1008, "unauthorized")
                return
            self.authed = True
        elif not self.authed:  # nothing, not even ready, and no slot before the token
            first = await self._authenticate()
            if first is None:
                return
        slot = ctx.sessions.try_acquire(KIND)
        if slot is None:
            await self.fatal(
                "RATE_LIMITED",
                f"the server is at its limit of {ctx.sessions.max_sessions} concurrent sessions; try again later",
                1013,
                "too many sessions",
            )
            return
        ctx.speak_sessions.add(self)
        player = asyncio.create_task(self._play(), name=f"speak-player-{self.id}")
        try:
            engine = ctx.engines.tts
            await self.send(
                ReadyMessage(
                    session_id=self.id,
                    voice_loaded=ctx.default_voice_loaded(),
                    capabilities=Capabilities(
                        languages=list(engine.languages) if engine else [],
                        max_text_chars=ctx.settings.server.max_text_chars,
                    ),
                )
            )
            if first is not None:
                await self._on_start(first)
            await self._read_loop(player)
        except _SEND_ERRORS:
            pass
        finally:
            self.closing = True
            self.abort()
            player.cancel()
            await asyncio.gather(player, return_exceptions=True)
            await self._join_workers()
            ctx.speak_sessions.discard(self)
            slot.release()
            if self.stuck:
                self._close_stuck()

    async def _authenticate(self) -> StartMessage | None:
        """With auth on and no token on the connection: the first message must be a ``start`` with a valid
        ``authToken``, within ``AUTH_TIMEOUT_S`` (or the idle timeout, if shorter). It is returned; anything else is
        refused with ``UNAUTHORIZED`` (None)."""
        wait = min(AUTH_TIMEOUT_S, self.ctx.settings.server.idle_timeout_s)
        try:
            frame = await asyncio.wait_for(self.ws.receive(), wait)
        except TimeoutError:
            await self.fatal(
                "UNAUTHORIZED", f"no start message with a valid authToken within {wait:g} s", 1008, "unauthorized"
            )
            return None
        if frame["type"] == "websocket.disconnect":
            self.closing = True
            return None
        text = frame.get("text")
        try:
            if text is None or len(text) > self.ctx.settings.server.max_message_bytes:
                raise ProtocolError("INVALID_MESSAGE", "not a start message")
            msg = parse_client_message(text)
        except ProtocolError as e:
            await self.fatal(
                "UNAUTHORIZED", f"send start with a valid authToken first ({e.message})", 1008, "unauthorized"
            )
            return None
        if not isinstance(msg, StartMessage):
            await self.fatal("UNAUTHORIZED", "send start with a valid authToken first", 1008, "unauthorized")
            return None
        if not token_matches(self.ctx.auth_token, msg.auth_token):
            what = "is not valid" if msg.auth_token else "is missing: this server needs one"
            await self.fatal("UNAUTHORIZED", f"authToken {what}", 1008, "unauthorized")
            return None
        self.authed = True
        self.last_activity = time.monotonic()
        return msg

    async def _read_loop(self, player: asyncio.Task) -> None:
        idle = self.ctx.settings.server.idle_timeout_s
        recv: asyncio.Future | None = None
        try:
            while not self.closing:
                if recv is None:
                    recv = asyncio.ensure_future(self.ws.receive())
                now = time.monotonic()
                deadline = self.last_activity + idle
                done, _ = await asyncio.wait(
                    {recv, player}, timeout=max(0.0, deadline - now), return_when=asyncio.FIRST_COMPLETED
                )
                if player in done:
                    if not player.cancelled() and player.exception() is not None:
                        log.error("speak session %s: player failed: %r", self.id, player.exception())
                        await self.fatal(
                            "SYNTHESIS_ERROR", "internal error while sending audio", 1011, "internal error"
                        )
                    return
                if not done:
                    if self.current is not None or self.queue:
                        self.last_activity = time.monotonic()  # speaking is activity
                        continue
                    await self.fatal(
                        "TIMEOUT", f"no message for {idle:g} s; closing the idle session", 1000, "idle timeout"
                    )
                    return
                message = recv.result()
                recv = None
                if message["type"] == "websocket.disconnect":
                    self.closing = True
                    return
                self.last_activity = time.monotonic()
                await self._on_frame(message)
        finally:
            if recv is not None and not recv.done():
                recv.cancel()

    # --- client messages ---------------------------------------------------------------------------
    async def _on_frame(self, frame: dict) -> None:
        limit = self.ctx.settings.server.max_message_bytes
        text, data = frame.get("text"), frame.get("bytes")
        size = len(data) if text is None and data is not None else len(text.encode("utf-8", "replace")) if text else 0
        try:
            if size > limit:
                raise ProtocolError("INVALID_MESSAGE", f"the message is {size} bytes; the limit is {limit} bytes")
            if text is None:
                raise ProtocolError("INVALID_MESSAGE", "binary frames are not accepted; send JSON text messages")
            msg = parse_client_message(text)
        except ProtocolError as e:
            await self.error(e.code, e.message, e.recoverable)
            return
        if isinstance(msg, StartMessage):
            await self._on_start(msg)
        elif isinstance(msg, SpeakMessage):
            await self._on_speak(msg)
        elif isinstance(msg, CancelMessage):
            await self._cancel_all("cancelled by the client")
        elif isinstance(msg, StopMessage):
            reason = msg.reason or "client requested stop"
            self.abort()
            await self.send(StoppedMessage(reason=reason))
            await self.close(1000, "stopped")

    async def _on_start(self, msg: StartMessage) -> None:
        ctx = self.ctx
        state = ctx.engines.tts_state
        engine = ctx.engines.tts
        if state == "failed" or (state == "ready" and engine is None):
            await self.error("MODEL_LOADING", f"the TTS model could not be loaded: {ctx.engines.tts_error}", False)
            return
        if engine is None:
            await self.error("MODEL_LOADING", "the TTS model is still loading; send start again in a few seconds")
            return

        registry = ctx.registry
        try:
            default = registry.default()
        except VoiceNotFoundError as e:
            await self.error("SYNTHESIS_ERROR", f"no voice available: {e}", False)
            return
        voice = default
        if msg.voice:
            try:
                voice = registry.get(msg.voice)
            except VoiceNotFoundError:
                await self.error(
                    "VOICE_NOT_FOUND", f"voice {msg.voice!r} not found; using the default voice {default.id!r}"
                )
        try:
            voice_obj = await ctx.voices.load(engine, voice)
        except Exception as e:  # engines raise VoiceError for bad references; anything else is a failure too
            if voice.id == default.id:
                await self.error("SYNTHESIS_ERROR", f"the default voice {voice.id!r} cannot be used: {e}", False)
                return
            await self.error(
                "SYNTHESIS_ERROR", f"voice {voice.id!r} cannot be used ({e}); using the default voice {default.id!r}"
            )
            voice = default
            try:
                voice_obj = await ctx.voices.load(engine, voice)
            except Exception as e2:
                await self.error("SYNTHESIS_ERROR", f"the default voice {voice.id!r} cannot be used: {e2}", False)
                return
        try:
            language = self._language(engine, msg.language, voice.language)
        except UnsupportedLanguageError as e:
            await self.error("INVALID_MESSAGE", f"invalid start message: {e}")
            return
        self.config = StreamConfig(
            sample_rate=msg.sample_rate,
            encoding=msg.encoding,
            audio_format=msg.audio_format,
            pacing=msg.pacing,
            pacing_lead_s=msg.pacing_lead_ms / 1000.0,
            voice_id=voice.id,
            voice=voice_obj,
            language=language,
        )
        await self.send(
            StartedMessage(
                sample_rate=msg.sample_rate,
                encoding=msg.encoding,
                voice=voice.id,
                language=language,
                audio_format=msg.audio_format,
                pacing=msg.pacing,
            )
        )

    def _language(self, engine: TTSEngine, requested: str | None, voice_language: str) -> str:
        if requested:
            return resolve_language(requested, engine.languages)
        for candidate in (voice_language, self.ctx.settings.tts.language):
            try:
                return resolve_language(candidate, engine.languages)
            except UnsupportedLanguageError:
                continue
        return engine.languages[0]

    async def _on_speak(self, msg: SpeakMessage) -> None:
        rid = msg.request_id
        if self.config is None:
            await self.error("INVALID_MESSAGE", "send a start message before speak", request_id=rid)
            return
        try:
            if msg.text is None:
                raise InvalidTextError("text is missing")
            text = validate_text(msg.text, self.ctx.settings.server.max_text_chars)
        except InvalidTextError as e:
            await self.error("INVALID_TEXT", str(e), request_id=rid)
            return
        if len(self.queue) >= MAX_QUEUED_SPEAKS:
            await self.error(
                "RATE_LIMITED",
                f"{MAX_QUEUED_SPEAKS} speaks are already queued; wait for some to complete",
                request_id=rid,
            )
            return
        job = SpeakJob(
            text=text, priority=msg.priority, request_id=rid, config=self.config, received=time.perf_counter()
        )
        if msg.priority == "high":
            # after queued high-priority speaks, before normal ones; a normal speak being spoken is cut off
            index = next((i for i, j in enumerate(self.queue) if j.priority != "high"), len(self.queue))
            self.queue.insert(index, job)
            current = self.current
            if current is not None and current.priority != "high" and not current.cancelled:
                async with self.send_lock:
                    current.cancel()
                    self.ctx.metrics.errors.inc(kind=KIND, code="CANCELLED")
                    await self._send_text_locked(
                        ErrorMessage(
                            code="CANCELLED",
                            message="pre-empted by a high-priority speak",
                            recoverable=True,
                            request_id=current.request_id,
                        ).dump()
                    )
        else:
            self.queue.append(job)
        self.wakeup.set()

    async def _cancel_all(self, why: str) -> None:
        jobs = []
        if self.current is not None and not self.current.cancelled:
            jobs.append((self.current, why))
        jobs.extend((j, why + " before it started") for j in self.queue)
        self.queue.clear()
        async with self.send_lock:
            for job, message in jobs:
                job.cancel()
                self.ctx.metrics.errors.inc(kind=KIND, code="CANCELLED")
                await self._send_text_locked(
                    ErrorMessage(code="CANCELLED", message=message, recoverable=True, request_id=job.request_id).dump()
                )

    # --- playing -----------------------------------------------------------------------------------
    async def _play(self) -> None:
        while not self.closing:
            while not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            job = self.queue.popleft()
            if job.cancelled:
                continue
            self.current = job
            try:
                await self._run(job)
            finally:
                self.current = None
                self.last_activity = time.monotonic()

    async def _run(self, job: SpeakJob) -> None:
        ctx, cfg = self.ctx, job.config
        engine = ctx.engines.tts

        def produce(cancel: threading.Event) -> Iterator[_Chunk]:
            """In the speak's thread: engine.stream -> resample -> encode -> frames for the player."""
            resampler = StreamResampler(engine.sample_rate, cfg.sample_rate)
            with contextlib.closing(engine.stream(job.text, cfg.voice, cfg.language, cancel)) as chunks:
                for chunk in chunks:
                    frames = cfg.encode(resampler.process(chunk))
                    if frames:
                        yield _Chunk(frames, False)
            yield _Chunk(cfg.encode(resampler.flush()), True)

        stream = ThreadedStream(
            produce, cancel=job.cancel_event, max_ahead=MAX_BUFFERED_CHUNKS, name=f"duplex-speak-{self.id}"
        )
        job.stream = stream
        t0 = time.perf_counter()
        first_audio: float | None = None
        sent_samples = 0
        max_samples = int(ctx.settings.server.max_speak_audio_s * cfg.sample_rate)  # what one speak may cost
        seq = 0
        paced_from: float | None = None
        outcome = "cancelled"
        self.streams.add(stream)
        try:
            async with stream:
                while True:
                    try:
                        item = await anext(stream)
                    except StopAsyncIteration:
                        break
                    except Exception as e:  # the engine failed in its thread
                        outcome = "error"
                        await self._engine_error(job, e)
                        break
                    frames = item.frames
                    if not frames and item.final and cfg.audio_format == "json":
                        frames = [b""]  # the final chunk carries the isFinal flag even with no samples
                    too_long = False
                    for i, frame in enumerate(frames):
                        n = len(frame) // cfg.bytes_per_sample
                        if sent_samples + n > max_samples:
                            too_long = True
                            break
                        if cfg.pacing == "realtime" and paced_from is not None:
                            ahead = sent_samples / cfg.sample_rate - (time.perf_counter() - paced_from)
                            if ahead > cfg.pacing_lead_s:
                                await _sleep_unless(job.cancelled_async, ahead - cfg.pacing_lead_s)
                        if cfg.audio_format == "json":
                            payload: bytes | str = AudioChunkMessage(
                                data=base64.b64encode(frame).decode("ascii"),
                                sequence_number=seq,
                                is_final=item.final and i == len(frames) - 1,
                                timestamp_ms=round(sent_samples * 1000.0 / cfg.sample_rate, 3),
                                request_id=job.request_id,
                            ).dump()
                        else:
                            payload = frame
                        if not await self._send_audio(job, payload):
                            break
                        if first_audio is None:
                            first_audio = time.perf_counter() - t0
                            paced_from = time.perf_counter()
                            ctx.metrics.first_audio.observe(first_audio, kind=KIND)
                        sent_samples += n
                        seq += 1
                    if too_long and not (job.cancelled or self.closing):
                        outcome = "error"
                        await self._too_long(job)
                    if job.cancelled or self.closing:
                        break
                    if item.final:
                        duration = time.perf_counter() - t0
                        audio_s = sent_samples / cfg.sample_rate
                        first_ms = round(first_audio * 1000, 3) if first_audio is not None else None
                        async with self.send_lock:
                            if not job.cancelled:
                                outcome = "complete"
                                await self._send_text_locked(
                                    CompleteMessage(
                                        duration_ms=round(duration * 1000, 3),
                                        characters_processed=len(job.text),
                                        audio_length_ms=round(audio_s * 1000, 3),
                                        first_audio_ms=first_ms,
                                        request_id=job.request_id,
                                    ).dump()
                                )
                        ctx.metrics.turn_seconds.observe(duration, kind=KIND)
                        break
        finally:
            job.cancel()  # stops the engine if we left early (disconnect, error, task cancelled)
            ctx.metrics.audio_seconds.inc(sent_samples / cfg.sample_rate, kind=KIND)
            ctx.metrics.turns.inc(kind=KIND, outcome=outcome)
            if stream.thread is None or not stream.thread.is_alive():
                self.streams.discard(stream)  # else the session's backstop waits for it

    async def _send_audio(self, job: SpeakJob, payload: bytes | str) -> bool:
        async with self.send_lock:
            if job.cancelled or self.closing:
                return False
            if not await self._send_raw(payload):
                return False
        self.last_activity = time.monotonic()
        await asyncio.sleep(0)  # a send into a free socket buffer does not yield: let the reader see a cancel
        return True

    async def _too_long(self, job: SpeakJob) -> None:
        """The speak made ``max_speak_audio_s`` of audio and is not done: numbers, symbols and emoji read out in
        words can speak for several times what prose of the same length does. Stop its engine and say so."""
        limit = self.ctx.settings.server.max_speak_audio_s
        job.cancel()
        await self.error(
            "INVALID_TEXT",
            f"the text speaks for longer than the limit of {limit:g} s of audio per speak; it was cut there "
            "(split long texts into several speaks)",
            request_id=job.request_id,
        )

    async def _engine_error(self, job: SpeakJob, error: BaseException) -> None:
        if isinstance(error, InvalidTextError):
            await self.error("INVALID_TEXT", str(error), request_id=job.request_id)
        else:
            log.warning("speak session %s: synthesis failed: %r", self.id, error)
            detail = str(error) or type(error).__name__
            await self.error("SYNTHESIS_ERROR", f"synthesis failed: {detail}", request_id=job.request_id)

    async def _join_workers(self) -> None:
        """Backstop: every worker is joined by ``_run``; wait for any that is not (bounded), then give up loudly."""
        deadline = time.monotonic() + 6 * WORKER_JOIN_WARN_S
        for stream in list(self.streams):
            thread = stream.thread
            while thread is not None and thread.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if thread is not None and thread.is_alive():
                log.error(
                    "speak session %s: worker %s did not stop; releasing the session anyway", self.id, thread.name
                )
            self.streams.discard(stream)


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    """Sleep, waking early when ``event`` is set. (Not ``asyncio.wait_for``: on Python 3.11 it can swallow a task
    cancellation that races with the event, which would leave the player running after its session ended.)"""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()


@router.websocket("/api/v1/speak")
async def speak_socket(ws: WebSocket) -> None:
    await SpeakSession(ws, get_context(ws)).run()
