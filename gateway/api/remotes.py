"""Remote actions: ``.../vehicles/{id}/callbacks/{cbid}/remotes`` for users and fleets.

A remote is sent to a vehicle of the caller's account (404 detail 1 otherwise) and notifies
through one of the caller's callbacks (404 detail 2 otherwise) that serves ``Remote``
(400 detail 1 otherwise; a fleet callback with ``remoteTypes`` serves those types only).
Each action needs its scope (403 detail 1): ``remote:door:write`` (door), ``remote:
preconditioning:write``, ``remote:horn:write``, ``remote:charging:write``, ``remote:lights:
write``, ``remote:wakeup:write``; the fleet-only ``immobilization`` and ``stolen`` need
``remote:immobilization:write`` and ``remote:stolen:write``. Reading a remote needs the
scope of its action: the list shows the remotes the token's scopes open.

Creating answers 202 with the ``remoteActionId``; the command goes to the vehicle through
the application's :class:`~gateway.remotes.RemoteDispatcher` (``app.state.remotes``, set by
:class:`~gateway.service.GatewayService` when it has a broker and a remote master secret):
without one the API answers 503 detail 1, and 503 detail 2 when the broker does not take
the command.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Request, Security
from pydantic import BaseModel, ConfigDict, Field

from gateway.api import models
from gateway.api.b2b import fleet_href, fleet_vehicle
from gateway.api.b2c import (
    API_PREFIX,
    Access,
    HalResponse,
    IndexRangeQ,
    PageSizeQ,
    VehicleId,
    base_url,
    hal,
    paged,
    paging,
    user_vehicle,
)
from gateway.api.errors import ApiError
from gateway.api.hal import DEFAULT_PAGE_SIZE, link
from gateway.api.security import principal, require_fleet, require_user
from gateway.auth import Principal
from gateway.remotes import (
    ACTION_SCOPES,
    DONE_STATUSES,
    REMOTE_KIND,
    REMOTE_SCOPES,
    RemoteDispatcher,
    RemoteDispatchError,
    RemoteError,
    RemoteRequest,
    parse_request,
)
from gateway.store import Record, Store, rfc3339

__all__ = ["fleet_router", "user_router"]

CallbackId = Annotated[str, Path(description="The callback's id", pattern=r"^[0-9A-Za-z_-]{1,64}$")]
RemoteId = Annotated[str, Path(description="The remote's id", pattern=r"^[0-9a-f]{32}$")]
FleetId = Annotated[str, Path(description="The fleet's id", max_length=64)]

REMOTES_OFF = "remote commands are off: the gateway runs without a broker or a remote secret"

# -- request models (checked in depth by gateway.remotes.parse_request) --------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Occurence(_In):
    """The days a program runs on."""

    day: list[Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]] = Field(max_length=7)


class AirConditioningProgram(_In):
    """A preconditioning program: ``Set`` (slot, enabled, start, occurence) or ``Delete``."""

    slot: int = Field(ge=1, le=4)
    enabled: bool | None = None
    recurrence: Literal["None", "Daily"] | None = None
    start: str | None = Field(
        default=None, max_length=32, description="Time after midnight (UTC): `PT14H30M`"
    )
    occurence: Occurence | None = None
    actionsType: Literal["Set", "Delete"] | None = None


class AirConditioning(_In):
    """Start or stop now, and/or set programs (at least one of them)."""

    immediate: bool | None = None
    programs: list[AirConditioningProgram] | None = Field(default=None, max_length=4)


class RemotePreconditioning(_In):
    """Thermal preconditioning."""

    airConditioning: AirConditioning


class RemoteDoorsState(_In):
    """Lock or unlock the doors (``forced`` is deprecated and ignored)."""

    state: Literal["Unlocked", "Locked"]
    forced: bool | None = None


class RemoteHorn(_In):
    """Sound the horn ``beeps`` times (1-10, default 1)."""

    state: Literal["Activated", "Unactivated"]
    beeps: int | None = Field(default=None, ge=1, le=10)


class RemoteLights(_In):
    """Flash the lights for ``duration`` (`PT1S`-`PT60S`, default `PT10S`)."""

    on: bool
    duration: str | None = Field(default=None, max_length=16)


class ChargingSchedule(_In):
    """A delayed start at ``nextDelayedTime`` (its time of day, UTC)."""

    nextDelayedTime: str | None = Field(default=None, max_length=40)
    programs: list[dict[str, Any]] | None = Field(default=None, max_length=4)


class ChargingPreferences(_In):
    """Charging preferences."""

    level: Literal["Level1", "Level2", "Level3", "Level4", "Level5"]
    type: Literal["Partial", "Full"]


class RemoteCharging(_In):
    """Charge now (``immediate: true``), stop (``false``), later, or set preferences."""

    immediate: bool | None = None
    schedule: ChargingSchedule | None = None
    nextDelayedTime: str | None = Field(default=None, max_length=40, deprecated=True)
    preferences: ChargingPreferences | None = None


class RemoteWakeUp(_In):
    """Wake the vehicle up (it then sends its data)."""

    action: Literal["WakeUp"] | None = None


class RemoteNavigation(_In):
    """Not supported by the vehicles (refused)."""

    positions: list[dict[str, Any]] = Field(min_length=1, max_length=10)
    driverApproval: bool | None = None


class RemoteAttribute(_In):
    """An attribute of the notifications (``$remoteType``, ``$remoteStatus``, ``$vin``...)."""

    type: Literal["Header", "Body", "Query"]
    key: str = Field(max_length=128)
    value: str = Field(max_length=1024)


class RemoteCallbackAttributes(_In):
    """Attributes added to (or replacing) the callback's own."""

    webhook: list[RemoteAttribute] | None = Field(default=None, max_length=20)


