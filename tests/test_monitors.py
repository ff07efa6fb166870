"""Callbacks and monitors: the parsers, boolExp, and the engine on real stored payloads."""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from can_dbc.catalog import Scope, default_catalog
from firmware_sim.payload import Privacy, Series, Trigger, Uplink, encode_uplink, quantize
from gateway.monitors import (
    CURSOR_KIND,
    STATE_KIND,
    MonitorEngine,
    MonitorError,
    parse_bool_exp,
    parse_callback,
    parse_monitor,
    required_scopes,
)
from gateway.store import Record, SqliteStore, rfc3339

VIN = "VR3UHZKXZMT900009"
T0 = 1_783_058_400_000  # 2026-07-03T06:00:00Z, a Friday (08:00 in Paris)
CATALOG = default_catalog()

# -- parsers -------------------------------------------------------------------------------------


def callback_body(**webhook: Any) -> dict[str, Any]:
    hook = {"target": "https://example.test/hook", "name": "desk", **webhook}
    return {"label": "desk", "type": ["Monitor", "Remote"], "callback": {"webhook": hook}}


def battery_low(**extra: Any) -> dict[str, Any]:
    return {
        "label": "battery low",
        "triggerParam": {
            "triggers": [
                {
                    "name": "low",
                    "data": {
                        "data": "vehicle.energy.electric.level",
                        "op": "lowerThan",
                        "value": ["20"],
                    },
                }
            ],
            "boolExp": "low",
        },
        **extra,
    }


FULL_MONITOR = {
    "label": "out of town at night with a low battery",
    "subscribeParam": {
        "refreshEvent": 600,
        "callbackAttributes": {"webhook": [{"type": "Query", "key": "m", "value": "$monitorId"}]},
    },
    "attributes": [{"type": "Header", "key": "X-Monitor", "value": "$monitorLabel"}],
    "extendedEventParam": ["vehicle.position", "vehicle.alerts"],
    "triggerParam": {
        "triggers": [
            {
                "name": "z1",
                "zone": {
                    "transition": "Out",
                    "place": {"radius": 20, "center": {"longitude": 2.333333, "latitude": 48.87}},
                },
            },
            {
                "name": "t1",
                "time": {
                    "times": [
                        {
                            "recurrence": "Daily",
                            "start": "PT20H",
                            "duration": "PT10H",
                            "occurence": {"day": ["Mon", "Fri"]},
                        }
                    ],
                    "timeZone": "Europe/Paris",
                },
            },
            {
                "name": "low",
                "data": {
                    "data": "vehicle.energy.electric.level",
                    "op": "lowerThan",
                    "value": ["20"],
                },
            },
            {
                "name": "plug",
                "data": {
                    "data": "vehicle.energy.charging.status",
                    "op": "equalsTo",
                    "value": ["inprogress"],
                    "previous": {"op": "includedIn", "value": ["Stopped", "Disconnected"]},
                },
            },
        ],
        "boolExp": "(z1 & t1 & low) | plug",
    },
}


def test_a_callback_is_normalised() -> None:
    body = parse_callback(
        callback_body(attributes=[{"type": "Header", "key": "Authorization", "value": "Bearer x"}])
    )
    assert body == {
        "label": "desk",
        "type": ["Monitor", "Remote"],
        "callback": {
            "webhook": {
                "target": "https://example.test/hook",
                "name": "desk",
                "attributes": [{"type": "Header", "key": "Authorization", "value": "Bearer x"}],
            }
        },
    }
    bare = parse_callback({"callback": {"webhook": {"target": "http://h/x", "name": "n"}}})
    assert bare["type"] == ["Monitor", "Remote"] and bare["label"] == ""


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        ({"callback": {"pushnotif": {"devices": ["d"]}}}, "callback.pushnotif", "not supported"),
        ({"callback": {"websocket": {"target": "ws://x"}}}, "callback.websocket", "not supported"),
        ({"callback": {}}, "callback.webhook", "missing"),
        ({**callback_body(), "colour": 1}, "colour", "unknown field"),
        ({**callback_body(), "type": ["Alarm"]}, "type[0]", "not one of"),
        ({**callback_body(), "type": ["Remote", "Remote"]}, "type[1]", "twice"),
        (callback_body(target="ftp://example.test/x"), "callback.webhook.target", "http"),
        (callback_body(target="https:///nohost"), "callback.webhook.target", "no host"),
        (callback_body(target="https://u:p@h/x"), "callback.webhook.target", "credentials"),
        (callback_body(target="https://h/x y"), "callback.webhook.target", "spaces"),
        (callback_body(target="https://h:99999/x"), "callback.webhook.target", "not a URL"),
        (callback_body(name=""), "callback.webhook.name", "empty"),
        (
            callback_body(attributes=[{"type": "Header", "key": "Content-Type", "value": "x"}]),
            "callback.webhook.attributes[0].key",
            "set by the gateway",
        ),
        (
            callback_body(attributes=[{"type": "Header", "key": "X A", "value": "x"}]),
            "callback.webhook.attributes[0].key",
            "header name",
        ),
        (
            callback_body(attributes=[{"type": "Header", "key": "X-A", "value": "a\r\nB: c"}]),
            "callback.webhook.attributes[0]",
            "control characters",
        ),
        (
            callback_body(attributes=[{"type": "Header", "key": "X-A", "value": "à"}]),
            "callback.webhook.attributes[0].value",
            "printable ASCII",
        ),
        (
            callback_body(attributes=[{"type": "Cookie", "key": "a", "value": "b"}]),
            "callback.webhook.attributes[0].type",
            "not one of",
        ),
        (
            callback_body(attributes=[{"type": "Body", "key": "a"}]),
            "callback.webhook.attributes[0].value",
            "missing",
        ),
        ([], "", "expected an object"),
    ],
)
def test_a_bad_callback_is_refused_with_its_field(body: Any, path: str, words: str) -> None:
    with pytest.raises(MonitorError) as info:
        parse_callback(body)
    assert info.value.path == path, str(info.value)
    assert words in info.value.message


