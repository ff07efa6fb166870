"""The run report: its HTML structure, escaping, empty data, its JSON, and Chromium's view."""

from __future__ import annotations

import collections
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_sim.scenario.record import (
    ExpectationResult,
    RunRecord,
    TimelineEntry,
    UploadRecord,
)
from firmware_sim.scenario.report import (
    FUEL,
    SOC,
    SPEED,
    record_to_json,
    render_report,
    write_report,
)
from firmware_sim.sim.drive import WEST_PARIS

START_MS = 1_767_598_200_000  # 2026-01-05T07:30:00Z
HOUR_S = 3600
DRIVE_FROM_S, DRIVE_TO_S = 40, 2700
OUTAGE_S = (1200, 1500)  # the broker is down: uploads wait in the queue


def speed_kmh(t: int) -> float:
    """A town-and-ring-road drive with a red light every few minutes."""
    if not DRIVE_FROM_S + 5 <= t <= DRIVE_TO_S:
        return 0.0
    if t % 300 < 25:
        return 0.0
    v = 38 + 18 * math.sin(t / 95) + 9 * math.sin(t / 17)
    return round(max(0.0, v), 1)


def drive_record(*, energy: str = "fuel") -> RunRecord:
    """An hour's record: 44 minutes of driving west of Paris, an outage, failed expectations."""
    speeds = [(START_MS + t * 1000, speed_kmh(t)) for t in range(HOUR_S + 1)]
    total_km = sum(v for _, v in speeds) / 3600
    scale = WEST_PARIS.length_m / (total_km * 1000)
    route, travelled = [], 0.0
    for t in range(DRIVE_FROM_S, DRIVE_TO_S + 30, 5):
        travelled = sum(speed_kmh(s) for s in range(t)) / 3.6 * scale
        lat, lon, _ = WEST_PARIS.at(travelled)
        route.append((START_MS + t * 1000, lat, lon))
    level = [
        (START_MS + t * 1000, round(62 - 2.4 * min(t, DRIVE_TO_S) / DRIVE_TO_S, 1))
        for t in range(0, HOUR_S + 1, 10)
    ]
    series = {SPEED: speeds, FUEL if energy == "fuel" else SOC: level}
    uploads = []
    seq = 0

    def upload(t: float, trigger: str, size: int) -> None:
        nonlocal seq
        uploads.append(UploadRecord(START_MS + int(t * 1000), seq, trigger, size, size // 9))
        seq += 1

    for t, trigger in [(25, "door"), (30, "door"), (40, "ignition_on")]:
        upload(t, trigger, 140)
    for t in range(60, HOUR_S + 1, 60):
        upload(t, "periodic", 620 + (t * 37) % 300 if DRIVE_FROM_S < t < DRIVE_TO_S else 180)
    upload(1740.5, "alert", 230)
    upload(2000.2, "crash", 410)
    for t, trigger in [(2720, "ignition_off"), (2735, "door"), (2740, "door")]:
        upload(t, trigger, 150)
    upload(3005, "request", 900)
    uploads.sort(key=lambda u: u.t_ms)
    depth = []
    for t in range(0, HOUR_S + 1, 5):
        waiting = (t - OUTAGE_S[0]) // 60 + 1 if OUTAGE_S[0] <= t < OUTAGE_S[1] else 0
        if OUTAGE_S[1] <= t < OUTAGE_S[1] + 15:
            waiting = max(0, 5 - (t - OUTAGE_S[1]) // 3)
        depth.append((START_MS + t * 1000, waiting))
    timeline = [
        TimelineEntry(START_MS + 20_000, "action", "unlock the doors"),
        TimelineEntry(START_MS + 40_000, "action", "ignition on"),
        TimelineEntry(START_MS + OUTAGE_S[0] * 1000, "fault", "broker down"),
        TimelineEntry(START_MS + OUTAGE_S[1] * 1000, "fault", "broker back"),
        TimelineEntry(START_MS + 1_740_000, "fault", "engine fault lamp"),
        TimelineEntry(START_MS + 2_000_000, "fault", "crash flag"),
        TimelineEntry(START_MS + 2_720_000, "action", "ignition off"),
        TimelineEntry(START_MS + 3_000_000, "command", "horn and lights"),
    ]
    expectations = [
        ExpectationResult("uploads periodic every 60 s", True, "59 periodic uploads", 31),
        ExpectationResult("ignition_on upload within 2 s", True, "after 0.0 s", 33),
        ExpectationResult("nothing lost across the outage", True, "seq 0..66, no gap", 35),
        ExpectationResult(
            "crash upload within 1 s", False, "the crash upload came 1.4 s late (seq 47)", 37
        ),
        ExpectationResult("gateway status is parked", False, "status says moving", None),
    ]
    counters: dict[str, int | float] = {
        "frames_decoded": 1_284_113,
        "uploads": len(uploads),
        "bytes_sent": sum(u.size for u in uploads),
        "evicted": 0,
        "reconnects": 1,
        "decode_rate_fps": 412_305.5,
    }
    return RunRecord(
        name="commute west of Paris, broker outage",
        vin="VR3UHZKXZHT000201",
        seed=7,
        start_ms=START_MS,
        end_ms=START_MS + HOUR_S * 1000,
        wall_s=21.4,
        route=route,
        series=series,
        uploads=uploads,
        timeline=timeline,
        queue_depth=depth,
        expectations=expectations,
        counters=counters,
    )


# -- a small DOM from the stdlib parser -------------------------------------------------------

VOID = {"meta", "link", "br", "img", "hr", "input", "source", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def iter(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and (
                cls is None or cls in child.attrs.get("class", "").split()
            ):
                found.append(child)
            found += child.iter(tag, cls)
        return found

    def one(self, tag: str, cls: str | None = None) -> Node:
        [node] = self.iter(tag, cls)
        return node

    def all_text(self) -> str:
        return "".join(self.text) + "".join(c.all_text() for c in self.children)


class TreeBuilder(HTMLParser):
    """Builds :class:`Node` trees and fails on an end tag that closes nothing open."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]
        self.attributes: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.attributes += [(k, v or "") for k, v in attrs]
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].text.append(data)


def parse(page: str) -> TreeBuilder:
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder


ALLOWED_TAGS = {
    *("html", "head", "meta", "title", "style", "body", "main", "header", "h1", "h2", "p"),
    *("span", "dl", "dt", "dd", "div", "section", "table", "thead", "tbody", "tr", "th", "td"),
    *("svg", "rect", "line", "text", "path", "circle"),
}


def assert_self_contained(page: str, tree: TreeBuilder) -> None:
    assert {n.tag for n in tree.root.iter()} <= ALLOWED_TAGS
    for name, value in tree.attributes:
        assert name not in ("src", "href", "xlink:href", "srcset", "action"), (name, value)
        assert "url(" not in value
    assert not re.search(r"https?:|@import|url\(|<script|<link|<img|<iframe", page, re.I)


# -- structure --------------------------------------------------------------------------------


def test_the_report_has_every_part(tmp_path: Path) -> None:
    record = drive_record()
    path = write_report(record, tmp_path / "out" / "report.html")
    assert path == tmp_path / "out" / "report.html"
    page = path.read_text(encoding="utf-8")
    tree = parse(page)
    assert_self_contained(page, tree)
    root = tree.root
    header = root.one("header").all_text()
    assert record.name in header
    assert "FAIL" in root.one("span", "badge").all_text()
    facts = root.one("dl", "facts").all_text()
    for text in (record.vin, "7", "2026-01-05T07:30:00Z", "1 h 00 min 00 s", "21.4 s", "168×"):
        assert text in facts

    route = root.one("svg", "route")
    assert route.one("path", "track")
    assert route.one("circle", "start") and route.one("rect", "end")
    for cls in ("speed", "energy", "bytes", "queue"):
        chart = root.one("svg", cls)
        assert chart.iter("path"), cls
        labels = [t.all_text() for t in chart.iter("text")]
        assert "time since start (h:mm:ss)" in labels
        assert "0:00:00" in labels and "1:00:00" in labels  # the hour's ends on the axis
    assert "fuel level" in root.one("svg", "energy").all_text()
    assert "state of charge" not in root.one("svg", "energy").all_text()

    uploads = root.one("svg", "uploads")
    dots = uploads.iter("circle", "upload")
    assert len(dots) == len(record.uploads)
    colours = collections.defaultdict(set)
    for dot, upload in zip(dots, record.uploads, strict=True):
        colours[upload.trigger].add(dot.attrs["fill"])
        assert f"seq {upload.seq} " in dot.all_text()
    assert all(len(c) == 1 for c in colours.values())  # one colour per trigger,
    assert len({next(iter(c)) for c in colours.values()}) == len(colours)  # each its own
    assert len(uploads.iter("line", "mark")) == len(record.timeline)
    lane_labels = {t.all_text() for t in uploads.iter("text")}
    assert set(colours) <= lane_labels

    rows = root.one("table", "expectations").one("tbody").iter("tr")
    assert len(rows) == len(record.expectations)
    for row, expectation in zip(rows, record.expectations, strict=True):
        cells = [td.all_text() for td in row.iter("td")]
        line = "" if expectation.line is None else str(expectation.line)
        result = "pass" if expectation.passed else "FAIL"
        assert cells == [expectation.name, result, expectation.detail, line]
        assert ("failed" in row.attrs["class"]) is not expectation.passed
    counters = root.one("table", "counters").one("tbody").iter("tr")
    assert {r.iter("td")[0].all_text() for r in counters} == set(record.counters)
    assert "1\u202f284\u202f113" in root.one("table", "counters").all_text()
    timeline = root.one("table", "timeline").one("tbody").iter("tr")
    assert [r.iter("td")[3].all_text() for r in timeline] == [e.text for e in record.timeline]
    assert timeline[2].iter("td")[1].all_text() == "0:20:00"
    triggers = root.one("table", "triggers").all_text()
    assert "periodic" in triggers and "crash" in triggers


def test_an_electric_car_shows_its_state_of_charge(tmp_path: Path) -> None:
    record = drive_record(energy="electric")
    record.expectations = [ExpectationResult("all good", True, "")]
    tree = parse(render_report(record))
    energy = tree.root.one("svg", "energy").all_text()
    assert "state of charge" in energy and "fuel level" not in energy
    assert tree.root.one("span", "badge").all_text() == "PASS"


def path_box(d: str) -> tuple[float, float]:
    """Width and height of the box around an SVG path of M/L commands."""
    points = [(float(x), float(y)) for x, y in re.findall(r"[ML]([-\d.]+),([-\d.]+)", d)]
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return max(xs) - min(xs), max(ys) - min(ys)


@pytest.mark.parametrize("lat", [0.0, 48.9, 60.0, -60.0, 75.0])
def test_the_route_keeps_its_shape_at_any_latitude(lat: float) -> None:
    """A square of 1 km by 1 km is drawn square: longitudes shrink by cos(latitude)."""
    d_lat = 1.0 / 111.32
    d_lon = d_lat / math.cos(math.radians(lat))
    corners = [(0, 0), (0, d_lon), (d_lat, d_lon), (d_lat, 0), (0, 0)]
    route = [(START_MS + i * 1000, lat + a, 5.0 + b) for i, (a, b) in enumerate(corners)]
    record = RunRecord("square", "VIN", 0, START_MS, START_MS + 5000, route=route)
    track = parse(render_report(record)).root.one("svg", "route").one("path", "track")
    width, height = path_box(track.attrs["d"])
    assert width == pytest.approx(height, rel=0.01)
    assert width > 300  # it fills the plot


def test_the_route_of_a_long_drive_is_drawn_east_to_the_right(tmp_path: Path) -> None:
    record = drive_record()
    track = parse(render_report(record)).root.one("svg", "route").one("path", "track")
    points = re.findall(r"[ML]([-\d.]+),([-\d.]+)", track.attrs["d"])
    (x0, y0), (x1, y1) = map(float, points[0]), map(float, points[-1])
    assert x1 > x0  # Poissy to La Défense: eastwards
    assert y1 > y0  # and a little south: down the page


# -- empty and odd data -----------------------------------------------------------------------


def empty_record(**changes: object) -> RunRecord:
    record = RunRecord("empty", "VIN0", 0, START_MS, START_MS)
    for name, value in changes.items():
        setattr(record, name, value)
    return record


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"end_ms": START_MS + 600_000},
        {"route": [(START_MS, 48.9, 2.1)]},
        {"route": [(START_MS, 48.9, 2.1), (START_MS + 1000, 48.9, 2.1)]},
        {"route": [(START_MS, math.nan, 2.1), (START_MS, 48.9, math.inf)]},
        {"series": {SPEED: [(START_MS, 50.0)]}},
        {"series": {SPEED: [], FUEL: [(START_MS, math.nan)]}},
        {"series": {SPEED: [(START_MS + 10, 50.0), (START_MS + 10, 50.0)]}},
        {"series": {"Vehicle.Other": [(START_MS, 1.0)]}},
        {"uploads": [UploadRecord(START_MS, 0, "periodic", 10, 1)]},
        {"timeline": [TimelineEntry(START_MS, "surprise", "an unknown kind")]},
        {"queue_depth": [(START_MS, 3)]},
        {"counters": {"nan": math.nan, "inf": -math.inf, "flag": True}},
        {"start_ms": 0, "end_ms": 0},
        {"end_ms": START_MS + 400 * 86_400_000},
    ],
    ids=lambda c: ",".join(c) or "nothing",
)
def test_little_or_odd_data_draws_without_a_crash(changes: dict[str, object]) -> None:
    page = render_report(empty_record(**changes))
    tree = parse(page)
    assert_self_contained(page, tree)
    notes = [p.all_text() for p in tree.root.iter("p", "nodata")]
    if not changes:
        assert "no positions recorded (no route)" in notes
        assert "no data for speed (km/h)" in notes
        assert "no data for energy (%)" in notes
        assert "no expectations" in notes and "no counters" in notes
        assert tree.root.one("span", "badge").all_text() == "PASS"
    assert not re.search(r"\b(nan|inf)\b", " ".join(a[1] for a in tree.attributes))


def y_labels(page: str, cls: str) -> list[str]:
    chart = parse(page).root.one("svg", cls)
    return [t.all_text() for t in chart.iter("text") if t.attrs.get("text-anchor") == "end"]


def test_value_axes_fit_their_data() -> None:
    """An idle queue counts 0 and 1 (no negative or fractional depths); a full battery
    stays within 0-100 %; a speed axis starts at zero."""
    record = empty_record(
        end_ms=START_MS + 60_000,
        queue_depth=[(START_MS + i * 1000, 0) for i in range(60)],
        series={
            SOC: [(START_MS, 99.0), (START_MS + 60_000, 100.0)],
            SPEED: [(START_MS, 31.0), (START_MS + 60_000, 48.0)],
        },
    )
    page = render_report(record)
    assert y_labels(page, "queue") == ["0", "1"]
    energy = [float(v) for v in y_labels(page, "energy")]
    assert energy == sorted(energy) and energy[-1] == 100 and energy[0] >= 90
    assert y_labels(page, "speed")[0] == "0"


def test_a_single_position_is_a_marker_with_a_note() -> None:
    tree = parse(render_report(empty_record(route=[(START_MS, 48.9, 2.1)])))
    route = tree.root.one("svg", "route")
    assert route.one("circle", "start") and not route.iter("path", "track")
    assert "1 position(s), all at one place" in route.all_text()


# -- escaping ---------------------------------------------------------------------------------

CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
texts = st.text(max_size=40)


def shown(text: str) -> str:
    """How the report shows ``text``: control characters replaced, line ends as the parser."""
    return CONTROL.sub("\ufffd", text).replace("\r\n", "\n").replace("\r", "\n")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    t=st.fixed_dictionaries(
        dict.fromkeys(
            ("name", "vin", "detail", "exp", "entry", "kind", "trigger", "counter"), texts
        )
    )
)
def test_any_text_is_escaped(t: dict[str, str]) -> None:
    script = "<script>alert(1)</script>"
    record = RunRecord(
        t["name"],
        t["vin"],
        1,
        START_MS,
        START_MS + 60_000,
        uploads=[UploadRecord(START_MS + 1000, 0, t["trigger"], 100, 3)],
        timeline=[TimelineEntry(START_MS + 2000, t["kind"], t["entry"])],
        expectations=[ExpectationResult(t["exp"], False, script + t["detail"], 9)],
        counters={t["counter"]: 1},
    )
    page = render_report(record)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    tree = parse(page)
    assert {n.tag for n in tree.root.iter()} <= ALLOWED_TAGS
    root = tree.root
    assert shown(root.one("h1").all_text()) == shown(t["name"])
    assert shown(t["vin"]) in shown(root.one("dl", "facts").all_text())
    cells = [td.all_text() for td in root.one("table", "expectations").iter("td")]
    assert [shown(c) for c in cells[:3]] == [
        shown(t["exp"]),
        "FAIL",
        shown(script + t["detail"]),
    ]
    assert shown(root.one("table", "timeline").iter("td")[3].all_text()) == shown(t["entry"])
    assert shown(root.one("table", "counters").iter("td")[0].all_text()) == shown(t["counter"])
    assert shown(t["trigger"]) in [
        shown(td.all_text()) for td in root.one("table", "triggers").iter("td")
    ]


def test_the_parser_check_would_see_an_unescaped_script() -> None:
    """The structure checks catch a tag that got through (they can fail)."""
    page = render_report(drive_record()).replace("<h1>", "<h1><script>x()</script>", 1)
    tree = parse(page)
    with pytest.raises(AssertionError):
        assert_self_contained(page, tree)


# -- JSON ---------------------------------------------------------------------------------------


def test_the_json_alongside_is_strict_and_complete(tmp_path: Path) -> None:
    record = drive_record()
    record.series["Vehicle.Odd"] = [(START_MS, math.nan), (START_MS + 1, math.inf)]
    record.counters["ratio"] = math.nan
    path = record_to_json(record, tmp_path / "run.json")
    text = path.read_text(encoding="utf-8")
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert data["passed"] is False
    assert data["name"] == record.name
    assert len(data["uploads"]) == len(record.uploads)
    assert data["uploads"][0] == {"t_ms": START_MS + 25_000, "seq": 0, "trigger": "door",
                                  "size": 140, "samples": 15}  # fmt: skip
    assert data["series"]["Vehicle.Odd"] == [[START_MS, None], [START_MS + 1, None]]
    assert data["counters"]["ratio"] is None
    assert len(data["series"][SPEED]) == HOUR_S + 1
    assert data["expectations"][3]["passed"] is False


# -- in a browser -------------------------------------------------------------------------------


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Chromium headless with ``args``; its whole process group is ended if it hangs."""
    command = [
        binary,
        *("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"),
        *("--no-first-run", "--disable-background-networking", "--disable-component-update"),
        *("--disable-sync", f"--user-data-dir={profile}"),
        *args,
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"chromium did not finish: {err[-2000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes], int]:
    """Width, height, the unfiltered rows and bytes per pixel of an 8-bit PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, []
    width = height = channels = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0
            channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    rows: list[bytes] = []
    prev = bytes(stride)
    for r in range(height):
        start = r * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + (left + prev[i]) // 2) & 255
        elif kind == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b, c = prev[i], prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = rows[-1]
    return width, height, rows, channels


def test_the_report_renders_in_chromium(tmp_path: Path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium binary (Debian: apt-get install chromium)")
    report = write_report(drive_record(), tmp_path / "report.html")
    url = report.resolve().as_uri()

    dom = run_chromium(binary, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    tree = parse(dom.stdout)
    for cls in ("route", "speed", "energy", "uploads", "bytes", "queue"):
        assert tree.root.one("svg", cls)
    assert len(tree.root.iter("circle", "upload")) == len(drive_record().uploads)

    shot = tmp_path / "shot.png"
    result = run_chromium(
        binary,
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        "--enable-logging=stderr",
        "--v=0",
        url,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # no script errors, no refused resources
    assert "Not allowed to load" not in result.stderr

    width, height, rows, channels = png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 2000)
    pixels = collections.Counter(
        row[i : i + channels] for row in rows[::2] for i in range(0, len(row), channels)
    )
    background_share = pixels.most_common(1)[0][1] / sum(pixels.values())
    assert len(pixels) > 200, "too few colours: a blank or broken page"
    assert background_share < 0.9, "nearly all one colour: a blank page"
