"""The frame encoder: every mapped car signal round trips through the decoder; clamping; faults."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from can_dbc.catalog import SignalType
from can_dbc.decoder import CompiledDecoder, MessageDecoder
from can_dbc.encoder import FrameEncoder, signal_limits
from can_dbc.errors import EncodeError
from can_dbc.mapping import MappedSignal
from can_dbc.network import COMMAND_FEEDBACK, COMMAND_REQUEST, CommandAction, load_car_network
from firmware_sim.sim.physics import Energy, VehicleState

CAR = load_car_network()
MAPPING = CAR.mapping
ENCODER = FrameEncoder(CAR.database, MAPPING)


def _catalog_range(mapped: MappedSignal) -> tuple[float, float]:
    """The catalog values the DBC signal can carry (its DBC range, else its bits)."""
    signal = CAR.message(mapped.message).get_signal_by_name(mapped.signal)
    lo, hi = signal_limits(signal)
    if lo is None or hi is None:
        bits = signal.length - (1 if signal.is_signed else 0)
        raw_lo = -(1 << bits) if signal.is_signed else 0
        raw_hi = (1 << bits) - 1
        lo, hi = sorted(
            (raw_lo * signal.scale + signal.offset, raw_hi * signal.scale + signal.offset)
        )
    ends = sorted((lo * mapped.scale + mapped.offset, hi * mapped.scale + mapped.offset))
    return ends[0], ends[1]


def _values(mapped: MappedSignal) -> st.SearchStrategy[float]:
    spec = mapped.spec
    if mapped.values is not None:
        return st.sampled_from(sorted(set(mapped.values.values())))
    if spec.type is SignalType.BOOL:
        return st.sampled_from([0, 1])
    if spec.type is SignalType.ENUM:
        return st.sampled_from(sorted(spec.enum))
    lo, hi = _catalog_range(mapped)
    if spec.type is SignalType.INT:
        return st.integers(math.ceil(lo), math.floor(hi))
    return st.floats(lo, hi, allow_nan=False)


def _resolution(mapped: MappedSignal) -> float:
    signal = CAR.message(mapped.message).get_signal_by_name(mapped.signal)
    return abs(signal.scale * mapped.scale)


@pytest.mark.parametrize("name", [m.name for m in MAPPING.signals])
def test_every_mapped_car_signal_round_trips(name: str) -> None:
    mapped = MAPPING.by_name(name)
    decoder = CompiledDecoder(CAR.database, MAPPING, skip_unchanged=False)
    message = CAR.message(mapped.message)
    tolerance = _resolution(mapped) / 2 + 1e-9
    if mapped.spec.type is not SignalType.FLOAT:
        tolerance = max(tolerance, 0.5)

    @settings(max_examples=60, deadline=None)
    @given(_values(mapped))
    def check(value: float) -> None:
        data = ENCODER.encode(mapped.message, {name: value})
        assert len(data) == message.length
        decoded = dict(decoder.decode(message.frame_id, message.is_extended_frame, data) or [])
        assert abs(decoded[mapped.id] - value) <= tolerance

    check()


def test_values_beyond_the_dbc_range_are_clamped() -> None:
    decoder = CompiledDecoder(CAR.database, MAPPING, skip_unchanged=False)

    def through(name: str, value: float) -> float:
        mapped = MAPPING.by_name(name)
        message = CAR.message(mapped.message)
        data = ENCODER.encode(mapped.message, {name: value})
        return dict(decoder.decode(message.frame_id, False, data) or [])[mapped.id]

    assert through("Vehicle.Speed", 1000.0) == 655.34  # DBC [0|655.34]
    assert through("Vehicle.Speed", -5.0) == 0.0
    # P418_Com_uBattRaw: [5|25.47] V, which 12.6 V sits well inside.
    assert through("Vehicle.LowVoltageBattery.CurrentVoltage", 99.0) == 25.47
    assert through("Vehicle.LowVoltageBattery.CurrentVoltage", 12.6) == pytest.approx(12.6)
    assert through("Vehicle.LowVoltageBattery.CurrentVoltage", 0.0) == 5.0
    assert through("Vehicle.LowVoltageBattery.StateOfCharge", 102.0) == 100.0
    # [0|0] is "no range given": the crash bit still carries 1.
    assert through("Vehicle.Safety.CrashDetected", 1) == 1
    # P152_Gearbx_stGear: DBC range [0|15], 4 bits.
    assert through("Vehicle.Powertrain.Transmission.CurrentGear", 99) == 15


def test_signals_not_given_take_their_initial_value() -> None:
    decoder = MessageDecoder(CAR.database)
    for name, expected in [
        ("BSI_CabinTemp", {"CabinTemp": 20.0}),
        ("Dyn_Veh", {"P060_vECU": 0, "P062_sECU": 0, "P066_aECU": -14}),
    ]:
        message = CAR.message(name)
        result = decoder.decode(message.frame_id, False, ENCODER.encode(name, {}))
        assert result is not None
        assert result[1] == expected


def test_command_frames_by_dbc_signal_names() -> None:
    data = ENCODER.encode_signals(
        COMMAND_REQUEST, {"CmdCounter": 7, "CmdAction": CommandAction.HORN, "CmdParam0": 2}
    )
    assert data == bytes([7, 2, 2, 0, 0, 0, 0, 0])
    assert ENCODER.encode_signals(COMMAND_REQUEST, {"CmdCounter": 7, "CmdAction": "Horn",
                                                    "CmdParam0": 2}) == data  # fmt: skip
    feedback = ENCODER.encode_signals(
        COMMAND_FEEDBACK, {"FbCounter": 7, "FbAction": 2, "FbResult": "Done"}
    )
    decoded = MessageDecoder(CAR.database, decode_choices=True).decode(0x2EC, False, feedback)
    assert decoded is not None
    assert decoded[1] == {"FbCounter": 7, "FbAction": "Horn", "FbResult": "Done"}
    raw = ENCODER.encode_signals("BSI_Range", {"Range": 1234}, scaling=False)
    assert raw == (1234).to_bytes(2, "little")
    msg = ENCODER.can_message(COMMAND_REQUEST, data, timestamp=1.5)
    assert (msg.arbitration_id, msg.is_extended_id, bytes(msg.data)) == (0x2E8, False, data)


@pytest.mark.parametrize(
    ("call", "fault"),
    [
        (lambda: ENCODER.encode("NoSuch", {}), "no message 'NoSuch'"),
        (lambda: ENCODER.encode("Dat_BSI", {"Vehicle.Speed": 1.0}), "carried by Dyn_Veh"),
        (lambda: ENCODER.encode("Dyn_Veh", {"Vehicle.Speeed": 1.0}), "it is not mapped"),
        (lambda: ENCODER.encode("Dyn_Veh", {"Vehicle.Speed": math.nan}), "not a finite number"),
        (lambda: ENCODER.encode("Dyn_Veh", {"Vehicle.Speed": "x"}), "not a finite number"),  # type: ignore[dict-item]
        (lambda: ENCODER.encode("BSI_Body", {"Vehicle.Cabin.DoorsLockState": 5}), "not one of"),
        (lambda: ENCODER.encode_signals("BSI_Body", {"Nope": 1}), "no signal 'Nope'"),
        (lambda: ENCODER.encode_signals(COMMAND_REQUEST, {"CmdAction": "Dance"}), "no choice"),
        (lambda: ENCODER.encode_signals("BSI_Range", {"Range": 1.5}, scaling=False),
         "not an integer"),
        (lambda: ENCODER.carrier("Vehicle.CurrentLocation.Latitude"), "is not mapped"),
    ],
)  # fmt: skip
def test_faults_are_encode_errors(call: object, fault: str) -> None:
    with pytest.raises(EncodeError, match=fault):
        call()  # type: ignore[operator]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([m.name for m in CAR.database.messages]),
    st.dictionaries(
        st.text(max_size=8), st.one_of(st.floats(), st.integers(), st.text()), max_size=3
    ),
)
def test_any_signal_values_encode_or_raise_encode_error(
    message: str, values: dict[str, object]
) -> None:
    signals = [s.name for s in CAR.message(message).signals]
    # Half the time the names are the message's own, so values reach the clamping and packing.
    named = {signals[i % len(signals)]: v for i, v in enumerate(values.values())}
    for attempt in (values, named):
        try:
            data = ENCODER.encode_signals(message, attempt)
        except EncodeError:
            continue
        assert len(data) == CAR.message(message).length


@pytest.mark.parametrize("energy", list(Energy))
def test_the_sim_car_frames_carry_nothing_made_up(energy: Energy) -> None:
    """Each frame the simulated car sends (the signals it has; the rest at their start value
    or 0) decodes to the car's values, and a mapped signal the car lacks reads 0 (off)."""
    values = VehicleState(energy).values
    decoder = CompiledDecoder(CAR.database, MAPPING, skip_unchanged=False)
    for (frame_id, extended), carried in MAPPING.frames().items():
        present = {m.name: values[m.name] for m in carried if m.name in values}
        if not present:
            continue  # the car does not send it
        data = ENCODER.encode(carried[0].message, present)
        decoded = dict(decoder.decode(frame_id, extended, data) or [])
        for mapped in carried:
            if mapped.name in present:
                tolerance = _resolution(mapped) / 2 + 1e-9
                assert abs(decoded[mapped.id] - present[mapped.name]) <= tolerance, mapped.name
            else:
                assert mapped.spec.type in (SignalType.BOOL, SignalType.ENUM), mapped.name
                assert decoded.get(mapped.id, 0) == 0, mapped.name
