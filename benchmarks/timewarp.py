"""Timewarp: an hour of driving end to end in simulated time, as a multiple of real time.

One simulated car drives :func:`firmware_sim.sim.drive.commute` (an hour of town, main roads,
traffic lights and a stop with the engine off) with every cyclic message of the car network
on a simulated CAN bus; its box decodes every frame through the bus interface, collects,
keeps its flash on disk, and uploads over MQTT to a real Mosquitto (the embedded broker only
where no ``mosquitto`` binary exists); the gateway ingests into SQLite. The figure is
simulated seconds over wall seconds from the start of the drive until the gateway has stored
the last upload.

Two runs, each from a fresh flash and database:

* ``loaded``: the network's own frames plus filler frames of ids the box does not consume
  (the other ECUs of a real car) up to ``--bus-load`` of a 500 kbit/s bus; 30-60 % is
  usual on a car's powertrain and body buses, the default is 50 %;
* ``network``: the network's own frames only (about 6 % of the bus).

Baselines, measured in the same process: python-can's virtual bus carrying the same number
of frames (one simulated second of the loaded run's traffic, repeated) from one bus to
another and received without decoding; and cantools' ``decode_message`` over the network's
frames of that second. Run ``python benchmarks/timewarp.py``; the last line is JSON and is
also written to ``benchmarks/results/timewarp.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import can
import cantools

from can_dbc.network import load_car_network
from firmware_sim.clock import SimScheduler
from firmware_sim.config import TcuConfig
from firmware_sim.scenario.model import load_scenario
from firmware_sim.scenario.runner import ScenarioRunner
from firmware_sim.sim.drive import commute
from firmware_sim.sim.physics import VehicleState
from firmware_sim.sim.session import SimulatedCar
from firmware_sim.sim.vehicle import BITRATE, SimBus, SimVehicle
from gateway.broker import EmbeddedBroker, MosquittoBroker, find_mosquitto
from gateway.ingest import GatewayThread

RESULTS = Path(__file__).resolve().parent / "results" / "timewarp.json"
START_MS = 1_767_340_800_000  # 2026-01-02T08:00:00Z
VIN = "VR3UHZKXZLT000777"  # 10th character L: a 2020 car, uploading every 10 s
TARGET, AIM = 60, 200


def _broker(stack: contextlib.ExitStack, data_dir: Path) -> tuple[str, str]:
    """A started broker: Mosquitto where installed, else the embedded one."""
    if find_mosquitto():
        broker: MosquittoBroker | EmbeddedBroker = MosquittoBroker(data_dir=data_dir / "broker")
        kind = "mosquitto"
    else:
        broker = EmbeddedBroker()
        kind = "embedded"
    broker.start()
    stack.callback(broker.close)
    return broker.url, kind


def run_drive(minutes: float, bus_load: float, seed: int, vin: str) -> dict[str, Any]:
    """One end-to-end run; its figures."""
    simulated_s = minutes * 60
    with (
        tempfile.TemporaryDirectory(prefix="tcusim-timewarp-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        data_dir = Path(tmp)
        url, kind = _broker(stack, data_dir)
        gateway = stack.enter_context(GatewayThread(data_dir / "gateway.sqlite3", url))
        config = TcuConfig.from_mapping({"vin": vin})
        car = SimulatedCar(
            config,
            commute(minutes, seed),
            SimScheduler(START_MS),
            data_dir=data_dir / "box",
            broker_url=url,
            seed=seed,
            bus_load=bus_load,
        )
        wall_start = time.perf_counter()
        car.start()
        for _ in range(int(minutes)):
            car.run_for(60)
        car.run_for(simulated_s - 60 * int(minutes))
        wall_drive = time.perf_counter() - wall_start
        box = car.box
        enqueued, evicted = box.stats.uploads_enqueued, len(box.stats.evicted)
        stats = box.decoder.stats
        bytes_sent = box.uplink.bytes_sent if box.uplink else 0
        drained = car.close(drain_timeout=120.0)
        expected = enqueued - evicted
        stored_all = gateway.wait_until(
            lambda store: store.payload_count(vin) >= expected, timeout=120.0
        )
        wall_total = time.perf_counter() - wall_start
        store = gateway.reader()
        vehicle = car.vehicle
        return {
            "broker": kind,
            "bus_load": bus_load,
            "network_load": round(vehicle.network_load, 4),
            "simulated_s": simulated_s,
            "wall_drive_s": round(wall_drive, 3),
            "wall_s": round(wall_total, 3),
            "timewarp": round(simulated_s / wall_total, 1),
            "timewarp_drive": round(simulated_s / wall_drive, 1),
            "frames_sent": vehicle.frames_sent,
            "filler_frames": vehicle.filler_frames_sent,
            "frames_per_simulated_s": round(vehicle.frames_sent / simulated_s),
            "frames_per_wall_s": round(vehicle.frames_sent / wall_drive),
            "box_frames": box.stats.frames,
            "decoded": stats.decoded,
            "unchanged": stats.unchanged,
            "unknown_id": stats.unknown_id,
            "decode_errors": stats.errors,
            "gnss_fixes": box.stats.fixes,
            "uploads": enqueued,
            "bytes_sent": bytes_sent,
            "queue_drained": drained,
            "stored_all": stored_all,
            "stored_payloads": store.payload_count(vin),
            "stored_samples": store.sample_count(vin),
            "rejected": len(store.rejections()),
            "distance_km": round(vehicle.state.distance_m / 1000, 1),
        }


def one_second_of_traffic(bus_load: float, seed: int) -> list[can.Message]:
    """The frames the car sends in one simulated second of driving, at this bus load."""
    scheduler = SimScheduler(START_MS)
    car_bus, tap = SimBus("timewarp-sample"), SimBus("timewarp-sample")
    try:
        vehicle = SimVehicle(
            load_car_network().mapping,
            VehicleState(seed=seed),
            commute(10, seed),
            car_bus,
            scheduler,
            bus_load=bus_load,
        )
        vehicle.start()
        scheduler.run_for(120_000)  # warm up: driving
        while tap.recv(0) is not None:
            pass
        scheduler.run_for(1000)
        frames = []
        while (msg := tap.recv(0)) is not None:
            frames.append(msg)
        return frames
    finally:
        car_bus.shutdown()
        tap.shutdown()


def baseline_virtual_bus(sample: Sequence[can.Message], count: int) -> float:
    """Frames/s: ``count`` frames sent on python-can's virtual bus and received, no decoding."""
    sender = can.Bus(interface="virtual", channel="timewarp-baseline", receive_own_messages=False)
    receiver = can.Bus(interface="virtual", channel="timewarp-baseline", receive_own_messages=False)
    try:
        templates = [(m.arbitration_id, bytes(m.data)) for m in sample]
        batch = len(templates)
        start = time.perf_counter()
        sent = 0
        while sent < count:
            for frame_id, data in templates[: count - sent]:
                sender.send(can.Message(arbitration_id=frame_id, is_extended_id=False, data=data))
            for _ in range(min(batch, count - sent)):
                receiver.recv(0)
            sent += min(batch, count - sent)
        return count / (time.perf_counter() - start)
    finally:
        sender.shutdown()
        receiver.shutdown()


