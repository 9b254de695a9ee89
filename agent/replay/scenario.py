"""The replay scenario file (YAML), as pydantic models validated on load. The schema is documented in docs/replay.md.

``load_scenario(path)`` raises ``ScenarioError`` whose message names the file and lists every problem, one per line
(``turns.2.after: Input should be 'start', 'previous_end', ...``; ``settings.turns: unknown setting (did you mean
'turn'?)``; ``expect.0.turn: no turn 'question' (names: q; or an index)``; ``turns.1.audio: notes.txt is not usable
audio: ...``). Loading also decodes (or synthesises) every utterance and noise bed, so a scenario that loads runs.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from agent.settings import Settings
from processors.audio import resample

from .agent_settings import scenario_settings, settings_errors
from .audio import NOISE_RATE, ScenarioAudioError, coloured_noise, decode, synthesise

EventKind = Literal[
    "user_speech_start",
    "user_speech_end",
    "vad_start",
    "vad_stop",
    "user_turn_start",
    "user_turn_end",
    "transcript",
    "interim_transcript",
    "llm_request",
    "llm_request_dropped",
    "bot_started_speaking",
    "bot_stopped_speaking",
    "interruption",
    "resumed",
    "bot_held",
    "bot_released",
]
LATENCIES = ("voice_to_voice", "barge_in_stop", "tts_first_audio", "resume")
ROLES = ("user", "assistant", "system")


class ScenarioError(ValueError):
    """A scenario that cannot be used (unreadable, bad YAML, a field that fails validation, audio that is not audio).
    ``duplex replay`` exits with status 2 on it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LLMSpec(_Strict):
    """``scripted``: replies in order, one per answer the user hears (``agent.replay.scripted``); omitted:
    ``settings.llm``'s real LLM."""

    scripted: list[str] | None = None
    token_ms: float = Field(20.0, ge=0.0)  # scripted: time between streamed words


class STTSpec(_Strict):
    """``scripted``: transcripts in order, one per STT segment ("" = nothing heard). ``labelled``: the STT hears the
    words the scenario labels (each sound's ``words``; a ``text`` sound's own text), wherever the VAD cuts the
    segments (``agent.replay.scripted.LabelledSTTEngine``). Neither: ``settings.stt``'s engine. ``latency_ms``: the
    scripted or labelled STT's final transcripts come that long after their segment ended, as a slow CPU STT's do
    (compute takes no time on the virtual clock: this is how a replay shows what a slow STT does to turns)."""

    scripted: list[str] | None = None
    labelled: bool = False
    latency_ms: float = Field(0.0, ge=0.0)  # scripted / labelled: each final transcript comes this late (a slow STT)

    @model_validator(mode="after")
    def _one_kind(self):
        if self.labelled and self.scripted is not None:
            raise ValueError("give either 'scripted' transcripts or 'labelled: true', not both")
        if self.latency_ms and not (self.labelled or self.scripted is not None):
            raise ValueError("'latency_ms' slows a scripted or labelled STT (a real engine takes the time it takes)")
        return self


class TTSSpec(_Strict):
    """espeak options (the TTS engine itself is ``settings.tts.engine``)."""

    rate: int | None = Field(None, ge=80, le=450)  # espeak words per minute


class TransportSpec(_Strict):
    sample_rate: int = Field(16000, ge=8000, le=48000)  # the client's audio rate, in and out (8000 = telephony)
    telephony: bool | None = None  # None: telephony when sample_rate is 8000


Span = tuple[float, float]


