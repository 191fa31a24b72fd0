"""The one module that imports websocket-client: open a WebSocket, send and receive frames, abort.

Its one job is moving WebSocket frames over one connection. It knows nothing of the wsync
protocol, the state machine, the outbox or retries; it holds no wsync lock, runs no user code and
starts no long-lived thread (only a short-lived ``wsync-resolve`` thread per ``open()``, so a slow
DNS lookup stays bounded by the timeout and by ``cancel()``). Every websocket-client, ``ssl`` and
``OSError`` exception is translated in one place, :func:`_map_error`.

How the pieces are used:

- :meth:`Connector.open` opens the TCP socket itself (``getaddrinfo`` + ``connect``), tunnels
  through an HTTP CONNECT proxy when asked (websocket-client's tunnel helper), wraps TLS with the
  caller's ``ssl.SSLContext`` (default: ``ssl.create_default_context()``, which verifies the
  certificate and the host name) and hands the socket to websocket-client for the HTTP upgrade
  only. Every socket in flight is registered, so :meth:`Connector.cancel` can ``shutdown()`` it
  from another thread: websocket-client's own ``abort()`` cannot interrupt an upgrade in flight.
- :class:`Transport` parses and writes frames itself over a read-ahead socket wrapper, doing the
  checks websocket-client's ``frame_buffer``/``ABNF`` do at a fraction of the cost (measured:
  websocket-client's ``recv()`` spent 38 of 47 us in its pure-Python UTF-8 validator, and its
  framing makes three reads per frame). It decodes text strictly itself, reads an oversize
  payload past without holding it, and writes with one ``sendall`` under its own send lock.
  websocket-client's ``WebSocket.close()`` is never used: it reads frames itself, which would
  race the reader thread.

Logging: DEBUG only, never frame content, never header values, URLs only through :func:`redact_url`.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import math
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import websocket
from websocket._http import _tunnel

from wsync._errors import ConnectError

__all__ = [
    "Connector",
    "MalformedFrame",
    "TLSError",
    "Transport",
    "TransportClosed",
    "UpgradeRejected",
    "is_loopback_host",
    "redact_url",
    "validate_url",
]

logger = logging.getLogger(__name__)

#: Bytes asked of the kernel per read: one recv() serves every frame already in the socket buffer.
_READ_AHEAD: Final = 64 * 1024
#: How long send_close() may wait for the send lock and for room in the socket's send buffer.
_CLOSE_SEND_TIMEOUT: Final = 0.25
# RFC 6455 opcodes.
_OP_CONT: Final = 0x0
_OP_TEXT: Final = 0x1
_OP_BINARY: Final = 0x2
_OP_CLOSE: Final = 0x8
_OP_PING: Final = 0x9
_OP_PONG: Final = 0xA
#: RFC 6455: control frames carry at most 125 bytes.
_MAX_CONTROL_PAYLOAD: Final = 125
_PACK_HEAD7: Final = struct.Struct("!BB").pack
_PACK_HEAD16: Final = struct.Struct("!BBH").pack
_PACK_HEAD64: Final = struct.Struct("!BBQ").pack
_UNPACK16: Final = struct.Struct("!H").unpack
_UNPACK64: Final = struct.Struct("!Q").unpack
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
#: Headers websocket-client writes itself for the upgrade; a second copy would break it.
_RESERVED_HEADERS: Final = frozenset(
    {
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "content-length",
        "transfer-encoding",
    }
)
#: (family, type, proto, sockaddr) of one getaddrinfo() answer.
_Address = tuple[int, int, int, Any]
_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


# --------------------------------------------------------------------------------------------------
# Errors


class TransportClosed(Exception):
    """The connection ended (close frame, EOF, reset, abort); ``str()`` says why, never content."""


class MalformedFrame(Exception):
    """One incoming message was unusable (invalid UTF-8, too large); the connection still works."""


class TLSError(ConnectError):
    """The server's certificate or host name failed verification: retrying will not help."""


class UpgradeRejected(ConnectError):
    """The server answered the HTTP upgrade with a status other than 101.

    Retryable like any :class:`ConnectError` (a token may be refreshed, a 503 may pass); only
    :class:`TLSError` is not.

    Attributes:
        status_code: the HTTP status the server answered with.
    """

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code

    def __reduce__(self) -> tuple[type[UpgradeRejected], tuple[str, int]]:
        return type(self), (str(self), self.status_code)


class _Cancelled(Exception):
    """Internal: Connector.cancel() was called while (or before) this open() ran."""


class _PeerClosed(Exception):
    """Internal: the peer closed the TCP stream (EOF) where a frame was expected."""


class _Oversize(Exception):
    """Internal: a data frame longer than the limit was read past and dropped."""

    def __init__(self, opcode: int, fin: bool, length: int) -> None:
        super().__init__(f"{length} bytes")
        self.opcode = opcode
        self.fin = fin
        self.length = length


