"""The box's command settings, the car's actuation delays, its starting charge and the body
controller's faults in scenarios: the language, its refusals, and a short run on a real broker."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from can_dbc.network import CommandAction
from firmware_sim.command_link import CommandSettings
from firmware_sim.scenario.model import (
    BODY_ACTIONS,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
)
from firmware_sim.scenario.runner import ScenarioRunner
from firmware_sim.scenario.yamlpos import load_yaml
from firmware_sim.sim.commands import DEFAULT_DELAYS_MS

VEHICLE = "  vin: VR3UHZKXZMT000034\n  energy: electric\n"
HEAD = "format: tcusim-scenario/1\nname: x\nduration: 10m\nvehicle:\n" + VEHICLE
ROUTE = "route: {waypoints: [[48.85, 2.35], [48.86, 2.34]]}\n"
REMOTE = "timeline:\n  - {at: 1m, remote: {action: horn}}\n"
FAULT = "faults:\n  - {at: 1m, actuator_failure: "


def _parse(vehicle: str = "", faults: str = "", timeline: str = REMOTE) -> Scenario:
    text = HEAD + vehicle + ROUTE + timeline + faults
    return parse_scenario(load_yaml(text, "s.yaml"), "s.yaml")


def test_command_settings_actuation_and_charge_are_parsed() -> None:
    scenario = _parse(
        "  soc: 18.5\n"
        "  commands:\n"
        "    feedback_timeout: 2s\n"
        "    completion_timeout: 1m\n"
        "    wake_timeout: 15s\n"
        "    stay_awake: 90\n"
        "    wake_delay: 250ms\n"
        "    clock_skew: 0s\n"
        "    max_queue: 3\n"
        "    monthly_wakeups: 0\n"
        "  actuation: {default: 0s, precond: 2s, precond_stop: 1s, lock: 1.5}\n"
    )
    assert scenario.command_settings == CommandSettings(
        feedback_timeout_ms=2_000,
        completion_timeout_ms=60_000,
        wake_timeout_ms=15_000,
        stay_awake_ms=90_000,
        wake_delay_ms=250,
        clock_skew_ms=0,
        max_queue=3,
        monthly_wakeups=0,
    )
    delays = scenario.command_delays_ms
    assert delays is not None and set(delays) == set(CommandAction)
    assert delays[CommandAction.PRECOND_START] == 2_000  # the action's name: both requests
    assert delays[CommandAction.PRECOND_STOP] == 1_000  # the request's own name wins
    assert delays[CommandAction.LOCK] == 1_500
    assert delays[CommandAction.HORN] == delays[CommandAction.WAKE_UP] == 0
    assert scenario.soc_pct == 18.5


def test_left_out_settings_are_the_defaults() -> None:
    scenario = _parse("  commands: {monthly_wakeups: 2}\n  actuation: {charge: 3s}\n")
    assert scenario.command_settings == CommandSettings(monthly_wakeups=2)
    # Only the named requests change: the others keep the car's own delays.
    assert scenario.command_delays_ms == dict.fromkeys(BODY_ACTIONS["charge"], 3_000)
    assert set(BODY_ACTIONS["charge"]) < set(DEFAULT_DELAYS_MS)
    plain = _parse()
    assert plain.command_settings is None and plain.command_delays_ms is None
    assert plain.soc_pct is None


def test_body_faults_are_parsed() -> None:
    scenario = _parse(
        faults="faults:\n"
        "  - {at: 2m, body_deaf: 30s}\n"
        "  - at: 1m\n"
        "    actuator_failure: {action: [lock, unlock, lock], for: 1m, reason: jammed}\n"
        "  - {at: 3m, actuator_failure: {action: charge, for: 10s}}\n"
    )
    deaf, lock, charge = sorted(scenario.faults, key=lambda f: f.kind != "body_deaf")
    assert (deaf.kind, deaf.at_ms, deaf.duration_ms) == ("body_deaf", 120_000, 30_000)
    assert deaf.actions == ()
    assert lock.at_ms == 60_000 and lock.duration_ms == 60_000 and lock.line == 13
    assert lock.actions == (CommandAction.LOCK, CommandAction.UNLOCK) and lock.reason == "jammed"
    assert charge.actions == BODY_ACTIONS["charge"] and charge.reason == "actuator failure"


BAD: list[tuple[str, str, int, str]] = [
    # (vehicle lines, faults, line, field)
    ("  commands: {stay_awake: 1m, sleep: 2m}\n", "", 7, "vehicle.commands.sleep"),
    ("  commands:\n    wake_delay: soon\n", "", 8, "vehicle.commands.wake_delay"),
    ("  commands:\n    feedback_timeout: 0s\n", "", 8, "vehicle.commands.feedback_timeout"),
    ("  commands:\n    monthly_wakeups: -1\n", "", 8, "vehicle.commands.monthly_wakeups"),
    ("  commands:\n    max_queue: 0\n", "", 8, "vehicle.commands.max_queue"),
    ("  commands:\n    max_queue: true\n", "", 8, "vehicle.commands.max_queue"),
    ("  commands: [stay_awake]\n", "", 7, "vehicle.commands"),
    ("  actuation:\n    honk: 1s\n", "", 8, "vehicle.actuation.honk"),
    ("  actuation: {}\n", "", 7, "vehicle.actuation"),
    ("  actuation:\n    default: -1s\n", "", 8, "vehicle.actuation.default"),
    ("  soc: 120\n", "", 7, "vehicle.soc"),
    ("  soc: full\n", "", 7, "vehicle.soc"),
    ("", "faults:\n  - {at: 1m, body_deaf: 0s}\n", 11, "faults[0].body_deaf"),
    ("", "faults:\n  - {at: 1m, body_deaf: 10m}\n", 11, "faults[0].body_deaf"),
    ("", f"{FAULT}{{for: 1m}}}}\n", 11, "faults[0].actuator_failure.action"),
    ("", f"{FAULT}{{action: lock}}}}\n", 11, "faults[0].actuator_failure.for"),
    (
        "",
        "faults:\n  - at: 1m\n    actuator_failure:\n      action: open\n      for: 1m\n",
        13,
        "faults[0].actuator_failure.action",
    ),
    (
        "",
        "faults:\n  - at: 1m\n    actuator_failure:\n      action:\n"
        "        - lock\n        - honk\n      for: 1m\n",
        15,
        "faults[0].actuator_failure.action[1]",
    ),
    (
        "",
        "faults:\n  - at: 1m\n    actuator_failure:\n      action: lock\n      for: 1m\n"
        "      reason: ''\n",
        15,
        "faults[0].actuator_failure.reason",
    ),
    (
        "",
        "faults:\n  - at: 1m\n    actuator_failure: {action: lock, for: 1m, when: now}\n",
        12,
        "faults[0].actuator_failure.when",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("vehicle", "faults", "line", "field"), BAD)
def test_bad_settings_and_faults_are_refused_with_file_line_and_field(
    vehicle: str, faults: str, line: int, field: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD + vehicle + ROUTE + REMOTE + faults)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert (info.value.line, info.value.field) == (line, field), str(info.value)
    assert str(info.value).startswith(f"{path}:{line}")


def test_a_fuel_car_has_no_charge_to_set() -> None:
    with pytest.raises(ScenarioError, match="no traction battery") as info:
        parse_scenario(
            load_yaml(HEAD.replace("electric", "fuel") + "  soc: 50\n" + ROUTE + REMOTE, "f.yaml"),
            "f.yaml",
        )
    assert (info.value.line, info.value.field) == (7, "vehicle.soc")


@pytest.mark.parametrize(
    ("vehicle", "faults", "line", "field"),
    [
        ("  commands: {stay_awake: 1m}\n", "", 7, "vehicle.commands"),
        ("  actuation: {default: 0s}\n", "", 7, "vehicle.actuation"),
        ("", "faults:\n  - {at: 1m, link_loss: 1m}\n  - {at: 2m, body_deaf: 1m}\n", 12,
         "faults[1].body_deaf"),
    ],
)  # fmt: skip
def test_command_side_settings_need_a_remote(
    vehicle: str, faults: str, line: int, field: str
) -> None:
    with pytest.raises(ScenarioError, match="needs a remote action") as info:
        _parse(vehicle, faults, timeline="timeline:\n  - {at: 1m, ignition: on}\n")
    assert (info.value.line, info.value.field) == (line, field)


_MS = st.integers(1, 10 * 86_400_000)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "feedback_timeout": _MS,
            "completion_timeout": _MS,
            "wake_timeout": _MS,
            "stay_awake": _MS | st.just(0),
            "wake_delay": _MS | st.just(0),
            "clock_skew": _MS | st.just(0),
        },
    ),
    st.dictionaries(st.sampled_from(sorted(BODY_ACTIONS)), st.integers(0, 3_600_000)),
)
def test_durations_in_ms_reach_the_box_and_the_car_as_written(
    durations: dict[str, int], delays: dict[str, int]
) -> None:
    commands = ", ".join(f"{k}: {ms}ms" for k, ms in durations.items())
    actuation = ", ".join(f"{k}: {ms}ms" for k, ms in delays.items())
    scenario = _parse(
        (f"  commands: {{{commands}}}\n" if durations else "")
        + (f"  actuation: {{{actuation}}}\n" if delays else "")
    )
    got = scenario.command_settings
    if durations:
        assert got is not None
        for key, ms in durations.items():
            assert getattr(got, f"{key}_ms") == ms
    else:
        assert got is None
    want: dict[CommandAction, int] = {}
    for key in sorted(delays, key=lambda k: len(BODY_ACTIONS[k]) == 1):  # single ones win
        want.update(dict.fromkeys(BODY_ACTIONS[key], delays[key]))
    assert (scenario.command_delays_ms or {}) == want


_WORDS = st.sampled_from(
    ["commands", "actuation", "default", "stay_awake", "monthly_wakeups", "max_queue",
     "feedback_timeout", "action", "for", "reason", "lock", "unlock", "precond", "charge_stop",
     "1m", "0s", "-5s", "10ms", "soc", "body_deaf", "actuator_failure"]
)  # fmt: skip
_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 200_000) | st.floats(-1, 1e6) | _WORDS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_WORDS, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_VALUES, _VALUES, _VALUES, _VALUES)
def test_arbitrary_settings_and_body_faults_never_crash_the_parser(
    commands: object, actuation: object, soc: object, fault: object
) -> None:
    text = (
        HEAD
        + f"  commands: {json.dumps(commands)}\n"
        + f"  actuation: {json.dumps(actuation)}\n"
        + f"  soc: {json.dumps(soc)}\n"
        + ROUTE
        + REMOTE
        + f"faults:\n  - {{at: 1m, actuator_failure: {json.dumps(fault)}}}\n"
        + f"  - {{at: 2m, body_deaf: {json.dumps(fault)}}}\n"
    )
    with contextlib.suppress(ScenarioError):
        parse_scenario(load_yaml(text, "fuzz.yaml"), "fuzz.yaml")


RUN = """\
format: tcusim-scenario/1
name: The body controller misbehaves; the box sleeps with one wake-up a month
seed: 5
start: 2026-01-14T07:00:00Z
duration: 2m40s
vehicle:
  vin: VR3UHZKXZMT000035
  energy: electric
  commands:
    feedback_timeout: 2s
    completion_timeout: 10s
    stay_awake: 20s
    wake_delay: 3s
    monthly_wakeups: 1
  actuation: {default: 0s, horn: 20s, unlock: 4s}
