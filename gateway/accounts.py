"""The Web API's accounts: plans, users, fleets, OAuth clients and the vehicles they reach.

Loaded from a ``format: tcusim-accounts/1`` YAML file (:func:`load_accounts`) or the
built-in demo (:func:`default_accounts`, the packaged ``gateway/data/accounts.yaml``)::

    format: tcusim-accounts/1
    plans:
      - {name: standard, per_day: 100000, per_second: 100}
    users:
      - {id: demo, email: demo@tcusim.local, password: secret}      # or password_hash:
    fleets:
      - {id: demo-fleet, label: Demo fleet, vehicles: [VR3UHZKXZHT000042]}
    clients:
      - client_id: demo-app
        secret: app-secret                                         # or secret_hash:
        kind: b2c                                                  # b2c | b2b
        redirect_uris: [http://127.0.0.1:8765/callback]            # b2c only
        fleet: demo-fleet                                          # b2b only
        plan: standard
        scopes: [data:telemetry, data:position]
    vehicles:
      - {vin: VR3UHZKXZHT000042, brand: Peugeot, label: Demo, services: [connected_car],
         owner: demo}

Passwords and client secrets are kept only as salted PBKDF2-HMAC-SHA256 hashes
(``pbkdf2_sha256$<iterations>$<salt>$<hash>``, base64url): a plain value in the file is
hashed when loaded, a ``*_hash`` value is taken as it is (:func:`hash_secret` makes one).
Every fault names the file, the line and the field; unknown keys are faults.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from can_dbc.catalog import default_catalog
from firmware_sim.scenario.yamlpos import ScenarioError, load_yaml
from gateway.errors import GatewayError

__all__ = [
    "DATA_SCOPES",
    "DEFAULT_PLAN",
    "DEMO_FLEET",
    "DEMO_USER",
    "FORMAT",
    "PBKDF2_ITERATIONS",
    "REMOTE_SCOPES",
    "SCOPES",
    "Accounts",
    "AccountsError",
    "Client",
    "Fleet",
    "Plan",
    "User",
    "Vehicle",
    "default_accounts",
    "hash_secret",
    "load_accounts",
    "load_accounts_text",
    "parse_accounts",
    "vehicle_id_of",
    "verify_secret",
]

FORMAT = "tcusim-accounts/1"

_T = TypeVar("_T")
_K = TypeVar("_K")

PBKDF2_ITERATIONS = 600_000
"""Iterations of PBKDF2-HMAC-SHA256 for newly hashed passwords and secrets."""

_MAX_ITERATIONS = 10_000_000

DATA_SCOPES: Mapping[str, str] = {
    "data:telemetry": "Read telemetry and maintenance data",
    "data:position": "Read the vehicle's position",
    "data:trip": "Read trips",
    "data:alert": "Read alerts",
    "data:collision": "Read collisions",
}
REMOTE_SCOPES: Mapping[str, str] = {
    **{
        f"remote:{action}:write": f"Send {action} remote actions and read their history"
        for action in (
            "door",
            "preconditioning",
            "horn",
            "charging",
            "lights",
            "wakeup",
            "navigation",
        )
    },
    **{
        f"remote:{action}:write": f"Send {action} remote actions (fleets only) and read their"
        " history"
        for action in ("immobilization", "stolen")
    },
}
SCOPES: Mapping[str, str] = {**DATA_SCOPES, **REMOTE_SCOPES}
"""Every OAuth scope the API knows, with a one-line description."""

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VEHICLE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_VIN_RE = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+")
_HASH_RE = re.compile(r"pbkdf2_sha256\$([0-9]{1,8})\$([A-Za-z0-9_-]{11,})\$([A-Za-z0-9_-]{43})")


class AccountsError(GatewayError):
    """An accounts file or change at fault: names the source, the line and the field."""

    def __init__(self, source: str, line: int | None, field: str, message: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")
        self.source = source
        self.line = line
        self.field = field


# -- secrets -----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A salted PBKDF2-HMAC-SHA256 hash of ``secret``: ``pbkdf2_sha256$<n>$<salt>$<hash>``."""
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"iterations must be 1..{_MAX_ITERATIONS}")
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations)
    return f"pbkdf2_sha256${iterations}${_b64(salt)}${_b64(digest)}"


