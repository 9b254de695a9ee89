"""The turn/interruption policy pieces on their own: settings -> pipecat objects, and each custom strategy and
processor driven with frames through pipecat's ``run_test`` (no audio, no models)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMRunFrame,
    LLMTextFrame,
    MetricsFrame,
    SystemFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import ProcessingMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    AssistantTurnStoppedMessage,
    LLMContextAggregatorPair,
    LLMUserAggregator,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.turns.user_start import TranscriptionUserTurnStartStrategy, VADUserTurnStartStrategy
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy, TurnAnalyzerUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.utils.time import time_now_iso8601

from pipelines.endpointing import (
    EndpointingUserTurnStopStrategy,
    LateTranscriptUserTurnStartStrategy,
    SmartTurnJudge,
)
from pipelines.interruptions import (
    BargeInDecisionUserTurnStartStrategy,
    EchoGuardUserTurnStartStrategy,
    FalseInterruptionFrame,
    FalseInterruptionUserTurnStopStrategy,
    IdleInterruptionFilter,
    ReplyResumer,
    ResumedResponseStartFrame,
    interrupting_words,
    unspoken_remainder,
)
from pipelines.onset_vad import OnsetSileroVADAnalyzer
from pipelines.options import AgentOptions
from pipelines.playback import PlaybackHold
from pipelines.policy import (
    build_user_aggregator_params,
    build_user_turn_strategies,
    echo_guard_enabled,
    is_telephony_transport,
    resolve_policy,
)
from processors.segmented_stt import SegmentTranscribedFrame


def turn_settings(**kw):
    return AgentOptions().turn.model_copy(update=kw)


# --- settings -> strategies ---------------------------------------------------------------------------------------


def test_default_strategies():
    s = build_user_turn_strategies(
        turn_settings(), echo_guard=False, stt_name="stt#0", stt_reports_segments=True, hold=PlaybackHold()
    )
    assert [type(x) for x in s.start] == [
        BargeInDecisionUserTurnStartStrategy,
        VADUserTurnStartStrategy,
        LateTranscriptUserTurnStartStrategy,
        TranscriptionUserTurnStartStrategy,
    ]
    assert [type(x) for x in s.stop] == [EndpointingUserTurnStopStrategy, FalseInterruptionUserTurnStopStrategy]
    stop = s.stop[0]
    assert isinstance(stop.judge, SmartTurnJudge) and stop.preemptive and stop.wait_for_stt
    assert (stop.complete_wait_s, stop.incomplete_wait_s, stop.threshold) == (0.1, 1.0, 0.5)
    assert s.stop[1].timeout_s == 1.5 and s.stop[1].stt_name == "stt#0"
    decide = s.start[0]
    assert (decide.min_words, decide.min_speech_s, decide.verdict_timeout_s) == (1, 2.0, 1.0)
    assert decide.stt_name == "stt#0" and decide.echo_window_s == 0 and "uh huh" in decide.backchannels
    s = build_user_turn_strategies(turn_settings(), echo_guard=False, stt_name="stt#0")  # no hold: nothing to hold
    assert [type(x) for x in s.start] == [
        VADUserTurnStartStrategy,
        LateTranscriptUserTurnStartStrategy,
        TranscriptionUserTurnStartStrategy,
    ]


def test_pipecat_policies_stay_expressible():
    """pipecat's speech timeout and the transcription start strategy alone, as before the endpointing work."""
    s = build_user_turn_strategies(
        turn_settings(stop_strategy="speech_timeout", late_transcripts="new_turn"), echo_guard=False, stt_name="stt#0"
    )
    assert [type(x) for x in s.start] == [VADUserTurnStartStrategy, TranscriptionUserTurnStartStrategy]
    assert [type(x) for x in s.stop] == [SpeechTimeoutUserTurnStopStrategy, FalseInterruptionUserTurnStopStrategy]
    assert s.stop[0]._user_speech_timeout == 0.6
    plain = build_user_turn_strategies(
        turn_settings(end_of_turn_model="none", preemptive_generation=False), echo_guard=False
    )
    assert plain.stop[0].judge is None and not plain.stop[0].preemptive and not plain.stop[0].wait_for_stt


