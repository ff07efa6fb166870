"""``tcusim demo``: a broker, the gateway and a car driving a scenario, with a report.

The gateway runs whole (:class:`gateway.service.GatewayService`: its Web API, monitors,
webhooks and remote commands, on the scenario's simulated clock); an app signs the demo user
in, subscribes a webhook with two monitors before the drive, sends the scenario's remote
commands through the API during it (unlock, a lock the open door refuses, the lock, the horn:
the box executes them on the car's bus), and reads the car's status, trips, position and
remotes through the API after it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from can_dbc.catalog import default_catalog
from firmware_sim.core import POSITION_SIGNALS
from firmware_sim.errors import ConfigError
from firmware_sim.payload import Privacy
from firmware_sim.scenario.model import Remote, Scenario, load_scenario
from firmware_sim.scenario.record import RunRecord
from firmware_sim.scenario.report import write_report
from firmware_sim.scenario.runner import ScenarioRunner
from gateway.apiclient import ApiClient, Notification, WebhookReceiver
from gateway.broker import EmbeddedBroker
from gateway.service import GatewayService, load_or_create_secret
from gateway.store import SqliteStore

# The demo user and app (gateway/data/accounts.yaml).
DEMO_LOGIN = {
    "email": "demo@tcusim.local",
    "password": "tcusim-demo",
    "client_id": "demo-app",
    "client_secret": "demo-app-secret",
    "redirect_uri": "http://127.0.0.1:8765/callback",
    "scopes": "data:telemetry data:position data:trip data:alert data:collision"
    " remote:door:write remote:horn:write remote:lights:write remote:wakeup:write"
    " remote:preconditioning:write remote:charging:write",
}
HOME_RADIUS_KM = 2.0
SPEEDING_KMH = 80


def demo_scenario() -> Scenario:
    """The scenario the demo drives (shipped inside the package)."""
    path = resources.files("firmware_sim.scenario").joinpath("data/demo.yaml")
    with resources.as_file(path) as file:
        return load_scenario(file)


def add_subparser(subparsers: Any) -> None:
    """Register ``tcusim demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="run a broker, the gateway and a car driving a scenario, with a report",
        description="Run, in one process, an MQTT broker (embedded unless --broker is given), "
        "the gateway storing into SQLite, and a 2017 car driving a ten-minute commute "
        "in simulated time: it loses its network and its power on the way, and the driver "
        "turns location sharing off near the end. Print a summary and write a report.",
    )
    parser.add_argument("--broker", help="use this broker (mqtt://host:port) instead")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("tcusim-data/demo"),
        help="where the box's flash, the gateway's database and the report go; the demo "
        "starts them afresh there each run (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, help="another random seed for the drive")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="keep the gateway's Web API serving the demo's data until Ctrl-C",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=0,
        help="the Web API's port on 127.0.0.1 (default: a free one)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its summary; 0 when every expectation held."""
    scenario = demo_scenario()
    if args.seed is not None:
        if args.seed < 0:
            raise ConfigError("--seed must not be negative")
        scenario = dataclasses.replace(scenario, seed=args.seed)
    if not 0 <= args.http_port <= 65535:
        raise ConfigError(f"--http-port must be 0 to 65535, not {args.http_port}")
    data_dir: Path = args.data_dir
    db = data_dir / "gateway.sqlite3"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(f"--data-dir {data_dir}: {exc.strerror or exc}") from exc
    secret = load_or_create_secret(data_dir / "token.secret")
    remote_secret = load_or_create_secret(data_dir / "remote.secret", "remote master secret")
    with contextlib.ExitStack() as stack:
        broker_url = args.broker or stack.enter_context(EmbeddedBroker()).url
        clock = _Clock()
        service = GatewayService(
            db,
            secret=secret,
            broker=broker_url,
            ingest=False,  # the scenario runner's gateway stores the uploads
            http_port=args.http_port,
            monitor_interval_s=0.2,
            webhook_interval_s=0.2,
            clock_ms=clock,
            remote_secret=remote_secret,
        )
        runner = ScenarioRunner(
            scenario,
            data_dir=data_dir,
            broker_url=broker_url,
            db=str(db),
            remote_secret=remote_secret,
        )
        clock.source = lambda: runner.scheduler.now_ms  # the gateway lives the drive's time
        service.start()
        stack.callback(service.stop)
        receiver = stack.enter_context(WebhookReceiver())
        app = stack.enter_context(ApiClient(service.base_url))
        monitors, callback_id = _subscribe(app, receiver, scenario)
        runner.send_remote = _ApiRemotes(app, scenario.config.vin, callback_id)
        record = runner.run()
        api = _read_api(app, receiver, scenario, monitors)
        api.update(_read_remotes(app, receiver, scenario, record, callback_id))
        report = write_report(record, data_dir / "report.html")
        summary = _summary(scenario, record, broker_url, data_dir, report)
        summary["api"] = api
        api["checks"].extend(api.pop("remote_checks"))
        summary["passed"] = record.passed and all(c["passed"] for c in api["checks"])
        if args.json:
            print(json.dumps(summary))
        else:
            _print_summary(summary, record)
        if args.serve:
            # The drive is over and its clock stands still: the API serves on the wall clock
            # again (token lifetimes, rate limits and remote expiry need time to pass).
            clock.source = _wall_ms
            _serve_until_interrupted(service.base_url)
    return 0 if summary["passed"] else 1


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class _Clock:
    """The gateway's clock: the wall clock until the run gives its simulated one."""

    def __init__(self) -> None:
        self.source: Callable[[], int] = _wall_ms

    def __call__(self) -> int:
        return self.source()


