"""The endpointing stop strategy's own rules, without models: the word rule, the level check that stands in for the
lagging VAD at timer expiry, and the two waits, driven through pipecat's real user aggregator with ``run_test``
(the end-of-turn model is left out: ``judge=None``, so every pause sounds finished unless the words say otherwise).
The examples and ``duplex bench turns`` run the same strategy with Smart Turn on real voices."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pipecat.frames.frames import (
    InputAudioRawFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregator, LLMUserAggregatorParams
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.turns.user_start import TranscriptionUserTurnStartStrategy, VADUserTurnStartStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.utils.time import time_now_iso8601

from pipelines.endpointing import EndpointingUserTurnStopStrategy, RecentAudio, sounds_unfinished
from processors.audio import float_to_pcm16

FRAME_S = 0.02


@pytest.mark.parametrize(
    "text, unfinished",
    [
        ("Can you book a table for two at", True),
        ("I want to go to the", True),
        ("salt and", True),
        ("um", True),
        ("What time is it?", False),
        ("Book a table for two at seven.", False),
        ("", False),
    ],
)
def test_words_that_cannot_end_a_sentence(text, unfinished):
    assert sounds_unfinished(text) is unfinished


def frames(seconds: float, dbfs: float | None, seed: int = 0) -> list[InputAudioRawFrame]:
    """``seconds`` of 20 ms frames of noise at ``dbfs`` RMS (None: digital silence)."""
    rng = np.random.default_rng(seed)
    n = int(16000 * FRAME_S)
    out = []
    for _ in range(round(seconds / FRAME_S)):
        samples = np.zeros(n, np.float32) if dbfs is None else rng.normal(0, 10 ** (dbfs / 20), n).astype(np.float32)
        out.append(InputAudioRawFrame(audio=float_to_pcm16(samples), sample_rate=16000, num_channels=1))
    return out


def paced(seconds: float, dbfs: float | None) -> list:
    """``frames`` as a microphone sends them: one every 20 ms (the strategy times audio by its arrival)."""
    return [x for frame in frames(seconds, dbfs) for x in (frame, SleepFrame(FRAME_S))]


def levels(*parts: tuple[float, float | None]) -> RecentAudio:
    """A ``RecentAudio`` fed ``(seconds, dBFS)`` parts back to back, one frame every 20 ms."""
    recent, t = RecentAudio(), 0.0
    for seconds, dbfs in parts:
        for frame in frames(seconds, dbfs):
            recent.append(frame, t)
            t += FRAME_S
    return recent


def test_speech_resumed_is_judged_against_the_pause_itself():
    # the pause starts at 1.0 s (the VAD stop) in every case
    assert levels((1.0, -20), (0.6, None), (0.1, -45)).speech_resumed(1.0)  # a soft onset over digital silence
    assert levels((1.0, -20), (0.6, -50), (0.1, -25)).speech_resumed(1.0)  # speech over a noise bed
    assert not levels((1.0, -20), (0.6, -45), (0.1, -45)).speech_resumed(1.0)  # the noise bed goes on
    assert not levels((1.0, -20), (0.6, -45), (0.1, -38)).speech_resumed(1.0)  # a little louder: not 10 dB
    assert not levels((1.0, -20), (0.2, -45), (0.4, -25), (0.4, -45)).speech_resumed(1.0)  # a sound that ended
    assert not RecentAudio().speech_resumed(0.0)


class StopTimes(FrameProcessor):
    """Downstream of the aggregator: when (loop time) each user turn ended."""

    def __init__(self):
        super().__init__()
        self.stops: list[float] = []

    async def process_frame(self, frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if type(frame).__name__ == "UserStoppedSpeakingFrame":
            self.stops.append(time.monotonic())
        await self.push_frame(frame, direction)


async def turn(text: str, after: list, **options) -> tuple[EndpointingUserTurnStopStrategy, list[str], float]:
    """A user turn: quiet, speech, the VAD stop, the transcript, then ``after`` (paced as a microphone sends).
    Returns the strategy, the downstream frame names, and how long after the VAD stop the turn ended (inf if it did
    not)."""
    strategy = EndpointingUserTurnStopStrategy(judge=None, **options)
    strategies = UserTurnStrategies(
        start=[VADUserTurnStartStrategy(), TranscriptionUserTurnStartStrategy()], stop=[strategy]
    )
    agg = LLMUserAggregator(LLMContext(), params=LLMUserAggregatorParams(user_turn_strategies=strategies))
    stops = StopTimes()
    stopped_at: list[float] = []

    class MarkStop(FrameProcessor):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, VADUserStoppedSpeakingFrame):
                stopped_at.append(time.monotonic())
            await self.push_frame(frame, direction)

    from pipecat.pipeline.pipeline import Pipeline

    down, _ = await run_test(
        Pipeline([MarkStop(), agg, stops]),
        frames_to_send=[
            *paced(1.0, None),  # the line before the user speaks
            VADUserStartedSpeakingFrame(start_secs=0.2),
            *paced(0.6, -20),
            *paced(0.2, None),  # the VAD's stop_secs
            VADUserStoppedSpeakingFrame(stop_secs=0.2),
            TranscriptionFrame(text, "", time_now_iso8601()),
            *after,
        ],
    )
    names = [type(f).__name__ for f in down if not isinstance(f, InputAudioRawFrame)]
    ended = stops.stops[0] - stopped_at[0] if stops.stops and stopped_at else float("inf")
    return strategy, names, ended


async def test_a_finished_sentence_ends_the_turn_after_the_short_wait():
    strategy, names, ended = await turn("What time is it?", [*paced(0.6, None)], complete_wait_s=0.1)
    assert names.count("UserStoppedSpeakingFrame") == 1
    assert 0.05 <= ended < 0.45, ended
    assert strategy.decisions[-1]["complete"] is True


async def test_an_unfinished_sentence_waits_the_long_wait():
    _, names, ended = await turn("Book a table for two at", [*paced(0.6, None)], incomplete_wait_s=1.0)
    assert "UserStoppedSpeakingFrame" not in names  # 0.6 s of pause: still the user's turn
    strategy, names, ended = await turn("Book a table for two at", [*paced(1.3, None)], incomplete_wait_s=1.0)
    assert names.count("UserStoppedSpeakingFrame") == 1 and 0.9 <= ended < 1.5, ended
    assert strategy.decisions[-1]["complete"] is False


async def test_sound_at_the_deadline_holds_the_turn_for_the_vad():
    """Speech that restarts just before the deadline is louder than the pause: the turn is held (up to ``hold_s``)
    for the VAD, which confirms it only ``start_secs`` plus its lag later; when the VAD does, the turn goes on."""
    restart = [*paced(0.06, None), *paced(0.3, -20), VADUserStartedSpeakingFrame(start_secs=0.2), *paced(0.5, -20)]
    _, names, _ = await turn("What time is it?", restart, complete_wait_s=0.1, hold_s=0.4)
    assert "UserStoppedSpeakingFrame" not in names
    # the same without the level check's evidence (the pause stays silent until the VAD start): the turn ended
    late = [*paced(0.36, None), VADUserStartedSpeakingFrame(start_secs=0.2), *paced(0.5, -20)]
    _, names, _ = await turn("What time is it?", late, complete_wait_s=0.1, hold_s=0.4)
    assert "UserStoppedSpeakingFrame" in names


async def test_a_click_lets_go_after_the_hold():
    click = [*paced(0.06, None), *paced(0.04, -20), *paced(1.0, None), SleepFrame(0.1)]
    _, names, ended = await turn("What time is it?", click, complete_wait_s=0.1, hold_s=0.4)
    assert names.count("UserStoppedSpeakingFrame") == 1 and ended < 0.8, ended
