"""A drive: what the driver does and where the car goes, as functions of time."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Drive",
    "DriveEvent",
    "Route",
    "city_drive",
    "haversine_m",
]

EARTH_RADIUS_M = 6_371_008.8


def haversine_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in metres between two (lat, lon) points in degrees."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def _bearing(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    y = math.sin(lon2 - lon1) * math.cos(lat2)
    x = math.cos(lat1) * math.sin(lat2) - math.sin(lat1) * math.cos(lat2) * math.cos(lon2 - lon1)
    return (math.degrees(math.atan2(y, x)) + 360) % 360


@dataclass(frozen=True)
class Route:
    """A polyline of (lat, lon) way points; positions are found by distance along it."""

    points: tuple[tuple[float, float], ...]
    altitude_m: float = 40.0

    def __post_init__(self) -> None:
        if len(self.points) < 2:
            raise ValueError("a route needs at least two points")
        for lat, lon in self.points:
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ValueError(f"({lat}, {lon}) is not a position")
        cumulative = [0.0]
        for a, b in zip(self.points, self.points[1:], strict=False):
            cumulative.append(cumulative[-1] + haversine_m(a, b))
        object.__setattr__(self, "_cumulative", tuple(cumulative))

    @property
    def length_m(self) -> float:
        """The route's length."""
        return self._cumulative[-1]  # type: ignore[attr-defined,no-any-return]

    def at(self, distance_m: float) -> tuple[float, float, float]:
        """(lat, lon, heading) at a distance along the route (held at the end)."""
        cumulative: tuple[float, ...] = self._cumulative  # type: ignore[attr-defined]
        d = min(max(distance_m, 0.0), cumulative[-1])
        i = max(1, min(bisect.bisect_right(cumulative, d), len(cumulative) - 1))
        a, b = self.points[i - 1], self.points[i]
        span = cumulative[i] - cumulative[i - 1]
        f = (d - cumulative[i - 1]) / span if span > 0 else 0.0
        return a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, _bearing(a, b)


@dataclass(frozen=True)
class DriveEvent:
    """At ``at_s`` seconds into the drive, set these logical signals (catalog names)."""

    at_s: float
    set: Mapping[str, float | int]


@dataclass(frozen=True)
class Drive:
    """A driver's timeline: events, a speed profile (piecewise linear) and a route."""

    duration_s: float
    route: Route
    speed_profile: Sequence[tuple[float, float]]  # (t_s, km/h)
    events: Sequence[DriveEvent] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        times = [t for t, _ in self.speed_profile]
        if not times or times != sorted(times):
            raise ValueError("the speed profile needs increasing times")
        if any(v < 0 for _, v in self.speed_profile):
            raise ValueError("speeds must not be negative")

    def speed_at(self, t_s: float) -> float:
        """The target speed in km/h at ``t_s``."""
        profile = self.speed_profile
        if t_s <= profile[0][0]:
            return profile[0][1]
        if t_s >= profile[-1][0]:
            return profile[-1][1]
        i = bisect.bisect_right([t for t, _ in profile], t_s)
        (t0, v0), (t1, v1) = profile[i - 1], profile[i]
        return v0 + (v1 - v0) * (t_s - t0) / (t1 - t0)


# Poissy to La Défense along the Seine, through Saint-Germain-en-Laye and Rueil-Malmaison.
WEST_PARIS = Route(
    (
        (48.92900, 2.04600),
        (48.91720, 2.06750),
        (48.89800, 2.09380),
        (48.89370, 2.10690),
        (48.88600, 2.14000),
        (48.87740, 2.18040),
        (48.88400, 2.21200),
        (48.89200, 2.23600),
    )
)

IGNITION = "Vehicle.LowVoltageSystemState"
DRIVER_DOOR = "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"
LOCK = "Vehicle.Cabin.DoorsLockState"


def city_drive(minutes: float = 10.0) -> Drive:
    """A short commute: unlock, get in, start, drive with stops, park, get out, lock."""
    total = minutes * 60.0
    drive_start, drive_end = 40.0, total - 60.0
    span = drive_end - drive_start
    profile: list[tuple[float, float]] = [(0.0, 0.0), (drive_start + 5, 0.0)]
    # A rhythm of town (50 km/h), a red light, then the main road (90 km/h).
    legs = [
        (0.10, 50.0),
        (0.20, 50.0),
        (0.25, 0.0),
        (0.30, 0.0),
        (0.40, 70.0),
        (0.75, 90.0),
        (0.85, 50.0),
        (0.95, 30.0),
        (1.0, 0.0),
    ]
    profile += [(drive_start + 5 + (span - 5) * f, v) for f, v in legs]
    profile.append((total, 0.0))
    events = [
        DriveEvent(20.0, {LOCK: 0}),
        DriveEvent(25.0, {DRIVER_DOOR: 1}),
        DriveEvent(30.0, {DRIVER_DOOR: 0}),
        DriveEvent(drive_start, {IGNITION: 3}),
        DriveEvent(drive_start + 1.5, {IGNITION: 2}),
        DriveEvent(drive_end + 10, {IGNITION: 0}),
        DriveEvent(drive_end + 15, {DRIVER_DOOR: 1}),
        DriveEvent(drive_end + 20, {DRIVER_DOOR: 0}),
        DriveEvent(drive_end + 30, {LOCK: 1}),
    ]
    return Drive(duration_s=total, route=WEST_PARIS, speed_profile=profile, events=events)