def _find_in_chain(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _map_error(
    exc: BaseException,
    *,
    url: str | None = None,
    phase: str = "",
    timeout: float = 0.0,
    cancelled: bool = False,
    aborted: bool = False,
    status: int | None = None,
) -> Exception:
    """Translate any websocket-client, ``ssl`` or ``OSError`` exception: the one boundary.

    With ``url`` (an ``open()`` in flight) the result is a :class:`ConnectError` (or
    :class:`TLSError`, :class:`UpgradeRejected`) whose message says what failed and the redacted
    URL; without it, a :class:`TransportClosed` saying why the connection ended. The caller chains
    ``exc`` as ``__cause__``. Messages never carry content, header values or credentials.
    """
    if url is None:
        return TransportClosed(_closed_reason(exc, aborted=aborted))
    where = redact_url(url)
    if cancelled or isinstance(exc, _Cancelled):
        return ConnectError(f"connect cancelled during {phase}: {where}")
    verify = _find_in_chain(exc, ssl.SSLCertVerificationError)
    if isinstance(verify, ssl.SSLCertVerificationError):
        detail = verify.verify_message or verify.reason or "verification failed"
        return TLSError(f"tls certificate verification failed ({detail}): {where}")
    if isinstance(exc, websocket.WebSocketBadStatusException):
        code = exc.status_code
        if code in (401, 403):
            return UpgradeRejected(f"upgrade rejected by server with HTTP {code}: {where}", code)
        return UpgradeRejected(f"upgrade failed with HTTP {code}: {where}", code)
    if status in _REDIRECT_STATUSES:
        assert status is not None
        return UpgradeRejected(
            f"upgrade answered with redirect HTTP {status} (not followed): {where}", status
        )
    if isinstance(exc, (TimeoutError, socket.timeout, websocket.WebSocketTimeoutException)):
        return ConnectError(f"connect timed out after {timeout:g} s during {phase}: {where}")
    if isinstance(exc, websocket.WebSocketProxyException):
        # Its messages are ours or a status line ("failed CONNECT via proxy status: 407").
        return ConnectError(f"proxy tunnel failed ({exc}): {where}")
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"dns lookup failed ({exc.strerror or 'unknown error'}): {where}")
    if isinstance(exc, ssl.SSLError):
        return ConnectError(f"tls handshake failed ({exc.reason or type(exc).__name__}): {where}")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"connection refused: {where}")
    if isinstance(exc, (_PeerClosed, websocket.WebSocketConnectionClosedException)):
        return ConnectError(f"connection closed by server during {phase}: {where}")
    if isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
        return ConnectError(f"{phase} failed ({reason}): {where}")
    if isinstance(exc, websocket.WebSocketException):
        # Its message may quote the server's response; name the type only.
        return ConnectError(f"{phase} failed (invalid response: {type(exc).__name__}): {where}")
    return ConnectError(f"{phase} failed ({type(exc).__name__}): {where}")


def _closed_reason(exc: BaseException, *, aborted: bool) -> str:
    if aborted:
        return "connection aborted"
    if isinstance(exc, (_PeerClosed, websocket.WebSocketConnectionClosedException)):
        return "connection closed by peer (EOF)"
    if isinstance(exc, websocket.WebSocketProtocolException):
        return f"protocol error: {exc}"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(exc, BrokenPipeError):
        return "connection closed by peer (broken pipe)"
    if isinstance(exc, ssl.SSLError):
        return f"tls error ({exc.reason or type(exc).__name__})"
    if isinstance(exc, OSError):
        if exc.errno == errno.EBADF:
            return "connection aborted"
        return f"connection lost ({exc.strerror or type(exc).__name__})"
    return f"connection lost ({type(exc).__name__})"


# --------------------------------------------------------------------------------------------------
# URLs


