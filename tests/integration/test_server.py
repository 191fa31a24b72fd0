"""wsync.testing.ProtocolServer against raw websocket-client connections: protocol and faults."""

from __future__ import annotations

import gc
import json
import logging
import random
import ssl
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
import websocket
from websocket import (
    ABNF,
    WebSocketBadStatusException,
    WebSocketConnectionClosedException,
    WebSocketTimeoutException,
)

from tests.helpers import TIMEOUT
from wsync.protocol import decode
from wsync.testing import ProtocolServer, Received

pytestmark = pytest.mark.timeout(30)

TS = "2026-11-27T13:40:30.123Z"
QUIET = 0.2
"""Seconds a client listens to show that nothing comes (a bound on absence, not a sync)."""
DROPPED = (WebSocketConnectionClosedException, OSError)
"""What websocket-client raises when the TCP connection is gone without a close frame."""

Connect = Callable[..., websocket.WebSocket]


@pytest.fixture
def clients(server: ProtocolServer) -> Iterator[Connect]:
    """Open websocket-client connections (to ``server.url`` by default); reset them after."""
    opened: list[websocket.WebSocket] = []

    def connect(url: str | None = None, **kwargs: Any) -> websocket.WebSocket:
        ws = websocket.create_connection(url or server.url, timeout=TIMEOUT, **kwargs)
        opened.append(ws)
        return ws

    yield connect
    for ws in opened:
        ws.shutdown()


def send(ws: websocket.WebSocket, **fields: Any) -> None:
    ws.send(json.dumps(fields))


def recv_json(ws: websocket.WebSocket) -> dict[str, Any]:
    text = ws.recv()
    assert isinstance(text, str), f"expected a text frame, got {text!r}"
    result: dict[str, Any] = json.loads(text)
    return result


def handshake(ws: websocket.WebSocket, client_id: str = "client-1") -> dict[str, Any]:
    send(ws, type="connect", clientId=client_id, timestamp=TS, version="1.0")
    return recv_json(ws)


def message(
    ws: websocket.WebSocket, content: str, message_id: str, client_id: str = "client-1"
) -> None:
    send(
        ws, type="message", clientId=client_id, content=content, timestamp=TS, messageId=message_id
    )


def ping(ws: websocket.WebSocket) -> None:
    send(ws, type="ping", timestamp=TS)


def silent(ws: websocket.WebSocket) -> bool:
    """True if nothing arrives on ``ws`` within ``QUIET`` seconds."""
    ws.settimeout(QUIET)
    try:
        ws.recv()
    except WebSocketTimeoutException:
        return True
    finally:
        ws.settimeout(TIMEOUT)
    return False


def close_frame(ws: websocket.WebSocket) -> tuple[int, str]:
    """Read frames until a close frame and return its code and reason."""
    while True:
        opcode, frame = ws.recv_data_frame(True)
        if opcode == ABNF.OPCODE_CLOSE:
            code: int = struct.unpack("!H", frame.data[:2])[0]
            return code, frame.data[2:].decode()


def close_code(ws: websocket.WebSocket) -> int:
    """Read frames until a close frame and return its code."""
    return close_frame(ws)[0]


def server_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("wsync-server")]


