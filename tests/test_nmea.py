"""NMEA 0183: parsing RMC and GGA, refusals by reason, builders, and merging into fixes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from firmware_sim.errors import NmeaError
from firmware_sim.nmea import (
    KNOTS_TO_KMH,
    MAX_SENTENCE_LENGTH,
    Fix,
    FixAssembler,
    Gga,
    Rmc,
    checksum,
    format_gga,
    format_rmc,
    parse_sentence,
)

# The textbook pair (NMEA 0183 reference examples), checksums as published.
RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"


def sentence(body: str) -> str:
    """``$body*hh`` with the right checksum."""
    return f"${body}*{checksum(body):02X}"


def reason(line: str | bytes) -> str:
    with pytest.raises(NmeaError) as info:
        parse_sentence(line)
    return info.value.reason


def test_the_textbook_examples() -> None:
    rmc = parse_sentence(RMC)
    assert rmc == Rmc(
        talker="GP",
        time_utc=time(12, 35, 19, tzinfo=UTC),
        status="A",
        lat=pytest.approx(48 + 7.038 / 60),
        lon=pytest.approx(11 + 31 / 60),
        speed_knots=22.4,
        course=84.4,
        date=date(1994, 3, 23),
        mode="",
    )
    assert rmc.valid and rmc.quality == 1
    gga = parse_sentence(GGA + "\r\n")
    assert isinstance(gga, Gga)
    assert (gga.quality, gga.satellites, gga.hdop, gga.alt, gga.geoid_sep) == (
        1,
        8,
        0.9,
        545.4,
        46.9,
    )
    assert gga.valid


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "BD", "GB", "GQ", "GI"])
def test_any_talker(talker: str) -> None:
    rmc = parse_sentence(
        sentence(f"{talker}RMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,A,V")
    )
    gga = parse_sentence(
        sentence(f"{talker}GGA,083559.00,4717.11437,N,00833.91522,E,1,08,1.01,499.6,M,48.0,M,,")
    )
    assert isinstance(rmc, Rmc) and rmc.talker == talker and rmc.mode == "A"
    assert rmc.time_utc == time(8, 35, 59, tzinfo=UTC)
    assert isinstance(gga, Gga) and gga.talker == talker


def test_southern_and_western_hemispheres() -> None:
    rmc = parse_sentence(sentence("GPRMC,000000.5,A,3352.12800,S,15112.55800,W,0.0,,010100,,,D"))
    assert isinstance(rmc, Rmc)
    assert rmc.lat == pytest.approx(-(33 + 52.128 / 60))
    assert rmc.lon == pytest.approx(-(151 + 12.558 / 60))
    assert rmc.course is None and rmc.quality == 2
    assert rmc.time_utc == time(0, 0, 0, 500_000, tzinfo=UTC)
    assert rmc.date == date(2000, 1, 1)


def test_sentences_without_a_fix_are_returned_marked_invalid() -> None:
    rmc = parse_sentence(sentence("GPRMC,,V,,,,,,,,,,N"))
    assert isinstance(rmc, Rmc) and not rmc.valid and rmc.quality == 0
    assert (rmc.time_utc, rmc.lat, rmc.lon, rmc.date) == (None, None, None, None)
    gga = parse_sentence(sentence("GNGGA,101010.00,,,,,0,03,,,,,,,"))
    assert isinstance(gga, Gga) and not gga.valid and gga.satellites == 3
    # a receiver that repeats its last position while it has no fix
    stale = parse_sentence(sentence("GPRMC,101010.00,V,4807.038,N,01131.000,E,,,230394,,,N"))
    assert isinstance(stale, Rmc) and not stale.valid


@pytest.mark.parametrize(
    "line",
    [
        sentence("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00"),
        sentence("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K,A"),
        sentence("GNGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1,1"),
        sentence("PUBX,00,081350.00,4717.113210,N,00833.915187,E,546.589,G3,2.1,2.0"),
        "!" + sentence("AIVDM,1,1,,A,13aEOK?P00PD2wVMdLDRhgvL289?,0")[1:],
    ],
)
def test_other_sentences_are_none(line: str) -> None:
    assert parse_sentence(line) is None


REFUSALS = [
    ("no checksum", RMC[:-3], "no_checksum"),
    ("wrong checksum", RMC[:-2] + "6B", "bad_checksum"),
    ("a changed digit", RMC.replace("4807.038", "4807.039"), "bad_checksum"),
    ("too long", sentence("GPGSV," + "1" * (MAX_SENTENCE_LENGTH)), "too_long"),
    ("no dollar", RMC[1:], "malformed"),
    ("garbage first", "x" + RMC, "malformed"),
    ("one hex digit", RMC[:-1], "malformed"),
    ("non-hex checksum", RMC[:-2] + "ZZ", "malformed"),
    ("non-ascii", RMC.encode()[:10] + b"\xff" + RMC.encode()[11:], "malformed"),
    (
        "control character",
        sentence("GPRMC,123519,A,4807.038,N,01131.000,E,0,0,230394,,\x07"),
        "malformed",
    ),
    (
        "lower-case address",
        sentence("gprmc,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"),
        "malformed",
    ),
    ("short address", sentence("GPRM,123519"), "malformed"),
    (
        "rmc too few fields",
        sentence("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394"),
        "malformed",
    ),
    (
        "rmc too many fields",
        sentence("GPRMC,123519,A,4807.038,N,01131.000,E,0,0,230394,,,A,V,X"),
        "malformed",
    ),
    (
        "gga too few fields",
        sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M"),
        "malformed",
    ),
    ("status X", sentence("GPRMC,123519,X,4807.038,N,01131.000,E,0,0,230394,,"), "malformed"),
    ("mode Z", sentence("GPRMC,123519,A,4807.038,N,01131.000,E,0,0,230394,,,Z"), "malformed"),
    ("latitude 91", sentence("GPRMC,123519,A,9100.000,N,01131.000,E,0,0,230394,,"), "malformed"),
    (
        "latitude 90 and a bit",
        sentence("GPRMC,123519,A,9000.001,N,01131.000,E,0,0,230394,,"),
        "malformed",
    ),
    ("minute 60", sentence("GPRMC,123519,A,4860.000,N,01131.000,E,0,0,230394,,"), "malformed"),
    ("longitude 181", sentence("GPRMC,123519,A,4807.038,N,18100.000,E,0,0,230394,,"), "malformed"),
    ("hemisphere X", sentence("GPRMC,123519,A,4807.038,X,01131.000,E,0,0,230394,,"), "malformed"),
    ("no hemisphere", sentence("GPRMC,123519,A,4807.038,,01131.000,E,0,0,230394,,"), "malformed"),
    (
        "signed latitude",
        sentence("GPRMC,123519,A,-4807.038,N,01131.000,E,0,0,230394,,"),
        "malformed",
    ),
    ("half a position", sentence("GPRMC,123519,V,4807.038,N,,,0,0,230394,,"), "malformed"),
    ("valid without position", sentence("GPRMC,123519,A,,,,,0,0,230394,,"), "malformed"),
    ("hour 24", sentence("GPRMC,243519,A,4807.038,N,01131.000,E,0,0,230394,,"), "malformed"),
    ("leap second", sentence("GPRMC,235960,A,4807.038,N,01131.000,E,0,0,311216,,"), "malformed"),
    (
        "time with letters",
        sentence("GPRMC,12a519,A,4807.038,N,01131.000,E,0,0,230394,,"),
        "malformed",
    ),
    ("30 February", sentence("GPRMC,123519,A,4807.038,N,01131.000,E,0,0,300294,,"), "malformed"),
    ("speed nan", sentence("GPRMC,123519,A,4807.038,N,01131.000,E,nan,0,230394,,"), "malformed"),
    (
        "speed with exponent",
        sentence("GPRMC,123519,A,4807.038,N,01131.000,E,1e3,0,230394,,"),
        "malformed",
    ),
    (
        "negative speed",
        sentence("GPRMC,123519,A,4807.038,N,01131.000,E,-1,0,230394,,"),
        "malformed",
    ),
    ("course 361", sentence("GPRMC,123519,A,4807.038,N,01131.000,E,0,361,230394,,"), "malformed"),
    (
        "quality 9",
        sentence("GPGGA,123519,4807.038,N,01131.000,E,9,08,0.9,545.4,M,46.9,M,,"),
        "malformed",
    ),
    (
        "satellites x",
        sentence("GPGGA,123519,4807.038,N,01131.000,E,1,x8,0.9,545.4,M,46.9,M,,"),
        "malformed",
    ),
    (
        "altitude in feet",
        sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,F,46.9,M,,"),
        "malformed",
    ),
    (
        "fix without time",
        sentence("GPGGA,,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
        "malformed",
    ),
]


@pytest.mark.parametrize(("line", "why"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusal(line: str | bytes, why: str) -> None:
    assert reason(line) == why


def test_lenient_length_limit() -> None:
    """Longer than NMEA's 82 characters, as high-precision receivers write, is still read."""
    body = (
        "GNGGA,083559.0000,4717.1143712,N,00833.9152201,E,4,12,0.51,499.6123,M,48.0123,M,1.5,0001"
    )
    line = sentence(body.replace(",M,1.5", ",M,1.5" + "0" * 8))
    assert 82 < len(line) <= MAX_SENTENCE_LENGTH
    assert isinstance(parse_sentence(line), Gga)


