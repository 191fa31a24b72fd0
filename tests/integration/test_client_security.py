"""TLS, upgrade headers, proxy, flow control, incoming limits and log hygiene, via the Client."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
import trustme

import wsync
from tests.helpers import TIMEOUT
from tests.integration._proxy import ConnectProxy
from tests.integration._recorder import Recorder
from wsync import Backoff, Client, Status
from wsync.testing import ProtocolServer

pytestmark = pytest.mark.timeout(60)

FAST = Backoff(initial=0.01, max_delay=0.05, max_attempts=None)
SECRET = "hunter2-SECRET"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[ProtocolServer]:
    with ProtocolServer(ssl_context=server_context(ca, "localhost", "127.0.0.1")) as srv:
        yield srv


class TestTLS:
    def test_trusted_ca_confirms(self, tls_server: ProtocolServer, ca: trustme.CA) -> None:
        """With an ssl_context trusting the CA, wss:// connects, confirms and echoes."""
        assert tls_server.url.startswith("wss://")
        with Client(tls_server.url, ssl_context=client_context(ca), backoff=FAST) as c:
            assert c.send_and_wait("over tls", timeout=TIMEOUT).content == "over tls"

    def test_default_context_rejects_an_unknown_ca(self, tls_server: ProtocolServer) -> None:
        """The default context verifies: an untrusted certificate is a prompt ConnectError."""
        c = Client(tls_server.url, backoff=Backoff(initial=0.01, max_attempts=5))
        try:
            started = time.monotonic()
            with pytest.raises(wsync.ConnectError) as info:
                c.connect(timeout=TIMEOUT)
            assert not isinstance(info.value, wsync.ConnectTimeout)
            assert time.monotonic() - started < 3
            assert _in_chain(info.value, ssl.SSLCertVerificationError)
        finally:
            c.close()

    def test_certificate_failure_is_not_retried(self, tls_server: ProtocolServer) -> None:
        """A certificate failure gives up at once instead of retrying like a network blip."""
        rec = Recorder()
        c = Client(tls_server.url, backoff=Backoff(initial=0.01, max_attempts=5), **rec.callbacks())
        try:
            with pytest.raises(wsync.ConnectError):
                c.connect(timeout=TIMEOUT)
            assert rec.count(Status.CONNECTING) == 1
        finally:
            c.close()

    def test_wrong_host_name_fails(self, ca: trustme.CA) -> None:
        """A certificate for another host name fails verification with a ConnectError."""
        with ProtocolServer(ssl_context=server_context(ca, "other.example")) as srv:
            c = Client(srv.url, ssl_context=client_context(ca), backoff=Backoff(max_attempts=0))
            try:
                with pytest.raises(wsync.ConnectError) as info:
                    c.connect(timeout=TIMEOUT)
                assert _in_chain(info.value, ssl.SSLCertVerificationError)
            finally:
                c.close()


def _in_chain(error: BaseException | None, kind: type[BaseException]) -> bool:
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


class TestUpgradeRequest:
    def test_headers_reach_the_server(self, server: ProtocolServer) -> None:
        """Extra headers are sent with the upgrade request."""
        headers = {"Authorization": f"Bearer {SECRET}", "X-Tenant": "blue"}
        with Client(server.url, headers=headers, backoff=FAST):
            pass
        request = server.upgrade_requests[-1]
        assert request.header("Authorization") == f"Bearer {SECRET}"
        assert request.header("X-Tenant") == "blue"

    def test_proxy_tunnels_the_connection(self, server: ProtocolServer) -> None:
        """With proxy=, the connection goes through an HTTP CONNECT proxy."""
        with ConnectProxy() as proxy:
            with Client(server.url, proxy=proxy.url, backoff=FAST) as c:
                assert c.send_and_wait("via proxy", timeout=TIMEOUT).content == "via proxy"
            assert proxy.tunnels >= 1


