"""Remote commands through the Web API, a real Mosquitto and real databases.

The API keeps a remote and publishes its signed command on the vehicle's down topic; the
test, subscribed there, checks the command against the protocol (its signature with the
vehicle's key derived here from the master secret, independently of the gateway's code).
Acting as the box, the test publishes statuses on the cmd topic: the remote follows them and
``remoteEvent`` notifications are queued and delivered to a local webhook receiver.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest
from apidata import ACCOUNTS, API, NOW_MS, VINS, SimClock
from conftest import WAIT, AnyBroker, PahoClient
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pg import pg_database
from test_api_security import refused

from gateway.accounts import Accounts, load_accounts_text
from gateway.api.app import create_app
from gateway.apiclient import WebhookReceiver
from gateway.auth import AuthServer
from gateway.remotes import (
    ORDER_KIND,
    REMOTE_KIND,
    RemoteDispatcher,
    RemoteError,
    RemoteStatusListener,
    parse_remote,
    parse_request,
)
from gateway.store import DeliveryState, Record, Store, open_store
from gateway.webhooks import WebhookSender

MASTER = bytes(range(32))
EV = VINS["ev"]
ALL_REMOTE = (
    "remote:door:write",
    "remote:preconditioning:write",
    "remote:horn:write",
    "remote:charging:write",
    "remote:lights:write",
    "remote:wakeup:write",
)
FLEET_REMOTE = (*ALL_REMOTE, "remote:immobilization:write", "remote:stolen:write")


def vehicle_key(vin: str) -> bytes:
    """The vehicle key, derived as the protocol says."""
    return hmac.new(MASTER, b"tcusim/vehicle-key/" + vin.encode("ascii"), hashlib.sha256).digest()


def check_command(payload: bytes | bytearray, vin: str) -> dict[int, Any]:
    """The command's map, once its format and signature are checked."""
    raw = bytes(payload)
    command: dict[int, Any] = cbor2.loads(raw)
    assert set(command) == set(range(10))
    assert command[0] == 1
    assert command[2] == vin
    assert len(command[1]) == 16 and len(command[7]) == 16
    assert command[5] < command[6] <= command[5] + 7 * 86_400_000
    unsigned = {k: v for k, v in command.items() if k != 9}
    mac = hmac.new(vehicle_key(vin), cbor2.dumps(unsigned, canonical=True), hashlib.sha256)
    assert hmac.compare_digest(mac.digest(), command[9])
    assert raw == cbor2.dumps(command, canonical=True)
    return command


def status_message(
    command_id: bytes, status: str, at_ms: int, *, vin: str = EV, cause: str | None = None
) -> bytes:
    """A status message as the box sends it."""
    doc: dict[int, Any] = {0: 1, 1: command_id, 2: vin, 3: status, 5: at_ms, 6: ""}
    if cause is not None:
        doc[4] = cause
        doc[6] = "a door is open"
    return cbor2.dumps(doc, canonical=True)


# -- the environment ---------------------------------------------------------------------------


