"""Run a scenario through the real voice pipeline (``build_voice_agent``, the builder ``duplex serve`` uses, with the
same settings and engine factories) over ``VirtualTransport``, on a virtual clock (``agent.replay.clock``) or in real
time, and collect what happened per user turn.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import TTSTextFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_transport import TransportParams

from pipelines.metrics import TurnMetrics, apply_ground_truth
from pipelines.virtual_transport import UserUtterance, VirtualInputTransport, VirtualTransport
from pipelines.voice_agent import VoiceAgent, build_voice_agent
from processors.audio import load_audio, resample

from .clock import LoopClock, VirtualTimeLoop, patched_wall_clock
from .scenario import Expectation, Scenario, load_scenario


@dataclass
class TurnResult:
    """One scenario turn: what was fed, what the pipeline made of it, what the bot said after it (seconds from the
    start of the replay)."""

    index: int
    name: str
    fed_at: float  # the utterance's first sample
    speech_start: float  # voiced span (ground truth)
    speech_end: float
    metrics: TurnMetrics | None  # the pipeline's user turn for it (None: no turn started, e.g. held by the echo guard)
    transcript: str = ""
    reply: str = ""  # bot words the user heard from this turn's VAD start to the next turn's (see docs/replay.md)
    window: tuple[float, float] = (0.0, float("inf"))  # replay times whose played bot words are this turn's reply
    merged_into: str | None = None  # spoken before the previous turn ended: part of that turn (named)

    @property
    def interrupted(self) -> bool:
        return self.metrics is not None and self.metrics.barge_in is not None

    @property
    def resumed(self) -> bool:
        return self.metrics is not None and self.metrics.resumed

    @property
    def answered(self) -> bool:
        return self.metrics is not None and self.metrics.bot_started_at is not None

    def latencies(self) -> dict[str, float | None]:
        m = self.metrics
        if m is None:
            return {"voice_to_voice": None, "barge_in_stop": None, "tts_first_audio": None}
        return {
            "voice_to_voice": m.voice_to_voice,
            "barge_in_stop": m.barge_in.stop_latency_from_onset if m.barge_in else None,
            "tts_first_audio": m.tts_first_audio,
        }


@dataclass
class ReplayResult:
    """Everything a replay produced; ``failures`` lists the expectations that did not hold."""

    scenario: Scenario
    realtime: bool
    turns: list[TurnResult]
    events: list[dict[str, Any]]  # {"t", "kind", "label"} sorted by time, seconds from the replay start
    duration_s: float  # replay (audio) time covered
    wall_s: float  # real seconds it took
    user_audio: list[tuple[float, np.ndarray]]  # (start, float32 mono at sample_rate) per fed utterance
    bot_audio: list[tuple[float, np.ndarray]]  # (start, float32 mono at sample_rate) per played chunk
    sample_rate: int
    context: list[dict[str, Any]] = field(default_factory=list)
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
            f"{self.wall_s:.1f} s ({mode})"
        ]
        for t in self.turns:
            flags = [f for f, on in (("interrupted", t.interrupted), ("resumed", t.resumed)) if on]
            lat = ", ".join(f"{k} {ms(v)}" for k, v in t.latencies().items() if v is not None)
            flag_text = f" ({', '.join(flags)})" if flags else ""
            lines.append(
                f"  [{t.speech_start:6.2f} s] {t.name}: heard {t.transcript!r}{flag_text}; bot: {t.reply!r}"
                + (f"; {lat}" if lat else "")
            )
        return "\n".join(lines)

    def check(self) -> None:
        """Raise ``AssertionError`` listing every failed expectation (with the timeline for context)."""
        if self.failures:
            timeline = "\n".join(
                f"    {e['t']:7.3f} {e['kind']}{' ' + repr(e['label']) if e['label'] else ''}" for e in self.events
            )
            raise AssertionError(
                f"replay {self.scenario.name or ''}: {len(self.failures)} expectation(s) failed:\n"
                + "\n".join(f"  - {f}" for f in self.failures)
                + f"\n{self.summary()}\n  timeline:\n{timeline}"
            )


# -- inputs ------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def synthesise(
    text: str, *, voice: str = "English", variant: str | None = None, rate: int = 170
) -> tuple[np.ndarray, int]:
    """``text`` spoken by espeak-ng (offline), float32 mono at espeak's rate. Memoised: espeak-ng's output for the
    same text differs by a few samples from call to call (state carried between utterances), and a replay must feed
    the same audio every time it runs in a process."""
    from processors.espeak_tts import EspeakEngine

    engine = EspeakEngine()
    v = engine.create_voice(voice, variant)
    chunks = list(engine.stream(text, v, voice, rate=rate))
    return np.concatenate(chunks).astype(np.float32), engine.sample_rate


def build_utterances(scenario: Scenario) -> list[UserUtterance]:
    out = []
    for i, turn in enumerate(scenario.turns):
        if turn.audio is not None:
            decoded = load_audio(scenario.audio_path(turn.audio))
            audio, rate = decoded.samples, decoded.sample_rate
        else:
            audio, rate = synthesise(turn.text, voice=turn.voice, variant=turn.variant, rate=turn.rate)
            audio = audio.copy()
        audio = np.clip(np.asarray(audio, dtype=np.float32) * turn.gain, -1.0, 1.0)
        kwargs: dict[str, Any] = {"at_s": turn.at_ms / 1000} if turn.at_ms is not None else {"after": turn.after}
        out.append(UserUtterance(audio, rate, offset_s=turn.offset_ms / 1000, label=scenario.turn_label(i), **kwargs))
    return out


class PlayedWords(BaseObserver):
    """The bot's words as the output transport releases them, i.e. as their audio plays (word timestamps on the
    pipeline clock): what the user heard, cut where the bot was interrupted."""

    def __init__(self, output):
        super().__init__()
        self.output = output
        self.words: list[tuple[float, str]] = []

    async def on_push_frame(self, data: FramePushed):
        if (
            data.source is self.output
            and data.direction == FrameDirection.DOWNSTREAM
            and isinstance(data.frame, TTSTextFrame)
        ):
            self.words.append((data.timestamp / 1e9, data.frame.text))


def build_agent(scenario: Scenario, transport: VirtualTransport, *, clock=None, observers=None) -> VoiceAgent:
    """The pipeline ``duplex serve`` builds for these settings, with scripted STT/LLM where the scenario says so."""
    from pipelines.engines import create_services
    from processors.catalogue import stt_service

    settings = scenario.agent_settings()
    stt = None
    if scenario.stt.scripted is not None:
        from .scripted import ScriptedSTTEngine

        stt = stt_service(ScriptedSTTEngine(scenario.stt.scripted), settings.stt)
    llm = None
    if scenario.llm.scripted is not None:
        from .scripted import ScriptedLLMService

        llm = ScriptedLLMService(scenario.llm.scripted, token_s=scenario.llm.token_ms / 1000)
    tts_kwargs = {"rate": scenario.tts.rate} if scenario.tts.rate is not None else None
    stt, llm, tts = create_services(
        settings, registry=settings.voice_registry(), stt=stt, llm=llm, tts_kwargs=tts_kwargs
    )
    rate = scenario.transport.sample_rate
    telephony = scenario.transport.telephony if scenario.transport.telephony is not None else rate == 8000
    return build_voice_agent(
        transport,
        settings,
        stt=stt,
        llm=llm,
        tts=tts,
        telephony=telephony,
        audio_in_sample_rate=rate,
        audio_out_sample_rate=rate,
        clock=clock,
        observers=observers,
    )


# -- running -----------------------------------------------------------------------------------------------------


async def _run(scenario: Scenario, realtime: bool) -> tuple[VoiceAgent, VirtualTransport, list[UserUtterance]]:
    utterances = build_utterances(scenario)
    rate = scenario.transport.sample_rate
    params = TransportParams(
        audio_in_enabled=True, audio_out_enabled=True, audio_in_sample_rate=rate, audio_out_sample_rate=rate
    )
    transport = VirtualTransport(utterances, params=params)
    played = PlayedWords(transport.output())
    agent = build_agent(scenario, transport, clock=None if realtime else LoopClock(), observers=[played])
    settle = scenario.settle_ms / 1000

    def finished() -> bool:
        """Every utterance fed, the bot quiet and nothing pending for ``settle_ms`` (or ``max_duration_s`` passed)."""
        if transport.feed_started_at is None:
            return False
        now = transport.now()
        if now - transport.feed_started_at > scenario.max_duration_s:
            logger.warning(f"replay: stopped at max_duration_s={scenario.max_duration_s:g}")
            return True
        if not transport.schedule_done.is_set() or len(transport.user_speech) < len(utterances):
            return False
        if len(transport.event_times("bot_started_speaking")) > len(transport.event_times("bot_stopped_speaking")):
            return False
        last = max([e.t for e in transport.events] + [c.end for c in transport.audio[-1:]])
        turn = agent.metrics.current
        # the pipeline still owes the current turn its answer: the turn has not ended, or it was heard (a transcript:
        # the LLM will be asked) or the LLM was asked (or the interrupted reply resumed), and the bot has not spoken
        # yet. On the wall clock the STT, LLM and TTS take real time, under load longer than the settle time.
        owed = turn is not None and (turn.llm_request_at is not None or bool(turn.transcript.strip()))
        waiting = turn is not None and turn.bot_started_at is None and (turn.user_turn_end is None or owed)
        return now - last >= settle and not waiting

    await agent.run(finished, poll_s=0.05)
    transport.played_words = played.words
    return agent, transport, utterances


def _run_in_loop(coro_factory, realtime: bool):
    if realtime:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(coro_factory())
        finally:
            loop.close()
    loop = VirtualTimeLoop()
    try:
        with patched_wall_clock(loop):
            return loop.run_until_complete(coro_factory())
    finally:
        loop.close()


def run_scenario(scenario: Scenario, *, realtime: bool = False) -> ReplayResult:
    """Run ``scenario`` (in its own event loop; in a helper thread when called from inside a running loop)."""
    wall0 = time.perf_counter()
    try:
        asyncio.get_running_loop()
        inside_loop = True
    except RuntimeError:
        inside_loop = False
    if inside_loop:
        box: dict[str, Any] = {}

        def target():
            try:
                box["out"] = _run_in_loop(lambda: _run(scenario, realtime), realtime)
            except BaseException as e:  # re-raised in the caller's thread
                box["err"] = e

        thread = threading.Thread(target=target, name="duplex-replay")
        thread.start()
        thread.join()
        if "err" in box:
            raise box["err"]
        agent, transport, utterances = box["out"]
    else:
        agent, transport, utterances = _run_in_loop(lambda: _run(scenario, realtime), realtime)
    result = collect(scenario, agent, transport, utterances, realtime=realtime, wall_s=time.perf_counter() - wall0)
    result.failures = evaluate(result)
    return result


def replay(
    scenario: str | Path | Scenario, *, realtime: bool = False, out: str | Path | None = None, check: bool = True
) -> ReplayResult:
    """Replay a scenario (a YAML path or a loaded ``Scenario``); write the reports to ``out`` if given; raise a
    readable ``AssertionError`` when an expectation fails (``check=False``: just return the result)."""
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    result = run_scenario(scenario, realtime=realtime)
    if out is not None:
        from .report import write_reports

        write_reports(result, out)
    if check:
        result.check()
    return result


# -- results -----------------------------------------------------------------------------------------------------


def collect(
    scenario: Scenario,
    agent: VoiceAgent,
    transport: VirtualTransport,
    utterances: list[UserUtterance],
    *,
    realtime: bool,
    wall_s: float,
) -> ReplayResult:
    t0 = transport.feed_started_at or 0.0
    rate = scenario.transport.sample_rate
    apply_ground_truth(agent.metrics.turns, transport.user_speech)

    # where each utterance was fed: its voiced start (recorded) minus the voiced offset inside it
    starts = [e.t for e in transport.events if e.kind == "user_speech_start"]
    user_audio = []
    spans = []
    for utt, start, (s0, s1, _) in zip(utterances, starts, transport.user_speech):
        _, pcm, v0, _ = VirtualInputTransport._prepare(utt, rate)
        audio = resample(utt.audio, utt.sample_rate, rate) if utt.sample_rate != rate else utt.audio
        user_audio.append((start - v0 - t0, audio))
        spans.append((s0 - t0, s1 - t0))

    def rel(v: float | None) -> float | None:
        return None if v is None else v - t0

    # match pipeline turns to scenario turns: the first turn starting inside the utterance's span (+ VAD lag)
    used: set[int] = set()
    turns: list[TurnResult] = []
    for i, (s0, s1) in enumerate(spans):
        next_start = spans[i + 1][0] if i + 1 < len(spans) else float("inf")
        match = None
        for k, m in enumerate(agent.metrics.turns):
            ts = rel(m.vad_start if m.vad_start is not None else m.user_turn_start)
            if k not in used and s0 - 0.05 <= ts < min(next_start, s1 + 1.0):
                match = k
                break
        metrics = agent.metrics.turns[match] if match is not None else None
        if match is not None:
            used.add(match)
        turns.append(
            TurnResult(
                i,
                scenario.turn_label(i),
                user_audio[i][0],
                s0,
                s1,
                metrics,
                transcript=metrics.transcript if metrics else "",
            )
        )
    # an utterance that got no turn of its own but came before the previous turn ended belongs to that turn
    # (a pause shorter than the turn-stop silence): its true speech end is that turn's speech end
    for i, tr in enumerate(turns):
        prev = next((p for p in reversed(turns[:i]) if p.metrics is not None), None)
        if tr.metrics is None and prev is not None:
            m = prev.metrics
            before_end = m.vad_stop is not None and rel(m.vad_stop) >= tr.speech_end
            if before_end and rel(m.speech_start or 0) <= tr.speech_start:
                m.speech_end = tr.speech_end + t0
                tr.merged_into = prev.name

    def reacted(tr: TurnResult) -> float:  # when the pipeline took the turn (its VAD start)
        m = tr.metrics
        return rel(m.vad_start if m.vad_start is not None else m.user_turn_start)

    for i, tr in enumerate(turns):
        if tr.metrics is None:  # no turn of its own (merged, or ignored e.g. by the echo guard): the bot's words
            tr.window = (tr.speech_start, tr.speech_start)  # meanwhile belong to the turn before
            continue
        following = [reacted(t) for t in turns[i + 1 :] if t.metrics is not None]
        tr.window = (reacted(tr), following[0] if following else float("inf"))
        words = [w for t, w in transport.played_words if tr.window[0] <= t - t0 < tr.window[1]]
        tr.reply = re.sub(r"\s+", " ", " ".join(w.strip() for w in words)).strip()

    events = [{"t": e.t - t0, "kind": e.kind, "label": e.label} for e in transport.events]
    for m in agent.metrics.turns:
        for kind, v in (
            ("vad_start", m.vad_start),
            ("vad_stop", m.vad_stop),
            ("user_turn_start", m.user_turn_start),
            ("user_turn_end", m.user_turn_end),
            ("transcript", m.transcript_at),
        ):
            if v is not None:
                events.append({"t": v - t0, "kind": kind, "label": m.transcript if kind == "transcript" else ""})
        if m.resumed and m.llm_request_at is not None:
            events.append({"t": m.llm_request_at - t0, "kind": "resumed", "label": ""})
    events.sort(key=lambda e: e["t"])

    bot_audio = []
    for c in transport.audio:
        pcm = np.frombuffer(c.pcm, dtype=np.int16).astype(np.float32) / 32768.0
        bot_audio.append((c.start - t0, resample(pcm, c.sample_rate, rate) if c.sample_rate != rate else pcm))
    end = max([e["t"] for e in events] + [s + len(a) / rate for s, a in user_audio + bot_audio] + [0.0])
    return ReplayResult(
        scenario=scenario,
        realtime=realtime,
        turns=turns,
        events=events,
        duration_s=end,
        wall_s=wall_s,
        user_audio=user_audio,
        bot_audio=bot_audio,
        sample_rate=rate,
        context=[dict(m) for m in agent.context.get_messages()],
    )


# -- expectations ------------------------------------------------------------------------------------------------


def _as_list(v: str | list[str] | None) -> list[str]:
    return [] if v is None else [v] if isinstance(v, str) else list(v)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def evaluate(result: ReplayResult) -> list[str]:
    failures: list[str] = []
    for e in result.scenario.expect:
        failures += _evaluate_one(result, e)
    return failures


def _evaluate_one(result: ReplayResult, e: Expectation) -> list[str]:
    out: list[str] = []
    if e.turn is None:
        for kind in e.absent or []:
            times = result.events_of(kind)
            if times:
                out.append(f"no {kind} expected, got {len(times)} (at {', '.join(f'{t:.2f}' for t in times)} s)")
        for kind, n in (e.count or {}).items():
            got = len(result.events_of(kind))
            if got != n:
                out.append(f"expected {n} {kind} event(s), got {got}")
        return out
    tr = result.turn(e.turn)
    who = f"turn {tr.name!r}"
    for phrase in _as_list(e.transcript_contains):
        if _norm(phrase) not in _norm(tr.transcript):
            out.append(f"{who}: transcript should contain {phrase!r}, was {tr.transcript!r}")
    if e.transcript_matches is not None and not re.search(e.transcript_matches, tr.transcript, re.I):
        out.append(f"{who}: transcript should match /{e.transcript_matches}/, was {tr.transcript!r}")
    for phrase in _as_list(e.reply_contains):
        if _norm(phrase) not in _norm(tr.reply):
            out.append(f"{who}: bot reply should contain {phrase!r}, the user heard {tr.reply!r}")
    if e.reply_matches is not None and not re.search(e.reply_matches, tr.reply, re.I):
        out.append(f"{who}: bot reply should match /{e.reply_matches}/, the user heard {tr.reply!r}")
    for flag in ("interrupted", "resumed", "answered"):
        want = getattr(e, flag)
        if want is not None and getattr(tr, flag) != want:
            out.append(f"{who}: expected {flag}={str(want).lower()}, got {str(getattr(tr, flag)).lower()}")
    lat = tr.latencies()
    for name, budget in (e.within_ms or {}).items():
        v = lat[name]
        if v is None:
            out.append(f"{who}: {name} within {budget:g} ms expected, but it was not measured (no such event)")
        elif v * 1000 > budget:
            out.append(f"{who}: {name} was {v * 1000:.0f} ms, budget {budget:g} ms")
    for kind in e.absent or []:
        times = [t for t in result.events_of(kind) if tr.window[0] <= t < tr.window[1]]
        if times:
            out.append(f"{who}: no {kind} expected in this turn, got one at {times[0]:.2f} s")
    return out
