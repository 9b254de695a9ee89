"""Conversation replay: scenario files run through the real voice pipeline on a virtual clock.

    from agent.replay import replay
    result = replay("examples/replay/barge_in.yaml")        # raises AssertionError listing failed expectations
    result.turns[0].transcript, result.turns[1].interrupted, result.turns[0].latencies()

``duplex replay SCENARIO.yaml [--realtime] [--out DIR] [--inherit-env]`` is the command; docs/replay.md documents
the format.
"""

from .result import ReplayResult, TurnResult
from .runner import replay, run_scenario
from .scenario import Scenario, ScenarioError, load_scenario, parse_scenario

__all__ = [
    "ReplayResult",
    "Scenario",
    "ScenarioError",
    "TurnResult",
    "load_scenario",
    "parse_scenario",
    "replay",
    "run_scenario",
]
