"""SQLiteOutbox under interrupts: a KeyboardInterrupt at every step of every operation.

The injection is deterministic. ``Interrupter`` is a ``sys.settrace`` function that raises
``KeyboardInterrupt`` at the n-th trace event of the outbox module's code (each ``call``,
``line`` and ``return``; the ``return`` of the outermost frame is left out: an interrupt there is
the caller's, after the call returned), and at the return of ``threading.Condition.wait`` (woken,
lock taken back). Each test runs an operation with n = 1, 2, ... until it completes without the
interrupt firing, so every step of it is hit once. After each interrupt: the exception
propagated, the outbox's bookkeeping is clean (no open transaction, no writer flag, no batch
left, durability setting restored), normal use goes on, and the file holds exactly the messages
whose add returned. ``ConnectionProxy`` does the same at the SQL level, raising before or after
the k-th statement, and holds ``BEGIN`` at a gate to line threads up for group commit.
"""

from __future__ import annotations

import collections
import dis
import functools
import json
import linecache
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TIMEOUT
from tests.unit.test_outbox_deliveries import write_v1_file
from wsync import _sqlite_outbox
from wsync._outbox import OutboxError, StoredMessage
from wsync._sqlite_outbox import SQLiteOutbox, _Entry

ROOT = Path(__file__).resolve().parents[2]
CLIENT = "client-1"
OUTBOX_FILE = _sqlite_outbox.__file__
WAIT_CODE = threading.Condition.wait.__code__
ADD_CODE = SQLiteOutbox._add.__code__
NEVER = 10**9
LEVEL = {"FULL": 2, "NORMAL": 1}  # PRAGMA synchronous reads back as a number

Armed = Callable[[types.FrameType], bool]


class Interrupter:
    """Raises KeyboardInterrupt at the n-th traced event of the outbox's code, in any thread.

    Install it per thread with ``run``. It fires once, in whichever traced thread reaches event
    n; after that (and in a thread where it fired, Python removes the trace function) nothing
    more happens. With ``armed``, a thread counts only events from the first one where
    ``armed(frame)`` holds, so that the count follows one role (a leader, a follower) whichever
    thread plays it. It also counts each thread's calls of ``Condition.wait``, for tests to
    wait until a thread waits.
    """

    def __init__(self, n: int, armed: Armed | None = None) -> None:
        self.n = n
        self.armed = armed
        self.count = 0
        self.fired = False
        self.where = ""
        self.changed = threading.Condition()
        self.waits: collections.Counter[str] = collections.Counter()
        self._armed_threads: set[int] = set()
        self._lines: dict[types.FrameType, set[int]] = {}

    def run(self, func: Callable[..., object], *args: Any) -> str:
        """Call ``func(*args)`` traced: 'returned', 'interrupted' or 'error' (OutboxError)."""
        sys.settrace(self._global)
        try:
            func(*args)
        except KeyboardInterrupt:
            return "interrupted"
        except OutboxError:
            return "error"
        finally:
            sys.settrace(None)
        return "returned"

    def _global(self, frame: types.FrameType, event: str, arg: object) -> Any:
        code = frame.f_code
        if code.co_filename == OUTBOX_FILE:
            self._event(frame, event)
            return self._local
        if code is WAIT_CODE:
            with self.changed:
                self.waits[threading.current_thread().name] += 1
                self.changed.notify_all()
            return self._local_wait
        return None

    def _local(self, frame: types.FrameType, event: str, arg: object) -> Any:
        if event == "line":
            seen = self._lines.setdefault(frame, set())
            if _no_signal_here(frame, revisit=frame.f_lineno in seen):
                return self._local
            seen.add(frame.f_lineno)
            self._event(frame, event)
        elif event == "return":
            self._lines.pop(frame, None)
            if _called_by_outbox(frame):
                self._event(frame, event)
        return self._local

    def _local_wait(self, frame: types.FrameType, event: str, arg: object) -> Any:
        if event == "return":
            self._event(frame, event)
        return self._local_wait

    def _event(self, frame: types.FrameType, event: str) -> None:
        ident = threading.get_ident()
        if self.armed is not None and ident not in self._armed_threads:
            if not self.armed(frame):
                return
            self._armed_threads.add(ident)
        with self.changed:
            if self.fired:
                return
            self.count += 1
            if self.count < self.n:
                return
            self.fired = True
            self.where = f"{event} in {frame.f_code.co_name} line {frame.f_lineno}"
        raise KeyboardInterrupt(f"injected: {self.where}")


