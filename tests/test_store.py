"""The gateway's store: migrations, ingest, deduplication, rejections, queries.

The behaviour tests take the ``store`` fixture (or ``new_store``, a factory of fresh
stores) and run on both backends: an in-memory SQLite database and a PostgreSQL database
of this module's own on the local server (``tests/pg.py``; skipped without a server).
The tests of files, URLs and read-only opening are SQLite's; ``test_store_pg.py`` has
PostgreSQL's.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg import pg_database

from can_dbc.catalog import Scope, default_catalog
from firmware_sim.errors import PayloadError
from firmware_sim.payload import Privacy, Series, Trigger, Uplink, decode_uplink, encode_uplink
from gateway.errors import StorageError
from gateway.store import (
    MIGRATIONS,
    SCHEMA_TABLES,
    Kind,
    Message,
    Outcome,
    SqliteStore,
    Store,
    open_store,
    rfc3339,
    sample_value,
)

VINS = ("VF3ABCDEF12345678", "VR1XYZ00000000042", "ZFA31200000123456")
CATALOG = default_catalog()
SIGNALS = {s.id: s for s in CATALOG.signals}
POSITION = frozenset(s.id for s in CATALOG.signals if s.scope is Scope.POSITION)
BASE = 1_795_000_000_000  # 2026-11-18


def uplink(
    vin: str = VINS[0],
    seq: int = 0,
    series: tuple[Series, ...] | None = None,
    base: int = BASE,
    privacy: Privacy = Privacy.NONE,
    **fields: object,
) -> bytes:
    """The CBOR bytes of an uplink (one speed series unless ``series`` is given)."""
    if series is None:
        series = (Series(1, -1, (0, 1000), (523, 530)),)
    return encode_uplink(
        Uplink(vin, seq, base, Trigger.PERIODIC, privacy, series, **fields)  # type: ignore[arg-type]
    )


def position(signal_id: int) -> Series:
    """One sample of a position signal."""
    return Series(signal_id, SIGNALS[signal_id].exp, (0,), (48_856_000,))


# -- both backends ----------------------------------------------------------------------

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="module", name="pg_url")
def pg_url_fixture() -> Iterator[str]:
    """A PostgreSQL database of this module's own, dropped afterwards."""
    with pg_database() as url:
        yield url


def empty_pg(url: str) -> None:
    """Drop every table of a PostgreSQL test database."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(params=BACKENDS, name="db")
def db_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new database other connections can open too: a SQLite file, an emptied PostgreSQL."""
    return target_of(request.param, tmp_path, request)


@pytest.fixture(params=BACKENDS)
def new_store(request: pytest.FixtureRequest) -> Iterator[Callable[..., Store]]:
    """A factory of fresh, empty stores of one backend (each new one empties PostgreSQL)."""
    opened: list[Store] = []

    def make(**options: object) -> Store:
        if request.param == "sqlite":
            store: Store = SqliteStore(":memory:", **options)  # type: ignore[arg-type]
        else:
            from gateway.store_pg import PostgresStore  # noqa: PLC0415

            url = request.getfixturevalue("pg_url")
            for earlier in opened:
                earlier.close()
            empty_pg(url)
            store = PostgresStore(url, **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(new_store: Callable[..., Store]) -> Store:
    """A fresh, empty store of each backend."""
    return new_store()


# -- schema -----------------------------------------------------------------------------


def test_migrations_from_empty_reach_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    with SqliteStore(path) as store:
        assert store.schema_version() == MIGRATIONS[-1].version
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")]
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert {"payloads", "vehicle_state", "vehicles", "rejected", "records", "deliveries"} <= tables
    # Version 3 packs the samples into ``payloads`` and keeps the last state per vehicle.
    assert not {"samples", "last_state"} & tables
    assert versions == [m.version for m in MIGRATIONS]
    assert mode == "wal"


def test_migrations_are_ordered_and_unique() -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == sorted(set(versions))
    assert versions[0] == 1


def test_reopening_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    with SqliteStore(path) as store:
        assert store.ingest(VINS[0], uplink(), BASE).outcome is Outcome.ACCEPTED
    with SqliteStore(path) as store:
        assert store.payload_count() == 1
        assert store.ingest(VINS[0], uplink(), BASE).outcome is Outcome.DUPLICATE


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="newer"):
        SqliteStore(path)


def test_an_unreadable_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError):
        SqliteStore(path)


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///rel/a.sqlite3") as store:
        assert store.schema_version() >= 1
    assert (tmp_path / "rel" / "a.sqlite3").is_file()
    with open_store(f"sqlite:///{tmp_path}/abs.sqlite3") as store:
        assert store.schema_version() >= 1
    assert (tmp_path / "abs.sqlite3").is_file()
    with open_store("sqlite://") as store:
        assert store.payload_count() == 0
    with open_store(tmp_path / "plain.sqlite3") as store:
        assert store.payload_count() == 0
    with pytest.raises(StorageError, match="unsupported"):
        open_store("mysql://localhost/x")


