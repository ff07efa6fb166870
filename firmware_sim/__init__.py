"""The telematics box (TCU) firmware, simulated: CAN and GNSS in, CBOR over MQTT out."""

from firmware_sim.errors import (
    ConfigError,
    InterfaceError,
    LifecycleError,
    NmeaError,
    PayloadError,
    StoreError,
    TcuError,
    UplinkError,
)

__all__ = [
    "ConfigError",
    "InterfaceError",
    "LifecycleError",
    "NmeaError",
    "PayloadError",
    "StoreError",
    "TcuError",
    "UplinkError",
]