@dataclass
class Env:
    """An app over a fresh database with the test accounts."""

    store: Store
    accounts: Accounts
    clock: SimClock
    auth: AuthServer
    client: TestClient

    def token(self, scopes: tuple[str, ...] = ALL_REMOTE, subject: str = "alice", **kw: Any) -> str:
        kind = kw.pop("kind", "user")
        client = kw.pop("client_id", "app" if kind == "user" else f"{subject}-app")
        return self.auth.issue_access_token(kind, subject, client, scopes)

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token()}"}
        return self.client.request(method, f"{API}{path}", headers=headers, **kw)

    def vid(self, name: str) -> str:
        vehicle = self.accounts.vehicle_by_vin(VINS[name])
        assert vehicle is not None
        return vehicle.id

    def callback(
        self, target: str = "http://127.0.0.1:9/x", token: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        hook = {"webhook": {"name": "hook", "target": target}}
        answer = self.call(
            "POST",
            "/user/callbacks",
            token or self.token(("data:telemetry",)),
            json={"callback": hook, **extra},
        )
        assert answer.status_code == 202, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def fleet_callback(self, target: str = "http://127.0.0.1:9/x", **extra: Any) -> str:
        hook = {"webhook": {"name": "hook", "target": target}}
        token = self.token(("data:telemetry",), "fleet-a", kind="fleet")
        answer = self.call(
            "POST", "/fleets/fleet-a/remote/callbacks", token, json={"callback": hook, **extra}
        )
        assert answer.status_code == 202, answer.text
        return str(answer.json()["callbackId"])


def make_env(db: str) -> tuple[Env, Callable[[], None]]:
    store = open_store(db)
    accounts = load_accounts_text(ACCOUNTS, "test-accounts", iterations=1)
    clock = SimClock(NOW_MS)
    auth = AuthServer(accounts, secrets.token_bytes(32), clock_ms=clock)
    app = create_app(store, accounts, auth, clock_ms=clock)
    client = TestClient(app)

    def close() -> None:
        client.close()
        store.close()

    return Env(store, accounts, clock, auth, client), close


@pytest.fixture
def env(tmp_path: Any) -> Iterator[Env]:
    """An app over a fresh SQLite database, no broker."""
    made, close = make_env(str(tmp_path / "gateway.sqlite3"))
    yield made
    close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_env(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Env]:
    """An app over a fresh SQLite or PostgreSQL database."""
    if request.param == "sqlite":
        made, close = make_env(str(tmp_path / "gateway.sqlite3"))
        yield made
        close()
        return
    with pg_database() as url:
        made, close = make_env(url)
        yield made
        close()


@pytest.fixture
def dispatcher(
    env: Env, broker: AnyBroker, unique_id: Callable[[str], str]
) -> Iterator[RemoteDispatcher]:
    """A dispatcher of the app, on the session's broker."""
    made = RemoteDispatcher(
        env.store, broker.url, MASTER, clock_ms=env.clock, client_id=unique_id("disp")
    )
    made.start()
    env.client.app.state.remotes = made  # type: ignore[attr-defined]
    yield made
    made.stop()


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- parsing -----------------------------------------------------------------------------------

PARSED = [
    ({"door": {"state": "Locked"}}, ("lock", {})),
    ({"door": {"state": "Unlocked", "forced": True}}, ("unlock", {})),
    ({"horn": {"state": "Activated"}}, ("horn", {"beeps": 1})),
    ({"horn": {"state": "Activated", "beeps": 3}}, ("horn", {"beeps": 3})),
    ({"lights": {"on": True}}, ("lights", {"duration_s": 10})),
    ({"lights": {"on": True, "duration": "PT45S"}}, ("lights", {"duration_s": 45})),
    ({"wakeUp": {"action": "WakeUp"}}, ("wakeup", {})),
    ({"wakeUp": {}}, ("wakeup", {})),
    ({"charging": {"immediate": True}}, ("charge", {"immediate": True})),
    ({"charging": {"immediate": False}}, ("charge", {"immediate": False})),
    (
        {"charging": {"schedule": {"nextDelayedTime": "2026-07-01T22:30:00+02:00"}}},
        ("charge", {"delayed_to_min": 20 * 60 + 30}),
    ),
    (
        {"charging": {"nextDelayedTime": "PT6H15M"}},
        ("charge", {"delayed_to_min": 6 * 60 + 15}),
    ),
    (
        {"charging": {"preferences": {"level": "Level3", "type": "Full"}}},
        ("charge", {"preferences": {"level": 3, "type": "Full"}}),
    ),
    (
        {"preconditioning": {"airConditioning": {"immediate": True}}},
        ("precond", {"immediate": True}),
    ),
    (
        {
            "preconditioning": {
                "airConditioning": {
                    "programs": [
                        {
                            "slot": 2,
                            "enabled": True,
                            "start": "PT7H30M",
                            "occurence": {"day": ["Mon", "Wed", "Sun"]},
                        },
                        {"slot": 3, "actionsType": "Delete"},
                        {"slot": 4, "enabled": False, "start": "PT23H59M", "recurrence": "None"},
                    ]
                }
            }
        },
        (
            "precond",
            {
                "programs": [
                    {"slot": 2, "enabled": True, "days": 0b1000101, "start_min": 450},
                    {"slot": 3, "enabled": False, "days": 0, "start_min": 0},
                    {"slot": 4, "enabled": False, "days": 0, "start_min": 1439},
                ]
            },
        ),
    ),
]


@pytest.mark.parametrize(("body", "expected"), PARSED)
def test_remote_bodies_map_to_the_box_actions(body: dict[str, Any], expected: Any) -> None:
    assert parse_remote(body) == expected


def test_fleet_only_actions() -> None:
    assert parse_remote({"immobilization": {"activate": True}}, fleet=True) == (
        "immobilize",
        {"activate": True},
    )
    assert parse_remote({"stolen": {"stolen": False}}, fleet=True) == ("stolen", {"stolen": False})
    with pytest.raises(RemoteError, match="fleet-only"):
        parse_remote({"stolen": {"stolen": True}})
    request = parse_request({"label": "x", "immobilization": {"activate": False}}, fleet=True)
    assert (request.type, request.scope) == ("Immobilization", "remote:immobilization:write")


REFUSED = [
    ({}, "exactly one action"),
    ({"horn": {"state": "Activated"}, "door": {"state": "Locked"}}, "exactly one action"),
    ({"horn": {"state": "Unactivated"}}, "horn.state"),
    ({"horn": {"state": "Activated", "beeps": 11}}, "horn.beeps"),
    ({"lights": {"on": False}}, "lights.on"),
    ({"lights": {"on": True, "duration": "PT2M"}}, "lights.duration"),
    ({"lights": {"on": True, "duration": "10"}}, "lights.duration"),
    ({"door": {"state": "Open"}}, "door.state"),
    ({"charging": {}}, "charging"),
    ({"charging": {"immediate": True, "preferences": {}}}, "charging"),
    ({"charging": {"schedule": {"programs": []}}}, "programs"),
    ({"charging": {"nextDelayedTime": "2026-07-01T22:30:00"}}, "offset"),
    ({"preconditioning": {"airConditioning": {}}}, "airConditioning"),
    (
        {"preconditioning": {"airConditioning": {"programs": [{"slot": 5, "enabled": True}]}}},
        "slot",
    ),
    (
        {
            "preconditioning": {
                "airConditioning": {"programs": [{"slot": 1, "enabled": True, "start": "PT7H"}]}
            }
        },
        "occurence",
    ),
    (
        {
            "preconditioning": {
                "airConditioning": {
                    "programs": [{"slot": 1, "actionsType": "Delete"}] * 2,
                }
            }
        },
        "twice",
    ),
    ({"navigation": {"positions": []}}, "not supported"),
    ({"wakeUp": {"action": "Sleep"}}, "wakeUp.action"),
    ({"horn": {"state": "Activated"}, "colour": "red"}, "unknown field"),
    ({"horn": {"state": "Activated"}, "attributes": [{"type": "Header"}]}, "attributes"),
    ([], "expected an object"),
]


@pytest.mark.parametrize(("body", "why"), REFUSED)
def test_bad_bodies_are_refused(body: Any, why: str) -> None:
    with pytest.raises(RemoteError, match=why):
        parse_request(body, fleet=True)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["horn", "door", "state", "on", "charging", "immediate", "programs", "slot", "x"]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@given(JSON)
@settings(max_examples=300, deadline=None)
def test_any_json_is_parsed_or_refused_clearly(body: Any) -> None:
    try:
        request = parse_request(body, fleet=True)
    except RemoteError as exc:
        assert str(exc)
    else:
        assert request.type and request.scope.startswith("remote:")


@given(
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=0, max_value=23),
    st.integers(min_value=0, max_value=59),
    st.sets(st.sampled_from(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]), min_size=1),
)
def test_generated_bodies_map_exactly(beeps: int, hour: int, minute: int, days: set[str]) -> None:
    assert parse_remote({"horn": {"state": "Activated", "beeps": beeps}}) == (
        "horn",
        {"beeps": beeps},
    )
    start = f"PT{hour}H{minute}M"
    program = {"slot": 1, "enabled": True, "start": start, "occurence": {"day": sorted(days)}}
    _action, params = parse_remote(
        {"preconditioning": {"airConditioning": {"programs": [program]}}}
    )
    order = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    assert params["programs"][0]["start_min"] == hour * 60 + minute
    assert params["programs"][0]["days"] == sum(1 << order.index(d) for d in days)


