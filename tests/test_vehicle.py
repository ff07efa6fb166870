"""The simulated car: every ECU, counters and checksums, the codec, the sim bus and line, load."""

from __future__ import annotations

import itertools
import math
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from can_dbc.catalog import SignalType
from can_dbc.decoder import CompiledDecoder, MessageDecoder
from can_dbc.encoder import FrameEncoder, signal_limits
from can_dbc.errors import EncodeError
from can_dbc.loader import load_network
from can_dbc.mapping import MAPPING_FORMAT, MappedSignal, parse_mapping
from can_dbc.network import COMMAND_FEEDBACK, load_car_network
from firmware_sim.clock import SimScheduler
from firmware_sim.config import TcuConfig
from firmware_sim.gnss import GnssReader, GnssSource
from firmware_sim.nmea import Fix
from firmware_sim.sim.drive import city_drive, commute
from firmware_sim.sim.physics import Energy, VehicleState
from firmware_sim.sim.session import SimulatedCar
from firmware_sim.sim.vehicle import (
    BITRATE,
    CHECKSUMS,
    FrameCodec,
    SimBus,
    SimSerial,
    SimVehicle,
    checksum_signals,
    frame_bits,
    rolling_counters,
)

CAR = load_car_network()
DATABASE = CAR.database
MAPPING = CAR.mapping
ENCODER = FrameEncoder(DATABASE, MAPPING)
START_MS = 1_767_340_800_000
DATA = Path(__file__).parent / "data"

# The messages a powertrain has no ECU for: the traction battery frame of a diesel; the engine
# frames and the fuel gauge frame of an electric car.
ABSENT = {
    Energy.FUEL: {"BMS_Charging"},
    Energy.ELECTRIC: {"Dyn_CMM", "Dat_CMM", "HS2_DAT7_BSI_612"},
    Energy.HYBRID: set(),
}


class Car:
    """A simulated car on a sim bus, and a second bus listening to it."""

    def __init__(self, energy: Energy = Energy.FUEL, bus_load: float = 0.0, minutes: float = 10):
        self.scheduler = SimScheduler(START_MS)
        self.channel = f"test-vehicle-{id(self)}"
        self.bus = SimBus(self.channel)
        self.tap = SimBus(self.channel)
        self.vehicle = SimVehicle(
            MAPPING,
            VehicleState(energy),
            city_drive(minutes),
            self.bus,
            self.scheduler,
            bus_load=bus_load,
        )
        self.vehicle.start()

    def run(self, seconds: float) -> list[can.Message]:
        """Run the car, and return the frames it sent meanwhile."""
        self.scheduler.run_for(int(seconds * 1000))
        frames = []
        while (msg := self.tap.recv(0)) is not None:
            frames.append(msg)
        return frames

    def close(self) -> None:
        self.bus.shutdown()
        self.tap.shutdown()


@pytest.fixture
def car() -> Iterator[Car]:
    c = Car()
    try:
        yield c
    finally:
        c.close()


def _by_message(frames: list[can.Message]) -> dict[str, list[can.Message]]:
    out: dict[str, list[can.Message]] = defaultdict(list)
    for msg in frames:
        out[DATABASE.get_message_by_frame_id(msg.arbitration_id).name].append(msg)
    return out


# -- every ECU ------------------------------------------------------------------------------


@pytest.mark.parametrize("energy", list(Energy))
def test_every_cyclic_message_is_sent_at_its_cycle_time(energy: Energy) -> None:
    car = Car(energy)
    try:
        frames = car.run(10)  # the first tick sends every message once, then each cycle
    finally:
        car.close()
    sent = Counter(DATABASE.get_message_by_frame_id(m.arbitration_id).name for m in frames)
    cyclic = {m.name: m.cycle_time for m in DATABASE.messages if m.cycle_time}
    assert set(sent) == set(cyclic) - ABSENT[energy]
    for name, count in sent.items():
        assert count == 10_000 // cyclic[name] + 1, name
    assert "TCU_CmdRequest" not in sent  # an event frame: the box sends it
    assert car.vehicle.frames_sent == len(frames)


def test_frames_carry_the_simulated_time_in_id_order(car: Car) -> None:
    frames = car.run(1)
    first_tick = [m for m in frames if m.timestamp == START_MS / 1000]
    assert [m.arbitration_id for m in first_tick] == sorted(m.arbitration_id for m in first_tick)
    assert {round(m.timestamp * 1000) % 10 for m in frames} == {START_MS % 10}
    assert max(m.timestamp for m in frames) == (START_MS + 1000) / 1000