class Remote(_In):
    """A remote action: exactly one action object."""

    label: str | None = Field(default=None, max_length=256)
    attributes: list[RemoteAttribute] | None = Field(default=None, max_length=20)
    callbackAttributes: RemoteCallbackAttributes | None = None
    preconditioning: RemotePreconditioning | None = None
    door: RemoteDoorsState | None = None
    horn: RemoteHorn | None = None
    charging: RemoteCharging | None = None
    lights: RemoteLights | None = None
    wakeUp: RemoteWakeUp | None = None
    navigation: RemoteNavigation | None = None


class RemoteSetImmobilization(_In):
    """Immobilize the vehicle (or release it)."""

    activate: bool


class RemoteStolen(_In):
    """Declare the vehicle stolen (or found)."""

    stolen: bool


class FleetRemote(Remote):
    """A fleet's remote action: exactly one action object."""

    immobilization: RemoteSetImmobilization | None = None
    stolen: RemoteStolen | None = None


# -- response models ---------------------------------------------------------------------------

RemoteType = Literal[
    "ThermalPreconditioning",
    "ElectricBatteryChargingRequest",
    "Horn",
    "Doors",
    "Lights",
    "WakeUp",
    "Immobilization",
    "Stolen",
]
RemoteStatus = Literal[
    "Accepted",
    "Failed",
    "Success",
    "AlreadyDone",
    "WakingUpVehicle",
    "CheckingVehicle",
    "SentToVehicle",
    "VehicleBatteryChargeTooLow",
    "TooManyWakeUpsOverMonth",
]


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")


class RemotePostLinks(_Out):
    """Links of a created remote."""

    callback: models.Link
    remote: models.Link


class RemotePostResponse(_Out):
    """A remote accepted for sending."""

    links: RemotePostLinks = Field(alias="_links")
    remoteActionId: str
    type: RemoteType


class RemoteLinks(_Out):
    """Links of a remote."""

    self_: models.Link = Field(alias="self")
    callback: models.Link | None = None
    vehicle: models.Link | None = None


class RemoteHistoryEntry(_Out):
    """One status of a remote, when the gateway learnt it (and the vehicle's time)."""

    status: RemoteStatus
    at: models.DateTime
    source: Literal["gateway", "vehicle"]
    vehicleAt: models.DateTime | None = None
    failureCause: str | None = None
    detail: str | None = None


class RemoteAction(_Out):
    """A remote and its current state."""

    links: RemoteLinks = Field(alias="_links")
    remoteActionId: str
    type: RemoteType
    label: str | None = None
    remote: dict[str, Any]
    status: RemoteStatus
    failureCause: str | None = None
    createdAt: models.DateTime
    updatedAt: models.DateTime
    history: list[RemoteHistoryEntry]


class RemoteActionsEmbedded(_Out):
    """Remotes."""

    remoteActions: list[RemoteAction]


class RemoteActions(_Out):
    """A page of remotes."""

    links: models.PagingLinks = Field(alias="_links")
    total: int = Field(ge=0)
    currentPage: int = Field(ge=1)
    totalPage: int = Field(ge=1)
    embedded: RemoteActionsEmbedded = Field(alias="_embedded")


_CREATED: dict[int | str, dict[str, Any]] = {
    202: {"description": "Accepted for sending", "model": RemotePostResponse},
    503: {
        "description": "No broker to send commands (1), or it did not take the command (2)",
        "model": models.ErrorBody,
    },
}

