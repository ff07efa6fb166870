"""Recordings of a run: candump logs read back frame for frame, MQTT traffic from Mosquitto."""

from __future__ import annotations

import base64
import json
import math
import socket
import time
from collections.abc import Callable
from pathlib import Path

import can
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from can_dbc.capture import read_capture
from can_dbc.network import load_car_network
from firmware_sim.clock import SimScheduler
from firmware_sim.errors import ConfigError, LifecycleError, UplinkError
from firmware_sim.scenario.recording import CandumpRecorder, MqttRecorder, candump_line
from firmware_sim.sim.drive import city_drive
from firmware_sim.sim.physics import VehicleState
from firmware_sim.sim.vehicle import SimVehicle

WAIT = 10.0
START_MS = 1_767_598_200_000  # 2026-01-05T07:30:00Z
N_BURST = 20_000
FD_LENGTHS = [*range(9), 12, 16, 20, 24, 32, 48, 64]


@st.composite
def frames(draw: st.DrawFn) -> can.Message:
    """Any frame candump can hold: standard or extended, classic, remote or CAN FD."""
    extended = draw(st.booleans())
    can_id = draw(st.integers(0, 0x1FFFFFFF if extended else 0x7FF))
    kind = draw(st.sampled_from(["classic", "remote", "fd"]))
    timestamp = draw(st.integers(0, 4_000_000_000_000_000)) / 1_000_000  # µs resolution
    msg = can.Message(
        timestamp=timestamp, arbitration_id=can_id, is_extended_id=extended,
        is_rx=draw(st.booleans()),
    )  # fmt: skip
    if kind == "remote":
        msg.is_remote_frame = True
        msg.dlc = draw(st.integers(0, 8))
    elif kind == "fd":
        size = draw(st.sampled_from(FD_LENGTHS))
        msg.is_fd = True
        msg.bitrate_switch = draw(st.booleans())
        msg.error_state_indicator = draw(st.booleans())
        msg.data = bytearray(draw(st.binary(min_size=size, max_size=size)))
    else:
        msg.data = bytearray(draw(st.binary(max_size=8)))
    msg.dlc = msg.dlc if msg.is_remote_frame else len(msg.data)
    return msg


def assert_same_frames(written: list[can.Message], read: list[can.Message]) -> None:
    assert len(read) == len(written)
    for w, r in zip(written, read, strict=True):
        assert math.isclose(r.timestamp, w.timestamp, abs_tol=2e-6), (w, r)
        assert (r.arbitration_id, r.is_extended_id) == (w.arbitration_id, w.is_extended_id)
        assert (r.is_remote_frame, r.is_fd, r.is_rx) == (w.is_remote_frame, w.is_fd, w.is_rx)
        assert r.channel == "vcan0"
        if w.is_remote_frame:
            assert r.dlc == w.dlc
        else:
            assert bytes(r.data) == bytes(w.data)
        if w.is_fd:
            assert r.bitrate_switch == w.bitrate_switch
            assert r.error_state_indicator == w.error_state_indicator


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(written=st.lists(frames(), max_size=40), suffix=st.sampled_from([".log", ".log.gz"]))
def test_a_candump_log_reads_back_frame_for_frame(
    tmp_path: Path, written: list[can.Message], suffix: str
) -> None:
    path = tmp_path / f"frames{suffix}"
    with CandumpRecorder(path) as recorder:
        for msg in written:
            recorder(msg)
    assert recorder.frames == len(written)
    read, stats = read_capture(path)
    assert stats.bad_lines == 0
    assert_same_frames(written, read)
    with can.LogReader(path) as reader:
        assert_same_frames(written, list(reader))


def test_lines_follow_candump_l() -> None:
    ts = START_MS / 1000
    classic = can.Message(timestamp=ts, arbitration_id=0xC9, is_extended_id=False, data=b"\x1f@")
    ext = can.Message(timestamp=ts, arbitration_id=0x18FEF100, data=b"", is_rx=False)
    fd = can.Message(
        timestamp=ts, arbitration_id=0x123, is_extended_id=False, is_fd=True,
        bitrate_switch=True, data=bytes(12),
    )  # fmt: skip
    remote = can.Message(
        timestamp=ts, arbitration_id=0x7DF, is_extended_id=False, is_remote_frame=True, dlc=2
    )
    assert candump_line(classic) == "(1767598200.000000) vcan0 0C9#1F40 R\n"
    assert candump_line(ext, "can1") == "(1767598200.000000) can1 18FEF100# T\n"
    assert candump_line(fd) == f"(1767598200.000000) vcan0 123##1{'00' * 12} R\n"
    assert candump_line(remote) == "(1767598200.000000) vcan0 7DF#R2 R\n"
    # A channel of its own wins; a bare number is written as canN (it would read back an int).
    classic.channel = 3
    assert candump_line(classic).split()[1] == "can3"


