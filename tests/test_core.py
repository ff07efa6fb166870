"""The box's decisions, driven directly with timestamped events (no I/O, no clock)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from can_dbc.catalog import Refresh, Scope, default_catalog
from firmware_sim.config import ConfigError, TcuConfig, UploadPolicy, model_year_from_vin
from firmware_sim.core import (
    Action,
    ApplyPrivacy,
    ArmTimer,
    EnqueueUpload,
    JournalSamples,
    TcuCore,
    Timer,
    allowed_scopes,
)
from firmware_sim.payload import Privacy, Trigger, Uplink

CATALOG = default_catalog()
SID = {s.name: s.id for s in CATALOG.signals}
VIN_2017 = "VF3ABCDEFH1234567"  # 10th character H: 2017
VIN_2020 = "VF3ABCDEFL1234567"  # 10th character L: 2020
T0 = 1_700_000_000_000


class Harness:
    """Runs a core in simulated time: timers from its actions, inputs scripted by the test."""

    def __init__(self, config: TcuConfig, refresh: dict[int, Refresh] | None = None) -> None:
        self.core = TcuCore(config, CATALOG, refresh=refresh)
        self.timers: list[tuple[int, int, Timer]] = []
        self.order = itertools.count()
        self.uploads: list[Uplink] = []
        self.sent_at: list[int] = []
        self.actions: list[Action] = []
        self.inputs: list[tuple[int, int, Callable[[int], list[Action]]]] = []
        self.now = T0
        self.take(self.core.start(T0))

    def take(self, actions: Sequence[Action]) -> None:
        for action in actions:
            self.actions.append(action)
            if isinstance(action, ArmTimer):
                heapq.heappush(self.timers, (action.at_ms, next(self.order), action.timer))
            elif isinstance(action, EnqueueUpload):
                self.uploads.append(action.uplink)
                self.sent_at.append(self.now)

    def at(self, t_s: float, fn: Callable[[int], list[Action]]) -> None:
        heapq.heappush(self.inputs, (T0 + int(t_s * 1000), next(self.order), fn))

    def signals(self, t_s: float, **by_name: float) -> None:
        updates = [(SID[name.replace("__", ".")], v) for name, v in by_name.items()]
        self.at(t_s, lambda now: self.core.on_signals(now, updates))

    def run(self, until_s: float) -> None:
        end = T0 + int(until_s * 1000)
        while True:
            nxt_timer = self.timers[0][0] if self.timers else None
            nxt_input = self.inputs[0][0] if self.inputs else None
            candidates = [t for t in (nxt_timer, nxt_input) if t is not None and t <= end]
            if not candidates:
                break
            if (
                nxt_input is not None
                and nxt_input in candidates
                and (nxt_timer is None or nxt_input <= nxt_timer)
            ):
                at, _, fn = heapq.heappop(self.inputs)
                self.now = at
                self.take(fn(at))
            else:
                at, _, timer = heapq.heappop(self.timers)
                self.now = at
                self.take(self.core.on_timer(at, timer))


def driving(h: Harness, until_s: float) -> None:
    """Feed speed and odometer every 100 ms and a position every second."""
    for i in range(int(until_s * 10)):
        t = i / 10
        h.signals(t, Vehicle__Speed=50.0 + (i % 7), Vehicle__TraveledDistance=1000 + i / 100)
        if i % 10 == 0:
            h.at(
                t,
                lambda now, i=i: h.core.on_position(
                    now, lat=48.8 + i * 1e-5, lon=2.3, alt=35.0, heading=90.0, quality=9
                ),
            )


def uploads_of(h: Harness, trigger: Trigger) -> list[Uplink]:
    return [u for u in h.uploads if u.trigger is trigger]


def signal_ids(u: Uplink) -> set[int]:
    return {s.signal_id for s in u.series}


def test_vin_gives_the_model_year() -> None:
    assert model_year_from_vin(VIN_2017, not_after=2027) == 2017
    assert model_year_from_vin(VIN_2020, not_after=2027) == 2020
    assert model_year_from_vin("VF3ABCDEFA1234567", not_after=2027) == 2010
    with pytest.raises(ConfigError):
        model_year_from_vin("VF3ABCDEFI1234567")  # I is not in the VIN alphabet
    with pytest.raises(ConfigError):
        TcuConfig.from_mapping({"vin": VIN_2017, "colour": "red"})


def test_pre_2019_car_uploads_every_60_s() -> None:
    h = Harness(TcuConfig(vin=VIN_2017, model_year=2017))
    driving(h, 600)
    h.run(600)
    periodic = uploads_of(h, Trigger.PERIODIC)
    assert [t - T0 for t in h.sent_at] == [60_000 * k for k in range(1, 11)]
    assert len(periodic) == len(h.uploads) == 10
    # Every upload carries a minute of fast samples, one a second (the first starts at 1 s).
    speed = SID["Vehicle.Speed"]
    counts = [len(next(s for s in u.series if s.signal_id == speed).times) for u in periodic]
    assert counts == [59] + [60] * 9


def test_2020_car_uploads_at_its_faster_period_per_refresh_class() -> None:
    h = Harness(TcuConfig(vin=VIN_2020, model_year=2020))
    assert h.core.policy == UploadPolicy.for_model_year(2020)
    driving(h, 120)
    h.run(120)
    periodic = uploads_of(h, Trigger.PERIODIC)
    assert len(periodic) == 12  # every 10 s
    speed, odometer = SID["Vehicle.Speed"], SID["Vehicle.TraveledDistance"]
    assert all(speed in signal_ids(u) for u in periodic)
    # The odometer is slow-class: it rides along only once a minute.
    with_odometer = [i for i, u in enumerate(periodic) if odometer in signal_ids(u)]
    assert with_odometer == [5, 11]


@pytest.mark.parametrize(
    ("name", "values", "trigger"),
    [
        ("Vehicle.LowVoltageSystemState", (0, 2, 0), (Trigger.IGNITION_ON, Trigger.IGNITION_OFF)),
        ("Vehicle.Cabin.Door.Row1.DriverSide.IsOpen", (0, 1, 0), (Trigger.DOOR, Trigger.DOOR)),
        ("Vehicle.Body.Trunk.Rear.IsOpen", (0, 1, 0), (Trigger.DOOR, Trigger.DOOR)),
        ("Vehicle.Safety.CrashDetected", (0, 1, 0), (Trigger.CRASH,)),
        ("Vehicle.Alert.OilPressure", (0, 1, 0), (Trigger.ALERT,)),
    ],
)
def test_events_upload_at_once(
    name: str, values: tuple[int, ...], trigger: tuple[Trigger, ...]
) -> None:
    h = Harness(TcuConfig(vin=VIN_2017, model_year=2017))
    for i, v in enumerate(values):
        h.signals(5 + i * 7.5, **{name.replace(".", "__"): v})
    h.run(30)  # well before the first periodic upload
    assert [u.trigger for u in h.uploads] == list(trigger)
    assert [t - T0 for t in h.sent_at] == [12_500, 20_000][: len(trigger)]
    for u, sent, value in zip(h.uploads, h.sent_at, values[1:], strict=False):
        # Uploaded at the moment of the event, carrying the new value.
        series = next(s for s in u.series if s.signal_id == SID[name])
        assert u.base_time_ms + series.times[-1] == sent
        assert series.mantissas[-1] == value


def test_no_position_after_geolocation_privacy_and_nothing_under_full() -> None:
    h = Harness(TcuConfig(vin=VIN_2017, model_year=2017))
    driving(h, 400)
    h.signals(130.0, Vehicle__Connectivity__PrivacySetting=1)
    h.signals(250.0, Vehicle__Connectivity__PrivacySetting=2)
    h.run(400)
    position = {
        SID[n] for n in ("Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude")
    }
    before = [u for u in h.uploads if u.base_time_ms < T0 + 130_000]
    assert any(position & signal_ids(u) for u in before)
    geoloc = [u for u in h.uploads if T0 + 130_000 <= u.base_time_ms < T0 + 250_000]
    assert geoloc and all(not (position & signal_ids(u)) for u in geoloc)
    assert all(u.privacy is Privacy.GEOLOCATION for u in geoloc)
    full = [u for u in h.uploads if u.base_time_ms >= T0 + 250_000]
    # Only the announcement of the change, with no data at all.
    assert [(u.trigger, u.privacy, u.series) for u in full] == [(Trigger.PRIVACY, Privacy.FULL, ())]
    # Pending position samples were dropped from the journal, and the queue told to follow.
    applied = [a for a in h.actions if isinstance(a, ApplyPrivacy)]
    assert [a.privacy for a in applied] == [Privacy.GEOLOCATION, Privacy.FULL]
    assert Scope.POSITION not in applied[0].allowed and applied[1].allowed == frozenset()
    assert applied[0].drop_sample_ids and applied[1].drop_sample_ids


def test_maintenance_only_car_uploads_maintenance_data_only() -> None:
    h = Harness(TcuConfig(vin=VIN_2017, model_year=2017, services=("telemaintenance",)))
    driving(h, 300)
    h.signals(0.5, Vehicle__Service__DaysToService=120, Vehicle__Service__DistanceToService=8000)
    h.signals(100, Vehicle__Cabin__Door__Row1__DriverSide__IsOpen=1)
    h.signals(101, Vehicle__Cabin__Door__Row1__DriverSide__IsOpen=0)
    h.run(300)
    maintenance = {s.id for s in CATALOG.signals if s.scope is Scope.MAINTENANCE}
    assert h.uploads, "the maintenance service still uploads"
    assert all(u.trigger is Trigger.PERIODIC for u in h.uploads)
    assert set().union(*(signal_ids(u) for u in h.uploads)) == maintenance
    assert h.core.stats.not_subscribed > 0


def test_samples_are_journaled_before_they_are_packed() -> None:
    h = Harness(TcuConfig(vin=VIN_2017, model_year=2017))
    driving(h, 61)
    h.run(61)
    journaled = {s.id for a in h.actions if isinstance(a, JournalSamples) for s in a.samples}
    packed = {i for a in h.actions if isinstance(a, EnqueueUpload) for i in a.sample_ids}
    assert packed and packed <= journaled
    assert len(journaled - packed) == h.core.pending_count


@settings(max_examples=50, deadline=None)
@given(
    subscribed=st.sets(st.sampled_from(list(Scope))),
    privacy=st.sampled_from(list(Privacy)),
)
def test_allowed_scopes_never_widen(subscribed: set[Scope], privacy: Privacy) -> None:
    allowed = allowed_scopes(frozenset(subscribed), privacy)
    assert allowed <= subscribed
    if privacy is not Privacy.NONE:
        assert Scope.POSITION not in allowed
    if privacy is Privacy.FULL:
        assert not allowed


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e300])
def test_a_value_with_no_place_on_the_wire_is_counted_not_fatal(bad: float) -> None:
    h = Harness(TcuConfig(vin=VIN_2017, model_year=2017))
    h.signals(1, Vehicle__Speed=bad, Vehicle__Cabin__Door__Row1__DriverSide__IsOpen=0)
    h.signals(2, Vehicle__Cabin__Door__Row1__DriverSide__IsOpen=bad)
    h.signals(3, Vehicle__Speed=42.0)
    h.run(61)
    assert h.core.stats.unrepresentable == {
        "Vehicle.Speed": 2,  # sampled at 1 s and 2 s while the faulty value was the latest
        "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": 1,
    }
    speed = next(s for s in h.uploads[-1].series if s.signal_id == SID["Vehicle.Speed"])
    assert set(speed.mantissas) == {420}


def test_a_mapping_can_change_a_signals_refresh_class() -> None:
    """The odometer is slow (60 s) in the catalog; a mapping may make it fast (1 s)."""
    odometer = SID["Vehicle.TraveledDistance"]
    counts = []
    for refresh in (None, {odometer: Refresh.FAST}):
        h = Harness(TcuConfig(vin=VIN_2017, model_year=2017), refresh)
        driving(h, 60)
        h.run(60)
        (upload,) = h.uploads
        counts.append(len(next(s for s in upload.series if s.signal_id == odometer).times))
    assert counts == [1, 59]


def test_an_undefined_privacy_value_is_taken_as_the_strictest() -> None:
    h = Harness(TcuConfig(vin=VIN_2017, model_year=2017))
    driving(h, 30)
    h.signals(10, Vehicle__Connectivity__PrivacySetting=3)
    h.run(30)
    assert h.core.privacy is Privacy.FULL and h.core.stats.invalid_privacy == 1
    assert [(u.trigger, u.series) for u in h.uploads] == [(Trigger.PRIVACY, ())]


def test_a_setting_applies_to_the_values_that_arrive_with_it() -> None:
    h = Harness(TcuConfig(vin=VIN_2017, model_year=2017))
    h.signals(1, Vehicle__Cabin__Door__Row1__DriverSide__IsOpen=0)
    h.at(
        2,
        lambda now: h.core.on_signals(
            now,
            [
                (SID["Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"], 1),
                (SID["Vehicle.Connectivity.PrivacySetting"], 2),
            ],
        ),
    )
    h.run(100)
    assert [(u.trigger, u.privacy, u.series) for u in h.uploads] == [
        (Trigger.PRIVACY, Privacy.FULL, ())
    ]


def test_a_flapping_door_is_sampled_in_full_but_uploads_at_most_once_a_second() -> None:
    h = Harness(TcuConfig(vin=VIN_2017, model_year=2017))
    door = "Vehicle__Cabin__Door__Row1__DriverSide__IsOpen"
    for i in range(101):  # a loose contact: 100 changes in 10 s
        h.signals(10 + i / 10, **{door: i % 2})
    h.signals(15.05, Vehicle__Safety__CrashDetected=0)
    h.signals(15.25, Vehicle__Safety__CrashDetected=1)
    h.run(59)
    events = [(t - T0, u.trigger) for t, u in zip(h.sent_at, h.uploads, strict=True)]
    door_times = [t for t, trigger in events if trigger is Trigger.DOOR]
    assert len(door_times) == 11  # 10 s of flapping, one a second, then the held one
    assert all(b - a >= 1000 for a, b in itertools.pairwise(door_times))
    assert (15_250, Trigger.CRASH) in events  # a crash is never held back
    series = [s for u in h.uploads for s in u.series if s.signal_id == SID[door.replace("__", ".")]]
    assert sum(len(s.times) for s in series) == 101  # every change is in some upload
    assert h.core.stats.events_held > 80
