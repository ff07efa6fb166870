"""The ingest: from the broker's ``tcusim/v1/+/up`` and ``+/presence`` topics into the store.

:class:`Gateway` is an asyncio task (aiomqtt). It connects with a persistent session (MQTT
3.1.1, ``clean_session=False``, a fixed client id) so the broker queues what arrives while
it is away; subscribes with QoS 1; stores what it receives in batches (one transaction per
batch); and reconnects with backoff when the broker goes away.

Several gateways scale out as one MQTT 5 shared subscription: with ``share_group`` a
gateway connects with MQTT 5 (clean start off, a session that outlives the connection) and
subscribes ``$share/<group>/tcusim/v1/+/up`` and ``.../presence``; the broker gives each
message to one member of the group. Each member needs its own client id; all may write to
one database, which never accepts a ``(vin, seq)`` twice (see :mod:`gateway.store`).

The broker URL is the box's (:func:`firmware_sim.config.parse_broker_url`):
``mqtt://[user[:password]@]host[:port]``, ``mqtts://`` for TLS with the system's CAs or
``tls_ca``, and a client certificate with ``tls_cert`` and ``tls_key``. The password appears
in no log, error message or ``repr``. A broker that refuses the login is retried with backoff
and its reason kept in :attr:`GatewayStats.refused` and ``last_error``.

Acknowledgements are manual: the PUBACK of a message is sent only after the transaction
holding it has committed. A crash between reception and commit therefore loses nothing: the
broker, never having had the PUBACK, sends the message again to the session, and the store
counts it as a duplicate if it was in fact stored. As a consequence the broker's in-flight
window (``max_inflight_messages``) bounds how many messages wait in the gateway's memory.

Decoding and checking the payloads, most of the ingest's CPU, runs in ``decode_processes``
worker processes (by default one per core but one, at most two; see
:func:`default_decode_processes`) while the gateway's loop receives and its store thread
writes: batches form a pipeline, still stored and acknowledged one at a time, in order.

:class:`GatewayThread` runs a :class:`Gateway` in a background thread with its own loop
for synchronous callers (the demo, the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import pickle
import queue
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from firmware_sim.config import BrokerUrl, parse_broker_url
from firmware_sim.errors import ConfigError
from gateway.errors import BrokerError, OptionError, StorageError
from gateway.store import (
    Checker,
    IngestResult,
    Kind,
    Message,
    Outcome,
    Store,
    Verdict,
    in_memory,
    open_store,
    read_frame,
    redact_url,
    write_frame,
)

__all__ = [
    "CLIENT_ID",
    "PRESENCE_FILTER",
    "UPLINK_FILTER",
    "Gateway",
    "GatewayStats",
    "GatewayThread",
    "broker_url",
    "classify_topic",
    "default_decode_processes",
    "presence_topic",
    "share_filters",
    "tls_context",
    "uplink_topic",
]

log = logging.getLogger(__name__)

TOPIC_ROOT = "tcusim/v1"
UPLINK_FILTER = f"{TOPIC_ROOT}/+/up"
PRESENCE_FILTER = f"{TOPIC_ROOT}/+/presence"
CLIENT_ID = "tcusim-gateway"
SESSION_NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5's session expiry interval for "never"
MAX_DECODE_PROCESSES = 2  # what ``decode_processes=None`` takes at most
DECODE_PROCESSES_ENV = "TCUSIM_DECODE_PROCESSES"


def default_decode_processes() -> int:
    """What ``Gateway(decode_processes=None)`` takes: ``$TCUSIM_DECODE_PROCESSES`` when set,
    else one process per core but one, at most :data:`MAX_DECODE_PROCESSES` (0 on one core:
    decode in the gateway's process)."""
    value = os.environ.get(DECODE_PROCESSES_ENV, "").strip()
    if value:
        if not value.isdigit():
            raise OptionError(f"{DECODE_PROCESSES_ENV} must be a number >= 0, not {value!r}")
        return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(MAX_DECODE_PROCESSES, (cores or 1) - 1))


def uplink_topic(vin: str) -> str:
    """The topic a box publishes its uplinks on."""
    return f"{TOPIC_ROOT}/{vin}/up"


def presence_topic(vin: str) -> str:
    """The topic of a box's retained presence message."""
    return f"{TOPIC_ROOT}/{vin}/presence"


