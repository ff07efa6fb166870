"""The network loader on real files (PSA, Tesla, cantools' multiplexing) and on written ones."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
import textparser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from can_dbc.decoder import MessageDecoder
from can_dbc.errors import DbcError
from can_dbc.loader import load_network, load_network_string
from can_dbc.network import (
    CAR_FILE,
    COMMAND_FEEDBACK,
    COMMAND_REQUEST,
    NETWORKS_DIR,
    PSA_CYCLE_TIMES,
    CommandAction,
    CommandResult,
    build_car_dbc,
    load_car_network,
)
from can_dbc.network import main as network_main

DATA = Path(__file__).parent / "data"
PSA = NETWORKS_DIR / "psa_aee2010_r3.dbc"

_FRAME_FORMATS = ["StandardCAN", "ExtendedCAN", "reserved", "J1939PG", *["reserved"] * 10]
_FRAME_FORMATS += ["StandardCAN_FD", "ExtendedCAN_FD"]

SMALL_DBC = """VERSION ""

NS_ :

BS_:

BU_: ECU

BO_ 256 Speed: 8 ECU
 SG_ Kmh : 0|16@1+ (0.01,0) [0|655.35] "km/h" Vector__XXX
 SG_ Temp : 16|8@1- (1,0) [-40|85] "degC" Vector__XXX

BO_ 2566834430 Ext: 8 ECU
 SG_ Mode : 7|4@0+ (1,0) [0|15] "" Vector__XXX

BO_ 1200 Fd: 64 ECU
 SG_ Tail : 504|8@1+ (1,0) [0|255] "" Vector__XXX

