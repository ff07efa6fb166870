"""``tcusim remote VIN ACTION [ARGS]``: send one signed remote command to a box over MQTT.

Actions: ``horn [--beeps N]``, ``lock``, ``unlock``, ``lights [--duration S]``,
``precond on|off``, ``charge now|stop|at HH:MM``, ``wakeup``, ``immobilize on|off`` and
``stolen yes|no``. The command is signed with the vehicle's key, derived from the master
secret in ``--secret-file`` (hexadecimal; the gateway's ``remote.secret``, not its token
secret) and published (QoS 1) on ``tcusim/v1/VIN/down``; it stays valid ``--expiry``
seconds. Its order is the current time in milliseconds (``--order`` to choose), above the
orders the gateway gives.

With ``--wait`` the statuses the box reports on ``tcusim/v1/VIN/cmd`` for this command are
printed as they come, one line each, until a final one: exit 0 on ``Success`` or
``AlreadyDone``, 1 on ``Failed`` or when none came within ``--timeout`` seconds. Without it,
exit 0 once the broker took the command. A usage error is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import queue
import re
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.config import parse_broker_url
from firmware_sim.errors import ConfigError, TcuError

__all__ = [
    "DEFAULT_SECRET_FILE",
    "SECRET_FILE_NAME",
    "RemoteUsageError",
    "add_subparser",
    "parse_action",
    "run",
]

SECRET_FILE_NAME = "remote.secret"
"""The master secret's file name, beside the gateway's SQLite database."""
DEFAULT_SECRET_FILE = Path("tcusim-data") / SECRET_FILE_NAME
"""Where ``tcusim gateway serve`` keeps it by default (beside its default database)."""
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
ACTIONS = (
    "horn",
    "lock",
    "unlock",
    "lights",
    "precond",
    "charge",
    "wakeup",
    "immobilize",
    "stolen",
)
DONE = ("Success", "AlreadyDone", "Failed")
_HHMM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


class RemoteUsageError(ConfigError):
    """A command line of ``tcusim remote`` that does not make a command."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _one_line_error(parser: argparse.ArgumentParser) -> None:
    def error(message: str) -> NoReturn:
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    setattr(parser, "error", error)  # noqa: B010 (the subparser is made by argparse)


def add_subparser(subparsers: Any) -> None:
    """Register ``remote`` with the ``tcusim`` parser."""
    parser = subparsers.add_parser(
        "remote",
        help="send a signed remote command to a box (and wait for its statuses)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _one_line_error(parser)
    parser.add_argument("vin", metavar="VIN", help="the vehicle")
    parser.add_argument("action", metavar="ACTION", help=" | ".join(ACTIONS))
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="its arguments")
    _common_options(parser, suppress=False)
    parser.set_defaults(func=run)


def _common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options, also accepted after the action (``suppress``: no defaults there)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--broker",
        metavar="URL",
        default=default(DEFAULT_BROKER),
        help="mqtt://[user:password@]host[:port] (default: %(default)s)",
    )
    parser.add_argument(
        "--secret-file",
        type=Path,
        metavar="FILE",
        default=default(DEFAULT_SECRET_FILE),
        help="the gateway's remote master secret, hexadecimal (default: %(default)s)",
    )
    parser.add_argument(
        "--wait", action="store_true", default=default(False), help="print statuses until done"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        default=default(60.0),
        help="seconds to wait for the broker and, with --wait, the final status",
    )
    parser.add_argument(
        "--expiry",
        type=int,
        metavar="S",
        default=default(600),
        help="seconds the command stays valid (default: %(default)s)",
    )
    parser.add_argument(
        "--order", type=int, metavar="N", default=default(None), help="the command's order"
    )


def _action_parser(action: str) -> _Parser:
    parser = _Parser(prog=f"tcusim remote VIN {action}", add_help=False)
    _common_options(parser, suppress=True)
    if action == "horn":
        parser.add_argument("--beeps", type=int, default=1, help="1 to 10")
    elif action == "lights":
        parser.add_argument("--duration", type=int, default=10, help="seconds, 1 to 60")
    elif action == "precond":
        parser.add_argument("state", choices=("on", "off"))
    elif action == "charge":
        parser.add_argument("mode", choices=("now", "stop", "at"))
        parser.add_argument("time", nargs="?", metavar="HH:MM", help="with at: when (UTC)")
    elif action == "immobilize":
        parser.add_argument("state", choices=("on", "off"))
    elif action == "stolen":
        parser.add_argument("state", choices=("yes", "no"))
    return parser