# ---------------------------------------------------------------------------------------------
# Properties


@given(st.text(max_size=150) | st.binary(max_size=150))
def test_arbitrary_lines_raise_only_nmea_errors(line: str | bytes) -> None:
    try:
        result = parse_sentence(line)
    except NmeaError as exc:
        assert exc.reason in {"malformed", "no_checksum", "bad_checksum", "too_long"}
    else:
        assert result is None or isinstance(result, Rmc | Gga)


nmea_alphabet = "GPNLRMCAV0123456789.,-NSEW*$ \r\n"


@given(st.text(alphabet=nmea_alphabet, max_size=90), st.sampled_from(["GPRMC,", "GNGGA,", ""]))
def test_nmea_like_bodies_with_good_checksums(body: str, head: str) -> None:
    """With a correct checksum the only refusals left are malformed and too_long."""
    line = sentence(head + body)
    try:
        parse_sentence(line)
    except NmeaError as exc:
        assert exc.reason in {"malformed", "too_long"}


fixes = st.builds(
    Fix,
    time_utc=st.times(timezones=st.just(UTC)),
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    alt=st.none() | st.floats(-400, 9000),
    speed_kmh=st.none() | st.floats(0, 1800),
    heading=st.none() | st.floats(0, 359.99),
    quality=st.integers(1, 8),
    satellites=st.none() | st.integers(0, 40),
    hdop=st.none() | st.floats(0.4, 99),
    date=st.none() | st.dates(date(1980, 1, 1), date(2079, 12, 31)),
)


