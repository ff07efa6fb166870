"""``tcusim gateway``: the cloud side from the command line.

``tcusim gateway status VIN`` prints what the gateway's database knows of one vehicle: its
presence, last-known signal values, payload counts, sequence gaps (uploads that never
arrived) next to the uploads the box says it evicted, and rejections. It opens the database
read-only and refuses one that is not the gateway's. ``tcusim gateway ingest`` stores what
the boxes publish on a broker until interrupted; with ``--share GROUP`` several of them (each
with its own ``--client-id``) share the work as one MQTT 5 shared subscription.
``tcusim gateway serve`` runs the whole gateway: ingest, the connected-car Web API (OpenAPI
at ``/connectedcar/v4/openapi.json``), the monitors, the webhook delivery and, with a
broker, the remote commands.

A database is a path or a URL: ``sqlite:///relative.sqlite3``, ``sqlite:////absolute.sqlite3``,
``postgresql://user[:password]@host[:port]/dbname``.
A broker is ``mqtt://[user:password@]host[:port]``, or ``mqtts://`` for TLS.
Errors are one line on standard error and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from firmware_sim.cli.remote import DEFAULT_SECRET_FILE as DEFAULT_REMOTE_SECRET
from firmware_sim.cli.remote import SECRET_FILE_NAME
from gateway.accounts import load_accounts
from gateway.errors import GatewayError, OptionError
from gateway.ingest import CLIENT_ID, Gateway
from gateway.service import GatewayService, load_or_create_secret
from gateway.store import DEFAULT_DB_PATH, Rejection, open_store, redact_url, rfc3339

__all__ = [
    "add_subparser",
    "default_secret_file",
    "remote_secret_file",
    "run_ingest",
    "run_serve",
    "run_status",
]


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return value


def _fail(exc: BaseException) -> int:
    print(f"tcusim: error: {exc}", file=sys.stderr)
    return 2


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
        type=_int_at_least(0),
        default=10,
        metavar="N",
        help="list the last N rejections (default: %(default)s)",
    )
    status.set_defaults(func=run_status)

    ingest = commands.add_parser(
        "ingest", help="store what the boxes publish on a broker, until Ctrl-C"
    )
    ingest.add_argument(
        "--broker",
        required=True,
        metavar="URL",
        help="the broker, mqtt://[user:password@]host[:port] (mqtts:// for TLS)",
    )
    ingest.add_argument("--tls-ca", metavar="FILE", help="CA certificate(s) for mqtts://")
    ingest.add_argument("--tls-cert", metavar="FILE", help="client certificate for mqtts://")
    ingest.add_argument("--tls-key", metavar="FILE", help="the client certificate's key")
    ingest.add_argument(
        "--db", default=str(DEFAULT_DB_PATH), help="database path or URL (default: %(default)s)"
    )
    ingest.add_argument(
        "--client-id",
        default=CLIENT_ID,
        help="MQTT client id of the persistent session (default: %(default)s)",
    )
    ingest.add_argument(
        "--share",
        metavar="GROUP",
        help="join the MQTT 5 shared subscription GROUP: the broker gives each message to one"
        " gateway of the group (each with its own --client-id)",
    )
    ingest.add_argument(
        "--decode-processes",
        type=_int_at_least(0),
        help="processes that decode and check the payloads beside the receiving one (0: "
        "decode in it; default: one per core but one, at most 2, or $TCUSIM_DECODE_PROCESSES)",
    )
    ingest.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=256,
        help="most messages per transaction (default: %(default)s)",
    )
    ingest.add_argument(
        "--batch-wait",
        type=_seconds,
        default=0.005,
        metavar="SECONDS",
        help="how long a batch waits for more messages (default: %(default)s)",
    )
    ingest.set_defaults(func=run_ingest)

    serve = commands.add_parser(
        "serve",
        help="ingest, the connected-car Web API, monitors and webhooks, until Ctrl-C",
        description="Run the whole gateway in one process: ingest from --broker (left out: "
        "serve the API over what the database holds), the Web API on --http, the monitors "
        "and the webhook delivery. With --broker it also sends the API's remote commands to "
        "the boxes, signed with keys derived from the master secret in --remote-secret-file "
        "(--no-remotes: the API answers 503 to them). Several processes can share one "
        "database and one broker (--share); give them the same --secret-file so each accepts "
        "the others' tokens, and the same --remote-secret-file.",
    )
    serve.add_argument(
        "--broker", metavar="URL", help="the broker, mqtt://[user:password@]host[:port]"
    )
    serve.add_argument(
        "--db", default=str(DEFAULT_DB_PATH), help="database path or URL (default: %(default)s)"
    )
    serve.add_argument(
        "--http",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        type=_host_port,
        help="where the Web API listens (default: %(default)s; port 0 picks a free one)",
    )
    serve.add_argument(
        "--accounts",
        metavar="FILE",
        help="an accounts file (format tcusim-accounts/1); default: the demo accounts, "
        "every new vehicle enrolled for the demo user and the demo fleet",
    )
    serve.add_argument(
        "--secret-file",
        metavar="FILE",
        help="the token-signing secret, made when absent (default: token.secret beside a "
        "SQLite database, else tcusim-data/token.secret)",
    )
    remotes = serve.add_mutually_exclusive_group()
    remotes.add_argument(
        "--remote-secret-file",
        metavar="FILE",
        help="the master secret of the vehicles' command keys, made when absent (default: "
        f"{SECRET_FILE_NAME} beside a SQLite database, else {DEFAULT_REMOTE_SECRET}; "
        "tcusim remote --secret-file reads it)",
    )
    remotes.add_argument(
        "--no-remotes",
        action="store_true",
        help="send no remote commands (the API answers 503 to them)",
    )
    serve.add_argument("--base-url", help="prefix of the links in answers (default: none)")
    serve.add_argument("--tls-ca", metavar="FILE", help="CA certificate(s) for mqtts://")
    serve.add_argument("--tls-cert", metavar="FILE", help="client certificate for mqtts://")
    serve.add_argument("--tls-key", metavar="FILE", help="the client certificate's key")
    serve.add_argument(
        "--client-id",
        default=CLIENT_ID,
        help="MQTT client id of the persistent session (default: %(default)s); the remote "
        "commands' statuses have their own, the same followed by -remotes",
    )
    serve.add_argument("--share", metavar="GROUP", help="join the shared subscription GROUP")
    serve.add_argument(
        "--decode-processes",
        type=_int_at_least(0),
        help="processes that decode and check the payloads (see tcusim gateway ingest)",
    )
    serve.set_defaults(func=run_serve)


def _host_port(text: str) -> tuple[str, int]:
    """An argparse type: ``HOST:PORT`` (``[v6]:PORT`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {port!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {number}")
    return host.strip("[]"), number


def default_secret_file(db: str, name: str = "token.secret") -> Path:
    """Where a secret file ``name`` is kept by default: beside a SQLite database ``db``,
    else in the directory of the default database (``tcusim-data``)."""
    if db.startswith("postgresql://") or db.startswith("postgres://"):
        return DEFAULT_DB_PATH.parent / name
    path = db.removeprefix("sqlite://")
    path = path[1:] if db.startswith("sqlite://") else path
    return Path(path).parent / name


def remote_secret_file(db: str) -> Path:
    """The remote master secret's default file for ``db``; with the default database it is
    ``tcusim remote``'s default too."""
    return default_secret_file(db, SECRET_FILE_NAME)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; 2 on an error."""
    try:
        accounts = load_accounts(args.accounts) if args.accounts else None
        secret = load_or_create_secret(args.secret_file or default_secret_file(args.db))
        ingest: dict[str, Any] = {}
        remote_secret: bytes | None = None
        remote_file: Path | None = None
        if args.broker and not args.no_remotes:
            remote_file = Path(args.remote_secret_file or remote_secret_file(args.db))
            remote_secret = load_or_create_secret(remote_file, "remote master secret")
        if args.broker:
            ingest = {
                "client_id": args.client_id,
                "share_group": args.share,
                "decode_processes": args.decode_processes,
                "tls_ca": args.tls_ca,
                "tls_cert": args.tls_cert,
                "tls_key": args.tls_key,
            }
        elif (
            args.share
            or args.tls_ca
            or args.tls_cert
            or args.tls_key
            or args.decode_processes is not None
        ):
            raise OptionError("--share, --decode-processes and --tls-* need --broker")
        elif args.remote_secret_file:
            raise OptionError("--remote-secret-file needs --broker")
        service = GatewayService(
            args.db,
            secret=secret,
            broker=args.broker,
            accounts=accounts,
            http_host=args.http[0],
            http_port=args.http[1],
            base_url=args.base_url,
            remote_secret=remote_secret,
            **ingest,
        )
    except (GatewayError, OSError) as exc:
        return _fail(exc)
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        service.start()
        source = f"ingesting from {service.ingest.broker_url}, " if service.ingest else ""
        remotes = f", remote commands keyed by {remote_file}" if service.remotes else ""
        print(
            f"tcusim: {source}Web API on {service.base_url}/connectedcar/v4"
            f" (OpenAPI at /connectedcar/v4/openapi.json), database {redact_url(args.db)}"
            f"{remotes} (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        stop.wait()
    except (GatewayError, OSError) as exc:
        return _fail(exc)
    finally:
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _rejection_row(r: Rejection) -> dict[str, Any]:
    return {
        "id": r.id,
        "received": rfc3339(r.received_at_ms),
        "topic": r.topic,
        "reason": r.reason,
        "detail": r.detail,
        "bytes": len(r.raw),
    }


def _gaps_line(gaps: dict[str, Any]) -> str:
    """The gaps next to the box's own evictions: what is left is on its way, or lost."""
    ranges = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in gaps["ranges"][:10])
    if len(gaps["ranges"]) > 10:
        ranges += ", ..."
    line = f"{gaps['count']}" + (f" ({ranges})" if ranges else "")
    return (
        f"{line}; evicted by the box: {gaps['evicted_by_box']};"
        f" not explained by evictions: {gaps['unexplained']}"
    )


def _print_table(status: dict[str, Any], rejections: Sequence[dict[str, Any]], out: TextIO) -> None:
    reset = status["box_reset"]
    facts = [
        ("vehicle", status["vin"]),
        ("presence", f"{status['presence'] or 'unknown'} (since {status['presence_time'] or '-'})"),
        ("boot", status["boot"]),
        ("first seen", status["first_seen"]),
        ("last seen", status["last_seen"]),
        ("payloads", f"{status['payloads']} (highest seq {status['max_seq']})"),
        ("samples", status["samples"]),
        ("duplicates", status["duplicates"]),
        ("seq gaps", _gaps_line(status["gaps"])),
        ("rejected", status["rejected"]),
    ]
    if reset:
        facts.append(
            (
                "box reset",
                f"since {reset['first_seen']}: the flash was wiped or replaced;"
                f" its uploads kept as box_reset rejections: {reset['uploads']}",
            )
        )
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
    """Print a vehicle's status; 1 when the database does not know the VIN, 2 on an error.

    The database is opened read-only: a missing file, or one without the gateway's schema,
    is an error, never created nor migrated.
    """
    out = out or sys.stdout
    try:
        with open_store(args.db, read_only=True) as store:
            status = store.status(args.vin)
            if status is None:
                print(f"tcusim: unknown vehicle {args.vin}", file=sys.stderr)
                return 1
            kept = store.rejections(args.vin)
    except (GatewayError, OSError) as exc:
        return _fail(exc)
    rejections = [_rejection_row(r) for r in kept[-args.rejections :]] if args.rejections else []
    if args.json:
        status["last_rejections"] = rejections
        json.dump(status, out, indent=2)
        print(file=out)
    else:
        _print_table(status, rejections, out)
    return 0


async def _ingest(args: argparse.Namespace) -> Gateway:
    store = open_store(args.db)
    try:
        gateway = Gateway(
            store,
            args.broker,
            client_id=args.client_id,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            batch_size=args.batch_size,
            batch_wait=args.batch_wait,
            share_group=args.share,
            decode_processes=args.decode_processes,
        )
        print(
            f"tcusim: ingesting from {gateway.broker} into {redact_url(args.db)} (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, gateway.stop)
        try:
            await gateway.run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    finally:
        store.close()
    return gateway


def run_ingest(args: argparse.Namespace) -> int:
    """Ingest until SIGINT or SIGTERM; print the counters on the way out; 2 on an error."""
    try:
        gateway = asyncio.run(_ingest(args))
    except (GatewayError, OSError) as exc:
        return _fail(exc)
    s = gateway.stats
    print(
        f"tcusim: received {s.received}: {s.accepted} accepted, {s.duplicates} duplicates, "
        f"{s.presence} presence, {s.rejected} rejected",
        file=sys.stderr,
    )
    return 0
