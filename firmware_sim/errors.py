"""The exceptions of :mod:`firmware_sim`, one tree.

::

    TcuError
     +-- ConfigError      a configuration value that is missing, unknown or out of range
     +-- PayloadError     an uplink payload that does not decode or validate (``reason`` says why)
     +-- NmeaError        an NMEA sentence that is rejected (``reason`` says why)
     +-- StoreError       the durable queue (the box's flash) cannot be opened or written
     +-- UplinkError      the MQTT uplink cannot be set up
     +-- InterfaceError   a CAN interface or a GNSS port cannot be opened
     +-- LifecycleError   an object used before it was opened or after it was closed
"""

from __future__ import annotations


class TcuError(Exception):
    """Base of every error raised by :mod:`firmware_sim`."""


class ConfigError(TcuError):
    """A configuration value that is missing, unknown or out of range."""


class PayloadError(TcuError):
    """An uplink payload that cannot be decoded or does not validate."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class NmeaError(TcuError):
    """An NMEA sentence that is rejected."""

    def __init__(self, reason: str, sentence: str = "") -> None:
        super().__init__(f"{reason}: {sentence!r}" if sentence else reason)
        self.reason = reason
        self.sentence = sentence


class StoreError(TcuError):
    """The durable store-and-forward queue cannot be opened or written."""


class UplinkError(TcuError):
    """The MQTT uplink cannot be configured or connected."""


class InterfaceError(TcuError):
    """A CAN interface or a GNSS serial port cannot be opened."""


class LifecycleError(TcuError):
    """An object used in the wrong state of its lifecycle."""
