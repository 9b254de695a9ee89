"""The virtual-time loop hands results from other threads over in a fixed order, so work computed in the same
virtual instant always meets in the same order: executor jobs in submission order, then each thread's callbacks in
the order it posted them. Virtual time stands still while they compute."""

from __future__ import annotations

import asyncio
import threading
import time

import agent.replay.clock as clock
from agent.replay.clock import VirtualTimeLoop


def run(coro_factory, loop: VirtualTimeLoop | None = None):
    loop = loop or VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro_factory()), loop
    finally:
        loop.close()


async def jobs_and_a_thread():
    loop = asyncio.get_running_loop()
    order: list[str] = []
    t0 = loop.time()

    async def job(name: str, seconds: float):
        await loop.run_in_executor(None, time.sleep, seconds)
        order.append(name)

    def engine():  # an engine worker thread posting results as it goes
        loop.call_soon_threadsafe(order.append, "thread 1")
        time.sleep(0.03)
        loop.call_soon_threadsafe(order.append, "thread 2")

    worker = threading.Thread(target=engine, name="tts-test")
    worker.start()
    tasks = [asyncio.create_task(job("slow job", 0.06)), asyncio.create_task(job("fast job", 0.0))]
    await asyncio.gather(*tasks)
    await asyncio.sleep(0)
    worker.join()
    return order, loop.time() - t0


def test_results_in_a_fixed_order_at_one_virtual_instant():
    """In real time the fast job finishes before the slow one and the thread posts in between; on the virtual clock
    the order is fixed, run after run: the jobs' results in submission order (their awaiting tasks resume one loop
    step after the hand-over, so the thread's posts, run directly, come first), and no virtual time passes."""
    for _ in range(3):
        (order, elapsed), _loop = run(jobs_and_a_thread)
        assert order == ["thread 1", "thread 2", "slow job", "fast job"]
        assert elapsed == 0.0
    plain = asyncio.new_event_loop()  # the same work on an ordinary loop: real-time order
    try:
        order, _ = plain.run_until_complete(jobs_and_a_thread())
    finally:
        plain.close()
    assert order[0] == "thread 1" and order.index("fast job") < order.index("slow job")


def test_a_worker_waiting_for_the_loop_is_not_starved(monkeypatch):
    """A busy thread that waits for the loop to run its callback would wait forever for a hand-over at idle: after
    ``HANDOVER_WAIT_S`` the results are handed over anyway (counted, since their order is no longer guaranteed)."""
    monkeypatch.setattr(clock, "HANDOVER_WAIT_S", 0.2)

    async def waits_for_loop():
        loop = asyncio.get_running_loop()
        done = threading.Event()

        def engine():
            loop.call_soon_threadsafe(done.set)
            assert done.wait(10), "the loop never ran the callback"

        worker = threading.Thread(target=engine, name="tts-waiting")
        worker.start()
        while worker.is_alive():
            await asyncio.sleep(0.01)
        return done.is_set()

    ok, loop = run(waits_for_loop)
    assert ok and loop.unordered_handovers >= 1
