"""Two clocks for one core: simulated time that jumps from event to event, and the wall clock."""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Callback", "Scheduler", "SimScheduler", "WallScheduler"]

Callback = Callable[[int], None]
"""A scheduled call; it receives the time (ms since the Unix epoch) it runs at."""


class Scheduler(Protocol):
    """What the box and the simulated car need of a clock."""

    @property
    def now_ms(self) -> int:
        """The current time in ms since the Unix epoch."""
        ...

    def call_at(self, at_ms: int, callback: Callback) -> None:
        """Run ``callback`` at ``at_ms`` (at once if that has passed)."""
        ...


class SimScheduler:
    """Simulated time: events run in time order, and time jumps between them.

    Events due at the same millisecond run in the order they were scheduled, so a run is
    deterministic.
    """

    def __init__(self, start_ms: int) -> None:
        self._now = start_ms
        self._heap: list[tuple[int, int, Callback]] = []
        self._order = itertools.count()
        self.events_run = 0

    @property
    def now_ms(self) -> int:
        """The simulated time."""
        return self._now

    def call_at(self, at_ms: int, callback: Callback) -> None:
        """Schedule ``callback`` at ``at_ms`` (not before now)."""
        heapq.heappush(self._heap, (max(at_ms, self._now), next(self._order), callback))

    def run_until(self, end_ms: int, after_each: Callable[[], None] | None = None) -> None:
        """Run every event due up to and including ``end_ms``, then set the time to it."""
        heap = self._heap
        while heap and heap[0][0] <= end_ms:
            at, _, callback = heapq.heappop(heap)
            self._now = at
            callback(at)
            self.events_run += 1
            if after_each is not None:
                after_each()
        self._now = max(self._now, end_ms)

    def run_for(self, duration_ms: int, after_each: Callable[[], None] | None = None) -> None:
        """Run the next ``duration_ms`` of simulated time."""
        self.run_until(self._now + duration_ms, after_each)


class WallScheduler:
    """The wall clock, for benches with real interfaces; :meth:`run_due` runs what is due.

    Time is kept with the monotonic clock from an epoch reading taken once, so a step of the
    system clock (an NTP correction, a GNSS time fix) neither stops nor bunches the timers.
    A callback receives the time it was scheduled for, so periodic timers keep their phase
    however late they run.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Callback]] = []
        self._order = itertools.count()
        self._epoch_offset_ns = time.time_ns() - time.monotonic_ns()

    @property
    def now_ms(self) -> int:
        """The time now, in ms since the Unix epoch."""
        return (time.monotonic_ns() + self._epoch_offset_ns) // 1_000_000

    def call_at(self, at_ms: int, callback: Callback) -> None:
        """Schedule ``callback`` at ``at_ms``."""
        heapq.heappush(self._heap, (at_ms, next(self._order), callback))

    def run_due(self) -> int:
        """Run every event whose time has come; returns how many ran."""
        now = self.now_ms
        ran = 0
        while self._heap and self._heap[0][0] <= now:
            at, _, callback = heapq.heappop(self._heap)
            callback(at)
            ran += 1
        return ran

    def seconds_to_next(self, cap: float) -> float:
        """Seconds until the next event, at most ``cap``."""
        if not self._heap:
            return cap
        return max(0.0, min(cap, (self._heap[0][0] - self.now_ms) / 1000))
