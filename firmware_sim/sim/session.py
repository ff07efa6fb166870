"""A simulated car and its box on one simulated CAN bus and one GNSS serial line.

This is the harness the demo, the tests and (later) the scenario runner share: the car drives,
the box listens, both on the same scheduler, and the box can lose power and boot again.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path

import can
import serial

from can_dbc.decoder import CompiledDecoder
from can_dbc.mapping import SignalMapping
from can_dbc.network import CommandAction, load_car_network
from firmware_sim.box import Tcu
from firmware_sim.clock import Scheduler
from firmware_sim.command_link import CommandSettings
from firmware_sim.config import TcuConfig, UplinkConfig, parse_broker_url
from firmware_sim.core import Action
from firmware_sim.gnss import GnssReader, GnssSource
from firmware_sim.sim.drive import Drive
from firmware_sim.sim.physics import Energy, VehicleState
from firmware_sim.sim.vehicle import SimBus, SimSerial, SimVehicle

__all__ = ["SimulatedCar"]

_channels = itertools.count()
GNSS_POLL_MS = 200


class SimulatedCar:
    """One simulated car with its box."""

    def __init__(
        self,
        config: TcuConfig,
        drive: Drive,
        scheduler: Scheduler,
        *,
        data_dir: str | Path,
        broker_url: str | None,
        energy: Energy = Energy.FUEL,
        seed: int = 0,
        mapping: SignalMapping | None = None,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 1.0,
        observers: list[Callable[[Action], None]] | None = None,
        bus_load: float = 0.0,
        box_clock: Scheduler | None = None,
        command_key: bytes | None = None,
        command_settings: CommandSettings | None = None,
        command_delays_ms: int | Mapping[CommandAction, int] | None = None,
    ) -> None:
        """``bus_load`` fills the bus up to that fraction of a 500 kbit/s bus with frames
        the box does not consume; ``box_clock`` is the box's own clock (the scheduler's,
        unless a test steps it); ``command_key`` lets the box take remote commands (signed
        with that vehicle key), ``command_settings`` sets their timings in the box and
        ``command_delays_ms`` the car's actuation delays."""
        self.config = config
        self.scheduler = scheduler
        self.box_clock = box_clock or scheduler
        self.data_dir = Path(data_dir)
        self.mapping = mapping or load_car_network().mapping
        self.channel = f"tcusim-{config.vin}-{next(_channels)}"
        self.uplink_config = (
            UplinkConfig(
                broker=parse_broker_url(broker_url),
                reconnect_min_s=reconnect_min_s,
                reconnect_max_s=reconnect_max_s,
            )
            if broker_url
            else None
        )
        self.observers = observers if observers is not None else []
        self.command_key = command_key
        self.command_settings = command_settings
        self.car_bus: can.BusABC = SimBus(self.channel)
        self.gnss_line: serial.SerialBase = SimSerial()
        self.vehicle = SimVehicle(
            self.mapping,
            VehicleState(energy, seed=seed),
            drive,
            self.car_bus,
            scheduler,
            gnss=GnssSource(self.gnss_line),
            bus_load=bus_load,
            seed=seed,
            command_delays_ms=command_delays_ms,
        )
        self.vehicle.after_tick.append(self._box_tick)
        self.boots = 0
        self.box = self._new_box()
        self._next_gnss_ms = 0

    def _new_box(self) -> Tcu:
        bus = SimBus(self.channel)
        return Tcu(
            self.config,
            data_dir=self.data_dir,
            decoder=CompiledDecoder(self.mapping.database, self.mapping),
            scheduler=self.box_clock,
            uplink=self.uplink_config,
            bus=bus,
            gnss=GnssReader(self.gnss_line),
            observers=self.observers,
            command_key=self.command_key,
            command_settings=self.command_settings,
        )

    def start(self) -> None:
        """Power the box on and start the drive."""
        self.box.boot()
        self.boots += 1
        self.vehicle.start()

    def _box_tick(self, now_ms: int) -> None:
        box = self.box
        if not box.running:
            return
        box_now = now_ms if self.box_clock is self.scheduler else self.box_clock.now_ms
        box.poll_bus(box_now)
        if now_ms >= self._next_gnss_ms:
            box.poll_gnss(box_now)
            self._next_gnss_ms = now_ms + GNSS_POLL_MS
        box.pump()

    def power_cut(self) -> None:
        """The box loses power; the car drives on."""
        self.box.power_cut()
        if self.box.bus is not None:
            self.box.bus.shutdown()

    def reboot(self) -> None:
        """Power comes back: a new box process boots from the same flash."""
        self.gnss_line.reset_input_buffer()  # what came while the box was off is lost
        self.box = self._new_box()
        self.box.boot()
        self.boots += 1

    def run_for(self, seconds: float) -> None:
        """Advance the scheduler (simulated time) by ``seconds``; needs a :class:`SimScheduler`."""
        run_for = getattr(self.scheduler, "run_for", None)
        if run_for is None:
            raise TypeError("run_for needs a simulated-time scheduler")
        run_for(int(seconds * 1000))

    def close(self, drain_timeout: float = 10.0) -> bool:
        """Wait for the queue to drain (wall clock), then power off; True when it drained."""
        drained = self.box.drain(drain_timeout) if self.box.running else False
        if self.box.running:
            self.box.shutdown()
        if self.box.bus is not None:
            self.box.bus.shutdown()
        self.car_bus.shutdown()
        self.gnss_line.close()
        return drained
