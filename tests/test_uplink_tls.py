"""The uplink over TLS with credentials, against a real Mosquitto with a TLS listener.

The CA, the server certificate, the password file and the broker are conftest's.
"""

from __future__ import annotations

import time
from pathlib import Path

from conftest import TlsFiles, make_ca
from waiting import wait_for

from firmware_sim.config import UplinkConfig, parse_broker_url
from firmware_sim.uplink import MqttUplink
from gateway.broker import MosquittoBroker

WAIT = 10.0


def uplink(url: str, ca: Path) -> MqttUplink:
    cfg = UplinkConfig(
        broker=parse_broker_url(url), ca_file=str(ca), reconnect_min_s=0.05, reconnect_max_s=0.2
    )
    return MqttUplink(cfg, "VR3UHZKXZHT000601")


def with_user(broker: MosquittoBroker, user: str, password: str) -> str:
    return broker.url.replace("mqtts://", f"mqtts://{user}:{password}@")


def test_tls_with_credentials_delivers(tls_broker: MosquittoBroker, tls_files: TlsFiles) -> None:
    assert tls_broker.url.startswith("mqtts://")
    with uplink(with_user(tls_broker, "box", tls_files.users["box"]), tls_files.ca) as up:
        assert up.wait_connected(WAIT), up.refused
        up.publish(0, b"over TLS")
        acked: list[int] = []

        def acknowledged() -> bool:
            acked.extend(up.take_acked())
            return bool(acked)

        assert wait_for(acknowledged)
        assert acked == [0]


def test_wrong_password_is_refused_with_the_brokers_reason(
    tls_broker: MosquittoBroker, tls_files: TlsFiles
) -> None:
    with uplink(with_user(tls_broker, "box", "wrong"), tls_files.ca) as up:
        assert wait_for(lambda: up.refused is not None)
        assert not up.connected
        assert up.refused is not None and "authoriz" in up.refused.lower()


def test_an_untrusted_certificate_never_connects(
    tls_broker: MosquittoBroker, tls_files: TlsFiles, tmp_path: Path
) -> None:
    other_ca = make_ca(tmp_path, "other", "/CN=another CA")
    with uplink(with_user(tls_broker, "box", tls_files.users["box"]), other_ca) as up:
        deadline = time.monotonic() + WAIT
        while up.connect_failures == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert up.connect_failures >= 1 and not up.connected
