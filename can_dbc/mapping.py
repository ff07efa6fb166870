"""The signal mapping: which DBC signal carries each logical (catalog) signal, and how.

A mapping file is YAML::

    format: tcusim-mapping/1
    network: [tcusim_car.dbc]          # network files, relative to this file
    signals:
      Vehicle.Speed: {message: Dyn_Veh, signal: P060_vECU}
      Vehicle.Speed: ...                # a name mapped twice is an error
      Vehicle.Powertrain.Range: {message: ID33AUI_rangeSOC, signal: UI_Range, scale: 1.609344}
      Vehicle.Alert.EngineFault:
        message: Dyn2_CMM
        signal: P344_Com_bMILOn
        values: {0: false, -1: true}    # DBC raw integer -> catalog enum integer or bool
      Vehicle.Cabin.HVAC.AmbientAirTemperature:
        {message: ID243VCRIGHT_hvacStatus, signal: VCRIGHT_hvacCabinTempEst, multiplexer: 0}

Per entry: ``message`` and ``signal`` (DBC names), and optionally ``scale``/``offset`` (the
catalog value is ``dbc_physical * scale + offset``), ``values`` (a map from the DBC *raw*
integer to the catalog value; exclusive with ``scale``/``offset``), ``refresh`` (overrides
the catalog's refresh class) and ``multiplexer`` (decode the signal only when its
multiplexer has this value; the signal must be multiplexed and the value one of its ids).

Two checks catch a mapping that loads but could never be right:

- units: when the DBC signal's unit and the catalog's are both known (a DBC unit of ``""``
  or ``"-"`` is unknown) and are not spellings of one unit (:data:`UNIT_ALIASES`; case and
  spaces are ignored), the entry must convert with ``scale``/``offset`` (or ``values``);
  ``scale: 1`` states that the two agree as they are;
- ``values`` keys must be raw values the signal's bits can hold.

The ``network`` files are resolved relative to the mapping file. A mapping for a network
that is not shipped with it (a third-party DBC) names the file it expects and is loaded with
``load_mapping(path, network_paths=[...])``, which replaces the ``network`` list.

Every fault - an unknown key, a name not in the catalog, a message or signal not in the
network, a name mapped twice, a value of the wrong kind - is a
:class:`~can_dbc.errors.MappingError` naming the file and the entry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import yaml
from cantools.database.can import Database, Message, Signal

from can_dbc.catalog import Catalog, Refresh, SignalSpec, SignalType, default_catalog
from can_dbc.errors import MappingError
from can_dbc.loader import LoadedNetwork, load_network

__all__ = [
    "MAPPING_FORMAT",
    "UNIT_ALIASES",
    "FrameKey",
    "MappedSignal",
    "SignalMapping",
    "load_mapping",
    "parse_mapping",
    "units_agree",
]

MAPPING_FORMAT = "tcusim-mapping/1"

#: A frame on the bus: (arbitration id, is extended).
FrameKey = tuple[int, bool]

#: Spellings of one unit (compared without case or spaces): a DBC unit and a catalog unit in
#: one group agree without a conversion; units in no group agree only when spelled alike.
UNIT_ALIASES: tuple[frozenset[str], ...] = (
    frozenset({"km/h", "kph"}),
    frozenset({"rpm", "1/min", "min-1"}),
    frozenset({"celsius", "°c", "degc", "c"}),
    frozenset({"percent", "%"}),
    frozenset({"v", "volt"}),
    frozenset({"km"}),
    frozenset({"m"}),
    frozenset({"deg", "°", "degree", "degrees"}),
    frozenset({"m/s2", "m/s**2", "m/s^2", "m/s/s"}),
    frozenset({"min"}),
    frozenset({"day", "d"}),
)
_UNIT_GROUP = {spelling: i for i, group in enumerate(UNIT_ALIASES) for spelling in group}
_UNKNOWN_UNITS = frozenset({"", "-"})

_TOP_KEYS = frozenset({"format", "network", "signals"})
_ENTRY_KEYS = frozenset(
    {"message", "signal", "scale", "offset", "values", "refresh", "multiplexer"}
)


@dataclass(frozen=True)
class MappedSignal:
    """One logical signal and the DBC signal that carries it."""

    spec: SignalSpec
    message: str
    signal: str
    frame_id: int
    is_extended: bool
    scale: float = 1
    offset: float = 0
    values: Mapping[int, int] | None = None
    refresh: Refresh | None = None
    multiplexer: int | None = None
    #: The entry states ``scale`` or ``offset`` (even ``scale: 1``: the units agree as is).
    converts: bool = False

    @property
    def name(self) -> str:
        """The logical (catalog) name."""
        return self.spec.name

    @property
    def id(self) -> int:
        """The catalog's wire id."""
        return self.spec.id

    @property
    def key(self) -> FrameKey:
        """The frame that carries it."""
        return (self.frame_id, self.is_extended)

    @property
    def effective_refresh(self) -> Refresh:
        """The refresh class: the mapping's override, else the catalog's."""
        return self.refresh if self.refresh is not None else self.spec.refresh

    @property
    def has_transform(self) -> bool:
        """True when ``scale``/``offset`` change the DBC value."""
        return self.scale != 1 or self.offset != 0

    def to_entry(self) -> dict[str, Any]:
        """The entry as it is written in a mapping file."""
        entry: dict[str, Any] = {"message": self.message, "signal": self.signal}
        if self.scale != 1 or (self.converts and self.offset == 0):
            entry["scale"] = self.scale
        if self.offset != 0:
            entry["offset"] = self.offset
        if self.values is not None:
            if self.spec.type is SignalType.BOOL:
                entry["values"] = {k: bool(v) for k, v in self.values.items()}
            else:
                entry["values"] = dict(self.values)
        if self.refresh is not None:
            entry["refresh"] = self.refresh.value
        if self.multiplexer is not None:
            entry["multiplexer"] = self.multiplexer
        return entry


