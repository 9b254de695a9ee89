"""A replay's reports: ``timeline.json`` (every event with its audio time), ``conversation.wav`` (stereo: user left,
bot right, as the user heard it: the bot's audio stops where it was interrupted) and ``timeline.png``."""

from __future__ import annotations

import json
import math
import wave
from pathlib import Path
from typing import Any

import numpy as np

from .result import ReplayResult

ROW_S = 10.0  # timeline.png: seconds per row once a replay is longer than SINGLE_ROW_MAX_S
SINGLE_ROW_MAX_S = 12.0
FIG_WIDTH_IN = 15.0
ROW_HEIGHT_IN = 2.5
FONT = 7.5
CHAR_W_IN = 0.0075 * FONT  # rough width of one character at FONT points (for fitting labels)

COLORS = {
    "user": "#4c78a8",
    "vad": "#72b7b2",
    "vad_no_turn": "#bbbbbb",
    "turn": "#54a24b",
    "bot": "#f58518",
    "interruption": "#e45756",
    "noise": "#e8e8e8",
    "latency": "#333333",
}


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isinf(v)) else round(v, nd)


def _breakdown(result: ReplayResult, m) -> dict[str, Any]:
    return {
        "index": m.index,
        "vad_start": _r(result.rel(m.vad_start)),
        "vad_stop": _r(result.rel(m.vad_stop)),
        "user_turn_start": _r(result.rel(m.user_turn_start)),
        "user_turn_end": _r(result.rel(m.user_turn_end)),
        "speech_start": _r(result.rel(m.speech_start)),
        "speech_end": _r(result.rel(m.speech_end)),
        "transcript": m.transcript,
        "interrupted": m.barge_in is not None,
        "resumed": m.resumed,
        "answered": m.bot_started_at is not None,
        "barge_in_stop_s": _r(m.barge_in.stop_latency_from_onset) if m.barge_in else None,
        "breakdown_s": {k: _r(v) for k, v in m.breakdown().items()},
    }


def timeline_dict(result: ReplayResult) -> dict:
    s = result.scenario
    turns = []
    for t in result.turns:
        turns.append(
            {
                "name": t.name,
                "fed_at": _r(t.fed_at),
                "speech_start": _r(t.speech_start),
                "speech_end": _r(t.speech_end),
                "speech_segments": [[_r(a), _r(b)] for a, b in t.segments],
                "transcript": t.transcript,
                "reply": t.reply,
                "interrupted": t.interrupted,
                "resumed": t.resumed,
                "answered": t.answered,
                "merged_into": t.merged_into,
                "pipeline_turns": t.pipeline_turns,
                "interruptions": t.interruptions,
                "latencies_s": {k: _r(v) for k, v in t.latencies().items()},
                "context": t.messages,
                "pipeline": [_breakdown(result, m) for m in t.pipeline],
            }
        )
    settings = None
    if result.settings is not None:
        settings = result.settings.model_dump(mode="json")
        if settings.get("llm", {}).get("api_key"):
            settings["llm"]["api_key"] = "***"
    return {
        "scenario": s.name,
        "description": s.description,
        "engines": s.engines,
        "clock": "real time" if result.realtime else "virtual",
        "duration_s": _r(result.duration_s),
        "wall_s": _r(result.wall_s, 3),
        "sample_rate": result.sample_rate,
        "settings_source": result.settings_source,
        "settings": settings,
        "events": [{"t": _r(e["t"]), "kind": e["kind"], "label": e["label"]} for e in result.events],
        "turns": turns,
        "other_turns": [_breakdown(result, m) for m in result.other_turns],
        "llm_requests": [{k: _r(v) if k == "t" else v for k, v in r.items()} for r in result.llm_requests],
        "context": result.context,
        "failures": result.failures,
    }