# -- refusals of the API ---------------------------------------------------------------------------

HORN = {"horn": {"state": "Activated", "beeps": 2}}


def test_every_refusal_has_its_status_and_error_body(env: Env) -> None:
    cbid = env.callback(type=["Remote"])["callbackId"]
    ev = f"/user/vehicles/{env.vid('ev')}/callbacks/{cbid}/remotes"
    # scopes: none of the remote ones, or not the one of the action
    refused(env.call("POST", ev, env.token(("data:telemetry",)), json=HORN), 40301)
    refused(env.call("POST", ev, env.token(("remote:door:write",)), json=HORN), 40301)
    refused(env.call("GET", ev, env.token(("data:telemetry",))), 40301)
    # a fleet token on a user's route
    fleet_token = env.token(FLEET_REMOTE, "fleet-a", kind="fleet")
    refused(env.call("POST", ev, fleet_token, json=HORN), 40304)
    # another user's vehicle, an unknown one
    ghost = f"/user/vehicles/{env.vid('ghost')}/callbacks/{cbid}/remotes"
    refused(env.call("POST", ghost, json=HORN), 40401)
    refused(env.call("POST", f"/user/vehicles/nope/callbacks/{cbid}/remotes", json=HORN), 40401)
    # another user's callback, another client's, an unknown one
    bobs = env.callback(token=env.token(("data:telemetry",), "bob"))["callbackId"]
    other_app = env.callback(token=env.token(("data:telemetry",), client_id="other-app"))
    for other in (bobs, other_app["callbackId"], "nope"):
        path = f"/user/vehicles/{env.vid('ev')}/callbacks/{other}/remotes"
        refused(env.call("POST", path, json=HORN), 40402)
    # bodies: two actions, none, bad parameters, a fleet-only action, unknown fields
    bad_bodies: list[Any] = [
        {**HORN, "door": {"state": "Locked"}},
        {"label": "nothing"},
        {"horn": {"state": "Activated", "beeps": 11}},
        {"horn": {"state": "Unactivated"}},
        {"lights": {"on": True, "duration": "PT5M"}},
        {"immobilization": {"activate": True}},
        {"charging": {"immediate": True, "schedule": {"nextDelayedTime": "PT1H"}}},
        {"navigation": {"positions": [{"type": "Point", "coordinates": [2.3, 48.8]}]}},
        {"horn": {"state": "Activated"}, "extra": 1},
        [1, 2],
    ]
    for body in bad_bodies:
        refused(env.call("POST", ev, json=body), 40001)
    # a callback serving monitors only
    monitors_only = env.callback(type=["Monitor"])["callbackId"]
    path = f"/user/vehicles/{env.vid('ev')}/callbacks/{monitors_only}/remotes"
    body = refused(env.call("POST", path, json=HORN), 40001)
    assert "type" in body["message"]
    # everything right, but no broker
    body = refused(env.call("POST", ev, json=HORN), 50301)
    assert body["message"].startswith("remote commands are off")
    # nothing was kept
    assert env.store.records(REMOTE_KIND) == []
    # reading: an unknown remote, a malformed id
    refused(env.call("GET", f"{ev}/{'0' * 32}"), 40402)
    refused(env.call("GET", f"{ev}/not-an-id"), 40001)
    listed = env.call("GET", ev).json()
    assert listed["total"] == 0 and listed["_embedded"]["remoteActions"] == []


