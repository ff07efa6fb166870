"""Remote commands in the box, end to end over a real Mosquitto, in simulated time.

A command station (a paho client) signs commands, publishes them on the box's down topic and
collects the statuses the box reports; the simulated car's body controller answers on the CAN
bus. Each test checks the statuses, the failure cause, and what moved on the bus.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import can
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from can_dbc.catalog import default_catalog
from can_dbc.network import CommandAction
from firmware_sim.clock import SimScheduler
from firmware_sim.command_link import CommandSettings
from firmware_sim.config import TcuConfig, UplinkConfig, parse_broker_url
from firmware_sim.core import Action, JournalSamples
from firmware_sim.downlink import (
    Command,
    RemoteStatus,
    StatusMessage,
    cmd_topic,
    decode_status,
    down_topic,
    encode_status,
    new_command,
    sign_command,
    vehicle_key,
)
from firmware_sim.sim.drive import WEST_PARIS, Drive
from firmware_sim.sim.physics import Energy
from firmware_sim.sim.session import SimulatedCar
from firmware_sim.uplink import MqttUplink
from gateway.store import sample_value

CATALOG = default_catalog()
VIN = "VR3UHZKXZMT200002"
MASTER = bytes(range(32))
KEY = vehicle_key(MASTER, VIN)
START_MS = 1_782_864_000_000  # 2026-07-01T00:00:00Z
WAIT = 20.0  # wall seconds for any one command
DRIVER_DOOR = "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"
IGNITION = "Vehicle.LowVoltageSystemState"
PRIVACY = "Vehicle.Connectivity.PrivacySetting"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
PARKED = Drive(duration_s=86_400, route=WEST_PARIS, speed_profile=((0, 0.0),))


class Station:
    """Sends signed commands to one car and collects its statuses."""

    def __init__(self, broker: Any, car: SimulatedCar, key: bytes = KEY) -> None:
        self.car = car
        self.key = key
        self.statuses: list[StatusMessage] = []
        self.order = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"station-{id(self)}")
        self.client.on_message = lambda _c, _u, m: self.statuses.append(decode_status(m.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        info = self.client.subscribe(cmd_topic(VIN), qos=1)
        assert info[0] == mqtt.MQTT_ERR_SUCCESS

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def command(
        self, action: str, params: Mapping[str, Any] | None = None, **fields: Any
    ) -> Command:
        self.order += 1
        issued = fields.pop("issued_at_ms", self.car.scheduler.now_ms)
        return new_command(
            fields.pop("vin", VIN),
            action,
            params or {},
            issued_at_ms=issued,
            order=fields.pop("order", self.order),
            **fields,
        )

    def publish(self, raw: bytes) -> None:
        self.client.publish(down_topic(VIN), raw, qos=1).wait_for_publish(WAIT)

    def of(self, command_id: bytes) -> list[StatusMessage]:
        return [s for s in self.statuses if s.command_id == command_id]

    def run_until(self, done: Any, *, step_s: float = 0.05, max_sim_s: float = 3_600) -> None:
        """Advance simulated time in small steps until ``done()``; wall-clock bounded."""
        deadline = time.monotonic() + WAIT
        end = self.car.scheduler.now_ms + max_sim_s * 1000
        while not done():
            assert time.monotonic() < deadline, f"not done in {WAIT} s: {self.statuses}"
            assert self.car.scheduler.now_ms < end, f"not done in {max_sim_s} s simulated"
            self.car.run_for(step_s)
            time.sleep(0.0005)

    def send(
        self, action: str, params: Mapping[str, Any] | None = None, **fields: Any
    ) -> list[StatusMessage]:
        """Sign and send one command; its statuses up to the final one."""
        cmd = self.command(action, params, **fields)
        self.publish(sign_command(cmd, self.key))
        self.run_until(lambda: any(s.status.done for s in self.of(cmd.command_id)))
        return self.of(cmd.command_id)


def names(statuses: list[StatusMessage]) -> list[str]:
    return [s.status.value for s in statuses]


def outcome(statuses: list[StatusMessage]) -> tuple[str, str | None]:
    last = statuses[-1]
    return last.status.value, last.failure_cause.value if last.failure_cause else None


@pytest.fixture
def make_car(tmp_path: Path, broker: Any) -> Iterator[Any]:
    made: list[tuple[SimulatedCar, Station]] = []

    def make(
        energy: Energy = Energy.ELECTRIC,
        settings: CommandSettings | None = None,
        delays: int | Mapping[CommandAction, int] | None = 0,
        name: str = "car",
    ) -> tuple[SimulatedCar, Station]:
        recorder = Recorder()
        car = SimulatedCar(
            TcuConfig(vin=VIN, model_year=2021),
            PARKED,
            SimScheduler(START_MS),
            data_dir=tmp_path / name,
            broker_url=broker.url,
            energy=energy,
            command_key=KEY,
            command_settings=settings,
            command_delays_ms=delays,
            observers=[recorder],
        )
        car.recorded = recorder  # type: ignore[attr-defined]
        car.start()
        assert car.box.uplink is not None and car.box.uplink.wait_connected(WAIT)
        station = Station(broker, car)
        car.run_for(2)  # the box has read the bus once
        made.append((car, station))
        return car, station

    yield make
    for car, station in made:
        station.close()
        car.close(drain_timeout=1)


def latest(car: SimulatedCar, name: str) -> float | int | None:
    """The value of ``name`` the box decoded last from the bus."""
    assert car.box.core is not None
    return car.box.core.latest.get(CATALOG.by_name(name).id)


class Recorder:
    """The values the box journaled, by signal id, in order (what it decoded from the bus)."""

    def __init__(self) -> None:
        self.values: dict[int, list[float | int]] = {}

    def __call__(self, action: Action) -> None:
        if isinstance(action, JournalSamples):
            for sample in action.samples:
                exp = CATALOG.by_id(sample.signal_id).exp
                self.values.setdefault(sample.signal_id, []).append(
                    sample_value(sample.mantissa, exp)
                )


def journaled(car: SimulatedCar, name: str) -> list[float | int]:
    """Every value of ``name`` the box journaled so far."""
    recorder: Recorder = car.recorded  # type: ignore[attr-defined]
    return recorder.values.get(CATALOG.by_name(name).id, [])


# -- every action on an awake car -------------------------------------------------------------


def test_every_action_succeeds_on_an_awake_car_and_shows_on_the_bus(make_car: Any) -> None:
    car, station = make_car()
    body = car.vehicle.body
    assert body is not None
    car.vehicle.state.plug_in()

    horn = station.send("horn", {"beeps": 2})
    assert names(horn) == ["Accepted", "SentToVehicle", "Success"]
    assert body.stats.requests == 1
    station.run_until(lambda: 1 in journaled(car, "Vehicle.Body.Horn.IsActive"))

    lights = station.send("lights", {"duration_s": 5})
    assert outcome(lights) == ("Success", None)
    station.run_until(lambda: journaled(car, "Vehicle.Body.Lights.IsFlashing")[-2:] == [1, 0])

    assert outcome(station.send("unlock", {})) == ("Success", None)  # parked locked
    station.run_until(lambda: journaled(car, "Vehicle.Cabin.DoorsLockState")[-1:] == [0])
    assert outcome(station.send("lock", {})) == ("Success", None)
    station.run_until(lambda: journaled(car, "Vehicle.Cabin.DoorsLockState")[-1:] == [1])
    assert outcome(station.send("lock", {})) == ("AlreadyDone", None)

    cabin = "Vehicle.Cabin.HVAC.AmbientAirTemperature"
    before = latest(car, cabin)
    assert outcome(station.send("precond", {"immediate": True})) == ("Success", None)
    station.run_until(lambda: 1 in journaled(car, "Vehicle.Cabin.HVAC.Preconditioning.State"))
    car.run_for(600)
    assert before is not None and latest(car, cabin) != before  # the cabin moves to 21 degC
    assert outcome(station.send("precond", {"immediate": False})) == ("Success", None)

    soc_before = latest(car, SOC)
    assert outcome(station.send("charge", {"immediate": True})) == ("Success", None)
    car.run_for(900)
    assert soc_before is not None and latest(car, SOC) > soc_before  # type: ignore[operator]
    assert outcome(station.send("charge", {"immediate": False})) == ("Success", None)

    uploads = car.box.stats.uploads_enqueued
    assert outcome(station.send("wakeup", {})) == ("Success", None)
    assert car.box.stats.uploads_enqueued > uploads  # a fresh status went up

    assert outcome(station.send("stolen", {"stolen": True})) == ("Success", None)
    assert outcome(station.send("unlock", {})) == ("Failed", "NotPossibleDueToVehicleStolenState")
    assert outcome(station.send("stolen", {"stolen": False})) == ("Success", None)
    assert outcome(station.send("immobilize", {"activate": True})) == ("Success", None)
    car.vehicle.apply({IGNITION: 2})  # the key turns: the engine does not start
    car.run_for(2)
    assert latest(car, IGNITION) == 0 and car.vehicle.state.starts_refused == 1
    assert outcome(station.send("immobilize", {"activate": True})) == ("AlreadyDone", None)
    assert outcome(station.send("immobilize", {"activate": False})) == ("Success", None)
    car.vehicle.apply({IGNITION: 2})
    car.run_for(2)
    assert latest(car, IGNITION) == 2


def test_a_delayed_charge_starts_at_its_time_and_wakes_the_box(make_car: Any) -> None:
    car, station = make_car()
    car.vehicle.state.plug_in()
    # 00:00:02 now: a charge delayed to 00:30 UTC.
    assert outcome(station.send("charge", {"delayed_to_min": 30})) == ("Success", None)
    charging = "Vehicle.Powertrain.TractionBattery.Charging.ChargingState"
    car.run_for(25 * 60)
    assert car.box.asleep and latest(car, charging) != 1
    car.run_for(6 * 60)
    assert not car.box.asleep and car.box.stats.wakes == {"charging": 1}
    assert latest(car, charging) == 1  # charging since 00:30, and the box knows it


def test_a_program_fires_at_its_time_in_simulated_time(make_car: Any) -> None:
    car, station = make_car()
    program = {"slot": 1, "enabled": True, "days": 0b111_1111, "start_min": 20}
    statuses = station.send("precond", {"programs": [program]})
    assert outcome(statuses) == ("Success", None)
    state = "Vehicle.Cabin.HVAC.Preconditioning.State"
    car.run_for(15 * 60)
    assert latest(car, state) == 0
    station.run_until(lambda: latest(car, state) == 1, step_s=1.0)
    assert car.scheduler.now_ms >= START_MS + 20 * 60_000
    assert car.box.commands is not None
    assert car.box.commands.executor.stats.programs_fired == 1


# -- every failure cause, from a situation that causes it -------------------------------------


def test_doors_open_refuses_a_lock(make_car: Any) -> None:
    car, station = make_car()
    car.vehicle.apply({DRIVER_DOOR: 1})
    car.run_for(1)
    statuses = station.send("lock", {})
    assert outcome(statuses) == ("Failed", "DoorsOpen")
    assert "DriverSide" in statuses[-1].detail
    assert car.vehicle.body is not None and car.vehicle.body.stats.requests == 0


def test_a_low_battery_refuses_preconditioning(make_car: Any) -> None:
    car, station = make_car()
    car.vehicle.state.set_low_battery()
    car.run_for(2)
    outcome_ = outcome(station.send("precond", {"immediate": True}))
    assert outcome_ == ("Failed", "NotPossibleDueToVehicleBatteryLevel")


def test_privacy_full_refuses_the_horn(make_car: Any) -> None:
    car, station = make_car()
    car.vehicle.apply({PRIVACY: 2})
    car.run_for(1)
    assert outcome(station.send("horn", {"beeps": 1})) == (
        "Failed",
        "NotPossibleDueToVehiclePrivacyLevel",
    )


def test_the_same_action_in_progress_is_refused(make_car: Any) -> None:
    car, station = make_car()
    assert outcome(station.send("lights", {"duration_s": 30})) == ("Success", None)
    station.run_until(lambda: 1 in journaled(car, "Vehicle.Body.Lights.IsFlashing"))
    assert outcome(station.send("lights", {"duration_s": 10})) == (
        "Failed",
        "SameActionInProgress",
    )


def test_a_car_in_use_refuses_an_unlock(make_car: Any) -> None:
    car, station = make_car()
    car.vehicle.apply({IGNITION: 2})
    car.run_for(1)
    statuses = station.send("unlock", {})
    assert outcome(statuses) == ("Failed", "VehicleInUse")
    assert statuses[-1].detail == "ignition_on"


def test_a_deaf_car_times_out(make_car: Any) -> None:
    car, station = make_car(settings=CommandSettings(feedback_timeout_ms=2_000))
    assert car.vehicle.body is not None
    car.vehicle.body.deaf = True
    statuses = station.send("horn", {"beeps": 1})
    assert names(statuses) == ["Accepted", "SentToVehicle", "Failed"]
    assert outcome(statuses) == ("Failed", "VehicleConnectionTimeout")
    assert statuses[-1].at_ms - statuses[1].at_ms >= 2_000


def test_a_failing_actuator_is_a_vehicle_error(make_car: Any) -> None:
    car, station = make_car()
    assert car.vehicle.body is not None
    car.vehicle.body.failing[CommandAction.UNLOCK] = "actuator jammed"
    assert outcome(station.send("unlock", {})) == ("Failed", "VehicleError")


# -- sleep and wake-up ------------------------------------------------------------------------

SLEEPY = CommandSettings(stay_awake_ms=60_000, wake_delay_ms=5_000, monthly_wakeups=1)


def test_a_sleeping_car_is_woken_then_served(make_car: Any) -> None:
    car, station = make_car(settings=SLEEPY)
    car.run_for(120)
    assert car.box.asleep
    statuses = station.send("horn", {"beeps": 1})
    assert names(statuses) == ["Accepted", "WakingUpVehicle", "SentToVehicle", "Success"]
    assert car.box.stats.wakes == {"tap": 1}
    # The next tap exceeds the month's budget: refused, and the box stays asleep.
    car.run_for(120)
    assert car.box.asleep
    statuses = station.send("horn", {"beeps": 1})
    assert outcome(statuses) == ("Failed", "TooManyWakeUpsOverMonth")
    assert car.box.asleep
    assert car.vehicle.body is not None and car.vehicle.body.stats.requests == 2  # wake-up, horn


def test_what_a_sleeping_box_refuses_spends_no_wake_up(make_car: Any) -> None:
    car, station = make_car(settings=SLEEPY)  # one wake-up a month
    assert car.box.commands is not None
    # A command the box served while awake, to replay later.
    good = station.command("horn", {"beeps": 1})
    raw_good = sign_command(good, KEY)
    station.publish(raw_good)
    station.run_until(lambda: any(s.status.done for s in station.of(good.command_id)))
    car.run_for(120)
    assert car.box.asleep and car.box.stats.wakes == {}
    forged = station.command("horn", {"beeps": 1})
    expired = station.command("horn", {"beeps": 1}, issued_at_ms=START_MS - 3_600_000)
    elsewhere = station.command("horn", {"beeps": 1}, vin="VR3UHZKXZMT200009")
    before = car.box.commands.stats.received
    station.publish(b"\xa1\x00garbage")
    station.publish(sign_command(forged, vehicle_key(b"x" * 32, VIN)))
    station.publish(sign_command(expired, KEY))
    station.publish(sign_command(elsewhere, KEY))
    station.publish(raw_good)  # a replay
    link = car.box.commands
    station.run_until(lambda: link.stats.received >= before + 5)
    for cmd in (forged, expired, elsewhere):
        station.run_until(lambda c=cmd: bool(station.of(c.command_id)))
        assert station.of(cmd.command_id)[-1].status.value == "Failed"
    station.run_until(lambda: len(station.of(good.command_id)) > 3)
    assert station.of(good.command_id)[-1].detail.startswith("replayed")
    car.run_for(30)
    assert car.box.asleep  # none of them woke it, nor spent the month's wake-up
    assert car.box.stats.wakes == {}
    assert link.stats.refused == {
        "not_cbor": 1,
        "bad_signature": 1,
        "expired": 1,
        "wrong_vin": 1,
        "replayed": 1,
    }
    assert link.stats.held_asleep == 0
    # The wake-up they did not spend serves a good command.
    statuses = station.send("horn", {"beeps": 2})
    assert names(statuses) == ["Accepted", "WakingUpVehicle", "SentToVehicle", "Success"]
    assert car.box.stats.wakes == {"tap": 1}


def test_the_ignition_wakes_the_box_and_the_car(make_car: Any) -> None:
    car, station = make_car(settings=SLEEPY)
    car.run_for(120)
    assert car.box.asleep
    car.vehicle.apply({IGNITION: 2})
    station.run_until(lambda: not car.box.asleep)
    assert car.box.stats.wakes == {"ignition": 1}


# -- what the box refuses: nothing moves on the bus -------------------------------------------


def test_forged_expired_replayed_and_misaddressed_commands_are_refused(make_car: Any) -> None:
    car, station = make_car()
    body = car.vehicle.body
    assert body is not None and car.box.commands is not None

    def refused(raw: bytes, command_id: bytes) -> StatusMessage:
        station.publish(raw)
        station.run_until(lambda: bool(station.of(command_id)))
        [status] = station.of(command_id)
        return status

    forged = station.command("horn", {"beeps": 1})
    status = refused(sign_command(forged, vehicle_key(b"x" * 32, VIN)), forged.command_id)
    assert (status.failure_cause, status.detail.split(":")[0]) == (
        "MissingRights",
        "bad_signature",
    )

    old = station.command("horn", {"beeps": 1}, issued_at_ms=START_MS - 3_600_000)
    status = refused(sign_command(old, KEY), old.command_id)
    assert status.detail.startswith("expired")

    other = station.command("horn", {"beeps": 1}, vin="VR3UHZKXZMT200009")
    status = refused(sign_command(other, KEY), other.command_id)
    assert status.detail.startswith("wrong_vin")

    good = station.command("lock", {})
    raw = sign_command(good, KEY)
    station.publish(raw)
    station.run_until(lambda: any(s.status.done for s in station.of(good.command_id)))
    assert body.stats.requests == 1  # only the good one reached the car
    station.publish(raw)  # the same command again
    station.run_until(lambda: len(station.of(good.command_id)) == 4)
    replay = station.of(good.command_id)[-1]
    assert (replay.status.value, replay.detail.split(":")[0]) == ("Failed", "replayed")
    assert body.stats.requests == 1
    assert car.box.commands.stats.refused == {
        "bad_signature": 1,
        "expired": 1,
        "wrong_vin": 1,
        "replayed": 1,
    }


def test_a_forgery_carrying_a_queued_commands_id_leaves_it_queued(make_car: Any) -> None:
    car, station = make_car(delays=5_000)  # the horn answers 5 s after the request
    link = car.box.commands
    assert link is not None
    cmd = station.command("horn", {"beeps": 1})
    station.publish(sign_command(cmd, KEY))
    station.run_until(lambda: cmd.command_id in link.verifier.queued)
    station.publish(sign_command(cmd, vehicle_key(b"x" * 32, VIN)))  # its id, another key
    station.run_until(lambda: link.stats.refused.get("bad_signature") == 1)
    assert cmd.command_id in link.verifier.queued  # the refusal released nothing
    station.run_until(lambda: any(s.status.value == "Success" for s in station.of(cmd.command_id)))
    assert link.verifier.queued == ()


def test_an_offline_car_gets_its_command_when_it_comes_back(make_car: Any) -> None:
    car, station = make_car()
    uplink = car.box.uplink
    assert uplink is not None
    uplink.link_down()
    car.run_for(5)
    cmd = station.command("unlock", {}, validity_ms=10 * 60_000)
    station.publish(sign_command(cmd, KEY))  # the broker keeps it for the box's session
    car.run_for(60)
    assert station.of(cmd.command_id) == []
    uplink.link_up()
    station.run_until(lambda: any(s.status.done for s in station.of(cmd.command_id)))
    assert outcome(station.of(cmd.command_id)) == ("Success", None)


def test_an_offline_car_past_the_expiry_refuses_the_command(make_car: Any) -> None:
    car, station = make_car()
    uplink = car.box.uplink
    assert uplink is not None
    uplink.link_down()
    car.run_for(5)
    cmd = station.command("lock", {}, validity_ms=60_000)
    station.publish(sign_command(cmd, KEY))
    car.run_for(180)  # offline past the expiry and the clock allowance
    uplink.link_up()
    station.run_until(lambda: bool(station.of(cmd.command_id)))
    [status] = station.of(cmd.command_id)
    assert (status.status.value, status.failure_cause) == ("Failed", "VehicleConnectionTimeout")
    assert status.detail.startswith("expired")
    assert car.vehicle.body is not None and car.vehicle.body.stats.requests == 0


def test_a_command_received_but_not_taken_comes_again_after_a_power_cut(make_car: Any) -> None:
    car, station = make_car()
    uplink = car.box.uplink
    assert uplink is not None
    cmd = station.command("unlock", {})
    station.publish(sign_command(cmd, KEY))
    deadline = time.monotonic() + WAIT
    while not uplink.commands_waiting:  # received by the modem, not yet taken by the box
        assert time.monotonic() < deadline
        time.sleep(0.005)
    car.power_cut()  # no acknowledgement went out: the broker keeps it for the session
    car.reboot()
    station.run_until(lambda: any(s.status.done for s in station.of(cmd.command_id)))
    assert outcome(station.of(cmd.command_id)) == ("Success", None)
    assert car.vehicle.body is not None and car.vehicle.body.stats.requests == 1


def test_the_nonce_cache_survives_a_reboot(make_car: Any) -> None:
    car, station = make_car()
    cmd = station.command("lock", {})
    raw = sign_command(cmd, KEY)
    station.publish(raw)
    station.run_until(lambda: any(s.status.done for s in station.of(cmd.command_id)))
    car.power_cut()
    car.reboot()
    assert car.box.uplink is not None and car.box.uplink.wait_connected(WAIT)
    station.publish(raw)
    station.run_until(lambda: len(station.of(cmd.command_id)) == 4)
    assert station.of(cmd.command_id)[-1].detail.startswith("replayed")
    assert car.vehicle.body is not None and car.vehicle.body.stats.requests == 1


# -- the feedback frame from the bus is outside input too -------------------------------------


@given(data=st.binary(max_size=12), busy=st.booleans())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_feedback_frame_is_taken_or_counted(
    tmp_path_factory: Any, data: bytes, busy: bool
) -> None:
    car = SimulatedCar(
        TcuConfig(vin=VIN, model_year=2021),
        PARKED,
        SimScheduler(START_MS),
        data_dir=tmp_path_factory.mktemp("fb"),
        broker_url=None,
        command_key=KEY,
    )
    car.start()
    try:
        link = car.box.commands
        assert link is not None
        if busy:
            cmd = new_command(VIN, "horn", {"beeps": 1}, issued_at_ms=START_MS, order=1)
            link.on_commands([(-1, sign_command(cmd, KEY))], START_MS)
            assert link.executor.busy
        frame = can.Message(arbitration_id=link.feedback_id, data=data, is_extended_id=False)
        before = (link.stats.feedback_frames, link.stats.bad_feedback)
        car.box.on_frame(START_MS + 10, frame)
        assert link.stats.feedback_frames == before[0] + 1
        if len(data) < 3:
            assert link.stats.bad_feedback == before[1] + 1  # too short: counted, not taken
    finally:
        car.close(drain_timeout=0)


def test_a_status_handed_over_before_a_recall_still_arrives(broker: Any) -> None:
    """A privacy change over a dead link recalls the uploads (a new paho client): the
    statuses the old client held go out on the new one."""
    config = UplinkConfig(
        broker=parse_broker_url(broker.url),
        client_id="tcu-recall-status",
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )
    uplink = MqttUplink(config, VIN, downlink=True)
    got: list[bytes] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="recall-status-watch")
    watcher.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    watcher.connect(broker.host, broker.port)
    watcher.subscribe(cmd_topic(VIN), qos=1)
    watcher.loop_start()
    try:
        uplink.open()
        assert uplink.wait_connected(WAIT)
        uplink.link_down()
        deadline = time.monotonic() + WAIT
        while uplink.connected:  # the network thread notices the link is gone
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status = StatusMessage(b"\x01" * 16, VIN, RemoteStatus.SUCCESS, None, START_MS)
        uplink.publish_status(encode_status(status))  # paho holds it: no connection
        uplink.recall()  # the client that held it is replaced
        time.sleep(0.3)  # the network thread serves both requests while the link is down
        assert not got, "sent while the link was down"
        uplink.link_up()
        deadline = time.monotonic() + WAIT
        while not got:
            assert time.monotonic() < deadline, "the status was lost with the old client"
            time.sleep(0.01)
        assert decode_status(got[0]) == status
    finally:
        uplink.close()
        watcher.loop_stop()
        watcher.disconnect()
