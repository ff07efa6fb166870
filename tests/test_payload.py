"""The uplink payload: round trips, the CDDL contract, and every way a payload is refused.

The properties of the codec run for both format versions; the wire shape and the refusals of
the series are those of version 1 here (version 2's are in ``test_payload_v2.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from contract import conforms
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from can_dbc.catalog import default_catalog
from firmware_sim.errors import PayloadError
from firmware_sim.payload import (
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    MAX_PAYLOAD_BYTES,
    MAX_SAMPLES,
    Privacy,
    Series,
    Trigger,
    Uplink,
    _check_series,
    _decode_series,
    decode_uplink,
    decode_uplink_columns,
    encode_uplink,
    quantize,
    unpack_series,
    uplink_to_json,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
VIN = "VR3UHZKXZHT123456"
VERSIONS = pytest.mark.parametrize("version", FORMAT_VERSIONS)

# ---------------------------------------------------------------------------------------------
# Strategies

vins = st.from_regex(r"[A-HJ-NPR-Z0-9]{17}", fullmatch=True)
uint64 = st.integers(0, 2**64 - 1)
int64 = st.integers(INT64_MIN, INT64_MAX)
mantissas_st = st.one_of(
    st.integers(-30, 30),
    st.integers(-(2**20), 2**20),
    int64,
    st.sampled_from([INT64_MIN, INT64_MAX]),
)


@st.composite
def series_st(draw: st.DrawFn, signal_id: int) -> Series:
    n = draw(st.integers(1, 12))
    exp = draw(st.integers(-9, 9))
    mantissas = tuple(draw(st.lists(mantissas_st, min_size=n, max_size=n)))
    t0 = draw(st.integers(-(2**40), 2**40) | st.sampled_from([INT64_MIN, 0]))
    if draw(st.booleans()):
        period = draw(st.integers(1, 3_600_000))
        times = tuple(t0 + i * period for i in range(n))
    else:
        gaps = draw(st.lists(st.integers(0, 120_000), min_size=n - 1, max_size=n - 1))
        times = (t0, *(t0 + sum(gaps[: i + 1]) for i in range(n - 1)))
    assume(times[-1] <= INT64_MAX)
    return Series(signal_id, exp, times, mantissas)


@st.composite
def uplinks(draw: st.DrawFn) -> Uplink:
    ids = draw(st.lists(st.integers(1, 65535), max_size=8, unique=True))
    return Uplink(
        vin=draw(vins),
        seq=draw(uint64),
        base_time_ms=draw(uint64 | st.integers(1_500_000_000_000, 1_900_000_000_000)),
        trigger=draw(st.sampled_from(Trigger)),
        privacy=draw(st.sampled_from(Privacy)),
        series=tuple(draw(series_st(sid)) for sid in ids),
        boot=draw(st.just(0) | uint64),
        evicted=draw(st.just(0) | uint64),
    )


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=7)
        | st.dictionaries(st.integers(-2, 10) | st.text(max_size=3), inner, max_size=9)
    ),
    max_leaves=30,
)


def example() -> Uplink:
    return Uplink(
        vin=VIN,
        seq=42,
        base_time_ms=1_795_334_400_000,
        trigger=Trigger.DOOR,
        privacy=Privacy.GEOLOCATION,
        series=(
            Series(1, -1, (0, 1000, 2000, 3000), (0, 12, 30, 31)),
            Series(6, 0, (5, 17, 17, 900), (1, 0, 1, 0)),
            Series(40, -6, (3,), (48_856_000,)),
        ),
        boot=3,
    )


def doc_of(u: Uplink, version: int) -> dict[int, Any]:
    doc: dict[int, Any] = cbor2.loads(encode_uplink(u, version=version))
    return doc


def nodes(doc: dict[Any, Any]) -> list[tuple[Any, Any]]:
    """``(parent, key)`` of the nodes of an encoder's document that a mutation may change: the
    map's values, each series (version 1) or column (version 2), and the elements of their
    arrays (not the bytes of version 2's byte strings: ``test_payload_v2.py`` changes those)."""
    parents: list[tuple[Any, Any]] = [(doc, k) for k in doc]
    arrays: list[Any] = []
    if doc[0] == 1:
        for series in doc[6]:
            arrays += [series, *series[4:]]
    else:
        arrays += [doc[6], *(column for column in doc[6] if type(column) is list)]
    for array in arrays:
        parents += [(array, i) for i in range(len(array))]
    return parents


def reason_of(data: bytes) -> str:
    with pytest.raises(PayloadError) as info:
        decode_uplink(data)
    return info.value.reason


# ---------------------------------------------------------------------------------------------
# Round trips and the contract


@VERSIONS
@given(u=uplinks())
def test_round_trip_and_contract(u: Uplink, version: int) -> None:
    data = encode_uplink(u, version=version)
    assert cbor2.loads(data)[0] == version
    assert decode_uplink(data) == u
    assert conforms(data)
    assert encode_uplink(decode_uplink(data), version=version) == data


def test_version_2_is_written_by_default() -> None:
    assert FORMAT_VERSION == 2
    assert FORMAT_VERSIONS == (1, 2)
    assert encode_uplink(example()) == encode_uplink(example(), version=2)
    with pytest.raises(ValueError, match="version"):
        encode_uplink(example(), version=3)


def test_example_wire_shape() -> None:
    doc = doc_of(example(), version=1)
    assert doc == {
        0: 1,
        1: VIN,
        2: 42,
        3: 1_795_334_400_000,
        4: 3,
        5: 1,
        6: [
            [1, -1, 0, 1000, [0, 12, 18, 1]],  # regular, delta-coded
            [6, 0, 5, 0, [1, -1, 1, -1], [12, 0, 883]],  # irregular, with gaps
            [40, -6, 3, 1, [48_856_000]],  # one sample: regular with period 1
        ],
        7: 3,  # boot; evicted (0) is left out
    }


@pytest.mark.parametrize(
    ("version", "growth"),
    [
        (1, 540 + 1),  # the length header of the values grows by 1
        (2, 540 + 2),  # that of the differences by 1, and the count by 1
    ],
)
def test_slowly_changing_signal_costs_one_byte_per_sample(version: int, growth: int) -> None:
    def size(n: int) -> int:
        mantissas = tuple(200 + (i % 7) for i in range(n))
        series = (Series(1, -1, tuple(range(0, n * 1000, 1000)), mantissas),)
        u = Uplink(VIN, 1, 0, Trigger.PERIODIC, Privacy.NONE, series)
        return len(encode_uplink(u, version=version))

    assert size(61) - size(60) == 1
    assert size(600) - size(60) == growth


@VERSIONS
@given(u=uplinks(), data=st.data())
def test_mutated_documents_are_refused_or_conform(
    u: Uplink, data: st.DataObject, version: int
) -> None:
    """Replace one node of a valid document by anything: a refusal, or a conforming payload."""
    doc = doc_of(u, version)
    parent, key = data.draw(st.sampled_from(nodes(doc)))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[key] = data.draw(cbor_values)
    elif action == "delete":
        del parent[key]
    elif isinstance(parent, dict):
        parent[data.draw(st.integers(-3, 12))] = data.draw(cbor_values)
    else:
        parent.append(data.draw(cbor_values))
    payload = cbor2.dumps(doc)
    try:
        decoded = decode_uplink(payload)
    except PayloadError:
        return
    assert conforms(payload)
    for written in FORMAT_VERSIONS:
        assert decode_uplink(encode_uplink(decoded, version=written)) == decoded


@given(cbor_values)
def test_arbitrary_cbor_is_refused_or_conforms(value: object) -> None:
    payload = cbor2.dumps(value)
    try:
        decode_uplink(payload)
    except PayloadError:
        return
    assert conforms(payload)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_payload_error(data: bytes) -> None:
    try:
        decode_uplink(data)
    except PayloadError:
        return
    assert conforms(data)


@VERSIONS
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(u=uplinks(), data=st.data())
def test_corrupted_payloads_are_refused_or_conform(
    u: Uplink, data: st.DataObject, version: int
) -> None:
    payload = bytearray(encode_uplink(u, version=version))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(payload)))
    corrupted = bytes(payload[:cut])
    try:
        decode_uplink(corrupted)
    except PayloadError:
        return
    assert conforms(corrupted)


