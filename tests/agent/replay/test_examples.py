"""Every scenario in examples/replay/ runs through the real pipeline on the virtual clock and meets its expectations;
a broken expectation fails with a readable message; the examples fail without the policy they are about."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pipecat.frames.frames import TTSAudioRawFrame, TTSTextFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.tts_service import TTSService

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
    assert result.turn("cough").released_at is not None and not result.realtime


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


NO_HOLD = {"turn": {"barge_in_hold": False}}
PIPECAT_ONSET = {"vad": {"onset_bridge_s": 0.0, "onset_volume": "smoothed"}}


@pytest.mark.parametrize(
    "name, change, broken",
    [
        (
            "backchannel",
            {"turn": {"barge_in_hold": False, "echo_guard": "off"}},
            [
                "none of 2 alternatives held: (1) turn 'yeah': expected interrupted=false, got true",
                "turn 'yeah': context roles should be [], were ['user', 'assistant']",
                "expected 1 llm_request event(s), got 2",
            ],
        ),
        (
            "backchannels_human",
            NO_HOLD,
            [
                "turn 'mhm': expected interrupted=false, got true",
                "turn 'mhm': context roles should be [], were ['user', 'assistant']",
                "turn 'question': bot reply should contain",
            ],
        ),
        (
            "cough",
            NO_HOLD,
            ["turn 'cough': expected interrupted=false, got true", "expected 0 interruption event(s), got 1"],
        ),
        (
            "telephony_barge_in",
            NO_HOLD,
            ["turn 'mhm': expected interrupted=false, got true"],
        ),
        (
            "noise_bursts",
            NO_HOLD,
            ["turn 'sneeze': expected interrupted=false, got true"],
        ),
        (
            "false_interruption",
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
        (
            "stop_word",
            # where the word falls in Silero's windows decides whether pipecat's rule hears it: the bot's start (and
            # so the word's place) as the comparison was measured, the turn ending 0.6 s after the VAD stop
            {**PIPECAT_ONSET, "turn": {"stop_strategy": "speech_timeout"}},
            ["turn 'stop': expected interrupted=true, got false", "expected 1 interruption event(s), got 0"],
        ),
    ],
)
def test_examples_fail_without_the_feature_they_test(name, change, broken):
    """Each example passes because of the policy it is about, not by accident: without the barge-in hold the
    backchannels (on the phone too), the cough and the sneeze cut the answer (and the backchannels get answers of
    their own); without false-interruption resume the old cough path loses the reply; with pipecat's onset rule the
    VAD never hears the short "Stop."; with the speech timeout or without the end-of-turn model the bot cuts in at a
    pause mid-sentence; without dropping unplayed replies the client hears of an interruption; without preemptive
    generation voice-to-voice is over budget; with pipecat's timeout and late-transcript handling a slow STT's
    transcript opens a phantom second turn."""
    scenario = load_scenario(EXAMPLES[0].parent / f"{name}.yaml")
    data = scenario.model_dump(exclude={"base_dir"}, exclude_unset=True)
    data.setdefault("settings", {})
    for group, values in change.items():
        data["settings"][group] = {**data["settings"].get(group, {}), **values}
    result = replay(parse_scenario(data, base_dir=scenario.base_dir), check=False)
    for line in broken:
        assert any(f == line or f.startswith(line) for f in result.failures), (line, result.failures)


class TTSOutput(BaseObserver):
    """The TTS's audio and word timestamps as it pushed them (before the output transport played them)."""

    def __init__(self):
        super().__init__()
        self.audio = bytearray()
        self.words: list[tuple[str, float]] = []  # (word, pts in seconds) as the TTS timed it

    async def on_push_frame(self, data: FramePushed):
        if isinstance(data.source, TTSService) and data.direction == FrameDirection.DOWNSTREAM:
            if isinstance(data.frame, TTSAudioRawFrame):
                self.audio += data.frame.audio
            elif isinstance(data.frame, TTSTextFrame) and data.frame.pts:
                self.words.append((data.frame.text, data.frame.pts / 1e9))


def test_held_audio_plays_on_exactly():
    """The cough example, sample by sample: the bot's audio as played is exactly the audio the TTS made (nothing
    lost, nothing repeated, nothing synthesised again; only the last 40 ms chunk padded), with one gap, where it was
    held; every word is released when its own audio plays: on the TTS's schedule before the hold, that schedule
    plus the gap after it (and none during it)."""
    tts = TTSOutput()
    result = replay(EXAMPLES[0].parent / "cough.yaml", observers=[tts])
    played = b"".join(np.round(a * 32768).astype(np.int16).tobytes() for _, a in result.bot_audio)
    assert len(tts.audio) > 0 and played[: len(tts.audio)] == bytes(tts.audio)
    assert not any(played[len(tts.audio) :]) and len(played) - len(tts.audio) < 0.04 * result.sample_rate * 2
    chunks = [(start, start + len(a) / result.sample_rate) for start, a in result.bot_audio]
    gaps = [(end, nxt) for (_, end), (nxt, _) in zip(chunks, chunks[1:]) if nxt - end > 1e-6]
    (held_at,) = result.events_of("bot_held")
    (released_at,) = result.events_of("bot_released")
    assert len(gaps) == 1 and held_at <= gaps[0][0] <= held_at + 0.04 + 1e-6
    assert abs(gaps[0][1] - released_at) < 1e-6
    gap = gaps[0][1] - gaps[0][0]
    t0 = result.clock_origin
    assert [w for w, _ in tts.words] == [w for _, w in result.played_words]
    stopped, resumed = gaps[0]
    for (word, pts), (t, _) in zip(tts.words, result.played_words):
        scheduled = pts - t0
        assert not stopped + 0.001 < t < resumed - 0.001, (word, t)  # no word released while the audio was held
        if scheduled >= stopped - 0.005:  # its audio had not begun when the bot stopped: it plays after the gap
            expected = scheduled + gap
        elif scheduled >= held_at:  # it began in the chunk that played out after the hold: released once it stopped
            expected = stopped
        else:
            expected = scheduled
        assert abs(t - expected) < 0.002, (word, t, expected)
