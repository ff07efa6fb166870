"""Shared fixtures: a real MQTT broker, MQTT test clients and a fresh SQLite store.

``broker`` is one Mosquitto for the whole test session (the embedded amqtt broker only where
no ``mosquitto`` binary exists); ``fresh_broker`` is one per test, for tests that stop or
restart it. Tests sharing ``broker`` keep apart by using their own VINs and client ids.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.broker import EmbeddedBroker, MosquittoBroker, start_test_broker
from gateway.store import SqliteStore

AnyBroker = MosquittoBroker | EmbeddedBroker

WAIT = 10.0  # seconds: the bound of every wait on the network in the tests


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnyBroker]:
    """A broker for the whole session (Mosquitto where installed)."""
    started = start_test_broker(tmp_path_factory.mktemp("broker"))
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[AnyBroker]:
    """A broker of this test's own, which the test may stop, kill or restart."""
    started = start_test_broker(tmp_path / "broker")
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def tmp_db(tmp_path: Path) -> Iterator[SqliteStore]:
    """A fresh, migrated SQLite store in the test's temporary folder."""
    store = SqliteStore(tmp_path / "gateway.sqlite3")
    try:
        yield store
    finally:
        store.close()


_ids = itertools.count()


@pytest.fixture
def unique_id(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """A factory of names unique to this test (client ids, topics)."""
    base = request.node.name.replace("[", "-").replace("]", "")[:40]

    def make(prefix: str = "c") -> str:
        return f"{prefix}-{base}-{next(_ids)}"

    return make


class PahoClient:
    """A paho client whose every step is waited for with a bound (no sleeps)."""

    def __init__(
        self,
        broker: AnyBroker,
        client_id: str,
        *,
        clean_session: bool = True,
        will: tuple[str, bytes, int, bool] | None = None,
    ) -> None:
        self.broker = broker
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._subscribed: dict[int, threading.Event] = {}
        self.session_present: bool | None = None
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
        )
        if will is not None:
            topic, payload, qos, retain = will
            self.paho.will_set(topic, payload, qos, retain)
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = lambda _c, _u, m: self.messages.put(m)
        self.paho.on_subscribe = self._on_subscribe

    def _on_connect(
        self, _c: object, _u: object, flags: mqtt.ConnectFlags, rc: object, _p: object
    ) -> None:
        self.session_present = flags.session_present
        self._connected.set()

    def _on_disconnect(self, *_args: object) -> None:
        self._disconnected.set()

    def _on_subscribe(self, _c: object, _u: object, mid: int, *_rest: object) -> None:
        self._subscribed.setdefault(mid, threading.Event()).set()

    def connect(self) -> PahoClient:
        """Connect and wait for the CONNACK."""
        self._connected.clear()
        self._disconnected.clear()
        self.paho.connect(self.broker.host, self.broker.port, keepalive=30)
        self.paho.loop_start()
        assert self._connected.wait(WAIT), "no CONNACK"
        return self

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK."""
        _rc, mid = self.paho.subscribe(topic, qos)
        assert mid is not None
        event = self._subscribed.setdefault(mid, threading.Event())
        assert event.wait(WAIT), "no SUBACK"

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish and wait until the broker acknowledged it (QoS 1)."""
        info = self.paho.publish(topic, payload, qos, retain)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def publish_many(self, items: list[tuple[str, bytes]], qos: int = 1) -> None:
        """Publish all, then wait until each was acknowledged."""
        infos = [self.paho.publish(topic, payload, qos) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(WAIT)
            assert info.is_published()

    def get(self, n: int = 1, timeout: float = WAIT) -> list[mqtt.MQTTMessage]:
        """The next ``n`` messages (fails the test if they do not come in time)."""
        return [self.messages.get(timeout=timeout) for _ in range(n)]

    def disconnect(self) -> None:
        """A clean DISCONNECT (no last will)."""
        if self.paho.is_connected():
            self.paho.disconnect()
            self._disconnected.wait(WAIT)
        self.paho.loop_stop()

    def drop(self) -> None:
        """Vanish without a DISCONNECT, as a box losing power does (the last will fires)."""
        self.paho.loop_stop()
        sock = self.paho.socket()
        if sock is not None:
            sock.close()


@pytest.fixture
def mqtt_client() -> Iterator[Callable[..., PahoClient]]:
    """A factory of connected-on-demand :class:`PahoClient` objects, all stopped afterwards."""
    made: list[PahoClient] = []

    def make(broker: AnyBroker, client_id: str, **options: object) -> PahoClient:
        client = PahoClient(broker, client_id, **options)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        client.disconnect()
