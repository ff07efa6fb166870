"""The Web API's derived views, against simulated drives and against stores filled by hand."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from can_dbc.catalog import Scope, default_catalog
from firmware_sim.payload import Privacy, Series, Trigger, Uplink, encode_uplink, quantize
from firmware_sim.scenario.model import load_scenario
from firmware_sim.scenario.record import RunRecord
from firmware_sim.scenario.runner import run_scenario
from gateway import derive
from gateway.derive import DeriveError
from gateway.store import SqliteStore, Store, open_store, rfc3339

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
DATA = Path(__file__).resolve().parent / "data" / "derive"
CATALOG = default_catalog()
ALL = frozenset(Scope)
NONE = Privacy.NONE
VIN = "VF3ABCDEF12345678"
VINS = (VIN, "VR1XYZ00000000042")
BASE = 1_795_000_000_000  # 2026-11-18
SPEED = "Vehicle.Speed"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
FUEL = "Vehicle.Powertrain.FuelSystem.RelativeLevel"


# -- simulated drives -------------------------------------------------------------------------


@dataclass
class Drive:
    """A scenario run: its truth and the gateway's store."""

    record: RunRecord
    store: SqliteStore

    @property
    def vin(self) -> str:
        return self.record.vin

    def at(self, offset_s: float) -> int:
        """The absolute time ``offset_s`` after the scenario's start."""
        return self.record.start_ms + round(offset_s * 1000)

    def truth(self, name: str, t_ms: int) -> float:
        """The simulated car's value of a signal at a time (the last second before)."""
        return max((p for p in self.record.series[name] if p[0] <= t_ms), key=lambda p: p[0])[1]

    def truth_km(self, start_ms: int, stop_ms: int) -> float:
        """The distance the simulated car drove between two times."""
        speeds = self.record.series[SPEED]
        return sum(
            (t1 - t0) / 3_600_000 * v0
            for (t0, v0), (t1, _v) in itertools.pairwise(speeds)
            if start_ms <= t0 < stop_ms
        )

    def truth_position(self, t_ms: int) -> tuple[float, float]:
        """Where the simulated car was (latitude, longitude)."""
        _t, lat, lon = max((p for p in self.record.route if p[0] <= t_ms), key=lambda p: p[0])
        return lat, lon


def _run(path: Path, tmp: Path) -> Iterator[Drive]:
    record = run_scenario(load_scenario(path), data_dir=tmp)
    assert record.passed, [e for e in record.expectations if not e.passed]
    store = SqliteStore(tmp / "gateway.sqlite3", read_only=True)
    try:
        yield Drive(record, store)
    finally:
        store.close()


@pytest.fixture(scope="module")
def ev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drive]:
    """Two motorway trips with a fast charge between them; the car starts locked."""
    yield from _run(SCENARIOS / "ev_highway_charging_2021.yaml", tmp_path_factory.mktemp("ev"))


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drive]:
    """A crash at 80 km/h, then an engine fault."""
    yield from _run(SCENARIOS / "crash.yaml", tmp_path_factory.mktemp("crash"))


@pytest.fixture(scope="module")
def diesel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drive]:
    """A commute with a power cut of the box on the way."""
    path = SCENARIOS / "city_commute_diesel_2017.yaml"
    yield from _run(path, tmp_path_factory.mktemp("diesel"))


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drive]:
    """Alerts, two break-ins, location sharing off at the end."""
    yield from _run(DATA / "alerts_alarm.yaml", tmp_path_factory.mktemp("events"))


def _positions(document: Any) -> list[Any]:
    """Every GeoJSON position anywhere in a JSON document."""
    found = []
    if isinstance(document, dict):
        if "geometry" in document or "coordinates" in document:
            found.append(document)
        for value in document.values():
            found.extend(_positions(value))
    elif isinstance(document, list):
        for value in document:
            found.extend(_positions(value))
    return found


def _near(feature: dict[str, Any], lat_lon: tuple[float, float], tolerance: float = 1e-3) -> bool:
    lon, lat = feature["geometry"]["coordinates"][:2]
    return bool(abs(lat - lat_lon[0]) <= tolerance and abs(lon - lat_lon[1]) <= tolerance)