def classify_topic(topic: str) -> tuple[str | None, Kind]:
    """``(vin, kind)`` of a topic; ``(None, Kind.UNKNOWN)`` when it is not one of the box's."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or not parts[2]:
        return None, Kind.UNKNOWN
    vin, leaf = parts[2], parts[3]
    if leaf == Kind.UPLINK.value:
        return vin, Kind.UPLINK
    if leaf == Kind.PRESENCE.value:
        return vin, Kind.PRESENCE
    return vin, Kind.UNKNOWN


def share_filters(group: str | None) -> tuple[str, str]:
    """The uplink and presence filters, as a shared subscription of ``group`` when given."""
    if group is None:
        return UPLINK_FILTER, PRESENCE_FILTER
    if not group or any(c in group for c in "/+#") or group != group.strip():
        raise OptionError(
            f"a share group is a non-empty name without '/', '+', '#' or blanks around it,"
            f" not {group!r}"
        )
    return f"$share/{group}/{UPLINK_FILTER}", f"$share/{group}/{PRESENCE_FILTER}"


def broker_url(url: str | BrokerUrl) -> BrokerUrl:
    """The parsed broker URL; :class:`BrokerError` (which never shows the password) if bad."""
    if isinstance(url, BrokerUrl):
        return url
    try:
        return parse_broker_url(url)
    except ConfigError as exc:  # its message masks the password already
        raise BrokerError(str(exc)) from None


def tls_context(
    broker: BrokerUrl,
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> ssl.SSLContext | None:
    """The TLS context for ``mqtts://`` (``None`` for ``mqtt://``), checked once, up front.

    The server's certificate and host name are verified against ``ca_file`` (the system's
    CAs when not given); ``cert_file`` and ``key_file`` are a client certificate.
    """
    if not broker.tls:
        if ca_file or cert_file or key_file:
            raise OptionError(f"TLS files given for {broker}: TLS needs an mqtts:// broker URL")
        return None
    if (cert_file is None) != (key_file is None):
        raise OptionError("a client certificate and its key go together")
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if cert_file is not None and key_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise BrokerError(f"TLS set-up for {broker} failed: {exc}") from None
    return context


@dataclass
class GatewayStats:
    """What the gateway has done; ``queue_depth`` is what waits in memory, not yet stored."""

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    presence: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    largest_batch: int = 0
    acked: int = 0
    decoded_apart: int = 0  # messages checked by a decoding process (``decode_processes``)
    queue_depth: int = 0
    max_queue_depth: int = 0
    connects: int = 0
    connect_failures: int = 0  # connection attempts that failed, refusals among them
    refusals: int = 0  # CONNACKs that refused the gateway (bad credentials, not authorised)
    connection_losses: int = 0
    store_errors: int = 0
    connected: bool = False
    subscribed: bool = False
    manual_ack: bool = False
    refused: str = ""  # the broker's reason for the last refusal, until a connection succeeds
    last_error: str = ""

    def copy(self) -> GatewayStats:
        """An independent snapshot."""
        return dataclasses.replace(self, rejected_by_reason=dict(self.rejected_by_reason))

    def count(self, results: list[IngestResult]) -> None:
        """Add the outcomes of one stored batch."""
        for r in results:
            if r.outcome is Outcome.ACCEPTED:
                self.accepted += 1
            elif r.outcome is Outcome.DUPLICATE:
                self.duplicates += 1
            elif r.outcome is Outcome.PRESENCE:
                self.presence += 1
            else:
                self.rejected += 1
                reason = r.reason or "unknown"
                self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1


def _enable_manual_ack(client: aiomqtt.Client) -> bool:
    # aiomqtt 2.x does not expose paho's manual acknowledgement; the paho client it wraps
    # (``_client``) does. Without it a PUBACK leaves on reception, before the commit.
    paho = getattr(client, "_client", None)
    if paho is None or not hasattr(paho, "manual_ack_set") or not hasattr(paho, "ack"):
        return False
    paho.manual_ack_set(True)
    return True


class _ReadAhead:
    """A paho client's socket that reads ahead.

    paho reads an MQTT packet in three or more ``recv`` calls (its type, its length a byte
    at a time, then its body), each a system call; this one serves them from one read of up
    to ``size`` bytes. Its ``pending()`` counts what it holds, so that aiomqtt's reader goes
    on reading while packets are buffered (as it does for a TLS socket's decrypted bytes).
    It reads the socket once per turn of the event loop (``loop``): a later ``recv`` on an
    empty buffer raises ``BlockingIOError`` (paho keeps the partial packet), so that a broker
    sending without a pause cannot hold the loop in aiomqtt's reader (bytes the socket
    itself holds, a TLS socket's decrypted ones, are read whatever the turn). Everything
    else is the socket's own; aiomqtt, which applies its ``socket_options`` only to a
    ``socket.socket``, skips them for this one (the gateway gives none).
    """

    __slots__ = ("_at", "_buffer", "_loop", "_read", "_size", "_sock")

    def __init__(self, sock: Any, loop: asyncio.AbstractEventLoop, size: int = 1 << 16) -> None:
        self._sock = sock
        self._loop = loop
        self._size = size
        self._buffer = b""
        self._at = 0
        self._read = False  # the socket was read in this turn of the loop

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes: buffered ones, or one read of the socket's (its errors,
        ``BlockingIOError`` for none, and ``b""`` at the end, as they are)."""
        buffer, at = self._buffer, self._at
        if at >= len(buffer):
            if self._read and not self._held():
                raise BlockingIOError("read again at the next turn of the event loop")
            read: bytes = self._sock.recv(max(bufsize, self._size))
            if not self._read:
                self._read = True
                self._loop.call_soon(self._next_turn)
            if len(read) <= bufsize:
                self._buffer, self._at = b"", 0
                return read
            self._buffer = buffer = read
            at = 0
        end = min(at + bufsize, len(buffer))
        self._at = end
        return buffer[at:end]

    def _next_turn(self) -> None:
        self._read = False

    def _held(self) -> int:
        """Bytes the socket itself holds, read off the wire (TLS, a websocket's frame): they
        are read at once, whatever the turn, as no readable event would announce them."""
        held = getattr(self._sock, "pending", None)
        return int(held()) if held is not None else 0

    def pending(self) -> int:
        """Bytes held here and by the socket itself."""
        return len(self._buffer) - self._at + self._held()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _read_ahead(client: aiomqtt.Client, loop: asyncio.AbstractEventLoop) -> None:
    """Give the paho client's sockets a :class:`_ReadAhead` as they open (nothing when this
    aiomqtt has no paho client)."""
    paho = getattr(client, "_client", None)
    if paho is None or not hasattr(paho, "on_socket_open"):
        return
    opened = paho.on_socket_open

    def on_socket_open(paho_client: Any, userdata: Any, sock: Any) -> None:
        wrapped = _ReadAhead(sock, loop)
        paho_client._sock = wrapped  # what paho reads, writes and closes
        if opened is not None:
            opened(paho_client, userdata, wrapped)

    paho.on_socket_open = on_socket_open


_PUBACK = 0x40
_PUBACK_PACKET = struct.Struct("!BBH")  # PUBACK, remaining length 2, packet id


def _ack(client: aiomqtt.Client, batch: list[aiomqtt.Message]) -> int:
    """Acknowledge the batch's messages, in order; how many were QoS 1 or 2."""
    paho = client._client
    mids = [m.mid for m in batch if m.qos == 1]
    queue_packet = getattr(paho, "_packet_queue", None)
    if len(mids) == len(batch) and callable(queue_packet):
        # The PUBACKs of a batch leave in one write (paho's ``ack`` writes each by itself):
        # what paho's ``_send_puback`` queues, all at once.
        queue_packet(_PUBACK, b"".join([_PUBACK_PACKET.pack(_PUBACK, 2, m) for m in mids]), 0, 1)
        return len(mids)
    acked = 0
    for m in batch:
        if m.qos > 0:
            paho.ack(m.mid, m.qos)
            acked += 1
    return acked


@dataclass(slots=True, eq=False)  # compared by identity (``list.remove``)
class _Pending:
    """One batch on its way to the store: the received messages, what they became as
    :class:`Message`, and the future of their verdicts from a decoding process, or the
    verdicts when the gateway's process checked them itself."""

    batch: list[aiomqtt.Message]
    inbound: list[Message]
    future: Future[list[Verdict]] | None = None
    verdicts: list[Verdict] | None = None

    def items(self) -> list[tuple[str, bytes, str | None, str]]:
        """What :meth:`Checker.check_many` takes."""
        return [(m.topic, m.payload, m.vin, m.kind.value) for m in self.inbound]


def _import_path() -> list[str]:
    """Where a decoding process finds its modules: this process's import path, and the
    directories of this project's packages (``-S``: without ``site`` and its start-up cost,
    an editable install's import hook included)."""
    roots = []
    for name in ("gateway", "firmware_sim", "can_dbc"):
        module = sys.modules.get(name)
        if module is not None and module.__file__:
            roots.append(str(Path(module.__file__).resolve().parent.parent))
    return [*dict.fromkeys([*roots, *sys.path])]


def _widen(pipe: IO[bytes], size: int = 1 << 20) -> None:
    """Let a pipe hold a whole batch (Linux; elsewhere, or beyond the system's limit, as is):
    fewer wake-ups of the two processes per batch."""
    try:
        import fcntl  # noqa: PLC0415 (not on Windows)
    except ImportError:
        return
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux
    if set_size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), set_size, size)


