"""The Outbox seam: where a Client journals the messages it has not had answered yet.

An outbox is a write-through journal, nothing more. The client engine keeps the in-memory
queue, the ordering and the index by ``message_id`` itself; it calls the outbox to persist a
message before ``send()`` returns (``add``), to forget it once it is answered, withdrawn,
cancelled or failed (``discard``), and once at construction to learn what a previous owner
left unanswered (``claim``). This module must not queue, order or send anything.

``MemoryOutbox`` (the default) persists nothing; ``wsync.SQLiteOutbox`` (in
``_sqlite_outbox.py``) survives restarts.
"""

from __future__ import annotations

import threading
import typing
from collections.abc import Sequence

import attrs

from wsync._errors import OutboxError

__all__ = ["MemoryOutbox", "Outbox", "OutboxError", "StoredMessage"]


@attrs.frozen(kw_only=True)
class StoredMessage:
    """A message a previous owner of the outbox left unanswered.

    Attributes:
        message_id: the id the message was sent with; it is resent with the same id.
        content: the message text (left out of ``repr`` so it never reaches a log).
    """

    message_id: str = attrs.field(
        validator=attrs.validators.and_(
            attrs.validators.instance_of(str), attrs.validators.min_len(1)
        )
    )
    content: str = attrs.field(validator=attrs.validators.instance_of(str), repr=False)
    #: On how many connections the message was written, each lost before it was answered
    #: (``max_deliveries`` counts these across restarts).
    deliveries: int = attrs.field(default=0, validator=attrs.validators.instance_of(int))


@typing.runtime_checkable
class Outbox(typing.Protocol):
    """The persistence seam of a Client: a journal of the messages not answered yet.

    The engine calls ``claim`` once, then ``add``/``discard`` any number of times, then
    ``release`` from ``Client.close()``. Implementations lock themselves: the engine calls them
    without holding any wsync lock. An outbox serves one client for its whole life: once
    released it cannot be claimed again (make a new one).
    """

    def claim(self, client_id: str) -> list[StoredMessage]:
        """Take exclusive ownership of the store and return what a previous owner left.

        Called once, when a Client is constructed. Blocks on I/O.

        Args:
            client_id: the id of the claiming client; a store may belong to one client id.

        Returns:
            The messages a previous owner left unanswered, in their original send order.

        Raises:
            OutboxError: the store is claimed already (here or by another live process), was
                released, or cannot be used (not ours, newer format, other client id).
        """
        ...

    def add(self, message_id: str, content: str) -> None:
        """Persist one message; it is durable when this returns.

        Called from the sender's thread, concurrently from many threads; thread-safe.

        Raises:
            OutboxError: not claimed, released, ``message_id`` already stored, or the write failed.
        """
        ...

    def discard(self, message_ids: Sequence[str]) -> None:
        """Forget messages that were answered, withdrawn, cancelled or failed.

        May be batched. Called from one wsync thread. Unknown ids are ignored.

        Raises:
            OutboxError: not claimed, released, or the write failed.
        """
        ...

    def count_deliveries(self, message_ids: Sequence[str]) -> None:
        """Add one to the delivery count of each message (see ``StoredMessage.deliveries``).

        Called from one wsync thread, without any wsync lock, when a connection ended with
        these messages written on it and unanswered. Unknown ids are ignored. Durable when it
        returns is not required (a lost increment only allows one more delivery).

        Raises:
            OutboxError: not claimed, released, or the write failed.
        """
        ...

    def release(self) -> None:
        """Flush, close and give up the claim; unanswered messages stay. Idempotent.

        Called by ``Client.close()``. Waits for adds in progress to finish.
        """
        ...


_NEW: typing.Final = "new"
_CLAIMED: typing.Final = "claimed"
_RELEASED: typing.Final = "released"


class MemoryOutbox:
    """The default outbox: keeps nothing, so nothing survives the process.

    ``add`` and ``discard`` are no-ops (the engine's own queue is the only copy); ``claim``
    returns no leftovers. Only the claim is tracked, so a second claim fails as it would on disk.
    Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _state
        self._state: str = _NEW

    def claim(self, client_id: str) -> list[StoredMessage]:
        """Take ownership; returns ``[]``.

        Raises:
            OutboxError: claimed before (an outbox serves one client for its whole life).
        """
        with self._lock:
            if self._state != _NEW:
                raise OutboxError(f"memory outbox is {self._state} already: make a new one")
            self._state = _CLAIMED
        return []

    def add(self, message_id: str, content: str) -> None:
        """Do nothing: the engine's queue holds the message."""

    def discard(self, message_ids: Sequence[str]) -> None:
        """Do nothing: nothing was stored."""

    def count_deliveries(self, message_ids: Sequence[str]) -> None:
        """Do nothing: the engine's queue keeps the count for the life of the process."""

    def release(self) -> None:
        """Mark the outbox released. Idempotent."""
        with self._lock:
            self._state = _RELEASED

    def __repr__(self) -> str:
        return f"MemoryOutbox(state={self._state!r})"
