"""The API's request and response models: they make the OpenAPI document precise.

Names, enums and shapes follow the connected-car Web API v4 reference; every field the
reference marks required is required here, everything else may be absent. Response bodies
are built as plain JSON by the routes (``_links``, ``_embedded``), the models describe them;
request bodies (callbacks, monitors, statuses) are validated by them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Alarm",
    "Alarms",
    "Alert",
    "Alerts",
    "CallbackRef",
    "CallbackSubscribe",
    "Callbacks",
    "Collision",
    "Collisions",
    "ErrorBody",
    "Fleet",
    "FleetCallback",
    "FleetCallbackSubscribe",
    "FleetCallbacks",
    "FleetMonitorParameter",
    "Fleets",
    "Maintenance",
    "MaintenanceList",
    "Monitor",
    "MonitorParameter",
    "MonitorRef",
    "Monitors",
    "Position",
    "PositionCollection",
    "Status",
    "StatusList",
    "StatusSetter",
    "Telemetries",
    "Trip",
    "Trips",
    "User",
    "UserCallback",
    "Vehicle",
    "Vehicles",
    "WayPoints",
]

CallbackKind = Literal["Monitor", "Remote"]

DateTime = Annotated[str, Field(description="RFC 3339 date-time (UTC, milliseconds)")]


class _Model(BaseModel):
    """Unknown properties are allowed: clients must ignore what they do not know."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")


class Link(_Model):
    """A HAL link."""

    href: str
    templated: bool | None = None
    type: str | None = None


class SelfLinks(_Model):
    """Links of a single resource."""

    self_: Link = Field(alias="self")


class PagingLinks(_Model):
    """Links of a collection page: itself, the first and last page, the neighbours."""

    self_: Link = Field(alias="self")
    first: Link
    last: Link | None = None
    prev: Link | None = None
    next: Link | None = None


class _Collection(_Model):
    links: PagingLinks = Field(alias="_links")
    total: int = Field(ge=0, description="Items in the whole (filtered) collection")
    currentPage: int = Field(ge=1, description="Page of the first item returned, from 1")
    totalPage: int = Field(ge=1, description="Pages of pageSize items")


class ErrorBody(_Model):
    """An error: ``code`` is the HTTP status times 100 plus a detail number."""

    code: int = Field(ge=10000, le=59999)
    uuid: str
    message: str
    timestamp: DateTime


# -- positions --------------------------------------------------------------------------------


class Point(_Model):
    """A GeoJSON Point: ``[longitude, latitude(, altitude)]``."""

    type: Literal["Point"]
    coordinates: list[float] = Field(min_length=2, max_length=3)


class PositionProperties(_Model):
    """When and how the position was taken."""

    createdAt: DateTime
    heading: int | None = Field(default=None, ge=0, le=360)
    signalQuality: int | None = None
    type: Literal["Estimated", "Acquire"] | None = None
    fixStatus: Literal["2D", "3D"] | None = None


class Position(_Model):
    """A GeoJSON Feature with a Point geometry."""

    type: Literal["Feature"]
    geometry: Point
    properties: PositionProperties


# -- status -----------------------------------------------------------------------------------


class _Stamped(_Model):
    createdAt: DateTime | None = None


class Ignition(_Stamped):
    """Ignition state."""

    type: Literal["Stop", "StartUp", "Start", "Free"] | None = None


class Charging(_Model):
    """Charging state of the traction battery."""

    plugged: bool | None = None
    status: Literal["Disconnected", "InProgress", "Failure", "Stopped", "Finished"] | None = None
    remainingTime: str | None = Field(default=None, description="ISO 8601 duration")
    chargingRate: float | None = Field(default=None, ge=0, le=500)
    chargingMode: Literal["No", "Slow", "Quick"] | None = None


class ElectricExtension(_Model):
    """Electric energy details."""

    charging: Charging | None = None


class EnergyExtension(_Model):
    """Energy details by kind."""

    electric: ElectricExtension | None = None
    fuel: dict[str, Any] | None = None


