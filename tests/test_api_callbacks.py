"""Callbacks and monitors through the Web API, and the monitor engine over real drives."""

from __future__ import annotations

from typing import Any

import pytest
from apidata import API, BACKENDS, World, build_world_once
from test_api_security import refused

from gateway.monitors import MonitorEngine


@pytest.fixture(params=BACKENDS, scope="module")
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> World:
    """The drives' world on SQLite and on PostgreSQL (built once per session)."""
    return build_world_once(request.param, tmp_path_factory, request)


WEBHOOK: dict[str, Any] = {"webhook": {"name": "hook", "target": "https://receiver.example/events"}}
LOW_BATTERY: dict[str, Any] = {
    "label": "battery low",
    "triggerParam": {
        "triggers": [
            {
                "name": "low",
                "data": {
                    "data": "vehicle.energy.electric.level",
                    "op": "lowerThan",
                    "value": ["90"],
                },
            }
        ],
        "boolExp": "low",
    },
}
ZONE: dict[str, Any] = {
    "label": "left Paris",
    "triggerParam": {
        "triggers": [
            {
                "name": "out",
                "zone": {
                    "transition": "Out",
                    "place": {"radius": 5, "center": {"longitude": 2.35, "latitude": 48.85}},
                },
            }
        ],
        "boolExp": "out",
    },
}


