"""The wsync exception tree: one place that names every error the client raises.

::

    WsyncError
    ├── ConnectError            (could not open or confirm; the last cause is chained)
    │   ├── ConnectTimeout      (also a TimeoutError)
    │   └── HandshakeError      (server refused, or its connect_confirm did not match)
    ├── ResponseTimeout         (also a TimeoutError)
    ├── ClientClosed
    ├── QueueFull
    ├── ServerError             (an 'error' frame; also a frozen attrs value)
    ├── ProtocolError           (a malformed frame; raised by wsync.protocol.decode)
    └── OutboxError             (wsync's addition: an outbox cannot be used)

Messages never carry message content, header values or credentials.
"""

from __future__ import annotations

from datetime import datetime

import attrs

__all__ = [
    "ClientClosed",
    "ConnectError",
    "ConnectTimeout",
    "HandshakeError",
    "OutboxError",
    "ProtocolError",
    "QueueFull",
    "ResponseTimeout",
    "ServerError",
    "WsyncError",
]


class WsyncError(Exception):
    """Base class of every error wsync raises on purpose."""


class ConnectError(WsyncError):
    """The connection could not be opened or confirmed; the last cause is chained."""


class ConnectTimeout(ConnectError, TimeoutError):
    """``connect(timeout=...)`` passed before the connection was confirmed."""


class HandshakeError(ConnectError):
    """The server refused the handshake, or its ``connect_confirm`` did not match."""


class ResponseTimeout(WsyncError, TimeoutError):
    """No response arrived for a message within the timeout."""


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
