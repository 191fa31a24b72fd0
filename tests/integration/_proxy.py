"""A tiny threaded HTTP CONNECT proxy for tests: listens on 127.0.0.1, tunnels to loopback only.

It counts the tunnels it opened and records each request's ``Proxy-Authorization`` header, so a
test can check that a connection really went through it.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["ConnectProxy"]

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1:0; use as a context manager.

    Args:
        credentials: ``(user, password)`` to require as Basic ``Proxy-Authorization`` (else 407).
        hold_first: never answer the first CONNECT: set ``held`` once it is read, then wait
            for the client to go away (for cancel tests); later requests are served normally.
    """

    def __init__(
        self, *, credentials: tuple[str, str] | None = None, hold_first: bool = False
    ) -> None:
        self._required: str | None = None
        if credentials is not None:
            token = base64.b64encode(":".join(credentials).encode()).decode()
            self._required = f"Basic {token}"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        # Guards the counters and the lists of sockets and threads below.
        self._lock = threading.Lock()
        self.tunnels = 0
        self.auth_headers: list[str | None] = []
        self._sockets: list[socket.socket] = [self._listener]
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._hold_next = hold_first
        self.held = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ConnectProxy:
        self._spawn(self._accept_loop)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Close every socket and join every thread."""
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes accept() and recv() on Linux
            sock.close()
        while True:
            with self._lock:
                threads = [t for t in self._threads if t.is_alive()]
            if not threads:
                return
            for thread in threads:
                thread.join(5.0)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name="test-proxy", daemon=True)
        with self._lock:
            if self._closed:
                return
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                sock.close()
                return False
            self._sockets.append(sock)
            return True

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._track(client):
                self._spawn(self._handle, client)

    def _handle(self, client: socket.socket) -> None:
        tunnelled = False
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            auth = headers.get("proxy-authorization")
            with self._lock:
                self.auth_headers.append(auth)
                hold, self._hold_next = self._hold_next, False
            if hold:
                self.held.set()
                client.recv(1)  # returns when the client closes or shuts down its socket
                return
            if self._required is not None and auth != self._required:
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                return
            host, _, port = target.rpartition(":")
            host = host.strip("[]")
            if method != "CONNECT" or host not in _LOOPBACK:
                client.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                return
            try:
                upstream = socket.create_connection((host, int(port)), timeout=5.0)
            except OSError:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                return
            upstream.settimeout(None)
            if not self._track(upstream):
                return
            with self._lock:
                self.tunnels += 1
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            tunnelled = True
            self._spawn(self._pump, upstream, client)
            self._pump(client, upstream)
        except OSError:
            pass  # the test stopped the proxy, or a peer went away
        finally:
            if not tunnelled:
                client.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