class Energy(_Stamped):
    """Level and autonomy of one energy."""

    type: Literal["Fuel", "Electric"]
    subType: Literal["FossilEnergy", "ElectricEnergy", "Hydrogen"] | None = None
    level: float | None = Field(default=None, ge=0, le=100)
    autonomy: float | None = Field(default=None, ge=0)
    extension: EnergyExtension | None = None


class Opening(_Model):
    """One door's state."""

    identifier: Literal[
        "Driver", "Passenger", "RearLeft", "RearRight", "Trunk", "RearWindow", "RoofWindow"
    ]
    state: Literal["Open", "Closed"]


class DoorsState(_Stamped):
    """Locks and openings."""

    lockedStates: list[str] | None = None
    opening: list[Opening] | None = None


class Privacy(_Stamped):
    """The driver's privacy setting."""

    state: Literal["None", "Geolocation", "Full"] | None = None


class Battery(_Stamped):
    """The 12 V battery."""

    voltage: float | None = None


class Odometer(_Stamped):
    """Mileage in km."""

    mileage: float | None = Field(default=None, ge=0)


class Kinetic(_Stamped):
    """Movement."""

    acceleration: float | None = None
    speed: float | None = None
    moving: bool | None = None


class Air(_Stamped):
    """Outside air."""

    temp: float | None = None


class Environment(_Model):
    """Surroundings."""

    air: Air | None = None
    luminosity: dict[str, Any] | None = None


class AirConditioning(_Stamped):
    """Preconditioning of the cabin."""

    status: Literal["Enabled", "Disabled", "Finished", "Failure"] | None = None


class Preconditioning(_Model):
    """Cabin preconditioning."""

    airConditioning: AirConditioning | None = None


class VehicleLinks(_Model):
    """Links of a vehicle-scoped resource."""

    self_: Link = Field(alias="self")
    vehicle: Link | None = None


class Status(_Model):
    """The latest known state of a vehicle."""

    links: VehicleLinks = Field(alias="_links")
    createdAt: DateTime
    updatedAt: DateTime | None = None
    ignition: Ignition | None = None
    lastPosition: Position | None = None
    preconditioning: Preconditioning | None = None
    energies: list[Energy] | None = None
    engines: list[dict[str, Any]] | None = None
    doorsState: DoorsState | None = None
    privacy: Privacy | None = None
    battery: Battery | None = None
    odometer: Odometer | None = None
    kinetic: Kinetic | None = None
    environment: Environment | None = None


class StatusEmbedded(_Model):
    """Statuses of a fleet's vehicles."""

    status: list[Status]


class StatusList(_Collection):
    """A page of vehicle statuses."""

    embedded: StatusEmbedded = Field(alias="_embedded")


# -- user, vehicles, fleets -------------------------------------------------------------------


class Vehicle(_Model):
    """A vehicle of the caller's account."""

    links: SelfLinks = Field(alias="_links")
    id: str
    vin: str
    brand: str | None = None
    label: str | None = None
    motorization: Literal["Electric", "Hybrid", "Thermic", "Hydrogen"] | None = None
    services: list[str] | None = Field(
        default=None, description="Subscribed connected-car services"
    )
    createdAt: DateTime | None = None
    updatedAt: DateTime | None = None


class VehiclesEmbedded(_Model):
    """Vehicles."""

    vehicles: list[Vehicle]


class Vehicles(_Collection):
    """A page of vehicles."""

    embedded: VehiclesEmbedded = Field(alias="_embedded")


class User(_Model):
    """The signed-in user."""

    links: SelfLinks = Field(alias="_links")
    id: str
    email: str | None = None


class Fleet(_Model):
    """A fleet of the signed-in partner."""

    links: SelfLinks = Field(alias="_links")
    id: str
    name: str | None = None
    description: str | None = None


class FleetsEmbedded(_Model):
    """Fleets."""

    fleets: list[Fleet]


class Fleets(_Collection):
    """A page of fleets."""

    embedded: FleetsEmbedded = Field(alias="_embedded")


# -- trips, waypoints, telemetry ----------------------------------------------------------------