def test_a_foreign_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "flash.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    for read_only in (False, True):
        with pytest.raises(StorageError, match="not a tcusim gateway database"):
            SqliteStore(path, read_only=read_only)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flash.sqlite3"]


def test_read_only_reads_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    with SqliteStore(path) as store:
        store.ingest(VINS[0], uplink(), BASE)
    before = path.read_bytes()
    with SqliteStore(path, read_only=True) as reader:
        assert reader.payload_count() == 1
        assert reader.status(VINS[0]) is not None
        with pytest.raises(StorageError, match="read-only"):
            reader.ingest(VINS[0], uplink(seq=1), BASE)
    assert path.read_bytes() == before
    with SqliteStore(path) as store:
        assert store.payload_count() == 1


def test_read_only_sees_a_running_writer(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    with SqliteStore(path) as writer, SqliteStore(path, read_only=True) as reader:
        writer.ingest(VINS[0], uplink(), BASE)
        assert reader.payload_count() == 1


@pytest.mark.parametrize("target", ["none.sqlite3", "new/dir/g.sqlite3"])
def test_read_only_never_creates_a_database(tmp_path: Path, target: str) -> None:
    with pytest.raises(StorageError, match="no such database"):
        open_store(f"sqlite:///{tmp_path}/{target}", read_only=True)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StorageError, match="in-memory"):
        open_store("sqlite://", read_only=True)


def test_read_only_refuses_other_schema_versions(tmp_path: Path) -> None:
    newer, empty, partial = (tmp_path / n for n in ("newer.db", "empty.db", "partial.db"))
    SqliteStore(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="newer"):
        SqliteStore(newer, read_only=True)
    conn = sqlite3.connect(empty)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="older"):
        SqliteStore(empty, read_only=True)
    SqliteStore(partial).close()
    conn = sqlite3.connect(partial)
    conn.execute("DROP TABLE vehicle_state")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="no vehicle_state"):
        SqliteStore(partial, read_only=True)
    assert {"vehicles", "payloads", "vehicle_state", "rejected", "schema_version"} <= SCHEMA_TABLES


def test_a_file_that_is_not_a_database_is_refused_read_only(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="not a database"):
        SqliteStore(path, read_only=True)


def test_a_new_file_takes_the_stores_page_size_and_an_old_one_keeps_its_own(
    tmp_path: Path,
) -> None:
    new, old = tmp_path / "new.sqlite3", tmp_path / "old.sqlite3"
    with sqlite3.connect(old) as conn:  # a file made with SQLite's default page size
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
    stores = [SqliteStore(new), SqliteStore(old)]
    for path, store, size in zip((new, old), stores, (SqliteStore.PAGE_SIZE, 4096), strict=True):
        raw = uplink()
        message = Message(f"tcusim/v1/{VINS[0]}/up", raw, BASE, VINS[0], Kind.UPLINK)
        assert [r.outcome for r in store.ingest_many([message])] == [Outcome.ACCEPTED]
        store.close()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA page_size").fetchone() == (size,)
        with SqliteStore(path) as again:  # opened again: the same size, the data there
            assert [p.raw for p in again.payloads(VINS[0])] == [raw]
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA page_size").fetchone() == (size,)
    assert SqliteStore.PAGE_SIZE != 4096


# -- values -----------------------------------------------------------------------------


def test_sample_values_are_exact_and_typed() -> None:
    assert sample_value(123, -1) == 12.3
    assert isinstance(sample_value(123, -1), float)
    assert sample_value(5, 0) == 5
    assert isinstance(sample_value(5, 0), int)
    assert sample_value(7, 2) == 700
    assert isinstance(sample_value(7, 2), int)
    assert sample_value(-1, -2) == -0.01


def test_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1_795_000_000_123) == "2026-11-18T11:06:40.123Z"
    assert rfc3339(None) is None


# -- ingest -----------------------------------------------------------------------------


def test_accepted_payload_stores_samples_and_last_state(store: Store) -> None:
    series = (
        Series(1, -1, (0, 1000, 2000), (0, 523, 1000)),
        Series(5, 0, (500,), (2,)),
        Series(16, 0, (0, 0), (3, 4)),
    )
    result = store.ingest(VINS[0], uplink(seq=7, series=series, boot=2, evicted=1), BASE + 9)
    assert result.outcome is Outcome.ACCEPTED
    assert (result.vin, result.seq, result.n_samples) == (VINS[0], 7, 6)
    assert store.samples(VINS[0], 1) == [
        (1, BASE, 0.0),
        (1, BASE + 1000, 52.3),
        (1, BASE + 2000, 100.0),
    ]
    assert all(isinstance(v, float) for _s, _t, v in store.samples(VINS[0], 1))
    assert store.samples(VINS[0], 5) == [(5, BASE + 500, 2)]
    assert isinstance(store.samples(VINS[0], 5)[0][2], int)
    # Two samples at the same time: the later one in the series is the last state.
    assert store.last_state(VINS[0]) == {
        1: (BASE + 2000, 100.0),
        5: (BASE + 500, 2),
        16: (BASE, 4),
    }
    vehicle = store.vehicle(VINS[0])
    assert vehicle is not None
    assert (vehicle.max_seq, vehicle.boot, vehicle.evicted) == (7, 2, 1)
    assert vehicle.first_seen_ms == vehicle.last_seen_ms == BASE + 9


