"""Calls run in threads started together, for tests of what several logs do at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

#: Seconds a call may take before the test fails.
JOIN_TIMEOUT = 120


def all_at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads started together; their results, in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    failures: list[BaseException] = []

    def run(at: int, call: Callable[[], Any]) -> None:
        barrier.wait(JOIN_TIMEOUT)
        try:
            results[at] = call()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive(), "a log did not finish"
    if failures:
        raise failures[0]
    return results
