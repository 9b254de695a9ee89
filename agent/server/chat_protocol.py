"""What a voice-chat client may send besides its microphone: JSON text frames on ``/ws``, JSON messages on the WebRTC
data channel. One pydantic model per message, parsed here at the edge; a bad message becomes an ``error`` event
(``INVALID_MESSAGE``) and the session goes on.

* ``{"type": "text", "text": "..."}``: a typed turn. It goes through the same pipeline as speech, after the STT: it
  interrupts the bot if it is speaking, joins the conversation as the user's words, and the bot answers aloud.
* ``{"type": "stop"}``: end the session (closing the connection does the same).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .protocol import ProtocolError

CLIENT_TYPES = ("text", "stop")


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextMessage(_Message):
    type: Literal["text"]
    text: str


class StopMessage(_Message):
    type: Literal["stop"]


ChatClientMessage = TextMessage | StopMessage
_MODELS: dict[str, type[_Message]] = {"text": TextMessage, "stop": StopMessage}


def parse_chat_message(raw: str | bytes | dict[str, Any], *, max_text_chars: int) -> ChatClientMessage:
    """One client message -> its model; ``ProtocolError("INVALID_MESSAGE", why)`` when it cannot be used."""
    data: Any = raw
    if isinstance(raw, (str, bytes)):
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ProtocolError("INVALID_MESSAGE", "a message must be JSON") from None
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