def test_last_state_is_not_overwritten_by_older_samples(store: Store) -> None:
    store.ingest(VINS[0], uplink(seq=2, series=(Series(1, -1, (60_000,), (900,)),)), 1)
    store.ingest(VINS[0], uplink(seq=1, series=(Series(1, -1, (0,), (100,)),)), 2)
    assert store.last_state(VINS[0]) == {1: (BASE + 60_000, 90.0)}
    assert store.sample_count(VINS[0]) == 2


def test_last_state_takes_the_later_arrival_on_a_tie_and_irregular_times(store: Store) -> None:
    first = (Series(1, -1, (0, 500, 900), (10, 20, 30)), Series(5, 0, (0, 7, 7), (1, 2, 3)))
    store.ingest(VINS[0], uplink(seq=1, series=first), 1)
    store.ingest(VINS[0], uplink(seq=0, series=(Series(1, -1, (900,), (40,)),)), 2)
    assert store.last_state(VINS[0]) == {1: (BASE + 900, 4.0), 5: (BASE + 7, 3)}
    assert store.samples(VINS[0], 5) == [(5, BASE, 1), (5, BASE + 7, 2), (5, BASE + 7, 3)]
    assert store.samples(VINS[0], 1) == [
        (1, BASE, 1.0),
        (1, BASE + 500, 2.0),
        (1, BASE + 900, 3.0),
        (1, BASE + 900, 4.0),  # the same time: the later arrival after the earlier
    ]


def test_a_reset_beyond_the_year_9999_is_a_box_reset(store: Store) -> None:
    store.ingest(VINS[0], uplink(seq=0, series=(), boot=1), 1)
    result = store.ingest(VINS[0], uplink(seq=0, series=(), boot=1, base=2**56 + BASE), 2)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, "box_reset")
    assert f"{2**56 + BASE} ms after the epoch" in result.detail


def test_duplicate_is_counted_not_stored(store: Store) -> None:
    raw = uplink(seq=3)
    assert store.ingest(VINS[0], raw, 1).outcome is Outcome.ACCEPTED
    assert store.ingest(VINS[0], raw, 2).outcome is Outcome.DUPLICATE
    assert store.payload_count() == 1
    assert store.sample_count() == 2
    assert store.counters()["duplicates"] == 1
    assert store.rejections() == []


def test_same_seq_with_other_bytes_is_a_kept_seq_conflict(store: Store) -> None:
    store.ingest(VINS[0], uplink(seq=3), 1)
    other = uplink(seq=3, series=(Series(2, 0, (0,), (800,)),))
    result = store.ingest(VINS[0], other, 2)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, "seq_conflict")
    (kept,) = store.rejections()
    assert (kept.reason, kept.raw, kept.vin) == ("seq_conflict", other, VINS[0])
    assert store.samples(VINS[0], 2) == []


def test_the_catalogs_position_scope_is_the_location() -> None:
    names = {SIGNALS[i].name for i in POSITION}
    assert names and all(n.startswith("Vehicle.CurrentLocation.") for n in names)


@pytest.mark.parametrize(
    ("privacy", "series", "outcome"),
    [
        (Privacy.NONE, (Series(1, -1, (0,), (1,)), position(min(POSITION))), Outcome.ACCEPTED),
        (Privacy.GEOLOCATION, (Series(1, -1, (0,), (1,)),), Outcome.ACCEPTED),
        (Privacy.GEOLOCATION, (Series(1, -1, (0,), (1,)), position(max(POSITION))), None),
        (Privacy.GEOLOCATION, tuple(position(i) for i in sorted(POSITION)), None),
        (Privacy.FULL, (), Outcome.ACCEPTED),
        (Privacy.FULL, (Series(1, -1, (0,), (1,)),), None),
        (Privacy.FULL, (position(min(POSITION)),), None),
    ],
)
def test_what_the_payloads_privacy_forbids_is_rejected(
    store: Store, privacy: Privacy, series: tuple[Series, ...], outcome: Outcome | None
) -> None:
    raw = uplink(seq=4, series=series, privacy=privacy)
    result = store.ingest(VINS[0], raw, 1)
    if outcome is not None:
        assert result.outcome is outcome
        return
    assert (result.outcome, result.reason, result.seq) == (
        Outcome.REJECTED,
        "privacy_violation",
        4,
    )
    (kept,) = store.rejections()
    assert (kept.reason, kept.raw) == ("privacy_violation", raw)
    assert privacy.name.capitalize() in kept.detail
    assert store.payload_count() == store.sample_count() == 0
    assert store.vehicle(VINS[0]) is None


