"""The simulated car answers remote command frames, and their effects show on the bus."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import cast

import can
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from can_dbc.network import (
    COMMAND_FEEDBACK,
    COMMAND_REQUEST,
    CommandAction,
    CommandResult,
    load_car_network,
)
from firmware_sim.clock import SimScheduler
from firmware_sim.config import TcuConfig
from firmware_sim.sim.commands import DEFAULT_DELAYS_MS, BodyController, CommandRequest
from firmware_sim.sim.drive import WEST_PARIS, Drive, city_drive
from firmware_sim.sim.physics import Energy, VehicleState
from firmware_sim.sim.session import SimulatedCar
from firmware_sim.sim.vehicle import SimBus, SimVehicle

CAR = load_car_network()
DATABASE = CAR.database
REQUEST = CAR.message(COMMAND_REQUEST)
FEEDBACK = CAR.message(COMMAND_FEEDBACK)
START_MS = 1_767_340_800_000  # 2026-01-02 08:00:00 UTC
A, R = CommandAction, CommandResult
IGNITION = "Vehicle.LowVoltageSystemState"
DRIVER_DOOR = "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"
TRUNK = "Vehicle.Body.Trunk.Rear.IsOpen"
LOCK = "Vehicle.Cabin.DoorsLockState"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
_channels = itertools.count()
#: The messages the tests read: the feedback and those that show the commands' effects.
WATCHED = {
    COMMAND_FEEDBACK,
    "BSI_Body",  # LockState, HornActive
    "HS2_DAT_MDD_CMD_452",  # TURN_SIGNAL_STATUS: the flashing lights
    "BSI_Precond",  # PrecondState
    "BSI_CabinTemp",  # CabinTemp
    "BMS_Charging",  # TractionSoc, ChargingState
    "Dat3_BSI",  # P434_Com_rBattChHiRes: the 12 V battery's charge
}


def parked(hours: float = 48) -> Drive:
    """A car that stays where it is (unless a test switches it on)."""
    return Drive(duration_s=hours * 3600, route=WEST_PARIS, speed_profile=[(0.0, 0.0)])


def cruising() -> Drive:
    """A car that drives at 50 km/h once switched on."""
    return Drive(duration_s=3600, route=WEST_PARIS, speed_profile=[(0.0, 50.0)])


class Bench:
    """A simulated car on a sim bus, and the box's end of the bus: it sends the requests
    and keeps the frames the car sends, decoded with cantools."""

    def __init__(
        self,
        energy: Energy = Energy.ELECTRIC,
        *,
        drive: Drive | None = None,
        delays: int | Mapping[CommandAction, int] | None = None,
        soc_pct: float = 80.0,
        outside_c: float = 12.0,
    ) -> None:
        self.scheduler = SimScheduler(START_MS)
        channel = f"test-sim-commands-{next(_channels)}"
        self.car_bus = SimBus(channel)
        self.tcu = SimBus(channel)
        self.state = VehicleState(energy, soc_pct=soc_pct, outside_c=outside_c)
        self.vehicle = SimVehicle(
            CAR.mapping,
            self.state,
            drive or parked(),
            self.car_bus,
            self.scheduler,
            command_delays_ms=delays,
        )
        assert self.vehicle.body is not None
        self.body: BodyController = self.vehicle.body
        self.counter = 0
        #: (t_ms, message name, decoded signals) of every frame the car sent, in order.
        self.frames: list[tuple[int, str, dict[str, int | float]]] = []
        self.vehicle.start()

    def send(self, action: int, p0: int = 0, p1: int = 0, *, counter: int | None = None) -> int:
        """Send one TCU_CmdRequest (encoded by cantools); its counter."""
        if counter is None:
            self.counter = self.counter % 255 + 1
            counter = self.counter
        data = REQUEST.encode(
            {
                "CmdCounter": counter,
                "CmdAction": action,
                "CmdParam0": p0,
                "CmdParam1": p1,
                "CmdParam2": 0,
                "CmdParam3": 0,
                "CmdParam4": 0,
                "CmdParam5": 0,
            },
            strict=False,
        )
        self.send_raw(data)
        return counter

    def send_raw(self, data: bytes, *, remote: bool = False) -> None:
        """Put any frame with the request's id on the bus."""
        self.tcu.send(
            can.Message(
                timestamp=self.scheduler.now_ms / 1000,
                arbitration_id=REQUEST.frame_id,
                is_extended_id=False,
                is_remote_frame=remote,
                dlc=len(data),
                data=data,
            )
        )

    def run(self, seconds: float) -> None:
        """Run the car, decoding the frames it sends (those of the body and the BMS)."""
        end = self.scheduler.now_ms + round(seconds * 1000)
        while self.scheduler.now_ms < end:
            self.scheduler.run_until(min(end, self.scheduler.now_ms + 60_000))
            while (msg := self.tcu.recv(0)) is not None:
                message = DATABASE.get_message_by_frame_id(msg.arbitration_id)
                if message.name in WATCHED:
                    decoded = cast(
                        dict[str, int | float],
                        message.decode(bytes(msg.data), decode_choices=False),
                    )
                    self.frames.append((round(msg.timestamp * 1000), message.name, decoded))

    def signal(self, message: str, signal: str, since_ms: int = 0) -> list[tuple[int, float]]:
        """Each value the car sent of one signal: (ms since the start, value)."""
        return [
            (t - START_MS, values[signal])
            for t, name, values in self.frames
            if name == message and t - START_MS >= since_ms
        ]

    def changes(self, message: str, signal: str) -> list[tuple[int, float]]:
        """Only the changes of one signal: (ms since the start, new value)."""
        out: list[tuple[int, float]] = []
        for t, value in self.signal(message, signal):
            if not out or out[-1][1] != value:
                out.append((t, value))
        return out

    def feedback(self, counter: int | None = None) -> list[tuple[int, int, int]]:
        """The successive feedback states (counter, action, result) the car sent."""
        out: list[tuple[int, int, int]] = []
        for _t, name, v in self.frames:
            if name != COMMAND_FEEDBACK:
                continue
            state = (int(v["FbCounter"]), int(v["FbAction"]), int(v["FbResult"]))
            if (counter is None or state[0] == counter) and (not out or out[-1] != state):
                out.append(state)
        return out

    def results(self, counter: int) -> list[CommandResult]:
        """The results the car reported for the command with this counter, in order."""
        return [R(r) for _c, _a, r in self.feedback(counter)]

    def close(self) -> None:
        self.car_bus.shutdown()
        self.tcu.shutdown()


