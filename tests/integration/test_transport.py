"""wsync._handshake and wsync._connection against real servers on 127.0.0.1: websockets, raw
listeners, a proxy."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

import pytest
import trustme
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from tests.integration._proxy import ConnectProxy
from wsync._connection import MalformedFrame, Transport, TransportClosed
from wsync._errors import ConnectError, TLSError, UpgradeRejected
from wsync._handshake import (
    Connector,
    ProxyTarget,
    check_headers,
    check_max_frame_size,
    check_ssl_context,
    is_loopback_host,
    parse_proxy,
    redact_url,
    validate_url,
)
from wsync.testing._websockets_adapter import serve_options

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 5.0  # an upper bound that a passing test never reaches

# The echo server below sends a text frame of raw bytes (send(..., text=True)) and reads its
# connection's close_code: websockets 14 added both. The wsync code under test needs neither;
# only these server-side tricks are missing from the lowest websockets the server extra allows.
needs_websockets_14 = pytest.mark.skipif(
    int(websockets.__version__.split(".")[0]) < 14,
    reason="the test's echo server needs websockets >= 14 (send(text=True), close_code)",
)
SECRET = "s3cr3t-header-value"


class EchoServer:
    """websockets' sync server in a thread: echoes, and obeys a few command messages."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.requests: list[Request] = []
        self.close_codes: list[int | None] = []
        self.closed = threading.Event()
        self._server: Server = serve(
            self._handler,
            "127.0.0.1",
            0,
            ssl=ssl_context,
            process_request=self._process_request,
            compression=None,
            # ping_interval came in websockets 15 (14 and older send no pings anyway).
            **serve_options(ping_interval=None),
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-server")
        self.port: int = self._server.socket.getsockname()[1]

    def url(self, scheme: str = "ws", host: str = "127.0.0.1", path: str = "/") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def start(self) -> EchoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(TIMEOUT)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.requests.append(request)
        if request.path == "/forbidden":
            return connection.respond(HTTPStatus.FORBIDDEN, "no\n")
        if request.path == "/moved":
            response = connection.respond(HTTPStatus.FOUND, "")
            response.headers["Location"] = "ws://127.0.0.1:1/"
            return response
        return None

    def _handler(self, connection: ServerConnection) -> None:
        try:
            for message in connection:
                self._command(connection, message)
        except ConnectionClosed:
            pass
        finally:
            self.close_codes.append(connection.close_code)
            self.closed.set()

    @staticmethod
    def _command(connection: ServerConnection, message: str | bytes) -> None:
        if not isinstance(message, str):
            connection.send(message)
        elif message == "send-invalid-utf8":
            connection.send(b"ok\xff\xfe", text=True)
        elif message == "send-binary":
            connection.send(b"\x00\x01\xff")
        elif message.startswith("send-big:"):
            connection.send("a" * int(message.split(":")[1]))
        elif message.startswith("send-fragments:"):
            size = int(message.split(":")[1])
            connection.send(["a" * size, "b" * size, "c" * size])
        elif message == "ping-me":
            answered = connection.ping().wait(TIMEOUT)
            connection.send("pong-received" if answered else "no-pong")
        elif message == "close-me":
            connection.close(code=4001)
        elif message == "drop-me":
            connection.socket.shutdown(socket.SHUT_RDWR)  # EOF, no close frame
        else:
            connection.send(message)


@pytest.fixture
def server() -> Iterator[EchoServer]:
    echo = EchoServer().start()
    yield echo
    echo.stop()


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A TCP listener that accepts (in the kernel backlog) but never answers anything."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    yield listener
    listener.close()


@pytest.fixture
def full_listener() -> Iterator[socket.socket]:
    """A listener whose accept queue is full: the kernel drops new SYNs, so connects hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    for _ in range(16):
        filler = socket.socket()
        filler.settimeout(0.2)
        try:
            filler.connect(listener.getsockname())
        except OSError:
            filler.close()
            break
        fillers.append(filler)
    yield listener
    for filler in fillers:
        filler.close()
    listener.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def _tls_server(ca: trustme.CA, name: str) -> Iterator[EchoServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    echo = EchoServer(ssl_context=context).start()
    yield echo
    echo.stop()


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[EchoServer]:
    yield from _tls_server(ca, "localhost")


@pytest.fixture
def other_name_tls_server(ca: trustme.CA) -> Iterator[EchoServer]:
    yield from _tls_server(ca, "other.example")


@contextlib.contextmanager
def opened(connector: Connector) -> Iterator[Transport]:
    transport = connector.open(TIMEOUT)
    try:
        yield transport
    finally:
        transport.abort()


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run target in a thread; its result or exception lands in the returned dict."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="test-attempt")
    thread.start()
    return thread, outcome


def read_until(conn: socket.socket, marker: bytes) -> bytes:
    conn.settimeout(TIMEOUT)
    data = b""
    while marker not in data:
        chunk = conn.recv(4096)
        assert chunk, "peer closed before sending the marker"
        data += chunk
    return data


@contextlib.contextmanager
def socket_peer() -> Iterator[tuple[Transport, socket.socket]]:
    """A transport over one end of a socket pair, and the other end: the test plays the server,
    byte by byte (what websockets never would send), on a socket whose buffers stay put."""
    ours, theirs = socket.socketpair()
    transport = Transport(ours, max_frame_size=1 << 20, where="pair")
    with theirs:
        try:
            yield transport, theirs
        finally:
            transport.abort()


def fill_send_buffer(sock: socket.socket) -> None:
    """Write zero bytes (no frame) until ``sock`` takes not even one more: its peer reads none."""
    size = 65536
    while size:
        try:
            sock.send(b"\0" * size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            size //= 2


def read_until_pong(conn: socket.socket, payload: bytes) -> bytes:
    """Read from a client until a masked pong frame carrying ``payload`` arrives; return all."""
    conn.settimeout(TIMEOUT)
    head = bytes([0x8A, 0x80 | len(payload)])
    data = b""
    while True:
        chunk = conn.recv(65536)
        assert chunk, "client closed before sending the pong"
        data += chunk
        for match in re.finditer(re.escape(head), data):
            start = match.end()
            key, masked = data[start : start + 4], data[start + 4 : start + 4 + len(payload)]
            if bytes(b ^ key[i % 4] for i, b in enumerate(masked)) == payload:
                return data


def cause_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


class TestUrls:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("ws://127.0.0.1:8765", "ws://127.0.0.1:8765"),
            ("wss://example.com/path?q=1", "wss://example.com/path?q=1"),
            ("WSS://example.com/", "wss://example.com/"),
            ("ws://[::1]:9000/", "ws://[::1]:9000/"),
        ],
    )
    def test_validate_url_accepts_ws_and_wss(self, url: str, expected: str) -> None:
        """A ws:// or wss:// URL with a host is returned, its scheme lowercased."""
        assert validate_url(url) == expected

    def test_validate_url_rejects_non_str(self) -> None:
        """A URL that is not a str raises TypeError."""
        with pytest.raises(TypeError):
            validate_url(b"ws://host/")

    @pytest.mark.parametrize(
        "url",
        ["http://host/", "host:80", "ws://", "ws:///path", "ws://host:99999/", "ws://ho st/", ""],
    )
    def test_validate_url_rejects_bad_urls(self, url: str) -> None:
        """A wrong scheme, a missing host, a bad port or whitespace raises ValueError."""
        with pytest.raises(ValueError):
            validate_url(url)

    def test_redact_url_drops_userinfo_query_and_fragment(self) -> None:
        """Userinfo, query and fragment never reach a log line."""
        assert redact_url("wss://user:tok@h:1/p?token=x#frag") == "wss://h:1/p"

    @pytest.mark.parametrize("url", ["ws://[::1", "", "garbage", "ws://u:p@[bad/"])
    def test_redact_url_never_raises(self, url: str) -> None:
        """Unparseable input gives a string without raising and without the userinfo."""
        assert "u:p" not in redact_url(url)

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("ws://localhost:1/", True),
            ("ws://127.0.0.5/", True),
            ("ws://[::1]:8/", True),
            ("ws://example.com/", False),
            ("ws://10.0.0.1/", False),
            ("ws://[::1", False),
        ],
    )
    def test_is_loopback_host(self, url: str, expected: bool) -> None:
        """localhost and loopback addresses are loopback; anything else is not."""
        assert is_loopback_host(url) is expected


