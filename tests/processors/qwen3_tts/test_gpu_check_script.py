"""``scripts/gpu-check.sh`` and the GPU benchmark skip cleanly without CUDA: exit 0, one clear line, nothing run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even where there is one


def test_gpu_check_skips_cleanly_without_cuda():
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh")], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines() == [
        "gpu-check: skipped: no CUDA GPU visible to torch (nothing to check on this machine)"
    ]


def test_gpu_benchmark_measures_nothing_without_cuda():
    res = subprocess.run([sys.executable, "-m", "benchmarks.tts_gpu"], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "no CUDA GPU" in res.stdout and "|" not in res.stdout  # no table
