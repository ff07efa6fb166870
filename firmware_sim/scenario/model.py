"""The scenario language: a vehicle, a route, a timeline of actions, faults and expectations.

A scenario is a YAML file (``format: tcusim-scenario/1``) or the same structure built in
Python. Every fault in a file is reported with the file, the line and the field.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from can_dbc.catalog import default_catalog
from can_dbc.errors import MappingError
from can_dbc.network import CommandAction
from firmware_sim.command_link import CommandSettings
from firmware_sim.config import TcuConfig
from firmware_sim.downlink import (
    MAX_VALIDITY_MS,
    DownlinkError,
    FailureCause,
    RemoteStatus,
    new_command,
    sign_command,
)
from firmware_sim.errors import ConfigError
from firmware_sim.payload import Privacy, Trigger
from firmware_sim.scenario.yamlpos import PosDict, PosList, ScenarioError, load_yaml
from firmware_sim.sim.drive import Route
from firmware_sim.sim.physics import Energy

__all__ = [
    "BODY_ACTIONS",
    "FORMAT",
    "Action",
    "Expectation",
    "Fault",
    "Remote",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "parse_duration",
    "parse_scenario",
]

FORMAT = "tcusim-scenario/1"
DEFAULT_START = "2026-01-05T07:30:00Z"

_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?!s))?\s*"
    r"(?:(\d+(?:\.\d+)?)s)?\s*(?:(\d+)ms)?\s*$"
)

ALERTS = {
    "engine_fault": "Vehicle.Alert.EngineFault",
    "oil_pressure": "Vehicle.Alert.OilPressure",
    "coolant_temperature": "Vehicle.Alert.CoolantTemperature",
    "brake_fault": "Vehicle.Alert.BrakeFault",
    "battery_charge": "Vehicle.Alert.BatteryCharge",
    "low_fuel": "Vehicle.Alert.LowFuel",
    "tire_pressure": "Vehicle.Alert.TirePressure",
}
DOORS = {
    "driver": "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen",
    "passenger": "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen",
    "rear_left": "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen",
    "rear_right": "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen",
    "trunk": "Vehicle.Body.Trunk.Rear.IsOpen",
}
LOCKS = {"unlocked": 0, "locked": 1, "superlocked": 2}
IGNITION = {"off": 0, "accessory": 1, "on": 2, "start": 3}
PRIVACY = {"none": Privacy.NONE, "geolocation": Privacy.GEOLOCATION, "full": Privacy.FULL}
PRECONDITIONING = {"off": 0, "on": 1}
FAULTS = (
    "broker_outage",
    "link_loss",
    "power_cut",
    "can_silence",
    "bus_off",
    "gnss_loss",
    "clock_jump",
    "body_deaf",
    "actuator_failure",
)
#: The body controller's requests by the names a scenario gives them (actuation delays,
#: actuator failures): a remote action's name stands for every request it makes.
BODY_ACTIONS: dict[str, tuple[CommandAction, ...]] = {
    "wakeup": (CommandAction.WAKE_UP,),
    "horn": (CommandAction.HORN,),
    "lights": (CommandAction.LIGHTS,),
    "lock": (CommandAction.LOCK,),
    "unlock": (CommandAction.UNLOCK,),
    "precond": (CommandAction.PRECOND_START, CommandAction.PRECOND_STOP),
    "precond_start": (CommandAction.PRECOND_START,),
    "precond_stop": (CommandAction.PRECOND_STOP,),
    "charge": (
        CommandAction.CHARGE_START,
        CommandAction.CHARGE_STOP,
        CommandAction.CHARGE_DEFERRED,
    ),
    "charge_start": (CommandAction.CHARGE_START,),
    "charge_stop": (CommandAction.CHARGE_STOP,),
    "charge_deferred": (CommandAction.CHARGE_DEFERRED,),
}
# vehicle.commands: the scenario's key -> CommandSettings' field (durations, then counts).
_COMMAND_DURATIONS = {
    "feedback_timeout": "feedback_timeout_ms",
    "completion_timeout": "completion_timeout_ms",
    "wake_timeout": "wake_timeout_ms",
    "stay_awake": "stay_awake_ms",
    "wake_delay": "wake_delay_ms",
    "clock_skew": "clock_skew_ms",
}
_COMMAND_COUNTS = {"max_queue": 1, "monthly_wakeups": 0}  # and their least value
TRIGGERS = {t.name.lower(): t for t in Trigger}
REMOTE_ACTIONS = (
    "horn",
    "lights",
    "lock",
    "unlock",
    "precond",
    "charge",
    "wakeup",
    "stolen",
    "immobilize",
)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_SETS = {"weekdays": 0b0011111, "weekend": 0b1100000, "daily": 0b1111111}
DEFAULT_VALIDITY_MS = 10 * 60 * 1000
_TIME_OF_DAY = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*$")


def parse_duration(value: object) -> int:
    """Milliseconds from seconds (``90``, ``1.5``) or text (``"30s"``, ``"1h30m"``, ``"9ms"``)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{value!r} is not a duration")
        return round(value * 1000)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m and any(m.groups()):
            h, mins, secs, ms = (float(g) if g else 0.0 for g in m.groups())
            return round(((h * 60 + mins) * 60 + secs) * 1000 + ms)
    raise ValueError(f"{value!r} is not a duration (say 90, 30s, 5m, 1h30m or 250ms)")


@dataclass(frozen=True)
class Action:
    """What the driver or the car does at ``at_ms`` after the start."""

    at_ms: int
    kind: str  # ignition | drive | door | lock | plug | charge | privacy | crash | alert |
    #            low_battery | refuel | precondition | remote (value: a Remote)
    value: Any
    line: int | None = None

    def describe(self) -> str:
        """A short human description."""
        return f"{self.kind} {self.value}" if self.kind != "drive" else "drive"


