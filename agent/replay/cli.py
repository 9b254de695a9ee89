"""``duplex replay SCENARIO.yaml [--realtime] [--out DIR]``: run a scenario, print what happened, write the reports;
exit status 1 when an expectation failed, 2 when the scenario file is invalid."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", nargs="+", help="scenario YAML file(s) (docs/replay.md)")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="run on the wall clock (true latencies, real-time duration) instead of the virtual clock",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="write timeline.json, conversation.wav, timeline.png here (one subfolder per scenario "
        "when several are given)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the pipeline's log (default: warnings only)")


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.verbose:
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="WARNING")
    from .runner import replay
    from .scenario import ScenarioError, load_scenario

    status = 0
    for path in args.scenario:
        try:
            scenario = load_scenario(path)
        except ScenarioError as e:
            print(f"error: {e}", file=sys.stderr)
            status = max(status, 2)
            continue
        out = None
        if args.out:
            out = Path(args.out) / Path(path).stem if len(args.scenario) > 1 else Path(args.out)
        result = replay(scenario, realtime=args.realtime, out=out, check=False)
        print(result.summary())
        if out is not None:
            print(f"  reports: {out}/timeline.json, conversation.wav, timeline.png")
        if result.failures:
            status = max(status, 1)
            print(f"FAILED ({len(result.failures)}):")
            for f in result.failures:
                print(f"  - {f}")
        else:
            print(f"ok ({len(scenario.expect)} expectation(s))")
    return status