class TestConnectorOptions:
    def test_header_value_with_newline_is_refused_without_echoing_it(self) -> None:
        """A header value with CR/LF raises ValueError whose message omits the value."""
        with pytest.raises(ValueError) as caught:
            Connector("ws://127.0.0.1:1/", headers={"X-Token": f"{SECRET}\r\nEvil: 1"})
        assert SECRET not in str(caught.value)

    def test_handshake_header_is_refused(self) -> None:
        """Headers the transport writes itself cannot be overridden."""
        with pytest.raises(ValueError):
            Connector("ws://127.0.0.1:1/", headers={"Sec-WebSocket-Key": "x"})

    @pytest.mark.parametrize("proxy", ["socks5://127.0.0.1:1080", "127.0.0.1:3128", "http://:80"])
    def test_bad_proxy_is_refused(self, proxy: str) -> None:
        """Only http://host[:port] proxies are accepted."""
        with pytest.raises(ValueError):
            Connector("ws://127.0.0.1:1/", proxy=proxy)

    def test_bad_max_frame_size_is_refused(self) -> None:
        """max_frame_size must be a positive int."""
        with pytest.raises(ValueError):
            Connector("ws://127.0.0.1:1/", max_frame_size=0)

    def test_bad_timeout_is_refused(self) -> None:
        """open() needs a positive finite timeout."""
        with pytest.raises(ValueError):
            Connector("ws://127.0.0.1:1/").open(0)

    def test_headers_may_be_a_callable_or_a_mapping_only(self) -> None:
        """check_headers keeps a callable for later and refuses anything but a mapping."""

        def fresh() -> dict[str, str]:
            return {"Authorization": "t"}

        assert check_headers(fresh) is fresh
        assert check_headers({"A": "1"}) == (("A", "1"),)
        assert check_headers(None) == ()
        with pytest.raises(TypeError):
            check_headers(["A: 1"])
        with pytest.raises(TypeError):
            check_headers({"A": 1})

    def test_ssl_context_for_a_ws_url_is_refused(self) -> None:
        """An ssl_context for ws:// would be silently unused: ValueError."""
        with pytest.raises(ValueError, match="wss"):
            check_ssl_context(ssl.create_default_context(), "ws://127.0.0.1:1/")
        with pytest.raises(TypeError):
            check_ssl_context("tls", "wss://127.0.0.1:1/")

    def test_parse_proxy_gives_host_port_and_credentials(self) -> None:
        """parse_proxy decodes percent-escaped credentials and defaults the port to 80."""
        assert parse_proxy(None) is None
        assert parse_proxy("http://me:p%40ss@proxy.example") == ProxyTarget(
            "proxy.example", 80, ("me", "p@ss")
        )
        with pytest.raises(TypeError):
            parse_proxy(3128)

    @pytest.mark.parametrize(
        ("value", "error"), [(True, TypeError), ("1", TypeError), (0, ValueError)]
    )
    def test_check_max_frame_size(self, value: object, error: type[Exception]) -> None:
        """max_frame_size is an int >= 1 (not a bool)."""
        with pytest.raises(error):
            check_max_frame_size(value)


