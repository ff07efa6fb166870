"""The gateway's decoding processes (``decode_processes``): the same outcomes as decoding in
the gateway's process, nothing lost when one dies, none left behind.

The tests that store through a gateway take the ``db`` fixture (SQLite and PostgreSQL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PahoClient
from test_ingest import new_vin, payload
from test_store import POSITION, db_fixture, pg_url_fixture, uplink  # noqa: F401 (fixtures)

from firmware_sim.payload import Privacy, Series
from gateway.broker import EmbeddedBroker, MosquittoBroker
from gateway.errors import OptionError
from gateway.ingest import (
    DECODE_PROCESSES_ENV,
    Gateway,
    GatewayThread,
    _DecodePool,
    classify_topic,
    default_decode_processes,
    presence_topic,
    uplink_topic,
)
from gateway.store import Message, SqliteStore, Store, open_store

Item = tuple[str, bytes, str | None, str]

AnyBroker = MosquittoBroker | EmbeddedBroker
WAIT = 30.0


def decoding_processes() -> list[int]:
    """The pids of this process's decoding processes (children running ``decode_worker``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == os.getpid() and b"decode_worker" in cmdline:
            pids.append(int(entry.name))
    return pids


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Whether ``condition()`` held within ``timeout`` s (polled)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def mixed(vin: str, other: str) -> list[tuple[str, bytes]]:
    """Uploads with every kind of outcome, in an order where each decides the next."""
    speed = Series(1, -1, (0, 1000), (523, 530))
    return [
        (uplink_topic(vin), payload(vin, 0)),
        (uplink_topic(vin), payload(vin, 1)),
        (uplink_topic(vin), payload(vin, 1)),  # duplicate
        (uplink_topic(vin), payload(vin, 1, speed=900)),  # seq_conflict
        (uplink_topic(vin), payload(vin, 0, boot=3)),  # box_reset
        (uplink_topic(vin), b"\xff\xfenot cbor"),
        (uplink_topic(vin), b""),
        (uplink_topic(vin), payload(other, 7)),  # vin_mismatch
        (uplink_topic(vin), uplink(vin, 9, (Series(60000, 0, (0,), (1,)),))),
        (uplink_topic(vin), uplink(vin, 10, (speed,), privacy=Privacy.FULL)),
        (
            uplink_topic(vin),
            uplink(vin, 11, (Series(min(POSITION), 0, (0,), (1,)),), privacy=Privacy.GEOLOCATION),
        ),
        (uplink_topic(vin), uplink(vin, 12, (Series(1, 9, (0,), (2**62,)),))),  # out_of_range
        (presence_topic(vin), b'{"state": "online", "boot": 3}'),
        (presence_topic(vin), b"not json"),
        ("tcusim/v1//up", payload(vin, 5)),
        (uplink_topic(vin), payload(vin, 2)),
    ]


@pytest.fixture
def gateways(
    db: str, unique_id: Callable[[str], str], mqtt_client: Callable[..., PahoClient]
) -> Iterator[Callable[..., GatewayThread]]:
    """Start gateways on a test database; stop them and end their broker sessions after."""
    made: list[tuple[GatewayThread, AnyBroker, str]] = []

    def start(broker: AnyBroker, **options: object) -> GatewayThread:
        client_id = unique_id("gw")
        gw = GatewayThread(db, broker.url, client_id=client_id, **options)
        gw.start(connect_timeout=WAIT)
        made.append((gw, broker, client_id))
        return gw

    yield start
    for gw, broker, client_id in made:
        gw.stop()
        with contextlib.suppress(OSError, AssertionError):
            mqtt_client(broker, client_id).connect().disconnect()


def warm_up(gw: GatewayThread, box: PahoClient) -> None:
    """Publish bursts of uploads of a VIN of its own until a decoding process has checked
    some (a batch is checked in the gateway's process when no decoding process has taken
    it by the time it is stored: so it is when they start, or when the gateway is idle)."""
    vin = new_vin()
    before = gw.stats
    burst = 400
    for i in range(20):
        box.publish_many([(uplink_topic(vin), payload(vin, i * burst + j)) for j in range(burst)])
        assert gw.wait_stats(lambda s, n=(i + 1) * burst: s.accepted >= before.accepted + n, WAIT)
        if gw.stats.decoded_apart > before.decoded_apart:
            return
    pytest.fail(f"no decoding process checked a batch: {gw.stats}")


