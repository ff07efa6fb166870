"""The box's sleep and wake-up decisions, in simulated time."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.commands import ArmTimer, ReportStatus
from firmware_sim.downlink import FailureCause, RemoteStatus
from firmware_sim.power import (
    PersistBudget,
    PowerManager,
    PowerOutput,
    PowerState,
    Sleep,
    Wake,
    month_of,
)

VIN = "VF3ABCDEFL1234567"
T0 = 1_706_659_200_000  # 2024-01-31 00:00 UTC
MIN = 60_000


class Bench:
    """A power manager whose timers run in simulated time."""

    def __init__(self, pm: PowerManager, *, ignition_on: bool = False) -> None:
        self.pm = pm
        self.now = T0
        self.timers: list[int] = []
        self.events: list[tuple[int, PowerOutput]] = []
        self.take(pm.start(T0, ignition_on=ignition_on))

    def take(self, outputs: Sequence[PowerOutput]) -> None:
        for out in outputs:
            if isinstance(out, ArmTimer):
                heapq.heappush(self.timers, out.at_ms)
            else:
                self.events.append((self.now, out))

    def run_until(self, t: int) -> None:
        while self.timers and self.timers[0] <= t:
            self.now = max(self.now, heapq.heappop(self.timers))
            self.take(self.pm.on_timer(self.now))
        self.now = max(self.now, t)

    def sleeps(self) -> list[int]:
        return [t for t, e in self.events if isinstance(e, Sleep)]

    def wakes(self) -> list[tuple[int, str]]:
        return [(t, e.reason) for t, e in self.events if isinstance(e, Wake)]


def state(b: Bench) -> PowerState:
    return b.pm.state


def test_stays_awake_after_ignition_off_then_sleeps() -> None:
    b = Bench(PowerManager(VIN), ignition_on=True)
    b.run_until(T0 + 60 * MIN)
    assert b.sleeps() == []  # never while the ignition is on
    b.take(b.pm.on_ignition(False, b.now))
    b.run_until(b.now + 3 * MIN - 1)
    assert state(b) is PowerState.AWAKE
    b.run_until(b.now + 1)
    assert b.sleeps() == [T0 + 63 * MIN]
    assert state(b) is PowerState.ASLEEP


def test_each_message_keeps_it_awake_three_more_minutes() -> None:
    b = Bench(PowerManager(VIN))
    for k in range(1, 5):  # a message every 2 minutes
        b.run_until(T0 + 2 * k * MIN)
        b.take(b.pm.on_activity(b.now))
    b.run_until(T0 + 60 * MIN)
    assert b.sleeps() == [T0 + 8 * MIN + 3 * MIN]
    b.take(b.pm.on_activity(b.now))  # nothing comes or goes asleep: no effect
    assert state(b) is PowerState.ASLEEP


def test_shoulder_tap_wakes_after_the_delay_and_uses_the_budget() -> None:
    b = Bench(PowerManager(VIN, wake_delay_ms=8_000, monthly_wakeups=3))
    b.run_until(T0 + 10 * MIN)
    assert state(b) is PowerState.ASLEEP
    b.take(b.pm.shoulder_tap(b.now, b"c" * 16))
    b.take(b.pm.shoulder_tap(b.now + 1_000, b"d" * 16))  # already waking: free
    assert state(b) is PowerState.WAKING
    b.run_until(b.now + 7_999)
    assert b.wakes() == []
    b.run_until(b.now + 1)
    assert b.wakes() == [(T0 + 10 * MIN + 8_000, "tap")]
    assert [e for _, e in b.events if isinstance(e, PersistBudget)] == [PersistBudget("2024-01", 1)]
    assert b.pm.wakeups_left(b.now) == 2
    b.take(b.pm.shoulder_tap(b.now))  # awake: no wake-up, keeps it awake
    assert b.pm.wakeups_left(b.now) == 2
    b.run_until(b.now + 3 * MIN)
    assert len(b.sleeps()) == 2


def test_budget_spent_refuses_until_the_next_month() -> None:
    b = Bench(PowerManager(VIN, wake_delay_ms=1_000, monthly_wakeups=2, stay_awake_ms=MIN))
    refused = []
    for _ in range(3):
        b.run_until(b.now + 2 * MIN)  # asleep again
        outs = b.pm.shoulder_tap(b.now, b"x" * 16)
        refused += [o.message for o in outs if isinstance(o, ReportStatus)]
        b.take(outs)
    assert len(b.wakes()) == 2
    assert len(refused) == 1
    msg = refused[0]
    assert msg.status is RemoteStatus.FAILED
    assert msg.failure_cause is FailureCause.TOO_MANY_WAKE_UPS_OVER_MONTH
    assert msg.command_id == b"x" * 16
    assert msg.detail.startswith("wake_budget_spent")
    assert state(b) is PowerState.ASLEEP
    # 2024-02-01 00:00 UTC: a new month, a new budget.
    b.run_until(T0 + 24 * 60 * MIN)
    assert month_of(b.now) == "2024-02"
    assert b.pm.wakeups_left(b.now) == 2
    b.take(b.pm.shoulder_tap(b.now))
    b.run_until(b.now + 1_000)
    assert len(b.wakes()) == 3


def test_budget_survives_a_reboot() -> None:
    pm = PowerManager(VIN, monthly_wakeups=5, budget=("2024-01", 5))
    b = Bench(pm)
    b.run_until(T0 + 5 * MIN)
    outs = pm.shoulder_tap(b.now)
    assert isinstance(outs[0], ReportStatus)
    assert outs[0].message.command_id == b""


def test_ignition_and_alarm_wake_at_once_off_budget() -> None:
    b = Bench(PowerManager(VIN, monthly_wakeups=0))
    b.run_until(T0 + 5 * MIN)
    b.take(b.pm.on_ignition(True, b.now))
    assert b.wakes() == [(T0 + 5 * MIN, "ignition")]
    b.take(b.pm.on_ignition(False, b.now))
    b.run_until(b.now + 3 * MIN)
    b.take(b.pm.alarm(b.now))
    assert b.wakes()[-1] == (T0 + 8 * MIN, "alarm")
    b.run_until(b.now + 3 * MIN)
    assert b.sleeps() == [T0 + 3 * MIN, T0 + 8 * MIN, T0 + 11 * MIN]
    assert b.pm.stats.wakes == {"ignition": 1, "alarm": 1}


_STEP = st.tuples(
    st.sampled_from(["ignition_on", "ignition_off", "activity", "tap", "alarm"]),
    st.integers(0, 10 * MIN),
)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(_STEP, max_size=40))
def test_any_sequence_alternates_sleep_and_wake_and_keeps_the_budget(
    steps: list[tuple[str, int]],
) -> None:
    b = Bench(PowerManager(VIN, monthly_wakeups=3))
    taps_taken = 0
    for kind, dt in steps:
        b.run_until(b.now + dt)
        before = b.pm.state
        if kind == "tap":
            outs = b.pm.shoulder_tap(b.now)
            taps_taken += before is PowerState.ASLEEP and any(
                isinstance(o, PersistBudget) for o in outs
            )
            b.take(outs)
        elif kind == "alarm":
            b.take(b.pm.alarm(b.now))
        elif kind == "activity":
            b.take(b.pm.on_activity(b.now))
        else:
            b.take(b.pm.on_ignition(kind == "ignition_on", b.now))
    b.run_until(b.now + 60 * MIN)
    transitions = [type(e).__name__ for _, e in b.events if isinstance(e, Sleep | Wake)]
    assert all(a != c for a, c in itertools.pairwise(transitions))
    assert not transitions or transitions[0] == "Sleep"
    assert taps_taken <= 3  # T0 and 40 steps of at most 10 min stay within two months
    if not b.pm.ignition_on:
        assert state(b) is PowerState.ASLEEP
