"""The thin client never draws from the global `random` generator: it belongs to the user,
whose seeded training run must stay reproducible while tracklog's threads back off (and
Hypothesis fails a test whose strategies see the global state move under them)."""

from __future__ import annotations

import random
from types import SimpleNamespace

from tracklog import sender, subscribe


def test_backoff_jitter_leaves_the_global_random_state_alone() -> None:
    random.seed(1234)
    before = random.getstate()
    delays = [subscribe._backoff(attempt) for attempt in range(1, 20)]
    fake = SimpleNamespace(options=SimpleNamespace(backoff_base=0.1, backoff_max=5.0))
    delays += [sender.Sender._backoff(fake, attempt) for attempt in range(1, 20)]  # type: ignore[arg-type]
    assert all(d > 0 for d in delays)
    assert random.getstate() == before
