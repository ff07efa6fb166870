"""The box's MQTT uplink (paho-mqtt): QoS 1 uploads, retained presence with a last will.

Only the uplink's own network thread touches the paho client: it connects, reconnects with
exponential backoff and jitter, publishes what the box hands over (through a queue), and
collects the sequence numbers the broker acknowledged. Uploads handed over are kept by paho
until their PUBACK (and resent after a reconnect); across a reboot the flash queue, not paho,
is what keeps an upload. :meth:`MqttUplink.recall` throws away whatever paho still holds, for
when the queued uploads were rewritten (the driver tightened the privacy setting).

With ``downlink=True`` the uplink also carries remote commands: its MQTT session persists
(clean session off, so the broker keeps the commands that come while the box is offline), it
subscribes to ``{prefix}/{vin}/down`` with QoS 1, keeps what arrives for the box
(:meth:`MqttUplink.take_commands`) and acknowledges a command only when the box says it has
taken it (:meth:`MqttUplink.ack_command`: until then the broker delivers it again after a
reconnection), and publishes the box's status messages on ``{prefix}/{vin}/cmd`` with QoS 1
(:meth:`MqttUplink.publish_status`), handed over again if the client is replaced first.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import json
import logging
import queue
import random
import socket
import ssl
import threading
from collections.abc import Iterator
from types import TracebackType

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from firmware_sim.config import UplinkConfig
from firmware_sim.errors import LifecycleError, UplinkError

__all__ = [
    "MqttUplink",
    "backoff_delays",
    "command_topic",
    "presence_topic",
    "set_no_delay",
    "status_topic",
    "uplink_topic",
]

log = logging.getLogger(__name__)


def uplink_topic(prefix: str, vin: str) -> str:
    """The topic a box publishes its uploads on."""
    return f"{prefix}/{vin}/up"


def set_no_delay(client: mqtt.Client) -> None:
    """Send small packets at once on ``client``'s sockets (no Nagle delay).

    paho leaves Nagle's algorithm on, so a packet written right after another (a PUBACK and
    then a PUBLISH) waits for the peer's delayed ACK, some 40 ms on Linux.
    """

    def on_open(_client: mqtt.Client, _userdata: object, sock: object) -> None:
        setsockopt = getattr(sock, "setsockopt", None)
        if setsockopt is not None:
            try:
                setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:  # not a TCP socket (a Unix socket): nothing to do
                log.debug("TCP_NODELAY not set: %s", exc)

    client.on_socket_open = on_open


def command_topic(prefix: str, vin: str) -> str:
    """The topic the box receives its remote commands on."""
    return f"{prefix}/{vin}/down"


def status_topic(prefix: str, vin: str) -> str:
    """The topic the box reports its commands' statuses on."""
    return f"{prefix}/{vin}/cmd"


def presence_topic(prefix: str, vin: str) -> str:
    """The retained topic that says whether a box is online."""
    return f"{prefix}/{vin}/presence"


_STATUS = -1  # the request "sequence number" of a status message


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def backoff_delays(minimum: float, maximum: float, rng: random.Random) -> Iterator[float]:
    """Reconnect delays: doubling from ``minimum`` up to ``maximum``, each jittered to 50-150 %."""
    delay = minimum
    while True:
        yield delay * (0.5 + rng.random())
        delay = min(maximum, delay * 2)


