"""The gateway's PostgreSQL store: the SQLite store's tests, run again on PostgreSQL.

Each test module run creates its own database (``tcusim_test_<random>``) on the local server
and drops it at the end; without a server on 127.0.0.1:5432 the tests are skipped. The
behaviour tests of ``test_store.py`` that use an in-memory SQLite store run here unchanged,
with each store they open being a :class:`PostgresStore` on a freshly emptied schema.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import test_store as sqlite_tests
from psycopg import sql

from firmware_sim.payload import Series
from gateway.errors import StorageError
from gateway.store import (
    MIGRATIONS,
    SCHEMA_TABLES,
    Message,
    Outcome,
    SqliteStore,
    Store,
)
from gateway.store_pg import PG_MIGRATIONS, PostgresStore, redact_url

SERVER = os.environ.get("TCUSIM_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
VINS, BASE, uplink = sqlite_tests.VINS, sqlite_tests.BASE, sqlite_tests.uplink


def _admin(dbname: str) -> psycopg.Connection[Any]:
    return psycopg.connect(f"{SERVER}/{dbname}", autocommit=True, connect_timeout=3)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A new, empty database for this module, dropped afterwards."""
    try:
        admin = _admin("postgres")
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server answers at {SERVER}: {exc}")
    name = f"tcusim_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"{SERVER}/{name}"
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _empty(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture
def fresh(pg_url: str) -> str:
    """The module's database, emptied."""
    _empty(pg_url)
    return pg_url


# -- the SQLite store's behaviour tests, on PostgreSQL -----------------------------------

SHARED = (
    "test_accepted_payload_stores_samples_and_last_state",
    "test_last_state_is_not_overwritten_by_older_samples",
    "test_duplicate_is_counted_not_stored",
    "test_same_seq_with_other_bytes_is_a_kept_seq_conflict",
    "test_what_the_payloads_privacy_forbids_is_rejected",
    "test_under_geolocation_each_position_signal_is_forbidden_alone",
    "test_rejections_are_kept_with_their_reason",
    "test_a_wiped_box_reusing_sequence_numbers_is_a_box_reset",
    "test_a_rewrite_of_the_same_upload_is_a_seq_conflict_not_a_reset",
    "test_gaps_are_shown_next_to_the_boxs_evictions",
    "test_bad_topic_is_rejected",
    "test_presence_updates_the_vehicle",
    "test_bad_presence_is_rejected",
    "test_seq_gaps_from_zero_below_the_highest",
    "test_status_is_readable",
    "test_any_sequence_of_payloads_keeps_counts_consistent",
)


def _cases() -> Iterator[Any]:
    """``(name, kwargs)`` for each shared test, one per parameter set of a parametrized one."""
    for name in SHARED:
        fn = getattr(sqlite_tests, name)
        marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
        if not marks:
            yield pytest.param(name, {}, id=name)
            continue
        (mark,) = marks
        argnames, argvalues = mark.args[0], mark.args[1]
        names = [argnames] if isinstance(argnames, str) else list(argnames)
        if len(names) == 1 and "," in names[0]:
            names = [n.strip() for n in names[0].split(",")]
        for i, values in enumerate(argvalues):
            row = (values,) if len(names) == 1 else tuple(values)
            yield pytest.param(name, dict(zip(names, row, strict=True)), id=f"{name}[{i}]")


def test_every_in_memory_sqlite_test_is_shared() -> None:
    """A new behaviour test in test_store.py on ``SqliteStore(":memory:")`` runs here too."""
    source = Path(sqlite_tests.__file__).read_text(encoding="utf-8")
    chunks = source.split("\ndef test_")[1:]
    in_memory = {"test_" + c.split("(", 1)[0] for c in chunks if 'SqliteStore(":memory:")' in c} - {
        "test_value_column_keeps_integers_and_reals_apart"
    }  # SQLite's typeof(): see below
    assert len(in_memory) > 10
    assert in_memory <= set(SHARED)


@pytest.mark.parametrize(("name", "kwargs"), list(_cases()))
def test_sqlite_behaviour_on_postgres(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, name: str, kwargs: dict[str, Any]
) -> None:
    opened: list[PostgresStore] = []

    def make(path: str, **options: Any) -> PostgresStore:
        assert path == ":memory:", path
        _empty(pg_url)
        store = PostgresStore(pg_url, **options)
        opened.append(store)
        return store

    monkeypatch.setattr(sqlite_tests, "SqliteStore", make)
    test: Callable[..., None] = getattr(sqlite_tests, name)
    try:
        test(**kwargs)
    finally:
        for store in opened:
            store.close()
    assert opened, f"{name} opened no store"


# -- one contract, both backends ----------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "sqlite":
        with SqliteStore(":memory:") as s:
            yield s
    else:
        with PostgresStore(request.getfixturevalue("fresh")) as s:
            yield s


def test_values_keep_their_type(store: Store) -> None:
    series = (Series(2, 0, (0,), (800,)), Series(1, -1, (0,), (10,)), Series(5, 2, (0,), (7,)))
    store.ingest(VINS[0], uplink(series=series), 1)
    values = {sid: v for sid, _t, v in store.samples(VINS[0])}
    assert values == {2: 800, 1: 1.0, 5: 700}
    assert [type(values[i]) for i in (2, 1, 5)] == [int, float, int]
    last = store.last_state(VINS[0])
    assert [type(last[i][1]) for i in (2, 1, 5)] == [int, float, int]


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


# -- PostgreSQL specifics -----------------------------------------------------------------


def _rows(url: str, query: str) -> list[Any]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def test_migrations_match_sqlites_and_are_recorded(fresh: str) -> None:
    assert [(m.version, m.description) for m in PG_MIGRATIONS] == [
        (m.version, m.description) for m in MIGRATIONS
    ]
    with PostgresStore(fresh) as store:
        assert store.schema_version() == MIGRATIONS[-1].version
    tables = {
        r[0] for r in _rows(fresh, "SELECT tablename FROM pg_tables WHERE schemaname='public'")
    }
    assert tables == SCHEMA_TABLES
    versions = [r[0] for r in _rows(fresh, "SELECT version FROM schema_version ORDER BY 1")]
    assert versions == [m.version for m in MIGRATIONS]
    kinds = dict(
        _rows(
            fresh,
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name = 'payloads'",
        )
    )
    assert (kinds["raw"], kinds["seq"], kinds["base_time_ms"]) == ("bytea", "bigint", "bigint")


def test_reopening_keeps_data_and_does_not_migrate_again(fresh: str) -> None:
    with PostgresStore(fresh) as store:
        assert store.ingest(VINS[0], uplink(), BASE).outcome is Outcome.ACCEPTED
    with PostgresStore(fresh) as store, PostgresStore(fresh) as second:
        assert store.payload_count() == second.payload_count() == 1
        assert store.ingest(VINS[0], uplink(), BASE).outcome is Outcome.DUPLICATE
        assert second.counters()["duplicates"] == 1
    assert len(_rows(fresh, "SELECT * FROM schema_version")) == len(MIGRATIONS)


def test_a_database_newer_than_the_code_is_refused(fresh: str) -> None:
    PostgresStore(fresh).close()
    with psycopg.connect(fresh) as conn:
        conn.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    with pytest.raises(StorageError, match="newer"):
        PostgresStore(fresh)
    with pytest.raises(StorageError, match="newer"):
        PostgresStore(fresh, read_only=True)


def test_a_foreign_database_is_refused_and_left_alone(fresh: str) -> None:
    with psycopg.connect(fresh) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(StorageError, match="not a tcusim gateway database"):
        PostgresStore(fresh)
    tables = {
        r[0] for r in _rows(fresh, "SELECT tablename FROM pg_tables WHERE schemaname='public'")
    }
    assert tables == {"customers"}


def test_read_only_reads_and_changes_nothing(fresh: str) -> None:
    with pytest.raises(StorageError, match="no schema_version"):
        PostgresStore(fresh, read_only=True)
    with PostgresStore(fresh) as writer:
        writer.ingest(VINS[0], uplink(), 1)
        with PostgresStore(fresh, read_only=True) as reader:
            assert reader.payload_count() == 1
            writer.ingest(VINS[0], uplink(seq=1), 2)
            assert reader.payload_count() == 2  # sees the running writer
            with pytest.raises(StorageError, match="read-only"):
                reader.ingest(VINS[0], uplink(seq=2), 3)
    assert _rows(fresh, "SELECT COUNT(*) FROM payloads") == [(2,)]


def test_the_password_is_never_shown() -> None:
    url = "postgresql://gw:s3cret@127.0.0.1:1/nowhere"
    assert redact_url(url) == "postgresql://gw@127.0.0.1:1/nowhere"
    assert redact_url("postgresql://127.0.0.1/x") == "postgresql://127.0.0.1/x"
    with pytest.raises(StorageError) as caught:
        PostgresStore(url, timeout=1)
    assert "s3cret" not in str(caught.value)
    assert "cannot open" in str(caught.value)


def test_a_batch_that_cannot_commit_stores_nothing(fresh: str) -> None:
    with PostgresStore(fresh) as store:
        store._conn.execute("SET statement_timeout = 200")
        with psycopg.connect(fresh) as other:
            # Another writer holds the store's lock for longer than the statement timeout.
            other.execute("SELECT pg_advisory_xact_lock(%s)", (0x746375_73696D,))
            with pytest.raises(StorageError):
                store.ingest(VINS[0], uplink(), 1)
        assert store.payload_count() == 0
        assert store.rejections() == []
        assert store.ingest(VINS[0], uplink(), 1).outcome is Outcome.ACCEPTED


def test_open_store_opens_postgresql_urls(pg_url: str) -> None:
    from gateway.store import open_store  # noqa: PLC0415
    from gateway.store_pg import PostgresStore  # noqa: PLC0415

    with open_store(pg_url) as store:
        assert isinstance(store, PostgresStore)
        assert store.schema_version() >= 1
