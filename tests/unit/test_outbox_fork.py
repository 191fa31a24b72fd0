"""SQLiteOutbox across fork(): inert in the child, untouched for the parent.

Each test forks with ``os.fork()``; the child runs a few checks, reports them as JSON through a
pipe and leaves with ``os._exit`` (never through pytest). The parent reads the report and waits
for the child with a bounded ``waitpid`` loop.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TIMEOUT
from wsync._outbox import OutboxError
from wsync._sqlite_outbox import SQLiteOutbox

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

ROOT = Path(__file__).resolve().parents[2]
CLIENT = "client-1"


def wait_child(pid: int) -> int:
    """Wait, at most TIMEOUT, for child ``pid`` to end; return its exit code (kill it if late)."""
    deadline = time.monotonic() + TIMEOUT
    pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"child {pid} still running after {TIMEOUT} s")
            # Readable when the child ends; without pidfd, poll.
            select.select([pidfd] if pidfd is not None else [], [], [], min(remaining, 0.05))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` in a forked child; return the dict it reported (or its exception)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_fd)
            try:
                report = work()
            except BaseException as exc:
                report = {"child error": repr(exc)}
                code = 1
            os.write(write_fd, json.dumps(report).encode())
            os.close(write_fd)
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = pipe.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
    code = wait_child(pid)
    report: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    assert code == 0, report
    return report


def refusals(box: SQLiteOutbox) -> dict[str, str]:
    """Every method of ``box``: what OutboxError it raised ('' if it raised none)."""
    calls: dict[str, Callable[[], object]] = {
        "add": lambda: box.add("from-child", "x"),
        "discard": lambda: box.discard(["p1"]),
        "count_deliveries": lambda: box.count_deliveries(["p1"]),
        "claim": lambda: box.claim(CLIENT),
        "release": box.release,
        "pending_count": box.pending_count,
        "len": lambda: len(box),
    }
    result: dict[str, str] = {}
    for name, call in calls.items():
        try:
            call()
        except OutboxError as exc:
            result[name] = str(exc)
        else:
            result[name] = ""
    return result


def claim_from_another_process(path: Path) -> str:
    """Try to claim ``path`` from a new Python process: 'claimed' or the error message."""
    code = (
        "import sys\n"
        "from wsync._sqlite_outbox import SQLiteOutbox, OutboxError\n"
        "box = SQLiteOutbox(sys.argv[1])\n"
        "try:\n"
        "    box.claim('client-1')\n"
        "except OutboxError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('claimed')\n"
        "    box.release()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=TIMEOUT * 2,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode().strip()


def ids_in(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("SELECT message_id FROM messages ORDER BY seq")]
    finally:
        conn.close()


@pytest.fixture
def parent_box(tmp_path: Path) -> Iterator[SQLiteOutbox]:
    """A claimed outbox holding 'p1', released after the test."""
    box = SQLiteOutbox(tmp_path / "outbox.sqlite", synchronous="NORMAL")
    box.claim(CLIENT)
    box.add("p1", "x")
    try:
        yield box
    finally:
        box.release()


class TestInheritedOutbox:
    def test_every_method_refuses(self, parent_box: SQLiteOutbox) -> None:
        """In the child, every method of an inherited outbox raises OutboxError naming fork."""

        def work() -> dict[str, Any]:
            return {"refusals": refusals(parent_box), "repr": repr(parent_box)}

        report = in_child(work)
        for name, message in report["refusals"].items():
            assert "parent process" in message and "fork" in message, (name, message)
            assert parent_box.path in message
        assert "inherited" in report["repr"]

    def test_parent_keeps_its_lock(self, tmp_path: Path) -> None:
        """After the child released and garbage-collected the outbox, the parent still holds it."""
        path = tmp_path / "outbox.sqlite"
        holder = [SQLiteOutbox(path, synchronous="NORMAL")]  # the only reference
        holder[0].claim(CLIENT)
        try:
            holder[0].add("p1", "x")

            def work() -> dict[str, Any]:
                box = holder.pop()
                collected = weakref.ref(box)
                with contextlib.suppress(OutboxError):
                    box.release()
                del box
                gc.collect()
                return {"collected": collected() is None}

            assert in_child(work)["collected"]
            assert "claimed by another live client" in claim_from_another_process(path)
            holder[0].add("p2", "y")
            assert ids_in(path) == ["p1", "p2"]
        finally:
            holder[0].release()
        assert claim_from_another_process(path) == "claimed"

    def test_same_path_in_child_is_refused(self, parent_box: SQLiteOutbox) -> None:
        """A new outbox on the parent's path, in the child, is refused: the parent holds it."""

        def work() -> dict[str, Any]:
            try:
                SQLiteOutbox(parent_box.path).claim(CLIENT)
            except OutboxError as exc:
                return {"error": str(exc)}
            return {"error": ""}

        assert "claimed by another live client" in in_child(work)["error"]
        parent_box.add("p2", "y")

    def test_fresh_outbox_in_child_works(self, parent_box: SQLiteOutbox, tmp_path: Path) -> None:
        """A new outbox on another path works in the child: claim, add, count, discard, release."""
        other = tmp_path / "child.sqlite"

        def work() -> dict[str, Any]:
            box = SQLiteOutbox(other, synchronous="NORMAL")
            box.claim("child")
            box.add("c1", "x")
            box.add("c2", "y")
            box.count_deliveries(["c1"])
            box.discard(["c2"])
            box.release()
            again = SQLiteOutbox(other)
            leftovers = again.claim("child")
            again.release()
            return {"leftovers": [[m.message_id, m.deliveries] for m in leftovers]}

        assert in_child(work)["leftovers"] == [["c1", 1]]

    def test_parent_survives_many_forks(self, parent_box: SQLiteOutbox) -> None:
        """Twenty children that poke the inherited outbox and exit leave the parent working."""
        path = Path(parent_box.path)
        for n in range(20):

            def work() -> dict[str, Any]:
                refused = refusals(parent_box)
                return {"all refused": all(refused.values())}

            assert in_child(work)["all refused"]
            parent_box.add(f"after-{n}", "x")
            parent_box.count_deliveries([f"after-{n}"])
        assert len(ids_in(path)) == 21
        assert "claimed by another live client" in claim_from_another_process(path)
        parent_box.release()
        box = SQLiteOutbox(path)
        leftovers = box.claim(CLIENT)
        box.release()
        assert [m.message_id for m in leftovers] == ["p1", *(f"after-{n}" for n in range(20))]
        assert {m.deliveries for m in leftovers[1:]} == {1}


