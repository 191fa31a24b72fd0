"""How many threads a client runs, who runs what, and that close() joins them all."""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import TIMEOUT
from wsync import Backoff, Client, ConnectionState, Status, _exit, _workers
from wsync._connection import Transport
from wsync.testing import ProtocolServer

pytestmark = pytest.mark.timeout(60)

FAST = Backoff(initial=0.01, max_delay=0.05, max_attempts=None)


def _client_threads() -> list[str]:
    """The names of the live wsync threads of clients (not the test server's)."""
    return sorted(
        t.name for t in threading.enumerate()
        if t.name.startswith("wsync-") and not t.name.startswith("wsync-server")
    )


def _join_writers(client: Client) -> None:
    """Wait (bounded) until the client's writer thread, if any, has ended."""
    engine = client._engine
    deadline = time.monotonic() + TIMEOUT
    while True:
        with engine.lock:
            writers = engine._writer.threads()
            busy = engine._writer.busy
        if not writers and not busy:
            return
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"writer still running: {writers}"
        for thread in writers:
            thread.join(remaining)


@pytest.fixture
def quick_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers end 50 ms after their last message instead of 1 s."""
    monkeypatch.setattr(_workers, "WRITER_IDLE", 0.05)


class TestIdleClient:
    @pytest.mark.usefixtures("quick_writer")
    def test_idle_connected_client_runs_its_reader_and_the_shared_timer(
        self, server: ProtocolServer
    ) -> None:
        """After a burst, an idle connected client runs only its reader (and wsync-timer)."""
        with Client(server.url, backoff=FAST) as c:
            futures = [c.send(f"m{i}") for i in range(200)]
            for future in futures:
                future.result(TIMEOUT)
            _join_writers(c)
            n = c._engine.number
            assert _client_threads() == [f"wsync-reader-{n}.1", "wsync-timer"]

    def test_clients_share_one_timer_thread(self, server: ProtocolServer) -> None:
        """Five connected clients run one wsync-timer between them."""
        clients = [Client(server.url, backoff=FAST) for _ in range(5)]
        try:
            for c in clients:
                c.connect(timeout=TIMEOUT)
            timers = [t for t in threading.enumerate() if t.name.startswith("wsync-timer")]
            assert [t.name for t in timers] == ["wsync-timer"]
        finally:
            for c in clients:
                c.close(TIMEOUT)

    def test_close_of_the_last_client_joins_the_timer(self, server: ProtocolServer) -> None:
        """Once the last client is closed, no wsync thread of a client is left, at once."""
        clients = [Client(server.url, backoff=FAST) for _ in range(3)]
        for c in clients:
            c.connect(timeout=TIMEOUT)
            c.send("x")  # a writer may be running at close()
        timer = next(t for t in threading.enumerate() if t.name == "wsync-timer")
        clients[0].close(TIMEOUT)
        clients[1].close(TIMEOUT)
        assert timer.is_alive()  # the third client still needs it
        clients[2].close(TIMEOUT)
        assert not timer.is_alive()
        assert _client_threads() == []

    def test_a_paced_burst_keeps_one_writer_thread(self, server: ProtocolServer) -> None:
        """Messages sent one by one while others are in flight (each written before the next
        is sent) are written by one lingering writer thread, not one thread per message."""
        starts: list[str] = []
        original = _workers.Writer.start

        def start(self: _workers.Writer, thread: threading.Thread) -> None:
            starts.append(thread.name)
            original(self, thread)

        with Client(server.url, backoff=FAST) as c:
            c.connect(timeout=TIMEOUT)
            _join_writers(c)  # the connect frame's writer
            server.hold_responses()  # every message stays in flight: no fast path after the first
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(_workers.Writer, "start", start)
                futures = []
                for i in range(50):
                    futures.append(c.send(f"m{i}"))
                    assert server.wait_for_received(i + 1, TIMEOUT)
                server.release_responses()
                for future in futures:
                    future.result(TIMEOUT)
        assert 1 <= len(starts) <= 3, f"{len(starts)} writer threads for 50 messages"

    def test_heartbeats_alone_leave_no_writer_running(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A ping's writer ends as soon as the ping is written (the linger after messages,
        made a minute here, does not apply)."""
        monkeypatch.setattr(_workers, "WRITER_IDLE", 60.0)
        with Client(server.url, backoff=FAST, heartbeat_interval=0.05) as c:
            c.connect(timeout=TIMEOUT)
            assert server.wait_until(lambda: server.pings_received >= 3, TIMEOUT)
            _join_writers(c)  # well within the 1 s a message would keep it


