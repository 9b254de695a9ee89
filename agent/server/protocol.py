"""The ``/api/v1/speak`` WebSocket protocol: one pydantic model per client and server message (docs/server.md).

Every client message is parsed here, at the edge, by ``parse_client_message``; a bad one raises ``ProtocolError`` with
the error code and a message that says what was wrong, and the session carries on. Field names are camelCase on the
wire (``sampleRate``, ``requestId``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from processors.audio import PIPELINE_OUTPUT_RATES, TTS_SAMPLE_RATE

from .guards import client_json

ErrorCode = Literal[
    "MODEL_LOADING",  # the TTS model is not loaded yet (recoverable: retry) or failed to load (not recoverable)
    "SYNTHESIS_ERROR",  # the engine failed on this request, or a voice cannot be used
    "INVALID_TEXT",  # speak text missing, empty, not a string or too long
    "VOICE_NOT_FOUND",  # unknown voice id: the session falls back to the default voice and says so
    "UNAUTHORIZED",  # missing or wrong token: the session is closed
    "RATE_LIMITED",  # too many sessions (closed) or too many queued speaks (recoverable)
    "TIMEOUT",  # idle too long (closed) or no start/auth in time
    "CANCELLED",  # a speak was cancelled (cancel, high-priority pre-emption, stop)
    "INVALID_MESSAGE",  # malformed JSON, unknown type, bad fields, oversized or binary frames (extension)
]
Encoding = Literal["pcm16", "pcm32f"]
AudioFormat = Literal["binary", "json"]
Pacing = Literal["asap", "realtime"]
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 48_000
MAX_REQUEST_ID_CHARS = 128
CLIENT_TYPES = ("start", "speak", "cancel", "stop")


class ProtocolError(Exception):
    """A client message that cannot be used; becomes an ``error`` message."""

    def __init__(self, code: str, message: str, recoverable: bool = True):
        super().__init__(message)
        self.code, self.message, self.recoverable = code, message, recoverable


class _Message(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# --- client -> server ------------------------------------------------------------------------------
class StartMessage(_Message):
    """Configure the session. May be sent again to change settings for later speaks."""

    type: Literal["start"]
    sample_rate: int = Field(TTS_SAMPLE_RATE, ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE, strict=True)
    encoding: Encoding = "pcm16"
    voice: str | None = Field(None, max_length=64)  # None -> the registry's default voice
    language: str | None = Field(None, max_length=32)  # None -> the voice's language
    auth_token: str | None = Field(None, max_length=4096)
    audio_format: AudioFormat = "binary"  # "json": audio as base64 audioChunk messages instead of binary frames
    # "realtime": audio leaves at most pacingLeadMs ahead of real time, so a cancel leaves at most that much audio
    # queued at the client; "asap": as fast as the engine makes it (files, batch clients)
    pacing: Pacing = "realtime"
    pacing_lead_ms: int = Field(160, ge=0, le=5_000, strict=True)


class SpeakMessage(_Message):
    type: Literal["speak"]
    text: Any = None  # checked by processors.tts_engine.validate_text -> INVALID_TEXT
    priority: Literal["normal", "high"] = "normal"
    request_id: str | None = Field(None, max_length=MAX_REQUEST_ID_CHARS)  # echoed in complete/error/audioChunk


class CancelMessage(_Message):
    type: Literal["cancel"]


class StopMessage(_Message):
    type: Literal["stop"]
    reason: str | None = Field(None, max_length=500)


ClientMessage = StartMessage | SpeakMessage | CancelMessage | StopMessage
_MODELS: dict[str, type[_Message]] = {
    "start": StartMessage,
    "speak": SpeakMessage,
    "cancel": CancelMessage,
    "stop": StopMessage,
}


# --- server -> client ------------------------------------------------------------------------------
class _ServerMessage(_Message):
    def dump(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


class Capabilities(_ServerMessage):
    streaming: bool = True
    languages: list[str]
    encodings: list[str] = ["pcm16", "pcm32f"]
    audio_formats: list[str] = ["binary", "json"]
    sample_rates: list[int] = list(PIPELINE_OUTPUT_RATES)  # tested rates; any rate in [min, max] works
    min_sample_rate: int = MIN_SAMPLE_RATE
    max_sample_rate: int = MAX_SAMPLE_RATE
    max_text_chars: int
    priorities: list[str] = ["normal", "high"]


class ReadyMessage(_ServerMessage):
    type: Literal["ready"] = "ready"
    session_id: str
    voice_loaded: bool  # the default voice is loaded and the engine is ready
    capabilities: Capabilities


class StartedMessage(_ServerMessage):
    type: Literal["started"] = "started"
    sample_rate: int
    encoding: Encoding
    voice: str
    language: str
    audio_format: AudioFormat
    pacing: Pacing


class AudioChunkMessage(_ServerMessage):
    type: Literal["audioChunk"] = "audioChunk"
    data: str  # base64 of raw PCM in the session's encoding and rate; "" for an empty final chunk
    sequence_number: int  # 0, 1, 2... per speak
    is_final: bool
    timestamp_ms: float  # position of the chunk's first sample in the speak's audio
    request_id: str | None = None


class CompleteMessage(_ServerMessage):
    type: Literal["complete"] = "complete"
    duration_ms: float  # speak taken from the queue -> last audio sent
    characters_processed: int
    audio_length_ms: float
    first_audio_ms: float | None = None  # speak taken from the queue -> first audio sent
    request_id: str | None = None


class ErrorMessage(_ServerMessage):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    recoverable: bool
    request_id: str | None = None


class StoppedMessage(_ServerMessage):
    type: Literal["stopped"] = "stopped"
    reason: str


# --- parsing ---------------------------------------------------------------------------------------
def _describe(e: ValidationError, kind: str) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown field {loc!r}")
        elif err.get("type") == "missing":
            parts.append(f"field {loc!r} is required")
        else:
            parts.append(f"{loc}: {err.get('msg')}")
    more = len(e.errors()) - 3
    return f"invalid {kind} message: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """One client text frame -> its model; raises ``ProtocolError('INVALID_MESSAGE', ...)`` with the reason."""
    try:
        data = client_json(raw)
    except ValueError as e:
        raise ProtocolError("INVALID_MESSAGE", str(e)) from None
    if not isinstance(data, dict):
        raise ProtocolError("INVALID_MESSAGE", f"a message must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    expected = ", ".join(CLIENT_TYPES)
    if not isinstance(kind, str):
        raise ProtocolError("INVALID_MESSAGE", f"the message has no string 'type'; expected one of: {expected}")
    model = _MODELS.get(kind)
    if model is None:
        raise ProtocolError("INVALID_MESSAGE", f"unknown message type {kind[:40]!r}; expected one of: {expected}")
    try:
        return model.model_validate(data)  # type: ignore[return-value]
    except ValidationError as e:
        raise ProtocolError("INVALID_MESSAGE", _describe(e, kind)) from None
