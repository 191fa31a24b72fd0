"""Ledger: every message's place, the turn to write and the counters, driven directly.

No machine, clock or threads: ``now`` is passed in, as the machine does. Each test checks
the entries' states and the counters the ledger keeps for them.
"""

from __future__ import annotations

import pytest

from wsync._futures import MessageFuture
from wsync._ledger import WRITE_BATCH, WRITE_BATCH_BYTES, Entry, EntryState, Ledger

T0 = 1000.0


def entry(message_id: str, deliveries: int = 0, size: int = 0) -> Entry:
    text = f'{{"type":"message","messageId":"{message_id}"}}' + " " * size
    return Entry(message_id, text, MessageFuture(message_id), deliveries)


def ledger_with(*entries: Entry, open_: bool = True, **options: object) -> Ledger:
    ledger = Ledger(**options)  # type: ignore[arg-type]
    for e in entries:
        ledger.add(e)
    if open_:
        ledger.start()
    return ledger


def counters(ledger: Ledger) -> tuple[int, int, int]:
    return ledger.queued, ledger.in_flight, ledger.suspects


def write(ledger: Ledger, limit: int = WRITE_BATCH, now: float = T0) -> list[Entry]:
    """Take and write; the turn is given back."""
    taken = ledger.take(now, limit)
    ledger.written(taken, taken, current=True)
    return taken


class TestAdd:
    def test_add_queues_in_send_order(self) -> None:
        """Added messages are QUEUED, counted, and in the ledger in send() order."""
        a, b = entry("a"), entry("b")
        ledger = ledger_with(a, b, open_=False)
        assert list(ledger.pending) == ["a", "b"]
        assert (a.state, b.state) == (EntryState.QUEUED, EntryState.QUEUED)
        assert counters(ledger) == (2, 0, 0)
        assert len(ledger) == 2
        assert "a" in ledger
        assert ledger.get("b") is b

    def test_closed_ledger_takes_nothing(self) -> None:
        """Before start() (no confirmed connection) nothing can be taken."""
        ledger = ledger_with(entry("a"), open_=False)
        assert not ledger.can_take()
        assert ledger.take(T0) == []
        assert ledger.writer is None

    def test_message_with_deliveries_is_a_suspect(self) -> None:
        """A message restored with deliveries already (a durable outbox) counts as a suspect."""
        ledger = ledger_with(entry("a", deliveries=2), open_=False)
        assert counters(ledger) == (1, 0, 1)

    def test_repr_names_no_content(self) -> None:
        """An entry's repr shows its id, state and deliveries, never its text."""
        e = entry("a")
        assert repr(e) == "Entry('a', QUEUED, deliveries=0)"


