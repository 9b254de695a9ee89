"""One voice-chat session: a ``build_voice_agent`` pipeline on the process's shared engines, run in the app's loop.

Every entry point (WebRTC ``/api/offer``, ``/ws``, ``/telephony/twilio``) builds its pipecat transport, takes a session
slot, and calls ``run_voice_session``: STT/LLM/TTS services are made from the loaded engines
(``pipelines.engines.session_services``: the STT engine shared or fresh per session as the engine catalogue says,
the shared TTS/LLM), the worker runs until the client goes away, and the turns are recorded in the server metrics
under the entry point's ``kind``. ``SessionEvents`` turns pipeline frames into small JSON events
(transcripts of both sides, listening/thinking/speaking, per-turn voice-to-voice latency) for clients that show them.
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
    ErrorFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMMessagesAppendFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport

from pipelines.engines import session_services
from pipelines.voice_agent import VoiceAgent, build_voice_agent
from processors.threads import run_in_thread
from processors.tts_engine import UnsupportedLanguageError
from processors.tts_engine import resolve_language as check_language
from voices.registry import VoiceNotFoundError

from .chat_protocol import TextMessage, parse_chat_message
from .context import ServerContext
from .protocol import ProtocolError

log = logging.getLogger("duplex.server")

EventSink = Callable[[dict[str, Any]], Awaitable[None]]
APOLOGY = "Sorry, something went wrong on my side. Could you say that again?"
APOLOGY_GAP_S = 10.0


class SessionEvents(BaseObserver):
    """Pipeline frames -> client events, each frame once (frames are seen at every hop):

    ``{"type": "state", "state": "listening"|"thinking"|"speaking"}``,
    ``{"type": "transcript", "role": "user", "text", "final"}`` (interim and final STT results),
    ``{"type": "transcript", "role": "bot", "text"}`` (each word as its audio is played),
    ``{"type": "interrupted"}`` (barge-in: the client drops audio it still buffers),
    ``{"type": "latency", "turn", "voiceToVoiceMs", "breakdownMs"}`` once a reply starts playing,
    ``{"type": "error", "code", "message", "recoverable": true}`` when a step of the pipeline fails (``error``).
    A state is sent once: not again while it holds.
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
        self._last_state: dict[str, Any] | None = None

    def _first(self, frame: Any) -> bool:
        """True the first time a frame is seen. A broadcast frame travels as two siblings (one upstream, one
        downstream, different ids): the sibling counts as the same frame."""
        if frame.id in self._seen_set:
            return False
        for frame_id in (frame.id, getattr(frame, "broadcast_sibling_id", None)):
            if frame_id is None or frame_id in self._seen_set:
                continue
            if len(self._seen) == self._seen.maxlen:
                self._seen_set.discard(self._seen[0])
            self._seen.append(frame_id)
            self._seen_set.add(frame_id)
        return True

    async def _state(self, state: str, **extra: Any) -> None:
        """A state event, unless it repeats the last one."""
        event = {"type": "state", "state": state, **extra}
        if event == self._last_state:
            return
        self._last_state = event
        await self._emit(event)

    async def error(self, code: str, message: str) -> None:
        """A failure the person should see (``{"type": "error", "code", "message", "recoverable": true}``); the
        session goes on listening."""
        await self._emit({"type": "error", "code": code, "message": message, "recoverable": True})
        await self._state("listening")

    async def typed(self, text: str) -> None:
        """A typed turn was taken: shown like a final transcript, and the bot is thinking."""
        await self._emit({"type": "transcript", "role": "user", "text": text, "final": True, "typed": True})
        await self._state("thinking")

    async def emit(self, event: dict[str, Any]) -> None:
        """Send one event to the client (errors of a client gone mid-send are left to the transport)."""
        await self._emit(event)

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
            await self._state("listening", userSpeaking=True)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            await self._state("thinking")
        elif isinstance(frame, BotStartedSpeakingFrame):
            await self._state("speaking")
            self._later(self._report_latencies())
        elif isinstance(frame, BotStoppedSpeakingFrame):
            await self._state("listening")
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


def resolve_language(ctx: ServerContext, language: str | None) -> tuple[str | None, str | None]:
    """(language for the session or None for the server's default, warning) for a client's ``?language=``."""
    if not language:
        return None, None
    engine = ctx.engines.tts
    try:
        return check_language(language, engine.languages if engine is not None else (), allow_auto=False), None
    except UnsupportedLanguageError as e:
        return None, f"{e}; using {ctx.settings.tts.language}"


def session_options(ctx: ServerContext, language: str | None) -> Any:
    """The server's settings for one session: in another language the TTS speaks it and the LLM is asked to answer
    in it (the STT engines recognise English)."""
    settings = ctx.settings
    if not language or language == settings.tts.language:
        return settings
    tts = settings.tts.model_copy(update={"language": language})
    prompt = f"{settings.llm.system_prompt} Always answer in {language}."
    llm = settings.llm.model_copy(update={"system_prompt": prompt})
    return settings.model_copy(update={"tts": tts, "llm": llm})


