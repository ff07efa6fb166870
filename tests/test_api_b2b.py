"""The B2B (fleet) Web API over real drives, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from apidata import API, BACKENDS, VINS, World, build_world_once
from test_api import GEO, HAL, assert_collection, assert_feature, ok


@pytest.fixture(params=BACKENDS, scope="module")
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> World:
    """The drives' world on SQLite and on PostgreSQL (built once per session)."""
    return build_world_once(request.param, tmp_path_factory, request)


def fleet(world: World) -> str:
    """fleet-a's token."""
    return world.token("fleet-a", kind="fleet")


def test_fleets_and_fleet(world: World) -> None:
    body = ok(world.get("/fleets", fleet(world)))
    (only,) = assert_collection(body, "fleets")
    assert only["id"] == "fleet-a" and only["name"] == "Fleet A"
    one = ok(world.get("/fleets/fleet-a", fleet(world)))
    assert one["_links"]["vehicles"]["href"] == f"{API}/fleets/fleet-a/vehicles"
    assert one["_links"]["callbacks"]["href"] == f"{API}/fleets/fleet-a/remote/callbacks"


def test_fleet_vehicles(world: World) -> None:
    body = ok(world.get("/fleets/fleet-a/vehicles", fleet(world)))
    items = assert_collection(body, "vehicles")
    assert [v["vin"] for v in items] == [VINS[n] for n in ("ev", "crash", "geo", "tm")]
    assert items[0]["_links"]["fleet"]["href"] == f"{API}/fleets/fleet-a"
    one = ok(world.get(world.fleet_path("crash"), fleet(world)))
    assert one["vin"] == VINS["crash"]


def test_fleet_vehicle_views(world: World) -> None:
    token = fleet(world)
    ev = world.fleet_path("ev")
    status = ok(world.get(ev + "/status", token))
    assert status["_links"]["self"]["href"] == f"{API}{ev}/status"
    assert_feature(ok(world.get(ev + "/lastPosition", token), GEO))
    assert ok(world.get(ev + "/maintenance", token))["mileageBeforeMaintenance"] > 0
    telemetry = ok(world.get(ev + "/telemetry", token, params={"pageSize": 3}))
    assert len(assert_collection(telemetry, "telemetries")) == 3
    trips = assert_collection(
        ok(world.get(ev + "/trips", token, params={"profile": "fleet"})), "trips"
    )
    assert len(trips) == 2
    tid = trips[0]["id"]
    assert ok(world.get(ev + f"/trips/{tid}", token))["id"] == tid
    points = ok(world.get(ev + f"/trips/{tid}/wayPoints", token, params={"pageSize": 10}))
    assert len(points["_embedded"]["positions"]) == 10
    geo = ok(world.get(ev + f"/trips/{tid}/wayPoints", token, headers={"Accept": GEO}), GEO)
    assert geo["type"] == "FeatureCollection"
    assert ok(world.get(ev + f"/trips/{tid}/telemetry", token, params={"pageSize": 1}))["total"] > 1
    assert ok(world.get(ev + f"/trips/{tid}/alerts", token))["total"] == 0
    assert ok(world.get(ev + f"/trips/{tid}/collisions", token))["total"] == 0
    alarms = assert_collection(ok(world.get(ev + "/alarms", token)), "alarms")
    assert ok(world.get(ev + f"/alarms/{alarms[0]['id']}", token))["id"] == alarms[0]["id"]


def test_fleet_crash_views(world: World) -> None:
    token = fleet(world)
    crash = world.fleet_path("crash")
    (collision,) = ok(world.get(crash + "/collisions", token))["_embedded"]["Collisions"]
    assert_feature(collision["position"])
    assert ok(world.get(crash + f"/collisions/{collision['id']}", token))["id"] == collision["id"]
    (alert,) = ok(world.get(crash + "/alerts", token))["_embedded"]["alerts"]
    assert ok(world.get(crash + f"/alerts/{alert['id']}", token))["id"] == alert["id"]
    (trip,) = ok(world.get(crash + "/trips", token))["_embedded"]["trips"]
    tpath = crash + f"/trips/{trip['id']}"
    assert ok(world.get(f"{tpath}/alerts/{alert['id']}", token))["id"] == alert["id"]
    assert ok(world.get(f"{tpath}/collisions/{collision['id']}", token))["id"] == collision["id"]


def test_fleet_wide_lists(world: World) -> None:
    token = fleet(world)
    statuses = assert_collection(ok(world.get("/fleets/fleet-a/status", token)), "status")
    assert len(statuses) == 3  # the maintenance-only car has no telemetry service
    maintenances = ok(world.get("/fleets/fleet-a/maintenances", token))
    assert maintenances["total"] == 4
    trips = assert_collection(ok(world.get("/fleets/fleet-a/trips", token)), "trips")
    assert len(trips) == 4  # ev 2, crash 1, geo 1; none of the maintenance-only car
    starts = [t["startedAt"] for t in trips]
    assert starts == sorted(starts)
    alerts = ok(world.get("/fleets/fleet-a/alerts", token))["_embedded"]["alerts"]
    assert len(alerts) == 1
    assert ok(world.get(f"/fleets/fleet-a/alerts/{alerts[0]['id']}", token))["type"]
    (collision,) = ok(world.get("/fleets/fleet-a/collisions", token))["_embedded"]["Collisions"]
    assert collision["_links"]["vehicle"]["href"] == f"{API}{world.fleet_path('crash')}"
    one = ok(world.get(f"/fleets/fleet-a/collisions/{collision['id']}", token))
    assert one["createdAt"] == "2026-06-20T14:05:30.000Z"


def test_fleet_b_sees_only_its_vehicle(world: World) -> None:
    token = world.token("fleet-b", kind="fleet")
    body = ok(world.get("/fleets/fleet-b/vehicles", token))
    assert [v["vin"] for v in body["_embedded"]["vehicles"]] == [VINS["ghost"]]
    assert ok(world.get("/fleets/fleet-b/trips", token))["total"] == 0
    assert ok(world.get("/fleets/fleet-b/status", token), HAL)["total"] == 0
