"""Real data for the Web API tests: simulated drives through Mosquitto into SQLite and PostgreSQL.

:func:`build_world` runs four scenarios into one gateway database, through a real broker
(Mosquitto where installed), and builds accounts around their vehicles:

- ``ev``: the electric highway drive with a charging stop (two trips), ``alice``'s;
- ``crash``: the crash at speed (a collision, an engine-fault alert), ``alice``'s;
- ``geo``: the privacy drive, ending in the ``Geolocation`` setting, ``alice``'s;
- ``tm``: the city commute, on a maintenance-only subscription (``telemaintenance``),
  ``alice``'s;
- ``ghost``: a vehicle of ``bob`` and of fleet ``fleet-b`` that never sent anything.

Fleet ``fleet-a`` holds ``ev``, ``crash``, ``geo`` and ``tm``. :func:`build_world_once`
builds the world once per backend per session; the test modules' ``world`` fixtures call it
for ``sqlite`` and ``postgresql``. Tests that change records use their own callbacks. Time
is simulated: the app's clock stands after every drive.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pg import pg_database

from firmware_sim.scenario.model import Scenario, load_scenario, parse_scenario
from firmware_sim.scenario.runner import run_scenario
from firmware_sim.scenario.yamlpos import load_yaml
from gateway.accounts import Accounts, load_accounts_text
from gateway.api.app import create_app
from gateway.auth import AuthServer
from gateway.broker import start_test_broker
from gateway.ratelimit import RateLimiter
from gateway.store import Store, open_store

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
API = "/connectedcar/v4"
BACKENDS = ("sqlite", "postgresql")

VINS = {
    "ev": "VR3UHZKXZMT200002",
    "crash": "VR3UHZKXZHT500005",
    "geo": "VR3UHZKXZKT400004",
    "tm": "VR3UHZKXZHT100001",
    "ghost": "VR3UHZKXZHT000042",
}
DATA_SCOPES = ("data:telemetry", "data:position", "data:trip", "data:alert", "data:collision")
NOW_MS = 1_782_864_000_000  # 2026-07-01T00:00:00Z: after every drive

ACCOUNTS = f"""\
format: tcusim-accounts/1
plans:
  - {{name: tiny, per_day: 5, per_second: 2}}
users:
  - {{id: alice, email: alice@example.test, password: alice-pw}}
  - {{id: bob, email: bob@example.test, password: bob-pw}}
fleets:
  - {{id: fleet-a, label: Fleet A, vehicles: [{VINS["ev"]}, {VINS["crash"]}, {VINS["geo"]},
      {VINS["tm"]}]}}
  - {{id: fleet-b, label: Fleet B, vehicles: [{VINS["ghost"]}]}}
