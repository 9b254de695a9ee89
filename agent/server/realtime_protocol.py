"""The OpenAI Realtime protocol as ``/v1/realtime`` serves it: client events (pydantic, validated at the edge) and the
server events Duplex sends, in both dialects the official ``openai`` SDK speaks.

Dialects: the SDK's ``client.realtime`` speaks the GA protocol; ``client.beta.realtime`` (header ``OpenAI-Beta:
realtime=v1``) the beta one. They differ in the session's shape (GA ``audio.input.format = {"type": "audio/pcm",
"rate": 24000}``; beta ``input_audio_format = "pcm16"``) and in a few server event names (GA
``response.output_audio.delta`` = beta ``response.audio.delta``; GA ``conversation.item.added`` + ``.done`` = beta
``conversation.item.created``). ``SessionConfig`` is the one internal form; ``ServerEvents`` writes either dialect.

What a client sends that Duplex cannot do is answered with an ``error`` event naming it (``UNSUPPORTED``); what has
no effect here (noise reduction, the transcription model, tracing, temperature) is accepted and ignored.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

AudioFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]
Dialect = Literal["ga", "beta"]

GA_FORMATS: dict[str, AudioFormat] = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
FORMAT_GA: dict[AudioFormat, str] = {v: k for k, v in GA_FORMATS.items()}

# GA event name -> beta event name, for the server events whose names differ
BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class ProtocolError(Exception):
    """A client event Duplex answers with an ``error`` event (the session goes on)."""

    def __init__(self, code: str, message: str, *, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.message, self.param, self.kind = code, message, param, kind


def unsupported(what: str, param: str | None = None) -> ProtocolError:
    return ProtocolError("UNSUPPORTED", f"{what} is not supported by this server (Duplex)", param=param)


# --- client events -------------------------------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    """Configuration objects: fields this server does not know are reported (``unknown_fields``), not fatal."""

    model_config = ConfigDict(extra="allow")

    def unknown_fields(self, prefix: str) -> list[str]:
        return [f"{prefix}{k}" for k in (self.model_extra or {})]


class GAAudioFormat(_Model):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
    rate: int | None = None

    def name(self, param: str) -> AudioFormat:
        if self.type == "audio/pcm" and self.rate not in (None, 24000):
            raise ProtocolError("invalid_value", "audio/pcm is 24000 Hz only", param=param)
        return GA_FORMATS[self.type]


class TurnDetection(_Open):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None
    eagerness: str | None = None


class GAAudioInput(_Open):
    format: GAAudioFormat | None = None
    turn_detection: TurnDetection | None = None
    transcription: dict | None = None
    noise_reduction: dict | None = None


class GAAudioOutput(_Open):
    format: GAAudioFormat | None = None
    voice: str | dict | None = None
    speed: float | None = None


class GAAudio(_Open):
    input: GAAudioInput | None = None
    output: GAAudioOutput | None = None


class SessionUpdate(_Open):
    """``session`` of ``session.update``: the GA and the beta fields together (a client sends one set)."""

    type: Literal["realtime", "transcription"] | None = None
    object: str | None = None
    id: str | None = None
    model: str | None = None
    instructions: str | None = None
    # GA
    audio: GAAudio | None = None
    output_modalities: list[str] | None = None
    max_output_tokens: int | str | None = None
    include: list[str] | None = None
    truncation: Any = None
    prompt: Any = None
    reasoning: Any = None
    parallel_tool_calls: bool | None = None
    # beta
    modalities: list[str] | None = None
    voice: str | dict | None = None
    input_audio_format: AudioFormat | None = None
    output_audio_format: AudioFormat | None = None
    input_audio_transcription: dict | None = None
    input_audio_noise_reduction: dict | None = None
    turn_detection: TurnDetection | None = None
    temperature: float | None = None
    max_response_output_tokens: int | str | None = None
    speed: float | None = None
    # both
    tools: list | None = None
    tool_choice: Any = None
    tracing: Any = None
    client_secret: Any = None
    expires_at: Any = None


class ContentPart(_Open):
    type: Literal["input_text", "input_audio", "text", "output_text", "audio", "output_audio", "input_image"]
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None


class ItemIn(_Open):
    id: str | None = None
    type: Literal["message", "function_call", "function_call_output", "mcp_call", "mcp_approval_response"] = "message"
    object: str | None = None
    status: str | None = None
    role: Literal["user", "assistant", "system"] | None = None
    content: list[ContentPart] | None = None


class ResponseParams(_Open):
    conversation: str | None = None
    instructions: str | None = None
    input: list | None = None
    tools: list | None = None
    tool_choice: Any = None
    output_modalities: list[str] | None = None
    modalities: list[str] | None = None
    metadata: dict | None = None
    temperature: float | None = None
    max_output_tokens: int | str | None = None
    max_response_output_tokens: int | str | None = None
    voice: str | dict | None = None
    audio: dict | None = None
    output_audio_format: str | None = None
    prompt: Any = None


class _Event(_Model):
    event_id: str | None = None


class SessionUpdateEvent(_Event):
    type: Literal["session.update"]
    session: SessionUpdate


class AppendEvent(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class CommitEvent(_Event):
    type: Literal["input_audio_buffer.commit"]


class ClearEvent(_Event):
    type: Literal["input_audio_buffer.clear"]


class ItemCreateEvent(_Event):
    type: Literal["conversation.item.create"]
    previous_item_id: str | None = None
    item: ItemIn


class ItemTruncateEvent(_Event):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = Field(0, ge=0)
    audio_end_ms: int = Field(ge=0)


class ItemDeleteEvent(_Event):
    type: Literal["conversation.item.delete"]
    item_id: str


class ItemRetrieveEvent(_Event):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ResponseCreateEvent(_Event):
    type: Literal["response.create"]
    response: ResponseParams | None = None


class ResponseCancelEvent(_Event):
    type: Literal["response.cancel"]
    response_id: str | None = None


class OutputAudioClearEvent(_Event):
    type: Literal["output_audio_buffer.clear"]
    response_id: str | None = None


class TranscriptionSessionUpdateEvent(_Event):
    type: Literal["transcription_session.update"]
    session: dict


ClientEvent = Annotated[
    SessionUpdateEvent
    | AppendEvent
    | CommitEvent
    | ClearEvent
    | ItemCreateEvent
    | ItemTruncateEvent
    | ItemDeleteEvent
    | ItemRetrieveEvent
    | ResponseCreateEvent
    | ResponseCancelEvent
    | OutputAudioClearEvent
    | TranscriptionSessionUpdateEvent,
    Field(discriminator="type"),
]
CLIENT_EVENT_TYPES = {
    m.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
    for m in (
        SessionUpdateEvent,
        AppendEvent,
        CommitEvent,
        ClearEvent,
        ItemCreateEvent,
        ItemTruncateEvent,
        ItemDeleteEvent,
        ItemRetrieveEvent,
        ResponseCreateEvent,
        ResponseCancelEvent,
        OutputAudioClearEvent,
        TranscriptionSessionUpdateEvent,
    )
}
_CLIENT_EVENT = TypeAdapter(ClientEvent)


def parse_client_event(data: str | bytes) -> Any:
    """A validated client event, or ``ProtocolError`` (``invalid_json``, ``unknown_event``, ``invalid_event``) with the
    client's ``event_id`` when it can be read."""
    from .guards import client_json

    try:
        raw = client_json(data)
    except ValueError as e:
        raise ProtocolError("invalid_json", f"the message is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ProtocolError("invalid_event", "an event is a JSON object with a 'type'")
    event_type = raw.get("type")
    if not isinstance(event_type, str) or event_type not in CLIENT_EVENT_TYPES:
        shown = repr(event_type[:60]) if isinstance(event_type, str) else type(event_type).__name__
        error = ProtocolError("unknown_event", f"unknown event type {shown}", param="type")
        error.event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None  # type: ignore[attr-defined]
        raise error
    try:
        return _CLIENT_EVENT.validate_python(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:])
        error = ProtocolError("invalid_event", f"{event_type}: {where}: {first['msg']}", param=where or None)
        error.event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None  # type: ignore[attr-defined]
        raise error from None


