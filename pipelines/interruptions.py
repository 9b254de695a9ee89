"""Interruption policy that pipecat 1.14 lacks, built on its own hooks.

* ``EchoGuardUserTurnStartStrategy`` — a user-turn *start* strategy. During the bot's first moments of speech
  (``window_s`` after ``BotStartedSpeakingFrame``) a VAD start does not open a user turn at once: the speech must last
  ``min_speech_s`` (counted in audio from its onset, i.e. VAD start minus the VAD's ``start_secs``) or an interim
  transcript must reach ``min_words`` words. A shorter burst (residual echo of the bot's own voice from a speakerphone
  before the client's echo canceller has converged, a "mhm") is dropped together with its transcript. Outside the
  window it passes every frame on, so pipecat's ``VADUserTurnStartStrategy`` / ``TranscriptionUserTurnStartStrategy``
  behind it decide as usual. It sits first in ``UserTurnStrategies.start``.

* ``BargeInDecisionUserTurnStartStrategy`` — a user-turn *start* strategy for the whole of the bot's speech: a VAD
  start holds the bot (``pipelines.playback.PlaybackHold``: its audio pauses within one output chunk) instead of
  interrupting it, and the sound is judged from its words (``interrupting_words``: backchannels such as "mhm",
  "yeah", "I see" do not count) and its duration. An interruption starts the user turn (pipecat's interruption as
  usual); anything else resumes the held audio where it stopped, with no user turn and no LLM call. With it on, it
  replaces the echo guard (whose thresholds it applies in the bot's first moments of speech).

* ``FalseInterruptionUserTurnStopStrategy`` + ``ReplyResumer`` — false-interruption recovery. A user turn that has
  produced no words ``timeout_s`` after the user went quiet (a cough, a door) is ended by the stop strategy
  (pipecat would keep it open for ``user_turn_stop_timeout`` and, meanwhile, ignore the next real barge-in because a
  turn is already open). It then pushes a ``FalseInterruptionFrame`` downstream. ``ReplyResumer`` sits between the
  LLM and the TTS: it has seen the reply's text, and learns the words actually played from the assistant
  aggregator (which built them from the TTS word timestamps released by the output transport as the audio played).
  It re-sends the unspoken remainder as a reply of its own (``ResumedResponseStartFrame``, ``LLMTextFrame``,
  ``LLMFullResponseEndFrame``), so TTS, output and context treat it like any reply, and afterwards joins the parts
  into one assistant message. If nothing had been generated yet (the user coughed while the bot was thinking) it
  asks the LLM to run again instead. The LLM stream is closed by the barge-in, so a reply cut while the LLM was still
  generating resumes with what had been generated (the rest of that reply is lost). pipecat's own
  ``EmptyUserTurnConfig`` recovery (an LLM call "ask the user to repeat") must be off when this is on;
  ``pipelines.policy`` does that.

* ``IdleInterruptionFilter`` — pipecat broadcasts an ``InterruptionFrame`` at every user-turn start, bot speaking or
  not, and output transports forward it to the client (Twilio gets a ``clear``, browsers an interruption event).
  Placed just before ``transport.output()``, this drops the frame when nothing of a reply is downstream of it
  (no reply open, no bot audio unplayed), so the client hears about interruptions only when there was something
  to interrupt. Everything upstream (LLM, TTS) has already handled the frame by then.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ControlFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMRunFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_start.base_user_turn_start_strategy import BaseUserTurnStartStrategy
from pipecat.turns.user_stop.base_user_turn_stop_strategy import BaseUserTurnStopStrategy

from processors.segmented_stt import SegmentTranscribedFrame

from .playback import PlaybackHold


@dataclass
class FalseInterruptionFrame(ControlFrame):
    """The user turn that interrupted the bot produced no words: resume the interrupted reply (if any)."""


@dataclass
class ResumedResponseStartFrame(LLMFullResponseStartFrame):
    """Starts a reply that re-sends the unspoken remainder of an interrupted one (not a new LLM answer)."""


def _words_in(frame: Frame) -> int:
    return len(getattr(frame, "text", "").split())


# --------------------------------------------------------------------------------------------------------------------
# Echo guard
# --------------------------------------------------------------------------------------------------------------------


class EchoGuardUserTurnStartStrategy(BaseUserTurnStartStrategy):
    """Requires sustained speech (or words) to start a user turn during the bot's first moments of speech.

    Time is measured in audio, not on the wall clock: the window is the user audio received since the
    ``BotStartedSpeakingFrame``, and after a held VAD start the ``InputAudioRawFrame``s the user aggregator processes
    are counted until ``min_speech_s - start_secs + stop_secs`` have passed without a VAD stop: the VAD start already
    took ``start_secs`` of speech, and the VAD stops only after ``stop_secs`` of silence, so until then the last
    ``stop_secs`` heard may be silence. Speech is sustained when the VAD heard ``min_speech_s`` of it (counting
    ``min_speech_s - start_secs`` alone judged a 0.4 s "yes, p" sustained at some alignments of the audio frames).
    A stalled event loop or a replay faster than real time therefore changes nothing.
    """

    def __init__(
        self,
        *,
        window_s: float = 1.5,
        min_speech_s: float = 0.5,
        min_words: int = 2,
        stop_secs: float = 0.2,
        **kwargs,
    ):
        """``stop_secs``: the VAD's (``VADOptions.stop_secs``)."""
        super().__init__(**kwargs)
        self.window_s = window_s
        self.min_speech_s = min_speech_s
        self.min_words = min_words
        self.stop_secs = stop_secs
        self._bot_speech_s: float | None = None  # input audio since BotStartedSpeakingFrame; None: bot not speaking
        self._turn_active = False
        self._held = False  # a VAD start is being held back (speech still running, not yet sustained)
        self._held_audio_s = 0.0  # audio processed since the held VAD start
        self._needed_s = 0.0
        self._suppressed = False  # the held segment ended too soon: its transcript is dropped too
        self.suppressed_segments = 0  # for tests and diagnostics

    def _guarding(self) -> bool:
        return self._bot_speech_s is not None and not self._turn_active and self._bot_speech_s < self.window_s

    async def handle_user_turn_started(self):
        self._turn_active = True
        self._held = False
        self._suppressed = False

    async def handle_user_turn_stopped(self):
        self._turn_active = False

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        if isinstance(frame, InputAudioRawFrame):
            seconds = frame.num_frames / frame.sample_rate
            if self._bot_speech_s is not None:
                self._bot_speech_s += seconds
            if self._held:
                self._held_audio_s += seconds
                if self._held_audio_s >= self._needed_s - 1e-9:
                    await self._start_turn("sustained speech")
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speech_s = 0.0
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speech_s = None
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._suppressed = False
            if self._guarding():
                self._held = True
                self._held_audio_s = 0.0
                self._needed_s = max(0.0, self.min_speech_s - (frame.start_secs or 0.0)) + self.stop_secs
                return ProcessFrameResult.STOP  # keep VADUserTurnStartStrategy from starting the turn now
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            if self._held:  # the speech ended before it was sustained: echo or a backchannel
                self._held = False
                self._suppressed = True
                self.suppressed_segments += 1
                logger.debug(f"{self}: speech too short during the bot's first moments; not interrupting")
        elif isinstance(frame, (InterimTranscriptionFrame, TranscriptionFrame)):
            if self._held:
                if isinstance(frame, InterimTranscriptionFrame) and _words_in(frame) >= self.min_words:
                    await self._start_turn("interim words")
                    return ProcessFrameResult.STOP
                await self.trigger_reset_aggregation()
                return ProcessFrameResult.STOP
            if self._suppressed:
                if isinstance(frame, TranscriptionFrame):  # the dropped segment's final transcript
                    self._suppressed = False
                await self.trigger_reset_aggregation()
                return ProcessFrameResult.STOP
        return ProcessFrameResult.CONTINUE

    async def _start_turn(self, why: str):
        self._held = False
        logger.debug(f"{self}: user turn starts during the bot's first moments ({why})")
        await self.trigger_user_turn_started()