near_valid_series = st.tuples(
    st.integers(-1, 65537) | st.booleans(),
    st.integers(-11, 11) | st.floats(-10, 10),
    st.integers(INT64_MIN - 1, INT64_MAX + 1) | st.sampled_from([0, INT64_MAX, True]),
    st.integers(-2, 3) | st.sampled_from([2**64 - 1, 1.0]),
    st.lists(st.integers(-(2**64), 2**64 - 1) | st.sampled_from([True, 0.5]), max_size=4),
    st.none() | st.lists(st.integers(-2, 5) | st.just(1.5), max_size=4),
).map(lambda t: list(t[:5]) if t[5] is None else list(t))


@given(near_valid_series | cbor_values)
def test_fast_path_agrees_with_the_full_check(raw: Any) -> None:
    def outcome(fn: Callable[[Any, int], Series]) -> object:
        try:
            return fn(raw, 0)
        except PayloadError as exc:
            return exc.reason

    assert outcome(_decode_series) == outcome(_check_series)


# ---------------------------------------------------------------------------------------------
# Refusals, one reason at a time (the series of version 1)


def payload_with(changes: dict[Any, Any], version: int = 1) -> bytes:
    """The example's document with keys replaced, or removed when the value is ``DELETE``."""
    doc: dict[Any, Any] = doc_of(example(), version)
    for key, value in changes.items():
        if value is DELETE:
            del doc[key]
        else:
            doc[key] = value
    return cbor2.dumps(doc)


