"""Encode frames from catalog values (the simulated car) or DBC signal values (commands).

:class:`FrameEncoder` compiles each message once, on first use: every signal's raw default
(its DBC initial value, ``GenSigStartValue``, else raw 0), its conversion, and the range it
is clamped to. Encoding then:

1. applies the mapping's inverse: ``dbc_physical = (catalog - offset) / scale``, or for a
   ``values`` map the DBC raw integer listed for the catalog value;
2. clamps the physical value to the DBC signal's ``[minimum|maximum]`` when the DBC gives a
   range (``minimum < maximum``; Vector's ``[0|0]`` means "none given");
3. converts to raw (``round((physical - offset) / scale)`` for integer signals) and clamps
   the raw value to what the signal's bits can hold.

So any finite number encodes; what is out of range is sent as the nearest value the frame
can carry. A name that is not in the message, a value that is not a finite number, and an
enum or bool value the mapping cannot express are :class:`~can_dbc.errors.EncodeError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import can
from cantools.database.can import Database, Message, Signal
from cantools.database.errors import Error as CantoolsError

from can_dbc.catalog import SignalType
from can_dbc.errors import EncodeError
from can_dbc.mapping import MappedSignal, SignalMapping

__all__ = ["FrameEncoder", "signal_limits"]

Number = int | float


def signal_limits(signal: Signal) -> tuple[Number | None, Number | None]:
    """The physical range a value is clamped to: the DBC's, when it gives one."""
    lo, hi = signal.minimum, signal.maximum
    if lo is None or hi is None or not lo < hi:
        return None, None
    return lo, hi


