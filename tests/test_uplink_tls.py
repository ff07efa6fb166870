"""The uplink over TLS with credentials, against a real Mosquitto with a TLS listener."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.config import UplinkConfig, parse_broker_url
from firmware_sim.uplink import MqttUplink
from gateway.broker import MosquittoBroker, MosquittoSettings, find_mosquitto

WAIT = 10.0

pytestmark = pytest.mark.skipif(
    find_mosquitto() is None
    or shutil.which("openssl") is None
    or shutil.which("mosquitto_passwd") is None,
    reason="needs mosquitto, mosquitto_passwd and openssl",
)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MosquittoBroker, Path]]:
    d = tmp_path_factory.mktemp("tls")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tcusim test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
        cwd=d,
    )
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(d / "passwd"), "box", "s3cret"],
        check=True,
        capture_output=True,
    )
    settings = MosquittoSettings(
        certfile=str(d / "server.pem"),
        keyfile=str(d / "server.key"),
        password_file=str(d / "passwd"),
    )
    broker = MosquittoBroker(data_dir=d / "broker", settings=settings)
    broker.start()
    try:
        yield broker, d / "ca.pem"
    finally:
        broker.close()


def uplink(url: str, ca: Path) -> MqttUplink:
    cfg = UplinkConfig(
        broker=parse_broker_url(url), ca_file=str(ca), reconnect_min_s=0.05, reconnect_max_s=0.2
    )
    return MqttUplink(cfg, "VR3UHZKXZHT000601")


def test_tls_with_credentials_delivers(tls_broker: tuple[MosquittoBroker, Path]) -> None:
    broker, ca = tls_broker
    assert broker.url.startswith("mqtts://")
    url = broker.url.replace("mqtts://", "mqtts://box:s3cret@")
    with uplink(url, ca) as up:
        assert up.wait_connected(WAIT), up.refused
        up.publish(0, b"over TLS")
        deadline = time.monotonic() + WAIT
        acked: list[int] = []
        while not acked and time.monotonic() < deadline:
            acked = up.take_acked()
            time.sleep(0.01)
        assert acked == [0]


def test_wrong_password_is_refused_with_the_brokers_reason(
    tls_broker: tuple[MosquittoBroker, Path],
) -> None:
    broker, ca = tls_broker
    url = broker.url.replace("mqtts://", "mqtts://box:wrong@")
    with uplink(url, ca) as up:
        deadline = time.monotonic() + WAIT
        while up.refused is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not up.connected
        assert up.refused is not None and "authoriz" in up.refused.lower()


def test_an_untrusted_certificate_never_connects(
    tls_broker: tuple[MosquittoBroker, Path], tmp_path: Path
) -> None:
    broker, _ca = tls_broker
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=other",
        "-keyout",
        "o.key",
        "-out",
        "other.pem",
        cwd=tmp_path,
    )
    url = broker.url.replace("mqtts://", "mqtts://box:s3cret@")
    with uplink(url, tmp_path / "other.pem") as up:
        deadline = time.monotonic() + 1.0
        while up.connect_failures == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert up.connect_failures >= 1 and not up.connected