def conversation_audio(result: ReplayResult) -> np.ndarray:
    """(n, 2) float32: user left (with any noise bed, as the pipeline heard it), bot right, on one time axis."""
    rate = result.sample_rate
    n = int(math.ceil(result.duration_s * rate)) + rate // 10
    out = np.zeros((n, 2), dtype=np.float32)
    if result.background is not None:
        bed = result.background[:n]
        out[: len(bed), 0] += bed
    for channel, parts in ((0, result.user_audio), (1, result.bot_audio)):
        for start, audio in parts:
            i = max(0, int(round(start * rate)))
            seg = audio[: max(0, n - i)]
            out[i : i + len(seg), channel] += seg
    return np.clip(out, -1.0, 1.0)


def write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(audio.shape[1] if audio.ndim == 2 else 1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


# -- timeline.png ------------------------------------------------------------------------------------------------

LANES = {"user speech": 4.0, "VAD / user turn": 3.0, "bot speech": 2.0, "latency": 1.0}


def _bot_spans(result: ReplayResult) -> list[tuple[float, float]]:
    """The bot's audible audio as played, chunks merged across gaps under 0.25 s."""
    merged: list[list[float]] = []
    rate = result.sample_rate
    for start, audio in result.bot_audio:
        stop = start + len(audio) / rate
        if np.abs(audio).max(initial=0.0) < 0.01:
            continue
        if merged and start - merged[-1][1] < 0.25:
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    return [(a, b) for a, b in merged]


def _vad_spans(result: ReplayResult, end: float) -> list[tuple[float, float, bool]]:
    """(start, stop, opened or inside a turn) per VAD start."""
    spans = []
    events = [e for e in result.events if e["kind"] in ("vad_start", "vad_stop")]
    for k, e in enumerate(events):
        if e["kind"] == "vad_start":
            stop = next((x["t"] for x in events[k + 1 :] if x["kind"] == "vad_stop"), end)
            spans.append((e["t"], stop, e["label"] != "no turn"))
    return spans


def _fit(text: str, seconds: float, in_per_s: float) -> str:
    """``text`` cut to what fits in ``seconds`` of the axis."""
    chars = int(seconds * in_per_s / CHAR_W_IN)
    if chars >= len(text):
        return text
    return text[: max(0, chars - 1)] + "…" if chars > 3 else ""


def _rows(duration: float) -> list[tuple[float, float]]:
    if duration <= SINGLE_ROW_MAX_S:
        return [(0.0, max(duration, 0.5) + 0.2)]
    n = int(math.ceil(duration / ROW_S))
    return [(i * ROW_S, (i + 1) * ROW_S) for i in range(n)]


def _legend_handles(noise: bool):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(color=COLORS["user"], label="user speech (voiced; text: what the STT heard)"),
        Patch(color=COLORS["vad"], label="VAD speech"),
        Patch(facecolor=COLORS["vad_no_turn"], hatch="///", edgecolor="#888", label="VAD speech, no turn"),
        Patch(color=COLORS["turn"], label="pipeline user turn #N"),
        Patch(color=COLORS["bot"], label="bot audio played (text: its words)"),
        Line2D([], [], color=COLORS["interruption"], ls="--", label="interruption to the client"),
        Line2D([], [], color=COLORS["latency"], marker="<", markersize=4, label="voice-to-voice"),
        Line2D([], [], color=COLORS["interruption"], marker="<", markersize=4, label="barge-in stop"),
    ]
    if noise:
        handles.insert(5, Patch(color=COLORS["noise"], label="noise bed (under the user's audio)"))
    return handles