def test_smart_turn_echo_guard_and_no_recovery():
    s = build_user_turn_strategies(
        turn_settings(stop_strategy="smart_turn", smart_turn_stop_secs=2.0, false_interruption_timeout_s=None),
        echo_guard=True,
    )
    assert isinstance(s.start[0], EchoGuardUserTurnStartStrategy)
    assert [type(x) for x in s.stop] == [TurnAnalyzerUserTurnStopStrategy]
    assert s.stop[0]._turn_analyzer.params.stop_secs == 2.0


def test_hold_replaces_the_echo_guard_and_applies_its_window():
    hold = PlaybackHold()
    s = build_user_turn_strategies(
        turn_settings(echo_guard_window_s=2.5, echo_guard_min_words=3), echo_guard=True, hold=hold
    )
    assert isinstance(s.start[0], BargeInDecisionUserTurnStartStrategy) and s.start[0].hold is hold
    assert (s.start[0].echo_window_s, s.start[0].echo_min_words) == (2.5, 3)
    assert not any(isinstance(x, EchoGuardUserTurnStartStrategy) for x in s.start)
    s = build_user_turn_strategies(turn_settings(barge_in_hold=False), echo_guard=True, hold=hold)
    assert isinstance(s.start[0], EchoGuardUserTurnStartStrategy)  # the hold off: the echo guard as before
    assert resolve_policy(turn_settings(barge_in_hold=False), telephony=False).barge_in_hold is False
    assert resolve_policy(turn_settings(barge_in=False), telephony=False).barge_in_hold is False


def test_onset_vad_options():
    settings = AgentOptions()
    params = build_user_aggregator_params(settings.vad, settings.turn, resolve_policy(settings.turn, telephony=False))
    vad = params.vad_analyzer
    assert isinstance(vad, OnsetSileroVADAnalyzer) and vad.bridge_s == 0.064 and vad.raw_onset_volume
    settings.vad = settings.vad.model_copy(update={"onset_bridge_s": 0.0, "onset_volume": "smoothed"})
    params = build_user_aggregator_params(settings.vad, settings.turn, resolve_policy(settings.turn, telephony=False))
    assert params.vad_analyzer.bridge_s == 0.0 and not params.vad_analyzer.raw_onset_volume


def test_barge_in_off_means_no_interruptions():
    s = build_user_turn_strategies(turn_settings(barge_in=False), echo_guard=True)
    assert all(not x._enable_interruptions for x in s.start if not isinstance(x, LateTranscriptUserTurnStartStrategy))
    assert not any(
        isinstance(x, (EchoGuardUserTurnStartStrategy, FalseInterruptionUserTurnStopStrategy))
        for x in [*s.start, *s.stop]
    )


def test_echo_guard_auto_follows_the_client():
    assert echo_guard_enabled(turn_settings(), telephony=True)
    assert not echo_guard_enabled(turn_settings(), telephony=False)
    assert echo_guard_enabled(turn_settings(echo_guard="on"), telephony=False)
    assert not echo_guard_enabled(turn_settings(echo_guard="off"), telephony=True)


def test_telephony_detection():
    from pipecat.serializers.twilio import TwilioFrameSerializer

    serializer = TwilioFrameSerializer("sid", params=TwilioFrameSerializer.InputParams(auto_hang_up=False))
    twilio = SimpleNamespace(_params=SimpleNamespace(serializer=serializer, audio_in_sample_rate=None))
    browser = SimpleNamespace(_params=SimpleNamespace(serializer=None, audio_in_sample_rate=16000))
    eight_k = SimpleNamespace(_params=SimpleNamespace(audio_in_sample_rate=8000))
    assert is_telephony_transport(twilio) and is_telephony_transport(eight_k)
    assert not is_telephony_transport(browser) and not is_telephony_transport(object())


def test_aggregator_params():
    settings = AgentOptions()
    settings.vad = settings.vad.model_copy(update={"start_secs": 0.15, "stop_secs": 0.3})
    params = build_user_aggregator_params(
        settings.vad, settings.turn, resolve_policy(settings.turn, telephony=False), stt_name="x"
    )
    assert params.vad_analyzer.params.start_secs == 0.15 and params.vad_analyzer.params.stop_secs == 0.3
    assert params.empty_user_turn is None  # our resume replaces pipecat's "ask to repeat"
    settings.turn = settings.turn.model_copy(update={"false_interruption_timeout_s": None})
    params = build_user_aggregator_params(settings.vad, settings.turn, resolve_policy(settings.turn, telephony=False))
    assert params.empty_user_turn is not None


