"""The replay package has no import cycles between its modules: not at import time, not inside functions, not
under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "agent" / "replay"


def imports_of(source: str, name: str) -> set[str]:
    """Sibling modules the module ``name`` (with ``source``) imports, however and wherever it imports them."""
    siblings = {p.stem for p in PACKAGE.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found |= {a.name for a in node.names}
            elif node.module and node.module.startswith("agent.replay"):
                rest = node.module.removeprefix("agent.replay").lstrip(".")
                found |= {rest.split(".")[0]} if rest else {"__init__"} | {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("agent.replay."):
                    found.add(a.name.split(".")[2])
    return (found & siblings) - {name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    graph = {p.stem: imports_of(p.read_text(), p.stem) for p in PACKAGE.glob("*.py")}
    assert graph["runner"] >= {"report", "result", "scenario"}  # the graph is really read
    assert "runner" not in graph["report"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_check_sees_lazy_and_type_only_imports():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .runner import ReplayResult\n"
        "def f():\n    from . import result\n    import agent.replay.scenario\n"
    )
    assert imports_of(source, "report") == {"runner", "result", "scenario"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
