"""LocalLLMService in pipecat 1.14 pipelines (pipecat.tests.utils.run_test) on the real bundled SmolLM2."""

from __future__ import annotations

import time

from pipecat.frames.frames import (
    ErrorFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.observers.base_observer import BaseObserver, FrameProcessed
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import SleepFrame, run_test

from processors.llm import LLMOptions as LLMSettings
from processors.llm import LocalLLMService, chat_messages, create_llm_service

QUESTION = "What is the capital of France?"
STORY = "Write a long story about a dragon who learns to bake bread."


def _kinds(frames, *types):
    return [f for f in frames if isinstance(f, types)]


def test_chat_messages_system_prompt_rules():
    context = [
        {"role": "system", "content": "from the context"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": "42", "tool_call_id": "1"},
        {"role": "assistant", "content": "  "},
    ]
    assert chat_messages(context, None) == [
        {"role": "system", "content": "from the context"},
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "(tool result) 42"},
    ]
    assert chat_messages(context, "from settings")[:2] == [
        {"role": "system", "content": "from settings"},
        {"role": "user", "content": "hi"},
    ]


async def test_context_frame_streams_start_text_end_with_ttfb(engine, llm_threads):
    llm = LocalLLMService(engine=engine, settings=LocalLLMService.Settings(temperature=0, max_tokens=40))
    context = LLMContext(messages=[{"role": "user", "content": QUESTION}])
    down, up = await run_test(
        llm, frames_to_send=[LLMContextFrame(context)], pipeline_params=PipelineParams(enable_metrics=True)
    )
    flow = _kinds(down, LLMFullResponseStartFrame, LLMTextFrame, LLMFullResponseEndFrame)
    assert isinstance(flow[0], LLMFullResponseStartFrame) and isinstance(flow[-1], LLMFullResponseEndFrame)
    texts = [f.text for f in flow[1:-1]]
    assert len(texts) >= 5 and all(isinstance(f, LLMTextFrame) for f in flow[1:-1])
    # exactly what the engine says for the same messages (greedy), so nothing is lost or reordered on the way
    assert "".join(texts) == engine.generate_text(
        [{"role": "user", "content": QUESTION}], temperature=0, max_new_tokens=40
    )
    # pipecat reports a zero TTFB for every service at start; ours is the non-zero one
    ttfb = [d.value for m in _kinds(down, MetricsFrame) for d in m.data if isinstance(d, TTFBMetricsData) and d.value]
    assert len(ttfb) == 1 and 0 < ttfb[0] < 5
    print(f"\nservice TTFB {ttfb[0] * 1000:.0f} ms; answer: {''.join(texts)!r}")
    assert _kinds(up, ErrorFrame) == []
    assert llm_threads() == []


async def test_system_instruction_setting_reaches_the_model(engine):
    question = [{"role": "user", "content": "Who are you?"}]
    pirate = "You are a pirate. Always answer like a pirate."
    llm = LocalLLMService(
        engine=engine, settings=LocalLLMService.Settings(system_instruction=pirate, temperature=0, max_tokens=15)
    )
    down, _ = await run_test(llm, frames_to_send=[LLMContextFrame(LLMContext(messages=list(question)))])
    answer = "".join(f.text for f in _kinds(down, LLMTextFrame))
    with_prompt = engine.generate_text(
        [{"role": "system", "content": pirate}, *question], temperature=0, max_new_tokens=15
    )
    without = engine.generate_text(question, temperature=0, max_new_tokens=15)
    assert answer == with_prompt and answer != without


class _InterruptionClock(BaseObserver):
    def __init__(self, llm):
        super().__init__()
        self._llm = llm
        self.at: float | None = None

    async def on_process_frame(self, data: FrameProcessed):
        if data.processor is self._llm and isinstance(data.frame, InterruptionFrame) and self.at is None:
            self.at = time.perf_counter()


async def test_interruption_stops_generation_within_a_token(engine, llm_threads):
    llm = LocalLLMService(engine=engine, settings=LocalLLMService.Settings(temperature=0, max_tokens=300))
    clock = _InterruptionClock(llm)
    context = LLMContext(messages=[{"role": "user", "content": STORY}])
    down, up = await run_test(
        llm,
        frames_to_send=[LLMContextFrame(context), SleepFrame(1.5), InterruptionFrame(), SleepFrame(0.3)],
        observers=[clock],
    )
    stats = engine.last_stats
    texts = _kinds(down, LLMTextFrame)
    latency = stats.ended_at - clock.at
    print(f"\ninterruption -> generation thread gone: {latency * 1000:.0f} ms after {stats.new_tokens} tokens")
    assert 0 < len(texts) < 100 and stats.cancelled and stats.new_tokens < 120  # all 300 would take ~15 s or more
    assert latency < 2.0  # one token: ~60 ms on an idle core, several hundred ms on a busy shared machine
    assert _kinds(down, InterruptionFrame)
    assert _kinds(up, ErrorFrame) == []
    assert llm_threads() == []
    assert engine._lock.acquire(timeout=2.0)  # free for the next turn
    engine._lock.release()


async def test_greeting_from_a_system_prompt_alone(engine):
    llm = LocalLLMService(
        engine=engine,
        settings=LocalLLMService.Settings(
            system_instruction="Greet the user in one sentence.", temperature=0, max_tokens=20
        ),
    )
    down, up = await run_test(llm, frames_to_send=[LLMContextFrame(LLMContext(messages=[]))])
    assert "".join(f.text for f in _kinds(down, LLMTextFrame)).strip()
    assert _kinds(up, ErrorFrame) == []


async def test_unloadable_model_gives_a_clear_error_frame(tmp_path):
    settings = LLMSettings(backend="local", model=str(tmp_path / "no-such-model"))
    llm = create_llm_service(settings)
    down, up = await run_test(
        llm, frames_to_send=[LLMContextFrame(LLMContext(messages=[{"role": "user", "content": "hi"}]))]
    )
    errors = _kinds(up, ErrorFrame)
    assert len(errors) == 1 and "Local LLM unavailable" in errors[0].error and "no-such-model" in errors[0].error
    assert _kinds(down, LLMTextFrame) == []


async def test_run_inference_answers_out_of_band(engine):
    llm = LocalLLMService(engine=engine, settings=LocalLLMService.Settings(temperature=0, max_tokens=40))
    context = LLMContext(messages=[{"role": "user", "content": QUESTION}])
    answer = await llm.run_inference(context, max_tokens=8, system_instruction="Answer in one word.")
    expected = engine.generate_text(
        [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": QUESTION}],
        temperature=0,
        max_new_tokens=8,
    )
    assert answer == expected and answer
