"""What a replay produced: ``ReplayResult`` (the timeline, audio, context, failures) and one ``TurnResult`` per
scenario utterance. Times are seconds from the start of the replay."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.settings import Settings
from pipelines.metrics import TurnMetrics

from .scenario import Scenario


@dataclass
class TurnResult:
    """One scenario utterance: what was fed, the pipeline's user turns it produced, what the bot said after it.

    An utterance with pauses can produce several pipeline turns (``pipeline``): each is one VAD-started user turn of
    the pipeline (``TurnMetrics``, times on the pipeline clock) that started inside the utterance's speech (or up to
    1 s after it, the VAD's lag), or one a late transcript started after it. The flags are over all of them."""

    index: int
    name: str
    fed_at: float  # the utterance's first sample
    speech_start: float  # voiced span (ground truth: labels or the energy detector)
    speech_end: float
    segments: list[tuple[float, float]] = field(default_factory=list)  # voiced stretches
    pipeline: list[TurnMetrics] = field(default_factory=list)
    transcript: str = ""
    reply: str = ""  # bot words the user heard from its first pipeline turn to the next utterance's
    window: tuple[float, float] = (0.0, float("inf"))  # replay times whose played bot words are this turn's reply
    span: tuple[float, float] = (0.0, float("inf"))  # its speech onset to the next utterance's: per-turn event counts
    interruptions: int = 0  # interruptions reaching the client within ``span``
    messages: list[dict[str, Any]] = field(default_factory=list)  # context messages its pipeline turns added
    merged_into: str | None = None  # spoken before the previous turn ended: part of that turn (named)
    released_at: float | None = None  # the bot, held by this sound, played on from where it stopped (replay time)
    fed: bool = True  # False: the replay stopped (max_duration_s, an anchor event that never came) before it

    @property
    def metrics(self) -> TurnMetrics | None:
        """The first pipeline turn (None: no turn started, e.g. held back by the echo guard, or merged)."""
        return self.pipeline[0] if self.pipeline else None

    @property
    def pipeline_turns(self) -> int:
        return len(self.pipeline)

    @property
    def interrupted(self) -> bool:
        """One of its pipeline turns barged in on the bot."""
        return any(m.barge_in is not None for m in self.pipeline)

    @property
    def resumed(self) -> bool:
        return any(m.resumed for m in self.pipeline)

    @property
    def answered(self) -> bool:
        return any(m.bot_started_at is not None for m in self.pipeline)

    def latencies(self) -> dict[str, float | None]:
        """``voice_to_voice`` / ``tts_first_audio``: of the last pipeline turn the bot answered (the answer to the
        whole utterance); ``barge_in_stop``: of the first pipeline turn that barged in; ``resume``: from the end of
        the sound to the bot playing on where it stopped, when the sound held the bot and was not an interruption."""
        answered = [m for m in self.pipeline if m.bot_started_at is not None]
        barged = [m for m in self.pipeline if m.barge_in is not None]
        return {
            "voice_to_voice": answered[-1].voice_to_voice if answered else None,
            "barge_in_stop": barged[0].barge_in.stop_latency_from_onset if barged else None,
            "tts_first_audio": answered[-1].tts_first_audio if answered else None,
            "resume": None if self.released_at is None else self.released_at - self.speech_end,
        }


@dataclass
class ReplayResult:
    """Everything a replay produced; ``failures`` lists the expectations that did not hold."""

    scenario: Scenario
    realtime: bool
    turns: list[TurnResult]
    events: list[dict[str, Any]]  # {"t", "kind", "label"} sorted by time
    duration_s: float  # replay (audio) time covered
    wall_s: float  # real seconds it took
    user_audio: list[tuple[float, np.ndarray]]  # (start, float32 mono at sample_rate) per fed utterance
    bot_audio: list[tuple[float, np.ndarray]]  # (start, float32 mono at sample_rate) per played chunk
    sample_rate: int
    background: np.ndarray | None = None  # the noise beds as mixed under the input, from 0 s, at sample_rate
    played_words: list[tuple[float, str]] = field(default_factory=list)  # (time, word) as the bot's audio played
    llm_requests: list[dict[str, Any]] = field(default_factory=list)  # t, turn, speculative (+ the scripted reply)
    other_turns: list[TurnMetrics] = field(default_factory=list)  # pipeline turns of no utterance (noise, echo)
    context: list[dict[str, Any]] = field(default_factory=list)
    settings: Settings | None = None
    settings_source: str = "defaults + scenario"
    clock_origin: float = 0.0  # the pipeline-clock time of the replay's start (``TurnMetrics`` use that clock)
    failures: list[str] = field(default_factory=list)

    @property
    def transcripts(self) -> list[str]:
        return [t.transcript for t in self.turns]

    def turn(self, ref: str | int) -> TurnResult:
        i = self.scenario.turn_index(ref)
        if i is None:
            raise KeyError(ref)
        return self.turns[i]

    def events_of(self, kind: str) -> list[float]:
        return [e["t"] for e in self.events if e["kind"] == kind]

    def summary(self) -> str:
        def ms(v):
            return "-" if v is None else f"{v * 1000:.0f} ms"

        mode = "real time" if self.realtime else "virtual clock"
        lines = [
            f"replay {self.scenario.name or '(unnamed)'}: {self.duration_s:.1f} s of conversation in "
            f"{self.wall_s:.1f} s ({mode}; settings: {self.settings_source})"
        ]
        for t in self.turns:
            if not t.fed:
                lines.append(f"  [   -    ] {t.name}: never fed (the replay stopped before it)")
                continue
            flags = [f for f, on in (("interrupted", t.interrupted), ("resumed", t.resumed)) if on]
            if t.released_at is not None:
                flags.append("held and released")
            if t.pipeline_turns != 1:
                flags.append(f"{t.pipeline_turns} pipeline turns")
            if t.interruptions > 1:
                flags.append(f"{t.interruptions} interruptions")
            if t.merged_into:
                flags.append(f"merged into {t.merged_into!r}")
            lat = ", ".join(f"{k} {ms(v)}" for k, v in t.latencies().items() if v is not None)
            flag_text = f" ({', '.join(flags)})" if flags else ""
            lines.append(
                f"  [{t.speech_start:6.2f} s] {t.name}: heard {t.transcript!r}{flag_text}; bot: {t.reply!r}"
                + (f"; {lat}" if lat else "")
            )
        for m in self.other_turns:
            start = self.rel(m.vad_start if m.vad_start is not None else m.user_turn_start)
            barge = " (interrupted)" if m.barge_in is not None else ""
            lines.append(f"  [{start:6.2f} s] (no utterance) pipeline turn {m.index}{barge}: heard {m.transcript!r}")
        return "\n".join(lines)

    def rel(self, t: float | None) -> float | None:
        """A pipeline-clock time (``TurnMetrics``) as seconds from the replay's start."""
        return None if t is None else t - self.clock_origin

    def timeline_text(self) -> str:
        return "\n".join(
            f"    {e['t']:7.3f} {e['kind']}{' ' + repr(e['label']) if e['label'] else ''}" for e in self.events
        )

    def check(self) -> None:
        """Raise ``AssertionError`` listing every failed expectation (with the timeline for context)."""
        if self.failures:
            raise AssertionError(
                f"replay {self.scenario.name or ''}: {len(self.failures)} expectation(s) failed:\n"
                + "\n".join(f"  - {f}" for f in self.failures)
                + f"\n{self.summary()}\n  timeline:\n{self.timeline_text()}"
            )
