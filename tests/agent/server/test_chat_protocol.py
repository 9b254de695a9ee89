"""The voice-chat client messages (typed turns, stop) parsed at the edge: bad ones are errors with a reason."""

from __future__ import annotations

import pytest

from agent.server.chat_protocol import StopMessage, TextMessage, parse_chat_message
from agent.server.protocol import ProtocolError


def test_text_and_stop():
    assert parse_chat_message('{"type": "text", "text": "  Hi there  "}', max_text_chars=100) == TextMessage(
        type="text", text="Hi there"
    )
    assert parse_chat_message({"type": "stop"}, max_text_chars=100) == StopMessage(type="stop")


@pytest.mark.parametrize(
    ("raw", "code", "why"),
    [
        ("not json", "INVALID_MESSAGE", "must be JSON"),
        ("[1, 2]", "INVALID_MESSAGE", "JSON object"),
        ('{"type": "dance"}', "INVALID_MESSAGE", "unknown message type 'dance'; expected one of: text, stop"),
        ('{"text": "x"}', "INVALID_MESSAGE", "unknown message type none"),
        ('{"type": "text"}', "INVALID_MESSAGE", "invalid text message: text: Field required"),
        ('{"type": "text", "text": 5}', "INVALID_MESSAGE", "text: Input should be a valid string"),
        ('{"type": "text", "text": "x", "voice": "y"}', "INVALID_MESSAGE", "voice: Extra inputs"),
        ('{"type": "text", "text": "   "}', "INVALID_TEXT", "empty"),
        ('{"type": "text", "text": "' + "a" * 101 + '"}', "INVALID_TEXT", "longer than 100"),
    ],
)
def test_bad_messages(raw, code, why):
    with pytest.raises(ProtocolError) as e:
        parse_chat_message(raw, max_text_chars=100)
    assert e.value.code == code and why in e.value.message, e.value.message
