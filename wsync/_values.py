"""Public value types: Status, ConnectionState, Stats; the callback types; ids.

Pure data: no I/O, no threads, no locks. ``Response`` is the protocol's response frame
(``wsync.protocol.Response``) and is re-exported by ``wsync``. The callback type aliases are
defined here once, for the client, the engine and the dispatcher alike.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from wsync._errors import ServerError
    from wsync.protocol import Response

__all__ = [
    "CLIENT_ID_PATTERN",
    "ConnectionState",
    "ErrorCallback",
    "ResponseCallback",
    "StateCallback",
    "Stats",
    "Status",
    "uuid4_text",
    "validate_client_id",
]

#: ``on_state_change``: called with the new state on every transition, in order.
StateCallback = Callable[["ConnectionState"], object]
#: ``on_response``: called with every response frame received.
ResponseCallback = Callable[["Response"], object]
#: ``on_error``: called with every ``error`` frame received.
ErrorCallback = Callable[["ServerError"], object]

_getrandbits = random.getrandbits


def uuid4_text() -> str:
    """A random UUID version 4, as ``str(uuid.uuid4())`` writes it, several times faster.

    Message ids must be unique, not secret: Python's own generator (re-seeded in a forked
    child) gives 122 random bits without the system call ``uuid.uuid4()`` makes for each id.
    """
    n = (_getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48)) | (0x4000 << 64) | (0x8000 << 48)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

CLIENT_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def validate_client_id(client_id: object) -> str:
    """Return ``client_id`` if it is a valid client id.

    Raises:
        TypeError: not a ``str``.
        ValueError: does not match ``^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$``.
    """
    if not isinstance(client_id, str):
        raise TypeError(f"client_id must be a str, got {type(client_id).__name__}")
    if CLIENT_ID_PATTERN.fullmatch(client_id) is None:
        # The id is not secret, but it may be long or odd: show its length only.
        raise ValueError(
            "client_id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$ "
            f"(got {len(client_id)} characters)"
        )
    return client_id


class Status(enum.Enum):
    """Where a client's connection stands. Values are the lowercase names."""

    CONNECTING = "connecting"
    """A socket is being opened; nothing can be written."""
    PENDING = "pending"
    """Socket open, ``connect`` sent, waiting for ``connect_confirm``; sends are queued."""
    CONFIRMED = "confirmed"
    """Handshake done; messages flow; the heartbeat runs."""
    DISCONNECTED = "disconnected"
    """Lost, failed or not yet connected; reconnection may be under way; sends are queued."""
    CLOSED = "closed"
    """``close()`` was called; terminal."""


def _status_html_colour(status: Status) -> str:
    return {
        Status.CONNECTING: "#b58900",
        Status.PENDING: "#b58900",
        Status.CONFIRMED: "#2aa198",
        Status.DISCONNECTED: "#dc322f",
        Status.CLOSED: "#657b83",
    }[status]


@attrs.frozen(kw_only=True)
class ConnectionState:
    """A snapshot of a client's connection, as passed to ``on_state_change``.

    Attributes:
        status: the connection's status.
        client_id: this client's id.
        conversation_id: the id the server gave the current (or last) confirmed connection.
        error: why the last attempt or connection failed, or None.
        attempt: the reconnect attempt number; 0 when confirmed (and for an immediate
            attempt started by ``connect()`` or ``reconnect()``).
        close_code: the WebSocket close code the server sent when the connection that just
            ended was closed by it (e.g. 1008, 1011), or None (no close frame: a reset, a
            timeout, our own close). It also appears in ``error``.
    """

    status: Status
    client_id: str
    conversation_id: str | None = None
    error: str | None = None
    attempt: int = 0
    close_code: int | None = None

    def _repr_html_(self) -> str:
        from html import escape

        rows = [
            ("status", f'<b style="color:{_status_html_colour(self.status)}">'
                       f"{escape(self.status.value)}</b>"),
            ("client id", escape(self.client_id)),
            ("conversation id", escape(self.conversation_id or "—")),
            ("attempt", str(self.attempt)),
            ("close code", "—" if self.close_code is None else str(self.close_code)),
            ("last error", escape(self.error or "—")),
        ]
        body = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in rows
        )
        return f"<table>{body}</table>"


@attrs.frozen(kw_only=True)
class Stats:
    """Counters of a client, from ``Client.stats()``.

    Attributes:
        sent: message frames written to a socket (a message written again after a
            reconnect counts again).
        received: response frames received.
        queued: messages waiting to be written.
        in_flight: messages written and not yet answered.
        reconnects: connections confirmed again after a loss.
        malformed: incoming frames dropped as malformed.
        last_rtt: seconds between the last ping and its pong, or None.
    """

    sent: int = 0
    received: int = 0
    queued: int = 0
    in_flight: int = 0
    reconnects: int = 0
    malformed: int = 0
    last_rtt: float | None = None