def test_fleet_refusals(env: Env) -> None:
    cbid = env.fleet_callback(remoteTypes=["Doors"])
    token = env.token(FLEET_REMOTE, "fleet-a", kind="fleet")
    ev = f"/fleets/fleet-a/vehicles/{env.vid('ev')}/callbacks/{cbid}/remotes"
    body = refused(env.call("POST", ev, token, json={"immobilization": {"activate": True}}), 40001)
    assert "Immobilization" in body["message"]
    lacking = env.token(ALL_REMOTE, "fleet-a", kind="fleet")
    refused(env.call("POST", ev, lacking, json={"stolen": {"stolen": True}}), 40301)
    ghost = f"/fleets/fleet-a/vehicles/{env.vid('ghost')}/callbacks/{cbid}/remotes"
    refused(env.call("POST", ghost, token, json={"door": {"state": "Locked"}}), 40401)
    other = f"/fleets/fleet-b/vehicles/{env.vid('ev')}/callbacks/{cbid}/remotes"
    refused(env.call("POST", other, token, json={"door": {"state": "Locked"}}), 40402)
    refused(env.call("POST", ev, token, json={"door": {"state": "Locked"}}), 50301)
    user_token = env.token(FLEET_REMOTE)
    refused(env.call("POST", ev, user_token, json={"door": {"state": "Locked"}}), 40304)


# -- the whole path ----------------------------------------------------------------------------


