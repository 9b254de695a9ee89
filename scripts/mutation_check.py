"""Break each feature on purpose and check that its tests notice (``scripts/mutation-check``).

``scripts/mutations.yaml`` lists one-line breaks of features the README claims: a file, the exact text to find (it
must occur exactly once, so a refactor that moves the code makes the check fail loudly instead of silently testing
nothing), its replacement, and the tests that must catch it. For each, in a temporary copy of the repository (the
tracked and untracked, not ignored, files of the working tree), the break is applied and the listed tests run; every
listed test must FAIL (an error in a fixture or at collection does not count: that is a broken mutation, not a
caught one). The copy is restored between mutations.

    scripts/mutation-check                 # every mutation in the list
    scripts/mutation-check NAME ...        # only these (names from the list)
    scripts/mutation-check --list          # the list and the tests that catch each
    scripts/mutation-check --baseline      # first run every listed test unbroken: they must pass

Exit status 0 when every mutation was caught, 1 otherwise (not caught, broken, or its text not found).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LIST = Path(__file__).resolve().parent / "mutations.yaml"
TIMEOUT_S = 900  # per mutation


@dataclass
class Mutation:
    name: str
    file: str
    find: str
    replace: str
    tests: list[str]
    why: str = ""


def load(path: Path = LIST) -> list[Mutation]:
    items = yaml.safe_load(path.read_text())
    out = []
    for item in items:
        unknown = set(item) - {"name", "file", "find", "replace", "tests", "why"}
        if unknown:
            raise SystemExit(f"{path}: mutation {item.get('name')!r}: unknown keys {sorted(unknown)}")
        out.append(Mutation(**item))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: mutation names must be unique")
    return out


def check_targets(mutations: list[Mutation], root: Path) -> list[str]:
    """Every mutation's text occurs exactly once in its file, and the result still compiles."""
    problems = []
    for m in mutations:
        path = root / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        source = path.read_text()
        count = source.count(m.find)
        if count != 1:
            where = "not found" if count == 0 else f"found {count} times"
            problems.append(f"{m.name}: the text to break is {where} in {m.file}: {m.find!r}")
            continue
        if m.find == m.replace:
            problems.append(f"{m.name}: the replacement is the text itself")
            continue
        if path.suffix == ".py":
            try:
                compile(source.replace(m.find, m.replace), str(path), "exec")
            except SyntaxError as e:
                problems.append(f"{m.name}: the broken {m.file} does not compile: {e}")
    return problems


def copy_tree(src: Path, dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=src,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in files:
        if not name:
            continue
        rel = Path(os.fsdecode(name))
        if not (src / rel).is_file():  # deleted in the working tree
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)


def run_tests(root: Path, tests: list[str], log: Path) -> tuple[int, list[str], list[str]]:
    """pytest on ``tests`` in ``root``: (exit status, its FAILED summary lines, its ERROR summary lines); node ids
    may hold spaces ("[GET /api/v1/voices-none]"), so the lines are matched against the listed tests later."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--no-header", *tests]
    with log.open("w") as out:
        try:
            rc = subprocess.run(
                cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT_S
            ).returncode
        except subprocess.TimeoutExpired:
            return -1, [], []
    text = log.read_text(errors="replace")
    failed = re.findall(r"^FAILED (.+)$", text, re.M)
    errored = re.findall(r"^ERROR (.+)$", text, re.M)
    return rc, failed, errored


def _matches(entry: str, line: str) -> bool:
    """Whether a summary line ("<node id>[ - message]") is about ``entry`` (a node id, a test, or a file)."""
    if not line.startswith(entry):
        return False
    rest = line[len(entry) :]
    if "[" not in entry and rest.startswith("["):
        return True  # a parametrisation of the listed test
    return rest == "" or rest.startswith((" - ", "::"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="print the mutations and their tests")
    parser.add_argument("--baseline", action="store_true", help="first run the listed tests unbroken (must pass)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy and the logs")
    args = parser.parse_args(argv)

    mutations = load()
    if args.names:
        unknown = set(args.names) - {m.name for m in mutations}
        if unknown:
            print(f"unknown mutation(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 1
        mutations = [m for m in mutations if m.name in args.names]
    if args.list:
        for m in mutations:
            print(f"{m.name}  ({m.file})\n    {m.why}\n" + "".join(f"    caught by {t}\n" for t in m.tests))
        return 0
    problems = check_targets(mutations, ROOT)
    if problems:
        print("mutation list out of date:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="duplex-mutation-"))
    results: list[tuple[str, str, float, str]] = []
    try:
        copy = work / "repo"
        copy.mkdir()
        copy_tree(ROOT, copy)
        if args.baseline:
            tests = sorted({t for m in mutations for t in m.tests})
            t0 = time.perf_counter()
            rc, failed, errored = run_tests(copy, tests, work / "baseline.log")
            print(f"baseline: {len(tests)} test entries, exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
            if rc != 0:
                print((work / "baseline.log").read_text()[-4000:])
                print("the listed tests do not pass on the unbroken code", file=sys.stderr)
                return 1
        for i, m in enumerate(mutations, 1):
            path = copy / m.file
            original = path.read_text()
            path.write_text(original.replace(m.find, m.replace))
            log = work / f"{i:02d}-{m.name}.log"
            t0 = time.perf_counter()
            try:
                rc, failed, errored = run_tests(copy, m.tests, log)
            finally:
                path.write_text(original)
            seconds = time.perf_counter() - t0
            missed = [t for t in m.tests if not any(_matches(t, node) for node in failed)]
            if rc == -1:
                verdict, detail = "TIMEOUT", f"the tests ran over {TIMEOUT_S} s"
            elif not missed:
                verdict, detail = "caught", ", ".join(m.tests)
            elif rc == 0:
                verdict, detail = "NOT CAUGHT", "every listed test passed with the break in place"
            else:
                broken = [t for t in missed if any(_matches(t, node) for node in errored)]
                verdict = "BROKEN" if broken else "NOT CAUGHT"
                detail = f"{'errored, not failed' if broken else 'passed'}: {', '.join(missed)}"
            results.append((m.name, verdict, seconds, detail))
            print(f"[{i}/{len(mutations)}] {m.name}: {verdict} ({seconds:.0f} s) {detail}", flush=True)
            if verdict != "caught":
                print("\n".join(log.read_text(errors="replace").splitlines()[-30:]), flush=True)
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in results if r[1] != "caught"]
    print(f"\n{len(results) - len(bad)}/{len(results)} mutations caught")
    for name, verdict, _, detail in bad:
        print(f"  {verdict}: {name}: {detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