def test_a_monitor_is_normalised_and_reparses_to_itself() -> None:
    parsed = parse_monitor(FULL_MONITOR)
    assert parsed["triggerParam"]["triggers"][3]["data"]["value"] == ["InProgress"]
    assert parsed["triggerParam"]["triggers"][1]["time"]["timeZone"] == "Europe/Paris"
    assert parse_monitor(parsed) == parsed
    json.dumps(parsed)
    assert required_scopes(parsed) == {Scope.POSITION, Scope.TELEMETRY, Scope.ALERT}
    defaults = parse_monitor(
        battery_low(
            triggerParam={
                "triggers": [
                    {"name": "t", "time": {"times": [{"start": "PT8H", "duration": "PT1H"}]}}
                ],
                "boolExp": "t",
            }
        )
    )
    (trigger,) = defaults["triggerParam"]["triggers"]
    assert trigger["time"] == {
        "times": [{"recurrence": "Daily", "start": "PT8H", "duration": "PT1H"}],
        "timeZone": "Europe/Paris",
    }
    assert defaults["attributes"] == [] and defaults["extendedEventParam"] == []


def with_trigger(trigger: Mapping[str, Any], exp: str = "a") -> dict[str, Any]:
    return {"label": "x", "triggerParam": {"triggers": [{"name": "a", **trigger}], "boolExp": exp}}


def data(name: str, op: str, value: Sequence[str] | None = None, **more: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"data": name, "op": op, **more}
    if value is not None:
        spec["value"] = list(value)
    return {"data": spec}


