"""SQLiteOutbox: the Outbox protocol in one SQLite file, so unanswered messages survive restarts.

Its one job is to persist (``add``), forget (``discard``) and hand back (``claim``) the messages a
client has not had answered, durably and for one live client at a time. It does not queue, order
or send anything: the client engine does. Standard library only (``sqlite3``, ``fcntl``).

The file (schema version 1, WAL journal mode)::

    PRAGMA application_id = 0x77737963       -- "wsyc": marks the file as a wsync outbox
    meta(key TEXT PRIMARY KEY, value)        -- format, schema_version, client_id, created_at
    messages(seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT UNIQUE, content TEXT)

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
dies). Caveats: ``os.fork()`` hands the lock (and the connection, which must not be used there)
to the child; ``flock`` is not reliable on some network file systems, where WAL does not work
either: keep the outbox on a local disk.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
import typing
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import IO, Final

from wsync._outbox import OutboxError, StoredMessage
from wsync._values import validate_client_id

__all__ = ["SQLiteOutbox"]

logger = logging.getLogger(__name__)

_FORMAT: Final = "wsync-outbox"
_SCHEMA_VERSION: Final = 1
_APPLICATION_ID: Final = 0x77737963  # "wsyc"
_SYNCHRONOUS: Final = ("FULL", "NORMAL")
# The file is ours alone (the flock), so a busy wait only ever covers a read-only inspector
# recovering the WAL: short.
_BUSY_TIMEOUT: Final = 5.0
# After a checkpoint, cut the WAL back to this size so a burst of large messages does not
# leave a large file behind.
_WAL_SIZE_LIMIT: Final = 4 * 1024 * 1024

_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID",
    "CREATE TABLE messages ("
    "seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "message_id TEXT NOT NULL UNIQUE, "
    "content TEXT NOT NULL)",
)
_INSERT: Final = (
    "INSERT INTO messages (message_id, content) VALUES (?, ?) ON CONFLICT (message_id) DO NOTHING"
)
_DELETE: Final = "DELETE FROM messages WHERE message_id = ?"
_SELECT_ALL: Final = "SELECT message_id, content FROM messages ORDER BY seq"
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
    """One ``add`` call waiting for its batch to commit."""

    __slots__ = ("content", "error", "message_id")

    def __init__(self, message_id: str, content: str) -> None:
        self.message_id = message_id
        self.content = content
        self.error: OutboxError | None = None  # this message alone failed (duplicate id, ...)


class _Batch:
    """The adds that share one transaction (group commit)."""

    __slots__ = ("committed", "done", "entries", "error")

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.done = False  # the leader finished, committed or not
        self.committed = False
        self.error: BaseException | None = None  # the transaction failed for every entry


class SQLiteOutbox:
    """A durable outbox: unanswered messages live in an SQLite file until answered.

    Construct it with a path and hand it to ``wsync.Client(outbox=...)``; the client claims it
    (the file is created on first use). One file serves one ``client_id`` and one live client at
    a time; a new client with the same ``client_id`` and path gets back, in send order, what the
    previous one left unanswered, including after a crash or SIGKILL.

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

    Discards are not fsync'ed on their own, even with ``FULL``: a lost discard costs a duplicate
    resend (delivery is at-least-once anyway), and the next ``add`` commit or ``release``
    makes it durable. Only an OS crash or power loss can lose one.

    Thread-safe. The file must be on a local disk (WAL needs shared memory that network file
    systems do not provide).

    Args:
        path: the database file; created on claim if missing. The lock is ``<path>.lock``,
            beside the file the path resolves to.
        synchronous: ``"FULL"`` or ``"NORMAL"``, see above.

    Raises:
        TypeError: ``path`` is not a str or path-like, or ``synchronous`` is not a str.
        ValueError: ``path`` is empty or ``":memory:"``, or ``synchronous`` is another value.
    """

    # Discards commit without an fsync of their own (see the class docstring); benchmarks
    # flip this to measure the difference.
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

        # _cond guards _state, _open and _writing; never held during I/O.
        self._cond = threading.Condition(threading.Lock())
        self._state: str = _NEW
        self._open = _Batch()  # adds waiting for the next commit
        self._writing = False  # a leader is committing a batch
        # _db_lock guards _conn and _lock_file (every SQL statement); held during I/O.
        # Order: _db_lock is never taken while holding _cond.
        self._db_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._lock_file: IO[bytes] | None = None

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

        Blocks on file I/O. Nothing in a file that is not ours is ever changed.

        Args:
            client_id: the claiming client's id; the file records it and refuses other ids.

        Returns:
            The messages stored and not discarded by a previous owner, in the order they were
            added.

        Raises:
            TypeError, ValueError: ``client_id`` is not a valid client id.
            OutboxError: claimed or released already; another live client holds the file (in
                this process or another); the file is not an SQLite database, is another
                application's database, was written by a newer wsync, or belongs to another
                client_id. A failed claim may be retried.
        """
        validate_client_id(client_id)
        with self._cond:
            if self._state != _NEW:
                raise OutboxError(f"outbox {self._path} is {self._state} already: make a new one")
            self._state = _CLAIMING
        try:
            with self._db_lock:
                lock_file = self._acquire_lock()
                try:
                    conn, leftovers = self._connect(client_id)
                except BaseException:
                    self._drop_lock(lock_file)
                    raise
                self._conn = conn
                self._lock_file = lock_file
        except BaseException:
            with self._cond:
                self._state = _NEW
                self._cond.notify_all()
            raise
        with self._cond:
            self._state = _CLAIMED
            self._cond.notify_all()
        logger.debug("claimed outbox %s: %d unanswered messages", self._path, len(leftovers))
        return leftovers

    def add(self, message_id: str, content: str) -> None:
        """Store one message; it is committed (and with ``FULL``, fsync'ed) when this returns.

        Thread-safe; blocks on disk I/O. Concurrent adds share one commit: the first caller
        commits what has gathered, the others wait for it.

        Raises:
            TypeError: ``message_id`` or ``content`` is not a str.
            ValueError: ``message_id`` is empty.
            OutboxError: not claimed or released; ``message_id`` is stored already (discard the
                old one first); the content cannot be stored as UTF-8; the write failed.
        """
        if not isinstance(message_id, str):
            raise TypeError(f"message_id must be a str, got {type(message_id).__name__}")
        if not message_id:
            raise ValueError("message_id must not be empty")
        if not isinstance(content, str):
            raise TypeError(f"content must be a str, got {type(content).__name__}")
        entry = _Entry(message_id, content)
        with self._cond:
            if self._state != _CLAIMED:
                raise self._unusable("add to")
            batch = self._open
            batch.entries.append(entry)
            while self._writing and not batch.done:
                self._cond.wait()
            lead = not batch.done
            if lead:
                # Nobody writes and our batch is not done, so nobody took it: it is the open one.
                assert batch is self._open
                self._open = _Batch()
                self._writing = True
        if lead:
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    batch.done = True
                    self._writing = False
                    self._cond.notify_all()
        if not batch.committed:
            raise OutboxError(
                f"could not store message {message_id} in outbox {self._path}: "
                f"{batch.error or 'the committing thread was interrupted'}"
            ) from batch.error
        if entry.error is not None:
            raise entry.error

    def discard(self, message_ids: Sequence[str]) -> None:
        """Delete messages by id in one transaction; unknown ids are ignored.

        Blocks on disk I/O, without an fsync of its own (see the class docstring).
        Thread-safe; meant for one wsync thread.

        Args:
            message_ids: ids of answered, withdrawn, cancelled or failed messages.

        Raises:
            TypeError: ``message_ids`` is a single str (pass a list).
            OutboxError: not claimed or released, or the write failed.
        """
        if isinstance(message_ids, str):
            raise TypeError("message_ids must be a sequence of ids, not a single str")
        with self._cond:
            if self._state != _CLAIMED:
                raise self._unusable("discard from")
        if not message_ids:
            return
        with self._db_lock:
            conn = self._conn
            if conn is None:  # released since the check above
                raise self._unusable("discard from")
            relaxed = self._relaxed_discards and self._synchronous != "NORMAL"
            try:
                if relaxed:
                    conn.execute("PRAGMA synchronous = NORMAL")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany(_DELETE, [(message_id,) for message_id in message_ids])
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
                finally:
                    if relaxed:
                        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            except sqlite3.Error as exc:
                raise OutboxError(
                    f"could not discard {len(message_ids)} messages from outbox {self._path}: {exc}"
                ) from exc

    def release(self) -> None:
        """Finish adds in progress, close the file and drop the lock; unanswered messages stay.

        Idempotent and thread-safe; returns once the file is closed (also when another thread
        is the one releasing). Closing checkpoints the WAL into the main file. Afterwards every
        method but ``release``, ``pending_count`` and ``repr`` raises ``OutboxError``.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._state != _CLAIMING)
            if self._state == _NEW:
                self._state = _RELEASED
                return
            if self._state != _CLAIMED:
                self._cond.wait_for(lambda: self._state == _RELEASED)
                return
            self._state = _RELEASING  # refuses new adds and discards
            # Adds already accepted are committed: a waiting follower leads the last batch.
            self._cond.wait_for(lambda: not self._writing and not self._open.entries)
        try:
            with self._db_lock:
                conn, self._conn = self._conn, None
                lock_file, self._lock_file = self._lock_file, None
                try:
                    if conn is not None:
                        conn.close()  # the last connection checkpoints and removes the WAL
                finally:
                    if lock_file is not None:
                        self._drop_lock(lock_file)
        finally:
            with self._cond:
                self._state = _RELEASED
                self._cond.notify_all()
        logger.debug("released outbox %s", self._path)

    # -- inspection ----------------------------------------------------------------------

    def pending_count(self) -> int:
        """Return how many messages the file holds (stored, not discarded).

        Works on a claimed outbox and also without a claim (for the CLI and tests), reading the
        file alongside a live owner without disturbing it. Blocks on file I/O.

        Raises:
            OutboxError: unclaimed and there is no such file, or it is not a wsync outbox.
        """
        with self._db_lock:
            if self._conn is not None:
                row = self._conn.execute(_COUNT).fetchone()
                return int(row[0])
        return self._inspect_count()

    def __len__(self) -> int:
        """``pending_count()``."""
        return self.pending_count()

    def __bool__(self) -> bool:
        # With __len__, an empty outbox would be falsy and `outbox or MemoryOutbox()` would
        # silently drop durability. An outbox is always truthy.
        return True

    def __repr__(self) -> str:
        return (
            f"SQLiteOutbox({self._path!r}, synchronous={self._synchronous!r}, "
            f"state={self._state!r})"
        )

    # -- internals -----------------------------------------------------------------------

    def _unusable(self, action: str) -> OutboxError:
        """The error for an add/discard outside the claimed state. Caller holds self._cond."""
        if self._state in (_NEW, _CLAIMING):
            return OutboxError(f"cannot {action} outbox {self._path}: it is not claimed yet")
        return OutboxError(f"cannot {action} outbox {self._path}: it was released")

    def _commit(self, batch: _Batch) -> None:
        """Write one batch in one transaction. Only the leader calls this; never raises.

        Per-message problems fail only that message; a failed transaction fails the batch.
        """
        with self._db_lock:
            conn = self._conn
            # release() waits for the leader before closing, so the connection is there.
            assert conn is not None
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
                    if cursor.rowcount != 1:
                        entry.error = OutboxError(
                            f"message {entry.message_id} is in outbox {self._path} already"
                        )
                conn.execute("COMMIT")
            except Exception as exc:  # sqlite3.Error mostly; anything else must not escape
                batch.error = exc
                _rollback(conn)
                logger.warning(
                    "outbox %s: could not commit %d messages: %s",
                    self._path,
                    len(batch.entries),
                    exc,
                )
                return
            batch.committed = True
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("outbox %s: committed %d messages", self._path, len(batch.entries))

    def _acquire_lock(self) -> IO[bytes]:
        """Open and lock ``<realpath>.lock``, or raise OutboxError. Caller holds self._db_lock."""
        lock_path = os.path.realpath(self._path) + ".lock"
        try:
            # "a": created if missing, never truncated; a file object closes (and unlocks) even
            # if this outbox is garbage-collected without release().
            lock_file = open(lock_path, "ab")  # noqa: SIM115 - kept open until release()
        except OSError as exc:
            raise OutboxError(
                f"cannot open lock file {lock_path} of outbox {self._path}: {exc.strerror}"
            ) from exc
        try:
            locked = _try_lock(lock_file)
        except OSError as exc:
            lock_file.close()
            raise OutboxError(
                f"cannot lock {lock_path} for outbox {self._path}: {exc.strerror}"
            ) from exc
        if not locked:
            lock_file.close()
            raise OutboxError(
                f"outbox {self._path} is claimed by another live client ({lock_path} is locked): "
                "one outbox file serves one running client"
            )
        return lock_file

    @staticmethod
    def _drop_lock(lock_file: IO[bytes]) -> None:
        try:
            _unlock(lock_file)
        except OSError:  # closing drops the lock anyway
            pass
        finally:
            lock_file.close()

    def _connect(self, client_id: str) -> tuple[sqlite3.Connection, list[StoredMessage]]:
        """Connect, validate or create the schema, switch to WAL, read the leftovers.

        Caller holds self._db_lock and the file lock.
        """
        real_path = os.path.realpath(self._path)
        try:
            conn = sqlite3.connect(
                real_path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {self._path}: {exc}") from exc
        try:
            # Read (never write) what identifies the file before touching anything.
            header = _read_header(conn, self._path)
            if header is not None:
                owner = _check_format(header, self._path)
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
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(
                    f"cannot use outbox {self._path}: SQLite refused WAL mode (got {mode!r})"
                )
            conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
            rows = conn.execute(_SELECT_ALL).fetchall()
        except sqlite3.Error as exc:
            conn.close()
            raise OutboxError(f"cannot use outbox {self._path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn, [StoredMessage(message_id=m, content=c) for m, c in rows]

    def _create_schema(self, conn: sqlite3.Connection, client_id: str) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
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


def _check_format(header: _Header, path: str) -> str:
    """Raise OutboxError unless the header is our format at a version we read; return the owner."""
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
    return owner


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open; the original error matters more than this one."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            logger.debug("rollback failed", exc_info=True)
