"""Outboxes: MemoryOutbox and SQLiteOutbox, the persistence seam of a Client."""

from __future__ import annotations

import hashlib
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from tests.helpers import TIMEOUT
from wsync._outbox import MemoryOutbox, Outbox, OutboxError, StoredMessage
from wsync._sqlite_outbox import SQLiteOutbox

ROOT = Path(__file__).resolve().parents[2]
CLIENT = "client-1"

MakeOutbox = Callable[..., SQLiteOutbox]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where a test's outbox file goes (not created)."""
    return tmp_path / "outbox.sqlite"


@pytest.fixture
def make_outbox(db: Path) -> Iterator[MakeOutbox]:
    """Make SQLiteOutboxes (on ``db`` unless told otherwise); all are released after the test.

    They default to ``synchronous="NORMAL"``: it differs from FULL only in fsyncs, which a busy
    disk makes slow; the tests about FULL ask for it.
    """
    made: list[SQLiteOutbox] = []

    def make(path: Path | str = db, synchronous: str = "NORMAL") -> SQLiteOutbox:
        box = SQLiteOutbox(path, synchronous=synchronous)
        made.append(box)
        return box

    yield make
    for box in made:
        box.release()


def ids(messages: list[StoredMessage]) -> list[str]:
    return [m.message_id for m in messages]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_child(code: str, *args: str) -> subprocess.Popen[bytes]:
    """Start ``python -c code args...`` with wsync importable, stdin/stdout/stderr piped."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


class TestStoredMessage:
    def test_repr_hides_content(self) -> None:
        """A stored message's repr shows its id and never its content."""
        text = repr(StoredMessage(message_id="m1", content="secret payload"))
        assert "m1" in text
        assert "secret" not in text

    def test_empty_id_rejected(self) -> None:
        """An empty message_id is refused at construction."""
        with pytest.raises(ValueError):
            StoredMessage(message_id="", content="x")

    def test_frozen(self) -> None:
        """A stored message cannot be changed."""
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            StoredMessage(message_id="m", content="x").content = "y"  # type: ignore[misc]


class TestMemoryOutbox:
    def test_is_an_outbox(self) -> None:
        """MemoryOutbox satisfies the Outbox protocol."""
        assert isinstance(MemoryOutbox(), Outbox)

    def test_claim_returns_nothing(self) -> None:
        """A memory outbox has no leftovers."""
        assert MemoryOutbox().claim(CLIENT) == []

    def test_add_and_discard_are_no_ops(self) -> None:
        """add and discard keep nothing, so a second outbox starts empty."""
        box = MemoryOutbox()
        box.claim(CLIENT)
        box.add("m1", "hello")
        box.discard(["m1", "unknown"])
        box.release()
        assert MemoryOutbox().claim(CLIENT) == []

    def test_claim_twice(self) -> None:
        """A second claim of the same memory outbox raises OutboxError."""
        box = MemoryOutbox()
        box.claim(CLIENT)
        with pytest.raises(OutboxError, match="claimed already"):
            box.claim(CLIENT)

    def test_claim_after_release(self) -> None:
        """A released memory outbox cannot be claimed again."""
        box = MemoryOutbox()
        box.claim(CLIENT)
        box.release()
        with pytest.raises(OutboxError, match="released already"):
            box.claim(CLIENT)

    def test_release_idempotent(self) -> None:
        """release may be called any number of times, claimed or not."""
        box = MemoryOutbox()
        box.release()
        box.release()


