"""Regenerate the ``flite_*`` speech clips in testkit/audio (not a test; run by hand).

Needs Debian's ``flite`` and ``sox`` (``apt-get install -y flite sox``). Writes 16 kHz mono 16-bit WAVs and merges
their entries into ``manifest.json``, leaving entries that other generators own (other file prefixes) untouched.

    python scripts/make_flite_fixtures.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SPEECH_DIR = Path(__file__).resolve().parents[1] / "testkit" / "audio"
MANIFEST = SPEECH_DIR / "manifest.json"
PREFIX = "flite_"
RATE = 16_000

# (file stem, flite voice, text)
UTTERANCES = [
    ("flite_weather_kal16", "kal16", "What is the weather like in Paris today?"),
    ("flite_lights_slt", "slt", "Please turn off the lights in the kitchen."),
    ("flite_table_rms", "rms", "Can you book a table for two people tonight?"),
    ("flite_pizza_kal16", "kal16", "I would like to order a large pizza with mushrooms."),
    ("flite_story_slt", "slt", "Tell me a short story about a little dog."),
    (
        "flite_meeting_rms",
        "rms",
        "The meeting has been moved to Thursday afternoon, so please send the report to everyone before lunch.",
    ),
]


def main() -> int:
    for tool in ("flite", "sox", "soxi"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install -y flite sox", file=sys.stderr)
            return 1
    SPEECH_DIR.mkdir(parents=True, exist_ok=True)
    entries = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else []
    entries = [e for e in entries if not str(e.get("file", "")).startswith(PREFIX)]
    with tempfile.TemporaryDirectory() as tmp:
        for stem, voice, text in UTTERANCES:
            raw = Path(tmp) / f"{stem}.wav"
            out = SPEECH_DIR / f"{stem}.wav"
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(raw)], check=True)
            subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out)], check=True)
            seconds = float(subprocess.run(["soxi", "-D", str(out)], check=True, capture_output=True, text=True).stdout)
            entries.append(
                {
                    "file": out.name,
                    "text": text,
                    "voice": f"flite:{voice}",
                    "rate": RATE,
                    "seconds": round(seconds, 3),
                    "source": "Debian flite 2.2 (synthetic speech)",
                }
            )
            print(f"{out.name}: {seconds:.2f} s")
    entries.sort(key=lambda e: e["file"])
    MANIFEST.write_text(json.dumps(entries, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
