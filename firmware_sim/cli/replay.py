"""``tcusim replay``: replay a CAN capture onto a python-can interface in wall-clock time.

Frames go at their recorded intervals (``--speed N`` N times faster, ``--max-speed`` as
fast as the bus takes them), again from the start with ``--loop`` until interrupted (Ctrl-C
or SIGTERM end the replay cleanly). ``--id`` keeps only the ids given, ``--exclude`` leaves
ids out (each repeatable or comma-separated: 0x123 or 291). Progress goes to stderr every
few seconds; one JSON summary line closes the output on stdout: frames_read, sent,
filtered, skipped (error frames, frames python-can refuses) with skipped_reasons,
send_errors, bad_lines, loops, the capture's first and last timestamps.

Bad options, a missing or unknown capture and an interface that cannot be opened are one
error line on stderr and exit 2. A capture found corrupt while replayed closes the output
with the summary of what was replayed, ``"aborted": "<reason>"``, and exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from can_dbc.capture import CAPTURE_SUFFIXES, CaptureReader
from can_dbc.errors import CaptureError
from firmware_sim.errors import ConfigError
from firmware_sim.replay import MAX_CAN_ID, Replayer, ReplayStats
from firmware_sim.runner import open_bus

__all__ = ["add_subparser", "parse_ids", "run"]

PROGRESS_EVERY_S = 5.0


def add_subparser(subparsers: Any) -> None:
    """Register ``tcusim replay``."""
    parser = subparsers.add_parser(
        "replay",
        help="replay a CAN capture onto a CAN interface",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "capture", metavar="CAPTURE", help=f"capture file ({' '.join(CAPTURE_SUFFIXES)}, .gz)"
    )
    parser.add_argument(
        "--interface", help="python-can interface: socketcan, virtual, pcan, slcan, ..."
    )
    parser.add_argument("--channel", help="the interface's channel, e.g. can0 or vcan0")
    parser.add_argument("--bitrate", help="bitrate, for interfaces that set it")
    parser.add_argument("--fd", action="store_true", help="open the interface for CAN FD")
    parser.add_argument(
        "--speed", help="replay N times faster than recorded (default 1: as recorded)"
    )
    parser.add_argument(
        "--max-speed", action="store_true", help="send as fast as the interface takes frames"
    )
    parser.add_argument(
        "--loop", action="store_true", help="start again after the last frame, until stopped"
    )
    parser.add_argument(
        "--id",
        dest="ids",
        action="append",
        default=[],
        metavar="ID",
        help="replay only this arbitration id (repeat, or comma-separated)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="ID",
        help="leave this arbitration id out (repeat, or comma-separated)",
    )
    parser.set_defaults(func=run)


def parse_ids(values: list[str], option: str) -> set[int] | None:
    """The CAN ids of repeated, comma-separated ``option`` values (``0x123`` or ``291``)."""
    found: set[int] = set()
    for value in values:
        for item in value.split(","):
            text = item.strip()
            try:
                can_id = int(text, 0)
            except ValueError:
                raise ConfigError(
                    f"{option} {text!r} is not a CAN id (hex with 0x, or decimal)"
                ) from None
            if not 0 <= can_id <= MAX_CAN_ID:
                raise ConfigError(f"{option} {text} is beyond the 29-bit CAN id range")
            found.add(can_id)
    return found or None


def _speed(args: argparse.Namespace) -> float | None:
    if args.max_speed:
        if args.speed is not None:
            raise ConfigError("--speed and --max-speed exclude each other")
        return None
    if args.speed is None:
        return 1.0
    try:
        speed = float(args.speed)
    except ValueError:
        raise ConfigError(f"--speed {args.speed!r} is not a number") from None
    if not math.isfinite(speed) or speed <= 0:
        raise ConfigError(f"--speed {args.speed} must be a positive number")
    return speed


def _bus_options(args: argparse.Namespace) -> dict[str, Any]:
    if not args.interface or not args.channel:
        raise ConfigError("replay needs --interface and --channel (e.g. socketcan can0)")
    options: dict[str, Any] = {}
    if args.bitrate is not None:
        if args.interface == "virtual":
            raise ConfigError("--bitrate means nothing on the virtual interface")
        try:
            options["bitrate"] = int(args.bitrate)
        except ValueError:
            raise ConfigError(f"--bitrate {args.bitrate!r} is not a whole number") from None
        if options["bitrate"] <= 0:
            raise ConfigError("--bitrate must be positive")
    if args.fd:
        options["fd"] = True
    return options


def _progress(err: TextIO) -> Callable[[ReplayStats], None]:
    def report(stats: ReplayStats) -> None:
        print(
            f"tcusim replay: {stats.sent} frames sent, {stats.position_s:.1f} s of capture"
            f" replayed, loop {stats.loops}",
            file=err,
            flush=True,
        )

    return report


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Replay ``args.capture``; returns the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    speed = _speed(args)
    ids = parse_ids(args.ids, "--id")
    exclude = parse_ids(args.exclude, "--exclude")
    options = _bus_options(args)
    CaptureReader(args.capture)  # a missing or unknown capture fails before the bus opens
    stop = threading.Event()
    aborted: str | None = None
    with contextlib.ExitStack() as stack:
        bus = open_bus(args.interface, args.channel, **options)
        stack.callback(bus.shutdown)
        replayer = Replayer(
            args.capture, bus, speed=speed, loop=args.loop, ids=ids, exclude=exclude
        )
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous = signal.signal(signum, lambda *_: stop.set())
                stack.callback(signal.signal, signum, previous)
        try:
            replayer.run(stop, progress=_progress(err), progress_every_s=PROGRESS_EVERY_S)
        except CaptureError as exc:
            aborted = str(exc)
    stats = replayer.stats
    for problem in stats.capture.problems():
        print(f"tcusim replay: warning {args.capture}: {problem}", file=err)
    if stats.send_errors:
        print(
            f"tcusim replay: warning: {stats.send_errors} frames the interface refused "
            f"(last: {stats.last_send_error})",
            file=err,
        )
    summary = stats.as_dict()
    if aborted is not None:
        summary["aborted"] = aborted
    out.write(json.dumps(summary) + "\n")
    out.flush()
    if aborted is not None:
        print(f"tcusim: error: {aborted}", file=err)
        return 2
    return 0