@pytest.mark.parametrize(
    "msg",
    [
        can.Message(timestamp=-1.0, arbitration_id=1, is_extended_id=False),
        can.Message(timestamp=math.nan, arbitration_id=1, is_extended_id=False),
        can.Message(timestamp=1.0, arbitration_id=0x800, is_extended_id=False),
        can.Message(timestamp=1.0, arbitration_id=0x20000000, is_extended_id=True),
        can.Message(timestamp=1.0, arbitration_id=1, is_extended_id=False, data=bytes(9)),
        can.Message(timestamp=1.0, arbitration_id=1, is_fd=True, data=bytes(9)),
    ],
    ids=["negative-time", "nan-time", "std-id", "ext-id", "classic-9-bytes", "fd-9-bytes"],
)
def test_a_frame_candump_cannot_hold_is_refused(msg: can.Message) -> None:
    with pytest.raises(ValueError):
        candump_line(msg)


def test_a_closed_recorder_refuses_frames(tmp_path: Path) -> None:
    recorder = CandumpRecorder(tmp_path / "x.log")
    recorder.stop()
    assert recorder.closed
    recorder.close()  # again: harmless
    with pytest.raises(LifecycleError):
        recorder(can.Message(timestamp=1.0, arbitration_id=1))


def test_the_simulated_cars_frames_keep_simulated_time(tmp_path: Path) -> None:
    """Two simulated minutes of a car's sends: the log spans them, whatever the wall clock."""
    mapping = load_car_network().mapping
    scheduler = SimScheduler(START_MS)
    channel = f"rec-{tmp_path.name}"
    car_bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    tap = can.Bus(interface="virtual", channel=channel)
    path = tmp_path / "car.log"
    try:
        with CandumpRecorder(path) as recorder:
            vehicle = SimVehicle(mapping, VehicleState(seed=1), city_drive(3), car_bus, scheduler)

            def drain(_now_ms: int) -> None:
                while (msg := tap.recv(timeout=0)) is not None:
                    recorder(msg)

            vehicle.after_tick.append(drain)
            vehicle.start()
            scheduler.run_for(120_000)
    finally:
        car_bus.shutdown()
        tap.shutdown()
    read, stats = read_capture(path)
    assert stats.bad_lines == 0
    assert len(read) == recorder.frames == vehicle.frames_sent > 1000
    times = [m.timestamp for m in read]
    assert times == sorted(times)
    assert times[0] == START_MS / 1000
    assert START_MS / 1000 + 119 <= times[-1] <= START_MS / 1000 + 120
    ids = {(e.frame_id, e.is_extended) for e in vehicle.ecus}
    assert {(m.arbitration_id, m.is_extended_id) for m in read} == ids


# -- MQTT ---------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mqtt_recorder_writes_every_message(
    broker: object,
    mqtt_client: Callable[..., object],
    unique_id: Callable[[str], str],
    tmp_path: Path,
) -> None:
    vin = unique_id("VIN")
    path = tmp_path / "mqtt.jsonl"
    publisher = mqtt_client(broker, unique_id("pub")).connect()  # type: ignore[attr-defined]
    recorder = MqttRecorder(broker.url, path)  # type: ignore[attr-defined]
    recorder.start(WAIT)
    payloads = [bytes([i % 256]) * (i + 1) for i in range(200)]
    publisher.publish_many([(f"tcusim/v1/{vin}/up", p) for p in payloads])
    publisher.publish(f"tcusim/v1/{vin}/presence", b'{"state":"online"}', retain=True)
    publisher.publish("elsewhere/not/recorded", b"x")
    assert recorder.wait_for(len(payloads) + 1, WAIT)
    assert recorder.stop(WAIT)
    lines = [x for x in read_lines(path) if str(x["topic"]).startswith(f"tcusim/v1/{vin}/")]
    assert recorder.messages >= len(lines) == len(payloads) + 1
    ups = [x for x in lines if x["topic"] == f"tcusim/v1/{vin}/up"]
    assert [base64.b64decode(str(x["payload_b64"])) for x in ups] == payloads
    assert all(x["qos"] == 1 and x["retain"] is False for x in ups)
    assert all(isinstance(x["t"], int) and x["t"] > 1_600_000_000_000 for x in lines)
    assert not any(str(x["topic"]).startswith("elsewhere") for x in read_lines(path))
    # Clear the retained message so other tests do not see it.
    publisher.publish(f"tcusim/v1/{vin}/presence", b"", retain=True)