def test_the_command_feedback_frame_says_no_command(car: Car) -> None:
    decoder = MessageDecoder(DATABASE)
    frames = _by_message(car.run(2))[COMMAND_FEEDBACK]
    assert len(frames) == 21
    for msg in frames:
        decoded = decoder.feed(msg)
        assert decoded is not None
        assert decoded[1] == {"FbCounter": 0, "FbAction": 0, "FbResult": 0}


def test_unmapped_signals_keep_their_start_value(car: Car) -> None:
    decoder = MessageDecoder(DATABASE)
    mapped = {(m.message, m.signal) for m in MAPPING.signals}
    frames = car.run(3)
    seen = 0
    for msg in frames:
        decoded = decoder.feed(msg)
        assert decoded is not None
        message, values = decoded
        counters = {s.name for s in rolling_counters(message) + checksum_signals(message)}
        for signal in message.signals:
            if (message.name, signal.name) in mapped or signal.name in counters:
                continue
            initial = signal.raw_initial if signal.raw_initial is not None else 0
            assert values[signal.name] == pytest.approx(initial * signal.scale + signal.offset)
            seen += 1
    assert seen > 1000


# -- counters and checksums -----------------------------------------------------------------


def test_the_network_counters_and_checksums_are_found() -> None:
    counters = {(m.name, s.name) for m in DATABASE.messages for s in rolling_counters(m)}
    checksums = {(m.name, s.name) for m in DATABASE.messages for s in checksum_signals(m)}
    assert counters == {
        ("HS2_DAT_MDD_CMD_452", "COUNTER"),
        ("Dat_CLIM", "P231_Com_ctBSIFrm"),
    }
    assert checksums == {
        ("HS2_DAT_MDD_CMD_452", "CHECKSUM"),
        ("HS2_DAT_MDD_CMD_452", "CHECKSUM_CONS_RVV_LVV2"),
        ("Dat_CLIM", "P232_Com_stXVVChkSum"),
    }
    codec = FrameCodec(ENCODER, CAR.message("HS2_DAT_MDD_CMD_452"), [], MAPPING)
    assert codec.checksums == ("CHECKSUM_CONS_RVV_LVV2",)
    assert codec.held_checksums == ("CHECKSUM",)


def test_the_psa_counter_names_of_the_full_network_are_found() -> None:
    psa = load_network(
        Path(__file__).parents[1] / "can_dbc" / "networks" / "psa_aee2010_r3.dbc", repair=True
    ).database
    names = {s.name for m in psa.messages for s in rolling_counters(m)}
    for expected in (
        "COUNTER",
        "P231_Com_ctBSIFrm",
        "P335_Com_ctDyn5CMMCntr",
        "DYN_ACC_PROCESS_COUNTER",
        "PROCESS_COUNTER_4B_ACC2",
        "CPT_PROCESS_4B_UC_FREIN",
        "P230_Com_ctGbxCnt3",
        "P157_Com_ctESP",  # by its comment: "Check counter"
    ):
        assert expected in names
    assert "P326_Com_ctTmrRst" not in names  # a count of timer resets, not of frames


@pytest.mark.parametrize("energy", list(Energy))
def test_counters_advance_by_one_per_frame_and_wrap(energy: Energy) -> None:
    car = Car(energy)
    try:
        frames = _by_message(car.run(5))
    finally:
        car.close()
    decoder = MessageDecoder(DATABASE)
    checked = 0
    for message in DATABASE.messages:
        for counter in rolling_counters(message):
            sent = frames[message.name]
            assert message.cycle_time is not None
            assert len(sent) == 5000 // message.cycle_time + 1
            values = []
            for msg in sent:
                decoded = decoder.feed(msg)
                assert decoded is not None
                values.append(decoded[1][counter.name])
            assert values[0] == 0
            assert all(b == (a + 1) % 16 for a, b in itertools.pairwise(values))
            assert 15 in values and values.count(0) > 1  # it wrapped
            checked += 1
    assert checked == 2


def test_checksums_computed_or_held_at_their_start_value(car: Car) -> None:
    frames = _by_message(car.run(3))
    decoder = MessageDecoder(DATABASE)
    for msg in frames["HS2_DAT_MDD_CMD_452"]:
        decoded = decoder.feed(msg)
        assert decoded is not None
        values = decoded[1]
        setpoint = int(values["SPEED_SETPOINT"])
        parity = ((setpoint >> 4).bit_count() & 1) << 1 | (setpoint & 0xF).bit_count() & 1
        assert values["CHECKSUM_CONS_RVV_LVV2"] == parity
        assert values["CHECKSUM"] == 0  # no algorithm in the network: the start value
    for msg in frames["Dat_CLIM"]:
        decoded = decoder.feed(msg)
        assert decoded is not None
        assert decoded[1]["P232_Com_stXVVChkSum"] == 0