class LiteEnergy(_Model):
    """Energy level and autonomy at one moment."""

    type: Literal["Fuel", "Electric"] | None = None
    level: float | None = Field(default=None, ge=0, le=100)
    autonomy: float | None = Field(default=None, ge=0)


class TripKinetic(_Model):
    """Speeds over a trip (km/h)."""

    avgSpeed: float | None = None
    maxSpeed: float | None = None


class TripFault(_Model):
    """What a trip lacks and why."""

    fault: Literal["Unstarted", "DataLacking", "Unfinished"] | None = None
    cause: Literal["GeoPrivacy", "FullPrivacy", "Connection"] | None = None


class Trip(_Model):
    """One trip: from ignition on to ignition off."""

    links: SelfLinks = Field(alias="_links")
    id: str
    createdAt: DateTime
    updatedAt: DateTime | None = None
    startedAt: DateTime | None = None
    stoppedAt: DateTime | None = None
    startPosition: Position | None = None
    stopPosition: Position | None = None
    duration: int | None = Field(default=None, ge=0, description="seconds")
    distance: float | None = Field(default=None, ge=0, description="km")
    startMileage: float | None = None
    startEnergies: list[LiteEnergy] | None = None
    endEnergies: list[LiteEnergy] | None = None
    kinetic: TripKinetic | None = None
    done: bool | None = None
    faults: list[TripFault] | None = None


class TripsEmbedded(_Model):
    """Trips."""

    trips: list[Trip]


class Trips(_Collection):
    """A page of trips."""

    embedded: TripsEmbedded = Field(alias="_embedded")


class PositionsEmbedded(_Model):
    """Positions."""

    positions: list[Position]


class WayPoints(_Collection):
    """A page of a trip's positions (HAL)."""

    embedded: PositionsEmbedded = Field(alias="_embedded")


class PositionCollection(_Model):
    """A page of a trip's positions as a GeoJSON FeatureCollection (with HAL members)."""

    type: Literal["FeatureCollection"]
    features: list[Position]
    links: PagingLinks = Field(alias="_links")
    total: int = Field(ge=0)
    currentPage: int = Field(ge=1)
    totalPage: int = Field(ge=1)


class Telemetry(_Model):
    """The vehicle's values at one moment."""

    links: SelfLinks = Field(alias="_links")
    createdAt: DateTime | None = None
    privacy: dict[str, Any] | None = None
    vehicle: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None


class TelemetriesEmbedded(_Model):
    """Telemetry messages."""

    telemetries: list[Telemetry]


class Telemetries(_Collection):
    """A page of telemetry messages."""

    embedded: TelemetriesEmbedded = Field(alias="_embedded")


# -- alerts, collisions, maintenance, alarms ---------------------------------------------------


class Alert(_Model):
    """An alert the vehicle raised."""

    links: SelfLinks = Field(alias="_links")
    id: str
    active: bool
    type: str
    severity: Literal["Information", "Warning", "Critical"] | None = None
    startedAt: DateTime
    endAt: DateTime | None = None
    createdAt: DateTime | None = None
    updatedAt: DateTime
    startPosition: Position | None = None
    endPosition: Position | None = None


class AlertsEmbedded(_Model):
    """Alerts."""

    alerts: list[Alert]


class Alerts(_Collection):
    """A page of alerts."""

    embedded: AlertsEmbedded = Field(alias="_embedded")


class CollisionDetail(_Model):
    """Where the vehicle was hit and how hard."""

    side: Literal["Front", "Rear", "Lateral"]
    severity: Literal["Minimal", "Minor", "Major"] | None = None


class Collision(_Model):
    """A collision the vehicle detected."""

    links: SelfLinks = Field(alias="_links")
    id: str
    createdAt: DateTime
    updatedAt: DateTime | None = None
    details: list[CollisionDetail] | None = None
    position: Position | None = None


class CollisionsEmbedded(_Model):
    """Collisions (the reference's capitalised name)."""

    Collisions: list[Collision]


class Collisions(_Collection):
    """A page of collisions."""

    embedded: CollisionsEmbedded = Field(alias="_embedded")


