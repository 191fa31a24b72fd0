"""One upgraded WebSocket connection: the socket I/O around the sans-I/O codec.

Its one job is moving frames over a socket whose HTTP upgrade is done: a read loop that feeds
:class:`~wsync._frames.Parser`, a send lock so frames never interleave, the one pong owed to the
server, and the closing handshake (answer a close, fail the connection with 1002/1007 when the
server breaks RFC 6455, then give the server a moment to close TCP first, as RFC 6455 section
7.1.1 asks). What it must not do: parse frames (``wsync._frames`` does), open, resolve, tunnel,
wrap TLS or upgrade (``wsync._handshake``), or know anything of the wsync protocol, the state
machine, the outbox or retries. It holds no wsync lock, runs no user code and starts no thread.

Socket errors after the upgrade (``ssl``, ``OSError``, end of stream) become
:class:`TransportClosed` in one place, :func:`_closed_reason`.

Logging: DEBUG only, never frame content; the URL only in its redacted form, as given.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import select
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Final, NoReturn

from wsync._frames import (
    CLOSE_NO_STATUS,
    OP_BINARY,
    OP_PONG,
    Close,
    Dropped,
    Parser,
    Ping,
    ProtocolViolation,
    encode_close,
    encode_frame,
    encode_text,
    encode_texts,
)

__all__ = ["HANGUP", "MalformedFrame", "Transport", "TransportClosed"]

logger = logging.getLogger(__name__)

#: Bytes asked of the kernel per read at most: one recv() serves every frame already there.
_READ_AHEAD: Final = 64 * 1024
#: Where the read size starts and falls back to: CPython allocates the whole buffer before a
#: blocking recv(), so an idle connection holds only this much while it waits for a frame.
_READ_MIN: Final = 4 * 1024
#: Largest frame try_send_text() writes itself; bigger ones go to the writer thread.
_INLINE_LIMIT: Final = 16 * 1024
#: How long send_close() may wait for the send lock and for room in the socket's send buffer.
_CLOSE_SEND_TIMEOUT: Final = 0.25
#: How long the rest of a frame the kernel took only part of may wait for room (_send_bounded).
_PARTIAL_SEND_TIMEOUT: Final = 0.25
#: How long, after the close frames, the reader waits for the server to close TCP first.
_CLOSE_WAIT: Final = 1.0
# poll() events of a connection that ended (a FIN: POLLRDHUP, where the system has it; a
# reset or an error are reported whatever the mask).
HANGUP: Final = getattr(select, "POLLRDHUP", 0) | select.POLLHUP

# --------------------------------------------------------------------------------------------------
# Errors


class TransportClosed(Exception):
    """The connection ended (close frame, EOF, reset, abort, protocol error).

    ``str()`` says why, never content.

    Attributes:
        close_code: the server's close code when it sent a close frame (1005 when that frame
            had no code), else None.
        violation: True when wsync failed the connection because the server broke RFC 6455
            (a close frame with 1002 or 1007 was sent, as far as the socket allowed).
    """

    def __init__(
        self, reason: str, *, close_code: int | None = None, violation: bool = False
    ) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.violation = violation


class MalformedFrame(Exception):
    """One incoming message was dropped (over ``max_frame_size``); the connection still works."""


class _PeerClosed(Exception):
    """Internal: the peer closed the TCP stream (EOF) where a frame was expected."""


def _closed_reason(exc: BaseException, *, aborted: bool) -> str:
    """Say why the connection ended, for :class:`TransportClosed`: never content, never secrets.

    The one place that translates what a read or write after the upgrade raises (``ssl``,
    ``OSError``, end of stream); ``open()``'s errors are mapped in ``wsync._handshake``.
    """
    if aborted:
        return "connection aborted"
    if isinstance(exc, _PeerClosed):
        return "connection closed by peer (EOF)"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(exc, BrokenPipeError):
        return "connection closed by peer (broken pipe)"
    ssl = sys.modules.get("ssl")  # (no TLS error exists unless a connection imported ssl)
    if ssl is not None and isinstance(exc, ssl.SSLError):
        return f"tls error ({exc.reason or type(exc).__name__})"
    if isinstance(exc, OSError):
        if exc.errno == errno.EBADF:
            return "connection aborted"
        return f"connection lost ({exc.strerror or type(exc).__name__})"
    return f"connection lost ({type(exc).__name__})"


# --------------------------------------------------------------------------------------------------
# Transport


class Transport:
    """One open WebSocket connection.

    Thread model: one thread at a time reads (:meth:`recv`, :meth:`recv_within`: the
    connection's reader thread, or a caller it lent its turn to); any threads may send (writes are
    serialised by the send lock, so frames never interleave); :meth:`abort` may be called from
    any thread at any time and wakes a ``recv()`` or send blocked in another thread. The reader
    never waits for a write nor for room in the socket buffer: it owes the server at most one
    pong (the latest ping's, RFC 6455 section 5.5.3), written by whichever thread next finds the
    send lock free and room in the buffer. :meth:`try_send_text` never blocks at all, not even
    to write that pong.

    Built by ``wsync._handshake.Connector.open()`` once the upgrade is done.

    Args:
        sock: the upgraded socket, blocking with no timeout.
        max_frame_size: largest incoming message (bytes, after reassembly) :meth:`recv` returns.
        where: the connection's URL with no secrets (``redact_url``'s output), for logs only.
        initial: bytes the upgrade read past the end of the server's response (frames).
    """

    def __init__(
        self, sock: socket.socket, *, max_frame_size: int, where: str, initial: bytes = b""
    ) -> None:
        self._sock = sock
        ssl = sys.modules.get("ssl")  # imported by the handshake for wss://, else not at all
        self._tls = ssl is not None and isinstance(sock, ssl.SSLSocket)
        self._where = where
        self._max = max_frame_size
        self._parser = Parser(max_frame_size)
        self._parser.feed(initial)
        self._read_size = _READ_MIN  # adapts between _READ_MIN and _READ_AHEAD (reader only)
        # Serialises writes (data frames, the pong, the close frame): held around one write.
        self._send_lock = threading.Lock()
        self._poller: select.poll | None = None  # made once, under the send lock
        self._read_poller: select.poll | None = None  # made once, by whoever reads
        self._park_poller: select.poll | None = None  # the reader thread's, while parked
        self._park_watch = 0  # what it watches the socket for (0: not registered)
        self.waiting = False  # recv_within() is waiting for data: nothing read is in hand
        # The payload of the one pong owed (None: none). Guarded by its own lock, never held
        # during I/O, so that taking it and a newer ping replacing it cannot cross.
        self._pong_lock = threading.Lock()
        self._pong_owed: bytes | None = None
        self._closed_reason: str | None = None  # why sends fail from now on
        self._recv_closed: TransportClosed | None = None  # how recv() fails from now on
        self._aborted = False
        self._close_sent = False

    def __repr__(self) -> str:
        state = "open" if self._closed_reason is None else self._closed_reason
        return f"<Transport {self._where} {state}>"

    # Sending

    def send_text(self, text: str) -> None:
        """Write one text frame; blocks until the kernel has it. Thread-safe.

        Raises:
            TypeError: ``text`` is not a ``str``.
            ValueError: ``text`` cannot be encoded as UTF-8 (a lone surrogate); nothing is written.
            TransportClosed: the connection ended or the write failed.
        """
        self.send_texts([text])

    def send_binary(self, data: bytes) -> None:
        """Write one binary frame; blocks until the kernel has it. Thread-safe.

        wsync's protocol sends text only; this is for tools (the Autobahn echo client).

        Raises:
            TypeError: ``data`` is not bytes-like.
            TransportClosed: the connection ended or the write failed.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        self._write(encode_frame(OP_BINARY, bytes(data)))

    def try_send_text(self, text: str) -> bool:
        """Write one text frame now if that cannot block; False if nothing was written.

        The fast path of ``Client.send()``, which must never block on the network: it writes
        only when no other thread is writing and the socket has room for the frame at once;
        otherwise the caller hands the frame to the writer thread. A pong owed is written after
        it only if that cannot block either.

        Raises:
            TypeError, ValueError: as :meth:`send_text`.
            TransportClosed: the connection ended or the write failed.
        """
        data = encode_text(text)
        if len(data) > _INLINE_LIMIT or not self._send_lock.acquire(blocking=False):
            return False
        try:
            self._check_open()
            try:
                written = self._send_bounded(data, 0.0)
            except Exception as exc:
                raise self._lost(exc) from exc
        finally:
            self._send_lock.release()
        if self._pong_owed is not None:
            self._flush_pong()
        return written

    def send_texts(self, texts: Sequence[str]) -> None:
        """Write several text frames, in order, with one ``sendall`` (the writer thread's path).

        Every text is encoded before anything is written, so a ``TypeError``/``ValueError`` leaves
        the connection untouched. A pong owed goes first. Blocks until the kernel has it all.
        Thread-safe.

        Raises:
            TypeError, ValueError: as :meth:`send_text`.
            TransportClosed: the connection ended or the write failed (some frames may be written).
        """
        if texts:
            self._write(encode_texts(texts))

    def _write(self, data: bytes) -> None:
        """Write frames with a blocking ``sendall``, the pong owed first."""
        with self._send_lock:
            self._check_open()
            try:
                pong = self._take_pong()
                if pong is not None:
                    self._sock.sendall(encode_frame(OP_PONG, pong))
                self._sock.sendall(data)
            except Exception as exc:
                raise self._lost(exc) from exc
        if self._pong_owed is not None:
            self._flush_pong(wait=True)  # a writer may wait for room; a pong owed must go out

    def send_close(self, code: int = 1000) -> None:
        """Write a WebSocket close frame, best effort: never blocks long.

        Waits at most about 0.25 s for the send lock and for room in the socket buffer; gives
        up silently otherwise. Later sends raise :class:`TransportClosed`. Thread-safe.

        Raises:
            TypeError: ``code`` is not an int.
            ValueError: ``code`` may not be sent (1004-1006, 1015 and codes outside
                1000-1014 and 3000-4999); nothing is written.
        """
        self._send_close_frame(encode_close(code))

    def _check_open(self) -> None:
        """Caller holds the send lock."""
        if self._closed_reason is not None:
            raise TransportClosed(self._closed_reason)
        if self._close_sent:
            raise TransportClosed("close frame already sent")

    def _take_pong(self) -> bytes | None:
        with self._pong_lock:
            payload = self._pong_owed
            self._pong_owed = None
        return payload

    def _keep_pong(self, payload: bytes) -> None:
        """Owe ``payload``'s pong again, unless a newer ping replaced it meanwhile."""
        with self._pong_lock:
            if self._pong_owed is None:
                self._pong_owed = payload

    def _owe_pong(self, payload: bytes) -> None:
        """Remember the latest ping (replacing an older pong not sent yet) and try to answer."""
        with self._pong_lock:
            self._pong_owed = payload
        self._flush_pong()

    def _flush_pong(self, *, wait: bool = False) -> None:
        """Write the pong owed if the send lock is free: never waits for the lock.

        Every thread that held the send lock checks for a pong after releasing it, so a pong
        owed while the lock was busy is written by the thread that held it. The reader and
        :meth:`try_send_text` write it only if the socket has room now; a writer thread
        (``wait``) waits for room as it does for its own frames. So a pong owed while the socket
        is full goes out with the next write (wsync's heartbeat writes at least once per
        interval) or the next ping's answer, whichever comes first.
        """
        while self._pong_owed is not None and self._send_lock.acquire(blocking=False):
            try:
                payload = self._take_pong()
                if payload is None or self._closed_reason is not None or self._close_sent:
                    continue
                frame = encode_frame(OP_PONG, payload)
                if wait:
                    self._sock.sendall(frame)
                elif not self._send_bounded(frame, 0.0):
                    self._keep_pong(payload)
                    return
            except Exception as exc:
                self._lost(exc)  # recorded for the next send; the reader sees it on its next read
                return
            finally:
                self._send_lock.release()

    def _send_close_frame(self, frame: bytes) -> None:
        if not self._send_lock.acquire(timeout=_CLOSE_SEND_TIMEOUT):
            logger.debug("close frame not sent: a write is still in progress")
            return
        try:
            if self._close_sent or self._aborted:
                return
            self._close_sent = True
            if not self._send_bounded(frame, _CLOSE_SEND_TIMEOUT):
                logger.debug("close frame not sent: socket buffer full")
        except Exception as exc:
            logger.debug("close frame not sent: %s", _closed_reason(exc, aborted=self._aborted))
        finally:
            self._send_lock.release()

    def _send_bounded(self, data: bytes, timeout: float) -> bool:
        """Write a frame if the socket has room for it within ``timeout``; never blocks long.

        Returns False, having written nothing, when no room came in time (``timeout=0``: only
        if there is room now). Should the kernel take part of the frame only, the rest must
        follow before anything else, so it gets up to ``_PARTIAL_SEND_TIMEOUT`` more; past that,
        the stream ends in a partial frame: the write side is shut down, so nothing can follow
        it, and ``TimeoutError`` is raised. Caller holds the send lock.
        """
        sock = self._sock
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(sock.fileno(), select.POLLOUT)
        # POLLOUT first, not a plain try: it is set only while the socket has ample room
        # (a third of its buffer free), so a frame is rarely split; a send into a nearly
        # full buffer would take part of the frame and then have to wait for the rest.
        if not poller.poll(timeout * 1000):
            return False
        if self._tls:
            # SSLSocket refuses flags; POLLOUT says a small record fits without blocking.
            sock.sendall(data)
            return True
        try:
            sent = sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False  # room for less than a segment after all: nothing written
        deadline = time.monotonic() + _PARTIAL_SEND_TIMEOUT
        while sent < len(data):
            if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_WR)
                raise TimeoutError(errno.ETIMEDOUT, "partial frame write timed out")
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(data[sent:], socket.MSG_DONTWAIT)
        return True

    # Receiving

    def recv(self) -> str | bytes:
        """Block until the next data message arrives and return it. Call from one thread only.

        Control frames are handled inside: a ping is owed a pong, a pong is dropped, a close
        frame is answered, and then the server gets about a second to close TCP first.
        Fragmented messages are reassembled and text is checked as strict UTF-8.

        Returns:
            ``str`` for a text message, ``bytes`` for a binary one.

        Raises:
            MalformedFrame: the message exceeded ``max_frame_size`` (its payload was read past
                and dropped); the next ``recv()`` continues normally.
            TransportClosed: the connection ended: close frame (``close_code``), EOF, reset,
                abort, or a breach of RFC 6455 by the server (``violation``: the connection was
                failed with close code 1002, or 1007 for invalid UTF-8).
        """
        message = self._receive(None)
        assert message is not None  # no deadline: it waits until one arrives
        return message

    def recv_within(self, timeout: float) -> str | bytes | None:
        """As :meth:`recv`, but None when no whole message arrived within ``timeout`` seconds.

        A message that has only partly arrived stays buffered for the next call (of either
        method), so whoever holds the turn to read can stop at any deadline. The wait for data
        is the only place this method blocks; while in it, :attr:`waiting` is True, so that a
        caller interrupted there (Ctrl-C) knows that nothing was read and lost.
        """
        return self._receive(time.monotonic() + timeout)

    def _receive(self, deadline: float | None) -> str | bytes | None:
        if self._recv_closed is not None:
            raise self._again()
        if self._aborted:
            raise TransportClosed("connection aborted")
        next_event = self._parser.next_event
        try:
            while True:
                event = next_event()
                kind = type(event)
                if kind is str or kind is bytes:
                    return event  # type: ignore[return-value]  # narrowed by the type check
                if event is None:
                    if deadline is not None and not self._readable(deadline):
                        return None
                    self._read_more()
                elif kind is Ping:
                    self._owe_pong(event.payload)  # type: ignore[union-attr]  # a Ping
                elif kind is Dropped:
                    if logger.isEnabledFor(logging.DEBUG):
                        logger.debug("dropped message over %d bytes", self._max)
                    raise MalformedFrame(
                        f"message over max_frame_size ({self._max} bytes) dropped"
                    )
                elif kind is Close:
                    assert isinstance(event, Close)
                    self._on_close(event)
                # Pong: nothing to do (wsync's heartbeat is a protocol message).
        except ProtocolViolation as violation:
            self._fail(violation)
        except (MalformedFrame, TransportClosed):
            raise
        except Exception as exc:
            lost = self._lost(exc)
            self._recv_closed = lost
            raise self._again() from exc

    def _readable(self, deadline: float) -> bool:
        """Wait until the socket has data (or an end) to read, at most until ``deadline``."""
        sock = self._sock
        if self._tls and sock.pending():  # type: ignore[attr-defined]  # an SSLSocket
            return True  # bytes decrypted already, which poll() does not see
        poller = self._read_poller
        if poller is None:
            poller = self._read_poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
        self.waiting = True
        ready = poller.poll(max(0, math.ceil((deadline - time.monotonic()) * 1000)))
        self.waiting = False
        return bool(ready)

    def buffered(self) -> bool:
        """Whether bytes already read wait to be parsed (then :meth:`recv` starts with them)."""
        return self._parser.buffered() > 0

    def wait_for_turn(self, wake_fd: int, watch: int, timeout: float | None) -> bool:
        """For the reader thread waiting for its turn to read: wait until the socket shows
        what ``watch`` asks (``select.POLLIN``: data or an end; :data:`HANGUP`: an end or a
        reset only; 0: nothing of the socket), ``wake_fd`` is readable, or ``timeout``
        passes. True when the socket is ready. Never reads the socket: a caller may read it
        meanwhile (with :meth:`recv_within`), so this uses a poll object of its own."""
        if self._aborted:
            return True  # recv() says how it ended
        sock = self._sock
        if watch == select.POLLIN and self._tls and sock.pending():  # type: ignore[attr-defined]
            return True  # bytes decrypted already, which poll() does not see
        fd = sock.fileno()
        poller = self._park_poller
        if poller is None:
            poller = self._park_poller = select.poll()
            poller.register(wake_fd, select.POLLIN)
        if watch != self._park_watch:
            if not watch:
                poller.unregister(fd)  # (an end is reported whatever the mask says)
            else:
                poller.register(fd, watch)  # registered again: the mask changes
            self._park_watch = watch
        events = poller.poll(None if timeout is None else math.ceil(timeout * 1000))
        return any(ready == fd for ready, _ in events)

    def recv_buffered(self) -> str | bytes | None:
        """The next data message if the bytes read already hold it whole; else None.

        Never reads the socket nor blocks: after :meth:`recv`, a reader takes with it the
        messages the same read brought, to handle them in one go. Only a message in one
        frame, at the front, is taken; anything else there (a control frame, a fragment, an
        oversize or invalid message) stays for the next :meth:`recv`, which handles it as
        usual. Call from the thread that calls :meth:`recv`.
        """
        if self._recv_closed is not None or self._aborted:
            return None
        return self._parser.next_message()

    def _read_more(self) -> None:
        size = self._read_size
        chunk = self._sock.recv(size)
        if not chunk:
            raise _PeerClosed("EOF")
        # A full read means more is waiting: read more at once next time (a busy stream
        # reaches 64 KiB per system call); a short one: back towards 4 KiB.
        if len(chunk) == size:
            self._read_size = min(size * 2, _READ_AHEAD)
        elif len(chunk) < size // 4:
            self._read_size = max(size // 2, _READ_MIN)
        self._parser.feed(chunk)

    def _on_close(self, event: Close) -> NoReturn:
        """The server's close frame: answer it (unless ours went first), let it close TCP."""
        reason = f"closed by server with code {event.code}"
        if self._closed_reason is None:
            self._closed_reason = reason
        self._send_close_frame(encode_close(None if event.code == CLOSE_NO_STATUS else event.code))
        self._await_eof()
        self._recv_closed = TransportClosed(reason, close_code=event.code)
        raise self._again()

    def _fail(self, violation: ProtocolViolation) -> NoReturn:
        """Fail the connection (RFC 6455 section 7.1.7): close frame with the code, then wait."""
        what = "invalid data" if violation.code != 1002 else "protocol error"
        reason = f"{what}: {violation} (closed with {violation.code})"
        if self._closed_reason is None:
            self._closed_reason = reason
        logger.debug("failing the connection to %s: %s", self._where, reason)
        self._send_close_frame(encode_close(violation.code))
        self._await_eof()
        self._recv_closed = TransportClosed(reason, violation=True)
        raise self._again() from None

    def _await_eof(self) -> None:
        """Read and drop whatever comes until the server closes TCP, for about a second.

        RFC 6455 section 7.1.1: the server should close the TCP connection first, so that it,
        not the client, holds the TIME_WAIT state. Only the reader uses the socket now (no frame
        may follow a close frame), so its timeout may change. abort() ends the wait at once.
        """
        deadline = time.monotonic() + _CLOSE_WAIT
        try:
            while not self._aborted:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.debug("the server did not close TCP within %.1f s", _CLOSE_WAIT)
                    return
                self._sock.settimeout(remaining)
                if not self._sock.recv(_READ_MIN):
                    return
        except (OSError, ValueError):
            return  # timed out, reset, or aborted meanwhile: the connection is over either way

    def _again(self) -> TransportClosed:
        """A fresh copy of how recv() ended, for every later call."""
        closed = self._recv_closed
        assert closed is not None
        return TransportClosed(
            str(closed), close_code=closed.close_code, violation=closed.violation
        )

    # Ending

    def abort(self) -> None:
        """Shut down and close the socket now; idempotent, thread-safe, never raises.

        A ``recv()`` or send blocked in another thread wakes with :class:`TransportClosed`.
        """
        self._aborted = True
        if self._closed_reason is None:
            self._closed_reason = "connection aborted"
        with contextlib.suppress(OSError):  # already closed, or never connected
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        self._sock.close()

    def _lost(self, exc: BaseException) -> TransportClosed:
        mapped = TransportClosed(_closed_reason(exc, aborted=self._aborted))
        if self._closed_reason is None:
            self._closed_reason = str(mapped)
        logger.debug("connection to %s ended: %s", self._where, mapped)
        return mapped