def test_decoding_processes_decide_as_the_gateway_alone(
    broker: AnyBroker,
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., PahoClient],
    unique_id: Callable[[str], str],
    tmp_path: Path,
) -> None:
    gw = gateways(broker, decode_processes=1)
    box = mqtt_client(broker, unique_id("box")).connect()
    warm_up(gw, box)
    vin, other = new_vin(), new_vin()
    messages = mixed(vin, other)
    before = gw.stats
    box.publish_many(messages)
    assert gw.wait_stats(lambda s: s.received - before.received >= len(messages), WAIT)
    assert gw.wait_stats(lambda s: s.acked - before.acked >= len(messages), WAIT), gw.stats
    # The same messages, in the same order, into a store of the gateway's process alone.
    with SqliteStore(tmp_path / "alone.sqlite3") as alone:
        now = 0
        expected = alone.ingest_many(
            [Message(t, raw, now, *classify_topic(t)) for t, raw in messages]
        )
        store = gw.reader()
        got = [(r.topic, r.reason, r.detail, r.raw) for r in store.rejections(vin)]
        got += [(r.topic, r.reason, r.detail, r.raw) for r in store.rejections(None) if not r.vin]
        want = [(r.topic, r.reason, r.detail, r.raw) for r in alone.rejections(vin)]
        want += [(r.topic, r.reason, r.detail, r.raw) for r in alone.rejections(None) if not r.vin]
        assert len(want) == 11
        assert sorted(got) == sorted(want)
        assert [p.raw for p in store.payloads(vin)] == [p.raw for p in alone.payloads(vin)]
        assert store.samples(vin) == alone.samples(vin)
        assert store.last_state(vin) == alone.last_state(vin)
        assert store.vehicle(vin) is not None
        mine, theirs = store.vehicle(vin), alone.vehicle(vin)
        assert mine is not None and theirs is not None
        assert (mine.boot, mine.max_seq, mine.duplicates, mine.presence) == (
            theirs.boot,
            theirs.max_seq,
            theirs.duplicates,
            theirs.presence,
        )
    outcomes = [r.outcome for r in expected]
    after = gw.stats
    assert after.accepted - before.accepted == outcomes.count("accepted")
    assert after.duplicates - before.duplicates == outcomes.count("duplicate")
    assert after.rejected - before.rejected == outcomes.count("rejected")
    assert after.presence - before.presence == outcomes.count("presence")


def test_a_killed_decoding_process_loses_nothing(
    broker: AnyBroker,
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., PahoClient],
    unique_id: Callable[[str], str],
) -> None:
    gw = gateways(broker, decode_processes=1)
    box = mqtt_client(broker, unique_id("box")).connect()
    warm_up(gw, box)
    (pid,) = decoding_processes()
    os.kill(pid, signal.SIGKILL)
    vin = new_vin()
    n = 300
    box.publish_many([(uplink_topic(vin), payload(vin, i)) for i in range(n)])
    assert gw.wait_until(lambda s: s.payload_count(vin) == n, WAIT), gw.stats
    assert gw.reader().seq_gaps(vin) == []
    assert gw.running
    # It is started again (once a batch finds it dead), and checks batches again.
    warm_up(gw, box)
    assert wait_for(lambda: len(decoding_processes()) == 1 and pid not in decoding_processes())


def test_the_processes_start_with_the_gateway_and_end_with_it(
    broker: AnyBroker, db: str, unique_id: Callable[[str], str]
) -> None:
    assert decoding_processes() == []
    gw = GatewayThread(db, broker.url, client_id=unique_id("gw"), decode_processes=2)
    try:
        gw.start(connect_timeout=WAIT)
        assert wait_for(lambda: len(decoding_processes()) == 2)
    finally:
        gw.stop()
    assert decoding_processes() == []
    with GatewayThread(db, broker.url, client_id=unique_id("gw"), decode_processes=0):
        time.sleep(0.2)
        assert decoding_processes() == []


