"""The GNSS receiver on a serial port: a non-blocking NMEA reader and the simulated car's writer.

:class:`GnssReader` opens any pyserial URL (``loop://``, a pty path, ``/dev/ttyUSB0``,
``socket://host:port``) or adopts a port object that is already open, and :meth:`~GnssReader.poll`
returns the fixes whose sentences have arrived. Bad data is never raised: every line ends up
in one counter of :class:`GnssStats`. Only opening can fail, with
:class:`~firmware_sim.errors.InterfaceError`; a read error of a port that went away is counted
too, so a box keeps running without its receiver.

Lifecycle (:class:`State`): a reader made from a URL starts ``UNOPENED`` and is opened by
:meth:`~GnssReader.open` or ``with``; one made from an open port object starts ``OPENED``
and leaves that port to its owner. :meth:`~GnssReader.close` may be called again; any other
call out of order raises :class:`~firmware_sim.errors.LifecycleError`.
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import serial

from firmware_sim.errors import InterfaceError, LifecycleError, NmeaError
from firmware_sim.nmea import Fix, FixAssembler, format_gga, format_rmc, parse_sentence

__all__ = ["MAX_LINE_BYTES", "GnssReader", "GnssSource", "GnssStats", "State"]

MAX_LINE_BYTES = 256
"""A line still without an end after this many bytes is dropped (an overrun)."""
_READ_CHUNK = 4096
_MAX_READ_PER_POLL = 64 * 1024  # the rest waits for the next poll


class State(enum.Enum):
    """Where a reader or writer is in its life."""

    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


@dataclass
class GnssStats:
    """What a :class:`GnssReader` has seen.

    ``sentences`` counts the well-formed sentences of any type, of which ``ignored`` were of
    other types than RMC and GGA and ``no_fix`` reported no fix. Rejected lines count in
    ``bad_checksum``, ``no_checksum``, ``malformed`` or ``overruns`` (longer than a sentence
    may be, or than :data:`MAX_LINE_BYTES` without an end). Garbage before the ``$`` of a
    sentence counts as ``malformed`` and the sentence after it is still read.
    """

    bytes: int = 0
    lines: int = 0
    sentences: int = 0
    fixes: int = 0
    ignored: int = 0
    no_fix: int = 0
    bad_checksum: int = 0
    no_checksum: int = 0
    malformed: int = 0
    overruns: int = 0
    read_errors: int = 0


def _open(port: str, baudrate: int, what: str) -> serial.SerialBase:
    try:
        return serial.serial_for_url(port, baudrate=baudrate, timeout=0)
    except (serial.SerialException, ValueError, OSError) as exc:
        raise InterfaceError(f"cannot open the {what} port {port!r}: {exc}") from exc


class _Port:
    """The shared lifecycle of a reader and a writer over one serial port."""

    _what = "GNSS"

    def __init__(self, port: str | serial.SerialBase, baudrate: int = 9600) -> None:
        self._url = port if isinstance(port, str) else None
        self._baudrate = baudrate
        self._port: serial.SerialBase | None = None if isinstance(port, str) else port
        self._owned = isinstance(port, str)
        self.state = State.UNOPENED if isinstance(port, str) else State.OPENED

    def open(self) -> None:
        """Open the port of the URL given; :class:`InterfaceError` when it cannot be opened."""
        if self.state is not State.UNOPENED or self._url is None:
            raise LifecycleError(f"{type(self).__name__} is {self.state.value}: cannot open it")
        self._port = _open(self._url, self._baudrate, self._what)
        self.state = State.OPENED

    def close(self) -> None:
        """Close the port if this object opened it; closing again does nothing."""
        if self.state is State.OPENED and self._owned and self._port is not None:
            with contextlib.suppress(serial.SerialException, OSError):  # went away: closed
                self._port.close()
        self.state = State.CLOSED

    def _opened(self) -> serial.SerialBase:
        if self.state is not State.OPENED or self._port is None:
            raise LifecycleError(f"{type(self).__name__} is {self.state.value}, not opened")
        return self._port

    def __enter__(self) -> Self:
        if self.state is State.UNOPENED:
            self.open()
        elif self.state is State.CLOSED:
            raise LifecycleError(f"{type(self).__name__} is closed: cannot enter it")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class GnssReader(_Port):
    """Reads NMEA from a serial port without blocking and turns RMC and GGA into fixes."""

    def __init__(self, port: str | serial.SerialBase, baudrate: int = 9600) -> None:
        super().__init__(port, baudrate)
        self.stats = GnssStats()
        self.last_error = ""
        self._buffer = bytearray()
        self._discarding = False  # inside an over-long line: drop up to its end
        self._assembler = FixAssembler()

    def poll(self) -> list[Fix]:
        """The fixes completed by whatever the port has now; never blocks, never raises on data.

        A fix is returned once both RMC and GGA of its epoch are in (or only the one the
        receiver sends), so a fix may wait for the next epoch's first sentence.
        """
        port = self._opened()
        fixes: list[Fix] = []
        total = 0
        while total < _MAX_READ_PER_POLL:
            try:
                if port.timeout == 0:
                    chunk = port.read(_READ_CHUNK)
                else:  # an adopted port that may block: read only what is there
                    waiting = port.in_waiting
                    chunk = port.read(min(waiting, _READ_CHUNK)) if waiting else b""
            except (serial.SerialException, OSError) as exc:
                self.stats.read_errors += 1
                self.last_error = str(exc)
                break
            if not chunk:
                break
            total += len(chunk)
            fixes += self.feed(chunk)
        return fixes

    def feed(self, data: bytes) -> list[Fix]:
        """Process bytes as if read from the port (the sans-I/O core of :meth:`poll`)."""
        self.stats.bytes += len(data)
        buffer = self._buffer
        buffer += data.replace(b"\r", b"\n")
        fixes: list[Fix] = []
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            if self._discarding:
                self._discarding = False
            elif end > start:
                fixes += self._line(bytes(buffer[start:end]))
            start = end + 1
        del buffer[:start]
        if len(buffer) > MAX_LINE_BYTES:
            if not self._discarding:
                self.stats.overruns += 1
            self._discarding = True
            buffer.clear()
        return fixes

    def flush(self) -> list[Fix]:
        """The fix of the last epoch if it is still waiting for a sentence."""
        return self._assembler.flush()

    def _line(self, line: bytes) -> list[Fix]:
        stats = self.stats
        stats.lines += 1
        dollar = line.rfind(b"$")  # '$' only starts a sentence: resynchronise on the last one
        if dollar < 0:
            if line.strip():
                stats.malformed += 1
            return []
        if dollar > 0:
            if line[:dollar].strip():
                stats.malformed += 1  # the garbage (or a broken sentence) before it
            line = line[dollar:]
        try:
            sentence = parse_sentence(line)
        except NmeaError as exc:
            if exc.reason == "too_long":
                stats.overruns += 1
            elif exc.reason == "bad_checksum":
                stats.bad_checksum += 1
            elif exc.reason == "no_checksum":
                stats.no_checksum += 1
            else:
                stats.malformed += 1
            return []
        stats.sentences += 1
        if sentence is None:
            stats.ignored += 1
            return []
        if not sentence.valid:
            stats.no_fix += 1
        fixes = self._assembler.feed(sentence)
        stats.fixes += len(fixes)
        return fixes


class GnssSource(_Port):
    """The simulated car's receiver: writes each fix as an RMC and a GGA sentence."""

    _what = "GNSS source"

    def __init__(
        self, port: str | serial.SerialBase, baudrate: int = 9600, talker: str = "GN"
    ) -> None:
        super().__init__(port, baudrate)
        self.talker = talker
        self.sentences = 0
        self.write_errors = 0
        self.last_error = ""

    def write_fix(self, fix: Fix) -> None:
        """Write ``fix`` as RMC then GGA, each ending with CR LF."""
        self.write_sentence(format_rmc(fix, self.talker))
        self.write_sentence(format_gga(fix, self.talker))

    def write_sentence(self, sentence: str | bytes) -> None:
        """Write one line as it is, adding CR LF (also for corrupt lines in tests).

        A port that fails is counted in ``write_errors``: the car drives on without it.
        """
        port = self._opened()
        data = sentence.encode("ascii") if isinstance(sentence, str) else sentence
        try:
            port.write(data + b"\r\n")
        except (serial.SerialException, OSError) as exc:
            self.write_errors += 1
            self.last_error = str(exc)
            return
        self.sentences += 1
