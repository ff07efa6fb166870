"""The simulated car: every ECU of the network, sending its frames at their DBC cycle times.

Every tick of the car's clock advances its physics, sends the frames that are due on the CAN
bus, and writes a GNSS fix as NMEA once a second. The car sends every cyclic message of the
network (``GenMsgCycleTime``) but those of an ECU its powertrain lacks: a message whose
mapped signals all belong to another energy type (the traction battery frame of a diesel,
the engine and fuel gauge frames of an electric car). Mapped signals carry the car's values
(:class:`~firmware_sim.sim.physics.VehicleState`), encoded through the network's mapping;
the other signals carry their start value (``GenSigStartValue``, else 0), so the command
feedback frame says "no command" (counter 0, action None).

Rolling counters (found by name: ``COUNTER``, ``CNTR``, ``CPT_``, PSA's ``..._ct...Frm`` and
``..._ct...Cntr``, or a comment that calls the signal a counter) advance by one per frame of
their message and wrap at the signal's range. A checksum whose algorithm the network states
is computed (:data:`CHECKSUMS`); one whose algorithm it does not state keeps its start value
and is listed in :attr:`FrameCodec.held_checksums`.

Each frame is compiled once (:class:`FrameCodec`): the bytes of the constant signals, and for
each varying signal its conversion and bit position, the same conversions
:class:`~can_dbc.encoder.FrameEncoder` applies (the tests prove both give the same bytes).
A frame without counters is re-encoded only when its values changed.

:class:`SimBus` is an in-process CAN bus for simulated time: python-can's ``BusABC``, with a
plain queue per receiver and no copy, and the timestamps the sender gave. The car puts the
frames of one tick on it at once. ``bus_load`` adds frames of ids the network does not use,
up to a fraction of a 500 kbit/s bus, as the other ECUs of a real car would.
:class:`SimSerial` is the in-process serial line for the GNSS receiver's NMEA.

The car also listens: on a network with the remote command frames, every tick it reads the
frames on its bus and gives the ``TCU_CmdRequest`` ones to its body controller
(:attr:`SimVehicle.body`, :class:`~firmware_sim.sim.commands.BodyController`), whose state
the ``BSI_CmdFeedback`` frame carries; a change of it is sent at once, besides every cycle.
"""

from __future__ import annotations

import itertools
import math
import operator
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any, ClassVar

import can
import serial
from cantools.database.can import Message, Signal

from can_dbc.catalog import SignalType
from can_dbc.encoder import FrameEncoder, signal_limits
from can_dbc.mapping import MappedSignal, SignalMapping
from can_dbc.network import COMMAND_FEEDBACK, COMMAND_REQUEST, CommandAction
from firmware_sim.clock import Scheduler
from firmware_sim.gnss import GnssSource
from firmware_sim.nmea import Fix
from firmware_sim.sim.commands import BodyController
from firmware_sim.sim.drive import Drive
from firmware_sim.sim.physics import VehicleState

__all__ = [
    "BITRATE",
    "CHECKSUMS",
    "Ecu",
    "FeedbackEcu",
    "FrameCodec",
    "SimBus",
    "SimSerial",
    "SimVehicle",
    "checksum_signals",
    "frame_bits",
    "rolling_counters",
]

#: The bit rate ``bus_load`` is a fraction of: a classic high-speed CAN bus.
BITRATE = 500_000

Number = int | float


def frame_bits(dlc: int, extended: bool = False) -> float:
    """Bits a classic CAN data frame of ``dlc`` bytes takes on the wire.

    The fixed fields (47 bits with an 11-bit id, 67 with a 29-bit id, interframe space
    included), the data, and half the worst case of stuff bits (a typical payload): 123 bits
    for 8 bytes, so a 500 kbit/s bus carries about 4,065 such frames a second.
    """
    data = 8 * dlc
    nominal, stuffable = (67 + data, 54 + data) if extended else (47 + data, 34 + data)
    return nominal + (stuffable - 1) // 4 / 2


# -- the bus --------------------------------------------------------------------------------


class _Channel:
    """The buses on one channel; the tuple is replaced, never changed, as buses come and go."""

    __slots__ = ("members",)

    def __init__(self) -> None:
        self.members: tuple[SimBus, ...] = ()


