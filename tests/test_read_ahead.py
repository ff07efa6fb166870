"""The gateway's read-ahead socket (``gateway.ingest._ReadAhead``) on a real socket pair.

paho reads through it; the ingest tests run it against Mosquitto, in plain TCP and TLS.
These check its own promises: the bytes come out as they went in, whatever the sizes asked
for; the wire is read at most once per turn of the event loop, while bytes the socket itself
holds (TLS) are read at once; ``pending()`` counts both; the socket's end and errors pass
through.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest import _ReadAhead


class _Counting:
    """A socket that counts its ``recv`` calls (everything else is the socket's)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads = 0
        self.taken = 0  # bytes

    def recv(self, bufsize: int) -> bytes:
        self.reads += 1
        data = self.sock.recv(bufsize)
        self.taken += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@contextmanager
def _pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    try:
        b.setblocking(False)
        yield a, b
    finally:
        a.close()
        b.close()


@contextmanager
def _event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def _turn(loop: asyncio.AbstractEventLoop) -> None:
    """One turn of the loop: what ``call_soon`` scheduled runs."""
    loop.run_until_complete(asyncio.sleep(0))


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=3000),
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=40),
    size=st.integers(1, 512),
)
def test_the_bytes_come_out_as_they_went_in(data: bytes, sizes: list[int], size: int) -> None:
    with _pair() as (writer, reader), _event_loop() as loop:
        writer.sendall(data)
        counting = _Counting(reader)
        sock = _ReadAhead(counting, loop, size=size)
        got = bytearray()
        asks = itertools.cycle(sizes)
        while len(got) < len(data):
            reads = counting.reads
            while True:  # one turn: read until the buffer runs dry
                want = next(asks)
                try:
                    chunk = sock.recv(want)
                except BlockingIOError:
                    break
                assert 0 < len(chunk) <= want
                got += chunk
                assert sock.pending() == counting.taken - len(got)
            assert counting.reads - reads <= 1  # at most one read of the socket per turn
            _turn(loop)
        assert bytes(got) == data
        assert sock.pending() == 0
        with pytest.raises(BlockingIOError):  # nothing more: the socket's own refusal
            sock.recv(1)


def test_pending_counts_what_is_held() -> None:
    with _pair() as (writer, reader), _event_loop() as loop:
        writer.sendall(b"0123456789")
        sock = _ReadAhead(reader, loop, size=64)
        assert sock.pending() == 0
        assert sock.recv(1) == b"0"
        assert sock.pending() == 9
        assert sock.recv(4) == b"1234"
        assert sock.pending() == 5
        assert sock.recv(100) == b"56789"
        assert sock.pending() == 0
        with pytest.raises(BlockingIOError):  # read once this turn already
            sock.recv(1)
        writer.sendall(b"ab")
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        _turn(loop)
        assert sock.recv(2) == b"ab"


def test_a_read_asking_for_more_than_the_read_ahead_gets_it_whole() -> None:
    with _pair() as (writer, reader), _event_loop() as loop:
        writer.sendall(bytes(range(200)))
        sock = _ReadAhead(reader, loop, size=16)
        assert sock.recv(150) == bytes(range(150))
        assert sock.pending() == 0
        _turn(loop)
        assert sock.recv(150) == bytes(range(150, 200))


class _Framed:
    """A socket that reads the wire a frame at a time and holds the rest of the frame, as a
    TLS socket holds a record's decrypted bytes (or paho's websocket wrapper a frame's):
    its ``pending()`` counts them, and no readable event announces them."""

    def __init__(self, sock: socket.socket, frame: int) -> None:
        self.sock = sock
        self.frame = frame
        self.held = b""
        self.wire_reads = 0

    def recv(self, bufsize: int) -> bytes:
        if not self.held:
            self.wire_reads += 1
            self.held = self.sock.recv(self.frame)
        data, self.held = self.held[:bufsize], self.held[bufsize:]
        return data

    def pending(self) -> int:
        return len(self.held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_what_the_socket_itself_holds_is_read_within_the_turn() -> None:
    with _pair() as (writer, reader), _event_loop() as loop:
        data = bytes(range(250))
        writer.sendall(data)
        framed = _Framed(reader, frame=100)
        sock = _ReadAhead(framed, loop, size=16)
        got = bytearray()
        while sock.pending() or not got:  # aiomqtt's reader: on while bytes are held
            got += sock.recv(5)
        assert bytes(got) == data[:100]  # the whole first frame, in one turn
        assert framed.wire_reads == 1
        with pytest.raises(BlockingIOError):  # the next frame waits for the next turn
            sock.recv(5)
        _turn(loop)
        assert sock.recv(200) == data[100:200]
        assert sock.pending() == 0


def test_the_end_of_the_stream_and_the_sockets_other_calls_pass_through() -> None:
    with _pair() as (writer, reader), _event_loop() as loop:
        sock = _ReadAhead(reader, loop)
        assert sock.fileno() == reader.fileno()
        writer.sendall(b"last")
        writer.close()
        assert sock.recv(10) == b"last"
        _turn(loop)
        assert sock.recv(10) == b""
