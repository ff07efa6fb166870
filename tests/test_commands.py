"""The box's command executor, driven with scripted signals, feedback and simulated time."""

from __future__ import annotations

import heapq
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from can_dbc.catalog import default_catalog
from can_dbc.network import COMMAND_REQUEST, CommandAction, CommandResult
from firmware_sim.commands import (
    DAY_MS,
    MINUTE_MS,
    ArmTimer,
    CommandExecutor,
    CommandStateError,
    ExecutorState,
    Output,
    PersistState,
    Program,
    ReportStatus,
    RequestUpload,
    SendFrame,
    next_program_time,
)
from firmware_sim.downlink import Command, new_command

CATALOG = default_catalog()
VIN = "VF3ABCDEFL1234567"
T0 = 1_704_067_200_000  # Monday 2024-01-01 00:00 UTC

PARKED = {
    "Vehicle.Speed": 0.0,
    "Vehicle.LowVoltageSystemState": 0,
    "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": False,
    "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen": False,
    "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen": False,
    "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen": False,
    "Vehicle.Body.Trunk.Rear.IsOpen": False,
    "Vehicle.Cabin.DoorsLockState": 1,
    "Vehicle.LowVoltageBattery.CurrentVoltage": 12.6,
    "Vehicle.LowVoltageBattery.StateOfCharge": 80.0,
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed": 70.0,
    "Vehicle.Powertrain.TractionBattery.Charging.IsChargingCableConnected": True,
    "Vehicle.Powertrain.TractionBattery.Charging.ChargingState": 3,
    "Vehicle.Cabin.HVAC.Preconditioning.State": 0,
    "Vehicle.Connectivity.PrivacySetting": 0,
    "Vehicle.Body.Lights.IsFlashing": False,
    "Vehicle.Body.Horn.IsActive": False,
}

_orders = itertools.count(1)


def make_command(action: str, params: Mapping[str, Any], order: int | None = None) -> Command:
    """A verified command, as the downlink verifier hands it over."""
    return new_command(
        VIN, action, dict(params), issued_at_ms=T0, order=next(_orders) if order is None else order
    )


def _value(x: Any) -> str:
    return str(getattr(x, "value", x))


class Bench:
    """An executor in simulated time: its timers are run, its outputs recorded."""

    def __init__(self, signals: Mapping[str, Any] | None = PARKED, **options: Any) -> None:
        self.ex = CommandExecutor(VIN, CATALOG, **options)
        self.now = T0
        self.timers: list[int] = []
        self.frames: list[tuple[int, dict[str, int]]] = []
        self.statuses: dict[bytes, list[tuple[str, str | None, str]]] = {}
        self.persisted: list[ExecutorState] = []
        self.uploads = 0
        self.take(self.ex.start(T0))
        if signals:
            self.take(self.ex.on_signals(signals, T0))

    def take(self, outputs: Sequence[Output]) -> None:
        for out in outputs:
            if isinstance(out, ArmTimer):
                heapq.heappush(self.timers, out.at_ms)
            elif isinstance(out, SendFrame):
                assert out.name == COMMAND_REQUEST
                self.frames.append((self.now, dict(out.signals)))
            elif isinstance(out, ReportStatus):
                m = out.message
                cause = None if m.failure_cause is None else _value(m.failure_cause)
                entry = (_value(m.status), cause, m.detail)
                self.statuses.setdefault(m.command_id, []).append(entry)
            elif isinstance(out, PersistState):
                self.persisted.append(out.state)
            elif isinstance(out, RequestUpload):
                self.uploads += 1

    def run_until(self, t_ms: int) -> None:
        while self.timers and self.timers[0] <= t_ms:
            at = heapq.heappop(self.timers)
            self.now = max(self.now, at)
            self.take(self.ex.on_timer(self.now))
        self.now = max(self.now, t_ms)

    def run_for(self, ms: int) -> None:
        self.run_until(self.now + ms)

    def submit(self, action: str, params: Mapping[str, Any] | None = None) -> bytes:
        command = make_command(action, params or {})
        self.take(self.ex.submit(command, self.now))
        return bytes(command.id)

    def signals(self, **values: Any) -> None:
        self.take(self.ex.on_signals(values, self.now))

    def feedback(self, result: CommandResult, counter: int | None = None) -> None:
        _, frame = self.frames[-1]
        c = frame["CmdCounter"] if counter is None else counter
        self.take(self.ex.on_feedback(c, frame["CmdAction"], int(result), self.now))

    def seq(self, command_id: bytes) -> list[str]:
        return [s for s, _, _ in self.statuses[command_id]]

    def last(self, command_id: bytes) -> tuple[str, str | None, str]:
        return self.statuses[command_id][-1]


