"""Bytes per 60 s upload: the CBOR uplink against the Web API's JSON for the same samples.

A pre-2019 car uploads every 60 s. This drives one minute (0 to 90 km/h out of a parking
spot, then cruising), samples every catalog signal at its refresh class (fast 1 s, normal
10 s, slow 60 s; event signals: their state at the start of the window and each change),
and measures the same samples three ways:

* the CBOR uplink (``firmware_sim.payload.encode_uplink``), in format version 2 (what the
  box writes) and version 1 (still read; its encode, decode and the gateway's
  ``decode_uplink_columns`` are timed beside version 2's);
* JSON in the shapes of the connected-car Web API v4: a telemetry collection with one
  entry per sampling instant (``createdAt`` in RFC 3339, ``vehicle.kinetic``,
  ``vehicle.engines``, ``vehicle.energies``, the position as a GeoJSON ``Feature`` under
  ``_embedded.extension.location``, ...), compact separators, numbers at the catalog's
  precision. To stay fair, the JSON carries only what the samples carry: no HAL ``_links``,
  no per-object ``createdAt`` copies, no derived fields; both omissions make it smaller;
* that JSON gzipped at level 9.

Run ``python benchmarks/payload.py``; the last line is JSON and is also written to
``benchmarks/results/payload.json``.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from can_dbc.catalog import Catalog, Refresh, SignalSpec, default_catalog
from firmware_sim.payload import (
    Privacy,
    Series,
    Trigger,
    Uplink,
    decode_uplink,
    decode_uplink_columns,
    encode_uplink,
    quantize,
)

SEED = 2019
WINDOW_MS = 60_000
PERIOD_MS = {Refresh.FAST: 1_000, Refresh.NORMAL: 10_000, Refresh.SLOW: 60_000}
BASE_TIME = datetime(2026, 11, 22, 8, 0, 0, tzinfo=UTC)
VIN = "VR3UHZKXZHT123456"  # a 2017 model year (tenth character H)

Samples = list[tuple[int, float]]


# ---------------------------------------------------------------------------------------------
# The drive


class Drive:
    """One minute of driving, deterministic for a seed: every quantity as a function of time."""

    GEAR_UP_KMH = (0.0, 16.0, 32.0, 50.0, 68.0, 85.0)  # gear n from this speed on
    RPM_PER_KMH = (0.0, 118.0, 68.0, 46.0, 35.0, 28.0, 24.0)

    def __init__(self, seed: int) -> None:
        rnd = random.Random(seed)
        self.rnd = rnd
        # speed every 100 ms: a ramp to 90 km/h in about 35 s, then cruising, with noise
        self.speed: list[float] = []
        v = 0.0
        for step in range(WINDOW_MS // 100 + 1):
            t = step / 10
            target = min(90.0, 90.0 * t / 35.0) if t < 35 else 90.0 + 1.5 * math.sin(t / 4)
            v += (target - v) * 0.3 + rnd.gauss(0, 0.08)
            self.speed.append(max(0.0, v))
        # position: integrate the speed along a road that bends gently
        self.track: list[tuple[float, float, float]] = []
        lat, lon, heading = 48.835_112, 2.291_407, 62.0
        for step, kmh in enumerate(self.speed):
            heading = (heading + 0.04 * math.sin(step / 90) + rnd.gauss(0, 0.01)) % 360
            metres = kmh / 3.6 * 0.1
            lat += metres * math.cos(math.radians(heading)) / 111_320
            lon += (
                metres * math.sin(math.radians(heading)) / (111_320 * math.cos(math.radians(lat)))
            )
            self.track.append((lat, lon, heading))

    def kmh(self, t_ms: int) -> float:
        return self.speed[t_ms // 100]

    def gear(self, t_ms: int) -> int:
        v = self.kmh(t_ms)
        return sum(1 for threshold in self.GEAR_UP_KMH if v >= threshold)

    def gear_changes(self) -> Samples:
        out: Samples = [(0, 1.0)]
        for t in range(0, WINDOW_MS, 100):
            g = self.gear(t)
            if g != out[-1][1]:
                out.append((t + self.rnd.randrange(100), float(g)))
        return out


def _unknown(t_ms: int) -> float:
    """A signal added to the catalog since this benchmark was written: a constant."""
    return 0.0


def sample_drive(catalog: Catalog, seed: int) -> dict[int, Samples]:
    """Every catalog signal's samples over the window, by signal id (times in ms)."""
    d = Drive(seed)
    rnd = d.rnd
    moving_off = next(t for t in range(0, WINDOW_MS, 100) if d.kmh(t) > 10)

    fast: dict[str, Callable[[int], float]] = {
        "Vehicle.Speed": d.kmh,
        "Vehicle.Powertrain.CombustionEngine.Speed": lambda t: (
            820 + d.kmh(t) * d.RPM_PER_KMH[d.gear(t)] + rnd.gauss(0, 15)
        ),
        "Vehicle.Acceleration.Longitudinal": lambda t: (
            (d.kmh(t) - d.kmh(max(0, t - 1000))) / 3.6 + rnd.gauss(0, 0.05)
        ),
        "Vehicle.CurrentLocation.Latitude": lambda t: d.track[t // 100][0],
        "Vehicle.CurrentLocation.Longitude": lambda t: d.track[t // 100][1],
        "Vehicle.CurrentLocation.Heading": lambda t: d.track[t // 100][2],
        "Vehicle.Chassis.SteeringWheel.Angle": lambda t: (
            12 * math.sin(t / 9000) + rnd.gauss(0, 0.4)
        ),
    }
    normal: dict[str, Callable[[int], float]] = {
        "Vehicle.LowVoltageBattery.CurrentVoltage": lambda t: 14.2 + rnd.gauss(0, 0.05),
        "Vehicle.LowVoltageBattery.StateOfCharge": lambda t: 86.0 + t / 60_000,
        "Vehicle.Powertrain.CombustionEngine.ECT": lambda t: 61 + 12 * t / WINDOW_MS,
        "Vehicle.Powertrain.CombustionEngine.EOT": lambda t: 55 + 8 * t / WINDOW_MS,
        "Vehicle.Exterior.AirTemperature": lambda t: 11.4 + 0.3 * t / WINDOW_MS,
        "Vehicle.Cabin.HVAC.AmbientAirTemperature": lambda t: 16.5 + 2.5 * t / WINDOW_MS,
        "Vehicle.Powertrain.FuelSystem.RelativeLevel": lambda t: 43 - (t > 40_000),
        "Vehicle.Powertrain.Range": lambda t: 531 - t // 20_000,
        "Vehicle.CurrentLocation.Altitude": lambda t: 34 + 6 * t / WINDOW_MS + rnd.gauss(0, 1),
        "Vehicle.CurrentLocation.SignalQuality": lambda t: 9 - (rnd.random() < 0.2),
    }
    slow: dict[str, float] = {
        "Vehicle.TraveledDistance": 48_213.4,
        "Vehicle.Service.DaysToService": 143,
        "Vehicle.Service.DistanceToService": 11_790,
    }
    events: dict[str, Samples] = {
        "Vehicle.LowVoltageSystemState": [(0, 2)],  # On
        "Vehicle.Cabin.DoorsLockState": [(0, 0), (moving_off + 37, 1)],  # locks at 10 km/h
        "Vehicle.Cabin.HVAC.IsAirConditioningActive": [(0, 0), (23_412, 1)],
        "Vehicle.Powertrain.Transmission.CurrentGear": d.gear_changes(),
    }

    out: dict[int, Samples] = {}
    for spec in catalog.signals:
        name = spec.name
        if spec.refresh is Refresh.EVENT:
            out[spec.id] = events.get(name, [(0, 0)])
            continue
        period = PERIOD_MS[spec.refresh]
        if spec.refresh is Refresh.SLOW:
            out[spec.id] = [(0, slow.get(name, 0))]
            continue
        table = fast if spec.refresh is Refresh.FAST else normal
        fn = table.get(name, _unknown)
        out[spec.id] = [(t, float(fn(t))) for t in range(0, WINDOW_MS, period)]
    return out


def to_uplink(catalog: Catalog, samples: dict[int, Samples]) -> Uplink:
    """The box's upload of these samples."""
    series = []
    for sid in sorted(samples):
        spec = catalog.by_id(sid)
        times = tuple(t for t, _ in samples[sid])
        mantissas = tuple(quantize(v, spec.exp) for _, v in samples[sid])
        series.append(Series(sid, spec.exp, times, mantissas))
    return Uplink(
        vin=VIN,
        seq=1842,
        base_time_ms=int(BASE_TIME.timestamp() * 1000),
        trigger=Trigger.PERIODIC,
        privacy=Privacy.NONE,
        series=tuple(series),
        boot=17,
    )


# ---------------------------------------------------------------------------------------------
# The same samples as the Web API would serve them

IGNITION = {0: "Stop", 1: "Free", 2: "StartUp", 3: "Start"}
LOCKS = {0: "Unlocked", 1: "Locked", 2: "SuperLocked"}
CHARGING = {0: "Disconnected", 1: "InProgress", 2: "Failure", 3: "Stopped", 4: "Finished"}
PRECOND = {0: "Disabled", 1: "Enabled", 2: "Finished", 3: "Failure"}
PRIVACY = {0: "None", 1: "Geolocation", 2: "Full"}
DOORS = {
    "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": "Driver",
    "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen": "Passenger",
    "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen": "RearLeft",
    "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen": "RearRight",
    "Vehicle.Body.Trunk.Rear.IsOpen": "Trunk",
}
# Paths for signals the API has a field for (from the catalog's ``api`` hints) and short,
# API-styled names for those it has none for.
PATHS: dict[str, tuple[str, ...]] = {
    "Vehicle.Speed": ("vehicle", "kinetic", "speed"),
    "Vehicle.Acceleration.Longitudinal": ("vehicle", "kinetic", "acceleration"),
    "Vehicle.TraveledDistance": ("vehicle", "odometer", "mileage"),
    "Vehicle.LowVoltageBattery.CurrentVoltage": ("vehicle", "battery", "voltage"),
    "Vehicle.LowVoltageBattery.StateOfCharge": ("vehicle", "battery", "level"),
    "Vehicle.Cabin.HVAC.IsAirConditioningActive": ("vehicle", "hvac", "airConditioning"),
    "Vehicle.Cabin.HVAC.AmbientAirTemperature": ("vehicle", "hvac", "cabinTemp"),
    "Vehicle.Exterior.AirTemperature": ("environment", "air", "temp"),
    "Vehicle.Body.Lights.IsFlashing": ("vehicle", "lightingSystem", "flashing"),
    "Vehicle.Body.Horn.IsActive": ("vehicle", "horn", "active"),
    "Vehicle.Chassis.SteeringWheel.Angle": ("vehicle", "steeringWheel", "angle"),
    "Vehicle.Service.DaysToService": (
        "_embedded",
        "extension",
        "maintenance",
        "daysBeforeMaintenance",
    ),
    "Vehicle.Service.DistanceToService": (
        "_embedded",
        "extension",
        "maintenance",
        "mileageBeforeMaintenance",
    ),
}
ENGINE = {
    "Vehicle.Powertrain.CombustionEngine.Speed": ("speed",),
    "Vehicle.Powertrain.CombustionEngine.ECT": ("extension", "thermic", "coolant", "temp"),
    "Vehicle.Powertrain.CombustionEngine.EOT": ("extension", "thermic", "oil", "temp"),
}
ENERGY = {
    "Vehicle.Powertrain.FuelSystem.RelativeLevel": ("Fuel", ("level",)),
    "Vehicle.Powertrain.Range": ("Fuel", ("autonomy",)),
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed": ("Electric", ("level",)),
    "Vehicle.Powertrain.TractionBattery.Charging.ChargingState": (
        "Electric",
        ("extension", "electric", "charging", "status"),
    ),
    "Vehicle.Powertrain.TractionBattery.Charging.IsChargingCableConnected": (
        "Electric",
        ("extension", "electric", "charging", "plugged"),
    ),
    "Vehicle.Powertrain.TractionBattery.Charging.TimeToComplete": (
        "Electric",
        ("extension", "electric", "charging", "remainingTime"),
    ),
    "Vehicle.Powertrain.TractionBattery.Charging.ChargeRate": (
        "Electric",
        ("extension", "electric", "charging", "chargingRate"),
    ),
}
POSITION = {
    "Vehicle.CurrentLocation.Latitude": "lat",
    "Vehicle.CurrentLocation.Longitude": "lon",
    "Vehicle.CurrentLocation.Altitude": "alt",
    "Vehicle.CurrentLocation.Heading": "heading",
    "Vehicle.CurrentLocation.SignalQuality": "signalQuality",
}


def _put(node: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _number(value: float | int) -> float | int:
    """A JSON number as short as the API would write it (90 rather than 90.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _rfc3339(ms: int) -> str:
    moment = BASE_TIME + timedelta(milliseconds=ms)
    text = moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


def _place(
    entry: dict[str, Any], spec: SignalSpec, value: float | int, pos: dict[str, Any]
) -> None:
    name = spec.name
    flag = bool(value)
    if name in POSITION:
        pos[POSITION[name]] = _number(value)
    elif name in PATHS:
        _put(entry, PATHS[name], flag if spec.type.value == "bool" else _number(value))
    elif name in ENGINE:
        engines = entry.setdefault("vehicle", {}).setdefault("engines", [{}])
        _put(engines[0], ENGINE[name], _number(value))
    elif name in ENERGY:
        kind, path = ENERGY[name]
        energies = entry.setdefault("vehicle", {}).setdefault("energies", [])
        energy = next((e for e in energies if e["type"] == kind), None)
        if energy is None:
            energy = {"type": kind}
            energies.append(energy)
        if path[-1] == "status":
            shown: Any = CHARGING.get(int(value), "Failure")
        elif path[-1] == "plugged":
            shown = flag
        elif path[-1] == "remainingTime":
            shown = f"PT{int(value)}M"
        else:
            shown = _number(value)
        _put(energy, path, shown)
    elif name in DOORS:
        doors = entry.setdefault("vehicle", {}).setdefault("doorsState", {})
        doors.setdefault("opening", []).append(
            {"identifier": DOORS[name], "state": "Open" if flag else "Closed"}
        )
    elif name == "Vehicle.Cabin.DoorsLockState":
        _put(entry, ("vehicle", "doorsState", "lockedStates"), [LOCKS.get(int(value), "Unlocked")])
    elif name == "Vehicle.LowVoltageSystemState":
        _put(entry, ("vehicle", "ignition", "type"), IGNITION.get(int(value), "Stop"))
    elif name == "Vehicle.Safety.CrashDetected":
        _put(
            entry,
            ("vehicle", "safety", "autoECallTriggering"),
            "Detected" if flag else "NotDetected",
        )
    elif name == "Vehicle.Powertrain.Transmission.CurrentGear":
        ratio = f"Ratio{int(value)}" if value > 0 else ("Neutral" if value == 0 else "Reverse")
        _put(entry, ("vehicle", "transmission", "gearbox", "ratio"), ratio)
    elif name == "Vehicle.Cabin.HVAC.Preconditioning.State":
        status = PRECOND.get(int(value), "Failure")
        _put(entry, ("vehicle", "preconditioning", "airConditioning", "status"), status)
    elif name == "Vehicle.Connectivity.PrivacySetting":
        _put(entry, ("privacy", "state"), PRIVACY.get(int(value), "None"))
    elif name.startswith("Vehicle.Alert."):
        alert = spec.api.split(".", 1)[1] if spec.api.startswith("alerts.") else name
        entry.setdefault("alerts", []).append({"type": alert, "active": flag})
    else:  # a signal added to the catalog since: a short name in the same style
        parts = name.split(".")[-2:]
        key = parts[0][:1].lower() + parts[0][1:]
        _put(entry, ("vehicle", key, parts[1][:1].lower() + parts[1][1:]), _number(value))


def to_api_json(catalog: Catalog, uplink: Uplink) -> dict[str, Any]:
    """A telemetry collection of the Web API v4 holding exactly the uplink's samples."""
    by_time: dict[int, list[tuple[SignalSpec, float | int]]] = {}
    for s in uplink.series:
        spec = catalog.by_id(s.signal_id)
        for t, value in zip(s.times, s.values(), strict=True):
            by_time.setdefault(t, []).append((spec, value))
    entries = []
    for t in sorted(by_time):
        entry: dict[str, Any] = {"createdAt": _rfc3339(t)}
        if t == 0:
            entry["privacy"] = {"state": PRIVACY[int(uplink.privacy)]}
        pos: dict[str, Any] = {}
        for spec, value in by_time[t]:
            _place(entry, spec, value, pos)
        if "lat" in pos and "lon" in pos:
            coordinates = [pos.pop("lon"), pos.pop("lat")]
            if "alt" in pos:
                coordinates.append(pos.pop("alt"))
            feature = {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": coordinates},
                "properties": {"type": "Acquire", **pos},
            }
            _put(entry, ("_embedded", "extension", "location"), feature)
        elif pos:  # altitude or quality without a horizontal fix: properties only
            _put(entry, ("_embedded", "extension", "location", "properties"), pos)
        entries.append(entry)
    return {
        "total": len(entries),
        "currentPage": 0,
        "totalPage": 1,
        "_embedded": {"telemetries": entries},
    }


# ---------------------------------------------------------------------------------------------


def _rate(fn: Callable[[], object], seconds: float = 0.5) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            fn()
        n += 20
    return n / elapsed


def main() -> int:
    catalog = default_catalog()
    samples = sample_drive(catalog, SEED)
    uplink = to_uplink(catalog, samples)
    cbor = encode_uplink(uplink)
    assert decode_uplink(cbor) == uplink
    document = to_api_json(catalog, uplink)
    json_bytes = json.dumps(document, separators=(",", ":")).encode()
    gz = gzip.compress(json_bytes, compresslevel=9, mtime=0)

    n_samples = sum(len(s.mantissas) for s in uplink.series)
    print(f"signals: {len(uplink.series)}, samples: {n_samples}, window: {WINDOW_MS // 1000} s")
    print(f"CBOR uplink:         {len(cbor):7d} bytes")
    print(
        f"Web API JSON:        {len(json_bytes):7d} bytes "
        f"({len(document['_embedded']['telemetries'])} telemetry entries)"
    )
    print(f"Web API JSON, gzip9: {len(gz):7d} bytes")
    ratio_json = len(cbor) / len(json_bytes)
    ratio_gzip = len(cbor) / len(gz)
    print(f"CBOR / JSON: {ratio_json:.3f}   CBOR / gzipped JSON: {ratio_gzip:.3f}")
    cbor_v1 = encode_uplink(uplink, version=1)
    assert decode_uplink(cbor_v1) == uplink
    print(f"CBOR uplink, format version 1: {len(cbor_v1)} bytes")
    rates: dict[str, float] = {}
    for version, data in ((2, cbor), (1, cbor_v1)):
        rates[f"encode_v{version}_per_s"] = _rate(
            lambda v=version: encode_uplink(uplink, version=v)
        )
        rates[f"decode_v{version}_per_s"] = _rate(lambda d=data: decode_uplink(d))
        rates[f"decode_columns_v{version}_per_s"] = _rate(lambda d=data: decode_uplink_columns(d))
        print(
            f"version {version}: encode {rates[f'encode_v{version}_per_s']:,.0f}/s   "
            f"decode {rates[f'decode_v{version}_per_s']:,.0f}/s   "
            f"decode_uplink_columns (the gateway) "
            f"{rates[f'decode_columns_v{version}_per_s']:,.0f}/s"
        )
    json_rate = _rate(lambda: json.loads(json_bytes))
    print(f"baseline json.loads of the JSON: {json_rate:,.0f}/s")
    result = {
        "benchmark": "payload",
        "cbor_bytes": len(cbor),
        "cbor_v1_bytes": len(cbor_v1),
        **{name: round(rate) for name, rate in rates.items()},
        "json_loads_per_s": round(json_rate),
        "json_bytes": len(json_bytes),
        "json_gzip_bytes": len(gz),
        "ratio_json": round(ratio_json, 4),
        "ratio_gzip": round(ratio_gzip, 4),
    }
    line = json.dumps(result)
    out = Path(__file__).resolve().parent / "results" / "payload.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(line + "\n", encoding="utf-8")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