@dataclass(frozen=True)
class Remote:
    """A remote command the app sends: ``params`` are the command's, as on the wire."""

    id: str
    action: str  # one of REMOTE_ACTIONS
    params: Mapping[str, Any]
    validity_ms: int = DEFAULT_VALIDITY_MS

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.id}: {self.action}" + (f" ({args})" if args else "")


@dataclass(frozen=True)
class Fault:
    """Something going wrong from ``at_ms`` for ``duration_ms``."""

    at_ms: int
    kind: str  # one of FAULTS
    duration_ms: int  # for clock_jump: the step of the box's clock, + or -
    line: int | None = None
    actions: tuple[CommandAction, ...] = ()  # actuator_failure: the requests that fail
    reason: str = ""  # actuator_failure: why, as the body controller says


@dataclass(frozen=True)
class Expectation:
    """A check made on the run; ``kind`` names it, ``params`` are its arguments."""

    kind: str
    params: Mapping[str, Any]
    line: int | None = None

    @property
    def name(self) -> str:
        """How the summary names it."""
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind}({args})" if args else self.kind


@dataclass(frozen=True)
class Scenario:
    """A whole scenario."""

    name: str
    config: TcuConfig
    energy: Energy
    route: Route
    duration_ms: int
    seed: int = 0
    start_ms: int = 0
    privacy: Privacy = Privacy.NONE
    bus_load: float = 0.0
    actions: tuple[Action, ...] = ()
    faults: tuple[Fault, ...] = ()
    expectations: tuple[Expectation, ...] = ()
    source: str = "<scenario>"
    speed_profile: tuple[tuple[int, float], ...] = field(default=())  # absolute (ms, km/h)
    network_sleep_ms: int | None = None  # the CAN network sleeps after the box slept this long
    command_settings: CommandSettings | None = None  # the box's (None: its defaults)
    command_delays_ms: Mapping[CommandAction, int] | None = None  # the car's actuation delays
    soc_pct: float | None = None  # the traction battery's charge at the start


# -- parsing ---------------------------------------------------------------------------------


class _Ctx:
    def __init__(self, source: str, base: Path | None) -> None:
        self.source = source
        self.base = base

    def fail(self, line: int | None, field_: str, message: str) -> ScenarioError:
        return ScenarioError(self.source, line, field_, message)

    def mapping(self, value: Any, line: int | None, field_: str, allowed: set[str]) -> PosDict:
        if not isinstance(value, PosDict):
            raise self.fail(line, field_, f"expected a mapping, got {_kind(value)}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            key = unknown[0]
            raise self.fail(
                value.key_lines[key],
                f"{field_}.{key}" if field_ else key,
                f"unknown field (known: {', '.join(sorted(allowed))})",
            )
        return value

    def duration(self, value: Any, line: int | None, field_: str) -> int:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.fail(line, field_, str(exc)) from None

    def choice(self, value: Any, line: int | None, field_: str, choices: Mapping[str, Any]) -> Any:
        key = value if isinstance(value, str) else _yaml_word(value)
        if key is None or key not in choices:
            raise self.fail(line, field_, f"{value!r} is not one of {', '.join(choices)}")
        return choices[key]


def _kind(value: Any) -> str:
    if isinstance(value, PosDict):
        return "a mapping"
    if isinstance(value, PosList):
        return "a list"
    return repr(value)


def _yaml_word(value: Any) -> str | None:
    """YAML 1.1 reads on/off/yes/no as booleans: take them back as words."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    return None


def _line(d: PosDict, key: str) -> int:
    return d.key_lines.get(key, d.line)


def parse_scenario(document: Any, source: str = "<scenario>", base: Path | None = None) -> Scenario:
    """Build a :class:`Scenario` from a parsed document (``load_yaml`` keeps line numbers)."""
    ctx = _Ctx(source, base)
    top = ctx.mapping(
        document,
        1,
        "",
        {
            "format",
            "name",
            "seed",
            "start",
            "vehicle",
            "route",
            "duration",
            "timeline",
            "faults",
            "expect",
        },
    )
    if top.get("format") != FORMAT:
        raise ctx.fail(_line(top, "format"), "format", f"must be {FORMAT!r}")
    for key in ("name", "vehicle", "route", "duration"):
        if key not in top:
            raise ctx.fail(top.line, key, "missing")
    name = top["name"]
    if not isinstance(name, str) or not name.strip():
        raise ctx.fail(_line(top, "name"), "name", "must be a non-empty text")
    seed = top.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ctx.fail(_line(top, "seed"), "seed", "must be a non-negative integer")
    start_ms = _parse_start(ctx, top.get("start", DEFAULT_START), _line(top, "start"))
    duration_ms = ctx.duration(top["duration"], _line(top, "duration"), "duration")
    if not 10_000 <= duration_ms <= 7 * 86_400_000:
        raise ctx.fail(_line(top, "duration"), "duration", "must be between 10 s and 7 days")
    config, energy, privacy, bus_load = _parse_vehicle(ctx, top["vehicle"], _line(top, "vehicle"))
    vehicle = top["vehicle"]
    network_sleep = _parse_network_sleep(ctx, vehicle)
    settings = _parse_commands(ctx, vehicle)
    delays = _parse_actuation(ctx, vehicle)
    soc = _parse_soc(ctx, vehicle, energy)
    route = _parse_route(ctx, top["route"], _line(top, "route"))
    actions, profile = _parse_timeline(ctx, top.get("timeline", PosList()), duration_ms)
    faults = _parse_faults(ctx, top.get("faults", PosList()), duration_ms)
    if not any(a.kind == "remote" for a in actions):  # no key: the box sends no request
        why = "needs a remote action in the timeline (without one the box takes no commands)"
        for key in ("commands", "actuation"):
            if key in vehicle:
                raise ctx.fail(_line(vehicle, key), f"vehicle.{key}", why)
        for i, entry in enumerate(top.get("faults", ())):
            for kind in ("body_deaf", "actuator_failure"):
                if kind in entry:
                    raise ctx.fail(_line(entry, kind), f"faults[{i}].{kind}", why)
    remotes = {a.value.id for a in actions if a.kind == "remote"}
    expectations = _parse_expectations(ctx, top.get("expect", PosList()), remotes)
    return Scenario(
        name=name.strip(),
        config=config,
        energy=energy,
        route=route,
        duration_ms=duration_ms,
        seed=seed,
        start_ms=start_ms,
        privacy=privacy,
        bus_load=bus_load,
        actions=actions,
        faults=faults,
        expectations=expectations,
        source=source,
        speed_profile=profile,
        network_sleep_ms=network_sleep,
        command_settings=settings,
        command_delays_ms=delays,
        soc_pct=soc,
    )


def load_scenario(path: str | Path) -> Scenario:
    """Load a scenario YAML file; every fault names the file, line and field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(p), None, "", f"cannot read: {exc}") from exc
    return parse_scenario(load_yaml(text, str(p)), str(p), p.parent)


