"""ProtocolServer: the server side of the wire protocol on localhost, with fault controls.

This module's one job is running a wsync server for tests and demos on websockets' threaded
server (``websockets.sync.server``): binding, threads, stopping, and the public face. What
each connection answers lives in ``_state.py``. It is not a production server: it keeps
every message in memory and listens on loopback only unless told otherwise.

Threads, every one named ``wsync-server-...``, a daemon, and joined by ``stop()``:

- ``accept``: websockets' ``Server.serve_forever()``, accepting sockets.
- ``conn-N``: one per accepted socket, started by websockets and renamed first thing:
  TLS, HTTP upgrade, then reading frames and answering ``connect`` and ``ping`` at once.
- ``recv-N``: websockets' socket reader for that connection (renamed).
- ``worker-N``: the handler, responses when due (``response_delay``), clean closes.
- ``restart``: brings the server back after ``restart(wait=False)``.

The worker earns its place: a slow handler or a response delay never stops the connection's
reading, so pings are still answered and further messages still recorded meanwhile.
The accept thread is a daemon, so the connection threads it starts are daemons too: a
server that was never stopped cannot keep the interpreter alive.
"""

from __future__ import annotations

import functools
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, TypeVar

from websockets.sync.server import Server, ServerConnection, serve

from wsync.protocol import Error, Ping, encode, now
from wsync.testing._state import GOING_AWAY, Peer, ServerState, send
from wsync.testing._support import (
    Handler,
    QuietLogger,
    Received,
    UpgradeRequest,
    abort_socket,
    check_count,
    check_handler,
    check_host,
    check_options,
    url_host,
)

__all__ = ["ProtocolServer"]

logger = logging.getLogger(__name__)

