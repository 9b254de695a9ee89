"""``agent.settings``: the groups composed from the catalogue and the policy, env names, unknown variables."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from pydantic import ValidationError

from agent.settings import ServerSettings, Settings, TTSSettings, unknown_env_vars
from processors.catalogue import CATALOGUE
from voices.registry import SHIPPED_DIR


def test_every_engine_option_is_a_setting_of_its_kind():
    for row in CATALOGUE:
        if row.options is not None:
            group = Settings.model_fields[row.kind].annotation
            assert set(row.options.model_fields) <= set(group.model_fields), (row.kind, row.name)


def test_env_names_reach_engine_options(monkeypatch):
    monkeypatch.setenv("DUPLEX_TTS__MODEL", "/models/qwen")
    monkeypatch.setenv("DUPLEX_TTS__CHUNK_FRAMES", "6")
    monkeypatch.setenv("DUPLEX_STT__MODEL", "x.nemo")
    monkeypatch.setenv("DUPLEX_TURN__STOP_SECS", "0.4")
    monkeypatch.setenv("DUPLEX_LLM__MAX_TOKENS", "33")
    s = Settings()
    assert (s.tts.model, s.tts.chunk_frames, s.stt.model) == ("/models/qwen", 6, "x.nemo")
    assert s.turn.stop_secs == 0.4 and s.llm.max_tokens == 33


def test_a_misspelt_variable_is_reported_not_fatal(monkeypatch):
    for name in [n for n in os.environ if n.startswith("DUPLEX_")]:  # e.g. the test suite's own variables
        monkeypatch.delenv(name)
    monkeypatch.setenv("DUPLEX_TTS__ENGIN", "espeak")
    monkeypatch.setenv("DUPLEX_TURNS__STOP_SECS", "0.3")
    monkeypatch.setenv("DUPLEX_TTS__ENGINE", "espeak")
    monkeypatch.setenv("DUPLEX_CACHE_DIR", "/tmp/x")  # read by the local LLM, not a setting: not reported
    s = Settings()
    assert s.tts.engine == "espeak"
    assert unknown_env_vars() == ["DUPLEX_TTS__ENGIN", "DUPLEX_TURNS__STOP_SECS"]


def test_unknown_keys_and_engines_in_code_are_errors():
    with pytest.raises(ValidationError, match="engin"):
        TTSSettings(engin="espeak")
    with pytest.raises(ValidationError, match="unknown TTS engine 'festival'"):
        TTSSettings(engine="festival")


def test_voice_registry_uses_tts_voice_and_upload_limit(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(SHIPPED_DIR / "default" / "reference.wav", folder / "reference.wav")
    (folder / "manifest.json").write_text(json.dumps({"id": "mine", "name": "Mine", "transcript": "words"}))
    settings = Settings(
        voices_dir=tmp_path, tts=TTSSettings(voice="mine"), server=ServerSettings(max_upload_bytes=4096)
    )
    reg = settings.voice_registry()
    assert reg.user_dir == tmp_path and reg.max_bytes == 4096 and reg.default().id == "mine"
