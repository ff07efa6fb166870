"""``tcusim demo``: a broker, the gateway and a car driving a scenario, with a report."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from can_dbc.catalog import default_catalog
from firmware_sim.core import POSITION_SIGNALS
from firmware_sim.errors import ConfigError
from firmware_sim.payload import Privacy
from firmware_sim.scenario.model import Scenario, load_scenario
from firmware_sim.scenario.record import RunRecord
from firmware_sim.scenario.report import write_report
from firmware_sim.scenario.runner import ScenarioRunner
from gateway.broker import EmbeddedBroker
from gateway.store import SqliteStore


def demo_scenario() -> Scenario:
    """The scenario the demo drives (shipped inside the package)."""
    path = resources.files("firmware_sim.scenario").joinpath("data/demo.yaml")
    with resources.as_file(path) as file:
        return load_scenario(file)


def add_subparser(subparsers: Any) -> None:
    """Register ``tcusim demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="run a broker, the gateway and a car driving a scenario, with a report",
        description="Run, in one process, an MQTT broker (embedded unless --broker is given), "
        "the gateway storing into SQLite, and a 2017 car driving a ten-minute commute "
        "in simulated time: it loses its network and its power on the way, and the driver "
        "turns location sharing off near the end. Print a summary and write a report.",
    )
    parser.add_argument("--broker", help="use this broker (mqtt://host:port) instead")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("tcusim-data/demo"),
        help="where the box's flash, the gateway's database and the report go; the demo "
        "starts them afresh there each run (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, help="another random seed for the drive")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its summary; 0 when every expectation held."""
    scenario = demo_scenario()
    if args.seed is not None:
        if args.seed < 0:
            raise ConfigError("--seed must not be negative")
        scenario = dataclasses.replace(scenario, seed=args.seed)
    data_dir: Path = args.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--data-dir {data_dir}: {exc.strerror or exc}") from exc
    with contextlib.ExitStack() as stack:
        broker_url = args.broker or stack.enter_context(EmbeddedBroker()).url
        record = ScenarioRunner(scenario, data_dir=data_dir, broker_url=broker_url).run()
    report = write_report(record, data_dir / "report.html")
    summary = _summary(scenario, record, broker_url, data_dir, report)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary, record)
    return 0 if record.passed else 1


def _summary(
    scenario: Scenario, record: RunRecord, broker_url: str, data_dir: Path, report: Path
) -> dict[str, Any]:
    vin = scenario.config.vin
    privacy_at = next(
        (a.at_ms for a in scenario.actions if a.kind == "privacy" and a.value != Privacy.NONE),
        None,
    )
    latitude = default_catalog().by_name(POSITION_SIGNALS[0]).id
    with SqliteStore(data_dir / "gateway.sqlite3") as store:
        positions = [t for _sid, t, _v in store.samples(vin, latitude)]
    c = record.counters
    changed = scenario.start_ms + privacy_at if privacy_at is not None else None
    return {
        "vin": vin,
        "model_year": scenario.config.model_year,
        "simulated_s": (record.end_ms - record.start_ms) / 1000,
        "wall_s": record.wall_s,
        "broker": broker_url,
        "frames_sent": c.get("frames_sent", 0),
        "frames_decoded": c.get("frames_decoded", 0),
        "frames_unchanged": c.get("frames_unchanged", 0),
        "decode_errors": c.get("decode_errors", 0),
        "samples": c.get("samples", 0),
        "samples_pending": c.get("samples_pending", 0),
        "dropped_by_privacy": c.get("dropped_by_privacy", 0),
        "stripped_by_privacy": c.get("stripped_by_privacy", 0),
        "uploads_by_trigger": dict(Counter(u.trigger for u in record.uploads)),
        "uploads": c.get("uploads", 0),
        "bytes_sent": c.get("bytes", 0),
        "boots": c.get("boots", 0),
        "queue_drained": bool(c.get("queue_drained", 0)),
        "stored_payloads": c.get("stored_payloads", 0),
        "stored_samples": c.get("stored_samples", 0),
        "privacy_geolocation_at_s": privacy_at / 1000 if privacy_at is not None else None,
        "positions_before_privacy": sum(changed is None or t < changed for t in positions),
        "positions_after_privacy": sum(
            changed is not None and t > changed + 1000 for t in positions
        ),
        "rejected": c.get("rejected", 0),
        "seq_gaps": c.get("seq_gaps", 0),
        "expectations": [
            {"name": e.name, "passed": e.passed, "detail": e.detail} for e in record.expectations
        ],
        "passed": record.passed,
        "report": str(report),
        "data_dir": str(data_dir),
    }


def _print_summary(s: dict[str, Any], record: RunRecord) -> None:
    faults = ", ".join(e.text for e in record.timeline if e.kind == "fault")
    rows = [
        ("vehicle", f"{s['vin']} (model year {s['model_year']})"),
        ("drive", f"{s['simulated_s'] / 60:.1f} simulated minutes in {s['wall_s']:.1f} s"),
        ("broker", s["broker"]),
        ("faults", faults or "none"),
        ("CAN frames sent", f"{s['frames_sent']:,}"),
        (
            "frames decoded",
            f"{s['frames_decoded']:,} ({s['frames_unchanged']:,} unchanged skipped, "
            f"{s['decode_errors']} errors)",
        ),
        (
            "samples collected",
            f"{s['samples']:,} ({s['samples_pending']} kept in flash for the next upload, "
            f"{s['dropped_by_privacy']} withdrawn when the driver turned location off)",
        ),
        (
            "uploads by trigger",
            ", ".join(f"{k} {v}" for k, v in sorted(s["uploads_by_trigger"].items())),
        ),
        ("uploads", f"{s['uploads']} ({s['bytes_sent']:,} bytes), {s['boots']} boots"),
        (
            "gateway rows stored",
            f"{s['stored_payloads']} payloads, {s['stored_samples']:,} samples",
        ),
        (
            "privacy",
            f"location off at {s['privacy_geolocation_at_s']:g} s: "
            f"{s['positions_before_privacy']} positions stored before, "
            f"{s['positions_after_privacy']} after",
        ),
        ("rejected / gaps", f"{s['rejected']} / {s['seq_gaps']}"),
        ("report", s["report"]),
    ]
    width = max(len(k) for k, _ in rows)
    print("tcusim demo summary")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print()
    for e in record.expectations:
        print(f"  {'PASS' if e.passed else 'FAIL'}  {e.name}: {e.detail}")
    print(f"\nInspect it: tcusim gateway status {s['vin']} --db {s['data_dir']}/gateway.sqlite3")
    print("More scenarios: tcusim scenario run scenarios/tunnel_offline.yaml --report run.html")