BA_DEF_ BO_ "VFrameFormat" ENUM {frame_formats};
BA_DEF_DEF_ "VFrameFormat" "StandardCAN";
BA_ "VFrameFormat" BO_ 1200 14;
VAL_ 2566834430 Mode 0 "Off" 1 "On" ;
""".format(frame_formats=",".join(f'"{n}"' for n in _FRAME_FORMATS))


def test_psa_as_shipped_is_repaired_and_reported() -> None:
    loaded = load_network(PSA)
    report = loaded.report
    assert [(r.line, r.file) for r in report.repairs] == [(165, str(PSA)), (166, str(PSA))]
    assert "0_COUNTER" in report.repairs[0].change
    assert "_0_COUNTER" in report.repairs[0].change
    assert "STEERING_ALT" in report.repairs[0].change
    steering = loaded.database.get_message_by_name("STEERING_ALT")
    names = {s.name for s in steering.signals}
    assert {"_0_COUNTER", "_0_CHECKSUM"} <= names
    # The comment that referred to 0_CHECKSUM follows the renamed signal.
    assert steering.get_signal_by_name("_0_CHECKSUM").comment == "TODO: find checksum"
    assert len(report.warnings) == 1
    warning = report.warnings[0]
    assert warning.line == 258
    assert "HS2_DYN_ABR_38D" in warning.message
    assert "overlapping" in warning.message
    assert len(loaded.database.messages) == 107
    assert report.encodings == {str(PSA): "utf-8"}


def test_psa_refused_without_repair_names_file_line_and_fault() -> None:
    with pytest.raises(DbcError) as caught:
        load_network(PSA, repair=False)
    assert caught.value.path == str(PSA)
    assert caught.value.line == 165
    assert "0_COUNTER" in caught.value.reason
    assert "starts with a digit" in caught.value.reason


def test_overlap_refused_without_repair() -> None:
    text = PSA.read_text(encoding="utf-8").replace(" 0_C", " _0_C")
    with pytest.raises(DbcError) as caught:
        load_network_string(text, "dbc", repair=False, source="psa-renamed.dbc")
    assert caught.value.line == 258
    assert "overlapping" in caught.value.reason


def test_syntax_error_keeps_the_parser_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dbc"
    lines = SMALL_DBC.splitlines()
    lines[9] = " SG_ Kmh : 0|16@1+ (0.01,0) [0|655.35 km/h Vector__XXX"
    bad.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DbcError) as caught:
        load_network(bad)
    assert caught.value.path == str(bad)
    assert caught.value.line == 10
    assert isinstance(caught.value.__cause__, textparser.ParseError)


def test_format_is_chosen_by_extension_or_argument(tmp_path: Path) -> None:
    odd = tmp_path / "network.txt"
    odd.write_text(SMALL_DBC, encoding="utf-8")
    with pytest.raises(DbcError, match="unknown network file extension"):
        load_network(odd)
    loaded = load_network(odd, database_format="dbc")
    assert {m.name for m in loaded.database.messages} == {"Speed", "Ext", "Fd"}
    with pytest.raises(DbcError, match="unknown database format"):
        load_network(odd, database_format="xls")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DbcError, match="cannot read") as caught:
        load_network(tmp_path / "absent.dbc")
    assert caught.value.path == str(tmp_path / "absent.dbc")


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252"])
def test_utf8_and_cp1252_both_load(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "temp.dbc"
    path.write_bytes(SMALL_DBC.replace('"degC"', '"°C"').encode(encoding))
    loaded = load_network(path, repair=False)
    temp = loaded.database.get_message_by_name("Speed").get_signal_by_name("Temp")
    assert temp.unit == "°C"
    assert loaded.report.encodings[str(path)] == encoding


def test_fd_extended_and_value_tables() -> None:
    db = load_network_string(SMALL_DBC, "dbc", repair=False).database
    ext = db.get_message_by_name("Ext")
    assert ext.is_extended_frame
    assert ext.frame_id == 0x18FEC8FE
    assert ext.decode(b"\x10" + bytes(7)) == {"Mode": "On"}
    fd = db.get_message_by_name("Fd")
    assert fd.is_fd
    assert fd.length == 64
    assert fd.decode(bytes(63) + b"\x2a") == {"Tail": 42}


def test_extended_multiplexing_loads_strictly() -> None:
    loaded = load_network(DATA / "cantools_multiplex_2.dbc", repair=False)
    assert loaded.report.clean
    extended = loaded.database.get_message_by_name("Extended")
    assert extended.is_extended_frame
    assert extended.is_multiplexed()
    s5 = extended.get_signal_by_name("S5")
    assert s5.multiplexer_signal == "S0"
    assert s5.multiplexer_ids == [1]


def test_tesla_loads_strictly() -> None:
    loaded = load_network(DATA / "tesla_Model3CAN.dbc", repair=False)
    assert loaded.report.clean
    assert sum(m.is_multiplexed() for m in loaded.database.messages) == 29


KCD = """<?xml version="1.0" encoding="UTF-8"?>
<NetworkDefinition xmlns="http://kayak.2codeornot2code.org/1.0">
  <Document name="tiny" version="1.0"/>
  <Bus name="Body">
    <Message id="0x123" name="Speed" length="2" interval="100">
      <Signal name="Kmh" offset="0" length="16" endianess="little">
        <Value type="unsigned" slope="0.01" intercept="0" unit="km/h" min="0" max="655.35"/>
      </Signal>
    </Message>
  </Bus>
</NetworkDefinition>
"""

SYM = """FormatVersion=6.0 // Do not edit this line!
Title="tiny"

{SENDRECEIVE}

