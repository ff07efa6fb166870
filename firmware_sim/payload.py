"""The CBOR uplink payload: model, encoder and validating decoder.

The wire format is described in ``firmware_sim/uplink.cddl`` (RFC 8610) and explained in
``docs/payload.md``. :func:`encode_uplink` refuses a model it cannot represent and
:func:`decode_uplink` refuses anything the contract does not allow
(:func:`decode_uplink_columns` refuses the same, and gives the series column by column and
packed, as the gateway stores them); all three raise
:class:`~firmware_sim.errors.PayloadError` and nothing else, with one of these ``reason``\\ s:

``too_large``         more than :data:`MAX_PAYLOAD_BYTES` bytes or :data:`MAX_SAMPLES` samples
``not_cbor``          not well-formed CBOR (also: duplicate map keys, invalid UTF-8, too deep)
``trailing_bytes``    bytes after the first CBOR item
``not_map``           the top-level item is not a map
``unknown_key``       a map key the format does not define
``missing_key``       a required map key is absent
``bad_version``       a format version other than those of :data:`FORMAT_VERSIONS`
``bad_field``         a top-level field of the wrong type or out of range (CBOR tags included)
``bad_series``        a series of the wrong shape, type or range
``bad_times``         sample times that go backwards (a negative gap or period)
``length_mismatch``   times and values of a series that do not pair up (version 2: columns of
                      the series table that do not pair up)
``duplicate_signal``  two series for one signal id
``out_of_range``      a mantissa or sample time outside the signed 64-bit range
``bad_value``         (:func:`quantize` only) a value that is not a finite number
"""

from __future__ import annotations

import enum
import io
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from itertools import accumulate, chain, compress, repeat
from operator import add, mul, sub
from typing import Any, NoReturn, Protocol

import cbor2

from firmware_sim.errors import PayloadError

__all__ = [
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "MAX_PAYLOAD_BYTES",
    "MAX_SAMPLES",
    "Privacy",
    "Series",
    "SignalNames",
    "Trigger",
    "Uplink",
    "UplinkColumns",
    "decode_uplink",
    "decode_uplink_columns",
    "encode_uplink",
    "pack_format",
    "quantize",
    "unpack_series",
    "uplink_to_json",
]

FORMAT_VERSION = 2
"""The format version :func:`encode_uplink` writes by default."""
FORMAT_VERSIONS = (1, 2)
"""The format versions the decoders read (and the encoder can write)."""
MAX_PAYLOAD_BYTES = 256 * 1024
"""The largest payload :func:`decode_uplink` accepts (and :func:`encode_uplink` produces)."""
MAX_SAMPLES = 100_000
"""The most samples, over all series, one payload may carry."""

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1

_VIN = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
_INT_ONLY = frozenset((int,))
_LIST_ONLY = frozenset((list,))
_SERIES_LENGTHS = frozenset((5, 6))
# Version 2: the bytes of a difference in the series table, and their ``struct`` codes.
_WIDTH_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}
_TABLE_COLUMNS = ("signal ids", "exps", "t0s", "periods", "counts", "firsts")
_REQUIRED_KEYS = (0, 1, 2, 3, 4, 5, 6)
_KNOWN_KEYS = frozenset((*_REQUIRED_KEYS, 7, 8))
_MAX_DEPTH = 8  # map > series list > series > values: 4 levels are needed


class Trigger(enum.IntEnum):
    """Why the box uploaded."""

    PERIODIC = 0
    IGNITION_ON = 1
    IGNITION_OFF = 2
    DOOR = 3
    CRASH = 4
    ALERT = 5
    PRIVACY = 6
    CONDITION = 7
    REQUEST = 8


class Privacy(enum.IntEnum):
    """The driver's privacy setting, as the Web API names it."""

    NONE = 0  # data and location
    GEOLOCATION = 1  # data, no location
    FULL = 2  # nothing refreshed


_PRIVACY_API_NAMES = {
    Privacy.NONE: "None",
    Privacy.GEOLOCATION: "Geolocation",
    Privacy.FULL: "Full",
}


@dataclass(frozen=True, slots=True)
class Series:
    """The samples of one signal: integer mantissas at millisecond offsets.

    ``times`` are offsets in ms from the payload's ``base_time_ms`` (non-decreasing);
    a value is ``mantissa * 10**exp``.
    """

    signal_id: int
    exp: int
    times: tuple[int, ...]
    mantissas: tuple[int, ...]

    def values(self) -> list[float | int]:
        """The values: ``mantissa * 10**exp``; integers stay integers when ``exp >= 0``."""
        if self.exp >= 0:
            scale = 10**self.exp
            return [m * scale for m in self.mantissas]
        divisor = 10 ** (-self.exp)
        return [m / divisor for m in self.mantissas]


@dataclass(frozen=True, slots=True)
class Uplink:
    """One upload of the box."""

    vin: str
    seq: int
    base_time_ms: int
    trigger: Trigger
    privacy: Privacy
    series: tuple[Series, ...]
    boot: int = 0
    evicted: int = 0