def test_under_geolocation_each_position_signal_is_forbidden_alone(store: Store) -> None:
    for seq, sid in enumerate(sorted(POSITION)):
        raw = uplink(seq=seq, series=(position(sid),), privacy=Privacy.GEOLOCATION)
        assert store.ingest(VINS[0], raw, 1).reason == "privacy_violation", sid
    assert store.counters()["rejected.privacy_violation"] == len(POSITION)


@pytest.mark.parametrize(
    ("raw", "topic_vin", "reason"),
    [
        (b"", VINS[0], "not_cbor"),
        (b"\xff\x00garbage", VINS[0], "not_cbor"),
        (b"\xa0", VINS[0], "missing_key"),
        (uplink(vin=VINS[1]), VINS[0], "vin_mismatch"),
        (uplink(series=(Series(60000, 0, (0,), (1,)),)), VINS[0], "unknown_signal"),
        (uplink(seq=2**64 - 1), VINS[0], "out_of_range"),
        (uplink(series=(Series(1, 9, (0,), (2**62,)),)), VINS[0], "out_of_range"),
    ],
)
def test_rejections_are_kept_with_their_reason(
    store: Store, raw: bytes, topic_vin: str, reason: str
) -> None:
    result = store.ingest(topic_vin, raw, 42)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, reason)
    (kept,) = store.rejections()
    assert (kept.reason, kept.raw, kept.vin, kept.received_at_ms) == (
        reason,
        raw,
        topic_vin,
        42,
    )
    assert kept.topic == f"tcusim/v1/{topic_vin}/up"
    assert kept.detail or reason == "not_cbor"
    assert store.payload_count() == 0
    assert store.counters() == {
        "accepted": 0,
        "duplicates": 0,
        "presence": 0,
        "rejected": 1,
        f"rejected.{reason}": 1,
    }


def test_a_wiped_box_reusing_sequence_numbers_is_a_box_reset(store: Store) -> None:
    later = BASE + 86_400_000
    # The old flash: seq 0-1 in boot 1, seq 2 in boot 2.
    for seq, boot in ((0, 1), (1, 1), (2, 2)):
        store.ingest(VINS[0], uplink(seq=seq, base=BASE + seq, boot=boot), 10 + seq)
    # A wiped flash counts again from seq 0 in boot 1: other bytes, another base time.
    wiped = [uplink(seq=seq, base=later + seq, boot=1) for seq in range(4)]
    results = [store.ingest(VINS[0], raw, 100 + i) for i, raw in enumerate(wiped)]
    assert [r.reason for r in results] == ["box_reset"] * 3 + [None]
    assert results[-1].outcome is Outcome.ACCEPTED
    assert "boot 2" in results[2].detail and "wiped or replaced" in results[2].detail
    vehicle = store.vehicle(VINS[0])
    assert vehicle is not None
    assert (vehicle.reset_uploads, vehicle.reset_seen_ms) == (3, 100)
    assert store.counters()["rejected.box_reset"] == 3
    assert [r.raw for r in store.rejections()] == wiped[:3]
    status = store.status(VINS[0])
    assert status is not None
    assert status["box_reset"] == {"uploads": 3, "first_seen": rfc3339(100)}
    assert store.vehicle(VINS[1]) is None


def test_a_rewrite_of_the_same_upload_is_a_seq_conflict_not_a_reset(store: Store) -> None:
    # The box strips a queued upload when the privacy tightens: same boot and base time.
    series = (Series(1, -1, (0,), (1,)), position(min(POSITION)))
    store.ingest(VINS[0], uplink(seq=5, series=series, boot=3), 1)
    stricter = uplink(seq=5, series=series[:1], boot=3, privacy=Privacy.GEOLOCATION)
    assert store.ingest(VINS[0], stricter, 2).reason == "seq_conflict"
    # Under Full the rewrite also loses the upload's time: still the same upload.
    emptied = uplink(seq=5, series=(), boot=3, privacy=Privacy.FULL, base=999)
    assert store.ingest(VINS[0], emptied, 3).reason == "seq_conflict"
    vehicle = store.vehicle(VINS[0])
    assert vehicle is not None and vehicle.reset_uploads == 0
    status = store.status(VINS[0])
    assert status is not None and status["box_reset"] is None


def test_gaps_are_shown_next_to_the_boxs_evictions(store: Store) -> None:
    store.ingest(VINS[0], uplink(seq=0), 1)
    store.ingest(VINS[0], uplink(seq=3, evicted=1), 2)
    store.ingest(VINS[0], uplink(seq=6, evicted=2), 3)
    store.ingest(VINS[0], uplink(seq=5, evicted=1), 4)  # late: the count stays the newest
    status = store.status(VINS[0])
    assert status is not None
    assert status["evicted"] == 2
    assert status["gaps"] == {
        "count": 3,
        "ranges": [[1, 2], [4, 4]],
        "evicted_by_box": 2,
        "unexplained": 1,
    }
    store.ingest(VINS[1], uplink(vin=VINS[1], seq=2, evicted=5), 5)
    status = store.status(VINS[1])
    assert status is not None
    assert status["gaps"]["unexplained"] == 0  # never below zero


