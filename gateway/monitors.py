"""Callbacks and monitors: their validation and the engine that raises monitor events.

:func:`parse_callback` and :func:`parse_monitor` check the bodies of the Web API's
``CallbackSubscribe`` and ``MonitorParameter`` and return them normalised (defaults filled
in); every fault is a :class:`MonitorError` naming the field. ``boolExp`` is parsed by
:func:`parse_bool_exp` (``& | ! ( )`` over trigger names) and refused when it is always
true or always false.

:class:`MonitorEngine` reads the payloads the gateway accepted, in arrival order
(``Store.payloads_since``, its cursor kept as a record so that a restart resumes), and
evaluates every monitor of their vehicles over the samples in vehicle-time order. A monitor
notifies when its ``boolExp`` turns from false to true, and again every ``refreshEvent``
seconds (``refresh: true``) while it stays true. Notifications are queued for the
monitor's callback with :func:`gateway.webhooks.enqueue_message`. ``docs/monitors.md``
gives the semantics of each trigger.

Records: ``callback`` (body: the parsed callback, ``status``, ``secret``), ``monitor``
(``vin`` set; body: ``callbackId``, ``monitor`` (the parsed parameter), ``status``), and the
engine's own ``monitor_state`` (same id as the monitor) and ``monitor_cursor``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from can_dbc.catalog import Scope
from firmware_sim.errors import PayloadError
from firmware_sim.payload import Privacy, decode_uplink
from gateway.errors import GatewayError
from gateway.store import Record, Store, Value, rfc3339, sample_value
from gateway.webhooks import HEADER_NAME, RESERVED_HEADERS, WebhookError, enqueue_message

__all__ = [
    "ALERT_TYPES",
    "CURSOR_KIND",
    "DATA_OPERANDS",
    "MAX_MONITORS_PER_VEHICLE",
    "MAX_TRIGGERS",
    "MIN_REFRESH_S",
    "STATE_KIND",
    "BoolExp",
    "MonitorEngine",
    "MonitorError",
    "haversine_m",
    "parse_attributes",
    "parse_bool_exp",
    "parse_callback",
    "parse_monitor",
    "required_scopes",
]

log = logging.getLogger(__name__)

MAX_MONITORS_PER_VEHICLE = 5
MAX_TRIGGERS = 5
MIN_REFRESH_S = 60
MAX_REFRESH_S = 30 * 86_400
MAX_ATTRIBUTES = 20
MAX_TEXT = 256
MAX_VALUE = 1024
MAX_URL = 2048
MAX_BOOL_EXP = 1000
MAX_DEPTH = 50
STATE_KIND = "monitor_state"
CURSOR_KIND = "monitor_cursor"
CURSOR_ID = "engine"

Json = dict[str, Any]


class MonitorError(GatewayError, ValueError):
    """A callback or monitor body the API refuses: ``path`` names the field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


# -- small validators --------------------------------------------------------------------------


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a text"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def _obj(value: object, path: str, allowed: Iterable[str], required: Iterable[str] = ()) -> Json:
    if not isinstance(value, Mapping):
        raise MonitorError(path, f"expected an object, got {_describe(value)}")
    known = set(allowed)
    for key in value:
        if not isinstance(key, str) or key not in known:
            name = key if isinstance(key, str) else repr(key)
            where = f"{path}.{name}" if path else str(name)
            raise MonitorError(where[:300], f"unknown field (known: {', '.join(sorted(known))})")
    for key in required:
        if key not in value:
            raise MonitorError(f"{path}.{key}" if path else key, "missing")
    return dict(value)


