"""Playback acknowledgements from phone carriers, so a call's context holds the words the caller *heard*.

The server sends a call's audio ahead of playback (pipecat's WebSocket output paces at twice real time), and the
carrier buffers it: after a barge-in, what the server had sent is not what the caller heard. Carriers can say what
they played:

* **Twilio** Media Streams: the server sends ``{"event": "mark", "streamSid", "mark": {"name"}}`` after audio; Twilio
  echoes the same ``mark`` when the audio before it has played. A ``clear`` empties its buffer and echoes every mark
  still in it at once (those were *not* played).
* **Telnyx** media streaming: the same ``mark`` event (``stream_id`` instead of ``streamSid``), echoed when played.
* **Plivo** audio streams: ``{"event": "checkpoint", "streamId", "name"}``, answered by ``{"event": "playedStream",
  "name"}`` only when the audio before it has played; ``clearAudio`` answers with ``clearedAudio``.

``marking_serializer(kind, ...)`` builds pipecat's serializer for the carrier with one addition: an
acknowledgement coming in is handed to the call's ``pipelines.playback.RemotePlayout`` (and not passed on as a
frame); after a clear (a barge-in's, or a hold's) echoes of the discarded marks are ignored. The playout sends a mark
after every audio chunk (40 ms), releases the bot's words to the context only once their audio was confirmed
played, and on a barge-in hold clears the carrier's buffer at once and later plays the cut audio again from the
confirmed point. A carrier that never answers a mark is detected by silence: until the first acknowledgement the
clock is trusted, as without marks.
"""

from __future__ import annotations

import json
from typing import Any

from pipecat.frames.frames import Frame
from pipecat.serializers.plivo import PlivoFrameSerializer
from pipecat.serializers.telnyx import TelnyxFrameSerializer
from pipecat.serializers.twilio import TwilioFrameSerializer

from pipelines.playback import RemotePlayout


class TwilioMarks:
    ack_event = '"mark"'

    def __init__(self, stream_sid: str):
        self.stream_sid = stream_sid

    def mark_message(self, name: str) -> dict[str, Any]:
        return {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}

    def clear_message(self) -> dict[str, Any]:
        return {"event": "clear", "streamSid": self.stream_sid}

    @staticmethod
    def acknowledged(message: dict[str, Any]) -> str | None:
        if message.get("event") == "mark" and isinstance(message.get("mark"), dict):
            name = message["mark"].get("name")
            return name if isinstance(name, str) else None
        return None


class TelnyxMarks(TwilioMarks):
    def mark_message(self, name: str) -> dict[str, Any]:
        return {"event": "mark", "stream_id": self.stream_sid, "mark": {"name": name}}

    def clear_message(self) -> dict[str, Any]:
        return {"event": "clear"}


class PlivoMarks:
    ack_event = '"playedStream"'

    def __init__(self, stream_id: str):
        self.stream_id = stream_id

    def mark_message(self, name: str) -> dict[str, Any]:
        return {"event": "checkpoint", "streamId": self.stream_id, "name": name}

    def clear_message(self) -> dict[str, Any]:
        return {"event": "clearAudio", "streamId": self.stream_id}

    @staticmethod
    def acknowledged(message: dict[str, Any]) -> str | None:
        if message.get("event") == "playedStream":
            name = message.get("name")
            return name if isinstance(name, str) else None
        return None


class _Acknowledging:
    """Mixed into a pipecat carrier serializer (see the module docstring)."""

    marks: Any
    playout: RemotePlayout

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if isinstance(data, str) and self.marks.ack_event in data:
            try:
                message = json.loads(data)
            except ValueError:
                message = None
            name = self.marks.acknowledged(message) if isinstance(message, dict) else None
            if name is not None:
                self.playout.acknowledged(name)
                return None
        return await super().deserialize(data)  # type: ignore[misc]


class TwilioMarkingSerializer(_Acknowledging, TwilioFrameSerializer):
    pass


class TelnyxMarkingSerializer(_Acknowledging, TelnyxFrameSerializer):
    pass


class PlivoMarkingSerializer(_Acknowledging, PlivoFrameSerializer):
    pass


SERIALIZERS = {
    "twilio": (TwilioMarkingSerializer, TwilioMarks),
    "telnyx": (TelnyxMarkingSerializer, TelnyxMarks),
    "plivo": (PlivoMarkingSerializer, PlivoMarks),
}


def marking_serializer(kind: str, stream_id: str, **kwargs: Any) -> tuple[Any, RemotePlayout]:
    """The carrier's pipecat serializer (``kwargs`` are its own) wired to a new playout for the call."""
    cls, marks_cls = SERIALIZERS[kind]
    marks = marks_cls(stream_id)
    playout = RemotePlayout(marks)
    serializer = cls(stream_id, **kwargs)
    serializer.marks = marks
    serializer.playout = playout
    return serializer, playout