class TestTake:
    def test_take_in_order_up_to_limit(self) -> None:
        """take() hands out the oldest queued messages, TAKEN, at most ``limit``."""
        sent = [entry(f"m{i}") for i in range(5)]
        ledger = ledger_with(*sent)
        taken = ledger.take(T0, 2)
        assert taken == sent[:2]
        assert all(e.state is EntryState.TAKEN for e in taken)
        assert counters(ledger) == (3, 2, 0)

    def test_take_names_the_writer(self) -> None:
        """The list taken is the write's token: the turn to write is its own."""
        ledger = ledger_with(entry("a"))
        taken = ledger.take(T0)
        assert ledger.writer is taken

    def test_take_nothing_leaves_the_turn_free(self) -> None:
        """When nothing is taken the turn to write stays free."""
        ledger = ledger_with()
        assert ledger.take(T0) == []
        assert ledger.writer is None

    def test_take_skips_withdrawn(self) -> None:
        """Messages withdrawn or answered after being lined up are skipped."""
        a, b, c = entry("a"), entry("b"), entry("c")
        ledger = ledger_with(a, b, c)
        ledger.withdraw("a")
        ledger.answer("b")
        assert ledger.take(T0) == [c]

    def test_batch_bytes_bounded(self) -> None:
        """A batch stops once it holds WRITE_BATCH_BYTES, so a ping never waits behind much."""
        size = WRITE_BATCH_BYTES // 2 - 100
        sent = [entry(f"m{i}", size=size) for i in range(5)]
        ledger = ledger_with(*sent)
        assert ledger.take(T0) == sent[:3]  # stops once the batch reached the bound

    def test_serial_while_suspects(self) -> None:
        """With a suspect pending, one message at a time and none while one is in flight."""
        a, b = entry("a", deliveries=1), entry("b")
        ledger = ledger_with(a, b)
        assert ledger.can_take()
        assert write(ledger) == [a]
        assert not ledger.can_take()
        assert ledger.take(T0) == []
        ledger.answer("a")
        assert counters(ledger) == (1, 0, 0)
        assert write(ledger) == [b]

    def test_serial_for_innocent_neighbours_too(self) -> None:
        """Messages behind a suspect also go one at a time until no suspect is left."""
        a, b, c = entry("a"), entry("b", deliveries=1), entry("c")
        ledger = ledger_with(a, b, c)
        assert write(ledger) == [a]
        ledger.answer("a")
        assert write(ledger) == [b]
        ledger.answer("b")
        assert write(ledger) == [c]

    def test_rate_window_limits_take(self) -> None:
        """With a rate limit, take() hands out what the window allows and says when more may go."""
        sent = [entry(f"m{i}") for i in range(3)]
        ledger = ledger_with(*sent, rate_limit=2.0)
        assert write(ledger) == sent[:2]
        assert ledger.take(T0) == []
        assert ledger.next_write_at(T0) == T0 + 1
        assert write(ledger, now=T0 + 1) == sent[2:]
        assert ledger.next_write_at(T0 + 1) is None

    def test_rate_slots_given_back_for_skipped(self) -> None:
        """Slots reserved for messages that turned out withdrawn are given back to the window."""
        a, b, c = entry("a"), entry("b"), entry("c")
        ledger = ledger_with(a, b, c, rate_limit=3.0)
        ledger.withdraw("a")
        ledger.withdraw("b")
        assert write(ledger) == [c]
        assert ledger.window is not None
        assert ledger.window.available(T0) == 2


class TestWritten:
    def test_written_marks_and_counts(self) -> None:
        """written() marks the entries WRITTEN and written, counts them sent, frees the turn."""
        a = entry("a")
        ledger = ledger_with(a)
        taken = ledger.take(T0)
        ledger.written(taken, taken, current=True)
        assert a.state is EntryState.WRITTEN
        assert a.written
        assert ledger.sent == 1
        assert ledger.writer is None
        assert counters(ledger) == (0, 1, 0)

    def test_only_the_owner_frees_the_turn(self) -> None:
        """A report from another write (a stale one) leaves the current writer's turn alone."""
        a, b = entry("a"), entry("b")
        ledger = ledger_with(a, b)
        taken = ledger.take(T0, 1)
        other: list[Entry] = []
        ledger.written(other, [], current=True)
        assert ledger.writer is taken

    def test_stale_written_changes_no_state(self) -> None:
        """A write reported for an older connection marks nothing WRITTEN."""
        a = entry("a")
        ledger = ledger_with(a)
        taken = ledger.take(T0)
        ledger.stop(blame=False)
        ledger.written(taken, taken, current=False)
        assert a.state is EntryState.QUEUED
        assert a.written
        assert ledger.sent == 1


class TestNotWritten:
    def test_back_first_in_line(self) -> None:
        """Messages not written go back first in line, in their order, before later ones."""
        a, b, c = entry("a"), entry("b"), entry("c")
        ledger = ledger_with(a, b, c)
        taken = ledger.take(T0, 2)
        ledger.not_written(taken, taken, current=True)
        assert ledger.writer is None
        assert counters(ledger) == (3, 0, 0)
        assert ledger.take(T0) == [a, b, c]

    def test_done_ones_stay_done(self) -> None:
        """A message answered while taken does not come back."""
        a, b = entry("a"), entry("b")
        ledger = ledger_with(a, b)
        taken = ledger.take(T0)
        ledger.answer("a")
        ledger.not_written(taken, taken, current=True)
        assert a.state is EntryState.DONE
        assert counters(ledger) == (1, 0, 0)
        assert ledger.take(T0) == [b]

    def test_stale_not_written_changes_nothing(self) -> None:
        """A stale report leaves the entries to the connection that has them now."""
        a = entry("a")
        ledger = ledger_with(a)
        old = ledger.take(T0)
        ledger.stop(blame=False)
        ledger.start()
        new = ledger.take(T0)
        ledger.not_written(old, old, current=False)
        assert ledger.writer is new
        assert a.state is EntryState.TAKEN
        assert counters(ledger) == (0, 1, 0)

    def test_not_written_gives_rate_slots_back(self) -> None:
        """A write that put nothing on the wire gives its rate slot back."""
        ledger = ledger_with(rate_limit=1.0)
        a = entry("a")
        assert ledger.take_inline(a, T0)
        ledger.not_written(a, [a], current=True)
        assert ledger.window is not None
        assert ledger.window.available(T0) == 1
        assert write(ledger) == [a]


