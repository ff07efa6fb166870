"""``tcusim gateway``: the cloud side from the command line.

``tcusim gateway status VIN`` prints what the gateway's database knows of one vehicle: its
presence, last-known signal values, payload counts, sequence gaps (uploads that never
arrived) and rejections. ``tcusim gateway ingest`` stores what the boxes publish on a broker
until interrupted.

A database is a path or a URL: ``sqlite:///relative.sqlite3``, ``sqlite:////absolute.sqlite3``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from gateway.ingest import CLIENT_ID, Gateway
from gateway.store import DEFAULT_DB_PATH, Rejection, open_store, rfc3339

__all__ = ["add_subparser", "run_ingest", "run_status"]


def add_subparser(subparsers: Any) -> None:
    """Register ``gateway`` and its subcommands with the ``tcusim`` parser."""
    parser = subparsers.add_parser(
        "gateway",
        help="the gateway: ingest from a broker, show a vehicle's status",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="gateway_command", metavar="COMMAND", required=True)

    status = commands.add_parser(
        "status", help="a vehicle's last-known state, counts, gaps and rejections"
    )
    status.add_argument("vin", metavar="VIN")
    status.add_argument(
        "--db", default=str(DEFAULT_DB_PATH), help="database path or URL (default: %(default)s)"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument(
        "--rejections",
        type=int,
        default=10,
        metavar="N",
        help="list the last N rejections (default: %(default)s)",
    )
    status.set_defaults(func=run_status)

    ingest = commands.add_parser(
        "ingest", help="store what the boxes publish on a broker, until Ctrl-C"
    )
    ingest.add_argument(
        "--broker", required=True, metavar="URL", help="the broker, mqtt://host:port"
    )
    ingest.add_argument(
        "--db", default=str(DEFAULT_DB_PATH), help="database path or URL (default: %(default)s)"
    )
    ingest.add_argument(
        "--client-id",
        default=CLIENT_ID,
        help="MQTT client id of the persistent session (default: %(default)s)",
    )
    ingest.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="most messages per transaction (default: %(default)s)",
    )
    ingest.add_argument(
        "--batch-wait",
        type=float,
        default=0.005,
        metavar="SECONDS",
        help="how long a batch waits for more messages (default: %(default)s)",
    )
    ingest.set_defaults(func=run_ingest)


def _rejection_row(r: Rejection) -> dict[str, Any]:
    return {
        "id": r.id,
        "received": rfc3339(r.received_at_ms),
        "topic": r.topic,
        "reason": r.reason,
        "detail": r.detail,
        "bytes": len(r.raw),
    }


def _print_table(status: dict[str, Any], rejections: Sequence[dict[str, Any]], out: TextIO) -> None:
    gaps = status["gaps"]
    ranges = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in gaps["ranges"][:10])
    if len(gaps["ranges"]) > 10:
        ranges += ", ..."
    facts = [
        ("vehicle", status["vin"]),
        ("presence", f"{status['presence'] or 'unknown'} (since {status['presence_time'] or '-'})"),
        ("boot", status["boot"]),
        ("first seen", status["first_seen"]),
        ("last seen", status["last_seen"]),
        ("payloads", f"{status['payloads']} (highest seq {status['max_seq']})"),
        ("samples", status["samples"]),
        ("duplicates", status["duplicates"]),
        ("evicted by the box", status["evicted"]),
        ("seq gaps", f"{gaps['count']}" + (f" ({ranges})" if ranges else "")),
        ("rejected", status["rejected"]),
    ]
    width = max(len(k) for k, _ in facts)
    for key, value in facts:
        print(f"{key:<{width}}  {value}", file=out)
    signals = status["signals"]
    if signals:
        print(file=out)
        rows = [
            (
                s["name"],
                f"{s['value']}" + (f" ({s['label']})" if s.get("label") else ""),
                s["unit"],
                s["time"],
            )
            for s in signals
        ]
        header = ("signal", "value", "unit", "time")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
        for row in [header, *rows]:
            line = "  ".join(f"{c!s:<{w}}" for c, w in zip(row, widths, strict=True))
            print(line.rstrip(), file=out)
    if rejections:
        print(file=out)
        print("last rejections:", file=out)
        for r in rejections:
            print(f"  {r['received']}  {r['reason']:<16} {r['detail']}", file=out)


def run_status(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print a vehicle's status; 1 when the database does not know the VIN."""
    out = out or sys.stdout
    target = args.db
    if "://" not in target and not Path(target).exists():
        print(f"tcusim: no database at {target}", file=sys.stderr)
        return 1
    with open_store(target) as store:
        status = store.status(args.vin)
        if status is None:
            print(f"tcusim: unknown vehicle {args.vin}", file=sys.stderr)
            return 1
        kept = store.rejections(args.vin)
        rejections = (
            [_rejection_row(r) for r in kept[-args.rejections :]] if args.rejections else []
        )
    if args.json:
        status["last_rejections"] = rejections
        json.dump(status, out, indent=2)
        print(file=out)
    else:
        _print_table(status, rejections, out)
    return 0


async def _ingest(args: argparse.Namespace) -> Gateway:
    store = open_store(args.db)
    gateway = Gateway(
        store,
        args.broker,
        client_id=args.client_id,
        batch_size=args.batch_size,
        batch_wait=args.batch_wait,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, gateway.stop)
    try:
        await gateway.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        store.close()
    return gateway


def run_ingest(args: argparse.Namespace) -> int:
    """Ingest until SIGINT or SIGTERM; print the counters on the way out."""
    print(
        f"tcusim: ingesting from {args.broker} into {args.db} (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    gateway = asyncio.run(_ingest(args))
    s = gateway.stats
    print(
        f"tcusim: received {s.received}: {s.accepted} accepted, {s.duplicates} duplicates, "
        f"{s.presence} presence, {s.rejected} rejected",
        file=sys.stderr,
    )
    return 0
