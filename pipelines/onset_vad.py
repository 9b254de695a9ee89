"""``OnsetSileroVADAnalyzer``: Silero VAD that hears the start of speech sooner and more reliably than pipecat 1.14's
rule, with the same end-of-speech behaviour.

pipecat's ``VADAnalyzer`` declares "speech started" after ``start_secs`` of consecutive 32 ms windows that are both
confident (Silero >= ``confidence``) and loud (volume >= ``min_volume``). Two things in that rule cost barge-ins:

* the volume it tests is exponentially smoothed (factor 0.2 per window) over a 0.4 s loudness window, so from
  silence it takes about seven windows (~220 ms) to reach the default 0.6 even when the first window is loud. Only
  then do the ``start_secs`` windows begin to count: speech is heard ~0.35-0.4 s after its onset;
* one window below the thresholds resets the count. A stop consonant ("Stop." has its closure 0.3 s in), the gap
  between two bursts of a cough, or a window straddling a syllable edge all do that, so the start lands a burst
  later or never: a 0.37 s "Stop." can start no turn at all, and the same cough is heard 0.34-0.86 s after its onset
  depending on where it falls in the 32 ms windows.

Here, while speech is *starting*: the volume tested is the unsmoothed loudness of the last 0.4 s (it reaches its
steady value as fast as the audio does; in steady state it is what the smoothed value converges to), and up to
``bridge_s`` of windows below the thresholds do not reset the count (they do not count towards ``start_secs``
either). Once speaking, every decision is pipecat's: the smoothed volume, ``stop_secs`` of quiet to stop. With
``bridge_s=0`` and ``raw_onset_volume=False`` the analyzer decides exactly as pipecat's (tested window by window).
"""

from __future__ import annotations

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams, VADState


class OnsetSileroVADAnalyzer(SileroVADAnalyzer):
    """Silero VAD with a faster, dip-tolerant start rule (see the module docstring)."""

    def __init__(
        self,
        *,
        sample_rate: int | None = None,
        params: VADParams | None = None,
        bridge_s: float = 0.064,
        raw_onset_volume: bool = True,
    ):
        self.bridge_s = max(0.0, float(bridge_s))
        self.raw_onset_volume = raw_onset_volume
        self._bridge_windows = 0
        self._start_gap = 0  # windows below the thresholds since the last speech window, while starting
        super().__init__(sample_rate=sample_rate, params=params)

    def set_params(self, params: VADParams):
        super().set_params(params)
        window_s = self._vad_frames / self.sample_rate
        self._bridge_windows = int(round(self.bridge_s / window_s))
        self._start_gap = 0

    def _run_analyzer(self, buffer: bytes) -> VADState:
        """pipecat's ``VADAnalyzer._run_analyzer`` with the start rule above (same state fields, so Silero's model
        resets, which read ``_vad_state``, behave as before)."""
        self._vad_buffer += buffer
        size = self._vad_frames_num_bytes
        params = self._params
        while len(self._vad_buffer) >= size:
            window, self._vad_buffer = self._vad_buffer[:size], self._vad_buffer[size:]
            confident = self.voice_confidence(window) >= params.confidence
            volume = self._get_smoothed_volume(window)
            self._prev_volume = volume
            speaking = confident and volume >= params.min_volume
            state = self._vad_state
            if state in (VADState.QUIET, VADState.STARTING):
                onset_volume = max(volume, self._volume_tracker.volume) if self.raw_onset_volume else volume
                if confident and onset_volume >= params.min_volume:
                    if state == VADState.QUIET:
                        self._vad_state = VADState.STARTING
                        self._vad_starting_count = 0
                    self._vad_starting_count += 1
                    self._start_gap = 0
                elif state == VADState.STARTING:
                    self._start_gap += 1
                    if self._start_gap > self._bridge_windows:
                        self._vad_state = VADState.QUIET
                        self._vad_starting_count = 0
                        self._start_gap = 0
            elif speaking:
                if state == VADState.STOPPING:
                    self._vad_state = VADState.SPEAKING
                    self._vad_stopping_count = 0
            elif state == VADState.SPEAKING:
                self._vad_state = VADState.STOPPING
                self._vad_stopping_count = 1
            else:  # STOPPING
                self._vad_stopping_count += 1

        if self._vad_state == VADState.STARTING and self._vad_starting_count >= self._vad_start_frames:
            self._vad_state = VADState.SPEAKING
            self._vad_starting_count = 0
            self._start_gap = 0
        if self._vad_state == VADState.STOPPING and self._vad_stopping_count >= self._vad_stop_frames:
            self._vad_state = VADState.QUIET
            self._vad_stopping_count = 0
        return self._vad_state