def validate_url(url: object) -> str:
    """Check that ``url`` is a ``ws://`` or ``wss://`` URL with a host; return it.

    Args:
        url: the value to check.

    Returns:
        The URL unchanged, except that its scheme is lowercased.

    Raises:
        TypeError: ``url`` is not a ``str``.
        ValueError: wrong scheme, no host, a bad port, or whitespace/control characters.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise ValueError("url must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"url has an invalid host or port: {redact_url(url)}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(f"url scheme must be ws or wss, got {scheme or 'none'!r}")
    if not parts.hostname:
        raise ValueError(f"url has no host: {redact_url(url)}")
    if port == 0:
        raise ValueError(f"url port must be 1-65535: {redact_url(url)}")
    return scheme + url[len(parts.scheme) :]


def redact_url(url: str) -> str:
    """Return ``url`` without userinfo, query and fragment: safe to log; never raises.

    ``"wss://user:tok@h:1/p?token=x"`` becomes ``"wss://h:1/p"``.
    """
    try:
        parts = urlsplit(url)
        hostport = parts.netloc.rpartition("@")[2]
        return f"{parts.scheme}://{hostport}{parts.path}"
    except Exception:
        return "<invalid url>"


def is_loopback_host(url: str) -> bool:
    """Tell whether ``url``'s host is ``localhost`` or a loopback address; never raises."""
    try:
        host = urlsplit(url).hostname
    except Exception:
        return False
    if not host:
        return False
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_target(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    secure = parts.scheme.lower() == "wss"
    host = parts.hostname
    assert host is not None  # validate_url checked it
    return host, parts.port or (443 if secure else 80), secure


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _parse_proxy(proxy: object) -> tuple[str, int, tuple[str, str] | None]:
    if not isinstance(proxy, str):
        raise TypeError(f"proxy must be a str or None, got {type(proxy).__name__}")
    try:
        parts = urlsplit(proxy)
        port = parts.port
    except ValueError:
        raise ValueError(f"proxy has an invalid host or port: {redact_url(proxy)}") from None
    if parts.scheme.lower() != "http":
        raise ValueError(f"proxy must be an http://host:port URL, got scheme {parts.scheme!r}")
    if not parts.hostname or port == 0:
        raise ValueError(f"proxy has no host or a bad port: {redact_url(proxy)}")
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
    return parts.hostname, port or 80, auth


def _header_lines(headers: Mapping[str, str] | None) -> tuple[list[str], dict[str, str]]:
    """Check user headers; return the upgrade's header lines and websocket-client options."""
    lines: list[str] = []
    options: dict[str, str] = {}
    if headers is None:
        return lines, options
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping or None, got {type(headers).__name__}")
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("header names and values must be str")
        if not name or not set(name) <= _TOKEN_CHARS:
            raise ValueError(f"invalid header name {name!r}")
        if any(ch in value for ch in "\r\n\0"):
            # The value is never echoed: it may be a credential.
            raise ValueError(f"header {name!r} has a value with CR, LF or NUL")
        lowered = name.lower()
        if lowered in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the transport")
        if lowered in ("host", "origin"):
            # websocket-client writes these itself: its options replace them, no second copy.
            options[lowered] = value
        else:
            lines.append(f"{name}: {value}")
    return lines, options


# --------------------------------------------------------------------------------------------------
# Sockets


class _BufferedSocket:
    """A socket with a read-ahead buffer, handed to websocket-client as ``connect(socket=...)``.

    One ``recv()`` of up to 64 KiB serves every frame already in the kernel buffer, so a small frame
    costs one system call instead of websocket-client's three (header, length, payload). While
    ``deadline`` is set (during ``open()``), every blocking call gets the time remaining as its
    socket timeout, which bounds the whole upgrade, not each read. Afterwards the socket is
    blocking with no timeout, so no ``poll()`` precedes each read.

    Only the reader thread reads; writers serialise on the Transport's send lock; ``abort()`` may
    come from any thread.
    """

    __slots__ = ("_buf", "_deadline", "_pos", "_sock")

    def __init__(self, sock: socket.socket, deadline: float | None) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self._deadline = deadline

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def end_deadline(self) -> None:
        """Leave the open() phase: blocking, no timeout from now on."""
        self._deadline = None
        self._sock.settimeout(None)

    def _arm(self) -> None:
        if self._deadline is not None:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            self._sock.settimeout(remaining)

    # What websocket-client calls on the socket (_socket.recv/send, _http, WebSocket.connect).

    def recv(self, bufsize: int) -> bytes:
        if self._pos < len(self._buf):
            end = self._pos + bufsize
            data = self._buf[self._pos : end]
            self._pos += len(data)
            return data
        self._arm()
        data = self._sock.recv(max(bufsize, _READ_AHEAD))
        if len(data) > bufsize:
            self._buf = data
            self._pos = bufsize
            return data[:bufsize]
        return data

    def send(self, data: bytes) -> int:
        # sendall: websocket-client's handshake ignores a partial send.
        self._arm()
        self._sock.sendall(data)
        return len(data)

    def sendall(self, data: bytes) -> None:
        self._arm()
        self._sock.sendall(data)

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def fileno(self) -> int:
        return self._sock.fileno()

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self._sock.setsockopt(level, option, value)

    def pending(self) -> int:
        extra = self._sock.pending() if isinstance(self._sock, ssl.SSLSocket) else 0
        return self.buffered() + extra

    def shutdown(self, how: int) -> None:
        # socket.socket's own shutdown: SSLSocket.shutdown() would drop its TLS state first.
        socket.socket.shutdown(self._sock, how)

    def close(self) -> None:
        self._sock.close()

    # Used by the frame reader and the Transport.

    def read_exact(self, n: int) -> bytes:
        """Return exactly ``n`` bytes; raise _PeerClosed at EOF."""
        pos = self._pos
        end = pos + n
        if end <= len(self._buf):
            self._pos = end
            return self._buf[pos:end]
        return self._read_slow(n)

    def _read_slow(self, n: int) -> bytes:
        have = len(self._buf) - self._pos
        head = self._buf[self._pos :]
        self._buf = b""
        self._pos = 0
        if n - have <= _READ_AHEAD:
            parts = [head]
            while have < n:
                chunk = self._sock.recv(_READ_AHEAD)
                if not chunk:
                    raise _PeerClosed("EOF")
                parts.append(chunk)
                have += len(chunk)
            data = b"".join(parts)
            self._buf = data
            self._pos = n
            return data[:n]
        # A large payload: read exactly what is missing into one buffer, no read-ahead past it.
        out = bytearray(n)
        out[:have] = head
        view = memoryview(out)
        while have < n:
            got = self._sock.recv_into(view[have:], n - have)
            if not got:
                raise _PeerClosed("EOF")
            have += got
        view.release()
        return bytes(out)

    def discard(self, n: int) -> None:
        """Read and drop ``n`` bytes without holding them all; raise _PeerClosed at EOF."""
        have = min(n, len(self._buf) - self._pos)
        self._pos += have
        n -= have
        if n <= 0:
            return
        scratch = bytearray(min(n, _READ_AHEAD))
        while n > 0:
            got = self._sock.recv_into(scratch, min(n, len(scratch)))
            if not got:
                raise _PeerClosed("EOF")
            n -= got

    def send_bounded(self, data: bytes, timeout: float) -> bool:
        """Write a small frame if the socket takes it within ``timeout``; never blocks longer."""
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLOUT)
        if not poller.poll(timeout * 1000):
            return False
        if isinstance(self._sock, ssl.SSLSocket):
            # SSLSocket refuses flags; POLLOUT says a small record fits without blocking.
            self._sock.sendall(data)
            return True
        return self._sock.send(data, socket.MSG_DONTWAIT) == len(data)

    def abort(self) -> None:
        """Shut down then close; wakes any thread blocked on the socket; idempotent."""
        with contextlib.suppress(OSError):  # already closed, or never connected
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        self._sock.close()