class TestSQLiteArguments:
    @pytest.mark.parametrize("value", ["OFF", "EXTRA", "fast", ""])
    def test_bad_synchronous(self, db: Path, value: str) -> None:
        """A synchronous value other than FULL or NORMAL raises ValueError."""
        with pytest.raises(ValueError, match="synchronous must be 'FULL' or 'NORMAL'"):
            SQLiteOutbox(db, synchronous=value)

    def test_synchronous_not_str(self, db: Path) -> None:
        """A synchronous value that is not a str raises TypeError."""
        with pytest.raises(TypeError):
            SQLiteOutbox(db, synchronous=2)  # type: ignore[arg-type]

    def test_synchronous_case_insensitive(self, db: Path) -> None:
        """synchronous is read case-insensitively and reported in capitals."""
        assert SQLiteOutbox(db, synchronous="normal").synchronous == "NORMAL"

    def test_default_is_full(self, db: Path) -> None:
        """The default durability is FULL."""
        assert SQLiteOutbox(db).synchronous == "FULL"

    @pytest.mark.parametrize("path", ["", ":memory:"])
    def test_path_must_name_a_file(self, path: str) -> None:
        """An empty path or ':memory:' raises ValueError."""
        with pytest.raises(ValueError, match="MemoryOutbox"):
            SQLiteOutbox(path)

    def test_constructor_does_no_io(self, db: Path) -> None:
        """Constructing an outbox creates no file; claim does."""
        SQLiteOutbox(db)
        assert list(db.parent.iterdir()) == []

    def test_is_an_outbox(self, db: Path) -> None:
        """SQLiteOutbox satisfies the Outbox protocol."""
        assert isinstance(SQLiteOutbox(db), Outbox)

    def test_repr_shows_path_not_content(self, make_outbox: MakeOutbox, db: Path) -> None:
        """repr names the path and never a message's content."""
        box = make_outbox()
        box.claim(CLIENT)
        box.add("m1", "secret payload")
        assert str(db) in repr(box)
        assert "secret" not in repr(box)


class TestSQLiteRoundTrip:
    def test_new_file(self, make_outbox: MakeOutbox, db: Path) -> None:
        """Claiming a missing file creates it and returns no leftovers."""
        assert make_outbox().claim(CLIENT) == []
        assert db.is_file()

    def test_leftovers_in_order(self, make_outbox: MakeOutbox) -> None:
        """Messages added by one instance come back to the next claim, in add order."""
        first = make_outbox(synchronous="FULL")
        first.claim(CLIENT)
        contents = ["hello", "", "é ✓ 日本", "x" * 100_000, '{"json": true}']
        for n, content in enumerate(contents):
            first.add(f"m{n}", content)
        first.release()
        leftovers = make_outbox().claim(CLIENT)
        assert leftovers == [
            StoredMessage(message_id=f"m{n}", content=c) for n, c in enumerate(contents)
        ]

    def test_release_keeps_unanswered(self, make_outbox: MakeOutbox) -> None:
        """Messages not discarded stay in the file after release, however many releases."""
        first = make_outbox()
        first.claim(CLIENT)
        first.add("a", "1")
        first.release()
        first.release()
        assert ids(make_outbox().claim(CLIENT)) == ["a"]

    def test_discard(self, make_outbox: MakeOutbox) -> None:
        """Discarded messages are gone from the next claim; the others keep their order."""
        first = make_outbox(synchronous="FULL")
        first.claim(CLIENT)
        for n in range(6):
            first.add(f"m{n}", "x")
        first.discard(["m0", "m3", "m5"])
        first.release()
        assert ids(make_outbox().claim(CLIENT)) == ["m1", "m2", "m4"]

    def test_discard_keeps_full_durability(self, make_outbox: MakeOutbox) -> None:
        """A discard (committed without its own fsync) leaves the connection at FULL for adds."""
        box = make_outbox(synchronous="FULL")
        box.claim(CLIENT)
        box.add("a", "1")
        box.discard(["a"])
        assert box._conn is not None  # white-box: the setting is not observable otherwise
        assert box._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # 2 is FULL

    def test_discard_unknown_and_empty(self, make_outbox: MakeOutbox) -> None:
        """Unknown ids and an empty batch are ignored."""
        box = make_outbox()
        box.claim(CLIENT)
        box.add("m1", "x")
        box.discard(["nope", "m1", "m1"])
        box.discard([])
        assert len(box) == 0

    def test_discard_single_str(self, make_outbox: MakeOutbox) -> None:
        """discard refuses a bare str, which would be read as one id per character."""
        box = make_outbox()
        box.claim(CLIENT)
        with pytest.raises(TypeError):
            box.discard("m1")

    def test_readd_after_discard(self, make_outbox: MakeOutbox) -> None:
        """An id can be stored again once discarded, and then sorts after older messages."""
        box = make_outbox()
        box.claim(CLIENT)
        box.add("a", "1")
        box.add("b", "2")
        box.discard(["a"])
        box.add("a", "3")
        box.release()
        assert make_outbox().claim(CLIENT) == [
            StoredMessage(message_id="b", content="2"),
            StoredMessage(message_id="a", content="3"),
        ]

    def test_duplicate_id(self, make_outbox: MakeOutbox) -> None:
        """Adding an id that is stored already raises OutboxError and keeps the first content."""
        box = make_outbox()
        box.claim(CLIENT)
        box.add("a", "first")
        with pytest.raises(OutboxError, match=r"message a is in outbox .* already"):
            box.add("a", "second")
        box.add("b", "next")
        box.release()
        assert make_outbox().claim(CLIENT) == [
            StoredMessage(message_id="a", content="first"),
            StoredMessage(message_id="b", content="next"),
        ]

    def test_unencodable_content(self, make_outbox: MakeOutbox) -> None:
        """Content with a lone surrogate fails that add alone, naming the id, not the content."""
        box = make_outbox()
        box.claim(CLIENT)
        with pytest.raises(OutboxError, match="message bad") as info:
            box.add("bad", "oops \ud800")
        assert "oops" not in str(info.value)
        box.add("good", "fine")
        assert len(box) == 1

    def test_argument_types(self, make_outbox: MakeOutbox) -> None:
        """add refuses a non-str id or content and an empty id."""
        box = make_outbox()
        box.claim(CLIENT)
        with pytest.raises(TypeError):
            box.add(1, "x")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            box.add("m", b"x")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            box.add("", "x")