def test_ev_trips_match_the_drive(ev: Drive) -> None:
    trips = derive.trips(ev.store, ev.vin, ALL, NONE)
    assert [(t.start_ms, t.stop_ms) for t in trips] == [
        (ev.at(20), ev.at(16 * 60 + 30)),
        (ev.at(33 * 60), ev.at(44 * 60 + 30)),
    ]
    for t in trips:
        body = t.body
        assert t.stop_ms is not None
        assert body["id"] == t.id
        assert body["startedAt"] == rfc3339(t.start_ms)
        assert body["stoppedAt"] == rfc3339(t.stop_ms)
        assert body["done"] is True
        assert body["duration"] == (t.stop_ms - t.start_ms) // 1000
        truth = ev.truth_km(t.start_ms, t.stop_ms)
        assert body["distance"] == pytest.approx(truth, abs=max(1.5, truth * 0.05))
        (start,) = body["startEnergies"]
        (end,) = body["endEnergies"]
        assert start["type"] == end["type"] == "Electric"
        assert start["level"] == pytest.approx(ev.truth(SOC, t.start_ms), abs=0.2)
        assert end["level"] == pytest.approx(ev.truth(SOC, t.stop_ms), abs=0.2)
        assert end["level"] < start["level"]
        assert body["kinetic"]["maxSpeed"] == pytest.approx(
            max(v for s, v in ev.record.series[SPEED] if t.start_ms <= s <= t.stop_ms), abs=0.5
        )
        assert _near(body["startPosition"], ev.truth_position(t.start_ms))
        assert _near(body["stopPosition"], ev.truth_position(t.stop_ms))
        assert "faults" not in body or body["faults"] == [
            {"fault": "DataLacking", "cause": "Connection"}
        ]
    # Stable ids: another call, another store object, the same ids.
    again = derive.trips(ev.store, ev.vin, ALL, NONE)
    assert [t.id for t in again] == [t.id for t in trips]
    assert len({t.id for t in trips}) == 2
    assert derive.trip(ev.store, ev.vin, trips[1].id, ALL, NONE) == trips[1]
    assert derive.trip(ev.store, ev.vin, "nope", ALL, NONE) is None


def test_ev_trip_consumption_with_a_known_battery(ev: Drive) -> None:
    first = derive.trips(ev.store, ev.vin, ALL, NONE, capacities={"Electric": 50.0})[0].body
    (used,) = first["energyConsumptions"]
    levels = first["startEnergies"][0]["level"] - first["endEnergies"][0]["level"]
    assert used["type"] == "Electric"
    assert used["consumption"] == pytest.approx(levels / 100 * 50.0, abs=0.01)
    assert used["avgConsumption"] > 0
    with pytest.raises(DeriveError, match="Diesel"):
        derive.trips(ev.store, ev.vin, ALL, NONE, capacities={"Diesel": 50.0})


def test_ev_waypoints_follow_the_route(ev: Drive) -> None:
    first = derive.trips(ev.store, ev.vin, ALL, NONE)[0]
    assert first.stop_ms is not None
    points = derive.trip_waypoints(ev.store, ev.vin, first.id, ALL, NONE)
    assert points is not None
    seconds = (first.stop_ms - first.start_ms) / 1000
    assert seconds * 0.9 <= len(points) <= seconds + 1
    times = [p["properties"]["createdAt"] for p in points]
    assert times == sorted(times)
    for point in points[::60]:
        t = next(
            t
            for t in range(first.start_ms, first.stop_ms + 1, 1000)
            if rfc3339(t) == point["properties"]["createdAt"]
        )
        assert _near(point, ev.truth_position(t))
    fewer = derive.trip_waypoints(ev.store, ev.vin, first.id, ALL, NONE, tolerance_km=0.05)
    assert fewer is not None
    assert 2 <= len(fewer) < len(points) / 5
    assert fewer[0] == points[0]
    assert fewer[-1] == points[-1]
    assert derive.trip_waypoints(ev.store, ev.vin, "nope", ALL, NONE) is None
    assert derive.trip_waypoints(ev.store, ev.vin, first.id, ALL - {Scope.POSITION}, NONE) == []
    with pytest.raises(DeriveError):
        derive.trip_waypoints(ev.store, ev.vin, first.id, ALL, NONE, tolerance_km=-1)


def test_ev_charging_shows_in_telemetry_and_status(ev: Drive) -> None:
    entries = derive.telemetry(
        ev.store, ev.vin, ALL, NONE, types=["vehicle.energies"], start_ms=ev.at(17 * 60)
    )
    charging = [
        e["vehicle"]["energies"][0]["extension"]["electric"]["charging"]
        for e in entries
        if "extension" in e["vehicle"]["energies"][0]
    ]
    assert any(c.get("status") == "InProgress" for c in charging)
    assert {c.get("chargingMode") for c in charging} == {"No", "Quick", None}
    assert all(
        c["chargingMode"] == "Quick"
        for c in charging
        if c.get("chargingRate", 0) > 0 and c.get("status", "InProgress") == "InProgress"
    )
    assert any(c.get("plugged") is True for c in charging)
    remaining = [c["remainingTime"] for c in charging if c.get("remainingTime", "PT0S") != "PT0S"]
    assert remaining
    assert all(r.startswith("PT") and r.endswith("M") for r in remaining)
    assert all(set(e) <= {"createdAt", "vehicle"} for e in entries)
    assert all(set(e["vehicle"]) == {"energies"} for e in entries)
    status = derive.status(ev.store, ev.vin, ALL, NONE)
    assert status is not None
    (electric,) = status["energies"]
    assert electric["type"] == "Electric"
    assert electric["level"] == pytest.approx(ev.record.series[SOC][-1][1], abs=0.2)
    assert electric["extension"]["electric"]["charging"]["status"] == "Disconnected"
    assert electric["extension"]["electric"]["charging"]["chargingMode"] == "No"
    assert status["ignition"]["type"] == "Stop"
    assert status["kinetic"]["moving"] is False
    assert status["privacy"]["state"] == "None"
    assert _near(status["lastPosition"], ev.truth_position(ev.record.end_ms))
    part_times = [
        status[k]["createdAt"] for k in ("ignition", "battery", "kinetic", "odometer", "privacy")
    ]
    assert status["createdAt"] == status["updatedAt"] == max([*part_times, electric["createdAt"]])