# --- session configuration -----------------------------------------------------------------------------------------
class SessionConfig(BaseModel):
    """The effective session, in one form for both dialects."""

    id: str = Field(default_factory=lambda: new_id("sess"))
    model: str = "duplex"
    instructions: str = ""
    voice: str = ""
    input_format: AudioFormat = "pcm16"
    output_format: AudioFormat = "pcm16"
    turn_detection: TurnDetection | None = Field(default_factory=TurnDetection)

    def apply(self, update: SessionUpdate) -> list[ProtocolError]:
        """Apply what is set in ``update``; returns the errors for what cannot be applied (the rest is)."""
        errors: list[ProtocolError] = []
        unknown = update.unknown_fields("session.")
        if update.audio is not None:
            unknown += update.audio.unknown_fields("session.audio.")
            if update.audio.input is not None:
                unknown += update.audio.input.unknown_fields("session.audio.input.")
            if update.audio.output is not None:
                unknown += update.audio.output.unknown_fields("session.audio.output.")
        if unknown:
            errors.append(ProtocolError("unknown_parameter", f"unknown session fields: {', '.join(unknown)}"))
        if update.type == "transcription":
            errors.append(unsupported("a transcription session", "session.type"))
            return errors
        if update.tools:
            errors.append(unsupported("function calling (tools)", "session.tools"))
        for field in ("output_modalities", "modalities"):
            modalities = getattr(update, field)
            if modalities is not None and "audio" not in modalities:
                errors.append(unsupported("a text-only session", f"session.{field}"))
        if update.instructions is not None:
            self.instructions = update.instructions
        if update.model:
            self.model = update.model
        voice = update.voice
        speed = update.speed
        turn_set = "turn_detection" in update.model_fields_set
        turn = update.turn_detection
        if update.input_audio_format is not None:
            self.input_format = update.input_audio_format
        if update.output_audio_format is not None:
            self.output_format = update.output_audio_format
        audio = update.audio
        if audio is not None and audio.input is not None:
            if audio.input.format is not None:
                try:
                    self.input_format = audio.input.format.name("session.audio.input.format")
                except ProtocolError as e:
                    errors.append(e)
            if "turn_detection" in audio.input.model_fields_set:
                turn_set, turn = True, audio.input.turn_detection
        if audio is not None and audio.output is not None:
            if audio.output.format is not None:
                try:
                    self.output_format = audio.output.format.name("session.audio.output.format")
                except ProtocolError as e:
                    errors.append(e)
            voice = audio.output.voice if audio.output.voice is not None else voice
            speed = audio.output.speed if audio.output.speed is not None else speed
        if voice is not None:
            self.voice = voice.get("id", "") if isinstance(voice, dict) else str(voice)
        if speed is not None and speed != 1.0:
            errors.append(unsupported("a speech speed other than 1.0", "session.speed"))
        if turn_set:
            if turn is not None and (turn.create_response is False or turn.interrupt_response is False):
                errors.append(
                    unsupported(
                        "create_response/interrupt_response false (server VAD always answers and lets the "
                        "user interrupt; use turn_detection null for manual turns)",
                        "session.turn_detection",
                    )
                )
                turn = turn.model_copy(update={"create_response": None, "interrupt_response": None})
            self.turn_detection = turn
        return errors

    def _turn(self) -> dict | None:
        if self.turn_detection is None:
            return None
        return {
            "type": self.turn_detection.type,
            "threshold": self.turn_detection.threshold,
            "prefix_padding_ms": self.turn_detection.prefix_padding_ms,
            "silence_duration_ms": self.turn_detection.silence_duration_ms,
            "create_response": True,
            "interrupt_response": True,
        }

    def describe(self, dialect: Dialect) -> dict[str, Any]:
        """The session object of ``session.created`` / ``session.updated``."""
        if dialect == "beta":
            return {
                "id": self.id,
                "object": "realtime.session",
                "model": self.model,
                "modalities": ["audio", "text"],
                "instructions": self.instructions,
                "voice": self.voice,
                "input_audio_format": self.input_format,
                "output_audio_format": self.output_format,
                "input_audio_transcription": {"model": "duplex"},
                "turn_detection": self._turn(),
                "tools": [],
                "tool_choice": "auto",
                "temperature": 0.8,
                "max_response_output_tokens": "inf",
            }

        def fmt(name: AudioFormat) -> dict[str, Any]:
            return {"type": "audio/pcm", "rate": 24000} if name == "pcm16" else {"type": FORMAT_GA[name]}

        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "output_modalities": ["audio"],
            "instructions": self.instructions,
            "audio": {
                "input": {
                    "format": fmt(self.input_format),
                    "transcription": {"model": "duplex"},
                    "noise_reduction": None,
                    "turn_detection": self._turn(),
                },
                "output": {"format": fmt(self.output_format), "voice": self.voice, "speed": 1.0},
            },
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
        }


