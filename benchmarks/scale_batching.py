"""Part (a): concurrent /api/v1/speak sessions on one Qwen3-TTS engine, batched (the default) vs one stream at a time.

    duplex bench scale batching [--concurrency 1,2,4,8,10] [--model full|tiny] [--threads 1] [--write]

One server process holds the model once (loaded by ``load_engines``, as ``duplex serve --tts qwen3 --tts-model DIR``
loads it) and serves two apps on two ports: ``batched`` (its engine as loaded, ``max_streams`` = the largest
concurrency) and ``one-lock`` (an engine on the same weights with ``max_streams=0``: one stream generates at a time).
Rounds alternate between the two, so the drifting load of a shared machine weighs on both alike. The clients are
``websockets`` in this process: ``pacing: realtime``, 24 kHz pcm16; in a round, N sessions send their ``speak`` at the
same moment, each a different phrase of the same length (20 frames, 1.6 s, with the random model's stop rule). The
voice is a speaker embedding only (x-vector) from the shipped default voice's reference, so an utterance's length
follows its text.

Per mode and N:

* aggregate frames/s: every session's frames / (last complete - first speak sent);
* per-frame time of a session: (complete - first audio) / (frames - 1), the median over the sessions, and its ratio
  to one session's: what a frame costs each session when N share the engine (target: <= 3 at 10 sessions, batched);
* first audio (speak sent -> first audio frame at the client), p50 and p95 over the sessions (N = 1: over
  ``--single-runs`` runs), and the first N at which p95 exceeds 2x the single-session value.

Then the join stall: one stream running, a second one starts; how much longer the first stream's frame interval gets
while the second is prefilled and joins (the engine alone, in its own process, audio decoded one frame at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# 7 tokens each with the random model's tokenizer: 20 frames each (testkit.qwen3_tts_model.expected_frames)
PHRASES = [
    "Call me back.", "Let me check.", "Open the door.", "Good to know.", "Mind the gap.", "Almost there.",
    "On my way.", "Not yet.", "Nice work.", "Not at all.", "Of course.", "One moment.", "Take care.",
]  # fmt: skip
LONG_PHRASE = "Thanks for calling us back."  # 38 frames: the running stream of the stall measurement
FRAME_S = 0.08
VOICE_ID = "bench-xvector"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", default="1,2,4,8,10", help="sessions per round, comma-separated")
    what = "random Qwen3-TTS model: full (the 0.6B architecture, ~6 GB RSS) or tiny (a quick check)"
    p.add_argument("--model", choices=["full", "tiny"], default="full", help=what)
    p.add_argument("--modes", default="batched,one-lock", help="batched, one-lock")
    what = "largest concurrency measured one-lock (0: every level); one at a time, session N's first audio waits for "
    what += "the N-1 utterances ahead of it, so past the crossing a level adds run time and no news"
    p.add_argument("--one-lock-max", type=int, default=0, help=what)
    p.add_argument("--single-runs", type=int, default=3, help="runs of the single-session round")
    p.add_argument("--threads", type=int, default=1, help="torch threads per thread in the server process")
    p.add_argument("--stall-trials", type=int, default=3, help="runs of the join-stall measurement (0: skip it)")


# --- server process --------------------------------------------------------------------------------------------------
def _serve(model_dir: str, voices_dir: str, max_streams: int, threads: int, port_queue: mp.Queue) -> None:
    """Both modes on one copy of the weights: ``load_engines``'s engine (batched) and one with ``max_streams=0``."""
    import torch
    import uvicorn

    from agent.server import Engines, create_app
    from agent.settings import ServerSettings, Settings, TTSSettings
    from pipelines.engines import load_engines
    from processors.qwen3_tts import Qwen3TTSEngine

    torch.set_num_threads(threads)
    tts = TTSSettings(engine="qwen3", model=model_dir, max_streams=max_streams)
    settings = Settings(device="cpu", voices_dir=voices_dir, tts=tts,
                        server=ServerSettings(max_sessions=64, idle_timeout_s=3600))  # fmt: skip
    batched = load_engines(settings, kinds=("tts",), engines=Engines()).tts
    one_lock = Qwen3TTSEngine(batched.tts_model, batched.model_id, first_chunk_frames=batched.first_chunk_frames,
                              chunk_frames=batched.chunk_frames, max_streams=0)  # fmt: skip
    one_lock.voices = batched.voices  # the same voice prompts
    one_lock.warmup()
    servers, ports = [], {}
    for mode, engine in (("batched", batched), ("one-lock", one_lock)):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        ports[mode] = sock.getsockname()[1]
        config = uvicorn.Config(create_app(settings, Engines(tts=engine)), log_level="warning", ws_ping_interval=None)
        servers.append((uvicorn.Server(config), sock))
    port_queue.put(ports)

    async def serve_all() -> None:
        await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in servers))

    asyncio.run(serve_all())


