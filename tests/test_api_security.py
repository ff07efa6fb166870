"""Who may see what: tokens, scopes, accounts, services, privacy and rate limits."""

from __future__ import annotations

import re
import secrets
from typing import Any

import pytest
from apidata import API, BACKENDS, DATA_SCOPES, SimClock, World, build_world_once
from fastapi.testclient import TestClient

from gateway.auth import AuthServer
from gateway.ratelimit import RateLimiter


@pytest.fixture(params=BACKENDS, scope="module")
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> World:
    """The drives' world on SQLite and on PostgreSQL (built once per session)."""
    return build_world_once(request.param, tmp_path_factory, request)


def refused(response: Any, code: int) -> dict[str, Any]:
    """The error body of a refusal with ``code`` (status * 100 + detail)."""
    assert response.status_code == code // 100, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "uuid", "message", "timestamp"}
    assert body["code"] == code, body
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["timestamp"])
    return body


def test_no_token_is_401_1(world: World) -> None:
    response = world.client.get(f"{API}/user/vehicles")
    refused(response, 40101)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_wrong_token_is_401_2(world: World) -> None:
    forged = AuthServer(world.accounts, secrets.token_bytes(32), clock_ms=world.clock)
    for token in (world.token(auth=forged), "not-a-token", world.token()[:-2] + "xx"):
        body = refused(world.get("/user/vehicles", token), 40101 if " " in token else 40102)
        assert token not in body["message"]


def test_an_expired_token_is_401_3(world: World) -> None:
    clock = SimClock(world.clock())
    auth = AuthServer(world.accounts, secrets.token_bytes(32), clock_ms=clock)
    client = TestClient(world.make_app(clock=clock, auth=auth))
    token = world.token(ttl_s=60, auth=auth)
    headers = world.headers(token)
    assert client.get(f"{API}/user", headers=headers).status_code == 200
    clock.advance(61_000)
    refused(client.get(f"{API}/user", headers=headers), 40103)


@pytest.mark.parametrize(
    ("tail", "scope"),
    [
        ("/status", "data:telemetry"),
        ("/lastPosition", "data:position"),
        ("/telemetry", "data:telemetry"),
        ("/maintenance", "data:telemetry"),
        ("/trips", "data:trip"),
        ("/alerts", "data:alert"),
        ("/alarms", "data:alert"),
        ("/collisions", "data:collision"),
    ],
)
def test_a_missing_scope_is_403_1(world: World, tail: str, scope: str) -> None:
    others = tuple(s for s in DATA_SCOPES if s != scope)
    refused(world.get(world.user_path("ev") + tail, world.token(scopes=others)), 40301)
    assert world.get(world.user_path("ev") + tail, world.token(scopes=(scope,))).status_code in (
        200,
        403,  # lastPosition of a car whose scopes are fine but no position scope in status
    )


def test_waypoints_need_trip_and_position(world: World) -> None:
    trip = world.get(world.user_path("ev") + "/trips").json()["_embedded"]["trips"][0]
    path = world.user_path("ev") + f"/trips/{trip['id']}/wayPoints"
    refused(world.get(path, world.token(scopes=("data:trip",))), 40301)
    assert world.get(path, world.token(scopes=("data:trip", "data:position"))).status_code == 200


def test_another_users_vehicle_is_404_1(world: World) -> None:
    bob = world.token("bob")
    for tail in ("", "/status", "/trips", "/lastPosition", "/collisions"):
        refused(world.get(world.user_path("ev") + tail, bob), 40401)
    refused(world.get(world.user_path("ghost") + "/status"), 40401)
    refused(world.get("/user/vehicles/no-such-id/status"), 40401)


def test_another_fleets_vehicle_is_404_1(world: World) -> None:
    a = world.token("fleet-a", kind="fleet")
    b = world.token("fleet-b", kind="fleet")
    refused(world.get(world.fleet_path("ghost") + "/status", a), 40401)
    refused(world.get(world.fleet_path("ev", "fleet-b") + "/status", b), 40401)
    refused(world.get(world.fleet_path("ev") + "/status", b), 40402)  # not its fleet
    refused(world.get("/fleets/fleet-a", b), 40402)


def test_the_wrong_kind_of_principal_is_403_4(world: World) -> None:
    fleet = world.token("fleet-a", kind="fleet")
    refused(world.get("/user/vehicles", fleet), 40304)
    refused(world.get(world.user_path("ev") + "/status", fleet), 40304)
    refused(world.get("/fleets"), 40304)
    refused(world.get("/fleets/fleet-a/vehicles"), 40304)


def test_data_of_an_unsubscribed_service_is_403_3(world: World) -> None:
    tm = world.user_path("tm")
    for tail in ("/trips", "/status", "/lastPosition", "/alerts", "/collisions", "/telemetry"):
        refused(world.get(tm + tail), 40303)
    assert world.get(tm + "/maintenance").status_code == 200
    vehicle = world.get(tm).json()
    assert vehicle["services"] == ["telemaintenance"]
    fleet = world.token("fleet-a", kind="fleet")
    trips = world.get("/fleets/fleet-a/trips", fleet).json()["_embedded"]["trips"]
    assert all(world.ids["tm"] not in t["_links"]["self"]["href"] for t in trips)


