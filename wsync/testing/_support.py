"""Small pieces the test server is built from: its record types, host checks, socket aborts.

This module holds values and stateless helpers only; it starts no thread and keeps no state.
``ProtocolServer`` itself lives in ``_server.py``.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import operator
import socket
import ssl
import struct
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import attrs

__all__ = [
    "Handler",
    "MessageFilter",
    "QuietLogger",
    "Received",
    "UpgradeRequest",
    "abort_socket",
    "check_close",
    "check_count",
    "check_handler",
    "check_host",
    "check_message_filter",
    "check_options",
    "check_size",
    "check_token",
    "echo",
    "url_host",
]

Handler = Callable[[str, str], "str | None"]
"""``handler(content, client_id) -> response content``, or None to send no response."""

MessageFilter = Callable[[str], bool]
"""``drop_on(content) -> bool``: True for a message the server drops the connection on."""

_SENDABLE_CLOSE_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)
"""RFC 6455 close codes an endpoint may send (1004-1006 and 1015 are reserved), 3000-4999 aside."""

_MAX_CLOSE_REASON: Final = 123
"""Bytes of UTF-8 a close reason may have: a control frame carries at most 125, the code 2."""

_LINGER_RESET: Final = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on, 0 s: closing the socket sends a TCP RST instead of a graceful FIN."""


def echo(content: str, client_id: str) -> str:
    """The default handler: answer every message with its own content."""
    return content


@attrs.frozen(kw_only=True)
class Received:
    """One ``message`` frame as the server received it.

    Attributes:
        client_id: the ``clientId`` the message carried.
        message_id: its ``messageId``; a message written twice is recorded twice.
        content: its text.
        conversation_id: the conversation of the connection it arrived on.
        timestamp: the message's own ``timestamp``, timezone-aware UTC.
        connection: which connection it arrived on, counting from 1 since the server
            was created (the same number as ``connections_total`` when it was accepted).
    """

    client_id: str
    message_id: str
    content: str
    conversation_id: str
    timestamp: datetime
    connection: int


@attrs.frozen(kw_only=True)
class UpgradeRequest:
    """The HTTP upgrade request of one connection attempt.

    Attributes:
        path: the request target, e.g. ``"/"``.
        headers: every header as ``(name, value)`` pairs, in the order they were sent.
    """

    path: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


