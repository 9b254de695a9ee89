"""Run a scenario through the real voice pipeline (``build_voice_agent``, the builder ``duplex serve`` uses, with the
same settings and engine factories) over ``VirtualTransport``, on a virtual clock (``agent.replay.clock``) or in real
time, and collect what happened per user utterance.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from pipecat.transports.base_transport import TransportParams

from agent.settings import Settings
from pipelines.metrics import TurnMetrics, apply_ground_truth
from pipelines.virtual_transport import BackgroundTrack, UserUtterance, VirtualInputTransport, VirtualTransport
from pipelines.voice_agent import VoiceAgent, build_voice_agent
from processors.audio import resample

from .agent_settings import env_variables
from .clock import LoopClock, VirtualTimeLoop, patched_wall_clock
from .expectations import evaluate
from .recorder import PipelineRecorder
from .report import write_reports
from .result import ReplayResult, TurnResult
from .scenario import Scenario, load_scenario
from .scripted import ScriptedLLMService

VAD_LAG_S = 1.0  # a pipeline turn starting this long after an utterance's speech still belongs to it


# -- building ----------------------------------------------------------------------------------------------------


def build_utterances(scenario: Scenario) -> list[UserUtterance]:
    out = []
    for i, turn in enumerate(scenario.turns):
        audio, rate = scenario.turn_audio(i)
        kwargs: dict[str, Any] = {"at_s": turn.at_ms / 1000} if turn.at_ms is not None else {"after": turn.after}
        out.append(
            UserUtterance(
                audio,
                rate,
                offset_s=turn.offset_ms / 1000,
                label=scenario.turn_label(i),
                segments=turn.speech_s,
                words=scenario.turn_words(i) if scenario.stt.labelled else (),
                **kwargs,
            )
        )
    return out


def build_background(scenario: Scenario) -> list[BackgroundTrack]:
    out = []
    for i, bed in enumerate(scenario.noise):
        audio, rate = scenario.noise_audio(i)
        end = None if bed.until_ms is None else bed.until_ms / 1000
        label = bed.audio or f"{bed.color} noise"
        out.append(BackgroundTrack(audio, rate, start_s=bed.at_ms / 1000, end_s=end, loop=bed.loop, label=label))
    return out


def build_agent(
    scenario: Scenario, transport: VirtualTransport, *, clock=None, observers=None, settings: Settings | None = None
) -> VoiceAgent:
    """The pipeline ``duplex serve`` builds for these settings (default: ``scenario.agent_settings()``), with scripted
    STT/LLM where the scenario says so."""
    from pipelines.engines import create_services
    from processors.catalogue import stt_service

    settings = settings or scenario.agent_settings()
    stt = None
    engine = None
    if scenario.stt.scripted is not None:
        from .scripted import ScriptedSTTEngine

        engine = ScriptedSTTEngine(scenario.stt.scripted)
    elif scenario.stt.labelled:
        from processors.segmented_stt import TRAILING_SILENCE_S

        from .scripted import LabelledSTTEngine

        engine = LabelledSTTEngine(lambda: transport.user_words, transport.now, TRAILING_SILENCE_S)
    if engine is not None and scenario.stt.latency_ms:
        from .scripted import SlowSTTService

        latency = scenario.stt.latency_ms / 1000
        stt = SlowSTTService(engine, latency_s=latency, interim_interval_s=settings.stt.interim_interval_s)
    elif engine is not None:
        stt = stt_service(engine, settings.stt)
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


async def _run(scenario: Scenario, realtime: bool, settings: Settings, observers=()):
    utterances = build_utterances(scenario)
    rate = scenario.transport.sample_rate
    params = TransportParams(
        audio_in_enabled=True, audio_out_enabled=True, audio_in_sample_rate=rate, audio_out_sample_rate=rate
    )
    transport = VirtualTransport(utterances, background=build_background(scenario), params=params)
    recorder = PipelineRecorder()
    clock = None if realtime else LoopClock()
    agent = build_agent(scenario, transport, clock=clock, observers=[recorder, *observers], settings=settings)
    recorder.bind(
        user=agent.user_aggregator,
        stt=agent.stt,
        output=transport.output(),
        context=agent.context,
        metrics=agent.metrics,
    )
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
        last = max(
            [e.t for e in transport.events]
            + [c.end for c in transport.audio[-1:]]
            + [t for t, _ in recorder.vad[-1:]]
            + [t for t, _, _ in recorder.transcripts[-1:]]
            + [r.t for r in recorder.requests[-1:]]
        )
        turn = agent.metrics.current
        # the pipeline still owes the current turn its answer: the turn has not ended, or it was heard (a transcript:
        # the LLM will be asked) or the LLM was asked (or the interrupted reply resumed), and the bot has not spoken
        # yet. On the wall clock the STT, LLM and TTS take real time, under load longer than the settle time.
        owed = turn is not None and (turn.llm_request_at is not None or bool(turn.transcript.strip()))
        waiting = turn is not None and turn.bot_started_at is None and (turn.user_turn_end is None or owed)
        return now - last >= settle and not waiting

    await agent.run(finished, poll_s=0.05)
    return agent, transport, utterances, recorder


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


def run_scenario(
    scenario: Scenario, *, realtime: bool = False, inherit_env: bool | None = None, observers=()
) -> ReplayResult:
    """Run ``scenario`` (in its own event loop; in a helper thread when called from inside a running loop).
    ``inherit_env``: read ``DUPLEX_*`` environment variables under the scenario's settings (default: the scenario's
    ``inherit_env``, normally off: defaults plus the scenario). ``observers``: more pipecat observers of the
    pipeline (for tests and tools that look at frames the result does not keep)."""
    inherit = scenario.inherit_env if inherit_env is None else inherit_env
    settings = scenario.agent_settings(inherit_env=inherit)
    source = "defaults + scenario"
    if inherit:
        names = env_variables()
        source = f"environment ({', '.join(names) if names else 'no DUPLEX_* variables'}) + scenario"
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
                box["out"] = _run_in_loop(lambda: _run(scenario, realtime, settings, observers), realtime)
            except BaseException as e:  # re-raised in the caller's thread
                box["err"] = e

        thread = threading.Thread(target=target, name="duplex-replay")
        thread.start()
        thread.join()
        if "err" in box:
            raise box["err"]
        agent, transport, utterances, recorder = box["out"]
    else:
        agent, transport, utterances, recorder = _run_in_loop(
            lambda: _run(scenario, realtime, settings, observers), realtime
        )
    result = collect(
        scenario, agent, transport, utterances, recorder, realtime=realtime, wall_s=time.perf_counter() - wall0
    )
    result.settings, result.settings_source = settings, source
    result.failures = evaluate(result)
    return result


def replay(
    scenario: str | Path | Scenario,
    *,
    realtime: bool = False,
    out: str | Path | None = None,
    check: bool = True,
    inherit_env: bool | None = None,
    observers=(),
) -> ReplayResult:
    """Replay a scenario (a YAML path or a loaded ``Scenario``); write the reports to ``out`` if given; raise a
    readable ``AssertionError`` when an expectation fails (``check=False``: just return the result)."""
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    result = run_scenario(scenario, realtime=realtime, inherit_env=inherit_env, observers=observers)
    if out is not None:
        write_reports(result, out)
    if check:
        result.check()
    return result


# -- results -----------------------------------------------------------------------------------------------------


def _owner(m: TurnMetrics, spans: list[tuple[float, float]], rel) -> int | None:
    """The utterance a pipeline turn belongs to: the last one whose speech started before the turn's VAD start and
    ended at most ``VAD_LAG_S`` before it; a turn a transcript started (no VAD start of its own) belongs to the last
    utterance before it."""
    if m.vad_start is not None:
        ref = rel(m.vad_start)
        started = [i for i, (s0, _) in enumerate(spans) if s0 - 0.05 <= ref]
        if started and ref < spans[started[-1]][1] + VAD_LAG_S:
            return started[-1]
        return None
    ref = rel(m.user_turn_start)
    started = [i for i, (s0, _) in enumerate(spans) if s0 - 0.05 <= ref]
    return started[-1] if started else None


def collect(
    scenario: Scenario,
    agent: VoiceAgent,
    transport: VirtualTransport,
    utterances: list[UserUtterance],
    recorder: PipelineRecorder,
    *,
    realtime: bool,
    wall_s: float,
) -> ReplayResult:
    t0 = transport.feed_started_at or 0.0
    rate = scenario.transport.sample_rate
    apply_ground_truth(agent.metrics.turns, transport.user_segments)

    def rel(v: float | None) -> float | None:
        return None if v is None else v - t0

    # where each utterance was fed: its voiced start (recorded) minus the voiced offset inside it
    fed = [e.t for e in transport.events if e.kind == "user_speech_start"]
    user_audio, spans, segments = [], [], []
    for utt, start, (s0, s1, _) in zip(utterances, fed, transport.user_speech):
        prepared = VirtualInputTransport._prepare(utt, rate)
        fed_at = start - prepared.span[0] - t0
        user_audio.append((fed_at, prepared.audio))
        spans.append((s0 - t0, s1 - t0))
        segments.append([(fed_at + a, fed_at + b) for a, b in prepared.segments])

    # pipeline turns -> utterances
    owned: list[list[TurnMetrics]] = [[] for _ in spans]
    other: list[TurnMetrics] = []
    for m in agent.metrics.turns:
        i = _owner(m, spans, rel)
        (owned[i] if i is not None else other).append(m)

    turns = [
        TurnResult(
            i,
            scenario.turn_label(i),
            user_audio[i][0],
            s0,
            s1,
            segments=segments[i],
            pipeline=owned[i],
            transcript=" ".join(m.transcript for m in owned[i] if m.transcript),
        )
        for i, (s0, s1) in enumerate(spans)
    ]
    for i in range(len(spans), len(scenario.turns)):  # never fed: the replay stopped first
        never = float("inf")
        turns.append(TurnResult(i, scenario.turn_label(i), never, never, never, fed=False))
    # an utterance with no turn of its own that started while the previous turn was still open belongs to that turn
    # (a pause shorter than the turn-stop silence): that turn's transcript holds both
    for i, tr in enumerate(turns):
        prev = next((p for p in reversed(turns[:i]) if p.pipeline), None)
        if not tr.pipeline and prev is not None and tr.fed:
            m = prev.pipeline[-1]
            end = rel(m.user_turn_end)
            if rel(m.user_turn_start) <= tr.speech_start and (end is None or end >= tr.speech_start):
                tr.merged_into = prev.name

    def reacted(tr: TurnResult) -> float:
        """When the pipeline took the utterance: its first turn's VAD start, or for a barge-in the end of the bot's
        last audio before it (words that played until the bot fell silent belong to the reply it cut)."""
        m = tr.pipeline[0]
        t = m.vad_start if m.vad_start is not None else m.user_turn_start
        if m.barge_in is not None and m.barge_in.last_bot_audio is not None:
            t = max(t, m.barge_in.last_bot_audio + 1e-6)
        return rel(t)

    # the final context, split into the messages each pipeline turn's requests added
    context = [dict(m) for m in agent.context.get_messages()]
    by_turn: dict[int, list[dict]] = {}
    recorder.finish()
    requests = [r for r in recorder.requests if r.answers_turn]
    for request, messages in zip(requests, recorder.messages_by_request(context)):
        if request.turn is not None:
            by_turn.setdefault(request.turn, []).extend(messages)

    interruptions = [e.t - t0 for e in transport.events if e.kind == "interruption"]
    for i, tr in enumerate(turns):
        next_speech = turns[i + 1].speech_start if i + 1 < len(turns) else float("inf")
        tr.span = (tr.speech_start, next_speech)
        tr.interruptions = sum(tr.span[0] <= t < tr.span[1] for t in interruptions)
        tr.messages = [msg for m in tr.pipeline for msg in by_turn.get(m.index, [])]
        if (
            not tr.pipeline or not tr.fed
        ):  # no turn of its own (merged, or ignored e.g. by the echo guard): the bot's words
            tr.window = (tr.speech_start, tr.speech_start)  # meanwhile belong to the turn before
            continue
        following = [reacted(t) for t in turns[i + 1 :] if t.pipeline]
        tr.window = (reacted(tr), following[0] if following else float("inf"))
        words = [w for t, w in recorder.played_words if tr.window[0] <= t - t0 < tr.window[1]]
        tr.reply = re.sub(r"\s+", " ", " ".join(w.strip() for w in words)).strip()

    held = _hold_events(agent, t0)
    for tr in turns:
        released = [e["t"] for e in held if e["kind"] == "bot_released" and tr.speech_start <= e["t"] < tr.span[1]]
        tr.released_at = released[0] if released else None
        if tr.released_at is not None and not tr.pipeline:  # what the STT heard of a sound the bot played on over
            heard = [
                text for t, text, final in recorder.transcripts if final and tr.speech_start <= t - t0 <= tr.released_at
            ]
            tr.transcript = " ".join(heard)

    events = [{"t": e.t - t0, "kind": e.kind, "label": e.label} for e in transport.events]
    events += held
    events += _vad_events(recorder, agent.metrics.turns, rel)
    events += [
        {"t": t - t0, "kind": "transcript" if final else "interim_transcript", "label": text}
        for t, text, final in recorder.transcripts
    ]
    llm_requests = _llm_requests(recorder, agent.llm, t0)
    for r in llm_requests:  # an early request the user talked over is not a request the conversation kept
        kind = "llm_request_dropped" if r["speculative"] and not r.get("confirmed") else "llm_request"
        events.append({"t": r["t"], "kind": kind, "label": r["label"]})
    for m in agent.metrics.turns:
        for kind, v in (("user_turn_start", m.user_turn_start), ("user_turn_end", m.user_turn_end)):
            if v is not None:
                events.append({"t": v - t0, "kind": kind, "label": f"turn {m.index}"})
        if m.resumed and m.llm_request_at is not None:
            events.append({"t": m.llm_request_at - t0, "kind": "resumed", "label": f"turn {m.index}"})
    events.sort(key=lambda e: e["t"])

    bot_audio = []
    for c in transport.audio:
        pcm = np.frombuffer(c.pcm, dtype=np.int16).astype(np.float32) / 32768.0
        bot_audio.append((c.start - t0, resample(pcm, c.sample_rate, rate) if c.sample_rate != rate else pcm))
    end = max([e["t"] for e in events] + [s + len(a) / rate for s, a in user_audio + bot_audio] + [0.0])
    background = None
    if transport.background:
        n = int(np.ceil(end * rate)) + rate // 10
        background = np.zeros(n, dtype=np.float32)
        for track in transport.background:
            background += track.at_rate(rate).samples(0, n)
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
        background=background,
        played_words=[(t - t0, w) for t, w in recorder.played_words],
        llm_requests=llm_requests,
        other_turns=other,
        context=context,
        clock_origin=t0,
    )


def _llm_requests(recorder: PipelineRecorder, llm: Any, t0: float) -> list[dict[str, Any]]:
    """One entry per LLM request: when, in which pipeline turn, and for the scripted LLM which reply it got and what
    became of it (``heard``, ``withdrawn``: interrupted before any of it played, so the next request got it)."""
    log = llm.log if isinstance(llm, ScriptedLLMService) else []
    out = []
    for k, r in enumerate(recorder.requests):
        entry: dict[str, Any] = {"t": r.t - t0, "turn": r.turn, "speculative": r.speculative}
        parts = [f"turn {r.turn}" if r.turn is not None else "no turn"]
        if r.speculative:
            entry["confirmed"] = r.confirmed
            parts.append("early, confirmed" if r.confirmed else "early, withdrawn" if r.withdrawn else "speculative")
        if k < len(log):
            s = log[k]
            outcome = "withdrawn" if s.withdrawn else "heard" if s.heard else "not heard"
            entry.update(reply=s.reply, reply_index=s.index, outcome=outcome)
            parts.append(f"reply {s.index if s.index is not None else '(none left)'}, {outcome}")
        entry["label"] = ", ".join(parts)
        out.append(entry)
    return out


def _hold_events(agent: VoiceAgent, t0: float) -> list[dict]:
    """``bot_held`` when the bot's audio stopped for a sound over it (labelled with how it ended: ``released`` or
    ``interrupted``), ``bot_released`` when it played on from where it stopped."""
    out: list[dict] = []
    held_at = None
    for e in agent.playback.events if agent.playback is not None else []:
        if e.kind == "hold":
            held_at = e.t
        elif e.kind in ("release", "drop") and held_at is not None:
            outcome = "released" if e.kind == "release" else "interrupted"
            out.append({"t": held_at - t0, "kind": "bot_held", "label": outcome})
            if e.kind == "release":
                out.append({"t": e.t - t0, "kind": "bot_released", "label": ""})
            held_at = None
    return out


def _vad_events(recorder: PipelineRecorder, turns: list[TurnMetrics], rel) -> list[dict]:
    """One event per VAD start / stop; a start is labelled with what came of it: ``turn N`` (it opened pipeline
    turn N), ``in turn N`` (speech resumed inside open turn N), ``no turn`` (e.g. held back by the echo guard)."""
    out = []
    vad = recorder.vad
    for k, (t, kind) in enumerate(vad):
        label = ""
        if kind == "vad_start":
            stop = next((s for s, kd in vad[k + 1 :] if kd == "vad_stop"), float("inf"))
            opened = next((m for m in turns if m.vad_start == t), None)
            inside = next(
                (m for m in turns if m.user_turn_start < t and (m.user_turn_end is None or m.user_turn_end > t)), None
            )
            started = next((m for m in turns if t <= m.user_turn_start <= stop), None)
            if opened is not None:
                label = f"turn {opened.index}"
            elif inside is not None:
                label = f"in turn {inside.index}"
            elif started is not None:
                label = f"turn {started.index}"
            else:
                label = "no turn"
        out.append({"t": rel(t), "kind": kind, "label": label})
    return out
