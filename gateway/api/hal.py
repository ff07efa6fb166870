"""HAL+JSON helpers: links, the ``indexRange``/``pageSize`` paging and the ``timestamps`` filter.

A collection answer is ``{"_links", "total", "currentPage", "totalPage", "_embedded": {name:
[...]}}``. ``indexRange`` (``a-b`` or ``a-``, zero-based, inclusive) picks the first item and
the last one a client wants; ``pageSize`` caps how many one answer carries. Pages are
``pageSize`` items long and numbered from 1: ``currentPage`` is the page the first item falls
in. The links ``first``, ``prev``, ``next`` and ``last`` repeat the request with another
``indexRange`` (and the same filters).

``timestamps`` filters by time: each item is an ISO 8601 interval ``T1/T2``, ``T1/PnDTnHnMnS``,
``PnDTnHnMnS/T2``, ``T1/`` (until now) or ``/T2`` (since ever), times in RFC 3339; an item
matches when its time falls in any of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

from gateway.api.errors import ApiError

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "GEO_JSON",
    "HAL_JSON",
    "MAX_PAGE_SIZE",
    "MAX_PAGE_SIZE_HIGH_FREQUENCY",
    "IndexRange",
    "Page",
    "TimeRange",
    "collection",
    "in_ranges",
    "link",
    "page",
    "parse_duration_ms",
    "parse_index_range",
    "parse_time_ms",
    "parse_timestamps",
]

HAL_JSON = "application/hal+json"
GEO_JSON = "application/vnd.geo+json"

DEFAULT_PAGE_SIZE = 60
MAX_PAGE_SIZE = 60
MAX_PAGE_SIZE_HIGH_FREQUENCY = 2000
MAX_TIME_RANGES = 10

T = TypeVar("T")


def link(href: str, **extra: Any) -> dict[str, Any]:
    """A HAL link object."""
    return {"href": href, **extra}


def bad_parameter(name: str, why: str) -> ApiError:
    """The 400 answer for a query parameter that does not parse."""
    return ApiError(400, f"invalid query parameter {name}: {why}", detail=1)


# -- indexRange -----------------------------------------------------------------------------

_RANGE = re.compile(r"(\d{1,18})-(\d{0,18})")


@dataclass(frozen=True, slots=True)
class IndexRange:
    """Inclusive zero-based item indexes; ``end`` ``None`` means up to the last item."""

    start: int = 0
    end: int | None = None

    def __str__(self) -> str:
        return f"{self.start}-{'' if self.end is None else self.end}"


def parse_index_range(text: str | None) -> IndexRange:
    """``"0-9"`` -> items 0 to 9; ``"5-"`` -> from item 5 on; ``None`` -> everything."""
    if text is None:
        return IndexRange()
    m = _RANGE.fullmatch(text)
    if m is None:
        raise bad_parameter("indexRange", f"{text!r} is not START-[END] (e.g. 0-9 or 10-)")
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else None
    if end is not None and end < start:
        raise bad_parameter("indexRange", f"{text!r} ends before it starts")
    return IndexRange(start, end)


# -- timestamps -----------------------------------------------------------------------------

_DURATION = re.compile(
    r"P(?!$)(?:(\d{1,9})W)?(?:(\d{1,9})D)?"
    r"(?:T(?=\d)(?:(\d{1,9})H)?(?:(\d{1,9})M)?(?:(\d{1,9}(?:\.\d{1,3})?)S)?)?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)


def parse_duration_ms(text: str) -> int:
    """An ISO 8601 duration of weeks, days, hours, minutes and seconds, in milliseconds."""
    m = _DURATION.fullmatch(text)
    if m is None or text.endswith("T"):
        raise ValueError(f"{text!r} is not a duration such as PT1H30M or P2D")
    weeks, days, hours, minutes = (int(g) if g else 0 for g in m.groups()[:4])
    seconds = float(m.group(5)) if m.group(5) else 0.0
    total_s = ((weeks * 7 + days) * 24 + hours) * 3600 + minutes * 60
    return total_s * 1000 + round(seconds * 1000)


def parse_time_ms(text: str) -> int:
    """An RFC 3339 date-time (with its offset), in epoch milliseconds."""
    if _RFC3339.fullmatch(text) is None:
        raise ValueError(f"{text!r} is not an RFC 3339 date-time such as 2026-04-18T09:00:00Z")
    # datetime parses at most microseconds: cut longer fractions down.
    norm = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("z", "Z").replace("t", "T"))
    try:
        stamp = datetime.fromisoformat(norm.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date-time: {exc}") from None
    return (stamp - _EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A closed interval of epoch milliseconds; ``None`` bounds are open."""

    start_ms: int | None
    end_ms: int | None

    def __contains__(self, t_ms: object) -> bool:
        if not isinstance(t_ms, int):
            return False
        if self.start_ms is not None and t_ms < self.start_ms:
            return False
        return self.end_ms is None or t_ms <= self.end_ms


