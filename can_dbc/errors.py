"""The exceptions of :mod:`can_dbc`, one tree.

::

    CanDbcError
     +-- DbcError          a network file that cannot be loaded (names the file, line, fault)
     +-- MappingError      a signal mapping or catalog file at fault (names the file and entry)
     +-- CaptureError      a capture file that cannot be read
     +-- EncodeError       a value that cannot be put into a frame
"""

from __future__ import annotations


class CanDbcError(Exception):
    """Base of every error raised by :mod:`can_dbc`."""


class DbcError(CanDbcError):
    """A network description (DBC, KCD, ARXML, SYM) that cannot be loaded."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line
        self.reason = message


class MappingError(CanDbcError):
    """A catalog or signal-mapping file that is malformed or names what does not exist."""


class CaptureError(CanDbcError):
    """A capture file that cannot be opened or parsed."""


class EncodeError(CanDbcError):
    """A value that cannot be encoded into a frame."""
