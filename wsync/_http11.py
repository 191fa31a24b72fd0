"""HTTP/1.1 as the WebSocket upgrade needs it: request heads, one bounded response head, checks.

Its one job is the text of the opening handshake (RFC 6455 section 4.1) and of an HTTP CONNECT
tunnel: writing a request head, reading a response head within a byte budget
(:data:`MAX_RESPONSE_HEAD`) with the standard library's header parser, and checking a 101 the way a
client must. ``http.client`` (with the ``email`` package under it) and ``hashlib`` are imported by
the first handshake, not with ``wsync``: ``import wsync`` stays cheap. What it must not do:
resolve, connect, wrap TLS, retry or know the wsync protocol (``wsync._handshake`` does the rest of
an attempt and maps these errors), or put any text the network sent into an error: a server or
proxy that reflects our request must not get our credentials shown back in a message or a log. The
errors here carry wsync's own words and status codes only.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import http.client

__all__ = [
    "MAX_RESPONSE_HEAD",
    "BadResponse",
    "CookieResponse",
    "HeadReader",
    "PeerClosed",
    "Refused",
    "check_upgrade",
    "read_head",
    "send_head",
]

#: The most bytes a proxy's or server's response head (status line and headers) may take: a
#: server that sends an endless header line, or headers without end, fails the attempt here.
MAX_RESPONSE_HEAD: Final = 64 * 1024
_ACCEPT_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Refused(Exception):
    """The upgrade (or the CONNECT) was answered with another status than expected."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class BadResponse(Exception):
    """The response broke HTTP or RFC 6455; ``str()`` is wsync's words only."""

class PeerClosed(Exception):
    """The server or proxy closed the connection before its response head ended."""

class HeadReader:
    """Reads one HTTP response head from a socket within a byte budget; keeps what follows.

    ``readline(limit)`` is what :func:`http.client.parse_headers` calls. The socket's timeout
    (set by the caller from the attempt's deadline) bounds each read; :data:`MAX_RESPONSE_HEAD`
    bounds the bytes, so an endless line or endless headers fail the attempt, not memory.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._buf = b""
        self._taken = 0  # bytes of the head handed out so far

    def leftover(self) -> bytes:
        """What the server sent after the head (the first frames, for the Transport)."""
        return self._buf

    def readline(self, limit: int = -1) -> bytes:
        while True:
            end = self._buf.find(b"\n") + 1
            if end:
                return self._take(end)
            if 0 <= limit <= len(self._buf):
                return self._take(limit)
            if self._taken + len(self._buf) >= MAX_RESPONSE_HEAD:
                raise BadResponse(f"response head over {MAX_RESPONSE_HEAD} bytes")
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(4096)
            if not chunk:
                raise PeerClosed("EOF")
            self._buf += chunk

    def _take(self, n: int) -> bytes:
        line = self._buf[:n]
        self._buf = self._buf[n:]
        self._taken += n
        if self._taken > MAX_RESPONSE_HEAD:
            raise BadResponse(f"response head over {MAX_RESPONSE_HEAD} bytes")
        return line


def read_head(reader: HeadReader) -> tuple[bytes, int, http.client.HTTPMessage]:
    """Read a response's status line and headers: (HTTP version, status code, headers).

    Raises:
        BadResponse: not an HTTP/1.x status line, or headers http.client refuses.
    """
    line = reader.readline(1024)
    parts = line.rstrip(b"\r\n").split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise BadResponse("not an HTTP/1.x status line")
    version, code = parts[0], parts[1]
    if len(code) != 3 or not code.isdigit():
        raise BadResponse("invalid status code")
    import http.client  # the first handshake pays for it, not ``import wsync``

    try:
        headers = http.client.parse_headers(reader)  # type: ignore[arg-type, unused-ignore]  # readline() only
    except http.client.HTTPException as exc:
        # LineTooLong or "got more than 100 headers": the type only, never the text.
        raise BadResponse(f"invalid response headers ({type(exc).__name__})") from None
    return version, int(code), headers


def _tokens(headers: http.client.HTTPMessage, name: str) -> set[str]:
    """The comma-separated tokens of every ``name`` header, lowercased."""
    found: set[str] = set()
    for value in headers.get_all(name) or ():
        found.update(token.strip().lower() for token in value.split(","))
    return found


def _accept_for(key: str) -> str:
    import hashlib

    return base64.b64encode(hashlib.sha1(key.encode() + _ACCEPT_GUID).digest()).decode()


def check_upgrade(version: bytes, headers: http.client.HTTPMessage, key: str) -> None:
    """RFC 6455 section 4.1: what a client must check in a 101 before it speaks WebSocket.

    Raises:
        BadResponse: the 101 is not a valid WebSocket upgrade for our request.
    """
    if version != b"HTTP/1.1":
        raise BadResponse("server answered with HTTP/1.0, not HTTP/1.1")
    if "websocket" not in _tokens(headers, "Upgrade"):
        raise BadResponse("101 without Upgrade: websocket")
    if "upgrade" not in _tokens(headers, "Connection"):
        raise BadResponse("101 without Connection: Upgrade")
    accepts = headers.get_all("Sec-WebSocket-Accept") or []
    if len(accepts) != 1 or accepts[0].strip() != _accept_for(key):
        raise BadResponse("Sec-WebSocket-Accept does not match the key sent")
    if headers.get_all("Sec-WebSocket-Extensions"):
        raise BadResponse("server selected an extension that was not offered")
    if headers.get_all("Sec-WebSocket-Protocol"):
        raise BadResponse("server selected a subprotocol that was not offered")


class CookieResponse:
    """What :meth:`http.cookiejar.CookieJar.extract_cookies` asks of a response."""

    def __init__(self, headers: http.client.HTTPMessage) -> None:
        self._headers = headers

    def info(self) -> http.client.HTTPMessage:
        return self._headers

def send_head(sock: socket.socket, lines: Sequence[str], deadline: float) -> None:
    """Write an HTTP request head within the deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("timed out")
    sock.settimeout(remaining)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