class TestOpen:
    def test_open_send_and_receive_text(self, server: EchoServer) -> None:
        """An opened transport sends a text frame and receives the echo as str."""
        with opened(Connector(server.url())) as transport:
            transport.send_text("héllo")
            assert transport.recv() == "héllo"

    def test_headers_reach_the_server_and_never_the_logs(
        self, server: EchoServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Extra headers reach the server; their values, URL userinfo and query are never logged."""
        caplog.set_level(logging.DEBUG)
        url = f"ws://user:pw-{SECRET}@127.0.0.1:{server.port}/p?token=q-{SECRET}"
        with opened(Connector(url, headers={"X-Token": SECRET})) as transport:
            transport.send_text("hi")
            assert transport.recv() == "hi"
        assert server.requests[0].headers["X-Token"] == SECRET
        # The server's own logger (websockets) prints the request; the client side must not.
        client_lines = [r.getMessage() for r in caplog.records if r.name != "websockets.server"]
        assert any("opened" in line for line in client_lines)
        assert not any(SECRET in line for line in client_lines)

    def test_connection_refused_raises_connect_error_with_cause(self) -> None:
        """A closed port raises ConnectError naming the URL, with the OSError chained."""
        with socket.create_server(("127.0.0.1", 0)) as probe:
            port = probe.getsockname()[1]
        with pytest.raises(ConnectError) as caught:
            Connector(f"ws://u:p@127.0.0.1:{port}/x?t=1").open(TIMEOUT)
        assert isinstance(caught.value.__cause__, ConnectionRefusedError)
        assert f"ws://127.0.0.1:{port}/x" in str(caught.value)
        assert "u:p" not in str(caught.value)

    def test_forbidden_upgrade_is_rejected_with_status(self, server: EchoServer) -> None:
        """A 403 answer to the upgrade raises UpgradeRejected saying "rejected" and 403."""
        with pytest.raises(UpgradeRejected) as caught:
            Connector(server.url(path="/forbidden")).open(TIMEOUT)
        assert caught.value.status_code == 403
        assert "rejected" in str(caught.value)
        assert "403" in str(caught.value)

    def test_redirect_is_not_followed(self, server: EchoServer) -> None:
        """A 302 answer raises UpgradeRejected instead of following it with the headers."""
        with pytest.raises(UpgradeRejected) as caught:
            Connector(server.url(path="/moved"), headers={"X-Token": SECRET}).open(TIMEOUT)
        assert caught.value.status_code == 302
        assert len(server.requests) == 1

    def test_silent_server_times_out_within_the_bound(self, silent_listener: socket.socket) -> None:
        """open(timeout=0.3) against a server that never answers fails in about 0.3 s."""
        port = silent_listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ConnectError, match="timed out") as caught:
            Connector(f"ws://127.0.0.1:{port}/").open(0.3)
        assert 0.25 <= time.monotonic() - started < 2.0
        assert not isinstance(caught.value, TLSError)

    def test_unanswered_tcp_connect_times_out_within_the_bound(
        self, full_listener: socket.socket
    ) -> None:
        """open(timeout=0.3) fails in about 0.3 s when the TCP handshake is never answered."""
        started = time.monotonic()
        with pytest.raises(ConnectError, match=r"timed out after 0\.3 s during tcp") as caught:
            Connector(f"ws://127.0.0.1:{full_listener.getsockname()[1]}/").open(0.3)
        assert 0.25 <= time.monotonic() - started < 2.0
        assert isinstance(caught.value.__cause__, TimeoutError)

    def test_cancel_interrupts_an_upgrade_in_flight(self, silent_listener: socket.socket) -> None:
        """cancel() from another thread ends an open() waiting for the upgrade answer."""
        connector = Connector(f"ws://127.0.0.1:{silent_listener.getsockname()[1]}/")
        thread, outcome = in_thread(lambda: connector.open(TIMEOUT * 2))
        conn, _ = silent_listener.accept()
        with conn:
            read_until(conn, b"\r\n\r\n")  # the upgrade request: open() now waits for an answer
            started = time.monotonic()
            connector.cancel()
            thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert time.monotonic() - started < 1.0
        assert isinstance(outcome.get("error"), ConnectError)
        assert "cancelled" in str(outcome["error"])

    def test_cancel_interrupts_a_tls_handshake_in_flight(
        self, silent_listener: socket.socket
    ) -> None:
        """cancel() also ends an open() stuck in the TLS handshake."""
        connector = Connector(f"wss://127.0.0.1:{silent_listener.getsockname()[1]}/")
        thread, outcome = in_thread(lambda: connector.open(TIMEOUT * 2))
        conn, _ = silent_listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            assert conn.recv(1)  # the ClientHello has started: open() is in the handshake
            connector.cancel()
            thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), ConnectError)
        assert not isinstance(outcome["error"], TLSError)

    def test_cancel_just_before_the_tcp_connect_is_seen(
        self, full_listener: socket.socket, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A cancel() landing after every check but before the kernel's connect ends open()."""
        target = full_listener.getsockname()
        connector = Connector(f"ws://127.0.0.1:{target[1]}/")

        def cancel_first(real: Callable[[socket.socket, Any], Any]) -> Callable[..., Any]:
            def connect(sock: socket.socket, address: Any) -> Any:
                if address == target:
                    # Here the attempt's socket is registered but not connecting yet. Shutting it
                    # down fails with ENOTCONN and, by POSIX, does nothing (Linux alone marks the
                    # socket, which a later connect() with a timeout happens to notice): skip it,
                    # so only the cancelled flag can stop open().
                    with monkeypatch.context() as patch:
                        patch.setattr(socket.socket, "shutdown", lambda *args: None)
                        connector.cancel()
                return real(sock, address)

            return connect

        monkeypatch.setattr(socket.socket, "connect", cancel_first(socket.socket.connect))
        monkeypatch.setattr(socket.socket, "connect_ex", cancel_first(socket.socket.connect_ex))
        started = time.monotonic()
        with pytest.raises(ConnectError, match="cancelled during tcp connect"):
            connector.open(TIMEOUT)  # the full accept queue leaves a missed cancel hanging
        assert time.monotonic() - started < 1.0

    def test_cancel_while_idle_fails_only_the_next_open(self, server: EchoServer) -> None:
        """A cancel() with no open() in flight fails the next one at once, and only that one."""
        connector = Connector(server.url())
        connector.cancel()
        started = time.monotonic()
        with pytest.raises(ConnectError, match="cancelled"):
            connector.open(TIMEOUT)
        assert time.monotonic() - started < 1.0
        with opened(connector) as transport:
            transport.send_text("again")
            assert transport.recv() == "again"

    def test_reset_drops_a_pending_cancel(self, server: EchoServer) -> None:
        """reset() after an idle cancel() lets the next open() run normally."""
        connector = Connector(server.url())
        connector.cancel()
        connector.reset()
        with opened(connector) as transport:
            transport.send_text("fine")
            assert transport.recv() == "fine"

    def test_open_after_a_cancelled_attempt_succeeds(self, server: EchoServer) -> None:
        """A cancel that stopped an attempt in flight does not affect the next attempt."""
        with ConnectProxy(hold_first=True) as proxy:
            connector = Connector(server.url(), proxy=proxy.url)
            thread, outcome = in_thread(lambda: connector.open(TIMEOUT * 2))
            assert proxy.held.wait(TIMEOUT)
            connector.cancel()
            thread.join(TIMEOUT)
            assert isinstance(outcome.get("error"), ConnectError)
            assert "cancelled" in str(outcome["error"])
            with opened(connector) as transport:
                transport.send_text("next")
                assert transport.recv() == "next"
            assert proxy.tunnels == 1


class TestTransport:
    def test_binary_frame_arrives_as_bytes(self, server: EchoServer) -> None:
        """A binary frame is returned as bytes."""
        with opened(Connector(server.url())) as transport:
            transport.send_text("send-binary")
            assert transport.recv() == b"\x00\x01\xff"

    @needs_websockets_14
    def test_invalid_utf8_fails_the_connection_with_1007(self, server: EchoServer) -> None:
        """A text frame with invalid UTF-8 fails the connection with close code 1007 (RFC 8.1)."""
        with opened(Connector(server.url())) as transport:
            transport.send_texts(["send-invalid-utf8", "after"])
            with pytest.raises(TransportClosed) as caught:
                transport.recv()
            assert caught.value.violation and caught.value.close_code is None
            assert "UTF-8" in str(caught.value) and "ok" not in str(caught.value)
            with pytest.raises(TransportClosed):
                transport.recv()
        assert server.closed.wait(TIMEOUT)
        assert server.close_codes == [1007]

    def test_oversize_frame_is_malformed_and_the_next_frame_arrives(
        self, server: EchoServer
    ) -> None:
        """A frame over max_frame_size raises MalformedFrame; the next frame still arrives."""
        with opened(Connector(server.url(), max_frame_size=1000)) as transport:
            transport.send_texts(["send-big:200000", "after"])
            with pytest.raises(MalformedFrame, match="max_frame_size"):
                transport.recv()
            assert transport.recv() == "after"

    def test_oversize_fragmented_message_is_dropped_whole(self, server: EchoServer) -> None:
        """A fragmented message whose total exceeds the limit is reported once and dropped."""
        with opened(Connector(server.url(), max_frame_size=1000)) as transport:
            transport.send_texts(["send-fragments:600", "after"])
            with pytest.raises(MalformedFrame):
                transport.recv()
            assert transport.recv() == "after"

    def test_fragmented_message_is_reassembled(self, server: EchoServer) -> None:
        """Fragments of one message are returned as one str."""
        with opened(Connector(server.url())) as transport:
            transport.send_text("send-fragments:3")
            assert transport.recv() == "aaabbbccc"

    def test_large_message_within_the_limit_arrives_intact(self, server: EchoServer) -> None:
        """A message larger than the read-ahead buffer round-trips unchanged."""
        text = "".join(chr(0x41 + i % 26) for i in range(300_000)) + "é"
        with opened(Connector(server.url())) as transport:
            transport.send_text(text)
            assert transport.recv() == text

    @pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70001])
    def test_length_encodings_round_trip(self, server: EchoServer, size: int) -> None:
        """Payloads at each frame-length boundary (7, 16 and 64-bit lengths) round-trip."""
        text = "".join(chr(0x61 + i % 26) for i in range(size))
        with opened(Connector(server.url())) as transport:
            transport.send_text(text)
            assert transport.recv() == text

    def test_send_texts_writes_frames_in_order(self, server: EchoServer) -> None:
        """send_texts writes several frames, received in the same order."""
        texts = [f"m{i}" for i in range(50)]
        with opened(Connector(server.url())) as transport:
            transport.send_texts(texts)
            assert [transport.recv() for _ in texts] == texts

    def test_server_ping_is_answered(self, server: EchoServer) -> None:
        """A WebSocket ping from the server is answered with a pong inside recv()."""
        with opened(Connector(server.url())) as transport:
            transport.send_text("ping-me")
            assert transport.recv() == "pong-received"

    @needs_websockets_14
    def test_server_close_raises_transport_closed(self, server: EchoServer) -> None:
        """A close frame from the server ends recv() with TransportClosed naming the code."""
        with opened(Connector(server.url())) as transport:
            transport.send_text("close-me")
            with pytest.raises(TransportClosed, match="4001"):
                transport.recv()
            with pytest.raises(TransportClosed):
                transport.send_text("late")
        assert server.closed.wait(TIMEOUT)
        assert server.close_codes == [4001]

    @needs_websockets_14
    def test_send_close_reaches_the_server(self, server: EchoServer) -> None:
        """send_close() sends a close frame; the server's reply ends recv()."""
        with opened(Connector(server.url())) as transport:
            transport.send_close(1000)
            with pytest.raises(TransportClosed, match="1000"):
                transport.recv()
            with pytest.raises(TransportClosed):
                transport.send_text("late")
        assert server.closed.wait(TIMEOUT)
        assert server.close_codes == [1000]

    def test_abort_wakes_a_blocked_recv(self, server: EchoServer) -> None:
        """abort() from another thread wakes a blocked recv() with TransportClosed."""
        transport = Connector(server.url()).open(TIMEOUT)
        started = threading.Event()

        def receive() -> str | bytes:
            started.set()
            return transport.recv()

        thread, outcome = in_thread(receive)
        assert started.wait(TIMEOUT)
        began = time.monotonic()
        transport.abort()
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert time.monotonic() - began < 1.0
        assert isinstance(outcome.get("error"), TransportClosed)
        transport.abort()  # idempotent

    def test_send_after_abort_raises_transport_closed(self, server: EchoServer) -> None:
        """Sending on an aborted transport raises TransportClosed."""
        transport = Connector(server.url()).open(TIMEOUT)
        transport.abort()
        with pytest.raises(TransportClosed, match="aborted"):
            transport.send_text("x")

    def test_dropped_connection_raises_transport_closed(self, server: EchoServer) -> None:
        """A TCP EOF without a close frame ends recv() with TransportClosed."""
        with opened(Connector(server.url())) as transport:
            transport.send_text("drop-me")
            with pytest.raises(TransportClosed, match="EOF"):
                transport.recv()

    def test_64_bit_length_with_the_top_bit_set_fails_the_connection(self) -> None:
        """A 64-bit payload length with its most significant bit set is a protocol error at once."""
        with socket_peer() as (transport, peer):
            # The peer keeps its end open: reading past the "payload" would never end.
            peer.sendall(b"\x82\x7f" + struct.pack("!Q", (1 << 63) | 5) + b"hello")
            thread, outcome = in_thread(transport.recv)
            thread.join(TIMEOUT)
            assert not thread.is_alive(), "the reader is reading past the payload"
            error = outcome.get("error")
            assert isinstance(error, TransportClosed)
            assert "protocol error" in str(error)
            assert "most significant bit" in str(error)
            with pytest.raises(TransportClosed, match="protocol error"):
                transport.recv()

    def test_ping_with_a_full_send_buffer_leaves_the_reader_free(self) -> None:
        """A ping that finds the send buffer full does not stall recv(); the next write sends the
        pong first."""
        with socket_peer() as (transport, peer):
            ours = transport._sock  # the socket pair's end under the transport
            fill_send_buffer(ours)
            peer.sendall(b"\x89\x05probe" + b"\x81\x05after")  # a ping, then a text frame
            thread, outcome = in_thread(transport.recv)
            thread.join(TIMEOUT)
            assert not thread.is_alive(), "the reader blocked writing the pong"
            assert outcome.get("result") == "after"
            drain, drained = in_thread(lambda: read_until_pong(peer, b"probe"))
            transport.send_text("flush")  # blocks until the peer has read enough
            drain.join(TIMEOUT)
            assert not drain.is_alive()
            assert "result" in drained, drained.get("error")
            assert drained["result"].lstrip(b"\0").startswith(b"\x8a\x85")  # the pong came first

    def test_frame_taken_in_part_is_finished_before_anything_else(self) -> None:
        """A control frame the kernel takes only in part is written whole by _send_bounded."""

        class Trickle:
            """A socket whose send() takes one byte at a time, as a nearly full kernel might."""

            def __init__(self, sock: socket.socket) -> None:
                self._sock = sock

            def fileno(self) -> int:
                return self._sock.fileno()

            def send(self, data: bytes, flags: int = 0) -> int:
                return self._sock.send(data[:1], flags)

        ours, theirs = socket.socketpair()
        with ours, theirs:
            transport = Transport(Trickle(ours), max_frame_size=1 << 20, where="pair")  # type: ignore[arg-type]
            assert transport._send_bounded(b"\x8a\x80pong", 0.0)
            theirs.settimeout(TIMEOUT)
            assert read_until(theirs, b"pong") == b"\x8a\x80pong"

    def test_bad_text_is_refused_before_writing(self, server: EchoServer) -> None:
        """Non-str raises TypeError and a lone surrogate ValueError; the connection still works."""
        with opened(Connector(server.url())) as transport:
            with pytest.raises(TypeError):
                transport.send_text(b"bytes")  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                transport.send_texts(["fine", "\ud800"])
            transport.send_text("still fine")
            assert transport.recv() == "still fine"