@dataclass(frozen=True, slots=True)
class UplinkColumns:
    """One upload as :func:`decode_uplink_columns` gives it: its series column by column.

    The header is :class:`Uplink`'s. Column ``i`` of ``signal_ids``, ``exps``, ``t0s`` (the
    first sample's offset from ``base_time_ms``), ``periods`` (0 for irregular times),
    ``counts`` and ``t_lasts`` (the last sample's offset) describes the payload's series
    ``i``. ``packed`` holds all the series in the binary form that
    :func:`unpack_series` reads (see :func:`pack_format`).
    """

    vin: str
    seq: int
    base_time_ms: int
    trigger: Trigger
    privacy: Privacy
    boot: int
    evicted: int
    signal_ids: tuple[int, ...]
    exps: tuple[int, ...]
    t0s: tuple[int, ...]
    periods: tuple[int, ...]
    counts: tuple[int, ...]
    t_lasts: tuple[int, ...]
    n_samples: int
    packed: bytes

    def series(self) -> tuple[Series, ...]:
        """The series as :class:`Series`, as :func:`decode_uplink` gives them."""
        return _unpacked(self.packed)

    def uplink(self) -> Uplink:
        """The :class:`Uplink` that :func:`decode_uplink` gives for the same payload."""
        return Uplink(
            vin=self.vin,
            seq=self.seq,
            base_time_ms=self.base_time_ms,
            trigger=self.trigger,
            privacy=self.privacy,
            series=self.series(),
            boot=self.boot,
            evicted=self.evicted,
        )


# The packed series: a header of four little-endian signed 64-bit integers (the number k of
# series, of samples n and of irregular sample times m, and the layout w of the values),
# then k signal ids (u16), k exps (i8), k first and k last sample times (offsets from the
# base time, i64), k sample counts (i32), k flags (u8, 1: irregular times), then the values
# and m times (i64), all little-endian. With w = 4 the values are n i32, as version 1 of
# the wire has them: each series' first mantissa then the differences; with w = 8 they are
# the n mantissas (i64). With w = -1 they are as version 2 of the wire has them: k first
# mantissas (i64), k widths (u8: 1, 2, 4 or 8), then each series' count - 1 differences of
# its width (signed; modulo 2**64 when 8 bytes wide). The times are those of the irregular
# series, one series after the other; a regular series' times are evenly spaced from its
# first to its last.
_PACK_HEADER = struct.Struct("<4q")


def pack_format(k: int, n: int, m: int, width: int) -> str:
    """The ``struct`` format of packed series (header included): ``k`` series, ``n`` samples,
    ``m`` irregular times, values of layout ``width`` (4 or 8; -1: the first mantissas, and
    neither the widths, differences nor times that follow them)."""
    if width < 0:
        return f"<4q{k}H{k}b{k}q{k}q{k}i{k}B{k}q"
    return f"<4q{k}H{k}b{k}q{k}q{k}i{k}B{n}{'i' if width == 4 else 'q'}{m}q"


def _unpacked(packed: bytes) -> tuple[Series, ...]:
    """Every packed series as a :class:`Series`."""
    return tuple(
        Series(sid, exp, tuple(times), tuple(mantissas))
        for sid, exp, times, mantissas in unpack_series(packed)
    )


def _wrap64(value: int) -> int:
    """``value`` modulo 2**64, as a signed 64-bit integer."""
    return ((value - INT64_MIN) & UINT64_MAX) + INT64_MIN


def unpack_series(
    packed: bytes, signal_id: int | None = None
) -> Iterator[tuple[int, int, Iterable[int], Iterable[int]]]:
    """``(signal_id, exp, times, mantissas)`` of each packed series (of one signal), in order.

    The times are offsets from the upload's base time.
    """
    k, n, _m, width = _PACK_HEADER.unpack_from(packed)
    columns = struct.unpack_from(f"<{k}H{k}b{k}q{k}q{k}i{k}B", packed, _PACK_HEADER.size)
    sids = columns[:k]
    if signal_id is None:
        wanted: Iterable[int] = range(k)
    elif signal_id in sids:
        wanted = (sids.index(signal_id),)
    else:
        return
    exps, counts = columns[k : 2 * k], columns[4 * k : 5 * k]
    values_at = _PACK_HEADER.size + 24 * k
    if width < 0:
        yield from _unpack_differences(packed, values_at, wanted, columns, k)
        return
    code = "i" if width == 4 else "q"
    times_at = values_at + n * width
    every = struct.unpack_from(f"<{n}{code}", packed, values_at) if signal_id is None else ()
    start = 0
    for i in wanted:
        count = counts[i]
        if signal_id is None:
            values: Iterable[int] = every[start : start + count]
            start += count
        else:
            at = values_at + sum(counts[:i]) * width
            values = struct.unpack_from(f"<{count}{code}", packed, at)
        if width == 4:
            values = accumulate(values)
        yield sids[i], exps[i], _times(packed, times_at, columns, k, i), values


