"""Decoders compiled once from a network (and a mapping), run per frame.

:class:`CompiledDecoder` is the box's decoder: it keeps only the frames that carry a mapped
signal, indexed by ``(arbitration_id, is_extended)``, and returns ``(catalog id, value)``
pairs in the catalog's units. A frame whose bytes equal the last bytes seen for its id is
skipped (counted ``unchanged``) after one dictionary lookup and one comparison.

For a message that is not multiplexed and has no IEEE float signal, the mapped signals are
read by shifts and masks precompiled from the DBC (the same bits cantools reads; the tests
prove both equal with Hypothesis). Other messages go through cantools'
``Message.decode(data, decode_choices=False, scaling=False, allow_truncated=True)``, and
both paths then scale with the DBC's own conversion (``raw * scale + offset``).

:class:`MessageDecoder` decodes every signal of every message of a database by DBC name (the
``tcusim decode`` command; also the way to read frames that carry no catalog signal).

Counting rules, the same for both (see :class:`DecoderStats`): every frame given is counted
in ``frames`` and in exactly one of ``decoded``, ``unchanged``, ``unknown_id``, ``errors``,
``error_frames`` and ``remote_frames``.

Truncated frames (shorter than the DBC says): the signals that fit entirely in the bytes
received are decoded, the others are left out, and the frame is counted in ``truncated``
(as well as ``decoded``). A multiplexed signal needs its multiplexer to fit too. Longer
frames are decoded from their first DBC-length bytes.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

import can
from cantools.database.can import Database, Message, Signal
from cantools.database.conversion import BaseConversion, IdentityConversion
from cantools.database.errors import Error as CantoolsError

from can_dbc.catalog import SignalType
from can_dbc.errors import MappingError
from can_dbc.mapping import FrameKey, MappedSignal, SignalMapping

__all__ = [
    "CompiledDecoder",
    "DecoderStats",
    "MessageDecoder",
    "Value",
]

Value: TypeAlias = int | float

# What cantools' decode raises on bytes it cannot decode (an unknown multiplexer value is a
# DecodeError, a subclass of its Error; bitstruct faults come as DecodeError or ValueError).
_DECODE_FAULTS = (CantoolsError, ValueError, KeyError, IndexError)

_FLOAT, _INT, _BOOL = 0, 1, 2


@dataclass
class DecoderStats:
    """Counts of what a decoder was given.

    ``frames`` = ``decoded + unchanged + unknown_id + errors + error_frames + remote_frames``;
    ``truncated`` counts the decoded frames that were shorter than their DBC length.
    ``error_reasons`` counts errors by reason; ``unmapped_values`` counts, per logical
    name, raw values that its ``values`` map does not list (that signal is left out);
    ``non_finite`` counts NaN or infinite floats for integer, enum and bool signals (left out).
    """

    frames: int = 0
    decoded: int = 0
    unchanged: int = 0
    unknown_id: int = 0
    errors: int = 0
    truncated: int = 0
    error_frames: int = 0
    remote_frames: int = 0
    error_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    unmapped_values: collections.Counter[str] = field(default_factory=collections.Counter)
    non_finite: collections.Counter[str] = field(default_factory=collections.Counter)

    def counted_apart(self, msg: can.Message) -> bool:
        """Count an error or a remote frame (they carry no signals); False for a data frame."""
        if msg.is_error_frame:
            self.frames += 1
            self.error_frames += 1
            return True
        if msg.is_remote_frame:
            self.frames += 1
            self.remote_frames += 1
            return True
        return False

    def as_dict(self) -> dict[str, Any]:
        """The counts as a JSON-ready dict."""
        return {
            "frames": self.frames,
            "decoded": self.decoded,
            "unchanged": self.unchanged,
            "unknown_id": self.unknown_id,
            "errors": self.errors,
            "truncated": self.truncated,
            "error_frames": self.error_frames,
            "remote_frames": self.remote_frames,
            "error_reasons": dict(self.error_reasons),
            "unmapped_values": dict(self.unmapped_values),
            "non_finite": dict(self.non_finite),
        }


def _base_conversion(signal: Signal) -> tuple[bool, Value, Value]:
    """(scaled?, scale, offset) as cantools converts raw to physical without choices."""
    base = BaseConversion.factory(
        scale=signal.scale, offset=signal.offset, choices=None, is_float=signal.is_float
    )
    if isinstance(base, IdentityConversion):
        return False, 1, 0
    return True, base.scale, base.offset


def _kind(mapped: MappedSignal) -> int:
    if mapped.spec.type is SignalType.BOOL:
        return _BOOL
    if mapped.spec.type is SignalType.FLOAT:
        return _FLOAT
    return _INT


# A compiled signal. Fast path fields: bit position and mask; both paths: conversions.
_Field: TypeAlias = tuple[
    int,  # 0 catalog id
    bool,  # 1 little endian
    int,  # 2 right shift (little endian)
    int,  # 3 bits needed: the signal fits when 8 * len(data) >= this
    int,  # 4 mask
    int,  # 5 sign bit (0 when unsigned)
    int,  # 6 2**length
    bool,  # 7 DBC conversion is not the identity
    Value,  # 8 DBC scale
    Value,  # 9 DBC offset
    "Mapping[Value, int] | None",  # 10 values map
    bool,  # 11 mapping transform present
    Value,  # 12 mapping scale
    Value,  # 13 mapping offset
    int,  # 14 output kind
    str,  # 15 logical name
    str,  # 16 DBC signal name
    "str | None",  # 17 multiplexer signal name (when narrowed by the mapping)
    "int | None",  # 18 multiplexer value required by the mapping
]


def _compile_field(mapped: MappedSignal, signal: Signal) -> _Field:
    length = signal.length
    if signal.byte_order == "little_endian":
        little, shift, need = True, signal.start, signal.start + length
    else:
        sequential = 8 * (signal.start // 8) + (7 - signal.start % 8)
        little, shift, need = False, 0, sequential + length
    scaled, scale, offset = _base_conversion(signal)
    mux_signal = signal.multiplexer_signal if mapped.multiplexer is not None else None
    values: dict[Value, int] | None = None
    if mapped.values is not None:
        values = dict(mapped.values.items())
    return (
        mapped.id,
        little,
        shift,
        need,
        (1 << length) - 1,
        (1 << (length - 1)) if signal.is_signed else 0,
        1 << length,
        scaled,
        scale,
        offset,
        values,
        mapped.has_transform,
        mapped.scale,
        mapped.offset,
        _kind(mapped),
        mapped.name,
        signal.name,
        mux_signal,
        mapped.multiplexer,
    )


class _Frame:
    """One compiled frame: its message, the last bytes seen, and its mapped signals."""

    __slots__ = ("fast", "fields", "has_be", "has_le", "last", "length", "message")

    def __init__(self, message: Message, fields: tuple[_Field, ...], fast: bool) -> None:
        self.message = message
        self.length: int = message.length
        self.fields = fields
        self.fast = fast
        self.has_le = any(f[1] for f in fields)
        self.has_be = any(not f[1] for f in fields)
        self.last: bytes | bytearray | None = None


def _index(database: Database) -> dict[FrameKey, Message]:
    return {(m.frame_id, bool(m.is_extended_frame)): m for m in database.messages}


class CompiledDecoder:
    """The box's decoder for one (database, mapping): catalog values out of frames."""

    def __init__(
        self,
        database: Database,
        mapping: SignalMapping,
        *,
        skip_unchanged: bool = True,
        bit_path: bool = True,
    ) -> None:
        """Compile the decoder. ``bit_path=False`` sends every frame through cantools."""
        self.stats = DecoderStats()
        self.mapping = mapping
        self.skip_unchanged = skip_unchanged
        messages = _index(database)
        self._frames: dict[FrameKey, _Frame] = {}
        for key, mapped_signals in mapping.frames().items():
            message = messages.get(key)
            if message is None or message.name != mapped_signals[0].message:
                raise MappingError(
                    f"{mapping.source}: frame 0x{key[0]:x} ({mapped_signals[0].message}) "
                    "is not in the database given"
                )
            fields = []
            for mapped in mapped_signals:
                try:
                    signal = message.get_signal_by_name(mapped.signal)
                except KeyError:
                    raise MappingError(
                        f"{mapping.source}: signal {mapped.signal} is not in message "
                        f"{message.name} of the database given"
                    ) from None
                fields.append(_compile_field(mapped, signal))
            fast = bit_path and not message.is_multiplexed()
            fast = fast and not any(s.is_float for s in message.signals)
            self._frames[key] = _Frame(message, tuple(fields), fast)
        self.names: dict[int, str] = {m.id: m.name for m in mapping.signals}

    @classmethod
    def for_mapping(
        cls, mapping: SignalMapping, *, skip_unchanged: bool = True, bit_path: bool = True
    ) -> CompiledDecoder:
        """A decoder for a mapping and the network it was loaded with."""
        return cls(
            mapping.network.database, mapping, skip_unchanged=skip_unchanged, bit_path=bit_path
        )

    @property
    def frame_keys(self) -> frozenset[FrameKey]:
        """The frames this decoder decodes."""
        return frozenset(self._frames)

    def message_of(self, arbitration_id: int, is_extended: bool) -> Message | None:
        """The message of a frame this decoder decodes, else ``None``."""
        frame = self._frames.get((arbitration_id, is_extended))
        return None if frame is None else frame.message

    def reset(self) -> None:
        """Forget the last bytes seen (the next frame of each id is decoded) and the counts."""
        for frame in self._frames.values():
            frame.last = None
        self.stats = DecoderStats()

    def feed(self, msg: can.Message) -> list[tuple[int, Value]] | None:
        """Decode a python-can message; error and remote frames are counted apart."""
        if self.stats.counted_apart(msg):
            return None
        return self.decode(msg.arbitration_id, msg.is_extended_id, msg.data)

    def decode(
        self, arbitration_id: int, is_extended: bool, data: bytes | bytearray
    ) -> list[tuple[int, Value]] | None:
        """The (catalog id, value) pairs of a frame's mapped signals.

        ``None`` when the id is not decoded here, the bytes are unchanged, or the frame
        does not decode (each counted in :attr:`stats`).
        """
        stats = self.stats
        stats.frames += 1
        frame = self._frames.get((arbitration_id, is_extended))
        if frame is None:
            stats.unknown_id += 1
            return None
        if self.skip_unchanged and frame.last == data:
            stats.unchanged += 1
            return None
        n = len(data)
        length = frame.length
        if n > length:
            data = data[:length]
            n = length
        if frame.fast:
            out = self._decode_bits(frame, data, n)
        else:
            try:
                decoded = frame.message.decode(
                    bytes(data), decode_choices=False, scaling=False, allow_truncated=True
                )
            except _DECODE_FAULTS as exc:
                stats.errors += 1
                stats.error_reasons[f"{frame.message.name}: {exc}"] += 1
                frame.last = None
                return None
            out = self._convert(frame, cast("Mapping[str, Any]", decoded))
        stats.decoded += 1
        if n < length:
            stats.truncated += 1
        frame.last = bytes(data)
        return out

    def _decode_bits(
        self, frame: _Frame, data: bytes | bytearray, n: int
    ) -> list[tuple[int, Value]]:
        bits = 8 * n
        le = int.from_bytes(data, "little") if frame.has_le else 0
        be = int.from_bytes(data, "big") if frame.has_be else 0
        out: list[tuple[int, Value]] = []
        for f in frame.fields:
            need = f[3]
            if need > bits:
                continue
            raw = (le >> f[2]) & f[4] if f[1] else (be >> (bits - need)) & f[4]
            if f[5] and raw & f[5]:
                raw -= f[6]
            value = self._value(f, raw)
            if value is not None:
                out.append((f[0], value))
        return out

    def _convert(self, frame: _Frame, decoded: Mapping[str, Any]) -> list[tuple[int, Value]]:
        out: list[tuple[int, Value]] = []
        for f in frame.fields:
            raw = decoded.get(f[16])
            if raw is None:
                continue
            if f[17] is not None and decoded.get(f[17]) != f[18]:
                continue
            value = self._value(f, raw)
            if value is not None:
                out.append((f[0], value))
        return out

    def _value(self, f: _Field, raw: Value) -> Value | None:
        values = f[10]
        if values is not None:
            mapped = values.get(raw)
            if mapped is None:
                self.stats.unmapped_values[f[15]] += 1
            return mapped
        value: Value = raw * f[8] + f[9] if f[7] else raw
        if f[11]:
            value = value * f[12] + f[13]
        kind = f[14]
        if kind == _FLOAT:
            return float(value)
        if isinstance(value, float) and not math.isfinite(value):
            # An IEEE float signal carrying NaN or infinity for an integer, enum or bool
            # signal: no such value exists; the signal is left out and counted.
            self.stats.non_finite[f[15]] += 1
            return None
        if kind == _BOOL:
            return 1 if value else 0
        return round(value)


