"""Remote commands: the API's ``Remote`` bodies, signed commands to the boxes, their statuses.

A remote action (``POST .../callbacks/{cbid}/remotes``) goes through three parts:

* :func:`parse_request` checks a ``Remote`` body (exactly one action object) and maps it to
  the box's action and parameters (``firmware_sim.downlink``'s contract), the reference's
  ``RemoteType`` and the OAuth scope it needs; :func:`parse_remote` is its ``(action,
  params)`` short form. A body the API refuses raises :class:`RemoteError` (400).
* :class:`RemoteDispatcher` keeps the remote (record kind ``remote``, id = the command id in
  hex, which is the ``remoteActionId``), gives it the vehicle's next ``order`` (record kind
  ``remote_order``, one per VIN), signs the command with the vehicle's key and publishes it
  (QoS 1) on ``tcusim/v1/{vin}/down``, waiting for the broker's acknowledgement.
* :class:`RemoteStatusListener` subscribes to ``tcusim/v1/+/cmd``, applies each status the
  boxes report to its remote and queues a ``remoteEvent`` notification for the remote's
  callback. Bad status messages are counted by reason (:attr:`ListenerStats.rejected`),
  never raised; a box's ``replayed`` refusal of a command it already reported on (a QoS 1
  redelivery) is counted (:attr:`ListenerStats.replay_refusals`) and ignored. A remote that
  expires without a final status is closed as ``Failed`` (``VehicleConnectionTimeout``).

The record's status starts as ``Accepted`` (the gateway took the request; the 202 answer
says so) and follows what the box reports. Notifications carry only the box's statuses: its
``Accepted`` (the command verified and queued in the vehicle) is the first ``Pending``
event, ``Success``, ``AlreadyDone`` and ``Failed`` are ``Done`` events. ``docs/remotes.md``
describes the whole protocol.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.config import BrokerUrl
from firmware_sim.errors import TcuError
from firmware_sim.uplink import set_no_delay
from gateway.errors import BrokerError, GatewayError, OptionError
from gateway.ingest import broker_url as parse_broker
from gateway.ingest import share_filters, tls_context
from gateway.monitors import ATTRIBUTE_TYPES, MonitorError, parse_attributes
from gateway.store import Record, Store, rfc3339
from gateway.webhooks import WebhookError, enqueue_message

__all__ = [
    "ACTION_SCOPES",
    "ACTION_TYPES",
    "DEFAULT_EXPIRY_S",
    "DONE_STATUSES",
    "FLEET_ONLY_ACTIONS",
    "ORDER_KIND",
    "PENDING_STATUSES",
    "REMOTE_KIND",
    "REMOTE_SCOPES",
    "ListenerStats",
    "RemoteDispatchError",
    "RemoteDispatcher",
    "RemoteError",
    "RemoteRequest",
    "RemoteStatusListener",
    "StatusRejection",
    "duration_s",
    "event_type",
    "notify",
    "parse_remote",
    "parse_request",
]

log = logging.getLogger(__name__)

REMOTE_KIND = "remote"
ORDER_KIND = "remote_order"
DEFAULT_EXPIRY_S = 600
"""How long a command stays valid for the box (``expires_at_ms - issued_at_ms``)."""
MAX_EXPIRY_S = 7 * 24 * 3600
DEFAULT_GRACE_S = 60
"""How long after its expiry a remote may still get a final status from the box."""

PENDING_STATUSES = (
    "Accepted",
    "WakingUpVehicle",
    "CheckingVehicle",
    "SentToVehicle",
    "VehicleBatteryChargeTooLow",
    "TooManyWakeUpsOverMonth",
)
DONE_STATUSES = ("Success", "AlreadyDone", "Failed")

ACTION_TYPES: Mapping[str, str] = {
    "precond": "ThermalPreconditioning",
    "charge": "ElectricBatteryChargingRequest",
    "horn": "Horn",
    "lock": "Doors",
    "unlock": "Doors",
    "lights": "Lights",
    "wakeup": "WakeUp",
    "immobilize": "Immobilization",
    "stolen": "Stolen",
}
"""The reference's ``RemoteType`` of each box action."""

ACTION_SCOPES: Mapping[str, str] = {
    "precond": "remote:preconditioning:write",
    "charge": "remote:charging:write",
    "horn": "remote:horn:write",
    "lock": "remote:door:write",
    "unlock": "remote:door:write",
    "lights": "remote:lights:write",
    "wakeup": "remote:wakeup:write",
    "immobilize": "remote:immobilization:write",
    "stolen": "remote:stolen:write",
}
"""The OAuth scope that sends (and reads) each action."""

REMOTE_SCOPES = tuple(sorted(set(ACTION_SCOPES.values())))
FLEET_ONLY_ACTIONS = frozenset({"immobilize", "stolen"})

