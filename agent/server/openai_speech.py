"""``POST /v1/audio/speech``: OpenAI's text-to-speech API on this server's TTS engine and voices, streamed.

Any OpenAI TTS client (the official SDK with ``base_url=http://host:8000/v1``, curl, other frameworks' OpenAI TTS
services) speaks with our voices. Request (JSON, unknown fields refused): ``model`` (required; any name: the server
speaks with its one TTS engine), ``input`` (the text, at most ``server.max_text_chars``), ``voice`` (a voice id from
``/api/v1/voices``, or ``{"id": ...}``; an id the engine knows itself, like espeak's ``en-gb+f3``, works too),
``response_format`` (``mp3`` default, ``opus``, ``aac``, ``flac``, ``wav``, ``pcm``: all 24 kHz mono; ``pcm`` is
16-bit little-endian), ``speed`` (0.25-4, pitch kept), ``instructions`` (accepted and not used: the voice is the
voice's), ``stream_format`` (``audio`` only), and ``language`` (as vLLM-Omni takes it; default the voice's).

The body is chunked audio sent as the engine generates it. The status is decided before the first byte: 400 for a
bad request, 401 without the token (the SDK's ``api_key`` is the bearer token), 429 when the server is at its
session cap, 503 while the model loads or when the engine is unavailable, 500 when synthesis fails before any audio.
A failure after audio has been sent ends the body without its final chunk (the client sees an incomplete read).

Guards, as every route: the request holds one session slot (kind ``openai_speech``) from the voice's preparation
to its last byte; the body must declare a length within ``server.max_message_bytes`` and arrive within
``BODY_TIMEOUT_S``; a client that disconnects stops the engine within one step (the disconnect is watched while audio
is sent); a client that stops reading for ``SEND_STALL_S`` is dropped. The worker thread is joined and the slot
released on every way out. Metrics as for ``/api/v1/speak``, under ``kind="openai_speech"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from processors.audio import SPEECH_API_SAMPLE_RATE, SPEECH_API_SPEEDS, StreamResampler
from processors.audio_formats import FORMATS, Tempo, encoder_for
from processors.threads import ThreadedStream
from processors.tts_engine import (
    EngineUnavailableError,
    InvalidTextError,
    TTSError,
    UnsupportedLanguageError,
    VoiceError,
    resolve_language,
    validate_text,
)

from .context import ServerContext, get_context
from .guards import ApiError, SessionSlot, check_auth

log = logging.getLogger("duplex.server.openai_speech")
router = APIRouter()

KIND = "openai_speech"
BODY_TIMEOUT_S = 30.0  # the whole JSON body must arrive within this
SEND_STALL_S = 30.0  # a client that takes no audio for this long is dropped
MAX_BUFFERED_CHUNKS = 8  # encoded chunks a worker may run ahead of the socket


class VoiceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200)


class SpeechRequest(BaseModel):
    """The request body (see module docstring)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    input: str
    voice: str | VoiceRef
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=SPEECH_API_SPEEDS[0], le=SPEECH_API_SPEEDS[1])
    instructions: str | None = Field(None, max_length=4096)
    stream_format: Literal["audio", "sse"] = "audio"
    language: str | None = Field(None, max_length=40)

    @property
    def voice_id(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice.id


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is None:
        raise ApiError(411, "LENGTH_REQUIRED", "send the request with a Content-Length header")
    try:
        declared = int(length)
    except ValueError:
        raise ApiError(400, "INVALID_REQUEST", f"bad Content-Length {length!r}") from None
    if declared > limit:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"the body is {declared} bytes; the limit is {limit}")

    async def read() -> bytes:
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise ApiError(413, "PAYLOAD_TOO_LARGE", f"the body is over {limit} bytes")
        return bytes(body)

    try:
        return await asyncio.wait_for(read(), BODY_TIMEOUT_S)
    except TimeoutError:
        raise ApiError(408, "REQUEST_TIMEOUT", f"the body did not arrive within {BODY_TIMEOUT_S:g} s") from None


def _parse(body: bytes) -> SpeechRequest:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "INVALID_REQUEST", f"the body is not JSON: {e}") from None
    try:
        return SpeechRequest.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors(include_url=False)
        )
        raise ApiError(400, "INVALID_REQUEST", problems) from None