def test_remote_end_to_end(
    db_env: Env,
    broker: AnyBroker,
    mqtt_client: Callable[..., PahoClient],
    unique_id: Callable[[str], str],
) -> None:
    env = db_env
    receiver = WebhookReceiver()
    dispatcher = RemoteDispatcher(
        env.store, broker.url, MASTER, clock_ms=env.clock, client_id=unique_id("disp")
    )
    listener = RemoteStatusListener(
        env.store, broker.url, clock_ms=env.clock, client_id=unique_id("status")
    )
    box = mqtt_client(broker, unique_id("box")).connect()
    box.subscribe(f"tcusim/v1/{EV}/down")
    try:
        dispatcher.start()
        listener.start()
        env.client.app.state.remotes = dispatcher  # type: ignore[attr-defined]
        created = env.callback(receiver.url, type=["Remote"])
        cbid = created["callbackId"]
        receiver.secrets[cbid] = created["secret"]
        path = f"/user/vehicles/{env.vid('ev')}/callbacks/{cbid}/remotes"
        body = {
            **HORN,
            "label": "find my car",
            "attributes": [{"type": "Header", "key": "X-Remote", "value": "$remoteType"}],
        }
        answer = env.call("POST", path, json=body)
        assert answer.status_code == 202, answer.text
        assert answer.headers["content-type"].startswith("application/hal+json")
        posted = answer.json()
        rid = posted["remoteActionId"]
        assert posted["type"] == "Horn"
        assert posted["_links"]["remote"]["href"] == f"{API}{path}/{rid}"
        assert posted["_links"]["callback"]["href"] == f"{API}/user/callbacks/{cbid}"

        (message,) = box.get()
        assert message.qos == 1 and not message.retain
        command = check_command(message.payload, EV)
        assert command[1].hex() == rid
        assert (command[3], command[4]) == ("horn", {"beeps": 2})
        assert command[5] == NOW_MS
        assert command[8] >= NOW_MS
        order = command[8]

        statuses = ["Accepted", "SentToVehicle", "Success"]
        for n, status in enumerate(statuses):
            box.publish(f"tcusim/v1/{EV}/cmd", status_message(command[1], status, NOW_MS + n))
        box.publish(f"tcusim/v1/{EV}/cmd", status_message(command[1], "Success", NOW_MS + 2))

        def done() -> bool:
            record = env.store.get_record(REMOTE_KIND, rid)
            return record is not None and record.body["status"] == "Success"

        wait_for(done, "the remote to succeed")
        wait_for(lambda: listener.stats.duplicates == 1, "the duplicate")
        record = env.store.get_record(REMOTE_KIND, rid)
        assert record is not None
        assert record.body["order"] == order and record.owner == "user:alice"
        one = env.call("GET", f"{path}/{rid}").json()
        assert one["status"] == "Success" and one["remote"] == HORN
        assert [h["status"] for h in one["history"]] == ["Accepted", *statuses]
        assert [h["source"] for h in one["history"]] == ["gateway"] + ["vehicle"] * 3
        listed = env.call("GET", path).json()
        assert [r["remoteActionId"] for r in listed["_embedded"]["remoteActions"]] == [rid]
        # another scope does not open horn remotes
        door_only = env.token(("remote:door:write",))
        assert env.call("GET", path, door_only).json()["total"] == 0
        refused(env.call("GET", f"{path}/{rid}", door_only), 40301)

        queued = env.store.deliveries(callback_id=cbid)
        assert len(queued) == 3
        with WebhookSender(env.store, clock_ms=env.clock) as sender:
            assert sender.deliver_due().delivered == 3
        assert receiver.wait(lambda got: len(got) == 3, WAIT)
        assert all(n.signed for n in receiver.received)
        events = [n.body for n in receiver.received]
        assert [e["type"] for e in events] == ["Remote"] * 3
        assert [e["remoteEvent"]["eventStatus"] for e in events] == [
            {"type": "Pending", "status": "Accepted"},
            {"type": "Pending", "status": "SentToVehicle"},
            {"type": "Done", "status": "Success"},
        ]
        assert {e["remoteEvent"]["remoteActionId"] for e in events} == {rid}
        assert {e["remoteEvent"]["remoteType"] for e in events} == {"Horn"}
        assert {d.headers["X-Remote"] for d in env.store.deliveries(callback_id=cbid)} == {"Horn"}
        assert all(d.state is DeliveryState.DELIVERED for d in env.store.deliveries(cbid))

        # a second remote: a greater order
        answer = env.call("POST", path, json={"door": {"state": "Locked"}})
        assert answer.status_code == 202
        (second,) = box.get()
        assert check_command(second.payload, EV)[8] > order
        assert (cbor2.loads(second.payload)[3]) == "lock"
        counter = env.store.get_record(ORDER_KIND, EV)
        assert counter is not None and counter.body["last"] == cbor2.loads(second.payload)[8]
    finally:
        listener.stop()
        dispatcher.stop()
        receiver.close()


