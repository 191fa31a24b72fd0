"""ProtocolServer: the server side of the wire protocol on localhost, with fault controls.

This module's one job is the public face of the test server: its options, properties, waits
and fault switches, and the start/stop/restart sequence. What each connection answers lives
in ``_state.py``; binding, accepting and the threads in ``_listener.py`` (its docstring
lists them: every one named ``wsync-server-...``, a daemon, and joined by ``stop()``). Only
``wsync-server-restart`` is started here, to bring the server back after
``restart(wait=False)``. It is not a production server: it keeps every message in memory
and listens on loopback only unless told otherwise.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, TypeVar

from wsync.protocol import Error, Ping, encode, now
from wsync.testing._listener import Listener
from wsync.testing._state import GOING_AWAY, POLICY_VIOLATION, ServerState, send
from wsync.testing._support import (
    Handler,
    MessageFilter,
    Received,
    UpgradeRequest,
    abort_socket,
    check_close,
    check_count,
    check_handler,
    check_host,
    check_message_filter,
    check_options,
    check_size,
    check_token,
    url_host,
)

__all__ = ["ProtocolServer"]

logger = logging.getLogger(__name__)

_ORDERS: Final = ("fifo", "reverse", "shuffle")
_T = TypeVar("_T")
_RESTART_DOWN_TIMEOUT: Final = 5.0
DEFAULT_MAX_MESSAGE_SIZE: Final = 2**20


class ProtocolServer:
    """A wsync protocol server in background threads, with switches for network faults.

    It answers ``connect`` with ``connect_confirm`` (same ``clientId``, a new uuid4
    ``conversationId`` per connection, status ``"confirmed"``), ``ping`` with ``pong``, and
    each ``message`` with a ``response`` carrying the same ``messageId``, whose content the
    ``handler`` makes. Every ``message`` is recorded in ``received``, duplicates included.

    A ``message`` that comes before its connection's ``connect`` was confirmed gets an
    ``error`` frame naming its ``messageId``; it is neither recorded nor handled. A
    malformed frame (not JSON, binary, a field missing or mistyped, a type only servers
    send) gets an ``error`` frame and is counted in ``malformed_total``; the connection
    stays open. A ``connect`` with a version other than ``1.x`` is refused like
    ``reject_handshakes()`` does. A message larger than ``max_message_size`` closes its
    connection with code 1009 (counted in ``oversized_total``).

    Every method is thread-safe. Waits are bounded by their ``timeout`` and return False
    when it passes, so tests assert the result instead of sleeping::

        with ProtocolServer() as server:
            ...  # point a client at server.url and send three messages
            assert server.wait_for_received(3)

    Args:
        host: interface to listen on. Only ``localhost`` and loopback addresses unless
            ``allow_remote`` is true.
        port: TCP port; 0 picks a free one, and ``port`` then holds it. ``restart()`` and
            a ``start()`` after ``stop()`` reuse that port.
        handler: ``handler(content, client_id) -> str | None`` makes each response's
            content; None sends no response. Default: echo. It runs on the connection's
            worker thread (``wsync-server-worker-N``), so a slow handler delays later
            responses on that connection only. If it raises, the message gets an
            ``error`` frame ("handler failed").
        ssl_context: a server-side ``ssl.SSLContext``, to serve ``wss://``.
        allow_remote: allow a ``host`` that is not loopback.
        close_timeout: seconds a clean close waits for the client's close frame before
            resetting the connection.
        open_timeout: seconds a new socket gets for TLS and the HTTP upgrade.
        max_message_size: the largest message, in bytes, the server reads (default 1 MiB,
            as websockets). A larger one makes the server close that connection with code
            1009 ("message too big") without reading it; the message is not recorded.
            None: no limit.

    Raises:
        ValueError: a non-loopback ``host`` without ``allow_remote``, a port out of range,
            a timeout that is not positive, or a ``max_message_size`` below 1.
        TypeError: ``handler`` is not callable, ``ssl_context`` is not an SSLContext, or
            ``max_message_size`` is neither an int nor None.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        handler: Handler | None = None,
        ssl_context: ssl.SSLContext | None = None,
        *,
        allow_remote: bool = False,
        close_timeout: float = 1.0,
        open_timeout: float = 5.0,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        check_host(host, allow_remote=allow_remote)
        check_options(port, ssl_context, close_timeout=close_timeout, open_timeout=open_timeout)
        check_size("max_message_size", max_message_size)
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self._max_message_size = max_message_size
        self._state = ServerState(check_handler(handler))
        self._listener = Listener(
            self._state,
            host=host,
            ssl_context=ssl_context,
            close_timeout=float(close_timeout),
            open_timeout=float(open_timeout),
            max_message_size=max_message_size,
        )
        # Guarded by self._state.lock, like all of the state:
        self._stopping = False  # stop() was called: a restart under way must stay down
        self._restarting = False  # restart() is between going down and coming back
        self._restart_thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> ProtocolServer:
        """Bind and serve in background threads; returns self. Blocks only to bind.

        Raises:
            RuntimeError: already running.
            OSError: the port cannot be bound.
        """
        with self._state.lock:
            if self._listener.serving or self._restarting:
                raise RuntimeError("the server is already running")
            self._stopping = False
        self._listen()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection, stop listening and join every thread the server started.

        Open connections get a WebSocket close (1001) and up to ``close_timeout`` to answer
        it; then every socket left is reset. Idempotent; callable from any thread (a server
        thread does not wait for itself). A thread still alive at the deadline (a handler
        that never returns) is logged as a warning.

        Args:
            timeout: seconds for the whole stop.
        """
        deadline = time.monotonic() + timeout
        state = self._state
        with state.lock:
            self._stopping = True  # also cuts a restart's time down short
            state.changed()
            if self._restart_thread is not threading.current_thread():
                state.cond.wait_for(lambda: not self._restarting, deadline - time.monotonic())
        self._listener.close(deadline, clean=True)
        self._listener.join_all(deadline)

    def restart(self, down_for: float = 0.0, *, wait: bool = True) -> None:
        """Go down like a crashed server for ``down_for`` seconds, come back on the same port.

        Every connection is reset (no WebSocket close) and the port refuses connections
        while down. Counters, fault switches and ``received`` carry on.

        Args:
            down_for: seconds to stay down.
            wait: True blocks until the server listens again. False returns once it is
                down; a ``wsync-server-restart`` thread brings it back (see ``listening``).

        Raises:
            ValueError: ``down_for`` is negative.
            RuntimeError: not running, or a restart is already under way.
            OSError: with ``wait=True``, the port could not be bound again (with
                ``wait=False`` this is logged and the server stays down).
        """
        if not down_for >= 0:
            raise ValueError(f"down_for must be >= 0, got {down_for!r}")
        state = self._state
        with state.lock:
            if not self._listener.serving or self._restarting:
                raise RuntimeError("restart() needs a running server and no restart under way")
            self._restarting = True
        background = False
        try:
            self._listener.close(time.monotonic() + _RESTART_DOWN_TIMEOUT, clean=False)
            if wait:
                self._come_back(down_for)
                return
            with state.lock:
                thread = threading.Thread(
                    target=self._come_back_later,
                    args=(down_for,),
                    name="wsync-server-restart",
                    daemon=True,
                )
                self._restart_thread = thread
                self._listener.track(thread)
                thread.start()  # under the lock, so that stop() cannot miss it
                background = True
        finally:
            if not background:
                self._restart_done()

    def __enter__(self) -> ProtocolServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ProtocolServer(url={self.url!r}, listening={self.listening})"

    # -- state --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT``, or ``wss://localhost:PORT`` with an ``ssl_context``."""
        tls = self.ssl_context is not None
        return f"{'wss' if tls else 'ws'}://{url_host(self.host, tls=tls)}:{self.port}"

    @property
    def handler(self) -> Handler:
        """The response handler; may be replaced at any time (next message on)."""
        return self._state.handler

    @handler.setter
    def handler(self, handler: Handler | None) -> None:
        self._state.handler = check_handler(handler)

    @property
    def max_message_size(self) -> int | None:
        """The largest message in bytes the server reads (None: no limit); see the class."""
        return self._max_message_size

    @property
    def listening(self) -> bool:
        """True while the server accepts connections (False when stopped or down)."""
        return self._locked(lambda s: s.running)

    @property
    def received(self) -> list[Received]:
        """A copy of every ``message`` received, in arrival order."""
        return self._locked(lambda s: list(s.received))

    @property
    def upgrade_requests(self) -> list[UpgradeRequest]:
        """A copy of every HTTP upgrade request (path and headers), in arrival order."""
        return self._locked(lambda s: list(s.upgrades))

    @property
    def connections_total(self) -> int:
        """Connections upgraded to WebSocket since the server was created."""
        return self._locked(lambda s: s.connections_total)

    @property
    def live_connections(self) -> int:
        """Upgraded connections still open."""
        return self._locked(lambda s: len(s.peers))

    @property
    def handshakes_total(self) -> int:
        """Genuine ``connect_confirm`` frames sent (refused and mismatched ones excluded).

        Like every counter here unless it says otherwise, it is updated before the frame
        is written.
        """
        return self._locked(lambda s: s.handshakes_total)

    @property
    def pings_received(self) -> int:
        """``ping`` frames received, answered or not."""
        return self._locked(lambda s: s.pings_received)

    @property
    def pongs_received(self) -> int:
        """``pong`` frames received (clients' answers to ``send_ping()``)."""
        return self._locked(lambda s: s.pongs_received)

    @property
    def malformed_total(self) -> int:
        """Client frames answered with an ``error`` because they were malformed."""
        return self._locked(lambda s: s.malformed_total)

    @property
    def oversized_total(self) -> int:
        """Connections closed with 1009 for a message over ``max_message_size``.

        Counted once the connection has ended (after the close handshake), so a client
        may see the close frame first: wait with ``wait_until``.
        """
        return self._locked(lambda s: s.oversized_total)

    @property
    def dropped_on_message_total(self) -> int:
        """Connections reset by ``drop_on()``; counted just before the reset."""
        return self._locked(lambda s: s.dropped_on_message_total)

    @property
    def unauthorized_total(self) -> int:
        """Upgrade requests refused with HTTP 401 by ``require_token()``."""
        return self._locked(lambda s: s.unauthorized_total)

    @property
    def held_responses(self) -> int:
        """Responses held back by ``hold_responses()`` and not released yet."""
        return self._locked(lambda s: len(s.held))

    @property
    def response_delay(self) -> float:
        """Seconds between a message's arrival and its response (default 0).

        Read as each message arrives. The delay runs on the connection's worker: the
        connection keeps reading, and answering pings, meanwhile.
        """
        return self._locked(lambda s: s.faults.response_delay)

    @response_delay.setter
    def response_delay(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"response_delay must be >= 0, got {seconds!r}")
        with self._state.changing() as faults:
            faults.response_delay = float(seconds)

    # -- waiting ------------------------------------------------------------------------------

    def wait_for_received(self, n: int, timeout: float | None = 5.0) -> bool:
        """Block until ``n`` messages were received in all; False on timeout (None: no limit)."""
        return self._state.wait(lambda: len(self._state.received) >= n, timeout)

    def wait_for_connections(self, n: int, timeout: float | None = 5.0) -> bool:
        """Block until ``connections_total`` reaches ``n``; False on timeout (None: no limit)."""
        return self._state.wait(lambda: self._state.connections_total >= n, timeout)

    def wait_for_handshakes(self, n: int, timeout: float | None = 5.0) -> bool:
        """Block until ``handshakes_total`` reaches ``n``; False on timeout (None: no limit)."""
        return self._state.wait(lambda: self._state.handshakes_total >= n, timeout)

    def wait_until(self, predicate: Callable[[], bool], timeout: float | None = 5.0) -> bool:
        """Block until ``predicate()`` is true; False on timeout (None: no limit).

        ``predicate`` runs in the calling thread with no server lock held, so it may read
        the server's properties. It is checked now and after each change of the server's
        state, not on a timer: base it on server state.
        """
        return self._state.wait_until(predicate, timeout)

    # -- faults -------------------------------------------------------------------------------

    def drop_connections(self, *, clean: bool = False, code: int = GOING_AWAY) -> int:
        """Close every open connection; returns how many. Does not wait for them to end.

        Args:
            clean: False resets the TCP connection with no WebSocket close frame, like a
                network loss. True sends a close frame with ``code`` instead (the close
                handshake then completes on each connection's worker).
            code: the close code of a clean close.

        Raises:
            ValueError: ``code`` is not one an endpoint may send (with ``clean=True``).
        """
        if clean:
            check_close(code, "")
        peers = self._state.close_peers(code if clean else None)
        if not clean:
            for peer in peers:
                abort_socket(peer.sock)
        return len(peers)

    def drop_on(self, match: str | MessageFilter | None) -> None:
        """Reset the connection whenever a matching ``message`` arrives: a poison message.

        The message is recorded in ``received`` but never handled or answered; responses
        to the messages before it on that connection are still written (when due), then
        the TCP connection is reset with no close frame, like a server process that
        crashes on it, and counted in ``dropped_on_message_total``. Nothing that came after
        it on that connection is recorded or answered. Stays on, for every connection,
        until ``drop_on(None)``.

        Args:
            match: a str matches a message whose content equals it; a callable
                ``match(content) -> bool`` decides (it runs on ``wsync-server-conn-N``
                with no server lock held; if it raises, the message does not match and a
                warning is logged); None turns the fault off.

        Raises:
            TypeError: ``match`` is neither a str, a callable nor None.
        """
        matcher = check_message_filter(match)
        with self._state.changing() as faults:
            faults.drop_on = matcher

    def close_after_confirm(
        self, n: int = 1, *, code: int = POLICY_VIOLATION, reason: str = ""
    ) -> None:
        """Close each of the next ``n`` connections right after confirming it.

        The ``connect`` is confirmed normally (and counted in ``handshakes_total``); then
        the server sends a close frame with ``code`` and ``reason``, as a server does that
        revokes a credential or crashes right after accepting. Messages that arrive
        meanwhile are neither recorded nor answered. A later call replaces the count.

        Args:
            n: how many connections.
            code: the close code, e.g. 1008 (policy violation) or 1011 (internal error).
            reason: the close reason, at most 123 bytes of UTF-8.

        Raises:
            ValueError: ``n`` is negative, ``code`` is not one an endpoint may send, or
                ``reason`` is too long.
            TypeError: ``code`` is not an int or ``reason`` not a str.
        """
        count = check_count("n", n)
        code, reason = check_close(code, reason)
        with self._state.changing() as faults:
            faults.close_after_confirm = count
            faults.close_after_confirm_code = code
            faults.close_after_confirm_reason = reason

    def require_token(self, token: str | None) -> None:
        """Refuse every HTTP upgrade without ``Authorization: Bearer <token>`` with 401.

        Calling it again with another token rotates it: from then on only the new one
        passes (connections already open stay open; see ``drop_connections()``). None
        turns the check off. Refused requests still appear in ``upgrade_requests`` and
        count in ``unauthorized_total``. ``refuse_upgrades()`` is applied first.

        Args:
            token: the bearer token, or None.

        Raises:
            TypeError: ``token`` is neither a str nor None.
            ValueError: ``token`` is empty or holds whitespace or control characters.
        """
        token = check_token(token)
        with self._state.changing() as faults:
            faults.token = token

    def pause_pongs(self) -> None:
        """Stop answering ``ping`` frames (still counted); messages are still answered."""
        with self._state.changing() as faults:
            faults.pongs_paused = True

    def resume_pongs(self) -> None:
        """Answer ``ping`` frames again (those received while paused stay unanswered)."""
        with self._state.changing() as faults:
            faults.pongs_paused = False

    def stall(self) -> None:
        """Go half-open: keep every TCP connection, read and answer nothing.

        Existing and new connections alike: a new socket still completes the HTTP upgrade
        but its ``connect`` is not answered. No frame is consumed, so websockets' flow
        control (``max_queue=1``) stops reading the socket within a frame or two and the
        client's data waits in TCP buffers. Responses falling due wait too.
        """
        with self._state.changing() as faults:
            faults.stalled = True

    def unstall(self) -> None:
        """End ``stall()``: what waited is read and answered, in order."""
        with self._state.changing() as faults:
            faults.stalled = False

    def reject_handshakes(self, n: int = 1, error: str = "rejected") -> None:
        """Answer the next ``n`` ``connect`` frames with an ``error`` frame, then close (1008)."""
        count = check_count("n", n)
        with self._state.changing() as faults:
            faults.reject, faults.reject_error = count, error

    def mismatch_handshakes(
        self, n: int = 1, *, client_id: str = "someone-else", status: str | None = None
    ) -> None:
        """Answer the next ``n`` ``connect`` frames with a confirm the client must refuse.

        Args:
            n: how many handshakes.
            client_id: the wrong ``clientId`` the confirm carries.
            status: if given, the confirm keeps the right ``clientId`` and carries this
                ``status`` instead.
        """
        count = check_count("n", n)
        with self._state.changing() as faults:
            faults.mismatch = count
            faults.mismatch_client_id = client_id
            faults.mismatch_status = status

    def refuse_upgrades(self, n: int = 1, status: int = 503) -> None:
        """Answer the next ``n`` HTTP upgrade requests with HTTP ``status`` instead of 101."""
        count = check_count("n", n)
        with self._state.changing() as faults:
            faults.refuse, faults.refuse_status = count, status

    def hold_responses(self) -> None:
        """Keep every response that falls due from now on, until ``release_responses()``."""
        with self._state.changing() as faults:
            faults.holding = True

    def release_responses(self, order: str = "fifo", seed: int | None = None) -> int:
        """Stop holding and write the held responses now; returns how many were written.

        Args:
            order: ``"fifo"`` (the order they fell due), ``"reverse"`` or ``"shuffle"``.
            seed: seed for ``"shuffle"``, for a repeatable order.

        Raises:
            ValueError: unknown ``order``.
        """
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {', '.join(_ORDERS)}, got {order!r}")
        held = self._state.take_held()
        if order == "reverse":
            held.reverse()
        elif order == "shuffle":
            random.Random(seed).shuffle(held)
        return sum(send(peer, text) for peer, text in held)

    def send_raw(self, data: str | bytes) -> int:
        """Write ``data`` as-is to every open connection (str: text frame, bytes: binary).

        Works during ``stall()`` too: it is the test talking, not the server answering.
        Returns how many connections it was written to.
        """
        return sum(send(peer, data) for peer in self._state.open_peers())

    def send_error(self, text: str, message_id: str | None = None) -> int:
        """Send an ``error`` frame to every open connection; returns how many."""
        return self.send_raw(encode(Error(error=text, timestamp=now(), message_id=message_id)))

    def send_ping(self) -> int:
        """Send a ``ping`` frame to every open connection; returns how many."""
        return self.send_raw(encode(Ping(timestamp=now())))

    # -- internals ----------------------------------------------------------------------------

    def _locked(self, read: Callable[[ServerState], _T]) -> _T:
        with self._state.lock:
            return read(self._state)

    def _restart_done(self) -> None:
        with self._state.lock:
            self._restarting = False
            self._restart_thread = None
            self._state.changed()

    def _come_back(self, down_for: float) -> None:
        with self._state.lock:
            if self._state.cond.wait_for(lambda: self._stopping, down_for):
                return  # stop() came first: stay down
        self._listen()

    def _listen(self) -> None:
        # The port changes only on the first bind (port=0); restarts reuse it.
        self.port = self._listener.open(self.port)
        logger.debug("test server listening on %s", self.url)

    def _come_back_later(self, down_for: float) -> None:
        try:
            self._come_back(down_for)
        except OSError:
            logger.error("test server could not listen again on port %d", self.port, exc_info=True)
        finally:
            self._restart_done()