ZONE = {
    "zone": {"transition": "In", "place": {"radius": 1, "center": {"longitude": 2, "latitude": 48}}}
}


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        ({"triggerParam": {}}, "label", "missing"),
        (battery_low(subscribeParam={"refreshEvent": 59}), "subscribeParam.refreshEvent", "60"),
        (
            battery_low(subscribeParam={"refreshEvent": 60.5}),
            "subscribeParam.refreshEvent",
            "whole",
        ),
        (battery_low(subscribeParam={}), "subscribeParam", "give refreshEvent"),
        (
            battery_low(subscribeParam={"callbackAttributes": {"pushnotif": []}}),
            "subscribeParam.callbackAttributes.pushnotif",
            "not supported",
        ),
        (
            battery_low(attributes=[{"type": "Query", "key": "a", "value": "b"}]),
            "attributes[0].type",
            "not one of Header, Body",
        ),
        (
            battery_low(extendedEventParam=["vehicle.status"]),
            "extendedEventParam[0]",
            "not supported",
        ),
        (
            battery_low(extendedEventParam=["vehicle.telemetry.vehicle.battery"]),
            "extendedEventParam[0]",
            "not supported",
        ),
        (battery_low(extendedEventParam=["vehicle.wheels"]), "extendedEventParam[0]", "not one of"),
        (
            battery_low(extendedEventParam=["vehicle.position", "vehicle.position"]),
            "extendedEventParam[1]",
            "twice",
        ),
        (
            {"label": "x", "triggerParam": {"triggers": [], "boolExp": "a"}},
            "triggerParam.triggers",
            "1 to 5",
        ),
        (
            {
                "label": "x",
                "triggerParam": {
                    "triggers": [{"name": f"a{i}", **ZONE} for i in range(6)],
                    "boolExp": "a0",
                },
            },
            "triggerParam.triggers",
            "1 to 5",
        ),
        (
            {
                "label": "x",
                "triggerParam": {"triggers": [{"name": "a", **ZONE}] * 2, "boolExp": "a"},
            },
            "triggerParam.triggers[1].name",
            "again",
        ),
        (
            with_trigger({**ZONE, **data("vehicle.odometer", "lowerThan", ["1"])}),
            "triggerParam.triggers[0]",
            "exactly one",
        ),
        (with_trigger({}), "triggerParam.triggers[0]", "exactly one"),
        (
            with_trigger(data("vehicle.trip.start", "onChange")),
            "triggerParam.triggers[0].data.data",
            "not supported",
        ),
        (
            with_trigger(data("vehicle.wings", "onChange")),
            "triggerParam.triggers[0].data.data",
            "not a data operand",
        ),
        (
            with_trigger(data("vehicle.odometer", "onChange")),
            "triggerParam.triggers[0].data.op",
            "takes",
        ),
        (
            with_trigger(data("vehicle.odometer", "lowerThan", ["1", "2"])),
            "triggerParam.triggers[0].data.value",
            "exactly one",
        ),
        (
            with_trigger(data("vehicle.odometer", "lowerThan", ["far"])),
            "triggerParam.triggers[0].data.value[0]",
            "not a number",
        ),
        (
            with_trigger(data("vehicle.odometer", "lowerThan", ["nan"])),
            "triggerParam.triggers[0].data.value[0]",
            "finite",
        ),
        (
            with_trigger(data("vehicle.kinetic.moving", "equalsTo", ["yes"])),
            "triggerParam.triggers[0].data.value[0]",
            "true or false",
        ),
        (
            with_trigger(data("privacy.state", "includedIn", [])),
            "triggerParam.triggers[0].data.value",
            "1 to 20",
        ),
        (
            with_trigger(data("privacy.state", "onChange", ["Full"])),
            "triggerParam.triggers[0].data.value",
            "no value",
        ),
        (
            with_trigger(data("vehicle.alert", "equalsTo", ["Sneezing"])),
            "triggerParam.triggers[0].data.value[0]",
            "AlertMsgEnum",
        ),
        (
            with_trigger(
                data(
                    "vehicle.odometer",
                    "lowerThan",
                    ["3"],
                    previous={"op": "equalsTo", "value": ["1"]},
                )
            ),
            "triggerParam.triggers[0].data.previous",
            "no previous",
        ),
        (
            with_trigger({"zone": {"transition": "Out", "circle": {}}}),
            "triggerParam.triggers[0].zone.circle",
            "place",
        ),
        (
            with_trigger(
                {
                    "zone": {
                        "transition": "In",
                        "place": {"radius": 0, "center": {"longitude": 2, "latitude": 48}},
                    }
                }
            ),
            "triggerParam.triggers[0].zone.place.radius",
            "more than 0",
        ),
        (
            with_trigger(
                {
                    "zone": {
                        "transition": "In",
                        "place": {"radius": 1, "center": {"longitude": 2, "latitude": 91}},
                    }
                }
            ),
            "triggerParam.triggers[0].zone.place.center.latitude",
            "-90..90",
        ),
        (
            with_trigger(
                {
                    "zone": {
                        "transition": "Across",
                        "place": {"radius": 1, "center": {"longitude": 2, "latitude": 1}},
                    }
                }
            ),
            "triggerParam.triggers[0].zone.transition",
            "In, Out",
        ),
        (
            with_trigger(
                {
                    "time": {
                        "times": [{"start": "PT8H", "duration": "PT1H"}],
                        "timeZone": "Mars/Olympus",
                    }
                }
            ),
            "triggerParam.triggers[0].time.timeZone",
            "not a known time zone",
        ),
        (
            with_trigger(
                {
                    "time": {
                        "times": [{"start": "PT8H", "duration": "PT1H"}],
                        "timeZone": "../etc/passwd",
                    }
                }
            ),
            "triggerParam.triggers[0].time.timeZone",
            "not a time zone name",
        ),
        (
            with_trigger({"time": {"times": [{"start": "PT8H"}]}}),
            "triggerParam.triggers[0].time.times[0].duration",
            "Daily entry needs it",
        ),
        (
            with_trigger({"time": {"times": [{"start": "PT24H", "duration": "PT1H"}]}}),
            "triggerParam.triggers[0].time.times[0].start",
            "PT23H59M59S",
        ),
        (
            with_trigger({"time": {"times": [{"start": "8h", "duration": "PT1H"}]}}),
            "triggerParam.triggers[0].time.times[0].start",
            "not a duration",
        ),
        (
            with_trigger(
                {
                    "time": {
                        "times": [
                            {
                                "recurrence": "None",
                                "start": "2026-01-01T00:00:00",
                                "duration": "PT1H",
                            }
                        ]
                    }
                }
            ),
            "triggerParam.triggers[0].time.times[0].start",
            "offset",
        ),
        (
            with_trigger(
                {
                    "time": {
                        "times": [
                            {
                                "recurrence": "None",
                                "start": "2026-01-01T00:00:00Z",
                                "occurence": {"day": ["Mon"]},
                            }
                        ]
                    }
                }
            ),
            "triggerParam.triggers[0].time.times[0].occurence",
            "Daily",
        ),
        (
            with_trigger(
                {
                    "time": {
                        "times": [
                            {"start": "PT1H", "duration": "PT1H", "occurence": {"week": ["w9-w2"]}}
                        ]
                    }
                }
            ),
            "triggerParam.triggers[0].time.times[0].occurence.week[0]",
            "upwards",
        ),
        (with_trigger(ZONE, "a & b"), "triggerParam.boolExp", "'b' is not the name of a trigger"),
        (with_trigger(ZONE, "a | !a"), "triggerParam.boolExp", "always true"),
        (with_trigger(ZONE, "a & !(a)"), "triggerParam.boolExp", "always false"),
        (
            {
                "label": "x",
                "triggerParam": {
                    "triggers": [{"name": "a", **ZONE}, {"name": "b", **ZONE}],
                    "boolExp": "a",
                },
            },
            "triggerParam.boolExp",
            "'b' is not used",
        ),
        (
            with_trigger(ZONE, "a &"),
            "triggerParam.boolExp",
            "at position 4: expected a trigger name",
        ),
    ],
)
def test_a_bad_monitor_is_refused_with_its_field(body: Any, path: str, words: str) -> None:
    with pytest.raises(MonitorError) as info:
        parse_monitor(body)
    assert info.value.path == path, str(info.value)
    assert words in info.value.message, str(info.value)


