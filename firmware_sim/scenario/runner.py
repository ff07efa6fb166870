"""Runs a scenario: broker, gateway and the simulated car with its box, in simulated time.

The timeline's actions and faults are scheduled on the simulated clock; the run is recorded
(uploads, timeline, route, speed and energy, queue depth), its expectations are checked
against what the gateway stored, and a :class:`RunRecord` is returned.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import can

from can_dbc.catalog import Scope, default_catalog
from can_dbc.network import CommandAction
from firmware_sim.clock import SimScheduler
from firmware_sim.core import Action, ApplyPrivacy, EnqueueUpload, JournalSamples
from firmware_sim.downlink import StatusMessage, new_command, sign_command, vehicle_key
from firmware_sim.errors import ConfigError
from firmware_sim.payload import Privacy, encode_uplink
from firmware_sim.scenario.model import PRIVACY, Fault, Remote, Scenario
from firmware_sim.scenario.model import Action as ScenarioAction
from firmware_sim.scenario.record import (
    ExpectationResult,
    RemoteRecord,
    RemoteStatusRecord,
    RunRecord,
    TimelineEntry,
    UploadRecord,
)
from firmware_sim.scenario.recording import CandumpRecorder, MqttRecorder
from firmware_sim.scenario.remote import CommandStation
from firmware_sim.sim.drive import Drive
from firmware_sim.sim.session import SimulatedCar
from gateway.broker import EmbeddedBroker, MosquittoBroker, start_test_broker
from gateway.ingest import GatewayThread
from gateway.store import Store, redact_url, sample_value

__all__ = ["OffsetClock", "ScenarioRunner", "run_scenario"]

log = logging.getLogger(__name__)
CATALOG = default_catalog()
SPEED = "Vehicle.Speed"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
FUEL = "Vehicle.Powertrain.FuelSystem.RelativeLevel"
PRIVACY_SIGNAL = "Vehicle.Connectivity.PrivacySetting"
DRAIN_S = 60.0
HEAD_UNIT_PERIOD_MS = 1_000  # the head unit repeats the privacy setting this often
DELIVERY_S = 10.0  # wall time a command may take to reach a connected box
DELIVERY_STEP_MS = 10  # simulated time the car runs on while a command is on its way
STATUS_WAIT_S = 10.0  # wall time the box's last status messages may take to arrive


class _Tee(can.BusABC):
    """A bus in front of the car's bus that also hands every frame sent to a recorder."""

    def __init__(self, bus: can.BusABC, recorder: Callable[[can.Message], None]) -> None:
        super().__init__(channel=getattr(bus, "channel_info", "tee"))
        self._bus = bus
        self._recorder = recorder

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        self._recorder(msg)
        self._bus.send(msg, timeout)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        return self._bus.recv(timeout), False

    def shutdown(self) -> None:
        super().shutdown()  # the car's bus is closed by its owner


class OffsetClock:
    """The box's own clock: the simulated clock plus an offset that a clock jump changes.

    Timers the box armed before a jump still fire after the same simulated delay, and then
    read the jumped time, as a box whose real-time clock was stepped would.
    """

    def __init__(self, scheduler: SimScheduler) -> None:
        self._scheduler = scheduler
        self.offset_ms = 0

    @property
    def now_ms(self) -> int:
        """The box's idea of the time."""
        return self._scheduler.now_ms + self.offset_ms

    def call_at(self, at_ms: int, callback: Callable[[int], None]) -> None:
        """Run ``callback`` when the box's clock reads ``at_ms`` (as of now)."""
        self._scheduler.call_at(at_ms - self.offset_ms, lambda t: callback(t + self.offset_ms))


class _Observer:
    """Every action of every boot of the box, as the record and the checks need them."""

    def __init__(self, runner: ScenarioRunner) -> None:
        self.runner = runner
        self.journaled: dict[int, tuple[int, int, int]] = {}
        self.dropped: set[int] = set()
        self.packed: dict[int, tuple[int, ...]] = {}
        self.digest = hashlib.sha256()
        self.payloads = 0

    def __call__(self, action: Action) -> None:
        now = self.runner.scheduler.now_ms
        if isinstance(action, JournalSamples):
            for s in action.samples:
                self.journaled[s.id] = (s.signal_id, s.t_ms, s.mantissa)
        elif isinstance(action, ApplyPrivacy):
            self.dropped.update(action.drop_sample_ids)
        elif isinstance(action, EnqueueUpload):
            u = action.uplink
            payload = encode_uplink(u)
            self.digest.update(payload)
            self.payloads += 1
            self.packed[u.seq] = action.sample_ids
            samples = sum(len(s.times) for s in u.series)
            self.runner.record.uploads.append(
                UploadRecord(now, u.seq, u.trigger.name.lower(), len(payload), samples)
            )


