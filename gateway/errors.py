"""The exceptions of :mod:`gateway`, one tree.

::

    GatewayError
     +-- StorageError     the database cannot be opened, migrated or written
     +-- BrokerError      a broker cannot be started, reached or subscribed to
     +-- OptionError      an option of the gateway is out of range (also a ValueError)
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error raised by :mod:`gateway`."""


class StorageError(GatewayError):
    """The database cannot be opened, migrated or written."""


class BrokerError(GatewayError):
    """A broker cannot be started, reached or subscribed to."""


class OptionError(GatewayError, ValueError):
    """An option of the gateway is out of range."""
