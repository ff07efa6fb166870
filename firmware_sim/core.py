"""The box's decisions, as a sans-I/O state machine.

The core is fed timestamped events (signal values decoded from the bus, GNSS fixes, timers
due) and returns actions (arm a timer, journal samples, enqueue an upload, drop samples the
driver withdrew, restrict the queue). It never reads a clock, a socket or a file: a runner
does that, in simulated or in wall-clock time, and the same inputs always give the same
outputs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from can_dbc.catalog import Catalog, Refresh, Scope, SignalSpec
from can_dbc.catalog import Trigger as SignalTrigger
from firmware_sim.config import TcuConfig
from firmware_sim.errors import PayloadError
from firmware_sim.payload import Privacy, Series, Trigger, Uplink, quantize

__all__ = [
    "Action",
    "ApplyPrivacy",
    "ArmTimer",
    "CoreStats",
    "EnqueueUpload",
    "JournalSamples",
    "Sample",
    "TcuCore",
    "Timer",
    "allowed_scopes",
    "priority_of",
]

IGNITION_ON_STATES = frozenset({2, 3})  # On, Start
PRIVACY_SIGNAL = "Vehicle.Connectivity.PrivacySetting"
POSITION_SIGNALS = (
    "Vehicle.CurrentLocation.Latitude",
    "Vehicle.CurrentLocation.Longitude",
    "Vehicle.CurrentLocation.Altitude",
    "Vehicle.CurrentLocation.Heading",
    "Vehicle.CurrentLocation.SignalQuality",
)


class Timer(enum.Enum):
    """The timers the core arms."""

    SAMPLE_FAST = "sample-fast"
    SAMPLE_NORMAL = "sample-normal"
    SAMPLE_SLOW = "sample-slow"
    UPLOAD = "upload"
    EVENT = "event"  # a held-back event upload is due


_SAMPLE_TIMERS = {
    Refresh.FAST: Timer.SAMPLE_FAST,
    Refresh.NORMAL: Timer.SAMPLE_NORMAL,
    Refresh.SLOW: Timer.SAMPLE_SLOW,
}


@dataclass(frozen=True, slots=True)
class Sample:
    """One collected value: a quantised mantissa of a catalog signal at a time."""

    id: int
    signal_id: int
    t_ms: int
    mantissa: int


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Call :meth:`TcuCore.on_timer` with ``timer`` at ``at_ms``."""

    timer: Timer
    at_ms: int


@dataclass(frozen=True, slots=True)
class JournalSamples:
    """Write these samples to the durable journal."""

    samples: tuple[Sample, ...]


@dataclass(frozen=True, slots=True)
class EnqueueUpload:
    """Put this upload in the durable queue and remove its samples from the journal."""

    uplink: Uplink
    priority: int
    sample_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ApplyPrivacy:
    """The driver changed the privacy setting: remember it, and, in one transaction, drop
    these journaled samples and strip from queued uploads every series of a scope outside
    ``allowed``."""

    privacy: Privacy
    allowed: frozenset[Scope]
    drop_sample_ids: tuple[int, ...]


Action = ArmTimer | JournalSamples | EnqueueUpload | ApplyPrivacy


def allowed_scopes(subscribed: frozenset[Scope], privacy: Privacy) -> frozenset[Scope]:
    """The scopes the box may collect: the subscribed ones the privacy setting leaves."""
    if privacy is Privacy.FULL:
        return frozenset()
    if privacy is Privacy.GEOLOCATION:
        return subscribed - {Scope.POSITION}
    return subscribed


_PRIORITY = {
    Trigger.CRASH: 3,
    Trigger.ALERT: 2,
    Trigger.IGNITION_ON: 2,
    Trigger.IGNITION_OFF: 2,
    Trigger.DOOR: 2,
    Trigger.PRIVACY: 2,
}


def priority_of(trigger: Trigger) -> int:
    """The queue priority of an upload: evicted last when highest (crash 3, events 2, else 1)."""
    return _PRIORITY.get(trigger, 1)