# --- unspoken remainder ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply,played,remainder",
    [
        ("It is sunny in Paris today. Enjoy!", "It is sunny in", "Paris today. Enjoy!"),
        ("It is sunny in Paris today.", "", "It is sunny in Paris today."),
        ("It is sunny in Paris today.", "It is sunny in Paris today.", ""),
        ("Hello, world. How  are\nyou?", "hello world how", "are you?"),  # case, punctuation, whitespace
        ("one two three four five", "one too three", "four five"),  # a word the TTS spelled differently
    ],
)
def test_unspoken_remainder(reply, played, remainder):
    assert unspoken_remainder(reply, played) == remainder


# --- echo guard through the real user aggregator -----------------------------------------------------------------


def audio(seconds: float) -> list[InputAudioRawFrame]:
    n = round(seconds / 0.02)
    return [InputAudioRawFrame(audio=bytes(640), sample_rate=16000, num_channels=1) for _ in range(n)]


def aggregator(start, stop=None) -> LLMUserAggregator:
    strategies = UserTurnStrategies(start=start, stop=stop or [SpeechTimeoutUserTurnStopStrategy()])
    return LLMUserAggregator(LLMContext(), params=LLMUserAggregatorParams(user_turn_strategies=strategies))


def names(frames) -> list[str]:
    return [type(f).__name__ for f in frames if not isinstance(f, (InputAudioRawFrame, MetricsFrame))]


async def test_echo_guard_drops_a_short_burst_and_its_transcript():
    guard = EchoGuardUserTurnStartStrategy(window_s=1.5, min_speech_s=0.5)
    agg = aggregator([guard, VADUserTurnStartStrategy(), TranscriptionUserTurnStartStrategy()])
    down, _ = await run_test(
        agg,
        frames_to_send=[
            BotStartedSpeakingFrame(),
            *audio(0.3),
            VADUserStartedSpeakingFrame(start_secs=0.2),
            *audio(0.24),
            VADUserStoppedSpeakingFrame(stop_secs=0.2),
            TranscriptionFrame("woof woof", "", time_now_iso8601()),
            *audio(0.1),
        ],
    )
    assert "UserStartedSpeakingFrame" not in names(down) and "InterruptionFrame" not in names(down)
    assert guard.suppressed_segments == 1 and agg.aggregation_string() == ""


async def test_echo_guard_lets_sustained_speech_start_a_turn_after_min_speech():
    guard = EchoGuardUserTurnStartStrategy(window_s=1.5, min_speech_s=0.5)
    agg = aggregator([guard, VADUserTurnStartStrategy()])
    frames = [BotStartedSpeakingFrame(), VADUserStartedSpeakingFrame(start_secs=0.2), *audio(0.48)]
    down, _ = await run_test(agg, frames_to_send=frames)
    # 0.2 + 0.48 s with no VAD stop: but its last 0.2 s (the VAD's stop_secs) may be the silence a stop waits for
    assert "UserStartedSpeakingFrame" not in names(down)
    agg = aggregator([EchoGuardUserTurnStartStrategy(window_s=1.5, min_speech_s=0.5), VADUserTurnStartStrategy()])
    down, _ = await run_test(agg, frames_to_send=[*frames[:2], *audio(0.52)])
    assert names(down).count("UserStartedSpeakingFrame") == 1 and "InterruptionFrame" in names(down)


