"""A replay's reports: ``timeline.json`` (every event with its audio time), ``conversation.wav`` (stereo: user left,
bot right, as the user heard it: the bot's audio stops where it was interrupted) and ``timeline.png``."""

from __future__ import annotations

import json
import math
import wave
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .runner import ReplayResult


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isinf(v)) else round(v, nd)


def timeline_dict(result: ReplayResult) -> dict:
    s = result.scenario
    turns = []
    for t in result.turns:
        m = t.metrics
        turns.append(
            {
                "name": t.name,
                "fed_at": _r(t.fed_at),
                "speech_start": _r(t.speech_start),
                "speech_end": _r(t.speech_end),
                "transcript": t.transcript,
                "reply": t.reply,
                "interrupted": t.interrupted,
                "resumed": t.resumed,
                "answered": t.answered,
                "latencies_s": {k: _r(v) for k, v in t.latencies().items()},
                "breakdown_s": {k: _r(v) for k, v in m.breakdown().items()} if m else None,
            }
        )
    return {
        "scenario": s.name,
        "description": s.description,
        "engines": s.engines,
        "clock": "real time" if result.realtime else "virtual",
        "duration_s": _r(result.duration_s),
        "wall_s": _r(result.wall_s, 3),
        "sample_rate": result.sample_rate,
        "events": [{"t": _r(e["t"]), "kind": e["kind"], "label": e["label"]} for e in result.events],
        "turns": turns,
        "context": result.context,
        "failures": result.failures,
    }


def conversation_audio(result: ReplayResult) -> np.ndarray:
    """(n, 2) float32: user left, bot right, on the replay's time axis."""
    rate = result.sample_rate
    n = int(math.ceil(result.duration_s * rate)) + rate // 10
    out = np.zeros((n, 2), dtype=np.float32)
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


def _spans(starts: list[float], stops: list[float], end: float) -> list[tuple[float, float]]:
    spans, stops = [], sorted(stops)
    for s in sorted(starts):
        e = next((x for x in stops if x >= s), end)
        spans.append((s, e))
    return spans


def plot_timeline(result: ReplayResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max(result.duration_s, 0.5)
    fig, ax = plt.subplots(figsize=(max(10, min(24, end * 1.1)), 4.2))
    rows = {"user speech": 4, "user turn / VAD": 3, "bot speech": 2, "latency": 1}
    # user speech: the voiced spans, with what the STT heard
    for t in result.turns:
        ax.broken_barh(
            [(t.speech_start, t.speech_end - t.speech_start)], (rows["user speech"] - 0.35, 0.7), color="#4c78a8"
        )
        ax.text(
            t.speech_start,
            rows["user speech"] + 0.42,
            f"{t.name}: {t.transcript or '(no words)'}"[:60],
            fontsize=7,
            va="bottom",
        )
    # VAD: start -> stop; user turn: start -> end (thin)
    ev = result.events

    def times(kind: str) -> list[float]:
        return [x["t"] for x in ev if x["kind"] == kind]

    for s, e in _spans(times("vad_start"), times("vad_stop"), end):
        ax.broken_barh([(s, e - s)], (rows["user turn / VAD"] - 0.35, 0.35), color="#72b7b2")
    for s, e in _spans(times("user_turn_start"), times("user_turn_end"), end):
        ax.broken_barh([(s, e - s)], (rows["user turn / VAD"] + 0.05, 0.25), color="#54a24b")
    # bot speech: the audio actually played (chunks merged), with the words of each reply
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
    for s, e in merged:
        ax.broken_barh([(s, e - s)], (rows["bot speech"] - 0.35, 0.7), color="#f58518")
    for t in result.turns:
        if t.reply and t.metrics is not None and t.metrics.bot_started_at is not None:
            x = next((e["t"] for e in ev if e["kind"] == "bot_started_speaking" and e["t"] >= t.speech_start), None)
            if x is not None:
                ax.text(x, rows["bot speech"] + 0.4, t.reply[:70], fontsize=7, va="bottom", color="#a0522d")
    # interruptions reaching the client
    for x in result.events_of("interruption"):
        ax.axvline(x, color="#e45756", lw=1.2, ls="--")
        ax.text(x, 4.85, "interruption", color="#e45756", fontsize=7, rotation=0, ha="left")
    for x in result.events_of("resumed"):
        ax.text(x + 0.05, rows["bot speech"], "resumed", color="white", fontsize=7, va="center")
    # latencies: voice-to-voice (speech end -> bot audio), barge-in stop (speech onset -> bot silent)
    for t in result.turns:
        lat = t.latencies()
        m = t.metrics
        if lat["voice_to_voice"] is not None and not t.resumed:
            a = t.speech_end
            ax.annotate(
                "",
                xy=(a + lat["voice_to_voice"], rows["latency"] + 0.15),
                xytext=(a, rows["latency"] + 0.15),
                arrowprops={"arrowstyle": "<->", "color": "#333"},
            )
            ax.text(a, rows["latency"] + 0.25, f"voice-to-voice {lat['voice_to_voice'] * 1000:.0f} ms", fontsize=7)
        if lat["barge_in_stop"] is not None and m is not None and m.barge_in is not None:
            a = t.speech_start
            ax.annotate(
                "",
                xy=(a + lat["barge_in_stop"], rows["latency"] - 0.2),
                xytext=(a, rows["latency"] - 0.2),
                arrowprops={"arrowstyle": "<->", "color": "#e45756"},
            )
            ax.text(
                a,
                rows["latency"] - 0.45,
                f"barge-in stop {lat['barge_in_stop'] * 1000:.0f} ms",
                fontsize=7,
                color="#e45756",
            )
    ax.set_yticks(list(rows.values()), list(rows.keys()))
    ax.set_ylim(0.3, 5.1)
    ax.set_xlim(0, end + 0.2)
    ax.set_xlabel("seconds (" + ("real time" if result.realtime else "virtual clock") + ")")
    title = result.scenario.name or "replay"
    if result.failures:
        title += f" — {len(result.failures)} expectation(s) FAILED"
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
