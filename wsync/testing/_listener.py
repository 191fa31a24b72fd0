"""The test server's sockets and threads: websockets' threaded server, run and stopped.

One job: bind, accept, name and track every thread, hand each upgraded connection to
``ServerState`` (``read()`` on its ``wsync-server-conn-N`` thread, ``work()`` on a
``wsync-server-worker-N`` it starts), and on ``close()`` end every connection and join
what it started. It decides nothing about the protocol or the faults (``_state.py``) and
offers nothing to users (``_server.py``); it reaches websockets beyond its documented API
only through ``_websockets_adapter.py``.

Threads, every one named ``wsync-server-...`` and a daemon:

- ``accept``: websockets' ``Server.serve_forever()``, accepting sockets.
- ``conn-N``: one per accepted socket, started by websockets and renamed first thing:
  TLS, HTTP upgrade, then reading frames and answering ``connect`` and ``ping`` at once.
- ``recv-N``: websockets' socket reader for that connection (renamed).
- ``worker-N``: the handler, responses when due, clean closes and ``drop_on()`` resets.

The accept thread is a daemon, so the connection threads it starts are daemons too: a
server that was never stopped cannot keep the interpreter alive. Threads are forgotten once
they have ended (checked whenever the set of them has doubled), so a long-running server
holds thread objects in proportion to its live connections, not to all it ever had.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Any, Final

from websockets.sync.server import Server, ServerConnection, serve

from wsync.testing import _websockets_adapter as adapter
from wsync.testing._state import GOING_AWAY, Peer, ServerState
from wsync.testing._support import QuietLogger, abort_socket

__all__ = ["Listener"]

logger = logging.getLogger(__name__)

_PRUNE_FLOOR: Final = 32
"""Thread objects kept before finished ones are first swept out."""


class Listener:
    """websockets' threaded server for one ``ProtocolServer``, and every thread it runs.

    Its fields are guarded by ``state.lock``. ``open()`` and ``close()`` are called by one
    thread at a time (``ProtocolServer`` sees to it).

    Args:
        state: what the connections answer; also the lock and the ``running`` flag.
        host: interface to listen on (already checked).
        ssl_context: server-side TLS, or None.
        close_timeout: seconds a clean close waits for the client's close frame.
        open_timeout: seconds a new socket gets for TLS and the HTTP upgrade.
        max_message_size: websockets' ``max_size``; None: no limit.
    """

    def __init__(
        self,
        state: ServerState,
        *,
        host: str,
        ssl_context: ssl.SSLContext | None,
        close_timeout: float,
        open_timeout: float,
        max_message_size: int | None,
    ) -> None:
        self._state = state
        self._host = host
        self._ssl_context = ssl_context
        self._close_timeout = close_timeout
        self._open_timeout = open_timeout
        self._max_message_size = max_message_size
        self._ws_logger = QuietLogger(logging.getLogger("wsync.testing.websockets"), {})
        # Per connection thread: .number (the accepted socket's number) and .sock.
        self._local = threading.local()
        self._connection_class = adapter.connection_class(self._adopt_reader)
        # Guarded by state.lock:
        self._server: Server | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()  # threads started or adopted; see track
        self._prune_at = _PRUNE_FLOOR  # _threads' size at which finished ones are swept
        self._sockets: dict[threading.Thread, socket.socket] = {}  # conn thread -> socket
        self._accepted = 0

    @property
    def serving(self) -> bool:
        """True between ``open()`` and ``close()``. Caller holds the lock."""
        assert self._state.lock.locked()
        return self._server is not None

    def open(self, port: int) -> int:
        """Bind ``port`` (0: any free one), serve on an accept thread; returns the port.

        Raises:
            OSError: the port cannot be bound.
        """
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listener = socket.create_server((self._host, port), family=family)
        port = listener.getsockname()[1]  # serve() detaches listener to wrap it for TLS
        try:
            server = serve(
                self._serve_connection,
                sock=listener,
                **adapter.serve_options(
                    ssl=self._ssl_context,
                    process_request=self._state.on_upgrade,
                    compression=None,
                    open_timeout=self._open_timeout,
                    # The protocol has its own ping; websockets' would interfere.
                    ping_interval=None,
                    close_timeout=self._close_timeout,
                    max_size=self._max_message_size,
                    # Frames not consumed soon stop the socket being read: see stall().
                    max_queue=1,
                    logger=self._ws_logger,
                    create_connection=self._connection_class,
                ),
            )
        except BaseException:
            listener.close()
            raise
        adapter.hook_accept(server, self._on_accept)
        with self._state.lock:
            self._server = server
            self._state.running = True
            accept = threading.Thread(
                target=server.serve_forever, name="wsync-server-accept", daemon=True
            )
            self._accept_thread = accept
            self.track(accept)
            accept.start()  # a daemon, so the connection threads it starts are daemons too
            self._state.changed()
        return port

    def close(self, deadline: float, *, clean: bool) -> None:
        """Stop listening and end every connection; clean closes get a grace period.

        Args:
            deadline: ``time.monotonic()`` by which to be done.
            clean: True sends each upgraded connection a close (1001) and waits up to
                ``close_timeout`` for the answer before resetting it; False resets at once.
        """
        state = self._state
        with state.lock:
            server, self._server = self._server, None
            accept, self._accept_thread = self._accept_thread, None
            if server is None:
                return
            state.running = False
            sockets = dict(self._sockets)
        peers = state.close_peers(GOING_AWAY if clean else None, everyone=True)
        upgraded = {id(peer.sock) for peer in peers}
        for sock in sockets.values():
            if not clean or id(sock) not in upgraded:
                abort_socket(sock)  # nothing to say to a socket that is no WebSocket yet
        if clean:
            _join(list(sockets), min(deadline, time.monotonic() + self._close_timeout))
            for sock in sockets.values():
                abort_socket(sock)
        _join(list(sockets), deadline)
        # The connection threads are done (a reset socket ends them at once), so this returns
        # at once whatever the websockets release: see the adapter.
        adapter.stop_listening(server)
        if accept is not None:
            _join([accept], deadline)
            if accept.is_alive():
                return  # join_all names it; its pipe stays open rather than closed under it
        adapter.release(server)

    def track(self, thread: threading.Thread) -> None:
        """Remember a thread for ``join_all()``. Caller holds the lock.

        Finished threads are swept out whenever the set has doubled since the last sweep:
        amortised O(1) per thread, and at most twice the live threads (or the floor) kept.
        """
        assert self._state.lock.locked()
        if len(self._threads) >= self._prune_at:
            self._sweep()
        self._threads.add(thread)

    def join_all(self, deadline: float) -> None:
        """Join every thread tracked, but the caller's; log those alive at ``deadline``."""
        me = threading.current_thread()
        while True:
            with self._state.lock:
                self._sweep()
                alive = [t for t in self._threads if t is not me]
            if not alive:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(sorted(t.name for t in alive))
                logger.warning("test server threads still running after stop(): %s", names)
                return
            _join(alive[:1], deadline)

    def _sweep(self) -> None:
        self._threads = {t for t in self._threads if t.is_alive()}
        self._prune_at = max(_PRUNE_FLOOR, 2 * len(self._threads))

    def _adopt_reader(self, thread: threading.Thread) -> None:
        """Name and track websockets' socket reader; runs on ``wsync-server-conn-N``."""
        with self._state.lock:
            thread.name = f"wsync-server-recv-{getattr(self._local, 'number', 0)}"
            self.track(thread)

    def _on_accept(self, handle: adapter.SocketHandler, sock: socket.socket, addr: Any) -> None:
        """Runs first on every thread websockets starts for an accepted socket."""
        thread = threading.current_thread()
        with self._state.lock:
            self._accepted += 1
            self._local.number = self._accepted
            self._local.sock = sock
            thread.name = f"wsync-server-conn-{self._accepted}"
            self.track(thread)
            refuse = not self._state.running
            if not refuse:
                self._sockets[thread] = sock
        if refuse:
            # Accepted as the server went down. websockets still gets the (reset) socket: it
            # must see every thread it started end (from 17 on, shutdown() waits for them).
            abort_socket(sock)
        try:
            handle(sock, addr)  # websockets: TLS, upgrade, _serve_connection, close
        finally:
            with self._state.lock:
                self._sockets.pop(thread, None)
                self._state.changed()

    def _serve_connection(self, conn: ServerConnection) -> None:
        """websockets' connection handler: runs on ``wsync-server-conn-N`` after the upgrade."""
        state = self._state
        with state.lock:
            if not state.running:
                return
            state.connections_total += 1
            peer = Peer(self._local.number, state.connections_total, conn, self._local.sock)
            state.peers[peer.index] = peer
            worker = threading.Thread(
                target=state.work,
                args=(peer,),
                name=f"wsync-server-worker-{peer.number}",
                daemon=True,
            )
            self.track(worker)
            worker.start()  # under the lock, so that close() cannot miss it
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


def _join(threads: list[threading.Thread], deadline: float) -> None:
    me = threading.current_thread()
    for thread in threads:
        if thread is not me:
            thread.join(max(0.0, deadline - time.monotonic()))