def test_bad_topic_is_rejected(store: Store) -> None:
    (r,) = store.ingest_many([Message("tcusim/v1//up", uplink(), 1, None, Kind.UNKNOWN)])
    assert r.reason == "bad_topic"
    assert store.rejections()[0].topic == "tcusim/v1//up"


def test_presence_updates_the_vehicle(store: Store) -> None:
    r = store.ingest_presence(VINS[0], b'{"state": "online", "boot": 4}', 10)
    assert r.outcome is Outcome.PRESENCE
    vehicle = store.vehicle(VINS[0])
    assert vehicle is not None
    assert (vehicle.presence, vehicle.boot, vehicle.presence_at_ms) == ("online", 4, 10)
    store.ingest_presence(VINS[0], json.dumps({"state": "offline", "boot": 4}).encode(), 20)
    vehicle = store.vehicle(VINS[0])
    assert vehicle is not None
    assert (vehicle.presence, vehicle.last_seen_ms) == ("offline", 20)
    assert store.counters()["presence"] == 2


@pytest.mark.parametrize(
    "raw", [b"{", b"[]", b'{"state": "asleep"}', b'{"state": "online", "boot": -1}', b"\xff"]
)
def test_bad_presence_is_rejected(store: Store, raw: bytes) -> None:
    r = store.ingest_presence(VINS[0], raw, 1)
    assert (r.outcome, r.reason) == (Outcome.REJECTED, "bad_presence")
    assert store.vehicle(VINS[0]) is None
    assert store.rejections()[0].raw == raw


def test_seq_gaps_from_zero_below_the_highest(store: Store) -> None:
    for seq in (1, 2, 5, 9):
        store.ingest(VINS[0], uplink(seq=seq), seq)
    assert store.seq_gaps(VINS[0]) == [0, 3, 4, 6, 7, 8]
    assert store.seq_gap_ranges(VINS[0]) == [(0, 0), (3, 4), (6, 8)]
    assert store.seq_gaps(VINS[0], limit=4) == [0, 3, 4, 6]
    assert store.seq_gaps(VINS[1]) == []


def test_status_is_readable(store: Store) -> None:
    series = (Series(1, -1, (0,), (523,)), Series(11, 0, (0,), (1,)))
    store.ingest(VINS[0], uplink(seq=0, series=series), BASE)
    store.ingest(VINS[0], uplink(seq=2), BASE + 1)
    store.ingest_presence(VINS[0], b'{"state": "online", "boot": 1}', BASE + 2)
    store.ingest(VINS[0], b"junk", BASE + 3)
    status = store.status(VINS[0])
    assert status is not None
    assert status["presence"] == "online"
    assert status["payloads"] == 2
    assert status["rejected"] == 1
    assert status["gaps"] == {
        "count": 1,
        "ranges": [[1, 1]],
        "evicted_by_box": 0,
        "unexplained": 1,
    }
    assert status["last_seen"] == rfc3339(BASE + 3 - 1)
    speed = next(s for s in status["signals"] if s["id"] == 1)
    assert speed["name"] == SIGNALS[1].name
    assert speed["unit"] == "km/h"
    assert speed["time"].endswith("Z")
    locks = next(s for s in status["signals"] if s["id"] == 11)
    assert locks["label"] == SIGNALS[11].enum[1]
    json.dumps(status)
    assert store.status(VINS[2]) is None


def test_a_failed_batch_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    with SqliteStore(path, timeout=0.05) as store, SqliteStore(path) as other:
        other._conn.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.raises(StorageError):
            store.ingest_many([Message("tcusim/v1/x/up", uplink(), 1, VINS[0])])
        other._conn.execute("ROLLBACK")
        assert store.payload_count() == 0
        assert store.rejections() == []


def test_64_bit_extremes_round_trip(store: Store) -> None:
    big = 2**63 - 1
    series = (Series(2, 0, (0,), (big,)), Series(3, 0, (0,), (-(2**63),)))
    raw = uplink(seq=big, series=series, base=0, boot=big, evicted=big)
    assert store.ingest(VINS[0], raw, big).outcome is Outcome.ACCEPTED
    assert {sid: v for sid, _t, v in store.samples(VINS[0])} == {2: big, 3: -(2**63)}
    (payload,) = store.payloads(VINS[0])
    assert (payload.seq, payload.boot, payload.received_at_ms, payload.raw) == (big, big, big, raw)
    assert store.seq_gap_ranges(VINS[0]) == [(0, big - 1)]


def test_a_rejection_in_a_batch_stands_alone(store: Store) -> None:
    too_big = uplink(seq=1, series=(Series(1, 9, (0,), (2**62,)),))
    results = store.ingest_many(
        Message(f"tcusim/v1/{VINS[0]}/up", raw, 1, VINS[0])
        for raw in (uplink(seq=0), too_big, uplink(seq=2), uplink(seq=0))
    )
    assert [r.reason for r in results] == [None, "out_of_range", None, None]
    assert [r.outcome for r in results][-1] is Outcome.DUPLICATE
    assert store.payload_count() == 2
    assert store.sample_count() == 4
    (kept,) = store.rejections()
    assert (kept.reason, kept.raw) == ("out_of_range", too_big)