class TestSQLitePendingCount:
    def test_claimed(self, make_outbox: MakeOutbox) -> None:
        """pending_count and len count stored, undiscarded messages."""
        box = make_outbox()
        box.claim(CLIENT)
        box.add("a", "1")
        box.add("b", "2")
        box.discard(["a"])
        assert box.pending_count() == len(box) == 1

    def test_empty_outbox_is_truthy(self, make_outbox: MakeOutbox) -> None:
        """An empty outbox is still truthy, so `outbox or default` never drops it."""
        box = make_outbox()
        box.claim(CLIENT)
        assert len(box) == 0
        assert box

    def test_without_claim(self, make_outbox: MakeOutbox) -> None:
        """An unclaimed instance can count a file, even one a live client holds."""
        owner = make_outbox()
        owner.claim(CLIENT)
        owner.add("a", "1")
        assert make_outbox().pending_count() == 1
        owner.release()
        assert owner.pending_count() == 1

    def test_missing_file(self, db: Path) -> None:
        """Counting a file that does not exist raises OutboxError and creates nothing."""
        with pytest.raises(OutboxError, match="no outbox file"):
            SQLiteOutbox(db).pending_count()
        assert not db.exists()

    def test_foreign_file(self, db: Path) -> None:
        """Counting another application's database raises OutboxError."""
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE users (name TEXT)")
        conn.close()
        with pytest.raises(OutboxError, match="not a wsync outbox"):
            SQLiteOutbox(db).pending_count()

    def test_garbage_file(self, db: Path) -> None:
        """Counting a file that is not SQLite raises OutboxError and leaves it untouched."""
        db.write_bytes(b"garbage " * 100)
        with pytest.raises(OutboxError, match="not a wsync outbox"):
            SQLiteOutbox(db).pending_count()
        assert db.read_bytes() == b"garbage " * 100


