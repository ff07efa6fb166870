"""Read CAN captures (candump ``.log``, Vector ``.asc`` and ``.blf``, PEAK ``.trc``, and
``.gz`` of each) through python-can's readers.

The reader is chosen by the file's suffix - the same readers ``can.LogReader`` dispatches
to (``CanutilsLogReader``, ``ASCReader``, ``BLFReader``, ``TRCReader``) - and given an open
file, so that the lines can be counted and bad ones reported:

- candump ``.log``: each line is checked before python-can parses it; a line that is not a
  candump frame is counted in :attr:`CaptureStats.bad_lines` (with its number) and skipped.
- ``.trc``: python-can itself skips a line it cannot parse and logs a warning; those
  warnings are counted as bad lines.
- ``.asc``: python-can skips lines that are not frames (comments, statistics, J1939TP); a
  frame line it cannot parse is counted as a bad line and skipped (python-can's loop skips a
  frame its parser returns as ``None``), and so is a frame line too short to split. The line
  after the header, which python-can's header read consumes, is given back when it is not
  the ``internal events logged`` line it expects.
- ``.blf``: the header states the file's size and its number of objects; both are kept in
  :class:`CaptureStats`, whose :attr:`~CaptureStats.shortfall` counts the objects not read as
  frames (a file cut short; or objects python-can does not read, as it yields only CAN and
  error frames) and :attr:`~CaptureStats.cut_short` says the file ends before its stated
  size. A corrupt object ends the read with a :class:`~can_dbc.errors.CaptureError`.
- a ``.gz`` that is corrupt or cut short ends the read with a
  :class:`~can_dbc.errors.CaptureError`.

A missing file or an unknown suffix is a :class:`~can_dbc.errors.CaptureError` at once.
"""

from __future__ import annotations

import gzip
import logging
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import can
from can.io.asc import ASC_MESSAGE_REGEX, ASCReader
from can.io.blf import BLFParseError, BLFReader
from can.io.canutils import CanutilsLogReader
from can.io.trc import TRCReader

from can_dbc.errors import CaptureError

__all__ = ["CAPTURE_SUFFIXES", "CaptureReader", "CaptureStats", "read_capture"]

_TEXT_SUFFIXES = (".log", ".asc", ".trc")
_BINARY_SUFFIXES = (".blf",)

#: The capture suffixes read (each also with ``.gz`` after it).
CAPTURE_SUFFIXES = tuple(sorted([*_TEXT_SUFFIXES, *_BINARY_SUFFIXES]))

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
    """What reading a capture found.

    ``frames`` read and ``bad_lines`` skipped (the first line numbers kept); for a BLF file,
    the object count and size its header declares, and the bytes there were.
    """

    frames: int = 0
    bad_lines: int = 0
    bad_line_numbers: list[int] = field(default_factory=list)
    declared_objects: int | None = None
    declared_bytes: int | None = None
    bytes_read: int | None = None

    def bad_line(self, number: int) -> None:
        """Count a bad line."""
        self.bad_lines += 1
        if len(self.bad_line_numbers) < _KEPT_BAD_LINES:
            self.bad_line_numbers.append(number)

    @property
    def shortfall(self) -> int:
        """Objects the header declares that were not read as frames (0 when none is stated)."""
        if self.declared_objects is None:
            return 0
        return max(0, self.declared_objects - self.frames)

    @property
    def cut_short(self) -> bool:
        """True when the file ends before the size its header declares."""
        if self.declared_bytes is None or self.bytes_read is None:
            return False
        return self.bytes_read < self.declared_bytes

    def problems(self) -> list[str]:
        """What the read lost, as sentences (empty when nothing)."""
        found = []
        if self.cut_short:
            found.append(
                f"cut short: {self.bytes_read} of the {self.declared_bytes} bytes its header "
                "declares"
            )
        if self.shortfall:
            found.append(
                f"{self.shortfall} of the {self.declared_objects} objects its header declares "
                "were not read as frames"
            )
        if self.bad_lines:
            found.append(f"{self.bad_lines} bad lines skipped")
        return found


def _candump_line(line: str) -> bool:
    return _CANDUMP_LINE.match(line) is not None


def _asc_line(line: str) -> bool:
    """False for a line python-can takes for a frame but would skip unsplit."""
    stripped = line.strip()
    return not ASC_MESSAGE_REGEX.match(stripped) or len(stripped.split(None, 2)) == 3


