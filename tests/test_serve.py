"""``tcusim gateway serve`` end to end: a drive through Mosquitto, served by the Web API.

The service runs as its own process (ingest, API, monitors, webhooks) on SQLite and on
PostgreSQL. An app signs the demo user in (authorization code with PKCE), subscribes a
webhook and a monitor, a car drives a scenario through the same broker, and the app reads
the car's status and trips and receives the monitor's signed notification.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import PahoClient
from pg import pg_database
from test_remote_service import BoxPeer
from test_store import VINS, uplink
from waiting import wait_for

from firmware_sim.cli import remote as remote_cli
from firmware_sim.cli.gateway import remote_secret_file
from firmware_sim.downlink import Command
from firmware_sim.scenario.model import load_scenario
from firmware_sim.scenario.runner import run_scenario
from gateway.accounts import DEMO_FLEET, DEMO_USER, default_accounts
from gateway.apiclient import WebhookReceiver
from gateway.errors import OptionError
from gateway.service import GatewayService, load_or_create_secret
from gateway.store import DEFAULT_DB_PATH, SqliteStore
from gateway.webhooks import SIGNATURE_HEADER, verify

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "ev_highway_charging_2021.yaml"
VIN = "VR3UHZKXZMT200002"
REDIRECT = "http://127.0.0.1:8765/callback"
API = "/connectedcar/v4"


class Receiver:
    """A webhook receiver on a free port that keeps what it is sent and answers 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append((dict(self.headers.items()), self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'serve' / 'gateway.sqlite3'}"
    else:
        with pg_database() as url:
            yield url


def _serve(
    db: str, broker_url: str, tmp_path: Path, *options: str
) -> tuple[subprocess.Popen[str], str, str]:
    """``tcusim gateway serve`` in ``tmp_path`` (its working directory), its base URL and
    the line it started with."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "firmware_sim",
            "gateway",
            "serve",
            "--broker",
            broker_url,
            "--db",
            db,
            "--http",
            "127.0.0.1:0",
            "--client-id",
            f"serve-{secrets.token_hex(3)}",
            "--secret-file",
            str(tmp_path / "token.secret"),
            *options,
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    found = re.search(r"Web API on (http://\S+?)/connectedcar/v4", line)
    if found is None:
        proc.kill()
        pytest.fail(f"serve did not start: {line}{proc.stderr.read()}")
    return proc, found.group(1), line


def _user_token(http: httpx.Client) -> str:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    answer = http.get(
        "/oauth2/authorize",
        params={
            "response_type": "code",
            "client_id": "demo-app",
            "redirect_uri": REDIRECT,
            "scope": "data:telemetry data:position data:trip",
            "state": "xyz",
            "code_challenge": challenge.decode(),
            "code_challenge_method": "S256",
        },
        auth=("demo@tcusim.local", "tcusim-demo"),
    )
    assert answer.status_code == 302, answer.text
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    assert query["state"] == ["xyz"]
    token = http.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
        auth=("demo-app", "demo-app-secret"),
    )
    assert token.status_code == 200, token.text
    access: str = token.json()["access_token"]
    return access


@pytest.mark.slow
def test_serve_ingests_serves_and_notifies(
    db: str, broker: Any, receiver: Receiver, tmp_path: Path
) -> None:
    proc, base, _line = _serve(db, broker.url, tmp_path)
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            token = _user_token(http)
            auth = {"Authorization": f"Bearer {token}"}
            vehicles = http.get(f"{API}/user/vehicles", headers=auth).json()
            (vid,) = [v["id"] for v in vehicles["_embedded"]["vehicles"] if v["vin"] == VIN]
            hook = {"webhook": {"name": "app", "target": receiver.url}}
            created = http.post(
                f"{API}/user/callbacks", headers=auth, json={"label": "app", "callback": hook}
            )
            assert created.status_code == 202, created.text
            cbid, secret = created.json()["callbackId"], created.json()["secret"]
            fast = {
                "label": "motorway speed",
                "triggerParam": {
                    "triggers": [
                        {
                            "name": "fast",
                            "data": {
                                "data": "vehicle.kinetic.speed",
                                "op": "greaterThan",
                                "value": ["100"],
                            },
                        }
                    ],
                    "boolExp": "fast",
                },
            }
            monitor = http.post(
                f"{API}/user/vehicles/{vid}/callbacks/{cbid}/monitors", headers=auth, json=fast
            )
            assert monitor.status_code == 202, monitor.text
            mid = monitor.json()["monitorId"]

            record = run_scenario(
                load_scenario(SCENARIO), data_dir=tmp_path / "drive", broker_url=broker.url
            )
            assert record.passed, [e for e in record.expectations if not e.passed]
            uploads = record.counters["stored_payloads"]

            def all_stored() -> bool:
                status = http.get(f"{API}/user/vehicles/{vid}/status", headers=auth)
                trips = http.get(f"{API}/user/vehicles/{vid}/trips", headers=auth)
                return (
                    status.status_code == 200
                    and trips.status_code == 200
                    and trips.json()["total"] == 2
                    and trips.json()["_embedded"]["trips"][-1].get("stoppedAt") is not None
                )

            assert wait_for(all_stored, timeout=60), "the service did not store the drive"
            status = http.get(f"{API}/user/vehicles/{vid}/status", headers=auth).json()
            assert status["odometer"]["mileage"] > 0
            assert status["lastPosition"]["type"] == "Feature"
            assert wait_for(lambda: receiver.received, timeout=30), "no notification arrived"
            headers, body = receiver.received[0]
            assert verify(secret, body, headers[SIGNATURE_HEADER])
            event = json.loads(body)
            assert event["callbackId"] == cbid and event["type"] == "Monitor"
            assert event["monitorEvent"]["monitorId"] == mid
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert uploads > 100


def test_a_new_vehicle_is_enrolled_for_the_demo_accounts(tmp_path: Path) -> None:
    """With the demo accounts, a VIN the database sees becomes the demo user's and fleet's."""
    db = tmp_path / "gateway.sqlite3"
    service = GatewayService(db, secret=b"s" * 32, http_port=0)
    try:
        assert service.accounts.vehicle_by_vin(VINS[0]) is None
        with SqliteStore(db) as store:
            assert store.ingest(VINS[0], uplink(VINS[0]), 1).ok
        assert service.enrol_new_vehicles() == [VINS[0]]
        assert service.enrol_new_vehicles() == []
        vehicle = service.accounts.vehicle_by_vin(VINS[0])
        assert vehicle is not None and vehicle.owner == DEMO_USER
        assert service.app.state.accounts is service.accounts is service.auth.accounts
        assert [v.vin for v in service.accounts.vehicles_of_fleet(DEMO_FLEET)].count(VINS[0]) == 1
    finally:
        service.stop()


def test_bad_options_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="HTTP port"):
        GatewayService(tmp_path / "g.sqlite3", secret=b"s" * 32, http_port=70000)
    bad = tmp_path / "bad.secret"
    bad.write_text("not hex\n")
    with pytest.raises(OptionError, match="hexadecimal"):
        load_or_create_secret(bad)
    made = load_or_create_secret(tmp_path / "new" / "token.secret")
    assert len(made) == 32 and load_or_create_secret(tmp_path / "new" / "token.secret") == made
    assert (tmp_path / "new" / "token.secret").stat().st_mode & 0o077 == 0
    result = subprocess.run(
        [sys.executable, "-m", "firmware_sim", "gateway", "serve", "--share", "g"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "need --broker" in result.stderr


def _fleet_api(base: str) -> httpx.Client:
    """The demo fleet's app (client credentials), calling the API."""
    with httpx.Client(base_url=base, timeout=10) as http:
        token = http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=("demo-fleet-app", "demo-fleet-secret"),
        )
    assert token.status_code == 200, token.text
    assert "remote:immobilization:write" in token.json()["scope"].split()
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    return httpx.Client(base_url=f"{base}{API}", headers=headers, timeout=10)