def test_the_pool_checks_as_the_store_does(tmp_path: Path) -> None:
    with open_store(tmp_path / "g.sqlite3") as store:
        vin, other = new_vin(), new_vin()
        items = [(t, raw, *classify_topic(t)) for t, raw in mixed(vin, other)]
        plain = [(t, raw, v, k.value) for t, raw, v, k in items]
        pool = _DecodePool(2, store.checker)
        pool.start()
        try:
            assert wait_for(lambda: pool.submit([]) is not None)
            futures = [pool.submit(plain) for _ in range(4)]
            results = [f.result(WAIT) for f in futures if f is not None]
        finally:
            pool.close()
        assert len(results) == 4
        expected = [store.checker.check(t, raw, v, k) for t, raw, v, k in items]
        assert all(r == expected for r in results)
        assert pool.submit(plain) is None  # closed
    assert decoding_processes() == []


def _batches(store: Store, count: int, repeat: int = 1) -> list[tuple[list[Item], list[Any]]]:
    """``count`` different batches (each its own vehicles, ``repeat`` times) and their
    verdicts."""
    out = []
    for _ in range(count):
        items = [(t, raw, *classify_topic(t)) for t, raw in mixed(new_vin(), new_vin())]
        plain = [(t, raw, v, k.value) for t, raw, v, k in items]
        verdicts = [store.checker.check(t, raw, v, k) for t, raw, v, k in items]
        out.append((plain * repeat, verdicts * repeat))
    return out


def test_each_batch_gets_its_own_verdicts_with_many_in_flight(tmp_path: Path) -> None:
    with open_store(tmp_path / "g.sqlite3") as store:
        batches = _batches(store, 12)
        for processes in (1, 2):
            pool = _DecodePool(processes, store.checker)
            pool.start()
            try:
                futures = [pool.submit(plain) for plain, _ in batches]  # all at once
                results = [f.result(WAIT) if f is not None else None for f in futures]
            finally:
                pool.close()
            assert results == [expected for _, expected in batches]


def test_a_process_killed_with_batches_in_flight_fails_them_and_starts_again(
    tmp_path: Path,
) -> None:
    with open_store(tmp_path / "g.sqlite3") as store:
        small, *later = _batches(store, 4)
        (heavy,) = _batches(store, 1, repeat=2000)  # the process checks it for a while
        pool = _DecodePool(1, store.checker)
        pool.start()
        try:
            futures = [pool.submit(plain) for plain, _ in (small, heavy, *later)]
            assert all(f is not None for f in futures)  # submitted before any failure
            assert futures[0] is not None and futures[0].result(WAIT) == small[1]
            (pid,) = decoding_processes()
            # The heavy batch was written with the small one (DEPTH 2): it is in flight.
            os.kill(pid, signal.SIGKILL)
            assert futures[1] is not None
            with pytest.raises(RuntimeError, match="a decoding process died"):
                futures[1].result(WAIT)
            for future, (_, verdicts) in zip(futures[2:], later, strict=True):
                assert future is not None
                # Answered by the dead process's successor, or failed (checked in the
                # gateway's process then): never lost, never another batch's verdicts.
                with contextlib.suppress(RuntimeError):
                    assert future.result(WAIT) == verdicts
            assert wait_for(lambda: decoding_processes() not in ([], [pid]))
            deadline = time.monotonic() + WAIT
            while (again := pool.submit(small[0])) is None:  # the new one is not ready yet
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert again.result(WAIT) == small[1]
            assert pool.restarts == 1
        finally:
            pool.close()
    assert decoding_processes() == []


def test_decode_processes_option(monkeypatch: pytest.MonkeyPatch) -> None:
    store = SqliteStore(":memory:")
    with pytest.raises(OptionError, match="decode_processes"):
        Gateway(store, "mqtt://localhost", decode_processes=-1)
    monkeypatch.setenv(DECODE_PROCESSES_ENV, "3")
    assert default_decode_processes() == 3
    assert Gateway(store, "mqtt://localhost").decode_processes == 3
    assert Gateway(store, "mqtt://localhost", decode_processes=0).decode_processes == 0
    monkeypatch.setenv(DECODE_PROCESSES_ENV, "many")
    with pytest.raises(OptionError, match=DECODE_PROCESSES_ENV):
        Gateway(store, "mqtt://localhost")
    monkeypatch.delenv(DECODE_PROCESSES_ENV)
    cores = len(os.sched_getaffinity(0))
    assert default_decode_processes() == max(0, min(2, cores - 1))
