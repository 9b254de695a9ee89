"""Per-turn voice-to-voice latency with its breakdown, and barge-in stop latency, as a pipecat observer.

Times are seconds on the pipeline clock (``FramePushed.timestamp``), the same clock the virtual transport records
with, so observer and transport timelines line up.

One ``TurnMetrics`` per user turn (``UserStartedSpeakingFrame`` from the user aggregator):

    speech_end ─ vad_stop ─ user_turn_end ─ llm_request ─ first_sentence ─ tts_first_audio ─ bot_started
                  (transcript_at somewhere after vad_stop)

* ``vad_stop_wait``      speech end -> ``VADUserStoppedSpeakingFrame`` (VAD ``stop_secs`` + Silero's own lag;
                          ``speech_end`` is ``vad_stop - stop_secs`` unless ground truth is applied)
* ``turn_end_wait``      VAD stop -> end of the user turn (stop strategy: speech timeout / Smart Turn; for a
                          segmented STT it includes waiting for the transcript)
* ``stt``                VAD stop -> final ``TranscriptionFrame`` (overlaps ``turn_end_wait``)
* ``llm_first_sentence`` ``LLMContextFrame`` -> the TTS starts the first sentence (``TTSStartedFrame`` /
                          ``AggregatedTextFrame``): model TTFB + tokens up to the first sentence end; with
                          preemptive generation the request is the early one made while the turn was open (so it
                          can start before the turn's end and overlap ``turn_end_wait``)
* ``tts_first_audio``    first sentence -> first ``TTSAudioRawFrame`` out of the TTS
* ``output``             first TTS audio -> ``BotStartedSpeakingFrame`` (output transport queue/chunking)
* ``voice_to_voice``     speech end -> ``BotStartedSpeakingFrame`` (the first bot audio handed to the client)

``BargeInMetrics`` when a user turn starts while the bot is speaking: speech onset (VAD start minus ``start_secs``,
or ground truth), VAD start, the ``InterruptionFrame`` leaving the user aggregator and reaching the output, and the
end of the last bot audio chunk the output transport wrote (its push after the write: the write paces playback, so
this is when the client's audio actually stopped). ``stop_latency_from_vad`` / ``stop_latency_from_onset``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    AggregatedTextFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EagerEndOfTurnCancelFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection

from .interruptions import ResumedResponseStartFrame


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


@dataclass
class BargeInMetrics:
    """How fast the bot went quiet when the user spoke over it (seconds, pipeline clock)."""

    vad_start: float
    speech_onset: float  # vad_start - VAD start_secs, or ground truth
    interruption: float | None = None  # InterruptionFrame broadcast by the user aggregator
    interruption_at_output: float | None = None  # ... reaching the output transport
    last_bot_audio: float | None = None  # end of the last bot audio chunk written after (or just before) it
    _open: bool = field(default=True, repr=False)

    @property
    def stop_latency_from_vad(self) -> float | None:
        return _diff(self.vad_start, self.last_bot_audio)

    @property
    def stop_latency_from_onset(self) -> float | None:
        return _diff(self.speech_onset, self.last_bot_audio)


@dataclass
class TurnMetrics:
    """One user turn and the bot's answer to it (seconds, pipeline clock; None = did not happen)."""

    index: int
    user_turn_start: float
    vad_start: float | None = None
    speech_start: float | None = None
    vad_stop: float | None = None  # the last VAD stop of the turn
    vad_stop_secs: float = 0.0  # the VAD's stop_secs: ``vad_stop - vad_stop_secs`` is where it heard speech end
    speech_end: float | None = None
    user_turn_end: float | None = None
    transcript_at: float | None = None
    transcript: str = ""
    llm_request_at: float | None = None
    llm_first_text_at: float | None = None
    first_sentence_at: float | None = None
    tts_first_audio_at: float | None = None
    bot_started_at: float | None = None
    interrupted_bot: bool = False  # the turn started while the bot was speaking
    resumed: bool = False  # the answer was the resumed remainder of the interrupted reply (false interruption)
    speculative_request_at: float | None = None  # an early (speculative) LLM request while the turn was open
    preemptive: bool = False  # the answer was that early request, confirmed when the turn ended
    barge_in: BargeInMetrics | None = None

    @property
    def vad_stop_wait(self) -> float | None:
        return _diff(self.speech_end, self.vad_stop)

    @property
    def turn_end_wait(self) -> float | None:
        return _diff(self.vad_stop, self.user_turn_end)

    @property
    def stt(self) -> float | None:
        return _diff(self.vad_stop, self.transcript_at)

    @property
    def llm_ttfb(self) -> float | None:
        return _diff(self.llm_request_at, self.llm_first_text_at)

    @property
    def llm_first_sentence(self) -> float | None:
        return _diff(self.llm_request_at, self.first_sentence_at)

    @property
    def tts_first_audio(self) -> float | None:
        return _diff(self.first_sentence_at, self.tts_first_audio_at)

    @property
    def output(self) -> float | None:
        return _diff(self.tts_first_audio_at, self.bot_started_at)

    @property
    def voice_to_voice(self) -> float | None:
        return _diff(self.speech_end, self.bot_started_at)

    def breakdown(self) -> dict[str, float | None]:
        return {
            "voice_to_voice": self.voice_to_voice,
            "vad_stop_wait": self.vad_stop_wait,
            "turn_end_wait": self.turn_end_wait,
            "stt": self.stt,
            "llm_ttfb": self.llm_ttfb,
            "llm_first_sentence": self.llm_first_sentence,
            "tts_first_audio": self.tts_first_audio,
            "output": self.output,
        }

    def summary(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f}"

        parts = " ".join(f"{k}={ms(v)}" for k, v in self.breakdown().items())
        text = f" transcript={self.transcript!r}" if self.transcript else ""
        flags = " resumed" if self.resumed else ""
        return f"turn {self.index}: {parts} (ms){flags}{text}"


