"""``/api/v1/voices``: list, add (multipart upload) and delete voices of the registry.

``POST`` validates in three steps, each refusing with a clear error and leaving nothing on disk: the form fields, the
clip (decodable, 3-30 s, not silent, within the upload limit; any format and rate), and, when the TTS engine is
loaded, the engine itself building the voice from it (a clip the engine cannot use is removed again). A clip's
length is read from its header before it is decoded, and decoding stops past 30 s, so a small file that holds hours
of audio costs nothing; at most ``MAX_CONCURRENT_UPLOADS`` uploads are read and decoded at once (503 ``BUSY``
after ``UPLOAD_WAIT_S`` of waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from processors.threads import run_in_thread
from processors.tts_engine import UnsupportedLanguageError, resolve_language
from voices.registry import (
    InvalidVoiceAudioError,
    InvalidVoiceError,
    Voice,
    VoiceExistsError,
    VoiceNotFoundError,
    VoiceReadOnlyError,
    VoiceRegistryError,
)

from .context import get_context
from .guards import MAX_CONCURRENT_UPLOADS, UPLOAD_WAIT_S, ApiError, check_upload_length, require_auth

log = logging.getLogger("duplex.server.voices")
router = APIRouter(prefix="/api/v1/voices", dependencies=[Depends(require_auth)])

MAX_FIELD_BYTES = 16 * 1024  # name, transcript, description...
FIELDS = ("audio", "name", "transcript", "language", "id", "description", "default")


def voice_json(voice: Voice, default_id: str | None) -> dict[str, Any]:
    m = voice.manifest
    return {
        "id": m.id,
        "name": m.name,
        "language": m.language,
        "description": m.description,
        "isDefault": m.id == default_id,
        "builtIn": voice.shipped,
        "hasTranscript": bool(m.transcript),
        "source": m.source,
        "licence": m.licence,
    }


def _default_id(registry: Any) -> str | None:
    try:
        return registry.default_id()
    except VoiceNotFoundError:
        return None


@router.get("")
async def list_voices(request: Request) -> dict[str, Any]:
    registry = get_context(request).registry
    voices = await run_in_thread(registry.list, name="duplex-voices")
    default_id = _default_id(registry)
    return {"voices": [voice_json(v, default_id) for v in voices], "default": default_id}


@router.get("/{voice_id}")
async def get_voice(voice_id: str, request: Request) -> dict[str, Any]:
    registry = get_context(request).registry
    try:
        voice = registry.get(voice_id)
    except VoiceNotFoundError as e:
        raise ApiError(404, "VOICE_NOT_FOUND", str(e)) from None
    return voice_json(voice, _default_id(registry))


def _text_field(form: Any, name: str, required: bool = False) -> str | None:
    value = form.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ApiError(400, "INVALID_FIELD", f"the form needs a non-empty '{name}' field")
        return None
    if not isinstance(value, str):
        raise ApiError(400, "INVALID_FIELD", f"'{name}' must be a text field, not a file")
    return value.strip()


def _bool_field(form: Any, name: str) -> bool:
    value = _text_field(form, name)
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ApiError(400, "INVALID_FIELD", f"'{name}' must be true or false, got {value[:20]!r}")


@router.post("", status_code=201)
async def add_voice(request: Request) -> JSONResponse:
    """Multipart form: ``audio`` (file), ``name``, ``transcript`` (recommended: the exact words of the clip),
    optional ``language`` (default English), ``id`` (default: from the name), ``description``, ``default``."""
    ctx = get_context(request)
    limit = ctx.settings.server.max_upload_bytes
    check_upload_length(request, limit)
    try:
        form = await request.form(max_files=1, max_fields=len(FIELDS), max_part_size=MAX_FIELD_BYTES)
    except HTTPException as e:
        raise ApiError(400, "INVALID_REQUEST", f"cannot read the multipart form: {e.detail}") from None
    try:
        unknown = sorted(set(form.keys()) - set(FIELDS))
        if unknown:
            raise ApiError(
                400, "INVALID_FIELD", f"unknown form field(s) {', '.join(unknown)}; expected: {', '.join(FIELDS)}"
            )
        audio = form.get("audio")
        if not isinstance(audio, UploadFile):
            raise ApiError(400, "INVALID_FIELD", "the form needs an 'audio' file field (multipart/form-data)")
        name = _text_field(form, "name", required=True)
        transcript = _text_field(form, "transcript")
        language = _text_field(form, "language") or "English"
        voice_id = _text_field(form, "id")
        description = _text_field(form, "description") or ""
        make_default = _bool_field(form, "default")
        engine = ctx.engines.tts
        if engine is not None:
            try:
                language = resolve_language(language, engine.languages, allow_auto=False)
            except UnsupportedLanguageError as e:
                raise ApiError(400, "INVALID_FIELD", str(e)) from None
        async with _upload_turn(ctx):  # bounded: at most MAX_CONCURRENT_UPLOADS in memory and decoding at once
            data = await audio.read(limit + 1)
            if len(data) > limit:
                raise ApiError(413, "PAYLOAD_TOO_LARGE", f"the audio is larger than the limit of {limit} bytes")
            if not data:
                raise ApiError(422, "INVALID_AUDIO", "the audio file is empty")
            return await _store_voice(
                ctx, engine, data, name, voice_id, transcript, language, description, make_default
            )
    finally:
        await form.close()


@contextlib.asynccontextmanager
async def _upload_turn(ctx: Any) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(UPLOAD_WAIT_S):
            await ctx.uploads.acquire()
    except TimeoutError:
        raise ApiError(
            503, "BUSY", f"{MAX_CONCURRENT_UPLOADS} uploads are being processed; retry", {"Retry-After": "5"}
        ) from None
    try:
        yield
    finally:
        ctx.uploads.release()


async def _store_voice(
    ctx: Any,
    engine: Any,
    data: bytes,
    name: str | None,
    voice_id: str | None,
    transcript: str | None,
    language: str,
    description: str,
    make_default: bool,
) -> JSONResponse:
    """Decode, check and store the clip (``VoiceRegistry.add``), then let the engine build the voice."""
    try:
        voice = await run_in_thread(
            lambda: ctx.registry.add(
                data,
                name=name,
                voice_id=voice_id,
                transcript=transcript,
                language=language,
                description=description,
                default=make_default,
            ),
            name="duplex-voice-add",
        )
    except InvalidVoiceAudioError as e:
        raise ApiError(422, "INVALID_AUDIO", str(e)) from None
    except InvalidVoiceError as e:
        raise ApiError(400, "INVALID_FIELD", str(e)) from None
    except VoiceExistsError as e:
        raise ApiError(409, "VOICE_EXISTS", str(e)) from None
    except VoiceRegistryError as e:
        raise ApiError(500, "VOICE_STORE_ERROR", str(e)) from None

    if engine is not None:  # the engine builds (and caches) the voice now: a clip it cannot use is refused
        try:
            await ctx.voices.load(engine, voice)
        except Exception as e:
            await run_in_thread(ctx.registry.delete, voice.id, name="duplex-voice-delete")
            ctx.voices.forget(voice.id)
            raise ApiError(422, "INVALID_AUDIO", f"the {engine.name} engine cannot use this clip: {e}") from None
    body = voice_json(voice, _default_id(ctx.registry))
    return JSONResponse(body, status_code=201, headers={"Location": f"/api/v1/voices/{voice.id}"})


@router.delete("/{voice_id}", status_code=204)
async def delete_voice(voice_id: str, request: Request) -> Response:
    ctx = get_context(request)
    try:
        await run_in_thread(ctx.registry.delete, voice_id, name="duplex-voice-delete")
    except VoiceNotFoundError as e:
        raise ApiError(404, "VOICE_NOT_FOUND", str(e)) from None
    except VoiceReadOnlyError as e:
        raise ApiError(403, "VOICE_READ_ONLY", str(e)) from None
    ctx.voices.forget(voice_id)
    return Response(status_code=204)
