"""The ``duplex`` command. Each subcommand lives in its own module exposing ``configure(parser)`` and ``run(args)``;
modules are imported only when their subcommand runs, so ``duplex --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "serve": ("agent.serve", "Run the agent server: browser chat, telephony, /api/v1/speak, /api/v1/voices."),
    "bench": ("benchmarks.cli", "Run a benchmark and print its table (--write: into docs/benchmarks.md too)."),
    "replay": ("agent.replay.cli", "Replay a conversation scenario through the real pipeline."),
    "speak": ("agent.speak", "Synthesise text to a WAV file with a voice."),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="duplex", description="Full-duplex voice agents on local models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, object] = {}
    wanted = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # import only the module that will run
            module = importlib.import_module(module_name)
            module.configure(p)
            modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser, modules = build_parser()
    args = parser.parse_args()
    if not args.command:
        parser.print_help()
        return 2
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
