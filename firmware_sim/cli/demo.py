"""``tcusim demo``: a broker, the gateway and one car driving in simulated time."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from can_dbc.catalog import default_catalog
from firmware_sim.clock import SimScheduler
from firmware_sim.config import TcuConfig
from firmware_sim.core import POSITION_SIGNALS, PRIVACY_SIGNAL
from firmware_sim.errors import ConfigError
from firmware_sim.payload import Privacy
from firmware_sim.sim.drive import city_drive
from firmware_sim.sim.session import SimulatedCar
from gateway.broker import EmbeddedBroker
from gateway.ingest import GatewayThread

DEMO_VIN = "VR3UHZKXZHT000042"  # 10th character H: a 2017 car
START_MS = 1_767_340_800_000  # 2026-01-02T08:00:00Z


def add_subparser(subparsers: Any) -> None:
    """Register ``tcusim demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="run a broker, the gateway and a car driving a commute in simulated time",
        description="Run, in one process, an MQTT broker (embedded unless --broker is given), "
        "the gateway storing into SQLite, and one car on a virtual CAN bus driving a "
        "commute in simulated time; print a summary at the end.",
    )
    parser.add_argument("--broker", help="use this broker (mqtt://host:port) instead")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("tcusim-data/demo"),
        help="where the box's flash and the gateway's database go; the demo starts them "
        "afresh there each run (default: %(default)s)",
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="drive length (default 10)")
    parser.add_argument("--vin", default=DEMO_VIN, help="the car's VIN (default: a 2017 car)")
    parser.add_argument("--model-year", type=int, help="override the VIN's model year")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the drive")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its summary; 0 when every upload reached the gateway once."""
    if not 1.5 < args.minutes <= 24 * 60:
        raise ConfigError("--minutes must be more than 1.5 and at most a day")
    data_dir: Path = args.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--data-dir {data_dir}: {exc.strerror or exc}") from exc
    for name in ("flash.sqlite3", "gateway.sqlite3"):
        for suffix in ("", "-wal", "-shm"):
            (data_dir / f"{name}{suffix}").unlink(missing_ok=True)
    config = TcuConfig.from_mapping({"vin": args.vin, "model_year": args.model_year})
    wall_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.broker:
            broker_url = args.broker
        else:
            broker = stack.enter_context(EmbeddedBroker())
            broker_url = broker.url
        gateway = stack.enter_context(GatewayThread(data_dir / "gateway.sqlite3", broker_url))
        scheduler = SimScheduler(START_MS)
        car = SimulatedCar(
            config,
            city_drive(args.minutes),
            scheduler,
            data_dir=data_dir,
            broker_url=broker_url,
            seed=args.seed,
        )
        car.start()
        # Three quarters in, the driver turns location sharing off (privacy "Geolocation").
        privacy_at = round(args.minutes * 60 * 0.75)
        car.run_for(privacy_at)
        car.vehicle.apply({PRIVACY_SIGNAL: int(Privacy.GEOLOCATION)})
        car.run_for(args.minutes * 60 - privacy_at)
        enqueued = car.box.stats.uploads_enqueued
        evicted = len(car.box.stats.evicted)
        stats = car.box.decoder.stats
        core_stats = car.box.core.stats if car.box.core else None
        bytes_sent = car.box.uplink.bytes_sent if car.box.uplink else 0
        pending = car.box.core.pending_count if car.box.core else 0
        drained = car.close(drain_timeout=30.0)
        expected = enqueued - evicted
        gateway.wait_until(lambda store: store.payload_count(config.vin) >= expected, timeout=30.0)
        store = gateway.reader()
        latitude = default_catalog().by_name(POSITION_SIGNALS[0]).id
        positions = [t for _sid, t, _v in store.samples(config.vin, latitude)]
        privacy_ms = START_MS + privacy_at * 1000
        summary = {
            "vin": config.vin,
            "model_year": config.model_year,
            "simulated_s": args.minutes * 60,
            "wall_s": round(time.monotonic() - wall_start, 2),
            "broker": broker_url,
            "frames_sent": car.vehicle.frames_sent,
            "frames_decoded": stats.decoded,
            "frames_unchanged": stats.unchanged,
            "decode_errors": stats.errors,
            "gnss_fixes": car.box.stats.fixes,
            "samples": core_stats.samples if core_stats else 0,
            "samples_pending": pending,
            "withheld_by_privacy": core_stats.withheld_by_privacy if core_stats else 0,
            "dropped_by_privacy": core_stats.dropped_by_privacy if core_stats else 0,
            "uploads_by_trigger": dict(core_stats.uploads_by_trigger) if core_stats else {},
            "uploads": enqueued,
            "bytes_sent": bytes_sent,
            "queue_drained": drained,
            "stored_payloads": store.payload_count(config.vin),
            "stored_samples": store.sample_count(config.vin),
            "privacy_geolocation_at_s": privacy_at,
            "positions_before_privacy": sum(t < privacy_ms for t in positions),
            "positions_after_privacy": sum(t > privacy_ms + 1000 for t in positions),
            "rejected": len(store.rejections()),
            "seq_gaps": len(store.seq_gaps(config.vin)),
            "data_dir": str(data_dir),
        }
        store.close()
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    ok = (
        summary["stored_payloads"] == expected
        and not summary["seq_gaps"]
        and not summary["positions_after_privacy"]
        and drained
    )
    return 0 if ok else 1


def _print_summary(s: dict[str, Any]) -> None:
    rows = [
        ("vehicle", f"{s['vin']} (model year {s['model_year']})"),
        ("drive", f"{s['simulated_s'] / 60:.1f} simulated minutes in {s['wall_s']:.1f} s"),
        ("broker", s["broker"]),
        ("CAN frames sent", f"{s['frames_sent']:,}"),
        (
            "frames decoded",
            f"{s['frames_decoded']:,} ({s['frames_unchanged']:,} unchanged skipped, "
            f"{s['decode_errors']} errors)",
        ),
        ("GNSS fixes", f"{s['gnss_fixes']:,}"),
        (
            "samples collected",
            f"{s['samples']:,} ({s['samples_pending']} kept in flash for the next upload, "
            f"{s['dropped_by_privacy']} withdrawn when the driver turned location off; "
            f"{s['withheld_by_privacy']:,} not taken)",
        ),
        (
            "uploads by trigger",
            ", ".join(f"{k} {v}" for k, v in sorted(s["uploads_by_trigger"].items())),
        ),
        ("uploads", f"{s['uploads']} ({s['bytes_sent']:,} bytes sent)"),
        (
            "gateway rows stored",
            f"{s['stored_payloads']} payloads, {s['stored_samples']:,} samples",
        ),
        (
            "privacy",
            f"location off at {s['privacy_geolocation_at_s']} s: "
            f"{s['positions_before_privacy']} positions stored before, "
            f"{s['positions_after_privacy']} after",
        ),
        ("rejected / gaps", f"{s['rejected']} / {s['seq_gaps']}"),
        ("data directory", s["data_dir"]),
    ]
    width = max(len(k) for k, _ in rows)
    print("tcusim demo summary")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print(f"\nInspect it: tcusim gateway status {s['vin']} --db {s['data_dir']}/gateway.sqlite3")
    print(
        "Drive a scenario with faults and a report: tcusim scenario run "
        "scenarios/city_commute_diesel_2017.yaml --report run.html"
    )
