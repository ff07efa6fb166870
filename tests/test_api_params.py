"""The API's query parameter parsers and its paging, with Hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api.errors import ApiError
from gateway.api.hal import (
    IndexRange,
    TimeRange,
    in_ranges,
    page,
    parse_duration_ms,
    parse_index_range,
    parse_time_ms,
    parse_timestamps,
)
from gateway.store import rfc3339 as store_rfc3339


def rfc3339(t_ms: int) -> str:
    """An exact RFC 3339 UTC time with milliseconds."""
    stamp = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=t_ms)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{t_ms % 1000:03d}Z"


NOW = 1_782_864_000_000
times = st.integers(min_value=0, max_value=253_402_300_799_000)


@given(st.integers(0, 10**12), st.one_of(st.none(), st.integers(0, 10**12)))
def test_index_range_round_trips(start: int, length: int | None) -> None:
    end = None if length is None else start + length
    parsed = parse_index_range(str(IndexRange(start, end)))
    assert parsed == IndexRange(start, end)


@given(st.text(max_size=30))
def test_index_range_refuses_with_400_or_parses(text: str) -> None:
    try:
        parsed = parse_index_range(text)
    except ApiError as exc:
        assert (exc.status, exc.detail) == (400, 1)
        assert "indexRange" in exc.message
    else:
        assert parsed.end is None or parsed.end >= parsed.start


@given(times)
def test_rfc3339_times_parse_back(t_ms: int) -> None:
    assert parse_time_ms(rfc3339(t_ms)) == t_ms


@given(st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999))
def test_the_gateways_times_are_exact_to_the_millisecond(t_ms: int) -> None:
    # What every response carries: no millisecond lost to float seconds (years 1 to 9999).
    text = store_rfc3339(t_ms)
    assert text is not None
    assert parse_time_ms(text) == t_ms
    if t_ms >= 0:
        assert text == rfc3339(t_ms)


@given(st.integers(86_400_000, 253_402_214_399_000), st.integers(-14 * 60, 14 * 60))
def test_offsets_are_honoured(t_ms: int, minutes: int) -> None:
    stamp = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=t_ms)
    local = stamp + timedelta(minutes=minutes)
    sign = "+" if minutes >= 0 else "-"
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + f".{t_ms % 1000:03d}"
    text += f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    if 1 <= local.year <= 9999:
        assert parse_time_ms(text) == t_ms


@given(
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 59),
)
def test_durations(weeks: int, days: int, hours: int, minutes: int, seconds: int) -> None:
    text = f"P{weeks}W{days}DT{hours}H{minutes}M{seconds}S"
    expected = ((((weeks * 7 + days) * 24 + hours) * 60 + minutes) * 60 + seconds) * 1000
    assert parse_duration_ms(text) == expected


@pytest.mark.parametrize("text", ["P", "PT", "P1Y", "1D", "PT1.5H", "P-1D", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_ms(text)


@given(times, times)
def test_timestamps_intervals(a: int, b: int) -> None:
    low, high = sorted((a, b))
    ta, tb = rfc3339(low), rfc3339(high)
    assert parse_timestamps([f"{ta}/{tb}"], NOW) == [TimeRange(low, high)]
    if low <= NOW:
        assert parse_timestamps([f"{ta}/"], NOW) == [TimeRange(low, NOW)]
    assert parse_timestamps([f"/{tb}"], NOW) == [TimeRange(None, high)]
    assert parse_timestamps([f"{ta}/PT1H"], NOW) == [TimeRange(low, low + 3_600_000)]
    assert parse_timestamps([f"PT1M/{tb}"], NOW) == [TimeRange(high - 60_000, high)]
    both = parse_timestamps([f"{ta}/{ta},{tb}/{tb}"], NOW)
    assert both is not None and in_ranges(low, both) and in_ranges(high, both)


@given(st.lists(st.text(max_size=40), min_size=1, max_size=12))
def test_timestamps_refuse_with_400_or_parse(values: list[str]) -> None:
    try:
        ranges = parse_timestamps(values, NOW)
    except ApiError as exc:
        assert (exc.status, exc.detail) == (400, 1)
    else:
        assert ranges is None or all(isinstance(r, TimeRange) for r in ranges)


def test_no_timestamps_no_filter() -> None:
    assert parse_timestamps(None, NOW) is None
    assert in_ranges(None, None)
    assert not in_ranges(None, [TimeRange(None, None)])


@given(
    st.integers(0, 300),
    st.integers(0, 320),
    st.one_of(st.none(), st.integers(0, 400)),
    st.integers(1, 70),
)
def test_paging(total: int, start: int, span: int | None, size: int) -> None:
    items = list(range(total))
    end = None if span is None else start + span
    p = page(items, path="/x", index_range=IndexRange(start, end), page_size=size)
    last = total - 1 if end is None else min(end, total - 1)
    assert p.items == items[start : min(last + 1, start + size)]
    assert p.total == total
    assert 1 <= p.current_page <= p.total_page
    assert p.total_page == max(1, -(-total // size))
    assert ("next" in p.links) == (start + size < total)
    assert ("prev" in p.links) == (start > 0)
    assert {"self", "first", "last"} <= set(p.links)