def named(**short: Any) -> dict[str, Any]:
    """Catalog names from short keys: doors_driver, trunk, speed, ..."""
    table = {
        "speed": "Vehicle.Speed",
        "ignition": "Vehicle.LowVoltageSystemState",
        "trunk": "Vehicle.Body.Trunk.Rear.IsOpen",
        "driver_door": "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen",
        "traction_soc": "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed",
        "lv_soc": "Vehicle.LowVoltageBattery.StateOfCharge",
        "lv_voltage": "Vehicle.LowVoltageBattery.CurrentVoltage",
        "privacy": "Vehicle.Connectivity.PrivacySetting",
        "cable": "Vehicle.Powertrain.TractionBattery.Charging.IsChargingCableConnected",
        "charging": "Vehicle.Powertrain.TractionBattery.Charging.ChargingState",
        "lights": "Vehicle.Body.Lights.IsFlashing",
        "horn": "Vehicle.Body.Horn.IsActive",
    }
    return {table[k]: v for k, v in short.items()}


def sig(b: Bench, **short: Any) -> None:
    b.take(b.ex.on_signals(named(**short), b.now))


# -- the plain sequence ---------------------------------------------------------------------


def test_lock_success_sends_one_request_and_reports_each_step() -> None:
    b = Bench()
    cid = b.submit("lock")
    assert b.seq(cid) == ["Accepted", "SentToVehicle"]
    assert b.frames[-1][1] == {
        "CmdCounter": 1,
        "CmdAction": CommandAction.LOCK,
        **{f"CmdParam{i}": 0 for i in range(6)},
    }
    b.run_for(300)
    b.feedback(CommandResult.IN_PROGRESS)
    b.feedback(CommandResult.DONE)
    b.feedback(CommandResult.DONE)  # repeated every cycle: said once
    assert b.statuses[cid] == [
        ("Accepted", None, ""),
        ("SentToVehicle", None, ""),
        ("Success", None, ""),
    ]
    assert b.ex.stats.by_status == {"Success": 1}
    assert not b.ex.busy


@pytest.mark.parametrize(
    ("result", "final"),
    [
        (CommandResult.ALREADY_DONE, ("AlreadyDone", None, "")),
        (CommandResult.REFUSED, ("Failed", "GeneralError", "refused_by_vehicle")),
        (CommandResult.FAILED, ("Failed", "VehicleError", "failed_in_vehicle")),
        (9, ("Failed", "VehicleError", "failed_in_vehicle")),  # a result the DBC lacks
    ],
)
def test_each_feedback_result_maps_to_a_final_status(result: int, final: tuple[Any, ...]) -> None:
    b = Bench()
    cid = b.submit("unlock")
    _, frame = b.frames[-1]
    b.take(b.ex.on_feedback(frame["CmdCounter"], frame["CmdAction"], int(result), b.now))
    assert b.last(cid) == final
    assert b.seq(cid) == ["Accepted", "SentToVehicle", final[0]]


def test_refusal_cause_is_read_from_live_signals() -> None:
    b = Bench()
    cid = b.submit("lock")
    sig(b, trunk=True)  # opened after the request went out
    b.feedback(CommandResult.REFUSED)
    assert b.last(cid) == ("Failed", "DoorsOpen", "open: Rear")
    sig(b, trunk=False, cable=False)
    cid = b.submit("charge", {"immediate": True})
    b.feedback(CommandResult.REFUSED)
    assert b.last(cid) == ("Failed", "ExternalChargingSystemError", "cable_not_connected")
    sig(b, cable=True, charging=2)
    cid = b.submit("charge", {"delayed_to_min": 90})
    b.feedback(CommandResult.FAILED)
    assert b.last(cid) == ("Failed", "VehicleChargingSystemError", "charging_failure")


