"""The pytest plugin: the same test file on virtual CAN here and on a bench with real hardware.

Each test writes a small test file and runs pytest on it in a subprocess, so the plugin is the
one the ``pytest11`` entry point loads, against a real Mosquitto (the embedded broker where
Mosquitto is not installed). Usage errors run in process, where they are quicker.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.nmea import Fix, format_gga, format_rmc
from firmware_sim.pytest_plugin import CanTarget, TcusimOptions, VehicleFactory, socketcan_missing

pytest_plugins = ["pytester"]

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
RUN_TIMEOUT = 180.0  # seconds: the bound of one inner pytest run

HELPERS = """
import os
import threading
import time

from can_dbc.encoder import FrameEncoder
from can_dbc.network import load_car_network
from firmware_sim.payload import Trigger, decode_uplink

NETWORK = load_car_network()
ENCODER = FrameEncoder(NETWORK.database, NETWORK.mapping)


def ignition(state):
    data = ENCODER.encode("BSI_Ignition", {"Vehicle.LowVoltageSystemState": state})
    return ENCODER.can_message("BSI_Ignition", data)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def triggers(gateway, vin):
    return [decode_uplink(p.raw).trigger for p in gateway.reader().payloads(vin)]


def sockets():
    fds = os.listdir("/proc/self/fd")
    links = []
    for fd in fds:
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return sum(1 for link in links if link.startswith("socket:"))


def ours():
    prefixes = ("tcusim-box", "tcusim-gateway", "uplink-")
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]
"""

VIRTUAL_TESTS = (
    HELPERS
    + """

BASELINE = {}


def test_0_baseline(tcusim_broker):
    BASELINE["sockets"] = sockets()


def test_simulated_car_and_an_ignition_frame(tcusim_vehicle, tcusim_bus, tcusim_gateway):
    box = tcusim_vehicle(model_year=2017, simulate=True)
    vin = box.config.vin
    car = tcusim_vehicle.simulated[vin]
    assert wait_for(lambda: box.stats.frames > 0 and box.stats.fixes > 0)
    # Off then on: a transition whatever the car's own ignition frames told the box first.
    tcusim_bus.send(ignition(0))
    tcusim_bus.send(ignition(2))
    assert tcusim_gateway.wait_until(lambda s: s.payload_count(vin) >= 1, 10)
    assert Trigger.IGNITION_ON in triggers(tcusim_gateway, vin)
    assert car.frames_sent > 0


def test_a_box_alone_as_on_a_bench(tcusim_vehicle, tcusim_bus, tcusim_gateway):
    box = tcusim_vehicle(services=["connected_car"])
    tcusim_bus.send(ignition(0))
    tcusim_bus.send(ignition(2))
    vin = box.config.vin
    assert tcusim_gateway.wait_until(lambda s: s.payload_count(vin) >= 1, 10)
    assert triggers(tcusim_gateway, vin)[0] is Trigger.IGNITION_ON


def test_two_boxes_each_on_its_own_channel_of_the_test(tcusim_vehicle, tcusim_can):
    first, second = tcusim_vehicle(), tcusim_vehicle(model_year=2021)
    assert first.config.vin != second.config.vin and second.config.model_year == 2021
    assert tcusim_can.interface == "virtual" and tcusim_can.channel.startswith("tcusim-")


def test_the_crash_scenario(tcusim_scenario):
    record = tcusim_scenario("scenarios/crash.yaml")
    assert record.passed, [e for e in record.expectations if not e.passed]
    assert any(u.trigger == "crash" for u in record.uploads)


def test_z_nothing_is_left_running():
    assert ours() == []
    assert wait_for(lambda: sockets() <= BASELINE["sockets"]), (sockets(), BASELINE)
"""
)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run pytest in a subprocess (the plugin comes from its entry point), bounded."""
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=RUN_TIMEOUT)


