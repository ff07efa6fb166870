"""The box: the sans-I/O core wired to a CAN bus, a GNSS port, its flash and its uplink.

:class:`Tcu` executes the core's actions and feeds it what its interfaces deliver. It does not
own a clock: a scheduler (simulated or wall-clock) calls it, so the same box code runs a drive
in simulated time and on a bench in real time.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from can_dbc.catalog import Catalog, default_catalog
from firmware_sim.clock import Scheduler
from firmware_sim.config import TcuConfig, UplinkConfig
from firmware_sim.core import (
    Action,
    ApplyPrivacy,
    ArmTimer,
    EnqueueUpload,
    JournalSamples,
    TcuCore,
    Timer,
)
from firmware_sim.errors import LifecycleError
from firmware_sim.flash import FlashStore
from firmware_sim.payload import encode_uplink
from firmware_sim.uplink import MqttUplink

if TYPE_CHECKING:
    import can

    from can_dbc.decoder import CompiledDecoder
    from firmware_sim.gnss import GnssReader

__all__ = ["BoxStats", "Tcu"]

log = logging.getLogger(__name__)


@dataclass
class BoxStats:
    """What the box did, for summaries."""

    frames: int = 0
    fixes: int = 0
    uploads_enqueued: int = 0
    upload_bytes: int = 0
    evicted: list[int] = field(default_factory=list)
    stripped_by_privacy: int = 0  # samples removed from queued uploads by a privacy change
    bus_errors: int = 0  # errors the CAN interface raised
    last_bus_error: str = ""


class Tcu:
    """One telematics box."""

    def __init__(
        self,
        config: TcuConfig,
        *,
        data_dir: str | Path,
        decoder: CompiledDecoder,
        scheduler: Scheduler,
        uplink: UplinkConfig | None,
        bus: can.BusABC | None = None,
        gnss: GnssReader | None = None,
        catalog: Catalog | None = None,
        observers: list[Callable[[Action], None]] | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog or default_catalog()
        self.decoder = decoder
        self.scheduler = scheduler
        self.bus = bus
        self.gnss = gnss
        self.flash = FlashStore(
            Path(data_dir) / "flash.sqlite3",
            max_entries=config.queue_max_entries,
            max_bytes=config.queue_max_bytes,
            power_safe=config.flash_power_safe,
        )
        self._uplink_config = uplink
        self.uplink: MqttUplink | None = None
        self.core: TcuCore | None = None
        self.observers = observers if observers is not None else []
        self.stats = BoxStats()
        self._timers: dict[Timer, int] = {}
        self._handed = -1  # highest queued sequence number handed to the uplink
        self._queued_max = -1
        self._running = False

    # -- lifecycle ------------------------------------------------------------------------

    def boot(self) -> None:
        """Power on: read the flash, connect, arm the timers."""
        if self._running:
            raise LifecycleError("the box is already running")
        self.flash.open()
        state = self.flash.boot()
        self.core = TcuCore(
            self.config,
            self.catalog,
            next_seq=state.next_seq,
            next_sample_id=state.next_sample_id,
            boot=state.boot,
            privacy=state.privacy,
            pending=state.pending,
            refresh={m.id: m.effective_refresh for m in self.decoder.mapping.signals},
        )
        queued = self.flash.entries(limit=1_000_000)
        self._queued_max = queued[-1].seq if queued else -1
        if self._uplink_config is not None:
            self.uplink = MqttUplink(self._uplink_config, self.config.vin, boot=state.boot)
            self.uplink.open()
        self._running = True
        self._execute(self.core.start(self.scheduler.now_ms))
        log.info(
            "box %s booted (boot %d, %d queued, %d pending samples)",
            self.config.vin,
            state.boot,
            state.queued,
            len(state.pending),
        )

    def shutdown(self, drain_timeout: float = 0.0) -> None:
        """Power off cleanly: optionally wait for the queue to drain, then disconnect."""
        if drain_timeout > 0:
            self.drain(drain_timeout)
        self._running = False
        if self.uplink is not None:
            self.uplink.close()
        self.flash.close()

    def power_cut(self) -> None:
        """Lose power now: no goodbye to the broker, nothing flushed beyond what is committed."""
        self._running = False
        if self.uplink is not None:
            self.uplink.abort()
        self.flash.close()

    @property
    def running(self) -> bool:
        """Whether the box is powered."""
        return self._running

    # -- inputs ---------------------------------------------------------------------------

    def on_frame(self, now_ms: int, msg: can.Message) -> None:
        """Feed one received CAN frame."""
        self.stats.frames += 1
        updates = self.decoder.feed(msg)
        if updates and self.core is not None:
            self._execute(self.core.on_signals(now_ms, updates))

    def poll_bus(self, now_ms: int, limit: int = 10_000) -> int:
        """Read the frames the bus has ready, at most ``limit``; returns how many.

        The limit keeps a saturated bus from starving the timers and the uplink.
        """
        bus, core = self.bus, self.core
        if bus is None or core is None or not self._running:
            return 0
        recv, feed = bus.recv, self.decoder.feed
        on_signals, execute = core.on_signals, self._execute
        n = 0
        while n < limit:
            msg = recv(0)
            if msg is None:
                break
            n += 1
            updates = feed(msg)
            if updates:
                actions = on_signals(now_ms, updates)
                if actions:
                    execute(actions)
        self.stats.frames += n
        return n

    def poll_gnss(self, now_ms: int) -> int:
        """Read the GNSS port; returns how many fixes it gave."""
        if self.gnss is None or self.core is None or not self._running:
            return 0
        fixes = self.gnss.poll()
        for fix in fixes:
            self._execute(
                self.core.on_position(
                    now_ms,
                    lat=fix.lat,
                    lon=fix.lon,
                    alt=fix.alt,
                    heading=fix.heading,
                    quality=fix.satellites or 0,
                )
            )
        self.stats.fixes += len(fixes)
        return len(fixes)

    def request_upload(self) -> None:
        """Upload everything collected now (a wake-up or status request)."""
        if self.core is not None and self._running:
            self._execute(self.core.request_upload(self.scheduler.now_ms))

    # -- actions --------------------------------------------------------------------------

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            for observer in self.observers:
                observer(action)
            if isinstance(action, ArmTimer):
                self._arm(action)
            elif isinstance(action, JournalSamples):
                self.flash.journal(action.samples)
            elif isinstance(action, EnqueueUpload):
                self._enqueue(action)
            elif isinstance(action, ApplyPrivacy):
                self._apply_privacy(action)

    def _arm(self, action: ArmTimer) -> None:
        timer = action.timer
        self._timers[timer] = action.at_ms

        def fire(now_ms: int) -> None:
            if self._running and self.core is not None and self._timers.get(timer) == action.at_ms:
                self._execute(self.core.on_timer(now_ms, timer))

        self.scheduler.call_at(action.at_ms, fire)

    def _enqueue(self, action: EnqueueUpload) -> None:
        uplink = dataclasses.replace(action.uplink, evicted=self._evicted_total())
        payload = encode_uplink(uplink)
        evicted = self.flash.enqueue(
            uplink.seq,
            payload,
            action.priority,
            action.sample_ids,
            created_ms=self.scheduler.now_ms,
            protect=self.uplink.in_flight_seqs if self.uplink is not None else (),
        )
        self.stats.uploads_enqueued += 1
        self.stats.upload_bytes += len(payload)
        if evicted:
            self.stats.evicted.extend(evicted)
            log.warning("box %s: queue full, evicted uploads %s", self.config.vin, evicted)
        self._queued_max = max(self._queued_max, uplink.seq)
        self.pump()

    def _evicted_total(self) -> int:
        return self.flash.evicted

    def _apply_privacy(self, action: ApplyPrivacy) -> None:
        uplink = self.uplink
        # Over a live connection the uploads already handed over arrive within moments, as
        # they were collected; over a dead one they could wait for hours, so they are taken
        # back and rewritten like the rest.
        live = uplink is not None and uplink.connected
        in_flight = uplink.in_flight_seqs if uplink is not None else frozenset()
        rewritten, stripped = self.flash.apply_privacy(
            action.privacy,
            action.allowed,
            lambda sid: self.catalog.by_id(sid).scope,
            drop_sample_ids=action.drop_sample_ids,
            now_ms=self.scheduler.now_ms,
            protect=in_flight if live else (),
        )
        self.stats.stripped_by_privacy += stripped
        if rewritten and uplink is not None and in_flight and not live:
            uplink.recall()
            self._handed = -1

    # -- uplink ---------------------------------------------------------------------------

    def pump(self) -> None:
        """Remove acknowledged uploads from the queue and hand over the next ones."""
        uplink = self.uplink
        if uplink is None or not self._running:
            return
        acked = uplink.take_acked()
        if acked:
            self.flash.ack(acked)
        if self._handed >= self._queued_max or not uplink.connected:
            return
        window = uplink.window
        if window <= 0:
            return
        for entry in self.flash.entries(after_seq=self._handed, limit=window):
            uplink.publish(entry.seq, entry.payload)
            self._handed = entry.seq

    def drain(self, timeout: float) -> bool:
        """Wait (wall clock) until every queued upload is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if self.flash.depth == 0:
                return True
            time.sleep(0.005)
        self.pump()
        return self.flash.depth == 0
