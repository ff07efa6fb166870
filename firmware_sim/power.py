"""When the box sleeps and wakes, as a sans-I/O state machine.

After the ignition goes off the box stays awake ``stay_awake_ms`` (3 min by default); every
message in either direction pushes the moment it sleeps to ``stay_awake_ms`` after that
message. Asleep, the box samples and uploads nothing; its modem stays registered, and a
command arriving is the network's shoulder tap (``firmware_sim.command_link``). It wakes at
once when the ignition comes on or at an alarm it set itself (a preconditioning program),
and ``wake_delay_ms`` after a shoulder tap, within a budget of ``monthly_wakeups`` taps per
calendar month (UTC); a tap beyond it is refused with ``TooManyWakeUpsOverMonth``.
"""

from __future__ import annotations

import datetime as _dt
import enum
from dataclasses import dataclass, field

from firmware_sim.commands import ArmTimer, ReportStatus
from firmware_sim.downlink import FailureCause, RemoteStatus, StatusMessage

__all__ = [
    "PersistBudget",
    "PowerManager",
    "PowerOutput",
    "PowerState",
    "PowerStats",
    "Sleep",
    "Wake",
    "month_of",
]


class PowerState(enum.Enum):
    """The box's power state."""

    AWAKE = "awake"
    WAKING = "waking"  # a tap was taken; awake after the delay
    ASLEEP = "asleep"


@dataclass(frozen=True, slots=True)
class Sleep:
    """Go to sleep: stop sampling and uploading, close the connection."""


@dataclass(frozen=True, slots=True)
class Wake:
    """Wake up: reconnect and resume sampling. ``reason``: ignition, alarm or tap."""

    reason: str


@dataclass(frozen=True, slots=True)
class PersistBudget:
    """Write durably: ``used`` tap wake-ups in ``month`` ("YYYY-MM", UTC)."""

    month: str
    used: int


PowerOutput = Sleep | Wake | ArmTimer | ReportStatus | PersistBudget


@dataclass
class PowerStats:
    """What the power manager has done, for summaries."""

    sleeps: int = 0
    wakes: dict[str, int] = field(default_factory=dict)  # by reason
    taps_refused: int = 0
    taps_while_awake: int = 0


