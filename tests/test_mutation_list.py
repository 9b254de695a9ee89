"""The curated mutation list (``scripts/mutations.yaml``, run by ``scripts/mutation-check`` in CI) stays honest: every
break still finds its exact text once in its file and still compiles, and every catching test it names exists. A
refactor that moves the code fails here, in the normal suite, before the mutation run would test nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import mutation_check  # noqa: E402


def test_every_mutation_finds_its_text_once_and_compiles():
    mutations = mutation_check.load()
    assert len(mutations) >= 15
    assert mutation_check.check_targets(mutations, ROOT) == []


def test_a_moved_target_fails_loudly(tmp_path):
    (tmp_path / "mod.py").write_text("x = 1\ny = x\n")
    gone = mutation_check.Mutation(name="gone", file="mod.py", find="z = 2", replace="z = 3", tests=[])
    twice = mutation_check.Mutation(name="twice", file="mod.py", find="x", replace="y", tests=[])
    problems = mutation_check.check_targets([gone, twice], tmp_path)
    assert any("gone" in p and "not found" in p for p in problems)
    assert any("twice" in p and "found 2 times" in p for p in problems)


def test_every_catching_test_exists():
    tests = sorted({t for m in mutation_check.load() for t in m.tests})
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    collected = set(done.stdout.split("\n"))
    for t in tests:
        assert any(c == t or c.startswith(t + "[") for c in collected), f"{t} collects no test"