def test_no_feedback_times_out_and_in_progress_waits_for_completion() -> None:
    b = Bench(feedback_timeout_ms=5_000, completion_timeout_ms=90_000)
    cid = b.submit("horn", {"beeps": 3})
    b.feedback(CommandResult.DONE, counter=0)  # the previous state on the bus: not ours
    b.run_for(4_999)
    assert b.seq(cid) == ["Accepted", "SentToVehicle"]
    b.run_for(1)
    assert b.last(cid) == ("Failed", "VehicleConnectionTimeout", "no_feedback")

    cid = b.submit("lights", {"duration_s": 60})
    b.run_for(1_000)
    b.feedback(CommandResult.IN_PROGRESS)
    b.run_for(60_000)  # lights flash for a minute: still waiting
    assert b.seq(cid) == ["Accepted", "SentToVehicle"]
    b.run_for(29_000)
    assert b.last(cid) == ("Failed", "VehicleConnectionTimeout", "no_result")
    b.feedback(CommandResult.DONE)  # too late: nothing more is said
    assert len(b.statuses[cid]) == 3


def test_feedback_with_our_counter_but_another_action_is_not_ours() -> None:
    b = Bench()
    cid = b.submit("lock")
    counter = b.frames[-1][1]["CmdCounter"]
    b.take(b.ex.on_feedback(counter, CommandAction.UNLOCK, CommandResult.DONE, b.now))
    assert b.seq(cid) == ["Accepted", "SentToVehicle"]
    assert b.ex.stats.ignored_feedback == 1


# -- preconditions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signals", "action", "params", "cause", "detail"),
    [
        ({"trunk": True}, "lock", {}, "DoorsOpen", "open: Rear"),
        ({"driver_door": True}, "precond", {"immediate": True}, "DoorsOpen", "open: DriverSide"),
        ({"speed": 30.0}, "unlock", {}, "VehicleInUse", "moving"),
        ({"ignition": 2}, "horn", {"beeps": 1}, "VehicleInUse", "ignition_on"),
        ({"speed": 12.0}, "lights", {"duration_s": 5}, "VehicleInUse", "moving"),
        (
            {"traction_soc": 12.0, "cable": False},
            "precond",
            {"immediate": True},
            "NotPossibleDueToVehicleBatteryLevel",
            "traction_soc",
        ),
        (
            {"lv_soc": 20.0},
            "precond",
            {"immediate": True},
            "NotPossibleDueToVehicleBatteryLevel",
            "12v_soc",
        ),
        (
            {"lv_voltage": 11.2},
            "precond",
            {"immediate": True},
            "NotPossibleDueToVehicleBatteryLevel",
            "12v_voltage",
        ),
        ({"privacy": 2}, "wakeup", {}, "NotPossibleDueToVehiclePrivacyLevel", "privacy_full"),
        (
            {"privacy": 2},
            "horn",
            {"beeps": 2},
            "NotPossibleDueToVehiclePrivacyLevel",
            "privacy_full",
        ),
        ({"horn": True}, "horn", {"beeps": 2}, "SameActionInProgress", "horn_active"),
        ({"lights": True}, "lights", {"duration_s": 9}, "SameActionInProgress", "lights_flashing"),
    ],
)
def test_preconditions_refuse_before_the_bus(
    signals: dict[str, Any], action: str, params: dict[str, Any], cause: str, detail: str
) -> None:
    b = Bench()
    sig(b, **signals)
    cid = b.submit(action, params)
    assert b.statuses[cid] == [("Accepted", None, ""), ("Failed", cause, detail)]
    assert b.frames == []


def test_what_the_rules_leave_alone() -> None:
    b = Bench()
    sig(b, privacy=2, speed=50.0, trunk=True, traction_soc=5.0)
    for action, params in [
        ("charge", {"immediate": True}),  # charging is not refused for use, doors, privacy
        ("precond", {"immediate": False}),  # stopping is always allowed
    ]:
        cid = b.submit(action, params)
        assert b.seq(cid) == ["Accepted", "SentToVehicle"]
        b.feedback(CommandResult.DONE)
        assert b.seq(cid)[-1] == "Success"


def test_a_low_traction_battery_on_the_cable_still_preconditions() -> None:
    b = Bench()
    sig(b, traction_soc=12.0, cable=True)  # the grid pays for the cabin
    cid = b.submit("precond", {"immediate": True})
    assert b.seq(cid) == ["Accepted", "SentToVehicle"]
    b.feedback(CommandResult.DONE)
    assert b.seq(cid)[-1] == "Success"


