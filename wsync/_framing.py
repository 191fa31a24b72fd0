"""WebSocket framing over one already-upgraded socket: the frame codec and :class:`Transport`.

Its one job is moving RFC 6455 frames over a socket whose HTTP upgrade is done: writing masked
client frames, reading and checking server frames (reassembly, strict UTF-8, size limit, control
frames), and ending the connection (close frame, abort). It holds the read-ahead socket wrapper
both phases share, :class:`_BufferedSocket`, which :mod:`wsync._transport` also hands to
websocket-client for the upgrade.

What it must not do: depend on websocket-client in any way (only ``wsync._transport`` imports
it); open, resolve or upgrade connections, wrap TLS or talk to a proxy (all ``wsync._transport``);
know anything of the wsync protocol, the state machine, the outbox or retries. It holds no wsync
lock, runs no user code and starts no thread.

:class:`Transport` parses and writes frames itself, doing the checks websocket-client's
``frame_buffer``/``ABNF`` do at a fraction of the cost (measured: websocket-client's ``recv()``
spent 38 of 47 us in its pure-Python UTF-8 validator, and its framing makes three reads per frame).
It decodes text strictly itself, reads an oversize payload past without holding it, and writes
with one ``sendall`` under its own send lock. Socket errors after the upgrade (``ssl``,
``OSError``, end of stream, protocol violations) become :class:`TransportClosed` in one place,
:func:`_closed_reason`.

Logging: DEBUG only, never frame content; the URL only in its redacted form, as given.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["MalformedFrame", "Transport", "TransportClosed"]

logger = logging.getLogger(__name__)

#: Bytes asked of the kernel per read: one recv() serves every frame already in the socket buffer.
_READ_AHEAD: Final = 64 * 1024
#: Where the read size starts and falls back to: CPython allocates the whole buffer before a
#: blocking recv(), so an idle connection holds only this much while it waits for a frame.
_READ_MIN: Final = 4 * 1024
#: Largest frame try_send_text() writes itself; bigger ones go to the writer thread.
_INLINE_LIMIT: Final = 16 * 1024
#: How long send_close() may wait for the send lock and for room in the socket's send buffer.
_CLOSE_SEND_TIMEOUT: Final = 0.25
#: How long the rest of a frame the kernel took only part of may wait for room (send_bounded).
_PARTIAL_SEND_TIMEOUT: Final = 0.25
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

# --------------------------------------------------------------------------------------------------
# Errors


class TransportClosed(Exception):
    """The connection ended (close frame, EOF, reset, abort); ``str()`` says why, never content."""


class MalformedFrame(Exception):
    """One incoming message was unusable (invalid UTF-8, too large); the connection still works."""


class _PeerClosed(Exception):
    """Internal: the peer closed the TCP stream (EOF) where a frame was expected."""


class _Oversize(Exception):
    """Internal: a data frame longer than the limit was read past and dropped."""

    def __init__(self, opcode: int, fin: bool, length: int) -> None:
        super().__init__(f"{length} bytes")
        self.opcode = opcode
        self.fin = fin
        self.length = length


class _ProtocolError(Exception):
    """Internal: the server broke RFC 6455 (bad opcode, bits or length); the connection fails."""


def _closed_reason(exc: BaseException, *, aborted: bool) -> str:
    """Say why the connection ended, for :class:`TransportClosed`: never content, never secrets.

    The one place that translates what a read or write after the upgrade raises (``ssl``,
    ``OSError``, end of stream, a protocol violation); ``open()``'s errors are mapped by
    ``wsync._transport._map_error`` instead.
    """
    if aborted:
        return "connection aborted"
    if isinstance(exc, _PeerClosed):
        return "connection closed by peer (EOF)"
    if isinstance(exc, _ProtocolError):
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

    __slots__ = ("_buf", "_deadline", "_poller", "_pos", "_read_size", "_sock")

    def __init__(self, sock: socket.socket, deadline: float | None) -> None:
        self._sock = sock
        self._poller: select.poll | None = None
        self._read_size = _READ_MIN  # adapts between _READ_MIN and _READ_AHEAD
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
                size = self._read_size
                chunk = self._sock.recv(size)
                if not chunk:
                    raise _PeerClosed("EOF")
                # A full read means more is waiting: read more at once next time (a busy
                # stream reaches 64 KiB per system call); a short one: back towards 4 KiB.
                if len(chunk) == size:
                    self._read_size = min(size * 2, _READ_AHEAD)
                elif len(chunk) < size // 4:
                    self._read_size = max(size // 2, _READ_MIN)
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
        """Write a small frame if the socket has room for it within ``timeout``; never blocks long.

        Returns False, having written nothing, when no room came in time (``timeout=0``: only if
        there is room now). Should the kernel take part of the frame only (rare: POLLOUT means
        room for far more than a control frame), the rest must follow before anything else, so it
        gets up to ``_PARTIAL_SEND_TIMEOUT`` more; past that, the stream ends in a partial frame:
        the write side is shut down, so nothing can follow it, and ``TimeoutError`` is raised.
        """
        poller = self._poller
        if poller is None:  # made once: every caller holds the Transport's send lock
            poller = self._poller = select.poll()
            poller.register(self._sock.fileno(), select.POLLOUT)
        if not poller.poll(timeout * 1000):
            return False
        if isinstance(self._sock, ssl.SSLSocket):
            # SSLSocket refuses flags; POLLOUT says a small record fits without blocking.
            self._sock.sendall(data)
            return True
        try:
            sent = self._sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False  # room for less than a segment after all: nothing written
        deadline = time.monotonic() + _PARTIAL_SEND_TIMEOUT
        while sent < len(data):
            if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self._sock, socket.SHUT_WR)
                raise TimeoutError(errno.ETIMEDOUT, "partial frame write timed out")
            with contextlib.suppress(BlockingIOError):
                sent += self._sock.send(data[sent:], socket.MSG_DONTWAIT)
        return True

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
    waits for a write, nor for room in the socket buffer: a pong it owes while another thread is
    writing, or while the buffer is full, is left for the next write to send right after it.

    Built by ``wsync._transport.Connector.open()`` once the upgrade is done.

    Args:
        sock: the upgraded socket, blocking with no timeout.
        max_frame_size: largest incoming message (bytes, after reassembly) :meth:`recv` returns.
        where: the connection's URL with no secrets (``redact_url``'s output), for logs only.
    """

    def __init__(self, sock: _BufferedSocket, *, max_frame_size: int, where: str) -> None:
        self._sock = sock
        self._where = where
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
        return f"<Transport {self._where} {state}>"

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

    def try_send_text(self, text: str) -> bool:
        """Write one text frame now if that cannot block; False if nothing was written.

        The fast path of ``Client.send()``, which must never block on the network: it writes
        only when no other thread is writing and the socket has room for the frame at once
        (``send_bounded`` with no wait); otherwise the caller hands the frame to the writer.

        Raises:
            TypeError, ValueError: as :meth:`send_text`.
            TransportClosed: the connection ended or the write failed.
        """
        data = _encode_frame(_OP_TEXT, _utf8(text))
        if len(data) > _INLINE_LIMIT or not self._send_lock.acquire(blocking=False):
            return False
        try:
            if self._closed_reason is not None:
                raise TransportClosed(self._closed_reason)
            if self._close_sent:
                raise TransportClosed("close frame already sent")
            try:
                written = self._sock.send_bounded(data, 0.0)
            except Exception as exc:
                raise self._lost(exc) from exc
        finally:
            self._send_lock.release()
        if self._pongs:
            self._send_pongs()
        return written

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
        """Answer a ping, from the reader thread, waiting neither for a writer nor for the peer.

        The pong is written now only if the send lock is free and the socket has room for it at
        once (``send_bounded`` with no wait); otherwise it is left queued for the next write,
        whose thread sends it right after its own frames. A peer that stops reading fills the
        send buffer: a plain ``sendall`` here would stall the reader until it read again, so the
        reader would not even see that peer's close frame.
        """
        self._pongs.append(_encode_frame(_OP_PONG, payload))
        self._send_pongs(reader=True)

    def _send_pongs(self, *, reader: bool = False) -> None:
        # Every thread that held the send lock checks for pongs after releasing it, so a pong
        # left while the lock was busy is sent by the thread that held it: nobody waits here.
        # Writers may block on a full socket buffer (they block on their own frames anyway);
        # the reader does not (see _send_pong).
        while self._pongs and self._send_lock.acquire(blocking=False):
            try:
                while self._pongs:
                    frame = self._pongs.popleft()
                    if self._closed_reason is not None or self._close_sent:
                        continue
                    if not reader:
                        self._sock.sendall(frame)
                    elif not self._sock.send_bounded(frame, 0.0):
                        self._pongs.appendleft(frame)  # no room now: left for the next write
                        return
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
                    raise _ProtocolError("new message inside a fragmented one")
                if fin:
                    return _deliver(opcode, data)
                self._frag_opcode = opcode
                self._frag_parts = [data]
                self._frag_len = len(data)
                self._limit = self._max - self._frag_len
            elif opcode == _OP_CONT:
                if self._frag_opcode is None:
                    raise _ProtocolError("continuation frame without a start")
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
            if length >> 63:
                # RFC 6455 5.2: the most significant bit MUST be 0. Reading past 2**63 bytes would
                # only end at EOF, so the connection fails now.
                raise _ProtocolError("64-bit payload length with the most significant bit set")
        if first & 0x70:
            raise _ProtocolError("reserved bits set")
        if second & 0x80:
            raise _ProtocolError("masked frame from server")
        if opcode <= _OP_BINARY:
            if length > self._limit:
                sock.discard(length)
                raise _Oversize(opcode, fin, length)
        elif opcode < _OP_CLOSE or opcode > _OP_PONG:
            raise _ProtocolError(f"unknown opcode {opcode}")
        elif length > _MAX_CONTROL_PAYLOAD or not fin:
            raise _ProtocolError("invalid control frame")
        return fin, opcode, sock.read_exact(length)

    def _on_oversize(self, big: _Oversize) -> bool:
        """Update fragment state after a dropped frame; True when the caller should report it."""
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("dropped oversize data frame of %d bytes", big.length)
        if self._skipping:
            if big.opcode != _OP_CONT:
                raise _ProtocolError("new message inside a fragmented one")
            if big.fin:
                self._skipping = False
                self._limit = self._max
            return False
        if big.opcode == _OP_CONT and self._frag_opcode is None:
            raise _ProtocolError("continuation frame without a start")
        if big.opcode != _OP_CONT and self._frag_opcode is not None:
            raise _ProtocolError("new message inside a fragmented one")
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
        mapped = TransportClosed(_closed_reason(exc, aborted=self._aborted))
        if self._closed_reason is None:
            self._closed_reason = str(mapped)
        logger.debug("connection to %s ended: %s", self._where, mapped)
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
        raise _ProtocolError("invalid close frame")
    code: int = _UNPACK16(payload[:2])[0]
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise _ProtocolError(f"invalid close code {code}")
    return code


def _deliver(opcode: int, data: bytes) -> str | bytes:
    if opcode == _OP_BINARY:
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # from None: the decode error holds the whole payload.
        raise MalformedFrame(f"text frame of {len(data)} bytes is not valid UTF-8") from None