def _valid_hash(stored: str) -> bool:
    match = _HASH_RE.fullmatch(stored)
    if match is None or not 1 <= int(match.group(1)) <= _MAX_ITERATIONS:
        return False
    try:
        return len(_unb64(match.group(3))) == 32 and len(_unb64(match.group(2))) >= 8
    except (binascii.Error, ValueError):
        return False


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches the hash ``stored`` (a constant-time comparison)."""
    match = _HASH_RE.fullmatch(stored)
    if match is None:
        return False
    iterations, salt, expected = int(match.group(1)), _unb64(match.group(2)), match.group(3)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8", "replace"), salt, iterations)
    return hmac.compare_digest(_b64(digest), expected)


def vehicle_id_of(vin: str) -> str:
    """The default opaque API id of a vehicle: derived from its VIN, the same every time."""
    return _b64(hashlib.sha256(b"tcusim-vehicle-id:" + vin.encode("ascii")).digest()[:12])


# -- records -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """A subscription's rate limits: requests per sliding day and per second (burst)."""

    name: str
    per_day: int
    per_second: int


DEFAULT_PLAN = Plan("standard", per_day=100_000, per_second=100)
"""The plan every accounts file has unless it defines its own ``standard``."""


@dataclass(frozen=True, slots=True)
class User:
    """An end user (B2C): logs in with e-mail and password, owns vehicles."""

    id: str
    email: str
    password_hash: str = field(repr=False)

    def check_password(self, password: str) -> bool:
        """Whether ``password`` is this user's (constant time)."""
        return verify_secret(password, self.password_hash)


@dataclass(frozen=True, slots=True)
class Fleet:
    """A fleet (B2B): a labelled set of vehicles by VIN."""

    id: str
    label: str
    vehicles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Client:
    """An OAuth client: a B2C app (authorization code) or a B2B fleet app (client credentials)."""

    client_id: str
    secret_hash: str = field(repr=False)
    kind: Literal["b2c", "b2b"]
    scopes: frozenset[str]
    plan: Plan
    redirect_uris: tuple[str, ...] = ()
    fleet: str | None = None

    def check_secret(self, secret: str) -> bool:
        """Whether ``secret`` is this client's (constant time)."""
        return verify_secret(secret, self.secret_hash)


@dataclass(frozen=True, slots=True)
class Vehicle:
    """A vehicle the API serves: VIN, opaque id, brand, label, subscribed services, owner."""

    vin: str
    id: str
    brand: str = ""
    label: str = ""
    services: tuple[str, ...] = ("connected_car",)
    owner: str | None = None


# -- the accounts ------------------------------------------------------------------------------


