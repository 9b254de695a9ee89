"""The end of the user's turn: when to answer, and what to do when the user goes on after all.

* ``EndpointingUserTurnStopStrategy`` — the stop strategy of ``turn.stop_strategy = "endpointing"``. When the VAD
  reports the user quiet it judges whether the utterance sounds finished: the Smart Turn v3 model (pipecat's bundled
  ONNX, ``SmartTurnJudge``) on the turn's own audio at 16 kHz, and the words (a turn ending on "at", "and", "the"...
  is not over). A finished-sounding turn ends ``complete_wait_s`` after the VAD stop; another waits
  ``incomplete_wait_s``, so a pause of a second inside a sentence does not end it. When the wait runs out it does
  not trust the VAD alone — Silero reports restarted speech only ``start_secs`` plus its own lag after the onset —
  but looks at the energy of the last frames, and holds while they sound like speech. With
  ``preemptive_generation`` it asks for the answer as soon as the user goes quiet and the words are in (pipecat's
  speculative inference: the reply is held in the LLM service until the turn ends, and withdrawn without a trace if
  the user goes on), so the LLM's time hides behind the wait. It never ends a turn while the STT still owes it a
  transcript (a CPU STT can take longer than the wait).

* ``LateTranscriptUserTurnStartStrategy`` — a start strategy ahead of pipecat's ``TranscriptionUserTurnStartStrategy``:
  a final transcript of speech that had ended before the last user turn did (a slow STT) does not open a turn of its
  own; its words go to the turn they belong to (``LateTranscriptFrame``, handled by ``UnheardTurnMerger``).

* ``UnplayedReplyGate`` — just before the output: holds a reply's frames until its first audio, so a reply the user
  talks over before any of it played (they resumed after the turn ended) is dropped here, with the interruption that
  dropped it: nothing reaches the client, no interruption either.

* ``UnheardTurnMerger`` — between the user aggregator and the LLM: two user messages in a row (the first one's
  answer was dropped before it played) become one, in the context and in what the LLM is asked; a late transcript's
  words are added to the user message they belong to, and if its answer has not started playing it is asked again.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    DataFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMContextUserTurnFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    SystemFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.turns.types import ProcessFrameResult, UserTurnSpeculation
from pipecat.turns.user_start.base_user_turn_start_strategy import BaseUserTurnStartStrategy
from pipecat.turns.user_stop.base_user_turn_stop_strategy import BaseUserTurnStopStrategy

from processors.audio import STT_SAMPLE_RATE, pcm16_to_float, resample
from processors.segmented_stt import SegmentTranscribedFrame

# A turn whose last word is one of these is not over ("a table for two at", "I think that", "uh").
UNFINISHED_WORDS = frozenset(
    """a an the my your his her its our their this that these those some any every no each
    and or but nor so because if when while although though unless until since whether than as
    at in on of to for with from by about into onto over under between through during without within
    near after before like per via is are was were am be been being do does did have has had
    will would shall should can could may might must i you he she we they it's i'm you're we're they're
    um uh er erm hmm uhm""".split()
)
_WORD = re.compile(r"[a-z']+")


def sounds_unfinished(text: str) -> bool:
    """The words end where a sentence cannot (an article, a preposition, a conjunction, a filler)."""
    words = _WORD.findall(text.lower())
    return bool(words) and words[-1] in UNFINISHED_WORDS


@dataclass
class LateTranscriptFrame(DataFrame):
    """A final transcript of speech that belongs to a user turn that has already ended."""

    text: str


# --------------------------------------------------------------------------------------------------------------------
# Smart Turn
# --------------------------------------------------------------------------------------------------------------------


class SmartTurnJudge:
    """Smart Turn v3 (the ONNX model in the pipecat wheel) on one turn's audio: the probability that it is complete.

    The model was trained on 16 kHz audio of a user's turn, up to its last 8 s, ending shortly after the speech does;
    ``probability`` takes the audio at any rate and resamples it (telephone audio at 8 kHz too: the band above 4 kHz
    is missing, but the rate, frame length and window are right). One ONNX session per process, shared: its ``run``
    is thread-safe. Blocking (12-40 ms on a CPU core): call it in a worker thread."""

    MODEL_RATE = 16000
    WINDOW_S = 8.0
    _analyzer: Any = None
    _lock = threading.Lock()

    @classmethod
    def _model(cls):
        with cls._lock:
            if cls._analyzer is None:
                from .turn_models import SharedSmartTurnAnalyzer

                analyzer = SharedSmartTurnAnalyzer()
                analyzer.set_sample_rate(cls.MODEL_RATE)  # we hand it 16 kHz audio
                cls._analyzer = analyzer
            return cls._analyzer

    def probability(self, audio: np.ndarray, sample_rate: int) -> float:
        if sample_rate != self.MODEL_RATE:
            audio = resample(audio, sample_rate, self.MODEL_RATE)
        audio = np.asarray(audio[-int(self.WINDOW_S * self.MODEL_RATE) :], dtype=np.float32)
        if audio.size == 0:
            return 0.0
        return float(self._model()._predict_endpoint(audio)["probability"])


# --------------------------------------------------------------------------------------------------------------------
# The turn's audio
# --------------------------------------------------------------------------------------------------------------------


class RecentAudio:
    """The last ``keep_s`` of input audio with the time each frame arrived, and its level frame by frame.

    ``since(t)`` is the audio from time ``t`` on (for the end-of-turn model); ``speech_resumed()`` says whether the
    last frames are loud enough to be speech again, which the VAD would only confirm ``start_secs`` plus its lag
    later."""

    def __init__(self, keep_s: float = 10.0, recent_s: float = 0.3, margin_db: float = 10.0):
        self.keep_s = keep_s
        self.recent_s = recent_s
        self.margin_db = margin_db
        self._frames: deque[tuple[float, np.ndarray]] = deque()
        self._levels: deque[tuple[float, float]] = deque()  # (time, dBFS) per frame, last keep_s
        self.rate = STT_SAMPLE_RATE

    def append(self, frame: InputAudioRawFrame, t: float) -> None:
        samples = pcm16_to_float(frame.audio)
        if frame.num_channels and frame.num_channels > 1:
            samples = samples.reshape(-1, frame.num_channels).mean(axis=1)
        if frame.sample_rate != self.rate:
            self._frames.clear()
            self.rate = frame.sample_rate
        self._frames.append((t, samples))
        level = 10 * np.log10(float(np.mean(np.square(samples, dtype=np.float64))) + 1e-10) if samples.size else -100.0
        self._levels.append((t, level))
        while self._frames and self._frames[0][0] < t - self.keep_s:
            self._frames.popleft()
        while self._levels and self._levels[0][0] < t - self.keep_s:
            self._levels.popleft()

    def since(self, t: float) -> np.ndarray:
        chunks = [s for ft, s in self._frames if ft >= t]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def floor_db(self) -> float:
        """The noise floor: the 20th percentile of the frame levels kept."""
        if not self._levels:
            return -100.0
        return float(np.percentile([lv for _, lv in self._levels], 20))

    def sounded_since(self, t: float) -> bool:
        """Whether a frame after ``t`` is louder than the noise floor by ``margin_db`` (speech since then)."""
        floor = self.floor_db()
        return any(lv > floor + self.margin_db for ft, lv in self._levels if ft > t)

    def speech_resumed(self, quiet_since: float) -> bool:
        """Whether something in the last ``recent_s`` (about what Silero needs to confirm speech: ``start_secs`` and
        its lag) is louder than the pause itself (the median level of the frames since ``quiet_since``, the VAD
        stop) by ``margin_db``: speech the VAD may be about to report. Judged against the pause, not the whole
        conversation, so a noise bed sets the bar and a soft onset ("th", "s") over digital silence still counts."""
        if not self._levels:
            return False
        last_t = self._levels[-1][0]
        recent = [lv for t, lv in self._levels if t > last_t - self.recent_s - 1e-9]
        pause = [lv for t, lv in self._levels if quiet_since <= t <= last_t - self.recent_s - 1e-9]
        floor = float(np.median(pause)) if len(pause) >= 3 else self.floor_db()
        return max(recent) > floor + self.margin_db


# --------------------------------------------------------------------------------------------------------------------
# The stop strategy
# --------------------------------------------------------------------------------------------------------------------


class EndpointingUserTurnStopStrategy(BaseUserTurnStopStrategy):
    """Ends the user's turn on the evidence that they finished (see the module docstring).

    ``judge``: the end-of-turn model (None: every pause sounds finished unless the words say otherwise).
    ``complete_wait_s`` / ``incomplete_wait_s``: silence after the VAD stop before a turn that sounds finished / not
    finished ends. ``threshold``: the model's probability above which a turn sounds finished. ``preemptive``: start
    the answer speculatively at the VAD stop. ``stt_name``: the segmented STT's processor name, whose processing
    metrics say when it has transcribed a segment (None: never wait for the STT). ``hold_s``: how long to hold an
    expired wait while the last frames sound like speech the VAD has not confirmed."""

    def __init__(
        self,
        *,
        judge: SmartTurnJudge | None = None,
        complete_wait_s: float = 0.1,
        incomplete_wait_s: float = 1.0,
        threshold: float = 0.5,
        preemptive: bool = True,
        wait_for_stt: bool = False,
        stt_grace_s: float = 3.0,
        hold_s: float = 0.4,
        pre_speech_s: float = 0.5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.judge = judge
        self.complete_wait_s = complete_wait_s
        self.incomplete_wait_s = incomplete_wait_s
        self.threshold = threshold
        self.preemptive = preemptive
        self.wait_for_stt = wait_for_stt
        self.stt_grace_s = stt_grace_s
        self.hold_s = hold_s
        self.pre_speech_s = pre_speech_s
        self._audio = RecentAudio()
        self._turn_active = False
        self._speaking = False
        self._text = ""
        self._turn_audio_from: float | None = None  # where the turn's speech (with some pre-roll) begins
        self._stopped_at: float | None = None  # the last VAD stop, if the user is quiet
        self._verdict: float | None = None  # the model's probability at that stop
        self._judging: asyncio.Task | None = None
        self._timer: asyncio.Task | None = None
        self._stt_pending = 0
        self._last_stop: float | None = None  # the last VAD stop, turn or not
        self._quiet_words = ""  # words heard while no turn was open (a turn opened after the speech: its words)
        self._speculation: UserTurnSpeculation | None = None
        self._armed_complete = False
        self.decisions: list[dict[str, Any]] = []  # one per VAD stop judged (for tests, logs and the benchmark)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def handle_user_turn_started(self):
        self._turn_active = True
        self._text = ""
        self._verdict = None
        if self._turn_audio_from is None:
            self._turn_audio_from = self._now() - self.pre_speech_s - 0.3
        words, self._quiet_words = self._quiet_words, ""
        if self._speaking or self._last_stop is None or self._audio.sounded_since(self._last_stop):
            return  # a turn opened by speech (its VAD start reaches this strategy after the start strategies)
        # the turn opened after the speech ended (a barge-in verdict on its words, a transcript): judge it from that
        # stop now, or nothing would end it but the stop timeout
        self._text = words
        self._stopped_at = self._last_stop
        await self._cancel(self._judging)
        self._judging = self.task_manager.create_task(self._judge(self._stopped_at), f"{self}::judge")

    async def handle_user_turn_stopped(self):
        self._turn_active = False
        self._text = ""
        self._quiet_words = ""
        self._last_stop = None
        self._stopped_at = None
        self._turn_audio_from = None
        await self._cancel(self._timer)
        await self._cancel(self._judging)
        self._timer = self._judging = None
        if self._speculation is not None:  # the turn ended some other way: nothing will confirm it now
            self._speculation = None
            await self.trigger_user_turn_speculation_cancelled()

    async def cleanup(self):
        await super().cleanup()
        await self._cancel(self._timer)
        await self._cancel(self._judging)

    async def _cancel(self, task: asyncio.Task | None):
        if task is not None and task is not asyncio.current_task() and not task.done():
            await self.task_manager.cancel_task(task)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    # -- frames ------------------------------------------------------------------------------------------------

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        if isinstance(frame, InputAudioRawFrame):
            self._audio.append(frame, self._now())
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            await self._on_speech_started(frame)
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            await self._on_speech_stopped()
        elif isinstance(frame, TranscriptionFrame):
            if frame.text.strip() and self._turn_active:
                self._text = f"{self._text} {frame.text.strip()}".strip()
                await self._progress()
            elif frame.text.strip():
                self._quiet_words = f"{self._quiet_words} {frame.text.strip()}".strip()
        elif isinstance(frame, SegmentTranscribedFrame) and self.wait_for_stt:
            self._stt_pending = max(0, self._stt_pending - 1)
            await self._progress()
        return ProcessFrameResult.CONTINUE

    async def _on_speech_started(self, frame: VADUserStartedSpeakingFrame):
        self._speaking = True
        self._stopped_at = None
        if not self._turn_active:
            self._quiet_words = ""  # what was said before did not open a turn (a backchannel the hold let go)
        if self._turn_audio_from is None or not self._turn_active:
            self._turn_audio_from = self._now() - (frame.start_secs or 0.0) - self.pre_speech_s - 0.1
        await self._cancel(self._timer)
        await self._cancel(self._judging)
        self._timer = self._judging = None
        if self._speculation is not None:  # the user goes on: the early answer is dropped, unheard
            logger.debug(f"{self}: speech resumed; withdrawing the early answer")
            self._speculation = None
            await self.trigger_user_turn_speculation_cancelled()

    async def _on_speech_stopped(self):
        self._speaking = False
        self._last_stop = self._now()
        if self.wait_for_stt:
            self._stt_pending += 1
        if not self._turn_active:
            return
        self._stopped_at = self._now()
        self._verdict = None
        await self._cancel(self._judging)
        self._judging = self.task_manager.create_task(self._judge(self._stopped_at), f"{self}::judge")

    async def _judge(self, stopped_at: float):
        probability = None
        if self.judge is not None and self._turn_audio_from is not None:
            audio = self._audio.since(self._turn_audio_from)
            loop = asyncio.get_running_loop()
            try:
                probability = await loop.run_in_executor(None, self.judge.probability, audio, self._audio.rate)
            except Exception as e:  # the model failing must not stall the conversation: fall back to the words
                logger.warning(f"{self}: end-of-turn model failed ({type(e).__name__}: {e}); judging by words")
        if self._stopped_at != stopped_at:
            return
        self._verdict = probability
        self._judging = None
        await self._progress()

    # -- deciding ----------------------------------------------------------------------------------------------

    def _complete(self) -> bool:
        if sounds_unfinished(self._text):
            return False
        return self._verdict is None or self._verdict >= self.threshold

    async def _progress(self):
        """Once the user is quiet: speculate when the words are in; (re)arm the decision when the model has judged
        (again when new words change the verdict: "... for two at" arriving after the model said finished)."""
        if not self._turn_active or self._speaking or self._stopped_at is None:
            return
        if self.preemptive and self._text and self._stt_pending == 0:
            await self._speculate()
        if self._judging is not None:
            return
        complete = self._complete()
        if self._timer is not None:
            if complete == self._armed_complete:
                return
            await self._cancel(self._timer)
        wait = self.complete_wait_s if complete else self.incomplete_wait_s
        self._armed_complete = complete
        decision = {"at": self._stopped_at, "probability": self._verdict, "text": self._text, "complete": complete}
        if self.decisions and self.decisions[-1]["at"] == self._stopped_at:
            self.decisions[-1] = decision
        else:
            self.decisions.append(decision)
        logger.debug(
            f"{self}: user quiet; sounds {'finished' if complete else 'unfinished'} (model "
            f"{'-' if self._verdict is None else f'{self._verdict:.2f}'}, words {self._text!r}): wait {wait:g} s"
        )
        self._timer = self.task_manager.create_task(self._expire(self._stopped_at + wait), f"{self}::timer")

    async def _speculate(self):
        text = self._text
        if self._speculation is not None:
            if self._speculation.text == text:
                return
            self._speculation = None
            await self.trigger_user_turn_speculation_cancelled()
        self._speculation = UserTurnSpeculation(text=text)
        logger.debug(f"{self}: starting the answer early on {text!r}")
        await self.trigger_user_turn_inference_triggered(speculation=self._speculation)

    async def _expire(self, deadline: float):
        try:
            await asyncio.sleep(max(0.0, deadline - self._now()))
            held = 0.0
            # sound the VAD has not confirmed as speech yet: hold (a click lets go after hold_s)
            while self._audio.speech_resumed(self._stopped_at or 0.0) and held < self.hold_s:
                await asyncio.sleep(0.02)
                held += 0.02
            waited = 0.0
            while (self._stt_pending > 0 or not self._text) and waited < self.stt_grace_s:
                await asyncio.sleep(0.05)
                waited += 0.05
        except asyncio.CancelledError:
            return
        self._timer = None
        if not self._turn_active or self._speaking:
            return
        if not self._text:
            return  # no words at all: not a turn for the LLM (false-interruption recovery or the stop timeout)
        await self._commit()

    async def _commit(self):
        speculation, self._speculation = self._speculation, None
        if speculation is not None and speculation.text == self._text:
            await self.trigger_user_turn_finalized(confirms_speculation=True)
            return
        if speculation is not None:
            await self.trigger_user_turn_speculation_cancelled()
        await self.trigger_user_turn_stopped()


# --------------------------------------------------------------------------------------------------------------------
# Late transcripts
# --------------------------------------------------------------------------------------------------------------------


class LateTranscriptUserTurnStartStrategy(BaseUserTurnStartStrategy):
    """Keeps a transcript that belongs to an ended user turn from opening a turn of its own.

    The segmented STT tags each ``TranscriptionFrame`` with the time of the VAD stop that ended its segment
    (``metadata["vad_stop_at"]``). One arriving while no turn is open, for a segment that ended before the last turn
    did, is late: its words are passed on as a ``LateTranscriptFrame`` and taken out of the user aggregator's
    pending text, so pipecat's ``TranscriptionUserTurnStartStrategy`` (after this one) never sees it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._turn_active = False
        self._turn_ended_at: float | None = None
        self.late = 0  # for tests and diagnostics

    async def handle_user_turn_started(self):
        self._turn_active = True

    async def handle_user_turn_stopped(self):
        self._turn_active = False
        self._turn_ended_at = asyncio.get_running_loop().time()

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        if isinstance(frame, TranscriptionFrame) and not self._turn_active and self._turn_ended_at is not None:
            stopped = frame.metadata.get("vad_stop_at")
            if stopped is not None and stopped <= self._turn_ended_at and frame.text.strip():
                self.late += 1
                logger.debug(f"{self}: transcript {frame.text!r} belongs to the turn that ended; not a new turn")
                await self.trigger_reset_aggregation()
                await self.push_frame(LateTranscriptFrame(text=frame.text.strip()))
                return ProcessFrameResult.STOP
        return ProcessFrameResult.CONTINUE


