"""The Web API's derived views: status, positions, telemetry, trips, alerts, collisions,
maintenance and alarms, computed from what a :class:`~gateway.store.Store` holds.

Every function is pure over the store (it reads, never writes) and returns JSON-ready
dicts in the shapes of the connected-car Web API v4, without ``_links`` (the REST layer adds
them). Times are RFC 3339 UTC (:func:`gateway.store.rfc3339`) and are the vehicle's own
(sample times). Lists come oldest first.

**What a caller may see.** Every view takes ``scopes`` (the data scopes visible to the
request: the token's scopes intersected with the vehicle's services) and ``privacy`` (the
vehicle's current setting, :func:`current_privacy`) and withholds by itself what they do not
allow, so nothing leaks whatever the caller forgets:

- a position (``lastPosition``, ``startPosition``, way points, the position of an alert,
  a collision or an alarm, the ``location`` extension) needs :attr:`Scope.POSITION` and
  privacy ``None``;
- privacy ``Geolocation`` withholds every position, ``Full`` everything but the status's
  ``privacy`` part (the other views are then empty);
- each view needs its own scope: status parts and telemetry :attr:`Scope.TELEMETRY`,
  trips :attr:`Scope.TRIP`, alerts :attr:`Scope.ALERT`, collisions :attr:`Scope.COLLISION`,
  maintenance :attr:`Scope.MAINTENANCE`, alarms :attr:`Scope.TELEMETRY`.

**The privacy setting.** The box carries the driver's setting in every payload's header
rather than as samples of signal 46; :func:`current_privacy` takes the newer of the last
header and the last sample of signal 46 (``None`` when neither was ever seen; a value that
names no setting counts as ``Full``).

**Signals and the API.** :data:`STATUS_FIELDS` maps each signal to the status field it
feeds, :data:`TELEMETRY_TYPES` to its telemetry ``type``; :data:`UNMAPPED` lists the signals
no view shows as such (12 V state of charge, A/C, cabin temperature, lights, horn, steering
angle: the reference has no field for them; crash and alert signals feed collisions and
alerts). Samples at times an RFC 3339 time cannot express (before year 1, after 9999) and
positions outside the globe are ignored.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from can_dbc.catalog import Scope, default_catalog
from firmware_sim.errors import PayloadError
from firmware_sim.payload import Privacy, decode_uplink
from gateway.errors import GatewayError
from gateway.store import Store, StoredPayload, Value, rfc3339, samples_of

__all__ = [
    "ALARM_TYPES",
    "ALERT_TYPES",
    "STATUS_FIELDS",
    "TELEMETRY_EXTENSIONS",
    "TELEMETRY_TYPES",
    "UNMAPPED",
    "DeriveError",
    "Trip",
    "alarms",
    "alerts",
    "collisions",
    "current_privacy",
    "iso_duration",
    "last_position",
    "maintenance",
    "privacy_state",
    "status",
    "telemetry",
    "trip",
    "trip_alerts",
    "trip_collisions",
    "trip_telemetry",
    "trip_waypoints",
    "trips",
    "visible_scopes",
]

_CATALOG = default_catalog()


def _sid(name: str) -> int:
    return _CATALOG.by_name(name).id


SPEED = _sid("Vehicle.Speed")
ENGINE_SPEED = _sid("Vehicle.Powertrain.CombustionEngine.Speed")
ODOMETER = _sid("Vehicle.TraveledDistance")
ACCELERATION = _sid("Vehicle.Acceleration.Longitudinal")
IGNITION = _sid("Vehicle.LowVoltageSystemState")
LOCK = _sid("Vehicle.Cabin.DoorsLockState")
CRASH = _sid("Vehicle.Safety.CrashDetected")
VOLTAGE = _sid("Vehicle.LowVoltageBattery.CurrentVoltage")
GEAR = _sid("Vehicle.Powertrain.Transmission.CurrentGear")
COOLANT = _sid("Vehicle.Powertrain.CombustionEngine.ECT")
OIL = _sid("Vehicle.Powertrain.CombustionEngine.EOT")
AIR = _sid("Vehicle.Exterior.AirTemperature")
FUEL = _sid("Vehicle.Powertrain.FuelSystem.RelativeLevel")
SOC = _sid("Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed")
RANGE = _sid("Vehicle.Powertrain.Range")
CHARGING = _sid("Vehicle.Powertrain.TractionBattery.Charging.ChargingState")
PLUGGED = _sid("Vehicle.Powertrain.TractionBattery.Charging.IsChargingCableConnected")
TIME_TO_COMPLETE = _sid("Vehicle.Powertrain.TractionBattery.Charging.TimeToComplete")
CHARGE_RATE = _sid("Vehicle.Powertrain.TractionBattery.Charging.ChargeRate")
PRECONDITIONING = _sid("Vehicle.Cabin.HVAC.Preconditioning.State")
DAYS_TO_SERVICE = _sid("Vehicle.Service.DaysToService")
KM_TO_SERVICE = _sid("Vehicle.Service.DistanceToService")
LAT = _sid("Vehicle.CurrentLocation.Latitude")
LON = _sid("Vehicle.CurrentLocation.Longitude")
ALT = _sid("Vehicle.CurrentLocation.Altitude")
HEADING = _sid("Vehicle.CurrentLocation.Heading")
QUALITY = _sid("Vehicle.CurrentLocation.SignalQuality")
PRIVACY = _sid("Vehicle.Connectivity.PrivacySetting")

DOORS: Mapping[int, str] = {
    _sid("Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"): "Driver",
    _sid("Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen"): "Passenger",
    _sid("Vehicle.Cabin.Door.Row2.DriverSide.IsOpen"): "RearLeft",
    _sid("Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen"): "RearRight",
    _sid("Vehicle.Body.Trunk.Rear.IsOpen"): "Trunk",
}
# The alarm's break-in type for each opening (the driver sits on the left).
BREAK_IN: Mapping[int, str] = dict(
    zip(
        DOORS,
        (
            "FrontLeftDoorBreakIn",
            "FrontRightDoorBreakIn",
            "RearLeftFrontDoorBreakIn",
            "RearRightFrontDoorBreakIn",
            "TrunkDoorBreakIn",
        ),
        strict=True,
    )
)

ALERT_TYPES: Mapping[int, tuple[str, str]] = {
    # signal id: (the reference's AlertMsgEnum value, severity)
    _sid("Vehicle.Alert.EngineFault"): ("EngineFault", "Warning"),
    _sid("Vehicle.Alert.OilPressure"): ("EngineOilPressureFailure", "Critical"),
    _sid("Vehicle.Alert.CoolantTemperature"): ("EngineTemperatureFailure", "Critical"),
    _sid("Vehicle.Alert.BrakeFault"): ("BrakingSystemFailure", "Critical"),
    _sid("Vehicle.Alert.BatteryCharge"): (
        "BatteryChargeOrElectricalCircuitSystemFailure",
        "Warning",
    ),
    _sid("Vehicle.Alert.LowFuel"): ("FuelLevelLow", "Information"),
    # The reference names under-inflation per wheel only; the box's alert names no wheel.
    _sid("Vehicle.Alert.TirePressure"): ("TireUnderInflationDetectionSystemFault", "Warning"),
}

# Off, Accessory, On (the engine may run), Start (cranking) as the reference's ignition types.
IGNITION_TYPES: Mapping[int, str] = {0: "Stop", 1: "Free", 2: "StartUp", 3: "Start"}
IGNITION_ON = frozenset({2, 3})
LOCK_STATES: Mapping[int, str] = {0: "Unlocked", 1: "Locked", 2: "SuperLocked"}
CHARGING_STATES: Mapping[int, str] = {
    0: "Disconnected",
    1: "InProgress",
    2: "Failure",
    3: "Stopped",
    4: "Finished",
}
PRECONDITIONING_STATES: Mapping[int, str] = {
    0: "Disabled",
    1: "Enabled",
    2: "Finished",
    3: "Failure",
}
PRIVACY_NAMES: Mapping[Privacy, str] = {
    Privacy.NONE: "None",
    Privacy.GEOLOCATION: "Geolocation",
    Privacy.FULL: "Full",
}
QUICK_CHARGE_KMH = 150  # a charge rate above this (about 24 kW) is a Quick (DC) charge

STATUS_FIELDS: Mapping[int, str] = {
    SPEED: "kinetic.speed (and kinetic.moving)",
    ENGINE_SPEED: "engines[].speed",
    ODOMETER: "odometer.mileage",
    ACCELERATION: "kinetic.acceleration",
    IGNITION: "ignition.type",
    **{sid: f"doorsState.opening[{name}]" for sid, name in DOORS.items()},
    LOCK: "doorsState.lockedStates, alarm.status.activation",
    CRASH: "safety.autoECallTriggering",
    VOLTAGE: "battery.voltage",
    COOLANT: "engines[].extension.thermic.coolant.temp",
    OIL: "engines[].extension.thermic.oil.temp",
    AIR: "environment.air.temp",
    FUEL: "energies[Fuel].level",
    SOC: "energies[Electric].level",
    RANGE: "energies[Fuel or Electric].autonomy (not for a hybrid: the range is their sum)",
    CHARGING: "energies[Electric].extension.electric.charging.status (and chargingMode)",
    PLUGGED: "energies[Electric].extension.electric.charging.plugged",
    TIME_TO_COMPLETE: "energies[Electric].extension.electric.charging.remainingTime",
    CHARGE_RATE: "energies[Electric].extension.electric.charging.chargingRate",
    PRECONDITIONING: "preconditioning.airConditioning.status",
    PRIVACY: "privacy.state",
    LAT: "lastPosition.geometry.coordinates[1]",
    LON: "lastPosition.geometry.coordinates[0]",
    ALT: "lastPosition.geometry.coordinates[2]",
    HEADING: "lastPosition.properties.heading",
    QUALITY: "lastPosition.properties.signalQuality",
}
"""Which status field each signal feeds (31, 32 feed :func:`maintenance`, 33-39 alerts)."""

TELEMETRY_TYPES: Mapping[int, str] = {
    SPEED: "vehicle",  # vehicle.kinetic: no type of its own
    ACCELERATION: "vehicle",
    ODOMETER: "vehicle",  # vehicle.odometer: no type of its own
    ENGINE_SPEED: "vehicle.engines",
    COOLANT: "vehicle.engines",
    OIL: "vehicle.engines",
    IGNITION: "vehicle.ignition",
    **dict.fromkeys(DOORS, "vehicle.doorsState"),
    LOCK: "vehicle.doorsState",
    VOLTAGE: "vehicle.battery",
    GEAR: "vehicle.transmission",
    AIR: "environment",
    **dict.fromkeys(
        (FUEL, SOC, RANGE, CHARGING, PLUGGED, TIME_TO_COMPLETE, CHARGE_RATE), "vehicle.energies"
    ),
    PRIVACY: "privacy",
}
"""The telemetry ``type`` each signal's samples come under. ``vehicle.alarm.status`` and
``vehicle.alarm.trigger`` are derived (:func:`alarms`); ``privacy`` also follows the
payloads' headers; positions and maintenance come as the ``location`` and ``maintenance``
extensions. ``vehicle.adas``, ``vehicle.lightingSystem``, ``vehicle.safety`` and
``vehicle.wipingBlades`` have no signal."""

TELEMETRY_ALL_TYPES = (
    "environment",
    "privacy",
    "vehicle",
    "vehicle.adas",
    "vehicle.battery",
    "vehicle.doorsState",
    "vehicle.drivingBehavior",
    "vehicle.energies",
    "vehicle.engines",
    "vehicle.ignition",
    "vehicle.lighting",
    "vehicle.lightingSystem",
    "vehicle.safety",
    "vehicle.transmission",
    "vehicle.alarm.status",
    "vehicle.alarm.trigger",
    "vehicle.wipingBlades",
)
TELEMETRY_EXTENSIONS = ("location", "maintenance")
ALARM_TYPES = ("vehicle.alarm.status", "vehicle.alarm.trigger")

UNMAPPED: Mapping[int, str] = {
    _sid("Vehicle.LowVoltageBattery.StateOfCharge"): "the reference has no 12 V charge level",
    _sid("Vehicle.Cabin.HVAC.IsAirConditioningActive"): "no A/C-running field",
    _sid("Vehicle.Cabin.HVAC.AmbientAirTemperature"): "no cabin temperature field",
    _sid("Vehicle.Body.Lights.IsFlashing"): "lightingSystem describes turn and fog lights",
    _sid("Vehicle.Body.Horn.IsActive"): "no horn field",
    _sid("Vehicle.Chassis.SteeringWheel.Angle"): "no steering field",
    GEAR: "status: none (telemetry: vehicle.transmission.gearbox.ratio)",
    CRASH: "telemetry: none (collisions; status: safety.autoECallTriggering)",
    **dict.fromkeys(ALERT_TYPES, "telemetry: none (alerts)"),
    DAYS_TO_SERVICE: "telemetry: the maintenance extension; maintenance()",
    KM_TO_SERVICE: "telemetry: the maintenance extension; maintenance()",
}
"""Signals with no field of their own in a view, and why."""

# An RFC 3339 time needs a year in 1..9999.
_MIN_MS = -62_135_596_800_000
_MAX_MS = 253_402_300_799_000
_GAP_MS = 15_000  # speed samples further apart than this: the trip lacks data
_FIX_AGE_MS = 15_000  # altitude, heading and quality join a fix when this recent
_FIX_AFTER_MS = 60_000  # with no fix before a moment, the first one this soon after it

Point = tuple[int, Value]  # (t_ms, value)


class DeriveError(GatewayError, ValueError):
    """A request for a derived view names something that does not exist (a type, an extension)."""


# -- visibility --------------------------------------------------------------------------


def visible_scopes(scopes: Iterable[Scope], privacy: Privacy) -> frozenset[Scope]:
    """The scopes left once the privacy setting applies: no position under ``Geolocation``,
    nothing under ``Full``."""
    if privacy is Privacy.FULL:
        return frozenset()
    visible = frozenset(scopes)
    if privacy is Privacy.GEOLOCATION:
        return visible - {Scope.POSITION}
    return visible


def _privacy_of(value: Value) -> Privacy:
    """A signal-46 value as a setting; one that names none counts as the strictest."""
    if isinstance(value, float) and not value.is_integer():
        return Privacy.FULL
    try:
        return Privacy(int(value))
    except (ValueError, OverflowError):
        return Privacy.FULL


def _ok_time(t_ms: int) -> bool:
    return _MIN_MS <= t_ms <= _MAX_MS


def _time(t_ms: int) -> str:
    return rfc3339(t_ms) or ""


def _last_sample_ms(payload: StoredPayload) -> int:
    """The time of a payload's last sample (its base time when it has none)."""
    try:
        uplink = decode_uplink(payload.raw)
    except PayloadError:
        return payload.base_time_ms
    ends = [uplink.base_time_ms + s.times[-1] for s in uplink.series if s.times]
    last = max(ends, default=payload.base_time_ms)
    return last if _ok_time(last) else payload.base_time_ms