# --------------------------------------------------------------------------------------------------------------------
# Barge-in decision: hold the bot, then interrupt or resume
# --------------------------------------------------------------------------------------------------------------------

BACKCHANNEL_PHRASES: tuple[str, ...] = (
    # sounds of listening
    "mhm", "mhmm", "mm", "mmm", "mm hmm", "hmm", "hm", "uh huh", "uhuh", "huh", "uh", "um", "ah", "aha", "oh", "ooh",
    "wow", "ha", "haha", "hahaha", "heh", "hehe",
    # agreement and acknowledgement
    "yeah", "yea", "yes", "yep", "yup", "right", "okay", "ok", "alright", "all right", "sure", "cool", "nice",
    "great", "good", "true", "exactly", "indeed", "totally", "absolutely", "definitely", "gotcha", "i see",
    "got it", "of course", "that's right", "makes sense", "sounds good", "i know", "i understand", "fair enough",
    "for sure", "go on", "thanks", "thank you",
)  # fmt: skip
_SPLIT = re.compile(r"[^\w']+", re.UNICODE)


def _tokens(text: str) -> list[str]:
    return [t.strip("'") for t in _SPLIT.split(text.lower().replace("_", " ")) if t.strip("'")]


def interrupting_words(
    text: str, backchannels: Iterable[str] = BACKCHANNEL_PHRASES, *, open_end: bool = False
) -> list[str]:
    """The words of ``text`` that are not part of a backchannel phrase ("mhm", "uh-huh", "I see", "okay"):
    ``"yeah, I see"`` -> ``[]``; ``"okay wait"`` -> ``["wait"]``; ``"no, I meant Lyon"`` -> ``["no", "i", "meant",
    "lyon"]``. Case, punctuation and hyphens are ignored; the longest phrase wins. ``open_end``: more words may
    follow (the user is still speaking, or the text is an interim transcript), so trailing words that begin a
    phrase ("I" of "I see", "all" of "all right") do not count yet."""
    phrases = sorted({tuple(_tokens(p)) for p in backchannels if _tokens(p)}, key=len, reverse=True)
    words = _tokens(text)
    out, i = [], 0
    while i < len(words):
        for phrase in phrases:
            if tuple(words[i : i + len(phrase)]) == phrase:
                i += len(phrase)
                break
        else:
            out.append(words[i])
            i += 1
    if open_end and out:
        for k in range(min(len(out), max((len(p) for p in phrases), default=1) - 1), 0, -1):
            tail = tuple(words[-k:])
            if tuple(out[-k:]) == tail and any(len(p) > k and p[:k] == tail for p in phrases):
                return out[:-k]
    return out