route: {waypoints: [[48.85, 2.35], [48.86, 2.34]]}
timeline:
  - {at: 5s, remote: {id: slow_horn, action: horn}}
  - {at: 30s, remote: {id: deaf_lights, action: lights}}
  - {at: 45s, remote: {id: jammed, action: unlock}}
  - {at: 1m, remote: {id: unlock, action: unlock}}
  - {at: 1m45s, remote: {id: woken, action: lock}}
  - {at: 2m30s, remote: {id: refused, action: horn}}
faults:
  - {at: 28s, body_deaf: 12s}
  - {at: 42s, actuator_failure: {action: [lock, unlock], for: 13s, reason: jammed}}
expect:
  - remote: {id: slow_horn, cause: VehicleConnectionTimeout}
  - remote: {id: deaf_lights, cause: VehicleConnectionTimeout}
  - remote: {id: jammed, cause: VehicleError, statuses: [Accepted, SentToVehicle, Failed]}
  - remote: {id: unlock, status: Success}
  - remote: {id: woken, statuses: [Accepted, WakingUpVehicle, SentToVehicle, Success]}
  - remote: {id: refused, cause: TooManyWakeUpsOverMonth}
"""


def test_a_run_applies_the_settings_and_the_body_faults(tmp_path: Path, broker: object) -> None:
    path = tmp_path / "body.yaml"
    path.write_text(RUN)
    record = ScenarioRunner(
        load_scenario(path),
        data_dir=tmp_path / "d",
        broker_url=broker.url,  # type: ignore[attr-defined]
    ).run()
    failed = [f"{e.name}: {e.detail}" for e in record.expectations if not e.passed]
    assert not failed, failed
    remotes = {r.id: r for r in record.remotes}
    # The horn takes 20 s, longer than the box waits for a result once it is in progress;
    # the lights were never heard.
    assert remotes["slow_horn"].statuses[-1].detail == "no_result"
    assert remotes["deaf_lights"].statuses[-1].detail == "no_feedback"
    unlock = remotes["unlock"].statuses
    assert unlock[-1].t_ms - unlock[1].t_ms >= 4_000  # the unlock's actuation delay
    assert record.counters["body_ignored"] >= 1
    assert record.counters["box_sleeps"] == 2 and record.counters["box_wakes"] == 1
    notes = [e.text for e in record.timeline if e.kind == "fault"]
    assert "actuator_failure (lock, unlock: jammed) begins" in notes
    assert "body_deaf ends" in notes


SHORT = """\
format: tcusim-scenario/1
name: A short parked run
seed: 2
start: 2026-01-14T07:00:00Z
duration: 30s
vehicle: {vin: VR3UHZKXZMT000036, energy: electric}
route: {waypoints: [[48.85, 2.35], [48.86, 2.34]]}
timeline:
  - {at: 10s, remote: {id: horn, action: horn}}
