"""Remote commands in scenarios: the language, its refusals, and a short run on a real broker."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.cli import main
from firmware_sim.scenario.model import Remote, ScenarioError, load_scenario, parse_scenario
from firmware_sim.scenario.report import render_report
from firmware_sim.scenario.runner import ScenarioRunner
from firmware_sim.scenario.yamlpos import load_yaml

HEAD = (
    "format: tcusim-scenario/1\nname: x\nduration: 10m\n"
    "vehicle: {vin: VR3UHZKXZMT000031, energy: electric}\n"
    "route: {waypoints: [[48.85, 2.35], [48.86, 2.34]]}\n"
)


def _parse(text: str) -> object:
    return parse_scenario(load_yaml(HEAD + text, "r.yaml"), "r.yaml")


def test_remote_actions_become_wire_commands() -> None:
    scenario = _parse(
        "timeline:\n"
        "  - at: 1m\n"
        "    remote: {action: precond, id: p, programs: [{slot: 2, days: weekdays, at: '06:20'}]}\n"
        "  - {at: 2m, remote: {action: charge, at: 23:30}}\n"
        "  - {at: 3m, remote: {action: horn}}\n"
        "  - {at: 4m, remote: {action: lights, duration: 5s, validity: 1h}}\n"
        "  - {at: 5m, remote: {action: precond, immediate: true,"
        " programs: [{slot: 1, enabled: false, days: [sat, sun], at: 480}]}}\n"
        "expect:\n"
        "  - remote: {id: p, status: Success}\n"
        "  - remote: {id: 'timeline[1]', cause: ExternalChargingSystemError}\n"
        "  - remote: {id: 'timeline[2]', statuses: [Accepted, SentToVehicle, Success]}\n"
    )
    remotes = [a.value for a in scenario.actions]  # type: ignore[attr-defined]
    assert all(isinstance(r, Remote) for r in remotes)
    assert remotes[0].params == {
        "programs": [{"slot": 2, "enabled": True, "days": 0b11111, "start_min": 380}]
    }
    assert remotes[1].id == "timeline[1]" and remotes[1].params == {"delayed_to_min": 1410}
    assert remotes[2].params == {"beeps": 1}
    assert remotes[3].params == {"duration_s": 5} and remotes[3].validity_ms == 3_600_000
    assert remotes[4].params["programs"][0] == {
        "slot": 1,
        "enabled": False,
        "days": 0b1100000,
        "start_min": 480,
    }
    kinds = [(e.kind, dict(e.params)) for e in scenario.expectations]  # type: ignore[attr-defined]
    assert kinds[1] == (
        "remote",
        {"id": "timeline[1]", "cause": "ExternalChargingSystemError", "status": "Failed"},
    )


BAD = [
    ("timeline:\n  - {at: 1m, remote: {action: honk}}\n", 7, "timeline[0].remote.action"),
    ("timeline:\n  - {at: 1m, remote: {id: a}}\n", 7, "timeline[0].remote.action"),
    (
        "timeline:\n  - at: 1m\n    remote: {action: horn, beeps: 11}\n",
        8,
        "timeline[0].remote.beeps",
    ),
    (
        "timeline:\n  - at: 1m\n    remote:\n      action: lock\n      beeps: 2\n",
        10,
        "timeline[0].remote.beeps",
    ),
    ("timeline:\n  - {at: 1m, remote: {action: charge}}\n", 7, "timeline[0].remote"),
    (
        "timeline:\n  - {at: 1m, remote: {action: charge, at: '25:00'}}\n",
        7,
        "timeline[0].remote.at",
    ),
    (
        "timeline:\n  - {at: 1m, remote: {action: charge, immediate: true, at: '22:00'}}\n",
        7,
        "timeline[0].remote.at",
    ),
    (
        "timeline:\n  - at: 1m\n    remote:\n      action: precond\n      programs:\n"
        "        - {slot: 1, days: [mon, fun], at: '06:00'}\n",
        11,
        "timeline[0].remote.programs[0].days[1]",
    ),
    (
        "timeline:\n  - at: 1m\n    remote:\n      action: precond\n      programs:\n"
        "        - {slot: 5, days: daily, at: '06:00'}\n",
        11,
        "timeline[0].remote.programs[0].slot",
    ),
    (
        "timeline:\n  - {at: 1m, remote: {action: lock, id: a}}\n"
        "  - {at: 2m, remote: {action: unlock, id: a}}\n",
        8,
        "timeline[1].remote.id",
    ),
    ("timeline:\n  - {at: 1m, remote: {action: stolen}}\n", 7, "timeline[0].remote.stolen"),
    (
        "timeline:\n  - {at: 1m, remote: {action: lock, id: a}}\nexpect:\n"
        "  - remote: {id: b, status: Success}\n",
        9,
        "expect[0].remote.id",
    ),
    (
        "timeline:\n  - {at: 1m, remote: {action: lock, id: a}}\nexpect:\n"
        "  - remote: {id: a, status: Success, cause: DoorsOpen}\n",
        9,
        "expect[0].remote.cause",
    ),
    (
        "timeline:\n  - {at: 1m, remote: {action: lock, id: a}}\nexpect:\n"
        "  - remote: {id: a, status: Accepted}\n",
        9,
        "expect[0].remote.status",
    ),
    (
        "timeline:\n  - {at: 1m, remote: {action: lock, id: a}}\nexpect:\n"
        "  - remote:\n      id: a\n      statuses: [Accepted, Sent]\n",
        11,
        "expect[0].remote.statuses[1]",
    ),
    (
        "timeline:\n  - {at: 1m, remote: {action: lock, id: a}}\nexpect:\n  - remote: {id: a}\n",
        9,
        "expect[0].remote",
    ),
]


@pytest.mark.parametrize(("text", "line", "field"), BAD)
def test_a_bad_remote_is_refused_with_file_line_and_field(
    text: str, line: int, field: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD + text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert (info.value.line, info.value.field) == (line, field), str(info.value)
    assert str(info.value).startswith(f"{path}:{line}")


_WORDS = st.sampled_from(
    ["action", "id", "beeps", "at", "immediate", "programs", "slot", "days", "preferences",
     "level", "type", "validity", "duration", "stolen", "activate", "enabled", "horn", "lock",
     "charge", "precond", "weekdays", "mon", "06:20", "Full"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-5, 2000) | _WORDS,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(_WORDS, children, max_size=5)
        ),
        max_leaves=15,
    ),
    st.dictionaries(_WORDS | st.sampled_from(["status", "cause", "statuses"]), _WORDS, max_size=4),
)
def test_arbitrary_remotes_never_crash_the_parser(remote: object, expect: object) -> None:
    text = (
        HEAD
        + "timeline:\n  - {at: 1m, remote: "
        + json.dumps(remote)
        + "}\nexpect:\n  - {remote: "
        + json.dumps(expect)
        + "}\n"
    )
    with contextlib.suppress(ScenarioError):
        parse_scenario(load_yaml(text, "fuzz.yaml"), "fuzz.yaml")


RUN = """\
format: tcusim-scenario/1
name: Remote commands on a parked car
seed: 4
start: 2026-01-13T07:00:00Z
duration: 2m
vehicle: {vin: VR3UHZKXZMT000032, energy: electric}
route: {waypoints: [[48.85, 2.35], [48.86, 2.34]]}
timeline:
  - {at: 5s, door: {trunk: open}}
  - {at: 10s, remote: {id: refused, action: lock}}
  - {at: 20s, door: {trunk: closed}}
  - {at: 30s, remote: {id: lock, action: unlock}}
  - {at: 40s, remote: {id: lock_again, action: lock}}
  - {at: 50s, remote: {id: horn, action: horn, beeps: 3}}
  - {at: 60s, remote: {id: immobilize, action: immobilize, activate: true}}
