"""The exceptions of :mod:`gateway`, one tree.

::

    GatewayError
     +-- StorageError     the database cannot be opened, migrated or written
     +-- BrokerError      a broker cannot be started, reached or subscribed to
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error raised by :mod:`gateway`."""


class StorageError(GatewayError):
    """The database cannot be opened, migrated or written."""


class BrokerError(GatewayError):
    """A broker cannot be started, reached or subscribed to."""
