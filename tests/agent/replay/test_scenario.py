"""The scenario schema on its own (no pipeline): every problem reported at once, one line each, with the field and
the closest valid name; settings checked against ``Settings``; audio decoded at load; composed utterances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.replay import ScenarioError, load_scenario, parse_scenario
from testkit.clips import speech

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "replay"


def errors_of(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    if "\n" not in message:  # one problem: one line
        assert message.startswith(f"{path}: "), message
        return [message[len(f"{path}: ") :]]
    first, *lines = message.split("\n")
    assert first == f"{path}: invalid scenario:" and len(lines) > 1, message
    return [line.strip() for line in lines]


def test_unknown_settings_are_errors_with_the_closest_name(tmp_path):
    lines = errors_of(
        "settings: {stt: {engin: pocketsphinx}, turns: {stop_secs: 0.3}}\nturns:\n  - text: hi\n", tmp_path
    )
    assert lines == [
        "settings.stt.engin: unknown setting (did you mean 'engine'?)",
        "settings.turns: unknown setting (did you mean 'turn'?)",
    ]


def test_bad_setting_values_name_the_field(tmp_path):
    lines = errors_of("settings: {turn: {stop_secs: -1}, vad: {start_secs: soon}}\nturns:\n  - text: hi\n", tmp_path)
    assert "settings.turn.stop_secs: Input should be greater than or equal to 0" in lines
    assert any(line.startswith("settings.vad.start_secs: Input should be a valid number") for line in lines)


def test_every_error_at_once_one_line_each(tmp_path):
    """Field errors, unknown keys (with suggestions) and unknown turn references come together, each on one line."""
    text = (
        "noize: 1\n"
        "turns:\n"
        "  - name: q\n    text: hi\n    after: bot_said_hello\n    offest_ms: 3\n"
        "expect:\n"
        "  - turn: question\n    answered: true\n"
        "  - any_of:\n      - {turn: qq, answered: true}\n"
    )
    lines = errors_of(text, tmp_path)
    assert "noize: unknown field (did you mean 'noise'?)" in lines
    assert "turns.0.offest_ms: unknown field (did you mean 'offset_ms'?)" in lines
    assert any(line.startswith("turns.0.after: Input should be 'start', 'previous_end'") for line in lines)
    assert "expect.0.turn: no turn 'question' (names: q; or an index 0-0)" in lines
    assert "expect.1.any_of.0.turn: no turn 'qq' (did you mean 'q'? names: q; or an index 0-0)" in lines
    assert len(lines) == 5, lines


def test_reference_errors_alone(tmp_path):
    lines = errors_of("turns:\n  - text: hi\nexpect:\n  - turn: 3\n    answered: true\n", tmp_path)
    assert lines == ["expect.0.turn: no turn 3 (names: none; or an index 0-0)"]


def test_per_turn_checks_need_a_turn_own_or_inherited(tmp_path):
    text = (
        "turns:\n  - {name: q, text: hi}\n"
        "expect:\n"
        "  - interrupted: true\n"
        "  - any_of: [{answered: true}, {turn: q, all_of: [{resumed: true}]}]\n"
        "  - turn: q\n    any_of: [{answered: true}, {count: {vad_start: 1}}]\n"  # inherited: valid
    )
    assert errors_of(text, tmp_path) == [
        "expect.0: interrupted needs a 'turn'",
        "expect.1: any_of.0: answered needs a 'turn'",
    ]


def test_counts_and_context_checks_are_validated(tmp_path):
    text = (
        "turns:\n  - {name: q, text: hi}\n"
        "expect:\n"
        "  - turn: q\n    count: {vad_start: {min: 1, mx: 2}}\n"
        "  - turn: q\n    pipeline_turns: -1\n"
        "  - context: {contains: {bot: hello}}\n"
        "  - context: {equals: [{user: a, assistant: b}]}\n"
    )
    lines = errors_of(text, tmp_path)
    assert "expect.0.count: vad_start: a count is a number >= 0 or {min: a, max: b}" in lines
    assert "expect.1.pipeline_turns: a count is >= 0" in lines
    assert (
        "expect.2.context.contains: expected a phrase or {role: phrase} with role one of user, assistant, system"
        in (lines)
    )
    assert "expect.3.context.equals: each message is one {role: text}" in lines


def test_audio_that_is_not_audio_is_a_scenario_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not audio at all\n")
    text = (
        "turns:\n  - audio: notes.txt\n  - audio: missing.wav\n  - {text: hello, voice: Klingon}\n"
        "noise:\n  - audio: notes.txt\n"
    )
    lines = errors_of(text, tmp_path)
    assert lines[0] == "turns.0.audio: 'notes.txt' is not usable audio: could not decode the audio"
    assert lines[1].startswith("turns.1.audio: no such file 'missing.wav'")
    assert lines[2].startswith("turns.2.text: cannot synthesise 'hello' with espeak: unsupported language 'Klingon'")
    assert lines[3] == "noise.0.audio: 'notes.txt' is not usable audio: could not decode the audio"


def test_not_yaml_and_not_text(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("turns: [\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(path)
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ScenarioError, match="not a scenario"):
        load_scenario(path)


def test_composed_utterance_cuts_and_silences():
    """``parts``: file stretches, silence and text back to back at the first part's rate, gains applied."""
    scenario = parse_scenario(
        {
            "turns": [
                {
                    "parts": [
                        {"audio": "clip:flite_weather_kal16.wav", "from_ms": 200, "to_ms": 1200, "gain": 0.5},
                        {"silence_ms": 800},
                        {"audio": "human:heath_ledger.mp3", "to_ms": 500},
                    ]
                }
            ]
        },
        base_dir=EXAMPLES,
    )
    audio, rate = scenario.turn_audio(0)
    weather = speech("flite_weather_kal16.wav", rate)
    assert rate == 16000 and len(audio) == int(1.0 * rate) + int(0.8 * rate) + int(0.5 * rate)
    np.testing.assert_allclose(audio[:rate], 0.5 * weather[int(0.2 * rate) : int(1.2 * rate)], atol=1e-6)
    assert not audio[rate : int(1.8 * rate)].any()
    assert np.abs(audio[int(1.8 * rate) :]).max() > 0.01


