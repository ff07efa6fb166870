"""``tcusim decode`` on the third-party captures, and the capture reader under it."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from can_dbc.capture import CaptureReader, read_capture
from can_dbc.encoder import FrameEncoder
from can_dbc.errors import CaptureError
from can_dbc.network import NETWORKS_DIR, load_car_network
from firmware_sim import cli

DATA = Path(__file__).parent / "data"
TESLA_DBC = DATA / "tesla_Model3CAN.dbc"
TESLA_LOG = DATA / "tesla_candump_Manual_SOC_DogMode_CabinTemp.log"
SUBARU_DBC = DATA / "subaru_sample_can_spec.dbc"
SUBARU_LOG = DATA / "subaru_can_sample.log"


@pytest.fixture
def tcusim(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``tcusim`` in-process (only the decode subcommand registered); (status, out, err)."""
    monkeypatch.setattr(cli, "_SUBCOMMANDS", ("decode",))

    def run(*argv: str | Path) -> tuple[int, str, str]:
        status = cli.main([str(a) for a in argv])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def _summary(out: str) -> dict[str, Any]:
    lines = out.splitlines()
    summary: dict[str, Any] = json.loads(lines[-1])
    return summary


def test_tesla_capture_decodes_entirely(tcusim: Any) -> None:
    status, out, err = tcusim("decode", "--dbc", TESLA_DBC, TESLA_LOG)
    assert status == 0
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 12138 + 1
    first = json.loads(lines[0])
    assert first == {
        "t": 1637353675.975229,
        "id": 0x243,
        "ext": False,
        "message": "ID243VCRIGHT_hvacStatus",
        "signals": first["signals"],
    }
    assert first["signals"]["VCRIGHT_hvacStatusIndex"] == 0
    summary = _summary(out)
    assert summary["frames"] == summary["decoded"] == 12138
    assert summary["unknown_id"] == summary["errors"] == summary["truncated"] == 0
    ranges = summary["ranges"]
    assert ranges["DI_vehicleSpeed"] == [0.0, pytest.approx(287.6)]
    assert ranges["UI_SOC"] == [0, 127]
    assert ranges["VCRIGHT_hvacCabinTempEst"] == [18.0, 25.0]


def test_subaru_capture_46_percent_known(tcusim: Any) -> None:
    status, out, _err = tcusim("decode", "--dbc", SUBARU_DBC, SUBARU_LOG, "--summary-only")
    assert status == 0
    assert len(out.splitlines()) == 1
    summary = _summary(out)
    assert summary["frames"] == 82558
    assert summary["decoded"] == 38015
    assert round(100 * summary["decoded"] / summary["frames"], 1) == 46.0
    assert summary["unknown_id"] == 82558 - 38015
    assert summary["errors"] == summary["truncated"] == summary["bad_lines"] == 0
    ranges = summary["ranges"]
    assert ranges["RPM"] == [646, 6030]
    assert ranges["SPEED"] == [0.0, pytest.approx(36.0, abs=0.01)]
    assert ranges["GEAR"] == [0, 7]
    assert ranges["STEER_ANGLE"] == [pytest.approx(-457.3), pytest.approx(42.3)]


def test_subaru_with_its_mapping_speaks_catalog_units(tcusim: Any) -> None:
    mapping = NETWORKS_DIR / "subaru.yaml"
    status, out, _err = tcusim(
        "decode", "--dbc", SUBARU_DBC, SUBARU_LOG, "--mapping", mapping, "--summary-only"
    )
    assert status == 0
    ranges = _summary(out)["ranges"]
    assert ranges["Vehicle.Speed"] == [0.0, pytest.approx(36.0 * 3.6, abs=0.05)]
    assert ranges["Vehicle.Powertrain.CombustionEngine.Speed"] == [646.0, 6030.0]
    assert ranges["Vehicle.Chassis.SteeringWheel.Angle"][0] == pytest.approx(-457.3)


def test_asc_error_and_remote_frames_are_counted_apart(tcusim: Any) -> None:
    status, out, _err = tcusim("decode", "--dbc", SUBARU_DBC, DATA / "pycan_logfile.asc")
    assert status == 0
    summary = _summary(out)
    assert summary["frames"] == 20
    assert summary["error_frames"] == 4
    assert summary["remote_frames"] == 4
    assert summary["unknown_id"] == 12
    assert summary["decoded"] == 0


def test_blf_64_byte_fd_frames_are_read(tcusim: Any) -> None:
    frames, stats = read_capture(DATA / "pycan_test_CanFdMessage64.blf")
    assert stats.frames == len(frames) == 2
    assert all(f.is_fd and f.dlc == 64 for f in frames)
    # python-can reads these two with the remote flag set and no data: counted as remote.
    assert all(f.is_remote_frame for f in frames)
    status, out, _err = tcusim(
        "decode", "--dbc", SUBARU_DBC, DATA / "pycan_test_CanFdMessage64.blf"
    )
    assert status == 0
    assert _summary(out)["remote_frames"] == 2