class TestHandshake:
    def test_confirm_echoes_client_id_with_a_new_conversation(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """A connect is confirmed with the same clientId and a new uuid4 conversationId."""
        confirm = handshake(clients(), "alice")
        assert confirm["type"] == "connect_confirm"
        assert confirm["clientId"] == "alice"
        assert confirm["status"] == "confirmed"
        assert uuid.UUID(confirm["conversationId"]).version == 4
        assert confirm["timestamp"].endswith("Z")
        assert decode(json.dumps(confirm))  # a valid frame for the client's decoder

    def test_each_connection_gets_its_own_conversation(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """Two connections of one client get different conversationIds."""
        first = handshake(clients())["conversationId"]
        second = handshake(clients())["conversationId"]
        assert first != second

    def test_counters_follow_connections_and_handshakes(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """Connections and confirmed handshakes are counted, and the waits see them."""
        handshake(clients())
        clients()
        assert server.wait_for_connections(2, TIMEOUT)
        assert server.wait_for_handshakes(1, TIMEOUT)
        assert server.live_connections == 2
        assert server.handshakes_total == 1

    def test_message_before_connect_gets_an_error(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """A message before the confirm is answered with an error naming it, and not recorded."""
        ws = clients()
        message(ws, "too early", "m-early")
        error = recv_json(ws)
        assert error["type"] == "error"
        assert error["messageId"] == "m-early"
        assert server.received == []

    def test_unsupported_version_is_refused(self, server: ProtocolServer, clients: Connect) -> None:
        """A connect with protocol version 2.0 gets an error and a close."""
        ws = clients()
        send(ws, type="connect", clientId="c", timestamp=TS, version="2.0")
        assert recv_json(ws)["type"] == "error"
        assert close_code(ws) == 1008


class TestMessages:
    def test_default_handler_echoes(self, server: ProtocolServer, clients: Connect) -> None:
        """A message is answered with a response of the same messageId and content."""
        ws = clients()
        handshake(ws)
        message(ws, "hello", "m-1")
        response = recv_json(ws)
        assert (response["type"], response["messageId"], response["content"]) == (
            "response",
            "m-1",
            "hello",
        )

    def test_custom_handler_makes_the_content(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """The handler gets content and clientId and its return value is the response content."""
        server.handler = lambda content, client_id: f"{client_id}:{content.upper()}"
        ws = clients()
        handshake(ws, "bob")
        message(ws, "hi", "m-1", client_id="bob")
        assert recv_json(ws)["content"] == "bob:HI"

    def test_handler_returning_none_sends_nothing(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """A handler returning None sends no response, and the next frame is answered normally."""
        server.handler = lambda content, client_id: None
        ws = clients()
        handshake(ws)
        message(ws, "ignored", "m-1")
        ping(ws)
        assert recv_json(ws)["type"] == "pong"
        assert server.wait_for_received(1, TIMEOUT)

    def test_handler_that_raises_gives_an_error(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """A handler exception becomes an error frame for that message."""

        def broken(content: str, client_id: str) -> str:
            raise RuntimeError("boom")

        server.handler = broken
        ws = clients()
        handshake(ws)
        message(ws, "x", "m-1")
        error = recv_json(ws)
        assert (error["type"], error["messageId"], error["error"]) == (
            "error",
            "m-1",
            "handler failed",
        )

    def test_received_records_every_field(self, server: ProtocolServer, clients: Connect) -> None:
        """received holds clientId, messageId, content, conversationId, timestamp and connection."""
        ws = clients()
        conversation = handshake(ws, "carol")["conversationId"]
        message(ws, "one", "m-1", client_id="carol")
        message(ws, "one", "m-1", client_id="carol")  # written twice: recorded twice
        assert server.wait_for_received(2, TIMEOUT)
        first = server.received[0]
        assert isinstance(first, Received)
        assert (first.client_id, first.message_id, first.content) == ("carol", "m-1", "one")
        assert first.conversation_id == conversation
        assert first.timestamp.isoformat() == "2026-11-27T13:40:30.123000+00:00"
        assert first.connection == 1
        assert server.received == [first, first]

    def test_slow_handler_blocks_neither_pings_nor_other_connections(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """A blocked handler stops neither its connection's pongs nor other connections."""
        release = threading.Event()

        def slow_handler(content: str, client_id: str) -> str:
            if content == "slow":
                release.wait(TIMEOUT)
            return content

        server.handler = slow_handler
        slow, other = clients(), clients()
        handshake(slow)
        handshake(other)
        message(slow, "slow", "m-slow")
        ping(slow)
        assert recv_json(slow)["type"] == "pong"
        message(other, "quick", "m-quick")
        assert recv_json(other)["messageId"] == "m-quick"
        release.set()
        assert recv_json(slow)["messageId"] == "m-slow"

    def test_response_delay_lets_a_pong_overtake(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """With a response delay, a ping sent after a message is answered first."""
        server.response_delay = 0.3
        ws = clients()
        handshake(ws)
        message(ws, "later", "m-1")
        ping(ws)
        assert recv_json(ws)["type"] == "pong"
        assert recv_json(ws)["messageId"] == "m-1"


class TestMalformed:
    def test_invalid_json_gets_an_error_and_the_connection_stays(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """Text that is not JSON gets an error frame and is counted; the connection stays usable."""
        ws = clients()
        handshake(ws)
        ws.send("{not json")
        error = recv_json(ws)
        assert error["type"] == "error"
        assert "messageId" not in error
        assert server.malformed_total == 1
        message(ws, "still here", "m-1")
        assert recv_json(ws)["content"] == "still here"

    def test_binary_frame_is_malformed(self, server: ProtocolServer, clients: Connect) -> None:
        """A binary frame gets an error frame and is counted as malformed."""
        ws = clients()
        handshake(ws)
        ws.send_binary(b'{"type":"ping"}')
        assert recv_json(ws)["type"] == "error"
        assert server.malformed_total == 1

    def test_missing_field_and_server_only_type_are_malformed(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """A message without messageId and a client-sent response frame both get errors."""
        ws = clients()
        handshake(ws)
        send(ws, type="message", clientId="client-1", content="x", timestamp=TS)
        assert "messageId" in recv_json(ws)["error"]
        send(ws, type="response", messageId="m", content="x", timestamp=TS)
        assert recv_json(ws)["type"] == "error"
        assert server.malformed_total == 2
        assert server.received == []


class TestDropConnections:
    def test_abrupt_drop_is_a_network_loss(self, server: ProtocolServer, clients: Connect) -> None:
        """drop_connections() ends the TCP connection with no close frame; the server serves on."""
        ws = clients()
        handshake(ws)
        assert server.drop_connections() == 1
        with pytest.raises(DROPPED):
            ws.recv()
        assert server.wait_until(lambda: server.live_connections == 0, TIMEOUT)
        assert handshake(clients())["status"] == "confirmed"

    def test_clean_drop_sends_a_close_frame(self, server: ProtocolServer, clients: Connect) -> None:
        """drop_connections(clean=True) sends a WebSocket close with the given code."""
        ws = clients()
        handshake(ws)
        assert server.drop_connections(clean=True, code=1012) == 1
        assert close_code(ws) == 1012
        ws.shutdown()  # websocket-client answers the close but leaves closing TCP to us
        assert server.wait_until(lambda: server.live_connections == 0, TIMEOUT)

    def test_unsendable_clean_close_code_is_refused(self, server: ProtocolServer) -> None:
        """A clean drop with a reserved close code raises ValueError at the call."""
        with pytest.raises(ValueError, match="code"):
            server.drop_connections(clean=True, code=1006)


class TestPongs:
    def test_paused_pongs_leave_pings_unanswered_but_messages_flow(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """While pongs are paused pings are counted but unanswered; resuming answers new pings."""
        ws = clients()
        handshake(ws)
        server.pause_pongs()
        ping(ws)
        assert server.wait_until(lambda: server.pings_received == 1, TIMEOUT)
        message(ws, "still answered", "m-1")
        assert recv_json(ws)["type"] == "response"
        assert silent(ws)
        server.resume_pongs()
        ping(ws)
        assert recv_json(ws)["type"] == "pong"

    def test_server_ping_is_counted_when_answered(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """send_ping() reaches the client, and the client's pong is counted."""
        ws = clients()
        handshake(ws)
        assert server.send_ping() == 1
        assert recv_json(ws)["type"] == "ping"
        send(ws, type="pong", timestamp=TS)
        assert server.wait_until(lambda: server.pongs_received == 1, TIMEOUT)


class TestStall:
    def test_stalled_connection_answers_nothing_until_unstalled(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """A stalled server answers nothing; unstall() answers what waited."""
        ws = clients()
        handshake(ws)
        server.stall()
        ping(ws)
        message(ws, "waiting", "m-1")
        assert silent(ws)
        assert server.received == []
        server.unstall()
        assert recv_json(ws)["type"] == "pong"
        assert recv_json(ws)["messageId"] == "m-1"

    def test_new_connection_upgrades_but_is_not_confirmed(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """During a stall a new socket completes the upgrade but its connect waits for unstall."""
        server.stall()
        ws = clients()
        assert server.wait_for_connections(1, TIMEOUT)
        send(ws, type="connect", clientId="late", timestamp=TS, version="1.0")
        assert silent(ws)
        server.unstall()
        assert recv_json(ws)["type"] == "connect_confirm"


class TestHandshakeFaults:
    def test_rejected_handshakes_then_success(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """reject_handshakes(2) refuses two connects with an error and a close, then confirms."""
        server.reject_handshakes(2, error="go away")
        for _ in range(2):
            ws = clients()
            send(ws, type="connect", clientId="c", timestamp=TS, version="1.0")
            error = recv_json(ws)
            assert (error["type"], error["error"]) == ("error", "go away")
            assert close_code(ws) == 1008
        assert handshake(clients(), "c")["status"] == "confirmed"
        assert server.handshakes_total == 1

    def test_mismatched_client_id(self, server: ProtocolServer, clients: Connect) -> None:
        """mismatch_handshakes() confirms with another clientId, once."""
        server.mismatch_handshakes(1)
        assert handshake(clients(), "me")["clientId"] == "someone-else"
        assert handshake(clients(), "me")["clientId"] == "me"
        assert server.handshakes_total == 1

    def test_mismatched_status(self, server: ProtocolServer, clients: Connect) -> None:
        """mismatch_handshakes(status=...) keeps the clientId and sends that status."""
        server.mismatch_handshakes(1, status="pending")
        confirm = handshake(clients(), "me")
        assert (confirm["clientId"], confirm["status"]) == ("me", "pending")

    def test_refused_upgrade_and_recorded_headers(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """refuse_upgrades() answers HTTP 503; upgrade_requests records each request's headers."""
        server.refuse_upgrades(1, status=503)
        with pytest.raises(WebSocketBadStatusException) as refused:
            clients()
        assert refused.value.status_code == 503
        clients(header=["X-Test-Token: t0ken"])
        assert server.wait_for_connections(1, TIMEOUT)
        requests = server.upgrade_requests
        assert len(requests) == 2
        assert requests[1].header("x-test-token") == "t0ken"
        assert server.connections_total == 1


class TestRestart:
    def test_down_then_back_on_the_same_port(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """restart(wait=False) drops and refuses connections, then listens on the same port."""
        ws = clients()
        handshake(ws)
        port = server.port
        server.restart(down_for=0.5, wait=False)
        assert not server.listening
        with pytest.raises(ConnectionRefusedError):
            websocket.create_connection(server.url, timeout=TIMEOUT)
        with pytest.raises(DROPPED):
            ws.recv()
        assert server.wait_until(lambda: server.listening, TIMEOUT)
        assert server.port == port
        assert handshake(clients())["status"] == "confirmed"
        assert server.handshakes_total == 2

    def test_stop_during_downtime_stays_down(self) -> None:
        """stop() during restart(wait=False) cuts the downtime short and leaves no thread."""
        server = ProtocolServer().start()
        server.restart(down_for=60.0, wait=False)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < TIMEOUT
        assert not server.listening
        assert server_threads() == []

    def test_blocking_restart(self, server: ProtocolServer, clients: Connect) -> None:
        """restart() with wait=True returns listening again, and counters carry on."""
        handshake(clients())
        server.restart()
        assert server.listening
        assert handshake(clients())["status"] == "confirmed"
        assert server.connections_total == 2


class TestSendRaw:
    def test_text_and_bytes_go_out_as_is(self, server: ProtocolServer, clients: Connect) -> None:
        """send_raw() writes str as a text frame and bytes as a binary frame, to each connection."""
        first, second = clients(), clients()
        assert server.wait_for_connections(2, TIMEOUT)
        assert server.send_raw("not even json") == 2
        assert server.send_raw(b"\x00\x01") == 2
        for ws in (first, second):
            assert ws.recv_data() == (ABNF.OPCODE_TEXT, b"not even json")
            assert ws.recv_data() == (ABNF.OPCODE_BINARY, b"\x00\x01")

    def test_send_error(self, server: ProtocolServer, clients: Connect) -> None:
        """send_error() sends a valid error frame with the given messageId."""
        ws = clients()
        handshake(ws)
        assert server.send_error("server trouble", message_id="m-9") == 1
        error = recv_json(ws)
        assert (error["type"], error["error"], error["messageId"]) == (
            "error",
            "server trouble",
            "m-9",
        )


class TestResponseOrdering:
    def _held(self, server: ProtocolServer, ws: websocket.WebSocket, n: int) -> list[str]:
        server.hold_responses()
        handshake(ws)
        ids = [f"m-{i}" for i in range(n)]
        for message_id in ids:
            message(ws, message_id, message_id)
        assert server.wait_until(lambda: server.held_responses == n, TIMEOUT)
        return ids

    def test_release_in_reverse(self, server: ProtocolServer, clients: Connect) -> None:
        """Held responses released in reverse arrive last-first."""
        ws = clients()
        ids = self._held(server, ws, 3)
        assert silent(ws)
        assert server.release_responses("reverse") == 3
        assert [recv_json(ws)["messageId"] for _ in ids] == ids[::-1]

    def test_release_shuffled_with_a_seed(self, server: ProtocolServer, clients: Connect) -> None:
        """A seeded shuffle releases in the order random.Random(seed) gives."""
        ws = clients()
        ids = self._held(server, ws, 5)
        expected = list(ids)
        random.Random(7).shuffle(expected)
        assert server.release_responses("shuffle", seed=7) == 5
        assert [recv_json(ws)["messageId"] for _ in ids] == expected

    def test_unknown_order_is_refused(self, server: ProtocolServer) -> None:
        """release_responses() rejects an unknown order."""
        with pytest.raises(ValueError, match="order"):
            server.release_responses("sideways")


class TestTLS:
    def test_wss_with_a_trusted_certificate(self) -> None:
        """With an ssl_context the server speaks wss://localhost, verified against the test CA."""
        ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        with ProtocolServer(ssl_context=server_context) as server:
            assert server.url == f"wss://localhost:{server.port}"
            ws = websocket.create_connection(
                server.url, timeout=TIMEOUT, sslopt={"context": client_context}
            )
            try:
                handshake(ws)
                message(ws, "secret", "m-1")
                assert recv_json(ws)["content"] == "secret"
            finally:
                ws.close()
            with pytest.raises(ssl.SSLCertVerificationError):
                websocket.create_connection(server.url, timeout=TIMEOUT)


class TestLifecycle:
    def test_stop_joins_every_thread(self) -> None:
        """stop() with busy, stalled and half-open connections leaves no wsync-server thread."""
        before = set(threading.enumerate())
        server = ProtocolServer(close_timeout=0.2).start()
        sockets = [websocket.create_connection(server.url, timeout=TIMEOUT) for _ in range(3)]
        try:
            handshake(sockets[0])
            server.response_delay = 30.0
            message(sockets[0], "pending", "m-1")
            assert server.wait_for_received(1, TIMEOUT)
            server.stall()
            assert server.wait_for_connections(3, TIMEOUT)
            started_by_server = set(threading.enumerate()) - before
            assert len(started_by_server) == 1 + 3 * 3  # accept, then conn/recv/worker each
            assert all(t.name.startswith("wsync-server-") for t in started_by_server)
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < TIMEOUT
            assert server_threads() == []
            assert not server.listening
            with pytest.raises(ConnectionRefusedError):
                websocket.create_connection(server.url, timeout=TIMEOUT)
            server.stop()  # idempotent
        finally:
            for ws in sockets:
                ws.shutdown()

    def test_context_manager_and_restartable(self) -> None:
        """The context manager starts and stops; a stopped server starts again on its port."""
        with ProtocolServer() as server:
            port = server.port
            assert port != 0
            assert server.url == f"ws://127.0.0.1:{port}"
            with pytest.raises(RuntimeError):
                server.start()
        assert server_threads() == []
        with server:
            assert server.port == port
            assert server.listening

    @pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "example.com", ""])
    def test_non_loopback_host_is_refused(self, host: str) -> None:
        """A host beyond loopback raises ValueError unless allow_remote=True."""
        with pytest.raises(ValueError, match="allow_remote"):
            ProtocolServer(host=host)
        ProtocolServer(host=host, allow_remote=True)  # constructing does not bind

    @pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
    def test_loopback_hosts_are_accepted(self, host: str) -> None:
        """Loopback addresses and localhost need no allow_remote."""
        ProtocolServer(host=host)

    def test_waits_time_out_with_false(self, server: ProtocolServer) -> None:
        """A wait whose condition never comes true returns False at its timeout."""
        assert server.wait_for_received(1, timeout=0.05) is False
        assert server.wait_until(lambda: server.pings_received > 0, timeout=0.05) is False


class TestDropOn:
    def test_poison_message_resets_after_earlier_responses(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """A matching message is recorded, not answered, and reset after earlier responses."""
        release = threading.Event()

        def slow(content: str, client_id: str) -> str:
            release.wait(TIMEOUT)
            return content

        server.handler = slow
        server.drop_on("poison")
        ws = clients()
        handshake(ws)
        message(ws, "fine", "m-1")  # its handler blocks, so the reset cannot come yet
        message(ws, "poison", "m-2")
        message(ws, "after", "m-3")
        assert server.wait_for_received(2, TIMEOUT)
        release.set()
        assert recv_json(ws)["messageId"] == "m-1"
        with pytest.raises(DROPPED):
            ws.recv()
        assert server.wait_until(lambda: server.dropped_on_message_total == 1, TIMEOUT)
        assert server.wait_until(lambda: server.live_connections == 0, TIMEOUT)
        assert [r.message_id for r in server.received] == ["m-1", "m-2"]

    def test_callable_filter_stays_on_until_none(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """A callable filter drops every connection it matches on, until drop_on(None)."""
        server.drop_on(lambda content: content.startswith("x"))
        for attempt in range(2):
            ws = clients()
            handshake(ws)
            message(ws, f"x-{attempt}", f"m-{attempt}")
            with pytest.raises(DROPPED):
                ws.recv()
        server.drop_on(None)
        ws = clients()
        handshake(ws)
        message(ws, "x-again", "m-ok")
        assert recv_json(ws)["content"] == "x-again"
        assert server.dropped_on_message_total == 2

    def test_filter_that_raises_does_not_match(
        self, server: ProtocolServer, clients: Connect, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A filter that raises is logged as a warning and the message is answered."""

        def broken(content: str) -> bool:
            raise RuntimeError("filter bug")

        server.drop_on(broken)
        ws = clients()
        handshake(ws)
        with caplog.at_level(logging.WARNING, logger="wsync.testing"):
            message(ws, "secret content", "m-1")
            assert recv_json(ws)["messageId"] == "m-1"
        assert "drop_on filter failed for message m-1" in caplog.text
        assert "secret content" not in caplog.text

    def test_bad_match_is_refused(self, server: ProtocolServer) -> None:
        """drop_on() takes a str, a callable or None."""
        with pytest.raises(TypeError, match="match"):
            server.drop_on(42)  # type: ignore[arg-type]


class TestMaxMessageSize:
    def test_message_over_the_limit_closes_with_1009(self, clients: Connect) -> None:
        """A message over max_message_size closes its connection with 1009 and is not recorded."""
        with ProtocolServer(max_message_size=200) as server:
            ws = clients(server.url)
            handshake(ws)
            message(ws, "small", "m-1")
            assert recv_json(ws)["content"] == "small"
            message(ws, "x" * 200, "m-big")
            assert close_code(ws) == 1009
            ws.shutdown()
            assert server.wait_until(lambda: server.oversized_total == 1, TIMEOUT)
            assert [r.message_id for r in server.received] == ["m-1"]

    def test_default_is_one_mebibyte(self) -> None:
        """The default limit is websockets' 1 MiB; None lifts it."""
        assert ProtocolServer().max_message_size == 2**20
        assert ProtocolServer(max_message_size=None).max_message_size is None

    @pytest.mark.parametrize(("size", "error"), [(0, ValueError), ("1", TypeError)])
    def test_bad_size_is_refused(self, size: Any, error: type[Exception]) -> None:
        """max_message_size must be an int >= 1 or None."""
        with pytest.raises(error, match="max_message_size"):
            ProtocolServer(max_message_size=size)


class TestCloseAfterConfirm:
    def test_confirmed_then_closed_with_code_and_reason(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """The next n connections are confirmed, then closed with the code and reason."""
        server.close_after_confirm(2, code=1008, reason="token revoked")
        for _ in range(2):
            ws = clients()
            assert handshake(ws)["status"] == "confirmed"
            assert close_frame(ws) == (1008, "token revoked")
        ws = clients()
        handshake(ws)
        ping(ws)
        assert recv_json(ws)["type"] == "pong"
        assert server.handshakes_total == 3

    @pytest.mark.parametrize(
        ("code", "reason", "error"),
        [
            (1006, "", ValueError),
            (999, "", ValueError),
            (1008, "x" * 124, ValueError),
            (1008.0, "", TypeError),
        ],
    )
    def test_unsendable_close_is_refused(
        self, server: ProtocolServer, code: Any, reason: str, error: type[Exception]
    ) -> None:
        """A reserved or out-of-range code, or a reason over 123 bytes, is refused at the call."""
        with pytest.raises(error):
            server.close_after_confirm(code=code, reason=reason)


class TestRequireToken:
    def test_upgrade_needs_the_current_token(
        self, server: ProtocolServer, clients: Connect
    ) -> None:
        """Without the bearer token the upgrade gets 401; rotating it refuses the old one."""
        server.require_token("t0ken-1")
        with pytest.raises(WebSocketBadStatusException) as missing:
            clients()
        assert missing.value.status_code == 401
        first = clients(header=["Authorization: Bearer t0ken-1"])
        server.require_token("t0ken-2")
        with pytest.raises(WebSocketBadStatusException) as stale:
            clients(header=["Authorization: Bearer t0ken-1"])
        assert stale.value.status_code == 401
        handshake(clients(header=["Authorization: Bearer t0ken-2"]))
        assert handshake(first)["status"] == "confirmed"  # open connections stay open
        server.require_token(None)
        handshake(clients())
        assert server.unauthorized_total == 2
        assert server.connections_total == 3

    @pytest.mark.parametrize(
        ("token", "error"), [("", ValueError), ("a b", ValueError), (5, TypeError)]
    )
    def test_bad_token_is_refused(
        self, server: ProtocolServer, token: Any, error: type[Exception]
    ) -> None:
        """A token must be a non-empty str without whitespace, or None."""
        with pytest.raises(error, match="token"):
            server.require_token(token)


class TestForgetsFinishedConnections:
    CYCLES = 1_000

    @pytest.mark.slow
    def test_thread_objects_held_follow_live_connections(self) -> None:
        """After 1,000 connect/close cycles the server holds a bounded number of thread objects."""
        seen: weakref.WeakSet[threading.Thread] = weakref.WeakSet()  # those not collected yet
        names: set[str] = set()
        with ProtocolServer() as server:
            for _ in range(self.CYCLES):
                ws = websocket.create_connection(server.url, timeout=TIMEOUT)
                handshake(ws)  # by the confirm, conn, recv and worker threads all run
                threads = [t for t in threading.enumerate() if t.name.startswith("wsync-server")]
                seen.update(threads)
                names.update(t.name for t in threads)
                ws.shutdown()
            assert server.wait_until(lambda: server.live_connections == 0, TIMEOUT)
            assert len(names) == 1 + 3 * self.CYCLES
            for thread in list(seen):
                if thread.name != "wsync-server-accept":
                    thread.join(TIMEOUT)
            gc.collect()
            assert len(seen) < 50