def test_fleet_remote_reaches_the_box(
    env: Env,
    dispatcher: RemoteDispatcher,
    broker: AnyBroker,
    mqtt_client: Callable[..., PahoClient],
    unique_id: Callable[[str], str],
) -> None:
    vin = VINS["crash"]
    box = mqtt_client(broker, unique_id("box")).connect()
    box.subscribe(f"tcusim/v1/{vin}/down")
    cbid = env.fleet_callback()
    token = env.token(FLEET_REMOTE, "fleet-a", kind="fleet")
    path = f"/fleets/fleet-a/vehicles/{env.vid('crash')}/callbacks/{cbid}/remotes"
    answer = env.call("POST", path, token, json={"immobilization": {"activate": True}})
    assert answer.status_code == 202, answer.text
    assert answer.json()["type"] == "Immobilization"
    command = check_command(box.get()[0].payload, vin)
    assert (command[3], command[4]) == ("immobilize", {"activate": True})
    rid = answer.json()["remoteActionId"]
    one = env.call("GET", f"{path}/{rid}", token).json()
    assert one["status"] == "Accepted"
    assert one["_links"]["callback"]["href"] == f"{API}/fleets/fleet-a/remote/callbacks/{cbid}"


# -- the listener on its own -----------------------------------------------------------------


def _remote(
    env: Env, cbid: str, rid: str, *, vin: str = EV, expires_ms: int = NOW_MS + 60_000
) -> None:
    body = {
        "remoteActionId": rid,
        "vin": vin,
        "callbackId": cbid,
        "clientId": "app",
        "type": "Doors",
        "action": "lock",
        "params": {},
        "remote": {"door": {"state": "Locked"}},
        "order": 1,
        "expiresAtMs": expires_ms,
        "status": "Accepted",
        "history": [{"status": "Accepted", "at": "x", "source": "gateway"}],
    }
    env.store.put_record(Record(REMOTE_KIND, rid, "user:alice", vin, body, NOW_MS, NOW_MS))


def test_bad_status_messages_are_counted_never_raised(env: Env, broker: AnyBroker) -> None:
    cbid = env.callback(type=["Remote"])["callbackId"]
    cid = secrets.token_bytes(16)
    _remote(env, cbid, cid.hex())
    listener = RemoteStatusListener(env.store, broker.url, clock_ms=env.clock)
    topic = f"tcusim/v1/{EV}/cmd"
    cases = [
        (topic, b"\xff\x00not cbor"),
        (topic, cbor2.dumps({0: 1})),
        (topic, cbor2.dumps([1, 2, 3])),
        (topic, status_message(cid, "Exploded", NOW_MS)),
        ("tcusim/v1/x/up", status_message(cid, "Accepted", NOW_MS)),
        (f"tcusim/v1/{VINS['crash']}/cmd", status_message(cid, "Accepted", NOW_MS)),
        (topic, status_message(secrets.token_bytes(16), "Accepted", NOW_MS)),
        (topic, status_message(b"", "Failed", NOW_MS, cause="GeneralError")),
    ]
    outcomes = [listener.handle(t, p) for t, p in cases]
    assert "applied" not in outcomes and "duplicate" not in outcomes
    assert outcomes[4:] == ["bad_topic", "vin_mismatch", "unknown_command", "unidentified_command"]
    assert sum(listener.stats.rejected.values()) == len(cases)
    assert len(listener.rejections) == len(cases)
    assert all(r.reason and r.detail for r in listener.rejections)
    # a refusal by the box: Failed with its cause, then nothing more
    failed = status_message(cid, "Failed", NOW_MS + 5, cause="DoorsOpen")
    assert listener.handle(topic, failed) == "applied"
    assert listener.handle(topic, failed) == "duplicate"
    assert listener.handle(topic, status_message(cid, "Success", NOW_MS + 6)) == "already_done"
    record = env.store.get_record(REMOTE_KIND, cid.hex())
    assert record is not None
    assert (record.body["status"], record.body["failureCause"]) == ("Failed", "DoorsOpen")
    (delivery,) = env.store.deliveries(callback_id=cbid)
    import json  # noqa: PLC0415

    event = json.loads(delivery.body)["remoteEvent"]
    assert event["eventStatus"] == {"type": "Done", "status": "Failed", "failureCause": "DoorsOpen"}


