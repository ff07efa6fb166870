"""The gateway's storage: uplinks, samples, last-known state, vehicles and rejections.

:class:`Store` is the repository the gateway talks to. It holds every decision and query
once; :class:`SqliteStore` (WAL journal, one writer) and
:class:`~gateway.store_pg.PostgresStore` supply their dialect. :func:`open_store` opens
either from a path or URL. The schema is versioned: ordered migrations in
:data:`MIGRATIONS`, the applied ones recorded in ``schema_version``. An accepted upload is
one row, its samples packed in it (``payloads.series``); the last-known state is one row per
vehicle (``vehicle_state``), merged as uploads arrive. Writers on one database, in any
number of processes, hold its one-writer lock per transaction, so a ``(vin, seq)`` is never
accepted twice.

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
import pickle
import re
import signal
import sqlite3
import struct
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import add, le, mul, truediv
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Self
from urllib.parse import urlsplit, urlunsplit

from firmware_sim.errors import PayloadError
from firmware_sim.payload import Privacy, UplinkColumns, decode_uplink_columns, unpack_series
from gateway.errors import StorageError

if TYPE_CHECKING:  # the catalog module (and YAML) are imported when a store is made
    from can_dbc.catalog import Catalog

__all__ = [
    "DEFAULT_DB_PATH",
    "MIGRATIONS",
    "Checker",
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
    "Upload",
    "Value",
    "Vehicle",
    "Verdict",
    "decode_worker",
    "in_memory",
    "open_store",
    "read_frame",
    "redact_url",
    "rfc3339",
    "sample_value",
    "write_frame",
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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rfc3339(ms: int | None) -> str | None:
    """Epoch milliseconds as an RFC 3339 UTC time, e.g. ``2026-11-22T10:00:00.000Z``."""
    if ms is None:
        return None
    stamp = _EPOCH + timedelta(milliseconds=ms)  # exact (no float seconds)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _moment(ms: int) -> str:
    """``ms`` as RFC 3339, or as a number when no date holds it (beyond the year 9999)."""
    try:
        return str(rfc3339(ms))
    except (ValueError, OverflowError, OSError):
        return f"{ms} ms after the epoch"


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
    """One step of the schema, applied in one transaction.

    ``rebuild_series`` fills the payloads' packed samples and the vehicles' last state from
    the stored payloads' bytes after the statements ran (the step that replaced one row per
    sample by the samples packed in their payload's row).
    """

    version: int
    description: str
    statements: tuple[str, ...]
    rebuild_series: bool = False


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
    Migration(
        3,
        "samples packed in their payload's row; the last state one row per vehicle",
        (
            # ``series``: the payload's series packed, as ``firmware_sim.payload`` packs
            # them (``unpack_series`` reads them): their signal ids, exps, first and last
            # times, counts and values (a value is ``mantissa * 10**exp``).
            "ALTER TABLE payloads ADD COLUMN series BLOB NOT NULL DEFAULT x''",
            # ``signals``: k signal ids, the k times of their latest samples (ms since the
            # epoch) and the k sequence numbers of the payloads whose series end with them,
            # as little-endian signed 64-bit integers.
            """CREATE TABLE vehicle_state (
                vin TEXT PRIMARY KEY,
                signals BLOB NOT NULL
            ) WITHOUT ROWID""",
            "DROP TABLE samples",
            "DROP TABLE last_state",
        ),
        rebuild_series=True,
    ),
)


def _schema_tables(migrations: Sequence[Migration]) -> frozenset[str]:
    """The tables the migrations leave, ``schema_version`` among them."""
    tables = {"schema_version"}
    for migration in migrations:
        for statement in migration.statements:
            created = re.match(r"\s*CREATE TABLE (\w+)", statement)
            dropped = re.match(r"\s*DROP TABLE (\w+)", statement)
            if created:
                tables.add(created.group(1))
            elif dropped:
                tables.discard(dropped.group(1))
    return frozenset(tables)


# The tables the migrations create: a database without all of them is not the gateway's.
SCHEMA_TABLES = _schema_tables(MIGRATIONS)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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


def _ids(signal_ids: Iterable[int]) -> str:
    ids = sorted(signal_ids)
    return ("signal " if len(ids) == 1 else "signals ") + ", ".join(map(str, ids))


def _out_of_int64(columns: UplinkColumns) -> str:
    """Why a decoded uplink does not fit signed 64-bit integers ("" when it does)."""
    for name in ("seq", "base_time_ms", "boot", "evicted"):
        if getattr(columns, name) > INT64_MAX:
            return f"{name} {getattr(columns, name)} exceeds 2**63-1"
    base, t_lasts, exps = columns.base_time_ms, columns.t_lasts, columns.exps
    if not exps or (base + max(t_lasts) <= INT64_MAX and max(exps) <= 0):
        return ""
    for (sid, exp, _times, mantissas), t_last in zip(
        unpack_series(columns.packed), t_lasts, strict=True
    ):
        if base + t_last > INT64_MAX:
            return f"signal {sid}: a sample time exceeds 2**63-1 ms"
        if exp > 0:
            own = list(mantissas)
            if max(-min(own), *own) * 10**exp > INT64_MAX:
                return f"signal {sid}: a value exceeds 64 bits"
    return ""


class _State:
    """The last-known state of one vehicle: per signal the time of its latest sample and the
    sequence number of the payload whose series ends with it."""

    __slots__ = ("latest", "seqs", "times")

    def __init__(self, blob: bytes | None = None) -> None:
        self.times: dict[int, int] = {}
        self.seqs: dict[int, int] = {}
        if blob:
            k = len(blob) // 24
            ints = struct.unpack(f"<{3 * k}q", blob)
            sids = ints[:k]
            self.times = dict(zip(sids, ints[k : 2 * k], strict=True))
            self.seqs = dict(zip(sids, ints[2 * k :], strict=True))
        self.latest = max(self.times.values(), default=INT64_MIN)  # the latest time of all

    def merge(self, seq: int, sids: Sequence[int], times: Sequence[int]) -> None:
        """Take the series of payload ``seq``, arrived after everything merged so far, ending
        at ``times``: a signal's state is the sample with the latest time, on a tie the later
        arrival's."""
        if not times:
            return
        known = self.times
        if min(times) >= self.latest or all(
            map(le, map(known.get, sids, repeat(INT64_MIN)), times)
        ):
            known.update(zip(sids, times, strict=True))
            self.seqs.update(zip(sids, repeat(seq)))
        else:
            for sid, t in zip(sids, times, strict=True):
                if t >= known.get(sid, INT64_MIN):
                    known[sid] = t
                    self.seqs[sid] = seq
        self.latest = max(self.latest, *times)

    def blob(self) -> bytes:
        times = self.times
        return struct.pack(f"<{3 * len(times)}q", *times, *times.values(), *self.seqs.values())