# -- access ------------------------------------------------------------------------------------


async def _any_remote_scope(
    who: Annotated[Principal, Security(principal, scopes=list(REMOTE_SCOPES))],
) -> Principal:
    """The principal, whose token must carry at least one remote scope (403/1)."""
    if not any(s in who.scopes for s in REMOTE_SCOPES):
        raise ApiError(403, "the token has no remote scope", detail=1)
    return who


RemoteScoped = [Depends(_any_remote_scope)]


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _callback(request: Request, who: Principal, cbid: str) -> Record:
    """The caller's own callback (404 detail 2 otherwise)."""
    record = _store(request).get_record("callback", cbid)
    if (
        record is None
        or record.owner != who.owner
        or record.body.get("clientId") != who.client_id
        or record.body.get("fleetMonitor")
    ):
        raise ApiError(404, "no such callback", detail=2)
    return record


def _callback_href(request: Request, who: Principal, cbid: str) -> str:
    if who.kind == "user":
        return f"{base_url(request)}{API_PREFIX}/user/callbacks/{cbid}"
    return f"{fleet_href(request, who.subject)}/remote/callbacks/{cbid}"


def _parse(body: BaseModel, fleet: bool) -> RemoteRequest:
    raw = body.model_dump(mode="json", exclude_unset=True, by_alias=True)
    try:
        return parse_request(raw, fleet=fleet)
    except RemoteError as exc:
        raise ApiError(400, f"invalid body: {exc}", detail=1) from None


def _need_scope(who: Principal, scope: str) -> None:
    if scope not in who.scopes:
        raise ApiError(403, f"the token lacks the scope {scope}", detail=1)


def _remote_view(request: Request, who: Principal, a: Access, record: Record) -> dict[str, Any]:
    body = record.body
    cbid = str(body.get("callbackId"))
    view: dict[str, Any] = {
        "_links": {
            "self": link(f"{a.href}/callbacks/{cbid}/remotes/{record.id}"),
            "callback": link(_callback_href(request, who, cbid)),
            "vehicle": a.vehicle_link(),
        },
        "remoteActionId": record.id,
        "type": body["type"],
        "remote": body.get("remote", {}),
        "status": body["status"],
        "createdAt": rfc3339(record.created_ms),
        "updatedAt": rfc3339(record.updated_ms),
        "history": [
            {k: v for k, v in entry.items() if k != "vehicleAtMs"}
            for entry in body.get("history", [])
        ],
    }
    if body.get("label"):
        view["label"] = body["label"]
    if body.get("status") in DONE_STATUSES and body.get("failureCause"):
        view["failureCause"] = body["failureCause"]
    return view


def _create(request: Request, who: Principal, a: Access, cbid: str, body: BaseModel) -> HalResponse:
    callback = _callback(request, who, cbid)
    remote = _parse(body, fleet=who.kind == "fleet")
    _need_scope(who, remote.scope)
    if "Remote" not in callback.body.get("type", ["Remote"]):
        raise ApiError(400, "the callback does not serve remotes (type)", detail=1)
    served = callback.body.get("remoteTypes")
    if served and remote.type not in served:
        raise ApiError(400, f"the callback does not serve {remote.type} remotes", detail=1)
    dispatcher: RemoteDispatcher | None = getattr(request.app.state, "remotes", None)
    if dispatcher is None:
        raise ApiError(503, REMOTES_OFF, detail=1)
    try:
        record = dispatcher.dispatch(
            remote, vin=a.vin, owner=who.owner, client_id=who.client_id, callback=callback
        )
    except RemoteDispatchError as exc:
        raise ApiError(503, f"the command was not sent: {exc}", detail=2) from None
    answer = {
        "_links": {
            "callback": link(_callback_href(request, who, cbid)),
            "remote": link(f"{a.href}/callbacks/{cbid}/remotes/{record.id}"),
        },
        "remoteActionId": record.id,
        "type": remote.type,
    }
    return hal(answer, 202)


def _visible(who: Principal, record: Record) -> bool:
    return ACTION_SCOPES.get(str(record.body.get("action")), "") in who.scopes


def _list(
    request: Request,
    who: Principal,
    a: Access,
    cbid: str,
    *,
    index_range: str | None,
    page_size: int,
) -> HalResponse:
    p = paging(request, index_range, page_size, None)
    _callback(request, who, cbid)
    records = [
        r
        for r in _store(request).records(REMOTE_KIND, owner=who.owner, vin=a.vin)
        if r.body.get("callbackId") == cbid and _visible(who, r)
    ]
    records.sort(key=lambda r: (r.created_ms, r.id))
    items = [_remote_view(request, who, a, r) for r in records]
    return hal(paged(request, "remoteActions", items, p))


