"""close() in every state, re-entrant callbacks, and clients nobody closed."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import wsync
from tests.helpers import TIMEOUT
from tests.integration._recorder import Recorder
from wsync import Backoff, Client, ConnectionState, Status
from wsync.testing import ProtocolServer

pytestmark = pytest.mark.timeout(60)

FAST = Backoff(initial=0.01, max_delay=0.05, max_attempts=None)


class TestClose:
    def test_close_when_confirmed_ends_closed(self, server: ProtocolServer) -> None:
        """close() reports CLOSED last, and returns after that callback ran."""
        rec = Recorder()
        c = Client(server.url, backoff=FAST, **rec.callbacks())
        c.connect(timeout=TIMEOUT)
        c.close()
        assert rec.statuses()[-1] is Status.CLOSED
        assert c.state.status is Status.CLOSED

    def test_close_fails_pending_futures_with_client_closed(self, server: ProtocolServer) -> None:
        """Futures still waiting at close() fail with ClientClosed."""
        c = Client(server.url, backoff=FAST)
        c.connect(timeout=TIMEOUT)
        server.hold_responses()
        future = c.send("pending")
        assert server.wait_for_received(1, TIMEOUT)
        c.close()
        with pytest.raises(wsync.ClientClosed):
            future.result(0)

    def test_send_after_close_raises(self, server: ProtocolServer) -> None:
        """send(), send_and_wait(), connect() and reconnect() after close raise ClientClosed."""
        c = Client(server.url, backoff=FAST)
        c.close()
        with pytest.raises(wsync.ClientClosed):
            c.send("x")
        with pytest.raises(wsync.ClientClosed):
            c.send_and_wait("x")
        with pytest.raises(wsync.ClientClosed):
            c.connect()
        with pytest.raises(wsync.ClientClosed):
            c.reconnect()

    def test_close_is_idempotent(self, server: ProtocolServer) -> None:
        """A second close() does nothing and reports nothing new."""
        rec = Recorder()
        c = Client(server.url, backoff=FAST, **rec.callbacks())
        c.connect(timeout=TIMEOUT)
        c.close()
        c.close()
        assert rec.count(Status.CLOSED) == 1

    def test_close_sends_a_close_frame(self, server: ProtocolServer) -> None:
        """The server sees the connection end after close()."""
        c = Client(server.url, backoff=FAST)
        c.connect(timeout=TIMEOUT)
        assert server.live_connections == 1
        c.close()
        assert server.wait_until(lambda: server.live_connections == 0, TIMEOUT)

    def test_close_while_connecting_is_bounded(self, silent_listener: str) -> None:
        """close() interrupts an upgrade that hangs and returns within its timeout."""
        rec = Recorder()
        c = Client(silent_listener, backoff=FAST, connect_timeout=30.0, **rec.callbacks())
        c.connect(wait=False)
        assert rec.wait_status(Status.CONNECTING)
        started = time.monotonic()
        c.close(timeout=2.0)
        assert time.monotonic() - started < 2.5
        assert c.state.status is Status.CLOSED

    def test_close_while_pending_is_bounded(self, server: ProtocolServer) -> None:
        """close() while the confirm never comes returns promptly."""
        server.stall()
        rec = Recorder()
        c = Client(server.url, backoff=FAST, connect_timeout=30.0, **rec.callbacks())
        c.connect(wait=False)
        assert rec.wait_status(Status.PENDING)
        started = time.monotonic()
        c.close(timeout=2.0)
        assert time.monotonic() - started < 2.5

    def test_close_when_server_stalled_is_bounded(self, server: ProtocolServer) -> None:
        """A stalled server cannot make close() overrun its timeout."""
        c = Client(server.url, backoff=FAST)
        c.connect(timeout=TIMEOUT)
        server.stall()
        started = time.monotonic()
        c.close(timeout=1.0)
        assert time.monotonic() - started < 1.5

    def test_close_while_waiting_to_reconnect(self) -> None:
        """close() during a long backoff delay returns at once."""
        rec = Recorder()
        with ProtocolServer() as srv:
            c = Client(srv.url, backoff=Backoff(initial=60.0), **rec.callbacks())
            c.connect(timeout=TIMEOUT)
        assert rec.wait_status(Status.DISCONNECTED)
        started = time.monotonic()
        c.close()
        assert time.monotonic() - started < 1.0

    def test_close_before_connect(self) -> None:
        """A client that never connected closes at once, and its CLOSED callback still runs."""
        rec = Recorder()
        c = Client("ws://127.0.0.1:1", **rec.callbacks())
        future = c.send("queued")
        c.close()
        assert rec.statuses() == [Status.CLOSED]
        assert isinstance(future.exception(0), wsync.ClientClosed)


class TestCallbacks:
    def test_callbacks_run_on_the_callbacks_thread(self, server: ProtocolServer) -> None:
        """Every callback runs on wsync-callbacks, never on a reader."""
        rec = Recorder()
        with Client(server.url, backoff=FAST, **rec.callbacks()) as c:
            c.send_and_wait("x", timeout=TIMEOUT)
            server.send_error("e")
            assert rec.wait(lambda r: len(r.errors) == 1 and len(r.responses) == 1)
        assert rec.threads == {f"wsync-callbacks-{c._engine.number}"}

    def test_send_and_wait_inside_a_callback(self, server: ProtocolServer) -> None:
        """send_and_wait() called from on_state_change gets its response: no deadlock."""
        got: list[str] = []
        done = threading.Event()
        holder: list[Client] = []

        def on_state(state: ConnectionState) -> None:
            if state.status is Status.CONFIRMED and not got:
                got.append(holder[0].send_and_wait("from callback", timeout=TIMEOUT).content)
                assert holder[0].flush(timeout=TIMEOUT)
                done.set()

        c = Client(server.url, backoff=FAST, on_state_change=on_state)
        holder.append(c)
        try:
            c.connect(timeout=TIMEOUT)
            assert done.wait(TIMEOUT)
            assert got == ["from callback"]
        finally:
            c.close()

    def test_close_inside_a_callback(self, server: ProtocolServer) -> None:
        """close() called from on_response closes the client without deadlock."""
        closed = threading.Event()
        holder: list[Client] = []

        def on_response(_: wsync.Response) -> None:
            holder[0].close()
            closed.set()

        c = Client(server.url, backoff=FAST, on_response=on_response)
        holder.append(c)
        c.connect(timeout=TIMEOUT)
        c.send("bye")
        assert closed.wait(TIMEOUT)
        c.close()  # from this thread: waits for the end
        assert c.state.status is Status.CLOSED

    def test_callback_exception_is_logged_and_changes_nothing(
        self, server: ProtocolServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An exception in a callback is logged; the client keeps working."""

        def boom(_: object) -> None:
            raise RuntimeError("callback bug")

        with Client(server.url, backoff=FAST, on_state_change=boom, on_response=boom) as c:
            assert c.send_and_wait("a", timeout=TIMEOUT).content == "a"
            assert c.send_and_wait("b", timeout=TIMEOUT).content == "b"
        assert "callback bug" in caplog.text

    def test_slow_callback_does_not_stall_the_heartbeat(self, server: ProtocolServer) -> None:
        """A callback that blocks does not make the heartbeat declare the link dead."""
        release = threading.Event()
        rec = Recorder()

        def slow(state: ConnectionState) -> None:
            rec.on_state_change(state)
            if state.status is Status.CONFIRMED:
                release.wait(TIMEOUT)

        c = Client(server.url, backoff=FAST, heartbeat_interval=0.02, on_state_change=slow)
        try:
            c.connect(timeout=TIMEOUT)
            assert server.wait_until(lambda: server.pings_received >= 10, TIMEOUT)
            assert c.stats().reconnects == 0
            assert c.state.status is Status.CONFIRMED
        finally:
            release.set()
            c.close()


