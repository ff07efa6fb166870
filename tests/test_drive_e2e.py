"""End to end, in simulated time: simulated car -> virtual CAN -> box -> Mosquitto -> gateway.

The car and the box run on a simulated clock; the broker, the gateway and SQLite are real.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from contract import conforms

from can_dbc.catalog import Scope, default_catalog
from firmware_sim.clock import SimScheduler
from firmware_sim.config import TcuConfig
from firmware_sim.core import Action, ApplyPrivacy, EnqueueUpload, JournalSamples
from firmware_sim.payload import Privacy, Trigger, decode_uplink
from firmware_sim.sim.drive import city_drive
from firmware_sim.sim.session import SimulatedCar
from gateway.ingest import GatewayThread
from gateway.store import Store, sample_value

CATALOG = default_catalog()
START_MS = 1_767_340_800_000
WAIT = 30.0
POSITION = {s.id for s in CATALOG.signals if s.scope is Scope.POSITION}
PRIVACY = "Vehicle.Connectivity.PrivacySetting"


class Recorder:
    """Every sample the box journaled, and every one it dropped, across all its boots."""

    def __init__(self) -> None:
        self.journaled: dict[int, tuple[int, int, int]] = {}
        self.dropped: set[int] = set()
        self.still_pending: set[int] = set()  # in the flash, for the next boot's uploads
        self.packed: dict[int, tuple[int, ...]] = {}  # upload seq -> its sample ids
        self.evicted: set[int] = set()  # seqs the box evicted from its full queue

    def __call__(self, action: Action) -> None:
        if isinstance(action, JournalSamples):
            for s in action.samples:
                assert s.id not in self.journaled, "a sample id was reused"
                self.journaled[s.id] = (s.signal_id, s.t_ms, s.mantissa)
        elif isinstance(action, ApplyPrivacy):
            self.dropped.update(action.drop_sample_ids)
        elif isinstance(action, EnqueueUpload):
            self.packed[action.uplink.seq] = action.sample_ids

    def expected(self) -> Counter[tuple[int, int, float | int]]:
        lost = {i for seq in self.evicted for i in self.packed[seq]}
        return Counter(
            (sid, t, sample_value(m, CATALOG.by_id(sid).exp))
            for i, (sid, t, m) in self.journaled.items()
            if i not in self.dropped and i not in self.still_pending and i not in lost
        )


def stored(store: Store, vin: str) -> Counter[tuple[int, int, float | int]]:
    return Counter((sid, t, v) for sid, t, v in store.samples(vin))


def payloads(
    store: Store, vin: str
) -> list[tuple[int, Trigger, Privacy, int, frozenset[int], int]]:
    """(seq, trigger, privacy, base time, signal ids, last sample time) of each stored payload."""
    out = []
    for payload in store.payloads(vin):
        u = decode_uplink(payload.raw)
        last = u.base_time_ms + max((max(s.times) for s in u.series), default=0)
        ids = frozenset(s.signal_id for s in u.series)
        out.append((u.seq, u.trigger, u.privacy, u.base_time_ms, ids, last))
    return sorted(out)


@pytest.fixture
def gateway(tmp_path: Path, broker: object) -> Iterator[GatewayThread]:
    with GatewayThread(tmp_path / "gateway.sqlite3", broker.url) as gw:  # type: ignore[attr-defined]
        yield gw


def make_car(
    tmp_path: Path, broker_url: str, vin: str, minutes: float, recorder: Recorder, **config: object
) -> SimulatedCar:
    car = SimulatedCar(
        TcuConfig.from_mapping({"vin": vin, **config}),
        city_drive(minutes),
        SimScheduler(START_MS),
        data_dir=tmp_path / f"box-{vin}",
        broker_url=broker_url,
        observers=[recorder],
    )
    car.start()
    return car


def finish(car: SimulatedCar, gateway: GatewayThread, vin: str, rec: Recorder) -> Store:
    assert car.box.core is not None
    rec.still_pending = {s.id for s in car.box.core.pending_samples()}
    # Every upload of every boot, but those the box evicted from its full queue.
    expected = car.box.core.next_seq - len(rec.evicted)
    assert car.close(drain_timeout=WAIT), "the box's queue did not drain"
    assert gateway.wait_until(lambda s: s.payload_count(vin) >= expected, WAIT)
    store = gateway.reader()
    assert all(conforms(p.raw) for p in store.payloads(vin)), "a payload breaks uplink.cddl"
    return store


def test_pre_2019_drive_reaches_the_gateway_every_sample_once(
    tmp_path: Path, broker: object, gateway: GatewayThread
) -> None:
    vin = "VR3UHZKXZHT000101"  # 2017
    rec = Recorder()
    car = make_car(tmp_path, broker.url, vin, 6, rec)  # type: ignore[attr-defined]
    car.run_for(6 * 60)
    store = finish(car, gateway, vin, rec)
    rows = payloads(store, vin)
    assert [r[0] for r in rows] == list(range(len(rows)))
    triggers = Counter(r[1] for r in rows)
    assert triggers[Trigger.PERIODIC] == 6
    assert triggers[Trigger.DOOR] == 4  # driver door open and shut, twice
    assert triggers[Trigger.IGNITION_ON] == 1 and triggers[Trigger.IGNITION_OFF] == 1
    # Each periodic upload leaves at a whole minute with the samples of the minute before it.
    periodic_last = [r[5] - START_MS for r in rows if r[1] is Trigger.PERIODIC]
    assert [(t + 999) // 60_000 for t in periodic_last] == [1, 2, 3, 4, 5, 6]
    assert stored(store, vin) == rec.expected()
    assert car.box.decoder.stats.errors == 0 and car.box.decoder.stats.decoded > 0
    speed = CATALOG.by_name("Vehicle.Speed").id
    top = max(v for sid, _t, v in store.samples(vin, speed))
    assert 85 <= float(top) <= 91
    store.close()


def test_2020_car_uploads_every_10_s(
    tmp_path: Path, broker: object, gateway: GatewayThread
) -> None:
    vin = "VR3UHZKXZLT000102"  # 2020
    rec = Recorder()
    car = make_car(tmp_path, broker.url, vin, 3, rec)  # type: ignore[attr-defined]
    car.run_for(3 * 60)
    store = finish(car, gateway, vin, rec)
    periodic = [r for r in payloads(store, vin) if r[1] is Trigger.PERIODIC]
    assert len(periodic) == 18
    assert stored(store, vin) == rec.expected()
    store.close()


def test_privacy_reaches_the_gateway(
    tmp_path: Path, broker: object, gateway: GatewayThread
) -> None:
    vin = "VR3UHZKXZHT000103"
    rec = Recorder()
    car = make_car(tmp_path, broker.url, vin, 8, rec)  # type: ignore[attr-defined]
    car.run_for(150)
    car.vehicle.apply({PRIVACY: 1})
    car.run_for(150)
    car.vehicle.apply({PRIVACY: 2})
    car.run_for(180)
    store = finish(car, gateway, vin, rec)
    rows = payloads(store, vin)
    change_1, change_2 = START_MS + 150_000, START_MS + 300_000
    assert any(r[4] & POSITION for r in rows if r[3] < change_1)
    # The head unit repeats the setting every second: the box knows within that second, and
    # announces the change at once.
    geoloc = next(i for i, r in enumerate(rows) if r[2] is not Privacy.NONE)
    assert rows[geoloc][1] is Trigger.PRIVACY
    assert change_1 <= rows[geoloc][5] <= change_1 + 1000
    assert all(not (r[4] & POSITION) for r in rows[geoloc:])
    full = next(i for i, r in enumerate(rows) if r[2] is Privacy.FULL)
    assert rows[full:] == rows[-1:], "nothing after the announcement of Full"
    assert (rows[full][1], rows[full][4]) == (Trigger.PRIVACY, frozenset())
    learned = rows[full][3]
    assert change_2 <= learned <= change_2 + 1000
    # Nothing collected under Full reached the gateway, nor waits in the box.
    assert all(t <= learned for _sid, t, _v in store.samples(vin))
    assert not rec.still_pending
    assert stored(store, vin) == rec.expected()
    store.close()


def test_maintenance_only_car(tmp_path: Path, broker: object, gateway: GatewayThread) -> None:
    vin = "VR3UHZKXZHT000104"
    rec = Recorder()
    car = make_car(tmp_path, broker.url, vin, 4, rec, services=["telemaintenance"])  # type: ignore[attr-defined]
    car.run_for(4 * 60)
    store = finish(car, gateway, vin, rec)
    maintenance = {s.id for s in CATALOG.signals if s.scope is Scope.MAINTENANCE}
    seen = {sid for sid, _t, _v in store.samples(vin)}
    assert seen == maintenance
    assert {r[1] for r in payloads(store, vin)} == {Trigger.PERIODIC}
    store.close()


def test_broker_outage_and_power_cut_lose_nothing_and_double_nothing(
    tmp_path: Path, fresh_broker: object
) -> None:
    vin = "VR3UHZKXZHT000105"
    rec = Recorder()
    broker = fresh_broker
    with GatewayThread(tmp_path / "gateway.sqlite3", broker.url) as gateway:  # type: ignore[attr-defined]
        car = make_car(tmp_path, broker.url, vin, 12, rec)  # type: ignore[attr-defined]
        car.run_for(120)
        assert car.box.drain(WAIT)
        broker.stop()  # type: ignore[attr-defined]
        car.run_for(300)  # five simulated minutes without a broker
        assert car.box.flash.depth >= 5, "uploads waited in the flash"
        broker.start()  # type: ignore[attr-defined]
        car.run_for(90)
        car.power_cut()  # mid-drive, with whatever is in flight
        car.run_for(20)
        car.reboot()
        car.run_for(12 * 60 - 530)
        store = finish(car, gateway, vin, rec)
        rows = payloads(store, vin)
        assert [r[0] for r in rows] == list(range(len(rows))), "a sequence number is missing"
        assert stored(store, vin) == rec.expected()
        assert store.seq_gaps(vin) == []
        assert car.boots == 2
        store.close()


def test_a_queue_that_overflows_evicts_counts_and_the_gateway_sees_why(
    tmp_path: Path, fresh_broker: object
) -> None:
    vin = "VR3UHZKXZLT000106"  # 2020: an upload every 10 s
    rec = Recorder()
    broker = fresh_broker
    with GatewayThread(tmp_path / "gateway.sqlite3", broker.url) as gateway:  # type: ignore[attr-defined]
        car = make_car(tmp_path, broker.url, vin, 8, rec, queue_max_entries=6)  # type: ignore[attr-defined]
        car.run_for(60)
        assert car.box.drain(WAIT)
        broker.stop()  # type: ignore[attr-defined]
        car.run_for(300)  # about 30 uploads for a queue of 6
        broker.start()  # type: ignore[attr-defined]
        assert car.box.uplink is not None and car.box.uplink.wait_connected(WAIT)
        assert car.box.drain(WAIT)
        car.run_for(60)
        rec.evicted = set(car.box.stats.evicted)
        store = finish(car, gateway, vin, rec)
        assert len(rec.evicted) > 15
        # The gateway sees exactly the evicted uploads missing, and the box says how many
        # (each upload counts those evicted before it was queued).
        assert set(store.seq_gaps(vin)) == rec.evicted
        last = decode_uplink(store.payloads(vin)[-1].raw)
        assert last.evicted == len(rec.evicted)
        # Events outrank the periodic uploads: the ignition and door uploads all survived.
        kept = Counter(decode_uplink(p.raw).trigger for p in store.payloads(vin))
        assert kept[Trigger.IGNITION_ON] == 1 and kept[Trigger.DOOR] == 2
        # Every sample of every upload not evicted arrived once.
        assert stored(store, vin) == rec.expected()
        store.close()
