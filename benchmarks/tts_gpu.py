"""Qwen3-TTS on a CUDA GPU: first audio and real-time factor for 1, 4 and 10 streams (bf16, CUDA graphs, batched)
against upstream generate_voice_clone on the same GPU.

Full-size random model (the real weights cannot be downloaded where this was written; compute is the real
architecture's), the same text, voice and frame count on both sides, greedy decoding (random weights make the end
token arbitrary: the model never emits it and both sides are capped). Duplex: one ``BatchScheduler`` per stream
count, warmed up (graphs captured) before timing; every stream is a thread calling ``Qwen3TTSEngine.stream``, so
the codec decoder runs per stream as in the server. Upstream: one batched ``generate_voice_clone`` call with the n
texts (its own batching); it returns audio only at the end, so its first audio is its total. Without CUDA it says
so and measures nothing (``scripts/gpu-check.sh`` runs it on a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

GREEDY = dict(do_sample=False, subtalker_dosample=False)
TEXT = (
    "Streaming speech should start while the model is still thinking, and it should stop the moment the "
    "listener interrupts, which is the whole point of a full duplex voice agent."
)
REF_TEXT = "This is the reference recording that the voice is cloned from."


def configure(p: argparse.ArgumentParser) -> None:
    from testkit.qwen3_tts_model import default_cache_dir

    p.add_argument("--streams", default="1,4,10", help="stream counts to measure")
    p.add_argument("--frames", type=int, default=100, help="frames per stream (100 = 8 s of audio)")
    p.add_argument("--size", default="full", help="random model preset: full (0.6B architecture) or tiny")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--cache", type=Path, default=default_cache_dir())
    p.add_argument("--write", action="store_true", help="also write this run into docs/benchmarks.md")


def sdpa_backend(engine, voice) -> str:
    """The CUDA kernels the decode attention runs (profiled once on the eager masked loop)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import processors.qwen3_tts.lean_loop as ll
    from processors.qwen3_tts.frame_loop import capture_prompt
    from processors.qwen3_tts.lean_loop import LeanFrameLoop, LeanTalker
    from processors.qwen3_tts.voice import to_model_device

    item = to_model_device(voice, engine.device, engine.dtype)
    prompt = capture_prompt(engine.tts_model, text="Hello.", language="English", voice_clone_prompt=[item], **GREEDY)
    names: list[str] = []
    sdpa = ll.F.scaled_dot_product_attention

    def once(*a, **k):
        if k.get("attn_mask") is None or names:
            return sdpa(*a, **k)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            out = sdpa(*a, **k)
            torch.cuda.synchronize()
        names.extend(sorted({e.name for e in prof.events() if e.device_type.name == "CUDA"}))
        return out

    ll.F.scaled_dot_product_attention = once
    try:
        list(LeanFrameLoop(LeanTalker(engine.tts_model.model.talker, attention="masked"), prompt, 2).frames())
    finally:
        ll.F.scaled_dot_product_attention = sdpa
    fused = [n for n in names if any(s in n.lower() for s in ("fmha", "efficient", "flash", "cudnn"))]
    return ("fused: " + ", ".join(fused)) if fused else ("math (no fused kernel): " + ", ".join(names))


def measure_duplex(engine, voice, n: int, frames: int) -> dict:
    import torch

    from processors.qwen3_tts import Qwen3TTSEngine
    from processors.qwen3_tts.batching import BatchScheduler

    with BatchScheduler(engine.tts_model.model.talker, max_batch=n) as sched:
        t = time.perf_counter()
        graphs = sched.warmup()
        warmup_s = time.perf_counter() - t
        eng = Qwen3TTSEngine(engine.tts_model, engine.model_id, scheduler=sched)
        eng.voices = engine.voices
        eng.synthesize("Warm up.", voice, "English", max_frames=2, **GREEDY)
        firsts: list[float] = [0.0] * n
        samples = [0] * n
        torch.cuda.synchronize()
        t0 = time.perf_counter()

        def run(i: int) -> None:
            got = 0
            for chunk in eng.stream(TEXT, voice, "English", max_frames=frames, **GREEDY):
                if got == 0:
                    firsts[i] = time.perf_counter() - t0
                got += len(chunk)
            samples[i] = got

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        [th.start() for th in threads]
        [th.join() for th in threads]
        wall = time.perf_counter() - t0
    audio_s = statistics.median(samples) / 24000
    return dict(first=statistics.median(firsts), first_max=max(firsts), wall=wall, audio_s=audio_s,
                graphs=graphs, warmup_s=warmup_s)  # fmt: skip


def measure_upstream(engine, voice, n: int, frames: int) -> dict:
    import torch

    model = engine.tts_model
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    wavs, sr = model.generate_voice_clone(text=[TEXT] * n, language=["English"] * n,
                                          voice_clone_prompt=[voice.prompt] * n, max_new_tokens=frames + 1,
                                          **GREEDY)  # fmt: skip
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return dict(first=wall, first_max=wall, wall=wall, audio_s=statistics.median(len(w) for w in wavs) / sr)


def run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        print("tts-gpu: no CUDA GPU visible to torch: nothing measured (scripts/gpu-check.sh runs this on a GPU)")
        return 0
    from benchmarks.report import markdown_table, write_section
    from processors.qwen3_tts import Qwen3TTSEngine
    from testkit.qwen3_tts_model import cached_random_model_dir, make_reference_audio

    model_dir = cached_random_model_dir(args.cache, args.size, never_eos=True)
    engine = Qwen3TTSEngine.from_pretrained(model_dir, device=args.device)  # bf16 on CUDA
    voice = engine.create_voice((make_reference_audio(seconds=5.0, sample_rate=24000, seed=3), 24000), REF_TEXT)
    gpu = torch.cuda.get_device_name(engine.device)
    backend = sdpa_backend(engine, voice)
    print(f"GPU {gpu}; decode attention: {backend}", flush=True)
    rows = []
    for n in [int(x) for x in args.streams.split(",") if x.strip()]:
        for side, measure in (("Duplex stream (graphs, batched)", measure_duplex),
                              ("upstream generate_voice_clone", measure_upstream)):  # fmt: skip
            print(f"[{side}, {n} stream(s)] ...", flush=True)
            r = measure(engine, voice, n, args.frames)
            rows.append([n, side, f"{r['first']:.3f}", f"{r['first_max']:.3f}", f"{r['wall']:.2f}",
                         f"{r['wall'] / r['audio_s']:.3f}", f"{n * r['audio_s'] / r['wall']:.1f}",
                         f"{r['graphs']} in {r['warmup_s']:.1f} s" if "graphs" in r else "-"])  # fmt: skip
    table = markdown_table(["streams", "side", "first audio s (median)", "first audio s (last stream)",
                            "wall s", "RTF per stream (wall/audio)", "audio s per wall s (all streams)",
                            "graphs captured at warm-up"], rows)  # fmt: skip
    body = (
        f"## TTS on a GPU (`duplex bench tts-gpu`, run by `scripts/gpu-check.sh`)\n\n"
        f"Measured {time.strftime('%Y-%m-%d')} on {gpu}, torch {torch.__version__}, {args.size} random model in "
        f"{str(engine.dtype).replace('torch.', '')}, {args.frames} greedy frames per stream "
        f"({args.frames * 0.08:.0f} s of audio), voice-clone ICL mode. Decode attention: {backend}.\n\n{table}\n"
    )
    print(body)
    if args.write:
        print(f"written to {write_section('tts-gpu', body)}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    configure(p)
    return run(p.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
