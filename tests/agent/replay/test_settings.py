"""A replay's settings are the defaults plus the scenario: ``DUPLEX_*`` variables in the shell change nothing unless
the scenario (``inherit_env: true``) or the caller (``duplex replay --inherit-env``) asks for them."""

from __future__ import annotations

from pathlib import Path

from agent.replay import load_scenario, parse_scenario, replay
from agent.replay.agent_settings import scenario_settings, unknown_keys
from agent.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "replay"


def test_defaults_plus_scenario_ignore_the_environment(monkeypatch):
    monkeypatch.setenv("DUPLEX_TURN__STOP_SECS", "2.5")
    monkeypatch.setenv("DUPLEX_TTS__ENGINE", "qwen3")
    monkeypatch.setenv("DUPLEX_VAD__CONFIDENCE", "0.9")
    assert Settings().turn.stop_secs == 2.5  # the environment is really set
    settings = scenario_settings({"tts": {"engine": "espeak"}, "vad": {"start_secs": 0.3}})
    assert type(settings) is Settings
    assert settings.turn.stop_secs == Settings.model_fields["turn"].default.stop_secs == 0.6
    assert settings.tts.engine == "espeak" and settings.vad.start_secs == 0.3 and settings.vad.confidence == 0.7
    inherited = scenario_settings({"tts": {"engine": "espeak"}}, inherit_env=True)
    assert inherited.turn.stop_secs == 2.5 and inherited.vad.confidence == 0.9
    assert inherited.tts.engine == "espeak"  # the scenario still wins over the environment


def test_unknown_keys_follow_the_settings_model():
    assert unknown_keys({"turn": {"echo_gaurd": "on"}, "llm": {"backend": "local"}}) == [
        "settings.turn.echo_gaurd: unknown setting (did you mean 'echo_guard'?)"
    ]
    assert unknown_keys({"zzz": 1}) == [f"settings.zzz: unknown setting (valid: {', '.join(Settings.model_fields)})"]


def test_the_shell_cannot_change_a_replay(monkeypatch):
    """The backchannel example holds because the barge-in hold judges the "yeah" a backchannel.
    ``DUPLEX_TURN__BARGE_IN_MIN_SPEECH_S=0.1`` in the shell (a setting the scenario leaves alone: any sound that long
    interrupts) breaks it only when the replay is asked to inherit the environment: by the scenario's
    ``inherit_env``, which the caller's ``inherit_env`` overrides."""
    monkeypatch.setenv("DUPLEX_TURN__BARGE_IN_MIN_SPEECH_S", "0.1")
    scenario = load_scenario(EXAMPLES / "backchannel.yaml")
    clean = replay(scenario, check=False)
    assert clean.failures == [] and clean.settings_source == "defaults + scenario"
    assert clean.settings.turn.barge_in_min_speech_s == 2.0
    data = scenario.model_dump(exclude={"base_dir"}, exclude_unset=True)
    inheriting = parse_scenario({**data, "inherit_env": True}, base_dir=scenario.base_dir)
    leaky = replay(inheriting, check=False)
    assert leaky.settings.turn.barge_in_min_speech_s == 0.1
    assert leaky.settings_source == "environment (DUPLEX_TURN__BARGE_IN_MIN_SPEECH_S) + scenario"
    assert any(f.startswith("none of 2 alternatives held") for f in leaky.failures), leaky.failures
    assert replay(inheriting, check=False, inherit_env=False).failures == []