@pytest.fixture
def bench() -> Iterator[Bench]:
    b = Bench()
    try:
        yield b
    finally:
        b.close()


def command(bench: Bench, action: int, p0: int = 0, p1: int = 0, wait: float = 2.0) -> int:
    """Send a command and let the car act on it; its counter."""
    counter = bench.send(action, p0, p1)
    bench.run(wait)
    return counter


# -- feedback ---------------------------------------------------------------------------------


def test_before_any_command_the_feedback_says_none(bench: Bench) -> None:
    bench.run(1)
    assert bench.feedback() == [(0, 0, 0)]


def test_a_command_is_in_progress_for_its_delay_then_done(bench: Bench) -> None:
    bench.run(1)
    counter = command(bench, A.LOCK)  # the car starts locked: unlock first
    assert bench.results(counter) == [R.ALREADY_DONE]
    counter = command(bench, A.UNLOCK)
    assert bench.feedback(counter) == [
        (counter, A.UNLOCK, R.IN_PROGRESS),
        (counter, A.UNLOCK, R.DONE),
    ]
    sent = [
        (t, v["FbResult"])
        for t, n, v in bench.frames
        if n == COMMAND_FEEDBACK and v["FbCounter"] == counter
    ]
    started = next(t for t, r in sent if r == R.IN_PROGRESS)
    done = next(t for t, r in sent if r == R.DONE)
    assert done - started == DEFAULT_DELAYS_MS[A.UNLOCK]
    unlocked_at, lock_state = bench.changes("BSI_Body", "LockState")[-1]
    assert lock_state == 0
    assert 0 <= unlocked_at - (done - START_MS) <= 200  # BSI_Body's cycle


def test_the_feedback_goes_out_at_the_next_tick_then_every_cycle() -> None:
    bench = Bench(delays=0)
    try:
        bench.run(1.03)
        sent_at = bench.scheduler.now_ms
        counter = bench.send(A.WAKE_UP)
        bench.run(0.5)
        times = [t for t, n, v in bench.frames if n == COMMAND_FEEDBACK and v["FbCounter"]]
        assert times[0] == sent_at + 10  # the tick after the request, off the 100 ms cycle
        assert all(t % 100 == START_MS % 100 for t in times[1:])
        assert bench.results(counter) == [R.DONE]
    finally:
        bench.close()


