"""The one module that imports websocket-client: open a WebSocket connection, or fail clearly.

Its one job is turning a URL and options into an upgraded connection: validating URLs and options,
DNS, TCP connect, an HTTP CONNECT proxy tunnel, TLS, the HTTP upgrade, cancelling an attempt in
flight, and translating every websocket-client, ``ssl`` and ``OSError`` exception raised on the way
into a :class:`~wsync._errors.ConnectError` in one place, :func:`_map_error`. What happens on the
connection afterwards (frames, ``send``/``recv``/``close``/``abort``) is :mod:`wsync._framing`'s
job; :class:`Transport` and its errors are re-exported from here, so the rest of wsync imports
them from this module.

What it must not do: parse or write WebSocket frames (``wsync._framing`` does, and never imports
websocket-client), or know anything of the wsync protocol, the state machine, the outbox or
retries. It holds no wsync lock, runs no user code and starts no long-lived thread (only a
short-lived ``wsync-resolve`` thread per ``open()``, so a slow DNS lookup stays bounded by the
timeout and by ``cancel()``).

How :meth:`Connector.open` works: it opens the TCP socket itself (``getaddrinfo`` + a non-blocking
``connect``), tunnels through an HTTP CONNECT proxy when asked (websocket-client's tunnel helper),
wraps TLS with the caller's ``ssl.SSLContext`` (default: ``ssl.create_default_context()``, which
verifies the certificate and the host name) and hands the socket to websocket-client for the HTTP
upgrade only. Every socket in flight is registered, so :meth:`Connector.cancel` can ``shutdown()``
it from another thread: websocket-client's own ``abort()`` cannot interrupt an upgrade in flight.
websocket-client's ``WebSocket`` object is dropped after the upgrade: its ``close()`` reads frames
itself, which would race the reader thread.

Logging: DEBUG only, never header values, URLs only through :func:`redact_url`.
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
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import websocket
from websocket._http import _tunnel

from wsync._errors import ConnectError, TLSError, UpgradeRejected
from wsync._framing import (
    MalformedFrame,
    Transport,
    TransportClosed,
    _BufferedSocket,
    _PeerClosed,
)
from wsync._framing import _encode_frame as _encode_frame  # re-exported: benchmarks patch it
from wsync._framing import _utf8 as _utf8  # re-exported: benchmarks use it

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


class _Cancelled(Exception):
    """Internal: Connector.cancel() was called while (or before) this open() ran."""


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
    url: str,
    phase: str,
    timeout: float,
    cancelled: bool,
    status: int | None,
) -> ConnectError:
    """Translate any websocket-client, ``ssl`` or ``OSError`` exception of ``open()``: one boundary.

    The result is a :class:`ConnectError` (or :class:`TLSError`, :class:`UpgradeRejected`) whose
    message says what failed and the redacted URL. The caller chains ``exc`` as ``__cause__``.
    Messages never carry content, header values or credentials. (Once the upgrade is done,
    websocket-client is out of the way: ``wsync._framing`` maps what the open connection raises.)
    """
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
        return Transport(buffered, max_frame_size=self._max_frame_size, where=where)

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
            try:
                self._connect_one(attempt, sock, address, deadline)
            except OSError as exc:
                if isinstance(exc, TimeoutError):
                    raise  # the deadline is spent: no time left for another address
                self._check(attempt)
                sock.close()
                last = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise last

    def _connect_one(
        self, attempt: _Attempt, sock: socket.socket, address: Any, deadline: float
    ) -> None:
        """``connect()`` bounded by the deadline and by cancel(), with no window to lose a cancel.

        The connect is started non-blocking and the cancelled flag is checked only after that:
        a cancel() made before the check is seen by it, and one made after finds the socket
        already connecting, so its ``shutdown()`` ends the wait below at once. (A ``connect()``
        after the check could miss a cancel() landing between the two: shutting down a socket
        that is not connecting yet fails with ENOTCONN and, by POSIX, does nothing; only Linux
        marks the socket, which a later connect's wait happens to notice.)
        Leaves ``sock`` connected with the time remaining as its timeout, as ``connect()`` would.
        """
        if deadline - time.monotonic() <= 0:
            raise TimeoutError("timed out")
        sock.setblocking(False)
        code = sock.connect_ex(address)
        self._check(attempt)
        if code in (errno.EINPROGRESS, errno.EINTR):  # EINTR: it goes on in the background
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                raise TimeoutError("timed out")
            self._check(attempt)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, os.strerror(code))  # OSError picks the subclass for the errno
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(remaining)

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
