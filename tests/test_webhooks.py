"""Webhook delivery: signatures, attributes, retries and drops, against a real HTTP receiver."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from waiting import wait_for

from gateway.monitors import parse_callback
from gateway.store import DeliveryState, Record, SqliteStore
from gateway.webhooks import (
    SIGNATURE_HEADER,
    DeliveryReport,
    WebhookSender,
    apply_attributes,
    enqueue_message,
    new_secret,
    sign,
    verify,
)

T0 = 1_790_000_000_000  # simulated gateway time


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    valid: bool  # whether the signature verified under the receiver's secret


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: answers with ``statuses`` in turn (then 200)."""

    secret: str
    statuses: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def notifications(self) -> list[dict[str, Any]]:
        """The bodies of the verified requests that were answered 200."""
        return [json.loads(r.body) for r in self.got if r.valid]


def start_receiver(secret: str, statuses: list[int] | None = None) -> Receiver:
    """Start a receiver thread; stop it with ``receiver.server.shutdown()``."""
    receiver = Receiver(secret, list(statuses or []))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            parts = urlsplit(self.path)
            header = self.headers.get(SIGNATURE_HEADER, "")
            status = receiver.statuses.pop(0) if receiver.statuses else 200
            receiver.got.append(
                Received(
                    parts.path,
                    dict(parse_qsl(parts.query)),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    status == 200 and verify(receiver.secret, body, header),
                )
            )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.server = server
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "gateway.sqlite3") as s:
        yield s


