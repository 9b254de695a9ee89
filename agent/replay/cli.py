"""``duplex replay SCENARIO.yaml [--realtime] [--out DIR] [--inherit-env]``: run scenarios, print what happened,
write the reports. Exit status: 0 every expectation held, 1 an expectation failed, 2 a scenario or its input is
unusable (invalid file, audio that is not audio), 3 the replay itself crashed (a bug: the traceback is printed)."""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CRASHED = 0, 1, 2, 3


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
    parser.add_argument(
        "--inherit-env",
        action="store_true",
        help="read DUPLEX_* environment variables under each scenario's settings, as `duplex serve` does "
        "(default: defaults plus the scenario, so the shell cannot change a result)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the pipeline's log (default: warnings only)")


def run(args: argparse.Namespace) -> int:
    import os
    import traceback
    from pathlib import Path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.verbose:
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="WARNING")
    from .runner import replay
    from .scenario import ScenarioError, load_scenario

    status = EXIT_OK
    for path in args.scenario:
        try:
            scenario = load_scenario(path)
        except ScenarioError as e:
            print(f"error: {e}", file=sys.stderr)
            status = max(status, EXIT_INVALID)
            continue
        out = None
        if args.out:
            out = Path(args.out) / Path(path).stem if len(args.scenario) > 1 else Path(args.out)
        try:
            result = replay(
                scenario, realtime=args.realtime, out=out, check=False, inherit_env=args.inherit_env or None
            )
        except ScenarioError as e:
            print(f"error: {e}", file=sys.stderr)
            status = max(status, EXIT_INVALID)
            continue
        except Exception:
            traceback.print_exc()
            print(f"error: {path}: the replay crashed (above)", file=sys.stderr)
            status = max(status, EXIT_CRASHED)
            continue
        print(result.summary())
        if out is not None:
            print(f"  reports: {out}/timeline.json, conversation.wav, timeline.png")
        if result.failures:
            status = max(status, EXIT_FAILED)
            print(f"FAILED ({len(result.failures)}):")
            for f in result.failures:
                print(f"  - {f}")
        else:
            print(f"ok ({len(scenario.expect)} expectation(s))")
    return status
