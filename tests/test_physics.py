"""The simulated car's physics in simulated time: motion, energy, charging, faults."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from firmware_sim.sim.drive import IGNITION, Drive, Route, city_drive, commute
from firmware_sim.sim.physics import (
    CABIN,
    CHARGE_RATE,
    CHARGING_STATE,
    CRASH,
    FUEL,
    LV_VOLTAGE,
    ODOMETER,
    PLUGGED,
    RANGE,
    SOC,
    SPEED,
    TIME_TO_COMPLETE,
    Energy,
    VehicleState,
)

ROUTE = Route(((48.9, 2.0), (48.9, 2.5)))
DISCONNECTED, IN_PROGRESS, STOPPED, FINISHED = 0, 1, 3, 4


def drive_of(profile: list[tuple[float, float]]) -> Drive:
    return Drive(duration_s=profile[-1][0], route=ROUTE, speed_profile=profile)


def run(
    state: VehicleState, drive: Drive, seconds: float, dt: float = 0.01, t0: float = 0.0
) -> list[float]:
    """Step the car for ``seconds``; the speeds it reported at each step."""
    speeds = []
    steps = round(seconds / dt)
    for i in range(1, steps + 1):
        state.step(t0 + i * dt, dt, drive)
        speeds.append(float(state.values[SPEED]))
    return speeds


def switched_on(
    energy: Energy = Energy.FUEL, *, soc_pct: float = 80.0, fuel_pct: float = 62.0
) -> VehicleState:
    state = VehicleState(energy, soc_pct=soc_pct, fuel_pct=fuel_pct)
    state.apply({IGNITION: 2})
    return state


profiles = st.lists(st.tuples(st.floats(1, 120), st.floats(0, 140)), min_size=1, max_size=8).map(
    lambda legs: (
        [(0.0, 0.0)] + [(sum(d for d, _ in legs[: i + 1]), v) for i, (_d, v) in enumerate(legs)]
    )
)


# -- motion ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(profiles, st.sampled_from(list(Energy)), st.sampled_from([0.01, 0.02, 0.1]))
def test_odometer_never_decreases_and_distance_is_the_integral_of_speed(
    profile: list[tuple[float, float]], energy: Energy, dt: float
) -> None:
    state = switched_on(energy)
    drive = drive_of(profile)
    odometer = float(state.values[ODOMETER])
    integral_m = 0.0
    previous = 0.0
    for i in range(1, round(profile[-1][0] / dt) + 1):
        state.step(i * dt, dt, drive)
        now = float(state.values[ODOMETER])
        assert now >= odometer
        odometer = now
        speed = float(state.values[SPEED])
        assert 0 <= speed <= 140.01
        integral_m += (previous + speed) / 2 / 3.6 * dt
        previous = speed
    assert state.distance_m == pytest.approx(integral_m, rel=1e-3, abs=0.5)
    assert (odometer - 48_211.0) * 1000 == pytest.approx(state.distance_m, rel=1e-6, abs=1e-3)


def test_the_car_accelerates_and_brakes_within_its_limits() -> None:
    state = switched_on()
    drive = drive_of([(0.0, 100.0), (60.0, 100.0), (60.1, 0.0), (120.0, 0.0)])
    speeds = run(state, drive, 120)
    deltas = [b - a for a, b in itertools.pairwise(speeds)]
    assert max(deltas) <= 3.5 * 3.6 * 0.01 + 0.011
    assert min(deltas) >= -6.0 * 3.6 * 0.01 - 0.011
    assert speeds[5999] == 100.0 and speeds[-1] == 0.0


def test_an_ignition_off_car_does_not_move() -> None:
    state = VehicleState()
    run(state, drive_of([(0.0, 50.0), (30.0, 50.0)]), 30)
    assert state.distance_m == 0.0 and state.values[SPEED] == 0.0


# -- energy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kmh", [30.0, 50.0, 90.0, 130.0])
def test_fuel_used_follows_distance_and_speed(kmh: float) -> None:
    state = switched_on()
    drive = drive_of([(0.0, kmh), (4000.0, kmh)])
    run(state, drive, 60)  # up to speed
    litres, km = state.fuel_l, state.distance_m / 1000
    run(state, drive, 600, t0=60)
    used = litres - state.fuel_l
    assert state.fuel_use is not None
    expected = state.fuel_use.used(state.distance_m / 1000 - km, kmh, 600)
    assert used == pytest.approx(expected, rel=0.01)
    assert used == pytest.approx(state.fuel_used_l - (62.0 / 100 * 50 - litres), rel=1e-6)


def test_faster_costs_more_per_km_and_idling_costs_by_the_hour() -> None:
    per_km = []
    for kmh in (50.0, 90.0, 130.0):
        state = switched_on()
        drive = drive_of([(0.0, kmh), (4000.0, kmh)])
        run(state, drive, 60)
        litres, metres = state.fuel_l, state.distance_m
        run(state, drive, 300, t0=60)
        per_km.append((litres - state.fuel_l) / (state.distance_m - metres) * 1000)
    assert per_km == sorted(per_km)
    idle = switched_on()
    run(idle, drive_of([(0.0, 0.0), (3600.0, 0.0)]), 3600, dt=0.1)
    assert idle.fuel_used_l == pytest.approx(0.8, rel=1e-3)  # 0.8 l/h
    assert idle.distance_m == 0.0


@settings(max_examples=40, deadline=None)
@given(profiles, st.sampled_from([Energy.ELECTRIC, Energy.HYBRID]), st.floats(0, 100))
def test_state_of_charge_stays_within_0_and_100(
    profile: list[tuple[float, float]], energy: Energy, soc: float
) -> None:
    state = switched_on(energy, soc_pct=soc, fuel_pct=5.0)
    drive = drive_of(profile)
    previous = float(state.values[SOC])
    for i in range(1, round(profile[-1][0] / 0.1) + 1):
        state.step(i * 0.1, 0.1, drive)
        soc_now = float(state.values[SOC])
        assert 0.0 <= soc_now <= 100.0
        assert soc_now <= previous  # no charging while driving
        previous = soc_now
        assert 0.0 <= float(state.values.get(FUEL, 0.0)) <= 100.0


def test_an_electric_cars_charge_falls_with_the_energy_it_uses() -> None:
    state = switched_on(Energy.ELECTRIC)
    run(state, commute(20, seed=3), 1200, dt=0.05)
    used = (80.0 - float(state.values[SOC])) / 100 * state.battery_kwh
    assert used == pytest.approx(state.energy_used_kwh, rel=1e-6)
    km = state.distance_m / 1000
    assert 8 <= state.energy_used_kwh / km * 100 <= 25  # kWh per 100 km
    assert not state.has(FUEL)


def test_a_hybrid_drives_on_electricity_down_to_its_reserve_then_on_fuel() -> None:
    state = switched_on(Energy.HYBRID, soc_pct=30.0)
    drive = drive_of([(0.0, 90.0), (4000.0, 90.0)])
    run(state, drive, 60)
    assert state.fuel_used_l == 0.0 and state.energy_used_kwh > 0
    assert float(state.values["Vehicle.Powertrain.CombustionEngine.Speed"]) == 0.0
    run(state, drive, 900, t0=60)
    assert float(state.values[SOC]) == pytest.approx(state.hybrid_reserve_pct, abs=0.2)
    assert state.fuel_used_l > 0
    assert float(state.values["Vehicle.Powertrain.CombustionEngine.Speed"]) > 800


def test_a_car_out_of_energy_stops() -> None:
    state = switched_on(fuel_pct=0.05)
    drive = drive_of([(0.0, 50.0), (600.0, 50.0)])
    run(state, drive, 600, dt=0.05)
    assert state.values[FUEL] == 0.0 and state.values[SPEED] == 0.0
    assert 0 < state.distance_m < 1000


def test_the_step_size_does_not_change_the_totals() -> None:
    fine, coarse = switched_on(), switched_on()
    drive = commute(10, seed=1)
    fine_state = run(fine, drive, 600, dt=0.01)
    coarse_state = run(coarse, drive, 600, dt=0.1)
    assert fine_state and coarse_state
    assert fine.distance_m == pytest.approx(coarse.distance_m, rel=0.01)
    assert fine.fuel_used_l == pytest.approx(coarse.fuel_used_l, rel=0.01)


def test_range_follows_the_energy_left() -> None:
    diesel = VehicleState(fuel_pct=50.0)
    assert diesel.values[RANGE] == round(25 / 5.5 * 100)
    electric = VehicleState(Energy.ELECTRIC, soc_pct=50.0)
    assert electric.values[RANGE] == round(25 / 16 * 100)


def test_refuel_fills_the_tank() -> None:
    state = VehicleState(fuel_pct=10.0)
    assert state.values["Vehicle.Alert.LowFuel"] == 1  # below 15 %: the lamp is lit
    state.refuel(90)
    assert state.values[FUEL] == 90.0 and state.values["Vehicle.Alert.LowFuel"] == 0
    state.refuel(50)  # no lower than it is
    assert state.values[FUEL] == 90.0
    for bad in (0, 101, float("nan")):
        with pytest.raises(ValueError, match="refuel"):
            state.refuel(bad)
    with pytest.raises(ValueError, match="no fuel tank"):
        VehicleState(Energy.ELECTRIC).refuel(50)


# -- charging -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([Energy.ELECTRIC, Energy.HYBRID]),
    st.floats(1.4, 50.0),
    st.integers(1, 240),
    st.floats(0.0, 90.0),
)
def test_charging_raises_the_charge_by_power_times_time_over_capacity(
    energy: Energy, kw: float, minutes: int, soc: float
) -> None:
    state = VehicleState(energy, soc_pct=soc)
    expected = kw * minutes / 60 / state.battery_kwh * 100
    assume(soc + expected < 99.0)
    state.plug_in(kw)
    state.start_charging()
    assert state.values[CHARGING_STATE] == IN_PROGRESS
    run(state, drive_of([(0.0, 0.0), (1.0, 0.0)]), minutes * 60, dt=1.0)
    assert float(state.values[SOC]) - soc == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert state.energy_charged_kwh == pytest.approx(kw * minutes / 60, rel=1e-6)
    remaining_kwh = (100 - float(state.values[SOC])) / 100 * state.battery_kwh
    assert state.values[TIME_TO_COMPLETE] == pytest.approx(remaining_kwh / kw * 60, abs=1)
    assert state.electric_use is not None
    rate = kw / state.electric_use.rated_per_100km * 100
    assert state.values[CHARGE_RATE] == pytest.approx(rate, abs=0.06)


def test_charging_states_from_plug_to_full() -> None:
    state = VehicleState(Energy.ELECTRIC, soc_pct=97.0)
    idle = drive_of([(0.0, 0.0), (1.0, 0.0)])
    assert (state.values[CHARGING_STATE], state.values[PLUGGED]) == (DISCONNECTED, 0)
    state.plug_in(11.0)
    assert (state.values[CHARGING_STATE], state.values[PLUGGED]) == (STOPPED, 1)
    state.start_charging()
    assert state.charging and state.values[CHARGING_STATE] == IN_PROGRESS
    run(state, idle, 60, dt=1.0)
    state.apply({IGNITION: 2})  # switched on: charging pauses
    soc = state.values[SOC]
    run(state, idle, 60, dt=1.0, t0=60)
    assert state.values[CHARGING_STATE] == STOPPED and state.values[SOC] <= soc
    state.apply({IGNITION: 0})
    run(state, idle, 3600, dt=1.0, t0=120)
    assert state.values[SOC] == 100.0
    assert state.values[CHARGING_STATE] == FINISHED and state.values[TIME_TO_COMPLETE] == 0
    assert state.values[CHARGE_RATE] == 0.0
    state.unplug()
    assert (state.values[CHARGING_STATE], state.values[PLUGGED]) == (DISCONNECTED, 0)


def test_stopping_a_charge_leaves_it_stopped() -> None:
    state = VehicleState(Energy.HYBRID, soc_pct=20.0)
    state.plug_in()
    state.start_charging()
    run(state, drive_of([(0.0, 0.0), (1.0, 0.0)]), 600, dt=1.0)
    state.stop_charging()
    soc = state.values[SOC]
    run(state, drive_of([(0.0, 0.0), (1.0, 0.0)]), 600, dt=1.0, t0=600)
    assert state.values[CHARGING_STATE] == STOPPED and state.values[SOC] == soc
    assert state.values[TIME_TO_COMPLETE] == 0


def test_a_plugged_in_car_does_not_drive_away() -> None:
    state = switched_on(Energy.ELECTRIC)
    state.plug_in()
    drive = drive_of([(0.0, 50.0), (120.0, 50.0)])
    run(state, drive, 60)
    assert state.distance_m == 0.0
    state.apply({PLUGGED: 0})  # the cable signal unplugs as unplug() does
    run(state, drive, 60, t0=60)
    assert state.distance_m > 0


def test_a_diesel_has_nothing_to_charge() -> None:
    state = VehicleState()
    for action in (state.plug_in, state.unplug, state.start_charging, state.stop_charging):
        with pytest.raises(ValueError, match="no traction battery"):
            action()
    with pytest.raises(ValueError, match="power"):
        VehicleState(Energy.ELECTRIC).plug_in(0)


# -- faults ---------------------------------------------------------------------------------


def test_a_crash_stops_the_car_within_a_second() -> None:
    state = switched_on()
    drive = city_drive(10)
    run(state, drive, 300)
    assert float(state.values[SPEED]) > 40
    state.crash()
    assert state.values[CRASH] == 1 and state.crashed
    speeds = run(state, drive, 5, t0=300)
    assert speeds[99] == 0.0 and speeds[-1] == 0.0


def test_a_weak_12v_battery() -> None:
    state = VehicleState()
    assert state.values[LV_VOLTAGE] == 12.6
    state.set_low_battery()
    assert float(state.values[LV_VOLTAGE]) < 11.8
    state.apply({IGNITION: 3})
    assert state.values[LV_VOLTAGE] == 14.2  # the alternator charges it
    state.apply({IGNITION: 0})
    assert float(state.values[LV_VOLTAGE]) < 11.8


@pytest.mark.parametrize("name", ["TirePressure", "Vehicle.Alert.TirePressure"])
def test_alert_lamps(name: str) -> None:
    state = VehicleState()
    state.alert(name)
    assert state.values["Vehicle.Alert.TirePressure"] == 1
    state.alert(name, on=False)
    assert state.values["Vehicle.Alert.TirePressure"] == 0
    state.alert("LowFuel")
    assert state.values["Vehicle.Alert.LowFuel"] == 1
    with pytest.raises(ValueError, match=r"no Vehicle\.Alert\.Nonsense"):
        state.alert("Nonsense")
    with pytest.raises(ValueError, match=r"electric car has no Vehicle\.Alert\.OilPressure"):
        VehicleState(Energy.ELECTRIC).alert("OilPressure")


@pytest.mark.parametrize("dt", [0.01, 1.0])
def test_preconditioning_brings_the_cabin_to_its_target(dt: float) -> None:
    state = VehicleState(Energy.ELECTRIC, soc_pct=80.0)
    state.values[CABIN] = 5.0
    state.start_preconditioning(21.0)
    run(state, drive_of([(0.0, 0.0), (1.0, 0.0)]), 1800, dt=dt)  # three time constants
    # 21 - 16 * e^-3 = 20.2: small steps add up whatever the step size.
    assert 20.0 < float(state.values[CABIN]) < 20.5
