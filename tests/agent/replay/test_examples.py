"""Every scenario in examples/replay/ runs through the real pipeline on the virtual clock and meets its expectations;
a broken expectation fails with a readable message; the examples fail without the policy they are about."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.replay import load_scenario, parse_scenario, replay

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples" / "replay").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example(path, replayed):
    t0 = time.perf_counter()
    result = replayed(path.stem)  # raises AssertionError listing the failed expectations
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


def test_virtual_clock_jumps_over_silence(monkeypatch):
    """Eight seconds of silence between turns cost (almost) nothing on the virtual clock: time jumps over them instead
    of being waited out. Counted in virtual seconds the loop skipped, not in wall time (which depends on the load of
    the machine running the test)."""
    from agent.replay.clock import VirtualTimeLoop

    jumped = []
    advance = VirtualTimeLoop.advance

    def counting(self, seconds):
        jumped.append(max(0.0, seconds))
        advance(self, seconds)

    monkeypatch.setattr(VirtualTimeLoop, "advance", counting)
    result = replay(EXAMPLES[0].parent / "long_pause.yaml")
    assert result.duration_s > 15 and sum(jumped) > 0.95 * result.duration_s, (result.duration_s, sum(jumped))


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
        (
            "backchannel",
            {"turn": {"echo_guard": "off"}},
            [
                "none of 2 alternatives held: (1) turn 'yeah': expected interrupted=false, got true",
                "turn 'yeah': context roles should be [], were ['user', 'assistant']",
                "expected 1 llm_request event(s), got 2",
            ],
        ),
        (
            "cough",
            {"turn": {"false_interruption_timeout_s": None}},
            ["turn 'cough': expected resumed=true, got false"],
        ),
        (
            "pause_mid_sentence",
            {"turn": {"stop_strategy": "speech_timeout"}},
            [
                "turn 'advice': expected pipeline_turns=1, got 2",
                "turn 'advice': expected interruptions=0, got 1",
                "turn 'advice': context roles should be ['user', 'assistant'], were "
                "['user', 'assistant', 'user', 'assistant']",
            ],
        ),
        (
            "telephone_pause",
            {"turn": {"end_of_turn_model": "none"}},
            ["turn 'advice': expected pipeline_turns=1, got 2", "no interruption expected, got 1"],
        ),
        (
            "resume_before_the_answer_played",
            {"turn": {"drop_unplayed_replies": False}},
            ["turn 'taxi_and_hotel': expected interruptions=0, got 1", "no interruption expected, got 1"],
        ),
        (
            "preemptive_generation",
            {"turn": {"preemptive_generation": False}},
            ["turn 'advice': voice_to_voice was", "expected 1 llm_request_dropped event(s), got 0"],
        ),
        (
            "slow_stt_late_transcript",
            {"turn": {"stop_strategy": "speech_timeout", "late_transcripts": "new_turn"}},
            [
                "turn 'weather': transcript should contain 'table'",
                "no interruption expected, got 1",
                "expected 1 user_turn_start event(s), got 2",
            ],
        ),
    ],
)
def test_examples_fail_without_the_feature_they_test(name, change, broken):
    """The backchannel example fails with the echo guard off (the "yeah" cuts the answer and gets an answer of its
    own), the cough example without false-interruption resume, the pause examples with the speech timeout or without
    the end-of-turn model (the bot cuts in at the pause), the resume example without dropping unplayed replies (the
    client hears of an interruption), the preemptive example without preemptive generation (voice-to-voice over its
    budget), the slow-STT example with pipecat's timeout and late-transcript handling (a phantom second turn): they
    pass because of the policy they are about, not by accident."""
    scenario = load_scenario(EXAMPLES[0].parent / f"{name}.yaml")
    data = scenario.model_dump(exclude={"base_dir"}, exclude_unset=True)
    data.setdefault("settings", {})
    data["settings"]["turn"] = {**data["settings"].get("turn", {}), **change["turn"]}
    result = replay(parse_scenario(data, base_dir=scenario.base_dir), check=False)
    for line in broken:
        assert any(f == line or f.startswith(line) for f in result.failures), (line, result.failures)