class _Lines:
    """A text file as python-can's readers iterate it, with line numbers and a check."""

    def __init__(
        self, file: IO[str], stats: CaptureStats, check: Callable[[str], bool] | None
    ) -> None:
        self._file = file
        self._stats = stats
        self._check = check
        self._pending: str | None = None
        self.number = 0
        self.last: str | None = None

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self._pending is not None:
            line, self._pending = self._pending, None
            self.number += 1
            return line
        while True:
            line = next(self._file)
            self.number += 1
            if self._check is None or not line.strip() or self._check(line):
                self.last = line
                return line
            self._stats.bad_line(self.number)

    def push_back(self, line: str) -> None:
        """Give the last line again on the next read."""
        self._pending = line
        self.number -= 1

    def close(self) -> None:
        self._file.close()


# The lines python-can's ASC header read consumes as header.
_ASC_HEADER_LINE = re.compile(
    r"date\s+\w+\s|base\s+(?:hex|dec)|//|(?:no)?\s*internal\s+events\s+logged", re.IGNORECASE
)

# What python-can's ASC frame parsers raise on a malformed frame line.
_ASC_FAULTS = (ValueError, IndexError, KeyError, TypeError, OverflowError)


class _SkippingASCReader(ASCReader):
    """python-can's ASC reader, counting and skipping the frame lines it cannot parse."""

    def __init__(self, file: _Lines, stats: CaptureStats) -> None:
        super().__init__(file)  # type: ignore[arg-type]
        self._lines = file
        self._stats = stats

    def _extract_header(self) -> None:
        """python-can's header read, which ends by consuming the first line after the header
        (meant to be "internal events logged"); any other line is given back to be read."""
        self._lines.last = None
        super()._extract_header()
        last = self._lines.last
        if last is not None and not _ASC_HEADER_LINE.match(last.strip()):
            self._lines.push_back(last)

    def _process_classic_can_frame(  # type: ignore[override]
        self, line: str, msg_kwargs: dict[str, Any]
    ) -> can.Message | None:
        try:
            return super()._process_classic_can_frame(line, msg_kwargs)
        except _ASC_FAULTS:
            self._stats.bad_line(self._lines.number)
            return None

    def _process_fd_can_frame(  # type: ignore[override]
        self, line: str, msg_kwargs: dict[str, Any]
    ) -> can.Message | None:
        try:
            return super()._process_fd_can_frame(line, msg_kwargs)
        except _ASC_FAULTS:
            self._stats.bad_line(self._lines.number)
            return None


class _CountedBytes:
    """A binary file that counts the bytes read from it."""

    def __init__(self, file: IO[bytes] | gzip.GzipFile) -> None:
        self._file = file
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self.count += len(data)
        return data

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
        if self.suffix not in CAPTURE_SUFFIXES:
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
            if self.suffix in _TEXT_SUFFIXES:
                yield from self._read_text()
            else:
                yield from self._read_binary()
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc

    def _text_reader(self, lines: _Lines) -> Iterator[can.Message]:
        if self.suffix == ".asc":
            return iter(_SkippingASCReader(lines, self.stats))
        reader = CanutilsLogReader if self.suffix == ".log" else TRCReader
        return iter(reader(lines))  # type: ignore[arg-type]

    def _read_text(self) -> Iterator[can.Message]:
        checks = {".log": _candump_line, ".asc": _asc_line}
        lines = _Lines(self._open_text(), self.stats, checks.get(self.suffix))
        handler = _ParseWarnings(self.stats, lines)
        source = logging.getLogger("can.io")
        source.addHandler(handler)
        try:
            for msg in self._text_reader(lines):
                self.stats.frames += 1
                yield msg
        except (ValueError, IndexError, KeyError, EOFError, zlib.error) as exc:
            raise CaptureError(f"{self.path}:{lines.number}: cannot parse: {exc}") from exc
        finally:
            source.removeHandler(handler)
            lines.close()

    def _read_binary(self) -> Iterator[can.Message]:
        file = _CountedBytes(self._open_binary())
        try:
            reader = BLFReader(file)  # type: ignore[arg-type]
            self.stats.declared_objects = reader.object_count
            self.stats.declared_bytes = reader.file_size
            for msg in reader:
                self.stats.frames += 1
                yield msg
        except (BLFParseError, struct.error, ValueError, EOFError, zlib.error) as exc:
            detail = str(exc) or type(exc).__name__
            raise CaptureError(
                f"{self.path}: corrupt after {self.stats.frames} frames: {detail}"
            ) from exc
        finally:
            self.stats.bytes_read = file.count
            file.close()


def read_capture(path: str | PathLike[str]) -> tuple[list[can.Message], CaptureStats]:
    """Every frame of a capture, in memory, and the counts of the read."""
    reader = CaptureReader(path)
    frames = list(reader)
    return frames, reader.stats