expect:
  - remote: {id: horn, status: Success}
  - rejected: {max: 0}
"""


def test_a_run_does_not_inherit_the_broker_session_of_an_earlier_one(tmp_path: Path) -> None:
    """An earlier run in the same folder cut short leaves uploads queued for the gateway in
    the runner's broker: the next run starts its broker afresh and never sees them."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    from firmware_sim.payload import Privacy, Trigger, Uplink, encode_uplink  # noqa: PLC0415
    from gateway.broker import start_test_broker  # noqa: PLC0415

    path = tmp_path / "short.yaml"
    path.write_text(SHORT)
    scenario = load_scenario(path)
    data = tmp_path / "d"
    first = ScenarioRunner(scenario, data_dir=data).run()  # the gateway's session persists
    assert first.passed
    stale = Uplink(
        scenario.config.vin, 0, scenario.start_ms, Trigger.PERIODIC, Privacy.NONE, (), boot=7
    )
    broker = start_test_broker(data / "broker")
    try:  # what a box published after the gateway had gone: queued for it, then saved
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="stale-box")
        host, port = broker.url.removeprefix("mqtt://").rsplit(":", 1)
        client.connect(host, int(port))
        client.loop_start()
        topic = f"tcusim/v1/{scenario.config.vin}/up"
        client.publish(topic, encode_uplink(stale), qos=1).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
    finally:
        broker.close()
    second = ScenarioRunner(scenario, data_dir=data).run()
    failed = [f"{e.name}: {e.detail}" for e in second.expectations if not e.passed]
    assert not failed, failed
    assert second.counters["rejected"] == 0 and second.counters["duplicates_at_gateway"] == 0