class VoiceMetricsObserver(BaseObserver):
    """Collects ``TurnMetrics`` (``.turns``) from the frames the pipeline pushes; logs each turn and barge-in.

    ``bind`` tells it which processors are the user aggregator, STT, LLM, TTS, output transport (and the reply
    resumer): frames are attributed by their source, so duplicates of broadcast frames are not double-counted.
    """

    def __init__(self, *, log: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.turns: list[TurnMetrics] = []
        self._log = log
        self._roles: dict[int, str] = {}
        self._vad_start: tuple[float, float] | None = None  # (time, start_secs)
        self._bot_speaking = False
        self._last_audio_out: float | None = None
        self._open_barge_in: BargeInMetrics | None = None
        self._loose_transcripts: list[tuple[float, str]] = []  # (time, text) while no turn was open
        self._loose_vad_stop: tuple[float, float] | None = None  # the last VAD stop while no turn was open
        self._playback: Any = None  # the output's PlaybackHold, if the bot holds on speech over it

    def bind(self, *, playback: Any = None, **processors: Any) -> None:
        """``user=``, ``stt=``, ``llm=``, ``tts=``, ``output=``, ``resumer=`` (any may be None); ``playback=``: the
        output's ``PlaybackHold`` (a barge-in held before it was decided is timed from the hold)."""
        if playback is not None:
            self._playback = playback
        for role, processor in processors.items():
            if processor is not None:
                self._roles[id(processor)] = role

    def _held_from(self, t: float) -> float | None:
        """When the hold began, if the turn starting at ``t`` ends one (its last events: hold ... drop, just now)."""
        events = self._playback.events if self._playback is not None else []
        if len(events) < 2 or events[-1].kind != "drop" or t - events[-1].t > 0.1:
            return None
        holds = [e for e in events if e.kind == "hold"]
        return holds[-1].t if holds else None

    @property
    def current(self) -> TurnMetrics | None:
        return self.turns[-1] if self.turns else None

    @property
    def barge_ins(self) -> list[BargeInMetrics]:
        return [t.barge_in for t in self.turns if t.barge_in is not None]

    async def on_push_frame(self, data: FramePushed):
        t = data.timestamp / 1e9
        if isinstance(data.frame, InterruptionFrame) and self._roles.get(id(data.destination)) == "output":
            self._interruption_at_output(t)
        source = self._roles.get(id(data.source))
        if source is not None and data.direction == FrameDirection.DOWNSTREAM:
            getattr(self, f"_on_{source}")(data.frame, t)

    # -- per source --------------------------------------------------------------------------------------------

    def _on_user(self, frame, t: float) -> None:
        turn = self.current
        if isinstance(frame, VADUserStartedSpeakingFrame):
            # a VAD start inside an open turn (speech resumed before the turn ended) belongs to that turn; only one
            # outside a turn can start the next turn
            if turn is None or turn.user_turn_end is not None:
                self._vad_start = (t, frame.start_secs or 0.0)
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            if turn is not None and turn.user_turn_end is None:
                turn.vad_stop = t
                turn.vad_stop_secs = frame.stop_secs or 0.0
                turn.speech_end = t - turn.vad_stop_secs
            else:
                self._loose_vad_stop = (t, frame.stop_secs or 0.0)
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._start_turn(t)
        elif isinstance(frame, InterruptionFrame):
            if turn is not None and turn.barge_in is not None and turn.barge_in.interruption is None:
                turn.barge_in.interruption = t
        elif isinstance(frame, UserStoppedSpeakingFrame):
            if turn is not None and turn.user_turn_end is None:
                turn.user_turn_end = t
                if turn.llm_request_at is None and turn.speculative_request_at is not None:
                    turn.llm_request_at = turn.speculative_request_at  # the early answer is this turn's answer
                    turn.preemptive = True
        elif isinstance(frame, LLMContextFrame):
            if turn is None or turn.llm_request_at is not None:
                return
            if getattr(frame, "speculation", False):
                # an early answer while the turn is open: its request time counts once the turn ends on it
                turn.speculative_request_at = t
                return
            turn.llm_request_at = t
            # the aggregator runs the LLM just before it announces the turn's end
            turn.user_turn_end = turn.user_turn_end or t
        elif isinstance(frame, EagerEndOfTurnCancelFrame):
            if turn is not None:
                turn.speculative_request_at = None  # withdrawn: the user went on

    def _on_stt(self, frame, t: float) -> None:
        turn = self.current
        if isinstance(frame, TranscriptionFrame) and frame.text.strip() and (turn is None or turn.user_turn_end):
            # words of speech that has not opened a turn (yet): a turn that a held barge-in starts on them owns them
            self._loose_transcripts.append((t, frame.text.strip()))
        if turn is None or turn.llm_request_at is not None:
            return
        if isinstance(frame, TranscriptionFrame) and frame.text.strip():
            turn.transcript_at = t
            turn.transcript = f"{turn.transcript} {frame.text.strip()}".strip()

    def _on_llm(self, frame, t: float) -> None:
        turn = self.current
        if isinstance(frame, LLMTextFrame) and turn is not None and turn.llm_request_at is not None:
            if turn.llm_first_text_at is None:
                turn.llm_first_text_at = t

    def _on_resumer(self, frame, t: float) -> None:
        turn = self.current
        if isinstance(frame, ResumedResponseStartFrame) and turn is not None:
            turn.resumed = True  # its "LLM request" is the resume itself
            turn.llm_request_at = turn.llm_request_at or t

    def _on_tts(self, frame, t: float) -> None:
        turn = self.current
        if isinstance(frame, (TTSStartedFrame, LLMFullResponseStartFrame)):
            self._close_barge_in()
        if turn is None or turn.llm_request_at is None:
            return
        announced = isinstance(frame, AggregatedTextFrame) and not isinstance(frame, TTSTextFrame)
        if isinstance(frame, TTSStartedFrame) or announced:
            if turn.first_sentence_at is None:
                turn.first_sentence_at = t
        elif isinstance(frame, TTSAudioRawFrame) and turn.tts_first_audio_at is None:
            turn.tts_first_audio_at = t

    def _on_output(self, frame, t: float) -> None:
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
            turn = self.current
            if turn is not None and turn.llm_request_at is not None and turn.bot_started_at is None:
                turn.bot_started_at = t
                if self._log:
                    logger.info(f"voice metrics: {turn.summary()}")
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
        elif isinstance(frame, OutputAudioRawFrame):
            self._last_audio_out = t
            if self._open_barge_in is not None:
                self._open_barge_in.last_bot_audio = t

    # -- turns and barge-ins -----------------------------------------------------------------------------------

    def _start_turn(self, t: float) -> None:
        self._close_barge_in()
        turn = TurnMetrics(index=len(self.turns), user_turn_start=t)
        if self._vad_start is not None and t - self._vad_start[0] < 5.0:
            turn.vad_start = self._vad_start[0]
            turn.speech_start = self._vad_start[0] - self._vad_start[1]
        held = self._held_from(t)
        if held is not None and self._vad_start is not None:
            # a held barge-in: the bot stopped at its first VAD start, and the words it was decided on are the turn's
            turn.vad_start = held
            turn.speech_start = held - self._vad_start[1]
            heard = [(at, text) for at, text in self._loose_transcripts if at >= held]
            if heard:
                turn.transcript_at = heard[-1][0]
                turn.transcript = " ".join(text for _, text in heard)
            stop = self._loose_vad_stop
            if stop is not None and stop[0] >= self._vad_start[0]:  # decided after the sound ended
                turn.vad_stop, turn.vad_stop_secs = stop
                turn.speech_end = stop[0] - stop[1]
        self._vad_start = None  # one VAD start opens at most one turn (a turn started by a late transcript has none)
        self._loose_transcripts = []
        turn.interrupted_bot = self._bot_speaking
        if self._bot_speaking:
            vad = turn.vad_start if turn.vad_start is not None else t
            onset = turn.speech_start if turn.speech_start is not None else t
            turn.barge_in = BargeInMetrics(vad_start=vad, speech_onset=onset, last_bot_audio=self._last_audio_out)
            self._open_barge_in = turn.barge_in
        self.turns.append(turn)

    def _interruption_at_output(self, t: float) -> None:
        barge = self._open_barge_in
        if barge is not None and barge.interruption_at_output is None:
            barge.interruption_at_output = t

    def _close_barge_in(self) -> None:
        barge, self._open_barge_in = self._open_barge_in, None
        if barge is None or not barge._open:
            return
        barge._open = False
        if self._log:

            def ms(v: float | None) -> str:
                return "-" if v is None else f"{v * 1000:.0f} ms"

            logger.info(
                f"barge-in metrics: stop latency from VAD start {ms(barge.stop_latency_from_vad)}, "
                f"from speech onset {ms(barge.stop_latency_from_onset)}, "
                f"interruption at output {ms(_diff(barge.vad_start, barge.interruption_at_output))} after VAD start"
            )

    def finish(self) -> None:
        """Close the last barge-in window (call after the pipeline stopped)."""
        self._close_barge_in()


def apply_ground_truth(turns: Sequence[TurnMetrics], speech: Iterable[tuple], max_lead_s: float = 1.5) -> None:
    """Replace the VAD-estimated speech start/end (and barge-in onset) with true ones.

    ``speech``: ``(start, end, ...)`` per stretch of user speech on the pipeline clock: voiced stretches
    (``VirtualTransport.user_segments``) or whole utterances (``VirtualTransport.user_speech``). A turn's speech start
    is the last stretch that started before its VAD start (at most ``max_lead_s`` before it); its speech end is the
    end of the last stretch that had started by the time the VAD heard speech end (``vad_stop - vad_stop_secs``),
    so a turn that ends at a pause inside a longer utterance gets the end of the speech before the pause, never the
    utterance's end (capped at the VAD stop)."""
    spans = sorted((float(s[0]), float(s[1])) for s in speech)
    for turn in turns:
        ref = turn.vad_start if turn.vad_start is not None else turn.user_turn_start
        candidates = [s for s in spans if s[0] <= ref + 0.02 and ref - s[0] <= max_lead_s]
        if not candidates:
            continue
        start = candidates[-1][0]
        turn.speech_start = start
        if turn.barge_in is not None:
            turn.barge_in.speech_onset = start
        if turn.vad_stop is not None:
            heard_end = turn.vad_stop - turn.vad_stop_secs
            before = [s for s in spans if start <= s[0] <= heard_end + 0.02]
            if before:
                turn.speech_end = min(before[-1][1], turn.vad_stop)