class ScenarioRunner:
    """One run of one scenario."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        data_dir: str | Path,
        broker_url: str | None = None,
        speed: float | None = None,
        record_dir: str | Path | None = None,
        progress: Callable[[float, float], None] | None = None,
        db: str | None = None,
        remote_secret: bytes | None = None,
        send_remote: Callable[[Remote], bytes] | None = None,
    ) -> None:
        """``speed`` paces simulated time (1.0 = real time); ``None`` runs as fast as it can.

        Without ``broker_url`` the runner starts its own broker (Mosquitto where installed).
        ``db`` is the gateway's database (anything :func:`gateway.store.open_store` takes,
        ``postgresql://...`` among them); by default a new ``gateway.sqlite3`` in
        ``data_dir``. A given database must hold no upload of the scenario's vehicle yet.

        ``remote_secret`` is the master secret the car's command key derives from (a random
        one by default); ``send_remote``, when given, sends each timeline remote instead of
        the runner (a gateway's API, which signs it with that secret) and returns its command
        id; the runner still collects the box's statuses.
        """
        if speed is not None and speed <= 0:
            raise ConfigError("speed must be positive")
        self.scenario = scenario
        self.data_dir = Path(data_dir)
        self.broker_url = broker_url
        self.speed = speed
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self.progress = progress
        self.db = db
        self.remote_secret = remote_secret
        self.send_remote = send_remote
        self.scheduler = SimScheduler(scenario.start_ms)
        self.box_clock = OffsetClock(self.scheduler)
        self.record = RunRecord(
            name=scenario.name,
            vin=scenario.config.vin,
            seed=scenario.seed,
            start_ms=scenario.start_ms,
            end_ms=scenario.start_ms + scenario.duration_ms,
        )
        self.observer = _Observer(self)
        self._broker: MosquittoBroker | EmbeddedBroker | None = None
        self._evicted: set[int] = set()
        self._pending_at_end: set[int] = set()
        self._stripped = 0
        self._drained = False
        self._remotes = [a for a in scenario.actions if a.kind == "remote"]
        self._station: CommandStation | None = None
        self._key: bytes | None = None
        self._order = 0
        self._by_command: dict[bytes, RemoteRecord] = {}
        self._published = 0  # remote commands published
        self._received_before = 0  # commands and statuses of the boxes before the last boot
        self._statuses_before = 0
        self._fault_silent = False  # a can_silence fault holds the bus
        self._quiet_since: int | None = None  # the box asleep and the car at rest since
        self._network_asleep_ms = 0
        self._network_sleeps = 0
        self._deaf = 0  # body_deaf faults under way
        self._failing: Counter[CommandAction] = Counter()  # actuator_failure faults, by request
        if broker_url and any(f.kind == "broker_outage" for f in scenario.faults):
            raise ConfigError("a broker_outage fault needs the runner's own broker (no --broker)")

    # -- the run --------------------------------------------------------------------------

    def run(self) -> RunRecord:
        """Run the whole scenario and check its expectations."""
        wall = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for name in ("flash.sqlite3", "gateway.sqlite3", "nonces.sqlite3"):
            if name == "gateway.sqlite3" and self.db is not None:
                continue
            for suffix in ("", "-wal", "-shm"):
                (self.data_dir / f"{name}{suffix}").unlink(missing_ok=True)
        db = self.db if self.db is not None else str(self.data_dir / "gateway.sqlite3")
        with contextlib.ExitStack() as stack:
            url = self.broker_url or self._start_broker(stack)
            gateway = stack.enter_context(GatewayThread(db, url))
            # (A retained presence message may already have named the vehicle: that is fine.)
            if gateway.reader().payload_count(self.scenario.config.vin):
                raise ConfigError(
                    f"the database {redact_url(db)} already holds uploads of vehicle"
                    f" {self.scenario.config.vin}: a scenario needs a database without them"
                )
            if self._remotes:  # the app's end, and the vehicle key of this run only
                master = self.remote_secret or secrets.token_bytes(32)
                self._key = vehicle_key(master, self.scenario.config.vin)
                self._station = stack.enter_context(CommandStation(url, self.scenario.config.vin))
            car = self._make_car(url, stack)
            car.start()
            self._schedule(car)
            self._drive(car)
            self._finish(car, gateway)
            store = gateway.reader()
            try:
                self._check(store)
                self._counters(car, gateway, store)
            finally:
                store.close()
        self.record.wall_s = round(time.monotonic() - wall, 3)
        return self.record

    def _start_broker(self, stack: contextlib.ExitStack) -> str:
        # Afresh like the databases: a persisted session of an earlier run in this folder
        # (one cut short) would deliver that run's uploads and commands into this one.
        (self.data_dir / "broker" / "mosquitto.db").unlink(missing_ok=True)
        broker = start_test_broker(self.data_dir / "broker")
        stack.callback(broker.close)
        self._broker = broker
        return broker.url

    def _make_car(self, url: str, stack: contextlib.ExitStack) -> SimulatedCar:
        s = self.scenario
        profile = sorted(s.speed_profile, key=lambda p: p[0])
        drive = Drive(
            duration_s=s.duration_ms / 1000,
            route=s.route,
            speed_profile=[(t / 1000, v) for t, v in profile],
        )
        car = SimulatedCar(
            s.config,
            drive,
            self.scheduler,
            data_dir=self.data_dir,
            broker_url=url,
            energy=s.energy,
            seed=s.seed,
            observers=[self.observer],
            bus_load=s.bus_load,
            box_clock=self.box_clock,
            command_key=self._key,
            command_settings=s.command_settings,
            command_delays_ms=s.command_delays_ms,
        )
        car.vehicle.apply({PRIVACY_SIGNAL: int(s.privacy)})
        if s.soc_pct is not None:
            car.vehicle.apply({SOC: s.soc_pct})
        if self.record_dir is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            candump = stack.enter_context(CandumpRecorder(self.record_dir / "bus.log"))
            car.vehicle.bus = _Tee(car.vehicle.bus, candump)
            mqtt = MqttRecorder(url, self.record_dir / "mqtt.jsonl")
            mqtt.start()
            stack.callback(mqtt.stop)
        return car

    def _note(self, kind: str, text: str) -> None:
        self.record.timeline.append(TimelineEntry(self.scheduler.now_ms, kind, text))

    def _schedule(self, car: SimulatedCar) -> None:
        start = self.scenario.start_ms
        call_at = self.scheduler.call_at
        for action in self.scenario.actions:
            call_at(start + action.at_ms, functools.partial(self._act, car, action))
        for fault in self.scenario.faults:
            begin = start + fault.at_ms
            call_at(begin, functools.partial(self._fault, car, fault, True))
            if fault.kind != "clock_jump":
                call_at(
                    begin + fault.duration_ms, functools.partial(self._fault, car, fault, False)
                )
        call_at(start, functools.partial(self._sample_truth, car))

    def _act(self, car: SimulatedCar, action: ScenarioAction, _now: int) -> None:
        self._wake_network(car)
        state = car.vehicle.state
        kind, value = action.kind, action.value
        if kind == "ignition":
            car.vehicle.apply({"Vehicle.LowVoltageSystemState": value})
        elif kind == "door":
            car.vehicle.apply(value)
        elif kind == "lock":
            car.vehicle.apply({"Vehicle.Cabin.DoorsLockState": value})
        elif kind == "privacy":
            car.vehicle.apply({PRIVACY_SIGNAL: int(value)})
        elif kind == "precondition":
            car.vehicle.apply({"Vehicle.Cabin.HVAC.Preconditioning.State": value})
        elif kind == "plug":
            state.plug_in(value) if value else state.unplug()
        elif kind == "charge":
            state.start_charging() if value else state.stop_charging()
        elif kind == "crash":
            state.crash()
        elif kind == "alert":
            signal, on = value
            state.alert(signal, on)
        elif kind == "low_battery":
            state.set_low_battery()
        elif kind == "refuel":
            state.refuel(value)
        elif kind == "remote":
            self._send_remote(value)
            return
        self._note("action", _describe(action))

    def _send_remote(self, remote: Remote) -> None:
        """Sign the command with the simulated clock (the gateway's) and publish it."""
        # (_act woke the car's network: the box, tapped, wakes the car's in any case.)
        assert self._station is not None and self._key is not None
        now = self.scheduler.now_ms
        if self.send_remote is not None:  # the gateway's API signs and publishes it
            command_id = self.send_remote(remote)
            record = RemoteRecord(
                remote.id, remote.action, dict(remote.params), now, command_id.hex(), 0
            )
            self.record.remotes.append(record)
            self._by_command[command_id] = record
            self._published += 1
            self._note("command", f"remote {remote} (through the gateway's API)")
            return
        self._order += 1
        cmd = new_command(
            self.scenario.config.vin,
            remote.action,
            remote.params,
            issued_at_ms=now,
            order=self._order,
            validity_ms=remote.validity_ms,
        )
        record = RemoteRecord(
            remote.id, remote.action, dict(remote.params), now, cmd.command_id.hex(), cmd.order
        )
        self.record.remotes.append(record)
        self._by_command[cmd.command_id] = record
        self._station.send(sign_command(cmd, self._key))  # the network wakes for it
        self._published += 1
        self._note("command", f"remote {remote}")

    def _received(self, car: SimulatedCar) -> int:
        """Commands the boxes took from the uplink, over every boot."""
        link = car.box.commands
        return self._received_before + (link.stats.received if link is not None else 0)

    def _statuses_sent(self, car: SimulatedCar) -> int:
        """Status messages the boxes published, over every boot."""
        link = car.box.commands
        return self._statuses_before + (link.stats.statuses if link is not None else 0)

    def _wake_network(self, car: SimulatedCar) -> None:
        """Something happens: the car's network is awake (unless a fault silences it)."""
        self._quiet_since = None
        if car.vehicle.silent and not self._fault_silent:
            car.vehicle.silent = False

    def _network(self, car: SimulatedCar, now: int) -> None:
        """``network_sleep``: the ECUs stop sending once the box has slept that long, the
        ignition off and nothing running (charging, preconditioning, horn, lights)."""
        after = self.scenario.network_sleep_ms
        if after is None:
            return
        state = car.vehicle.state
        values = state.values
        at_rest = (
            car.box.running
            and car.box.asleep
            and not state.ignition_on
            and not state.charging
            and not state.preconditioning
            and not values.get("Vehicle.Body.Horn.IsActive")
            and not values.get("Vehicle.Body.Lights.IsFlashing")
        )
        if not at_rest:
            self._wake_network(car)
            return
        if self._quiet_since is None:
            self._quiet_since = now
        if car.vehicle.silent and not self._fault_silent:
            self._network_asleep_ms += now - self._network_checked
        elif now - self._quiet_since >= after and not self._fault_silent:
            car.vehicle.silent = True
            self._network_sleeps += 1
        self._network_checked = now

    _network_checked = 0

    def _deliver(self, car: SimulatedCar, end_ms: int) -> None:
        """Let wall time pass, the car running on in small steps, until the box holds every
        command published (bounded: a box offline gets them when it is back)."""
        deadline = time.monotonic() + DELIVERY_S
        while self._received(car) < self._published and self.scheduler.now_ms < end_ms:
            uplink = car.box.uplink
            if not car.box.running or uplink is None or not uplink.connected:
                return
            if time.monotonic() > deadline:
                log.warning("a remote command took over %.0f s to reach the box", DELIVERY_S)
                return
            time.sleep(0.002)
            self.scheduler.run_until(min(end_ms, self.scheduler.now_ms + DELIVERY_STEP_MS))

    def _collect(self) -> None:
        """File the status messages received so far under their commands."""
        if self._station is None:
            return
        for msg in self._station.take():
            record = self._by_command.get(msg.command_id)
            if record is None:
                continue
            record.statuses.append(_status_record(msg))
            if msg.status.done:
                cause = f" ({msg.failure_cause.value})" if msg.failure_cause else ""
                self.record.timeline.append(
                    TimelineEntry(msg.at_ms, "command", f"{record.id}: {msg.status.value}{cause}")
                )

    def _fault(self, car: SimulatedCar, fault: Fault, begins: bool, _now: int) -> None:
        self._wake_network(car)
        kind = fault.kind
        if kind == "clock_jump":
            self.box_clock.offset_ms += fault.duration_ms
            self._note("fault", f"clock jump {fault.duration_ms / 1000:+g} s")
            return
        what = kind
        if kind == "actuator_failure":
            names = ", ".join(a.name.lower() for a in fault.actions)
            what += f" ({names}: {fault.reason})"
        self._note("fault", f"{what} {'begins' if begins else 'ends'}")
        if kind == "broker_outage":
            assert self._broker is not None
            self._broker.stop() if begins else self._broker.start()
        elif kind == "link_loss":
            uplink = car.box.uplink
            if uplink is not None:
                uplink.link_down() if begins else uplink.link_up()
        elif kind == "power_cut":
            if begins:
                self._evicted.update(car.box.stats.evicted)
                self._stripped += car.box.stats.stripped_by_privacy
                self._received_before = self._received(car)
                self._statuses_before = self._statuses_sent(car)
                car.power_cut()
            else:
                car.reboot()
        elif kind == "can_silence":
            self._wake_network(car)
            self._fault_silent = car.vehicle.silent = begins
        elif kind == "bus_off":
            self._bus_off(car, begins)
        elif kind == "gnss_loss":
            if begins:
                self._gnss, car.vehicle.gnss = car.vehicle.gnss, None
            else:
                car.vehicle.gnss = self._gnss
        elif kind in ("body_deaf", "actuator_failure"):
            self._body_fault(car, fault, begins)

    def _body_fault(self, car: SimulatedCar, fault: Fault, begins: bool) -> None:
        """The body controller ignores requests, or fails those of some actions (nested
        faults of one kind hold until the last of them ends)."""
        body = car.vehicle.body
        if body is None:  # a network without the command frames: nothing to disturb
            return
        step = 1 if begins else -1
        if fault.kind == "body_deaf":
            self._deaf += step
            body.deaf = self._deaf > 0
            return
        for action in fault.actions:
            self._failing[action] += step
            if self._failing[action] > 0:
                body.failing[action] = fault.reason
            else:
                body.failing.pop(action, None)

    _gnss: Any = None
    _bus: Any = None

    def _bus_off(self, car: SimulatedCar, begins: bool) -> None:
        """The box's CAN controller goes bus-off: it hears nothing until it recovers."""
        box = car.box
        if begins:
            self._bus, box.bus = box.bus, None
            box.stats.bus_errors += 1
            return
        bus = self._bus
        while bus is not None and bus.recv(0) is not None:
            pass  # what went by while the controller was off is gone
        box.bus = bus

    def _sample_truth(self, car: SimulatedCar, now: int) -> None:
        """Once a simulated second: where the car is, its speed and energy, the queue."""
        state = car.vehicle.state
        lat, lon, _heading = car.vehicle.drive.route.at(state.distance_m)
        rec = self.record
        rec.route.append((now, round(lat, 6), round(lon, 6)))
        for name in (SPEED, SOC, FUEL):
            if state.has(name):
                rec.series.setdefault(name, []).append((now, float(state.values[name])))
        if car.box.running:
            rec.queue_depth.append((now, car.box.flash.depth))
        if now < rec.end_ms:
            self.scheduler.call_at(now + 1000, functools.partial(self._sample_truth, car))

    def _drive(self, car: SimulatedCar) -> None:
        total = self.scenario.duration_ms
        start = self.scenario.start_ms
        end = start + total
        step = 1_000
        # Each chunk ends where a remote command is sent, to hand it over before going on.
        stops = sorted({start + a.at_ms for a in self._remotes})
        wall_start = time.monotonic()
        done = 0
        while done < total:
            now = self.scheduler.now_ms
            while stops and stops[0] <= now:
                stops.pop(0)
            target = min(now + step, end, *stops[:1])
            self.scheduler.run_until(target)
            if self._published:
                self._deliver(car, end)
                self._collect()
            self._network(car, self.scheduler.now_ms)
            done = self.scheduler.now_ms - start
            if self.speed is not None:
                ahead = done / 1000 / self.speed - (time.monotonic() - wall_start)
                if ahead > 0:
                    time.sleep(ahead)
            if self.progress is not None:
                self.progress(done / total, time.monotonic() - wall_start)

    def _finish(self, car: SimulatedCar, gateway: GatewayThread) -> None:
        if not car.box.running:  # the scenario ended during a power cut: it comes back to drain
            car.reboot()
        core = car.box.core
        assert core is not None
        self._pending_at_end = {s.id for s in core.pending_samples()}
        self._evicted.update(car.box.stats.evicted)
        self._stripped += car.box.stats.stripped_by_privacy
        expected = core.next_seq - len(self._evicted)
        if self._station is not None:  # the box's last statuses, before it powers off
            if not self._station.wait_for(self._statuses_sent(car), STATUS_WAIT_S):
                log.warning("some status messages did not arrive within %.0f s", STATUS_WAIT_S)
            self._collect()
            self.record.timeline.sort(key=lambda e: e.t_ms)
        self._drained = car.close(drain_timeout=DRAIN_S)
        if not self._drained:
            log.warning("the box's queue did not drain within %.0f s", DRAIN_S)
        if not gateway.wait_until(
            lambda s: s.payload_count(self.scenario.config.vin) >= expected, DRAIN_S
        ):
            log.warning("the gateway did not receive every upload within %.0f s", DRAIN_S)
        self.record.end_ms = self.scheduler.now_ms

    # -- expectations ---------------------------------------------------------------------

    def _check(self, store: Store) -> None:
        vin = self.scenario.config.vin
        samples = store.samples(vin)
        for e in self.scenario.expectations:
            passed, detail = _CHECKS[e.kind](self, e.params, store, samples)
            self.record.expectations.append(ExpectationResult(e.name, passed, detail, e.line))
        # Always: every upload that was not evicted reached the gateway once.
        gaps = set(store.seq_gaps(vin))
        unexplained = gaps - self._evicted
        self.record.expectations.append(
            ExpectationResult(
                "every upload not evicted arrived",
                not unexplained,
                f"{store.payload_count(vin)} stored, {len(self._evicted)} evicted"
                + (f", missing {sorted(unexplained)[:10]}" if unexplained else ""),
            )
        )

    def _privacy_intervals(self) -> list[tuple[int, int, Privacy]]:
        """(from, to, setting) in absolute ms, the box knowing a change within a second."""
        start, end = self.scenario.start_ms, self.scenario.start_ms + self.scenario.duration_ms
        changes = [(start, self.scenario.privacy)]
        changes += [
            (start + a.at_ms, a.value) for a in self.scenario.actions if a.kind == "privacy"
        ]
        out = []
        for (t0, p), (t1, _p) in zip(changes, [*changes[1:], (end, Privacy.NONE)], strict=True):
            out.append((t0 + HEAD_UNIT_PERIOD_MS, t1, p))
        return out

    def _counters(self, car: SimulatedCar, gateway: GatewayThread, store: Store) -> None:
        vin = self.scenario.config.vin
        d = car.box.decoder.stats
        c = self.record.counters
        c.update(
            frames_sent=car.vehicle.frames_sent,
            frames_decoded=d.decoded,
            frames_unchanged=d.unchanged,
            decode_errors=d.errors,
            unknown_ids=d.unknown_id,
            samples=len(self.observer.journaled),
            uploads=self.observer.payloads,
            bytes=sum(u.size for u in self.record.uploads),
            evicted=len(self._evicted),
            boots=car.boots,
            stored_payloads=store.payload_count(vin),
            stored_samples=store.sample_count(vin),
            rejected=len(store.rejections(vin)),
            duplicates_at_gateway=gateway.stats.duplicates,
            samples_pending=len(self._pending_at_end),
            dropped_by_privacy=len(self.observer.dropped),
            stripped_by_privacy=self._stripped,
            queue_drained=int(self._drained),
            seq_gaps=len(store.seq_gaps(vin)),
        )
        if self._remotes:
            c.update(
                remotes_sent=self._published,
                remotes_received=self._received(car),
                remote_statuses=sum(len(r.statuses) for r in self.record.remotes),
                box_sleeps=car.box.stats.sleeps,
                box_wakes=sum(car.box.stats.wakes.values()),
            )
            body = car.vehicle.body
            if body is not None:
                c.update(body_requests=body.stats.requests, body_ignored=body.stats.ignored)
        if self.scenario.network_sleep_ms is not None:
            c.update(
                network_sleeps=self._network_sleeps,
                network_asleep_s=round(self._network_asleep_ms / 1000),
            )
        self.record.payload_digest = self.observer.digest.hexdigest()


def _status_record(msg: StatusMessage) -> RemoteStatusRecord:
    cause = msg.failure_cause.value if msg.failure_cause is not None else None
    return RemoteStatusRecord(msg.at_ms, msg.status.value, cause, msg.detail)


def _describe(action: ScenarioAction) -> str:
    value = action.value
    if action.kind == "privacy":
        value = next(k for k, v in PRIVACY.items() if v == value)
    elif action.kind == "door":
        value = ", ".join(
            f"{k.split('.')[-2]} {'open' if v else 'closed'}" for k, v in value.items()
        )
    elif action.kind == "alert":
        value = f"{value[0].rsplit('.', 1)[-1]} {'on' if value[1] else 'off'}"
    return f"{action.kind}: {value}"


# -- the checks -------------------------------------------------------------------------------

Samples = list[tuple[int, int, Any]]
_Check = Callable[[ScenarioRunner, Any, Store, Samples], tuple[bool, str]]


def _bounds(n: int, params: Any) -> bool:
    low: int = params.get("min", 0)
    high: int = params.get("max", n)
    return low <= n <= high


def _check_upload(r: ScenarioRunner, p: Any, store: Store, samples: Samples) -> tuple[bool, str]:
    start = r.scenario.start_ms + p["after_ms"]
    hits = [u for u in r.record.uploads if u.trigger == p["trigger"] and start <= u.t_ms]
    first = min((u.t_ms for u in hits), default=None)
    if first is None:
        return False, f"no {p['trigger']} upload after {p['after_ms'] / 1000:g} s"
    delay = first - start
    return delay <= p["within_ms"], f"after {delay / 1000:g} s"


def _check_uploads(r: ScenarioRunner, p: Any, store: Store, samples: Samples) -> tuple[bool, str]:
    trigger = p.get("trigger")
    n = sum(1 for u in r.record.uploads if trigger is None or u.trigger == trigger)
    return _bounds(n, p), f"{n} uploads"


def _check_private(r: ScenarioRunner, p: Any, store: Store, samples: Samples) -> tuple[bool, str]:
    position = {s.id for s in CATALOG.signals if s.scope is Scope.POSITION}
    leaks = 0
    for t0, t1, privacy in r._privacy_intervals():
        if privacy is Privacy.NONE:
            continue
        for sid, t, _v in samples:
            if t0 <= t < t1 and (privacy is Privacy.FULL or sid in position):
                leaks += 1
    return leaks == 0, f"{leaks} samples stored while the driver withheld them"


def _check_trip(r: ScenarioRunner, p: Any, store: Store, samples: Samples) -> tuple[bool, str]:
    speed = CATALOG.by_name(SPEED).id
    series = sorted((t, float(v)) for sid, t, v in samples if sid == speed)
    km = sum((t1 - t0) / 3_600_000 * v0 for (t0, v0), (t1, _v) in itertools.pairwise(series))
    off = abs(km - p["about"]) / p["about"] * 100 if p["about"] else km * 100
    return off <= p["tolerance_pct"], f"{km:.2f} km from the stored speeds"


def _check_count(r: ScenarioRunner, p: Any, store: Store, samples: Samples) -> tuple[bool, str]:
    return _bounds(len(samples), p), f"{len(samples)} samples stored"


def _check_evicted(r: ScenarioRunner, p: Any, store: Store, samples: Samples) -> tuple[bool, str]:
    return _bounds(len(r._evicted), p), f"{len(r._evicted)} uploads evicted"


def _check_rejected(r: ScenarioRunner, p: Any, store: Store, samples: Samples) -> tuple[bool, str]:
    n = len(store.rejections(r.scenario.config.vin))
    return _bounds(n, p), f"{n} rejected"


def _check_lost(r: ScenarioRunner, p: Any, store: Store, samples: Samples) -> tuple[bool, str]:
    """Every sample the box collected is stored once, but those the driver withdrew, those
    in evicted uploads, and those still kept in the flash for a later upload."""
    o = r.observer
    lost_by_eviction = {i for seq in r._evicted for i in o.packed.get(seq, ())}
    excluded = o.dropped | lost_by_eviction | r._pending_at_end
    expected = Counter(
        (sid, t, sample_value(m, CATALOG.by_id(sid).exp))
        for i, (sid, t, m) in o.journaled.items()
        if i not in excluded
    )
    stored = Counter((sid, t, v) for sid, t, v in samples)
    extra = stored - expected  # stored more often than collected: doubled, or never collected
    missing = expected - stored
    # Samples stripped from queued uploads by a privacy change are gone by design, unless
    # the upload had reached the gateway before the box could take it back.
    stripped = r._stripped
    ok = not extra and sum(missing.values()) <= stripped
    return ok, (
        f"{sum(stored.values())} stored, {sum(extra.values())} more than collected, "
        f"{sum(missing.values())} missing ({stripped} withdrawn from queued uploads)"
    )


def _stored_at(samples: Samples, signal_id: int, t: int) -> tuple[int, float] | None:
    """The last stored value of a signal at or before ``t``."""
    best: tuple[int, float] | None = None
    for sid, ts, v in samples:
        if sid == signal_id and ts <= t and (best is None or ts >= best[0]):
            best = (ts, float(v))
    return best


def _within(x: float, p: Any) -> bool:
    low: float = p.get("min", -math.inf)
    high: float = p.get("max", math.inf)
    return low <= x <= high


def _check_value(r: ScenarioRunner, p: Any, store: Store, samples: Samples) -> tuple[bool, str]:
    sid = CATALOG.by_name(p["signal"]).id
    found = _stored_at(samples, sid, r.scenario.start_ms + p["at_ms"])
    if found is None:
        return False, "no value stored by then"
    return _within(
        found[1], p
    ), f"{found[1]:g} (stored at +{(found[0] - r.scenario.start_ms) / 1000:g} s)"


def _check_change(r: ScenarioRunner, p: Any, store: Store, samples: Samples) -> tuple[bool, str]:
    sid = CATALOG.by_name(p["signal"]).id
    start = r.scenario.start_ms
    first = _stored_at(samples, sid, start + p["from_ms"])
    last = _stored_at(samples, sid, start + p["to_ms"])
    if first is None or last is None:
        return False, "no value stored at one end"
    delta = last[1] - first[1]
    return _within(delta, p), f"changed by {delta:+g} ({first[1]:g} -> {last[1]:g})"


def _check_remote(r: ScenarioRunner, p: Any, store: Store, samples: Samples) -> tuple[bool, str]:
    """The statuses of the remote named ``id``: its outcome, its cause, their sequence."""
    record = next((x for x in r.record.remotes if x.id == p["id"]), None)
    if record is None:
        return False, "never sent"
    seen = [s.status for s in record.statuses]
    outcome = record.outcome
    ok = True
    if "statuses" in p:
        ok = seen == p["statuses"]
    if "status" in p:
        ok = ok and outcome is not None and outcome.status == p["status"]
    if "cause" in p:
        ok = ok and outcome is not None and outcome.cause == p["cause"]
    if outcome is None:
        return False, " > ".join(seen) + " (no final status)" if seen else "no status received"
    took = (outcome.t_ms - record.sent_ms) / 1000
    cause = f" ({outcome.cause}: {outcome.detail})" if outcome.cause else ""
    return ok, f"{' > '.join(seen)}{cause}, final after {took:g} s"


_CHECKS: dict[str, _Check] = {
    "remote": _check_remote,
    "value": _check_value,
    "change": _check_change,
    "upload": _check_upload,
    "uploads": _check_uploads,
    "no_position_while_private": _check_private,
    "trip_km": _check_trip,
    "gateway_samples": _check_count,
    "no_sample_lost": _check_lost,
    "evicted": _check_evicted,
    "rejected": _check_rejected,
}


def run_scenario(scenario: Scenario, **options: Any) -> RunRecord:
    """Run a scenario with :class:`ScenarioRunner` options and return its record."""
    return ScenarioRunner(scenario, **options).run()