clients:
  - {{client_id: app, secret: app-secret, kind: b2c, redirect_uris: [http://127.0.0.1/cb]}}
  - {{client_id: other-app, secret: other-secret, kind: b2c, redirect_uris: [http://127.0.0.1/cb]}}
  - {{client_id: tiny-app, secret: tiny-secret, kind: b2c, plan: tiny,
      redirect_uris: [http://127.0.0.1/cb]}}
  - {{client_id: fleet-a-app, secret: a-secret, kind: b2b, fleet: fleet-a}}
  - {{client_id: fleet-b-app, secret: b-secret, kind: b2b, fleet: fleet-b}}
vehicles:
  - {{vin: {VINS["ev"]}, brand: Peugeot, label: e-208, owner: alice}}
  - {{vin: {VINS["crash"]}, brand: Peugeot, label: "308", owner: alice}}
  - {{vin: {VINS["geo"]}, brand: Citroen, label: C4, owner: alice}}
  - {{vin: {VINS["tm"]}, brand: Opel, label: Corsa, owner: alice, services: [telemaintenance]}}
  - {{vin: {VINS["ghost"]}, brand: DS, label: DS 3, owner: bob}}
"""


class SimClock:
    """A settable clock in epoch milliseconds."""

    def __init__(self, now_ms: int = NOW_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        """Move time forward."""
        self.now_ms += ms


def geolocation_scenario() -> Scenario:
    """The privacy drive, ending with location sharing off (``Geolocation``)."""
    text = (SCENARIOS / "privacy_toggle_drive.yaml").read_text(encoding="utf-8")
    kept = [
        line
        for line in text.split("expect:")[0].splitlines()
        if "privacy: full" not in line and "privacy: none" not in line
    ]
    assert any("privacy: geolocation" in line for line in kept)
    text = "\n".join(kept) + "\nexpect:\n  - no_sample_lost: true\n"
    doc = load_yaml(text, "privacy_geolocation")
    return parse_scenario(doc, "privacy_geolocation", SCENARIOS)


def scenarios() -> dict[str, Scenario]:
    """The drives of the world, by name."""
    return {
        "ev": load_scenario(SCENARIOS / "ev_highway_charging_2021.yaml"),
        "crash": load_scenario(SCENARIOS / "crash.yaml"),
        "geo": geolocation_scenario(),
        "tm": load_scenario(SCENARIOS / "city_commute_diesel_2017.yaml"),
    }


@dataclass
class World:
    """A gateway database filled by real drives, its accounts and an app over them."""

    backend: str
    db: str
    store: Store
    accounts: Accounts
    clock: SimClock
    auth: AuthServer
    app: FastAPI
    client: TestClient
    scenarios: dict[str, Scenario]
    ids: dict[str, str] = field(default_factory=dict)

    def token(
        self,
        subject: str = "alice",
        scopes: tuple[str, ...] = DATA_SCOPES,
        *,
        kind: str = "user",
        client_id: str | None = None,
        ttl_s: int = 86_400,
        auth: AuthServer | None = None,
    ) -> str:
        """An access token (no OAuth flow)."""
        client = client_id or ("app" if kind == "user" else f"{subject}-app")
        issuer = auth or self.auth
        return issuer.issue_access_token(kind, subject, client, scopes, ttl_s=ttl_s)  # type: ignore[arg-type]

    def headers(self, token: str | None = None, **extra: str) -> dict[str, str]:
        """Request headers with a bearer token (alice's, all data scopes, by default)."""
        return {"Authorization": f"Bearer {token or self.token()}", **extra}

    def get(self, path: str, token: str | None = None, **kw: Any) -> Any:
        """GET ``API + path`` with a token."""
        headers = {**self.headers(token), **kw.pop("headers", {})}
        return self.client.get(f"{API}{path}", headers=headers, **kw)

    def user_path(self, name: str) -> str:
        """``/user/vehicles/<id>`` of a named vehicle."""
        return f"/user/vehicles/{self.ids[name]}"

    def fleet_path(self, name: str, fleet: str = "fleet-a") -> str:
        """``/fleets/<fid>/vehicles/<id>`` of a named vehicle."""
        return f"/fleets/{fleet}/vehicles/{self.ids[name]}"

    def make_app(
        self,
        *,
        clock: Callable[[], int] | None = None,
        limiter: RateLimiter | None = None,
        auth: AuthServer | None = None,
    ) -> FastAPI:
        """Another app over the same store (its own clock, limiter or token server)."""
        return create_app(
            self.store,
            self.accounts,
            auth or self.auth,
            clock_ms=clock or self.clock,
            limiter=limiter,
        )


def _fill(db: str, data_dir: Path, broker_url: str, drives: Mapping[str, Scenario]) -> None:
    for name, scenario in drives.items():
        # A drive that stops the broker needs a broker of its own (Mosquitto too).
        own = any(f.kind == "broker_outage" for f in scenario.faults)
        url = None if own else broker_url
        run_scenario(scenario, data_dir=data_dir / name, broker_url=url, db=db)


def build_world(backend: str, db: str, data_dir: Path, broker_url: str) -> World:
    """Run the drives into ``db`` and build the accounts and the app."""
    drives = scenarios()
    _fill(db, data_dir, broker_url, drives)
    store = open_store(db)
    accounts = load_accounts_text(ACCOUNTS, "test-accounts", iterations=1)
    clock = SimClock()
    auth = AuthServer(accounts, secrets.token_bytes(32), clock_ms=clock)
    app = create_app(store, accounts, auth, clock_ms=clock)
    world = World(
        backend=backend,
        db=db,
        store=store,
        accounts=accounts,
        clock=clock,
        auth=auth,
        app=app,
        client=TestClient(app),
        scenarios=drives,
    )
    for name, vin in VINS.items():
        vehicle = accounts.vehicle_by_vin(vin)
        assert vehicle is not None
        world.ids[name] = vehicle.id
    return world


_WORLDS: dict[str, World] = {}


def build_world_once(
    backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> World:
    """The world on ``backend``, built at the first call of the session.

    Each world has a broker of its own: the boxes leave retained presence messages behind,
    which a second gateway on a shared broker would take for the vehicles already known.
    """
    if backend not in _WORLDS:
        stack = contextlib.ExitStack()
        request.config.add_cleanup(stack.close)
        data_dir = tmp_path_factory.mktemp(f"world-{backend}")
        if backend == "sqlite":
            db = str(data_dir / "gateway.sqlite3")
        else:
            db = stack.enter_context(_pg())
        broker = start_test_broker(data_dir / "broker")
        try:
            built = build_world(backend, db, data_dir, broker.url)
        finally:
            broker.close()
        stack.callback(built.store.close)
        stack.callback(built.client.close)
        _WORLDS[backend] = built
    return _WORLDS[backend]


@contextlib.contextmanager
def _pg() -> Iterator[str]:
    with pg_database() as url:
        yield url