class _Sound(_Strict):
    """Where an utterance's audio comes from: ``audio`` (a file, any rate/format) or ``text`` (synthesised offline
    with espeak-ng), optionally cut to ``from_ms`` .. ``to_ms`` (a sentence cut mid-way keeps its mid-sentence
    prosody, which synthesising the fragment alone would not)."""

    audio: str | None = None  # path relative to the scenario file, ``clip:NAME`` (testkit/audio), ``human:NAME``
    from_ms: float = Field(0.0, ge=0.0)  # start here (``audio``, or the synthesised ``text``)
    to_ms: float | None = Field(None, gt=0.0)  # end here (None: the end)
    text: str | None = None
    voice: str = "English"  # espeak language for ``text`` (e.g. "English", "en-gb")
    variant: str | None = None  # espeak variant for ``text`` (e.g. "f3")
    rate: int = Field(170, ge=80, le=450)  # espeak words per minute for ``text``
    gain: float = Field(1.0, gt=0.0, le=10.0)
    words: str | None = None  # what is said (``stt: {labelled: true}``); default: a ``text``, a whole ``clip:``
    labels: dict[str, Any] = Field(default_factory=dict)  # free-form, for tools that read scenarios (not the replay)

    def _check_sound(self, sources: dict[str, bool]) -> None:
        given = [name for name, on in sources.items() if on]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {' or '.join(repr(n) for n in sources)}")
        if ("from_ms" in self.model_fields_set or self.to_ms is not None) and self.audio is None and self.text is None:
            raise ValueError("'from_ms' / 'to_ms' cut an 'audio' file or synthesised 'text'")
        if self.to_ms is not None and self.to_ms <= self.from_ms:
            raise ValueError("'to_ms' must be after 'from_ms'")

    def said(self) -> str:
        """The words labelled as said in this sound (its ``words``, else a ``text`` sound's text)."""
        if self.words is not None:
            return self.words
        return self.text or ""


class Part(_Sound):
    """A piece of a composed utterance (``parts``): a stretch of a file, synthesised text, or ``silence_ms``."""

    silence_ms: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _one_source(self):
        sources = {"audio": self.audio is not None, "text": self.text is not None}
        self._check_sound({**sources, "silence_ms": self.silence_ms is not None})
        if self.silence_ms is not None and self.words:
            raise ValueError("a silence says no 'words'")
        return self


class Turn(_Sound):
    """One user utterance: ``audio``, ``text`` or ``parts`` (pieces of files, text and silences played back to back:
    a pause inserted, a backchannel spliced in), and when it starts."""

    name: str = ""
    parts: list[Part] | None = Field(None, min_length=1)
    at_ms: float | None = Field(None, ge=0.0)  # absolute time from the start of the replay
    after: Literal["start", "previous_end", "bot_started_speaking", "bot_stopped_speaking"] = "previous_end"
    offset_ms: float = 0.0  # after the ``after`` event, >= 0
    speech_s: list[Span] | None = None  # labels: the voiced stretches, seconds from the utterance's start

    @model_validator(mode="after")
    def _one_source(self):
        self._check_sound({"audio": self.audio is not None, "text": self.text is not None, "parts": bool(self.parts)})
        if self.parts and self.words is not None:
            raise ValueError("with 'parts', label the 'words' of each part")
        if self.at_ms is not None and "after" in self.model_fields_set:
            raise ValueError("give either 'at_ms' or 'after' (+ 'offset_ms'), not both")
        if self.offset_ms < 0:
            raise ValueError("'offset_ms' must be >= 0")
        if self.speech_s is not None:
            last = 0.0
            for start, end in self.speech_s:
                if not (last <= start < end):
                    raise ValueError("'speech_s' spans must be [start, end] seconds, increasing, not overlapping")
                last = end
        return self

    def sounds(self) -> list[_Sound]:
        return list(self.parts) if self.parts else [self]


class NoiseSpec(_Strict):
    """A bed under the whole conversation: a file (``audio``) or generated noise (``color``), mixed into what the
    pipeline hears from ``at_ms`` until ``until_ms`` (default: the end), looped. It is not speech: the utterances'
    speech spans are measured without it."""

    audio: str | None = None  # as a turn's audio: a path, ``clip:NAME`` or ``human:NAME``
    color: Literal["white", "pink", "brown"] | None = None
    level_dbfs: float | None = Field(None, le=0.0)  # RMS level; required for ``color``
    gain: float | None = Field(None, gt=0.0, le=10.0)  # for ``audio``: scale it (default 1) instead of a level
    seed: int = 0  # for ``color``
    at_ms: float = Field(0.0, ge=0.0)
    until_ms: float | None = Field(None, gt=0.0)
    loop: bool = True

    @model_validator(mode="after")
    def _one_source(self):
        if (self.audio is None) == (self.color is None):
            raise ValueError("give exactly one of 'audio' or 'color'")
        if self.color is not None and self.level_dbfs is None:
            raise ValueError("generated noise needs 'level_dbfs' (its RMS level, e.g. -45)")
        if self.color is not None and self.gain is not None:
            raise ValueError("'gain' is for 'audio'; generated noise takes 'level_dbfs'")
        if self.level_dbfs is not None and self.gain is not None:
            raise ValueError("give either 'level_dbfs' or 'gain', not both")
        if self.until_ms is not None and self.until_ms <= self.at_ms:
            raise ValueError("'until_ms' must be after 'at_ms'")
        return self


