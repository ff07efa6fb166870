"""The box's remote command executor, as a sans-I/O state machine.

:class:`CommandExecutor` takes verified commands (:class:`~firmware_sim.downlink.Command`),
the live signals decoded from the bus, the body controller's command feedback
(``BSI_CmdFeedback``) and timers due, and returns outputs: a command request frame to put on
the bus (``TCU_CmdRequest``), a status message to publish, a timer to arm, an upload to
request, state to persist. It reads no clock and does no I/O: the same inputs always give the
same outputs. ``docs/commands.md`` describes the rules.

The body controller reports the state of the *last* request it received, so requests go on
the bus one at a time: a command waits in the queue (in gateway order) until the one before
it has its answer or has timed out.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from can_dbc.catalog import Catalog
from can_dbc.network import COMMAND_REQUEST, CommandAction, CommandResult
from firmware_sim.downlink import Command, FailureCause, RemoteStatus, StatusMessage
from firmware_sim.errors import TcuError

__all__ = [
    "DAY_MS",
    "MINUTE_MS",
    "ArmTimer",
    "CommandExecutor",
    "CommandStateError",
    "ExecutorState",
    "ExecutorStats",
    "Output",
    "PersistState",
    "Program",
    "ReportStatus",
    "RequestUpload",
    "SendFrame",
    "next_program_time",
]

MINUTE_MS = 60_000
DAY_MS = 86_400_000
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)

SPEED = "Vehicle.Speed"
IGNITION = "Vehicle.LowVoltageSystemState"
DOORS = (
    "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen",
    "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen",
    "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen",
    "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen",
    "Vehicle.Body.Trunk.Rear.IsOpen",
)
LV_VOLTAGE = "Vehicle.LowVoltageBattery.CurrentVoltage"
LV_SOC = "Vehicle.LowVoltageBattery.StateOfCharge"
TRACTION_SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
CHARGING_STATE = "Vehicle.Powertrain.TractionBattery.Charging.ChargingState"
CABLE = "Vehicle.Powertrain.TractionBattery.Charging.IsChargingCableConnected"
PRIVACY = "Vehicle.Connectivity.PrivacySetting"
LIGHTS_FLASHING = "Vehicle.Body.Lights.IsFlashing"
HORN_ACTIVE = "Vehicle.Body.Horn.IsActive"

IGNITION_ON = frozenset({2, 3})  # On, Start
_PRIVACY_FULL = 2
_CHARGING_FAILURE = 2

#: Actions refused under the privacy setting Full: a status refresh (its only purpose is
#: data Full withholds) and the locating aids (horn, lights).
PRIVACY_REFUSED = frozenset({"wakeup", "horn", "lights"})
#: Requests refused while the vehicle is declared stolen.
STOLEN_REFUSED = frozenset(
    {
        CommandAction.UNLOCK,
        CommandAction.PRECOND_START,
        CommandAction.CHARGE_START,
        CommandAction.CHARGE_DEFERRED,
    }
)
#: Requests for a parked car, refused while it moves or its ignition is on.
IN_USE_REFUSED = frozenset(
    {
        CommandAction.HORN,
        CommandAction.LIGHTS,
        CommandAction.LOCK,
        CommandAction.UNLOCK,
        CommandAction.PRECOND_START,
    }
)
#: Requests refused with a door (or the trunk) open.
DOORS_REFUSED = frozenset({CommandAction.LOCK, CommandAction.PRECOND_START})
_CHARGE_ACTIONS = frozenset(
    {CommandAction.CHARGE_START, CommandAction.CHARGE_DEFERRED, CommandAction.CHARGE_STOP}
)

Value = float | int | bool


class CommandStateError(TcuError):
    """The executor's persisted state does not decode."""


