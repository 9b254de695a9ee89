"""Regenerate the shipped default voice in voices/default/ (not a test; run by hand).

Needs Debian's ``flite`` (``apt-get install -y flite``). The CMU "slt" voice speaks the transcript below; the clip is
resampled to 24 kHz mono 16-bit WAV. CMU Flite and its voices are under a BSD-style free licence (Debian's
/usr/share/doc/flite/copyright, "All other files"), so the audio can ship with Duplex.

    python scripts/make_default_voice.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from processors.audio import check_duration, load_audio, resample, write_wav  # noqa: E402
from voices.registry import REFERENCE_NAME, STORED_SAMPLE_RATE, VoiceManifest  # noqa: E402

VOICE_DIR = REPO / "voices" / "default"
FLITE_VOICE = "slt"
TRANSCRIPT = (
    "Hello, this is the default voice of Duplex. "
    "You can replace it with a short recording of your own voice at any time."
)
LICENCE = (
    "CMU Flite licence (BSD-style): Copyright (c) 1999-2001 Language Technologies Institute, Carnegie Mellon "
    "University. Permission is granted, free of charge, to use and distribute this work without restriction, "
    "including to use, copy, modify, merge, publish, distribute, sublicense and sell it, provided that the copyright "
    "notice and conditions are retained, modifications are marked, the original authors' names are not deleted, and "
    "the authors' names are not used to endorse derived products. Provided without warranty. Full text: LICENCE.md "
    "in this folder (from Debian's flite 2.2 /usr/share/doc/flite/copyright). Modification: resampled from 16 kHz to "
    "24 kHz."
)


def main() -> int:
    if shutil.which("flite") is None:
        print("flite not found: apt-get install -y flite", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["flite", "-voice", FLITE_VOICE, "-t", TRANSCRIPT, "-o", str(raw)], check=True)
        audio = load_audio(raw)
    check_duration(audio, 5.0, 8.0, "the default voice clip")
    VOICE_DIR.mkdir(parents=True, exist_ok=True)
    write_wav(
        VOICE_DIR / REFERENCE_NAME, resample(audio.samples, audio.sample_rate, STORED_SAMPLE_RATE), STORED_SAMPLE_RATE
    )
    manifest = VoiceManifest(
        id="default",
        name="Duplex default (flite slt)",
        language="English",
        description="A clear US English female voice synthesised with CMU Flite's slt voice; free to ship.",
        reference=REFERENCE_NAME,
        transcript=TRANSCRIPT,
        x_vector_only=False,
        default=True,
        source=f"Debian flite 2.2, voice cmu_us_slt: flite -voice {FLITE_VOICE} -t <transcript> "
        "(scripts/make_default_voice.py)",
        licence=LICENCE,
    )
    (VOICE_DIR / "manifest.json").write_text(manifest.to_json())
    print(f"{VOICE_DIR / REFERENCE_NAME}: {audio.seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
