"""B2C routes (``/user/...``) and the vehicle views they share with the B2B routes.

A request about a vehicle goes through the same steps whoever asks: the token is verified
and counted (:mod:`gateway.api.security`), its scopes checked (403 detail 1), the vehicle
looked up in the caller's account (404 detail 1: another user's or fleet's vehicle is not
revealed), the vehicle's subscribed services checked (403 detail 3) and the driver's privacy
setting applied (403 detail 2). The views themselves come from :mod:`gateway.derive`, which
withholds on its own what the visible scopes and the privacy setting do not allow; the
views here add the HAL links, the paging and the query filters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from can_dbc.catalog import Scope, default_catalog
from firmware_sim.payload import Privacy
from gateway import derive
from gateway.accounts import Accounts
from gateway.accounts import Vehicle as AccountVehicle
from gateway.api import models
from gateway.api.errors import ApiError
from gateway.api.hal import (
    DEFAULT_PAGE_SIZE,
    GEO_JSON,
    HAL_JSON,
    MAX_PAGE_SIZE,
    MAX_PAGE_SIZE_HIGH_FREQUENCY,
    TimeRange,
    bad_parameter,
    collection,
    in_ranges,
    link,
    page,
    parse_index_range,
    parse_time_ms,
    parse_timestamps,
)
from gateway.api.security import require_scopes, require_user
from gateway.auth import Principal, catalog_scopes
from gateway.store import Store, rfc3339

__all__ = [
    "API_PREFIX",
    "Access",
    "GeoJSONResponse",
    "HalResponse",
    "router",
]

API_PREFIX = "/connectedcar/v4"
_CATALOG = default_catalog()

POSITION_KEYS = frozenset(
    {"lastPosition", "startPosition", "stopPosition", "endPosition", "position", "location"}
)
PRIVACY_NAMES = {Privacy.NONE: "None", Privacy.GEOLOCATION: "Geolocation", Privacy.FULL: "Full"}

_INDEX_RANGE_PATTERN = r"^\d{1,18}-\d{0,18}$"
_FLOAT_RANGE = re.compile(r"(\d{1,9}(?:\.\d{1,3})?)-(\d{1,9}(?:\.\d{1,3})?)?")


class HalResponse(JSONResponse):
    """A HAL+JSON answer."""

    media_type = HAL_JSON


class GeoJSONResponse(JSONResponse):
    """A GeoJSON answer."""

    media_type = GEO_JSON


# -- parameters -----------------------------------------------------------------------------

IndexRangeQ = Annotated[
    str | None,
    Query(
        alias="indexRange",
        pattern=_INDEX_RANGE_PATTERN,
        description="Zero-based, inclusive item indexes: `0-9`, or `10-` for all from 10",
    ),
]
PageSizeQ = Annotated[
    int,
    Query(alias="pageSize", ge=1, le=MAX_PAGE_SIZE, description="Items per page (1-60)"),
]
PageSizeHighQ = Annotated[
    int,
    Query(
        alias="pageSize",
        ge=1,
        le=MAX_PAGE_SIZE_HIGH_FREQUENCY,
        description="Items per page (1-2000)",
    ),
]
TimestampsQ = Annotated[
    list[str] | None,
    Query(
        max_length=10,
        description=(
            "Time intervals (ISO 8601, RFC 3339 times): `T1/T2`, `T1/PT1H`, `PT1H/T2`, `T1/`"
            " (until now) or `/T2`; an item matches when its time is in any of them"
        ),
    ),
]
TelemetryType = Literal[
    "environment",
    "privacy",
    "vehicle",
    "vehicle.adas",
    "vehicle.battery",
    "vehicle.doorsState",
    "vehicle.energies",
    "vehicle.engines",
    "vehicle.ignition",
    "vehicle.lightingSystem",
    "vehicle.safety",
    "vehicle.transmission",
    "vehicle.alarm.status",
    "vehicle.alarm.trigger",
    "vehicle.wipingBlades",
]
TelemetryTypesQ = Annotated[
    list[TelemetryType] | None,
    Query(alias="type", max_length=15, description="Telemetry kinds (default: all)"),
]
TelemetryExtensionQ = Annotated[
    list[Literal["location", "maintenance"]] | None,
    Query(alias="extension", max_length=2, description="Extra data under `_embedded`"),
]
AlarmTypesQ = Annotated[
    list[Literal["vehicle.alarm.status", "vehicle.alarm.trigger"]] | None,
    Query(alias="type", max_length=2, description="Alarm kinds (default: both)"),
]
TripStatesQ = Annotated[
    list[Literal["Nominal", "Unstarted", "DataLacking", "Unfinished"]] | None,
    Query(alias="states", max_length=4, description="Keep trips in one of these states"),
]
TripDistanceQ = Annotated[
    str | None,
    Query(
        alias="distance",
        pattern=r"^\d{1,9}(\.\d{1,3})?-(\d{1,9}(\.\d{1,3})?)?$",
        description="Trip distance bounds in km: `1-150`, `0.1-`",
    ),
]
TripDurationQ = Annotated[
    str | None,
    Query(
        alias="duration",
        pattern=r"^\d{1,9}-\d{0,9}$",
        description="Trip duration bounds in seconds: `10-3600`, `20-`",
    ),
]
ToleranceQ = Annotated[
    float | None,
    Query(ge=0, le=1000, description="Simplify the path: drop points closer than this (km)"),
]
VinPrefixQ = Annotated[
    str | None,
    Query(alias="vinPrefix", max_length=17, description="Keep VINs that start with this"),
]
VehicleId = Annotated[str, Path(description="The vehicle's id", max_length=64)]
ItemId = Annotated[str, Path(description="The resource's id", max_length=128)]


@dataclass(frozen=True, slots=True)
class Paging:
    """The paging and time filter of a collection request."""

    index_range: str | None
    page_size: int
    timestamps: list[TimeRange] | None


# -- access ---------------------------------------------------------------------------------


def base_url(request: Request) -> str:
    """The prefix of every link (empty: links are absolute paths)."""
    return str(getattr(request.app.state, "base_url", "") or "")


def now_ms(request: Request) -> int:
    """The application's "now"."""
    return int(request.app.state.clock_ms())