def _header_changes(store: Store, vin: str) -> tuple[list[tuple[int, Privacy]], int | None]:
    """The settings the payload headers carried, ``(since, setting)`` at each change (the
    first included), and the time of the newest payload (``None`` without payloads).

    Headers are read in the box's packing order (sequence numbers). The box packs an upload
    the moment the setting changes, so the first payload under a new setting is dated by
    its last sample.
    """
    changes: list[tuple[int, Privacy]] = []
    newest: StoredPayload | None = None
    for p in store.payloads(vin):
        if not _ok_time(p.base_time_ms):
            continue
        setting = _privacy_of(p.privacy)
        if not changes:
            changes.append((p.base_time_ms, setting))
        elif setting is not changes[-1][1]:
            changes.append((_last_sample_ms(p), setting))
        newest = p
    return changes, None if newest is None else _last_sample_ms(newest)


def _privacy_changes(store: Store, vin: str) -> list[tuple[int, Privacy]]:
    """``(t_ms, setting)`` at each change of the setting, oldest first, the first included:
    the payload headers' and signal 46's, merged by time."""
    header, _newest = _header_changes(store, vin)
    samples = [(t, _privacy_of(v)) for _s, t, v in store.samples(vin, PRIVACY) if _ok_time(t)]
    out: list[tuple[int, Privacy]] = []
    for t, setting in sorted([*header, *samples], key=lambda p: p[0]):
        if not out or out[-1][1] is not setting:
            out.append((t, setting))
    return out