def _check_phrases(v: Any) -> Any:
    """A phrase, ``{role: phrase}``, or a list of those."""
    for item in v if isinstance(v, list) else [v]:
        if isinstance(item, str):
            continue
        if not (isinstance(item, dict) and len(item) == 1 and next(iter(item)) in ROLES):
            raise ValueError(f"expected a phrase or {{role: phrase}} with role one of {', '.join(ROLES)}")
        if not isinstance(next(iter(item.values())), str):
            raise ValueError("a {role: phrase} needs a string phrase")
    return v


class ContextCheck(_Strict):
    """Checks on LLM context messages: a turn's own (the user message(s) made from it and the assistant message(s)
    answering it, as they stood at the end) or, without ``turn``, the whole context at the end."""

    contains: Any = None  # each phrase in some message (of that role, given ``{role: phrase}``)
    not_contains: Any = None  # no phrase in any message (of that role)
    equals: list[dict[Literal["user", "assistant", "system"], str]] | None = None  # exactly these, in order
    roles: list[Literal["user", "assistant", "system"]] | None = None  # the messages' roles, in order
    assistant_equals_reply: bool | None = None  # its assistant messages hold exactly the words the user heard

    @field_validator("contains", "not_contains")
    @classmethod
    def _phrases(cls, v):
        return None if v is None else _check_phrases(v)

    @field_validator("equals")
    @classmethod
    def _one_role_each(cls, v):
        if v is not None and any(len(m) != 1 for m in v):
            raise ValueError("each message is one {role: text}")
        return v


def _check_count(v: Any) -> Any:
    """An exact count (int >= 0) or a range ``{min: a, max: b}``."""
    if isinstance(v, bool):
        raise ValueError("a count is a number >= 0 or {min, max}")
    if isinstance(v, int):
        if v < 0:
            raise ValueError("a count is >= 0")
        return v
    if isinstance(v, dict) and v and set(v) <= {"min", "max"}:
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v.values()):
            raise ValueError("count bounds are numbers >= 0")
        if v.get("min", 0) > v.get("max", v.get("min", 0)):
            raise ValueError("count 'min' is above 'max'")
        return v
    raise ValueError("a count is a number >= 0 or {min: a, max: b}")


PER_TURN = (
    "transcript_contains",
    "transcript_matches",
    "reply_contains",
    "reply_matches",
    "interrupted",
    "resumed",
    "answered",
    "within_ms",
    "pipeline_turns",
    "interruptions",
)


class Expectation(_Strict):
    """Checks on one user turn (``turn``: its name or index) or, without ``turn``, on the whole replay. ``any_of``:
    at least one of these expectations holds; ``all_of``: all of them (to group checks inside ``any_of``). Nested
    expectations without a ``turn`` take their parent's."""

    turn: str | int | None = None
    transcript_contains: str | list[str] | None = None
    transcript_matches: str | None = None  # regular expression, case-insensitive, searched
    reply_contains: str | list[str] | None = None  # the bot's words the user heard after this turn
    reply_matches: str | None = None
    interrupted: bool | None = None  # this utterance interrupted the bot (one of its pipeline turns barged in)
    resumed: bool | None = None  # after it the bot resumed its interrupted reply (a false interruption)
    answered: bool | None = None  # the bot started speaking in response to it
    pipeline_turns: Any = None  # how many pipeline user turns it produced (a count or {min, max})
    interruptions: Any = None  # interruptions reaching the client from its onset to the next utterance's
    context: ContextCheck | None = None
    within_ms: dict[Literal["voice_to_voice", "barge_in_stop", "tts_first_audio", "resume"], float] | None = None
    absent: list[EventKind] | None = None  # events that must not happen (in this turn's span / the whole replay)
    count: dict[EventKind, Any] | None = None  # number of events (in this turn's span / the whole replay)
    any_of: list[Expectation] | None = Field(None, min_length=1)
    all_of: list[Expectation] | None = Field(None, min_length=1)

    @field_validator("transcript_matches", "reply_matches")
    @classmethod
    def _regex(cls, v):
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"bad regular expression: {e}") from None
        return v

    @field_validator("pipeline_turns", "interruptions")
    @classmethod
    def _count(cls, v):
        return None if v is None else _check_count(v)

    @field_validator("count")
    @classmethod
    def _counts(cls, v):
        if v is None:
            return None
        for kind, n in v.items():
            try:
                _check_count(n)
            except ValueError as e:
                raise ValueError(f"{kind}: {e}") from None
        return v

    def scope_errors(self, turn: str | int | None = None, where: str = "") -> list[str]:
        """Checks that need a turn but have none (own or inherited), here and in nested expectations."""
        turn = self.turn if self.turn is not None else turn
        errors = []
        if turn is None:
            needs = [f for f in PER_TURN if getattr(self, f) is not None]
            if self.context is not None and self.context.assistant_equals_reply is not None:
                needs.append("context.assistant_equals_reply")
            if needs:
                errors.append(f"{where}{', '.join(needs)} {'needs' if len(needs) == 1 else 'need'} a 'turn'")
        for group in ("any_of", "all_of"):
            for i, child in enumerate(getattr(self, group) or []):
                errors += child.scope_errors(turn, f"{where}{group}.{i}: ")
        return errors

    def turn_refs(self, turn: str | int | None = None, where: str = "") -> list[tuple[str, str | int]]:
        turn = self.turn if self.turn is not None else turn
        refs = [(where, self.turn)] if self.turn is not None else []
        for group in ("any_of", "all_of"):
            for i, child in enumerate(getattr(self, group) or []):
                refs += child.turn_refs(turn, f"{where}{group}.{i}.")
        return refs


