"""Blocking work off the event loop in plain, short-lived threads that are joined when done.

``asyncio.to_thread`` parks its workers in a pool that outlives the call; here every thread ends with its job, so a
finished session leaves no thread behind (the tests count ``threading.enumerate()``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def run_in_thread(fn: Callable[..., T], *args: Any, name: str = "duplex-worker", **kwargs: Any) -> T:
    """Run ``fn`` in a new thread and await its result. If the awaiting task is cancelled the thread still runs to
    completion (it cannot be interrupted) and exits on its own; its result is dropped."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if done.done():
            return
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)

    def target() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:  # delivered to the awaiting task
            outcome = (False, e)
        else:
            outcome = (True, result)
        try:
            loop.call_soon_threadsafe(deliver, *outcome)
        except RuntimeError:  # the loop is closed: nobody is waiting
            pass

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        return await done
    finally:
        if done.done():
            thread.join()  # it has delivered; join only reaps it
