"""A drive: what the driver does and where the car goes, as functions of time."""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Drive",
    "DriveEvent",
    "Route",
    "city_drive",
    "commute",
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
        times = tuple(float(t) for t, _ in self.speed_profile)
        if not times or list(times) != sorted(times):
            raise ValueError("the speed profile needs increasing times")
        if any(v < 0 for _, v in self.speed_profile):
            raise ValueError("speeds must not be negative")
        object.__setattr__(self, "_times", times)
        object.__setattr__(self, "_speeds", tuple(float(v) for _, v in self.speed_profile))

    def speed_at(self, t_s: float) -> float:
        """The target speed in km/h at ``t_s``."""
        times: tuple[float, ...] = self._times  # type: ignore[attr-defined]
        speeds: tuple[float, ...] = self._speeds  # type: ignore[attr-defined]
        if t_s <= times[0]:
            return speeds[0]
        if t_s >= times[-1]:
            return speeds[-1]
        i = bisect.bisect_right(times, t_s)
        t0, t1 = times[i - 1], times[i]
        v0 = speeds[i - 1]
        return v0 + (speeds[i] - v0) * (t_s - t0) / (t1 - t0)

    @property
    def length_km(self) -> float:
        """The distance the speed profile covers (followed exactly, without the car's limits)."""
        times: tuple[float, ...] = self._times  # type: ignore[attr-defined]
        speeds: tuple[float, ...] = self._speeds  # type: ignore[attr-defined]
        metres = sum(
            (speeds[i] + speeds[i + 1]) / 7.2 * (times[i + 1] - times[i])
            for i in range(len(times) - 1)
        )
        return metres / 1000


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


_ACCEL_KMH_S = 2.5 * 3.6  # how briskly the commuter speeds up and slows down (km/h per s)


def _there_and_back(route: Route, km: float) -> Route:
    """``route`` driven forth and back as often as it takes to cover ``km``."""
    points = list(route.points)
    covered = route.length_m
    forth = True
    while covered < km * 1000:
        leg = route.points[::-1] if forth else route.points
        points.extend(leg[1:])
        covered += route.length_m
        forth = not forth
    return Route(tuple(points), route.altitude_m)


def commute(minutes: float = 60.0, seed: int = 0) -> Drive:
    """A commute of ``minutes``: town with traffic lights, main roads, a jam, and a stop.

    Like :func:`city_drive` it begins with unlocking, the door and the start, and ends with
    parking, the door and locking; between, a seeded mix of town stretches (30-50 km/h, most
    ending at a red light), main roads (70-90 km/h), fast roads (110-130 km/h) and slow
    traffic. A drive of 20 minutes or more stops halfway for a few minutes with the engine off
    and the driver getting out. The route is the Poissy - La Defense road, driven back and
    forth as long as the drive needs.
    """
    if minutes < 2:
        raise ValueError("a commute lasts at least 2 minutes")
    rng = random.Random(seed)
    total = minutes * 60.0
    drive_start, drive_end = 40.0, total - 60.0
    profile: list[tuple[float, float]] = [(0.0, 0.0), (drive_start + 5, 0.0)]
    events = [
        DriveEvent(20.0, {LOCK: 0}),
        DriveEvent(25.0, {DRIVER_DOOR: 1}),
        DriveEvent(30.0, {DRIVER_DOOR: 0}),
        DriveEvent(drive_start, {IGNITION: 3}),
        DriveEvent(drive_start + 1.5, {IGNITION: 2}),
    ]
    halfway = drive_start + (drive_end - drive_start) / 2 if minutes >= 20 else math.inf

    def go(speed: float, hold_s: float) -> None:
        t, v = profile[-1]
        t += abs(speed - v) / _ACCEL_KMH_S
        profile.append((t, speed))
        profile.append((t + hold_s, speed))

    while True:
        t = profile[-1][0]
        if t >= halfway:
            halfway = math.inf
            go(0.0, 0.0)
            stop = profile[-1][0]
            pause = rng.uniform(150.0, 240.0)
            events += [
                DriveEvent(stop + 5, {IGNITION: 0}),
                DriveEvent(stop + 10, {DRIVER_DOOR: 1}),
                DriveEvent(stop + 14, {DRIVER_DOOR: 0}),
                DriveEvent(stop + pause - 25, {DRIVER_DOOR: 1}),
                DriveEvent(stop + pause - 20, {DRIVER_DOOR: 0}),
                DriveEvent(stop + pause - 10, {IGNITION: 3}),
                DriveEvent(stop + pause - 8.5, {IGNITION: 2}),
            ]
            profile.append((stop + pause, 0.0))
            continue
        kind = rng.choices(("town", "main", "fast", "jam"), weights=(5, 3, 1, 1))[0]
        if kind == "town":
            speed, hold = rng.choice((30.0, 40.0, 50.0)), rng.uniform(30.0, 120.0)
        elif kind == "main":
            speed, hold = rng.uniform(70.0, 90.0), rng.uniform(90.0, 300.0)
        elif kind == "fast":
            speed, hold = rng.uniform(110.0, 130.0), rng.uniform(120.0, 360.0)
        else:
            speed, hold = rng.uniform(5.0, 15.0), rng.uniform(60.0, 180.0)
        speed = round(speed)
        ramps = (abs(speed - profile[-1][1]) + speed) / _ACCEL_KMH_S
        budget = drive_end - t - ramps - 5
        if budget <= 0:
            break
        go(speed, min(hold, budget))
        red = rng.uniform(15.0, 50.0)
        down = speed / _ACCEL_KMH_S
        if kind == "town" and rng.random() < 0.6 and profile[-1][0] + down + red < drive_end - 5:
            go(0.0, red)  # a red light
    go(0.0, 0.0)
    end = profile[-1][0]
    profile += [(drive_end, 0.0), (total, 0.0)]
    events += [
        DriveEvent(drive_end + 10, {IGNITION: 0}),
        DriveEvent(drive_end + 15, {DRIVER_DOOR: 1}),
        DriveEvent(drive_end + 20, {DRIVER_DOOR: 0}),
        DriveEvent(drive_end + 30, {LOCK: 1}),
    ]
    assert end <= drive_end
    provisional = Drive(duration_s=total, route=WEST_PARIS, speed_profile=profile)
    route = _there_and_back(WEST_PARIS, provisional.length_km)
    return Drive(duration_s=total, route=route, speed_profile=profile, events=events)