#: The API's action object for a scenario's remote (box action and parameters).
def _api_body(action: str, params: Mapping[str, Any]) -> dict[str, Any]:
    if action in ("lock", "unlock"):
        return {"door": {"state": "Locked" if action == "lock" else "Unlocked"}}
    if action == "horn":
        return {"horn": {"state": "Activated", "beeps": int(params.get("beeps", 1))}}
    if action == "lights":
        return {"lights": {"on": True, "duration": f"PT{int(params.get('duration_s', 10))}S"}}
    if action == "wakeup":
        return {"wakeUp": {"action": "WakeUp"}}
    if action == "precond" and set(params) == {"immediate"}:
        return {"preconditioning": {"airConditioning": {"immediate": bool(params["immediate"])}}}
    if action == "charge" and set(params) == {"immediate"}:
        return {"charging": {"immediate": bool(params["immediate"])}}
    raise ConfigError(f"the demo app cannot send a {action} remote with {dict(params)}")


class _ApiRemotes:
    """Sends the scenario's remotes through the Web API, as the demo user's app."""

    def __init__(self, app: ApiClient, vin: str, callback_id: str) -> None:
        self.app, self.callback_id = app, callback_id
        self.vid = app.vehicle_id(vin)

    def __call__(self, remote: Remote) -> bytes:
        path = f"/user/vehicles/{self.vid}/callbacks/{self.callback_id}/remotes"
        body = {"label": remote.id, **_api_body(remote.action, remote.params)}
        made = self.app.post(path, body)
        return bytes.fromhex(str(made["remoteActionId"]))


def _read_remotes(
    app: ApiClient,
    receiver: WebhookReceiver,
    scenario: Scenario,
    record: RunRecord,
    callback_id: str,
) -> dict[str, Any]:
    """The remotes as the API and the webhook tell them, and the checks on them."""
    vid = app.vehicle_id(scenario.config.vin)
    path = f"/user/vehicles/{vid}/callbacks/{callback_id}/remotes"
    sent = {r.command_id: r for r in record.remotes}

    def done(got: list[Notification]) -> set[str]:
        return {
            str(n.body["remoteEvent"]["remoteActionId"])
            for n in got
            if n.body.get("remoteEvent", {}).get("eventStatus", {}).get("type") == "Done"
        }

    receiver.wait(lambda got: set(sent) <= done(got), timeout=20)
    rows = []
    for rid, run in sent.items():
        remote = app.get(f"{path}/{rid}")
        events = [
            n.body["remoteEvent"]["eventStatus"]
            for n in receiver.received
            if n.body.get("remoteEvent", {}).get("remoteActionId") == rid
        ]
        final: dict[str, Any] = next((e for e in events if e.get("type") == "Done"), {})
        outcome = run.outcome
        rows.append(
            {
                "id": run.id,
                "action": run.action,
                "status": remote.get("status"),
                "failureCause": remote.get("failureCause"),
                "statuses": [h["status"] for h in remote.get("history", [])],
                "notified": [e.get("status") for e in events],
                "signed": all(
                    n.signed
                    for n in receiver.received
                    if n.body.get("remoteEvent", {}).get("remoteActionId") == rid
                ),
                "agrees": outcome is not None
                and final.get("status") == remote.get("status") == outcome.status
                and final.get("failureCause") == remote.get("failureCause") == outcome.cause,
            }
        )
    checks = [
        _check(
            "api: every remote Done at the app as the car answered, signed",
            bool(rows) and all(r["agrees"] and r["signed"] for r in rows),
            ", ".join(
                f"{r['id']} {r['status']}"
                + (f" ({r['failureCause']})" if r["failureCause"] else "")
                for r in rows
            )
            or "none sent",
        )
    ]
    return {"remotes": rows, "remote_checks": checks}