def _parse_start(ctx: _Ctx, value: Any, line: int) -> int:
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ctx.fail(line, "start", f"{value!r} is not an RFC 3339 time") from None
        if moment.tzinfo is None:
            raise ctx.fail(line, "start", "needs a time zone (say Z for UTC)")
    else:
        raise ctx.fail(line, "start", f"{value!r} is not an RFC 3339 time")
    return int(moment.timestamp() * 1000)


def _parse_vehicle(ctx: _Ctx, value: Any, line: int) -> tuple[TcuConfig, Energy, Privacy, float]:
    v = ctx.mapping(
        value,
        line,
        "vehicle",
        {
            "vin",
            "model_year",
            "energy",
            "services",
            "privacy",
            "queue_max_entries",
            "bus_load",
            "network_sleep",
            "commands",
            "actuation",
            "soc",
        },
    )
    if "vin" not in v:
        raise ctx.fail(v.line, "vehicle.vin", "missing")
    energy = ctx.choice(
        v.get("energy", "fuel"),
        _line(v, "energy"),
        "vehicle.energy",
        {e.value: e for e in Energy},
    )
    privacy = ctx.choice(v.get("privacy", "none"), _line(v, "privacy"), "vehicle.privacy", PRIVACY)
    bus_load = v.get("bus_load", 0.0)
    if isinstance(bus_load, bool) or not isinstance(bus_load, int | float) or not 0 <= bus_load < 1:
        raise ctx.fail(_line(v, "bus_load"), "vehicle.bus_load", "must be a fraction in 0..1")
    settings = {k: v[k] for k in ("vin", "model_year", "services", "queue_max_entries") if k in v}
    try:
        config = TcuConfig.from_mapping(settings)
    except ConfigError as exc:
        bad = next((k for k in ("vin", "model_year", "queue_max_entries") if k in str(exc)), "vin")
        raise ctx.fail(_line(v, bad), f"vehicle.{bad}", str(exc)) from None
    try:
        default_catalog().scopes_of(config.services)
    except MappingError as exc:
        raise ctx.fail(_line(v, "services"), "vehicle.services", str(exc)) from None
    return config, energy, privacy, float(bus_load)


def _parse_network_sleep(ctx: _Ctx, v: PosDict) -> int | None:
    """``network_sleep: 1m``: the car's network sleeps once the box has slept that long."""
    if "network_sleep" not in v:
        return None
    ms = ctx.duration(v["network_sleep"], _line(v, "network_sleep"), "vehicle.network_sleep")
    if ms < 1_000:
        raise ctx.fail(_line(v, "network_sleep"), "vehicle.network_sleep", "at least 1 s")
    return ms


def _parse_commands(ctx: _Ctx, v: PosDict) -> CommandSettings | None:
    """``commands: {stay_awake: 3m, monthly_wakeups: 20, ...}``: the box's command settings."""
    if "commands" not in v:
        return None
    field_ = "vehicle.commands"
    d = ctx.mapping(
        v["commands"], _line(v, "commands"), field_, set(_COMMAND_DURATIONS) | set(_COMMAND_COUNTS)
    )
    given: dict[str, int] = {}
    for key, name in _COMMAND_DURATIONS.items():
        if key in d:
            ms = given[name] = ctx.duration(d[key], _line(d, key), f"{field_}.{key}")
            if ms < 1 and key.endswith("timeout"):
                raise ctx.fail(_line(d, key), f"{field_}.{key}", "at least 1 ms")
    for key, least in _COMMAND_COUNTS.items():
        if key in d:
            n = d[key]
            if isinstance(n, bool) or not isinstance(n, int) or n < least:
                raise ctx.fail(_line(d, key), f"{field_}.{key}", f"a whole number >= {least}")
            given[key] = n
    try:
        return CommandSettings(**given)
    except ConfigError as exc:  # (what the checks above let through, if ever)
        raise ctx.fail(d.line, field_, str(exc)) from None


def _body_actions(ctx: _Ctx, value: Any, line: int, field_: str) -> tuple[CommandAction, ...]:
    """One name of :data:`BODY_ACTIONS` or a list of them: the requests they stand for."""
    names = list(value) if isinstance(value, PosList) and value else [value]
    out: list[CommandAction] = []
    for j, name in enumerate(names):
        where = f"{field_}[{j}]" if isinstance(value, PosList) else field_
        where_line = value.item_lines[j] if isinstance(value, PosList) else line
        for action in ctx.choice(name, where_line, where, BODY_ACTIONS):
            if action not in out:
                out.append(action)
    return tuple(out)