def test_zero_delays_answer_every_action_at_once() -> None:
    bench = Bench(Energy.ELECTRIC, delays=0)
    try:
        bench.state.plug_in()
        bench.run(0.5)
        for action, p0 in [
            (A.WAKE_UP, 0),
            (A.HORN, 1),
            (A.LIGHTS, 1),
            (A.UNLOCK, 0),
            (A.LOCK, 0),
            (A.PRECOND_START, 0),
            (A.PRECOND_STOP, 0),
            (A.CHARGE_START, 0),
            (A.CHARGE_STOP, 0),
            (A.CHARGE_DEFERRED, 23),
        ]:
            counter = bench.send(action, p0)
            bench.run(0.01)
            assert bench.results(counter) == [R.DONE], action.name
    finally:
        bench.close()


def test_delays_are_set_per_action() -> None:
    bench = Bench(delays={A.UNLOCK: 2000})
    try:
        bench.body.set_delays({A.LOCK: 0})
        counter = command(bench, A.UNLOCK, wait=1.5)
        assert bench.results(counter) == [R.IN_PROGRESS]
        bench.run(1)
        assert bench.results(counter) == [R.IN_PROGRESS, R.DONE]
        counter = command(bench, A.LOCK, wait=0.2)
        assert bench.results(counter) == [R.DONE]
        with pytest.raises(ValueError, match="whole ms"):
            bench.body.set_delays(-1)
    finally:
        bench.close()


def test_a_newer_command_takes_over_the_feedback(bench: Bench) -> None:
    first = bench.send(A.UNLOCK)
    bench.run(0.05)
    second = command(bench, A.HORN, 2)
    assert bench.results(first) == [R.IN_PROGRESS]
    assert bench.results(second) == [R.IN_PROGRESS, R.DONE]
    assert bench.state.values[LOCK] == 0  # the first still took effect
    assert bench.body.stats.results[R.DONE] == 2


def test_a_newer_command_of_the_same_actuator_cancels_the_older(bench: Bench) -> None:
    first = bench.send(A.UNLOCK)
    bench.run(0.1)
    second = command(bench, A.LOCK)  # still locked: nothing to do, and the unlock is off
    assert bench.results(first) == [R.IN_PROGRESS]
    assert bench.results(second) == [R.ALREADY_DONE]
    bench.run(2)
    assert bench.state.values[LOCK] == 1
    assert bench.changes("BSI_Body", "LockState") == [(0, 1)]


# -- horn and lights --------------------------------------------------------------------------


def test_the_horn_sounds_the_number_of_beeps(bench: Bench) -> None:
    bench.run(1)
    counter = command(bench, A.HORN, 3, wait=5)
    assert bench.results(counter) == [R.IN_PROGRESS, R.DONE]
    horn = bench.changes("BSI_Body", "HornActive")
    on = [t for t, v in horn if v == 1]
    off = [t for t, v in horn[1:] if v == 0]
    assert len(on) == len(off) == 3
    assert [b - a for a, b in itertools.pairwise(on)] == [1000, 1000]
    assert all(500 - 200 <= b - a <= 500 + 200 for a, b in zip(on, off, strict=True))
    assert bench.state.values["Vehicle.Body.Horn.IsActive"] == 0


def test_horn_param_0_is_one_beep(bench: Bench) -> None:
    command(bench, A.HORN, 0, wait=3)
    assert sum(1 for _t, v in bench.changes("BSI_Body", "HornActive") if v == 1) == 1


def test_the_lights_flash_for_the_duration(bench: Bench) -> None:
    counter = command(bench, A.LIGHTS, 4, wait=6)
    assert bench.results(counter) == [R.IN_PROGRESS, R.DONE]
    flashing = bench.changes("HS2_DAT_MDD_CMD_452", "TURN_SIGNAL_STATUS")
    assert [v for _t, v in flashing] == [0, 3, 0]  # both sides
    assert 4000 - 100 <= flashing[2][0] - flashing[1][0] <= 4000 + 100


def test_lights_param_0_is_ten_seconds(bench: Bench) -> None:
    command(bench, A.LIGHTS, 0, wait=12)
    flashing = bench.changes("HS2_DAT_MDD_CMD_452", "TURN_SIGNAL_STATUS")
    assert 9900 <= flashing[2][0] - flashing[1][0] <= 10_100


