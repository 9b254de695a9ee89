"""The one place that works around the torchaudio import problem.

PyPI's torchaudio (2.11, the newest) is linked against CUDA; beside the CPU build of torch it raises
``OSError`` on import. Two packages we use import it without needing it:

* ``qwen_tts/__init__`` imports the 25 Hz tokenizer, whose ``vq.speech_vq`` module imports
  ``torchaudio.compliance.kaldi``. Duplex only uses the 12 Hz model, so we put a placeholder for that
  private module (and nothing else) in ``sys.modules`` before the first ``import qwen_tts``.
* NeMo's squim metrics import torchaudio and catch only ``ModuleNotFoundError``. When torchaudio is
  installed but broken we mark it absent (``sys.modules["torchaudio"] = None``), which turns the import
  into the ``ModuleNotFoundError`` NeMo handles. We never fake torchaudio itself.

When a working torchaudio is present both steps are skipped, so this is safe if it reappears.
``scripts/install.sh`` uninstalls torchaudio; this module covers environments that still have it.
"""

from __future__ import annotations

import importlib
import sys
import types

_QWEN_25HZ_VQ = "qwen_tts.core.tokenizer_25hz.vq.speech_vq"
_state: dict[str, bool] = {}


def torchaudio_usable() -> bool:
    """True when ``import torchaudio`` works here (cached)."""
    if "usable" not in _state:
        if sys.modules.get("torchaudio", False) is None:
            _state["usable"] = False
        else:
            try:
                importlib.import_module("torchaudio")
                _state["usable"] = True
            except (ImportError, OSError):
                # A broken install: make every later import fail the way callers expect.
                sys.modules["torchaudio"] = None  # type: ignore[assignment]
                _state["usable"] = False
    return _state["usable"]


def ensure_qwen_tts_importable() -> None:
    """Make ``import qwen_tts`` work without torchaudio (12 Hz model only)."""
    if torchaudio_usable() or _QWEN_25HZ_VQ in sys.modules:
        return
    placeholder = types.ModuleType(_QWEN_25HZ_VQ)
    placeholder.__doc__ = "Placeholder: the 25 Hz Qwen3-TTS tokenizer needs torchaudio, which is not usable here."

    class _Unavailable:  # the two names modeling_qwen3_tts_tokenizer_v1 imports
        def __init__(self, *args, **kwargs):
            raise ImportError("The 25 Hz Qwen3-TTS tokenizer needs a working torchaudio; Duplex uses the 12 Hz model.")

    placeholder.WhisperEncoderVQ = _Unavailable
    placeholder.XVectorExtractor = _Unavailable
    sys.modules[_QWEN_25HZ_VQ] = placeholder


def ensure_nemo_importable() -> None:
    """Make ``import nemo.collections.asr`` survive a broken torchaudio."""
    torchaudio_usable()
