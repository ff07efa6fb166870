"""The gateway's store on PostgreSQL: the same tables and answers as :class:`SqliteStore`.

``PostgresStore("postgresql://user@host:5432/dbname")`` (psycopg 3, synchronous) migrates
the database through :data:`PG_MIGRATIONS`, the same versions as the SQLite
:data:`~gateway.store.MIGRATIONS`, recorded in ``schema_version``. Raw payloads are
``BYTEA``; times, sequence numbers and counts ``BIGINT``. A sample's value is kept in one of
two columns, ``value_int`` (``BIGINT``) or ``value_real`` (``DOUBLE PRECISION``), so that
an integer comes back an ``int`` and a real a ``float``, as SQLite's untyped column does.

Ingest takes a transaction-scoped advisory lock: as with SQLite, one writer at a time, so two
gateways on one database cannot both accept the same ``(vin, seq)``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from can_dbc.catalog import Catalog, Scope, default_catalog
from firmware_sim.errors import PayloadError
from firmware_sim.payload import Privacy, Uplink, decode_uplink
from gateway.errors import StorageError
from gateway.store import (
    INT64_MAX,
    MIGRATIONS,
    SCHEMA_TABLES,
    IngestResult,
    Kind,
    Message,
    Migration,
    Outcome,
    Rejection,
    Store,
    StoredPayload,
    Value,
    _ids,
    _now_ms,
    _out_of_int64,
    _parse_presence,
    rfc3339,
    sample_value,
)

__all__ = ["PG_MIGRATIONS", "PostgresStore", "redact_url"]

# The key of the advisory lock writers and migrations take ("tcusim" in ASCII).
_LOCK_KEY = 0x746375_73696D

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
)

INT64_MIN = -(2**63)


def redact_url(url: str) -> str:
    """The URL without its password (``postgresql://user@host/db``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _split_value(value: Value) -> tuple[int | None, float | None]:
    """``(value_int, value_real)`` of a sample value: exactly one is set."""
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise OverflowError(f"integer {value} does not fit 64 bits")
        return value, None
    return None, float(value)


def _value(value_int: int | None, value_real: float | None) -> Value:
    return int(value_int) if value_int is not None else float(value_real or 0.0)


class PostgresStore(Store):
    """:class:`Store` on a PostgreSQL database (one writer at a time, by an advisory lock).

    ``url`` is a libpq URL (``postgresql://user[:password]@host[:port]/dbname``). A database
    holding other tables and no gateway schema is refused rather than extended.
    ``read_only=True`` opens a fully migrated gateway database in read-only transactions and
    refuses anything else. ``timeout`` is the connect timeout in seconds.
    """

    _P = "%s"

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
        self._catalog = catalog or default_catalog()
        self._known_signals = frozenset(s.id for s in self._catalog.signals)
        self._position_signals = frozenset(
            s.id for s in self._catalog.signals if s.scope is Scope.POSITION
        )
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
                self._migrate()
        except psycopg.Error as exc:
            self._conn.close()
            raise StorageError(f"{self._name}: cannot prepare the database: {exc}") from exc
        except StorageError:
            self._conn.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        """The signal catalog payloads are checked against."""
        return self._catalog

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            try:
                self._conn.execute("BEGIN")
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            except psycopg.Error as exc:
                self._rollback()
                raise StorageError(f"{self._name}: cannot start a transaction: {exc}") from exc
            try:
                yield self._conn
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

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except psycopg.Error as exc:
                raise StorageError(f"{self._name}: query failed: {exc}") from exc

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, list[Any]]:
        if self.read_only:
            raise StorageError(f"{self._name}: opened read-only, cannot write")
        try:
            with self._write() as conn:
                cursor = conn.execute(sql, params)
                rows = cursor.fetchall() if cursor.description is not None else []
                return cursor.rowcount, rows
        except psycopg.Error as exc:
            raise StorageError(f"{self._name}: write failed: {exc}") from exc

    # -- schema ----------------------------------------------------------------------------

    def _tables(self) -> set[str]:
        rows = self._conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
        return {str(r[0]) for r in rows}

    def _check_schema(self) -> None:
        """Refuse what is not a gateway database at the version this code knows."""
        tables = self._tables()
        if "schema_version" not in tables:
            raise StorageError(f"{self._name}: not a tcusim gateway database (no schema_version)")
        current, latest = self.schema_version(), PG_MIGRATIONS[-1].version
        if current > latest:
            raise StorageError(
                f"{self._name}: schema version {current} is newer than this tcusim knows ({latest})"
            )
        if current < latest:
            raise StorageError(
                f"{self._name}: schema version {current} is older than this tcusim's ({latest});"
                " tcusim gateway ingest migrates it"
            )
        missing = SCHEMA_TABLES - tables
        if missing:
            raise StorageError(
                f"{self._name}: not a tcusim gateway database (no {', '.join(sorted(missing))})"
            )

    def _refuse_foreign(self) -> None:
        """Refuse, before changing anything, a database that holds tables and no gateway schema."""
        tables = self._tables()
        foreign = tables - SCHEMA_TABLES
        if foreign and "schema_version" not in tables:
            raise StorageError(
                f"{self._name}: not a tcusim gateway database (it holds the tables"
                f" {', '.join(sorted(foreign))}); refusing to add the gateway's to it"
            )

    def _migrate(self) -> None:
        conn = self._conn
        latest = PG_MIGRATIONS[-1].version
        with conn.transaction():
            # Two stores opening one new database: the second waits, then finds it migrated.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
                " applied_at_ms BIGINT NOT NULL)"
            )
            current = self.schema_version()
            if current > latest:
                raise StorageError(
                    f"{self._name}: schema version {current} is newer than this tcusim knows"
                    f" ({latest})"
                )
            for migration in PG_MIGRATIONS:
                if migration.version <= current:
                    continue
                try:
                    with conn.transaction():
                        for statement in migration.statements:
                            conn.execute(statement)
                        conn.execute(
                            "INSERT INTO schema_version VALUES (%s, %s, %s)",
                            (migration.version, migration.description, _now_ms()),
                        )
                except psycopg.Error as exc:
                    raise StorageError(
                        f"{self._name}: migration {migration.version} failed: {exc}"
                    ) from exc

    def schema_version(self) -> int:
        """The highest applied migration (0 for an empty database)."""
        with self._lock:
            row = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # -- ingest ----------------------------------------------------------------------------

    def ingest_many(self, messages: Iterable[Message]) -> list[IngestResult]:
        """Ingest messages in one transaction; one result per message, in order."""
        batch = list(messages)
        if not batch:
            return []
        if self.read_only:
            raise StorageError(f"{self._name}: opened read-only, cannot store messages")
        try:
            with self._write() as conn:
                return [self._ingest_guarded(conn, m) for m in batch]
        except psycopg.Error as exc:
            raise StorageError(f"{self._name}: cannot store {len(batch)} messages: {exc}") from exc

    def _reject(
        self,
        conn: psycopg.Connection[Any],
        m: Message,
        reason: str,
        detail: str = "",
        seq: int | None = None,
    ) -> IngestResult:
        conn.execute(
            "INSERT INTO rejected (received_at_ms, topic, vin, reason, detail, raw)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (m.received_at_ms, m.topic, m.vin, reason, detail, bytes(m.payload)),
        )
        return IngestResult(Outcome.REJECTED, m.vin, seq, reason, detail)

    def _ingest_guarded(self, conn: psycopg.Connection[Any], m: Message) -> IngestResult:
        # A savepoint per message: should a payload the decoder accepted still be one the
        # database cannot hold, that message alone becomes a rejection, not the batch a failure.
        conn.execute("SAVEPOINT message")
        try:
            result = self._ingest_one(conn, m)
        except (ArithmeticError, ValueError, TypeError, psycopg.DataError) as exc:
            conn.execute("ROLLBACK TO SAVEPOINT message")
            result = self._reject(conn, m, "unstorable", f"{type(exc).__name__}: {exc}")
        conn.execute("RELEASE SAVEPOINT message")
        return result

    def _ingest_one(self, conn: psycopg.Connection[Any], m: Message) -> IngestResult:
        if m.vin is None or not m.vin or m.kind is Kind.UNKNOWN:
            return self._reject(conn, m, "bad_topic", f"not a tcusim/v1 topic: {m.topic!r}")
        if m.kind is Kind.PRESENCE:
            return self._presence(conn, m)
        try:
            uplink = decode_uplink(bytes(m.payload))
        except PayloadError as exc:
            return self._reject(conn, m, exc.reason, exc.detail)
        if uplink.vin != m.vin:
            return self._reject(
                conn, m, "vin_mismatch", f"payload VIN {uplink.vin!r} on a topic of {m.vin!r}"
            )
        unknown = sorted({s.signal_id for s in uplink.series} - self._known_signals)
        if unknown:
            ids = ", ".join(map(str, unknown))
            return self._reject(conn, m, "unknown_signal", f"signal ids {ids}", uplink.seq)
        forbidden = self._privacy_violation(uplink)
        if forbidden:
            return self._reject(conn, m, "privacy_violation", forbidden, uplink.seq)
        too_big = _out_of_int64(uplink)
        if too_big:
            return self._reject(conn, m, "out_of_range", too_big, uplink.seq)
        row = conn.execute(
            "SELECT raw, boot, base_time_ms, privacy FROM payloads WHERE vin = %s AND seq = %s",
            (m.vin, uplink.seq),
        ).fetchone()
        if row is not None:
            if bytes(row[0]) == bytes(m.payload):
                conn.execute(
                    "UPDATE vehicles SET duplicates = vehicles.duplicates + 1,"
                    " last_seen_ms = GREATEST(vehicles.last_seen_ms, %s) WHERE vin = %s",
                    (m.received_at_ms, m.vin),
                )
                return IngestResult(Outcome.DUPLICATE, m.vin, uplink.seq)
            return self._conflict(
                conn, m, uplink, boot=int(row[1]), base_time_ms=int(row[2]), privacy=int(row[3])
            )
        n_samples = self._store_uplink(conn, m, uplink)
        return IngestResult(Outcome.ACCEPTED, m.vin, uplink.seq, n_samples=n_samples)

    def _privacy_violation(self, uplink: Uplink) -> str:
        """What the payload carries that its own privacy setting forbids ("" when nothing)."""
        ids = {s.signal_id for s in uplink.series}
        if uplink.privacy is Privacy.FULL and ids:
            return f"privacy Full allows no data, the payload has {_ids(ids)}"
        located = ids & self._position_signals
        if uplink.privacy is Privacy.GEOLOCATION and located:
            return f"privacy Geolocation allows no position, the payload has {_ids(located)}"
        return ""

    def _conflict(
        self,
        conn: psycopg.Connection[Any],
        m: Message,
        uplink: Uplink,
        *,
        boot: int,
        base_time_ms: int,
        privacy: int,
    ) -> IngestResult:
        """Reject a payload whose sequence number is stored with other bytes, saying why.

        The same rule as :class:`~gateway.store.SqliteStore`: the same boot with the same base
        time or a stricter privacy is a rewrite (``seq_conflict``); otherwise ``box_reset``.
        """
        seq = uplink.seq
        same_upload = uplink.base_time_ms == base_time_ms or int(uplink.privacy) > privacy
        if uplink.boot == boot and same_upload:
            detail = f"sequence number {seq} already stored with other content"
            return self._reject(conn, m, "seq_conflict", detail, seq)
        detail = (
            f"sequence number {seq} already stored from boot {boot} (base time"
            f" {rfc3339(base_time_ms)}), this one is from boot {uplink.boot} (base time"
            f" {rfc3339(uplink.base_time_ms)}): the box's flash was wiped or replaced"
        )
        return self._reject(conn, m, "box_reset", detail, seq)

    def _store_uplink(self, conn: psycopg.Connection[Any], m: Message, uplink: Uplink) -> int:
        vin, seq, base = uplink.vin, uplink.seq, uplink.base_time_ms
        rows: list[tuple[str, int, int, int, int | None, float | None]] = []
        latest: dict[int, tuple[int, Value]] = {}
        for series in uplink.series:
            sid, exp = series.signal_id, series.exp
            for offset, mantissa in zip(series.times, series.mantissas, strict=True):
                t_ms, value = base + offset, sample_value(mantissa, exp)
                rows.append((vin, seq, sid, t_ms, *_split_value(value)))
                previous = latest.get(sid)
                if previous is None or t_ms >= previous[0]:
                    latest[sid] = (t_ms, value)
        conn.execute(
            "INSERT INTO payloads (vin, seq, boot, trigger, privacy, base_time_ms,"
            " received_at_ms, n_samples, evicted, raw)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                vin,
                seq,
                uplink.boot,
                int(uplink.trigger),
                int(uplink.privacy),
                base,
                m.received_at_ms,
                len(rows),
                uplink.evicted,
                bytes(m.payload),
            ),
        )
        with conn.cursor() as cur:
            if rows:
                cur.executemany(
                    "INSERT INTO samples (vin, seq, signal_id, t_ms, value_int, value_real)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    rows,
                )
            if latest:
                cur.executemany(
                    "INSERT INTO last_state (vin, signal_id, t_ms, value_int, value_real)"
                    " VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT (vin, signal_id) DO UPDATE SET t_ms = excluded.t_ms,"
                    " value_int = excluded.value_int, value_real = excluded.value_real"
                    " WHERE excluded.t_ms >= last_state.t_ms",
                    [
                        (vin, sid, t_ms, *_split_value(value))
                        for sid, (t_ms, value) in latest.items()
                    ],
                )
        conn.execute(
            "INSERT INTO vehicles (vin, first_seen_ms, last_seen_ms, boot, max_seq, evicted)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (vin) DO UPDATE SET"
            " first_seen_ms = LEAST(vehicles.first_seen_ms, excluded.first_seen_ms),"
            " last_seen_ms = GREATEST(vehicles.last_seen_ms, excluded.last_seen_ms),"
            " boot = CASE WHEN vehicles.max_seq IS NULL OR excluded.max_seq > vehicles.max_seq"
            "   THEN excluded.boot ELSE vehicles.boot END,"
            " evicted = CASE WHEN vehicles.max_seq IS NULL OR excluded.max_seq > vehicles.max_seq"
            "   THEN excluded.evicted ELSE vehicles.evicted END,"
            " max_seq = GREATEST(COALESCE(vehicles.max_seq, -1), excluded.max_seq)",
            (vin, m.received_at_ms, m.received_at_ms, uplink.boot, seq, uplink.evicted),
        )
        return len(rows)

    def _presence(self, conn: psycopg.Connection[Any], m: Message) -> IngestResult:
        try:
            state, boot = _parse_presence(bytes(m.payload))
        except PayloadError as exc:
            return self._reject(conn, m, exc.reason, exc.detail)
        conn.execute(
            "INSERT INTO vehicles (vin, first_seen_ms, last_seen_ms, presence, presence_at_ms,"
            " presence_updates, boot) VALUES (%s, %s, %s, %s, %s, 1, %s)"
            " ON CONFLICT (vin) DO UPDATE SET"
            " first_seen_ms = LEAST(vehicles.first_seen_ms, excluded.first_seen_ms),"
            " last_seen_ms = GREATEST(vehicles.last_seen_ms, excluded.last_seen_ms),"
            " presence = excluded.presence, presence_at_ms = excluded.presence_at_ms,"
            " presence_updates = vehicles.presence_updates + 1,"
            " boot = COALESCE(excluded.boot, vehicles.boot)",
            (m.vin, m.received_at_ms, m.received_at_ms, state, m.received_at_ms, boot),
        )
        return IngestResult(Outcome.PRESENCE, m.vin, detail=state or "")

    # -- queries ---------------------------------------------------------------------------

    def _count(self, table: str, vin: str | None) -> int:
        if vin is None:
            rows = self._query(f"SELECT COUNT(*) FROM {table}")
        else:
            rows = self._query(f"SELECT COUNT(*) FROM {table} WHERE vin = %s", (vin,))
        return int(rows[0][0])

    def payload_count(self, vin: str | None = None) -> int:
        """Accepted payloads (of one vehicle, or of all)."""
        return self._count("payloads", vin)

    def sample_count(self, vin: str | None = None) -> int:
        """Stored samples (of one vehicle, or of all)."""
        return self._count("samples", vin)

    def samples(self, vin: str, signal_id: int | None = None) -> list[tuple[int, int, Value]]:
        """``(signal_id, t_ms, value)`` of one vehicle, by signal then time (then arrival)."""
        sql = "SELECT signal_id, t_ms, value_int, value_real FROM samples WHERE vin = %s"
        params: list[Any] = [vin]
        if signal_id is not None:
            sql += " AND signal_id = %s"
            params.append(signal_id)
        rows = self._query(sql + " ORDER BY signal_id, t_ms, id", params)
        return [(int(r[0]), int(r[1]), _value(r[2], r[3])) for r in rows]

    def payloads(self, vin: str) -> list[StoredPayload]:
        """Every accepted payload of one vehicle, by sequence number."""
        rows = self._query(
            "SELECT seq, boot, trigger, privacy, base_time_ms, received_at_ms, n_samples, raw "
            "FROM payloads WHERE vin = %s ORDER BY seq",
            (vin,),
        )
        return [
            StoredPayload(
                seq=int(r[0]),
                boot=int(r[1]),
                trigger=int(r[2]),
                privacy=int(r[3]),
                base_time_ms=int(r[4]),
                received_at_ms=int(r[5]),
                n_samples=int(r[6]),
                raw=bytes(r[7]),
            )
            for r in rows
        ]

    def last_state(self, vin: str) -> dict[int, tuple[int, Value]]:
        """The latest ``(t_ms, value)`` of each signal of one vehicle."""
        rows = self._query(
            "SELECT signal_id, t_ms, value_int, value_real FROM last_state WHERE vin = %s",
            (vin,),
        )
        return {int(r[0]): (int(r[1]), _value(r[2], r[3])) for r in rows}

    def rejections(self, vin: str | None = None, limit: int | None = None) -> list[Rejection]:
        """Kept rejections, oldest first (of one vehicle, or of all)."""
        sql = "SELECT id, received_at_ms, topic, vin, reason, detail, raw FROM rejected"
        params: list[Any] = []
        if vin is not None:
            sql += " WHERE vin = %s"
            params.append(vin)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit if limit >= 0 else None)  # SQLite's LIMIT -1: no limit
        return [
            Rejection(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], bytes(r[6]))
            for r in self._query(sql, params)
        ]

    def __repr__(self) -> str:
        return f"<PostgresStore {self._name}>"