async def test_echo_guard_words_and_outside_the_window():
    guard = EchoGuardUserTurnStartStrategy(window_s=1.5, min_speech_s=0.5, min_words=2)
    agg = aggregator([guard, VADUserTurnStartStrategy()])
    down, _ = await run_test(
        agg,
        frames_to_send=[
            BotStartedSpeakingFrame(),
            VADUserStartedSpeakingFrame(start_secs=0.2),
            *audio(0.1),
            InterimTranscriptionFrame("wait a", "", time_now_iso8601()),
        ],
    )
    assert names(down).count("UserStartedSpeakingFrame") == 1  # two words in an interim: a real interruption
    guard = EchoGuardUserTurnStartStrategy(window_s=1.5, min_speech_s=0.5)
    agg = aggregator([guard, VADUserTurnStartStrategy()])
    down, _ = await run_test(
        agg,
        frames_to_send=[
            BotStartedSpeakingFrame(),
            *audio(1.6),
            VADUserStartedSpeakingFrame(start_secs=0.2),
        ],
    )
    assert names(down).count("UserStartedSpeakingFrame") == 1 and guard.suppressed_segments == 0  # window over
    agg = aggregator([EchoGuardUserTurnStartStrategy(), VADUserTurnStartStrategy()])
    down, _ = await run_test(
        agg,
        frames_to_send=[
            BotStartedSpeakingFrame(),
            BotStoppedSpeakingFrame(),
            VADUserStartedSpeakingFrame(start_secs=0.2),
        ],
    )
    assert names(down).count("UserStartedSpeakingFrame") == 1  # the bot is silent: nothing to guard


# --- barge-in decision through the real user aggregator -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, words",
    [
        ("mhm", []),
        ("Uh-huh.", []),
        ("yeah, yeah. I see!", []),
        ("okay, got it", []),
        ("Mm-hmm, right", []),
        ("haha", []),
        ("okay wait", ["wait"]),
        ("Stop.", ["stop"]),
        ("no, I meant Lyon", ["no", "i", "meant", "lyon"]),
        ("I see what you mean but", ["what", "you", "mean", "but"]),
        ("", []),
    ],
)
def test_interrupting_words(text, words):
    assert interrupting_words(text) == words


@pytest.mark.parametrize(
    "text, closed, open_",
    [
        ("I", ["i"], []),  # "I" may become "I see"
        ("yeah all", ["all"], []),  # "all right"
        ("okay thank", ["thank"], []),  # "thank you"
        ("I meant", ["i", "meant"], ["i", "meant"]),  # no phrase goes on like that
        ("stop", ["stop"], ["stop"]),
    ],
)
def test_words_that_may_begin_a_backchannel_wait_while_more_may_follow(text, closed, open_):
    assert interrupting_words(text) == closed and interrupting_words(text, open_end=True) == open_


STT = "stt#0"


def stt_done() -> SegmentTranscribedFrame:
    return SegmentTranscribedFrame()


def final(text: str) -> TranscriptionFrame:
    return TranscriptionFrame(text, "", time_now_iso8601(), finalized=True)


def decider(**kw) -> tuple[BargeInDecisionUserTurnStartStrategy, LLMUserAggregator]:
    kw.setdefault("hold", PlaybackHold())
    decide = BargeInDecisionUserTurnStartStrategy(stt_name=STT, **kw)
    return decide, aggregator([decide, VADUserTurnStartStrategy(), TranscriptionUserTurnStartStrategy()])


def over_the_bot(sound_s: float, *after) -> list:
    """The bot speaks; 0.3 s later a sound of ``sound_s`` (its VAD start and stop), then ``after``."""
    return [
        BotStartedSpeakingFrame(),
        *audio(0.3),
        VADUserStartedSpeakingFrame(start_secs=0.2),
        *audio(sound_s - 0.2),
        VADUserStoppedSpeakingFrame(stop_secs=0.2),
        *after,
    ]


async def test_backchannel_holds_then_resumes_without_a_turn():
    decide, agg = decider()
    down, _ = await run_test(agg, frames_to_send=over_the_bot(0.66, final("mhm"), stt_done(), SleepFrame(0.2)))
    assert "UserStartedSpeakingFrame" not in names(down) and "InterruptionFrame" not in names(down)
    assert (decide.hold.holds, decide.hold.releases, decide.hold.drops) == (1, 1, 0) and not decide.hold.held
    assert [(d.outcome, d.reason, d.words) for d in decide.decisions] == [("resume", "backchannel", "mhm")]
    assert agg.aggregation_string() == ""  # the "mhm" is not kept for the next turn


