"""The gateway's ingest through a real broker: nothing lost, nothing stored twice.

The tests that store through a gateway take the ``db`` fixture: each runs on a SQLite file
and on a PostgreSQL database (``tests/pg.py``; skipped without a server).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import PahoClient, TlsFiles, make_ca
from test_store import db_fixture, pg_url_fixture  # noqa: F401 (fixtures)

from firmware_sim.cli import gateway as cli_gateway
from firmware_sim.config import BrokerUrl
from firmware_sim.errors import ConfigError
from firmware_sim.payload import Privacy, Series, Trigger, Uplink, encode_uplink
from firmware_sim.scenario.model import load_scenario
from firmware_sim.scenario.runner import run_scenario
from gateway.broker import EmbeddedBroker, MosquittoBroker, free_port
from gateway.errors import BrokerError, OptionError
from gateway.ingest import (
    Gateway,
    GatewayThread,
    broker_url,
    classify_topic,
    presence_topic,
    share_filters,
    uplink_topic,
)
from gateway.store import Kind, SqliteStore, Store, open_store

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


def payload(vin: str, seq: int, speed: int = 500, *, boot: int = 0, evicted: int = 0) -> bytes:
    """An upload with a speed and an engine speed series, one minute per sequence number."""
    series = (Series(1, -1, (0, 1000), (speed, speed + 1)), Series(2, 0, (0,), (800 + seq,)))
    base = BASE + seq * 60_000 + boot * 86_400_000
    return encode_uplink(
        Uplink(vin, seq, base, Trigger.PERIODIC, Privacy.NONE, series, boot, evicted)
    )


@pytest.fixture
def gateways(
    db: str, unique_id: Callable[[str], str], mqtt_client: Callable[..., PahoClient]
) -> Iterator[Callable[..., GatewayThread]]:
    """Start gateways on a test database; stop them and end their broker sessions after."""
    made: list[tuple[GatewayThread, AnyBroker, str]] = []
    default_id = unique_id("gw")

    def start(broker: AnyBroker, client_id: str = default_id, **options: object) -> GatewayThread:
        gw = GatewayThread(db, broker.url, client_id=client_id, **options)
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
    mqtt_client: Callable[..., PahoClient],
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
    mqtt_client: Callable[..., PahoClient],
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
    mqtt_client: Callable[..., PahoClient],
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
    mqtt_client: Callable[..., PahoClient],
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
    mqtt_client: Callable[..., PahoClient],
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
    mqtt_client: Callable[..., PahoClient],
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
    with open_store(gw.db) as stopped:
        assert stopped.payload_count(vin) <= n - 200
    again = gateways(broker)
    assert again.wait_until(lambda s: s.payload_count(vin) == n, WAIT), again.stats
    store = again.reader()
    assert store.seq_gaps(vin) == []
    assert store.sample_count(vin) == 3 * n
    assert store.counters()["rejected"] == 0


def test_broker_restart_loses_nothing(
    fresh_broker: AnyBroker,
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., PahoClient],
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
    db: str,
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., PahoClient],
    unique_id: Callable[[str], str],
) -> None:
    if isinstance(fresh_broker, EmbeddedBroker):
        pytest.skip("amqtt drops QoS 1 messages in flight to a client that vanishes")
    # The acknowledgement leaves only after the commit: a gateway process killed while it
    # holds received messages has not acknowledged them, so the broker sends them again.
    client_id = unique_id("gw")
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
            db,
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
    with open_store(db) as store:
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
    assert broker_url("mqtt://127.0.0.1:1999") == BrokerUrl("127.0.0.1", 1999, False)
    url = broker_url("mqtts://gw:pa55@broker.example")
    assert (url.host, url.port, url.tls, url.username, url.password) == (
        "broker.example",
        8883,
        True,
        "gw",
        "pa55",
    )
    assert broker_url(url) is url
    bad = ["http://x:1", "mqtt://x:99999", "localhost"]
    for password in ("hunter2", "hun@ter2", "hunter\\2", "hunter'2"):
        bad += [f"mqtt://u:{password}@x:99999", f"http://u:{password}@x", f"mqtt://u:{password}@"]
    for text in bad:
        with pytest.raises(BrokerError) as caught:
            broker_url(text)
        assert "ter2" not in str(caught.value), text


def test_tls_options_are_checked_before_connecting(tmp_path: Path) -> None:
    store = SqliteStore(":memory:")
    with pytest.raises(OptionError, match="mqtts://"):
        Gateway(store, "mqtt://127.0.0.1:1", tls_ca=tmp_path / "ca.pem")
    with pytest.raises(BrokerError, match="TLS set-up"):
        Gateway(store, "mqtts://127.0.0.1:1", tls_ca=tmp_path / "missing.pem")
    with pytest.raises(OptionError, match="go together"):
        Gateway(store, "mqtts://127.0.0.1:1", tls_cert=tmp_path / "c.pem")
    with pytest.raises(OptionError, match="batch_size"):
        Gateway(store, "mqtt://127.0.0.1:1", batch_size=0)
    with pytest.raises(OptionError, match="batch_wait"):
        Gateway(store, "mqtt://127.0.0.1:1", batch_wait=float("nan"))
    with pytest.raises(BrokerError, match="TLS set-up"):
        GatewayThread(tmp_path / "g.sqlite3", "mqtts://127.0.0.1:1", tls_ca="missing").start()
    store.close()


def test_secrets_stay_out_of_reprs() -> None:
    gw = GatewayThread(":memory:", "mqtts://gw:hunter2@127.0.0.1:8883")
    assert gw.broker_url == "mqtts://127.0.0.1:8883"
    assert gw.broker.password == "hunter2"
    with SqliteStore(":memory:") as store:
        gateway = Gateway(store, gw.broker)
        shown = " ".join([repr(gw), str(gw), repr(gateway), repr(gateway.broker), str(gw.broker)])
    assert "hunter2" not in shown
    assert "127.0.0.1" in shown


# -- TLS and credentials, against a Mosquitto with a TLS listener and a password file ------


def tls_url(broker: MosquittoBroker, user: str, password: str) -> str:
    """The broker's ``mqtts://`` URL with credentials."""
    return broker.url.replace("mqtts://", f"mqtts://{user}:{password}@")


