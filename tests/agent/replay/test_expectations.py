"""Expectations evaluated against real replays (the examples, replayed once per session): each check passes on what
happened and fails, with a readable line, on what did not."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from agent.replay.expectations import check
from agent.replay.scenario import Expectation

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "replay"


@pytest.fixture
def barge_in(replayed):
    return replayed("barge_in")


@pytest.fixture
def two_questions(replayed):
    return replayed("pause_inside_utterance")


def failures(result, **expectation) -> list[str]:
    return check(result, Expectation.model_validate(expectation))


def test_context_of_a_turn_after_a_barge_in(barge_in):
    """The question's messages: its user message and the assistant message cut to the words that were played."""
    question = barge_in.turn("question")
    played = question.reply
    assert played.startswith("It is sunny in Paris today.") and "river" not in played
    assert [m["role"] for m in question.messages] == ["user", "assistant"]
    assert question.messages[1]["content"] == played
    assert failures(barge_in, turn="question", context={"assistant_equals_reply": True}) == []
    assert (
        failures(barge_in, turn="question", context={"equals": [{"user": question.transcript}, {"assistant": played}]})
        == []
    )
    assert failures(barge_in, turn="question", context={"contains": {"assistant": "river this evening"}}) == [
        "turn 'question': context should contain 'river this evening' in an assistant message, was "
        f"[user: {question.transcript!r}, assistant: {played!r}]"
    ]
    assert failures(barge_in, turn="question", context={"not_contains": "sunny"}) == [
        "turn 'question': context should not contain 'sunny', was "
        f"[user: {question.transcript!r}, assistant: {played!r}]"
    ]
    assert failures(barge_in, turn="question", context={"roles": ["user"]}) == [
        "turn 'question': context roles should be ['user'], were ['user', 'assistant']"
    ]
    assert failures(barge_in, turn="question", context={"equals": [{"user": "what is the weather"}]}) != []


def test_assistant_equals_reply_fails_when_the_context_holds_unplayed_words(barge_in):
    """What the check guards against: the whole generated reply in the context although the user heard only part."""
    result = copy.copy(barge_in)
    question = copy.copy(barge_in.turn("question"))
    full = load_reply(0)
    question.messages = [question.messages[0], {"role": "assistant", "content": full}]
    result.turns = [question, *barge_in.turns[1:]]
    [line] = failures(result, turn="question", context={"assistant_equals_reply": True})
    assert line.startswith("turn 'question': context: the assistant messages should hold exactly the words the user")
    assert "river this evening" in line


def load_reply(i: int) -> str:
    from agent.replay import load_scenario

    return load_scenario(EXAMPLES / "barge_in.yaml").llm.scripted[i]


def test_whole_context_and_counts(barge_in):
    assert failures(barge_in, context={"roles": ["user", "assistant", "user", "assistant"]}) == []
    assert failures(barge_in, context={"not_contains": {"user": "weather"}}) == [
        f"context should not contain 'weather' in a user message, was [{', '.join(shown(barge_in.context))}]"
    ]
    assert failures(barge_in, count={"interruption": {"min": 1, "max": 1}, "llm_request": 2}) == []
    assert failures(barge_in, count={"interruption": {"min": 2}}) == ["expected >= 2 interruption event(s), got 1"]
    assert failures(barge_in, count={"vad_start": {"max": 1}}) == ["expected <= 1 vad_start event(s), got 2"]


def shown(messages) -> list[str]:
    return [f"{m['role']}: {m['content']!r}" for m in messages]


def test_per_turn_counts_use_the_turn_span(barge_in):
    """From a turn's speech onset to the next utterance's: the interruption belongs to the barge-in, not to the
    question before it."""
    assert failures(barge_in, turn="question", count={"interruption": 0, "vad_start": 1}, interruptions=0) == []
    assert failures(barge_in, turn="barge_in", interruptions=1, pipeline_turns=1) == []
    assert failures(barge_in, turn="question", interruptions=1) == ["turn 'question': expected interruptions=1, got 0"]
    at = barge_in.events_of("interruption")[0]
    assert failures(barge_in, turn="barge_in", absent=["interruption"]) == [
        f"turn 'barge_in': no interruption expected in this turn, got 1 (at {at:.2f} s)"
    ]


def test_any_of_and_all_of(barge_in):
    held = {"turn": "barge_in", "interrupted": True}
    broken = {"turn": "barge_in", "resumed": True}
    assert failures(barge_in, any_of=[broken, held]) == []
    assert failures(barge_in, any_of=[broken, {"all_of": [held, {"turn": "question", "answered": False}]}]) == [
        "none of 2 alternatives held: (1) turn 'barge_in': expected resumed=true, got false | "
        "(2) turn 'question': expected answered=false, got true"
    ]
    # nested expectations take their parent's turn
    assert failures(barge_in, turn="barge_in", any_of=[{"resumed": True}, {"interrupted": True}]) == []
    assert failures(barge_in, turn="barge_in", all_of=[{"resumed": True}, {"interrupted": True}]) == [
        "turn 'barge_in': expected resumed=true, got false"
    ]


def test_an_utterance_over_several_pipeline_turns(two_questions):
    """One recording, two questions 2.5 s apart: both pipeline turns belong to it, each with its own speech span (so
    no negative waits), the answer's latency measured from the true end of the second question, the context split
    per turn, the reply holding everything the user heard after it."""
    t = two_questions.turn("questions")
    assert t.pipeline_turns == 2 and t.interruptions == 1 and t.interrupted and t.answered
    first, second = t.pipeline
    assert len(t.segments) == 2
    (s0, e0), (s1, e1) = t.segments
    rel = two_questions.rel
    assert abs(rel(first.speech_start) - s0) < 1e-6 and abs(rel(first.speech_end) - e0) < 1e-6
    assert abs(rel(second.speech_start) - s1) < 1e-6 and abs(rel(second.speech_end) - e1) < 1e-6
    assert e1 == t.speech_end
    for m in t.pipeline:
        assert 0.2 <= m.vad_stop_wait < 0.5 and m.turn_end_wait >= 0 and 0.3 < m.voice_to_voice < 1.5, m.breakdown()
    assert t.latencies()["voice_to_voice"] == second.voice_to_voice
    assert second.barge_in is not None and t.latencies()["barge_in_stop"] == second.barge_in.stop_latency_from_onset
    assert [m["role"] for m in t.messages] == ["user", "assistant", "user", "assistant"]
    assert "weather" in t.messages[0]["content"] and "table" in t.messages[2]["content"]
    assert t.reply.startswith("It is sunny in Paris today.") and t.reply.endswith("Yes, a table for two is booked.")
    summary = two_questions.summary()
    assert "(interrupted, 2 pipeline turns)" in summary
    assert f"voice_to_voice {second.voice_to_voice * 1000:.0f} ms" in summary