def test_trigger_names_follow_the_pattern() -> None:
    body = {
        "label": "x",
        "triggerParam": {"triggers": [{"name": "9lives", **ZONE}], "boolExp": "a"},
    }
    with pytest.raises(MonitorError, match="a letter, then"):
        parse_monitor(body)


# -- boolExp -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty expression"),
        ("   ", "empty expression"),
        ("a b", "at position 3: expected '&', '|' or the end, found 'b'"),
        ("(a | b", "at position 7: expected ')' to close the '(' at 1, found the end"),
        ("a | b)", "at position 6: expected '&', '|' or the end, found ')'"),
        ("a && b", "at position 4: expected a trigger name, '!' or '(', found '&'"),
        ("a + b", "at position 3: unexpected character '+'"),
        ("!" * 60 + "a", "nested more than 50 deep"),
        ("(" * 5000, "longer than 1000 characters"),
    ],
)
def test_bool_exp_faults_say_where(text: str, message: str) -> None:
    with pytest.raises(MonitorError) as info:
        parse_bool_exp(text)
    assert info.value.path == "boolExp" and message in info.value.message


def test_bool_exp_precedence_is_not_and_or() -> None:
    exp = parse_bool_exp("a | b & !c", ["a", "b", "c"])
    assert exp.names == {"a", "b", "c"}
    for a, b, c in itertools.product([False, True], repeat=3):
        assert exp.evaluate({"a": a, "b": b, "c": c}) == (a or (b and not c))
    reference = "((z1 & t1) | (z2 & !t1) | (f & z1) | (a & (z1|t))  | (o & (z1 | z2)))"
    assert parse_bool_exp(reference).names == {"z1", "t1", "z2", "f", "a", "t", "o"}


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab() &|!\t\n-_.9x", max_size=40) | st.text(max_size=40))
def test_any_text_is_an_expression_or_a_monitor_error(text: str) -> None:
    with contextlib.suppress(MonitorError):
        parse_bool_exp(text, ["a", "b", "ab"])


NAMES = ["a", "b", "c", "d", "e"]
Formula = tuple[str, str, str]  # our text with as few parentheses as our precedence allows,
# Python's fully parenthesised text, and the kind of the top node (var, not, and, or, paren)


def _operand(f: Formula, kinds: tuple[str, ...]) -> str:
    return f[0] if f[2] in kinds else f"({f[0]})"


def _not(f: Formula) -> Formula:
    return (f"!{_operand(f, ('var', 'not', 'paren'))}", f"(not {f[1]})", "not")


def _and(p: tuple[Formula, Formula]) -> Formula:
    left, right = (_operand(f, ("var", "not", "paren", "and")) for f in p)
    return (f"{left} & {right}", f"({p[0][1]} and {p[1][1]})", "and")


def _or(p: tuple[Formula, Formula]) -> Formula:
    return (f"{p[0][0]}|{p[1][0]}", f"({p[0][1]} or {p[1][1]})", "or")


formulas = st.recursive(
    st.sampled_from(NAMES).map(lambda n: (n, n, "var")),
    lambda inner: st.one_of(
        inner.map(_not),
        inner.map(lambda f: (f"( {f[0]} )", f[1], "paren")),
        st.tuples(inner, inner).map(_and),
        st.tuples(inner, inner).map(_or),
    ),
    max_leaves=12,
)


