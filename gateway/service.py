"""The gateway as one service: ingest, the Web API, monitors and webhook delivery together.

:class:`GatewayService` runs, each in its own thread and with its own database connection:

* the ingest (:class:`~gateway.ingest.GatewayThread`) when a broker is given; several
  services can share the broker's load with ``share_group`` (MQTT 5 shared subscriptions);
* the Web API (:func:`gateway.api.app.create_app`) under uvicorn on ``http_host:http_port``
  (port 0: a free one, see :attr:`GatewayService.base_url`);
* the monitor engine (:class:`~gateway.monitors.MonitorEngine`), which turns new uploads
  into notifications, and the webhook sender (:class:`~gateway.webhooks.WebhookSender`);
* with a broker and a remote master secret, the remote commands: a
  :class:`~gateway.remotes.RemoteDispatcher` the API sends them with, and a
  :class:`~gateway.remotes.RemoteStatusListener` that follows what the boxes report;
* with the built-in demo accounts, the enrolment of every new VIN the database sees as a
  vehicle of the demo user and the demo fleet (an accounts file lists its vehicles itself).

Tokens are signed with a secret every process of one deployment shares, and the vehicles'
command keys derive from another (``remote.secret``): :func:`load_or_create_secret` keeps
each in a file readable by its owner only.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn

from gateway.accounts import DEMO_FLEET, DEMO_USER, Accounts, default_accounts
from gateway.api.app import create_app
from gateway.auth import AuthServer
from gateway.errors import GatewayError, OptionError
from gateway.ingest import CLIENT_ID, GatewayThread
from gateway.monitors import MonitorEngine
from gateway.ratelimit import RateLimiter
from gateway.remotes import RemoteDispatcher, RemoteStatusListener
from gateway.store import Store, open_store
from gateway.webhooks import WebhookSender

__all__ = ["GatewayService", "load_or_create_secret"]

log = logging.getLogger(__name__)

SECRET_BYTES = 32


def load_or_create_secret(path: str | Path, what: str = "token secret") -> bytes:
    """The secret in ``path`` (hex), made (mode 0600) when the file is absent.

    ``what`` names the secret in the errors (``"remote master secret"``...); they never
    show its value.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        file.parent.mkdir(parents=True, exist_ok=True)
        text = secrets.token_hex(SECRET_BYTES)
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return load_or_create_secret(file, what)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(text + "\n")
        return bytes.fromhex(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"{file}: cannot read the {what}: {exc}") from exc
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise OptionError(f"{file}: the {what} must be hexadecimal") from None
    if len(secret) < 16:
        raise OptionError(f"{file}: the {what} must be at least 16 bytes")
    return secret


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class GatewayService:
    """Ingest (with a broker), Web API, monitors and webhooks over one database.

    ``accounts=None`` uses the demo accounts and enrols each new VIN as the demo user's and
    the demo fleet's. ``ingest_options`` go to :class:`~gateway.ingest.Gateway` (e.g.
    ``share_group``, ``client_id``, ``tls_ca``). Use as a context manager, or
    :meth:`start` and :meth:`stop`.

    With a broker and ``remote_secret`` (the master secret the vehicles' command keys derive
    from) the service sends remote commands: :attr:`remotes` (the API's dispatcher) and
    :attr:`remote_status` (the status listener, whose persistent MQTT session is
    ``remote_client_id``, by default the ingest's client id and ``-remotes``; it shares the
    statuses with the ingest's ``share_group``). Otherwise both are ``None`` and the API
    answers 503 to a remote. ``ingest=False`` leaves the uploads to another process (the
    broker then serves the remote commands only).
    """

    def __init__(
        self,
        db: str | Path,
        *,
        secret: bytes,
        broker: str | None = None,
        accounts: Accounts | None = None,
        http_host: str = "127.0.0.1",
        http_port: int = 8080,
        base_url: str | None = None,
        monitor_interval_s: float = 1.0,
        webhook_interval_s: float = 1.0,
        clock_ms: Callable[[], int] = _wall_ms,
        remote_secret: bytes | None = None,
        remote_client_id: str | None = None,
        ingest: bool = True,
        **ingest_options: Any,
    ) -> None:
        if not 0 <= http_port <= 65535:
            raise OptionError(f"the HTTP port must be 0 to 65535, not {http_port}")
        for name, value in (("monitor", monitor_interval_s), ("webhook", webhook_interval_s)):
            if not value > 0:
                raise OptionError(f"the {name} interval must be positive, not {value}")
        self.db = str(db)
        self.broker = broker
        self.http_host, self.http_port = http_host, http_port
        self.monitor_interval_s = monitor_interval_s
        self.webhook_interval_s = webhook_interval_s
        self.clock_ms = clock_ms
        self._enrol = accounts is None
        self._api_store = open_store(self.db)
        seen = [v.vin for v in self._api_store.vehicles()] if accounts is None else []
        self.accounts = accounts if accounts is not None else default_accounts(seen)
        self.auth = AuthServer(self.accounts, secret, clock_ms=clock_ms)
        self.app = create_app(
            self._api_store,
            self.accounts,
            self.auth,
            clock_ms=clock_ms,
            limiter=RateLimiter(clock_ms),
            base_url=base_url,
        )
        self.ingest = (
            GatewayThread(self.db, broker, **ingest_options) if broker and ingest else None
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stores: list[Store] = [self._api_store]
        self._server: uvicorn.Server | None = None
        self.monitors: MonitorEngine | None = None
        self.webhooks: WebhookSender | None = None
        self.remotes: RemoteDispatcher | None = None
        self.remote_status: RemoteStatusListener | None = None
        self._remotes_started = False
        if broker and remote_secret is not None:
            self._make_remotes(broker, remote_secret, remote_client_id, ingest_options)

    def _make_remotes(
        self,
        broker: str,
        secret: bytes,
        client_id: str | None,
        ingest_options: dict[str, Any],
    ) -> None:
        """The dispatcher (the API's ``app.state.remotes``) and the status listener."""
        ca, cert, key = (ingest_options.get(k) for k in ("tls_ca", "tls_cert", "tls_key"))
        session = client_id or f"{ingest_options.get('client_id', CLIENT_ID)}-remotes"
        self.remotes = RemoteDispatcher(
            self._api_store,
            broker,
            secret,
            clock_ms=self.clock_ms,
            client_id=f"{session}-send-{secrets.token_hex(3)}",
            tls_ca=ca,
            tls_cert=cert,
            tls_key=key,
        )
        self.remote_status = RemoteStatusListener(
            self._store(),
            broker,
            clock_ms=self.clock_ms,
            client_id=session,
            tls_ca=ca,
            tls_cert=cert,
            tls_key=key,
            share_group=ingest_options.get("share_group"),
        )
        self.app.state.remotes = self.remotes

    def __repr__(self) -> str:
        return f"<GatewayService db={self.db!r} http={self.http_host}:{self.http_port}>"

    @property
    def base_url(self) -> str:
        """``http://host:port`` the API answers on (the real port once started)."""
        return f"http://{self.http_host}:{self.http_port}"

    def _store(self) -> Store:
        store = open_store(self.db)
        self._stores.append(store)
        return store

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"tcusim-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def start(self, timeout: float = 15.0) -> None:
        """Start every part; raise :class:`GatewayError` when one does not come up in time."""
        if self.ingest is not None:
            self.ingest.start(connect_timeout=timeout)
        if self.remotes is not None and self.remote_status is not None:
            self._remotes_started = True
            try:
                self.remote_status.start(timeout)
                self.remotes.start(timeout)
            except GatewayError:
                self.stop()
                raise
        config = uvicorn.Config(
            self.app,
            host=self.http_host,
            port=self.http_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        server = uvicorn.Server(config)
        self._server = server
        self._spawn("api", server.run)
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._threads[-1].is_alive() or time.monotonic() > deadline:
                self.stop()
                raise GatewayError(
                    f"the Web API did not start on {self.http_host}:{self.http_port}"
                )
            time.sleep(0.01)
        self.http_port = int(server.servers[0].sockets[0].getsockname()[1])
        self.monitors = MonitorEngine(self._store(), clock_ms=self.clock_ms)
        self.webhooks = WebhookSender(self._store(), clock_ms=self.clock_ms)
        monitors, webhooks = self.monitors, self.webhooks
        if self.remote_status is not None:
            self.remote_status.on_notified = webhooks.wake  # deliver remote events at once
        self._spawn(
            "monitors", lambda: monitors.run(self._stop, self.monitor_interval_s, webhooks.wake)
        )
        self._spawn("webhooks", lambda: webhooks.run(self._stop, self.webhook_interval_s))
        if self._enrol:
            store = self._store()
            self._spawn("enrol", lambda: self._enrol_loop(store))
        log.info("gateway service on %s (database %s)", self.base_url, self._api_store)

    def enrol_new_vehicles(self, store: Store | None = None) -> list[str]:
        """Give each VIN the database knows and the accounts lack to the demo user and fleet."""
        known = store if store is not None else self._api_store
        new = [v.vin for v in known.vehicles() if self.accounts.vehicle_by_vin(v.vin) is None]
        if not new:
            return []
        accounts = self.accounts
        for vin in new:
            accounts = accounts.with_vehicle(vin, owner=DEMO_USER, fleet=DEMO_FLEET)
        self.accounts = accounts
        self.auth.accounts = accounts
        self.app.state.accounts = accounts
        log.info("enrolled %d new vehicle(s) for the demo accounts", len(new))
        return new

    def _enrol_loop(self, store: Store) -> None:
        while not self._stop.is_set():
            try:
                self.enrol_new_vehicles(store)
            except GatewayError as exc:
                log.warning("vehicle enrolment failed: %s", exc)
            self._stop.wait(self.monitor_interval_s)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every part and close the database connections.

        The API stops first (no new remote), then the dispatcher, then the status listener
        (which applies what it already took).
        """
        self._stop.set()
        if self.webhooks is not None:
            self.webhooks.wake()  # out of its wait at once
        if self._server is not None:
            self._server.should_exit = True
        if self.ingest is not None:
            self.ingest.stop(timeout)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        if self._remotes_started and self.remotes is not None and self.remote_status is not None:
            self._remotes_started = False
            self.remotes.stop()
            self.remote_status.stop(timeout)
        if self.webhooks is not None:
            self.webhooks.close()
        for store in self._stores:
            store.close()
        self._stores.clear()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