def test_rejections_limit_and_vehicles(store: Store) -> None:
    for i in range(3):
        store.ingest(VINS[i], b"junk", i)
    store.ingest(VINS[1], uplink(vin=VINS[1]), 5)
    assert [r.vin for r in store.rejections(limit=2)] == [VINS[0], VINS[1]]
    assert [r.vin for r in store.rejections(VINS[2])] == [VINS[2]]
    assert [v.vin for v in store.vehicles()] == [VINS[1]]


# -- migrations and several writers, on both backends -------------------------------------


def target_of(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A new, empty database of ``backend`` that other connections can open too."""
    if backend == "sqlite":
        return str(tmp_path / "gateway.sqlite3")
    url: str = request.getfixturevalue("pg_url")
    empty_pg(url)
    return url


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_version_2_database_keeps_its_samples_through_migration_3(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = target_of(backend, tmp_path, request)
    if backend == "sqlite":
        old: type[Store] = type("V2", (SqliteStore,), {"_MIGRATIONS": MIGRATIONS[:2]})
    else:
        from gateway.store_pg import PG_MIGRATIONS, PostgresStore  # noqa: PLC0415

        old = type("V2", (PostgresStore,), {"_MIGRATIONS": PG_MIGRATIONS[:2]})
    raws = [
        uplink(seq=0, series=(Series(1, -1, (0, 1000), (523, 530)), Series(2, 0, (0,), (800,)))),
        uplink(seq=1, base=BASE + 60_000, series=(Series(1, -1, (0,), (600,)),)),
        uplink(vin=VINS[1], seq=0, series=(Series(5, 2, (0,), (7,)),)),
    ]
    with old(target) as v2:  # type: ignore[call-arg]
        assert v2.schema_version() == 2
        p = v2._P
        for raw in raws:
            u = decode_uplink(raw)
            v2._execute(
                "INSERT INTO payloads (vin, seq, boot, trigger, privacy, base_time_ms,"
                f" received_at_ms, n_samples, evicted, raw) VALUES ({', '.join([p] * 10)})",
                (u.vin, u.seq, 0, 0, 0, u.base_time_ms, 1, 1, 0, raw),
            )
    with open_store(target) as store:
        assert store.schema_version() == MIGRATIONS[-1].version == 3
        assert store.samples(VINS[0]) == [
            (1, BASE, 52.3),
            (1, BASE + 1000, 53.0),
            (1, BASE + 60_000, 60.0),
            (2, BASE, 800),
        ]
        assert store.last_state(VINS[0]) == {1: (BASE + 60_000, 60.0), 2: (BASE, 800)}
        assert store.samples(VINS[1]) == [(5, BASE, 700)]
        assert store.sample_count() == 5
        assert store.ingest(VINS[0], raws[1], 2).outcome is Outcome.DUPLICATE


# One writer process: opens the store, says so with a file, and once a start file exists
# ingests the messages of a JSON file in one shuffled order (writer 1 from the front, writer 2
# from the back) in batches of its own random sizes, and prints its outcome counts. After its
# first batch each writer waits for the other's: however the two are scheduled, both have
# written before the rest, which both hold, is raced for.
_WRITER = """
import json, random, sys, time
from pathlib import Path
from gateway.store import Message, open_store
target, messages, start, seed = sys.argv[1:]
batch = [(vin, bytes.fromhex(raw)) for vin, raw in json.loads(Path(messages).read_text())]
random.Random(0).shuffle(batch)
if seed == "2":
    batch.reverse()
rnd = random.Random(int(seed))
other = "2" if seed == "1" else "1"
counts = {}

def wait_for(path):
    deadline = time.monotonic() + 60
    while not Path(path).exists():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {path}")
        time.sleep(0.001)

with open_store(target) as store:
    Path(f"{start}.{seed}").touch()
    wait_for(start)
    i = 0
    while i < len(batch):
        n = rnd.randint(1, 8)
        chunk = [Message(f"tcusim/v1/{v}/up", r, 1, v) for v, r in batch[i : i + n]]
        for result in store.ingest_many(chunk):
            counts[result.outcome.value] = counts.get(result.outcome.value, 0) + 1
        if i == 0:
            Path(f"{start}.first.{seed}").touch()
            wait_for(f"{start}.first.{other}")
        i += n
print(json.dumps(counts))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_writers_in_two_processes_never_both_accept_an_upload(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = target_of(backend, tmp_path, request)
    SqliteStore(target).close() if backend == "sqlite" else open_store(target).close()
    messages = [(VINS[i % 3], uplink(vin=VINS[i % 3], seq=i // 3)) for i in range(600)]
    (tmp_path / "messages.json").write_text(json.dumps([(v, r.hex()) for v, r in messages]))
    start = tmp_path / "start"
    argv = [sys.executable, "-c", _WRITER, target, str(tmp_path / "messages.json"), str(start)]
    writers = [
        subprocess.Popen([*argv, seed], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in ("1", "2")
    ]
    deadline = time.monotonic() + 60
    while not all(Path(f"{start}.{seed}").exists() for seed in ("1", "2")):
        assert time.monotonic() < deadline and all(w.poll() is None for w in writers)
        time.sleep(0.01)
    start.touch()  # both have opened the database: they race from here
    outputs = [w.communicate(timeout=120) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [err for _out, err in outputs]
    counts = [json.loads(out) for out, _err in outputs]
    accepted = sum(c.get("accepted", 0) for c in counts)
    duplicates = sum(c.get("duplicate", 0) for c in counts)
    assert (accepted, duplicates) == (600, 600), counts
    assert all(c.get("accepted") for c in counts), counts  # both wrote, then raced
    with open_store(target) as store:
        assert store.payload_count() == 600
        assert store.sample_count() == 1200
        assert store.counters()["duplicates"] == 600
        assert all(store.seq_gaps(vin) == [] for vin in VINS)


# -- property: any sequence of valid, duplicate and corrupt payloads ---------------------

signal_ids = st.sampled_from(sorted(SIGNALS))


@st.composite
def series_st(draw: st.DrawFn, signal_id: int) -> Series:
    n = draw(st.integers(1, 4))
    start = draw(st.integers(-5_000, 60_000))
    gaps = draw(st.lists(st.integers(0, 2000), min_size=n - 1, max_size=n - 1))
    times = [start]
    for g in gaps:
        times.append(times[-1] + g)
    mantissas = draw(st.lists(st.integers(-(10**6), 10**6), min_size=n, max_size=n))
    return Series(signal_id, SIGNALS[signal_id].exp, tuple(times), tuple(mantissas))


@st.composite
def valid_op(draw: st.DrawFn) -> tuple[str, str, bytes]:
    vin = draw(st.sampled_from(VINS))
    seq = draw(st.integers(0, 6))
    ids = draw(st.lists(signal_ids, min_size=0, max_size=3, unique=True))
    series = tuple(draw(series_st(i)) for i in ids)
    # Few sequence numbers, boots and base times: duplicates, conflicts and resets are common.
    privacy = draw(st.sampled_from([Privacy.NONE, Privacy.NONE, Privacy.GEOLOCATION, Privacy.FULL]))
    boot = draw(st.integers(1, 2))
    base = BASE + draw(st.integers(0, 1))
    return (
        "valid",
        vin,
        uplink(vin=vin, seq=seq, series=series, base=base, privacy=privacy, boot=boot),
    )


@st.composite
def corrupt_op(draw: st.DrawFn) -> tuple[str, str, bytes]:
    vin = draw(st.sampled_from(VINS))
    good = draw(valid_op())[2]
    kind = draw(st.sampled_from(["truncate", "random", "flip", "mismatch", "unknown"]))
    if kind == "truncate":
        raw = good[: draw(st.integers(0, len(good) - 1))]
    elif kind == "random":
        raw = draw(st.binary(max_size=40))
    elif kind == "flip":
        i = draw(st.integers(0, len(good) - 1))
        raw = good[:i] + bytes([good[i] ^ draw(st.integers(1, 255))]) + good[i + 1 :]
    elif kind == "mismatch":
        other = next(v for v in VINS if v != vin)
        raw = uplink(vin=other, seq=draw(st.integers(0, 12)))
    else:
        raw = uplink(vin=vin, seq=draw(st.integers(0, 12)), series=(Series(999, 0, (0,), (1,)),))
    return ("corrupt", vin, raw)


# "repeat" redelivers an earlier message; "rewrite" sends an earlier upload's sequence number
# with other series (same boot and base time, as the box's privacy rewrite does); "reset"
# sends it from boot 1 a day later, as a box with a wiped flash does.
operations = st.lists(
    st.one_of(
        valid_op(),
        corrupt_op(),
        st.sampled_from([("repeat", "", b""), ("rewrite", "", b""), ("reset", "", b"")]),
    ),
    min_size=1,
    max_size=25,
)


def reuse(kind: str, raw: bytes) -> bytes | None:
    """An earlier upload's sequence number in another upload (``None`` if it does not decode)."""
    try:
        u = decode_uplink(raw)
    except PayloadError:
        return None
    if kind == "rewrite":
        series = u.series[:-1] if u.series else (Series(1, -1, (0,), (7,)),)
        return encode_uplink(dataclasses.replace(u, series=series))
    return encode_uplink(dataclasses.replace(u, boot=1, base_time_ms=u.base_time_ms + 86_400_000))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=operations, batch_sizes=st.lists(st.integers(1, 6), min_size=1, max_size=10))
def test_any_sequence_of_payloads_keeps_counts_consistent(
    new_store: Callable[..., Store], ops: list[tuple[str, str, bytes]], batch_sizes: list[int]
) -> None:
    # Resolve "repeat", "rewrite" and "reset" against an earlier message.
    messages: list[tuple[str, bytes]] = []
    for kind, vin, raw in ops:
        if kind in ("repeat", "rewrite", "reset"):
            if messages:
                earlier_vin, earlier = messages[len(messages) // 2]
                other = earlier if kind == "repeat" else reuse(kind, earlier)
                if other is not None:
                    messages.append((earlier_vin, other))
            continue
        messages.append((vin, raw))

    # The model: what the store must end up with, derived independently.
    stored: dict[tuple[str, int], Uplink] = {}
    raws: dict[tuple[str, int], bytes] = {}
    expected_samples: Counter[tuple[str, int, int, object]] = Counter()
    expected_reasons: Counter[str] = Counter()
    duplicates = 0
    outcomes: list[Outcome] = []
    for vin, raw in messages:
        try:
            u = decode_uplink(raw)
        except PayloadError as exc:
            expected_reasons[exc.reason] += 1
            outcomes.append(Outcome.REJECTED)
            continue
        biggest = max(
            [u.seq, u.base_time_ms, u.boot, u.evicted]
            + [u.base_time_ms + t for s in u.series for t in s.times]
            + [abs(sample_value(m, s.exp)) for s in u.series for m in s.mantissas if s.exp > 0]
        )
        ids = {s.signal_id for s in u.series}
        if u.vin != vin:
            reason = "vin_mismatch"
        elif not ids <= set(SIGNALS):
            reason = "unknown_signal"
        elif (u.privacy is Privacy.FULL and ids) or (
            u.privacy is Privacy.GEOLOCATION and ids & POSITION
        ):
            reason = "privacy_violation"
        elif biggest > 2**63 - 1:
            reason = "out_of_range"
        elif (vin, u.seq) in stored:
            first = stored[(vin, u.seq)]
            if raws[(vin, u.seq)] == raw:
                duplicates += 1
                outcomes.append(Outcome.DUPLICATE)
                continue
            same_run = first.boot == u.boot and (
                first.base_time_ms == u.base_time_ms or u.privacy > first.privacy
            )
            reason = "seq_conflict" if same_run else "box_reset"
        else:
            stored[(vin, u.seq)], raws[(vin, u.seq)] = u, raw
            for s in u.series:
                for t, m in zip(s.times, s.mantissas, strict=True):
                    expected_samples[
                        (vin, s.signal_id, u.base_time_ms + t, sample_value(m, s.exp))
                    ] += 1
            outcomes.append(Outcome.ACCEPTED)
            continue
        expected_reasons[reason] += 1
        outcomes.append(Outcome.REJECTED)

    with new_store() as store:
        results = []
        i = 0
        for n in batch_sizes * (len(messages) // len(batch_sizes) + 1):
            chunk = messages[i : i + n]
            if not chunk:
                break
            if len(chunk) == 1:
                results.append(store.ingest(chunk[0][0], chunk[0][1], i))
            else:
                results.extend(
                    store.ingest_many(Message(f"tcusim/v1/{v}/up", r, i, v) for v, r in chunk)
                )
            i += n

        assert [r.outcome for r in results] == outcomes
        counters = store.counters()
        assert counters["accepted"] == store.payload_count() == len(stored)
        assert counters["duplicates"] == duplicates
        assert counters["rejected"] == sum(expected_reasons.values())
        for reason, n in expected_reasons.items():
            assert counters[f"rejected.{reason}"] == n
        for vin in VINS:
            vehicle = store.vehicle(vin)
            resets = sum(1 for r in store.rejections(vin) if r.reason == "box_reset")
            assert (vehicle.reset_uploads if vehicle else 0) == resets
        assert counters["accepted"] + counters["duplicates"] + counters["rejected"] == len(messages)

        rejections = store.rejections()
        assert len(rejections) == counters["rejected"]
        assert all(r.reason for r in rejections)
        sent = Counter(raw for _v, raw in messages)
        assert all(sent[r.raw] > 0 for r in rejections)

        actual: Counter[tuple[str, int, int, object]] = Counter()
        for vin in VINS:
            for sid, t, value in store.samples(vin):
                actual[(vin, sid, t, value)] += 1
            accepted_seqs = {seq for (v, seq) in stored if v == vin}
            if accepted_seqs:
                assert store.seq_gaps(vin) == sorted(set(range(max(accepted_seqs))) - accepted_seqs)
                last = store.last_state(vin)
                for sid, (t, value) in last.items():
                    assert (vin, sid, t, value) in expected_samples
                    assert t == max(
                        tt for (v, s, tt, _x) in expected_samples if v == vin and s == sid
                    )
        assert actual == expected_samples
        assert store.sample_count() == sum(expected_samples.values())


def test_values_keep_their_type(store: Store) -> None:
    series = (Series(2, 0, (0,), (800,)), Series(1, -1, (0,), (10,)), Series(5, 2, (0,), (7,)))
    store.ingest(VINS[0], uplink(series=series), 1)
    values = {sid: v for sid, _t, v in store.samples(VINS[0])}
    assert values == {2: 800, 1: 1.0, 5: 700}
    assert [type(values[i]) for i in (2, 1, 5)] == [int, float, int]
    last = store.last_state(VINS[0])
    assert [type(last[i][1]) for i in (2, 1, 5)] == [int, float, int]
