"""What a voice-chat client may send besides its microphone: JSON text frames on ``/ws``, JSON messages on the WebRTC
data channel. One pydantic model per message, parsed here at the edge; a bad message becomes an ``error`` event
(``INVALID_MESSAGE``) and the session goes on.

* ``{"type": "text", "text": "..."}``: a typed turn. It goes through the same pipeline as speech, after the STT: it
  interrupts the bot if it is speaking, joins the conversation as the user's words, and the bot answers aloud.
* ``{"type": "stop", "reason"?}``: end the session (closing the connection does the same).

A message is at most ``max_message_bytes(max_text_chars)`` long and nested at most as deep as the JSON parser goes;
longer or deeper is ``INVALID_MESSAGE`` too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .guards import client_json
from .protocol import ProtocolError

CLIENT_TYPES = ("text", "stop")


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextMessage(_Message):
    type: Literal["text"]
    text: str


class StopMessage(_Message):
    type: Literal["stop"]
    reason: str | None = Field(None, max_length=500)


ChatClientMessage = TextMessage | StopMessage
_MODELS: dict[str, type[_Message]] = {"text": TextMessage, "stop": StopMessage}


def max_message_bytes(max_text_chars: int) -> int:
    """The longest message worth parsing: a text of ``max_text_chars`` characters, each escaped (``\\uXXXX`` twice
    for a character outside the BMP), and the envelope."""
    return 12 * max_text_chars + 1024


def parse_chat_message(raw: str | bytes | dict[str, Any], *, max_text_chars: int) -> ChatClientMessage:
    """One client message -> its model; ``ProtocolError("INVALID_MESSAGE", why)`` when it cannot be used."""
    data: Any = raw
    if isinstance(raw, (str, bytes)):
        if len(raw) > (limit := max_message_bytes(max_text_chars)):
            raise ProtocolError("INVALID_MESSAGE", f"a message must be at most {limit} bytes")
        try:
            data = client_json(raw)
        except ValueError as e:
            deep = "nested too deeply" in str(e)
            raise ProtocolError(
                "INVALID_MESSAGE", "a message must be JSON" + (": nested too deeply" if deep else "")
            ) from None
    if not isinstance(data, dict):
        raise ProtocolError("INVALID_MESSAGE", "a message must be a JSON object")
    kind = data.get("type")
    model = _MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        shown = repr(kind[:40]) if isinstance(kind, str) else "none"
        expected = ", ".join(CLIENT_TYPES)
        raise ProtocolError("INVALID_MESSAGE", f"unknown message type {shown}; expected one of: {expected}")
    try:
        message = model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or kind
        raise ProtocolError("INVALID_MESSAGE", f"invalid {kind} message: {where}: {err.get('msg')}") from None
    if isinstance(message, TextMessage):
        text = message.text.strip()
        if not text:
            raise ProtocolError("INVALID_TEXT", "the text is empty")
        if len(text) > max_text_chars:
            raise ProtocolError("INVALID_TEXT", f"the text is longer than {max_text_chars} characters")
        message = TextMessage(type="text", text=text)
    return message  # type: ignore[return-value]