def close_angle(a: float, b: float, tol: float) -> bool:
    return abs((a - b + 180) % 360 - 180) <= tol


@given(fixes, st.sampled_from(["GP", "GN", "GL", "GA", "BD"]))
def test_built_sentences_round_trip(fix: Fix, talker: str) -> None:
    rmc_line, gga_line = format_rmc(fix, talker), format_gga(fix, talker)
    assert len(rmc_line) <= 80 and len(gga_line) <= 80  # NMEA's 82 with CR LF
    rmc, gga = parse_sentence(rmc_line), parse_sentence(gga_line)
    assert isinstance(rmc, Rmc) and isinstance(gga, Gga)
    step = 1e-5 / 60 / 2 + 1e-12  # half of the 0.00001 minute the builders write
    for s in (rmc, gga):
        assert s.valid and s.talker == talker
        assert s.lat is not None and abs(s.lat - fix.lat) <= step
        assert s.lon is not None and abs(s.lon - fix.lon) <= step
        assert s.time_utc is not None
        assert s.time_utc.replace(microsecond=0) == fix.time_utc.replace(microsecond=0)
        assert 0 <= fix.time_utc.microsecond - s.time_utc.microsecond < 10_000
    assert rmc.date == fix.date
    assert rmc.quality == gga.quality == fix.quality
    if fix.speed_kmh is None:
        assert rmc.speed_knots is None
    else:
        assert rmc.speed_knots is not None
        assert abs(rmc.speed_knots * KNOTS_TO_KMH - fix.speed_kmh) <= 0.0005 * KNOTS_TO_KMH + 1e-9
    if fix.heading is None:
        assert rmc.course is None
    else:
        assert rmc.course is not None and close_angle(rmc.course, fix.heading, 0.005 + 1e-9)
    assert gga.satellites == fix.satellites
    assert gga.hdop == (None if fix.hdop is None else pytest.approx(fix.hdop, abs=0.005 + 1e-9))
    assert gga.alt == (None if fix.alt is None else pytest.approx(fix.alt, abs=0.05 + 1e-9))


@given(fixes, st.data())
def test_single_character_corruption_is_refused_or_harmless(fix: Fix, data: st.DataObject) -> None:
    line = data.draw(st.sampled_from([format_rmc(fix), format_gga(fix)]))
    i = data.draw(st.integers(0, len(line) - 1))
    c = data.draw(st.characters(min_codepoint=0, max_codepoint=255))
    assume(c != line[i])
    corrupted = line[:i] + c + line[i + 1 :]
    try:
        parsed = parse_sentence(corrupted)
    except NmeaError:
        return
    if parsed is None:  # '$' became '!': an encapsulated sentence, ignored
        assert corrupted[0] == "!"
    else:  # only a change the checksum cannot see: the case of a hex digit
        assert parsed == parse_sentence(line)
        assert corrupted.upper() == line.upper()