def test_same_action_pending_is_refused_other_actions_queue_in_order() -> None:
    b = Bench()
    first = b.submit("horn", {"beeps": 2})
    second = b.submit("horn", {"beeps": 2})
    lock = b.submit("lock")
    assert b.statuses[second] == [
        ("Accepted", None, ""),
        ("Failed", "SameActionInProgress", "same_action_pending"),
    ]
    assert b.seq(lock) == ["Accepted"]  # waits: one request on the bus at a time
    assert [f["CmdAction"] for _, f in b.frames] == [CommandAction.HORN]
    b.feedback(CommandResult.DONE)
    assert b.seq(first)[-1] == "Success"
    assert b.seq(lock) == ["Accepted", "SentToVehicle"]
    assert [f["CmdCounter"] for _, f in b.frames] == [1, 2]


def test_queue_follows_gateway_order_among_waiting_commands() -> None:
    b = Bench()
    b.take(b.ex.submit(make_command("lock", {}, order=100), b.now))  # on the bus
    late = make_command("unlock", {}, order=102)
    early = make_command("horn", {"beeps": 1}, order=101)
    b.take(b.ex.submit(late, b.now))
    b.take(b.ex.submit(early, b.now))
    b.feedback(CommandResult.DONE)
    b.feedback(CommandResult.DONE)
    actions = [f["CmdAction"] for _, f in b.frames]
    assert actions == [CommandAction.LOCK, CommandAction.HORN, CommandAction.UNLOCK]


def test_a_full_queue_and_bad_parameters_fail_at_once() -> None:
    b = Bench(max_queue=2)
    b.submit("lock")  # on the bus
    b.submit("horn", {"beeps": 1})
    b.submit("lights", {"duration_s": 1})
    full = b.submit("unlock")
    assert b.statuses[full] == [
        ("Failed", "TooManyRequestInShortTime", "queue_full: 2 commands wait")
    ]
    assert b.ex.full
    b2 = Bench()
    bad = b2.submit("horn", {"beeps": 0})
    assert b2.last(bad)[:2] == ("Failed", "WrongCommand")
    assert b2.seq(bad) == ["Failed"]
    assert b2.last(bad)[2].startswith("bad_params")


def test_a_command_submitted_twice_while_pending_is_counted_not_run_twice() -> None:
    b = Bench()
    command = make_command("lock", {})
    b.take(b.ex.submit(command, b.now))
    b.take(b.ex.submit(command, b.now))
    assert b.ex.stats.duplicates == 1
    assert b.seq(command.id) == ["Accepted", "SentToVehicle"]


# -- parameters on the frame ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "params", "can_action", "p0", "p1"),
    [
        ("horn", {"beeps": 7}, CommandAction.HORN, 7, 0),
        ("lights", {"duration_s": 45}, CommandAction.LIGHTS, 45, 0),
        ("unlock", {}, CommandAction.UNLOCK, 0, 0),
        ("wakeup", {}, CommandAction.WAKE_UP, 0, 0),
        ("precond", {"immediate": True}, CommandAction.PRECOND_START, 0, 0),
        ("precond", {"immediate": False}, CommandAction.PRECOND_STOP, 0, 0),
        ("charge", {"immediate": True}, CommandAction.CHARGE_START, 0, 0),
        ("charge", {"immediate": False}, CommandAction.CHARGE_STOP, 0, 0),
        ("charge", {"delayed_to_min": 23 * 60 + 45}, CommandAction.CHARGE_DEFERRED, 23, 45),
    ],
)
def test_parameters_go_in_the_request(
    action: str, params: dict[str, Any], can_action: CommandAction, p0: int, p1: int
) -> None:
    b = Bench()
    b.submit(action, params)
    frame = b.frames[-1][1]
    assert (frame["CmdAction"], frame["CmdParam0"], frame["CmdParam1"]) == (can_action, p0, p1)


