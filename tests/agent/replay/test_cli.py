"""``duplex replay`` exit status: 0 every expectation held, 1 one failed, 2 the scenario or its input is unusable (a
one-line message, no traceback); several scenarios give the worst."""

from __future__ import annotations

from pathlib import Path

import yaml

from agent.cli import main

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "replay"


def run(monkeypatch, *args: str) -> int:
    monkeypatch.setattr("sys.argv", ["duplex"])
    return main(["replay", "--verbose", *map(str, args)])  # --verbose: leave the test process's logging alone


def test_exit_status(tmp_path, monkeypatch, capsys):
    ok = EXAMPLES / "simple_qa.yaml"
    data = yaml.safe_load(ok.read_text())
    data["expect"] = [{"turn": "question", "interrupted": True}]
    failing = tmp_path / "failing.yaml"
    failing.write_text(yaml.safe_dump(data))
    (tmp_path / "notes.txt").write_text("these are notes, not audio\n")
    not_audio = tmp_path / "not_audio.yaml"
    not_audio.write_text("turns:\n  - audio: notes.txt\n")

    assert run(monkeypatch, ok, failing, "--out", tmp_path / "out") == 1
    out = capsys.readouterr().out
    assert "ok (4 expectation(s))" in out and "FAILED (1):" in out
    assert "  - turn 'question': expected interrupted=true, got false" in out
    assert (tmp_path / "out" / "simple_qa" / "timeline.png").is_file()
    assert (tmp_path / "out" / "failing" / "timeline.json").is_file()

    assert run(monkeypatch, not_audio) == 2
    captured = capsys.readouterr()
    assert (
        captured.err
        == f"error: {not_audio}: turns.0.audio: 'notes.txt' is not usable audio: could not decode the audio\n"
    )
    assert "Traceback" not in captured.out + captured.err

    assert run(monkeypatch, tmp_path / "missing.yaml", not_audio) == 2
    assert "cannot read" in capsys.readouterr().err


def test_exit_status_ok(monkeypatch, capsys):
    assert run(monkeypatch, EXAMPLES / "telephony_8k.yaml") == 0
    assert "ok (" in capsys.readouterr().out
