"""Ingest throughput: uploads/s the gateway takes from Mosquitto and stores, against a bare
subscriber that only receives the same messages, in the same run.

A fleet of cars each uploads one minute of driving per message (the drive of
``benchmarks/payload.py``: every catalog signal at its refresh class, some 530 samples,
about 1.1 kB of CBOR; each car its own seed, VIN and sequence numbers). For each subscriber
in turn, on a Mosquitto of its own (``max_inflight_messages`` as in ``docs/broker.md``):

1. the subscriber's persistent session is made (connect, subscribe QoS 1, disconnect);
2. a publisher in a separate process encodes the uploads and publishes them with QoS 1;
   the broker queues them for the absent session;
3. the subscriber connects again and the clock runs until it has taken all of them.

The subscribers:

* baseline: a bare aiomqtt client (MQTT 3.1.1, persistent session, QoS 1, acknowledged on
  reception) that counts the messages and does nothing else with them;
* the gateway (:class:`gateway.ingest.GatewayThread`, its default options but the client
  id and ``--batch-size``) on SQLite: decoded and validated (in its decoding processes,
  ``decode_processes``: by default one on two cores), deduplicated and stored in batches,
  each message acknowledged after its commit; the clock includes its start-up (the
  decoding processes start with it, and the batches that arrive before they are ready are
  decoded in the gateway's process);
* the same gateway with ``decode_processes=0``: everything in its one process;
* the same gateway on PostgreSQL (``TCUSIM_BENCH_PG``, default the local server's
  ``postgresql://postgres@127.0.0.1:5432``; a throwaway database; left out without a server);
* two ``tcusim gateway ingest --share`` processes, one MQTT 5 shared subscription, on one
  SQLite file (connected and subscribed, paused with SIGSTOP while the backlog is
  published; the clock runs from SIGCONT).

The baseline and the gateway on SQLite are measured ``--rounds`` times (default 3), in turn,
each on a broker of its own; the headline ``ratio`` is the (lower) median of the gateway's
uploads/s over that of the baseline's, and each round's own ratio is printed beside it (the
speed of a shared machine drifts by a tenth or more from run to run). The other subscribers
are measured once. ``--decode-processes N`` gives the gateway, and the ``--share``
processes, another number of decoding processes. Run ``python benchmarks/ingest.py``; the
last line is JSON and is also written to ``benchmarks/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))

from payload import VIN, sample_drive, to_uplink

from can_dbc.catalog import default_catalog
from firmware_sim.payload import encode_uplink
from gateway.broker import MosquittoBroker, MosquittoSettings
from gateway.ingest import UPLINK_FILTER, GatewayThread, uplink_topic
from gateway.store import open_store

RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"
PG_SERVER = os.environ.get("TCUSIM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
MINUTE_MS = 60_000
WAIT_S = 600.0


def fleet_vins(cars: int) -> list[str]:
    """``cars`` VINs of the same model as :data:`payload.VIN`."""
    return [f"{VIN[:11]}{i:06d}" for i in range(cars)]


def stream(cars: int, uploads: int) -> Iterator[tuple[str, bytes]]:
    """``(topic, payload)`` of the fleet's uploads: each car's minutes, the cars in turn."""
    catalog = default_catalog()
    drives = [to_uplink(catalog, sample_drive(catalog, seed)) for seed in range(cars)]
    for i in range(uploads):
        car, minute = i % cars, i // cars
        vin = fleet_vins(cars)[car]
        upload = dataclasses.replace(
            drives[car],
            vin=vin,
            seq=minute,
            boot=1,
            base_time_ms=drives[car].base_time_ms + minute * MINUTE_MS,
        )
        yield uplink_topic(vin), encode_uplink(upload)


def publish(url: str, cars: int, uploads: int) -> None:
    """The publisher process: encode the uploads, publish them with QoS 1, wait for the acks."""
    messages = list(stream(cars, uploads))
    host, _, port = url.removeprefix("mqtt://").partition(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(1000)
    client.connect(host, int(port))
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(WAIT_S)
        if not info.is_published():
            raise SystemExit("a publish was not acknowledged")
    client.disconnect()
    client.loop_stop()


def run_publisher(broker: MosquittoBroker, cars: int, uploads: int) -> None:
    """Publish in a separate process and wait for it."""
    argv = [sys.executable, __file__, "--publish", broker.url, str(cars), str(uploads)]
    subprocess.run(argv, check=True, timeout=WAIT_S)


@contextmanager
def mosquitto(directory: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto with the project's settings, in ``directory``."""
    broker = MosquittoBroker(data_dir=directory, settings=MosquittoSettings())
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


# -- the subscribers ------------------------------------------------------------------------


