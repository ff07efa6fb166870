"""Version 2 of the uplink payload: the series table, its packed differences, and its refusals.

The properties both versions share (round trips, the contract, fuzzing) are in
``test_payload.py``, run for each version.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from itertools import accumulate
from typing import Any
from unittest import mock

import cbor2
import pycddl
import pytest
from contract import TABLE_SCHEMA, conforms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_payload import (
    INT64_MAX,
    INT64_MIN,
    SERIES_REASONS,
    VIN,
    either,
    either_columns,
    example,
    int64,
    uplinks,
    with_series,
)

from firmware_sim import payload
from firmware_sim.errors import PayloadError
from firmware_sim.payload import (
    MAX_SAMPLES,
    Series,
    Uplink,
    decode_uplink,
    decode_uplink_columns,
    delta_width,
    encode_uplink,
    pack_format,
    unpack_series,
)

CODES = {1: "b", 2: "h", 4: "i", 8: "q"}
WIDER = {1: (1, 2, 4, 8), 2: (2, 4, 8), 4: (4, 8), 8: (8,)}


def table_of(u: Uplink) -> list[Any]:
    """The series table (key 6) of ``u`` written in version 2."""
    table: list[Any] = cbor2.loads(encode_uplink(u, version=2))[6]
    return table


def differences_of(table: list[Any]) -> list[tuple[int, ...]]:
    """Each series' differences as the table holds them (8 bytes wide: modulo 2**64)."""
    counts, widths, data = table[4], table[6], table[7]
    out = []
    at = 0
    for count, width in zip(counts, widths, strict=True):
        out.append(struct.unpack_from(f"<{count - 1}{CODES[width]}", data, at))
        at += (count - 1) * width
    assert at == len(data)
    return out


def narrowest(differences: tuple[int, ...]) -> int:
    """The fewest bytes of 1, 2, 4, 8 that hold every difference as a signed integer."""
    for width in (1, 2, 4):
        if all(-(2 ** (8 * width - 1)) <= d < 2 ** (8 * width - 1) for d in differences):
            return width
    return 8


def repacked(table: list[Any], widths: list[int]) -> list[Any]:
    """``table`` with each series' differences written ``widths[i]`` bytes wide (no narrower
    than the table's own)."""
    out = list(table)
    chunks = []
    for own, width in zip(differences_of(table), widths, strict=True):
        chunks.append(struct.pack(f"<{len(own)}{CODES[width]}", *own))
    out[6], out[7] = bytes(widths), b"".join(chunks)
    return out


def payload_of(table: Any, **header: Any) -> bytes:
    """The example's version-2 document with ``table`` for its series table (key 6)."""
    doc: dict[Any, Any] = cbor2.loads(encode_uplink(example(), version=2))
    doc[6] = table
    doc.update(header)
    return cbor2.dumps(doc)


def table_with(**changes: Any) -> list[Any]:
    """The example's series table with named columns replaced."""
    table = table_of(example())
    for name, value in changes.items():
        table[COLUMNS.index(name)] = value
    return table


COLUMNS = ("sids", "exps", "t0s", "periods", "counts", "firsts", "widths", "differences", "gaps")


class Deferred(Exception):
    """Raised in place of the exact path, to see whether the fast path answered alone."""


def fast_path(table: list[Any]) -> object:
    """The columns the whole-column path of ``_table_columns`` finds, ``None`` when it leaves
    ``table`` to the exact path."""
    with mock.patch.object(payload, "_exact_table_columns", side_effect=Deferred):
        try:
            return payload._table_columns(table)
        except Deferred:
            return None


def outcome(fn: Callable[[list[Any]], object], table: list[Any]) -> object:
    try:
        return fn(table)
    except PayloadError as exc:
        return (exc.reason, exc.detail)


# ---------------------------------------------------------------------------------------------
# The wire


