"""The B2C Web API over real drives, on SQLite and on PostgreSQL (``world`` from apidata)."""

from __future__ import annotations

from typing import Any

import pytest
from apidata import API, BACKENDS, VINS, World, build_world_once

from gateway.api.hal import parse_time_ms


@pytest.fixture(params=BACKENDS, scope="module")
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> World:
    """The drives' world on SQLite and on PostgreSQL (built once per session)."""
    return build_world_once(request.param, tmp_path_factory, request)


HAL = "application/hal+json"
GEO = "application/vnd.geo+json"


def ok(response: Any, media: str = HAL) -> dict[str, Any]:
    """The JSON body of a 200 answer of ``media``."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(media)
    body: dict[str, Any] = response.json()
    return body


def assert_collection(
    body: dict[str, Any], name: str, *, linked: bool = True
) -> list[dict[str, Any]]:
    """The items of a HAL collection, after checking its frame."""
    assert {"_links", "total", "currentPage", "totalPage", "_embedded"} <= set(body)
    assert {"self", "first", "last"} <= set(body["_links"])
    items: list[dict[str, Any]] = body["_embedded"][name]
    assert body["total"] >= len(items)
    for item in items:
        assert not linked or item["_links"]["self"]["href"].startswith(API)
    return items


def assert_feature(position: dict[str, Any]) -> None:
    """A GeoJSON Feature with a Point in the Paris area."""
    assert position["type"] == "Feature"
    assert position["geometry"]["type"] == "Point"
    lon, lat = position["geometry"]["coordinates"][:2]
    assert 0.5 < lon < 3.0 and 48.5 < lat < 49.6
    parse_time_ms(position["properties"]["createdAt"])


def test_user(world: World) -> None:
    body = ok(world.get("/user"))
    assert body["id"] == "alice"
    assert body["email"] == "alice@example.test"
    assert body["_links"]["vehicles"]["href"] == f"{API}/user/vehicles"


def test_vehicles_lists_only_the_users_own(world: World) -> None:
    items = assert_collection(ok(world.get("/user/vehicles")), "vehicles")
    assert {v["vin"] for v in items} == {VINS[n] for n in ("ev", "crash", "geo", "tm")}
    ev = next(v for v in items if v["vin"] == VINS["ev"])
    assert ev["motorization"] == "Electric"
    assert ev["services"] == ["connected_car"]
    assert ev["_links"]["status"]["href"] == f"{API}{world.user_path('ev')}/status"
    bob = ok(world.get("/user/vehicles", world.token("bob")))
    assert [v["vin"] for v in bob["_embedded"]["vehicles"]] == [VINS["ghost"]]


def test_vehicles_paging(world: World) -> None:
    body = ok(world.get("/user/vehicles", params={"indexRange": "1-", "pageSize": 2}))
    items = assert_collection(body, "vehicles")
    assert len(items) == 2
    assert (body["total"], body["currentPage"], body["totalPage"]) == (4, 1, 2)
    assert "indexRange=3-4" in body["_links"]["next"]["href"]
    assert "indexRange=0-1" in body["_links"]["prev"]["href"]
    last = ok(world.get("/user/vehicles", params={"indexRange": "2-3", "pageSize": 2}))
    assert last["currentPage"] == 2 and "next" not in last["_links"]
    prefix = ok(world.get("/user/vehicles", params={"vinPrefix": "VR3UHZKXZM"}))
    assert [v["vin"] for v in prefix["_embedded"]["vehicles"]] == [VINS["ev"]]


def test_vehicle(world: World) -> None:
    body = ok(world.get(world.user_path("crash")))
    assert body["vin"] == VINS["crash"]
    assert body["id"] == world.ids["crash"]
    assert body["motorization"] == "Thermic"
    assert body["label"] == "308"


def test_status_of_the_electric_car(world: World) -> None:
    body = ok(world.get(world.user_path("ev") + "/status"))
    assert body["_links"]["vehicle"]["href"] == f"{API}{world.user_path('ev')}"
    (energy,) = body["energies"]
    assert energy["type"] == "Electric"
    assert 0 < energy["level"] <= 100
    assert energy["extension"]["electric"]["charging"]["status"] == "Disconnected"
    assert body["privacy"]["state"] == "None"
    assert body["ignition"]["type"] in ("Stop", "Free")
    assert body["odometer"]["mileage"] > 0
    assert_feature(body["lastPosition"])
    assert body["updatedAt"] == "2026-04-18T09:45:00.000Z"


def test_last_position_geojson_by_default_hal_when_asked(world: World) -> None:
    path = world.user_path("ev") + "/lastPosition"
    geo = ok(world.get(path), GEO)
    assert_feature(geo)
    assert geo["geometry"]["coordinates"][0] < 2.0  # on the way to Rouen, west of Paris
    hal = ok(world.get(path, headers={"Accept": HAL}), HAL)
    assert hal["geometry"] == geo["geometry"]


def test_trips_of_the_electric_car(world: World) -> None:
    items = assert_collection(ok(world.get(world.user_path("ev") + "/trips")), "trips")
    assert len(items) == 2
    total = sum(t["distance"] for t in items)
    assert 53 * 0.85 <= total <= 53 * 1.15
    first, second = items
    assert first["startedAt"] == "2026-04-18T09:00:20.000Z"
    assert first["stoppedAt"] == "2026-04-18T09:16:30.000Z"
    assert first["done"] and second["done"]
    assert first["duration"] == 970
    assert_feature(first["startPosition"])
    assert first["_links"]["waypoints"]["href"].endswith(f"/trips/{first['id']}/wayPoints")
    one = ok(world.get(world.user_path("ev") + f"/trips/{second['id']}"))
    assert one["distance"] == second["distance"]


def test_trip_filters(world: World) -> None:
    path = world.user_path("ev") + "/trips"
    long_ones = ok(world.get(path, params={"distance": "25-"}))["_embedded"]["trips"]
    assert len(long_ones) == 1 and long_ones[0]["distance"] > 25
    short = ok(world.get(path, params={"duration": "0-800"}))["_embedded"]["trips"]
    assert [t["duration"] for t in short] == [690]
    after = ok(world.get(path, params={"timestamps": "2026-04-18T09:20:00Z/"}))
    assert after["total"] == 1
    window = ok(world.get(path, params={"timestamps": "2026-04-18T09:00:00Z/PT10M"}))
    assert window["total"] == 1
    nominal = ok(world.get(path, params={"states": "Nominal"}))
    assert nominal["total"] == 2
    lacking = ok(world.get(path, params={"states": "DataLacking"}))
    assert lacking["total"] == 0


def test_trip_waypoints_hal_and_geojson(world: World) -> None:
    trips = ok(world.get(world.user_path("ev") + "/trips"))["_embedded"]["trips"]
    path = world.user_path("ev") + f"/trips/{trips[0]['id']}/wayPoints"
    body = ok(world.get(path, params={"pageSize": 100}))
    points = assert_collection(body, "positions", linked=False)
    assert body["total"] > 100 and len(points) == 100
    for p in points:
        assert_feature(p)
    geo = ok(world.get(path, params={"pageSize": 5}, headers={"Accept": GEO}), GEO)
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 5
    simple = ok(world.get(path, params={"tolerance": 1.0, "pageSize": 2000}))
    assert 2 <= simple["total"] < body["total"]


def test_trip_telemetry(world: World) -> None:
    trips = ok(world.get(world.user_path("ev") + "/trips"))["_embedded"]["trips"]
    path = world.user_path("ev") + f"/trips/{trips[1]['id']}/telemetry"
    body = ok(world.get(path, params={"type": "vehicle.energies", "pageSize": 10}))
    items = assert_collection(body, "telemetries")
    assert items and all("energies" in t["vehicle"] for t in items)
    start, stop = (parse_time_ms(trips[1][k]) for k in ("startedAt", "stoppedAt"))
    assert all(start <= parse_time_ms(t["createdAt"]) <= stop for t in items)


def test_telemetry_filters(world: World) -> None:
    path = world.user_path("ev") + "/telemetry"
    body = ok(
        world.get(
            path,
            params={
                "type": ["vehicle.battery", "privacy"],
                "timestamps": "2026-04-18T09:10:00Z/2026-04-18T09:11:00Z",
                "extension": "location",
                "pageSize": 2000,
            },
        )
    )
    items = assert_collection(body, "telemetries")
    assert items
    low, high = parse_time_ms("2026-04-18T09:10:00Z"), parse_time_ms("2026-04-18T09:11:00Z")
    for item in items:
        assert low <= parse_time_ms(item["createdAt"]) <= high
        assert set(item) <= {"_links", "createdAt", "privacy", "vehicle", "_embedded"}


def test_crash_collision_with_position_and_time(world: World) -> None:
    path = world.user_path("crash") + "/collisions"
    (collision,) = assert_collection(ok(world.get(path)), "Collisions")
    assert collision["createdAt"] == "2026-06-20T14:05:30.000Z"  # the scenario's 5m30s
    assert_feature(collision["position"])
    assert collision["position"]["geometry"]["coordinates"][1] > 48.8
    one = ok(world.get(f"{path}/{collision['id']}"))
    assert one["id"] == collision["id"]
    trips = ok(world.get(world.user_path("crash") + "/trips"))["_embedded"]["trips"]
    (trip,) = trips
    tpath = world.user_path("crash") + f"/trips/{trip['id']}/collisions"
    (in_trip,) = ok(world.get(tpath))["_embedded"]["Collisions"]
    assert in_trip["id"] == collision["id"]
    assert in_trip["_links"]["trip"]["href"].endswith(trip["id"])
    assert ok(world.get(f"{tpath}/{collision['id']}"))["id"] == collision["id"]


def test_crash_alert(world: World) -> None:
    path = world.user_path("crash") + "/alerts"
    (alert,) = assert_collection(ok(world.get(path)), "alerts")
    assert alert["startedAt"] == "2026-06-20T14:05:40.000Z"  # the scenario's 5m40s
    assert alert["active"] is True
    assert_feature(alert["startPosition"])
    assert ok(world.get(f"{path}/{alert['id']}"))["type"] == alert["type"]
    trip = ok(world.get(world.user_path("crash") + "/trips"))["_embedded"]["trips"][0]
    tpath = world.user_path("crash") + f"/trips/{trip['id']}/alerts"
    (in_trip,) = ok(world.get(tpath))["_embedded"]["alerts"]
    assert in_trip["id"] == alert["id"]
    assert ok(world.get(f"{tpath}/{alert['id']}"))["id"] == alert["id"]
    none = ok(world.get(path, params={"timestamps": "/2026-06-20T14:00:00Z"}))
    assert none["total"] == 0


def test_maintenance(world: World) -> None:
    body = ok(world.get(world.user_path("ev") + "/maintenance"))
    assert isinstance(body["daysBeforeMaintenance"], int)
    assert body["mileageBeforeMaintenance"] > 0
    tm = ok(world.get(world.user_path("tm") + "/maintenance"))
    assert tm["_links"]["self"]["href"].endswith("/maintenance")


def test_alarms(world: World) -> None:
    path = world.user_path("ev") + "/alarms"
    items = assert_collection(ok(world.get(path)), "alarms")
    assert items
    for item in items:
        assert ("status" in item) != ("trigger" in item)
        assert ok(world.get(f"{path}/{item['id']}"))["id"] == item["id"]
    statuses = ok(world.get(path, params={"type": "vehicle.alarm.status"}))["_embedded"]
    assert all("status" in a for a in statuses["alarms"])


def test_unknown_items_are_404_detail_2(world: World) -> None:
    base = world.user_path("ev")
    for tail in (
        "/trips/nope",
        "/trips/nope/wayPoints",
        "/trips/nope/telemetry",
        "/trips/nope/alerts",
        "/trips/nope/collisions",
        "/alerts/nope",
        "/collisions/nope",
        "/alarms/nope",
    ):
        response = world.get(base + tail)
        assert response.status_code == 404, tail
        assert response.json()["code"] == 40402, tail
    nothing = world.get(world.user_path("ghost") + "/status", world.token("bob"))
    assert nothing.status_code == 404 and nothing.json()["code"] == 40402


def test_bad_query_parameters_are_400_detail_1(world: World) -> None:
    path = world.user_path("ev") + "/trips"
    for params in (
        {"indexRange": "9-1"},
        {"indexRange": "x"},
        {"pageSize": "0"},
        {"pageSize": "61"},
        {"timestamps": "yesterday/"},
        {"timestamps": "R5/2026-04-18T09:00:00Z/PT1H"},
        {"distance": "5-1"},
        {"states": "Broken"},
    ):
        response = world.get(path, params=params)
        assert response.status_code == 400, params
        body = response.json()
        assert body["code"] == 40001, params
        assert set(body) == {"code", "uuid", "message", "timestamp"}
    bad_type = world.get(world.user_path("ev") + "/telemetry", params={"type": "vehicle.nope"})
    assert bad_type.status_code == 400
