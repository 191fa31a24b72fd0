"""Transport's read side over a socket pair: what one read brings is handed out in order."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from wsync._connection import Transport, TransportClosed


def server_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, final frame as a server writes it."""
    n = len(payload)
    if n < 126:
        return bytes([0x80 | opcode, n]) + payload
    return bytes([0x80 | opcode, 126]) + struct.pack("!H", n) + payload


@pytest.fixture
def pair() -> Iterator[tuple[Transport, socket.socket]]:
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    transport = Transport(ours, max_frame_size=1 << 20, where="pair")
    try:
        yield transport, theirs
    finally:
        transport.abort()
        theirs.close()


class TestRecvBuffered:
    def test_hands_out_what_the_last_read_brought_then_none(
        self, pair: tuple[Transport, socket.socket]
    ) -> None:
        """After recv(), recv_buffered() gives the messages already read, then None."""
        transport, theirs = pair
        theirs.sendall(b"".join(server_frame(1, b"m%d" % i * 100) for i in range(5)))
        got = [transport.recv()]
        while len(got) < 5:
            more = transport.recv_buffered()
            if more is None:
                got.append(transport.recv())  # the kernel split the bytes: read again
            else:
                got.append(more)
        assert got == [f"m{i}" * 100 for i in range(5)]
        assert transport.recv_buffered() is None

    def test_a_ping_in_the_way_is_left_to_recv(
        self, pair: tuple[Transport, socket.socket]
    ) -> None:
        """A control frame stops recv_buffered(); recv() answers it and goes on."""
        transport, theirs = pair
        theirs.sendall(server_frame(1, b"one") + server_frame(9, b"hi") + server_frame(1, b"two"))
        assert transport.recv() == "one"
        assert transport.recv_buffered() is None
        assert transport.recv() == "two"
        pong = theirs.recv(64)
        assert pong[0] == 0x8A and pong[1] == 0x80 | 2  # a masked pong with the payload

    def test_nothing_once_closed(self, pair: tuple[Transport, socket.socket]) -> None:
        """After an abort, recv_buffered() gives nothing and recv() raises."""
        transport, theirs = pair
        theirs.sendall(server_frame(1, b"one") + server_frame(1, b"two"))
        assert transport.recv() == "one"
        transport.abort()
        assert transport.recv_buffered() is None
        with pytest.raises(TransportClosed):
            transport.recv()