@pytest.mark.parametrize(("action", "p0"), [(A.HORN, 11), (A.LIGHTS, 61)])
def test_horn_and_lights_out_of_range_are_refused(
    bench: Bench, action: CommandAction, p0: int
) -> None:
    counter = command(bench, action, p0)
    assert bench.results(counter) == [R.REFUSED]
    assert bench.state.values["Vehicle.Body.Horn.IsActive"] == 0


@pytest.mark.parametrize("action", [A.HORN, A.LIGHTS, A.UNLOCK])
def test_refused_while_moving(action: CommandAction) -> None:
    bench = Bench(Energy.FUEL, drive=cruising())
    try:
        bench.vehicle.apply({IGNITION: 2})
        bench.run(5)
        assert bench.state.moving
        counter = command(bench, action, 1)
        assert bench.results(counter) == [R.REFUSED]
        assert bench.body.events[-1].reason == "vehicle moving"
        assert bench.state.values[LOCK] == 1
    finally:
        bench.close()


# -- locks ------------------------------------------------------------------------------------


def test_unlock_lock_super_lock(bench: Bench) -> None:
    results = []
    for action, p0 in [(A.UNLOCK, 0), (A.UNLOCK, 0), (A.LOCK, 0), (A.LOCK, 1), (A.LOCK, 0)]:
        results.append(bench.results(command(bench, action, p0))[-1])
    assert results == [R.DONE, R.ALREADY_DONE, R.DONE, R.DONE, R.ALREADY_DONE]
    assert [v for _t, v in bench.changes("BSI_Body", "LockState")] == [1, 0, 1, 2]


@pytest.mark.parametrize("door", [DRIVER_DOOR, TRUNK])
def test_lock_with_a_door_open_is_refused(bench: Bench, door: str) -> None:
    command(bench, A.UNLOCK)
    bench.vehicle.apply({door: 1})
    counter = command(bench, A.LOCK)
    assert bench.results(counter) == [R.REFUSED]
    assert bench.body.events[-1].reason == "door open"
    assert bench.state.values[LOCK] == 0


def test_a_door_opened_while_locking_fails_the_lock(bench: Bench) -> None:
    command(bench, A.UNLOCK)
    counter = bench.send(A.LOCK)
    bench.run(0.2)
    bench.vehicle.apply({DRIVER_DOOR: 1})
    bench.run(1)
    assert bench.results(counter) == [R.IN_PROGRESS, R.FAILED]
    assert bench.state.values[LOCK] == 0


def test_super_lock_with_the_ignition_on_and_bad_modes_are_refused(bench: Bench) -> None:
    command(bench, A.UNLOCK)
    assert bench.results(command(bench, A.LOCK, 2)) == [R.REFUSED]
    bench.vehicle.apply({IGNITION: 2})
    assert bench.results(command(bench, A.LOCK, 1)) == [R.REFUSED]
    assert bench.results(command(bench, A.LOCK, 0)) == [R.IN_PROGRESS, R.DONE]


def test_an_actuator_fault_fails_the_command(bench: Bench) -> None:
    bench.body.failing[A.UNLOCK] = "lock motor"
    counter = command(bench, A.UNLOCK)
    assert bench.results(counter) == [R.IN_PROGRESS, R.FAILED]
    assert bench.body.events[-1].reason == "lock motor"
    assert bench.state.values[LOCK] == 1


def test_a_deaf_body_controller_does_not_answer(bench: Bench) -> None:
    bench.body.deaf = True
    counter = command(bench, A.UNLOCK)
    assert bench.feedback(counter) == []
    assert bench.body.stats.ignored == 1


# -- preconditioning --------------------------------------------------------------------------


