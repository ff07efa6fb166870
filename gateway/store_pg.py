"""The gateway's store on PostgreSQL: the SQLite store's tables, decisions and answers.

``PostgresStore("postgresql://user@host:5432/dbname")`` (psycopg 3, synchronous) is only a
dialect of :class:`~gateway.store.Store`: its placeholders, ``LEAST``/``GREATEST``, column
types (``BIGINT``, ``BYTEA``) and connection. The migrations, :data:`PG_MIGRATIONS`, have
the versions of the SQLite :data:`~gateway.store.MIGRATIONS`, recorded in
``schema_version``.

A write transaction takes a transaction-scoped advisory lock first: as with SQLite, one
writer at a time, so gateways in several processes on one database never both accept the
same ``(vin, seq)``: each looks the stored ones up under the lock (and ``UNIQUE (vin, seq)``
stands behind that).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

from can_dbc.catalog import Catalog
from gateway.errors import StorageError
from gateway.store import MIGRATIONS, Migration, Store, redact_url

__all__ = ["PG_MIGRATIONS", "PostgresStore", "redact_url"]

# The key of the advisory lock writers and migrations take ("tcusim" in ASCII).
_LOCK_KEY = 0x746375_73696D

# The types of the columns the ingest copies in (the others are BIGINT).
_COPY_TYPES = {
    **dict.fromkeys(("vin", "topic", "reason", "detail"), "text"),
    **dict.fromkeys(("raw", "series"), "bytea"),
}

PG_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        MIGRATIONS[0].description,
        (
            """CREATE TABLE vehicles (
                vin TEXT PRIMARY KEY,
                first_seen_ms BIGINT NOT NULL,
                last_seen_ms BIGINT NOT NULL,
                presence TEXT,
                presence_at_ms BIGINT,
                presence_updates BIGINT NOT NULL DEFAULT 0,
                boot BIGINT,
                max_seq BIGINT,
                evicted BIGINT NOT NULL DEFAULT 0,
                duplicates BIGINT NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE payloads (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                vin TEXT NOT NULL,
                seq BIGINT NOT NULL,
                boot BIGINT NOT NULL,
                trigger BIGINT NOT NULL,
                privacy BIGINT NOT NULL,
                base_time_ms BIGINT NOT NULL,
                received_at_ms BIGINT NOT NULL,
                n_samples BIGINT NOT NULL,
                evicted BIGINT NOT NULL,
                raw BYTEA NOT NULL,
                UNIQUE (vin, seq)
            )""",
            # ``id`` orders samples of the same time by arrival (SQLite's rowid).
            """CREATE TABLE samples (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                vin TEXT NOT NULL,
                seq BIGINT NOT NULL,
                signal_id BIGINT NOT NULL,
                t_ms BIGINT NOT NULL,
                value_int BIGINT,
                value_real DOUBLE PRECISION,
                CHECK ((value_int IS NULL) <> (value_real IS NULL))
            )""",
            "CREATE INDEX samples_by_signal ON samples (vin, signal_id, t_ms)",
            "CREATE INDEX samples_by_payload ON samples (vin, seq)",
            """CREATE TABLE last_state (
                vin TEXT NOT NULL,
                signal_id BIGINT NOT NULL,
                t_ms BIGINT NOT NULL,
                value_int BIGINT,
                value_real DOUBLE PRECISION,
                CHECK ((value_int IS NULL) <> (value_real IS NULL)),
                PRIMARY KEY (vin, signal_id)
            )""",
            """CREATE TABLE rejected (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                received_at_ms BIGINT NOT NULL,
                topic TEXT NOT NULL,
                vin TEXT,
                reason TEXT NOT NULL,
                detail TEXT NOT NULL DEFAULT '',
                raw BYTEA NOT NULL
            )""",
            "CREATE INDEX rejected_by_vin ON rejected (vin)",
        ),
    ),
    Migration(
        2,
        MIGRATIONS[1].description,
        (
            """CREATE TABLE records (
                kind TEXT NOT NULL,
                id TEXT NOT NULL,
                owner TEXT NOT NULL,
                vin TEXT,
                body TEXT NOT NULL,
                created_ms BIGINT NOT NULL,
                updated_ms BIGINT NOT NULL,
                PRIMARY KEY (kind, id)
            )""",
            "CREATE INDEX records_by_owner ON records (kind, owner, vin)",
            """CREATE TABLE deliveries (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                callback_id TEXT NOT NULL,
                target TEXT NOT NULL,
                body BYTEA NOT NULL,
                headers TEXT NOT NULL,
                created_ms BIGINT NOT NULL,
                next_attempt_ms BIGINT NOT NULL,
                attempts BIGINT NOT NULL DEFAULT 0,
                state TEXT NOT NULL DEFAULT 'pending',
                last_error TEXT NOT NULL DEFAULT '',
                done_ms BIGINT
            )""",
            "CREATE INDEX deliveries_due ON deliveries (state, next_attempt_ms)",
        ),
    ),
    Migration(
        3,
        MIGRATIONS[2].description,
        (
            # ``series`` and ``vehicle_state`` as in SQLite (see ``MIGRATIONS``).
            "ALTER TABLE payloads ADD COLUMN series BYTEA NOT NULL DEFAULT ''",
            # Kept out of line, uncompressed: compressing it costs the server more than the
            # rest of the ingest.
            "ALTER TABLE payloads ALTER COLUMN series SET STORAGE EXTERNAL",
            """CREATE TABLE vehicle_state (
                vin TEXT PRIMARY KEY,
                signals BYTEA NOT NULL
            )""",
            "DROP TABLE samples",
            "DROP TABLE last_state",
        ),
        rebuild_series=True,
    ),
)


class PostgresStore(Store):
    """:class:`Store` on a PostgreSQL database (one writer at a time, by an advisory lock).

    ``url`` is a libpq URL (``postgresql://user[:password]@host[:port]/dbname``). A database
    holding other tables and no gateway schema is refused rather than extended.
    ``read_only=True`` opens a fully migrated gateway database in read-only transactions and
    refuses anything else. ``timeout`` is the connect timeout in seconds.
    """

    _P = "%s"
    _MIN, _MAX = "LEAST", "GREATEST"
    _MIGRATIONS = PG_MIGRATIONS
    _UNSTORABLE = (*Store._UNSTORABLE, psycopg.DataError)

    def __init__(
        self,
        url: str,
        *,
        catalog: Catalog | None = None,
        timeout: float = 10.0,
        read_only: bool = False,
    ) -> None:
        self.url = url
        self.read_only = read_only
        self._name = redact_url(url)
        self._setup(catalog)
        self._lock = threading.RLock()
        try:
            self._conn = psycopg.connect(
                url, autocommit=True, connect_timeout=max(1, round(timeout))
            )
        except psycopg.Error as exc:
            raise StorageError(f"{self._name}: cannot open: {exc}") from exc
        try:
            if read_only:
                self._conn.execute("SET default_transaction_read_only = on")
                self._check_schema()
            else:
                self._refuse_foreign()
                with self._write() as tx:
                    # Two stores opening one new database: the second waits, then finds it
                    # migrated.
                    self._apply_migrations(tx)
        except psycopg.Error as exc:
            self._conn.close()
            raise StorageError(f"{self._name}: cannot prepare the database: {exc}") from exc
        except StorageError:
            self._conn.close()
            raise

    def _tables(self) -> set[str]:
        rows = self._query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        return {str(r[0]) for r in rows}

    # -- the connection --------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        if self.read_only:
            raise StorageError(f"{self._name}: opened read-only, cannot write")
        with self._lock:
            try:
                self._conn.execute("BEGIN")
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            except psycopg.Error as exc:
                self._rollback()
                raise StorageError(f"{self._name}: cannot start a transaction: {exc}") from exc
            try:
                yield self._conn
            except psycopg.Error as exc:
                self._rollback()
                raise StorageError(f"{self._name}: write failed: {exc}") from exc
            except BaseException:
                self._rollback()
                raise
            try:
                self._conn.execute("COMMIT")
            except psycopg.Error as exc:
                self._rollback()
                raise StorageError(f"{self._name}: cannot commit: {exc}") from exc

    def _rollback(self) -> None:
        # A broken connection has no transaction left to roll back.
        with suppress(psycopg.Error):
            self._conn.execute("ROLLBACK")

    def _tx_rows(
        self, tx: psycopg.Connection[Any], sql: str, params: Sequence[Any] = ()
    ) -> list[Any]:
        cursor = tx.execute(sql, params or None)
        return cursor.fetchall() if cursor.description is not None else []

    def _tx_many(
        self, tx: psycopg.Connection[Any], sql: str, rows: Sequence[Sequence[Any]]
    ) -> None:
        with tx.cursor() as cursor:
            cursor.executemany(sql, rows)

    def _tx_insert(
        self,
        tx: psycopg.Connection[Any],
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
    ) -> None:
        # COPY: one stream for the whole batch rather than a statement per row; binary, so
        # that bytes go as they are rather than escaped.
        if not rows:
            return
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        with tx.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types([_COPY_TYPES.get(column, "int8") for column in columns])
            for row in rows:
                copy.write_row(row)

    def _stored(
        self, tx: psycopg.Connection[Any], keys: set[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[Any, ...]]:
        # One statement whatever the number of keys: two arrays joined to the (vin, seq) index.
        vins, seqs = zip(*sorted(keys), strict=True)
        rows = self._tx_rows(
            tx,
            "SELECT p.vin, p.seq, p.raw, p.boot, p.base_time_ms, p.privacy FROM payloads AS p"
            " JOIN unnest(%s::text[], %s::bigint[]) AS k (vin, seq)"
            " ON p.vin = k.vin AND p.seq = k.seq",
            (list(vins), list(seqs)),
        )
        return {
            (vin, int(seq)): (bytes(raw), int(boot), int(base), int(privacy))
            for vin, seq, raw, boot, base, privacy in rows
        }

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params or None).fetchall()
            except psycopg.Error as exc:
                raise StorageError(f"{self._name}: query failed: {exc}") from exc

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, list[Any]]:
        with self._write() as conn:
            cursor = conn.execute(sql, params)
            rows = cursor.fetchall() if cursor.description is not None else []
            return cursor.rowcount, rows

    def __repr__(self) -> str:
        return f"<PostgresStore {self._name}>"
