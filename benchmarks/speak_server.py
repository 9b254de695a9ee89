"""/api/v1/speak server: cancel latency, first audio, per-session memory/threads/CPU, over real loopback sockets.

    python -m benchmarks.speak_server [--engine espeak] [--runs 20] [--write]

The server (``create_app`` + uvicorn) runs in its own process, so its RSS, threads and CPU time are its own; the
clients are ``websockets`` in this process.

* cancel: speak a long text, then send ``cancel`` (after 0.5 s of audio with ``pacing: realtime``, lead 160 ms; or
  after the first frame with ``asap``); measured at the client: cancel sent -> last audio frame received, cancel sent
  -> ``CANCELLED`` received, and the audio that still arrived after the cancel was sent.
* first audio: ``speak`` sent -> first binary frame received (24 kHz pcm16, one sentence).
* per session: server RSS and thread count with 0 and 10 idle started sessions, then while those 10 speak at once
  (asap, 48 kHz pcm16); CPU seconds the server spends per second of audio it streams (engine included).
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
import time

import numpy as np

LONG_TEXT = " ".join(
    f"This is sentence number {i} of a long passage that keeps the engine busy for a while." for i in range(1, 16)
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["espeak", "qwen3-tiny"], default="espeak")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--write", action="store_true", help="also write this run into docs/benchmarks.md")


def _serve(engine_name: str, port_queue: mp.Queue) -> None:
    import uvicorn

    from agent.server import Engines, create_app
    from agent.settings import ServerSettings, Settings, TTSSettings
    from pipelines.engines import load_engines

    tts = TTSSettings(engine=engine_name)
    if engine_name == "qwen3-tiny":
        import torch

        from testkit.qwen3_tts_model import build_random_model_dir

        torch.set_num_threads(1)
        model = build_random_model_dir(os.path.join(tempfile.mkdtemp(), "m"), "tiny", seed=0)
        tts = TTSSettings(engine="qwen3", model=str(model))
    settings = Settings(device="cpu", voices_dir=tempfile.mkdtemp(), tts=tts, server=ServerSettings(max_sessions=20))
    app = create_app(settings, load_engines(settings, kinds=("tts",), engines=Engines()))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port_queue.put(sock.getsockname()[1])
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


async def _session(url: str, start: dict):
    import websockets

    ws = await websockets.connect(url, max_size=None)
    assert json.loads(await ws.recv())["type"] == "ready"
    await ws.send(json.dumps({"type": "start", **start}))
    started = json.loads(await ws.recv())
    assert started["type"] == "started", started
    return ws


async def _until_end(ws) -> tuple[float | None, int, dict]:
    """(time of the last audio frame or None, audio bytes, the final JSON message)."""
    last, total = None, 0
    while True:
        frame = await ws.recv()
        if isinstance(frame, bytes):
            last, total = time.perf_counter(), total + len(frame)
            continue
        msg = json.loads(frame)
        if msg["type"] in ("complete", "error"):
            return last, total, msg


async def measure_cancel(url: str, runs: int, pacing: str) -> dict:
    ws = await _session(url, {"sampleRate": 24_000, "pacing": pacing, "pacingLeadMs": 160})
    last_ms, end_ms, after_ms = [], [], []
    for _ in range(runs):
        await ws.send(json.dumps({"type": "speak", "text": LONG_TEXT}))
        got = 0
        while got < (12_000 if pacing == "realtime" else 1):
            frame = await ws.recv()
            assert isinstance(frame, bytes)
            got += len(frame) // 2
        t = time.perf_counter()
        await ws.send(json.dumps({"type": "cancel"}))
        last, total, msg = await _until_end(ws)
        t_end = time.perf_counter()
        assert msg.get("code") == "CANCELLED", msg
        last_ms.append(0.0 if last is None else (last - t) * 1000)  # 0: no frame arrived after the cancel
        end_ms.append((t_end - t) * 1000)
        after_ms.append(total / 2 / 24_000 * 1000)
    await ws.close()
    return dict(
        pacing=pacing,
        last_frame_ms=statistics.median(last_ms),
        last_frame_max_ms=max(last_ms),
        cancelled_ms=statistics.median(end_ms),
        cancelled_max_ms=max(end_ms),
        audio_after_ms=statistics.median(after_ms),
        audio_after_max_ms=max(after_ms),
    )


async def measure_first_audio(url: str, runs: int) -> dict:
    ws = await _session(url, {"sampleRate": 24_000, "pacing": "asap"})
    first = []
    for _ in range(runs):
        t = time.perf_counter()
        await ws.send(json.dumps({"type": "speak", "text": "The weather today is sunny with a light breeze."}))
        frame = await ws.recv()
        assert isinstance(frame, bytes)
        first.append((time.perf_counter() - t) * 1000)
        await _until_end(ws)
    await ws.close()
    return dict(median_ms=statistics.median(first), p95_ms=float(np.percentile(first, 95)))


async def measure_sessions(url: str, pid: int, n: int = 10) -> dict:
    import psutil

    proc = psutil.Process(pid)

    def snap() -> tuple[float, int, float]:
        t = proc.cpu_times()
        return proc.memory_info().rss / 2**20, proc.num_threads(), t.user + t.system

    await asyncio.sleep(0.5)
    rss0, thr0, _ = snap()
    sessions = [await _session(url, {"sampleRate": 48_000, "pacing": "asap"}) for _ in range(n)]
    await asyncio.sleep(0.5)
    rss1, thr1, _ = snap()
    peak_threads = 0
    _, _, cpu0 = snap()

    async def speak(ws):
        await ws.send(json.dumps({"type": "speak", "text": LONG_TEXT}))
        return await _until_end(ws)

    tasks = [asyncio.create_task(speak(ws)) for ws in sessions]
    while not all(t.done() for t in tasks):
        peak_threads = max(peak_threads, proc.num_threads())
        await asyncio.sleep(0.02)
    results = [t.result() for t in tasks]
    rss2, _, cpu1 = snap()
    audio_s = sum(total for _, total, _ in results) / 2 / 48_000
    for ws in sessions:
        await ws.close()
    await asyncio.sleep(0.5)
    rss3, thr3, _ = snap()
    return dict(
        rss_idle_mb=rss0,
        rss_per_idle_session_kb=(rss1 - rss0) * 1024 / n,
        threads_idle=thr0,
        threads_with_sessions=thr1,
        peak_threads_speaking=peak_threads,
        threads_after=thr3,
        rss_after_speaking_mb=rss2,
        rss_after_close_mb=rss3,
        cpu_s_per_audio_s=(cpu1 - cpu0) / audio_s,
        audio_s=audio_s,
    )


async def _measure(url: str, pid: int, runs: int) -> dict:
    return dict(
        cancel=[await measure_cancel(url, runs, "realtime"), await measure_cancel(url, runs, "asap")],
        first=await measure_first_audio(url, runs),
        sessions=await measure_sessions(url, pid),
    )


def run(args: argparse.Namespace) -> int:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    server = ctx.Process(target=_serve, args=(args.engine, q), daemon=True)
    server.start()
    try:
        port = q.get(timeout=300)
        url = f"ws://127.0.0.1:{port}/api/v1/speak"
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        import httpx

        while httpx.get(f"http://127.0.0.1:{port}/readyz").status_code != 200:
            time.sleep(0.1)
        result = asyncio.run(_measure(url, server.pid, args.runs))
    finally:
        server.terminate()
        server.join(10)
    body = report(args.engine, args.runs, result)
    print(body)
    if args.write:
        from benchmarks.report import write_section

        print("wrote", write_section("speak-server", body))
    return 0


def report(engine: str, runs: int, r: dict) -> str:
    from benchmarks.report import markdown_table

    s = r["sessions"]
    lines = [
        "## /api/v1/speak server (`python -m benchmarks.speak_server`)",
        "",
        f"Engine {engine}; {runs} runs; server in its own process on loopback; "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared). Measured at the client.",
        "",
        markdown_table(
            [
                "pacing",
                "cancel -> last frame (median / max ms)",
                "cancel -> CANCELLED (median / max ms)",
                "audio after cancel (median / max ms)",
            ],
            [
                [
                    c["pacing"],
                    f"{c['last_frame_ms']:.1f} / {c['last_frame_max_ms']:.1f}",
                    f"{c['cancelled_ms']:.1f} / {c['cancelled_max_ms']:.1f}",
                    f"{c['audio_after_ms']:.0f} / {c['audio_after_max_ms']:.0f}",
                ]
                for c in r["cancel"]
            ],
        ),
        "",
        f"First audio (speak sent -> first frame, one sentence, 24 kHz): median {r['first']['median_ms']:.1f} ms, "
        f"p95 {r['first']['p95_ms']:.1f} ms.",
        "",
        f"Per session: server RSS {s['rss_idle_mb']:.0f} MiB idle, +{s['rss_per_idle_session_kb']:.0f} KiB per open "
        f"started session (10 sessions); threads {s['threads_idle']} idle, {s['threads_with_sessions']} with 10 idle "
        f"sessions (no thread per idle session), peak {s['peak_threads_speaking']} while 10 speak at once (one worker "
        f"per speaking session), {s['threads_after']} after they close; RSS {s['rss_after_speaking_mb']:.0f} MiB after "
        f"speaking, {s['rss_after_close_mb']:.0f} MiB after close. Server CPU {s['cpu_s_per_audio_s'] * 1000:.1f} ms "
        f"per second of 48 kHz audio streamed ({s['audio_s']:.0f} s, engine included).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    configure(parser)
    raise SystemExit(run(parser.parse_args()))