async def test_a_sound_with_no_words_resumes_once_the_stt_has_answered():
    decide, agg = decider()
    down, _ = await run_test(agg, frames_to_send=over_the_bot(1.2, SleepFrame(0.3), stt_done(), SleepFrame(0.2)))
    assert "UserStartedSpeakingFrame" not in names(down)
    assert [(d.outcome, d.reason) for d in decide.decisions] == [("resume", "no words")]
    assert 1.19 <= decide.decisions[0].speech_s <= 1.21  # counted in audio from the onset


async def test_words_that_are_not_backchannels_interrupt():
    decide, agg = decider()
    down, _ = await run_test(agg, frames_to_send=over_the_bot(0.37, final("Stop."), stt_done(), SleepFrame(0.1)))
    assert names(down).count("UserStartedSpeakingFrame") == 1 and "InterruptionFrame" in names(down)
    assert (decide.hold.drops, decide.hold.releases) == (1, 0)
    assert [(d.outcome, d.reason, d.words) for d in decide.decisions] == [("interrupt", "words", "Stop.")]
    # the turn's first words (run_test's EndFrame closed the turn: they went to the context)
    assert [m["content"] for m in agg._context.get_messages()] == ["Stop."]


async def test_interim_words_interrupt_while_the_user_still_speaks():
    decide, agg = decider()
    frames = [
        BotStartedSpeakingFrame(),
        VADUserStartedSpeakingFrame(start_secs=0.2),
        *audio(0.1),
        InterimTranscriptionFrame("yeah", "", time_now_iso8601()),  # a backchannel so far: still held
        *audio(0.1),
    ]
    down, _ = await run_test(agg, frames_to_send=frames)
    assert "UserStartedSpeakingFrame" not in names(down)
    assert decide.hold.holds == 1 and decide.decisions == []  # held until the end of the run (then released)
    decide, agg = decider()
    down, _ = await run_test(
        agg, frames_to_send=[*frames, InterimTranscriptionFrame("yeah but wait", "", time_now_iso8601())]
    )
    assert names(down).count("UserStartedSpeakingFrame") == 1
    assert [(d.outcome, d.reason) for d in decide.decisions] == [("interrupt", "words")]


async def test_a_word_that_may_begin_a_backchannel_waits_for_the_next():
    """The word "I" then (0.3 s later, a VAD segment of its own) "see": the first segment's "I" does not interrupt while
    "see" may follow; "I" alone, with nothing after it, does."""
    decide, agg = decider(prefix_wait_s=0.4)
    frames = over_the_bot(
        0.3,
        final("I"),
        stt_done(),
        *audio(0.1),
        VADUserStartedSpeakingFrame(start_secs=0.2),
        *audio(0.3),
        VADUserStoppedSpeakingFrame(stop_secs=0.2),
        final("see"),
        stt_done(),
        SleepFrame(0.2),
    )
    down, _ = await run_test(agg, frames_to_send=frames)
    assert "UserStartedSpeakingFrame" not in names(down)
    assert [(d.outcome, d.words) for d in decide.decisions] == [("resume", "I see")]
    decide, agg = decider(prefix_wait_s=0.2)
    down, _ = await run_test(agg, frames_to_send=over_the_bot(0.3, final("I"), stt_done(), SleepFrame(0.4)))
    assert names(down).count("UserStartedSpeakingFrame") == 1
    assert [(d.outcome, d.reason) for d in decide.decisions] == [("interrupt", "words")]


async def test_a_long_sound_interrupts_without_words():
    decide, agg = decider(min_speech_s=0.8)
    frames = [BotStartedSpeakingFrame(), VADUserStartedSpeakingFrame(start_secs=0.2), *audio(0.58)]
    down, _ = await run_test(agg, frames_to_send=frames)
    assert "UserStartedSpeakingFrame" not in names(down)  # 0.2 + 0.58 s < 0.8 s
    decide, agg = decider(min_speech_s=0.8)
    down, _ = await run_test(agg, frames_to_send=[*frames, *audio(0.04)])
    assert names(down).count("UserStartedSpeakingFrame") == 1
    assert [(d.outcome, d.reason) for d in decide.decisions] == [("interrupt", "sustained sound")]