def _text(value: object, path: str, max_len: int = MAX_TEXT, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise MonitorError(path, f"expected a text, got {_describe(value)}")
    if not empty and not value.strip():
        raise MonitorError(path, "must not be empty")
    if len(value) > max_len:
        raise MonitorError(path, f"longer than {max_len} characters")
    return value


def _number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MonitorError(path, f"expected a number, got {_describe(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise MonitorError(path, "must be a finite number")
    return number


def _array(value: object, path: str, min_len: int = 0, max_len: int = 100) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise MonitorError(path, f"expected an array, got {_describe(value)}")
    if not min_len <= len(value) <= max_len:
        raise MonitorError(path, f"needs {min_len} to {max_len} items, got {len(value)}")
    return list(value)


def _choice(value: object, path: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        shown = repr(value)[:60] if isinstance(value, str) else _describe(value)
        raise MonitorError(path, f"{shown} is not one of {', '.join(choices)}")
    return value


def _controls(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


# -- callbacks ---------------------------------------------------------------------------------

ATTRIBUTE_TYPES = ("Header", "Body", "Query")
CALLBACK_TYPES = ("Monitor", "Remote")


def parse_attributes(
    value: object, path: str, types: Sequence[str] = ATTRIBUTE_TYPES
) -> list[dict[str, str]]:
    """A list of ``{type, key, value}`` attributes of the given ``types``, checked.

    Header names must be HTTP tokens other than the ones the sender sets itself
    (``Content-Type``, ``X-Tcusim-Signature``, ...) and no value may hold a control character.
    """
    out: list[dict[str, str]] = []
    for i, item in enumerate(_array(value, path, 0, MAX_ATTRIBUTES)):
        where = f"{path}[{i}]"
        attr = _obj(item, where, ("type", "key", "value"), ("type", "key", "value"))
        kind = _choice(attr["type"], f"{where}.type", types)
        key = _text(attr["key"], f"{where}.key")
        text = _text(attr["value"], f"{where}.value", MAX_VALUE, empty=True)
        if _controls(key) or _controls(text):
            raise MonitorError(where, "keys and values may not hold control characters")
        if kind == "Header":
            if not all(" " <= c <= "~" for c in text):
                raise MonitorError(f"{where}.value", "a header value is printable ASCII")
            if HEADER_NAME.fullmatch(key) is None:
                raise MonitorError(f"{where}.key", f"{key[:60]!r} is not an HTTP header name")
            if key.lower() in RESERVED_HEADERS:
                raise MonitorError(f"{where}.key", f"{key} is set by the gateway itself")
        out.append({"type": kind, "key": key, "value": text})
    return out


def _target(value: object, path: str) -> str:
    url = _text(value, path, MAX_URL)
    if _controls(url) or any(c.isspace() for c in url):
        raise MonitorError(path, "a URL may not hold spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise MonitorError(path, f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise MonitorError(path, "must be an http:// or https:// URL")
    if not parts.hostname:
        raise MonitorError(path, "the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise MonitorError(path, "no credentials in the URL: send them as a Header attribute")
    if parts.fragment:
        raise MonitorError(path, "a webhook URL has no #fragment")
    if port == 0:
        raise MonitorError(path, "port 0 is not a port")
    return url


def parse_callback(body: Mapping[str, Any]) -> Json:
    """A ``CallbackSubscribe`` body, checked and normalised.

    ``{"label", "type": ["Monitor", "Remote"], "callback": {"webhook": {"target", "name",
    "attributes"}}}``; ``type`` defaults to both. Push notifications and websockets are
    refused (not supported).
    """
    doc = _obj(body, "", ("label", "type", "callback"), ("callback",))
    label = _text(doc.get("label", ""), "label", empty=True)
    types: list[str] = []
    for i, item in enumerate(_array(doc.get("type", list(CALLBACK_TYPES)), "type", 1, 2)):
        kind = _choice(item, f"type[{i}]", CALLBACK_TYPES)
        if kind in types:
            raise MonitorError(f"type[{i}]", f"{kind} is listed twice")
        types.append(kind)
    callback = _obj(doc["callback"], "callback", ("webhook", "pushnotif", "websocket"))
    for other in ("pushnotif", "websocket"):
        if other in callback:
            raise MonitorError(f"callback.{other}", "not supported: give a webhook")
    if "webhook" not in callback:
        raise MonitorError("callback.webhook", "missing")
    hook = _obj(
        callback["webhook"],
        "callback.webhook",
        ("target", "name", "attributes"),
        ("target", "name"),
    )
    return {
        "label": label,
        "type": types,
        "callback": {
            "webhook": {
                "target": _target(hook["target"], "callback.webhook.target"),
                "name": _text(hook["name"], "callback.webhook.name"),
                "attributes": parse_attributes(
                    hook.get("attributes", []), "callback.webhook.attributes"
                ),
            }
        },
    }


# -- boolExp -----------------------------------------------------------------------------------

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
_TOKEN = re.compile(r"\s*(?:([A-Za-z][A-Za-z0-9_.\-]*)|([&|!()]))")

Node = tuple[Any, ...]  # ("var", name) | ("not", n) | ("and", a, b) | ("or", a, b)


@dataclass(frozen=True)
class BoolExp:
    """A parsed ``boolExp``: its text, tree and the trigger names it uses."""

    text: str
    tree: Node
    names: frozenset[str]

    def evaluate(self, values: Mapping[str, bool]) -> bool:
        """The expression's value for the triggers' values (a missing name is false)."""
        return _evaluate(self.tree, values)


def _evaluate(node: Node, values: Mapping[str, bool]) -> bool:
    op = node[0]
    if op == "var":
        return bool(values.get(node[1], False))
    if op == "not":
        return not _evaluate(node[1], values)
    if op == "and":
        return _evaluate(node[1], values) and _evaluate(node[2], values)
    return _evaluate(node[1], values) or _evaluate(node[2], values)


class _Parser:
    """Recursive descent: ``or := and ('|' and)*``, ``and := not ('&' not)*``,
    ``not := '!' not | '(' or ')' | NAME``."""

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.tokens: list[tuple[str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                rest = text[pos:].lstrip()
                if not rest:
                    break
                where = len(text) - len(rest)
                raise self.fail(where, f"unexpected character {rest[0]!r}")
            token = m.group(1) or m.group(2)
            start = m.start(1) if m.group(1) else m.start(2)
            if m.group(1) and NAME.fullmatch(token) is None:
                raise self.fail(start, "a trigger name has at most 64 characters")
            self.tokens.append((token, start))
            pos = m.end()
        self.i = 0
        self.depth = 0
        self.names: set[str] = set()

    def fail(self, pos: int, message: str) -> MonitorError:
        return MonitorError(self.path, f"at position {pos + 1}: {message}")

    def peek(self) -> tuple[str, int]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("", len(self.text))

    def parse(self) -> Node:
        if not self.tokens:
            raise MonitorError(self.path, "empty expression")
        tree = self.parse_or()
        token, pos = self.peek()
        if token:
            raise self.fail(pos, f"expected '&', '|' or the end, found {token!r}")
        return tree

    def nest(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(pos, f"nested more than {MAX_DEPTH} deep")

    def parse_or(self) -> Node:
        left = self.parse_and()
        while self.peek()[0] == "|":
            self.i += 1
            left = ("or", left, self.parse_and())
        return left

    def parse_and(self) -> Node:
        left = self.parse_not()
        while self.peek()[0] == "&":
            self.i += 1
            left = ("and", left, self.parse_not())
        return left

    def parse_not(self) -> Node:
        token, pos = self.peek()
        if token == "!":
            self.i += 1
            self.nest(pos)
            node: Node = ("not", self.parse_not())
            self.depth -= 1
            return node
        if token == "(":
            self.i += 1
            self.nest(pos)
            node = self.parse_or()
            closing, cpos = self.peek()
            if closing != ")":
                found = repr(closing) if closing else "the end"
                raise self.fail(cpos, f"expected ')' to close the '(' at {pos + 1}, found {found}")
            self.i += 1
            self.depth -= 1
            return node
        if token and token not in "&|!()":
            self.i += 1
            self.names.add(token)
            return ("var", token)
        found = repr(token) if token else "the end"
        raise self.fail(pos, f"expected a trigger name, '!' or '(', found {found}")


def parse_bool_exp(
    text: object, names: Iterable[str] | None = None, path: str = "boolExp"
) -> BoolExp:
    """Parse a ``boolExp``; with ``names``, every name it uses must be one of them.

    Refused (:class:`MonitorError`): a syntax fault (with its 1-based position), an unknown
    name, and, with ``names`` given, an expression that is true for every value of the
    triggers or false for every value (checked over its truth table).
    """
    if not isinstance(text, str):
        raise MonitorError(path, f"expected a text, got {_describe(text)}")
    if len(text) > MAX_BOOL_EXP:
        raise MonitorError(path, f"longer than {MAX_BOOL_EXP} characters")
    parser = _Parser(text, path)
    tree = parser.parse()
    exp = BoolExp(text, tree, frozenset(parser.names))
    if names is not None:
        known = set(names)
        unknown = sorted(exp.names - known)
        if unknown:
            raise MonitorError(path, f"{unknown[0]!r} is not the name of a trigger")
        constant = _constant(exp)
        if constant is not None:
            raise MonitorError(
                path, f"always {'true' if constant else 'false'}, whatever the triggers"
            )
    return exp


def _constant(exp: BoolExp) -> bool | None:
    """The expression's value if it has the same value for every assignment, else ``None``."""
    names = sorted(exp.names)
    seen: set[bool] = set()
    for bits in range(1 << len(names)):
        values = {name: bool(bits >> k & 1) for k, name in enumerate(names)}
        seen.add(exp.evaluate(values))
        if len(seen) == 2:
            return None
    return seen.pop()


# -- monitor triggers ----------------------------------------------------------------------------

SIG_SPEED, SIG_ODOMETER, SIG_IGNITION, SIG_LOCK = 1, 3, 5, 11
SIG_AIR, SIG_FUEL, SIG_SOC, SIG_RANGE, SIG_CHARGING, SIG_PLUGGED = 19, 21, 22, 23, 24, 25
SIG_DAYS_TO_SERVICE, SIG_KM_TO_SERVICE = 31, 32
SIG_LAT, SIG_LON, SIG_ALT, SIG_HEADING, SIG_GNSS_QUALITY = 40, 41, 42, 43, 44
SIG_PRIVACY = 46
DOORS = {6: "Driver", 7: "Passenger", 8: "RearLeft", 9: "RearRight", 10: "Trunk"}


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


ALERT_TYPES: dict[int, str] = {
    33: "EngineFault",
    34: "EngineOilPressureFailure",
    35: "EngineTemperatureFailure",
    36: "BrakingSystemFailure",
    37: "BatteryChargeOrElectricalCircuitSystemFailure",
    38: "FuelLevelLow",
    39: "TireUnderInflationDetectionSystemFault",
}
"""The reference's ``AlertMsgEnum`` name of each alert signal."""

ALERT_NAMES = _words(
    "AbsBrakingSystemFault ActiveSpoilerFault AdBlueFault AdBlueFaultStartingImpossible"
    " AdBlueFaultStartingImpossibleSoon AddWasherFluid"
    " AirbagOrSeatBeltPretensionerOrActiveHoodFailure AssistanceButtonFault"
    " AutomaticBrakingDeactivated AutomaticHeadlightAdjustmentFault"
    " BatteryChargeOrElectricalCircuitSystemFailure BrakingSystemFailure ChargingFailure"
    " CheckTheCenterBrakeLamp CollisionDetectionSystemFault CollisionMitigationSystemFault"
    " CoolantLevellow DrivingAssistanceSensorBlind ElectricTractionSystemFailureLimitSpeed"
    " ElectricTractionSystemFailureStopVehicle ElectricTractionSystemFault"
    " ElectronicImmobiliserFault EmissionSystemOrAdBlueQualityFailueStartingImpossible"
    " EmissionSystemOrAdBlueQualityFailueStartingImpossibleSoon"
    " EmissionSystemOrAdBlueQualityFailure EngineFailure EngineFault EngineMisfiringFuel"
    " EngineOilPressureFailure EngineTemperatureFailure EspAsrSystemFault"
    " FrontLeftFlashingIndicatorFault FrontLeftFogLampsFault FrontLeftParkingLampsFault"
    " FrontRightFlashingIndicatorFault FrontRightFogLampsFault FrontRightParkingLampsFault"
    " FuelLevelLow GearboxFault HeadlightsFault InstalledSpareWheelFault"
    " InterVehicleTimeMeasurementFault LaneChangeAssistanceFault"
    " LaneDepartureWarningSystemFault LeftBrakeLampFault LeftFrontDoorOpen"
    " LeftFrontDoorOpenLowSpeed LeftFrontTirePressurSensorFault LeftFrontTirePuncture"
    " LeftFrontTireUnderInflated LeftRearDoorOpen LeftRearDoorOpenLowSpeed"
    " LeftRearTirePressurSensorFault LeftRearTirePuncture LeftRearTireUnderInflated"
    " LeftReverseLampFault OilLevelLow ParkAssistSystemFault"
    " ParkingBrakeOrHillStartSystemFailure ParticleFilterAdditiveLevelTooLow"
    " ParticleFilterFull ParticleFilterRegenerating PowerSteeringFailure PowerSteeringFault"
    " PreheatingPreventilationDeactivatedBatteryLow"
    " PreheatingPreventilationDeactivatedClockUnset"
    " PreheatingPreventilationDeactivatedFuelLevelLow RearLeftFlashingIndicatorFault"
    " RearLeftFogLampsFault RearLeftParkingLampsFault RearRightFlashingIndicatorFault"
    " RearRightFogLampsFault RearRightParkingLampsFault RearWindowOpen RearWindowOpenLowSpeed"
    " ReplaceBrakePads ReplaceTheRemoteControlBattery RetractableRoofMechanismFault"
    " RightBrakeLampFault RightFrontDoorOpenLowSpeed RightFrontDoorOpen"
    " RightFrontTirePressurSensorFault RightFrontTirePuncture RightFrontTireUnderInflated"
    " RightRearDoorOpen RightRearDoorOpenLowSpeed RightRearTirePressurSensorFault"
    " RightRearTirePuncture RightRearTireUnderInflated RightReverseLampFault RiskOfIce"
    " RoofOperationNotPossibleSpeedUnknown RoofOperationNotPossibleTooHighTemp ShiftToPark"
    " SteeringLockFault SuspensionFault SuspensionFaultLimitSpeed SuspensionFaultRepaireVehicle"
    " TireUnderInflationDetectionSystemFault TooManyRoofOperation TrailerConnectionFault"
    " TrunkOrHoodOpen TrunkOrHoodOpenLowSpeed WaterInTheDieselFuelFilter"
)

OperandKind = Literal["number", "bool", "enum", "alert", "trip"]
NUMBER_OPS = ("equalsTo", "greaterThan", "lowerThan")
OPS = ("equalsTo", "greaterThan", "lowerThan", "includedIn", "onChange")


@dataclass(frozen=True)
class Operand:
    """A ``DataTrigger`` operand: the signals it reads and the operators it takes."""

    kind: OperandKind
    signals: tuple[int, ...]
    ops: tuple[str, ...]
    labels: Mapping[int, str] | None = None  # enum: code -> the reference's name
    scope: Scope = Scope.TELEMETRY


def _enum(kind: OperandKind, sid: int, labels: Mapping[int, str]) -> Operand:
    return Operand(kind, (sid,), ("equalsTo", "includedIn", "onChange"), labels)


TRIP_STATES = ("Nominal", "Unstarted", "DataLacking", "Unfinished")

DATA_OPERANDS: dict[str, Operand] = {
    "vehicle.energy.electric.level": Operand("number", (SIG_SOC,), NUMBER_OPS),
    "vehicle.energy.fuel.level": Operand("number", (SIG_FUEL,), NUMBER_OPS),
    "vehicle.energy.electric.autonomy": Operand("number", (SIG_RANGE,), NUMBER_OPS),
    "vehicle.autonomy": Operand("number", (SIG_RANGE,), NUMBER_OPS),
    "vehicle.kinetic.speed": Operand("number", (SIG_SPEED,), NUMBER_OPS),
    "vehicle.odometer": Operand("number", (SIG_ODOMETER,), NUMBER_OPS),
    "environment.air.temp": Operand("number", (SIG_AIR,), NUMBER_OPS),
    "vehicle.kinetic.moving": Operand("bool", (SIG_SPEED,), ("equalsTo", "onChange")),
    "vehicle.energy.charging.plugged": Operand("bool", (SIG_PLUGGED,), ("equalsTo", "onChange")),
    "vehicle.energy.charging.status": _enum(
        "enum",
        SIG_CHARGING,
        {0: "Disconnected", 1: "InProgress", 2: "Failure", 3: "Stopped", 4: "Finished"},
    ),
    "vehicle.doorsState.lockedState": _enum(
        "enum", SIG_LOCK, {0: "Unlocked", 1: "Locked", 2: "SuperLocked"}
    ),
    "privacy.state": _enum("enum", SIG_PRIVACY, {0: "None", 1: "Geolocation", 2: "Full"}),
    "vehicle.alert": Operand(
        "alert", tuple(ALERT_TYPES), ("equalsTo", "includedIn", "onChange"), scope=Scope.ALERT
    ),
    "vehicle.trip.state": Operand(
        "trip", (SIG_IGNITION,), ("equalsTo", "includedIn"), scope=Scope.TRIP
    ),
}
"""The supported ``DataTrigger`` operands."""

REFERENCE_OPERANDS = _words(
    "vehicle.alert vehicle.odometer vehicle.powertrain.status vehicle.engines.thermic.oil.temp"
    " vehicle.energy.electric.level vehicle.energy.electric.autonomy vehicle.energy.fuel.level"
    " vehicle.energy.fuel.autonomy vehicle.autonomy vehicle.energy.charging.status"
    " vehicle.energy.charging.plugged vehicle.energy.charging.type"
    " vehicle.doorsState.lockedState vehicle.doorsState.opening vehicle.kinetic.moving"
    " vehicle.kinetic.speed vehicle.trip.start vehicle.trip.stop vehicle.trip.duration"
    " vehicle.trip.distance vehicle.trip.state vehicle.safety.beltWarning environment.air.temp"
    " privacy.state vehicle.drivingBehavior.mode vehicle.safety.autoECallTriggering"
    " vehicle.preconditioning.airConditioning vehicle.alarm.trigger.type"
    " vehicle.alarm.status.activation"
)

EXTENSIONS = ("vehicle.doorsState", "vehicle.maintenance", "vehicle.position", "vehicle.alerts")
REFERENCE_EXTENSIONS = (
    *EXTENSIONS,
    "vehicle.status",
    "vehicle.telemetry",
    "vehicle.alarm",
    "vehicle.trip",
)
EXTENSION_SCOPES = {
    "vehicle.doorsState": Scope.TELEMETRY,
    "vehicle.maintenance": Scope.MAINTENANCE,
    "vehicle.position": Scope.POSITION,
    "vehicle.alerts": Scope.ALERT,
}
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DURATION = re.compile(r"P(?:(\d{1,4})D)?(?:T(?:(\d{1,5})H)?(?:(\d{1,6})M)?(?:(\d{1,7})S)?)?")
_WEEKS = re.compile(r"[wW]([1-9]|[1-4][0-9]|5[0-3])(?:-[wW]([1-9]|[1-4][0-9]|5[0-3]))?")
_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,2}")


def _duration_s(value: object, path: str) -> int:
    """Seconds of an ISO 8601 duration ``P[nD][T[nH][nM][nS]]``."""
    text = _text(value, path, 40)
    m = _DURATION.fullmatch(text)
    if m is None or not any(m.groups()) or text.endswith("T"):
        raise MonitorError(path, f"{text!r} is not a duration such as PT14H30M or P1DT2H")
    d, h, mins, s = (int(g) if g else 0 for g in m.groups())
    return ((d * 24 + h) * 60 + mins) * 60 + s


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _time_zone(value: object, path: str) -> str:
    name = _text(value, path, 64)
    if _ZONE_NAME.fullmatch(name) is None:
        raise MonitorError(path, f"{name!r} is not a time zone name such as Europe/Paris")
    try:
        _zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise MonitorError(path, f"{name!r} is not a known time zone") from None
    return name


def _absolute_time(value: object, path: str) -> int:
    text = _text(value, path, 40)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise MonitorError(path, f"{text!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise MonitorError(path, "an RFC 3339 time needs its offset (Z or +01:00)")
    try:
        return int(moment.timestamp() * 1000)
    except (OverflowError, ValueError):
        raise MonitorError(path, f"{text!r} is out of range") from None


def _parse_time_entry(value: object, path: str) -> Json:
    entry = _obj(value, path, ("recurrence", "start", "duration", "occurence"), ("start",))
    recurrence = _choice(entry.get("recurrence", "Daily"), f"{path}.recurrence", ("None", "Daily"))
    out: Json = {"recurrence": recurrence, "start": entry["start"]}
    if recurrence == "None":
        _absolute_time(entry["start"], f"{path}.start")
        if "occurence" in entry:
            raise MonitorError(f"{path}.occurence", "only for a Daily recurrence")
        if "duration" in entry:
            if _duration_s(entry["duration"], f"{path}.duration") <= 0:
                raise MonitorError(f"{path}.duration", "must be longer than 0")
            out["duration"] = entry["duration"]
        return out
    start = _duration_s(entry["start"], f"{path}.start")
    if start >= 86_400:
        raise MonitorError(f"{path}.start", "a daily start is between PT0S and PT23H59M59S")
    if "duration" not in entry:
        raise MonitorError(f"{path}.duration", "missing (a Daily entry needs it)")
    length = _duration_s(entry["duration"], f"{path}.duration")
    if not 0 < length <= 86_400:
        raise MonitorError(f"{path}.duration", "a daily window lasts more than 0 and at most 24 h")
    out["duration"] = entry["duration"]
    if "occurence" in entry:
        occ = _obj(entry["occurence"], f"{path}.occurence", ("day", "week"))
        norm: Json = {}
        if "day" in occ:
            days = _array(occ["day"], f"{path}.occurence.day", 1, 7)
            norm["day"] = [
                _choice(d, f"{path}.occurence.day[{i}]", DAYS) for i, d in enumerate(days)
            ]
        if "week" in occ:
            weeks = _array(occ["week"], f"{path}.occurence.week", 1, 52)
            for i, w in enumerate(weeks):
                where = f"{path}.occurence.week[{i}]"
                m = _WEEKS.fullmatch(_text(w, where, 10))
                if m is None:
                    raise MonitorError(where, f"{w!r} is not a week (w1..w53) or range (w2-w9)")
                if m.group(2) and int(m.group(2)) < int(m.group(1)):
                    raise MonitorError(where, "a range of weeks goes upwards")
            norm["week"] = list(weeks)
        out["occurence"] = norm
    return out


def _parse_value(operand: Operand, text: str, path: str) -> str:
    """A trigger's right operand, checked against the operand's type; its canonical text."""
    if operand.kind == "number":
        try:
            number = float(text)
        except ValueError:
            raise MonitorError(path, f"{text[:40]!r} is not a number") from None
        if not math.isfinite(number):
            raise MonitorError(path, "must be a finite number")
        return text.strip()
    if operand.kind == "bool":
        if text.lower() not in ("true", "false"):
            raise MonitorError(path, f"{text[:40]!r} is not true or false")
        return text.lower()
    choices: Sequence[str]
    if operand.kind == "enum":
        assert operand.labels is not None
        choices = list(operand.labels.values())
    elif operand.kind == "alert":
        choices = ALERT_NAMES
    else:
        choices = TRIP_STATES
    lowered = {c.lower(): c for c in choices}
    found = lowered.get(text.lower())
    if found is None:
        shown = ", ".join(choices) if len(choices) < 10 else "the reference's AlertMsgEnum names"
        raise MonitorError(path, f"{text[:40]!r} is not one of {shown}")
    return found


def _parse_values(operand: Operand, op: str, raw: object, path: str) -> list[str]:
    if op == "onChange":
        if raw not in (None, [], ()):
            raise MonitorError(path, "onChange takes no value")
        return []
    items = _array(raw, path, 1, 20)
    if op != "includedIn" and len(items) != 1:
        raise MonitorError(path, f"{op} takes exactly one value")
    return [
        _parse_value(operand, _text(v, f"{path}[{i}]", 64), f"{path}[{i}]")
        for i, v in enumerate(items)
    ]


def _parse_data(value: object, path: str) -> Json:
    doc = _obj(value, path, ("data", "op", "value", "previous"), ("data", "op"))
    name = doc["data"]
    if not isinstance(name, str) or name not in REFERENCE_OPERANDS:
        shown = repr(name)[:80] if isinstance(name, str) else _describe(name)
        raise MonitorError(f"{path}.data", f"{shown} is not a data operand of the reference")
    operand = DATA_OPERANDS.get(name)
    if operand is None:
        raise MonitorError(f"{path}.data", f"{name} is not supported by this gateway")
    op = _choice(doc["op"], f"{path}.op", OPS)
    if op not in operand.ops:
        raise MonitorError(f"{path}.op", f"{name} takes {', '.join(operand.ops)}, not {op}")
    out: Json = {
        "data": name,
        "op": op,
        "value": _parse_values(operand, op, doc.get("value"), f"{path}.value"),
    }
    if "previous" in doc:
        prev = _obj(doc["previous"], f"{path}.previous", ("op", "value"), ("op", "value"))
        if operand.kind not in ("bool", "enum", "alert"):
            raise MonitorError(f"{path}.previous", f"{name} takes no previous state")
        pop = _choice(prev["op"], f"{path}.previous.op", ("equalsTo", "includedIn"))
        if operand.kind == "bool" and pop != "equalsTo":
            raise MonitorError(f"{path}.previous.op", f"{name} takes equalsTo")
        values = _parse_values(operand, pop, prev["value"], f"{path}.previous.value")
        out["previous"] = {"op": pop, "value": values}
    return out


def _parse_zone(value: object, path: str) -> Json:
    doc = _obj(value, path, ("transition", "place", "circle"), ("transition",))
    if "circle" in doc:
        raise MonitorError(f"{path}.circle", "unknown field: the circle is given as place")
    if "place" not in doc:
        raise MonitorError(f"{path}.place", "missing")
    transition = _choice(doc["transition"], f"{path}.transition", ("In", "Out"))
    place = _obj(doc["place"], f"{path}.place", ("radius", "center"), ("radius", "center"))
    radius = _number(place["radius"], f"{path}.place.radius")
    if not 0 < radius <= 20_000:
        raise MonitorError(f"{path}.place.radius", "a radius in km, more than 0 and at most 20000")
    center = _obj(
        place["center"],
        f"{path}.place.center",
        ("longitude", "latitude"),
        ("longitude", "latitude"),
    )
    lon = _number(center["longitude"], f"{path}.place.center.longitude")
    lat = _number(center["latitude"], f"{path}.place.center.latitude")
    if not -180 <= lon <= 180:
        raise MonitorError(f"{path}.place.center.longitude", "must be in -180..180")
    if not -90 <= lat <= 90:
        raise MonitorError(f"{path}.place.center.latitude", "must be in -90..90")
    return {
        "transition": transition,
        "place": {"radius": place["radius"], "center": {"longitude": lon, "latitude": lat}},
    }


def _parse_time(value: object, path: str) -> Json:
    doc = _obj(value, path, ("times", "timeZone"), ("times",))
    times = _array(doc["times"], f"{path}.times", 1, 10)
    return {
        "times": [_parse_time_entry(t, f"{path}.times[{i}]") for i, t in enumerate(times)],
        "timeZone": _time_zone(doc.get("timeZone", "Europe/Paris"), f"{path}.timeZone"),
    }


def _parse_trigger(value: object, path: str) -> Json:
    doc = _obj(value, path, ("name", "zone", "time", "data"), ("name",))
    name = _text(doc["name"], f"{path}.name", 64)
    if NAME.fullmatch(name) is None:
        raise MonitorError(
            f"{path}.name", f"{name!r}: a letter, then letters, digits, '_', '.' or '-'"
        )
    kinds = [k for k in ("zone", "time", "data") if k in doc]
    if len(kinds) != 1:
        raise MonitorError(path, "give exactly one of zone, time, data")
    kind = kinds[0]
    parser = {"zone": _parse_zone, "time": _parse_time, "data": _parse_data}[kind]
    return {"name": name, kind: parser(doc[kind], f"{path}.{kind}")}


def parse_monitor(body: Mapping[str, Any]) -> Json:
    """A ``MonitorParameter`` body, checked and normalised (defaults filled in).

    ``label``, ``subscribeParam {refreshEvent >= 60 s, callbackAttributes {webhook}}``,
    ``attributes`` (Header, Body), ``extendedEventParam`` and ``triggerParam {triggers (1 to
    5, unique names, each exactly one of zone, time, data), boolExp}``.
    """
    doc = _obj(
        body,
        "",
        ("label", "subscribeParam", "attributes", "extendedEventParam", "triggerParam"),
        ("label", "triggerParam"),
    )
    out: Json = {"label": _text(doc["label"], "label")}
    if "subscribeParam" in doc:
        sub = _obj(doc["subscribeParam"], "subscribeParam", ("refreshEvent", "callbackAttributes"))
        if not sub:
            raise MonitorError("subscribeParam", "give refreshEvent, callbackAttributes or both")
        norm: Json = {}
        if "refreshEvent" in sub:
            refresh = sub["refreshEvent"]
            if isinstance(refresh, bool) or not isinstance(refresh, int):
                raise MonitorError("subscribeParam.refreshEvent", "seconds, a whole number")
            if not MIN_REFRESH_S <= refresh <= MAX_REFRESH_S:
                raise MonitorError(
                    "subscribeParam.refreshEvent", f"must be {MIN_REFRESH_S}..{MAX_REFRESH_S} s"
                )
            norm["refreshEvent"] = refresh
        if "callbackAttributes" in sub:
            path = "subscribeParam.callbackAttributes"
            extra = _obj(sub["callbackAttributes"], path, ("webhook", "pushnotif", "websocket"))
            for other in ("pushnotif", "websocket"):
                if other in extra:
                    raise MonitorError(f"{path}.{other}", "not supported: give webhook")
            norm["callbackAttributes"] = {
                "webhook": parse_attributes(extra.get("webhook", []), f"{path}.webhook")
            }
        out["subscribeParam"] = norm
    out["attributes"] = parse_attributes(
        doc.get("attributes", []), "attributes", ("Header", "Body")
    )
    extensions: list[str] = []
    for i, item in enumerate(_array(doc.get("extendedEventParam", []), "extendedEventParam", 0, 8)):
        where = f"extendedEventParam[{i}]"
        refined = isinstance(item, str) and item.startswith("vehicle.telemetry.")
        if not isinstance(item, str) or (item not in REFERENCE_EXTENSIONS and not refined):
            shown = repr(item)[:60] if isinstance(item, str) else _describe(item)
            raise MonitorError(where, f"{shown} is not one of {', '.join(REFERENCE_EXTENSIONS)}")
        if item not in EXTENSIONS:
            raise MonitorError(
                where, f"{item} is not supported by this gateway ({', '.join(EXTENSIONS)} are)"
            )
        if item in extensions:
            raise MonitorError(where, f"{item} is listed twice")
        extensions.append(item)
    out["extendedEventParam"] = extensions
    param = _obj(
        doc["triggerParam"], "triggerParam", ("triggers", "boolExp"), ("triggers", "boolExp")
    )
    triggers = [
        _parse_trigger(t, f"triggerParam.triggers[{i}]")
        for i, t in enumerate(_array(param["triggers"], "triggerParam.triggers", 1, MAX_TRIGGERS))
    ]
    names: list[str] = []
    for i, trigger in enumerate(triggers):
        if trigger["name"] in names:
            raise MonitorError(f"triggerParam.triggers[{i}].name", f"{trigger['name']!r} again")
        names.append(trigger["name"])
    exp = parse_bool_exp(param["boolExp"], names, "triggerParam.boolExp")
    unused = [n for n in names if n not in exp.names]
    if unused:
        raise MonitorError("triggerParam.boolExp", f"trigger {unused[0]!r} is not used in it")
    out["triggerParam"] = {"triggers": triggers, "boolExp": exp.text}
    return out


def required_scopes(monitor: Mapping[str, Any]) -> frozenset[Scope]:
    """The data scopes a parsed monitor reads (zones: position; data and extensions: theirs)."""
    scopes: set[Scope] = set()
    for trigger in monitor["triggerParam"]["triggers"]:
        if "zone" in trigger:
            scopes.add(Scope.POSITION)
        elif "data" in trigger:
            scopes.add(DATA_OPERANDS[trigger["data"]["data"]].scope)
    scopes.update(EXTENSION_SCOPES[e] for e in monitor.get("extendedEventParam", []))
    return frozenset(scopes)


# -- evaluation ----------------------------------------------------------------------------------

EARTH_RADIUS_M = 6_371_008.8


def haversine_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in metres between two ``(lat, lon)`` points in degrees."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


Signals = dict[int, tuple[int, Value]]  # signal id -> (t_ms, value): the latest known
OpValue = float | bool | str | tuple[str, ...]


def _literal(value: OpValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(round(value, 6))
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


class _Data:
    """A compiled data trigger."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.data: str = spec["data"]
        self.operand = DATA_OPERANDS[self.data]
        self.op: str = spec["op"]
        self.values: list[str] = list(spec["value"])
        self.previous: Mapping[str, Any] | None = spec.get("previous")

    def read(self, signals: Signals, memory: Json) -> OpValue | None:
        """The operand's current value (``None`` while unknown)."""
        kind, sids = self.operand.kind, self.operand.signals
        if kind == "alert":
            known = [sid for sid in sids if sid in signals]
            if not known:
                return None
            return tuple(sorted(ALERT_TYPES[sid] for sid in known if signals[sid][1]))
        found = signals.get(sids[0])
        if found is None:
            return None
        raw = found[1]
        if kind == "number":
            return float(raw)
        if kind == "bool":
            return raw > 0
        if kind == "enum":
            assert self.operand.labels is not None
            return self.operand.labels.get(int(raw), str(raw))
        if raw in (2, 3):  # trip: ignition On or Start
            memory["tripped"] = True
            return "Unfinished"
        return "Nominal" if memory.get("tripped") else "Unstarted"

    @staticmethod
    def _holds(op: str, expected: Sequence[str], value: OpValue) -> bool:
        if isinstance(value, tuple):  # alerts: the active ones
            return any(v in expected for v in value) if op == "includedIn" else expected[0] in value
        if isinstance(value, bool):
            return value == (expected[0] == "true")
        if isinstance(value, float):
            target = float(expected[0])
            if op == "greaterThan":
                return value > target
            if op == "lowerThan":
                return value < target
            return value == target
        return value in expected if op == "includedIn" else value == expected[0]

    def step(self, updated: set[int], signals: Signals, memory: Json) -> bool:
        """The trigger's truth after the samples of one instant (``updated`` signals)."""
        truth = bool(memory.get("truth", False))
        if not updated.intersection(self.operand.signals):
            return truth and self.op != "onChange"
        value = self.read(signals, memory)
        if value is None:
            return truth and self.op != "onChange"
        before = memory.get("value")
        prior: OpValue | None = tuple(before) if isinstance(before, list) else before
        memory["value"] = list(value) if isinstance(value, tuple) else value
        changed = prior is not None and prior != value
        if changed:
            memory["prior"] = before  # the value before the latest change
        if self.op == "onChange":
            if self.operand.kind == "alert" and changed:  # onChange: an alert came on
                assert isinstance(value, tuple) and isinstance(prior, tuple)
                holds = bool(set(value) - set(prior))
            else:
                holds = changed
        else:
            holds = self._holds(self.op, self.values, value)
        if holds and not truth and self.previous is not None:
            holds = prior is not None and self._holds(
                self.previous["op"], self.previous["value"], prior
            )
        memory["truth"] = holds
        return holds

    def report(self, memory: Json) -> Json | None:
        """The ``values`` entry of a notification (``None`` while the value is unknown)."""
        value = memory.get("value")
        if value is None:
            return None
        current: OpValue = tuple(value) if isinstance(value, list) else value
        body: Json = {"literalValue": _literal(current)}
        entry: Json = {"data": self.data, "value": {"type": "string", "body": body}}
        if self.operand.kind == "alert":
            assert isinstance(current, tuple)
            entry["value"]["type"] = "obj.alert"
            body["objectValues"] = [{"type": name, "active": True} for name in current]
        if self.previous is not None:
            prior = memory.get("prior")
            if prior is not None:
                entry["previous"] = _literal(tuple(prior) if isinstance(prior, list) else prior)
        return entry


class _Zone:
    """A compiled zone trigger: true from a crossing into its side while the vehicle stays."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.out = spec["transition"] == "Out"
        center = spec["place"]["center"]
        self.center = (float(center["latitude"]), float(center["longitude"]))
        self.radius_m = float(spec["place"]["radius"]) * 1000

    def step(self, updated: set[int], signals: Signals, memory: Json) -> bool:
        truth = bool(memory.get("truth", False))
        if SIG_LAT not in updated and SIG_LON not in updated:
            return truth
        if SIG_LAT not in signals or SIG_LON not in signals:
            return truth
        position = (float(signals[SIG_LAT][1]), float(signals[SIG_LON][1]))
        outside = haversine_m(position, self.center) > self.radius_m
        side = "out" if outside else "in"
        before = memory.get("side")
        memory["side"] = side
        if before is not None and before != side:
            truth = outside == self.out
            memory["truth"] = truth
        return truth


class _Time:
    """A compiled time trigger: true while the vehicle time is in one of its windows."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.zone = _zone(spec["timeZone"])
        self.entries: list[tuple[Any, ...]] = []
        for entry in spec["times"]:
            if entry["recurrence"] == "None":
                start = _absolute_time(entry["start"], "start")
                length = entry.get("duration")
                end = start + _duration_s(length, "duration") * 1000 if length else None
                self.entries.append(("once", start, end))
            else:
                occ = entry.get("occurence", {})
                days = {DAYS.index(d) for d in occ.get("day", DAYS)}
                weeks: set[int] | None = None
                if "week" in occ:
                    weeks = set()
                    for w in occ["week"]:
                        m = _WEEKS.fullmatch(w)
                        assert m is not None
                        first = int(m.group(1))
                        weeks.update(range(first, int(m.group(2) or first) + 1))
                start_s = _duration_s(entry["start"], "start")
                length_s = _duration_s(entry["duration"], "duration")
                self.entries.append(("daily", start_s, length_s, days, weeks))

    def holds(self, t_ms: int) -> bool:
        for entry in self.entries:
            if entry[0] == "once":
                _, start, end = entry
                if start <= t_ms and (end is None or t_ms < end):
                    return True
                continue
            _, start_s, length_s, days, weeks = entry
            local = dt.datetime.fromtimestamp(t_ms / 1000, self.zone)
            for back in (0, 1):
                day = local.date() - dt.timedelta(days=back)
                if day.weekday() not in days:
                    continue
                if weeks is not None and day.isocalendar().week not in weeks:
                    continue
                wall = dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=start_s)
                begin = int(wall.replace(tzinfo=self.zone).timestamp() * 1000)
                if begin <= t_ms < begin + length_s * 1000:
                    return True
        return False

    def step(self, t_ms: int, memory: Json) -> bool:
        truth = self.holds(t_ms)
        memory["truth"] = truth
        return truth


@dataclass
class _Compiled:
    """A monitor parameter ready to evaluate."""

    exp: BoolExp
    data: dict[str, _Data]
    zones: dict[str, _Zone]
    times: dict[str, _Time]
    refresh_ms: int | None
    extensions: list[str]


@functools.lru_cache(maxsize=256)
def _compile(param_json: str) -> _Compiled:
    param = json.loads(param_json)
    data: dict[str, _Data] = {}
    zones: dict[str, _Zone] = {}
    times: dict[str, _Time] = {}
    for trigger in param["triggerParam"]["triggers"]:
        name = trigger["name"]
        if "data" in trigger:
            data[name] = _Data(trigger["data"])
        elif "zone" in trigger:
            zones[name] = _Zone(trigger["zone"])
        else:
            times[name] = _Time(trigger["time"])
    refresh = param.get("subscribeParam", {}).get("refreshEvent")
    return _Compiled(
        exp=parse_bool_exp(param["triggerParam"]["boolExp"]),
        data=data,
        zones=zones,
        times=times,
        refresh_ms=refresh * 1000 if refresh else None,
        extensions=list(param.get("extendedEventParam", [])),
    )


def _fingerprint(param_json: str) -> str:
    return hashlib.sha256(param_json.encode("utf-8")).hexdigest()[:16]


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


# -- extensions ------------------------------------------------------------------------------------


def _privacy(signals: Signals) -> Privacy:
    found = signals.get(SIG_PRIVACY)
    try:
        return Privacy(int(found[1])) if found else Privacy.NONE
    except ValueError:
        return Privacy.FULL  # an unknown setting withholds everything


def _position(signals: Signals) -> Json | None:
    if SIG_LAT not in signals or SIG_LON not in signals:
        return None
    t_ms = max(signals[SIG_LAT][0], signals[SIG_LON][0])
    coordinates = [float(signals[SIG_LON][1]), float(signals[SIG_LAT][1])]
    if SIG_ALT in signals:
        coordinates.append(float(signals[SIG_ALT][1]))
    properties: Json = {"createdAt": rfc3339(t_ms)}
    if SIG_HEADING in signals:
        properties["heading"] = float(signals[SIG_HEADING][1])
    if SIG_GNSS_QUALITY in signals:
        properties["signalQuality"] = int(signals[SIG_GNSS_QUALITY][1])
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": coordinates},
        "properties": properties,
    }


def _extension(kind: str, signals: Signals) -> list[Json]:
    """The body of one ``extensions`` entry from the latest known values (privacy applied)."""
    privacy = _privacy(signals)
    if privacy is Privacy.FULL:
        return []
    if kind == "vehicle.position":
        position = _position(signals) if privacy is Privacy.NONE else None
        return [{"position": position}] if position else []
    if kind == "vehicle.doorsState":
        known = [sid for sid in (SIG_LOCK, *DOORS) if sid in signals]
        if not known:
            return []
        state: Json = {"createdAt": rfc3339(max(signals[sid][0] for sid in known))}
        if SIG_LOCK in signals:
            labels = DATA_OPERANDS["vehicle.doorsState.lockedState"].labels
            assert labels is not None
            code = int(signals[SIG_LOCK][1])
            state["lockedStates"] = [labels.get(code, str(code))]
        state["opening"] = [
            {"identifier": name, "state": "Open" if signals[sid][1] else "Closed"}
            for sid, name in DOORS.items()
            if sid in signals
        ]
        return [{"doorState": state}]
    if kind == "vehicle.maintenance":
        known = [sid for sid in (SIG_DAYS_TO_SERVICE, SIG_KM_TO_SERVICE) if sid in signals]
        if not known:
            return []
        maintenance: Json = {"createdAt": rfc3339(max(signals[sid][0] for sid in known))}
        if SIG_DAYS_TO_SERVICE in signals:
            maintenance["daysBeforeMaintenance"] = int(signals[SIG_DAYS_TO_SERVICE][1])
        if SIG_KM_TO_SERVICE in signals:
            maintenance["mileageBeforeMaintenance"] = float(signals[SIG_KM_TO_SERVICE][1])
        return [{"maintenance": maintenance}]
    alerts = [
        {"type": name, "active": True, "startedAt": rfc3339(signals[sid][0])}
        for sid, name in ALERT_TYPES.items()
        if sid in signals and signals[sid][1]
    ]
    return [{"alerts": alerts}]


# -- the engine ------------------------------------------------------------------------------------


@dataclass
class _Instant:
    """The samples of one vehicle at one instant (and the privacy its payload's header gives)."""

    t_ms: int
    values: dict[int, Value]
    privacy: int | None = None


class MonitorEngine:
    """Evaluates monitors over newly stored payloads and queues their notifications.

    ``clock_ms`` is the gateway's "now": it stamps queued deliveries and paces
    ``refreshEvent`` reminders. ``batch`` payloads are read at a time.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock_ms: Callable[[], int] = _wall_ms,
        batch: int = 500,
    ) -> None:
        if batch <= 0:
            raise ValueError("batch must be > 0")
        self.store = store
        self.clock_ms = clock_ms
        self.batch = batch
        self.skipped_payloads = 0  # stored payloads that would not decode (counted, skipped)
        self.undeliverable = 0  # events whose callback was gone, paused or not a webhook

    # -- cursor ------------------------------------------------------------------------------

    @property
    def cursor(self) -> int:
        """The id of the last payload evaluated."""
        record = self.store.get_record(CURSOR_KIND, CURSOR_ID)
        return int(record.body.get("after_id", 0)) if record else 0

    def _save_cursor(self, after_id: int, now: int) -> None:
        old = self.store.get_record(CURSOR_KIND, CURSOR_ID)
        created = old.created_ms if old else now
        body = {"after_id": after_id}
        self.store.put_record(Record(CURSOR_KIND, CURSOR_ID, "gateway", None, body, created, now))

    # -- one round ---------------------------------------------------------------------------

    def step(self) -> int:
        """Evaluate every payload stored since the last step; the notifications queued."""
        queued = 0
        while True:
            refs = self.store.payloads_since(self.cursor, self.batch)
            if not refs:
                break
            now = self.clock_ms()
            by_vin: dict[str, list[_Instant]] = {}
            monitors = self._monitors()
            for ref in refs:
                if ref.vin in monitors:
                    by_vin.setdefault(ref.vin, []).extend(self._instants(ref.payload.raw))
            for vin, instants in by_vin.items():
                instants.sort(key=lambda i: i.t_ms)
                merged = _merge_instants(instants)
                for record in monitors[vin]:
                    queued += self._evaluate(record, merged, now)
            self._save_cursor(refs[-1].id, now)
            if len(refs) < self.batch:
                break
        queued += self._refresh(self.clock_ms())
        self._forget_deleted()
        return queued

    def run(
        self,
        stop_event: threading.Event,
        interval_s: float = 1.0,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        """:meth:`step` every ``interval_s`` until ``stop_event`` is set (store faults logged);
        ``on_queued`` is called after a step that queued notifications (a sender's wake-up)."""
        while not stop_event.is_set():
            try:
                queued = self.step()
            except GatewayError as exc:
                log.warning("monitor evaluation round failed: %s", exc)
            else:
                if queued and on_queued is not None:
                    on_queued()
            stop_event.wait(interval_s)

    def _monitors(self) -> dict[str, list[Record]]:
        out: dict[str, list[Record]] = {}
        for record in self.store.records("monitor"):
            if record.vin and record.body.get("status") in ("Running", "Paused"):
                out.setdefault(record.vin, []).append(record)
        return out

    def _instants(self, raw: bytes) -> list[_Instant]:
        try:
            uplink = decode_uplink(raw)
        except PayloadError:
            self.skipped_payloads += 1
            return []
        by_time: dict[int, dict[int, Value]] = {}
        for series in uplink.series:
            for offset, mantissa in zip(series.times, series.mantissas, strict=True):
                t_ms = uplink.base_time_ms + offset
                by_time.setdefault(t_ms, {})[series.signal_id] = sample_value(mantissa, series.exp)
        instants = [_Instant(t, values) for t, values in by_time.items()]
        if not any(SIG_PRIVACY in v for v in by_time.values()):  # the header's setting
            header = _Instant(uplink.base_time_ms, {}, int(uplink.privacy))
            instants.insert(0, header)  # sorted before samples of the same time
        return instants

    # -- evaluation --------------------------------------------------------------------------

    def _state(self, record: Record, fingerprint: str, now: int) -> Record:
        found = self.store.get_record(STATE_KIND, record.id)
        if found is not None and found.body.get("fingerprint") == fingerprint:
            return found
        signals = found.body.get("signals", {}) if found is not None else {}
        body: Json = {
            "fingerprint": fingerprint,
            "t_ms": found.body.get("t_ms") if found is not None else None,
            "signals": signals,
            "triggers": {},
            "active": False,
            "next_refresh_ms": None,
            "notifications": 0,
            "refreshes": 0,
            "late_samples": 0,
        }
        return Record(STATE_KIND, record.id, record.owner, record.vin, body, now, now)

    def _evaluate(self, record: Record, instants: list[_Instant], now: int) -> int:
        param_json = json.dumps(record.body["monitor"], sort_keys=True)
        compiled = _compile(param_json)
        state = self._state(record, _fingerprint(param_json), now)
        body = state.body
        signals: Signals = {int(k): (int(v[0]), v[1]) for k, v in body["signals"].items()}
        memories: dict[str, Json] = body["triggers"]
        running = record.body.get("status") == "Running"
        watermark: int | None = body["t_ms"]
        queued = 0
        for instant in instants:
            if watermark is not None and instant.t_ms < watermark:
                body["late_samples"] += len(instant.values)
                continue
            watermark = instant.t_ms
            for sid, value in instant.values.items():
                signals[sid] = (instant.t_ms, value)
            updated = set(instant.values)
            if instant.privacy is not None and SIG_PRIVACY not in updated:
                signals[SIG_PRIVACY] = (instant.t_ms, instant.privacy)
                updated.add(SIG_PRIVACY)
            truths: dict[str, bool] = {}
            for name, data in compiled.data.items():
                truths[name] = data.step(updated, signals, memories.setdefault(name, {}))
            for name, zone in compiled.zones.items():
                truths[name] = zone.step(updated, signals, memories.setdefault(name, {}))
            for name, window in compiled.times.items():
                truths[name] = window.step(instant.t_ms, memories.setdefault(name, {}))
            value = compiled.exp.evaluate(truths)
            if value and not body["active"] and running:
                if self._notify(
                    record,
                    compiled,
                    memories=memories,
                    truths=truths,
                    signals=signals,
                    event_ms=instant.t_ms,
                    now=now,
                ):
                    queued += 1
                    body["notifications"] += 1
                if compiled.refresh_ms:
                    body["next_refresh_ms"] = now + compiled.refresh_ms
            if not value:
                body["next_refresh_ms"] = None
            body["active"] = value
        body["t_ms"] = watermark
        body["signals"] = {str(k): [t, v] for k, (t, v) in signals.items()}
        self.store.put_record(
            Record(STATE_KIND, state.id, record.owner, record.vin, body, state.created_ms, now)
        )
        return queued

    def _refresh(self, now: int) -> int:
        """Reminders (``refresh: true``) of monitors still true whose period has passed."""
        queued = 0
        for state in self.store.records(STATE_KIND):
            due = state.body.get("next_refresh_ms")
            if due is None or due > now or not state.body.get("active"):
                continue
            record = self.store.get_record("monitor", state.id)
            if record is None or record.body.get("status") != "Running":
                continue
            param_json = json.dumps(record.body["monitor"], sort_keys=True)
            if state.body.get("fingerprint") != _fingerprint(param_json):
                continue
            compiled = _compile(param_json)
            if not compiled.refresh_ms:
                continue
            body = dict(state.body)
            signals: Signals = {int(k): (int(v[0]), v[1]) for k, v in body["signals"].items()}
            memories: dict[str, Json] = body["triggers"]
            truths = {name: bool(m.get("truth")) for name, m in memories.items()}
            if self._notify(
                record,
                compiled,
                memories=memories,
                truths=truths,
                signals=signals,
                event_ms=due,
                now=now,
                refresh=True,
            ):
                queued += 1
                body["refreshes"] = int(body.get("refreshes", 0)) + 1
            following = due + compiled.refresh_ms
            body["next_refresh_ms"] = following if following > now else now + compiled.refresh_ms
            self.store.put_record(
                Record(STATE_KIND, state.id, state.owner, state.vin, body, state.created_ms, now)
            )
        return queued

    def _forget_deleted(self) -> None:
        monitors = {r.id for r in self.store.records("monitor")}
        for state in self.store.records(STATE_KIND):
            if state.id not in monitors:
                self.store.delete_record(STATE_KIND, state.id)

    def _notify(
        self,
        record: Record,
        compiled: _Compiled,
        *,
        memories: Mapping[str, Json],
        truths: Mapping[str, bool],
        signals: Signals,
        event_ms: int,
        now: int,
        refresh: bool = False,
    ) -> bool:
        """Queue one notification; whether it was queued (its callback may be gone)."""
        callback_id = str(record.body.get("callbackId", ""))
        callback = self.store.get_record("callback", callback_id)
        if (
            callback is None
            or callback.body.get("status", "Running") != "Running"
            or "Monitor" not in callback.body.get("type", ["Monitor"])
        ):
            self.undeliverable += 1
            return False
        values = [
            entry
            for name, data in compiled.data.items()
            if truths.get(name) and (entry := data.report(memories.get(name, {}))) is not None
        ]
        privacy = _privacy(signals)
        if privacy is Privacy.FULL:
            values = [v for v in values if v["data"] == "privacy.state"]
        extensions = [
            {"type": kind, "body": _extension(kind, signals)} for kind in compiled.extensions
        ]
        monitor = record.body["monitor"]
        message = {
            "type": "Monitor",
            "date": rfc3339(event_ms),
            "monitorEvent": {
                "monitorId": record.id,
                "values": values,
                "extensions": extensions,
                "refresh": refresh,
            },
        }
        layers = [
            monitor.get("subscribeParam", {}).get("callbackAttributes", {}).get("webhook", []),
            monitor.get("attributes", []),
        ]
        variables = {
            "vin": record.vin or "",
            "monitorId": record.id,
            "monitorLabel": str(monitor.get("label", "")),
        }
        try:
            enqueue_message(
                self.store,
                callback,
                message,
                variables=variables,
                extra_attributes=layers,
                now_ms=now,
            )
        except WebhookError:
            self.undeliverable += 1
            return False
        return True


def _merge_instants(instants: Sequence[_Instant]) -> list[_Instant]:
    """Sorted instants with those of the same time (from several payloads) joined."""
    merged: list[_Instant] = []
    for instant in instants:
        if merged and merged[-1].t_ms == instant.t_ms:
            merged[-1].values.update(instant.values)
            if instant.privacy is not None:
                merged[-1].privacy = instant.privacy
        else:
            merged.append(_Instant(instant.t_ms, dict(instant.values), instant.privacy))
    return merged
