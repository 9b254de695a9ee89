"""``PipelineRecorder``: what a replay reports beyond the per-turn metrics, recorded from the frames the pipeline
pushes (times on the pipeline clock, seconds).

* every VAD event (``VADUserStartedSpeakingFrame`` / ``VADUserStoppedSpeakingFrame`` from the user aggregator),
  including the stops inside a turn and the starts the echo guard held back;
* every transcript and interim transcript the STT pushes;
* every LLM request (``LLMContextFrame`` from the user aggregator): speculative or not, the pipeline turn it was made
  in, and how long the conversation's context was at that moment — which is how the final context is split into
  the messages each turn added (``messages_by_request``). A speculative request (preemptive generation, while the
  turn was still open) is ``withdrawn`` when the user went on, or ``confirmed`` when the turn ended on it (the user
  message written without a new request): then it is that turn's request;
* the bot's words as the output transport releases them, i.e. as their audio plays (TTS word timestamps): what the
  user heard, cut where the bot was interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipecat.frames.frames import (
    EagerEndOfTurnCancelFrame,
    InterimTranscriptionFrame,
    LLMContextFrame,
    LLMContextUserTurnFrame,
    TranscriptionFrame,
    TTSTextFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection

from pipelines.metrics import VoiceMetricsObserver


@dataclass
class LLMRequest:
    t: float
    turn: int | None  # index of the pipeline turn it was made in (``VoiceMetricsObserver.turns``)
    speculative: bool  # run on a provisional context (the turn had not ended): adds nothing to the conversation
    context_len: int  # messages in the conversation's context at that moment (its own user message included)
    withdrawn: bool = False  # speculative, and the user went on
    confirmed: bool = False  # speculative, and the turn ended on it (its answer is the turn's answer)

    @property
    def answers_turn(self) -> bool:
        """A request the conversation kept: an ordinary one, or an early one the turn's end confirmed."""
        return not self.speculative or self.confirmed


class PipelineRecorder(BaseObserver):
    """Records VAD events, transcripts, LLM requests and played words (see the module docstring). ``bind`` it to the
    built agent's processors before the pipeline runs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.vad: list[tuple[float, str]] = []  # (t, "vad_start" | "vad_stop")
        self.transcripts: list[tuple[float, str, bool]] = []  # (t, text, final)
        self.requests: list[LLMRequest] = []
        self.played_words: list[tuple[float, str]] = []
        self._user = self._stt = self._output = self._context = None
        self._metrics: VoiceMetricsObserver | None = None
        self._written: int | None = None  # a user message was just written (context length), no request yet

    def bind(self, *, user: Any, stt: Any, output: Any, context: Any, metrics: VoiceMetricsObserver) -> None:
        self._user, self._stt, self._output, self._context, self._metrics = user, stt, output, context, metrics

    async def on_push_frame(self, data: FramePushed):
        if data.direction != FrameDirection.DOWNSTREAM:
            return
        frame, t = data.frame, data.timestamp / 1e9
        if data.source is self._user:
            if self._written is not None and not isinstance(frame, (LLMContextFrame, LLMContextUserTurnFrame)):
                self._confirm(self._written)  # the message went in without a request of its own
            if isinstance(frame, LLMContextUserTurnFrame):
                self._written = len(self._context.get_messages()) if self._context is not None else 0
            elif isinstance(frame, EagerEndOfTurnCancelFrame):
                last = self._last_speculative()
                if last is not None:
                    last.withdrawn = True
            elif isinstance(frame, VADUserStartedSpeakingFrame):
                self.vad.append((t, "vad_start"))
            elif isinstance(frame, VADUserStoppedSpeakingFrame):
                self.vad.append((t, "vad_stop"))
            elif isinstance(frame, LLMContextFrame):
                turn = self._metrics.current.index if self._metrics and self._metrics.current else None
                length = len(self._context.get_messages()) if self._context is not None else 0
                self.requests.append(LLMRequest(t, turn, bool(getattr(frame, "speculation", False)), length))
                if not self.requests[-1].speculative:
                    self._written = None
        elif data.source is self._stt:
            if isinstance(frame, InterimTranscriptionFrame) and frame.text.strip():
                self.transcripts.append((t, frame.text.strip(), False))
            elif isinstance(frame, TranscriptionFrame) and frame.text.strip():
                self.transcripts.append((t, frame.text.strip(), True))
        elif data.source is self._output and isinstance(frame, TTSTextFrame):
            self.played_words.append((t, frame.text))

    def _last_speculative(self) -> LLMRequest | None:
        last = self.requests[-1] if self.requests else None
        return last if last is not None and last.speculative and not last.withdrawn and not last.confirmed else None

    def _confirm(self, written: int) -> None:
        self._written = None
        last = self._last_speculative()
        if last is not None:
            last.confirmed = True
            last.context_len = written

    def finish(self) -> None:
        """Settle what the last frames left open (call after the pipeline stopped)."""
        if self._written is not None:
            self._confirm(self._written)

    def messages_by_request(self, final: list[dict]) -> list[list[dict]]:
        """``final`` (the context at the end) split into the messages each non-speculative request added, in order:
        the user message(s) it was made with and the assistant message(s) that followed until the next request
        (an interrupted reply cut to the played words, a resumed reply joined into one message). Messages before
        the first request's user message (a preset context) belong to none. Assumes what the pipeline does:
        messages are appended, and only the newest assistant messages are ever rewritten."""
        requests = [r for r in self.requests if r.answers_turn]
        starts: list[int] = []
        previous_len = 0
        for r in requests:
            end = min(r.context_len, len(final))
            start = end
            while start - 1 >= previous_len and final[start - 1].get("role") == "user":
                start -= 1
            starts.append(max(start, starts[-1] if starts else 0))
            previous_len = end
        bounds = starts + [len(final)]
        return [list(final[bounds[i] : bounds[i + 1]]) for i in range(len(requests))]
