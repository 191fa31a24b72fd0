"""The durable outbox through the Client: restarts, crashes, and what leaves the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import wsync
from tests.helpers import TIMEOUT
from tests.integration._recorder import Recorder
from wsync import Backoff, Client, SQLiteOutbox
from wsync.testing import ProtocolServer

pytestmark = pytest.mark.timeout(90)

FAST = Backoff(initial=0.01, max_delay=0.05, max_attempts=None)


def outbox(path: Path) -> SQLiteOutbox:
    return SQLiteOutbox(path, synchronous="NORMAL")


class TestRestart:
    def test_unanswered_messages_survive_close_and_go_first(
        self, server: ProtocolServer, tmp_path: Path
    ) -> None:
        """Messages left unanswered at close() are sent by the next client first, in order."""
        path = tmp_path / "out.sqlite"
        first = Client(server.url, client_id="durable", outbox=outbox(path), backoff=FAST)
        for i in range(5):
            first.send(f"left{i}")
        first.close()
        assert len(SQLiteOutbox(path)) == 5

        rec = Recorder()
        second = Client(
            server.url, client_id="durable", outbox=outbox(path), backoff=FAST, **rec.callbacks()
        )
        try:
            new = second.send("new")
            second.connect(timeout=TIMEOUT)
            assert new.result(TIMEOUT).content == "new"
            assert second.flush(TIMEOUT)
            assert rec.wait(lambda r: len(r.responses) == 6)
            assert [r.content for r in server.received] == [f"left{i}" for i in range(5)] + ["new"]
            assert [r.content for r in rec.responses[:5]] == [f"left{i}" for i in range(5)]
        finally:
            second.close()
        assert len(SQLiteOutbox(path)) == 0

    def test_answered_cancelled_and_failed_messages_leave_the_file(
        self, server: ProtocolServer, tmp_path: Path
    ) -> None:
        """Only unanswered messages stay: answered, cancelled and timed-out ones are removed."""
        path = tmp_path / "out.sqlite"
        c = Client(server.url, client_id="tidy", outbox=outbox(path), backoff=FAST)
        try:
            cancelled = c.send("cancelled")
            assert cancelled.cancel()
            with pytest.raises(wsync.ResponseTimeout):
                c.send_and_wait("timed out", timeout=0.01)
            c.connect(timeout=TIMEOUT)
            c.send_and_wait("answered", timeout=TIMEOUT)
            assert c.flush(TIMEOUT)
        finally:
            c.close()
        assert len(SQLiteOutbox(path)) == 0
        assert [r.content for r in server.received] == ["answered"]

    def test_second_live_client_on_the_same_file_is_refused(self, tmp_path: Path) -> None:
        """A second live client on one outbox file gets OutboxError, not two writers."""
        path = tmp_path / "out.sqlite"
        first = Client("ws://127.0.0.1:1", client_id="one", outbox=outbox(path))
        try:
            with pytest.raises(wsync.OutboxError):
                Client("ws://127.0.0.1:1", client_id="one", outbox=outbox(path))
        finally:
            first.close()
        Client("ws://127.0.0.1:1", client_id="one", outbox=outbox(path)).close()

    def test_foreign_file_is_refused(self, tmp_path: Path) -> None:
        """A file that is not a wsync outbox gives OutboxError and is left untouched."""
        path = tmp_path / "notes.txt"
        path.write_bytes(b"my precious notes")
        with pytest.raises(wsync.OutboxError):
            Client("ws://127.0.0.1:1", client_id="x", outbox=outbox(path))
        assert path.read_bytes() == b"my precious notes"

    def test_random_client_id_with_durable_outbox_is_refused(self, tmp_path: Path) -> None:
        """A durable outbox needs a fixed client_id (a random one could not reclaim it)."""
        with pytest.raises(ValueError, match="client_id"):
            Client("ws://127.0.0.1:1", outbox=outbox(tmp_path / "o.sqlite"))

    def test_concurrent_durable_sends_keep_per_thread_order(
        self, server: ProtocolServer, tmp_path: Path
    ) -> None:
        """Many threads sending through one SQLiteOutbox: all delivered, per-thread order kept."""
        path = tmp_path / "out.sqlite"
        with Client(server.url, client_id="many", outbox=outbox(path), backoff=FAST) as c:

            def work(t: int) -> None:
                for i in range(100):
                    c.send(f"{t}:{i}")

            threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(TIMEOUT)
            assert c.flush(TIMEOUT)
        contents = [r.content for r in server.received]
        for t in range(4):
            assert [int(x.split(":")[1]) for x in contents if x.startswith(f"{t}:")] == list(
                range(100)
            )
        assert len(SQLiteOutbox(path)) == 0


CHILD = textwrap.dedent(
    """
    import sys, wsync
    url, path, synchronous = sys.argv[1], sys.argv[2], sys.argv[3]
    c = wsync.Client(url, client_id="crashy",
                     outbox=wsync.SQLiteOutbox(path, synchronous=synchronous),
                     backoff=wsync.Backoff(initial=0.01, max_attempts=None))
    c.connect(timeout=10)
    i = 0
    while True:
        f = c.send(f"msg{i}")
        print(f.message_id, flush=True)   # send() has returned: the message is on disk
        i += 1
    """
)


class TestCrash:
    @pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
    def test_sigkill_mid_stream_loses_nothing(
        self, server: ProtocolServer, tmp_path: Path, synchronous: str
    ) -> None:
        """Kill -9 a sending process; a new one on the same file delivers every returned send."""
        path = tmp_path / "crash.sqlite"
        server.hold_responses()  # nothing answered: everything stays in the file
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, server.url, str(path), synchronous],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        printed: list[str] = []
        try:
            assert child.stdout is not None
            for line in child.stdout:
                printed.append(line.strip())
                if len(printed) >= 300:
                    break
            child.send_signal(signal.SIGKILL)
            child.wait(TIMEOUT)
            printed += [line.strip() for line in child.stdout.read().splitlines()]
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert len(printed) >= 300
        server.release_responses()
        before = len(server.received)

        restarted = Client(
            server.url, client_id="crashy", outbox=SQLiteOutbox(path, synchronous=synchronous),
            backoff=FAST,
        )
        try:
            restarted.connect(timeout=TIMEOUT)
            assert restarted.flush(timeout=30)
        finally:
            restarted.close()
        received = [r.message_id for r in server.received]
        resent = received[before:]
        assert set(printed) <= set(received)
        # First arrivals follow send order.
        first_seen: dict[str, int] = {}
        for index, mid in enumerate(received):
            first_seen.setdefault(mid, index)
        positions = [first_seen[mid] for mid in printed]
        assert positions == sorted(positions)
        assert resent, "the restarted client had nothing to resend"
        assert len(SQLiteOutbox(path)) == 0
