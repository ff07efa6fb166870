"""``tcusim decode``: decode a CAN capture with a network description, as JSON lines.

Each decoded frame is one line ``{"t", "id", "ext", "message", "signals"}``; one summary
line closes the output: frames, decoded, unknown_id, errors, error_frames, remote_frames,
truncated, bad_lines, unread_objects and cut_short (a BLF file shorter than its header
says), error_reasons and the [min, max] of each numeric signal. Without ``--mapping`` every
message of the network is decoded by DBC signal name (value tables off unless
``--choices``); with it, only the mapped signals, by logical (catalog) name, in the
catalog's units. Load repairs and warnings, and what the capture lost, go to stderr.

A capture that cannot be read to its end (a corrupt BLF object, a broken .gz) still closes
the output with the summary of what was read, with ``"aborted": "<reason>"``, and exits 2.
Faults found before reading (arguments, network, mapping, a missing capture) are one error
line on stderr and exit 2, with no summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from can_dbc.capture import CAPTURE_SUFFIXES, CaptureReader, CaptureStats
from can_dbc.decoder import CompiledDecoder, DecoderStats, MessageDecoder
from can_dbc.errors import CaptureError
from can_dbc.loader import FORMATS, LoadReport, load_network
from can_dbc.mapping import load_mapping

__all__ = ["add_subparser", "run"]

Write = Callable[[str], object]


def add_subparser(subparsers: Any) -> None:
    """Register ``decode`` with the ``tcusim`` parser."""
    parser = subparsers.add_parser(
        "decode",
        help="decode a CAN capture with a DBC (JSON lines)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dbc",
        action="append",
        default=[],
        metavar="FILE",
        help=f"network file ({' '.join(sorted(FORMATS))}); repeat for several",
    )
    parser.add_argument(
        "capture", metavar="CAPTURE", help=f"capture file ({' '.join(CAPTURE_SUFFIXES)}, .gz)"
    )
    parser.add_argument(
        "--mapping",
        metavar="FILE",
        help="a tcusim mapping: output catalog signals (its network unless --dbc is given)",
    )
    parser.add_argument("--choices", action="store_true", help="decode value tables to their names")
    parser.add_argument(
        "--summary-only", action="store_true", help="print only the final summary line"
    )
    parser.set_defaults(func=run)


class _Ranges:
    """The [min, max] of each numeric signal seen."""

    def __init__(self) -> None:
        self.ranges: dict[str, list[float]] = {}

    def add(self, signals: Mapping[str, Any]) -> None:
        for name, value in signals.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            seen = self.ranges.get(name)
            if seen is None:
                self.ranges[name] = [value, value]
            elif value < seen[0]:
                seen[0] = value
            elif value > seen[1]:
                seen[1] = value


def _summary(
    stats: DecoderStats, capture: CaptureStats, ranges: _Ranges, mapped: bool
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "frames": stats.frames,
        "decoded": stats.decoded,
        "unknown_id": stats.unknown_id,
        "errors": stats.errors,
        "error_frames": stats.error_frames,
        "remote_frames": stats.remote_frames,
        "truncated": stats.truncated,
        "bad_lines": capture.bad_lines,
        "unread_objects": capture.shortfall,
        "cut_short": capture.cut_short,
        "error_reasons": dict(stats.error_reasons),
        "ranges": dict(sorted(ranges.ranges.items())),
    }
    if mapped:
        summary["unmapped_values"] = dict(stats.unmapped_values)
    return summary


def _report(report: LoadReport, err: TextIO) -> None:
    for line in report.lines():
        print(f"tcusim decode: {line}", file=err)


def _decode_mapped(
    reader: CaptureReader, compiled: CompiledDecoder, ranges: _Ranges, write: Write | None
) -> None:
    names = compiled.names
    for msg in reader:
        pairs = compiled.feed(msg)
        if pairs is None:
            continue
        signals = {names[sid]: value for sid, value in pairs}
        ranges.add(signals)
        if write is not None:
            message = compiled.message_of(msg.arbitration_id, msg.is_extended_id)
            line = {
                "t": msg.timestamp,
                "id": msg.arbitration_id,
                "ext": msg.is_extended_id,
                "message": message.name if message is not None else None,
                "signals": signals,
            }
            write(json.dumps(line) + "\n")


def _decode_all(
    reader: CaptureReader, decoder: MessageDecoder, ranges: _Ranges, write: Write | None
) -> None:
    for msg in reader:
        result = decoder.feed(msg)
        if result is None:
            continue
        message, decoded = result
        ranges.add(decoded)
        if write is not None:
            line = {
                "t": msg.timestamp,
                "id": msg.arbitration_id,
                "ext": msg.is_extended_id,
                "message": message.name,
                "signals": decoded,
            }
            write(json.dumps(line, default=str) + "\n")


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Decode ``args.capture``; returns the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if not args.dbc and not args.mapping:
        print("tcusim: error: decode needs --dbc FILE or --mapping FILE", file=err)
        return 2
    reader = CaptureReader(args.capture)
    ranges = _Ranges()
    write = None if args.summary_only else out.write
    decoder: CompiledDecoder | MessageDecoder
    if args.mapping:
        mapping = load_mapping(args.mapping, network_paths=args.dbc or None)
        _report(mapping.network.report, err)
        decoder = CompiledDecoder.for_mapping(mapping, skip_unchanged=False)
    else:
        network = load_network(args.dbc)
        _report(network.report, err)
        decoder = MessageDecoder(network.database, decode_choices=args.choices)
    aborted: str | None = None
    try:
        if isinstance(decoder, CompiledDecoder):
            _decode_mapped(reader, decoder, ranges, write)
        else:
            _decode_all(reader, decoder, ranges, write)
    except CaptureError as exc:
        aborted = str(exc)
    for problem in reader.stats.problems():
        print(f"tcusim decode: warning {args.capture}: {problem}", file=err)
    summary = _summary(decoder.stats, reader.stats, ranges, bool(args.mapping))
    if aborted is not None:
        summary["aborted"] = aborted
    out.write(json.dumps(summary) + "\n")
    out.flush()
    if aborted is not None:
        print(f"tcusim: error: {aborted}", file=err)
        return 2
    return 0