def _raw_bounds(signal: Signal) -> tuple[int, int]:
    if signal.is_signed:
        return -(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1
    return 0, (1 << signal.length) - 1


@dataclass(frozen=True)
class _SignalCodec:
    signal: Signal
    lo: Number | None
    hi: Number | None
    raw_lo: int
    raw_hi: int

    def raw_of_physical(self, value: Number) -> Number:
        if self.lo is not None and self.hi is not None:
            value = min(max(value, self.lo), self.hi)
        raw = self.signal.conversion.numeric_scaled_to_raw(value)
        if self.signal.is_float:
            return raw
        return min(max(int(raw), self.raw_lo), self.raw_hi)

    def raw_of_raw(self, raw: int) -> int:
        return min(max(raw, self.raw_lo), self.raw_hi)


@dataclass(frozen=True)
class _CompiledMessage:
    message: Message
    defaults: Mapping[str, Number]
    codecs: Mapping[str, _SignalCodec]
    mapped: Mapping[str, MappedSignal]


def _finite(name: str, value: object) -> Number:
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise EncodeError(f"{name}: {value!r} is not a finite number")
    return value


class FrameEncoder:
    """Frames of a network from catalog values (through a mapping) or DBC signal values."""

    def __init__(self, database: Database, mapping: SignalMapping | None = None) -> None:
        self._messages: dict[str, Message] = {m.name: m for m in database.messages}
        self._mapped: dict[str, dict[str, MappedSignal]] = {}
        self._carrier: dict[str, str] = {}
        if mapping is not None:
            for mapped in mapping.signals:
                if mapped.message not in self._messages:
                    raise EncodeError(f"message {mapped.message} is not in the database given")
                self._mapped.setdefault(mapped.message, {})[mapped.name] = mapped
                self._carrier[mapped.name] = mapped.message
        self._compiled: dict[str, _CompiledMessage] = {}

    def message(self, name: str) -> Message:
        """The message of this name; :class:`EncodeError` when there is none."""
        try:
            return self._messages[name]
        except KeyError:
            raise EncodeError(f"no message {name!r} in the network") from None

    def carrier(self, logical_name: str) -> str:
        """The name of the message that carries this logical signal."""
        try:
            return self._carrier[logical_name]
        except KeyError:
            raise EncodeError(f"{logical_name!r} is not mapped") from None

    def _compile(self, name: str) -> _CompiledMessage:
        compiled = self._compiled.get(name)
        if compiled is not None:
            return compiled
        message = self.message(name)
        codecs = {}
        defaults: dict[str, Number] = {}
        for signal in message.signals:
            lo, hi = signal_limits(signal)
            raw_lo, raw_hi = _raw_bounds(signal)
            codecs[signal.name] = _SignalCodec(signal, lo, hi, raw_lo, raw_hi)
            initial = signal.raw_initial
            defaults[signal.name] = initial if isinstance(initial, int | float) else 0
        compiled = _CompiledMessage(message, defaults, codecs, self._mapped.get(name, {}))
        self._compiled[name] = compiled
        return compiled

    def _pack(self, compiled: _CompiledMessage, raw: Mapping[str, Number]) -> bytes:
        try:
            data = compiled.message.encode(dict(raw), scaling=False, padding=False, strict=False)
        except (CantoolsError, ValueError, KeyError) as exc:
            raise EncodeError(f"{compiled.message.name}: {exc}") from exc
        return bytes(data)

    def _raw_of_logical(self, mapped: MappedSignal, codec: _SignalCodec, value: Number) -> Number:
        spec = mapped.spec
        if spec.type is SignalType.BOOL:
            value = 1 if value else 0
        elif spec.type is SignalType.ENUM and (
            not float(value).is_integer() or int(value) not in spec.enum
        ):
            raise EncodeError(f"{spec.name}: {value!r} is not one of {dict(spec.enum)}")
        if mapped.values is not None:
            for raw, catalog_value in sorted(mapped.values.items()):
                if catalog_value == value:
                    return codec.raw_of_raw(raw)
            raise EncodeError(f"{spec.name}: the mapping gives no DBC value for {value!r}")
        physical = (value - mapped.offset) / mapped.scale if mapped.has_transform else value
        return codec.raw_of_physical(physical)

    def encode(self, message_name: str, logical_values: Mapping[str, Number]) -> bytes:
        """The frame's bytes with these catalog signals set (by logical name).

        Signals not given are at their initial value (or raw 0).
        """
        compiled = self._compile(message_name)
        raw = dict(compiled.defaults)
        for name, value in logical_values.items():
            mapped = compiled.mapped.get(name)
            if mapped is None:
                where = self._carrier.get(name)
                hint = f" (it is carried by {where})" if where else " (it is not mapped)"
                raise EncodeError(f"{name!r} is not carried by {message_name}{hint}")
            codec = compiled.codecs[mapped.signal]
            raw[mapped.signal] = self._raw_of_logical(mapped, codec, _finite(name, value))
            if mapped.multiplexer is not None and codec.signal.multiplexer_signal is not None:
                raw[codec.signal.multiplexer_signal] = mapped.multiplexer
        return self._pack(compiled, raw)

    def encode_signals(
        self, message_name: str, signal_values: Mapping[str, Any], *, scaling: bool = True
    ) -> bytes:
        """The frame's bytes with these DBC signals set (by DBC name).

        Values are physical (``scaling=True``) or raw; a choice name (``"Horn"``) is read
        through the signal's value table. Signals not given are at their initial value.
        """
        compiled = self._compile(message_name)
        raw = dict(compiled.defaults)
        for name, value in signal_values.items():
            codec = compiled.codecs.get(name)
            if codec is None:
                raise EncodeError(f"no signal {name!r} in message {message_name}")
            if isinstance(value, str):
                try:
                    raw[name] = codec.signal.conversion.choice_to_number(value)
                except (KeyError, CantoolsError, AttributeError):
                    raise EncodeError(f"{message_name}.{name}: no choice {value!r}") from None
                continue
            number = _finite(f"{message_name}.{name}", value)
            if scaling:
                raw[name] = codec.raw_of_physical(number)
            elif not float(number).is_integer() and not codec.signal.is_float:
                raise EncodeError(f"{message_name}.{name}: raw value {value!r} is not an integer")
            else:
                raw[name] = number if codec.signal.is_float else codec.raw_of_raw(int(number))
        return self._pack(compiled, raw)

    def can_message(self, message_name: str, data: bytes, timestamp: float = 0.0) -> can.Message:
        """A python-can message for this frame's bytes."""
        message = self.message(message_name)
        return can.Message(
            timestamp=timestamp,
            arbitration_id=message.frame_id,
            is_extended_id=bool(message.is_extended_frame),
            is_fd=bool(message.is_fd),
            data=data,
        )