@dataclass(frozen=True, slots=True)
class Access:
    """A request's view of one vehicle: what it may see and where its links point."""

    request: Request
    store: Store
    principal: Principal
    vehicle: AccountVehicle
    href: str  # the vehicle's own link
    owner_link: tuple[str, str]  # ("user" | "fleet", href)
    scopes: frozenset[Scope]  # the token's, within the vehicle's services
    services: frozenset[Scope]  # the vehicle's services' scopes
    privacy: Privacy

    @property
    def vin(self) -> str:
        """The vehicle's VIN."""
        return self.vehicle.vin

    @property
    def visible(self) -> frozenset[Scope]:
        """The scopes left once the privacy setting applies."""
        return derive.visible_scopes(self.scopes, self.privacy)

    def need(self, *scopes: Scope, position: bool = False) -> None:
        """Refuse unless the services cover ``scopes`` (403/3) and privacy allows (403/2)."""
        for scope in scopes:
            if scope not in self.services:
                raise ApiError(
                    403,
                    f"the vehicle's services do not cover {scope.value} data",
                    detail=3,
                )
        if self.privacy is Privacy.FULL:
            raise ApiError(403, "the driver's privacy setting (Full) withholds this", detail=2)
        if position and self.privacy is Privacy.GEOLOCATION:
            raise ApiError(
                403, "the driver's privacy setting (Geolocation) withholds positions", detail=2
            )

    def vehicle_link(self) -> dict[str, Any]:
        """The ``vehicle`` link."""
        return link(self.href)

    def links(self, self_href: str, **more: str) -> dict[str, Any]:
        """``self``, ``vehicle`` and more links."""
        out = {"self": link(self_href), "vehicle": self.vehicle_link()}
        out.update({k: link(v) for k, v in more.items()})
        return out

    def clean(self, body: Any) -> Any:
        """``body`` without positions when they are not visible (a second line of defence)."""
        if Scope.POSITION in self.visible:
            return body
        return strip_positions(body)


def strip_positions(body: Any) -> Any:
    """A copy of ``body`` with every position member removed, at any depth."""
    if isinstance(body, dict):
        return {k: strip_positions(v) for k, v in body.items() if k not in POSITION_KEYS}
    if isinstance(body, list):
        return [strip_positions(v) for v in body]
    return body


def make_access(
    request: Request,
    who: Principal,
    vehicle: AccountVehicle,
    href: str,
    owner_link: tuple[str, str],
) -> Access:
    """The access of ``who`` to ``vehicle`` (already known to be in its account)."""
    store: Store = request.app.state.store
    services = _CATALOG.scopes_of(vehicle.services)
    return Access(
        request=request,
        store=store,
        principal=who,
        vehicle=vehicle,
        href=href,
        owner_link=owner_link,
        scopes=catalog_scopes(who.scopes) & services,
        services=services,
        privacy=derive.current_privacy(store, vehicle.vin),
    )


def user_vehicle(request: Request, who: Principal, vehicle_id: str) -> Access:
    """The caller's own vehicle with this id (404 detail 1 otherwise)."""
    accounts: Accounts = request.app.state.accounts
    vehicle = accounts.vehicle_by_id(vehicle_id)
    if vehicle is None or vehicle.owner != who.subject:
        raise ApiError(404, "no such vehicle", detail=1)
    base = f"{base_url(request)}{API_PREFIX}"
    href = f"{base}/user/vehicles/{vehicle.id}"
    return make_access(request, who, vehicle, href, ("user", f"{base}/user"))


def query_items(request: Request) -> dict[str, list[str]]:
    """The request's query parameters, each with all its values."""
    out: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        out.setdefault(key, []).append(value)
    return out