DELETE = object()
GOOD = [1, 0, 0, 1000, [5, 1]]

EXAMPLE_V1 = encode_uplink(example(), version=1)
EXAMPLE_V2 = encode_uplink(example(), version=2)

REFUSALS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "not_cbor"),
    ("truncated", EXAMPLE_V1[:-1], "not_cbor"),
    ("truncated v2", EXAMPLE_V2[:-1], "not_cbor"),
    ("break code", b"\xff", "not_cbor"),
    ("invalid utf-8", b"\xa1\x01\x62\xff\xfe", "not_cbor"),
    ("duplicate map key", b"\xa2\x00\x01\x00\x01", "not_cbor"),
    ("too deep", b"\x81" * 20 + b"\x00", "not_cbor"),
    ("trailing byte", EXAMPLE_V1 + b"\x00", "trailing_bytes"),
    ("trailing byte v2", EXAMPLE_V2 + b"\x00", "trailing_bytes"),
    ("two payloads", EXAMPLE_V1 * 2, "trailing_bytes"),
    ("two payloads v2", EXAMPLE_V2 * 2, "trailing_bytes"),
    ("array", cbor2.dumps([1, VIN]), "not_map"),
    ("integer", cbor2.dumps(7), "not_map"),
    ("text key", payload_with({"vin": VIN}), "unknown_key"),
    ("key 9", payload_with({9: 1}), "unknown_key"),
    ("bool key", cbor2.dumps({True: 1}), "unknown_key"),
    ("float key", cbor2.dumps({0.0: 1}), "unknown_key"),
    ("no series", payload_with({6: DELETE}), "missing_key"),
    ("no vin", payload_with({1: DELETE}), "missing_key"),
    ("version 0", payload_with({0: 0}), "bad_version"),
    ("version 3", payload_with({0: 3}), "bad_version"),
    ("version 3 with a table", payload_with({0: 3}, version=2), "bad_version"),
    ("version true", payload_with({0: True}), "bad_version"),
    ("version 1.0", payload_with({0: 1.0}), "bad_version"),
    ("short vin", payload_with({1: VIN[:16]}), "bad_field"),
    ("vin with O", payload_with({1: VIN[:16] + "O"}), "bad_field"),
    ("lower-case vin", payload_with({1: VIN.lower()}), "bad_field"),
    ("vin as bytes", payload_with({1: VIN.encode()}), "bad_field"),
    ("negative seq", payload_with({2: -1}), "bad_field"),
    ("seq true", payload_with({2: True}), "bad_field"),
    ("seq float", payload_with({2: 1.0}), "bad_field"),
    ("seq as bignum", payload_with({2: cbor2.CBORTag(2, b"\x01")}), "bad_field"),
    ("base time as date", payload_with({3: cbor2.CBORTag(1, 1_700_000_000)}), "bad_field"),
    ("self-described", b"\xd9\xd9\xf7" + EXAMPLE_V1, "bad_field"),
    ("self-described v2", b"\xd9\xd9\xf7" + EXAMPLE_V2, "bad_field"),
    ("unknown tag", payload_with({2: cbor2.CBORTag(99, 1)}), "bad_field"),
    ("trigger 9", payload_with({4: 9}), "bad_field"),
    ("privacy 3", payload_with({5: 3}), "bad_field"),
    ("privacy none", payload_with({5: None}), "bad_field"),
    ("boot 0 written", payload_with({7: 0}), "bad_field"),
    ("evicted negative", payload_with({8: -4}), "bad_field"),
    ("series not an array", payload_with({6: {}}), "bad_field"),
    ("version 2 with series", payload_with({0: 2}), "bad_field"),
    ("version 1 with a table", payload_with({0: 1}, version=2), "bad_series"),
    ("series item not an array", payload_with({6: [5]}), "bad_series"),
    ("series of 4", payload_with({6: [GOOD[:4]]}), "bad_series"),
    ("series of 7", payload_with({6: [[*GOOD, [1], 0]]}), "bad_series"),
    ("signal id 0", payload_with({6: [[0, *GOOD[1:]]]}), "bad_series"),
    ("signal id 65536", payload_with({6: [[65536, *GOOD[1:]]]}), "bad_series"),
    ("signal id true", payload_with({6: [[True, *GOOD[1:]]]}), "bad_series"),
    ("exp 10", payload_with({6: [[1, 10, *GOOD[2:]]]}), "bad_series"),
    ("exp -10", payload_with({6: [[1, -10, *GOOD[2:]]]}), "bad_series"),
    ("t0 float", payload_with({6: [[1, 0, 0.0, 1000, [5]]]}), "bad_series"),
    ("period float", payload_with({6: [[1, 0, 0, 1e3, [5]]]}), "bad_series"),
    ("period 0 without gaps", payload_with({6: [[1, 0, 0, 0, [5, 1]]]}), "bad_series"),
    ("gaps with a period", payload_with({6: [[1, 0, 0, 1000, [5, 1], [1000]]]}), "bad_series"),
    ("no values", payload_with({6: [[1, 0, 0, 1000, []]]}), "bad_series"),
    ("value true", payload_with({6: [[1, 0, 0, 1000, [5, True]]]}), "bad_series"),
    ("value float", payload_with({6: [[1, 0, 0, 1000, [5.5]]]}), "bad_series"),
    ("gap float", payload_with({6: [[1, 0, 0, 0, [5, 1], [1.0]]]}), "bad_series"),
    ("gaps null", payload_with({6: [[1, 0, 0, 1, [5], None]]}), "bad_series"),
    ("one sample irregular", payload_with({6: [[1, 0, 0, 0, [5], []]]}), "bad_series"),
    ("negative period", payload_with({6: [[1, 0, 0, -1000, [5, 1]]]}), "bad_times"),
    ("negative gap", payload_with({6: [[1, 0, 0, 0, [5, 1, 1], [10, -1]]]}), "bad_times"),
    ("missing gap", payload_with({6: [[1, 0, 0, 0, [5, 1, 1], [10]]]}), "length_mismatch"),
    ("extra gap", payload_with({6: [[1, 0, 0, 0, [5, 1], [10, 10]]]}), "length_mismatch"),
    ("same signal twice", payload_with({6: [GOOD, GOOD]}), "duplicate_signal"),
    ("mantissa past int64", payload_with({6: [[1, 0, 0, 1, [INT64_MAX, 1]]]}), "out_of_range"),
    ("mantissa below int64", payload_with({6: [[1, 0, 0, 1, [INT64_MIN, -1]]]}), "out_of_range"),
    ("time past int64", payload_with({6: [[1, 0, INT64_MAX, 1, [0, 0]]]}), "out_of_range"),
    ("gap past int64", payload_with({6: [[1, 0, INT64_MAX - 1, 0, [0, 0], [2]]]}), "out_of_range"),
    ("t0 below int64", payload_with({6: [[1, 0, INT64_MIN - 1, 1, [0]]]}), "out_of_range"),
    ("over 256 KiB", b"\x00" * (MAX_PAYLOAD_BYTES + 1), "too_large"),
    (
        "too many samples",
        payload_with(
            {
                6: [
                    [1, 0, 0, 1, [0] * (MAX_SAMPLES // 2 + 1)],
                    [2, 0, 0, 1, [0] * (MAX_SAMPLES // 2)],
                ]
            }
        ),
        "too_large",
    ),
]


@pytest.mark.parametrize(
    ("data", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refusal(data: bytes, reason: str) -> None:
    assert reason_of(data) == reason


# Refusals the CDDL grammar expresses and pycddl 0.6 detects (with the checks of
# ``contract.conforms``): the contract is not vacuous. (Rules CDDL cannot state, and series
# details pycddl 0.6 does not check, are left out.)
CONTRACT_REFUSES = [
    "array", "text key", "key 9", "no series", "no vin", "version 0", "version 3",
    "version 3 with a table", "version 2 with series", "version 1 with a table", "version true",
    "version 1.0", "short vin", "vin with O", "lower-case vin", "vin as bytes", "negative seq",
    "seq true", "seq float", "self-described", "trigger 9", "privacy 3", "privacy none",
    "boot 0 written", "evicted negative", "series not an array", "signal id 0",
    "signal id 65536", "exp 10", "exp -10", "negative period",
]  # fmt: skip


@pytest.mark.parametrize("name", CONTRACT_REFUSES)
def test_the_contract_refuses_it_too(name: str) -> None:
    (data,) = [r[1] for r in REFUSALS if r[0] == name]
    assert not conforms(data)


# The reasons a payload's series can be refused for (both formats).
SERIES_REASONS = {
    "bad_field",
    "bad_series",
    "bad_times",
    "length_mismatch",
    "duplicate_signal",
    "out_of_range",
    "too_large",
}


def test_the_refusals_cover_every_reason() -> None:
    reasons = {r[2] for r in REFUSALS}
    assert reasons == {
        "not_cbor",
        "trailing_bytes",
        "not_map",
        "unknown_key",
        "missing_key",
        "bad_version",
        *SERIES_REASONS,
    }


@VERSIONS
def test_no_cbor_tag_is_accepted(version: int) -> None:
    for tag in (*range(300), 1004, 43000, 55799, 65535, 2**32, 2**64 - 1):
        for value in (42, b"\x2a", "x", [42]):
            payload = payload_with({2: cbor2.CBORTag(tag, value)}, version)
            assert reason_of(payload) == "bad_field", tag


@VERSIONS
def test_non_bytes_input_is_refused(version: int) -> None:
    with pytest.raises(PayloadError) as info:
        decode_uplink("a0")  # type: ignore[arg-type]
    assert info.value.reason == "not_cbor"
    data = encode_uplink(example(), version=version)
    assert decode_uplink(memoryview(data)) == example()
    assert decode_uplink(bytearray(data)) == example()


@VERSIONS
def test_a_full_size_payload_still_decodes(version: int) -> None:
    n = MAX_SAMPLES // 4
    series = tuple(
        Series(sid, 0, tuple(range(n)), tuple(i % 3 for i in range(n))) for sid in (1, 2, 3, 4)
    )
    u = Uplink(VIN, 1, 0, Trigger.PERIODIC, Privacy.NONE, series)
    data = encode_uplink(u, version=version)
    assert decode_uplink(data) == u
    assert decode_uplink_columns(data).uplink() == u


# ---------------------------------------------------------------------------------------------
# The encoder refuses what it cannot write


def with_series(*series: Series) -> Uplink:
    return Uplink(VIN, 1, 0, Trigger.PERIODIC, Privacy.NONE, series)


ENCODER_REFUSALS: list[tuple[str, Uplink, str]] = [
    ("bad vin", Uplink("SHORT", 1, 0, Trigger.PERIODIC, Privacy.NONE, ()), "bad_field"),
    ("negative seq", Uplink(VIN, -1, 0, Trigger.PERIODIC, Privacy.NONE, ()), "bad_field"),
    ("seq over 64 bits", Uplink(VIN, 2**64, 0, Trigger.PERIODIC, Privacy.NONE, ()), "bad_field"),
    ("negative base", Uplink(VIN, 1, -5, Trigger.PERIODIC, Privacy.NONE, ()), "bad_field"),
    ("trigger 9", Uplink(VIN, 1, 0, 9, Privacy.NONE, ()), "bad_field"),  # type: ignore[arg-type]
    ("privacy 3", Uplink(VIN, 1, 0, Trigger.CRASH, 3, ()), "bad_field"),  # type: ignore[arg-type]
    ("negative boot", Uplink(VIN, 1, 0, Trigger.CRASH, Privacy.FULL, (), boot=-1), "bad_field"),
    ("empty series", with_series(Series(1, 0, (), ())), "bad_series"),
    ("signal id 0", with_series(Series(0, 0, (0,), (1,))), "bad_series"),
    ("exp 12", with_series(Series(1, 12, (0,), (1,))), "bad_series"),
    ("bool mantissa", with_series(Series(1, 0, (0,), (True,))), "bad_series"),
    ("float mantissa", with_series(Series(1, 0, (0,), (1.5,))), "bad_series"),  # type: ignore[arg-type]
    ("lengths differ", with_series(Series(1, 0, (0, 1), (1,))), "length_mismatch"),
    ("time goes back", with_series(Series(1, 0, (5, 4), (1, 1))), "bad_times"),
    ("mantissa past int64", with_series(Series(1, 0, (0,), (2**63,))), "out_of_range"),
    ("time past int64", with_series(Series(1, 0, (2**63,), (1,))), "out_of_range"),
    (
        "same signal twice",
        with_series(Series(1, 0, (0,), (1,)), Series(1, 0, (0,), (1,))),
        "duplicate_signal",
    ),
    (
        "too many samples",
        with_series(Series(1, 0, (0,) * (MAX_SAMPLES + 1), (0,) * (MAX_SAMPLES + 1))),
        "too_large",
    ),
    (
        "over 256 KiB",
        with_series(
            *(
                Series(sid, 0, tuple(range(1000)), tuple(range(0, 1000 * 2**30, 2**30)))
                for sid in range(1, 100)
            )
        ),
        "too_large",
    ),
]


@VERSIONS
@pytest.mark.parametrize(
    ("u", "reason"), [r[1:] for r in ENCODER_REFUSALS], ids=[r[0] for r in ENCODER_REFUSALS]
)
def test_encoder_refusal(u: Uplink, reason: str, version: int) -> None:
    with pytest.raises(PayloadError) as info:
        encode_uplink(u, version=version)
    assert info.value.reason == reason


# ---------------------------------------------------------------------------------------------
# Values, quantisation, JSON


@pytest.mark.parametrize(
    ("value", "exp", "mantissa"),
    [
        (12.3, -1, 123),
        (48.856613, -6, 48_856_613),
        (-0.05, -2, -5),
        (1234.0, 0, 1234),
        (1250, 2, 12),  # ties to even
        (1350, 2, 14),
        (2**62 + 1, 0, 2**62 + 1),  # integers stay exact
        (True, 0, 1),
    ],
)
def test_quantize(value: float, exp: int, mantissa: int) -> None:
    assert quantize(value, exp) == mantissa


@pytest.mark.parametrize(
    ("value", "reason"), [(math.nan, "bad_value"), (math.inf, "bad_value"), (1e30, "out_of_range")]
)
def test_quantize_refuses(value: float, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        quantize(value, -1)
    assert info.value.reason == reason


@given(st.floats(-1e6, 1e6), st.integers(-6, 3))
def test_quantize_is_within_half_a_step(value: float, exp: int) -> None:
    m = quantize(value, exp)
    (back,) = Series(1, exp, (0,), (m,)).values()
    assert abs(back - value) <= 10.0**exp / 2 * (1 + 1e-9) + 1e-9


def test_values_keep_integers_when_exp_is_not_negative() -> None:
    assert Series(1, 2, (0, 1), (3, -4)).values() == [300, -400]
    assert all(type(v) is int for v in Series(1, 0, (0,), (7,)).values())
    assert Series(1, -1, (0, 1), (123, -5)).values() == [12.3, -0.5]


def test_uplink_to_json() -> None:
    data = uplink_to_json(example(), default_catalog())
    assert json.loads(json.dumps(data)) == data
    assert data["base_time"] == "2026-11-22T08:00:00.000Z"
    assert (data["trigger"], data["privacy"], data["boot"]) == ("door", "Geolocation", 3)
    speed = data["series"][0]
    assert speed["name"] == "Vehicle.Speed" and speed["unit"] == "km/h"
    assert speed["samples"] == [[0, 0.0], [1000, 1.2], [2000, 3.0], [3000, 3.1]]
    assert "name" not in uplink_to_json(example())["series"][0]


# ---------------------------------------------------------------------------------------------
# The columnar decoder: what decode_uplink decodes, or the same refusal


def either(data: object) -> object:
    """What ``decode_uplink`` makes of ``data``: the uplink, or ``(reason, detail)``."""
    try:
        return decode_uplink(data)  # type: ignore[arg-type]
    except PayloadError as exc:
        return (exc.reason, exc.detail)


def either_columns(data: object) -> object:
    """The same of ``decode_uplink_columns``, its columns checked against its series."""
    try:
        columns = decode_uplink_columns(data)  # type: ignore[arg-type]
    except PayloadError as exc:
        return (exc.reason, exc.detail)
    u = columns.uplink()
    assert columns.signal_ids == tuple(s.signal_id for s in u.series)
    assert columns.exps == tuple(s.exp for s in u.series)
    assert columns.counts == tuple(len(s.times) for s in u.series)
    assert columns.t0s == tuple(s.times[0] for s in u.series)
    assert columns.t_lasts == tuple(s.times[-1] for s in u.series)
    assert columns.n_samples == sum(columns.counts)
    for s, period in zip(u.series, columns.periods, strict=True):
        assert period == 0 or s.times == tuple(range(s.times[0], s.times[-1] + 1, period))
    for s in u.series:  # one signal at a time, as a reader of one signal does
        ((sid, exp, times, mantissas),) = unpack_series(columns.packed, s.signal_id)
        assert (sid, exp, tuple(times), tuple(mantissas)) == (
            s.signal_id,
            s.exp,
            s.times,
            s.mantissas,
        )
    assert list(unpack_series(columns.packed, 0)) == []
    return u


@VERSIONS
@given(u=uplinks())
def test_columns_round_trip(u: Uplink, version: int) -> None:
    assert either_columns(encode_uplink(u, version=version)) == u


@VERSIONS
@given(u=uplinks(), data=st.data())
def test_columns_agree_on_mutated_documents(u: Uplink, data: st.DataObject, version: int) -> None:
    doc = doc_of(u, version)
    parents = nodes(doc)
    for _ in range(data.draw(st.integers(1, 2))):
        parent, key = data.draw(st.sampled_from(parents))
        if key in (parent if isinstance(parent, dict) else range(len(parent))):
            parent[key] = data.draw(cbor_values | int64 | st.sampled_from([True, 2**32, 0]))
    payload = cbor2.dumps(doc)
    assert either_columns(payload) == either(payload)


@given(cbor_values)
def test_columns_agree_on_arbitrary_cbor(value: object) -> None:
    payload = cbor2.dumps(value)
    assert either_columns(payload) == either(payload)


@VERSIONS
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(u=uplinks(), data=st.data())
def test_columns_agree_on_corrupted_payloads(u: Uplink, data: st.DataObject, version: int) -> None:
    payload = bytearray(encode_uplink(u, version=version))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    corrupted = bytes(payload[: data.draw(st.integers(1, len(payload)))])
    assert either_columns(corrupted) == either(corrupted)


@pytest.mark.parametrize("data", [r[1] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_columns_refuse_the_same(data: bytes) -> None:
    assert either_columns(data) == either(data)


def series_payload(*series: list[Any]) -> bytes:
    return payload_with({6: list(series)})


@pytest.mark.parametrize(
    "series",
    [
        [[1, 0, 0, 1, [2**31, 2**31, -(2**32)]]],  # values beyond 32 bits: 64-bit mantissas
        [[1, 0, 0, 1, [INT64_MAX, -(2**64) + 1]]],  # a difference beyond 64 bits
        [[1, 0, 0, 1, [INT64_MAX, 1]]],  # a mantissa beyond 64 bits
        [[1, 0, 0, 1, [1, True]]],  # a boolean among the values
        [[1, True, 0, 1, [1]]],  # a boolean exp
        [[1, 0, 0, 1, [1, 1.0]]],  # a float
        [[1, 0, 0, 1, [1, "1"]]],  # a text
        [[1, 0, 0, 1, [1, [1]]]],  # an array
        [[70_000, 0, 0, 1, [1]]],  # a signal id beyond 16 bits
        [[1, 0, 0, 2**64 - 1, [5]]],  # a period beyond 64 signed bits, one sample
        [[1, 0, INT64_MIN, 2**64 - 1, [5, 6]]],  # two samples, from the first to the last ms
        [[1, 0, INT64_MIN, 2**64 - 1, [5, 6, 7]]],  # three: beyond
        [[1, 0, 10, 0, [1, 2, 3], [0, 5]], [2, 0, 0, 7, [4]], [3, 0, 1, 0, [1, 1], [9]]],
        [[1, 0, 10, 0, [1, 2, 3], [0, -5]]],  # times going back
        [[1, 0, 10, 3, [1, 2, 3], [0, 5]]],  # gaps with a period
        [[1, 0, 0, [1], [1]]],  # an array for the period
        [[1, 0, [0], 2, [1, 2]]],  # an array for the first time
        [[1, 0, "0", 2, [1, 2]]],  # a text for the first time
        [[1, 0, 0.5, 2, [1, 2]]],  # a float for the first time
        [[1, 0, 0, 1, [1]], [1, 0, 0, 1, [2]]],  # one signal twice
    ],
)
def test_columns_agree_at_the_edges(series: list[Any]) -> None:
    payload = series_payload(*series)
    assert either_columns(payload) == either(payload)