class Accounts:
    """Every plan, user, fleet, client and vehicle, checked for consistency; immutable."""

    def __init__(
        self,
        *,
        plans: Iterable[Plan] = (),
        users: Iterable[User] = (),
        fleets: Iterable[Fleet] = (),
        clients: Iterable[Client] = (),
        vehicles: Iterable[Vehicle] = (),
        source: str = "<accounts>",
    ) -> None:
        self.source = source
        self.plans: dict[str, Plan] = {DEFAULT_PLAN.name: DEFAULT_PLAN}
        self.plans.update(_unique(plans, lambda p: p.name, source, "plans"))
        self._users = _unique(users, lambda u: u.id, source, "users")
        self._fleets = _unique(fleets, lambda f: f.id, source, "fleets")
        self._clients = _unique(clients, lambda c: c.client_id, source, "clients")
        self._vehicles = _unique(vehicles, lambda v: v.vin, source, "vehicles")
        self._emails = _unique(self._users.values(), lambda u: u.email.lower(), source, "users")
        self._ids = _unique(self._vehicles.values(), lambda v: v.id, source, "vehicles")
        for user in self._users.values():
            if not _valid_hash(user.password_hash):
                raise AccountsError(source, None, f"users.{user.id}", "not a password hash")
        for client in self._clients.values():
            where = f"clients.{client.client_id}"
            if not _valid_hash(client.secret_hash):
                raise AccountsError(source, None, where, "not a secret hash")
            if client.kind == "b2b" and client.fleet not in self._fleets:
                raise AccountsError(source, None, where, f"no fleet {client.fleet!r}")
            if self.plans.get(client.plan.name) != client.plan:
                raise AccountsError(source, None, where, f"no plan {client.plan.name!r}")
        for vehicle in self._vehicles.values():
            if vehicle.owner is not None and vehicle.owner not in self._users:
                where = f"vehicles.{vehicle.vin}"
                raise AccountsError(source, None, where, f"no user {vehicle.owner!r}")
        self._by_fleet: dict[str, list[Vehicle]] = {}
        for fleet in self._fleets.values():
            for vin in fleet.vehicles:
                if vin not in self._vehicles:
                    raise AccountsError(source, None, f"fleets.{fleet.id}", f"no vehicle {vin}")
            self._by_fleet[fleet.id] = [self._vehicles[vin] for vin in fleet.vehicles]
        self._by_user: dict[str, list[Vehicle]] = {}
        for vehicle in self._vehicles.values():
            if vehicle.owner is not None:
                self._by_user.setdefault(vehicle.owner, []).append(vehicle)

    def __repr__(self) -> str:
        return (
            f"Accounts({self.source}: {len(self._users)} users, {len(self._fleets)} fleets, "
            f"{len(self._clients)} clients, {len(self._vehicles)} vehicles)"
        )

    def user(self, user_id: str) -> User | None:
        """The user with this id, or ``None``."""
        return self._users.get(user_id)

    def user_by_email(self, email: str) -> User | None:
        """The user with this e-mail address (any case), or ``None``."""
        return self._emails.get(email.lower())

    def fleet(self, fleet_id: str) -> Fleet | None:
        """The fleet with this id, or ``None``."""
        return self._fleets.get(fleet_id)

    def client(self, client_id: str) -> Client | None:
        """The OAuth client with this id, or ``None``."""
        return self._clients.get(client_id)

    def vehicle_by_id(self, vehicle_id: str) -> Vehicle | None:
        """The vehicle with this opaque API id, or ``None``."""
        return self._ids.get(vehicle_id)

    def vehicle_by_vin(self, vin: str) -> Vehicle | None:
        """The vehicle with this VIN, or ``None``."""
        return self._vehicles.get(vin)

    def vehicles_of_user(self, user_id: str) -> list[Vehicle]:
        """The vehicles a user owns, in file order."""
        return list(self._by_user.get(user_id, ()))

    def vehicles_of_fleet(self, fleet_id: str) -> list[Vehicle]:
        """The vehicles of a fleet, in the fleet's order."""
        return list(self._by_fleet.get(fleet_id, ()))

    @property
    def users(self) -> list[User]:
        """Every user."""
        return list(self._users.values())

    @property
    def fleets(self) -> list[Fleet]:
        """Every fleet."""
        return list(self._fleets.values())

    @property
    def clients(self) -> list[Client]:
        """Every OAuth client."""
        return list(self._clients.values())

    @property
    def vehicles(self) -> list[Vehicle]:
        """Every vehicle."""
        return list(self._vehicles.values())

    def with_vehicle(
        self,
        vin: str,
        *,
        owner: str | None = None,
        fleet: str | None = None,
        services: Iterable[str] = ("connected_car",),
        brand: str = "",
        label: str = "",
        vehicle_id: str | None = None,
    ) -> Accounts:
        """New accounts where ``vin`` is a vehicle of ``owner`` (a user id) and ``fleet``.

        A vehicle already known with this VIN is replaced (and stays in its fleets).
        """
        where = f"vehicles.{vin}"
        if not isinstance(vin, str) or _VIN_RE.fullmatch(vin) is None:
            raise AccountsError(self.source, None, "vin", f"{vin!r} is not a VIN")
        names = tuple(services)
        _check_services(names, self.source, None, f"{where}.services")
        vehicle = Vehicle(
            vin=vin,
            id=vehicle_id if vehicle_id is not None else vehicle_id_of(vin),
            brand=brand,
            label=label,
            services=names,
            owner=owner,
        )
        if _VEHICLE_ID_RE.fullmatch(vehicle.id) is None:
            raise AccountsError(self.source, None, f"{where}.id", "not an id")
        vehicles = dict(self._vehicles)
        vehicles[vin] = vehicle
        fleets = dict(self._fleets)
        if fleet is not None:
            known = fleets.get(fleet)
            if known is None:
                raise AccountsError(self.source, None, f"{where}.fleet", f"no fleet {fleet!r}")
            if vin not in known.vehicles:
                fleets[fleet] = replace(known, vehicles=(*known.vehicles, vin))
        return Accounts(
            plans=self.plans.values(),
            users=self._users.values(),
            fleets=fleets.values(),
            clients=self._clients.values(),
            vehicles=vehicles.values(),
            source=self.source,
        )


