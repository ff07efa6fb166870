"""The wall-clock runner: the box on real interfaces (a CAN adapter, a GNSS port, a broker)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import can

from firmware_sim.box import Tcu
from firmware_sim.clock import WallScheduler
from firmware_sim.errors import InterfaceError

__all__ = ["open_bus", "run_wall_clock"]

GNSS_POLL_S = 0.1
MAX_WAIT_S = 0.05
BUS_RETRY_S = (0.1, 5.0)  # back-off after a bus error: first and longest wait

log = logging.getLogger(__name__)


def open_bus(interface: str, channel: str, **options: Any) -> can.BusABC:
    """Open a python-can bus, turning its many errors into :class:`InterfaceError`."""
    try:
        return can.Bus(interface=interface, channel=channel, **options)
    except (can.CanError, OSError, ValueError, ImportError, NotImplementedError) as exc:
        raise InterfaceError(f"cannot open CAN interface {interface}:{channel}: {exc}") from exc


def run_wall_clock(
    box: Tcu,
    scheduler: WallScheduler,
    *,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the box until ``stop`` is set or ``duration_s`` has passed.

    Frames are taken from the bus as they come (waiting at most until the next timer), timers
    run when due, the GNSS port is read ten times a second and the uplink is pumped each turn.
    """
    stop = stop or threading.Event()
    deadline = None if duration_s is None else time.monotonic() + duration_s
    next_gnss = 0.0
    bus = box.bus
    retry = BUS_RETRY_S[0]
    while not stop.is_set() and box.running:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        wait = scheduler.seconds_to_next(MAX_WAIT_S)
        if bus is not None:
            try:
                msg = bus.recv(wait)
                if msg is not None:
                    box.on_frame(scheduler.now_ms, msg)
                    box.poll_bus(scheduler.now_ms)
                retry = BUS_RETRY_S[0]
            except (can.CanError, OSError) as exc:
                # Bus-off, an adapter unplugged, a serial line gone: count it, keep the
                # timers and the uplink going, and try the bus again after a while.
                box.stats.bus_errors += 1
                box.stats.last_bus_error = str(exc)
                log.warning("CAN interface error (%s); retrying in %.1f s", exc, retry)
                stop.wait(min(retry, scheduler.seconds_to_next(retry)))
                retry = min(BUS_RETRY_S[1], retry * 2)
        else:
            stop.wait(wait)
        scheduler.run_due()
        if now >= next_gnss:
            box.poll_gnss(scheduler.now_ms)
            next_gnss = now + GNSS_POLL_S
        box.pump()
