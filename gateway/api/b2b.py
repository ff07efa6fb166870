"""B2B routes (``/fleets/...``): a fleet's vehicles and their data, and fleet-wide lists.

A fleet token reaches its own fleet only (another fleet's id answers 404 detail 2) and the
vehicles the accounts put in it (others 404 detail 1). The per-vehicle routes are the B2C
ones under ``/fleets/{fid}/vehicles/{vid}``. The fleet-wide lists (``status``, ``alerts``,
``collisions``, ``trips``, ``maintenances``) gather every vehicle of the fleet whose services
and privacy setting allow the data and leave the others out. ``profile`` (``fleet`` or
``endUser``) is accepted: both apply the driver's privacy setting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from gateway.accounts import Accounts
from gateway.api import b2c, models
from gateway.api.b2c import (
    API_PREFIX,
    Access,
    AlarmTypesQ,
    HalResponse,
    IndexRangeQ,
    ItemId,
    PageSizeHighQ,
    PageSizeQ,
    TelemetryExtensionQ,
    TelemetryTypesQ,
    TimestampsQ,
    ToleranceQ,
    TripDistanceQ,
    TripDurationQ,
    TripStatesQ,
    VinPrefixQ,
    base_url,
    both_docs,
    hal,
    make_access,
    paged,
    paging,
    time_of,
)
from gateway.api.errors import ApiError
from gateway.api.hal import DEFAULT_PAGE_SIZE, link
from gateway.api.security import principal, require_fleet, require_scopes
from gateway.auth import Principal
from gateway.store import Store

__all__ = ["router"]

router = APIRouter(default_response_class=HalResponse, tags=["Fleet"])
FleetP = Annotated[Principal, Depends(require_fleet)]
FleetId = Annotated[str, Path(description="The fleet's id", max_length=64)]
VehicleId = Annotated[str, Path(description="The vehicle's id", max_length=64)]
ProfileQ = Annotated[
    Literal["fleet", "endUser"] | None,
    Query(description="Data profile; both apply the driver's privacy setting"),
]


def _scoped(*scopes: str) -> list[Any]:
    return [Depends(require_scopes(*scopes))]


def fleet_href(request: Request, fid: str) -> str:
    """A fleet's link."""
    return f"{base_url(request)}{API_PREFIX}/fleets/{fid}"


def fleet_vehicle(request: Request, who: Principal, vid: str) -> Access:
    """The fleet's vehicle with this id (404 detail 1 otherwise)."""
    accounts: Accounts = request.app.state.accounts
    vehicle = accounts.vehicle_by_id(vid)
    members = accounts.vehicles_of_fleet(who.subject)
    if vehicle is None or vehicle not in members:
        raise ApiError(404, "no such vehicle", detail=1)
    fleet = fleet_href(request, who.subject)
    return make_access(request, who, vehicle, f"{fleet}/vehicles/{vehicle.id}", ("fleet", fleet))


def fleet_accesses(request: Request, who: Principal) -> list[Access]:
    """Every vehicle of the caller's fleet."""
    accounts: Accounts = request.app.state.accounts
    fleet = fleet_href(request, who.subject)
    return [
        make_access(request, who, v, f"{fleet}/vehicles/{v.id}", ("fleet", fleet))
        for v in accounts.vehicles_of_fleet(who.subject)
    ]


