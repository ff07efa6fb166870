"""``tcusim remote``: usage errors, and commands answered by a box played by the test."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import AnyBroker, PahoClient
from hypothesis import given
from hypothesis import strategies as st
from test_remotes import EV, MASTER, check_command, status_message

from firmware_sim.cli import main
from firmware_sim.cli.remote import RemoteUsageError, parse_action


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """The master secret, as the gateway keeps it."""
    path = tmp_path / "remote.secret"
    path.write_text(MASTER.hex() + "\n", encoding="ascii")
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], list[str]]:
    """``tcusim ARGV``: exit status, stdout lines, stderr lines."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.splitlines()


USAGE = [
    ["remote", EV, "explode"],
    ["remote", EV],
    ["remote", EV, "horn", "--beeps", "11"],
    ["remote", EV, "horn", "--beeps", "two"],
    ["remote", EV, "lights", "--duration", "0"],
    ["remote", EV, "precond"],
    ["remote", EV, "precond", "maybe"],
    ["remote", EV, "charge", "at", "24:00"],
    ["remote", EV, "charge", "at"],
    ["remote", EV, "charge", "now", "10:00"],
    ["remote", EV, "lock", "--colour", "red"],
    ["remote", EV, "horn", "--timeout", "0"],
    ["remote", EV, "horn", "--expiry", "0"],
    ["remote", "NOT-A-VIN", "horn"],
]


@pytest.mark.parametrize("argv", USAGE)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run([*argv, "--secret-file", str(secret_file)], capsys)
    assert status == 2
    assert out == []
    assert len(err) == 1 and "error" in err[0], err


def test_a_missing_or_bad_secret_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = ["remote", EV, "horn", "--secret-file", str(tmp_path / "nope")]
    bad = tmp_path / "bad.secret"
    bad.write_text("not hex\n", encoding="ascii")
    short = tmp_path / "short.secret"
    short.write_text("00ff\n", encoding="ascii")
    for argv in (missing, ["remote", EV, "horn", "--secret-file", str(bad)]):
        status, _out, err = run(argv, capsys)
        assert status == 2 and len(err) == 1
    status, _out, err = run(["remote", EV, "horn", "--secret-file", str(short)], capsys)
    assert status == 2 and "16 bytes" in err[0]


PARAMS = [
    (["horn"], ("horn", {"beeps": 1})),
    (["horn", "--beeps", "2"], ("horn", {"beeps": 2})),
    (["lock"], ("lock", {})),
    (["unlock"], ("unlock", {})),
    (["lights", "--duration", "10"], ("lights", {"duration_s": 10})),
    (["precond", "on"], ("precond", {"immediate": True})),
    (["precond", "off"], ("precond", {"immediate": False})),
    (["charge", "now"], ("charge", {"immediate": True})),
    (["charge", "stop"], ("charge", {"immediate": False})),
    (["charge", "at", "06:30"], ("charge", {"delayed_to_min": 390})),
    (["wakeup"], ("wakeup", {})),
    (["immobilize", "on"], ("immobilize", {"activate": True})),
    (["stolen", "no"], ("stolen", {"stolen": False})),
]


@pytest.mark.parametrize(("args", "expected"), PARAMS)
def test_actions_and_their_parameters(args: list[str], expected: Any) -> None:
    action, params, options = parse_action(args[0], args[1:])
    assert (action, params) == expected
    assert options == {}


@given(st.integers(min_value=0, max_value=23), st.integers(min_value=0, max_value=59))
def test_charge_times(hour: int, minute: int) -> None:
    _action, params, _ = parse_action("charge", ["at", f"{hour:02d}:{minute:02d}"])
    assert params == {"delayed_to_min": hour * 60 + minute}