@dataclass
class CoreStats:
    """What the core has done, for summaries."""

    samples: int = 0
    uploads_by_trigger: dict[str, int] = field(default_factory=dict)
    withheld_by_privacy: int = 0  # samples not taken because of the privacy setting
    dropped_by_privacy: int = 0  # samples taken, then withdrawn when the setting tightened
    not_subscribed: int = 0
    invalid_privacy: int = 0  # head-unit values that name no setting (taken as Full)
    events_held: int = 0  # event uploads held back by the minimum gap between them
    unrepresentable: dict[str, int] = field(default_factory=dict)  # by signal name
    last_unrepresentable: str = ""


class TcuCore:
    """The upload policy, privacy and data-scope rules of the box."""

    def __init__(
        self,
        config: TcuConfig,
        catalog: Catalog,
        *,
        next_seq: int = 0,
        next_sample_id: int = 1,
        boot: int = 0,
        privacy: Privacy = Privacy.NONE,
        pending: Iterable[Sample] = (),
        refresh: Mapping[int, Refresh] | None = None,
    ) -> None:
        """``refresh`` overrides the catalog's refresh class by signal id (from a mapping)."""
        self.config = config
        self.catalog = catalog
        self.policy = config.policy
        self.subscribed = catalog.scopes_of(config.services)
        self.boot = boot
        self.next_seq = next_seq
        self._next_sample_id = next_sample_id
        self.privacy = privacy
        self.allowed = allowed_scopes(self.subscribed, privacy)
        self.latest: dict[int, float | int] = {}
        self.latest_ms: dict[int, int] = {}
        self._pending: dict[Refresh, list[Sample]] = {r: [] for r in Refresh}
        self._privacy_id = catalog.by_name(PRIVACY_SIGNAL).id
        self._position_ids = tuple(catalog.by_name(name).id for name in POSITION_SIGNALS)
        self._specs = {s.id: s for s in catalog.signals}
        self._refresh = {s.id: s.refresh for s in catalog.signals}
        self._refresh.update(refresh or {})
        self._refresh[self._privacy_id] = Refresh.EVENT  # a control signal, always on change
        for sample in pending:
            klass = self._refresh.get(sample.signal_id)
            if klass is not None:
                self._pending[klass].append(sample)
        self._start_ms = 0
        self._last_event_ms = -(2**62)
        self._held_trigger: Trigger | None = None
        self.stats = CoreStats()

    # -- events ---------------------------------------------------------------------------

    def start(self, now_ms: int) -> list[Action]:
        """Arm the sampling and upload timers; call once after boot."""
        self._start_ms = now_ms
        actions: list[Action] = [
            ArmTimer(timer, now_ms + self.policy.sample_ms[refresh])
            for refresh, timer in _SAMPLE_TIMERS.items()
        ]
        actions.append(ArmTimer(Timer.UPLOAD, now_ms + self.policy.tick_ms))
        return actions

    def on_signals(self, now_ms: int, updates: Sequence[tuple[int, float | int]]) -> list[Action]:
        """Take decoded values; event-class changes are sampled and may upload at once."""
        new_samples: list[Sample] = []
        trigger: Trigger | None = None
        actions: list[Action] = []
        latest = self.latest
        privacy_id = self._privacy_id
        if len(updates) > 1 and any(sid == privacy_id for sid, _ in updates):
            # The setting applies to everything that arrives with it.
            updates = sorted(updates, key=lambda u: u[0] != privacy_id)
        for signal_id, value in updates:
            previous = latest.get(signal_id)
            latest[signal_id] = value
            self.latest_ms[signal_id] = now_ms
            if previous == value:
                continue
            spec = self._specs.get(signal_id)
            if spec is None or self._refresh[signal_id] is not Refresh.EVENT:
                continue
            if signal_id == self._privacy_id:
                actions.extend(self._privacy_changed(now_ms, value))
                continue
            if spec.scope not in self.allowed:
                self._count_refused(spec)
                continue
            sample = self._sample(spec, now_ms, value)
            if sample is None:
                continue
            new_samples.append(sample)
            if previous is not None and spec.trigger is not None:
                event = self._trigger_of(spec, previous, value)
                if event is not None and (
                    trigger is None or priority_of(event) > priority_of(trigger)
                ):
                    trigger = event
        if new_samples:
            self._pending[Refresh.EVENT].extend(new_samples)
            actions.append(JournalSamples(tuple(new_samples)))
        if trigger is not None:
            actions.extend(self._event_upload(now_ms, trigger))
        return actions

    def _event_upload(self, now_ms: int, trigger: Trigger) -> list[Action]:
        """Upload at once for an event, but at most once per ``min_event_gap_ms``.

        A signal that flaps (a loose door contact) would otherwise fill the queue with
        event uploads and evict everything else; its changes are all sampled, and go in one
        upload when the gap has passed. A crash is never held back.
        """
        held = self._held_trigger
        if held is not None and priority_of(held) > priority_of(trigger):
            trigger = held
        due = self._last_event_ms + self.config.min_event_gap_ms
        if trigger is Trigger.CRASH or now_ms >= due:
            self._held_trigger = None
            self._last_event_ms = now_ms
            return self._pack(now_ms, trigger, tuple(Refresh))
        self.stats.events_held += 1
        first_hold = held is None
        self._held_trigger = trigger
        return [ArmTimer(Timer.EVENT, due)] if first_hold else []

    def on_position(
        self,
        now_ms: int,
        *,
        lat: float,
        lon: float,
        alt: float | None,
        heading: float | None,
        quality: int,
    ) -> list[Action]:
        """Take a GNSS fix as the position signals' latest values."""
        lat_id, lon_id, alt_id, heading_id, quality_id = self._position_ids
        updates: list[tuple[int, float | int]] = [
            (lat_id, lat),
            (lon_id, lon),
            (quality_id, quality),
        ]
        if alt is not None:
            updates.append((alt_id, alt))
        if heading is not None:
            updates.append((heading_id, heading))
        return self.on_signals(now_ms, updates)

    def on_timer(self, now_ms: int, timer: Timer) -> list[Action]:
        """A timer is due: sample a refresh class, or run the periodic upload."""
        if timer is Timer.EVENT:
            held = self._held_trigger
            if held is None or now_ms < self._last_event_ms + self.config.min_event_gap_ms:
                return []  # already sent with a crash; a later timer is armed if need be
            self._held_trigger = None
            self._last_event_ms = now_ms
            return self._pack(now_ms, held, tuple(Refresh))
        if timer is Timer.UPLOAD:
            tick = self.policy.tick_ms
            elapsed = now_ms - self._start_ms
            due = tuple(r for r, period in self.policy.upload_ms.items() if elapsed % period < tick)
            actions = self._pack(now_ms, Trigger.PERIODIC, due, skip_empty=True)
            actions.append(ArmTimer(Timer.UPLOAD, now_ms + tick))
            return actions
        refresh = next(r for r, t in _SAMPLE_TIMERS.items() if t is timer)
        samples = self._sample_class(now_ms, refresh)
        actions = [ArmTimer(timer, now_ms + self.policy.sample_ms[refresh])]
        if samples:
            self._pending[refresh].extend(samples)
            actions.insert(0, JournalSamples(tuple(samples)))
        return actions

    def request_upload(self, now_ms: int, trigger: Trigger = Trigger.REQUEST) -> list[Action]:
        """Upload everything pending now (a wake-up or a status request)."""
        return self._pack(now_ms, trigger, tuple(Refresh))

    # -- helpers --------------------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        """Samples collected and not yet packed into an upload."""
        return sum(len(v) for v in self._pending.values())

    def pending_samples(self) -> list[Sample]:
        """The samples collected and not yet packed into an upload."""
        return [s for samples in self._pending.values() for s in samples]

    def _sample(self, spec: SignalSpec, now_ms: int, value: float | int) -> Sample | None:
        """A sample of the value, or None (counted) when it has no place on the wire."""
        try:
            mantissa = quantize(value, spec.exp)
        except PayloadError as exc:  # NaN, infinity, or beyond 64 bits: a faulty ECU
            self.stats.unrepresentable[spec.name] = self.stats.unrepresentable.get(spec.name, 0) + 1
            self.stats.last_unrepresentable = f"{spec.name}: {exc}"
            return None
        sample_id = self._next_sample_id
        self._next_sample_id += 1
        self.stats.samples += 1
        return Sample(sample_id, spec.id, now_ms, mantissa)

    def _count_refused(self, spec: SignalSpec) -> None:
        if spec.scope in self.subscribed:
            self.stats.withheld_by_privacy += 1
        else:
            self.stats.not_subscribed += 1

    def _sample_class(self, now_ms: int, refresh: Refresh) -> list[Sample]:
        samples = []
        oldest_position = now_ms - self.config.position_max_age_ms
        for signal_id, value in self.latest.items():
            spec = self._specs.get(signal_id)
            if spec is None or self._refresh[signal_id] is not refresh:
                continue
            if spec.scope not in self.allowed:
                self._count_refused(spec)
                continue
            if spec.scope is Scope.POSITION and self.latest_ms[signal_id] < oldest_position:
                continue  # no fix lately: a stale position is not a position
            sample = self._sample(spec, now_ms, value)
            if sample is not None:
                samples.append(sample)
        return samples

    @staticmethod
    def _trigger_of(spec: SignalSpec, previous: float | int, value: float | int) -> Trigger | None:
        kind = spec.trigger
        if kind is SignalTrigger.IGNITION:
            was_on, is_on = previous in IGNITION_ON_STATES, value in IGNITION_ON_STATES
            if was_on == is_on:
                return None
            return Trigger.IGNITION_ON if is_on else Trigger.IGNITION_OFF
        if kind is SignalTrigger.DOOR:
            return Trigger.DOOR
        if kind is SignalTrigger.CRASH:
            return Trigger.CRASH if value and not previous else None
        if kind is SignalTrigger.ALERT:
            return Trigger.ALERT if value and not previous else None
        return None

    def _privacy_changed(self, now_ms: int, value: float | int) -> list[Action]:
        try:
            privacy = Privacy(int(value))
        except (ValueError, OverflowError):
            # Not a setting the head unit defines: take the strictest, never the loosest.
            self.stats.invalid_privacy += 1
            privacy = Privacy.FULL
        if privacy is self.privacy:
            return []
        self.privacy = privacy
        self.allowed = allowed_scopes(self.subscribed, privacy)
        actions: list[Action] = []
        dropped: list[int] = []
        for refresh, samples in self._pending.items():
            keep = []
            for sample in samples:
                if self._specs[sample.signal_id].scope in self.allowed:
                    keep.append(sample)
                else:
                    dropped.append(sample.id)
            self._pending[refresh] = keep
        self.stats.dropped_by_privacy += len(dropped)
        actions.append(ApplyPrivacy(privacy, self.allowed, tuple(dropped)))
        # The change itself is announced, so the cloud can show what the driver chose;
        # under Full nothing else follows.
        actions.extend(self._event_upload(now_ms, Trigger.PRIVACY))
        return actions

    def _pack(
        self, now_ms: int, trigger: Trigger, classes: Sequence[Refresh], *, skip_empty: bool = False
    ) -> list[Action]:
        samples: list[Sample] = []
        for refresh in classes:
            samples.extend(self._pending[refresh])
            self._pending[refresh] = []
        if not samples and skip_empty:
            return []
        limit = self.config.max_samples_per_payload
        chunks = [samples[i : i + limit] for i in range(0, len(samples), limit)] or [[]]
        actions: list[Action] = []
        for chunk in chunks:
            uplink = self._uplink(now_ms, trigger, chunk)
            self.next_seq += 1
            name = trigger.name.lower()
            self.stats.uploads_by_trigger[name] = self.stats.uploads_by_trigger.get(name, 0) + 1
            actions.append(EnqueueUpload(uplink, priority_of(trigger), tuple(s.id for s in chunk)))
        return actions

    def _uplink(self, now_ms: int, trigger: Trigger, samples: list[Sample]) -> Uplink:
        base = min((s.t_ms for s in samples), default=now_ms)
        by_signal: dict[int, list[Sample]] = {}
        for sample in samples:
            by_signal.setdefault(sample.signal_id, []).append(sample)
        series = []
        for signal_id in sorted(by_signal):
            group = sorted(by_signal[signal_id], key=lambda s: (s.t_ms, s.id))
            series.append(
                Series(
                    signal_id=signal_id,
                    exp=self._specs[signal_id].exp,
                    times=tuple(s.t_ms - base for s in group),
                    mantissas=tuple(s.mantissa for s in group),
                )
            )
        return Uplink(
            vin=self.config.vin,
            seq=self.next_seq,
            base_time_ms=base,
            trigger=trigger,
            privacy=self.privacy,
            series=tuple(series),
            boot=self.boot,
        )