def test_counter_wraps_from_255_to_1_never_0_and_skips_the_one_on_the_bus() -> None:
    b = Bench(state=ExecutorState(counter=254))
    counters = []
    for _ in range(3):
        b.submit("lock")
        counters.append(b.frames[-1][1]["CmdCounter"])
        b.feedback(CommandResult.DONE)
    assert counters == [255, 1, 2]
    assert b.persisted[-1].counter == 2
    # After a reboot the body controller may still show counter 3: the box takes 4.
    b2 = Bench(state=ExecutorState(counter=2))
    b2.take(b2.ex.on_feedback(3, CommandAction.LOCK, CommandResult.DONE, b2.now))
    b2.submit("lock")
    assert b2.frames[-1][1]["CmdCounter"] == 4


# -- sleep and wake-up ----------------------------------------------------------------------


def test_asleep_car_is_woken_first_then_checked_then_sent() -> None:
    b = Bench()
    b.take(b.ex.on_sleep(b.now))
    cid = b.submit("unlock")
    assert b.seq(cid) == ["Accepted", "WakingUpVehicle"]
    assert b.frames[-1][1]["CmdAction"] == CommandAction.WAKE_UP
    b.run_for(2_000)
    b.feedback(CommandResult.DONE)  # the car is up
    assert b.seq(cid) == ["Accepted", "WakingUpVehicle", "SentToVehicle"]
    assert b.frames[-1][1]["CmdAction"] == CommandAction.UNLOCK
    b.feedback(CommandResult.DONE)
    assert b.seq(cid)[-1] == "Success"
    assert not b.ex.car_asleep


def test_woken_car_is_checked_on_its_fresh_signals() -> None:
    b = Bench()
    b.take(b.ex.on_sleep(b.now))
    cid = b.submit("lock")
    sig(b, trunk=True)
    b.feedback(CommandResult.DONE)
    assert b.statuses[cid][-1] == ("Failed", "DoorsOpen", "open: Rear")
    assert b.seq(cid) == ["Accepted", "WakingUpVehicle", "Failed"]


def test_car_that_does_not_wake_times_out() -> None:
    b = Bench(wake_timeout_ms=30_000)
    b.take(b.ex.on_sleep(b.now))
    cid = b.submit("horn", {"beeps": 1})
    b.run_for(30_000)
    assert b.last(cid) == ("Failed", "VehicleConnectionTimeout", "vehicle_asleep")
    other = b.submit("lock")  # still asleep: woken again
    assert b.seq(other) == ["Accepted", "WakingUpVehicle"]
    b.feedback(CommandResult.REFUSED)
    assert b.last(other) == ("Failed", "VehicleError", "wake_up_refused")


def test_wakeup_command_wakes_the_car_and_asks_for_an_upload() -> None:
    b = Bench()
    b.take(b.ex.on_sleep(b.now))
    cid = b.submit("wakeup")
    assert b.seq(cid) == ["Accepted", "WakingUpVehicle", "SentToVehicle"]
    assert len(b.frames) == 1
    b.feedback(CommandResult.DONE)
    assert b.seq(cid)[-1] == "Success"
    assert b.uploads == 1
    again = b.submit("wakeup")
    assert b.seq(again) == ["Accepted", "SentToVehicle"]
    b.feedback(CommandResult.ALREADY_DONE)
    assert b.seq(again)[-1] == "AlreadyDone"
    assert b.uploads == 2


def test_ignition_on_means_the_car_is_awake() -> None:
    b = Bench()
    b.take(b.ex.on_sleep(b.now))
    sig(b, ignition=2)
    assert not b.ex.car_asleep


# -- the box's own part ---------------------------------------------------------------------


def test_stolen_is_box_state_and_refuses_what_helps_a_thief() -> None:
    b = Bench()
    cid = b.submit("stolen", {"stolen": True})
    assert b.seq(cid) == ["Accepted", "Success"]
    assert b.persisted[-1].stolen
    again = b.submit("stolen", {"stolen": True})
    assert b.seq(again) == ["Accepted", "AlreadyDone"]
    for action, params in [("unlock", {}), ("precond", {"immediate": True})]:
        refused = b.submit(action, params)
        assert b.last(refused) == ("Failed", "NotPossibleDueToVehicleStolenState", "stolen")
    lock = b.submit("lock")  # securing the car stays possible
    assert b.seq(lock) == ["Accepted", "SentToVehicle"]


