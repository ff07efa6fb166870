"""Rate limits: the per-second burst and the sliding day, on a simulated clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.accounts import Plan
from gateway.ratelimit import DAY_MS, RateLimiter

T0 = 1_780_000_020_000  # a whole minute
PLAN = Plan("p", per_day=10, per_second=3)


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_headers_count_down_both_limits() -> None:
    limiter = RateLimiter(Clock())
    first = limiter.hit(PLAN, "c", "s")
    assert first.allowed and first.retry_after_s is None
    assert first.headers == {
        "X-RateLimit-Limit-1": "10",
        "X-RateLimit-Remaining-1": "9",
        "X-RateLimit-Limit-2": "3",
        "X-RateLimit-Remaining-2": "2",
    }


def test_the_burst_limit_refuses_within_the_second_only() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    assert all(limiter.hit(PLAN, "c", "s").allowed for _ in range(3))
    clock.now += 400
    refused = limiter.hit(PLAN, "c", "s")
    assert not refused.allowed and refused.retry_after_s == 1
    assert refused.headers["Retry-After"] == "1" == refused.headers["X-RateLimit-Reset"]
    assert refused.remaining_second == 0 and refused.remaining_day == 7  # not counted
    clock.now += 600
    again = limiter.hit(PLAN, "c", "s")
    assert again.allowed and again.remaining_second == 2 and again.remaining_day == 6


def test_the_day_limit_slides() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    plan = Plan("day", per_day=10, per_second=100)
    for _ in range(4):  # 4 at T0, then 6 an hour later
        assert limiter.hit(plan, "c", "s").allowed
    clock.now += 3_600_000
    for _ in range(6):
        assert limiter.hit(plan, "c", "s").allowed
        clock.now += 1000
    refused = limiter.hit(plan, "c", "s")
    assert not refused.allowed and refused.remaining_day == 0
    # The first four leave the window 24 h after the end of their minute.
    free_at = T0 + 60_000 + DAY_MS
    assert refused.retry_after_s == -(-(free_at - clock.now) // 1000)
    clock.now = free_at - 1
    assert not limiter.hit(plan, "c", "s").allowed
    clock.now = free_at
    decision = limiter.hit(plan, "c", "s")
    assert decision.allowed and decision.remaining_day == 3


def test_each_client_and_subject_counts_apart() -> None:
    limiter = RateLimiter(Clock())
    for _ in range(3):
        limiter.hit(PLAN, "c", "s")
    assert not limiter.hit(PLAN, "c", "s").allowed
    assert limiter.hit(PLAN, "c", "t").allowed
    assert limiter.hit(PLAN, "d", "s").allowed
    assert limiter.hit(Plan("big", 100, 100), "c", "s").allowed  # the plan's own limits
    limiter.forget("c", "s")
    assert limiter.hit(PLAN, "c", "s").remaining_day == 9


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.just(0), st.integers(0, 3000), st.integers(DAY_MS - 120_000, DAY_MS + 120_000)
        ),
        max_size=80,
    ),
    st.integers(1, 5),
    st.integers(1, 20),
)
def test_no_window_ever_lets_more_through_than_the_plan(
    steps_ms: list[int], per_second: int, per_day: int
) -> None:
    plan = Plan("p", per_day=per_day, per_second=per_second)
    clock = Clock()
    limiter = RateLimiter(clock)
    allowed: list[int] = []
    for step in steps_ms:
        clock.now += step  # many at one instant, some a second apart, some about a day
        decision = limiter.hit(plan, "c", "s")
        assert 0 <= decision.remaining_day <= per_day
        assert 0 <= decision.remaining_second <= per_second
        if decision.allowed:
            allowed.append(clock.now)
        else:
            assert decision.retry_after_s is not None and decision.retry_after_s >= 1
            assert decision.retry_after_s <= DAY_MS // 1000 + 60
    for t in allowed:
        assert sum(1 for u in allowed if u // 1000 == t // 1000) <= per_second
        assert sum(1 for u in allowed if t <= u < t + DAY_MS) <= per_day


@settings(max_examples=100)
@given(st.lists(st.integers(0, 90_000), min_size=1, max_size=40))
def test_after_retry_after_a_request_goes_through(steps_ms: list[int]) -> None:
    plan = Plan("p", per_day=6, per_second=2)
    clock = Clock()
    limiter = RateLimiter(clock)
    for step in steps_ms:
        clock.now += step
        decision = limiter.hit(plan, "c", "s")
        if not decision.allowed:
            assert decision.retry_after_s is not None
            clock.now += decision.retry_after_s * 1000
            assert limiter.hit(plan, "c", "s").allowed