def _encode_frame(
    opcode: int, payload: bytes, _urandom: Callable[[int], bytes] = os.urandom
) -> bytes:
    """One final, masked client frame (RFC 6455 section 5.2).

    The same bytes as websocket-client's ``ABNF(...).format()`` with an ``os.urandom(4)`` mask,
    at a third of its cost (measured: 3 us against 9 us for 100 bytes).
    """
    length = len(payload)
    first = 0x80 | opcode
    if length < 126:
        head = _PACK_HEAD7(first, 0x80 | length)
    elif length < 65536:
        head = _PACK_HEAD16(first, 0xFE, length)
    else:
        head = _PACK_HEAD64(first, 0xFF, length)
    key = _urandom(4)
    if not length:
        return head + key
    mask = int.from_bytes(key * (length >> 2) + key[: length & 3], "little")
    masked = (int.from_bytes(payload, "little") ^ mask).to_bytes(length, "little")
    return head + key + masked


# --------------------------------------------------------------------------------------------------
# Transport


class Transport:
    """One open WebSocket connection.

    Thread model: one reader thread calls :meth:`recv`; any threads may send (writes are serialised
    by an internal send lock, so frames never interleave); :meth:`abort` may be called from any
    thread at any time and wakes a ``recv()`` or send blocked in another thread. The reader never
    waits for a write: a pong it owes while another thread is writing is left for that thread to
    send right after its write.
    """

    def __init__(self, sock: _BufferedSocket, *, max_frame_size: int, url: str) -> None:
        self._sock = sock
        self._url = url
        self._max = max_frame_size
        # Largest data frame read now: max_frame_size less the fragments already held, or -1
        # while dropping the rest of an oversize fragmented message (reader thread only).
        self._limit = max_frame_size
        # Serialises writes (data frames, pongs from the reader, the close frame) so no two
        # frames interleave on the wire. Held only around one sendall.
        self._send_lock = threading.Lock()
        # Pong frames the reader left for the thread holding the send lock (append and popleft
        # are atomic, so none is lost between the two threads).
        self._pongs: deque[bytes] = deque()
        self._closed_reason: str | None = None  # why sends fail from now on
        self._recv_closed: str | None = None  # why recv() fails from now on (reader thread)
        self._aborted = False
        self._close_sent = False
        # Fragmented message being assembled (reader thread only).
        self._frag_opcode: int | None = None
        self._frag_parts: list[bytes] = []
        self._frag_len = 0
        self._skipping = False  # dropping the rest of an oversize fragmented message

    def __repr__(self) -> str:
        state = "open" if self._closed_reason is None else self._closed_reason
        return f"<Transport {redact_url(self._url)} {state}>"

    # Sending

    def send_text(self, text: str) -> None:
        """Write one text frame.

        Blocks until the frame is handed to the kernel. Thread-safe.

        Raises:
            TypeError: ``text`` is not a ``str``.
            ValueError: ``text`` cannot be encoded as UTF-8 (a lone surrogate); nothing is written.
            TransportClosed: the connection ended or the write failed.
        """
        self._write(_encode_frame(_OP_TEXT, _utf8(text)))

    def send_texts(self, texts: Sequence[str]) -> None:
        """Write several text frames, in order, with one ``sendall``.

        Every text is encoded before anything is written, so a ``TypeError``/``ValueError`` leaves
        the connection untouched. Thread-safe.

        Raises:
            TypeError, ValueError: as :meth:`send_text`.
            TransportClosed: the connection ended or the write failed (some frames may be written).
        """
        if not texts:
            return
        text_op = _OP_TEXT
        self._write(b"".join([_encode_frame(text_op, _utf8(text)) for text in texts]))

    def _write(self, data: bytes) -> None:
        with self._send_lock:
            if self._closed_reason is not None:
                raise TransportClosed(self._closed_reason)
            if self._close_sent:
                raise TransportClosed("close frame already sent")
            try:
                self._sock.sendall(data)
            except Exception as exc:
                raise self._lost(exc) from exc
        if self._pongs:
            self._send_pongs()

    def _send_pong(self, payload: bytes) -> None:
        """Answer a ping, from the reader thread, without waiting for a writer."""
        self._pongs.append(_encode_frame(_OP_PONG, payload))
        self._send_pongs()

    def _send_pongs(self) -> None:
        # Every thread that held the send lock checks for pongs after releasing it, so a pong
        # left while the lock was busy is sent by the thread that held it: nobody waits here.
        while self._pongs and self._send_lock.acquire(blocking=False):
            try:
                while self._pongs:
                    frame = self._pongs.popleft()
                    if self._closed_reason is None and not self._close_sent:
                        self._sock.sendall(frame)
            except Exception as exc:
                self._lost(exc)  # recorded for the next send; the reader sees it on its next read
            finally:
                self._send_lock.release()

    def send_close(self, code: int = 1000) -> None:
        """Write a WebSocket close frame, best effort: never raises, never blocks long.

        Waits at most about 0.25 s for the send lock and for room in the socket buffer; gives up
        silently otherwise. Later sends raise :class:`TransportClosed`. Thread-safe. An invalid
        code (not 1000-4999) is sent as 1000.
        """
        if not isinstance(code, int) or not 1000 <= code <= 4999:
            code = 1000
        self._send_close_frame(struct.pack("!H", code))

    def _send_close_frame(self, payload: bytes) -> None:
        if not self._send_lock.acquire(timeout=_CLOSE_SEND_TIMEOUT):
            logger.debug("close frame not sent: a write is still in progress")
            return
        try:
            if self._close_sent or self._aborted:
                return
            self._close_sent = True
            sent = self._sock.send_bounded(_encode_frame(_OP_CLOSE, payload), _CLOSE_SEND_TIMEOUT)
            if not sent:
                logger.debug("close frame not sent: socket buffer full")
        except Exception as exc:
            logger.debug("close frame not sent: %s", _closed_reason(exc, aborted=self._aborted))
        finally:
            self._send_lock.release()

    # Receiving

    def recv(self) -> str | bytes:
        """Block until the next data message arrives and return it.

        Control frames are handled inside: a ping is answered with a pong, a pong is dropped, a
        close frame is answered and ends the connection. Fragmented messages are reassembled.
        Call from one thread only.

        Returns:
            ``str`` for a text message (strict UTF-8), ``bytes`` for a binary one.

        Raises:
            MalformedFrame: the message had invalid UTF-8 or exceeded ``max_frame_size`` (its
                payload was read past and dropped); the next ``recv()`` continues normally.
            TransportClosed: the connection ended (close frame, EOF, reset, abort, protocol error).
        """
        # Only the read side's own end stops it: after a failed write, frames the server sent
        # before it went away are still delivered.
        if self._recv_closed is not None:
            raise TransportClosed(self._recv_closed)
        if self._aborted:
            raise TransportClosed("connection aborted")
        try:
            return self._recv_message()
        except (MalformedFrame, TransportClosed):
            raise
        except Exception as exc:
            lost = self._lost(exc)
            self._recv_closed = str(lost)
            raise lost from exc

    def _recv_message(self) -> str | bytes:
        while True:
            try:
                fin, opcode, data = self._read_frame()
            except _Oversize as big:
                if self._on_oversize(big):
                    raise MalformedFrame(
                        f"message over max_frame_size ({self._max} bytes) dropped"
                    ) from None
                continue
            if opcode in (_OP_TEXT, _OP_BINARY):
                if self._frag_opcode is not None:
                    raise websocket.WebSocketProtocolException(
                        "new message inside a fragmented one"
                    )
                if fin:
                    return _deliver(opcode, data)
                self._frag_opcode = opcode
                self._frag_parts = [data]
                self._frag_len = len(data)
                self._limit = self._max - self._frag_len
            elif opcode == _OP_CONT:
                if self._frag_opcode is None:
                    raise websocket.WebSocketProtocolException("continuation frame without a start")
                self._frag_parts.append(data)
                self._frag_len += len(data)
                if fin:
                    opcode = self._frag_opcode
                    data = b"".join(self._frag_parts)
                    self._reset_fragments()
                    return _deliver(opcode, data)
                self._limit = self._max - self._frag_len
            elif opcode == _OP_PING:
                self._send_pong(data)
            elif opcode == _OP_CLOSE:
                code = _close_code(data)
                self._send_close_frame(data[:2])
                reason = f"closed by server with code {code}"
                self._closed_reason = self._closed_reason or reason
                self._recv_closed = reason
                raise TransportClosed(reason)
            # _OP_PONG: nothing to do (wsync's heartbeat is a protocol message).

    def _read_frame(self) -> tuple[bool, int, bytes]:
        """Read one frame: (fin, opcode, payload). Checks what websocket-client's parser checks.

        The header is read first, so a data frame longer than ``self._limit`` has its payload
        read past in 64 KiB pieces, never held whole, and raises :class:`_Oversize`.
        """
        sock = self._sock
        first, second = sock.read_exact(2)
        opcode = first & 0x0F
        fin = bool(first & 0x80)
        length = second & 0x7F
        if length == 126:
            (length,) = _UNPACK16(sock.read_exact(2))
        elif length == 127:
            (length,) = _UNPACK64(sock.read_exact(8))
        if first & 0x70:
            raise websocket.WebSocketProtocolException("reserved bits set")
        if second & 0x80:
            raise websocket.WebSocketProtocolException("masked frame from server")
        if opcode <= _OP_BINARY:
            if length > self._limit:
                sock.discard(length)
                raise _Oversize(opcode, fin, length)
        elif opcode < _OP_CLOSE or opcode > _OP_PONG:
            raise websocket.WebSocketProtocolException(f"unknown opcode {opcode}")
        elif length > _MAX_CONTROL_PAYLOAD or not fin:
            raise websocket.WebSocketProtocolException("invalid control frame")
        return fin, opcode, sock.read_exact(length)

    def _on_oversize(self, big: _Oversize) -> bool:
        """Update fragment state after a dropped frame; True when the caller should report it."""
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("dropped oversize data frame of %d bytes", big.length)
        if self._skipping:
            if big.opcode != _OP_CONT:
                raise websocket.WebSocketProtocolException("new message inside a fragmented one")
            if big.fin:
                self._skipping = False
                self._limit = self._max
            return False
        if big.opcode == _OP_CONT and self._frag_opcode is None:
            raise websocket.WebSocketProtocolException("continuation frame without a start")
        if big.opcode != _OP_CONT and self._frag_opcode is not None:
            raise websocket.WebSocketProtocolException("new message inside a fragmented one")
        self._reset_fragments()
        if not big.fin:
            self._skipping = True
            self._limit = -1  # drop every continuation frame, whatever its size
        return True

    def _reset_fragments(self) -> None:
        self._frag_opcode = None
        self._frag_parts = []
        self._frag_len = 0
        self._limit = self._max

    # Ending

    def abort(self) -> None:
        """Shut down and close the socket now; idempotent, thread-safe, never raises.

        A ``recv()`` or send blocked in another thread wakes with :class:`TransportClosed`.
        """
        self._aborted = True
        if self._closed_reason is None:
            self._closed_reason = "connection aborted"
        self._sock.abort()

    def _lost(self, exc: BaseException) -> TransportClosed:
        mapped = _map_error(exc, aborted=self._aborted)
        assert isinstance(mapped, TransportClosed)
        if self._closed_reason is None:
            self._closed_reason = str(mapped)
        logger.debug("connection to %s ended: %s", redact_url(self._url), mapped)
        return mapped