@pytest.mark.parametrize("energy", list(Energy))
def test_preconditioning_warms_the_cabin_and_draws_the_battery(energy: Energy) -> None:
    bench = Bench(energy, outside_c=2.0)
    try:
        bench.run(60)
        counter = command(bench, A.PRECOND_START, 22)
        assert bench.results(counter) == [R.IN_PROGRESS, R.DONE]
        bench.run(15 * 60)
        cabin = bench.signal("BSI_CabinTemp", "CabinTemp")
        before = [v for t, v in cabin if t < 60_000]
        after = [v for t, v in cabin if t > 15 * 60_000]
        assert before[-1] == pytest.approx(4.0, abs=0.2)
        assert after[-1] > 15  # most of the way to 22 in 15 minutes
        assert [v for _t, v in bench.changes("BSI_Precond", "PrecondState")] == [0, 1]
        assert bench.state.hvac_used_kwh > 0
        if energy is Energy.FUEL:
            lv = bench.signal("Dat3_BSI", "P434_Com_rBattChHiRes")
            assert lv[-1][1] < lv[0][1] - 2  # the heater draws the 12 V battery
        else:
            soc = bench.signal("BMS_Charging", "TractionSoc")
            assert soc[-1][1] < soc[0][1] - 1  # the traction battery
        counter = command(bench, A.PRECOND_STOP)
        assert bench.results(counter) == [R.IN_PROGRESS, R.DONE]
        assert bench.changes("BSI_Precond", "PrecondState")[-1][1] == 0
        assert bench.results(command(bench, A.PRECOND_STOP)) == [R.ALREADY_DONE]
    finally:
        bench.close()


def test_preconditioning_on_a_low_battery_is_refused() -> None:
    bench = Bench(Energy.ELECTRIC, soc_pct=12.0)
    try:
        assert bench.results(command(bench, A.PRECOND_START)) == [R.REFUSED]
        assert bench.body.events[-1].reason == "traction battery low"
        bench.state.plug_in()  # on mains it can
        assert bench.results(command(bench, A.PRECOND_START)) == [R.IN_PROGRESS, R.DONE]
    finally:
        bench.close()
    bench = Bench(Energy.FUEL)
    try:
        bench.state.set_low_battery()
        assert bench.results(command(bench, A.PRECOND_START)) == [R.REFUSED]
        assert bench.body.events[-1].reason == "12 V battery low"
    finally:
        bench.close()


def test_preconditioning_already_on_bad_target_and_ignition(bench: Bench) -> None:
    assert bench.results(command(bench, A.PRECOND_START, 40)) == [R.REFUSED]
    assert bench.results(command(bench, A.PRECOND_START)) == [R.IN_PROGRESS, R.DONE]
    assert bench.results(command(bench, A.PRECOND_START, 21)) == [R.ALREADY_DONE]
    assert bench.results(command(bench, A.PRECOND_START, 18)) == [R.IN_PROGRESS, R.DONE]
    assert bench.state.precond_target_c == 18
    bench.vehicle.apply({IGNITION: 2})  # the driver is in: preconditioning ends
    assert bench.state.values["Vehicle.Cabin.HVAC.Preconditioning.State"] == 2
    assert bench.results(command(bench, A.PRECOND_START)) == [R.REFUSED]


def test_preconditioning_drained_to_its_floor_fails() -> None:
    bench = Bench(Energy.HYBRID, soc_pct=20.5)
    try:
        command(bench, A.PRECOND_START)
        bench.run(30 * 60)
        assert bench.changes("BSI_Precond", "PrecondState")[-1][1] == 3  # Failure
        assert float(bench.state.values[SOC]) == pytest.approx(15.0, abs=0.1)
    finally:
        bench.close()


# -- charging ---------------------------------------------------------------------------------


def test_charge_start_and_stop(bench: Bench) -> None:
    assert bench.results(command(bench, A.CHARGE_START)) == [R.REFUSED]
    assert bench.body.events[-1].reason == "no charging cable"
    bench.state.plug_in()
    assert bench.results(command(bench, A.CHARGE_STOP)) == [R.ALREADY_DONE]
    assert bench.results(command(bench, A.CHARGE_START)) == [R.IN_PROGRESS, R.DONE]
    assert bench.results(command(bench, A.CHARGE_START)) == [R.ALREADY_DONE]
    bench.run(60)
    assert bench.results(command(bench, A.CHARGE_STOP)) == [R.IN_PROGRESS, R.DONE]
    states = [v for _t, v in bench.changes("BMS_Charging", "ChargingState")]
    assert states == [0, 3, 1, 3]  # Disconnected, Stopped, InProgress, Stopped
    soc = bench.signal("BMS_Charging", "TractionSoc")
    assert soc[-1][1] > soc[0][1]


