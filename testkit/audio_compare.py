"""Is this audio that audio? Waveform comparisons for tests, tolerant of espeak's call-to-call jitter.

libespeak-ng carries its pitch-flutter phase from one synthesis to the next, so the same text comes out with pitch
cycles a little shifted and a few samples longer or shorter (up to ~1.3 % on a short sentence); its noise sources
(fricatives) differ too. Samples therefore cannot be compared one to one. ``waveform_match`` compares 20 ms windows:
each loud window of the reference against the candidate at the same place, allowing a lag that drifts slowly along
the utterance (the jitter accumulates). A window of voiced speech matches at ~0.95-1.0 normalised correlation; a
sign flip, a reordered chunk, another rate, text or voice does not. Unvoiced (noise) windows match poorly by
nature, hence the verdict on the median and the share of matching windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class WaveformMatch:
    scores: np.ndarray  # best normalised correlation per loud reference window
    length_ratio: float  # len(candidate) / len(reference)
    same_sign: np.ndarray  # per window: the strongest correlation (either sign) within the lag range is positive

    @property
    def polarity(self) -> float:
        """Share of windows whose strongest correlation is positive: ~1 for the same audio, ~0 for it inverted."""
        return float(np.mean(self.same_sign)) if len(self.same_sign) else 0.0

    @property
    def median(self) -> float:
        return float(np.median(self.scores)) if len(self.scores) else 0.0

    def share_above(self, level: float) -> float:
        return float(np.mean(self.scores >= level)) if len(self.scores) else 0.0

    def __str__(self) -> str:
        return (
            f"{len(self.scores)} windows, median correlation {self.median:.3f}, "
            f"{self.share_above(0.8):.0%} >= 0.8, polarity {self.polarity:.2f}, length ratio {self.length_ratio:.4f}"
        )


def waveform_match(
    candidate: np.ndarray,
    reference: np.ndarray,
    sample_rate: int,
    *,
    window_s: float = 0.02,
    max_lag_s: float = 0.0015,
    reacquire_s: float = 0.004,
    floor_db: float = -35.0,
) -> WaveformMatch:
    """Compare ``candidate`` with ``reference`` window by window (see module docstring). Windows quieter than
    ``floor_db`` below the reference's loudest are skipped; the lag searched is ``max_lag_s`` around the lag of the
    previous window when it matched well, else ``reacquire_s``."""
    x = np.asarray(candidate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    n = max(8, int(window_s * sample_rate))
    reach = max(1, int(max_lag_s * sample_rate))
    frames = len(ref) // n
    if frames == 0:
        return WaveformMatch(np.zeros(0), len(x) / max(1, len(ref)), np.zeros(0, dtype=bool))
    rms = np.sqrt(np.mean(ref[: frames * n].reshape(frames, n) ** 2, axis=1))
    loud = rms >= rms.max() * 10 ** (floor_db / 20) if rms.max() > 0 else np.zeros(frames, dtype=bool)
    wide = max(reach, int(reacquire_s * sample_rate))
    scores, polarity = [], []
    drift, locked, previous = 0, False, -2
    for k in np.flatnonzero(loud):
        r = ref[k * n : (k + 1) * n]
        best, best_lag, strongest = -1.0, drift, 0.0
        # after a pause (a sentence end: its length jitter moves everything after it) or a lost match, look wider
        span = reach if locked and k == previous + 1 else wide
        previous = k
        for lag in range(drift - span, drift + span + 1):
            s = k * n + lag
            if s < 0 or s + n > len(x):
                continue
            y = x[s : s + n]
            denom = np.linalg.norm(r) * np.linalg.norm(y)
            c = float(np.dot(r, y) / denom) if denom > 0 else 0.0
            if c > best:
                best, best_lag = c, lag
            if abs(c) > abs(strongest):
                strongest = c
        scores.append(best)
        polarity.append(strongest >= 0)
        locked = best >= 0.9
        if locked:
            drift = best_lag
    return WaveformMatch(np.asarray(scores), len(x) / len(ref), np.asarray(polarity))


def assert_same_waveform(
    candidate: np.ndarray,
    reference: np.ndarray,
    sample_rate: int,
    *,
    length_tolerance: float = 0.015,
    median: float = 0.6,
    polarity: float = 0.8,
) -> WaveformMatch:
    """Same speech, allowing espeak's jitter: lengths within ``length_tolerance`` (another rate is caught here), median
    window correlation at least ``median`` (reordered or foreign audio), windows positively correlated at least
    ``polarity`` (an inverted signal). Measured on espeak repeats at 8-24 kHz and 175-260 words per minute: median
    >= 0.81, polarity >= 0.89; inverted: polarity <= 0.05; 80 ms chunks swapped in pairs: median <= 0.44; 5 % off
    in rate: median <= 0.71 (and the length)."""
    m = waveform_match(candidate, reference, sample_rate)
    assert abs(m.length_ratio - 1.0) <= length_tolerance, f"lengths differ: {m}"
    assert m.polarity >= polarity, f"the signal is inverted: {m}"
    assert m.median >= median, f"not the same waveform: {m}"
    return m