def _start_server(ctx, model_dir: Path, voices_dir: Path, max_streams: int, threads: int):
    import httpx

    q = ctx.Queue()
    server = ctx.Process(target=_serve, args=(str(model_dir), str(voices_dir), max_streams, threads, q), daemon=True)
    server.start()
    ports = q.get(timeout=1200)
    deadline = time.time() + 600
    for port in ports.values():
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or not server.is_alive():
                raise RuntimeError("the server did not become ready")
            time.sleep(0.5)
    return server, {mode: f"ws://127.0.0.1:{port}/api/v1/speak" for mode, port in ports.items()}


# --- clients ---------------------------------------------------------------------------------------------------------
async def _session(url: str, text: str, go: asyncio.Event) -> dict:
    import websockets

    async with websockets.connect(url, max_size=None, open_timeout=120, ping_interval=None) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "start", "sampleRate": 24_000, "pacing": "realtime", "voice": VOICE_ID}))
        started = json.loads(await ws.recv())
        assert started["type"] == "started", started
        await go.wait()
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "speak", "text": text}))
        first = None
        while True:
            frame = await asyncio.wait_for(ws.recv(), 1800)
            if isinstance(frame, bytes):
                first = first or time.perf_counter()
                continue
            msg = json.loads(frame)
            if msg["type"] == "complete":
                frames = round(msg["audioLengthMs"] / 1000 / FRAME_S)
                return dict(sent=sent, first=first, done=time.perf_counter(), frames=frames)
            if msg["type"] == "error":
                raise RuntimeError(f"speak failed: {msg}")


async def _round(url: str, n: int) -> list[dict]:
    go = asyncio.Event()
    tasks = [asyncio.create_task(_session(url, PHRASES[i % len(PHRASES)], go)) for i in range(n)]
    await asyncio.sleep(1.0)  # every session connected and started
    go.set()
    return await asyncio.gather(*tasks)


def _measure(ctx, model_dir: Path, voices_dir: Path, args: argparse.Namespace) -> dict:
    """Every mode at every concurrency, rounds alternating between the modes."""
    import psutil

    levels = [int(x) for x in args.concurrency.split(",")]
    modes = args.modes.split(",")
    t = time.perf_counter()
    server, urls = _start_server(ctx, model_dir, voices_dir, max(levels), args.threads)
    print(f"server ready in {time.perf_counter() - t:.0f} s", flush=True)
    proc = psutil.Process(server.pid)
    out: dict = {mode: {"levels": {}} for mode in modes}
    try:
        for mode in modes:
            asyncio.run(_round(urls[mode], 1))  # warm-up: the voice prompt, first allocations
        for n in levels:
            now = [m for m in modes if not (m == "one-lock" and 0 < args.one_lock_max < n)]
            sessions: dict[str, list[dict]] = {mode: [] for mode in now}
            loads: list[float] = []
            for _ in range(args.single_runs if n == 1 else 1):
                for mode in now:
                    sessions[mode] += asyncio.run(_round(urls[mode], n))
                    loads.append(os.getloadavg()[0])
            for mode in now:
                s = out[mode]["levels"][n] = _summarise(n, sessions[mode])
                s["rss_mb"] = proc.memory_info().rss / 2**20
                s["load"] = statistics.mean(loads)
                print(f"[{mode} x{n}] {s['agg_fps']:.2f} frames/s, {s['per_frame_s']:.3f} s/frame per session, "
                      f"first audio p50 {s['first_p50']:.2f} s p95 {s['first_p95']:.2f} s, load {s['load']:.1f}",
                      flush=True)  # fmt: skip
    finally:
        server.terminate()
        server.join(30)
    return out


def _summarise(n: int, sessions: list[dict]) -> dict:
    firsts = [s["first"] - s["sent"] for s in sessions]
    per_frame = [(s["done"] - s["first"]) / max(1, s["frames"] - 1) for s in sessions]
    if n == 1:  # separate runs: frames/s of each run
        agg = statistics.median(s["frames"] / (s["done"] - s["sent"]) for s in sessions)
    else:
        agg = sum(s["frames"] for s in sessions) / (max(s["done"] for s in sessions) - min(s["sent"] for s in sessions))
    return dict(
        sessions=len(sessions),
        frames=statistics.median(s["frames"] for s in sessions),
        agg_fps=agg,
        per_frame_s=statistics.median(per_frame),
        first_p50=float(np.percentile(firsts, 50)),
        first_p95=float(np.percentile(firsts, 95)),
    )