def test_charge_start_with_the_ignition_on_or_full_battery() -> None:
    bench = Bench(Energy.ELECTRIC, soc_pct=100.0)
    try:
        bench.state.plug_in()
        assert bench.results(command(bench, A.CHARGE_START)) == [R.ALREADY_DONE]
        bench.state.values[SOC] = 50.0
        bench.vehicle.apply({IGNITION: 2})
        assert bench.results(command(bench, A.CHARGE_START)) == [R.REFUSED]
    finally:
        bench.close()


@pytest.mark.parametrize("action", [A.CHARGE_START, A.CHARGE_STOP, A.CHARGE_DEFERRED])
def test_a_fuel_car_refuses_charge_commands(action: CommandAction) -> None:
    bench = Bench(Energy.FUEL)
    try:
        assert bench.results(command(bench, action, 9)) == [R.REFUSED]
        assert bench.body.events[-1].reason == "no traction battery"
    finally:
        bench.close()


def test_a_deferred_charge_starts_at_its_time(bench: Bench) -> None:
    bench.state.plug_in()
    command(bench, A.CHARGE_START)
    counter = command(bench, A.CHARGE_DEFERRED, 8, 20)  # 08:20 UTC, 20 minutes away
    assert bench.results(counter) == [R.IN_PROGRESS, R.DONE]
    assert bench.body.deferred_at_ms == START_MS + 20 * 60_000
    assert bench.results(command(bench, A.CHARGE_DEFERRED, 8, 20)) == [R.ALREADY_DONE]
    bench.run(21 * 60)
    changes = bench.changes("BMS_Charging", "ChargingState")
    assert [v for _t, v in changes] == [3, 1, 3, 1]  # Stopped, InProgress, Stopped, InProgress
    assert changes[-1][0] - 20 * 60_000 in range(0, 1001)  # the BMS frame's 1 s cycle
    assert bench.body.stats.deferred_started == 1 and bench.body.deferred_at_ms is None


def test_a_deferred_time_already_past_today_is_tomorrow(bench: Bench) -> None:
    bench.state.plug_in()
    command(bench, A.CHARGE_DEFERRED, 7, 59)
    assert bench.body.deferred_at_ms == START_MS - 60_000 + 86_400_000
    assert bench.results(command(bench, A.CHARGE_DEFERRED, 24, 0)) == [R.REFUSED]
    assert bench.results(command(bench, A.CHARGE_DEFERRED, 8, 60)) == [R.REFUSED]
    assert bench.results(command(bench, A.CHARGE_STOP)) == [R.IN_PROGRESS, R.DONE]  # cancels
    assert bench.body.deferred_at_ms is None


def test_a_deferred_charge_lapses_without_a_cable(bench: Bench) -> None:
    bench.state.plug_in()
    command(bench, A.CHARGE_DEFERRED, 8, 1)
    bench.state.unplug()
    bench.run(60)
    assert bench.body.stats.deferred_lapsed == 1
    assert bench.changes("BMS_Charging", "ChargingState")[-1][1] == 0


# -- what the box may send --------------------------------------------------------------------


@pytest.mark.parametrize("action", [0, 13, 200, 255])
def test_an_unknown_action_is_refused_and_echoed(bench: Bench, action: int) -> None:
    counter = command(bench, action, wait=0.2)
    assert bench.feedback(counter) == [(counter, action, R.REFUSED)]
    assert bench.body.events[-1].reason == "no such action"


@pytest.mark.parametrize("length", [0, 1, 7])
def test_a_short_request_is_counted_as_malformed(bench: Bench, length: int) -> None:
    bench.send_raw(bytes([9, A.HORN, 1, 0, 0, 0, 0, 0][:length]))
    bench.send_raw(bytes(8), remote=True)
    bench.run(0.5)
    assert bench.feedback() == [(0, 0, 0)]
    assert bench.body.stats.malformed == 2
    assert bench.body.stats.malformed_reasons == {f"length {length}": 1, "remote frame": 1}