async def test_a_slow_stt_is_waited_for_while_the_bot_is_held():
    """The STT's verdict comes 0.35 s after the sound (longer than ``verdict_timeout_s``): the bot stays held until
    it does, then "stop it" interrupts without the bot having played on; "okay" resumes it."""
    decide, agg = decider(verdict_timeout_s=0.2)
    down, _ = await run_test(
        agg,
        frames_to_send=over_the_bot(0.4, SleepFrame(0.35), final("stop it"), stt_done(), SleepFrame(0.1)),
    )
    assert [(d.outcome, d.reason) for d in decide.decisions] == [("interrupt", "words")]
    assert names(down).count("UserStartedSpeakingFrame") == 1 and decide.hold.releases == 0
    decide, agg = decider(verdict_timeout_s=0.2)
    down, _ = await run_test(
        agg, frames_to_send=over_the_bot(0.4, SleepFrame(0.35), final("okay"), stt_done(), SleepFrame(0.1))
    )
    assert "UserStartedSpeakingFrame" not in names(down) and agg.aggregation_string() == ""
    assert [(d.outcome, d.reason) for d in decide.decisions] == [("resume", "backchannel")]


async def test_a_broken_stt_resumes_at_the_grace_and_late_words_still_interrupt():
    decide, agg = decider(stt_grace_s=0.2)
    down, _ = await run_test(
        agg,
        frames_to_send=over_the_bot(0.4, SleepFrame(0.35), final("stop it"), stt_done(), SleepFrame(0.1)),
    )
    assert [(d.outcome, d.reason) for d in decide.decisions] == [("resume", "stt timeout"), ("interrupt", "late words")]
    assert names(down).count("UserStartedSpeakingFrame") == 1 and decide.hold.releases == 1
    decide, agg = decider(stt_grace_s=0.2)
    down, _ = await run_test(
        agg, frames_to_send=over_the_bot(0.4, SleepFrame(0.35), final("okay"), stt_done(), SleepFrame(0.1))
    )
    assert "UserStartedSpeakingFrame" not in names(down) and agg.aggregation_string() == ""


async def test_echo_window_needs_more_words_and_the_bot_silent_needs_none():
    decide, agg = decider(echo_window_s=1.5, echo_min_words=2)
    down, _ = await run_test(agg, frames_to_send=over_the_bot(0.4, final("sunny"), stt_done(), SleepFrame(0.2)))
    assert "UserStartedSpeakingFrame" not in names(down)  # one word in the bot's first moments: its own echo?
    decide, agg = decider(echo_window_s=1.5, echo_min_words=2)
    down, _ = await run_test(agg, frames_to_send=over_the_bot(0.4, final("no stop"), stt_done(), SleepFrame(0.2)))
    assert names(down).count("UserStartedSpeakingFrame") == 1
    decide, agg = decider()
    down, _ = await run_test(
        agg, frames_to_send=[BotStartedSpeakingFrame(), BotStoppedSpeakingFrame(), VADUserStartedSpeakingFrame()]
    )
    assert names(down).count("UserStartedSpeakingFrame") == 1 and decide.hold.holds == 0  # nothing to hold


# --- false-interruption stop strategy ---------------------------------------------------------------------------


async def test_false_interruption_ends_a_wordless_turn():
    stop = FalseInterruptionUserTurnStopStrategy(timeout_s=0.2)
    agg = aggregator([VADUserTurnStartStrategy()], [SpeechTimeoutUserTurnStopStrategy(), stop])
    down, _ = await run_test(
        agg,
        frames_to_send=[
            VADUserStartedSpeakingFrame(),
            SleepFrame(0.05),
            VADUserStoppedSpeakingFrame(),
            SleepFrame(0.4),
        ],
    )
    n = names(down)
    assert n.count("FalseInterruptionFrame") == 1
    assert n.index("FalseInterruptionFrame") < n.index("UserStoppedSpeakingFrame")
    assert stop.false_interruptions == 1


async def test_false_interruption_not_when_words_arrive():
    agg = aggregator(
        [VADUserTurnStartStrategy()],
        [SpeechTimeoutUserTurnStopStrategy(), FalseInterruptionUserTurnStopStrategy(timeout_s=0.2)],
    )
    down, _ = await run_test(
        agg,
        frames_to_send=[
            VADUserStartedSpeakingFrame(),
            VADUserStoppedSpeakingFrame(),
            SleepFrame(0.1),
            TranscriptionFrame("hello there", "", time_now_iso8601(), finalized=True),
            SleepFrame(0.4),
        ],
    )
    assert "FalseInterruptionFrame" not in names(down)