_ORDERS: Final = ("fifo", "reverse", "shuffle")
_T = TypeVar("_T")
_RESTART_DOWN_TIMEOUT: Final = 5.0


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
    ``reject_handshakes()`` does.

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
            worker thread, so a slow handler delays later responses on that connection
            only. If it raises, the message gets an ``error`` frame ("handler failed").
        ssl_context: a server-side ``ssl.SSLContext``, to serve ``wss://``.
        allow_remote: allow a ``host`` that is not loopback.
        close_timeout: seconds a clean close waits for the client's close frame before
            resetting the connection.
        open_timeout: seconds a new socket gets for TLS and the HTTP upgrade.

    Raises:
        ValueError: a non-loopback ``host`` without ``allow_remote``, a port out of range,
            or a timeout that is not positive.
        TypeError: ``handler`` is not callable, or ``ssl_context`` is not an SSLContext.
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
    ) -> None:
        check_host(host, allow_remote=allow_remote)
        check_options(port, ssl_context, close_timeout=close_timeout, open_timeout=open_timeout)
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self._close_timeout = float(close_timeout)
        self._open_timeout = float(open_timeout)
        self._ws_logger = QuietLogger(logging.getLogger("wsync.testing.websockets"), {})
        self._local = threading.local()  # .number: the accepted socket's number, per conn thread
        self._connection_class = self._make_connection_class()
        self._state = ServerState(check_handler(handler))
        # Guarded by self._state.lock, like all of the state:
        self._server: Server | None = None
        self._stopping = False  # stop() was called: a restart under way must stay down
        self._restarting = False  # restart() is between going down and coming back
        self._restart_thread: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()  # every thread started or adopted
        self._sockets: dict[threading.Thread, socket.socket] = {}  # conn thread -> socket
        self._accepted = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> ProtocolServer:
        """Bind and serve in background threads; returns self. Blocks only to bind.

        Raises:
            RuntimeError: already running.
            OSError: the port cannot be bound.
        """
        with self._state.lock:
            if self._server is not None or self._restarting:
                raise RuntimeError("the server is already running")
            self._stopping = False
        self._open()
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
        self._shutdown(deadline, clean=True)
        self._join_all(deadline)

    def restart(self, down_for: float = 0.0, *, wait: bool = True) -> None:
        """Go down like a crashed server for ``down_for`` seconds, come back on the same port.

        Every connection is reset (no WebSocket close) and the port refuses connections
        while down. Counters and ``received`` carry on.

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
            if self._server is None or self._restarting:
                raise RuntimeError("restart() needs a running server and no restart under way")
            self._restarting = True
        background = False
        try:
            self._shutdown(time.monotonic() + _RESTART_DOWN_TIMEOUT, clean=False)
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
                self._threads.add(thread)
                thread.start()  # under the lock, so that stop() cannot miss it
                background = True
        finally:
            if not background:
                self._set(_restarting=False)

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

        Like every counter here, it is updated before the frame is written.
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
    def held_responses(self) -> int:
        """Responses held back by ``hold_responses()`` and not released yet."""
        return self._locked(lambda s: len(s.held))

    @property
    def response_delay(self) -> float:
        """Seconds between a message's arrival and its response (default 0).

        Read as each message arrives. The delay runs on the connection's worker: the
        connection keeps reading, and answering pings, meanwhile.
        """
        return self._locked(lambda s: s.response_delay)

    @response_delay.setter
    def response_delay(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"response_delay must be >= 0, got {seconds!r}")
        self._state.set(response_delay=float(seconds))

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
        """
        peers = self._state.close_peers(code if clean else None)
        if not clean:
            for peer in peers:
                abort_socket(peer.conn.socket)
        return len(peers)

    def pause_pongs(self) -> None:
        """Stop answering ``ping`` frames (still counted); messages are still answered."""
        self._state.set(pongs_paused=True)

    def resume_pongs(self) -> None:
        """Answer ``ping`` frames again (those received while paused stay unanswered)."""
        self._state.set(pongs_paused=False)

    def stall(self) -> None:
        """Go half-open: keep every TCP connection, read and answer nothing.

        Existing and new connections alike: a new socket still completes the HTTP upgrade
        but its ``connect`` is not answered. No frame is consumed, so websockets' flow
        control (``max_queue=1``) stops reading the socket within a frame or two and the
        client's data waits in TCP buffers. Responses falling due wait too.
        """
        self._state.set(stalled=True)

    def unstall(self) -> None:
        """End ``stall()``: what waited is read and answered, in order."""
        self._state.set(stalled=False)

    def reject_handshakes(self, n: int = 1, error: str = "rejected") -> None:
        """Answer the next ``n`` ``connect`` frames with an ``error`` frame, then close (1008)."""
        self._state.set(reject=check_count("n", n), reject_error=error)

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
        self._state.set(
            mismatch=check_count("n", n), mismatch_client_id=client_id, mismatch_status=status
        )

    def refuse_upgrades(self, n: int = 1, status: int = 503) -> None:
        """Answer the next ``n`` HTTP upgrade requests with HTTP ``status`` instead of 101."""
        self._state.set(refuse=check_count("n", n), refuse_status=status)

    def hold_responses(self) -> None:
        """Keep every response that falls due from now on, until ``release_responses()``."""
        self._state.set(holding=True)

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

    def _set(self, **fields: Any) -> None:
        """Set fields of self under the lock, and wake every waiter."""
        with self._state.lock:
            for name, value in fields.items():
                setattr(self, name, value)
            self._state.changed()

    def _make_connection_class(self) -> type[ServerConnection]:
        owner = self

        class _Connection(ServerConnection):
            # websockets starts a socket reader thread per connection: name and track it.
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                owner._adopt(self.recv_events_thread)

        return _Connection

    def _adopt(self, thread: threading.Thread) -> None:
        with self._state.lock:
            thread.name = f"wsync-server-recv-{getattr(self._local, 'number', 0)}"
            self._threads.add(thread)

    def _open(self) -> None:
        extra: dict[str, Any] = {"family": socket.AF_INET6} if ":" in self.host else {}
        server = serve(
            self._serve_connection,
            self.host,
            self.port,
            ssl=self.ssl_context,
            process_request=self._state.on_upgrade,
            compression=None,
            open_timeout=self._open_timeout,
            ping_interval=None,  # the protocol has its own ping; websockets' would interfere
            close_timeout=self._close_timeout,
            max_queue=1,  # frames not consumed soon stop the socket being read: see stall()
            logger=self._ws_logger,
            create_connection=self._connection_class,
            **extra,
        )
        server.handler = functools.partial(self._on_accept, server.handler)
        with self._state.lock:
            self._server = server
            self.port = server.socket.getsockname()[1]
            self._state.running = True
            accept = threading.Thread(
                target=server.serve_forever, name="wsync-server-accept", daemon=True
            )
            self._threads.add(accept)
            accept.start()  # a daemon, so the connection threads it starts are daemons too
            self._state.changed()
        logger.debug("test server listening on %s", self.url)

    def _come_back(self, down_for: float) -> None:
        with self._state.lock:
            if self._state.cond.wait_for(lambda: self._stopping, down_for):
                return  # stop() came first: stay down
        self._open()

    def _come_back_later(self, down_for: float) -> None:
        try:
            self._come_back(down_for)
        except OSError:
            logger.error("test server could not listen again on port %d", self.port, exc_info=True)
        finally:
            self._set(_restarting=False, _restart_thread=None)

    def _shutdown(self, deadline: float, *, clean: bool) -> None:
        """Stop listening and end every connection; clean closes get a grace period."""
        state = self._state
        with state.lock:
            server, self._server = self._server, None
            if server is None:
                return
            state.running = False
            sockets = dict(self._sockets)
        peers = state.close_peers(GOING_AWAY if clean else None, everyone=True)
        upgraded = {id(peer.conn.socket) for peer in peers}
        for sock in sockets.values():
            if not clean or id(sock) not in upgraded:
                abort_socket(sock)  # nothing to say to a socket that is no WebSocket yet
        if clean:
            self._join(list(sockets), min(deadline, time.monotonic() + self._close_timeout))
            for sock in sockets.values():
                abort_socket(sock)
        self._join(list(sockets), deadline)
        # The connection threads are done, so this returns at once: it closes the listening
        # socket, waits for serve_forever() to return and joins the finished handlers.
        server.shutdown(close_connections=False)

    @staticmethod
    def _join(threads: list[threading.Thread], deadline: float) -> None:
        me = threading.current_thread()
        for thread in threads:
            if thread is not me:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _join_all(self, deadline: float) -> None:
        me = threading.current_thread()
        while True:
            with self._state.lock:
                self._threads = {t for t in self._threads if t.is_alive()}
                alive = [t for t in self._threads if t is not me]
            if not alive:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(sorted(t.name for t in alive))
                logger.warning("test server threads still running after stop(): %s", names)
                return
            self._join(alive[:1], deadline)

    def _on_accept(
        self, handle: Callable[[socket.socket, Any], None], sock: socket.socket, addr: Any
    ) -> None:
        """Runs first on every thread websockets starts for an accepted socket."""
        thread = threading.current_thread()
        with self._state.lock:
            self._accepted += 1
            self._local.number = self._accepted
            thread.name = f"wsync-server-conn-{self._accepted}"
            self._threads.add(thread)
            refuse = not self._state.running
            if not refuse:
                self._sockets[thread] = sock
        if refuse:
            sock.close()
            return
        try:
            handle(sock, addr)  # websockets: TLS, upgrade, _serve_connection, close
        finally:
            with self._state.lock:
                del self._sockets[thread]
                self._state.changed()

    def _serve_connection(self, conn: ServerConnection) -> None:
        """websockets' connection handler: runs on ``wsync-server-conn-N`` after the upgrade."""
        state = self._state
        with state.lock:
            if not state.running:
                return
            state.connections_total += 1
            peer = Peer(getattr(self._local, "number", 0), state.connections_total, conn)
            state.peers[peer.index] = peer
            worker = threading.Thread(
                target=state.work,
                args=(peer,),
                name=f"wsync-server-worker-{peer.number}",
                daemon=True,
            )
            self._threads.add(worker)
            worker.start()  # under the lock, so that stop() cannot miss it
            state.changed()
        try:
            state.read(peer)
        except Exception:
            logger.exception("test server: internal error on connection %d", peer.index)
        finally:
            with state.lock:
                peer.finished = True
                del state.peers[peer.index]
                state.changed()