def _times(packed: bytes, times_at: int, columns: Sequence[int], k: int, i: int) -> Iterable[int]:
    """The sample times of packed series ``i`` (``columns``: the k-long columns)."""
    t0, t_last, count = columns[2 * k + i], columns[3 * k + i], columns[4 * k + i]
    if columns[5 * k + i]:  # irregular
        counts, irregular = columns[4 * k : 4 * k + i], columns[5 * k : 5 * k + i]
        at = times_at + 8 * sum(compress(counts, irregular))
        return struct.unpack_from(f"<{count}q", packed, at)
    if count == 1:
        return (t0,)
    return range(t0, t_last + 1, (t_last - t0) // (count - 1))


def _unpack_differences(
    packed: bytes, at: int, wanted: Iterable[int], columns: Sequence[int], k: int
) -> Iterator[tuple[int, int, Iterable[int], Iterable[int]]]:
    """The series of the w = -1 layout (see :func:`pack_format`)."""
    firsts = struct.unpack_from(f"<{k}q", packed, at)
    widths = packed[at + 8 * k : at + 9 * k]
    counts = columns[4 * k : 5 * k]
    starts = list(accumulate(map(mul, map(sub, counts, repeat(1)), widths), initial=at + 9 * k))
    times_at = starts[-1]
    for i in wanted:
        width = widths[i]
        own = struct.unpack_from(f"<{counts[i] - 1}{_WIDTH_CODES[width]}", packed, starts[i])
        values: Iterable[int] = accumulate(own, initial=firsts[i])
        if width == 8:
            values = map(_wrap64, values)
        yield columns[i], columns[k + i], _times(packed, times_at, columns, k, i), values


def quantize(value: float, exp: int) -> int:
    """The integer mantissa nearest to ``value / 10**exp`` (ties to even).

    Raises :class:`PayloadError` (``bad_value``) for NaN and infinities and
    (``out_of_range``) when the mantissa does not fit in 64 signed bits.
    """
    try:
        if isinstance(value, int):  # exact for integers of any size (bool included)
            mantissa = value * 10**-exp if exp <= 0 else round(Fraction(value, 10**exp))
        else:
            mantissa = round(value * 10**-exp) if exp < 0 else round(value / 10**exp)
    except (ValueError, OverflowError, TypeError):
        raise PayloadError("bad_value", f"cannot quantize {value!r}") from None
    if not INT64_MIN <= mantissa <= INT64_MAX:
        raise PayloadError("out_of_range", f"{value!r} at exp {exp} needs more than 64 bits")
    return mantissa


# ---------------------------------------------------------------------------------------------
# Encoding


def _fail(reason: str, detail: str) -> NoReturn:
    raise PayloadError(reason, detail)


def _check_uint(value: object, name: str, minimum: int = 0) -> int:
    if type(value) is not int or not minimum <= value <= UINT64_MAX:
        _fail("bad_field", f"{name} must be an integer in {minimum}..2**64-1, got {value!r}")
    return value


def _encodable(s: Series) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    """``s``'s signal id, exp, times and mantissas once checked for the wire."""
    sid, exp, times, mantissas = s.signal_id, s.exp, s.times, s.mantissas
    if type(sid) is not int or not 1 <= sid <= 65535:
        _fail("bad_series", f"signal id must be in 1..65535, got {sid!r}")
    if type(exp) is not int or not -9 <= exp <= 9:
        _fail("bad_series", f"signal {sid}: exp must be in -9..9, got {exp!r}")
    n = len(mantissas)
    if n == 0:
        _fail("bad_series", f"signal {sid}: a series needs at least one sample")
    if len(times) != n:
        _fail("length_mismatch", f"signal {sid}: {len(times)} times for {n} values")
    if not set(map(type, mantissas)) <= _INT_ONLY or not set(map(type, times)) <= _INT_ONLY:
        _fail("bad_series", f"signal {sid}: times and mantissas must be integers")
    if min(mantissas) < INT64_MIN or max(mantissas) > INT64_MAX:
        _fail("out_of_range", f"signal {sid}: a mantissa does not fit in 64 signed bits")
    if min(times) < INT64_MIN or max(times) > INT64_MAX:
        _fail("out_of_range", f"signal {sid}: a time does not fit in 64 signed bits")
    return sid, exp, tuple(times), tuple(mantissas)


def _period(sid: int, times: tuple[int, ...]) -> tuple[int, list[int]]:
    """The period of a series' times, and its gaps when irregular (period 0)."""
    if len(times) == 1:
        return 1, []
    gaps = list(map(sub, times[1:], times))
    first = gaps[0]
    if first > 0 and gaps.count(first) == len(gaps):
        return first, []
    if min(gaps) < 0:
        _fail("bad_times", f"signal {sid}: times must not decrease")
    return 0, gaps


def _encode_series(s: Series) -> list[Any]:
    """A series in the form of format version 1."""
    sid, exp, times, mantissas = _encodable(s)
    values = [mantissas[0], *map(sub, mantissas[1:], mantissas)]
    period, gaps = _period(sid, times)
    if period:
        return [sid, exp, times[0], period, values]
    return [sid, exp, times[0], 0, values, gaps]


def delta_width(lowest: int, highest: int) -> int:
    """The bytes (1, 2, 4 or 8) of a version-2 difference column holding ``lowest`` to
    ``highest``; 8 is taken modulo 2**64 and holds any difference of 64-bit mantissas."""
    for width in (1, 2, 4):
        bound = 1 << (8 * width - 1)
        if -bound <= lowest and highest < bound:
            return width
    return 8


def _series_table(series: Sequence[Series]) -> list[Any]:
    """The series in the form of format version 2: a table of columns (``uplink.cddl``)."""
    sids: list[int] = []
    exps: list[int] = []
    t0s: list[int] = []
    periods: list[int] = []
    counts: list[int] = []
    firsts: list[int] = []
    widths = bytearray()
    differences: list[bytes] = []
    all_gaps: list[int] = []
    for s in series:
        sid, exp, times, mantissas = _encodable(s)
        period, gaps = _period(sid, times)
        sids.append(sid)
        exps.append(exp)
        t0s.append(times[0])
        periods.append(period)
        counts.append(len(mantissas))
        firsts.append(mantissas[0])
        own = list(map(sub, mantissas[1:], mantissas))
        width = delta_width(min(own), max(own)) if own else 1
        if width == 8:
            own = list(map(_wrap64, own))
        widths.append(width)
        differences.append(struct.pack(f"<{len(own)}{_WIDTH_CODES[width]}", *own))
        all_gaps += gaps
    column = b"".join(differences)
    return [sids, exps, t0s, periods, counts, firsts, bytes(widths), column, all_gaps]


def encode_uplink(u: Uplink, *, version: int = FORMAT_VERSION) -> bytes:
    """The CBOR payload of ``u`` in format ``version`` (one of :data:`FORMAT_VERSIONS`);
    :class:`PayloadError` when ``u`` cannot be represented."""
    if type(version) is not int or version not in FORMAT_VERSIONS:
        raise ValueError(f"version must be one of {FORMAT_VERSIONS}, not {version!r}")
    vin = u.vin
    if type(vin) is not str or _VIN.fullmatch(vin) is None:
        _fail("bad_field", f"vin must be 17 characters of A-H J-N P R-Z 0-9, got {vin!r}")
    try:
        trigger = int(Trigger(u.trigger))
        privacy = int(Privacy(u.privacy))
    except ValueError as exc:
        raise PayloadError("bad_field", str(exc)) from None
    series = u.series
    if sum(len(s.mantissas) for s in series) > MAX_SAMPLES:
        _fail("too_large", f"more than {MAX_SAMPLES} samples")
    encoded: list[Any]
    if version == 2:
        encoded = _series_table(series)
        signal_ids = encoded[0]
    else:
        encoded = [_encode_series(s) for s in series]
        signal_ids = [s[0] for s in encoded]
    if len(set(signal_ids)) != len(signal_ids):
        _fail("duplicate_signal", "two series for one signal id")
    doc: dict[int, Any] = {
        0: version,
        1: vin,
        2: _check_uint(u.seq, "seq"),
        3: _check_uint(u.base_time_ms, "base_time_ms"),
        4: trigger,
        5: privacy,
        6: encoded,
    }
    if u.boot:
        doc[7] = _check_uint(u.boot, "boot")
    if u.evicted:
        doc[8] = _check_uint(u.evicted, "evicted")
    data: bytes = cbor2.dumps(doc)
    if len(data) > MAX_PAYLOAD_BYTES:
        _fail("too_large", f"{len(data)} bytes, more than {MAX_PAYLOAD_BYTES}")
    return data


# ---------------------------------------------------------------------------------------------
# Decoding


class _ForbiddenTag(Exception):
    """Raised inside cbor2 for any tag; ``decode_uplink`` turns it into ``bad_field``."""

    def __init__(self, tag: int) -> None:
        super().__init__(tag)
        self.tag = tag


def _forbid(tag: int) -> Callable[[Any, bool], NoReturn]:
    def reject(value: Any, immutable: bool) -> NoReturn:
        raise _ForbiddenTag(tag)

    return reject


def _reject_unknown_tag(tag: cbor2.CBORTag, immutable: bool) -> NoReturn:
    raise _ForbiddenTag(tag.tag)


# The tags cbor2 6 decodes itself (dates, bignums, self-description, value sharing, string
# references, ...). None is allowed on this wire: a bignum would pass for an int and a
# self-describe tag or a shared reference would vanish without them.
_BUILTIN_TAGS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100)
_BUILTIN_TAGS += (256, 258, 260, 261, 1004, 43000, 55799)
_SEMANTIC_DECODERS: Mapping[int, Any] = {tag: _forbid(tag) for tag in _BUILTIN_TAGS}