def baseline_cantools(sample: Sequence[can.Message], repeat: int) -> float:
    """Frames/s: cantools ``decode_message`` over the network's frames of the sample."""
    database = load_car_network().database
    known = {m.frame_id for m in database.messages}
    pairs = [(m.arbitration_id, bytes(m.data)) for m in sample if m.arbitration_id in known]
    decode = database.decode_message
    start = time.perf_counter()
    for _ in range(repeat):
        for frame_id, data in pairs:
            decode(frame_id, data)
    return len(pairs) * repeat / (time.perf_counter() - start)


def _show(name: str, run: dict[str, Any], bare_fps: float) -> None:
    print(
        f"{name}: bus load {run['bus_load']:.0%} (the network's own {run['network_load']:.1%}), "
        f"{run['frames_per_simulated_s']:,} frames per simulated second, broker {run['broker']}"
    )
    print(
        f"  timewarp, end to end:   {run['timewarp']:>8,.1f}x real time "
        f"({run['simulated_s']:.0f} simulated s in {run['wall_s']:.2f} wall s; "
        f"the drive alone {run['timewarp_drive']:,.1f}x)"
    )
    print(
        f"  frames through the box: {run['frames_per_wall_s']:>10,} frames/s "
        f"(python-can virtual bus, no decoding: {bare_fps:,.0f} frames/s; "
        f"ratio {run['frames_per_wall_s'] / bare_fps:.2f})"
    )
    print(
        f"  frames: {run['frames_sent']:,} sent ({run['filler_frames']:,} filler), "
        f"{run['box_frames']:,} read by the box: {run['decoded']:,} decoded, "
        f"{run['unchanged']:,} unchanged, {run['unknown_id']:,} unknown ids, "
        f"{run['decode_errors']} errors"
    )
    print(
        f"  uploads: {run['uploads']:,} ({run['bytes_sent']:,} bytes); stored: "
        f"{run['stored_payloads']:,} payloads, {run['stored_samples']:,} samples; "
        f"rejected {run['rejected']}; {run['distance_km']} km driven"
    )


