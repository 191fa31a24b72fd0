"""SQLiteOutbox delivery counts (``count_deliveries``) and the schema 1 -> 2 migration."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from wsync._outbox import MemoryOutbox, OutboxError, StoredMessage
from wsync._sqlite_outbox import SQLiteOutbox

CLIENT = "client-1"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where a test's outbox file goes (not created)."""
    return tmp_path / "outbox.sqlite"


@pytest.fixture
def boxes() -> Iterator[list[SQLiteOutbox]]:
    """Outboxes a test appends here are released after it."""
    made: list[SQLiteOutbox] = []
    yield made
    for box in made:
        box.release()


def claimed(db: Path, boxes: list[SQLiteOutbox], synchronous: str = "NORMAL") -> SQLiteOutbox:
    box = SQLiteOutbox(db, synchronous=synchronous)
    boxes.append(box)
    box.claim(CLIENT)
    return box


def reclaim(db: Path, boxes: list[SQLiteOutbox]) -> list[StoredMessage]:
    """Release every outbox made so far and return what a new claim of ``db`` gets back."""
    for box in boxes:
        box.release()
    box = SQLiteOutbox(db, synchronous="NORMAL")
    boxes.append(box)
    return box.claim(CLIENT)


def counts(messages: list[StoredMessage]) -> dict[str, int]:
    return {m.message_id: m.deliveries for m in messages}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_v1_file(path: Path, messages: Sequence[tuple[str, str]], client_id: str = CLIENT) -> None:
    """Write an outbox file exactly as wsync's schema version 1 did, holding ``messages``."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID")
        conn.execute(
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "message_id TEXT NOT NULL UNIQUE, content TEXT NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("format", "wsync-outbox"),
                ("schema_version", 1),
                ("client_id", client_id),
                ("created_at", "2025-01-01T00:00:00+00:00"),
            ],
        )
        conn.execute("PRAGMA application_id = 2004056419")  # 0x77737963, "wsyc"
        conn.execute("PRAGMA user_version = 1")
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executemany(
            "INSERT INTO messages (message_id, content) VALUES (?, ?) "
            "ON CONFLICT (message_id) DO NOTHING",
            messages,
        )
    finally:
        conn.close()


def schema_of(path: Path) -> tuple[object, int, list[str]]:
    """(meta schema_version, user_version, column names of messages), read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        (user_version,) = conn.execute("PRAGMA user_version").fetchone()
        columns = [row[1] for row in conn.execute("PRAGMA table_info(messages)")]
    finally:
        conn.close()
    return version, user_version, columns


class TestCountDeliveries:
    def test_counts_survive_release(self, db: Path, boxes: list[SQLiteOutbox]) -> None:
        """Counts are stored per message and come back with the next claim."""
        box = claimed(db, boxes)
        for message_id in ("a", "b", "c"):
            box.add(message_id, "x")
        box.count_deliveries(["a", "b"])
        box.count_deliveries(["a"])
        assert counts(reclaim(db, boxes)) == {"a": 2, "b": 1, "c": 0}

    def test_order_and_content_kept(self, db: Path, boxes: list[SQLiteOutbox]) -> None:
        """Counting changes neither the order nor the content of the leftovers."""
        box = claimed(db, boxes)
        for n in range(5):
            box.add(f"m{n}", f"content {n}")
        box.count_deliveries(["m3", "m1"])
        assert reclaim(db, boxes) == [
            StoredMessage(message_id=f"m{n}", content=f"content {n}", deliveries=int(n in (1, 3)))
            for n in range(5)
        ]

    def test_unknown_and_empty_ids_ignored(self, db: Path, boxes: list[SQLiteOutbox]) -> None:
        """Unknown ids and an empty batch change nothing and raise nothing."""
        box = claimed(db, boxes)
        box.add("a", "x")
        box.count_deliveries(["nope", "a"])
        box.count_deliveries([])
        assert counts(reclaim(db, boxes)) == {"a": 1}

    def test_an_id_given_twice_counts_once(self, db: Path, boxes: list[SQLiteOutbox]) -> None:
        """One call is one lost connection: an id repeated in it counts once."""
        box = claimed(db, boxes)
        box.add("a", "x")
        box.count_deliveries(["a", "a", "a"])
        assert counts(reclaim(db, boxes)) == {"a": 1}

    def test_many_ids(self, db: Path, boxes: list[SQLiteOutbox]) -> None:
        """More ids than fit in one statement are all counted, each once."""
        box = claimed(db, boxes)
        ids = [f"m{n}" for n in range(1_234)]
        for message_id in ids:
            box.add(message_id, "x")
        box.count_deliveries(ids + ids[:10])
        assert set(counts(reclaim(db, boxes)).values()) == {1}

    def test_one_update_per_call(self, db: Path, boxes: list[SQLiteOutbox]) -> None:
        """A call is one transaction of one UPDATE, committed without FULL's fsync."""
        box = claimed(db, boxes, synchronous="FULL")
        for message_id in ("a", "b", "c"):
            box.add(message_id, "x")
        statements: list[str] = []
        assert box._conn is not None  # white-box: the statements are not observable otherwise
        box._conn.set_trace_callback(statements.append)
        box.count_deliveries(["a", "b", "c"])
        box._conn.set_trace_callback(None)
        assert [s.split(" ")[0] for s in statements] == [
            "PRAGMA",
            "BEGIN",
            "UPDATE",
            "COMMIT",
            "PRAGMA",
        ]
        assert statements[0] == "PRAGMA synchronous = NORMAL"
        assert statements[-1] == "PRAGMA synchronous = FULL"
        assert box._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # 2 is FULL

    def test_readded_message_starts_at_zero(self, db: Path, boxes: list[SQLiteOutbox]) -> None:
        """A message discarded and added again under the same id starts a new count."""
        box = claimed(db, boxes)
        box.add("a", "x")
        box.count_deliveries(["a"])
        box.discard(["a"])
        box.add("a", "y")
        assert counts(reclaim(db, boxes)) == {"a": 0}

    def test_bad_ids(self, db: Path, boxes: list[SQLiteOutbox]) -> None:
        """A bare str, or a list holding a non-str, raises TypeError and counts nothing."""
        box = claimed(db, boxes)
        box.add("a", "x")
        with pytest.raises(TypeError, match="not a single str"):
            box.count_deliveries("a")
        with pytest.raises(TypeError, match="must be str"):
            box.count_deliveries(["a", 1])  # type: ignore[list-item]
        assert counts(reclaim(db, boxes)) == {"a": 0}

    def test_unclaimed_and_released(self, db: Path, boxes: list[SQLiteOutbox]) -> None:
        """Before claim and after release, count_deliveries raises OutboxError."""
        box = SQLiteOutbox(db)
        boxes.append(box)
        with pytest.raises(OutboxError, match="not claimed"):
            box.count_deliveries(["a"])
        box.claim(CLIENT)
        box.release()
        with pytest.raises(OutboxError, match="released"):
            box.count_deliveries(["a"])

    def test_memory_outbox_accepts_it(self) -> None:
        """MemoryOutbox takes count_deliveries as a no-op."""
        box = MemoryOutbox()
        box.claim(CLIENT)
        box.count_deliveries(["a"])