def _utf8(text: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text cannot be encoded as UTF-8 (lone surrogate)") from None


def _close_code(payload: bytes) -> int:
    """A close frame's status code, 1005 when it has none; checked as websocket-client does."""
    if not payload:
        return 1005
    if len(payload) == 1:
        raise websocket.WebSocketProtocolException("invalid close frame")
    code: int = _UNPACK16(payload[:2])[0]
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise websocket.WebSocketProtocolException(f"invalid close code {code}")
    return code


def _deliver(opcode: int, data: bytes) -> str | bytes:
    if opcode == _OP_BINARY:
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # from None: the decode error holds the whole payload.
        raise MalformedFrame(f"text frame of {len(data)} bytes is not valid UTF-8") from None


# --------------------------------------------------------------------------------------------------
# Connector


class _Attempt:
    """One ``open()`` in flight: its sockets (for cancel() to shut down) and its cancelled flag."""

    __slots__ = ("cancelled", "sockets", "wake")

    def __init__(self) -> None:
        self.cancelled = False
        self.sockets: list[socket.socket] = []
        self.wake = threading.Event()  # set by cancel() and by the DNS lookup when it is done


class Connector:
    """Opens :class:`Transport` connections to one URL with fixed options.

    Building one validates everything (``TypeError``/``ValueError`` in the caller's thread) and
    does no I/O. One Connector serves every attempt of a client.

    Cancellation is per attempt and never lost: :meth:`cancel` fails the ``open()`` in flight; when
    none is in flight, it fails the next ``open()`` at once instead (a cancel that races with the
    start of an attempt still stops it). Either way one cancel fails one attempt, and the attempts
    after it run normally. :meth:`reset` drops a pending cancel that is no longer wanted.

    Args:
        url: ``ws://`` or ``wss://`` URL (see :func:`validate_url`).
        ssl_context: for ``wss://``; ``None`` means ``ssl.create_default_context()`` (verifies
            the certificate and host name). Ignored for ``ws://``.
        headers: extra HTTP headers for the upgrade request; values are never logged. ``Host``
            and ``Origin`` replace websocket-client's own; the WebSocket handshake headers are
            refused.
        proxy: ``"http://[user:pass@]host:port"``: an HTTP CONNECT proxy (credentials sent as
            Basic ``Proxy-Authorization``); environment proxy variables are not consulted.
        max_frame_size: largest incoming message (bytes, after reassembly) that ``recv()``
            returns; larger ones raise :class:`MalformedFrame`.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        headers: Mapping[str, str] | None = None,
        proxy: str | None = None,
        max_frame_size: int = 1 << 20,
    ) -> None:
        self._url = validate_url(url)
        self._host, self._port, self._secure = _split_target(self._url)
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(
                f"ssl_context must be an ssl.SSLContext or None, got {type(ssl_context).__name__}"
            )
        self._ssl_context = ssl_context
        self._header_lines, self._header_options = _header_lines(headers)
        self._proxy = None if proxy is None else _parse_proxy(proxy)
        if isinstance(max_frame_size, bool) or not isinstance(max_frame_size, int):
            raise TypeError(f"max_frame_size must be an int, got {type(max_frame_size).__name__}")
        if max_frame_size <= 0:
            raise ValueError(f"max_frame_size must be > 0, got {max_frame_size}")
        self._max_frame_size = max_frame_size
        # Guards _attempts, _cancel_pending and each attempt's sockets and flag; held only to
        # read or update them, never around I/O.
        self._lock = threading.Lock()
        self._attempts: set[_Attempt] = set()
        self._cancel_pending = False

    def __repr__(self) -> str:
        return f"<Connector {redact_url(self._url)}>"

    @property
    def url(self) -> str:
        """The URL this connector opens (may carry credentials: log :func:`redact_url` of it)."""
        return self._url

    def cancel(self) -> None:
        """Fail the ``open()`` in flight promptly, or, if none is, the next one at once.

        Thread-safe, never blocks: shuts down the socket being connected (TCP connect, proxy
        tunnel, TLS handshake or HTTP upgrade) and wakes a DNS lookup, so ``open()`` raises
        :class:`ConnectError` ("connect cancelled ...") right away.
        """
        with self._lock:
            if not self._attempts:
                self._cancel_pending = True
                return
            attempts = list(self._attempts)
            sockets = []
            for attempt in attempts:
                attempt.cancelled = True
                sockets += attempt.sockets
        for attempt in attempts:
            attempt.wake.set()
        for sock in sockets:
            # Not connected yet, or already closed: the cancelled flag still stops the attempt.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def reset(self) -> None:
        """Drop a pending :meth:`cancel` (one made while no ``open()`` was in flight)."""
        with self._lock:
            self._cancel_pending = False

    def _begin(self) -> _Attempt:
        attempt = _Attempt()
        with self._lock:
            attempt.cancelled = self._cancel_pending
            self._cancel_pending = False
            self._attempts.add(attempt)
        return attempt

    def _adopt(self, attempt: _Attempt, sock: socket.socket) -> None:
        """Make ``sock`` reachable by cancel(); it is closed if the attempt fails."""
        with self._lock:
            attempt.sockets.append(sock)
            if attempt.cancelled:
                raise _Cancelled()

    def _check(self, attempt: _Attempt) -> None:
        with self._lock:
            if attempt.cancelled:
                raise _Cancelled()

    def _finish(self, attempt: _Attempt) -> None:
        """End the attempt; a cancel from now on is for the next one."""
        with self._lock:
            self._attempts.discard(attempt)
            if attempt.cancelled:
                raise _Cancelled()

    def open(self, timeout: float) -> Transport:
        """Open a connection: DNS, TCP, proxy tunnel, TLS and HTTP upgrade, within ``timeout``.

        Blocks for at most about ``timeout`` seconds overall (never hangs); :meth:`cancel` from
        another thread interrupts it. Thread-safe, but one attempt at a time is the intended use.

        Args:
            timeout: seconds for the whole attempt, > 0.

        Returns:
            An open :class:`Transport` whose socket is blocking with no timeout.

        Raises:
            TLSError: certificate or host-name verification failed (``ssl.SSLCertVerificationError``
                is in the cause chain); not worth retrying.
            UpgradeRejected: the server answered the upgrade with a non-101 status (retryable).
            ConnectError: anything else (refused, timed out, cancelled, proxy, TLS, bad response);
                the message says what failed and the redacted URL, the cause is chained.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number, got {type(timeout).__name__}")
        if not timeout > 0 or math.isinf(timeout):
            raise ValueError(f"timeout must be > 0 and finite, got {timeout}")
        started = time.monotonic()
        deadline = started + timeout
        where = redact_url(self._url)
        logger.debug("opening %s%s", where, " via proxy" if self._proxy else "")
        attempt = self._begin()
        phase = "dns lookup"
        websock = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=False)
        try:
            self._check(attempt)
            if self._proxy is not None:
                tcp_host, tcp_port, _ = self._proxy
            else:
                tcp_host, tcp_port = self._host, self._port
            addresses = self._resolve(attempt, tcp_host, tcp_port, deadline)
            phase = "tcp connect"
            sock = self._connect_tcp(attempt, addresses, deadline)
            if self._proxy is not None:
                phase = "proxy tunnel"
                tunnel = _BufferedSocket(sock, deadline)
                # websocket-client's tunnel helper only calls send()/recv() on its socket.
                _tunnel(tunnel, _bracket(self._host), self._port, self._proxy[2])  # type: ignore[arg-type]
                if tunnel.buffered():
                    raise websocket.WebSocketProxyException("proxy sent data before the upgrade")
            if self._secure:
                phase = "tls handshake"
                sock = self._start_tls(attempt, sock, deadline)
            phase = "http upgrade"
            buffered = _BufferedSocket(sock, deadline)
            websock.connect(  # type: ignore[no-untyped-call]  # websocket-client leaves it untyped
                self._url,
                socket=buffered,
                header=self._header_lines,
                redirect_limit=0,  # a redirect would reopen by itself, carrying our headers
                **self._header_options,
            )
            buffered.end_deadline()
            self._finish(attempt)
        except BaseException as exc:
            with self._lock:
                self._attempts.discard(attempt)
                cancelled = attempt.cancelled
            for each in attempt.sockets:
                _close_quietly(each)
            if not isinstance(exc, Exception):
                raise
            response = websock.handshake_response
            mapped = _map_error(
                exc,
                url=self._url,
                phase=phase,
                timeout=timeout,
                cancelled=cancelled,
                status=None if response is None else response.status,
            )
            logger.debug("open failed after %.1f ms: %s", _ms_since(started), mapped)
            raise mapped from exc
        logger.debug("opened %s in %.1f ms", where, _ms_since(started))
        return Transport(buffered, max_frame_size=self._max_frame_size, url=self._url)

    def _resolve(self, attempt: _Attempt, host: str, port: int, deadline: float) -> list[_Address]:
        """getaddrinfo bounded by the deadline and by cancel(); IP literals skip the thread."""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return _stream_addresses(
                socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
            )
        result: list[object] = []

        def lookup() -> None:
            try:
                result.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
            except Exception as exc:  # handed to open(), which maps it
                result.append(exc)
            finally:
                attempt.wake.set()

        thread = threading.Thread(target=lookup, name="wsync-resolve", daemon=True)
        thread.start()
        attempt.wake.wait(max(0.0, deadline - time.monotonic()))
        self._check(attempt)
        if not result:
            raise TimeoutError("dns lookup timed out")
        # It has set the event: let it exit, so no thread of ours outlives open().
        thread.join(max(0.0, deadline - time.monotonic()))
        outcome = result[0]
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, list)
        return _stream_addresses(outcome)

    def _connect_tcp(
        self, attempt: _Attempt, addresses: list[_Address], deadline: float
    ) -> socket.socket:
        """Try each address in turn until one connects, all within the deadline."""
        last: Exception = OSError(errno.EADDRNOTAVAIL, "no address to connect to")
        for family, kind, proto, address in addresses:
            sock = socket.socket(family, kind, proto)
            self._adopt(attempt, sock)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(remaining)
            # A cancel that came after _adopt() found nothing to shut down yet: see it now.
            self._check(attempt)
            try:
                sock.connect(address)
            except OSError as exc:
                if isinstance(exc, TimeoutError):
                    raise  # the deadline is spent: no time left for another address
                self._check(attempt)
                sock.close()
                last = exc
                continue
            self._check(attempt)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise last

    def _start_tls(self, attempt: _Attempt, sock: socket.socket, deadline: float) -> ssl.SSLSocket:
        context = self._ssl_context or ssl.create_default_context()
        tls = context.wrap_socket(sock, server_hostname=self._host, do_handshake_on_connect=False)
        # sock is detached now (fd -1); cancel() must reach the TLS socket instead.
        self._adopt(attempt, tls)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        tls.settimeout(remaining)
        tls.do_handshake()
        self._check(attempt)
        return tls


def _stream_addresses(infos: Sequence[tuple[Any, ...]]) -> list[_Address]:
    return [(info[0], info[1], info[2], info[4]) for info in infos]


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    sock.close()


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000.0
