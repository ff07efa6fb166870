"""Gateway worker processes sharing the ingest: one killed mid-stream loses nothing.

Two ``tcusim gateway ingest --share`` processes (persistent MQTT 5 sessions, their own client
ids) take the boxes' uploads from one Mosquitto as one shared subscription and write to one
database. A publisher streams a few thousand QoS 1 uploads of several vehicles, garbage among
them; one worker is killed with SIGKILL mid-stream. Mosquitto goes on giving the dead
member's session its share of the group's messages and keeps them queued for it, together
with those it had sent and not had acknowledged: they wait until a worker with the same
client id connects again, and then arrive. In the end every upload is stored exactly once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from test_store import db_fixture, pg_url_fixture  # noqa: F401 (fixtures)

from firmware_sim.payload import Privacy, Series, Trigger, Uplink, encode_uplink
from gateway.broker import EmbeddedBroker, MosquittoBroker
from gateway.ingest import uplink_topic
from gateway.store import Store, open_store

pytestmark = pytest.mark.slow

WAIT = 60.0
BASE = 1_795_000_000_000
VINS = tuple(f"VF3WRKR{i:010d}" for i in range(6))
UPLOADS = 3000
GARBAGE_EVERY = 250  # one message in so many is not an upload at all

# ``tcusim -v``: the command line itself, logging at INFO (its "subscribed to" line).
TCUSIM = [sys.executable, "-c", "import sys; from firmware_sim.cli import main; sys.exit(main())"]


class Worker:
    """One ``tcusim gateway ingest --share`` process; its standard error is kept."""

    def __init__(self, broker: MosquittoBroker, db: str, client_id: str, group: str) -> None:
        argv = ["gateway", "ingest", "--broker", broker.url, "--db", db]
        argv += ["--client-id", client_id, "--share", group, "--batch-wait", "0.05"]
        self.client_id = client_id
        self.lines: list[str] = []
        self.subscribed = threading.Event()
        self.proc = subprocess.Popen([*TCUSIM, "-v", *argv], stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.subscribed.wait(WAIT):
            self.proc.kill()
            pytest.fail(f"{client_id} did not subscribe:\n{self.text}")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "subscribed to $share/" in line:
                self.subscribed.set()

    @property
    def text(self) -> str:
        """What the process wrote to standard error so far."""
        return "".join(self.lines)

    def kill(self) -> None:
        """SIGKILL: no goodbye, nothing stored or acknowledged on the way out."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT)

    def stop(self) -> int:
        """SIGTERM: store and acknowledge what has arrived, then exit; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(WAIT)
        self._reader.join(WAIT)
        return status


@pytest.fixture
def workers(
    fresh_broker: MosquittoBroker | EmbeddedBroker, db: str
) -> Iterator[Callable[..., Worker]]:
    """Start workers on the test's broker and database; stop every one afterwards."""
    if not isinstance(fresh_broker, MosquittoBroker):
        pytest.skip("shared subscriptions and MQTT 5 sessions need Mosquitto")
    open_store(db).close()  # migrated once, before two processes open it
    started: list[Worker] = []

    def start(client_id: str) -> Worker:
        worker = Worker(fresh_broker, db, client_id, "ingest")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(WAIT)


def uploads() -> list[tuple[str, bytes]]:
    """``(topic, payload)`` of the stream: uploads of six vehicles in turn, some garbage."""
    out: list[tuple[str, bytes]] = []
    for i in range(UPLOADS):
        vin, seq = VINS[i % len(VINS)], i // len(VINS)
        series = (Series(1, -1, (0, 1000), (500 + seq % 300, 501)), Series(2, 0, (0,), (800,)))
        upload = Uplink(vin, seq, BASE + seq * 60_000, Trigger.PERIODIC, Privacy.NONE, series)
        out.append((uplink_topic(vin), encode_uplink(upload)))
        if i % GARBAGE_EVERY == 0:
            out.append((uplink_topic(vin), b"\xff garbage %d" % i))
    return out


def settled(store: Store, timeout: float = WAIT) -> int:
    """The payload count once it stopped growing for a second (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    count, since = store.payload_count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = store.payload_count()
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            break
    return count


def test_a_worker_killed_mid_stream_loses_nothing_and_doubles_nothing(
    fresh_broker: MosquittoBroker, db: str, workers: Callable[..., Worker]
) -> None:
    first, second = workers("ingest-1"), workers("ingest-2")
    stream = uploads()
    garbage = [raw for _topic, raw in stream if raw.startswith(b"\xff")]
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="publisher-workers")
    publisher.max_inflight_messages_set(100)
    publisher.connect(fresh_broker.host, fresh_broker.port)
    publisher.loop_start()
    store = open_store(db)
    try:
        infos = []
        for i, (topic, raw) in enumerate(stream):
            infos.append(publisher.publish(topic, raw, qos=1))
            if i == len(stream) // 3:
                # Mid-stream: once the first worker has stored some, it dies holding others.
                deadline = time.monotonic() + WAIT
                while store.payload_count() < UPLOADS // 10 and time.monotonic() < deadline:
                    time.sleep(0.01)
                first.kill()
        for info in infos:
            info.wait_for_publish(WAIT)
            assert info.is_published()

        # The survivor stores its share and goes on; the dead member's share waits for it.
        survivor_only = settled(store)
        assert second.proc.poll() is None, second.text
        assert survivor_only < UPLOADS

        # The killed worker comes back with its client id: its session's messages arrive.
        again = workers("ingest-1")
        deadline = time.monotonic() + WAIT
        while store.payload_count() < UPLOADS and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.payload_count() == UPLOADS, (survivor_only, again.text, second.text)

        # Exactly once: every published upload, its own bytes, no other.
        published = {(t.split("/")[2], raw) for t, raw in stream if not raw.startswith(b"\xff")}
        stored = {(vin, p.raw) for vin in VINS for p in store.payloads(vin)}
        assert stored == published
        assert store.sample_count() == 3 * UPLOADS
        assert all(store.seq_gaps(vin) == [] for vin in VINS)
        counters = store.counters()
        assert counters["accepted"] == UPLOADS
        # Garbage is kept with its reason; one kept twice was redelivered after the kill.
        kept = [r for r in store.rejections() if r.raw.startswith(b"\xff")]
        assert {r.raw for r in kept} == set(garbage)
        assert {r.reason for r in kept} == {"not_cbor"}
        assert counters["rejected"] == len(kept)
        for worker in (again, second):
            assert worker.stop() == 0, worker.text
            assert "received" in worker.lines[-1]
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        store.close()