def _unique(items: Iterable[_T], key: Callable[[_T], _K], source: str, what: str) -> dict[_K, _T]:
    out: dict[_K, _T] = {}
    for item in items:
        k = key(item)
        if k in out:
            raise AccountsError(source, None, what, f"{k!r} given twice")
        out[k] = item
    return out


def _check_services(names: tuple[str, ...], source: str, line: int | None, where: str) -> None:
    known = default_catalog().services
    for name in names:
        if name not in known:
            allowed = ", ".join(sorted(known))
            raise AccountsError(source, line, where, f"unknown service {name!r} ({allowed})")


# -- parsing -----------------------------------------------------------------------------------


class _Reader:
    """Field access on a parsed document, every fault naming source, line and field."""

    def __init__(self, source: str, iterations: int) -> None:
        self.source = source
        self.iterations = iterations

    def fail(self, line: int | None, where: str, message: str) -> AccountsError:
        return AccountsError(self.source, line, where, message)

    def mapping(
        self, value: object, line: int | None, where: str, keys: set[str], required: set[str]
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(line, where, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(line, where, f"key {key!r} is not a name")
        unknown = sorted(set(value) - keys)
        if unknown:
            key = unknown[0]
            raise self.fail(_key_line(value, key, line), f"{where}.{key}", "unknown key")
        missing = sorted(required - set(value))
        if missing:
            raise self.fail(line, f"{where}.{missing[0]}", "missing")
        return value

    def entries(self, doc: dict[str, Any], key: str, line: int | None) -> list[tuple[Any, int]]:
        value = doc.get(key)
        if value is None:
            return []
        at = _key_line(doc, key, line)
        if not isinstance(value, list):
            raise self.fail(at, key, f"expected a list, got {_kind(value)}")
        lines = getattr(value, "item_lines", None) or [at] * len(value)
        return list(zip(value, lines, strict=True))

    def string(
        self, entry: dict[str, Any], key: str, line: int | None, where: str, pattern: Any = None
    ) -> str:
        value = entry[key]
        at = _key_line(entry, key, line)
        if not isinstance(value, str) or not value:
            raise self.fail(
                at, f"{where}.{key}", f"expected a non-empty string, got {_kind(value)}"
            )
        if pattern is not None and pattern.fullmatch(value) is None:
            raise self.fail(at, f"{where}.{key}", f"{value!r} is not a valid {key}")
        return value

    def text(self, entry: dict[str, Any], key: str, line: int | None, where: str) -> str:
        value = entry.get(key, "")
        if not isinstance(value, str):
            at = _key_line(entry, key, line)
            raise self.fail(at, f"{where}.{key}", f"expected a string, got {_kind(value)}")
        return value

    def count(self, entry: dict[str, Any], key: str, line: int | None, where: str) -> int:
        value = entry[key]
        if type(value) is not int or not 1 <= value <= 10**12:
            at = _key_line(entry, key, line)
            raise self.fail(at, f"{where}.{key}", f"expected a positive integer, got {value!r}")
        return value

    def strings(self, entry: dict[str, Any], key: str, line: int | None, where: str) -> list[str]:
        value = entry.get(key, [])
        at = _key_line(entry, key, line)
        if not isinstance(value, list):
            raise self.fail(at, f"{where}.{key}", f"expected a list, got {_kind(value)}")
        item_lines = getattr(value, "item_lines", None) or [at] * len(value)
        for i, (item, item_line) in enumerate(zip(value, item_lines, strict=True)):
            if not isinstance(item, str) or not item:
                raise self.fail(item_line, f"{where}.{key}[{i}]", f"not a string: {item!r}")
        if len(set(value)) != len(value):
            raise self.fail(at, f"{where}.{key}", "an item is given twice")
        return list(value)

    def secret(
        self, entry: dict[str, Any], plain: str, hashed: str, line: int | None, where: str
    ) -> str:
        if (plain in entry) == (hashed in entry):
            raise self.fail(line, where, f"give exactly one of {plain!r} and {hashed!r}")
        if plain in entry:
            value = entry[plain]
            if not isinstance(value, str) or not value:
                at = _key_line(entry, plain, line)
                raise self.fail(at, f"{where}.{plain}", "expected a non-empty string")
            return hash_secret(value, iterations=self.iterations)
        value = entry[hashed]
        if not isinstance(value, str) or not _valid_hash(value):
            at = _key_line(entry, hashed, line)
            raise self.fail(at, f"{where}.{hashed}", "not a pbkdf2_sha256$<n>$<salt>$<hash>")
        return value


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _key_line(container: object, key: str, default: int | None) -> int | None:
    lines = getattr(container, "key_lines", None)
    if isinstance(lines, dict) and key in lines:
        return int(lines[key])
    line = getattr(container, "line", None)
    return int(line) if isinstance(line, int) and line else default


def parse_accounts(
    document: object, source: str = "<accounts>", *, iterations: int = PBKDF2_ITERATIONS
) -> Accounts:
    """Build :class:`Accounts` from a parsed document; ``iterations`` hash plain secrets."""
    r = _Reader(source, iterations)
    top = r.mapping(
        document,
        _key_line(document, "", 1),
        "document",
        {"format", "plans", "users", "fleets", "clients", "vehicles"},
        {"format"},
    )
    if top["format"] != FORMAT:
        raise r.fail(_key_line(top, "format", 1), "format", f"must be {FORMAT!r}")

    plans: dict[str, Plan] = {DEFAULT_PLAN.name: DEFAULT_PLAN}
    defined: set[str] = set()
    for i, (raw, line) in enumerate(r.entries(top, "plans", 1)):
        where = f"plans[{i}]"
        entry = r.mapping(raw, line, where, {"name", "per_day", "per_second"}, {"name"})
        name = r.string(entry, "name", line, where, _ID_RE)
        if name in defined:
            raise r.fail(_key_line(entry, "name", line), f"{where}.name", f"{name!r} given twice")
        defined.add(name)
        plans[name] = Plan(
            name,
            per_day=r.count(entry, "per_day", line, where) if "per_day" in entry else 100_000,
            per_second=r.count(entry, "per_second", line, where) if "per_second" in entry else 100,
        )

    users: list[User] = []
    emails: set[str] = set()
    for i, (raw, line) in enumerate(r.entries(top, "users", 1)):
        where = f"users[{i}]"
        keys = {"id", "email", "password", "password_hash"}
        entry = r.mapping(raw, line, where, keys, {"id", "email"})
        uid = r.string(entry, "id", line, where, _ID_RE)
        if any(u.id == uid for u in users):
            raise r.fail(_key_line(entry, "id", line), f"{where}.id", f"{uid!r} given twice")
        email = r.string(entry, "email", line, where, _EMAIL_RE)
        if email.lower() in emails:
            at = _key_line(entry, "email", line)
            raise r.fail(at, f"{where}.email", f"{email!r} given twice")
        emails.add(email.lower())
        users.append(User(uid, email, r.secret(entry, "password", "password_hash", line, where)))
    user_ids = {u.id for u in users}

    raw_vehicles = r.entries(top, "vehicles", 1)
    vins: set[str] = set()
    vehicle_ids: set[str] = set()
    vehicles: list[Vehicle] = []
    for i, (raw, line) in enumerate(raw_vehicles):
        where = f"vehicles[{i}]"
        keys = {"vin", "id", "brand", "label", "services", "owner"}
        entry = r.mapping(raw, line, where, keys, {"vin"})
        vin = r.string(entry, "vin", line, where, _VIN_RE)
        if vin in vins:
            raise r.fail(_key_line(entry, "vin", line), f"{where}.vin", f"{vin} given twice")
        vins.add(vin)
        vid = r.string(entry, "id", line, where, _VEHICLE_ID_RE) if "id" in entry else None
        vid = vid if vid is not None else vehicle_id_of(vin)
        if vid in vehicle_ids:
            raise r.fail(_key_line(entry, "id", line), f"{where}.id", f"{vid!r} given twice")
        vehicle_ids.add(vid)
        services = tuple(r.strings(entry, "services", line, where) or ["connected_car"])
        _check_services(services, source, _key_line(entry, "services", line), f"{where}.services")
        owner = r.string(entry, "owner", line, where) if "owner" in entry else None
        if owner is not None and owner not in user_ids:
            at = _key_line(entry, "owner", line)
            raise r.fail(at, f"{where}.owner", f"no user {owner!r}")
        vehicles.append(
            Vehicle(
                vin=vin,
                id=vid,
                brand=r.text(entry, "brand", line, where),
                label=r.text(entry, "label", line, where),
                services=services,
                owner=owner,
            )
        )

    fleets: list[Fleet] = []
    for i, (raw, line) in enumerate(r.entries(top, "fleets", 1)):
        where = f"fleets[{i}]"
        entry = r.mapping(raw, line, where, {"id", "label", "vehicles"}, {"id"})
        fid = r.string(entry, "id", line, where, _ID_RE)
        if any(f.id == fid for f in fleets):
            raise r.fail(_key_line(entry, "id", line), f"{where}.id", f"{fid!r} given twice")
        members = r.strings(entry, "vehicles", line, where)
        for vin in members:
            if vin not in vins:
                at = _key_line(entry, "vehicles", line)
                raise r.fail(at, f"{where}.vehicles", f"no vehicle {vin!r}")
        fleets.append(Fleet(fid, r.text(entry, "label", line, where), tuple(members)))
    fleet_ids = {f.id for f in fleets}

    clients: list[Client] = []
    for i, (raw, line) in enumerate(r.entries(top, "clients", 1)):
        where = f"clients[{i}]"
        keys = {
            "client_id",
            "secret",
            "secret_hash",
            "kind",
            "redirect_uris",
            "fleet",
            "plan",
            "scopes",
        }
        entry = r.mapping(raw, line, where, keys, {"client_id", "kind"})
        cid = r.string(entry, "client_id", line, where, _ID_RE)
        if any(c.client_id == cid for c in clients):
            at = _key_line(entry, "client_id", line)
            raise r.fail(at, f"{where}.client_id", f"{cid!r} given twice")
        kind = entry["kind"]
        if kind not in ("b2c", "b2b"):
            at = _key_line(entry, "kind", line)
            raise r.fail(at, f"{where}.kind", f"{kind!r} is not one of b2c, b2b")
        uris = r.strings(entry, "redirect_uris", line, where)
        for j, uri in enumerate(uris):
            problem = _redirect_uri_problem(uri)
            if problem:
                at = _key_line(entry, "redirect_uris", line)
                raise r.fail(at, f"{where}.redirect_uris[{j}]", problem)
        fleet: str | None = None
        if kind == "b2c":
            if not uris:
                raise r.fail(line, f"{where}.redirect_uris", "a b2c client needs at least one")
            if "fleet" in entry:
                at = _key_line(entry, "fleet", line)
                raise r.fail(at, f"{where}.fleet", "only a b2b client has a fleet")
        else:
            if uris:
                at = _key_line(entry, "redirect_uris", line)
                raise r.fail(at, f"{where}.redirect_uris", "only a b2c client redirects")
            if "fleet" not in entry:
                raise r.fail(line, f"{where}.fleet", "a b2b client needs a fleet")
            fleet = r.string(entry, "fleet", line, where)
            if fleet not in fleet_ids:
                at = _key_line(entry, "fleet", line)
                raise r.fail(at, f"{where}.fleet", f"no fleet {fleet!r}")
        plan_name = r.string(entry, "plan", line, where) if "plan" in entry else DEFAULT_PLAN.name
        if plan_name not in plans:
            at = _key_line(entry, "plan", line)
            raise r.fail(at, f"{where}.plan", f"no plan {plan_name!r}")
        scopes = r.strings(entry, "scopes", line, where) if "scopes" in entry else list(SCOPES)
        for j, scope in enumerate(scopes):
            if scope not in SCOPES:
                at = _key_line(entry, "scopes", line)
                raise r.fail(at, f"{where}.scopes[{j}]", f"unknown scope {scope!r}")
        clients.append(
            Client(
                client_id=cid,
                secret_hash=r.secret(entry, "secret", "secret_hash", line, where),
                kind=kind,
                scopes=frozenset(scopes),
                plan=plans[plan_name],
                redirect_uris=tuple(uris),
                fleet=fleet,
            )
        )

    return Accounts(
        plans=[p for p in plans.values() if p.name != DEFAULT_PLAN.name or p != DEFAULT_PLAN],
        users=users,
        fleets=fleets,
        clients=clients,
        vehicles=vehicles,
        source=source,
    )


def _redirect_uri_problem(uri: str) -> str:
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "not a URI"
    if not parts.scheme or not (parts.netloc or parts.path):
        return "not an absolute URI"
    if parts.fragment or uri.endswith("#"):
        return "a redirect URI has no fragment"
    return ""


def load_accounts_text(
    text: str, source: str = "<accounts>", *, iterations: int = PBKDF2_ITERATIONS
) -> Accounts:
    """Parse the text of an accounts file."""
    try:
        document = load_yaml(text, source)
    except ScenarioError as exc:
        raise AccountsError(source, exc.line, exc.field, str(exc).split(": ", 1)[-1]) from None
    return parse_accounts(document, source, iterations=iterations)


def load_accounts(path: str | Path, *, iterations: int = PBKDF2_ITERATIONS) -> Accounts:
    """Load an accounts file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise AccountsError(str(p), None, "", f"cannot read: {reason}") from None
    return load_accounts_text(text, str(p), iterations=iterations)


@functools.cache
def _packaged() -> Accounts:
    text = resources.files("gateway").joinpath("data/accounts.yaml").read_text(encoding="utf-8")
    return load_accounts_text(text, "gateway/data/accounts.yaml")


DEMO_USER = "demo"
DEMO_FLEET = "demo-fleet"


def default_accounts(vins: Iterable[str] = ()) -> Accounts:
    """The demo accounts (``gateway/data/accounts.yaml``) plus ``vins``, the demo user's.

    Each extra VIN becomes a ``connected_car`` vehicle of the demo user and the demo fleet.
    """
    accounts = _packaged()
    for vin in vins:
        if accounts.vehicle_by_vin(vin) is None:
            accounts = accounts.with_vehicle(vin, owner=DEMO_USER, fleet=DEMO_FLEET)
    return accounts