def _last_samples(columns: UplinkColumns) -> tuple[int, Sequence[int], list[int]]:
    """What :meth:`_State.merge` takes of an upload: where each series ends."""
    times = list(map(add, columns.t_lasts, repeat(columns.base_time_ms)))
    return columns.seq, columns.signal_ids, times


def _per_vehicle(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Consecutive accepted uploads' ``vehicles`` upserts as one per vehicle, to the same end.

    A row is ``(vin, first_seen, last_seen, boot, seq, evicted)``; applied in turn, they keep
    the earliest and latest times and the boot and evictions of the highest ``seq`` (a VIN's
    accepted ``seq`` are distinct): so does the one row of each VIN this returns.
    """
    merged: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        vin, first, last, _boot, seq, _evicted = row
        earlier = merged.get(vin)
        if earlier is None:
            merged[vin] = row
            continue
        newer = row if seq > earlier[4] else earlier
        merged[vin] = (vin, min(first, earlier[1]), max(last, earlier[2]), *newer[3:])
    return list(merged.values())


def _time_of(sample: tuple[int, int, Value]) -> int:
    return sample[1]


def samples_of(
    rows: Iterable[tuple[int, bytes]], signal_id: int | None = None
) -> list[tuple[int, int, Value]]:
    """``(signal_id, t_ms, value)`` of :meth:`Store.packed_series` rows (of one signal), by
    signal then time (then arrival)."""
    by_signal: dict[int, list[tuple[int, int, Value]]] = {}
    for base, packed in rows:
        for sid, exp, times, mantissas in unpack_series(packed, signal_id):
            values: Iterable[Value]
            if exp >= 0:
                values = map(mul, mantissas, repeat(10**exp))
            else:
                # One correctly rounded division each, as :func:`sample_value`.
                values = map(truediv, mantissas, repeat(10**-exp))
            found = by_signal.setdefault(sid, [])
            found += zip(repeat(sid), map(add, times, repeat(base)), values)
    out: list[tuple[int, int, Value]] = []
    for sid in sorted(by_signal):
        found = by_signal[sid]
        found.sort(key=_time_of)  # stable: samples of one time stay in arrival order
        out += found
    return out


def _stored_payload(r: Sequence[Any]) -> StoredPayload:
    return StoredPayload(
        seq=int(r[0]),
        boot=int(r[1]),
        trigger=int(r[2]),
        privacy=int(r[3]),
        base_time_ms=int(r[4]),
        received_at_ms=int(r[5]),
        n_samples=int(r[6]),
        raw=bytes(r[7]),
    )


# The columns the ingest writes, in the order of its rows.
PAYLOAD_COLUMNS = (
    *("vin", "seq", "boot", "trigger", "privacy", "base_time_ms", "received_at_ms"),
    *("n_samples", "evicted", "raw", "series"),
)
REJECTED_COLUMNS = ("received_at_ms", "topic", "vin", "reason", "detail", "raw")


class Upload(NamedTuple):
    """What the write transaction needs of a decoded and checked upload.

    ``last_times`` are the absolute times (ms) of each series' last sample, in the order
    of ``signal_ids``.
    """

    vin: str
    seq: int
    boot: int
    trigger: int
    privacy: int
    base_time_ms: int
    n_samples: int
    evicted: int
    packed: bytes
    signal_ids: tuple[int, ...]
    last_times: list[int]


# What :meth:`Checker.check` decides of one message: ``(reason, detail, seq, upload,
# presence)``; a reason, or neither an upload nor a presence, is a rejection.
Verdict = tuple[str, str, int | None, Upload | None, tuple[str | None, int | None] | None]


def _upload(columns: UplinkColumns) -> Upload:
    return Upload(
        columns.vin,
        columns.seq,
        columns.boot,
        int(columns.trigger),
        int(columns.privacy),
        columns.base_time_ms,
        columns.n_samples,
        columns.evicted,
        columns.packed,
        columns.signal_ids,
        _last_samples(columns)[2],
    )


class Checker:
    """The checks of inbound messages that need no database, against a catalog's signals.

    Picklable, and cheap to pickle: a gateway may run it in worker processes
    (:meth:`check_many` takes and gives plain data) and hand the verdicts to
    :meth:`Store.ingest_checked`.
    """

    __slots__ = ("known_signals", "position_signals")

    def __init__(self, known_signals: frozenset[int], position_signals: frozenset[int]) -> None:
        self.known_signals = known_signals
        self.position_signals = position_signals

    def __reduce__(self) -> tuple[Any, ...]:
        return Checker, (self.known_signals, self.position_signals)

    def check_many(self, items: Iterable[tuple[str, bytes, str | None, str]]) -> list[Verdict]:
        """The verdicts of ``(topic, payload, topic_vin, kind)`` items, in order."""
        check = self.check
        return [check(topic, payload, vin, Kind(kind)) for topic, payload, vin, kind in items]

    def check(self, topic: str, payload: bytes, vin: str | None, kind: Kind) -> Verdict:
        """Everything that decides a message's fate without the database."""
        try:
            return self._check(topic, payload, vin, kind)
        except (ArithmeticError, ValueError, TypeError) as exc:
            return ("unstorable", f"{type(exc).__name__}: {exc}", None, None, None)

    def _check(self, topic: str, payload: bytes, vin: str | None, kind: Kind) -> Verdict:
        if vin is None or not vin or kind is Kind.UNKNOWN:
            return ("bad_topic", f"not a tcusim/v1 topic: {topic!r}", None, None, None)
        if kind is Kind.PRESENCE:
            try:
                return ("", "", None, None, _parse_presence(bytes(payload)))
            except PayloadError as exc:
                return (exc.reason, exc.detail, None, None, None)
        try:
            uplink = decode_uplink_columns(bytes(payload))
        except PayloadError as exc:
            return (exc.reason, exc.detail, None, None, None)
        if uplink.vin != vin:
            detail = f"payload VIN {uplink.vin!r} on a topic of {vin!r}"
            return ("vin_mismatch", detail, None, None, None)
        seq = uplink.seq
        unknown = sorted(set(uplink.signal_ids) - self.known_signals)
        if unknown:
            detail = f"signal ids {', '.join(map(str, unknown))}"
            return ("unknown_signal", detail, seq, None, None)
        forbidden = self._privacy_violation(uplink)
        if forbidden:
            return ("privacy_violation", forbidden, seq, None, None)
        too_big = _out_of_int64(uplink)
        if too_big:
            return ("out_of_range", too_big, seq, None, None)
        return ("", "", seq, _upload(uplink), None)

    def _privacy_violation(self, uplink: UplinkColumns) -> str:
        """What the payload carries that its own privacy setting forbids ("" when nothing)."""
        if uplink.privacy is Privacy.NONE:
            return ""
        ids = set(uplink.signal_ids)
        if uplink.privacy is Privacy.FULL and ids:
            return f"privacy Full allows no data, the payload has {_ids(ids)}"
        located = ids & self.position_signals
        if uplink.privacy is Privacy.GEOLOCATION and located:
            return f"privacy Geolocation allows no position, the payload has {_ids(located)}"
        return ""


# The frames between a gateway and its decoding processes: a length (u64), then the bytes.
_FRAME = struct.Struct("<Q")


def read_frame(stream: IO[bytes]) -> bytes | None:
    """One length-prefixed frame; ``None`` at the end of the stream."""
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    body = stream.read(size)
    return body if len(body) == size else None


def write_frame(stream: IO[bytes], data: bytes) -> None:
    """Write one length-prefixed frame and flush it."""
    stream.write(_FRAME.pack(len(data)))
    stream.write(data)
    stream.flush()


def decode_worker() -> None:
    """The loop of a gateway's decoding process (``Gateway(decode_processes=...)``).

    It reads a pickled :class:`Checker` from stdin, then batches of pickled
    ``(topic, payload, topic_vin, kind)`` items, and answers each on stdout with its
    verdicts (a string if the checks raised), until stdin closes.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the gateway's to handle
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # the pipe is for the verdicts alone
    first = read_frame(stdin)
    if first is None:
        return
    checker = pickle.loads(first)
    if not isinstance(checker, Checker):
        raise SystemExit("tcusim decode worker: expected a Checker")
    write_frame(stdout, b"ready")
    while (frame := read_frame(stdin)) is not None:
        reply: object
        try:
            reply = checker.check_many(pickle.loads(frame))
        except Exception as exc:
            reply = f"{type(exc).__name__}: {exc}"
        write_frame(stdout, pickle.dumps(reply, pickle.HIGHEST_PROTOCOL))


@dataclass(slots=True)
class _Checked:
    """One message after the checks that need no database: a rejection, presence or upload."""

    message: Message
    reason: str = ""  # set: rejected with this reason
    detail: str = ""
    seq: int | None = None
    uplink: Upload | None = None
    presence: tuple[str | None, int | None] | None = None


class _Batch:
    """The rows one transaction writes, gathered in message order."""

    def __init__(self) -> None:
        self.results: list[IngestResult] = []
        self.payloads: list[tuple[Any, ...]] = []
        self.states: dict[str, list[tuple[Any, ...]]] = {}  # vin: last samples, by arrival
        self.rejected: list[tuple[Any, ...]] = []
        self.vehicles: list[tuple[str, tuple[Any, ...]]] = []  # (statement, parameters)


class Store(ABC):
    """The gateway's repository: what the ingest, the CLI and the API need of a database.

    The base class holds every decision and every query; a backend supplies its dialect: the
    parameter placeholder (``_P``), the two-argument ``_MIN``/``_MAX`` functions, its
    connection (``_query``, ``_execute``, ``_write`` and the ``_tx_*`` calls inside a write
    transaction), the errors that make one message unstorable, and its migrations.
    """

    _P = "?"
    _MIN, _MAX = "MIN", "MAX"
    _MIGRATIONS: tuple[Migration, ...] = MIGRATIONS
    # Errors of one message the database cannot hold: that message becomes ``unstorable``.
    _UNSTORABLE: tuple[type[BaseException], ...] = (ArithmeticError, ValueError, TypeError)
    read_only: bool
    _name: str
    _catalog: Catalog

    def _setup(self, catalog: Catalog | None) -> None:
        """Take the catalog and build the statements of this dialect (once per store)."""
        # Here rather than at the top: a decoding process imports this module, not a catalog.
        from can_dbc.catalog import Scope, default_catalog  # noqa: PLC0415

        self._catalog = catalog or default_catalog()
        self._known_signals = frozenset(s.id for s in self._catalog.signals)
        self._checker = Checker(
            self._known_signals,
            frozenset(s.id for s in self._catalog.signals if s.scope is Scope.POSITION),
        )
        self._duplicate_sql = self._duplicate_statement()
        self._uplink_vehicle_sql = self._uplink_vehicle_statement()
        self._presence_sql = self._presence_statement()

    @property
    def catalog(self) -> Catalog:
        """The signal catalog payloads are checked against."""
        return self._catalog

    # -- the backend's connection -------------------------------------------------------------

    @abstractmethod
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a read-only query and return every row."""

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, list[Any]]:
        """Run one statement in its own write transaction: ``(rowcount, returned rows)``."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Any]:
        """A write transaction, one writer at a time on the database; yields its handle."""

    @abstractmethod
    def _tx_rows(self, tx: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a statement inside :meth:`_write`; the rows it returns."""

    @abstractmethod
    def _tx_many(self, tx: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per parameter row inside :meth:`_write`."""

    @abstractmethod
    def _tables(self) -> set[str]:
        """The names of the database's tables."""

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

    # -- schema ----------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The highest applied migration (0 for an empty database)."""
        rows = self._query("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def _check_schema(self) -> None:
        """Refuse what is not a gateway database at the version this code knows."""
        tables = self._tables()
        if "schema_version" not in tables:
            raise StorageError(f"{self._name}: not a tcusim gateway database (no schema_version)")
        current, latest = self.schema_version(), self._MIGRATIONS[-1].version
        self._refuse_newer(current)
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

    def _refuse_newer(self, current: int) -> None:
        latest = self._MIGRATIONS[-1].version
        if current > latest:
            raise StorageError(
                f"{self._name}: schema version {current} is newer than this tcusim knows ({latest})"
            )

    def _refuse_foreign(self) -> None:
        """Refuse, before changing anything, a database that holds tables and no gateway schema."""
        tables = self._tables()
        foreign = tables - SCHEMA_TABLES - {"samples", "last_state"}
        if foreign and "schema_version" not in tables:
            raise StorageError(
                f"{self._name}: not a tcusim gateway database (it holds the tables"
                f" {', '.join(sorted(foreign))}); refusing to add the gateway's to it"
            )

    def _apply_migrations(self, tx: Any) -> None:
        """Apply the missing migrations inside the write transaction ``tx``."""
        self._tx_rows(
            tx,
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
            " applied_at_ms BIGINT NOT NULL)",
        )
        rows = self._tx_rows(tx, "SELECT MAX(version) FROM schema_version")
        current = int(rows[0][0]) if rows[0][0] is not None else 0
        self._refuse_newer(current)
        p = self._P
        for migration in self._MIGRATIONS:
            if migration.version <= current:
                continue
            for statement in migration.statements:
                self._tx_rows(tx, statement)
            if migration.rebuild_series:
                self._rebuild_series(tx)
            self._tx_rows(
                tx,
                f"INSERT INTO schema_version VALUES ({p}, {p}, {p})",
                (migration.version, migration.description, _now_ms()),
            )

    def _rebuild_series(self, tx: Any) -> None:
        """Pack the accepted payloads' samples from their bytes; merge the last states."""
        p = self._P
        update = f"UPDATE payloads SET n_samples = {p}, series = {p} WHERE id = {p}"
        rows = self._tx_rows(tx, "SELECT id, vin, raw FROM payloads ORDER BY id")
        packed: list[tuple[Any, ...]] = []
        states: dict[str, list[tuple[Any, ...]]] = {}
        for payload_id, vin, raw in rows:
            columns = decode_uplink_columns(bytes(raw))
            packed.append((columns.n_samples, columns.packed, payload_id))
            states.setdefault(vin, []).append(_last_samples(columns))
            if len(packed) >= 1000:
                self._tx_many(tx, update, packed)
                packed.clear()
        if packed:
            self._tx_many(tx, update, packed)
        self._merge_states(tx, states)

    # -- ingest ----------------------------------------------------------------------------

    def ingest(self, topic_vin: str, raw: bytes, received_at_ms: int) -> IngestResult:
        """Ingest one uplink payload received on the topic of ``topic_vin``."""
        topic = f"tcusim/v1/{topic_vin}/up"
        return self.ingest_many([Message(topic, raw, received_at_ms, topic_vin)])[0]

    def ingest_presence(self, topic_vin: str, raw: bytes, received_at_ms: int) -> IngestResult:
        """Record a presence message (``{"state": "online"|"offline", "boot": n}``)."""
        topic = f"tcusim/v1/{topic_vin}/presence"
        message = Message(topic, raw, received_at_ms, topic_vin, Kind.PRESENCE)
        return self.ingest_many([message])[0]

    @property
    def checker(self) -> Checker:
        """The checks :meth:`ingest_many` runs before its transaction (:meth:`ingest_checked`)."""
        return self._checker

    def ingest_many(self, messages: Iterable[Message]) -> list[IngestResult]:
        """Ingest messages in one transaction; one result per message, in order.

        Decoding and the checks that need no database happen before the transaction; inside
        it, under the database's one-writer lock, the stored ``(vin, seq)`` are looked up
        and every row is written in a few statements. Should one message still be more than
        the database can hold, the batch is retried message by message, each behind its own
        savepoint, and that message alone becomes an ``unstorable`` rejection.
        """
        messages = list(messages)
        check = self._checker.check
        return self.ingest_checked(
            messages, [check(m.topic, m.payload, m.vin, m.kind) for m in messages]
        )

    def ingest_checked(
        self, messages: Sequence[Message], verdicts: Sequence[Verdict]
    ) -> list[IngestResult]:
        """:meth:`ingest_many` of messages whose :attr:`checker` verdicts are given, in order.

        The verdicts must be this store's checker's (or an equal one's) for these messages:
        what a gateway's decoding processes computed.
        """
        if len(messages) != len(verdicts):
            raise ValueError(f"{len(messages)} messages and {len(verdicts)} verdicts")
        checked = [_Checked(m, *v) for m, v in zip(messages, verdicts, strict=True)]
        if not checked:
            return []
        if self.read_only:
            raise StorageError(f"{self._name}: opened read-only, cannot store messages")
        with self._write() as tx:
            self._tx_rows(tx, "SAVEPOINT batch")
            try:
                results = self._apply(tx, checked)
            except self._UNSTORABLE:
                self._tx_rows(tx, "ROLLBACK TO SAVEPOINT batch")
                results = [self._apply_alone(tx, c) for c in checked]
            self._tx_rows(tx, "RELEASE SAVEPOINT batch")
            return results

    def _apply_alone(self, tx: Any, checked: _Checked) -> IngestResult:
        self._tx_rows(tx, "SAVEPOINT message")
        try:
            (result,) = self._apply(tx, [checked])
        except self._UNSTORABLE as exc:
            self._tx_rows(tx, "ROLLBACK TO SAVEPOINT message")
            unstorable = _Checked(checked.message, "unstorable", f"{type(exc).__name__}: {exc}")
            (result,) = self._apply(tx, [unstorable])
        self._tx_rows(tx, "RELEASE SAVEPOINT message")
        return result

    @staticmethod
    def _conflict(uplink: Upload, boot: int, base_time_ms: int, privacy: int) -> tuple[str, str]:
        """``(reason, detail)`` for a payload whose sequence number is stored with other bytes.

        A box with its flash fixes an upload's bytes when it packs it and rewrites a queued
        one only when the privacy tightens: it strips series and keeps its boot (under Full
        it also drops the upload's time). A rewrite of a stored upload, the same boot with
        the same base time or a stricter privacy, is a ``seq_conflict``; another boot or base
        time otherwise means the box's counters restarted: its flash was wiped or replaced
        (``box_reset``).
        """
        seq = uplink.seq
        same_upload = uplink.base_time_ms == base_time_ms or uplink.privacy > privacy
        if uplink.boot == boot and same_upload:
            return "seq_conflict", f"sequence number {seq} already stored with other content"
        return "box_reset", (
            f"sequence number {seq} already stored from boot {boot} (base time"
            f" {_moment(base_time_ms)}), this one is from boot {uplink.boot} (base time"
            f" {_moment(uplink.base_time_ms)}): the box's flash was wiped or replaced"
        )

    def _stored(
        self, tx: Any, keys: set[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[Any, ...]]:
        """``(raw, boot, base_time_ms, privacy)`` of the stored payloads among ``keys``."""
        found: dict[tuple[str, int], tuple[Any, ...]] = {}
        ordered = sorted(keys)
        p = self._P
        for start in range(0, len(ordered), 200):
            chunk = ordered[start : start + 200]
            # One index lookup per key (a row-value IN list would scan the table in SQLite).
            wanted = " OR ".join([f"(vin = {p} AND seq = {p})"] * len(chunk))
            params = [x for key in chunk for x in key]
            for vin, seq, raw, boot, base, privacy in self._tx_rows(
                tx,
                f"SELECT vin, seq, raw, boot, base_time_ms, privacy FROM payloads WHERE {wanted}",
                params,
            ):
                found[(vin, int(seq))] = (bytes(raw), int(boot), int(base), int(privacy))
        return found

    def _apply(self, tx: Any, checked: Sequence[_Checked]) -> list[IngestResult]:
        """Decide each message against the stored payloads, then write the batch's rows."""
        keys = {(c.message.vin, c.seq) for c in checked if c.uplink is not None}
        known = self._stored(tx, keys) if keys else {}  # type: ignore[arg-type]
        batch = _Batch()
        for c in checked:
            m = c.message
            uplink = c.uplink
            if uplink is None and c.presence is None:
                self._reject(batch, m, c.reason, c.detail, c.seq)
                continue
            if uplink is None:
                self._presence(batch, m, *c.presence)  # type: ignore[misc]
                continue
            key = (uplink.vin, uplink.seq)
            raw = bytes(m.payload)
            stored = known.get(key)
            if stored is None:
                known[key] = (raw, uplink.boot, uplink.base_time_ms, uplink.privacy)
                self._accept(batch, m, uplink, raw)
            elif stored[0] == raw:
                batch.vehicles.append((self._duplicate_sql, (m.received_at_ms, m.vin)))
                batch.results.append(IngestResult(Outcome.DUPLICATE, m.vin, uplink.seq))
            else:
                reason, detail = self._conflict(uplink, *stored[1:])
                self._reject(batch, m, reason, detail, uplink.seq)
        self._write_batch(tx, batch)
        return batch.results

    @staticmethod
    def _reject(
        batch: _Batch, m: Message, reason: str, detail: str, seq: int | None = None
    ) -> None:
        batch.rejected.append((m.received_at_ms, m.topic, m.vin, reason, detail, bytes(m.payload)))
        batch.results.append(IngestResult(Outcome.REJECTED, m.vin, seq, reason, detail))

    def _presence(self, batch: _Batch, m: Message, state: str | None, boot: int | None) -> None:
        params = (m.vin, m.received_at_ms, m.received_at_ms, state, m.received_at_ms, boot)
        batch.vehicles.append((self._presence_sql, params))
        batch.results.append(IngestResult(Outcome.PRESENCE, m.vin, detail=state or ""))

    def _accept(self, batch: _Batch, m: Message, uplink: Upload, raw: bytes) -> None:
        n_samples = uplink.n_samples
        if n_samples:
            last = (uplink.seq, uplink.signal_ids, uplink.last_times)
            batch.states.setdefault(uplink.vin, []).append(last)
        batch.payloads.append(
            (
                uplink.vin,
                uplink.seq,
                uplink.boot,
                uplink.trigger,
                uplink.privacy,
                uplink.base_time_ms,
                m.received_at_ms,
                n_samples,
                uplink.evicted,
                raw,
                uplink.packed,
            )
        )
        params = (uplink.vin, m.received_at_ms, m.received_at_ms, uplink.boot, uplink.seq)
        batch.vehicles.append((self._uplink_vehicle_sql, (*params, uplink.evicted)))
        batch.results.append(
            IngestResult(Outcome.ACCEPTED, uplink.vin, uplink.seq, n_samples=n_samples)
        )

    def _tx_insert(
        self, tx: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert rows into ``table`` inside :meth:`_write` (in order: ids follow it)."""
        if rows:
            values = ", ".join([self._P] * len(columns))
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})"
            self._tx_many(tx, sql, rows)

    def _write_batch(self, tx: Any, batch: _Batch) -> None:
        self._tx_insert(tx, "payloads", PAYLOAD_COLUMNS, batch.payloads)
        self._merge_states(tx, batch.states)
        self._tx_insert(tx, "rejected", REJECTED_COLUMNS, batch.rejected)
        # The vehicles' rows change in message order: consecutive runs of one statement.
        start = 0
        ops = batch.vehicles
        while start < len(ops):
            end = start + 1
            while end < len(ops) and ops[end][0] == ops[start][0]:
                end += 1
            rows = [params for _sql, params in ops[start:end]]
            if ops[start][0] is self._uplink_vehicle_sql:
                rows = _per_vehicle(rows)
            self._tx_many(tx, ops[start][0], rows)
            start = end

    def _merge_states(self, tx: Any, updates: dict[str, list[tuple[Any, ...]]]) -> None:
        """Merge uploads' last samples (by vehicle, in arrival order) into ``vehicle_state``."""
        if not updates:
            return
        p = self._P
        vins = sorted(updates)
        stored: dict[str, bytes] = {}
        for start in range(0, len(vins), 200):
            chunk = vins[start : start + 200]
            wanted = ", ".join([p] * len(chunk))
            sql = f"SELECT vin, signals FROM vehicle_state WHERE vin IN ({wanted})"
            stored.update((str(vin), bytes(blob)) for vin, blob in self._tx_rows(tx, sql, chunk))
        rows = []
        for vin in vins:
            state = _State(stored.get(vin))
            for last in updates[vin]:
                state.merge(*last)
            rows.append((vin, state.blob()))
        self._tx_many(
            tx,
            f"INSERT INTO vehicle_state (vin, signals) VALUES ({p}, {p})"
            " ON CONFLICT (vin) DO UPDATE SET signals = excluded.signals",
            rows,
        )

    def _duplicate_statement(self) -> str:
        p = self._P
        return (
            "UPDATE vehicles SET duplicates = duplicates + 1,"
            f" last_seen_ms = {self._MAX}(last_seen_ms, {p}) WHERE vin = {p}"
        )

    def _uplink_vehicle_statement(self) -> str:
        p, least, greatest = self._P, self._MIN, self._MAX
        newer = "vehicles.max_seq IS NULL OR excluded.max_seq > vehicles.max_seq"
        return (
            "INSERT INTO vehicles (vin, first_seen_ms, last_seen_ms, boot, max_seq, evicted)"
            f" VALUES ({p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT (vin) DO UPDATE SET"
            f" first_seen_ms = {least}(vehicles.first_seen_ms, excluded.first_seen_ms),"
            f" last_seen_ms = {greatest}(vehicles.last_seen_ms, excluded.last_seen_ms),"
            f" boot = CASE WHEN {newer} THEN excluded.boot ELSE vehicles.boot END,"
            f" evicted = CASE WHEN {newer} THEN excluded.evicted ELSE vehicles.evicted END,"
            f" max_seq = {greatest}(COALESCE(vehicles.max_seq, -1), excluded.max_seq)"
        )

    def _presence_statement(self) -> str:
        p, least, greatest = self._P, self._MIN, self._MAX
        return (
            "INSERT INTO vehicles (vin, first_seen_ms, last_seen_ms, presence, presence_at_ms,"
            f" presence_updates, boot) VALUES ({p}, {p}, {p}, {p}, {p}, 1, {p})"
            " ON CONFLICT (vin) DO UPDATE SET"
            f" first_seen_ms = {least}(vehicles.first_seen_ms, excluded.first_seen_ms),"
            f" last_seen_ms = {greatest}(vehicles.last_seen_ms, excluded.last_seen_ms),"
            " presence = excluded.presence, presence_at_ms = excluded.presence_at_ms,"
            " presence_updates = vehicles.presence_updates + 1,"
            " boot = COALESCE(excluded.boot, vehicles.boot)"
        )

    # -- queries ---------------------------------------------------------------------------

    def _count(self, sql: str, vin: str | None) -> int:
        if vin is None:
            rows = self._query(sql)
        else:
            rows = self._query(f"{sql} WHERE vin = {self._P}", (vin,))
        return int(rows[0][0])

    def payload_count(self, vin: str | None = None) -> int:
        """Accepted payloads (of one vehicle, or of all)."""
        return self._count("SELECT COUNT(*) FROM payloads", vin)

    def sample_count(self, vin: str | None = None) -> int:
        """Stored samples (of one vehicle, or of all)."""
        return self._count("SELECT COALESCE(SUM(n_samples), 0) FROM payloads", vin)

    def samples(self, vin: str, signal_id: int | None = None) -> list[tuple[int, int, Value]]:
        """``(signal_id, t_ms, value)`` of one vehicle, by signal then time (then arrival)."""
        return samples_of(self.packed_series(vin), signal_id)

    def packed_series(self, vin: str) -> list[tuple[int, bytes]]:
        """``(base_time_ms, packed series)`` of the vehicle's payloads with samples, in
        arrival order: what :func:`samples_of` reads (one query for any number of signals)."""
        rows = self._query(
            "SELECT base_time_ms, series FROM payloads"
            f" WHERE vin = {self._P} AND n_samples > 0 ORDER BY id",
            (vin,),
        )
        return [(int(base), bytes(packed)) for base, packed in rows]

    def last_state(self, vin: str) -> dict[int, tuple[int, Value]]:
        """The latest ``(t_ms, value)`` of each signal of one vehicle."""
        p = self._P
        rows = self._query(f"SELECT signals FROM vehicle_state WHERE vin = {p}", (vin,))
        if not rows:
            return {}
        state = _State(bytes(rows[0][0]))
        known = self._known_signals
        wanted = {sid: seq for sid, seq in state.seqs.items() if sid in known}
        seqs = sorted(set(wanted.values()))
        last: dict[tuple[int, int], Value] = {}  # (seq, signal id): the series' last value
        for start in range(0, len(seqs), 200):
            chunk = seqs[start : start + 200]
            for seq, packed in self._query(
                f"SELECT seq, series FROM payloads WHERE vin = {p}"
                f" AND seq IN ({', '.join([p] * len(chunk))})",
                [vin, *chunk],
            ):
                for sid, exp, _times, mantissas in unpack_series(bytes(packed)):
                    *_, mantissa = mantissas
                    last[(int(seq), sid)] = sample_value(mantissa, exp)
        return {sid: (state.times[sid], last[(wanted[sid], sid)]) for sid in sorted(wanted)}

    def payloads(self, vin: str) -> list[StoredPayload]:
        """Every accepted payload of one vehicle, by sequence number."""
        rows = self._query(
            "SELECT seq, boot, trigger, privacy, base_time_ms, received_at_ms, n_samples, raw "
            f"FROM payloads WHERE vin = {self._P} ORDER BY seq",
            (vin,),
        )
        return [_stored_payload(r) for r in rows]

    def rejections(self, vin: str | None = None, limit: int | None = None) -> list[Rejection]:
        """Kept rejections, oldest first (of one vehicle, or of all; ``limit`` < 0: all)."""
        p = self._P
        sql = "SELECT id, received_at_ms, topic, vin, reason, detail, raw FROM rejected"
        params: list[Any] = []
        if vin is not None:
            sql += f" WHERE vin = {p}"
            params.append(vin)
        sql += " ORDER BY id"
        if limit is not None and limit >= 0:
            sql += f" LIMIT {p}"
            params.append(limit)
        return [
            Rejection(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], bytes(r[6]))
            for r in self._query(sql, params)
        ]

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
        return [PayloadRef(int(r[0]), str(r[1]), _stored_payload(r[2:])) for r in rows]

    # -- API records -------------------------------------------------------------------------

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


class SqliteStore(Store):
    """:class:`Store` on one SQLite file (WAL journal; one writer at a time).

    ``path`` may be ``":memory:"``. ``synchronous`` is SQLite's setting: ``"NORMAL"`` (the
    default) survives a crash of the process, ``"FULL"`` also a power loss. The object may be
    shared between threads (calls are serialised); a second ``SqliteStore`` on the same file
    gives a reader that does not wait for the writer, and writers in other processes wait
    for each other (``BEGIN IMMEDIATE``), so two of them never both accept a ``(vin, seq)``.

    A new file is created and migrated; a file holding other tables and no gateway schema is
    refused rather than extended. ``read_only=True`` opens an existing, fully migrated gateway
    database with SQLite's ``mode=ro`` and refuses anything else.
    """

    PAGE_SIZE = 32768
    """The page size of a new file (bytes; an existing file keeps its own). With SQLite's
    default, 4096, a payload row of a few kB fills a page, and committing a batch of them
    writes eight times as many WAL frames, each with its own system calls: storing the
    benchmark's uploads took 33 µs each instead of 20 (``docs/gateway.md``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        catalog: Catalog | None = None,
        synchronous: str = "NORMAL",
        timeout: float = 10.0,
        read_only: bool = False,
    ) -> None:
        self.path = self._name = str(path)
        self.read_only = read_only
        self._setup(catalog)
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
                # Takes effect only on a new file (before its first table).
                self._conn.execute(f"PRAGMA page_size={self.PAGE_SIZE}")
                if self.path != ":memory:":
                    self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
                self._migrate()
        except (sqlite3.Error, PayloadError) as exc:
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
        rows = self._query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        return {str(r[0]) for r in rows}

    def _migrate(self) -> None:
        try:
            with self._write() as tx:
                self._apply_migrations(tx)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: migration failed: {exc}") from exc

    # -- the connection --------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise StorageError(f"{self.path}: opened read-only, cannot write")
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: cannot start a transaction: {exc}") from exc
            try:
                yield self._conn
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StorageError(f"{self.path}: write failed: {exc}") from exc
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StorageError(f"{self.path}: cannot commit: {exc}") from exc

    def _tx_rows(self, tx: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return tx.execute(sql, params).fetchall()

    def _tx_many(self, tx: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        tx.executemany(sql, rows)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: query failed: {exc}") from exc

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, list[Any]]:
        with self._write() as conn:
            cursor = conn.execute(sql, params)
            rows = cursor.fetchall()
            return cursor.rowcount, rows

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path}>"


def redact_url(target: str | Path) -> str:
    """A database target as it may be shown: a URL without its password, a path as is."""
    text = str(target)
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
        password = parts.password
        port = parts.port
    except ValueError:
        return text.partition("://")[0] + "://..."  # unparsable: show no part that may be secret
    if password is None:
        return text
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def in_memory(target: str | Path) -> bool:
    """Whether a database target is an in-memory SQLite database (one per connection)."""
    return str(target) in ("", ":memory:", "sqlite://", "sqlite:///", "sqlite:///:memory:")


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
