"""The WebSocket layer against hostile servers on 127.0.0.1, socket by socket.

Each test plays a server that breaks the rules on purpose (floods, endless headers, reflected
requests, unoffered extensions, cookies for other hosts) with a raw TCP socket, and checks that
the client stays bounded, says nothing secret, and follows RFC 6455. Where memory is the point,
the peak is measured with tracemalloc; what the server sends is built before tracing starts.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import pytest

from wsync._connection import Transport, TransportClosed
from wsync._errors import ConnectError, UpgradeRejected
from wsync._handshake import Connector
from wsync._http11 import MAX_RESPONSE_HEAD

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 5.0  # an upper bound that a passing test never reaches
SECRET = "pr0xy-s3cret"
Script = Callable[[socket.socket, bytes], None]


def accept_value(request: bytes) -> bytes:
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            digest = hashlib.sha1(value.strip() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
            return base64.b64encode(digest)
    raise AssertionError("no Sec-WebSocket-Key in the request")


def switching(request: bytes, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    """A valid 101 answer to ``request``, with ``extra`` header lines."""
    return (
        version + b" 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_value(request) + b"\r\n" + extra + b"\r\n"
    )


def read_head(conn: socket.socket) -> bytes:
    conn.settimeout(TIMEOUT)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


def read_frame(conn: socket.socket) -> tuple[int, bytes]:
    """(opcode, payload) of the next masked client frame."""
    conn.settimeout(TIMEOUT)

    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            assert chunk, "client closed TCP before sending the frame"
            data += chunk
        return data

    first, second = exact(2)
    n = second & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", exact(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", exact(8))
    key = exact(4)
    return first & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(exact(n)))


def server_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        return bytes([first, n]) + payload
    if n < 65536:
        return bytes([first, 126]) + struct.pack("!H", n) + payload
    return bytes([first, 127]) + struct.pack("!Q", n) + payload


def send_all(conn: socket.socket, data: bytes, piece: int = 65536) -> None:
    """sendall in pieces of a memoryview: no copy is allocated while the client is traced."""
    view = memoryview(data)
    for start in range(0, len(data), piece):
        conn.sendall(view[start : start + piece])


class RawServer:
    """A TCP server on 127.0.0.1 that runs ``script(conn, request_head)`` per connection.

    With ``upgrade`` it answers each request with a valid 101 first. Errors in the script are
    re-raised by ``__exit__``; every connection's request head is kept in ``requests``.
    """

    def __init__(self, script: Script, *, upgrade: bool = True, connections: int = 1) -> None:
        self._script = script
        self._upgrade = upgrade
        self._connections = connections
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="test-raw-server", daemon=True)

    def url(self, host: str = "127.0.0.1", path: str = "/") -> str:
        return f"ws://{host}:{self.port}{path}"

    def _run(self) -> None:
        try:
            for _ in range(self._connections):
                conn, _ = self.listener.accept()
                with conn:
                    head = read_head(conn)
                    self.requests.append(head)
                    if self._upgrade:
                        conn.sendall(switching(head))
                    self._script(conn, head)
        except BaseException as exc:  # handed to the test by __exit__
            self.errors.append(exc)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._thread.join(TIMEOUT * 2)
        self.listener.close()
        if kind is None:
            assert not self._thread.is_alive(), "the server script did not finish"
            if self.errors:
                raise self.errors[0]


@contextlib.contextmanager
def traced() -> Iterator[Callable[[], int]]:
    """Trace allocations; yields a function returning the peak so far (bytes)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="test-call", daemon=True)
    thread.start()
    return thread, outcome


def chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


# --------------------------------------------------------------------------------------------------


