"""The report of a scenario run: one self-contained HTML file, its charts drawn as inline SVG.

The file needs nothing but itself (no scripts, fonts or images from anywhere): it opens from
a disk, an archive of CI artifacts or an e-mail. It shows the run's header (scenario, VIN,
seed, simulated against wall time, pass or fail), the route without a map, speed and energy
over time, the uploads by trigger on a timeline with the scenario's actions, faults and
commands, the bytes sent and the queue depth over time, and the tables of expectations,
counters and timeline entries. Every chart shares one time axis: time since the run's start.

:func:`record_to_json` writes the same :class:`RunRecord` as strict JSON, for tools.
"""

from __future__ import annotations

import datetime as dt
import html
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from firmware_sim.scenario.record import RunRecord, UploadRecord
from firmware_sim.sim.drive import haversine_m

__all__ = ["record_to_json", "render_report", "write_report"]

SPEED = "Vehicle.Speed"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
FUEL = "Vehicle.Powertrain.FuelSystem.RelativeLevel"

# Colours of the upload triggers (payload.Trigger names), after Okabe and Ito.
TRIGGER_COLOURS = {
    "periodic": "#7b8794",
    "ignition_on": "#009e73",
    "ignition_off": "#56b4e9",
    "door": "#e69f00",
    "crash": "#d55e00",
    "alert": "#cc79a7",
    "privacy": "#0072b2",
    "condition": "#a89a00",
    "request": "#6a3d9a",
}
_MORE_COLOURS = ("#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#666666")
KIND_COLOURS = {"action": "#2563eb", "fault": "#dc2626", "command": "#7c3aed"}
_OTHER_KIND = "#64748b"