def test_ev_opening_the_locked_car_is_a_break_in(ev: Drive) -> None:
    found = derive.alarms(ev.store, ev.vin, ALL, NONE)
    triggers = [a["trigger"] for a in found if "trigger" in a]
    assert [(t["type"], t["startAt"]) for t in triggers] == [
        ("FrontLeftDoorBreakIn", rfc3339(ev.at(10)))
    ]
    assert _near(triggers[0]["position"], ev.truth_position(ev.at(10)))
    assert [a["status"]["activation"] for a in found if "status" in a] == ["Active"]
    only = derive.alarms(ev.store, ev.vin, ALL, NONE, types=["vehicle.alarm.trigger"])
    assert [a["id"] for a in only] == [a["id"] for a in found if "trigger" in a]
    with pytest.raises(DeriveError, match="unknown alarm type"):
        derive.alarms(ev.store, ev.vin, ALL, NONE, types=["vehicle.alarm"])
    assert "position" not in derive.alarms(ev.store, ev.vin, ALL, Privacy.GEOLOCATION)[1]["trigger"]
    assert derive.alarms(ev.store, ev.vin, ALL - {Scope.TELEMETRY}, NONE) == []


def test_crash_collision(crash: Drive) -> None:
    (collision,) = derive.collisions(crash.store, crash.vin, ALL, NONE)
    at = crash.at(5 * 60 + 30)
    assert collision["createdAt"] == rfc3339(at)
    assert collision["kinetic"]["speed"] == pytest.approx(crash.truth(SPEED, at - 1), abs=0.5)
    assert collision["kinetic"]["speed"] > 70
    assert _near(collision["position"], crash.truth_position(at))
    (trip,) = derive.trips(crash.store, crash.vin, ALL, NONE)
    assert derive.trip_collisions(crash.store, crash.vin, trip.id, ALL, NONE) == [collision]
    assert (
        derive.trip_collisions(crash.store, crash.vin, trip.id, ALL - {Scope.COLLISION}, NONE) == []
    )
    assert derive.collisions(crash.store, crash.vin, ALL - {Scope.COLLISION}, NONE) == []
    hidden = derive.collisions(crash.store, crash.vin, ALL, Privacy.GEOLOCATION)
    assert [c["id"] for c in hidden] == [collision["id"]]
    assert "position" not in hidden[0]
    status = derive.status(crash.store, crash.vin, ALL, NONE)
    assert status is not None
    assert status["safety"]["autoECallTriggering"] == "Detected"
    (alert,) = derive.alerts(crash.store, crash.vin, ALL, NONE)
    assert (alert["type"], alert["active"]) == ("EngineFault", True)
    assert alert["startedAt"] == rfc3339(crash.at(5 * 60 + 40))
    assert derive.trip_alerts(crash.store, crash.vin, trip.id, ALL, NONE) == [alert]


def test_diesel_trip_lacks_data_during_the_power_cut(diesel: Drive) -> None:
    (trip,) = derive.trips(diesel.store, diesel.vin, ALL, NONE)
    assert (trip.start_ms, trip.stop_ms) == (diesel.at(40), diesel.at(17 * 60))
    assert trip.body["faults"] == [{"fault": "DataLacking", "cause": "Connection"}]
    truth = diesel.truth_km(trip.start_ms, diesel.at(17 * 60))
    assert trip.body["distance"] == pytest.approx(truth, abs=max(1.5, truth * 0.08))
    (fuel,) = trip.body["startEnergies"]
    assert fuel["type"] == "Fuel"
    assert fuel["level"] == pytest.approx(diesel.truth(FUEL, trip.start_ms), abs=1)
    assert fuel["autonomy"] > 0
    assert trip.body["startMileage"] > 0


def test_diesel_status_alarm_and_maintenance(diesel: Drive) -> None:
    status = derive.status(diesel.store, diesel.vin, ALL, NONE)
    assert status is not None
    assert status["doorsState"]["lockedStates"] == ["Locked"]
    assert status["doorsState"]["createdAt"] == rfc3339(diesel.at(17 * 60 + 30))
    assert {o["state"] for o in status["doorsState"]["opening"]} == {"Closed"}
    assert status["engines"][0]["extension"]["thermic"]["coolant"]["temp"] > 20
    assert status["alarm"]["status"]["activation"] == "Active"
    found = derive.alarms(diesel.store, diesel.vin, ALL, NONE)
    assert [(a["status"]["activation"], a["status"]["createdAt"]) for a in found] == [
        ("Active", rfc3339(diesel.at(0))),
        ("Inactive", rfc3339(diesel.at(20))),
        ("Active", rfc3339(diesel.at(17 * 60 + 30))),
    ]
    service = derive.maintenance(diesel.store, diesel.vin, ALL, NONE)
    assert service is not None
    state = diesel.store.last_state(diesel.vin)
    assert service["daysBeforeMaintenance"] == state[31][1]
    assert service["mileageBeforeMaintenance"] == state[32][1]
    assert service["createdAt"] < service["updatedAt"] == rfc3339(max(state[31][0], state[32][0]))
    assert derive.maintenance(diesel.store, diesel.vin, ALL - {Scope.MAINTENANCE}, NONE) is None


