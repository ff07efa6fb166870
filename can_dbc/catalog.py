"""The signal catalog: logical vehicle signals, their wire ids, scopes and refresh classes."""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from can_dbc.errors import MappingError

__all__ = [
    "Catalog",
    "Refresh",
    "Scope",
    "SignalSpec",
    "SignalType",
    "Trigger",
    "default_catalog",
    "load_catalog",
]


class SignalType(enum.Enum):
    """The kind of value a signal carries."""

    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    ENUM = "enum"


class Scope(enum.Enum):
    """The data scopes of the connected-car services."""

    TELEMETRY = "telemetry"
    POSITION = "position"
    TRIP = "trip"
    ALERT = "alert"
    COLLISION = "collision"
    MAINTENANCE = "maintenance"


class Refresh(enum.Enum):
    """How often the box samples a signal."""

    EVENT = "event"
    FAST = "fast"
    NORMAL = "normal"
    SLOW = "slow"


class Trigger(enum.Enum):
    """Why an event-class signal makes the box upload at once."""

    IGNITION = "ignition"
    DOOR = "door"
    CRASH = "crash"
    ALERT = "alert"
    PRIVACY = "privacy"


@dataclass(frozen=True)
class SignalSpec:
    """One logical signal of the catalog."""

    id: int
    name: str
    type: SignalType
    scope: Scope
    refresh: Refresh
    exp: int
    unit: str = ""
    trigger: Trigger | None = None
    enum: Mapping[int, str] = field(default_factory=dict)
    api: str = ""


_SIGNAL_KEYS = {"id", "name", "type", "unit", "scope", "refresh", "exp", "trigger", "enum", "api"}


@dataclass(frozen=True)
class Catalog:
    """Every logical signal by id and by name, and the services' data scopes."""

    signals: tuple[SignalSpec, ...]
    services: Mapping[str, frozenset[Scope]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {s.id: s for s in self.signals})
        object.__setattr__(self, "_by_name", {s.name: s for s in self.signals})

    def by_id(self, signal_id: int) -> SignalSpec:
        """The signal with this wire id; ``KeyError`` when there is none."""
        return self._by_id[signal_id]  # type: ignore[attr-defined,no-any-return]

    def by_name(self, name: str) -> SignalSpec:
        """The signal with this VSS-style name; ``KeyError`` when there is none."""
        return self._by_name[name]  # type: ignore[attr-defined,no-any-return]

    def get(self, signal_id: int) -> SignalSpec | None:
        """The signal with this wire id, or ``None``."""
        return self._by_id.get(signal_id)  # type: ignore[attr-defined,no-any-return]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name  # type: ignore[attr-defined]

    def scopes_of(self, services: Iterable[str]) -> frozenset[Scope]:
        """The union of the data scopes of these services; unknown names are an error."""
        scopes: set[Scope] = set()
        for name in services:
            try:
                scopes |= self.services[name]
            except KeyError:
                known = ", ".join(sorted(self.services))
                raise MappingError(f"unknown service {name!r} (known: {known})") from None
        return frozenset(scopes)


def _enum_value(kind: type[enum.Enum], raw: object, where: str) -> Any:
    try:
        return kind(raw)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in kind)
        raise MappingError(f"{where}: {raw!r} is not one of {allowed}") from None


def _parse_signal(entry: object, where: str) -> SignalSpec:
    if not isinstance(entry, dict):
        raise MappingError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = set(entry) - _SIGNAL_KEYS
    if unknown:
        raise MappingError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("id", "name", "type", "scope", "refresh", "exp"):
        if key not in entry:
            raise MappingError(f"{where}: missing key {key!r}")
    sid, name, exp = entry["id"], entry["name"], entry["exp"]
    if not isinstance(sid, int) or isinstance(sid, bool) or not 0 < sid < 65536:
        raise MappingError(f"{where}: id must be an integer in 1..65535, got {sid!r}")
    if not isinstance(name, str) or not name:
        raise MappingError(f"{where}: name must be a non-empty string")
    if not isinstance(exp, int) or isinstance(exp, bool) or not -9 <= exp <= 9:
        raise MappingError(f"{where}: exp must be an integer in -9..9, got {exp!r}")
    raw_enum = entry.get("enum") or {}
    if not isinstance(raw_enum, dict) or not all(
        isinstance(k, int) and isinstance(v, str) for k, v in raw_enum.items()
    ):
        raise MappingError(f"{where}: enum must map integers to names")
    trigger = entry.get("trigger")
    return SignalSpec(
        id=sid,
        name=name,
        type=_enum_value(SignalType, entry["type"], f"{where}.type"),
        scope=_enum_value(Scope, entry["scope"], f"{where}.scope"),
        refresh=_enum_value(Refresh, entry["refresh"], f"{where}.refresh"),
        exp=exp,
        unit=str(entry.get("unit", "")),
        trigger=None if trigger is None else _enum_value(Trigger, trigger, f"{where}.trigger"),
        enum=dict(raw_enum),
        api=str(entry.get("api", "")),
    )


def parse_catalog(document: object, source: str = "<catalog>") -> Catalog:
    """Build a :class:`Catalog` from a parsed YAML document; errors name the entry at fault."""
    if not isinstance(document, dict):
        raise MappingError(f"{source}: expected a mapping at the top level")
    if document.get("format") != "tcusim-catalog/1":
        raise MappingError(f"{source}: format must be 'tcusim-catalog/1'")
    unknown = set(document) - {"format", "services", "signals"}
    if unknown:
        raise MappingError(f"{source}: unknown keys {sorted(unknown)}")
    raw_signals = document.get("signals")
    if not isinstance(raw_signals, list) or not raw_signals:
        raise MappingError(f"{source}: 'signals' must be a non-empty list")
    signals = tuple(
        _parse_signal(entry, f"{source}: signals[{i}]") for i, entry in enumerate(raw_signals)
    )
    seen_ids: set[int] = set()
    seen_names: set[str] = set()
    for spec in signals:
        if spec.id in seen_ids:
            raise MappingError(f"{source}: duplicate signal id {spec.id}")
        if spec.name in seen_names:
            raise MappingError(f"{source}: duplicate signal name {spec.name}")
        seen_ids.add(spec.id)
        seen_names.add(spec.name)
    raw_services = document.get("services") or {}
    if not isinstance(raw_services, dict):
        raise MappingError(f"{source}: 'services' must map names to lists of scopes")
    services = {
        str(name): frozenset(
            _enum_value(Scope, s, f"{source}: services.{name}") for s in (scopes or [])
        )
        for name, scopes in raw_services.items()
    }
    return Catalog(signals=signals, services=services)


def load_catalog(path: str | Path) -> Catalog:
    """Load a catalog YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"{p}: cannot read: {exc.strerror}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MappingError(f"{p}: not valid YAML: {exc}") from exc
    return parse_catalog(document, str(p))


@functools.cache
def default_catalog() -> Catalog:
    """The catalog shipped with tcusim (loaded once)."""
    text = resources.files("can_dbc").joinpath("catalog.yaml").read_text(encoding="utf-8")
    return parse_catalog(yaml.safe_load(text), "can_dbc/catalog.yaml")
