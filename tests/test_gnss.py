"""The GNSS reader and writer over real ports: loop://, a pty, a TCP socket; corrupt streams."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import serial
from hypothesis import given
from hypothesis import strategies as st
from serial.urlhandler.protocol_loop import Serial as LoopSerial

from firmware_sim.errors import InterfaceError, LifecycleError
from firmware_sim.gnss import MAX_LINE_BYTES, GnssReader, GnssSource, GnssStats, State
from firmware_sim.nmea import Fix, checksum, format_gga, format_rmc

T0_MS = 1_795_334_400_000


def drive(n: int) -> list[Fix]:
    """``n`` fixes one second apart along a street."""
    return [
        Fix.at_time_ms(
            T0_MS + i * 1000,
            lat=48.85 + i * 1e-4,
            lon=2.35 - i * 1e-4,
            alt=35.0 + i,
            speed_kmh=40.0 + i,
            heading=float(10 * i),
        )
        for i in range(n)
    ]


def nmea(fixes: list[Fix]) -> bytes:
    return b"".join(f"{format_rmc(f)}\r\n{format_gga(f)}\r\n".encode() for f in fixes)


def same_fix(got: Fix, sent: Fix) -> bool:
    return (
        got.time_utc == sent.time_utc
        and abs(got.lat - sent.lat) < 1e-6
        and abs(got.lon - sent.lon) < 1e-6
        and got.alt == sent.alt
        and got.speed_kmh is not None
        and sent.speed_kmh is not None
        and abs(got.speed_kmh - sent.speed_kmh) < 0.01
        and got.heading == sent.heading
        and (got.satellites, got.hdop, got.date) == (sent.satellites, sent.hdop, sent.date)
    )


def poll_until(reader: GnssReader, done: Callable[[list[Fix]], bool]) -> list[Fix]:
    """Poll (never blocking) until ``done`` or five seconds: for ports fed by the kernel."""
    fixes: list[Fix] = []
    deadline = time.monotonic() + 5
    while not done(fixes) and time.monotonic() < deadline:
        fixes += reader.poll()
    return fixes


@pytest.fixture
def loop() -> Iterator[serial.SerialBase]:
    port = serial.serial_for_url("loop://", timeout=0)
    yield port
    port.close()


# ---------------------------------------------------------------------------------------------
# End to end


def test_loop_end_to_end(loop: serial.SerialBase) -> None:
    source, reader = GnssSource(loop), GnssReader(loop)
    sent = drive(10)
    for fix in sent[:4]:
        source.write_fix(fix)
    got = reader.poll()
    for fix in sent[4:]:
        source.write_fix(fix)
    got += reader.poll()
    assert len(got) == 10 and all(same_fix(g, s) for g, s in zip(got, sent, strict=True))
    assert reader.poll() == []
    assert reader.stats == GnssStats(bytes=len(nmea(sent)), lines=20, sentences=20, fixes=10)
    assert source.sentences == 20


def test_pty_end_to_end() -> None:
    """The reader opens the slave side of a real pty by its path, as it would a USB receiver."""
    master, slave = os.openpty()
    try:
        with GnssReader(os.ttyname(slave)) as reader:
            assert reader.state is State.OPENED
            sent = drive(5)
            os.write(master, nmea(sent))
            got = poll_until(reader, lambda fixes: len(fixes) >= 5)
            assert len(got) == 5 and all(same_fix(g, s) for g, s in zip(got, sent, strict=True))
            os.write(master, b"$GPRMC,garbage*00\r\n\xff\xfe\r\n")
            poll_until(reader, lambda _: reader.stats.lines >= 12)
            assert (reader.stats.bad_checksum, reader.stats.malformed) == (1, 1)
        assert reader.state is State.CLOSED
    finally:
        os.close(master)
        os.close(slave)


def test_source_writes_to_a_pty() -> None:
    master, slave = os.openpty()
    try:
        with GnssSource(os.ttyname(slave)) as source:
            fix = drive(1)[0]
            source.write_fix(fix)
            expected = f"{format_rmc(fix, 'GN')}\r\n{format_gga(fix, 'GN')}\r\n".encode()
            data = b""
            deadline = time.monotonic() + 5
            while len(data) < len(expected) and time.monotonic() < deadline:
                data += os.read(master, 4096)
            assert data == expected
    finally:
        os.close(master)
        os.close(slave)


def test_socket_url() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        host, port = server.getsockname()
        with GnssReader(f"socket://{host}:{port}") as reader:
            conn, _ = server.accept()
            with conn:
                sent = drive(3)
                conn.sendall(nmea(sent))
                got = poll_until(reader, lambda fixes: len(fixes) >= 3)
                assert [g.time_utc for g in got] == [s.time_utc for s in sent]


# ---------------------------------------------------------------------------------------------
# Streams in pieces and corrupt streams


@given(
    st.lists(st.integers(1, 60), min_size=1, max_size=40), st.sampled_from([b"\r\n", b"\n", b"\r"])
)
def test_any_split_and_any_line_end_give_the_same_fixes(cuts: list[int], eol: bytes) -> None:
    sent = drive(4)
    stream = nmea(sent).replace(b"\r\n", eol)
    reader = GnssReader(serial.serial_for_url("loop://", timeout=0))
    got: list[Fix] = []
    pos = 0
    for cut in cuts:
        got += reader.feed(stream[pos : pos + cut])
        pos += cut
    got += reader.feed(stream[pos:])
    assert len(got) == 4 and all(same_fix(g, s) for g, s in zip(got, sent, strict=True))
    assert (reader.stats.lines, reader.stats.sentences, reader.stats.fixes) == (8, 8, 4)


def with_checksum(body: str) -> bytes:
    return f"${body}*{checksum(body):02X}\r\n".encode()


def test_a_corrupt_stream_is_counted_line_by_line(loop: serial.SerialBase) -> None:
    good = drive(3)
    rmc1, gga1 = format_rmc(good[1]).encode(), format_gga(good[1]).encode()
    stream = b"".join(
        [
            nmea(good[:1]),  # 2 sentences, 1 fix
            rmc1[:-2] + b"00\r\n",  # bad checksum
            gga1.split(b"*")[0] + b"\r\n",  # no checksum
            b"\x00\xff\x13 binary noise\r\n",  # malformed (no '$')
            b"$GPRMC,1,2,3*" + f"{checksum('GPRMC,1,2,3'):02X}".encode() + b"\r\n",  # malformed
            with_checksum("GPGSV,1,1,01,03,03,111,00"),  # ignored
            with_checksum("GPRMC,,V,,,,,,,,,,N"),  # no fix
            b"xx" + format_rmc(good[2]).encode() + b"\r\n",  # garbage, then a sentence
            format_gga(good[2]).encode() + b"\r\n",  # completes fix 2
            b"$GPGSV" + b",1" * 60 + b"*00\r\n",  # longer than a sentence may be
            b"\n\r\r\n",  # empty lines are nothing
        ]
    )
    loop.write(stream)
    reader = GnssReader(loop)
    fixes = reader.poll()
    assert [f.time_utc.second for f in fixes] == [0, 2]
    assert reader.stats == GnssStats(
        bytes=len(stream),
        lines=11,
        sentences=6,
        fixes=2,
        ignored=1,
        no_fix=1,
        bad_checksum=1,
        no_checksum=1,
        malformed=3,
        overruns=1,
    )


def test_endless_line_is_dropped_with_bounded_memory(loop: serial.SerialBase) -> None:
    reader = GnssReader(loop)
    noise = bytes(range(14, 256)) * 400  # no CR, no LF, about 97 kB
    for i in range(0, len(noise), 1000):
        reader.feed(noise[i : i + 1000])
        assert len(reader._buffer) <= MAX_LINE_BYTES
    fix = drive(1)[0]
    got = reader.feed(b"tail of the noise\r\n" + nmea([fix]))  # the end of the noise is dropped
    assert len(got) == 1 and same_fix(got[0], fix)
    assert reader.stats.overruns == 1
    assert (reader.stats.lines, reader.stats.malformed, reader.stats.sentences) == (2, 0, 2)


def test_a_line_of_many_reads_is_read(loop: serial.SerialBase) -> None:
    reader = GnssReader(loop)
    fix = drive(1)[0]
    got: list[Fix] = []
    for byte in nmea([fix]):
        loop.write(bytes([byte]))
        got += reader.poll()
    assert len(got) == 1 and same_fix(got[0], fix)


# ---------------------------------------------------------------------------------------------
# Lifecycle and errors


def test_lifecycle_of_a_url_reader() -> None:
    master, slave = os.openpty()
    try:
        reader = GnssReader(os.ttyname(slave))
        assert reader.state is State.UNOPENED
        with pytest.raises(LifecycleError):
            reader.poll()
        reader.open()
        with pytest.raises(LifecycleError):
            reader.open()
        assert reader.poll() == []
        reader.close()
        reader.close()  # closing again is fine
        assert reader.state is State.CLOSED
        for misuse in (reader.poll, reader.open, reader.__enter__):
            with pytest.raises(LifecycleError):
                misuse()
    finally:
        os.close(master)
        os.close(slave)


def test_an_adopted_port_is_left_to_its_owner(loop: serial.SerialBase) -> None:
    with GnssReader(loop) as reader, GnssSource(loop) as source:
        assert reader.state is State.OPENED
        source.write_fix(drive(1)[0])
        assert len(reader.poll()) == 1
        with pytest.raises(LifecycleError):
            reader.open()
    assert loop.is_open
    with pytest.raises(LifecycleError):
        source.write_fix(drive(1)[0])


@pytest.mark.parametrize("url", ["/dev/nonexistent-gnss", "nope://gnss", "socket://127.0.0.1:1"])
def test_a_port_that_cannot_be_opened(url: str) -> None:
    reader = GnssReader(url)
    with pytest.raises(InterfaceError) as info:
        reader.open()
    assert "GNSS" in str(info.value)
    assert reader.state is State.UNOPENED


def test_a_port_that_goes_away_is_counted_not_raised() -> None:
    port = serial.serial_for_url("loop://", timeout=0)
    reader, source = GnssReader(port), GnssSource(port)
    port.close()
    assert reader.poll() == []
    assert reader.stats.read_errors == 1 and reader.last_error
    source.write_fix(drive(1)[0])
    assert (source.sentences, source.write_errors) == (0, 2)  # neither line went out


class _GuardedLoop(LoopSerial):  # type: ignore[misc]
    """A loop:// port that blocks on read, and fails a read asking for more than is waiting."""

    def read(self, size: int = 1) -> bytes:
        assert size <= self.in_waiting, f"read({size}) with {self.in_waiting} waiting would block"
        return bytes(super().read(size))


def test_a_blocking_adopted_port_is_read_without_blocking() -> None:
    port = _GuardedLoop("loop://", timeout=5)  # a caller's port that would block on read()
    reader = GnssReader(port)
    port.write(nmea(drive(2)))
    assert len(reader.poll()) == 2
    assert reader.poll() == []  # nothing waiting: no read at all
    assert reader.stats.read_errors == 0
