"""The app's end of remote commands in a scenario run: it publishes signed commands and
collects the status messages the box answers, over the run's broker."""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from types import TracebackType

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from firmware_sim.config import parse_broker_url
from firmware_sim.downlink import DownlinkError, StatusMessage, cmd_topic, decode_status, down_topic
from firmware_sim.errors import UplinkError

__all__ = ["CommandStation"]

log = logging.getLogger(__name__)


class CommandStation:
    """Publishes commands on ``tcusim/v1/{vin}/down`` and keeps the statuses of ``.../cmd``.

    Subscribes again after each reconnection; a status message that does not decode is
    counted (``undecodable``) and dropped.
    """

    def __init__(self, broker_url: str, vin: str) -> None:
        self.broker = parse_broker_url(broker_url)
        self.vin = vin
        self.received = 0
        self.undecodable = 0
        self._statuses: list[StatusMessage] = []
        self._lock = threading.Condition()
        self._subscribed = threading.Event()
        self._sub_mid: int | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"tcusim-scenario-app-{uuid.uuid4().hex[:12]}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self._client.reconnect_delay_set(1, 2)
        if self.broker.username is not None:
            self._client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            self._client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        if rc.is_failure:
            log.warning("scenario app refused by %s: %s", self.broker, rc)
            return
        result, mid = client.subscribe(cmd_topic(self.vin), qos=1)
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._sub_mid = mid

    def _on_subscribe(
        self, _c: object, _u: object, mid: int, codes: list[ReasonCode], _p: object
    ) -> None:
        if mid == self._sub_mid and not any(code.is_failure for code in codes):
            self._subscribed.set()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            status = decode_status(msg.payload)
        except DownlinkError as exc:
            log.warning("scenario app: undecodable status message: %s", exc)
            with self._lock:
                self.undecodable += 1
            return
        with self._lock:
            self._statuses.append(status)
            self.received += 1
            self._lock.notify_all()

    def start(self, timeout: float = 10.0) -> CommandStation:
        """Connect and subscribe; :class:`UplinkError` when that fails within ``timeout`` s."""
        try:
            self._client.connect(self.broker.host, self.broker.port, 30)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UplinkError(f"the scenario's app cannot reach {self.broker}: {exc}") from exc
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise UplinkError(f"the scenario's app got no subscription on {self.broker}")
        return self

    def stop(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> CommandStation:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()

    def send(self, signed: bytes) -> None:
        """Publish a signed command (QoS 1); the client sends it again after a reconnection."""
        self._client.publish(down_topic(self.vin), signed, qos=1)

    def take(self) -> list[StatusMessage]:
        """The status messages received since the last call, in order of arrival."""
        with self._lock:
            taken, self._statuses = self._statuses, []
            return taken

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` status messages were received in all; False on time out."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.received < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True
