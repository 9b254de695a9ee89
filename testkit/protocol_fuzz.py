"""A seeded, bounded protocol fuzzer for the server's sockets and HTTP routes.

A ``Target`` names an entry point and what it speaks: valid messages to start from (``seeds``), the messages that
open a session (``opening``: a carrier's start event), and a check of every message the server sends back
(``check_reply``: None when it is one the protocol defines). ``Mutator`` makes cases from the seeds: random JSON,
seeds with fields dropped, retyped or added, deep nesting, huge or invalid strings (lone surrogates), truncated JSON,
flipped bytes, binary junk. ``fuzz_ws`` sends cases in batches over fresh connections; ``fuzz_http`` posts them.
Both return a ``FuzzReport``: every server reply that is not defined, every close code not in the target's list,
every unexpected HTTP status. What the fuzzer cannot see from outside (slots, threads, the server's logs) the test
checks on the server itself.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Message = str | bytes

JUNK_STRINGS = [
    "",
    " ",
    "\x00",
    "\ud800",  # a lone surrogate: valid in a Python str and in JSON (escaped), not in UTF-8
    "\udfff tail",
    "😀" * 50,
    "\u202e\u0301\u200b",
    "a" * 5000,
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "%s%n%x",
    "1e999",
    "NaN",
    "null",
    "$1,000,000 " * 20,
]
JUNK_NUMBERS = [0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 0.5, -0.0, 1e308, 8000, 16000, 48000]


@dataclass(frozen=True)
class Target:
    """One entry point to fuzz (see module docstring). ``kind`` ``ws``: messages over a WebSocket; ``http``: each case
    is ``(method, content_type, body)`` sent to ``path``."""

    name: str
    path: str
    kind: str  # "ws" | "http"
    seeds: Callable[[], list[Any]]
    check_reply: Callable[[Any], str | None] = lambda reply: None
    opening: Callable[[random.Random], list[Message]] = lambda rng: []
    close_codes: frozenset[int] = frozenset({1000, 1007, 1008, 1009, 1013})
    http_statuses: frozenset[int] = frozenset({200, 400, 401, 404, 405, 411, 413, 415, 422, 429, 503})


@dataclass
class FuzzReport:
    cases: int = 0
    connections: int = 0
    replies: int = 0
    problems: list[str] = field(default_factory=list)
    close_codes: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)

    def problem(self, what: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(what)


class Mutator:
    """Cases made from seed messages by a seeded ``random.Random``."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randrange(8 if depth < 3 else 5)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice([True, False])
        if kind == 2:
            return r.choice(JUNK_NUMBERS) if r.random() < 0.5 else r.randint(-1000, 100000)
        if kind == 3:
            return r.choice(JUNK_STRINGS)
        if kind == 4:
            return "".join(r.choice(string.printable) for _ in range(r.randrange(1, 40)))
        if kind == 5:
            return [self.value(depth + 1) for _ in range(r.randrange(4))]
        return {self.key(): self.value(depth + 1) for _ in range(r.randrange(4))}

    def key(self) -> str:
        return self.rng.choice(["type", "event", "text", "sdp", "media", "payload", "start", "x", "", "ü", "\ud800"])

    def mutate(self, message: Any) -> Any:
        """A structural change to a JSON-like seed."""
        r = self.rng
        if not isinstance(message, dict) or not message or r.random() < 0.1:
            return self.value()
        out = json.loads(json.dumps(message))
        for _ in range(r.randrange(1, 4)):
            key = r.choice(list(out)) if out else self.key()
            op = r.randrange(6)
            if op == 0:
                out.pop(key, None)
            elif op == 1:
                out[key] = self.value()
            elif op == 2:
                out[self.key()] = self.value()
            elif op == 3 and isinstance(out.get(key), dict):
                out[key] = self.mutate(out[key])
            elif op == 4:
                out[key] = r.choice(JUNK_STRINGS)
            else:
                out[key] = [out.get(key)] * r.randrange(0, 3)
        return out

    def encode(self, message: Any) -> Message:
        """A seed or mutant as it goes on the wire, sometimes broken on the way. Text that UTF-8 cannot carry (a
        raw lone surrogate) goes as bytes."""
        out = self._encode(message)
        if isinstance(out, str):
            try:
                out.encode("utf-8")
            except UnicodeEncodeError:
                return out.encode("utf-8", "surrogatepass")
        return out

    def _encode(self, message: Any) -> Message:
        r = self.rng
        if isinstance(message, bytes):
            return self.mutate_bytes(message) if r.random() < 0.5 else message
        text = json.dumps(message) if not isinstance(message, str) else message
        op = r.randrange(12)
        if op == 0 and text:
            return text[: r.randrange(len(text))]  # truncated
        if op == 1:
            depth = r.choice([10, 100, 999, 1000, 5000])
            return "[" * depth + "]" * depth if r.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth
        if op == 2:
            return self.mutate_bytes(text.encode("utf-8", "surrogatepass"))
        if op == 3:
            return text.replace('"', "'")
        if op == 4:
            return text + "," + text
        return text

    def mutate_bytes(self, data: bytes) -> bytes:
        r = self.rng
        op = r.randrange(4)
        if op == 0 or not data:
            return bytes(r.randrange(256) for _ in range(r.choice([1, 2, 3, 320, 641, 4096])))
        buf = bytearray(data)
        if op == 1:
            for _ in range(r.randrange(1, 8)):
                buf[r.randrange(len(buf))] = r.randrange(256)
            return bytes(buf)
        if op == 2:
            return bytes(buf[: r.randrange(len(buf))])
        return bytes(buf) * r.choice([2, 50])

    def case(self, seeds: list[Any]) -> Message:
        seed = self.rng.choice(seeds)
        return self.encode(
            seed if self.rng.random() < 0.3 else self.mutate(seed) if not isinstance(seed, bytes) else seed
        )


