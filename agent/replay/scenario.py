"""The replay scenario file (YAML), as pydantic models validated on load. The schema is documented in docs/replay.md.

``load_scenario(path)`` raises ``ScenarioError`` whose message names the file and each bad field
(``turns.2.after: Input should be 'start', 'previous_end', ...``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.settings import Settings

EventKind = Literal[
    "user_speech_start",
    "user_speech_end",
    "bot_started_speaking",
    "bot_stopped_speaking",
    "interruption",
    "user_turn_start",
    "user_turn_end",
    "vad_start",
    "vad_stop",
    "transcript",
    "resumed",
]
LATENCIES = ("voice_to_voice", "barge_in_stop", "tts_first_audio")


class ScenarioError(ValueError):
    """A scenario file that cannot be used (unreadable, bad YAML, or a field that fails validation)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LLMSpec(_Strict):
    """``scripted``: replies in order, one per LLM request (deterministic); omitted: ``settings.llm``'s real LLM."""

    scripted: list[str] | None = None
    token_ms: float = Field(20.0, ge=0.0)  # scripted: time between streamed words


class STTSpec(_Strict):
    """``scripted``: transcripts in order, one per STT segment ("" = nothing heard); omitted: ``settings.stt``."""

    scripted: list[str] | None = None


class TTSSpec(_Strict):
    """espeak options (the TTS engine itself is ``settings.tts.engine``)."""

    rate: int | None = Field(None, ge=80, le=450)  # espeak words per minute


class TransportSpec(_Strict):
    sample_rate: int = Field(16000, ge=8000, le=48000)  # the client's audio rate, in and out (8000 = telephony)
    telephony: bool | None = None  # None: telephony when sample_rate is 8000


class Turn(_Strict):
    """One user utterance: ``audio`` (a file, any rate/format) or ``text`` (synthesised offline with espeak)."""

    name: str = ""
    audio: str | None = (
        None  # path relative to the scenario file, ``clip:NAME`` (testkit/audio), ``human:NAME`` (gradio)
    )
    text: str | None = None
    voice: str = "English"  # espeak language for ``text`` (e.g. "English", "en-gb")
    variant: str | None = None  # espeak variant for ``text`` (e.g. "f3")
    rate: int = Field(170, ge=80, le=450)  # espeak words per minute for ``text``
    gain: float = Field(1.0, gt=0.0, le=10.0)
    at_ms: float | None = Field(None, ge=0.0)  # absolute time from the start of the replay
    after: Literal["start", "previous_end", "bot_started_speaking", "bot_stopped_speaking"] = "previous_end"
    offset_ms: float = 0.0  # after the ``after`` event, >= 0

    @model_validator(mode="after")
    def _one_source(self):
        if (self.audio is None) == (self.text is None):
            raise ValueError("give exactly one of 'audio' or 'text'")
        if self.at_ms is not None and "after" in self.model_fields_set:
            raise ValueError("give either 'at_ms' or 'after' (+ 'offset_ms'), not both")
        if self.offset_ms < 0:
            raise ValueError("'offset_ms' must be >= 0")
        return self


class Expectation(_Strict):
    """Checks on one user turn (``turn``: its name or index) or, without ``turn``, on the whole replay."""

    turn: str | int | None = None
    transcript_contains: str | list[str] | None = None
    transcript_matches: str | None = None  # regular expression, case-insensitive, searched
    reply_contains: str | list[str] | None = None  # the bot's words the user heard after this turn
    reply_matches: str | None = None
    interrupted: bool | None = None  # this turn interrupted the bot (a barge-in)
    resumed: bool | None = None  # after this turn the bot resumed its interrupted reply (a false interruption)
    answered: bool | None = None  # the bot started speaking in response to this turn
    within_ms: dict[Literal["voice_to_voice", "barge_in_stop", "tts_first_audio"], float] | None = None
    absent: list[EventKind] | None = None  # events that must not happen (in this turn's window / the whole replay)
    count: dict[EventKind, int] | None = None  # exact number of events (whole replay only)

    @field_validator("transcript_matches", "reply_matches")
    @classmethod
    def _regex(cls, v):
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"bad regular expression: {e}") from None
        return v

    @model_validator(mode="after")
    def _scoped(self):
        per_turn = (
            "transcript_contains",
            "transcript_matches",
            "reply_contains",
            "reply_matches",
            "interrupted",
            "resumed",
            "answered",
            "within_ms",
        )
        if self.turn is None and any(getattr(self, f) is not None for f in per_turn):
            raise ValueError(f"{', '.join(f for f in per_turn if getattr(self, f) is not None)} need a 'turn'")
        if self.turn is not None and self.count is not None:
            raise ValueError("'count' applies to the whole replay: drop 'turn'")
        return self


