"""The simulated car's physical state: speed integrates into distance, position and energy.

:meth:`VehicleState.step` advances the car by a time step following a drive's speed profile.
The motion (speed, acceleration, distance, gear, engine speed) is computed every step; the
slow quantities (fuel, state of charge, charging, temperatures, range, the 12 V battery) are
integrated over the distance and time accumulated since their last update, at least once a
simulated second, so their totals do not depend on the step size.

Energy: a combustion engine burns fuel per kilometre (a constant part and a part growing with
the square of speed: rolling and air resistance) and per hour while it runs (idling); an
electric drive takes energy from the traction battery the same way (its hourly part is the
auxiliaries). A plug-in hybrid drives on electricity down to a reserve of charge, then on
fuel. A car whose energy is used up cannot drive.

Charging (electric and hybrid cars): :meth:`~VehicleState.plug_in`,
:meth:`~VehicleState.start_charging`, :meth:`~VehicleState.stop_charging`,
:meth:`~VehicleState.unplug`. The battery charges while the car is plugged in, charging was
started and the ignition is off, at the charger's power (kW) divided by the capacity (kWh).
``ChargingState``: Disconnected (0) without a cable; Stopped (3) plugged in but not charging;
InProgress (1) while charging; Finished (4) once full. A plugged-in car does not drive away.

Preconditioning (:meth:`~VehicleState.start_preconditioning`,
:meth:`~VehicleState.stop_preconditioning`, or the state signal set directly): while
``Preconditioning.State`` is Enabled (1) the cabin moves toward the target temperature, as
with the car switched on, and the HVAC draws power: from the charger when plugged in, else from
the traction battery (electric and hybrid cars, whose DC-DC converter then holds the 12 V
battery at 13.6 V) or from the 12 V battery (a fuel car's heater, whose state of charge then
falls). It ends Finished (2) after :data:`PRECOND_MAX_S` or when the ignition comes on, and
Failure (3) when the battery it draws falls below :data:`PRECOND_STOP_SOC` /
:data:`LV_LOW_SOC`. The 12 V battery is recharged while the car is on or charging.
"""

from __future__ import annotations

import bisect
import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

from firmware_sim.sim.drive import IGNITION, Drive

__all__ = [
    "LV_LOW_SOC",
    "PRECOND_DEFAULT_C",
    "PRECOND_MAX_S",
    "PRECOND_MIN_SOC",
    "PRECOND_STOP_SOC",
    "Consumption",
    "Energy",
    "VehicleState",
]


class Energy(enum.Enum):
    """What moves the car."""

    FUEL = "fuel"
    ELECTRIC = "electric"
    HYBRID = "hybrid"


SPEED = "Vehicle.Speed"
RPM = "Vehicle.Powertrain.CombustionEngine.Speed"
ODOMETER = "Vehicle.TraveledDistance"
ACCEL = "Vehicle.Acceleration.Longitudinal"
GEAR = "Vehicle.Powertrain.Transmission.CurrentGear"
COOLANT = "Vehicle.Powertrain.CombustionEngine.ECT"
OIL = "Vehicle.Powertrain.CombustionEngine.EOT"
OUTSIDE = "Vehicle.Exterior.AirTemperature"
CABIN = "Vehicle.Cabin.HVAC.AmbientAirTemperature"
FUEL = "Vehicle.Powertrain.FuelSystem.RelativeLevel"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
RANGE = "Vehicle.Powertrain.Range"
LV_VOLTAGE = "Vehicle.LowVoltageBattery.CurrentVoltage"
LV_SOC = "Vehicle.LowVoltageBattery.StateOfCharge"
SERVICE_KM = "Vehicle.Service.DistanceToService"
SERVICE_DAYS = "Vehicle.Service.DaysToService"
CRASH = "Vehicle.Safety.CrashDetected"
PRECONDITIONING = "Vehicle.Cabin.HVAC.Preconditioning.State"
CHARGING_STATE = "Vehicle.Powertrain.TractionBattery.Charging.ChargingState"
PLUGGED = "Vehicle.Powertrain.TractionBattery.Charging.IsChargingCableConnected"
TIME_TO_COMPLETE = "Vehicle.Powertrain.TractionBattery.Charging.TimeToComplete"
CHARGE_RATE = "Vehicle.Powertrain.TractionBattery.Charging.ChargeRate"
LOW_FUEL = "Vehicle.Alert.LowFuel"
ALERT_PREFIX = "Vehicle.Alert."

