"""Read CAN captures (candump ``.log``, Vector ``.asc`` and ``.blf``, PEAK ``.trc``, and
``.gz`` of each) through python-can's readers.

The reader is chosen by the file's suffix - the same readers ``can.LogReader`` dispatches
to (``CanutilsLogReader``, ``ASCReader``, ``BLFReader``, ``TRCReader``) - and given an open
file, so that the lines can be counted and bad ones reported:

- candump ``.log``: each line is checked before python-can parses it; a line that is not a
  candump frame is counted in :attr:`CaptureStats.bad_lines` (with its number) and skipped.
- ``.trc``: python-can itself skips a line it cannot parse and logs a warning; those
  warnings are counted as bad lines.
- ``.asc``: python-can skips lines that are not frames (comments, statistics, J1939TP);
  a frame line it fails on ends the read with a :class:`~can_dbc.errors.CaptureError`
  naming the line.
- ``.blf``: a corrupt object ends the read with a :class:`~can_dbc.errors.CaptureError`.

A missing file or an unknown suffix is a :class:`~can_dbc.errors.CaptureError` at once.
"""

from __future__ import annotations

import gzip
import logging
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import can
from can.io.asc import ASCReader
from can.io.blf import BLFParseError, BLFReader
from can.io.canutils import CanutilsLogReader
from can.io.trc import TRCReader

from can_dbc.errors import CaptureError

__all__ = ["CAPTURE_SUFFIXES", "CaptureReader", "CaptureStats", "read_capture"]

_TEXT_READERS: dict[str, type[Any]] = {
    ".log": CanutilsLogReader,
    ".asc": ASCReader,
    ".trc": TRCReader,
}
_BINARY_READERS: dict[str, type[Any]] = {".blf": BLFReader}

#: The capture suffixes read (each also with ``.gz`` after it).
CAPTURE_SUFFIXES = tuple(sorted([*_TEXT_READERS, *_BINARY_READERS]))

# One candump -L line: "(timestamp) channel id#data [R|T]" with classic, remote and FD forms.
_CANDUMP_LINE = re.compile(
    r"^\s*\(\d+(?:\.\d+)?\)\s+\S+\s+"
    r"(?:[0-9A-Fa-f]{3}|[0-9A-Fa-f]{8})#"
    r"(?:(?:[0-9A-Fa-f]{2}){0,8}|[Rr]\d?|#[0-9](?:[0-9A-Fa-f]{2}){0,64})"
    r"(?:\s+[RrTt])?\s*$"
)

_KEPT_BAD_LINES = 20


@dataclass
class CaptureStats:
    """What reading a capture found: frames read and bad lines skipped (first few numbers)."""

    frames: int = 0
    bad_lines: int = 0
    bad_line_numbers: list[int] = field(default_factory=list)

    def bad_line(self, number: int) -> None:
        """Count a bad line."""
        self.bad_lines += 1
        if len(self.bad_line_numbers) < _KEPT_BAD_LINES:
            self.bad_line_numbers.append(number)


class _Lines:
    """A text file as python-can's readers iterate it, with line numbers and a check."""

    def __init__(self, file: IO[str], stats: CaptureStats, pattern: re.Pattern[str] | None) -> None:
        self._file = file
        self._stats = stats
        self._pattern = pattern
        self.number = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        while True:
            line = next(self._file)
            self.number += 1
            if self._pattern is None or not line.strip() or self._pattern.match(line):
                return line
            self._stats.bad_line(self.number)

    def close(self) -> None:
        self._file.close()


class _ParseWarnings(logging.Handler):
    """Counts python-can's "failed to parse" warnings as bad lines while a file is read."""

    def __init__(self, stats: CaptureStats, lines: _Lines) -> None:
        super().__init__(logging.WARNING)
        self._stats = stats
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        if "Failed to parse" in record.getMessage():
            self._stats.bad_line(self._lines.number)


def _split_suffix(path: Path) -> tuple[str, bool]:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        return (suffixes[-2] if len(suffixes) >= 2 else ""), True
    return (suffixes[-1] if suffixes else ""), False


class CaptureReader:
    """The frames of one capture file, read lazily; :attr:`stats` counts what was read."""

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = Path(path)
        self.suffix, self.compressed = _split_suffix(self.path)
        if self.suffix not in _TEXT_READERS and self.suffix not in _BINARY_READERS:
            known = " ".join(CAPTURE_SUFFIXES)
            raise CaptureError(
                f"{self.path}: unknown capture format {self.path.suffix!r} "
                f"(known: {known}, each optionally .gz)"
            )
        if not self.path.is_file():
            raise CaptureError(f"{self.path}: no such capture file")
        self.stats = CaptureStats()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def _open_text(self) -> IO[str]:
        if self.compressed:
            return gzip.open(self.path, "rt", encoding="utf-8", errors="replace")
        return self.path.open("r", encoding="utf-8", errors="replace")

    def _open_binary(self) -> IO[bytes] | gzip.GzipFile:
        if self.compressed:
            return gzip.open(self.path, "rb")
        return self.path.open("rb")

    def __iter__(self) -> Iterator[can.Message]:
        try:
            if self.suffix in _TEXT_READERS:
                yield from self._read_text()
            else:
                yield from self._read_binary()
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc

    def _read_text(self) -> Iterator[can.Message]:
        pattern = _CANDUMP_LINE if self.suffix == ".log" else None
        lines = _Lines(self._open_text(), self.stats, pattern)
        handler = _ParseWarnings(self.stats, lines)
        source = logging.getLogger("can.io")
        source.addHandler(handler)
        try:
            for msg in _TEXT_READERS[self.suffix](lines):
                self.stats.frames += 1
                yield msg
        except (ValueError, IndexError, KeyError, EOFError, zlib.error) as exc:
            raise CaptureError(f"{self.path}:{lines.number}: cannot parse: {exc}") from exc
        finally:
            source.removeHandler(handler)
            lines.close()

    def _read_binary(self) -> Iterator[can.Message]:
        file = self._open_binary()
        try:
            for msg in _BINARY_READERS[self.suffix](file):
                self.stats.frames += 1
                yield msg
        except (BLFParseError, struct.error, ValueError, EOFError, zlib.error) as exc:
            detail = str(exc) or type(exc).__name__
            raise CaptureError(
                f"{self.path}: corrupt after {self.stats.frames} frames: {detail}"
            ) from exc
        finally:
            file.close()


def read_capture(path: str | PathLike[str]) -> tuple[list[can.Message], CaptureStats]:
    """Every frame of a capture, in memory, and the counts of the read."""
    reader = CaptureReader(path)
    frames = list(reader)
    return frames, reader.stats
