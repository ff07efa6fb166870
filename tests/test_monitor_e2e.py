"""Monitors end to end: a simulated drive, the store, the engine, the sender, a receiver.

An electric car leaves a 10 km circle around its start and drives on until its battery falls
under 20 % (scenarios/ev_low_battery_geofence.yaml, simulated time, real Mosquitto). A
leave-the-zone monitor and a battery-under-20 % monitor each notify exactly once, at the
vehicle times the stored samples say, and a real HTTP receiver verifies every signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_webhooks import start_receiver

from firmware_sim.scenario.model import load_scenario
from firmware_sim.scenario.runner import ScenarioRunner
from gateway.monitors import MonitorEngine, haversine_m, parse_callback, parse_monitor
from gateway.store import DeliveryState, Record, SqliteStore, rfc3339
from gateway.webhooks import DeliveryReport, WebhookSender, new_secret

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "ev_low_battery_geofence.yaml"
HOME = (48.8220, 2.3250)  # the route's start
RADIUS_KM = 10

BATTERY = {
    "label": "battery under 20 %",
    "triggerParam": {
        "triggers": [
            {
                "name": "low",
                "data": {
                    "data": "vehicle.energy.electric.level",
                    "op": "lowerThan",
                    "value": ["20"],
                },
            }
        ],
        "boolExp": "low",
    },
}
ZONE = {
    "label": "left home",
    "subscribeParam": {"refreshEvent": 3600},
    "extendedEventParam": ["vehicle.position"],
    "triggerParam": {
        "triggers": [
            {
                "name": "home",
                "zone": {
                    "transition": "Out",
                    "place": {
                        "radius": RADIUS_KM,
                        "center": {"latitude": HOME[0], "longitude": HOME[1]},
                    },
                },
            }
        ],
        "boolExp": "home",
    },
}


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def expected_events(store: SqliteStore, vin: str) -> tuple[tuple[int, float], tuple[int, Any]]:
    """From the stored samples: the first battery level under 20 and the first fix outside."""
    low = next((t, v) for _sid, t, v in store.samples(vin, 22) if v < 20)
    longitudes = {t: v for _sid, t, v in store.samples(vin, 41)}
    inside = None
    for _sid, t, lat in store.samples(vin, 40):
        if t not in longitudes:
            continue
        now_inside = haversine_m((lat, longitudes[t]), HOME) <= RADIUS_KM * 1000
        if inside and not now_inside:
            return low, (t, (lat, longitudes[t]))
        inside = now_inside
    raise AssertionError("the car never left the circle")


@pytest.mark.slow
def test_a_drive_raises_one_zone_and_one_battery_notification(tmp_path: Path, broker: Any) -> None:
    scenario = load_scenario(SCENARIO)
    record = ScenarioRunner(scenario, data_dir=tmp_path, broker_url=broker.url).run()
    assert all(e.passed for e in record.expectations), record.expectations
    vin = scenario.config.vin
    end = scenario.start_ms + scenario.duration_ms

    secret = new_secret()
    receiver = start_receiver(secret)
    try:
        with SqliteStore(tmp_path / "gateway.sqlite3") as store:
            callback = parse_callback(
                {
                    "label": "fleet desk",
                    "type": ["Monitor"],
                    "callback": {
                        "webhook": {
                            "target": receiver.url,
                            "name": "desk",
                            "attributes": [
                                {"type": "Header", "key": "X-Vehicle-Id", "value": "$vin"},
                                {"type": "Query", "key": "source", "value": "tcusim"},
                            ],
                        }
                    },
                }
            )
            body = {**callback, "status": "Running", "secret": secret}
            store.put_record(Record("callback", "cb-desk", "user:u1", None, body, end, end))
            for mid, param in (("m-battery", BATTERY), ("m-zone", ZONE)):
                monitor = {
                    "callbackId": "cb-desk",
                    "monitor": parse_monitor(param),
                    "status": "Running",
                }
                store.put_record(Record("monitor", mid, "user:u1", vin, monitor, end, end))

            clock = Clock(end + 60_000)
            engine = MonitorEngine(store, clock_ms=clock, batch=100)
            sender = WebhookSender(store, clock_ms=clock)
            try:
                assert engine.step() == 2
                assert engine.step() == 0
                assert sender.deliver_due() == DeliveryReport(2, 0, 0)
                (low_t, low_value), (out_t, (out_lat, out_lon)) = expected_events(store, vin)
                # An hour later the car is still out of the circle: one reminder.
                clock.now += 3_600_000
                assert engine.step() == 1
                assert sender.deliver_due() == DeliveryReport(1, 0, 0)
            finally:
                sender.close()
            assert all(d.state is DeliveryState.DELIVERED for d in store.deliveries())
    finally:
        assert receiver.server is not None
        receiver.server.shutdown()

    assert len(receiver.got) == 3 and all(r.valid for r in receiver.got)
    assert all(r.headers["x-vehicle-id"] == vin for r in receiver.got)
    assert all(r.query == {"source": "tcusim"} for r in receiver.got)
    by_monitor: dict[str, list[dict[str, Any]]] = {}
    for message in receiver.notifications():
        by_monitor.setdefault(message["monitorEvent"]["monitorId"], []).append(message)

    (battery,) = by_monitor["m-battery"]
    assert battery["callbackId"] == "cb-desk" and battery["type"] == "Monitor"
    assert battery["date"] == rfc3339(low_t)
    assert scenario.start_ms + 60 * 60_000 < low_t < scenario.start_ms + 70 * 60_000
    assert battery["monitorEvent"] == {
        "monitorId": "m-battery",
        "values": [
            {
                "data": "vehicle.energy.electric.level",
                "value": {"type": "string", "body": {"literalValue": f"{low_value:g}"}},
            }
        ],
        "extensions": [],
        "refresh": False,
    }

    left, reminder = by_monitor["m-zone"]
    assert left["date"] == rfc3339(out_t)
    assert scenario.start_ms < out_t < scenario.start_ms + 10 * 60_000
    assert left["monitorEvent"]["values"] == [] and left["monitorEvent"]["refresh"] is False
    (position,) = left["monitorEvent"]["extensions"]
    feature = position["body"][0]["position"]
    assert position["type"] == "vehicle.position"
    assert feature["geometry"]["coordinates"][:2] == [out_lon, out_lat]
    assert feature["properties"]["createdAt"] == rfc3339(out_t)
    assert haversine_m((out_lat, out_lon), HOME) > RADIUS_KM * 1000
    assert reminder["monitorEvent"]["refresh"] is True
    assert reminder["date"] == rfc3339(end + 60_000 + 3_600_000)
