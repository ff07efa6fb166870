"""The mapping format: validation of every fault, the shipped mappings, Hypothesis round trips."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from can_dbc.catalog import Refresh, Scope, SignalType, default_catalog
from can_dbc.errors import MappingError
from can_dbc.loader import load_network
from can_dbc.mapping import (
    MAPPING_FORMAT,
    UNIT_ALIASES,
    load_mapping,
    parse_mapping,
    units_agree,
)
from can_dbc.network import NETWORKS_DIR, load_car_network

DATA = Path(__file__).parent / "data"
CATALOG = default_catalog()
CAR = load_network(NETWORKS_DIR / "tcusim_car.dbc", repair=False)
TESLA_DBC = DATA / "tesla_Model3CAN.dbc"
SUBARU_DBC = DATA / "subaru_sample_can_spec.dbc"


def _doc(signals: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"format": MAPPING_FORMAT, "network": ["tcusim_car.dbc"], "signals": signals, **top}


def _parse(document: Any) -> Any:
    return parse_mapping(document, network=CAR, source="m.yaml")


def test_car_mapping_covers_every_catalog_signal_on_the_network() -> None:
    car = load_car_network()
    expected = {
        s.name
        for s in CATALOG.signals
        if s.scope is not Scope.POSITION and s.name != "Vehicle.Chassis.SteeringWheel.Angle"
    }
    assert {m.name for m in car.mapping.signals} == expected
    assert car.network.report.clean


def test_shipped_third_party_mappings_load_with_the_dbc_given() -> None:
    tesla = load_mapping(NETWORKS_DIR / "tesla_model3.yaml", network_paths=[TESLA_DBC])
    assert tesla.by_name("Vehicle.Speed").signal == "DI_vehicleSpeed"
    assert tesla.by_name("Vehicle.Cabin.HVAC.AmbientAirTemperature").multiplexer == 0
    subaru = load_mapping(NETWORKS_DIR / "subaru.yaml", network_paths=[SUBARU_DBC])
    speed = subaru.by_name("Vehicle.Speed")
    assert (speed.message, speed.signal, speed.scale) == ("ID_D1", "SPEED", 3.6)
    assert set(subaru.frames()) == {(0xD0, False), (0xD1, False), (0x140, False),
                                    (0x141, False), (0x360, False)}  # fmt: skip


def test_missing_third_party_network_says_how_to_give_it() -> None:
    with pytest.raises(MappingError, match="network_paths") as caught:
        load_mapping(NETWORKS_DIR / "subaru.yaml")
    assert "subaru.yaml" in str(caught.value)


@pytest.mark.parametrize(
    ("document", "fault"),
    [
        (_doc({"Vehicle.Speed": {"message": "Dyn_Veh", "signal": "P060_vECU"}}, extra=1),
         "unknown keys ['extra']"),
        (_doc({"Vehicle.Speed": {"message": "Dyn_Veh", "signal": "P060_vECU", "unit": "x"}}),
         "signals['Vehicle.Speed']: unknown keys ['unit']"),
        (_doc({"Vehicle.Sped": {"message": "Dyn_Veh", "signal": "P060_vECU"}}),
         "'Vehicle.Sped' is not a signal of the catalog"),
        (_doc({"Vehicle.Speed": {"message": "Dyn_Vehicle", "signal": "P060_vECU"}}),
         "message 'Dyn_Vehicle' is not in the network"),
        (_doc({"Vehicle.Speed": {"message": "Dyn_Veh", "signal": "P060"}}),
         "signal 'P060' is not in message Dyn_Veh"),
        (_doc({"Vehicle.Speed": {"message": "Dyn_Veh"}}), "'signal' must be given"),
        (_doc({"Vehicle.Speed": {"message": "Dyn_Veh", "signal": "P060_vECU", "scale": 0}}),
         "scale must not be 0"),
        (_doc({"Vehicle.Speed": {"message": "Dyn_Veh", "signal": "P060_vECU", "scale": "x"}}),
         "scale must be a finite number"),
        (_doc({"Vehicle.Speed": {"message": "Dyn_Veh", "signal": "P060_vECU",
                                 "refresh": "often"}}), "refresh must be one of"),
        (_doc({"Vehicle.Cabin.DoorsLockState": {"message": "BSI_Body", "signal": "LockState",
                                                "values": {0: 0, 1: 7}}}),
         "7 is not a value of Vehicle.Cabin.DoorsLockState"),
        (_doc({"Vehicle.Body.Horn.IsActive": {"message": "BSI_Body", "signal": "HornActive",
                                              "values": {0: False, 1: 2}}}), "is a bool"),
        (_doc({"Vehicle.Body.Horn.IsActive": {"message": "BSI_Body", "signal": "HornActive",
                                              "values": {0: False, 1: True}, "scale": 2}}),
         "values and scale/offset cannot be used together"),
        (_doc({"Vehicle.Speed": {"message": "Dyn_Veh", "signal": "P060_vECU",
                                 "multiplexer": 0}}), "P060_vECU is not multiplexed"),
        (_doc({"Vehicle.Speed": {"message": "Dat_CMM", "signal": "P005_CEngDst_tSens"}}),
         "P005_CEngDst_tSens is in '°C' and Vehicle.Speed in 'km/h': give scale/offset"),
        (_doc({"Vehicle.Powertrain.Range": {"message": "Dyn_Veh", "signal": "P062_sECU"}}),
         "P062_sECU is in 'm' and Vehicle.Powertrain.Range in 'km'"),
        (_doc({"Vehicle.Body.Horn.IsActive": {"message": "BSI_Body", "signal": "HornActive",
                                              "values": {0: False, 5: True}}}),
         "values key 5 is not a raw value of HornActive (1-bit unsigned: 0..1)"),
        (_doc({"Vehicle.Alert.EngineFault": {"message": "Dyn2_CMM", "signal": "P344_Com_bMILOn",
                                             "values": {0: False, 1: True}}}),
         "values key 1 is not a raw value of P344_Com_bMILOn (1-bit signed: -1..0)"),
        ({"format": "tcusim-mapping/2", "network": ["x.dbc"], "signals": {}}, "format must be"),
        ({"format": MAPPING_FORMAT, "signals": {}}, "missing key 'network'"),
        (_doc({}), "'signals' must map logical names"),
        ([1, 2], "expected a mapping at the top level"),
    ],
)  # fmt: skip
def test_each_fault_is_a_mapping_error_naming_file_and_entry(document: Any, fault: str) -> None:
    with pytest.raises(MappingError) as caught:
        _parse(document)
    assert str(caught.value).startswith("m.yaml: ")
    assert fault in str(caught.value)


def test_a_name_mapped_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(
        "format: tcusim-mapping/1\n"
        "network: [car.dbc]\n"
        "signals:\n"
        "  Vehicle.Speed: {message: Dyn_Veh, signal: P060_vECU}\n"
        "  Vehicle.Speed: {message: Dyn_Veh, signal: P062_sECU}\n",
        encoding="utf-8",
    )
    with pytest.raises(MappingError) as caught:
        load_mapping(path, network=CAR)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert "line 5" in message
    assert "'Vehicle.Speed' is given twice" in message


def test_multiplexer_must_be_one_of_the_signal_ids() -> None:
    tesla = load_network(TESLA_DBC)
    entry = {"message": "ID243VCRIGHT_hvacStatus", "signal": "VCRIGHT_hvacCabinTempEst"}
    document = _doc({"Vehicle.Cabin.HVAC.AmbientAirTemperature": {**entry, "multiplexer": 1}})
    with pytest.raises(MappingError, match=r"sent with multiplexer \[0\], not 1"):
        parse_mapping(document, network=tesla)
    document = _doc({"Vehicle.Cabin.HVAC.AmbientAirTemperature": {**entry, "multiplexer": 0}})
    mapped = parse_mapping(document, network=tesla).signals[0]
    assert mapped.multiplexer == 0
    assert mapped.key == (0x243, False)


def test_refresh_override_and_values() -> None:
    mapping = _parse(
        _doc(
            {
                "Vehicle.Speed": {"message": "Dyn_Veh", "signal": "P060_vECU", "refresh": "slow"},
                "Vehicle.Alert.EngineFault": {
                    "message": "Dyn2_CMM",
                    "signal": "P344_Com_bMILOn",
                    "values": {0: False, -1: True},
                },
            }
        )
    )
    speed = mapping.by_name("Vehicle.Speed")
    assert speed.effective_refresh is Refresh.SLOW
    assert speed.spec.refresh is Refresh.FAST
    assert mapping.by_name("Vehicle.Alert.EngineFault").values == {0: 0, -1: 1}
    assert [m.name for m in mapping.frame(904, False)] == ["Vehicle.Speed"]
    assert mapping.frame(904, True) == ()


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="cannot read"):
        load_mapping(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("signals: [unclosed\n", encoding="utf-8")
    with pytest.raises(MappingError, match="not valid YAML"):
        load_mapping(bad, network=CAR)


# --- Hypothesis ---------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from([MAPPING_FORMAT, "Vehicle.Speed", "Dyn_Veh", "P060_vECU", "values"]),
)
_documents = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(
                    [
                        "format",
                        "network",
                        "signals",
                        "message",
                        "signal",
                        "scale",
                        "offset",
                        "values",
                        "refresh",
                        "multiplexer",
                        "Vehicle.Speed",
                        "Vehicle.Cabin.DoorsLockState",
                    ]
                ),
                st.integers(-3, 3),
                st.text(max_size=6),
            ),
            children,
            max_size=5,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_documents)
def test_any_yaml_document_is_a_mapping_or_a_mapping_error(document: Any) -> None:
    text = yaml.safe_dump(document)
    with contextlib.suppress(MappingError):
        parse_mapping(text, network=CAR)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_a_mapping_or_a_mapping_error(text: str) -> None:
    with contextlib.suppress(MappingError):
        parse_mapping(text, network=CAR)


_CAR_SIGNALS = [(m.name, s.name) for m in CAR.database.messages for s in m.signals]
_NON_POSITION = [s for s in CATALOG.signals if s.scope is not Scope.POSITION]


def _raw_range(message: str, signal: str) -> tuple[int, int]:
    found = CAR.database.get_message_by_name(message).get_signal_by_name(signal)
    if found.is_signed:
        return -(1 << (found.length - 1)), (1 << (found.length - 1)) - 1
    return 0, (1 << found.length) - 1


@st.composite
def _valid_entry(draw: st.DrawFn, spec_index: int) -> dict[str, Any]:
    spec = _NON_POSITION[spec_index]
    message, signal = draw(st.sampled_from(_CAR_SIGNALS))
    entry: dict[str, Any] = {"message": message, "signal": signal}
    lo, hi = _raw_range(message, signal)
    if spec.type is SignalType.BOOL and draw(st.booleans()):
        entry["values"] = {lo: False, hi: True}
    elif spec.type is SignalType.ENUM and draw(st.booleans()):
        keys = draw(st.lists(st.integers(max(lo, -8), min(hi, 8)), min_size=1, max_size=4,
                             unique=True))  # fmt: skip
        entry["values"] = {k: draw(st.sampled_from(sorted(spec.enum))) for k in keys}
    elif spec.type in (SignalType.FLOAT, SignalType.INT):
        finite = st.floats(-1e6, 1e6).filter(lambda x: x != 0 and math.isfinite(x))
        if draw(st.booleans()):
            entry["scale"] = draw(st.one_of(st.integers(1, 100), finite))
        if draw(st.booleans()):
            entry["offset"] = draw(st.one_of(st.integers(-100, 100), finite))
    if "values" not in entry and "scale" not in entry and "offset" not in entry:
        unit = CAR.database.get_message_by_name(message).get_signal_by_name(signal).unit
        if not units_agree(unit, spec.unit):
            entry["scale"] = 1  # the units differ: the entry states its conversion
    if draw(st.booleans()):
        entry["refresh"] = draw(st.sampled_from([r.value for r in Refresh]))
    return entry


@st.composite
def _valid_document(draw: st.DrawFn) -> dict[str, Any]:
    indexes = draw(
        st.lists(st.integers(0, len(_NON_POSITION) - 1), min_size=1, max_size=8, unique=True)
    )
    signals = {_NON_POSITION[i].name: draw(_valid_entry(i)) for i in indexes}
    return _doc(signals)


@settings(max_examples=150, deadline=None)
@given(_valid_document())
def test_valid_mappings_round_trip(document: dict[str, Any]) -> None:
    mapping = parse_mapping(yaml.safe_dump(document, sort_keys=False), network=CAR)
    assert [m.name for m in mapping.signals] == list(document["signals"])
    for mapped in mapping.signals:
        entry = document["signals"][mapped.name]
        assert (mapped.message, mapped.signal) == (entry["message"], entry["signal"])
        assert mapped.scale == entry.get("scale", 1)
        assert mapped.offset == entry.get("offset", 0)
        if "values" in entry:
            assert mapped.values == {k: int(v) for k, v in entry["values"].items()}
        expected = Refresh(entry["refresh"]) if "refresh" in entry else mapped.spec.refresh
        assert mapped.effective_refresh is expected
    again = parse_mapping(yaml.safe_dump(mapping.to_document(), sort_keys=False), network=CAR)
    assert again.signals == mapping.signals
    assert again.network_files == mapping.network_files


def test_shipped_mappings_round_trip_through_their_documents() -> None:
    for mapping in (
        load_car_network().mapping,
        load_mapping(NETWORKS_DIR / "tesla_model3.yaml", network_paths=[TESLA_DBC]),
    ):
        again = parse_mapping(
            yaml.safe_dump(mapping.to_document(), sort_keys=False), network=mapping.network
        )
        assert again.signals == mapping.signals


def test_units_convert_or_agree() -> None:
    # A stated conversion passes the unit check; unknown DBC units ("-", "") are not checked.
    mapping = _parse(
        _doc(
            {
                "Vehicle.Powertrain.Range": {
                    "message": "Dyn_Veh", "signal": "P062_sECU", "scale": 0.001,
                },
                "Vehicle.Speed": {"message": "Dyn2_CMM", "signal": "P152_Gearbx_stGear"},
                "Vehicle.TraveledDistance": {"message": "Dat_CMM", "signal": "P011_Oil_tSwmp"},
                "Vehicle.Exterior.AirTemperature": {
                    "message": "Dat_CMM", "signal": "P005_CEngDst_tSens",
                },
            }
        )
    )  # fmt: skip
    assert mapping.by_name("Vehicle.Powertrain.Range").scale == 0.001
    assert len(mapping) == 4


_SPELLINGS = sorted({s for group in UNIT_ALIASES for s in group})


def _respelled(unit: str) -> st.SearchStrategy[str]:
    """The unit with its letters' case changed and spaces put around and inside it."""
    return st.lists(st.sampled_from([str.upper, str.lower, lambda c: f" {c}"]),
                    min_size=len(unit), max_size=len(unit)).map(
        lambda how: "".join(f(c) for f, c in zip(how, unit, strict=True)) + " "
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_unit_spellings_agree_within_their_group_only(data: st.DataObject) -> None:
    first = data.draw(st.sampled_from(_SPELLINGS))
    second = data.draw(st.sampled_from(_SPELLINGS))
    same = any(first in g and second in g for g in UNIT_ALIASES)
    written = data.draw(_respelled(first))
    assert units_agree(written, second) is same
    assert units_agree(second, written) is same
    assert units_agree(data.draw(st.sampled_from(["", "-", " - ", None])), second)
