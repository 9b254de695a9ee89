"""Speech clips for tests, benchmarks and example scenarios, resolved from the installed package.

The committed clips (``testkit/audio``) are synthetic speech made with Debian's flite and espeak-ng (``manifest.json``
and ``espeak_manifest.json`` give the text and voice of each; ``scripts/make_*_fixtures`` regenerate them). Real
human speech, for what synthetic speech cannot show (pauses, backchannels, natural prosody), ships inside the
``gradio`` wheel that ``qwen-tts`` installs; ``human_clip`` reads it in place (it is not copied into this
repository).
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from processors.audio import STT_SAMPLE_RATE, load_audio, resample

CLIP_DIR = Path(__file__).resolve().parent / "audio"
CLIP_SCHEME = "clip:"  # scenario files: ``audio: clip:flite_weather_kal16.wav``
HUMAN_SCHEME = "human:"  # scenario files: ``audio: human:cate_blanch.mp3`` (a recording in the gradio wheel)
MANIFESTS = ("manifest.json", "espeak_manifest.json")


class ClipNotFoundError(FileNotFoundError):
    """A clip name that is not among the committed clips (or the gradio recordings)."""


def clip_path(name: str) -> Path:
    """The file of a committed clip (``"flite_weather_kal16.wav"``)."""
    path = (CLIP_DIR / name).resolve()
    if path.parent != CLIP_DIR or not path.is_file():
        known = ", ".join(sorted(p.name for p in CLIP_DIR.glob("*.wav")))
        raise ClipNotFoundError(f"no clip {name!r}; clips: {known}")
    return path


def human_clip_dir() -> Path | None:
    """Where the gradio wheel keeps its sample recordings, or None when gradio is not installed."""
    spec = importlib.util.find_spec("gradio")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "media_assets" / "audio"
    return folder if folder.is_dir() else None


def human_clip_path(name: str) -> Path:
    """A recording of a real person from the gradio wheel (``cate_blanch.mp3``, ``heath_ledger.mp3``, ...)."""
    folder = human_clip_dir()
    if folder is None:
        raise ClipNotFoundError("real human speech clips come from the gradio package, which is not installed")
    path = (folder / name).resolve()
    if path.parent != folder.resolve() or not path.is_file():
        known = ", ".join(sorted(p.name for p in folder.iterdir()))
        raise ClipNotFoundError(f"no recording {name!r} in {folder}; recordings: {known}")
    return path


def resolve(ref: str) -> Path | None:
    """``clip:NAME`` / ``human:NAME`` -> the file; anything else -> None (an ordinary path)."""
    if ref.startswith(CLIP_SCHEME):
        return clip_path(ref[len(CLIP_SCHEME) :])
    if ref.startswith(HUMAN_SCHEME):
        return human_clip_path(ref[len(HUMAN_SCHEME) :])
    return None


@lru_cache(maxsize=64)
def _speech(name: str, rate: int) -> np.ndarray:
    path = resolve(name) or clip_path(name)
    decoded = load_audio(path)
    return resample(decoded.samples, decoded.sample_rate, rate)


def speech(name: str, rate: int = STT_SAMPLE_RATE) -> np.ndarray:
    """A clip as float32 mono at ``rate`` (a fresh copy; ``name`` may carry the ``human:`` scheme)."""
    return _speech(name, rate).copy()


@lru_cache(maxsize=1)
def _manifest() -> dict[str, dict]:
    entries: dict[str, dict] = {}
    for manifest in MANIFESTS:
        path = CLIP_DIR / manifest
        if path.exists():
            for entry in json.loads(path.read_text()):
                entries[entry["file"]] = entry
    return entries


def cough_like(rate: int = STT_SAMPLE_RATE) -> np.ndarray:
    """A voiced, cough-like burst ("kh-uh kh-uh", ~1.2 s) made with espeak-ng phonemes: Silero VAD hears it as voice
    activity, yet it holds no word (an STT may still make words of it: tests using it script the STT)."""
    from processors.espeak_tts import EspeakEngine

    engine = EspeakEngine()
    audio = np.concatenate(list(engine.stream("[[kh'Uh kh'Uh]]", engine.create_voice("English"), "English")))
    return resample(audio, engine.sample_rate, rate)


def clip_names(prefix: str = "") -> list[str]:
    """The committed clips listed in the manifests whose names start with ``prefix`` (``"flite_"``)."""
    return sorted(name for name in _manifest() if name.startswith(prefix))


def manifest_entry(name: str) -> dict:
    """What the manifest says of a committed clip: ``text``, ``voice``, ``seconds``, ``source``."""
    try:
        return dict(_manifest()[name])
    except KeyError:
        raise ClipNotFoundError(f"no manifest entry for {name!r}") from None


def clip_text(name: str) -> str:
    """The words spoken in a committed clip."""
    return manifest_entry(name)["text"]