def test_example_wire_shape() -> None:
    doc = cbor2.loads(encode_uplink(example(), version=2))
    assert doc == {
        0: 2,
        1: VIN,
        2: 42,
        3: 1_795_334_400_000,
        4: 3,
        5: 1,
        6: [
            [1, 6, 40],  # signal ids
            [-1, 0, -6],  # exps
            [0, 5, 3],  # t0s
            [1000, 0, 1],  # periods: regular, irregular, one sample (period 1)
            [4, 4, 1],  # counts
            [0, 1, 48_856_000],  # first mantissas
            b"\x01\x01\x01",  # widths: one byte each, also for the series of one sample
            bytes([12, 18, 1, 0xFF, 1, 0xFF]),  # differences: 12 18 1, then -1 1 -1
            [12, 0, 883],  # gaps of the irregular series
        ],
        7: 3,
    }
    assert conforms(cbor2.dumps(doc))


@pytest.mark.parametrize(
    ("mantissas", "width", "differences"),
    [
        ((5,), 1, b""),  # no difference: width 1
        ((0, 127), 1, b"\x7f"),
        ((0, -128), 1, b"\x80"),
        ((0, 128), 2, (128).to_bytes(2, "little")),
        ((0, -129), 2, (-129).to_bytes(2, "little", signed=True)),
        ((0, 32767, 0), 2, b"\xff\x7f\x01\x80"),  # 32767 then -32767
        ((0, -32768), 2, b"\x00\x80"),
        ((0, 32768), 4, (32768).to_bytes(4, "little")),
        ((0, -32769), 4, (-32769).to_bytes(4, "little", signed=True)),
        ((0, 2**31 - 1), 4, (2**31 - 1).to_bytes(4, "little")),
        ((0, -(2**31)), 4, (-(2**31)).to_bytes(4, "little", signed=True)),
        ((0, 2**31), 8, (2**31).to_bytes(8, "little")),
        ((0, -(2**31) - 1), 8, (-(2**31) - 1).to_bytes(8, "little", signed=True)),
        ((0, INT64_MAX), 8, INT64_MAX.to_bytes(8, "little")),
        # Differences beyond int64, written modulo 2**64: 2**64 - 1 as -1, and back.
        ((INT64_MIN, INT64_MAX), 8, b"\xff" * 8),
        ((INT64_MAX, INT64_MIN), 8, (1).to_bytes(8, "little")),
        ((INT64_MIN, INT64_MAX, INT64_MIN, 0), 8, b"\xff" * 8 + b"\x01" + bytes(14) + b"\x80"),
        ((1, 1, 1), 1, b"\x00\x00"),
    ],
)
def test_narrowest_width(mantissas: tuple[int, ...], width: int, differences: bytes) -> None:
    u = with_series(Series(7, 0, tuple(range(len(mantissas))), mantissas))
    table = table_of(u)
    assert table[6] == bytes([width])
    assert table[7] == differences
    assert decode_uplink(encode_uplink(u)) == u
    assert decode_uplink_columns(encode_uplink(u)).series() == u.series


def test_each_series_has_its_own_width() -> None:
    u = with_series(
        Series(1, 0, (0, 1), (0, 1)),
        Series(2, 0, (0, 1), (0, 300)),
        Series(3, 0, (0,), (INT64_MAX,)),
        Series(4, 0, (0, 1), (INT64_MIN, INT64_MAX)),
        Series(5, 0, (0, 1), (0, 70_000)),
    )
    table = table_of(u)
    assert table[6] == bytes([1, 2, 1, 8, 4])
    assert len(table[7]) == 1 + 2 + 0 + 8 + 4
    assert decode_uplink(encode_uplink(u)) == u


@given(st.integers(INT64_MIN, INT64_MAX), st.integers(INT64_MIN, INT64_MAX))
def test_delta_width_is_the_narrowest(a: int, b: int) -> None:
    lowest, highest = min(a, b), max(a, b)
    width = delta_width(lowest, highest)
    assert width in (1, 2, 4, 8)
    assert width == narrowest((lowest, highest))


@given(uplinks())
def test_the_encoder_writes_each_series_narrowest(u: Uplink) -> None:
    table = table_of(u)
    for s, width, own in zip(u.series, table[6], differences_of(table), strict=True):
        exact = tuple(b - a for a, b in zip(s.mantissas, s.mantissas[1:], strict=False))
        assert width == (narrowest(exact) if exact else 1)
        if width == 8:
            assert own == tuple(payload._wrap64(d) for d in exact)
        else:
            assert own == exact


