"""``tcusim vehicle run``: the box in wall-clock time on real (or virtual) interfaces."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from pathlib import Path
from typing import Any

from can_dbc.decoder import CompiledDecoder
from can_dbc.mapping import load_mapping
from can_dbc.network import load_car_network
from firmware_sim.box import Tcu
from firmware_sim.cli.remote import read_hex_file, read_secret
from firmware_sim.clock import WallScheduler
from firmware_sim.config import TcuConfig, UplinkConfig, parse_broker_url
from firmware_sim.downlink import KEY_BYTES, vehicle_key
from firmware_sim.errors import ConfigError
from firmware_sim.gnss import GnssReader, GnssSource
from firmware_sim.runner import open_bus, run_wall_clock
from firmware_sim.sim.drive import city_drive
from firmware_sim.sim.physics import VehicleState
from firmware_sim.sim.vehicle import SimSerial, SimVehicle


def add_subparser(subparsers: Any) -> None:
    """Register ``tcusim vehicle``."""
    parser = subparsers.add_parser("vehicle", help="run the box on real or virtual interfaces")
    commands = parser.add_subparsers(dest="vehicle_command", metavar="ACTION", required=True)
    run = commands.add_parser(
        "run",
        help="run the box in wall-clock time",
        description="Run the box in wall-clock time on a CAN interface (any python-can "
        "interface: socketcan, virtual, slcan, pcan, ...), an optional GNSS serial port, and "
        "an MQTT broker.",
    )
    run.add_argument("--vin", required=True, help="the car's VIN (17 characters)")
    run.add_argument("--model-year", type=int, help="override the model year the VIN gives")
    run.add_argument(
        "--services", default="connected_car", help="subscribed services, comma-separated"
    )
    run.add_argument(
        "--broker", required=True, help="mqtt://[user:password@]host:port (mqtts:// for TLS)"
    )
    run.add_argument("--tls-ca", help="CA certificate file for mqtts://")
    run.add_argument("--tls-cert", help="client certificate file")
    run.add_argument("--tls-key", help="client key file")
    run.add_argument(
        "--can-interface", default="virtual", help="python-can interface (default: virtual)"
    )
    run.add_argument("--can-channel", default="vcan0", help="channel, e.g. can0 (default: vcan0)")
    run.add_argument("--bitrate", type=int, help="bitrate for interfaces that set it")
    run.add_argument("--gnss", help="GNSS serial port or pyserial URL, e.g. /dev/ttyUSB0")
    run.add_argument("--gnss-baud", type=int, default=9600, help="GNSS baud rate (default 9600)")
    run.add_argument(
        "--mapping", type=Path, help="signal mapping file (default: the project's car)"
    )
    run.add_argument(
        "--dbc", type=Path, action="append", default=[], help="network file the mapping names"
    )
    run.add_argument(
        "--data-dir", type=Path, default=Path("tcusim-data/vehicle"), help="the box's flash"
    )
    keys = run.add_mutually_exclusive_group()
    keys.add_argument(
        "--command-key-file",
        type=Path,
        metavar="FILE",
        help="the vehicle's remote command key (64 hex digits): take remote commands",
    )
    keys.add_argument(
        "--remote-secret-file",
        type=Path,
        metavar="FILE",
        help="the gateway's remote master secret (its remote.secret): derive this VIN's key "
        "from it and take remote commands (a simulator convenience: a real box holds only "
        "its own key)",
    )
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument(
        "--simulate",
        action="store_true",
        help="also run the simulated car on the same (virtual) bus, driving a commute",
    )
    run.set_defaults(func=run_vehicle)


def _check(args: argparse.Namespace) -> None:
    """Refuse option combinations that would be ignored or would do harm."""
    if args.duration is not None and args.duration <= 0:
        raise ConfigError("--duration must be a positive number of seconds")
    if args.dbc and args.mapping is None:
        raise ConfigError("--dbc names the network files of a --mapping: give the mapping too")
    if args.simulate and args.can_interface != "virtual":
        raise ConfigError(
            "--simulate puts simulated ECUs on the bus: it runs on --can-interface virtual "
            "only, never on a real car's network"
        )
    if args.bitrate is not None and args.can_interface == "virtual":
        raise ConfigError("--bitrate means nothing on the virtual interface")
    if args.gnss_baud <= 0:
        raise ConfigError("--gnss-baud must be positive")


def command_key(args: argparse.Namespace, vin: str) -> bytes | None:
    """The vehicle key the options give, or None (the box then takes no commands)."""
    if args.command_key_file is not None:
        return read_hex_file(args.command_key_file, "command key", min_bytes=KEY_BYTES, exact=True)
    if args.remote_secret_file is not None:
        return vehicle_key(read_secret(args.remote_secret_file), vin)
    return None


def run_vehicle(args: argparse.Namespace) -> int:
    """Run the box until Ctrl-C or ``--duration``; print what it did."""
    _check(args)
    config = TcuConfig.from_mapping(
        {
            "vin": args.vin,
            "model_year": args.model_year,
            "services": [s for s in args.services.split(",") if s],
        }
    )
    uplink = UplinkConfig(
        broker=parse_broker_url(args.broker),
        ca_file=args.tls_ca,
        cert_file=args.tls_cert,
        key_file=args.tls_key,
    )
    if args.mapping is not None:
        mapping = load_mapping(args.mapping, network_paths=args.dbc or None)
    else:
        mapping = load_car_network().mapping
    options = {"bitrate": args.bitrate} if args.bitrate else {}
    scheduler = WallScheduler()
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        bus = open_bus(args.can_interface, args.can_channel, **options)
        stack.callback(bus.shutdown)
        gnss_line = None
        if args.simulate:
            car_bus = open_bus(args.can_interface, args.can_channel, **options)
            stack.callback(car_bus.shutdown)
            gnss_line = SimSerial() if not args.gnss else None
            vehicle = SimVehicle(
                mapping,
                VehicleState(),
                city_drive(max(2.0, (args.duration or 600) / 60)),
                car_bus,
                scheduler,
                gnss=GnssSource(gnss_line) if gnss_line is not None else None,
            )
            vehicle.start()
        gnss = None
        if args.gnss:
            gnss = GnssReader(args.gnss, baudrate=args.gnss_baud)
            gnss.open()
            stack.callback(gnss.close)
        elif gnss_line is not None:
            gnss = GnssReader(gnss_line)
        box = Tcu(
            config,
            data_dir=args.data_dir,
            decoder=CompiledDecoder.for_mapping(mapping),
            scheduler=scheduler,
            uplink=uplink,
            bus=bus,
            gnss=gnss,
            command_key=command_key(args, config.vin),
        )
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stack.callback(signal.signal, signal.SIGTERM, previous)
        box.boot()
        try:
            run_wall_clock(box, scheduler, duration_s=args.duration, stop=stop)
        except KeyboardInterrupt:
            pass
        finally:
            box.shutdown(drain_timeout=5.0)
        _print_counters(box, gnss)
    return 0


def _print_counters(box: Tcu, gnss: GnssReader | None) -> None:
    """Everything the box counted, one line a subject."""
    d = box.decoder.stats
    print(
        f"frames {box.stats.frames}, decoded {d.decoded}, unchanged {d.unchanged}, "
        f"unknown id {d.unknown_id}, errors {d.errors}, truncated {d.truncated}, "
        f"error frames {d.error_frames}, remote frames {d.remote_frames}, "
        f"bus errors {box.stats.bus_errors}, unmapped values {sum(d.unmapped_values.values())}, "
        f"non-finite values {sum(d.non_finite.values())}"
    )
    if gnss is not None:
        g = gnss.stats
        print(
            f"gnss: sentences {g.sentences}, fixes {g.fixes}, no fix {g.no_fix}, "
            f"bad checksum {g.bad_checksum}, no checksum {g.no_checksum}, "
            f"malformed {g.malformed}, ignored {g.ignored}, overruns {g.overruns}"
        )
    if box.core is not None:
        c = box.core.stats
        print(
            f"samples {c.samples}, not subscribed {c.not_subscribed}, "
            f"withheld by privacy {c.withheld_by_privacy}, dropped by privacy "
            f"{c.dropped_by_privacy}, unrepresentable {sum(c.unrepresentable.values())}, "
            f"invalid privacy values {c.invalid_privacy}"
        )
        print(f"uploads {box.stats.uploads_enqueued} {dict(c.uploads_by_trigger)}")
    print(f"queue: {box.flash.depth} waiting, {len(box.stats.evicted)} evicted")
    if box.commands is not None:
        k = box.commands.stats
        print(
            f"commands: received {k.received}, refused {dict(k.refused)}, submitted "
            f"{k.submitted}, statuses {k.statuses}, request frames {k.frames_sent}, feedback "
            f"frames {k.feedback_frames} ({k.bad_feedback} undecodable), sleeps "
            f"{box.stats.sleeps}, wakes {dict(box.stats.wakes)}"
        )