def _load(data: bytes) -> Any:
    """The one CBOR item of ``data``; a cbor2 failure becomes a ``PayloadError``.

    cbor2 (6.x) reports every problem of its input as ``CBORDecodeError``, also the errors
    of hooks (their ``__cause__``); a fuzz of 300,000 byte strings found nothing else.
    """
    fp = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        fp,
        tag_hook=_reject_unknown_tag,
        semantic_decoders=_SEMANTIC_DECODERS,
        max_depth=_MAX_DEPTH,
        allow_duplicate_keys=False,
    )
    try:
        obj = decoder.decode()
    except cbor2.CBORDecodeError as exc:
        cause = exc.__cause__
        if isinstance(cause, _ForbiddenTag):
            raise PayloadError("bad_field", f"CBOR tag {cause.tag} is not allowed") from None
        raise PayloadError("not_cbor", str(exc)) from None
    if fp.tell() != len(data):
        _fail("trailing_bytes", f"{len(data) - fp.tell()} bytes after the payload")
    return obj


def _decode_series(raw: object, index: int) -> Series:
    """One series; a fast path for well-formed input, :func:`_check_series` for the rest."""
    if type(raw) is list:
        if len(raw) == 5:
            sid, exp, t0, period, values = raw
            if (
                type(sid) is int
                and 0 < sid < 65536
                and type(exp) is int
                and -10 < exp < 10
                and type(t0) is int
                and type(period) is int
                and period > 0
                and type(values) is list
                and values
                and set(map(type, values)) <= _INT_ONLY
            ):
                last = t0 + (len(values) - 1) * period
                mantissas = tuple(accumulate(values))
                if (
                    t0 >= INT64_MIN
                    and last <= INT64_MAX
                    and min(mantissas) >= INT64_MIN
                    and max(mantissas) <= INT64_MAX
                ):
                    return Series(sid, exp, tuple(range(t0, last + 1, period)), mantissas)
        elif len(raw) == 6:
            sid, exp, t0, period, values, gaps = raw
            if (
                type(sid) is int
                and 0 < sid < 65536
                and type(exp) is int
                and -10 < exp < 10
                and type(t0) is int
                and type(period) is int
                and period == 0
                and type(values) is list
                and len(values) > 1
                and set(map(type, values)) <= _INT_ONLY
                and type(gaps) is list
                and len(gaps) == len(values) - 1
                and set(map(type, gaps)) <= _INT_ONLY
                and min(gaps) >= 0
            ):
                times = tuple(accumulate(gaps, initial=t0))
                mantissas = tuple(accumulate(values))
                if (
                    t0 >= INT64_MIN
                    and times[-1] <= INT64_MAX
                    and min(mantissas) >= INT64_MIN
                    and max(mantissas) <= INT64_MAX
                ):
                    return Series(sid, exp, times, mantissas)
    return _check_series(raw, index)