def privacy_state(store: Store, vin: str) -> tuple[Privacy, int | None]:
    """The vehicle's current privacy setting and since when (``(NONE, None)`` if never seen).

    The newer of the last payload header (by sequence number) and the last sample of signal
    46 wins; at the same time the stricter does.
    """
    changes, newest = _header_changes(store, vin)
    sample = store.last_state(vin).get(PRIVACY)
    if sample is not None and not _ok_time(sample[0]):
        sample = None
    if sample is None:
        if not changes:
            return Privacy.NONE, None
        return changes[-1][1], changes[-1][0]
    from_sample = _privacy_of(sample[1])
    if not changes or newest is None:
        return from_sample, sample[0]
    setting, since = changes[-1][1], changes[-1][0]
    if sample[0] > newest or (sample[0] == newest and from_sample > setting):
        return from_sample, sample[0]
    return setting, since


def current_privacy(store: Store, vin: str) -> Privacy:
    """The vehicle's current privacy setting (``Privacy.NONE`` if never seen)."""
    return privacy_state(store, vin)[0]


# -- samples -----------------------------------------------------------------------------


class _Samples:
    """The samples of one vehicle, loaded per signal on first use, one per time (the last
    stored wins), in time order, at representable times only. The vehicle's payloads are
    read once, on the first use of any signal."""

    def __init__(self, store: Store, vin: str) -> None:
        self.store = store
        self.vin = vin
        self._rows: list[tuple[int, bytes]] | None = None
        self._series: dict[int, list[Point]] = {}
        self._times: dict[int, list[int]] = {}
        self._fixes: list[_Fix] | None = None
        self._fix_times: list[int] = []
        self._state: dict[int, Point] | None = None

    def series(self, sid: int) -> list[Point]:
        found = self._series.get(sid)
        if found is None:
            if self._rows is None:
                self._rows = self.store.packed_series(self.vin)
            by_time: dict[int, Value] = {}
            for _s, t, v in samples_of(self._rows, sid):
                if _ok_time(t):
                    by_time[t] = v
            found = sorted(by_time.items())
            self._series[sid] = found
            self._times[sid] = [t for t, _v in found]
        return found

    def at(self, sid: int, t_ms: float, *, max_age_ms: float = math.inf) -> Point | None:
        """The last sample at or before ``t_ms`` (no older than ``max_age_ms``)."""
        series = self.series(sid)
        i = bisect.bisect_right(self._times[sid], t_ms)
        if i == 0:
            return None
        point = series[i - 1]
        return point if t_ms - point[0] <= max_age_ms else None

    def after(self, sid: int, t_ms: float) -> Point | None:
        """The first sample at or after ``t_ms``."""
        series = self.series(sid)
        i = bisect.bisect_left(self._times[sid], t_ms)
        return series[i] if i < len(series) else None

    def within(self, sid: int, start_ms: float, end_ms: float) -> list[Point]:
        """The samples in ``[start_ms, end_ms]``."""
        series = self.series(sid)
        times = self._times[sid]
        return series[bisect.bisect_left(times, start_ms) : bisect.bisect_right(times, end_ms)]

    def near(self, sid: int, t_ms: float) -> Point | None:
        """The last sample at or before ``t_ms``, else the first at most a minute after."""
        found = self.at(sid, t_ms)
        if found is None:
            found = self.after(sid, t_ms)
            if found is not None and found[0] - t_ms > _FIX_AFTER_MS:
                return None
        return found

    @property
    def state(self) -> dict[int, Point]:
        """The latest sample of each signal."""
        if self._state is None:
            self._state = {
                sid: (t, v)
                for sid, (t, v) in self.store.last_state(self.vin).items()
                if _ok_time(t)
            }
        return self._state

    def fixes(self) -> list[_Fix]:
        """Every position fix: a latitude and a longitude sampled at the same time."""
        if self._fixes is None:
            lons = dict(self.series(LON))
            lats = self.series(LAT)
            times = [t for t, _lat in lats]
            alts, headings, qualities = (
                _at_each(self.series(sid), times, _FIX_AGE_MS) for sid in (ALT, HEADING, QUALITY)
            )
            fixes = []
            for (t, lat), alt, heading, quality in zip(
                lats, alts, headings, qualities, strict=True
            ):
                lon = lons.get(t)
                if lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
                    continue
                fixes.append(
                    _Fix(
                        t,
                        float(lat),
                        float(lon),
                        None if alt is None else float(alt[1]),
                        None if heading is None else float(heading[1]),
                        None if quality is None else int(quality[1]),
                    )
                )
            self._fixes = fixes
            self._fix_times = [f.t_ms for f in fixes]
        return self._fixes

    def fix_near(self, t_ms: float) -> _Fix | None:
        """The last fix at or before ``t_ms``, else the first at most a minute after."""
        fixes = self.fixes()
        i = bisect.bisect_right(self._fix_times, t_ms)
        if i:
            return fixes[i - 1]
        if fixes and fixes[0].t_ms - t_ms <= _FIX_AFTER_MS:
            return fixes[0]
        return None


def _at_each(
    series: Sequence[Point], times: Iterable[float], max_age_ms: float
) -> list[Point | None]:
    """What ``_Samples.at`` gives at each of ``times`` (never decreasing) for a series in
    time order: one walk along the series instead of a search per time."""
    out: list[Point | None] = []
    n, j = len(series), 0
    for t in times:
        while j < n and series[j][0] <= t:
            j += 1
        point = series[j - 1] if j else None
        out.append(point if point is not None and t - point[0] <= max_age_ms else None)
    return out


@dataclass(frozen=True, slots=True)
class _Fix:
    t_ms: int
    lat: float
    lon: float
    alt: float | None
    heading: float | None
    quality: int | None

    def feature(self) -> dict[str, Any]:
        """The fix as the reference's Position: a GeoJSON Feature with a Point."""
        coordinates = [self.lon, self.lat]
        if self.alt is not None:
            coordinates.append(self.alt)
        properties: dict[str, Any] = {"createdAt": _time(self.t_ms)}
        if self.heading is not None:
            properties["heading"] = round(self.heading) % 360
        if self.quality is not None:
            properties["signalQuality"] = self.quality
        properties["type"] = "Acquire"
        properties["fixStatus"] = "3D" if self.alt is not None else "2D"
        return {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": coordinates},
            "properties": properties,
        }