# --------------------------------------------------------------------------------------------------------------------
# Replies nobody heard
# --------------------------------------------------------------------------------------------------------------------


def _join_trailing_user_messages(messages: list[dict]) -> list[dict] | None:
    """``messages`` with a run of user messages at the end joined into one (None: nothing to join)."""
    k = len(messages)
    while k > 0 and messages[k - 1].get("role") == "user" and isinstance(messages[k - 1].get("content"), str):
        k -= 1
    if len(messages) - k < 2:
        return None
    text = " ".join(m["content"].strip() for m in messages[k:] if m["content"].strip())
    return [*messages[:k], {**messages[k], "content": text}]


class UnheardTurnMerger(FrameProcessor):
    """Between the user aggregator and the LLM (see the module docstring). ``context``: the pipeline's context."""

    def __init__(self, *, context: LLMContext, **kwargs):
        super().__init__(**kwargs)
        self._context = context
        self._heard_since_request = True  # the bot played audio since the last request
        self.joined = 0  # for tests and diagnostics

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, BotStartedSpeakingFrame):
            self._heard_since_request = True
        elif direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, LLMContextUserTurnFrame):
                self._join(self._context)
            elif isinstance(frame, LLMContextFrame):
                self._join(frame.context)
                if not getattr(frame, "speculation", False):
                    self._heard_since_request = False
            elif isinstance(frame, LateTranscriptFrame):
                await self._late(frame)
                return
        await self.push_frame(frame, direction)

    def _join(self, context: LLMContext) -> None:
        joined = _join_trailing_user_messages(list(context.get_messages()))
        if joined is not None:
            self.joined += 1
            context.set_messages(joined)

    async def _late(self, frame: LateTranscriptFrame):
        messages = list(self._context.get_messages())
        last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None)
        if last is None or not isinstance(messages[last].get("content"), str):
            self._context.add_message({"role": "user", "content": frame.text})
        else:
            messages[last] = {**messages[last], "content": f"{messages[last]['content'].strip()} {frame.text}"}
            self._context.set_messages(messages)
        if self._heard_since_request:
            logger.debug(f"{self}: late words {frame.text!r} added to the user's last message")
            return
        # the answer to that message has not played: ask again, with all the words
        logger.debug(f"{self}: late words {frame.text!r}; the answer had not played: asking again")
        await self.push_frame(InterruptionFrame())  # the LLM, the TTS and the unplayed reply downstream
        await self.push_frame(LLMContextFrame(context=self._context))


