"""The cloud gateway: ingests the boxes' uploads from the broker and stores them."""

from gateway.errors import BrokerError, GatewayError, OptionError, StorageError

__all__ = ["BrokerError", "GatewayError", "OptionError", "StorageError"]
