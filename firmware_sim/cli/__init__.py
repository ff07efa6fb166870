"""The ``tcusim`` command line: each subcommand is a module here with ``add_subparser``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from can_dbc.errors import CanDbcError
from firmware_sim.errors import TcuError
from gateway.errors import GatewayError

__all__ = ["main"]

# Subcommand modules, in the order ``tcusim --help`` lists them.
_SUBCOMMANDS = ("demo", "vehicle", "scenario", "decode", "replay", "gateway", "remote")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="tcusim",
        description="A simulated car telematics box and the cloud gateway it talks to.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _SUBCOMMANDS:
        module = importlib.import_module(f"firmware_sim.cli.{name}")
        module.add_subparser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tcusim`` and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (CanDbcError, TcuError, GatewayError) as exc:
        print(f"tcusim: error: {exc}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