async def _bare(url: str, n: int, client_id: str, subscribe_only: bool) -> None:
    host, _, port = url.removeprefix("mqtt://").partition(":")
    async with aiomqtt.Client(
        host,
        int(port),
        identifier=client_id,
        clean_session=False,
        protocol=aiomqtt.ProtocolVersion.V311,
    ) as client:
        await client.subscribe(UPLINK_FILTER, qos=1)
        if subscribe_only:
            return
        seen = 0
        async for _message in client.messages:
            seen += 1
            if seen >= n:
                return


def measure_bare(broker: MosquittoBroker, cars: int, uploads: int) -> float:
    """Uploads/s of a bare aiomqtt subscriber draining the backlog."""
    asyncio.run(_bare(broker.url, uploads, "bench-bare", subscribe_only=True))
    run_publisher(broker, cars, uploads)
    start = time.perf_counter()
    asyncio.run(_bare(broker.url, uploads, "bench-bare", subscribe_only=False))
    return uploads / (time.perf_counter() - start)


def measure_gateway(
    broker: MosquittoBroker,
    db: str,
    cars: int,
    uploads: int,
    batch_size: int,
    *,
    decode_processes: int | None = None,
) -> dict[str, Any]:
    """Uploads/s of the gateway draining the backlog into ``db``, and its batches."""
    options: dict[str, Any] = {"client_id": "bench-gateway", "batch_size": batch_size}
    if decode_processes is not None:
        options["decode_processes"] = decode_processes
    with GatewayThread(db, broker.url, **options):
        pass  # the persistent session and its subscription
    run_publisher(broker, cars, uploads)
    start = time.perf_counter()
    gateway = GatewayThread(db, broker.url, **options)
    gateway.start(connect_timeout=WAIT_S)
    try:
        if not gateway.wait_stats(lambda s: s.accepted >= uploads, WAIT_S):
            raise SystemExit(f"the gateway did not store {uploads} uploads: {gateway.stats}")
        elapsed = time.perf_counter() - start
        stats = gateway.stats
        processes = gateway.decode_processes
    finally:
        gateway.stop()
    with open_store(db) as store:
        stored, samples = store.payload_count(), store.sample_count()
    if stored != uploads or stats.rejected or stats.duplicates:
        raise SystemExit(f"stored {stored} of {uploads}: {stats}")
    return {
        "uploads_per_s": round(uploads / elapsed),
        "samples_per_s": round(samples / elapsed),
        "batches": stats.batches,
        "largest_batch": stats.largest_batch,
        "decode_processes": processes,
        "decoded_apart": stats.decoded_apart,
    }


# ``tcusim -v``: the command line itself, logging at INFO (its "subscribed to" line).
TCUSIM = [sys.executable, "-c", "import sys; from firmware_sim.cli import main; sys.exit(main())"]


def measure_workers(
    broker: MosquittoBroker,
    db: str,
    workers: int,
    *,
    cars: int,
    uploads: int,
    batch_size: int,
    decode_processes: int | None = None,
) -> dict[str, Any]:
    """Uploads/s of ``workers`` gateway processes sharing one subscription, into ``db``.

    The workers connect and subscribe, are paused (SIGSTOP) while the backlog is published,
    and the clock runs from SIGCONT until the database holds every upload.
    """
    open_store(db).close()
    procs = []
    for i in range(workers):
        argv = [*TCUSIM, "-v", "gateway", "ingest", "--broker", broker.url]
        argv += ["--db", db, "--client-id", f"bench-worker-{i}", "--share", "bench"]
        argv += ["--batch-size", str(batch_size)]
        env = dict(os.environ)
        if decode_processes is not None:  # the command line has no option for it
            env["TCUSIM_DECODE_PROCESSES"] = str(decode_processes)
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stderr is not None
        for line in proc.stderr:
            if "subscribed to" in line:
                break
        else:
            raise SystemExit(f"worker {i} did not subscribe")
        procs.append(proc)
    try:
        for proc in procs:
            proc.send_signal(signal.SIGSTOP)
        run_publisher(broker, cars, uploads)
        with open_store(db) as store:
            start = time.perf_counter()
            for proc in procs:
                proc.send_signal(signal.SIGCONT)
            deadline = start + WAIT_S
            while store.payload_count() < uploads:
                if time.perf_counter() > deadline:
                    raise SystemExit(f"the workers stored {store.payload_count()} of {uploads}")
                time.sleep(0.02)
            elapsed = time.perf_counter() - start
            stored = store.payload_count()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.communicate(timeout=60)
    if stored != uploads:
        raise SystemExit(f"the workers stored {stored} of {uploads}")
    return {"workers": workers, "uploads_per_s": round(uploads / elapsed)}