async def test_false_interruption_waits_for_a_busy_stt():
    stop = FalseInterruptionUserTurnStopStrategy(timeout_s=0.1, stt_name="stt#0")
    agg = aggregator([VADUserTurnStartStrategy()], [SpeechTimeoutUserTurnStopStrategy(), stop])
    down, _ = await run_test(
        agg,
        frames_to_send=[
            VADUserStartedSpeakingFrame(),
            VADUserStoppedSpeakingFrame(),
            SleepFrame(0.4),  # STT still working
            TranscriptionFrame("late words", "", time_now_iso8601(), finalized=True),
            SegmentTranscribedFrame(words=2),
            SleepFrame(0.4),
        ],
    )
    assert "FalseInterruptionFrame" not in names(down) and stop.false_interruptions == 0
    stop = FalseInterruptionUserTurnStopStrategy(timeout_s=0.1, stt_name="stt#0")
    agg = aggregator([VADUserTurnStartStrategy()], [SpeechTimeoutUserTurnStopStrategy(), stop])
    down, _ = await run_test(
        agg,
        frames_to_send=[
            VADUserStartedSpeakingFrame(),
            VADUserStoppedSpeakingFrame(),
            SleepFrame(0.4),
            SegmentTranscribedFrame(),
            SleepFrame(0.3),
        ],
    )
    assert names(down).count("FalseInterruptionFrame") == 1  # the STT heard nothing: resume


async def test_false_interruption_waits_for_a_transcript_queued_behind_other_frames():
    """On a loaded machine the STT's processing-time metrics (a system frame, delivered at once) reach the aggregator
    well before its transcript (a data frame, queued behind the audio): the decision waits for the transcript's
    ordered companion, not for the metrics."""
    stop = FalseInterruptionUserTurnStopStrategy(timeout_s=0.1, stt_name="stt#0")
    agg = aggregator([VADUserTurnStartStrategy()], [SpeechTimeoutUserTurnStopStrategy(), stop])
    metrics = MetricsFrame(data=[ProcessingMetricsData(processor="stt#0", value=2.9)])
    down, _ = await run_test(
        agg,
        frames_to_send=[
            VADUserStartedSpeakingFrame(),
            VADUserStoppedSpeakingFrame(),
            SleepFrame(0.4),  # the STT works for longer than the timeout
            metrics,
            SleepFrame(0.4),  # its transcript is still on its way
            TranscriptionFrame("what is the weather like", "", time_now_iso8601(), finalized=True),
            SegmentTranscribedFrame(words=5),
            SleepFrame(0.4),
        ],
    )
    assert "FalseInterruptionFrame" not in names(down) and stop.false_interruptions == 0


# --- idle interruption filter ------------------------------------------------------------------------------------


async def test_idle_interruption_filter():
    f = IdleInterruptionFilter()
    down, _ = await run_test(
        f,
        frames_to_send=[
            InterruptionFrame(),  # bot idle: dropped
            LLMFullResponseStartFrame(),
            SleepFrame(0.05),
            InterruptionFrame(),  # reply open: passed
            InterruptionFrame(),  # everything downstream was reset by the previous one: dropped
            TTSAudioRawFrame(bytes(480), 24000, 1),
            LLMFullResponseEndFrame(),
            SleepFrame(0.05),
            InterruptionFrame(),
        ],
    )
    assert names(down).count("InterruptionFrame") == 2 and f.dropped == 2


# --- reply resumer ---------------------------------------------------------------------------------------------------


@dataclass
class CallFrame(SystemFrame):
    """Runs ``fn`` when it reaches the Hook (to fire aggregator events at a set point of a run_test script)."""

    fn: object = None


class Hook(FrameProcessor):
    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, CallFrame):
            await frame.fn()
            return
        await self.push_frame(frame, direction)


def resumer_setup():
    context = LLMContext()
    _, assistant = LLMContextAggregatorPair(context)
    resumer = ReplyResumer(context=context, assistant=assistant)

    def played(text: str, interrupted: bool = True):
        message = AssistantTurnStoppedMessage(content=text, interrupted=interrupted, timestamp="")
        return CallFrame(fn=lambda: resumer._on_assistant_turn_stopped(assistant, message))

    return context, Pipeline([Hook(), resumer]), resumer, played


