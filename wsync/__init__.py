"""wsync: a synchronous, threaded WebSocket client that never loses a message.

Connect, handshake, heartbeat, reconnect, queue and request/response over the wsync
protocol, with no asyncio: ``wsync.Client`` runs its own threads and hands results
back through futures and callbacks.

This module is the public face and nothing else: it re-exports the public names from the
private modules that define them (``__all__`` is the contract) and holds ``__version__``.
It must not hold code, nor add a log handler (not even a ``NullHandler``): an application
that configured no logging still sees wsync's warnings through Python's last resort.
"""

from __future__ import annotations

from wsync._backoff import Backoff
from wsync._client import Client
from wsync._errors import (
    ClientClosed,
    ConnectError,
    ConnectTimeout,
    DeliveryError,
    HandshakeError,
    OutboxError,
    ProtocolError,
    QueueFull,
    ResponseTimeout,
    ServerError,
    WsyncError,
)
from wsync._futures import MessageFuture
from wsync._notebook import status_widget
from wsync._sqlite_outbox import SQLiteOutbox
from wsync._values import ConnectionState, Stats, Status
from wsync.protocol import Response

__version__ = "0.2.0"

__all__ = [
    "Backoff",
    "Client",
    "ClientClosed",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionState",
    "DeliveryError",
    "HandshakeError",
    "MessageFuture",
    "OutboxError",
    "ProtocolError",
    "QueueFull",
    "Response",
    "ResponseTimeout",
    "SQLiteOutbox",
    "ServerError",
    "Stats",
    "Status",
    "WsyncError",
    "status_widget",
]