def test_the_gateway_ingests_over_tls_with_credentials(
    tls_broker: MosquittoBroker,
    tls_files: TlsFiles,
    mqtt_client: Callable[..., PahoClient],
    unique_id: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = tls_files.users["gateway"]
    vin = new_vin()
    gw = GatewayThread(
        ":memory:",
        tls_url(tls_broker, "gateway", secret),
        tls_ca=tls_files.ca,
        client_id=unique_id("gw"),
    )
    with gw:
        box = mqtt_client(
            tls_broker,
            unique_id("box"),
            tls_ca=tls_files.ca,
            username="box",
            password=tls_files.users["box"],
        ).connect()
        box.publish_many([(uplink_topic(vin), payload(vin, seq)) for seq in range(5)])
        assert gw.wait_until(lambda s: s.payload_count(vin) == 5, WAIT), gw.stats
        stats = gw.stats
        assert stats.connected and stats.refusals == 0 and stats.manual_ack
        assert secret not in repr(gw) + repr(stats)
    assert "subscribed to" in caplog.text  # the gateway's own debug log was captured
    assert secret not in caplog.text


def test_a_wrong_password_is_a_clear_refusal_not_a_crash(
    tls_broker: MosquittoBroker,
    tls_files: TlsFiles,
    tmp_path: Path,
    unique_id: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = tls_url(tls_broker, "gateway", "wrong-pa55")
    options = {"tls_ca": tls_files.ca, "client_id": unique_id("gw"), "reconnect_max": 0.2}
    gw = GatewayThread(tmp_path / "g.sqlite3", url, **options)
    with pytest.raises(BrokerError, match="refused the gateway: Not authorized") as caught:
        gw.start(connect_timeout=WAIT)
    assert not gw.running
    assert "wrong-pa55" not in str(caught.value)
    # Left running, it keeps trying with backoff and says why it is not connected.
    gw = GatewayThread(tmp_path / "g.sqlite3", url, **options)
    gw.start(connect_timeout=None)
    try:
        assert gw.wait_stats(lambda s: s.refusals >= 2, WAIT), gw.stats
        assert gw.running
        stats = gw.stats
        assert not stats.connected and stats.connects == 0
        assert stats.refused == "Not authorized"
        assert "refused the connection: Not authorized" in stats.last_error
    finally:
        gw.stop()
    assert "wrong-pa55" not in caplog.text


def test_an_untrusted_broker_certificate_never_connects(
    tls_broker: MosquittoBroker,
    tls_files: TlsFiles,
    tmp_path: Path,
    unique_id: Callable[[str], str],
) -> None:
    other_ca = make_ca(tmp_path, "other", "/CN=another CA")
    url = tls_url(tls_broker, "gateway", tls_files.users["gateway"])
    gw = GatewayThread(tmp_path / "g.sqlite3", url, tls_ca=other_ca, client_id=unique_id("gw"))
    gw.start(connect_timeout=None)
    try:
        assert gw.wait_stats(lambda s: s.connect_failures >= 1, WAIT), gw.stats
        stats = gw.stats
        assert stats.connects == 0 and stats.refusals == 0
        assert "CERTIFICATE_VERIFY_FAILED" in stats.last_error
    finally:
        gw.stop()


# -- the CLI ------------------------------------------------------------------------------


def test_cli_status(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    vin = new_vin()
    with open_store(db) as store:
        store.ingest(vin, payload(vin, 0, boot=2), BASE)
        store.ingest(vin, payload(vin, 3, boot=2, evicted=1), BASE + 1)
        store.ingest(vin, b"junk", BASE + 2)
        store.ingest_presence(vin, b'{"state": "online", "boot": 1}', BASE + 3)
        store.ingest(vin, payload(vin, 0, boot=1), BASE + 4)  # a wiped box's first upload
    assert gateway_cli("status", vin, "--db", db) == 0
    text = capsys.readouterr().out
    assert "Vehicle.Speed" in text
    assert "km/h" in text
    assert "online" in text
    assert "not_cbor" in text
    words = " ".join(text.split())
    assert "seq gaps 2 (1-2); evicted by the box: 1; not explained by evictions: 1" in words
    assert "box reset since 2026-11-18T11:06:40.004Z: the flash was wiped" in words
    assert "its uploads kept as box_reset rejections: 1" in words
    url = db if "://" in db else f"sqlite:///{db}"
    assert gateway_cli("status", vin, "--db", url, "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["payloads"] == 2
    assert status["gaps"] == {
        "count": 2,
        "ranges": [[1, 2]],
        "evicted_by_box": 1,
        "unexplained": 1,
    }
    assert status["box_reset"]["uploads"] == 1
    assert [r["reason"] for r in status["last_rejections"]] == ["not_cbor", "box_reset"]
    assert gateway_cli("status", new_vin(), "--db", db) == 1


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command wrote to standard error, which must be one error line."""
    captured = capsys.readouterr()
    assert captured.err.startswith("tcusim: error: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    return captured.err


def test_cli_status_reads_and_never_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "g.sqlite3"
    vin = new_vin()
    with SqliteStore(db) as store:
        store.ingest(vin, payload(vin, 0), BASE)
    before = db.read_bytes()
    assert gateway_cli("status", vin, "--db", str(db)) == 0
    assert db.read_bytes() == before
    # The box's flash (or any SQLite file that is not the gateway's) is left as it was.
    flash = tmp_path / "box" / "flash.sqlite3"
    flash.parent.mkdir()
    conn = sqlite3.connect(flash)
    conn.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, payload BLOB)")
    conn.commit()
    conn.close()
    before = flash.read_bytes()
    capsys.readouterr()
    assert gateway_cli("status", vin, "--db", str(flash)) == 2
    assert "not a tcusim gateway database" in one_error_line(capsys)
    assert flash.read_bytes() == before
    assert [p.name for p in flash.parent.iterdir()] == ["flash.sqlite3"]
    # A path where nothing is: no directory, no database.
    for target in (f"sqlite:///{tmp_path}/new/g.sqlite3", str(tmp_path / "none.sqlite3")):
        assert gateway_cli("status", vin, "--db", target) == 2
        assert "no such database" in one_error_line(capsys)
    assert not (tmp_path / "new").exists() and not (tmp_path / "none.sqlite3").exists()
    # A schema newer than this code: refused, not misread.
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    conn.commit()
    conn.close()
    assert gateway_cli("status", vin, "--db", str(db)) == 2
    assert "newer" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "--broker", "mqtt://h", "--batch-size", "0"], "must be at least 1, not 0"),
        (["ingest", "--broker", "mqtt://h", "--batch-size", "many"], "not an integer"),
        (["ingest", "--broker", "mqtt://h", "--batch-wait", "-1"], "finite number >= 0"),
        (["ingest", "--broker", "mqtt://h", "--batch-wait", "nan"], "finite number >= 0"),
        (["status", "VIN", "--rejections", "-1"], "must be at least 0"),
    ],
)
def test_cli_refuses_bad_options(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as leaving:
        gateway_cli(*argv)
    assert leaving.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--broker", "http://h:1"], "scheme must be mqtt:// or mqtts://"),
        (["--broker", "mqtt://gw:hunter2@h:99999"], "out of range"),
        (["--broker", "mqtts://h:1", "--tls-ca", "{tmp}/missing.pem"], "TLS set-up"),
        (["--broker", "mqtt://h:1", "--tls-ca", "{tmp}/ca.pem"], "needs an mqtts://"),
        (["--broker", "mqtt://h:1", "--db", "{tmp}/a-file/g.sqlite3"], "cannot open"),
    ],
)
def test_cli_ingest_errors_are_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--db" not in args:
        args += ["--db", str(tmp_path / "g.sqlite3")]
    assert gateway_cli("ingest", *args) == 2
    err = one_error_line(capsys)
    assert message in err
    assert "hunter2" not in err


def test_cli_ingest_over_tls_with_credentials(
    tls_broker: MosquittoBroker,
    tls_files: TlsFiles,
    tmp_path: Path,
    mqtt_client: Callable[..., PahoClient],
    unique_id: Callable[[str], str],
) -> None:
    secret = tls_files.users["gateway"]
    db = tmp_path / "g.sqlite3"
    vin = new_vin()
    argv = ["gateway", "ingest", "--broker", tls_url(tls_broker, "gateway", secret)]
    argv += ["--tls-ca", str(tls_files.ca), "--db", str(db), "--client-id", unique_id("gw")]
    proc = subprocess.Popen([sys.executable, "-c", _CLI, *argv], stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(WAIT, proc.kill)  # a stuck gateway ends the read loops below
    watchdog.start()
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "subscribed to" in line:
                break
        else:
            pytest.fail("".join(lines))
        box = mqtt_client(
            tls_broker, unique_id("box"), tls_ca=tls_files.ca, username="box", password="s3cret"
        ).connect()
        box.publish(uplink_topic(vin), payload(vin, 0))
        for line in proc.stderr:
            lines.append(line)
            if "holding 1 messages" in line:
                break
        else:
            pytest.fail("".join(lines))
        proc.send_signal(signal.SIGTERM)
        lines.extend(proc.stderr)
        assert proc.wait(WAIT) == 0, "".join(lines)
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait(WAIT)
    text = "".join(lines)
    assert f"ingesting from {tls_broker.url} into" in text
    assert "received 1: 1 accepted" in text
    assert secret not in text  # the whole debug log of the process
    with SqliteStore(db, read_only=True) as store:
        assert store.payload_count(vin) == 1


def test_embedded_broker_keeps_the_session_of_a_stopped_gateway(
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., PahoClient],
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


def test_a_scenario_runs_into_either_database(db: str, broker: AnyBroker, tmp_path: Path) -> None:
    scenario = load_scenario(Path(__file__).resolve().parent.parent / "scenarios" / "crash.yaml")
    record = run_scenario(scenario, data_dir=tmp_path / "run", broker_url=broker.url, db=db)
    assert [e.name for e in record.expectations if not e.passed] == []
    with open_store(db) as store:
        assert store.payload_count(scenario.config.vin) == record.counters["stored_payloads"] > 5
    assert not (tmp_path / "run" / "gateway.sqlite3").exists() or "://" not in db
    with pytest.raises(ConfigError, match="already holds uploads of vehicle"):
        run_scenario(scenario, data_dir=tmp_path / "again", broker_url=broker.url, db=db)


# -- shared subscriptions ------------------------------------------------------------------


def test_share_filters() -> None:
    assert share_filters(None) == ("tcusim/v1/+/up", "tcusim/v1/+/presence")
    assert share_filters("ingest") == (
        "$share/ingest/tcusim/v1/+/up",
        "$share/ingest/tcusim/v1/+/presence",
    )
    for bad in ("", "a/b", "a+", "#", " a"):
        with pytest.raises(OptionError, match="share group"):
            share_filters(bad)
    with SqliteStore(":memory:") as store:
        with pytest.raises(OptionError, match="share group"):
            Gateway(store, "mqtt://127.0.0.1:1", share_group="a/b")
        with pytest.raises(OptionError, match="session_expiry"):
            Gateway(store, "mqtt://127.0.0.1:1", share_group="g", session_expiry=-1)
        assert "share_group='g'" in repr(Gateway(store, "mqtt://127.0.0.1:1", share_group="g"))


def test_cli_refuses_a_bad_share_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "g.sqlite3")
    assert gateway_cli("ingest", "--broker", "mqtt://h:1", "--db", db, "--share", "a/b") == 2
    assert "share group" in one_error_line(capsys)


def test_a_shared_subscription_splits_the_work_and_keeps_the_garbage(
    broker: AnyBroker,
    gateways: Callable[..., GatewayThread],
    mqtt_client: Callable[..., PahoClient],
    unique_id: Callable[[str], str],
) -> None:
    if not isinstance(broker, MosquittoBroker):
        pytest.skip("shared subscriptions need Mosquitto")
    group = unique_id("group")
    members = [gateways(broker, unique_id("gw"), share_group=group) for _ in range(2)]
    vins = [new_vin() for _ in range(3)]
    box = mqtt_client(broker, unique_id("box")).connect()
    n = 300
    stream = [(uplink_topic(vins[i % 3]), payload(vins[i % 3], i // 3)) for i in range(n)]
    garbage = [(uplink_topic(vins[0]), b"\xffjunk%d" % i) for i in range(10)]
    box.publish_many(stream[:150] + garbage + stream[150:])

    def done(_store: Store) -> bool:
        return sum(m.stats.accepted + m.stats.rejected for m in members) >= n + 10

    assert members[0].wait_until(done, WAIT), [m.stats for m in members]
    assert all(m.stats.accepted > 0 for m in members)  # each took a share
    assert sum(m.stats.accepted for m in members) == n
    assert sum(m.stats.rejected_by_reason.get("not_cbor", 0) for m in members) == 10
    assert all(m.running for m in members)
    store = members[0].reader()
    assert sum(store.payload_count(vin) for vin in vins) == n
    assert {r.raw for r in store.rejections()} >= {raw for _t, raw in garbage}
