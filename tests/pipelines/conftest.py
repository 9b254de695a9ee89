"""Fixtures for whole-pipeline tests: scripted engines where words must be known, and a runner that drives a
``VoiceAgent`` over a ``VirtualTransport`` until a condition holds.

Scripted parts (used only where a test needs to know the words; each test says which parts are scripted):

* ``ScriptedSTTEngine`` — a plain ``STTEngine`` returning prepared transcripts in order (a cough -> "").
* ``ScriptedLLMService`` — a pipecat LLM service streaming prepared replies word by word at a set token rate;
  cancelled by interruptions like any pipecat LLM service (the task is cancelled mid-stream).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from agent.replay.clock import LoopClock, VirtualTimeLoop, patched_wall_clock
from agent.replay.scripted import ScriptedLLMService, ScriptedSTTEngine  # noqa: F401  (tests import them from here)
from processors.audio import load_audio
from testkit.clips import clip_text as manifest_text  # noqa: F401  (tests import them from here)
from testkit.clips import cough_like, speech  # noqa: F401


def on_virtual_time(test):
    """Run an async whole-pipeline test on the replays' virtual clock (``agent.replay.clock``): the transport's audio,
    pipecat's timers and the scripted LLM's pacing on a clock that stands still while anything computes (VAD, STT,
    TTS), so where a sound falls among the 20 ms frames, and what the turn logic makes of it, depends on the audio
    alone and not on the machine's load. The test builds its agent with ``clock=virtual_clock()``."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        loop = VirtualTimeLoop()
        try:
            with patched_wall_clock(loop):
                return loop.run_until_complete(test(*args, **kwargs))
        finally:
            loop.close()

    return run


def virtual_clock() -> LoopClock:
    """The pipeline clock for ``on_virtual_time`` tests (the loop's time, so recorded times are virtual too)."""
    return LoopClock()


async def run_agent(agent, transport, until: Callable[[], bool], *, timeout: float, settle_s: float = 0.0) -> None:
    """``agent.run`` until ``until()`` holds (then ``settle_s`` more); a timeout names the transport's timeline."""
    try:
        await agent.run(until, timeout=timeout, settle_s=settle_s, poll_s=0.01)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; timeline: {transport.timeline_text()}") from None


@pytest.fixture(scope="session")
def tiny_qwen_tts(tiny_qwen_dir):
    """A factory of ``Qwen3TTSService``s over one tiny random Qwen3-TTS model (real code path, noise-like audio,
    ~4x faster than real time here) cloning the shipped default voice."""
    import json

    from processors.qwen3_tts import Qwen3TTSEngine, Qwen3TTSService

    engine = Qwen3TTSEngine.from_pretrained(str(tiny_qwen_dir), device="cpu")
    from voices.registry import SHIPPED_DIR

    voices = SHIPPED_DIR / "default"
    manifest = json.loads((voices / "manifest.json").read_text())
    ref = load_audio(voices / manifest["reference"])
    voice = engine.create_voice((ref.samples, ref.sample_rate), manifest.get("transcript"))
    return lambda: Qwen3TTSService(engine=engine, voice=voice)