class TestFloods:
    def test_empty_continuation_frames_do_not_grow_memory(self) -> None:
        """300,000 empty continuation frames cost the client no memory per frame."""
        flood = (
            server_frame(0x1, b"", fin=False)
            + server_frame(0x0, b"", fin=False) * 300_000
            + server_frame(0x0, b"end")
        )
        with RawServer(lambda conn, _: send_all(conn, flood)) as server, traced() as peak:
            transport = Connector(server.url()).open(TIMEOUT)
            try:
                assert transport.recv() == "end"
            finally:
                transport.abort()
            used = peak()
        assert used < 1 << 20, f"peak {used / 2**20:.1f} MiB for 300,000 empty fragments"

    def test_one_byte_fragments_cost_about_the_message(self) -> None:
        """A 256 KiB message in 1-byte fragments costs about its bytes, not per fragment."""
        size = 256 * 1024
        flood = (
            server_frame(0x1, b"a", fin=False)
            + server_frame(0x0, b"a", fin=False) * (size - 2)
            + server_frame(0x0, b"a")
        )
        with RawServer(lambda conn, _: send_all(conn, flood)) as server, traced() as peak:
            transport = Connector(server.url()).open(TIMEOUT)
            try:
                assert transport.recv() == "a" * size
            finally:
                transport.abort()
            used = peak()
        assert used < 4 * size, f"peak {used / 2**20:.1f} MiB for a 256 KiB message"

    def test_ping_flood_without_reading_keeps_one_pong(self) -> None:
        """Pings from a server that never reads leave one pong owed, not a queue of them."""
        count = 100_000
        flood = b"".join(server_frame(0x9, struct.pack("!I", i) + b"p" * 121) for i in range(count))
        flood += server_frame(0x1, b"done")
        flooded = threading.Event()
        received: list[bytes] = []

        def script(conn: socket.socket, _: bytes) -> None:
            send_all(conn, flood)
            assert flooded.wait(TIMEOUT)
            while True:  # now read everything the client wrote, up to its next message
                opcode, payload = read_frame(conn)
                if opcode == 0x1:
                    return
                assert opcode == 0xA
                received.append(payload)

        with RawServer(script) as server, traced() as peak:
            transport = Connector(server.url()).open(TIMEOUT)
            try:
                assert transport.recv() == "done"
                used = peak()
                flooded.set()
                transport.send_text("next")  # as the heartbeat would: the pong owed goes first
            finally:
                transport.abort()
        assert used < 2 << 20, f"peak {used / 2**20:.1f} MiB after {count} pings"
        assert received[-1] == struct.pack("!I", count - 1) + b"p" * 121  # the latest ping's
        assert len(received) < count / 2  # what fitted in the kernel, then only the latest

    def test_send_never_blocks_on_an_owed_pong(self) -> None:
        """try_send_text returns at once while a pong is owed to a server that stopped reading."""
        flood = server_frame(0x9, b"x" * 125) * 50_000 + server_frame(0x1, b"done")
        release = threading.Event()

        def script(conn: socket.socket, _: bytes) -> None:
            send_all(conn, flood)
            assert release.wait(TIMEOUT * 2)

        with RawServer(script) as server:
            transport = Connector(server.url()).open(TIMEOUT)
            try:
                assert transport.recv() == "done"
                assert transport._pong_owed is not None, "the flood did not fill the buffers"
                began = time.monotonic()
                thread, outcome = in_thread(lambda: transport.try_send_text("hello"))
                thread.join(TIMEOUT)
                assert not thread.is_alive(), "try_send_text blocked"
                assert outcome.get("result") is False
                assert time.monotonic() - began < 1.0
            finally:
                release.set()
                transport.abort()


