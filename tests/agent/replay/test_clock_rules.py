"""The virtual clock's rules, each on its own: an idle loop jumps to its next timer at once; a busy worker (an executor
job such as the STT or Silero VAD, or a live per-job engine thread) freezes virtual time until it is done, so its
result lands at the same virtual instant however long it takes in real time; pipecat's wall-clock reads follow."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from agent.replay.clock import VIRTUAL_EPOCH, VirtualTimeLoop, patched_wall_clock


def run(coro_factory):
    loop = VirtualTimeLoop()
    try:
        with patched_wall_clock(loop):
            return loop.run_until_complete(coro_factory(loop))
    finally:
        loop.close()


async def _ticks_while(loop, work) -> tuple[float, int]:
    """(virtual seconds that passed, 10 ms ticks of a concurrent timer) while ``work`` ran."""
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    t0 = loop.time()
    try:
        await work()
    finally:
        task.cancel()
    return loop.time() - t0, ticks


def test_idle_loop_jumps_to_the_next_timer():
    async def main(loop):
        t0, wall = loop.time(), time.perf_counter()
        await asyncio.sleep(30.0)
        return loop.time() - t0, time.perf_counter() - wall

    virtual, real = run(main)
    assert virtual == pytest.approx(30.0) and real < 1.0


def test_executor_job_freezes_virtual_time():
    """A 0.3 s (real) job in the default executor, as pipecat runs the STT and Silero VAD: no virtual time passes and
    no timer fires meanwhile."""

    async def main(loop):
        return await _ticks_while(loop, lambda: loop.run_in_executor(None, time.sleep, 0.3))

    virtual, ticks = run(main)
    assert (virtual, ticks) == (0.0, 0), f"{virtual:.3f} virtual seconds and {ticks} ticks passed during the job"


def test_to_thread_freezes_virtual_time():
    async def main(loop):
        return await _ticks_while(loop, lambda: asyncio.to_thread(time.sleep, 0.2))

    assert run(main) == (0.0, 0)


@pytest.mark.parametrize("name, frozen", [("tts-qwen3-1234", True), ("duplex-llm-7", True), ("someone-else", False)])
def test_engine_worker_threads_freeze_virtual_time(name, frozen):
    """A live per-job engine thread (TTS stream, local LLM) freezes time; other threads do not."""

    async def main(loop):
        done = asyncio.Event()

        def job():
            time.sleep(0.2)
            loop.call_soon_threadsafe(done.set)

        thread = threading.Thread(target=job, name=name)

        async def work():
            thread.start()
            await done.wait()

        result = await _ticks_while(loop, work)
        thread.join()
        return result

    virtual, ticks = run(main)
    if frozen:
        assert (virtual, ticks) == (0.0, 0)
    else:
        assert virtual > 1.0 and ticks > 100  # the loop ran ahead while the thread slept


def test_pipecat_wall_clock_reads_virtual_time():
    import pipecat.transports.base_output as base_output

    async def main(loop):
        await asyncio.sleep(12.5)
        return base_output.time.time(), base_output.time.monotonic()

    wall, mono = run(main)
    assert wall == pytest.approx(VIRTUAL_EPOCH + 12.5) and mono == pytest.approx(12.5)
    assert base_output.time is time  # restored