_ACTION_OBJECTS = (
    "preconditioning",
    "door",
    "horn",
    "charging",
    "lights",
    "wakeUp",
    "navigation",
    "immobilization",
    "stolen",
)
_FLEET_OBJECTS = ("immobilization", "stolen")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LEVELS = ("Level1", "Level2", "Level3", "Level4", "Level5")
_DURATION = re.compile(r"PT(?=\d)(?:(\d{1,4})H)?(?:(\d{1,6})M)?(?:(\d{1,8})S)?")
_MAX_LABEL = 256

DEFAULT_BEEPS = 1
DEFAULT_LIGHTS_S = 10


class RemoteError(GatewayError, ValueError):
    """A ``Remote`` body the API refuses (400): ``path`` names the field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class RemoteDispatchError(GatewayError):
    """A command could not be handed to the broker (the API answers 503)."""


# -- parsing -----------------------------------------------------------------------------------


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


def _obj(
    value: object, path: str, allowed: Sequence[str], required: Sequence[str] = ()
) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise RemoteError(path, f"expected an object, got {_describe(value)}")
    for key in value:
        if not isinstance(key, str) or key not in allowed:
            name = key if isinstance(key, str) else repr(key)
            where = f"{path}.{name}" if path else name
            raise RemoteError(where[:200], f"unknown field (known: {', '.join(allowed)})")
    for key in required:
        if key not in value:
            raise RemoteError(f"{path}.{key}" if path else key, "missing")
    return dict(value)


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise RemoteError(path, f"expected a boolean, got {_describe(value)}")
    return value


def _int(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RemoteError(path, f"expected an integer, got {_describe(value)}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise RemoteError(path, "expected an integer")
    number = int(value)
    if not low <= number <= high:
        raise RemoteError(path, f"must be {low} to {high}, not {number}")
    return number


def _choice(value: object, path: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        shown = repr(value)[:60] if isinstance(value, str) else _describe(value)
        raise RemoteError(path, f"{shown} is not one of {', '.join(choices)}")
    return value


def _array(value: object, path: str, max_len: int) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise RemoteError(path, f"expected an array, got {_describe(value)}")
    if len(value) > max_len:
        raise RemoteError(path, f"at most {max_len} items, got {len(value)}")
    return list(value)


def duration_s(value: object, path: str) -> int:
    """Seconds of an ISO 8601 duration ``PT[nH][nM][nS]`` (``PT14H30M``)."""
    if not isinstance(value, str):
        raise RemoteError(path, f"expected an ISO 8601 duration, got {_describe(value)}")
    m = _DURATION.fullmatch(value)
    if m is None:
        raise RemoteError(path, f"{value[:40]!r} is not a duration like PT14H30M")
    hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return hours * 3600 + minutes * 60 + seconds


def _time_of_day_min(value: object, path: str) -> int:
    """Minutes after midnight of ``PT..`` (after midnight) or an RFC 3339 time (UTC)."""
    if isinstance(value, str) and value.startswith("PT"):
        total = duration_s(value, path)
        if total % 60:
            raise RemoteError(path, "whole minutes only")
        if total >= 86_400:
            raise RemoteError(path, "a time of day is less than PT24H")
        return total // 60
    if not isinstance(value, str) or len(value) > 40:
        raise RemoteError(path, "expected an RFC 3339 time or a duration after midnight (PT..)")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise RemoteError(path, f"{value!r} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        raise RemoteError(path, "an RFC 3339 time needs its offset (Z or +hh:mm)")
    utc = when.astimezone(UTC)
    return utc.hour * 60 + utc.minute


def _program(value: object, path: str) -> dict[str, Any]:
    keys = ("slot", "enabled", "recurrence", "start", "occurence", "actionsType")
    doc = _obj(value, path, keys, ("slot",))
    slot = _int(doc["slot"], f"{path}.slot", 1, 4)
    kind = _choice(doc.get("actionsType", "Set"), f"{path}.actionsType", ("Set", "Delete"))
    if kind == "Delete":
        return {"slot": slot, "enabled": False, "days": 0, "start_min": 0}
    for key in ("enabled", "start"):
        if key not in doc:
            raise RemoteError(f"{path}.{key}", "missing (needed to set a program)")
    recurrence = _choice(doc.get("recurrence", "Daily"), f"{path}.recurrence", ("None", "Daily"))
    days = 0
    if recurrence == "Daily":
        if "occurence" not in doc:
            raise RemoteError(f"{path}.occurence", "missing (needed by a Daily program)")
        occurence = _obj(doc["occurence"], f"{path}.occurence", ("day",), ("day",))
        listed = _array(occurence["day"], f"{path}.occurence.day", 7)
        if not listed:
            raise RemoteError(f"{path}.occurence.day", "needs at least one day")
        for i, day in enumerate(listed):
            bit = 1 << _DAYS.index(_choice(day, f"{path}.occurence.day[{i}]", _DAYS))
            if days & bit:
                raise RemoteError(f"{path}.occurence.day[{i}]", f"{day} is listed twice")
            days |= bit
    elif "occurence" in doc:
        raise RemoteError(f"{path}.occurence", "only with recurrence Daily")
    return {
        "slot": slot,
        "enabled": _bool(doc["enabled"], f"{path}.enabled"),
        "days": days,
        "start_min": _time_of_day_min(doc["start"], f"{path}.start"),
    }


def _precond(value: object) -> tuple[str, dict[str, Any]]:
    doc = _obj(value, "preconditioning", ("airConditioning",), ("airConditioning",))
    path = "preconditioning.airConditioning"
    air = _obj(doc["airConditioning"], path, ("immediate", "programs"))
    if not air:
        raise RemoteError(path, "give immediate, programs or both")
    params: dict[str, Any] = {}
    if "immediate" in air:
        params["immediate"] = _bool(air["immediate"], f"{path}.immediate")
    if "programs" in air:
        programs = [
            _program(p, f"{path}.programs[{i}]")
            for i, p in enumerate(_array(air["programs"], f"{path}.programs", 4))
        ]
        slots = [p["slot"] for p in programs]
        if len(set(slots)) != len(slots):
            raise RemoteError(f"{path}.programs", "a slot appears twice")
        params["programs"] = programs
    return "precond", params


def _door(value: object) -> tuple[str, dict[str, Any]]:
    doc = _obj(value, "door", ("state", "forced"), ("state",))
    if "forced" in doc:
        _bool(doc["forced"], "door.forced")  # deprecated: accepted, ignored
    state = _choice(doc["state"], "door.state", ("Locked", "Unlocked"))
    return ("lock" if state == "Locked" else "unlock"), {}


def _horn(value: object) -> tuple[str, dict[str, Any]]:
    doc = _obj(value, "horn", ("state", "beeps"), ("state",))
    state = _choice(doc["state"], "horn.state", ("Activated", "Unactivated"))
    if state != "Activated":
        raise RemoteError("horn.state", "only Activated: the horn stops after its beeps")
    return "horn", {"beeps": _int(doc.get("beeps", DEFAULT_BEEPS), "horn.beeps", 1, 10)}


def _lights(value: object) -> tuple[str, dict[str, Any]]:
    doc = _obj(value, "lights", ("on", "duration"), ("on",))
    if not _bool(doc["on"], "lights.on"):
        raise RemoteError("lights.on", "only true: the lights go off after their duration")
    seconds = DEFAULT_LIGHTS_S
    if "duration" in doc:
        seconds = duration_s(doc["duration"], "lights.duration")
        if not 1 <= seconds <= 60:
            raise RemoteError("lights.duration", "must be PT1S to PT60S")
    return "lights", {"duration_s": seconds}


def _charging(value: object) -> tuple[str, dict[str, Any]]:
    modes = ("immediate", "schedule", "nextDelayedTime", "preferences")
    doc = _obj(value, "charging", modes)
    given = [k for k in modes if k in doc]
    if len(given) != 1:
        shown = ", ".join(given) if given else "none"
        raise RemoteError("charging", f"give exactly one of {', '.join(modes)} (got {shown})")
    mode = given[0]
    if mode == "immediate":
        return "charge", {"immediate": _bool(doc["immediate"], "charging.immediate")}
    if mode == "nextDelayedTime":
        delayed = _time_of_day_min(doc[mode], "charging.nextDelayedTime")
        return "charge", {"delayed_to_min": delayed}
    if mode == "schedule":
        schedule = _obj(doc["schedule"], "charging.schedule", ("nextDelayedTime", "programs"))
        if "programs" in schedule:
            raise RemoteError("charging.schedule.programs", "charging programs are not supported")
        if "nextDelayedTime" not in schedule:
            raise RemoteError("charging.schedule.nextDelayedTime", "missing")
        delayed = _time_of_day_min(schedule["nextDelayedTime"], "charging.schedule.nextDelayedTime")
        return "charge", {"delayed_to_min": delayed}
    prefs = _obj(doc["preferences"], "charging.preferences", ("level", "type"), ("level", "type"))
    level = _LEVELS.index(_choice(prefs["level"], "charging.preferences.level", _LEVELS)) + 1
    kind = _choice(prefs["type"], "charging.preferences.type", ("Partial", "Full"))
    return "charge", {"preferences": {"level": level, "type": kind}}


def _wakeup(value: object) -> tuple[str, dict[str, Any]]:
    doc = _obj(value, "wakeUp", ("action",))
    _choice(doc.get("action", "WakeUp"), "wakeUp.action", ("WakeUp",))
    return "wakeup", {}


def _immobilization(value: object) -> tuple[str, dict[str, Any]]:
    doc = _obj(value, "immobilization", ("activate",), ("activate",))
    return "immobilize", {"activate": _bool(doc["activate"], "immobilization.activate")}


def _stolen(value: object) -> tuple[str, dict[str, Any]]:
    doc = _obj(value, "stolen", ("stolen", "trackingPeriod", "immobilization"))
    for key in ("trackingPeriod", "immobilization"):
        if key in doc:
            raise RemoteError(f"stolen.{key}", "not supported: give stolen (or immobilization)")
    if "stolen" not in doc:
        raise RemoteError("stolen.stolen", "missing")
    return "stolen", {"stolen": _bool(doc["stolen"], "stolen.stolen")}


def _navigation(_value: object) -> tuple[str, dict[str, Any]]:
    raise RemoteError("navigation", "not supported by the vehicles")


_PARSERS: Mapping[str, Callable[[object], tuple[str, dict[str, Any]]]] = {
    "preconditioning": _precond,
    "door": _door,
    "horn": _horn,
    "lights": _lights,
    "charging": _charging,
    "wakeUp": _wakeup,
    "navigation": _navigation,
    "immobilization": _immobilization,
    "stolen": _stolen,
}


@dataclass(frozen=True, slots=True)
class RemoteRequest:
    """A checked ``Remote`` body: the box's action and parameters and what goes with them."""

    action: str
    params: dict[str, Any]
    label: str = ""
    attributes: list[dict[str, str]] = field(default_factory=list)
    callback_attributes: list[dict[str, str]] = field(default_factory=list)
    remote: dict[str, Any] = field(default_factory=dict)  # the action object(s) as given

    @property
    def type(self) -> str:
        """The reference's ``RemoteType``."""
        return ACTION_TYPES[self.action]

    @property
    def scope(self) -> str:
        """The OAuth scope that sends this action."""
        return ACTION_SCOPES[self.action]