def test_diesel_telemetry_shapes_types_and_bounds(diesel: Drive) -> None:
    (trip,) = derive.trips(diesel.store, diesel.vin, ALL, NONE)
    within = derive.trip_telemetry(diesel.store, diesel.vin, trip.id, ALL, NONE)
    assert within is not None
    assert within[0]["createdAt"] == rfc3339(trip.start_ms)
    assert within[-1]["createdAt"] == trip.body["stoppedAt"]
    assert within[0]["vehicle"]["ignition"]["type"] == "Start"  # cranking, then On
    ignitions = [e["vehicle"]["ignition"]["type"] for e in within if "ignition" in e["vehicle"]]
    assert ignitions[:2] == ["Start", "StartUp"]
    assert within[-1]["vehicle"]["ignition"]["type"] == "Stop"
    everything = derive.telemetry(diesel.store, diesel.vin, ALL, NONE)
    assert len(everything) > len(within)
    assert [e["createdAt"] for e in everything] == sorted(e["createdAt"] for e in everything)
    doors = derive.telemetry(diesel.store, diesel.vin, ALL, NONE, types=["vehicle.doorsState"])
    assert all(set(e["vehicle"]) == {"doorsState"} for e in doors)
    assert (
        sum(
            1
            for e in doors
            for o in e["vehicle"]["doorsState"].get("opening", [])
            if o == {"identifier": "Driver", "state": "Open"}
        )
        == 2
    )
    air = derive.telemetry(diesel.store, diesel.vin, ALL, NONE, types=["environment"])
    assert air
    assert all(set(e) == {"createdAt", "environment"} for e in air)
    located = derive.telemetry(
        diesel.store, diesel.vin, ALL, NONE, types=["vehicle"], extensions=["location"]
    )
    assert all("privacy" not in e and "environment" not in e for e in located)
    with_fix = [e for e in located if "_embedded" in e]
    assert len(with_fix) > len(located) / 2
    for e in with_fix[::100]:
        fix = e["_embedded"]["extension"]["location"]
        assert fix["properties"]["createdAt"] <= e["createdAt"]
    hidden = derive.telemetry(
        diesel.store, diesel.vin, ALL - {Scope.POSITION}, NONE, extensions=["location"]
    )
    assert not _positions(hidden)
    with pytest.raises(DeriveError, match="unknown telemetry type"):
        derive.telemetry(diesel.store, diesel.vin, ALL, NONE, types=["vehicle.kinetic"])
    with pytest.raises(DeriveError, match="unknown telemetry extension"):
        derive.telemetry(diesel.store, diesel.vin, ALL, NONE, extensions=["odometer"])
    assert derive.telemetry(diesel.store, diesel.vin, ALL - {Scope.TELEMETRY}, NONE) == []
    assert derive.trip_telemetry(diesel.store, diesel.vin, "nope", ALL, NONE) is None


def test_alerts_break_ins_and_privacy(events: Drive) -> None:
    store, vin = events.store, events.vin
    assert derive.current_privacy(store, vin) is Privacy.GEOLOCATION
    assert derive.privacy_state(store, vin) == (Privacy.GEOLOCATION, events.at(5 * 60 + 30))
    oil, tire = derive.alerts(store, vin, ALL, NONE)
    assert (oil["type"], oil["severity"], oil["active"]) == (
        "EngineOilPressureFailure",
        "Critical",
        False,
    )
    assert (oil["startedAt"], oil["endAt"]) == (rfc3339(events.at(60)), rfc3339(events.at(120)))
    assert (tire["type"], tire["active"], "endAt" in tire) == (
        "TireUnderInflationDetectionSystemFault",
        True,
        False,
    )
    assert tire["startedAt"] == rfc3339(events.at(90))
    assert _near(oil["startPosition"], events.truth_position(events.at(60)))
    assert _near(oil["endPosition"], events.truth_position(events.at(120)))
    withheld = derive.alerts(store, vin, ALL, Privacy.GEOLOCATION)
    assert [a["id"] for a in withheld] == [oil["id"], tire["id"]]
    assert not _positions(withheld)
    assert derive.alerts(store, vin, ALL, Privacy.FULL) == []
    assert derive.alerts(store, vin, ALL - {Scope.ALERT}, NONE) == []
    (trip,) = derive.trips(store, vin, ALL, NONE)
    assert derive.trip_alerts(store, vin, trip.id, ALL, NONE) == [oil, tire]
    assert derive.trip_alerts(store, vin, "nope", ALL, NONE) is None
    triggers = [a["trigger"] for a in derive.alarms(store, vin, ALL, NONE) if "trigger" in a]
    assert [(t["type"], t["startAt"]) for t in triggers] == [
        ("TrunkDoorBreakIn", rfc3339(events.at(10))),
        ("FrontRightDoorBreakIn", rfc3339(events.at(4 * 60 + 50))),
    ]