@given(st.text(max_size=8))
def test_any_charge_time_parses_or_is_refused(text: str) -> None:
    try:
        _action, params, _ = parse_action("charge", ["at", text])
    except RemoteUsageError as exc:
        assert "charge at" in str(exc)
    except SystemExit as exc:  # argparse: a text that looks like an option
        assert exc.code == 2
    else:
        assert 0 <= params["delayed_to_min"] <= 1439


# -- against a box played by the test -----------------------------------------------------------


@pytest.fixture
def box(
    broker: AnyBroker, mqtt_client: Callable[..., PahoClient], unique_id: Callable[[str], str]
) -> PahoClient:
    """A box's MQTT client, subscribed to its down topic."""
    client = mqtt_client(broker, unique_id("box")).connect()
    client.subscribe(f"tcusim/v1/{EV}/down")
    return client


class PlayedBox:
    """The box played in a thread: it takes one command and answers with ``statuses``."""

    def __init__(self, box: PahoClient, statuses: list[tuple[str, str | None]]) -> None:
        self.box = box
        self.statuses = statuses
        self.taken: list[dict[int, Any]] = []
        self.thread = threading.Thread(target=self._play, daemon=True)
        self.thread.start()

    def _play(self) -> None:
        (message,) = self.box.get()
        command = check_command(message.payload, EV)
        self.taken.append(command)
        topic = f"tcusim/v1/{EV}/cmd"
        self.box.publish(topic, status_message(bytes(16), "Accepted", 1))  # another's: ignored
        self.box.publish(topic, b"\xffgarbage")  # unreadable: ignored
        for n, (status, cause) in enumerate(self.statuses):
            raw = status_message(command[1], status, 1_782_864_000_000 + n, cause=cause)
            self.box.publish(topic, raw)

    def command(self) -> dict[int, Any]:
        """The command it took."""
        self.thread.join(10)
        return self.taken[0]


def test_wait_prints_each_status_until_success(
    box: PahoClient, broker: AnyBroker, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    played = PlayedBox(box, [("Accepted", None), ("SentToVehicle", None), ("Success", None)])
    argv = ["remote", "--broker", broker.url, "--secret-file", str(secret_file)]
    status, out, err = run([*argv, EV, "horn", "--beeps", "2", "--wait", "--timeout", "10"], capsys)
    command = played.command()
    assert status == 0, err
    assert (command[3], command[4]) == ("horn", {"beeps": 2})
    assert out[0] == f"sent horn {command[1].hex()} to {EV} (order {command[8]})"
    assert [line.split()[1] for line in out[1:]] == ["Accepted", "SentToVehicle", "Success"]
    assert any("bad status" in line for line in err)


def test_wait_exits_1_on_failed(
    box: PahoClient, broker: AnyBroker, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    played = PlayedBox(box, [("Accepted", None), ("Failed", "DoorsOpen")])
    argv = ["remote", "--broker", broker.url, "--secret-file", str(secret_file), "--wait"]
    status, out, _err = run([*argv, EV, "lock"], capsys)
    assert played.command()[3] == "lock"
    assert status == 1
    assert out[-1].split()[1:3] == ["Failed", "DoorsOpen"]


def test_without_wait_the_command_is_sent(
    box: PahoClient, broker: AnyBroker, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["remote", "--broker", broker.url, "--secret-file", str(secret_file)]
    status, out, _err = run([*argv, EV, "charge", "at", "06:30", "--order", "7"], capsys)
    assert status == 0 and len(out) == 1
    command = check_command(box.get()[0].payload, EV)
    assert (command[3], command[4], command[8]) == ("charge", {"delayed_to_min": 390}, 7)


def test_no_answer_in_time_exits_1(
    box: PahoClient, broker: AnyBroker, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["remote", "--broker", broker.url, "--secret-file", str(secret_file)]
    status, _out, err = run([*argv, EV, "wakeup", "--wait", "--timeout", "0.5"], capsys)
    assert status == 1
    assert "no final status" in err[-1]
    assert check_command(box.get()[0].payload, EV)[3] == "wakeup"