class TestTLS:
    def test_trusted_ca_connects(self, tls_server: EchoServer, client_tls: ssl.SSLContext) -> None:
        """A context trusting the test CA connects to wss://localhost."""
        connector = Connector(tls_server.url("wss", "localhost"), ssl_context=client_tls)
        with opened(connector) as transport:
            transport.send_text("secure")
            assert transport.recv() == "secure"

    def test_default_context_rejects_an_unknown_ca_quickly(self, tls_server: EchoServer) -> None:
        """The default context fails with TLSError, fast, for a certificate from an unknown CA."""
        started = time.monotonic()
        with pytest.raises(TLSError) as caught:
            Connector(tls_server.url("wss", "localhost")).open(TIMEOUT)
        assert time.monotonic() - started < 2.0
        assert any(isinstance(e, ssl.SSLCertVerificationError) for e in cause_chain(caught.value))

    def test_wrong_host_name_is_a_tls_error(
        self, other_name_tls_server: EchoServer, client_tls: ssl.SSLContext
    ) -> None:
        """A trusted certificate for another name fails with TLSError, the ssl error chained."""
        connector = Connector(other_name_tls_server.url("wss", "localhost"), ssl_context=client_tls)
        with pytest.raises(TLSError) as caught:
            connector.open(TIMEOUT)
        assert any(isinstance(e, ssl.SSLCertVerificationError) for e in cause_chain(caught.value))


