"""Remote commands through a running :class:`GatewayService`, a real Mosquitto and SQLite.

The service runs on a simulated clock with a remote master secret. The test's box side is a
paho client on the vehicle's down topic that checks every command with the firmware's own
:class:`~firmware_sim.downlink.CommandVerifier` (the vehicle's key, a nonce cache on disk)
and reports statuses on the cmd topic. A remote goes from the API to that box and back: its
statuses are read through the API and arrive as signed ``remoteEvent`` notifications.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from apidata import ACCOUNTS, API, NOW_MS, VINS, SimClock
from conftest import WAIT, AnyBroker, PahoClient
from waiting import wait_for

from firmware_sim.downlink import (
    Command,
    CommandVerifier,
    Refusal,
    RemoteStatus,
    StatusMessage,
    cmd_topic,
    down_topic,
    encode_status,
    vehicle_key,
)
from firmware_sim.nonces import NonceCache
from gateway.accounts import load_accounts_text
from gateway.apiclient import WebhookReceiver
from gateway.service import GatewayService

MASTER = secrets.token_bytes(32)
EV = VINS["ev"]
HORN = {"horn": {"state": "Activated", "beeps": 2}}
SCOPES = ("remote:horn:write", "remote:door:write", "data:telemetry")


class BoxPeer:
    """The box's end of the downlink: verifies each command, reports statuses."""

    def __init__(
        self, client: PahoClient, vin: str, master: bytes, nonces: Path, clock: Callable[[], int]
    ) -> None:
        self.client, self.vin, self.clock = client, vin, clock
        self.cache = NonceCache(nonces)
        self.verifier = CommandVerifier(vin, vehicle_key(master, vin), self.cache, clock_ms=clock)
        client.connect()
        client.subscribe(down_topic(vin))

    def take(self) -> tuple[bytes, Command | Refusal]:
        """The next command and its verdict; a refusal is reported as the box does."""
        raw = bytes(self.client.get()[0].payload)
        try:
            return raw, self.verifier.verify(raw)
        except Refusal as refusal:
            self.client.publish(
                cmd_topic(self.vin), encode_status(refusal.status(self.vin, self.clock()))
            )
            return raw, refusal

    def report(self, command: Command, *statuses: str) -> None:
        """Publish these statuses of ``command``, one vehicle millisecond apart."""
        for n, status in enumerate(statuses):
            message = StatusMessage(
                command.command_id, self.vin, RemoteStatus(status), None, self.clock() + n
            )
            self.client.publish(cmd_topic(self.vin), encode_status(message))

    def close(self) -> None:
        self.cache.close()


@contextmanager
def running(
    db: Path, broker: AnyBroker, client_id: str, clock: SimClock, **options: Any
) -> Iterator[GatewayService]:
    """A started service over ``db`` with the test accounts and fast background loops."""
    service = GatewayService(
        db,
        secret=b"t" * 32,
        broker=broker.url,
        accounts=load_accounts_text(ACCOUNTS, "test-accounts", iterations=1),
        http_port=0,
        monitor_interval_s=0.05,
        webhook_interval_s=0.05,
        clock_ms=clock,
        client_id=client_id,
        **options,
    )
    service.start()
    try:
        yield service
    finally:
        service.stop()