def timeline_figure(result: ReplayResult):
    """The timeline as a matplotlib ``Figure``: one row per ``ROW_S`` seconds (one row up to
    ``SINGLE_ROW_MAX_S``), a legend on top, utterances with their transcripts, VAD and pipeline turns, the bot's
    audio with its words at the times they played, interruptions and latency arrows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max(result.duration_s, 0.5)
    rows = _rows(end)
    top_in = 0.8  # title and legend
    height = ROW_HEIGHT_IN * len(rows) + top_in + 0.45
    fig, axes = plt.subplots(len(rows), 1, figsize=(FIG_WIDTH_IN, height), squeeze=False)
    axes = [a[0] for a in axes]
    title = result.scenario.name or "replay"
    clock = "real time" if result.realtime else "virtual clock"
    failed = f" — {len(result.failures)} expectation(s) FAILED" if result.failures else ""
    fig.suptitle(f"{title} ({clock}, {result.duration_s:.1f} s){failed}", fontsize=10, color="#b00" if failed else "k")
    fig.legend(
        handles=_legend_handles(bool(result.scenario.noise)),
        loc="upper center",
        ncol=5,
        fontsize=FONT,
        frameon=False,
        bbox_to_anchor=(0.5, 1 - 0.3 / height),
    )
    bot_spans = _bot_spans(result)
    vad_spans = _vad_spans(result, end)
    for ax, (r0, r1) in zip(axes, rows):
        _draw_row(ax, result, r0, r1, end, bot_spans, vad_spans)
    axes[-1].set_xlabel(f"seconds ({clock})", fontsize=FONT + 1)
    fig.subplots_adjust(
        left=0.075, right=0.99, top=1 - top_in / height, bottom=0.45 / height, hspace=0.35 * ROW_HEIGHT_IN / height
    )
    return fig


def _draw_row(ax, result: ReplayResult, r0: float, r1: float, end: float, bot_spans, vad_spans) -> None:
    in_per_s = FIG_WIDTH_IN * 0.915 / (r1 - r0)
    y = LANES

    def bar(a: float, b: float, lane: float, height: float, **kw):
        if b > r0 and a < r1:
            ax.broken_barh([(a, b - a)], (lane - height / 2, height), **kw)

    # noise beds under the user's lane
    for bed in result.scenario.noise:
        a = bed.at_ms / 1000
        b = end if bed.until_ms is None else bed.until_ms / 1000
        bar(a, b, y["user speech"], 0.9, color=COLORS["noise"], zorder=0)
    # user speech: voiced stretches, with what the STT heard
    starts = sorted(t.speech_start for t in result.turns)
    for t in result.turns:
        for a, b in t.segments or [(t.speech_start, t.speech_end)]:
            bar(a, b, y["user speech"], 0.55, color=COLORS["user"], zorder=2)
        if r0 <= t.speech_start < r1 or (t.speech_start < r0 < t.speech_end):  # (continued from the row above)
            x = max(t.speech_start, r0)
            nxt = next((s for s in starts if s > x), r1)
            label = f"{'… ' if x > t.speech_start else ''}{t.name}: {t.transcript or '(no words)'}"
            ax.text(
                x,
                y["user speech"] + 0.33,
                _fit(label, min(nxt, r1) - x, in_per_s),
                fontsize=FONT,
                va="bottom",
                color="#1f3b5c",
                clip_on=True,
            )
    # VAD events and pipeline user turns
    for a, b, turned in vad_spans:
        if turned:
            bar(a, b, y["VAD / user turn"] - 0.15, 0.3, color=COLORS["vad"])
        else:
            bar(a, b, y["VAD / user turn"] - 0.15, 0.3, facecolor=COLORS["vad_no_turn"], hatch="///", edgecolor="#888")
    pipeline = [m for t in result.turns for m in t.pipeline] + list(result.other_turns)
    for m in pipeline:
        a = result.rel(m.user_turn_start)
        b = result.rel(m.user_turn_end) if m.user_turn_end is not None else end
        bar(a, b, y["VAD / user turn"] + 0.2, 0.2, color=COLORS["turn"])
        if r0 <= a < r1:
            ax.text(a, y["VAD / user turn"] + 0.33, f"#{m.index}", fontsize=FONT, va="bottom", color="#2d5a27")
    # bot speech as played, and its words where they played (two alternating lines, never overlapping)
    for a, b in bot_spans:
        bar(a, b, y["bot speech"], 0.55, color=COLORS["bot"], zorder=2)
    line_end = [-math.inf, -math.inf]
    for t, word in result.played_words:
        word = word.strip()
        if not word or not (r0 <= t < r1):
            continue
        line = next((i for i in (0, 1) if line_end[i] <= t), None)
        if line is None:
            continue  # no room on either line: leave it out
        ax.text(t, y["bot speech"] + 0.32 + 0.2 * line, word, fontsize=FONT, va="bottom", color="#8a4b08")
        line_end[line] = t + (len(word) + 1) * CHAR_W_IN / in_per_s
    # interruptions reaching the client; resumed replies
    for x in result.events_of("interruption"):
        if r0 <= x < r1:
            ax.axvline(x, color=COLORS["interruption"], lw=1.2, ls="--", zorder=3)
    for x in result.events_of("resumed"):
        if r0 <= x < r1:
            ax.text(x + 0.03, y["bot speech"] - 0.45, "resumed", color="#8a4b08", fontsize=FONT, va="top")
    # latencies: voice-to-voice (speech end -> bot audio), barge-in stop (speech onset -> bot silent)
    for t in result.turns:
        lat = t.latencies()
        answered = [m for m in t.pipeline if m.bot_started_at is not None]
        if lat["voice_to_voice"] is not None and answered and not answered[-1].resumed:
            a = result.rel(answered[-1].speech_end)
            _arrow(
                ax,
                a,
                a + lat["voice_to_voice"],
                y["latency"] + 0.2,
                r0,
                r1,
                in_per_s,
                COLORS["latency"],
                f"voice-to-voice {lat['voice_to_voice'] * 1000:.0f} ms",
            )
        if lat["barge_in_stop"] is not None:
            m = next(m for m in t.pipeline if m.barge_in is not None)
            a = result.rel(m.barge_in.speech_onset)
            _arrow(
                ax,
                a,
                a + lat["barge_in_stop"],
                y["latency"] - 0.25,
                r0,
                r1,
                in_per_s,
                COLORS["interruption"],
                f"barge-in stop {lat['barge_in_stop'] * 1000:.0f} ms",
            )
    ax.set_yticks(list(y.values()), list(y.keys()), fontsize=FONT + 0.5)
    ax.set_ylim(0.45, 4.95)
    ax.set_xlim(r0, r1)
    ax.tick_params(axis="x", labelsize=FONT)
    ax.grid(axis="x", alpha=0.3)


def _arrow(ax, a: float, b: float, lane: float, r0: float, r1: float, in_per_s: float, color: str, label: str) -> None:
    """A latency arrow from ``a`` to ``b``, cut to the row (heads only at ends inside it), labelled where it starts
    (kept inside the row)."""
    if b <= r0 or a >= r1:
        return
    x0, x1 = max(a, r0), min(b, r1)
    style = {(True, True): "<->", (True, False): "<-", (False, True): "->", (False, False): "-"}[(a >= r0, b <= r1)]
    ax.annotate("", xy=(x1, lane), xytext=(x0, lane), arrowprops={"arrowstyle": style, "color": color})
    if a >= r0:
        width = len(label) * CHAR_W_IN / in_per_s
        x = min(a, r1 - width)
        ax.text(x, lane + 0.08, label, fontsize=FONT, color=color, va="bottom")


def plot_timeline(result: ReplayResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = timeline_figure(result)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_reports(result: ReplayResult, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "timeline.json": out / "timeline.json",
        "conversation.wav": out / "conversation.wav",
        "timeline.png": out / "timeline.png",
    }
    paths["timeline.json"].write_text(json.dumps(timeline_dict(result), indent=2, default=str))
    write_wav(paths["conversation.wav"], conversation_audio(result), result.sample_rate)
    plot_timeline(result, paths["timeline.png"])
    return paths