def _digest(vin: str, kind: str, *parts: object) -> str:
    """A stable identifier: the same vehicle, kind and moment give the same id."""
    text = "|".join([vin, kind, *map(str, parts)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _truthy(value: Value) -> bool:
    return value != 0


def _edges(series: Sequence[Point]) -> list[tuple[int, int | None]]:
    """``(on, off)`` spans of a boolean series: on at each rising edge (or a first sample
    that is on), off at the next sample that is off (``None`` while it lasts)."""
    spans: list[tuple[int, int | None]] = []
    on: int | None = None
    for t, v in series:
        if _truthy(v) and on is None:
            on = t
        elif not _truthy(v) and on is not None:
            spans.append((on, t))
            on = None
    if on is not None:
        spans.append((on, None))
    return spans


def iso_duration(seconds: float) -> str:
    """A non-negative duration in ISO 8601, e.g. ``PT1H5M``, ``P2DT3H``, ``PT0S``."""
    total = max(0, round(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    date = f"{days}D" if days else ""
    clock = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (secs, "S")) if n)
    if not date and not clock:
        return "PT0S"
    return "P" + date + (f"T{clock}" if clock else "")


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


# -- the parts of a status and of telemetry --------------------------------------------------

Values = Mapping[int, Value]


def _energy_kinds(state: Mapping[int, Point]) -> tuple[bool, bool]:
    """Whether the vehicle has a fuel tank and a traction battery, by what it ever sent."""
    has_fuel = FUEL in state
    has_battery = any(sid in state for sid in (SOC, CHARGING, PLUGGED))
    return has_fuel, has_battery


def _charging(values: Values) -> dict[str, Any]:
    charging: dict[str, Any] = {}
    if PLUGGED in values:
        charging["plugged"] = _truthy(values[PLUGGED])
    status_name = CHARGING_STATES.get(int(values[CHARGING])) if CHARGING in values else None
    if status_name is not None:
        charging["status"] = status_name
    if TIME_TO_COMPLETE in values:
        charging["remainingTime"] = iso_duration(float(values[TIME_TO_COMPLETE]) * 60)
    if CHARGE_RATE in values:
        charging["chargingRate"] = round(_clamp(float(values[CHARGE_RATE]), 0, 500))
    # The mode: No when the state says so; else by the rate, when one is known (only a
    # charge in progress has a rate; the rate sampled with the start of a charge may be 0).
    rate = float(values[CHARGE_RATE]) if CHARGE_RATE in values else 0.0
    if status_name is not None and status_name != "InProgress":
        charging["chargingMode"] = "No"
    elif rate > 0:
        charging["chargingMode"] = "Quick" if rate > QUICK_CHARGE_KMH else "Slow"
    return charging


def _energies(values: Values, kinds: tuple[bool, bool]) -> list[tuple[dict[str, Any], set[int]]]:
    """The Fuel and Electric energies and the signals each was made of."""
    has_fuel, has_battery = kinds
    autonomy: int | None = None
    if RANGE in values:
        autonomy = max(0, round(float(values[RANGE])))
    out: list[tuple[dict[str, Any], set[int]]] = []
    if FUEL in values or (has_fuel and not has_battery and autonomy is not None):
        energy: dict[str, Any] = {"type": "Fuel", "subType": "FossilEnergy"}
        used: set[int] = set()
        if FUEL in values:
            energy["level"] = round(_clamp(float(values[FUEL]), 0, 100), 1)
            used.add(FUEL)
        if autonomy is not None and has_fuel and not has_battery:
            energy["autonomy"] = autonomy
            used.add(RANGE)
        out.append((energy, used))
    battery_sids = [
        s for s in (SOC, CHARGING, PLUGGED, TIME_TO_COMPLETE, CHARGE_RATE) if s in values
    ]
    if battery_sids or (has_battery and not has_fuel and autonomy is not None):
        energy = {"type": "Electric", "subType": "ElectricEnergy"}
        used = set(battery_sids)
        if SOC in values:
            energy["level"] = round(_clamp(float(values[SOC]), 0, 100), 1)
        if autonomy is not None and has_battery and not has_fuel:
            energy["autonomy"] = autonomy
            used.add(RANGE)
        charging = _charging(values)
        if charging:
            energy["extension"] = {"electric": {"charging": charging}}
        out.append((energy, used))
    return out


def _engine(values: Values) -> dict[str, Any] | None:
    if not any(s in values for s in (ENGINE_SPEED, COOLANT, OIL)):
        return None
    engine: dict[str, Any] = {"type": "Thermic"}
    if ENGINE_SPEED in values:
        engine["speed"] = values[ENGINE_SPEED]
    thermic: dict[str, Any] = {}
    if COOLANT in values:
        thermic["coolant"] = {"temp": values[COOLANT]}
    if OIL in values:
        thermic["oil"] = {"temp": values[OIL]}
    if thermic:
        engine["extension"] = {"thermic": thermic}
    return engine


def _doors(values: Values) -> dict[str, Any] | None:
    part: dict[str, Any] = {}
    lock = LOCK_STATES.get(int(values[LOCK])) if LOCK in values else None
    if lock is not None:
        part["lockedStates"] = [lock]
    opening = [
        {"identifier": name, "state": "Open" if _truthy(values[sid]) else "Closed"}
        for sid, name in DOORS.items()
        if sid in values
    ]
    if opening:
        part["opening"] = opening
    return part or None


def _kinetic(values: Values) -> dict[str, Any] | None:
    part: dict[str, Any] = {}
    if ACCELERATION in values:
        part["acceleration"] = values[ACCELERATION]
    if SPEED in values:
        part["speed"] = values[SPEED]
        part["moving"] = float(values[SPEED]) > 0
    return part or None


def _gear(value: Value) -> str | None:
    gear = int(value)
    if gear == 0:
        return "Neutral"
    if gear < 0:
        return "Reverse"
    return f"Ratio{gear}" if gear <= 8 else None


def _alarm_status(lock: Value) -> str:
    return "Active" if int(lock) in (1, 2) else "Inactive"


# -- status ---------------------------------------------------------------------------------


def status(
    store: Store, vin: str, scopes: Iterable[Scope], privacy: Privacy
) -> dict[str, Any] | None:
    """The vehicle's latest status (the reference's Status, without ``_links``).

    ``None`` for a vehicle the store does not know. Each part carries the time of its newest
    sample as ``createdAt``; the status's ``createdAt`` and ``updatedAt`` are the newest of
    them. Telemetry parts need :attr:`Scope.TELEMETRY`, ``lastPosition`` and the alarm
    trigger's position :attr:`Scope.POSITION`, ``safety`` :attr:`Scope.COLLISION`; the
    ``privacy`` part (the setting given, dated from the store) is always there.
    """
    vehicle = store.vehicle(vin)
    if vehicle is None:
        return None
    visible = visible_scopes(scopes, privacy)
    data = _Samples(store, vin)
    state = data.state
    body: dict[str, Any] = {}
    times: list[int] = []

    def put(key: str, part: dict[str, Any] | None, sids: Iterable[int]) -> None:
        stamps = [state[s][0] for s in sids if s in state]
        if part is None or not stamps:
            return
        newest = max(stamps)
        times.append(newest)
        body[key] = {"createdAt": _time(newest), **part}

    if Scope.TELEMETRY in visible:
        values = {sid: v for sid, (_t, v) in state.items()}
        ignition = IGNITION_TYPES.get(int(values[IGNITION])) if IGNITION in values else None
        if ignition is not None:
            put("ignition", {"type": ignition}, [IGNITION])
        energies = []
        for energy, used in _energies(values, _energy_kinds(state)):
            newest = max(state[s][0] for s in used) if used else None
            if newest is not None:
                times.append(newest)
                energies.append({"createdAt": _time(newest), **energy})
        if energies:
            body["energies"] = energies
        engine = _engine(values)
        engine_sids = [s for s in (ENGINE_SPEED, COOLANT, OIL) if s in state]
        if engine is not None and engine_sids:
            newest = max(state[s][0] for s in engine_sids)
            times.append(newest)
            body["engines"] = [{"createdAt": _time(newest), **engine}]
        put("doorsState", _doors(values), [LOCK, *DOORS])
        if VOLTAGE in values:
            put("battery", {"voltage": values[VOLTAGE]}, [VOLTAGE])
        put("kinetic", _kinetic(values), [SPEED, ACCELERATION])
        if AIR in values:
            t_air = state[AIR][0]
            times.append(t_air)
            body["environment"] = {"air": {"createdAt": _time(t_air), "temp": values[AIR]}}
        if ODOMETER in values:
            put("odometer", {"mileage": max(0.0, float(values[ODOMETER]))}, [ODOMETER])
        precond = (
            PRECONDITIONING_STATES.get(int(values[PRECONDITIONING]))
            if PRECONDITIONING in values
            else None
        )
        if precond is not None:
            t_pre = state[PRECONDITIONING][0]
            times.append(t_pre)
            body["preconditioning"] = {
                "airConditioning": {"createdAt": _time(t_pre), "status": precond}
            }
        alarm = _status_alarm(data, Scope.POSITION in visible)
        if alarm is not None:
            body["alarm"] = alarm[0]
            times.append(alarm[1])
    if Scope.POSITION in visible:
        fix = _last_fix(data)
        if fix is not None:
            times.append(fix.t_ms)
            body["lastPosition"] = fix.feature()
    if Scope.COLLISION in visible and CRASH in state:
        t_crash, crashed = state[CRASH]
        times.append(t_crash)
        body["safety"] = {
            "createdAt": _time(t_crash),
            "autoECallTriggering": "Detected" if _truthy(crashed) else "NotDetected",
        }
    _setting, since = privacy_state(store, vin)
    t_privacy = since if since is not None else vehicle.last_seen_ms
    if not _ok_time(t_privacy):
        t_privacy = 0
    times.append(t_privacy)
    body["privacy"] = {"createdAt": _time(t_privacy), "state": PRIVACY_NAMES[privacy]}
    newest = max(times)
    return {"createdAt": _time(newest), "updatedAt": _time(newest), **body}


def _last_fix(data: _Samples) -> _Fix | None:
    state = data.state
    lat, lon = state.get(LAT), state.get(LON)
    if lat is None or lon is None:
        return None
    if lat[0] == lon[0] and -90 <= lat[1] <= 90 and -180 <= lon[1] <= 180:
        t = lat[0]

        def extra(sid: int) -> Value | None:
            found = state.get(sid)
            return found[1] if found is not None and abs(found[0] - t) <= _FIX_AGE_MS else None

        alt, heading, quality = extra(ALT), extra(HEADING), extra(QUALITY)
        return _Fix(
            t,
            float(lat[1]),
            float(lon[1]),
            None if alt is None else float(alt),
            None if heading is None else float(heading),
            None if quality is None else int(quality),
        )
    fixes = data.fixes()
    return fixes[-1] if fixes else None


def last_position(
    store: Store, vin: str, scopes: Iterable[Scope], privacy: Privacy
) -> dict[str, Any] | None:
    """The latest fix as a GeoJSON Feature; ``None`` when there is none or it is withheld."""
    if Scope.POSITION not in visible_scopes(scopes, privacy):
        return None
    fix = _last_fix(_Samples(store, vin))
    return None if fix is None else fix.feature()


# -- alarms -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AlarmEvent:
    t_ms: int
    kind: str  # "vehicle.alarm.status" | "vehicle.alarm.trigger"
    value: str  # activation or break-in type
    sid: int


def _alarm_events(data: _Samples) -> list[_AlarmEvent]:
    events: list[_AlarmEvent] = []
    last: str | None = None
    for t, v in data.series(LOCK):
        activation = _alarm_status(v)
        if activation != last:
            events.append(_AlarmEvent(t, ALARM_TYPES[0], activation, LOCK))
            last = activation
    for sid, kind in BREAK_IN.items():
        for opened, _closed in _edges(data.series(sid)):
            lock = data.at(LOCK, opened)
            if lock is not None and _alarm_status(lock[1]) == "Active":
                events.append(_AlarmEvent(opened, ALARM_TYPES[1], kind, sid))
    events.sort(key=lambda e: (e.t_ms, e.kind, e.sid))
    return events


def _alarm_body(data: _Samples, event: _AlarmEvent, positions: bool) -> dict[str, Any]:
    if event.kind == ALARM_TYPES[0]:
        return {"status": {"createdAt": _time(event.t_ms), "activation": event.value}}
    trigger: dict[str, Any] = {
        "createdAt": _time(event.t_ms),
        "type": event.value,
        "startAt": _time(event.t_ms),
    }
    if positions:
        fix = data.fix_near(event.t_ms)
        if fix is not None:
            trigger["position"] = fix.feature()
    return {"trigger": trigger}


def _status_alarm(data: _Samples, positions: bool) -> tuple[dict[str, Any], int] | None:
    """The alarm's current status and latest trigger, and the time of the newer."""
    events = _alarm_events(data)
    out: dict[str, Any] = {}
    for event in reversed(events):
        key = "status" if event.kind == ALARM_TYPES[0] else "trigger"
        if key not in out:
            out.update(_alarm_body(data, event, positions))
    return (out, events[-1].t_ms) if events else None


def alarms(
    store: Store,
    vin: str,
    scopes: Iterable[Scope],
    privacy: Privacy,
    *,
    types: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """The anti-theft alarm's history (the reference's AlarmDetails: ``id`` and one of
    ``status`` or ``trigger``), oldest first.

    A ``status`` at each arming (lock state Locked or SuperLocked: ``Active``) and disarming
    (``Inactive``); a ``trigger`` each time a door or the trunk opens while the car is
    locked (the lock state's last sample at or before the opening). ``types`` keeps
    ``vehicle.alarm.status``, ``vehicle.alarm.trigger`` or both (default). Needs
    :attr:`Scope.TELEMETRY`; a trigger's ``position`` needs :attr:`Scope.POSITION`.
    """
    wanted = _check_types(types, ALARM_TYPES, "alarm type")
    visible = visible_scopes(scopes, privacy)
    if Scope.TELEMETRY not in visible:
        return []
    data = _Samples(store, vin)
    positions = Scope.POSITION in visible
    return [
        {
            "id": _digest(vin, "alarm", e.kind, e.sid, e.t_ms),
            **_alarm_body(data, e, positions),
        }
        for e in _alarm_events(data)
        if e.kind in wanted
    ]


def _check_types(given: Iterable[str] | None, known: Sequence[str], what: str) -> frozenset[str]:
    if given is None:
        return frozenset(known)
    wanted = frozenset(given)
    unknown = sorted(wanted - set(known))
    if unknown:
        raise DeriveError(f"unknown {what} {', '.join(unknown)} (known: {', '.join(known)})")
    return wanted


# -- telemetry ----------------------------------------------------------------------------------


def _telemetry_types(types: Iterable[str] | None) -> frozenset[str]:
    wanted = _check_types(types, TELEMETRY_ALL_TYPES, "telemetry type")
    if "vehicle" in wanted:
        wanted |= {t for t in TELEMETRY_ALL_TYPES if t.startswith("vehicle.")}
    return wanted


def telemetry(
    store: Store,
    vin: str,
    scopes: Iterable[Scope],
    privacy: Privacy,
    *,
    types: Iterable[str] | None = None,
    extensions: Iterable[str] = (),
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> list[dict[str, Any]]:
    """Telemetry messages (the reference's Telemetry, without ``_links``), oldest first.

    One message per moment at which a signal of a wanted type was sampled, carrying every
    wanted part sampled at that moment (``privacy``, ``vehicle.{kinetic, odometer, engines,
    energies, ignition, doorsState, battery, transmission, alarm}``, ``environment``).
    ``types`` takes the reference's TelemetryEnum values (``vehicle`` means every
    ``vehicle.*``; default: all); :data:`TELEMETRY_TYPES` says which signal feeds which.
    ``extensions`` adds ``location`` (the last fix at or before the moment; needs
    :attr:`Scope.POSITION`) and ``maintenance`` (needs :attr:`Scope.MAINTENANCE`) under
    ``_embedded.extension``. ``start_ms``/``end_ms`` bound the moments (inclusive). Needs
    :attr:`Scope.TELEMETRY`; an unknown type or extension is a :class:`DeriveError`.
    """
    wanted = _telemetry_types(types)
    extras = _check_types(list(extensions), TELEMETRY_EXTENSIONS, "telemetry extension")
    visible = visible_scopes(scopes, privacy)
    if Scope.TELEMETRY not in visible:
        return []
    low = -math.inf if start_ms is None else start_ms
    high = math.inf if end_ms is None else end_ms
    data = _Samples(store, vin)
    kinds = _energy_kinds(data.state)
    moments: dict[int, dict[int, Value]] = {}
    for sid, kind in TELEMETRY_TYPES.items():
        if kind not in wanted or sid == PRIVACY:
            continue
        for t, v in data.within(sid, low, high):
            moments.setdefault(t, {})[sid] = v
    privacy_at: dict[int, int] = {}
    if "privacy" in wanted:
        for t, setting in _privacy_changes(store, vin):
            if low <= t <= high:
                privacy_at[t] = int(setting)
    alarm_at: dict[int, list[_AlarmEvent]] = {}
    for event in _alarm_events(data) if wanted & set(ALARM_TYPES) else []:
        if event.kind in wanted and low <= event.t_ms <= high:
            alarm_at.setdefault(event.t_ms, []).append(event)
    location = "location" in extras and Scope.POSITION in visible
    maintained = "maintenance" in extras and Scope.MAINTENANCE in visible
    out = []
    for t in sorted(set(moments) | set(privacy_at) | set(alarm_at)):
        message: dict[str, Any] = {"createdAt": _time(t)}
        if t in privacy_at:
            message["privacy"] = {"state": PRIVACY_NAMES[Privacy(privacy_at[t])]}
        vehicle = _telemetry_vehicle(moments.get(t, {}), kinds)
        for event in alarm_at.get(t, []):
            alarm = vehicle.setdefault("alarm", {})
            body = _alarm_body(data, event, Scope.POSITION in visible)
            alarm.update(
                {k: {f: x for f, x in v.items() if f != "createdAt"} for k, v in body.items()}
            )
        if vehicle:
            message["vehicle"] = vehicle
        values = moments.get(t, {})
        if AIR in values:
            message["environment"] = {"air": {"temp": values[AIR]}}
        extension: dict[str, Any] = {}
        if location:
            fix = data.fix_near(t)
            if fix is not None and fix.t_ms <= t:
                extension["location"] = fix.feature()
        if maintained:
            found = _maintenance_at(data, t)
            if found is not None:
                extension["maintenance"] = found
        if extension:
            message["_embedded"] = {"extension": extension}
        if len(message) > 1:
            out.append(message)
    return out


def _telemetry_vehicle(values: Values, kinds: tuple[bool, bool]) -> dict[str, Any]:
    vehicle: dict[str, Any] = {}
    kinetic = _kinetic(values)
    if kinetic is not None:
        vehicle["kinetic"] = kinetic
    if ODOMETER in values:
        vehicle["odometer"] = {"mileage": max(0.0, float(values[ODOMETER]))}
    engine = _engine(values)
    if engine is not None:
        vehicle["engines"] = [engine]
    energies = [energy for energy, _used in _energies(values, kinds)]
    if energies:
        vehicle["energies"] = energies
    if IGNITION in values:
        ignition = IGNITION_TYPES.get(int(values[IGNITION]))
        if ignition is not None:
            vehicle["ignition"] = {"type": ignition}
    doors = _doors(values)
    if doors is not None:
        vehicle["doorsState"] = doors
    if VOLTAGE in values:
        vehicle["battery"] = {"voltage": values[VOLTAGE]}
    if GEAR in values:
        ratio = _gear(values[GEAR])
        if ratio is not None:
            vehicle["transmission"] = {"gearbox": {"ratio": ratio}}
    return vehicle


# -- maintenance -------------------------------------------------------------------------------


def _maintenance_at(data: _Samples, t_ms: float) -> dict[str, Any] | None:
    days = data.at(DAYS_TO_SERVICE, t_ms)
    km = data.at(KM_TO_SERVICE, t_ms)
    if days is None and km is None:
        return None
    part: dict[str, Any] = {"createdAt": _time(max(p[0] for p in (days, km) if p is not None))}
    if days is not None:
        part["daysBeforeMaintenance"] = int(days[1])
    if km is not None:
        part["mileageBeforeMaintenance"] = float(km[1])
    return part


def maintenance(
    store: Store, vin: str, scopes: Iterable[Scope], privacy: Privacy
) -> dict[str, Any] | None:
    """The next service (the reference's Maintenance, without ``_links``), or ``None``.

    ``daysBeforeMaintenance`` and ``mileageBeforeMaintenance`` are the latest samples of
    signals 31 and 32 (negative when the service is overdue); ``createdAt`` is when the
    vehicle first reported them, ``updatedAt`` its latest report. Needs
    :attr:`Scope.MAINTENANCE`.
    """
    if Scope.MAINTENANCE not in visible_scopes(scopes, privacy):
        return None
    data = _Samples(store, vin)
    days, km = data.series(DAYS_TO_SERVICE), data.series(KM_TO_SERVICE)
    if not days and not km:
        return None
    first = min(s[0][0] for s in (days, km) if s)
    last = max(s[-1][0] for s in (days, km) if s)
    body: dict[str, Any] = {"createdAt": _time(first), "updatedAt": _time(last)}
    if days:
        body["daysBeforeMaintenance"] = int(days[-1][1])
    if km:
        body["mileageBeforeMaintenance"] = float(km[-1][1])
    return body


# -- alerts and collisions ---------------------------------------------------------------------


def _alert_list(
    data: _Samples, vin: str, positions: bool, low: float, high: float
) -> list[dict[str, Any]]:
    out = []
    for sid, (kind, severity) in ALERT_TYPES.items():
        for started, ended in _edges(data.series(sid)):
            if started > high or (ended is not None and ended < low):
                continue
            alert: dict[str, Any] = {
                "id": _digest(vin, "alert", sid, started),
                "createdAt": _time(started),
                "updatedAt": _time(started if ended is None else ended),
                "type": kind,
                "severity": severity,
                "active": ended is None,
                "startedAt": _time(started),
            }
            if ended is not None:
                alert["endAt"] = _time(ended)
            if positions:
                fix = data.fix_near(started)
                if fix is not None:
                    alert["startPosition"] = fix.feature()
                end_fix = data.fix_near(ended) if ended is not None else None
                if end_fix is not None:
                    alert["endPosition"] = end_fix.feature()
            out.append(alert)
    out.sort(key=lambda a: (a["startedAt"], a["type"]))
    return out


def alerts(
    store: Store, vin: str, scopes: Iterable[Scope], privacy: Privacy
) -> list[dict[str, Any]]:
    """Alerts (the reference's Alert, without ``_links``), oldest first.

    One per rising edge of signals 33-39 (:data:`ALERT_TYPES` gives each its AlertMsgEnum
    type and a severity), ``active`` until the signal falls (``endAt``). The id is stable
    (the vehicle, the signal, the start). Needs :attr:`Scope.ALERT`; ``startPosition`` and
    ``endPosition`` (the last fix at or before the moment) need :attr:`Scope.POSITION`.
    """
    visible = visible_scopes(scopes, privacy)
    if Scope.ALERT not in visible:
        return []
    data = _Samples(store, vin)
    return _alert_list(data, vin, Scope.POSITION in visible, -math.inf, math.inf)


def _collision_list(
    data: _Samples, vin: str, positions: bool, low: float, high: float
) -> list[dict[str, Any]]:
    out = []
    for t, _ended in _edges(data.series(CRASH)):
        if not low <= t <= high:
            continue
        collision: dict[str, Any] = {
            "id": _digest(vin, "collision", t),
            "createdAt": _time(t),
            "updatedAt": _time(t),
        }
        before = data.at(SPEED, t - 1, max_age_ms=10_000)
        if before is not None:
            collision["kinetic"] = {"createdAt": _time(before[0]), "speed": before[1]}
        if positions:
            fix = data.fix_near(t)
            if fix is not None:
                collision["position"] = fix.feature()
        out.append(collision)
    return out


def collisions(
    store: Store, vin: str, scopes: Iterable[Scope], privacy: Privacy
) -> list[dict[str, Any]]:
    """Collisions (the reference's Collision, without ``_links``), oldest first.

    One per rising edge of the crash signal (12), with a stable id. Beyond the reference:
    ``kinetic.speed``, the last speed sample in the ten seconds before the crash, and
    ``position``, the fix nearest the crash (the last at or before it; needs
    :attr:`Scope.POSITION`). Needs :attr:`Scope.COLLISION`.
    """
    visible = visible_scopes(scopes, privacy)
    if Scope.COLLISION not in visible:
        return []
    data = _Samples(store, vin)
    return _collision_list(data, vin, Scope.POSITION in visible, -math.inf, math.inf)


# -- trips ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trip:
    """One trip: ignition on (On or Start) to ignition off; ``stop_ms`` is ``None`` while it
    runs. ``body`` is the reference's Trip without ``_links``."""

    id: str
    start_ms: int
    stop_ms: int | None
    body: dict[str, Any] = field(compare=False)

    @property
    def end_ms(self) -> float:
        """The end of the trip's window (infinity while it runs)."""
        return math.inf if self.stop_ms is None else self.stop_ms


@dataclass(frozen=True, slots=True)
class _Span:
    start_ms: int
    stop_ms: int | None
    unstarted: bool  # the first ignition sample ever was already on
    previous_stop_ms: int | None
    next_start_ms: int | None


def _spans(data: _Samples) -> list[_Span]:
    raw: list[tuple[int, int | None, bool]] = []
    on: int | None = None
    unstarted = False
    seen = False
    for t, v in data.series(IGNITION):
        is_on = v in IGNITION_ON
        if is_on and on is None:
            on, unstarted = t, not seen
        elif not is_on and on is not None:
            raw.append((on, t, unstarted))
            on = None
        seen = True
    if on is not None:
        raw.append((on, None, unstarted))
    spans = []
    for i, (start, stop, unstarted_) in enumerate(raw):
        previous = raw[i - 1][1] if i else None
        following = raw[i + 1][0] if i + 1 < len(raw) else None
        spans.append(_Span(start, stop, unstarted_, previous, following))
    return spans


def _distance_km(data: _Samples, span: _Span, end: float) -> float:
    """The odometer's advance when samples bracket the trip, else the integrated speed."""
    if span.stop_ms is not None:
        before = data.at(ODOMETER, span.start_ms)
        after = data.after(ODOMETER, span.stop_ms)
        if (
            before is not None
            and after is not None
            and (span.previous_stop_ms is None or before[0] >= span.previous_stop_ms)
            and (span.next_start_ms is None or after[0] <= span.next_start_ms)
        ):
            return max(0.0, float(after[1]) - float(before[1]))
    speeds = data.within(SPEED, span.start_ms, end)
    km = 0.0
    for (t0, v0), (t1, _v1) in itertools.pairwise(speeds):
        if t1 - t0 <= _GAP_MS:
            km += (t1 - t0) / 3_600_000 * max(0.0, float(v0))
    return km


def _lite_energies(data: _Samples, t_ms: float, kinds: tuple[bool, bool]) -> list[dict[str, Any]]:
    values: dict[int, Value] = {}
    for sid in (FUEL, SOC, RANGE):
        found = data.near(sid, t_ms)
        if found is not None:
            values[sid] = found[1]
    return [
        {k: v for k, v in energy.items() if k in ("type", "subType", "level", "autonomy")}
        for energy, _used in _energies(values, kinds)
        if energy["type"] == "Fuel" or SOC in values
    ]


def _faults(
    data: _Samples, span: _Span, end: float, privacy: Sequence[tuple[int, Privacy]]
) -> list[dict[str, str]]:
    faults: list[dict[str, str]] = []
    if span.unstarted:
        faults.append({"fault": "Unstarted", "cause": "Connection"})
    speeds = data.within(SPEED, span.start_ms, end)
    last = end if span.stop_ms is not None else (speeds[-1][0] if speeds else span.start_ms)
    stamps = [span.start_ms, *(t for t, _v in speeds), last]
    if any(b - a > _GAP_MS for a, b in itertools.pairwise(stamps)):
        faults.append({"fault": "DataLacking", "cause": "Connection"})
    settings = set()
    current = Privacy.NONE
    for t, setting in privacy:
        if t <= span.start_ms:
            current = setting
        elif t <= end:
            settings.add(setting)
    settings.add(current)
    if Privacy.GEOLOCATION in settings:
        faults.append({"fault": "DataLacking", "cause": "GeoPrivacy"})
    if Privacy.FULL in settings:
        faults.append({"fault": "DataLacking", "cause": "FullPrivacy"})
    return faults


@dataclass(frozen=True, slots=True)
class _TripContext:
    """What every trip of one vehicle is computed with."""

    data: _Samples
    vin: str
    positions: bool
    privacy: Sequence[tuple[int, Privacy]]
    kinds: tuple[bool, bool]
    capacities: Mapping[str, float]


def _trip(ctx: _TripContext, span: _Span) -> Trip:
    data, kinds = ctx.data, ctx.kinds
    start, stop = span.start_ms, span.stop_ms
    end = math.inf if stop is None else stop
    speeds = data.within(SPEED, start, end)
    running_until = speeds[-1][0] if speeds else start
    last = stop if stop is not None else running_until
    trip_id = _digest(ctx.vin, "trip", start)
    km = _distance_km(data, span, end)
    seconds = max(0, (last - start) // 1000)
    body: dict[str, Any] = {
        "id": trip_id,
        "createdAt": _time(start),
        "updatedAt": _time(last),
        "startedAt": _time(start),
    }
    if stop is not None:
        body["stoppedAt"] = _time(stop)
    body["duration"] = seconds
    body["distance"] = round(km, 3)
    mileage = data.near(ODOMETER, start)
    if mileage is not None:
        body["startMileage"] = max(0.0, float(mileage[1]))
    start_energies = _lite_energies(data, start, kinds)
    end_energies = _lite_energies(data, last, kinds)
    if start_energies:
        body["startEnergies"] = start_energies
    if end_energies:
        body["endEnergies"] = end_energies
    consumptions = _consumptions(start_energies, end_energies, km, ctx.capacities)
    if consumptions:
        body["energyConsumptions"] = consumptions
    if speeds:
        hours = seconds / 3600
        body["kinetic"] = {
            "avgSpeed": round(km / hours, 1) if hours > 0 else 0.0,
            "maxSpeed": max(float(v) for _t, v in speeds),
        }
    body["done"] = stop is not None
    if ctx.positions:
        first = data.fix_near(start)
        if first is not None:
            body["startPosition"] = first.feature()
        final = data.fix_near(last)
        if stop is not None and final is not None:
            body["stopPosition"] = final.feature()
    faults = _faults(data, span, end, ctx.privacy)
    if faults:
        body["faults"] = faults
    return Trip(trip_id, start, stop, body)


def _consumptions(
    start: Sequence[Mapping[str, Any]],
    end: Sequence[Mapping[str, Any]],
    km: float,
    capacities: Mapping[str, float],
) -> list[dict[str, Any]]:
    """Energy used, where the capacity is known: fuel in L, electricity in kWh."""
    out = []
    for energy_type, capacity in capacities.items():
        first = next((e for e in start if e["type"] == energy_type and "level" in e), None)
        final = next((e for e in end if e["type"] == energy_type and "level" in e), None)
        if first is None or final is None or capacity <= 0:
            continue
        used = max(0.0, (first["level"] - final["level"]) / 100 * capacity)
        consumption: dict[str, Any] = {"type": energy_type, "consumption": round(used, 2)}
        if km > 0:
            # per 100 km: cL for fuel, Wh for electricity
            scale = 100 if energy_type == "Fuel" else 1000
            consumption["avgConsumption"] = round(used * scale / km * 100, 1)
        out.append(consumption)
    return out


_CAPACITY_KEYS = ("Fuel", "Electric")


def trips(
    store: Store,
    vin: str,
    scopes: Iterable[Scope],
    privacy: Privacy,
    *,
    capacities: Mapping[str, float] | None = None,
) -> list[Trip]:
    """The vehicle's trips, oldest first (empty without :attr:`Scope.TRIP`).

    A trip runs from the ignition turning On or Start to its next sample that is neither;
    one still running has no ``stoppedAt`` and ``done`` false. The id is stable (vehicle and
    start time). ``duration`` is in seconds (the reference's integer), ``distance`` in km:
    the odometer's advance when an odometer sample precedes the start and another follows
    the stop (and neither belongs to another trip), else the speed integrated over time.
    ``startEnergies``/``endEnergies`` give the fuel and battery levels at both ends;
    ``energyConsumptions`` only for the energies ``capacities`` knows (``{"Fuel": litres,
    "Electric": kWh}``). ``faults``: ``Unstarted`` (the ignition was on in its first
    sample), ``DataLacking`` with cause ``Connection`` (speed samples more than 15 s apart)
    or ``GeoPrivacy``/``FullPrivacy`` (the setting withheld data during the trip).
    ``startPosition``/``stopPosition`` need :attr:`Scope.POSITION`.
    """
    visible = visible_scopes(scopes, privacy)
    if Scope.TRIP not in visible:
        return []
    known = dict(capacities or {})
    unknown = sorted(set(known) - set(_CAPACITY_KEYS))
    if unknown:
        raise DeriveError(f"unknown energy {', '.join(unknown)} (known: Fuel, Electric)")
    data = _Samples(store, vin)
    ctx = _TripContext(
        data,
        vin,
        positions=Scope.POSITION in visible,
        privacy=_privacy_changes(store, vin),
        kinds=_energy_kinds(data.state),
        capacities=known,
    )
    return [_trip(ctx, span) for span in _spans(data)]


def trip(
    store: Store,
    vin: str,
    trip_id: str,
    scopes: Iterable[Scope],
    privacy: Privacy,
    *,
    capacities: Mapping[str, float] | None = None,
) -> Trip | None:
    """The trip with this id, or ``None`` (unknown, or :attr:`Scope.TRIP` not visible)."""
    return next(
        (t for t in trips(store, vin, scopes, privacy, capacities=capacities) if t.id == trip_id),
        None,
    )


def _trip_span(
    store: Store, vin: str, trip_id: str, scopes: Iterable[Scope], privacy: Privacy
) -> tuple[_Samples, _Span] | None:
    if Scope.TRIP not in visible_scopes(scopes, privacy):
        return None
    data = _Samples(store, vin)
    for span in _spans(data):
        if _digest(vin, "trip", span.start_ms) == trip_id:
            return data, span
    return None


def trip_waypoints(
    store: Store,
    vin: str,
    trip_id: str,
    scopes: Iterable[Scope],
    privacy: Privacy,
    *,
    tolerance_km: float | None = None,
) -> list[dict[str, Any]] | None:
    """The fixes of a trip as Positions, oldest first; ``None`` for a trip unknown or not
    visible (no :attr:`Scope.TRIP`, or privacy ``Full``).

    Empty without :attr:`Scope.POSITION` (or under ``Geolocation``). ``tolerance_km``
    simplifies the path (Ramer-Douglas-Peucker): a fix closer than that to the line
    between its kept neighbours is left out; the first and the last are always kept.
    """
    if tolerance_km is not None and not (tolerance_km >= 0 and math.isfinite(tolerance_km)):
        raise DeriveError(f"tolerance must be a finite distance >= 0 km, not {tolerance_km}")
    found = _trip_span(store, vin, trip_id, scopes, privacy)
    if found is None:
        return None
    if Scope.POSITION not in visible_scopes(scopes, privacy):
        return []
    data, span = found
    end = math.inf if span.stop_ms is None else span.stop_ms
    fixes = [f for f in data.fixes() if span.start_ms <= f.t_ms <= end]
    if tolerance_km:
        fixes = _simplify(fixes, tolerance_km)
    return [f.feature() for f in fixes]


def _simplify(fixes: Sequence[_Fix], tolerance_km: float) -> list[_Fix]:
    """Ramer-Douglas-Peucker on a local flat projection (km)."""
    if len(fixes) < 3:
        return list(fixes)
    lat0 = math.radians(fixes[0].lat)
    xy = [
        (math.radians(f.lon) * math.cos(lat0) * 6371.0, math.radians(f.lat) * 6371.0) for f in fixes
    ]
    keep = [False] * len(fixes)
    keep[0] = keep[-1] = True
    stack = [(0, len(fixes) - 1)]
    while stack:
        first, last = stack.pop()
        (ax, ay), (bx, by) = xy[first], xy[last]
        dx, dy = bx - ax, by - ay
        norm = math.hypot(dx, dy)
        worst, worst_i = -1.0, -1
        for i in range(first + 1, last):
            px, py = xy[i]
            if norm == 0:
                d = math.hypot(px - ax, py - ay)
            else:
                d = abs(dy * (px - ax) - dx * (py - ay)) / norm
            if d > worst:
                worst, worst_i = d, i
        if worst_i > 0 and worst > tolerance_km:
            keep[worst_i] = True
            stack.extend([(first, worst_i), (worst_i, last)])
    return [f for f, k in zip(fixes, keep, strict=True) if k]


def trip_telemetry(
    store: Store,
    vin: str,
    trip_id: str,
    scopes: Iterable[Scope],
    privacy: Privacy,
    *,
    types: Iterable[str] | None = None,
    extensions: Iterable[str] = (),
) -> list[dict[str, Any]] | None:
    """:func:`telemetry` within a trip; ``None`` for a trip unknown or not visible."""
    found = _trip_span(store, vin, trip_id, scopes, privacy)
    if found is None:
        return None
    _data, span = found
    return telemetry(
        store,
        vin,
        scopes,
        privacy,
        types=types,
        extensions=extensions,
        start_ms=span.start_ms,
        end_ms=span.stop_ms,
    )


def _trip_events(
    store: Store,
    vin: str,
    trip_id: str,
    scopes: Iterable[Scope],
    privacy: Privacy,
    *,
    scope: Scope,
    build: Callable[[_Samples, str, bool, float, float], list[dict[str, Any]]],
) -> list[dict[str, Any]] | None:
    found = _trip_span(store, vin, trip_id, scopes, privacy)
    if found is None:
        return None
    visible = visible_scopes(scopes, privacy)
    if scope not in visible:
        return []
    data, span = found
    end = math.inf if span.stop_ms is None else span.stop_ms
    return build(data, vin, Scope.POSITION in visible, span.start_ms, end)


def trip_alerts(
    store: Store, vin: str, trip_id: str, scopes: Iterable[Scope], privacy: Privacy
) -> list[dict[str, Any]] | None:
    """The alerts active at some time during a trip (needs :attr:`Scope.ALERT`); ``None``
    for a trip unknown or not visible."""
    return _trip_events(store, vin, trip_id, scopes, privacy, scope=Scope.ALERT, build=_alert_list)


def trip_collisions(
    store: Store, vin: str, trip_id: str, scopes: Iterable[Scope], privacy: Privacy
) -> list[dict[str, Any]] | None:
    """The collisions during a trip (needs :attr:`Scope.COLLISION`); ``None`` for a trip
    unknown or not visible."""
    return _trip_events(
        store, vin, trip_id, scopes, privacy, scope=Scope.COLLISION, build=_collision_list
    )