# A decoding process: the import path, then :func:`gateway.store.decode_worker`.
_DECODE_WORKER = (
    "import sys; sys.path[:0] = sys.argv[1:]; del sys.argv[1:]; "
    "from gateway.store import decode_worker; decode_worker()"
)


class _DecodePool:
    """Processes that run a store's :class:`~gateway.store.Checker` over batches of messages.

    Each is a fresh interpreter (``python -c``, never a fork: the gateway's process has
    threads; and no re-import of the ``__main__`` script either), fed pickled batches on its
    stdin by a thread of the gateway's as they are submitted (at most :attr:`DEPTH` at a
    time), while another reads the verdicts back from its stdout. The processes start in the
    background; the batches submitted meanwhile wait for them (or are cancelled, see
    :meth:`Gateway._verdicts`). A process that dies fails the batches it was given (checked
    in the gateway's process then) and is started again once its reader, or the next batch,
    finds it dead; while none is up after a failure, :meth:`submit` returns ``None`` (check
    the batch in the gateway's process). A process exits when its stdin closes, so none
    outlives the gateway's process. :meth:`close` stops them.
    """

    DEPTH = 2
    """The batches one process is given at a time: one it checks, one waiting in its pipe
    (more, and a process could take every batch while the others wait)."""
    POLL_S = 0.5
    """How often a process's idle writer looks whether its reader found the process dead."""

    def __init__(self, processes: int, checker: Checker) -> None:
        self.processes = processes
        self.checker = checker
        self.restarts = 0
        self._jobs: queue.SimpleQueue[tuple[Future[list[Verdict]], bytes] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._ready = 0
        self._failing = False  # a process failed, and none has been ready since
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._serving: set[subprocess.Popen[bytes]] = set()  # the ready ones

    def start(self) -> None:
        """Start the processes (in the background: this returns at once)."""
        for i in range(self.processes):
            thread = threading.Thread(target=self._serve, name=f"tcusim-decode-{i}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def submit(
        self, items: list[tuple[str, bytes, str | None, str]]
    ) -> Future[list[Verdict]] | None:
        """The verdicts to come of ``items``; ``None`` when the processes are failing."""
        if self._closed.is_set() or (self._failing and not self._ready):
            return None
        future: Future[list[Verdict]] = Future()
        self._jobs.put((future, pickle.dumps(items, pickle.HIGHEST_PROTOCOL)))
        return future

    def close(self, timeout: float = 5.0) -> None:
        """Stop the processes; a batch not yet checked is cancelled."""
        self._closed.set()
        for _ in self._threads:
            self._jobs.put(None)
        with self._lock:
            starting = self._procs - self._serving
        for proc in starting:  # no need to wait until it is ready only to stop it
            proc.kill()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            procs = list(self._procs)
        for proc in procs:  # a process that did not exit in time
            proc.kill()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()

    def _serve(self) -> None:
        """One process's thread: (re)start it and hand it batches until closed."""
        delay = 0.1
        while not self._closed.is_set():
            started = time.monotonic()
            try:
                error = self._run_process()
            except Exception as exc:  # a bug: the batches go on in the gateway's process
                log.exception("a decoding process's thread failed")
                error = f"{type(exc).__name__}: {exc}"
            if self._closed.is_set():
                return
            self._failing = True
            self.restarts += 1
            if time.monotonic() - started > 60:
                delay = 0.1
            log.warning("a decoding process failed (%s); restarting it in %.1f s", error, delay)
            if self._closed.wait(delay):
                return
            delay = min(delay * 2, 10.0)

    def _run_process(self) -> str:
        """Run one process until it fails (why) or the pool closes ("").

        This thread writes the batches to the process as they come; a thread of its own
        reads the verdicts back, in order, meanwhile: the process finds its next batch in
        its pipe instead of waiting for this process's threads (and their GIL) in between.
        """
        argv = [sys.executable, "-S", "-c", _DECODE_WORKER, *_import_path()]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError as exc:
            return f"cannot start: {exc}"
        assert proc.stdin is not None and proc.stdout is not None
        for pipe in (proc.stdin, proc.stdout):
            _widen(pipe)
        with self._lock:
            self._procs.add(proc)
        ready = False
        # The batches written and not answered, in order; ``None`` once no more will be.
        written: queue.SimpleQueue[Future[list[Verdict]] | None] = queue.SimpleQueue()
        depth = threading.Semaphore(self.DEPTH)  # a batch written takes one, its answer frees it
        failure: list[str] = []  # why the reader stopped reading
        reader = threading.Thread(
            target=self._read_verdicts,
            args=(proc, written, depth, failure),
            name=f"{threading.current_thread().name}-read",
            daemon=True,
        )
        try:
            write_frame(proc.stdin, pickle.dumps(self.checker, pickle.HIGHEST_PROTOCOL))
            if read_frame(proc.stdout) is None:
                return f"exit status {proc.wait()} before it was ready"
            with self._lock:
                self._ready += 1
                self._failing = False
                self._serving.add(proc)
            ready = True
            reader.start()
            while True:
                if not depth.acquire(timeout=self.POLL_S):
                    continue  # the process is busy with DEPTH batches
                try:
                    job = self._jobs.get(timeout=self.POLL_S)
                except queue.Empty:
                    depth.release()
                    if failure:  # its reader found it dead: start another now
                        return failure[0]
                    continue
                if job is None:
                    return ""
                future, items = job
                if not future.set_running_or_notify_cancel():
                    depth.release()
                    continue
                written.put(future)  # before it is written: the reader may answer it at once
                write_frame(proc.stdin, items)
        except Exception as exc:  # a broken pipe: the batches written are checked here
            proc.kill()  # the reader fails what it still waits for
            return f"{type(exc).__name__}: {exc}"
        finally:
            written.put(None)
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the process answers what it has, then exits
            if reader.ident is not None:  # started
                reader.join()
            if ready:
                with self._lock:
                    self._ready -= 1
                    self._serving.discard(proc)
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            with self._lock:
                self._procs.discard(proc)

    @staticmethod
    def _read_verdicts(
        proc: subprocess.Popen[bytes],
        written: queue.SimpleQueue[Future[list[Verdict]] | None],
        depth: threading.Semaphore,
        failure: list[str],
    ) -> None:
        """Answer the written batches' futures in order with the process's verdicts, each
        freeing its place in ``depth``; once the process fails (it died, a bad frame), kill
        it and fail the rest."""
        assert proc.stdout is not None
        while (future := written.get()) is not None:
            if not failure:
                try:
                    reply = read_frame(proc.stdout)
                    if reply is None:
                        failure.append("a decoding process died")
                    else:
                        verdicts = pickle.loads(reply)
                except Exception as exc:  # a bad frame
                    failure.append(f"a decoding process failed: {type(exc).__name__}: {exc}")
                if failure:
                    proc.kill()  # the writer's next batch fails, and the process restarts
            if failure:
                future.set_exception(RuntimeError(failure[0]))
            elif isinstance(verdicts, str):  # the checks raised: the same will here
                future.set_exception(RuntimeError(verdicts))
            else:
                future.set_result(verdicts)
            depth.release()


class Gateway:
    """Ingest the boxes' messages from an MQTT broker into a :class:`Store` until stopped.

    ``batch_size`` caps a transaction; after the first message of a batch the gateway waits
    at most ``batch_wait`` seconds for more. Bad input never stops it: a message that does not
    decode, or arrives on an unexpected topic, becomes a kept rejection. ``on_commit`` is
    called after each stored batch, ``on_connection`` after each connection attempt.

    ``share_group`` makes the gateway one member of an MQTT 5 shared subscription (see the
    module's documentation); ``session_expiry`` is then its session's expiry interval in
    seconds (by default the session never expires, as MQTT 3.1.1's persistent one).

    ``decode_processes`` processes decode and check the payloads (the CPU-bound part of the
    ingest) while the gateway's loop receives and its store thread writes, so that these
    overlap on several cores: ``None`` (the default) takes
    :func:`default_decode_processes`, 0 decodes in the gateway's process. They are started
    by :meth:`run` and stopped when it returns. Each batch still commits, and is
    acknowledged, in the order it arrived.
    """

    def __init__(
        self,
        store: Store,
        broker: str | BrokerUrl,
        *,
        client_id: str = CLIENT_ID,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        batch_size: int = 256,
        batch_wait: float = 0.005,
        keepalive: int = 30,
        reconnect_min: float = 0.05,
        reconnect_max: float = 5.0,
        on_commit: Callable[[list[IngestResult]], None] | None = None,
        on_connection: Callable[[], None] | None = None,
        share_group: str | None = None,
        session_expiry: int = SESSION_NEVER_EXPIRES,
        decode_processes: int | None = None,
    ) -> None:
        self.filters = share_filters(share_group)
        if decode_processes is None:
            decode_processes = default_decode_processes()
        if decode_processes < 0:
            raise OptionError(f"decode_processes must be 0 or more, not {decode_processes}")
        if not 0 <= session_expiry <= SESSION_NEVER_EXPIRES:
            raise OptionError(f"session_expiry must be 0 to 2**32-1 s, not {session_expiry}")
        if batch_size < 1:
            raise OptionError(f"batch_size must be at least 1, not {batch_size}")
        if not (math.isfinite(batch_wait) and batch_wait >= 0):
            raise OptionError(
                f"batch_wait must be a finite number of seconds >= 0, not {batch_wait}"
            )
        if keepalive < 1:
            raise OptionError(f"keepalive must be at least 1 s, not {keepalive}")
        if not 0 < reconnect_min <= reconnect_max:
            raise OptionError("reconnect delays must satisfy 0 < reconnect_min <= reconnect_max")
        self.store = store
        self.broker = broker_url(broker)
        self.host, self.port = self.broker.host, self.broker.port
        self._tls = tls_context(self.broker, tls_ca, tls_cert, tls_key)
        self.client_id = client_id
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.keepalive = keepalive
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.on_commit = on_commit
        self.on_connection = on_connection
        self.share_group = share_group
        self.session_expiry = session_expiry
        self.decode_processes = decode_processes
        self.stats = GatewayStats()
        self._pool: _DecodePool | None = None
        # The batches handed to decoding processes and not yet stored, oldest first.
        self._inflight: list[_Pending] = []
        self._arrived = asyncio.Event()  # a batch was handed to the decoding processes
        self._stopping: asyncio.Event | None = None
        self._subscribed: asyncio.Event | None = None

    def __repr__(self) -> str:
        group = f" share_group={self.share_group!r}" if self.share_group else ""
        return f"<Gateway {self.broker} client_id={self.client_id!r}{group}>"

    def _connection_event(self) -> None:
        if self.on_connection is not None:
            self.on_connection()

    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        if self._stopping is None or self._subscribed is None:
            self._stopping, self._subscribed = asyncio.Event(), asyncio.Event()
        return self._stopping, self._subscribed

    def stop(self) -> None:
        """Ask :meth:`run` to finish (call from the gateway's event loop)."""
        self._events()[0].set()

    async def wait_subscribed(self) -> None:
        """Return once the gateway is connected and subscribed."""
        await self._events()[1].wait()

    async def run(self) -> None:
        """Connect, subscribe and ingest until :meth:`stop`; reconnect when the link drops."""
        if self.decode_processes:
            self._pool = _DecodePool(self.decode_processes, self.store.checker)
            self._pool.start()
        try:
            await self._sessions()
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.close()

    async def _sessions(self) -> None:
        stopping, subscribed = self._events()
        delay = self.reconnect_min
        while not stopping.is_set():
            try:
                await self._session(stopping, subscribed)
                delay = self.reconnect_min
            except MqttConnectError as exc:
                reason = str(exc.rc) if isinstance(exc.rc, ReasonCode) else str(exc)
                self.stats.connect_failures += 1
                self.stats.refusals += 1
                self.stats.refused = reason
                self.stats.last_error = f"broker {self.broker} refused the connection: {reason}"
                log.warning("%s; trying again in %.2f s", self.stats.last_error, delay)
            except (aiomqtt.MqttError, BrokerError) as exc:
                if self.stats.connected:
                    self.stats.connection_losses += 1
                else:
                    self.stats.connect_failures += 1
                self.stats.last_error = f"broker {self.broker}: {exc}"
                log.warning("%s; reconnecting in %.2f s", self.stats.last_error, delay)
            finally:
                self.stats.connected = self.stats.subscribed = False
                subscribed.clear()
            self._connection_event()
            if stopping.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, self.reconnect_max)

    def _client(self) -> aiomqtt.Client:
        options: dict[str, Any] = {"clean_session": False}
        protocol = aiomqtt.ProtocolVersion.V311
        if self.share_group is not None:
            # MQTT 5: no clean start, and a session that outlives the connection.
            protocol = aiomqtt.ProtocolVersion.V5
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.session_expiry
            options = {"clean_start": False, "properties": properties}
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.broker.username,
            password=self.broker.password,
            identifier=self.client_id,
            keepalive=self.keepalive,
            protocol=protocol,
            tls_context=self._tls,
            **options,
        )

    async def _session(self, stopping: asyncio.Event, subscribed: asyncio.Event) -> None:
        client = self._client()
        self.stats.manual_ack = _enable_manual_ack(client)
        _read_ahead(client, asyncio.get_running_loop())
        if not self.stats.manual_ack:
            log.warning("manual acknowledgements unavailable: a crash may lose a message")
        async with client:
            self.stats.connects += 1
            self.stats.connected = True
            self.stats.refused = ""
            # Consume from the start: a broker may send the session's queued messages before
            # it answers SUBSCRIBE, and amqtt waits for their PUBACKs before it does.
            consumer = asyncio.ensure_future(self._consume(client, stopping))
            try:
                subscribing = asyncio.ensure_future(
                    client.subscribe([(topic_filter, 1) for topic_filter in self.filters])
                )
                await asyncio.wait({subscribing, consumer}, return_when=asyncio.FIRST_COMPLETED)
                if not subscribing.done():
                    subscribing.cancel()
                    await consumer  # it ended first: raises why, or returns on stop
                    return
                for code in subscribing.result():
                    value = code.value if hasattr(code, "value") else int(code)
                    if value not in (1, 2):
                        raise BrokerError(f"subscription not granted with QoS 1 (code {value})")
                subscribed.set()
                self.stats.subscribed = True
                log.info("subscribed to %s and %s", *self.filters)
                self._connection_event()
                await consumer
            finally:
                if not consumer.done():
                    consumer.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await consumer

    async def _consume(self, client: aiomqtt.Client, stopping: asyncio.Event) -> None:
        """Receive batches and hand them to :meth:`_commit` (a pipeline of batches: while one
        is stored, the next ones are received and decoded)."""
        messages = client.messages
        # Received and not yet acknowledged batches: one being stored; with processes, also
        # one being received, two per process (one checked, one waiting for it) and one that
        # the gateway's process may check while it waits. Fewer left the processes waiting
        # for the gateway's process to receive (``benchmarks/ingest.py``).
        processes = self.decode_processes
        slots = asyncio.Semaphore(2 * processes + 3 if processes else 1)
        pending: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._inflight, self._arrived = [], asyncio.Event()
        lost = asyncio.Event()  # the connection is gone: a failing store need not be retried
        committer = asyncio.ensure_future(self._commit(client, pending, slots, stopping, lost))
        stop_task = asyncio.ensure_future(stopping.wait())
        try:
            while not stopping.is_set():
                if not await _first(slots.acquire(), stop_task, committer):
                    break
                next_task = asyncio.ensure_future(anext(messages))
                if not await _first(next_task, stop_task, committer):
                    # Stopping. A message taken off the queue by the cancelled read was not
                    # acknowledged: the broker will send it again.
                    slots.release()
                    break
                batch = [next_task.result()]
                await self._fill(client, batch)
                pending.put_nowait(self._submit(batch))
            # Store, and acknowledge, what has already arrived before leaving.
            while len(messages) and await _first(slots.acquire(), committer):
                batch = []
                await self._fill(client, batch, wait=False)
                pending.put_nowait(self._submit(batch))
        except aiomqtt.MqttError:
            lost.set()  # commit what was received (its acknowledgements go nowhere)
            pending.put_nowait(None)
            with contextlib.suppress(Exception):
                await committer
            raise
        finally:
            stop_task.cancel()
            if not committer.done():
                pending.put_nowait(None)
                if stopping.is_set() or lost.is_set():
                    await committer
                else:  # cancelled
                    committer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await committer
        committer.result()  # its error, if it had one

    async def _fill(
        self, client: aiomqtt.Client, batch: list[aiomqtt.Message], wait: bool = True
    ) -> None:
        """Add what is already queued to ``batch``; wait ``batch_wait`` once if it is not full."""
        messages = client.messages
        # aiomqtt's queue (what its iterator reads): a queued message is taken without a
        # task and a wait per message.
        queue = getattr(client, "_queue", None)
        take = queue.get_nowait if isinstance(queue, asyncio.Queue) else None
        waited = not wait or self.batch_wait <= 0
        while len(batch) < self.batch_size:
            depth = len(messages)
            self.stats.queue_depth = depth
            self.stats.max_queue_depth = max(self.stats.max_queue_depth, depth + len(batch))
            if depth:
                # The queue is not empty: this read returns at once, nothing can be lost.
                if take is not None:
                    room = self.batch_size - len(batch)
                    batch.extend(take() for _ in range(min(depth, room)))
                else:
                    batch.append(await anext(messages))
                continue
            if waited:
                break
            waited = True
            log.debug("holding %d messages, waiting %g s for more", len(batch), self.batch_wait)
            await asyncio.sleep(self.batch_wait)

    def _submit(self, batch: list[aiomqtt.Message]) -> _Pending:
        """The batch as :class:`Message` s, handed to a decoding process if there is one."""
        now_ms = time.time_ns() // 1_000_000
        inbound = []
        for m in batch:
            topic = m.topic.value
            vin, kind = classify_topic(topic)
            payload = m.payload if isinstance(m.payload, bytes | bytearray) else b""
            inbound.append(Message(topic, bytes(payload), now_ms, vin, kind))
        self.stats.received += len(batch)
        pending = _Pending(batch, inbound)
        if self._pool is not None:
            pending.future = self._pool.submit(pending.items())
            self._inflight.append(pending)
            self._arrived.set()
        return pending

    async def _commit(
        self,
        client: aiomqtt.Client,
        pending: asyncio.Queue[_Pending | None],
        slots: asyncio.Semaphore,
        stopping: asyncio.Event,
        lost: asyncio.Event,
    ) -> None:
        """Store and acknowledge the pending batches in order, until ``None``."""
        while (item := await pending.get()) is not None:
            try:
                if not await self._store(client, item, stopping, lost):
                    return  # given up: the broker sends the unacknowledged messages again
            finally:
                with contextlib.suppress(ValueError):
                    self._inflight.remove(item)
                slots.release()

    async def _verdicts(self, item: _Pending) -> list[Verdict] | None:
        """The batch's verdicts (``None``: check it with the store).

        A batch no decoding process has taken yet is checked here rather than waited for;
        while a process checks the batch, this process checks a later batch none has taken.
        """
        future = item.future
        if item.verdicts is not None or future is None or future.cancel():
            return item.verdicts
        verdicts = asyncio.wrap_future(future)
        try:
            while not verdicts.done():
                later = next(
                    (p for p in self._inflight if p.future is not None and p.future.cancel()),
                    None,
                )
                if later is not None:
                    later.future = None
                    check = self.store.checker.check_many
                    later.verdicts = await asyncio.to_thread(check, later.items())
                    continue
                self._arrived.clear()
                arrival = asyncio.ensure_future(self._arrived.wait())
                waiters: set[asyncio.Future[Any]] = {verdicts, arrival}
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    arrival.cancel()
            result = verdicts.result()
        except RuntimeError as exc:  # the process died, or the checks raised there
            log.warning("a decoding process did not check a batch: %s", exc)
            return None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not future.cancelled() or (task is not None and task.cancelling()):
                raise
            log.warning("a decoding process did not check a batch: the pool closed")
            return None
        self.stats.decoded_apart += len(result)
        return result

    async def _store(
        self,
        client: aiomqtt.Client,
        pending: _Pending,
        stopping: asyncio.Event,
        lost: asyncio.Event,
    ) -> bool:
        """Store a batch in one transaction (retrying while the store fails), then ack it."""
        batch, inbound = pending.batch, pending.inbound
        verdicts = await self._verdicts(pending)
        if verdicts is None:
            ingest = partial(self.store.ingest_many, inbound)
        else:
            ingest = partial(self.store.ingest_checked, inbound, verdicts)
        delay = self.reconnect_min
        while True:
            try:
                results = await asyncio.to_thread(ingest)
                break
            except StorageError as exc:
                # Nothing of the batch is stored nor acknowledged: try again, never drop.
                # When stopping, give up: the broker sends the unacknowledged batch again.
                self.stats.store_errors += 1
                self.stats.last_error = str(exc)
                log.error("cannot store a batch of %d messages: %s", len(batch), exc)
                if stopping.is_set() or lost.is_set():
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
        if self.stats.manual_ack:
            self.stats.acked += _ack(client, batch)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self.stats.count(results)
        if self.on_commit is not None:
            self.on_commit(results)
        return True


