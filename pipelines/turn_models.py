"""The turn policy's models (Silero VAD, Smart Turn v3), loaded once per process and shared by every session.

Both are ONNX models that ship in the pipecat wheel, and an onnxruntime ``InferenceSession`` holds no conversation
state: Silero's recurrent state and audio context live in numpy arrays beside the session, and Smart Turn judges each
utterance on its own. pipecat's analyzers build a new ``InferenceSession`` each, so a server that built them per
voice session loaded the model again for every session, and the C allocator did not give that memory back when
the session ended (with the per-session STT decoder, 80-90 MB of RSS per session, for good). Here each session
gets its own analyzer (its own state, its own worker thread, as pipecat's) over the one shared session;
onnxruntime runs a session from several threads at once safely.
"""

from __future__ import annotations

import threading
from typing import Any

from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams
from pipecat.utils.env import env_truthy

_lock = threading.Lock()
_sessions: dict[str, Any] = {}


def _shared(name: str, build: Any) -> Any:
    with _lock:
        if name not in _sessions:
            _sessions[name] = build()
        return _sessions[name]


def _data_file(package: str, name: str) -> str:
    from importlib import resources

    return str(resources.files(package).joinpath(name))


def silero_session() -> Any:
    """The process's Silero VAD ``InferenceSession`` (built as pipecat builds it: CPU, one thread)."""

    def build() -> Any:
        return SileroOnnxModel(_data_file("pipecat.audio.vad.data", "silero_vad.onnx"), force_onnx_cpu=True).session

    return _shared("silero", build)


def smart_turn_session() -> Any:
    """The process's Smart Turn v3 ``InferenceSession`` (built as ``LocalSmartTurnAnalyzerV3`` builds it)."""

    def build() -> Any:
        return LocalSmartTurnAnalyzerV3()._session

    return _shared("smart_turn", build)


class _SileroState(SileroOnnxModel):
    """One stream's Silero state (recurrent state, context) over the shared session."""

    def __init__(self, session: Any):  # not super().__init__: that would load another copy of the model
        self.session = session
        self.reset_states()
        self.sample_rates = [8000, 16000]


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    """pipecat's ``SileroVADAnalyzer`` (same thresholds, state resets and worker thread) on the shared model."""

    def __init__(self, *, sample_rate: int | None = None, params: VADParams | None = None):
        # what SileroVADAnalyzer.__init__ sets, without its model load (tests compare the two objects' attributes)
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._model = _SileroState(silero_session())
        self._windows_since_reset = 0
        self._low_confidence_windows = 0


class SharedSmartTurnAnalyzer(LocalSmartTurnAnalyzerV3):
    """pipecat's ``LocalSmartTurnAnalyzerV3`` (bundled model, same features and verdicts) on the shared model."""

    def __init__(self, **kwargs: Any):
        # what LocalSmartTurnAnalyzerV3.__init__ sets, without its model load
        BaseSmartTurn.__init__(self, **kwargs)
        self._log_data = env_truthy("PIPECAT_SMART_TURN_LOG_DATA", default=False)
        self._session = smart_turn_session()
