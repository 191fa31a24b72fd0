"""A client that survives its process: Ctrl-C anywhere, fork, exit, and a close() that ends."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

import wsync
from tests.helpers import TIMEOUT
from wsync import Backoff, Client, Status
from wsync.testing import ProtocolServer

pytestmark = pytest.mark.timeout(120)

FAST = Backoff(initial=0.01, max_delay=0.05, max_attempts=None)
WSYNC_DIR = os.path.dirname(wsync.__file__)


# --- deterministic interrupts ---------------------------------------------------------------


class _Interrupt:
    """A trace function that raises KeyboardInterrupt at the ``at``-th function entry or
    return inside wsync (in this thread only: sys.settrace is per thread).

    Those are the points where CPython delivers a pending signal: when a function starts,
    after a call returns, and on backward jumps, not between any two lines (since 3.10, so
    that a ``with`` block's ``__exit__`` always runs, bpo-29988). A trace function raising at
    every *line* would also raise between a ``with`` block's last line and its ``__exit__``,
    where no real Ctrl-C can land, and leak the lock from under any code.
    """

    def __init__(self, at: int) -> None:
        self.at = at
        self.points = 0
        self.fired = False

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        if event == "call":
            if not frame.f_code.co_filename.startswith(WSYNC_DIR):
                return None
            self._point()
            return self
        if event == "return":
            self._point()
        return self

    def _point(self) -> None:
        self.points += 1
        if self.points == self.at:
            self.fired = True
            raise KeyboardInterrupt(f"injected at wsync call or return {self.at}")


def _interrupt_each_point(operation: Callable[[], object]) -> Iterator[int]:
    """Run ``operation`` again and again, interrupted at its 1st, 2nd, ... call or return
    inside wsync; yield after each interrupt; stop when it runs to the end without one."""
    at = 0
    while True:
        at += 1
        tracer = _Interrupt(at)
        sys.settrace(tracer)
        try:
            operation()
        except KeyboardInterrupt:
            assert tracer.fired, "a KeyboardInterrupt wsync did not get from the test"
        finally:
            sys.settrace(None)
        if not tracer.fired:
            return
        yield at


def _usable(client: Client) -> None:
    """The client is consistent and works normally: no lock held, nothing wedged."""
    done = threading.Event()
    failure: list[BaseException] = []

    def probe() -> None:
        try:
            assert client.send_and_wait("probe", timeout=TIMEOUT).content == "probe"
            assert client.flush(TIMEOUT)
            stats = client.stats()
            assert (stats.queued, stats.in_flight) == (0, 0), stats
        except BaseException as exc:  # reported to the test thread below
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    assert done.wait(TIMEOUT * 2), "the client is wedged after an interrupt"
    if failure:
        raise failure[0]


class TestInterrupts:
    def test_ctrl_c_anywhere_in_send(self, server: ProtocolServer) -> None:
        """A KeyboardInterrupt at any line of send() propagates and leaves the client usable."""
        with Client(server.url, backoff=FAST) as client:
            runs = 0
            for _ in _interrupt_each_point(lambda: client.send("x")):
                runs += 1
                _usable(client)
            assert runs > 10

    def test_ctrl_c_anywhere_in_send_while_messages_are_queued(
        self, server: ProtocolServer
    ) -> None:
        """Interrupts in send() behind a backlog (the writer path) leave the client usable."""
        with Client(server.url, backoff=FAST) as client:
            for _ in _interrupt_each_point(lambda: [client.send(f"b{n}") for n in range(3)]):
                _usable(client)

    def test_ctrl_c_anywhere_in_send_and_wait(self, server: ProtocolServer) -> None:
        """A KeyboardInterrupt at any line of send_and_wait() leaves the client usable."""
        with Client(server.url, backoff=FAST) as client:
            for _ in _interrupt_each_point(lambda: client.send_and_wait("x", timeout=TIMEOUT)):
                _usable(client)

    def test_ctrl_c_anywhere_in_flush(self, server: ProtocolServer) -> None:
        """A KeyboardInterrupt at any line of flush() leaves the client usable."""
        with Client(server.url, backoff=FAST) as client:

            def send_then_flush() -> None:
                client.send("x")
                client.flush(TIMEOUT)

            for _ in _interrupt_each_point(send_then_flush):
                _usable(client)

    def test_ctrl_c_anywhere_in_connect(self, server: ProtocolServer) -> None:
        """An interrupted connect() leaves a client that connects and works on the next call."""
        client = Client(server.url, backoff=FAST)
        try:
            for _ in _interrupt_each_point(lambda: client.connect(timeout=TIMEOUT)):
                client.connect(timeout=TIMEOUT)
                _usable(client)
        finally:
            client.close()

    def test_ctrl_c_anywhere_in_close(self, server: ProtocolServer) -> None:
        """An interrupted close() can be called again and then ends every thread; every future
        is settled."""
        at = 0
        while True:
            at += 1
            client = Client(server.url, backoff=FAST)
            client.connect(timeout=TIMEOUT)
            server.stall()
            futures = [client.send(f"m{n}") for n in range(3)]
            tracer = _Interrupt(at)
            sys.settrace(tracer)
            try:
                client.close(timeout=0.2)
            except KeyboardInterrupt:
                assert tracer.fired
            finally:
                sys.settrace(None)
                server.unstall()
            client.close(timeout=TIMEOUT)
            assert client.state.status is Status.CLOSED
            assert all(f.done() for f in futures), at
            if not tracer.fired:
                break
        assert at > 10
        # The autouse fixture checks that no wsync- thread outlived the closes.


SIGINT_SCRIPT = textwrap.dedent(
    """
    import sys, wsync
    signals = int(sys.argv[2])
    client = wsync.Client(sys.argv[1], backoff=wsync.Backoff(initial=0.01, max_attempts=None))
    client.connect(timeout=10)
    caught = sent = 0
    say = "ready"
    while True:
        try:
            # Said inside the try: the next signal, sent once the parent reads this line,
            # must land in the loop, never in the except clause below.
            if say:
                print(say, flush=True)
                say = ""
            if caught == signals:
                break
            while True:
                client.send("x")
                sent += 1
                if sent % 64 == 0:
                    client.flush(10)
        except KeyboardInterrupt:
            caught += 1
            say = "caught"
    assert client.flush(10)
    assert client.send_and_wait("final", timeout=10).content == "final"
    stats = client.stats()
    assert (stats.queued, stats.in_flight) == (0, 0), stats
    client.close()
    print("ok", caught, flush=True)
    """
)


class TestSigint:
    def test_no_ctrl_c_is_swallowed_in_a_send_loop(self, server: ProtocolServer) -> None:
        """Every SIGINT sent to a process in a send loop reaches it as a KeyboardInterrupt, and
        the client still works afterwards."""
        signals = 150
        proc = subprocess.Popen(
            [sys.executable, "-c", SIGINT_SCRIPT, server.url, str(signals)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            for n in range(signals):
                proc.send_signal(signal.SIGINT)
                line = _readline(proc, TIMEOUT)
                assert line == "caught", f"signal {n + 1} of {signals} was swallowed ({line!r})"
            assert _readline(proc, TIMEOUT * 2) == f"ok {signals}"
            assert proc.wait(TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
            if proc.stdout is not None:
                proc.stdout.close()


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of the child's stdout, waiting at most ``timeout`` (in a helper thread)."""
    assert proc.stdout is not None
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return out[0].strip() if out else "<nothing within the timeout>"


# --- fork -----------------------------------------------------------------------------------


def _in_child(body: Callable[[], object]) -> dict[str, Any]:
    """Fork; run ``body`` in the child; return what it returned (a JSON dict) or its error."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 0
        try:
            os.close(read_fd)
            result: object = body()
        except BaseException as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
            code = 1
        try:
            os.write(write_fd, json.dumps(result).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    _wait_child(pid)
    return json.loads(b"".join(chunks) or b"{}")  # type: ignore[no-any-return]


def _wait_child(pid: int) -> int:
    deadline = time.monotonic() + TIMEOUT * 2
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        threading.Event().wait(0.01)  # polling a child's exit: there is no event to wait on
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child did not exit in time")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
class TestFork:
    def test_an_inherited_client_is_inert_in_the_child(self, server: ProtocolServer) -> None:
        """In a forked child the parent's client raises WsyncError at once, never writing on
        the parent's socket; a fresh client there works; the parent goes on."""
        with Client(server.url, backoff=FAST) as client:
            client.send_and_wait("before", timeout=TIMEOUT)

            def child() -> dict[str, Any]:
                outcome: dict[str, Any] = {}
                for name, call in [
                    ("send", lambda: client.send("from the child")),
                    ("flush", lambda: client.flush(1)),
                    ("stats", client.stats),
                    ("reconnect", client.reconnect),
                ]:
                    started = time.monotonic()
                    try:
                        call()
                        outcome[name] = "returned"
                    except wsync.WsyncError as exc:
                        outcome[name] = "fork" if "fork" in str(exc) else str(exc)
                    outcome[name + "_s"] = time.monotonic() - started
                client.close()  # does nothing in the child: not its client
                with Client(server.url, backoff=FAST) as fresh:
                    outcome["fresh"] = fresh.send_and_wait("child", timeout=TIMEOUT).content
                return outcome

            outcome = _in_child(child)
            assert outcome.get("error") is None, outcome
            for name in ("send", "flush", "stats", "reconnect"):
                assert outcome[name] == "fork", outcome
                assert outcome[name + "_s"] < 1.0
            assert outcome["fresh"] == "child"
            assert "from the child" not in [r.content for r in server.received]
            for n in range(3):  # the parent's connection was not touched
                assert client.send_and_wait(f"after {n}", timeout=TIMEOUT).content == f"after {n}"
            assert client.stats().reconnects == 0

    def test_many_forks_leave_the_parent_working(self, server: ProtocolServer) -> None:
        """The parent keeps its connection across any number of forks whose children exit."""
        with Client(server.url, backoff=FAST) as client:
            for n in range(5):
                assert _in_child(lambda: {"ok": True}) == {"ok": True}
                assert client.send_and_wait(f"m{n}", timeout=TIMEOUT).content == f"m{n}"
            assert client.stats().reconnects == 0

    def test_a_fork_pool_of_fresh_clients(self, server: ProtocolServer) -> None:
        """A fork-start multiprocessing pool whose workers make their own clients works, and
        the parent's client is untouched."""
        with Client(server.url, backoff=FAST) as client:
            client.send_and_wait("parent", timeout=TIMEOUT)
            context = multiprocessing.get_context("fork")
            with context.Pool(2) as pool:
                results = pool.map(_pool_worker, [(server.url, n) for n in range(6)], chunksize=1)
            assert results == [f"w{n}" for n in range(6)]
            assert client.send_and_wait("parent again", timeout=TIMEOUT).content == "parent again"
            assert client.stats().reconnects == 0


def _pool_worker(args: tuple[str, int]) -> str:
    url, n = args
    with Client(url, backoff=FAST) as client:
        return client.send_and_wait(f"w{n}", timeout=TIMEOUT).content


CLAIM_SCRIPT = textwrap.dedent(
    """
    import sys, wsync
    try:
        outbox = wsync.SQLiteOutbox(sys.argv[1])
        wsync.Client("ws://127.0.0.1:9", client_id="durable", outbox=outbox)
        print("claimed")
    except wsync.OutboxError:
        print("refused")
    """
)

FORK_EXIT_SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys, wsync
    url, path, claim = sys.argv[1], sys.argv[2], sys.argv[3]
    client = wsync.Client(url, client_id="durable", outbox=wsync.SQLiteOutbox(path),
                          backoff=wsync.Backoff(initial=0.01, max_attempts=None))
    client.connect(timeout=10)
    client.send_and_wait("before", timeout=10)
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # the child ends as a script does: exit hooks, garbage collection
    os.waitpid(pid, 0)
    report = {"after": client.send_and_wait("after", timeout=10).content,
              "reconnects": client.stats().reconnects}
    third = subprocess.run([sys.executable, "-c", claim, path],
                           capture_output=True, text=True, timeout=30)
    report["third"] = third.stdout.strip()
    client.close()
    print(json.dumps(report), flush=True)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
class TestForkedChildExit:
    def test_child_exit_leaves_the_parents_socket_and_outbox_alone(
        self, server: ProtocolServer, tmp_path: Any
    ) -> None:
        """A child that exits normally neither closes the parent's connection nor releases its
        outbox lock: a third process cannot claim the outbox."""
        result = subprocess.run(
            [
                sys.executable, "-c", FORK_EXIT_SCRIPT, server.url, str(tmp_path / "o.db"),
                CLAIM_SCRIPT,
            ],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report == {"after": "after", "reconnects": 0, "third": "refused"}


# --- close() ends callbacks -----------------------------------------------------------------


class TestCloseEndsCallbacks:
    def test_no_callback_runs_after_close_returns(
        self, server: ProtocolServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With a slow on_response and many responses queued, close(timeout=1) returns in
        about a second, the CLOSED callback has run, no callback runs later, and the WARNING
        counts the dropped ones."""
        calls = 0
        closed_seen = threading.Event()
        slow = threading.Event()  # never set: each call waits its 20 ms out

        def on_response(response: wsync.Response) -> None:
            nonlocal calls
            calls += 1
            slow.wait(0.02)

        def on_state_change(state: wsync.ConnectionState) -> None:
            if state.status is Status.CLOSED:
                closed_seen.set()

        client = Client(
            server.url, backoff=FAST, on_response=on_response, on_state_change=on_state_change
        )
        client.connect(timeout=TIMEOUT)
        futures = [client.send(f"m{n}") for n in range(500)]
        # Every response is in (futures settle on the reader); the callbacks lag far behind.
        for future in futures:
            future.result(TIMEOUT)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="wsync"):
            client.close(timeout=1.0)
        assert time.monotonic() - started < 2.5
        at_return = calls
        assert closed_seen.is_set(), "close() returned before the CLOSED callback ran"
        assert threading.Event().wait(0.3) is False  # let a straggler show itself
        assert calls == at_return, "a callback ran after close() returned"
        assert calls < 500
        assert any("callbacks dropped" in r.getMessage() for r in caplog.records)


# --- exit -----------------------------------------------------------------------------------

EXECUTOR_SCRIPT = textwrap.dedent(
    """
    import concurrent.futures, sys, wsync
    from wsync.testing import ProtocolServer
    server = ProtocolServer().start()
    client = wsync.Client(server.url)
    client.connect(timeout=10)
    server.stall()
    pool = concurrent.futures.ThreadPoolExecutor(1)

    def worker():
        try:
            client.send_and_wait("never answered", timeout=None)
        except wsync.ClientClosed:
            print("released", flush=True)

    pool.submit(worker)
    print("waiting", flush=True)
    # the main thread ends here, without pool.shutdown() or client.close()
    """
)


class TestExit:
    def test_exit_releases_a_worker_blocked_without_timeout(self) -> None:
        """A ThreadPoolExecutor worker blocked in send_and_wait(timeout=None) does not keep the
        process alive: wsync's exit hook runs before the pool joins it."""
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", EXECUTOR_SCRIPT], capture_output=True, text=True, timeout=60
        )
        assert time.monotonic() - started < 20
        assert result.stdout.split() == ["waiting", "released"], result.stderr
        assert "1 messages left unanswered" in result.stderr


class TestHangingResolver:
    def test_one_resolver_thread_however_many_attempts(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A DNS lookup that hangs leaves one wsync-resolve thread, not one per attempt;
        close() names it, and it ends as soon as the lookup returns."""
        import socket

        release = threading.Event()
        real = socket.getaddrinfo

        def hanging(host: str, *args: Any, **kwargs: Any) -> Any:
            if host == "hangs.example":
                release.wait(TIMEOUT * 4)
            return real("127.0.0.1", *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", hanging)
        client = Client(
            "ws://hangs.example:9", connect_timeout=0.1,
            backoff=Backoff(initial=0.01, max_delay=0.01, max_attempts=None),
        )
        attempts = threading.Event()
        seen: list[int] = []

        def count(state: wsync.ConnectionState) -> None:
            seen.append(state.attempt)
            if state.attempt >= 5:
                attempts.set()

        client.add_listener(on_state_change=count)
        try:
            client.connect(wait=False)
            assert attempts.wait(TIMEOUT)
            resolvers = [t for t in threading.enumerate() if t.name == "wsync-resolve"]
            assert len(resolvers) == 1
            with caplog.at_level(logging.WARNING, logger="wsync"):
                client.close(timeout=0.3)
            assert any("wsync-resolve" in r.getMessage() for r in caplog.records)
        finally:
            release.set()
        for thread in resolvers:
            thread.join(TIMEOUT)
            assert not thread.is_alive()
