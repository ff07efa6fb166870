"""The compiled decoder: equal to cantools (Hypothesis), counting rules, truncated frames."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from can_dbc.capture import read_capture
from can_dbc.catalog import SignalType
from can_dbc.decoder import CompiledDecoder, DecoderStats, MessageDecoder, Value
from can_dbc.errors import MappingError
from can_dbc.loader import load_network, load_network_string
from can_dbc.mapping import MAPPING_FORMAT, SignalMapping, load_mapping, parse_mapping
from can_dbc.network import NETWORKS_DIR, load_car_network

DATA = Path(__file__).parent / "data"

CAR = load_car_network().mapping
TESLA = load_mapping(
    NETWORKS_DIR / "tesla_model3.yaml", network_paths=[DATA / "tesla_Model3CAN.dbc"]
)
SUBARU = load_mapping(
    NETWORKS_DIR / "subaru.yaml", network_paths=[DATA / "subaru_sample_can_spec.dbc"]
)
MUX = parse_mapping(
    {
        "format": MAPPING_FORMAT,
        "network": ["cantools_multiplex_2.dbc"],
        "signals": {
            "Vehicle.Speed": {"message": "Extended", "signal": "S5"},
            "Vehicle.Powertrain.Range": {"message": "Extended", "signal": "S3", "scale": 2},
            "Vehicle.Powertrain.Transmission.CurrentGear": {
                "message": "Shared",
                "signal": "S2",
                "multiplexer": 3,
            },
            "Vehicle.Exterior.AirTemperature": {"message": "ExtendedTypes", "signal": "S9"},
            "Vehicle.Cabin.DoorsLockState": {
                "message": "Normal",
                "signal": "S1",
                "values": {0: 0, -1: 1, 1: 2},
            },
        },
    },
    network=load_network(DATA / "cantools_multiplex_2.dbc", repair=False),
)
MAPPINGS = {"car": CAR, "tesla": TESLA, "subaru": SUBARU, "mux": MUX}


def _reference(mapping: SignalMapping, key: tuple[int, bool], data: bytes) -> list[Any]:
    """What cantools' Message.decode plus the mapping's rules give for a frame."""
    mapped_signals = mapping.frame(*key)
    message = mapping.database.get_message_by_name(mapped_signals[0].message)
    data = data[: message.length]
    options: dict[str, Any] = {"decode_choices": False, "allow_truncated": True}
    scaled = message.decode(data, scaling=True, **options)
    raw = message.decode(data, scaling=False, **options)
    out: list[tuple[int, Value]] = []
    for mapped in mapped_signals:
        if mapped.signal not in scaled:
            continue
        signal = message.get_signal_by_name(mapped.signal)
        if mapped.multiplexer is not None and raw[signal.multiplexer_signal] != mapped.multiplexer:
            continue
        if mapped.values is not None:
            if raw[mapped.signal] in mapped.values:
                out.append((mapped.id, mapped.values[raw[mapped.signal]]))
            continue
        value = scaled[mapped.signal]
        if mapped.has_transform:
            value = value * mapped.scale + mapped.offset
        if mapped.spec.type is SignalType.FLOAT:
            value = float(value)
        elif mapped.spec.type is SignalType.BOOL:
            value = 1 if value else 0
        else:
            value = round(value)
        out.append((mapped.id, value))
    return out


def _same(a: list[tuple[int, Value]] | None, b: list[tuple[int, Value]] | None) -> bool:
    """Equal, with NaN equal to NaN (IEEE float signals)."""
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(
        x[0] == y[0] and (x[1] == y[1] or (x[1] != x[1] and y[1] != y[1]))
        for x, y in zip(a, b, strict=True)
    )


@st.composite
def _frame(draw: st.DrawFn, mapping: SignalMapping) -> tuple[tuple[int, bool], bytes]:
    key = draw(st.sampled_from(sorted(mapping.frames())))
    message = mapping.database.get_message_by_name(mapping.frame(*key)[0].message)
    data = draw(st.binary(min_size=0, max_size=message.length + 2))
    return key, data


@pytest.mark.parametrize("name", sorted(MAPPINGS))
def test_bit_path_equals_cantools(name: str) -> None:
    mapping = MAPPINGS[name]
    fast = CompiledDecoder.for_mapping(mapping, skip_unchanged=False)
    slow = CompiledDecoder.for_mapping(mapping, skip_unchanged=False, bit_path=False)

    @settings(max_examples=300, deadline=None)
    @given(_frame(mapping))
    def check(frame: tuple[tuple[int, bool], bytes]) -> None:
        key, data = frame
        try:
            expected = _reference(mapping, key, data)
        except Exception:  # cantools refuses the frame: the decoder must count an error
            errors = slow.stats.errors
            assert slow.decode(*key, data) is None
            assert slow.stats.errors == errors + 1
            return
        assert _same(fast.decode(*key, data), expected)
        assert _same(slow.decode(*key, data), expected)

    check()
    assert fast.stats.errors == 0


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(sorted(MAPPINGS)),
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, 0x7FF), st.integers(0, 0x1FFFFFFF)),
            st.booleans(),
            st.binary(max_size=64),
            st.sampled_from(["data", "data", "data", "error", "remote"]),
        ),
        max_size=20,
    ),
)
def test_any_frame_never_raises_and_is_counted_once(
    name: str, frames: list[tuple[int, bool, bytes, str]]
) -> None:
    mapping = MAPPINGS[name]
    known = sorted(mapping.frames())
    decoder = CompiledDecoder.for_mapping(mapping)
    everything = MessageDecoder(mapping.database)
    for i, (drawn_id, drawn_extended, data, kind) in enumerate(frames):
        # Every other frame takes an id the decoder knows, so both paths are exercised.
        arbitration_id, extended = drawn_id, drawn_extended
        if i % 2 and known:
            arbitration_id, extended = known[drawn_id % len(known)]
        msg = can.Message(
            arbitration_id=arbitration_id,
            is_extended_id=extended,
            data=data if kind == "data" else b"",
            is_error_frame=kind == "error",
            is_remote_frame=kind == "remote",
            check=False,
        )
        decoder.feed(msg)
        everything.feed(msg)
    for stats in (decoder.stats, everything.stats):
        assert stats.frames == len(frames)
        assert stats.frames == (
            stats.decoded
            + stats.unchanged
            + stats.unknown_id
            + stats.errors
            + stats.error_frames
            + stats.remote_frames
        )
        assert stats.truncated <= stats.decoded
        assert sum(stats.error_reasons.values()) == stats.errors


def _car_frame(name: str) -> tuple[int, bool]:
    message = CAR.database.get_message_by_name(name)
    return message.frame_id, message.is_extended_frame


def test_unchanged_bytes_are_skipped_and_counted() -> None:
    decoder = CompiledDecoder.for_mapping(CAR)
    key = _car_frame("Dyn_Veh")
    data = bytes.fromhex("223d0000a00000")
    assert decoder.decode(*key, data) == [(1, 87.65), (4, -1.1999999999999993)]
    assert decoder.decode(*key, bytearray(data)) is None
    assert decoder.decode(*key, data[:6] + b"\x01") == [(1, 87.65), (4, -1.1999999999999993)]
    assert (decoder.stats.decoded, decoder.stats.unchanged) == (2, 1)
    decoder.reset()
    assert decoder.decode(*key, data) is not None
    assert decoder.stats == DecoderStats(frames=1, decoded=1)


def test_truncated_frames_decode_what_fits() -> None:
    decoder = CompiledDecoder.for_mapping(CAR, skip_unchanged=False)
    key = _car_frame("Dyn_Veh")
    # P060_vECU is in bytes 0-1 (Motorola), P066_aECU in byte 4: 2 bytes hold only the speed.
    assert decoder.decode(*key, bytes.fromhex("223d")) == [(1, 87.65)]
    assert decoder.decode(*key, b"") == []
    assert decoder.decode(*key, bytes.fromhex("223d0000a0")) == [
        (1, 87.65),
        (4, -1.1999999999999993),
    ]
    assert decoder.stats.truncated == 3
    assert decoder.stats.decoded == 3
    # Multiplexed: the multiplexer fits in one byte, the cabin temperature does not.
    tesla = CompiledDecoder.for_mapping(TESLA)
    assert tesla.decode(0x243, False, b"\x00") == []
    assert tesla.stats.truncated == 1
    # Longer than the DBC says: decoded from the first DBC-length bytes.
    assert decoder.decode(*key, bytes.fromhex("223d0000a00000ffff")) == decoder.decode(
        *key, bytes.fromhex("223d0000a00000")
    )


def test_unknown_ids_error_and_remote_frames_are_counted_apart() -> None:
    decoder = CompiledDecoder.for_mapping(CAR)
    frame_id, _extended = _car_frame("Dyn_Veh")
    assert decoder.decode(frame_id, True, bytes(7)) is None  # same id, extended: unknown
    assert decoder.decode(0x7FF, False, bytes(8)) is None
    assert decoder.feed(can.Message(is_error_frame=True)) is None
    assert decoder.feed(can.Message(arbitration_id=frame_id, is_remote_frame=True, dlc=7)) is None
    assert decoder.stats.as_dict() == {
        "frames": 4,
        "decoded": 0,
        "unchanged": 0,
        "unknown_id": 2,
        "errors": 0,
        "truncated": 0,
        "error_frames": 1,
        "remote_frames": 1,
        "error_reasons": {},
        "unmapped_values": {},
        "non_finite": {},
    }


def test_decode_errors_are_counted_with_their_reason() -> None:
    decoder = CompiledDecoder.for_mapping(MUX)
    shared = MUX.database.get_message_by_name("Shared")
    # S0 = 0 is no multiplexer value of "Shared": cantools refuses the frame.
    assert decoder.decode(shared.frame_id, True, bytes(8)) is None
    assert decoder.stats.errors == 1
    [(reason, count)] = decoder.stats.error_reasons.items()
    assert reason.startswith("Shared: expected multiplexer id")
    assert count == 1
    # The same bytes again are decoded again (an error is not remembered as "last bytes").
    assert decoder.decode(shared.frame_id, True, bytes(8)) is None
    assert decoder.stats.errors == 2


def test_multiplexer_narrowing_and_value_maps() -> None:
    decoder = CompiledDecoder.for_mapping(MUX, skip_unchanged=False)
    shared = MUX.database.get_message_by_name("Shared")
    gear = MUX.by_name("Vehicle.Powertrain.Transmission.CurrentGear").id
    # S2 is sent with S0 in 2..5; the mapping takes it only when S0 = 3.
    assert decoder.decode(shared.frame_id, True, bytes([3, 0xFE]) + bytes(6)) == [(gear, -2)]
    assert decoder.decode(shared.frame_id, True, bytes([2, 0xFE]) + bytes(6)) == []
    normal = MUX.database.get_message_by_name("Normal")
    lock = MUX.by_name("Vehicle.Cabin.DoorsLockState").id
    assert decoder.decode(normal.frame_id, True, bytes([0xF0]) + bytes(7)) == [(lock, 1)]
    assert decoder.decode(normal.frame_id, True, bytes([0x50]) + bytes(7)) == []
    assert decoder.stats.unmapped_values == {"Vehicle.Cabin.DoorsLockState": 1}


def test_tesla_capture_through_the_box_decoder() -> None:
    frames, _stats = read_capture(DATA / "tesla_candump_Manual_SOC_DogMode_CabinTemp.log")
    decoder = CompiledDecoder.for_mapping(TESLA)
    ranges: dict[str, list[Value]] = {}
    for msg in frames:
        for sid, value in decoder.feed(msg) or ():
            name = decoder.names[sid]
            low, high = ranges.setdefault(name, [value, value])
            ranges[name] = [min(low, value), max(high, value)]
    stats = decoder.stats
    assert stats.frames == 12138
    assert stats.errors == stats.truncated == 0
    assert stats.decoded + stats.unchanged + stats.unknown_id == 12138
    assert ranges["Vehicle.Speed"] == [0.0, pytest.approx(287.6)]
    assert ranges["Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"] == [0.0, 127.0]
    assert ranges["Vehicle.Cabin.HVAC.AmbientAirTemperature"] == [18.0, 25.0]
    assert ranges["Vehicle.Powertrain.Transmission.CurrentGear"] == [-1, 127]


def test_message_decoder_decodes_everything_by_dbc_name() -> None:
    decoder = MessageDecoder(CAR.database, decode_choices=True)
    result = decoder.decode(0xF6, False, b"\x02")
    assert result is not None
    message, signals = result
    assert message.name == "BSI_Ignition"
    assert signals == {"IgnitionState": "On"}
    only = MessageDecoder(CAR.database, messages=["HU_Privacy"], skip_unchanged=True)
    assert only.decode(0xF6, False, b"\x02") is None
    assert only.decode(0x5F0, False, b"\x01") is not None
    assert only.decode(0x5F0, False, b"\x01") is None
    assert (only.stats.unknown_id, only.stats.unchanged) == (1, 1)
    with pytest.raises(MappingError, match="NoSuch"):
        MessageDecoder(CAR.database, messages=["NoSuch"])


def test_an_arxml_network_decodes_through_a_mapping() -> None:
    network = load_network(DATA / "tcusim_minimal_system.arxml", repair=False)
    assert network.report.clean
    [message] = network.database.messages
    assert (message.name, message.frame_id, message.length, message.cycle_time) == (
        "VehicleStatus", 0x123, 3, 100,
    )  # fmt: skip
    mapping = parse_mapping(
        {
            "format": MAPPING_FORMAT,
            "network": ["tcusim_minimal_system.arxml"],
            "signals": {
                "Vehicle.Speed": {"message": "VehicleStatus", "signal": "VehicleSpeed"},
                "Vehicle.Exterior.AirTemperature": {
                    "message": "VehicleStatus",
                    "signal": "OutsideTemperature",
                },
            },
        },
        network=network,
    )
    decoder = CompiledDecoder.for_mapping(mapping)
    # 12345 * 0.01 km/h little-endian, then 0x6E * 0.5 - 40 = 15 degC.
    frame = can.Message(arbitration_id=0x123, is_extended_id=False, data=b"\x39\x30\x6e")
    assert dict(decoder.feed(frame) or []) == {1: pytest.approx(123.45), 19: 15.0}
    everything = MessageDecoder(network.database).feed(frame)
    assert everything is not None
    assert everything[1] == {"VehicleSpeed": pytest.approx(123.45), "OutsideTemperature": 15.0}
    assert decoder.decode(0x123, True, b"\x39\x30\x6e") is None  # an extended 0x123 is not it


FLOAT_DBC = """VERSION ""
BS_:
BU_: ECU
BO_ 256 Gearbox: 8 ECU
 SG_ GearFloat : 0|32@1- (1,0) [0|0] "" Vector__XXX
 SG_ SpeedFloat : 32|32@1- (1,0) [0|0] "km/h" Vector__XXX
SIG_VALTYPE_ 256 GearFloat : 1;
SIG_VALTYPE_ 256 SpeedFloat : 1;
"""


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_float_for_an_integer_signal_is_counted_not_fatal(bad: float) -> None:
    network = load_network_string(FLOAT_DBC, "dbc")
    mapping = parse_mapping(
        {
            "format": MAPPING_FORMAT,
            "network": ["float.dbc"],
            "signals": {
                "Vehicle.Powertrain.Transmission.CurrentGear": {
                    "message": "Gearbox",
                    "signal": "GearFloat",
                },
                "Vehicle.Speed": {"message": "Gearbox", "signal": "SpeedFloat"},
            },
        },
        network=network,
    )
    decoder = CompiledDecoder.for_mapping(mapping)
    data = struct.pack("<ff", bad, 42.5)
    assert decoder.decode(256, False, data) == [(1, 42.5)]  # the gear is left out
    assert decoder.stats.non_finite == {"Vehicle.Powertrain.Transmission.CurrentGear": 1}
    assert decoder.decode(256, False, struct.pack("<ff", 3.0, bad)) is not None  # floats pass