def test_token_scopes_meet_vehicle_services(world: World) -> None:
    body = world.get(world.user_path("ev") + "/status", world.token(scopes=("data:telemetry",)))
    assert body.status_code == 200
    assert "lastPosition" not in body.json()


POSITION_KEYS = {
    "coordinates",
    "lastPosition",
    "startPosition",
    "stopPosition",
    "endPosition",
    "position",
    "location",
    "positions",
    "features",
}


def leaks(body: Any, coordinates: set[float]) -> list[str]:
    """Where ``body`` shows a position: a position member or a known coordinate value."""
    found: list[str] = []
    if isinstance(body, dict):
        for key, value in body.items():
            if key == "_links":  # link names such as lastPosition are no positions
                continue
            if key in POSITION_KEYS:
                found.append(key)
            found.extend(leaks(value, coordinates))
    elif isinstance(body, list):
        for value in body:
            found.extend(leaks(value, coordinates))
    elif isinstance(body, float) and body in coordinates:
        found.append(repr(body))
    return found


def coordinates_of(world: World, name: str) -> set[float]:
    """Every latitude and longitude the vehicle ever sent."""
    vin = world.accounts.vehicle_by_id(world.ids[name])
    assert vin is not None
    values = {float(v) for sid, _t, v in world.store.samples(vin.vin) if sid in (40, 41)}
    assert values  # the drive sent positions before the driver turned sharing off
    return values


def test_no_position_anywhere_under_geolocation(world: World) -> None:
    geo = world.user_path("geo")
    refused(world.get(geo + "/lastPosition"), 40302)
    trips = world.get(geo + "/trips")
    assert trips.status_code == 200
    (trip,) = trips.json()["_embedded"]["trips"]
    assert {"fault": "DataLacking", "cause": "GeoPrivacy"} in trip["faults"]
    refused(world.get(geo + f"/trips/{trip['id']}/wayPoints"), 40302)
    status = world.get(geo + "/status").json()
    assert status["privacy"]["state"] == "Geolocation"
    paths = [
        geo,
        geo + "/status",
        geo + "/trips",
        geo + f"/trips/{trip['id']}",
        geo + f"/trips/{trip['id']}/telemetry?extension=location&pageSize=2000",
        geo + f"/trips/{trip['id']}/alerts",
        geo + "/telemetry?extension=location&pageSize=2000",
        geo + "/alerts",
        geo + "/alarms",
        geo + "/collisions",
        geo + "/maintenance",
    ]
    fleet = world.token("fleet-a", kind="fleet")
    fleet_paths = [
        world.fleet_path("geo") + "/status",
        world.fleet_path("geo") + "/trips",
        "/fleets/fleet-a/status",
    ]
    coordinates = coordinates_of(world, "geo")
    for path, token in [(p, None) for p in paths] + [(p, fleet) for p in fleet_paths]:
        response = world.get(path, token)
        assert response.status_code in (200, 404), (path, response.text)
        body = response.json()
        if path == "/fleets/fleet-a/status":  # the geo car's status among the others'
            body = [b for b in body["_embedded"]["status"] if world.ids["geo"] in str(b["_links"])]
            assert len(body) == 1
        assert leaks(body, coordinates) == [], path


def test_positions_do_show_without_privacy(world: World) -> None:
    body = world.get(world.user_path("ev") + "/lastPosition").json()
    assert leaks(body, coordinates_of(world, "ev"))


def test_rate_limit_429_with_headers(world: World) -> None:
    clock = SimClock(world.clock())
    limiter = RateLimiter(clock_ms=clock)
    client = TestClient(world.make_app(clock=clock, limiter=limiter))
    headers = world.headers(world.token(client_id="tiny-app"))
    first = client.get(f"{API}/user", headers=headers)
    assert first.status_code == 200
    assert first.headers["X-RateLimit-Limit-2"] == "2"
    assert first.headers["X-RateLimit-Remaining-2"] == "1"
    assert first.headers["X-RateLimit-Limit-1"] == "5"
    assert client.get(f"{API}/user", headers=headers).status_code == 200
    burst = client.get(f"{API}/user", headers=headers)
    refused(burst, 42901)
    assert int(burst.headers["Retry-After"]) >= 1
    assert burst.headers["X-RateLimit-Remaining-2"] == "0"
    for _ in range(3):  # the day's third to fifth requests, each in a second of its own
        clock.advance(1_000)
        assert client.get(f"{API}/user", headers=headers).status_code == 200
    clock.advance(1_000)
    day = client.get(f"{API}/user", headers=headers)
    refused(day, 42901)
    assert day.headers["X-RateLimit-Remaining-1"] == "0"
    assert int(day.headers["Retry-After"]) > 3600
    other = world.headers(world.token())  # another client, another count
    assert client.get(f"{API}/user", headers=other).status_code == 200
