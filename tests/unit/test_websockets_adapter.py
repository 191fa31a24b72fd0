"""The contract between wsync.testing and websockets: what _websockets_adapter relies on.

Each test pins one thing the adapter takes from websockets beyond its documented API, on a
bare websockets server on 127.0.0.1 (no wsync protocol). A websockets release that changes
one of them fails here, by name, instead of making the test server misbehave.
"""

from __future__ import annotations

import gc
import inspect
import os
import socket
import threading
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

import pytest

pytest.importorskip("websockets")  # the [server] extra; the rest of tests/unit runs without it

import websocket
from websockets.sync.server import Server, ServerConnection, serve

from tests.helpers import TIMEOUT
from wsync.testing import _websockets_adapter as adapter


def echo(conn: ServerConnection) -> None:
    for data in conn:
        conn.send(data)


class Harness:
    """A websockets server run through the adapter, with every thread it starts joined after."""

    def __init__(self, create_connection: type[ServerConnection] | None = None) -> None:
        self.accepted: list[tuple[threading.Thread, socket.socket]] = []
        self.accepted_event = threading.Event()
        options = adapter.serve_options(ping_interval=None, max_queue=1)
        if create_connection is not None:
            options["create_connection"] = create_connection
        listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{listener.getsockname()[1]}"
        self.server: Server = serve(echo, sock=listener, **options)
        adapter.hook_accept(self.server, self._hook)
        self.accept = threading.Thread(
            target=self.server.serve_forever, name="wsync-test-adapter-accept", daemon=True
        )
        self.accept.start()

    def _hook(
        self, handle: Callable[[socket.socket, Any], None], sock: socket.socket, addr: Any
    ) -> None:
        self.accepted.append((threading.current_thread(), sock))
        self.accepted_event.set()
        handle(sock, addr)

    def stop(self) -> None:
        for thread, _ in self.accepted:
            thread.join(TIMEOUT)
        adapter.stop_listening(self.server)
        self.accept.join(TIMEOUT)
        assert not self.accept.is_alive()
        adapter.release(self.server)


@pytest.fixture
def connect() -> Iterator[Callable[[str], websocket.WebSocket]]:
    opened: list[websocket.WebSocket] = []

    def open_one(url: str) -> websocket.WebSocket:
        ws = websocket.create_connection(url, timeout=TIMEOUT)
        opened.append(ws)
        return ws

    yield open_one
    for ws in opened:
        ws.shutdown()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class TestVersion:
    def test_installed_release_is_supported(self) -> None:
        """The installed websockets is at least the lowest release the adapter supports."""
        major, minor = (int(part) for part in metadata.version("websockets").split(".")[:2])
        assert (major, minor) >= adapter.LOWEST_VERSION


class TestConnectionClass:
    def test_reader_thread_is_handed_out_and_ends_with_the_connection(
        self, connect: Callable[[str], websocket.WebSocket]
    ) -> None:
        """recv_events_thread: a running thread per connection that ends once it closes."""
        readers: list[threading.Thread] = []
        harness = Harness(adapter.connection_class(readers.append))
        try:
            ws = connect(harness.url)
            ws.send("hello")
            assert ws.recv() == "hello"
            assert len(readers) == 1
            reader = readers[0]
            assert isinstance(reader, threading.Thread)
            assert reader.is_alive()
            assert reader is not harness.accepted[0][0]  # not the connection's own thread
            ws.close()
            reader.join(TIMEOUT)
            assert not reader.is_alive()
        finally:
            harness.stop()


class TestHookAccept:
    def test_hook_runs_on_the_socket_thread_before_websockets(
        self, connect: Callable[[str], websocket.WebSocket]
    ) -> None:
        """Server.handler: run on a new thread per accepted socket, with that socket."""
        harness = Harness()
        try:
            ws = connect(harness.url)
            assert harness.accepted_event.wait(TIMEOUT)
            thread, sock = harness.accepted[0]
            assert thread not in (threading.current_thread(), harness.accept)
            assert sock.getpeername() == ws.sock.getsockname()
            ws.send("through the hook")
            assert ws.recv() == "through the hook"
            ws.close()
        finally:
            harness.stop()


class TestStopListening:
    def test_stop_listening_ends_serve_forever_and_refuses(
        self, connect: Callable[[str], websocket.WebSocket]
    ) -> None:
        """Server.shutdown() with no connection running stops listening and ends serve_forever()."""
        harness = Harness()
        ws = connect(harness.url)
        ws.close()
        harness.stop()  # joins the connection thread, then stop_listening()
        with pytest.raises(ConnectionRefusedError):
            websocket.create_connection(harness.url, timeout=TIMEOUT)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc")
class TestRelease:
    def test_a_stopped_server_holds_no_file_descriptor(self) -> None:
        """After stop_listening() and release() a server leaves no fd open (16.x kept a pipe)."""
        gc.collect()
        before = open_fds()
        harness = Harness()
        harness.stop()
        gc.collect()  # serve_forever()'s selector sits in a reference cycle until collected
        assert open_fds() == before


class TestServeOptions:
    def test_unknown_options_are_left_for_serve_to_refuse(self) -> None:
        """serve_options() drops only the options it knows may be missing, never others."""
        options = adapter.serve_options(ping_interval=None, max_queue=1, frobnicate=True)
        assert options["frobnicate"] is True
        parameters = inspect.signature(serve).parameters
        assert ("ping_interval" in options) == ("ping_interval" in parameters)
        assert ("max_queue" in options) == ("max_queue" in parameters)