class SimBus(can.BusABC):
    """A CAN bus inside one process, for simulated time.

    Every bus opened on a channel receives what the others send (and its own frames with
    ``receive_own_messages``). Delivery appends the message to each receiver's queue: no copy
    and no lock, so a message is shared and must not be changed once sent; its timestamp is
    the one its sender gave (the simulated car stamps frames with the simulated time).
    :meth:`send_batch` delivers several frames at once. :meth:`recv` returns a queued frame
    at once; on an empty queue it waits up to ``timeout`` (wall clock) for another thread to
    send, as python-can's buses do. Filters work as on any python-can bus.
    """

    _channels: ClassVar[dict[str, _Channel]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        channel: str = "sim",
        *,
        receive_own_messages: bool = False,
        can_filters: can.typechecking.CanFilters | None = None,
    ) -> None:
        self.channel_id = channel
        self.channel_info = f"sim bus channel {channel}"
        self.receive_own_messages = receive_own_messages
        self._queue: deque[can.Message] = deque()
        self._open = True
        super().__init__(channel=channel, can_filters=can_filters)
        with self._registry_lock:
            room = self._channels.setdefault(channel, _Channel())
            room.members = (*room.members, self)
        self._room = room

    @property
    def pending(self) -> int:
        """Frames received and not read yet."""
        return len(self._queue)

    def _check_open(self) -> None:
        if not self._open:
            raise can.CanOperationError(f"{self.channel_info} is shut down")

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        """Put one frame on the bus."""
        if not self._open:
            self._check_open()
        for bus in self._room.members:
            if bus is not self or self.receive_own_messages:
                bus._queue.append(msg)

    def send_batch(self, msgs: Sequence[can.Message]) -> None:
        """Put several frames on the bus, in this order."""
        if not self._open:
            self._check_open()
        for bus in self._room.members:
            if bus is not self or self.receive_own_messages:
                bus._queue.extend(msgs)

    def recv(self, timeout: float | None = None) -> can.Message | None:
        """The next frame that passes the filters; ``None`` when none came within ``timeout``."""
        queue = self._queue
        if self._open:
            filters = self._filters
            while queue:
                msg = queue.popleft()
                if filters is None or self._matches_filters(msg):
                    return msg
            if timeout is not None and timeout <= 0:
                return None  # nothing waiting, and no time to wait
        message: can.Message | None = super().recv(timeout)
        return message

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        self._check_open()
        queue = self._queue
        if queue:
            return queue.popleft(), False
        if timeout is not None and timeout <= 0:
            return None, False
        deadline = None if timeout is None else time.monotonic() + timeout
        while not queue:
            if deadline is not None and time.monotonic() >= deadline:
                return None, False
            time.sleep(0.0005)
            self._check_open()
        return queue.popleft(), False

    def shutdown(self) -> None:
        """Leave the channel; frames not read are dropped."""
        if self._open:
            self._open = False
            with self._registry_lock:
                room = self._room
                room.members = tuple(bus for bus in room.members if bus is not self)
                if not room.members and self._channels.get(self.channel_id) is room:
                    del self._channels[self.channel_id]
            self._queue.clear()
        super().shutdown()


