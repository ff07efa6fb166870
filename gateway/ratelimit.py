"""Rate limits of the Web API: a day limit and a per-second burst per plan.

Each (client, subject) pair is counted apart, against its client's :class:`~gateway.accounts.Plan`:

- the day limit is a sliding window of 24 hours, counted in one-minute buckets (a request
  stops counting 24 hours after the end of its minute);
- the burst limit counts the requests of the current second of the clock.

A refused request is not counted. The counts live in this process's memory: several
gateway processes each count their own, so together they let through up to that many times
the plan's limits.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.accounts import Plan

__all__ = ["DAY_MS", "RateDecision", "RateLimiter"]

DAY_MS = 86_400_000
_BUCKET_MS = 60_000
_DAY_BUCKETS = DAY_MS // _BUCKET_MS


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether a request may go on, and the headers of its answer."""

    allowed: bool
    limit_day: int
    remaining_day: int
    limit_second: int
    remaining_second: int
    retry_after_s: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        """``X-RateLimit-*`` headers; on refusal also ``Retry-After`` and ``X-RateLimit-Reset``."""
        out = {
            "X-RateLimit-Limit-1": str(self.limit_day),
            "X-RateLimit-Remaining-1": str(self.remaining_day),
            "X-RateLimit-Limit-2": str(self.limit_second),
            "X-RateLimit-Remaining-2": str(self.remaining_second),
        }
        if self.retry_after_s is not None:
            out["Retry-After"] = str(self.retry_after_s)
            out["X-RateLimit-Reset"] = str(self.retry_after_s)
        return out


@dataclass(slots=True)
class _Counter:
    buckets: deque[list[int]] = field(default_factory=deque)  # [minute index, count]
    day_total: int = 0
    second: int = -1
    second_count: int = 0


class RateLimiter:
    """Counts requests per (client, subject) against their plan; ``clock_ms`` gives now."""

    def __init__(self, clock_ms: Callable[[], int] = _wall_ms) -> None:
        self._clock_ms = clock_ms
        self._counters: dict[tuple[str, str], _Counter] = {}
        self._lock = threading.Lock()

    def hit(self, plan: Plan, client_id: str, subject: str) -> RateDecision:
        """Count one request if the limits allow it; the decision and its headers."""
        now = self._clock_ms()
        minute, second = now // _BUCKET_MS, now // 1000
        with self._lock:
            counter = self._counters.setdefault((client_id, subject), _Counter())
            while counter.buckets and counter.buckets[0][0] < minute - _DAY_BUCKETS:
                counter.day_total -= counter.buckets.popleft()[1]
            if counter.second != second:
                counter.second, counter.second_count = second, 0
            retry_ms: int | None = None
            if counter.day_total >= plan.per_day:
                # Wait until enough of the oldest buckets leave the window.
                excess = counter.day_total - plan.per_day + 1
                for index, count in counter.buckets:
                    excess -= count
                    if excess <= 0:
                        retry_ms = (index + 1 + _DAY_BUCKETS) * _BUCKET_MS - now
                        break
            elif counter.second_count >= plan.per_second:
                retry_ms = (second + 1) * 1000 - now
            if retry_ms is None:
                counter.day_total += 1
                counter.second_count += 1
                if counter.buckets and counter.buckets[-1][0] == minute:
                    counter.buckets[-1][1] += 1
                else:
                    counter.buckets.append([minute, 1])
            return RateDecision(
                allowed=retry_ms is None,
                limit_day=plan.per_day,
                remaining_day=max(0, plan.per_day - counter.day_total),
                limit_second=plan.per_second,
                remaining_second=max(0, plan.per_second - counter.second_count),
                retry_after_s=None if retry_ms is None else max(1, -(-retry_ms // 1000)),
            )

    def forget(self, client_id: str, subject: str) -> None:
        """Drop the counts of one (client, subject) pair."""
        with self._lock:
            self._counters.pop((client_id, subject), None)
