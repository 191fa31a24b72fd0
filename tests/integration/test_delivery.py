"""Nothing lost silently: close flushes, exit flushes, sizes, rates, and what the logs say."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

import wsync
from tests.helpers import TIMEOUT
from wsync import Backoff, Client, ConnectTimeout, Status
from wsync.testing import ProtocolServer

pytestmark = pytest.mark.timeout(60)

FAST = Backoff(initial=0.01, max_delay=0.05, max_attempts=None)
CLOSE_SLACK = 1.5  # close() returns within about timeout + 1 s; a little more for a busy CI


def _refused_url() -> str:
    """A loopback URL with nothing listening."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}"


def _unanswered_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.levelno == logging.WARNING and "left unanswered" in r.getMessage()
    ]


class TestCloseFlushes:
    def test_with_block_answers_every_message(self, server: ProtocolServer) -> None:
        """2,000 sends inside a with block are all answered before it ends."""
        with Client(server.url, backoff=FAST) as client:
            futures = [client.send(f"m{n}") for n in range(2000)]
        assert all(f.done() and not f.cancelled() and f.exception() is None for f in futures)
        assert [f.result().content for f in futures] == [f"m{n}" for n in range(2000)]
        assert len({r.message_id for r in server.received}) == 2000

    def test_close_waits_for_answers(self, server: ProtocolServer) -> None:
        """close() waits for in-flight messages to be answered by a slow server."""
        server.response_delay = 0.2
        client = Client(server.url, backoff=FAST)
        client.connect(timeout=TIMEOUT)
        futures = [client.send(f"m{n}") for n in range(20)]
        client.close(timeout=TIMEOUT)
        assert [f.result(0).content for f in futures] == [f"m{n}" for n in range(20)]

    def test_close_flush_goes_on_through_a_reconnect(self, server: ProtocolServer) -> None:
        """Messages queued while the server is down are answered by close()'s flush."""
        client = Client(server.url, backoff=FAST)
        client.connect(timeout=TIMEOUT)
        server.restart(down_for=0.3, wait=False)
        futures = [client.send(f"m{n}") for n in range(10)]
        client.close(timeout=TIMEOUT)
        assert [f.result(0).content for f in futures] == [f"m{n}" for n in range(10)]

    @pytest.mark.parametrize("flush", [True, False])
    def test_close_against_a_silent_server_is_bounded_and_counts(
        self, server: ProtocolServer, caplog: pytest.LogCaptureFixture, flush: bool
    ) -> None:
        """close(timeout=1) returns in about a second against a stalled server and says how
        many messages were left."""
        client = Client(server.url, backoff=FAST)
        client.connect(timeout=TIMEOUT)
        server.stall()
        futures = [client.send(f"m{n}") for n in range(7)]
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="wsync"):
            client.close(timeout=1.0, flush=flush)
        elapsed = time.monotonic() - started
        assert elapsed < 1.0 + CLOSE_SLACK
        if not flush:
            assert elapsed < 1.0  # nothing waited for
        assert client.state.status is Status.CLOSED
        assert all(isinstance(f.exception(0), wsync.ClientClosed) for f in futures)
        warnings = _unanswered_warnings(caplog)
        assert len(warnings) == 1, caplog.records
        assert "7 messages left unanswered" in warnings[0]
        server.unstall()

    def test_close_of_a_client_that_never_connected_does_not_wait(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Nothing can answer a client that is not trying: close() does not wait for it."""
        client = Client(_refused_url())
        futures = [client.send("a"), client.send("b")]
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="wsync"):
            client.close(timeout=5.0)
        assert time.monotonic() - started < 1.0
        assert all(isinstance(f.exception(0), wsync.ClientClosed) for f in futures)
        assert "2 messages left unanswered" in _unanswered_warnings(caplog)[0]

    def test_nothing_left_means_no_warning(
        self, server: ProtocolServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A close with everything answered logs no warning."""
        with (
            caplog.at_level(logging.WARNING, logger="wsync"),
            Client(server.url, backoff=FAST) as client,
        ):
            client.send_and_wait("x", timeout=TIMEOUT)
        assert _unanswered_warnings(caplog) == []

    def test_ctrl_c_in_a_with_block_closes_without_waiting(self, server: ProtocolServer) -> None:
        """Leaving a with block on KeyboardInterrupt closes at once, without the flush."""
        with pytest.raises(KeyboardInterrupt), Client(server.url, backoff=FAST) as client:
            server.stall()
            started = time.monotonic()
            client.send("never answered")
            raise KeyboardInterrupt
        assert time.monotonic() - started < 2.0
        server.unstall()


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, wsync
    client = wsync.Client(sys.argv[1], client_id="script", backoff=wsync.Backoff(
        initial=0.05, max_delay=0.2, max_attempts=None))
    client.connect(wait=False)
    for n in range(int(sys.argv[2])):
        client.send(f"m{n}")
    print("sent", flush=True)
    # no close(): the interpreter exits here
    """
)


class TestExit:
    def test_script_without_close_delivers_everything(self, server: ProtocolServer) -> None:
        """A script that ends without close() still gets every message answered."""
        result = subprocess.run(
            [sys.executable, "-c", EXIT_SCRIPT, server.url, "300"],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert len({r.message_id for r in server.received}) == 300
        assert "left unanswered" not in result.stderr

    def test_script_without_close_and_no_server_says_what_was_left(self) -> None:
        """With no server, the script exits within about five seconds and says how many
        messages were left unanswered."""
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", EXIT_SCRIPT, _refused_url(), "3"],
            capture_output=True, text=True, timeout=60,
        )
        assert time.monotonic() - started < 15
        assert result.returncode == 0, result.stderr
        assert "3 messages left unanswered" in result.stderr


class TestSendSize:
    def test_larger_than_max_send_size_is_refused_and_not_queued(
        self, server: ProtocolServer
    ) -> None:
        """send() of a frame over max_send_size raises ValueError and queues nothing."""
        with Client(server.url, backoff=FAST, max_send_size=1000) as client:
            with pytest.raises(ValueError, match="max_send_size=1000"):
                client.send("x" * 1000)
            assert client.stats().queued == 0 and client.stats().in_flight == 0
            assert client.send_and_wait("x" * 800, timeout=TIMEOUT).content == "x" * 800

    def test_the_limit_counts_encoded_bytes(self) -> None:
        """Non-ASCII content counts by its encoded size (escaped in the JSON frame)."""
        client = Client(_refused_url(), max_send_size=400)
        try:
            with pytest.raises(ValueError):
                client.send("é" * 100)  # 100 characters, 600 bytes escaped
            client.send("e" * 100)
        finally:
            client.close(flush=False)

    def test_default_is_one_mebibyte_and_none_disables(self) -> None:
        """The default limit refuses a 2 MiB message; max_send_size=None accepts it."""
        client = Client(_refused_url())
        unlimited = Client(_refused_url(), max_send_size=None)
        try:
            with pytest.raises(ValueError):
                client.send("x" * (2 << 20))
            unlimited.send("x" * (2 << 20))
        finally:
            client.close(flush=False)
            unlimited.close(flush=False)

    @pytest.mark.parametrize("value", [0, -1])
    def test_bad_max_send_size_is_a_value_error(self, value: int) -> None:
        """A max_send_size below 1 is refused at construction."""
        with pytest.raises(ValueError, match="max_send_size"):
            Client(_refused_url(), max_send_size=value)


class TestRateWindow:
    def test_never_more_than_the_rate_in_any_second(self, server: ProtocolServer) -> None:
        """rate_limit=5 writes at most 5 messages in any one-second window, from the first."""
        arrivals: list[float] = []
        lock = threading.Lock()

        def handler(content: str, client_id: str) -> str:
            with lock:
                arrivals.append(time.monotonic())
            return content

        server.handler = handler
        with Client(server.url, backoff=FAST, rate_limit=5) as client:
            futures = [client.send(f"m{n}") for n in range(12)]
            for future in futures:
                future.result(TIMEOUT)
        assert len(arrivals) == 12
        slack = 0.05  # arrival times carry the network's jitter; writes are exact
        for i, start in enumerate(arrivals):
            in_window = [t for t in arrivals[i:] if t < start + 1.0 - slack]
            assert len(in_window) <= 5, (i, [round(t - arrivals[0], 3) for t in arrivals])


class TestLogs:
    def test_each_failed_attempt_is_one_warning_with_the_next_delay(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Every failed attempt logs one WARNING naming its cause and the delay; giving up is
        an ERROR."""
        client = Client(_refused_url(), backoff=Backoff(initial=0.01, max_attempts=2))
        with caplog.at_level(logging.WARNING, logger="wsync"), pytest.raises(wsync.ConnectError):
            client.connect(timeout=TIMEOUT)
        client.close()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(warnings) == 2, warnings
        assert all("connection refused" in w and "retrying in" in w for w in warnings)
        assert "(attempt 1 of 2)" in warnings[0] and "(attempt 2 of 2)" in warnings[1]
        assert len(errors) == 1 and "gave up after 2 attempts" in errors[0]

    def test_connect_timeout_names_the_last_cause(self) -> None:
        """str(ConnectTimeout) and state.error say why the attempts failed."""
        client = Client(_refused_url(), backoff=Backoff(initial=0.05, max_attempts=None))
        with pytest.raises(ConnectTimeout) as caught:
            client.connect(timeout=0.5)
        try:
            assert "within 0.5 s: connection refused" in str(caught.value)
            assert "connection refused" in (client.state.error or "")
            assert isinstance(caught.value.__cause__, wsync.ConnectError)
        finally:
            client.close()

    def test_server_text_in_state_error_is_escaped_and_cut(self, server: ProtocolServer) -> None:
        """An error frame's text reaches state.error with control characters escaped, cut to
        200 characters."""
        server.reject_handshakes(1, error="no\x1b[31m" + "x" * 500)
        client = Client(server.url, backoff=Backoff(initial=0.01, max_attempts=0))
        with pytest.raises(wsync.HandshakeError):
            client.connect(timeout=TIMEOUT)
        try:
            error = client.state.error or ""
            assert "\x1b" not in error and "\\x1b" in error
            assert "x" * 300 not in error
        finally:
            client.close()

    def test_message_content_never_reaches_info_or_above(
        self, server: ProtocolServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Neither content nor response text is logged at INFO or above, whatever happens."""
        secret = "s3cr3t-" + os.urandom(4).hex()
        with caplog.at_level(logging.DEBUG, logger="wsync"):
            client = Client(server.url, backoff=FAST)
            client.connect(timeout=TIMEOUT)
            client.send_and_wait(secret, timeout=TIMEOUT)
            server.stall()
            client.send(secret)
            client.close(timeout=0.5)
            server.unstall()
        for record in caplog.records:
            if record.levelno >= logging.INFO:
                assert secret not in record.getMessage()


class TestFutureTimeouts:
    def test_result_timeout_is_the_futures_timeout_error(self, server: ProtocolServer) -> None:
        """MessageFuture.result(timeout) raises concurrent.futures.TimeoutError, as any Future."""
        import concurrent.futures

        with Client(server.url, backoff=FAST) as client:
            server.stall()
            future = client.send("x")
            with pytest.raises(concurrent.futures.TimeoutError):
                future.result(0.05)
            server.unstall()
            assert future.result(TIMEOUT).content == "x"

    def test_send_and_wait_names_the_timeout(self, server: ProtocolServer) -> None:
        """send_and_wait raises ResponseTimeout whose message names the timeout."""
        with Client(server.url, backoff=FAST) as client:
            server.stall()
            with pytest.raises(wsync.ResponseTimeout, match=r"within 0\.1 s"):
                client.send_and_wait("x", timeout=0.1)
            server.unstall()


def _poison_run(server: ProtocolServer, poison: str) -> None:
    contents = [f"m{n}" for n in range(30)]
    contents[14] = poison
    with Client(server.url, backoff=FAST) as client:
        futures = [client.send(content) for content in contents]
        for n, future in enumerate(futures):
            if n == 14:
                with pytest.raises(wsync.DeliveryError, match="max_deliveries=3"):
                    future.result(TIMEOUT * 2)
            else:
                assert future.result(TIMEOUT * 2).content == contents[n]
        assert client.state.status is Status.CONFIRMED
        assert client.send_and_wait("after", timeout=TIMEOUT).content == "after"
        assert client.stats().queued == 0 and client.stats().in_flight == 0


class TestPoisonMessages:
    def test_a_message_that_drops_the_connection_fails_alone(
        self, server: ProtocolServer
    ) -> None:
        """A message that makes the server drop the connection fails with DeliveryError after
        at most 3 writes; the 29 around it are answered."""
        server.drop_on("poison")
        _poison_run(server, "poison")
        writes = sum(1 for r in server.received if r.content == "poison")
        assert 1 <= writes <= 3
        assert server.dropped_on_message_total == writes

    def test_a_message_over_the_servers_size_limit_fails_alone(self) -> None:
        """A message the server closes with 1009 for fails alone, the others answered."""
        with ProtocolServer(max_message_size=1000) as server:
            _poison_run(server, "p" * 2000)
            assert server.wait_until(lambda: 1 <= server.oversized_total <= 3, TIMEOUT)

    def test_max_deliveries_none_never_gives_up(self, server: ProtocolServer) -> None:
        """With max_deliveries=None a message is written again on every connection."""
        server.drop_on("poison")
        with Client(server.url, backoff=FAST, max_deliveries=None) as client:
            future = client.send("poison")
            assert server.wait_until(lambda: server.dropped_on_message_total >= 5, TIMEOUT)
            server.drop_on(None)
            assert future.result(TIMEOUT).content == "poison"

    def test_neighbours_are_not_blamed_for_a_restart(self, server: ProtocolServer) -> None:
        """A server restart while messages are in flight fails none of them."""
        with Client(server.url, backoff=FAST) as client:
            client.send_and_wait("warm", timeout=TIMEOUT)
            server.response_delay = 0.3
            futures = [client.send(f"m{n}") for n in range(10)]
            assert server.wait_for_received(11, TIMEOUT)
            for _ in range(2):
                server.drop_connections()
                assert server.wait_for_connections(server.connections_total + 1, TIMEOUT)
            server.response_delay = 0.0
            assert [f.result(TIMEOUT).content for f in futures] == [f"m{n}" for n in range(10)]


class TestProvenConnections:
    def test_confirm_then_close_backs_off_and_gives_up(self, server: ProtocolServer) -> None:
        """A server that confirms and closes at once gets attempts 1..5 with growing delays,
        then DISCONNECTED with its close code."""
        from tests.integration._recorder import Recorder

        rec = Recorder()
        backoff = Backoff(initial=0.01, factor=2.0, max_delay=1.0, max_attempts=5)
        client = Client(server.url, backoff=backoff, **rec.callbacks())
        try:
            client.connect(timeout=TIMEOUT)
            server.close_after_confirm(10, code=1008, reason="token revoked")
            client.reconnect()
            assert rec.wait(
                lambda r: any(
                    s.status is Status.DISCONNECTED and "gave up" in (s.error or "")
                    for s in r.states
                ),
                TIMEOUT * 2,
            )
            attempts = [s.attempt for s in rec.states if s.status is Status.CONNECTING]
            assert attempts[-5:] == [1, 2, 3, 4, 5]
            final = client.state
            assert final.status is Status.DISCONNECTED
            assert final.close_code == 1008
            assert "1008" in (final.error or "")
        finally:
            client.close()

    def test_a_proven_connection_starts_the_count_again(self, server: ProtocolServer) -> None:
        """After a response proved the connection, a loss starts again at attempt 1."""
        from tests.integration._recorder import Recorder

        rec = Recorder()
        with Client(server.url, backoff=FAST, **rec.callbacks()) as client:
            for _ in range(3):
                client.send_and_wait("x", timeout=TIMEOUT)
                confirmed = rec.count(Status.CONFIRMED)
                server.drop_connections()
                assert rec.wait_status(Status.CONFIRMED, confirmed + 1)
            attempts = [s.attempt for s in rec.states if s.status is Status.CONNECTING]
            assert attempts == [0, 1, 1, 1]


class TestFreshCredentials:
    def test_headers_callable_is_called_before_every_attempt(
        self, server: ProtocolServer
    ) -> None:
        """A rotated token is picked up on the next attempt through a headers callable."""
        token = {"value": "first"}
        calls: list[str] = []

        def headers() -> dict[str, str]:
            calls.append(token["value"])
            return {"Authorization": f"Bearer {token['value']}"}

        server.require_token("first")
        with Client(server.url, backoff=FAST, headers=headers) as client:
            assert client.send_and_wait("a", timeout=TIMEOUT).content == "a"
            server.require_token("second")  # rotated: the next upgrade needs the new one
            token["value"] = "second"
            server.drop_connections()
            assert client.send_and_wait("b", timeout=TIMEOUT).content == "b"
        assert calls[0] == "first" and calls[-1] == "second"
        assert server.unauthorized_total == 0

    def test_a_stale_token_fails_attempts_until_rotated(self, server: ProtocolServer) -> None:
        """Attempts with a stale token are refused (401) and retried; a fresh one gets in."""
        token = {"value": "stale"}
        server.require_token("fresh")
        client = Client(server.url, backoff=FAST, headers=lambda: {
            "Authorization": f"Bearer {token['value']}"
        })
        try:
            client.connect(wait=False)
            assert server.wait_until(lambda: server.unauthorized_total >= 2, TIMEOUT)
            token["value"] = "fresh"
            assert client.send_and_wait("in", timeout=TIMEOUT).content == "in"
        finally:
            client.close()

    def test_a_headers_callable_that_raises_fails_that_attempt_only(
        self, server: ProtocolServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An exception from the headers callable fails the attempt, logged without values;
        the next attempt calls it again."""
        outcomes = iter([RuntimeError("vault is down: s3cr3t"), None])

        def headers() -> dict[str, str]:
            error = next(outcomes, None)
            if error is not None:
                raise error
            return {}

        with (
            caplog.at_level(logging.WARNING, logger="wsync"),
            Client(server.url, backoff=FAST, headers=headers) as client,
        ):
            assert client.send_and_wait("x", timeout=TIMEOUT).content == "x"
        assert any("RuntimeError" in r.getMessage() for r in caplog.records)
        assert not any("s3cr3t" in r.getMessage() for r in caplog.records)


class TestCancelWhileWriting:
    @pytest.mark.parametrize("backlog", [0, 5])
    def test_cancel_during_the_write_fails_and_the_message_is_answered(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch, backlog: int
    ) -> None:
        """A cancel() that lands while its message is being written returns False, and the
        message is answered: a cancel that succeeds means the message is never sent."""
        from wsync import _connection

        outcome: dict[str, bool] = {}
        target: dict[str, wsync.MessageFuture] = {}

        def cancelling(original: Any) -> Any:
            def write(self: Any, texts: Any) -> Any:
                future = target.get("future")
                frames = texts if isinstance(texts, list) else [texts]
                if future is not None and "cancel" not in outcome and any(
                    future.message_id in text for text in frames
                ):
                    outcome["cancel"] = future.cancel()
                return original(self, texts)

            return write

        monkeypatch.setattr(
            _connection.Transport, "send_texts", cancelling(_connection.Transport.send_texts)
        )
        monkeypatch.setattr(
            _connection.Transport, "try_send_text",
            cancelling(_connection.Transport.try_send_text),
        )
        with Client(server.url, backoff=FAST) as client:
            for n in range(backlog):
                client.send(f"before {n}")
            server.hold_responses()  # the target is written while the backlog waits
            future = client.send("target", message_id="the-target")
            target["future"] = future
            server.drop_connections()  # it is written again after the reconnect: cancel then
            server.release_responses()
            assert future.result(TIMEOUT).content == "target"
        assert outcome.get("cancel") is False


EXIT_HOSTNAME_SCRIPT = EXIT_SCRIPT.replace(
    "client = wsync.Client(sys.argv[1]",
    "client = wsync.Client(sys.argv[1].replace('127.0.0.1', 'localhost')",
)


class TestExitOpensTheConnection:
    def test_a_connection_first_opened_by_the_exit_flush_delivers(
        self, server: ProtocolServer
    ) -> None:
        """The exit hook's flush may be the first to open the connection (a script that sent
        and ended at once), when Python 3.12+ starts no new thread: through a DNS name too,
        the messages are delivered."""
        result = subprocess.run(
            [sys.executable, "-c", EXIT_HOSTNAME_SCRIPT, server.url, "50"],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert len({r.message_id for r in server.received}) == 50
        assert "Traceback" not in result.stderr
