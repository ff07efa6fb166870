"""The simulated car's physical state: speed integrates into distance, position and energy."""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping

from firmware_sim.sim.drive import IGNITION, Drive

__all__ = ["Energy", "VehicleState"]


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

# Signals that only exist on a car with a combustion engine, or with a traction battery.
COMBUSTION_ONLY = frozenset(
    {
        RPM,
        COOLANT,
        OIL,
        FUEL,
        "Vehicle.Alert.LowFuel",
        "Vehicle.Alert.OilPressure",
        "Vehicle.Alert.CoolantTemperature",
    }
)
ELECTRIC_ONLY = frozenset(
    {
        SOC,
        "Vehicle.Powertrain.TractionBattery.Charging.ChargingState",
        "Vehicle.Powertrain.TractionBattery.Charging.IsChargingCableConnected",
        "Vehicle.Powertrain.TractionBattery.Charging.TimeToComplete",
        "Vehicle.Powertrain.TractionBattery.Charging.ChargeRate",
    }
)

_GEAR_TOP_KMH = (0.0, 20.0, 35.0, 55.0, 75.0, 95.0, 500.0)
_RATIO_RPM_PER_KMH = (0.0, 110.0, 70.0, 48.0, 37.0, 30.0, 25.0)


class VehicleState:
    """Every logical signal of the car (catalog names), advanced by :meth:`step`."""

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
            "Vehicle.Safety.CrashDetected": 0,
            LV_VOLTAGE: 12.6,
            LV_SOC: 86.0,
            "Vehicle.Cabin.HVAC.IsAirConditioningActive": 0,
            GEAR: 0,
            OUTSIDE: outside_c,
            CABIN: outside_c + 2.0,
            RANGE: 0.0,
            "Vehicle.Body.Lights.IsFlashing": 0,
            "Vehicle.Body.Horn.IsActive": 0,
            "Vehicle.Cabin.HVAC.Preconditioning.State": 0,
            "Vehicle.Service.DaysToService": 212,
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
                    "Vehicle.Alert.LowFuel": 0,
                    "Vehicle.Alert.OilPressure": 0,
                    "Vehicle.Alert.CoolantTemperature": 0,
                }
            )
        if energy is not Energy.FUEL:
            self.values.update(
                {
                    SOC: soc_pct,
                    "Vehicle.Powertrain.TractionBattery.Charging.ChargingState": 0,
                    "Vehicle.Powertrain.TractionBattery.Charging.IsChargingCableConnected": 0,
                    "Vehicle.Powertrain.TractionBattery.Charging.TimeToComplete": 0,
                    "Vehicle.Powertrain.TractionBattery.Charging.ChargeRate": 0.0,
                }
            )
        self.distance_m = 0.0  # along the route
        self._update_range()

    def has(self, name: str) -> bool:
        """Whether this car has the signal at all (a diesel has no traction battery)."""
        return name in self.values

    def apply(self, changes: Mapping[str, float | int]) -> None:
        """Set signals as the driver or a fault would."""
        for name, value in changes.items():
            if name in self.values:
                self.values[name] = value

    @property
    def ignition_on(self) -> bool:
        """Whether the car is switched on."""
        return self.values[IGNITION] in (2, 3)

    def step(self, t_s: float, dt_s: float, drive: Drive) -> None:
        """Advance the physics by ``dt_s`` to ``t_s`` following the drive's speed profile."""
        v = self.values
        target = drive.speed_at(t_s) if self.ignition_on else 0.0
        previous = float(v[SPEED])
        # A car cannot follow any profile: at most 3.5 m/s2 forward and 6 m/s2 braking.
        limit_up, limit_down = 3.5 * 3.6 * dt_s, 6.0 * 3.6 * dt_s
        speed = min(max(target, previous - limit_down), previous + limit_up)
        speed = max(0.0, speed)
        v[SPEED] = round(speed, 2)
        v[ACCEL] = round((speed - previous) / 3.6 / dt_s, 2) if dt_s > 0 else 0.0
        metres = (previous + speed) / 2 / 3.6 * dt_s
        self.distance_m += metres
        v[ODOMETER] = float(v[ODOMETER]) + metres / 1000
        v[SERVICE_KM] = max(0.0, float(v[SERVICE_KM]) - metres / 1000)
        gear = 0
        if self.ignition_on and speed > 0.5:
            gear = next(i for i, top in enumerate(_GEAR_TOP_KMH) if i and speed <= top)
        v[GEAR] = gear
        running = self.ignition_on
        if self.energy is not Energy.ELECTRIC:
            rpm = 0.0
            if running:
                rpm = max(800.0, speed * _RATIO_RPM_PER_KMH[gear]) + self._random.uniform(-15, 15)
            v[RPM] = round(rpm, 1)
            warm = 90.0 if running else float(v[OUTSIDE])
            v[COOLANT] = float(v[COOLANT]) + (warm - float(v[COOLANT])) * min(1.0, dt_s / 240)
            v[OIL] = float(v[OIL]) + (warm + 5 - float(v[OIL])) * min(1.0, dt_s / 420)
            litres_per_s = (0.00025 + 0.0000045 * speed) if running else 0.0
            v[FUEL] = max(0.0, float(v[FUEL]) - litres_per_s * dt_s / 50 * 100)
        if self.energy is not Energy.FUEL:
            kwh = (0.0004 * dt_s + metres / 1000 * 0.16) if running else 0.0
            v[SOC] = max(0.0, float(v[SOC]) - kwh / 50 * 100)
        v[LV_VOLTAGE] = 14.2 if running else 12.6
        self._update_range()

    def _update_range(self) -> None:
        v = self.values
        km = 0.0
        if FUEL in v:
            km += float(v[FUEL]) / 100 * 50 / 5.5 * 100
        if SOC in v:
            km += float(v[SOC]) / 100 * 50 / 16 * 100
        v[RANGE] = round(km)