def test_the_request_parser() -> None:
    request = CommandRequest.from_bytes(bytes([7, 2, 3, 0, 0, 0, 0, 9]))
    assert (request.counter, request.kind, request.params) == (7, A.HORN, (3, 0, 0, 0, 0, 9))
    assert CommandRequest.from_bytes(bytes([1, 99, 0, 0, 0, 0, 0, 0])).kind is None
    with pytest.raises(ValueError, match="8 bytes"):
        CommandRequest.from_bytes(b"\x01")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(
        st.one_of(
            st.binary(min_size=8, max_size=8),
            st.binary(max_size=12).filter(lambda b: len(b) != 8),
            st.tuples(
                st.integers(0, 255),
                st.sampled_from(list(A)),
                st.integers(0, 255),
                st.integers(0, 255),
            ).map(lambda t: bytes([t[0], t[1], t[2], t[3], 0, 0, 0, 0])),
        ),
        min_size=1,
        max_size=6,
    ),
    energy=st.sampled_from(list(Energy)),
    plugged=st.booleans(),
    gap_ms=st.integers(0, 700),
)
def test_any_request_gets_an_answer_or_is_counted(
    frames: list[bytes], energy: Energy, plugged: bool, gap_ms: int
) -> None:
    bench = Bench(energy)
    try:
        if plugged and energy is not Energy.FUEL:
            bench.state.plug_in()
        bench.run(0.1)
        for data in frames:
            bench.send_raw(data)
            bench.run(gap_ms / 1000)
        bench.run(0.02)
        well_formed = [d for d in frames if len(d) == 8]
        stats = bench.body.stats
        assert stats.requests == len(well_formed)
        assert stats.malformed == len(frames) - len(well_formed)
        if well_formed:
            last = well_formed[-1]
            counter, action, result = bench.feedback()[-1]
            assert (counter, action) == (last[0], last[1])
            assert result in set(R)
        bench.run(3)  # every effect ends or settles without error
        assert 0 <= float(bench.state.values.get(SOC, 0.0)) <= 100
    finally:
        bench.close()


# -- with the box on the bus ------------------------------------------------------------------


def test_the_simulated_car_answers_frames_from_the_box_bus(tmp_path: Path) -> None:
    car = SimulatedCar(
        TcuConfig.from_mapping({"vin": "VR3UHZKXZLT000301"}),
        city_drive(10),
        SimScheduler(START_MS),
        data_dir=tmp_path,
        broker_url=None,
        energy=Energy.ELECTRIC,
    )
    try:
        car.start()
        car.run_for(1)
        box_bus = car.box.bus
        assert box_bus is not None
        params = {f"CmdParam{i}": 0 for i in range(6)}
        data = REQUEST.encode({**params, "CmdCounter": 5, "CmdAction": "Horn", "CmdParam0": 1})
        box_bus.send(can.Message(arbitration_id=REQUEST.frame_id, is_extended_id=False, data=data))
        car.run_for(1)
        body = car.vehicle.body
        assert body is not None
        assert body.feedback == (5, A.HORN, R.DONE)
        assert [e.result for e in body.events] == [R.IN_PROGRESS, R.DONE]
    finally:
        car.close(0)


def test_runs_are_deterministic() -> None:
    def run() -> list[tuple[int, str, dict[str, int | float]]]:
        bench = Bench(Energy.HYBRID)
        try:
            bench.state.plug_in()
            for action, p0 in [(A.HORN, 2), (A.UNLOCK, 0), (A.PRECOND_START, 20)]:
                command(bench, action, p0, wait=0.3)
            command(bench, A.CHARGE_DEFERRED, 8, 1, wait=90)
            return bench.frames
        finally:
            bench.close()

    assert run() == run()


def test_the_immobiliser_holds_the_engine_until_released(bench: Bench) -> None:
    state = bench.body.state
    counter = command(bench, A.IMMOBILIZER_ON, wait=1.0)
    assert bench.feedback(counter)[-1] == (counter, A.IMMOBILIZER_ON, R.DONE)
    assert state.immobilized
    state.apply({"Vehicle.LowVoltageSystemState": 2})  # the key turns to On...
    state.apply({"Vehicle.LowVoltageSystemState": 3})  # ...and to Start: one attempt
    assert not state.ignition_on and state.starts_refused == 1
    state.apply({"Vehicle.LowVoltageSystemState": 0})  # back, and a second turn
    state.apply({"Vehicle.LowVoltageSystemState": 3})
    assert not state.ignition_on and state.starts_refused == 2
    counter = command(bench, A.IMMOBILIZER_ON, wait=1.0)
    assert bench.feedback(counter)[-1] == (counter, A.IMMOBILIZER_ON, R.ALREADY_DONE)
    counter = command(bench, A.IMMOBILIZER_OFF, wait=1.0)
    assert bench.feedback(counter)[-1] == (counter, A.IMMOBILIZER_OFF, R.DONE)
    state.apply({"Vehicle.LowVoltageSystemState": 3})
    assert state.ignition_on
