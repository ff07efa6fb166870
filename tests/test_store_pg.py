"""The gateway's PostgreSQL store: what is PostgreSQL's own (the behaviour is in test_store.py).

Each module run creates its own database (``tcusim_test_<random>``) on the local server and
drops it at the end; without a server on 127.0.0.1:5432 the tests are skipped.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from test_store import BASE, VINS, empty_pg, pg_url_fixture, uplink  # noqa: F401 (a fixture)

from gateway.errors import StorageError
from gateway.store import MIGRATIONS, SCHEMA_TABLES, Outcome
from gateway.store_pg import PG_MIGRATIONS, PostgresStore, redact_url


@pytest.fixture
def fresh(pg_url: str) -> str:
    """The module's database, emptied."""
    empty_pg(pg_url)
    return pg_url


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