def parse_action(action: str, args: Sequence[str]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(action, params, options)`` of ``ACTION ARGS``; options given after the action.

    Exits 2 with one line on a usage error; :class:`RemoteUsageError` for values out of range.
    """
    if action not in ACTIONS:
        raise RemoteUsageError(f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
    ns = _action_parser(action).parse_args(list(args))
    values = vars(ns)
    options: dict[str, Any] = {
        k: values.pop(k)
        for k in ("broker", "secret_file", "wait", "timeout", "expiry", "order")
        if k in values
    }
    params: dict[str, Any] = {}
    if action == "horn":
        if not 1 <= ns.beeps <= 10:
            raise RemoteUsageError(f"--beeps is 1 to 10, not {ns.beeps}")
        params = {"beeps": ns.beeps}
    elif action == "lights":
        if not 1 <= ns.duration <= 60:
            raise RemoteUsageError(f"--duration is 1 to 60 seconds, not {ns.duration}")
        params = {"duration_s": ns.duration}
    elif action == "precond":
        params = {"immediate": ns.state == "on"}
    elif action == "charge":
        params = _charge(ns.mode, ns.time)
    elif action == "immobilize":
        params = {"activate": ns.state == "on"}
    elif action == "stolen":
        params = {"stolen": ns.state == "yes"}
    return action, params, options


def _charge(mode: str, when: str | None) -> dict[str, Any]:
    if mode != "at":
        if when is not None:
            raise RemoteUsageError(f"charge {mode} takes no time")
        return {"immediate": mode == "now"}
    if when is None:
        raise RemoteUsageError("charge at needs a time HH:MM")
    m = _HHMM.fullmatch(when)
    if m is None:
        raise RemoteUsageError(f"charge at: {when!r} is not a time HH:MM")
    return {"delayed_to_min": int(m.group(1)) * 60 + int(m.group(2))}


def read_hex_file(path: Path, what: str, *, min_bytes: int = 1, exact: bool = False) -> bytes:
    """The bytes written in hexadecimal in ``path``: at least ``min_bytes`` (exactly, with
    ``exact``); :class:`RemoteUsageError` naming ``what`` otherwise."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise RemoteUsageError(f"{path}: cannot read the {what}: {exc}") from None
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise RemoteUsageError(f"{path}: the {what} must be hexadecimal") from None
    if exact and len(value) != min_bytes:
        raise RemoteUsageError(f"{path}: the {what} must be {min_bytes} bytes")
    if len(value) < min_bytes:
        raise RemoteUsageError(f"{path}: the {what} must be at least {min_bytes} bytes")
    return value


def read_secret(path: Path) -> bytes:
    """The master secret in ``path`` (hexadecimal, at least 16 bytes)."""
    return read_hex_file(path, "remote master secret", min_bytes=16)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _rfc3339(ms: int) -> str:
    from gateway.store import rfc3339  # noqa: PLC0415

    return str(rfc3339(ms))


class _Session:
    """One MQTT connection: publish a command, collect the statuses of its vehicle."""

    def __init__(self, broker: str, client_id: str, timeout: float) -> None:
        url = parse_broker_url(broker)
        self.timeout = timeout
        self.statuses: queue.Queue[bytes] = queue.Queue()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if url.tls:
            self.client.tls_set()
        if url.username is not None:
            self.client.username_pw_set(url.username, url.password)
        self.client.on_connect = lambda *_a: self._connected.set()
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.statuses.put(bytes(m.payload))
        try:
            self.client.connect(url.host, url.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise TcuError(f"cannot reach the broker {url}: {exc}") from None
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise TcuError(f"no connection to the broker {url} in {timeout:g} s")

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        if not self._subscribed.wait(self.timeout):
            raise TcuError(f"the broker did not confirm the subscription to {topic}")

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(self.timeout)
        if not info.is_published():
            raise TcuError(f"the broker did not take the command in {self.timeout:g} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _status_line(status: Any) -> tuple[str, str]:
    """``(status, line)`` of a decoded status message."""
    name = str(getattr(status.status, "value", status.status))
    parts = [_rfc3339(int(status.at_ms)), name]
    cause = status.failure_cause
    if cause is not None:
        parts.append(str(getattr(cause, "value", cause)))
    if status.detail:
        parts.append(f"({status.detail})")
    return name, " ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Send the command (and wait); 0 done, 1 failed or no answer, 2 usage error."""
    try:
        action, params, options = parse_action(args.action, args.args)
    except RemoteUsageError as exc:
        print(f"tcusim remote: error: {exc}", file=sys.stderr)
        return 2
    from firmware_sim import downlink  # noqa: PLC0415

    opts = {**vars(args), **options}
    try:
        secret = read_secret(Path(opts["secret_file"]))
        if not 1 <= opts["expiry"] <= 7 * 24 * 3600:
            raise RemoteUsageError("--expiry is 1 s to 7 days")
        if not opts["timeout"] > 0:
            raise RemoteUsageError("--timeout must be positive")
        now = _now_ms()
        command = downlink.Command(
            command_id=uuid.uuid4().bytes,
            vin=args.vin,
            action=downlink.Action(action),
            params=params,
            issued_at_ms=now,
            expires_at_ms=now + opts["expiry"] * 1000,
            nonce=secrets.token_bytes(16),
            order=opts["order"] if opts["order"] is not None else now,
        )
        raw = downlink.sign_command(command, downlink.vehicle_key(secret, args.vin))
    except (RemoteUsageError, ValueError) as exc:
        print(f"tcusim remote: error: {exc}", file=sys.stderr)
        return 2
    session = _Session(opts["broker"], f"tcusim-remote-{secrets.token_hex(4)}", opts["timeout"])
    try:
        if opts["wait"]:
            session.subscribe(f"tcusim/v1/{args.vin}/cmd")
        session.publish(downlink.down_topic(args.vin), raw)
        print(f"sent {action} {command.command_id.hex()} to {args.vin} (order {command.order})")
        if not opts["wait"]:
            return 0
        return _wait(session, command.command_id, opts["timeout"])
    finally:
        session.close()


def _wait(session: _Session, command_id: bytes, timeout: float) -> int:
    from firmware_sim import downlink  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"tcusim remote: no final status within {timeout:g} s", file=sys.stderr)
            return 1
        try:
            raw = session.statuses.get(timeout=left)
        except queue.Empty:
            continue
        try:
            status = downlink.decode_status(raw)
        except (TcuError, ValueError) as exc:
            print(f"tcusim remote: ignored a bad status message: {exc}", file=sys.stderr)
            continue
        if bytes(status.command_id) != command_id:
            continue
        name, line = _status_line(status)
        print(line, flush=True)
        if name in DONE:
            return 0 if name != "Failed" else 1
