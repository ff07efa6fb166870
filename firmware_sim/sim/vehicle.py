"""The simulated car: ECUs that send the network's frames at their DBC cycle times.

Every tick of the car's clock advances its physics, sends the frames that are due on the CAN
bus (encoded from the car's logical state through the network's mapping), and writes a GNSS
fix as NMEA once a second. A frame is re-encoded only when the values it carries changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import reduce

import can

from can_dbc.encoder import FrameEncoder
from can_dbc.mapping import SignalMapping
from firmware_sim.clock import Scheduler
from firmware_sim.gnss import GnssSource
from firmware_sim.nmea import Fix
from firmware_sim.sim.drive import Drive
from firmware_sim.sim.physics import VehicleState

__all__ = ["Ecu", "SimVehicle"]


@dataclass
class Ecu:
    """One cyclic message of the network and the logical signals it carries."""

    message: str
    frame_id: int
    is_extended: bool
    is_fd: bool
    cycle_ms: int
    signals: tuple[str, ...]
    last_values: tuple[float | int, ...] | None = None
    last_data: bytes = b""
    next_ms: int = 0  # elapsed time of the next send


class SimVehicle:
    """A car on a CAN bus, following a drive."""

    def __init__(
        self,
        mapping: SignalMapping,
        state: VehicleState,
        drive: Drive,
        bus: can.BusABC,
        scheduler: Scheduler,
        *,
        gnss: GnssSource | None = None,
        tick_ms: int | None = None,
    ) -> None:
        self.mapping = mapping
        self.state = state
        self.drive = drive
        self.bus = bus
        self.scheduler = scheduler
        self.gnss = gnss
        self.encoder = FrameEncoder(mapping.database, mapping)
        self.ecus = self._ecus()
        self.tick_ms = tick_ms or reduce(math.gcd, (e.cycle_ms for e in self.ecus))
        self.after_tick: list[Callable[[int], None]] = []
        self.frames_sent = 0
        self.fixes_sent = 0
        self.silent = False  # a bus-silence fault: ECUs stop sending
        self._start_ms = 0
        self._events = sorted(drive.events, key=lambda e: e.at_s)
        self._next_event = 0
        self._next_fix_ms = 0

    def _ecus(self) -> list[Ecu]:
        by_message: dict[str, list[str]] = {}
        for mapped in self.mapping.signals:
            if self.state.has(mapped.name):
                by_message.setdefault(mapped.message, []).append(mapped.name)
        ecus = []
        for name, signals in sorted(by_message.items()):
            message = self.mapping.database.get_message_by_name(name)
            if not message.cycle_time:
                continue  # event-driven frames (commands) are not sent on a timer
            ecus.append(
                Ecu(
                    message=name,
                    frame_id=message.frame_id,
                    is_extended=message.is_extended_frame,
                    is_fd=bool(message.is_fd),
                    cycle_ms=int(message.cycle_time),
                    signals=tuple(signals),
                )
            )
        return ecus

    def start(self) -> None:
        """Begin the drive now."""
        self._start_ms = self.scheduler.now_ms
        self._next_fix_ms = self._start_ms
        self.scheduler.call_at(self._start_ms, self._tick)

    @property
    def elapsed_s(self) -> float:
        """Seconds since the drive began."""
        return (self.scheduler.now_ms - self._start_ms) / 1000

    def apply(self, changes: Mapping[str, float | int]) -> None:
        """Change the car's state now (a driver action or a fault)."""
        self.state.apply(changes)

    def _tick(self, now_ms: int) -> None:
        elapsed_ms = now_ms - self._start_ms
        t_s = elapsed_ms / 1000
        while self._next_event < len(self._events) and self._events[self._next_event].at_s <= t_s:
            self.state.apply(self._events[self._next_event].set)
            self._next_event += 1
        self.state.step(t_s, self.tick_ms / 1000, self.drive)
        if not self.silent:
            self._send_due(elapsed_ms, now_ms)
        if self.gnss is not None and now_ms >= self._next_fix_ms:
            self._send_fix(now_ms)
            self._next_fix_ms = now_ms + 1000
        for listener in self.after_tick:
            listener(now_ms)
        self.scheduler.call_at(now_ms + self.tick_ms, self._tick)

    def _send_due(self, elapsed_ms: int, now_ms: int) -> None:
        values = self.state.values
        send = self.bus.send
        timestamp = now_ms / 1000
        for ecu in self.ecus:
            if elapsed_ms < ecu.next_ms:
                continue
            # On a late clock (wall time) keep the cycle's phase and skip what was missed.
            ecu.next_ms += ecu.cycle_ms * max(1, (elapsed_ms - ecu.next_ms) // ecu.cycle_ms + 1)
            current = tuple(values[name] for name in ecu.signals)
            if current != ecu.last_values:
                ecu.last_data = self.encoder.encode(
                    ecu.message, dict(zip(ecu.signals, current, strict=True))
                )
                ecu.last_values = current
            send(
                can.Message(
                    timestamp=timestamp,
                    arbitration_id=ecu.frame_id,
                    is_extended_id=ecu.is_extended,
                    is_fd=ecu.is_fd,
                    data=ecu.last_data,
                )
            )
            self.frames_sent += 1

    def _send_fix(self, now_ms: int) -> None:
        assert self.gnss is not None
        lat, lon, heading = self.drive.route.at(self.state.distance_m)
        fix = Fix.at_time_ms(
            now_ms,
            lat=lat,
            lon=lon,
            alt=self.drive.route.altitude_m,
            speed_kmh=float(self.state.values["Vehicle.Speed"]),
            heading=heading,
        )
        self.gnss.write_fix(fix)
        self.fixes_sent += 1