[Speed]
ID=123h
Len=2
Var=Kmh unsigned 0,16 /u:km/h /f:0.01
"""


@pytest.mark.parametrize(("suffix", "text"), [(".kcd", KCD), (".sym", SYM)])
def test_kcd_and_sym_through_cantools(tmp_path: Path, suffix: str, text: str) -> None:
    path = tmp_path / f"tiny{suffix}"
    path.write_text(text, encoding="utf-8")
    db = load_network(path, repair=False).database
    message = db.get_message_by_name("Speed")
    assert message.frame_id == 0x123
    assert message.decode(b"\x10\x27") == {"Kmh": 100.0}


def test_kcd_fault_keeps_the_xml_line() -> None:
    with pytest.raises(DbcError) as caught:
        load_network_string(KCD.replace("</Bus>", ""), "kcd")
    assert caught.value.line == 11


def test_several_files_make_one_database(tmp_path: Path) -> None:
    first = tmp_path / "a.dbc"
    first.write_text(SMALL_DBC, encoding="utf-8")
    second = tmp_path / "b.dbc"
    second.write_text(SMALL_DBC.replace("BO_ 256 Speed", "BO_ 257 Speed2").split("BO_ 2566")[0])
    db = load_network([first, second], repair=False).database
    assert {m.name for m in db.messages} == {"Speed", "Ext", "Fd", "Speed2"}
    with pytest.raises(DbcError, match="also defined in") as caught:
        load_network([first, first])
    assert caught.value.path == str(first)


def test_car_network_needs_no_repair() -> None:
    loaded = load_network(NETWORKS_DIR / "tcusim_car.dbc", repair=False)
    assert loaded.report.clean


@st.composite
def _mutated_dbc(draw: st.DrawFn) -> str:
    text = SMALL_DBC
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        end = at + draw(st.integers(0, 12))
        insert = draw(st.text(alphabet=' \n:|@+-()[]",;0123456789abcMSGBO_m', max_size=8))
        text = text[:at] + insert + text[end:]
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_dbc())
def test_any_damaged_dbc_loads_or_is_a_dbc_error(text: str) -> None:
    for repair in (True, False):
        try:
            load_network_string(text, "dbc", repair=repair)
        except DbcError as exc:
            assert exc.path == "<string>"
            assert exc.reason


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300))
def test_any_text_as_kcd_or_sym_is_loaded_or_a_dbc_error(text: str) -> None:
    for fmt in ("kcd", "sym", "arxml"):
        with contextlib.suppress(DbcError):
            load_network_string(text, fmt)


# --- the car network --------------------------------------------------------------------------


def test_shipped_car_file_is_what_the_builder_produces() -> None:
    shipped = (NETWORKS_DIR / CAR_FILE).read_bytes().decode("utf-8")
    assert shipped == build_car_dbc(), "tcusim_car.dbc is stale: run python -m can_dbc.network"
    assert network_main(["--check"]) == 0


def test_car_network_layout_and_cycle_times() -> None:
    car = load_car_network()
    psa = load_network(PSA).database
    psa_ids = {(m.frame_id, m.is_extended_frame) for m in psa.messages}
    body = load_network(NETWORKS_DIR / "tcusim_body.dbc", repair=False).database
    for message in body.messages:
        assert (message.frame_id, message.is_extended_frame) not in psa_ids, message.name
    for name, cycle in PSA_CYCLE_TIMES.items():
        ours, theirs = car.message(name), psa.get_message_by_name(name)
        assert ours.frame_id == theirs.frame_id
        assert sorted(str(s) for s in ours.signals) == sorted(str(s) for s in theirs.signals)
        assert car.cycle_times[name] == cycle
        assert 10 <= cycle <= 1000
    assert {m.name for m in car.database.messages} == set(PSA_CYCLE_TIMES) | {
        m.name for m in body.messages
    }
    for message in body.messages:
        body_cycle = car.cycle_times[message.name]
        if message.name == COMMAND_REQUEST:
            assert body_cycle is None
        else:
            assert body_cycle is not None
            assert 100 <= body_cycle <= 1000, message.name
    assert [m.name for m in car.cyclic_messages()] == [
        m.name for m in car.database.messages if m.name != COMMAND_REQUEST
    ]


def test_command_and_privacy_value_tables_match_the_code() -> None:
    car = load_car_network()
    request = car.message(COMMAND_REQUEST)
    feedback = car.message(COMMAND_FEEDBACK)
    actions = request.get_signal_by_name("CmdAction").choices
    assert actions is not None
    assert {int(k): str(v) for k, v in actions.items()} == {
        a.value: "".join(w.capitalize() for w in a.name.split("_")) for a in CommandAction
    }
    results = feedback.get_signal_by_name("FbResult").choices
    assert results is not None
    assert {int(k): str(v) for k, v in results.items()} == {
        r.value: "".join(w.capitalize() for w in r.name.split("_")) for r in CommandResult
    }
    layout = sorted((s.start, s.length, s.name) for s in request.signals)
    names = ["CmdCounter", "CmdAction"] + [f"CmdParam{i}" for i in range(6)]
    assert layout == [(8 * i, 8, name) for i, name in enumerate(names)]
    layout = sorted((s.start, s.length, s.name) for s in feedback.signals)
    assert layout == [(0, 8, "FbCounter"), (8, 8, "FbAction"), (16, 8, "FbResult")]
    privacy = car.message("HU_Privacy").get_signal_by_name("PrivacySetting").choices
    assert privacy is not None
    catalog = car.mapping.by_name("Vehicle.Connectivity.PrivacySetting").spec.enum
    assert {int(k): str(v) for k, v in privacy.items()} == dict(catalog)


def _stated_period_ms(comment: str | None) -> int | None:
    """The period a PSA message comment states, if it states one."""
    if comment is None:
        return None
    if (match := re.search(r"Period time (\d+)\s*ms", comment)) is not None:
        return int(match.group(1))
    if "toutes les secondes" in comment:  # "... puis toutes les secondes"
        return 1000
    return None


def test_psa_cycle_times_are_the_periods_the_psa_file_states() -> None:
    psa = load_network(PSA).database
    unstated = set()
    for name, cycle in PSA_CYCLE_TIMES.items():
        stated = _stated_period_ms(psa.get_message_by_name(name).comment)
        if stated is None:
            unstated.add(name)
        else:
            assert cycle == stated, name
    assert unstated == {
        "Dat3_BSI",
        "Dat6_BSI",
        "Contexte1_5B2",
        "HS2_DAT_MDD_CMD_452",
        "HS2_DAT7_BSI_612",
    }


@pytest.mark.parametrize(
    ("name", "message", "signal"),
    [
        ("Vehicle.LowVoltageBattery.CurrentVoltage", "Dat6_BSI", "P418_Com_uBattRaw"),
        ("Vehicle.Exterior.AirTemperature", "Contexte1_5B2", "P146_Com_tEnvT"),
        ("Vehicle.Alert.BrakeFault", "Dat_BSI", "P040_MainBrakeFault"),
        ("Vehicle.Powertrain.FuelSystem.RelativeLevel", "HS2_DAT7_BSI_612", "INFO_NIV_CARB"),
        ("Vehicle.Body.Lights.IsFlashing", "HS2_DAT_MDD_CMD_452", "TURN_SIGNAL_STATUS"),
    ],
)
def test_signals_the_psa_file_carries_come_from_it(name: str, message: str, signal: str) -> None:
    car = load_car_network()
    mapped = car.mapping.by_name(name)
    assert (mapped.message, mapped.signal) == (message, signal)
    psa = load_network(PSA).database.get_message_by_name(message)
    assert car.message(message).frame_id == psa.frame_id
    body = load_network(NETWORKS_DIR / "tcusim_body.dbc", repair=False).database
    assert message not in {m.name for m in body.messages}


DUPLICATE_DBC = SMALL_DBC.replace(
    "BO_ 2566834430 Ext",
    'BO_ 256 SpeedAgain: 2 ECU\n SG_ Again : 0|8@1+ (1,0) [0|255] "" Vector__XXX\n\n'
    "BO_ 2147483904 ExtSameId: 1 ECU\n\nBO_ 2566834430 Ext",
)


def test_a_frame_defined_twice_keeps_the_last_with_a_warning() -> None:
    loaded = load_network_string(DUPLICATE_DBC, "dbc", source="dup.dbc")
    lines = DUPLICATE_DBC.splitlines()
    first = lines.index("BO_ 256 Speed: 8 ECU") + 1
    again = lines.index("BO_ 256 SpeedAgain: 2 ECU") + 1
    [warning] = loaded.report.warnings
    assert (warning.file, warning.line) == ("dup.dbc", first)
    assert f"Speed (line {first}) and SpeedAgain (line {again})" in warning.message
    assert "standard frame 0x100 is defined twice" in warning.message
    db = loaded.database
    names = {m.name for m in db.messages}
    # The extended frame with id 0x100 is another frame: it stays.
    assert names == {"SpeedAgain", "ExtSameId", "Ext", "Fd"}
    assert db.get_message_by_name("ExtSameId").is_extended_frame
    decoded = MessageDecoder(db).decode(0x100, False, b"\x2a\x00")
    assert decoded is not None
    assert (decoded[0].name, decoded[1]) == ("SpeedAgain", {"Again": 42})


def test_a_frame_defined_twice_is_refused_without_repair() -> None:
    with pytest.raises(DbcError) as caught:
        load_network_string(DUPLICATE_DBC, "dbc", repair=False, source="dup.dbc")
    lines = DUPLICATE_DBC.splitlines()
    assert caught.value.line == lines.index("BO_ 256 SpeedAgain: 2 ECU") + 1
    assert f"Speed (line {lines.index('BO_ 256 Speed: 8 ECU') + 1}) and SpeedAgain" in str(
        caught.value
    )
    assert "repair=True" in caught.value.reason