def test_speech_labels_must_fit_the_audio(tmp_path):
    lines = errors_of(
        "turns:\n  - audio: clip:flite_weather_kal16.wav\n    speech_s: [[0.2, 1.0], [0.9, 2.0]]\n", tmp_path
    )
    assert lines == ["turns.0: 'speech_s' spans must be [start, end] seconds, increasing, not overlapping"]
    lines = errors_of("turns:\n  - audio: clip:flite_weather_kal16.wav\n    speech_s: [[0.2, 3.0]]\n", tmp_path)
    assert lines == ["turns.0.speech_s: ends at 3 s, the audio lasts 2.24 s"]


def test_noise_beds_validated_and_levelled():
    base = {"turns": [{"text": "hi"}]}
    with pytest.raises(ScenarioError, match="generated noise needs 'level_dbfs'"):
        parse_scenario({**base, "noise": [{"color": "pink"}]})
    with pytest.raises(ScenarioError, match="give exactly one of 'audio' or 'color'"):
        parse_scenario({**base, "noise": [{"color": "pink", "audio": "clip:cough.wav", "level_dbfs": -40}]})
    scenario = parse_scenario(
        {**base, "noise": [{"color": "pink", "level_dbfs": -40}, {"audio": "clip:cough.wav", "gain": 0.5}]},
        base_dir=EXAMPLES,
    )
    pink, rate = scenario.noise_audio(0)
    assert rate == 16000 and abs(20 * np.log10(np.sqrt(np.mean(pink.astype(np.float64) ** 2))) + 40) < 0.01
    cough, _ = scenario.noise_audio(1)
    np.testing.assert_allclose(cough, 0.5 * speech("cough.wav"), atol=1e-6)


def test_examples_round_trip():
    """A loaded example dumps back to data that loads to the same scenario (tests edit scenarios this way)."""
    for path in sorted(EXAMPLES.glob("*.yaml")):
        scenario = load_scenario(path)
        again = parse_scenario(scenario.model_dump(exclude={"base_dir"}, exclude_unset=True), base_dir=EXAMPLES)
        assert again == scenario, path.name


def test_the_documented_format_loads():
    """The annotated scenario in docs/replay.md is a valid scenario (every field it shows exists and is valid)."""
    import yaml

    doc = (EXAMPLES.parents[1] / "docs" / "replay.md").read_text()
    sample = yaml.safe_load(doc.split("```yaml\n")[1].split("```")[0])
    scenario = parse_scenario(sample, base_dir=EXAMPLES, source="docs/replay.md")
    assert [t.name for t in scenario.turns] == ["question", "barge_in", "long_one"] and len(scenario.noise) == 2
