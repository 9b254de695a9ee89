"""One voice-chat session: a ``build_voice_agent`` pipeline on the process's shared engines, run in the app's loop.

Every entry point (WebRTC ``/api/offer``, ``/ws``, ``/telephony/twilio``) builds its pipecat transport, takes a session
slot, and calls ``run_voice_session``: STT/LLM/TTS services are made from the loaded engines
(``pipelines.engines.session_services``: the STT engine shared or a per-session view as the engine catalogue says,
the shared TTS/LLM), the worker runs until the client goes away, and the turns are recorded in the server metrics
under the entry point's ``kind``. ``SessionEvents`` turns pipeline frames into small JSON events
(transcripts of both sides, listening/thinking/speaking, per-turn voice-to-voice latency) for clients that show them.
A watchdog ends sessions whose client sends no audio (``SessionActivity``: the connect and idle timeouts), and
``SessionEnd`` is how the server ends a session itself (watchdog, a client's ``stop``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InputAudioRawFrame,
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


async def run_voice_session(
    ctx: ServerContext, agent: VoiceAgent, *, kind: str, end: SessionEnd | None = None
) -> SessionEnd:
    """Run the worker to its end (the transport's disconnect handler cancels it, or ``end``) and record the turns.

    An idle watchdog ends a session whose client sends no audio (``SessionActivity``); ``end`` (made here when not
    given) says why the server ended it, and sends the client its last event first when given a sink."""
    end = end if end is not None else SessionEnd()
    end.bind(agent, ctx, kind)
    activity = SessionActivity()
    agent.worker.add_observer(activity)
    watchdog = asyncio.create_task(_watch(ctx, activity, end), name="duplex-voice-watchdog")
    ctx.voice_sessions[id(agent)] = agent
    try:
        await agent.run()
    finally:
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
        await end.settle()
        ctx.voice_sessions.pop(id(agent), None)
        for turn in agent.metrics.turns:
            v2v = turn.voice_to_voice
            if v2v is not None:
                ctx.metrics.first_audio.observe(v2v, kind=kind)
            outcome = "interrupted" if turn.barge_in is not None else ("complete" if v2v is not None else "no_reply")
            ctx.metrics.turns.inc(kind=kind, outcome=outcome)
    return end


# --- ending a session: idle watchdog, client stop --------------------------------------------------------------------
class SessionActivity(BaseObserver):
    """When a voice session last heard its client, and whether the bot is speaking: what the idle watchdog reads.

    Idle means no audio frames at all. A client on an open call sends audio all the time, silence included (Twilio,
    Telnyx and Plivo stream 20 ms of media whether anyone speaks or not; browsers send their microphone, muted or
    not); a quiet user is not idle. No frames means the client stopped streaming or never started (a WebRTC peer
    that never connects, a script that opened the socket and went away without closing it)."""

    def __init__(self) -> None:
        super().__init__(observe_every_push=False)
        self.started = self.last_bot = time.monotonic()
        self.last_audio: float | None = None
        self.bot_speaking = False

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        if isinstance(frame, InputAudioRawFrame):
            self.last_audio = time.monotonic()
        elif isinstance(frame, BotStartedSpeakingFrame):
            self.bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self.bot_speaking, self.last_bot = False, time.monotonic()

    def pause(self, seconds: float) -> None:
        """The server's own event loop was busy for ``seconds`` (a model holding the GIL): no client was idle then."""
        self.started += seconds
        self.last_bot += seconds
        if self.last_audio is not None:
            self.last_audio += seconds

    def idle(self, now: float, connect_s: float, idle_s: float) -> str | None:
        """Why the session is idle at ``now`` (None: it is not). The bot speaking is never idle."""
        if self.bot_speaking:
            return None
        if self.last_audio is None:
            return f"no audio from the client within {connect_s:g} s" if now - self.started > connect_s else None
        if now - max(self.last_audio, self.last_bot) > idle_s:
            return f"no audio from the client for {idle_s:g} s"
        return None


class SessionEnd:
    """How the server ends a voice session from outside its pipeline, once: ``end_soon(code, event)`` (the idle
    watchdog, a client's ``stop``) sends ``event`` through ``send`` (when the transport has a channel for events),
    then cancels the worker; the transport then closes the connection. ``code`` stays set for the route."""

    def __init__(self, send: EventSink | None = None):
        self.send = send
        self.code: str | None = None
        self.message: str | None = None
        self._agent: VoiceAgent | None = None
        self._ctx: ServerContext | None = None
        self._kind = ""
        self._task: asyncio.Task | None = None

    def bind(self, agent: VoiceAgent, ctx: ServerContext, kind: str) -> None:
        self._agent, self._ctx, self._kind = agent, ctx, kind

    def end_soon(self, code: str, message: str, event: dict[str, Any] | None = None) -> None:
        """End the session (in its own task: callers may run inside the pipeline's transport)."""
        if self.code is not None or self._agent is None:
            return
        self.code, self.message = code, message
        if code == "TIMEOUT" and self._ctx is not None:
            self._ctx.metrics.errors.inc(kind=self._kind, code=code)
        log.info("%s session ended by the server: %s (%s)", self._kind, code, message)
        self._task = asyncio.get_running_loop().create_task(self._end(event), name="duplex-voice-end")

    async def _end(self, event: dict[str, Any] | None) -> None:
        if event is not None and self.send is not None:
            try:
                await asyncio.wait_for(self.send(event), 2)
            except Exception as e:  # a client that cannot take the event is ended all the same
                log.debug("last event not delivered: %r", e)
        assert self._agent is not None
        await self._agent.worker.cancel()

    async def settle(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


WATCHDOG_TICK_S = 0.25


async def _watch(ctx: ServerContext, activity: SessionActivity, end: SessionEnd) -> None:
    server = ctx.settings.server
    previous = time.monotonic()
    while end.code is None:
        await asyncio.sleep(WATCHDOG_TICK_S)
        now = time.monotonic()
        late = now - previous - WATCHDOG_TICK_S
        previous = now
        if late > 0.5:  # the loop stalled: frames may wait unread in the socket, observers behind
            activity.pause(late)
            continue
        why = activity.idle(now, server.voice_connect_timeout_s, server.voice_idle_timeout_s)
        if why is not None:
            end.end_soon("TIMEOUT", why, {"type": "error", "code": "TIMEOUT", "message": f"{why}; closing"})
