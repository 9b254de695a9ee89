"""The floors and the import graph, read from the source with ``ast``.

Floors, from the ground up: ``processors`` (engines, adapters, audio constants) -> ``voices`` -> ``pipelines`` ->
``agent`` (CLI, server, replay, settings). A module imports from its own floor or lower ones, never higher.
``testkit`` (test and benchmark scaffolding) sits beside the product: it may use the engines and voices, and only
``agent`` (named clips in replay scenarios), ``benchmarks`` and the tests may use it. And no import cycle among our
modules, counting imports inside functions and under ``TYPE_CHECKING`` too: a cycle hidden behind a lazy import is
still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "processors": {"processors"},
    "voices": {"voices", "processors"},
    "pipelines": {"pipelines", "voices", "processors"},
    "agent": {"agent", "pipelines", "voices", "processors", "testkit"},
    "testkit": {"testkit", "processors", "voices"},
    "benchmarks": {"benchmarks", "agent", "pipelines", "voices", "processors", "testkit"},
}
PACKAGES = tuple(ALLOWED)


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The first-party module ``name`` refers to (the longest existing prefix), or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(module: str) -> set[str]:
    """First-party modules that ``module`` imports anywhere in its body."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{alias.name}" for alias in node.names] + [prefix]
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_the_packages_are_found():
    assert {"processors.catalogue", "pipelines.voice_agent", "agent.settings", "voices.registry"} <= set(MODULES)
    assert len(MODULES) > 60


def test_no_module_imports_from_a_higher_floor():
    bad = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in sorted(targets)
        if target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    ]
    assert not bad, "imports that run up the floors:\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its own modules is not a cycle: drop edges from a module to the
    package that contains it (Python has that package initialised before the module runs)."""
    return {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}


def test_no_import_cycles():
    cycles = _cycles(_without_package_inits(GRAPH))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_catch_what_they_look_for():
    """The cycle finder and the floor rule on a made-up graph: a test that cannot fail proves nothing."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert "agent" not in ALLOWED["pipelines"] and "testkit" not in ALLOWED["processors"]