def test_stop_waits_for_what_the_broker_holds(
    broker: object,
    mqtt_client: Callable[..., object],
    unique_id: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """Without waiting for a count: stop() alone gets everything published before it.

    (Without its marker, a plain disconnect here recorded about 14,000 of the 20,000.)
    """
    topic = f"tcusim/v1/{unique_id('VIN')}/up"
    path = tmp_path / "mqtt.jsonl"
    publisher = mqtt_client(broker, unique_id("pub")).connect()  # type: ignore[attr-defined]
    with MqttRecorder(broker.url, path, topics=(topic,)) as recorder:  # type: ignore[attr-defined]
        publisher.publish_many([(topic, str(i).encode()) for i in range(N_BURST)])
    assert recorder.messages == N_BURST
    lines = read_lines(path)
    assert [base64.b64decode(str(x["payload_b64"])) for x in lines] == [
        str(i).encode() for i in range(N_BURST)
    ]


def test_retained_messages_are_recorded_as_retained(
    broker: object,
    mqtt_client: Callable[..., object],
    unique_id: Callable[[str], str],
    tmp_path: Path,
) -> None:
    topic = f"tcusim/v1/{unique_id('VIN')}/presence"
    publisher = mqtt_client(broker, unique_id("pub")).connect()  # type: ignore[attr-defined]
    publisher.publish(topic, b'{"state":"offline"}', retain=True)
    try:
        path = tmp_path / "mqtt.jsonl"
        with MqttRecorder(broker.url, path, topics=(topic,)) as recorder:  # type: ignore[attr-defined]
            assert recorder.wait_for(1, WAIT)
        [line] = read_lines(path)
        assert line["retain"] is True
        assert base64.b64decode(str(line["payload_b64"])) == b'{"state":"offline"}'
    finally:
        publisher.publish(topic, b"", retain=True)


def test_the_recorder_comes_back_after_a_broker_outage(
    fresh_broker: object, mqtt_client: Callable[..., object], tmp_path: Path
) -> None:
    path = tmp_path / "mqtt.jsonl"
    recorder = MqttRecorder(fresh_broker.url, path).start(WAIT)  # type: ignore[attr-defined]
    try:
        fresh_broker.stop()  # type: ignore[attr-defined]
        assert wait_until(lambda: recorder.disconnects == 1)
        fresh_broker.start()  # type: ignore[attr-defined]
        publisher = mqtt_client(fresh_broker, "pub-recorder-outage").connect()  # type: ignore[attr-defined]
        # Retained: delivered whenever the recorder has subscribed again.
        publisher.publish("tcusim/v1/VR3OUTAGE00000001/presence", b"back", retain=True)
        assert recorder.wait_for(1, WAIT)
        assert recorder.connects == 2
    finally:
        assert recorder.stop(WAIT)
    [line] = read_lines(path)
    assert base64.b64decode(str(line["payload_b64"])) == b"back"
    assert recorder.disconnects == 1  # its own disconnect at stop() is not counted


def test_mqtt_recorder_lifecycle_and_errors(broker: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        MqttRecorder("http://localhost", tmp_path / "x.jsonl")
    with pytest.raises(ValueError):
        MqttRecorder(broker.url, tmp_path / "x.jsonl", topics=())  # type: ignore[attr-defined]
    never = MqttRecorder(broker.url, tmp_path / "never.jsonl")  # type: ignore[attr-defined]
    assert never.stop() is False  # never started: nothing to do
    recorder = MqttRecorder(broker.url, tmp_path / "x.jsonl").start(WAIT)  # type: ignore[attr-defined]
    with pytest.raises(LifecycleError):
        recorder.start()
    assert recorder.stop(WAIT)
    assert recorder.stop() is False  # again: harmless
    assert recorder.connects == 1


def test_an_unreachable_broker_is_an_uplink_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(UplinkError, match="cannot reach"):
            MqttRecorder(f"mqtt://127.0.0.1:{port}", tmp_path / "x.jsonl").start(WAIT)


def test_credentials_and_tls_from_the_url(
    tls_broker: object, tls_files: object, mqtt_client: Callable[..., object], tmp_path: Path
) -> None:
    ca = str(tls_files.ca)  # type: ignore[attr-defined]
    password = tls_files.users["gateway"]  # type: ignore[attr-defined]
    host, port = tls_broker.host, tls_broker.port  # type: ignore[attr-defined]
    path = tmp_path / "tls.jsonl"
    with pytest.raises(UplinkError):
        MqttRecorder(f"mqtts://gateway:wrong@{host}:{port}", path, ca_file=ca).start(WAIT)
    url = f"mqtts://gateway:{password}@{host}:{port}"
    with MqttRecorder(url, path, ca_file=ca) as recorder:
        publisher = mqtt_client(
            tls_broker, "pub-recorder-tls", tls_ca=tls_files.ca, username="box",  # type: ignore[attr-defined]
            password=tls_files.users["box"],  # type: ignore[attr-defined]
        ).connect()  # fmt: skip
        publisher.publish("tcusim/v1/VR3TLS0000000001/up", b"over tls")
    assert recorder.messages == 1
    [line] = read_lines(path)
    assert base64.b64decode(str(line["payload_b64"])) == b"over tls"