class TestClosingHandshake:
    def test_server_close_is_answered_and_tcp_is_left_to_the_server(self) -> None:
        """The client echoes the server's close code and lets the server close TCP first."""
        echoed: list[tuple[int, bytes]] = []
        still_open = threading.Event()

        def script(conn: socket.socket, _: bytes) -> None:
            conn.sendall(server_frame(0x8, struct.pack("!H", 4001) + b"bye"))
            echoed.append(read_frame(conn))
            conn.settimeout(0.3)
            with contextlib.suppress(TimeoutError):
                if conn.recv(1) == b"":
                    return  # the client closed TCP first
            still_open.set()

        with RawServer(script) as server:
            transport = Connector(server.url()).open(TIMEOUT)
            try:
                with pytest.raises(TransportClosed, match="4001") as caught:
                    transport.recv()
            finally:
                transport.abort()
        assert echoed == [(0x8, struct.pack("!H", 4001))]
        assert still_open.is_set(), "the client closed TCP before the server did"
        assert caught.value.close_code == 4001 and not caught.value.violation

    def test_protocol_error_fails_the_connection_with_1002(self) -> None:
        """A reserved opcode makes the client send close 1002 and report a violation."""
        closes: list[tuple[int, bytes]] = []

        def script(conn: socket.socket, _: bytes) -> None:
            conn.sendall(bytes([0x83, 0]))
            closes.append(read_frame(conn))
            conn.sendall(server_frame(0x8, struct.pack("!H", 1002)))

        with RawServer(script) as server:
            transport = Connector(server.url()).open(TIMEOUT)
            try:
                with pytest.raises(TransportClosed, match="protocol error") as caught:
                    transport.recv()
            finally:
                transport.abort()
        assert closes == [(0x8, struct.pack("!H", 1002))]
        assert caught.value.violation and caught.value.close_code is None

    def test_close_reason_not_utf8_fails_with_1007(self) -> None:
        """A close frame whose reason is not UTF-8 is answered with close 1007."""
        closes: list[tuple[int, bytes]] = []

        def script(conn: socket.socket, _: bytes) -> None:
            conn.sendall(server_frame(0x8, struct.pack("!H", 1000) + b"\xff\xfe"))
            closes.append(read_frame(conn))

        with RawServer(script) as server:
            transport = Connector(server.url()).open(TIMEOUT)
            try:
                with pytest.raises(TransportClosed) as caught:
                    transport.recv()
            finally:
                transport.abort()
        assert closes == [(0x8, struct.pack("!H", 1007))]
        assert caught.value.violation

    @pytest.mark.parametrize("code", [1004, 1005, 1006, 1015, 999, 2000, 5000])
    def test_send_close_refuses_codes_that_must_not_be_sent(self, code: int) -> None:
        """send_close raises ValueError for a reserved code and writes nothing."""
        ours, theirs = socket.socketpair()
        transport = Transport(ours, max_frame_size=1 << 20, where="pair")
        with theirs:
            try:
                with pytest.raises(ValueError, match=str(code)):
                    transport.send_close(code)
                transport.send_close(1000)
                assert read_frame(theirs) == (0x8, struct.pack("!H", 1000))
            finally:
                transport.abort()


