"""Remote commands end to end, in simulated time: the Web API, the gateway's dispatcher, a real
Mosquitto, the box, the simulated car's CAN bus, and back to the app's webhook and the
vehicle's status through the API.

The gateway service runs on the car's simulated clock; the test advances that clock in small
steps while the messages cross the broker in wall-clock time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from apidata import ACCOUNTS, API, NOW_MS, VINS
from conftest import AnyBroker

from can_dbc.network import CommandAction
from firmware_sim.clock import SimScheduler
from firmware_sim.command_link import CommandSettings
from firmware_sim.config import TcuConfig
from firmware_sim.downlink import vehicle_key
from firmware_sim.sim.drive import WEST_PARIS, Drive
from firmware_sim.sim.physics import Energy
from firmware_sim.sim.session import SimulatedCar
from gateway.accounts import load_accounts_text
from gateway.apiclient import WebhookReceiver
from gateway.service import GatewayService
from gateway.store import Store, open_store

EV = VINS["ev"]
MASTER = bytes(range(7, 39))
WAIT_S = 30.0  # wall seconds for one remote to be done
PARKED = Drive(duration_s=86_400, route=WEST_PARIS, speed_profile=((0, 0.0),))
SCOPES = (
    "data:telemetry",
    "remote:door:write",
    "remote:horn:write",
    "remote:lights:write",
    "remote:preconditioning:write",
    "remote:charging:write",
    "remote:wakeup:write",
)


@dataclass
class World:
    """The car, the gateway service on its clock, the app's HTTP client and webhook."""

    car: SimulatedCar
    service: GatewayService
    http: httpx.Client
    receiver: WebhookReceiver
    vid: str
    cbid: str
    store: Store

    def run_until(self, done: Callable[[], bool], step_s: float = 0.05) -> None:
        """Advance simulated time until ``done()`` (bounded in wall time)."""
        deadline = time.monotonic() + WAIT_S
        while not done():
            assert time.monotonic() < deadline, "not done in time"
            self.car.run_for(step_s)
            time.sleep(0.0005)

    def send(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST a remote, run the car until its Done notification; the remote read back."""
        answer = self.http.post(
            f"/user/vehicles/{self.vid}/callbacks/{self.cbid}/remotes", json=body
        )
        assert answer.status_code == 202, answer.text
        rid = answer.json()["remoteActionId"]
        self.run_until(lambda: self.done(rid) is not None)
        read = self.http.get(f"/user/vehicles/{self.vid}/callbacks/{self.cbid}/remotes/{rid}")
        assert read.status_code == 200, read.text
        remote: dict[str, Any] = read.json()
        return remote

    def done(self, rid: str) -> dict[str, Any] | None:
        for n in list(self.receiver.received):
            event = n.body.get("remoteEvent", {})
            if event.get("remoteActionId") == rid and event["eventStatus"]["type"] == "Done":
                assert n.signed
                status: dict[str, Any] = event["eventStatus"]
                return status
        return None

    def events(self, rid: str) -> list[str]:
        return [
            n.body["remoteEvent"]["eventStatus"]["status"]
            for n in list(self.receiver.received)
            if n.body.get("remoteEvent", {}).get("remoteActionId") == rid
        ]

    def status(self) -> dict[str, Any]:
        """The vehicle's status once the box's next upload is stored."""
        before = self.store.payload_count(EV)
        self.run_until(lambda: self.store.payload_count(EV) > before, step_s=0.5)
        answer = self.http.get(f"/user/vehicles/{self.vid}/status")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


@pytest.fixture
def world(broker: AnyBroker, tmp_path: Path, unique_id: Callable[[str], str]) -> Iterator[World]:
    scheduler = SimScheduler(NOW_MS)
    car = SimulatedCar(
        TcuConfig(vin=EV, model_year=2021),
        PARKED,
        scheduler,
        data_dir=tmp_path / "car",
        broker_url=broker.url,
        energy=Energy.ELECTRIC,
        command_key=vehicle_key(MASTER, EV),
        command_settings=CommandSettings(stay_awake_ms=86_400_000),
        command_delays_ms=0,
    )
    service = GatewayService(
        tmp_path / "gateway.sqlite3",
        secret=b"t" * 32,
        broker=broker.url,
        accounts=load_accounts_text(ACCOUNTS, "test-accounts", iterations=1),
        http_port=0,
        monitor_interval_s=0.05,
        clock_ms=lambda: scheduler.now_ms,
        client_id=unique_id("gw"),
        remote_secret=MASTER,
    )
    service.start()
    store = open_store(str(tmp_path / "gateway.sqlite3"))
    receiver = WebhookReceiver()
    token = service.auth.issue_access_token("user", "alice", "app", SCOPES)
    http = httpx.Client(
        base_url=f"{service.base_url}{API}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=WAIT_S,
    )
    try:
        car.start()
        assert car.box.uplink is not None and car.box.uplink.wait_connected(WAIT_S)
        vehicle = service.accounts.vehicle_by_vin(EV)
        assert vehicle is not None
        hook = {"webhook": {"name": "app", "target": receiver.url}}
        answer = http.post("/user/callbacks", json={"callback": hook, "type": ["Remote"]})
        assert answer.status_code == 202, answer.text
        cbid = str(answer.json()["callbackId"])
        receiver.secrets[cbid] = answer.json()["secret"]
        world = World(car, service, http, receiver, vehicle.id, cbid, store)
        car.run_for(2)
        yield world
    finally:
        http.close()
        car.close(drain_timeout=2)
        receiver.close()
        service.stop()
        store.close()


def outcome(remote: dict[str, Any]) -> tuple[str, str | None]:
    return remote["status"], remote.get("failureCause")


def test_every_action_from_the_api_moves_the_car_and_shows_in_its_status(world: World) -> None:
    state = world.car.vehicle.state
    state.plug_in()

    unlock = world.send({"door": {"state": "Unlocked"}})
    assert outcome(unlock) == ("Success", None)
    assert [h["status"] for h in unlock["history"]] == [
        "Accepted",
        "Accepted",
        "SentToVehicle",
        "Success",
    ]
    assert [h["source"] for h in unlock["history"]] == ["gateway", "vehicle", "vehicle", "vehicle"]
    assert world.events(unlock["remoteActionId"]) == ["Accepted", "SentToVehicle", "Success"]
    assert world.status()["doorsState"]["lockedStates"] == ["Unlocked"]

    lock = world.send({"door": {"state": "Locked"}})
    assert outcome(lock) == ("Success", None)
    assert "Locked" in world.status()["doorsState"]["lockedStates"]

    assert outcome(world.send({"horn": {"state": "Activated", "beeps": 2}})) == ("Success", None)
    assert outcome(world.send({"lights": {"on": True, "duration": "PT5S"}})) == ("Success", None)

    on = world.send({"preconditioning": {"airConditioning": {"immediate": True}}})
    assert outcome(on) == ("Success", None)
    status = world.status()
    assert status["preconditioning"]["airConditioning"]["status"] == "Enabled"
    off = world.send({"preconditioning": {"airConditioning": {"immediate": False}}})
    assert outcome(off) == ("Success", None)

    assert outcome(world.send({"charging": {"immediate": True}})) == ("Success", None)
    electric = next(e for e in world.status()["energies"] if e["type"] == "Electric")
    assert electric["extension"]["electric"]["charging"]["status"] == "InProgress"
    assert outcome(world.send({"charging": {"immediate": False}})) == ("Success", None)
    delayed = {"charging": {"schedule": {"nextDelayedTime": "PT23H30M"}}}
    assert outcome(world.send(delayed)) == ("Success", None)
    assert world.car.vehicle.body is not None
    assert world.car.vehicle.body.deferred_at_ms is not None

    assert outcome(world.send({"wakeUp": {"action": "WakeUp"}})) == ("Success", None)


def test_a_refusal_in_the_car_reaches_the_app_with_its_cause(world: World) -> None:
    world.car.vehicle.apply({"Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": 1})
    world.car.run_for(1)
    # Unlock first (parked locked), then the lock the open door refuses.
    assert outcome(world.send({"door": {"state": "Unlocked"}})) == ("Success", None)
    refused = world.send({"door": {"state": "Locked"}})
    assert outcome(refused) == ("Failed", "DoorsOpen")
    assert world.done(refused["remoteActionId"]) == {
        "type": "Done",
        "status": "Failed",
        "failureCause": "DoorsOpen",
    }
    assert world.car.vehicle.body is not None
    assert world.car.vehicle.body.stats.requests == 1  # the lock never reached the bus


def test_a_deaf_car_ends_in_a_connection_timeout_at_the_app(world: World) -> None:
    assert world.car.vehicle.body is not None
    world.car.vehicle.body.deaf = True
    timed_out = world.send({"horn": {"state": "Activated"}})
    assert outcome(timed_out) == ("Failed", "VehicleConnectionTimeout")
    world.car.vehicle.body.deaf = False
    world.car.vehicle.body.failing[CommandAction.UNLOCK] = "jammed"
    assert outcome(world.send({"door": {"state": "Unlocked"}})) == ("Failed", "VehicleError")
