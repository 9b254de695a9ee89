"""``examples/tts_standalone.py`` as a user runs it: without the model it says why in one line (no tracebacks, no
flags it does not have) and exits 1; with a model directory it streams a sentence into a WAV."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf

from testkit.clips import clip_path, clip_text

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "examples" / "tts_standalone.py"


def run(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(PYTHONPATH=str(ROOT), HF_HOME=str(tmp / "hf-empty"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=300
    )


def test_without_the_model_one_clear_line(tmp_path):
    out = run("--ref", str(clip_path("flite_meeting_rms.wav")), "--text", "Hello.", tmp=tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("tts_standalone: the Qwen3-TTS model Qwen/Qwen3-TTS-12Hz-0.6B-Base is not in the"), lines
    assert "HF_HUB_OFFLINE" in lines[0] and "--tts" not in lines[0]


def test_with_a_model_directory(tiny_qwen_dir, tmp_path):
    clip = "flite_meeting_rms.wav"
    out = run(
        "--model", str(tiny_qwen_dir), "--ref", str(clip_path(clip)), "--ref-text", clip_text(clip),
        "--text", "Hello there.", "--device", "cpu", "--out", "hello.wav", tmp=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "first audio after" in out.stdout
    audio, rate = sf.read(tmp_path / "hello.wav")
    assert rate == 24000 and len(audio) > 0