# ChargingState values (catalog enum).
DISCONNECTED, IN_PROGRESS, FAILURE, STOPPED, FINISHED = 0, 1, 2, 3, 4
# Preconditioning.State values (catalog enum).
PRECOND_DISABLED, PRECOND_ENABLED, PRECOND_FINISHED, PRECOND_FAILURE = 0, 1, 2, 3

# Signals that only exist on a car with a combustion engine, or with a traction battery.
COMBUSTION_ONLY = frozenset(
    {
        RPM,
        COOLANT,
        OIL,
        FUEL,
        LOW_FUEL,
        "Vehicle.Alert.OilPressure",
        "Vehicle.Alert.CoolantTemperature",
    }
)
ELECTRIC_ONLY = frozenset({SOC, CHARGING_STATE, PLUGGED, TIME_TO_COMPLETE, CHARGE_RATE})

#: This car's tank: the network gives the fuel in litres, the mapping 2 % a litre (50 L).
TANK_L = 50.0
#: The fuel level below which the body controller lights the low-fuel lamp (Dat_BSI.P012).
LOW_FUEL_PCT = 15.0
#: The slow quantities are brought up to date at least this often (simulated seconds).
SLOW_PERIOD_S = 1.0

_GEAR_TOP_KMH = (20.0, 35.0, 55.0, 75.0, 95.0)  # gears 1-5; above: 6th
_RATIO_RPM_PER_KMH = (0.0, 110.0, 70.0, 48.0, 37.0, 30.0, 25.0)
_ACCEL_LIMIT = 3.5 * 3.6  # km/h per second, forward
_BRAKE_LIMIT = 6.0 * 3.6  # km/h per second, braking
_CRASH_DECEL = 30.0 * 3.6  # km/h per second: about 3 g, 90 km/h to a stop in under a second
_LV_REST_V, _LV_WEAK_V, _LV_CHARGING_V, _LV_DCDC_V = 12.6, 11.6, 14.2, 13.6
_LV_REST_SOC, _LV_WEAK_SOC = 86.0, 32.0
_LV_KWH = 0.84  # the 12 V battery: 70 Ah
_LV_RECHARGE_PCT_PER_S = 20.0 / 3600  # recharged by the alternator or DC-DC converter

#: The cabin temperature preconditioning aims at unless told otherwise (degC).
PRECOND_DEFAULT_C = 21.0
#: Preconditioning ends (Finished) after this long.
PRECOND_MAX_S = 1800.0
#: Below this traction battery charge (%) preconditioning does not start ...
PRECOND_MIN_SOC = 20.0
#: ... and below this one it stops (Failure).
PRECOND_STOP_SOC = 15.0
#: Below this 12 V state of charge (%) the 12 V battery is low: preconditioning neither starts
#: nor goes on drawing it.
LV_LOW_SOC = 40.0
# HVAC power while preconditioning from the traction battery: a base plus a part per degree
# between cabin and target, capped (kW); a fuel car's heater draws the 12 V battery (kW).
_PRECOND_BASE_KW, _PRECOND_KW_PER_C, _PRECOND_MAX_KW = 1.0, 0.3, 5.0
_PRECOND_LV_KW = 0.12


