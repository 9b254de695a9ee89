"""Checking a scenario's ``expect`` list against a ``ReplayResult``: one readable line per failed check."""

from __future__ import annotations

import re
from typing import Any

from .result import ReplayResult, TurnResult
from .scenario import ContextCheck, Expectation


def evaluate(result: ReplayResult) -> list[str]:
    failures: list[str] = []
    for e in result.scenario.expect:
        failures += check(result, e)
    return failures


def check(result: ReplayResult, e: Expectation, turn: str | int | None = None) -> list[str]:
    """The failures of one expectation (nested ones without a ``turn`` take ``turn``)."""
    turn = e.turn if e.turn is not None else turn
    out = _whole_replay(result, e) if turn is None else _per_turn(result, e, result.turn(turn))
    for child in e.all_of or []:
        out += check(result, child, turn)
    if e.any_of:
        alternatives = [check(result, child, turn) for child in e.any_of]
        if all(alternatives):
            listed = " | ".join(f"({i + 1}) " + "; ".join(a) for i, a in enumerate(alternatives))
            out.append(f"none of {len(alternatives)} alternatives held: {listed}")
    return out


def _as_list(v: Any) -> list:
    return [] if v is None else v if isinstance(v, list) else [v]


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def _count_ok(got: int, want: int | dict) -> bool:
    if isinstance(want, int):
        return got == want
    return want.get("min", 0) <= got <= want.get("max", got)


def _count_text(want: int | dict) -> str:
    if isinstance(want, int):
        return str(want)
    if "min" in want and "max" in want:
        return f"{want['min']}-{want['max']}"
    return f">= {want['min']}" if "min" in want else f"<= {want['max']}"


def _whole_replay(result: ReplayResult, e: Expectation) -> list[str]:
    out: list[str] = []
    for kind in e.absent or []:
        times = result.events_of(kind)
        if times:
            out.append(f"no {kind} expected, got {len(times)} (at {', '.join(f'{t:.2f}' for t in times)} s)")
    for kind, n in (e.count or {}).items():
        got = len(result.events_of(kind))
        if not _count_ok(got, n):
            out.append(f"expected {_count_text(n)} {kind} event(s), got {got}")
    if e.context is not None:
        out += _context(e.context, result.context, "context", reply=None)
    return out


def _per_turn(result: ReplayResult, e: Expectation, tr: TurnResult) -> list[str]:
    out: list[str] = []
    who = f"turn {tr.name!r}"
    if not tr.fed:
        return [f"{who}: never fed: the replay stopped before it (max_duration_s, or its anchor event never came)"]
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
    for name in ("pipeline_turns", "interruptions"):
        want = getattr(e, name)
        if want is not None and not _count_ok(getattr(tr, name), want):
            out.append(f"{who}: expected {name}={_count_text(want)}, got {getattr(tr, name)}")
    lat = tr.latencies()
    for name, budget in (e.within_ms or {}).items():
        v = lat[name]
        if v is None:
            out.append(f"{who}: {name} within {budget:g} ms expected, but it was not measured (no such event)")
        elif v * 1000 > budget:
            out.append(f"{who}: {name} was {v * 1000:.0f} ms, budget {budget:g} ms")
    lo, hi = tr.span
    for kind in e.absent or []:
        times = [t for t in result.events_of(kind) if lo <= t < hi]
        if times:
            out.append(f"{who}: no {kind} expected in this turn, got {len(times)} (at {times[0]:.2f} s)")
    for kind, n in (e.count or {}).items():
        got = len([t for t in result.events_of(kind) if lo <= t < hi])
        if not _count_ok(got, n):
            out.append(f"{who}: expected {_count_text(n)} {kind} event(s) in this turn, got {got}")
    if e.context is not None:
        out += _context(e.context, tr.messages, f"{who}: context", reply=tr.reply)
    return out


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _show(messages: list[dict]) -> str:
    return "[" + ", ".join(f"{m.get('role')}: {message_text(m)!r}" for m in messages) + "]" if messages else "[]"


def _in_role(role: str | None) -> str:
    return "" if role is None else f" in {'an' if role == 'assistant' else 'a'} {role} message"


def _phrases(v: Any) -> list[tuple[str | None, str]]:
    return [(None, p) if isinstance(p, str) else next(iter(p.items())) for p in _as_list(v)]


def _context(c: ContextCheck, messages: list[dict], who: str, reply: str | None) -> list[str]:
    out: list[str] = []
    texts = [(m.get("role"), _norm(message_text(m))) for m in messages]
    for role, phrase in _phrases(c.contains):
        if not any(_norm(phrase) in text for r, text in texts if role is None or r == role):
            out.append(f"{who} should contain {phrase!r}{_in_role(role)}, was {_show(messages)}")
    for role, phrase in _phrases(c.not_contains):
        if any(_norm(phrase) in text for r, text in texts if role is None or r == role):
            out.append(f"{who} should not contain {phrase!r}{_in_role(role)}, was {_show(messages)}")
    if c.roles is not None and [r for r, _ in texts] != list(c.roles):
        out.append(f"{who} roles should be {list(c.roles)}, were {[r for r, _ in texts]}")
    if c.equals is not None:
        want = [next(iter(m.items())) for m in c.equals]
        if [(r, _norm(t)) for r, t in want] != texts:
            shown = "[" + ", ".join(f"{r}: {t!r}" for r, t in want) + "]"
            out.append(f"{who} should be {shown}, was {_show(messages)}")
    if c.assistant_equals_reply is not None and reply is not None:
        said = _norm(" ".join(message_text(m) for m in messages if m.get("role") == "assistant"))
        if (said == _norm(reply)) != c.assistant_equals_reply:
            relation = "hold exactly" if c.assistant_equals_reply else "differ from"
            out.append(
                f"{who}: the assistant messages should {relation} the words the user heard: "
                f"context {said!r}, heard {_norm(reply)!r}"
            )
    return out
