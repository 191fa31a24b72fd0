"""The wsync exception tree: one place that names every error the client raises.

::

    WsyncError
    ├── ConnectError            (could not open or confirm; the last cause is chained; .phase)
    │   ├── ConnectTimeout      (also a TimeoutError)
    │   ├── HandshakeError      (server refused, or its connect_confirm did not match)
    │   ├── TLSError            (certificate or host name failed verification: not retried)
    │   └── UpgradeRejected     (the HTTP upgrade was answered with another status; .status_code)
    ├── ResponseTimeout         (also a TimeoutError)
    ├── DeliveryError           (a message hit max_deliveries: a poison message)
    ├── ClientClosed
    ├── QueueFull
    ├── ServerError             (an 'error' frame; also a frozen attrs value)
    ├── ProtocolError           (a malformed frame; raised by wsync.protocol.decode)
    └── OutboxError             (wsync's addition: an outbox cannot be used)

Messages never carry message content, header values or credentials. Every class here says
``wsync`` as its module (``wsync.ConnectError``), as tracebacks and ``repr`` show it; the internal
ones (``TLSError``, ``UpgradeRejected``) are importable from ``wsync._errors`` only.

``ConnectError.phase`` names where the last attempt failed, so that nobody parses message text:
one of :data:`PHASES`, or None when not known.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import attrs

__all__ = [
    "PHASES",
    "ClientClosed",
    "ConnectError",
    "ConnectTimeout",
    "DeliveryError",
    "HandshakeError",
    "OutboxError",
    "ProtocolError",
    "QueueFull",
    "ResponseTimeout",
    "ServerError",
    "TLSError",
    "UpgradeRejected",
    "WsyncError",
    "network_text",
]

#: Text from the network (error frames, close reasons, status lines) is cut to this length.
NETWORK_TEXT_LIMIT: Final = 200


def network_text(text: str, limit: int = NETWORK_TEXT_LIMIT) -> str:
    """``text`` from the network, safe for a log line or an error message.

    Control characters (and terminal escape sequences with them) are escaped as ``\\xNN``,
    lone surrogates as ``\\udNNN``, and the result is cut to ``limit`` characters, marked
    with an ellipsis. A server cannot forge log lines or flood them.
    """
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class WsyncError(Exception):
    """Base class of every error wsync raises on purpose."""


#: Where a connection attempt can fail (``ConnectError.phase``).
PHASES: Final = (
    "resolve",  # DNS
    "tcp",  # TCP connect
    "proxy",  # the HTTP CONNECT tunnel
    "tls",  # TLS handshake or certificate verification
    "upgrade",  # the HTTP upgrade to WebSocket
    "handshake",  # connect / connect_confirm (refused, mismatched)
    "confirm",  # no connect_confirm within connect_timeout
    "heartbeat",  # no pong within heartbeat_timeout
    "connection",  # an open connection was lost (socket error, close frame, protocol error)
    "cancelled",  # the attempt was cancelled (close(), reconnect(), a connect() timeout)
)


class ConnectError(WsyncError):
    """The connection could not be opened or confirmed; the last cause is chained.

    Attributes:
        phase: where the (last) attempt failed, one of :data:`PHASES`, or None.
    """

    def __init__(self, message: str, *, phase: str | None = None) -> None:
        super().__init__(message)
        self.phase = phase

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild, (type(self), str(self), self.__dict__.copy())


class ConnectTimeout(ConnectError, TimeoutError):
    """``connect(timeout=...)`` passed before the connection was confirmed."""


class HandshakeError(ConnectError):
    """The server refused the handshake, or its ``connect_confirm`` did not match."""

    def __init__(self, message: str, *, phase: str | None = "handshake") -> None:
        super().__init__(message, phase=phase)


class TLSError(ConnectError):
    """The server's certificate or host name failed verification: retrying will not help."""

    def __init__(self, message: str, *, phase: str | None = "tls") -> None:
        super().__init__(message, phase=phase)


class UpgradeRejected(ConnectError):
    """The server answered the HTTP upgrade with a status other than 101.

    Retryable like any :class:`ConnectError` (a token may be refreshed, a 503 may pass); only
    :class:`TLSError` is not.

    Attributes:
        status_code: the HTTP status the server answered with.
    """

    def __init__(self, message: str, status_code: int, *, phase: str | None = "upgrade") -> None:
        super().__init__(message, phase=phase)
        self.status_code = status_code


class ResponseTimeout(WsyncError, TimeoutError):
    """No response arrived for a message within the timeout."""


class DeliveryError(WsyncError):
    """A message was written on ``max_deliveries`` connections, each lost before it was answered.

    The message is taken for a poison message (one the server cannot take: it drops the
    connection whenever the message arrives) and will never be sent again; it left the queue
    and the durable outbox.
    """


class ClientClosed(WsyncError):
    """The client was closed: the operation cannot complete."""


class QueueFull(WsyncError):
    """``max_queued`` messages are already waiting; the new one was not queued."""


class ProtocolError(WsyncError):
    """A frame is malformed. The message names the field, never the frame's content."""


class OutboxError(WsyncError):
    """An outbox cannot be used: already claimed, released, locked by another client, or not ours.

    The message names the outbox (for a file: its path) and non-secret ids, never content.
    """


@attrs.frozen(kw_only=True, eq=False, auto_exc=True)
class ServerError(WsyncError):
    """An ``error`` frame sent by the server.

    Also raised (as the exception of a ``MessageFuture``) when the error names a message.
    Being an exception, equality is identity: compare fields in tests.

    Attributes:
        error: the server's description (the protocol forbids secrets in it).
        timestamp: when the server sent it, timezone-aware UTC.
        message_id: the message the error is about, or None.
    """

    error: str
    timestamp: datetime
    message_id: str | None = None

    def __str__(self) -> str:
        if self.message_id is None:
            return f"server error: {self.error}"
        return f"server error for message {self.message_id}: {self.error}"


def _rebuild(cls: type[WsyncError], message: str, state: dict[str, object]) -> WsyncError:
    """Unpickle an error whose ``__init__`` takes keyword arguments (see ``__reduce__``)."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


# Tracebacks and reprs say `wsync.ConnectError`, the name users import, not this private module.
for _cls in (
    WsyncError, ConnectError, ConnectTimeout, HandshakeError, TLSError, UpgradeRejected,
    ResponseTimeout, DeliveryError, ClientClosed, QueueFull, ProtocolError, OutboxError,
    ServerError,
):
    _cls.__module__ = "wsync"
del _cls