class TestSQLiteLifecycle:
    def test_add_before_claim(self, make_outbox: MakeOutbox) -> None:
        """add and discard before claim raise OutboxError."""
        box = make_outbox()
        with pytest.raises(OutboxError, match="not claimed"):
            box.add("a", "1")
        with pytest.raises(OutboxError, match="not claimed"):
            box.discard(["a"])

    def test_claim_twice(self, make_outbox: MakeOutbox) -> None:
        """A second claim of the same instance raises OutboxError."""
        box = make_outbox()
        box.claim(CLIENT)
        with pytest.raises(OutboxError, match="claimed already"):
            box.claim(CLIENT)

    def test_second_live_claim(self, make_outbox: MakeOutbox, db: Path) -> None:
        """A second instance cannot claim a file that a live one holds; the error names the path."""
        make_outbox().claim(CLIENT)
        with pytest.raises(OutboxError, match="claimed by another live client") as info:
            make_outbox().claim(CLIENT)
        assert str(db) in str(info.value)

    def test_second_live_claim_through_symlink(
        self, make_outbox: MakeOutbox, db: Path, tmp_path: Path
    ) -> None:
        """Another spelling of the same file (a symlink) meets the same lock."""
        make_outbox().claim(CLIENT)
        link = tmp_path / "link.sqlite"
        link.symlink_to(db)
        with pytest.raises(OutboxError, match="claimed by another live client"):
            make_outbox(link).claim(CLIENT)

    def test_failed_claim_can_be_retried(self, make_outbox: MakeOutbox) -> None:
        """An instance whose claim failed on the lock can claim once the holder releases."""
        holder = make_outbox()
        holder.claim(CLIENT)
        holder.add("a", "1")
        waiting = make_outbox()
        with pytest.raises(OutboxError):
            waiting.claim(CLIENT)
        holder.release()
        assert ids(waiting.claim(CLIENT)) == ["a"]

    def test_claim_after_release(self, make_outbox: MakeOutbox) -> None:
        """A new instance claims the file once the previous one released it."""
        first = make_outbox()
        first.claim(CLIENT)
        first.add("a", "1")
        first.release()
        assert ids(make_outbox().claim(CLIENT)) == ["a"]

    def test_released_instance_is_finished(self, make_outbox: MakeOutbox) -> None:
        """After release, add, discard and claim raise OutboxError; release stays harmless."""
        box = make_outbox()
        box.claim(CLIENT)
        box.release()
        with pytest.raises(OutboxError, match="released"):
            box.add("a", "1")
        with pytest.raises(OutboxError, match="released"):
            box.discard(["a"])
        with pytest.raises(OutboxError, match="released already"):
            box.claim(CLIENT)
        box.release()
        assert ids(make_outbox().claim(CLIENT)) == []

    def test_live_claim_in_another_process(self, make_outbox: MakeOutbox, db: Path) -> None:
        """A file held by another live process cannot be claimed; once it releases, it can."""
        child = run_child(
            "import sys\n"
            "from wsync._sqlite_outbox import SQLiteOutbox\n"
            "box = SQLiteOutbox(sys.argv[1])\n"
            "box.claim('client-1')\n"
            "box.add('from-child', 'x')\n"
            "print('claimed', flush=True)\n"
            "sys.stdin.read()\n"
            "box.release()\n",
            str(db),
        )
        assert child.stdout is not None and child.stdin is not None
        try:
            assert child.stdout.readline() == b"claimed\n", child.stderr
            with pytest.raises(OutboxError, match="claimed by another live client"):
                make_outbox().claim(CLIENT)
        finally:
            child.stdin.close()
            assert child.wait(TIMEOUT) == 0
            child.stdout.close()
            assert child.stderr is not None
            child.stderr.close()
        assert ids(make_outbox().claim(CLIENT)) == ["from-child"]


