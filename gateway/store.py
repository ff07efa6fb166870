"""The gateway's storage: uplinks, samples, last-known state, vehicles and rejections.

:class:`Store` is the small repository interface the gateway talks to; :class:`SqliteStore`
implements it on SQLite (WAL journal, one writer). The schema is versioned: ordered
migrations in :data:`MIGRATIONS`, the applied ones recorded in ``schema_version``.

Every inbound message ends as exactly one of: an accepted payload (stored once, with its
samples), a counted duplicate (same VIN, sequence number and bytes as a stored one), a
presence update, or a rejection kept with its reason and raw bytes. ``docs/gateway.md``
lists the reasons, among them ``privacy_violation`` (series the payload's own privacy setting
forbids) and ``box_reset`` (a sequence number reused by a box whose counters restarted).

``SqliteStore(path, read_only=True)`` opens an existing gateway database without writing
to it (no migration, no directory, no file): what ``tcusim gateway status`` uses.
"""

from __future__ import annotations

import enum
import json
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from can_dbc.catalog import Catalog, Scope, default_catalog
from firmware_sim.errors import PayloadError
from firmware_sim.payload import Privacy, Uplink, decode_uplink
from gateway.errors import StorageError

__all__ = [
    "DEFAULT_DB_PATH",
    "MIGRATIONS",
    "Delivery",
    "DeliveryState",
    "IngestResult",
    "Kind",
    "Message",
    "Migration",
    "Outcome",
    "PayloadRef",
    "Record",
    "Rejection",
    "SqliteStore",
    "Store",
    "Value",
    "Vehicle",
    "open_store",
    "rfc3339",
    "sample_value",
]

DEFAULT_DB_PATH = Path("tcusim-data") / "gateway.sqlite3"

Value = int | float

PRESENCE_STATES = frozenset({"online", "offline"})


def sample_value(mantissa: int, exp: int) -> Value:
    """``mantissa * 10**exp``: an int when ``exp >= 0``, else the nearest float."""
    if exp >= 0:
        scale: int = 10**exp
        return mantissa * scale
    # One correctly rounded division, not mantissa * 0.1 (which is not exact).
    divisor: int = 10**-exp
    return mantissa / divisor


def rfc3339(ms: int | None) -> str | None:
    """Epoch milliseconds as an RFC 3339 UTC time, e.g. ``2026-11-22T10:00:00.000Z``."""
    if ms is None:
        return None
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Kind(enum.StrEnum):
    """What a message's topic says it is."""

    UPLINK = "up"
    PRESENCE = "presence"
    UNKNOWN = "unknown"


