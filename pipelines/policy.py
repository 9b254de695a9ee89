"""Turn-taking and interruption policy: its options (``VADOptions``, ``TurnOptions``: ``DUPLEX_VAD__*``,
``DUPLEX_TURN__*``), what each means, and how they become pipecat 1.14 objects.

VAD (``VADOptions``) — Silero VAD (ships in the pipecat wheel, 16 kHz) on the user aggregator:
  ``confidence`` / ``min_volume``: how sure / how loud a 32 ms window must be to count as speech;
  ``start_secs``: speech needed before "user started speaking" (the floor of barge-in latency);
  ``stop_secs``: silence needed before "user stopped speaking" (the first part of voice-to-voice latency).

  ``onset_bridge_s`` / ``onset_volume``: how the start of speech is heard (``pipelines.onset_vad``): dips up to
  ``onset_bridge_s`` do not reset a starting segment, and the loudness tested while starting is the last 0.4 s as is
  (``raw``) rather than pipecat's smoothed value, which lags ~220 ms; ``0`` / ``smoothed`` = pipecat's rule.

End of the user's turn (``turn.stop_strategy``):
  ``"endpointing"`` (default): ``pipelines.endpointing.EndpointingUserTurnStopStrategy`` — at each VAD stop the Smart
  Turn v3 model (``turn.end_of_turn_model``; CPU ONNX in the pipecat wheel, one copy per process, fed the turn's own
  audio at 16 kHz) and the words judge whether the utterance sounds finished; a finished one ends
  ``turn.complete_wait_s`` after the VAD stop, another ``turn.incomplete_wait_s`` after it, unless the user speaks
  again (the last frames' energy is checked, not only the lagging VAD). With ``turn.preemptive_generation`` the LLM
  starts on the words so far as soon as the user goes quiet; its answer is held until the turn ends and dropped
  unheard if the user goes on.
  ``"speech_timeout"`` (pipecat's): ``SpeechTimeoutUserTurnStopStrategy`` — the turn ends ``turn.stop_secs`` after
  the VAD stop, once a transcript has arrived. Predictable, but cuts off a user who pauses longer mid-sentence.
  ``"smart_turn"`` (pipecat's default, as pipecat wires it): ``TurnAnalyzerUserTurnStopStrategy(
  LocalSmartTurnAnalyzerV3)`` — one verdict at each VAD stop; an INCOMPLETE one waits up to
  ``turn.smart_turn_stop_secs`` of silence (a complete utterance it misjudges costs all of that).
  ``turn.user_turn_stop_timeout_s``: a turn with no stop signal at all (no transcript ever) ends after this.

Replies nobody heard (``turn.drop_unplayed_replies``): when the user speaks again after the turn ended but before
  any audio of the answer played, the answer is dropped without telling the client (no interruption), and what the
  user said before and after becomes one user message (``pipelines.endpointing.UnplayedReplyGate`` and
  ``UnheardTurnMerger``). ``turn.late_transcripts``: ``"join"`` — a final transcript of speech that ended before
  the last turn did (a slow STT) adds its words to that turn instead of opening a turn of its own (pipecat's
  ``"new_turn"``).

Start of the user's turn = barge-in (``turn.barge_in``): pipecat's ``VADUserTurnStartStrategy`` (a VAD start opens the
  turn and broadcasts ``InterruptionFrame``: LLM stream closed, TTS worker told to stop, queued audio dropped, assistant
  context cut to the played words) and ``TranscriptionUserTurnStartStrategy`` (a transcript while no turn is open, for
  speech the VAD missed). ``barge_in=False``: turns still start, but without ``InterruptionFrame``: the bot finishes.

Echo guard (``turn.echo_guard`` auto/on/off; ``echo_guard_window_s``, ``echo_guard_min_speech_s``,
  ``echo_guard_min_words``): during the bot's first ``window`` seconds of speech, interrupting takes ``min_speech_s`` of
  sustained speech or ``min_words`` words in an interim transcript; shorter bursts (its own voice echoed back by a
  speakerphone, a "mhm") are ignored. ``auto`` = on for telephony (8 kHz serializer transports: phones are often on
  speaker, and an echo canceller needs a moment to converge), off for browser/headset clients (they run AEC, and the
  guard's extra 0.5 s of barge-in delay, ``min_speech_s - start_secs + stop_secs`` after the VAD start, would only
  cost).
  See ``pipelines.interruptions.EchoGuardUserTurnStartStrategy``.

Barge-in decision (``turn.barge_in_hold``, on by default; ``barge_in_min_words``, ``barge_in_min_speech_s``,
  ``barge_in_verdict_timeout_s``, ``backchannels``): while the bot speaks, a VAD start pauses its audio (within one
  output chunk) instead of interrupting. Words that are not backchannels (``barge_in_min_words`` of them) or
  ``barge_in_min_speech_s`` of sound make it an interruption (the user turn starts: pipecat's interruption as usual);
  a sound that ends with no such words ("mhm", "yeah", "I see", a cough, a laugh) resumes the held audio where it
  stopped, with no user turn. It replaces the echo guard (whose window and word count it applies when the guard is
  on). Defaults: 1 word, 2.0 s of sound, 1.0 s verdict timeout. Interim transcripts can interrupt while the user
  still speaks; otherwise the verdict is taken the moment the STT has transcribed the sound's last segment
  (``SegmentTranscribedFrame``; the bot stays held until it comes, however slow the STT), so resuming costs the
  VAD's ``stop_secs`` plus the STT's time on the sound. A
  transcript ending on a word that may begin a backchannel ("I" of "I see") waits 0.4 s for the rest. On a phone
  (``turn.carrier_marks``) the hold clears the carrier's buffer and, on resume, sends the cut audio again from what
  the carrier confirmed it played. See ``pipelines.interruptions.BargeInDecisionUserTurnStartStrategy`` and
  ``pipelines.playback``.

False-interruption recovery (``turn.false_interruption_timeout_s``; None = off): a barge-in whose user turn produces no
  words within this long after the user goes quiet (a cough, a door) ends, and the bot resumes with the unspoken
  remainder of its reply. A decision due while the segmented STT is still transcribing waits for its verdict (a CPU
  STT can be slower than the timeout). While on, pipecat's own empty-turn recovery (an LLM call asking the user to
  repeat) is off. See ``pipelines.interruptions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregatorParams
from pipecat.turns.user_start import TranscriptionUserTurnStartStrategy, VADUserTurnStartStrategy
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy, TurnAnalyzerUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pydantic import BaseModel, ConfigDict, Field

from processors.audio import TELEPHONY_SAMPLE_RATE

from .interruptions import (
    BACKCHANNEL_PHRASES,
    BargeInDecisionUserTurnStartStrategy,
    EchoGuardUserTurnStartStrategy,
    FalseInterruptionUserTurnStopStrategy,
)
from .onset_vad import OnsetSileroVADAnalyzer
from .playback import PlaybackHold
from .turn_models import SharedSmartTurnAnalyzer

TELEPHONY_SERIALIZER_MODULES = ("twilio", "telnyx", "plivo", "exotel", "vonage", "genesys")


class VADOptions(BaseModel):
    """Silero VAD thresholds (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    confidence: float = Field(0.7, ge=0.0, le=1.0)
    start_secs: float = Field(0.2, ge=0.0)
    stop_secs: float = Field(0.2, ge=0.0)
    min_volume: float = Field(0.6, ge=0.0, le=1.0)
    onset_bridge_s: float = Field(0.064, ge=0.0)  # dips this short do not reset a starting segment (0: pipecat's rule)
    onset_volume: Literal["raw", "smoothed"] = "raw"  # loudness tested while speech starts (smoothed: pipecat's)


class TurnOptions(BaseModel):
    """End of turn, barge-in, echo guard and false-interruption recovery (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    stop_strategy: Literal["endpointing", "speech_timeout", "smart_turn"] = "endpointing"
    stop_secs: float = Field(0.6, ge=0.0)  # speech_timeout: silence after VAD stop that ends the user's turn
    smart_turn_stop_secs: float = Field(3.0, gt=0.0)  # smart_turn: silence that ends the turn on an INCOMPLETE verdict
    end_of_turn_model: Literal["smart_turn", "none"] = "smart_turn"  # endpointing: judges whether the user finished
    complete_wait_s: float = Field(0.1, ge=0.0)  # endpointing: silence after the VAD stop when it sounds finished
    incomplete_wait_s: float = Field(1.0, ge=0.0)  # endpointing: ... when it does not (a pause of 1 s holds)
    complete_threshold: float = Field(0.5, ge=0.0, le=1.0)  # endpointing: the model's P(finished) that counts
    preemptive_generation: bool = True  # endpointing: start the LLM when the user goes quiet (held, or dropped)
    drop_unplayed_replies: bool = True  # the user speaks again before the answer played: drop it, one message
    late_transcripts: Literal["join", "new_turn"] = "join"  # a transcript after its turn ended
    user_turn_stop_timeout_s: float = Field(5.0, gt=0.0)  # a turn with no stop signal at all ends after this
    barge_in: bool = True  # False: the user cannot interrupt the bot (speech while it talks still forms a turn)
    false_interruption_timeout_s: float | None = Field(1.5, gt=0.0)  # resume after a barge-in with no words
    echo_guard: Literal["auto", "on", "off"] = "auto"  # auto: on for telephony, off for headset clients
    echo_guard_window_s: float = Field(1.5, ge=0.0)  # the bot's first moments of speech that the guard protects
    echo_guard_min_speech_s: float = Field(0.5, ge=0.0)  # sustained speech needed to interrupt inside the window
    echo_guard_min_words: int = Field(2, ge=1)  # ... or this many words in an interim transcript
    barge_in_hold: bool = True  # speech over the bot pauses it until judged: interruption, or resume where it stopped
    barge_in_min_words: int = Field(1, ge=1)  # words that are not backchannels needed to interrupt
    barge_in_min_speech_s: float = Field(2.0, gt=0.0)  # ... or this much sound (from its onset) without such words
    # after the sound ends, longest wait for the words of an STT that does not say when it is done (ours do: their
    # verdict is waited for, up to 10 s)
    barge_in_verdict_timeout_s: float = Field(1.0, gt=0.0)
    backchannels: list[str] = Field(default_factory=lambda: list(BACKCHANNEL_PHRASES))  # phrases that never interrupt
    carrier_marks: bool = True  # phone calls: the carrier confirms what it played (marks); the context holds that


def build_vad_analyzer(vad: VADOptions, sample_rate: int | None = None) -> OnsetSileroVADAnalyzer:
    """Silero VAD with the configured thresholds and onset rule: a fresh analyzer per session (it keeps the stream's
    state) on the process's one Silero model (``pipelines.turn_models``). The rate is the pipeline's input rate
    unless given (Silero takes 8 or 16 kHz)."""
    params = VADParams(
        confidence=vad.confidence, start_secs=vad.start_secs, stop_secs=vad.stop_secs, min_volume=vad.min_volume
    )
    return OnsetSileroVADAnalyzer(
        sample_rate=sample_rate,
        params=params,
        bridge_s=vad.onset_bridge_s,
        raw_onset_volume=vad.onset_volume == "raw",
    )


def is_telephony_transport(transport: Any) -> bool:
    """A websocket transport with a phone-carrier serializer, or any transport whose input is 8 kHz."""
    params = getattr(transport, "_params", None)
    serializer = getattr(params, "serializer", None)
    if serializer is not None:
        modules = [cls.__module__ for cls in type(serializer).__mro__]  # subclasses of a carrier's serializer count
        if any(f"serializers.{name}" in module for name in TELEPHONY_SERIALIZER_MODULES for module in modules):
            return True
    return getattr(params, "audio_in_sample_rate", None) == TELEPHONY_SAMPLE_RATE


def echo_guard_enabled(turn: TurnOptions, *, telephony: bool) -> bool:
    """``on``/``off`` as set; ``auto`` = on for telephony clients, off for browser/headset clients."""
    if turn.echo_guard == "auto":
        return telephony
    return turn.echo_guard == "on"


def build_stop_strategy(turn: TurnOptions, *, stt_reports_segments: bool = False):
    """The stop strategy ``turn.stop_strategy`` names, configured. ``stt_reports_segments``: the STT is an
    ``EngineSTTService`` (it reports every segment it transcribed, so the turn can wait for its words)."""
    if turn.stop_strategy == "endpointing":
        from .endpointing import EndpointingUserTurnStopStrategy, SmartTurnJudge

        return EndpointingUserTurnStopStrategy(
            judge=SmartTurnJudge() if turn.end_of_turn_model == "smart_turn" else None,
            complete_wait_s=turn.complete_wait_s,
            incomplete_wait_s=turn.incomplete_wait_s,
            threshold=turn.complete_threshold,
            preemptive=turn.preemptive_generation,
            wait_for_stt=stt_reports_segments,
        )
    if turn.stop_strategy == "smart_turn":
        from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams

        analyzer = SharedSmartTurnAnalyzer(params=SmartTurnParams(stop_secs=turn.smart_turn_stop_secs))
        return TurnAnalyzerUserTurnStopStrategy(turn_analyzer=analyzer)
    return SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=turn.stop_secs)


def build_user_turn_strategies(
    turn: TurnOptions,
    *,
    echo_guard: bool,
    stt_name: str | None = None,
    stt_reports_segments: bool = False,
    hold: PlaybackHold | None = None,
    vad_stop_secs: float = VADOptions().stop_secs,
) -> UserTurnStrategies:
    """Start strategies (barge-in decision or echo guard, VAD, transcription) and stop strategies (speech timeout or
    Smart Turn, then false-interruption recovery) for ``LLMUserAggregatorParams.user_turn_strategies``. ``stt_name``:
    the STT processor's name, so decisions wait for its verdict on the speech. ``hold``: the session's
    ``PlaybackHold`` (installed on its output transport), needed for ``turn.barge_in_hold``. ``vad_stop_secs``: the
    VAD's ``stop_secs``, which the echo guard's speech count allows for."""
    interrupt = turn.barge_in
    start: list = []
    if interrupt and turn.barge_in_hold and hold is not None:
        start.append(
            BargeInDecisionUserTurnStartStrategy(
                hold=hold,
                min_words=turn.barge_in_min_words,
                min_speech_s=turn.barge_in_min_speech_s,
                verdict_timeout_s=turn.barge_in_verdict_timeout_s,
                backchannels=turn.backchannels,
                stt_name=stt_name,
                echo_window_s=turn.echo_guard_window_s if echo_guard else 0.0,
                echo_min_words=turn.echo_guard_min_words,
            )
        )
    elif echo_guard and interrupt:
        start.append(
            EchoGuardUserTurnStartStrategy(
                window_s=turn.echo_guard_window_s,
                min_speech_s=turn.echo_guard_min_speech_s,
                min_words=turn.echo_guard_min_words,
                stop_secs=vad_stop_secs,
            )
        )
    start.append(VADUserTurnStartStrategy(enable_interruptions=interrupt))
    if turn.late_transcripts == "join":
        from .endpointing import LateTranscriptUserTurnStartStrategy

        start.append(LateTranscriptUserTurnStartStrategy())
    start.append(TranscriptionUserTurnStartStrategy(enable_interruptions=interrupt))
    stop: list = [build_stop_strategy(turn, stt_reports_segments=stt_reports_segments)]
    if turn.false_interruption_timeout_s is not None and interrupt:
        stop.append(
            FalseInterruptionUserTurnStopStrategy(timeout_s=turn.false_interruption_timeout_s, stt_name=stt_name)
        )
    return UserTurnStrategies(start=start, stop=stop)


@dataclass(frozen=True)
class TurnPolicy:
    """The policy resolved for one session (what ``auto`` became), for logs and tests."""

    stop_strategy: str
    barge_in: bool
    barge_in_hold: bool
    echo_guard: bool
    false_interruption_timeout_s: float | None
    telephony: bool

    @property
    def false_interruption_recovery(self) -> bool:
        return self.barge_in and self.false_interruption_timeout_s is not None


def resolve_policy(turn: TurnOptions, *, telephony: bool) -> TurnPolicy:
    return TurnPolicy(
        stop_strategy=turn.stop_strategy,
        barge_in=turn.barge_in,
        barge_in_hold=turn.barge_in and turn.barge_in_hold,
        echo_guard=echo_guard_enabled(turn, telephony=telephony) and turn.barge_in,
        false_interruption_timeout_s=turn.false_interruption_timeout_s,
        telephony=telephony,
    )


def build_user_aggregator_params(
    vad: VADOptions,
    turn: TurnOptions,
    policy: TurnPolicy,
    *,
    stt_name: str | None = None,
    stt_reports_segments: bool = False,
    hold: PlaybackHold | None = None,
) -> LLMUserAggregatorParams:
    """VAD + turn strategies + timeouts for the user aggregator."""
    kwargs: dict[str, Any] = {}
    if policy.false_interruption_recovery:
        kwargs["empty_user_turn"] = None  # our resume replaces pipecat's "ask to repeat" LLM call
    return LLMUserAggregatorParams(
        vad_analyzer=build_vad_analyzer(vad),
        user_turn_strategies=build_user_turn_strategies(
            turn,
            echo_guard=policy.echo_guard,
            stt_name=stt_name,
            stt_reports_segments=stt_reports_segments,
            hold=hold,
            vad_stop_secs=vad.stop_secs,
        ),
        user_turn_stop_timeout=turn.user_turn_stop_timeout_s,
        **kwargs,
    )
