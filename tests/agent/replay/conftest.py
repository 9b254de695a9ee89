"""Example replays shared by the tests of this folder: ``replayed("barge_in")`` runs an example once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "replay"


@pytest.fixture(scope="session")
def replayed():
    from agent.replay import replay

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = replay(EXAMPLES / f"{name}.yaml")
        return cache[name]

    return get