def test_geolocation_now_withholds_every_position(events: Drive) -> None:
    store, vin = events.store, events.vin
    privacy = derive.current_privacy(store, vin)
    status = derive.status(store, vin, ALL, privacy)
    assert status is not None
    assert status["privacy"] == {"createdAt": rfc3339(events.at(330)), "state": "Geolocation"}
    assert "lastPosition" not in status
    assert derive.last_position(store, vin, ALL, privacy) is None
    trips = derive.trips(store, vin, ALL, privacy)
    (trip,) = trips
    views: list[Any] = [
        status,
        [t.body for t in trips],
        derive.alerts(store, vin, ALL, privacy),
        derive.collisions(store, vin, ALL, privacy),
        derive.alarms(store, vin, ALL, privacy),
        derive.telemetry(store, vin, ALL, privacy, extensions=["location", "maintenance"]),
        derive.trip_waypoints(store, vin, trip.id, ALL, privacy),
    ]
    assert not _positions(views)
    assert derive.trip_waypoints(store, vin, trip.id, ALL, privacy) == []
    # With sharing on, the same store shows them.
    assert derive.last_position(store, vin, ALL, NONE) is not None
    assert "startPosition" in derive.trips(store, vin, ALL, NONE)[0].body


def test_full_privacy_leaves_only_the_privacy_part(events: Drive) -> None:
    store, vin = events.store, events.vin
    status = derive.status(store, vin, ALL, Privacy.FULL)
    assert status is not None
    assert set(status) == {"createdAt", "updatedAt", "privacy"}
    assert status["privacy"]["state"] == "Full"
    assert derive.trips(store, vin, ALL, Privacy.FULL) == []
    assert derive.telemetry(store, vin, ALL, Privacy.FULL) == []
    assert derive.alarms(store, vin, ALL, Privacy.FULL) == []
    assert derive.maintenance(store, vin, ALL, Privacy.FULL) is None
    assert derive.collisions(store, vin, ALL, Privacy.FULL) == []


# -- stores filled by hand -------------------------------------------------------------------


def payload(
    samples: Mapping[int, Sequence[tuple[int, float]]],
    *,
    seq: int = 0,
    privacy: Privacy = NONE,
    base: int = BASE,
    vin: str = VIN,
) -> bytes:
    """An uplink of ``{signal id: [(ms after base, value), ...]}``."""
    series = []
    for sid in sorted(samples):
        exp = CATALOG.by_id(sid).exp
        points = sorted(samples[sid])
        series.append(
            Series(
                sid,
                exp,
                tuple(t for t, _v in points),
                tuple(quantize(v, exp) for _t, v in points),
            )
        )
    return encode_uplink(Uplink(vin, seq, base, Trigger.PERIODIC, privacy, tuple(series)))


def filled(*payloads: bytes, vin: str = VIN) -> Store:
    """A fresh in-memory store holding these payloads (each must be accepted)."""
    store = open_store("sqlite://")
    for raw in payloads:
        result = store.ingest(vin, raw, BASE)
        assert result.ok, result
    return store


def test_iso_durations() -> None:
    assert derive.iso_duration(0) == "PT0S"
    assert derive.iso_duration(-5) == "PT0S"
    assert derive.iso_duration(65 * 60) == "PT1H5M"
    assert derive.iso_duration(2 * 86_400 + 3 * 3600) == "P2DT3H"
    assert derive.iso_duration(86_400) == "P1D"
    assert derive.iso_duration(59.6) == "PT1M"


def test_visible_scopes() -> None:
    assert derive.visible_scopes(ALL, NONE) == ALL
    assert derive.visible_scopes(ALL, Privacy.GEOLOCATION) == ALL - {Scope.POSITION}
    assert derive.visible_scopes(ALL, Privacy.FULL) == frozenset()


def test_privacy_from_headers_and_signal_46() -> None:
    assert derive.privacy_state(open_store("sqlite://"), VIN) == (NONE, None)
    store = filled(
        payload({1: [(0, 10)]}, seq=0),
        payload({1: [(0, 10), (4000, 12)]}, seq=1, base=BASE + 1000, privacy=Privacy.GEOLOCATION),
    )
    assert derive.privacy_state(store, VIN) == (Privacy.GEOLOCATION, BASE + 5000)
    store.ingest(VIN, payload({46: [(0, 0)]}, seq=2, base=BASE + 9000), BASE)
    assert derive.privacy_state(store, VIN) == (NONE, BASE + 9000)
    store.ingest(VIN, payload({46: [(0, 7)]}, seq=3, base=BASE + 10_000), BASE)
    assert derive.current_privacy(store, VIN) is Privacy.FULL  # names no setting: the strictest