class MqttUplink:
    """One box's connection to its broker."""

    def __init__(
        self,
        config: UplinkConfig,
        vin: str,
        *,
        boot: int = 0,
        seed: int | None = None,
        downlink: bool = False,
    ):
        self.config = config
        self.vin = vin
        self.boot = boot
        self.downlink = downlink
        self.topic = uplink_topic(config.topic_prefix, vin)
        self.presence = presence_topic(config.topic_prefix, vin)
        self.command_topic = command_topic(config.topic_prefix, vin)
        self.status_topic = status_topic(config.topic_prefix, vin)
        self._random = random.Random(seed)
        self._state = _State.UNOPENED
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        # Requests to the network thread: an upload to publish (seq, payload), a status
        # message (-1, payload), a command ticket to acknowledge (an int), or None to recall
        # the uploads.
        self._requests: queue.SimpleQueue[tuple[int, bytes] | int | None] = queue.SimpleQueue()
        # (ticket, payload) of the commands received: the network thread fills it.
        self._commands: collections.deque[tuple[int, bytes]] = collections.deque()
        self._generation = 0  # of the paho client: a ticket names its client and its mid
        self._graceful = True
        self._link = threading.Event()  # cleared: the network is gone (link loss)
        self._link.set()
        self._acked: collections.deque[int] = collections.deque()  # filled by the network thread
        self._mid_to_seq: dict[int, int] = {}  # network thread only
        self._status_mids: dict[int, bytes] = {}  # status messages not yet acknowledged
        self._in_flight: set[int] = set()  # box thread only
        self.connects = 0
        self.connect_failures = 0
        self.refused: str | None = None  # the broker's reason when it refused the connection
        self.published = 0
        self.acked = 0
        self.bytes_sent = 0
        self.recalls = 0
        self.commands_received = 0
        self.statuses_sent = 0
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"tcu-{self.vin}",
            clean_session=not self.downlink,
            protocol=mqtt.MQTTv311,
        )
        client.enable_logger(log)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.will_set(self.presence, self._presence_body("offline"), qos=1, retain=True)
        if cfg.broker.username is not None:
            client.username_pw_set(cfg.broker.username, cfg.broker.password)
        if cfg.broker.tls or cfg.ca_file:
            try:
                client.tls_set(
                    ca_certs=cfg.ca_file,
                    certfile=cfg.cert_file,
                    keyfile=cfg.key_file,
                    cert_reqs=ssl.CERT_NONE if cfg.tls_insecure else ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise UplinkError(f"TLS set-up failed: {exc}") from exc
            client.tls_insecure_set(cfg.tls_insecure)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        if self.downlink:
            client.manual_ack_set(True)  # a command is acknowledged once the box took it
        set_no_delay(client)
        return client

    def _presence_body(self, state: str) -> bytes:
        return json.dumps({"state": state, "boot": self.boot}).encode()

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> MqttUplink:
        """Start the network thread; it connects, and reconnects, on its own."""
        if self._state is not _State.UNOPENED:
            raise LifecycleError(f"uplink is {self._state.value}, cannot open it again")
        self._state = _State.OPEN
        self._thread = threading.Thread(target=self._run, name=f"uplink-{self.vin}", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Say "offline" (retained), disconnect cleanly and stop the thread."""
        if self._state is _State.OPEN:
            self._graceful = True
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout + 1.0)
        self._state = _State.CLOSED

    def abort(self) -> None:
        """Drop the connection as a power cut would: no DISCONNECT, so the last will fires."""
        if self._state is _State.OPEN:
            self._graceful = False
            self._stop.set()
            if self._thread is not None:
                self._thread.join(2.0)
        self._state = _State.CLOSED

    def __enter__(self) -> MqttUplink:
        return self.open() if self._state is _State.UNOPENED else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- network thread -------------------------------------------------------------------

    def _run(self) -> None:
        cfg = self.config
        delays = backoff_delays(cfg.reconnect_min_s, cfg.reconnect_max_s, self._random)
        first = True
        while not self._stop.is_set():
            if not self._link.is_set():  # no network at all (a tunnel): wait for it
                if self._serve_requests():
                    first = True  # recalled: the fresh client connects anew
                self._link.wait(0.05)
                continue
            try:
                if first:
                    self._client.connect(cfg.broker.host, cfg.broker.port, cfg.keepalive_s)
                    first = False
                else:
                    self._client.reconnect()
            except (OSError, ssl.SSLError, ValueError) as exc:  # ValueError: paho's bad host
                self.connect_failures += 1
                delay = next(delays)
                log.info("uplink %s: connect failed (%s); retry in %.2f s", self.vin, exc, delay)
                if self._serve_requests():  # queued uploads wait in paho for the connection
                    first = True  # recalled: the fresh client connects anew
                self._stop.wait(delay)
                continue
            was_connected = False
            while not self._stop.is_set():
                if not self._link.is_set():
                    self._close_sockets(self._client, keep_pair=True)  # gone, no goodbye
                    break
                if self._serve_requests():
                    first = True  # recalled: the fresh client connects anew
                    break
                rc = self._client.loop(timeout=0.005)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                if not was_connected and self._connected.is_set():
                    was_connected = True
                    delays = backoff_delays(cfg.reconnect_min_s, cfg.reconnect_max_s, self._random)
            self._connected.clear()
            if not self._stop.is_set() and not first and self._link.is_set():
                self._stop.wait(next(delays))
        self._finish()

    def _serve_requests(self) -> bool:
        """Publish what the box handed over; True when a recall replaced the client."""
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return False
            if request is None:
                self._replace_client()
                return True
            if isinstance(request, int):  # a command the box took: acknowledge it
                generation, mid = divmod(request, 1 << 16)
                if generation == self._generation:  # else its client is gone: redelivered
                    self._client.ack(mid, 1)
                continue
            seq, payload = request
            if seq == _STATUS:
                self._publish_status_now(payload)
                continue
            info = self._client.publish(self.topic, payload, qos=1)
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:  # paho is full: hand it back
                self._acked.append(-seq - 1)
                continue
            # Any other outcome (sent, no connection, connection lost) leaves the message with
            # paho, which sends it once connected.
            self._mid_to_seq[info.mid] = seq

    def _publish_status_now(self, payload: bytes) -> None:
        info = self._client.publish(self.status_topic, payload, qos=1)
        self._status_mids[info.mid] = payload  # kept until its PUBACK

    def _replace_client(self) -> None:
        old = self._client
        if self._connected.is_set():
            old.disconnect()  # clean: no last will, the presence stays "online"
        self._connected.clear()
        self._close_sockets(old)
        self._mid_to_seq.clear()
        statuses = list(self._status_mids.values())  # not in the flash: handed over again
        self._status_mids.clear()
        self._generation += 1
        self._client = self._make_client()
        for payload in statuses:
            self._publish_status_now(payload)

    def _finish(self) -> None:
        client = self._client
        self._serve_requests()
        if self._graceful and self._connected.is_set():
            info = client.publish(self.presence, self._presence_body("offline"), 1, True)
            client.disconnect()
            for _ in range(100):  # flush the presence and the DISCONNECT (bounded)
                if client.loop(timeout=0.01) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                if info.is_published():
                    break
        self._connected.clear()
        self._close_sockets(client)

    @staticmethod
    def _close_sockets(client: mqtt.Client, *, keep_pair: bool = False) -> None:
        sock = client.socket()
        if sock is not None:
            sock.close()
        if keep_pair:
            return
        # paho keeps a socket pair to wake its loop; a discarded client must not leak it.
        for name in ("_sockpairR", "_sockpairW"):
            pair_end = getattr(client, name, None)
            if pair_end is not None:
                pair_end.close()
                setattr(client, name, None)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: object,
        properties: object,
    ) -> None:
        if getattr(reason, "is_failure", False):
            self.refused = str(reason)
            self.connect_failures += 1
            log.warning("uplink %s: broker refused the connection: %s", self.vin, reason)
            return
        self.refused = None
        self.connects += 1
        client.publish(self.presence, self._presence_body("online"), qos=1, retain=True)
        if self.downlink:
            client.subscribe(self.command_topic, qos=1)
        self._connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: object,
        properties: object,
    ) -> None:
        self._connected.clear()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: object,
        properties: object,
    ) -> None:
        if client is not self._client:
            return  # a recalled client's late acknowledgement: its entries are re-sent
        seq = self._mid_to_seq.pop(mid, None)
        self._status_mids.pop(mid, None)
        if seq is not None:  # None: a presence or status message
            self._acked.append(seq)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if message.topic != self.command_topic:
            log.info("uplink %s: ignored a message on %s", self.vin, message.topic)
            if message.qos > 0:
                client.ack(message.mid, message.qos)
            return
        if message.qos == 0:  # nothing to acknowledge
            self._commands.append((-1, bytes(message.payload)))
            return
        ticket = (self._generation << 16) | message.mid
        self._commands.append((ticket, bytes(message.payload)))

    # -- the box's side -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the broker session is up now."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until connected; False when ``timeout`` passed first."""
        return self._connected.wait(timeout)

    @property
    def window(self) -> int:
        """How many more uploads may be handed over before the earlier ones are acknowledged."""
        return self.config.max_inflight - len(self._in_flight)

    def in_flight(self, seq: int) -> bool:
        """Whether this upload was handed over and is not yet acknowledged."""
        return seq in self._in_flight

    @property
    def in_flight_seqs(self) -> frozenset[int]:
        """The uploads handed over and not yet acknowledged."""
        return frozenset(self._in_flight)

    def publish(self, seq: int, payload: bytes) -> None:
        """Hand an upload over; it is sent now or as soon as the broker is reachable."""
        if self._state is not _State.OPEN:
            raise LifecycleError(f"uplink is {self._state.value}")
        self._in_flight.add(seq)
        self._requests.put((seq, payload))
        self._nudge()
        self.published += 1
        self.bytes_sent += len(payload)

    def publish_status(self, payload: bytes) -> None:
        """Hand a command status message over (QoS 1; paho keeps it until connected)."""
        if self._state is not _State.OPEN:
            raise LifecycleError(f"uplink is {self._state.value}")
        self._requests.put((_STATUS, payload))
        self.statuses_sent += 1
        self._nudge()

    def _nudge(self) -> None:
        """Wake the network thread from its wait on the socket, so it serves a request now.

        paho's own wake-up for a packet queued from another thread: one byte on the socket
        pair its loop selects on. A client being replaced meanwhile is harmless to miss.
        """
        pair_end = getattr(self._client, "_sockpairW", None)
        if pair_end is not None:
            # Full (already woken) or closed (replaced): nothing to do.
            with contextlib.suppress(OSError):
                pair_end.send(b"0")

    @property
    def commands_waiting(self) -> bool:
        """Whether commands arrived that :meth:`take_commands` has not taken yet."""
        return bool(self._commands)

    def ack_command(self, ticket: int) -> None:
        """The box has taken the command of this ticket (checked it, and remembered its nonce
        or refused it): the broker may forget it. A ticket of -1 needs no acknowledgement."""
        if ticket < 0 or self._state is not _State.OPEN:
            return
        self._requests.put(ticket)
        self._nudge()

    def take_commands(self) -> list[tuple[int, bytes]]:
        """``(ticket, payload)`` of the commands received since the last call, in arrival
        order; give each ticket to :meth:`ack_command` once the command is taken."""
        taken: list[tuple[int, bytes]] = []
        while self._commands:
            taken.append(self._commands.popleft())
        self.commands_received += len(taken)
        return taken

    def link_down(self) -> None:
        """The network goes away (a tunnel, no coverage): the connection drops without a
        goodbye, so the broker publishes the last will; uploads wait until :meth:`link_up`."""
        self._link.clear()

    def link_up(self) -> None:
        """The network is back: the uplink reconnects on its own."""
        self._link.set()

    def recall(self) -> None:
        """Forget every upload handed over and not yet acknowledged; hand them over again."""
        if self._state is not _State.OPEN:
            raise LifecycleError(f"uplink is {self._state.value}")
        self._requests.put(None)
        self._in_flight.clear()
        self.recalls += 1

    def take_acked(self) -> list[int]:
        """The sequence numbers the broker acknowledged since the last call."""
        done: list[int] = []
        while self._acked:
            seq = self._acked.popleft()
            if seq < 0:  # paho refused to queue it: it will be handed over again
                self._in_flight.discard(-seq - 1)
                continue
            self._in_flight.discard(seq)
            done.append(seq)  # acknowledged: the broker has it, whatever happened since
        self.acked += len(done)
        return done