class TestUpgradeBounds:
    def test_endless_header_line_fails_fast_and_small(self) -> None:
        """An endless header line in the 101 fails the attempt at the byte budget."""
        junk = b"a" * 65536

        def script(conn: socket.socket, request: bytes) -> None:
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nX-Endless: ")
            with contextlib.suppress(OSError):
                for _ in range(256):  # 16 MiB at most, unless the client gives up first
                    send_all(conn, junk)

        with RawServer(script, upgrade=False) as server, traced() as peak:
            began = time.monotonic()
            with pytest.raises(ConnectError, match="response head over") as caught:
                Connector(server.url()).open(TIMEOUT)
            took = time.monotonic() - began
            used = peak()
        assert caught.value.phase == "upgrade"
        assert took < 2.0
        assert used < 8 * MAX_RESPONSE_HEAD, f"peak {used / 2**20:.1f} MiB"

    def test_too_many_headers_are_refused(self) -> None:
        """A 101 with thousands of header lines is refused."""

        def script(conn: socket.socket, request: bytes) -> None:
            extra = b"".join(b"X-%d: v\r\n" % i for i in range(2000))
            conn.sendall(switching(request, extra))

        with RawServer(script, upgrade=False) as server, pytest.raises(ConnectError) as caught:
            Connector(server.url()).open(TIMEOUT)
        assert caught.value.phase == "upgrade"

    @pytest.mark.parametrize(
        ("extra", "version", "words"),
        [
            (b"Sec-WebSocket-Extensions: permessage-deflate\r\n", b"HTTP/1.1", "extension"),
            (b"Sec-WebSocket-Protocol: chat\r\n", b"HTTP/1.1", "subprotocol"),
            (b"", b"HTTP/1.0", "HTTP/1.0"),
        ],
    )
    def test_a_101_the_client_did_not_ask_for_is_refused(
        self, extra: bytes, version: bytes, words: str
    ) -> None:
        """An unoffered extension or subprotocol, or HTTP/1.0, fails the upgrade."""

        def script(conn: socket.socket, request: bytes) -> None:
            conn.sendall(switching(request, extra, version))

        with (
            RawServer(script, upgrade=False) as server,
            pytest.raises(ConnectError, match=words) as caught,
        ):
            Connector(server.url()).open(TIMEOUT)
        assert caught.value.phase == "upgrade"

    def test_wrong_accept_key_is_refused(self) -> None:
        """A Sec-WebSocket-Accept that does not match our key fails the upgrade."""

        def script(conn: socket.socket, request: bytes) -> None:
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IGl0\r\n\r\n"
            )

        with (
            RawServer(script, upgrade=False) as server,
            pytest.raises(ConnectError, match="Accept"),
        ):
            Connector(server.url()).open(TIMEOUT)

    def test_frames_in_the_same_packet_as_the_101_arrive(self) -> None:
        """Frames sent right behind the 101 are not lost by the upgrade."""

        def script(conn: socket.socket, request: bytes) -> None:
            conn.sendall(switching(request) + server_frame(0x1, b"first"))
            read_frame(conn)

        with RawServer(script, upgrade=False) as server:
            transport = Connector(server.url()).open(TIMEOUT)
            try:
                assert transport.recv() == "first"
                transport.send_text("bye")
            finally:
                transport.abort()


def _reflect(kind: str) -> Script:
    """A server or proxy that sends our own request back, in one of several shapes."""

    def script(conn: socket.socket, request: bytes) -> None:
        flat = request.replace(b"\r\n", b" ").strip()
        if kind == "body":
            answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(request)
            answer += request
        elif kind == "reason":
            answer = b"HTTP/1.1 400 " + flat + b"\r\n\r\n"
        elif kind == "headers":
            answer = b"HTTP/1.1 400 Bad Request\r\nX-Echo: " + flat + b"\r\n\r\n"
        elif kind == "latin-1":  # a header that is not UTF-8 makes some parsers quote the line
            answer = b"HTTP/1.1 400 Bad Request\r\nX-Echo: caf\xe9 " + flat + b"\r\n\r\n"
        elif kind == "raw":
            answer = request
        else:
            assert kind == "after-200"
            answer = b"HTTP/1.1 200 OK\r\n\r\n" + request
        conn.sendall(answer)

    return script