def self_href(request: Request) -> str:
    """This request's path, with the link prefix."""
    return f"{base_url(request)}{request.url.path}"


def paging(
    request: Request, index_range: str | None, page_size: int, timestamps: list[str] | None
) -> Paging:
    """Parse the paging and time parameters (400 detail 1 when they do not parse)."""
    parse_index_range(index_range)
    return Paging(index_range, page_size, parse_timestamps(timestamps, now_ms(request)))


def paged(
    request: Request, name: str, items: Sequence[Any], p: Paging, **extra_links: str
) -> dict[str, Any]:
    """The HAL collection body of ``items`` for this request."""
    cut = page(
        items,
        path=self_href(request),
        index_range=parse_index_range(p.index_range),
        page_size=p.page_size,
        query=query_items(request),
    )
    return collection(name, cut, extra_links={k: link(v) for k, v in extra_links.items()})


def hal(body: Any, status_code: int = 200) -> HalResponse:
    """A HAL+JSON answer."""
    return HalResponse(body, status_code=status_code)


def time_of(item: Mapping[str, Any], *keys: str) -> int | None:
    """The first of ``keys`` present in ``item``, as epoch milliseconds."""
    for key in keys:
        value = item.get(key)
        if isinstance(value, str):
            try:
                return parse_time_ms(value)
            except ValueError:
                return None
    return None


def wants_geojson(request: Request, default: bool) -> bool:
    """Whether the ``Accept`` header prefers GeoJSON over HAL+JSON (``default`` if neither)."""
    accept = request.headers.get("accept", "").lower()
    geo = GEO_JSON in accept or "application/geo+json" in accept
    hal_ = HAL_JSON in accept
    if geo and not hal_:
        return True
    if hal_ and not geo:
        return False
    if geo and hal_:
        return accept.index("geo+json") < accept.index(HAL_JSON)
    return default


def _bounds(ranges: Sequence[TimeRange] | None) -> tuple[int | None, int | None]:
    if not ranges:
        return None, None
    starts = [r.start_ms for r in ranges]
    ends = [r.end_ms for r in ranges]
    low = None if any(s is None for s in starts) else min(s for s in starts if s is not None)
    high = None if any(e is None for e in ends) else max(e for e in ends if e is not None)
    return low, high


def _parse_float_range(name: str, text: str | None) -> tuple[float, float]:
    if text is None:
        return 0.0, math.inf
    m = _FLOAT_RANGE.fullmatch(text)
    if m is None:
        raise bad_parameter(name, f"{text!r} is not LOW-[HIGH]")
    low = float(m.group(1))
    high = float(m.group(2)) if m.group(2) else math.inf
    if high < low:
        raise bad_parameter(name, f"{text!r} ends before it starts")
    return low, high


# -- the vehicle views (shared by B2C and B2B) -----------------------------------------------


def vehicle_body(
    access_href: str, vehicle: AccountVehicle, store: Store, owner: tuple[str, str]
) -> dict[str, Any]:
    """A vehicle as the reference's Vehicle."""
    body: dict[str, Any] = {
        "_links": {
            "self": link(access_href),
            owner[0]: link(owner[1]),
            "status": link(f"{access_href}/status"),
            "lastPosition": link(f"{access_href}/lastPosition"),
            "telemetry": link(f"{access_href}/telemetry"),
            "trips": link(f"{access_href}/trips"),
            "alerts": link(f"{access_href}/alerts"),
            "collisions": link(f"{access_href}/collisions"),
            "maintenance": link(f"{access_href}/maintenance"),
            "alarms": link(f"{access_href}/alarms"),
        },
        "id": vehicle.id,
        "vin": vehicle.vin,
        "services": list(vehicle.services),
    }
    if vehicle.brand:
        body["brand"] = vehicle.brand
    if vehicle.label:
        body["label"] = vehicle.label
    seen = store.vehicle(vehicle.vin)
    if seen is not None:
        body["createdAt"] = rfc3339(seen.first_seen_ms)
        body["updatedAt"] = rfc3339(seen.last_seen_ms)
        state = store.last_state(vehicle.vin)
        electric, fuel = 22 in state, 21 in state
        if electric or fuel:
            body["motorization"] = (
                "Hybrid" if electric and fuel else "Electric" if electric else "Thermic"
            )
    return body


def status_view(a: Access) -> dict[str, Any]:
    """The vehicle's latest status; under ``Full`` privacy only its ``privacy`` part."""
    if Scope.TELEMETRY not in a.services:
        raise ApiError(403, "the vehicle's services do not cover telemetry data", detail=3)
    body = derive.status(a.store, a.vin, a.scopes, a.privacy)
    if body is None:
        raise ApiError(404, "no data from this vehicle yet", detail=2)
    if a.privacy is Privacy.FULL:
        body = {k: body[k] for k in ("createdAt", "updatedAt", "privacy") if k in body}
    return {"_links": a.links(f"{a.href}/status"), **a.clean(body)}


