"""How Duplex scales with concurrent sessions (``duplex bench scale [PART]``), one module per part.

    duplex bench scale [--write]       every part with its defaults
    duplex bench scale batching ...    (a) concurrent /api/v1/speak sessions on one engine, batched vs one at a time
    duplex bench scale hop ...         (b) the Ray Serve hop against the same engine in-process

Each part is its own subcommand with its own options (``duplex bench scale PART --help``) and writes its own section
of docs/benchmarks.md. A new part: a module with ``configure(parser)``, ``run(args)`` and a docstring, added to
``PARTS``.
"""

from __future__ import annotations

import argparse
import importlib

PARTS = {
    "batching": "benchmarks.scale_batching",  # section bench:scale-concurrency
    "hop": "benchmarks.scale_hop",  # section bench:scale-hop
}

_parsers: dict[str, argparse.ArgumentParser] = {}


def _write(p: argparse.ArgumentParser, **kw) -> None:
    p.add_argument("--write", action="store_true", help="also write the result into docs/benchmarks.md", **kw)


def configure(p: argparse.ArgumentParser) -> None:
    _write(p)
    sub = p.add_subparsers(dest="part", metavar="PART")
    for name, module_name in PARTS.items():
        module = importlib.import_module(module_name)
        part = sub.add_parser(name, help=module.__doc__.strip().splitlines()[0])
        module.configure(part)
        _write(part, default=argparse.SUPPRESS)  # before or after PART; absent here, the one before PART counts
        _parsers[name] = part


def run(args: argparse.Namespace) -> int:
    if args.part is not None:
        return int(importlib.import_module(PARTS[args.part]).run(args) or 0)
    status = 0
    for name, module_name in PARTS.items():
        part_args = _parsers[name].parse_args([])
        part_args.write = args.write
        status = status or int(importlib.import_module(module_name).run(part_args) or 0)
    return status


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    configure(parser)
    raise SystemExit(run(parser.parse_args()))