class TestNoReflectedText:
    @pytest.mark.parametrize("kind", ["body", "reason", "headers", "latin-1", "raw", "after-200"])
    def test_reflecting_proxy_never_shows_our_credentials(
        self, kind: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A proxy that reflects our CONNECT puts no Proxy-Authorization in errors or logs."""
        token = base64.b64encode(f"me:{SECRET}".encode()).decode()
        caplog.set_level(logging.DEBUG, logger="wsync")
        with RawServer(_reflect(kind), upgrade=False) as proxy:
            connector = Connector(
                "ws://127.0.0.1:9/", proxy=f"http://me:{SECRET}@127.0.0.1:{proxy.port}"
            )
            with pytest.raises(ConnectError) as caught:
                connector.open(TIMEOUT)
        assert token.encode() in proxy.requests[0]  # it was sent, and reflected
        assert caught.value.phase == "proxy"
        shown = [str(e) for e in chain(caught.value)] + [repr(caught.value)] + caplog.messages
        for text in shown:
            assert SECRET not in text and token not in text, text

    @pytest.mark.parametrize("kind", ["body", "reason", "headers", "latin-1", "raw"])
    def test_reflecting_server_never_shows_our_headers(
        self, kind: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A server that reflects the upgrade request puts no header value in errors or logs."""
        caplog.set_level(logging.DEBUG, logger="wsync")
        with RawServer(_reflect(kind), upgrade=False) as server:
            connector = Connector(server.url(), headers={"Authorization": f"Bearer {SECRET}"})
            with pytest.raises(ConnectError) as caught:
                connector.open(TIMEOUT)
        assert SECRET.encode() in server.requests[0]
        shown = [str(e) for e in chain(caught.value)] + [repr(caught.value)] + caplog.messages
        for text in shown:
            assert SECRET not in text, text


class TestCookies:
    def test_a_cookie_from_one_server_never_reaches_another_client(self) -> None:
        """A Set-Cookie for localhost (on a refused 302) stays with the client that got it."""

        def redirect(conn: socket.socket, request: bytes) -> None:
            conn.sendall(
                b"HTTP/1.1 302 Found\r\nLocation: ws://elsewhere/\r\n"
                b"Set-Cookie: sid=AAA; Domain=localhost; Path=/\r\n"
                b"Set-Cookie: lb=n1; Path=/\r\nContent-Length: 0\r\n\r\n"
            )

        with RawServer(redirect, upgrade=False, connections=2) as first:
            mine = Connector(first.url("localhost"))
            with pytest.raises(UpgradeRejected):
                mine.open(TIMEOUT)
            with RawServer(lambda conn, _: None) as second:
                other = Connector(second.url("localhost"))
                other.open(TIMEOUT).abort()
            with pytest.raises(UpgradeRejected):
                mine.open(TIMEOUT)  # its own server's cookie goes back to it
        assert b"cookie:" not in second.requests[0].lower()
        # The host-only cookie comes back (http.cookiejar returns no Domain=localhost cookie).
        assert b"\r\nCookie: lb=n1\r\n" in first.requests[1]

    def test_cookies_are_merged_with_a_cookie_header_given(self) -> None:
        """A Cookie header the user gives and the jar's cookies make one Cookie line."""

        def set_cookie(conn: socket.socket, request: bytes) -> None:
            conn.sendall(switching(request, b"Set-Cookie: lb=node7\r\n"))

        with RawServer(set_cookie, upgrade=False, connections=2) as server:
            connector = Connector(server.url(), headers={"Cookie": "app=1"})
            connector.open(TIMEOUT).abort()
            connector.open(TIMEOUT).abort()
        assert server.requests[1].count(b"Cookie:") == 1
        assert b"\r\nCookie: app=1; lb=node7\r\n" in server.requests[1]


class TestHeadersCallable:
    def test_callable_is_called_before_every_attempt(self) -> None:
        """A headers callable gives each attempt fresh values."""
        tokens = iter(["t1", "t2"])
        with RawServer(lambda conn, _: None, connections=2) as server:
            connector = Connector(server.url(), headers=lambda: {"Authorization": next(tokens)})
            connector.open(TIMEOUT).abort()
            connector.open(TIMEOUT).abort()
        assert b"Authorization: t1\r\n" in server.requests[0]
        assert b"Authorization: t2\r\n" in server.requests[1]

    def test_callable_that_raises_fails_the_attempt_without_its_message(self) -> None:
        """A failing headers callable is a ConnectError naming its type only, cause chained."""

        def broken() -> dict[str, str]:
            raise RuntimeError(f"vault said {SECRET}")

        with pytest.raises(ConnectError) as caught:
            Connector("ws://127.0.0.1:9/", headers=broken).open(TIMEOUT)
        assert caught.value.phase == "upgrade"
        assert "RuntimeError" in str(caught.value) and SECRET not in str(caught.value)
        assert isinstance(caught.value.__cause__, RuntimeError)

    def test_callable_returning_a_bad_mapping_fails_the_attempt(self) -> None:
        """A headers callable's mapping is checked like a static one."""
        connector = Connector("ws://127.0.0.1:9/", headers=lambda: {"X-Token": "a\r\nb"})
        with pytest.raises(ConnectError) as caught:
            connector.open(TIMEOUT)
        assert isinstance(caught.value.__cause__, ValueError)
        assert "a\r\nb" not in str(caught.value.__cause__)