class Scenario(_Strict):
    name: str = ""
    description: str = ""
    engines: str = ""  # which engines this scenario uses and why (documentation)
    settings: dict[str, Any] = Field(default_factory=dict)  # agent.settings.Settings fields, as `duplex serve` reads
    llm: LLMSpec = LLMSpec()
    stt: STTSpec = STTSpec()
    tts: TTSSpec = TTSSpec()
    transport: TransportSpec = TransportSpec()
    turns: list[Turn] = Field(min_length=1)
    settle_ms: float = Field(1500.0, ge=0.0)  # keep running this long after the last turn and the bot fell silent
    max_duration_s: float = Field(120.0, gt=0.0)  # give up (on the replay clock) after this
    expect: list[Expectation] = Field(default_factory=list)
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("settings")
    @classmethod
    def _settings(cls, v):
        try:
            Settings.model_validate(v)
        except ValidationError as e:
            raise ValueError(_format_errors(e, prefix="")) from None
        return v

    @model_validator(mode="after")
    def _refs(self):
        names = [t.name for t in self.turns if t.name]
        if len(names) != len(set(names)):
            raise ValueError("turn names must be unique")
        for i, e in enumerate(self.expect):
            if e.turn is not None and self.turn_index(e.turn) is None:
                raise ValueError(f"expect.{i}.turn: no turn {e.turn!r} (names: {names or 'none'}; or an index)")
        return self

    def turn_index(self, ref: str | int) -> int | None:
        if isinstance(ref, int):
            return ref if 0 <= ref < len(self.turns) else None
        return next((i for i, t in enumerate(self.turns) if t.name == ref), None)

    def audio_path(self, ref: str) -> Path:
        """A turn's ``audio``: a named clip (``clip:``/``human:``, see ``testkit.clips``) or a path relative to the
        scenario file. Raises ``FileNotFoundError`` saying what is missing."""
        from testkit.clips import resolve

        named = resolve(ref)
        if named is not None:
            return named
        path = self.base_dir / ref
        if not path.is_file():
            raise FileNotFoundError(f"no such file {ref!r} (relative to {self.base_dir})")
        return path

    def turn_label(self, i: int) -> str:
        return self.turns[i].name or f"turn {i}"

    def agent_settings(self) -> Settings:
        """``Settings()`` (env defaults, like ``duplex serve``) with the scenario's fields on top."""
        base = Settings().model_dump()
        return Settings.model_validate(_merge(base, self.settings))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _format_errors(e: ValidationError, prefix: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"{prefix}{loc}: {err['msg']}" if loc else f"{prefix}{err['msg']}")
    return "; ".join(lines)


def parse_scenario(data: Any, *, base_dir: Path = Path("."), source: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping (name, settings, turns, expect, ...)")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as e:
        details = _format_errors(e, prefix="").replace("; ", "\n  ")
        raise ScenarioError(f"{source}: invalid scenario:\n  {details}") from None
    scenario.base_dir = base_dir
    for i, turn in enumerate(scenario.turns):
        if turn.audio is not None:
            try:
                scenario.audio_path(turn.audio)
            except FileNotFoundError as e:
                raise ScenarioError(f"{source}: turns.{i}.audio: {e}") from None
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"{path}: not valid YAML: {e}") from None
    return parse_scenario(data, base_dir=path.resolve().parent, source=str(path))