def _subscribe(
    app: ApiClient, receiver: WebhookReceiver, scenario: Scenario
) -> tuple[dict[str, str], str]:
    """Sign the demo user in and watch the car: leaving home, and speeding. Monitor ids and
    the callback's id (the remotes go through it too)."""
    app.sign_in_user(**DEMO_LOGIN)
    vid = app.vehicle_id(scenario.config.vin)
    hook = {"webhook": {"name": "demo app", "target": receiver.url}}
    callback = app.post("/user/callbacks", {"label": "demo app", "callback": hook})
    receiver.secrets[callback["callbackId"]] = callback["secret"]
    lat, lon = scenario.route.points[0][:2]
    home = {
        "name": "away",
        "zone": {
            "transition": "Out",
            "place": {"radius": HOME_RADIUS_KM, "center": {"latitude": lat, "longitude": lon}},
        },
    }
    fast = {
        "name": "fast",
        "data": {
            "data": "vehicle.kinetic.speed",
            "op": "greaterThan",
            "value": [str(SPEEDING_KMH)],
        },
    }
    ids = {}
    for label, trigger in (("left home", home), (f"over {SPEEDING_KMH} km/h", fast)):
        body = {"label": label, "triggerParam": {"triggers": [trigger], "boolExp": trigger["name"]}}
        made = app.post(f"/user/vehicles/{vid}/callbacks/{callback['callbackId']}/monitors", body)
        ids[made["monitorId"]] = label
    return ids, str(callback["callbackId"])


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": passed, "detail": detail}


def _read_api(
    app: ApiClient, receiver: WebhookReceiver, scenario: Scenario, monitors: dict[str, str]
) -> dict[str, Any]:
    """What the app sees after the drive, and the checks on it."""
    vid = app.vehicle_id(scenario.config.vin)

    def fired(got: list[Notification]) -> set[str]:
        return {str(n.body.get("monitorEvent", {}).get("monitorId")) for n in got}

    receiver.wait(lambda got: set(monitors) <= fired(got), timeout=20)
    status = app.get(f"/user/vehicles/{vid}/status")
    trips = app.get(f"/user/vehicles/{vid}/trips")["_embedded"].get("trips", [])
    position = app.request("GET", f"/user/vehicles/{vid}/lastPosition")
    try:
        position_body = position.json()
    except ValueError:
        position_body = {}
    privacy = status.get("privacy", {}).get("state")
    notes: list[dict[str, Any]] = [
        {
            "monitor": monitors.get(str(n.body["monitorEvent"]["monitorId"]), "?"),
            "date": n.body.get("date"),
            "signed": n.signed,
        }
        for n in receiver.received
        if "monitorEvent" in n.body
    ]
    km = sum(float(t.get("distance") or 0) for t in trips)
    checks = [
        _check("api: one trip", len(trips) == 1, f"{len(trips)} trip(s), {km:.1f} km"),
        _check(
            "api: position withheld under Geolocation",
            privacy == "Geolocation"
            and position.status_code == 403
            and "lastPosition" not in status,
            f"privacy {privacy}, lastPosition HTTP {position.status_code}"
            f" {position_body.get('code', '')}",
        ),
        _check(
            "webhooks: each monitor notified once, signed",
            sorted(str(n["monitor"]) for n in notes) == sorted(monitors.values())
            and all(n["signed"] for n in notes),
            ", ".join(f"{n['monitor']} at {n['date']}" for n in notes) or "none",
        ),
    ]
    return {
        "base_url": app.http.base_url.__str__(),
        "vehicle_id": vid,
        "trips": len(trips),
        "trip_km": round(km, 1),
        "odometer_km": status.get("odometer", {}).get("mileage"),
        "ignition": status.get("ignition", {}).get("type"),
        "privacy": privacy,
        "last_position_status": position.status_code,
        "notifications": notes,
        "checks": checks,
    }