@functools.cache
def _opnames(code: types.CodeType) -> dict[int, str]:
    return {i.offset: i.opname for i in dis.get_instructions(code)}


def _no_signal_here(frame: types.FrameType, *, revisit: bool) -> bool:
    """Whether a 'line' event is a place where no real signal can raise.

    Python runs signal handlers only at some instructions (a call, a backward jump, a function's
    start), never at a ``NOP`` (what ``try:``, ``break`` or a bare ``return`` start with), a
    ``POP_EXCEPT`` (the end of an ``except`` block), nor in the sequence that calls a ``with``
    block's ``__exit__`` when it is C code (the locks here). The trace's line events there are
    artefacts, and raising at them escapes the very handlers Python compiles around the block
    (the lock would stay held, the handled exception stay set). Leaving them out keeps every
    point a real Ctrl-C can reach.
    """
    if _opnames(frame.f_code).get(frame.f_lasti) in ("NOP", "POP_EXCEPT"):
        return True
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    return revisit and line.lstrip().startswith("with ")


def _called_by_outbox(frame: types.FrameType) -> bool:
    return frame.f_back is not None and frame.f_back.f_code.co_filename == OUTBOX_FILE


def _add_entry(frame: types.FrameType | None) -> _Entry | None:
    """The entry of the ``_add`` call that ``frame`` runs in, if any."""
    while frame is not None:
        if frame.f_code is ADD_CODE:
            entry = frame.f_locals.get("entry")
            return entry if isinstance(entry, _Entry) else None
        frame = frame.f_back
    return None


def leading(frame: types.FrameType) -> bool:
    """Armed once this thread's add took its batch to commit it."""
    entry = _add_entry(frame)
    return entry is not None and entry.batch is not None and entry.batch.leader is entry


def following(frame: types.FrameType) -> bool:
    """Armed once another thread's add took this thread's batch."""
    entry = _add_entry(frame)
    return (
        entry is not None
        and entry.batch is not None
        and entry.batch.leader is not None
        and entry.batch.leader is not entry
    )


class ConnectionProxy:
    """Stands in for an outbox's connection; ``before``/``after`` see each statement."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.before: Callable[[str], None] = lambda sql: None
        self.after: Callable[[str], None] = lambda sql: None

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self.before(sql)
        cursor = self.conn.execute(sql, *args)
        self.after(sql)
        return cursor

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        self.before(sql)
        cursor = self.conn.executemany(sql, rows)
        self.after(sql)
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


class Gate:
    """A ``before`` hook that holds each ``BEGIN IMMEDIATE`` until let through."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.arrived = 0
        self.permits = 0
        self.is_open = False

    def __call__(self, sql: str) -> None:
        if sql != "BEGIN IMMEDIATE":
            return
        with self.cond:
            self.arrived += 1
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: self.is_open or self.permits > 0, TIMEOUT)
            if not self.is_open:
                self.permits -= 1

    def let_one(self) -> None:
        with self.cond:
            self.permits += 1
            self.cond.notify_all()

    def open(self) -> None:
        with self.cond:
            self.is_open = True
            self.cond.notify_all()

    def wait_arrived(self, n: int, or_else: Callable[[], bool] = lambda: False) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.arrived >= n or or_else(), TIMEOUT)


class Adder(threading.Thread):
    """Adds one message (traced by ``interrupter`` if given) and records the outcome."""

    def __init__(
        self,
        box: SQLiteOutbox,
        message_id: str,
        outcomes: dict[str, str],
        changed: threading.Condition,
        interrupter: Interrupter | None = None,
    ) -> None:
        super().__init__(name=f"adder-{message_id}", daemon=True)
        self.box = box
        self.message_id = message_id
        self.outcomes = outcomes
        self.changed = changed
        self.interrupter = interrupter

    def run(self) -> None:
        interrupter = self.interrupter or Interrupter(NEVER)
        outcome = interrupter.run(self.box.add, self.message_id, "x")
        with self.changed:
            self.outcomes[self.message_id] = outcome
            self.changed.notify_all()