def _one(request: Request, who: Principal, a: Access, cbid: str, rid: str) -> HalResponse:
    _callback(request, who, cbid)
    record = _store(request).get_record(REMOTE_KIND, rid)
    if (
        record is None
        or record.owner != who.owner
        or record.vin != a.vin
        or record.body.get("callbackId") != cbid
    ):
        raise ApiError(404, "no such remote", detail=2)
    _need_scope(who, ACTION_SCOPES.get(str(record.body.get("action")), "remote"))
    return hal(_remote_view(request, who, a, record))


# -- B2C ---------------------------------------------------------------------------------------

user_router = APIRouter(default_response_class=HalResponse, dependencies=RemoteScoped)
User = Annotated[Principal, Depends(require_user)]


@user_router.post(
    "/user/vehicles/{id}/callbacks/{cbid}/remotes",
    tags=["Remotes"],
    summary="Send a remote action to a vehicle",
    status_code=202,
    responses=_CREATED,
    operation_id="sendRemoteToVehicle",
)
def create_user_remote(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    cbid: CallbackId,
    body: Annotated[Remote, Body()],
) -> HalResponse:
    """Exactly one action; its progress goes to the callback as ``remoteEvent`` messages."""
    return _create(request, who, user_vehicle(request, who, id), cbid, body)


@user_router.get(
    "/user/vehicles/{id}/callbacks/{cbid}/remotes",
    tags=["Remotes"],
    summary="The vehicle's remotes on a callback",
    response_model=RemoteActions,
    operation_id="getVehicleRemotes",
)
def get_user_remotes(
    request: Request,
    who: User,
    *,
    id: VehicleId,
    cbid: CallbackId,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Remotes sent through this callback whose action the token's scopes open."""
    access = user_vehicle(request, who, id)
    return _list(request, who, access, cbid, index_range=index_range, page_size=page_size)


@user_router.get(
    "/user/vehicles/{id}/callbacks/{cbid}/remotes/{rid}",
    tags=["Remotes"],
    summary="One remote",
    response_model=RemoteAction,
    operation_id="getVehicleRemoteById",
)
def get_user_remote(
    request: Request, who: User, *, id: VehicleId, cbid: CallbackId, rid: RemoteId
) -> HalResponse:
    """A remote by id, with the statuses it went through."""
    return _one(request, who, user_vehicle(request, who, id), cbid, rid)


# -- B2B ---------------------------------------------------------------------------------------

fleet_router = APIRouter(default_response_class=HalResponse, dependencies=RemoteScoped)
FleetP = Annotated[Principal, Depends(require_fleet)]


@fleet_router.post(
    "/fleets/{fid}/vehicles/{vid}/callbacks/{cbid}/remotes",
    tags=["Fleet"],
    summary="Send a remote action to a fleet's vehicle",
    status_code=202,
    responses=_CREATED,
    operation_id="sendFleetRemoteToVehicle",
)
def create_fleet_remote(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    cbid: CallbackId,
    body: Annotated[FleetRemote, Body()],
) -> HalResponse:
    """Exactly one action, ``immobilization`` and ``stolen`` included."""
    return _create(request, who, fleet_vehicle(request, who, vid), cbid, body)


@fleet_router.get(
    "/fleets/{fid}/vehicles/{vid}/callbacks/{cbid}/remotes",
    tags=["Fleet"],
    summary="A fleet vehicle's remotes on a callback",
    response_model=RemoteActions,
    operation_id="getFleetVehicleRemotes",
)
def get_fleet_remotes(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    cbid: CallbackId,
    index_range: IndexRangeQ = None,
    page_size: PageSizeQ = DEFAULT_PAGE_SIZE,
) -> HalResponse:
    """Remotes sent through this callback whose action the token's scopes open."""
    access = fleet_vehicle(request, who, vid)
    return _list(request, who, access, cbid, index_range=index_range, page_size=page_size)


@fleet_router.get(
    "/fleets/{fid}/vehicles/{vid}/callbacks/{cbid}/remotes/{rid}",
    tags=["Fleet"],
    summary="One remote of a fleet's vehicle",
    response_model=RemoteAction,
    operation_id="getFleetVehicleRemoteById",
)
def get_fleet_remote(
    request: Request,
    who: FleetP,
    *,
    fid: FleetId,
    vid: VehicleId,
    cbid: CallbackId,
    rid: RemoteId,
) -> HalResponse:
    """A remote by id, with the statuses it went through."""
    return _one(request, who, fleet_vehicle(request, who, vid), cbid, rid)