class Clock:
    """Simulated gateway time."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def make_callback(store: SqliteStore, target: str, secret: str, attributes: object = ()) -> Record:
    body = parse_callback(
        {
            "label": "fleet desk",
            "type": ["Monitor"],
            "callback": {
                "webhook": {"target": target, "name": "desk", "attributes": list(attributes)}  # type: ignore[call-overload]
            },
        }
    )
    record = Record(
        "callback", "cb1", "user:u1", None, {**body, "status": "Running", "secret": secret}, T0, T0
    )
    store.put_record(record)
    return record


MESSAGE = {"type": "Monitor", "date": "2026-07-03T07:00:00.000Z", "monitorEvent": {"values": []}}


def test_signature_round_trip_and_tampering() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret) > 40 and secret != new_secret()
    header = sign(secret, b'{"a":1}', 1234)
    assert header.startswith("t=1234,v1=") and len(header) == len("t=1234,v1=") + 64
    assert verify(secret, b'{"a":1}', header)
    assert not verify(secret, b'{"a":2}', header)
    assert not verify("whsec_other", b'{"a":1}', header)
    assert not verify(secret, b'{"a":1}', header.replace("t=1234", "t=1235"))
    assert verify(secret, b'{"a":1}', header, now_ms=1234 + 299_000)
    assert not verify(secret, b'{"a":1}', header, now_ms=1234 + 301_000)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120), st.binary(max_size=64))
def test_verify_never_raises(header: str, body: bytes) -> None:
    assert verify("whsec_x", body, header) in (True, False)


def test_attributes_become_headers_query_and_body() -> None:
    url, headers, body = apply_attributes(
        "https://example.test/hook?a=1",
        [
            {"type": "Header", "key": "X-Vehicle-Id", "value": "$vin"},
            {"type": "Header", "key": "X-Label", "value": "$monitorLabel"},
            {"type": "Query", "key": "car", "value": "$VIN"},
            {"type": "Body", "key": "fleet", "value": "north"},
            {"type": "Body", "key": "literal", "value": "$unknown"},
        ],
        {"vin": "VR3UHZKXZMT800008", "monitorLabel": "Batterie à 20 %"},
    )
    assert url == "https://example.test/hook?a=1&car=VR3UHZKXZMT800008"
    assert headers == {"X-Vehicle-Id": "VR3UHZKXZMT800008", "X-Label": "Batterie %C3%A0 20 %25"}
    assert body == [{"key": "fleet", "value": "north"}, {"key": "literal", "value": "$unknown"}]


def test_a_500_then_a_200_is_retried_10_s_later_and_verifies(store: SqliteStore) -> None:
    secret = new_secret()
    receiver = start_receiver(secret, [500])
    try:
        callback = make_callback(
            store,
            receiver.url,
            secret,
            [
                {"type": "Header", "key": "Authorization", "value": "Bearer t0k"},
                {"type": "Query", "key": "vin", "value": "$vin"},
                {"type": "Body", "key": "label", "value": "$callbackLabel"},
            ],
        )
        clock = Clock()
        enqueue_message(
            store,
            callback,
            MESSAGE,
            variables={"vin": "VR3UHZKXZMT800008"},
            extra_attributes=[[{"type": "Body", "key": "label", "value": "replaced"}]],
            now_ms=clock.now,
        )
        with WebhookSender(store, clock_ms=clock) as sender:
            assert sender.deliver_due() == DeliveryReport(0, 1, 0)
            (pending,) = store.deliveries()
            assert pending.state is DeliveryState.PENDING and pending.last_error == "HTTP 500"
            assert pending.next_attempt_ms == T0 + 10_000
            clock.now += 9_999
            assert sender.deliver_due() == DeliveryReport(0, 0, 0)
            clock.now += 1
            assert sender.deliver_due() == DeliveryReport(1, 0, 0)
            assert sender.deliver_due() == DeliveryReport(0, 0, 0)
    finally:
        assert receiver.server is not None
        receiver.server.shutdown()
    first, second = receiver.got
    assert first.body == second.body and not first.valid and second.valid
    assert second.path == "/hook" and second.query == {"vin": "VR3UHZKXZMT800008"}
    assert second.headers["authorization"] == "Bearer t0k"
    assert second.headers["content-type"] == "application/json"
    signature = second.headers[SIGNATURE_HEADER.lower()]
    assert signature.startswith(f"t={T0 + 10_000},")
    assert verify(secret, second.body, signature, now_ms=T0 + 10_000)
    doc = json.loads(second.body)
    assert doc["callbackId"] == "cb1" and doc["type"] == "Monitor"
    assert doc["attributes"] == [{"key": "label", "value": "replaced"}]
    (done,) = store.deliveries()
    assert (
        done.state is DeliveryState.DELIVERED and done.attempts == 2 and done.done_ms == T0 + 10_000
    )
    assert secret not in done.last_error and secret not in json.dumps(done.headers)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_is_retried_then_dropped_after_72_h(store: SqliteStore) -> None:
    secret = new_secret()
    callback = make_callback(store, f"http://127.0.0.1:{free_port()}/hook", secret)
    clock = Clock()
    for _ in range(3):
        enqueue_message(store, callback, MESSAGE, variables={"vin": "V"}, now_ms=clock.now)
    with WebhookSender(store, clock_ms=clock, timeout_s=2) as sender:
        report = sender.deliver_due()
        assert report == DeliveryReport(0, 3, 0)
        first, *others = store.deliveries()
        assert "ConnectError" in first.last_error
        assert all(d.last_error.startswith("not tried: 127.0.0.1:") for d in others)
        # Every 10 s for 72 h: the last attempt that can still be retried, then the drop.
        clock.now = T0 + 72 * 3_600_000 - 10_000
        assert sender.deliver_due() == DeliveryReport(0, 0, 3)
    dropped = store.deliveries(state=DeliveryState.DROPPED)
    assert len(dropped) == 3 and all(d.done_ms == clock.now for d in dropped)
    assert all(secret not in d.last_error for d in dropped)


def test_a_notification_due_after_72_h_is_dropped_untried(store: SqliteStore) -> None:
    secret = new_secret()
    receiver = start_receiver(secret)
    try:
        callback = make_callback(store, receiver.url, secret)
        enqueue_message(store, callback, MESSAGE, variables={}, now_ms=T0)
        clock = Clock(T0 + 72 * 3_600_000)
        with WebhookSender(store, clock_ms=clock) as sender:
            assert sender.deliver_due() == DeliveryReport(0, 0, 1)
    finally:
        assert receiver.server is not None
        receiver.server.shutdown()
    assert receiver.got == []
    (dropped,) = store.deliveries()
    assert dropped.state is DeliveryState.DROPPED and "72 h" in dropped.last_error


def test_a_deleted_callback_drops_its_notifications(store: SqliteStore) -> None:
    callback = make_callback(store, "http://127.0.0.1:9/hook", new_secret())
    enqueue_message(store, callback, MESSAGE, variables={}, now_ms=T0)
    store.delete_record("callback", "cb1")
    with WebhookSender(store, clock_ms=Clock()) as sender:
        assert sender.deliver_due() == DeliveryReport(0, 0, 1)
    assert store.deliveries()[0].last_error == "the callback was deleted"


def test_a_redirect_is_not_followed_and_not_received(store: SqliteStore) -> None:
    secret = new_secret()
    receiver = start_receiver(secret, [302, 204])
    try:
        callback = make_callback(store, receiver.url, secret)
        enqueue_message(store, callback, MESSAGE, variables={}, now_ms=T0)
        clock = Clock()
        with WebhookSender(store, clock_ms=clock, client=httpx.Client()) as sender:
            assert sender.deliver_due() == DeliveryReport(0, 1, 0)
            clock.now += 10_000
            assert sender.deliver_due() == DeliveryReport(0, 1, 0)  # only 200 means received
    finally:
        assert receiver.server is not None
        receiver.server.shutdown()
    assert [d.last_error for d in store.deliveries()] == ["HTTP 204"]


def test_the_run_loop_delivers_until_stopped(store: SqliteStore) -> None:
    secret = new_secret()
    receiver = start_receiver(secret)
    try:
        callback = make_callback(store, receiver.url, secret)
        enqueue_message(store, callback, MESSAGE, variables={}, now_ms=T0)
        stop = threading.Event()
        with WebhookSender(store, clock_ms=Clock()) as sender:
            thread = threading.Thread(target=sender.run, args=(stop, 0.01))
            thread.start()
            try:
                assert wait_for(lambda: bool(store.deliveries(state=DeliveryState.DELIVERED)))
            finally:
                stop.set()
                thread.join(10)
            assert not thread.is_alive()
    finally:
        assert receiver.server is not None
        receiver.server.shutdown()
    assert len(receiver.notifications()) == 1
