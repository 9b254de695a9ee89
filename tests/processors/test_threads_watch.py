"""``processors.threads.watch``: the callback comes within a poll of the event being set or of the deadline, once;
``stop`` prevents it; ``extend`` moves the deadline; the watcher thread exists only while something is watched."""

from __future__ import annotations

import threading
import time

from processors.threads import WATCH_POLL_S, watch


def watcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "duplex-watch"]


def wait_for(predicate, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.001)
    return predicate()


def test_set_event_fires_once_within_a_poll():
    event, calls = threading.Event(), []
    w = watch(event, lambda reason: calls.append((reason, time.perf_counter())))
    time.sleep(0.02)
    assert not calls
    t0 = time.perf_counter()
    event.set()
    assert wait_for(lambda: calls)
    assert calls[0][0] == "set" and w.fired == "set"
    assert calls[0][1] - t0 < WATCH_POLL_S + 0.05  # a poll, plus scheduling on a busy machine
    time.sleep(0.03)
    assert len(calls) == 1
    assert wait_for(lambda: not watcher_threads())  # nothing watched: the thread is gone


def test_deadline_fires_and_extend_moves_it():
    calls = []
    w = watch(threading.Event(), calls.append, timeout_s=0.05)
    time.sleep(0.03)
    w.extend(0.1)
    time.sleep(0.05)
    assert not calls  # the first deadline passed, but was moved
    assert wait_for(lambda: calls == ["timeout"])
    assert w.fired == "timeout"


def test_stop_prevents_the_callback():
    event, calls = threading.Event(), []
    w = watch(event, calls.append, timeout_s=0.02)
    w.stop()
    event.set()
    time.sleep(0.05)
    assert not calls and w.fired is None


def test_many_watches_share_one_thread_and_a_failing_callback_harms_none():
    events = [threading.Event() for _ in range(20)]
    fired = []

    def callback(i):
        def call(reason):
            if i == 3:
                raise RuntimeError("a broken callback")
            fired.append(i)

        return call

    watches = [watch(e, callback(i)) for i, e in enumerate(events)]
    assert len(watcher_threads()) == 1
    for e in events:
        e.set()
    assert wait_for(lambda: len(fired) == 19)
    assert all(w.fired == "set" for w in watches)
