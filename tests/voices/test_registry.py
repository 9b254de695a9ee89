"""VoiceRegistry on real folders: default resolution, bad folders skipped, atomic writes, thread-safety."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf

import voices.registry as registry_module
from processors.tts_engine import VoiceError
from voices.registry import (
    SHIPPED_DIR,
    InvalidVoiceAudioError,
    InvalidVoiceError,
    VoiceExistsError,
    VoiceManifest,
    VoiceNotFoundError,
    VoiceReadOnlyError,
    VoiceRegistry,
    slugify,
)

CLIP = SHIPPED_DIR / "default" / "reference.wav"


def make_voice_folder(root: Path, voice_id: str, **manifest) -> Path:
    folder = root / voice_id
    folder.mkdir(parents=True)
    shutil.copy(CLIP, folder / "reference.wav")
    data = {"id": voice_id, "name": voice_id.title(), "transcript": "words", **manifest}
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


def test_shipped_default_voice():
    reg = VoiceRegistry(None)
    voice = reg.default()
    assert voice.id == "default" and voice.shipped
    info = sf.info(str(voice.reference_path))
    assert (info.samplerate, info.channels) == (24_000, 1) and 5.0 <= info.duration <= 8.0
    m = voice.manifest
    assert m.transcript and not m.x_vector_only and m.is_default and "flite" in m.source.lower()
    assert "Carnegie Mellon" in m.licence and (voice.folder / "LICENCE.md").is_file()
    spec = voice.spec()
    assert spec.reference_audio == voice.reference_path and spec.transcript == m.transcript
    assert spec.cache_dir == voice.folder / "cache" and spec.x_vector_only is False


def test_default_resolution_order(tmp_path):
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    make_voice_folder(shipped, "alpha")
    make_voice_folder(shipped, "beta", default=True)
    assert VoiceRegistry(user, shipped_dir=shipped).default().id == "beta"  # flagged shipped voice
    make_voice_folder(user, "mine", default=True)
    assert VoiceRegistry(user, shipped_dir=shipped).default().id == "mine"  # flagged user voice wins
    assert VoiceRegistry(user, shipped_dir=shipped, default_voice="alpha").default().id == "alpha"  # env wins
    assert VoiceRegistry(user, shipped_dir=shipped, default_voice="gone").default().id == "mine"  # unknown: ignored
    (user / "mine" / "manifest.json").write_text(json.dumps({"id": "mine", "name": "Mine", "default": False}))
    (shipped / "beta" / "manifest.json").write_text(json.dumps({"id": "beta", "name": "Beta"}))
    assert VoiceRegistry(user, shipped_dir=shipped).default().id == "alpha"  # nothing flagged: first by id
    with pytest.raises(VoiceNotFoundError, match="no voices"):
        VoiceRegistry(tmp_path / "none", shipped_dir=tmp_path / "none2").default()


def test_bad_folders_are_skipped_with_a_warning(tmp_path, caplog):
    user = tmp_path / "user"
    make_voice_folder(user, "good")
    bad_json = make_voice_folder(user, "badjson")
    (bad_json / "manifest.json").write_text("{nope")
    make_voice_folder(user, "mismatch", id="other")
    missing = make_voice_folder(user, "noref")
    (missing / "reference.wav").unlink()
    make_voice_folder(user, "extra", colour="blue")
    make_voice_folder(user, "default")  # the shipped id is taken
    make_voice_folder(user, "escape", reference="../good/reference.wav")
    (user / ".tmp-half-written").mkdir()
    (user / "loose-file.txt").write_text("x")
    with caplog.at_level("WARNING", logger="duplex.voices"):
        reg = VoiceRegistry(user)
        ids = [v.id for v in reg.list()]
        reg.list()  # warned once per folder, not on every scan
    assert ids == ["default", "good"]
    text = caplog.text
    for fragment in (
        "badjson",
        "differs from the folder name",
        "reference file",
        "colour",
        "is taken by",
        "plain file name",
    ):
        assert fragment in text, fragment
    assert text.count("badjson") == 1


def test_add_validates_and_stores(tmp_path):
    reg = VoiceRegistry(tmp_path / "user")
    voice = reg.add(CLIP, name="Ada's Voice", transcript="  Some words.  ", language="French")
    assert voice.id == "ada-s-voice" and not voice.shipped
    assert voice.manifest.transcript == "Some words." and voice.manifest.language == "French"
    assert voice.manifest.source == "user upload"
    assert reg.add(CLIP, name="Ada's Voice").id == "ada-s-voice-2"
    assert reg.get("ada-s-voice-2").spec().x_vector_only is True  # no transcript
    with pytest.raises(VoiceExistsError):
        reg.add(CLIP, name="x", voice_id="ada-s-voice")
    with pytest.raises(VoiceExistsError, match="shipped"):
        reg.add(CLIP, name="x", voice_id="default")
    for bad in ("", "UPPER", "-lead", "trail-", "a/b", "..", "x" * 65, "sp ace"):
        with pytest.raises(InvalidVoiceError, match="invalid voice id"):
            reg.add(CLIP, name="x", voice_id=bad)
    with pytest.raises(InvalidVoiceAudioError, match="larger than"):
        VoiceRegistry(tmp_path / "small", max_bytes=1000).add(CLIP, name="x")
    assert isinstance(InvalidVoiceError("x"), VoiceError)
    assert sorted(p.name for p in (tmp_path / "user").iterdir()) == ["ada-s-voice", "ada-s-voice-2"]


def test_slugify():
    assert slugify("Ada's Voice") == "ada-s-voice"
    assert slugify("  Ünïcode ✓ ") == "n-code"
    assert slugify("!!!") == "voice"
    assert len(slugify("a" * 200)) == 64


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    user = tmp_path / "user"
    reg = VoiceRegistry(user)

    def broken(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry_module, "_write_file", broken)  # the WAV is written, then the manifest fails
    with pytest.raises(OSError, match="No space"):
        reg.add(CLIP, name="x", voice_id="doomed")
    assert list(user.iterdir()) == []
    with pytest.raises(VoiceNotFoundError):
        reg.get("doomed")


def test_delete(tmp_path):
    reg = VoiceRegistry(tmp_path / "user")
    reg.add(CLIP, name="Temp", voice_id="temp")
    reg.delete("temp")
    assert list((tmp_path / "user").iterdir()) == []
    with pytest.raises(VoiceNotFoundError, match="'temp' not found"):
        reg.delete("temp")
    with pytest.raises(VoiceReadOnlyError):
        reg.delete("default")
    assert (SHIPPED_DIR / "default" / "manifest.json").is_file()


def test_set_default(tmp_path):
    reg = VoiceRegistry(tmp_path / "user")
    reg.add(CLIP, name="A", voice_id="a", default=True)
    reg.add(CLIP, name="B", voice_id="b", default=True)  # the new flag clears the old one
    assert reg.default().id == "b" and not reg.get("a").manifest.is_default
    reg.set_default("a")
    assert reg.default().id == "a" and not reg.get("b").manifest.is_default
    reg.set_default("default")  # a shipped voice: the user flags are cleared
    assert reg.default().id == "default"
    assert not any(v.manifest.is_default for v in reg.list() if not v.shipped)


def test_stale_temp_folders_are_swept(tmp_path):
    user = tmp_path / "user"
    (user / ".trash-x-1234").mkdir(parents=True)
    old = user / ".tmp-y-abcd"
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = user / ".tmp-z-abcd"  # maybe another process writing right now: kept
    fresh.mkdir()
    VoiceRegistry(user)
    assert sorted(p.name for p in user.iterdir()) == [".tmp-z-abcd"]


def test_concurrent_adds(tmp_path):
    reg = VoiceRegistry(tmp_path / "user")
    results: list = []

    def add(explicit: bool) -> None:
        try:
            results.append(reg.add(CLIP, name="Same Name", voice_id="same" if explicit else None).id)
        except VoiceExistsError:
            results.append("exists")

    threads = [threading.Thread(target=add, args=(i % 2 == 0,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("same") == 1 and results.count("exists") == 3
    derived = sorted(r for r in results if r.startswith("same-name"))
    assert derived == ["same-name", "same-name-2", "same-name-3", "same-name-4"]
    assert len(reg.list()) == 1 + 5


def test_manifest_round_trip():
    m = VoiceManifest(id="v", name="V", default=True, transcript="")
    data = json.loads(m.to_json())
    assert data["default"] is True and data["transcript"] is None and "is_default" not in data
    assert VoiceManifest.model_validate(data) == m