@dataclass(frozen=True)
class BargeInDecision:
    """How one sound over the bot was judged (times: seconds of audio)."""

    outcome: str  # "interrupt" | "resume"
    reason: str  # "words", "sustained sound", "no words", "backchannel", "stt timeout", "late words"
    words: str  # what the STT heard of it (final and interim transcripts)
    speech_s: float  # voiced audio counted from the onset


class BargeInDecisionUserTurnStartStrategy(BaseUserTurnStartStrategy):
    """While the bot speaks, a VAD start holds the bot instead of interrupting it, and the sound is judged.

    ``hold`` (``pipelines.playback.PlaybackHold``) pauses the bot's audio within one output chunk of the VAD start:
    the user is not talked over while the decision is made, so a real interruption's stop latency is the VAD's, not
    the decision's. Then, with the words when they arrive and the duration otherwise:

    * **interrupt** as soon as an interim or final transcript holds ``min_words`` words that are not backchannels
      (``interrupting_words``: "wait", "stop", "no, I meant ..."), or the sound has lasted ``min_speech_s`` without
      such words (a sound that long is no backchannel, words or not; the false-interruption recovery resumes the
      reply if it turns out wordless). The hold is dropped and the user turn starts, so pipecat's interruption runs
      as always (LLM and TTS cancelled, queued audio dropped, the context cut to the played words);
    * **resume** when the sound has ended (VAD stop) and the STT's verdict on it is in — no words, or only
      backchannels ("mhm", "yeah", "I see", a laugh or a cough the STT makes nothing of): the held audio plays on
      from where it stopped, the transcript is dropped, no user turn, no LLM call. If the verdict has not come
      ``verdict_timeout_s`` after the VAD stop (``stt_grace_s`` with ``stt_name``), the duration decides (shorter
      than ``min_speech_s``: resume); words that arrive after that still interrupt ("late words").

    Words that may begin a backchannel phrase ("I" of "I see", "all" of "all right") do not interrupt while more may
    follow; a final transcript that ends on one waits ``prefix_wait_s`` for the rest before it counts as words.

    ``stt_name``: the name of an ``EngineSTTService``; its ``SegmentTranscribedFrame`` (after the segment's transcript,
    in order with it) tells that a segment was transcribed even when it held no words, so the decision is made the
    moment the last segment of the sound is. That verdict always comes unless the STT broke, so the bot stays held
    until it does (up to ``stt_grace_s``): resuming over words the STT is about to deliver, then cutting the bot
    when they arrive, would talk over a real interruption (a CPU STT under load can take longer than a second);
    a slow STT makes a backchannel's pause longer instead. Without it, the decision after a VAD stop waits for a
    transcript (then ``settle_s`` more, in case another follows) or ``verdict_timeout_s``.

    ``echo_window_s`` > 0 (the echo guard on): during the bot's first ``echo_window_s`` of speech an interruption
    takes ``echo_min_words`` such words instead (its own voice echoed back from a speakerphone is words too).

    The bot's speech is from ``BotStartedSpeakingFrame`` to ``BotStoppedSpeakingFrame`` and, for a client that
    plays audio the output sent ahead (a phone carrier), as long as that audio is due to play there.

    Time is counted in audio (``InputAudioRawFrame``s), like the echo guard. Outside the bot's speech, or with no
    hold, frames pass to pipecat's strategies behind it. It sits first in ``UserTurnStrategies.start``.
    """

    def __init__(
        self,
        *,
        hold: PlaybackHold,
        min_words: int = 1,
        min_speech_s: float = 2.0,
        verdict_timeout_s: float = 1.0,
        stt_grace_s: float = 10.0,
        backchannels: Iterable[str] = BACKCHANNEL_PHRASES,
        stt_name: str | None = None,
        echo_window_s: float = 0.0,
        echo_min_words: int = 2,
        settle_s: float = 0.05,
        prefix_wait_s: float = 0.4,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hold = hold
        self.min_words = min_words
        self.min_speech_s = min_speech_s
        self.verdict_timeout_s = verdict_timeout_s
        self.stt_grace_s = stt_grace_s
        self.backchannels = tuple(backchannels)
        self.stt_name = stt_name
        self.echo_window_s = echo_window_s
        self.echo_min_words = echo_min_words
        self.settle_s = settle_s  # without stt_name: after a transcript, wait this long for another
        self.prefix_wait_s = prefix_wait_s  # a sound ending on "I", "all", "thank": wait this long for "see", "right"
        self._bot_speech_s: float | None = None  # input audio since BotStartedSpeakingFrame; None: bot not speaking
        self._turn_active = False
        self._deciding = False
        self._user_speaking = False
        self._speech_s = 0.0
        self._needed_words = min_words
        self._final: list[str] = []  # final transcripts of this sound
        self._interim = ""  # the latest interim transcript of the segment being spoken
        self._stt_pending = 0  # VAD segments of this sound the STT has not finished
        self._timer: asyncio.Task | None = None
        self._late_segments = 0  # segments resumed over before their transcript came (late words may still interrupt)
        self.decisions: list[BargeInDecision] = []  # for tests, metrics and diagnostics

    # -- turn lifecycle -------------------------------------------------------------------------------------------

    async def handle_user_turn_started(self):
        self._turn_active = True
        if self._deciding:  # another strategy started the turn (e.g. a transcript): the interruption runs
            self._deciding = False
            self.hold.drop()
        await self._cancel_timer()

    async def handle_user_turn_stopped(self):
        self._turn_active = False

    async def cleanup(self):
        await super().cleanup()
        await self._cancel_timer()
        if self._deciding:
            await self.hold.release()

    # -- frames ---------------------------------------------------------------------------------------------------

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        if isinstance(frame, InputAudioRawFrame):
            seconds = frame.num_frames / frame.sample_rate
            if self._bot_speech_s is not None:
                self._bot_speech_s += seconds
            if self._deciding and self._user_speaking:
                self._speech_s += seconds
                if self._speech_s >= self.min_speech_s - 1e-9:
                    await self._interrupt("sustained sound")
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speech_s = 0.0
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speech_s = None
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._user_speaking = True
            if self._deciding:
                await self._cancel_timer()
                self._interim = ""
                self._speech_s += frame.start_secs or 0.0
                return ProcessFrameResult.STOP
            if not self._turn_active and (self._bot_speech_s is not None or self.hold.far_end_playing()):
                await self._start_deciding(frame.start_secs or 0.0)
                return ProcessFrameResult.STOP
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._user_speaking = False
            if self._deciding:
                if self.stt_name:
                    self._stt_pending += 1
                self._arm(self.stt_grace_s if self.stt_name else self.verdict_timeout_s, "stt timeout")
        elif isinstance(frame, InterimTranscriptionFrame):
            if self._deciding:
                self._interim = frame.text
                if self._interrupts():
                    await self._interrupt("words")
                return ProcessFrameResult.STOP
        elif isinstance(frame, TranscriptionFrame):
            if self._deciding:
                self._final.append(frame.text)
                self._interim = ""
                if self._interrupts(open_end=True):
                    await self._interrupt("words")
                    return ProcessFrameResult.CONTINUE  # the turn's first words
                if not self.stt_name and not self._user_speaking:
                    self._decide_when_transcribed(self.settle_s)
                if not self._interrupts(open_end=False):
                    await self.trigger_reset_aggregation()
                # else it ends on a word that may begin "I see", "all right": kept, the turn's first words if so
                return ProcessFrameResult.STOP
            if self._late_segments and not self._turn_active:
                if interrupting_words(frame.text, self.backchannels):
                    self._late_segments = 0
                    logger.info(f"{self}: late words {frame.text!r} after resuming: interrupting now")
                    self.decisions.append(BargeInDecision("interrupt", "late words", frame.text, 0.0))
                    await self.trigger_user_turn_started()
                    return ProcessFrameResult.CONTINUE
                await self.trigger_reset_aggregation()
                return ProcessFrameResult.STOP
        elif isinstance(frame, SegmentTranscribedFrame) and self.stt_name:
            if self._deciding and self._stt_pending:
                self._stt_pending -= 1
                if self._stt_pending == 0 and not self._user_speaking:
                    self._decide_when_transcribed(0.0)
            elif self._late_segments and not self._deciding:
                self._late_segments -= 1  # a segment resumed over: its transcript, if any, came just before
        return ProcessFrameResult.CONTINUE

    # -- decision -------------------------------------------------------------------------------------------------

    async def _start_deciding(self, start_secs: float) -> None:
        self._deciding = True
        self._late_segments = 0
        self._speech_s = start_secs
        self._final, self._interim = [], ""
        self._stt_pending = 0
        echo = self.echo_window_s > 0 and (self._bot_speech_s or 0.0) < self.echo_window_s
        self._needed_words = max(self.min_words, self.echo_min_words) if echo else self.min_words
        await self.hold.hold()
        logger.debug(f"{self}: sound over the bot; holding it while deciding")

    def _heard(self) -> str:
        return " ".join([*self._final, self._interim]).strip()

    def _interrupts(self, open_end: bool | None = None) -> bool:
        if open_end is None:
            open_end = self._user_speaking or bool(self._interim)
        return len(interrupting_words(self._heard(), self.backchannels, open_end=open_end)) >= self._needed_words

    async def _interrupt(self, reason: str) -> None:
        if not self._deciding:
            return
        self._deciding = False
        await self._cancel_timer()
        self.decisions.append(BargeInDecision("interrupt", reason, self._heard(), self._speech_s))
        logger.info(f"{self}: interruption ({reason}; {self._speech_s:.2f} s, heard {self._heard()!r})")
        self.hold.drop()
        await self.trigger_user_turn_started()

    async def _resume(self, reason: str) -> None:
        if not self._deciding:
            return
        self._deciding = False
        self._late_segments = self._stt_pending
        self.decisions.append(BargeInDecision("resume", reason, self._heard(), self._speech_s))
        logger.info(f"{self}: not an interruption ({reason}; {self._speech_s:.2f} s, heard {self._heard()!r})")
        await self.hold.release()
        await self.trigger_reset_aggregation()

    def _decide_when_transcribed(self, delay_s: float) -> None:
        """The STT has judged all of the sound, which has ended."""
        if self._interrupts(open_end=False) and not self._interrupts(open_end=True):
            self._arm(self.prefix_wait_s, "words")  # it ends on a word that may begin "I see": wait for the rest
        else:
            self._arm(delay_s, "backchannel" if self._heard() else "no words")

    def _arm(self, delay_s: float, reason: str) -> None:
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        self._timer = self.task_manager.create_task(self._verdict(delay_s, reason), f"{self}::verdict")

    async def _verdict(self, delay_s: float, reason: str) -> None:
        try:
            await asyncio.sleep(delay_s)
        except asyncio.CancelledError:
            return
        self._timer = None
        if not self._deciding or self._user_speaking:
            return
        if self._interrupts():
            await self._interrupt("words")
        elif self._speech_s >= self.min_speech_s - 1e-9:
            await self._interrupt("sustained sound")
        elif reason == "backchannel" or self._heard():
            await self._resume("backchannel")
        else:
            await self._resume(reason)

    async def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task() and not timer.done():
            await self.task_manager.cancel_task(timer)


# --------------------------------------------------------------------------------------------------------------------
# False-interruption recovery
# --------------------------------------------------------------------------------------------------------------------


class FalseInterruptionUserTurnStopStrategy(BaseUserTurnStopStrategy):
    """Ends a user turn that produced no words ``timeout_s`` after the user went quiet, and asks for a resume.

    ``stt_name``: the name of an ``EngineSTTService``, which transcribes one segment per VAD stop and pushes a
    ``SegmentTranscribedFrame`` after it (after its transcript, in order), words or not. With it, a decision due while
    the STT is still working on the turn's speech waits for that frame (up to ``stt_grace_s`` more: it always comes
    unless the STT broke), so the transcript, if any, has been seen. Resuming over words the STT is about to deliver
    would be worse than resuming late (a CPU fallback STT under load takes longer than ``timeout_s``, and its
    transcript then reaches the aggregator behind the frames queued meanwhile). Without the name, the decision is
    made at ``timeout_s``.
    """

    def __init__(self, *, timeout_s: float = 1.5, stt_name: str | None = None, stt_grace_s: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        self.timeout_s = timeout_s
        self.stt_name = stt_name
        self.stt_grace_s = stt_grace_s
        self._turn_active = False
        self._user_speaking = False
        self._heard_words = False
        self._stt_pending = 0  # VAD-bounded segments the STT has not finished yet
        self._stt_idle = asyncio.Event()
        self._stt_idle.set()
        self._timer: asyncio.Task | None = None
        self.false_interruptions = 0  # for tests and diagnostics

    async def handle_user_turn_started(self):
        self._turn_active = True
        self._heard_words = False
        await self._cancel_timer()
        if not self._user_speaking:  # a turn opened after the speech ended (e.g. by a transcript)
            self._arm()

    async def handle_user_turn_stopped(self):
        self._turn_active = False
        await self._cancel_timer()

    async def cleanup(self):
        await super().cleanup()
        await self._cancel_timer()

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._user_speaking = True
            await self._cancel_timer()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._user_speaking = False
            if self.stt_name:
                self._stt_pending += 1
                self._stt_idle.clear()
            self._arm()
        elif isinstance(frame, (TranscriptionFrame, InterimTranscriptionFrame)) and frame.text.strip():
            self._heard_words = True
            await self._cancel_timer()
        elif isinstance(frame, SegmentTranscribedFrame) and self.stt_name:
            self._stt_pending = max(0, self._stt_pending - 1)
            if self._stt_pending == 0:
                self._stt_idle.set()
        return ProcessFrameResult.CONTINUE

    def _arm(self):
        if not self._turn_active or self._heard_words or self._timer:
            return
        self._timer = self.task_manager.create_task(self._expire(), f"{self}::false_interruption")

    async def _expire(self):
        try:
            await asyncio.sleep(self.timeout_s)
            if not self._stt_idle.is_set():
                try:
                    await asyncio.wait_for(self._stt_idle.wait(), self.stt_grace_s)
                except TimeoutError:
                    logger.warning(f"{self}: the STT is still busy {self.stt_grace_s:g} s after the timeout")
        except asyncio.CancelledError:
            return
        self._timer = None
        if not self._turn_active or self._heard_words or self._user_speaking:
            return
        self.false_interruptions += 1
        logger.info(f"{self}: no words {self.timeout_s:g} s after the user went quiet: false interruption")
        await self.push_frame(FalseInterruptionFrame())
        await self.trigger_user_turn_stopped()

    async def _cancel_timer(self):
        timer, self._timer = self._timer, None
        if timer and timer is not asyncio.current_task():
            await self.task_manager.cancel_task(timer)


_TOKEN = re.compile(r"[\W_]+", re.UNICODE)


def _norm(word: str) -> str:
    return _TOKEN.sub("", word.lower())


def unspoken_remainder(reply: str, played: str, lookahead: int = 3) -> str:
    """The words of ``reply`` after those in ``played`` (the played words are a prefix of the reply, word by word,
    up to punctuation and case; small mismatches are skipped over). Whitespace is normalised to single spaces."""
    words = reply.split()
    heard = [_norm(w) for w in played.split() if _norm(w)]
    i = 0
    for h in heard:
        for k in range(i, min(i + 1 + lookahead, len(words))):
            if _norm(words[k]) == h:
                i = k + 1
                break
        else:
            i += 1  # no match nearby: count it as one word
        if i >= len(words):
            return ""
    return " ".join(words[i:])


@dataclass
class _Interrupted:
    text: str  # the whole reply text generated so far
    played: str | None = None  # the words played before the interruption (None: no assistant turn reported)


class ReplyResumer(FrameProcessor):
    """Between the LLM and the TTS: re-sends the unspoken remainder of a reply after a ``FalseInterruptionFrame``.

    ``context`` and ``assistant`` are the pipeline's ``LLMContext`` and ``LLMAssistantAggregator``: the aggregator's
    ``on_assistant_turn_stopped`` event reports the words actually played, and the context is where the two halves of
    a resumed reply are joined back into one assistant message.
    """

    def __init__(self, *, context: LLMContext, assistant, **kwargs):
        super().__init__(**kwargs)
        self._context = context
        self._reply: list[str] = []  # text of the reply in progress
        self._reply_active = False  # a reply passed here and has not finished playing
        self._interrupted: _Interrupted | None = None
        self._chain_has_message = False  # this reply (or its resumed parts) already has an assistant message
        self._merge_next_turn = False  # the next assistant turn continues that message
        self.resumed: list[str] = []  # remainders re-sent (for tests and diagnostics)
        assistant.add_event_handler("on_assistant_turn_stopped", self._on_assistant_turn_stopped)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, LLMFullResponseStartFrame) and not frame.skip_tts:
                self._start_reply()
            elif isinstance(frame, LLMTextFrame) and not frame.skip_tts:
                self._reply.append(frame.text)
            elif isinstance(frame, InterruptionFrame):
                if self._reply_active:
                    self._interrupted = _Interrupted(text="".join(self._reply))
                    self._reply_active = False
            elif isinstance(frame, FalseInterruptionFrame):
                await self._resume()
                return  # consumed here
        await self.push_frame(frame, direction)

    def _start_reply(self):
        self._reply = []
        self._reply_active = True
        self._interrupted = None  # a new answer supersedes any pending resume
        self._chain_has_message = False
        self._merge_next_turn = False

    async def _on_assistant_turn_stopped(self, _aggregator, message):
        if self._interrupted is not None and self._interrupted.played is None:
            self._interrupted.played = message.content or ""
        elif not message.interrupted:
            self._reply_active = False  # the reply finished playing
        if self._merge_next_turn:
            self._merge_next_turn = False
            self._join_last_assistant_messages(message.content or "")
        if message.content:
            self._chain_has_message = True

    def _join_last_assistant_messages(self, continuation: str):
        messages = list(self._context.get_messages())
        if len(messages) < 2 or not continuation:
            return
        last, prev = messages[-1], messages[-2]
        if (
            last.get("role") == "assistant"
            and prev.get("role") == "assistant"
            and isinstance(last.get("content"), str)
            and isinstance(prev.get("content"), str)
        ):
            joined = {**prev, "content": f"{prev['content'].rstrip()} {last['content'].lstrip()}".strip()}
            self._context.set_messages([*messages[:-2], joined])

    async def _resume(self):
        pending, self._interrupted = self._interrupted, None
        if pending is None:
            return
        played = pending.played or ""
        remainder = unspoken_remainder(pending.text, played)
        if not remainder:
            if not pending.text.strip():
                logger.info(f"{self}: false interruption before any reply text; running the LLM again")
                await self.push_frame(LLMRunFrame(), FrameDirection.UPSTREAM)
            return
        logger.info(f"{self}: false interruption; resuming with {remainder!r}")
        self.resumed.append(remainder)
        self._reply = [remainder]
        self._reply_active = True
        self._merge_next_turn = self._chain_has_message
        await self.push_frame(ResumedResponseStartFrame())
        await self.push_frame(LLMTextFrame(remainder))
        await self.push_frame(LLMFullResponseEndFrame())


# --------------------------------------------------------------------------------------------------------------------
# No interruption frames to an idle client
# --------------------------------------------------------------------------------------------------------------------


class IdleInterruptionFilter(FrameProcessor):
    """Just before the output transport: drops ``InterruptionFrame``s when no reply is downstream of it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._reply_open = False  # between LLMFullResponseStartFrame and LLMFullResponseEndFrame
        self._audio_unplayed = False  # TTS audio passed and the output has not reported the bot stopped
        self.dropped = 0  # for tests and diagnostics

    @property
    def idle(self) -> bool:
        return not (self._reply_open or self._audio_unplayed)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, InterruptionFrame):
                if self.idle:
                    self.dropped += 1
                    return
                self._reply_open = self._audio_unplayed = False  # everything downstream is reset by it
            elif isinstance(frame, LLMFullResponseStartFrame):
                self._reply_open = True
            elif isinstance(frame, LLMFullResponseEndFrame):
                self._reply_open = False
            elif isinstance(frame, (TTSStartedFrame, TTSAudioRawFrame)):
                self._audio_unplayed = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._audio_unplayed = False
        await self.push_frame(frame, direction)
