"""Clone a voice from a WAV + transcript and stream a sentence to a WAV file, printing time to first audio.

    python examples/tts_standalone.py --ref me.wav --ref-text "What I say in the clip." \
        --text "Hello from my cloned voice." --out hello.wav [--model Qwen/Qwen3-TTS-12Hz-0.6B-Base]

The model is a Hugging Face hub id (downloaded on first use) or a local directory (``--model DIR``). When it cannot
be had, or the reference clip cannot be used, the script says why in one line and exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from processors.audio import write_wav
from processors.qwen3_tts import DEFAULT_MODEL, Qwen3TTSEngine
from processors.tts_engine import TTSError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--ref", required=True, help="reference clip, 3-30 s, any rate/format")
    ap.add_argument("--ref-text", default=None, help="its transcript (omit for x-vector-only cloning)")
    ap.add_argument("--text", required=True)
    ap.add_argument("--language", default="English")
    ap.add_argument("--out", default="out.wav")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    try:
        engine = Qwen3TTSEngine.from_pretrained(args.model, device=args.device)
        voice = engine.create_voice(args.ref, args.ref_text)
    except TTSError as e:  # the model cannot be had, the clip is unusable...: what to do, not a traceback
        print(f"tts_standalone: {e}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    chunks = []
    for chunk in engine.stream(args.text, voice, args.language):
        if not chunks:
            print(f"first audio after {1000 * (time.perf_counter() - t0):.0f} ms")
        chunks.append(chunk)
    audio = np.concatenate(chunks)
    total = time.perf_counter() - t0
    write_wav(args.out, audio, engine.sample_rate)
    print(f"{len(audio) / engine.sample_rate:.2f} s of audio in {total:.2f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