class TestTakeInline:
    def test_inline_when_idle(self) -> None:
        """An idle, open ledger hands a new message to its sender: TAKEN, the sender's turn."""
        ledger = ledger_with()
        a = entry("a")
        assert ledger.take_inline(a, T0)
        assert a.state is EntryState.TAKEN
        assert ledger.writer is a
        assert counters(ledger) == (0, 1, 0)

    @pytest.mark.parametrize("why", ["closed", "writer", "in_flight", "queued", "suspect"])
    def test_inline_refused(self, why: str) -> None:
        """Inline is refused when closed, a write is in progress, something is in flight or
        queued, or the message is a suspect; the message is then queued."""
        first = entry("first")
        ledger = ledger_with(open_=why != "closed")
        if why == "writer":
            ledger.take_inline(first, T0)
        elif why == "in_flight":
            ledger.add(first)
            write(ledger)
        elif why == "queued":
            ledger.add(first)
        a = entry("a", deliveries=1 if why == "suspect" else 0)
        assert not ledger.take_inline(a, T0)
        assert a.state is EntryState.QUEUED
        assert ledger.get("a") is a

    def test_inline_refused_by_the_window(self) -> None:
        """With the window full, inline is refused and uses no slot."""
        ledger = ledger_with(rate_limit=1.0)
        a, b = entry("a"), entry("b")
        assert ledger.take_inline(a, T0)
        ledger.written(a, [a], current=True)
        ledger.answer("a")
        assert not ledger.take_inline(b, T0)
        assert ledger.next_write_at(T0) == T0 + 1


class TestStop:
    def test_stop_queues_everything_again(self) -> None:
        """stop() queues taken and written messages again and frees the turn."""
        a, b, c = entry("a"), entry("b"), entry("c")
        ledger = ledger_with(a, b, c)
        write(ledger, 1)
        ledger.take(T0, 1)
        assert ledger.stop(blame=False) == []
        assert all(e.state is EntryState.QUEUED for e in (a, b, c))
        assert counters(ledger) == (3, 0, 0)
        assert ledger.writer is None
        assert not ledger.open

    def test_blame_counts_written_only(self) -> None:
        """A lost connection adds a delivery to the written messages, not the taken or queued."""
        a, b, c = entry("a"), entry("b"), entry("c")
        ledger = ledger_with(a, b, c)
        write(ledger, 1)
        ledger.take(T0, 1)
        ledger.stop(blame=True)
        assert (a.deliveries, b.deliveries, c.deliveries) == (1, 0, 0)
        assert counters(ledger) == (3, 0, 1)

    def test_a_write_reported_after_the_loss_is_blamed_then(self) -> None:
        """A message taken when the loss is seen, whose write then reports it went out on
        that connection, gets its delivery then (its write may have been what killed it)."""
        a, b = entry("a", deliveries=2), entry("b")
        ledger = ledger_with(a, b, max_deliveries=3)
        taken = ledger.take(T0)
        assert taken == [a]  # a suspect is written alone
        assert ledger.stop(blame=True) == []
        assert a.deliveries == 2
        assert ledger.written(taken, taken, current=False) == [a]
        assert (a.deliveries, b.deliveries) == (3, 0)
        assert ledger.poisoned_total == 1
        assert a.state is EntryState.QUEUED and ledger.get("a") is a

    def test_a_write_that_failed_after_the_loss_is_not_blamed(self) -> None:
        """A message taken when the loss is seen whose write then fails gets no delivery."""
        a = entry("a")
        ledger = ledger_with(a)
        taken = ledger.take(T0)
        ledger.stop(blame=True)
        ledger.not_written(taken, taken, current=False)
        ledger.start()
        again = ledger.take(T0)
        assert again == [a]
        assert ledger.written(again, again, current=False) == []
        assert (a.deliveries, ledger.suspects) == (0, 0)

    def test_a_caught_message_answered_meanwhile_is_not_blamed(self) -> None:
        """A caught message answered on the next connection before the old write reports
        gets no delivery."""
        a = entry("a")
        ledger = ledger_with(a)
        taken = ledger.take(T0)
        ledger.stop(blame=True)
        ledger.start()
        write(ledger)
        ledger.answer("a")
        assert ledger.written(taken, taken, current=False) == []
        assert a.deliveries == 0

    def test_no_blame_counts_nothing(self) -> None:
        """Without blame (reconnect(), close()) no delivery is counted."""
        a = entry("a")
        ledger = ledger_with(a)
        write(ledger)
        ledger.stop(blame=False)
        assert (a.deliveries, ledger.suspects) == (0, 0)

    def test_poisoned_at_max_deliveries(self) -> None:
        """A message reaching max_deliveries is returned, still in the ledger for the machine."""
        a, b = entry("a", deliveries=2), entry("b")
        ledger = ledger_with(a, b, max_deliveries=3)
        assert write(ledger) == [a]
        assert ledger.stop(blame=True) == [a]
        assert a.deliveries == 3
        assert ledger.get("a") is a
        ledger.finish(a)
        assert counters(ledger) == (1, 0, 0)

    def test_no_limit_never_poisons(self) -> None:
        """max_deliveries=None returns nothing and counts nothing (no serial writing)."""
        a = entry("a", deliveries=50)
        ledger = ledger_with(a, max_deliveries=None)
        write(ledger)
        assert ledger.stop(blame=True) == []
        assert a.deliveries == 50
        assert ledger.suspects == 0

    def test_start_lines_up_in_send_order(self) -> None:
        """start() lines every pending message up again, oldest first."""
        a, b, c = entry("a"), entry("b"), entry("c")
        ledger = ledger_with(a, b)
        write(ledger)
        ledger.add(c)
        ledger.stop(blame=False)
        ledger.start()
        assert write(ledger) == [a, b, c]