def watch_errors(
    ctx: ServerContext, agent: VoiceAgent, *, kind: str, events: SessionEvents | None, apology: str | None
) -> None:
    """Pipeline errors reach the person: an ``error`` event to clients that show events, and for callers who only
    hear (telephony) a short spoken ``apology``, at most one per ``APOLOGY_GAP_S``. The session goes on."""
    stages = {id(agent.stt): "STT", id(agent.llm): "LLM", id(agent.tts): "TTS"}
    last_apology = [float("-inf")]

    @agent.worker.event_handler("on_pipeline_error")
    async def _on_error(_worker: Any, frame: ErrorFrame) -> None:
        stage = stages.get(id(frame.processor))
        code = f"{stage}_ERROR" if stage else "PIPELINE_ERROR"
        message = f"the {stage} step failed: {frame.error}" if stage else f"the pipeline failed: {frame.error}"
        log.warning("%s session: %s", kind, message)
        ctx.metrics.errors.inc(kind=kind, code=code)
        if events is not None:
            await events.error(code, message)
        now = time.monotonic()
        if apology and stage != "TTS" and now - last_apology[0] > APOLOGY_GAP_S:
            last_apology[0] = now
            await agent.worker.queue_frame(TTSSpeakFrame(apology))


async def take_text_turn(agent: VoiceAgent, text: str, events: SessionEvents | None = None) -> None:
    """A typed turn through the same pipeline as speech, after the STT: the bot stops if it is speaking (its context
    keeps the words it played), the text joins the context as the user's, and the LLM answers aloud."""
    await agent.worker.queue_frame(InterruptionFrame())
    await agent.worker.flush_pipeline(timeout=2.0)  # the interrupted reply is committed before the new turn
    if events is not None:
        await events.typed(text)
    await agent.worker.queue_frame(LLMMessagesAppendFrame(messages=[{"role": "user", "content": text}], run_llm=True))


class SessionInput:
    """A client's JSON messages for one session (``agent.server.chat_protocol``): typed turns and stop.

    Typed turns are taken one at a time, in order, by one task off the transport's receive loop (the flush in
    ``take_text_turn`` waits for frames that loop may have to deliver); at most ``MAX_PENDING_TEXT`` wait, and a
    client that types faster than that gets ``RATE_LIMITED`` errors, not a task per message. ``close`` at the end
    of the session."""

    MAX_PENDING_TEXT = 4

    def __init__(self, ctx: ServerContext, agent: VoiceAgent, events: SessionEvents | None, *, kind: str):
        self._ctx, self._agent, self._events, self._kind = ctx, agent, events, kind
        self._pending: asyncio.Queue[str] = asyncio.Queue(self.MAX_PENDING_TEXT)
        self._taker: asyncio.Task | None = None

    async def _refuse(self, code: str, message: str) -> None:
        self._ctx.metrics.errors.inc(kind=self._kind, code=code)
        if self._events is not None:
            await self._events.emit({"type": "error", "code": code, "message": message, "recoverable": True})

    async def handle(self, raw: str | bytes | dict[str, Any]) -> None:
        try:
            message = parse_chat_message(raw, max_text_chars=self._ctx.settings.server.max_text_chars)
        except ProtocolError as e:
            return await self._refuse(e.code, e.message)
        if isinstance(message, TextMessage):
            try:
                self._pending.put_nowait(message.text)
            except asyncio.QueueFull:
                return await self._refuse("RATE_LIMITED", "typed turns come faster than the bot can take them")
            if self._taker is None or self._taker.done():
                self._taker = asyncio.get_running_loop().create_task(self._take_turns())
        else:
            await self._agent.worker.cancel()

    async def _take_turns(self) -> None:
        while not self._pending.empty():
            await take_text_turn(self._agent, self._pending.get_nowait(), self._events)

    def close(self) -> None:
        if self._taker is not None:
            self._taker.cancel()


async def build_session_agent(
    ctx: ServerContext,
    transport: BaseTransport,
    *,
    telephony: bool,
    audio_in_sample_rate: int,
    audio_out_sample_rate: int,
    voice: Any,
    events: BaseObserver | None = None,
    rtvi: bool = False,
    language: str | None = None,
    kind: str = "voice",
    playout: Any = None,
) -> VoiceAgent:
    """A voice agent on the shared engines (``voice``: the TTS engine's voice object). Runtime voice switches go
    through the server's registry and voice cache. ``events``: an observer of the session's frames
    (``SessionEvents`` or a protocol's own; its ``agent`` attribute is set). ``rtvi``: speak pipecat's client protocol
    (RTVI) on the transport's message channel: pipecat's ``RTVIProcessor`` heads the pipeline and its
    ``RTVIObserver`` reports transcripts, speaking state, metrics and errors; the turn policy is unchanged.
    ``language``: the session's (``resolve_language``), None for the server's. Pipeline errors reach the client
    (``watch_errors``; telephony callers hear an apology). ``playout``: the client's playback acknowledgements
    (``pipelines.playback.RemotePlayout``; phone carriers' marks)."""
    engines = ctx.engines
    options = session_options(ctx, language)
    stt_engine = await run_in_thread(engines.session_stt, name="duplex-stt-load")
    stt, llm, tts = session_services(
        engines,
        options,
        stt_engine=stt_engine,
        voice=voice,
        voices=ctx.voices.resolver(ctx.registry, engines.tts),
    )
    agent = build_voice_agent(
        transport,
        options,
        stt=stt,
        llm=llm,
        tts=tts,
        telephony=telephony,
        audio_in_sample_rate=audio_in_sample_rate,
        audio_out_sample_rate=audio_out_sample_rate,
        observers=[events] if events is not None else None,
        enable_rtvi=rtvi,
        playout=playout,
    )
    if events is not None:
        events.agent = agent
    watch_errors(ctx, agent, kind=kind, events=events, apology=APOLOGY if telephony else None)
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