@contextmanager
def pg_database() -> Iterator[str | None]:
    """A throwaway PostgreSQL database's URL (``None`` without a server), dropped after."""
    try:
        import psycopg  # noqa: PLC0415

        admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=3)
    except Exception as exc:
        print(f"no PostgreSQL at {PG_SERVER}: {exc}", file=sys.stderr)
        yield None
        return
    name = f"tcusim_bench_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"{PG_SERVER}/{name}"
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _row(label: str, value: float, unit: str = "uploads/s") -> str:
    return f"  {label:<42} {value:>10,.0f} {unit}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print each figure and a closing JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=int, default=50, help="vehicles in the fleet")
    parser.add_argument("--uploads", type=int, default=5000, help="uploads per measurement")
    parser.add_argument("--batch-size", type=int, default=256, help="the gateway's batch_size")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the baseline and the gateway on SQLite"
    )
    parser.add_argument(
        "--decode-processes",
        type=int,
        metavar="N",
        help="the gateway's decode_processes (default: the gateway's own default)",
    )
    parser.add_argument(
        "--publish", nargs=3, metavar=("URL", "CARS", "UPLOADS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.publish:
        url, cars, uploads = args.publish
        publish(url, int(cars), int(uploads))
        return 0
    cars, uploads, processes = args.cars, args.uploads, args.decode_processes
    sample = next(stream(cars, 1))[1]
    print(f"{uploads} uploads of {cars} cars, {len(sample)} bytes each (one minute of driving)")
    with tempfile.TemporaryDirectory(prefix="tcusim-bench-ingest-") as tmp:
        root = Path(tmp)
        bares: list[float] = []
        rounds: list[dict[str, Any]] = []
        for i in range(args.rounds):
            with mosquitto(root / f"bare-{i}") as broker:
                bares.append(measure_bare(broker, cars, uploads))
            with mosquitto(root / f"sqlite-{i}") as broker:
                rounds.append(
                    measure_gateway(
                        broker,
                        str(root / f"gateway-{i}.sqlite3"),
                        cars,
                        uploads,
                        args.batch_size,
                        decode_processes=processes,
                    )
                )
            own = rounds[-1]["uploads_per_s"] / bares[-1]
            print(
                f"  round {i + 1}: baseline {bares[-1]:,.0f}/s, gateway into SQLite"
                f" {rounds[-1]['uploads_per_s']:,}/s, ratio {own:.2f}"
            )
        # The lower median of each (a round's own figures, even for an even --rounds).
        bare = statistics.median_low(bares)
        middle = statistics.median_low([r["uploads_per_s"] for r in rounds])
        sqlite = next(r for r in rounds if r["uploads_per_s"] == middle)
        print(_row("bare aiomqtt subscriber (baseline), median", bare))
        label = f"gateway into SQLite ({sqlite['decode_processes']} decoding processes), median"
        print(_row(label, sqlite["uploads_per_s"]))
        with mosquitto(root / "inprocess") as broker:
            inprocess = measure_gateway(
                broker,
                str(root / "inprocess.sqlite3"),
                cars,
                uploads,
                args.batch_size,
                decode_processes=0,
            )
        print(_row("gateway into SQLite, decoding in-process", inprocess["uploads_per_s"]))
        with mosquitto(root / "shared") as broker:
            shared = measure_workers(
                broker,
                str(root / "shared.sqlite3"),
                2,
                cars=cars,
                uploads=uploads,
                batch_size=args.batch_size,
                decode_processes=processes,
            )
        print(_row("2 gateway processes (--share) into SQLite", shared["uploads_per_s"]))
        postgres: dict[str, Any] | None = None
        with pg_database() as url:
            if url is not None:
                with mosquitto(root / "pg") as broker:
                    postgres = measure_gateway(
                        broker, url, cars, uploads, args.batch_size, decode_processes=processes
                    )
                print(_row("gateway into PostgreSQL", postgres["uploads_per_s"]))
    ratio = round(sqlite["uploads_per_s"] / bare, 2)
    print(f"  ratio (gateway into SQLite / baseline): {ratio}")
    summary: dict[str, Any] = {
        "benchmark": "ingest",
        "python": platform.python_version(),
        "cars": cars,
        "uploads": uploads,
        "payload_bytes": len(sample),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "bare_subscriber_uploads_per_s": round(bare),
        "bare_subscriber_rounds": [round(b) for b in bares],
        "gateway_sqlite_rounds": [r["uploads_per_s"] for r in rounds],
        "ratio_rounds": [
            round(r["uploads_per_s"] / b, 2) for r, b in zip(rounds, bares, strict=True)
        ],
        "gateway_sqlite": sqlite,
        "gateway_sqlite_in_process": inprocess,
        "gateway_postgresql": postgres,
        "gateway_shared_sqlite": shared,
        "ratio": ratio,
        "ratio_in_process": round(inprocess["uploads_per_s"] / bare, 2),
        "ratio_shared": round(shared["uploads_per_s"] / bare, 2),
    }
    if postgres is not None:
        summary["ratio_postgresql"] = round(postgres["uploads_per_s"] / bare, 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
