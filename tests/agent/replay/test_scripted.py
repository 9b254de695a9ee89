"""The scripted LLM counts replies per answer the user hears: a request interrupted before any of its audio played
gives its reply to the next request; a reply the user heard part of is used up."""

from __future__ import annotations

from pathlib import Path

from agent.replay import parse_scenario, replay

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "replay"
REPLIES = ["Sure, it is sunny in Paris today.", "Yes, a table for two is booked."]
LONG = "Sure, it is sunny in Paris today. There is a light breeze from the west, and clouds come in late."


def split_turn(pause_ms: float, token_ms: float, replies: list[str] = REPLIES) -> dict:
    """One utterance: a question, a pause, a second question (the pause ends the first pipeline turn). The speech
    timeout ends turns, and a reply dropped before it played is not folded into the next turn: these tests are about
    the scripted LLM's replies over split turns, so they make them split."""
    policy = {"stop_strategy": "speech_timeout", "drop_unplayed_replies": False, "late_transcripts": "new_turn"}
    return {
        "settings": {"tts": {"engine": "espeak"}, "stt": {"interim_interval_s": None}, "turn": policy},
        "stt": {"scripted": ["what is the weather like in paris today", "can you book a table for two"]},
        "llm": {"scripted": replies, "token_ms": token_ms},
        "turns": [
            {
                "name": "both",
                "parts": [
                    {"audio": "clip:flite_weather_kal16.wav"},
                    {"silence_ms": pause_ms},
                    {"audio": "clip:flite_table_rms.wav"},
                ],
                "at_ms": 300,
            }
        ],
    }


def test_a_request_withdrawn_before_its_audio_keeps_its_reply():
    """A slow LLM (300 ms a word): the first request is still streaming when the user goes on talking after a 1 s
    pause, so nothing of it was played. The second request gets the same first reply, which the user then hears;
    before, it was used up and the user heard the second one."""
    result = replay(parse_scenario(split_turn(1000, 300), base_dir=EXAMPLES), check=False)
    both = result.turn("both")
    assert both.pipeline_turns == 2, result.summary()
    assert [(r["turn"], r["reply_index"], r["outcome"]) for r in result.llm_requests] == [
        (0, 0, "withdrawn"),
        (1, 0, "heard"),
    ]
    assert both.reply == REPLIES[0]
    assert [m["role"] for m in both.messages] == ["user", "user", "assistant"]  # the split turn: two user messages
    assert "llm_request 'turn 0, reply 0, withdrawn'" in result.timeline_text()


def test_a_reply_heard_in_part_is_used_up():
    """A 2.5 s pause: the bot is speaking a long first reply when the user goes on; it is cut, and the second
    request gets the second reply."""
    result = replay(parse_scenario(split_turn(2500, 20, [LONG, REPLIES[1]]), base_dir=EXAMPLES), check=False)
    assert [(r["turn"], r["reply_index"], r["outcome"]) for r in result.llm_requests] == [
        (0, 0, "heard"),
        (1, 1, "heard"),
    ]
    reply = result.turn("both").reply
    assert reply.startswith("Sure, it is sunny") and reply.endswith(REPLIES[1]) and "clouds come in late" not in reply
    assert result.turn("both").interruptions == 1