class Maintenance(_Model):
    """Time and distance to the next service (negative when overdue)."""

    links: SelfLinks = Field(alias="_links")
    createdAt: DateTime | None = None
    updatedAt: DateTime | None = None
    daysBeforeMaintenance: int | None = None
    mileageBeforeMaintenance: float | None = None


class MaintenanceEmbedded(_Model):
    """Maintenance of each vehicle."""

    maintenances: list[Maintenance]


class MaintenanceList(_Collection):
    """A page of vehicles' maintenance."""

    embedded: MaintenanceEmbedded = Field(alias="_embedded")


class AlarmStatus(_Stamped):
    """Whether the alarm is armed."""

    activation: Literal["Inactive", "Active"]


class AlarmTrigger(_Stamped):
    """A break-in the alarm detected."""

    type: str
    startAt: DateTime
    position: Position | None = None


class Alarm(_Model):
    """An alarm status change or trigger."""

    links: SelfLinks | None = Field(default=None, alias="_links")
    id: str
    status: AlarmStatus | None = None
    trigger: AlarmTrigger | None = None


class AlarmsEmbedded(_Model):
    """Alarms."""

    alarms: list[Alarm]


class Alarms(_Collection):
    """A page of alarms."""

    embedded: AlarmsEmbedded = Field(alias="_embedded")


# -- callbacks and monitors (requests) ---------------------------------------------------------


class Attribute(BaseModel):
    """A key and value added to each notification (``$vin`` etc. are filled in)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["Header", "Body", "Query"]
    key: str = Field(min_length=1, max_length=128)
    value: str = Field(max_length=1024)


class Webhook(BaseModel):
    """An HTTP(S) endpoint that receives notifications by POST."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    target: str = Field(min_length=1, max_length=2048)
    attributes: list[Attribute] | None = Field(default=None, max_length=20)


class CallbackTarget(BaseModel):
    """Where notifications go: a webhook (push notifications and websockets are not served)."""

    model_config = ConfigDict(extra="forbid")

    webhook: Webhook


class CallbackSubscribe(BaseModel):
    """A callback: a label, what it serves and where notifications go."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(default=None, max_length=256)
    type: list[Literal["Monitor", "Remote"]] | None = Field(default=None, max_length=2)
    callback: CallbackTarget


class RetryPolicy(BaseModel):
    """How failed notifications are retried."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["None", "Bounded", "Always"]
    retryNumber: int | None = Field(default=None, ge=1, le=100)
    retryDelay: int | None = Field(default=None, ge=1, le=86400)


class FleetCallbackSubscribe(BaseModel):
    """A fleet's callback."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(default=None, max_length=256)
    remoteTypes: list[str] | None = Field(default=None, max_length=8)
    retryPolicy: RetryPolicy | None = None
    callback: CallbackTarget


class StatusSetter(BaseModel):
    """A new status for a callback or a monitor."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["Running", "Paused"]


class ZoneCenter(BaseModel):
    """A point in degrees."""

    model_config = ConfigDict(extra="forbid")

    longitude: float = Field(ge=-180, le=180)
    latitude: float = Field(ge=-90, le=90)


class ZonePlace(BaseModel):
    """A circle: centre and radius in km."""

    model_config = ConfigDict(extra="forbid")

    radius: float = Field(gt=0, le=20000)
    center: ZoneCenter


class ZoneTrigger(BaseModel):
    """Entering or leaving a circle."""

    model_config = ConfigDict(extra="forbid")

    transition: Literal["In", "Out"]
    place: ZonePlace


class TimeEntry(BaseModel):
    """A time window, once or daily."""

    model_config = ConfigDict(extra="forbid")

    recurrence: Literal["None", "Daily"] | None = None
    start: str = Field(min_length=1, max_length=64)
    duration: str | None = Field(default=None, max_length=64)
    occurence: dict[str, Any] | None = None


class TimeTrigger(BaseModel):
    """Time windows in a time zone."""

    model_config = ConfigDict(extra="forbid")

    times: list[TimeEntry] = Field(min_length=1, max_length=10)
    timeZone: str | None = Field(default=None, max_length=64)


