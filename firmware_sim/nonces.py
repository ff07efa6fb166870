"""The box's memory of remote commands: the nonces it has seen and the last order it accepted.

One SQLite file (or ``":memory:"`` for tests), in WAL mode with ``synchronous=FULL`` like the
flash store, one transaction per change, so what a commit wrote survives a crash or a power
loss. The tables are prefixed ``downlink_`` and may share the flash store's file.

A nonce is kept until a given time (its command's expiry plus a margin, after which the
command is refused as expired anyway), then forgotten, so the cache stays small. It is also
bounded: beyond ``max_entries`` the nonces due to be forgotten first go first; the order,
kept for good, still refuses a replay of an accepted command after its nonce is gone.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from types import TracebackType

from firmware_sim.errors import LifecycleError, StoreError

__all__ = ["NonceCache"]

_INT64_MAX = 2**63 - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS downlink_nonce (
    nonce BLOB PRIMARY KEY, keep_until_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS downlink_nonce_expiry ON downlink_nonce (keep_until_ms);
CREATE TABLE IF NOT EXISTS downlink_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class NonceCache:
    """The nonces of recent commands and the last accepted order, durable across reboots."""

    def __init__(
        self, path: str | Path, *, max_entries: int = 10_000, power_safe: bool = True
    ) -> None:
        """Open (and create) the cache at ``path``; ``":memory:"`` keeps it in memory.

        ``power_safe`` syncs every commit to the disk (``synchronous=FULL``); without it
        (``NORMAL``) a commit survives a crash of the process but not always a power loss.
        """
        if max_entries < 1:
            raise StoreError("the nonce cache must hold at least one nonce")
        self.max_entries = max_entries
        self.path = path if path == ":memory:" else Path(path)
        self._lock = threading.Lock()
        try:
            if isinstance(self.path, Path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{path}: cannot open the nonce cache: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if power_safe else 'NORMAL'}")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"{path}: cannot open the nonce cache: {exc}") from exc
        self._db: sqlite3.Connection | None = db

    def close(self) -> None:
        """Close the file; idempotent."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> NonceCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise LifecycleError("the nonce cache is closed")
        return self._db

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> tuple[object, ...] | None:
        with self._lock:
            try:
                row: tuple[object, ...] | None = self._conn().execute(sql, args).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot read the nonce cache: {exc}") from exc
            return row

    def seen(self, nonce: bytes) -> bool:
        """Whether ``nonce`` is remembered."""
        row = self._read("SELECT 1 FROM downlink_nonce WHERE nonce = ?", (bytes(nonce),))
        return row is not None

    @property
    def last_order(self) -> int | None:
        """The highest order accepted so far; ``None`` before the first."""
        row = self._read("SELECT value FROM downlink_meta WHERE key = 'last_order'")
        return None if row is None else int(str(row[0]))

    def __len__(self) -> int:
        row = self._read("SELECT count(*) FROM downlink_nonce")
        return 0 if row is None else int(str(row[0]))

    def remember(
        self, nonce: bytes, keep_until_ms: int, *, now_ms: int, order: int | None = None
    ) -> None:
        """Remember ``nonce`` until ``keep_until_ms`` and raise the last order to ``order``.

        In the same transaction the nonces due before ``now_ms`` are forgotten, and the
        soonest due ones too when the cache is full.
        """
        keep = min(keep_until_ms, _INT64_MAX)
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    self._prune(db, now_ms)
                    (count,) = db.execute("SELECT count(*) FROM downlink_nonce").fetchone()
                    if count >= self.max_entries:
                        db.execute(
                            "DELETE FROM downlink_nonce WHERE nonce IN (SELECT nonce FROM "
                            "downlink_nonce ORDER BY keep_until_ms LIMIT ?)",
                            (count - self.max_entries + 1,),
                        )
                    db.execute(
                        "INSERT INTO downlink_nonce (nonce, keep_until_ms) VALUES (?, ?) "
                        "ON CONFLICT (nonce) DO UPDATE SET "
                        "keep_until_ms = max(keep_until_ms, excluded.keep_until_ms)",
                        (bytes(nonce), keep),
                    )
                    if order is not None:
                        row = db.execute(
                            "SELECT value FROM downlink_meta WHERE key = 'last_order'"
                        ).fetchone()
                        if row is None or int(row[0]) < order:
                            db.execute(
                                "INSERT OR REPLACE INTO downlink_meta (key, value) "
                                "VALUES ('last_order', ?)",
                                (str(order),),
                            )
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot write the nonce cache: {exc}") from exc

    @staticmethod
    def _prune(db: sqlite3.Connection, now_ms: int) -> int:
        now = max(min(now_ms, _INT64_MAX), -_INT64_MAX)
        cursor = db.execute("DELETE FROM downlink_nonce WHERE keep_until_ms < ?", (now,))
        return int(cursor.rowcount)

    def prune(self, now_ms: int) -> int:
        """Forget the nonces due before ``now_ms``; returns how many."""
        with self._lock:
            try:
                return self._prune(self._conn(), now_ms)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot write the nonce cache: {exc}") from exc