class UnplayedReplyGate(FrameProcessor):
    """Before the output transport: a reply's frames wait here until its first audio, and an interruption that comes
    before any of it played is absorbed with them (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._held: list[tuple[Frame, FrameDirection]] = []
        self._holding = False  # a reply started and none of its audio has passed yet
        self._audio_out = False  # bot audio has passed and the output has not reported the bot stopped since
        self.dropped = 0  # replies dropped before any of their audio played (for tests and diagnostics)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.UPSTREAM:
            if isinstance(frame, BotStoppedSpeakingFrame):
                self._audio_out = False
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, InterruptionFrame):
            if self._holding and not self._audio_out:
                kept = [(f, d) for f, d in self._held if not f.interruptible]
                self._held, self._holding = [], False
                self.dropped += 1
                logger.debug(f"{self}: the reply was dropped before any of it played; nothing to tell the client")
                for f, d in kept:
                    await self.push_frame(f, d)
                return
            self._held, self._holding, self._audio_out = [], False, False
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, SystemFrame):
            await self.push_frame(frame, direction)
            return
        if (
            isinstance(frame, (LLMFullResponseStartFrame, TTSStartedFrame))
            and not self._holding
            and not self._audio_out
        ):
            self._holding = True
        if self._holding:
            self._held.append((frame, direction))
            if isinstance(frame, TTSAudioRawFrame):
                await self._release()
            elif isinstance(frame, LLMFullResponseEndFrame) and not any(
                isinstance(f, (TTSStartedFrame, TTSAudioRawFrame)) for f, _ in self._held
            ):
                await self._release()  # a reply without audio (a skip_tts one): nothing to wait for
            return
        if isinstance(frame, TTSAudioRawFrame):
            self._audio_out = True
        await self.push_frame(frame, direction)

    async def _release(self):
        held, self._held, self._holding = self._held, [], False
        for f, d in held:
            if isinstance(f, TTSAudioRawFrame):
                self._audio_out = True
            await self.push_frame(f, d)