class TestConnectThread:
    def test_an_attempt_runs_on_a_connect_thread(self, server: ProtocolServer) -> None:
        """The socket is opened on wsync-connect-<n>, never on the shared timer thread."""
        c = Client(server.url, backoff=FAST)
        try:
            connector = c._engine._connector
            where: list[str] = []
            original = connector.open

            def open_(timeout: float) -> Transport:
                where.append(threading.current_thread().name)
                return original(timeout)

            connector.open = open_  # type: ignore[method-assign]
            c.connect(timeout=TIMEOUT)
            assert where == [f"wsync-connect-{c._engine.number}"]
        finally:
            c.close(TIMEOUT)

    def test_the_connect_thread_goes_on_as_the_reader(self, server: ProtocolServer) -> None:
        """The thread that opened the connection writes the connect frame and reads the
        connection (renamed wsync-reader-<n>.<g>): no thread starts on the way to CONFIRMED."""
        c = Client(server.url, backoff=FAST)
        try:
            connector = c._engine._connector
            opened_on: list[int] = []
            original = connector.open

            def open_(timeout: float) -> Transport:
                opened_on.append(threading.get_ident())
                return original(timeout)

            connector.open = open_  # type: ignore[method-assign]
            state = c.connect(timeout=TIMEOUT)
            readers = [
                t for t in threading.enumerate()
                if t.name == f"wsync-reader-{c._engine.number}.{c._engine.machine.generation}"
            ]
            assert state.status is Status.CONFIRMED
            assert [t.ident for t in readers] == opened_on
            assert not [
                t for t in threading.enumerate() if t.name.startswith("wsync-connect-")
            ]
        finally:
            c.close(TIMEOUT)

    def test_close_cancels_and_joins_a_hanging_attempt(self, silent_listener: str) -> None:
        """close() during an upgrade that hangs ends the connect thread before returning."""
        c = Client(silent_listener, backoff=FAST, connect_timeout=30)
        connector = c._engine._connector
        opening = threading.Event()
        original = connector.open

        def open_(timeout: float) -> Transport:
            opening.set()
            return original(timeout)

        connector.open = open_  # type: ignore[method-assign]
        c.connect(wait=False)
        assert opening.wait(TIMEOUT)
        started = time.monotonic()
        c.close(TIMEOUT)
        assert time.monotonic() - started < TIMEOUT
        assert _client_threads() == []

    def test_a_hanging_attempt_does_not_delay_other_clients(
        self, server: ProtocolServer, silent_listener: str
    ) -> None:
        """One client stuck in an attempt leaves the shared timer free for the others."""
        stuck = Client(silent_listener, backoff=FAST, connect_timeout=30)
        try:
            stuck.connect(wait=False)
            with Client(server.url, backoff=FAST, heartbeat_interval=0.05) as c:
                c.connect(timeout=TIMEOUT)
                assert server.wait_until(lambda: server.pings_received >= 3, TIMEOUT)
        finally:
            stuck.close(TIMEOUT)