class MessageDecoder:
    """Every signal of every message (or of the named ones), by DBC name, through cantools."""

    def __init__(
        self,
        database: Database,
        *,
        decode_choices: bool = False,
        skip_unchanged: bool = False,
        messages: Iterable[str] | None = None,
    ) -> None:
        self.stats = DecoderStats()
        self.decode_choices = decode_choices
        self.skip_unchanged = skip_unchanged
        wanted = None if messages is None else set(messages)
        self._messages = {
            key: m for key, m in _index(database).items() if wanted is None or m.name in wanted
        }
        if wanted is not None:
            missing = wanted - {m.name for m in self._messages.values()}
            if missing:
                raise MappingError(f"messages not in the database: {sorted(missing)}")
        self._last: dict[FrameKey, bytes] = {}

    def feed(self, msg: can.Message) -> tuple[Message, dict[str, Any]] | None:
        """Decode a python-can message; error and remote frames are counted apart."""
        if self.stats.counted_apart(msg):
            return None
        return self.decode(msg.arbitration_id, msg.is_extended_id, msg.data)

    def decode(
        self, arbitration_id: int, is_extended: bool, data: bytes | bytearray
    ) -> tuple[Message, dict[str, Any]] | None:
        """The message and its decoded signals; ``None`` as :meth:`CompiledDecoder.decode`."""
        stats = self.stats
        stats.frames += 1
        key = (arbitration_id, is_extended)
        message = self._messages.get(key)
        if message is None:
            stats.unknown_id += 1
            return None
        if self.skip_unchanged and self._last.get(key) == data:
            stats.unchanged += 1
            return None
        try:
            decoded = message.decode(
                bytes(data),
                decode_choices=self.decode_choices,
                scaling=True,
                allow_truncated=True,
            )
        except _DECODE_FAULTS as exc:
            stats.errors += 1
            stats.error_reasons[f"{message.name}: {exc}"] += 1
            self._last.pop(key, None)
            return None
        stats.decoded += 1
        if len(data) < message.length:
            stats.truncated += 1
        if self.skip_unchanged:
            self._last[key] = bytes(data)
        return message, dict(cast("Mapping[str, Any]", decoded))