class SimSerial(serial.SerialBase):  # type: ignore[misc]
    """A serial line inside one process, for simulated time: the GNSS receiver to the box.

    What is written is read back, as with pyserial's ``loop://``, but from one buffer instead
    of a queue of single bytes. A write never blocks: as on a UART whose reader is not
    reading, bytes beyond ``buffer_size`` are lost and counted in :attr:`overruns` (a
    ``loop://`` line blocks its writer instead, for ever in a single thread). Reads return at
    once what is there with ``timeout=0``, else wait up to ``timeout`` for another thread.
    """

    is_open: bool

    def __init__(self, buffer_size: int = 4096, *, timeout: float | None = 0) -> None:
        self.buffer_size = buffer_size
        self.overruns = 0  # bytes lost to a full buffer
        self._buffer = bytearray()
        super().__init__(port="sim://", timeout=timeout)

    def open(self) -> None:
        """Open the line (empty)."""
        if self.is_open:
            raise serial.SerialException("the line is already open")
        self._buffer.clear()
        self.is_open = True

    def close(self) -> None:
        """Close the line; what was not read is lost."""
        self.is_open = False
        self._buffer.clear()

    def _reconfigure_port(self) -> None:
        """Nothing to configure on an in-process line."""

    def _check_open(self) -> None:
        if not self.is_open:
            raise serial.PortNotOpenError()

    @property
    def in_waiting(self) -> int:
        """Bytes written and not read yet."""
        self._check_open()
        return len(self._buffer)

    @property
    def out_waiting(self) -> int:
        """Nothing waits to go out: a write is delivered at once."""
        self._check_open()
        return 0

    def write(self, data: bytes) -> int:
        """Deliver ``data`` (what does not fit in the buffer is lost); its length."""
        self._check_open()
        buffer = self._buffer
        room = self.buffer_size - len(buffer)
        if len(data) > room:
            self.overruns += len(data) - max(room, 0)
            buffer += data[: max(room, 0)]
        else:
            buffer += data
        return len(data)

    def read(self, size: int = 1) -> bytes:
        """Up to ``size`` bytes: what is there, after waiting up to ``timeout`` for some."""
        self._check_open()
        buffer = self._buffer
        if not buffer and self.timeout != 0:
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            while not buffer and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.0005)
                self._check_open()
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    def reset_input_buffer(self) -> None:
        """Drop what was not read."""
        self._check_open()
        self._buffer.clear()

    def reset_output_buffer(self) -> None:
        """Nothing to drop: writes are delivered at once."""
        self._check_open()

    def _update_rts_state(self) -> None:
        """No modem lines on an in-process line."""

    def _update_dtr_state(self) -> None:
        """No modem lines on an in-process line."""

    def _update_break_state(self) -> None:
        """No break condition on an in-process line."""


# -- counters and checksums -----------------------------------------------------------------

_COUNTER_NAME = re.compile(r"(^|_)(COUNTER|CNTR|CPT)(_|$)|PROCESS_COUNTER", re.IGNORECASE)
_PSA_COUNTER = re.compile(r"_ct\w*(Frm|Cntr|Cnt\d)$")
_COUNTER_COMMENT = re.compile(r"\bcheck counter\b|\bcounter increments\b", re.IGNORECASE)
_CHECKSUM_NAME = re.compile(r"CHECKSUM|CHKSUM|ChkSum|(^|_)CRC(_|$)|(^|_)CHK(_|$)", re.IGNORECASE)


def rolling_counters(message: Message) -> list[Signal]:
    """The signals of ``message`` that count its frames (by name, or by their comment)."""
    found = []
    for signal in message.signals:
        comment = signal.comment or ""
        if (
            _COUNTER_NAME.search(signal.name)
            or _PSA_COUNTER.search(signal.name)
            or _COUNTER_COMMENT.search(comment)
        ):
            found.append(signal)
    return found


def checksum_signals(message: Message) -> list[Signal]:
    """The signals of ``message`` that protect it (checksums, CRCs), by name."""
    return [s for s in message.signals if _CHECKSUM_NAME.search(s.name)]


