"""Random Qwen3-TTS model directories for the tests here, built offline once per session (~0.4 s each)."""

from __future__ import annotations

import os

import pytest

# Everything is local: make any attempt to reach the Hugging Face Hub fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    """The "tiny" preset, seed 0: stops by itself (``random_model.expected_frames``)."""
    from processors.qwen3_tts.random_model import build_random_model_dir

    return build_random_model_dir(tmp_path_factory.mktemp("qwen3_tts") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen_never_eos_dir(tmp_path_factory):
    """Same weights as ``tiny_qwen_dir`` except that the talker never emits codec EOS (runaway-guard tests)."""
    from processors.qwen3_tts.random_model import build_random_model_dir

    return build_random_model_dir(tmp_path_factory.mktemp("qwen3_tts") / "tiny_never_eos", "tiny", seed=0,
                                  never_eos=True)  # fmt: skip