@dataclass(frozen=True)
class SignalMapping:
    """A validated mapping, bound to the network it was checked against."""

    source: str
    network: LoadedNetwork
    network_files: tuple[str, ...]
    signals: tuple[MappedSignal, ...]
    catalog: Catalog
    _by_frame: dict[FrameKey, tuple[MappedSignal, ...]] = field(
        init=False, repr=False, compare=False
    )
    _by_name: dict[str, MappedSignal] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_frame: dict[FrameKey, list[MappedSignal]] = {}
        for mapped in self.signals:
            by_frame.setdefault(mapped.key, []).append(mapped)
        object.__setattr__(self, "_by_frame", {k: tuple(v) for k, v in by_frame.items()})
        object.__setattr__(self, "_by_name", {m.name: m for m in self.signals})

    @property
    def database(self) -> Database:
        """The cantools database of the network."""
        return self.network.database

    def frames(self) -> Mapping[FrameKey, tuple[MappedSignal, ...]]:
        """The mapped signals per frame (only frames that carry one)."""
        return self._by_frame

    def frame(self, frame_id: int, is_extended: bool) -> tuple[MappedSignal, ...]:
        """The mapped signals this frame carries (empty when none)."""
        return self._by_frame.get((frame_id, is_extended), ())

    def by_name(self, name: str) -> MappedSignal:
        """The mapping of this logical name; ``KeyError`` when it is not mapped."""
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.signals)

    def to_document(self) -> dict[str, Any]:
        """The mapping as a YAML-ready document (``parse_mapping`` reads it back)."""
        return {
            "format": MAPPING_FORMAT,
            "network": list(self.network_files),
            "signals": {m.name: m.to_entry() for m in self.signals},
        }


# --- YAML reading -----------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a key written twice in one mapping."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "found an unhashable key",
                key_node.start_mark,
            ) from None
        if duplicate:
            raise MappingError(
                f"line {key_node.start_mark.line + 1}: {key!r} is given twice "
                "(each name may be mapped once)"
            )
        seen[key] = loader.construct_object(value_node, deep=True)
    return seen


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(text: str, source: str) -> object:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except MappingError as exc:
        raise MappingError(f"{source}: {exc}") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        # PyYAML raises ValueError for a timestamp-like scalar that is no date (2001-13-45).
        detail = str(exc).replace("\n", " ")
        raise MappingError(f"{source}: not valid YAML: {detail}") from exc


# --- validation -------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]


def _network_list(document: Mapping[Any, Any], source: str) -> tuple[str, ...]:
    raw = document.get("network")
    if raw is None:
        raise MappingError(f"{source}: missing key 'network' (the network files it maps)")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise MappingError(f"{source}: 'network' must be a file name or a non-empty list of them")
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise MappingError(f"{source}: 'network' entries must be file names, got {item!r}")
    return tuple(items)