_WIDTH = 1120  # the viewBox width of every time chart
_LEFT = 120  # its left margin (lane labels, y tick labels): the time axes line up
_RIGHT = 24
_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f3f5f8; color: #1f2933;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 24px 48px; }
header { display: flex; flex-wrap: wrap; align-items: center; gap: 10px 18px; }
h1 { font-size: 24px; margin: 0; word-break: break-word; }
h2 { font-size: 17px; margin: 0 0 10px; }
section { background: #fff; border: 1px solid #dde3ea; border-radius: 8px;
  padding: 14px 16px; margin-top: 16px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 999px; font-weight: 700;
  font-size: 13px; letter-spacing: .04em; color: #fff; }
.pass { background: #15803d; } .fail { background: #b91c1c; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(205px, 1fr));
  gap: 8px 18px; margin: 14px 0 0; }
.facts div { background: #fff; border: 1px solid #dde3ea; border-radius: 8px; padding: 8px 12px; }
.facts dt { font-size: 12px; color: #52606d; } .facts dd { margin: 0; font-weight: 600;
  word-break: break-all; }
.row { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 16px; }
.row section { margin-top: 16px; }
svg { display: block; width: 100%; height: auto; font-size: 12px; }
svg text { fill: #3e4c59; }
.nodata { color: #7b8794; font-style: italic; margin: 6px 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e4e7eb;
  vertical-align: top; word-break: break-word; }
th { background: #f5f7fa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fef2f2; }
.ok { color: #15803d; font-weight: 700; } .ko { color: #b91c1c; font-weight: 700; }
.detail { color: #6b7280; font-size: 0.9em; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 50%;
  margin-right: 6px; vertical-align: baseline; }
.kind { font-weight: 600; white-space: nowrap; margin-right: 14px; }
.dash { display: inline-block; width: 18px; border-top: 2px dashed; margin-right: 5px;
  vertical-align: middle; }
table.timeline td:nth-child(-n+3), table.timeline th:nth-child(-n+3),
table.expectations td:nth-child(2n), table.expectations th:nth-child(2n) {
  width: 1%; white-space: nowrap; }
table.expectations td:first-child { width: 35%; }
"""
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _esc(value: object) -> str:
    """HTML-escaped text; control characters and lone surrogates become U+FFFD."""
    text = str(value).encode("utf-8", "replace").decode("utf-8")
    return html.escape(_CONTROL.sub("\ufffd", text), quote=True)


def _finite(points: Iterable[tuple[int, float]]) -> list[tuple[int, float]]:
    out = []
    for t, v in points:
        try:
            if math.isfinite(t) and math.isfinite(v):
                out.append((int(t), float(v)))
        except (TypeError, ValueError, OverflowError):
            continue
    out.sort(key=lambda p: p[0])
    return out


# -- numbers and times --------------------------------------------------------------------


def _nice_step(span: float, count: int) -> float:
    raw = span / max(1, count)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _nice_range(lo: float, hi: float, count: int = 5) -> tuple[float, float, float]:
    """``lo`` and ``hi`` widened to whole steps of a round size, and that step."""
    if hi - lo < 1e-9 * max(1.0, abs(lo), abs(hi)):
        pad = max(1.0, abs(lo) * 0.1)
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo, count)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step, step


def _fmt_num(value: float, step: float = 1.0) -> str:
    if not math.isfinite(value):
        return str(value)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    if decimals == 0:
        return f"{round(value):,}".replace(",", "\u202f")
    return f"{value:.{decimals}f}"


def _fmt_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}".replace(",", "\u202f")
    if isinstance(value, float):
        if not math.isfinite(value) or not 1e-3 <= abs(value) < 1e12:
            return f"{value:.6g}"
        text = f"{value:,.3f}".rstrip("0").rstrip(".")
        return text.replace(",", "\u202f")
    return str(value)


def _fmt_clock(seconds: float, hours: bool) -> str:
    sign = "-" if seconds < 0 else ""
    s = round(abs(seconds))
    if hours:
        return f"{sign}{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{sign}{s // 60}:{s % 60:02d}"


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return str(seconds)
    if abs(seconds) < 60:
        return f"{seconds:.3g} s"
    s = round(seconds)
    h, m, sec = s // 3600, s // 60 % 60, s % 60
    return f"{h} h {m:02d} min {sec:02d} s" if h else f"{m} min {sec:02d} s"


def _fmt_time(ms: int) -> str:
    try:
        when = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)


@dataclass(frozen=True)
class _TimeAxis:
    """The shared time axis: ms since the epoch mapped to x in every time chart."""

    origin_ms: int  # the run's start: tick labels count from here
    lo_ms: int
    hi_ms: int
    x0: float = _LEFT
    x1: float = _WIDTH - _RIGHT

    def x(self, t_ms: float) -> float:
        return self.x0 + (t_ms - self.lo_ms) / (self.hi_ms - self.lo_ms) * (self.x1 - self.x0)

    def ticks(self) -> tuple[list[tuple[float, str]], str]:
        """The ticks (x, label) and the unit of their labels."""
        span_s = (self.hi_ms - self.lo_ms) / 1000
        step = next((s for s in _TIME_STEPS if span_s / s <= 10), None)
        if step is None:
            step = int(_nice_step(span_s / 3600, 8) * 3600)
        hours = max(abs(self.lo_ms - self.origin_ms), abs(self.hi_ms - self.origin_ms)) >= 3.6e6
        first = math.ceil((self.lo_ms - self.origin_ms) / 1000 / step) * step
        ticks = []
        s = first
        while self.origin_ms + s * 1000 <= self.hi_ms:
            ticks.append((self.x(self.origin_ms + s * 1000), _fmt_clock(s, hours)))
            s += step
        return ticks, "h:mm:ss" if hours else "m:ss"


def _time_axis(record: RunRecord) -> _TimeAxis:
    times = [record.start_ms, record.end_ms]
    times += [t for t, _, _ in record.route]
    times += [t for points in record.series.values() for t, _ in points]
    times += [u.t_ms for u in record.uploads] + [e.t_ms for e in record.timeline]
    times += [t for t, _ in record.queue_depth]
    finite = [int(t) for t in times if isinstance(t, int | float) and math.isfinite(t)]
    lo, hi = min(finite), max(finite)
    if hi - lo < 1000:
        hi = lo + 1000
    origin = record.start_ms if math.isfinite(record.start_ms) else lo
    return _TimeAxis(int(origin), lo, hi)


# -- SVG pieces -----------------------------------------------------------------------------


def _path(points: Sequence[tuple[float, float]], step: bool = False) -> str:
    parts = []
    for i, (x, y) in enumerate(points):
        if i == 0:
            parts.append(f"M{x:.1f},{y:.1f}")
        elif step:
            parts.append(f"H{x:.1f}V{y:.1f}")
        else:
            parts.append(f"L{x:.1f},{y:.1f}")
    return "".join(parts)


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most four points per pixel column (first, lowest, highest, last): peaks stay."""
    if len(points) < 2000:
        return points
    out: list[tuple[float, float]] = []
    column: list[tuple[float, float]] = []

    def flush() -> None:
        if not column:
            return
        keep = {0, len(column) - 1}
        keep.add(min(range(len(column)), key=lambda i: column[i][1]))
        keep.add(max(range(len(column)), key=lambda i: column[i][1]))
        out.extend(column[i] for i in sorted(keep))
        column.clear()

    for p in points:
        if column and round(p[0]) != round(column[0][0]):
            flush()
        column.append(p)
    flush()
    return out


def _time_grid(axis: _TimeAxis, top: float, bottom: float) -> list[str]:
    ticks, unit = axis.ticks()
    out = []
    for x, label in ticks:
        out.append(
            f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" stroke="#e4e7eb"/>'
        )
        out.append(f'<text x="{x:.1f}" y="{bottom + 16:.1f}" text-anchor="middle">{label}</text>')
    out.append(
        f'<text x="{(axis.x0 + axis.x1) / 2:.1f}" y="{bottom + 34:.1f}" text-anchor="middle" '
        f'fill="#52606d">time since start ({unit})</text>'
    )
    out.append(
        f'<line x1="{axis.x0}" y1="{bottom:.1f}" x2="{axis.x1}" y2="{bottom:.1f}" '
        'stroke="#9aa5b1"/>'
    )
    return out


def _marks(record: RunRecord, axis: _TimeAxis, top: float, bottom: float) -> list[str]:
    """The timeline entries as faint dashed lines, each with its text on hover."""
    out = []
    for entry in record.timeline:
        if not math.isfinite(entry.t_ms):
            continue
        x = axis.x(entry.t_ms)
        colour = KIND_COLOURS.get(entry.kind, _OTHER_KIND)
        out.append(
            f'<line class="mark" x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" '
            f'stroke="{colour}" stroke-opacity=".45" stroke-dasharray="4 3">'
            f"<title>{_esc(entry.kind)}: {_esc(entry.text)}</title></line>"
        )
    return out


@dataclass(frozen=True)
class _Line:
    label: str
    colour: str
    points: list[tuple[int, float]]
    step: bool = False


def _legend(items: Sequence[tuple[str, str]], x: float, y: float) -> list[str]:
    out = []
    for label, colour in items:
        out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="14" height="4" fill="{colour}"/>')
        out.append(f'<text x="{x + 20:.1f}" y="{y:.1f}">{_esc(label)}</text>')
        x += 28 + 7.2 * len(label)
    return out


def _value_chart(
    record: RunRecord,
    axis: _TimeAxis,
    lines: list[_Line],
    *,
    y_title: str,
    include_zero: bool = False,
    bounds: tuple[float, float] | None = None,
    min_span: float = 0.0,
    integer: bool = False,
    area: bool = False,
    css_class: str,
) -> str:
    """A chart of values over the shared time axis; a note when there is nothing to draw."""
    lines = [line for line in lines if line.points]
    values = [v for line in lines for _, v in line.points]
    if not values:
        return f'<p class="nodata">no data for {_esc(y_title)}</p>'
    lo, hi = min(values), max(values)
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < min_span:
        middle = (lo + hi) / 2
        lo, hi = middle - min_span / 2, middle + min_span / 2
    y_lo, y_hi, step = _nice_range(lo, hi)
    if integer and step < 1:
        y_lo, y_hi, step = math.floor(y_lo), math.ceil(y_hi), 1.0
    if include_zero and lo >= 0:
        y_lo = max(y_lo, 0.0)  # nothing below zero to show
    if y_hi <= y_lo:
        y_hi = y_lo + step
    if bounds is not None:
        y_lo, y_hi = max(y_lo, bounds[0]), min(y_hi, bounds[1])
        if y_hi <= y_lo:
            y_lo, y_hi, step = _nice_range(lo, hi)
    top, bottom, height = 30.0, 190.0, 236
    scale = (bottom - top) / (y_hi - y_lo)

    def y(v: float) -> float:
        return bottom - (v - y_lo) * scale

    out = [
        f'<svg class="{css_class}" viewBox="0 0 {_WIDTH} {height}" role="img" '
        f'aria-label="{_esc(y_title)}">'
    ]
    tick = y_lo
    while tick <= y_hi + step * 1e-6:
        out.append(
            f'<line x1="{axis.x0}" y1="{y(tick):.1f}" x2="{axis.x1}" y2="{y(tick):.1f}" '
            'stroke="#e4e7eb"/>'
        )
        out.append(
            f'<text x="{axis.x0 - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">'
            f"{_fmt_num(tick, step)}</text>"
        )
        tick += step
    out += _time_grid(axis, top, bottom)
    out.append(
        f'<text x="14" y="{(top + bottom) / 2:.1f}" text-anchor="middle" fill="#52606d" '
        f'transform="rotate(-90 14 {(top + bottom) / 2:.1f})">{_esc(y_title)}</text>'
    )
    out += _marks(record, axis, top, bottom)
    for line in lines:
        pts = _thin([(axis.x(t), y(v)) for t, v in line.points])
        if len(pts) == 1:
            x0, y0 = pts[0]
            out.append(
                f'<circle cx="{x0:.1f}" cy="{y0:.1f}" r="3.5" fill="{line.colour}">'
                f"<title>{_esc(line.label)}</title></circle>"
            )
            continue
        if area:
            out.append(
                f'<path d="{_path(pts, line.step)}V{bottom:.1f}H{pts[0][0]:.1f}Z" '
                f'fill="{line.colour}" fill-opacity=".14" stroke="none"/>'
            )
        out.append(
            f'<path d="{_path(pts, line.step)}" fill="none" stroke="{line.colour}" '
            f'stroke-width="1.8" stroke-linejoin="round"><title>{_esc(line.label)}</title></path>'
        )
    out += _legend([(line.label, line.colour) for line in lines], axis.x0, 18)
    out.append("</svg>")
    return "".join(out)


# -- the charts -----------------------------------------------------------------------------


def _positions(record: RunRecord) -> list[tuple[int, float, float]]:
    """The route's positions that are positions (finite, on the globe)."""
    return [
        (int(t), float(lat), float(lon))
        for t, lat, lon in record.route
        if math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180
    ]


def _route_svg(record: RunRecord) -> str:
    """The route as a polyline, east to the right, aspect kept by cos(latitude)."""
    points = _positions(record)
    if not points:
        return '<p class="nodata">no positions recorded (no route)</p>'
    width, height, pad = 640.0, 440.0, 36.0
    lats = [p[1] for p in points]
    lons = [p[2] for p in points]
    k = math.cos(math.radians((min(lats) + max(lats)) / 2))
    xs = [lon * k for lon in lons]
    span_x, span_y = max(xs) - min(xs), max(lats) - min(lats)
    span = max(span_x / (width - 2 * pad), span_y / (height - 2 * pad))
    scale = 1.0 if span <= 0 else 1 / span
    cx, cy = (max(xs) + min(xs)) / 2, (max(lats) + min(lats)) / 2

    def project(lat: float, lon: float) -> tuple[float, float]:
        return width / 2 + (lon * k - cx) * scale, height / 2 - (lat - cy) * scale

    out = [
        f'<svg class="route" viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="route">'
    ]
    out.append(f'<rect width="{width:.0f}" height="{height:.0f}" fill="#f8fafc" rx="6"/>')
    if span > 0:
        out += _graticule(project, lats, lons, width, height)
        out += _scale_bar(scale, width, height)
    xy = _thin([project(lat, lon) for _, lat, lon in points])
    if len(points) > 1 and span > 0:
        out.append(
            f'<path d="{_path(xy)}" fill="none" stroke="#ffffff" stroke-width="6" '
            'stroke-linejoin="round" stroke-linecap="round"/>'
            f'<path class="track" d="{_path(xy)}" fill="none" stroke="#2563eb" stroke-width="3" '
            'stroke-linejoin="round" stroke-linecap="round"/>'
        )
    (t0, lat0, lon0), (t1, lat1, lon1) = points[0], points[-1]
    ex, ey = project(lat1, lon1)
    out.append(
        f'<rect class="end" x="{ex - 6:.1f}" y="{ey - 6:.1f}" width="12" height="12" '
        f'fill="#dc2626" stroke="#fff" stroke-width="2"><title>end {_fmt_time(t1)}: '
        f"{lat1:.5f}, {lon1:.5f}</title></rect>"
    )
    sx, sy = project(lat0, lon0)
    out.append(
        f'<circle class="start" cx="{sx:.1f}" cy="{sy:.1f}" r="7" fill="#16a34a" stroke="#fff" '
        f'stroke-width="2"><title>start {_fmt_time(t0)}: {lat0:.5f}, {lon0:.5f}</title></circle>'
    )
    out.append(
        '<circle cx="20" cy="20" r="5" fill="#16a34a"/><text x="30" y="24">start</text>'
        '<rect x="72" y="15" width="10" height="10" fill="#dc2626"/><text x="88" y="24">end</text>'
    )
    if len(points) == 1 or span <= 0:
        out.append(
            f'<text x="{width / 2:.0f}" y="{height - 16:.0f}" text-anchor="middle" '
            f'fill="#7b8794">{len(points)} position(s), all at one place</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _graticule(
    project: Callable[[float, float], tuple[float, float]],
    lats: Sequence[float],
    lons: Sequence[float],
    width: float,
    height: float,
) -> list[str]:
    """Lines of latitude and longitude at a round step, labelled at the edges."""
    lat_lo, lat_hi, lon_lo, lon_hi = min(lats), max(lats), min(lons), max(lons)
    out = []
    step = _nice_step(max(lat_hi - lat_lo, lon_hi - lon_lo), 4)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    lat = math.ceil(lat_lo / step) * step
    while lat <= lat_hi:
        _, y = project(lat, lon_lo)
        out.append(f'<line x1="0" y1="{y:.1f}" x2="{width:.0f}" y2="{y:.1f}" stroke="#e4e7eb"/>')
        label = f"{lat:.{decimals}f}°"
        out.append(f'<text x="{width - 6:.0f}" y="{y - 4:.1f}" text-anchor="end">{label}</text>')
        lat += step
    lon = math.ceil(lon_lo / step) * step
    while lon <= lon_hi:
        x, _ = project(lat_lo, lon)
        out.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height:.0f}" stroke="#e4e7eb"/>')
        out.append(f'<text x="{x + 4:.1f}" y="{height - 6:.0f}">{lon:.{decimals}f}°</text>')
        lon += step
    return out


def _scale_bar(scale: float, width: float, height: float) -> list[str]:
    """A bar of a round length (about 120 px) in km or m."""
    km_per_unit = 111.32  # km per degree of latitude
    target = 120 / scale * km_per_unit
    magnitude = 10.0 ** math.floor(math.log10(target))
    km = next(f * magnitude for f in (5, 2, 1) if f * magnitude <= target)
    px = km / km_per_unit * scale
    label = f"{km:g} km" if km >= 1 else f"{km * 1000:g} m"
    x0, y = width - 16 - px, height - 40
    return [
        f'<rect x="{x0 - 8:.1f}" y="{y - 12:.0f}" width="{px + 16:.1f}" height="32" rx="4" '
        'fill="#f8fafc" fill-opacity=".85"/>',
        f'<path d="M{x0:.1f},{y - 5:.0f}V{y:.0f}H{x0 + px:.1f}V{y - 5:.0f}" fill="none" '
        'stroke="#3e4c59" stroke-width="1.5"/>',
        f'<text x="{x0 + px / 2:.1f}" y="{y + 15:.0f}" text-anchor="middle">{label}</text>',
    ]


def _trigger_colours(uploads: Iterable[UploadRecord]) -> dict[str, str]:
    order = list(TRIGGER_COLOURS)
    names = sorted(
        {u.trigger for u in uploads},
        key=lambda n: (n not in order, order.index(n) if n in order else 0, n),
    )
    colours: dict[str, str] = {}
    extra = 0
    for name in names:
        if name in TRIGGER_COLOURS:
            colours[name] = TRIGGER_COLOURS[name]
        else:
            colours[name] = _MORE_COLOURS[extra % len(_MORE_COLOURS)]
            extra += 1
    return colours


def _uploads_svg(record: RunRecord, axis: _TimeAxis, colours: dict[str, str]) -> str:
    """One lane per trigger, a marker per upload; the timeline entries numbered above."""
    lanes = list(colours)
    if not lanes and not record.timeline:
        return '<p class="nodata">no uploads and no timeline entries</p>'
    lane_h = 30.0
    top = 50.0
    bottom = top + lane_h * max(1, len(lanes))
    height = bottom + 44
    out = [
        f'<svg class="uploads" viewBox="0 0 {_WIDTH} {height:.0f}" role="img" '
        'aria-label="uploads by trigger">'
    ]
    counts = dict.fromkeys(lanes, 0)
    for u in record.uploads:
        counts[u.trigger] += 1
    for i, name in enumerate(lanes):
        y = top + lane_h * (i + 0.5)
        if i % 2 == 0:
            out.append(
                f'<rect x="{axis.x0}" y="{top + lane_h * i:.1f}" width="{axis.x1 - axis.x0}" '
                f'height="{lane_h}" fill="#f8fafc"/>'
            )
        label = _esc(name) if len(name) <= 14 else f"{_esc(name[:13])}…<title>{_esc(name)}</title>"
        out.append(
            f'<circle cx="10" cy="{y - 4:.1f}" r="5" fill="{colours[name]}"/>'
            f'<text x="20" y="{y:.1f}">{label}</text>'
            f'<text x="{axis.x0 - 8}" y="{y:.1f}" text-anchor="end" fill="#7b8794">'
            f"{counts[name]}</text>"
        )
    if not lanes:
        out.append(
            f'<text x="{(axis.x0 + axis.x1) / 2}" y="{top + lane_h / 2 + 4:.1f}" '
            'text-anchor="middle" fill="#7b8794">no uploads</text>'
        )
    out += _time_grid(axis, top, bottom)
    label_rows = [(13, -math.inf), (26, -math.inf), (39, -math.inf)]  # (y, last label's x)
    for n, entry in enumerate(record.timeline, 1):
        if not math.isfinite(entry.t_ms):
            continue
        x = axis.x(entry.t_ms)
        colour = KIND_COLOURS.get(entry.kind, _OTHER_KIND)
        room = 8 * len(str(n)) + 6
        row = next(
            (i for i, (_, last) in enumerate(label_rows) if x - last >= room),
            min(range(len(label_rows)), key=lambda i: label_rows[i][1]),
        )
        label_y = label_rows[row][0]
        label_rows[row] = (label_y, x)
        tip = (
            f"<title>{n}. {_esc(entry.kind)} at {_fmt_time(entry.t_ms)}: {_esc(entry.text)}</title>"
        )
        out.append(
            f'<line class="mark" x1="{x:.1f}" y1="{label_y + 4}" x2="{x:.1f}" y2="{bottom:.1f}" '
            f'stroke="{colour}" stroke-opacity=".6" stroke-dasharray="4 3">{tip}</line>'
            f'<text x="{x:.1f}" y="{label_y}" text-anchor="middle" fill="{colour}" '
            f'font-weight="700">{n}{tip}</text>'
        )
    index = {name: i for i, name in enumerate(lanes)}
    for u in record.uploads:
        if not math.isfinite(u.t_ms):
            continue
        y = top + lane_h * (index[u.trigger] + 0.5)
        out.append(
            f'<circle class="upload" cx="{axis.x(u.t_ms):.1f}" cy="{y - 4:.1f}" r="5" '
            f'fill="{colours[u.trigger]}" fill-opacity=".85" stroke="#fff" stroke-width="1">'
            f"<title>seq {_esc(u.seq)} · {_esc(u.trigger)} · {_esc(u.size)} B · "
            f"{_esc(u.samples)} samples · {_fmt_time(u.t_ms)}</title></circle>"
        )
    out.append("</svg>")
    return "".join(out)


# -- tables ---------------------------------------------------------------------------------


def _elapsed(record: RunRecord, t_ms: int) -> str:
    try:
        return _fmt_clock((t_ms - record.start_ms) / 1000, hours=True)
    except (OverflowError, ValueError):
        return "?"


def _expectations_table(record: RunRecord) -> str:
    if not record.expectations:
        return '<p class="nodata">no expectations</p>'
    rows = []
    for e in record.expectations:
        result = '<span class="ok">pass</span>' if e.passed else '<span class="ko">FAIL</span>'
        line = "" if e.line is None else _esc(e.line)
        rows.append(
            f'<tr class="{"passed" if e.passed else "failed"}"><td>{_esc(e.name)}</td>'
            f'<td>{result}</td><td>{_esc(e.detail)}</td><td class="num">{line}</td></tr>'
        )
    return (
        '<table class="expectations"><thead><tr><th>expectation</th><th>result</th>'
        '<th>detail</th><th class="num">line</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
    )


def _counters_table(record: RunRecord) -> str:
    if not record.counters:
        return '<p class="nodata">no counters</p>'
    rows = "".join(
        f'<tr><td>{_esc(name)}</td><td class="num">{_esc(_fmt_value(value))}</td></tr>'
        for name, value in sorted(record.counters.items(), key=lambda kv: str(kv[0]))
    )
    return (
        '<table class="counters"><thead><tr><th>counter</th><th class="num">value</th></tr>'
        f"</thead><tbody>{rows}</tbody></table>"
    )


def _timeline_table(record: RunRecord) -> str:
    if not record.timeline:
        return '<p class="nodata">no actions, faults or commands</p>'
    rows = []
    for n, entry in enumerate(record.timeline, 1):
        colour = KIND_COLOURS.get(entry.kind, _OTHER_KIND)
        rows.append(
            f'<tr><td class="num">{n}</td><td class="num">{_elapsed(record, entry.t_ms)}</td>'
            f'<td class="kind" style="color:{colour}">{_esc(entry.kind)}</td>'
            f"<td>{_esc(entry.text)}</td></tr>"
        )
    return (
        '<table class="timeline"><thead><tr><th class="num">#</th><th class="num">at</th>'
        "<th>kind</th><th>what</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _remotes_table(record: RunRecord) -> str:
    """Each remote command: when it was sent, what it asked, every status, the outcome."""
    rows = []
    for r in record.remotes:
        params = ", ".join(f"{k}={_fmt_param(v)}" for k, v in r.params.items())
        steps = "<br>".join(
            f"{_elapsed(record, s.t_ms)} {_esc(s.status)}"
            + (f" ({_esc(s.cause)})" if s.cause else "")
            + (f' <span class="detail">{_esc(s.detail)}</span>' if s.detail else "")
            for s in r.statuses
        )
        outcome = r.outcome
        if outcome is None:
            verdict = '<span class="ko">no outcome</span>'
        elif outcome.status == "Failed":
            verdict = f'<span class="ko">Failed</span> {_esc(outcome.cause or "")}'
        else:
            verdict = f'<span class="ok">{_esc(outcome.status)}</span>'
        rows.append(
            f'<tr><td>{_esc(r.id)}</td><td class="num">{_elapsed(record, r.sent_ms)}</td>'
            f"<td>{_esc(r.action)}{' ' + _esc(params) if params else ''}</td>"
            f"<td>{steps or '-'}</td><td>{verdict}</td></tr>"
        )
    return (
        '<table class="remotes"><thead><tr><th>remote</th><th class="num">sent</th>'
        "<th>command</th><th>statuses (box time)</th><th>outcome</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _fmt_param(value: object) -> str:
    if isinstance(value, list):
        return "[" + "; ".join(_fmt_param(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_fmt_param(v)}" for k, v in value.items()) + "}"
    return str(value)


def _drive_table(record: RunRecord) -> str:
    """Distance along the recorded positions, and the speed's maximum and moving average."""
    points = [(lat, lon) for _, lat, lon in _positions(record)]
    km = sum(haversine_m(a, b) for a, b in itertools.pairwise(points)) / 1000
    speeds = [v for _, v in _finite(record.series.get(SPEED, []))]
    moving = [v for v in speeds if v > 0.5]
    rows = [
        ("positions", _fmt_value(len(points))),
        ("distance", f"{km:.1f} km" if len(points) > 1 else "-"),
        ("top speed", f"{max(speeds):.0f} km/h" if speeds else "-"),
        ("average when moving", f"{sum(moving) / len(moving):.0f} km/h" if moving else "-"),
    ]
    cells = "".join(f'<tr><td>{name}</td><td class="num">{value}</td></tr>' for name, value in rows)
    return f'<table class="drive"><tbody>{cells}</tbody></table>'


def _triggers_table(record: RunRecord, colours: dict[str, str]) -> str:
    if not record.uploads:
        return '<p class="nodata">no uploads</p>'
    rows = []
    for name, colour in colours.items():
        mine = [u for u in record.uploads if u.trigger == name]
        rows.append(
            f'<tr><td><span class="swatch" style="background:{colour}"></span>{_esc(name)}</td>'
            f'<td class="num">{len(mine)}</td>'
            f'<td class="num">{_fmt_value(sum(u.size for u in mine))}</td>'
            f'<td class="num">{_fmt_value(sum(u.samples for u in mine))}</td></tr>'
        )
    return (
        '<table class="triggers"><thead><tr><th>trigger</th><th class="num">uploads</th>'
        '<th class="num">bytes</th><th class="num">samples</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
    )


# -- the page -------------------------------------------------------------------------------


def _header(record: RunRecord) -> str:
    passed = record.passed
    failed = sum(not e.passed for e in record.expectations)
    verdict = "PASS" if passed else "FAIL"
    sim_s = (record.end_ms - record.start_ms) / 1000
    wall = record.wall_s
    pace = f" ({sim_s / wall:,.0f}× real time)" if wall > 0 and sim_s > 0 else ""
    facts = [
        ("VIN", _esc(record.vin)),
        ("seed", _esc(record.seed)),
        ("start (UTC)", _fmt_time(record.start_ms)),
        ("simulated", _esc(_fmt_duration(sim_s))),
        ("wall time", _esc(_fmt_duration(wall)) + pace),
        ("expectations", f"{len(record.expectations) - failed} of {len(record.expectations)} held"),
        ("uploads", f"{len(record.uploads)} · {_fmt_value(sum(u.size for u in record.uploads))} B"),
    ]
    digest = record.payload_digest
    if digest:
        facts.append(
            ("payload digest", f'<span title="{_esc(digest)}">{_esc(digest[:16])}…</span>')
        )
    cells = "".join(f"<div><dt>{name}</dt><dd>{value}</dd></div>" for name, value in facts)
    return (
        f'<header><h1>{_esc(record.name)}</h1><span class="badge {"pass" if passed else "fail"}">'
        f"{verdict}</span></header>"
        f'<dl class="facts">{cells}</dl>'
    )


def _cumulative_bytes(uploads: Sequence[UploadRecord]) -> tuple[list[tuple[int, float]], str]:
    total = 0.0
    points: list[tuple[int, float]] = []
    for u in sorted((u for u in uploads if math.isfinite(u.t_ms)), key=lambda u: u.t_ms):
        total += u.size
        points.append((u.t_ms, total))
    for divisor, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if total >= divisor:
            return [(t, v / divisor) for t, v in points], unit
    return points, "B"


def render_report(record: RunRecord) -> str:
    """The report of ``record`` as the text of one HTML page."""
    axis = _time_axis(record)
    colours = _trigger_colours(record.uploads)
    series = record.series
    speed = _value_chart(
        record,
        axis,
        [_Line("speed", "#2563eb", _finite(series.get(SPEED, [])))],
        y_title="speed (km/h)",
        include_zero=True,
        css_class="speed",
    )
    energy = _value_chart(
        record,
        axis,
        [
            _Line("state of charge", "#059669", _finite(series.get(SOC, []))),
            _Line("fuel level", "#d97706", _finite(series.get(FUEL, []))),
        ],
        y_title="energy (%)",
        bounds=(0.0, 100.0),
        min_span=5.0,
        css_class="energy",
    )
    sent, unit = _cumulative_bytes(record.uploads)
    sent_chart = _value_chart(
        record,
        axis,
        [_Line("sent (cumulative)", "#0f766e", sent, step=True)],
        y_title=f"sent ({unit})",
        include_zero=True,
        css_class="bytes",
    )
    depth = _value_chart(
        record,
        axis,
        [_Line("uploads waiting", "#9333ea", _finite(record.queue_depth), step=True)],
        y_title="queue depth",
        include_zero=True,
        integer=True,
        area=True,
        css_class="queue",
    )
    kinds = "".join(
        f'<span class="kind" style="color:{c}"><span class="dash" style="border-color:{c}">'
        f"</span>{k}</span>"
        for k, c in KIND_COLOURS.items()
    )
    remotes = (
        f"<section><h2>Remote commands</h2>{_remotes_table(record)}</section>\n"
        if record.remotes
        else ""
    )
    body = f"""<main>
{_header(record)}
<div class="row">
<section><h2>Route</h2>{_route_svg(record)}</section>
<section><h2>Uploads by trigger</h2>{_triggers_table(record, colours)}
<h2 style="margin-top:18px">Drive</h2>{_drive_table(record)}</section>
</div>
<section><h2>Speed</h2>{speed}</section>
<section><h2>State of charge and fuel level</h2>{energy}</section>
<section><h2>Uploads and timeline</h2>
<p>One lane per trigger, a dot per upload (hover for details); numbered lines are the
timeline's entries: {kinds}</p>
{_uploads_svg(record, axis, colours)}</section>
<section><h2>Bytes sent</h2><p>Cumulative, each upload counted when it was queued.</p>
{sent_chart}</section>
<section><h2>Queue depth</h2>{depth}</section>
<section><h2>Expectations</h2>{_expectations_table(record)}</section>
{remotes}<section><h2>Timeline</h2>{_timeline_table(record)}</section>
<section><h2>Counters</h2>{_counters_table(record)}</section>
</main>"""
    verdict = "pass" if record.passed else "FAIL"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(record.name)} · {verdict} · tcusim run report</title>"
        f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(record: RunRecord, path: str | PathLike[str]) -> Path:
    """Write the report of ``record`` to ``path`` (one HTML file); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_report(record), encoding="utf-8")
    return target


def _strict(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has no place for them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def record_to_json(record: RunRecord, path: str | PathLike[str]) -> Path:
    """Write ``record`` as one strict JSON document (NaN and infinities as null)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_strict(record.to_json()), allow_nan=False, separators=(",", ":"))
    target.write_text(text + "\n", encoding="utf-8")
    return target
