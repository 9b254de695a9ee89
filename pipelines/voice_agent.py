"""``build_voice_agent``: the full-duplex voice pipeline, ready to run.

    [transport.input(), stt, user aggregator (Silero VAD + turn strategies), llm, ReplyResumer, tts,
     IdleInterruptionFilter, PlaybackClock, transport.output(), assistant aggregator]

Speech over the bot first *holds* it (``turn.barge_in_hold``): ``pipelines.playback.PlaybackHold`` pauses the
output transport's audio between two chunks and ``PlaybackClock`` keeps the word timestamps in step with the
held audio, until the turn strategy has judged the sound: an interruption (below) or a resume where it stopped.

Barge-in is pipecat's interruption, wired so nothing is lost: a user-turn start broadcasts ``InterruptionFrame``;
the LLM's task is cancelled (its stream closed, the local engine's cancel event set); the TTS cancels ``run_tts``
and ``EngineTTSService`` sets its worker's cancel event, so the engine thread stops within one step (one codec frame
for Qwen3-TTS, one 60 ms buffer for espeak); the output transport drops its queued audio, finishing at most the
40 ms chunk being written; and the TTS word timestamps (``TTSTextFrame``s the output releases as their audio plays)
mean the assistant aggregator commits exactly the words that were played. The turn and interruption policy is in
``pipelines.policy``; the processors pipecat lacks are in ``pipelines.interruptions``; per-turn latency metrics in
``pipelines.metrics`` (``agent.metrics.turns``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger
from pipecat.clocks.base_clock import BaseClock
from pipecat.observers.base_observer import BaseObserver
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMAssistantAggregator,
    LLMContextAggregatorPair,
    LLMUserAggregator,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_transport import BaseTransport
from pipecat.workers.runner import WorkerRunner

from processors.audio import STT_SAMPLE_RATE, TTS_SAMPLE_RATE
from processors.segmented_stt import EngineSTTService

from .endpointing import UnheardTurnMerger, UnplayedReplyGate
from .interruptions import IdleInterruptionFilter, ReplyResumer
from .metrics import VoiceMetricsObserver
from .options import AgentOptions
from .playback import PlaybackClock, PlaybackHold, RemotePlayout
from .policy import TurnPolicy, build_user_aggregator_params, is_telephony_transport, resolve_policy


@dataclass
class VoiceAgent:
    """A built voice agent: run ``worker`` (``WorkerRunner().run(worker)`` or a test runner); read ``metrics.turns``."""

    worker: PipelineWorker
    pipeline: Pipeline
    context: LLMContext
    user_aggregator: LLMUserAggregator
    assistant_aggregator: LLMAssistantAggregator
    stt: FrameProcessor
    llm: FrameProcessor
    tts: FrameProcessor
    resumer: ReplyResumer | None
    interruption_filter: IdleInterruptionFilter
    metrics: VoiceMetricsObserver
    policy: TurnPolicy
    playback: PlaybackHold | None = None  # the output's hold (``turn.barge_in_hold``) and far-end playout

    async def run(
        self,
        until: Callable[[], bool] | None = None,
        *,
        timeout: float | None = None,
        settle_s: float = 0.0,
        poll_s: float = 0.02,
    ) -> None:
        """Run the worker, then stop it and close the metrics.

        Without ``until`` it runs until the worker ends (a transport's disconnect handler cancels it). With ``until``
        it stops ``settle_s`` after ``until()`` first holds; ``TimeoutError`` after ``timeout`` seconds (on the
        loop's clock) without it, ``RuntimeError`` if the pipeline ends on its own first."""
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        task = asyncio.create_task(runner.run(), name="voice-agent-runner")
        try:
            if until is None:
                await task
                return
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            while not until():
                if task.done():
                    task.result()
                    raise RuntimeError("the pipeline stopped on its own")
                if deadline is not None and loop.time() > deadline:
                    raise TimeoutError(f"the condition did not hold within {timeout:g} s")
                await asyncio.sleep(poll_s)
            if settle_s:
                await asyncio.sleep(settle_s)
        finally:
            await self.stop(task)

    async def stop(self, task: asyncio.Task | None = None, timeout: float = 10.0) -> None:
        """Cancel the worker unless ``task`` (its runner) already ended, wait up to ``timeout`` for the runner, then
        close the metrics so the last turn is recorded."""
        if task is None or not task.done():
            await self.worker.cancel()
            if task is not None:
                try:
                    await asyncio.wait_for(task, timeout)
                except TimeoutError:
                    task.cancel()
        self.metrics.finish()


def build_voice_agent(
    transport: BaseTransport,
    options: AgentOptions | None = None,
    *,
    stt: FrameProcessor | None = None,
    llm: FrameProcessor | None = None,
    tts: FrameProcessor | None = None,
    observers: list[BaseObserver] | None = None,
    context: LLMContext | None = None,
    telephony: bool | None = None,
    audio_in_sample_rate: int = STT_SAMPLE_RATE,
    audio_out_sample_rate: int = TTS_SAMPLE_RATE,
    clock: BaseClock | None = None,
    playout: RemotePlayout | None = None,
    **worker_kwargs: Any,
) -> VoiceAgent:
    """Build the pipeline and its worker for one session.

    ``stt`` / ``llm`` / ``tts``: services to use; missing ones are created from ``options`` with the engine catalogue
    (``pipelines.engines.create_services``). ``telephony``: whether the client is a phone call (decides
    ``echo_guard=auto``); None = detect from the transport's serializer / input rate. ``clock``: the pipeline clock
    (a virtual clock for replays). ``playout``: the far end's playback acknowledgements, for a transport whose
    client reports them (a phone carrier's marks, ``agent.server.telephony_marks``): the context then holds the words
    the far end confirmed playing. Other keyword arguments go to ``PipelineWorker``.
    """
    options = options or AgentOptions()
    if telephony is None:
        telephony = is_telephony_transport(transport)
    policy = resolve_policy(options.turn, telephony=telephony)
    logger.info(
        f"voice agent: stop={policy.stop_strategy} barge_in={policy.barge_in} hold={policy.barge_in_hold} "
        f"echo_guard={policy.echo_guard} "
        f"false_interruption_timeout={policy.false_interruption_timeout_s} telephony={policy.telephony}"
    )

    if stt is None or llm is None or tts is None:
        from .engines import create_services

        stt, llm, tts = create_services(options, stt=stt, llm=llm, tts=tts)

    context = context or LLMContext()
    # EngineSTTService says when each segment is transcribed, words or not: turn-end, barge-in and
    # false-interruption decisions wait for it
    stt_reports_segments = isinstance(stt, EngineSTTService)
    stt_name = stt.name if stt_reports_segments else None
    output = transport.output()
    playback = None
    if policy.barge_in_hold or playout is not None:
        playback = PlaybackHold(playout=playout)
        playback.install(output)
    hold = playback if policy.barge_in_hold else None
    if hold is not None and isinstance(stt, EngineSTTService):
        # once the hold has stopped the bot's audio the STT decodes as the user speaks: the barge-in is decided on
        # those words (not before: a decoder that holds the GIL would delay the stop itself)
        paused_stt = stt
        hold.add_listener(lambda: paused_stt.bot_audio_paused(hold.audio_stopped))
    user_params = build_user_aggregator_params(
        options.vad,
        options.turn,
        policy,
        stt_name=stt_name,
        stt_reports_segments=stt_reports_segments,
        hold=hold,
    )
    user, assistant = LLMContextAggregatorPair(context, user_params=user_params)
    resumer = ReplyResumer(context=context, assistant=assistant) if policy.false_interruption_recovery else None
    interruption_filter = IdleInterruptionFilter()
    unheard = unplayed = None
    if options.turn.drop_unplayed_replies or options.turn.late_transcripts == "join":
        unheard = UnheardTurnMerger(context=context)
    if options.turn.drop_unplayed_replies:
        unplayed = UnplayedReplyGate()

    processors: list[FrameProcessor] = [transport.input(), stt, user, *([unheard] if unheard else []), llm]
    if resumer is not None:
        processors.append(resumer)
    processors += [tts, *([unplayed] if unplayed else []), interruption_filter]
    if playback is not None:
        processors.append(PlaybackClock(playback))
    processors += [output, assistant]
    pipeline = Pipeline(processors)

    metrics = VoiceMetricsObserver()
    metrics.bind(user=user, stt=stt, llm=llm, resumer=resumer, tts=tts, output=output, playback=playback)
    worker_kwargs.setdefault("enable_rtvi", False)
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=audio_in_sample_rate,
            audio_out_sample_rate=audio_out_sample_rate,
            enable_metrics=True,
        ),
        observers=[metrics, *(observers or [])],
        clock=clock,
        **worker_kwargs,
    )
    return VoiceAgent(
        worker=worker,
        pipeline=pipeline,
        context=context,
        user_aggregator=user,
        assistant_aggregator=assistant,
        stt=stt,
        llm=llm,
        tts=tts,
        resumer=resumer,
        interruption_filter=interruption_filter,
        metrics=metrics,
        policy=policy,
        playback=playback,
    )