class TestFlowControl:
    def test_queue_full_refuses_the_message(self, server: ProtocolServer) -> None:
        """With max_queued=N, send() raises QueueFull and the message is not queued."""
        c = Client(server.url, max_queued=3, backoff=FAST)
        try:
            futures = [c.send(str(i)) for i in range(3)]
            with pytest.raises(wsync.QueueFull):
                c.send("one too many")
            assert c.stats().queued == 3
            c.connect(timeout=TIMEOUT)
            assert [f.result(TIMEOUT).content for f in futures] == ["0", "1", "2"]
            assert "one too many" not in [r.content for r in server.received]
            c.send_and_wait("room again", timeout=TIMEOUT)
        finally:
            c.close()

    def test_rate_limit_spaces_messages_in_order(self, server: ProtocolServer) -> None:
        """rate_limit=R writes at most about R per second, in order, dropping nothing."""
        rate = 50.0
        with Client(server.url, rate_limit=rate, backoff=FAST) as c:
            started = time.monotonic()
            futures = [c.send(str(i)) for i in range(100)]
            assert c.flush(timeout=TIMEOUT)
            elapsed = time.monotonic() - started
        # A burst of `rate` goes at once, the other 50 take about a second.
        assert elapsed >= (100 - rate) / rate * 0.8
        assert [f.result(0).content for f in futures] == [str(i) for i in range(100)]
        assert [r.content for r in server.received] == [str(i) for i in range(100)]

    def test_rate_limit_never_delays_heartbeats(self, server: ProtocolServer) -> None:
        """A long rate-limited queue does not hold back pings: the link stays CONFIRMED."""
        c = Client(server.url, rate_limit=5.0, heartbeat_interval=0.05, backoff=FAST)
        try:
            c.connect(timeout=TIMEOUT)
            for i in range(50):
                c.send(str(i))
            before = server.pings_received
            assert server.wait_until(lambda: server.pings_received >= before + 10, TIMEOUT)
            assert c.stats().reconnects == 0
        finally:
            c.close()


class TestIncomingLimits:
    def test_oversize_frame_is_dropped_and_counted(self, server: ProtocolServer) -> None:
        """A frame above max_frame_size is malformed; the client keeps working."""
        with Client(server.url, max_frame_size=1000, backoff=FAST) as c:
            server.send_raw("x" * 5000)
            assert c.send_and_wait("small", timeout=TIMEOUT).content == "small"
            assert c.stats().malformed == 1
            assert c.state.status is Status.CONFIRMED

    def test_flood_of_malformed_frames_logs_a_bounded_number_of_lines(
        self, server: ProtocolServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """200 malformed frames produce a handful of warnings, not 200."""
        caplog.set_level(logging.WARNING, logger="wsync")
        with Client(server.url, backoff=FAST) as c:
            for _ in range(200):
                server.send_raw("garbage")
            c.send_and_wait("sync", timeout=TIMEOUT)
            assert c.stats().malformed == 200
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert 1 <= len(warnings) <= 10

    def test_plain_ws_to_a_remote_host_warns(self, caplog: pytest.LogCaptureFixture) -> None:
        """ws:// to a host that is not loopback logs a one-line warning at construction."""
        caplog.set_level(logging.WARNING, logger="wsync")
        Client("ws://example.invalid:9/").close()
        assert any("not encrypted" in r.getMessage() for r in caplog.records)
        caplog.clear()
        Client("ws://127.0.0.1:9/").close()
        assert not any("not encrypted" in r.getMessage() for r in caplog.records)


class TestLogHygiene:
    def test_no_secret_in_logs_errors_or_repr(
        self, server: ProtocolServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """URL userinfo and query, header values and content never reach logs at any level."""
        caplog.set_level(logging.DEBUG)
        url = server.url.replace("ws://", f"ws://user:{SECRET}@") + f"/?token={SECRET}"
        with Client(
            url, headers={"Authorization": SECRET}, backoff=FAST, heartbeat_interval=0.05
        ) as c:
            assert SECRET not in repr(c)
            c.send_and_wait(f"content {SECRET}", timeout=TIMEOUT)
            server.drop_connections()
            c.send_and_wait("again", timeout=TIMEOUT)
        assert SECRET not in caplog.text

    def test_connect_error_message_hides_credentials(self) -> None:
        """A failed connect's error names the URL without userinfo or query."""
        c = Client(f"ws://u:{SECRET}@127.0.0.1:1/?token={SECRET}", backoff=Backoff(max_attempts=0))
        try:
            with pytest.raises(wsync.ConnectError) as info:
                c.connect(timeout=TIMEOUT)
            text = str(info.value) + str(info.value.__cause__) + str(c.state)
            assert SECRET not in text
        finally:
            c.close()

    def test_message_content_not_logged_at_info(
        self, server: ProtocolServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Nothing at INFO or above carries message content, even under faults."""
        caplog.set_level(logging.INFO)
        with Client(server.url, backoff=FAST) as c:
            c.send_and_wait(SECRET, timeout=TIMEOUT)
            server.send_error("boom")
            c.send_and_wait(SECRET + "2", timeout=TIMEOUT)
        assert SECRET not in caplog.text

    def test_threads_are_named(self, server: ProtocolServer) -> None:
        """Every thread the client starts is named wsync-..."""
        before = set(threading.enumerate())
        with Client(server.url, backoff=FAST):
            new = set(threading.enumerate()) - before
        client_threads = [t.name for t in new if not t.name.startswith("wsync-server")]
        assert client_threads and all(n.startswith("wsync-") for n in client_threads)
