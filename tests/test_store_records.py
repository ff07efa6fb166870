"""The store's API records and webhook delivery queue, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pg import pg_database

from gateway.errors import StorageError
from gateway.store import DeliveryState, Record, SqliteStore, Store
from gateway.store_pg import PostgresStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "sqlite":
        with SqliteStore(":memory:") as s:
            yield s
    else:
        with pg_database() as url, PostgresStore(url) as s:
            yield s


def _record(rid: str, owner: str = "u1", vin: str | None = "VF3AAAAAAAA000001") -> Record:
    return Record("monitor", rid, owner, vin, {"label": rid, "n": [1, 2]}, 1000, 1000)


def test_records_round_trip_replace_and_delete(store: Store) -> None:
    store.put_record(_record("m1"))
    store.put_record(_record("m2", owner="u2"))
    store.put_record(_record("m3", vin=None))
    assert store.get_record("monitor", "m1") == _record("m1")
    assert store.get_record("callback", "m1") is None
    assert [r.id for r in store.records("monitor", owner="u1")] == ["m1", "m3"]
    assert [r.id for r in store.records("monitor", vin="VF3AAAAAAAA000001")] == ["m1", "m2"]
    changed = Record("monitor", "m1", "u1", None, {"label": "x"}, 1000, 2000)
    store.put_record(changed)
    assert store.get_record("monitor", "m1") == changed
    assert store.delete_record("monitor", "m1") is True
    assert store.delete_record("monitor", "m1") is False
    assert store.get_record("monitor", "m1") is None


def test_delivery_queue_attempts(store: Store) -> None:
    first = store.enqueue_delivery("cb1", "http://x/hook", b"{}", {"X-A": "1"}, now_ms=100)
    second = store.enqueue_delivery("cb1", "http://x/hook", b"[]", {}, now_ms=150)
    assert first != second
    assert [d.id for d in store.due_deliveries(now_ms=120)] == [first]
    store.record_attempt(
        first, now_ms=120, state=DeliveryState.PENDING, next_attempt_ms=10_120, error="500"
    )
    assert [d.id for d in store.due_deliveries(now_ms=200)] == [second]
    store.record_attempt(second, now_ms=200, state=DeliveryState.DELIVERED)
    due = store.due_deliveries(now_ms=10_120)
    assert [d.id for d in due] == [first]
    assert due[0].attempts == 1 and due[0].last_error == "500" and due[0].headers == {"X-A": "1"}
    store.record_attempt(first, now_ms=10_120, state=DeliveryState.DROPPED, error="gone")
    assert store.due_deliveries(now_ms=10**12) == []
    done = store.deliveries("cb1")
    assert [(d.state, d.attempts, d.done_ms) for d in done] == [
        (DeliveryState.DROPPED, 2, 10_120),
        (DeliveryState.DELIVERED, 1, 200),
    ]
    assert store.deliveries(state=DeliveryState.DELIVERED)[0].body == b"[]"
    with pytest.raises(StorageError, match="next attempt"):
        store.record_attempt(first, now_ms=1, state=DeliveryState.PENDING)


def test_payloads_since_follows_arrival(store: Store) -> None:
    assert store.payloads_since(0) == []