def _parse_actuation(ctx: _Ctx, v: PosDict) -> dict[CommandAction, int] | None:
    """``actuation: {default: 0s, lights: 2s}``: how long the car takes to act, per request."""
    if "actuation" not in v:
        return None
    field_ = "vehicle.actuation"
    d = ctx.mapping(v["actuation"], _line(v, "actuation"), field_, {"default", *BODY_ACTIONS})
    if not d:
        raise ctx.fail(d.line, field_, f"give default or some of {', '.join(BODY_ACTIONS)}")
    delays: dict[CommandAction, int] = {}
    if "default" in d:
        ms = ctx.duration(d["default"], _line(d, "default"), f"{field_}.default")
        delays = dict.fromkeys(CommandAction, ms)
    # A remote action's name first, then the single requests, which override it.
    for key in sorted((k for k in d if k != "default"), key=lambda k: len(BODY_ACTIONS[k]) == 1):
        ms = ctx.duration(d[key], _line(d, key), f"{field_}.{key}")
        delays.update(dict.fromkeys(BODY_ACTIONS[key], ms))
    return delays


def _parse_soc(ctx: _Ctx, v: PosDict, energy: Energy) -> float | None:
    """``soc: 25``: the traction battery's charge at the start, in percent."""
    if "soc" not in v:
        return None
    soc, line = v["soc"], _line(v, "soc")
    if energy is Energy.FUEL:
        raise ctx.fail(line, "vehicle.soc", "a fuel car has no traction battery")
    if isinstance(soc, bool) or not isinstance(soc, int | float) or not 0 <= soc <= 100:
        raise ctx.fail(line, "vehicle.soc", "the charge in percent (0..100)")
    return float(soc)


def _points(ctx: _Ctx, raw: Any, line: int, field_: str) -> list[tuple[float, float]]:
    if not isinstance(raw, list) or len(raw) < 2:
        raise ctx.fail(line, field_, "needs at least two points")
    points = []
    for i, p in enumerate(raw):
        item_line = raw.item_lines[i] if isinstance(raw, PosList) else line
        if (
            not isinstance(p, list)
            or len(p) != 2
            or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in p)
        ):
            raise ctx.fail(item_line, f"{field_}[{i}]", "must be [latitude, longitude]")
        lat, lon = float(p[0]), float(p[1])
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ctx.fail(item_line, f"{field_}[{i}]", f"({lat}, {lon}) is not a position")
        points.append((lat, lon))
    return points


def _parse_route(ctx: _Ctx, value: Any, line: int) -> Route:
    r = ctx.mapping(value, line, "route", {"waypoints", "gpx", "geojson", "altitude"})
    given = [k for k in ("waypoints", "gpx", "geojson") if k in r]
    if len(given) != 1:
        raise ctx.fail(r.line, "route", "give exactly one of waypoints, gpx, geojson")
    kind = given[0]
    kline = _line(r, kind)
    if kind == "waypoints":
        points = _points(ctx, r[kind], kline, "route.waypoints")
    else:
        if not isinstance(r[kind], str):
            raise ctx.fail(kline, f"route.{kind}", "must be a file name")
        path = (ctx.base or Path(".")) / r[kind]
        reader = _read_gpx if kind == "gpx" else _read_geojson
        try:
            points = reader(path)
        except (OSError, ValueError, ET.ParseError) as exc:
            raise ctx.fail(kline, f"route.{kind}", f"{path}: {exc}") from None
    altitude = r.get("altitude", 40.0)
    if isinstance(altitude, bool) or not isinstance(altitude, int | float):
        raise ctx.fail(_line(r, "altitude"), "route.altitude", "must be metres")
    return Route(tuple(points), float(altitude))


def _read_gpx(path: Path) -> list[tuple[float, float]]:
    """Track, route or way points of a GPX 1.0/1.1 file, in that order of preference."""
    root = ET.parse(path).getroot()
    ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
    for tag in ("trkpt", "rtept", "wpt"):
        found = root.iter(f"{ns}{tag}")
        points = [(float(p.attrib["lat"]), float(p.attrib["lon"])) for p in found]
        if len(points) >= 2:
            return points
    raise ValueError("no track, route or way points (at least two)")


