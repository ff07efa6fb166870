"""The box in wall-clock time on a CAN interface, as on a test bench.

SocketCAN (vcan0) runs where the kernel has it; python-can's virtual bus runs everywhere, so
the same path is exercised in CI.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import can
import pytest
from waiting import wait_for

from can_dbc.decoder import CompiledDecoder
from can_dbc.encoder import FrameEncoder
from can_dbc.network import load_car_network
from firmware_sim.box import Tcu
from firmware_sim.clock import WallScheduler
from firmware_sim.config import TcuConfig, UplinkConfig, parse_broker_url
from firmware_sim.errors import InterfaceError
from firmware_sim.payload import Trigger, decode_uplink
from firmware_sim.runner import open_bus, run_wall_clock
from gateway.ingest import GatewayThread

WAIT = 10.0


def vcan_missing() -> str | None:
    """Why SocketCAN's vcan0 cannot be used here, or None when it can."""
    if not hasattr(socket, "AF_CAN"):
        return "this Python has no AF_CAN: SocketCAN/vcan is not available"
    try:
        with socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW) as s:
            s.bind(("vcan0",))
    except OSError as exc:
        return f"the kernel gives no AF_CAN socket on vcan0 ({exc}): SocketCAN/vcan cannot be used"
    return None


@pytest.fixture(params=["virtual", "socketcan"])
def bench_bus(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    if request.param == "socketcan":
        reason = vcan_missing()
        if reason:
            pytest.skip(reason)
        yield "socketcan", "vcan0"
    else:
        yield "virtual", f"bench-{request.node.name}"


def test_box_uploads_at_once_on_ignition_in_wall_clock_time(
    tmp_path: Path, broker: object, bench_bus: tuple[str, str]
) -> None:
    interface, channel = bench_bus
    vin = "VR3UHZKXZHT000301"
    network = load_car_network()
    encoder = FrameEncoder(network.database, network.mapping)
    box_bus = open_bus(interface, channel)
    ecu_bus = open_bus(interface, channel)
    scheduler = WallScheduler()
    box = Tcu(
        TcuConfig(vin=vin, model_year=2017),
        data_dir=tmp_path / "box",
        decoder=CompiledDecoder.for_mapping(network.mapping),
        scheduler=scheduler,
        uplink=UplinkConfig(broker=parse_broker_url(broker.url)),  # type: ignore[attr-defined]
        bus=box_bus,
    )
    stop = threading.Event()
    with GatewayThread(tmp_path / "gw.sqlite3", broker.url) as gateway:  # type: ignore[attr-defined]
        box.boot()
        runner = threading.Thread(
            target=run_wall_clock, args=(box, scheduler), kwargs={"stop": stop}
        )
        runner.start()
        try:

            def ignition(state: int) -> can.Message:
                data = encoder.encode("BSI_Ignition", {"Vehicle.LowVoltageSystemState": state})
                return encoder.can_message("BSI_Ignition", data)

            ecu_bus.send(ignition(0))
            assert wait_for(lambda: box.stats.frames >= 1)
            ecu_bus.send(ignition(2))
            # Well before the first 60 s timer: only the event can have sent it.
            assert gateway.wait_until(lambda s: s.payload_count(vin) >= 1, WAIT)
            store = gateway.reader()
            uplink = decode_uplink(store.payloads(vin)[0].raw)
            store.close()
            assert uplink.trigger is Trigger.IGNITION_ON
        finally:
            stop.set()
            runner.join(WAIT)
            box.shutdown()
            box_bus.shutdown()
            ecu_bus.shutdown()


def test_an_interface_that_cannot_open_is_a_clear_error() -> None:
    with pytest.raises(InterfaceError, match="cannot open CAN interface"):
        open_bus("no-such-interface", "can0")


class FaultyBus(can.BusABC):  # type: ignore[misc]
    """A bus that goes bus-off for its first reads, then passes frames from a virtual bus."""

    def __init__(self, channel: str, failures: int) -> None:
        super().__init__(channel=channel)
        self._inner = can.Bus(interface="virtual", channel=channel)
        self.failures = failures

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        if self.failures > 0:
            self.failures -= 1
            raise can.CanOperationError("bus off")
        return self._inner.recv(timeout), False

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        self._inner.send(msg, timeout)

    def shutdown(self) -> None:
        self._inner.shutdown()
        super().shutdown()


def test_a_failing_interface_is_counted_and_the_box_carries_on(tmp_path: Path) -> None:
    network = load_car_network()
    encoder = FrameEncoder(network.database, network.mapping)
    bus = FaultyBus("faulty-bench", failures=3)
    ecu = open_bus("virtual", "faulty-bench")
    scheduler = WallScheduler()
    box = Tcu(
        TcuConfig(vin="VR3UHZKXZHT000302", model_year=2017),
        data_dir=tmp_path,
        decoder=CompiledDecoder.for_mapping(network.mapping),
        scheduler=scheduler,
        uplink=None,
        bus=bus,
    )
    box.boot()
    stop = threading.Event()
    runner = threading.Thread(target=run_wall_clock, args=(box, scheduler), kwargs={"stop": stop})
    runner.start()
    try:
        data = encoder.encode("BSI_Ignition", {"Vehicle.LowVoltageSystemState": 2})
        assert wait_for(lambda: box.stats.bus_errors == 3)
        ecu.send(encoder.can_message("BSI_Ignition", data))
        assert wait_for(lambda: box.decoder.stats.decoded == 1)
        assert runner.is_alive() and box.stats.last_bus_error == "bus off"
    finally:
        stop.set()
        runner.join(WAIT)
        box.shutdown()
        bus.shutdown()
        ecu.shutdown()