def test_the_setpoint_parity_follows_the_setpoint() -> None:
    """The parity checksum of a frame with another setpoint (as opendbc's PSA port has it)."""
    message = CAR.message("HS2_DAT_MDD_CMD_452")
    codec = FrameCodec(ENCODER, message, [], MAPPING)
    for setpoint, parity in ((57, 0), (61, 1), (64, 2), (72, 3), (255, 0)):
        data = ENCODER.encode_signals(message.name, {"SPEED_SETPOINT": setpoint})
        algorithm = CHECKSUMS[message.name, "CHECKSUM_CONS_RVV_LVV2"]
        assert algorithm(message, data) == parity
    assert codec.encode(()) == ENCODER.encode_signals(message.name, {})


# -- the codec: the same bytes as the reference encoder --------------------------------------


def _value(mapped: MappedSignal) -> st.SearchStrategy[Any]:
    spec = mapped.spec
    if mapped.values is not None:
        return st.sampled_from(sorted(set(mapped.values.values())))
    if spec.type is SignalType.BOOL:
        return st.sampled_from([0, 1, True, False])
    if spec.type is SignalType.ENUM:
        return st.sampled_from(sorted(spec.enum))
    signal = DATABASE.get_message_by_name(mapped.message).get_signal_by_name(mapped.signal)
    lo, hi = signal_limits(signal)
    span = 1e6 if lo is None or hi is None else (hi - lo) * abs(mapped.scale) * 2 + 1
    if spec.type is SignalType.INT:
        return st.integers(-int(span), int(span))
    return st.floats(-span, span, allow_nan=False) | st.integers(-int(span), int(span))


@st.composite
def _frame_values(draw: st.DrawFn) -> tuple[str, list[str], list[Any]]:
    message = draw(st.sampled_from(sorted({m.message for m in MAPPING.signals})))
    carried = [m for m in MAPPING.signals if m.message == message]
    chosen = draw(st.lists(st.sampled_from(carried), unique_by=lambda m: m.name))
    return message, [m.name for m in chosen], [draw(_value(m)) for m in chosen]


@settings(max_examples=400, deadline=None)
@given(_frame_values())
def test_the_codec_gives_the_reference_encoders_bytes(
    case: tuple[str, list[str], list[Any]],
) -> None:
    message, names, values = case
    codec = FrameCodec(ENCODER, CAR.message(message), names, MAPPING)
    assert codec.fast
    assert codec.encode(values) == ENCODER.encode(message, dict(zip(names, values, strict=True)))


@pytest.mark.parametrize("bad", [math.nan, math.inf, 7])
def test_a_value_the_codec_cannot_place_goes_to_the_reference_encoder(bad: float) -> None:
    name = "Vehicle.Cabin.DoorsLockState"  # an enum of 0, 1, 2
    codec = FrameCodec(ENCODER, CAR.message("BSI_Body"), [name], MAPPING)
    with pytest.raises(EncodeError):
        codec.encode([bad])


def test_the_codec_of_multiplexed_frames_uses_the_reference_encoder() -> None:
    mux = parse_mapping(
        {
            "format": MAPPING_FORMAT,
            "network": ["cantools_multiplex_2.dbc"],
            "signals": {
                "Vehicle.Powertrain.Transmission.CurrentGear": {
                    "message": "Shared",
                    "signal": "S2",
                    "multiplexer": 3,
                },
            },
        },
        network=load_network(DATA / "cantools_multiplex_2.dbc", repair=False),
    )
    encoder = FrameEncoder(mux.database, mux)
    name = "Vehicle.Powertrain.Transmission.CurrentGear"
    codec = FrameCodec(encoder, mux.database.get_message_by_name("Shared"), [name], mux)
    assert not codec.fast
    for gear in (0, 3, 9):
        assert codec.encode([gear]) == encoder.encode("Shared", {name: gear})


# -- what the box reads ---------------------------------------------------------------------


