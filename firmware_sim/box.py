"""The box: the sans-I/O core wired to a CAN bus, a GNSS port, its flash and its uplink.

:class:`Tcu` executes the core's actions and feeds it what its interfaces deliver. It does not
own a clock: a scheduler (simulated or wall-clock) calls it, so the same box code runs a drive
in simulated time and on a bench in real time.

Given its vehicle key (``command_key``) the box also takes remote commands
(:class:`~firmware_sim.command_link.CommandLink`): it receives them over its uplink, puts
their requests on the bus, watches the feedback frame and reports their statuses; and it
sleeps after the ignition goes off (``docs/commands.md``). Asleep, it samples and uploads
nothing new: what changes on the bus meanwhile is taken in when it wakes.
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
from firmware_sim.command_link import CommandLink, CommandSettings
from firmware_sim.commands import CHARGING_STATE
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
    frames_asleep: int = 0  # frames read while asleep (their values are taken in at wake-up)
    fixes_asleep: int = 0  # GNSS fixes dropped while asleep
    sleeps: int = 0
    wakes: dict[str, int] = field(default_factory=dict)  # by reason


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
        command_key: bytes | None = None,
        command_settings: CommandSettings | None = None,
    ) -> None:
        """``command_key``: the vehicle's key for remote commands (none: no commands, no
        sleep); ``command_settings``: their timings and limits."""
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
        self._data_dir = Path(data_dir)
        self._command_key = command_key
        self._command_settings = command_settings
        self.commands: CommandLink | None = None
        self.asleep = False
        self._asleep_updates: dict[int, float | int] = {}
        self._deferred: dict[Timer, int] = {}  # timers due while asleep
        self._in_commands = False
        self._feedback_id = -1  # the command feedback frame's id (-1: no commands)
        self._charging_id = self.catalog.by_name(CHARGING_STATE).id

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
        downlink = self._command_key is not None
        if self._command_key is not None:
            try:
                self._make_commands(self._command_key)
            except BaseException:
                self.flash.close()
                raise
        if self._uplink_config is not None:
            self.uplink = MqttUplink(
                self._uplink_config, self.config.vin, boot=state.boot, downlink=downlink
            )
            self.uplink.open()
        self._running = True
        self.asleep = False
        self._execute(self.core.start(self.scheduler.now_ms))
        if self.commands is not None:
            self.commands.start(self.scheduler.now_ms)
        log.info(
            "box %s booted (boot %d, %d queued, %d pending samples)",
            self.config.vin,
            state.boot,
            state.queued,
            len(state.pending),
        )

    def _make_commands(self, key: bytes) -> None:
        core = self.core
        assert core is not None
        link = CommandLink(
            self.config.vin,
            key,
            catalog=self.catalog,
            database=self.decoder.mapping.database,
            scheduler=self.scheduler,
            flash=self.flash,
            nonce_path=self._data_dir / "nonces.sqlite3",
            send_frame=self._send_frame,
            publish_status=self._publish_status,
            ack_command=self._ack_command,
            request_upload=self.request_upload,
            on_sleep=self._sleep,
            on_wake=self._wake,
            live=lambda: self._asleep_updates if self.asleep else core.latest,
            settings=self._command_settings,
            power_safe=self.config.flash_power_safe,
        )
        self.commands = link
        self._feedback_id = link.feedback_id

    def shutdown(self, drain_timeout: float = 0.0) -> None:
        """Power off cleanly: optionally wait for the queue to drain, then disconnect."""
        if drain_timeout > 0:
            self.drain(drain_timeout)
        self._running = False
        if self.uplink is not None:
            self.uplink.close()
        self._close_commands()
        self.flash.close()

    def power_cut(self) -> None:
        """Lose power now: no goodbye to the broker, nothing flushed beyond what is committed."""
        self._running = False
        if self.uplink is not None:
            self.uplink.abort()
        self._close_commands()
        self.flash.close()

    def _close_commands(self) -> None:
        if self.commands is not None:
            self.commands.close()

    @property
    def running(self) -> bool:
        """Whether the box is powered."""
        return self._running

    # -- inputs ---------------------------------------------------------------------------

    def on_frame(self, now_ms: int, msg: can.Message) -> None:
        """Feed one received CAN frame."""
        self.stats.frames += 1
        if (
            msg.arbitration_id == self._feedback_id
            and self.commands is not None
            and msg.is_extended_id == self.commands.feedback_extended
        ):
            self.commands.on_feedback_frame(msg, now_ms)
            return
        updates = self.decoder.feed(msg)
        if not updates or self.core is None:
            return
        if self.asleep:
            self.stats.frames_asleep += 1
            held = self._asleep_updates
            charging = self._charging_id
            woken = any(sid == charging and held.get(sid) != v for sid, v in updates)
            held.update(updates)
            if woken and self.commands is not None:
                self.commands.on_car_wake("charging", now_ms)  # the charge wakes the network
            return
        self._execute(self.core.on_signals(now_ms, updates))

    def poll_bus(self, now_ms: int, limit: int = 10_000) -> int:
        """Read the frames the bus has ready, at most ``limit``; returns how many.

        The limit keeps a saturated bus from starving the timers and the uplink.
        """
        bus, core = self.bus, self.core
        if bus is None or core is None or not self._running:
            return 0
        if self.commands is not None:  # the command feedback and sleep need a look at each
            return self._poll_bus_commands(bus, now_ms, limit)
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

    def _poll_bus_commands(self, bus: can.BusABC, now_ms: int, limit: int) -> int:
        n = 0
        while n < limit:
            msg = bus.recv(0)
            if msg is None:
                break
            n += 1
            self.on_frame(now_ms, msg)
        return n

    def poll_gnss(self, now_ms: int) -> int:
        """Read the GNSS port; returns how many fixes it gave."""
        if self.gnss is None or self.core is None or not self._running:
            return 0
        fixes = self.gnss.poll()
        if self.asleep:
            self.stats.fixes_asleep += len(fixes)
            return 0
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
                if self.asleep:
                    self._deferred[timer] = action.at_ms
                    return
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
        if self.commands is not None and self._running:
            self._pump_commands()
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

    # -- remote commands and sleep --------------------------------------------------------

    def _pump_commands(self) -> None:
        if self._in_commands:  # an upload a command caused pumps again: not re-entered
            return
        self._in_commands = True
        try:
            self._take_commands()
        finally:
            self._in_commands = False

    def _take_commands(self) -> None:
        link = self.commands
        assert link is not None
        now = self.scheduler.now_ms
        link.check_ignition(now)
        if self.uplink is not None:
            items = self.uplink.take_commands()
            if items:
                link.on_commands(items, now)

    def _send_frame(self, frame: can.Message) -> None:
        if self.bus is None:
            log.warning("box %s: no CAN bus for a command request", self.config.vin)
            return
        try:
            self.bus.send(frame)
        except Exception as exc:  # python-can raises CanError and OSError alike
            self.stats.bus_errors += 1
            self.stats.last_bus_error = str(exc)
            log.warning("box %s: command request not sent: %s", self.config.vin, exc)

    def _ack_command(self, ticket: int) -> None:
        if self.uplink is not None:
            self.uplink.ack_command(ticket)

    def _publish_status(self, payload: bytes) -> None:
        if self.uplink is None:
            log.info("box %s: no uplink for a command status", self.config.vin)
            return
        self.uplink.publish_status(payload)

    def _sleep(self, now_ms: int) -> None:
        self.asleep = True
        self.stats.sleeps += 1
        core = self.core
        self._asleep_updates = dict(core.latest) if core is not None else {}
        log.info("box %s asleep", self.config.vin)

    def _wake(self, now_ms: int, reason: str) -> None:
        self.asleep = False
        self.stats.wakes[reason] = self.stats.wakes.get(reason, 0) + 1
        core = self.core
        log.info("box %s awake (%s)", self.config.vin, reason)
        if core is None:
            return
        changed = [(sid, v) for sid, v in self._asleep_updates.items() if core.latest.get(sid) != v]
        self._asleep_updates = {}
        if changed:
            self._execute(core.on_signals(now_ms, changed))
        deferred, self._deferred = self._deferred, {}
        for timer, at_ms in deferred.items():
            if self._timers.get(timer) == at_ms:
                self._execute(core.on_timer(now_ms, timer))

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
