"""Open a WebSocket connection, or fail clearly: DNS, TCP, proxy tunnel, TLS and the HTTP upgrade.

Its one job is turning a URL and options into an upgraded socket handed to
:class:`~wsync._connection.Transport`: validating the URL and every option once (the validators
below are what ``Client`` calls too), DNS, TCP connect, an HTTP CONNECT proxy tunnel, TLS, the
HTTP/1.1 upgrade (RFC 6455 section 4.1) with its checks, a cookie jar per :class:`Connector`,
cancelling an attempt in flight, and translating every ``ssl``, ``OSError`` and HTTP failure on
the way into a :class:`~wsync._errors.ConnectError` with its ``phase``, in one place,
:func:`_map_error`. What it must not do: read or write WebSocket frames (``wsync._connection``
and ``wsync._frames`` do), or know anything of the wsync protocol, the state machine, the outbox
or retries. It holds no wsync lock and starts no long-lived thread (only a short-lived
``wsync-resolve`` thread per ``open()``, so a slow DNS lookup stays bounded by the timeout and by
``cancel()``); the only user code it runs is a ``headers`` callable, once per attempt.

The upgrade's HTTP is wsync's own (``wsync._http11``, on the standard library's header
parser) rather than websocket-client's, which did it before: websocket-client keeps one cookie
jar for the whole process (a ``Set-Cookie`` from one server went to every other client of that
host), reads header lines without any limit, accepts a 101 that selects an extension or
subprotocol never offered and an HTTP/1.0 answer, and quotes the server's response in its
errors. Here the response head gets a byte budget (``wsync._http11.MAX_RESPONSE_HEAD``), errors
carry only a status code and wsync's own words (never text that came from the network, which a
reflecting proxy could fill with our own ``Proxy-Authorization``), and cookies stay in their
:class:`Connector`. wsync no longer imports websocket-client at all.

Cookies: each :class:`Connector` keeps its own :class:`http.cookiejar.CookieJar` (its default
policy: domain, path, expiry and ``Secure`` rules), so a client sends its own server's cookies
back on its reconnects (sticky sessions) and nothing else: a Connector only ever talks to one
host, and no jar is shared between clients. The jar (with ``http.cookiejar`` and
``urllib.request``) is made by the first response that sets a cookie: a client whose server
sets none never imports them.

Imports: ``ssl`` is imported only for a ``wss://`` URL or an ``ssl_context`` argument, and
``ipaddress`` when a host is checked; ``import wsync`` pays for neither (issue 15).

Logging: DEBUG only, never header values, URLs only through :func:`redact_url`.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import math
import os
import select
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple
from urllib.parse import unquote, urlsplit

from wsync._connection import Transport
from wsync._errors import ConnectError, TLSError, UpgradeRejected
from wsync._exit import start_thread
from wsync._http11 import (
    BadResponse,
    CookieResponse,
    HeadReader,
    PeerClosed,
    Refused,
    check_upgrade,
    read_head,
    send_head,
)

if TYPE_CHECKING:
    import http.client
    import http.cookiejar
    import ssl

__all__ = [
    "Connector",
    "HeadersOption",
    "ProxyTarget",
    "check_headers",
    "check_max_frame_size",
    "check_ssl_context",
    "is_loopback_host",
    "parse_proxy",
    "redact_url",
    "validate_url",
]

logger = logging.getLogger(__name__)

#: Headers the upgrade writes itself; a second copy would break it.
_RESERVED_HEADERS: Final = frozenset(
    {
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "content-length",
        "transfer-encoding",
    }
)
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
#: (family, type, proto, sockaddr) of one getaddrinfo() answer.
_Address = tuple[int, int, int, Any]
_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)

#: The upgrade's extra headers: validated (name, value) pairs, or a callable returning a mapping
#: before every attempt.
HeadersOption = tuple[tuple[str, str], ...] | Callable[[], Mapping[str, str]]


class ProxyTarget(NamedTuple):
    """An HTTP CONNECT proxy, from :func:`parse_proxy`."""

    host: str
    port: int
    auth: tuple[str, str] | None  # (user, password) for Basic Proxy-Authorization


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


#: The words for each phase in messages.
_PHASE_WORDS: Final = {
    "resolve": "dns lookup",
    "tcp": "tcp connect",
    "proxy": "proxy tunnel",
    "tls": "tls handshake",
    "upgrade": "http upgrade",
}


def _map_error(
    exc: BaseException, *, url: str, phase: str, timeout: float, cancelled: bool
) -> ConnectError:
    """Translate whatever ``open()`` raised into a ConnectError: the one boundary.

    The result is a :class:`ConnectError` (or :class:`TLSError`, :class:`UpgradeRejected`) whose
    message says what failed and the redacted URL, and whose ``phase`` says where. The caller
    chains ``exc`` as ``__cause__``. Messages never carry content, header values, credentials or
    any text the network sent: only status codes and wsync's own words.
    """
    where = redact_url(url)
    words = _PHASE_WORDS[phase]
    if cancelled or isinstance(exc, _Cancelled):
        return ConnectError(f"connect cancelled during {words}: {where}", phase="cancelled")
    # No TLS error can exist before ssl is imported (by a wss:// attempt or the caller).
    ssl_imported = "ssl" in sys.modules
    if ssl_imported:
        import ssl

        verify = _find_in_chain(exc, ssl.SSLCertVerificationError)
        if isinstance(verify, ssl.SSLCertVerificationError):
            detail = verify.verify_message or verify.reason or "verification failed"
            return TLSError(f"tls certificate verification failed ({detail}): {where}")
    if isinstance(exc, Refused):
        code = exc.status
        if phase == "proxy":
            return ConnectError(f"proxy refused the tunnel with HTTP {code}: {where}", phase=phase)
        if code in _REDIRECT_STATUSES:
            return UpgradeRejected(
                f"upgrade answered with redirect HTTP {code} (not followed): {where}", code
            )
        if code in (401, 403):
            return UpgradeRejected(f"upgrade rejected by server with HTTP {code}: {where}", code)
        return UpgradeRejected(f"upgrade failed with HTTP {code}: {where}", code)
    if isinstance(exc, BadResponse):
        return ConnectError(f"{words} failed ({exc}): {where}", phase=phase)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return ConnectError(
            f"connect timed out after {timeout:g} s during {words}: {where}", phase=phase
        )
    if isinstance(exc, socket.gaierror):
        return ConnectError(
            f"dns lookup failed ({exc.strerror or 'unknown error'}): {where}", phase=phase
        )
    if ssl_imported and isinstance(exc, ssl.SSLError):
        return ConnectError(
            f"tls handshake failed ({exc.reason or type(exc).__name__}): {where}", phase=phase
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"connection refused: {where}", phase=phase)
    if isinstance(exc, PeerClosed):
        return ConnectError(f"connection closed by server during {words}: {where}", phase=phase)
    if isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
        return ConnectError(f"{words} failed ({reason}): {where}", phase=phase)
    return ConnectError(f"{words} failed ({type(exc).__name__}): {where}", phase=phase)


# --------------------------------------------------------------------------------------------------
# URLs and options: every option is checked here, once


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
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_proxy(proxy: object) -> ProxyTarget | None:
    """Check the ``proxy`` option: None, or ``"http://[user:pass@]host[:port]"``.

    Returns:
        None, or the proxy's host, port (default 80) and Basic credentials.

    Raises:
        TypeError: not a ``str`` or None.
        ValueError: another scheme than http, no host, a bad port.
    """
    if proxy is None:
        return None
    if not isinstance(proxy, str):
        raise TypeError(f"proxy must be a str or None, got {type(proxy).__name__}")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in proxy):
        raise ValueError("proxy must not contain whitespace or control characters")
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
    return ProxyTarget(parts.hostname, port or 80, auth)


def check_headers(headers: object) -> HeadersOption:
    """Check the ``headers`` option: None, a mapping of str to str, or a callable returning one.

    A mapping is checked now; a callable's mapping is checked the same way before each attempt.
    ``Host`` and ``Origin`` replace the upgrade's own; the WebSocket handshake headers are
    refused. Values are never echoed in errors (they may be credentials).

    Returns:
        The validated (name, value) pairs, or the callable itself.

    Raises:
        TypeError: not a mapping or callable, or a name or value that is not a ``str``.
        ValueError: an invalid header name, a value with CR, LF or NUL, or a reserved header.
    """
    if headers is None:
        return ()
    if callable(headers) and not isinstance(headers, Mapping):
        return headers  # checked by _headers_for() before each attempt
    if not isinstance(headers, Mapping):
        raise TypeError(
            f"headers must be a mapping, a callable or None, got {type(headers).__name__}"
        )
    pairs: list[tuple[str, str]] = []
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("header names and values must be str")
        if not name or not set(name) <= _TOKEN_CHARS:
            raise ValueError(f"invalid header name {name[:40]!r}")
        if any(ch in value for ch in "\r\n\0"):
            raise ValueError(f"header {name!r} has a value with CR, LF or NUL")
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the upgrade itself")
        pairs.append((name, value))
    return tuple(pairs)


def check_ssl_context(ssl_context: object, url: str) -> ssl.SSLContext | None:
    """Check the ``ssl_context`` option against the (validated) URL.

    Raises:
        TypeError: not an ``ssl.SSLContext`` or None.
        ValueError: a context for a ``ws://`` URL (it would be silently unused).
    """
    if ssl_context is None:
        return None
    import ssl

    if not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError(
            f"ssl_context must be an ssl.SSLContext or None, got {type(ssl_context).__name__}"
        )
    if not url.lower().startswith("wss://"):
        raise ValueError("ssl_context is given but the URL is not wss://")
    return ssl_context


def check_max_frame_size(max_frame_size: object) -> int:
    """Check the ``max_frame_size`` option: an int >= 1 (bytes).

    Raises:
        TypeError: not an int (``bool`` included).
        ValueError: < 1.
    """
    if isinstance(max_frame_size, bool) or not isinstance(max_frame_size, int):
        raise TypeError(f"max_frame_size must be an int, got {type(max_frame_size).__name__}")
    if max_frame_size < 1:
        raise ValueError(f"max_frame_size must be >= 1, got {max_frame_size}")
    return max_frame_size


def _split_target(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    secure = parts.scheme.lower() == "wss"
    host = parts.hostname
    assert host is not None  # validate_url checked it
    return host, parts.port or (443 if secure else 80), secure


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------------------------------
# Connector


class _Attempt:
    """One ``open()`` in flight: its sockets (for cancel() to shut down) and its cancelled flag."""

    __slots__ = ("__weakref__", "cancelled", "sockets", "wake")

    def __init__(self) -> None:
        self.cancelled = False
        self.sockets: list[socket.socket] = []
        self.wake = threading.Event()  # set by cancel() and by the DNS lookup when it is done


class _Lookup:
    """One ``getaddrinfo`` on its own short-lived thread, shared by the attempts that wait."""

    def __init__(self, host: str, port: int) -> None:
        self.key = (host, port)
        self.result: object = None
        self.done = threading.Event()
        self.waiters: weakref.WeakSet[_Attempt] = weakref.WeakSet()
        self.run_here = False  # no thread could start: the attempt runs it itself
        self.thread = threading.Thread(target=self.run, name="wsync-resolve", daemon=True)

    def run(self) -> None:
        host, port = self.key
        try:
            self.result = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except Exception as exc:  # handed to open(), which maps it
            self.result = exc
        finally:
            self.done.set()
            for attempt in list(self.waiters):
                attempt.wake.set()


class Connector:
    """Opens :class:`Transport` connections to one URL with fixed options.

    Building one validates everything (``TypeError``/``ValueError`` in the caller's thread) and
    does no I/O. One Connector serves every attempt of a client, and keeps that client's cookies.

    Cancellation is per attempt and never lost: :meth:`cancel` fails the ``open()`` in flight; when
    none is in flight, it fails the next ``open()`` at once instead (a cancel that races with the
    start of an attempt still stops it). Either way one cancel fails one attempt, and the attempts
    after it run normally. :meth:`reset` drops a pending cancel that is no longer wanted.

    Args:
        url: ``ws://`` or ``wss://`` URL (see :func:`validate_url`); its userinfo is not sent.
        ssl_context: for ``wss://`` only; ``None`` means ``ssl.create_default_context()``
            (verifies the certificate and host name).
        headers: extra HTTP headers for the upgrade request (see :func:`check_headers`): a
            mapping, or a callable returning one, called before every attempt (fresh tokens);
            values are never logged.
        proxy: ``"http://[user:pass@]host:port"``: an HTTP CONNECT proxy (credentials sent as
            Basic ``Proxy-Authorization``); environment proxy variables are not consulted.
        max_frame_size: largest incoming message (bytes, after reassembly) that ``recv()``
            returns; larger ones raise ``MalformedFrame``.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
        proxy: str | None = None,
        max_frame_size: int = 1 << 20,
    ) -> None:
        self._url = validate_url(url)
        self._host, self._port, self._secure = _split_target(self._url)
        self._ssl_context = check_ssl_context(ssl_context, self._url)
        self._headers = check_headers(headers)
        self._proxy = parse_proxy(proxy)
        self._max_frame_size = check_max_frame_size(max_frame_size)
        parts = urlsplit(self._url)
        self._resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # The cookie jar's view of this URL: http(s) with the same host, port and path.
        self._cookie_url = ("https" if self._secure else "http") + self._url[len(parts.scheme) :]
        # This client's only (thread-safe); made by the first response that sets a cookie.
        self._cookies: http.cookiejar.CookieJar | None = None
        # Guards _attempts, _cancel_pending and each attempt's sockets and flag; held only to
        # read or update them, never around I/O.
        self._lock = threading.Lock()
        self._attempts: set[_Attempt] = set()
        self._lookup: _Lookup | None = None  # the DNS lookup of the last attempt, if running
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
        :class:`ConnectError` ("connect cancelled ...", phase ``"cancelled"``) right away.
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

        Blocks for at most about ``timeout`` seconds overall (never hangs), plus whatever a
        ``headers`` callable takes; :meth:`cancel` from another thread interrupts it.
        Thread-safe, but one attempt at a time is the intended use.

        Args:
            timeout: seconds for the whole attempt, > 0.

        Returns:
            An open :class:`Transport` whose socket is blocking with no timeout.

        Raises:
            TLSError: certificate or host-name verification failed (``ssl.SSLCertVerificationError``
                is in the cause chain); not worth retrying.
            UpgradeRejected: the server answered the upgrade with a non-101 status (retryable).
            ConnectError: anything else (refused, timed out, cancelled, proxy, TLS, an invalid
                101, a failing ``headers`` callable); the message says what failed and the
                redacted URL, ``phase`` says where, the cause is chained.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number, got {type(timeout).__name__}")
        if not timeout > 0 or math.isinf(timeout):
            raise ValueError(f"timeout must be > 0 and finite, got {timeout}")
        started = time.monotonic()
        where = redact_url(self._url)
        header_pairs = self._headers_for(where)
        deadline = started + timeout
        logger.debug("opening %s%s", where, " via proxy" if self._proxy else "")
        attempt = self._begin()
        phase = "resolve"
        try:
            self._check(attempt)
            if self._proxy is not None:
                tcp_host, tcp_port = self._proxy.host, self._proxy.port
            else:
                tcp_host, tcp_port = self._host, self._port
            addresses = self._resolve(attempt, tcp_host, tcp_port, deadline)
            phase = "tcp"
            sock: socket.socket = self._connect_tcp(attempt, addresses, deadline)
            if self._proxy is not None:
                phase = "proxy"
                self._tunnel(sock, self._proxy, deadline)
            if self._secure:
                phase = "tls"
                sock = self._start_tls(attempt, sock, deadline)
            phase = "upgrade"
            leftover = self._upgrade(sock, header_pairs, deadline)
            sock.settimeout(None)
            self._finish(attempt)
        except BaseException as exc:
            with self._lock:
                self._attempts.discard(attempt)
                cancelled = attempt.cancelled
            for each in attempt.sockets:
                _close_quietly(each)
            if not isinstance(exc, Exception):
                raise
            mapped = _map_error(
                exc, url=self._url, phase=phase, timeout=timeout, cancelled=cancelled
            )
            logger.debug("open failed after %.1f ms: %s", _ms_since(started), mapped)
            raise mapped from exc
        logger.debug("opened %s in %.1f ms", where, _ms_since(started))
        return Transport(
            sock, max_frame_size=self._max_frame_size, where=where, initial=leftover
        )

    def _headers_for(self, where: str) -> tuple[tuple[str, str], ...]:
        """This attempt's extra headers: the static ones, or the callable's, checked."""
        option = self._headers
        if isinstance(option, tuple):
            return option
        try:
            fresh = option()
            checked = check_headers(fresh)
            if not isinstance(checked, tuple):
                raise TypeError("the headers callable must return a mapping")
        except Exception as exc:
            # Its message may hold a token: the type only, the cause chained for debugging.
            logger.debug("headers callable failed: %s", type(exc).__name__)
            raise ConnectError(
                f"headers callable failed ({type(exc).__name__}): {where}", phase="upgrade"
            ) from exc
        return checked

    def _tunnel(self, sock: socket.socket, proxy: ProxyTarget, deadline: float) -> None:
        """Ask the proxy for a tunnel to the target (HTTP CONNECT, RFC 9110 section 9.3.6)."""
        target = f"{_bracket(self._host)}:{self._port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if proxy.auth is not None:
            token = base64.b64encode(":".join(proxy.auth).encode()).decode()
            lines.append(f"Proxy-Authorization: Basic {token}")
        send_head(sock, lines, deadline)
        reader = HeadReader(sock, deadline)
        _version, status, _headers = read_head(reader)
        if not 200 <= status < 300:
            raise Refused(status)
        if reader.leftover():
            raise BadResponse("proxy sent data before the upgrade")

    def _upgrade(
        self, sock: socket.socket, extra: tuple[tuple[str, str], ...], deadline: float
    ) -> bytes:
        """Send the upgrade request, check the 101; return the bytes read past its head."""
        hostport = _bracket(self._host)
        if self._port != (443 if self._secure else 80):
            hostport += f":{self._port}"
        given = {name.lower(): value for name, value in extra}
        key = base64.b64encode(os.urandom(16)).decode()
        origin = given.pop("origin", f"{'https' if self._secure else 'http'}://{hostport}")
        lines = [
            f"GET {self._resource} HTTP/1.1",
            f"Host: {given.pop('host', hostport)}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Origin: {origin}",
        ]
        cookies = [value for name, value in extra if name.lower() == "cookie"]
        jar = self._jar_cookie()
        if jar:
            cookies.append(jar)
        lines += [
            f"{name}: {value}" for name, value in extra
            if name.lower() not in ("host", "origin", "cookie")
        ]
        if cookies:
            lines.append(f"Cookie: {'; '.join(cookies)}")
        send_head(sock, lines, deadline)
        reader = HeadReader(sock, deadline)
        version, status, headers = read_head(reader)
        self._keep_cookies(headers)
        if status != 101:
            raise Refused(status)
        check_upgrade(version, headers, key)
        return reader.leftover()

    def _jar_cookie(self) -> str:
        """The Cookie header value the jar holds for this URL ("" when none)."""
        jar = self._cookies
        if jar is None:
            return ""
        import urllib.request

        request = urllib.request.Request(self._cookie_url)
        jar.add_cookie_header(request)
        return request.get_header("Cookie") or ""

    def _keep_cookies(self, headers: http.client.HTTPMessage) -> None:
        """Store the cookies a response sets, in a jar made by the first one that sets any.

        Only ``Set-Cookie``/``Set-Cookie2`` headers are read (what ``extract_cookies`` reads).
        """
        jar = self._cookies
        if jar is None:
            if not headers.get_all("Set-Cookie") and not headers.get_all("Set-Cookie2"):
                return
            import http.cookiejar

            with self._lock:
                if self._cookies is None:
                    self._cookies = http.cookiejar.CookieJar()
                jar = self._cookies
        import urllib.request

        jar.extract_cookies(
            CookieResponse(headers),  # type: ignore[arg-type]  # info() is all it reads
            urllib.request.Request(self._cookie_url),
        )

    def _resolve(self, attempt: _Attempt, host: str, port: int, deadline: float) -> list[_Address]:
        """getaddrinfo bounded by the deadline and by cancel(); IP literals skip the thread."""
        import ipaddress

        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return _stream_addresses(
                socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
            )
        lookup = self._lookup_for(host, port, attempt)
        attempt.wake.wait(max(0.0, deadline - time.monotonic()))
        self._check(attempt)
        if not lookup.done.is_set():
            raise TimeoutError("dns lookup timed out")
        with self._lock:
            if self._lookup is lookup:
                self._lookup = None  # used up: the next attempt looks up afresh
        # It has set the event: let it exit, so no thread of ours outlives open().
        if lookup.thread.ident is not None:  # (not started at interpreter shutdown)
            lookup.thread.join(max(0.0, deadline - time.monotonic()))
        outcome = lookup.result
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, list)
        return _stream_addresses(outcome)

    def _lookup_for(self, host: str, port: int, attempt: _Attempt) -> _Lookup:
        """The lookup this attempt waits for: the one still running from an earlier attempt
        (a resolver that hangs), or a new one. So however many attempts time out on a hung
        resolver, one ``wsync-resolve`` thread at most is alive per connector."""
        with self._lock:
            lookup = self._lookup
            if lookup is None or lookup.key != (host, port):
                lookup = self._lookup = _Lookup(host, port)
                # At interpreter shutdown (the exit hook's flush) no thread starts: the
                # attempt looks up itself, unbounded but rare.
                lookup.run_here = not start_thread(lookup.thread)
            lookup.waiters.add(attempt)
            if lookup.done.is_set():
                attempt.wake.set()
        if lookup.run_here and not lookup.done.is_set():
            lookup.run()
        return lookup

    @property
    def resolver(self) -> threading.Thread | None:
        """The DNS lookup thread still running, if any (``Client.close()`` joins it)."""
        lookup = self._lookup
        return lookup.thread if lookup is not None and lookup.thread.is_alive() else None

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
        import ssl

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