TRC_DBC = """VERSION ""

NS_ :

BS_:

BU_:

BO_ 2147483904 Ext100: 8 Vector__XXX
 SG_ First : 0|8@1+ (1,0) [0|255] "" Vector__XXX
"""


def test_trc_frames_with_extended_ids_decode(tcusim: Any, tmp_path: Path) -> None:
    dbc = tmp_path / "ext.dbc"
    dbc.write_text(TRC_DBC, encoding="utf-8")
    status, out, _err = tcusim("decode", "--dbc", dbc, DATA / "pycan_test_CanMessage_V2_1.trc")
    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    summary = lines.pop()
    assert summary["frames"] == 11
    assert summary["decoded"] == 7
    assert summary["unknown_id"] == 3  # standard id 0x000
    assert summary["remote_frames"] == 1
    assert {(line["id"], line["ext"], line["message"]) for line in lines} == {
        (0x100, True, "Ext100")
    }


def _car_log(tmp_path: Path, extra: list[str]) -> Path:
    car = load_car_network()
    encoder = FrameEncoder(car.database, car.mapping)
    ignition = encoder.encode("BSI_Ignition", {"Vehicle.LowVoltageSystemState": 2}).hex()
    speed = encoder.encode("Dyn_Veh", {"Vehicle.Speed": 50.0}).hex()
    log = tmp_path / "car.log"
    log.write_text(
        "\n".join([f"(1.000000) vcan0 0F6#{ignition}", f"(1.010000) vcan0 388#{speed}", *extra])
        + "\n",
        encoding="utf-8",
    )
    return log


def test_choices_truncated_frames_and_bad_lines(tcusim: Any, tmp_path: Path) -> None:
    log = _car_log(
        tmp_path,
        [
            "(1.020000) vcan0 388#1388",  # Dyn_Veh cut to 2 bytes: only the speed fits
            "this is not a candump line",
            "(1.030000) vcan0 7FF#00",
        ],
    )
    car_dbc = NETWORKS_DIR / "tcusim_car.dbc"
    status, out, _err = tcusim("decode", "--dbc", car_dbc, log, "--choices")
    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    summary = lines.pop()
    assert lines[0]["signals"] == {"IgnitionState": "On"}
    assert lines[1]["signals"]["P060_vECU"] == 50.0
    assert lines[2]["signals"] == {"P060_vECU": 50.0}
    assert summary["truncated"] == 1
    assert summary["bad_lines"] == 1
    assert summary["unknown_id"] == 1
    assert summary["frames"] == 4
    mapping = NETWORKS_DIR / "tcusim_car.yaml"
    status, out, _err = tcusim("decode", "--mapping", mapping, log)
    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["signals"] == {"Vehicle.LowVoltageSystemState": 2}
    assert lines[2]["signals"] == {"Vehicle.Speed": 50.0}