class TestForgottenClients:
    def test_garbage_collected_client_stops_its_threads(self, server: ProtocolServer) -> None:
        """A connected client that is dropped without close() is closed and its threads end."""

        def forget() -> None:
            c = Client(server.url, backoff=FAST)
            c.connect(timeout=TIMEOUT)

        forget()
        gc.collect()
        assert server.wait_until(lambda: server.live_connections == 0, TIMEOUT)

    def test_open_client_does_not_hang_interpreter_exit(self, server: ProtocolServer) -> None:
        """A script that exits with a connected client still open exits promptly."""
        script = textwrap.dedent(
            f"""
            import wsync
            c = wsync.Client({server.url!r}, heartbeat_interval=0.05)
            c.connect(timeout=5)
            print(c.send_and_wait("hi", timeout=5).content)
            """
        )
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "hi"
        assert time.monotonic() - started < 15

    def test_client_owned_by_an_object_its_callbacks_refer_to_is_collected(
        self, server: ProtocolServer
    ) -> None:
        """`self.client = Client(url, on_response=self.handle)` leaks nothing once forgotten."""

        class Owner:
            def __init__(self) -> None:
                self.client = Client(server.url, backoff=FAST, on_response=self.handle)
                self.client.connect(timeout=TIMEOUT)

            def handle(self, response: wsync.Response) -> None:
                pass

        Owner()
        gc.collect()
        assert server.wait_until(lambda: server.live_connections == 0, TIMEOUT)

    def test_finalizer_never_closes_in_the_collecting_thread(
        self, server: ProtocolServer
    ) -> None:
        """The GC finalizer may run while the engine's lock is held: it must not take it."""
        c = Client(server.url, backoff=FAST)
        c.connect(timeout=TIMEOUT)
        engine = c._engine
        finished = threading.Event()

        def collect_while_locked() -> None:
            with engine.lock:  # as if the collector ran inside one of the client's threads
                engine.close_soon()
            finished.set()

        worker = threading.Thread(target=collect_while_locked, daemon=True)
        worker.start()
        assert finished.wait(TIMEOUT), "close_soon() blocked on the engine lock"
        assert server.wait_until(lambda: server.live_connections == 0, TIMEOUT)
        c.close()


class TestAfterClose:
    def test_flush_after_close_returns_at_once(self, server: ProtocolServer) -> None:
        """flush() on a closed client returns at once instead of waiting forever."""
        c = Client(server.url, backoff=FAST)
        c.connect(timeout=TIMEOUT)
        c.close()
        started = time.monotonic()
        assert c.flush() is True
        assert time.monotonic() - started < 1.0

    def test_system_exit_in_a_callback_does_not_kill_the_callbacks_thread(
        self, server: ProtocolServer
    ) -> None:
        """A callback raising SystemExit is logged; later callbacks and futures still run."""
        calls: list[str] = []

        def on_response(response: wsync.Response) -> None:
            calls.append(response.content)
            if response.content == "first":
                raise SystemExit(3)

        with Client(server.url, backoff=FAST, on_response=on_response) as c:
            c.send_and_wait("first", timeout=TIMEOUT)
            done = threading.Event()
            c.send("second").add_done_callback(lambda _: done.set())
            assert done.wait(TIMEOUT)
            assert c.flush(timeout=TIMEOUT)
        assert calls == ["first", "second"]
