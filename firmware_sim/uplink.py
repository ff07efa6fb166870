"""The box's MQTT uplink (paho-mqtt): QoS 1 uploads, retained presence with a last will.

The network loop runs in a thread of its own that reconnects with exponential backoff and
jitter. Uploads handed to paho are kept by paho until their PUBACK (and resent after a
reconnect); the acknowledged sequence numbers are collected for the runner to remove from the
flash queue. Across a reboot the flash queue, not paho, is what keeps an upload.
"""

from __future__ import annotations

import collections
import enum
import json
import logging
import random
import ssl
import threading
from types import TracebackType

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from firmware_sim.config import UplinkConfig
from firmware_sim.errors import LifecycleError, UplinkError

__all__ = ["MqttUplink", "presence_topic", "uplink_topic"]

log = logging.getLogger(__name__)


def uplink_topic(prefix: str, vin: str) -> str:
    """The topic a box publishes its uploads on."""
    return f"{prefix}/{vin}/up"


def presence_topic(prefix: str, vin: str) -> str:
    """The retained topic that says whether a box is online."""
    return f"{prefix}/{vin}/presence"


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class MqttUplink:
    """One box's connection to its broker."""

    def __init__(self, config: UplinkConfig, vin: str, *, boot: int = 0, seed: int | None = None):
        self.config = config
        self.vin = vin
        self.boot = boot
        self.topic = uplink_topic(config.topic_prefix, vin)
        self.presence = presence_topic(config.topic_prefix, vin)
        self._random = random.Random(seed)
        self._state = _State.UNOPENED
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._mid_to_seq: dict[int, int] = {}
        self._acked_mids: collections.deque[int] = collections.deque()
        self._in_flight: set[int] = set()
        self.connects = 0
        self.connect_failures = 0
        self.refused: str | None = None  # the broker's reason when it refused the connection
        self.published = 0
        self.acked = 0
        self.bytes_sent = 0
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client_id = cfg.client_id or f"tcu-{self.vin}"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
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
        if self._state is not _State.OPEN:
            self._state = _State.CLOSED
            return
        if self._connected.is_set():
            info = self._client.publish(self.presence, self._presence_body("offline"), 1, True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                info.wait_for_publish(timeout)
            self._client.disconnect()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._state = _State.CLOSED

    def abort(self) -> None:
        """Drop the connection as a power cut would: no DISCONNECT, so the last will fires."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        sock = self._client.socket()
        if sock is not None:
            sock.close()
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
        delay = cfg.reconnect_min_s
        first = True
        while not self._stop.is_set():
            try:
                if first:
                    self._client.connect(cfg.broker.host, cfg.broker.port, cfg.keepalive_s)
                    first = False
                else:
                    self._client.reconnect()
            except (OSError, ssl.SSLError) as exc:
                self.connect_failures += 1
                log.info("uplink %s: connect failed (%s); retry in %.2f s", self.vin, exc, delay)
                self._stop.wait(delay * (0.5 + self._random.random()))
                delay = min(cfg.reconnect_max_s, delay * 2)
                continue
            while not self._stop.is_set():
                rc = self._client.loop(timeout=0.05)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                if self._connected.is_set():
                    delay = cfg.reconnect_min_s
            self._connected.clear()
            if not self._stop.is_set():
                self._stop.wait(delay * (0.5 + self._random.random()))
                delay = min(cfg.reconnect_max_s, delay * 2)

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
        # Runs in the network thread, inside paho's locks: only record the mid.
        self._acked_mids.append(mid)

    # -- uploads --------------------------------------------------------------------------

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
        """Whether this upload was handed to the broker connection and is not yet acknowledged."""
        return seq in self._in_flight

    def publish(self, seq: int, payload: bytes) -> None:
        """Hand an upload over; it is sent now or as soon as the broker is reachable."""
        if self._state is not _State.OPEN:
            raise LifecycleError(f"uplink is {self._state.value}")
        with self._lock:
            info = self._client.publish(self.topic, payload, qos=1)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                raise UplinkError(f"publish of upload {seq} refused: {mqtt.error_string(info.rc)}")
            self._mid_to_seq[info.mid] = seq
            self._in_flight.add(seq)
            self.published += 1
            self.bytes_sent += len(payload)

    def take_acked(self) -> list[int]:
        """The sequence numbers the broker acknowledged since the last call."""
        done: list[int] = []
        # publish() records a mid under the lock before this can run, so a mid not found
        # here belongs to a presence message.
        with self._lock:
            while self._acked_mids:
                seq = self._mid_to_seq.pop(self._acked_mids.popleft(), None)
                if seq is not None:
                    self._in_flight.discard(seq)
                    done.append(seq)
        self.acked += len(done)
        return done
