"""One voice-chat session: a ``build_voice_agent`` pipeline on the process's shared engines, run in the app's loop.

Every entry point (WebRTC ``/api/offer``, ``/ws``, ``/telephony/twilio``) builds its pipecat transport, takes a session
slot, and calls ``run_voice_session``: STT/LLM/TTS services are made from the loaded engines
(``pipelines.engines.session_services``: the STT engine shared or a per-session view as the engine catalogue says,
the shared TTS/LLM), the worker runs until the client goes away, and the turns are recorded in the server metrics
under the entry point's ``kind``. ``SessionEvents`` turns pipeline frames into small JSON events
(transcripts of both sides, listening/thinking/speaking, per-turn voice-to-voice latency) for clients that show them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    TranscriptionFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport

from pipelines.engines import session_services
from pipelines.voice_agent import VoiceAgent, build_voice_agent
from voices.registry import VoiceNotFoundError

from .context import ServerContext

log = logging.getLogger("duplex.server")

EventSink = Callable[[dict[str, Any]], Awaitable[None]]


class SessionEvents(BaseObserver):
    """Pipeline frames -> client events, each frame once (frames are seen at every hop):

    ``{"type": "state", "state": "listening"|"thinking"|"speaking"}``,
    ``{"type": "transcript", "role": "user", "text", "final"}`` (interim and final STT results),
    ``{"type": "transcript", "role": "bot", "text"}`` (each word as its audio is played),
    ``{"type": "interrupted"}`` (barge-in: the client drops audio it still buffers),
    ``{"type": "latency", "turn", "voiceToVoiceMs", "breakdownMs"}`` once a reply starts playing.
    """

    def __init__(self, send: EventSink, *, interruptions: bool = True, **kwargs: Any):
        """``interruptions=False`` when the transport's serializer already tells the client, in order with the audio
        (``/ws``: ``RawPCMSerializer``)."""
        super().__init__(**kwargs)
        self._send = send
        self._interruptions = interruptions
        self._seen: deque[int] = deque(maxlen=512)
        self._seen_set: set[int] = set()
        self.agent: VoiceAgent | None = None
        self._reported: set[int] = set()
        self._tasks: set[asyncio.Task] = set()

    def _first(self, frame: Any) -> bool:
        if frame.id in self._seen_set:
            return False
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(frame.id)
        self._seen_set.add(frame.id)
        return True

    async def _emit(self, event: dict[str, Any]) -> None:
        try:
            await self._send(event)
        except Exception as e:  # a client gone mid-send: the transport notices and ends the session
            log.debug("event not delivered: %s", e)

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        if isinstance(frame, TTSTextFrame):
            # the output transport releases each word as its audio plays; count it there only
            if isinstance(data.source, BaseOutputTransport) and self._first(frame):
                await self._emit({"type": "transcript", "role": "bot", "text": frame.text})
            return
        if not isinstance(
            frame,
            (
                TranscriptionFrame,
                InterimTranscriptionFrame,
                UserStartedSpeakingFrame,
                UserStoppedSpeakingFrame,
                BotStartedSpeakingFrame,
                BotStoppedSpeakingFrame,
                InterruptionFrame,
            ),
        ):
            return
        if not self._first(frame):
            return
        if isinstance(frame, TranscriptionFrame):
            await self._emit({"type": "transcript", "role": "user", "text": frame.text, "final": True})
        elif isinstance(frame, InterimTranscriptionFrame):
            await self._emit({"type": "transcript", "role": "user", "text": frame.text, "final": False})
        elif isinstance(frame, UserStartedSpeakingFrame):
            await self._emit({"type": "state", "state": "listening", "userSpeaking": True})
        elif isinstance(frame, UserStoppedSpeakingFrame):
            await self._emit({"type": "state", "state": "thinking"})
        elif isinstance(frame, BotStartedSpeakingFrame):
            await self._emit({"type": "state", "state": "speaking"})
            self._later(self._report_latencies())
        elif isinstance(frame, BotStoppedSpeakingFrame):
            await self._emit({"type": "state", "state": "listening"})
            self._later(self._report_latencies())
        elif isinstance(frame, InterruptionFrame) and self._interruptions:
            await self._emit({"type": "interrupted"})

    def _later(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report_latencies(self) -> None:
        await asyncio.sleep(0.05)  # the metrics observer sees the same frame in its own task
        if self.agent is None:
            return
        for turn in list(self.agent.metrics.turns):
            v2v = turn.voice_to_voice
            if v2v is None or turn.index in self._reported:
                continue
            self._reported.add(turn.index)
            breakdown = {k: None if v is None else round(v * 1000) for k, v in turn.breakdown().items()}
            await self._emit(
                {"type": "latency", "turn": turn.index, "voiceToVoiceMs": round(v2v * 1000), "breakdownMs": breakdown}
            )

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def resolve_voice(ctx: ServerContext, voice_id: str | None) -> tuple[Any, str, str | None]:
    """(engine voice object, voice id, warning) for ``voice_id``; an unknown or unusable voice falls back to the
    default, with the reason as the warning."""
    engine = ctx.engines.tts
    warning = None
    voice = None
    if voice_id:
        try:
            voice = ctx.registry.get(voice_id)
        except VoiceNotFoundError:
            warning = f"voice {voice_id!r} not found; using the default voice"
    if voice is None:
        voice = ctx.registry.default()
    try:
        return await ctx.voices.load(engine, voice), voice.id, warning
    except Exception as e:
        if voice.id == ctx.registry.default().id:
            raise
        default = ctx.registry.default()
        return (
            await ctx.voices.load(engine, default),
            default.id,
            f"voice {voice.id!r} cannot be used ({e}); using the default voice",
        )


async def build_session_agent(
    ctx: ServerContext,
    transport: BaseTransport,
    *,
    telephony: bool,
    audio_in_sample_rate: int,
    audio_out_sample_rate: int,
    voice: Any,
    events: SessionEvents | None = None,
) -> VoiceAgent:
    """A voice agent on the shared engines (``voice``: the TTS engine's voice object). Runtime voice switches go
    through the server's registry and voice cache."""
    engines = ctx.engines
    stt_engine = engines.session_stt()
    stt, llm, tts = session_services(
        engines,
        ctx.settings,
        stt_engine=stt_engine,
        voice=voice,
        voices=ctx.voices.resolver(ctx.registry, engines.tts),
    )
    agent = build_voice_agent(
        transport,
        ctx.settings,
        stt=stt,
        llm=llm,
        tts=tts,
        telephony=telephony,
        audio_in_sample_rate=audio_in_sample_rate,
        audio_out_sample_rate=audio_out_sample_rate,
        observers=[events] if events is not None else None,
    )
    if events is not None:
        events.agent = agent
    return agent


async def run_voice_session(ctx: ServerContext, agent: VoiceAgent, *, kind: str) -> None:
    """Run the worker to its end (the transport's disconnect handler cancels it) and record the turns."""
    ctx.voice_sessions[id(agent)] = agent
    try:
        await agent.run()
    finally:
        ctx.voice_sessions.pop(id(agent), None)
        for turn in agent.metrics.turns:
            v2v = turn.voice_to_voice
            if v2v is not None:
                ctx.metrics.first_audio.observe(v2v, kind=kind)
            outcome = "interrupted" if turn.barge_in is not None else ("complete" if v2v is not None else "no_reply")
            ctx.metrics.turns.inc(kind=kind, outcome=outcome)