class TestManyClients:
    def test_heartbeats_fire_for_every_client(self, server: ProtocolServer) -> None:
        """Twenty clients with a 50 ms heartbeat each get pongs, on the one timer thread."""
        clients = [Client(server.url, backoff=FAST, heartbeat_interval=0.05) for _ in range(20)]
        try:
            for c in clients:
                c.connect(timeout=TIMEOUT)
            # Re-checked at each ping the server receives (a ping every 50 ms per client).
            assert server.wait_until(
                lambda: all(c.stats().last_rtt is not None for c in clients), TIMEOUT
            ), "a client never got a pong"
            assert all(c.state.status is Status.CONFIRMED for c in clients)
        finally:
            for c in clients:
                c.close(TIMEOUT)

    def test_every_client_reconnects_after_a_drop(self, server: ProtocolServer) -> None:
        """Twenty clients whose connections are dropped all reconnect (backoff on one timer)."""
        changed = threading.Condition()
        confirmed: dict[int, int] = {}

        def on_state_change(i: int, state: ConnectionState) -> None:
            if state.status is Status.CONFIRMED:
                with changed:
                    confirmed[i] = confirmed.get(i, 0) + 1
                    changed.notify_all()

        clients = [
            Client(server.url, backoff=FAST, on_state_change=functools.partial(on_state_change, i))
            for i in range(20)
        ]
        try:
            for c in clients:
                c.connect(timeout=TIMEOUT)
            server.drop_connections()
            with changed:
                assert changed.wait_for(
                    lambda: len(confirmed) == 20 and min(confirmed.values()) >= 2, TIMEOUT
                ), f"not every client reconnected: {confirmed}"
            for c in clients:
                assert c.send_and_wait("after", timeout=TIMEOUT).content == "after"
        finally:
            for c in clients:
                c.close(TIMEOUT)


class TestNoThreadCanStart:
    def test_work_runs_inline_when_threads_are_refused(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Interpreter shutdown: the attempt, the reading and the writing run in the threads
        that wanted them (the timer, the caller); messages still go and come back."""
        refused: list[str] = []
        real = _exit.start_thread

        def start_thread(thread: threading.Thread) -> bool:
            if thread.name.startswith(("wsync-connect-", "wsync-writer-", "wsync-reader-")):
                refused.append(thread.name.rsplit("-", 1)[0])
                return False
            return real(thread)

        monkeypatch.setattr(_exit, "start_thread", start_thread)
        monkeypatch.setattr(_workers, "start_thread", start_thread)
        c = Client(server.url, backoff=FAST)
        try:
            c.connect(timeout=TIMEOUT)
            futures = [c.send(f"m{i}") for i in range(50)]
            assert [f.result(TIMEOUT).content for f in futures] == [f"m{i}" for i in range(50)]
        finally:
            c.close(TIMEOUT)
        assert {"wsync-connect", "wsync-writer", "wsync-reader"} <= set(refused)
        assert _client_threads() == []


TWO_CLIENTS_AT_EXIT = """
import sys, wsync
a = wsync.Client(sys.argv[1], client_id="a")
b = wsync.Client(sys.argv[1], client_id="b")
a.connect(wait=False)
b.connect(wait=False)
for i in range(20):
    a.send(f"a{i}")
    b.send(f"b{i}")
# no close(), no flush(): the exit hook opens both connections (3.12+: with no new thread)
"""


class TestExit:
    def test_two_clients_first_connected_by_the_exit_flush_both_deliver(
        self, server: ProtocolServer
    ) -> None:
        """Two clients whose connections the exit hook opens share one timer thread (which
        reads a connection itself when no thread can start): both deliver everything."""
        result = subprocess.run(
            [sys.executable, "-c", TWO_CLIENTS_AT_EXIT, server.url],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert sorted(r.content for r in server.received) == sorted(
            [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)]
        )
        assert "unanswered" not in result.stderr and "Traceback" not in result.stderr


class TestWriterRecovery:
    def test_a_writer_whose_start_was_cut_short_is_made_again(
        self, server: ProtocolServer
    ) -> None:
        """A writer marked running whose thread never started (a Ctrl-C between the two, in the
        thread starting it) does not wedge the queue: the next wake makes a fresh one."""
        with Client(server.url, backoff=FAST) as c:
            c.connect(timeout=TIMEOUT)
            writer = c._engine._writer
            with c._engine.lock:
                writer.thread = threading.Thread(target=lambda: None)  # never started
                writer._run = _workers._Run.BUSY
            server.stall()
            first = c.send("first")  # written inline, stays in flight
            second = c.send("second")  # behind it: the writer's job
            server.unstall()
            assert first.result(TIMEOUT).content == "first"
            assert second.result(TIMEOUT).content == "second"