def _attributes(value: object, path: str) -> list[dict[str, str]]:
    try:
        return parse_attributes(value, path, ATTRIBUTE_TYPES)
    except MonitorError as exc:
        raise RemoteError(exc.path, exc.message) from None


def parse_request(body: object, *, fleet: bool = False) -> RemoteRequest:
    """Check a ``Remote`` body; ``fleet`` allows the B2B-only actions.

    Exactly one action object (``preconditioning``, ``door``, ``horn``, ``charging``,
    ``lights``, ``wakeUp``; for fleets also ``immobilization`` and ``stolen``), plus the
    optional ``label``, ``attributes`` and ``callbackAttributes.webhook``.
    """
    allowed = ("label", "attributes", "callbackAttributes", *_ACTION_OBJECTS)
    doc = _obj(body, "", allowed)
    if not fleet:
        for key in _FLEET_OBJECTS:
            if key in doc:
                raise RemoteError(key, "a fleet-only remote (B2B)")
    given = [k for k in _ACTION_OBJECTS if k in doc]
    if len(given) != 1:
        shown = ", ".join(given) if given else "none"
        raise RemoteError("", f"a remote holds exactly one action object (got {shown})")
    action, params = _PARSERS[given[0]](doc[given[0]])
    label = doc.get("label", "")
    if not isinstance(label, str) or len(label) > _MAX_LABEL:
        raise RemoteError("label", f"expected a text of at most {_MAX_LABEL} characters")
    attributes = _attributes(doc.get("attributes", []), "attributes")
    extra: list[dict[str, str]] = []
    if "callbackAttributes" in doc:
        cb = _obj(doc["callbackAttributes"], "callbackAttributes", ("webhook",))
        extra = _attributes(cb.get("webhook", []), "callbackAttributes.webhook")
    remote = {given[0]: doc[given[0]]}
    return RemoteRequest(action, params, label, attributes, extra, remote)


