"""Qwen3-TTS streaming vs upstream qwen-tts: time to first audio, total time, ms/frame, real-time factor, peak RSS.

Both sides run the same model directory (randomly initialised: real weights cannot be downloaded here), the same
voice prompt, the same text and the same number of frames (random weights make the end token arbitrary, so the
model is built to never emit it and both sides are capped at the same frame count), greedy decoding, the same torch
thread count, each in a fresh subprocess so peak RSS belongs to that side alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import tts_lean
from benchmarks.tts_work import GREEDY, REF_TEXT, TEXT


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="tiny,full", help="model sizes to run: tiny, full (0.6B architecture)")
    p.add_argument("--frames", type=int, default=125, help="frames per utterance (125 = 10 s of audio)")
    p.add_argument("--tiny-frames", type=int, default=125)
    p.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    p.add_argument("--chunk-frames", type=int, default=4)
    p.add_argument("--first-chunk-frames", type=int, default=1)
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("DUPLEX_CACHE_DIR", Path.home() / ".cache" / "duplex")) / "bench",
    )
    p.add_argument("--write", action="store_true", help="also write this run into docs/benchmarks.md")
    p.add_argument("--side", choices=["upstream", "stream", "lean", "bandwidth", "batch"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    tts_lean.add_arguments(p)


def _model_dir(cache: Path, size: str) -> Path:
    from testkit.qwen3_tts_model import cached_random_model_dir

    return cached_random_model_dir(cache, size, never_eos=True)


def _measure_side(args: argparse.Namespace) -> dict:
    """Runs in a subprocess: one side, one model, prints a JSON line."""
    import torch

    if args.side == "bandwidth":
        return tts_lean.measure_bandwidth(args.threads)
    if args.side == "lean":
        return tts_lean.measure_lean(args)
    if args.side == "batch":
        return tts_lean.measure_batch(args)

    torch.set_num_threads(args.threads)
    from processors.qwen3_tts import Qwen3TTSEngine
    from testkit.qwen3_tts_model import make_reference_audio

    t = time.perf_counter()
    engine = Qwen3TTSEngine.from_pretrained(
        args.model_dir, first_chunk_frames=args.first_chunk_frames, chunk_frames=args.chunk_frames
    )
    load_s = time.perf_counter() - t
    voice = engine.create_voice((make_reference_audio(seconds=5.0, sample_rate=24000, seed=3), 24000), REF_TEXT)
    # warm-up (first-call allocations, lazy inits) on a short run, not timed
    engine.synthesize("Warm up.", voice, "English", max_frames=2, max_new_tokens=3, **GREEDY)
    n = args.frames
    out: dict = {"load_s": load_s}
    if args.side == "upstream":

        def run() -> dict:
            t = time.perf_counter()
            wavs, sr = engine.tts_model.generate_voice_clone(text=TEXT, language="English", max_new_tokens=n + 1,
                                                             voice_clone_prompt=[voice.prompt], **GREEDY)  # fmt: skip
            total = time.perf_counter() - t
            return dict(total_s=total, first_audio_s=total, samples=len(wavs[0]))

        # with the code predictor, the codec decode and the codes observed (issue-7 table and drift check)
        split = tts_lean.measure_upstream_split(engine, run)
        split["codes"] = split["codes"].tolist() if split["codes"] is not None else None
        out.update(split)
    else:
        t = time.perf_counter()
        first = None
        samples = 0
        for chunk in engine.stream(TEXT, voice, "English", max_frames=n, max_new_tokens=n + 1, **GREEDY):
            if first is None:
                first = time.perf_counter() - t
            samples += len(chunk)
        total = time.perf_counter() - t
        st = engine.last_stats
        out.update(
            total_s=total,
            first_audio_s=first,
            samples=samples,
            generate_s=st.timings.get("generate_s"),
            decode_s=st.timings.get("decode_s"),
        )
    out["frames"] = out["samples"] // 1920
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["audio_s"] = out["samples"] / 24000
    return out


def _run_side(side: str, model_dir: Path, args: argparse.Namespace, frames: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "agent.cli",
        "bench",
        "tts",
        "--side",
        side,
        "--model-dir",
        str(model_dir),
        "--frames",
        str(frames),
        "--threads",
        str(args.threads),
        "--chunk-frames",
        str(args.chunk_frames),
        "--first-chunk-frames",
        str(args.first_chunk_frames),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> int:
    if args.side:
        print(json.dumps(_measure_side(args)), flush=True)
        return 0
    from benchmarks.report import markdown_table, write_section

    rows = []
    checks = []
    lean_body = ""
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        model_dir = _model_dir(args.cache, size)
        frames = args.frames if size == "full" else args.tiny_frames
        up = _run_side("upstream", model_dir, args, frames)
        ours = _run_side("stream", model_dir, args, frames)
        for name, r in (("upstream generate_voice_clone", up), ("Duplex stream", ours)):
            rows.append(
                [
                    size,
                    name,
                    r["frames"],
                    r["audio_s"],
                    r["first_audio_s"],
                    r["total_s"],
                    1000 * r["total_s"] / max(r["frames"], 1),
                    r["total_s"] / max(r["audio_s"], 1e-9),
                    r["peak_rss_mb"],
                ]
            )
        ttfa_ratio = ours["first_audio_s"] / up["total_s"]
        total_ratio = ours["total_s"] / up["total_s"]
        checks.append(
            [
                size,
                f"{ttfa_ratio:.3f}",
                "<= 0.2",
                "yes" if ttfa_ratio <= 0.2 else "NO",
                f"{total_ratio:.3f}",
                "<= 1.1",
                "yes" if total_ratio <= 1.1 else "NO",
            ]
        )
        print(
            f"[{size}] upstream {up['total_s']:.2f} s; ours first audio {ours['first_audio_s']:.2f} s, "
            f"total {ours['total_s']:.2f} s",
            flush=True,
        )
        if size == args.lean_size and not args.no_lean:
            lean_body = tts_lean.run_sections(args, model_dir, up)
    headers = [
        "model",
        "side",
        "frames",
        "audio s",
        "first audio s",
        "total s",
        "ms/frame",
        "RTF (compute/audio)",
        "peak RSS MB",
    ]
    table = markdown_table(headers, rows)
    targets = markdown_table(
        ["model", "first audio / upstream total", "target", "met", "our total / upstream total", "target", "met"],
        checks,
    )
    cpu = platform.processor() or platform.machine()
    body = (
        "## TTS: streaming Qwen3-TTS vs upstream (`duplex bench tts`)\n\n"
        f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} CPU cores, {cpu}, no GPU), torch "
        f"{__import__('torch').__version__}, {args.threads} torch thread(s), fp32, greedy decoding, "
        "voice-clone ICL mode "
        f"with a 5 s reference, chunks of {args.first_chunk_frames} then {args.chunk_frames} frames. "
        "Weights are random "
        "(the real ones cannot be downloaded here) but the architecture and therefore the compute are real for `full`; "
        "the model is built never to emit its end token and both sides are capped at the same frame count. "
        "Upstream's first audio is its total: it returns nothing before the end.\n\n"
        f"{table}\n\nTargets on this CPU:\n\n{targets}\n\n"
        '"Duplex stream" is the engine\'s default loop (the lean loop, fp32). What this does not measure: quality on '
        "real weights; GPU figures. On a GPU the engine runs the lean loop in bf16 "
        "with its per-frame steps replayed as "
        "CUDA graphs (`processors/qwen3_tts/cuda_graphs.py`, the technique with which faster-qwen3-tts reaches RTF "
        "0.2-0.26 compute/audio on RTX 4090/H100); it has not run here (no GPU), so no GPU figure is claimed.\n"
    )
    if lean_body:
        body += "\n" + lean_body
    print("\n" + body)
    if args.write:
        print(f"written to {write_section('tts', body)}")
    return 0