def _read_geojson(path: Path) -> list[tuple[float, float]]:
    """The first LineString of a GeoJSON file (a geometry, Feature or FeatureCollection)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    stack = [doc]
    while stack:
        item = stack.pop(0)
        if not isinstance(item, dict):
            continue
        if item.get("type") == "LineString":
            coords = item.get("coordinates")
            if not isinstance(coords, list) or len(coords) < 2:
                raise ValueError("a LineString needs at least two positions")
            return [(float(c[1]), float(c[0])) for c in coords]  # GeoJSON is [lon, lat]
        if item.get("type") == "Feature":
            stack.append(item.get("geometry"))
        elif item.get("type") == "FeatureCollection":
            stack.extend(item.get("features") or [])
    raise ValueError("no LineString in it")


_ACTION_KEYS = {
    "ignition",
    "drive",
    "stop",
    "door",
    "lock",
    "plug",
    "charge",
    "privacy",
    "crash",
    "alert",
    "low_battery",
    "refuel",
    "precondition",
    "remote",
}


def _parse_timeline(
    ctx: _Ctx, value: Any, duration_ms: int
) -> tuple[tuple[Action, ...], tuple[tuple[int, float], ...]]:
    if not isinstance(value, PosList):
        raise ctx.fail(getattr(value, "line", None), "timeline", "must be a list of actions")
    actions: list[Action] = []
    profile: list[tuple[int, float]] = [(0, 0.0)]
    ids: set[str] = set()
    for i, item in enumerate(value):
        where = f"timeline[{i}]"
        entry = ctx.mapping(item, value.item_lines[i], where, _ACTION_KEYS | {"at"})
        if "at" not in entry:
            raise ctx.fail(entry.line, f"{where}.at", "missing")
        at = ctx.duration(entry["at"], _line(entry, "at"), f"{where}.at")
        if at > duration_ms:
            raise ctx.fail(_line(entry, "at"), f"{where}.at", "is after the end of the scenario")
        kinds = [k for k in entry if k != "at"]
        if len(kinds) != 1:
            known = ", ".join(sorted(_ACTION_KEYS))
            raise ctx.fail(entry.line, where, f"give one action (one of {known})")
        kind = kinds[0]
        raw, line = entry[kind], _line(entry, kind)
        field_ = f"{where}.{kind}"
        if kind == "remote":
            remote = _parse_remote(ctx, raw, line, field_, default_id=where)
            if remote.id in ids:
                raise ctx.fail(_line(raw, "id"), f"{field_}.id", f"{remote.id!r} is given twice")
            ids.add(remote.id)
            actions.append(Action(at, kind, remote, line))
            continue
        parsed = _parse_action(ctx, kind, raw, line, field_, at=at, profile=profile)
        if parsed is not None:
            actions.append(Action(at, kind, parsed, line))
    times = [t for t, _ in profile]
    if times != sorted(times):
        raise ctx.fail(value.line, "timeline", "drive and stop actions must come in time order")
    return tuple(sorted(actions, key=lambda a: a.at_ms)), tuple(profile)


def _parse_action(
    ctx: _Ctx,
    kind: str,
    raw: Any,
    line: int,
    field_: str,
    *,
    at: int,
    profile: list[tuple[int, float]],
) -> Any:
    if kind == "ignition":
        return ctx.choice(raw, line, field_, IGNITION)
    if kind == "lock":
        return ctx.choice(raw, line, field_, LOCKS)
    if kind == "privacy":
        return ctx.choice(raw, line, field_, PRIVACY)
    if kind == "precondition":
        return ctx.choice(raw, line, field_, PRECONDITIONING)
    if kind == "plug":  # in | out | {power_kw: N}: plugged in to a charger of that power
        if isinstance(raw, PosDict):
            d = ctx.mapping(raw, line, field_, {"power_kw"})
            power = d.get("power_kw")
            if (
                isinstance(power, bool)
                or not isinstance(power, int | float)
                or not 0 < power <= 400
            ):
                raise ctx.fail(_line(d, "power_kw"), f"{field_}.power_kw", "must be 0..400 kW")
            return float(power)
        return ctx.choice(raw, line, field_, {"in": 7.4, "out": 0.0})
    if kind == "charge":
        return ctx.choice(raw, line, field_, {"start": True, "stop": False})
    if kind in ("crash", "low_battery"):
        if raw is not True:
            raise ctx.fail(line, field_, "write true")
        return True
    if kind == "refuel":
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 100:
            raise ctx.fail(line, field_, "the level to fill to, in percent (1..100)")
        return float(raw)
    if kind == "door":
        d = ctx.mapping(raw, line, field_, set(DOORS))
        return {
            DOORS[k]: ctx.choice(v, _line(d, k), f"{field_}.{k}", {"open": 1, "closed": 0})
            for k, v in d.items()
        }
    if kind == "alert":
        d = ctx.mapping(raw, line, field_, {"name", "on"})
        if "name" not in d:
            raise ctx.fail(d.line, f"{field_}.name", "missing")
        signal = ctx.choice(d["name"], _line(d, "name"), f"{field_}.name", ALERTS)
        on = d.get("on", True)
        if not isinstance(on, bool):
            raise ctx.fail(_line(d, "on"), f"{field_}.on", "must be true or false")
        return (signal, on)
    if kind == "stop":
        duration = ctx.duration(raw, line, field_)
        profile.extend([(at, 0.0), (at + duration, 0.0)])
        return None
    # drive: {speeds: [[t, kmh], ...]} with times relative to the action, or {speed, for}
    d = ctx.mapping(raw, line, field_, {"speeds", "speed", "for"})
    if "speeds" in d:
        speeds = d["speeds"]
        if not isinstance(speeds, PosList) or not speeds:
            raise ctx.fail(_line(d, "speeds"), f"{field_}.speeds", "a list of [time, km/h]")
        for j, pair in enumerate(speeds):
            pline = speeds.item_lines[j]
            if not isinstance(pair, list) or len(pair) != 2:
                raise ctx.fail(pline, f"{field_}.speeds[{j}]", "must be [time, km/h]")
            t = ctx.duration(pair[0], pline, f"{field_}.speeds[{j}]")
            v = pair[1]
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 300:
                raise ctx.fail(pline, f"{field_}.speeds[{j}]", "speed must be 0..300 km/h")
            profile.append((at + t, float(v)))
        return None
    if "speed" not in d or "for" not in d:
        raise ctx.fail(d.line, field_, "give speeds: [[time, km/h], ...] or speed and for")
    v = d["speed"]
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 300:
        raise ctx.fail(_line(d, "speed"), f"{field_}.speed", "must be 0..300 km/h")
    for_ms = ctx.duration(d["for"], _line(d, "for"), f"{field_}.for")
    ramp = min(20_000, for_ms // 4)
    profile.extend(
        [(at, 0.0), (at + ramp, float(v)), (at + for_ms - ramp, float(v)), (at + for_ms, 0.0)]
    )
    return None


def _bool_field(ctx: _Ctx, d: PosDict, key: str, field_: str) -> bool:
    value = d[key]
    if not isinstance(value, bool):
        raise ctx.fail(_line(d, key), f"{field_}.{key}", "must be true or false")
    return value


def _int_field(ctx: _Ctx, d: PosDict, key: str, field_: str, bounds: tuple[int, int]) -> int:
    low, high = bounds
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ctx.fail(_line(d, key), f"{field_}.{key}", f"must be a whole number in {low}..{high}")
    return value


def _time_of_day(ctx: _Ctx, value: Any, line: int, field_: str) -> int:
    """Minutes since midnight UTC from ``"23:30"`` (YAML 1.1 reads an unquoted 23:30 as 1410)."""
    if isinstance(value, str):
        m = _TIME_OF_DAY.match(value)
        if m and int(m.group(1)) < 24 and int(m.group(2)) < 60:
            return int(m.group(1)) * 60 + int(m.group(2))
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1440:
        return value
    raise ctx.fail(line, field_, f'{value!r} is not a time of day (say "23:30", UTC)')


def _days(ctx: _Ctx, value: Any, line: int, field_: str) -> int:
    """A day bitmap (bit 0 Monday) from a list of days, a set's name or the bitmap itself."""
    if isinstance(value, str) and value in DAY_SETS:
        return DAY_SETS[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 127:
        return value
    if isinstance(value, PosList) and value:
        bits = 0
        for j, day in enumerate(value):
            if day not in DAYS:
                raise ctx.fail(
                    value.item_lines[j],
                    f"{field_}[{j}]",
                    f"{day!r} is not one of {', '.join(DAYS)}",
                )
            bits |= 1 << DAYS.index(day)
        return bits
    raise ctx.fail(
        line,
        field_,
        f"{value!r}: give a list of days ({', '.join(DAYS)}), "
        f"{', '.join(DAY_SETS)} or a bitmap 0..127 (bit 0 Monday)",
    )


def _program(ctx: _Ctx, raw: Any, line: int, field_: str) -> dict[str, Any]:
    d = ctx.mapping(raw, line, field_, {"slot", "enabled", "days", "at"})
    for key in ("slot", "days", "at"):
        if key not in d:
            raise ctx.fail(d.line, f"{field_}.{key}", "missing")
    return {
        "slot": _int_field(ctx, d, "slot", field_, (1, 4)),
        "enabled": _bool_field(ctx, d, "enabled", field_) if "enabled" in d else True,
        "days": _days(ctx, d["days"], _line(d, "days"), f"{field_}.days"),
        "start_min": _time_of_day(ctx, d["at"], _line(d, "at"), f"{field_}.at"),
    }


# The keys each remote action takes besides action, id and validity.
_REMOTE_KEYS = {
    "horn": {"beeps"},
    "lights": {"duration"},
    "lock": set(),
    "unlock": set(),
    "wakeup": set(),
    "precond": {"immediate", "programs"},
    "charge": {"immediate", "at", "preferences"},
    "stolen": {"stolen"},
    "immobilize": {"activate"},
}


def _parse_remote(ctx: _Ctx, raw: Any, line: int, field_: str, *, default_id: str) -> Remote:
    """``remote: {action, id, validity, ...the action's parameters}``."""
    if not isinstance(raw, PosDict):
        raise ctx.fail(line, field_, f"expected a mapping, got {_kind(raw)}")
    if "action" not in raw:
        raise ctx.fail(
            raw.line, f"{field_}.action", f"missing (one of {', '.join(REMOTE_ACTIONS)})"
        )
    action = raw["action"]
    if action not in REMOTE_ACTIONS:
        raise ctx.fail(
            _line(raw, "action"),
            f"{field_}.action",
            f"{action!r} is not one of {', '.join(REMOTE_ACTIONS)}",
        )
    d = ctx.mapping(raw, line, field_, {"action", "id", "validity"} | _REMOTE_KEYS[action])
    ident = d.get("id", default_id)
    if not isinstance(ident, str | int) or isinstance(ident, bool) or not str(ident).strip():
        raise ctx.fail(_line(d, "id"), f"{field_}.id", "must be a name")
    validity = DEFAULT_VALIDITY_MS
    if "validity" in d:
        validity = ctx.duration(d["validity"], _line(d, "validity"), f"{field_}.validity")
        if not 1_000 <= validity <= MAX_VALIDITY_MS:
            raise ctx.fail(_line(d, "validity"), f"{field_}.validity", "must be 1 s to 7 days")
    params: dict[str, Any] = {}
    if action == "horn":
        params["beeps"] = _int_field(ctx, d, "beeps", field_, (1, 10)) if "beeps" in d else 1
    elif action == "lights":
        seconds = 10_000
        if "duration" in d:
            seconds = ctx.duration(d["duration"], _line(d, "duration"), f"{field_}.duration")
            if seconds % 1000 or not 1_000 <= seconds <= 60_000:
                raise ctx.fail(_line(d, "duration"), f"{field_}.duration", "whole seconds, 1..60")
        params["duration_s"] = seconds // 1000
    elif action in ("stolen", "immobilize"):
        key = "stolen" if action == "stolen" else "activate"
        if key not in d:
            raise ctx.fail(d.line, f"{field_}.{key}", "missing")
        params[key] = _bool_field(ctx, d, key, field_)
    elif action in ("precond", "charge"):
        if "immediate" in d:
            params["immediate"] = _bool_field(ctx, d, "immediate", field_)
        if "programs" in d:
            programs = d["programs"]
            if not isinstance(programs, PosList) or not 1 <= len(programs) <= 4:
                raise ctx.fail(
                    _line(d, "programs"), f"{field_}.programs", "a list of 1 to 4 programs"
                )
            params["programs"] = [
                _program(ctx, p, programs.item_lines[j], f"{field_}.programs[{j}]")
                for j, p in enumerate(programs)
            ]
            slots = [p["slot"] for p in params["programs"]]
            if len(set(slots)) != len(slots):
                raise ctx.fail(_line(d, "programs"), f"{field_}.programs", "a slot appears twice")
        if "at" in d:
            if "immediate" in d:
                raise ctx.fail(
                    _line(d, "at"), f"{field_}.at", "at and immediate exclude each other"
                )
            params["delayed_to_min"] = _time_of_day(ctx, d["at"], _line(d, "at"), f"{field_}.at")
        if "preferences" in d:
            p = ctx.mapping(
                d["preferences"],
                _line(d, "preferences"),
                f"{field_}.preferences",
                {"level", "type"},
            )
            for key in ("level", "type"):
                if key not in p:
                    raise ctx.fail(p.line, f"{field_}.preferences.{key}", "missing")
            level = _int_field(ctx, p, "level", f"{field_}.preferences", (1, 5))
            kind = ctx.choice(
                p["type"],
                _line(p, "type"),
                f"{field_}.preferences.type",
                {"Partial": "Partial", "Full": "Full"},
            )
            params["preferences"] = {"level": level, "type": kind}
        if not params:
            given = " or ".join(sorted(_REMOTE_KEYS[action]))
            raise ctx.fail(d.line, field_, f"{action}: give {given}")
    remote = Remote(str(ident).strip(), action, params, validity)
    try:  # what the box would refuse is refused here (the same checks)
        cmd = new_command(
            "VF1AAAAAAAA000000", action, params, issued_at_ms=0, order=0, validity_ms=validity
        )
        sign_command(cmd, bytes(32))
    except DownlinkError as exc:
        raise ctx.fail(line, field_, str(exc)) from None
    return remote


def _parse_faults(ctx: _Ctx, value: Any, duration_ms: int) -> tuple[Fault, ...]:
    if not isinstance(value, PosList):
        raise ctx.fail(getattr(value, "line", None), "faults", "must be a list of faults")
    faults = []
    for i, item in enumerate(value):
        where = f"faults[{i}]"
        entry = ctx.mapping(item, value.item_lines[i], where, set(FAULTS) | {"at"})
        if "at" not in entry:
            raise ctx.fail(entry.line, f"{where}.at", "missing")
        at = ctx.duration(entry["at"], _line(entry, "at"), f"{where}.at")
        kinds = [k for k in entry if k != "at"]
        if len(kinds) != 1:
            raise ctx.fail(entry.line, where, f"give one fault (one of {', '.join(FAULTS)})")
        kind = kinds[0]
        if kind == "clock_jump":  # not a span: the box's clock steps by this much, + or -
            raw = entry[kind]
            sign = -1 if isinstance(raw, str) and raw.strip().startswith("-") else 1
            text = raw.strip().lstrip("+-") if isinstance(raw, str) else raw
            step = ctx.duration(text, _line(entry, kind), f"{where}.{kind}")
            if step == 0:
                raise ctx.fail(_line(entry, kind), f"{where}.{kind}", "a jump of nothing")
            faults.append(Fault(at, kind, sign * step, _line(entry, kind)))
            continue
        actions: tuple[CommandAction, ...] = ()
        reason = ""
        raw, line, field_ = entry[kind], _line(entry, kind), f"{where}.{kind}"
        if kind == "actuator_failure":  # {action: unlock | [lock, unlock], for: 1m, reason}
            d = ctx.mapping(raw, line, field_, {"action", "for", "reason"})
            for key in ("action", "for"):
                if key not in d:
                    raise ctx.fail(d.line, f"{field_}.{key}", "missing")
            actions = _body_actions(ctx, d["action"], _line(d, "action"), f"{field_}.action")
            reason = d.get("reason", "actuator failure")
            if not isinstance(reason, str) or not reason.strip():
                raise ctx.fail(_line(d, "reason"), f"{field_}.reason", "must be a non-empty text")
            raw, line, field_ = d["for"], _line(d, "for"), f"{field_}.for"
        duration = ctx.duration(raw, line, field_)
        if duration <= 0 or at + duration > duration_ms:
            raise ctx.fail(line, field_, "must last more than 0 and end before the scenario does")
        faults.append(Fault(at, kind, duration, _line(entry, kind), actions, reason.strip()))
    return tuple(sorted(faults, key=lambda f: f.at_ms))


# Each expectation: its parameters and a checker of them (ctx, params, line, field) -> params.
_ExpectParser = Callable[[_Ctx, PosDict, int, str], dict[str, Any]]


def _upload_params(ctx: _Ctx, d: PosDict, line: int, field_: str) -> dict[str, Any]:
    ctx.mapping(d, line, field_, {"trigger", "after", "within"})
    if "trigger" not in d:
        raise ctx.fail(d.line, f"{field_}.trigger", "missing")
    trigger = ctx.choice(d["trigger"], _line(d, "trigger"), f"{field_}.trigger", TRIGGERS)
    after = ctx.duration(d.get("after", 0), _line(d, "after"), f"{field_}.after")
    within = ctx.duration(d.get("within", "2s"), _line(d, "within"), f"{field_}.within")
    return {"trigger": trigger.name.lower(), "after_ms": after, "within_ms": within}


def _count_params(ctx: _Ctx, d: PosDict, line: int, field_: str, extra: set[str]) -> dict[str, Any]:
    ctx.mapping(d, line, field_, {"min", "max"} | extra)
    out: dict[str, Any] = {}
    for key in ("min", "max"):
        if key in d:
            n = d[key]
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ctx.fail(_line(d, key), f"{field_}.{key}", "must be a whole number >= 0")
            out[key] = n
    if not out:
        raise ctx.fail(d.line, field_, "give min, max or both")
    return out


def _signal_params(ctx: _Ctx, d: Any, line: int, field_: str, kind: str) -> dict[str, Any]:
    """``value: {signal, at, min, max}`` or ``change: {signal, from, to, min, max}``."""
    times = {"at"} if kind == "value" else {"from", "to"}
    d = ctx.mapping(d, line, field_, {"signal", "min", "max"} | times)
    name = d.get("signal")
    catalog = default_catalog()
    if not isinstance(name, str) or name not in catalog:
        raise ctx.fail(_line(d, "signal"), f"{field_}.signal", f"{name!r} is not a catalog signal")
    out: dict[str, Any] = {"signal": name}
    for key in sorted(times):
        if key not in d:
            raise ctx.fail(d.line, f"{field_}.{key}", "missing")
        out[f"{key}_ms"] = ctx.duration(d[key], _line(d, key), f"{field_}.{key}")
    for key in ("min", "max"):
        if key in d:
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ctx.fail(_line(d, key), f"{field_}.{key}", "must be a number")
            out[key] = float(v)
    if "min" not in out and "max" not in out:
        raise ctx.fail(d.line, field_, "give min, max or both")
    return out


FINAL_STATUSES = {s.value: s.value for s in RemoteStatus if s.done}
STATUSES = {s.value: s.value for s in RemoteStatus}
CAUSES = {c.value: c.value for c in FailureCause}


def _remote_params(
    ctx: _Ctx, raw: Any, line: int, field_: str, remotes: set[str]
) -> dict[str, Any]:
    """``remote: {id, status, cause, statuses}``: the outcome of a remote of the timeline."""
    d = ctx.mapping(raw, line, field_, {"id", "status", "cause", "statuses"})
    if "id" not in d:
        raise ctx.fail(d.line, f"{field_}.id", "missing")
    ident = str(d["id"]).strip()
    if ident not in remotes:
        known = ", ".join(sorted(remotes)) or "none"
        raise ctx.fail(
            _line(d, "id"),
            f"{field_}.id",
            f"no remote {ident!r} in the timeline (remotes: {known})",
        )
    out: dict[str, Any] = {"id": ident}
    if "status" in d:
        out["status"] = ctx.choice(
            d["status"], _line(d, "status"), f"{field_}.status", FINAL_STATUSES
        )
    if "cause" in d:
        out["cause"] = ctx.choice(d["cause"], _line(d, "cause"), f"{field_}.cause", CAUSES)
        if out.setdefault("status", "Failed") != "Failed":
            raise ctx.fail(_line(d, "cause"), f"{field_}.cause", "only a Failed status has a cause")
    if "statuses" in d:
        seq = d["statuses"]
        if not isinstance(seq, PosList) or not seq:
            raise ctx.fail(_line(d, "statuses"), f"{field_}.statuses", "a list of statuses")
        out["statuses"] = [
            ctx.choice(s, seq.item_lines[j], f"{field_}.statuses[{j}]", STATUSES)
            for j, s in enumerate(seq)
        ]
    if len(out) == 1:
        raise ctx.fail(d.line, field_, "give status, cause, statuses or some of them")
    return out


def _parse_expectations(
    ctx: _Ctx, value: Any, remotes: set[str] | None = None
) -> tuple[Expectation, ...]:
    if not isinstance(value, PosList):
        raise ctx.fail(getattr(value, "line", None), "expect", "must be a list of expectations")
    out = []
    kinds = {
        "upload",
        "uploads",
        "no_position_while_private",
        "trip_km",
        "gateway_samples",
        "no_sample_lost",
        "evicted",
        "rejected",
        "value",
        "change",
        "remote",
    }
    for i, item in enumerate(value):
        where = f"expect[{i}]"
        entry = ctx.mapping(item, value.item_lines[i], where, kinds)
        if len(entry) != 1:
            known = ", ".join(sorted(kinds))
            raise ctx.fail(entry.line, where, f"give one expectation (one of {known})")
        kind = next(iter(entry))
        raw, line = entry[kind], _line(entry, kind)
        field_ = f"{where}.{kind}"
        params: dict[str, Any]
        if kind == "upload":
            params = _upload_params(ctx, raw, line, field_)
        elif kind == "uploads":
            params = _count_params(ctx, raw, line, field_, {"trigger"})
            if "trigger" in raw:
                t = ctx.choice(raw["trigger"], _line(raw, "trigger"), f"{field_}.trigger", TRIGGERS)
                params["trigger"] = t.name.lower()
        elif kind in ("gateway_samples", "evicted", "rejected"):
            params = _count_params(ctx, raw, line, field_, set())
        elif kind in ("value", "change"):
            params = _signal_params(ctx, raw, line, field_, kind)
        elif kind == "remote":
            params = _remote_params(ctx, raw, line, field_, remotes or set())
        elif kind == "trip_km":
            d = ctx.mapping(raw, line, field_, {"about", "tolerance"})
            about = d.get("about")
            if isinstance(about, bool) or not isinstance(about, int | float) or about < 0:
                raise ctx.fail(_line(d, "about"), f"{field_}.about", "the distance in km")
            tol = d.get("tolerance", "10%")
            m = re.fullmatch(r"(\d+(?:\.\d+)?)%", str(tol))
            if not m:
                raise ctx.fail(
                    _line(d, "tolerance"), f"{field_}.tolerance", "a percentage, say 10%"
                )
            params = {"about": float(about), "tolerance_pct": float(m.group(1))}
        else:  # no_position_while_private, no_sample_lost
            if raw is not True:
                raise ctx.fail(line, field_, "write true")
            params = {}
        out.append(Expectation(kind, params, line))
    return tuple(out)