@pytest.mark.parametrize("energy", list(Energy))
def test_the_box_decodes_the_cars_values(energy: Energy) -> None:
    car = Car(energy)
    decoder = CompiledDecoder(DATABASE, MAPPING, skip_unchanged=False)
    try:
        car.run(200)  # on the road
        frames = car.run(1)
    finally:
        car.close()
    latest: dict[int, float] = {}
    for msg in frames:
        latest.update(decoder.feed(msg) or [])
    values = car.vehicle.state.values
    assert decoder.stats.errors == 0 and not decoder.stats.unmapped_values
    for mapped in MAPPING.signals:
        if mapped.name not in values:
            continue
        signal = CAR.message(mapped.message).get_signal_by_name(mapped.signal)
        resolution = abs(signal.scale * mapped.scale)
        # Values of the last second: they change a little from frame to frame.
        slack = {"Vehicle.Speed": 2.0, "Vehicle.Powertrain.CombustionEngine.Speed": 120.0}
        tolerance = resolution / 2 + slack.get(mapped.name, 0.05) + 1e-9
        lo, hi = signal_limits(signal)
        expected = float(values[mapped.name])
        if lo is not None and hi is not None:
            ends = sorted((lo * mapped.scale + mapped.offset, hi * mapped.scale + mapped.offset))
            expected = min(max(expected, ends[0]), ends[1])
        assert abs(latest[mapped.id] - expected) <= tolerance, mapped.name


# -- bus load -------------------------------------------------------------------------------


def test_frame_bits() -> None:
    assert frame_bits(8) == 123
    assert BITRATE / frame_bits(8) == pytest.approx(4065, abs=1)
    assert frame_bits(0) == 51  # 47, and half of 8 stuff bits
    assert frame_bits(8, extended=True) == 67 + 64 + (54 + 64 - 1) // 4 / 2


@pytest.mark.parametrize("load", [0.3, 0.5, 0.6])
def test_bus_load_fills_the_bus_with_ids_the_network_does_not_use(load: float) -> None:
    car = Car(bus_load=load)
    try:
        frames = car.run(10)
    finally:
        car.close()
    network_ids = {m.frame_id for m in DATABASE.messages}
    filler = [m for m in frames if m.arbitration_id not in network_ids]
    assert filler and set(car.vehicle.filler_ids).isdisjoint(network_ids)
    assert car.vehicle.filler_frames_sent == len(filler)
    bits = sum(frame_bits(len(m.data), m.is_extended_id) for m in frames)
    assert bits / 10 / BITRATE == pytest.approx(load, abs=0.005)
    assert 0.05 < car.vehicle.network_load < 0.08
    decoder = CompiledDecoder(DATABASE, MAPPING)
    for msg in frames:
        decoder.feed(msg)
    assert decoder.stats.unknown_id == len(filler) + 101  # and the command feedback frames


def test_bus_load_below_the_networks_own_adds_nothing(car: Car) -> None:
    car.vehicle.bus_load = 0.01
    assert car.vehicle.filler_frames_sent == 0
    car.run(2)
    assert car.vehicle.filler_frames_sent == 0
    with pytest.raises(ValueError, match="fraction"):
        car.vehicle.bus_load = 1.0


# -- the sim bus ----------------------------------------------------------------------------


@pytest.fixture
def buses() -> Iterator[tuple[SimBus, SimBus, SimBus]]:
    channel = f"test-simbus-{id(object())}"
    a, b, c = SimBus(channel), SimBus(channel), SimBus(channel, receive_own_messages=True)
    try:
        yield a, b, c
    finally:
        for bus in (a, b, c):
            bus.shutdown()


def _msg(frame_id: int) -> can.Message:
    return can.Message(arbitration_id=frame_id, is_extended_id=False, data=b"\x01")


def test_the_sim_bus_delivers_to_the_others(buses: tuple[SimBus, SimBus, SimBus]) -> None:
    a, b, c = buses
    a.send(_msg(1))
    c.send_batch([_msg(2), _msg(3)])
    assert a.pending == 2 and b.pending == 3 and c.pending == 3
    assert [m.arbitration_id for m in iter(lambda: b.recv(0), None)] == [1, 2, 3]
    assert [m.arbitration_id for m in iter(lambda: a.recv(0), None)] == [2, 3]
    assert b.recv(0) is None


def test_the_sim_bus_filters(buses: tuple[SimBus, SimBus, SimBus]) -> None:
    a, b, _c = buses
    b.set_filters([{"can_id": 0x10, "can_mask": 0x7F0}])
    a.send_batch([_msg(0x1), _msg(0x12), _msg(0x20), _msg(0x1F)])
    assert [m.arbitration_id for m in iter(lambda: b.recv(0), None)] == [0x12, 0x1F]