def _read_raw(signal: Signal, data: bytes) -> int:
    """A signal's raw (unsigned) bits from a frame's bytes."""
    n = len(data)
    if signal.byte_order == "little_endian":
        return (int.from_bytes(data, "little") >> signal.start) & ((1 << signal.length) - 1)
    sequential = 8 * (signal.start // 8) + (7 - signal.start % 8)
    shift = 8 * n - sequential - signal.length
    return (int.from_bytes(data, "big") >> shift) & ((1 << signal.length) - 1)


def _nibble_parity_of_setpoint(message: Message, data: bytes) -> int:
    """``HS2_DAT_MDD_CMD_452.CHECKSUM_CONS_RVV_LVV2``, as the network's value table states it.

    Bit 1: the most significant nibble of ``SPEED_SETPOINT`` is odd; bit 0: the least
    significant one is. Odd is read as odd parity of the nibble's bits, which is how
    commaai/opendbc's PSA port computes it (``set_speed``); for a setpoint of 0 either
    reading gives 0.
    """
    setpoint = _read_raw(message.get_signal_by_name("SPEED_SETPOINT"), data)
    high = (setpoint >> 4 & 0xF).bit_count() & 1
    low = (setpoint & 0xF).bit_count() & 1
    return high << 1 | low


#: Checksums whose algorithm the network states: (message, signal) -> f(message, frame bytes).
CHECKSUMS: Mapping[tuple[str, str], Callable[[Message, bytes], int]] = {
    ("HS2_DAT_MDD_CMD_452", "CHECKSUM_CONS_RVV_LVV2"): _nibble_parity_of_setpoint,
}


# -- encoding -------------------------------------------------------------------------------


def _raw_bounds(signal: Signal) -> tuple[int, int]:
    if signal.is_signed:
        return -(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1
    return 0, (1 << signal.length) - 1


@dataclass(frozen=True)
class _Place:
    """Where a signal's raw bits go: a shift in the little-endian (Intel) or big-endian
    (Motorola) integer of the frame's bytes."""

    little: bool
    shift: int
    mask: int

    @classmethod
    def of(cls, signal: Signal, length: int) -> _Place:
        mask = (1 << signal.length) - 1
        if signal.byte_order == "little_endian":
            return cls(True, signal.start, mask)
        sequential = 8 * (signal.start // 8) + (7 - signal.start % 8)
        return cls(False, 8 * length - sequential - signal.length, mask)

    def clear_mask(self, length: int) -> int:
        """The bits this signal takes, in the little-endian integer of the frame."""
        bits = self.mask << self.shift
        if self.little:
            return bits
        return int.from_bytes(bits.to_bytes(length, "big"), "little")


@dataclass(frozen=True)
class _Field:
    """One mapped signal of a frame, compiled: catalog value -> raw bits."""

    place: _Place
    kind: SignalType
    enum: frozenset[int]
    inverse: Mapping[Number, int] | None  # catalog value -> raw, for a ``values`` map
    transform: bool
    scale: float
    offset: float
    lo: Number | None
    hi: Number | None
    to_raw: Callable[[float], Number]
    raw_lo: int
    raw_hi: int

    @classmethod
    def compile(cls, mapped: MappedSignal, signal: Signal, length: int) -> _Field:
        raw_lo, raw_hi = _raw_bounds(signal)
        inverse: dict[Number, int] | None = None
        if mapped.values is not None:
            inverse = {}
            for raw, catalog_value in sorted(mapped.values.items()):
                inverse.setdefault(catalog_value, min(max(raw, raw_lo), raw_hi))
        lo, hi = signal_limits(signal)
        return cls(
            place=_Place.of(signal, length),
            kind=mapped.spec.type,
            enum=frozenset(mapped.spec.enum or ()),
            inverse=inverse,
            transform=mapped.has_transform,
            scale=mapped.scale,
            offset=mapped.offset,
            lo=lo,
            hi=hi,
            to_raw=signal.conversion.numeric_scaled_to_raw,
            raw_lo=raw_lo,
            raw_hi=raw_hi,
        )

    def raw(self, value: Number) -> int | None:
        """The raw bits for a catalog value; ``None`` for what the reference encoder must see
        (a value that is not a finite number, an enum value not in the catalog)."""
        if value.__class__ is bool:
            value = int(value)
        elif not (value.__class__ is int or (value.__class__ is float and math.isfinite(value))):
            return None
        kind = self.kind
        if kind is SignalType.BOOL:
            value = 1 if value else 0
        elif kind is SignalType.ENUM and (not float(value).is_integer() or value not in self.enum):
            return None
        if self.inverse is not None:
            return self.inverse.get(value)
        physical = (value - self.offset) / self.scale if self.transform else value
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            physical = min(max(physical, lo), hi)
        return min(max(int(self.to_raw(physical)), self.raw_lo), self.raw_hi)


class FrameCodec:
    """One message's bytes from the car's values, its frame counters and checksums.

    ``signals`` are the logical (catalog) names the car gives, in the order of the values
    passed to :meth:`encode`. Messages that are multiplexed or carry IEEE floats are encoded
    by :class:`~can_dbc.encoder.FrameEncoder`; the others from precompiled bit positions.
    """

    def __init__(
        self,
        encoder: FrameEncoder,
        message: Message,
        signals: Sequence[str],
        mapping: SignalMapping,
    ) -> None:
        self.encoder = encoder
        self.message = message
        self.signals = tuple(signals)
        self.length: int = message.length
        n = self.length
        self.fast = not message.is_multiplexed() and not any(s.is_float for s in message.signals)
        fields = []
        for name in self.signals:
            mapped = mapping.by_name(name)
            if mapped.multiplexer is not None:
                self.fast = False
            fields.append(_Field.compile(mapped, message.get_signal_by_name(mapped.signal), n))
        self._fields = tuple(fields)
        base = 0  # the bytes of the constant signals (for the reference encoder: its own)
        if self.fast:
            defaults = encoder.encode_signals(message.name, {}, scaling=False)
            base = int.from_bytes(defaults, "little")
        counters = rolling_counters(message)
        checks = checksum_signals(message)
        self.counters = tuple(s.name for s in counters)
        self.checksums = tuple(s.name for s in checks if (message.name, s.name) in CHECKSUMS)
        self.held_checksums = tuple(
            s.name for s in checks if (message.name, s.name) not in CHECKSUMS
        )
        self._counters = tuple((_Place.of(s, n), *self._counter_range(s)) for s in counters)
        self._checks = tuple(
            (_Place.of(s, n), CHECKSUMS[message.name, s.name])
            for s in checks
            if (message.name, s.name) in CHECKSUMS
        )
        everything = (1 << 8 * n) - 1
        generated = reduce(  # the bits of the counters and checksums
            operator.or_,
            [c[0].clear_mask(n) for c in self._counters]
            + [p.clear_mask(n) for p, _ in self._checks],
            0,
        )
        carried = reduce(operator.or_, [f.place.clear_mask(n) for f in fields], 0)
        self._keep = everything & ~generated
        self._base = base & everything & ~generated & ~carried
        #: Whether the bytes change from frame to frame whatever the values.
        self.varying = bool(self._counters or self._checks)

    @staticmethod
    def _counter_range(signal: Signal) -> tuple[int, int]:
        """(first raw value, number of values) a counter runs through before it wraps."""
        raw_lo, raw_hi = _raw_bounds(signal)
        lo, hi = signal_limits(signal)
        if lo is not None and hi is not None and signal.scale == 1 and signal.offset == 0:
            raw_lo, raw_hi = max(raw_lo, math.ceil(lo)), min(raw_hi, math.floor(hi))
        return raw_lo, raw_hi - raw_lo + 1

    def encode(self, values: Sequence[Number], frame_index: int = 0) -> bytes:
        """The frame's bytes: these values, and counters at their ``frame_index``-th value."""
        n = self.length
        le = self._base
        be = 0
        if self.fast:
            for field, value in zip(self._fields, values, strict=True):
                raw = field.raw(value)
                if raw is None:
                    return self._reference(values, frame_index)
                place = field.place
                if place.little:
                    le |= (raw & place.mask) << place.shift
                else:
                    be |= (raw & place.mask) << place.shift
        else:
            data = self.encoder.encode(
                self.message.name, dict(zip(self.signals, values, strict=True))
            )
            le = int.from_bytes(data, "little") & self._keep
        for place, first, count in self._counters:
            raw = first + frame_index % count
            if place.little:
                le |= (raw & place.mask) << place.shift
            else:
                be |= (raw & place.mask) << place.shift
        if be:
            le |= int.from_bytes(be.to_bytes(n, "big"), "little")
        if self._checks:
            data = le.to_bytes(n, "little")
            for place, algorithm in self._checks:
                raw = algorithm(self.message, data) & place.mask
                le |= place.clear_mask(n) & (
                    raw << place.shift
                    if place.little
                    else int.from_bytes((raw << place.shift).to_bytes(n, "big"), "little")
                )
        return le.to_bytes(n, "little")

    def _reference(self, values: Sequence[Number], frame_index: int) -> bytes:
        """The bytes through the reference encoder (which raises :class:`EncodeError` on a
        value it cannot encode)."""
        fast, self.fast = self.fast, False
        try:
            return self.encode(values, frame_index)
        finally:
            self.fast = fast


# -- the car --------------------------------------------------------------------------------


@dataclass
class Ecu:
    """One cyclic message of the network and the logical signals it carries."""

    message: str
    frame_id: int
    is_extended: bool
    is_fd: bool
    cycle_ms: int
    signals: tuple[str, ...]
    codec: FrameCodec
    last_values: Any = None
    last_data: bytes = b""
    next_ms: int = 0  # elapsed time of the next send
    frames: int = 0  # frames sent

    def __post_init__(self) -> None:
        names = self.signals
        if not names:
            self.read: Callable[[Mapping[str, Number]], Any] = lambda _values: ()
        elif len(names) == 1:
            self.read = operator.itemgetter(names[0])
        else:
            self.read = operator.itemgetter(*names)

    def data(self, values: Mapping[str, Number]) -> bytes:
        """The bytes of this message's next frame."""
        current = self.read(values)
        codec = self.codec
        if codec.varying:
            as_tuple = current if len(self.signals) != 1 else (current,)
            self.last_data = codec.encode(as_tuple, self.frames)
        elif current != self.last_values or not self.last_data:
            as_tuple = current if len(self.signals) != 1 else (current,)
            self.last_data = codec.encode(as_tuple)
            self.last_values = current
        return self.last_data


@dataclass
class FeedbackEcu(Ecu):
    """The command feedback message: its bytes are the body controller's."""

    body: BodyController | None = None

    def data(self, values: Mapping[str, Number]) -> bytes:
        """The feedback frame's bytes now."""
        assert self.body is not None
        return self.body.feedback_data


class SimVehicle:
    """A car on a CAN bus, following a drive.

    ``command_delays_ms`` sets the body controller's actuation delays (an int for every
    action, or per action); :attr:`body` is ``None`` on a network without the command frames.
    """

    def __init__(
        self,
        mapping: SignalMapping,
        state: VehicleState,
        drive: Drive,
        bus: can.BusABC,
        scheduler: Scheduler,
        *,
        gnss: GnssSource | None = None,
        tick_ms: int | None = None,
        bus_load: float = 0.0,
        seed: int = 0,
        command_delays_ms: int | Mapping[CommandAction, int] | None = None,
    ) -> None:
        self.mapping = mapping
        self.state = state
        self.drive = drive
        self.bus = bus
        self.scheduler = scheduler
        self.gnss = gnss
        self.encoder = FrameEncoder(mapping.database, mapping)
        self.body = self._body_controller()
        if self.body is not None and command_delays_ms is not None:
            self.body.set_delays(command_delays_ms)
        self.frames_received = 0  # frames read from the bus (every id)
        self.ecus = self._ecus()
        self.tick_ms = tick_ms or reduce(math.gcd, (e.cycle_ms for e in self.ecus))
        self.after_tick: list[Callable[[int], None]] = []
        self.frames_sent = 0  # every frame, the network's and the filler
        self.filler_frames_sent = 0
        self.fixes_sent = 0
        self.silent = False  # a bus-silence fault: ECUs stop sending
        self._start_ms = 0
        self._events = sorted(drive.events, key=lambda e: e.at_s)
        self._next_event = 0
        self._next_fix_ms = 0
        self._phases: list[list[Ecu]] = []
        self._last_elapsed = 0
        self._random = random.Random(seed)
        self._filler = self._filler_frames()
        self._filler_cycle = itertools.cycle(self._filler)
        self._filler_due = 0.0
        self._filler_per_ms = 0.0
        self._bus_load = 0.0
        self.bus_load = bus_load

    # -- the network ----------------------------------------------------------------------

    def _body_controller(self) -> BodyController | None:
        database = self.mapping.database
        names = {m.name for m in database.messages}
        if COMMAND_REQUEST not in names or COMMAND_FEEDBACK not in names:
            return None
        return BodyController(
            self.state,
            self.scheduler,
            database.get_message_by_name(COMMAND_REQUEST),
            database.get_message_by_name(COMMAND_FEEDBACK),
        )

    def _ecus(self) -> list[Ecu]:
        database = self.mapping.database
        carried: dict[str, list[str]] = {}
        mapped_in: dict[str, int] = {}
        for mapped in self.mapping.signals:
            mapped_in[mapped.message] = mapped_in.get(mapped.message, 0) + 1
            if self.state.has(mapped.name):
                carried.setdefault(mapped.message, []).append(mapped.name)
        ecus = []
        for message in sorted(database.messages, key=lambda m: (m.frame_id, m.name)):
            if not message.cycle_time:
                continue  # event-driven frames (commands) are not sent on a timer
            signals = carried.get(message.name, [])
            if mapped_in.get(message.name) and not signals:
                continue  # an ECU this powertrain does not have
            kind = Ecu
            if message.name == COMMAND_FEEDBACK and self.body is not None:
                kind = FeedbackEcu
            ecus.append(
                kind(
                    message=message.name,
                    frame_id=message.frame_id,
                    is_extended=bool(message.is_extended_frame),
                    is_fd=bool(message.is_fd),
                    cycle_ms=int(message.cycle_time),
                    signals=tuple(signals),
                    codec=FrameCodec(self.encoder, message, signals, self.mapping),
                )
            )
            if isinstance(ecus[-1], FeedbackEcu):
                ecus[-1].body = self.body
        return ecus

    @property
    def network_load(self) -> float:
        """The fraction of a :data:`BITRATE` bus the network's own frames take."""
        bits = sum(frame_bits(e.codec.length, e.is_extended) * 1000 / e.cycle_ms for e in self.ecus)
        return bits / BITRATE

    @property
    def bus_load(self) -> float:
        """The bus load the car keeps up (0: only the network's frames)."""
        return self._bus_load

    @bus_load.setter
    def bus_load(self, fraction: float) -> None:
        """Fill the bus up to ``fraction`` of :data:`BITRATE` with frames of other ids."""
        if not (math.isfinite(fraction) and 0 <= fraction < 1):
            raise ValueError(f"bus load {fraction!r} is not a fraction in [0, 1)")
        self._bus_load = fraction
        spare_bits = max(0.0, fraction - self.network_load) * BITRATE
        self._filler_per_ms = spare_bits / frame_bits(8) / 1000

    @property
    def filler_ids(self) -> list[int]:
        """The ids of the frames that fill the bus (none of them in the network)."""
        return [msg[0] for msg in self._filler]

    def _filler_frames(self) -> list[tuple[int, bytes]]:
        used = {m.frame_id for m in self.mapping.database.messages}
        ids = [i for i in range(0x101, 0x6F0, 0x13) if i not in used]
        return [(i, self._random.randbytes(8)) for i in ids]

    # -- time -----------------------------------------------------------------------------

    def start(self) -> None:
        """Begin the drive now (the ECUs are those of :attr:`ecus` at this moment)."""
        self._phases = self._cycle_phases()
        self._last_elapsed = -self.tick_ms
        self._start_ms = self.scheduler.now_ms
        self._next_fix_ms = self._start_ms
        self.scheduler.call_at(self._start_ms, self._tick)

    @property
    def elapsed_s(self) -> float:
        """Seconds since the drive began."""
        return (self.scheduler.now_ms - self._start_ms) / 1000

    def apply(self, changes: Mapping[str, float | int]) -> None:
        """Change the car's state now (a driver action or a fault)."""
        self.state.apply(changes)

    def _tick(self, now_ms: int) -> None:
        elapsed_ms = now_ms - self._start_ms
        t_s = elapsed_ms / 1000
        events = self._events
        while self._next_event < len(events) and events[self._next_event].at_s <= t_s:
            self.state.apply(events[self._next_event].set)
            self._next_event += 1
        body = self.body
        if body is not None:
            self._listen(body)
        self.state.step(t_s, self.tick_ms / 1000, self.drive)
        if not self.silent:
            frames = self._due(elapsed_ms, now_ms / 1000)
            if body is not None and body.dirty:
                self._add_feedback(body, frames, now_ms / 1000)
            if self._filler_per_ms:
                self._fill(frames, now_ms / 1000)
            if frames:
                bus = self.bus
                if type(bus) is SimBus:
                    bus.send_batch(frames)
                else:
                    for msg in frames:
                        bus.send(msg)
                self.frames_sent += len(frames)
        if self.gnss is not None and now_ms >= self._next_fix_ms:
            self._send_fix(now_ms)
            self._next_fix_ms = now_ms + 1000
        for listener in self.after_tick:
            listener(now_ms)
        self.scheduler.call_at(now_ms + self.tick_ms, self._tick)

    def _due(self, elapsed_ms: int, timestamp: float) -> list[can.Message]:
        """The frames due now, in id order."""
        values = self.state.values
        message = can.Message
        tick = self.tick_ms
        phases = self._phases
        if phases and elapsed_ms == self._last_elapsed + tick and not elapsed_ms % tick:
            # On time, as in simulated time: the ECUs due at this phase of the cycles.
            due_now = phases[elapsed_ms // tick % len(phases)]
            for ecu in due_now:
                ecu.next_ms = elapsed_ms + ecu.cycle_ms
        else:
            due_now = []
            for ecu in self.ecus:
                due = ecu.next_ms
                if elapsed_ms < due:
                    continue
                # On a late clock (wall time) keep the cycle's phase and skip what was missed.
                ecu.next_ms = due + ecu.cycle_ms * ((elapsed_ms - due) // ecu.cycle_ms + 1)
                due_now.append(ecu)
        self._last_elapsed = elapsed_ms
        out = []
        for ecu in due_now:
            data = ecu.data(values)
            ecu.frames += 1
            out.append(
                message(
                    timestamp,
                    ecu.frame_id,
                    ecu.is_extended,
                    False,
                    False,
                    None,
                    len(data),
                    data,
                    ecu.is_fd,
                )
            )
        return out

    def _listen(self, body: BodyController) -> None:
        """Read what came on the bus; the command requests go to the body controller."""
        bus = self.bus
        if type(bus) is SimBus and not bus.pending:
            return
        while (msg := bus.recv(0)) is not None:
            self.frames_received += 1
            body.receive(msg)

    def _add_feedback(self, body: BodyController, frames: list[can.Message], ts: float) -> None:
        """Send the changed command feedback now, unless its cycle sends it this tick."""
        body.dirty = False
        feedback_id = body.feedback_id
        if any(m.arbitration_id == feedback_id for m in frames):
            return
        ecu = next((e for e in self.ecus if isinstance(e, FeedbackEcu)), None)
        if ecu is None:
            return
        data = body.feedback_data
        msg = can.Message(
            timestamp=ts,
            arbitration_id=feedback_id,
            is_extended_id=ecu.is_extended,
            dlc=len(data),
            data=data,
            is_fd=ecu.is_fd,
        )
        at = next((i for i, m in enumerate(frames) if m.arbitration_id > feedback_id), len(frames))
        frames.insert(at, msg)
        ecu.frames += 1

    def _cycle_phases(self) -> list[list[Ecu]]:
        """For each tick of the cycles' common period, the ECUs due (empty: no such table)."""
        tick = self.tick_ms
        if any(e.cycle_ms % tick for e in self.ecus) or not self.ecus:
            return []
        period = reduce(math.lcm, (e.cycle_ms for e in self.ecus))
        if period // tick > 100_000:
            return []
        return [
            [e for e in self.ecus if not (k * tick) % e.cycle_ms] for k in range(period // tick)
        ]

    def _fill(self, frames: list[can.Message], timestamp: float) -> None:
        """Add the filler frames due this tick."""
        self._filler_due += self._filler_per_ms * self.tick_ms
        count = int(self._filler_due)
        if not count:
            return
        self._filler_due -= count
        message = can.Message
        frames += [
            message(timestamp, frame_id, False, False, False, None, 8, data)
            for frame_id, data in itertools.islice(self._filler_cycle, count)
        ]
        self.filler_frames_sent += count

    def _send_fix(self, now_ms: int) -> None:
        assert self.gnss is not None
        lat, lon, heading = self.drive.route.at(self.state.distance_m)
        fix = Fix.at_time_ms(
            now_ms,
            lat=lat,
            lon=lon,
            alt=self.drive.route.altitude_m,
            speed_kmh=float(self.state.values["Vehicle.Speed"]),
            heading=heading,
        )
        self.gnss.write_fix(fix)
        self.fixes_sent += 1
