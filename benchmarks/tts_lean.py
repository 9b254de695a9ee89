"""Issue-7 sections of ``duplex bench tts``: the lean frame loop per precision next to upstream, the memory-bandwidth
floor measured here, drift against fp32, torch thread counts, and batching across streams.

Every measurement runs in a fresh subprocess (so peak RSS belongs to that side alone); the memory bandwidth is measured
in its own subprocess right before each side, with the same thread count, because this machine is shared and its
bandwidth moves with other people's load. Full-size random weights (real ones cannot be downloaded here): compute,
memory traffic and timings are real, quality is not measured (drift is measured against our own fp32 output).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRECISIONS: dict[str, dict] = {
    # name: (from_pretrained options, what it is)
    "fp32": dict(dtype="float32"),
    "bf16": dict(dtype="bfloat16"),
    "int8": dict(quantize="int8"),  # weight-only int8, bf16 activations where the CPU has bf16
    "int8-dynamic": dict(dtype="float32", quantize="int8-dynamic"),  # torch.ao / fbgemm: int8 weights + activations
    # the same with the codec decoder in bf16 (half its cost on AMX; its own drift is in the drift table)
    "int8-dynamic+bf16dec": dict(dtype="float32", quantize="int8-dynamic", decoder_dtype="bfloat16"),
}
PRECISION_NOTES = {
    "fp32": "fp32 weights and activations (exactly upstream's arithmetic)",
    "bf16": "bf16 weights and activations; linears via oneDNN with weights packed at load (AMX)",
    "int8": "int8 weights (per channel), bf16 activations (`_weight_int8pack_mm`), bf16 codec decoder",
    "int8-dynamic": "int8 weights (per channel) and int8 activations quantised per call (torch.ao / fbgemm), fp32 "
    "elsewhere",
    "int8-dynamic+bf16dec": "int8-dynamic with the codec decoder in bf16",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precisions",
        default="fp32,bf16,int8,int8-dynamic,int8-dynamic+bf16dec",
        help="lean-loop precisions to measure",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed utterances per lean side (spread on a shared box)")
    p.add_argument("--thread-sweep", default="1,2", help="torch thread counts to compare")
    p.add_argument("--sweep-precisions", default="fp32,int8-dynamic")
    p.add_argument("--batch-streams", default="1,2,4,8")
    p.add_argument("--batch-frames", type=int, default=24, help="frames per stream in the batching runs")
    p.add_argument("--batch-precisions", default="fp32,int8-dynamic")
    p.add_argument("--no-lean", action="store_true", help="skip the issue-7 sections")
    p.add_argument("--lean-size", default="full", help="model size the issue-7 sections run on (tiny: smoke test)")
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--streams", type=int, help=argparse.SUPPRESS)
    p.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--ref-codes", type=Path, help=argparse.SUPPRESS)


# --------------------------------------------------------------------------------------------------------------------
# Subprocess sides
# --------------------------------------------------------------------------------------------------------------------


def measure_bandwidth(threads: int, mib: int = 1024, repeats: int = 7) -> dict:
    """Streaming bandwidth of this machine now: a torch copy (read + write counted, as STREAM does) and a torch sum
    (read) over a buffer far larger than the caches that matter here, best of ``repeats``; plus the same copy on a
    64 MiB buffer (cache-resident on this CPU's large L3) for reference."""
    import torch

    torch.set_num_threads(threads)

    def best(fn, nbytes: int) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return nbytes / min(times) / 1e9

    n = mib * 2**20 // 4
    x = torch.ones(n)
    y = torch.empty_like(x)
    out = {"copy_gbs": best(lambda: y.copy_(x), 8 * n), "read_gbs": best(lambda: x.sum(), 4 * n)}
    small = x[: 16 * 2**20]
    out["copy_64mib_gbs"] = best(lambda: y[: small.numel()].copy_(small), 8 * small.numel())
    out["bandwidth_gbs"] = max(out["copy_gbs"], out["read_gbs"])
    out["load"] = os.getloadavg()[0]
    return out


def _engine(args: argparse.Namespace, precision: str):
    import torch

    torch.set_num_threads(args.threads)
    from processors.qwen3_tts import Qwen3TTSEngine

    return Qwen3TTSEngine.from_pretrained(args.model_dir, first_chunk_frames=args.first_chunk_frames,
                                          chunk_frames=args.chunk_frames, **PRECISIONS[precision])  # fmt: skip


def _record_codes(engine, sink: list) -> None:
    """Benchmark-only: keep each frame's codes as the engine's loop yields them (for drift)."""
    make = engine._frame_loop

    def recording(prompt, budget):
        loop = make(prompt, budget)
        frames = loop.frames

        def rec(cancel=None):
            for codes in frames(cancel):
                sink.append(codes.clone())
                yield codes

        loop.frames = rec
        return loop

    engine._frame_loop = recording


class _Forced:
    """Sub-talker picks for teacher forcing (stands in for ``LeanTalker.pick_sub``): records its own greedy pick,
    returns the reference code."""

    def __init__(self):
        self.codes = None
        self.group = 1
        self.hits = 0
        self.total = 0

    def pick(self, n, logits, static=False):
        import torch

        pick = int(logits.float().argmax(-1))
        ref = int(self.codes[self.group])
        self.hits += pick == ref
        self.total += 1
        self.group += 1
        return torch.tensor([ref], device=logits.device)


def teacher_forced(engine, voice, ref_codes) -> dict:
    """Run this precision's lean loop on the fp32 codes (teacher forcing) and record, per frame, its own greedy
    picks and codebook-0 logits: per-step agreement without the cascade that follows a first difference."""
    import numpy as np
    import torch

    from benchmarks.tts_work import GREEDY, TEXT
    from processors.qwen3_tts.frame_loop import _processors, capture_prompt
    from processors.qwen3_tts.lean_loop import LeanTalker, StreamSampler
    from processors.qwen3_tts.voice import to_model_device

    n = len(ref_codes)
    prompt = capture_prompt(
        engine.tts_model,
        text=TEXT,
        language="English",
        max_new_tokens=n + 1,
        voice_clone_prompt=[to_model_device(voice, engine.device, engine.dtype)],
        **GREEDY,
    )
    lean = LeanTalker(engine.tts_model.model.talker)
    sampler = StreamSampler(prompt)
    s = sampler.talker
    procs = _processors(do_sample=False, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                        repetition_penalty=s.repetition_penalty, min_new_tokens=s.min_new_tokens, eos=sampler.eos,
                        suppress=list(sampler.suppress), device=lean.device)  # fmt: skip
    forced = _Forced()
    lean.pick_sub = forced.pick
    L = prompt.inputs_embeds.shape[1]
    hits0 = 0
    generated = torch.zeros(1, 0, dtype=torch.long, device=lean.device)
    logits0 = np.zeros((n, lean.logits0.shape[1]), dtype=np.float32)
    with torch.inference_mode():
        lean.join(0, sampler)
        _, logits = lean.prefill(0, prompt.inputs_embeds, L + n + 1)
        for f in range(n):
            scores = procs(generated, logits.float())
            logits0[f] = scores[0].float().clamp(min=-1e4).numpy()
            ref0 = int(ref_codes[f, 0])
            hits0 += int(scores.argmax(-1)) == ref0
            generated = torch.cat([generated, torch.tensor([[ref0]], device=lean.device)], dim=1)
            lean.tok0[0] = ref0
            forced.codes, forced.group = ref_codes[f], 1
            lean.predict(1)
            lean.next_inputs(1, [sampler.text_row(f)])
            lean.pos[0] = L + f
            _, logits = lean.step(1, [L + f])
    return dict(tf_cb0=hits0 / n, tf_sub=forced.hits / max(forced.total, 1), tf_logits0=logits0)


def activation_outliers(engine, voice) -> float:
    """Median over positions and layers of max|x| / rms(x) at the inputs of the talker's q projections (upstream
    forward of the prompt): how strongly one dimension dominates what a per-tensor activation quantiser sees
    (a one-hot vector gives sqrt(d), a Gaussian one about sqrt(2 ln d))."""
    import statistics

    import torch

    from benchmarks.tts_work import GREEDY, TEXT
    from processors.qwen3_tts.frame_loop import capture_prompt
    from processors.qwen3_tts.voice import to_model_device

    prompt = capture_prompt(
        engine.tts_model,
        text=TEXT,
        language="English",
        voice_clone_prompt=[to_model_device(voice, engine.device, engine.dtype)],
        **GREEDY,
    )
    talker = engine.tts_model.model.talker
    ratios: list[float] = []

    def hook(_mod, inp):
        h = inp[0].reshape(-1, inp[0].shape[-1]).float()
        ratios.extend((h.abs().amax(-1) / h.pow(2).mean(-1).sqrt()).tolist())

    handles = [layer.self_attn.q_proj.register_forward_pre_hook(hook) for layer in talker.model.layers]
    try:
        with torch.inference_mode():
            talker.model(inputs_embeds=prompt.inputs_embeds)
    finally:
        for h in handles:
            h.remove()
    return statistics.median(ratios)


def measure_lean(args: argparse.Namespace) -> dict:
    """One precision on the lean loop: ``repeats`` timed utterances of ``frames`` frames; the first one's codes and
    waveform are saved for drift, and the fp32 reference codes (if given) are decoded by this side's codec decoder."""
    import numpy as np
    import torch

    from benchmarks.tts_work import GREEDY, REF_TEXT, TEXT
    from processors.qwen3_tts.precision import weight_bytes_per_frame
    from testkit.qwen3_tts_model import make_reference_audio

    t = time.perf_counter()
    engine = _engine(args, args.precision)
    load_s = time.perf_counter() - t
    voice = engine.create_voice((make_reference_audio(seconds=5.0, sample_rate=24000, seed=3), 24000), REF_TEXT)
    engine.synthesize("Warm up.", voice, "English", max_frames=2, max_new_tokens=3, **GREEDY)
    n = args.frames
    runs = []
    codes: list = []
    wav0 = None
    for r in range(args.repeats):
        sink: list = []
        _record_codes(engine, sink)
        t = time.perf_counter()
        first = None
        chunks = []
        for chunk in engine.stream(TEXT, voice, "English", max_frames=n, max_new_tokens=n + 1, **GREEDY):
            if first is None:
                first = time.perf_counter() - t
            chunks.append(chunk)
        total = time.perf_counter() - t
        st = engine.last_stats
        tm = st.timings
        runs.append(dict(total_s=total, first_audio_s=first, frames=st.frames, talker_s=tm["talker_s"],
                         predictor_s=tm["predictor_s"], prefill_s=tm["prefill_s"], decode_s=tm["decode_s"],
                         load=os.getloadavg()[0]))  # fmt: skip
        if r == 0:
            codes = sink
            wav0 = np.concatenate(chunks)
        del engine._frame_loop  # back to the class method
    out = dict(precision=args.precision, threads=args.threads, load_s=load_s, runs=runs,
               weight_bytes_per_frame=weight_bytes_per_frame(engine.tts_model.model.talker),
               dtype=str(engine.dtype).replace("torch.", ""),
               decoder_dtype=str(next(engine.codec_decoder.parameters()).dtype).replace("torch.", ""))  # fmt: skip
    if args.save:
        extra = {}
        ref_codes = np.load(args.ref_codes)["codes"] if args.ref_codes else torch.stack(codes).numpy()
        tf = teacher_forced(engine, voice, torch.from_numpy(ref_codes))
        if args.precision == "fp32":
            out["outlier_ratio"] = activation_outliers(engine, voice)
            out["hidden_size"] = engine.tts_model.model.talker.config.hidden_size
        extra["tf_logits0"] = tf.pop("tf_logits0")
        out.update(tf)
        if args.ref_codes:
            ref = list(torch.from_numpy(np.load(args.ref_codes)["codes"]))
            dec = engine._decoder_for(voice)  # same chunking as the streamed fp32 reference
            cuts = [0, args.first_chunk_frames, *range(args.first_chunk_frames + args.chunk_frames, len(ref),
                                                       args.chunk_frames), len(ref)]  # fmt: skip
            extra["decoded_ref"] = np.concatenate(
                [engine._decode(dec, ref[a:b]) for a, b in zip(cuts, cuts[1:]) if b > a]
            )
        np.savez(args.save, codes=torch.stack(codes).numpy(), wav=wav0, **extra)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def measure_upstream_split(engine, run) -> dict:
    """Upstream's generate_voice_clone with its code predictor, codec decode and codes observed (instance patches)."""
    tm = {"predictor_s": 0.0, "decode_s": 0.0, "codes": None}
    model = engine.tts_model.model
    pred = model.talker.code_predictor
    gen_pred, dec, gen = pred.generate, model.speech_tokenizer.decode, model.generate

    def timed_pred(*a, **k):
        t = time.perf_counter()
        try:
            return gen_pred(*a, **k)
        finally:
            tm["predictor_s"] += time.perf_counter() - t

    def timed_dec(*a, **k):
        t = time.perf_counter()
        try:
            return dec(*a, **k)
        finally:
            tm["decode_s"] += time.perf_counter() - t

    def seen_gen(*a, **k):
        result = gen(*a, **k)
        tm["codes"] = result[0][0].detach().cpu()
        return result

    pred.generate, model.speech_tokenizer.decode, model.generate = timed_pred, timed_dec, seen_gen
    try:
        result = run()
    finally:
        del pred.generate, model.speech_tokenizer.decode, model.generate
    return {**result, **tm}


def measure_batch(args: argparse.Namespace) -> dict:
    """``streams`` streams through one BatchScheduler, all submitted at once, ``frames`` frames each (codes only: the
    codec decoder runs per stream and does not batch)."""
    import threading

    from benchmarks.tts_work import GREEDY, REF_TEXT, TEXT
    from processors.qwen3_tts.batching import BatchScheduler
    from processors.qwen3_tts.frame_loop import capture_prompt
    from processors.qwen3_tts.voice import to_model_device
    from testkit.qwen3_tts_model import make_reference_audio

    engine = _engine(args, args.precision)
    voice = engine.create_voice((make_reference_audio(seconds=5.0, sample_rate=24000, seed=3), 24000), REF_TEXT)
    n, frames = args.streams, args.batch_frames
    words = TEXT.split()
    prompts = []
    for i in range(n):  # different texts, so prompts differ in length like real sessions
        text = " ".join(words[i % 5 :] + words[: i % 5])
        prompts.append(capture_prompt(engine.tts_model, text=text, language="English", max_new_tokens=frames + 1,
                                      voice_clone_prompt=[to_model_device(voice, engine.device, engine.dtype)],
                                      **GREEDY))  # fmt: skip
    with BatchScheduler(engine.tts_model.model.talker, max_batch=n) as sched:
        # warm-up (allocations for this batch size), not timed
        warm = [sched.submit(p, 2) for p in prompts]
        ths = [threading.Thread(target=lambda s=s: list(s.frames())) for s in warm]
        [t.start() for t in ths]
        [t.join() for t in ths]
        firsts: list[float] = []
        lock = threading.Lock()
        streams = [sched.submit(p, frames) for p in prompts]
        t0 = time.perf_counter()

        def consume(s):
            got = 0
            for _ in s.frames():
                got += 1
                if got == 1:
                    with lock:
                        firsts.append(time.perf_counter())

        ths = [threading.Thread(target=consume, args=(s,)) for s in streams]
        [t.start() for t in ths]
        [t.join() for t in ths]
        end = time.perf_counter()
    all_started = max(firsts)
    steady = end - all_started
    return dict(streams=n, precision=args.precision, frames=frames, wall_s=end - t0,
                aggregate_fps=n * frames / (end - t0), steady_fps=n * (frames - 1) / steady if steady > 0 else None,
                steady_step_ms=1000 * steady / (frames - 1), load=os.getloadavg()[0],
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# Parent: run the sides, write the tables
# --------------------------------------------------------------------------------------------------------------------


def _sub(side: str, model_dir: Path, args: argparse.Namespace, threads: int, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "agent.cli", "bench", "tts", "--side", side, "--model-dir", str(model_dir),
           "--frames", str(args.frames), "--threads", str(threads), "--chunk-frames", str(args.chunk_frames),
           "--first-chunk-frames", str(args.first_chunk_frames), "--repeats", str(args.repeats),
           "--batch-frames", str(args.batch_frames), *extra]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _bw(model_dir: Path, args: argparse.Namespace, threads: int, log: list) -> dict:
    bw = _sub("bandwidth", model_dir, args, threads)
    bw["threads"] = threads
    log.append(bw)
    return bw


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.0f}"
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def run_sections(args: argparse.Namespace, model_dir: Path, up: dict) -> str:
    """Run every issue-7 measurement on the full-size model; ``up`` is the upstream side already measured (with its
    split timings). Returns the markdown."""
    import numpy as np

    from benchmarks.report import markdown_table
    from processors.qwen3_tts.precision import snr_db, token_agreement

    bw_log: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="duplex-bench-tts-"))
    sides: dict[str, dict] = {}
    bws: dict[str, dict] = {}
    ref_path = tmp / "fp32.npz"
    precisions = _csv(args.precisions)
    if "fp32" in precisions:
        precisions = ["fp32"] + [p for p in precisions if p != "fp32"]
    for prec in precisions:
        bws[prec] = _bw(model_dir, args, args.threads, bw_log)
        extra = ["--precision", prec, "--save", str(tmp / f"{prec}.npz")]
        if prec != "fp32" and ref_path.exists():
            extra += ["--ref-codes", str(ref_path)]
        print(f"[lean {prec}] ...", flush=True)
        sides[prec] = _sub("lean", model_dir, args, args.threads, *extra)
    up_bw = bws.get("fp32") or _bw(model_dir, args, args.threads, bw_log)

    # --- main table ---------------------------------------------------------------------------------------------
    rows = []
    frames_up = max(up["frames"], 1)
    up_gen = up["total_s"] - up["decode_s"]
    up_talker = up_gen - up["predictor_s"]
    fp32_bytes = sides["fp32"]["weight_bytes_per_frame"] if "fp32" in sides else None
    if fp32_bytes:
        floor_ms = 1000 * fp32_bytes / (up_bw["bandwidth_gbs"] * 1e9)
        tp = 1000 * up_gen / frames_up
        rows.append(["upstream generate_voice_clone", "fp32", f"{1000 * up_talker / frames_up:.0f}",
                     f"{1000 * up['predictor_s'] / frames_up:.0f}", f"{1000 * up['decode_s'] / frames_up:.0f}",
                     f"{tp:.0f}", f"{up['total_s']:.1f} (no streaming)", f"{up['total_s'] / up['audio_s']:.2f}",
                     f"{up['peak_rss_mb']:.0f}", f"{fp32_bytes / 1e9:.2f}", f"{up_bw['bandwidth_gbs']:.1f}",
                     f"{floor_ms:.0f}", f"{tp / floor_ms:.2f}"])  # fmt: skip
    for prec, s in sides.items():
        runs = s["runs"]
        fr = [max(r["frames"], 1) for r in runs]
        talker = [1000 * r["talker_s"] / f for r, f in zip(runs, fr)]
        pred = [1000 * r["predictor_s"] / f for r, f in zip(runs, fr)]
        dec = [1000 * r["decode_s"] / f for r, f in zip(runs, fr)]
        tp = [a + b for a, b in zip(talker, pred)]
        rtf = [r["total_s"] / (f * 0.08) for r, f in zip(runs, fr)]
        bw = bws[prec]["bandwidth_gbs"]
        floor_ms = 1000 * s["weight_bytes_per_frame"] / (bw * 1e9)
        ratio = [x / floor_ms for x in tp]
        s["summary"] = dict(tp=statistics.median(tp), rtf=statistics.median(rtf), ratio=statistics.median(ratio),
                            floor_ms=floor_ms, ratio_min=min(ratio), rtf_min=min(rtf))  # fmt: skip
        rows.append([f"lean {prec}", f"{s['dtype']} (decoder {s['decoder_dtype']})", _spread(talker), _spread(pred),
                     _spread(dec), _spread(tp), f"{statistics.median([r['first_audio_s'] for r in runs]):.2f}",
                     f"{statistics.median(rtf):.2f} ({min(rtf):.2f}-{max(rtf):.2f})", f"{s['peak_rss_mb']:.0f}",
                     f"{s['weight_bytes_per_frame'] / 1e9:.2f}", f"{bw:.1f}", f"{floor_ms:.0f}",
                     f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f})"])  # fmt: skip
    main = markdown_table(
        [
            "side",
            "precision",
            "talker ms/frame",
            "predictor ms/frame",
            "decoder ms/frame",
            "talker+predictor ms/frame",
            "first audio s",
            "RTF (compute/audio)",
            "peak RSS MB",
            "weights read/frame GB",
            "bandwidth GB/s",
            "floor ms/frame",
            "ratio to floor",
        ],
        rows,
    )

    # --- drift --------------------------------------------------------------------------------------------------
    drift_rows = []
    if ref_path.exists():
        ref = np.load(ref_path)
        rc, rw = ref["codes"], ref["wav"]
        if up.get("codes") is not None:
            uc = np.asarray(up["codes"])
            a0, first0 = token_agreement(uc[:, 0], rc[:, 0])
            drift_rows.append(["upstream fp32 (check)", f"{100 * a0:.1f}", first0 if first0 < len(rc) else "none",
                               f"{100 * token_agreement(uc, rc)[0]:.1f}", "-", "-", "-", "-", "-", "-"])  # fmt: skip
        ref_logits = ref["tf_logits0"]
        top2 = np.sort(ref_logits, axis=1)[:, -2:]
        margin = float(np.median(top2[:, 1] - top2[:, 0]))
        spread = float(np.median([row[row > -1e4 + 1].std() for row in ref_logits]))
        for prec in sides:
            if prec == "fp32":
                continue
            d = np.load(tmp / f"{prec}.npz")
            c, w = d["codes"], d["wav"]
            a0, first0 = token_agreement(c[:, 0], rc[:, 0])
            a_all, _ = token_agreement(c, rc)
            cut = first0 * 1920
            snr_pre = f"{snr_db(rw[:cut], w[:cut]):.1f}" if first0 > 0 else "-"
            snr_dec = f"{snr_db(rw, d['decoded_ref']):.1f}" if "decoded_ref" in d else "-"
            lg = d["tf_logits0"]
            err = float(np.median(np.abs(lg - ref_logits).max(axis=1)))
            drift_rows.append([f"lean {prec}", f"{100 * a0:.1f}", first0 if first0 < len(rc) else "none",
                               f"{100 * a_all:.1f}", f"{100 * sides[prec]['tf_cb0']:.1f}",
                               f"{100 * sides[prec]['tf_sub']:.1f}", f"{err:.3f}", f"{snr_db(rw, w):.1f}", snr_pre,
                               snr_dec])  # fmt: skip
    drift = markdown_table(["vs lean fp32 (greedy, same prompt)", "free-running: codebook-0 agreement %",
                            "first differing frame", "all-16 agreement %", "teacher-forced: codebook-0 agreement %",
                            "teacher-forced: codebooks 1-15 agreement %", "codebook-0 logit error (median max abs)",
                            "waveform SNR dB", "SNR dB before first difference",
                            "codec decoder alone: SNR dB on fp32 codes"], drift_rows)  # fmt: skip
    if ref_path.exists():
        drift += (
            f"\n\nfp32 codebook-0 logits of this random model: median top-1 margin {margin:.3f}, spread (std) "
            f"{spread:.2f}; logit errors of the margin's size flip the greedy pick."
        )
    if "fp32" in sides and "outlier_ratio" in sides["fp32"]:
        import math

        d = sides["fp32"]["hidden_size"]
        drift += (
            f" The inputs of this random model's linears are dominated by one deliberate outlier dimension "
            f"(the constant of its stop circuit, `testkit/qwen3_tts_model.py`): max|x|/rms(x) = "
            f"{sides['fp32']['outlier_ratio']:.1f} (median; one-hot: {math.sqrt(d):.1f}, Gaussian: about "
            f"{math.sqrt(2 * math.log(d)):.1f}). A per-tensor int8 "
            f"activation quantiser (int8-dynamic) then spends its range on that one dimension and rounds the "
            f"content away, so the int8-dynamic drift here is an extreme case, not a prediction for real weights "
            f"(trained models have activation outliers too, of model-specific size). bf16 and weight-only int8 "
            f"do not quantise activations."
        )

    # --- threads ------------------------------------------------------------------------------------------------
    thread_rows = []
    for prec in _csv(args.sweep_precisions):
        for th in [int(x) for x in _csv(args.thread_sweep)]:
            if th == args.threads and prec in sides:
                s, bw = sides[prec], bws[prec]
            else:
                bw = _bw(model_dir, args, th, bw_log)
                print(f"[lean {prec}, {th} threads] ...", flush=True)
                s = _sub("lean", model_dir, args, th, "--precision", prec)
            runs = s["runs"]
            tp = [1000 * (r["talker_s"] + r["predictor_s"]) / max(r["frames"], 1) for r in runs]
            rtf = [r["total_s"] / (max(r["frames"], 1) * 0.08) for r in runs]
            floor_ms = 1000 * s["weight_bytes_per_frame"] / (bw["bandwidth_gbs"] * 1e9)
            ratio = [x / floor_ms for x in tp]
            thread_rows.append([prec, th, _spread(tp), f"{statistics.median(rtf):.2f} ({min(rtf):.2f}-{max(rtf):.2f})",
                                f"{bw['bandwidth_gbs']:.1f}", f"{statistics.median(ratio):.2f}",
                                " / ".join(f"{r['load']:.1f}" for r in runs)])  # fmt: skip
    threads = markdown_table(["precision", "torch threads", "talker+predictor ms/frame median (min-max)",
                              "RTF median (min-max)", "bandwidth GB/s (same threads)", "ratio to floor",
                              "load average after each run"], thread_rows)  # fmt: skip

    # --- batching -----------------------------------------------------------------------------------------------
    batch_rows = []
    for prec in _csv(args.batch_precisions):
        base = None
        for n in [int(x) for x in _csv(args.batch_streams)]:
            print(f"[batch {prec} x{n}] ...", flush=True)
            b = _sub("batch", model_dir, args, args.threads, "--precision", prec, "--streams", str(n))
            base = base or b["steady_fps"]
            batch_rows.append(
                [
                    prec,
                    n,
                    f"{b['steady_step_ms']:.0f}",
                    f"{b['steady_fps']:.2f}",
                    f"{b['steady_fps'] / base:.2f}",
                    f"{b['aggregate_fps']:.2f}",
                    f"{b['steady_step_ms'] / 80:.2f}",
                    f"{b['peak_rss_mb']:.0f}",
                    f"{b['load']:.1f}",
                ]
            )
    batching = markdown_table(["precision", "streams", "batched step ms (all streams, 1 frame each)",
                               "aggregate frames/s (steady)", "x one stream", "aggregate frames/s incl. prefills",
                               "per-stream RTF (generation)", "peak RSS MB", "load average"], batch_rows)  # fmt: skip

    # --- goals ----------------------------------------------------------------------------------------------------
    goals = []
    if "fp32" in sides:
        r = sides["fp32"]["summary"]
        goals.append(
            [
                "lean fp32 within 1.3x of its floor",
                f"{r['ratio']:.2f} (best {r['ratio_min']:.2f})",
                "<= 1.3",
                "yes" if r["ratio"] <= 1.3 else "NO",
            ]
        )
    for prec in ("int8", "int8-dynamic", "int8-dynamic+bf16dec"):
        if prec in sides:
            r = sides[prec]["summary"]
            goals.append(
                [
                    f"{prec} RTF end to end",
                    f"{r['rtf']:.2f} (best {r['rtf_min']:.2f})",
                    "<= 1.0",
                    "yes" if r["rtf"] <= 1.0 else "NO",
                ]
            )
    goal_table = markdown_table(["goal", "measured (median)", "target", "met"], goals)
    loads = [b["load"] for b in bw_log]
    by_threads = {}
    for b in bw_log:
        by_threads.setdefault(b["threads"], []).append(b["bandwidth_gbs"])
    measured = "; ".join(f"{t} thread(s): " + ", ".join(f"{v:.1f}" for v in vals) + " GB/s"
                         for t, vals in sorted(by_threads.items()))  # fmt: skip
    l3 = statistics.median([b["copy_64mib_gbs"] for b in bw_log])
    bw_note = (
        f"Memory bandwidth, measured {len(bw_log)} times during this run right before each side (torch copy of "
        f"a 1 GiB buffer with read + write counted, or a torch sum, whichever is faster): {measured}. A 64 MiB "
        f"copy, which fits this CPU's 480 MiB L3, ran at {l3:.1f} GB/s (median): the int8 code predictor "
        f"(~80 MB) can partly run from L3, so ratios below 1 are possible there. Load average (2 cores, "
        f"shared with other people's jobs) {min(loads):.1f}-{max(loads):.1f}."
    )
    return (
        f"### Lean frame loop by precision, {args.lean_size} model\n\n"
        f"Same text, voice and {args.frames} greedy frames as above, {args.threads} torch thread(s), "
        f"{args.repeats} timed utterances per lean side in one process (median, with min-max). "
        "talker / predictor / decoder: per generated frame (upstream's decoder also decodes the 5 s reference it "
        "prepends; its talker column includes prompt building and prefill, ours exclude the one-off prefill). "
        "Floor = weight bytes read per frame (talker once, code predictor and one head 15 times) / bandwidth "
        "measured just before that side; ratio = talker+predictor time / floor. "
        "RTF = compute seconds per audio second, "
        "end to end (prompt, prefill, generation, streaming decode).\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in PRECISION_NOTES.items() if k in sides)
        + f"\n\n{main}\n\n{bw_note}\n\nGoals:\n\n{goal_table}\n\n"
        "Drift against lean fp32 on the RANDOM model (greedy, same prompt; the first row checks that the lean fp32 "
        "loop reproduces upstream's codes). Free-running: each precision generates on its own; once a codebook-0 "
        "token differs the two utterances are different speech, so agreement and waveform SNR after that say little. "
        "Teacher-forced: the precision is fed fp32's codes and its own greedy pick is compared at every step, which "
        "measures per-step drift without the cascade. Decoder alone: this side's codec decoder on fp32's codes. "
        "Quality with the real weights is UNVERIFIED.\n\n"
        f"{drift}\n\nTorch threads (the box is shared; each figure is {args.repeats} utterances):\n\n{threads}\n\n"
        f"Batching across sessions (`BatchScheduler`, {args.batch_frames} frames per stream, all streams submitted "
        "at once, prompts of different lengths; steady = after every stream has its first frame; codes only, the "
        "codec decoder runs per stream and adds the decoder ms/frame above to each stream):\n\n"
        f"{batching}\n"
    )
