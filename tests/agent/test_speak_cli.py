"""``duplex speak``: the real command in a subprocess, streaming into a WAV with espeak and the tiny Qwen3-TTS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]


def speak(*args: str, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "speak", *args],
        cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_espeak_to_a_wav(tmp_path):
    from processors.espeak_tts import EspeakEngine

    out = tmp_path / "hello.wav"
    text = "Hello from the command line."
    r = speak(text, "--engine", "espeak", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "first audio after" in r.stderr and f"wrote {out}" in r.stderr
    audio, rate = sf.read(out, dtype="float32")
    engine = EspeakEngine()
    reference = engine.synthesize(text)
    assert rate == engine.sample_rate
    assert abs(len(audio) - len(reference)) <= 0.015 * len(reference) + 50  # espeak's own call-to-call jitter
    assert np.sqrt(np.mean(audio**2)) > 0.01


def test_qwen3_from_a_local_model_and_text_from_stdin(tmp_path, tiny_qwen_dir):
    out = tmp_path / "qwen.wav"
    r = speak("-", "--engine", "qwen3", "--tts-model", str(tiny_qwen_dir), "--device", "cpu", "--out", str(out),
              stdin="Hi there.")  # fmt: skip
    assert r.returncode == 0, r.stderr
    info = sf.info(out)
    assert info.samplerate == 24000 and info.frames > 0 and info.frames % 1920 == 0  # whole 80 ms codec frames
    assert "engine qwen3, voice default" in r.stderr


def speak_here(capsys, *args: str) -> tuple[int, str]:
    """The command's ``main`` in this process (same code path, without a second interpreter's start-up)."""
    from agent.cli import main

    code = main(["speak", *args])
    return code, capsys.readouterr().err


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    out = str(tmp_path / "x.wav")
    code, err = speak_here(capsys, "Hello.", "--engine", "espeak", "--voice", "nobody", "--out", out)
    assert code == 2 and "voice 'nobody' not found" in err
    code, err = speak_here(capsys, "   ", "--engine", "espeak", "--out", out)
    assert code == 2 and "text is empty" in err
    code, err = speak_here(capsys, "Hello.", "--engine", "espeak", "--language", "Klingon", "--out", out)
    assert code == 2 and "Klingon" in err
    code, err = speak_here(capsys, "Hello.", "--engine", "espeak", "--out", str(tmp_path / "no" / "x.wav"))
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "x.wav").exists()


def test_a_model_that_cannot_be_had(tmp_path, capsys):
    out = str(tmp_path / "x.wav")
    code, err = speak_here(
        capsys, "Hello.", "--engine", "qwen3", "--tts-model", str(tmp_path / "missing"), "--out", out
    )
    assert code == 1 and "cannot load the TTS engine 'qwen3'" in err
