"""Remote command latency: from the REST call to the ``Done`` notification, over a real Mosquitto.

One run, on loopback, wall-clock time:

* baseline: the bare MQTT round trip. A paho client publishes a small message with QoS 1
  on a request topic; a second paho client, subscribed with QoS 1, publishes it back on a
  reply topic; the time from the publish to the reply's arrival, ``--rounds`` times.
* the command path: ``tcusim gateway serve``'s parts in this process
  (:class:`gateway.service.GatewayService`: SQLite, the Web API on a free port, the remote
  dispatcher and status listener, the webhook sender) and an awake simulated car
  (:class:`firmware_sim.sim.session.SimulatedCar` on the wall clock, its actuation delays set
  to zero) whose box takes the commands. An app signed in with PKCE posts ``door`` remotes,
  alternately ``Unlocked`` and ``Locked`` (each one a real change the car carries out), and
  the clock runs from the POST until its webhook receiver holds the remote's ``Done``
  notification (``Success``), ``--rounds`` times, one after the other.

It prints p50, p99 and the maximum of both in ms and the ratio of the p99s; the last line is
JSON and is also written to ``benchmarks/results/command_latency.json``. Target: p99 <= 50 ms
for the command path. Run ``python benchmarks/command_latency.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.cli.demo import DEMO_LOGIN
from firmware_sim.clock import WallScheduler
from firmware_sim.config import TcuConfig
from firmware_sim.downlink import vehicle_key
from firmware_sim.sim.drive import WEST_PARIS, Drive
from firmware_sim.sim.physics import Energy
from firmware_sim.sim.session import SimulatedCar
from firmware_sim.uplink import set_no_delay
from gateway.apiclient import ApiClient, Notification, WebhookReceiver
from gateway.broker import MosquittoBroker, MosquittoSettings, find_mosquitto
from gateway.service import GatewayService

RESULTS = Path(__file__).resolve().parent / "results" / "command_latency.json"
VIN = "VR3UHZKXZMT200002"
TARGET_P99_MS = 50.0
WAIT_S = 10.0


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    """p50, p99, max and mean in ms."""
    return {
        "p50_ms": round(percentile(values, 0.50), 2),
        "p99_ms": round(percentile(values, 0.99), 2),
        "max_ms": round(max(values), 2),
        "mean_ms": round(statistics.fmean(values), 2),
    }


def _client(broker: MosquittoBroker, name: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
    set_no_delay(client)  # the same socket setting as the box's and the gateway's
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def bare_round_trips(broker: MosquittoBroker, rounds: int) -> list[float]:
    """Publish, echo, receive: one QoS 1 round trip through the broker, ``rounds`` times."""
    arrived = threading.Event()
    echo = _client(broker, "bench-echo")
    asker = _client(broker, "bench-asker")
    subscribed = threading.Event()
    echo.on_message = lambda c, _u, m: c.publish("bench/reply", m.payload, qos=1)
    asker.on_message = lambda _c, _u, _m: arrived.set()
    echo.on_subscribe = lambda *_a: subscribed.set()
    echo.subscribe("bench/request", qos=1)
    asker.subscribe("bench/reply", qos=1)
    if not subscribed.wait(WAIT_S):
        raise SystemExit("the echo client did not subscribe")
    time.sleep(0.2)  # the asker's subscription too
    times = []
    try:
        for i in range(rounds + 10):
            arrived.clear()
            t0 = time.perf_counter()
            asker.publish("bench/request", b"x" * 64, qos=1)
            if not arrived.wait(WAIT_S):
                raise SystemExit("a bare round trip did not come back")
            if i >= 10:  # the first ones warm up
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        for client in (echo, asker):
            client.loop_stop()
            client.disconnect()
    return times


class WallCar:
    """A simulated car (and its box) running on the wall clock in a thread of its own."""

    def __init__(self, broker: MosquittoBroker, key: bytes, data_dir: Path) -> None:
        self.scheduler = WallScheduler()
        parked = Drive(duration_s=86_400, route=WEST_PARIS, speed_profile=((0, 0.0),))
        self.car = SimulatedCar(
            TcuConfig(vin=VIN, model_year=2021),
            parked,
            self.scheduler,
            data_dir=data_dir,
            broker_url=broker.url,
            energy=Energy.ELECTRIC,
            command_key=key,
            command_delays_ms=0,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-car", daemon=True)

    def _run(self) -> None:
        # The car's ECUs run on their 10 ms tick; the box, like a real one, takes a command
        # as it arrives (as tcusim vehicle run's loop pumps the box each turn).
        scheduler, box = self.scheduler, self.car.box
        while not self._stop.is_set():
            scheduler.run_due()
            if box.uplink is not None and box.uplink.commands_waiting:
                box.pump()
            time.sleep(min(scheduler.seconds_to_next(0.005), 0.001))

    def start(self) -> None:
        self.car.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.car.close(drain_timeout=1)


def command_round_trips(broker: MosquittoBroker, rounds: int, work: Path) -> list[float]:
    """POST a door remote, wait for its Done notification: ``rounds`` times."""
    master = bytes(range(32))
    service = GatewayService(
        work / "gateway.sqlite3",
        secret=b"s" * 32,
        broker=broker.url,
        http_port=0,
        monitor_interval_s=0.05,  # enrols the car soon after its first upload
        remote_secret=master,  # the webhook sender keeps its default round: woken per event
    )
    car = WallCar(broker, vehicle_key(master, VIN), work / "car")
    receiver = WebhookReceiver()
    service.start()
    car.start()
    times = []
    try:
        app = ApiClient(service.base_url)
        deadline = time.monotonic() + 30
        while service.accounts.vehicle_by_vin(VIN) is None:  # enrolled at its first upload
            if time.monotonic() > deadline:
                raise SystemExit("the car was not enrolled: no upload reached the gateway")
            time.sleep(0.05)
        app.sign_in_user(**{**DEMO_LOGIN, "scopes": "data:telemetry remote:door:write"})
        vid = app.vehicle_id(VIN)
        hook = {"webhook": {"name": "bench", "target": receiver.url}}
        callback = app.post("/user/callbacks", {"label": "bench", "callback": hook})
        receiver.secrets[callback["callbackId"]] = callback["secret"]
        path = f"/user/vehicles/{vid}/callbacks/{callback['callbackId']}/remotes"
        states = ("Unlocked", "Locked")  # parked locked: each one changes the locks
        for i in range(rounds + 5):
            t0 = time.perf_counter()
            made = app.post(path, {"door": {"state": states[i % 2]}})
            rid = made["remoteActionId"]

            def done(got: list[Notification], rid: str = rid) -> bool:
                return any(_done(n, rid) for n in got)

            if not receiver.wait(done, WAIT_S):
                raise SystemExit(f"remote {rid} had no Done notification in {WAIT_S} s")
            elapsed = (time.perf_counter() - t0) * 1000
            final = next(n for n in receiver.received if _done(n, rid))
            status = final.body["remoteEvent"]["eventStatus"]
            if status.get("status") != "Success":
                raise SystemExit(f"remote {rid} ended {status}")
            if i >= 5:
                times.append(elapsed)
        app.close()
    finally:
        car.stop()
        receiver.close()
        service.stop()
    return times


def _done(n: Notification, rid: str) -> bool:
    event = n.body.get("remoteEvent", {})
    return bool(
        event.get("remoteActionId") == rid and event.get("eventStatus", {}).get("type") == "Done"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 0 (the figures are the result, not a verdict)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=300, help="commands (and round trips)")
    args = parser.parse_args(argv)
    if args.rounds < 10:
        parser.error("--rounds must be at least 10")
    if find_mosquitto() is None:
        raise SystemExit("this benchmark needs Mosquitto (apt-get install mosquitto)")
    with tempfile.TemporaryDirectory(prefix="tcusim-cmd-bench-") as tmp:
        work = Path(tmp)
        with MosquittoBroker(data_dir=work / "broker", settings=MosquittoSettings()) as broker:
            bare = bare_round_trips(broker, args.rounds)
            command = command_round_trips(broker, args.rounds, work)
    result: dict[str, Any] = {
        "benchmark": "command_latency",
        "rounds": args.rounds,
        "bare_mqtt_round_trip": summary(bare),
        "rest_to_done": summary(command),
        "target_p99_ms": TARGET_P99_MS,
        "met": percentile(command, 0.99) <= TARGET_P99_MS,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    result["p99_ratio"] = round(
        result["rest_to_done"]["p99_ms"] / max(result["bare_mqtt_round_trip"]["p99_ms"], 1e-6), 1
    )
    for name in ("bare_mqtt_round_trip", "rest_to_done"):
        row = result[name]
        print(
            f"{name:22s} p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms"
            f"  max {row['max_ms']:7.2f} ms"
        )
    print(f"target p99 <= {TARGET_P99_MS:.0f} ms: {'met' if result['met'] else 'NOT met'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(result)
    RESULTS.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