@given(uplinks())
def test_encode_of_decode_is_the_payload(u: Uplink) -> None:
    data = encode_uplink(u, version=2)
    assert encode_uplink(decode_uplink(data)) == data
    assert encode_uplink(decode_uplink_columns(data).uplink()) == data


@given(uplinks(), st.data())
def test_any_wider_width_decodes_to_the_same_uplink(u: Uplink, data: st.DataObject) -> None:
    doc = cbor2.loads(encode_uplink(u, version=2))
    widths = [data.draw(st.sampled_from(WIDER[w])) for w in doc[6][6]]
    doc[6] = repacked(doc[6], widths)
    wide = cbor2.dumps(doc)
    assert decode_uplink(wide) == u
    assert either_columns(wide) == u
    assert conforms(wide)
    # A second spelling of the series, which the encoder brings back to the narrowest.
    assert encode_uplink(decode_uplink(wide)) == encode_uplink(u)


def test_packed_layout() -> None:
    columns = decode_uplink_columns(encode_uplink(example(), version=2))
    packed = columns.packed
    k, n, m, w = struct.unpack_from("<4q", packed)
    assert (k, n, m, w) == (3, 9, 4, -1)
    head = struct.calcsize(pack_format(k, n, m, -1))
    firsts = struct.unpack_from("<3q", packed, head - 24)
    assert firsts == (0, 1, 48_856_000)
    assert packed[head : head + 3] == b"\x01\x01\x01"
    assert packed[head + 3 : head + 9] == bytes([12, 18, 1, 0xFF, 1, 0xFF])
    assert struct.unpack_from("<4q", packed, head + 9) == (5, 17, 17, 900)
    assert len(packed) == head + 9 + 8 * m


# ---------------------------------------------------------------------------------------------
# Version 1 and version 2 of one uplink: the same series, the same store columns


def materialised(packed: bytes, signal_id: int | None = None) -> list[Any]:
    return [
        (sid, exp, tuple(times), tuple(mantissas))
        for sid, exp, times, mantissas in unpack_series(packed, signal_id)
    ]


@given(uplinks())
def test_both_versions_give_the_same_columns(u: Uplink) -> None:
    v1, v2 = encode_uplink(u, version=1), encode_uplink(u, version=2)
    assert decode_uplink(v1) == decode_uplink(v2) == u
    c1, c2 = decode_uplink_columns(v1), decode_uplink_columns(v2)
    assert c1.series() == c2.series() == u.series
    assert c1.uplink() == c2.uplink() == u
    store = ("signal_ids", "exps", "t0s", "periods", "counts", "t_lasts", "n_samples")
    header = ("vin", "seq", "base_time_ms", "trigger", "privacy", "boot", "evicted")
    for name in (*store, *header):
        assert getattr(c1, name) == getattr(c2, name), name
    assert struct.unpack_from("<q", c2.packed, 24) == (-1,)
    assert materialised(c1.packed) == materialised(c2.packed)
    for s in u.series:
        one = [(s.signal_id, s.exp, s.times, s.mantissas)]
        assert materialised(c1.packed, s.signal_id) == materialised(c2.packed, s.signal_id) == one
    absent = next(sid for sid in range(1, 10) if sid not in c1.signal_ids)
    assert materialised(c1.packed, absent) == materialised(c2.packed, absent) == []


# ---------------------------------------------------------------------------------------------
# The two paths of the series table: the whole-column one and the exact one


@st.composite
def valid_tables(draw: st.DrawFn) -> list[Any]:
    """A series table the decoders accept: an encoder's, with some differences wider."""
    table = table_of(draw(uplinks()))
    widths = [draw(st.sampled_from(WIDER[w])) for w in table[6]]
    return repacked(table, widths)


@given(valid_tables())
def test_fast_and_exact_paths_agree_on_valid_tables(table: list[Any]) -> None:
    columns = payload._exact_table_columns(table)
    assert fast_path(table) == columns  # the fast path answers on its own
    assert payload._table_columns(table) == columns


