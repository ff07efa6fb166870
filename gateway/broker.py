"""MQTT brokers the project starts itself: a Mosquitto process and an in-process amqtt broker.

Both listen on a free loopback port and share one small interface (:class:`Broker`):
``start()``, ``stop()``, ``restart()``, ``host``, ``port``, ``url`` and use as a context
manager. :class:`MosquittoBroker` is the reference: it is configured not to lose QoS 1
messages (see ``docs/broker.md``). :class:`EmbeddedBroker` needs nothing installed but keeps
its state in memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from amqtt.broker import Broker as AmqttBroker
from amqtt.plugins.base import BaseAuthPlugin

from gateway.errors import BrokerError

__all__ = [
    "Broker",
    "EmbeddedBroker",
    "MosquittoBroker",
    "MosquittoSettings",
    "OpenAuthPlugin",
    "broker_available",
    "find_mosquitto",
    "free_port",
    "start_test_broker",
]

LOOPBACK = "127.0.0.1"
_MOSQUITTO_DIRS = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin")
_PORT_ATTEMPTS = 5
_SHUTDOWN_TIMEOUT = 5.0
TEST_BROKER_ENV = "TCUSIM_TEST_BROKER"


class Broker(Protocol):
    """What the gateway, the demo and the tests need of a broker."""

    @property
    def host(self) -> str:
        """The address the broker listens on."""
        ...

    @property
    def port(self) -> int:
        """The TCP port the broker listens on."""
        ...

    @property
    def url(self) -> str:
        """``mqtt://host:port``."""
        ...

    def start(self) -> None:
        """Start the broker; return once it accepts connections."""
        ...

    def stop(self) -> None:
        """Stop the broker; return once it no longer runs."""
        ...

    def restart(self) -> None:
        """Stop and start again on the same port."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def find_mosquitto() -> str | None:
    """The path of the ``mosquitto`` binary (``PATH``, then the usual sbin folders), or ``None``."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for folder in _MOSQUITTO_DIRS:
        candidate = Path(folder) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def broker_available() -> str:
    """Which broker :func:`start_test_broker` starts here: ``"mosquitto"`` or ``"embedded"``.

    Mosquitto when its binary exists, unless ``TCUSIM_TEST_BROKER=embedded`` asks for the
    embedded one (to run the tests as a machine without Mosquitto would).
    """
    if os.environ.get(TEST_BROKER_ENV, "").strip().lower() == "embedded":
        return "embedded"
    return "mosquitto" if find_mosquitto() else "embedded"


def start_test_broker(data_dir: str | Path | None = None) -> MosquittoBroker | EmbeddedBroker:
    """A started broker, the one :func:`broker_available` names."""
    broker: MosquittoBroker | EmbeddedBroker
    if broker_available() == "mosquitto":
        broker = MosquittoBroker(data_dir=data_dir)
    else:
        broker = EmbeddedBroker()
    broker.start()
    return broker


def _port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class MosquittoSettings:
    """The options written into the generated ``mosquitto.conf``.

    ``max_queued_messages = 0`` (no limit) is what keeps a slow or absent persistent
    subscriber from losing QoS 1 messages; ``autosave_interval`` bounds what a broker crash
    (SIGKILL, power loss) can lose, since Mosquitto saves its database only then and on exit.
    """

    max_queued_messages: int = 0
    max_inflight_messages: int = 100
    autosave_interval: int = 1
    autosave_on_changes: bool = False
    persistent_client_expiration: str | None = None
    certfile: str | None = None  # with keyfile: the listener speaks TLS only
    keyfile: str | None = None
    password_file: str | None = None  # given: no anonymous clients (mosquitto_passwd format)
    tcp_nodelay: bool = True  # no Nagle delay on small messages (commands, acknowledgements)

    def __post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise BrokerError("certfile and keyfile go together")


