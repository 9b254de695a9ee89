"""``duplex speak "TEXT" --voice ID --out hello.wav``: synthesise with any TTS engine, streaming into a WAV file.

The engine is chosen and loaded as ``duplex serve`` does it (the engine catalogue; ``--engine auto`` picks per
machine and says why); the voice comes from the same registry (shipped voices and ``--voices-dir``). Audio is written
to the file chunk by chunk as the engine produces it, and the time to first audio, the total time and the real-time
factor are printed. ``-`` as the text reads it from stdin. Ctrl-C stops the engine within one step and leaves a valid
WAV of what was made.

Exit status: 0 done; 1 the engine's model cannot be had; 2 bad input (empty text, unknown voice or language).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

EXIT_OK, EXIT_MODEL_UNAVAILABLE, EXIT_BAD_INPUT = 0, 1, 2


def configure(parser: argparse.ArgumentParser) -> None:
    from processors.catalogue import AUTO, names

    add = parser.add_argument
    add("text", help="what to say ('-' reads it from stdin)")
    add("--out", "-o", default="speech.wav", help="the WAV file to write (default speech.wav)")
    add("--voice", help="voice id (see /api/v1/voices or voices/README.md; default: the registry's default)")
    add("--engine", choices=[*names("tts"), AUTO], help="TTS engine (default auto)")
    add("--language", help="language (default: the voice's)")
    add("--tts-model", help="Qwen3-TTS hub id or local directory")
    add("--device", help="cpu, cuda, cuda:1 (default: CUDA when present)")
    add("--voices-dir", help="where user voices are stored (default ~/.local/share/duplex/voices)")
    add("--quiet", "-q", action="store_true", help="print only errors")


def _say(message: str) -> None:
    print(f"duplex speak: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(name)s: %(message)s")
    text = sys.stdin.read() if args.text == "-" else args.text
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        _say(f"cannot write {out}: the folder {out.parent} does not exist")
        return EXIT_BAD_INPUT

    from agent.settings import Settings
    from pipelines.engines import ModelUnavailable, load_engines
    from processors.tts_engine import TTSError, resolve_language, validate_text
    from voices.loader import VoiceLoader
    from voices.registry import VoiceNotFoundError

    tts: dict[str, str] = {}
    if args.engine:
        tts["engine"] = args.engine
    if args.tts_model:
        tts["model"] = args.tts_model
    overrides: dict = {"tts": tts}
    if args.device:
        overrides["device"] = args.device
    if args.voices_dir:
        overrides["voices_dir"] = args.voices_dir
    try:
        settings = Settings(**overrides)
        text = validate_text(text, settings.server.max_text_chars)
        registry = settings.voice_registry()
        voice = registry.get(args.voice) if args.voice else registry.default()
    except VoiceNotFoundError as e:
        _say(str(e))
        return EXIT_BAD_INPUT
    except (ValueError, TTSError) as e:  # pydantic ValidationError is a ValueError too
        _say(f"{e}")
        return EXIT_BAD_INPUT

    progress = (lambda _msg: None) if args.quiet else _say
    try:
        engines = load_engines(settings, kinds=("tts",), progress=progress)
    except ModelUnavailable as e:
        _say(f"ERROR: {e}")
        _say("choose another engine (--engine espeak) or make the model available")
        return EXIT_MODEL_UNAVAILABLE
    engine = engines.tts
    try:
        try:
            language = resolve_language(args.language or voice.language, engine.languages)
            voice_obj = VoiceLoader().get(engine, voice)
        except (ValueError, TTSError) as e:
            _say(str(e))
            return EXIT_BAD_INPUT
        return _stream_to_wav(engine, text, voice_obj, voice.id, language, out, quiet=args.quiet)
    finally:
        engines.close()  # with DUPLEX_RAY__ENABLED: a Ray instance started here stops


def _stream_to_wav(engine, text: str, voice, voice_id: str, language: str, out: Path, *, quiet: bool) -> int:
    import soundfile as sf

    from processors.tts_engine import TTSError

    cancel = threading.Event()
    samples = 0
    first: float | None = None
    t0 = time.perf_counter()
    try:
        with sf.SoundFile(str(out), "w", samplerate=engine.sample_rate, channels=1, subtype="PCM_16") as wav:
            for chunk in engine.stream(text, voice, language, cancel):
                if first is None:
                    first = time.perf_counter() - t0
                    if not quiet:
                        _say(f"first audio after {first * 1000:.0f} ms")
                wav.write(chunk)
                samples += len(chunk)
    except KeyboardInterrupt:
        cancel.set()
        _say(f"interrupted: {out} holds the first {samples / engine.sample_rate:.2f} s")
        return 130
    except (TTSError, ValueError) as e:
        _say(str(e))
        return EXIT_BAD_INPUT
    total = time.perf_counter() - t0
    audio = samples / engine.sample_rate
    if not quiet:
        rtf = total / audio if audio else float("nan")
        _say(
            f"wrote {out}: {audio:.2f} s of audio at {engine.sample_rate} Hz in {total:.2f} s "
            f"(real-time factor {rtf:.2f}); engine {engine.name}, voice {voice_id}, {language}"
        )
    return EXIT_OK