async def _voice(ctx: ServerContext, engine: Any, voice_id: str) -> tuple[Any, str | None]:
    """(engine voice object, the registry voice's language or None) for a voice id; 400 when unknown/unusable."""
    from processors.threads import run_in_thread
    from voices.registry import VoiceNotFoundError

    try:
        voice = ctx.registry.get(voice_id)
    except VoiceNotFoundError:
        voice = None
    try:
        if voice is not None:
            return await ctx.voices.load(engine, voice), voice.language
        return await run_in_thread(ctx.voices.resolver(ctx.registry, engine), voice_id, name="duplex-voice"), None
    except EngineUnavailableError as e:
        raise ApiError(503, "ENGINE_UNAVAILABLE", str(e)) from None
    except (VoiceError, ValueError) as e:
        known = ", ".join(v.id for v in ctx.registry.list())
        raise ApiError(400, "VOICE_NOT_FOUND", f"voice {voice_id!r} cannot be used ({e}); voices: {known}") from None


def _language(ctx: ServerContext, engine: Any, requested: str | None, voice_language: str | None) -> str:
    if requested:
        try:
            return resolve_language(requested, engine.languages)
        except UnsupportedLanguageError as e:
            raise ApiError(400, "INVALID_REQUEST", str(e)) from None
    for candidate in (voice_language, ctx.settings.tts.language):
        if candidate:
            try:
                return resolve_language(candidate, engine.languages)
            except UnsupportedLanguageError:
                continue
    return engine.languages[0]


@router.post("/v1/audio/speech")
async def create_speech(request: Request) -> Response:
    ctx = get_context(request)
    try:
        check_auth(request, ctx.auth_token)
    except ApiError:
        ctx.metrics.sessions_rejected.inc(kind=KIND, reason="UNAUTHORIZED")
        raise
    try:
        speech = _parse(await _read_body(request, ctx.settings.server.max_message_bytes))
        if speech.stream_format != "audio":
            raise ApiError(400, "INVALID_REQUEST", "stream_format 'sse' is not supported; use 'audio'")
        try:
            text = validate_text(speech.input, ctx.settings.server.max_text_chars)
        except InvalidTextError as e:
            raise ApiError(400, "INVALID_TEXT", f"input: {e}") from None
        engine = ctx.engines.tts
        if engine is None:
            failed = ctx.engines.tts_state == "failed"
            detail = f"could not be loaded: {ctx.engines.tts_error}" if failed else "is still loading"
            raise ApiError(503, "MODEL_LOADING", f"the TTS model {detail}", None if failed else {"Retry-After": "5"})
    except ApiError as e:
        ctx.metrics.errors.inc(kind=KIND, code=e.code)
        raise
    slot = ctx.sessions.try_acquire(KIND)  # before the voice: building one is a model pass
    if slot is None:
        ctx.metrics.errors.inc(kind=KIND, code="RATE_LIMITED")
        raise ApiError(
            429,
            "RATE_LIMITED",
            f"the server is at its limit of {ctx.sessions.max_sessions} concurrent sessions; try again later",
            {"Retry-After": "1"},
        )
    try:
        voice, voice_language = await _voice(ctx, engine, speech.voice_id)
        language = _language(ctx, engine, speech.language, voice_language)
    except BaseException as e:
        slot.release()
        if isinstance(e, ApiError):
            ctx.metrics.errors.inc(kind=KIND, code=e.code)
        raise
    return await SpeechResponse.start(ctx, slot, engine, text, voice, language, speech)