def test_the_plugin_is_loaded_through_its_entry_point(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--help")
    assert result.ret == 0
    out = result.stdout.str()
    assert "tcusim: the box on virtual or real interfaces" in out
    for option in ("--can-interface", "--can-channel", "--gnss-port", "--broker", "--tcusim-data"):
        assert option in out
    pytester.makepyfile("def test_nothing(): pass")
    header = run(pytester)
    header.assert_outcomes(passed=1)
    header.stdout.fnmatch_lines(["tcusim: CAN virtual (a channel per test)*", "plugins:*tcusim-*"])


def test_the_fixtures_on_virtual_can_against_a_real_broker(pytester: pytest.Pytester) -> None:
    (pytester.path / "scenarios").mkdir()
    shutil.copy(SCENARIOS / "crash.yaml", pytester.path / "scenarios")
    shutil.copytree(SCENARIOS / "routes", pytester.path / "scenarios" / "routes")
    pytester.makepyfile(test_virtual=VIRTUAL_TESTS)
    result = run(pytester, "-v")
    result.assert_outcomes(passed=6)


@pytest.fixture
def gnss_receiver() -> Iterator[str]:
    """A GNSS receiver on a TCP port (``socket://`` for pyserial) sending a fix a tenth of a
    second in Paris until the test ends."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(RUN_TIMEOUT)
    stop = threading.Event()

    def serve() -> None:
        try:
            conn, _addr = server.accept()
        except OSError:
            return
        with conn:
            while not stop.is_set():
                fix = Fix.at_time_ms(time.time_ns() // 1_000_000, lat=48.8566, lon=2.3522)
                try:
                    conn.sendall(f"{format_rmc(fix)}\r\n{format_gga(fix)}\r\n".encode())
                except OSError:
                    return
                stop.wait(0.1)

    thread = threading.Thread(target=serve, name="gnss-receiver", daemon=True)
    thread.start()
    try:
        yield f"socket://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        server.close()
        thread.join(10)


def test_a_given_broker_gnss_port_and_data_folder(
    pytester: pytest.Pytester, broker: object, gnss_receiver: str, tmp_path: Path
) -> None:
    pytester.makepyfile(
        test_bench=HELPERS
        + """

def test_position_from_the_gnss_port(tcusim_vehicle, tcusim_bus, tcusim_gateway):
    box = tcusim_vehicle()
    assert wait_for(lambda: box.stats.fixes >= 2)
    tcusim_bus.send(ignition(0))
    tcusim_bus.send(ignition(2))
    vin = box.config.vin
    assert tcusim_gateway.wait_until(lambda s: s.payload_count(vin) >= 1, 10)
"""
    )
    data = tmp_path / "bench-data"
    # The test broker lets any user in: the credentials travel, and are never shown.
    address = f"{broker.host}:{broker.port}"  # type: ignore[attr-defined]
    url = f"mqtt://bench:s3cret@{address}"
    result = run(
        pytester, "--broker", url, "--gnss-port", gnss_receiver, "--tcusim-data", str(data)
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [f"tcusim: CAN virtual *, broker mqtt://bench:***@{address}, GNSS {gnss_receiver}"]
    )
    assert "s3cret" not in result.stdout.str()
    (folder,) = data.iterdir()
    assert folder.name.endswith("test_position_from_the_gnss_port")
    assert (folder / "gateway.sqlite3").is_file()
    assert [p.name for p in folder.glob("box-*/flash.sqlite3")]


def test_socketcan_without_af_can_is_skipped_with_the_reason(pytester: pytest.Pytester) -> None:
    if socketcan_missing() is None:
        pytest.skip("this machine has SocketCAN: nothing to skip")
    pytester.makepyfile(
        """
def test_bus(tcusim_bus):
    pass

def test_vehicle(tcusim_vehicle):
    tcusim_vehicle()

def test_options_only(tcusim_options):
    assert tcusim_options.can_interface == "socketcan"
"""
    )
    result = run(pytester, "-rs", "--can-interface", "socketcan", "--can-channel", "vcan0")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["SKIPPED *the kernel has no AF_CAN*SocketCAN*cannot be used*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--broker", "ftp://x"], "--broker: broker URL 'ftp://x': scheme must be mqtt://*"),
        (["--broker", "ftp://box:s3cret@x"], "--broker: broker URL 'ftp://box:***@x'*"),
        (["--can-interface", "socketcan"], "--can-interface socketcan needs --can-channel*"),
        (["--can-interface", "nosuch", "--can-channel", "x"], "*not a python-can interface*"),
        (["--can-bitrate", "500000"], "--can-bitrate means nothing on the virtual interface"),
        (["--tls-ca", "ca.pem"], "--tls-ca is the CA of an mqtts:// --broker*"),
        (["--gnss-baud", "0"], "--gnss-baud must be positive, not 0"),
    ],
)
def test_a_bad_option_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile("def test_never(): raise AssertionError('ran')")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "s3cret" not in result.stderr.str()


def test_a_simulated_car_is_never_put_on_a_real_interface(tmp_path: Path) -> None:
    options = TcusimOptions(can_interface="socketcan", can_channel="can0")
    factory = VehicleFactory(options, CanTarget("socketcan", "can0"), "mqtt://127.0.0.1", tmp_path)
    with pytest.raises(pytest.skip.Exception, match="virtual interface only, not socketcan"):
        factory(simulate=True)
    assert factory.boxes == [] and not any(tmp_path.iterdir())
