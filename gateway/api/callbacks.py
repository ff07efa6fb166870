"""Callbacks and monitors: ``/user/callbacks``, a vehicle's monitors, a fleet's monitors and
callbacks.

A callback (record kind ``callback``) says where notifications go: a webhook, signed with a
secret the creation answer shows once. A monitor (record kind ``monitor``, one vehicle)
watches a vehicle's data and notifies through a callback; :class:`gateway.monitors.
MonitorEngine` evaluates them. A fleet monitor (record kind ``fleet_monitor``) carries its own
webhook and watches every vehicle of the fleet: it keeps one callback and one ``monitor``
record per vehicle whose services cover what it reads.

What a caller sees is what it created with the same client: other users', fleets' and
clients' callbacks and monitors answer 404 detail 2. A vehicle has at most
:data:`~gateway.monitors.MAX_MONITORS_PER_VEHICLE` monitors per user and client; one more
is refused with 400 detail 1. Creating and changing answer 202, deleting 204.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response, Security
from pydantic import BaseModel

from can_dbc.catalog import Scope
from gateway.accounts import Accounts
from gateway.api import models
from gateway.api.b2c import (
    API_PREFIX,
    HalResponse,
    IndexRangeQ,
    PageSizeQ,
    VehicleId,
    base_url,
    hal,
    now_ms,
    paged,
    paging,
    user_vehicle,
)
from gateway.api.errors import ApiError
from gateway.api.hal import DEFAULT_PAGE_SIZE, link
from gateway.api.security import principal, require_fleet, require_user
from gateway.auth import REMOTE_SCOPES, Principal, catalog_scopes
from gateway.monitors import (
    MAX_MONITORS_PER_VEHICLE,
    MonitorError,
    parse_callback,
    parse_monitor,
    required_scopes,
)
from gateway.store import Record, Store, rfc3339
from gateway.webhooks import new_secret

__all__ = ["MAX_FLEET_MONITORS", "fleet_router", "user_router"]

MAX_FLEET_MONITORS = 20
"""Fleet monitors a fleet may have per client."""

DATA_SCOPES = ("data:telemetry", "data:position", "data:trip", "data:alert", "data:collision")

CallbackId = Annotated[str, Path(description="The callback's id", pattern=r"^[0-9A-Za-z_-]{1,64}$")]
MonitorId = Annotated[str, Path(description="The monitor's id", pattern=r"^[0-9A-Za-z_-]{1,64}$")]
FleetId = Annotated[str, Path(description="The fleet's id", max_length=64)]
CallbackTypesQ = Annotated[
    list[models.CallbackKind] | None,
    Query(alias="types", max_length=2, description="Keep callbacks serving these"),
]


def _sees_data(who: Principal) -> bool:
    """Whether the token carries a data scope."""
    return any(s in who.scopes for s in DATA_SCOPES)


async def _any_data_scope(
    who: Annotated[Principal, Security(principal, scopes=list(DATA_SCOPES))],
) -> Principal:
    """The principal, whose token must carry at least one data scope (403/1)."""
    if not _sees_data(who):
        raise ApiError(403, "the token has no data scope", detail=1)
    return who


async def _any_callback_scope(
    who: Annotated[Principal, Security(principal, scopes=[*DATA_SCOPES, *REMOTE_SCOPES])],
) -> Principal:
    """The principal, whose token must carry a data or a remote scope (403/1): callbacks
    serve monitors (data) and remote commands alike."""
    if not any(s in who.scopes for s in (*DATA_SCOPES, *REMOTE_SCOPES)):
        raise ApiError(403, "the token has neither a data nor a remote scope", detail=1)
    return who


DataScoped = [Depends(_any_data_scope)]
CallbackScoped = [Depends(_any_callback_scope)]


def _serves_monitors(body: Mapping[str, Any]) -> bool:
    """Whether a callback serves monitors (their events carry the vehicle's data)."""
    return "Monitor" in body.get("type", ())


def _may_make(who: Principal, parsed: dict[str, Any]) -> dict[str, Any]:
    """``parsed``, a callback the token may make: one that serves monitors (``type`` absent
    means both) needs a data scope (403/1)."""
    if _serves_monitors(parsed) and not _sees_data(who):
        message = 'a callback serving monitors needs a data scope (give "type": ["Remote"])'
        raise ApiError(403, message, detail=1)
    return parsed


def _new_id() -> str:
    return secrets.token_hex(16)


def _refuse(exc: MonitorError) -> ApiError:
    return ApiError(400, f"invalid body: {exc}", detail=1)


def _dump(body: BaseModel) -> dict[str, Any]:
    return body.model_dump(mode="json", exclude_none=True, by_alias=True)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _mine(record: Record | None, who: Principal) -> bool:
    return (
        record is not None
        and record.owner == who.owner
        and record.body.get("clientId") == who.client_id
    )


# -- callbacks (users and fleets) -------------------------------------------------------------


def _callback_base(request: Request, who: Principal) -> str:
    base = f"{base_url(request)}{API_PREFIX}"
    if who.kind == "user":
        return f"{base}/user/callbacks"
    return f"{base}/fleets/{who.subject}/remote/callbacks"


def _callback_ref(request: Request, who: Principal, record: Record, **extra: Any) -> dict[str, Any]:
    href = f"{_callback_base(request, who)}/{record.id}"
    links = {"callback": link(href)}
    if who.kind == "fleet":
        links["fleet"] = link(f"{base_url(request)}{API_PREFIX}/fleets/{who.subject}")
    return {
        "_links": links,
        "callbackId": record.id,
        "status": record.body.get("status", "Running"),
        **extra,
    }


def _subscribe(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a callback's ``subscribe`` shows: the subscription, never the secret."""
    shown = {"label", "type", "callback", "remoteTypes", "retryPolicy"}
    return {k: v for k, v in body.items() if k in shown}


def _callback_view(request: Request, who: Principal, record: Record) -> dict[str, Any]:
    href = f"{_callback_base(request, who)}/{record.id}"
    links: dict[str, Any] = {"self": link(href)}
    if who.kind == "fleet":
        links["fleet"] = link(f"{base_url(request)}{API_PREFIX}/fleets/{who.subject}")
    body = record.body
    return {
        "_links": links,
        "id": record.id,
        "label": body.get("label", ""),
        "subscribe": _subscribe(body),
        "status": body.get("status", "Running"),
        "createdAt": rfc3339(record.created_ms),
        "updatedAt": rfc3339(record.updated_ms),
    }


def _parse_fleet_callback(body: models.FleetCallbackSubscribe) -> dict[str, Any]:
    raw = _dump(body)
    try:
        parsed = parse_callback(
            {"label": raw.get("label", ""), "type": ["Remote"], "callback": raw["callback"]}
        )
    except MonitorError as exc:
        raise _refuse(exc) from None
    for key in ("remoteTypes", "retryPolicy"):
        if key in raw:
            parsed[key] = raw[key]
    return parsed


def _parse_user_callback(body: models.CallbackSubscribe) -> dict[str, Any]:
    try:
        return parse_callback(_dump(body))
    except MonitorError as exc:
        raise _refuse(exc) from None


def _callback(request: Request, who: Principal, cbid: str) -> Record:
    record = _store(request).get_record("callback", cbid)
    if record is None or not _visible(record, who):
        raise ApiError(404, "no such callback", detail=2)
    return record


def _visible(record: Record, who: Principal) -> bool:
    """Whether ``who`` sees the callback: its own client's, not a fleet monitor's, and
    without a data scope none that serves monitors (it would redirect their data)."""
    return (
        _mine(record, who)
        and not record.body.get("fleetMonitor")
        and (_sees_data(who) or not _serves_monitors(record.body))
    )


def _create_callback(request: Request, who: Principal, parsed: dict[str, Any]) -> HalResponse:
    now = now_ms(request)
    secret = new_secret()
    body = {**parsed, "status": "Running", "secret": secret, "clientId": who.client_id}
    record = Record("callback", _new_id(), who.owner, None, body, now, now)
    _store(request).put_record(record)
    return hal(_callback_ref(request, who, record, secret=secret), 202)


def _list_callbacks(
    request: Request,
    who: Principal,
    types: list[str] | None,
    index_range: str | None,
    page_size: int,
) -> HalResponse:
    p = paging(request, index_range, page_size, None)
    records = [r for r in _store(request).records("callback", owner=who.owner) if _visible(r, who)]
    if types:
        records = [r for r in records if set(types) & set(r.body.get("type", []))]
    records.sort(key=lambda r: (r.created_ms, r.id))
    items = [_callback_view(request, who, r) for r in records]
    return hal(paged(request, "callbacks", items, p))


def _replace_callback(
    request: Request, who: Principal, cbid: str, parsed: dict[str, Any]
) -> HalResponse:
    old = _callback(request, who, cbid)
    keep: dict[str, Any] = {
        k: old.body[k] for k in ("status", "secret", "clientId") if k in old.body
    }
    record = Record(
        "callback", old.id, old.owner, None, {**parsed, **keep}, old.created_ms, now_ms(request)
    )
    _store(request).put_record(record)
    return hal(_callback_ref(request, who, record), 202)


def _delete_callback(request: Request, who: Principal, cbid: str) -> Response:
    _callback(request, who, cbid)
    store = _store(request)
    for monitor in store.records("monitor", owner=who.owner):
        if monitor.body.get("callbackId") == cbid:
            store.delete_record("monitor", monitor.id)
    store.delete_record("callback", cbid)
    return Response(status_code=204)


def _set_callback_status(request: Request, who: Principal, cbid: str, status: str) -> HalResponse:
    old = _callback(request, who, cbid)
    record = Record(
        "callback",
        old.id,
        old.owner,
        None,
        {**old.body, "status": status},
        old.created_ms,
        now_ms(request),
    )
    _store(request).put_record(record)
    return hal(_callback_ref(request, who, record), 202)


# -- B2C --------------------------------------------------------------------------------------

user_router = APIRouter(default_response_class=HalResponse)
User = Annotated[Principal, Depends(require_user)]

_CREATED: dict[int | str, dict[str, Any]] = {
    202: {"description": "Created", "model": models.CallbackRef}
}
_CHANGED: dict[int | str, dict[str, Any]] = {
    202: {"description": "Changed", "model": models.CallbackRef}
}
_DELETED: dict[int | str, dict[str, Any]] = {204: {"description": "Deleted"}}


@user_router.post(
    "/user/callbacks",
    dependencies=CallbackScoped,
    tags=["Callbacks"],
    summary="Create a callback",
    status_code=202,
    responses=_CREATED,
    operation_id="createUserCallback",
)
def create_user_callback(
    request: Request, who: User, body: Annotated[models.CallbackSubscribe, Body()]
) -> HalResponse:
    """A webhook for monitor events and remote commands; the answer shows its signing
    secret, once."""
    return _create_callback(request, who, _may_make(who, _parse_user_callback(body)))


@user_router.get(
    "/user/callbacks",
    dependencies=CallbackScoped,
    tags=["Callbacks"],
    summary="The user's callbacks",
    response_model=models.Callbacks,
    operation_id="getUserCallbacks",
)
def get_user_callbacks(
    request: Request,
    who: User,
    *,
    types: CallbackTypesQ = None,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Callbacks this user created with this client."""
    return _list_callbacks(request, who, list(types or ()), index_range, page_size)


@user_router.get(
    "/user/callbacks/{cbid}",
    dependencies=CallbackScoped,
    tags=["Callbacks"],
    summary="One callback",
    response_model=models.UserCallback,
    operation_id="getUserCallbackById",
)
def get_user_callback(request: Request, who: User, cbid: CallbackId) -> HalResponse:
    """A callback by id."""
    return hal(_callback_view(request, who, _callback(request, who, cbid)))


@user_router.put(
    "/user/callbacks/{cbid}",
    dependencies=CallbackScoped,
    tags=["Callbacks"],
    summary="Replace a callback's subscription",
    status_code=202,
    responses=_CHANGED,
    operation_id="updateUserCallback",
)
def put_user_callback(
    request: Request,
    who: User,
    *,
    cbid: CallbackId,
    body: Annotated[models.CallbackSubscribe, Body()],
) -> HalResponse:
    """The whole subscription is replaced; status and secret stay."""
    return _replace_callback(request, who, cbid, _may_make(who, _parse_user_callback(body)))


@user_router.delete(
    "/user/callbacks/{cbid}",
    dependencies=CallbackScoped,
    tags=["Callbacks"],
    summary="Delete a callback and its monitors",
    status_code=204,
    responses=_DELETED,
    response_class=Response,
    operation_id="deleteUserCallback",
)
def delete_user_callback(request: Request, who: User, cbid: CallbackId) -> Response:
    """Its monitors go with it."""
    return _delete_callback(request, who, cbid)


@user_router.put(
    "/user/callbacks/{cbid}/status",
    dependencies=CallbackScoped,
    tags=["Callbacks"],
    summary="Pause or resume a callback",
    status_code=202,
    responses=_CHANGED,
    operation_id="setUserCallbackStatus",
)
def put_user_callback_status(
    request: Request,
    who: User,
    *,
    cbid: CallbackId,
    body: Annotated[models.StatusSetter, Body()],
) -> HalResponse:
    """A paused callback sends nothing."""
    return _set_callback_status(request, who, cbid, body.status)


# -- B2C monitors -----------------------------------------------------------------------------


def _check_monitor_scopes(
    who: Principal, services: frozenset[Scope], monitor: Mapping[str, Any]
) -> None:
    needed = required_scopes(monitor)
    token = catalog_scopes(who.scopes)
    missing = sorted(s.value for s in needed - token)
    if missing:
        raise ApiError(403, f"the token does not open {', '.join(missing)} data", detail=1)
    uncovered = sorted(s.value for s in needed - services)
    if uncovered:
        raise ApiError(
            403, f"the vehicle's services do not cover {', '.join(uncovered)} data", detail=3
        )


def _parse_monitor(raw: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return parse_monitor(raw)
    except MonitorError as exc:
        raise _refuse(exc) from None


def _monitor_ref(href: str, record: Record, fleet_href: str | None = None) -> dict[str, Any]:
    links = {"monitor": link(href)}
    if fleet_href is not None:
        links["fleet"] = link(fleet_href)
    return {
        "_links": links,
        "monitorId": record.id,
        "status": record.body.get("status", "Running"),
        "createdAt": rfc3339(record.created_ms),
        "updatedAt": rfc3339(record.updated_ms),
    }


def _monitor_view(href: str, record: Record, monitor: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "_links": {"self": link(href)},
        "monitorId": record.id,
        "monitor": dict(monitor),
        "status": record.body.get("status", "Running"),
        "createdAt": rfc3339(record.created_ms),
        "updatedAt": rfc3339(record.updated_ms),
    }


def _vehicle_callback(
    request: Request, who: Principal, vehicle_id: str, cbid: str
) -> tuple[Any, Record, str]:
    access = user_vehicle(request, who, vehicle_id)
    callback = _callback(request, who, cbid)
    base = f"{access.href}/callbacks/{cbid}/monitors"
    return access, callback, base


def _vehicle_monitors(store: Store, who: Principal, vin: str) -> list[Record]:
    return [
        r
        for r in store.records("monitor", owner=who.owner, vin=vin)
        if r.body.get("clientId") == who.client_id
    ]


def _vehicle_monitor(
    request: Request, who: Principal, vehicle_id: str, cbid: str, mid: str
) -> tuple[Any, Record, str]:
    access, _callback_record, base = _vehicle_callback(request, who, vehicle_id, cbid)
    record = _store(request).get_record("monitor", mid)
    if (
        record is None
        or not _mine(record, who)
        or record.vin != access.vin
        or record.body.get("callbackId") != cbid
    ):
        raise ApiError(404, "no such monitor", detail=2)
    return access, record, f"{base}/{mid}"


_MONITOR_CREATED: dict[int | str, dict[str, Any]] = {
    202: {"description": "Created", "model": models.MonitorRef}
}
_MONITOR_CHANGED: dict[int | str, dict[str, Any]] = {
    202: {"description": "Changed", "model": models.MonitorRef}
}


@user_router.post(
    "/user/vehicles/{id}/callbacks/{cbid}/monitors",
    dependencies=DataScoped,
    tags=["Monitors"],
    summary="Create a monitor",
    status_code=202,
    responses=_MONITOR_CREATED,
    operation_id="createVehicleMonitor",
)
def create_monitor(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    cbid: CallbackId,
    body: Annotated[models.MonitorParameter, Body()],
) -> HalResponse:
    """At most five per vehicle (400 detail 1 beyond); its data must be in scope."""
    access, callback, base = _vehicle_callback(request, who, id, cbid)
    if "Monitor" not in callback.body.get("type", ["Monitor"]):
        raise ApiError(400, "the callback does not serve monitors (type)", detail=1)
    monitor = _parse_monitor(_dump(body))
    _check_monitor_scopes(who, access.services, monitor)
    store = _store(request)
    if len(_vehicle_monitors(store, who, access.vin)) >= MAX_MONITORS_PER_VEHICLE:
        raise ApiError(400, f"a vehicle has at most {MAX_MONITORS_PER_VEHICLE} monitors", detail=1)
    now = now_ms(request)
    record_body = {
        "callbackId": cbid,
        "monitor": monitor,
        "status": "Running",
        "clientId": who.client_id,
    }
    record = Record("monitor", _new_id(), who.owner, access.vin, record_body, now, now)
    store.put_record(record)
    return hal(_monitor_ref(f"{base}/{record.id}", record), 202)


@user_router.get(
    "/user/vehicles/{id}/callbacks/{cbid}/monitors",
    dependencies=DataScoped,
    tags=["Monitors"],
    summary="The vehicle's monitors on a callback",
    response_model=models.Monitors,
    operation_id="getVehicleMonitors",
)
def get_monitors(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    cbid: CallbackId,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Monitors this user created with this client, on this vehicle and callback."""
    p = paging(request, index_range, page_size, None)
    access, _callback_record, base = _vehicle_callback(request, who, id, cbid)
    records = [
        r
        for r in _vehicle_monitors(_store(request), who, access.vin)
        if r.body.get("callbackId") == cbid
    ]
    records.sort(key=lambda r: (r.created_ms, r.id))
    items = [_monitor_view(f"{base}/{r.id}", r, r.body["monitor"]) for r in records]
    return hal(paged(request, "monitors", items, p))


@user_router.get(
    "/user/vehicles/{id}/callbacks/{cbid}/monitors/{mid}",
    dependencies=DataScoped,
    tags=["Monitors"],
    summary="One monitor",
    response_model=models.Monitor,
    operation_id="getVehicleMonitorById",
)
def get_monitor(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    cbid: CallbackId,
    mid: MonitorId,
) -> HalResponse:
    """A monitor by id."""
    _access, record, href = _vehicle_monitor(request, who, id, cbid, mid)
    return hal(_monitor_view(href, record, record.body["monitor"]))


@user_router.put(
    "/user/vehicles/{id}/callbacks/{cbid}/monitors/{mid}",
    dependencies=DataScoped,
    tags=["Monitors"],
    summary="Replace a monitor",
    status_code=202,
    responses=_MONITOR_CHANGED,
    operation_id="updateVehicleMonitor",
)
def put_monitor(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    cbid: CallbackId,
    mid: MonitorId,
    body: Annotated[models.MonitorParameter, Body()],
) -> HalResponse:
    """The whole monitor is replaced; its status stays."""
    access, old, href = _vehicle_monitor(request, who, id, cbid, mid)
    monitor = _parse_monitor(_dump(body))
    _check_monitor_scopes(who, access.services, monitor)
    record = Record(
        "monitor",
        old.id,
        old.owner,
        old.vin,
        {**old.body, "monitor": monitor},
        old.created_ms,
        now_ms(request),
    )
    _store(request).put_record(record)
    return hal(_monitor_ref(href, record), 202)


@user_router.delete(
    "/user/vehicles/{id}/callbacks/{cbid}/monitors/{mid}",
    dependencies=DataScoped,
    tags=["Monitors"],
    summary="Delete a monitor",
    status_code=204,
    responses=_DELETED,
    response_class=Response,
    operation_id="deleteVehicleMonitor",
)
def delete_monitor(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    cbid: CallbackId,
    mid: MonitorId,
) -> Response:
    """The monitor stops and is forgotten."""
    _vehicle_monitor(request, who, id, cbid, mid)
    _store(request).delete_record("monitor", mid)
    return Response(status_code=204)


@user_router.put(
    "/user/vehicles/{id}/callbacks/{cbid}/monitors/{mid}/status",
    dependencies=DataScoped,
    tags=["Monitors"],
    summary="Pause or resume a monitor",
    status_code=202,
    responses=_MONITOR_CHANGED,
    operation_id="setVehicleMonitorStatus",
)
def put_monitor_status(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    cbid: CallbackId,
    mid: MonitorId,
    body: Annotated[models.StatusSetter, Body()],
) -> HalResponse:
    """A paused monitor notifies nothing."""
    _access, old, href = _vehicle_monitor(request, who, id, cbid, mid)
    record = Record(
        "monitor",
        old.id,
        old.owner,
        old.vin,
        {**old.body, "status": body.status},
        old.created_ms,
        now_ms(request),
    )
    _store(request).put_record(record)
    return hal(_monitor_ref(href, record), 202)


# -- B2B --------------------------------------------------------------------------------------

fleet_router = APIRouter(default_response_class=HalResponse)
FleetP = Annotated[Principal, Depends(require_fleet)]


@fleet_router.post(
    "/fleets/{fid}/remote/callbacks",
    dependencies=CallbackScoped,
    tags=["Fleet"],
    summary="Create a fleet callback",
    status_code=202,
    responses=_CREATED,
    operation_id="createFleetCallback",
)
def create_fleet_callback(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    body: Annotated[models.FleetCallbackSubscribe, Body()],
) -> HalResponse:
    """A webhook of the fleet; the answer shows its signing secret, once."""
    return _create_callback(request, who, _parse_fleet_callback(body))


@fleet_router.get(
    "/fleets/{fid}/remote/callbacks",
    dependencies=CallbackScoped,
    tags=["Fleet"],
    summary="The fleet's callbacks",
    response_model=models.FleetCallbacks,
    operation_id="getFleetCallbacks",
)
def get_fleet_callbacks(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Callbacks this fleet created with this client."""
    return _list_callbacks(request, who, None, index_range, page_size)


@fleet_router.get(
    "/fleets/{fid}/remote/callbacks/{cbid}",
    dependencies=CallbackScoped,
    tags=["Fleet"],
    summary="One fleet callback",
    response_model=models.FleetCallback,
    operation_id="getFleetCallbackById",
)
def get_fleet_callback(
    request: Request, who: FleetP, fid: FleetId, cbid: CallbackId
) -> HalResponse:
    """A callback by id."""
    return hal(_callback_view(request, who, _callback(request, who, cbid)))


@fleet_router.put(
    "/fleets/{fid}/remote/callbacks/{cbid}",
    dependencies=CallbackScoped,
    tags=["Fleet"],
    summary="Replace a fleet callback's subscription",
    status_code=202,
    responses=_CHANGED,
    operation_id="updateFleetCallback",
)
def put_fleet_callback(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    cbid: CallbackId,
    body: Annotated[models.FleetCallbackSubscribe, Body()],
) -> HalResponse:
    """The whole subscription is replaced; status and secret stay."""
    return _replace_callback(request, who, cbid, _parse_fleet_callback(body))


@fleet_router.delete(
    "/fleets/{fid}/remote/callbacks/{cbid}",
    dependencies=CallbackScoped,
    tags=["Fleet"],
    summary="Delete a fleet callback",
    status_code=204,
    responses=_DELETED,
    response_class=Response,
    operation_id="deleteFleetCallback",
)
def delete_fleet_callback(
    request: Request, who: FleetP, fid: FleetId, cbid: CallbackId
) -> Response:
    """The callback is forgotten."""
    return _delete_callback(request, who, cbid)


@fleet_router.put(
    "/fleets/{fid}/remote/callbacks/{cbid}/status",
    dependencies=CallbackScoped,
    tags=["Fleet"],
    summary="Pause or resume a fleet callback",
    status_code=202,
    responses=_CHANGED,
    operation_id="setFleetCallbackStatus",
)
def put_fleet_callback_status(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    cbid: CallbackId,
    body: Annotated[models.StatusSetter, Body()],
) -> HalResponse:
    """A paused callback sends nothing."""
    return _set_callback_status(request, who, cbid, body.status)


# -- B2B monitors -------------------------------------------------------------------------------


def _fleet_href(request: Request, fid: str) -> str:
    return f"{base_url(request)}{API_PREFIX}/fleets/{fid}"


def _fleet_monitor(request: Request, who: Principal, mid: str) -> Record:
    record = _store(request).get_record("fleet_monitor", mid)
    if record is None or not _mine(record, who):
        raise ApiError(404, "no such monitor", detail=2)
    return record


def _fleet_monitor_view(request: Request, who: Principal, record: Record) -> dict[str, Any]:
    href = f"{_fleet_href(request, who.subject)}/monitors/{record.id}"
    view = _monitor_view(href, record, record.body["monitor"])
    view["_links"]["fleet"] = link(_fleet_href(request, who.subject))
    return view


def _expand(
    request: Request,
    who: Principal,
    mid: str,
    raw: dict[str, Any],
    *,
    status: str,
    created_ms: int,
) -> Record:
    """(Re)write a fleet monitor: its callback, one monitor per covered vehicle, itself."""
    subscribe = raw.get("subscribeParam", {})
    try:
        callback = parse_callback(
            {"label": raw.get("label", ""), "type": ["Monitor"], "callback": subscribe["callback"]}
        )
    except MonitorError as exc:
        raise ApiError(400, f"invalid body: subscribeParam.{exc}", detail=1) from None
    per_vehicle = {k: v for k, v in raw.items() if k != "subscribeParam"}
    if "refreshEvent" in subscribe:
        per_vehicle["subscribeParam"] = {"refreshEvent": subscribe["refreshEvent"]}
    monitor = _parse_monitor(per_vehicle)
    needed = required_scopes(monitor)
    missing = sorted(s.value for s in needed - catalog_scopes(who.scopes))
    if missing:
        raise ApiError(403, f"the token does not open {', '.join(missing)} data", detail=1)
    store = _store(request)
    now = now_ms(request)
    old = store.get_record("fleet_monitor", mid)
    _drop_members(store, old)
    secret = old.body.get("secret") if old is not None else None
    callback_id = f"{mid}-cb"
    store.put_record(
        Record(
            "callback",
            callback_id,
            who.owner,
            None,
            {
                **callback,
                "status": "Running",
                "secret": secret or new_secret(),
                "clientId": who.client_id,
                "fleetMonitor": mid,
            },
            created_ms,
            now,
        )
    )
    accounts: Accounts = request.app.state.accounts
    members = []
    from can_dbc.catalog import default_catalog  # noqa: PLC0415

    catalog = default_catalog()
    for n, vehicle in enumerate(accounts.vehicles_of_fleet(who.subject)):
        if not needed <= catalog.scopes_of(vehicle.services):
            continue
        member_id = f"{mid}-{n}"
        members.append(member_id)
        store.put_record(
            Record(
                "monitor",
                member_id,
                who.owner,
                vehicle.vin,
                {
                    "callbackId": callback_id,
                    "monitor": monitor,
                    "status": status,
                    "clientId": who.client_id,
                    "fleetMonitor": mid,
                },
                created_ms,
                now,
            )
        )
    shown = {**monitor, "subscribeParam": dict(subscribe)}
    record = Record(
        "fleet_monitor",
        mid,
        who.owner,
        None,
        {
            "monitor": shown,
            "status": status,
            "clientId": who.client_id,
            "callbackId": callback_id,
            "members": members,
        },
        created_ms,
        now,
    )
    store.put_record(record)
    return record


def _drop_members(store: Store, record: Record | None) -> None:
    if record is None:
        return
    for member in record.body.get("members", []):
        store.delete_record("monitor", str(member))


@fleet_router.post(
    "/fleets/{fid}/monitors",
    dependencies=DataScoped,
    tags=["Fleet"],
    summary="Create a fleet monitor",
    status_code=202,
    responses=_MONITOR_CREATED,
    operation_id="createFleetMonitor",
)
def create_fleet_monitor(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    body: Annotated[models.FleetMonitorParameter, Body()],
) -> HalResponse:
    """Watches every vehicle of the fleet whose services cover what it reads."""
    existing = [
        r for r in _store(request).records("fleet_monitor", owner=who.owner) if _mine(r, who)
    ]
    if len(existing) >= MAX_FLEET_MONITORS:
        raise ApiError(400, f"a fleet has at most {MAX_FLEET_MONITORS} monitors", detail=1)
    record = _expand(
        request, who, _new_id(), _dump(body), status="Running", created_ms=now_ms(request)
    )
    href = f"{_fleet_href(request, fid)}/monitors/{record.id}"
    return hal(_monitor_ref(href, record, _fleet_href(request, fid)), 202)


@fleet_router.get(
    "/fleets/{fid}/monitors",
    dependencies=DataScoped,
    tags=["Fleet"],
    summary="The fleet's monitors",
    response_model=models.Monitors,
    operation_id="getFleetMonitors",
)
def get_fleet_monitors(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Fleet monitors this fleet created with this client."""
    p = paging(request, index_range, page_size, None)
    records = [
        r for r in _store(request).records("fleet_monitor", owner=who.owner) if _mine(r, who)
    ]
    records.sort(key=lambda r: (r.created_ms, r.id))
    items = [_fleet_monitor_view(request, who, r) for r in records]
    return hal(paged(request, "monitors", items, p))


@fleet_router.get(
    "/fleets/{fid}/monitors/{mid}",
    dependencies=DataScoped,
    tags=["Fleet"],
    summary="One fleet monitor",
    response_model=models.Monitor,
    operation_id="getFleetMonitorById",
)
def get_fleet_monitor(request: Request, who: FleetP, fid: FleetId, mid: MonitorId) -> HalResponse:
    """A fleet monitor by id."""
    return hal(_fleet_monitor_view(request, who, _fleet_monitor(request, who, mid)))


@fleet_router.put(
    "/fleets/{fid}/monitors/{mid}",
    dependencies=DataScoped,
    tags=["Fleet"],
    summary="Replace a fleet monitor",
    status_code=202,
    responses=_MONITOR_CHANGED,
    operation_id="updateFleetMonitor",
)
def put_fleet_monitor(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    mid: MonitorId,
    body: Annotated[models.FleetMonitorParameter, Body()],
) -> HalResponse:
    """The whole monitor is replaced; its status stays."""
    old = _fleet_monitor(request, who, mid)
    record = _expand(
        request, who, mid, _dump(body), status=old.body["status"], created_ms=old.created_ms
    )
    href = f"{_fleet_href(request, fid)}/monitors/{mid}"
    return hal(_monitor_ref(href, record, _fleet_href(request, fid)), 202)


@fleet_router.delete(
    "/fleets/{fid}/monitors/{mid}",
    dependencies=DataScoped,
    tags=["Fleet"],
    summary="Delete a fleet monitor",
    status_code=204,
    responses=_DELETED,
    response_class=Response,
    operation_id="deleteFleetMonitor",
)
def delete_fleet_monitor(request: Request, who: FleetP, fid: FleetId, mid: MonitorId) -> Response:
    """The monitor stops on every vehicle and is forgotten."""
    record = _fleet_monitor(request, who, mid)
    store = _store(request)
    _drop_members(store, record)
    store.delete_record("callback", str(record.body.get("callbackId")))
    store.delete_record("fleet_monitor", mid)
    return Response(status_code=204)


@fleet_router.put(
    "/fleets/{fid}/monitors/{mid}/status",
    dependencies=DataScoped,
    tags=["Fleet"],
    summary="Pause or resume a fleet monitor",
    status_code=202,
    responses=_MONITOR_CHANGED,
    operation_id="setFleetMonitorStatus",
)
def put_fleet_monitor_status(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    mid: MonitorId,
    body: Annotated[models.StatusSetter, Body()],
) -> HalResponse:
    """Applies to the monitor on every vehicle."""
    old = _fleet_monitor(request, who, mid)
    store = _store(request)
    now = now_ms(request)
    for member_id in old.body.get("members", []):
        member = store.get_record("monitor", str(member_id))
        if member is not None:
            store.put_record(
                Record(
                    "monitor",
                    member.id,
                    member.owner,
                    member.vin,
                    {**member.body, "status": body.status},
                    member.created_ms,
                    now,
                )
            )
    record = Record(
        "fleet_monitor",
        old.id,
        old.owner,
        None,
        {**old.body, "status": body.status},
        old.created_ms,
        now,
    )
    store.put_record(record)
    href = f"{_fleet_href(request, fid)}/monitors/{mid}"
    return hal(_monitor_ref(href, record, _fleet_href(request, fid)), 202)