def _serve_until_interrupted(base_url: str) -> None:
    print(
        f"\nThe Web API keeps serving on {base_url}/connectedcar/v4 (docs at"
        f" {base_url}/connectedcar/v4/docs); Ctrl-C to stop.",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


def _summary(
    scenario: Scenario, record: RunRecord, broker_url: str, data_dir: Path, report: Path
) -> dict[str, Any]:
    vin = scenario.config.vin
    privacy_at = next(
        (a.at_ms for a in scenario.actions if a.kind == "privacy" and a.value != Privacy.NONE),
        None,
    )
    latitude = default_catalog().by_name(POSITION_SIGNALS[0]).id
    with SqliteStore(data_dir / "gateway.sqlite3") as store:
        positions = [t for _sid, t, _v in store.samples(vin, latitude)]
    c = record.counters
    changed = scenario.start_ms + privacy_at if privacy_at is not None else None
    return {
        "vin": vin,
        "model_year": scenario.config.model_year,
        "simulated_s": (record.end_ms - record.start_ms) / 1000,
        "wall_s": record.wall_s,
        "broker": broker_url,
        "frames_sent": c.get("frames_sent", 0),
        "frames_decoded": c.get("frames_decoded", 0),
        "frames_unchanged": c.get("frames_unchanged", 0),
        "decode_errors": c.get("decode_errors", 0),
        "samples": c.get("samples", 0),
        "samples_pending": c.get("samples_pending", 0),
        "dropped_by_privacy": c.get("dropped_by_privacy", 0),
        "stripped_by_privacy": c.get("stripped_by_privacy", 0),
        "uploads_by_trigger": dict(Counter(u.trigger for u in record.uploads)),
        "uploads": c.get("uploads", 0),
        "bytes_sent": c.get("bytes", 0),
        "boots": c.get("boots", 0),
        "queue_drained": bool(c.get("queue_drained", 0)),
        "stored_payloads": c.get("stored_payloads", 0),
        "stored_samples": c.get("stored_samples", 0),
        "privacy_geolocation_at_s": privacy_at / 1000 if privacy_at is not None else None,
        "positions_before_privacy": sum(changed is None or t < changed for t in positions),
        "positions_after_privacy": sum(
            changed is not None and t > changed + 1000 for t in positions
        ),
        "rejected": c.get("rejected", 0),
        "seq_gaps": c.get("seq_gaps", 0),
        "expectations": [
            {"name": e.name, "passed": e.passed, "detail": e.detail} for e in record.expectations
        ],
        "passed": record.passed,
        "report": str(report),
        "data_dir": str(data_dir),
    }


def _print_summary(s: dict[str, Any], record: RunRecord) -> None:
    faults = ", ".join(e.text for e in record.timeline if e.kind == "fault")
    rows = [
        ("vehicle", f"{s['vin']} (model year {s['model_year']})"),
        ("drive", f"{s['simulated_s'] / 60:.1f} simulated minutes in {s['wall_s']:.1f} s"),
        ("broker", s["broker"]),
        ("faults", faults or "none"),
        ("CAN frames sent", f"{s['frames_sent']:,}"),
        (
            "frames decoded",
            f"{s['frames_decoded']:,} ({s['frames_unchanged']:,} unchanged skipped, "
            f"{s['decode_errors']} errors)",
        ),
        (
            "samples collected",
            f"{s['samples']:,} ({s['samples_pending']} kept in flash for the next upload, "
            f"{s['dropped_by_privacy']} withdrawn when the driver turned location off)",
        ),
        (
            "uploads by trigger",
            ", ".join(f"{k} {v}" for k, v in sorted(s["uploads_by_trigger"].items())),
        ),
        ("uploads", f"{s['uploads']} ({s['bytes_sent']:,} bytes), {s['boots']} boots"),
        (
            "gateway rows stored",
            f"{s['stored_payloads']} payloads, {s['stored_samples']:,} samples",
        ),
        (
            "privacy",
            f"location off at {s['privacy_geolocation_at_s']:g} s: "
            f"{s['positions_before_privacy']} positions stored before, "
            f"{s['positions_after_privacy']} after",
        ),
        ("rejected / gaps", f"{s['rejected']} / {s['seq_gaps']}"),
        ("Web API", f"{s['api']['base_url']}/connectedcar/v4 (demo user, PKCE sign-in)"),
        (
            "API views",
            f"{s['api']['trips']} trip(s), {s['api']['trip_km']} km; odometer"
            f" {s['api']['odometer_km']} km; ignition {s['api']['ignition']}; privacy"
            f" {s['api']['privacy']}, lastPosition HTTP {s['api']['last_position_status']}",
        ),
        (
            "webhooks",
            ", ".join(
                f"{n['monitor']} at {n['date']}{'' if n['signed'] else ' (UNSIGNED)'}"
                for n in s["api"]["notifications"]
            )
            or "none",
        ),
        (
            "remote commands",
            "; ".join(
                f"{r['id']} ({r['action']}): {' > '.join(r['statuses'][1:])}"
                + (f" ({r['failureCause']})" if r["failureCause"] else "")
                for r in s["api"]["remotes"]
            )
            or "none",
        ),
        ("report", s["report"]),
    ]
    width = max(len(k) for k, _ in rows)
    print("tcusim demo summary")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print()
    for e in record.expectations:
        print(f"  {'PASS' if e.passed else 'FAIL'}  {e.name}: {e.detail}")
    for c in s["api"]["checks"]:
        print(f"  {'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['detail']}")
    print(f"\nInspect it: tcusim gateway status {s['vin']} --db {s['data_dir']}/gateway.sqlite3")
    print("More scenarios: tcusim scenario run scenarios/tunnel_offline.yaml --report run.html")
    print("The Web API on this data: tcusim demo --serve (docs/api.md shows the calls)")