def test_the_sim_bus_waits_for_another_thread(buses: tuple[SimBus, SimBus, SimBus]) -> None:
    a, b, _c = buses
    assert b.recv(0.01) is None
    sender = threading.Thread(target=a.send, args=(_msg(5),))
    sender.start()
    received = b.recv(5.0)
    sender.join()
    assert received is not None and received.arbitration_id == 5


def test_a_shut_down_sim_bus_leaves_its_channel(buses: tuple[SimBus, SimBus, SimBus]) -> None:
    a, b, c = buses
    b.shutdown()
    a.send(_msg(1))
    assert c.pending == 1
    with pytest.raises(can.CanOperationError):
        b.send(_msg(2))
    with pytest.raises(can.CanOperationError):
        b.recv(0)
    b.shutdown()  # twice is fine


def test_the_car_also_runs_on_python_cans_virtual_bus() -> None:
    channel = f"test-virtual-{id(object())}"
    bus = can.Bus(interface="virtual", channel=channel)
    tap = can.Bus(interface="virtual", channel=channel)
    scheduler = SimScheduler(START_MS)
    try:
        vehicle = SimVehicle(MAPPING, VehicleState(), commute(5), bus, scheduler)
        vehicle.start()
        scheduler.run_for(1000)
        frames = list(iter(lambda: tap.recv(0), None))
    finally:
        bus.shutdown()
        tap.shutdown()
    assert len(frames) == vehicle.frames_sent == 22 + 286  # every message at 0, then a second


def test_sim_bus_type_hints() -> None:
    bus: can.BusABC = SimBus("test-hints")
    try:
        assert isinstance(bus, can.BusABC)
        assert "test-hints" in bus.channel_info
    finally:
        bus.shutdown()


def test_after_a_silence_the_ecus_keep_their_phase(car: Car) -> None:
    car.run(1)
    car.vehicle.silent = True
    assert car.run(1.234) == []
    car.vehicle.silent = False
    frames = _by_message(car.run(2))
    for name, sent in frames.items():
        cycle = CAR.message(name).cycle_time
        assert cycle is not None
        offsets = [round(m.timestamp * 1000) - START_MS for m in sent]
        assert offsets[0] == 2240  # the first tick after the silence: each ECU is overdue
        assert offsets[1] == (2240 // cycle + 1) * cycle  # then on its old phase
        assert offsets[1:] == list(range(offsets[1], offsets[-1] + 1, cycle)), name


# -- the GNSS line --------------------------------------------------------------------------


def test_the_sim_serial_line_loops_back_without_blocking() -> None:
    line = SimSerial(buffer_size=10)
    assert line.write(b"$GNRMC") == 6 and line.in_waiting == 6
    assert line.read(4) == b"$GNR" and line.read(100) == b"MC"
    assert line.read(1) == b""  # timeout 0: nothing there, at once
    assert line.write(b"0123456789abc") == 13  # the reader is away: the rest is lost
    assert line.overruns == 3 and line.read(100) == b"0123456789"
    line.write(b"xyz")
    line.reset_input_buffer()
    assert line.in_waiting == 0 and line.out_waiting == 0
    line.close()
    with pytest.raises(serial.PortNotOpenError):
        line.write(b"x")


def test_gnss_fixes_cross_the_sim_serial_line() -> None:
    line = SimSerial()
    source, reader = GnssSource(line), GnssReader(line)
    fix = Fix.at_time_ms(START_MS, lat=48.9, lon=2.1, alt=40.0, speed_kmh=50.0, heading=90.0)
    source.write_fix(fix)
    source.write_fix(Fix.at_time_ms(START_MS + 1000, lat=48.9, lon=2.1, alt=40.0))
    fixes = reader.poll()
    assert [f.lat for f in fixes] == [pytest.approx(48.9)] * 2
    assert reader.stats.bad_checksum == 0


def test_a_long_power_cut_neither_blocks_the_car_nor_feeds_the_box_old_fixes(
    tmp_path: Path,
) -> None:
    car = SimulatedCar(
        TcuConfig.from_mapping({"vin": "VR3UHZKXZLT000201"}),
        city_drive(10),
        SimScheduler(START_MS),
        data_dir=tmp_path,
        broker_url=None,
    )
    try:
        car.start()
        car.run_for(60)
        fixes = car.box.stats.fixes
        assert fixes >= 59
        car.power_cut()
        car.run_for(120)  # 120 fixes: far more than the line holds
        assert car.vehicle.fixes_sent == 181
        car.reboot()
        car.run_for(10)
        assert 9 <= car.box.stats.fixes <= 11  # this boot's fixes only
        assert car.box.gnss is not None and car.box.gnss.stats.malformed == 0
    finally:
        car.close(0)
