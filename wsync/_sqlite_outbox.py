"""SQLiteOutbox: the Outbox protocol in one SQLite file, so unanswered messages survive restarts.

Its one job is to persist (``add``), count (``count_deliveries``), forget (``discard``) and hand
back (``claim``) the messages a client has not had answered, durably and for one live client at a
time. It does not queue, order or send anything: the client engine does. Standard library only
(``sqlite3``, ``fcntl``).

The file (schema version 2, WAL journal mode)::

    PRAGMA application_id = 0x77737963       -- "wsyc": marks the file as a wsync outbox
    PRAGMA user_version = 2                  -- mirrors meta.schema_version
    meta(key TEXT PRIMARY KEY, value)        -- format, schema_version, client_id, created_at
    messages(seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT UNIQUE, content TEXT,
             deliveries INTEGER NOT NULL DEFAULT 0)

Version 1 (wsync before ``max_deliveries``) had no ``deliveries`` column; a claim migrates such a
file in place, in one transaction under the claim's lock, every message starting at 0 deliveries.
A file of a newer version is refused and left untouched.

Beside it live SQLite's own ``-wal``/``-shm`` files and our ``<path>.lock``. None of them may be
deleted while a client runs; the lock file may stay forever (deleting a lock file that another
process may be opening is how two processes end up holding "the" lock).

Why ``flock`` on a sidecar file and not SQLite's ``locking_mode=EXCLUSIVE``: both die with the
process (the kernel drops them when the last descriptor closes, SIGKILL included), but an
exclusive SQLite lock is only taken at the first write, reports itself as a generic
"database is locked" that is indistinguishable from a transient busy, and would also shut out
read-only inspection (``pending_count`` from the CLI). ``flock`` is taken up front, fails at once
with an unambiguous error, and is per open file, so a second claim in the same process fails
as well. On Windows ``msvcrt.locking`` takes its place (also dropped by the OS when the process
dies). ``flock`` is not reliable on some network file systems, where WAL does not work either:
keep the outbox on a local disk.

Interrupts. A ``KeyboardInterrupt`` (any ``BaseException``) raised anywhere inside a method
propagates, and the outbox stays usable: every method runs its normal path inside a handler that
rebuilds a consistent state from what is recorded on the objects (never from how far the normal
path got), rolls back an open transaction, and hands an interrupted group commit on. An ``add``
that raised leaves no message behind: if its transaction committed before the interrupt, the row
is deleted again (by its ``seq``, which SQLite never reuses). One interrupt is handled anywhere;
a second one that lands inside that recovery is not (no Python code can promise that).

fork. ``os.fork()`` copies an outbox into the child together with its flock (shared with the
parent: unlocking it in the child would unlock the parent) and its SQLite connection (which
SQLite forbids using in the child, closing included). An at-fork hook makes every inherited
outbox inert in the child: each method raises ``OutboxError``, the connection is leaked on
purpose, and nothing is unlocked, checkpointed or deleted.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sqlite3
import sys
import threading
import typing
import weakref
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import IO, Final

from wsync._outbox import OutboxError, StoredMessage
from wsync._values import validate_client_id

__all__ = ["SQLiteOutbox"]

logger = logging.getLogger(__name__)

_FORMAT: Final = "wsync-outbox"
_SCHEMA_VERSION: Final = 2
_APPLICATION_ID: Final = 0x77737963  # "wsyc"
_SYNCHRONOUS: Final = ("FULL", "NORMAL")
# The file is ours alone (the flock), so a busy wait only ever covers a read-only inspector
# recovering the WAL: short.
_BUSY_TIMEOUT: Final = 5.0
# After a checkpoint, cut the WAL back to this size so a burst of large messages does not
# leave a large file behind.
_WAL_SIZE_LIMIT: Final = 4 * 1024 * 1024
# Ids per statement in count_deliveries: under SQLite's smallest host-parameter limit (999).
_IN_CHUNK: Final = 500

_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID",
    "CREATE TABLE messages ("
    "seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "message_id TEXT NOT NULL UNIQUE, "
    "content TEXT NOT NULL, "
    "deliveries INTEGER NOT NULL DEFAULT 0)",
)
# Version 1 -> 2; run in one transaction with the version bump.
_MIGRATE_1_TO_2: Final = (
    "ALTER TABLE messages ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 0",
    "UPDATE meta SET value = 2 WHERE key = 'schema_version'",
    "PRAGMA user_version = 2",
)
_INSERT: Final = (
    "INSERT INTO messages (message_id, content) VALUES (?, ?) ON CONFLICT (message_id) DO NOTHING"
)
_DELETE: Final = "DELETE FROM messages WHERE message_id = ?"
_COUNT_DELIVERY: Final = "UPDATE messages SET deliveries = deliveries + 1 WHERE message_id IN ({})"
_SELECT_ALL: Final = "SELECT message_id, content, deliveries FROM messages ORDER BY seq"
_COUNT: Final = "SELECT count(*) FROM messages"

# Life cycle of one SQLiteOutbox; it is never claimed twice.
_NEW: Final = "new"
_CLAIMING: Final = "claiming"
_CLAIMED: Final = "claimed"
_RELEASING: Final = "releasing"
_RELEASED: Final = "released"


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(file: IO[bytes]) -> bool:
        file.seek(0)
        try:
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(file: IO[bytes]) -> None:
        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(file: IO[bytes]) -> bool:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(file: IO[bytes]) -> None:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)


class _Entry:
    """One ``add`` call, from joining a batch until its add returns or raises."""

    __slots__ = ("abandoned", "batch", "content", "error", "message_id", "seq")

    def __init__(self, message_id: str, content: str) -> None:
        self.message_id = message_id
        self.content = content
        self.batch: _Batch | None = None  # the batch it waits in (it moves if handed back)
        # Its row once its batch's transaction inserted it; after the batch is done, set
        # exactly when the row is committed and this add still owns it.
        self.seq: int | None = None
        self.error: OutboxError | None = None  # this message alone failed (duplicate id, ...)
        self.abandoned = False  # its add raised while another thread wrote its batch


class _Batch:
    """The adds that share one transaction (group commit)."""

    __slots__ = ("done", "entries", "error", "leader")

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.leader: _Entry | None = None  # whose add writes it; None while it is open
        self.done = False  # the leader finished: each entry is stored (seq set) or not
        self.error: BaseException | None = None  # the transaction failed for every entry


class SQLiteOutbox:
    """A durable outbox: unanswered messages live in an SQLite file until answered.

    Construct it with a path and hand it to ``wsync.Client(outbox=...)``; the client claims it
    (the file is created on first use). One file serves one ``client_id`` and one live client at
    a time; a new client with the same ``client_id`` and path gets back, in send order, what the
    previous one left unanswered, including after a crash or SIGKILL, each with the number of
    connections it was lost on (``StoredMessage.deliveries``).

    Durability. ``add`` returns once its transaction is committed, so a message whose ``send()``
    returned is in the file. What that survives depends on ``synchronous``:

    - ``"FULL"`` (the default): every commit is fsync'ed (``F_FULLFSYNC`` on macOS), so committed
      messages survive process kill, OS crash and power loss, given a disk that honours flushes.
    - ``"NORMAL"``: commits reach the OS but are fsync'ed only at checkpoints. They survive the
      process being killed or crashing; an OS crash or power loss may take the last commits
      (never corrupting the file).

    ``FULL`` is the default because the promise of this class is "on disk before ``send()``
    returns"; ``NORMAL`` is the opt-in for callers who only fear their own process dying. The
    price is one fsync per commit, shared by every concurrent ``add`` (group commit: adds that
    arrive while a commit is in flight go out together in the next one). Measured with
    ``python benchmarks/outbox_bench.py`` on ext4 over a shared virtio disk, whose fsync took
    0.07 to 1 ms depending on the host's load: a sequential ``add`` cost 0.14 to 1 ms with
    ``FULL`` (about one fsync) and 40 to 100 us with ``NORMAL``. Eight threads adding at once
    under ``FULL`` share each commit four ways, for 2.5 to 8 times the throughput of the same
    adds serialized one commit each. Expect 0.1 to 2 ms per commit on a laptop SSD, 5 to 10 ms
    on a spinning disk.

    Discards and delivery counts are not fsync'ed on their own, even with ``FULL``: a lost
    discard costs a duplicate resend (delivery is at-least-once anyway), a lost count one more
    delivery, and the next ``add`` commit or ``release`` makes them durable. Only an OS crash or
    power loss can lose one.

    Thread-safe, interrupt-safe and fork-aware (see the module docstring): a
    ``KeyboardInterrupt`` inside any method propagates and leaves the outbox usable, an ``add``
    that raised stored nothing; in a forked child an inherited outbox raises ``OutboxError``
    and never touches the parent's lock or connection. The file must be on a local disk (WAL
    needs shared memory that network file systems do not provide).

    Args:
        path: the database file; created on claim if missing. The lock is ``<path>.lock``,
            beside the file the path resolves to.
        synchronous: ``"FULL"`` or ``"NORMAL"``, see above.

    Raises:
        TypeError: ``path`` is not a str or path-like, or ``synchronous`` is not a str.
        ValueError: ``path`` is empty or ``":memory:"``, or ``synchronous`` is another value.
    """

    # Discards and delivery counts commit without an fsync of their own (see the class
    # docstring); benchmarks flip this to measure the difference.
    _relaxed_discards: bool = True

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        path_str = os.fspath(path)
        if not isinstance(path_str, str):
            raise TypeError(f"path must be a text path, got {type(path_str).__name__}")
        if path_str in ("", ":memory:"):
            raise ValueError(
                f"path must name a file, got {path_str!r} (use MemoryOutbox for no persistence)"
            )
        if not isinstance(synchronous, str):
            raise TypeError(f"synchronous must be a str, got {type(synchronous).__name__}")
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        self._path: Final = path_str
        self._synchronous: Final = synchronous.upper()
        # Set in a forked child by the at-fork hook: checked first by every method.
        self._inherited = False

        # _lock guards _state, _owner, _open, _writing, _forget and every _Entry/_Batch field
        # that other threads read; never held during I/O. Blocks take it with `with self._lock`
        # and wait on _cond: a plain lock's C-level __exit__ leaves a signal no instruction to
        # land on between the block's end and the release (Condition.__exit__ is Python code).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._state: str = _NEW
        self._owner: object = None  # the token of the claim or release in progress
        self._open = _Batch()  # adds waiting for the next commit
        self._writing: _Batch | None = None  # the batch a leader is committing
        self._forget: list[int] = []  # seqs of committed rows whose add raised: to delete
        # _db_lock guards _conn and _lock_file (every SQL statement); held during I/O.
        # Order: _db_lock is never taken while holding _lock (the other way round is fine).
        self._db_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._lock_file: IO[bytes] | None = None
        _LIVE.add(self)

    @property
    def path(self) -> str:
        """The database file's path, as given."""
        return self._path

    @property
    def synchronous(self) -> str:
        """``"FULL"`` or ``"NORMAL"``."""
        return self._synchronous

    # -- the Outbox protocol -------------------------------------------------------------

    def claim(self, client_id: str) -> list[StoredMessage]:
        """Open (or create) the file, lock it for this client, and return the leftovers.

        Blocks on file I/O. Nothing in a file that is not ours is ever changed; a file of
        schema version 1 is migrated to version 2 in place.

        Args:
            client_id: the claiming client's id; the file records it and refuses other ids.

        Returns:
            The messages stored and not discarded by a previous owner, in the order they were
            added, each with its delivery count.

        Raises:
            TypeError, ValueError: ``client_id`` is not a valid client id.
            OutboxError: claimed or released already; another live client holds the file (in
                this process or another); the file is not an SQLite database, is another
                application's database, was written by a newer wsync, or belongs to another
                client_id; this process was forked from the one that made the outbox. A failed
                (or interrupted) claim may be retried.
        """
        if self._inherited:
            raise self._inherited_error("claim")
        validate_client_id(client_id)
        token = object()
        try:
            with self._lock:
                if self._state != _NEW:
                    raise OutboxError(
                        f"outbox {self._path} is {self._state} already: make a new one"
                    )
                self._state, self._owner = _CLAIMING, token
            with self._db_lock:
                self._acquire_lock()
                leftovers = self._connect(client_id)
            logger.debug("claimed outbox %s: %d unanswered messages", self._path, len(leftovers))
            with self._lock:
                self._state = _CLAIMED  # _owner stays ours until the next claim or release
                self._cond.notify_all()
            return leftovers
        except BaseException:
            self._undo_claim(token)
            raise

    def add(self, message_id: str, content: str) -> None:
        """Store one message; it is committed (and with ``FULL``, fsync'ed) when this returns.

        Thread-safe; blocks on disk I/O. Concurrent adds share one commit: the first caller
        commits what has gathered, the others wait for it. An add that raises (an interrupt
        included) leaves nothing in the file.

        Raises:
            TypeError: ``message_id`` or ``content`` is not a str.
            ValueError: ``message_id`` is empty.
            OutboxError: not claimed or released; ``message_id`` is stored already (discard the
                old one first); the content cannot be stored as UTF-8; the write failed; this
                process was forked from the outbox's.
        """
        if self._inherited:
            raise self._inherited_error("add to")
        if not isinstance(message_id, str):
            raise TypeError(f"message_id must be a str, got {type(message_id).__name__}")
        if not message_id:
            raise ValueError("message_id must not be empty")
        if not isinstance(content, str):
            raise TypeError(f"content must be a str, got {type(content).__name__}")
        entry = _Entry(message_id, content)
        try:
            self._add(entry)
        except BaseException:
            self._undo_add(entry)
            raise

    def discard(self, message_ids: Sequence[str]) -> None:
        """Delete messages by id in one transaction; unknown ids are ignored.

        Blocks on disk I/O, without an fsync of its own (see the class docstring).
        Thread-safe; meant for one wsync thread. Interrupted, it took effect or it did not.

        Args:
            message_ids: ids of answered, withdrawn, cancelled or failed messages.

        Raises:
            TypeError: ``message_ids`` is a single str (pass a list), or holds a non-str.
            OutboxError: not claimed or released, or the write failed.
        """
        if self._inherited:
            raise self._inherited_error("discard from")
        ids = _check_ids(message_ids)
        self._write_relaxed(
            "discard from", "discard", len(ids), [(_DELETE, [(i,) for i in ids])] if ids else []
        )

    def count_deliveries(self, message_ids: Sequence[str]) -> None:
        """Add one to the delivery count of each stored message; unknown ids are ignored.

        An id given twice counts once. One statement per 500 ids, one transaction, no fsync of
        its own: a count lost to an OS crash only allows one more delivery. Thread-safe; meant
        for one wsync thread. Interrupted, it took effect or it did not.

        Args:
            message_ids: ids of messages written on a connection that ended before they were
                answered.

        Raises:
            TypeError: ``message_ids`` is a single str (pass a list), or holds a non-str.
            OutboxError: not claimed or released, or the write failed.
        """
        if self._inherited:
            raise self._inherited_error("count deliveries in")
        ids = list(dict.fromkeys(_check_ids(message_ids)))
        statements: list[tuple[str, list[tuple[str, ...]]]] = []
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = tuple(ids[start : start + _IN_CHUNK])
            statements.append((_COUNT_DELIVERY.format(",".join("?" * len(chunk))), [chunk]))
        self._write_relaxed("count deliveries in", "count deliveries of", len(ids), statements)

    def release(self) -> None:
        """Finish adds in progress, close the file and drop the lock; unanswered messages stay.

        Idempotent and thread-safe; returns once the file is closed (also when another thread
        is the one releasing). Closing checkpoints the WAL into the main file. Afterwards every
        method but ``release``, ``pending_count`` and ``repr`` raises ``OutboxError``. If it is
        interrupted, the outbox is released all the same before the interrupt propagates.

        Raises:
            OutboxError: this process was forked from the outbox's (the parent keeps the file).
        """
        if self._inherited:
            raise self._inherited_error("release")
        token = object()
        try:
            with self._lock:
                while self._state in (_CLAIMING, _RELEASING):
                    self._cond.wait()  # another thread's claim or release
                if self._state != _CLAIMED:
                    self._state = _RELEASED
                    return
                self._state, self._owner = _RELEASING, token  # refuses new adds and discards
                # Adds already accepted are committed: a waiting follower leads the last batch.
                while self._writing is not None or self._open.entries:
                    self._cond.wait()
            self._close(token)
        except BaseException:
            self._close(token)  # finishes the release if it is ours; nothing otherwise
            raise
        logger.debug("released outbox %s", self._path)

    # -- inspection ----------------------------------------------------------------------

    def pending_count(self) -> int:
        """Return how many messages the file holds (stored, not discarded).

        Works on a claimed outbox and also without a claim (for the CLI and tests), reading the
        file alongside a live owner without disturbing it. Blocks on file I/O.

        Raises:
            OutboxError: unclaimed and there is no such file, or it is not a wsync outbox; this
                process was forked from the outbox's.
        """
        if self._inherited:
            raise self._inherited_error("count messages in")
        with self._db_lock:
            if self._conn is not None:
                return int(self._conn.execute(_COUNT).fetchone()[0])
        return self._inspect_count()

    def __len__(self) -> int:
        """``pending_count()``."""
        return self.pending_count()

    def __bool__(self) -> bool:
        # With __len__, an empty outbox would be falsy and `outbox or MemoryOutbox()` would
        # silently drop durability. An outbox is always truthy.
        return True

    def __repr__(self) -> str:
        state = "inherited" if self._inherited else self._state
        return f"SQLiteOutbox({self._path!r}, synchronous={self._synchronous!r}, state={state!r})"

    # -- add: group commit ---------------------------------------------------------------

    def _add(self, entry: _Entry) -> None:
        """The normal path of ``add``; ``_undo_add`` repairs wherever it stops."""
        with self._lock:
            if self._state != _CLAIMED:
                raise self._unusable("add to")
            entry.batch = self._open  # before joining: _undo_add looks for it there
            self._open.entries.append(entry)
            while True:
                batch = entry.batch
                if batch.done:
                    break
                if self._writing is None:
                    # Nobody writes and our batch is not done, so nobody took it: it is the
                    # open one. Take it, all in one statement.
                    assert batch is self._open
                    self._open, self._writing, batch.leader = _Batch(), batch, entry
                    break
                self._cond.wait()
        if batch.leader is entry:
            self._commit(batch)
            self._finish(batch)
        if entry.seq is None:
            if entry.error is not None:
                raise entry.error
            raise OutboxError(
                f"could not store message {entry.message_id} in outbox {self._path}: {batch.error}"
            ) from batch.error

    def _commit(self, batch: _Batch) -> None:
        """Write one batch in one transaction. Only its leader calls this.

        Per-message problems fail only that message (``entry.error``); a failed transaction
        fails the batch (``batch.error``). Sets ``seq`` on each entry it inserted.
        """
        with self._db_lock:
            conn = self._conn
            if conn is None:  # an interrupted release() closed it under waiting adds
                batch.error = self._unusable("add to")
                return
            if self._forget:
                self._forget_rows(conn)
            try:
                conn.execute("BEGIN IMMEDIATE")
                for entry in batch.entries:
                    try:
                        cursor = conn.execute(_INSERT, (entry.message_id, entry.content))
                    except UnicodeEncodeError:
                        entry.error = OutboxError(
                            f"cannot store message {entry.message_id} in outbox {self._path}: "
                            "its content is not encodable as UTF-8 (lone surrogate)"
                        )
                        continue
                    if cursor.rowcount == 1:
                        entry.seq = cursor.lastrowid
                    else:
                        entry.error = OutboxError(
                            f"message {entry.message_id} is in outbox {self._path} already"
                        )
                conn.execute("COMMIT")
            except Exception as exc:  # sqlite3.Error mostly; anything else must not escape
                _rollback(conn)
                for entry in batch.entries:
                    entry.seq = None
                batch.error = exc
                logger.warning(
                    "outbox %s: could not commit %d messages: %s",
                    self._path,
                    len(batch.entries),
                    exc,
                )
                return
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("outbox %s: committed %d messages", self._path, len(batch.entries))

    def _finish(self, batch: _Batch) -> None:
        """The leader, after its commit: mark the batch done and wake its followers."""
        with self._lock:
            self._drop_abandoned(batch)
            batch.done, self._writing = True, None
            self._cond.notify_all()
        if self._forget:
            self._forget_now()

    def _drop_abandoned(self, batch: _Batch) -> None:
        """Queue for deletion the committed rows of adds that raised. Caller holds _lock."""
        for entry in batch.entries:
            if entry.abandoned and entry.seq is not None:
                self._forget.append(entry.seq)
                entry.seq = None

    def _undo_add(self, entry: _Entry) -> None:
        """Leave the outbox consistent after ``_add`` raised at any point, its entry unstored.

        Works from the shared state alone (``entry.batch``, ``batch.leader``, ``batch.done``,
        the connection's transaction), so it is right wherever the normal path stopped. The
        three cases: the entry was still waiting in the open batch (it leaves it); another
        thread was writing its batch (it is marked abandoned, and that leader deletes its row
        if it commits it); this add led its batch and did not finish it (the transaction is
        rolled back or found committed, the batch finished, its other adds handed back to the
        open batch for a new leader if nothing was committed). A row committed for this add
        is deleted before the exception propagates.
        """
        with self._lock:
            batch = entry.batch
            if batch is None:  # it never joined
                return
            leading = batch.leader is entry and not batch.done
            if not leading:
                if batch.leader is None:  # still open: just leave it
                    batch.entries[:] = [e for e in batch.entries if e is not entry]
                elif not batch.done:  # another thread is writing it
                    entry.abandoned = True
                elif entry.seq is not None:  # committed, and this add raises: unstore it
                    self._forget.append(entry.seq)
                    entry.seq = None
                # Wakes release() (the open batch may be empty now) and anyone an interrupted
                # notify_all left waiting.
                self._cond.notify_all()
        if leading:
            self._settle(batch)
            with self._lock:
                stored = any(e.seq is not None for e in batch.entries)
                entry.abandoned = True
                self._drop_abandoned(batch)
                if not stored and batch.error is None:
                    # Interrupted before anything committed: the other adds are not at fault.
                    rest = [e for e in batch.entries if not e.abandoned]
                    for other in rest:
                        other.batch, other.error = self._open, None
                    self._open.entries[:0] = rest
                    logger.debug(
                        "outbox %s: an interrupted commit handed %d adds on", self._path, len(rest)
                    )
                batch.done, self._writing = True, None
                self._cond.notify_all()
        if self._forget:
            self._forget_now()

    def _settle(self, batch: _Batch) -> None:
        """End the interrupted transaction of ``batch``; leave ``seq`` on committed rows only."""
        with self._db_lock:
            conn = self._conn
            if conn is None:  # pragma: no cover - release() waits for the leader
                return
            _rollback(conn)
            seqs = [e.seq for e in batch.entries if e.seq is not None]
            if not seqs:
                return
            try:
                found = {
                    row[0]
                    for row in conn.execute(
                        f"SELECT seq FROM messages WHERE seq IN ({','.join('?' * len(seqs))})",
                        seqs,
                    ).fetchall()
                }
            except sqlite3.Error as exc:
                # Cannot tell: fail every add of the batch and delete whatever was committed.
                batch.error = exc
                for entry in batch.entries:
                    entry.abandoned = True
                return
            for entry in batch.entries:
                if entry.seq not in found:
                    entry.seq = None

    def _forget_now(self) -> None:
        """Delete the rows queued in ``_forget`` (committed rows whose add raised)."""
        with self._db_lock:
            if self._conn is not None:
                self._forget_rows(self._conn)

    def _forget_rows(self, conn: sqlite3.Connection) -> None:
        """Delete the rows queued in ``_forget``. Caller holds _db_lock, no transaction open."""
        with self._lock:
            seqs = list(self._forget)
        if not seqs:
            return
        try:
            conn.execute(f"DELETE FROM messages WHERE seq IN ({','.join('?' * len(seqs))})", seqs)
        except sqlite3.Error as exc:
            _rollback(conn)
            logger.warning(
                "outbox %s: could not delete %d messages whose add failed (retried later): %s",
                self._path,
                len(seqs),
                exc,
            )
            return
        with self._lock:
            done = set(seqs)
            self._forget = [seq for seq in self._forget if seq not in done]

    # -- discard and count_deliveries ----------------------------------------------------

    def _write_relaxed(
        self,
        action: str,
        what: str,
        count: int,
        statements: Sequence[tuple[str, Sequence[tuple[str, ...]]]],
    ) -> None:
        """Run ``statements`` (SQL, rows) in one transaction without an fsync of its own."""
        with self._lock:
            if self._state != _CLAIMED:
                raise self._unusable(action)
        if not statements:
            return
        with self._db_lock:
            conn = self._conn
            if conn is None:  # released since the check above
                raise self._unusable(action)
            relaxed = self._relaxed_discards and self._synchronous != "NORMAL"
            try:
                if relaxed:
                    conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("BEGIN IMMEDIATE")
                for sql, rows in statements:
                    conn.executemany(sql, rows)
                conn.execute("COMMIT")
                if relaxed:
                    conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            except BaseException as exc:
                self._restore(conn)
                if isinstance(exc, sqlite3.Error):
                    raise OutboxError(
                        f"could not {what} {count} messages in outbox {self._path}: {exc}"
                    ) from exc
                raise

    def _restore(self, conn: sqlite3.Connection) -> None:
        """Roll back and put back the durability setting, after a write stopped anywhere."""
        _rollback(conn)
        try:
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.Error:  # pragma: no cover - a pragma on an open connection
            logger.warning("outbox %s: could not restore synchronous", self._path, exc_info=True)

    # -- claim and release ---------------------------------------------------------------

    def _undo_claim(self, token: object) -> None:
        """After a claim raised anywhere: close what it opened and make the outbox new again."""
        with self._lock:
            if self._owner is not token:  # it raised before it began
                return
            self._state = _CLAIMING
        with self._db_lock:
            self._close_files()
        with self._lock:
            self._state, self._owner = _NEW, None
            self._cond.notify_all()

    def _close(self, token: object) -> None:
        """Finish the release that ``token`` began: delete what must go, close, unlock."""
        with self._lock:
            if self._owner is not token or self._state != _RELEASING:
                return
        with self._db_lock:
            if self._conn is not None and self._forget:
                self._forget_rows(self._conn)
            self._close_files()
        with self._lock:
            self._state = _RELEASED
            self._cond.notify_all()

    def _close_files(self) -> None:
        """Close the connection, then unlock and close the lock file; each step repeatable.

        Caller holds self._db_lock. Each is cleared only after it is closed, so an interrupted
        call leaves them for the next one.
        """
        if self._conn is not None:
            self._conn.close()  # the last connection checkpoints and removes the WAL
            self._conn = None
        if self._lock_file is not None:
            _drop_lock(self._lock_file)
            self._lock_file = None

    def _acquire_lock(self) -> None:
        """Open and lock ``<realpath>.lock`` into ``_lock_file``, or raise OutboxError.

        Caller holds self._db_lock. The file is kept in ``_lock_file`` from the moment it is
        open, so whatever stops the claim closes it.
        """
        lock_path = os.path.realpath(self._path) + ".lock"
        try:
            # "a": created if missing, never truncated.
            self._lock_file = open(lock_path, "ab")  # noqa: SIM115 - kept open until release()
        except OSError as exc:
            raise OutboxError(
                f"cannot open lock file {lock_path} of outbox {self._path}: {exc.strerror}"
            ) from exc
        try:
            locked = _try_lock(self._lock_file)
        except OSError as exc:
            raise OutboxError(
                f"cannot lock {lock_path} for outbox {self._path}: {exc.strerror}"
            ) from exc
        if not locked:
            self._lock_file.close()  # not ours: closing never unlocks the holder's
            self._lock_file = None
            raise OutboxError(
                f"outbox {self._path} is claimed by another live client ({lock_path} is locked): "
                "one outbox file serves one running client"
            )

    def _connect(self, client_id: str) -> list[StoredMessage]:
        """Connect into ``_conn``, validate, create or migrate the schema, switch to WAL.

        Caller holds self._db_lock and the file lock; whatever stops it, the claim closes
        ``_conn``.

        Returns:
            The leftovers.
        """
        real_path = os.path.realpath(self._path)
        try:
            self._conn = sqlite3.connect(
                real_path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {self._path}: {exc}") from exc
        conn = self._conn
        try:
            # Read (never write) what identifies the file before touching anything.
            header = _read_header(conn, self._path)
            version = _SCHEMA_VERSION
            if header is not None:
                owner, version = _check_format(header, self._path)
                if owner != client_id:
                    raise OutboxError(
                        f"outbox {self._path} belongs to client_id {owner!r}, not {client_id!r}: "
                        "use that client_id or another file"
                    )
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            if self._synchronous == "FULL":
                conn.execute("PRAGMA fullfsync = ON")  # macOS: flush the drive cache too
            if header is None:  # a missing, empty or blank database: make it ours
                self._create_schema(conn, client_id)
            elif version < _SCHEMA_VERSION:
                self._migrate(conn, version)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(
                    f"cannot use outbox {self._path}: SQLite refused WAL mode (got {mode!r})"
                )
            conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
            rows = conn.execute(_SELECT_ALL).fetchall()
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot use outbox {self._path}: {exc}") from exc
        return [StoredMessage(message_id=m, content=c, deliveries=d) for m, c, d in rows]

    def _create_schema(self, conn: sqlite3.Connection, client_id: str) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            (tables,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if tables:  # someone else's schema appeared since we looked: not ours
                raise OutboxError(
                    f"{self._path} is an SQLite database of another application, "
                    "not a wsync outbox; it was left untouched"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("format", _FORMAT),
                    ("schema_version", _SCHEMA_VERSION),
                    ("client_id", client_id),
                    ("created_at", datetime.now(timezone.utc).isoformat()),
                ],
            )
            conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        logger.debug("created outbox %s for client_id %s", self._path, client_id)

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        """Bring a file of an older schema version up to this one, in one transaction.

        Caller holds the file lock, so no other wsync can be reading or writing it.
        """
        try:
            conn.execute("BEGIN IMMEDIATE")
            (current,) = conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
            if current == 1:
                for statement in _MIGRATE_1_TO_2:
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        logger.info(
            "migrated outbox %s from schema version %d to %d", self._path, version, _SCHEMA_VERSION
        )

    def _inspect_count(self) -> int:
        """Count the messages through a short-lived connection, without claiming the file."""
        real_path = os.path.realpath(self._path)
        if not os.path.isfile(real_path):
            raise OutboxError(f"no outbox file at {self._path}")
        try:
            conn = sqlite3.connect(real_path, timeout=_BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {self._path}: {exc}") from exc
        try:
            # query_only: this connection can never write, whatever the file holds.
            conn.execute("PRAGMA query_only = ON")
            header = _read_header(conn, self._path)
            if header is None:
                return 0
            _check_format(header, self._path)
            return int(conn.execute(_COUNT).fetchone()[0])
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot read outbox {self._path}: {exc}") from exc
        finally:
            conn.close()

    # -- errors and fork -----------------------------------------------------------------

    def _unusable(self, action: str) -> OutboxError:
        """The error for an add/discard outside the claimed state."""
        if self._state in (_NEW, _CLAIMING):
            return OutboxError(f"cannot {action} outbox {self._path}: it is not claimed yet")
        return OutboxError(f"cannot {action} outbox {self._path}: it was released")

    def _inherited_error(self, action: str) -> OutboxError:
        return OutboxError(
            f"cannot {action} outbox {self._path} in this process: it belongs to the parent "
            "process (this one was made by fork); make a new SQLiteOutbox here"
        )

    def _forsake(self) -> None:
        """In a forked child: make this inherited outbox inert, touching nothing of the parent.

        The locks may have been held by parent threads that do not exist here, so they are
        replaced. The connection is leaked on purpose: closing it (or letting it be garbage
        collected) in the child is a use, which SQLite forbids after fork. The lock file is
        closed without unlocking: closing the child's copy of the descriptor leaves the
        parent's flock in place, where an unlock would release it.
        """
        self._inherited = True
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._db_lock = threading.Lock()
        conn, self._conn = self._conn, None
        if conn is not None:
            _leak(conn)
        lock_file, self._lock_file = self._lock_file, None
        if lock_file is not None:
            lock_file.close()


# Every SQLiteOutbox of this process, for the at-fork hook.
_LIVE: Final[weakref.WeakSet[SQLiteOutbox]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for outbox in list(_LIVE):
        outbox._forsake()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _leak(obj: object) -> None:
    """Keep ``obj`` alive until the process ends: never deallocated, even at interpreter exit."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def _drop_lock(lock_file: IO[bytes]) -> None:
    """Unlock and close; repeatable (a second call after an interrupt finishes the first)."""
    if lock_file.closed:
        return
    try:
        _unlock(lock_file)
    except OSError:  # closing drops the lock anyway
        pass
    finally:
        lock_file.close()


def _check_ids(message_ids: Sequence[str]) -> list[str]:
    if isinstance(message_ids, str):
        raise TypeError("message_ids must be a sequence of ids, not a single str")
    ids = list(message_ids)
    for message_id in ids:
        if not isinstance(message_id, str):
            raise TypeError(f"message ids must be str, got {type(message_id).__name__}")
    return ids


class _Header(typing.NamedTuple):
    application_id: int
    meta: dict[str, object]


def _read_header(conn: sqlite3.Connection, path: str) -> _Header | None:
    """Read what identifies the file; None for an empty database. Reads only."""
    try:
        application_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise OutboxError(
            f"{path} is not a wsync outbox: SQLite cannot read it ({exc}); it was left untouched"
        ) from exc
    if application_id == 0 and not tables:
        return None
    if application_id != _APPLICATION_ID or "meta" not in tables:
        raise OutboxError(
            f"{path} is an SQLite database of another application, not a wsync outbox; "
            "it was left untouched"
        )
    try:
        meta = {str(key): value for key, value in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as exc:
        raise OutboxError(f"outbox {path} is damaged: cannot read its meta table ({exc})") from exc
    return _Header(application_id, meta)


def _check_format(header: _Header, path: str) -> tuple[str, int]:
    """Raise OutboxError unless the header is our format at a version we read.

    Returns:
        The owner's client_id and the schema version.
    """
    meta = header.meta
    if meta.get("format") != _FORMAT:
        raise OutboxError(
            f"{path} is an SQLite database of another application, not a wsync outbox; "
            "it was left untouched"
        )
    version = meta.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise OutboxError(f"outbox {path} is damaged: bad schema_version {version!r}")
    if version > _SCHEMA_VERSION:
        raise OutboxError(
            f"outbox {path} was written by a newer wsync (schema version {version}; this wsync "
            f"reads up to {_SCHEMA_VERSION}): upgrade wsync; it was left untouched"
        )
    owner = meta.get("client_id")
    if not isinstance(owner, str):
        raise OutboxError(f"outbox {path} is damaged: it records no client_id")
    return owner, version


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open; the original error matters more than this one."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            logger.debug("rollback failed", exc_info=True)