class TestMigration:
    def test_version_1_file_is_migrated(self, db: Path, boxes: list[SQLiteOutbox]) -> None:
        """A version 1 file is claimed with its leftovers in order, each at 0 deliveries."""
        write_v1_file(db, [("m1", "one"), ("m2", "two"), ("m3", "three")])
        box = SQLiteOutbox(db, synchronous="NORMAL")
        boxes.append(box)
        assert box.claim(CLIENT) == [
            StoredMessage(message_id="m1", content="one"),
            StoredMessage(message_id="m2", content="two"),
            StoredMessage(message_id="m3", content="three"),
        ]
        assert schema_of(db) == (2, 2, ["seq", "message_id", "content", "deliveries"])

    def test_migrated_file_works(self, db: Path, boxes: list[SQLiteOutbox]) -> None:
        """After the migration, adds, discards and counts work and survive the next claim."""
        write_v1_file(db, [("m1", "one"), ("m2", "two")])
        box = SQLiteOutbox(db, synchronous="NORMAL")
        boxes.append(box)
        box.claim(CLIENT)
        box.count_deliveries(["m2"])
        box.discard(["m1"])
        box.add("m3", "three")
        assert reclaim(db, boxes) == [
            StoredMessage(message_id="m2", content="two", deliveries=1),
            StoredMessage(message_id="m3", content="three"),
        ]
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            conn.close()

    def test_migrated_once(
        self, db: Path, boxes: list[SQLiteOutbox], caplog: pytest.LogCaptureFixture
    ) -> None:
        """The migration is logged once, at the first claim; later claims find version 2."""
        write_v1_file(db, [("m1", "one")])
        with caplog.at_level(logging.INFO, logger="wsync._sqlite_outbox"):
            claimed(db, boxes)
            reclaim(db, boxes)
        migrated = [r for r in caplog.records if "migrated" in r.getMessage()]
        assert len(migrated) == 1
        assert "schema version 1 to 2" in migrated[0].getMessage()

    def test_other_client_id_not_migrated(self, db: Path) -> None:
        """A version 1 file of another client_id is refused before anything is changed."""
        write_v1_file(db, [("m1", "one")], client_id="alice")
        before = digest(db)
        with pytest.raises(OutboxError, match="belongs to client_id 'alice'"):
            SQLiteOutbox(db).claim(CLIENT)
        assert digest(db) == before
        assert schema_of(db)[0] == 1

    def test_failed_migration_changes_nothing(self, db: Path, boxes: list[SQLiteOutbox]) -> None:
        """A migration that fails halfway is rolled back whole; a later claim migrates."""
        write_v1_file(db, [("m1", "one")])
        conn = sqlite3.connect(db)
        with conn:  # makes the version bump fail after the column was added
            conn.execute(
                "CREATE TRIGGER no_bump BEFORE UPDATE ON meta "
                "BEGIN SELECT RAISE(ABORT, 'no bump'); END"
            )
        conn.close()
        with pytest.raises(OutboxError, match="no bump"):
            SQLiteOutbox(db).claim(CLIENT)
        assert schema_of(db) == (1, 1, ["seq", "message_id", "content"])
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("DROP TRIGGER no_bump")
        conn.close()
        assert counts(reclaim(db, boxes)) == {"m1": 0}
        assert schema_of(db)[0] == 2

    def test_newer_version_untouched(self, db: Path, boxes: list[SQLiteOutbox]) -> None:
        """A file of a newer schema version is refused and left byte for byte."""
        claimed(db, boxes)
        reclaim(db, boxes)
        for box in boxes:
            box.release()
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("UPDATE meta SET value = 3 WHERE key = 'schema_version'")
        conn.close()
        before = digest(db)
        with pytest.raises(OutboxError, match=r"newer wsync \(schema version 3; this wsync reads"):
            SQLiteOutbox(db).claim(CLIENT)
        assert digest(db) == before