# --- join stall (engine alone) ---------------------------------------------------------------------------------------
def _stall(model_dir: str, reference: str, threads: int, trials: int, result: mp.Queue) -> None:
    import torch

    from processors.qwen3_tts import Qwen3TTSEngine

    torch.set_num_threads(threads)
    engine = Qwen3TTSEngine.from_pretrained(model_dir, device="cpu", max_streams=2)
    voice = engine.create_voice(reference)  # speaker embedding only
    engine.synthesize(PHRASES[0], voice)  # warm-up
    runs = []
    for _ in range(trials):
        times: dict[str, list[float]] = {"a": [], "b": []}
        stats: dict[str, object] = {}

        def run(name: str, text: str, times=times, stats=stats) -> None:
            for _ in engine.stream(text, voice, "English", chunk_frames=1):
                times[name].append(time.perf_counter())
            stats[name] = engine.last_stats  # b's: it started last

        a = threading.Thread(target=run, args=("a", LONG_PHRASE))
        a.start()
        while len(times["a"]) < 8:
            time.sleep(0.005)
        t_b = time.perf_counter()
        b = threading.Thread(target=run, args=("b", PHRASES[1]))
        b.start()
        a.join()
        b.join()
        ta, tb = np.array(times["a"]), np.array(times["b"])
        gaps, ends = np.diff(ta), ta[1:]
        window = (ends >= t_b) & (ends <= tb[min(2, len(tb) - 1)])  # until the new stream's third frame
        runs.append(dict(
            interval_s=float(np.median(gaps[ends < t_b])),
            longest_s=float(gaps[window].max()) if window.any() else float("nan"),
            prefill_s=float(stats["b"].timings.get("prefill_s", float("nan"))),
            first_audio_s=float(tb[0] - t_b),
        ))  # fmt: skip
    result.put({k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"trials": trials})


def _measure_stall(ctx, model_dir: Path, reference: Path, threads: int, trials: int) -> dict:
    q = ctx.Queue()
    p = ctx.Process(target=_stall, args=(str(model_dir), str(reference), threads, trials, q), daemon=True)
    p.start()
    try:
        return q.get(timeout=3600)
    finally:
        p.join(60)


# --- run and report --------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from testkit.qwen3_tts_model import cached_random_model_dir, default_cache_dir
    from voices.registry import SHIPPED_DIR, VoiceRegistry

    model_dir = cached_random_model_dir(default_cache_dir(), args.model, never_eos=False)
    voices_dir = Path(tempfile.mkdtemp(prefix="duplex-bench-voices-"))
    reference = SHIPPED_DIR / "default" / "reference.wav"
    VoiceRegistry(voices_dir).add(reference, name="bench x-vector", voice_id=VOICE_ID)
    ctx = mp.get_context("spawn")
    results = _measure(ctx, model_dir, voices_dir, args)
    stall = None
    if args.stall_trials > 0:
        stall = _measure_stall(ctx, model_dir, reference, args.threads, args.stall_trials)
    body = report(args, results, stall)
    print(body)
    if args.write:
        from benchmarks.report import write_section

        print("wrote", write_section("scale-concurrency", body))
    return 0


def crossing(levels: dict[int, dict]) -> str:
    """The first N whose first-audio p95 exceeds 2x the single-session p50, or that none does."""
    single = levels[min(levels)]["first_p50"]
    for n in sorted(levels):
        if levels[n]["first_p95"] > 2 * single:
            return f"{n} sessions"
        last = n
    return f"not up to {last} sessions"


HEADERS = ["mode", "sessions", "aggregate frames/s", "x one session", "per-frame s per session", "x one session",
           "first audio p50 s", "first audio p95 s", "server RSS MB", "load average"]  # fmt: skip


