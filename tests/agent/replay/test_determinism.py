"""A replay on the virtual clock is deterministic: the same scenario run twice gives the same timeline to the
millisecond — every event, every bot audio chunk, the transcripts and the LLM context.

Each run is a fresh process, as ``duplex replay`` is. Within one process a second run can differ by one 40 ms output
chunk at the end of a reply: libespeak-ng keeps its pitch-flutter phase in a function-static variable that no API
resets, so the same sentence comes out a few samples longer or shorter depending on everything espeak synthesised
before in that process (a flutter-free espeak voice is bit-identical from call to call). A fresh process starts from
the same phase, which is what makes two replays comparable sample for sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "replay"
RUN = """
import json, sys
from loguru import logger
logger.remove()
from agent.replay import replay
r = replay(sys.argv[1], check=False)
print(json.dumps({
    "events": [[e["kind"], round(e["t"] * 1000)] for e in r.events],
    "audio": [[round(start * 1000), len(audio)] for start, audio in r.bot_audio],
    "transcripts": r.transcripts,
    "context": r.context,
    "latencies": [{k: None if v is None else round(v * 1000) for k, v in t.latencies().items()} for t in r.turns],
    "failures": r.failures,
}))
"""


def replay_in_fresh_process(path: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["barge_in", "telephony_8k"])
def test_same_scenario_twice_same_timeline(name):
    """barge_in: VAD, pocketsphinx, an interruption and espeak on both sides; telephony_8k: the 8 kHz path, whose
    40 ms output chunks are 320 samples, where a reply's length jitter would show first."""
    a = replay_in_fresh_process(EXAMPLES / f"{name}.yaml")
    b = replay_in_fresh_process(EXAMPLES / f"{name}.yaml")
    assert a["events"] and a["audio"] and not a["failures"], a["failures"]
    diff = [(x, y) for x, y in zip(a["events"], b["events"]) if x != y]
    assert a["events"] == b["events"], f"timelines differ (first differences, ms): {diff[:5]}"
    assert a["audio"] == b["audio"], "the bot's audio chunks differ (start ms, samples)"
    assert (a["transcripts"], a["context"], a["latencies"]) == (b["transcripts"], b["context"], b["latencies"])