# -- outputs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendFrame:
    """Put this frame on the bus once (``signals`` by DBC signal name, raw values)."""

    name: str
    signals: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ReportStatus:
    """Publish this status message on the command status topic."""

    message: StatusMessage


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Call ``on_timer`` at ``at_ms`` (an earlier timer still armed may fire harmlessly)."""

    at_ms: int


@dataclass(frozen=True, slots=True)
class RequestUpload:
    """A wake-up command succeeded: upload everything collected now (a fresh status)."""


@dataclass(frozen=True, slots=True)
class PersistState:
    """Write this state durably (it replaces the previous one)."""

    state: ExecutorState


Output = SendFrame | ReportStatus | ArmTimer | RequestUpload | PersistState


# -- durable state ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Program:
    """A preconditioning program: on the weekdays of ``days`` (bit 0 Monday .. bit 6 Sunday)
    at ``start_min`` minutes after midnight UTC."""

    slot: int
    enabled: bool
    days: int
    start_min: int

    def __post_init__(self) -> None:
        if not 1 <= self.slot <= 4:
            raise ValueError(f"slot {self.slot} is not 1..4")
        if not 0 <= self.days <= 127:
            raise ValueError(f"days {self.days} is not 0..127")
        if not 0 <= self.start_min <= 1439:
            raise ValueError(f"start_min {self.start_min} is not 0..1439")


@dataclass(frozen=True, slots=True)
class ExecutorState:
    """What the executor keeps across reboots."""

    counter: int = 0  # the last CmdCounter sent (0: none yet)
    programs: tuple[Program, ...] = ()  # by slot
    stolen: bool = False
    charge_level: int | None = None  # the last charge preferences received
    charge_type: str | None = None

    def to_bytes(self) -> bytes:
        """A canonical JSON encoding."""
        body = {
            "format": "tcusim-commands/1",
            "counter": self.counter,
            "programs": [
                {"slot": p.slot, "enabled": p.enabled, "days": p.days, "start_min": p.start_min}
                for p in self.programs
            ],
            "stolen": self.stolen,
            "charge_level": self.charge_level,
            "charge_type": self.charge_type,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ExecutorState:
        """Decode :meth:`to_bytes`; :class:`CommandStateError` when it does not decode."""
        try:
            body = json.loads(data)
            if not isinstance(body, dict) or body.get("format") != "tcusim-commands/1":
                raise ValueError("not a tcusim-commands/1 state")
            counter = body["counter"]
            if type(counter) is not int or not 0 <= counter <= 255:
                raise ValueError(f"counter {counter!r} is not 0..255")
            programs = []
            for item in body["programs"]:
                values = (item["slot"], item["enabled"], item["days"], item["start_min"])
                kinds = (int, bool, int, int)
                if not all(type(v) is t for v, t in zip(values, kinds, strict=True)):
                    raise ValueError(f"program {item!r} has a value of the wrong type")
                programs.append(Program(*values))
            if len({p.slot for p in programs}) != len(programs):
                raise ValueError("two programs in one slot")
            stolen = body["stolen"]
            level, kind = body["charge_level"], body["charge_type"]
            if type(stolen) is not bool:
                raise ValueError(f"stolen {stolen!r} is not a bool")
            if level is not None and type(level) is not int:
                raise ValueError(f"charge_level {level!r} is not an int")
            if kind is not None and not isinstance(kind, str):
                raise ValueError(f"charge_type {kind!r} is not a string")
        except (ValueError, KeyError, TypeError) as exc:
            raise CommandStateError(f"command state: {exc}") from exc
        return cls(counter, tuple(sorted(programs, key=lambda p: p.slot)), stolen, level, kind)


def next_program_time(programs: Iterable[Program], after_ms: int) -> int | None:
    """The first time strictly after ``after_ms`` an enabled program starts, or None."""
    best: int | None = None
    midnight = after_ms - after_ms % DAY_MS
    for program in programs:
        if not program.enabled or not program.days:
            continue
        for offset in range(8):
            day = midnight + offset * DAY_MS
            weekday = (day // DAY_MS + _EPOCH_WEEKDAY) % 7
            at = day + program.start_min * MINUTE_MS
            if program.days >> weekday & 1 and at > after_ms:
                if best is None or at < best:
                    best = at
                break
    return best


# -- jobs ---------------------------------------------------------------------------------


class _Phase(enum.Enum):
    QUEUED = "queued"
    WAKING = "waking"  # the WakeUp request is on the bus
    SENT = "sent"  # the command's request is on the bus


@dataclass
class _Job:
    """One unit of work for the bus: a command, or a program's start (no command)."""

    command: Command | None
    kind: str  # the downlink action ("precond" for a program start)
    request: CommandAction | None  # None: handled in the box alone
    params: tuple[int, ...] = ()
    programs: tuple[Program, ...] = ()  # precond: programs to store
    stolen: bool | None = None
    charge_prefs: tuple[int, str] | None = None
    phase: _Phase = _Phase.QUEUED
    counter: int = 0
    deadline_ms: int = 0
    acked: bool = False

    @property
    def key(self) -> tuple[str, CommandAction | None]:
        return (self.kind, self.request)


