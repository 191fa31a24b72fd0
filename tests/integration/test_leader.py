"""Leader/followers: a ``send_and_wait`` caller reads its own response while the reader parks.

Each test checks one guarantee the hand-off must keep: the caller really reads (no thread hop),
a parked reader reads again as soon as anything else is expected, other threads' responses,
pings and the heartbeat are handled while a caller reads, callbacks never run on the reading
caller, and close(), a lost connection or a timeout end the caller's turn cleanly.
``PARK_GRACE`` is made long where a test must not pass merely because the reader's grace ran
out.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import wsync
from tests.helpers import TIMEOUT
from wsync import Backoff, Client, Status, _workers
from wsync._connection import Transport
from wsync.testing import ProtocolServer

FAST = Backoff(initial=0.01, max_delay=0.05, max_attempts=None)


class _Reads:
    """Counts the messages each thread read from a connection."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._lock = threading.Lock()
        self.by_thread: collections.Counter[str] = collections.Counter()
        recv, recv_within = Transport.recv, Transport.recv_within

        def counted_recv(transport: Transport) -> str | bytes:
            data = recv(transport)
            self._count()
            return data

        def counted_recv_within(transport: Transport, timeout: float) -> str | bytes | None:
            data = recv_within(transport, timeout)
            if data is not None:
                self._count()
            return data

        monkeypatch.setattr(Transport, "recv", counted_recv)
        monkeypatch.setattr(Transport, "recv_within", counted_recv_within)

    def _count(self) -> None:
        with self._lock:
            self.by_thread[threading.current_thread().name] += 1