def test_gzipped_captures_read_the_same(tcusim: Any, tmp_path: Path) -> None:
    packed = tmp_path / "tesla.log.gz"
    with TESLA_LOG.open("rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    _status, plain, _err = tcusim("decode", "--dbc", TESLA_DBC, TESLA_LOG, "--summary-only")
    status, zipped, _err = tcusim("decode", "--dbc", TESLA_DBC, packed, "--summary-only")
    assert status == 0
    assert zipped == plain


def test_psa_repairs_are_reported_on_stderr(tcusim: Any) -> None:
    psa = NETWORKS_DIR / "psa_aee2010_r3.dbc"
    status, out, err = tcusim("decode", "--dbc", psa, DATA / "pycan_logfile.asc")
    assert status == 0
    assert "renamed signal 0_COUNTER" in err
    assert "overlapping" in err
    assert _summary(out)["frames"] == 20


@pytest.mark.parametrize(
    ("argv", "fault"),
    [
        (["--dbc", TESLA_DBC, DATA / "missing.log"], "no such capture file"),
        (["--dbc", DATA / "missing.dbc", TESLA_LOG], "missing.dbc: cannot read"),
        (["--dbc", TESLA_LOG, TESLA_LOG], "unknown network file extension"),
        (["--dbc", TESLA_DBC, TESLA_DBC], "unknown capture format '.dbc'"),
        ([TESLA_LOG], "needs --dbc FILE or --mapping FILE"),
        (
            ["--dbc", TESLA_DBC, TESLA_LOG, "--mapping", DATA / "PROVENANCE.md"],
            "not valid YAML",
        ),
    ],
)
def test_bad_input_is_one_line_and_status_2(tcusim: Any, argv: list[Any], fault: str) -> None:
    status, out, err = tcusim("decode", *argv)
    assert status == 2
    assert out == ""
    assert err.startswith("tcusim: error: ")
    assert fault in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_bad_dbc_names_its_line(tcusim: Any, tmp_path: Path) -> None:
    dbc = tmp_path / "broken.dbc"
    dbc.write_text(TRC_DBC.replace("(1,0)", "(1,0"), encoding="utf-8")
    status, _out, err = tcusim("decode", "--dbc", dbc, TESLA_LOG)
    assert status == 2
    assert err.startswith(f"tcusim: error: {dbc}:10: ")


# --- the capture reader -----------------------------------------------------------------------


def _corrupt_asc(tmp_path: Path) -> tuple[Path, int]:
    """The python-can ASC sample with one frame line's data made unreadable; (path, line)."""
    text = (DATA / "pycan_logfile.asc").read_text(encoding="utf-8").splitlines()
    number = next(i for i, line in enumerate(text) if "6F9" in line)
    text[number] = text[number].replace("05 0C", "05 ZZ")
    path = tmp_path / "corrupt.asc"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path, number + 1


def test_a_bad_asc_frame_line_is_counted_and_skipped(tcusim: Any, tmp_path: Path) -> None:
    path, number = _corrupt_asc(tmp_path)
    frames, stats = read_capture(path)
    assert len(frames) == 19  # of 20
    assert 0x6F9 not in {f.arbitration_id for f in frames}
    assert (stats.bad_lines, stats.bad_line_numbers) == (1, [number])
    status, out, err = tcusim("decode", "--dbc", SUBARU_DBC, path, "--summary-only")
    assert status == 0
    summary = _summary(out)
    assert (summary["frames"], summary["bad_lines"]) == (19, 1)
    assert "1 bad lines skipped" in err


@pytest.mark.parametrize(("size", "read"), [(144, 0), (300, 0), (400, 1), (500, 2), (612, 2)])
def test_a_blf_cut_short_says_what_it_lacks(tmp_path: Path, size: int, read: int) -> None:
    data = (DATA / "pycan_test_CanFdMessage64.blf").read_bytes()
    assert len(data) == 612
    path = tmp_path / "cut.blf"
    path.write_bytes(data[:size])
    frames, stats = read_capture(path)
    assert len(frames) == stats.frames == read
    assert (stats.declared_objects, stats.declared_bytes, stats.bytes_read) == (2, 612, size)
    assert stats.shortfall == 2 - read
    assert stats.cut_short is (size < 612)
    assert bool(stats.problems()) is (size < 612)


def test_decode_of_a_blf_cut_short_counts_the_loss(tcusim: Any, tmp_path: Path) -> None:
    path = tmp_path / "cut.blf"
    path.write_bytes((DATA / "pycan_test_CanFdMessage64.blf").read_bytes()[:400])
    status, out, err = tcusim("decode", "--dbc", SUBARU_DBC, path)
    assert status == 0
    summary = _summary(out)
    assert (summary["frames"], summary["unread_objects"], summary["cut_short"]) == (1, 1, True)
    assert "cut short: 400 of the 612 bytes its header declares" in err
    assert "1 of the 2 objects its header declares were not read as frames" in err
    whole = DATA / "pycan_test_CanFdMessage64.blf"
    status, out, err = tcusim("decode", "--dbc", SUBARU_DBC, whole)
    summary = _summary(out)
    assert (status, summary["unread_objects"], summary["cut_short"], err) == (0, 0, False, "")


def test_a_corrupt_blf_still_closes_with_the_summary(tcusim: Any, tmp_path: Path) -> None:
    path = tmp_path / "corrupt.blf"
    path.write_bytes(b"XXXX" + (DATA / "pycan_test_CanFdMessage64.blf").read_bytes()[4:])
    status, out, err = tcusim("decode", "--dbc", SUBARU_DBC, path)
    assert status == 2
    [line] = out.splitlines()
    summary = json.loads(line)
    assert summary["frames"] == 0
    assert summary["aborted"].startswith(f"{path}: corrupt after 0 frames")
    assert err == f"tcusim: error: {summary['aborted']}\n"


def test_a_gz_that_breaks_mid_read_still_closes_with_the_summary(
    tcusim: Any, tmp_path: Path
) -> None:
    packed = gzip.compress(TESLA_LOG.read_bytes())
    path = tmp_path / "cut.log.gz"
    path.write_bytes(packed[: len(packed) // 2])  # the gzip stream ends mid-file
    status, out, err = tcusim("decode", "--dbc", TESLA_DBC, path)
    assert status == 2
    lines = out.splitlines()
    summary = json.loads(lines[-1])
    assert str(path) in summary["aborted"]
    # What was read before the break is decoded and counted.
    assert 0 < summary["frames"] == summary["decoded"] == len(lines) - 1 < 12138
    assert err.startswith("tcusim: error: ")
    assert "Traceback" not in err


def test_corrupt_blf_is_a_capture_error(tmp_path: Path) -> None:
    data = (DATA / "pycan_test_CanFdMessage64.blf").read_bytes()
    path = tmp_path / "corrupt.blf"
    path.write_bytes(b"XXXX" + data[4:])
    with pytest.raises(CaptureError, match=r"corrupt\.blf"):
        read_capture(path)


def test_bad_trc_lines_are_counted(tmp_path: Path) -> None:
    text = (DATA / "pycan_test_CanMessage_V2_1.trc").read_text(encoding="utf-8").splitlines()
    text.insert(len(text) - 1, "     13     49000.000 DT")
    path = tmp_path / "bad.trc"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    frames, stats = read_capture(path)
    assert len(frames) == 11
    assert stats.bad_lines == 1
    assert stats.bad_line_numbers == [len(text) - 1]


_LINE = st.one_of(
    st.text(alphabet="()0123456789.# ABCDEFRTabcdefrtvcan", max_size=40),
    st.builds(
        lambda t, i, d: f"({t:.6f}) can0 {i}#{d.hex().upper()}",
        st.floats(0, 2e9),
        st.sampled_from(["123", "7FF", "18EBFF00", "1"]),
        st.binary(max_size=10),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_LINE, max_size=12))
def test_any_candump_text_is_read_or_counted_never_raised(
    tmp_path_factory: Any, lines: list[str]
) -> None:
    path = tmp_path_factory.mktemp("candump") / "any.log"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    reader = CaptureReader(path)
    frames = list(reader)  # a line python-can would fail on is counted, never raised
    blank = sum(1 for line in "\n".join(lines).splitlines() if not line.strip())
    total = len("\n".join(lines).splitlines())
    assert len(frames) + reader.stats.bad_lines + blank == total


_ASC_HEADER = "date Sam Sep 30 15:06:13.191 2017\nbase hex  timestamps absolute\n"
_ASC_TIME = st.floats(0, 1e5).map(lambda t: f"{t:.6f}")
_ASC_ID = st.one_of(
    st.integers(0, 0x7FF).map(lambda i: f"{i:X}"),
    st.integers(0, 0x1FFFFFFF).map(lambda i: f"{i:X}x"),
)
_ASC_FRAME = st.builds(
    lambda t, i, data: f"   {t} 1  {i}  Rx   d {len(data)} {data.hex(' ').upper()}",
    _ASC_TIME,
    _ASC_ID,
    st.binary(max_size=8),
)
_ASC_BROKEN = st.one_of(
    st.builds(lambda t, i: f"   {t} 1  {i}  Rx   d 8 01 ZZ", _ASC_TIME, _ASC_ID),
    st.builds(lambda t, i: f"   {t} 2  {i}  Tx   d Q", _ASC_TIME, _ASC_ID),
    st.builds(lambda t, i: f"   {t} 1  {i}  Rx   d 1 1FF", _ASC_TIME, _ASC_ID),
    st.builds(lambda t: f"   {t} CANFD", _ASC_TIME),
    st.builds(lambda t, i: f"   {t} CANFD   1 Rx {i} 1 0 8", _ASC_TIME, _ASC_ID),
)
_ASC_OTHER = st.one_of(
    st.text(alphabet="/ abcdefxyz:", max_size=20).map(lambda s: f"// {s}"),
    st.builds(lambda t: f"   {t} 1  Statistic: D 0 R 0 XD 0", _ASC_TIME),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["frame", "broken", "other"]), st.data()), max_size=12))
def test_any_asc_frame_line_is_read_or_counted_never_raised(
    tmp_path_factory: Any, kinds: list[tuple[str, st.DataObject]]
) -> None:
    strategies = {"frame": _ASC_FRAME, "broken": _ASC_BROKEN, "other": _ASC_OTHER}
    lines = [(kind, data.draw(strategies[kind])) for kind, data in kinds]
    path = tmp_path_factory.mktemp("asc") / "any.asc"
    path.write_text(_ASC_HEADER + "".join(f"{line}\n" for _, line in lines), encoding="utf-8")
    frames, stats = read_capture(path)
    broken = [n + 3 for n, (kind, _) in enumerate(lines) if kind == "broken"]
    assert len(frames) == sum(kind == "frame" for kind, _ in lines)
    assert (stats.bad_lines, stats.bad_line_numbers) == (len(broken), broken)