def month_of(t_ms: int) -> str:
    """The calendar month (UTC) of a time, as "YYYY-MM"."""
    return _dt.datetime.fromtimestamp(t_ms // 1000, _dt.UTC).strftime("%Y-%m")


class PowerManager:
    """The box's sleep and wake-up decisions."""

    def __init__(
        self,
        vin: str,
        *,
        stay_awake_ms: int = 180_000,
        wake_delay_ms: int = 10_000,
        monthly_wakeups: int = 20,
        budget: tuple[str, int] | None = None,
    ) -> None:
        """``budget``: the persisted (month, used) of :class:`PersistBudget`, if any."""
        self.vin = vin
        self.stay_awake_ms = stay_awake_ms
        self.wake_delay_ms = wake_delay_ms
        self.monthly_wakeups = monthly_wakeups
        self.state = PowerState.AWAKE
        self.ignition_on = False
        self.stats = PowerStats()
        self._month, self._used = budget if budget is not None else ("", 0)
        self._sleep_at: int | None = None
        self._wake_at: int | None = None
        self._now = 0

    def start(self, now_ms: int, *, ignition_on: bool) -> list[PowerOutput]:
        """Boot (awake): with the ignition off, sleep ``stay_awake_ms`` from now."""
        self._now = max(self._now, now_ms)
        self.ignition_on = ignition_on
        self.state = PowerState.AWAKE
        return self._keep_awake(self._now)

    # -- inputs ---------------------------------------------------------------------------

    def on_ignition(self, on: bool, now_ms: int) -> list[PowerOutput]:
        """The ignition changed (a hard-wired line: seen asleep too)."""
        now = self._tick(now_ms)
        if on == self.ignition_on:
            return []
        self.ignition_on = on
        out: list[PowerOutput] = []
        if on:
            self._sleep_at = None
            if self.state is not PowerState.AWAKE:
                self._wake(out, "ignition")
            return out
        out.extend(self._keep_awake(now))
        return out

    def on_activity(self, now_ms: int) -> list[PowerOutput]:
        """A message went up or came down: stay awake ``stay_awake_ms`` from now."""
        now = self._tick(now_ms)
        if self.state is not PowerState.AWAKE or self.ignition_on:
            return []
        return self._keep_awake(now)

    def shoulder_tap(self, now_ms: int, command_id: bytes = b"") -> list[PowerOutput]:
        """A command waits for the box: wake after ``wake_delay_ms`` if the budget allows."""
        now = self._tick(now_ms)
        if self.state is PowerState.AWAKE:
            self.stats.taps_while_awake += 1
            return self.on_activity(now)
        if self.state is PowerState.WAKING:
            return []
        month = month_of(now)
        if month != self._month:
            self._month, self._used = month, 0
        if self._used >= self.monthly_wakeups:
            self.stats.taps_refused += 1
            message = StatusMessage(
                command_id=command_id,
                vin=self.vin,
                status=RemoteStatus.FAILED,
                failure_cause=FailureCause.TOO_MANY_WAKE_UPS_OVER_MONTH,
                at_ms=now,
                detail=f"wake_budget_spent: {self._used} of {self.monthly_wakeups} in {month}",
            )
            return [ReportStatus(message)]
        self._used += 1
        self.state = PowerState.WAKING
        self._wake_at = now + self.wake_delay_ms
        return [PersistBudget(self._month, self._used), ArmTimer(self._wake_at)]

    def alarm(self, now_ms: int, reason: str = "alarm") -> list[PowerOutput]:
        """Wake at once, off budget: a time the box set for itself (a program) has come, or
        the car woke the box (``reason`` ``"charging"``: the car started charging)."""
        now = self._tick(now_ms)
        out: list[PowerOutput] = []
        if self.state is not PowerState.AWAKE:
            self._wake(out, reason)
        elif not self.ignition_on:
            out.extend(self._keep_awake(now))
        return out

    def on_timer(self, now_ms: int) -> list[PowerOutput]:
        """A timer is due: finish waking, or go to sleep."""
        now = self._tick(now_ms)
        out: list[PowerOutput] = []
        if self.state is PowerState.WAKING and self._wake_at is not None and now >= self._wake_at:
            self._wake(out, "tap")
        elif (
            self.state is PowerState.AWAKE
            and not self.ignition_on
            and self._sleep_at is not None
            and now >= self._sleep_at
        ):
            self.state = PowerState.ASLEEP
            self._sleep_at = None
            self.stats.sleeps += 1
            out.append(Sleep())
        return out

    # -- queries --------------------------------------------------------------------------

    @property
    def sleep_at_ms(self) -> int | None:
        """When the box will sleep (None: not while the ignition is on or it sleeps)."""
        return self._sleep_at

    def wakeups_left(self, now_ms: int) -> int:
        """Tap wake-ups left in the month of ``now_ms``."""
        used = self._used if month_of(now_ms) == self._month else 0
        return max(0, self.monthly_wakeups - used)

    # -- helpers --------------------------------------------------------------------------

    def _tick(self, now_ms: int) -> int:
        self._now = max(self._now, now_ms)
        return self._now

    def _keep_awake(self, now: int) -> list[PowerOutput]:
        if self.ignition_on:
            self._sleep_at = None
            return []
        at = now + self.stay_awake_ms
        if self._sleep_at is not None and self._sleep_at >= at:
            return []
        self._sleep_at = at
        return [ArmTimer(at)]

    def _wake(self, out: list[PowerOutput], reason: str) -> None:
        self.state = PowerState.AWAKE
        self._wake_at = None
        self.stats.wakes[reason] = self.stats.wakes.get(reason, 0) + 1
        out.append(Wake(reason))
        out.extend(self._keep_awake(self._now))
