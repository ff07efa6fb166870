"""``tcusim scenario run|check FILE``: run a scenario, or only check the file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from firmware_sim.errors import ConfigError
from firmware_sim.scenario.model import load_scenario
from firmware_sim.scenario.record import RunRecord
from firmware_sim.scenario.report import record_to_json, write_report
from firmware_sim.scenario.runner import ScenarioRunner


def add_subparser(subparsers: Any) -> None:
    """Register ``tcusim scenario``."""
    parser = subparsers.add_parser("scenario", help="run scenario files (drives, faults, checks)")
    commands = parser.add_subparsers(dest="scenario_command", metavar="ACTION", required=True)
    run = commands.add_parser(
        "run",
        help="run a scenario and check its expectations",
        description="Run a scenario: a broker (Mosquitto where installed, unless --broker), the "
        "gateway and the simulated car with its box, in simulated time. Exit status 1 when "
        "an expectation fails.",
    )
    run.add_argument("file", type=Path, help="the scenario YAML file")
    pace = run.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, help="simulated seconds per wall second")
    pace.add_argument("--realtime", action="store_true", help="run at the wall clock's pace")
    run.add_argument("--report", type=Path, help="write a self-contained HTML report here")
    run.add_argument("--record", type=Path, help="record the bus (candump) and MQTT here")
    run.add_argument("--broker", help="use this broker instead of starting one")
    run.add_argument(
        "--data-dir",
        type=Path,
        default=Path("tcusim-data/scenario"),
        help="the box's flash and the gateway's database, afresh each run (default: %(default)s)",
    )
    run.add_argument("--json", type=Path, help="write the run record as JSON here")
    run.set_defaults(func=run_command)
    check = commands.add_parser("check", help="check a scenario file without running it")
    check.add_argument("file", type=Path, nargs="+", help="scenario YAML files")
    check.set_defaults(func=check_command)


def check_command(args: argparse.Namespace) -> int:
    """Load every file; the first fault is the error (file, line, field)."""
    for path in args.file:
        scenario = load_scenario(path)
        print(
            f"{path}: ok: {scenario.name} ({len(scenario.actions)} actions, "
            f"{len(scenario.faults)} faults, {len(scenario.expectations)} expectations)"
        )
    return 0


def _progress_bar(fraction: float, wall_s: float) -> None:
    width = 30
    filled = round(width * fraction)
    bar = "#" * filled + "." * (width - filled)
    end = "\n" if fraction >= 1 else ""
    print(
        f"\r[{bar}] {fraction * 100:5.1f}%  {wall_s:6.1f} s", end=end, file=sys.stderr, flush=True
    )


def run_command(args: argparse.Namespace) -> int:
    """Run the scenario, print the summary table; 1 when an expectation failed."""
    scenario = load_scenario(args.file)
    if args.speed is not None and args.speed <= 0:
        raise ConfigError("--speed must be positive")
    speed = 1.0 if args.realtime else args.speed
    runner = ScenarioRunner(
        scenario,
        data_dir=args.data_dir,
        broker_url=args.broker,
        speed=speed,
        record_dir=args.record,
        progress=_throttled(_progress_bar),
    )
    record = runner.run()
    if args.report is not None:
        write_report(record, args.report)
    if args.json is not None:
        record_to_json(record, args.json)
    print_summary(record)
    return 0 if record.passed else 1


def _throttled(fn: Any) -> Any:
    last = [-1.0]

    def call(fraction: float, wall_s: float) -> None:
        if fraction >= 1 or wall_s - last[0] >= 0.25:
            last[0] = wall_s
            fn(fraction, wall_s)

    return call


def print_summary(record: RunRecord) -> None:
    """The run in a few lines, then one line per expectation."""
    simulated = (record.end_ms - record.start_ms) / 1000
    c = record.counters
    rows = [
        ("scenario", record.name),
        ("vehicle", record.vin),
        (
            "time",
            f"{simulated / 60:.1f} simulated minutes in {record.wall_s:.1f} s "
            f"({simulated / max(record.wall_s, 1e-9):.0f}x)",
        ),
        ("frames", f"{c.get('frames_sent', 0):,} sent, {c.get('frames_decoded', 0):,} decoded"),
        (
            "uploads",
            f"{c.get('uploads', 0)} ({c.get('bytes', 0):,} bytes), {c.get('evicted', 0)} evicted",
        ),
        (
            "gateway",
            f"{c.get('stored_payloads', 0)} payloads, {c.get('stored_samples', 0):,} "
            f"samples, {c.get('rejected', 0)} rejected",
        ),
    ]
    for remote in record.remotes:
        outcome = remote.outcome
        steps = " > ".join(st.status for st in remote.statuses) or "no status"
        cause = f" ({outcome.cause})" if outcome is not None and outcome.cause else ""
        rows.append((f"remote {remote.id}", f"{remote.action}: {steps}{cause}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print()
    for e in record.expectations:
        mark = "PASS" if e.passed else "FAIL"
        where = f" (line {e.line})" if e.line else ""
        print(f"  {mark}  {e.name}{where}: {e.detail}")
    print(f"\n{'all expectations held' if record.passed else 'some expectations failed'}")