expect:
  - remote: {id: refused, status: Failed, cause: DoorsOpen, statuses: [Accepted, Failed]}
  - remote: {id: lock, statuses: [Accepted, SentToVehicle, Success]}
  - remote: {id: lock_again, status: Success}
  - remote: {id: horn, status: Success}
  - remote: {id: immobilize, status: Success}
  - value: {signal: Vehicle.Cabin.DoorsLockState, at: 35s, max: 0}
  - value: {signal: Vehicle.Cabin.DoorsLockState, at: 45s, min: 1, max: 1}
  - no_sample_lost: true
"""


def test_a_run_sends_the_remotes_and_checks_their_outcomes(tmp_path: Path, broker: object) -> None:
    path = tmp_path / "remote.yaml"
    path.write_text(RUN)
    scenario = load_scenario(path)
    record = ScenarioRunner(
        scenario,
        data_dir=tmp_path / "d",
        broker_url=broker.url,  # type: ignore[attr-defined]
    ).run()
    failed = [f"{e.name}: {e.detail}" for e in record.expectations if not e.passed]
    assert not failed, failed
    assert [r.id for r in record.remotes] == ["refused", "lock", "lock_again", "horn", "immobilize"]
    assert [r.order for r in record.remotes] == [1, 2, 3, 4, 5]
    for remote in record.remotes:  # signed with the simulated clock, answered in it
        assert remote.sent_ms == scenario.start_ms + next(
            a.at_ms for a in scenario.actions if a.kind == "remote" and a.value.id == remote.id
        )
        assert all(s.t_ms >= remote.sent_ms for s in remote.statuses)
    assert record.counters["remotes_received"] == 5
    html = render_report(record)
    assert "Remote commands" in html and "DoorsOpen" in html and "immobilize" in html


def test_a_failed_remote_expectation_fails_the_run(tmp_path: Path, broker: object) -> None:
    path = tmp_path / "remote.yaml"
    path.write_text(
        RUN.replace("remote: {id: horn, status: Success}", "remote: {id: horn, status: Failed}")
    )
    record = ScenarioRunner(
        load_scenario(path),
        data_dir=tmp_path / "d",
        broker_url=broker.url,  # type: ignore[attr-defined]
    ).run()
    assert [e.name for e in record.expectations if not e.passed] == [
        "remote(id=horn, status=Failed)"
    ]


def test_the_command_line_summary_lists_the_remotes(
    tmp_path: Path, broker: object, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "remote.yaml"
    path.write_text(RUN)
    argv = ["scenario", "run", str(path), "--data-dir", str(tmp_path / "d")]
    status = main([*argv, "--broker", broker.url])  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    assert status == 0, out
    rows = [line.split(None, 2) for line in out.splitlines() if line.strip().startswith("remote ")]
    assert [(r[1], r[2]) for r in rows] == [
        ("refused", "lock: Accepted > Failed (DoorsOpen)"),
        ("lock", "unlock: Accepted > SentToVehicle > Success"),
        ("lock_again", "lock: Accepted > SentToVehicle > Success"),
        ("horn", "horn: Accepted > SentToVehicle > Success"),
        ("immobilize", "immobilize: Accepted > SentToVehicle > Success"),
    ]
