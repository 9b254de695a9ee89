"""``duplex bench {tts,...}``: benchmarks print a table; with ``--write`` they also write it into docs/benchmarks.md
(never by default, so a user's run leaves the checkout clean)."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "tts": "benchmarks.tts",
    "tts-gpu": "benchmarks.tts_gpu",
    "espeak": "benchmarks.espeak_tts",
    "llm": "benchmarks.llm",
    "speak": "benchmarks.speak_server",
    "agent": "benchmarks.voice_agent",
    "memory": "benchmarks.session_memory",
    "soak": "benchmarks.soak",
    "scale": "benchmarks.scale",
    "turns": "benchmarks.turns",
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.__doc__.strip().splitlines()[0])
        module.configure(p)
        p.set_defaults(_bench_module=module)


def run(args: argparse.Namespace) -> int:
    return int(args._bench_module.run(args) or 0)
