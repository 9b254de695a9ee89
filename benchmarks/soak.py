"""Soak: concurrent speak and voice sessions against one server for N minutes: errors, first audio, RSS/threads/fds.

    duplex bench soak --minutes 30 [--speak-clients 4] [--voice-clients 2] [--twilio-clients 1] [--write]

The server is ``duplex serve`` in its own process with the fallback engines (espeak, pocketsphinx, the bundled SmolLM2
with short replies). Scripted clients run concurrently the whole time, each opening session after session:

* speak clients: start, five speaks (sentences of varied length, one cancelled on purpose), stop, reconnect;
  first audio = speak sent -> first audio frame received;
* ``/ws`` voice clients: one spoken flite question (real audio, real time), the whole reply, stop, reconnect;
  first audio = end of the user's speech -> first bot audio received;
* Twilio callers: the same over ``/telephony/twilio`` (8 kHz mu-law media events).

Every 15 s the server's RSS, threads, file descriptors and open sessions are sampled. Errors: a speak that ends in
anything but ``complete`` (a ``CANCELLED`` the client asked for excepted), a voice session without a reply, a
connection refused or dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

CLIPS = [
    "flite_weather_kal16.wav",
    "flite_lights_slt.wav",
    "flite_table_rms.wav",
    "flite_pizza_kal16.wav",
    "flite_story_slt.wav",
]
SENTENCES = [
    "Hello there.",
    "The weather today is sunny with a light breeze.",
    "Please remember to bring the documents to the meeting tomorrow morning at nine.",
    "One, two, three, four, five.",
    "This is a longer passage that keeps the engine busy for a little while, so that the session streams for "
    "several seconds before it completes.",
]
SAMPLE_EVERY_S = 15.0


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=30.0, help="how long to run")
    p.add_argument("--speak-clients", type=int, default=4)
    p.add_argument("--voice-clients", type=int, default=2, help="/ws clients speaking real audio")
    p.add_argument("--twilio-clients", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=16, help="LLM reply length")
    p.add_argument("--write", action="store_true", help="also write this run into docs/benchmarks.md")
    p.add_argument("--server-log", default=None, help="write the server's log (level info) to this file")


@dataclass
class Tally:
    sessions: Counter = field(default_factory=Counter)
    turns: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    first_audio: dict = field(default_factory=lambda: defaultdict(list))
    samples: list = field(default_factory=list)  # (minute, rss MB, threads, fds, sessions open)
    error_examples: list = field(default_factory=list)

    def error(self, kind: str, what: str) -> None:
        self.errors[kind] += 1
        if len(self.error_examples) < 10:
            self.error_examples.append(f"{kind}: {what[:160]}")


async def speak_client(base: str, tally: Tally, until: float, rng: random.Random) -> None:
    import websockets

    while time.monotonic() < until:
        try:
            async with websockets.connect(f"{base}/api/v1/speak", max_size=None) as ws:
                assert json.loads(await ws.recv())["type"] == "ready"
                await ws.send(json.dumps({"type": "start", "sampleRate": 24_000, "pacing": "realtime"}))
                assert json.loads(await ws.recv())["type"] == "started"
                tally.sessions["speak"] += 1
                cancel_at = rng.randrange(5)
                for i in range(5):
                    if time.monotonic() > until:
                        break
                    await ws.send(json.dumps({"type": "speak", "text": rng.choice(SENTENCES), "requestId": str(i)}))
                    t0, first = time.monotonic(), None
                    while True:
                        msg = await asyncio.wait_for(ws.recv(), 60)
                        if isinstance(msg, bytes):
                            if first is None:
                                first = time.monotonic() - t0
                                tally.first_audio["speak"].append(first)
                                if i == cancel_at:
                                    await ws.send(json.dumps({"type": "cancel"}))
                            continue
                        end = json.loads(msg)
                        if end["type"] in ("complete", "error"):
                            break
                    tally.turns["speak"] += 1
                    if end["type"] == "error" and not (end.get("code") == "CANCELLED" and i == cancel_at):
                        tally.error("speak", json.dumps(end))
                await ws.send(json.dumps({"type": "stop"}))
        except Exception as e:
            tally.error("speak", f"{type(e).__name__}: {e}")
            await asyncio.sleep(1)


async def voice_client(base: str, kind: str, tally: Tally, until: float, rng: random.Random) -> None:
    from testkit.voice_clients import twilio_call, ws_session

    call = ws_session if kind == "ws" else twilio_call
    while time.monotonic() < until:
        try:
            result = await call(base, clip=rng.choice(CLIPS), reply_timeout_s=60)
            tally.sessions[kind] += 1
            tally.turns[kind] += 1
            if result.first_audio_s is not None:
                tally.first_audio[kind].append(result.first_audio_s)
            if result.error:
                tally.error(kind, result.error)
        except Exception as e:
            tally.error(kind, f"{type(e).__name__}: {e}")
            await asyncio.sleep(1)


async def sampler(server, tally: Tally, started: float, until: float) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            try:
                health = (await client.get(server.url("/healthz", "http"))).json()
                open_sessions = health["sessions"]["active"]
            except Exception:
                open_sessions = -1
            tally.samples.append(
                ((time.monotonic() - started) / 60, server.rss_mb(), server.threads(), server.fds(), open_sessions)
            )
            if time.monotonic() >= until:
                return
            await asyncio.sleep(min(SAMPLE_EVERY_S, max(0.0, until - time.monotonic())))


async def soak(server, args: argparse.Namespace) -> Tally:
    tally = Tally()
    base = server.url("")
    started = time.monotonic()
    until = started + args.minutes * 60
    rng = random.Random(0)
    clients = [speak_client(base, tally, until, random.Random(rng.random())) for _ in range(args.speak_clients)]
    clients += [voice_client(base, "ws", tally, until, random.Random(rng.random())) for _ in range(args.voice_clients)]
    clients += [
        voice_client(base, "twilio", tally, until, random.Random(rng.random())) for _ in range(args.twilio_clients)
    ]
    await asyncio.gather(sampler(server, tally, started, until), *clients)
    await asyncio.sleep(5)  # sessions end, threads finish
    tally.samples.append(((time.monotonic() - started) / 60, server.rss_mb(), server.threads(), server.fds(), 0))
    return tally


def run(args: argparse.Namespace) -> int:
    from testkit.server_process import ServerProcess

    env = {"DUPLEX_LLM__MAX_TOKENS": str(args.max_tokens), "DUPLEX_LLM__TEMPERATURE": "0"}
    load_before = os.getloadavg()
    verbose = ("--log-level", "info") if args.server_log else ()
    with ServerProcess(*verbose, env=env, log_path=args.server_log) as server:
        tally = asyncio.run(soak(server, args))
    body = report(tally, args, load_before, os.getloadavg())
    print(body)
    if args.write:
        from benchmarks.report import write_section

        print("wrote", write_section("soak", body))
    return 1 if sum(tally.errors.values()) else 0


def _ms(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1000:.0f}" if values else "-"


def report(t: Tally, args: argparse.Namespace, load_before: tuple, load_after: tuple) -> str:
    from benchmarks.report import markdown_table

    kinds = [("speak", "/api/v1/speak"), ("ws", "/ws voice"), ("twilio", "Twilio voice")]
    rows = [
        [
            name,
            t.sessions[k],
            t.turns[k],
            t.errors[k],
            _ms(t.first_audio[k], 50),
            _ms(t.first_audio[k], 95),
        ]
        for k, name in kinds
        if t.sessions[k] or t.errors[k]
    ]
    samples = t.samples
    step = max(1, len(samples) // 12)
    curve = [s for i, s in enumerate(samples) if i % step == 0 or i == len(samples) - 1]
    rss = [s[1] for s in samples]
    settled = [s[1] for s in samples if s[0] >= min(5.0, args.minutes / 3)]
    lines = [
        "## Soak (`duplex bench soak`)",
        "",
        f"{args.minutes:g} minute{'s' if args.minutes != 1 else ''}; `duplex serve` in its own process (espeak, "
        f"pocketsphinx, SmolLM2 with "
        f"{args.max_tokens}-token replies); concurrently {args.speak_clients} speak clients (five speaks per session, "
        f"one cancelled), {args.voice_clients} `/ws` and {args.twilio_clients} Twilio clients speaking flite questions "
        f"in real time, each reconnecting after every session. {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (load average {load_before[0]:.1f} before, {load_after[0]:.1f} after): latencies "
        "include whatever else the machine ran, not the server's alone.",
        "",
        markdown_table(["clients", "sessions", "turns", "errors", "first audio p50 (ms)", "p95 (ms)"], rows),
        "",
        "Voice first audio = end of the user's speech -> first bot audio at the client (VAD stop, turn timeout, "
        "STT, LLM, TTS, all sharing the CPU with the speak clients); speak = speak sent -> first frame.",
        "",
        markdown_table(
            ["minute", "RSS (MB)", "threads", "fds", "open sessions"],
            [[f"{m:.1f}", f"{r:.0f}", th, fd, s] for m, r, th, fd, s in curve],
        ),
        "",
        f"RSS min/max {min(rss):.0f}/{max(rss):.0f} MB; after the first {min(5.0, args.minutes / 3):.1f} minutes "
        f"{min(settled or rss):.0f}-{max(settled or rss):.0f} MB.",
    ]
    if t.error_examples:
        lines += ["", "Errors: " + "; ".join(t.error_examples)]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    configure(parser)
    raise SystemExit(run(parser.parse_args()))