edge_ints = st.sampled_from(
    (0, 1, -1, 2, 7, 8, 9, 10, -9, -10, 65535, 65536, INT64_MAX, INT64_MAX + 1, INT64_MIN)
) | st.sampled_from((INT64_MIN - 1, 2**64 - 1, -(2**64), MAX_SAMPLES, MAX_SAMPLES + 1))
odd_values = st.sampled_from([True, False, None, 1.0, 0.5, "1", b"\x01", [1], {1: 1}])
elements = edge_ints | odd_values | int64 | st.integers(-300, 300)
widths_bytes = st.binary(max_size=6) | st.lists(
    st.sampled_from([0, 1, 2, 3, 4, 8, 16, 255]), max_size=6
).map(bytes)


@st.composite
def mutated_tables(draw: st.DrawFn) -> list[Any]:
    """A valid table with one to three of its columns, elements or bytes changed."""
    table = [list(c) if type(c) is list else c for c in draw(valid_tables())]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, 8))
        column = table[i]
        if type(column) is bytes:
            action = draw(st.sampled_from(["byte", "cut", "extend", "replace"]))
            if action == "byte" and column:
                at = draw(st.integers(0, len(column) - 1))
                column = column[:at] + bytes([draw(st.integers(0, 255))]) + column[at + 1 :]
            elif action == "cut" and column:
                column = column[: draw(st.integers(0, len(column) - 1))]
            elif action == "extend":
                column += draw(st.binary(min_size=1, max_size=9))
            else:
                column = draw(widths_bytes | elements | st.lists(elements, max_size=3))
            table[i] = column
        elif type(column) is list:
            action = draw(st.sampled_from(["element", "append", "delete", "replace"]))
            if action == "element" and column:
                column[draw(st.integers(0, len(column) - 1))] = draw(elements)
            elif action == "append":
                column.append(draw(elements))
            elif action == "delete" and column:
                del column[draw(st.integers(0, len(column) - 1))]
            else:
                table[i] = draw(elements | widths_bytes | st.lists(elements, max_size=4))
        else:
            table[i] = draw(elements | widths_bytes | st.lists(elements, max_size=4))
    return table


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(mutated_tables())
def test_fast_and_exact_paths_agree_on_mutated_tables(table: list[Any]) -> None:
    exact = outcome(payload._exact_table_columns, table)
    fast = fast_path(table)
    if fast is not None:
        assert fast == exact
    assert outcome(payload._table_columns, table) == exact


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(mutated_tables())
def test_mutated_tables_are_refused_or_conform(table: list[Any]) -> None:
    data = payload_of(table)
    result = either_columns(data)
    assert result == either(data)
    if isinstance(result, Uplink):
        assert conforms(data)
        for version in (1, 2):
            assert decode_uplink(encode_uplink(result, version=version)) == result


# ---------------------------------------------------------------------------------------------
# Refusals of the series table, one reason at a time

# The example's table: sids [1, 6, 40], exps [-1, 0, -6], t0s [0, 5, 3], periods [1000, 0, 1],
# counts [4, 4, 1], firsts [0, 1, 48856000], widths 01 01 01, differences 0c 12 01 ff 01 ff,
# gaps [12, 0, 883].
D = bytes([12, 18, 1, 0xFF, 1, 0xFF])

