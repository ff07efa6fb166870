"""The vehicle network: DBC loading, the signal catalog and mapping, and a compiled decoder."""

from can_dbc.errors import CanDbcError, CaptureError, DbcError, EncodeError, MappingError

__all__ = ["CanDbcError", "CaptureError", "DbcError", "EncodeError", "MappingError"]
