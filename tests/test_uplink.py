"""The box's MQTT uplink against a real broker: QoS 1 acks, presence, last will, reconnect."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from waiting import wait_for

from firmware_sim.config import ConfigError, UplinkConfig, parse_broker_url
from firmware_sim.errors import LifecycleError, UplinkError
from firmware_sim.uplink import MqttUplink, backoff_delays, presence_topic, uplink_topic

WAIT = 10.0
PREFIX = "tcusim/v1"


def acked_all(uplink: MqttUplink, seqs: set[int]) -> set[int]:
    """Collect acknowledgements until all of ``seqs`` came (or the wait ran out)."""
    got: set[int] = set()

    def complete() -> bool:
        got.update(uplink.take_acked())
        return got >= seqs

    wait_for(complete)
    return got


def config(url: str, **options: object) -> UplinkConfig:
    return UplinkConfig(
        broker=parse_broker_url(url), reconnect_min_s=0.05, reconnect_max_s=0.5, **options
    )  # type: ignore[arg-type]


def test_qos1_uploads_are_acknowledged_by_sequence_number(
    broker: object, mqtt_client: Callable[..., object]
) -> None:
    vin = "VR3UHZKXZHT000201"
    sub = mqtt_client(broker, "sub-uplink-acks").connect()  # type: ignore[attr-defined]
    sub.subscribe(uplink_topic(PREFIX, vin))
    with MqttUplink(config(broker.url), vin) as uplink:  # type: ignore[attr-defined]
        assert uplink.wait_connected(WAIT)
        for seq in range(20):
            uplink.publish(seq, f"payload-{seq}".encode())
        assert acked_all(uplink, set(range(20))) == set(range(20))
        assert not any(uplink.in_flight(s) for s in range(20))
    got = sorted(m.payload.decode() for m in sub.get(20))  # type: ignore[attr-defined]
    assert got == sorted(f"payload-{s}" for s in range(20))


def test_presence_is_retained_and_the_last_will_says_offline(
    broker: object, mqtt_client: Callable[..., object]
) -> None:
    vin = "VR3UHZKXZHT000202"
    topic = presence_topic(PREFIX, vin)
    uplink = MqttUplink(config(broker.url), vin, boot=7).open()  # type: ignore[attr-defined]
    assert uplink.wait_connected(WAIT)
    watcher = mqtt_client(broker, "presence-watch").connect()  # type: ignore[attr-defined]
    watcher.subscribe(topic)
    first = watcher.get()[0]
    assert first.retain and json.loads(first.payload) == {"state": "online", "boot": 7}
    uplink.abort()  # a power cut: no DISCONNECT, so the broker publishes the will
    will = watcher.get()[0]
    assert json.loads(will.payload) == {"state": "offline", "boot": 7}
    late = mqtt_client(broker, "presence-late").connect()  # type: ignore[attr-defined]
    late.subscribe(topic)
    retained = late.get()[0]
    assert retained.retain and json.loads(retained.payload)["state"] == "offline"


def test_uploads_wait_through_an_outage_and_go_after_reconnect(
    fresh_broker: object, mqtt_client: Callable[..., object]
) -> None:
    vin = "VR3UHZKXZHT000203"
    with MqttUplink(config(fresh_broker.url), vin, seed=1) as uplink:  # type: ignore[attr-defined]
        assert uplink.wait_connected(WAIT)
        fresh_broker.stop()  # type: ignore[attr-defined]
        assert wait_for(lambda: not uplink.connected)
        for seq in range(5):
            uplink.publish(seq, b"queued while down")
        assert uplink.take_acked() == []
        assert wait_for(lambda: uplink.connect_failures >= 2), "it kept trying while down"
        fresh_broker.start()  # type: ignore[attr-defined]
        assert acked_all(uplink, set(range(5))) == set(range(5))
        assert uplink.connects == 2


def test_misuse_and_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        parse_broker_url("http://example.invalid")
    with pytest.raises(ConfigError):
        parse_broker_url("mqtt://host:notaport")
    with pytest.raises(ConfigError):
        UplinkConfig(broker=parse_broker_url("mqtt://127.0.0.1"), keepalive_s=1)
    with pytest.raises(ConfigError):
        UplinkConfig(broker=parse_broker_url("mqtt://127.0.0.1"), cert_file="only-a-cert.pem")
    missing_ca = str(tmp_path / "no-such-ca.pem")
    with pytest.raises(UplinkError):
        MqttUplink(
            UplinkConfig(broker=parse_broker_url("mqtts://127.0.0.1"), ca_file=missing_ca),
            "VR3UHZKXZHT000204",
        )
    uplink = MqttUplink(config("mqtt://127.0.0.1:1"), "VR3UHZKXZHT000204")
    with pytest.raises(LifecycleError):
        uplink.publish(0, b"never opened")
    assert parse_broker_url("mqtts://u:p@h").port == 8883
    assert str(parse_broker_url("mqtts://u:secret@h:9")) == "mqtts://h:9"  # no secret shown


def test_reconnect_delays_double_up_to_the_cap_with_jitter() -> None:
    delays = list(itertools.islice(backoff_delays(0.5, 30.0, random.Random(7)), 12))
    nominal = [min(30.0, 0.5 * 2**i) for i in range(12)]
    assert all(0.5 * n <= d <= 1.5 * n for d, n in zip(delays, nominal, strict=True))
    assert len({round(d / n, 6) for d, n in zip(delays, nominal, strict=True)}) > 6  # jittered
    # Two boxes that lost the same broker do not come back in step.
    other = list(itertools.islice(backoff_delays(0.5, 30.0, random.Random(8)), 12))
    assert other != delays


def test_credentials_in_the_url_may_be_percent_encoded() -> None:
    url = parse_broker_url("mqtts://fleet%2Fbox:p%40ss%3Aword@broker.example:8883")
    assert (url.username, url.password) == ("fleet/box", "p@ss:word")
    assert "p@ss" not in repr(url) and "p@ss" not in str(url)


@pytest.mark.parametrize(
    "url", ["mqtt://box:hunter2@host:notaport", "ftp://box:hunter2@host", "mqtt://box:hunter2@"]
)
def test_a_bad_broker_url_is_named_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_broker_url(url)
    assert "hunter2" not in str(info.value) and "box:***@" in str(info.value)


def test_a_link_loss_drops_the_connection_and_the_uplink_comes_back(
    broker: object, mqtt_client: Callable[..., object]
) -> None:
    vin = "VR3UHZKXZHT000205"
    watcher = mqtt_client(broker, "presence-link").connect()  # type: ignore[attr-defined]
    watcher.subscribe(presence_topic(PREFIX, vin))
    with MqttUplink(config(broker.url), vin) as uplink:  # type: ignore[attr-defined]
        assert uplink.wait_connected(WAIT)
        assert json.loads(watcher.get()[0].payload)["state"] == "online"
        uplink.link_down()
        assert json.loads(watcher.get()[0].payload)["state"] == "offline"  # the last will
        uplink.publish(0, b"in the tunnel")
        assert wait_for(lambda: not uplink.connected)
        assert uplink.take_acked() == []
        uplink.link_up()
        assert acked_all(uplink, {0}) == {0}
        assert json.loads(watcher.get()[0].payload)["state"] == "online"