def python_value(python: str, values: dict[str, bool]) -> bool:
    """Python's own value of the formula."""
    return bool(eval(python, {}, values))


@settings(max_examples=300, deadline=None)
@given(formulas)
def test_evaluation_equals_pythons(formula: Formula) -> None:
    ours, python, _ = formula
    exp = parse_bool_exp(ours)
    for bits in itertools.product([False, True], repeat=len(NAMES)):
        values = dict(zip(NAMES, bits, strict=True))
        assert exp.evaluate(values) == python_value(python, values), ours


@settings(max_examples=300, deadline=None)
@given(formulas)
def test_constant_expressions_are_refused_and_others_kept(formula: Formula) -> None:
    ours, python, _ = formula
    used = sorted(parse_bool_exp(ours).names)
    results = {
        python_value(python, dict(zip(used, bits, strict=True)))
        for bits in itertools.product([False, True], repeat=len(used))
    }
    if len(results) == 2:
        parse_bool_exp(ours, NAMES)
    else:
        with pytest.raises(MonitorError, match="always"):
            parse_bool_exp(ours, NAMES)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "label",
                    "type",
                    "callback",
                    "webhook",
                    "target",
                    "name",
                    "attributes",
                    "key",
                    "value",
                    "subscribeParam",
                    "refreshEvent",
                    "callbackAttributes",
                    "extendedEventParam",
                    "triggerParam",
                    "triggers",
                    "boolExp",
                    "zone",
                    "time",
                    "data",
                    "op",
                    "previous",
                    "transition",
                    "place",
                    "radius",
                    "center",
                    "longitude",
                    "latitude",
                    "times",
                    "timeZone",
                    "recurrence",
                    "start",
                    "duration",
                    "occurence",
                    "day",
                    "week",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_arbitrary_documents_never_crash_the_parsers(document: Any) -> None:
    for parse in (parse_monitor, parse_callback):
        with contextlib.suppress(MonitorError):
            parse(document)


def _mutations() -> st.SearchStrategy[Any]:
    """The full example with one value somewhere replaced by an arbitrary one."""

    def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        out = [prefix]
        if isinstance(doc, dict):
            for k, v in doc.items():
                out += paths(v, (*prefix, k))
        elif isinstance(doc, list):
            for i, v in enumerate(doc):
                out += paths(v, (*prefix, i))
        return out

    def mutate(path: tuple[Any, ...], value: Any) -> Any:
        doc = copy.deepcopy(FULL_MONITOR)
        if not path:
            return value
        target: Any = doc
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        return doc

    return st.builds(mutate, st.sampled_from(paths(FULL_MONITOR)[1:]), json_values)


@settings(max_examples=500, deadline=None)
@given(_mutations())
def test_near_valid_monitors_parse_or_are_refused(document: Any) -> None:
    try:
        parsed = parse_monitor(document)
    except MonitorError:
        return
    assert parse_monitor(parsed) == parsed


# -- the engine ----------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "gateway.sqlite3") as s:
        yield s