@dataclass(frozen=True)
class Consumption:
    """Energy used (litres or kWh): per km, growing with speed squared, and per hour running.

    ``per_km(v) = (base_per_100km + aero_per_100km * v**2) / 100`` with ``v`` in km/h; the
    hourly part (idling engine, or the auxiliaries of an electric drive) is ``per_hour``.
    ``rated_per_100km`` is the figure the range estimate uses.
    """

    base_per_100km: float
    aero_per_100km: float
    per_hour: float
    rated_per_100km: float

    def per_km(self, speed_kmh: float) -> float:
        """Energy per kilometre at a steady ``speed_kmh``, without the hourly part."""
        return (self.base_per_100km + self.aero_per_100km * speed_kmh * speed_kmh) / 100

    def used(self, km: float, speed_kmh: float, running_s: float) -> float:
        """Energy for ``km`` at a steady ``speed_kmh`` and ``running_s`` seconds switched on."""
        return km * self.per_km(speed_kmh) + self.per_hour * running_s / 3600

    def used_over(self, km: float, km_speed2: float, running_s: float) -> float:
        """Energy for a stretch at varying speed: ``km_speed2`` is the sum of km * (km/h)**2."""
        return (
            self.base_per_100km * km + self.aero_per_100km * km_speed2
        ) / 100 + self.per_hour * running_s / 3600


# A diesel: about 5.3 l/100 km at 90 km/h, 0.8 l/h idling.
DIESEL = Consumption(base_per_100km=3.0, aero_per_100km=0.00018, per_hour=0.8, rated_per_100km=5.5)
# An electric compact: about 16 kWh/100 km at 90 km/h, 0.4 kW of auxiliaries.
ELECTRIC_DRIVE = Consumption(
    base_per_100km=11.0, aero_per_100km=0.0006, per_hour=0.4, rated_per_100km=16.0
)
# A plug-in hybrid: heavier on electricity, lighter on fuel.
HYBRID_ELECTRIC = Consumption(
    base_per_100km=12.0, aero_per_100km=0.00065, per_hour=0.4, rated_per_100km=17.0
)
HYBRID_FUEL = Consumption(
    base_per_100km=3.4, aero_per_100km=0.00018, per_hour=0.7, rated_per_100km=5.8
)

_BATTERY_KWH = {Energy.FUEL: 0.0, Energy.ELECTRIC: 50.0, Energy.HYBRID: 13.2}