class TestRemoving:
    def test_answer_finishes_and_counts(self) -> None:
        """answer() finishes the message (DONE, out) and counts every response, known or not."""
        a = entry("a")
        ledger = ledger_with(a)
        write(ledger)
        assert ledger.answer("a") is a
        assert ledger.answer("a") is None
        assert ledger.answer("ghost") is None
        assert ledger.received == 3
        assert a.state is EntryState.DONE
        assert counters(ledger) == (0, 0, 0)

    def test_withdraw_only_queued_never_written(self) -> None:
        """withdraw() takes a queued message never written: not a taken, written or requeued one."""
        a, b, c = entry("a"), entry("b"), entry("c")
        ledger = ledger_with(a, b, c)
        write(ledger, 1)
        ledger.take(T0, 1)
        assert ledger.withdraw("a") is None
        assert ledger.withdraw("b") is None
        assert ledger.withdraw("c") is c
        ledger.stop(blame=False)
        assert a.state is EntryState.QUEUED
        assert ledger.withdraw("a") is None  # written once: a cancel fails from then on

    def test_withdraw_checks_the_future(self) -> None:
        """withdraw() with a future removes only the message of that very future."""
        a = entry("a")
        ledger = ledger_with(a)
        assert ledger.withdraw("a", MessageFuture("a")) is None
        assert ledger.withdraw("a", a.future) is a

    def test_abandon_anywhere(self) -> None:
        """abandon() removes a message whatever its state, counters fixed."""
        a, b, c = entry("a", deliveries=1), entry("b"), entry("c")
        ledger = ledger_with(a, b, c)
        write(ledger)  # a alone: it is a suspect
        taken = ledger.take(T0)
        assert taken == []
        ledger.answer("a")
        taken = ledger.take(T0, 1)
        assert taken == [b]
        assert ledger.abandon("b") is b
        assert ledger.abandon("c") is c
        assert ledger.abandon("c") is None
        assert counters(ledger) == (0, 0, 0)

    def test_clear_returns_all_in_order(self) -> None:
        """clear() takes every message out, DONE, in send() order, counters zero."""
        a, b = entry("a", deliveries=1), entry("b")
        ledger = ledger_with(a, b)
        write(ledger)
        assert ledger.clear() == (a, b)
        assert (a.state, b.state) == (EntryState.DONE, EntryState.DONE)
        assert counters(ledger) == (0, 0, 0)
        assert ledger.take(T0) == []