class Outcome(enum.StrEnum):
    """What became of one inbound message."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    PRESENCE = "presence"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Message:
    """One inbound MQTT message, with what its topic says (``vin`` is ``None`` when unknown)."""

    topic: str
    payload: bytes
    received_at_ms: int
    vin: str | None
    kind: Kind = Kind.UPLINK


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The outcome of ingesting one message; ``reason`` is set for a rejection."""

    outcome: Outcome
    vin: str | None = None
    seq: int | None = None
    reason: str | None = None
    detail: str = ""
    n_samples: int = 0

    @property
    def ok(self) -> bool:
        """Whether the message was not rejected."""
        return self.outcome is not Outcome.REJECTED


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that was not accepted, kept with why."""

    id: int
    received_at_ms: int
    topic: str
    vin: str | None
    reason: str
    detail: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class StoredPayload:
    """One accepted upload as it arrived."""

    seq: int
    boot: int
    trigger: int
    privacy: int
    base_time_ms: int
    received_at_ms: int
    n_samples: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class Vehicle:
    """What the gateway knows about one box."""

    vin: str
    first_seen_ms: int
    last_seen_ms: int
    presence: str | None
    presence_at_ms: int | None
    boot: int | None
    max_seq: int | None
    evicted: int  # uploads the box evicted from its full queue since its flash was first written
    duplicates: int
    reset_uploads: int = 0  # uploads rejected as ``box_reset``: the box's counters restarted
    reset_seen_ms: int | None = None  # when the first of them arrived


@dataclass(frozen=True, slots=True)
class Record:
    """One API resource (a callback, a monitor, a remote action) kept as a JSON body."""

    kind: str
    id: str
    owner: str
    vin: str | None
    body: dict[str, Any]
    created_ms: int
    updated_ms: int


class DeliveryState(enum.StrEnum):
    """Where one queued webhook notification stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook notification in the delivery queue."""

    id: int
    callback_id: str
    target: str
    body: bytes
    headers: dict[str, str]
    created_ms: int
    next_attempt_ms: int
    attempts: int
    state: DeliveryState
    last_error: str
    done_ms: int | None


@dataclass(frozen=True, slots=True)
class PayloadRef:
    """An accepted payload with its store-wide arrival order (``id`` grows with each)."""

    id: int
    vin: str
    payload: StoredPayload


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema, applied in one transaction."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "payloads, samples, last state, vehicles, rejections",
        (
            """CREATE TABLE vehicles (
                vin TEXT PRIMARY KEY,
                first_seen_ms INTEGER NOT NULL,
                last_seen_ms INTEGER NOT NULL,
                presence TEXT,
                presence_at_ms INTEGER,
                presence_updates INTEGER NOT NULL DEFAULT 0,
                boot INTEGER,
                max_seq INTEGER,
                evicted INTEGER NOT NULL DEFAULT 0,
                duplicates INTEGER NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE payloads (
                id INTEGER PRIMARY KEY,
                vin TEXT NOT NULL,
                seq INTEGER NOT NULL,
                boot INTEGER NOT NULL,
                trigger INTEGER NOT NULL,
                privacy INTEGER NOT NULL,
                base_time_ms INTEGER NOT NULL,
                received_at_ms INTEGER NOT NULL,
                n_samples INTEGER NOT NULL,
                evicted INTEGER NOT NULL,
                raw BLOB NOT NULL,
                UNIQUE (vin, seq)
            )""",
            # ``value`` has no declared type: SQLite keeps an INTEGER an INTEGER and a REAL a REAL.
            """CREATE TABLE samples (
                vin TEXT NOT NULL,
                seq INTEGER NOT NULL,
                signal_id INTEGER NOT NULL,
                t_ms INTEGER NOT NULL,
                value
            )""",
            "CREATE INDEX samples_by_signal ON samples (vin, signal_id, t_ms)",
            "CREATE INDEX samples_by_payload ON samples (vin, seq)",
            """CREATE TABLE last_state (
                vin TEXT NOT NULL,
                signal_id INTEGER NOT NULL,
                t_ms INTEGER NOT NULL,
                value,
                PRIMARY KEY (vin, signal_id)
            ) WITHOUT ROWID""",
            """CREATE TABLE rejected (
                id INTEGER PRIMARY KEY,
                received_at_ms INTEGER NOT NULL,
                topic TEXT NOT NULL,
                vin TEXT,
                reason TEXT NOT NULL,
                detail TEXT NOT NULL DEFAULT '',
                raw BLOB NOT NULL
            )""",
            "CREATE INDEX rejected_by_vin ON rejected (vin)",
        ),
    ),
    Migration(
        2,
        "API records (callbacks, monitors, remotes) and the webhook delivery queue",
        (
            """CREATE TABLE records (
                kind TEXT NOT NULL,
                id TEXT NOT NULL,
                owner TEXT NOT NULL,
                vin TEXT,
                body TEXT NOT NULL,
                created_ms INTEGER NOT NULL,
                updated_ms INTEGER NOT NULL,
                PRIMARY KEY (kind, id)
            )""",
            "CREATE INDEX records_by_owner ON records (kind, owner, vin)",
            """CREATE TABLE deliveries (
                id INTEGER PRIMARY KEY,
                callback_id TEXT NOT NULL,
                target TEXT NOT NULL,
                body BLOB NOT NULL,
                headers TEXT NOT NULL,
                created_ms INTEGER NOT NULL,
                next_attempt_ms INTEGER NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                state TEXT NOT NULL DEFAULT 'pending',
                last_error TEXT NOT NULL DEFAULT '',
                done_ms INTEGER
            )""",
            "CREATE INDEX deliveries_due ON deliveries (state, next_attempt_ms)",
        ),
    ),
)


class Store(ABC):
    """The gateway's repository: what the ingest, the CLI and the API need of a database."""

    @abstractmethod
    def ingest_many(self, messages: Iterable[Message]) -> list[IngestResult]:
        """Ingest messages in one transaction; one result per message, in order."""

    def ingest(self, topic_vin: str, raw: bytes, received_at_ms: int) -> IngestResult:
        """Ingest one uplink payload received on the topic of ``topic_vin``."""
        topic = f"tcusim/v1/{topic_vin}/up"
        return self.ingest_many([Message(topic, raw, received_at_ms, topic_vin)])[0]

    def ingest_presence(self, topic_vin: str, raw: bytes, received_at_ms: int) -> IngestResult:
        """Record a presence message (``{"state": "online"|"offline", "boot": n}``)."""
        topic = f"tcusim/v1/{topic_vin}/presence"
        message = Message(topic, raw, received_at_ms, topic_vin, Kind.PRESENCE)
        return self.ingest_many([message])[0]

    @abstractmethod
    def schema_version(self) -> int:
        """The version of the applied schema."""

    @abstractmethod
    def payload_count(self, vin: str | None = None) -> int:
        """Accepted payloads (of one vehicle, or of all)."""

    @abstractmethod
    def sample_count(self, vin: str | None = None) -> int:
        """Stored samples (of one vehicle, or of all)."""

    @abstractmethod
    def payloads(self, vin: str) -> list[StoredPayload]:
        """Every accepted payload of one vehicle, by sequence number."""

    @abstractmethod
    def samples(self, vin: str, signal_id: int | None = None) -> list[tuple[int, int, Value]]:
        """``(signal_id, t_ms, value)`` of one vehicle, by signal then time."""

    @abstractmethod
    def last_state(self, vin: str) -> dict[int, tuple[int, Value]]:
        """The latest ``(t_ms, value)`` of each signal of one vehicle."""

    @abstractmethod
    def rejections(self, vin: str | None = None, limit: int | None = None) -> list[Rejection]:
        """Kept rejections, oldest first (of one vehicle, or of all)."""

    # The queries below are the same SQL on every backend; ``_P`` is the driver's parameter
    # placeholder.
    _P = "?"

    @abstractmethod
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a read-only query and return every row."""

    def counters(self) -> dict[str, int]:
        """``accepted``, ``duplicates``, ``presence``, ``rejected`` and ``rejected.<reason>``."""
        dup, presence = self._query(
            "SELECT COALESCE(SUM(duplicates), 0), COALESCE(SUM(presence_updates), 0) FROM vehicles"
        )[0]
        result = {
            "accepted": self.payload_count(),
            "duplicates": int(dup),
            "presence": int(presence),
            "rejected": 0,
        }
        for reason, n in self._query(
            "SELECT reason, COUNT(*) FROM rejected GROUP BY reason ORDER BY reason"
        ):
            result[f"rejected.{reason}"] = int(n)
            result["rejected"] += int(n)
        return result

    def seq_gap_ranges(self, vin: str) -> list[tuple[int, int]]:
        """Inclusive ranges of sequence numbers (from 0) below the highest that never arrived."""
        rows = self._query(
            "SELECT prev + 1, seq - 1 FROM ("
            " SELECT seq, LAG(seq, 1, CAST(-1 AS BIGINT)) OVER (ORDER BY seq) AS prev"
            f" FROM payloads WHERE vin = {self._P}) AS ordered WHERE seq > prev + 1 ORDER BY seq",
            (vin,),
        )
        return [(int(r[0]), int(r[1])) for r in rows]

    def seq_gaps(self, vin: str, limit: int = 100_000) -> list[int]:
        """Sequence numbers (from 0) below the highest received one that never arrived."""
        gaps: list[int] = []
        for first, last in self.seq_gap_ranges(vin):
            gaps.extend(range(first, min(last, first + limit - len(gaps) - 1) + 1))
            if len(gaps) >= limit:
                break
        return gaps

    _VEHICLE_COLUMNS = (
        "vin, first_seen_ms, last_seen_ms, presence, presence_at_ms, boot, max_seq,"
        " evicted, duplicates,"
        " (SELECT COUNT(*) FROM rejected r WHERE r.vin = vehicles.vin AND r.reason = 'box_reset'),"
        " (SELECT MIN(received_at_ms) FROM rejected r"
        "  WHERE r.vin = vehicles.vin AND r.reason = 'box_reset')"
    )

    def vehicle(self, vin: str) -> Vehicle | None:
        """The vehicle with this VIN, or ``None``."""
        sql = f"SELECT {self._VEHICLE_COLUMNS} FROM vehicles WHERE vin = {self._P}"
        rows = self._query(sql, (vin,))
        return Vehicle(*rows[0]) if rows else None

    def vehicles(self) -> list[Vehicle]:
        """Every known vehicle, by VIN."""
        rows = self._query(f"SELECT {self._VEHICLE_COLUMNS} FROM vehicles ORDER BY vin")
        return [Vehicle(*r) for r in rows]

    def status(self, vin: str) -> dict[str, Any] | None:
        """A readable last-known state of one vehicle (``None`` when unknown)."""
        vehicle = self.vehicle(vin)
        if vehicle is None:
            return None
        catalog = self.catalog
        signals = []
        for signal_id, (t_ms, value) in sorted(self.last_state(vin).items()):
            spec = catalog.get(signal_id)
            entry: dict[str, Any] = {
                "id": signal_id,
                "name": spec.name if spec else f"signal.{signal_id}",
                "value": value,
                "unit": spec.unit if spec else "",
                "time": rfc3339(t_ms),
            }
            if spec is not None and spec.enum and isinstance(value, int):
                entry["label"] = spec.enum.get(value)
            signals.append(entry)
        ranges = self.seq_gap_ranges(vin)
        missing = sum(last - first + 1 for first, last in ranges)
        return {
            "vin": vin,
            "presence": vehicle.presence,
            "presence_time": rfc3339(vehicle.presence_at_ms),
            "boot": vehicle.boot,
            "first_seen": rfc3339(vehicle.first_seen_ms),
            "last_seen": rfc3339(vehicle.last_seen_ms),
            "max_seq": vehicle.max_seq,
            "evicted": vehicle.evicted,
            "payloads": self.payload_count(vin),
            "samples": self.sample_count(vin),
            "duplicates": vehicle.duplicates,
            "rejected": len(self.rejections(vin)),
            # Side by side: the uploads the box itself evicted account for that many gaps;
            # the rest are on their way or were lost between the box and the database.
            "gaps": {
                "count": missing,
                "ranges": [list(r) for r in ranges],
                "evicted_by_box": vehicle.evicted,
                "unexplained": max(0, missing - vehicle.evicted),
            },
            "box_reset": (
                {"uploads": vehicle.reset_uploads, "first_seen": rfc3339(vehicle.reset_seen_ms)}
                if vehicle.reset_uploads
                else None
            ),
            "signals": signals,
        }

    # -- arrival order --------------------------------------------------------------------

    def payloads_since(self, after_id: int, limit: int = 1000) -> list[PayloadRef]:
        """Accepted payloads with an ``id`` above ``after_id``, in arrival order.

        Writers hold one lock per transaction, so ids are committed in order: a reader that
        remembers the last id it saw misses nothing.
        """
        p = self._P
        rows = self._query(
            "SELECT id, vin, seq, boot, trigger, privacy, base_time_ms, received_at_ms,"
            f" n_samples, raw FROM payloads WHERE id > {p} ORDER BY id LIMIT {p}",
            (after_id, limit),
        )
        return [
            PayloadRef(
                int(r[0]),
                str(r[1]),
                StoredPayload(
                    int(r[2]),
                    int(r[3]),
                    int(r[4]),
                    int(r[5]),
                    int(r[6]),
                    int(r[7]),
                    int(r[8]),
                    bytes(r[9]),
                ),
            )
            for r in rows
        ]

    # -- API records -------------------------------------------------------------------------

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, list[Any]]:
        """Run one statement in its own write transaction: ``(rowcount, returned rows)``."""

    def put_record(self, record: Record) -> None:
        """Insert or replace the record ``(kind, id)``."""
        p = self._P
        self._execute(
            "INSERT INTO records (kind, id, owner, vin, body, created_ms, updated_ms)"
            f" VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})"
            " ON CONFLICT (kind, id) DO UPDATE SET owner = excluded.owner, vin = excluded.vin,"
            " body = excluded.body, updated_ms = excluded.updated_ms",
            (
                record.kind,
                record.id,
                record.owner,
                record.vin,
                json.dumps(record.body, separators=(",", ":"), sort_keys=True),
                record.created_ms,
                record.updated_ms,
            ),
        )

    _RECORD_COLUMNS = "kind, id, owner, vin, body, created_ms, updated_ms"

    @staticmethod
    def _record(row: Sequence[Any]) -> Record:
        body = json.loads(row[4])
        return Record(str(row[0]), str(row[1]), str(row[2]), row[3], body, int(row[5]), int(row[6]))

    def get_record(self, kind: str, record_id: str) -> Record | None:
        """The record ``(kind, id)``, or ``None``."""
        p = self._P
        rows = self._query(
            f"SELECT {self._RECORD_COLUMNS} FROM records WHERE kind = {p} AND id = {p}",
            (kind, record_id),
        )
        return self._record(rows[0]) if rows else None

    def records(
        self, kind: str, *, owner: str | None = None, vin: str | None = None
    ) -> list[Record]:
        """Records of one kind (of one owner, of one vehicle), oldest first."""
        p = self._P
        sql = f"SELECT {self._RECORD_COLUMNS} FROM records WHERE kind = {p}"
        params: list[Any] = [kind]
        if owner is not None:
            sql += f" AND owner = {p}"
            params.append(owner)
        if vin is not None:
            sql += f" AND vin = {p}"
            params.append(vin)
        rows = self._query(sql + " ORDER BY created_ms, id", params)
        return [self._record(r) for r in rows]

    def delete_record(self, kind: str, record_id: str) -> bool:
        """Delete the record ``(kind, id)``; whether it existed."""
        p = self._P
        count, _ = self._execute(
            f"DELETE FROM records WHERE kind = {p} AND id = {p}", (kind, record_id)
        )
        return count > 0

    # -- webhook delivery queue ------------------------------------------------------------

    _DELIVERY_COLUMNS = (
        "id, callback_id, target, body, headers, created_ms, next_attempt_ms, attempts,"
        " state, last_error, done_ms"
    )

    @staticmethod
    def _delivery(row: Sequence[Any]) -> Delivery:
        return Delivery(
            int(row[0]),
            str(row[1]),
            str(row[2]),
            bytes(row[3]),
            dict(json.loads(row[4])),
            int(row[5]),
            int(row[6]),
            int(row[7]),
            DeliveryState(row[8]),
            str(row[9]),
            None if row[10] is None else int(row[10]),
        )

    def enqueue_delivery(
        self, callback_id: str, target: str, body: bytes, headers: dict[str, str], now_ms: int
    ) -> int:
        """Queue one notification, due at once; its id."""
        p = self._P
        _, rows = self._execute(
            "INSERT INTO deliveries (callback_id, target, body, headers, created_ms,"
            f" next_attempt_ms) VALUES ({p}, {p}, {p}, {p}, {p}, {p}) RETURNING id",
            (callback_id, target, body, json.dumps(headers, sort_keys=True), now_ms, now_ms),
        )
        return int(rows[0][0])

    def due_deliveries(self, now_ms: int, limit: int = 100) -> list[Delivery]:
        """Pending notifications due at ``now_ms``, the oldest first."""
        p = self._P
        rows = self._query(
            f"SELECT {self._DELIVERY_COLUMNS} FROM deliveries WHERE state = 'pending'"
            f" AND next_attempt_ms <= {p} ORDER BY next_attempt_ms, id LIMIT {p}",
            (now_ms, limit),
        )
        return [self._delivery(r) for r in rows]

    def deliveries(
        self, callback_id: str | None = None, state: DeliveryState | None = None
    ) -> list[Delivery]:
        """Queued notifications (of one callback, in one state), by id."""
        p = self._P
        sql = f"SELECT {self._DELIVERY_COLUMNS} FROM deliveries WHERE 1 = 1"
        params: list[Any] = []
        if callback_id is not None:
            sql += f" AND callback_id = {p}"
            params.append(callback_id)
        if state is not None:
            sql += f" AND state = {p}"
            params.append(str(state))
        return [self._delivery(r) for r in self._query(sql + " ORDER BY id", params)]

    def record_attempt(
        self,
        delivery_id: int,
        *,
        now_ms: int,
        state: DeliveryState,
        next_attempt_ms: int | None = None,
        error: str = "",
    ) -> None:
        """Record one delivery attempt: delivered, dropped, or pending until ``next_attempt_ms``."""
        if state is DeliveryState.PENDING and next_attempt_ms is None:
            raise StorageError("a pending delivery needs its next attempt time")
        p = self._P
        done = None if state is DeliveryState.PENDING else now_ms
        self._execute(
            f"UPDATE deliveries SET attempts = attempts + 1, state = {p}, last_error = {p},"
            f" next_attempt_ms = COALESCE({p}, next_attempt_ms), done_ms = {p} WHERE id = {p}",
            (str(state), error, next_attempt_ms, done, delivery_id),
        )

    @property
    @abstractmethod
    def catalog(self) -> Catalog:
        """The signal catalog payloads are checked against."""

    @abstractmethod
    def close(self) -> None:
        """Release the database."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _parse_presence(raw: bytes) -> tuple[str | None, int | None]:
    """``(state, boot)`` of a presence message (``None`` twice for a cleared retain)."""
    if not raw:
        return None, None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError("bad_presence", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PayloadError("bad_presence", "not a JSON object")
    state = doc.get("state")
    if state not in PRESENCE_STATES:
        raise PayloadError("bad_presence", f"state must be online or offline, got {state!r}")
    boot = doc.get("boot")
    if boot is not None and (not isinstance(boot, int) or isinstance(boot, bool) or boot < 0):
        raise PayloadError("bad_presence", f"boot must be a non-negative integer, got {boot!r}")
    return str(state), boot


INT64_MAX = 2**63 - 1


def _ids(signal_ids: Iterable[int]) -> str:
    ids = sorted(signal_ids)
    return ("signal " if len(ids) == 1 else "signals ") + ", ".join(map(str, ids))


def _out_of_int64(uplink: Uplink) -> str:
    """Why a decoded uplink does not fit SQLite's signed 64-bit integers ("" when it does)."""
    for name in ("seq", "base_time_ms", "boot", "evicted"):
        if getattr(uplink, name) > INT64_MAX:
            return f"{name} {getattr(uplink, name)} exceeds 2**63-1"
    for series in uplink.series:
        if series.times and uplink.base_time_ms + series.times[-1] > INT64_MAX:
            return f"signal {series.signal_id}: a sample time exceeds 2**63-1 ms"
        if series.exp > 0 and series.mantissas:
            biggest = max(abs(x) for x in series.mantissas) * 10**series.exp
            if biggest > INT64_MAX:
                return f"signal {series.signal_id}: a value exceeds 64 bits"
    return ""


# The tables the migrations create: a database without all of them is not the gateway's.
SCHEMA_TABLES = frozenset(
    re.findall(r"CREATE TABLE (\w+)", " ".join(s for m in MIGRATIONS for s in m.statements))
) | {"schema_version"}


class SqliteStore(Store):
    """:class:`Store` on one SQLite file (WAL journal; one writer at a time).

    ``path`` may be ``":memory:"``. ``synchronous`` is SQLite's setting: ``"NORMAL"`` (the
    default) survives a crash of the process, ``"FULL"`` also a power loss. The object may be
    shared between threads (calls are serialised); a second ``SqliteStore`` on the same file
    gives a reader that does not wait for the writer.

    A new file is created and migrated; a file holding other tables and no gateway schema is
    refused rather than extended. ``read_only=True`` opens an existing, fully migrated gateway
    database with SQLite's ``mode=ro`` and refuses anything else.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        catalog: Catalog | None = None,
        synchronous: str = "NORMAL",
        timeout: float = 10.0,
        read_only: bool = False,
    ) -> None:
        self.path = str(path)
        self.read_only = read_only
        self._catalog = catalog or default_catalog()
        self._known_signals = frozenset(s.id for s in self._catalog.signals)
        self._position_signals = frozenset(
            s.id for s in self._catalog.signals if s.scope is Scope.POSITION
        )
        self._lock = threading.RLock()
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise StorageError(
                f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}"
            )
        self._conn = self._connect_read_only(timeout) if read_only else self._connect(timeout)
        try:
            if read_only:
                self._conn.execute("PRAGMA query_only=ON")
                self._check_schema()
            else:
                self._refuse_foreign()
                if self.path != ":memory:":
                    self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
                self._migrate()
        except sqlite3.Error as exc:
            self._conn.close()
            raise StorageError(f"{self.path}: cannot prepare the database: {exc}") from exc
        except StorageError:
            self._conn.close()
            raise

    def _connect(self, timeout: float) -> sqlite3.Connection:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            return sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{self.path}: cannot open: {exc}") from exc

    def _connect_read_only(self, timeout: float) -> sqlite3.Connection:
        if self.path in ("", ":memory:"):
            raise StorageError("an in-memory database cannot be opened read-only: it is empty")
        file = Path(self.path)
        if not file.is_file():
            raise StorageError(f"{self.path}: no such database")
        try:
            return sqlite3.connect(
                f"{file.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{self.path}: cannot open: {exc}") from exc

    def _tables(self) -> set[str]:
        rows = self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        return {str(r[0]) for r in rows}

    def _check_schema(self) -> None:
        """Refuse what is not a gateway database at the version this code knows."""
        tables = self._tables()
        if "schema_version" not in tables:
            raise StorageError(f"{self.path}: not a tcusim gateway database (no schema_version)")
        current, latest = self.schema_version(), MIGRATIONS[-1].version
        if current > latest:
            raise StorageError(
                f"{self.path}: schema version {current} is newer than this tcusim knows ({latest})"
            )
        if current < latest:
            raise StorageError(
                f"{self.path}: schema version {current} is older than this tcusim's ({latest});"
                " tcusim gateway ingest migrates it"
            )
        missing = SCHEMA_TABLES - tables
        if missing:
            raise StorageError(
                f"{self.path}: not a tcusim gateway database (no {', '.join(sorted(missing))})"
            )

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
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: cannot start a transaction: {exc}") from exc
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StorageError(f"{self.path}: cannot commit: {exc}") from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: query failed: {exc}") from exc

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, list[Any]]:
        if self.read_only:
            raise StorageError(f"{self.path}: opened read-only, cannot write")
        try:
            with self._write() as conn:
                cursor = conn.execute(sql, params)
                rows = cursor.fetchall()
                return cursor.rowcount, rows
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: write failed: {exc}") from exc

    # -- schema ----------------------------------------------------------------------------

    def _refuse_foreign(self) -> None:
        """Refuse, before changing anything, a database that holds tables and no gateway schema."""
        tables = self._tables()
        foreign = tables - SCHEMA_TABLES
        if foreign and "schema_version" not in tables:
            raise StorageError(
                f"{self.path}: not a tcusim gateway database (it holds the tables"
                f" {', '.join(sorted(foreign))}); refusing to add the gateway's to it"
            )

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
            " applied_at_ms INTEGER NOT NULL)"
        )
        current = self.schema_version()
        latest = MIGRATIONS[-1].version
        if current > latest:
            raise StorageError(
                f"{self.path}: schema version {current} is newer than this tcusim knows ({latest})"
            )
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version VALUES (?, ?, ?)",
                    (migration.version, migration.description, _now_ms()),
                )
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise StorageError(
                    f"{self.path}: migration {migration.version} failed: {exc}"
                ) from exc
            conn.execute("COMMIT")

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
            raise StorageError(f"{self.path}: opened read-only, cannot store messages")
        try:
            with self._write() as conn:
                return [self._ingest_guarded(conn, m) for m in batch]
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot store {len(batch)} messages: {exc}") from exc

    def _reject(
        self,
        conn: sqlite3.Connection,
        m: Message,
        reason: str,
        detail: str = "",
        seq: int | None = None,
    ) -> IngestResult:
        conn.execute(
            "INSERT INTO rejected (received_at_ms, topic, vin, reason, detail, raw)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (m.received_at_ms, m.topic, m.vin, reason, detail, bytes(m.payload)),
        )
        return IngestResult(Outcome.REJECTED, m.vin, seq, reason, detail)

    def _ingest_guarded(self, conn: sqlite3.Connection, m: Message) -> IngestResult:
        # A savepoint per message: should a payload the decoder accepted still be one the
        # database cannot hold, that message alone becomes a rejection, not the batch a failure.
        conn.execute("SAVEPOINT message")
        try:
            result = self._ingest_one(conn, m)
        except (ArithmeticError, ValueError, TypeError) as exc:
            conn.execute("ROLLBACK TO message")
            result = self._reject(conn, m, "unstorable", f"{type(exc).__name__}: {exc}")
        conn.execute("RELEASE message")
        return result

    def _ingest_one(self, conn: sqlite3.Connection, m: Message) -> IngestResult:
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
            "SELECT raw, boot, base_time_ms, privacy FROM payloads WHERE vin = ? AND seq = ?",
            (m.vin, uplink.seq),
        ).fetchone()
        if row is not None:
            if bytes(row[0]) == bytes(m.payload):
                conn.execute(
                    "UPDATE vehicles SET duplicates = duplicates + 1,"
                    " last_seen_ms = MAX(last_seen_ms, ?) WHERE vin = ?",
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
        conn: sqlite3.Connection,
        m: Message,
        uplink: Uplink,
        *,
        boot: int,
        base_time_ms: int,
        privacy: int,
    ) -> IngestResult:
        """Reject a payload whose sequence number is stored with other bytes, saying why.

        A box with its flash fixes an upload's bytes when it packs it and rewrites a queued
        one only when the privacy tightens: it strips series and keeps its boot (under Full
        it also drops the upload's time). A rewrite of a stored upload, the same boot with
        the same base time or a stricter privacy, is a ``seq_conflict``; another boot or base
        time otherwise means the box's counters restarted: its flash was wiped or replaced
        (``box_reset``).
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

    def _store_uplink(self, conn: sqlite3.Connection, m: Message, uplink: Uplink) -> int:
        vin, seq, base = uplink.vin, uplink.seq, uplink.base_time_ms
        rows: list[tuple[str, int, int, int, Value]] = []
        latest: dict[int, tuple[int, Value]] = {}
        for series in uplink.series:
            sid, exp = series.signal_id, series.exp
            for offset, mantissa in zip(series.times, series.mantissas, strict=True):
                t_ms, value = base + offset, sample_value(mantissa, exp)
                rows.append((vin, seq, sid, t_ms, value))
                previous = latest.get(sid)
                if previous is None or t_ms >= previous[0]:
                    latest[sid] = (t_ms, value)
        conn.execute(
            "INSERT INTO payloads (vin, seq, boot, trigger, privacy, base_time_ms,"
            " received_at_ms, n_samples, evicted, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        conn.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?)", rows)
        conn.executemany(
            "INSERT INTO last_state VALUES (?, ?, ?, ?)"
            " ON CONFLICT (vin, signal_id) DO UPDATE SET t_ms = excluded.t_ms,"
            " value = excluded.value WHERE excluded.t_ms >= last_state.t_ms",
            [(vin, sid, t_ms, value) for sid, (t_ms, value) in latest.items()],
        )
        conn.execute(
            "INSERT INTO vehicles (vin, first_seen_ms, last_seen_ms, boot, max_seq, evicted)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (vin) DO UPDATE SET"
            " first_seen_ms = MIN(first_seen_ms, excluded.first_seen_ms),"
            " last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms),"
            " boot = CASE WHEN max_seq IS NULL OR excluded.max_seq > max_seq"
            "   THEN excluded.boot ELSE boot END,"
            " evicted = CASE WHEN max_seq IS NULL OR excluded.max_seq > max_seq"
            "   THEN excluded.evicted ELSE evicted END,"
            " max_seq = MAX(COALESCE(max_seq, -1), excluded.max_seq)",
            (vin, m.received_at_ms, m.received_at_ms, uplink.boot, seq, uplink.evicted),
        )
        return len(rows)

    def _presence(self, conn: sqlite3.Connection, m: Message) -> IngestResult:
        try:
            state, boot = _parse_presence(bytes(m.payload))
        except PayloadError as exc:
            return self._reject(conn, m, exc.reason, exc.detail)
        conn.execute(
            "INSERT INTO vehicles (vin, first_seen_ms, last_seen_ms, presence, presence_at_ms,"
            " presence_updates, boot) VALUES (?, ?, ?, ?, ?, 1, ?)"
            " ON CONFLICT (vin) DO UPDATE SET"
            " first_seen_ms = MIN(first_seen_ms, excluded.first_seen_ms),"
            " last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms),"
            " presence = excluded.presence, presence_at_ms = excluded.presence_at_ms,"
            " presence_updates = presence_updates + 1,"
            " boot = COALESCE(excluded.boot, boot)",
            (m.vin, m.received_at_ms, m.received_at_ms, state, m.received_at_ms, boot),
        )
        return IngestResult(Outcome.PRESENCE, m.vin, detail=state or "")

    # -- queries ---------------------------------------------------------------------------

    def _count(self, table: str, vin: str | None) -> int:
        if vin is None:
            rows = self._query(f"SELECT COUNT(*) FROM {table}")
        else:
            rows = self._query(f"SELECT COUNT(*) FROM {table} WHERE vin = ?", (vin,))
        return int(rows[0][0])

    def payload_count(self, vin: str | None = None) -> int:
        """Accepted payloads (of one vehicle, or of all)."""
        return self._count("payloads", vin)

    def sample_count(self, vin: str | None = None) -> int:
        """Stored samples (of one vehicle, or of all)."""
        return self._count("samples", vin)

    def samples(self, vin: str, signal_id: int | None = None) -> list[tuple[int, int, Value]]:
        """``(signal_id, t_ms, value)`` of one vehicle, by signal then time (then arrival)."""
        sql = "SELECT signal_id, t_ms, value FROM samples WHERE vin = ?"
        params: list[Any] = [vin]
        if signal_id is not None:
            sql += " AND signal_id = ?"
            params.append(signal_id)
        rows = self._query(sql + " ORDER BY signal_id, t_ms, rowid", params)
        return [(int(r[0]), int(r[1]), r[2]) for r in rows]

    def payloads(self, vin: str) -> list[StoredPayload]:
        """Every accepted payload of one vehicle, by sequence number."""
        rows = self._query(
            "SELECT seq, boot, trigger, privacy, base_time_ms, received_at_ms, n_samples, raw "
            "FROM payloads WHERE vin = ? ORDER BY seq",
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
        rows = self._query("SELECT signal_id, t_ms, value FROM last_state WHERE vin = ?", (vin,))
        return {int(r[0]): (int(r[1]), r[2]) for r in rows}

    def rejections(self, vin: str | None = None, limit: int | None = None) -> list[Rejection]:
        """Kept rejections, oldest first (of one vehicle, or of all)."""
        sql = "SELECT id, received_at_ms, topic, vin, reason, detail, raw FROM rejected"
        params: list[Any] = []
        if vin is not None:
            sql += " WHERE vin = ?"
            params.append(vin)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [
            Rejection(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], bytes(r[6]))
            for r in self._query(sql, params)
        ]

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path}>"


def open_store(target: str | Path, **options: Any) -> Store:
    """A store for a database URL (``sqlite:///relative``, ``sqlite:////absolute``) or a path.

    As in SQLAlchemy, ``sqlite:///x.db`` is relative and ``sqlite:////tmp/x.db`` absolute;
    ``sqlite://`` and ``sqlite:///:memory:`` are in memory. ``postgresql://...`` (or
    ``postgres://...``) is a :class:`~gateway.store_pg.PostgresStore`.
    """
    text = str(target)
    if "://" not in text:
        return SqliteStore(text, **options)
    scheme, _, rest = text.partition("://")
    if scheme in ("postgresql", "postgres"):
        from gateway.store_pg import PostgresStore  # noqa: PLC0415 (psycopg only when asked)

        return PostgresStore(text, **options)
    if scheme != "sqlite":
        raise StorageError(f"unsupported database URL {text!r} (sqlite:// or postgresql://)")
    if rest in ("", "/", "/:memory:"):
        return SqliteStore(":memory:", **options)
    if not rest.startswith("/"):
        raise StorageError(f"bad database URL {text!r}: expected sqlite:///PATH")
    return SqliteStore(rest[1:], **options)