def test_status_parts_scopes_and_times() -> None:
    store = filled(
        payload(
            {
                1: [(0, 0), (1000, 42.5)],
                4: [(1000, 1.25)],
                5: [(0, 2)],
                11: [(0, 2)],
                6: [(0, 1)],
                10: [(0, 0)],
                13: [(2000, 12.4)],
                16: [(0, -1)],
                21: [(0, 55)],
                23: [(3000, 480)],
                30: [(0, 1)],
                40: [(1000, 48.85)],
                41: [(1000, 2.35)],
                42: [(1000, 35)],
                43: [(1000, 90)],
                44: [(1000, 7)],
            }
        )
    )
    assert derive.status(store, "VR1XYZ00000000042", ALL, NONE) is None
    status = derive.status(store, VIN, ALL, NONE)
    assert status is not None
    t = rfc3339
    assert status["ignition"] == {"createdAt": t(BASE), "type": "StartUp"}
    assert status["kinetic"] == {
        "createdAt": t(BASE + 1000),
        "acceleration": 1.25,
        "speed": 42.5,
        "moving": True,
    }
    assert status["doorsState"] == {
        "createdAt": t(BASE),
        "lockedStates": ["SuperLocked"],
        "opening": [
            {"identifier": "Driver", "state": "Open"},
            {"identifier": "Trunk", "state": "Closed"},
        ],
    }
    assert status["energies"] == [
        {
            "createdAt": t(BASE + 3000),
            "type": "Fuel",
            "subType": "FossilEnergy",
            "level": 55.0,
            "autonomy": 480,
        }
    ]
    assert status["battery"] == {"createdAt": t(BASE + 2000), "voltage": 12.4}
    assert status["preconditioning"] == {
        "airConditioning": {"createdAt": t(BASE), "status": "Enabled"}
    }
    assert status["lastPosition"] == {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [2.35, 48.85, 35]},
        "properties": {
            "createdAt": t(BASE + 1000),
            "heading": 90,
            "signalQuality": 7,
            "type": "Acquire",
            "fixStatus": "3D",
        },
    }
    assert status["alarm"]["status"]["activation"] == "Active"
    assert status["privacy"] == {"createdAt": t(BASE), "state": "None"}
    assert status["createdAt"] == status["updatedAt"] == t(BASE + 3000)
    assert derive.last_position(store, VIN, ALL, NONE) == status["lastPosition"]
    only_position = derive.status(store, VIN, {Scope.POSITION}, NONE)
    assert only_position is not None
    assert set(only_position) == {"createdAt", "updatedAt", "lastPosition", "privacy"}
    no_position = derive.status(store, VIN, {Scope.TELEMETRY}, NONE)
    assert no_position is not None
    assert "lastPosition" not in no_position
    assert "ignition" in no_position
    assert derive.last_position(store, VIN, {Scope.TELEMETRY}, NONE) is None


@pytest.mark.parametrize(
    ("signals", "expected"),
    [
        # a battery car: the range is the battery's
        ({22: [(0, 80.5)], 23: [(0, 250)]}, [("Electric", 80.5, 250)]),
        # a fuel car: the range is the tank's
        ({21: [(0, 40)], 23: [(0, 500)]}, [("Fuel", 40.0, 500)]),
        # a hybrid: the range is the sum of both, so neither gets it
        (
            {21: [(0, 40)], 22: [(0, 60)], 23: [(0, 600)]},
            [("Fuel", 40.0, None), ("Electric", 60.0, None)],
        ),
    ],
)
def test_energies_and_their_autonomy(
    signals: dict[int, list[tuple[int, float]]], expected: list[tuple[str, float, int | None]]
) -> None:
    status = derive.status(filled(payload(signals)), VIN, ALL, NONE)
    assert status is not None
    assert [(e["type"], e["level"], e.get("autonomy")) for e in status["energies"]] == expected


@pytest.mark.parametrize(
    ("state", "rate", "mode"),
    [(1, 312, "Quick"), (1, 46, "Slow"), (1, 0, None), (3, 0, "No"), (4, 0, "No"), (0, 0, "No")],
)
def test_charging_mode(state: int, rate: int, mode: str | None) -> None:
    store = filled(
        payload({22: [(0, 50)], 24: [(0, state)], 25: [(0, 1)], 26: [(0, 65)], 27: [(0, rate)]})
    )
    status = derive.status(store, VIN, ALL, NONE)
    assert status is not None
    charging = status["energies"][0]["extension"]["electric"]["charging"]
    assert charging.pop("chargingMode", None) == mode
    assert charging == {
        "plugged": True,
        "status": ["Disconnected", "InProgress", "Failure", "Stopped", "Finished"][state],
        "remainingTime": "PT1H5M",
        "chargingRate": rate,
    }


def test_trips_running_unstarted_and_by_odometer() -> None:
    speeds = [(t * 1000, 36.0) for t in range(0, 101)]
    store = filled(
        payload(
            {
                5: [(0, 3), (2000, 2), (100_000, 0), (200_000, 2)],
                1: speeds,
                3: [(0, 1000.0), (150_000, 1001.5)],
            }
        )
    )
    first, running = derive.trips(store, VIN, ALL, NONE)
    assert first.body["faults"] == [{"fault": "Unstarted", "cause": "Connection"}]
    assert first.body["distance"] == 1.5  # the odometer brackets the trip
    assert first.body["duration"] == 100
    assert first.body["startMileage"] == 1000.0
    assert first.body["kinetic"] == {"avgSpeed": 54.0, "maxSpeed": 36.0}
    assert running.stop_ms is None
    assert running.end_ms == float("inf")
    assert running.body["done"] is False
    assert "stoppedAt" not in running.body
    assert "faults" not in running.body
    other = derive.trips(
        filled(payload({5: [(0, 3), (2000, 2)]}, vin=VINS[1]), vin=VINS[1]), VINS[1], ALL, NONE
    )
    assert other[0].start_ms == first.start_ms
    assert other[0].id != first.id
    assert derive.trips(store, VIN, ALL - {Scope.TRIP}, NONE) == []