class Car:
    """Uploads of one test vehicle, stored as the ingest would."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.seq = 0

    def send(
        self,
        samples: Mapping[int, Sequence[tuple[int, float]]],
        *,
        privacy: Privacy = Privacy.NONE,
        base: int | None = None,
    ) -> None:
        times = [t for points in samples.values() for t, _ in points]
        base_ms = base if base is not None else (min(times) if times else T0)
        series = []
        for sid, points in sorted(samples.items()):
            spec = CATALOG.get(sid)
            assert spec is not None
            series.append(
                Series(
                    sid,
                    spec.exp,
                    tuple(t - base_ms for t, _ in points),
                    tuple(quantize(v, spec.exp) for _, v in points),
                )
            )
        raw = encode_uplink(
            Uplink(VIN, self.seq, base_ms, Trigger.PERIODIC, privacy, tuple(series), boot=1)
        )
        self.seq += 1
        result = self.store.ingest(VIN, raw, base_ms)
        assert result.ok, result


def add_callback(store: SqliteStore, status: str = "Running") -> None:
    body = parse_callback(
        callback_body(attributes=[{"type": "Body", "key": "vin", "value": "$vin"}])
    )
    store.put_record(
        Record("callback", "cb1", "user:u1", None, {**body, "status": status, "secret": "s"}, 0, 0)
    )


def add_monitor(
    store: SqliteStore, param: Mapping[str, Any], mid: str = "m1", status: str = "Running"
) -> None:
    body = {"callbackId": "cb1", "monitor": parse_monitor(param), "status": status}
    store.put_record(Record("monitor", mid, "user:u1", VIN, body, 0, 0))


def sent(store: SqliteStore) -> list[dict[str, Any]]:
    return [json.loads(d.body) for d in store.deliveries()]


def engine_for(store: SqliteStore, clock: Clock | None = None) -> MonitorEngine:
    return MonitorEngine(store, clock_ms=clock or Clock(T0 + 86_400_000))


def at(minutes: float) -> int:
    return T0 + round(minutes * 60_000)


def test_battery_under_20_notifies_on_each_fall(store: SqliteStore) -> None:
    add_callback(store)
    add_monitor(store, battery_low())
    car, engine = Car(store), engine_for(store)
    car.send({22: [(at(0), 22.0), (at(1), 20.0), (at(2), 19.9), (at(3), 19.5)]})
    assert engine.step() == 1
    car.send({22: [(at(4), 21.0), (at(5), 18.0)]})
    assert engine.step() == 1
    assert engine.step() == 0
    first, second = sent(store)
    assert first == {
        "callbackId": "cb1",
        "attributes": [{"key": "vin", "value": VIN}],
        "type": "Monitor",
        "date": rfc3339(at(2)),
        "monitorEvent": {
            "monitorId": "m1",
            "values": [
                {
                    "data": "vehicle.energy.electric.level",
                    "value": {"type": "string", "body": {"literalValue": "19.9"}},
                }
            ],
            "extensions": [],
            "refresh": False,
        },
    }
    assert second["date"] == rfc3339(at(5))
    assert second["monitorEvent"]["values"][0]["value"]["body"]["literalValue"] == "18"
    state = store.get_record(STATE_KIND, "m1")
    assert state is not None and state.body["notifications"] == 2


def test_refresh_reminds_while_true_on_the_gateway_clock(store: SqliteStore) -> None:
    add_callback(store)
    add_monitor(store, battery_low(subscribeParam={"refreshEvent": 60}))
    car, clock = Car(store), Clock(T0 + 3_600_000)
    engine = engine_for(store, clock)
    car.send({22: [(at(0), 19.0)]})
    assert engine.step() == 1
    clock.now += 59_999
    assert engine.step() == 0
    clock.now += 1
    assert engine.step() == 1
    clock.now += 60_000 * 3 + 5  # late: one reminder, not three
    assert engine.step() == 1
    car.send({22: [(at(1), 25.0)]})
    clock.now += 600_000
    assert engine.step() == 0
    events = [m["monitorEvent"]["refresh"] for m in sent(store)]
    assert events == [False, True, True]
    assert sent(store)[1]["date"] == rfc3339(T0 + 3_600_000 + 60_000)
    assert sent(store)[1]["monitorEvent"]["values"][0]["value"]["body"]["literalValue"] == "19"


def test_zone_out_fires_on_crossing_only(store: SqliteStore) -> None:
    add_callback(store)
    zone = {
        "label": "left home",
        "extendedEventParam": ["vehicle.position"],
        "triggerParam": {
            "triggers": [
                {
                    "name": "home",
                    "zone": {
                        "transition": "Out",
                        "place": {"radius": 1, "center": {"longitude": 2.0, "latitude": 48.0}},
                    },
                }
            ],
            "boolExp": "home",
        },
    }
    add_monitor(store, zone)
    car, engine = Car(store), engine_for(store)
    # About 1.11 km per 0.01 degree of latitude: 48.005 inside, 48.0095 outside.
    car.send({40: [(at(0), 48.02), (at(1), 48.005)], 41: [(at(0), 2.0), (at(1), 2.0)]})
    assert engine.step() == 0  # first seen outside: no crossing yet; then back inside
    car.send(
        {
            40: [(at(2), 48.0095), (at(3), 48.02)],
            41: [(at(2), 2.0), (at(3), 2.0)],
            42: [(at(2), 35)],
        }
    )
    assert engine.step() == 1
    car.send({40: [(at(4), 48.0), (at(5), 47.98)], 41: [(at(4), 2.0), (at(5), 2.0)]})
    assert engine.step() == 1
    first, second = sent(store)
    assert first["date"] == rfc3339(at(2)) and second["date"] == rfc3339(at(5))
    assert first["monitorEvent"]["values"] == []
    (extension,) = first["monitorEvent"]["extensions"]
    assert extension == {
        "type": "vehicle.position",
        "body": [
            {
                "position": {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [2.0, 48.0095, 35.0]},
                    "properties": {"createdAt": rfc3339(at(2))},
                }
            }
        ],
    }


def test_privacy_withholds_positions_from_notifications(store: SqliteStore) -> None:
    add_callback(store)
    add_monitor(store, battery_low(extendedEventParam=["vehicle.position", "vehicle.doorsState"]))
    car, engine = Car(store), engine_for(store)
    car.send({40: [(at(0), 48.0)], 41: [(at(0), 2.0)], 11: [(at(0), 1)], 22: [(at(0), 30.0)]})
    car.send({22: [(at(1), 19.0)]}, privacy=Privacy.GEOLOCATION)
    assert engine.step() == 1
    car.send({22: [(at(2), 30.0)]})
    car.send({22: [(at(3), 18.0)]})
    assert engine.step() == 1
    private, public = sent(store)
    position, doors = private["monitorEvent"]["extensions"]
    assert position == {"type": "vehicle.position", "body": []}
    assert doors["body"][0]["doorState"]["lockedStates"] == ["Locked"]
    assert public["monitorEvent"]["extensions"][0]["body"][0]["position"]["geometry"][
        "coordinates"
    ] == [2.0, 48.0]


def test_privacy_state_trigger_reads_the_payload_header(store: SqliteStore) -> None:
    add_callback(store)
    add_monitor(
        store,
        with_trigger(data("privacy.state", "equalsTo", ["full"]))
        | {"extendedEventParam": ["vehicle.doorsState"]},
    )
    car, engine = Car(store), engine_for(store)
    car.send({11: [(at(0), 0)]})
    car.send({}, privacy=Privacy.FULL, base=at(1))
    assert engine.step() == 1
    (message,) = sent(store)
    assert message["date"] == rfc3339(at(1))
    assert message["monitorEvent"]["values"][0]["value"]["body"]["literalValue"] == "Full"
    assert message["monitorEvent"]["extensions"] == [{"type": "vehicle.doorsState", "body": []}]


def test_on_change_and_previous(store: SqliteStore) -> None:
    add_callback(store)
    add_monitor(store, with_trigger(data("vehicle.doorsState.lockedState", "onChange")), "lock")
    add_monitor(
        store,
        with_trigger(
            data(
                "vehicle.energy.charging.status",
                "equalsTo",
                ["InProgress"],
                previous={"op": "equalsTo", "value": ["Stopped"]},
            )
        ),
        "charge",
    )
    car, engine = Car(store), engine_for(store)
    car.send({11: [(at(0), 1), (at(1), 1), (at(2), 0), (at(3), 0), (at(4), 2)]})
    car.send({24: [(at(0), 0), (at(1), 1), (at(2), 3), (at(3), 1), (at(4), 1)]})
    assert engine.step() == 3
    by_monitor: dict[str, list[dict[str, Any]]] = {}
    for message in sent(store):
        by_monitor.setdefault(message["monitorEvent"]["monitorId"], []).append(message)
    assert [m["date"] for m in by_monitor["lock"]] == [rfc3339(at(2)), rfc3339(at(4))]
    assert [
        m["monitorEvent"]["values"][0]["value"]["body"]["literalValue"] for m in by_monitor["lock"]
    ] == ["Unlocked", "SuperLocked"]
    (charge,) = by_monitor["charge"]
    assert charge["date"] == rfc3339(at(3))
    assert charge["monitorEvent"]["values"] == [
        {
            "data": "vehicle.energy.charging.status",
            "value": {"type": "string", "body": {"literalValue": "InProgress"}},
            "previous": "Stopped",
        }
    ]


def test_alerts_and_a_compound_expression(store: SqliteStore) -> None:
    add_callback(store)
    add_monitor(
        store,
        {
            "label": "fault while moving",
            "extendedEventParam": ["vehicle.alerts"],
            "triggerParam": {
                "triggers": [
                    {
                        "name": "fault",
                        **data("vehicle.alert", "includedIn", ["EngineFault", "FuelLevelLow"]),
                    },
                    {"name": "moving", **data("vehicle.kinetic.moving", "equalsTo", ["true"])},
                ],
                "boolExp": "fault & moving",
            },
        },
    )
    car, engine = Car(store), engine_for(store)
    car.send({33: [(at(0), 0), (at(2), 1)], 1: [(at(0), 0.0), (at(1), 0.0), (at(3), 50.0)]})
    assert engine.step() == 1
    (message,) = sent(store)
    assert message["date"] == rfc3339(at(3))
    fault, moving = message["monitorEvent"]["values"]
    assert fault["value"] == {
        "type": "obj.alert",
        "body": {
            "literalValue": "EngineFault",
            "objectValues": [{"type": "EngineFault", "active": True}],
        },
    }
    assert moving["value"]["body"]["literalValue"] == "true"
    alerts = message["monitorEvent"]["extensions"][0]["body"][0]["alerts"]
    assert alerts == [{"type": "EngineFault", "active": True, "startedAt": rfc3339(at(2))}]


def test_time_windows_in_the_monitors_time_zone(store: SqliteStore) -> None:
    add_callback(store)
    window = {
        "name": "morning",
        "time": {
            "times": [{"start": "PT8H30M", "duration": "PT1H", "occurence": {"day": ["Fri"]}}],
            "timeZone": "Europe/Paris",
        },
    }
    add_monitor(
        store,
        {
            "label": "slow in the morning",
            "triggerParam": {
                "triggers": [
                    window,
                    {"name": "slow", **data("vehicle.kinetic.speed", "lowerThan", ["10"])},
                ],
                "boolExp": "morning & slow",
            },
        },
    )
    car, engine = Car(store), engine_for(store)
    # T0 is 08:00 in Paris (UTC+2) on a Friday; the window is 08:30 to 09:30.
    car.send({1: [(at(m), 5.0) for m in (0, 29, 30, 45, 89, 90, 91)]})
    car.send({1: [(at(24 * 60 + 40), 5.0)]})  # Saturday 08:40: not a Friday
    car.send({1: [(at(7 * 24 * 60 + 31), 5.0)]})  # the next Friday
    assert engine.step() == 2
    assert [m["date"] for m in sent(store)] == [rfc3339(at(30)), rfc3339(at(7 * 24 * 60 + 31))]


def test_paused_monitors_track_but_do_not_notify(store: SqliteStore) -> None:
    add_callback(store)
    add_monitor(store, battery_low(), status="Paused")
    car, engine = Car(store), engine_for(store)
    car.send({22: [(at(0), 25.0), (at(1), 15.0)]})
    assert engine.step() == 0
    add_monitor(store, battery_low(), status="Running")
    car.send({22: [(at(2), 14.0)]})
    assert engine.step() == 0  # still the same fall: no event on resuming
    car.send({22: [(at(3), 30.0), (at(4), 10.0)]})
    assert engine.step() == 1


def test_a_restart_resumes_from_the_stored_cursor(store: SqliteStore, tmp_path: Path) -> None:
    add_callback(store)
    add_monitor(store, battery_low())
    car = Car(store)
    car.send({22: [(at(0), 25.0), (at(1), 15.0)]})
    assert engine_for(store).step() == 1
    cursor = store.get_record(CURSOR_KIND, "engine")
    assert cursor is not None and cursor.body == {"after_id": 1}
    with SqliteStore(tmp_path / "gateway.sqlite3") as again:
        restarted = engine_for(again)
        assert restarted.cursor == 1 and restarted.step() == 0
        other = Car(again)
        other.seq = 1
        other.send({22: [(at(2), 30.0)]})
        car.seq = 2
    car.send({22: [(at(3), 12.0)]})
    assert engine_for(store).step() == 1
    assert len(store.deliveries()) == 2


def test_late_samples_are_skipped_and_counted(store: SqliteStore) -> None:
    add_callback(store)
    add_monitor(store, battery_low())
    car, engine = Car(store), engine_for(store)
    car.send({22: [(at(5), 30.0)]})
    assert engine.step() == 0
    car.send({22: [(at(1), 10.0)]})  # queued while offline, older than what was seen
    assert engine.step() == 0
    state = store.get_record(STATE_KIND, "m1")
    assert state is not None and state.body["late_samples"] == 1


def test_a_new_parameter_restarts_the_evaluation_and_deleted_states_go(store: SqliteStore) -> None:
    add_callback(store)
    add_monitor(store, battery_low())
    car, engine = Car(store), engine_for(store)
    car.send({22: [(at(0), 15.0)]})
    assert engine.step() == 1
    higher = battery_low()
    higher["triggerParam"]["triggers"][0]["data"]["value"] = ["50"]
    add_monitor(store, higher)
    car.send({22: [(at(1), 14.0)]})
    assert engine.step() == 1  # a new parameter: the condition is new
    store.delete_record("monitor", "m1")
    engine.step()
    assert store.get_record(STATE_KIND, "m1") is None


def test_a_missing_or_paused_callback_queues_nothing(store: SqliteStore) -> None:
    add_monitor(store, battery_low())
    car, engine = Car(store), engine_for(store)
    car.send({22: [(at(0), 25.0), (at(1), 15.0)]})
    assert engine.step() == 0 and engine.undeliverable == 1
    add_callback(store, status="Paused")
    car.send({22: [(at(2), 25.0), (at(3), 15.0)]})
    assert engine.step() == 0 and engine.undeliverable == 2
    assert store.deliveries() == []


def test_monitor_attributes_and_variables(store: SqliteStore) -> None:
    add_callback(store)
    add_monitor(
        store,
        battery_low(
            subscribeParam={
                "callbackAttributes": {
                    "webhook": [
                        {"type": "Body", "key": "vin", "value": "$monitorLabel"},
                        {"type": "Query", "key": "id", "value": "$monitorId"},
                    ]
                }
            },
            attributes=[{"type": "Header", "key": "X-Callback", "value": "$callbackId"}],
        ),
    )
    car, engine = Car(store), engine_for(store)
    car.send({22: [(at(0), 25.0), (at(1), 15.0)]})
    assert engine.step() == 1
    (delivery,) = store.deliveries()
    assert delivery.target == "https://example.test/hook?id=m1"
    assert delivery.headers == {"X-Callback": "cb1"}
    assert json.loads(delivery.body)["attributes"] == [{"key": "vin", "value": "battery low"}]
