"""Part (b): the Ray Serve hop, what serving TTS from a replica costs against the same engine in-process.

    duplex bench scale hop [--engines espeak,qwen3] [--runs 12] [--frames 41] [--write]

The same utterance, the same engine and the same voice, in this process and through a Ray
Serve deployment of one replica on a local Ray instance (the same machine), alternated run by run so that machine load
falls on both alike. Measured at the caller:

* first audio: ``stream`` called -> first chunk in hand (median over runs), and what the hop adds;
* per chunk: (remote total - local total) / chunks, the hop's cost per chunk with the engine's work taken out; and
  for Qwen3-TTS, whose chunks leave one at a time, the hop latency itself (replica yield -> caller, one clock: both
  processes read the same ``perf_counter``);
* cancel: cancel event set -> the engine's stream ended (in-process) or the engine stopped on the replica (remote).

Qwen3-TTS is the tiny random model (the same chunks as the full model: 1 then 4 codec frames of 1920 samples; only
the compute per frame is smaller, which makes the hop's share look larger, not smaller), greedy, never emitting its
end token, ``--frames`` per utterance.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TEXT = "The remote hop costs little next to the engine's own work on every chunk it streams."
TARGET_FIRST_MS = 20.0  # the hop may add at most this to first audio
TARGET_CHUNK_MS = 5.0  # and at most this per chunk


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engines", default="espeak,qwen3", help="comma-separated: espeak, qwen3 (tiny random model)")
    p.add_argument("--runs", type=int, default=12, help="timed utterances per side (after 2 warm-ups)")
    p.add_argument("--frames", type=int, default=41, help="Qwen3-TTS codec frames per utterance (1 + 4 per chunk)")


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(0.95 * len(xs)) - 1)] if xs else float("nan")


def _one(engine: Any, voice: Any, generation: dict) -> dict:
    t0 = time.perf_counter()
    first = None
    chunks = samples = 0
    for chunk in engine.stream(TEXT, voice, "English", **generation):
        if first is None:
            first = time.perf_counter() - t0
        chunks += 1
        samples += len(chunk)
    return {"first": first, "total": time.perf_counter() - t0, "chunks": chunks, "samples": samples}


def _cancel_local(engine: Any, voice: Any, generation: dict) -> float:
    cancel = threading.Event()
    stream = engine.stream(TEXT * 4, voice, "English", cancel, **{**generation, "max_frames": 400})
    next(stream)
    next(stream)
    t0 = time.perf_counter()
    cancel.set()
    for _ in stream:
        pass
    return time.perf_counter() - t0


def _cancel_remote(engine: Any, voice: Any, generation: dict) -> float:
    cancel = threading.Event()
    stream = engine.stream(TEXT * 4, voice, "English", cancel, **{**generation, "max_frames": 400})
    next(stream)
    next(stream)
    stream_id = engine.last_stats.stream_id
    t0 = time.perf_counter()
    cancel.set()
    for _ in stream:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for stats in engine._handle.broadcast("stats").results(timeout_s=10):
            for sid, ended, _ in stats["finished"]:
                if sid == stream_id:
                    return ended - t0
        time.sleep(0.01)
    raise RuntimeError("the replica did not report the cancelled stream")


def measure(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    from processors.catalogue import TTSOptions, entry
    from processors.ray_serve import RayPlacement
    from processors.ray_serve.options import DeploymentOptions, RayOptions
    from voices.registry import VoiceRegistry

    generation: dict = {}
    if name == "qwen3":
        from benchmarks.tts_work import GREEDY
        from testkit.qwen3_tts_model import build_random_model_dir

        model = build_random_model_dir(workdir / "qwen3-tiny-noeos", "tiny", seed=0, never_eos=True)
        options = TTSOptions(engine="qwen3", model=str(model))
        generation = {"max_frames": args.frames, **GREEDY}
    else:
        options = TTSOptions(engine=name)
    local = entry("tts", name).load(options, "cpu")
    placement = RayPlacement(
        RayOptions(enabled=True, app_prefix="bench", tts=DeploymentOptions(replicas=1, cpus=1), request_timeout_s=60)
    )
    remote = placement.row("tts", name).load(options, "cpu")
    spec = VoiceRegistry(None).default().spec()
    voices = {"local": local.load_voice(spec), "remote": remote.load_voice(spec)}
    engines = {"local": local, "remote": remote}
    runs: dict[str, list[dict]] = {"local": [], "remote": []}
    hops: list[float] = []
    for i in range(args.runs + 2):
        order = ("local", "remote") if i % 2 == 0 else ("remote", "local")
        for side in order:
            result = _one(engines[side], voices[side], generation)
            if i >= 2:  # two warm-ups per side
                runs[side].append(result)
                if side == "remote":
                    st = remote.last_stats
                    hops.extend(st.hops_s[1:])  # the first chunk's hop is in first audio
                    result["to_replica"] = st.received - st.started
                    result["on_replica"] = st.first_produced - st.received
                    result["back"] = st.started + st.first_chunk_s - st.first_produced
    cancels = {"local": [], "remote": []}
    if name == "qwen3":
        for _ in range(max(3, args.runs // 2)):
            cancels["local"].append(_cancel_local(local, voices["local"], generation))
            cancels["remote"].append(_cancel_remote(remote, voices["remote"], generation))
        frame_s = _median([r["total"] / (args.frames) for r in runs["local"]])
    else:
        frame_s = float("nan")
    chunks = runs["local"][0]["chunks"]
    assert all(r["chunks"] == chunks for side in runs.values() for r in side), "the two sides made other chunks"
    from ray import serve

    serve.delete(placement.options.app_name("tts", name))
    first = {side: _median([r["first"] for r in rs]) for side, rs in runs.items()}
    total = {side: _median([r["total"] for r in rs]) for side, rs in runs.items()}
    return {
        "engine": name,
        "chunks": chunks,
        "audio_s": runs["local"][0]["samples"] / local.sample_rate,
        "first": first,
        "first_p95": {side: _p95([r["first"] for r in rs]) for side, rs in runs.items()},
        "split": {k: _median([r[k] for r in runs["remote"]]) for k in ("to_replica", "on_replica", "back")},
        "total": total,
        "per_chunk_added": (total["remote"] - total["local"]) / chunks,
        "hop_median": _median(hops),
        "hop_p95": _p95(hops),
        "chunks_queue": name != "qwen3",  # espeak hands out a sentence's chunks at once: they queue in the hop
        "cancel": {side: _median(xs) for side, xs in cancels.items()},
        "frame_s": frame_s,
    }


def run(args: argparse.Namespace) -> int:
    import ray
    import torch
    from ray import serve

    torch.set_num_threads(1)
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    os.environ.update(env)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    serve.start(proxy_location="Disabled")
    load = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="duplex-bench-scale-") as workdir:
            rows = [measure(name, args, Path(workdir)) for name in names]
    finally:
        serve.shutdown()
        ray.shutdown()
    load = (load, os.getloadavg())
    body = report(rows, args, load)
    print(body)
    if args.write:
        from benchmarks.report import write_section

        print("wrote", write_section("scale-hop", body))
    return 0


def report(rows: list[dict], args: argparse.Namespace, load: tuple) -> str:
    import ray

    from benchmarks.report import markdown_table

    ms = lambda s: s * 1000.0
    table = []
    split = []
    targets = []
    for r in rows:
        added_first = ms(r["first"]["remote"] - r["first"]["local"])
        hop = "-" if r["chunks_queue"] else f"{ms(r['hop_median']):.2f} / {ms(r['hop_p95']):.2f}"
        cancel = (
            "-"
            if r["engine"] != "qwen3"
            else f"{ms(r['cancel']['local']):.1f} / {ms(r['cancel']['remote']):.1f} "
            f"({r['cancel']['remote'] / r['frame_s']:.1f} frames)"
        )
        table.append(
            [
                r["engine"],
                r["chunks"],
                f"{r['audio_s']:.2f}",
                f"{ms(r['first']['local']):.1f} / {ms(r['first']['remote']):.1f}",
                f"{r['first']['remote'] / r['first']['local']:.2f}",
                f"{added_first:+.1f}",
                f"{ms(r['total']['local']):.0f} / {ms(r['total']['remote']):.0f}",
                f"{r['total']['remote'] / r['total']['local']:.2f}",
                f"{ms(r['per_chunk_added']):+.2f}",
                hop,
                cancel,
            ]
        )
        split.append(
            [
                r["engine"],
                f"{ms(r['split']['to_replica']):.1f}",
                f"{ms(r['split']['on_replica']):.1f}",
                f"{ms(r['first']['local']):.1f}",
                f"{ms(r['split']['back']):.1f}",
            ]
        )
        per_chunk = ms(r["per_chunk_added"]) if r["chunks_queue"] else ms(r["hop_median"])
        targets.append([r["engine"], "first audio added", f"{added_first:+.1f} ms", f"<= {TARGET_FIRST_MS:g} ms",
                        "yes" if added_first <= TARGET_FIRST_MS else "NO"])  # fmt: skip
        targets.append([r["engine"], "per chunk added", f"{per_chunk:+.2f} ms", f"<= {TARGET_CHUNK_MS:g} ms",
                        "yes" if per_chunk <= TARGET_CHUNK_MS else "NO"])  # fmt: skip
    cpu = platform.processor() or platform.machine()
    lines = [
        "## Scale (b): the Ray Serve hop (`duplex bench scale hop`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on one {cpu} machine ({os.cpu_count()} CPUs, no "
        f"GPU), Ray {ray.__version__}, a local Ray instance with one replica of 1 CPU; {args.runs} timed utterances "
        "per side after 2 warm-ups, local and remote alternated; medians. The same engine, voice and text on both "
        f'sides: "{TEXT}". Qwen3-TTS: the tiny random model, greedy, {args.frames} frames (first chunk 1 frame, '
        "then 4), one torch thread on each side. Load average before / after: "
        f"{load[0][0]:.1f} / {load[1][0]:.1f}.",
        "",
        markdown_table(
            [
                "engine",
                "chunks",
                "audio s",
                "first audio ms (local / Ray)",
                "ratio",
                "hop adds ms",
                "total ms (local / Ray)",
                "ratio",
                "per chunk added ms",
                "hop latency ms (median / p95)",
                "cancel -> stopped ms (local / on the replica)",
            ],
            table,
        ),
        "",
        "Per chunk added = (Ray total - local total) / chunks. Hop latency = replica yield -> chunk in the caller's "
        "hand, for chunks after the first; not given for espeak, which synthesises a sentence at once and hands out "
        "its 60 ms buffers together, so they queue in the hop (their cost is in the per-chunk column). Cancel: the "
        "caller sets the event after two chunks; local = the engine's stream ended; Ray = the engine stopped on the "
        "replica (its stream's worker joined), which includes the watcher's poll (5 ms), the cancel RPC and the "
        "engine's step in flight; in frames of the tiny model's measured time per frame.",
        "",
        "Where the Ray side's first audio goes (medians; the replica's clock is the caller's on one machine). The hop "
        "itself is the first column plus the last; the middle one differs from the local first audio by the engine "
        "running in another process (a thread handoff, and on a crowded CPU that process's share of the machine, which "
        "varies from run to run: compare the load average above).",
        "",
        markdown_table(
            [
                "engine",
                "call -> request on the replica ms",
                "request -> first chunk on the replica ms",
                "(local first audio ms)",
                "first chunk -> caller ms",
            ],
            split,
        ),
        "",
        markdown_table(["engine", "goal", "measured", "target", "met"], targets),
        "",
        "Per-chunk goal: the hop latency where chunks leave one at a time (Qwen3-TTS), else the per-chunk added "
        "time. What this does not measure: a hop between machines (add the network's round trip, about 0.1-0.5 ms in "
        "one data centre, and 1 ms of transfer per 30 KB chunk at 250 Mbit/s), GPU replicas, many replicas under "
        "load (Serve's routing), Ray's object store beyond what one chunk (≤ 30 KB, inlined in the reply) uses.",
    ]
    return "\n".join(lines)