def test_trip_distance_from_speed_skips_gaps_and_notes_privacy() -> None:
    store = filled(
        payload({5: [(0, 0), (1000, 2)], 1: [(t * 1000, 72.0) for t in range(1, 12)]}, seq=0),
        payload(
            {5: [(60_000, 0)], 1: [(t * 1000, 72.0) for t in range(50, 61)]},
            seq=1,
            privacy=Privacy.GEOLOCATION,
        ),
    )
    (trip,) = derive.trips(store, VIN, ALL, NONE)
    assert trip.body["distance"] == pytest.approx(0.4)  # 20 s at 72 km/h; the gap is unknown
    assert trip.body["faults"] == [
        {"fault": "DataLacking", "cause": "Connection"},
        {"fault": "DataLacking", "cause": "GeoPrivacy"},
    ]


def test_alert_edges_and_ids() -> None:
    store = filled(
        payload({38: [(0, 0), (1000, 1), (2000, 1), (3000, 0), (4000, 1)], 39: [(0, 1)]})
    )
    found = derive.alerts(store, VIN, ALL, NONE)
    assert [(a["type"], a["startedAt"], a.get("endAt"), a["active"]) for a in found] == [
        ("TireUnderInflationDetectionSystemFault", rfc3339(BASE), None, True),
        ("FuelLevelLow", rfc3339(BASE + 1000), rfc3339(BASE + 3000), False),
        ("FuelLevelLow", rfc3339(BASE + 4000), None, True),
    ]
    assert len({a["id"] for a in found}) == 3
    assert [a["id"] for a in derive.alerts(store, VIN, ALL, NONE)] == [a["id"] for a in found]
    assert {a["id"] for a in found}.isdisjoint(
        a["id"]
        for a in derive.alerts(
            filled(payload({38: [(0, 0), (1000, 1)]}, vin=VINS[1]), vin=VINS[1]), VINS[1], ALL, NONE
        )
    )


def test_alarm_needs_the_lock_before_the_opening() -> None:
    store = filled(
        payload(
            {
                11: [(0, 0), (5000, 1), (20_000, 0)],
                7: [(0, 0), (1000, 1), (2000, 0), (6000, 1), (7000, 0), (30_000, 1)],
                9: [(10_000, 1)],  # a first sample that is open counts as an opening
            }
        )
    )
    found = derive.alarms(store, VIN, ALL, NONE)
    assert [(k, a[k]) for a in found for k in a if k != "id"] == [
        ("status", {"createdAt": rfc3339(BASE), "activation": "Inactive"}),
        ("status", {"createdAt": rfc3339(BASE + 5000), "activation": "Active"}),
        (
            "trigger",
            {
                "createdAt": rfc3339(BASE + 6000),
                "type": "FrontRightDoorBreakIn",
                "startAt": rfc3339(BASE + 6000),
            },
        ),
        (
            "trigger",
            {
                "createdAt": rfc3339(BASE + 10_000),
                "type": "RearRightFrontDoorBreakIn",
                "startAt": rfc3339(BASE + 10_000),
            },
        ),
        ("status", {"createdAt": rfc3339(BASE + 20_000), "activation": "Inactive"}),
    ]
    entries = derive.telemetry(store, VIN, ALL, NONE, types=["vehicle.alarm.trigger"])
    assert [e["vehicle"]["alarm"]["trigger"]["type"] for e in entries] == [
        "FrontRightDoorBreakIn",
        "RearRightFrontDoorBreakIn",
    ]


def test_collision_speed_only_when_recent() -> None:
    store = filled(
        payload({12: [(0, 0), (60_000, 1), (61_000, 0), (90_000, 1)], 1: [(59_500, 64.0)]})
    )
    first, second = derive.collisions(store, VIN, ALL, NONE)
    assert first["kinetic"] == {"createdAt": rfc3339(BASE + 59_500), "speed": 64.0}
    assert "kinetic" not in second
    assert "position" not in first  # no fix ever


def test_maintenance_overdue_is_negative() -> None:
    store = filled(payload({31: [(0, 3), (60_000, -2)], 32: [(0, 150), (60_000, -20)]}))
    assert derive.maintenance(store, VIN, ALL, NONE) == {
        "createdAt": rfc3339(BASE),
        "updatedAt": rfc3339(BASE + 60_000),
        "daysBeforeMaintenance": -2,
        "mileageBeforeMaintenance": -20.0,
    }
    assert derive.maintenance(filled(payload({1: [(0, 1)]})), VIN, ALL, NONE) is None


def test_waypoints_of_a_straight_line_simplify_to_its_ends() -> None:
    line = [(t * 1000, 48.8 + t * 0.001) for t in range(20)]
    store = filled(
        payload({5: [(0, 2), (30_000, 0)], 40: line, 41: [(t, 2.3) for t, _lat in line]})
    )
    (trip,) = derive.trips(store, VIN, ALL, NONE)
    points = derive.trip_waypoints(store, VIN, trip.id, ALL, NONE)
    assert points is not None
    assert len(points) == 20
    simple = derive.trip_waypoints(store, VIN, trip.id, ALL, NONE, tolerance_km=0.001)
    assert simple == [points[0], points[-1]]
    assert points[0]["properties"]["fixStatus"] == "2D"


