"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], reps: int) -> float:
    """Return the best wall time of ``reps`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def alternate(contenders: dict[str, Callable[[], object]], reps: int,
              warm: tuple[str, ...] | None = None) -> dict[str, float]:
    """Best wall time of each contender over ``reps`` rounds, alternating, after a warm-up
    call of those named in ``warm`` (None: all)."""
    for name, fn in contenders.items():
        if warm is None or name in warm:
            fn()
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(reps):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best
