"""The ledger of messages: their order, where each one is, who writes, and the counters.

Its one job is the bookkeeping of every message the client is responsible for, from
``send()`` until it is answered, failed, withdrawn or cancelled. It must not know about
connections, states, threads, sockets, futures' internals or the clock (``now`` is passed
in); the machine (``_machine.py``) drives it under the engine's lock.

Where a message is (:class:`EntryState`), the one place that says so:

* ``QUEUED``  - waiting; written once the connection is open for messages, in send() order;
* ``TAKEN``   - handed to a writer (the writer thread, or ``send()``'s own thread on the
  fast path), which is writing it right now; it can no longer be cancelled;
* ``WRITTEN`` - on the wire of the current connection, waiting for its response;
* ``DONE``    - answered, failed, withdrawn or cancelled; no longer in the ledger.

Who writes (:attr:`Ledger.writer`): ``None`` (nobody), or a token naming the write in
progress: the list of entries the writer thread took, or the one entry a ``send()`` on the
fast path writes itself. One write at a time, so frames leave in the order they were taken;
the token makes sure only that write's end gives the turn back.

Poison messages. A message written on a connection that ended before it was answered has
one more *delivery* (:attr:`Entry.deliveries`). Once any such *suspect* is pending, the
ledger writes one message at a time, and only while nothing else is in flight, until no
suspect is left: if the connection dies then, only the message on the wire is blamed. So
a message that kills the connection every time reaches ``max_deliveries`` alone, while its
neighbours, written one by one beside it, are answered; pipelining resumes after it.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TYPE_CHECKING, Final

from wsync._ratelimit import SlidingWindow

if TYPE_CHECKING:
    from wsync._futures import MessageFuture, Waiter

__all__ = ["WRITE_BATCH", "WRITE_BATCH_BYTES", "Entry", "EntryState", "Ledger"]

# How many messages the writer takes at once: big enough to batch a flush into few
# syscalls, small enough that control frames (pings, pongs) are never far behind.
WRITE_BATCH: Final = 256
# ...and at most about this many bytes, so a ping never waits behind a huge backlog.
WRITE_BATCH_BYTES: Final = 256 * 1024


class EntryState(enum.IntEnum):
    QUEUED = 0
    TAKEN = 1
    WRITTEN = 2
    DONE = 3


# The members as plain names: on Python < 3.12, ``EntryState.QUEUED`` costs a class attribute
# lookup through the enum machinery (about 80 ns), several times per message.
_QUEUED: Final = EntryState.QUEUED
_TAKEN: Final = EntryState.TAKEN
_WRITTEN: Final = EntryState.WRITTEN
_DONE: Final = EntryState.DONE


class Entry:
    """One message the client is responsible for until it is answered or failed."""

    # The content itself is not kept: `text` holds it, and memory per queued message counts.
    __slots__ = ("caught", "deliveries", "future", "message_id", "state", "text", "written")

    def __init__(
        self, message_id: str, text: str, future: MessageFuture | Waiter, deliveries: int = 0
    ) -> None:
        self.message_id = message_id
        self.text = text  # the encoded `message` frame, written as-is (resends too)
        self.future = future
        self.state = _QUEUED
        self.deliveries = deliveries  # connections it was written on that ended unanswered
        self.written = False  # written on some connection: a cancel fails from then on
        # In a write when its connection was lost: if that write then reports that it went
        # out, the lost connection counts as one more delivery (see Ledger.written).
        self.caught = False

    def __repr__(self) -> str:  # never the content
        return f"Entry({self.message_id!r}, {self.state.name}, deliveries={self.deliveries})"


class Ledger:
    """Every unanswered message, in send() order. Not thread-safe: the engine's lock guards it.

    Args:
        rate_limit: at most this many messages written in any one-second window, or None.
        max_deliveries: a message written on this many connections, each lost before it was
            answered, is given up (the machine fails it with DeliveryError); None: no limit.
    """

    def __init__(self, *, rate_limit: float | None = None, max_deliveries: int | None = 3) -> None:
        self.pending: dict[str, Entry] = {}
        self._to_write: deque[Entry] = deque()  # what is written next, while open
        self.open = False  # a confirmed connection takes messages
        self.writer: object | None = None  # the write in progress (its token), or None
        self.window = SlidingWindow(rate_limit) if rate_limit is not None else None
        self.max_deliveries = max_deliveries
        self.suspects = 0  # pending entries with deliveries > 0: write them one at a time
        self.poisoned_total = 0  # messages given up as poison, ever
        self.queued = 0
        self.in_flight = 0  # TAKEN or WRITTEN
        self.sent = 0
        self.received = 0

    # --- queries --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.pending)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self.pending

    def get(self, message_id: str) -> Entry | None:
        return self.pending.get(message_id)

    def _serial(self) -> bool:
        """Suspects are pending: one message in flight at a time."""
        return self.suspects > 0

    def can_take(self) -> bool:
        """Whether a writer could take a message now (ignoring the rate limit)."""
        if not self.open or not self._to_write:
            return False
        return not (self._serial() and self.in_flight)

    def next_write_at(self, now: float) -> float | None:
        """When the rate limit allows the next message, if one waits for it."""
        if self.window is None or not self.can_take():
            return None
        return self.window.next_at(now)

    # --- adding and removing ------------------------------------------------------------

    def add(self, entry: Entry) -> None:
        """Take responsibility for a new message (its id is known to be free)."""
        self.pending[entry.message_id] = entry
        self.queued += 1
        if entry.deliveries and self.max_deliveries is not None:
            self.suspects += 1
        if self.open:
            self._to_write.append(entry)

    def take_inline(self, entry: Entry, now: float) -> bool:
        """``send()``'s fast path: add ``entry`` TAKEN by the caller if nothing is ahead of it.

        Only when open, nobody writes, nothing is queued or in flight (others in flight: the
        writer batches them into one write), no suspect waits, and the rate allows it now.
        Otherwise the entry is queued as by :meth:`add` and False is returned.
        """
        if (
            self.open
            and self.writer is None
            and not self.in_flight
            and not self._to_write
            and not entry.deliveries
            and (self.window is None or self.window.take(1, now) == 1)
        ):
            self.pending[entry.message_id] = entry
            entry.state = _TAKEN
            self.in_flight += 1
            self.writer = entry
            return True
        self.add(entry)
        return False

    def finish(self, entry: Entry) -> None:
        """Take ``entry`` (which is in the ledger) out for good: DONE, counters fixed."""
        del self.pending[entry.message_id]
        if entry.state is _QUEUED:
            self.queued -= 1
        else:
            self.in_flight -= 1
        if entry.deliveries and self.max_deliveries is not None:
            self.suspects -= 1
        entry.state = _DONE

    def answer(self, message_id: str) -> Entry | None:
        """A response for ``message_id``: the answered entry, or None (unknown, duplicate)."""
        self.received += 1
        entry = self.pending.pop(message_id, None)
        if entry is not None:  # finish(), inlined: this runs once per response
            if entry.state is _QUEUED:
                self.queued -= 1
            else:
                self.in_flight -= 1
            if entry.deliveries and self.max_deliveries is not None:
                self.suspects -= 1
            entry.state = _DONE
        return entry

    def withdraw(self, message_id: str, future: object = None) -> Entry | None:
        """Remove a message that is QUEUED and was never written (a cancel); else None.

        With ``future``, only the message of that very future (an id may be reused later).
        """
        entry = self.pending.get(message_id)
        if entry is None or entry.state is not _QUEUED or entry.written:
            return None
        if future is not None and entry.future is not future:
            return None
        self.finish(entry)
        return entry

    def abandon(self, message_id: str) -> Entry | None:
        """Stop tracking a message wherever it is (its waiter timed out): never written again."""
        entry = self.pending.get(message_id)
        if entry is not None:
            self.finish(entry)
        return entry

    def clear(self) -> tuple[Entry, ...]:
        """Remove every message (they all fail); returns them in send() order."""
        entries = tuple(self.pending.values())
        for entry in entries:
            entry.state = _DONE
        self.pending.clear()
        self._to_write.clear()
        self.queued = self.in_flight = self.suspects = 0
        return entries

    def repair(self, owner: object = None) -> None:
        """Restore every invariant from the entries themselves, after an interrupt.

        A ``KeyboardInterrupt`` can strike a ``send()`` or ``close()`` between any two lines
        of the bookkeeping above (it runs in the caller's thread). The entries in ``pending``
        and their states are the truth; the counters and the write queue are derived from
        them again, and the turn to write of ``owner`` (the interrupted call's write, if it
        had one) is given back, its message queued again.
        """
        if owner is not None and self.writer is owner:
            self.writer = None
        queued = in_flight = suspects = 0
        for entry in self.pending.values():
            if entry.state is _TAKEN and (self.writer is None or entry is owner):
                entry.state = _QUEUED  # taken by a write that never happened
            elif entry.state is _DONE:
                entry.state = _QUEUED  # finished half-way: still ours
            if entry.state is _QUEUED:
                queued += 1
            else:
                in_flight += 1
            if entry.deliveries and self.max_deliveries is not None:
                suspects += 1
        self.queued, self.in_flight, self.suspects = queued, in_flight, suspects
        if self.open:
            self._to_write = deque(
                e for e in self.pending.values() if e.state is _QUEUED
            )

    # --- writing --------------------------------------------------------------------------

    def start(self) -> None:
        """A connection was confirmed: write everything unanswered, oldest first."""
        self.open = True
        self._to_write = deque(self.pending.values())

    def stop(self, *, blame: bool) -> list[Entry]:
        """The connection is gone: every message taken or written is queued again.

        Args:
            blame: the connection ended before the messages written on it were answered
                (a loss, not ``reconnect()``/``close()``): each gets one more delivery.

        Returns:
            The messages that reached ``max_deliveries`` (still in the ledger; the machine
            fails and removes them).
        """
        self.open = False
        self._to_write.clear()
        self.writer = None  # whoever writes now finds the connection gone
        poisoned: list[Entry] = []
        limit = self.max_deliveries
        for entry in self.pending.values():
            state = entry.state
            if state is _QUEUED:
                continue
            if blame and limit is not None:
                # (With no limit nothing is counted, and nothing is written one at a time.)
                if state is _WRITTEN:
                    if self._count_delivery(entry):
                        poisoned.append(entry)
                else:
                    # TAKEN: its write may have reached the server before the loss was seen,
                    # and reports later; it is blamed then (a poison message is not let off).
                    entry.caught = True
            entry.state = _QUEUED
        self.queued += self.in_flight
        self.in_flight = 0
        self.poisoned_total += len(poisoned)
        return poisoned

    def take(self, now: float, limit: int = WRITE_BATCH) -> list[Entry]:
        """The writer takes the next messages to write (TAKEN, in order); may be empty.

        Caller checked that nobody writes; when anything is taken, the returned list is the
        write's token (``writer``).
        """
        to_write = self._to_write
        if not self.open or not to_write:
            return []
        if self._serial():
            if self.in_flight:
                return []
            limit = 1
        window = self.window
        if window is not None:
            limit = window.take(min(limit, len(to_write)), now)
        entries: list[Entry] = []
        size = 0
        while to_write and len(entries) < limit and size < WRITE_BATCH_BYTES:
            entry = to_write.popleft()
            if entry.state is not _QUEUED:
                continue  # withdrawn, cancelled or answered meanwhile
            entry.state = _TAKEN
            entries.append(entry)
            size += len(entry.text)
        if window is not None and len(entries) < limit:
            window.give_back(limit - len(entries))  # taken for entries that were gone
        taken = len(entries)
        if taken:
            self.queued -= taken
            self.in_flight += taken
            self.writer = entries
        return entries

    def _count_delivery(self, entry: Entry) -> bool:
        """One more connection ended with ``entry`` written and unanswered; True when that
        makes it a poison message (``max_deliveries`` reached)."""
        if not entry.deliveries:
            self.suspects += 1
        entry.deliveries += 1
        limit = self.max_deliveries
        return limit is not None and entry.deliveries >= limit

    def written(self, owner: object, entries: list[Entry], *, current: bool) -> list[Entry]:
        """The write ``owner`` put ``entries`` on the wire (of the current connection if
        ``current``); the turn to write is given back.

        Returns:
            The messages given one more delivery now: written on a connection whose loss
            was seen while this write was still going on (see :meth:`stop`). Those that
            reached ``max_deliveries`` are still in the ledger; the machine fails them.
        """
        if self.writer is owner:
            self.writer = None
        self.sent += len(entries)
        counted: list[Entry] = []
        for entry in entries:
            entry.written = True
            if current:
                if entry.state is _TAKEN:
                    entry.state = _WRITTEN
            elif entry.caught:
                # The loss queued it again already; it counts that loss now it is known
                # to have been written on it (unless it was answered meanwhile).
                entry.caught = False
                if self.pending.get(entry.message_id) is entry:
                    if self._count_delivery(entry):
                        self.poisoned_total += 1
                    counted.append(entry)
        return counted

    def not_written(self, owner: object, entries: list[Entry], *, current: bool) -> None:
        """The write ``owner`` wrote none of ``entries`` after all: they go back first in line."""
        if self.writer is owner:
            self.writer = None
        if self.window is not None:
            self.window.give_back(len(entries))  # their slots were not used
        if not current:
            for entry in entries:
                entry.caught = False  # not written: the loss it was caught in is not its fault
            return
        back: list[Entry] = []
        for entry in entries:
            if entry.state is _TAKEN and self.pending.get(entry.message_id) is entry:
                entry.state = _QUEUED
                self.in_flight -= 1
                self.queued += 1
                back.append(entry)
        if self.open:
            self._to_write.extendleft(reversed(back))