def _parse_interval(text: str, now_ms: int) -> TimeRange:
    if text.startswith("R"):
        raise ValueError(f"{text!r}: repeating intervals are not supported")
    if text.count("/") != 1:
        raise ValueError(f"{text!r} is not an interval START/END")
    left, right = text.split("/")
    if not left and not right:
        raise ValueError("'/' names no bound")
    if left.startswith("P"):
        if not right or right.startswith("P"):
            raise ValueError(f"{text!r}: a duration needs a date-time on the other side")
        end = parse_time_ms(right)
        return TimeRange(end - parse_duration_ms(left), end)
    start = parse_time_ms(left) if left else None
    if right.startswith("P"):
        if start is None:
            raise ValueError(f"{text!r}: a duration needs a date-time on the other side")
        return TimeRange(start, start + parse_duration_ms(right))
    end = parse_time_ms(right) if right else now_ms
    if start is not None and end < start:
        raise ValueError(f"{text!r} ends before it starts")
    return TimeRange(start, end)


def parse_timestamps(values: Sequence[str] | None, now_ms: int) -> list[TimeRange] | None:
    """The ``timestamps`` query items as ranges (``None`` when absent: no filter)."""
    if not values:
        return None
    items = [part for value in values for part in value.split(",") if part]
    if not items:
        raise bad_parameter("timestamps", "no interval given")
    if len(items) > MAX_TIME_RANGES:
        raise bad_parameter("timestamps", f"at most {MAX_TIME_RANGES} intervals")
    try:
        return [_parse_interval(item, now_ms) for item in items]
    except ValueError as exc:
        raise bad_parameter("timestamps", str(exc)) from None


def in_ranges(t_ms: int | None, ranges: Sequence[TimeRange] | None) -> bool:
    """Whether ``t_ms`` passes the filter (no filter passes everything)."""
    if ranges is None:
        return True
    return t_ms is not None and any(t_ms in r for r in ranges)


# -- paging ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a collection and the numbers HAL shows about it."""

    items: list[Any]
    total: int
    current_page: int
    total_page: int
    links: dict[str, dict[str, Any]]


def _href(path: str, query: Mapping[str, Any]) -> str:
    pairs: list[tuple[str, str]] = []
    for key, value in query.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            pairs.extend((key, str(v)) for v in value)
        else:
            pairs.append((key, str(value)))
    return f"{path}?{urlencode(pairs)}" if pairs else path


def page(
    items: Sequence[T],
    *,
    path: str,
    index_range: IndexRange,
    page_size: int,
    query: Mapping[str, Any] | None = None,
) -> Page:
    """Cut ``items`` to the requested window and compute HAL's paging links for ``path``."""
    total = len(items)
    size = max(1, page_size)
    start = index_range.start
    last_index = total - 1 if index_range.end is None else min(index_range.end, total - 1)
    stop = min(last_index + 1, start + size)
    chosen = list(items[start:stop]) if start < total else []
    total_page = max(1, math.ceil(total / size))
    current = min(start // size + 1, total_page) if total else 1
    base = {k: v for k, v in (query or {}).items() if k not in ("indexRange", "pageSize")}

    def at(a: int) -> str:
        return _href(path, {**base, "indexRange": f"{a}-{a + size - 1}", "pageSize": size})

    links = {
        "self": link(_href(path, {**base, "indexRange": str(index_range), "pageSize": page_size})),
        "first": link(at(0)),
        "last": link(at((total_page - 1) * size)),
    }
    if start > 0:
        links["prev"] = link(at(max(0, start - size)))
    if start + size < total:
        links["next"] = link(at(start + size))
    return Page(chosen, total, current, total_page, links)


def collection(
    name: str, p: Page, *, extra_links: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The HAL body of a collection page, its items under ``_embedded[name]``."""
    return {
        "_links": {**p.links, **(extra_links or {})},
        "total": p.total,
        "currentPage": p.current_page,
        "totalPage": p.total_page,
        "_embedded": {name: p.items},
    }


def select(items: Iterable[T], keep: Callable[[T], bool]) -> list[T]:
    """The items ``keep`` accepts, in order."""
    return [item for item in items if keep(item)]
