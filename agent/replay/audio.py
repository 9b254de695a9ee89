"""The audio a scenario feeds: utterances decoded from files or synthesised offline with espeak-ng, and noise beds
(files, or coloured noise generated from a seed). Everything returns float32 mono and its sample rate."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from processors.audio import AudioError, load_audio

NOISE_RATE = 16000  # generated noise beds
NOISE_LOOP_S = 10.0  # generated noise is periodic with this period, so it loops without a seam


class ScenarioAudioError(ValueError):
    """Audio a scenario names that cannot be used (not audio, empty, a voice espeak does not have)."""


def decode(path: Path, what: str) -> tuple[np.ndarray, int]:
    try:
        decoded = load_audio(path)
    except AudioError as e:
        reason = str(e).split(" (tried")[0]  # the decoders' own messages are noise to a scenario author
        raise ScenarioAudioError(f"{what} is not usable audio: {reason}") from None
    return decoded.samples, decoded.sample_rate


@functools.lru_cache(maxsize=64)
def _synthesise(text: str, voice: str, variant: str | None, rate: int) -> tuple[np.ndarray, int]:
    from processors.espeak_tts import EspeakEngine

    engine = EspeakEngine()
    v = engine.create_voice(voice, variant)
    chunks = list(engine.stream(text, v, voice, rate=rate))
    return np.concatenate(chunks).astype(np.float32), engine.sample_rate


def synthesise(text: str, *, voice: str = "English", variant: str | None = None, rate: int = 170):
    """``text`` spoken by espeak-ng (memoised per process: the library's output for the same text drifts slightly
    from call to call, see docs/replay.md, and a scenario's user audio must not)."""
    from processors.tts_engine import TTSError

    try:
        audio, sample_rate = _synthesise(text, voice, variant, rate)
    except (TTSError, ValueError) as e:
        raise ScenarioAudioError(f"cannot synthesise {text[:40]!r} with espeak: {e}") from None
    return audio.copy(), sample_rate


def coloured_noise(color: str, seconds: float = NOISE_LOOP_S, rate: int = NOISE_RATE, seed: int = 0) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2) noise at 0 dBFS RMS, shaped in the frequency domain, so it is
    periodic: looping it has no seam. The same ``seed`` gives the same samples."""
    n = int(round(seconds * rate))
    rng = np.random.default_rng(seed)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum = rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[color]
    shape = np.zeros_like(freqs)
    shape[1:] = freqs[1:] ** -exponent
    noise = np.fft.irfft(spectrum * shape, n)
    return (noise / np.sqrt(np.mean(noise**2))).astype(np.float32)


def rms_dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    return 20 * np.log10(rms) if rms > 0 else float("-inf")
