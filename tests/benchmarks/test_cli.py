"""``duplex bench``: every benchmark prints its table and writes docs/benchmarks.md only with ``--write``, so a user's
run leaves the checkout clean."""

from __future__ import annotations

import argparse
import hashlib

from benchmarks import cli
from benchmarks.report import DOC


def test_writing_is_opt_in_for_every_benchmark():
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    for name in cli.BENCHMARKS:
        args = parser.parse_args([name])
        assert args.write is False, name
        assert not hasattr(args, "no_write"), name
        assert parser.parse_args([name, "--write"]).write is True, name


def test_a_run_without_write_leaves_the_doc_alone(capsys):
    before = hashlib.sha256(DOC.read_bytes()).hexdigest()
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    assert cli.run(parser.parse_args(["espeak", "--runs", "3"])) == 0
    out = capsys.readouterr().out
    assert "## TTS fallback: espeak" in out and "written to" not in out
    assert hashlib.sha256(DOC.read_bytes()).hexdigest() == before


def test_scale_parts_are_subcommands_each_writing_only_with_write():
    """``duplex bench scale [--write] PART [--write]``: part (a) ``batching`` and part (b) ``hop``."""
    from benchmarks.scale import PARTS

    parser = argparse.ArgumentParser()
    cli.configure(parser)
    assert set(PARTS) == {"batching", "hop"}
    assert parser.parse_args(["scale"]).part is None  # every part
    for part in PARTS:
        assert parser.parse_args(["scale", part]).write is False, part
        assert parser.parse_args(["scale", part, "--write"]).write is True, part
        assert parser.parse_args(["scale", "--write", part]).write is True, part
    args = parser.parse_args(["scale", "batching", "--concurrency", "1,2", "--one-lock-max", "1"])
    assert (args.concurrency, args.one_lock_max) == ("1,2", 1)