def _fleet_callback(api: httpx.Client, receiver: WebhookReceiver) -> str:
    hook = {"webhook": {"name": "fleet", "target": receiver.url}}
    created = api.post(f"/fleets/{DEMO_FLEET}/remote/callbacks", json={"callback": hook})
    assert created.status_code == 202, created.text
    cbid = str(created.json()["callbackId"])
    receiver.secrets[cbid] = created.json()["secret"]
    return cbid


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.mark.slow
def test_serve_sends_remote_commands(
    db: str,
    broker: Any,
    mqtt_client: Callable[..., PahoClient],
    unique_id: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """A fleet immobilizes a vehicle: the box gets a command signed with the key derived
    from the secret serve made (default place, mode 0600), and its statuses come back."""
    proc, base, line = _serve(db, broker.url, tmp_path)
    beside_db = db.startswith("sqlite")
    secret_file = (tmp_path / "serve" if beside_db else tmp_path / "tcusim-data") / "remote.secret"
    try:
        assert secret_file.stat().st_mode & 0o077 == 0
        master = bytes.fromhex(secret_file.read_text().strip())
        box = BoxPeer(mqtt_client(broker, unique_id("box")), VIN, master, tmp_path / "n", _wall_ms)
        vehicle = default_accounts().vehicle_by_vin(VIN)
        assert vehicle is not None
        with WebhookReceiver() as receiver, _fleet_api(base) as api:
            cbid = _fleet_callback(api, receiver)
            path = f"/fleets/{DEMO_FLEET}/vehicles/{vehicle.id}/callbacks/{cbid}/remotes"
            answer = api.post(path, json={"immobilization": {"activate": True}})
            assert answer.status_code == 202, answer.text
            rid = answer.json()["remoteActionId"]
            _raw, command = box.take()
            assert isinstance(command, Command), command
            assert command.command_id.hex() == rid
            assert (command.action, dict(command.params)) == ("immobilize", {"activate": True})
            box.report(command, "Accepted", "Success")

            def succeeded() -> bool:
                return bool(api.get(f"{path}/{rid}").json()["status"] == "Success")

            assert wait_for(succeeded), api.get(f"{path}/{rid}").text
            history = api.get(f"{path}/{rid}").json()["history"]
            assert [h["status"] for h in history] == ["Accepted", "Accepted", "Success"]
            assert receiver.wait(lambda got: len(got) == 2, 30), receiver.received
            assert all(n.signed for n in receiver.received)
            assert [n.body["remoteEvent"]["eventStatus"]["type"] for n in receiver.received] == [
                "Pending",
                "Done",
            ]
        box.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert re.search(r"remote commands keyed by \S*remote\.secret ", line), line
    assert master.hex() not in line + err


def test_serve_without_remotes_answers_503(broker: Any, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'serve' / 'gateway.sqlite3'}"
    proc, base, line = _serve(db, broker.url, tmp_path, "--no-remotes")
    try:
        vehicle = default_accounts().vehicle_by_vin(VIN)
        assert vehicle is not None
        with WebhookReceiver() as receiver, _fleet_api(base) as api:
            cbid = _fleet_callback(api, receiver)
            path = f"/fleets/{DEMO_FLEET}/vehicles/{vehicle.id}/callbacks/{cbid}/remotes"
            answer = api.post(path, json={"stolen": {"stolen": True}})
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == 50301
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not (tmp_path / "serve" / "remote.secret").exists()
    assert "remote commands" not in line


def test_the_remote_secret_defaults_agree_with_tcusim_remote() -> None:
    assert remote_secret_file(str(DEFAULT_DB_PATH)) == remote_cli.DEFAULT_SECRET_FILE
    assert remote_secret_file("postgresql://u@h/db") == remote_cli.DEFAULT_SECRET_FILE
    assert remote_secret_file("sqlite:////srv/g/gw.sqlite3") == Path("/srv/g/remote.secret")
    assert remote_secret_file("data/gw.sqlite3") == Path("data/remote.secret")