def last_position_view(a: Access) -> dict[str, Any]:
    """The latest position as a GeoJSON Feature."""
    a.need(Scope.POSITION, position=True)
    body = derive.last_position(a.store, a.vin, a.scopes, a.privacy)
    if body is None:
        raise ApiError(404, "no position from this vehicle yet", detail=2)
    return {**body, "_links": a.links(f"{a.href}/lastPosition")}


def maintenance_view(a: Access) -> dict[str, Any]:
    """The next service."""
    a.need(Scope.MAINTENANCE)
    body = derive.maintenance(a.store, a.vin, a.scopes, a.privacy)
    if body is None:
        raise ApiError(404, "no maintenance data from this vehicle yet", detail=2)
    return {"_links": a.links(f"{a.href}/maintenance", alerts=f"{a.href}/alerts"), **body}


def _alert_body(
    a: Access, alert: Mapping[str, Any], trip_href: str | None = None
) -> dict[str, Any]:
    links = a.links(f"{a.href}/alerts/{alert['id']}")
    if trip_href is not None:
        links["trip"] = link(trip_href)
    return {"_links": links, **a.clean(dict(alert))}


def _collision_body(
    a: Access, collision: Mapping[str, Any], trip_href: str | None = None
) -> dict[str, Any]:
    links = a.links(f"{a.href}/collisions/{collision['id']}")
    if trip_href is not None:
        links["trip"] = link(trip_href)
    return {"_links": links, **a.clean(dict(collision))}


def alert_items(a: Access, ranges: Sequence[TimeRange] | None = None) -> list[dict[str, Any]]:
    """The vehicle's alerts with links, filtered by time."""
    a.need(Scope.ALERT)
    items = derive.alerts(a.store, a.vin, a.scopes, a.privacy)
    return [_alert_body(a, x) for x in items if in_ranges(time_of(x, "startedAt"), ranges)]


def alert_view(a: Access, alert_id: str) -> dict[str, Any]:
    """One alert (404 detail 2 when unknown)."""
    for item in alert_items(a):
        if item["id"] == alert_id:
            return item
    raise ApiError(404, "no such alert", detail=2)


def collision_items(a: Access, ranges: Sequence[TimeRange] | None = None) -> list[dict[str, Any]]:
    """The vehicle's collisions with links, filtered by time."""
    a.need(Scope.COLLISION)
    items = derive.collisions(a.store, a.vin, a.scopes, a.privacy)
    return [_collision_body(a, x) for x in items if in_ranges(time_of(x, "createdAt"), ranges)]


def collision_view(a: Access, collision_id: str) -> dict[str, Any]:
    """One collision (404 detail 2 when unknown)."""
    for item in collision_items(a):
        if item["id"] == collision_id:
            return item
    raise ApiError(404, "no such collision", detail=2)


def _alarm_body(a: Access, alarm: Mapping[str, Any]) -> dict[str, Any]:
    return {"_links": a.links(f"{a.href}/alarms/{alarm['id']}"), **a.clean(dict(alarm))}


def _alarm_time(alarm: Mapping[str, Any]) -> int | None:
    for part in ("status", "trigger"):
        inner = alarm.get(part)
        if isinstance(inner, Mapping):
            t = time_of(inner, "createdAt", "startAt")
            if t is not None:
                return t
    return None