async def test_resumer_resends_the_unspoken_remainder_and_joins_the_context():
    context, pipeline, resumer, played = resumer_setup()
    context.add_message({"role": "user", "content": "weather?"})
    reply = "It is sunny in Paris. Take a hat."
    down, up = await run_test(
        pipeline,
        frames_to_send=[
            LLMFullResponseStartFrame(),
            LLMTextFrame("It is sunny"),
            LLMTextFrame(" in Paris. Take a hat."),
            LLMFullResponseEndFrame(),
            SleepFrame(0.05),
            InterruptionFrame(),
            SleepFrame(0.05),
            played("It is sunny"),
            FalseInterruptionFrame(),
            SleepFrame(0.05),
        ],
    )
    assert resumer.resumed == ["in Paris. Take a hat."]
    tail = [f for f in down if isinstance(f, (LLMFullResponseStartFrame, LLMTextFrame, LLMFullResponseEndFrame))][-3:]
    assert isinstance(tail[0], ResumedResponseStartFrame) and tail[1].text == "in Paris. Take a hat."
    assert not any(isinstance(f, FalseInterruptionFrame) for f in down)  # consumed
    # the aggregator wrote the played part when interrupted, then the resumed part when it was spoken
    context.add_message({"role": "assistant", "content": "It is sunny"})
    context.add_message({"role": "assistant", "content": "in Paris. Take a hat."})
    await resumer._on_assistant_turn_stopped(None, AssistantTurnStoppedMessage("in Paris. Take a hat.", False, ""))
    assert context.get_messages()[-1] == {"role": "assistant", "content": reply}
    assert len(context.get_messages()) == 2


async def test_resumer_reruns_the_llm_when_nothing_was_generated():
    _, pipeline, resumer, _ = resumer_setup()
    down, up = await run_test(
        pipeline,
        frames_to_send=[
            LLMFullResponseStartFrame(),
            SleepFrame(0.05),
            InterruptionFrame(),
            SleepFrame(0.05),
            FalseInterruptionFrame(),
            SleepFrame(0.05),
        ],
    )
    assert any(isinstance(f, LLMRunFrame) for f in up) and resumer.resumed == []


async def test_resumer_does_nothing_after_a_real_turn_or_a_finished_reply():
    _, pipeline, resumer, played = resumer_setup()
    down, up = await run_test(
        pipeline,
        frames_to_send=[
            LLMFullResponseStartFrame(),
            LLMTextFrame("One. Two."),
            SleepFrame(0.05),
            InterruptionFrame(),
            SleepFrame(0.05),
            played("One."),
            LLMFullResponseStartFrame(),
            LLMTextFrame("New answer."),  # a real turn
            SleepFrame(0.05),
            played("New answer.", interrupted=False),  # ... answered and played out
            FalseInterruptionFrame(),
            SleepFrame(0.05),
        ],
    )
    assert resumer.resumed == [] and not any(isinstance(f, LLMRunFrame) for f in up)


async def test_resumer_joins_a_reply_resumed_twice_into_one_message():
    context, pipeline, resumer, played = resumer_setup()
    context.add_message({"role": "user", "content": "weather?"})
    await run_test(
        pipeline,
        frames_to_send=[
            LLMFullResponseStartFrame(),
            LLMTextFrame("One two three four five."),
            SleepFrame(0.05),
            InterruptionFrame(),
            SleepFrame(0.05),
            played("One two"),
            FalseInterruptionFrame(),
            SleepFrame(0.05),
            InterruptionFrame(),
            SleepFrame(0.05),
            played(""),  # the resumed part cut before a word played
            FalseInterruptionFrame(),
            SleepFrame(0.05),
        ],
    )
    assert resumer.resumed == ["three four five.", "three four five."]
    context.add_message({"role": "assistant", "content": "One two"})  # what the aggregator wrote at the first cut
    context.add_message({"role": "assistant", "content": "three four five."})
    await resumer._on_assistant_turn_stopped(None, AssistantTurnStoppedMessage("three four five.", False, ""))
    assert context.get_messages()[1:] == [{"role": "assistant", "content": "One two three four five."}]