def gather(
    request: Request, who: Principal, view: Callable[[Access], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """``view`` of every vehicle of the fleet that allows it."""
    out: list[dict[str, Any]] = []
    for access in fleet_accesses(request, who):
        try:
            out.extend(view(access))
        except ApiError as refusal:
            if refusal.status not in (403, 404):
                raise
    return out


def _one(view: Callable[[Access], dict[str, Any]]) -> Callable[[Access], list[dict[str, Any]]]:
    return lambda access: [view(access)]


# -- the fleet --------------------------------------------------------------------------------


def _fleet_body(request: Request, fid: str) -> dict[str, Any]:
    accounts: Accounts = request.app.state.accounts
    fleet = accounts.fleet(fid)
    if fleet is None:
        raise ApiError(404, "no such fleet", detail=2)
    href = fleet_href(request, fid)
    names = ("vehicles", "status", "maintenances", "alerts", "trips", "collisions", "monitors")
    links = {"self": link(href), **{n: link(f"{href}/{n}") for n in names}}
    links["callbacks"] = link(f"{href}/remote/callbacks")
    return {"_links": links, "id": fleet.id, "name": fleet.label}


async def _fleet_only(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if who.kind != "fleet":
        raise ApiError(403, "this resource is for fleet tokens", detail=4)
    return who


@router.get(
    "/fleets",
    summary="The partner's fleets",
    response_model=models.Fleets,
    operation_id="getFleets",
)
def get_fleets(
    request: Request,
    who: Annotated[Principal, Depends(_fleet_only)],
    *,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """The fleet the token speaks for."""
    p = paging(request, index_range, page_size, None)
    return hal(paged(request, "fleets", [_fleet_body(request, who.subject)], p))


@router.get(
    "/fleets/{fid}", summary="One fleet", response_model=models.Fleet, operation_id="getFleet"
)
def get_fleet(request: Request, who: FleetP, fid: FleetId) -> HalResponse:
    """The fleet and its links."""
    return hal(_fleet_body(request, fid))


@router.get(
    "/fleets/{fid}/vehicles",
    summary="The fleet's vehicles",
    response_model=models.Vehicles,
    operation_id="getFleetVehicles",
)
def get_fleet_vehicles(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
    vin_prefix: VinPrefixQ = None,
) -> HalResponse:
    """Vehicles of the fleet."""
    p = paging(request, index_range, page_size, None)
    store: Store = request.app.state.store
    items = [
        b2c.vehicle_body(a.href, a.vehicle, store, a.owner_link)
        for a in fleet_accesses(request, who)
        if vin_prefix is None or a.vin.startswith(vin_prefix)
    ]
    return hal(paged(request, "vehicles", items, p))


@router.get(
    "/fleets/{fid}/vehicles/{vid}",
    summary="One vehicle of the fleet",
    response_model=models.Vehicle,
    operation_id="getFleetVehicleById",
)
def get_fleet_vehicle(request: Request, who: FleetP, fid: FleetId, vid: VehicleId) -> HalResponse:
    """A vehicle of the fleet."""
    a = fleet_vehicle(request, who, vid)
    return hal(b2c.vehicle_body(a.href, a.vehicle, a.store, a.owner_link))


# -- fleet-wide lists -------------------------------------------------------------------------


@router.get(
    "/fleets/{fid}/status",
    summary="The latest status of every vehicle",
    response_model=models.StatusList,
    operation_id="getFleetStatus",
    dependencies=_scoped("data:telemetry"),
)
def get_fleet_status(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    profile: ProfileQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Vehicles that sent nothing yet or whose services lack telemetry are left out."""
    p = paging(request, index_range, page_size, None)
    items = gather(request, who, _one(b2c.status_view))
    return hal(paged(request, "status", items, p, fleet=fleet_href(request, fid)))


@router.get(
    "/fleets/{fid}/maintenances",
    summary="The next service of every vehicle",
    response_model=models.MaintenanceList,
    operation_id="getFleetMaintenances",
    dependencies=_scoped("data:telemetry"),
)
def get_fleet_maintenances(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    profile: ProfileQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Vehicles without maintenance data are left out."""
    p = paging(request, index_range, page_size, None)
    items = gather(request, who, _one(b2c.maintenance_view))
    return hal(paged(request, "maintenances", items, p, fleet=fleet_href(request, fid)))


@router.get(
    "/fleets/{fid}/alerts",
    summary="The alerts of every vehicle",
    response_model=models.Alerts,
    operation_id="getFleetAlerts",
    dependencies=_scoped("data:alert"),
)
def get_fleet_alerts(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    profile: ProfileQ = None,
    timestamps: TimestampsQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Alerts of the fleet's vehicles, oldest first."""
    p = paging(request, index_range, page_size, timestamps)
    items = gather(request, who, lambda a: b2c.alert_items(a, p.timestamps))
    items.sort(key=lambda x: (time_of(x, "startedAt") or 0, x["id"]))
    return hal(paged(request, "alerts", items, p, fleet=fleet_href(request, fid)))


@router.get(
    "/fleets/{fid}/alerts/{aid}",
    summary="One alert of the fleet",
    response_model=models.Alert,
    operation_id="getFleetAlertById",
    dependencies=_scoped("data:alert"),
)
def get_fleet_alert(
    request: Request, who: FleetP, fid: FleetId, aid: ItemId, profile: ProfileQ = None
) -> HalResponse:
    """An alert of any vehicle of the fleet, by id."""
    return hal(b2c.find(gather(request, who, b2c.alert_items), aid, "alert"))


@router.get(
    "/fleets/{fid}/collisions",
    summary="The collisions of every vehicle",
    response_model=models.Collisions,
    operation_id="getFleetCollisions",
    dependencies=_scoped("data:collision"),
)
def get_fleet_collisions(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    profile: ProfileQ = None,
    timestamps: TimestampsQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Collisions of the fleet's vehicles, oldest first."""
    p = paging(request, index_range, page_size, timestamps)
    items = gather(request, who, lambda a: b2c.collision_items(a, p.timestamps))
    items.sort(key=lambda x: (time_of(x, "createdAt") or 0, x["id"]))
    return hal(paged(request, "Collisions", items, p, fleet=fleet_href(request, fid)))


@router.get(
    "/fleets/{fid}/collisions/{cid}",
    summary="One collision of the fleet",
    response_model=models.Collision,
    operation_id="getFleetCollisionById",
    dependencies=_scoped("data:collision"),
)
def get_fleet_collision(
    request: Request, who: FleetP, fid: FleetId, cid: ItemId, profile: ProfileQ = None
) -> HalResponse:
    """A collision of any vehicle of the fleet, by id."""
    return hal(b2c.find(gather(request, who, b2c.collision_items), cid, "collision"))


@router.get(
    "/fleets/{fid}/trips",
    summary="The trips of every vehicle",
    response_model=models.Trips,
    operation_id="getFleetTrips",
    dependencies=_scoped("data:trip"),
)
def get_fleet_trips(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    profile: ProfileQ = None,
    timestamps: TimestampsQ = None,
    distance: TripDistanceQ = None,
    duration: TripDurationQ = None,
    states: TripStatesQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Trips of the fleet's vehicles, oldest first."""
    p = paging(request, index_range, page_size, timestamps)
    b2c._parse_float_range("distance", distance)
    b2c._parse_float_range("duration", duration)
    items = gather(
        request, who, lambda a: b2c.trip_items(a, p.timestamps, distance, duration, states)
    )
    items.sort(key=lambda x: (time_of(x, "startedAt") or 0, x["id"]))
    return hal(paged(request, "trips", items, p, fleet=fleet_href(request, fid)))


# -- one vehicle ------------------------------------------------------------------------------

_V = "/fleets/{fid}/vehicles/{vid}"


@router.get(
    f"{_V}/status",
    summary="A vehicle's latest status",
    response_model=models.Status,
    operation_id="getFleetVehicleStatus",
    dependencies=_scoped("data:telemetry"),
)
def get_status(
    request: Request, who: FleetP, fid: FleetId, vid: VehicleId, profile: ProfileQ = None
) -> HalResponse:
    """As for a user's vehicle."""
    return hal(b2c.status_view(fleet_vehicle(request, who, vid)))


@router.get(
    f"{_V}/lastPosition",
    summary="A vehicle's last position",
    response_class=b2c.GeoJSONResponse,
    response_model=models.Position,
    responses=both_docs(models.Position, None, "The last position (GeoJSON Feature)"),
    operation_id="getFleetVehicleLastPosition",
    dependencies=_scoped("data:position"),
)
def get_last_position(
    request: Request, who: FleetP, fid: FleetId, vid: VehicleId, profile: ProfileQ = None
) -> JSONResponse:
    """GeoJSON by default; HAL+JSON when ``Accept`` asks for it."""
    body = b2c.last_position_view(fleet_vehicle(request, who, vid))
    return b2c.position_answer(request, body)


@router.get(
    f"{_V}/telemetry",
    summary="A vehicle's telemetry messages",
    response_model=models.Telemetries,
    operation_id="getFleetVehicleTelemetry",
    dependencies=_scoped("data:telemetry"),
)
def get_telemetry(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    profile: ProfileQ = None,
    timestamps: TimestampsQ = None,
    types: TelemetryTypesQ = None,
    extension: TelemetryExtensionQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeHighQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """One message per moment a wanted value was sampled, oldest first."""
    p = paging(request, index_range, page_size, timestamps)
    a = fleet_vehicle(request, who, vid)
    items = b2c.telemetry_items(a, p.timestamps, types, extension or ())
    return hal(paged(request, "telemetries", items, p, vehicle=a.href))


@router.get(
    f"{_V}/maintenance",
    summary="A vehicle's next service",
    response_model=models.Maintenance,
    operation_id="getFleetVehicleMaintenance",
    dependencies=_scoped("data:telemetry"),
)
def get_maintenance(
    request: Request, who: FleetP, fid: FleetId, vid: VehicleId, profile: ProfileQ = None
) -> HalResponse:
    """Needs a maintenance service on the vehicle."""
    return hal(b2c.maintenance_view(fleet_vehicle(request, who, vid)))


@router.get(
    f"{_V}/alerts",
    summary="A vehicle's alerts",
    response_model=models.Alerts,
    operation_id="getFleetVehicleAlerts",
    dependencies=_scoped("data:alert"),
)
def get_alerts(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    profile: ProfileQ = None,
    timestamps: TimestampsQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Alerts, oldest first."""
    p = paging(request, index_range, page_size, timestamps)
    a = fleet_vehicle(request, who, vid)
    return hal(paged(request, "alerts", b2c.alert_items(a, p.timestamps), p, vehicle=a.href))


@router.get(
    f"{_V}/alerts/{{aid}}",
    summary="One alert of a vehicle",
    response_model=models.Alert,
    operation_id="getFleetVehicleAlertById",
    dependencies=_scoped("data:alert"),
)
def get_alert(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    aid: ItemId,
    profile: ProfileQ = None,
) -> HalResponse:
    """An alert by id."""
    return hal(b2c.alert_view(fleet_vehicle(request, who, vid), aid))


@router.get(
    f"{_V}/collisions",
    summary="A vehicle's collisions",
    response_model=models.Collisions,
    operation_id="getFleetVehicleCollisions",
    dependencies=_scoped("data:collision"),
)
def get_collisions(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    profile: ProfileQ = None,
    timestamps: TimestampsQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Collisions, oldest first."""
    p = paging(request, index_range, page_size, timestamps)
    a = fleet_vehicle(request, who, vid)
    items = b2c.collision_items(a, p.timestamps)
    return hal(paged(request, "Collisions", items, p, vehicle=a.href))


@router.get(
    f"{_V}/collisions/{{cid}}",
    summary="One collision of a vehicle",
    response_model=models.Collision,
    operation_id="getFleetVehicleCollisionById",
    dependencies=_scoped("data:collision"),
)
def get_collision(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    cid: ItemId,
    profile: ProfileQ = None,
) -> HalResponse:
    """A collision by id."""
    return hal(b2c.collision_view(fleet_vehicle(request, who, vid), cid))


@router.get(
    f"{_V}/alarms",
    summary="A vehicle's anti-theft alarm history",
    response_model=models.Alarms,
    operation_id="getFleetVehicleAlarms",
    dependencies=_scoped("data:alert"),
)
def get_alarms(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    types: AlarmTypesQ = None,
    timestamps: TimestampsQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Arming, disarming and triggers, oldest first."""
    p = paging(request, index_range, page_size, timestamps)
    a = fleet_vehicle(request, who, vid)
    return hal(paged(request, "alarms", b2c.alarm_items(a, p.timestamps, types), p, vehicle=a.href))


@router.get(
    f"{_V}/alarms/{{aid}}",
    summary="One alarm event of a vehicle",
    response_model=models.Alarm,
    operation_id="getFleetVehicleAlarmById",
    dependencies=_scoped("data:alert"),
)
def get_alarm(
    request: Request, who: FleetP, fid: FleetId, vid: VehicleId, aid: ItemId
) -> HalResponse:
    """An alarm event by id."""
    return hal(b2c.alarm_view(fleet_vehicle(request, who, vid), aid))


@router.get(
    f"{_V}/trips",
    summary="A vehicle's trips",
    response_model=models.Trips,
    operation_id="getFleetVehicleTrips",
    dependencies=_scoped("data:trip"),
)
def get_trips(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    profile: ProfileQ = None,
    timestamps: TimestampsQ = None,
    distance: TripDistanceQ = None,
    duration: TripDurationQ = None,
    states: TripStatesQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Trips, oldest first."""
    p = paging(request, index_range, page_size, timestamps)
    a = fleet_vehicle(request, who, vid)
    items = b2c.trip_items(a, p.timestamps, distance, duration, states)
    return hal(paged(request, "trips", items, p, vehicle=a.href))


@router.get(
    f"{_V}/trips/{{tid}}",
    summary="One trip of a vehicle",
    response_model=models.Trip,
    operation_id="getFleetVehicleTripById",
    dependencies=_scoped("data:trip"),
)
def get_trip(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    tid: ItemId,
    profile: ProfileQ = None,
) -> HalResponse:
    """A trip by id."""
    return hal(b2c.trip_view(fleet_vehicle(request, who, vid), tid))


@router.get(
    f"{_V}/trips/{{tid}}/wayPoints",
    summary="The positions of a trip",
    response_model=models.WayPoints,
    responses=both_docs(models.WayPoints, models.PositionCollection, "The trip's path"),
    operation_id="getFleetVehicleTripWayPoints",
    dependencies=_scoped("data:trip", "data:position"),
)
def get_trip_waypoints(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    tid: ItemId,
    profile: ProfileQ = None,
    timestamps: TimestampsQ = None,
    tolerance: ToleranceQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeHighQ = DEFAULT_PAGE_SIZE,
) -> JSONResponse:
    """HAL+JSON by default; a GeoJSON FeatureCollection when ``Accept`` asks for it."""
    p = paging(request, index_range, page_size, timestamps)
    a = fleet_vehicle(request, who, vid)
    items = b2c.trip_waypoint_items(a, tid, p.timestamps, tolerance)
    return b2c.waypoints_answer(request, items, p)


@router.get(
    f"{_V}/trips/{{tid}}/telemetry",
    summary="The telemetry of a trip",
    response_model=models.Telemetries,
    operation_id="getFleetVehicleTripTelemetry",
    dependencies=_scoped("data:trip", "data:telemetry"),
)
def get_trip_telemetry(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    tid: ItemId,
    profile: ProfileQ = None,
    timestamps: TimestampsQ = None,
    types: TelemetryTypesQ = None,
    extension: TelemetryExtensionQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeHighQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Telemetry messages sampled during the trip."""
    p = paging(request, index_range, page_size, timestamps)
    a = fleet_vehicle(request, who, vid)
    items = b2c.trip_telemetry_items(a, tid, p.timestamps, types, extension or ())
    return hal(paged(request, "telemetries", items, p, trip=b2c.trip_href(a, tid)))


@router.get(
    f"{_V}/trips/{{tid}}/alerts",
    summary="The alerts of a trip",
    response_model=models.Alerts,
    operation_id="getFleetVehicleTripAlerts",
    dependencies=_scoped("data:trip", "data:alert"),
)
def get_trip_alerts(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    tid: ItemId,
    profile: ProfileQ = None,
    timestamps: TimestampsQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Alerts active at some time during the trip."""
    p = paging(request, index_range, page_size, timestamps)
    a = fleet_vehicle(request, who, vid)
    items = b2c.trip_alert_items(a, tid, p.timestamps)
    return hal(paged(request, "alerts", items, p, trip=b2c.trip_href(a, tid)))


@router.get(
    f"{_V}/trips/{{tid}}/alerts/{{aid}}",
    summary="One alert of a trip",
    response_model=models.Alert,
    operation_id="getFleetVehicleTripAlertById",
    dependencies=_scoped("data:trip", "data:alert"),
)
def get_trip_alert(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    tid: ItemId,
    aid: ItemId,
    profile: ProfileQ = None,
) -> HalResponse:
    """An alert of the trip by id."""
    a = fleet_vehicle(request, who, vid)
    return hal(b2c.find(b2c.trip_alert_items(a, tid), aid, "alert"))


@router.get(
    f"{_V}/trips/{{tid}}/collisions",
    summary="The collisions of a trip",
    response_model=models.Collisions,
    operation_id="getFleetVehicleTripCollisions",
    dependencies=_scoped("data:trip", "data:collision"),
)
def get_trip_collisions(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    tid: ItemId,
    timestamps: TimestampsQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Collisions during the trip."""
    p = paging(request, index_range, page_size, timestamps)
    a = fleet_vehicle(request, who, vid)
    items = b2c.trip_collision_items(a, tid, p.timestamps)
    return hal(paged(request, "Collisions", items, p, trip=b2c.trip_href(a, tid)))


@router.get(
    f"{_V}/trips/{{tid}}/collisions/{{cid}}",
    summary="One collision of a trip",
    response_model=models.Collision,
    operation_id="getFleetVehicleTripCollisionById",
    dependencies=_scoped("data:trip", "data:collision"),
)
def get_trip_collision(
    request: Request, who: FleetP, *, fid: FleetId, vid: VehicleId, tid: ItemId, cid: ItemId
) -> HalResponse:
    """A collision of the trip by id."""
    a = fleet_vehicle(request, who, vid)
    return hal(b2c.find(b2c.trip_collision_items(a, tid), cid, "collision"))
