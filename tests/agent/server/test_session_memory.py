"""Voice sessions give back what they take: a real server (uvicorn, fallback engines loaded as ``duplex serve`` loads
them; in this process, so its RSS is the server's plus a few idle clients), a few warm-up sessions, then empty ``/ws``
sessions, empty Twilio calls and ``/ws`` sessions with a spoken turn, one at a time; the RSS must stay flat. (Each
session used to keep 80-90 MB: a pocketsphinx decoder and a Silero VAD model of its own, freed C memory the allocator
never gave back.) The long version is ``duplex bench memory``: 200 sessions, half with a turn, within 50 MB of the
RSS after the first 10."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from testkit.voice_clients import twilio_call, ws_session

from .conftest import fallback_voice_server

MAX_GROWTH_MB = 40.0  # one session of the old kind kept 80-90 MB


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = fallback_voice_server(tmp_path_factory.mktemp("voices"))
    yield live
    live.stop()


async def test_rss_stays_flat_over_voice_sessions(server):
    base = f"ws://127.0.0.1:{server.port}"
    for clip in (None, "flite_weather_kal16.wav", None):  # imports, lazy loads, allocator arenas
        assert (await ws_session(base, clip=clip, speed=3)).error is None
    await twilio_call(base, clip=None, speed=10)
    await asyncio.sleep(1)
    before, fds = _rss_mb(), _fds()
    replies = 0
    for i in range(18):
        if i % 9 == 8:
            result = await ws_session(base, clip="flite_lights_slt.wav", speed=3)
            replies += result.replied
            assert result.error is None, result.error
        elif i % 2:
            await twilio_call(base, clip=None, speed=10)
        else:
            assert (await ws_session(base, clip=None)).error is None
    await asyncio.sleep(1)
    growth = _rss_mb() - before
    print(f"\nRSS {before:.0f} -> {_rss_mb():.0f} MB over 18 sessions ({replies} spoken turns)")
    assert replies == 2
    assert growth < MAX_GROWTH_MB, f"RSS grew by {growth:.0f} MB over 18 voice sessions"
    assert _fds() <= fds + 2 and server.ctx.sessions.active == 0
