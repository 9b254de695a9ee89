"""The Qwen3-TTS package's imports: no cycles (counting imports inside functions and ``TYPE_CHECKING`` blocks: a
lazy import that closes a cycle only hides it), and nothing from a floor above ``processors``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = "processors.qwen3_tts"
HIGHER_FLOORS = ("voices", "pipelines", "agent", "testkit", "benchmarks", "tests")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, as absolute names (``from . import x`` -> the module x
    when it is one)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            for a in node.names:  # ``from pkg import module``
                if (ROOT / Path(*f"{base}.{a.name}".split("."))).with_suffix(".py").exists():
                    out.add(f"{base}.{a.name}")
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (ROOT / "processors").rglob("*.py")}
    return {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                found.append([*stack[stack.index(n) :], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_no_import_cycles_through_the_package():
    cycles = [c for c in _cycles(_graph()) if any(m.startswith(PACKAGE) for m in c)]
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_sees_lazy_imports():
    """The check itself: a cycle closed only by an import inside a function is found."""
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    src = ROOT / "processors" / "qwen3_tts" / "service.py"
    assert "processors.engine_tts_service" in _imports(src)  # absolute
    assert "processors.qwen3_tts.engine" in _imports(src)  # relative


def test_package_imports_nothing_from_a_higher_floor():
    bad = {
        (m, i)
        for m, p in ((_module_name(p), p) for p in (ROOT / "processors" / "qwen3_tts").rglob("*.py"))
        for i in _imports(p)
        if i.split(".")[0] in HIGHER_FLOORS
    }
    assert bad == set()