@pytest.fixture
def long_grace(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A parked reader would wait a minute before reading again on its own."""
    monkeypatch.setattr(_workers, "PARK_GRACE", 60.0)
    yield


def _park(client: Client) -> None:
    """Two round trips: after the first the reader parks, the second is read by the caller."""
    for _ in range(2):
        assert client.send_and_wait("park", timeout=TIMEOUT).content == "park"


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread; its result or exception lands in the returned list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, name="test-caller")
    thread.start()
    return thread, out


class TestTheCallerReads:
    def test_sequential_round_trips_are_read_by_the_caller(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch, long_grace: None
    ) -> None:
        """In a loop of send_and_wait, the calling thread reads its own responses."""
        reads = _Reads(monkeypatch)
        with Client(server.url, backoff=FAST) as client:
            client.connect(timeout=TIMEOUT)
            for n in range(50):
                assert client.send_and_wait(f"m{n}", timeout=TIMEOUT).content == f"m{n}"
            mine = reads.by_thread[threading.current_thread().name]
            assert mine >= 48, reads.by_thread

    def test_an_end_right_after_a_round_trip_is_seen_at_once(
        self, server: ProtocolServer, long_grace: None
    ) -> None:
        """The server closing the connection just after a round trip the caller read is
        seen at once (the reader watches for an end even while a caller reads), not after
        the reader's grace: the client reconnects within the test's bound."""
        with Client(server.url, backoff=FAST) as client:
            for _ in range(20):
                _park(client)
                handshakes = server.handshakes_total
                server.drop_connections()
                assert server.wait_for_handshakes(handshakes + 1)
                assert client.connect(timeout=TIMEOUT).status is Status.CONFIRMED

    def test_a_parked_reader_reads_again_for_a_plain_send(
        self, server: ProtocolServer, long_grace: None
    ) -> None:
        """A send() that nobody waits for in send_and_wait is answered at once, not after the
        parked reader's grace."""
        with Client(server.url, backoff=FAST) as client:
            _park(client)
            assert client.send("plain").result(TIMEOUT).content == "plain"

    def test_callbacks_never_run_on_the_reading_caller(
        self, server: ProtocolServer, long_grace: None
    ) -> None:
        """on_response and done-callbacks run on the callbacks thread, not on the caller that
        read the response."""
        threads: list[str] = []
        seen = threading.Event()

        def on_response(response: wsync.Response) -> None:
            threads.append(threading.current_thread().name)
            if len(threads) == 10:
                seen.set()

        with Client(server.url, backoff=FAST, on_response=on_response) as client:
            client.connect(timeout=TIMEOUT)
            for n in range(10):
                client.send_and_wait(f"m{n}", timeout=TIMEOUT)
            assert seen.wait(TIMEOUT)
        assert threads and all(name.startswith("wsync-callbacks-") for name in threads), threads


class TestWhileACallerReads:
    def test_other_threads_responses_are_delivered(
        self, server: ProtocolServer, long_grace: None
    ) -> None:
        """Responses to another thread's messages, read by the caller, settle their futures."""
        with Client(server.url, backoff=FAST) as client:
            _park(client)
            server.hold_responses()
            thread, out = _in_thread(lambda: client.send_and_wait("mine", timeout=TIMEOUT))
            assert server.wait_for_received(3)
            others = [client.send(f"other{n}") for n in range(5)]
            assert server.wait_until(lambda: server.held_responses == 6)
            server.release_responses()
            thread.join(TIMEOUT)
            assert out and isinstance(out[0], wsync.Response) and out[0].content == "mine"
            assert [f.result(TIMEOUT).content for f in others] == [f"other{n}" for n in range(5)]

    def test_pings_and_the_heartbeat_go_on(self, server: ProtocolServer, long_grace: None) -> None:
        """A server ping is answered and the client's own heartbeat gets its pong while a
        caller waits for a held response."""
        with Client(
            server.url, backoff=FAST, heartbeat_interval=0.05
        ) as client:
            _park(client)
            pongs = server.pongs_received
            pings = server.pings_received
            server.hold_responses()
            thread, out = _in_thread(lambda: client.send_and_wait("held", timeout=TIMEOUT))
            assert server.wait_until(lambda: server.held_responses == 1)
            server.send_ping()
            assert server.wait_until(lambda: server.pongs_received > pongs)
            assert server.wait_until(lambda: server.pings_received >= pings + 3)
            assert client.state.status is Status.CONFIRMED
            server.release_responses()
            thread.join(TIMEOUT)
            assert out and isinstance(out[0], wsync.Response)
            assert client.stats().last_rtt is not None

    def test_close_from_another_thread_ends_the_caller(
        self, server: ProtocolServer, long_grace: None
    ) -> None:
        """close() while a caller reads (no timeout) fails its wait with ClientClosed and
        leaves no wsync thread."""
        client = Client(server.url, backoff=FAST)
        try:
            client.connect(timeout=TIMEOUT)
            _park(client)
            server.hold_responses()
            thread, out = _in_thread(lambda: client.send_and_wait("held", timeout=None))
            assert server.wait_until(lambda: server.held_responses == 1)
        finally:
            client.close(timeout=2.0, flush=False)
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert out and isinstance(out[0], wsync.ClientClosed)
        leftovers = [
            t.name for t in threading.enumerate()
            if t.name.startswith("wsync-") and not t.name.startswith("wsync-server")
        ]
        assert leftovers == []

    def test_a_lost_connection_hands_the_message_to_the_next(
        self, server: ProtocolServer, long_grace: None
    ) -> None:
        """The connection dropped under a reading caller: the message is written again on
        the next connection and its response reaches the caller."""
        with Client(server.url, backoff=FAST) as client:
            _park(client)
            handshakes = server.handshakes_total
            server.hold_responses()
            thread, out = _in_thread(lambda: client.send_and_wait("again", timeout=TIMEOUT))
            assert server.wait_until(lambda: server.held_responses == 1)
            server.drop_connections()
            assert server.wait_for_handshakes(handshakes + 1)
            assert server.wait_until(lambda: server.held_responses >= 2)
            server.release_responses()
            thread.join(TIMEOUT)
            assert out and isinstance(out[0], wsync.Response) and out[0].content == "again"

    def test_a_timeout_gives_the_turn_back(self, server: ProtocolServer, long_grace: None) -> None:
        """A reading caller that times out gives the turn back: later responses still come."""
        with Client(server.url, backoff=FAST) as client:
            _park(client)
            server.hold_responses()
            with pytest.raises(wsync.ResponseTimeout):
                client.send_and_wait("late", timeout=0.1)
            server.release_responses()
            assert client.send("plain").result(TIMEOUT).content == "plain"
            assert client.send_and_wait("next", timeout=TIMEOUT).content == "next"
            assert client.flush(TIMEOUT)
