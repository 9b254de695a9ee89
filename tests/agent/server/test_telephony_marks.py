"""Played words on the phone: the carriers' playback acknowledgements (Twilio/Telnyx marks, Plivo checkpoints)
make the context after a barge-in hold the words the caller heard, not the words the server had sent.

The live test drives the real ``/telephony/twilio`` route (real uvicorn, the fallback engines: pocketsphinx, SmolLM2,
espeak) with a scripted carrier that behaves as Twilio documents: it plays the audio it receives in real time after
a jitter buffer, echoes each mark once the audio before it has played (after a network delay), and on ``clear``
discards what it buffered and echoes the marks still in it at once."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from pipecat.frames.frames import InputAudioRawFrame, InterruptionFrame
from pipecat.serializers.plivo import PlivoFrameSerializer
from pipecat.serializers.telnyx import TelnyxFrameSerializer
from pipecat.serializers.twilio import TwilioFrameSerializer

from agent.server.telephony_marks import PlivoMarks, TelnyxMarks, TwilioMarks, marking_serializer
from testkit.clips import speech

from .test_agent_entrypoints import FRAME_S, Pacer, mulaw_frames

# --- the carriers' messages -------------------------------------------------------------------------------------
SERIALIZER_PARAMS = {
    "twilio": TwilioFrameSerializer.InputParams,
    "telnyx": TelnyxFrameSerializer.InputParams,
    "plivo": PlivoFrameSerializer.InputParams,
}


def test_mark_messages_of_each_carrier():
    assert TwilioMarks("MZ1").mark_message("duplex-3") == {
        "event": "mark",
        "streamSid": "MZ1",
        "mark": {"name": "duplex-3"},
    }
    assert TwilioMarks("MZ1").clear_message() == {"event": "clear", "streamSid": "MZ1"}
    assert TelnyxMarks("st").mark_message("duplex-3") == {
        "event": "mark",
        "stream_id": "st",
        "mark": {"name": "duplex-3"},
    }
    assert PlivoMarks("st").mark_message("duplex-3") == {"event": "checkpoint", "streamId": "st", "name": "duplex-3"}
    assert PlivoMarks("st").clear_message() == {"event": "clearAudio", "streamId": "st"}
    assert TwilioMarks.acknowledged({"event": "mark", "mark": {"name": "duplex-3"}}) == "duplex-3"
    assert PlivoMarks.acknowledged({"event": "playedStream", "name": "duplex-3"}) == "duplex-3"
    assert TwilioMarks.acknowledged({"event": "media", "media": {}}) is None
    assert PlivoMarks.acknowledged({"event": "clearedAudio"}) is None


@pytest.mark.parametrize(
    "kind, ack, kwargs",
    [
        ("twilio", {"event": "mark", "streamSid": "s1", "mark": {"name": "duplex-2"}}, {}),
        (
            "telnyx",
            {"event": "mark", "stream_id": "s1", "mark": {"name": "duplex-2"}},
            {"outbound_encoding": "PCMU", "inbound_encoding": "PCMU"},
        ),
        ("plivo", {"event": "playedStream", "streamId": "s1", "name": "duplex-2"}, {}),
    ],
)
async def test_serializers_hand_acknowledgements_to_the_playout(kind, ack, kwargs):
    """An acknowledgement is the playout's, not a frame; media still decodes; a barge-in still sends the carrier's
    clear."""
    params = SERIALIZER_PARAMS[kind](auto_hang_up=False)
    serializer, playout = marking_serializer(kind, "s1", params=params, **kwargs)
    await serializer.setup(SimpleNamespace(audio_in_sample_rate=8000))
    got = []
    playout.acknowledged = got.append  # record what reaches the playout (the serializer's side is under test)
    assert await serializer.deserialize(json.dumps(ack)) is None and got == ["duplex-2"]
    assert await serializer.deserialize("not json {") is None and got == ["duplex-2"]
    payload = base64.b64encode(bytes(160)).decode()
    media = {"event": "media", "media": {"payload": payload}, "streamSid": "s1", "stream_id": "s1", "streamId": "s1"}
    assert isinstance(await serializer.deserialize(json.dumps(media)), InputAudioRawFrame)
    clear = json.loads(await serializer.serialize(InterruptionFrame()))
    assert clear == {"twilio": {"event": "clear", "streamSid": "s1"}, "telnyx": {"event": "clear"}}.get(
        kind, {"event": "clearAudio", "streamId": "s1"}
    )


# --- a scripted Twilio through the real route -------------------------------------------------------------------


class FakeTwilio:
    """Plays what it receives in real time, ``start_delay_s`` after a burst starts into an empty buffer (a jitter
    buffer and the network), and echoes each mark ``ack_delay_s`` after the audio before it played (``acks=False``:
    a carrier that never answers marks). ``clear`` stops playback at once and echoes the marks it discarded."""

    def __init__(self, send, *, start_delay_s: float, ack_delay_s: float, acks: bool = True):
        self.send, self.start_delay_s, self.ack_delay_s, self.acks = send, start_delay_s, ack_delay_s, acks
        self.segments: list[tuple[float, float, float]] = []  # (start, end, position in the stream) of played audio
        self.received_s = 0.0  # seconds of audio received
        self.play_end = 0.0
        self.pending: dict[str, asyncio.TimerHandle] = {}
        self.clears: list[tuple[float, float]] = []  # (time, stream position played by then)
        self.stream = bytearray()  # every mu-law byte received, in order
        self.clear_offsets: list[int] = []  # len(stream) at each clear
        self.arrivals: list[float] = []
        self.marks = self.acked = 0

    def position(self, t: float) -> float:
        """Seconds of the stream played by time ``t``."""
        return max([pos + min(t, end) - start for start, end, pos in self.segments if start <= t] or [0.0])

    def media(self, payload: str) -> None:
        now = time.monotonic()
        audio = base64.b64decode(payload)
        self.stream += audio
        self.arrivals.append(now)
        seconds = len(audio) / 8000
        start = self.play_end if self.play_end > now else now + self.start_delay_s
        self.segments.append((start, start + seconds, self.received_s))
        self.received_s += seconds
        self.play_end = start + seconds

    def mark(self, name: str) -> None:
        self.marks += 1
        if not self.acks:
            return
        now = time.monotonic()
        delay = max(0.0, self.play_end - now) + self.ack_delay_s
        self.pending[name] = asyncio.get_running_loop().call_later(delay, self._ack, name)

    def _ack(self, name: str) -> None:
        self.pending.pop(name, None)
        self.acked += 1
        asyncio.ensure_future(self.send({"event": "mark", "streamSid": SID, "mark": {"name": name}}))

    def clear(self) -> None:
        now = time.monotonic()
        self.clears.append((now, self.position(now)))
        self.clear_offsets.append(len(self.stream))
        self.segments = [(s, min(e, now), p) for s, e, p in self.segments if s < now]
        self.play_end = now
        for name, handle in list(self.pending.items()):  # Twilio echoes the marks it discarded
            handle.cancel()
            self._ack(name)


SID = "MZ00000000000000000000000000000002"


async def phone_call(agent_server, carrier_kwargs: dict, sound: np.ndarray, *, after_s: float = 1.6, done=None):
    """A caller asks for a story, and ``after_s`` into the answer (as the caller hears it) makes ``sound`` (8 kHz).
    ``done(agent, carrier)``: keep the call going until it holds (default: the sound barged in). Returns the carrier,
    the live agent, its assistant messages, and the words the server timed (text, seconds from the first one)."""
    question = mulaw_frames(speech("flite_story_slt.wav", 8000))
    over = mulaw_frames(sound)
    silence = mulaw_frames(np.zeros(int(8000 * FRAME_S), np.float32))[0]
    done = done or (lambda agent, carrier: bool(agent.metrics.turns[1:] and agent.metrics.turns[1].barge_in))
    async with websockets_connect(agent_server) as ws:

        async def send(message: dict) -> None:
            await ws.send(json.dumps(message))

        carrier = FakeTwilio(send, **carrier_kwargs)
        await send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await send(
            {
                "event": "start",
                "streamSid": SID,
                "start": {"streamSid": SID, "callSid": "CA1", "customParameters": {}, "tracks": ["inbound"]},
            }
        )

        async def reader():
            async for raw in ws:
                message = json.loads(raw)
                event = message.get("event")
                if event == "media":
                    carrier.media(message["media"]["payload"])
                elif event == "mark":
                    carrier.mark(message["mark"]["name"])
                elif event == "clear":
                    carrier.clear()

        read_task = asyncio.create_task(reader())
        pacer = Pacer()

        async def media(payload: str) -> None:
            await send({"event": "media", "streamSid": SID, "media": {"track": "inbound", "payload": payload}})
            await pacer.tick()

        for _ in range(10):
            await media(silence)
        for p in question:
            await media(p)
        deadline = time.monotonic() + 40
        while not carrier.segments and time.monotonic() < deadline:
            await media(silence)
        assert carrier.segments, "no bot audio"
        while carrier.position(time.monotonic()) < after_s:  # the caller has heard this much of the answer
            await media(silence)
        agent = next(iter(agent_server.ctx.voice_sessions.values()))
        for p in over:
            await media(p)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not done(agent, carrier):
            await media(silence)
        for _ in range(25):  # let the context settle
            await media(silence)
        said = [m["content"] for m in agent.context.get_messages() if m["role"] == "assistant"]
        timed = list(agent.playback.words)
        read_task.cancel()
        await asyncio.gather(read_task, return_exceptions=True)
    assert said and timed, agent.context.get_messages()
    t0 = timed[0][1]
    return carrier, agent, said, [(w, t - t0) for w, t in timed]


def websockets_connect(agent_server):
    import websockets

    return websockets.connect(f"ws://127.0.0.1:{agent_server.port}/telephony/twilio", max_size=None)


async def test_twilio_context_holds_the_words_the_caller_heard(agent_server):
    """With a carrier that plays 0.5 s behind what the server sent (its jitter buffer) and confirms marks 0.15 s
    late, the context after the barge-in ends where the caller stopped hearing: every word in it had begun playing
    at the far end, and at most the last ~0.3 s heard (the confirmations' delay and one chunk) is missing."""
    barge = speech("flite_table_rms.wav", 8000)
    carrier, _, said, timed = await phone_call(agent_server, {"start_delay_s": 0.5, "ack_delay_s": 0.15}, barge)
    said = said[0].split()
    assert carrier.marks > 10 and carrier.acked > 5, (carrier.marks, carrier.acked)
    heard = carrier.clears[0][1]  # the stream position the caller had heard when the first clear came
    assert 0.5 < heard < 3.0, carrier.clears
    words = [w for w, _ in timed]
    assert words[: len(said)] == said, (said, words)
    offsets = [t for _, t in timed]
    print(
        f"\ncaller heard {heard:.2f} s; context: {len(said)} words, the last starting at {offsets[len(said) - 1]:.2f} s"
        f"; next at {offsets[len(said)]:.2f} s; {carrier.marks} marks, {carrier.acked} acknowledged"
    )
    assert offsets[len(said) - 1] < heard  # every word in the context had begun playing at the far end
    assert len(said) == len(timed) or offsets[len(said)] > heard - 0.35  # and the cut is no more than ~0.3 s early


async def test_twilio_without_acknowledgements_the_clock_overclaims(agent_server):
    """The same call with a carrier that never answers marks: the server falls back on its clock, and the context
    holds words the caller never heard (its jitter buffer's half second): what the marks are for."""
    barge = speech("flite_table_rms.wav", 8000)
    kwargs = {"start_delay_s": 0.5, "ack_delay_s": 0.15, "acks": False}
    carrier, _, said, timed = await phone_call(agent_server, kwargs, barge)
    said = said[0].split()
    heard = carrier.clears[0][1]
    offsets = [t for _, t in timed]
    last = offsets[len(said) - 1]
    print(f"\nno acknowledgements: caller heard {heard:.2f} s; the context's last word starts at {last:.2f} s")
    assert carrier.acked == 0 and offsets[len(said) - 1] > heard


async def test_twilio_backchannel_clears_and_sends_the_rest_again(agent_server):
    """ "All right" 2 s into the answer on the phone: the hold clears Twilio's buffer at once (the caller stops
    hearing the bot), the words are a backchannel, and the server sends the cut audio again from the point the caller
    had confirmed: byte for byte the audio it had sent from there (at most the confirmations' delay and one chunk are
    heard twice), then the rest. No barge-in turn; the context holds the whole answer as one message."""
    from agent.replay.audio import synthesise
    from processors.audio import resample

    audio, rate = synthesise("all right", rate=160)

    def finished(agent, carrier) -> bool:  # the bot played on, and the answer played out at the caller
        return agent.playback.releases > 0 and carrier.arrivals[-1] < time.monotonic() - 1.5

    carrier, agent, said, timed = await phone_call(
        agent_server,
        {"start_delay_s": 0.5, "ack_delay_s": 0.15},
        resample(audio, rate, 8000),
        after_s=2.0,
        done=finished,
    )
    decide = agent.user_aggregator._params.user_turn_strategies.start[0]
    assert len(agent.metrics.turns) == 1 and agent.metrics.turns[0].barge_in is None, (
        decide.decisions,
        [(t.transcript, t.vad_start, t.user_turn_start, t.barge_in is not None) for t in agent.metrics.turns],
        list(agent.playback.events),
    )
    assert (agent.playback.holds, agent.playback.releases, agent.playback.drops) == (1, 1, 0)
    assert len(carrier.clears) == 1
    cut = carrier.clear_offsets[0]  # what had been sent when the hold cleared the caller's buffer
    heard_far = carrier.clears[0][1]
    again = bytes(carrier.stream[cut : cut + 800])  # the first 0.1 s sent after the clear
    start = bytes(carrier.stream[:cut]).find(again)
    assert start >= 0, "the audio after the hold is not the audio sent before it"
    resumed_from = start / 8000
    print(f"\ncaller heard {heard_far:.2f} s when the hold cleared; the server sent again from {resumed_from:.2f} s")
    assert heard_far - 0.35 <= resumed_from <= heard_far + 0.005
    tail = bytes(carrier.stream[cut:])
    assert tail[: cut - start] == bytes(carrier.stream[start:cut])  # the cut part, whole, before anything new
    assert len(said) == 1 and said[0].split() == [w for w, _ in timed]  # one message: every word of the answer
