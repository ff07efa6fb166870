"""The box's flash: a durable journal of samples and a bounded store-and-forward queue.

Everything lives in one SQLite file in WAL mode, one transaction per action, so a ``kill -9``
of the process loses nothing that was committed. A sample is journaled when it is collected;
packing an upload moves its samples from the journal into the queue in one transaction; an
upload leaves the queue only when the broker acknowledged it (QoS 1 PUBACK). When the queue is
full the entry of lowest priority (then the oldest) is evicted, and evictions are counted.
"""

from __future__ import annotations

import dataclasses
import enum
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from can_dbc.catalog import Scope
from firmware_sim.core import Sample
from firmware_sim.errors import LifecycleError, PayloadError, StoreError
from firmware_sim.payload import Privacy, Trigger, decode_uplink, encode_uplink

__all__ = ["FlashState", "FlashStore", "QueueEntry"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY, signal_id INTEGER NOT NULL, t_ms INTEGER NOT NULL,
    mantissa INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY, priority INTEGER NOT NULL, created_ms INTEGER NOT NULL,
    n_samples INTEGER NOT NULL, size INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_eviction ON outbox (priority, seq);
CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""

_META_DEFAULTS = {
    "format": 1,
    "boot": 0,
    "next_seq": 0,
    "next_sample_id": 1,
    "privacy": int(Privacy.NONE),
    "evicted": 0,
    "evicted_samples": 0,
    "acked": 0,
}


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class FlashState:
    """What the box finds in its flash when it boots."""

    boot: int
    next_seq: int
    next_sample_id: int
    privacy: Privacy
    evicted: int
    evicted_samples: int
    acked: int
    pending: tuple[Sample, ...]
    queued: int


@dataclass(frozen=True)
class QueueEntry:
    """One upload waiting for the broker's acknowledgement."""

    seq: int
    priority: int
    payload: bytes


class FlashStore:
    """The durable journal and upload queue of one box, and small named blobs of state."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_entries: int = 1_000,
        max_bytes: int = 16 << 20,
        power_safe: bool = True,
    ) -> None:
        """``power_safe`` syncs every commit to the disk (SQLite ``synchronous=FULL``), so a
        power loss loses nothing committed; without it (``NORMAL``) a commit survives a crash
        of the process but the last ones may be lost with the power."""
        if max_entries < 1 or max_bytes < 1:
            raise StoreError("the queue must hold at least one entry and one byte")
        self.power_safe = power_safe
        self.path = Path(path)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._state = _State.UNOPENED
        self._db: sqlite3.Connection | None = None
        self._entries = 0
        self._bytes = 0

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> FlashStore:
        """Open (and create) the flash file."""
        if self._state is not _State.UNOPENED:
            raise LifecycleError(f"flash store is {self._state.value}, cannot open it again")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path.parent}: cannot create the flash folder: {exc}") from exc
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.power_safe else 'NORMAL'}")
            db.executescript(_SCHEMA)
            db.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", _META_DEFAULTS.items()
            )
            row = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM outbox").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the flash store: {exc}") from exc
        self._entries, self._bytes = int(row[0]), int(row[1])
        self._db = db
        self._state = _State.OPEN
        return self

    def close(self) -> None:
        """Close the file; idempotent."""
        if self._db is not None:
            self._db.close()
            self._db = None
        self._state = _State.CLOSED

    def __enter__(self) -> FlashStore:
        return self.open() if self._state is _State.UNOPENED else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise LifecycleError(f"flash store is {self._state.value}")
        return self._db

    def _write(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        db = self._conn
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                fn(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: write failed: {exc}") from exc

    def _meta(self, key: str) -> int:
        return int(self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    # -- boot -----------------------------------------------------------------------------

    def boot(self) -> FlashState:
        """Count a boot and return what the previous run left."""

        def bump(db: sqlite3.Connection) -> None:
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'boot'")

        self._write(bump)
        pending = tuple(
            Sample(int(r[0]), int(r[1]), int(r[2]), int(r[3]))
            for r in self._conn.execute(
                "SELECT id, signal_id, t_ms, mantissa FROM journal ORDER BY id"
            )
        )
        return FlashState(
            boot=self._meta("boot"),
            next_seq=self._meta("next_seq"),
            next_sample_id=self._meta("next_sample_id"),
            privacy=Privacy(self._meta("privacy")),
            evicted=self._meta("evicted"),
            evicted_samples=self._meta("evicted_samples"),
            acked=self._meta("acked"),
            pending=pending,
            queued=self._entries,
        )

    # -- blobs ----------------------------------------------------------------------------

    def put_blob(self, key: str, value: bytes) -> None:
        """Keep ``value`` under ``key`` durably, replacing what was there (one transaction)."""

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO blobs (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, bytes(value)),
            )

        self._write(write)

    def get_blob(self, key: str) -> bytes | None:
        """The value kept under ``key``, or None."""
        try:
            row = self._conn.execute("SELECT value FROM blobs WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: read failed: {exc}") from exc
        return None if row is None else bytes(row[0])

    # -- journal --------------------------------------------------------------------------

    def journal(self, samples: Sequence[Sample]) -> None:
        """Make collected samples durable."""
        if not samples:
            return

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO journal (id, signal_id, t_ms, mantissa) VALUES (?, ?, ?, ?)",
                [(s.id, s.signal_id, s.t_ms, s.mantissa) for s in samples],
            )
            db.execute(
                "UPDATE meta SET value = max(value, ?) WHERE key = 'next_sample_id'",
                (max(s.id for s in samples) + 1,),
            )

        self._write(write)

    # -- queue ----------------------------------------------------------------------------

    def enqueue(
        self,
        seq: int,
        payload: bytes,
        priority: int,
        sample_ids: Sequence[int],
        *,
        created_ms: int,
        protect: Iterable[int] = (),
    ) -> list[int]:
        """Queue an upload and release its samples from the journal, in one transaction.

        Returns the sequence numbers evicted to make room (possibly this one, when every
        queued entry outranks it). Entries in ``protect`` (handed to the broker connection,
        which will deliver them anyway) are never evicted.
        """
        evicted: list[int] = []
        size = len(payload)
        entries, total = self._entries, self._bytes
        protected = tuple(protect)
        victims = (
            "SELECT seq, size, n_samples, priority FROM outbox "
            f"WHERE seq NOT IN ({', '.join('?' * len(protected))}) ORDER BY priority, seq LIMIT 1"
        )

        def write(db: sqlite3.Connection) -> None:
            nonlocal entries, total
            while entries >= self.max_entries or (entries and total + size > self.max_bytes):
                victim = db.execute(victims, protected).fetchone()
                if victim is None or victim[3] > priority:
                    break
                db.execute("DELETE FROM outbox WHERE seq = ?", (victim[0],))
                db.execute(
                    "UPDATE meta SET value = value + ? WHERE key = 'evicted_samples'",
                    (victim[2],),
                )
                evicted.append(int(victim[0]))
                entries -= 1
                total -= int(victim[1])
            room = entries < self.max_entries and (not entries or total + size <= self.max_bytes)
            if room:
                db.execute(
                    "INSERT INTO outbox (seq, priority, created_ms, n_samples, size, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, priority, created_ms, len(sample_ids), size, payload),
                )
                entries += 1
                total += size
            else:
                evicted.append(seq)
                db.execute(
                    "UPDATE meta SET value = value + ? WHERE key = 'evicted_samples'",
                    (len(sample_ids),),
                )
            db.executemany("DELETE FROM journal WHERE id = ?", [(i,) for i in sample_ids])
            db.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'next_seq'", (seq + 1,))
            if evicted:
                db.execute(
                    "UPDATE meta SET value = value + ? WHERE key = 'evicted'", (len(evicted),)
                )

        self._write(write)
        self._entries, self._bytes = entries, total
        return evicted

    def entries(self, *, after_seq: int = -1, limit: int = 100) -> list[QueueEntry]:
        """Queued uploads in sequence order, after ``after_seq``."""
        rows = self._conn.execute(
            "SELECT seq, priority, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [QueueEntry(int(r[0]), int(r[1]), bytes(r[2])) for r in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        """Remove acknowledged uploads; returns how many were still queued."""
        keys = [(s,) for s in seqs]
        removed = removed_bytes = 0

        def write(db: sqlite3.Connection) -> None:
            nonlocal removed, removed_bytes
            for key in keys:
                row = db.execute("DELETE FROM outbox WHERE seq = ? RETURNING size", key).fetchone()
                if row is not None:
                    removed += 1
                    removed_bytes += int(row[0])
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'acked'", (removed,))

        self._write(write)
        self._entries -= removed
        self._bytes -= removed_bytes
        return removed

    def apply_privacy(
        self,
        privacy: Privacy,
        allowed: frozenset[Scope],
        scope_of: Callable[[int], Scope],
        *,
        drop_sample_ids: Iterable[int] = (),
        now_ms: int = 0,
        protect: Iterable[int] = (),
    ) -> tuple[int, int]:
        """Apply a new privacy setting in one transaction.

        Entries in ``protect`` (already on their way over a live connection) are left as
        they are.

        The setting is remembered, the given journaled samples are deleted, and every series
        whose scope is not ``allowed`` is stripped from the queued uploads. The entries keep
        their sequence numbers (so the cloud sees no gap) and carry the stricter setting; when
        nothing is allowed (``Full``) they also lose the time and cause of what was uploaded.
        Returns (uploads rewritten, samples stripped from them).
        """
        drop = [(i,) for i in drop_sample_ids]
        protected = set(protect)
        rewritten = stripped = 0

        def write(db: sqlite3.Connection) -> None:
            nonlocal rewritten, stripped
            db.execute("UPDATE meta SET value = ? WHERE key = 'privacy'", (int(privacy),))
            db.executemany("DELETE FROM journal WHERE id = ?", drop)
            rows = db.execute("SELECT seq, payload FROM outbox ORDER BY seq").fetchall()
            for seq, raw in rows:
                if seq in protected:
                    continue
                try:
                    uplink = decode_uplink(bytes(raw))
                except PayloadError:
                    continue  # the box wrote it; it cannot be corrupt unless the disk is
                kept = tuple(s for s in uplink.series if scope_of(s.signal_id) in allowed)
                if kept == uplink.series and uplink.privacy >= privacy:
                    continue
                stricter = dataclasses.replace(
                    uplink, series=kept, privacy=max(uplink.privacy, privacy)
                )
                if not allowed:
                    stricter = dataclasses.replace(
                        stricter, base_time_ms=now_ms, trigger=Trigger.PRIVACY
                    )
                payload = encode_uplink(stricter)
                n_kept = sum(len(s.times) for s in kept)
                stripped += sum(len(s.times) for s in uplink.series) - n_kept
                db.execute(
                    "UPDATE outbox SET payload = ?, size = ?, n_samples = ? WHERE seq = ?",
                    (payload, len(payload), n_kept, seq),
                )
                rewritten += 1

        self._write(write)
        row = self._conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM outbox").fetchone()
        self._entries, self._bytes = int(row[0]), int(row[1])
        return rewritten, stripped

    # -- figures --------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Uploads waiting for an acknowledgement."""
        return self._entries

    @property
    def depth_bytes(self) -> int:
        """Bytes waiting for an acknowledgement."""
        return self._bytes

    @property
    def evicted(self) -> int:
        """Uploads evicted from the queue since the flash was first written."""
        return self._meta("evicted")

    @property
    def journal_size(self) -> int:
        """Samples collected and not yet packed."""
        return int(self._conn.execute("SELECT count(*) FROM journal").fetchone()[0])