class TestSQLiteValidation:
    def test_foreign_sqlite_file(self, db: Path) -> None:
        """Another application's SQLite database raises OutboxError and is left byte for byte."""
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("CREATE TABLE users (name TEXT)")
            conn.execute("INSERT INTO users VALUES ('ada')")
        conn.close()
        before = digest(db)
        with pytest.raises(OutboxError, match="another application") as info:
            SQLiteOutbox(db).claim(CLIENT)
        assert str(db) in str(info.value)
        assert digest(db) == before
        assert not Path(f"{db}-wal").exists()

    def test_garbage_file(self, db: Path) -> None:
        """A file that is not SQLite at all raises OutboxError and is left untouched."""
        db.write_bytes(b"these are not the bytes you are looking for\n" * 50)
        before = digest(db)
        with pytest.raises(OutboxError, match="not a wsync outbox") as info:
            SQLiteOutbox(db).claim(CLIENT)
        assert str(db) in str(info.value)
        assert digest(db) == before

    def test_other_client_id(self, make_outbox: MakeOutbox, db: Path) -> None:
        """A file created for another client_id raises OutboxError naming both ids."""
        first = make_outbox()
        first.claim("alice")
        first.add("a", "1")
        first.release()
        before = digest(db)
        with pytest.raises(OutboxError, match="belongs to client_id 'alice', not 'bob'"):
            make_outbox().claim("bob")
        assert digest(db) == before
        assert ids(make_outbox().claim("alice")) == ["a"]

    def test_newer_schema(self, make_outbox: MakeOutbox, db: Path) -> None:
        """A file written by a newer schema version raises OutboxError and is left untouched."""
        first = make_outbox()
        first.claim(CLIENT)
        first.release()
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("UPDATE meta SET value = 3 WHERE key = 'schema_version'")
        conn.close()
        before = digest(db)
        with pytest.raises(OutboxError, match="newer wsync"):
            make_outbox().claim(CLIENT)
        assert digest(db) == before

    def test_empty_file_adopted(self, make_outbox: MakeOutbox, db: Path) -> None:
        """An empty file (for example from touch) becomes a new outbox."""
        db.touch()
        box = make_outbox()
        assert box.claim(CLIENT) == []
        box.add("a", "1")
        assert len(box) == 1

    def test_unusable_path(self, tmp_path: Path) -> None:
        """A path in a missing directory raises OutboxError naming it."""
        path = tmp_path / "missing" / "outbox.sqlite"
        with pytest.raises(OutboxError, match="missing"):
            SQLiteOutbox(path).claim(CLIENT)

    def test_integrity(self, make_outbox: MakeOutbox, db: Path) -> None:
        """After use the file passes SQLite's integrity check and is in WAL mode."""
        box = make_outbox(synchronous="FULL")
        box.claim(CLIENT)
        for n in range(50):
            box.add(f"m{n}", "x" * n)
        box.discard([f"m{n}" for n in range(0, 50, 2)])
        box.release()
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            conn.close()


