"""NMEA 0183 position sentences: parse RMC and GGA, build them, and merge them into fixes.

:func:`parse_sentence` takes one line and returns an :class:`Rmc`, a :class:`Gga`, or
``None`` for any other well-formed sentence (GSV, VTG, proprietary ``$P...``, ...). Any
talker is accepted (GP, GN, GL, GA, BD, GB, GQ, ...). It raises
:class:`~firmware_sim.errors.NmeaError` with one of these ``reason``\\ s:

``too_long``
    more than :data:`MAX_SENTENCE_LENGTH` characters. NMEA 0183 allows 82 with ``$`` and
    CR LF; receivers in high-precision modes exceed that, so the limit is lenient but bounded.
``no_checksum``
    no ``*hh`` checksum: every sentence must carry one.
``bad_checksum``
    the checksum does not match (hex digits in either case are accepted).
``malformed``
    anything else: no ``$``, a non-printable or non-ASCII character, the wrong number of
    fields, a number that does not parse, a latitude beyond 90 degrees, a minute beyond 59,
    a time or date that does not exist (a leap second 60 included).

A sentence without a fix (RMC status ``V`` or mode ``N``, GGA quality 0) is well formed: it
is returned with ``valid`` false and its position fields ``None`` when empty, so a reader
can count it. :class:`FixAssembler` merges the valid RMC and GGA of one epoch (the same UTC
time) into one :class:`Fix`. :func:`format_rmc` and :func:`format_gga` build sentences
(with checksums) from a :class:`Fix` for the simulated car's receiver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import reduce
from operator import xor

from firmware_sim.errors import NmeaError

__all__ = [
    "KNOTS_TO_KMH",
    "MAX_SENTENCE_LENGTH",
    "Fix",
    "FixAssembler",
    "Gga",
    "Rmc",
    "checksum",
    "format_gga",
    "format_rmc",
    "parse_sentence",
]

MAX_SENTENCE_LENGTH = 120
"""Most characters a sentence may have, from ``$`` to the checksum (CR LF not counted)."""
KNOTS_TO_KMH = 1.852

# RMC mode indicator (NMEA 2.3+) to the GGA quality it corresponds to.
_MODE_QUALITY = {"A": 1, "D": 2, "P": 3, "R": 4, "F": 5, "E": 6, "M": 7, "S": 8, "N": 0}
_QUALITY_MODE = {q: m for m, q in _MODE_QUALITY.items()}

_ADDRESS = re.compile(r"[A-Z]{2}[A-Z]{3}")
_TIME = re.compile(r"(\d\d)(\d\d)(\d\d)(?:\.(\d{1,9}))?")
_DATE = re.compile(r"(\d\d)(\d\d)(\d\d)")
_LAT = re.compile(r"(\d\d)(\d\d(?:\.\d{1,9})?)")
_LON = re.compile(r"(\d\d\d)(\d\d(?:\.\d{1,9})?)")
_UNSIGNED = re.compile(r"\d{1,9}(?:\.\d{1,9})?")
_SIGNED = re.compile(r"-?\d{1,9}(?:\.\d{1,9})?")
_HEX = re.compile(r"[0-9A-Fa-f]{2}")
# printable ASCII without the NMEA delimiters $ ! * (the body of a sentence)
_BODY = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True, slots=True)
class Rmc:
    """A recommended minimum sentence (RMC): time, date, position, speed and course."""

    talker: str
    time_utc: time | None
    status: str  # "A" valid, "V" void
    lat: float | None
    lon: float | None
    speed_knots: float | None
    course: float | None
    date: date | None
    mode: str  # "" before NMEA 2.3, else A D E F M N P R S

    @property
    def valid(self) -> bool:
        """Whether the receiver had a fix."""
        return self.status == "A" and self.mode != "N" and self.lat is not None

    @property
    def quality(self) -> int:
        """The GGA-style fix quality the mode indicator stands for (1 when absent)."""
        if not self.valid:
            return 0
        return _MODE_QUALITY.get(self.mode, 1)


@dataclass(frozen=True, slots=True)
class Gga:
    """A fix data sentence (GGA): time, position, quality, satellites, HDOP, altitude."""

    talker: str
    time_utc: time | None
    lat: float | None
    lon: float | None
    quality: int  # 0 no fix, 1 GNSS, 2 differential, ... 6 estimated, 8 simulation
    satellites: int | None
    hdop: float | None
    alt: float | None  # metres above mean sea level
    geoid_sep: float | None

    @property
    def valid(self) -> bool:
        """Whether the receiver had a fix."""
        return self.quality > 0 and self.lat is not None


@dataclass(frozen=True, slots=True)
class Fix:
    """One position fix of the receiver, merged from the RMC and GGA of one epoch.

    ``time_utc`` is the time of day (UTC); ``date`` comes from RMC. Speed and heading come
    from RMC, altitude, satellites and HDOP from GGA: each is ``None`` when its sentence
    was missing or left it empty.
    """

    time_utc: time
    lat: float
    lon: float
    alt: float | None = None
    speed_kmh: float | None = None
    heading: float | None = None
    quality: int = 1
    satellites: int | None = None
    hdop: float | None = None
    date: date | None = None

    @classmethod
    def at_time_ms(
        cls,
        time_ms: int,
        *,
        lat: float,
        lon: float,
        alt: float | None = None,
        speed_kmh: float | None = None,
        heading: float | None = None,
        quality: int = 1,
        satellites: int | None = 9,
        hdop: float | None = 0.9,
    ) -> Fix:
        """A fix at ``time_ms`` (ms since the Unix epoch): a good one unless told otherwise."""
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=time_ms)
        return cls(
            time_utc=moment.timetz(),
            lat=lat,
            lon=lon,
            alt=alt,
            speed_kmh=speed_kmh,
            heading=heading,
            quality=quality,
            satellites=satellites,
            hdop=hdop,
            date=moment.date(),
        )

    @property
    def datetime_utc(self) -> datetime | None:
        """Date and time of the fix, or ``None`` without a date."""
        if self.date is None:
            return None
        return datetime.combine(self.date, self.time_utc.replace(tzinfo=UTC))


# ---------------------------------------------------------------------------------------------
# Parsing


def checksum(body: str) -> int:
    """The NMEA checksum of ``body`` (the characters between ``$`` and ``*``)."""
    return reduce(xor, body.encode("ascii"), 0)


def _malformed(what: str, line: str) -> NmeaError:
    return NmeaError("malformed", f"{what} in {line}" if line else what)


def _time(text: str, line: str) -> time | None:
    if not text:
        return None
    m = _TIME.fullmatch(text)
    if m is None:
        raise _malformed(f"time {text!r}", line)
    hh, mm, ss, frac = int(m[1]), int(m[2]), int(m[3]), m[4] or ""
    if hh > 23 or mm > 59 or ss > 59:
        raise _malformed(f"time {text!r}", line)
    return time(hh, mm, ss, int(frac[:6].ljust(6, "0")), tzinfo=UTC)


def _date(text: str, line: str) -> date | None:
    if not text:
        return None
    m = _DATE.fullmatch(text)
    if m is None:
        raise _malformed(f"date {text!r}", line)
    yy = int(m[3])
    try:
        return date(2000 + yy if yy < 80 else 1900 + yy, int(m[2]), int(m[1]))
    except ValueError:
        raise _malformed(f"date {text!r}", line) from None


def _angle(
    text: str, hemi: str, line: str, *, pattern: re.Pattern[str], limit: int, signs: str
) -> float | None:
    if not text and not hemi:
        return None
    m = pattern.fullmatch(text)
    if m is None or hemi not in signs or len(hemi) != 1:
        raise _malformed(f"coordinate {text!r},{hemi!r}", line)
    degrees, minutes = int(m[1]), float(m[2])
    value = degrees + minutes / 60
    if minutes >= 60 or value > limit:
        raise _malformed(f"coordinate {text!r} out of range", line)
    return -value if hemi == signs[1] else value


def _number(text: str, line: str, pattern: re.Pattern[str] = _UNSIGNED) -> float | None:
    if not text:
        return None
    if pattern.fullmatch(text) is None:
        raise _malformed(f"number {text!r}", line)
    return float(text)


def _parse_rmc(talker: str, f: list[str], line: str) -> Rmc:
    if len(f) not in (12, 13, 14):  # NMEA 2.1, 2.3 (mode), 4.1 (navigation status)
        raise _malformed(f"RMC with {len(f)} fields", line)
    status = f[2]
    if status not in ("A", "V"):
        raise _malformed(f"RMC status {status!r}", line)
    mode = f[12] if len(f) >= 13 else ""
    if mode not in _MODE_QUALITY and mode != "":
        raise _malformed(f"RMC mode {mode!r}", line)
    course = _number(f[8], line)
    if course is not None and course > 360:
        raise _malformed(f"course {course}", line)
    if f[10]:
        _number(f[10], line)  # magnetic variation: checked, not kept
    if f[11] not in ("", "E", "W"):
        raise _malformed(f"variation direction {f[11]!r}", line)
    rmc = Rmc(
        talker=talker,
        time_utc=_time(f[1], line),
        status=status,
        lat=_angle(f[3], f[4], line, pattern=_LAT, limit=90, signs="NS"),
        lon=_angle(f[5], f[6], line, pattern=_LON, limit=180, signs="EW"),
        speed_knots=_number(f[7], line),
        course=course,
        date=_date(f[9], line),
        mode=mode,
    )
    if (rmc.lat is None) != (rmc.lon is None):
        raise _malformed("RMC with half a position", line)
    if status == "A" and mode != "N" and (rmc.lat is None or rmc.time_utc is None):
        raise _malformed("valid RMC without time or position", line)
    return rmc


def _parse_gga(talker: str, f: list[str], line: str) -> Gga:
    if len(f) != 15:
        raise _malformed(f"GGA with {len(f)} fields", line)
    if len(f[6]) != 1 or f[6] not in "012345678":
        raise _malformed(f"GGA quality {f[6]!r}", line)
    quality = int(f[6])
    if f[7] and not f[7].isdigit():
        raise _malformed(f"satellites {f[7]!r}", line)
    if f[10] not in ("", "M") or f[12] not in ("", "M"):
        raise _malformed("GGA units", line)
    if f[13]:
        _number(f[13], line)  # age of differential corrections: checked, not kept
    gga = Gga(
        talker=talker,
        time_utc=_time(f[1], line),
        lat=_angle(f[2], f[3], line, pattern=_LAT, limit=90, signs="NS"),
        lon=_angle(f[4], f[5], line, pattern=_LON, limit=180, signs="EW"),
        quality=quality,
        satellites=int(f[7]) if f[7] else None,
        hdop=_number(f[8], line),
        alt=_number(f[9], line, _SIGNED),
        geoid_sep=_number(f[11], line, _SIGNED),
    )
    if (gga.lat is None) != (gga.lon is None):
        raise _malformed("GGA with half a position", line)
    if quality > 0 and (gga.lat is None or gga.time_utc is None):
        raise _malformed("GGA with a fix but without time or position", line)
    return gga


def parse_sentence(line: str | bytes) -> Rmc | Gga | None:
    """One NMEA sentence: an :class:`Rmc`, a :class:`Gga`, ``None`` for other types.

    Trailing CR/LF is ignored. Raises :class:`NmeaError` (see the module docstring).
    """
    if isinstance(line, bytes | bytearray):
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise _malformed("non-ASCII byte", repr(bytes(line[:MAX_SENTENCE_LENGTH]))) from None
    elif isinstance(line, str):
        text = line
    else:
        raise _malformed(f"a {type(line).__name__}, not a line", "")
    text = text.rstrip("\r\n")
    if len(text) > MAX_SENTENCE_LENGTH:
        raise NmeaError("too_long", text[:MAX_SENTENCE_LENGTH] + "...")
    if not text.startswith(("$", "!")):
        raise _malformed("no '$' at the start", text)
    star = text.rfind("*")
    if star < 0:
        raise NmeaError("no_checksum", text)
    body, given = text[1:star], text[star + 1 :]
    if _HEX.fullmatch(given) is None:
        raise _malformed(f"checksum field {given!r}", text)
    if _BODY.fullmatch(body) is None or "$" in body or "!" in body or "*" in body:
        raise _malformed("a character NMEA does not allow", text)
    if int(given, 16) != checksum(body):
        raise NmeaError("bad_checksum", text)
    fields = body.split(",")
    address = fields[0]
    if text[0] == "!" or address.startswith("P"):
        return None  # encapsulated or proprietary sentence
    if _ADDRESS.fullmatch(address) is None:
        raise _malformed(f"address {address!r}", text)
    kind = address[2:]
    if kind == "RMC":
        return _parse_rmc(address[:2], fields, text)
    if kind == "GGA":
        return _parse_gga(address[:2], fields, text)
    return None


# ---------------------------------------------------------------------------------------------
# Merging RMC and GGA into fixes


class FixAssembler:
    """Merge the valid RMC and GGA of each epoch (one UTC time) into one :class:`Fix`.

    Sans-I/O: :meth:`feed` takes parsed sentences and returns the fixes they complete. An
    epoch is complete when every sentence type of the previous epoch has arrived (both at
    first), or when a sentence of a later epoch arrives; :meth:`flush` ends the last one.
    """

    def __init__(self) -> None:
        self._time: time | None = None
        self._seen: set[str] = set()
        self._rmc: Rmc | None = None
        self._gga: Gga | None = None
        self._expect: frozenset[str] = frozenset(("RMC", "GGA"))
        self._done: time | None = None

    def feed(self, sentence: Rmc | Gga) -> list[Fix]:
        """Add one sentence; the fixes it completes (none, one, or two)."""
        t = sentence.time_utc
        kind = "RMC" if isinstance(sentence, Rmc) else "GGA"
        if t is None:
            return []
        if t == self._done:  # late for an epoch already out: wait for it from the next one on
            self._expect |= {kind}
            return []
        out: list[Fix] = []
        if t != self._time:
            if self._time is not None:
                self._expect = frozenset(self._seen)
            out += self.flush()
            self._time = t
        self._seen.add(kind)
        if sentence.valid:
            if isinstance(sentence, Rmc):
                self._rmc = sentence
            else:
                self._gga = sentence
        if self._seen >= self._expect:
            out += self.flush()
        return out

    def flush(self) -> list[Fix]:
        """End the current epoch: its fix if it had a valid sentence."""
        rmc, gga = self._rmc, self._gga
        when = self._time
        self._time, self._rmc, self._gga = None, None, None
        self._seen = set()
        if when is not None:
            self._done = when  # later copies of this epoch are not a new one
        if when is None or (rmc is None and gga is None):
            return []
        lat = gga.lat if gga is not None else rmc.lat if rmc is not None else None
        lon = gga.lon if gga is not None else rmc.lon if rmc is not None else None
        assert lat is not None and lon is not None  # valid sentences carry a position
        speed = rmc.speed_knots if rmc is not None else None
        return [
            Fix(
                time_utc=when,
                lat=lat,
                lon=lon,
                alt=gga.alt if gga is not None else None,
                speed_kmh=speed * KNOTS_TO_KMH if speed is not None else None,
                heading=rmc.course if rmc is not None else None,
                quality=gga.quality if gga is not None else rmc.quality if rmc else 0,
                satellites=gga.satellites if gga is not None else None,
                hdop=gga.hdop if gga is not None else None,
                date=rmc.date if rmc is not None else None,
            )
        ]


# ---------------------------------------------------------------------------------------------
# Building


def _with_checksum(body: str) -> str:
    return f"${body}*{checksum(body):02X}"


def _hhmmss(t: time) -> str:
    centis = t.microsecond // 10_000
    return f"{t.hour:02d}{t.minute:02d}{t.second:02d}.{centis:02d}"


def _coordinate(value: float, width: int, signs: str) -> tuple[str, str]:
    """``ddmm.mmmmm`` (``width`` degree digits) and the hemisphere of ``value``."""
    units = round(abs(value) * 60 * 100_000)  # 1e-5 minute, about 2 cm
    degrees, rest = divmod(units, 60 * 100_000)
    minutes, fraction = divmod(rest, 100_000)
    return f"{degrees:0{width}d}{minutes:02d}.{fraction:05d}", signs[value < 0]


def _optional(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def format_rmc(fix: Fix, talker: str = "GP") -> str:
    """The RMC sentence of ``fix`` (status ``V`` and no position when ``quality`` is 0)."""
    valid = fix.quality > 0
    lat, ns = _coordinate(fix.lat, 2, "NS") if valid else ("", "")
    lon, ew = _coordinate(fix.lon, 3, "EW") if valid else ("", "")
    knots = fix.speed_kmh / KNOTS_TO_KMH if fix.speed_kmh is not None and valid else None
    course = fix.heading % 360 if fix.heading is not None and valid else None
    day = fix.date.strftime("%d%m%y") if fix.date is not None else ""
    fields = [
        f"{talker}RMC",
        _hhmmss(fix.time_utc),
        "A" if valid else "V",
        lat,
        ns,
        lon,
        ew,
        _optional(knots, ".3f"),
        _optional(course, ".2f"),
        day,
        "",
        "",
        _QUALITY_MODE.get(fix.quality, "A"),
    ]
    return _with_checksum(",".join(fields))


def format_gga(fix: Fix, talker: str = "GP") -> str:
    """The GGA sentence of ``fix`` (quality 0 and no position when ``quality`` is 0)."""
    valid = fix.quality > 0
    lat, ns = _coordinate(fix.lat, 2, "NS") if valid else ("", "")
    lon, ew = _coordinate(fix.lon, 3, "EW") if valid else ("", "")
    sats = f"{fix.satellites:02d}" if fix.satellites is not None else ""
    alt = fix.alt if valid else None
    fields = [
        f"{talker}GGA",
        _hhmmss(fix.time_utc),
        lat,
        ns,
        lon,
        ew,
        str(fix.quality),
        sats,
        _optional(fix.hdop, ".2f"),
        _optional(alt, ".1f"),
        "M" if alt is not None else "",
        "",
        "",
        "",
        "",
    ]
    return _with_checksum(",".join(fields))
