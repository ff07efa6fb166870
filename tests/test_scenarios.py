"""Scenarios: the language refuses bad files precisely, and every shipped scenario passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from contract import conforms
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.cli import main
from firmware_sim.scenario.model import ScenarioError, load_scenario, parse_duration
from firmware_sim.scenario.runner import ScenarioRunner
from firmware_sim.scenario.yamlpos import load_yaml
from gateway.store import SqliteStore

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
SHIPPED = sorted(p.name for p in SCENARIOS.glob("*.yaml"))
QUICK = "crash.yaml"


def test_every_scenario_is_shipped_with_expectations() -> None:
    assert len(SHIPPED) >= 7
    for name in SHIPPED:
        scenario = load_scenario(SCENARIOS / name)
        assert scenario.expectations, f"{name} checks nothing"


def test_the_commuter_day_checks_every_remote_it_sends() -> None:
    scenario = load_scenario(SCENARIOS / "commuter_day_ev.yaml")
    sent = {a.value.id for a in scenario.actions if a.kind == "remote"}
    checked = {e.params["id"] for e in scenario.expectations if e.kind == "remote"}
    assert len(sent) >= 5 and sent == checked
    assert scenario.energy.value == "electric" and scenario.config.model_year >= 2019


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_passes(name: str, tmp_path: Path, broker: object) -> None:
    scenario = load_scenario(SCENARIOS / name)
    own_broker = any(f.kind == "broker_outage" for f in scenario.faults)
    runner = ScenarioRunner(
        scenario,
        data_dir=tmp_path,
        broker_url=None if own_broker else broker.url,  # type: ignore[attr-defined]
    )
    record = runner.run()
    failed = [f"{e.name}: {e.detail}" for e in record.expectations if not e.passed]
    assert not failed, failed
    with SqliteStore(tmp_path / "gateway.sqlite3") as store:
        payloads = store.payloads(scenario.config.vin)
        latest = max(t for _sid, t, _v in store.samples(scenario.config.vin))
    assert payloads and all(conforms(p.raw) for p in payloads)
    jumps = sum(f.duration_ms for f in scenario.faults if f.kind == "clock_jump")
    if jumps:  # the box stamped what it collected after the jump with its stepped clock
        end = scenario.start_ms + scenario.duration_ms
        assert end + jumps - 60_000 <= latest <= end + jumps


def test_one_seed_gives_the_same_payload_bytes(tmp_path: Path, broker: object) -> None:
    scenario = load_scenario(SCENARIOS / QUICK)
    digests = []
    for run in range(2):
        record = ScenarioRunner(
            scenario,
            data_dir=tmp_path / str(run),
            broker_url=broker.url,  # type: ignore[attr-defined]
        ).run()
        digests.append((record.payload_digest, record.counters["uploads"]))
    assert digests[0] == digests[1] and digests[0][1] > 5
    other = ScenarioRunner(
        scenario.__class__(**{**scenario.__dict__, "seed": scenario.seed + 1}),
        data_dir=tmp_path / "other",
        broker_url=broker.url,  # type: ignore[attr-defined]
    ).run()
    assert other.payload_digest != digests[0][0]


def test_a_failed_expectation_fails_the_command(tmp_path: Path, broker: object) -> None:
    text = (
        (SCENARIOS / QUICK)
        .read_text()
        .replace("within: 1s", "within: 1s}\n  - uploads: {trigger: crash, min: 2")
    )
    bad = tmp_path / "stricter.yaml"
    bad.write_text(text.replace("routes/", str(SCENARIOS / "routes") + "/"))
    out = tmp_path / "record.json"
    status = main(
        [
            "scenario",
            "run",
            str(bad),
            "--broker",
            broker.url,  # type: ignore[attr-defined]
            "--data-dir",
            str(tmp_path / "d"),
            "--json",
            str(out),
        ]
    )
    assert status == 1
    record = json.loads(out.read_text())
    assert not record["passed"]
    assert [e["passed"] for e in record["expectations"]].count(False) == 1


BAD = [
    ("format: tcusim-scenario/9\n", 1, "format"),
    ("format: tcusim-scenario/1\nname: x\n", 1, "vehicle"),
    (
        "format: tcusim-scenario/1\nname: x\nduration: 1m\nroute: {waypoints: [[1, 2], [1, 3]]}\n"
        "vehicle:\n  vin: VR3UHZKXZHT000001\n  colour: red\n",
        7,
        "vehicle.colour",
    ),
    (
        "format: tcusim-scenario/1\nname: x\nduration: 1m\nroute: {waypoints: [[1, 2], [1, 3]]}\n"
        "vehicle: {vin: SHORT}\n",
        5,
        "vehicle.vin",
    ),
    (
        "format: tcusim-scenario/1\nname: x\nduration: 1m\nvehicle: {vin: VR3UHZKXZHT000001}\n"
        "route:\n  waypoints:\n    - [1, 2]\n    - [91, 3]\n",
        8,
        "route.waypoints[1]",
    ),
    (
        "format: tcusim-scenario/1\nname: x\nduration: 1m\nvehicle: {vin: VR3UHZKXZHT000001}\n"
        "route: {waypoints: [[1, 2], [1, 3]]}\ntimeline:\n  - {at: 10s, ignition: maybe}\n",
        7,
        "timeline[0].ignition",
    ),
    (
        "format: tcusim-scenario/1\nname: x\nduration: 1m\nvehicle: {vin: VR3UHZKXZHT000001}\n"
        "route: {waypoints: [[1, 2], [1, 3]]}\ntimeline:\n  - {at: 2m, ignition: on}\n",
        7,
        "timeline[0].at",
    ),
    (
        "format: tcusim-scenario/1\nname: x\nduration: 1m\nvehicle: {vin: VR3UHZKXZHT000001}\n"
        "route: {waypoints: [[1, 2], [1, 3]]}\nfaults:\n  - at: 10s\n    power_cut: 2m\n",
        8,
        "faults[0].power_cut",
    ),
    (
        "format: tcusim-scenario/1\nname: x\nduration: 1m\nvehicle: {vin: VR3UHZKXZHT000001}\n"
        "route: {waypoints: [[1, 2], [1, 3]]}\nexpect:\n  - uploads: {trigger: sneeze, min: 1}\n",
        7,
        "expect[0].uploads.trigger",
    ),
    (
        "format: tcusim-scenario/1\nname: x\nduration: 1m\nvehicle: {vin: VR3UHZKXZHT000001}\n"
        "route: {gpx: no-such.gpx}\n",
        5,
        "route.gpx",
    ),
    ("format: tcusim-scenario/1\nname: x\nname: y\n", 3, "name"),
    ("format: [\n", 2, ""),
]


@pytest.mark.parametrize(("text", "line", "field"), BAD)
def test_a_bad_file_is_refused_with_file_line_and_field(
    text: str, line: int, field: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.source == str(path)
    assert info.value.line == line, str(info.value)
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(f"{path}:{line}")


def test_the_cli_says_it_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD[3][0])
    assert main(["scenario", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tcusim: error: {path}:5: vehicle.vin:") and "Traceback" not in err


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_is_a_scenario_error_or_a_scenario(text: str) -> None:
    try:
        load_yaml(text, "fuzz.yaml")
    except ScenarioError:
        return


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "format",
                        "name",
                        "vehicle",
                        "route",
                        "duration",
                        "timeline",
                        "faults",
                        "expect",
                        "at",
                        "vin",
                    ]
                ),
                children,
                max_size=5,
            )
        ),
        max_leaves=20,
    )
)
def test_arbitrary_documents_never_crash_the_parser(document: object) -> None:
    text = json.dumps(document, default=str)
    try:
        from firmware_sim.scenario.model import parse_scenario  # noqa: PLC0415

        parse_scenario(load_yaml(text, "fuzz.yaml"), "fuzz.yaml")
    except ScenarioError:
        pass


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        (90, 90_000),
        (1.5, 1_500),
        ("30s", 30_000),
        ("5m", 300_000),
        ("1h30m", 5_400_000),
        ("250ms", 250),
        ("1m30s", 90_000),
    ],
)
def test_durations(text: object, ms: int) -> None:
    assert parse_duration(text) == ms
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_a_run_writes_its_report_and_recordings(tmp_path: Path, broker: object) -> None:
    from can_dbc.capture import read_capture  # noqa: PLC0415

    report, recordings = tmp_path / "run.html", tmp_path / "rec"
    status = main(
        [
            "scenario",
            "run",
            str(SCENARIOS / QUICK),
            "--broker",
            broker.url,  # type: ignore[attr-defined]
            "--data-dir",
            str(tmp_path / "d"),
            "--report",
            str(report),
            "--record",
            str(recordings),
        ]
    )
    assert status == 0
    html = report.read_text()
    assert (
        "A crash" in html
        and html.count("<svg") >= 4
        and "http://" not in html.replace("http://www.w3.org", "")
    )
    frames, stats = read_capture(recordings / "bus.log")
    assert len(frames) > 10_000 and stats.bad_lines == 0
    # Simulated times: the frames are stamped with the scenario's clock, not the wall's.
    start = load_scenario(SCENARIOS / QUICK).start_ms / 1000
    assert start <= frames[0].timestamp < start + 1
    lines = (recordings / "mqtt.jsonl").read_text().splitlines()
    assert sum('"/up"' in line or '/up"' in line for line in lines) >= 5


@pytest.mark.parametrize("text", ["a: !0 x\n", "a: !!timestamp 2026-13-45\n", "!custom 3\n"])
def test_tags_the_safe_loader_does_not_know_are_refused_with_the_line(text: str) -> None:
    with pytest.raises(ScenarioError) as info:
        load_yaml(text, "tags.yaml")
    assert info.value.line == 1


def test_a_document_that_refers_to_itself_is_refused() -> None:
    with pytest.raises(ScenarioError, match="refers to itself"):
        load_yaml("a: &x [1, *x]\n", "loop.yaml")