def call(world: World, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    """One request to ``API + path`` with a token (alice's by default)."""
    return world.client.request(method, f"{API}{path}", headers=world.headers(token), **kw)


def new_callback(world: World, token: str | None = None, **extra: Any) -> dict[str, Any]:
    """Create a webhook callback; its creation answer."""
    response = call(world, "POST", "/user/callbacks", token, json={"callback": WEBHOOK, **extra})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def test_callback_lifecycle(world: World) -> None:
    created = new_callback(world, label="mine", type=["Monitor"])
    cbid = created["callbackId"]
    assert created["status"] == "Running"
    assert len(created["secret"]) >= 32
    assert created["_links"]["callback"]["href"] == f"{API}/user/callbacks/{cbid}"
    one = call(world, "GET", f"/user/callbacks/{cbid}").json()
    assert one["subscribe"]["callback"]["webhook"]["target"] == WEBHOOK["webhook"]["target"]
    assert "secret" not in str(one)
    listed = call(world, "GET", "/user/callbacks", params={"types": "Monitor"}).json()
    assert cbid in [c["id"] for c in listed["_embedded"]["callbacks"]]
    other = {"webhook": {"name": "other", "target": "http://127.0.0.1:9/x"}}
    changed = call(world, "PUT", f"/user/callbacks/{cbid}", json={"callback": other})
    assert changed.status_code == 202
    assert call(world, "GET", f"/user/callbacks/{cbid}").json()["subscribe"]["callback"] == {
        "webhook": {**other["webhook"], "attributes": []}
    }
    paused = call(world, "PUT", f"/user/callbacks/{cbid}/status", json={"status": "Paused"})
    assert paused.status_code == 202 and paused.json()["status"] == "Paused"
    assert call(world, "DELETE", f"/user/callbacks/{cbid}").status_code == 204
    refused(call(world, "GET", f"/user/callbacks/{cbid}"), 40402)


def test_callbacks_are_private_to_user_and_client(world: World) -> None:
    cbid = new_callback(world)["callbackId"]
    refused(call(world, "GET", f"/user/callbacks/{cbid}", world.token("bob")), 40402)
    other_client = world.token(client_id="other-app")
    refused(call(world, "GET", f"/user/callbacks/{cbid}", other_client), 40402)
    refused(call(world, "DELETE", f"/user/callbacks/{cbid}", world.token("bob")), 40402)
    listed = call(world, "GET", "/user/callbacks", world.token("bob")).json()
    assert cbid not in str(listed)
    call(world, "DELETE", f"/user/callbacks/{cbid}")


def test_bad_callbacks_are_400_1(world: World) -> None:
    for body in (
        {},
        {"callback": {"webhook": {"name": "x", "target": "ftp://example.test/"}}},
        {"callback": {"pushnotif": {"devices": ["a"]}}},
        {"callback": WEBHOOK, "type": ["Nope"]},
        {"callback": WEBHOOK, "unknown": 1},
    ):
        refused(call(world, "POST", "/user/callbacks", json=body), 40001)
    refused(call(world, "POST", "/user/callbacks", content=b"{not json"), 40001)


def test_callbacks_need_a_data_or_a_remote_scope(world: World) -> None:
    # An app that only sends remote commands makes the callback its remotes report to.
    remote_only = world.token(scopes=("remote:horn:write",))
    created = new_callback(world, remote_only, type=["Remote"])
    cbid = created["callbackId"]
    assert cbid in str(call(world, "GET", "/user/callbacks", remote_only).json())
    # Monitors watch data: they need a data scope.
    base = f"{world.user_path('ev')}/callbacks/{cbid}/monitors"
    refused(call(world, "POST", base, remote_only, json=LOW_BATTERY), 40301)
    assert call(world, "DELETE", f"/user/callbacks/{cbid}", remote_only).status_code == 204
    fleet_remote_only = world.token("fleet-a", ("remote:horn:write",), kind="fleet")
    fleet_base = "/fleets/fleet-a/remote/callbacks"
    made = call(world, "POST", fleet_base, fleet_remote_only, json={"callback": WEBHOOK})
    assert made.status_code == 202, made.text
    fleet_cbid = made.json()["callbackId"]
    refused(call(world, "GET", "/fleets/fleet-a/monitors", fleet_remote_only), 40301)
    gone = call(world, "DELETE", f"{fleet_base}/{fleet_cbid}", fleet_remote_only)
    assert gone.status_code == 204
    # Without a data scope, no callback that serves monitors: their events carry data.
    refused(call(world, "POST", "/user/callbacks", remote_only, json={"callback": WEBHOOK}), 40301)
    monitors = new_callback(world, type=["Monitor", "Remote"])["callbackId"]
    for method, path, body in (
        ("GET", f"/user/callbacks/{monitors}", None),
        ("PUT", f"/user/callbacks/{monitors}", {"callback": WEBHOOK, "type": ["Remote"]}),
        ("PUT", f"/user/callbacks/{monitors}/status", {"status": "Paused"}),
        ("DELETE", f"/user/callbacks/{monitors}", None),
    ):
        refused(call(world, method, path, remote_only, json=body), 40402)
    assert monitors not in str(call(world, "GET", "/user/callbacks", remote_only).json())
    assert call(world, "GET", f"/user/callbacks/{monitors}").status_code == 200  # still there
    assert call(world, "DELETE", f"/user/callbacks/{monitors}").status_code == 204
    # Neither: refused.
    nothing = world.token(scopes=())
    refused(call(world, "GET", "/user/callbacks", nothing), 40301)
    refused(call(world, "POST", "/user/callbacks", nothing, json={"callback": WEBHOOK}), 40301)


def test_monitor_lifecycle(world: World) -> None:
    cbid = new_callback(world)["callbackId"]
    base = f"{world.user_path('ev')}/callbacks/{cbid}/monitors"
    created = call(world, "POST", base, json=LOW_BATTERY)
    assert created.status_code == 202, created.text
    mid = created.json()["monitorId"]
    assert created.json()["_links"]["monitor"]["href"] == f"{API}{base}/{mid}"
    one = call(world, "GET", f"{base}/{mid}").json()
    assert one["monitor"]["label"] == "battery low" and one["status"] == "Running"
    assert [m["monitorId"] for m in call(world, "GET", base).json()["_embedded"]["monitors"]] == [
        mid
    ]
    replaced = call(world, "PUT", f"{base}/{mid}", json={**LOW_BATTERY, "label": "renamed"})
    assert replaced.status_code == 202
    assert call(world, "GET", f"{base}/{mid}").json()["monitor"]["label"] == "renamed"
    paused = call(world, "PUT", f"{base}/{mid}/status", json={"status": "Paused"})
    assert paused.json()["status"] == "Paused"
    refused(call(world, "PUT", f"{base}/{mid}/status", json={"status": "Failed"}), 40001)
    assert call(world, "DELETE", f"{base}/{mid}").status_code == 204
    refused(call(world, "GET", f"{base}/{mid}"), 40402)
    call(world, "DELETE", f"/user/callbacks/{cbid}")


def test_at_most_five_monitors_per_vehicle(world: World) -> None:
    cbid = new_callback(world)["callbackId"]
    base = f"{world.user_path('crash')}/callbacks/{cbid}/monitors"
    speed = {
        "label": "fast",
        "triggerParam": {
            "triggers": [
                {
                    "name": "f",
                    "data": {"data": "vehicle.kinetic.speed", "op": "greaterThan", "value": ["50"]},
                }
            ],
            "boolExp": "f",
        },
    }
    for _ in range(5):
        assert call(world, "POST", base, json=speed).status_code == 202
    body = refused(call(world, "POST", base, json=speed), 40001)
    assert "at most 5" in body["message"]
    call(world, "DELETE", f"/user/callbacks/{cbid}")  # its monitors go with it
    cbid = new_callback(world)["callbackId"]
    base = f"{world.user_path('crash')}/callbacks/{cbid}/monitors"
    assert call(world, "POST", base, json=speed).status_code == 202
    call(world, "DELETE", f"/user/callbacks/{cbid}")


def test_monitor_refusals(world: World) -> None:
    cbid = new_callback(world)["callbackId"]
    ev = f"{world.user_path('ev')}/callbacks/{cbid}/monitors"
    bad = {**LOW_BATTERY, "triggerParam": {**LOW_BATTERY["triggerParam"], "boolExp": "low | !low"}}
    refused(call(world, "POST", ev, json=bad), 40001)  # always true
    refused(call(world, "POST", ev, json={"label": "x"}), 40001)
    no_position = world.token(scopes=("data:telemetry",))
    refused(call(world, "POST", ev, no_position, json=ZONE), 40301)
    tm = f"{world.user_path('tm')}/callbacks/{cbid}/monitors"
    refused(call(world, "POST", tm, json=ZONE), 40303)
    ghost = f"{world.user_path('ghost')}/callbacks/{cbid}/monitors"
    refused(call(world, "POST", ghost, json=ZONE), 40401)
    refused(
        call(world, "POST", f"{world.user_path('ev')}/callbacks/nope/monitors", json=ZONE), 40402
    )
    remote_only = new_callback(world, type=["Remote"])["callbackId"]
    path = f"{world.user_path('ev')}/callbacks/{remote_only}/monitors"
    refused(call(world, "POST", path, json=ZONE), 40001)
    for c in (cbid, remote_only):
        call(world, "DELETE", f"/user/callbacks/{c}")


def test_a_monitor_notifies_through_its_callback(world: World) -> None:
    cbid = new_callback(world)["callbackId"]
    base = f"{world.user_path('ev')}/callbacks/{cbid}/monitors"
    mid = call(world, "POST", base, json=LOW_BATTERY).json()["monitorId"]
    engine = MonitorEngine(world.store, clock_ms=world.clock)
    engine.step()
    deliveries = world.store.deliveries(callback_id=cbid)
    assert deliveries, "the battery fell below 90 % during the drive"
    assert mid.encode() in deliveries[0].body
    call(world, "DELETE", f"/user/callbacks/{cbid}")


def test_fleet_callbacks(world: World) -> None:
    token = world.token("fleet-a", kind="fleet")
    base = "/fleets/fleet-a/remote/callbacks"
    created = call(world, "POST", base, token, json={"callback": WEBHOOK, "remoteTypes": ["Horn"]})
    assert created.status_code == 202, created.text
    cbid = created.json()["callbackId"]
    assert created.json()["_links"]["fleet"]["href"] == f"{API}/fleets/fleet-a"
    one = call(world, "GET", f"{base}/{cbid}", token).json()
    assert one["subscribe"]["remoteTypes"] == ["Horn"]
    assert cbid in str(call(world, "GET", base, token).json())
    other = world.token("fleet-b", kind="fleet")
    refused(call(world, "GET", f"/fleets/fleet-b/remote/callbacks/{cbid}", other), 40402)
    refused(call(world, "GET", f"{base}/{cbid}", other), 40402)
    assert (
        call(world, "PUT", f"{base}/{cbid}", token, json={"callback": WEBHOOK}).status_code == 202
    )
    status = call(world, "PUT", f"{base}/{cbid}/status", token, json={"status": "Paused"})
    assert status.json()["status"] == "Paused"
    assert call(world, "DELETE", f"{base}/{cbid}", token).status_code == 204


def test_fleet_monitors(world: World) -> None:
    token = world.token("fleet-a", kind="fleet")
    base = "/fleets/fleet-a/monitors"
    body = {**ZONE, "subscribeParam": {"callback": WEBHOOK, "refreshEvent": 120}}
    created = call(world, "POST", base, token, json=body)
    assert created.status_code == 202, created.text
    mid = created.json()["monitorId"]
    record = world.store.get_record("fleet_monitor", mid)
    assert record is not None
    assert len(record.body["members"]) == 3  # not the maintenance-only car: zones need positions
    one = call(world, "GET", f"{base}/{mid}", token).json()
    assert one["monitor"]["subscribeParam"]["refreshEvent"] == 120
    assert mid in str(call(world, "GET", base, token).json())
    paused = call(world, "PUT", f"{base}/{mid}/status", token, json={"status": "Paused"})
    assert paused.json()["status"] == "Paused"
    members = [world.store.get_record("monitor", m) for m in record.body["members"]]
    assert all(m is not None and m.body["status"] == "Paused" for m in members)
    changed = call(world, "PUT", f"{base}/{mid}", token, json={**body, "label": "again"})
    assert changed.status_code == 202 and changed.json()["status"] == "Paused"
    refused(call(world, "GET", f"{base}/{mid}", world.token("fleet-b", kind="fleet")), 40402)
    assert call(world, "DELETE", f"{base}/{mid}", token).status_code == 204
    assert all(world.store.get_record("monitor", m) is None for m in record.body["members"])
    refused(call(world, "GET", f"{base}/{mid}", token), 40402)