class TestProxy:
    def test_connection_goes_through_the_proxy(self, server: EchoServer) -> None:
        """A ws:// connection with proxy= is tunnelled through it."""
        with ConnectProxy() as proxy, opened(Connector(server.url(), proxy=proxy.url)) as transport:
            transport.send_text("via proxy")
            assert transport.recv() == "via proxy"
            assert proxy.tunnels == 1

    def test_tls_goes_through_the_proxy(
        self, tls_server: EchoServer, client_tls: ssl.SSLContext
    ) -> None:
        """A wss:// connection runs TLS inside the tunnel, verifying the target's name."""
        with ConnectProxy() as proxy:
            connector = Connector(
                tls_server.url("wss", "localhost"), ssl_context=client_tls, proxy=proxy.url
            )
            with opened(connector) as transport:
                transport.send_text("tunnelled tls")
                assert transport.recv() == "tunnelled tls"
            assert proxy.tunnels == 1

    def test_proxy_credentials_are_sent(self, server: EchoServer) -> None:
        """user:pass in the proxy URL become Basic Proxy-Authorization."""
        with ConnectProxy(credentials=("me", "p@ss")) as proxy:
            url = f"http://me:p%40ss@127.0.0.1:{proxy.port}"
            with opened(Connector(server.url(), proxy=url)) as transport:
                transport.send_text("authorised")
                assert transport.recv() == "authorised"
            assert proxy.tunnels == 1

    def test_proxy_refusal_is_a_connect_error(self, server: EchoServer) -> None:
        """A 407 from the proxy raises ConnectError mentioning the status."""
        with ConnectProxy(credentials=("me", "pw")) as proxy:
            with pytest.raises(ConnectError, match="407"):
                Connector(server.url(), proxy=proxy.url).open(TIMEOUT)
            assert proxy.tunnels == 0

    def test_cancel_interrupts_a_proxy_that_never_answers(
        self, server: EchoServer, silent_listener: socket.socket
    ) -> None:
        """cancel() ends an open() waiting for the proxy's CONNECT answer."""
        proxy_url = f"http://127.0.0.1:{silent_listener.getsockname()[1]}"
        connector = Connector(server.url(), proxy=proxy_url)
        thread, outcome = in_thread(lambda: connector.open(TIMEOUT * 2))
        conn, _ = silent_listener.accept()
        with conn:
            assert read_until(conn, b"\r\n\r\n").startswith(b"CONNECT 127.0.0.1:")
            connector.cancel()
            thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), ConnectError)