def json_reply(reply: Any, key: str, allowed: set[str]) -> tuple[dict | None, str | None]:
    """A server text message as a dict whose ``key`` is in ``allowed``; (None, why) otherwise."""
    if isinstance(reply, bytes):
        return None, None
    try:
        data = json.loads(reply)
    except ValueError:
        return None, f"reply is not JSON: {reply[:80]!r}"
    if not isinstance(data, dict) or data.get(key) not in allowed:
        return None, f"reply {key} not defined: {str(data)[:120]}"
    return data, None


async def fuzz_ws(
    url: str,
    target: Target,
    rng: random.Random,
    cases: int,
    *,
    batch: int = 20,
    send_pause_s: float = 0.0,
    settle_s: float = 0.2,
    connect: Callable[[random.Random, str], str] | None = None,
) -> FuzzReport:
    """``cases`` mutated messages to ``url``, ``batch`` per connection (after the target's opening messages).
    ``connect(rng, url)`` may change the URL per connection (e.g. drop the token now and then)."""
    import websockets

    mutator, report = Mutator(rng), FuzzReport()
    seeds = target.seeds()
    while report.cases < cases:
        report.connections += 1
        n = min(batch, cases - report.cases)
        report.cases += n
        try:
            async with websockets.connect(connect(rng, url) if connect else url, max_size=None, open_timeout=10) as ws:

                async def read() -> None:
                    async for reply in ws:
                        report.replies += 1
                        why = target.check_reply(reply)
                        if why:
                            report.problem(f"{target.name}: {why}")

                reader = asyncio.create_task(read())
                try:
                    opening = target.opening(rng)
                    if opening and rng.random() < 0.15:  # now and then the opening itself is fuzzed
                        opening = [mutator.encode(mutator.mutate(json.loads(opening[-1])))]
                    for message in [*opening, *(mutator.case(seeds) for _ in range(n))]:
                        if reader.done():
                            break
                        await ws.send(message)
                        if send_pause_s:
                            await asyncio.sleep(send_pause_s)
                    await asyncio.sleep(settle_s)
                finally:
                    await ws.close()
                    try:
                        await asyncio.wait_for(reader, 10)
                    except Exception:
                        reader.cancel()
                code = ws.close_code
        except websockets.ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
        except websockets.InvalidStatus as e:
            report.problem(f"{target.name}: handshake refused with HTTP {e.response.status_code}")
            continue
        report.close_codes[code] += 1
        if code is not None and code not in target.close_codes:
            report.problem(f"{target.name}: closed with {code}")
    return report


async def fuzz_http(
    base: str, target: Target, rng: random.Random, cases: int, *, headers: dict[str, str] | None = None
) -> FuzzReport:
    """``cases`` requests to ``target.path``: each seed is ``(method, content_type, body)``; the body is mutated."""
    import httpx

    mutator, report = Mutator(rng), FuzzReport()
    seeds = target.seeds()
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as client:
        for _ in range(cases):
            method, content_type, body = rng.choice(seeds)
            if rng.random() < 0.1:
                content_type = rng.choice(["text/plain", "application/x-www-form-urlencoded", "", "application/json"])
            payload = mutator.encode(mutator.mutate(body) if rng.random() < 0.8 else body)
            content = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
            r = await client.request(method, target.path, content=content, headers={"content-type": content_type})
            report.cases += 1
            report.statuses[r.status_code] += 1
            if r.status_code not in target.http_statuses:
                report.problem(f"{target.name}: HTTP {r.status_code} for {content[:80]!r}: {r.text[:200]}")
            elif r.status_code != 200:
                why = target.check_reply(r.text)
                if why:
                    report.problem(f"{target.name}: {why}")
    return report