def report(args: argparse.Namespace, results: dict, stall: dict | None) -> str:
    from benchmarks.report import markdown_table

    rows = []
    for mode, r in results.items():
        lv = r["levels"]
        one = lv[min(lv)]
        for n, s in lv.items():
            rows.append([
                mode, n, f"{s['agg_fps']:.2f}", f"{s['agg_fps'] / one['agg_fps']:.2f}", f"{s['per_frame_s']:.3f}",
                f"{s['per_frame_s'] / one['per_frame_s']:.2f}", f"{s['first_p50']:.2f}", f"{s['first_p95']:.2f}",
                f"{s['rss_mb']:.0f}", f"{s['load']:.1f}",
            ])  # fmt: skip
    lines = [
        "## Scale (a): concurrent /api/v1/speak sessions in one process, batched vs one-lock "
        "(`duplex bench scale batching`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} CPUs (load average in the "
        f"table), no GPU; {args.model} random Qwen3-TTS model in fp32, "
        f"{args.threads} torch thread(s) per thread. One server process (the engine loaded as `duplex serve --tts "
        "qwen3 --tts-model DIR` loads it) serves both modes on the same weights, rounds alternating between them; "
        "every session of a round sends its `speak` at once, paces audio in real time (24 kHz pcm16) and speaks a "
        "different phrase of 20 frames (1.6 s). `batched`: `max_streams` "
        f"{max(int(x) for x in args.concurrency.split(','))}; `one-lock`: `max_streams=0`, one stream generates at "
        "a time (frames made ahead of playback, so a slow client holds nobody up). Server RSS: both engines, one copy "
        "of the weights. Per-frame time: (complete - first "
        "audio) / (frames - 1) of each session, median (when generation is faster than real time, as with the tiny "
        "model, pacing sets it); first audio: speak sent -> first audio at the client "
        f"(single session: {args.single_runs} runs).",
        "",
        markdown_table(HEADERS, rows),
        "",
    ]
    for mode, r in results.items():
        lines.append(f"- {mode}: first-audio p95 exceeds 2x the single-session value at {crossing(r['levels'])}.")
    if "one-lock" in results and args.one_lock_max:
        lines.append(f"- one-lock measured up to {args.one_lock_max} sessions: one at a time, session N's first audio "
                     "waits for the N-1 utterances ahead of it, so larger rounds only lengthen the run.")  # fmt: skip
    batched = results.get("batched", {}).get("levels", {})
    if 10 in batched and 1 in batched:
        ratio = batched[10]["per_frame_s"] / batched[1]["per_frame_s"]
        met = "met" if ratio <= 3 else "NOT met"
        lines.append(f"- Target: batched, 10 sessions cost at most 3x the per-frame time of one: {ratio:.2f}x, {met}.")
    loads = [s["load"] for r in results.values() for s in r["levels"].values()]
    if loads and max(loads) > (os.cpu_count() or 1):
        lines.append(f"- The machine was over-committed (load average {min(loads):.1f}-{max(loads):.1f} on "
                     f"{os.cpu_count()} CPUs): rows measured at different loads are not comparable, nor is the "
                     "target's ratio (10 sessions against 1, at other loads); the modes compare within a row (the "
                     "same rounds, alternating).")  # fmt: skip
    lines += [
        "",
        "What holds where: on this CPU every step is compute-bound (fp32 linears on one core), so a batched step of "
        "N streams costs more as N grows; a prefill is compute too, and a burst of N new sessions waits for N "
        "prefills one after another; the codec decoder runs per session, on the same cores. On a GPU a step is bound "
        "by kernel launches and memory reads (replayed as CUDA graphs) and grows far less with N, and a prefill runs "
        "on its own CUDA stream beside the steps, so the per-frame and first-audio spreads there are expected to be "
        "much flatter; none of that is measured here (no GPU: `duplex bench tts-gpu` and `scripts/gpu-check.sh` run "
        "1, 4 and 10 streams on one).",
    ]
    if stall is not None:
        st = stall
        lines += [
            "",
            "Join stall (the engine alone, `max_streams=2`, audio decoded frame by frame; medians of "
            f"{st['trials']} runs): a stream's frames came every {st['interval_s']:.3f} s; while a second stream "
            f"was prefilled ({st['prefill_s']:.3f} s) and joined, its longest interval was {st['longest_s']:.3f} s "
            f"(+{st['longest_s'] - st['interval_s']:.3f} s); the new stream's first audio came "
            f"{st['first_audio_s']:.2f} s after it started. On a CPU the prefill thread shares the cores with the "
            "steps, so when they are busy a running stream slows by up to the prefill's duration, though the batch "
            "never waits for the prefill (`test_prefill_runs_beside_the_batch`); on a GPU the prefill runs on a CUDA "
            "stream of its own.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    configure(parser)
    parser.add_argument("--write", action="store_true", help="also write the result into docs/benchmarks.md")
    raise SystemExit(run(parser.parse_args()))