def stored(path: Path) -> list[tuple[str, str, int]]:
    """(message_id, content, deliveries) of every row, in order, through a read-only connection."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT message_id, content, deliveries FROM messages ORDER BY seq")
        return [(m, c, d) for m, c, d in rows]
    finally:
        conn.close()


def stored_ids(path: Path) -> list[str]:
    return [row[0] for row in stored(path)]


def assert_clean(box: SQLiteOutbox) -> None:
    """No writer, batch, pending deletion or transaction left; durability setting as chosen."""
    with box._cond:
        assert box._state == "claimed"
        assert box._writing is None
        assert box._open.entries == []
        assert box._forget == []
    with box._db_lock:
        conn = box._conn
        assert conn is not None
        assert not conn.in_transaction
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == LEVEL[box.synchronous]


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(TIMEOUT)
    assert not [t.name for t in threads if t.is_alive()], "an add hangs"


@pytest.fixture
def boxes() -> Iterator[list[SQLiteOutbox]]:
    """Outboxes a test appends here are released after it."""
    made: list[SQLiteOutbox] = []
    yield made
    # Bounded: an outbox left wedged by a failed test must fail it, not hang the run.
    releaser = threading.Thread(target=lambda: [box.release() for box in made], daemon=True)
    releaser.start()
    releaser.join(TIMEOUT)
    assert not releaser.is_alive(), "release() hangs"


def claimed(path: Path, boxes: list[SQLiteOutbox], synchronous: str = "NORMAL") -> SQLiteOutbox:
    box = SQLiteOutbox(path, synchronous=synchronous)
    boxes.append(box)
    box.claim(CLIENT)
    return box


def gated(path: Path, boxes: list[SQLiteOutbox]) -> tuple[SQLiteOutbox, ConnectionProxy, Gate]:
    """A claimed outbox whose connection is a proxy with a closed gate on BEGIN."""
    box = claimed(path, boxes)
    assert box._conn is not None
    proxy = ConnectionProxy(box._conn)
    gate = Gate()
    proxy.before = gate
    box._conn = proxy  # type: ignore[assignment]  # white-box: a test double
    return box, proxy, gate


class TestOneThread:
    @pytest.mark.parametrize("case", ["new id", "duplicate id", "unencodable content"])
    def test_add(self, tmp_path: Path, boxes: list[SQLiteOutbox], case: str) -> None:
        """An interrupted add stores nothing and leaves the outbox clean; a returned one stores."""
        db = tmp_path / "outbox.sqlite"
        box = claimed(db, boxes, synchronous="FULL")
        box.add("dup", "first")
        expected = [("dup", "first", 0)]
        n = 0
        while True:
            n += 1
            interrupter = Interrupter(n)
            if case == "new id":
                outcome = interrupter.run(box.add, f"t{n}", "text")
                if outcome == "returned":
                    expected.append((f"t{n}", "text", 0))
            elif case == "duplicate id":
                outcome = interrupter.run(box.add, "dup", "second")
                assert outcome == ("interrupted" if interrupter.fired else "error")
            else:
                outcome = interrupter.run(box.add, f"s{n}", "bad \ud800")
                assert outcome == ("interrupted" if interrupter.fired else "error")
            assert outcome == "interrupted" or not interrupter.fired, interrupter.where
            assert_clean(box)
            assert stored(db) == expected, interrupter.where
            box.add(f"n{n}", "normal")
            box.count_deliveries([f"n{n}"])
            expected.append((f"n{n}", "normal", 1))
            assert stored(db) == expected, interrupter.where
            if not interrupter.fired:
                break
        assert n > 20
        leftovers = reclaim(box, db, boxes)
        assert [(m.message_id, m.content, m.deliveries) for m in leftovers] == expected

    def test_discard(self, tmp_path: Path, boxes: list[SQLiteOutbox]) -> None:
        """An interrupted discard took effect or not; the outbox is clean and keeps FULL."""
        db = tmp_path / "outbox.sqlite"
        box = claimed(db, boxes, synchronous="FULL")
        box.add("keep", "x")
        n = 0
        while True:
            n += 1
            box.add(f"d{n}", "x")
            interrupter = Interrupter(n)
            outcome = interrupter.run(box.discard, [f"d{n}"])
            assert outcome == ("interrupted" if interrupter.fired else "returned")
            assert_clean(box)
            left = stored_ids(db)
            if outcome == "returned":
                assert left == ["keep"]
            else:
                assert left in (["keep"], ["keep", f"d{n}"]), interrupter.where
            box.discard([f"d{n}"])
            assert stored_ids(db) == ["keep"]
            if not interrupter.fired:
                break
        assert n > 10

    def test_count_deliveries(self, tmp_path: Path, boxes: list[SQLiteOutbox]) -> None:
        """An interrupted count took effect or not; the outbox is clean and keeps FULL."""
        db = tmp_path / "outbox.sqlite"
        box = claimed(db, boxes, synchronous="FULL")
        box.add("k", "x")
        count = 0
        n = 0
        while True:
            n += 1
            interrupter = Interrupter(n)
            outcome = interrupter.run(box.count_deliveries, ["k", "unknown"])
            assert outcome == ("interrupted" if interrupter.fired else "returned")
            assert_clean(box)
            (now,) = [d for _, _, d in stored(db)]
            assert now == count + 1 if outcome == "returned" else now in (count, count + 1)
            box.count_deliveries(["k"])
            count = now + 1
            assert [d for _, _, d in stored(db)] == [count]
            if not interrupter.fired:
                break
        assert n > 10

    def test_pending_count(self, tmp_path: Path, boxes: list[SQLiteOutbox]) -> None:
        """An interrupted pending_count leaves the outbox clean."""
        db = tmp_path / "outbox.sqlite"
        box = claimed(db, boxes)
        box.add("a", "x")
        n = 0
        while True:
            n += 1
            interrupter = Interrupter(n)
            outcome = interrupter.run(box.pending_count)
            assert outcome == ("interrupted" if interrupter.fired else "returned")
            assert_clean(box)
            assert box.pending_count() == 1
            if not interrupter.fired:
                break

    @pytest.mark.parametrize("start", ["missing file", "version 2 file", "version 1 file"])
    def test_claim(self, tmp_path: Path, boxes: list[SQLiteOutbox], start: str) -> None:
        """An interrupted claim holds nothing (file, lock, state) and can be made again."""
        template = tmp_path / "template.sqlite"
        if start == "version 2 file":
            box = claimed(template, boxes)
            for n in (1, 2, 3):
                box.add(f"m{n}", f"content {n}")
            box.count_deliveries(["m2"])
            box.release()
            expected = [
                StoredMessage(message_id=f"m{n}", content=f"content {n}", deliveries=int(n == 2))
                for n in (1, 2, 3)
            ]
        elif start == "version 1 file":
            write_v1_file(template, [(f"m{n}", f"content {n}") for n in (1, 2, 3)])
            expected = [
                StoredMessage(message_id=f"m{n}", content=f"content {n}") for n in (1, 2, 3)
            ]
        else:
            expected = []
        n = 0
        while True:
            n += 1
            db = tmp_path / f"claim-{n}.sqlite"
            if template.exists():
                shutil.copyfile(template, db)
            box = SQLiteOutbox(db, synchronous="NORMAL")
            boxes.append(box)
            interrupter = Interrupter(n)
            outcome = interrupter.run(box.claim, CLIENT)
            assert outcome == ("interrupted" if interrupter.fired else "returned")
            if outcome == "interrupted":
                assert box._state == "new", interrupter.where
                assert box._conn is None
                assert box._lock_file is None
                other = SQLiteOutbox(db, synchronous="NORMAL")  # the lock is free
                assert other.claim(CLIENT) == expected, interrupter.where
                other.release()
                assert box.claim(CLIENT) == expected
            assert_clean(box)
            box.add("new", "x")
            box.release()
            tail = [StoredMessage(message_id="new", content="x")]
            assert reclaim(None, db, boxes) == expected + tail
            if not interrupter.fired:
                break
        assert n > 20

    def test_release(self, tmp_path: Path, boxes: list[SQLiteOutbox]) -> None:
        """An interrupted release finishes (or had not begun); the file and lock are let go."""
        n = 0
        while True:
            n += 1
            db = tmp_path / f"release-{n}.sqlite"
            box = claimed(db, boxes)
            box.add("a", "x")
            box.add("b", "y")
            interrupter = Interrupter(n)
            outcome = interrupter.run(box.release)
            assert outcome == ("interrupted" if interrupter.fired else "returned")
            if box._state == "claimed":  # interrupted before it began: nothing changed
                assert outcome == "interrupted"
                assert_clean(box)
                box.add("c", "z")
            else:
                assert box._state == "released", interrupter.where
                assert box._conn is None
                assert box._lock_file is None
            box.release()
            with pytest.raises(OutboxError, match="released"):
                box.add("late", "x")
            assert [m.message_id for m in reclaim(None, db, boxes)] in (["a", "b"], ["a", "b", "c"])
            if not interrupter.fired:
                break
        assert n > 10


def reclaim(
    current: SQLiteOutbox | None, db: Path, boxes: list[SQLiteOutbox]
) -> list[StoredMessage]:
    """Release ``current`` and return what a new outbox on ``db`` claims (then releases)."""
    if current is not None:
        current.release()
    box = SQLiteOutbox(db, synchronous="NORMAL")
    boxes.append(box)
    leftovers = box.claim(CLIENT)
    box.release()
    return leftovers


class Scene:
    """Threads adding to one gated outbox, their outcomes, and the checks after them."""

    def __init__(self, db: Path, boxes: list[SQLiteOutbox]) -> None:
        self.db = db
        self.boxes = boxes
        self.box, self.proxy, self.gate = gated(db, boxes)
        self.outcomes: dict[str, str] = {}
        self.changed = threading.Condition()
        self.threads: list[Adder] = []

    def start(self, message_ids: str, interrupter: Interrupter | None = None) -> None:
        for message_id in message_ids:
            adder = Adder(self.box, message_id, self.outcomes, self.changed, interrupter)
            self.threads.append(adder)
            adder.start()

    def done(self, message_id: str) -> bool:
        with self.changed:
            return message_id in self.outcomes

    def finish(self) -> list[str]:
        """Open the gate, join every thread (none may hang); return the ids whose add returned."""
        self.gate.open()
        join_all(list(self.threads))
        self.proxy.before = self.proxy.after = lambda sql: None  # the checks run untouched
        for outcome in self.outcomes.values():
            assert outcome in ("returned", "interrupted"), self.outcomes
        return sorted(m for m, o in self.outcomes.items() if o == "returned")

    def check(self, returned: list[str], where: str) -> None:
        """The outbox is clean, holds exactly ``returned``, and goes on working."""
        assert_clean(self.box)
        assert sorted(stored_ids(self.db)) == returned, where
        self.box.add("after", "x")
        leftovers = reclaim(self.box, self.db, self.boxes)
        assert sorted(m.message_id for m in leftovers) == sorted([*returned, "after"]), where


def wait_for_waits(interrupter: Interrupter, count: int) -> None:
    """Until the threads traced by ``interrupter`` called Condition.wait ``count`` times in all,
    or it fired."""
    with interrupter.changed:
        assert interrupter.changed.wait_for(
            lambda: interrupter.waits.total() >= count or interrupter.fired, TIMEOUT
        )


class TestGroupCommit:
    def test_leader_with_followers(self, tmp_path: Path, boxes: list[SQLiteOutbox]) -> None:
        """A leader interrupted anywhere: its two followers are committed, nobody hangs."""
        n = 1
        while self.leader_with_followers(Scene(tmp_path / f"{n}.sqlite", boxes), n):
            n += 1
        assert n > 20

    def leader_with_followers(self, scene: Scene, n: int) -> bool:
        interrupter = Interrupter(n, armed=leading)
        scene.start("A")  # commits alone, held at the gate
        scene.gate.wait_arrived(1)
        scene.start("BCD", interrupter)  # the next batch: one of them leads it
        wait_for_waits(interrupter, 3)
        returned = scene.finish()
        interrupted = [m for m, o in scene.outcomes.items() if o == "interrupted"]
        assert len(interrupted) == int(interrupter.fired), interrupter.where
        assert "A" in returned
        scene.check(returned, interrupter.where)
        return interrupter.fired

    def test_leader_with_adds_behind(self, tmp_path: Path, boxes: list[SQLiteOutbox]) -> None:
        """A leader interrupted anywhere: the adds waiting for the next batch go on."""
        n = 1
        while self.leader_with_adds_behind(Scene(tmp_path / f"{n}.sqlite", boxes), n):
            n += 1
        assert n > 20

    def leader_with_adds_behind(self, scene: Scene, n: int) -> bool:
        interrupter = Interrupter(n, armed=leading)
        watcher = Interrupter(NEVER)
        scene.start("A", interrupter)
        scene.gate.wait_arrived(1, or_else=lambda: scene.done("A"))
        at_gate = scene.gate.arrived
        scene.start("BCD", watcher)
        with watcher.changed:  # each waits, or leads and reached the gate
            assert watcher.changed.wait_for(
                lambda: watcher.waits.total() + scene.gate.arrived - at_gate >= 3, TIMEOUT
            )
        returned = scene.finish()
        assert scene.outcomes["A"] == ("interrupted" if interrupter.fired else "returned")
        assert all(scene.outcomes[m] == "returned" for m in "BCD"), scene.outcomes
        scene.check(returned, interrupter.where)
        return interrupter.fired

    def test_follower(self, tmp_path: Path, boxes: list[SQLiteOutbox]) -> None:
        """A follower interrupted while its batch is written, or after: it leaves nothing."""
        n = 1
        while self.follower(Scene(tmp_path / f"{n}.sqlite", boxes), n):
            n += 1
        assert n > 5

    def follower(self, scene: Scene, n: int) -> bool:
        interrupter = Interrupter(n, armed=following)
        scene.start("A")
        scene.gate.wait_arrived(1)
        scene.start("XY", interrupter)
        wait_for_waits(interrupter, 2)
        scene.gate.let_one()  # A commits; X or Y leads the next batch and stops at the gate
        scene.gate.wait_arrived(2)
        wait_for_waits(interrupter, 3)  # the other one waits again, or was interrupted
        returned = scene.finish()
        expected = ["returned", "returned", "interrupted" if interrupter.fired else "returned"]
        assert sorted(scene.outcomes.values()) == sorted(expected), interrupter.where
        scene.check(returned, interrupter.where)
        return interrupter.fired

    @pytest.mark.parametrize("when", ["before", "after"])
    def test_statement(self, tmp_path: Path, boxes: list[SQLiteOutbox], when: str) -> None:
        """KeyboardInterrupt before or after any statement of two group commits: nothing hangs."""
        k = 1
        while self.statement(Scene(tmp_path / f"{k}.sqlite", boxes), k, when):
            k += 1
        assert k > 5

    def statement(self, scene: Scene, k: int, when: str) -> bool:
        gate = scene.gate
        count = 0
        fired: list[str] = []

        def hook(sql: str) -> None:
            nonlocal count
            if not gate.is_open or fired:
                return
            count += 1
            if count == k:
                fired.append(sql)
                raise KeyboardInterrupt(f"injected {when} {sql}")

        def gate_then_hook(sql: str) -> None:
            gate(sql)
            hook(sql)

        if when == "before":
            scene.proxy.before = gate_then_hook
        else:
            scene.proxy.after = hook
        watcher = Interrupter(NEVER)
        scene.start("A", watcher)
        gate.wait_arrived(1)
        scene.start("BCD", watcher)
        wait_for_waits(watcher, 3)
        returned = scene.finish()
        interrupted = [m for m, o in scene.outcomes.items() if o == "interrupted"]
        assert len(interrupted) == len(fired), (fired, scene.outcomes)
        scene.check(returned, str(fired))
        return bool(fired)


def fail_once(prefix: str, exc: BaseException) -> Callable[[str], None]:
    """A statement hook that raises ``exc`` at the first statement starting with ``prefix``."""
    pending = [exc]

    def hook(sql: str) -> None:
        if pending and sql.startswith(prefix):
            raise pending.pop()

    return hook


class TestCompensation:
    def test_failed_delete_is_retried(
        self, tmp_path: Path, boxes: list[SQLiteOutbox], caplog: pytest.LogCaptureFixture
    ) -> None:
        """A committed add that raised, its row not deletable at once, goes at the next commit."""
        db = tmp_path / "outbox.sqlite"
        box, proxy, gate = gated(db, boxes)
        gate.open()
        proxy.after = fail_once("COMMIT", KeyboardInterrupt())
        proxy.before = fail_once("DELETE FROM messages WHERE seq", sqlite3.OperationalError("io"))
        with pytest.raises(KeyboardInterrupt):
            box.add("a", "x")
        assert stored_ids(db) == ["a"]
        assert "could not delete 1 messages whose add failed" in caplog.text
        box.add("b", "y")
        assert stored_ids(db) == ["b"]
        assert_clean(box)

    def test_failed_delete_is_retried_at_release(
        self, tmp_path: Path, boxes: list[SQLiteOutbox]
    ) -> None:
        """A row still to be deleted when the outbox is released is deleted by release()."""
        db = tmp_path / "outbox.sqlite"
        box, proxy, gate = gated(db, boxes)
        gate.open()
        proxy.after = fail_once("COMMIT", KeyboardInterrupt())
        proxy.before = fail_once("DELETE FROM messages WHERE seq", sqlite3.OperationalError("io"))
        with pytest.raises(KeyboardInterrupt):
            box.add("a", "x")
        assert reclaim(box, db, boxes) == []

    def test_unknown_outcome(self, tmp_path: Path, boxes: list[SQLiteOutbox]) -> None:
        """If an interrupted commit's outcome cannot be read back, its rows are deleted."""
        db = tmp_path / "outbox.sqlite"
        box, proxy, gate = gated(db, boxes)
        gate.open()
        proxy.after = fail_once("COMMIT", KeyboardInterrupt())
        proxy.before = fail_once("SELECT seq FROM messages", sqlite3.OperationalError("io"))
        with pytest.raises(KeyboardInterrupt):
            box.add("a", "x")
        assert stored_ids(db) == []
        assert_clean(box)
        box.add("b", "y")
        assert stored_ids(db) == ["b"]


