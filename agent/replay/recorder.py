"""``PipelineRecorder``: what a replay reports beyond the per-turn metrics, recorded from the frames the pipeline
pushes (times on the pipeline clock, seconds).

* every VAD event (``VADUserStartedSpeakingFrame`` / ``VADUserStoppedSpeakingFrame`` from the user aggregator),
  including the stops inside a turn and the starts the echo guard held back;
* every transcript and interim transcript the STT pushes;
* every LLM request (``LLMContextFrame`` from the user aggregator): speculative or not, the pipeline turn it was made
  in, and how long the conversation's context was at that moment — which is how the final context is split into
  the messages each turn added (``messages_by_request``);
* the bot's words as the output transport releases them, i.e. as their audio plays (TTS word timestamps): what the
  user heard, cut where the bot was interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipecat.frames.frames import (
    InterimTranscriptionFrame,
    LLMContextFrame,
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

    def bind(self, *, user: Any, stt: Any, output: Any, context: Any, metrics: VoiceMetricsObserver) -> None:
        self._user, self._stt, self._output, self._context, self._metrics = user, stt, output, context, metrics

    async def on_push_frame(self, data: FramePushed):
        if data.direction != FrameDirection.DOWNSTREAM:
            return
        frame, t = data.frame, data.timestamp / 1e9
        if data.source is self._user:
            if isinstance(frame, VADUserStartedSpeakingFrame):
                self.vad.append((t, "vad_start"))
            elif isinstance(frame, VADUserStoppedSpeakingFrame):
                self.vad.append((t, "vad_stop"))
            elif isinstance(frame, LLMContextFrame):
                turn = self._metrics.current.index if self._metrics and self._metrics.current else None
                length = len(self._context.get_messages()) if self._context is not None else 0
                self.requests.append(LLMRequest(t, turn, bool(getattr(frame, "speculation", False)), length))
        elif data.source is self._stt:
            if isinstance(frame, InterimTranscriptionFrame) and frame.text.strip():
                self.transcripts.append((t, frame.text.strip(), False))
            elif isinstance(frame, TranscriptionFrame) and frame.text.strip():
                self.transcripts.append((t, frame.text.strip(), True))
        elif data.source is self._output and isinstance(frame, TTSTextFrame):
            self.played_words.append((t, frame.text))

    def messages_by_request(self, final: list[dict]) -> list[list[dict]]:
        """``final`` (the context at the end) split into the messages each non-speculative request added, in order:
        the user message(s) it was made with and the assistant message(s) that followed until the next request
        (an interrupted reply cut to the played words, a resumed reply joined into one message). Messages before
        the first request's user message (a preset context) belong to none. Assumes what the pipeline does:
        messages are appended, and only the newest assistant messages are ever rewritten."""
        requests = [r for r in self.requests if not r.speculative]
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
