"""Turn-taking: false cut-offs, false and missed barge-ins, voice-to-voice and barge-in stop latency, per policy.

    duplex bench turns                                   # every policy on every scenario, virtual clock; prints
    duplex bench turns --policy duplex --policy pipecat  # some policies (names from turn_policies.yaml)
    duplex bench turns --scenario 'pauses_*' --detail    # some scenario files; one row per utterance too
    duplex bench turns --realtime --scenario complete_questions   # spot-check on the wall clock
    duplex bench turns --write                           # also write the table into docs/benchmarks.md

Every scenario in ``benchmarks/turn_scenarios/`` (replay scenario files, ``docs/replay.md``) runs through the real
pipeline once per policy; a policy (``benchmarks/turn_policies.yaml``) is a set of ``settings`` laid over the
scenario's, so pipecat's defaults, a LiveKit-like policy and Duplex before and after run through the same code on the
same audio. The scenarios carry labels the harness reads (the replay ignores them):

* a turn's ``labels.kind``: ``answer`` (default: the user says something the bot should answer), ``backchannel``
  ("mhm", "yeah" while the bot speaks: it must neither lose its reply nor answer it), ``noise`` (a cough, a knock:
  the same), ``barge_in`` (a real interruption: the bot must stop, then answer);
* a silence part's ``labels.pause``: ``inside`` (the sentence is incomplete there: the bot must not take the turn),
  ``end`` (a sentence ended and the user goes on: taking the turn there is not counted as a cut-off) or ``natural``
  (a reader's own pause, sentence status unknown: reported with the long turns); pauses that are in a recording
  itself: the turn's ``labels.pauses: [{from_s, to_s, pause}]`` (seconds from its start).

What is counted, per policy (all times on the replay clock; on the virtual clock compute takes no time, so the
latencies are the policy's own waiting):

* **false cut-off**: at a pause labelled ``inside``, the bot started speaking or an interruption reached the client
  between the pause's start and 0.6 s after the speech resumed (the VAD's lag); split by the pause's length as heard
  (from the end of the voiced audio before the label to the start of the voiced audio after it: up to 1 s, longer);
* **split**: an ``answer`` utterance that reached the LLM context as more than one user message;
* **false barge-in**: a ``backchannel`` / ``noise`` after which the bot's reply was lost (an interruption reached
  the client and the reply never resumed) or that the LLM answered; **bot stopped**: an interruption reached the
  client at all (resumed or not);
* **missed barge-in**: a ``barge_in`` during the bot's speech that did not stop it; **stop latency**: its speech
  onset to the end of the last bot audio played;
* **voice-to-voice**: ``answer`` and ``barge_in`` utterances, the end of the utterance's speech to the bot's first
  audio of the answer; over the utterances without a labelled pause (complete utterances said in one go), and over
  all of them (the end of an utterance that had pauses is judged after them).
"""

from __future__ import annotations

import argparse
import fnmatch
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

SCENARIOS = Path(__file__).resolve().parent / "turn_scenarios"
POLICIES = Path(__file__).resolve().parent / "turn_policies.yaml"
RESTART_LAG_S = 0.6  # after speech resumes, the VAD needs this long to notice: a cut-in up to then is the pause's
SHORT_PAUSE_S = 1.0  # the target: no false cut-off at pauses up to this long inside an incomplete sentence