def test_the_signal_mapping_covers_the_catalog() -> None:
    ids = {s.id for s in CATALOG.signals}
    mapped = (
        set(derive.STATUS_FIELDS)
        | set(derive.TELEMETRY_TYPES)
        | set(derive.UNMAPPED)
        | set(derive.ALERT_TYPES)
    )
    assert ids == mapped
    assert set(derive.TELEMETRY_TYPES.values()) <= set(derive.TELEMETRY_ALL_TYPES)


# -- arbitrary stored samples ------------------------------------------------------------------

SIGNAL_IDS = sorted(s.id for s in CATALOG.signals)
POSITION_IDS = frozenset(s.id for s in CATALOG.signals if s.scope is Scope.POSITION)


@st.composite
def uplinks(draw: st.DrawFn, seq: int) -> bytes:
    privacy = draw(st.sampled_from(list(Privacy)))
    base = draw(
        st.one_of(
            st.integers(BASE - 10_000, BASE + 10_000),
            st.integers(0, 2**62),
        )
    )
    allowed = [
        s
        for s in SIGNAL_IDS
        if privacy is NONE or (privacy is Privacy.GEOLOCATION and s not in POSITION_IDS)
    ]
    chosen = set(draw(st.lists(st.sampled_from(allowed), max_size=8))) if allowed else set()
    # Groups that make trips, fixes, break-ins and crashes likely.
    for group in draw(st.sets(st.sampled_from([(40, 41, 43), (5, 1), (11, 6, 10), (12, 1)]))):
        chosen |= {sid for sid in group if sid in allowed}
    series = []
    for sid in sorted(chosen):
        n = draw(st.integers(1, 6))
        gaps = draw(st.lists(st.integers(0, 40_000), min_size=n, max_size=n))
        times = tuple(itertools.accumulate(gaps))
        if sid in (40, 41):
            times = tuple(range(0, n * 1000, 1000))  # latitude and longitude sampled together
        mantissas = tuple(
            draw(
                st.one_of(
                    st.integers(-3, 5), st.integers(-(10**12), 10**12), st.integers(-(2**62), 2**62)
                )
            )
            for _ in range(n)
        )
        exp = draw(st.sampled_from([CATALOG.by_id(sid).exp, 0, -3]))
        series.append(Series(sid, exp, times, mantissas))
    return encode_uplink(Uplink(VIN, seq, base, Trigger.PERIODIC, privacy, tuple(series)))


def _every_view(store: Store, privacy: Privacy) -> list[Any]:
    trips = derive.trips(store, VIN, ALL, privacy)
    out: list[Any] = [
        derive.status(store, VIN, ALL, privacy),
        derive.last_position(store, VIN, ALL, privacy),
        derive.telemetry(store, VIN, ALL, privacy, extensions=["location", "maintenance"]),
        [t.body for t in trips],
        derive.alerts(store, VIN, ALL, privacy),
        derive.collisions(store, VIN, ALL, privacy),
        derive.maintenance(store, VIN, ALL, privacy),
        derive.alarms(store, VIN, ALL, privacy),
    ]
    for t in trips[:3]:
        out.append(derive.trip_waypoints(store, VIN, t.id, ALL, privacy, tolerance_km=0.01))
        out.append(derive.trip_alerts(store, VIN, t.id, ALL, privacy))
        out.append(derive.trip_collisions(store, VIN, t.id, ALL, privacy))
        out.append(derive.trip_telemetry(store, VIN, t.id, ALL, privacy))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_derive_never_crashes_and_never_leaks_a_position(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 4))
    raws = [data.draw(uplinks(seq)) for seq in range(n)]
    with open_store("sqlite://") as store:
        for raw in raws:
            store.ingest(VIN, raw, BASE)  # some are rejected (privacy, range): that is fine
        current = derive.current_privacy(store, VIN)
        for privacy in {current, *Privacy}:
            views = _every_view(store, privacy)
            json.dumps(views, allow_nan=False)
            if privacy is not NONE:
                assert not _positions(views)
            if privacy is Privacy.FULL:
                status = views[0]
                assert status is None or set(status) == {"createdAt", "updatedAt", "privacy"}
                assert not any(views[1:])


@settings(max_examples=200)
@given(
    times=st.lists(st.integers(-(10**6), 10**6), max_size=40, unique=True).map(sorted),
    queries=st.lists(st.integers(-(10**6), 10**6), max_size=40).map(sorted),
    max_age=st.sampled_from([0, 1, 1000, float("inf")]),
)
def test_at_each_is_at_for_every_time(times: list[int], queries: list[int], max_age: float) -> None:
    """The one-walk lookup of the fixes' altitude, heading and quality gives what the
    search per time (``_Samples.at``) gives."""
    series = [(t, float(i)) for i, t in enumerate(times)]

    def at(t: int) -> tuple[int, float] | None:
        earlier = [p for p in series if p[0] <= t]
        return earlier[-1] if earlier and t - earlier[-1][0] <= max_age else None

    assert derive._at_each(series, queries, max_age) == [at(t) for t in queries]
