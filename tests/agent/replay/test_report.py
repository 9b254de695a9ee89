"""The reports: ``timeline.json`` (one event per VAD start/stop, with what came of it; per-turn context, speech
segments and pipeline turns; LLM requests; the settings), ``conversation.wav`` (the noise bed under the user's side),
``timeline.png`` (rows for long replays, a legend, the bot's words); and determinism on the virtual clock."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from agent.replay import replay
from agent.replay.report import ROW_S, conversation_audio, timeline_dict, timeline_figure, write_reports
from pipelines.virtual_transport import voiced_span
from testkit.clips import speech

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "replay"


def vad_events(result) -> list[tuple[str, str]]:
    return [(e["kind"], e["label"]) for e in result.events if e["kind"] in ("vad_start", "vad_stop")]


def test_one_event_per_vad_start_and_stop(replayed):
    """Inside one turn the VAD stopped in the 0.3 s gap and started again; the echo guard held the backchannel's
    VAD start back. Both show, labelled with what came of them."""
    quick = replayed("two_quick_turns")
    assert vad_events(quick) == [
        ("vad_start", "turn 0"),
        ("vad_stop", ""),
        ("vad_start", "in turn 0"),
        ("vad_stop", ""),
    ]
    assert len(quick.events_of("user_turn_start")) == 1
    backchannel = replayed("backchannel")
    assert vad_events(backchannel) == [
        ("vad_start", "turn 0"),
        ("vad_stop", ""),
        ("vad_start", "no turn"),
        ("vad_stop", ""),
    ]
    held = backchannel.events_of("vad_start")[1]
    yeah = backchannel.turn("yeah")
    assert yeah.speech_start < held < yeah.speech_end + 0.2 and yeah.pipeline_turns == 0


def test_timeline_json(replayed, tmp_path):
    result = replayed("pause_inside_utterance")
    write_reports(result, tmp_path)
    data = json.loads((tmp_path / "timeline.json").read_text())
    assert data == json.loads(json.dumps(timeline_dict(result), default=str))
    turn = data["turns"][0]
    assert turn["pipeline_turns"] == 2 and turn["interruptions"] == 1 and len(turn["speech_segments"]) == 2
    assert [p["index"] for p in turn["pipeline"]] == [0, 1]
    assert all(p["breakdown_s"]["vad_stop_wait"] > 0 for p in turn["pipeline"])
    assert [m["role"] for m in turn["context"]] == ["user", "assistant", "user", "assistant"]
    assert [(r["turn"], r["reply_index"], r["outcome"]) for r in data["llm_requests"]] == [
        (0, 0, "heard"),
        (1, 1, "heard"),
    ]
    assert data["settings_source"] == "defaults + scenario" and data["settings"]["tts"]["engine"] == "espeak"
    assert data["other_turns"] == []


def test_noise_bed_in_the_conversation_audio(replayed):
    """The user's side holds the beds as the pipeline heard them, from the first sample to the last; the speech span
    is measured on the recording alone."""
    result = replayed("noisy_room")
    audio = conversation_audio(result)
    rate = result.sample_rate
    before = audio[: int(0.9 * rate), 0]  # before the question: only the beds
    level = 20 * np.log10(np.sqrt(np.mean(before.astype(np.float64) ** 2)))
    assert -40 < level < -34, level  # pink at -45 dBFS + music at -38 dBFS
    tail = audio[-int(0.5 * rate) :, 0]
    assert np.sqrt(np.mean(tail**2)) > 10 ** (-50 / 20)
    advice = result.turn("advice")
    start, end = voiced_span(speech("human:heath_ledger.mp3"), 16000)  # the recording's own span, fed at 1 s
    assert advice.speech_start == pytest.approx(1.0 + start) and advice.speech_end == pytest.approx(1.0 + end)


def test_timeline_png_rows_legend_and_words(replayed, tmp_path):
    """A long replay wraps into rows of ``ROW_S`` seconds at a fixed width; every row has the bot's words where they
    played; a legend names every mark."""
    result = replayed("long_pause")
    fig = timeline_figure(result)
    try:
        rows = fig.axes
        assert len(rows) == int(np.ceil(result.duration_s / ROW_S)) >= 2
        assert fig.get_size_inches()[0] == 15.0
        assert [ax.get_xlim() for ax in rows] == [(i * ROW_S, (i + 1) * ROW_S) for i in range(len(rows))]
        texts = [t.get_text() for ax in rows for t in ax.texts]
        assert {"sunny", "mushrooms"} <= set(texts)  # a word of each reply, one per row
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert any("interruption" in t for t in legend) and any("bot audio" in t for t in legend)
        assert not any("noise bed" in t for t in legend)  # only when there is one
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    short = timeline_figure(replayed("simple_qa"))  # a replay shorter than SINGLE_ROW_MAX_S
    assert len(short.axes) == 1


def test_reports_and_determinism(tmp_path):
    """``out`` gets the three reports; the same scenario twice in one process gives the same timeline on the virtual
    clock. The one slack: the end of the bot's espeak audio (see docs/replay.md: espeak-ng carries its pitch-flutter
    phase from one synthesis to the next, so the same text can come out a few samples longer or shorter)."""
    path = EXAMPLES / "barge_in.yaml"
    a = replay(path, out=tmp_path)
    b = replay(path)
    assert [(e["kind"], e["label"]) for e in a.events] == [(e["kind"], e["label"]) for e in b.events]
    for x, y in zip(a.events, b.events):
        slack = 0.045 if x["kind"] == "bot_stopped_speaking" else 0.0
        assert abs(x["t"] - y["t"]) <= slack, (x, y)
    assert a.context == b.context and [t.reply for t in a.turns] == [t.reply for t in b.turns]
    data = json.loads((tmp_path / "timeline.json").read_text())
    assert data["clock"] == "virtual" and data["turns"][1]["interrupted"] is True
    with wave.open(str(tmp_path / "conversation.wav")) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 16000
        assert abs(w.getnframes() / 16000 - a.duration_s) < 0.2
    assert (tmp_path / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    # what the user heard stops at the barge-in: no bot audio long after the interruption reached the client
    interruption = a.events_of("interruption")[0]
    second_reply = a.events_of("bot_started_speaking")[1]
    assert not [s for s, _ in a.bot_audio if interruption + 0.05 < s < second_reply]


@pytest.mark.slow
def test_fresh_processes_give_identical_reports(tmp_path):
    """``duplex replay`` in two fresh processes: the same timeline.json, to the last event, word and number (only the
    wall-clock time differs)."""
    reports = []
    for run in ("a", "b"):
        out = tmp_path / run
        cmd = [sys.executable, "-m", "agent.cli", "replay", str(EXAMPLES / "cough.yaml"), "--out", str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data = json.loads((out / "timeline.json").read_text())
        data.pop("wall_s")
        reports.append(data)
    assert reports[0] == reports[1]