Expectation.model_rebuild()


class _AudioCache(dict):
    """Decoded files by reference, kept from load to run. A cache: never part of a scenario's equality."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _AudioCache)


class Scenario(_Strict):
    name: str = ""
    description: str = ""
    engines: str = ""  # which engines this scenario uses and why (documentation)
    settings: dict[str, Any] = Field(default_factory=dict)  # agent.settings.Settings fields, as `duplex serve` reads
    inherit_env: bool = False  # True: DUPLEX_* environment variables under `settings` (as `duplex serve`)
    llm: LLMSpec = LLMSpec()
    stt: STTSpec = STTSpec()
    tts: TTSSpec = TTSSpec()
    transport: TransportSpec = TransportSpec()
    noise: list[NoiseSpec] = Field(default_factory=list)
    turns: list[Turn] = Field(min_length=1)
    settle_ms: float = Field(1500.0, ge=0.0)  # keep running this long after the last turn and the bot fell silent
    max_duration_s: float = Field(120.0, gt=0.0)  # give up (on the replay clock) after this
    expect: list[Expectation] = Field(default_factory=list)
    labels: dict[str, Any] = Field(default_factory=dict)  # free-form, for tools that read scenarios (not the replay)
    base_dir: Path = Field(default=Path("."), exclude=True)
    _audio: _AudioCache = PrivateAttr(default_factory=lambda: _AudioCache())

    @field_validator("settings")
    @classmethod
    def _settings(cls, v):
        errors = settings_errors(v)
        if errors:
            raise ValueError("\n".join(errors))
        return v

    @model_validator(mode="after")
    def _refs(self):
        errors = _reference_errors([t.name for t in self.turns], self.expect)
        for i, e in enumerate(self.expect):
            errors += e.scope_errors(where=f"expect.{i}: ")
        if errors:
            raise ValueError("\n".join(errors))
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

    def agent_settings(self, inherit_env: bool | None = None) -> Settings:
        """``Settings`` defaults with the scenario's fields on top; with ``inherit_env`` (default: the scenario's
        ``inherit_env``) the ``DUPLEX_*`` environment underneath, as ``duplex serve`` reads it."""
        return scenario_settings(self.settings, inherit_env=self.inherit_env if inherit_env is None else inherit_env)

    # -- audio ---------------------------------------------------------------------------------------------------

    def load_audio(self) -> list[str]:
        """Decode or synthesise every utterance and noise bed (kept for the run); the problems, one line each."""
        errors = []
        for i, turn in enumerate(self.turns):
            for k, sound in enumerate(turn.sounds()):
                if isinstance(sound, Part) and sound.silence_ms is not None:
                    continue
                where = f"turns.{i}." + (f"parts.{k}." if turn.parts else "")
                try:
                    self._sound(sound)
                except (FileNotFoundError, ScenarioAudioError) as e:
                    errors.append(f"{where}{'audio' if sound.audio is not None else 'text'}: {e}")
            if errors:
                continue
            audio, rate = self.turn_audio(i)
            seconds = len(audio) / rate
            if turn.speech_s and turn.speech_s[-1][1] > seconds + 0.01:
                errors.append(
                    f"turns.{i}.speech_s: ends at {turn.speech_s[-1][1]:g} s, the audio lasts {seconds:.2f} s"
                )
        for i, bed in enumerate(self.noise):
            if bed.audio is not None:
                try:
                    self._decoded(bed.audio)
                except (FileNotFoundError, ScenarioAudioError) as e:
                    errors.append(f"noise.{i}.audio: {e}")
        return errors

    def _decoded(self, ref: str) -> tuple[np.ndarray, int]:
        if ref not in self._audio:
            self._audio[ref] = decode(self.audio_path(ref), repr(ref))
        return self._audio[ref]

    def _sound(self, sound: _Sound) -> tuple[np.ndarray, int]:
        """One file stretch or synthesised text, gain applied (float32 mono) and its rate."""
        if sound.audio is not None:
            audio, rate = self._decoded(sound.audio)
        else:
            audio, rate = synthesise(sound.text, voice=sound.voice, variant=sound.variant, rate=sound.rate)
        first = int(round(sound.from_ms / 1000 * rate))
        last = None if sound.to_ms is None else int(round(sound.to_ms / 1000 * rate))
        if first >= len(audio):
            raise ScenarioAudioError(f"'from_ms' {sound.from_ms:g} is past the end ({len(audio) / rate:.2f} s)")
        audio = audio[first:last]
        return np.clip(np.asarray(audio, dtype=np.float32) * sound.gain, -1.0, 1.0), rate

    def turn_audio(self, i: int) -> tuple[np.ndarray, int]:
        """Turn ``i``'s audio (float32 mono: its parts back to back at the first one's rate, gains applied)."""
        out, rate = self._pieces(i)
        return np.concatenate(out).astype(np.float32), rate

    def _pieces(self, i: int) -> tuple[list[np.ndarray], int]:
        """Turn ``i``'s sounds as audio at one rate (the first sound's), silences included."""
        pieces: list[np.ndarray | float] = []
        rate = None
        for sound in self.turns[i].sounds():
            if isinstance(sound, Part) and sound.silence_ms is not None:
                pieces.append(sound.silence_ms / 1000)
                continue
            audio, r = self._sound(sound)
            rate = rate or r
            pieces.append(audio if r == rate else resample(audio, r, rate))
        rate = rate or NOISE_RATE
        return [np.zeros(int(round(p * rate)), np.float32) if isinstance(p, float) else p for p in pieces], rate

    def part_spans(self, i: int) -> list[tuple[float, float]]:
        """Where each of turn ``i``'s sounds (its ``parts``, or the turn itself) lies in its audio: seconds from the
        utterance's first sample."""
        pieces, rate = self._pieces(i)
        spans, t = [], 0.0
        for piece in pieces:
            spans.append((t, t + len(piece) / rate))
            t += len(piece) / rate
        return spans

    def turn_words(self, i: int) -> list[tuple[float, float, str]]:
        """The labelled words of turn ``i`` (each sound's ``said()``), as ``(start, end, word)`` seconds from the
        utterance's first sample: a sound's words spread over its voiced stretch in proportion to their length
        (labels say what was said, not exactly when)."""
        from pipelines.virtual_transport import voiced_span

        pieces, rate = self._pieces(i)
        out, t = [], 0.0
        for sound, piece in zip(self.turns[i].sounds(), pieces):
            words = _said(sound).split()
            if words:
                a, b = voiced_span(piece, rate)
                if b <= a:
                    a, b = 0.0, len(piece) / rate
                total = sum(len(w) + 1 for w in words)
                pos = 0
                for w in words:
                    w0 = a + (b - a) * pos / total
                    pos += len(w) + 1
                    out.append((t + w0, t + a + (b - a) * pos / total, w))
            t += len(piece) / rate
        return out

    def noise_audio(self, i: int) -> tuple[np.ndarray, int]:
        """Noise bed ``i`` at its level (float32 mono) and its rate."""
        bed = self.noise[i]
        if bed.color is not None:
            audio, rate = coloured_noise(bed.color, seed=bed.seed), NOISE_RATE
        else:
            audio, rate = self._decoded(bed.audio)
        if bed.level_dbfs is not None:
            rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
            scale = 10 ** (bed.level_dbfs / 20) / rms if rms > 0 else 0.0
        else:
            scale = bed.gain if bed.gain is not None else 1.0
        return (np.asarray(audio, dtype=np.float32) * scale).astype(np.float32), rate