class VehicleState:
    """Every logical signal of the car (catalog names), advanced by :meth:`step`.

    Attributes per energy type: ``tank_l`` (0 without an engine), ``battery_kwh`` (usable
    traction battery, 0 without one), ``fuel_use`` and ``electric_use`` (:class:`Consumption`,
    ``None`` where the car has no such drive), ``hybrid_reserve_pct`` (the charge a hybrid
    keeps before it switches to fuel).
    """

    def __init__(
        self,
        energy: Energy = Energy.FUEL,
        *,
        odometer_km: float = 48_211.0,
        fuel_pct: float = 62.0,
        soc_pct: float = 80.0,
        outside_c: float = 12.0,
        seed: int = 0,
    ) -> None:
        self.energy = energy
        self._random = random.Random(seed)
        self.tank_l = 0.0 if energy is Energy.ELECTRIC else TANK_L
        self.battery_kwh = _BATTERY_KWH[energy]
        self.fuel_use: Consumption | None = {
            Energy.FUEL: DIESEL,
            Energy.HYBRID: HYBRID_FUEL,
        }.get(energy)
        self.electric_use: Consumption | None = {
            Energy.ELECTRIC: ELECTRIC_DRIVE,
            Energy.HYBRID: HYBRID_ELECTRIC,
        }.get(energy)
        self.hybrid_reserve_pct = 15.0
        self.charger_kw = 0.0  # the power of the charger plugged in (0: none)
        self.precond_target_c = PRECOND_DEFAULT_C
        self.values: dict[str, float | int] = {
            SPEED: 0.0,
            ODOMETER: odometer_km,
            ACCEL: 0.0,
            IGNITION: 0,
            "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": 0,
            "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen": 0,
            "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen": 0,
            "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen": 0,
            "Vehicle.Body.Trunk.Rear.IsOpen": 0,
            "Vehicle.Cabin.DoorsLockState": 1,
            CRASH: 0,
            LV_VOLTAGE: _LV_REST_V,
            LV_SOC: _LV_REST_SOC,
            "Vehicle.Cabin.HVAC.IsAirConditioningActive": 0,
            GEAR: 0,
            OUTSIDE: outside_c,
            CABIN: outside_c + 2.0,
            RANGE: 0.0,
            "Vehicle.Body.Lights.IsFlashing": 0,
            "Vehicle.Body.Horn.IsActive": 0,
            PRECONDITIONING: 0,
            SERVICE_DAYS: 212,
            SERVICE_KM: 11_480.0,
            "Vehicle.Alert.EngineFault": 0,
            "Vehicle.Alert.BrakeFault": 0,
            "Vehicle.Alert.BatteryCharge": 0,
            "Vehicle.Alert.TirePressure": 0,
            "Vehicle.Connectivity.PrivacySetting": 0,
        }
        if energy is not Energy.ELECTRIC:
            self.values.update(
                {
                    RPM: 0.0,
                    COOLANT: outside_c,
                    OIL: outside_c,
                    FUEL: fuel_pct,
                    LOW_FUEL: 0,
                    "Vehicle.Alert.OilPressure": 0,
                    "Vehicle.Alert.CoolantTemperature": 0,
                }
            )
        if energy is not Energy.FUEL:
            self.values.update(
                {
                    SOC: soc_pct,
                    CHARGING_STATE: DISCONNECTED,
                    PLUGGED: 0,
                    TIME_TO_COMPLETE: 0,
                    CHARGE_RATE: 0.0,
                }
            )
        self.distance_m = 0.0  # along the route
        self.fuel_used_l = 0.0  # totals since the car was made, for checks
        self.energy_used_kwh = 0.0
        self.energy_charged_kwh = 0.0
        self.hvac_used_kwh = 0.0  # preconditioning, from whichever battery
        self._speed = 0.0  # km/h, unrounded
        self._charge_requested = False
        self._crashed = False
        self.immobilized = False  # the immobiliser holds: the engine does not start
        self.starts_refused = 0  # turns of the key to On/Start while immobilised
        self._key_turned = False  # the refused key is still at On or Start
        self._lv_weak = False
        self._manual_low_fuel = False
        self._pending_s = 0.0  # time and distance not yet taken into the slow quantities
        self._pending_m = 0.0
        self._pending_mv2 = 0.0  # sum of metres * (km/h)**2
        self._pending_running_s = 0.0
        self._drivable = True  # energy left and no cable: kept by the slow update
        self._engine_mode = self.fuel_use is not None  # the engine drives when switched on
        self._days_s = 0.0  # time towards the next day of DaysToService
        self._lv_drawn_pct = 0.0  # 12 V charge drawn and not yet recharged
        self._precond_s = 0.0  # how long the current preconditioning has run
        self._refresh()

    # -- queries --------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        """Whether this car has the signal at all (a diesel has no traction battery)."""
        return name in self.values

    @property
    def ignition_on(self) -> bool:
        """Whether the car is switched on."""
        return self.values[IGNITION] in (2, 3)

    @property
    def plugged_in(self) -> bool:
        """Whether a charging cable is connected."""
        return self.charger_kw > 0

    @property
    def charging(self) -> bool:
        """Whether the traction battery is being charged now."""
        return self.values.get(CHARGING_STATE) == IN_PROGRESS

    @property
    def crashed(self) -> bool:
        """Whether the car has crashed (it does not drive on)."""
        return self._crashed

    @property
    def moving(self) -> bool:
        """Whether the car is moving."""
        return float(self.values[SPEED]) > 0

    @property
    def preconditioning(self) -> bool:
        """Whether preconditioning runs now."""
        return self.values[PRECONDITIONING] == PRECOND_ENABLED

    @property
    def lv_low(self) -> bool:
        """Whether the 12 V battery is too low to power comfort functions."""
        return float(self.values[LV_SOC]) < LV_LOW_SOC

    @property
    def fuel_l(self) -> float:
        """Fuel in the tank."""
        return float(self.values.get(FUEL, 0.0)) / 100 * self.tank_l

    @property
    def battery_energy_kwh(self) -> float:
        """Energy in the traction battery."""
        return float(self.values.get(SOC, 0.0)) / 100 * self.battery_kwh

    # -- what the driver, the scenario or a fault does -------------------------------------

    def apply(self, changes: Mapping[str, float | int]) -> None:
        """Set signals as the driver or a fault would.

        The cable signal plugs in or unplugs (at the default power), the crash flag crashes
        the car, the fuel level refuels, an ignition On or Start does nothing while the car
        is :attr:`immobilized` (counted); other signals the car has are set as given (the
        physics carries on from the new value); signals it lacks are ignored.
        """
        for name, value in changes.items():
            if name not in self.values:
                continue
            if name == PLUGGED:
                if value:
                    self.plug_in()
                else:
                    self.unplug()
            elif name == CRASH:
                if value:
                    self.crash()
                else:
                    self._crashed = False
                    self.values[CRASH] = 0
            elif name == SPEED:
                self._speed = float(value)
                self.values[SPEED] = value
            elif name == LOW_FUEL:
                self.alert(name, bool(value))
            elif name == IGNITION and self.immobilized and value in (2, 3) and not self.ignition_on:
                if not self._key_turned:  # On, then Start: one turn of the key
                    self.starts_refused += 1  # the key turns, the engine does not start
                self._key_turned = True
            else:
                if name == IGNITION:
                    self._key_turned = False
                self.values[name] = value
        self._refresh()

    def _need_battery(self, what: str) -> None:
        if self.battery_kwh <= 0:
            raise ValueError(f"a {self.energy.value} car has no traction battery to {what}")

    def plug_in(self, power_kw: float = 7.4) -> None:
        """Connect a charging cable delivering ``power_kw`` (a wallbox: 7.4 kW)."""
        self._need_battery("plug in")
        if not (math.isfinite(power_kw) and power_kw > 0):
            raise ValueError(f"charging power {power_kw!r} kW is not a positive number")
        self.charger_kw = float(power_kw)
        self._refresh()

    def unplug(self) -> None:
        """Disconnect the cable; charging ends."""
        self._need_battery("unplug")
        self.charger_kw = 0.0
        self._charge_requested = False
        self._refresh()

    def start_charging(self) -> None:
        """Ask for charging: it runs while plugged in with the ignition off, until full."""
        self._need_battery("charge")
        self._charge_requested = True
        self._refresh()

    def stop_charging(self) -> None:
        """Stop charging (the cable stays connected: ChargingState Stopped)."""
        self._need_battery("stop charging")
        self._charge_requested = False
        self._refresh()

    def start_preconditioning(self, target_c: float = PRECOND_DEFAULT_C) -> None:
        """Start preconditioning the cabin toward ``target_c`` (a new target if it runs)."""
        if not (math.isfinite(target_c) and -40 < target_c < 85):
            raise ValueError(f"cabin target {target_c!r} degC is not a cabin temperature")
        self.precond_target_c = float(target_c)
        if not self.preconditioning:
            self._precond_s = 0.0
        self.values[PRECONDITIONING] = PRECOND_ENABLED
        self._refresh()

    def stop_preconditioning(self) -> None:
        """Stop preconditioning (state Disabled)."""
        self.values[PRECONDITIONING] = PRECOND_DISABLED
        self._refresh()

    def set_low_battery(self) -> None:
        """The 12 V battery weakens: below 11.8 V at rest (14.2 V while the engine charges it)."""
        self._lv_weak = True
        self._refresh()

    def crash(self) -> None:
        """A crash: the flag rises and the car comes to a stop within a second."""
        self._crashed = True
        self.values[CRASH] = 1

    def alert(self, name: str, on: bool = True) -> None:
        """Light (or put out) an alert lamp: ``Vehicle.Alert.<Name>`` or just ``<Name>``."""
        full = name if name.startswith(ALERT_PREFIX) else ALERT_PREFIX + name
        if full not in self.values:
            raise ValueError(f"a {self.energy.value} car has no {full} lamp")
        if full == LOW_FUEL:
            self._manual_low_fuel = on
            self.values[LOW_FUEL] = 1 if on or self._fuel_low() else 0
        else:
            self.values[full] = 1 if on else 0

    def refuel(self, pct: float) -> None:
        """Fill the tank up to ``pct`` percent (a level below the current one is kept)."""
        if self.tank_l <= 0:
            raise ValueError(f"a {self.energy.value} car has no fuel tank")
        if not (math.isfinite(pct) and 0 < pct <= 100):
            raise ValueError(f"refuel to {pct!r} %: the level must be in (0, 100]")
        self.values[FUEL] = max(float(self.values[FUEL]), float(pct))
        self._refresh()

    # -- time -----------------------------------------------------------------------------

    def step(self, t_s: float, dt_s: float, drive: Drive) -> None:
        """Advance the physics by ``dt_s`` to ``t_s`` following the drive's speed profile."""
        v = self.values
        ignition = v[IGNITION]
        running = ignition in {2, 3}
        previous = self._speed
        if self._crashed:
            speed = max(0.0, previous - _CRASH_DECEL * dt_s)
        else:
            target = drive.speed_at(t_s) if running and self._drivable else 0.0
            # A car cannot follow any profile: at most 3.5 m/s2 forward and 6 m/s2 braking.
            if target > previous:
                speed = min(target, previous + _ACCEL_LIMIT * dt_s)
            else:
                speed = max(target, previous - _BRAKE_LIMIT * dt_s, 0.0)
        if speed or previous:
            self._speed = speed
            v[SPEED] = round(speed, 2)
            v[ACCEL] = round((speed - previous) / 3.6 / dt_s, 2) if dt_s > 0 else 0.0
            metres = (previous + speed) / 7.2 * dt_s
            self.distance_m += metres
            v[ODOMETER] = v[ODOMETER] + metres / 1000
            self._pending_m += metres
            self._pending_mv2 += metres * speed * speed
        elif v[ACCEL]:
            v[ACCEL] = 0.0
        gear = 0
        if running and speed > 0.5:
            gear = bisect.bisect_left(_GEAR_TOP_KMH, speed) + 1
        v[GEAR] = gear
        if self.tank_l:
            rpm = 0.0
            if running and self._engine_mode:
                rpm = max(800.0, speed * _RATIO_RPM_PER_KMH[gear]) + self._random.uniform(-15, 15)
                rpm = round(rpm, 1)
            v[RPM] = rpm
        self._pending_s += dt_s
        if running:
            self._pending_running_s += dt_s
        if self._pending_s >= SLOW_PERIOD_S:
            self._update_slow(
                self._pending_s, self._pending_m, self._pending_mv2, self._pending_running_s
            )
            self._pending_s = self._pending_m = self._pending_mv2 = 0.0
            self._pending_running_s = 0.0

    def _fuel_low(self) -> bool:
        return self.tank_l > 0 and float(self.values[FUEL]) < LOW_FUEL_PCT

    def _on_electricity(self) -> bool:
        """Whether the drive takes its energy from the traction battery now."""
        if self.electric_use is None:
            return False
        soc = float(self.values[SOC])
        if self.fuel_use is None:
            return True
        return soc > self.hybrid_reserve_pct or float(self.values[FUEL]) <= 0

    def _refresh(self) -> None:
        """Bring the derived state up to date now (after an action), with no time passing."""
        self._update_slow(0.0, 0.0, 0.0, 0.0)

    def _update_slow(self, dt_s: float, metres: float, mv2: float, running_s: float) -> None:
        """Energy, charging, temperatures, range and the 12 V battery over ``dt_s``."""
        v = self.values
        running = self.ignition_on
        km = metres / 1000
        if km or running_s:
            if self._on_electricity():
                assert self.electric_use is not None
                kwh = self.electric_use.used_over(km, mv2 / 1000, running_s)
                self.energy_used_kwh += kwh
                v[SOC] = max(0.0, float(v[SOC]) - kwh / self.battery_kwh * 100)
            elif self.fuel_use is not None:
                litres = min(self.fuel_l, self.fuel_use.used_over(km, mv2 / 1000, running_s))
                self.fuel_used_l += litres
                v[FUEL] = max(0.0, float(v[FUEL]) - litres / self.tank_l * 100)
            v[SERVICE_KM] = max(0.0, float(v[SERVICE_KM]) - km)
        if dt_s:
            self._days_s += dt_s
            if self._days_s >= 86_400:
                v[SERVICE_DAYS] = int(v[SERVICE_DAYS]) - int(self._days_s // 86_400)
                self._days_s %= 86_400
            self._update_temperatures(dt_s, running)
        if v[PRECONDITIONING] == PRECOND_ENABLED:
            self._update_preconditioning(dt_s, running)
        else:
            self._precond_s = 0.0
        if self.battery_kwh:
            self._update_charging(dt_s, running)
        if self.tank_l:
            v[LOW_FUEL] = 1 if self._manual_low_fuel or self._fuel_low() else 0
        self._update_low_voltage(dt_s, running)
        self._update_range()
        electric = self._on_electricity()
        self._engine_mode = self.fuel_use is not None and not electric
        left = float(v[SOC]) if electric else float(v.get(FUEL, 0.0))
        self._drivable = left > 0 and self.charger_kw <= 0

    def _update_low_voltage(self, dt_s: float, running: bool) -> None:
        v = self.values
        dcdc = self.charging or (self.battery_kwh > 0 and self.preconditioning)
        if self._lv_drawn_pct and (running or dcdc):
            self._lv_drawn_pct = max(0.0, self._lv_drawn_pct - _LV_RECHARGE_PCT_PER_S * dt_s)
        full = _LV_WEAK_SOC if self._lv_weak else _LV_REST_SOC
        soc = max(0.0, full - self._lv_drawn_pct)
        if running:
            v[LV_VOLTAGE] = _LV_CHARGING_V
        elif dcdc:
            v[LV_VOLTAGE] = _LV_DCDC_V
        elif not self._lv_drawn_pct:
            v[LV_VOLTAGE] = _LV_WEAK_V if self._lv_weak else _LV_REST_V
        else:  # resting voltage follows the charge: 11.6 V at 32 %, 12.6 V at 86 %
            slope = (_LV_REST_V - _LV_WEAK_V) / (_LV_REST_SOC - _LV_WEAK_SOC)
            v[LV_VOLTAGE] = round(_LV_WEAK_V + (soc - _LV_WEAK_SOC) * slope, 2)
        v[LV_SOC] = round(soc, 2) if self._lv_drawn_pct else full

    def _update_preconditioning(self, dt_s: float, running: bool) -> None:
        """Preconditioning over ``dt_s``: its energy, and whether it ends."""
        v = self.values
        if running:
            v[PRECONDITIONING] = PRECOND_FINISHED  # the driver is in: the HVAC takes over
            return
        self._precond_s += dt_s
        if self.plugged_in:
            pass  # the charger powers the HVAC
        elif self.battery_kwh:
            delta = abs(self.precond_target_c - float(v[CABIN]))
            kw = min(_PRECOND_MAX_KW, _PRECOND_BASE_KW + _PRECOND_KW_PER_C * delta)
            kwh = min(kw * dt_s / 3600, self.battery_energy_kwh)
            self.hvac_used_kwh += kwh
            v[SOC] = max(0.0, float(v[SOC]) - kwh / self.battery_kwh * 100)
        else:
            kwh = _PRECOND_LV_KW * dt_s / 3600
            self.hvac_used_kwh += kwh
            self._lv_drawn_pct += kwh / _LV_KWH * 100
        if self.battery_kwh:
            drained = not self.plugged_in and float(v[SOC]) < PRECOND_STOP_SOC
        else:
            drained = self._lv_soc() < LV_LOW_SOC
        if drained:
            v[PRECONDITIONING] = PRECOND_FAILURE
        elif self._precond_s >= PRECOND_MAX_S:
            v[PRECONDITIONING] = PRECOND_FINISHED

    def _lv_soc(self) -> float:
        return (_LV_WEAK_SOC if self._lv_weak else _LV_REST_SOC) - self._lv_drawn_pct

    def _update_temperatures(self, dt_s: float, running: bool) -> None:
        v = self.values
        outside = float(v[OUTSIDE])
        if self.tank_l:
            warm = 90.0 if running and self._engine_mode else outside
            coolant = float(v[COOLANT])
            v[COOLANT] = coolant + (warm - coolant) * min(1.0, dt_s / 240)
            oil = float(v[OIL])
            v[OIL] = oil + (warm + 5 - oil) * min(1.0, dt_s / 420)
        cabin = float(v[CABIN])
        if v[PRECONDITIONING] == PRECOND_ENABLED and not running:
            goal, tau = self.precond_target_c, 600.0
        elif running:
            goal, tau = PRECOND_DEFAULT_C, 600.0
        else:
            goal, tau = outside + 2.0, 1800.0
        v[CABIN] = cabin + (goal - cabin) * min(1.0, dt_s / tau)  # unrounded: small steps add up

    def _update_charging(self, dt_s: float, running: bool) -> None:
        v = self.values
        soc = float(v[SOC])
        state = int(v[CHARGING_STATE])
        if self.charger_kw <= 0:
            state = DISCONNECTED
        elif self._charge_requested and not running and soc < 100.0:
            state = IN_PROGRESS
            if dt_s:
                room = self.battery_kwh - self.battery_energy_kwh
                kwh = max(0.0, min(self.charger_kw * dt_s / 3600, room))
                self.energy_charged_kwh += kwh
                soc = min(100.0, soc + kwh / self.battery_kwh * 100)
                v[SOC] = soc
        elif not (state == FINISHED and soc >= 100.0):
            state = STOPPED
        if self._charge_requested and soc >= 100.0 and self.charger_kw > 0:
            state = FINISHED
            self._charge_requested = False
        v[CHARGING_STATE] = state
        v[PLUGGED] = 1 if self.charger_kw > 0 else 0
        if state == IN_PROGRESS:
            remaining_kwh = (100.0 - soc) / 100 * self.battery_kwh
            v[TIME_TO_COMPLETE] = math.ceil(remaining_kwh / self.charger_kw * 60)
            assert self.electric_use is not None
            v[CHARGE_RATE] = round(self.charger_kw / self.electric_use.rated_per_100km * 100, 1)
        else:
            v[TIME_TO_COMPLETE] = 0
            v[CHARGE_RATE] = 0.0

    def _update_range(self) -> None:
        v = self.values
        km = 0.0
        if self.fuel_use is not None:
            km += self.fuel_l / self.fuel_use.rated_per_100km * 100
        if self.electric_use is not None:
            km += self.battery_energy_kwh / self.electric_use.rated_per_100km * 100
        v[RANGE] = round(km)