def _check_document(document: object, source: str) -> tuple[tuple[str, ...], dict[Any, Any]]:
    if not isinstance(document, dict):
        raise MappingError(f"{source}: expected a mapping at the top level")
    unknown = set(document) - _TOP_KEYS
    if unknown:
        raise MappingError(f"{source}: unknown keys {sorted(map(str, unknown))}")
    if document.get("format") != MAPPING_FORMAT:
        raise MappingError(f"{source}: format must be {MAPPING_FORMAT!r}")
    files = _network_list(document, source)
    signals = document.get("signals")
    if not isinstance(signals, dict) or not signals:
        raise MappingError(f"{source}: 'signals' must map logical names to entries")
    return files, signals


def _find_message(database: Database, name: str, where: str) -> Message:
    for message in database.messages:
        if message.name == name:
            return message
    raise MappingError(f"{where}: message {name!r} is not in the network")


def _find_signal(message: Message, name: str, where: str) -> Signal:
    for signal in message.signals:
        if signal.name == name:
            return signal
    raise MappingError(f"{where}: signal {name!r} is not in message {message.name}")


def _unit_key(unit: str | None) -> str | int | None:
    """What a unit compares as: its alias group, else its spelling; ``None`` when unknown."""
    spelling = "".join((unit or "").split()).casefold()
    if spelling in _UNKNOWN_UNITS:
        return None
    return _UNIT_GROUP.get(spelling, spelling)


def units_agree(dbc_unit: str | None, catalog_unit: str | None) -> bool:
    """Whether a DBC value in ``dbc_unit`` may be taken as is for ``catalog_unit``.

    True when either is unknown (empty or ``"-"``) or both spell one unit.
    """
    dbc, catalog = _unit_key(dbc_unit), _unit_key(catalog_unit)
    return dbc is None or catalog is None or dbc == catalog


def _check_unit(spec: SignalSpec, signal: Signal, where: str) -> None:
    if not units_agree(signal.unit, spec.unit):
        raise MappingError(
            f"{where}: {signal.name} is in {signal.unit!r} and {spec.name} in {spec.unit!r}: "
            "give scale/offset to convert"
        )


