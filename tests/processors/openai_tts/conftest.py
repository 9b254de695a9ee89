"""The live-server fixtures of the agent server tests: the engine under test talks to a real ``duplex serve``."""

from tests.agent.server.conftest import engine_root, espeak, server_factory  # noqa: F401