class Api:
    """Calls to the service's API as alice's app."""

    def __init__(self, service: GatewayService) -> None:
        token = service.auth.issue_access_token("user", "alice", "app", SCOPES)
        self.http = httpx.Client(
            base_url=f"{service.base_url}{API}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=WAIT,
        )
        vehicle = service.accounts.vehicle_by_vin(EV)
        assert vehicle is not None
        self.vid = vehicle.id

    def callback(self, receiver: WebhookReceiver) -> str:
        hook = {"webhook": {"name": "hook", "target": receiver.url}}
        answer = self.http.post("/user/callbacks", json={"callback": hook, "type": ["Remote"]})
        assert answer.status_code == 202, answer.text
        cbid = str(answer.json()["callbackId"])
        receiver.secrets[cbid] = answer.json()["secret"]
        return cbid

    def remotes(self, cbid: str) -> str:
        return f"/user/vehicles/{self.vid}/callbacks/{cbid}/remotes"

    def send(self, cbid: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(self.remotes(cbid), json=body)

    def remote(self, cbid: str, rid: str) -> dict[str, Any]:
        answer = self.http.get(f"{self.remotes(cbid)}/{rid}")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def wait_status(self, cbid: str, rid: str, status: str, entries: int) -> dict[str, Any]:
        """The remote once it has ``status`` and ``entries`` history entries."""

        def reached() -> bool:
            got = self.remote(cbid, rid)
            return got["status"] == status and len(got["history"]) == entries

        assert wait_for(reached), f"{rid} did not reach {status}: {self.remote(cbid, rid)}"
        return self.remote(cbid, rid)


@dataclass
class World:
    """A database path, the broker, the box, a webhook receiver and the service's session."""

    db: Path
    broker: AnyBroker
    session: str
    clock: SimClock
    box: BoxPeer
    receiver: WebhookReceiver
    apis: list[Api] = field(default_factory=list)

    def running(self, **options: Any) -> AbstractContextManager[GatewayService]:
        return running(self.db, self.broker, self.session, self.clock, **options)

    def api(self, service: GatewayService) -> Api:
        self.apis.append(Api(service))
        return self.apis[-1]


@pytest.fixture
def world(
    broker: AnyBroker,
    mqtt_client: Callable[..., PahoClient],
    unique_id: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[World]:
    clock = SimClock(NOW_MS)
    box = BoxPeer(mqtt_client(broker, unique_id("box")), EV, MASTER, tmp_path / "nonces", clock)
    with WebhookReceiver() as receiver:
        made = World(tmp_path / "gateway.sqlite3", broker, unique_id("gw"), clock, box, receiver)
        yield made
    for api in made.apis:
        api.http.close()
    box.close()


def _events(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    assert all(n.signed for n in receiver.received)
    return [n.body["remoteEvent"]["eventStatus"] for n in receiver.received]


def test_a_remote_goes_to_the_box_and_its_statuses_come_back(world: World) -> None:
    box, receiver = world.box, world.receiver
    with world.running(remote_secret=MASTER) as svc:
        assert svc.remotes is not None and svc.remote_status is not None
        assert svc.app.state.remotes is svc.remotes
        api = world.api(svc)
        cbid = api.callback(receiver)
        answer = api.send(cbid, {**HORN, "label": "find my car"})
        assert answer.status_code == 202, answer.text
        rid = answer.json()["remoteActionId"]

        _raw, command = box.take()
        assert isinstance(command, Command), command
        assert command.command_id.hex() == rid
        assert (command.action, dict(command.params)) == ("horn", {"beeps": 2})
        assert command.issued_at_ms == NOW_MS
        box.report(command, "Accepted", "SentToVehicle", "Success")

        done = api.wait_status(cbid, rid, "Success", 4)
        assert done["label"] == "find my car" and done["remote"] == HORN
        assert [(h["status"], h["source"]) for h in done["history"]] == [
            ("Accepted", "gateway"),
            ("Accepted", "vehicle"),
            ("SentToVehicle", "vehicle"),
            ("Success", "vehicle"),
        ]
        assert receiver.wait(lambda got: len(got) == 3, WAIT), receiver.received
        assert _events(receiver) == [
            {"type": "Pending", "status": "Accepted"},
            {"type": "Pending", "status": "SentToVehicle"},
            {"type": "Done", "status": "Success"},
        ]
        stats = svc.remote_status.stats
        assert (stats.applied, stats.notified, sum(stats.rejected.values())) == (3, 3, 0)
    # stopped: neither the listener's worker nor an MQTT thread of the service is left
    threads = [t.name for t in threading.enumerate()]
    left = [name for name in threads if world.session in name or name == "tcusim-remote-status"]
    assert left == []


def test_a_replayed_redelivery_does_not_fail_the_remote(world: World) -> None:
    box, receiver, clock = world.box, world.receiver, world.clock
    with world.running(remote_secret=MASTER) as svc:
        listener = svc.remote_status
        assert listener is not None
        api = world.api(svc)
        cbid = api.callback(receiver)
        answer = api.send(cbid, {"door": {"state": "Locked"}})
        assert answer.status_code == 202, answer.text
        rid = answer.json()["remoteActionId"]
        raw, command = box.take()
        assert isinstance(command, Command), command
        box.report(command, "Accepted")
        api.wait_status(cbid, rid, "Accepted", 2)

        # the broker delivers the command again (QoS 1): the box refuses it as replayed
        clock.advance(5)
        box.client.publish(down_topic(EV), raw)
        _raw, verdict = box.take()
        assert isinstance(verdict, Refusal) and verdict.reason == "replayed"
        assert wait_for(lambda: listener.stats.replay_refusals == 1)
        assert api.remote(cbid, rid)["status"] == "Accepted"

        clock.advance(5)
        box.report(command, "Success")
        done = api.wait_status(cbid, rid, "Success", 3)
        assert done.get("failureCause") is None
        assert receiver.wait(lambda got: len(got) == 2, WAIT)
        assert _events(receiver) == [
            {"type": "Pending", "status": "Accepted"},
            {"type": "Done", "status": "Success"},
        ]
        assert listener.stats.applied == 2


def test_statuses_sent_while_the_service_is_down_arrive_when_it_is_back(world: World) -> None:
    with world.running(remote_secret=MASTER) as svc:
        api = world.api(svc)
        cbid = api.callback(world.receiver)
        answer = api.send(cbid, HORN)
        assert answer.status_code == 202, answer.text
        rid = answer.json()["remoteActionId"]
        _raw, command = world.box.take()
        assert isinstance(command, Command)
    world.box.report(command, "Accepted", "Success")  # kept by the service's MQTT session
    with world.running(remote_secret=MASTER) as svc:
        world.api(svc).wait_status(cbid, rid, "Success", 3)
        assert svc.remote_status is not None and svc.remote_status.stats.applied == 2


@pytest.mark.parametrize("with_broker", [True, False])
def test_without_a_broker_or_a_secret_remotes_answer_503(world: World, with_broker: bool) -> None:
    service = GatewayService(
        world.db,
        secret=b"t" * 32,
        broker=world.broker.url if with_broker else None,
        accounts=load_accounts_text(ACCOUNTS, "test-accounts", iterations=1),
        http_port=0,
        clock_ms=world.clock,
        remote_secret=None if with_broker else MASTER,
        **({"client_id": world.session} if with_broker else {}),
    )
    with service:
        assert service.remotes is None and service.remote_status is None
        api = world.api(service)
        answer = api.send(api.callback(world.receiver), HORN)
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == 50301
        assert answer.json()["message"].startswith("remote commands are off")