class MosquittoBroker:
    """A ``mosquitto`` process on a loopback port with a generated configuration.

    The configuration, the persistence database (``mosquitto.db``) and the log
    (``mosquitto.log``) live in ``data_dir`` (a temporary folder when not given, removed when
    the context manager exits). :meth:`restart` reuses the same port and data, so persistent
    sessions and their queued messages survive it.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | Path | None = None,
        *,
        binary: str | None = None,
        settings: MosquittoSettings | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self._binary = binary or find_mosquitto()
        self._port: int | None = port
        self._owns_dir = data_dir is None
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self.settings = settings or MosquittoSettings()
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """The loopback address the broker listens on."""
        return LOOPBACK

    @property
    def port(self) -> int:
        """The port the broker listens on (chosen by :meth:`start` when not given)."""
        if self._port is None:
            raise BrokerError("the broker has no port yet: start it first")
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT`` (``mqtts://`` when the listener speaks TLS)."""
        scheme = "mqtts" if self.settings.certfile else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        """The folder of the configuration, the persistence database and the log."""
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="tcusim-mosquitto-"))
        self._data_dir.mkdir(parents=True, exist_ok=True)
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """Mosquitto's log file."""
        return self.data_dir / "mosquitto.log"

    @property
    def running(self) -> bool:
        """Whether the process runs."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    def config_text(self, port: int) -> str:
        """The generated ``mosquitto.conf`` for ``port``."""
        s = self.settings
        lines = [
            "# generated by tcusim (gateway.broker.MosquittoBroker)",
            f"listener {port} {LOOPBACK}",
            *([f"certfile {s.certfile}", f"keyfile {s.keyfile}"] if s.certfile else []),
            *(
                [f"password_file {s.password_file}", "allow_anonymous false"]
                if s.password_file
                else ["allow_anonymous true"]
            ),
            f"max_queued_messages {s.max_queued_messages}",
            f"max_inflight_messages {s.max_inflight_messages}",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            f"autosave_interval {s.autosave_interval}",
            f"autosave_on_changes {'true' if s.autosave_on_changes else 'false'}",
            f"set_tcp_nodelay {'true' if s.tcp_nodelay else 'false'}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if s.persistent_client_expiration:
            lines.append(f"persistent_client_expiration {s.persistent_client_expiration}")
        if os.geteuid() == 0:
            # Run as root, mosquitto would switch to the "mosquitto" user, who cannot
            # write to our data folder: keep the current user instead.
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        return "\n".join(lines) + "\n"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the broker's log and of its standard error."""
        parts = []
        for path in (self.log_path, self.data_dir / "stderr.log"):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if text.strip():
                parts.extend(text.strip().splitlines()[-lines:])
        return "\n".join(parts)

    def start(self) -> None:
        """Start Mosquitto and wait (bounded) until its port accepts connections."""
        if self.running:
            return
        if self._binary is None:
            raise BrokerError("mosquitto is not installed (not on PATH nor in /usr/sbin)")
        attempts = 1 if self._port is not None else _PORT_ATTEMPTS
        for attempt in range(attempts):
            port = self._port if self._port is not None else free_port()
            if self._launch(port):
                self._port = port
                return
            if attempt + 1 < attempts and "in use" in self.log_tail(5):
                continue
            break
        raise BrokerError(f"mosquitto did not start on port {port}:\n{self.log_tail()}")

    def _log_says_running(self, offset: int) -> bool:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return b" running" in f.read()
        except OSError:
            return False

    def _launch(self, port: int) -> bool:
        conf = self.data_dir / "mosquitto.conf"
        conf.write_text(self.config_text(port), encoding="utf-8")
        # Ready means: this process logged "mosquitto version ... running" and the port
        # answers (the port alone could be someone else's listener).
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with (self.data_dir / "stderr.log").open("wb") as err:
            try:
                self._proc = subprocess.Popen(
                    [str(self._binary), "-c", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=subprocess.STDOUT,
                )
            except OSError as exc:
                raise BrokerError(f"cannot run {self._binary}: {exc}") from exc
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if self._log_says_running(log_offset) and _port_open(LOOPBACK, port):
                return True
            time.sleep(0.02)
        self._terminate(signal.SIGKILL)
        raise BrokerError(
            f"mosquitto did not accept connections on port {port} within "
            f"{self.startup_timeout:g} s:\n{self.log_tail()}"
        )

    def _terminate(self, sig: signal.Signals, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BrokerError(
                f"mosquitto did not stop within {timeout:g} s and was killed:\n{self.log_tail()}"
            ) from None

    def stop(self) -> None:
        """Stop with SIGTERM and wait, so Mosquitto writes its persistence database."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """Stop with SIGKILL, as a crash would: what was not autosaved is lost."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> None:
        """Stop (SIGTERM) and start again on the same port with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop, and remove the data folder when it is a temporary one."""
        self.stop()
        if self._owns_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MosquittoBroker {state} port={self._port} data_dir={self._data_dir}>"


class OpenAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """An amqtt authentication plugin that lets every client in *without* marking it anonymous.

    amqtt's own ``AnonymousAuthPlugin`` flags sessions as anonymous, and amqtt neither keeps
    an anonymous client's session nor queues QoS 1 messages for it while it is offline:
    with this plugin a persistent session behaves as MQTT says it must.
    """

    watcher: Callable[[str, bool], None] | None = None

    async def authenticate(self, *, session: Any) -> bool:
        """Accept every client."""
        return True

    async def on_broker_client_connected(self, *, client_id: str, client_session: Any) -> None:
        """Tell the watcher a client connected."""
        if self.watcher is not None:
            self.watcher(client_id, True)

    async def on_broker_client_disconnected(self, *, client_id: str, client_session: Any) -> None:
        """Tell the watcher a client's disconnection is complete."""
        if self.watcher is not None:
            self.watcher(client_id, False)


class EmbeddedBroker:
    """amqtt's broker in a background thread with its own event loop, on a free loopback port.

    Supports QoS 0/1/2, retained messages, last wills and persistent sessions (queued
    messages for an offline ``clean_session=False`` client) while it runs. It keeps nothing
    on disk: :meth:`restart` starts with no sessions and no retained messages.
    """

    def __init__(self, port: int | None = None, *, startup_timeout: float = 10.0) -> None:
        self._port: int | None = port
        self.startup_timeout = startup_timeout
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._clients: set[str] = set()
        self._clients_changed = threading.Condition()

    @property
    def host(self) -> str:
        """The loopback address the broker listens on."""
        return LOOPBACK

    @property
    def port(self) -> int:
        """The port the broker listens on (chosen by :meth:`start` when not given)."""
        if self._port is None:
            raise BrokerError("the broker has no port yet: start it first")
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _config(self, port: int) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{port}"}},
            "plugins": {f"{__name__}.OpenAuthPlugin": {}},
        }

    async def _serve(self, port: int) -> None:
        self._stop_event = asyncio.Event()
        # A namespace of its own, so that two embedded brokers in one process stay apart.
        broker = AmqttBroker(self._config(port), plugin_namespace=f"tcusim.embedded.{id(self)}")
        try:
            await broker.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        try:
            plugin = broker.plugins_manager.get_plugin(OpenAuthPlugin.__name__)
            if plugin is not None:
                plugin.watcher = self._client_event
            server = broker._servers["default"].instance
            self._port = int(server.sockets[0].getsockname()[1])
            self._ready.set()
            await self._stop_event.wait()
        finally:
            await self._shutdown(broker, server)

    @staticmethod
    async def _shutdown(broker: Any, server: asyncio.Server) -> None:
        # Close the sockets first, as a broker process exiting would. amqtt's own shutdown
        # can otherwise wait for a client's keepalive: a reader task may miss its
        # cancellation (asyncio.wait_for in Python 3.11), so shutdown() is also bounded.
        server.close()
        for _session, handler in list(broker.sessions.values()):
            stream = getattr(getattr(handler, "writer", None), "_writer", None)
            transport = getattr(stream, "transport", None)
            if transport is not None:
                transport.abort()
        task = asyncio.ensure_future(broker.shutdown())
        done, _ = await asyncio.wait({task}, timeout=_SHUTDOWN_TIMEOUT)
        if task in done:
            with contextlib.suppress(Exception):
                task.result()
        current = asyncio.current_task()
        leftovers = [t for t in asyncio.all_tasks() if t is not current]
        for leftover in leftovers:
            leftover.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=_SHUTDOWN_TIMEOUT)

    def _client_event(self, client_id: str, connected: bool) -> None:
        with self._clients_changed:
            if connected:
                self._clients.add(client_id)
            else:
                self._clients.discard(client_id)
            self._clients_changed.notify_all()

    @property
    def connected_clients(self) -> frozenset[str]:
        """The ids of the clients connected now."""
        with self._clients_changed:
            return frozenset(self._clients)

    def wait_client(self, client_id: str, connected: bool, timeout: float = 10.0) -> bool:
        """Wait until the client's connection (or disconnection) is complete; ``False`` on timeout.

        amqtt drops the QoS 1 messages in flight to a persistent client while it processes
        that client's disconnection; waiting here before publishing avoids that window.
        """
        with self._clients_changed:
            return self._clients_changed.wait_for(
                lambda: (client_id in self._clients) == connected, timeout
            )

    def _run(self, port: int) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(port))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self) -> None:
        """Start the broker thread; return once the port accepts connections."""
        if self.running:
            return
        self._ready.clear()
        self._error = None
        port = self._port if self._port is not None else 0
        self._thread = threading.Thread(
            target=self._run, args=(port,), name="tcusim-embedded-broker", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(self.startup_timeout):
            raise BrokerError(
                f"the embedded broker did not start within {self.startup_timeout:g} s"
            )
        if self._error is not None:
            self._thread.join(5)
            self._thread = None
            raise BrokerError(f"the embedded broker did not start: {self._error}") from self._error

    def stop(self) -> None:
        """Stop the broker and join its thread."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(15)
        self._thread = None
        if thread.is_alive():
            raise BrokerError("the embedded broker did not stop within 15 s")

    def restart(self) -> None:
        """Stop and start again on the same port (with no state: nothing is persisted)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """The same as :meth:`stop`."""
        self.stop()

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

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedBroker {state} port={self._port}>"
