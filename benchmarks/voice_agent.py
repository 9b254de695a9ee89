"""Voice agent latency: voice-to-voice per turn (with its breakdown) and barge-in stop latency, fallback engines.

    python -m benchmarks.voice_agent [--runs 5] [--write]

Each run is one conversation through ``build_voice_agent`` over the ``VirtualTransport`` in real time, with the
offline fallback engines (Silero VAD, pocketsphinx STT, the bundled SmolLM2, espeak-ng TTS): a flite question, the
bot's answer, and a second flite utterance 1 s into that answer (a barge-in), then the answer to it. Latencies use
the true speech boundaries the transport fed (not VAD estimates): voice-to-voice = end of the user's speech -> first
bot audio handed to the client; barge-in = onset of the user's speech (and VAD start) -> end of the last bot audio
chunk played. The breakdown columns are the ``TurnMetrics`` stages (medians).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics

QUESTIONS = [
    "flite_weather_kal16.wav",
    "flite_lights_slt.wav",
    "flite_table_rms.wav",
    "flite_pizza_kal16.wav",
    "flite_story_slt.wav",
]
BARGE_IN = "flite_meeting_rms.wav"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=5, help="conversations to run")
    p.add_argument("--max-tokens", type=int, default=24, help="LLM reply length")
    p.add_argument(
        "--no-interim",
        dest="interim",
        action="store_false",
        help="no interim transcripts (pocketsphinx decodes each piece either way; without interims a barge-in is "
        "judged on the final transcript or its duration)",
    )
    p.add_argument("--write", action="store_true", help="also write this run into docs/benchmarks.md")


async def one_run(question: str, settings, args, llm_engine) -> tuple[list, object, object]:
    from pipelines.metrics import apply_ground_truth
    from pipelines.virtual_transport import UserUtterance, VirtualTransport
    from pipelines.voice_agent import build_voice_agent
    from processors.catalogue import stt_service
    from processors.espeak_tts import EspeakTTSService
    from processors.llm import LocalLLMService
    from processors.pocketsphinx_stt import PocketsphinxEngine
    from testkit.clips import speech

    transport = VirtualTransport(
        [
            UserUtterance(speech(question), at_s=0.3, label="question"),
            UserUtterance(speech(BARGE_IN), after="bot_started_speaking", offset_s=1.0, label="barge-in"),
        ]
    )
    llm = LocalLLMService(
        engine=llm_engine,
        settings=LocalLLMService.Settings(
            system_instruction=settings.llm.system_prompt, max_tokens=args.max_tokens, temperature=0.0
        ),
    )
    agent = build_voice_agent(
        transport,
        settings,
        stt=stt_service(PocketsphinxEngine(), settings.stt),
        llm=llm,
        tts=EspeakTTSService(),
    )

    def done():
        kinds = [e.kind for e in transport.events]
        return kinds.count("bot_started_speaking") >= 2 and kinds[-1] == "bot_stopped_speaking"

    await agent.run(done, timeout=120)
    apply_ground_truth(agent.metrics.turns, transport.user_speech)
    return agent.metrics.turns, transport, agent


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    from agent.settings import Settings
    from processors.llm.local_engine import get_shared_engine

    settings = Settings()  # the served defaults; the caption is written from these
    if not args.interim:
        settings.stt = settings.stt.model_copy(update={"interim_interval_s": None})
    engine = get_shared_engine(None)
    load_before = os.getloadavg()[0]
    answered, barges = [], []
    for i in range(args.runs):
        turns, _, _ = asyncio.run(one_run(QUESTIONS[i % len(QUESTIONS)], settings, args, engine))
        for t in turns:
            if t.voice_to_voice is not None:
                answered.append(t)
            if t.barge_in is not None and t.barge_in.last_bot_audio is not None:
                barges.append(t.barge_in)
        print(f"run {i + 1}: " + " | ".join(t.summary() for t in turns))

    def ms(values) -> list[int]:
        """median, min, max in ms of the values that exist"""
        v = [x for x in values if x is not None]
        return [round(statistics.median(v) * 1000), round(min(v) * 1000), round(max(v) * 1000)] if v else ["-"] * 3

    cols = [
        "voice_to_voice",
        "vad_stop_wait",
        "turn_end_wait",
        "stt",
        "llm_ttfb",
        "llm_first_sentence",
        "tts_first_audio",
        "output",
    ]
    from benchmarks.report import markdown_table, write_section

    rows = [[c, *ms(getattr(t, c) for t in answered)] for c in cols]
    rows += [
        ["barge-in: speech onset -> last bot audio", *ms(b.stop_latency_from_onset for b in barges)],
        ["barge-in: VAD start -> last bot audio", *ms(b.stop_latency_from_vad for b in barges)],
        [
            "barge-in: VAD start -> InterruptionFrame at output (decided)",
            *ms(b.interruption_at_output - b.vad_start for b in barges if b.interruption_at_output),
        ],
    ]
    table = markdown_table(["stage", "median ms", "min ms", "max ms"], rows)
    hold = (
        "barge-in hold on: the last bot audio is the hold's, the InterruptionFrame comes when the words decide"
        if settings.turn.barge_in_hold
        else "immediate barge-in"
    )
    body = (
        "## Voice agent latency (fallback engines)\n\n"
        f"`python -m benchmarks.voice_agent --runs {args.runs}`, {datetime.date.today()}, on "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (load average {load_before:.1f} "
        f"before, {os.getloadavg()[0]:.1f} after): pocketsphinx STT (interim transcripts "
        f"{'on' if args.interim else 'off'}), SmolLM2-135M (max {args.max_tokens} tokens), espeak-ng TTS, Silero "
        f"VAD (stop {settings.vad.stop_secs:g} s), turn end by {settings.turn.stop_strategy}, {hold}. "
        f"{len(answered)} answered turns, {len(barges)} barge-ins; true speech boundaries.\n\n" + table + "\n"
    )
    print(body)
    if args.write:
        print(f"wrote {write_section('voice_agent', body)}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    configure(parser)
    raise SystemExit(run(parser.parse_args()))
