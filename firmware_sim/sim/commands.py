"""The body controller's remote commands: ``TCU_CmdRequest`` in, ``BSI_CmdFeedback`` out.

:class:`BodyController` executes the commands the box sends on the car's bus and reports the
state of the last one in the feedback frame (counter and action echoed). A command is
answered as it arrives: REFUSED when the car's state forbids it (:meth:`BodyController.check`
says why), ALREADY_DONE when there is nothing to do; otherwise it takes its actuation delay
(:data:`DEFAULT_DELAYS_MS`, per action, zero allowed) with IN_PROGRESS, then is checked again
(REFUSED turns into FAILED, as does an action marked in :attr:`BodyController.failing`),
takes effect and is DONE. Every frame is a new command (the box sends each once); a newer
command of the same actuator cancels one still in progress, whose answer was superseded
anyway. All timing is the scheduler's (simulated time in the simulator).

Effects, in the signals the car sends:

- HORN: ``Vehicle.Body.Horn.IsActive`` (``BSI_Body.HornActive``) on for :data:`HORN_ON_MS`,
  off for :data:`HORN_OFF_MS`, ``CmdParam0`` times (0 is 1; at most :data:`HORN_MAX_BEEPS`).
- LIGHTS: ``Vehicle.Body.Lights.IsFlashing`` (``HS2_DAT_MDD_CMD_452.TURN_SIGNAL_STATUS`` 3)
  for ``CmdParam0`` s (0 is :data:`LIGHTS_DEFAULT_S`; at most :data:`LIGHTS_MAX_S`).
- LOCK / UNLOCK: ``Vehicle.Cabin.DoorsLockState`` (``BSI_Body.LockState``): 1 Locked, 2
  SuperLocked with ``CmdParam0`` = 1, 0 Unlocked.
- PRECOND_START / STOP: ``Vehicle.Cabin.HVAC.Preconditioning.State``
  (``BSI_Precond.PrecondState``), the cabin temperature (``BSI_CabinTemp.CabinTemp``) moving
  toward ``CmdParam0`` degC (0 is 21), and the battery it draws (see
  :mod:`firmware_sim.sim.physics`).
- CHARGE_START / STOP / DEFERRED: ``BMS_Charging.ChargingState`` (and the charge); a
  deferred charge starts at ``CmdParam0``:``CmdParam1`` (UTC, scheduler time), at the next
  such time of day, if the cable is still connected then.
- IMMOBILIZER_ON / OFF: :attr:`~firmware_sim.sim.physics.VehicleState.immobilized`: the
  engine does not start again (an ignition On or Start is refused) until it is released; a
  running engine runs on.
- WAKE_UP: DONE, nothing else.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import can
from cantools.database.can import Message

from can_dbc.network import COMMAND_FEEDBACK, COMMAND_REQUEST, CommandAction, CommandResult
from firmware_sim.clock import Scheduler
from firmware_sim.sim.physics import (
    PRECOND_DEFAULT_C,
    PRECOND_MIN_SOC,
    VehicleState,
)

__all__ = [
    "DEFAULT_DELAYS_MS",
    "HORN_MAX_BEEPS",
    "HORN_OFF_MS",
    "HORN_ON_MS",
    "LIGHTS_DEFAULT_S",
    "LIGHTS_MAX_S",
    "PRECOND_TARGET_C",
    "BodyController",
    "BodyStats",
    "CommandRequest",
    "FeedbackEvent",
]

HORN = "Vehicle.Body.Horn.IsActive"
FLASHING = "Vehicle.Body.Lights.IsFlashing"
LOCK_STATE = "Vehicle.Cabin.DoorsLockState"
IGNITION = "Vehicle.LowVoltageSystemState"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
DOORS = (
    "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen",
    "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen",
    "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen",
    "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen",
    "Vehicle.Body.Trunk.Rear.IsOpen",
)
UNLOCKED, LOCKED, SUPER_LOCKED = 0, 1, 2

#: Time from a command to its effect (and DONE), per action, in ms.
DEFAULT_DELAYS_MS: Mapping[CommandAction, int] = {
    CommandAction.NONE: 0,
    CommandAction.WAKE_UP: 0,
    CommandAction.HORN: 200,
    CommandAction.LIGHTS: 200,
    CommandAction.LOCK: 500,
    CommandAction.UNLOCK: 500,
    CommandAction.PRECOND_START: 1000,
    CommandAction.PRECOND_STOP: 500,
    CommandAction.CHARGE_START: 1000,
    CommandAction.CHARGE_STOP: 500,
    CommandAction.CHARGE_DEFERRED: 300,
    CommandAction.IMMOBILIZER_ON: 300,
    CommandAction.IMMOBILIZER_OFF: 300,
}
HORN_ON_MS = 500
HORN_OFF_MS = 500
HORN_MAX_BEEPS = 10
LIGHTS_DEFAULT_S = 10
LIGHTS_MAX_S = 60
#: The cabin targets preconditioning accepts (degC).
PRECOND_TARGET_C = (16, 28)
_DAY_MS = 86_400_000


class _Actuator(enum.Enum):
    """What a command moves; a newer command of the same actuator supersedes an older one."""

    NONE = "none"
    HORN = "horn"
    LIGHTS = "lights"
    LOCKS = "locks"
    HVAC = "hvac"
    CHARGER = "charger"
    IMMOBILIZER = "immobilizer"


_ACTUATOR = {
    CommandAction.HORN: _Actuator.HORN,
    CommandAction.LIGHTS: _Actuator.LIGHTS,
    CommandAction.LOCK: _Actuator.LOCKS,
    CommandAction.UNLOCK: _Actuator.LOCKS,
    CommandAction.PRECOND_START: _Actuator.HVAC,
    CommandAction.PRECOND_STOP: _Actuator.HVAC,
    CommandAction.CHARGE_START: _Actuator.CHARGER,
    CommandAction.CHARGE_STOP: _Actuator.CHARGER,
    CommandAction.CHARGE_DEFERRED: _Actuator.CHARGER,
    CommandAction.IMMOBILIZER_ON: _Actuator.IMMOBILIZER,
    CommandAction.IMMOBILIZER_OFF: _Actuator.IMMOBILIZER,
}


@dataclass(frozen=True)
class CommandRequest:
    """One ``TCU_CmdRequest``: raw counter, action and the six parameter bytes."""

    counter: int
    action: int
    params: tuple[int, int, int, int, int, int]

    @classmethod
    def from_bytes(cls, data: bytes) -> CommandRequest:
        """The request in a frame's 8 bytes (``ValueError`` for another length)."""
        if len(data) != 8:
            raise ValueError(f"a command request has 8 bytes, not {len(data)}")
        return cls(data[0], data[1], (data[2], data[3], data[4], data[5], data[6], data[7]))

    @property
    def kind(self) -> CommandAction | None:
        """The action, ``None`` for a value the network does not define."""
        try:
            return CommandAction(self.action)
        except ValueError:
            return None