@pytest.mark.parametrize(
    ("activate", "wanted"),
    [(True, CommandAction.IMMOBILIZER_ON), (False, CommandAction.IMMOBILIZER_OFF)],
)
def test_immobilize_asks_the_car_and_waits_for_its_answer(
    activate: bool, wanted: CommandAction
) -> None:
    b = Bench()
    sig(b, speed=50.0, ignition=2)  # a moving car: the engine runs on, it will not restart
    cid = b.submit("immobilize", {"activate": activate})
    assert b.seq(cid) == ["Accepted", "SentToVehicle"]
    assert [f["CmdAction"] for _, f in b.frames] == [wanted]
    b.feedback(CommandResult.DONE)
    assert b.seq(cid)[-1] == "Success"


def test_charge_preferences_alone_are_stored() -> None:
    b = Bench()
    cid = b.submit("charge", {"preferences": {"level": 3, "type": "Partial"}})
    assert b.seq(cid) == ["Accepted", "Success"]
    assert (b.persisted[-1].charge_level, b.persisted[-1].charge_type) == (3, "Partial")


# -- preconditioning programs ---------------------------------------------------------------


def test_programs_are_stored_then_fire_at_their_times_across_days() -> None:
    b = Bench()
    programs = [
        {"slot": 1, "enabled": True, "days": 0b0000101, "start_min": 7 * 60 + 30},  # Mon, Wed
        {"slot": 2, "enabled": True, "days": 0b1000000, "start_min": 18 * 60},  # Sun
        {"slot": 3, "enabled": False, "days": 0b1111111, "start_min": 12 * 60},
    ]
    cid = b.submit("precond", {"programs": programs})
    assert b.seq(cid) == ["Accepted", "Success"]
    assert [p.slot for p in b.persisted[-1].programs] == [1, 2, 3]
    same = b.submit("precond", {"programs": programs[:1]})
    assert b.seq(same) == ["Accepted", "AlreadyDone"]
    started: list[int] = []
    while b.timers and b.timers[0] <= T0 + 14 * DAY_MS:
        b.run_until(b.timers[0])  # the car answers at once
        for at, frame in b.frames[len(started) :]:
            assert frame["CmdAction"] == CommandAction.PRECOND_START
            started.append(at)
            b.feedback(CommandResult.DONE)
    hour = 3_600_000
    expected = [
        T0 + 7 * hour + 30 * MINUTE_MS,  # Mon
        T0 + 2 * DAY_MS + 7 * hour + 30 * MINUTE_MS,  # Wed
        T0 + 6 * DAY_MS + 18 * hour,  # Sun
    ]
    assert started == expected + [t + 7 * DAY_MS for t in expected]
    assert b.ex.stats.programs_fired == 6
    assert not any(frame["CmdAction"] != CommandAction.PRECOND_START for _, frame in b.frames)


def test_program_start_follows_the_rules_and_is_counted_when_skipped() -> None:
    b = Bench()
    b.submit("precond", {"programs": [{"slot": 4, "enabled": True, "days": 127, "start_min": 60}]})
    sig(b, traction_soc=5.0, cable=False)
    b.run_for(DAY_MS)
    assert b.frames == []
    assert b.ex.stats.programs_skipped == {"traction_soc": 1}
    sig(b, traction_soc=80.0)
    b.run_for(DAY_MS)
    assert len(b.frames) == 1
    b.run_for(10_000)  # no feedback: timed out, counted
    assert b.ex.stats.programs_skipped == {"traction_soc": 1, "no_feedback": 1}


def test_a_program_missed_by_more_than_the_grace_is_not_started_late() -> None:
    b = Bench(program_grace_ms=10 * MINUTE_MS)
    b.submit("precond", {"programs": [{"slot": 1, "enabled": True, "days": 127, "start_min": 60}]})
    b.timers.clear()  # the box was off: its timers were lost
    b.now = T0 + 61 * MINUTE_MS
    b.take(b.ex.on_timer(b.now))  # 1 min late: started
    assert len(b.frames) == 1
    b.feedback(CommandResult.DONE)
    b.timers.clear()
    b.now = T0 + DAY_MS + 90 * MINUTE_MS
    b.take(b.ex.on_timer(b.now))  # 30 min late: not started
    assert len(b.frames) == 1
    assert b.ex.stats.programs_skipped == {"missed": 1}


