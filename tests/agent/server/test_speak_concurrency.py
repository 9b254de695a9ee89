"""Concurrent ``/api/v1/speak`` sessions on one Qwen3-TTS engine, loaded the way ``duplex serve --tts qwen3
--tts-model DIR`` loads it (the catalogue: batched, ``max_streams`` 10), on a real uvicorn server, with clients that
pace audio in real time: generation is never held hostage by playback pace.

Before, each stream held the engine for the whole duration of its paced audio: the 4th of 4 sessions got its first
audio only after the 3 before it had finished playing. (Without batching, ``max_streams=0``, a paced consumer no
longer holds the engine either: ``tests/processors/qwen3_tts/test_engine_concurrency.py``.)"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from agent.server import Engines
from agent.settings import Settings, TTSSettings
from pipelines.engines import load_engines

from .conftest import open_session, recv, wait_until

TEXTS = ["Hi.", "Yes, sure.", "Good morning.", "Okay."]  # different lengths: 3.5-5 s of audio with the default voice
SESSIONS = 4
# the sessions start this far apart, all within the first session's audio: overlapping sessions as a server sees
# them. (Requests arriving in the same few milliseconds also share the CPU for their prompts and first frames, and a
# stream that has just started generates and decodes ahead of its playback: on the tiny model, whose steps are
# Python-bound, a burst costs 2-3x a single session's first audio on 2 shared cores; ``duplex bench scale
# batching`` measures bursts of 1-10 on the full-size model.)
STAGGER_S = 0.5


def _engines(model_dir) -> Engines:
    """As ``duplex serve --tts qwen3 --tts-model DIR`` loads them."""
    tts = TTSSettings(engine="qwen3", model=str(model_dir))
    return load_engines(Settings(device="cpu", tts=tts), kinds=("tts",), engines=Engines())


async def _first_audio(url: str, text: str) -> float:
    """One session alone (``asap``: pacing starts only after the first frame): seconds from speak to first audio; the
    speak is then cancelled."""
    ws, _, _ = await open_session(url, {"sampleRate": 24_000})
    try:
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "speak", "text": text}))
        while not isinstance(await recv(ws, timeout=60), bytes):
            pass
        first = time.perf_counter() - sent
        await ws.send(json.dumps({"type": "cancel"}))
        while True:
            frame = await recv(ws, timeout=60)
            if isinstance(frame, dict) and frame["type"] in ("complete", "error"):
                return first
    finally:
        await ws.close()


async def _paced(
    url: str, text: str, go: asyncio.Event, delay: float, all_heard: asyncio.Event | None, firsts: list
) -> dict:
    """One session pacing audio in real time, speaking ``delay`` s after ``go``: times of speak sent, first audio and
    complete (None when it was cancelled once every session had its first audio: ``all_heard``), and the audio
    received."""
    ws, _, _ = await open_session(url, {"sampleRate": 24_000, "pacing": "realtime", "pacingLeadMs": 160})
    try:
        await go.wait()
        await asyncio.sleep(delay)
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "speak", "text": text}))
        first = done = None
        audio = 0
        stop = asyncio.ensure_future(all_heard.wait()) if all_heard is not None else None
        while True:
            frame = await recv(ws, timeout=60)
            if isinstance(frame, bytes):
                if first is None:
                    first = time.perf_counter()
                    firsts.append(first)
                    if len(firsts) == SESSIONS and all_heard is not None:
                        all_heard.set()
                audio += len(frame) // 2
            elif frame["type"] == "complete":
                done = time.perf_counter()
                break
            else:
                assert frame.get("code") == "CANCELLED", frame
                break
            if stop is not None and stop.done():
                stop = None
                await ws.send(json.dumps({"type": "cancel"}))
        return dict(sent=sent, first=first, done=done, audio_s=audio / 24_000)
    finally:
        await ws.close()


async def _concurrent(url: str, to_the_end: bool) -> list[dict]:
    """``SESSIONS`` paced sessions speaking ``STAGGER_S`` apart; unless ``to_the_end``, each cancels once all have
    audio."""
    go, all_heard, firsts = asyncio.Event(), None if to_the_end else asyncio.Event(), []
    tasks = [asyncio.create_task(_paced(url, TEXTS[i], go, i * STAGGER_S, all_heard, firsts)) for i in range(SESSIONS)]
    await asyncio.sleep(0.5)  # every session is connected and started
    go.set()
    return await asyncio.gather(*tasks)


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def batched(tiny_qwen_dir, server_factory):
    engines = _engines(tiny_qwen_dir)
    assert engines.tts.max_streams == 10  # the default: batched
    live = server_factory(engines=engines, max_sessions=SESSIONS + 1)
    assert wait_until(live.ctx.default_voice_loaded, 300.0)
    yield live
    engines.tts.close()


def _measure(url: str, rounds: int = 3) -> tuple[list[float], list[float]]:
    """``rounds`` rounds, each: the first audio of one session alone, once per text; then the 4 overlapping sessions
    (the first round plays every session to its end, the others cancel once all have audio). Asserts in every round
    that all 4 first audios come before any session completes. Returns the first audios (alone, overlapping)."""
    alone: list[float] = []
    together: list[float] = []
    for round_ in range(rounds):
        alone += [asyncio.run(_first_audio(url, text)) for text in TEXTS]
        results = asyncio.run(_concurrent(url, to_the_end=round_ == 0))
        together += [r["first"] - r["sent"] for r in results]
        last_first = max(r["first"] for r in results)
        assert all(r["done"] is None or r["done"] > last_first for r in results), results
        if round_ == 0:  # long enough paced audio for "before any completes" to mean something
            assert all(r["done"] is not None and r["audio_s"] > 1.0 for r in results), results
    ms = ", ".join(f"{x * 1000:.0f}" for x in alone), ", ".join(f"{x * 1000:.0f}" for x in together)
    print(f"first audio ms: alone {ms[0]}; 4 overlapping {ms[1]}")
    return alone, together


def test_four_paced_sessions_all_start_before_any_completes(batched):
    """Every round: all 4 first audios before any session completes. Over the rounds: first-audio p95 of the
    overlapping sessions within 2x the p95 alone (the same statistic of as many samples, taken in turns, so a busy
    machine weighs on both alike). A 12-sample p95 is one of the two slowest values, which a burst of other work on a
    shared machine can double; one more measurement is taken before failing. (What this guards against, first audio
    waiting for other sessions' playback, costs 10-50x, every time.)"""
    url = batched.speak_url
    asyncio.run(_first_audio(url, TEXTS[0]))  # warm-up
    alone, together = _measure(url)
    if _p95(together) > 2 * _p95(alone):
        alone, together = _measure(url)
    assert _p95(together) <= 2 * _p95(alone), (together, alone)
    assert batched.ctx.engines.tts.scheduler.max_active >= 2