def parse_remote(body: object, *, fleet: bool = False) -> tuple[str, dict[str, Any]]:
    """``(action, params)`` of a ``Remote`` body (see :func:`parse_request`)."""
    request = parse_request(body, fleet=fleet)
    return request.action, request.params


def event_type(status: str) -> str:
    """``Pending`` or ``Done``: the ``eventStatus.type`` of a status."""
    return "Done" if status in DONE_STATUSES else "Pending"


# -- the box protocol (firmware_sim.downlink) ----------------------------------------------------


def _signed_command(
    master_secret: bytes,
    vin: str,
    action: str,
    params: Mapping[str, Any],
    *,
    command_id: bytes,
    issued_at_ms: int,
    expires_at_ms: int,
    order: int,
) -> tuple[str, bytes]:
    """The topic and the signed CBOR of the command for the box."""
    from firmware_sim import downlink  # noqa: PLC0415

    command = downlink.Command(
        command_id=command_id,
        vin=vin,
        action=downlink.Action(action),
        params=dict(params),
        issued_at_ms=issued_at_ms,
        expires_at_ms=expires_at_ms,
        nonce=secrets.token_bytes(16),
        order=order,
    )
    raw = downlink.sign_command(command, downlink.vehicle_key(master_secret, vin))
    return downlink.down_topic(vin), raw