REFERENCE = Path(__file__).resolve().parent.parent / "scenarios" / "reference_hour_full_load.yaml"


def run_reference_scenario() -> dict[str, Any]:
    """The shipped reference scenario through ``tcusim scenario run``'s runner, end to end."""
    scenario = load_scenario(REFERENCE)
    with tempfile.TemporaryDirectory(prefix="tcusim-timewarp-") as tmp:
        record = ScenarioRunner(scenario, data_dir=Path(tmp)).run()
    simulated = (record.end_ms - record.start_ms) / 1000
    return {
        "scenario": scenario.name,
        "bus_load": scenario.bus_load,
        "simulated_s": simulated,
        "wall_s": record.wall_s,
        "timewarp": round(simulated / record.wall_s, 1),
        "expectations_held": record.passed,
        "frames_sent": record.counters.get("frames_sent", 0),
        "stored_payloads": record.counters.get("stored_payloads", 0),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print each figure and a closing JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="drive length (default 60)")
    parser.add_argument(
        "--bus-load",
        type=float,
        default=0.5,
        help="fill the bus up to this fraction of 500 kbit/s (default 0.5; 0: the network only)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the drive's seed")
    parser.add_argument("--vin", default=VIN, help="the car (default: a 2020 car)")
    args = parser.parse_args(argv)
    if not 2 <= args.minutes <= 24 * 60:
        parser.error("--minutes must be in [2, 1440]")
    if not 0 <= args.bus_load < 1:
        parser.error("--bus-load must be in [0, 1)")

    load_before = os.getloadavg()[0]
    loaded = run_drive(args.minutes, args.bus_load, args.seed, args.vin)
    network = run_drive(args.minutes, 0.0, args.seed, args.vin)
    sample = one_second_of_traffic(args.bus_load, args.seed)
    bare_fps = baseline_virtual_bus(sample, loaded["frames_sent"])
    cantools_fps = baseline_cantools(sample, repeat=2000)

    reference = run_reference_scenario()

    _show("loaded", loaded, bare_fps)
    _show("network only", network, bare_fps)
    print(
        f"reference scenario ({REFERENCE.name}): {reference['timewarp']:,.1f}x real time "
        f"({reference['simulated_s']:.0f} simulated s in {reference['wall_s']:.2f} wall s, "
        f"expectations {'held' if reference['expectations_held'] else 'FAILED'})"
    )
    print(
        f"baselines: python-can virtual bus send+recv {bare_fps:,.0f} frames/s "
        f"({loaded['frames_sent']:,} frames); cantools decode_message over the network's "
        f"frames {cantools_fps:,.0f} frames/s"
    )
    print(
        f"target >= {TARGET}x, aim {AIM}x: loaded {loaded['timewarp']:,.1f}x, "
        f"network only {network['timewarp']:,.1f}x (load average {load_before:.2f} on "
        f"{os.cpu_count()} cpus at the start: other work on the machine lowers the figures)"
    )
    summary = {
        "benchmark": "timewarp",
        "minutes": args.minutes,
        "seed": args.seed,
        "vin": args.vin,
        "bitrate": BITRATE,
        "timewarp": loaded["timewarp"],
        "timewarp_network_only": network["timewarp"],
        "timewarp_reference_scenario": reference["timewarp"],
        "reference_scenario": reference,
        "target": TARGET,
        "aim": AIM,
        "loaded": loaded,
        "network_only": network,
        "baseline_virtual_bus_fps": round(bare_fps),
        "baseline_cantools_decode_fps": round(cantools_fps),
        "ratio_frames_to_virtual_bus": round(loaded["frames_per_wall_s"] / bare_fps, 2),
        "python": platform.python_version(),
        "cantools": cantools.__version__,
        "python_can": can.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary))
    ok = all(r["stored_all"] and r["queue_drained"] for r in (loaded, network))
    ok = ok and bool(reference["expectations_held"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