def _check_series(raw: object, index: int) -> Series:
    """One series, every rule checked in turn so that a failure names its reason."""
    where = f"series[{index}]"
    if type(raw) is not list:
        _fail("bad_series", f"{where} is not an array")
    if len(raw) not in (5, 6):
        _fail("bad_series", f"{where} has {len(raw)} elements, expected 5 or 6")
    sid, exp, t0, period, values = raw[:5]
    irregular = len(raw) == 6
    if type(sid) is not int or not 1 <= sid <= 65535:
        _fail("bad_series", f"{where}: signal id must be in 1..65535, got {sid!r}")
    where = f"{where} (signal {sid})"
    if type(exp) is not int or not -9 <= exp <= 9:
        _fail("bad_series", f"{where}: exp must be in -9..9, got {exp!r}")
    if type(t0) is not int:
        _fail("bad_series", f"{where}: t0 must be an integer, got {t0!r}")
    if type(period) is not int:
        _fail("bad_series", f"{where}: period must be an integer, got {period!r}")
    if type(values) is not list or not values or not set(map(type, values)) <= _INT_ONLY:
        _fail("bad_series", f"{where}: values must be a non-empty array of integers")
    n = len(values)
    times: Sequence[int]
    if not irregular:
        if period < 0:
            _fail("bad_times", f"{where}: negative period {period}")
        if period == 0:
            _fail("bad_series", f"{where}: period 0 needs gaps")
        last = t0 + (n - 1) * period
        times = range(t0, last + 1, period)
    else:
        if period != 0:
            _fail("bad_series", f"{where}: gaps need period 0, got {period}")
        gaps = raw[5]
        if type(gaps) is not list or not set(map(type, gaps)) <= _INT_ONLY:
            _fail("bad_series", f"{where}: gaps must be an array of integers")
        if n < 2:
            _fail("bad_series", f"{where}: one sample is written in the regular form")
        if len(gaps) != n - 1:
            _fail("length_mismatch", f"{where}: {len(gaps)} gaps for {n} values")
        if min(gaps) < 0:
            _fail("bad_times", f"{where}: a negative gap")
        times = list(accumulate(gaps, initial=t0))
        last = times[-1]
    if t0 < INT64_MIN or last > INT64_MAX:
        _fail("out_of_range", f"{where}: a time does not fit in 64 signed bits")
    mantissas = tuple(accumulate(values))
    if min(mantissas) < INT64_MIN or max(mantissas) > INT64_MAX:
        _fail("out_of_range", f"{where}: a mantissa does not fit in 64 signed bits")
    return Series(sid, exp, tuple(times), mantissas)


def _get_uint(doc: dict[Any, Any], key: int, name: str, minimum: int = 0) -> int:
    value = doc[key]
    if type(value) is not int or value < minimum:  # CBOR ints never exceed 2**64-1
        _fail("bad_field", f"{name} (key {key}) must be an integer >= {minimum}, got {value!r}")
    return value