@dataclass(frozen=True, slots=True)
class _Status:
    command_id: bytes
    vin: str
    status: str
    failure_cause: str | None
    at_ms: int
    detail: str


def _read_status(raw: bytes) -> _Status:
    from firmware_sim import downlink  # noqa: PLC0415

    message = downlink.decode_status(raw)
    cause = message.failure_cause
    return _Status(
        bytes(message.command_id),
        str(message.vin),
        str(getattr(message.status, "value", message.status)),
        None if cause is None else str(getattr(cause, "value", cause)),
        int(message.at_ms),
        str(message.detail or ""),
    )


# -- MQTT ------------------------------------------------------------------------------------------


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class _Link:
    """A paho client with its network thread, connected (and reconnecting) to one broker."""

    def __init__(
        self,
        broker: str | BrokerUrl,
        client_id: str,
        *,
        clean_session: bool,
        tls_ca: str | Path | None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
        subscribe: str | None = None,
    ) -> None:
        self.broker = parse_broker(broker)
        self.subscribe = subscribe
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.refused = ""
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        context = tls_context(self.broker, tls_ca, tls_cert, tls_key)
        if context is not None:
            self.client.tls_set_context(context)
        if self.broker.username is not None:
            self.client.username_pw_set(self.broker.username, self.broker.password)
        self.client.reconnect_delay_set(1, 30)
        set_no_delay(self.client)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        if on_message is not None:
            self.client.manual_ack_set(True)
            self.client.on_message = lambda _c, _u, message: on_message(message)

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            self.refused = str(rc)
            return
        self.refused = ""
        self.connected.set()
        if self.subscribe is not None:
            client.subscribe(self.subscribe, qos=1)

    def _on_disconnect(self, *_args: object) -> None:
        self.connected.clear()
        self.subscribed.clear()

    def _on_subscribe(self, _c: object, _u: object, _mid: int, codes: Any, _p: object) -> None:
        if all(not getattr(code, "is_failure", False) for code in codes):
            self.subscribed.set()

    def start(self, timeout: float) -> None:
        """Connect (and subscribe); :class:`BrokerError` if that does not happen in time."""
        try:
            self.client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot reach the broker {self.broker}: {exc}") from None
        self.client.loop_start()
        ready = self.subscribed if self.subscribe is not None else self.connected
        if not ready.wait(timeout):
            self.stop()
            why = f": {self.refused}" if self.refused else ""
            raise BrokerError(f"no connection to the broker {self.broker} in {timeout:g} s{why}")

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


# -- the dispatcher ------------------------------------------------------------------------------