def test_next_program_time() -> None:
    monday_7 = Program(1, True, 0b0000001, 7 * 60)
    assert next_program_time([monday_7], T0) == T0 + 7 * 3_600_000
    assert next_program_time([monday_7], T0 + 7 * 3_600_000) == T0 + 7 * DAY_MS + 7 * 3_600_000
    assert next_program_time([Program(1, False, 127, 0), Program(2, True, 0, 0)], T0) is None
    with pytest.raises(ValueError, match="slot"):
        Program(5, True, 1, 0)


def test_state_round_trip_and_bad_state_is_a_clear_error() -> None:
    state = ExecutorState(
        counter=17,
        programs=(Program(2, True, 5, 450),),
        stolen=True,
        charge_level=4,
        charge_type="Full",
    )
    assert ExecutorState.from_bytes(state.to_bytes()) == state
    for bad in [
        b"",
        b"[]",
        b'{"format":"tcusim-commands/1"}',
        state.to_bytes().replace(b'"counter":17', b'"counter":300'),
        state.to_bytes().replace(b'"slot":2', b'"slot":9'),
        state.to_bytes().replace(b'"stolen":true', b'"stolen":1'),
    ]:
        with pytest.raises(CommandStateError):
            ExecutorState.from_bytes(bad)


# -- any interleaving -----------------------------------------------------------------------

_LEGAL = re.compile(
    r"^(Accepted(,WakingUpVehicle)?(,SentToVehicle)?,)?(Success|AlreadyDone|Failed)$"
)

_ACTIONS = st.sampled_from(
    [
        ("horn", {"beeps": 2}),
        ("horn", {"beeps": 99}),
        ("lights", {"duration_s": 30}),
        ("lock", {}),
        ("unlock", {}),
        ("wakeup", {}),
        ("precond", {"immediate": True}),
        ("precond", {"programs": [{"slot": 1, "enabled": True, "days": 127, "start_min": 5}]}),
        ("charge", {"delayed_to_min": 600}),
        ("charge", {"immediate": False}),
        ("stolen", {"stolen": True}),
        ("immobilize", {"activate": True}),
    ]
)
_SIGNALS = st.dictionaries(
    st.sampled_from([*sorted(PARKED), "Not.A.Signal"]),
    st.one_of(st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True)),
    max_size=4,
)
_STEP = st.one_of(
    st.tuples(st.just("submit"), _ACTIONS),
    st.tuples(st.just("signals"), _SIGNALS),
    st.tuples(
        st.just("feedback"),
        st.tuples(st.one_of(st.none(), st.integers(0, 255)), st.integers(0, 12), st.integers(0, 6)),
    ),
    st.tuples(st.just("advance"), st.integers(0, 120_000)),
    st.tuples(st.just("sleep"), st.none()),
)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(_STEP, max_size=40), max_queue=st.integers(1, 6))
def test_any_interleaving_ends_every_command_once_in_a_legal_order(
    steps: list[tuple[str, Any]], max_queue: int
) -> None:
    b = Bench(signals=None, max_queue=max_queue)
    submitted: list[bytes] = []
    for kind, arg in steps:
        if kind == "submit":
            submitted.append(b.submit(*arg))
        elif kind == "signals":
            b.take(b.ex.on_signals(arg, b.now))
        elif kind == "feedback":
            counter, action, result = arg
            if counter is None:  # an answer to the request on the bus
                counter = b.frames[-1][1]["CmdCounter"] if b.frames else 0
                action = b.frames[-1][1]["CmdAction"] if b.frames else action
            b.take(b.ex.on_feedback(counter, action, result, b.now))
        elif kind == "advance":
            b.run_for(arg)
        else:
            b.take(b.ex.on_sleep(b.now))
    for _ in range(100):  # let every timeout run out
        if not b.ex.busy:
            break
        b.run_until(b.timers[0] if b.timers else b.now)
    assert not b.ex.busy
    for cid in submitted:
        statuses = b.statuses[cid]
        names = [s for s, _, _ in statuses]
        assert _LEGAL.match(",".join(names)), names
        assert sum(n in ("Success", "AlreadyDone", "Failed") for n in names) == 1
        for status, cause, _ in statuses:
            assert (cause is not None) == (status == "Failed")
    for frame in (f for _, f in b.frames):
        assert 1 <= frame["CmdCounter"] <= 255
        assert all(0 <= v <= 255 for v in frame.values())