@pytest.mark.parametrize(
    ("reason", "ignored_as"),
    [
        ("replayed", "replayed"),
        ("bad_signature", "forged"),
        ("unsigned", "forged"),
        ("malformed", "forged"),
        ("not_cbor", "forged"),
    ],
)
def test_a_refusal_of_a_copy_fails_only_a_remote_never_heard_from(
    env: Env, broker: AnyBroker, reason: str, ignored_as: str
) -> None:
    """A box refuses a redelivered command as replayed, and an unauthentic one carrying a real
    command's id (the id is read before any check): no news about a command the vehicle took;
    the vehicle's answer to one it never took (for a forged copy: the key it holds is not
    the gateway's)."""
    from firmware_sim.downlink import REFUSAL_CAUSES, Refusal, encode_status  # noqa: PLC0415

    cbid = env.callback(type=["Remote"])["callbackId"]
    heard, silent = secrets.token_bytes(16), secrets.token_bytes(16)
    _remote(env, cbid, heard.hex())
    _remote(env, cbid, silent.hex())
    listener = RemoteStatusListener(env.store, broker.url, clock_ms=env.clock)
    topic = f"tcusim/v1/{EV}/cmd"

    def refused(cid: bytes, at_ms: int) -> bytes:
        refusal = Refusal(reason, REFUSAL_CAUSES[reason], "a copy", cid)
        return encode_status(refusal.status(EV, at_ms))

    assert listener.handle(topic, status_message(heard, "Accepted", NOW_MS)) == "applied"
    assert listener.handle(topic, refused(heard, NOW_MS + 1)) == ignored_as
    record = env.store.get_record(REMOTE_KIND, heard.hex())
    assert record is not None and record.body["status"] == "Accepted"
    assert listener.handle(topic, status_message(heard, "Success", NOW_MS + 2)) == "applied"
    assert listener.handle(topic, refused(heard, NOW_MS + 3)) == ignored_as
    ignored = (listener.stats.replay_refusals, listener.stats.forged_refusals)
    assert ignored == ((2, 0) if reason == "replayed" else (0, 2))
    assert not listener.stats.rejected
    # never heard from: the refusal is the vehicle's answer to it
    assert listener.handle(topic, refused(silent, NOW_MS + 4)) == "applied"
    record = env.store.get_record(REMOTE_KIND, silent.hex())
    assert record is not None
    assert (record.body["status"], record.body["failureCause"]) == (
        "Failed",
        REFUSAL_CAUSES[reason].value,
    )
    assert record.body["detail"].startswith(reason)
    assert listener.stats.applied == 3
    assert len(env.store.deliveries(callback_id=cbid)) == 3


def test_an_unanswered_remote_expires(env: Env, broker: AnyBroker) -> None:
    cbid = env.callback(type=["Remote"])["callbackId"]
    rid = secrets.token_hex(16)
    _remote(env, cbid, rid, expires_ms=NOW_MS + 1000)
    listener = RemoteStatusListener(env.store, broker.url, clock_ms=env.clock, grace_s=60)
    assert listener.expire_due() == 0
    env.clock.advance(60_000)
    assert listener.expire_due() == 0
    env.clock.advance(1_000)
    assert listener.expire_due() == 1
    assert listener.expire_due() == 0
    record = env.store.get_record(REMOTE_KIND, rid)
    assert record is not None
    assert (record.body["status"], record.body["failureCause"]) == (
        "Failed",
        "VehicleConnectionTimeout",
    )
    assert len(env.store.deliveries(callback_id=cbid)) == 1


def test_orders_rise_per_vehicle(env: Env, dispatcher: RemoteDispatcher) -> None:
    orders = [dispatcher.next_order(EV, NOW_MS) for _ in range(3)]
    assert orders == [NOW_MS, NOW_MS + 1, NOW_MS + 2]
    assert dispatcher.next_order(VINS["crash"], NOW_MS - 5) == NOW_MS - 5
    assert dispatcher.next_order(EV, NOW_MS + 10_000) == NOW_MS + 10_000