class RemoteDispatcher:
    """Keeps, signs and publishes remote commands (one broker connection, thread-safe).

    ``master_secret`` derives each vehicle's key (``firmware_sim.downlink.vehicle_key``);
    ``expiry_s`` is how long a command stays valid; ``publish_timeout_s`` bounds the wait
    for the broker's acknowledgement. Call :meth:`start` before :meth:`dispatch`.
    """

    def __init__(
        self,
        store: Store,
        broker_url: str | BrokerUrl,
        master_secret: bytes,
        *,
        clock_ms: Callable[[], int] = _wall_ms,
        expiry_s: int = DEFAULT_EXPIRY_S,
        publish_timeout_s: float = 5.0,
        client_id: str | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        if not 1 <= expiry_s <= MAX_EXPIRY_S:
            raise OptionError(f"expiry_s must be 1 to {MAX_EXPIRY_S}, not {expiry_s}")
        if len(master_secret) < 16:
            raise OptionError("the remote master secret must be at least 16 bytes")
        self.store = store
        self.master_secret = master_secret
        self.clock_ms = clock_ms
        self.expiry_s = expiry_s
        self.publish_timeout_s = publish_timeout_s
        self._lock = threading.Lock()
        name = client_id or f"tcusim-remotes-{secrets.token_hex(4)}"
        self._link = _Link(
            broker_url,
            name,
            clean_session=True,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )

    def __repr__(self) -> str:
        return f"<RemoteDispatcher broker={self._link.broker}>"

    def start(self, timeout: float = 10.0) -> None:
        """Connect to the broker."""
        self._link.start(timeout)

    def stop(self) -> None:
        """Disconnect."""
        self._link.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def next_order(self, vin: str, now_ms: int) -> int:
        """The vehicle's next command order, kept in the store (record ``remote_order``).

        It is above every order given before and never below ``now_ms``, so that the orders
        keep rising for the box even if the counter is lost with a fresh database.
        """
        with self._lock:
            record = self.store.get_record(ORDER_KIND, vin)
            last = int(record.body.get("last", 0)) if record is not None else 0
            order = max(last + 1, now_ms)
            created = record.created_ms if record is not None else now_ms
            self.store.put_record(
                Record(ORDER_KIND, vin, "gateway", vin, {"last": order}, created, now_ms)
            )
            return order

    def dispatch(
        self, request: RemoteRequest, *, vin: str, owner: str, client_id: str, callback: Record
    ) -> Record:
        """Keep, sign and publish one remote; its record (status ``Accepted``).

        :class:`RemoteDispatchError` when the broker does not take the command in time: the
        remote is then kept as ``Failed`` (``GeneralError``).
        """
        now = self.clock_ms()
        command_id = uuid.uuid4().bytes
        order = self.next_order(vin, now)
        expires = now + self.expiry_s * 1000
        topic, raw = _signed_command(
            self.master_secret,
            vin,
            request.action,
            request.params,
            command_id=command_id,
            issued_at_ms=now,
            expires_at_ms=expires,
            order=order,
        )
        body: dict[str, Any] = {
            "remoteActionId": command_id.hex(),
            "vin": vin,
            "callbackId": callback.id,
            "clientId": client_id,
            "type": request.type,
            "action": request.action,
            "params": request.params,
            "remote": request.remote,
            "label": request.label,
            "attributes": request.attributes,
            "callbackAttributes": request.callback_attributes,
            "order": order,
            "issuedAt": rfc3339(now),
            "expiresAtMs": expires,
            "status": "Accepted",
            "history": [{"status": "Accepted", "at": rfc3339(now), "source": "gateway"}],
        }
        record = Record(REMOTE_KIND, command_id.hex(), owner, vin, body, now, now)
        self.store.put_record(record)
        error = self._publish(topic, raw)
        if not error:
            return record
        failed = _with_status(
            record, "Failed", now, source="gateway", cause="GeneralError", detail=error
        )
        self.store.put_record(failed)
        raise RemoteDispatchError(error)

    def _publish(self, topic: str, raw: bytes) -> str:
        if not self._link.connected.is_set():
            return f"not connected to the broker {self._link.broker}"
        info = self._link.client.publish(topic, raw, qos=1)
        try:
            info.wait_for_publish(self.publish_timeout_s)
        except (RuntimeError, ValueError) as exc:
            return f"the broker did not take the command: {exc}"
        if not info.is_published():
            return f"the broker did not acknowledge the command in {self.publish_timeout_s:g} s"
        return ""


def _with_status(
    record: Record,
    status: str,
    now_ms: int,
    *,
    source: str,
    cause: str | None = None,
    detail: str = "",
    vehicle_at_ms: int | None = None,
) -> Record:
    """``record`` with one more status in its history."""
    entry: dict[str, Any] = {"status": status, "at": rfc3339(now_ms), "source": source}
    if vehicle_at_ms is not None:
        entry["vehicleAt"] = rfc3339(vehicle_at_ms)
        entry["vehicleAtMs"] = vehicle_at_ms
    if cause is not None:
        entry["failureCause"] = cause
    if detail:
        entry["detail"] = detail
    body = {**record.body, "status": status, "history": [*record.body.get("history", []), entry]}
    body.pop("failureCause", None)
    body.pop("detail", None)
    if cause is not None:
        body["failureCause"] = cause
    if detail:
        body["detail"] = detail
    return Record(record.kind, record.id, record.owner, record.vin, body, record.created_ms, now_ms)


def notify(store: Store, record: Record, now_ms: int) -> str:
    """Queue the ``remoteEvent`` of the remote's current status; ``""`` or why not."""
    callback = store.get_record("callback", str(record.body.get("callbackId")))
    if callback is None:
        return "callback_gone"
    if callback.body.get("status", "Running") != "Running":
        return "callback_paused"
    status = str(record.body["status"])
    event_status: dict[str, Any] = {"type": event_type(status), "status": status}
    if record.body.get("failureCause"):
        event_status["failureCause"] = record.body["failureCause"]
    message = {
        "type": "Remote",
        "date": rfc3339(now_ms),
        "remoteEvent": {
            "remoteActionId": record.id,
            "remoteType": record.body["type"],
            "eventStatus": event_status,
        },
    }
    variables = {
        "vin": record.vin or "",
        "remoteActionId": record.id,
        "remoteType": str(record.body["type"]),
        "remoteStatus": status,
        "remoteLabel": str(record.body.get("label", "")),
    }
    layers = [record.body.get("callbackAttributes", []), record.body.get("attributes", [])]
    try:
        enqueue_message(
            store, callback, message, variables=variables, extra_attributes=layers, now_ms=now_ms
        )
    except WebhookError:
        return "undeliverable"
    return ""


# -- the status listener -------------------------------------------------------------------------

# Refusals that cannot be about a command the vehicle already took: a redelivered copy of it
# (``replayed``), or a copy that did not parse or was not signed with the vehicle's key (the
# id of such a copy is read before any check: anybody's).
_NOT_ABOUT_A_TAKEN_COMMAND = frozenset(
    ("replayed", "not_cbor", "malformed", "unsigned", "bad_signature")
)


@dataclass
class ListenerStats:
    """What the status listener did; ``rejected`` counts bad messages by reason,
    ``replay_refusals`` the ignored ``replayed`` refusals of commands already reported on,
    ``forged_refusals`` the ignored refusals of unauthentic copies of them (a command that
    did not parse or whose signature failed, carrying the id of one the vehicle took)."""

    received: int = 0
    applied: int = 0
    duplicates: int = 0
    replay_refusals: int = 0
    forged_refusals: int = 0
    notified: int = 0
    not_notified: Counter[str] = field(default_factory=Counter)
    expired: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    store_errors: int = 0


@dataclass(frozen=True, slots=True)
class StatusRejection:
    """A status message that was not applied, and why."""

    received_at_ms: int
    topic: str
    reason: str
    detail: str


class RemoteStatusListener:
    """Applies the boxes' command statuses to their remotes and notifies the callbacks.

    Its MQTT session persists (``client_id``, clean session off), so statuses sent while
    the gateway is down arrive when it comes back; a message is acknowledged once applied.
    With ``share_group`` several gateways share the statuses (``$share/GROUP/...``), each
    status going to one of them. A box's ``replayed`` refusal of a command it has already
    reported on (a QoS 1 redelivery, or a replay) is counted in
    :attr:`ListenerStats.replay_refusals` and ignored.
    :meth:`start` connects and runs a worker thread, which also closes the remotes whose
    command expired ``grace_s`` ago without a final status (every ``sweep_interval_s``).
    :meth:`handle` and :meth:`expire_due` do the same work for a caller of its own.
    """

    def __init__(
        self,
        store: Store,
        broker_url: str | BrokerUrl,
        *,
        clock_ms: Callable[[], int] = _wall_ms,
        client_id: str = "tcusim-gateway-remotes",
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        share_group: str | None = None,
        grace_s: int = DEFAULT_GRACE_S,
        sweep_interval_s: float = 5.0,
        keep_rejections: int = 100,
    ) -> None:
        self.store = store
        self.clock_ms = clock_ms
        self.grace_ms = grace_s * 1000
        self.sweep_interval_s = sweep_interval_s
        self.stats = ListenerStats()
        self.rejections: deque[StatusRejection] = deque(maxlen=keep_rejections)
        self.on_notified: Callable[[], None] | None = None  # e.g. a webhook sender's wake()
        self._queue: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        from firmware_sim import downlink  # noqa: PLC0415

        self._vin_of_topic = downlink.vin_of_topic
        self._refusal_reason = downlink.refusal_reason
        subscription = downlink.CMD_FILTER
        if share_group is not None:
            share_filters(share_group)  # checks the group's name
            subscription = f"$share/{share_group}/{subscription}"
        self._link = _Link(
            broker_url,
            client_id,
            clean_session=False,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            on_message=self._queue.put,
            subscribe=subscription,
        )

    def __repr__(self) -> str:
        return f"<RemoteStatusListener broker={self._link.broker} {self.stats}>"

    def start(self, timeout: float = 10.0) -> None:
        """Connect, subscribe and start the worker thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tcusim-remote-status", daemon=True)
        self._thread.start()
        try:
            self._link.start(timeout)
        except BrokerError:
            self._stop.set()
            self._thread.join(timeout)
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect and stop the worker (what it already took is applied first)."""
        self._link.stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def subscribed(self) -> bool:
        """Whether the listener is connected and subscribed."""
        return self._link.subscribed.is_set()

    def _run(self) -> None:
        next_sweep = time.monotonic()
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                message = self._queue.get(timeout=min(self.sweep_interval_s, 0.2))
            except queue.Empty:
                pass
            else:
                try:
                    self.handle(message.topic, bytes(message.payload))
                except GatewayError as exc:
                    self.stats.store_errors += 1
                    log.warning("remote status not applied (kept unacknowledged): %s", exc)
                    continue
                self._ack(message)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.sweep_interval_s
                try:
                    self.expire_due()
                except GatewayError as exc:
                    self.stats.store_errors += 1
                    log.warning("remote expiry sweep failed: %s", exc)

    def _ack(self, message: mqtt.MQTTMessage) -> None:
        if message.qos > 0:
            self._link.client.ack(message.mid, message.qos)

    def _reject(self, now: int, topic: str, reason: str, detail: str) -> str:
        self.stats.rejected[reason] += 1
        self.rejections.append(StatusRejection(now, topic, reason, detail[:300]))
        log.info("remote status rejected (%s): %s", reason, detail[:300])
        return reason

    def handle(self, topic: str, payload: bytes) -> str:
        """Apply one status message; ``"applied"``, ``"duplicate"``, ``"replayed"`` (a
        ``replayed`` refusal of a command the vehicle already reported on, ignored),
        ``"forged"`` (a refusal of an unparsable or unsigned copy of such a command, ignored)
        or the rejection reason.

        Raises only :class:`GatewayError` from the store.
        """
        with self._lock:
            return self._handle(topic, payload)

    def _handle(self, topic: str, payload: bytes) -> str:
        now = self.clock_ms()
        self.stats.received += 1
        topic_vin = self._vin_of_topic(topic)
        if topic_vin is None or not topic.endswith("/cmd"):
            return self._reject(now, topic, "bad_topic", f"not a command status topic: {topic!r}")
        try:
            status = _read_status(payload)
        except (TcuError, ValueError, TypeError, KeyError) as exc:
            reason = str(getattr(exc, "reason", "") or "malformed_status")
            return self._reject(now, topic, reason, str(exc))
        if status.vin != topic_vin:
            detail = f"status of {status.vin!r} on the topic of {topic_vin!r}"
            return self._reject(now, topic, "vin_mismatch", detail)
        if not status.command_id:
            detail = f"the vehicle could not read a command: {status.status} {status.detail}"
            return self._reject(now, topic, "unidentified_command", detail)
        record = self.store.get_record(REMOTE_KIND, status.command_id.hex())
        if record is None or record.vin != status.vin:
            detail = f"no remote {status.command_id.hex()} of {status.vin}"
            return self._reject(now, topic, "unknown_command", detail)
        for entry in record.body.get("history", []):
            if (
                entry.get("source") == "vehicle"
                and entry.get("status") == status.status
                and entry.get("vehicleAtMs") == status.at_ms
            ):
                self.stats.duplicates += 1
                return "duplicate"
        refused_for = self._refusal_reason(status.detail) if status.status == "Failed" else ""
        if refused_for in _NOT_ABOUT_A_TAKEN_COMMAND and self._heard_from(record):
            if refused_for == "replayed":
                self.stats.replay_refusals += 1
            else:
                self.stats.forged_refusals += 1
            detail = status.detail[:200]
            log.info("%s refusal of remote %s ignored: %s", refused_for, record.id, detail)
            return "replayed" if refused_for == "replayed" else "forged"
        if record.body.get("status") in DONE_STATUSES:
            detail = f"{status.status} after {record.body.get('status')}"
            return self._reject(now, topic, "already_done", detail)
        cause = status.failure_cause if status.status == "Failed" else None
        if status.status == "Failed" and cause is None:
            cause = "GeneralError"
        updated = _with_status(
            record,
            status.status,
            now,
            source="vehicle",
            cause=cause,
            detail=status.detail,
            vehicle_at_ms=status.at_ms,
        )
        self.store.put_record(updated)
        self.stats.applied += 1
        self._notify(updated, now)
        return "applied"

    @staticmethod
    def _heard_from(record: Record) -> bool:
        """Whether the vehicle already reported on the remote (it took the command)."""
        return any(entry.get("source") == "vehicle" for entry in record.body.get("history", []))

    def _notify(self, record: Record, now: int) -> None:
        why = notify(self.store, record, now)
        if why:
            self.stats.not_notified[why] += 1
        else:
            self.stats.notified += 1
            if self.on_notified is not None:
                self.on_notified()

    def expire_due(self) -> int:
        """Close as ``Failed`` (``VehicleConnectionTimeout``) the remotes past expiry + grace."""
        with self._lock:
            now = self.clock_ms()
            closed = 0
            for record in self.store.records(REMOTE_KIND):
                if record.body.get("status") in DONE_STATUSES:
                    continue
                if int(record.body.get("expiresAtMs", now)) + self.grace_ms > now:
                    continue
                updated = _with_status(
                    record,
                    "Failed",
                    now,
                    source="gateway",
                    cause="VehicleConnectionTimeout",
                    detail="the command expired without a final status from the vehicle",
                )
                self.store.put_record(updated)
                self._notify(updated, now)
                closed += 1
            self.stats.expired += closed
            return closed
