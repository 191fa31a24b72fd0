"""wsync: a synchronous, threaded WebSocket client that never loses a message.

Connect, handshake, heartbeat, reconnect, queue and request/response over the wsync
protocol, with no asyncio: ``wsync.Client`` runs its own threads and hands results
back through futures and callbacks.

This module is the public face and nothing else: it re-exports the public names from the
private modules that define them (``__all__`` is the contract) and holds ``__version__``.
It holds no code but the lazy lookup below, and adds no log handler (not even a
``NullHandler``): an application that configured no logging still sees wsync's warnings
through Python's last resort.

What a plain ``ws://`` client never uses is imported on first access instead (a module
``__getattr__``, PEP 562): ``SQLiteOutbox`` (``sqlite3``) and ``status_widget`` (the notebook
view). ``from wsync import SQLiteOutbox`` and ``dir(wsync)`` work as before, and type checkers
see the names through the ``TYPE_CHECKING`` imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
from wsync._values import ConnectionState, Stats, Status
from wsync.protocol import Response

if TYPE_CHECKING:
    from wsync._notebook import status_widget
    from wsync._sqlite_outbox import SQLiteOutbox

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

#: Public names imported on first access: name -> the private module that defines it.
_LAZY: dict[str, str] = {
    "SQLiteOutbox": "wsync._sqlite_outbox",
    "status_widget": "wsync._notebook",
}


if not TYPE_CHECKING:  # mypy sees the imports above, and no catch-all attribute

    def __getattr__(name: str) -> Any:
        """Import a lazily loaded public name on first access, then keep it in this module."""
        module_name = _LAZY.get(name)
        if module_name is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module_name), name)
        globals()[name] = value  # the next access is a plain module attribute
        return value


def __dir__() -> list[str]:
    """The module's names, the lazily loaded ones included."""
    return sorted({*globals(), *_LAZY})