# --- server events -------------------------------------------------------------------------------------------------
class ServerEvents:
    """Builds server events in one dialect: ``event(type, **fields)`` adds ``event_id`` and renames for beta."""

    def __init__(self, dialect: Dialect):
        self.dialect = dialect

    def event(self, event_type: str, **fields: Any) -> dict[str, Any]:
        if self.dialect == "beta":
            event_type = BETA_NAMES.get(event_type, event_type)
        return {"type": event_type, "event_id": new_id("event"), **fields}

    def error(self, error: ProtocolError, event_id: str | None = None) -> dict[str, Any]:
        return self.event(
            "error",
            error={
                "type": error.kind,
                "code": error.code,
                "message": error.message,
                "param": error.param,
                "event_id": event_id,
            },
        )

    @property
    def audio_part(self) -> str:
        return "audio" if self.dialect == "beta" else "output_audio"

    def item_added(self, item: dict[str, Any], previous_item_id: str | None) -> list[dict[str, Any]]:
        """``conversation.item.added`` (GA) / ``conversation.item.created`` (beta)."""
        return [self.event("conversation.item.added", previous_item_id=previous_item_id, item=item)]

    def item_done(self, item: dict[str, Any], previous_item_id: str | None) -> list[dict[str, Any]]:
        """GA's ``conversation.item.done``; beta has no such event."""
        if self.dialect == "beta":
            return []
        return [self.event("conversation.item.done", previous_item_id=previous_item_id, item=item)]


def message_item(item_id: str, role: str, content: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": role,
        "content": content,
    }
