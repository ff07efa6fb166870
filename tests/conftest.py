"""Shared fixtures: a real MQTT broker, MQTT test clients and a fresh SQLite store.

``broker`` is one Mosquitto for the whole test session (the embedded amqtt broker only where
no ``mosquitto`` binary exists); ``fresh_broker`` is one per test, for tests that stop or
restart it. Tests sharing ``broker`` keep apart by using their own VINs and client ids.

``tls_files`` makes a CA, a server certificate for 127.0.0.1 and a Mosquitto password file
(with ``openssl`` and ``mosquitto_passwd``); ``tls_broker`` is a Mosquitto with a TLS-only
listener that refuses anonymous clients. Both are skipped where the tools are missing.
"""

from __future__ import annotations

import itertools
import queue
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.broker import (
    EmbeddedBroker,
    MosquittoBroker,
    MosquittoSettings,
    find_mosquitto,
    start_test_broker,
)
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


@dataclass(frozen=True)
class TlsFiles:
    """A test CA, a server certificate and key it signed, and a password file of ``users``."""

    ca: Path
    server_cert: Path
    server_key: Path
    password_file: Path
    users: Mapping[str, str]


def openssl(*args: str, cwd: Path) -> None:
    """Run ``openssl ARGS`` in ``cwd``; fail the test on an error."""
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str = "ca", subject: str = "/CN=tcusim test CA") -> Path:
    """A self-signed CA certificate ``d/NAME.pem`` (key ``d/NAME.key``), valid two days."""
    openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject),
        *("-keyout", f"{name}.key", "-out", f"{name}.pem"),
        cwd=d,
    )
    return d / f"{name}.pem"


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1 and a password file (box, gateway)."""
    if shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("needs openssl and mosquitto_passwd")
    d = tmp_path_factory.mktemp("tls")
    ca = make_ca(d)
    openssl(
        *("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"),
        *("-keyout", "server.key", "-out", "server.csr"),
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        *("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem"),
        cwd=d,
    )
    users = {"box": "s3cret", "gateway": "gw-s3cret"}
    passwd = d / "passwd"
    for i, (user, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            ["mosquitto_passwd", "-b", *create, str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    return TlsFiles(ca, d / "server.pem", d / "server.key", passwd, users)


@pytest.fixture(scope="session")
def tls_broker(
    tls_files: TlsFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MosquittoBroker]:
    """A Mosquitto speaking TLS only, with the password file of :func:`tls_files`."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    settings = MosquittoSettings(
        certfile=str(tls_files.server_cert),
        keyfile=str(tls_files.server_key),
        password_file=str(tls_files.password_file),
    )
    started = MosquittoBroker(data_dir=tmp_path_factory.mktemp("tls-broker"), settings=settings)
    started.start()
    try:
        yield started
    finally:
        started.close()


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
        tls_ca: Path | None = None,
        username: str | None = None,
        password: str | None = None,
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
        if tls_ca is not None:
            self.paho.tls_set(ca_certs=str(tls_ca))
        if username is not None:
            self.paho.username_pw_set(username, password)
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
