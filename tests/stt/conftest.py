"""Fixtures for the STT tests: a tiny random Parakeet .nemo (built once per session, offline) and engines.
Helpers and the speech-fixture key words live in ``stt_testutil``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from .stt_testutil import SPEECH_DIR

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_nemo(tmp_path_factory) -> Path:
    from processors.parakeet_stt.random_model import build_tiny_parakeet_nemo

    return build_tiny_parakeet_nemo(tmp_path_factory.mktemp("parakeet") / "tiny-parakeet-tdt.nemo", seed=0)


@pytest.fixture(scope="session")
def parakeet_engine(tiny_nemo):
    from processors.parakeet_stt import ParakeetEngine

    return ParakeetEngine.from_pretrained(tiny_nemo, device="cpu")


@pytest.fixture(scope="session")
def speech_manifest() -> dict[str, dict]:
    entries = json.loads((SPEECH_DIR / "manifest.json").read_text())
    return {e["file"]: e for e in entries if e["file"].startswith("flite_")}