def _header(
    data: bytes | bytearray | memoryview,
) -> tuple[dict[Any, Any], int, str, int, int, int, int, list[Any]]:
    """The document and the top-level fields checked before the series."""
    if not isinstance(data, bytes | bytearray | memoryview):
        _fail("not_cbor", f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_PAYLOAD_BYTES:
        _fail("too_large", f"{len(data)} bytes, more than {MAX_PAYLOAD_BYTES}")
    doc = _load(data)
    if type(doc) is not dict:
        _fail("not_map", f"top-level item is {type(doc).__name__}, expected a map")
    for key in doc:
        if type(key) is not int or key not in _KNOWN_KEYS:
            _fail("unknown_key", f"key {key!r}")
    for key in _REQUIRED_KEYS:
        if key not in doc:
            _fail("missing_key", f"key {key}")
    version = doc[0]
    if type(version) is not int or version not in FORMAT_VERSIONS:
        _fail("bad_version", f"version {version!r}, expected 1 or 2")
    vin = doc[1]
    if type(vin) is not str or _VIN.fullmatch(vin) is None:
        _fail("bad_field", f"vin (key 1) {vin!r}")
    seq = _get_uint(doc, 2, "seq")
    base_time_ms = _get_uint(doc, 3, "base_time_ms")
    trigger = _get_uint(doc, 4, "trigger")
    if trigger > 8:
        _fail("bad_field", f"trigger (key 4) {trigger} is not in 0..8")
    privacy = _get_uint(doc, 5, "privacy")
    if privacy > 2:
        _fail("bad_field", f"privacy (key 5) {privacy} is not in 0..2")
    raw_series = doc[6]
    if type(raw_series) is not list:
        _fail("bad_field", "series (key 6) must be an array")
    if version == 2 and len(raw_series) != 9:
        _fail("bad_field", f"series table (key 6) has {len(raw_series)} columns, expected 9")
    return doc, version, vin, seq, base_time_ms, trigger, privacy, raw_series


def _check_totals(samples: int, signal_ids: Sequence[int]) -> None:
    """The checks over all series: the number of samples, then one series per signal."""
    if samples > MAX_SAMPLES:
        _fail("too_large", f"{samples} samples, more than {MAX_SAMPLES}")
    if len(set(signal_ids)) != len(signal_ids):
        seen: set[int] = set()
        for sid in signal_ids:
            if sid in seen:
                _fail("duplicate_signal", f"signal {sid} appears twice")
            seen.add(sid)


def decode_uplink(data: bytes | bytearray | memoryview) -> Uplink:
    """The :class:`Uplink` in ``data``, checked against the contract; else :class:`PayloadError`."""
    doc, version, vin, seq, base_time_ms, trigger, privacy, raw_series = _header(data)
    series: tuple[Series, ...]
    if version == 2:
        sids, _exps, _t0s, _periods, _counts, _t_lasts, n, packed = _table_columns(raw_series)
        _check_totals(n, sids)
        series = _unpacked(packed)
    else:
        series = tuple([_decode_series(raw, i) for i, raw in enumerate(raw_series)])
        _check_totals(sum([len(s.mantissas) for s in series]), [s.signal_id for s in series])
    boot = _get_uint(doc, 7, "boot", 1) if 7 in doc else 0
    evicted = _get_uint(doc, 8, "evicted", 1) if 8 in doc else 0
    return Uplink(
        vin=vin,
        seq=seq,
        base_time_ms=base_time_ms,
        trigger=Trigger(trigger),
        privacy=Privacy(privacy),
        series=series,
        boot=boot,
        evicted=evicted,
    )


_Columns = tuple[
    tuple[int, ...],  # signal ids
    tuple[int, ...],  # exps
    tuple[int, ...],  # t0s
    tuple[int, ...],  # periods
    tuple[int, ...],  # counts
    tuple[int, ...],  # t_lasts
    int,  # samples
    bytes,  # packed
]
_NO_COLUMNS: _Columns = ((), (), (), (), (), (), 0, _PACK_HEADER.pack(0, 0, 0, 4))


def _fast_columns(raw_series: list[Any], data: bytes) -> _Columns | None:
    """The columns of well-formed series, found with whole-column checks; ``None`` otherwise.

    ``None`` says nothing about the series: :func:`_exact_columns` then checks them one by
    one. Every rule of :func:`_check_series` holds for the series this accepts: the packing
    itself (``struct``) refuses a signal id, exp, time, count or value that is not an integer
    or does not fit its field, and a boolean (the one non-integer it would take) is looked
    for only when the payload holds its bytes, 0xf4 or 0xf5.
    """
    if not raw_series:
        return _NO_COLUMNS
    if not set(map(type, raw_series)) <= _LIST_ONLY:
        return None
    lengths = list(map(len, raw_series))
    if not set(lengths) <= _SERIES_LENGTHS:
        return None
    sids, exps, t0s, periods, values = list(zip(*raw_series, strict=False))[:5]
    # The periods multiply below: integers only (a list times a count could be huge).
    if not set(map(type, periods)) <= _INT_ONLY or not set(map(type, values)) <= _LIST_ONLY:
        return None
    if (b"\xf4" in data or b"\xf5" in data) and not set(
        map(type, chain(sids, exps, t0s, chain.from_iterable(values)))
    ) <= _INT_ONLY:
        return None
    counts = tuple(map(len, values))
    try:
        if min(sids) < 1 or min(exps) < -9 or max(exps) > 9 or 0 in counts or min(periods) < 0:
            return None
        # The last time of a regular series; an irregular one's (period 0) is its first.
        t_lasts = list(map(add, t0s, map(mul, map(sub, counts, repeat(1)), periods)))
        if min(t0s) < INT64_MIN:
            return None
    except TypeError:  # not numbers
        return None
    times: list[int] = []
    flags = repeat(0, len(lengths))
    if 6 in lengths:
        irregular = [i for i, length in enumerate(lengths) if length == 6]
        if periods.count(0) != len(irregular):
            return None
        for i in irregular:
            series_gaps = raw_series[i][5]
            if (
                periods[i] != 0
                or type(series_gaps) is not list
                or counts[i] < 2
                or len(series_gaps) != counts[i] - 1
                or not set(map(type, series_gaps)) <= _INT_ONLY
                or min(series_gaps) < 0
            ):
                return None
            own = list(accumulate(series_gaps, initial=t0s[i]))
            t_lasts[i] = own[-1]
            times += own
        flags = map((0).__eq__, periods)  # type: ignore[assignment]
    elif 0 in periods:
        return None
    k, n, m = len(lengths), sum(counts), len(times)
    if max(t_lasts) > INT64_MAX or n > 2**31:
        return None
    try:
        # At most 2**31 values within 32 bits: every sum of them is within 64 bits.
        packed = struct.pack(
            pack_format(k, n, m, 4),
            *(k, n, m, 4),
            *sids,
            *exps,
            *t0s,
            *t_lasts,
            *counts,
            *flags,
            *chain.from_iterable(values),
            *times,
        )
    except struct.error:  # not integers, or not within their fields (a value within 32 bits)
        try:
            mantissas = list(chain.from_iterable(map(accumulate, values)))
            flags = map((0).__eq__, periods)  # type: ignore[assignment]
            packed = struct.pack(
                pack_format(k, n, m, 8),
                *(k, n, m, 8),
                *sids,
                *exps,
                *t0s,
                *t_lasts,
                *counts,
                *flags,
                *mantissas,
                *times,
            )
        except (struct.error, TypeError):
            return None
    return sids, exps, t0s, periods, counts, tuple(t_lasts), n, packed


def _exact_columns(raw_series: list[Any]) -> _Columns:
    """The columns of the series checked one by one (the first bad one raises its reason)."""
    series = [_decode_series(raw, i) for i, raw in enumerate(raw_series)]
    k = len(series)
    periods = tuple(raw[3] for raw in raw_series)
    irregular = [period == 0 for period in periods]
    times = [t for s, flag in zip(series, irregular, strict=True) if flag for t in s.times]
    mantissas = [m for s in series for m in s.mantissas]
    n = len(mantissas)
    columns = (
        tuple(s.signal_id for s in series),
        tuple(s.exp for s in series),
        tuple(s.times[0] for s in series),
        tuple(s.times[-1] for s in series),
        tuple(len(s.times) for s in series),
    )
    packed = struct.pack(
        pack_format(k, n, len(times), 8),
        *(k, n, len(times), 8),
        *chain.from_iterable(columns),
        *irregular,
        *mantissas,
        *times,
    )
    sids, exps, t0s, t_lasts, counts = columns
    return sids, exps, t0s, periods, counts, t_lasts, n, packed


def _table_columns(table: list[Any]) -> _Columns:
    """The columns of a version-2 series table (``uplink.cddl``): a whole-column fast path
    for a well-formed table, :func:`_exact_table_columns` (the first broken rule raises its
    reason) for anything else."""
    sids, exps, t0s, periods, counts, firsts, widths, differences, gaps = table
    if (
        type(sids) is list
        and type(exps) is list
        and type(t0s) is list
        and type(periods) is list
        and type(counts) is list
        and type(firsts) is list
        and type(widths) is bytes
        and type(differences) is bytes
        and type(gaps) is list
        and set(map(type, chain(sids, exps, t0s, periods, counts, firsts, gaps))) <= _INT_ONLY
    ):
        k = len(sids)
        if not k:
            if not (exps or t0s or periods or counts or firsts or widths or differences or gaps):
                return _NO_TABLE
        elif (
            len(exps) == len(t0s) == len(periods) == len(counts) == len(firsts) == len(widths) == k
            and min(sids) > 0
            and min(exps) > -10
            and max(exps) < 10
            and min(periods) >= 0
            and min(counts) > 0
            and set(widths) <= _WIDTHS
        ):
            packed = _pack_table(table, k)
            if packed is not None:
                return packed
    return _exact_table_columns(table)


_WIDTHS = frozenset(_WIDTH_CODES)
_NO_TABLE: _Columns = ((), (), (), (), (), (), 0, _PACK_HEADER.pack(0, 0, 0, -1))
# The largest size of a difference of each width (8: taken modulo 2**64, never out of range).
_REACH = {1: 1 << 7, 2: 1 << 15, 4: 1 << 31, 8: 0}


def _unfit_series(table: list[Any]) -> int | None:
    """The index of the first series of a table (checked but for this) whose mantissas leave
    the signed 64-bit range, ``None`` when all fit. Only differences narrower than 8 bytes
    can take a mantissa out; a whole-column bound spares the sums in the usual case."""
    _sids, _exps, _t0s, _periods, counts, firsts, widths, differences, _gaps = table
    reach = list(map(mul, map(sub, counts, repeat(1)), map(_REACH.__getitem__, widths)))
    if min(map(sub, firsts, reach)) >= INT64_MIN and max(map(add, firsts, reach)) <= INT64_MAX:
        return None
    at = 0
    for i, (first, count, width) in enumerate(zip(firsts, counts, widths, strict=True)):
        if width < 8 and count > 1:
            own = struct.unpack_from(f"<{count - 1}{_WIDTH_CODES[width]}", differences, at)
            mantissas = list(accumulate(own, initial=first))
            if min(mantissas) < INT64_MIN or max(mantissas) > INT64_MAX:
                return i
        at += (count - 1) * width
    return None


def _difference_bytes(counts: Iterable[int], widths: Iterable[int]) -> int:
    """The length of a table's ``differences``: each series' count - 1 of its width."""
    return sum(map(mul, map(sub, counts, repeat(1)), widths))


def _pack_table(table: list[Any], k: int) -> _Columns | None:
    """The columns of a table of integers whose shape and small ranges were checked;
    ``None`` when one of the rules :func:`_exact_table_columns` names is broken."""
    sids, exps, t0s, periods, counts, firsts, widths, differences, gaps = table
    n = sum(counts)
    if n > MAX_SAMPLES or len(differences) != _difference_bytes(counts, widths):
        return None
    if _unfit_series(table) is not None:
        return None
    t_lasts = list(map(add, t0s, map(mul, map(sub, counts, repeat(1)), periods)))
    times: list[int] = []
    if 0 in periods:
        start = 0
        for i in compress(range(k), map((0).__eq__, periods)):
            count = counts[i]
            if count < 2:
                return None
            own = gaps[start : start + count - 1]
            start += count - 1
            if len(own) != count - 1 or min(own) < 0:
                return None
            times += accumulate(own, initial=t0s[i])
            t_lasts[i] = times[-1]
        if start != len(gaps):
            return None
    elif gaps:
        return None
    m = len(times)
    try:
        # Every signal id within u16, t0, last time and first mantissa within 64 bits (and
        # integers), and times in between (they never decrease).
        head = struct.pack(
            pack_format(k, n, m, -1),
            *(k, n, m, -1),
            *sids,
            *exps,
            *t0s,
            *t_lasts,
            *counts,
            *map((0).__eq__, periods),
            *firsts,
        )
    except struct.error:
        return None
    packed = b"".join((head, widths, differences, struct.pack(f"<{m}q", *times)))
    columns = (tuple(sids), tuple(exps), tuple(t0s), tuple(periods), tuple(counts))
    return (*columns, tuple(t_lasts), n, packed)


def _exact_table_columns(table: list[Any]) -> _Columns:
    """The columns of a version-2 series table, every rule checked in turn."""
    sids, exps, t0s, periods, counts, firsts, widths, differences, gaps = table
    for name, column in zip(_TABLE_COLUMNS, table, strict=False):
        if type(column) is not list or not set(map(type, column)) <= _INT_ONLY:
            _fail("bad_series", f"{name} (series table) must be an array of integers")
    k = len(sids)
    for name, column in zip(_TABLE_COLUMNS[1:], table[1:6], strict=True):
        if len(column) != k:
            _fail("length_mismatch", f"{len(column)} {name} for {k} signal ids")
    if type(widths) is not bytes:
        _fail("bad_series", "widths (series table) must be a byte string")
    if len(widths) != k:
        _fail("length_mismatch", f"{len(widths)} widths for {k} signal ids")
    for i in range(k):
        where = f"series[{i}]"
        if not 1 <= sids[i] <= 65535:
            _fail("bad_series", f"{where}: signal id must be in 1..65535, got {sids[i]}")
        where = f"{where} (signal {sids[i]})"
        if not -9 <= exps[i] <= 9:
            _fail("bad_series", f"{where}: exp must be in -9..9, got {exps[i]}")
        if counts[i] < 1:
            _fail("bad_series", f"{where}: a series needs at least one sample")
        if periods[i] < 0:  # what the CDDL's uint refuses
            _fail("bad_times", f"{where}: negative period {periods[i]}")
        if periods[i] == 0 and counts[i] < 2:
            _fail("bad_series", f"{where}: one sample is written in the regular form")
        if widths[i] not in _WIDTHS:
            _fail("bad_series", f"{where}: difference width {widths[i]} is not 1, 2, 4 or 8")
        if not INT64_MIN <= t0s[i] <= INT64_MAX:
            _fail("out_of_range", f"{where}: a time does not fit in 64 signed bits")
        if not INT64_MIN <= firsts[i] <= INT64_MAX:
            _fail("out_of_range", f"{where}: a mantissa does not fit in 64 signed bits")
    n = sum(counts)
    if n > MAX_SAMPLES:
        _fail("too_large", f"{n} samples, more than {MAX_SAMPLES}")
    if type(differences) is not bytes:
        _fail("bad_series", "differences (series table) must be a byte string")
    size = _difference_bytes(counts, widths)
    if len(differences) != size:
        _fail("length_mismatch", f"{len(differences)} bytes of differences, expected {size}")
    if type(gaps) is not list or not set(map(type, gaps)) <= _INT_ONLY:
        _fail("bad_series", "gaps (series table) must be an array of integers")
    if gaps and min(gaps) < 0:
        _fail("bad_times", "a negative gap")
    wanted = sum(counts[i] - 1 for i in range(k) if periods[i] == 0)
    if len(gaps) != wanted:
        _fail("length_mismatch", f"{len(gaps)} gaps for {wanted} in the irregular series")
    unfit = _unfit_series(table) if k else None
    if unfit is not None:
        where = f"series[{unfit}] (signal {sids[unfit]})"
        _fail("out_of_range", f"{where}: a mantissa does not fit in 64 signed bits")
    columns = _pack_table(table, k) if k else _NO_TABLE
    if columns is None:  # only a time beyond 64 bits is left
        _fail("out_of_range", "a sample time does not fit in 64 signed bits")
    return columns


def decode_uplink_columns(data: bytes | bytearray | memoryview) -> UplinkColumns:
    """What :func:`decode_uplink` decodes, as :class:`UplinkColumns`.

    It refuses exactly what :func:`decode_uplink` refuses, with the same reason and detail,
    but checks well-formed series a column at a time rather than one by one, and makes no
    tuple of times: the fast way for a payload that is stored rather than looked at.
    """
    doc, version, vin, seq, base_time_ms, trigger, privacy, raw_series = _header(data)
    if version == 2:
        columns = _table_columns(raw_series)
    else:
        columns = _fast_columns(raw_series, bytes(data)) or _exact_columns(raw_series)
    sids, exps, t0s, periods, counts, t_lasts, n_samples, packed = columns
    _check_totals(n_samples, sids)
    boot = _get_uint(doc, 7, "boot", 1) if 7 in doc else 0
    evicted = _get_uint(doc, 8, "evicted", 1) if 8 in doc else 0
    return UplinkColumns(
        vin=vin,
        seq=seq,
        base_time_ms=base_time_ms,
        trigger=Trigger(trigger),
        privacy=Privacy(privacy),
        boot=boot,
        evicted=evicted,
        signal_ids=sids,
        exps=exps,
        t0s=t0s,
        periods=periods,
        counts=counts,
        t_lasts=t_lasts,
        n_samples=n_samples,
        packed=packed,
    )


# ---------------------------------------------------------------------------------------------
# Human-readable form


def _rfc3339_ms(ms: int) -> str:
    try:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    except OverflowError:
        return ""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _SignalInfo(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def unit(self) -> str: ...


class SignalNames(Protocol):
    """What :func:`uplink_to_json` needs of a catalog (``can_dbc.catalog.Catalog`` has it)."""

    def get(self, signal_id: int, /) -> _SignalInfo | None: ...


def uplink_to_json(u: Uplink, catalog: SignalNames | None = None) -> dict[str, Any]:
    """``u`` as JSON-ready data for people and the CLI; names signals when given a catalog.

    Each series lists ``[offset_ms, value]`` samples; ``base_time`` is RFC 3339 (UTC), empty
    when the base time is beyond what a date can hold.
    """
    out_series: list[dict[str, Any]] = []
    for s in u.series:
        entry: dict[str, Any] = {"signal_id": s.signal_id}
        spec = catalog.get(s.signal_id) if catalog is not None else None
        if spec is not None:
            entry["name"] = spec.name
            if spec.unit:
                entry["unit"] = spec.unit
        entry["exp"] = s.exp
        entry["samples"] = [list(pair) for pair in zip(s.times, s.values(), strict=True)]
        out_series.append(entry)
    return {
        "version": FORMAT_VERSION,
        "vin": u.vin,
        "seq": u.seq,
        "base_time_ms": u.base_time_ms,
        "base_time": _rfc3339_ms(u.base_time_ms),
        "trigger": Trigger(u.trigger).name.lower(),
        "privacy": _PRIVACY_API_NAMES[Privacy(u.privacy)],
        "boot": u.boot,
        "evicted": u.evicted,
        "series": out_series,
    }