class PreviousCondition(BaseModel):
    """The value the data must have had before."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["equalsTo", "includedIn"]
    value: list[str] = Field(min_length=1, max_length=50)


class DataTrigger(BaseModel):
    """A condition on one vehicle data item."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(min_length=1, max_length=128)
    op: Literal["equalsTo", "greaterThan", "lowerThan", "includedIn", "onChange"]
    value: list[str] | None = Field(default=None, max_length=50)
    previous: PreviousCondition | None = None


class MonitorTrigger(BaseModel):
    """A named trigger: exactly one of zone, time and data."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    zone: ZoneTrigger | None = None
    time: TimeTrigger | None = None
    data: DataTrigger | None = None


class TriggerParam(BaseModel):
    """Triggers combined by a boolean expression over their names (``& | ! ( )``)."""

    model_config = ConfigDict(extra="forbid")

    triggers: list[MonitorTrigger] = Field(min_length=1, max_length=5)
    boolExp: str = Field(min_length=1, max_length=1024)


class MonitorSubscribe(BaseModel):
    """Notification options of a monitor."""

    model_config = ConfigDict(extra="forbid")

    refreshEvent: int | None = Field(default=None, ge=60, le=86400)
    callbackAttributes: dict[str, list[Attribute]] | None = None


class MonitorParameter(BaseModel):
    """A monitor: a label, triggers and what each event carries."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=256)
    subscribeParam: MonitorSubscribe | None = None
    attributes: list[Attribute] | None = Field(default=None, max_length=20)
    extendedEventParam: list[str] | None = Field(default=None, max_length=16)
    triggerParam: TriggerParam


class FleetMonitorSubscribe(BaseModel):
    """Notification options of a fleet monitor: its own webhook, refresh, retries."""

    model_config = ConfigDict(extra="forbid")

    refreshEvent: int | None = Field(default=None, ge=60, le=86400)
    retryPolicy: RetryPolicy | None = None
    batchNotify: dict[str, Any] | None = None
    callback: CallbackTarget


class FleetMonitorParameter(BaseModel):
    """A fleet monitor: watches every vehicle of the fleet."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=256)
    subscribeParam: FleetMonitorSubscribe
    extendedEventParam: list[str] | None = Field(default=None, max_length=16)
    triggerParam: TriggerParam


# -- callbacks and monitors (responses) --------------------------------------------------------


class CallbackLinks(_Model):
    """Links of a callback reference."""

    callback: Link
    fleet: Link | None = None


class CallbackRef(_Model):
    """A callback created or changed."""

    links: CallbackLinks = Field(alias="_links")
    callbackId: str
    status: Literal["Running", "Paused", "Failed"]


class UserCallback(_Model):
    """A callback and its state."""

    links: SelfLinks = Field(alias="_links")
    id: str
    label: str | None = None
    subscribe: dict[str, Any]
    status: Literal["Running", "Paused", "Failed"]


class CallbacksEmbedded(_Model):
    """Callbacks."""

    callbacks: list[UserCallback]


class Callbacks(_Collection):
    """A page of callbacks."""

    embedded: CallbacksEmbedded = Field(alias="_embedded")


class FleetCallback(UserCallback):
    """A fleet's callback and its state."""


class FleetCallbacks(Callbacks):
    """A page of a fleet's callbacks."""


class MonitorLinks(_Model):
    """Links of a monitor reference."""

    monitor: Link
    fleet: Link | None = None


class MonitorRef(_Model):
    """A monitor created or changed."""

    links: MonitorLinks = Field(alias="_links")
    monitorId: str
    status: Literal["Running", "Paused", "Failed"]
    createdAt: DateTime
    updatedAt: DateTime


class Monitor(_Model):
    """A monitor and its state."""

    links: SelfLinks = Field(alias="_links")
    monitorId: str
    monitor: dict[str, Any]
    status: Literal["Running", "Paused", "Failed"]
    createdAt: DateTime
    updatedAt: DateTime


class MonitorsEmbedded(_Model):
    """Monitors."""

    monitors: list[Monitor]


class Monitors(_Collection):
    """A page of monitors."""

    embedded: MonitorsEmbedded = Field(alias="_embedded")