SCRIPT = """
import os, sqlite3, sys

class Spy(sqlite3.Connection):
    # Reports any close or deallocation of the connection in another process than its own.
    def close(self):
        if os.getpid() != OWNER:
            sys.stderr.write(f"closed in {os.getpid()}\\n")
        super().close()

    def __del__(self):
        if os.getpid() != OWNER:
            sys.stderr.write(f"deallocated in {os.getpid()}\\n")

OWNER = os.getpid()
connect = sqlite3.connect
sqlite3.connect = lambda *args, **kwargs: connect(*args, factory=Spy, **kwargs)

from wsync._sqlite_outbox import SQLiteOutbox, OutboxError

box = SQLiteOutbox(sys.argv[1])
box.claim("client-1")
box.add("before", "x")
pid = os.fork()
if pid == 0:
    # The child ends as a script does: a release from an exit hook, then interpreter shutdown.
    import atexit

    def release_quietly():
        try:
            box.release()
        except OutboxError:
            print("release refused in the child", file=sys.stderr)

    atexit.register(release_quietly)
    try:
        box.add("from-child", "x")
    except OutboxError:
        pass
    sys.exit(0)
_, status = os.waitpid(pid, 0)
print("child exited", os.waitstatus_to_exitcode(status), flush=True)
sys.stdin.readline()
box.add("after", "x")
box.release()
print("released", flush=True)
"""


class TestChildExit:
    def test_child_interpreter_exit(self, tmp_path: Path) -> None:
        """A child that exits through interpreter shutdown leaves the parent's lock and WAL."""
        path = tmp_path / "outbox.sqlite"
        parent = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        try:
            out, err = b"", b""
            assert parent.stdout is not None and parent.stdin is not None
            ready, _, _ = select.select([parent.stdout], [], [], TIMEOUT * 2)
            assert ready, "the script did not fork in time"
            line = parent.stdout.readline()
            assert line == b"child exited 0\n", line
            # The child is gone, its parent alive: the file is still held.
            assert "claimed by another live client" in claim_from_another_process(path)
            out, err = parent.communicate(b"go\n", timeout=TIMEOUT * 2)
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait()
        assert parent.returncode == 0, err.decode(errors="replace")
        assert out == b"released\n"
        # Nothing was closed or deallocated outside its owner process.
        assert err == b"release refused in the child\n", err.decode(errors="replace")
        assert ids_in(path) == ["before", "after"]
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            conn.close()
