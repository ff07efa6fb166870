"""The CBOR uplink payload: model, encoder and validating decoder.

The wire format is described in ``firmware_sim/uplink.cddl`` (RFC 8610).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "FORMAT_VERSION",
    "Privacy",
    "Series",
    "Trigger",
    "Uplink",
    "decode_uplink",
    "encode_uplink",
]

FORMAT_VERSION = 1


class Trigger(enum.IntEnum):
    """Why the box uploaded."""

    PERIODIC = 0
    IGNITION_ON = 1
    IGNITION_OFF = 2
    DOOR = 3
    CRASH = 4
    ALERT = 5
    PRIVACY = 6
    CONDITION = 7
    REQUEST = 8


class Privacy(enum.IntEnum):
    """The driver's privacy setting, as the Web API names it."""

    NONE = 0  # data and location
    GEOLOCATION = 1  # data, no location
    FULL = 2  # nothing refreshed


@dataclass(frozen=True, slots=True)
class Series:
    """The samples of one signal: integer mantissas at millisecond offsets.

    ``times`` are offsets in ms from the payload's ``base_time_ms`` (non-decreasing);
    a value is ``mantissa * 10**exp``.
    """

    signal_id: int
    exp: int
    times: tuple[int, ...]
    mantissas: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Uplink:
    """One upload of the box."""

    vin: str
    seq: int
    base_time_ms: int
    trigger: Trigger
    privacy: Privacy
    series: tuple[Series, ...]
    boot: int = 0
    evicted: int = 0
