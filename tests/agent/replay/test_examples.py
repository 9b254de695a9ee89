"""Every scenario in examples/replay/ runs through the real pipeline on the virtual clock and meets its expectations;
a broken expectation fails with a readable message; the reports are written; replays are deterministic."""

from __future__ import annotations

import json
import time
import wave
from pathlib import Path

import pytest

from agent.replay import ScenarioError, load_scenario, parse_scenario, replay

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples" / "replay").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example(path):
    t0 = time.perf_counter()
    result = replay(path)  # raises AssertionError listing the failed expectations
    wall = time.perf_counter() - t0
    print(f"\n{result.summary()}\n  ({wall:.1f} s wall)")
    assert result.scenario.expect, "an example without expectations proves nothing"
    assert not result.realtime and result.duration_s > 0


def test_failing_expectation_is_readable():
    """The simple Q&A scenario with expectations that do not hold: the message names each one and what happened."""
    scenario = load_scenario(EXAMPLES[0].parent / "simple_qa.yaml")
    data = scenario.model_dump(exclude={"base_dir"}, exclude_unset=True)
    data["expect"] = [
        {
            "turn": "question",
            "transcript_contains": "pizza",
            "reply_contains": "it will rain",
            "interrupted": True,
            "within_ms": {"voice_to_voice": 50},
        },
        {"absent": ["bot_started_speaking"]},
    ]
    broken = parse_scenario(data, base_dir=scenario.base_dir)
    with pytest.raises(AssertionError) as info:
        replay(broken)
    message = str(info.value)
    print(message)
    assert "5 expectation(s) failed" in message
    assert (
        "turn 'question': transcript should contain 'pizza', was 'what is the weather like in paris today'" in message
    )
    assert "bot reply should contain 'it will rain', the user heard 'It is sunny in Paris today." in message
    assert "expected interrupted=true, got false" in message
    assert "voice_to_voice was" in message and "budget 50 ms" in message
    assert "no bot_started_speaking expected, got 1" in message
    assert "timeline:" in message and "bot_started_speaking" in message


def test_reports_and_determinism(tmp_path):
    """``out`` gets the three reports; the same scenario twice gives the same timeline on the virtual clock."""
    path = EXAMPLES[0].parent / "barge_in.yaml"
    a = replay(path, out=tmp_path)
    b = replay(path)
    # same events in the same order at the same times; the only slack is the bot's espeak audio, whose length varies
    # by a few samples between calls (one 40 ms output chunk at worst)
    assert [e["kind"] for e in a.events] == [e["kind"] for e in b.events]
    assert max(abs(x["t"] - y["t"]) for x, y in zip(a.events, b.events)) <= 0.045
    data = json.loads((tmp_path / "timeline.json").read_text())
    assert data["clock"] == "virtual" and data["turns"][1]["interrupted"] is True
    assert {"interruption", "bot_started_speaking", "vad_start"} <= {e["kind"] for e in data["events"]}
    with wave.open(str(tmp_path / "conversation.wav")) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 16000
        assert abs(w.getnframes() / 16000 - a.duration_s) < 0.2
    assert (tmp_path / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    # what the user heard stops at the barge-in: no bot audio long after the interruption reached the client
    interruption = a.events_of("interruption")[0]
    second_reply = a.events_of("bot_started_speaking")[1]
    assert not [s for s, _ in a.bot_audio if interruption + 0.05 < s < second_reply]


def test_virtual_clock_is_faster_than_real_time():
    """Eight seconds of silence between turns cost (almost) nothing on the virtual clock. Timed on a second run: the
    first in a process also loads the models (Silero, the STT), which is no part of the clock's speed."""
    replay(EXAMPLES[0].parent / "long_pause.yaml")
    t0 = time.perf_counter()
    result = replay(EXAMPLES[0].parent / "long_pause.yaml")
    wall = time.perf_counter() - t0
    assert result.duration_s > 15 and wall < result.duration_s / 2, (result.duration_s, wall)


def test_invalid_scenarios_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("turns:\n  - text: hi\n    after: bot_said_hello\nexpect:\n  - turn: nope\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(bad)
    assert "turns.0.after" in str(info.value) and "bad.yaml" in str(info.value)
    bad.write_text("settings: {turn: {stop_secs: -1}}\nturns:\n  - text: hi\n")
    with pytest.raises(ScenarioError, match=r"settings: .*turn.stop_secs"):
        load_scenario(bad)
    bad.write_text("turns:\n  - text: hi\n    audio: x.wav\n")
    with pytest.raises(ScenarioError, match="exactly one of 'audio' or 'text'"):
        load_scenario(bad)
    bad.write_text("turns:\n  - audio: missing.wav\n")
    with pytest.raises(ScenarioError, match="turns.0.audio: no such file"):
        load_scenario(bad)
    bad.write_text("turns:\n  - text: hi\nexpect:\n  - turn: 3\n    answered: true\n")
    with pytest.raises(ScenarioError, match="expect.0.turn: no turn 3"):
        load_scenario(bad)
    bad.write_text("turns: [\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(bad)


async def test_replay_from_a_running_event_loop():
    """Inside an async test the replay runs its own (virtual-time) loop in a helper thread."""
    result = replay(EXAMPLES[0].parent / "cough.yaml")
    assert result.turn("cough").resumed and not result.realtime


def test_realtime_mode():
    """``realtime=True``: the wall clock, so the replay takes as long as the conversation, and compute shows in the
    latencies (the TTS's first audio is no longer instantaneous)."""
    t0 = time.perf_counter()
    # budgets are for the virtual clock: real-time latencies depend on the machine's load, so no check here
    result = replay(EXAMPLES[0].parent / "simple_qa.yaml", realtime=True, check=False)
    assert "what is the weather like in paris today" in result.turns[0].transcript
    wall = time.perf_counter() - t0
    assert result.realtime and wall >= result.duration_s
    assert result.turns[0].latencies()["tts_first_audio"] > 0


@pytest.mark.parametrize(
    "name, change, broken",
    [
        ("backchannel", {"turn": {"echo_guard": "off"}}, "turn 'yeah': expected interrupted=false, got true"),
        ("cough", {"turn": {"false_interruption_timeout_s": None}}, "turn 'cough': expected resumed=true, got false"),
    ],
)
def test_examples_fail_without_the_feature_they_test(name, change, broken):
    """The backchannel example fails with the echo guard off, the cough example without false-interruption resume:
    they pass because of the policy they are about, not by accident."""
    scenario = load_scenario(EXAMPLES[0].parent / f"{name}.yaml")
    data = scenario.model_dump(exclude={"base_dir"}, exclude_unset=True)
    data["settings"]["turn"] = {**data["settings"].get("turn", {}), **change["turn"]}
    result = replay(parse_scenario(data, base_dir=scenario.base_dir), check=False)
    assert broken in result.failures, result.failures