Kind = Literal["answer", "backchannel", "noise", "barge_in"]
PauseKind = Literal["inside", "end", "natural"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NaturalPause(_Strict):
    """A pause inside a recording: seconds from the utterance's start, and what kind."""

    from_s: float
    to_s: float
    pause: PauseKind


class TurnLabels(_Strict):
    kind: Kind = "answer"
    pauses: list[NaturalPause] = Field(default_factory=list)


class PartLabels(_Strict):
    pause: PauseKind | None = None


class Policy(_Strict):
    title: str
    description: str = ""
    settings: dict[str, Any] = Field(default_factory=dict)


def load_policies(path: Path = POLICIES) -> dict[str, Policy]:
    data = yaml.safe_load(path.read_text())
    return {name: Policy.model_validate(spec) for name, spec in data.items()}


def scenario_files(patterns: list[str] | None = None) -> list[Path]:
    files = sorted(SCENARIOS.glob("*.yaml"))
    if patterns:
        files = [f for f in files if any(fnmatch.fnmatch(f.stem, p) or fnmatch.fnmatch(f.name, p) for p in patterns)]
    return files


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# -- outcomes ----------------------------------------------------------------------------------------------------


@dataclass
class PauseOutcome:
    turn: str
    seconds: float
    kind: PauseKind
    cut: bool


@dataclass
class AnswerOutcome:
    turn: str
    kind: Kind
    answered: bool
    voice_to_voice: float | None
    split: bool
    paused: bool  # the utterance has labelled pauses inside


@dataclass
class ListenOutcome:
    turn: str
    kind: Kind
    stopped: bool  # an interruption reached the client
    lost: bool  # ... and the reply never resumed
    answered: bool  # the LLM got it as a user message

    @property
    def false_barge_in(self) -> bool:
        return self.lost or self.answered


@dataclass
class BargeInOutcome:
    turn: str
    bot_speaking: bool  # the bot was playing audio at the speech onset
    stop_latency: float | None  # onset -> last bot audio (None: the bot did not stop)

    @property
    def missed(self) -> bool:
        return self.bot_speaking and self.stop_latency is None


@dataclass
class ScenarioOutcome:
    scenario: str
    policy: str
    pauses: list[PauseOutcome] = field(default_factory=list)
    answers: list[AnswerOutcome] = field(default_factory=list)
    listens: list[ListenOutcome] = field(default_factory=list)
    barge_ins: list[BargeInOutcome] = field(default_factory=list)
    wall_s: float = 0.0
    error: str | None = None


def _events(result, kind: str) -> list[float]:
    return [e["t"] for e in result.events if e["kind"] == kind]


def _bot_playing(result, t: float) -> bool:
    rate = result.sample_rate
    return any(start <= t < start + len(audio) / rate for start, audio in result.bot_audio)


def measure(scenario, result, policy: str) -> ScenarioOutcome:
    """Score one replay of a labelled scenario (see the module docstring)."""
    out = ScenarioOutcome(scenario.name or "", policy, wall_s=result.wall_s)
    cut_events = sorted(_events(result, "bot_started_speaking") + _events(result, "interruption"))
    interruptions, resumes = _events(result, "interruption"), _events(result, "resumed")
    for i, turn in enumerate(scenario.turns):
        tr = result.turns[i]
        if not tr.fed:
            continue
        labels = TurnLabels.model_validate(turn.labels)
        pauses: list[tuple[float, float, PauseKind]] = []
        for (a, b), sound in zip(scenario.part_spans(i), turn.sounds()):
            kind = PartLabels.model_validate(sound.labels).pause if turn.parts else None
            if kind is not None:
                pauses.append((tr.fed_at + a, tr.fed_at + b, kind))
        pauses += [(tr.fed_at + p.from_s, tr.fed_at + p.to_s, p.pause) for p in labels.pauses]
        for p0, p1, kind in sorted(pauses):
            # the pause as heard: from the end of the speech before the label to the start of the speech after it
            # (a synthesised comma, a recording's own breath make it longer than the silence inserted)
            before = [b for a, b in tr.segments if b <= p0 + 0.05]
            after = [a for a, b in tr.segments if a >= p1 - 0.05]
            q0 = max(before) if before else p0
            q1 = min(after) if after else p1
            until = min(q1 + RESTART_LAG_S, tr.speech_end)
            cut = any(q0 <= t < until for t in cut_events)
            out.pauses.append(PauseOutcome(tr.name, round(q1 - q0, 3), kind, cut))
        user_messages = [m for m in tr.messages if m.get("role") == "user"]
        if labels.kind in ("answer", "barge_in"):
            v2v = tr.latencies()["voice_to_voice"]
            split = len(user_messages) > 1
            out.answers.append(AnswerOutcome(tr.name, labels.kind, tr.answered, v2v, split, bool(pauses)))
        if labels.kind in ("backchannel", "noise"):
            s0, s1 = tr.span
            stopped = any(s0 <= t < s1 for t in interruptions)
            resumed = any(s0 <= t < s1 for t in resumes)
            out.listens.append(
                ListenOutcome(tr.name, labels.kind, stopped, stopped and not resumed, bool(user_messages))
            )
        if labels.kind == "barge_in":
            speaking = _bot_playing(result, tr.speech_start)
            out.barge_ins.append(BargeInOutcome(tr.name, speaking, tr.latencies()["barge_in_stop"]))
    return out


def run_one(path: Path, policy_name: str, policy: Policy, *, realtime: bool = False) -> ScenarioOutcome:
    """Replay one scenario file under one policy (its settings over the scenario's) and score it."""
    from agent.replay import load_scenario, parse_scenario, replay

    base = load_scenario(path)
    data = base.model_dump(exclude={"base_dir"}, exclude_unset=True)
    data["settings"] = _merge(data.get("settings", {}), policy.settings)
    data["expect"] = []  # the harness scores; a scenario's own expectations are for `duplex replay`
    scenario = parse_scenario(data, base_dir=base.base_dir, source=str(path))
    t0 = time.perf_counter()
    try:
        result = replay(scenario, check=False, realtime=realtime)
    except Exception as e:  # one broken run is reported, the rest go on
        return ScenarioOutcome(
            path.stem, policy_name, wall_s=time.perf_counter() - t0, error=f"{type(e).__name__}: {e}"
        )
    outcome = measure(scenario, result, policy_name)
    outcome.scenario = path.stem
    return outcome


# -- the table ---------------------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1000:.0f}"


def _rate(hits: int, total: int) -> str:
    return "–" if total == 0 else f"{hits}/{total}"


def summarise(outcomes: list[ScenarioOutcome]) -> dict[str, str]:
    """One policy's outcomes over all scenarios, as the table's cells."""
    pauses = [p for o in outcomes for p in o.pauses]
    answers = [a for o in outcomes for a in o.answers]
    listens = [x for o in outcomes for x in o.listens]
    barges = [b for o in outcomes for b in o.barge_ins if b.bot_speaking]
    inside_short = [p for p in pauses if p.kind == "inside" and p.seconds <= SHORT_PAUSE_S + 1e-6]
    inside_long = [p for p in pauses if p.kind == "inside" and p.seconds > SHORT_PAUSE_S + 1e-6]
    ends = [p for p in pauses if p.kind == "end"]
    natural = [p for p in pauses if p.kind == "natural"]
    backchannels = [x for x in listens if x.kind == "backchannel"]
    noises = [x for x in listens if x.kind == "noise"]
    v2v = sorted(a.voice_to_voice for a in answers if a.voice_to_voice is not None)
    whole = sorted(a.voice_to_voice for a in answers if a.voice_to_voice is not None and not a.paused)
    stops = sorted(b.stop_latency for b in barges if b.stop_latency is not None)
    return {
        "false cut-offs, pauses ≤ 1 s inside a sentence": _rate(sum(p.cut for p in inside_short), len(inside_short)),
        "false cut-offs, pauses > 1 s inside a sentence": _rate(sum(p.cut for p in inside_long), len(inside_long)),
        "turn taken at a pause between sentences": _rate(sum(p.cut for p in ends), len(ends)),
        "turn taken at a reader's own pause (long turns)": _rate(sum(p.cut for p in natural), len(natural)),
        "utterances split into several user messages": _rate(sum(a.split for a in answers), len(answers)),
        "utterances never answered": _rate(sum(not a.answered for a in answers), len(answers)),
        "false barge-ins on backchannels (reply lost or answered)": _rate(
            sum(x.false_barge_in for x in backchannels), len(backchannels)
        ),
        "bot stopped by a backchannel (resumed or not)": _rate(sum(x.stopped for x in backchannels), len(backchannels)),
        "false barge-ins on coughs and noise": _rate(sum(x.false_barge_in for x in noises), len(noises)),
        "bot stopped by a cough or noise (resumed or not)": _rate(sum(x.stopped for x in noises), len(noises)),
        "missed barge-ins": _rate(sum(b.missed for b in barges), len(barges)),
        "voice-to-voice p50 (ms), utterances without a pause": _ms(_pct(whole, 50)),
        "voice-to-voice p95 (ms), utterances without a pause": _ms(_pct(whole, 95)),
        "voice-to-voice p50 (ms), all answered utterances": _ms(_pct(v2v, 50)),
        "voice-to-voice p95 (ms), all answered utterances": _ms(_pct(v2v, 95)),
        "stop latency from speech onset p50 (ms)": _ms(_pct(stops, 50)),
        "stop latency from speech onset p95 (ms)": _ms(_pct(stops, 95)),
    }


def table(by_policy: dict[str, list[ScenarioOutcome]], policies: dict[str, Policy]) -> str:
    from benchmarks.report import markdown_table

    cells = {name: summarise(outcomes) for name, outcomes in by_policy.items()}
    rows = [[metric, *(cells[name][metric] for name in by_policy)] for metric in next(iter(cells.values()))]
    return markdown_table(["", *(policies[name].title for name in by_policy)], rows)


def detail(by_policy: dict[str, list[ScenarioOutcome]]) -> str:
    """One line per labelled utterance and policy: what happened (for finding out why a number moved)."""
    lines = []
    for name, outcomes in by_policy.items():
        for o in outcomes:
            if o.error:
                lines.append(f"{name:16s} {o.scenario:28s} ERROR {o.error}")
                continue
            for p in o.pauses:
                verdict = "CUT" if p.cut else "ok"
                lines.append(
                    f"{name:16s} {o.scenario:28s} {p.turn:16s} pause {p.kind:7s} {p.seconds:4.2f} s  {verdict}"
                )
            for a in o.answers:
                flags = ("" if a.answered else " UNANSWERED") + (" SPLIT" if a.split else "")
                lines.append(
                    f"{name:16s} {o.scenario:28s} {a.turn:16s} {a.kind:11s} v2v {_ms(a.voice_to_voice)} ms{flags}"
                )
            for x in o.listens:
                flags = " ".join(
                    f for f, on in (("stopped", x.stopped), ("LOST", x.lost), ("ANSWERED", x.answered)) if on
                )
                lines.append(f"{name:16s} {o.scenario:28s} {x.turn:16s} {x.kind:11s} {flags or 'ok'}")
            for b in o.barge_ins:
                what = (
                    "bot silent" if not b.bot_speaking else "MISSED" if b.missed else f"stop {_ms(b.stop_latency)} ms"
                )
                lines.append(f"{name:16s} {o.scenario:28s} {b.turn:16s} barge-in    {what}")
    return "\n".join(lines)


# -- CLI ---------------------------------------------------------------------------------------------------------


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", action="append", help="a policy of turn_policies.yaml (repeatable; default: all)")
    p.add_argument("--scenario", action="append", help="scenario files by name or glob (repeatable; default: all)")
    p.add_argument("--realtime", action="store_true", help="run on the wall clock (latencies include compute)")
    p.add_argument("--detail", action="store_true", help="also print one line per labelled utterance")
    p.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")


def run(args: argparse.Namespace) -> int:
    import platform

    from loguru import logger

    logger.remove()  # the pipeline's log of hundreds of replays would drown the table
    policies = load_policies()
    chosen = args.policy or list(policies)
    unknown = [n for n in chosen if n not in policies]
    if unknown:
        print(f"unknown policies: {', '.join(unknown)} (known: {', '.join(policies)})")
        return 2
    files = scenario_files(args.scenario)
    if not files:
        print(f"no scenario matches {args.scenario} in {SCENARIOS}")
        return 2
    by_policy: dict[str, list[ScenarioOutcome]] = {name: [] for name in chosen}
    t0 = time.perf_counter()
    for path in files:
        for name in chosen:
            outcome = run_one(path, name, policies[name], realtime=args.realtime)
            by_policy[name].append(outcome)
            status = f"ERROR {outcome.error}" if outcome.error else f"{outcome.wall_s:.1f} s"
            print(f"  {path.stem:28s} {name:16s} {status}", flush=True)
    wall = time.perf_counter() - t0
    clock = "wall clock (latencies include compute)" if args.realtime else "virtual clock (compute takes no time)"
    described = "\n".join(f"* **{policies[n].title}** (`{n}`): {policies[n].description.strip()}" for n in chosen)
    body = (
        "## Turn-taking (`duplex bench turns`)\n\n"
        f"`duplex bench turns{' --realtime' if args.realtime else ''}`: {len(files)} labelled scenarios "
        f"(`benchmarks/turn_scenarios/`) through the real pipeline per policy, on the {clock}; "
        f"{platform.machine()}, {wall:.0f} s wall. Real Silero VAD and espeak-ng TTS; the STT hears the scenario's "
        "word labels wherever the VAD cuts segments; scripted LLM replies. Counts are hits/cases; latencies in ms. "
        "See `benchmarks/turns.py` for what each row counts.\n\n"
        + table(by_policy, policies)
        + "\n\nPolicies (`benchmarks/turn_policies.yaml`):\n\n"
        + described
        + "\n"
    )
    if args.detail:
        print(detail(by_policy))
    print(body)
    errors = [o for outcomes in by_policy.values() for o in outcomes if o.error]
    if args.write:
        from benchmarks.report import write_section

        print(f"wrote {write_section('turns' + ('_realtime' if args.realtime else ''), body)}")
    return 1 if errors else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    configure(parser)
    raise SystemExit(run(parser.parse_args()))
