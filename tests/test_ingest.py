"""The gateway's ingest through a real broker: nothing lost, nothing stored twice."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from firmware_sim.cli import gateway as cli_gateway
from firmware_sim.payload import Privacy, Series, Trigger, Uplink, encode_uplink
from gateway.broker import EmbeddedBroker, MosquittoBroker, free_port
from gateway.errors import BrokerError
from gateway.ingest import (
    GatewayThread,
    classify_topic,
    parse_broker_url,
    presence_topic,
    uplink_topic,
)
from gateway.store import Kind, SqliteStore, Store

AnyBroker = MosquittoBroker | EmbeddedBroker
BASE = 1_795_000_000_000
WAIT = 30.0


_vins = itertools.count(1)

# ``tcusim gateway`` alone, with debug logging, in a child process.
_CLI = """
import argparse, logging, sys
from firmware_sim.cli import gateway
logging.basicConfig(level=logging.DEBUG)
parser = argparse.ArgumentParser()
gateway.add_subparser(parser.add_subparsers())
args = parser.parse_args()
sys.exit(args.func(args))
"""


def gateway_cli(*argv: str) -> int:
    """Run ``tcusim gateway ARGV`` in this process."""
    parser = argparse.ArgumentParser()
    cli_gateway.add_subparser(parser.add_subparsers())
    args = parser.parse_args(["gateway", *argv])
    status: int = args.func(args)
    return status


def new_vin() -> str:
    """A valid VIN no other test uses."""
    return f"VF3TEST{os.getpid() % 1000:03d}{next(_vins):07d}"


def payload(vin: str, seq: int, speed: int = 500) -> bytes:
    series = (Series(1, -1, (0, 1000), (speed, speed + 1)), Series(2, 0, (0,), (800 + seq,)))
    return encode_uplink(
        Uplink(vin, seq, BASE + seq * 60_000, Trigger.PERIODIC, Privacy.NONE, series)
    )


@pytest.fixture
def gateways(
    tmp_path: Path, unique_id: Callable[[str], str], mqtt_client: Callable[..., object]
) -> Iterator[Callable[..., GatewayThread]]:
    """Start gateways on a test database; stop them and end their broker sessions after."""
    made: list[tuple[GatewayThread, AnyBroker, str]] = []
    default_id = unique_id("gw")

    def start(broker: AnyBroker, client_id: str = default_id, **options: object) -> GatewayThread:
        gw = GatewayThread(tmp_path / "gateway.sqlite3", broker.url, client_id=client_id, **options)
        gw.start(connect_timeout=WAIT)
        made.append((gw, broker, client_id))
        return gw

    yield start
    for gw, _broker, _client_id in made:
        gw.stop()
    for client_id in {c for _g, _b, c in made}:
        broker = next(b for _g, b, c in made if c == client_id)
        # A clean session of the same id ends the persistent one on the shared broker.
        with contextlib.suppress(OSError, AssertionError):
            mqtt_client(broker, client_id).connect().disconnect()


def test_every_payload_is_stored_exactly_once(
    broker: AnyBroker,
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., object],
    unique_id: Callable[[str], str],
) -> None:
    gw = gateways(broker)
    vins = [new_vin() for _ in range(3)]
    box = mqtt_client(broker, unique_id("box")).connect()
    n = 400
    box.publish_many([(uplink_topic(vins[i % 3]), payload(vins[i % 3], i // 3)) for i in range(n)])
    # The gateway counts a batch just after its commit: wait for both.
    assert gw.wait_until(lambda s: s.payload_count() >= n and gw.stats.accepted >= n, WAIT)
    store = gw.reader()
    assert store.payload_count() == n
    assert store.sample_count() == 3 * n
    assert store.counters()["duplicates"] == 0
    for vin in vins:
        assert store.seq_gaps(vin) == []
    stats = gw.stats
    assert (stats.accepted, stats.rejected, stats.duplicates) == (n, 0, 0)
    assert stats.manual_ack
    assert stats.acked == stats.received
    assert stats.queue_depth == 0


def test_duplicates_are_counted_once_stored(
    broker: AnyBroker,
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., object],
    unique_id: Callable[[str], str],
) -> None:
    gw = gateways(broker)
    vin = new_vin()
    box = mqtt_client(broker, unique_id("box")).connect()
    box.publish_many(
        [(uplink_topic(vin), payload(vin, 0))] * 3 + [(uplink_topic(vin), payload(vin, 1))]
    )
    assert gw.wait_until(lambda s: s.counters()["accepted"] + s.counters()["duplicates"] >= 4, WAIT)
    store = gw.reader()
    assert store.payload_count(vin) == 2
    assert store.counters()["duplicates"] == 2
    assert store.sample_count(vin) == 6


def test_garbage_is_kept_as_rejections_and_ingest_goes_on(
    broker: AnyBroker,
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., object],
    unique_id: Callable[[str], str],
) -> None:
    gw = gateways(broker)
    vin, other = new_vin(), new_vin()
    box = mqtt_client(broker, unique_id("box")).connect()
    bad = [
        (uplink_topic(vin), b"\xff\xfenot cbor"),
        (uplink_topic(vin), b""),
        (uplink_topic(vin), payload(other, 0)),
        (presence_topic(vin), b"not json"),
        ("tcusim/v1//up", payload(vin, 5)),
    ]
    box.publish_many([*bad, (uplink_topic(vin), payload(vin, 0))])
    assert gw.wait_until(lambda s: s.payload_count(vin) == 1 and gw.stats.rejected >= 5, WAIT)
    store = gw.reader()
    reasons = sorted(r.reason for r in store.rejections() if r.topic in {t for t, _ in bad})
    assert reasons == ["bad_presence", "bad_topic", "not_cbor", "not_cbor", "vin_mismatch"]
    kept = {r.raw for r in store.rejections()}
    assert {raw for _t, raw in bad} <= kept
    assert gw.running
    assert gw.stats.rejected == 5


def test_presence_and_last_will(
    broker: AnyBroker,
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., object],
    unique_id: Callable[[str], str],
) -> None:
    gw = gateways(broker)
    vin = new_vin()
    offline = json.dumps({"state": "offline", "boot": 3}).encode()
    box = mqtt_client(broker, unique_id("box"), will=(presence_topic(vin), offline, 1, True))
    box.connect().publish(
        presence_topic(vin), json.dumps({"state": "online", "boot": 3}).encode(), retain=True
    )

    def presence_is(state: str) -> Callable[[Store], bool]:
        def check(s: Store) -> bool:
            v = s.vehicle(vin)
            return v is not None and v.presence == state

        return check

    assert gw.wait_until(presence_is("online"), WAIT)
    box.drop()
    assert gw.wait_until(presence_is("offline"), WAIT)
    vehicle = gw.reader().vehicle(vin)
    assert vehicle is not None and vehicle.boot == 3


def test_seq_gap_is_reported(
    broker: AnyBroker,
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., object],
    unique_id: Callable[[str], str],
) -> None:
    gw = gateways(broker)
    vin = new_vin()
    box = mqtt_client(broker, unique_id("box")).connect()
    box.publish_many([(uplink_topic(vin), payload(vin, seq)) for seq in (0, 1, 3, 4, 7)])
    assert gw.wait_until(lambda s: s.payload_count(vin) == 5, WAIT)
    assert gw.reader().seq_gaps(vin) == [2, 5, 6]


def test_gateway_stopped_while_a_box_publishes_loses_nothing(
    broker: AnyBroker,
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., object],
    unique_id: Callable[[str], str],
) -> None:
    if isinstance(broker, EmbeddedBroker):
        pytest.skip("amqtt drops QoS 1 messages in flight to a disconnecting client")
    gw = gateways(broker)
    vin = new_vin()
    box = mqtt_client(broker, unique_id("box")).connect()
    published = [0]
    last = [-1]  # the publisher stops after this seq once it is set
    finish = threading.Event()

    def publish() -> None:
        seq = 0
        while not finish.is_set() or seq <= last[0]:
            box.publish(uplink_topic(vin), payload(vin, seq))
            seq += 1
            published[0] = seq

    publishing = threading.Thread(target=publish)
    publishing.start()
    try:
        assert gw.wait_until(lambda s: s.payload_count(vin) >= 50, WAIT)
        gw.stop()
        # The box goes on: 200 more uploads while the gateway is away.
        last[0] = published[0] + 200
    finally:
        finish.set()
        publishing.join(WAIT)
    assert not publishing.is_alive()
    n = published[0]
    with SqliteStore(gw.db) as store:
        assert store.payload_count(vin) <= n - 200
    again = gateways(broker)
    assert again.wait_until(lambda s: s.payload_count(vin) == n, WAIT), again.stats
    store = again.reader()
    assert store.seq_gaps(vin) == []
    assert store.sample_count(vin) == 3 * n
    assert store.counters()["rejected"] == 0


def test_broker_restart_loses_nothing(
    fresh_broker: AnyBroker,
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., object],
    unique_id: Callable[[str], str],
) -> None:
    if not isinstance(fresh_broker, MosquittoBroker):
        pytest.skip("the embedded broker keeps nothing across a restart")
    vin = new_vin()
    gw = gateways(fresh_broker)
    box = mqtt_client(fresh_broker, unique_id("box")).connect()
    box.publish_many([(uplink_topic(vin), payload(vin, i)) for i in range(100)])
    assert gw.wait_until(lambda s: s.payload_count(vin) == 100, WAIT)
    # 1. The broker restarts under a running gateway: it reconnects to its session.
    fresh_broker.restart()
    box = mqtt_client(fresh_broker, unique_id("box")).connect()
    box.publish_many([(uplink_topic(vin), payload(vin, i)) for i in range(100, 200)])
    assert gw.wait_until(lambda s: s.payload_count(vin) == 200, WAIT), gw.stats
    assert gw.stats.connects >= 2
    # 2. Messages queued for the stopped gateway survive a broker restart (persistence).
    gw.stop()
    box.publish_many([(uplink_topic(vin), payload(vin, i)) for i in range(200, 300)])
    box.disconnect()
    fresh_broker.restart()
    again = gateways(fresh_broker)
    assert again.wait_until(lambda s: s.payload_count(vin) == 300, WAIT), again.stats
    assert again.reader().seq_gaps(vin) == []


def test_a_gateway_killed_before_its_commit_gets_the_messages_again(
    fresh_broker: AnyBroker,
    tmp_path: Path,
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., object],
    unique_id: Callable[[str], str],
) -> None:
    if isinstance(fresh_broker, EmbeddedBroker):
        pytest.skip("amqtt drops QoS 1 messages in flight to a client that vanishes")
    # The acknowledgement leaves only after the commit: a gateway process killed while it
    # holds received messages has not acknowledged them, so the broker sends them again.
    client_id = unique_id("gw")
    db = tmp_path / "gateway.sqlite3"
    vin = new_vin()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CLI,
            "gateway",
            "ingest",
            "--broker",
            fresh_broker.url,
            "--db",
            str(db),
            "--client-id",
            client_id,
            "--batch-wait",
            "600",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        for line in proc.stderr:
            lines.append(line)
            if "subscribed to" in line:
                break
        else:
            pytest.fail("".join(lines))
        box = mqtt_client(fresh_broker, unique_id("box")).connect()
        box.publish_many([(uplink_topic(vin), payload(vin, i)) for i in range(20)])
        for line in proc.stderr:
            lines.append(line)
            if "holding" in line:
                break
        else:
            pytest.fail("".join(lines))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT)
    with SqliteStore(db) as store:
        assert store.payload_count(vin) == 0  # killed before any commit
    gw = gateways(fresh_broker, client_id=client_id)
    assert gw.wait_until(lambda s: s.payload_count(vin) == 20, WAIT), gw.stats


def test_gateway_start_without_a_broker_is_a_broker_error(tmp_path: Path) -> None:
    gw = GatewayThread(tmp_path / "g.sqlite3", f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(BrokerError, match="did not subscribe"):
        gw.start(connect_timeout=0.5)
    assert not gw.running


def test_topics() -> None:
    assert uplink_topic("V") == "tcusim/v1/V/up"
    assert presence_topic("V") == "tcusim/v1/V/presence"
    assert classify_topic("tcusim/v1/V/up") == ("V", Kind.UPLINK)
    assert classify_topic("tcusim/v1/V/presence") == ("V", Kind.PRESENCE)
    assert classify_topic("tcusim/v1//up") == (None, Kind.UNKNOWN)
    assert classify_topic("tcusim/v2/V/up") == (None, Kind.UNKNOWN)
    assert classify_topic("tcusim/v1/V/down") == ("V", Kind.UNKNOWN)
    assert classify_topic("tcusim/v1/V/up/x") == (None, Kind.UNKNOWN)


def test_broker_urls() -> None:
    assert parse_broker_url("mqtt://127.0.0.1:1999") == ("127.0.0.1", 1999)
    assert parse_broker_url("localhost") == ("localhost", 1883)
    with pytest.raises(BrokerError):
        parse_broker_url("http://x:1")
    with pytest.raises(BrokerError):
        parse_broker_url("mqtt://x:99999")


# -- the CLI ------------------------------------------------------------------------------


def test_cli_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "g.sqlite3"
    vin = new_vin()
    with SqliteStore(db) as store:
        store.ingest(vin, payload(vin, 0), BASE)
        store.ingest(vin, payload(vin, 2), BASE + 1)
        store.ingest(vin, b"junk", BASE + 2)
        store.ingest_presence(vin, b'{"state": "online", "boot": 1}', BASE + 3)
    assert gateway_cli("status", vin, "--db", str(db)) == 0
    text = capsys.readouterr().out
    assert "Vehicle.Speed" in text
    assert "km/h" in text
    assert "online" in text
    assert "not_cbor" in text
    assert "seq gaps" in text and "1 (1)" in text
    assert gateway_cli("status", vin, "--db", f"sqlite:///{db}", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["payloads"] == 2
    assert status["gaps"] == {"count": 1, "ranges": [[1, 1]]}
    assert status["last_rejections"][0]["reason"] == "not_cbor"
    assert gateway_cli("status", new_vin(), "--db", str(db)) == 1
    assert gateway_cli("status", vin, "--db", str(tmp_path / "none.sqlite3")) == 1


def test_embedded_broker_keeps_the_session_of_a_stopped_gateway(
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., object],
    unique_id: Callable[[str], str],
) -> None:
    with EmbeddedBroker() as embedded:
        vin = new_vin()
        gw = gateways(embedded)
        box = mqtt_client(embedded, unique_id("box")).connect()
        box.publish_many([(uplink_topic(vin), payload(vin, i)) for i in range(100)])
        assert gw.wait_until(lambda s: s.payload_count(vin) == 100, WAIT), gw.stats
        gw.stop()
        # amqtt drops what is in flight to a client while it handles its disconnection.
        assert embedded.wait_client(gw.client_id, connected=False, timeout=WAIT)
        box.publish_many([(uplink_topic(vin), payload(vin, i)) for i in range(100, 200)])
        again = gateways(embedded)
        assert again.wait_until(lambda s: s.payload_count(vin) == 200, WAIT), again.stats
        assert again.reader().counters()["rejected"] == 0
        assert again.stats.manual_ack
