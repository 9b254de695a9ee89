"""Voice-session memory: server RSS per session over many sequential sessions, fallback engines.

    duplex bench memory [--sessions 200] [--empty 20] [--speed 2] [--write]

The server is ``duplex serve`` in its own process (espeak, pocketsphinx, the bundled SmolLM2 with short replies), so
its RSS, threads and file descriptors are its own. Clients (``testkit.voice_clients``) run one at a time:

* ``--empty`` ``/ws`` sessions that get ``ready`` and stop, then as many empty Twilio calls (start, 1 s of silence,
  stop): the RSS each adds;
* ``--sessions`` ``/ws`` sessions, every second one speaking a flite question and waiting for the whole reply: RSS
  after the first 10 and after all of them (the target: within 50 MB), threads and fds before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time

CLIPS = ["flite_weather_kal16.wav", "flite_lights_slt.wav", "flite_table_rms.wav", "flite_pizza_kal16.wav"]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sessions", type=int, default=200, help="sequential /ws sessions, half with a spoken turn")
    p.add_argument("--empty", type=int, default=20, help="empty /ws sessions and empty Twilio calls, each")
    p.add_argument("--speed", type=float, default=2.0, help="send the user's speech this many times real time")
    p.add_argument("--max-tokens", type=int, default=16, help="LLM reply length")
    p.add_argument("--write", action="store_true", help="also write this run into docs/benchmarks.md")


async def measure(server, sessions: int, empty: int, speed: float, log=print) -> dict:
    from testkit.voice_clients import twilio_call, ws_session

    base = server.url("")
    await ws_session(base, clip=None)  # first-session costs (imports, lazy loads) out of the figures
    await twilio_call(base, clip=None, speed=10)
    await asyncio.sleep(1)
    out: dict = {"rss_start_mb": server.rss_mb(), "threads_start": server.threads(), "fds_start": server.fds()}

    before = server.rss_mb()
    for _ in range(empty):
        await ws_session(base, clip=None)
    await asyncio.sleep(1)
    out["ws_empty_mb"] = (server.rss_mb() - before) / max(empty, 1)
    log(f"empty /ws sessions: {out['ws_empty_mb']:+.2f} MB each")

    before = server.rss_mb()
    for _ in range(empty):
        await twilio_call(base, clip=None, speed=10)
    await asyncio.sleep(1)
    out["twilio_empty_mb"] = (server.rss_mb() - before) / max(empty, 1)
    log(f"empty Twilio calls: {out['twilio_empty_mb']:+.2f} MB each")

    curve: list[tuple[int, float]] = []
    errors = replies = 0
    t0 = time.monotonic()
    for i in range(1, sessions + 1):
        clip = CLIPS[(i // 2) % len(CLIPS)] if i % 2 == 0 else None
        result = await ws_session(base, clip=clip, speed=speed)
        errors += result.error is not None
        replies += result.replied
        curve.append((i, server.rss_mb()))
        if i == 10 or i % 20 == 0 or i == sessions:
            log(f"session {i}: RSS {curve[-1][1]:.0f} MB, threads {server.threads()}, fds {server.fds()}")
    await asyncio.sleep(1)
    after_10 = next(rss for i, rss in curve if i == min(10, sessions))
    out.update(
        sessions=sessions,
        spoken=sessions // 2,
        replies=replies,
        errors=errors,
        rss_after_10_mb=after_10,
        rss_end_mb=server.rss_mb(),
        growth_mb=server.rss_mb() - after_10,
        threads_end=server.threads(),
        fds_end=server.fds(),
        minutes=(time.monotonic() - t0) / 60,
        curve=curve,
    )
    return out


def run(args: argparse.Namespace) -> int:
    from testkit.server_process import ServerProcess

    env = {"DUPLEX_LLM__MAX_TOKENS": str(args.max_tokens), "DUPLEX_LLM__TEMPERATURE": "0"}
    with ServerProcess(env=env) as server:
        result = asyncio.run(measure(server, args.sessions, args.empty, args.speed))
    body = report(result, args)
    print(body)
    if args.write:
        from benchmarks.report import write_section

        print("wrote", write_section("session-memory", body))
    return 0


def report(r: dict, args: argparse.Namespace) -> str:
    from benchmarks.report import markdown_table

    step = max(1, r["sessions"] // 10)
    points = [(i, rss) for i, rss in r["curve"] if i == 1 or i % step == 0]
    return "\n".join(
        [
            "## Voice-session memory (`duplex bench memory`)",
            "",
            f"`duplex serve` in its own process (espeak, pocketsphinx, SmolLM2 with {args.max_tokens}-token replies); "
            f"clients one at a time on loopback; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
            f"(load average {os.getloadavg()[0]:.1f} at the end).",
            "",
            markdown_table(
                ["what", "server RSS"],
                [
                    ["at start (after one session of each kind)", f"{r['rss_start_mb']:.0f} MB"],
                    [f"per empty `/ws` session ({args.empty})", f"{r['ws_empty_mb']:+.2f} MB"],
                    [f"per empty Twilio call ({args.empty})", f"{r['twilio_empty_mb']:+.2f} MB"],
                    ["after the first 10 mixed sessions", f"{r['rss_after_10_mb']:.0f} MB"],
                    [
                        f"after {r['sessions']} mixed sessions ({r['spoken']} with a spoken turn, {r['replies']} "
                        f"replies, {r['errors']} errors)",
                        f"{r['rss_end_mb']:.0f} MB ({r['growth_mb']:+.0f} MB; target within 50 MB)",
                    ],
                ],
            ),
            "",
            f"Threads {r['threads_start']} -> {r['threads_end']}, file descriptors {r['fds_start']} -> "
            f"{r['fds_end']}; {r['minutes']:.1f} minutes. RSS by session: "
            + ", ".join(f"{i}: {rss:.0f}" for i, rss in points)
            + " MB.",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    configure(parser)
    raise SystemExit(run(parser.parse_args()))