@dataclass(frozen=True)
class FeedbackEvent:
    """A change of the feedback: when, for which command, the result and why."""

    at_ms: int
    counter: int
    action: int
    result: CommandResult
    reason: str = ""


@dataclass
class BodyStats:
    """What the body controller received and answered."""

    requests: int = 0  # well-formed command requests
    malformed: int = 0  # request frames it could not read (no answer)
    malformed_reasons: Counter[str] = field(default_factory=Counter)
    ignored: int = 0  # requests received while deaf (no answer)
    results: Counter[CommandResult] = field(default_factory=Counter)  # final answers
    deferred_started: int = 0  # deferred charges that started at their time
    deferred_lapsed: int = 0  # deferred charges whose time came without a cable


class BodyController:
    """The body controller's command handling for one car (see the module's description).

    ``delays_ms`` overrides :data:`DEFAULT_DELAYS_MS` for the actions it names;
    :meth:`set_delays` changes them later. ``feedback_on_change``: the car sends the feedback
    frame at its next tick whenever the feedback changes, besides every cycle (otherwise
    only every cycle). ``failing`` maps an action to a reason: its commands then FAIL at
    the end of their delay (an actuator fault). ``deaf``: requests are counted and ignored
    (the body controller does not answer).
    """

    def __init__(
        self,
        state: VehicleState,
        scheduler: Scheduler,
        request: Message,
        feedback: Message,
        *,
        delays_ms: Mapping[CommandAction, int] | None = None,
        feedback_on_change: bool = True,
        history: int = 1024,
    ) -> None:
        if request.name != COMMAND_REQUEST or feedback.name != COMMAND_FEEDBACK:
            raise ValueError(f"the command frames are {COMMAND_REQUEST} and {COMMAND_FEEDBACK}")
        self.state = state
        self.scheduler = scheduler
        self.request_id = int(request.frame_id)
        self.feedback_id = int(feedback.frame_id)
        self.request_extended = bool(request.is_extended_frame)
        self._feedback_message = feedback
        self.delays_ms: dict[CommandAction, int] = dict(DEFAULT_DELAYS_MS)
        if delays_ms is not None:
            self.set_delays(delays_ms)
        self.feedback_on_change = feedback_on_change
        self.failing: dict[CommandAction, str] = {}
        self.deaf = False
        self.stats = BodyStats()
        self.events: deque[FeedbackEvent] = deque(maxlen=history)
        #: The feedback frame's values: (counter, action, result), raw.
        self.feedback: tuple[int, int, int] = (0, int(CommandAction.NONE), 0)
        self.feedback_data = self._encode(*self.feedback)
        #: Whether the feedback changed since the car last sent it.
        self.dirty = False
        #: When a deferred charge will start (ms since the epoch), ``None`` when none waits.
        self.deferred_at_ms: int | None = None
        self._deferred_hm: tuple[int, int] | None = None
        self._sequence = 0  # commands received
        self._generation: dict[_Actuator, int] = dict.fromkeys(_Actuator, 0)
        self._effect: dict[_Actuator, int] = dict.fromkeys(_Actuator, 0)

    # -- configuration --------------------------------------------------------------------

    def set_delays(self, delays_ms: int | Mapping[CommandAction, int]) -> None:
        """Set the actuation delay of every action (an int) or of those named (ms, >= 0)."""
        items = (
            dict.fromkeys(CommandAction, delays_ms)
            if isinstance(delays_ms, int)
            else dict(delays_ms)
        )
        for action, ms in items.items():
            if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
                raise ValueError(f"the delay of {action.name} must be whole ms >= 0, not {ms!r}")
            self.delays_ms[CommandAction(action)] = ms

    # -- frames ---------------------------------------------------------------------------

    def receive(self, msg: can.Message) -> bool:
        """Take one frame from the bus; True when it was a command request (read or not)."""
        if (
            msg.arbitration_id != self.request_id
            or bool(msg.is_extended_id) != self.request_extended
            or msg.is_error_frame
        ):
            return False
        if msg.is_remote_frame:
            self._malformed("remote frame")
            return True
        data = bytes(msg.data)
        if len(data) != 8:
            self._malformed(f"length {len(data)}")
            return True
        if self.deaf:
            self.stats.ignored += 1
            return True
        self.handle(CommandRequest.from_bytes(data))
        return True

    def _malformed(self, reason: str) -> None:
        self.stats.malformed += 1
        self.stats.malformed_reasons[reason] += 1

    def _encode(self, counter: int, action: int, result: int) -> bytes:
        values = {"FbCounter": counter, "FbAction": action, "FbResult": result}
        return bytes(self._feedback_message.encode(values, scaling=False, strict=False))

    def _answer(self, request: CommandRequest, result: CommandResult, reason: str = "") -> None:
        self.feedback = (request.counter, request.action, int(result))
        self.feedback_data = self._encode(*self.feedback)
        self.dirty = self.feedback_on_change
        self.events.append(
            FeedbackEvent(self.scheduler.now_ms, request.counter, request.action, result, reason)
        )
        if result is not CommandResult.IN_PROGRESS:
            self.stats.results[result] += 1

    # -- commands -------------------------------------------------------------------------

    def handle(self, request: CommandRequest) -> None:
        """Answer one command and start it."""
        self.stats.requests += 1
        self._sequence += 1
        sequence = self._sequence
        action = request.kind
        if action is None or action is CommandAction.NONE:
            self._answer(request, CommandResult.REFUSED, "no such action")
            return
        actuator = _ACTUATOR.get(action, _Actuator.NONE)
        verdict, reason = self.check(request)
        if verdict is not CommandResult.REFUSED:
            self._generation[actuator] += 1  # an older command of this actuator is superseded
        generation = self._generation[actuator]
        if verdict is not None:
            self._answer(request, verdict, reason)
            return
        delay = self.delays_ms.get(action, 0)
        if delay <= 0:
            self._complete(request, sequence, actuator, generation, self.scheduler.now_ms)
            return
        self._answer(request, CommandResult.IN_PROGRESS)
        self.scheduler.call_at(
            self.scheduler.now_ms + delay,
            lambda now: self._complete(request, sequence, actuator, generation, now),
        )

    def _complete(
        self,
        request: CommandRequest,
        sequence: int,
        actuator: _Actuator,
        generation: int,
        now_ms: int,
    ) -> None:
        if self._generation[actuator] != generation:
            return  # superseded by a newer command of the same actuator
        current = sequence == self._sequence
        action = request.kind
        assert action is not None
        verdict, reason = self.check(request)
        if action in self.failing:
            verdict, reason = CommandResult.FAILED, self.failing[action]
        elif verdict is CommandResult.REFUSED:
            verdict = CommandResult.FAILED  # the state changed while acting
        if verdict is None:
            self._execute(request, action, now_ms)
            verdict = CommandResult.DONE
        if current:
            self._answer(request, verdict, reason)
        elif verdict is not CommandResult.IN_PROGRESS:
            self.stats.results[verdict] += 1  # answered, but a newer command holds the frame

    def check(self, request: CommandRequest) -> tuple[CommandResult | None, str]:
        """Whether the car can do this now: ``(None, "")``, or REFUSED / ALREADY_DONE and why."""
        action = request.kind
        p0, p1 = request.params[0], request.params[1]
        values = self.state.values
        state = self.state
        refused, already = CommandResult.REFUSED, CommandResult.ALREADY_DONE
        if action is CommandAction.WAKE_UP:
            return None, ""
        if action is CommandAction.HORN:
            if p0 > HORN_MAX_BEEPS:
                return refused, f"{p0} beeps: at most {HORN_MAX_BEEPS}"
            return (refused, "vehicle moving") if state.moving else (None, "")
        if action is CommandAction.LIGHTS:
            if p0 > LIGHTS_MAX_S:
                return refused, f"{p0} s of flashing: at most {LIGHTS_MAX_S}"
            return (refused, "vehicle moving") if state.moving else (None, "")
        if action is CommandAction.LOCK:
            if p0 > 1:
                return refused, f"lock mode {p0}: 0 lock, 1 super-lock"
            wanted = SUPER_LOCKED if p0 == 1 else LOCKED
            if int(values[LOCK_STATE]) >= wanted:
                return already, "already locked"
            if any(values[door] for door in DOORS):
                return refused, "door open"
            if wanted == SUPER_LOCKED and state.ignition_on:
                return refused, "ignition on"
            return None, ""
        if action is CommandAction.UNLOCK:
            if int(values[LOCK_STATE]) == UNLOCKED:
                return already, "already unlocked"
            return (refused, "vehicle moving") if state.moving else (None, "")
        if action is CommandAction.PRECOND_START:
            target = p0 or PRECOND_DEFAULT_C
            lo, hi = PRECOND_TARGET_C
            if not lo <= target <= hi:
                return refused, f"cabin target {p0} degC: {lo} to {hi}"
            if state.preconditioning and state.precond_target_c == target:
                return already, "already preconditioning"
            if state.ignition_on:
                return refused, "ignition on"
            if state.lv_low:
                return refused, "12 V battery low"
            if state.has(SOC) and not state.plugged_in and float(values[SOC]) < PRECOND_MIN_SOC:
                return refused, "traction battery low"
            return None, ""
        if action is CommandAction.PRECOND_STOP:
            return (None, "") if state.preconditioning else (already, "not preconditioning")
        if action is CommandAction.IMMOBILIZER_ON:
            return (already, "already immobilised") if state.immobilized else (None, "")
        if action is CommandAction.IMMOBILIZER_OFF:
            return (None, "") if state.immobilized else (already, "not immobilised")
        if not state.has(SOC):
            return refused, "no traction battery"
        deferred = self.deferred_at_ms is not None and state.plugged_in
        if action is CommandAction.CHARGE_START:
            if not state.plugged_in:
                return refused, "no charging cable"
            if state.charging and not deferred:
                return already, "already charging"
            if float(values[SOC]) >= 100:
                return already, "battery full"
            if state.ignition_on:
                return refused, "ignition on"
            return None, ""
        if action is CommandAction.CHARGE_STOP:
            if not (state.charging or deferred):
                return already, "not charging"
            return None, ""
        assert action is CommandAction.CHARGE_DEFERRED
        if p0 > 23 or p1 > 59:
            return refused, f"start time {p0}:{p1:02d} is not a time of day"
        if not state.plugged_in:
            return refused, "no charging cable"
        if deferred and self._deferred_hm == (p0, p1) and not state.charging:
            return already, "already deferred to this time"
        return None, ""

    def _execute(self, request: CommandRequest, action: CommandAction, now_ms: int) -> None:
        """The effect of a command that is DONE."""
        state = self.state
        p0, p1 = request.params[0], request.params[1]
        if action is CommandAction.HORN:
            self._effect[_Actuator.HORN] += 1
            self._beep(self._effect[_Actuator.HORN], p0 or 1, now_ms)
        elif action is CommandAction.LIGHTS:
            self._effect[_Actuator.LIGHTS] += 1
            effect = self._effect[_Actuator.LIGHTS]
            state.values[FLASHING] = 1
            seconds = p0 or LIGHTS_DEFAULT_S
            self.scheduler.call_at(now_ms + seconds * 1000, lambda _now: self._lights_off(effect))
        elif action is CommandAction.LOCK:
            state.apply({LOCK_STATE: SUPER_LOCKED if p0 == 1 else LOCKED})
        elif action is CommandAction.UNLOCK:
            state.apply({LOCK_STATE: UNLOCKED})
        elif action is CommandAction.PRECOND_START:
            state.start_preconditioning(float(p0 or PRECOND_DEFAULT_C))
        elif action is CommandAction.PRECOND_STOP:
            state.stop_preconditioning()
        elif action is CommandAction.CHARGE_START:
            self._cancel_deferred()
            state.start_charging()
        elif action is CommandAction.CHARGE_STOP:
            self._cancel_deferred()
            state.stop_charging()
        elif action is CommandAction.CHARGE_DEFERRED:
            self._defer_charge(p0, p1, now_ms)
        elif action is CommandAction.IMMOBILIZER_ON:
            state.immobilized = True
        elif action is CommandAction.IMMOBILIZER_OFF:
            state.immobilized = False

    def _beep(self, effect: int, left: int, now_ms: int) -> None:
        """Sound the horn now, and schedule its end and the next beep."""
        if self._effect[_Actuator.HORN] != effect:
            return  # a newer horn command took over
        self.state.values[HORN] = 1

        def off(at_ms: int) -> None:
            if self._effect[_Actuator.HORN] != effect:
                return
            self.state.values[HORN] = 0
            if left > 1:
                self.scheduler.call_at(
                    at_ms + HORN_OFF_MS, lambda t: self._beep(effect, left - 1, t)
                )

        self.scheduler.call_at(now_ms + HORN_ON_MS, off)

    def _lights_off(self, effect: int) -> None:
        if self._effect[_Actuator.LIGHTS] == effect:
            self.state.values[FLASHING] = 0

    def _cancel_deferred(self) -> None:
        self.deferred_at_ms = None
        self._deferred_hm = None
        self._effect[_Actuator.CHARGER] += 1

    def _defer_charge(self, hour: int, minute: int, now_ms: int) -> None:
        """Stop any charge now, and start one at the next ``hour:minute`` (UTC)."""
        self._cancel_deferred()
        if self.state.charging:
            self.state.stop_charging()
        at_ms = now_ms - now_ms % _DAY_MS + (hour * 60 + minute) * 60_000
        if at_ms < now_ms:
            at_ms += _DAY_MS
        self.deferred_at_ms = at_ms
        self._deferred_hm = (hour, minute)
        effect = self._effect[_Actuator.CHARGER]
        self.scheduler.call_at(at_ms, lambda _now: self._deferred_start(effect))

    def _deferred_start(self, effect: int) -> None:
        if self._effect[_Actuator.CHARGER] != effect:
            return  # cancelled or replaced
        self.deferred_at_ms = None
        self._deferred_hm = None
        if self.state.plugged_in:
            self.state.start_charging()
            self.stats.deferred_started += 1
        else:
            self.stats.deferred_lapsed += 1