async def _first(awaitable: Any, *others: asyncio.Future[Any]) -> bool:
    """Whether ``awaitable`` finished before any of ``others`` (else it is cancelled)."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task, *others}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
        await task
    return False


class GatewayThread:
    """A :class:`Gateway` in a background thread with its own event loop.

    ``db`` is anything :func:`~gateway.store.open_store` takes (a path, ``sqlite:///...``,
    ``postgresql://...``); ``gateway_options`` go to :class:`Gateway`.
    ``wait_until(predicate, timeout)`` evaluates ``predicate(store)`` against a reader of the
    database after each commit until it holds; ``wait_stats`` does the same with the counters
    after each commit and connection attempt.
    """

    def __init__(self, db: str | Path, broker: str | BrokerUrl, **gateway_options: Any) -> None:
        self.db = str(db)
        self.broker = broker_url(broker)
        self.broker_url = str(self.broker)  # without credentials
        self._options = gateway_options
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gateway: Gateway | None = None
        self._writer: Store | None = None
        self._error: BaseException | None = None
        self._changes = 0
        self._changed = threading.Condition()
        self._readers = threading.local()
        self._reader_stores: list[Store] = []

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<GatewayThread {state} {self.broker} db={redact_url(self.db)}>"

    @property
    def client_id(self) -> str:
        """The MQTT client id of the gateway's persistent session."""
        return str(self._options.get("client_id", CLIENT_ID))

    @property
    def decode_processes(self) -> int:
        """How many decoding processes the gateway runs (see :class:`Gateway`)."""
        if self._gateway is not None:
            return self._gateway.decode_processes
        value = self._options.get("decode_processes")
        return default_decode_processes() if value is None else int(value)

    @property
    def running(self) -> bool:
        """Whether the gateway's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stats(self) -> GatewayStats:
        """A snapshot of the gateway's counters."""
        gateway = self._gateway
        return gateway.stats.copy() if gateway is not None else GatewayStats()

    def _notify(self, *_results: object) -> None:
        with self._changed:
            self._changes += 1
            self._changed.notify_all()

    def _run(self, gateway: Gateway) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(gateway.run())
        except BaseException as exc:
            self._error = exc
            log.exception("the gateway stopped on an error")
        finally:
            loop.close()
            self._notify()

    def start(self, connect_timeout: float | None = 10.0) -> None:
        """Start; wait (bounded) until subscribed unless ``connect_timeout`` is ``None``.

        Raises :class:`BrokerError` when the gateway did not subscribe in time or the broker
        refused it (bad credentials), and stops it then.
        """
        if self.running:
            return
        writer = open_store(self.db)
        try:
            gateway = Gateway(
                writer,
                self.broker,
                on_commit=self._notify,
                on_connection=self._notify,
                **self._options,
            )
        except BaseException:
            writer.close()
            raise
        self._writer, self._gateway, self._error = writer, gateway, None
        self._thread = threading.Thread(
            target=self._run, args=(gateway,), name="tcusim-gateway", daemon=True
        )
        self._thread.start()
        if connect_timeout is None:
            return
        stats = gateway.stats
        settled = self._wait(
            lambda: stats.subscribed or stats.refusals > 0 or not self.running, connect_timeout
        )
        if settled and stats.subscribed:
            return
        error = self._error
        last = stats.last_error
        self.stop()
        if stats.refusals:
            raise BrokerError(f"the broker {self.broker_url} refused the gateway: {stats.refused}")
        raise BrokerError(
            f"the gateway did not subscribe to {self.broker_url} within "
            f"{connect_timeout:g} s: {error or last or 'no connection'}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Store and acknowledge what has arrived, disconnect, and join the thread."""
        thread, loop, gateway = self._thread, self._loop, self._gateway
        if thread is None:
            return
        if loop is not None and gateway is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(gateway.stop)
        thread.join(timeout)
        if thread.is_alive():
            raise BrokerError(f"the gateway did not stop within {timeout:g} s")
        self._thread = None
        self._loop = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for reader in self._reader_stores:
            reader.close()
        self._reader_stores.clear()
        self._readers = threading.local()

    def reader(self) -> Store:
        """A store to read the database from the calling thread (SQLite or PostgreSQL).

        An in-memory SQLite database has one connection: its reader is the writer itself.
        """
        store: Store | None = getattr(self._readers, "store", None)
        if store is None:
            if in_memory(self.db):
                if self._writer is None:
                    raise StorageError("an in-memory database can be read only while running")
                return self._writer
            store = open_store(self.db)
            self._readers.store = store
            self._reader_stores.append(store)
        return store

    def _changed_since(self, seen: int) -> bool:
        return self._changes != seen or not self.running

    def _wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Whether ``condition()`` held within ``timeout`` s (checked after each change)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                seen = self._changes
            if condition():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                self._changed.wait_for(partial(self._changed_since, seen), remaining)
            if not self.running:
                return condition()

    def wait_until(self, predicate: Callable[[Store], bool], timeout: float = 10.0) -> bool:
        """Whether ``predicate(store)`` held within ``timeout`` s (checked after each commit)."""
        store = self.reader()
        return self._wait(lambda: bool(predicate(store)), timeout)

    def wait_stats(self, predicate: Callable[[GatewayStats], bool], timeout: float = 10.0) -> bool:
        """Whether ``predicate(stats)`` held within ``timeout`` s (checked after each change)."""
        return self._wait(lambda: bool(predicate(self.stats)), timeout)

    def __enter__(self) -> GatewayThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
