"""The brokers the project starts: QoS 1, retained messages, last wills, persistent sessions."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.broker import (
    EmbeddedBroker,
    MosquittoBroker,
    MosquittoSettings,
    broker_available,
    find_mosquitto,
    free_port,
)
from gateway.errors import BrokerError

needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")

AnyBroker = MosquittoBroker | EmbeddedBroker


@pytest.fixture(params=["mosquitto", "embedded"])
def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnyBroker]:
    """Each broker implementation in turn."""
    if request.param == "mosquitto":
        if find_mosquitto() is None:
            pytest.skip("mosquitto is not installed")
        started: AnyBroker = MosquittoBroker(data_dir=tmp_path / "mosquitto")
    else:
        started = EmbeddedBroker()
    started.start()
    try:
        yield started
    finally:
        started.close()


def test_url_host_and_port(any_broker: AnyBroker) -> None:
    assert any_broker.host == "127.0.0.1"
    assert any_broker.url == f"mqtt://127.0.0.1:{any_broker.port}"
    with socket.create_connection((any_broker.host, any_broker.port), timeout=2):
        pass


def test_qos1_round_trip_in_order(
    any_broker: AnyBroker, mqtt_client: Callable[..., object], unique_id: Callable[[str], str]
) -> None:
    sub = mqtt_client(any_broker, unique_id("sub")).connect()
    sub.subscribe("rt/#", 1)
    pub = mqtt_client(any_broker, unique_id("pub")).connect()
    sent = [(f"rt/{i % 3}", f"m{i}".encode()) for i in range(200)]
    pub.publish_many(sent, qos=1)
    got = sub.get(len(sent))
    assert [(m.topic, m.payload) for m in got] == sent
    assert {m.qos for m in got} == {1}
    assert sub.messages.empty()


def test_retained_message_reaches_a_later_subscriber(
    any_broker: AnyBroker, mqtt_client: Callable[..., object], unique_id: Callable[[str], str]
) -> None:
    pub = mqtt_client(any_broker, unique_id("pub")).connect()
    pub.publish("ret/VIN1/presence", b'{"state": "online", "boot": 3}', qos=1, retain=True)
    later = mqtt_client(any_broker, unique_id("late")).connect()
    later.subscribe("ret/+/presence", 1)
    (message,) = later.get(1)
    assert message.retain
    assert message.payload == b'{"state": "online", "boot": 3}'


def test_last_will_on_abrupt_disconnect_only(
    any_broker: AnyBroker, mqtt_client: Callable[..., object], unique_id: Callable[[str], str]
) -> None:
    watcher = mqtt_client(any_broker, unique_id("watch")).connect()
    watcher.subscribe("will/#", 1)
    offline = b'{"state": "offline", "boot": 1}'
    polite = mqtt_client(any_broker, unique_id("polite"), will=("will/A", offline, 1, True))
    polite.connect().disconnect()
    box = mqtt_client(any_broker, unique_id("box"), will=("will/B", offline, 1, True))
    box.connect().drop()
    (message,) = watcher.get(1)
    assert (message.topic, message.payload) == ("will/B", offline)
    # The will was retained: a newcomer sees the box offline, and nothing for the polite one.
    newcomer = mqtt_client(any_broker, unique_id("new")).connect()
    newcomer.subscribe("will/#", 1)
    retained = newcomer.get(1)
    assert [(m.topic, m.payload, m.retain) for m in retained] == [("will/B", offline, True)]


def test_persistent_session_gets_what_was_published_while_away(
    any_broker: AnyBroker, mqtt_client: Callable[..., object], unique_id: Callable[[str], str]
) -> None:
    sub_id = unique_id("gw")
    sub = mqtt_client(any_broker, sub_id, clean_session=False).connect()
    sub.subscribe("away/+/up", 1)
    sub.disconnect()
    pub = mqtt_client(any_broker, unique_id("box")).connect()
    sent = [(f"away/V{i % 2}/up", f"{i}".encode()) for i in range(50)]
    pub.publish_many(sent)
    back = mqtt_client(any_broker, sub_id, clean_session=False).connect()
    assert back.session_present
    got = back.get(len(sent))
    assert sorted(m.payload for m in got) == sorted(p for _t, p in sent)


@needs_mosquitto
def test_mosquitto_queues_more_than_the_debian_default_for_an_offline_session(
    tmp_path: Path, mqtt_client: Callable[..., object], unique_id: Callable[[str], str]
) -> None:
    # Mosquitto's default max_queued_messages (1000) would drop all but 1000 of these.
    with MosquittoBroker(data_dir=tmp_path) as mosquitto:
        sub_id = unique_id("gw")
        sub = mqtt_client(mosquitto, sub_id, clean_session=False).connect()
        sub.subscribe("burst/#", 1)
        sub.disconnect()
        pub = mqtt_client(mosquitto, unique_id("box")).connect()
        n = 2500
        pub.publish_many([("burst/x", i.to_bytes(4, "big")) for i in range(n)])
        back = mqtt_client(mosquitto, sub_id, clean_session=False).connect()
        got = back.get(n)
        assert sorted(int.from_bytes(m.payload, "big") for m in got) == list(range(n))


@needs_mosquitto
def test_mosquitto_restart_on_the_same_port_keeps_queued_messages(
    tmp_path: Path, mqtt_client: Callable[..., object], unique_id: Callable[[str], str]
) -> None:
    with MosquittoBroker(data_dir=tmp_path) as mosquitto:
        port = mosquitto.port
        sub_id = unique_id("gw")
        sub = mqtt_client(mosquitto, sub_id, clean_session=False).connect()
        sub.subscribe("keep/#", 1)
        sub.disconnect()
        pub = mqtt_client(mosquitto, unique_id("box")).connect()
        sent = [("keep/a", f"{i}".encode()) for i in range(30)]
        pub.publish_many(sent)
        pub.disconnect()
        first_pid = mosquitto.pid
        mosquitto.restart()
        assert mosquitto.port == port
        assert mosquitto.pid != first_pid
        assert (tmp_path / "mosquitto.db").is_file()
        back = mqtt_client(mosquitto, sub_id, clean_session=False).connect()
        assert back.session_present
        got = back.get(len(sent))
        assert [m.payload for m in got] == [p for _t, p in sent]


@needs_mosquitto
def test_mosquitto_config_says_what_the_project_needs(tmp_path: Path) -> None:
    text = MosquittoBroker(data_dir=tmp_path).config_text(1234)
    assert "listener 1234 127.0.0.1" in text
    assert "max_queued_messages 0" in text
    assert "persistence true" in text
    assert f"persistence_location {tmp_path}/" in text


@needs_mosquitto
def test_mosquitto_on_a_taken_port_is_a_broker_error_with_the_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = MosquittoBroker(port=port, data_dir=tmp_path)
        with pytest.raises(BrokerError, match="in use"):
            broker.start()
        assert not broker.running


@needs_mosquitto
def test_mosquitto_kill_then_start_serves_again(tmp_path: Path) -> None:
    broker = MosquittoBroker(data_dir=tmp_path, settings=MosquittoSettings(autosave_interval=1))
    with broker:
        broker.kill()
        assert not broker.running
        broker.start()
        assert broker.running
        with socket.create_connection((broker.host, broker.port), timeout=2):
            pass


def test_missing_mosquitto_binary_is_a_broker_error(tmp_path: Path) -> None:
    broker = MosquittoBroker(data_dir=tmp_path, binary=str(tmp_path / "no-such-mosquitto"))
    with pytest.raises(BrokerError, match="cannot run"):
        broker.start()


def test_port_is_unknown_before_start() -> None:
    with pytest.raises(BrokerError):
        _ = EmbeddedBroker().port


def test_broker_available_names_the_one_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TCUSIM_TEST_BROKER", raising=False)
    assert broker_available() == ("mosquitto" if find_mosquitto() else "embedded")
    monkeypatch.setenv("TCUSIM_TEST_BROKER", "embedded")
    assert broker_available() == "embedded"


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_two_embedded_brokers_run_side_by_side(
    mqtt_client: Callable[..., object], unique_id: Callable[[str], str]
) -> None:
    with EmbeddedBroker() as one, EmbeddedBroker() as two:
        assert one.port != two.port
        for b in (one, two):
            sub = mqtt_client(b, unique_id("s")).connect()
            sub.subscribe("x", 1)
            mqtt_client(b, unique_id("p")).connect().publish("x", str(b.port).encode())
            assert sub.get(1)[0].payload == str(b.port).encode()


def _wait_for_save(db: Path, after_ns: int, timeout: float = 10.0) -> bool:
    """Whether Mosquitto rewrote its database after ``after_ns`` within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists() and db.stat().st_mtime_ns > after_ns:
            return True
        time.sleep(0.05)
    return False


@needs_mosquitto
def test_mosquitto_killed_after_an_autosave_keeps_queued_messages(
    tmp_path: Path, mqtt_client: Callable[..., object], unique_id: Callable[[str], str]
) -> None:
    with MosquittoBroker(data_dir=tmp_path) as mosquitto:
        sub_id = unique_id("gw")
        sub = mqtt_client(mosquitto, sub_id, clean_session=False).connect()
        sub.subscribe("crash/#", 1)
        sub.disconnect()
        pub = mqtt_client(mosquitto, unique_id("box")).connect()
        sent = [("crash/a", f"{i}".encode()) for i in range(25)]
        pub.publish_many(sent)
        pub.disconnect()
        acked_ns = time.time_ns()
        # Crash-safe from the next autosave on (autosave_interval 1 s), not before it.
        assert _wait_for_save(tmp_path / "mosquitto.db", acked_ns)
        mosquitto.kill()
        mosquitto.start()
        back = mqtt_client(mosquitto, sub_id, clean_session=False).connect()
        got = back.get(len(sent))
        assert [m.payload for m in got] == [p for _t, p in sent]
