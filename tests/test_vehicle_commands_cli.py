"""``tcusim vehicle run`` takes remote commands that ``tcusim remote`` sends: two processes
and a real Mosquitto, the box and the simulated car on python-can's virtual bus."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.cli import main
from firmware_sim.uplink import presence_topic

VIN = "VR3UHZKXZMT200007"
MASTER = bytes(range(100, 132))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def wait_online(broker: Any, box: subprocess.Popen[str]) -> None:
    """Wait for the box's retained presence "online" (it subscribes right after saying so)."""
    online = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cli-presence-watch")
    client.on_message = lambda _c, _u, m: online.set() if b'"online"' in m.payload else None
    client.connect(broker.host, broker.port)
    client.subscribe(presence_topic("tcusim/v1", VIN), qos=1)
    client.loop_start()
    try:
        deadline = time.monotonic() + 60
        while not online.wait(0.1):
            assert box.poll() is None, box.communicate()[1]
            assert time.monotonic() < deadline, "the box never came online"
    finally:
        client.loop_stop()
        client.disconnect()
    time.sleep(0.2)  # its SUBSCRIBE follows the presence on the same connection


def test_a_box_run_from_the_command_line_answers_tcusim_remote(
    tmp_path: Path, broker: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "remote.secret"
    secret.write_text(MASTER.hex() + "\n", encoding="ascii")
    box = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from firmware_sim.cli import main; sys.exit(main())",
            "vehicle",
            "run",
            "--simulate",
            "--duration",
            "60",
            "--vin",
            VIN,
            "--broker",
            broker.url,
            "--can-channel",
            "tcusim-cli-remote",
            "--remote-secret-file",
            str(secret),
            "--data-dir",
            str(tmp_path / "box"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_online(broker, box)
        argv = ["remote", "--broker", broker.url, "--secret-file", str(secret), "--wait"]
        status, out, err = run([*argv, "--timeout", "30", VIN, "horn", "--beeps", "2"], capsys)
        assert status == 0, (out, err)
        lines = out.splitlines()
        assert lines[0].startswith("sent horn ") and VIN in lines[0]
        assert [line.split()[1] for line in lines[1:]] == [
            "Accepted",
            "SentToVehicle",
            "Success",
        ]
        # The same command signed with another secret is refused and nothing moves.
        wrong = tmp_path / "other.secret"
        wrong.write_text((b"\x07" * 32).hex() + "\n", encoding="ascii")
        argv = ["remote", "--broker", broker.url, "--secret-file", str(wrong), "--wait"]
        status, out, err = run([*argv, "--timeout", "30", VIN, "unlock"], capsys)
        assert status == 1
        assert out.splitlines()[-1].split()[1:3] == ["Failed", "MissingRights"]
    finally:
        box.terminate()
        box_out, box_err = box.communicate(timeout=30)
    assert box.returncode == 0, box_err
    counters = next(line for line in box_out.splitlines() if line.startswith("commands:"))
    assert "received 2" in counters and "'bad_signature': 1" in counters
    assert "request frames 1," in counters


def test_a_command_key_file_must_be_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "key"
    short.write_text("abcd\n", encoding="ascii")
    base = ["vehicle", "run", "--vin", VIN, "--broker", "mqtt://127.0.0.1:1"]
    for key_file, message in (
        (short, "must be 32 bytes"),
        (tmp_path / "missing", "cannot read the command key"),
    ):
        status, _out, err = run([*base, "--command-key-file", str(key_file)], capsys)
        assert status == 2
        assert err.startswith("tcusim: error:") and message in err and "Traceback" not in err
    status, _out, err = run(
        [*base, "--command-key-file", str(short), "--remote-secret-file", str(short)], capsys
    )
    assert status == 2 and "not allowed with" in err