SIGINT_CHILD = """
import json, os, random, signal, sqlite3, sys, threading
from wsync import _sqlite_outbox
from wsync._sqlite_outbox import SQLiteOutbox

ours = _sqlite_outbox.__file__

def interrupt(signum, frame):
    # A Ctrl-C that lands inside the outbox's code (else it is dropped: the loop's own
    # bookkeeping must stay exact to check the file against it).
    while frame is not None:
        if frame.f_code.co_filename == ours:
            raise KeyboardInterrupt
        frame = frame.f_back

box = SQLiteOutbox(sys.argv[1], synchronous="NORMAL")
box.claim("sigint")
ready = threading.Event()
stop = threading.Event()

def killer():
    rng = random.Random(20240601)
    while not stop.is_set():
        if not ready.wait(5):
            return
        ready.clear()
        for _ in range(rng.randrange(0, 4000)):  # land somewhere else each time
            pass
        os.kill(os.getpid(), signal.SIGINT)

signal.signal(signal.SIGINT, interrupt)
thread = threading.Thread(target=killer, name="killer")
thread.start()
returned = []
interrupted = 0
for i in range(int(sys.argv[2])):
    ready.set()
    try:
        box.add(f"m{i}", "x" * 100)
    except KeyboardInterrupt:
        interrupted += 1
        continue
    returned.append(f"m{i}")
stop.set()
ready.set()
thread.join(5)
signal.signal(signal.SIGINT, signal.SIG_IGN)
box.add("last", "x")
box.release()
conn = sqlite3.connect(sys.argv[1])
ids = [row[0] for row in conn.execute("SELECT message_id FROM messages ORDER BY seq")]
conn.close()
print(json.dumps({"interrupted": interrupted, "exact": ids == returned + ["last"]}))
"""


class TestRealSignals:
    def test_sigint_storm(self, tmp_path: Path) -> None:
        """Real SIGINTs at random points of 1,500 adds: the file holds exactly the returned ones."""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        result = subprocess.run(
            [sys.executable, "-c", SIGINT_CHILD, str(tmp_path / "outbox.sqlite"), "1500"],
            capture_output=True,
            env=env,
            timeout=TIMEOUT * 12,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        report = json.loads(result.stdout)
        assert report["exact"]
        assert report["interrupted"] > 50