def _said(sound: _Sound) -> str:
    """What a sound says: its labels, or the manifest's text of a whole committed clip (``clip:NAME``)."""
    if sound.words is None and sound.text is None and sound.audio and sound.audio.startswith("clip:"):
        from testkit.clips import ClipNotFoundError, clip_text

        if sound.from_ms == 0 and sound.to_ms is None:
            try:
                return clip_text(sound.audio[len("clip:") :])
            except ClipNotFoundError:  # a clip without a manifest entry (a cough) says nothing
                return ""
    return sound.said()


def _reference_errors(names: list[str], expect: list[Any]) -> list[str]:
    """Duplicate turn names and expectations naming no turn, on validated or raw data alike."""
    errors = []
    named = [n for n in names if n]
    if len(named) != len(set(named)):
        errors.append("turns: turn names must be unique")

    def known(ref) -> bool:
        if isinstance(ref, bool):
            return False
        if isinstance(ref, int):
            return 0 <= ref < len(names)
        return ref in named

    def visit(e: Any, where: str):
        if isinstance(e, Expectation):
            e = e.model_dump(exclude_none=True)
        if not isinstance(e, dict):
            return
        ref = e.get("turn")
        if ref is not None and isinstance(ref, (str, int)) and not known(ref):
            close = difflib.get_close_matches(str(ref), named, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            listed = ", ".join(named) if named else "none"
            errors.append(f"{where}turn: no turn {ref!r} ({hint}names: {listed}; or an index 0-{len(names) - 1})")
        for group in ("any_of", "all_of"):
            children = e.get(group)
            if isinstance(children, list):
                for i, child in enumerate(children):
                    visit(child, f"{where}{group}.{i}.")

    for i, e in enumerate(expect if isinstance(expect, list) else []):
        visit(e, f"expect.{i}.")
    return errors


def _model_at(model: Any, loc: tuple) -> type[BaseModel] | None:
    """The pydantic model a validation error's location points into (for "did you mean" on unknown keys)."""
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = _unwrap(field.annotation)
        while isinstance(model, tuple):  # a list/dict of models: the next part is an index or key
            model = model[0]
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _unwrap(arg)
            if found is not None and found is not type(None):
                return found
        return None
    if origin in (list, dict):
        return (_unwrap(typing.get_args(annotation)[-1]),)
    return annotation


def _format_errors(e: ValidationError) -> list[str]:
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and loc:
            parent = _find_model(loc[:-1])
            if parent is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), n=1, cutoff=0.6)
                msg = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
        for line in msg.split("\n"):
            if line.startswith(("settings.", "expect.", "turns:")) and where in ("", "settings"):
                lines.append(line)  # already located
            else:
                lines.append(f"{where}: {line}" if where else line)
    return lines


