"""espeak fallback TTS: ms per sentence, time to first chunk, cancel latency (engine and pipecat adapter).

    python -m benchmarks.espeak_tts [--write]      (or `duplex bench espeak`)

Engine: sentences of several lengths, each timed inside the process-wide lock (voice/parameter setup +
espeak_Synth); time from ``stream()`` to its first chunk; cancel latency from another thread while the consumer pulls
(set -> generator ends) and inside espeak_Synth (set during a long sentence -> espeak_Synth returns).
Adapter: TTSSpeakFrame pushed -> first TTSAudioRawFrame leaving EspeakTTSService, per output rate (the stream
resampler's hold-back is included); InterruptionFrame -> worker thread gone, on a consumer paced at 10 ms/chunk so the
interruption lands mid-stream.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import threading
import time

import numpy as np

SENTENCES = [
    "Stop.",
    "Tell me a joke.",
    "The weather today is sunny with a light breeze.",
    "I can help you with that, but first I need to know which account you would like to use for the payment.",
    (
        "This is a deliberately long sentence, of the kind a chatty language model produces when it explains something "
        "in detail, with several clauses, a few commas and no full stop for quite a while, "
        "so that we see the worst case."
    ),
]
PARAGRAPH = (
    "Sure, I can help with that. The meeting is moved to Thursday afternoon. Please send the report to everyone "
    "before lunch. Is there anything else you need?"
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=30, help="repetitions per measurement")
    p.add_argument("--write", action="store_true", help="also write this run into docs/benchmarks.md")


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_engine(runs: int) -> dict:
    from processors.espeak_tts import EspeakEngine, split_sentences

    engine = EspeakEngine()
    engine.synthesize("Warm up.")  # first-call dictionary load, not timed
    per_sentence = []
    for s in SENTENCES:
        times, audio = [], 0.0
        for _ in range(runs):
            engine.synthesize(s)
            times.append(engine.last_stats.synth_ms[0])
            audio = engine.last_stats.samples / engine.sample_rate
        per_sentence.append(
            dict(
                chars=len(s),
                audio_s=audio,
                min_ms=min(times),
                median_ms=statistics.median(times),
                p95_ms=_pct(times, 95),
                rtf=statistics.median(times) / 1000 / audio,
            )
        )
    first, total, audio_s = [], [], 0.0
    for _ in range(runs):
        t = time.perf_counter()
        gen = engine.stream(PARAGRAPH)
        next(gen)
        first.append((time.perf_counter() - t) * 1000)
        for _ in gen:
            pass
        total.append((time.perf_counter() - t) * 1000)
        audio_s = engine.last_stats.samples / engine.sample_rate
    # cancel from another thread while the consumer pulls as fast as it can
    between = []
    for _ in range(runs):
        cancel = threading.Event()
        gen = engine.stream(PARAGRAPH, cancel=cancel)
        next(gen)
        setter = threading.Thread(target=cancel.set)
        setter.start()
        setter.join()
        t_set = time.perf_counter()
        for _ in gen:
            pass
        between.append((time.perf_counter() - t_set) * 1000)
    # cancel landing inside espeak_Synth: a thread sets it ~1 ms into a long sentence
    inside, aborted = [], 0
    long_sentence = SENTENCES[-1] + " " + SENTENCES[-1].replace(".", ",")
    assert len(split_sentences(long_sentence)) == 2
    for _ in range(runs):
        cancel = threading.Event()
        stamp: list[float] = []

        def set_soon(stamp=stamp, cancel=cancel):
            time.sleep(0.001)
            stamp.append(time.perf_counter())
            cancel.set()

        setter = threading.Thread(target=set_soon)
        gen = engine.stream(long_sentence, cancel=cancel)
        setter.start()
        for _ in gen:
            pass
        ended = time.perf_counter()
        setter.join()
        if engine.last_stats.aborted_mid_sentence:
            aborted += 1
            inside.append((ended - stamp[0]) * 1000)
    return dict(
        per_sentence=per_sentence,
        first_ms=statistics.median(first),
        first_p95_ms=_pct(first, 95),
        paragraph_ms=statistics.median(total),
        paragraph_audio_s=audio_s,
        paragraph_sentences=len(split_sentences(PARAGRAPH)),
        cancel_between_ms=statistics.median(between),
        cancel_between_max_ms=max(between),
        cancel_inside_ms=statistics.median(inside) if inside else None,
        cancel_inside_max_ms=max(inside) if inside else None,
        cancel_inside_n=aborted,
        runs=runs,
    )


async def _adapter_first_audio(rate: int, runs: int) -> tuple[float, float]:
    from pipecat.frames.frames import TTSAudioRawFrame, TTSSpeakFrame
    from pipecat.observers.base_observer import BaseObserver, FramePushed
    from pipecat.pipeline.worker import PipelineParams
    from pipecat.tests.utils import SleepFrame, run_test

    from processors.espeak_tts import EspeakEngine, EspeakTTSService

    engine = EspeakEngine()

    class FirstAudio(BaseObserver):
        """Pipeline-clock stamps (observers run later, in their own task): speak frame in, first audio of each
        new context out."""

        def __init__(self, tts):
            super().__init__()
            self.tts, self.spoken, self.first, self.contexts = tts, [], [], set()

        async def on_push_frame(self, data: FramePushed):
            if isinstance(data.frame, TTSSpeakFrame) and data.destination is self.tts:
                self.spoken.append(data.timestamp)
            elif (
                isinstance(data.frame, TTSAudioRawFrame)
                and data.source is self.tts
                and data.frame.context_id not in self.contexts
            ):
                self.contexts.add(data.frame.context_id)
                self.first.append(data.timestamp)

    tts = EspeakTTSService(engine=engine)
    obs = FirstAudio(tts)
    frames = []
    for _ in range(runs):
        frames += [TTSSpeakFrame(PARAGRAPH), SleepFrame(0.3)]
    await run_test(
        tts, frames_to_send=frames, observers=[obs], pipeline_params=PipelineParams(audio_out_sample_rate=rate)
    )
    assert len(obs.spoken) == len(obs.first) == runs, (len(obs.spoken), len(obs.first))
    latencies = [(b - a) / 1e6 for a, b in zip(obs.spoken, obs.first)]
    return statistics.median(latencies), _pct(latencies, 95)


def measure_adapter_interrupt(runs: int) -> dict:
    """InterruptionFrame reaching the service -> worker thread exit, via a cancel-event watcher."""
    from pipecat.frames.frames import InterruptionFrame, TTSSpeakFrame
    from pipecat.pipeline.worker import PipelineParams
    from pipecat.tests.utils import SleepFrame, run_test

    from processors.espeak_tts import EspeakEngine, EspeakTTSService

    class Paced(EspeakEngine):
        def __init__(self):
            super().__init__()
            self.set_at: list[float] = []
            self.ended_at: list[float] = []

        def stream_timed(self, text, voice=None, language="English", cancel=None, **generation):
            inner = super().stream_timed(text, voice, language, cancel, **generation)  # stream() is built on it
            if cancel is not None:
                threading.Thread(
                    target=lambda: (cancel.wait(), self.set_at.append(time.perf_counter())), daemon=True
                ).start()

            def paced():
                try:
                    for chunk in inner:
                        yield chunk
                        time.sleep(0.01)
                finally:
                    self.ended_at.append(time.perf_counter())

            return paced()

    async def once() -> float | None:
        engine = Paced()
        tts = EspeakTTSService(engine=engine)
        await run_test(
            tts,
            frames_to_send=[TTSSpeakFrame(PARAGRAPH * 3), SleepFrame(0.2), InterruptionFrame(), SleepFrame(0.2)],
            pipeline_params=PipelineParams(audio_out_sample_rate=16000),
        )
        tts.last_stream.thread.join(1.0)
        if tts.last_stream.thread.is_alive() or not engine.set_at or not engine.ended_at:
            return None
        return (engine.ended_at[0] - engine.set_at[0]) * 1000

    values = [v for v in (asyncio.run(once()) for _ in range(runs)) if v is not None]
    return dict(median_ms=statistics.median(values), max_ms=max(values), n=len(values))


def run(args: argparse.Namespace) -> int:
    from benchmarks.report import markdown_table, write_section

    load = os.getloadavg()[0]
    e = measure_engine(args.runs)
    rows = [[s["chars"], s["audio_s"], s["min_ms"], s["median_ms"], s["p95_ms"], s["rtf"]] for s in e["per_sentence"]]
    adapter = []
    for rate in (8000, 16000, 24000, 48000):
        med, p95 = asyncio.run(_adapter_first_audio(rate, max(5, args.runs // 3)))
        adapter.append([rate, med, p95])
    interrupt = measure_adapter_interrupt(max(3, args.runs // 6))
    inside = (
        (
            f"{e['cancel_inside_ms']:.3f} ms median, {e['cancel_inside_max_ms']:.3f} ms max "
            f"({e['cancel_inside_n']} of {e['runs']} runs landed inside espeak_Synth)"
        )
        if e["cancel_inside_ms"] is not None
        else "not observed (synthesis finished before the cancel landed)"
    )
    body = (
        "## TTS fallback: espeak (`python -m benchmarks.espeak_tts`)\n\n"
        f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}; load average {load:.1f} when it started: the min column is the "
        "uncontended cost, medians and p95 include preemption in ~4 ms scheduler slices), "
        "libespeak-ng 1.52 from espeakng-loader, en-us, 175 wpm, "
        f"{e['runs']} runs each.\n\n"
        "Per sentence (voice/parameter setup + espeak_Synth, inside the process-wide lock):\n\n"
        + markdown_table(["chars", "audio s", "min ms", "median ms", "p95 ms", "RTF (median compute/audio)"], rows)
        + f"\n\nStream of a {e['paragraph_sentences']}-sentence paragraph ({e['paragraph_audio_s']:.1f} s of audio): "
        f"first chunk after {e['first_ms']:.2f} ms (p95 {e['first_p95_ms']:.2f} ms), all of it in "
        f"{e['paragraph_ms']:.1f} ms.\n\n"
        f"Cancel from another thread while the consumer pulls: generator ends {e['cancel_between_ms']:.3f} ms after "
        f"the set (max {e['cancel_between_max_ms']:.3f} ms). Cancel inside espeak_Synth (callback returns 1): "
        f"{inside}.\n\n"
        "Adapter (EspeakTTSService), TTSSpeakFrame -> first TTSAudioRawFrame out, per output rate:\n\n"
        + markdown_table(["output Hz", "median ms", "p95 ms"], adapter)
        + f"\n\nAdapter interruption: cancel event set -> engine stream closed in the worker "
        f"{interrupt['median_ms']:.2f} ms "
        f"median, {interrupt['max_ms']:.2f} ms max ({interrupt['n']} runs; consumer paced at 10 ms per 60 ms chunk, "
        "so this includes up to one 10 ms pace sleep).\n"
    )
    print("\n" + body)
    if args.write:
        print(f"written to {write_section('espeak', body)}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    configure(parser)
    raise SystemExit(run(parser.parse_args()))
