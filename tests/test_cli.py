"""The ``tcusim`` command line, run as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from contract import conforms

from firmware_sim.cli import main
from gateway.store import SqliteStore


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, object]]:
    status = main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    return status, json.loads(out[-1])


def test_help_lists_every_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "firmware_sim", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("demo", "vehicle", "scenario", "decode", "replay", "gateway"):
        assert command in out


def test_demo_on_the_embedded_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, summary = run_json(capsys, ["demo", "--data-dir", str(tmp_path), "--json"])
    assert status == 0 and summary["passed"] is True
    assert summary["broker"] != "" and summary["queue_drained"] is True
    assert summary["stored_payloads"] == summary["uploads"]
    assert summary["seq_gaps"] == 0 and summary["rejected"] == 0
    assert summary["boots"] == 2  # the power cut on the way
    # Every sample is stored, kept for the next upload, or withdrawn by the driver's choice.
    assert summary["samples"] == (
        summary["stored_samples"] + summary["samples_pending"] + summary["dropped_by_privacy"]
    )
    triggers = summary["uploads_by_trigger"]
    assert isinstance(triggers, dict)
    assert triggers["door"] == 4 and triggers["privacy"] == 1 and triggers["ignition_on"] == 1
    assert summary["positions_before_privacy"] and not summary["positions_after_privacy"]
    with SqliteStore(tmp_path / "gateway.sqlite3") as store:
        payloads = store.payloads(str(summary["vin"]))
    assert len(payloads) == summary["uploads"]
    assert all(conforms(p.raw) for p in payloads), "a payload breaks uplink.cddl"
    report = Path(str(summary["report"])).read_text()
    assert "Demo commute" in report and report.count("<svg") >= 4
    # The app's side: what the Web API served and what the monitors sent.
    api = summary["api"]
    assert isinstance(api, dict)
    assert all(c["passed"] for c in api["checks"]), api["checks"]
    assert api["trips"] == 1 and api["trip_km"] > 3 and api["ignition"] == "Stop"
    assert api["privacy"] == "Geolocation" and api["last_position_status"] == 403
    monitors = sorted(n["monitor"] for n in api["notifications"])
    assert monitors == ["left home", "over 80 km/h"]
    assert all(n["signed"] for n in api["notifications"])
    # The app's remote commands, through the API to the car's bus and back to its webhook.
    remotes = {r["id"]: r for r in api["remotes"]}
    assert set(remotes) == {"unlock", "lock_door_open", "lock", "horn"}
    assert (remotes["lock_door_open"]["status"], remotes["lock_door_open"]["failureCause"]) == (
        "Failed",
        "DoorsOpen",
    )
    for rid in ("unlock", "lock", "horn"):
        assert remotes[rid]["statuses"] == ["Accepted", "Accepted", "SentToVehicle", "Success"]
        assert remotes[rid]["notified"] == ["Accepted", "SentToVehicle", "Success"]
    assert all(r["agrees"] and r["signed"] for r in remotes.values())


def test_demo_on_mosquitto(
    tmp_path: Path, broker: object, capsys: pytest.CaptureFixture[str]
) -> None:
    url = broker.url  # type: ignore[attr-defined]
    status, summary = run_json(
        capsys,
        ["demo", "--data-dir", str(tmp_path), "--broker", url, "--json", "--seed", "3"],
    )
    assert status == 0 and summary["broker"] == url and summary["model_year"] == 2017
    assert summary["stored_payloads"] == summary["uploads"] and summary["passed"] is True


def test_gateway_status_of_the_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["demo", "--data-dir", str(tmp_path), "--json"])
    capsys.readouterr()
    db = str(tmp_path / "gateway.sqlite3")
    assert main(["gateway", "status", "VR3UHZKXZHT000042", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "Vehicle.Speed" in out and "seq gaps" in out
    assert main(["gateway", "status", "VR3UHZKXZHT000999", "--db", db]) == 1


def test_vehicle_run_in_wall_clock_time_with_the_simulated_car(
    tmp_path: Path, broker: object, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "vehicle",
            "run",
            "--simulate",
            "--vin",
            "VR3UHZKXZHT000402",
            "--can-interface",
            "virtual",
            "--can-channel",
            "cli-wall-clock",
            "--broker",
            broker.url,  # type: ignore[attr-defined]
            "--data-dir",
            str(tmp_path),
            "--duration",
            "1.5",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    pairs = [part.strip().rsplit(" ", 1) for part in out.splitlines()[0].split(",")]
    counters = {name: int(value) for name, value in pairs}
    # The simulated ECUs send about 300 frames a second; the box decoded them all.
    assert counters["frames"] > 100
    # Every frame is accounted for: decoded, skipped as unchanged, or of an id the box does
    # not consume (the body controller's command feedback), and none failed.
    assert (
        counters["decoded"] + counters["unchanged"] + counters["unknown id"] == counters["frames"]
    )
    assert counters["decoded"] > 0
    assert counters["errors"] == counters["bus errors"] == 0
    assert "gnss: sentences" in out and "fixes 0," not in out


RUN = ["vehicle", "run", "--vin", "VR3UHZKXZHT000403", "--broker", "mqtt://127.0.0.1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["vehicle", "run", "--vin", "SHORT", "--broker", "mqtt://127.0.0.1"], "VIN"),
        (["vehicle", "run", "--vin", "VR3UHZKXZHT000403", "--broker", "ftp://x"], "scheme"),
        ([*RUN, "--can-interface", "no-such-interface"], "cannot open CAN interface"),
        ([*RUN, "--services", "connected_car,teleportation"], "unknown service"),
        ([*RUN, "--simulate", "--can-interface", "socketcan"], "virtual only"),
        ([*RUN, "--dbc", "x.dbc"], "give the mapping too"),
        ([*RUN, "--duration", "-1"], "--duration"),
        ([*RUN, "--bitrate", "500000"], "--bitrate"),
        (["demo", "--seed", "-1"], "--seed"),
    ],
)
def test_bad_input_is_one_clear_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main([*argv, "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("tcusim: error:") and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        [
            "vehicle",
            "run",
            "--simulate",
            "--duration",
            "1",
            "--vin",
            "VR3UHZKXZHT000404",
            "--broker",
            "mqtt://127.0.0.1:1",
        ],
    ],
)
def test_a_data_dir_that_is_a_file_is_one_clear_line(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    occupied = tmp_path / "file"
    occupied.write_text("not a folder")
    status = main([*command, "--data-dir", str(occupied / "sub")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("tcusim: error:") and "Not a directory" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gateway", "serve", "--decode-processes", "1"], "need --broker"),
        (
            ["gateway", "ingest", "--broker", "mqtt://127.0.0.1:1", "--decode-processes", "-1"],
            "must be at least 0",
        ),
    ],
)
def test_decode_processes_is_checked(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = main([*argv, "--db", str(tmp_path / "g.sqlite3")])
    except SystemExit as exc:
        status = int(exc.code or 0)
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err