class SpeechResponse(Response):
    """The streamed body (see module docstring). ``start`` waits for the first audio so engine errors still get a
    status; then ``__call__`` sends, watching for the client's disconnect."""

    def __init__(
        self,
        ctx: ServerContext,
        slot: SessionSlot,
        stream: ThreadedStream,
        first: bytes,
        fmt: str,
        t0: float,
        samples: list[int],
    ):
        super().__init__(content=None, media_type=FORMATS[fmt][0])
        self.ctx, self.slot, self.stream, self.first = ctx, slot, stream, first
        self.t0 = t0
        self.samples = samples  # [count], written by the worker thread
        self.headers["X-Duplex-Sample-Rate"] = str(SPEECH_API_SAMPLE_RATE)
        del self.headers["content-length"]  # chunked: the length is not known yet

    @classmethod
    async def start(
        cls, ctx: ServerContext, slot: SessionSlot, engine: Any, text: str, voice: Any, language: str, req: Any
    ) -> Response:
        samples = [0]
        t0 = time.perf_counter()

        def produce(cancel: threading.Event) -> Iterator[bytes]:
            """In the worker thread: engine chunks -> 24 kHz -> speed -> the format's bytes."""
            resampler = StreamResampler(engine.sample_rate, SPEECH_API_SAMPLE_RATE)
            tempo = Tempo(req.speed, SPEECH_API_SAMPLE_RATE) if req.speed != 1.0 else None
            encoder = encoder_for(req.response_format, SPEECH_API_SAMPLE_RATE)

            def encode(audio: np.ndarray) -> bytes:
                if tempo is not None:
                    audio = tempo.process(audio)
                samples[0] += len(audio)
                return encoder.encode(audio)

            with contextlib.closing(engine.stream(text, voice, language, cancel)) as chunks:
                for chunk in chunks:
                    data = encode(resampler.process(chunk))
                    if data:
                        yield data
            tail = encode(resampler.flush())
            if tempo is not None:
                rest = tempo.flush()
                samples[0] += len(rest)
                tail += encoder.encode(rest)
            tail += encoder.finish()
            if tail:
                yield tail

        stream = ThreadedStream(produce, max_ahead=MAX_BUFFERED_CHUNKS, name="duplex-openai-speech").start()
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            first = b""
        except Exception as e:
            await stream.aclose()
            slot.release()
            code, status = _engine_error(e)
            ctx.metrics.errors.inc(kind=KIND, code=code)
            ctx.metrics.turns.inc(kind=KIND, outcome="error")
            message = str(e) if isinstance(e, (TTSError, ValueError)) else f"{type(e).__name__}: {e}"
            raise ApiError(status, code, f"synthesis failed: {message}") from None
        except BaseException:  # cancelled (shutdown)
            await stream.aclose()
            slot.release()
            raise
        ctx.metrics.first_audio.observe(time.perf_counter() - t0, kind=KIND)
        return cls(ctx, slot, stream, first, req.response_format, t0, samples)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        gone = asyncio.Event()

        async def listen() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    self.stream.cancel()
                    return

        listener = asyncio.create_task(listen(), name="duplex-openai-speech-disconnect")
        outcome = "cancelled"
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            data: bytes | None = self.first
            while data is not None:
                if data and not await self._send(send, data, gone):
                    return
                try:
                    data = await anext(self.stream)
                except StopAsyncIteration:
                    data = None
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                outcome = "complete"
        except Exception as e:  # the engine failed after audio was sent: end the body without its last chunk
            outcome = "error"
            code, _ = _engine_error(e)
            self.ctx.metrics.errors.inc(kind=KIND, code=code)
            log.warning("/v1/audio/speech: synthesis failed after audio was sent: %r", e)
        finally:
            listener.cancel()
            await self.stream.aclose()
            await asyncio.gather(listener, return_exceptions=True)
            self.slot.release()
            self.ctx.metrics.turns.inc(kind=KIND, outcome=outcome)
            self.ctx.metrics.audio_seconds.inc(self.samples[0] / SPEECH_API_SAMPLE_RATE, kind=KIND)
            self.ctx.metrics.turn_seconds.observe(time.perf_counter() - self.t0, kind=KIND)

    async def _send(self, send: Any, data: bytes, gone: asyncio.Event) -> bool:
        if gone.is_set():
            return False
        try:
            await asyncio.wait_for(send({"type": "http.response.body", "body": data, "more_body": True}), SEND_STALL_S)
        except TimeoutError:
            log.warning("/v1/audio/speech: the client took no audio for %g s; dropping it", SEND_STALL_S)
            self.ctx.metrics.errors.inc(kind=KIND, code="CLIENT_STALLED")
            return False
        except OSError:
            return False
        return True


def _engine_error(error: BaseException) -> tuple[str, int]:
    if isinstance(error, EngineUnavailableError):
        return "ENGINE_UNAVAILABLE", 503
    if isinstance(error, InvalidTextError):
        return "INVALID_TEXT", 400
    if isinstance(error, (VoiceError, UnsupportedLanguageError, ValueError)):
        return "INVALID_REQUEST", 400
    return "SYNTHESIS_ERROR", 500