def test_no_fix_is_built_without_a_position() -> None:
    fix = Fix(time(1, 2, 3, tzinfo=UTC), 48.0, 2.0, alt=30.0, quality=0, satellites=2)
    rmc, gga = parse_sentence(format_rmc(fix)), parse_sentence(format_gga(fix))
    assert isinstance(rmc, Rmc) and not rmc.valid and rmc.lat is None
    assert isinstance(gga, Gga) and not gga.valid and gga.lat is None and gga.satellites == 2


def test_fix_at_time_ms() -> None:
    fix = Fix.at_time_ms(1_795_334_461_234, lat=1.0, lon=2.0)
    assert fix.time_utc == time(8, 1, 1, 234_000, tzinfo=UTC)
    assert fix.datetime_utc == datetime(2026, 11, 22, 8, 1, 1, 234_000, tzinfo=UTC)
    assert (fix.quality, fix.satellites, fix.hdop) == (1, 9, 0.9)
    assert Fix(time(1, 0, tzinfo=UTC), 0.0, 0.0).datetime_utc is None


# ---------------------------------------------------------------------------------------------
# Merging into fixes


def epoch(second: int, *, lat: float = 48.0, quality: int = 1) -> tuple[Rmc, Gga]:
    fix = Fix.at_time_ms(
        1_795_334_400_000 + second * 1000, lat=lat, lon=2.0, alt=30.0, speed_kmh=36.0, heading=90.0
    )
    fix = dataclasses.replace(fix, quality=quality)
    rmc, gga = parse_sentence(format_rmc(fix)), parse_sentence(format_gga(fix))
    assert isinstance(rmc, Rmc) and isinstance(gga, Gga)
    return rmc, gga


def test_rmc_and_gga_of_one_epoch_make_one_fix() -> None:
    a = FixAssembler()
    rmc, gga = epoch(0)
    assert a.feed(rmc) == []
    (fix,) = a.feed(gga)
    assert fix.speed_kmh == pytest.approx(36.0, abs=0.001)
    assert (fix.heading, fix.alt, fix.satellites, fix.hdop, fix.quality) == (90.0, 30.0, 9, 0.9, 1)
    assert fix.date == date(2026, 11, 22) and fix.time_utc == time(8, 0, tzinfo=UTC)
    assert a.feed(rmc) == [] and a.flush() == []  # a late copy of the same epoch


def test_either_order() -> None:
    a = FixAssembler()
    rmc, gga = epoch(0)
    assert a.feed(gga) == []
    assert len(a.feed(rmc)) == 1


def test_a_receiver_sending_only_rmc() -> None:
    a = FixAssembler()
    first, second, third = epoch(0)[0], epoch(1)[0], epoch(2)[0]
    assert a.feed(first) == []  # still waiting for a GGA
    out = a.feed(second)  # the first epoch ends; from now on RMC alone completes one
    assert [f.time_utc.second for f in out] == [0, 1]
    assert out[0].alt is None and out[0].satellites is None
    assert [f.time_utc.second for f in a.feed(third)] == [2]


def test_a_lost_gga_delays_nothing_and_is_expected_again() -> None:
    a = FixAssembler()
    (r0, g0), (r1, _lost), (r2, g2) = epoch(0), epoch(1), epoch(2)
    assert len(a.feed(r0) + a.feed(g0)) == 1
    assert a.feed(r1) == []
    out = a.feed(r2)  # g1 was lost: epoch 1 ends without it, epoch 2 does not wait for one
    assert [f.alt for f in out] == [None, None]
    assert a.feed(g2) == []  # late for epoch 2, but GGA is expected again
    (r3, g3) = epoch(3)
    assert a.feed(r3) == []
    (fix,) = a.feed(g3)
    assert fix.alt == 30.0


def test_epochs_without_a_fix_give_nothing() -> None:
    a = FixAssembler()
    rmc, gga = epoch(0, quality=0)
    assert a.feed(rmc) + a.feed(gga) + a.flush() == []
    rmc, gga = epoch(1)
    assert len(a.feed(rmc) + a.feed(gga)) == 1


def test_flush_ends_a_waiting_epoch() -> None:
    a = FixAssembler()
    rmc, gga = epoch(0)
    assert a.feed(gga) == []
    (fix,) = a.flush()
    assert fix.speed_kmh is None and fix.date is None and fix.alt == 30.0
    assert a.feed(rmc) + a.flush() == []  # the rest of a flushed epoch is not a second fix