def check_count(name: str, n: object) -> int:
    """Return ``n`` if it is an int >= 0 (not a bool), else raise ``ValueError``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{name} must be an int >= 0, got {n!r}")
    return n


def check_close(code: object, reason: object) -> tuple[int, str]:
    """Return ``(code, reason)`` if a close frame may carry them.

    Raises:
        TypeError: ``code`` is not an int or ``reason`` not a str.
        ValueError: ``code`` is reserved or out of range, or ``reason`` is over 123 bytes.
    """
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"code must be an int, got {type(code).__name__}")
    if code not in _SENDABLE_CLOSE_CODES and not 3000 <= code <= 4999:
        raise ValueError(f"code must be a close code an endpoint may send, got {code}")
    if not isinstance(reason, str):
        raise TypeError(f"reason must be a str, got {type(reason).__name__}")
    if len(reason.encode()) > _MAX_CLOSE_REASON:
        raise ValueError(f"reason must be at most {_MAX_CLOSE_REASON} bytes of UTF-8")
    return code, reason


def check_message_filter(match: object) -> MessageFilter | None:
    """Return a ``MessageFilter`` for ``drop_on()``: a str matches equal content.

    Raises:
        TypeError: ``match`` is neither None, a str nor callable.
    """
    if match is None or callable(match):
        return match
    if isinstance(match, str):
        return functools.partial(operator.eq, match)
    raise TypeError(f"match must be a str, a callable or None, got {type(match).__name__}")


def check_size(name: str, size: object) -> int | None:
    """Return ``size`` if it is None or an int >= 1 (not a bool).

    Raises:
        TypeError: ``size`` is neither None nor an int.
        ValueError: ``size`` is below 1.
    """
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"{name} must be an int or None, got {type(size).__name__}")
    if size < 1:
        raise ValueError(f"{name} must be >= 1, got {size}")
    return size


def check_token(token: object) -> str | None:
    """Return ``token`` if it can follow ``Bearer`` in an HTTP header, or None.

    Raises:
        TypeError: ``token`` is neither None nor a str.
        ValueError: ``token`` is empty or holds whitespace or control characters.
    """
    if token is None:
        return None
    if not isinstance(token, str):
        raise TypeError(f"token must be a str or None, got {type(token).__name__}")
    if not token or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError("token must be non-empty, printable and free of whitespace")
    return token


def check_handler(handler: object) -> Handler:
    """Return ``handler``, or ``echo`` for None.

    Raises:
        TypeError: ``handler`` is not callable.
    """
    if handler is None:
        return echo
    if not callable(handler):
        raise TypeError(f"handler must be callable, got {type(handler).__name__}")
    return handler


def check_options(
    port: object, ssl_context: object, *, close_timeout: float, open_timeout: float
) -> None:
    """Validate ``ProtocolServer``'s other arguments.

    Raises:
        ValueError: ``port`` is not an int in 0..65535, or a timeout is not > 0.
        TypeError: ``ssl_context`` is neither None nor an ``ssl.SSLContext``.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError(f"ssl_context must be an ssl.SSLContext, got {type(ssl_context).__name__}")
    for name, value in (("close_timeout", close_timeout), ("open_timeout", open_timeout)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def check_host(host: str, *, allow_remote: bool) -> None:
    """Refuse to listen beyond the loopback interface unless told to.

    Raises:
        TypeError: ``host`` is not a ``str``.
        ValueError: ``host`` is not ``localhost`` or a loopback address and
            ``allow_remote`` is false.
    """
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, got {type(host).__name__}")
    if allow_remote or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"host must be localhost or a loopback address, got {host!r}; "
            "pass allow_remote=True to listen on other interfaces"
        )


def url_host(host: str, *, tls: bool) -> str:
    """Return ``host`` as it goes in a URL: brackets for IPv6, ``localhost`` for TLS on 127.0.0.1.

    Test certificates are usually issued for ``localhost``, and ``wss://`` checks the name.
    """
    if tls and host == "127.0.0.1":
        return "localhost"
    return f"[{host}]" if ":" in host else host


def abort_socket(sock: socket.socket) -> None:
    """End a TCP connection like a network failure: no WebSocket close, no TLS close_notify.

    ``SO_LINGER`` 0 makes the final close send a reset; ``shutdown`` wakes every thread
    blocked on the socket (websockets' reader sees end-of-file and closes it). The base
    class method is called on purpose: ``SSLSocket.shutdown`` would detach its TLS
    object under a reader thread that may be using it. Never raises.
    """
    with contextlib.suppress(OSError):  # already closed
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    with contextlib.suppress(OSError):  # already closed, or never connected
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


if TYPE_CHECKING:
    _AdapterBase = logging.LoggerAdapter[logging.Logger]
else:
    _AdapterBase = logging.LoggerAdapter


class QuietLogger(_AdapterBase):
    """The logger handed to websockets: its records, whatever their level, go out at DEBUG.

    A test server sees handshake failures, resets and timeouts on purpose; websockets logs
    those at ERROR, which would make every fault test look broken. Its own DEBUG tracing
    (which prints frame contents) is dropped altogether: message content is never logged.
    """

    def isEnabledFor(self, level: int) -> bool:
        """True for records above DEBUG when the underlying logger shows DEBUG."""
        return level > logging.DEBUG and self.logger.isEnabledFor(logging.DEBUG)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log ``msg`` at DEBUG if ``level`` is above DEBUG; drop it otherwise."""
        if self.isEnabledFor(level):
            msg, processed = self.process(msg, kwargs)
            self.logger.log(logging.DEBUG, msg, *args, **processed)
