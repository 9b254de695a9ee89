"""``build_voice_agent``: the full-duplex voice pipeline, ready to run.

    [transport.input(), stt, user aggregator (Silero VAD + turn strategies), llm, ReplyResumer, tts,
     IdleInterruptionFilter, transport.output(), assistant aggregator]

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
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.transports.base_transport import BaseTransport

from agent.settings import Settings
from processors.audio import STT_SAMPLE_RATE, TTS_SAMPLE_RATE

from .interruptions import IdleInterruptionFilter, ReplyResumer
from .metrics import VoiceMetricsObserver
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
    settings: Settings | None = None,
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
    **worker_kwargs: Any,
) -> VoiceAgent:
    """Build the pipeline and its worker for one session.

    ``stt`` / ``llm`` / ``tts``: services to use; missing ones are created from ``settings`` (``create_stt_service``,
    ``create_llm_service``, ``create_tts_service``). ``telephony``: whether the client is a phone call (decides
    ``echo_guard=auto``); None = detect from the transport's serializer / input rate. ``clock``: the pipeline clock
    (a virtual clock for replays). Other keyword arguments go to ``PipelineWorker``.
    """
    settings = settings or Settings()
    if telephony is None:
        telephony = is_telephony_transport(transport)
    policy = resolve_policy(settings, telephony=telephony)
    logger.info(
        f"voice agent: stop={policy.stop_strategy} barge_in={policy.barge_in} echo_guard={policy.echo_guard} "
        f"false_interruption_timeout={policy.false_interruption_timeout_s} telephony={policy.telephony}"
    )

    if stt is None:
        from .engines import create_stt_service

        stt = create_stt_service(settings)
    if llm is None:
        from processors.llm import create_llm_service

        llm = create_llm_service(settings.llm)
    if tts is None:
        from .engines import create_tts_service

        tts = create_tts_service(settings)

    context = context or LLMContext()
    # a segmented STT reports each segment's processing time, words or not: false-interruption decisions wait for it
    stt_name = stt.name if isinstance(stt, SegmentedSTTService) else None
    user, assistant = LLMContextAggregatorPair(
        context, user_params=build_user_aggregator_params(settings, policy, stt_name=stt_name)
    )
    resumer = ReplyResumer(context=context, assistant=assistant) if policy.false_interruption_recovery else None
    interruption_filter = IdleInterruptionFilter()

    processors: list[FrameProcessor] = [transport.input(), stt, user, llm]
    if resumer is not None:
        processors.append(resumer)
    processors += [tts, interruption_filter, transport.output(), assistant]
    pipeline = Pipeline(processors)

    metrics = VoiceMetricsObserver()
    metrics.bind(user=user, stt=stt, llm=llm, resumer=resumer, tts=tts, output=transport.output())
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
    )