TABLE_REFUSALS: list[tuple[str, Any, str, str]] = [
    # name, key 6, reason, a part of the detail
    ("table of 8", table_with()[:8], "bad_field", "8 columns"),
    ("table of 10", [*table_with(), []], "bad_field", "10 columns"),
    ("empty table", [], "bad_field", "0 columns"),
    ("table as a map", dict(enumerate(table_with())), "bad_field", "must be an array"),
    ("sids not an array", table_with(sids=b"\x01\x06\x28"), "bad_series", "signal ids"),
    ("sid float", table_with(sids=[1.0, 6, 40]), "bad_series", "signal ids"),
    ("sid text", table_with(sids=["1", 6, 40]), "bad_series", "signal ids"),
    ("exps null", table_with(exps=None), "bad_series", "exps"),
    ("exp float", table_with(exps=[-1, 0.0, -6]), "bad_series", "exps"),
    ("t0 float", table_with(t0s=[0, 5.0, 3]), "bad_series", "t0s"),
    ("period float", table_with(periods=[1e3, 0, 1]), "bad_series", "periods"),
    ("count array", table_with(counts=[4, [4], 1]), "bad_series", "counts"),
    ("first float", table_with(firsts=[0, 1, 4.8856e7]), "bad_series", "firsts"),
    ("signal id 0", table_with(sids=[0, 6, 40]), "bad_series", "signal id must be"),
    ("signal id 65536", table_with(sids=[1, 65536, 40]), "bad_series", "signal id must be"),
    ("exp 10", table_with(exps=[-1, 10, -6]), "bad_series", "exp must be"),
    ("exp -10", table_with(exps=[-10, 0, -6]), "bad_series", "exp must be"),
    ("count 0", table_with(counts=[4, 4, 0]), "bad_series", "at least one sample"),
    ("irregular one sample", table_with(periods=[1000, 0, 0]), "bad_series", "one sample"),
    ("widths as an array", table_with(widths=[1, 1, 1]), "bad_series", "widths"),
    ("widths as text", table_with(widths="\x01\x01\x01"), "bad_series", "widths"),
    ("width 0", table_with(widths=b"\x01\x00\x01"), "bad_series", "width 0"),
    ("width 3", table_with(widths=b"\x01\x01\x03"), "bad_series", "width 3"),
    ("width 16", table_with(widths=b"\x10\x01\x01"), "bad_series", "width 16"),
    ("differences as an array", table_with(differences=list(D)), "bad_series", "differences"),
    ("differences null", table_with(differences=None), "bad_series", "differences"),
    ("gaps as bytes", table_with(gaps=b"\x0c\x00"), "bad_series", "gaps"),
    ("gap float", table_with(gaps=[12, 0.0, 883]), "bad_series", "gaps"),
    ("2 exps for 3", table_with(exps=[-1, 0]), "length_mismatch", "2 exps for 3"),
    ("4 t0s for 3", table_with(t0s=[0, 5, 3, 3]), "length_mismatch", "4 t0s for 3"),
    ("2 periods for 3", table_with(periods=[1000, 0]), "length_mismatch", "2 periods"),
    ("2 counts for 3", table_with(counts=[4, 4]), "length_mismatch", "2 counts"),
    ("4 firsts for 3", table_with(firsts=[0, 1, 2, 3]), "length_mismatch", "4 firsts"),
    ("2 widths for 3", table_with(widths=b"\x01\x01"), "length_mismatch", "2 widths for 3"),
    ("4 widths for 3", table_with(widths=b"\x01" * 4), "length_mismatch", "4 widths for 3"),
    ("a difference short", table_with(differences=D[:-1]), "length_mismatch", "5 bytes"),
    ("a difference over", table_with(differences=D + b"\x00"), "length_mismatch", "7 bytes"),
    ("widths of 2 bytes", table_with(widths=b"\x02\x01\x01"), "length_mismatch", "expected 9"),
    ("a gap missing", table_with(gaps=[12, 0]), "length_mismatch", "2 gaps for 3"),
    ("a gap over", table_with(gaps=[12, 0, 883, 1]), "length_mismatch", "4 gaps for 3"),
    (
        "gaps of a regular table",
        table_with(periods=[1000, 1, 1], gaps=[12, 0, 883]),
        "length_mismatch",
        "3 gaps for 0",
    ),
    ("sids of 2", table_with(sids=[1, 6]), "length_mismatch", "for 2 signal ids"),
    ("negative period", table_with(periods=[-1000, 0, 1]), "bad_times", "negative period"),
    ("negative gap", table_with(gaps=[12, -1, 883]), "bad_times", "negative gap"),
    ("same signal twice", table_with(sids=[1, 6, 1]), "duplicate_signal", "signal 1"),
    ("t0 past int64", table_with(t0s=[0, INT64_MAX + 1, 3]), "out_of_range", "time"),
    ("t0 below int64", table_with(t0s=[0, 5, INT64_MIN - 1]), "out_of_range", "time"),
    (
        "last time past int64",
        table_with(t0s=[INT64_MAX - 2999, 5, 3]),
        "out_of_range",
        "sample time",
    ),
    (
        "gaps past int64",
        table_with(t0s=[0, INT64_MAX - 894, 3]),
        "out_of_range",
        "sample time",
    ),
    ("first past int64", table_with(firsts=[0, 1, INT64_MAX + 1]), "out_of_range", "mantissa"),
    ("first below int64", table_with(firsts=[INT64_MIN - 1, 1, 2]), "out_of_range", "mantissa"),
    (
        "1-byte differences past int64",
        table_with(firsts=[INT64_MAX - 30, 1, 2]),
        "out_of_range",
        "series[0] (signal 1): a mantissa",
    ),
    (
        "1-byte differences below int64",
        table_with(firsts=[0, INT64_MIN, 2]),
        "out_of_range",
        "series[1] (signal 6): a mantissa",
    ),
    (
        "too many samples",
        [
            [1, 2],
            [0, 0],
            [0, 0],
            [1, 1],
            [MAX_SAMPLES // 2 + 1, MAX_SAMPLES // 2],
            [0, 0],
            b"\x01\x01",
            bytes(MAX_SAMPLES - 1),
            [],
        ],
        "too_large",
        "100001 samples",
    ),
]


@pytest.mark.parametrize(
    ("table", "reason", "detail"),
    [r[1:] for r in TABLE_REFUSALS],
    ids=[r[0] for r in TABLE_REFUSALS],
)
def test_table_refusal(table: Any, reason: str, detail: str) -> None:
    data = payload_of(table)
    refused = either(data)
    assert refused == either_columns(data)
    assert isinstance(refused, tuple)
    assert refused[0] == reason
    assert detail in refused[1]


def test_the_table_refusals_cover_every_reason_of_the_series() -> None:
    assert {r[2] for r in TABLE_REFUSALS} == SERIES_REASONS


EMPTY_TABLE: list[Any] = [[], [], [], [], [], [], b"", b"", []]


def test_a_table_of_no_series() -> None:
    data = payload_of(EMPTY_TABLE)
    u = decode_uplink(data)
    assert u.series == ()
    assert either_columns(data) == u
    assert encode_uplink(u) == data
    assert conforms(data)


@pytest.mark.parametrize(
    ("column", "value", "detail"),
    [
        (1, [0], "1 exps for 0"),
        (2, [0], "1 t0s for 0"),
        (3, [1], "1 periods for 0"),
        (4, [1], "1 counts for 0"),
        (5, [0], "1 firsts for 0"),
        (6, b"\x01", "1 widths for 0"),
        (7, b"\x00", "1 bytes of differences, expected 0"),
        (8, [0], "1 gaps for 0"),
    ],
)
def test_a_table_of_no_series_has_nothing_else(column: int, value: Any, detail: str) -> None:
    table = list(EMPTY_TABLE)
    table[column] = value
    data = payload_of(table)
    refused = either(data)
    assert refused == either_columns(data)
    assert isinstance(refused, tuple) and refused[0] == "length_mismatch"
    assert refused[1].startswith(detail)


# The refusals the CDDL states and pycddl 0.6 detects, with the table validated on its own
# (and its length checked by ``conforms``: pycddl passes an empty array for it).
TABLE_CONTRACT_REFUSES = [
    "empty table", "table of 8", "table of 10", "table as a map", "sids not an array",
    "sid float", "sid text", "exps null", "exp float", "t0 float", "period float",
    "count array", "first float", "signal id 0", "signal id 65536", "exp 10", "exp -10",
    "count 0", "widths as an array", "widths as text", "differences as an array",
    "differences null", "gaps as bytes", "gap float", "negative period", "negative gap",
]  # fmt: skip


@pytest.mark.parametrize("name", TABLE_CONTRACT_REFUSES)
def test_the_contract_refuses_the_table_too(name: str) -> None:
    (table,) = [r[1] for r in TABLE_REFUSALS if r[0] == name]
    assert not conforms(payload_of(table))


@pytest.mark.parametrize("exp", [-10, 10, 100])
def test_table_exp_is_checked_on_its_own(exp: int) -> None:
    """pycddl 0.6 lets any integer pass for a `table-exp` inside the whole payload; the table
    validated on its own is refused."""
    table = table_with(exps=[-1, exp, -6])
    with pytest.raises(pycddl.ValidationError):
        TABLE_SCHEMA.validate_cbor(cbor2.dumps(table))
    assert not conforms(payload_of(table))
    TABLE_SCHEMA.validate_cbor(cbor2.dumps(table_with(exps=[-9, 0, 9])))


# ---------------------------------------------------------------------------------------------
# Booleans are not integers


@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize(
    ("name", "index"),
    [(name, i) for name in COLUMNS[:6] for i in range(3)] + [("gaps", i) for i in range(3)],
)
def test_no_boolean_passes_for_an_integer(name: str, index: int, flag: bool) -> None:
    table = table_of(example())
    column = COLUMNS.index(name)
    table[column][index] = flag
    data = payload_of(table)
    refused = either(data)
    assert refused == either_columns(data)
    assert isinstance(refused, tuple) and refused[0] == "bad_series"
    assert fast_path(table) is None


@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize("name", COLUMNS)
def test_no_boolean_passes_for_a_column(name: str, flag: bool) -> None:
    data = payload_of(table_with(**{name: flag}))
    refused = either(data)
    assert refused == either_columns(data)
    assert isinstance(refused, tuple) and refused[0] == "bad_series"


@given(uplinks(), st.data())
def test_no_boolean_anywhere_in_a_table(u: Uplink, data: st.DataObject) -> None:
    table = table_of(u)
    spots = [(c, i) for c in (*range(6), 8) for i in range(len(table[c]))]
    if not spots:
        return
    column, i = data.draw(st.sampled_from(spots))
    table[column][i] = data.draw(st.booleans())
    refused = either(payload_of(table))
    assert isinstance(refused, tuple) and refused[0] == "bad_series"
    assert refused == either_columns(payload_of(table))


# ---------------------------------------------------------------------------------------------
# The unpacking of the differences, one series at a time


@given(valid_tables())
def test_unpack_one_signal_of_a_table(table: list[Any]) -> None:
    columns = payload._exact_table_columns(table)
    packed = columns[-1]
    every = materialised(packed)
    for sid in table[0]:
        assert materialised(packed, sid) == [s for s in every if s[0] == sid]
    for entry, first, count in zip(every, table[5], table[4], strict=True):
        mantissas = entry[3]
        assert (mantissas[0], len(mantissas), len(entry[2])) == (first, count, count)
        assert all(INT64_MIN <= m <= INT64_MAX for m in mantissas)


@given(
    st.sampled_from([1, 2, 4, 8]),
    st.integers(0, 2**16) | st.integers(0, 2**40),
    st.booleans(),
    st.data(),
)
def test_mantissas_near_the_bounds(
    width: int, distance: int, top: bool, data: st.DataObject
) -> None:
    """Differences that take a mantissa past int64 are refused, unless 8 bytes wide (modulo
    2**64); the rest decode to the sums."""
    first = INT64_MAX - distance if top else INT64_MIN + distance
    bound = 2 ** (8 * width - 1)
    own = data.draw(st.lists(st.integers(-bound, bound - 1), min_size=1, max_size=6))
    table = [[9], [0], [0], [1], [len(own) + 1], [first], bytes([width])]
    table += [struct.pack(f"<{len(own)}{CODES[width]}", *own), []]
    sums = list(accumulate(own, initial=first))
    if width == 8:
        sums = [payload._wrap64(m) for m in sums]
    result = either(payload_of(table))
    assert result == either_columns(payload_of(table))
    fast = fast_path(table)
    assert fast is None or fast == outcome(payload._exact_table_columns, table)
    if min(sums) < INT64_MIN or max(sums) > INT64_MAX:
        assert result == (
            "out_of_range",
            "series[0] (signal 9): a mantissa does not fit in 64 signed bits",
        )
    else:
        assert isinstance(result, Uplink)
        assert result.series[0].mantissas == tuple(sums)


@pytest.mark.parametrize("version", [True, 2.0, 1.0, 0, 3, "2", None])
def test_the_encoder_writes_no_version_the_decoder_refuses(version: object) -> None:
    with pytest.raises(ValueError, match="version"):
        encode_uplink(example(), version=version)  # type: ignore[arg-type]
