"""The only place ``wsync.testing`` relies on websockets beyond its documented API.

One job: hide what differs between websockets releases, and the three undocumented
things the test server needs, behind five small functions. Every other module of
``wsync.testing`` uses websockets' documented API only (``serve()`` and its options,
``ServerConnection.recv/send/close/respond``, ``Request``, ``ConnectionClosed.sent``).
This module holds no state, starts no thread and knows nothing of the wsync protocol.

What it relies on, each checked by ``tests/unit/test_websockets_adapter.py`` so that a
websockets release that changes it fails loudly there rather than subtly elsewhere:

- ``Connection.recv_events_thread`` (undocumented): the socket reader thread a
  connection starts in its constructor. Handed out to be named and joined.
- ``Server.handler`` (the documented constructor argument, kept as an attribute): what
  ``serve_forever()`` runs on a new thread for each accepted socket. Wrapped to name that
  thread and learn its socket before websockets does anything with it.
- ``Server.shutdown()`` differs by release: up to 16 it only closes the listening socket and
  wakes ``serve_forever()``; from 17 it also waits, without a timeout, for every connection
  thread. ``stop_listening()`` is therefore called once no connection thread runs.
- Up to 16, ``Server`` keeps an ``os.pipe()`` (``shutdown_watcher``/``shutdown_notifier``,
  two file descriptors) that nothing closes; ``release()`` closes it.
- ``serve(ping_interval=...)`` exists from 15.0 (14 has no keepalive to turn off), and
  ``serve(max_queue=...)`` from 14.0 (13's threaded connection holds one message at most,
  which stops the socket being read just as ``max_queue=1`` does).

Lowest release: 13.0. websockets 12 calls its server ``WebSocketServer`` and has no
``ServerConnection.respond()`` to refuse an upgrade with.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, Final

from websockets.sync.server import Server, ServerConnection, serve

__all__ = [
    "LOWEST_VERSION",
    "AcceptHook",
    "connection_class",
    "hook_accept",
    "release",
    "serve_options",
    "stop_listening",
]

logger = logging.getLogger(__name__)

LOWEST_VERSION: Final = (13, 0)
"""The lowest websockets release the test server works with (see the module docstring)."""

SocketHandler = Callable[[socket.socket, Any], None]
"""websockets' per-socket handler: ``handle(sock, addr)``, TLS to close."""

AcceptHook = Callable[[SocketHandler, socket.socket, Any], None]
"""``hook(handle, sock, addr)``: runs on the accepted socket's thread and must call ``handle``."""

_SERVE_PARAMETERS: Final = frozenset(inspect.signature(serve).parameters)


def serve_options(**options: Any) -> dict[str, Any]:
    """Return ``options`` for ``serve()``, less those this release does not have.

    Only options the test server can do without on a release that lacks them are dropped:
    ``ping_interval=None`` (websockets 14 has no keepalive to turn off) and ``max_queue``
    (13 buffers one message at most anyway). Any other unknown option is left in, so that
    ``serve()`` fails loudly on it.
    """
    for name in ("ping_interval", "max_queue"):
        if name not in _SERVE_PARAMETERS:
            options.pop(name, None)
    return options


def connection_class(on_reader: Callable[[threading.Thread], None]) -> type[ServerConnection]:
    """Return a ``ServerConnection`` subclass (for ``serve(create_connection=...)``).

    Each instance hands its socket reader thread to ``on_reader`` as soon as it is built,
    on the accepted socket's thread, before the opening handshake.
    """

    class _Connection(ServerConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            on_reader(self.recv_events_thread)

    return _Connection


def hook_accept(server: Server, hook: AcceptHook) -> None:
    """Make ``serve_forever()`` run ``hook(handle, sock, addr)`` for each accepted socket.

    ``hook`` runs first on the thread websockets starts for the socket; it must call
    ``handle(sock, addr)`` (websockets' TLS, upgrade, connection handler and close) or
    close ``sock`` itself. Call before ``serve_forever()``.
    """
    server.handler = functools.partial(hook, server.handler)


def stop_listening(server: Server) -> None:
    """Close the listening socket and make ``serve_forever()`` return.

    Call it once no connection thread of ``server`` is running: from websockets 17 on,
    ``Server.shutdown()`` also joins them, with no timeout.
    """
    server.shutdown()


def release(server: Server) -> None:
    """Free what a shut-down ``server`` still holds (websockets <= 16: a pipe, two fds).

    Call exactly once, after ``serve_forever()`` has returned. Never raises.
    """
    for name in ("shutdown_watcher", "shutdown_notifier"):
        fd = getattr(server, name, None)
        if isinstance(fd, int):  # an os.pipe() end; from 17 on they are closed sockets
            with contextlib.suppress(OSError):
                os.close(fd)
