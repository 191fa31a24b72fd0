"""``wsync.Client``: checks every option in the caller's thread, then drives an ``Engine``.

The facade holds the engine; the engine's threads never hold the facade. So a client
that is forgotten (a notebook cell run again, a script that never calls ``close()``)
is garbage-collected and its engine closed, and at interpreter exit every engine still
open is closed with a short bound: wsync never keeps a process alive.

Its one job is the public face: argument checks (each option checked once, here or by the
connector that uses it) and docstrings. It must not hold state of the connection or the
messages, nor start threads: everything after the checks is the engine's.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from wsync._backoff import Backoff
from wsync._dispatch import Callbacks
from wsync._engine import Engine
from wsync._futures import MessageFuture
from wsync._handshake import Connector, is_loopback_host, redact_url
from wsync._outbox import Outbox
from wsync._values import (
    ConnectionState,
    ErrorCallback,
    ResponseCallback,
    StateCallback,
    Stats,
    validate_client_id,
)
from wsync.protocol import Response

if TYPE_CHECKING:
    import ssl

__all__ = ["Client"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_FRAME_SIZE: Final = 1 << 20
DEFAULT_MAX_SEND_SIZE: Final = 1 << 20
_MAX_ID_LENGTH: Final = 256


def _positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _optional_timeout(name: str, value: object) -> float | None:
    return None if value is None else _positive(name, value, allow_zero=True)


def _callback(name: str, value: object) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
    return value


def _message_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"message_id must be a str or None, got {type(value).__name__}")
    if not value or len(value) > _MAX_ID_LENGTH:
        raise ValueError(f"message_id must be 1 to {_MAX_ID_LENGTH} characters, got {len(value)}")
    return value


def _optional_count(name: str, value: object, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum} or None, got {value}")
    return value


def _is_memory(outbox: object) -> bool:
    from wsync._outbox import MemoryOutbox

    return isinstance(outbox, MemoryOutbox)


class Client:
    """A WebSocket client that connects, confirms, heartbeats, reconnects and never loses a message.

    All methods are thread-safe. Callbacks run one at a time, in order, on the client's
    ``wsync-callbacks`` thread, never while the client holds a lock and never on the thread
    reading the socket: calling any method (``send_and_wait``, ``flush``, ``close``) from a
    callback works. An exception raised by a callback is logged and changes nothing.

    Args:
        url: ``ws://`` or ``wss://`` URL of the server.
        client_id: this client's id; None makes a random UUID4. Must match
            ``^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$``.
        on_state_change: called with the new ``ConnectionState`` on every transition, in order.
        on_response: called with every ``Response`` received.
        on_error: called with a ``ServerError`` for every ``error`` frame.
        heartbeat_interval: seconds between pings while CONFIRMED.
        heartbeat_timeout: no pong for this long means the connection is dead (default
            ``2 * heartbeat_interval``).
        backoff: the reconnection policy (default: 1, 2, 4, 8, 16 s; 5 attempts).
        connect_timeout: bound on one attempt: TCP, TLS, upgrade and handshake confirm.
        outbox: where unanswered messages are kept; None keeps them in memory;
            ``wsync.SQLiteOutbox(path)`` keeps them on disk across restarts.
        max_queued: at most this many messages waiting to be written; ``send()`` raises
            ``QueueFull`` beyond. None: unbounded.
        rate_limit: at most this many messages written in any one-second window; the
            excess waits in the queue, in order. Heartbeats are never delayed by it.
        headers: extra HTTP headers for the upgrade request (e.g. ``Authorization``): a
            mapping, or a callable returning one, called before every attempt (tokens that
            expire). An exception it raises fails that attempt (logged without values).
        ssl_context: ``ssl.SSLContext`` for ``wss://`` (a private CA, client certificates);
            default: the system's trust store, verifying certificate and host name.
        proxy: an HTTP proxy, ``"http://host:port"``, tunnelled with CONNECT.
        max_frame_size: incoming frames larger than this many bytes are dropped and counted
            as malformed.
        max_send_size: the largest encoded ``message`` frame ``send()`` accepts (bytes);
            larger ones raise ``ValueError``. None: no limit.
        max_deliveries: a message written on this many connections, each lost before it was
            answered, fails with ``DeliveryError`` (a poison message) and leaves the queue;
            None: no limit.

    Raises:
        TypeError, ValueError: at construction, for any option of the wrong type or range.
        wsync.OutboxError: the outbox cannot be used (another live client owns it, or the
            file is not an outbox).
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        on_state_change: StateCallback | None = None,
        on_response: ResponseCallback | None = None,
        on_error: ErrorCallback | None = None,
        heartbeat_interval: float = 30.0,
        heartbeat_timeout: float | None = None,
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
        outbox: Outbox | None = None,
        max_queued: int | None = None,
        rate_limit: float | None = None,
        headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        proxy: str | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_send_size: int | None = DEFAULT_MAX_SEND_SIZE,
        max_deliveries: int | None = 3,
    ) -> None:
        # The connector checks what it uses (url, ssl_context, headers, proxy, frame size).
        connector = Connector(
            url, ssl_context=ssl_context, headers=headers, proxy=proxy,
            max_frame_size=max_frame_size,
        )
        url = connector.url
        if client_id is None and outbox is not None and not _is_memory(outbox):
            raise ValueError(
                "a durable outbox needs a fixed client_id: a random one could not claim "
                "the same outbox after a restart"
            )
        import uuid  # here, not at the top: ``import wsync`` stays cheap (issue 15)

        client_id = validate_client_id(str(uuid.uuid4()) if client_id is None else client_id)
        interval = _positive("heartbeat_interval", heartbeat_interval)
        hb_timeout = (
            2 * interval if heartbeat_timeout is None
            else _positive("heartbeat_timeout", heartbeat_timeout)
        )
        if backoff is None:
            backoff = Backoff()
        elif not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a wsync.Backoff, got {type(backoff).__name__}")
        connect_timeout = _positive("connect_timeout", connect_timeout)
        max_queued = _optional_count("max_queued", max_queued, 1)
        if rate_limit is not None:
            rate_limit = _positive("rate_limit", rate_limit)
        max_send_size = _optional_count("max_send_size", max_send_size, 1)
        max_deliveries = _optional_count("max_deliveries", max_deliveries, 1)
        if outbox is not None:
            for method in ("claim", "add", "discard", "count_deliveries", "release"):
                if not callable(getattr(outbox, method, None)):
                    raise TypeError(f"outbox must be an Outbox (it has no {method}())")
        if url.lower().startswith("ws://") and not is_loopback_host(url):
            logger.warning(
                "%s is not encrypted: use wss:// for a host other than loopback",
                redact_url(url),
            )
        # Held here only: the engine's threads see them through a weak reference.
        self._callbacks = Callbacks(
            _callback("on_state_change", on_state_change),
            _callback("on_response", on_response),
            _callback("on_error", on_error),
        )
        self._engine = Engine(
            url=url,
            client_id=client_id,
            callbacks=self._callbacks,
            heartbeat_interval=interval,
            heartbeat_timeout=hb_timeout,
            backoff=backoff,
            connect_timeout=connect_timeout,
            outbox=outbox,
            max_queued=max_queued,
            rate_limit=rate_limit,
            max_deliveries=max_deliveries,
            max_send_size=max_send_size,
            connector=connector,
        )
        self._url = url
        # Closes the engine when this facade is collected; not at exit (the engine's own
        # atexit hook does that, with a bound).
        self._finalizer = weakref.finalize(self, self._engine.close_soon)
        self._finalizer.atexit = False

    # --- properties ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server URL, without userinfo or query string (where tokens live)."""
        return redact_url(self._url)

    @property
    def client_id(self) -> str:
        """This client's id."""
        return self._engine.client_id

    @property
    def state(self) -> ConnectionState:
        """A snapshot of the connection state; safe to read from any thread."""
        return self._engine.state

    def stats(self) -> Stats:
        """Counters: sent, received, queued, in_flight, reconnects, malformed, last_rtt."""
        return self._engine.stats()

    # --- lifecycle ----------------------------------------------------------------------

    def connect(self, timeout: float | None = None, *, wait: bool = True) -> ConnectionState:
        """Start connecting: open the socket, send ``connect``, wait for ``connect_confirm``.

        Failed attempts are retried under the ``backoff`` policy (the first one at once).
        Calling it while connected or already trying changes nothing (and waits, if asked).

        Args:
            timeout: with ``wait``, seconds to wait for CONFIRMED; None waits as long as the
                policy keeps trying.
            wait: block until CONFIRMED (True) or return at once (False: attempts go on in
                the background and sends are queued).

        Returns:
            The connection state (CONFIRMED when ``wait``).

        Raises:
            ConnectError: the policy gave up (``HandshakeError`` if the server refused);
                the last cause is chained. Futures waiting at that moment failed too.
            ConnectTimeout: ``timeout`` passed first; the client stopped trying and is
                DISCONNECTED, and the futures waiting failed with it.
            ClientClosed: the client is closed.
        """
        timeout = _optional_timeout("timeout", timeout)
        return self._engine.connect(timeout, bool(wait))

    def reconnect(self) -> None:
        """Drop the current socket (if any) and start a fresh attempt now, with a fresh budget.

        Never blocks. Messages written but unanswered are written again after the confirm.

        Raises:
            ClientClosed: the client is closed.
        """
        self._engine.reconnect()

    def close(self, timeout: float = 5.0, *, flush: bool = True) -> None:
        """Flush, then close the connection and stop every thread; idempotent; any thread.

        With ``flush`` it first waits, within ``timeout``, for every queued and in-flight
        message to be answered, as ``flush()`` does (reconnection goes on meanwhile; nothing
        is waited for when the client is neither connected nor trying). Then it sends a
        WebSocket close frame, stops and joins every thread the client started, fails the
        futures still pending with ``ClientClosed`` and ends in ``Status.CLOSED``. Returns
        within about ``timeout`` + 1 s whatever the server does, after the CLOSED state
        callback has run (except when called from a callback: it cannot wait for itself);
        no callback starts after it returns (those still queued at the deadline are dropped).
        Whenever messages are left unanswered (or callbacks dropped), one WARNING says how
        many; messages in an ``SQLiteOutbox`` stay in its file for the next run.

        Args:
            timeout: seconds to wait at most, for the flush and the shutdown together.
            flush: wait for the answers first (True), or close at once (False).
        """
        bound = _positive("timeout", timeout, allow_zero=True)
        self._engine.close(bound, flush=bool(flush))

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Leaving on Ctrl-C: close at once, do not make the user wait for answers.
        self.close(flush=exc_type is None or not issubclass(exc_type, KeyboardInterrupt))

    # --- messages -----------------------------------------------------------------------

    def send(self, content: str, *, message_id: str | None = None) -> MessageFuture:
        """Send a message; never blocks on the network.

        Queued while not CONFIRMED (and after a failed write), written in ``send()`` order
        once CONFIRMED, kept across reconnects and written again (same ``messageId``) if a
        connection is lost before its response (at-least-once).

        Args:
            content: the message text.
            message_id: the ``messageId``; None makes a random UUID4.

        Returns:
            A ``MessageFuture`` resolved with the ``Response``.

        Raises:
            TypeError: ``content`` is not a ``str``.
            ValueError: ``message_id`` is already pending (or empty), or the encoded frame
                is larger than ``max_send_size``; nothing was queued.
            QueueFull: ``max_queued`` messages are waiting already; this one was not queued.
            ClientClosed: the client is closed.
        """
        if not isinstance(content, str):
            raise TypeError(f"content must be a str, got {type(content).__name__}")
        return self._engine.send(content, _message_id(message_id))

    def send_and_wait(
        self, content: str, timeout: float | None = 30.0, *, message_id: str | None = None
    ) -> Response:
        """Send a message and block until its response.

        Args:
            content: the message text.
            timeout: seconds to wait; None waits without limit.
            message_id: the ``messageId``; None makes a random UUID4.

        Returns:
            The ``Response``.

        Raises:
            ResponseTimeout: no response in time. A message still queued then is withdrawn
                and never sent; one already written is never written again.
            ServerError: the server answered with an ``error`` frame for this message.
            ConnectError: reconnection gave up before the response.
            ClientClosed: the client was closed.
        """
        if not isinstance(content, str):
            raise TypeError(f"content must be a str, got {type(content).__name__}")
        timeout = _optional_timeout("timeout", timeout)
        return self._engine.send_and_wait(content, timeout, _message_id(message_id))

    def flush(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued and every sent message has its response (or failed).

        Args:
            timeout: seconds to wait; None waits without limit.

        Returns:
            True when drained: every future it waited for is resolved. False on timeout.
        """
        return self._engine.flush(_optional_timeout("timeout", timeout))

    def add_listener(
        self,
        *,
        on_state_change: StateCallback | None = None,
        on_response: ResponseCallback | None = None,
    ) -> Callable[[], None]:
        """Also call these on every state change and every response, after the client's own.

        For code that watches a client it did not create (a notebook widget, metrics).
        Listeners run like the constructor's callbacks: on the ``wsync-callbacks`` thread, in
        order, never under a lock; one that raises is logged and the others still run. They
        are called from about now on: read ``state`` for where the client stands. The client
        holds them (strongly); its threads do not.

        Args:
            on_state_change: called with the new ``ConnectionState`` on every transition.
            on_response: called with every ``Response`` received.

        Returns:
            A function that removes these listeners; calling it again does nothing more.

        Raises:
            TypeError: a listener is not callable.
        """
        state_fn = _callback("on_state_change", on_state_change)
        response_fn = _callback("on_response", on_response)
        engine = self._engine  # not self: the remover must not keep the client alive
        engine.change_listeners(state_fn, response_fn, add=True)
        removed = False

        def remove() -> None:
            nonlocal removed
            if not removed:
                removed = True
                engine.change_listeners(state_fn, response_fn, add=False)

        return remove

    # --- display --------------------------------------------------------------------------

    def __repr__(self) -> str:
        state = self.state
        return (
            f"<wsync.Client {self.url} client_id={state.client_id!r} "
            f"status={state.status.value} attempt={state.attempt}>"
        )

    def _repr_html_(self) -> str:
        from html import escape

        state = self.state
        stats = self.stats()
        return (
            f"<div><b>wsync.Client</b> <code>{escape(self.url)}</code>"
            f"{state._repr_html_()}"
            f"<small>queued {stats.queued} · in flight {stats.in_flight} · sent {stats.sent}"
            f" · received {stats.received} · reconnects {stats.reconnects}</small></div>"
        )