def _raw_range(signal: Signal) -> tuple[int, int]:
    if signal.is_signed:
        return -(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1
    return 0, (1 << signal.length) - 1


def _catalog_value(spec: SignalSpec, value: object, where: str) -> int:
    if spec.type is SignalType.BOOL:
        if isinstance(value, bool | int) and value in (0, 1):
            return int(value)
        raise MappingError(f"{where}: {spec.name} is a bool: values must be true/false")
    if not _is_int(value):
        raise MappingError(f"{where}: values must map to integers, got {value!r}")
    assert isinstance(value, int)
    if spec.type is SignalType.ENUM and value not in spec.enum:
        allowed = ", ".join(f"{k} ({v})" for k, v in spec.enum.items())
        raise MappingError(f"{where}: {value} is not a value of {spec.name} ({allowed})")
    return value


def _parse_entry(
    name: object, entry: object, source: str, database: Database, catalog: Catalog
) -> MappedSignal:
    where = f"{source}: signals[{name!r}]"
    if not isinstance(name, str):
        raise MappingError(f"{where}: a logical name must be a string")
    if name not in catalog:
        raise MappingError(f"{where}: {name!r} is not a signal of the catalog")
    spec = catalog.by_name(name)
    if not isinstance(entry, dict):
        raise MappingError(f"{where}: expected a mapping with 'message' and 'signal'")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise MappingError(f"{where}: unknown keys {sorted(map(str, unknown))}")
    for key in ("message", "signal"):
        if not isinstance(entry.get(key), str):
            raise MappingError(f"{where}: {key!r} must be given as a name")
    message = _find_message(database, entry["message"], where)
    signal = _find_signal(message, entry["signal"], where)

    scale = entry.get("scale", 1)
    offset = entry.get("offset", 0)
    for key, value in (("scale", scale), ("offset", offset)):
        if not _is_number(value):
            raise MappingError(f"{where}: {key} must be a finite number, got {value!r}")
    if scale == 0:
        raise MappingError(f"{where}: scale must not be 0")

    values: dict[int, int] | None = None
    if "values" in entry:
        raw_values = entry["values"]
        if not isinstance(raw_values, dict) or not raw_values:
            raise MappingError(f"{where}: values must map DBC raw integers to catalog values")
        if "scale" in entry or "offset" in entry:
            raise MappingError(f"{where}: values and scale/offset cannot be used together")
        if signal.is_float:
            raise MappingError(f"{where}: values need an integer signal; {signal.name} is float")
        values = {}
        lo, hi = _raw_range(signal)
        for raw, value in raw_values.items():
            if not _is_int(raw):
                raise MappingError(f"{where}: values keys must be DBC raw integers, got {raw!r}")
            if not lo <= raw <= hi:
                sign = "signed" if signal.is_signed else "unsigned"
                raise MappingError(
                    f"{where}: values key {raw} is not a raw value of {signal.name} "
                    f"({signal.length}-bit {sign}: {lo}..{hi})"
                )
            values[raw] = _catalog_value(spec, value, where)
    elif "scale" not in entry and "offset" not in entry:
        _check_unit(spec, signal, where)

    refresh: Refresh | None = None
    if "refresh" in entry:
        try:
            refresh = Refresh(entry["refresh"])
        except ValueError:
            allowed = ", ".join(r.value for r in Refresh)
            raise MappingError(f"{where}: refresh must be one of {allowed}") from None

    multiplexer: int | None = None
    if "multiplexer" in entry:
        multiplexer = entry["multiplexer"]
        if not _is_int(multiplexer):
            raise MappingError(f"{where}: multiplexer must be an integer")
        ids = signal.multiplexer_ids
        if not ids:
            raise MappingError(f"{where}: {signal.name} is not multiplexed")
        if multiplexer not in ids:
            raise MappingError(
                f"{where}: {signal.name} is sent with multiplexer {sorted(ids)}, not {multiplexer}"
            )

    return MappedSignal(
        spec=spec,
        message=message.name,
        signal=signal.name,
        frame_id=message.frame_id,
        is_extended=bool(message.is_extended_frame),
        scale=scale,
        offset=offset,
        values=values,
        refresh=refresh,
        multiplexer=multiplexer,
        converts="scale" in entry or "offset" in entry,
    )


def _build(
    document: object,
    source: str,
    network: LoadedNetwork,
    catalog: Catalog | None,
) -> SignalMapping:
    files, entries = _check_document(document, source)
    catalog = catalog if catalog is not None else default_catalog()
    signals = tuple(
        _parse_entry(name, entry, source, network.database, catalog)
        for name, entry in entries.items()
    )
    return SignalMapping(
        source=source, network=network, network_files=files, signals=signals, catalog=catalog
    )


def parse_mapping(
    text_or_document: str | Mapping[str, Any],
    *,
    network: LoadedNetwork,
    catalog: Catalog | None = None,
    source: str = "<mapping>",
) -> SignalMapping:
    """Validate a mapping (YAML text or a parsed document) against a loaded network.

    The ``network`` key is checked for form but not loaded: ``network`` is used.
    """
    document = (
        _read_yaml(text_or_document, source)
        if isinstance(text_or_document, str)
        else text_or_document
    )
    return _build(document, source, network, catalog)


def load_mapping(
    path: str | PathLike[str],
    catalog: Catalog | None = None,
    *,
    network_paths: Sequence[str | PathLike[str]] | None = None,
    network: LoadedNetwork | None = None,
    repair: bool = True,
) -> SignalMapping:
    """Load a mapping file and the network it maps, and validate one against the other.

    The network is, in order of precedence: ``network`` (already loaded), ``network_paths``
    (files given now, replacing the file's ``network`` list), or the file's ``network`` list
    resolved relative to the mapping file. Raises :class:`~can_dbc.errors.MappingError` for
    the mapping's faults and :class:`~can_dbc.errors.DbcError` for the network's.
    """
    p = Path(path)
    source = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise MappingError(f"{source}: not UTF-8 text: {exc.reason}") from exc
    document = _read_yaml(text, source)
    files, _entries = _check_document(document, source)
    if network is None:
        if network_paths is not None:
            resolved: Iterable[Path] = [Path(n) for n in network_paths]
        else:
            resolved = [p.parent / name for name in files]
            missing = [str(f) for f in resolved if not f.exists()]
            if missing:
                raise MappingError(
                    f"{source}: network file {missing[0]} does not exist (a third-party "
                    "network is given at load time: load_mapping(path, network_paths=[...]))"
                )
        network = load_network(list(resolved), repair=repair)
    return _build(document, source, network, catalog)