def _find_model(loc: tuple) -> type[BaseModel] | None:
    parts = [p for p in loc if not isinstance(p, int)]
    if not parts:
        return Scenario
    return _model_at(Scenario, tuple(parts))


def _invalid(source: str, problems: list[str]) -> str:
    """One problem: one line (``bad.yaml: turns.1.audio: ...``); several: one line each under a header."""
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    return f"{source}: invalid scenario:\n  " + "\n  ".join(problems)


def parse_scenario(data: Any, *, base_dir: Path = Path("."), source: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping (name, settings, turns, expect, ...)")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as e:
        lines = _format_errors(e)
        # reference errors are checked after every field is valid; report them now, with the rest
        turns = data.get("turns") if isinstance(data.get("turns"), list) else []
        names = [t.get("name", "") if isinstance(t, dict) else "" for t in turns]
        lines += [x for x in _reference_errors(names, data.get("expect") or []) if x not in lines]
        raise ScenarioError(_invalid(source, list(dict.fromkeys(lines)))) from None
    scenario.base_dir = base_dir
    errors = scenario.load_audio()
    if errors:
        raise ScenarioError(_invalid(source, errors))
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: not a scenario (not text)") from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"{path}: not valid YAML: {e}") from None
    return parse_scenario(data, base_dir=path.resolve().parent, source=str(path))