class _BadParams(Exception):
    """A command's parameters the executor cannot act on."""


def _int(params: Mapping[str, Any], name: str, lo: int, hi: int) -> int:
    value = params.get(name)
    if type(value) is not int or not lo <= value <= hi:
        raise _BadParams(f"{name} {value!r} is not {lo}..{hi}")
    return value


def _bool(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name)
    if type(value) is not bool:
        raise _BadParams(f"{name} {value!r} is not a bool")
    return value


def _action_name(command: Command) -> str:
    action = command.action
    return str(getattr(action, "value", action))


def _job_of(command: Command) -> _Job:
    """The job a command gives; :class:`_BadParams` when its parameters do not fit."""
    kind = _action_name(command)
    params: Mapping[str, Any] = command.params
    if kind == "horn":
        return _Job(command, kind, CommandAction.HORN, (_int(params, "beeps", 1, 10),))
    if kind == "lights":
        return _Job(command, kind, CommandAction.LIGHTS, (_int(params, "duration_s", 1, 60),))
    if kind == "lock":
        return _Job(command, kind, CommandAction.LOCK)
    if kind == "unlock":
        return _Job(command, kind, CommandAction.UNLOCK)
    if kind == "wakeup":
        return _Job(command, kind, CommandAction.WAKE_UP)
    if kind == "precond":
        request = None
        if "immediate" in params:
            start = _bool(params, "immediate")
            request = CommandAction.PRECOND_START if start else CommandAction.PRECOND_STOP
        programs = []
        raw = params.get("programs", [])
        if not isinstance(raw, list | tuple) or len(raw) > 4:
            raise _BadParams("programs is not a list of at most 4")
        for item in raw:
            if not isinstance(item, Mapping):
                raise _BadParams(f"program {item!r} is not a map")
            programs.append(
                Program(
                    _int(item, "slot", 1, 4),
                    _bool(item, "enabled"),
                    _int(item, "days", 0, 127),
                    _int(item, "start_min", 0, 1439),
                )
            )
        if len({p.slot for p in programs}) != len(programs):
            raise _BadParams("two programs for one slot")
        if request is None and not programs:
            raise _BadParams("neither immediate nor programs")
        return _Job(command, kind, request, programs=tuple(programs))
    if kind == "charge":
        prefs = None
        if "preferences" in params:
            raw_prefs = params["preferences"]
            if not isinstance(raw_prefs, Mapping):
                raise _BadParams("preferences is not a map")
            level = _int(raw_prefs, "level", 1, 5)
            charge_type = raw_prefs.get("type")
            if charge_type not in ("Partial", "Full"):
                raise _BadParams(f"type {charge_type!r} is not Partial or Full")
            prefs = (level, str(charge_type))
        if "delayed_to_min" in params:
            minute = _int(params, "delayed_to_min", 0, 1439)
            job = _Job(command, kind, CommandAction.CHARGE_DEFERRED, (minute // 60, minute % 60))
        elif "immediate" in params:
            now = _bool(params, "immediate")
            job = _Job(
                command, kind, CommandAction.CHARGE_START if now else CommandAction.CHARGE_STOP
            )
        elif prefs is not None:
            job = _Job(command, kind, None)
        else:
            raise _BadParams("neither immediate, delayed_to_min nor preferences")
        job.charge_prefs = prefs
        return job
    if kind == "stolen":
        return _Job(command, kind, None, stolen=_bool(params, "stolen"))
    if kind == "immobilize":
        on = _bool(params, "activate")
        request = CommandAction.IMMOBILIZER_ON if on else CommandAction.IMMOBILIZER_OFF
        return _Job(command, kind, request)
    raise _BadParams(f"unknown action {kind!r}")


# -- the executor -------------------------------------------------------------------------


@dataclass
class ExecutorStats:
    """What the executor has done, for summaries."""

    submitted: int = 0
    duplicates: int = 0  # a command id already pending, submitted again (ignored)
    by_status: dict[str, int] = field(default_factory=dict)  # final statuses
    by_cause: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    programs_fired: int = 0
    programs_skipped: dict[str, int] = field(default_factory=dict)  # by reason
    ignored_feedback: int = 0  # matching counter, other action: not ours
    ignored_signals: int = 0  # names not in the catalog


_DONE = frozenset({RemoteStatus.SUCCESS, RemoteStatus.ALREADY_DONE, RemoteStatus.FAILED})


class CommandExecutor:
    """Runs verified commands on the car's bus, one at a time, and reports their statuses."""

    def __init__(
        self,
        vin: str,
        catalog: Catalog,
        *,
        state: ExecutorState | None = None,
        feedback_timeout_ms: int = 5_000,
        completion_timeout_ms: int = 90_000,
        wake_timeout_ms: int = 30_000,
        moving_kmh: float = 1.0,
        min_traction_soc_pct: float = 20.0,
        min_lv_soc_pct: float = 30.0,
        min_lv_voltage_v: float = 11.8,
        max_queue: int = 16,
        program_grace_ms: int = 10 * MINUTE_MS,
        car_asleep: bool = False,
    ) -> None:
        """``feedback_timeout_ms``: how long a request may go without any answer with its
        counter; ``completion_timeout_ms``: how long, from the request, an answered one may
        stay in progress; ``wake_timeout_ms``: how long the car may take to wake up."""
        self.vin = vin
        self.catalog = catalog
        self.feedback_timeout_ms = feedback_timeout_ms
        self.completion_timeout_ms = completion_timeout_ms
        self.wake_timeout_ms = wake_timeout_ms
        self.moving_kmh = moving_kmh
        self.min_traction_soc_pct = min_traction_soc_pct
        self.min_lv_soc_pct = min_lv_soc_pct
        self.min_lv_voltage_v = min_lv_voltage_v
        self.max_queue = max_queue
        self.program_grace_ms = program_grace_ms
        self.state = state or ExecutorState()
        self.car_asleep = car_asleep
        self.signals: dict[str, Value] = {}
        self.stats = ExecutorStats()
        self._names = {s.id: s.name for s in catalog.signals}
        self._known = frozenset(self._names.values())
        self._queue: deque[_Job] = deque()
        self._active: _Job | None = None
        self._now = 0
        self._programs_until: int | None = None
        self._bus_counter = 0  # the last FbCounter seen
        self._armed: int | None = None

    # -- inputs ---------------------------------------------------------------------------

    def start(self, now_ms: int) -> list[Output]:
        """Begin: program times after ``now_ms`` fire from now on."""
        self._now = max(self._now, now_ms)
        self._programs_until = self._now
        return self._finish_step([])

    def submit(self, command: Command, now_ms: int) -> list[Output]:
        """Take a verified command: Accepted, then queued behind the ones before it."""
        now = self._tick(now_ms)
        out: list[Output] = []
        if any(j.command is not None and j.command.id == command.id for j in self._jobs()):
            self.stats.duplicates += 1
            return self._finish_step(out)
        self.stats.submitted += 1
        if len(self._queue) >= self.max_queue:
            self._report_done(
                out,
                command,
                now,
                RemoteStatus.FAILED,
                cause=FailureCause.TOO_MANY_REQUEST_IN_SHORT_TIME,
                detail=f"queue_full: {len(self._queue)} commands wait",
            )
            return self._finish_step(out)
        try:
            job = _job_of(command)
        except (_BadParams, ValueError) as exc:
            self._report_done(
                out,
                command,
                now,
                RemoteStatus.FAILED,
                cause=FailureCause.WRONG_COMMAND,
                detail=f"bad_params: {exc}",
            )
            return self._finish_step(out)
        self._report(out, job, now, RemoteStatus.ACCEPTED)
        if any(j.key == job.key for j in self._jobs()):
            self._fail(out, job, now, FailureCause.SAME_ACTION_IN_PROGRESS, "same_action_pending")
            return self._finish_step(out)
        # Gateway order: a command goes before every waiting one of a higher order.
        position = len(self._queue)
        while position > 0 and self._order(self._queue[position - 1]) > command.order:
            position -= 1
        self._queue.insert(position, job)
        return self._finish_step(out)

    def on_signals(self, values: Mapping[str, Value], now_ms: int) -> list[Output]:
        """Take live decoded values by catalog name."""
        now = self._tick(now_ms)
        for name, value in values.items():
            if name not in self._known:
                self.stats.ignored_signals += 1
                continue
            self.signals[name] = value
            if name == IGNITION and value in IGNITION_ON:
                self.car_asleep = False
        return self._finish_step([], now)

    def on_updates(self, updates: Sequence[tuple[int, Value]], now_ms: int) -> list[Output]:
        """Take live decoded values as the decoder gives them: ``(signal id, value)``."""
        names = self._names
        values = {names[sid]: value for sid, value in updates if sid in names}
        self.stats.ignored_signals += len(updates) - len(values)
        return self.on_signals(values, now_ms)

    def on_feedback(self, counter: int, action: int, result: int, now_ms: int) -> list[Output]:
        """Take one decoded ``BSI_CmdFeedback`` (FbCounter, FbAction, FbResult)."""
        now = self._tick(now_ms)
        self._bus_counter = counter
        out: list[Output] = []
        job = self._active
        if job is None or counter != job.counter or counter == 0:
            return self._finish_step(out, now)
        expected = CommandAction.WAKE_UP if job.phase is _Phase.WAKING else job.request
        if action != expected:
            self.stats.ignored_feedback += 1
            return self._finish_step(out, now)
        try:
            outcome = CommandResult(result)
        except ValueError:
            outcome = CommandResult.FAILED  # a result the network does not define
        if outcome is CommandResult.IN_PROGRESS:
            if not job.acked:
                job.acked = True
                job.deadline_ms = (
                    job.deadline_ms - self._first_timeout(job) + self._long_timeout(job)
                )
            return self._finish_step(out, now)
        self._active = None
        if job.phase is _Phase.WAKING:
            if outcome in (CommandResult.DONE, CommandResult.ALREADY_DONE):
                self.car_asleep = False
                self._dispatch(out, job, now)
            else:
                self._fail(
                    out, job, now, FailureCause.VEHICLE_ERROR, f"wake_up_{outcome.name.lower()}"
                )
        else:
            self._answer(out, job, now, outcome)
        return self._finish_step(out, now)

    def on_timer(self, now_ms: int) -> list[Output]:
        """A timer is due: time out the request on the bus, start programs that are due."""
        now = self._tick(now_ms)
        out: list[Output] = []
        job = self._active
        if job is not None and now >= job.deadline_ms:
            self._active = None
            if job.phase is _Phase.WAKING:
                self._fail(out, job, now, FailureCause.VEHICLE_CONNECTION_TIMEOUT, "vehicle_asleep")
            else:
                detail = "no_result" if job.acked else "no_feedback"
                self._fail(out, job, now, FailureCause.VEHICLE_CONNECTION_TIMEOUT, detail)
        return self._finish_step(out, now)

    def on_sleep(self, now_ms: int) -> list[Output]:
        """The box goes to sleep with the car: the next request wakes the car first."""
        self._tick(now_ms)
        self.car_asleep = True
        return []

    # -- queries --------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a command is queued or on the bus."""
        return self._active is not None or bool(self._queue)

    @property
    def full(self) -> bool:
        """Whether the queue is full (a submitted command would fail)."""
        return len(self._queue) >= self.max_queue

    @property
    def next_program_ms(self) -> int | None:
        """When the next preconditioning program starts."""
        after = self._programs_until if self._programs_until is not None else self._now
        return next_program_time(self.state.programs, after)

    # -- the sequence ---------------------------------------------------------------------

    def _tick(self, now_ms: int) -> int:
        self._now = max(self._now, now_ms)
        return self._now

    def _jobs(self) -> list[_Job]:
        jobs = list(self._queue)
        if self._active is not None:
            jobs.append(self._active)
        return jobs

    @staticmethod
    def _order(job: _Job) -> int:
        return job.command.order if job.command is not None else -1

    def _finish_step(self, out: list[Output], now: int | None = None) -> list[Output]:
        now = self._now if now is None else now
        self._fire_programs(out, now)
        self._pump(out, now)
        deadline = self._active.deadline_ms if self._active is not None else None
        nxt = self.next_program_ms
        if nxt is not None and (deadline is None or nxt < deadline):
            deadline = nxt
        if deadline is not None and deadline != self._armed:
            self._armed = deadline
            out.append(ArmTimer(deadline))
        return out

    def _pump(self, out: list[Output], now: int) -> None:
        while self._active is None and self._queue:
            job = self._queue.popleft()
            if job.request is not None and self.car_asleep:
                if job.request is CommandAction.WAKE_UP:
                    self._report(out, job, now, RemoteStatus.WAKING_UP_VEHICLE)
                    self._dispatch(out, job, now)
                    continue
                self._report(out, job, now, RemoteStatus.WAKING_UP_VEHICLE)
                job.phase = _Phase.WAKING
                job.counter = self._send(out, CommandAction.WAKE_UP, ())
                job.deadline_ms = now + self.wake_timeout_ms
                self._active = job
                return
            self._dispatch(out, job, now)

    def _dispatch(self, out: list[Output], job: _Job, now: int) -> None:
        """Check the preconditions, apply the box's part, send the car's part."""
        refusal = self._precondition(job)
        if refusal is not None:
            cause, detail = refusal
            self._fail(out, job, now, cause, detail)
            return
        changed = self._apply_box_part(out, job)
        if job.request is None:
            status = RemoteStatus.SUCCESS if changed else RemoteStatus.ALREADY_DONE
            self._finish(out, job, now, status)
            return
        self._report(out, job, now, RemoteStatus.SENT_TO_VEHICLE)
        job.phase = _Phase.SENT
        job.counter = self._send(out, job.request, job.params)
        job.deadline_ms = now + self.feedback_timeout_ms
        self._active = job

    def _apply_box_part(self, out: list[Output], job: _Job) -> bool:
        state = self.state
        new = state
        if job.programs:
            slots = {p.slot: p for p in state.programs}
            slots.update({p.slot: p for p in job.programs})
            new = _replace(new, programs=tuple(slots[s] for s in sorted(slots)))
        if job.stolen is not None:
            new = _replace(new, stolen=job.stolen)
        if job.charge_prefs is not None:
            new = _replace(new, charge_level=job.charge_prefs[0], charge_type=job.charge_prefs[1])
        if new == state:
            return False
        self.state = new
        out.append(PersistState(new))
        return True

    def _send(self, out: list[Output], request: CommandAction, params: tuple[int, ...]) -> int:
        counter = self.state.counter % 255 + 1
        if counter == self._bus_counter:  # the body controller still shows that one
            counter = counter % 255 + 1
        self.state = _replace(self.state, counter=counter)
        out.append(PersistState(self.state))
        signals = {"CmdCounter": counter, "CmdAction": int(request)}
        for i in range(6):
            signals[f"CmdParam{i}"] = params[i] if i < len(params) else 0
        out.append(SendFrame(COMMAND_REQUEST, signals))
        self.stats.frames += 1
        return counter

    def _first_timeout(self, job: _Job) -> int:
        return self.wake_timeout_ms if job.phase is _Phase.WAKING else self.feedback_timeout_ms

    def _long_timeout(self, job: _Job) -> int:
        return self.wake_timeout_ms if job.phase is _Phase.WAKING else self.completion_timeout_ms

    def _answer(self, out: list[Output], job: _Job, now: int, outcome: CommandResult) -> None:
        if outcome is CommandResult.DONE:
            self._finish(out, job, now, RemoteStatus.SUCCESS)
        elif outcome is CommandResult.ALREADY_DONE:
            self._finish(out, job, now, RemoteStatus.ALREADY_DONE)
        elif outcome is CommandResult.REFUSED:
            cause, detail = self._refusal_cause(job)
            self._fail(out, job, now, cause, detail)
        else:
            failed = self.signals.get(CHARGING_STATE) == _CHARGING_FAILURE
            if job.request in _CHARGE_ACTIONS and failed:
                cause, detail = FailureCause.VEHICLE_CHARGING_SYSTEM_ERROR, "charging_failure"
            else:
                cause, detail = FailureCause.VEHICLE_ERROR, "failed_in_vehicle"
            self._fail(out, job, now, cause, detail)
        if job.request is CommandAction.WAKE_UP and outcome in (
            CommandResult.DONE,
            CommandResult.ALREADY_DONE,
        ):
            self.car_asleep = False
            if job.command is not None:
                out.append(RequestUpload())

    def _refusal_cause(self, job: _Job) -> tuple[FailureCause, str]:
        """Why the car refused, as far as the live signals tell."""
        known = self._precondition(job)
        if known is not None:
            return known
        if job.request in (CommandAction.CHARGE_START, CommandAction.CHARGE_DEFERRED):
            if self.signals.get(CABLE) is False or self.signals.get(CABLE) == 0:
                return FailureCause.EXTERNAL_CHARGING_SYSTEM_ERROR, "cable_not_connected"
            if self.signals.get(CHARGING_STATE) == _CHARGING_FAILURE:
                return FailureCause.VEHICLE_CHARGING_SYSTEM_ERROR, "charging_failure"
        return FailureCause.GENERAL_ERROR, "refused_by_vehicle"

    def _precondition(self, job: _Job) -> tuple[FailureCause, str] | None:
        """The first rule the live signals break for this job, or None."""
        sig = self.signals
        request = job.request
        full = sig.get(PRIVACY) == _PRIVACY_FULL
        if job.command is not None and job.kind in PRIVACY_REFUSED and full:
            return FailureCause.NOT_POSSIBLE_DUE_TO_VEHICLE_PRIVACY_LEVEL, "privacy_full"
        if request is None:
            return None
        if self.state.stolen and request in STOLEN_REFUSED:
            return FailureCause.NOT_POSSIBLE_DUE_TO_VEHICLE_STOLEN_STATE, "stolen"
        if request in IN_USE_REFUSED:
            speed = sig.get(SPEED)
            if speed is not None and abs(speed) >= self.moving_kmh:
                return FailureCause.VEHICLE_IN_USE, "moving"
            if sig.get(IGNITION) in IGNITION_ON:
                return FailureCause.VEHICLE_IN_USE, "ignition_on"
        if request in DOORS_REFUSED:
            open_doors = [name.split(".")[-2] for name in DOORS if sig.get(name)]
            if open_doors:
                return FailureCause.DOORS_OPEN, "open: " + ",".join(open_doors)
        if request is CommandAction.PRECOND_START:
            traction = sig.get(TRACTION_SOC)
            plugged = bool(sig.get(CABLE))  # on the cable, the grid pays for the cabin
            if traction is not None and traction < self.min_traction_soc_pct and not plugged:
                return FailureCause.NOT_POSSIBLE_DUE_TO_VEHICLE_BATTERY_LEVEL, "traction_soc"
            lv_soc = sig.get(LV_SOC)
            if lv_soc is not None and lv_soc < self.min_lv_soc_pct:
                return FailureCause.NOT_POSSIBLE_DUE_TO_VEHICLE_BATTERY_LEVEL, "12v_soc"
            lv_voltage = sig.get(LV_VOLTAGE)
            if lv_voltage is not None and 0 < lv_voltage < self.min_lv_voltage_v:
                return FailureCause.NOT_POSSIBLE_DUE_TO_VEHICLE_BATTERY_LEVEL, "12v_voltage"
        if request is CommandAction.HORN and sig.get(HORN_ACTIVE):
            return FailureCause.SAME_ACTION_IN_PROGRESS, "horn_active"
        if request is CommandAction.LIGHTS and sig.get(LIGHTS_FLASHING):
            return FailureCause.SAME_ACTION_IN_PROGRESS, "lights_flashing"
        return None

    # -- programs -------------------------------------------------------------------------

    def _fire_programs(self, out: list[Output], now: int) -> None:
        if self._programs_until is None:
            return
        after = max(self._programs_until, now - self.program_grace_ms - 1)
        skipped = self.stats.programs_skipped
        missed = 0
        at = next_program_time(self.state.programs, self._programs_until)
        while at is not None and at <= after:
            missed += 1
            at = next_program_time(self.state.programs, at)
        if missed:
            skipped["missed"] = skipped.get("missed", 0) + missed
        while at is not None and at <= now:
            if any(j.request is CommandAction.PRECOND_START for j in self._jobs()):
                skipped["already_pending"] = skipped.get("already_pending", 0) + 1
            elif len(self._queue) >= self.max_queue:
                skipped["queue_full"] = skipped.get("queue_full", 0) + 1
            else:
                self._queue.append(_Job(None, "precond", CommandAction.PRECOND_START))
            at = next_program_time(self.state.programs, at)
        self._programs_until = now

    # -- statuses -------------------------------------------------------------------------

    def _report(self, out: list[Output], job: _Job, now: int, status: RemoteStatus) -> None:
        if job.command is None:
            return
        out.append(ReportStatus(self._message(job.command, now, status)))

    def _fail(
        self, out: list[Output], job: _Job, now: int, cause: FailureCause, detail: str
    ) -> None:
        self._finish(out, job, now, RemoteStatus.FAILED, cause=cause, detail=detail)

    def _finish(
        self,
        out: list[Output],
        job: _Job,
        now: int,
        status: RemoteStatus,
        *,
        cause: FailureCause | None = None,
        detail: str = "",
    ) -> None:
        if job.command is None:  # a program's start: counted, nobody to tell
            if status is RemoteStatus.FAILED:
                key = detail or "failed"
                skipped = self.stats.programs_skipped
                skipped[key] = skipped.get(key, 0) + 1
            else:
                self.stats.programs_fired += 1
            return
        self._report_done(out, job.command, now, status, cause=cause, detail=detail)

    def _report_done(
        self,
        out: list[Output],
        command: Command,
        now: int,
        status: RemoteStatus,
        *,
        cause: FailureCause | None,
        detail: str,
    ) -> None:
        assert status in _DONE
        by_status = self.stats.by_status
        by_status[status.value] = by_status.get(status.value, 0) + 1
        if cause is not None:
            by_cause = self.stats.by_cause
            by_cause[cause.value] = by_cause.get(cause.value, 0) + 1
        out.append(ReportStatus(self._message(command, now, status, cause=cause, detail=detail)))

    def _message(
        self,
        command: Command,
        now: int,
        status: RemoteStatus,
        *,
        cause: FailureCause | None = None,
        detail: str = "",
    ) -> StatusMessage:
        return StatusMessage(
            command_id=command.id,
            vin=self.vin,
            status=status,
            failure_cause=cause,
            at_ms=now,
            detail=detail,
        )


def _replace(state: ExecutorState, **changes: Any) -> ExecutorState:
    return dataclasses.replace(state, **changes)
