"""Recordings of a run: the CAN frames as a candump log, the MQTT traffic as JSON lines.

:class:`CandumpRecorder` is a python-can :class:`~can.Listener`: call it with each frame
(``recorder(msg)``), hook it to a bus's sends or give it to a :class:`can.Notifier`. It keeps
each frame's own timestamp (simulated time in a simulated run) and writes the ``candump -L``
format that :func:`can_dbc.capture.read_capture` and :class:`can.LogReader` read back::

    (1767598200.000000) vcan0 0C9#1F40000000000000 R
    (1767598200.010000) vcan0 18FEF100#00FF R
    (1767598200.020000) vcan0 123##1AABBCCDDEEFF0011 R     CAN FD, flags 1 (bit rate switch)
    (1767598200.030000) vcan0 7DF#R2 R                     remote frame, DLC 2

:class:`MqttRecorder` subscribes to the run's topics with its own paho-mqtt client and writes
every message it receives as one JSON line (``t`` is the wall time of arrival in ms)::

    {"t": 1767598200123, "topic": "tcusim/v1/VIN/up", "qos": 1, "retain": false,
     "payload_b64": "..."}
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import math
import ssl
import threading
import time
import uuid
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import IO

import can
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from firmware_sim.config import parse_broker_url
from firmware_sim.errors import LifecycleError, UplinkError

__all__ = ["CandumpRecorder", "MqttRecorder", "candump_line"]

log = logging.getLogger(__name__)

_CAN_ERR_FLAG = 0x20000000
_CAN_ERR_BUSERROR = 0x00000080
_FD_LENGTHS = frozenset((*range(9), 12, 16, 20, 24, 32, 48, 64))


def _channel_name(channel: object, default: str) -> str:
    if channel is None or channel == "":
        return default
    if isinstance(channel, int) or (isinstance(channel, str) and channel.isdigit()):
        return f"can{channel}"  # a bare number would read back as an int
    name = str(channel)
    return default if any(c.isspace() for c in name) else name


def candump_line(msg: can.Message, channel: str = "vcan0") -> str:
    """One ``candump -L`` line (with its newline) for ``msg``.

    ``channel`` names the interface when the message has no channel of its own (or one
    with white space in it). Raises :class:`ValueError` for a frame the format cannot hold:
    a negative or non-finite timestamp, an identifier out of range, too many data bytes.
    """
    ts = msg.timestamp
    if not math.isfinite(ts) or ts < 0:
        raise ValueError(f"timestamp {ts!r}: a candump log needs a finite time, not negative")
    head = f"({ts:.6f}) {_channel_name(msg.channel, channel)} "
    if msg.is_error_frame:
        return f"{head}{_CAN_ERR_FLAG | _CAN_ERR_BUSERROR:08X}#\n"
    can_id = msg.arbitration_id
    if msg.is_extended_id:
        if not 0 <= can_id <= 0x1FFFFFFF:
            raise ValueError(f"extended id {can_id:#x} out of range")
        ident = f"{can_id:08X}"
    else:
        if not 0 <= can_id <= 0x7FF:
            raise ValueError(f"standard id {can_id:#x} out of range")
        ident = f"{can_id:03X}"
    eol = " R\n" if msg.is_rx else " T\n"
    if msg.is_remote_frame:
        dlc = msg.dlc if 0 < msg.dlc <= 8 else 0
        return f"{head}{ident}#R{dlc or ''}{eol}"
    data = bytes(msg.data)
    if msg.is_fd:
        if len(data) not in _FD_LENGTHS:
            raise ValueError(f"{len(data)} data bytes: not a CAN FD length")
        flags = (1 if msg.bitrate_switch else 0) | (2 if msg.error_state_indicator else 0)
        return f"{head}{ident}##{flags:X}{data.hex().upper()}{eol}"
    if len(data) > 8:
        raise ValueError(f"{len(data)} data bytes in a classic CAN frame")
    return f"{head}{ident}#{data.hex().upper()}{eol}"


def _open_for_writing(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "wt", encoding="utf-8")
    return path.open("w", encoding="utf-8")


class CandumpRecorder(can.Listener):
    """Writes every frame it is called with to a candump ``.log`` (``.log.gz`` compressed).

    Frames are written in the order they come, each with its own timestamp; ``frames``
    counts them. Close it (or use it as a context manager) to flush the file.
    """

    def __init__(self, path: str | PathLike[str], *, channel: str = "vcan0") -> None:
        if not channel or any(c.isspace() for c in channel):
            raise ValueError(f"channel {channel!r}: needs a name without white space")
        self.path = Path(path)
        self.channel = channel
        self.frames = 0
        self._file: IO[str] | None = _open_for_writing(self.path)

    def on_message_received(self, msg: can.Message) -> None:
        """Write one frame."""
        if self._file is None:
            raise LifecycleError(f"candump recorder {self.path} is closed")
        self._file.write(candump_line(msg, self.channel))
        self.frames += 1

    def flush(self) -> None:
        """Push what was written so far to the file."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Flush and close the file (again is harmless)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def stop(self) -> None:
        """Close, as a :class:`can.Listener` stops."""
        self.close()

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._file is None

    def __enter__(self) -> CandumpRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MqttRecorder:
    """Records the MQTT messages of ``topics`` (QoS 1 subscriptions) to a JSON-lines file.

    Its paho client (client id ``client_id`` or a fresh ``tcusim-recorder-...``) runs in a
    background thread, reconnects by itself and subscribes again on each connection
    (``connects`` counts them, ``disconnects`` the connections lost, each one logged: what
    was sent while it was away is not recorded). Credentials and TLS come from the broker
    URL (``mqtts://user:password@host``), with ``ca_file`` for a private CA. :meth:`stop`
    first makes sure everything the broker received before the call has arrived: it
    publishes a marker on a topic of its own and waits for it to come back (the broker
    delivers to one subscriber in order).
    """

    def __init__(
        self,
        broker_url: str,
        path: str | PathLike[str],
        topics: tuple[str, ...] = ("tcusim/v1/#",),
        *,
        client_id: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        tls_insecure: bool = False,
        keepalive_s: int = 30,
    ) -> None:
        if not topics:
            raise ValueError("an MQTT recorder needs at least one topic")
        self.broker = parse_broker_url(broker_url)
        self.path = Path(path)
        self.topics = tuple(topics)
        token = uuid.uuid4().hex[:12]
        self.client_id = client_id or f"tcusim-recorder-{token}"
        self._sync_topic = f"tcusim/recorder/{token}/sync"
        self._keepalive_s = keepalive_s
        self.messages = 0
        self.connects = 0
        self.disconnects = 0  # connections lost before stop(): messages may be missing
        self._stopping = False
        self.refused: str | None = None  # the broker's reason when it refused
        self._file: IO[str] | None = None
        self._started = False
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._ready = threading.Event()  # subscribed, or refused
        self._subscribed = False
        self._sub_mid: int | None = None
        self._sync_token: bytes | None = None
        self._synced = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self._client.reconnect_delay_set(1, 5)
        if self.broker.username is not None:
            self._client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls or ca_file:
            try:
                self._client.tls_set(
                    ca_certs=ca_file,
                    certfile=cert_file,
                    keyfile=key_file,
                    cert_reqs=ssl.CERT_NONE if tls_insecure else ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise UplinkError(f"recorder TLS set-up failed: {exc}") from exc
            self._client.tls_insecure_set(tls_insecure)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # -- network thread ---------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        if rc.is_failure:
            self.refused = str(rc)
            self._ready.set()
            return
        self.connects += 1
        subs = [(topic, 1) for topic in (*self.topics, self._sync_topic)]
        result, mid = client.subscribe(subs)
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._sub_mid = mid

    def _on_disconnect(
        self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        if self._stopping:
            return
        self.disconnects += 1
        log.warning("recorder %s lost %s (%s); reconnecting", self.client_id, self.broker, rc)

    def _on_subscribe(
        self, _c: object, _u: object, mid: int, reason_codes: list[ReasonCode], _p: object
    ) -> None:
        if mid != self._sub_mid:
            return
        if any(code.is_failure for code in reason_codes):
            self.refused = "subscription refused: " + ", ".join(map(str, reason_codes))
        else:
            self._subscribed = True
        self._ready.set()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._sync_topic:
            if msg.payload == self._sync_token:
                self._synced.set()
            return
        line = json.dumps(
            {
                "t": int(time.time() * 1000),
                "topic": msg.topic,
                "qos": msg.qos,
                "retain": bool(msg.retain),
                "payload_b64": base64.b64encode(msg.payload).decode("ascii"),
            }
        )
        with self._lock:
            if self._file is None:
                return  # stopping: the file is closed and the count final
            self._file.write(line + "\n")
            self.messages += 1
            self._arrived.notify_all()

    # -- the caller's thread ------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> MqttRecorder:
        """Open the file, connect and subscribe; returns once the subscription is granted.

        Raises :class:`~firmware_sim.errors.UplinkError` when the broker cannot be reached,
        refuses, or does not grant the subscription within ``timeout`` seconds.
        """
        if self._started:
            raise LifecycleError("an MQTT recorder starts once")
        self._started = True
        self._file = self.path.open("w", encoding="utf-8")
        try:
            self._client.connect(self.broker.host, self.broker.port, self._keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._close_file()
            raise UplinkError(f"recorder cannot reach {self.broker}: {exc}") from exc
        self._client.loop_start()
        self._ready.wait(timeout)
        if not self._subscribed:
            self._shutdown()
            reason = self.refused or f"no subscription within {timeout} s"
            raise UplinkError(f"recorder on {self.broker}: {reason}")
        return self

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` messages were recorded; False if the time ran out."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while self.messages < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(left)
            return True

    def stop(self, timeout: float = 10.0) -> bool:
        """Wait (at most ``timeout`` s) for what the broker already holds, then disconnect.

        Flushes and closes the file. Returns True when the marker came back, that is when
        every message the broker received before the call was recorded.
        """
        if not self._started or self._file is None:
            return False
        synced = False
        if self._client.is_connected():
            self._sync_token = uuid.uuid4().bytes
            self._synced.clear()
            self._client.publish(self._sync_topic, self._sync_token, qos=1)
            synced = self._synced.wait(timeout)
        self._shutdown()
        return synced

    def _shutdown(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self._close_file()

    def _close_file(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> MqttRecorder:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