class TestSQLiteConcurrency:
    def test_many_threads(self, make_outbox: MakeOutbox) -> None:
        """8 threads x 500 adds all come back, each thread's messages in its own order."""
        box = make_outbox()
        box.claim(CLIENT)
        threads_n, per_thread = 8, 500
        start = threading.Barrier(threads_n)
        errors: list[BaseException] = []

        def adder(t: int) -> None:
            try:
                start.wait(TIMEOUT)
                for i in range(per_thread):
                    box.add(f"{t}-{i}", f"content {t} {i}")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=adder, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 4)
        assert not errors
        assert not any(thread.is_alive() for thread in threads)
        box.release()

        leftovers = make_outbox().claim(CLIENT)
        assert len(leftovers) == threads_n * per_thread
        assert len(set(ids(leftovers))) == threads_n * per_thread
        for t in range(threads_n):
            mine = [m for m in leftovers if m.message_id.startswith(f"{t}-")]
            assert ids(mine) == [f"{t}-{i}" for i in range(per_thread)]
            assert [m.content for m in mine] == [f"content {t} {i}" for i in range(per_thread)]

    def test_adds_and_discards_interleaved(self, make_outbox: MakeOutbox) -> None:
        """Discards on one thread while others add leave exactly the undiscarded messages."""
        box = make_outbox()
        box.claim(CLIENT)
        added: queue.Queue[str | None] = queue.Queue()
        errors: list[BaseException] = []

        def adder(t: int) -> None:
            try:
                for i in range(300):
                    box.add(f"{t}-{i}", "x")
                    added.put(f"{t}-{i}")
            except BaseException as exc:
                errors.append(exc)

        def discarder() -> None:
            # Discards, in batches of whatever has arrived, every even-numbered message.
            try:
                while True:
                    batch = [added.get(timeout=TIMEOUT)]
                    while not added.empty():
                        batch.append(added.get_nowait())
                    box.discard([m for m in batch if m and int(m.split("-")[1]) % 2 == 0])
                    if None in batch:
                        return
            except BaseException as exc:
                errors.append(exc)

        adders = [threading.Thread(target=adder, args=(t,)) for t in range(4)]
        discard_thread = threading.Thread(target=discarder)
        discard_thread.start()
        for thread in adders:
            thread.start()
        for thread in adders:
            thread.join(TIMEOUT * 4)
        added.put(None)
        discard_thread.join(TIMEOUT)
        assert not errors
        box.release()
        leftovers = ids(make_outbox().claim(CLIENT))
        assert sorted(leftovers) == sorted(f"{t}-{i}" for t in range(4) for i in range(1, 300, 2))

    def test_release_during_adds(self, make_outbox: MakeOutbox) -> None:
        """Releasing while threads add: every add that returned is in the file, later ones fail."""
        box = make_outbox()
        box.claim(CLIENT)
        returned: list[list[str]] = [[] for _ in range(4)]
        refused = [0] * 4
        enough = threading.Event()
        unexpected: list[BaseException] = []

        def adder(t: int) -> None:
            for i in range(100_000):
                try:
                    box.add(f"{t}-{i}", "x")
                except OutboxError as exc:
                    if "released" not in str(exc):
                        unexpected.append(exc)
                    refused[t] += 1
                    return
                returned[t].append(f"{t}-{i}")
                if i == 50:
                    enough.set()

        threads = [threading.Thread(target=adder, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        assert enough.wait(TIMEOUT)
        box.release()
        for thread in threads:
            thread.join(TIMEOUT)
        assert not unexpected
        assert refused == [1, 1, 1, 1]
        stored = ids(make_outbox().claim(CLIENT))
        for t in range(4):
            mine = [m for m in stored if m.startswith(f"{t}-")]
            # Exactly the adds that returned are stored, in order: a refused add left nothing.
            assert mine == returned[t]


CRASH_CHILD = """
import os, sys, threading
from wsync._sqlite_outbox import SQLiteOutbox

box = SQLiteOutbox(sys.argv[1], synchronous=sys.argv[2])
box.claim("crash-test")

def run(t):
    for i in range(10_000_000):
        box.add(f"{t}-{i}", "payload " * 20)
        os.write(1, f"{t}-{i}\\n".encode())

for t in range(4):
    threading.Thread(target=run, args=(t,)).start()
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
class TestSQLiteCrash:
    @pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
    def test_sigkill_mid_stream(self, make_outbox: MakeOutbox, db: Path, synchronous: str) -> None:
        """After SIGKILL mid-stream, a new claim has every message whose add returned, in order."""
        child = run_child(CRASH_CHILD, str(db), synchronous)
        assert child.stdout is not None and child.stderr is not None and child.stdin is not None
        watchdog = threading.Timer(TIMEOUT * 2, child.kill)  # a hung child fails, never hangs
        watchdog.start()
        try:
            printed: list[str] = []
            while len(printed) < 500:
                line = child.stdout.readline()
                assert line.endswith(b"\n"), child.stderr.read().decode(errors="replace")
                printed.append(line.decode().strip())
            child.send_signal(signal.SIGKILL)
            # Everything the child wrote before dying was printed after its add returned.
            tail = child.stdout.read()
            assert child.wait(TIMEOUT) == -signal.SIGKILL
        finally:
            watchdog.cancel()
            child.stdin.close()
            child.stdout.close()
            child.stderr.close()
        printed += [line.decode() for line in tail.split(b"\n")[:-1]]

        box = make_outbox()  # the lock died with the child: this claim does not fail
        stored = ids(box.claim("crash-test"))
        assert set(printed) <= set(stored)
        for t in range(4):
            mine = [int(m.split("-")[1]) for m in stored if m.startswith(f"{t}-")]
            # Adds of one thread are sequential: what is stored is a gap-free prefix.
            assert mine == list(range(len(mine)))
        box.release()
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            conn.close()