def alarm_items(
    a: Access, ranges: Sequence[TimeRange] | None = None, types: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """The anti-theft alarm's history with links, filtered by time and kind."""
    a.need(Scope.TELEMETRY)
    items = derive.alarms(a.store, a.vin, a.scopes, a.privacy, types=types)
    return [_alarm_body(a, x) for x in items if in_ranges(_alarm_time(x), ranges)]


def alarm_view(a: Access, alarm_id: str) -> dict[str, Any]:
    """One alarm event (404 detail 2 when unknown)."""
    for item in alarm_items(a):
        if item["id"] == alarm_id:
            return item
    raise ApiError(404, "no such alarm", detail=2)


def _telemetry_body(a: Access, item: Mapping[str, Any]) -> dict[str, Any]:
    at = item.get("createdAt")
    self_link = f"{a.href}/telemetry"
    if isinstance(at, str):
        self_link += f"?timestamps={at}/{at}"
    return {"_links": a.links(self_link), **a.clean(dict(item))}


def telemetry_items(
    a: Access,
    ranges: Sequence[TimeRange] | None,
    types: Iterable[str] | None,
    extensions: Iterable[str],
) -> list[dict[str, Any]]:
    """Telemetry messages with links, filtered by time."""
    a.need(Scope.TELEMETRY)
    wanted = list(extensions)
    if "maintenance" in wanted and Scope.MAINTENANCE not in a.services:
        raise ApiError(403, "the vehicle's services do not cover maintenance data", detail=3)
    low, high = _bounds(ranges)
    try:
        items = derive.telemetry(
            a.store,
            a.vin,
            a.scopes,
            a.privacy,
            types=types,
            extensions=wanted,
            start_ms=low,
            end_ms=high,
        )
    except derive.DeriveError as exc:
        raise ApiError(400, str(exc), detail=1) from None
    return [_telemetry_body(a, x) for x in items if in_ranges(time_of(x, "createdAt"), ranges)]


def trip_href(a: Access, trip_id: str) -> str:
    """A trip's link."""
    return f"{a.href}/trips/{trip_id}"


def _trip_body(a: Access, trip: derive.Trip) -> dict[str, Any]:
    href = trip_href(a, trip.id)
    links = a.links(
        href,
        waypoints=f"{href}/wayPoints",
        telemetry=f"{href}/telemetry",
        alerts=f"{href}/alerts",
        collisions=f"{href}/collisions",
    )
    return {"_links": links, **a.clean(dict(trip.body))}


def _trip_states(body: Mapping[str, Any]) -> set[str]:
    faults = body.get("faults") or []
    states = {str(f.get("fault")) for f in faults if isinstance(f, Mapping) and f.get("fault")}
    return states or {"Nominal"}


def trip_items(
    a: Access,
    ranges: Sequence[TimeRange] | None = None,
    distance: str | None = None,
    duration: str | None = None,
    states: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """The vehicle's trips with links, filtered."""
    a.need(Scope.TRIP)
    km_low, km_high = _parse_float_range("distance", distance)
    s_low, s_high = _parse_float_range("duration", duration)
    wanted = set(states) if states else None
    out = []
    for trip in derive.trips(a.store, a.vin, a.scopes, a.privacy):
        body = trip.body
        if not in_ranges(trip.start_ms, ranges):
            continue
        km = float(body.get("distance", 0.0))
        seconds = float(body.get("duration", 0))
        if not (km_low <= km <= km_high and s_low <= seconds <= s_high):
            continue
        if wanted is not None and not (_trip_states(body) & wanted):
            continue
        out.append(_trip_body(a, trip))
    return out


def _trip(a: Access, trip_id: str) -> derive.Trip:
    a.need(Scope.TRIP)
    found = derive.trip(a.store, a.vin, trip_id, a.scopes, a.privacy)
    if found is None:
        raise ApiError(404, "no such trip", detail=2)
    return found


def trip_view(a: Access, trip_id: str) -> dict[str, Any]:
    """One trip (404 detail 2 when unknown)."""
    return _trip_body(a, _trip(a, trip_id))


def trip_waypoint_items(
    a: Access, trip_id: str, ranges: Sequence[TimeRange] | None, tolerance: float | None
) -> list[dict[str, Any]]:
    """A trip's positions."""
    a.need(Scope.TRIP, Scope.POSITION, position=True)
    _trip(a, trip_id)
    points = derive.trip_waypoints(
        a.store, a.vin, trip_id, a.scopes, a.privacy, tolerance_km=tolerance
    )
    if points is None:
        raise ApiError(404, "no such trip", detail=2)
    return [p for p in points if in_ranges(time_of(p.get("properties", {}), "createdAt"), ranges)]


def trip_telemetry_items(
    a: Access,
    trip_id: str,
    ranges: Sequence[TimeRange] | None,
    types: Iterable[str] | None,
    extensions: Iterable[str],
) -> list[dict[str, Any]]:
    """A trip's telemetry messages."""
    a.need(Scope.TRIP, Scope.TELEMETRY)
    wanted = list(extensions)
    if "maintenance" in wanted and Scope.MAINTENANCE not in a.services:
        raise ApiError(403, "the vehicle's services do not cover maintenance data", detail=3)
    try:
        items = derive.trip_telemetry(
            a.store, a.vin, trip_id, a.scopes, a.privacy, types=types, extensions=wanted
        )
    except derive.DeriveError as exc:
        raise ApiError(400, str(exc), detail=1) from None
    if items is None:
        raise ApiError(404, "no such trip", detail=2)
    return [_telemetry_body(a, x) for x in items if in_ranges(time_of(x, "createdAt"), ranges)]


def trip_alert_items(
    a: Access, trip_id: str, ranges: Sequence[TimeRange] | None = None
) -> list[dict[str, Any]]:
    """The alerts of a trip."""
    a.need(Scope.TRIP, Scope.ALERT)
    items = derive.trip_alerts(a.store, a.vin, trip_id, a.scopes, a.privacy)
    if items is None:
        raise ApiError(404, "no such trip", detail=2)
    href = trip_href(a, trip_id)
    return [_alert_body(a, x, href) for x in items if in_ranges(time_of(x, "startedAt"), ranges)]


def trip_collision_items(
    a: Access, trip_id: str, ranges: Sequence[TimeRange] | None = None
) -> list[dict[str, Any]]:
    """The collisions of a trip."""
    a.need(Scope.TRIP, Scope.COLLISION)
    items = derive.trip_collisions(a.store, a.vin, trip_id, a.scopes, a.privacy)
    if items is None:
        raise ApiError(404, "no such trip", detail=2)
    href = trip_href(a, trip_id)
    return [
        _collision_body(a, x, href) for x in items if in_ranges(time_of(x, "createdAt"), ranges)
    ]


def find(items: Iterable[dict[str, Any]], item_id: str, what: str) -> dict[str, Any]:
    """The item with this id (404 detail 2 when none)."""
    for item in items:
        if item.get("id") == item_id:
            return item
    raise ApiError(404, f"no such {what}", detail=2)


def waypoints_answer(request: Request, items: Sequence[dict[str, Any]], p: Paging) -> JSONResponse:
    """A trip's positions: HAL (default) or a GeoJSON FeatureCollection, by ``Accept``."""
    body = paged(request, "positions", items, p)
    if wants_geojson(request, default=False):
        geo = {
            "type": "FeatureCollection",
            "features": body["_embedded"]["positions"],
            **{k: v for k, v in body.items() if k != "_embedded"},
        }
        return GeoJSONResponse(geo)
    return hal(body)


def position_answer(request: Request, body: dict[str, Any]) -> JSONResponse:
    """A position: GeoJSON (default) or HAL+JSON, by ``Accept``."""
    if wants_geojson(request, default=True):
        return GeoJSONResponse(body)
    return hal(body)


# -- OpenAPI helpers --------------------------------------------------------------------------


def hal_doc(model: type[Any], description: str) -> dict[int | str, dict[str, Any]]:
    """The 200 answer documented as HAL+JSON of ``model``."""
    return {200: {"description": description, "model": model}}


def both_docs(
    model: type[Any], other: type[Any] | None, description: str
) -> dict[int | str, dict[str, Any]]:
    """The 200 answer documented as both HAL+JSON and GeoJSON."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    other_ref = {"$ref": f"#/components/schemas/{(other or model).__name__}"}
    return {
        200: {
            "description": description,
            "content": {HAL_JSON: {"schema": ref}, GEO_JSON: {"schema": other_ref}},
        }
    }


# -- routes -----------------------------------------------------------------------------------

router = APIRouter(default_response_class=HalResponse)

User = Annotated[Principal, Depends(require_user)]


def _scoped(*scopes: str) -> list[Any]:
    return [Depends(require_scopes(*scopes))]


@router.get(
    "/user",
    tags=["User"],
    summary="The signed-in user",
    response_model=models.User,
    operation_id="getUser",
)
def get_user(request: Request, who: User) -> HalResponse:
    """The user the token speaks for."""
    accounts: Accounts = request.app.state.accounts
    user = accounts.user(who.subject)
    if user is None:
        raise ApiError(404, "no such user", detail=2)
    base = f"{base_url(request)}{API_PREFIX}/user"
    body = {
        "_links": {"self": link(base), "vehicles": link(f"{base}/vehicles")},
        "id": user.id,
        "email": user.email,
    }
    return hal(body)


@router.get(
    "/user/vehicles",
    tags=["Vehicles"],
    summary="The user's vehicles",
    response_model=models.Vehicles,
    operation_id="getVehicles",
)
def get_vehicles(
    request: Request,
    who: User,
    *,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
    vin_prefix: VinPrefixQ = None,
) -> HalResponse:
    """The vehicles of the user's account."""
    p = paging(request, index_range, page_size, None)
    accounts: Accounts = request.app.state.accounts
    store: Store = request.app.state.store
    base = f"{base_url(request)}{API_PREFIX}"
    items = [
        vehicle_body(f"{base}/user/vehicles/{v.id}", v, store, ("user", f"{base}/user"))
        for v in accounts.vehicles_of_user(who.subject)
        if vin_prefix is None or v.vin.startswith(vin_prefix)
    ]
    return hal(paged(request, "vehicles", items, p))


@router.get(
    "/user/vehicles/{id}",
    tags=["Vehicles"],
    summary="One of the user's vehicles",
    response_model=models.Vehicle,
    operation_id="getVehicleById",
)
def get_vehicle(request: Request, who: User, id: VehicleId) -> HalResponse:
    """A vehicle of the user's account."""
    a = user_vehicle(request, who, id)
    return hal(vehicle_body(a.href, a.vehicle, a.store, a.owner_link))


@router.get(
    "/user/vehicles/{id}/status",
    tags=["Vehicles"],
    summary="The vehicle's latest status",
    response_model=models.Status,
    operation_id="getVehicleStatus",
    dependencies=_scoped("data:telemetry"),
)
def get_status(request: Request, who: User, id: VehicleId) -> HalResponse:
    """Telemetry parts need the telemetry scope, ``lastPosition`` the position scope."""
    return hal(status_view(user_vehicle(request, who, id)))


@router.get(
    "/user/vehicles/{id}/lastPosition",
    tags=["Vehicles"],
    summary="The vehicle's last position",
    response_class=GeoJSONResponse,
    response_model=models.Position,
    responses=both_docs(models.Position, None, "The last position (GeoJSON Feature)"),
    operation_id="getVehicleLastPosition",
    dependencies=_scoped("data:position"),
)
def get_last_position(request: Request, who: User, id: VehicleId) -> JSONResponse:
    """GeoJSON by default; HAL+JSON when ``Accept`` asks for it."""
    return position_answer(request, last_position_view(user_vehicle(request, who, id)))


@router.get(
    "/user/vehicles/{id}/telemetry",
    tags=["Vehicles"],
    summary="The vehicle's telemetry messages",
    response_model=models.Telemetries,
    operation_id="getVehicleTelemetry",
    dependencies=_scoped("data:telemetry"),
)
def get_telemetry(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    timestamps: TimestampsQ = None,
    types: TelemetryTypesQ = None,
    extension: TelemetryExtensionQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeHighQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """One message per moment a wanted value was sampled, oldest first."""
    p = paging(request, index_range, page_size, timestamps)
    a = user_vehicle(request, who, id)
    items = telemetry_items(a, p.timestamps, types, extension or ())
    return hal(paged(request, "telemetries", items, p, vehicle=a.href))


@router.get(
    "/user/vehicles/{id}/maintenance",
    tags=["Vehicles"],
    summary="Time and distance to the next service",
    response_model=models.Maintenance,
    operation_id="getVehicleMaintenance",
    dependencies=_scoped("data:telemetry"),
)
def get_maintenance(request: Request, who: User, id: VehicleId) -> HalResponse:
    """Needs a maintenance service on the vehicle."""
    return hal(maintenance_view(user_vehicle(request, who, id)))


@router.get(
    "/user/vehicles/{id}/alerts",
    tags=["Vehicles"],
    summary="The vehicle's alerts",
    response_model=models.Alerts,
    operation_id="getVehicleAlerts",
    dependencies=_scoped("data:alert"),
)
def get_alerts(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    timestamps: TimestampsQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Alerts, oldest first; ``timestamps`` filters on their start."""
    p = paging(request, index_range, page_size, timestamps)
    a = user_vehicle(request, who, id)
    return hal(paged(request, "alerts", alert_items(a, p.timestamps), p, vehicle=a.href))


@router.get(
    "/user/vehicles/{id}/alerts/{aid}",
    tags=["Vehicles"],
    summary="One alert",
    response_model=models.Alert,
    operation_id="getVehicleAlertById",
    dependencies=_scoped("data:alert"),
)
def get_alert(request: Request, who: User, id: VehicleId, aid: ItemId) -> HalResponse:
    """An alert by id."""
    return hal(alert_view(user_vehicle(request, who, id), aid))


@router.get(
    "/user/vehicles/{id}/collisions",
    tags=["Vehicles"],
    summary="The vehicle's collisions",
    response_model=models.Collisions,
    operation_id="getVehicleCollisions",
    dependencies=_scoped("data:collision"),
)
def get_collisions(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    timestamps: TimestampsQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Collisions, oldest first."""
    p = paging(request, index_range, page_size, timestamps)
    a = user_vehicle(request, who, id)
    items = collision_items(a, p.timestamps)
    return hal(paged(request, "Collisions", items, p, vehicle=a.href))


@router.get(
    "/user/vehicles/{id}/collisions/{cid}",
    tags=["Vehicles"],
    summary="One collision",
    response_model=models.Collision,
    operation_id="getVehicleCollisionById",
    dependencies=_scoped("data:collision"),
)
def get_collision(request: Request, who: User, id: VehicleId, cid: ItemId) -> HalResponse:
    """A collision by id."""
    return hal(collision_view(user_vehicle(request, who, id), cid))


@router.get(
    "/user/vehicles/{id}/alarms",
    tags=["Vehicles"],
    summary="The anti-theft alarm's history",
    response_model=models.Alarms,
    operation_id="getVehicleAlarms",
    dependencies=_scoped("data:alert"),
)
def get_alarms(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    types: AlarmTypesQ = None,
    timestamps: TimestampsQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Arming, disarming and triggers, oldest first."""
    p = paging(request, index_range, page_size, timestamps)
    a = user_vehicle(request, who, id)
    items = alarm_items(a, p.timestamps, types)
    return hal(paged(request, "alarms", items, p, vehicle=a.href))


@router.get(
    "/user/vehicles/{id}/alarms/{aid}",
    tags=["Vehicles"],
    summary="One alarm event",
    response_model=models.Alarm,
    operation_id="getVehicleAlarmById",
    dependencies=_scoped("data:alert"),
)
def get_alarm(request: Request, who: User, id: VehicleId, aid: ItemId) -> HalResponse:
    """An alarm event by id."""
    return hal(alarm_view(user_vehicle(request, who, id), aid))


@router.get(
    "/user/vehicles/{id}/trips",
    tags=["Trips"],
    summary="The vehicle's trips",
    response_model=models.Trips,
    operation_id="getVehicleTrips",
    dependencies=_scoped("data:trip"),
)
def get_trips(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    timestamps: TimestampsQ = None,
    distance: TripDistanceQ = None,
    duration: TripDurationQ = None,
    states: TripStatesQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Trips (the running one too), oldest first; ``timestamps`` filters on their start."""
    p = paging(request, index_range, page_size, timestamps)
    a = user_vehicle(request, who, id)
    items = trip_items(a, p.timestamps, distance, duration, states)
    return hal(paged(request, "trips", items, p, vehicle=a.href))


@router.get(
    "/user/vehicles/{id}/trips/{tid}",
    tags=["Trips"],
    summary="One trip",
    response_model=models.Trip,
    operation_id="getVehicleTripById",
    dependencies=_scoped("data:trip"),
)
def get_trip(request: Request, who: User, id: VehicleId, tid: ItemId) -> HalResponse:
    """A trip by id."""
    return hal(trip_view(user_vehicle(request, who, id), tid))


@router.get(
    "/user/vehicles/{id}/trips/{tid}/wayPoints",
    tags=["Trips"],
    summary="The positions of a trip",
    response_model=models.WayPoints,
    responses=both_docs(models.WayPoints, models.PositionCollection, "The trip's path"),
    operation_id="getVehicleTripWayPoints",
    dependencies=_scoped("data:trip", "data:position"),
)
def get_trip_waypoints(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    tid: ItemId,
    timestamps: TimestampsQ = None,
    tolerance: ToleranceQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeHighQ = DEFAULT_PAGE_SIZE,
) -> JSONResponse:
    """HAL+JSON by default; a GeoJSON FeatureCollection when ``Accept`` asks for it."""
    p = paging(request, index_range, page_size, timestamps)
    a = user_vehicle(request, who, id)
    return waypoints_answer(request, trip_waypoint_items(a, tid, p.timestamps, tolerance), p)


@router.get(
    "/user/vehicles/{id}/trips/{tid}/telemetry",
    tags=["Trips"],
    summary="The telemetry of a trip",
    response_model=models.Telemetries,
    operation_id="getVehicleTripTelemetry",
    dependencies=_scoped("data:trip", "data:telemetry"),
)
def get_trip_telemetry(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    tid: ItemId,
    timestamps: TimestampsQ = None,
    types: TelemetryTypesQ = None,
    extension: TelemetryExtensionQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeHighQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Telemetry messages sampled during the trip."""
    p = paging(request, index_range, page_size, timestamps)
    a = user_vehicle(request, who, id)
    items = trip_telemetry_items(a, tid, p.timestamps, types, extension or ())
    return hal(paged(request, "telemetries", items, p, trip=trip_href(a, tid)))


@router.get(
    "/user/vehicles/{id}/trips/{tid}/alerts",
    tags=["Trips"],
    summary="The alerts of a trip",
    response_model=models.Alerts,
    operation_id="getVehicleTripAlerts",
    dependencies=_scoped("data:trip", "data:alert"),
)
def get_trip_alerts(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    tid: ItemId,
    timestamps: TimestampsQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Alerts active at some time during the trip."""
    p = paging(request, index_range, page_size, timestamps)
    a = user_vehicle(request, who, id)
    items = trip_alert_items(a, tid, p.timestamps)
    return hal(paged(request, "alerts", items, p, trip=trip_href(a, tid)))


@router.get(
    "/user/vehicles/{id}/trips/{tid}/alerts/{aid}",
    tags=["Trips"],
    summary="One alert of a trip",
    response_model=models.Alert,
    operation_id="getVehicleTripAlertById",
    dependencies=_scoped("data:trip", "data:alert"),
)
def get_trip_alert(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    tid: ItemId,
    aid: ItemId,
) -> HalResponse:
    """An alert of the trip by id."""
    a = user_vehicle(request, who, id)
    return hal(find(trip_alert_items(a, tid), aid, "alert"))


@router.get(
    "/user/vehicles/{id}/trips/{tid}/collisions",
    tags=["Trips"],
    summary="The collisions of a trip",
    response_model=models.Collisions,
    operation_id="getVehicleTripCollisions",
    dependencies=_scoped("data:trip", "data:collision"),
)
def get_trip_collisions(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    tid: ItemId,
    timestamps: TimestampsQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Collisions during the trip."""
    p = paging(request, index_range, page_size, timestamps)
    a = user_vehicle(request, who, id)
    items = trip_collision_items(a, tid, p.timestamps)
    return hal(paged(request, "Collisions", items, p, trip=trip_href(a, tid)))


@router.get(
    "/user/vehicles/{id}/trips/{tid}/collisions/{cid}",
    tags=["Trips"],
    summary="One collision of a trip",
    response_model=models.Collision,
    operation_id="getVehicleTripCollisionById",
    dependencies=_scoped("data:trip", "data:collision"),
)
def get_trip_collision(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    tid: ItemId,
    cid: ItemId,
) -> HalResponse:
    """A collision of the trip by id."""
    a = user_vehicle(request, who, id)
    return hal(find(trip_collision_items(a, tid), cid, "collision"))
