"""Machine under random event sequences: a hypothesis state machine with a fake clock.

The test plays the engine, the connector, the writer thread, ``send()``'s inline writes and
the server around one ``Machine``: no threads, no sockets, time moves only when a rule says
so. As the engine does, it drains the machine's action buffer after every event. It keeps its
own model of what must be true (which generation is live, which write holds which messages,
when the connection was last known alive, whether it has proven itself) and checks the
drained actions, the machine's state and its ledger against it after every step.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from datetime import datetime, timezone

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from wsync import protocol
from wsync._backoff import Backoff
from wsync._errors import (
    ClientClosed,
    ConnectError,
    ConnectTimeout,
    DeliveryError,
    HandshakeError,
    ResponseTimeout,
    ServerError,
)
from wsync._futures import MessageFuture
from wsync._ledger import Entry, EntryState
from wsync._machine import (
    MAX_PONGS_OWED,
    Abort,
    Action,
    Control,
    CountDeliveries,
    Fail,
    Forget,
    Log,
    Machine,
    Notify,
    OnError,
    OnResponse,
    Open,
    Resolve,
    Wake,
)
from wsync._values import Status

CID = "client-1"
TS = datetime(2026, 11, 27, 13, 40, 30, 123000, tzinfo=timezone.utc)
INTERVAL = 10.0
HB_TIMEOUT = 25.0
CONNECT_TIMEOUT = 5.0
ANY_GEN = st.sampled_from([0, 0, 0, 1, 2])  # 0: the current generation; n: an older one
ANY_ENTRY = st.integers(0, 10_000)
AIM_LIST = ["pending", "pending", "any", "unknown"]  # which messageId a server frame names
AIMS = st.sampled_from(AIM_LIST)
CLOSE_CODES = st.sampled_from([None, None, 1001, 1011, 4001])
CONTROL_ORDER = [Control.CONNECT, Control.PING, Control.PONG]

D, CG, P, CF, CL = (
    Status.DISCONNECTED,
    Status.CONNECTING,
    Status.PENDING,
    Status.CONFIRMED,
    Status.CLOSED,
)
# Every edge a Notify may take (docs/concepts/states.rst, "The lifecycle"). CLOSED is terminal.
ALLOWED = {
    (D, CG),
    (D, CL),
    (CG, P),
    (CG, D),
    (CG, CL),
    (P, CF),
    (P, D),
    (P, CL),
    (CF, D),
    (CF, CL),
}
LIVE = (CG, P, CF)


class MachineModel(RuleBasedStateMachine):
    """The engine, writers, connector and server around one Machine."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.m: Machine | None = None
        self.resolve_lock = threading.Lock()  # FutureOwner: the futures' lock
        self.result: object = None  # what the last machine call returned

    # --- set-up -----------------------------------------------------------------------------

    @initialize(
        max_attempts=st.sampled_from([0, 1, 3, None, None]),
        rate=st.sampled_from([None, None, 3.0]),
        jitter=st.sampled_from([0.0, 0.0, 0.5]),
        reset_after=st.sampled_from([0.0, 4.0, 10.0]),
        max_deliveries=st.sampled_from([None, 1, 2, 3, 3]),
        durable=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def setup(
        self,
        max_attempts: int | None,
        rate: float | None,
        jitter: float,
        reset_after: float,
        max_deliveries: int | None,
        durable: bool,
        seed: int,
    ) -> None:
        self.backoff = Backoff(
            initial=1.0,
            factor=2.0,
            max_delay=4.0,
            max_attempts=max_attempts,
            jitter=jitter,
            reset_after=reset_after,
        )
        self.rate = rate
        self.max_deliveries = max_deliveries
        self.durable = durable
        self.m = Machine(
            client_id=CID,
            heartbeat_interval=INTERVAL,
            heartbeat_timeout=HB_TIMEOUT,
            backoff=self.backoff,
            connect_timeout=CONNECT_TIMEOUT,
            rate_limit=rate,
            max_deliveries=max_deliveries,
            durable=durable,
            rand=random.Random(seed).random,
            now=self.now,
        )
        # Messages.
        self.entries: list[Entry] = []  # every entry ever sent, in send() order
        self.index: dict[int, int] = {}  # id(entry) -> its place in self.entries
        self.completions: dict[int, int] = {}  # place -> Resolve/Fail actions naming it
        self.first_writes: list[int] = []  # places, in the order first written
        self.batch: tuple[int, list[Entry]] | None = None  # what the writer thread holds
        self.inline: tuple[int, Entry] | None = None  # a send() writing its message itself
        # Entries in a write when a confirmed connection was lost: if that write then reports
        # they went out, the loss counts for them then (ids of the entries).
        self.caught: set[int] = set()
        self.counter = 0
        # Connections.
        self.opened: set[int] = set()  # generations given an Open
        self.unanswered_opens: set[int] = set()  # Opens whose result is still to come
        self.readers: set[int] = set()  # generations whose socket opened
        self.aborted: set[int] = set()
        self.first_control: dict[int, Control] = {}
        self.expected_attempt: int | None = None  # number the next CONNECTING must carry
        self.attempt = 0  # number of the attempt that counts (0 once proven)
        self.attempt_started = 0.0
        self.alive_since: float | None = None  # confirm or last pong, while CONFIRMED
        self.proven = False  # the confirmed connection proved itself
        self.proof_at: float | None = None  # when it counts as proven without a word
        # Counters.
        self.sent = 0
        self.received = 0
        self.malformed = 0
        self.confirms = 0
        self.giveups = 0

    @property
    def machine(self) -> Machine:
        assert self.m is not None
        return self.m

    # --- FutureOwner: what a MessageFuture's cancel() asks the engine -----------------------

    def withdraw(self, future: MessageFuture) -> bool:
        """As the engine: withdraw a still-queued message for a cancel; False once written."""
        m = self.machine
        message_id = future.message_id
        held = m.ledger.get(message_id)
        if held is None or held.future is not future:
            return True
        was, written = held.state, held.written
        actions = self._call("withdraw", lambda: m.withdraw(message_id, future))
        if was is EntryState.QUEUED and not written:
            assert self.result is held
            assert held.state is EntryState.DONE
            assert actions == ([Forget((message_id,))] if self.durable else [])
            return True
        assert self.result is None
        assert actions == []
        assert held.state is was
        return False

    # --- checking every call --------------------------------------------------------------

    def _snapshot(self) -> tuple[object, ...]:
        m = self.machine
        return (
            m.status,
            m.state,
            m.generation,
            m.queued,
            m.in_flight,
            m.ledger.suspects,
            m.ledger.writer,
            list(m.pending.items()),
            [(e.state, e.deliveries, e.written) for e in self.entries],
            list(m.controls),
            m.next_deadline(),
            m.received,
            m.malformed,
            m.dead_at,
            m.trying,
            m.last_rtt,
            m.proven,
        )

    def _call(
        self,
        rule_name: str,
        fn: Callable[[], object],
        *,
        handshake: bool = False,
        retryable: bool = True,
        close_code: int | None = None,
        report: tuple[int, list[Entry], bool] | None = None,
    ) -> list[Action]:
        """Run one machine event, drain it and check the actions against the model.

        Returns the actions without the wakes; ``self.result`` is what the event returned.
        ``report``: the event is a write reporting (its generation, its entries, whether they
        went out).
        """
        m = self.machine
        prev = m.status
        late: list[Entry] = []  # written on a connection lost before the write reported
        if report is not None:
            gen, reported, went_out = report
            if gen != m.generation:
                for e in reported:
                    if id(e) in self.caught:
                        self.caught.discard(id(e))
                        if went_out and m.pending.get(e.message_id) is e:
                            late.append(e)
        before = {id(e): e for e in m.pending.values()}
        was = {id(e): (e.state, e.deliveries) for e in m.pending.values()}
        self.result = fn()
        drained = m.drain()
        assert m.drain() == [], "drain() empties the buffer"
        wakes = [a for a in drained if isinstance(a, Wake)]
        actions = [a for a in drained if not isinstance(a, Wake)]

        # Wakes: each thread at most once per drain; a transition wakes all three.
        assert len(wakes) == len(set(wakes)), drained

        # Notify: allowed edges only, at most one per call, never a silent status change.
        notifies = [a.state for a in actions if type(a) is Notify]
        assert len(notifies) <= 1, actions
        if notifies:
            assert set(wakes) == set(Wake)
        status = prev
        for s in notifies:
            assert (status, s.status) in ALLOWED, (status, s.status, rule_name)
            status = s.status
            assert s.client_id == CID
            if s.status is D:
                assert s.error, "a DISCONNECTED state always says why"
            else:
                assert s.close_code is None, "a close code belongs to a connection that ended"
            if s.status is CG:
                assert self.expected_attempt is not None
                assert s.attempt == self.expected_attempt
                self.attempt = s.attempt
                self.attempt_started = self.now
                self.expected_attempt = None
            elif s.status is P:
                assert s.attempt == self.attempt
            elif s.status is CF:
                assert (s.error, s.attempt) == (None, 0)
                assert s.conversation_id == f"conv-{m.generation}"
        assert m.status is status, (prev, m.status, actions)
        assert m.state.status is m.status

        # Resolve / Fail: only entries pending before the call, each at most once.
        fails = [a for a in actions if type(a) is Fail]
        for action in actions:
            if type(action) is Resolve:
                targets: tuple[Entry, ...] = (action.entry,)
                assert action.response.message_id == action.entry.message_id
            elif type(action) is Fail:
                targets = action.entries
            else:
                continue
            for e in targets:
                assert id(e) in before, f"{e} was not pending"
                if rule_name != "close":  # close() keeps them until forget_all()
                    assert m.pending.get(e.message_id) is not e
                    assert e.state is EntryState.DONE
                place = self.index[id(e)]
                self.completions[place] = self.completions.get(place, 0) + 1
                assert self.completions[place] == 1, f"{e} completed twice"
            if type(action) is Resolve:
                assert action.entry.future.settle(action.response, None) is not None
            else:
                assert isinstance(action, Fail)
                for e in action.entries:
                    assert e.future.settle(None, action.error()) is not None

        # A failure of an attempt or of a confirmed connection: retry on schedule or give up.
        failure = (
            bool(notifies)
            and notifies[-1].status is D
            and prev in LIVE
            and rule_name not in ("reconnect", "stop_trying")
        )
        blame = failure and prev is CF  # the messages written on it were lost with it

        # Deliveries: one more for each message on the wire of a connection that was lost
        # (counted only when there is a limit to count towards).
        # A message in a write when the loss was seen is counted when that write reports it
        # went out on the lost connection.
        limit = self.max_deliveries
        poisoned = []
        for key, e in before.items():
            state, deliveries = was[key]
            on_wire = blame and limit is not None and state is EntryState.WRITTEN
            on_wire = on_wire or (limit is not None and e in late)
            assert e.deliveries == deliveries + on_wire, (e, rule_name)
            if on_wire and limit is not None and e.deliveries >= limit:
                poisoned.append(e)
            if blame and limit is not None and state is EntryState.TAKEN:
                self.caught.add(key)

        failed = 0
        gives_up = False
        if failure:
            # Proven: by a response or pong, or CONFIRMED reset_after seconds (even when the
            # timer had not run yet). A loss that gave up a poison message is no failure of
            # the server's either.
            due = self.proof_at is not None and self.now >= self.proof_at
            proven = prev is CF and (self.proven or due or bool(poisoned))
            failed = 0 if proven else self.attempt
            attempts = self.backoff.max_attempts
            gives_up = not retryable or (attempts is not None and failed >= attempts)
        poison_fails = [f for f in fails if isinstance(f.error(), DeliveryError)]
        assert [f.entries for f in poison_fails] == [(e,) for e in poisoned]
        assert all(f.final for f in poison_fails)
        counted = [mid for a in actions if type(a) is CountDeliveries for mid in a.message_ids]
        if self.durable and blame:
            assert counted == [
                e.message_id
                for key, e in before.items()
                if was[key][0] is EntryState.WRITTEN and e not in poisoned
            ]
        elif self.durable and late and limit is not None:
            assert counted == [e.message_id for e in late if e not in poisoned]
        else:
            assert counted == []

        # Forget: only with a durable outbox, never a message still pending; close() keeps all.
        forgotten = [mid for a in actions if type(a) is Forget for mid in a.message_ids]
        for mid in forgotten:
            assert mid not in m.pending
        if not self.durable:
            assert forgotten == []
        elif rule_name != "close":
            for f in fails:
                assert {e.message_id for e in f.entries} <= set(forgotten)

        # Fails: each kind only where it belongs.
        give_up_fails = [f for f in fails if type(f.error()) in (ConnectError, HandshakeError)]
        if rule_name == "close":
            assert not forgotten
            assert len(fails) == (1 if before else 0)
            for f in fails:
                assert f.entries == tuple(before.values())
                assert type(f.error()) is ClientClosed
                assert not f.final
        elif gives_up:
            rest = tuple(e for e in before.values() if e not in poisoned)
            assert [f.entries for f in give_up_fails] == ([rest] if rest else [])
            for f in give_up_fails:
                error = f.error()
                assert type(error) is (HandshakeError if handshake else ConnectError)
                assert error.__cause__ is not None
                assert f.final
        else:
            assert not give_up_fails
        others = [f for f in fails if f not in poison_fails and f not in give_up_fails]
        if rule_name == "stop_trying":
            assert not fails, "stop_trying keeps the queue"
        elif rule_name == "time_out":
            assert all(isinstance(f.error(), ResponseTimeout) for f in others)
        elif rule_name == "frame":
            assert all(isinstance(f.error(), ServerError) for f in others)
            for f in others:
                assert len(f.entries) == 1
                assert f.error().message_id == f.entries[0].message_id  # type: ignore[attr-defined]
        elif rule_name != "close":
            assert not others, (rule_name, others)

        # Logs: one WARNING per poisoned message, one per retry; one ERROR per give-up.
        logged = [(a.level, a.message) for a in actions if type(a) is Log]
        expected_levels = [logging.WARNING] * len(poisoned)
        if failure:
            expected_levels.append(logging.ERROR if gives_up else logging.WARNING)
        assert [level for level, _ in logged] == expected_levels, (rule_name, logged)
        for e, (_, text) in zip(poisoned, logged[: len(poisoned)], strict=True):
            assert f"message {e.message_id} " in text
            assert e.text not in text, "a log line never carries a message's content"
        if failure:
            text = logged[-1][1]
            assert (
                ("gave up" in text or "could not connect" in text)
                if gives_up
                else ("retrying in" in text)
            )

        # Open / Abort: generations only grow; each connection is aborted once.
        for action in actions:
            if type(action) is Open:
                assert action.generation == m.generation
                assert all(action.generation > g for g in self.opened)
                assert action.timeout == CONNECT_TIMEOUT
                self.opened.add(action.generation)
                self.unanswered_opens.add(action.generation)
            elif type(action) is Abort:
                assert action.generation in self.opened
                assert action.generation not in self.aborted, "aborted twice"
                self.aborted.add(action.generation)

        if failure:
            assert notifies[-1].attempt == failed
            assert notifies[-1].close_code == close_code
            self.alive_since = None
            self.proven = False
            self.proof_at = None
            if gives_up:
                self.giveups += 1
                assert m.giveups == self.giveups
                assert not m.trying
                assert m.next_deadline() is None
                assert not m.pending
                self.expected_attempt = None
            else:
                assert m.trying
                due = m.next_deadline()
                assert due is not None
                base = min(self.backoff.initial * self.backoff.factor**failed, 4.0)
                jitter = self.backoff.jitter
                assert base * (1 - jitter) - 1e-9 <= due - self.now <= base * (1 + jitter) + 1e-9
                self.expected_attempt = failed + 1
        return actions

    def _ignored(self, rule_name: str, fn: Callable[[], object]) -> list[Action]:
        """Run a call that must change nothing (a stale or impossible event)."""
        before = self._snapshot()
        actions = self._call(rule_name, fn)
        assert actions == []
        assert self._snapshot() == before
        return actions

    def _proved(self) -> None:
        """The confirmed connection proved itself (a response, a pong, or reset_after)."""
        m = self.machine
        assert m.proven
        assert m.attempt == 0
        assert m.proof_at is None
        self.proven = True
        self.proof_at = None
        self.attempt = 0

    # --- helpers ----------------------------------------------------------------------------

    def _entry(self, pick: int) -> Entry | None:
        return self.entries[pick % len(self.entries)] if self.entries else None

    def _target_id(self, aim: str, pick: int) -> str | None:
        """A messageId for a server frame: a pending message's, any sent one's, or unknown."""
        if aim == "pending" and self.machine.pending:
            ids = list(self.machine.pending)
            return ids[pick % len(ids)]
        e = self._entry(pick)
        if aim == "unknown" or e is None:
            return "unknown"
        return e.message_id

    def _reader_gen(self, pick: int) -> int | None:
        """A generation whose socket opened: the current one (0) or an older one."""
        m = self.machine
        if pick == 0:
            return m.generation if m.generation in self.readers else None
        old = sorted(g for g in self.readers if g != m.generation)
        return old[pick % len(old)] if old else None

    def _live(self, gen: int) -> bool:
        return gen == self.machine.generation and self.machine.status in (P, CF)

    def _record_writes(self, entries: list[Entry]) -> None:
        """``entries`` reached a socket: note the first write of each still unanswered."""
        for e in entries:
            place = self.index[id(e)]
            if e.state is not EntryState.DONE and place not in self.first_writes:
                self.first_writes.append(place)

    def _timer(self) -> None:
        """The timer thread wakes at self.now and does what is due."""
        m = self.machine
        prev = m.status
        due = m.next_deadline()
        next_ping = m.next_ping_at
        alive = self.alive_since
        proof_at = self.proof_at
        if due is None or self.now < due:
            self._ignored("timer", lambda: m.on_timer(self.now))
            return
        self._call("timer", lambda: m.on_timer(self.now))
        if prev is CF:
            assert alive is not None and next_ping is not None
            dead = self.now >= alive + HB_TIMEOUT  # exactly then, never before
            assert (m.status is D) == dead
            if not dead:
                if proof_at is not None and self.now >= proof_at:
                    self._proved()
                assert m.proven == self.proven
                if self.now >= next_ping:
                    assert Control.PING in m.controls
                    assert m.next_ping_at is not None
                    assert m.next_ping_at > self.now, "a late timer must not queue a burst"
        elif prev is P:
            assert m.status is D  # the confirm deadline passed
            assert self.now >= self.attempt_started + CONNECT_TIMEOUT
        elif prev is D:
            assert m.status is CG

    # --- the user ---------------------------------------------------------------------------

    @rule()
    def connect(self) -> None:
        m = self.machine
        starts = not m.closed and not m.trying and m.status is not CF
        actions = self._call("connect", lambda: m.connect(self.now))
        assert actions == []
        if starts:
            assert m.trying
            assert m.next_deadline() == self.now
            self.expected_attempt = 0

    @rule()
    def reconnect(self) -> None:
        m = self.machine
        prev, gen = m.status, m.generation
        actions = self._call("reconnect", lambda: m.reconnect(self.now))
        if prev is CL:
            assert actions == []
            return
        assert m.trying
        assert m.next_deadline() == self.now
        assert m.status is D
        assert m.attempt == 0
        self.expected_attempt = 0
        self.alive_since = None
        self.proven = False
        self.proof_at = None
        if prev in LIVE:
            assert actions == [
                Abort(gen, "reconnect requested"),
                Notify(m.state),
            ]
        else:
            assert actions == []

    @rule(go=st.integers(0, 3))
    def stop_trying(self, go: int = 0) -> None:
        """connect(timeout) ran out (a quarter of the time: it ends all attempts)."""
        if go:
            return
        m = self.machine
        trying = m.trying and not m.closed
        error = ConnectTimeout("connect timed out")
        error.__cause__ = ConnectError("last failure")
        if not trying:
            self._ignored("stop_trying", lambda: m.stop_trying(self.now, error))
            return
        before = dict(m.pending)
        self._call("stop_trying", lambda: m.stop_trying(self.now, error))
        assert m.status is D
        assert not m.trying
        assert m.pending == before, "stop_trying keeps the queue"
        assert m.next_deadline() is None
        self.expected_attempt = None

    @rule(go=st.integers(0, 3))
    def close(self, go: int = 0) -> None:
        """close() (a quarter of the time: it is terminal)."""
        if go:
            return
        m = self.machine
        if m.closed:
            self._ignored("close", m.close)
            return
        self._call("close", m.close)
        m.forget_all()  # as the engine does once it failed the futures
        assert m.status is CL
        assert m.ledger.writer is None
        self.expected_attempt = None
        self.alive_since = None
        self.proven = False
        self.proof_at = None

    @precondition(lambda self: self.m is not None and not self.m.closed)
    @rule(reuse=st.booleans(), pick=ANY_ENTRY, inline=st.booleans())
    def send_2(self, reuse: bool, pick: int, inline: bool) -> None:
        """The same as send(): twice as likely."""
        self.send(reuse, pick, inline)

    @precondition(lambda self: self.m is not None and not self.m.closed)
    @rule(reuse=st.booleans(), pick=ANY_ENTRY, inline=st.booleans())
    def send(self, reuse: bool, pick: int, inline: bool = False) -> None:
        """send(); with ``inline``, send()'s fast path (the caller may write it itself)."""
        m = self.machine
        free = [e.message_id for e in self.entries if e.message_id not in m.pending]
        if reuse and free:
            message_id = free[pick % len(free)]
        else:
            message_id = f"m{self.counter}"
            self.counter += 1
        future = MessageFuture(message_id, self)
        e = Entry(message_id, f"text-{len(self.entries)}", future)
        self.index[id(e)] = len(self.entries)
        self.entries.append(e)
        ledger = m.ledger
        window = ledger.window
        could = (
            inline
            and self.inline is None
            and m.status is CF
            and not m.controls
            and ledger.writer is None
            and m.in_flight == 0
            and not ledger._to_write
            and (window is None or window.available(self.now) > 0)
        )
        queued = m.queued
        actions = self._call("send", lambda: m.send(e, self.now, inline=inline))
        assert actions == []
        assert m.pending[message_id] is e
        assert self.result is could
        if could:
            assert e.state is EntryState.TAKEN
            assert ledger.writer is e
            assert m.queued == queued
            self.inline = (m.generation, e)
        else:
            assert e.state is EntryState.QUEUED
            assert m.queued == queued + 1

    @precondition(lambda self: self.m is not None and not self.m.closed)
    @rule()
    def send_inline(self) -> None:
        """A new message through send()'s fast path."""
        self.send(False, 0, True)

    @precondition(lambda self: self.m is not None and self.inline is not None)
    @rule()
    def inline_done(self) -> None:
        """send()'s own write of its message succeeds and send() reports it."""
        self._inline_done("written")

    @precondition(lambda self: self.m is not None and self.inline is not None)
    @rule(outcome=st.sampled_from(["then_lost", "failed", "gone"]))
    def inline_fails(self, outcome: str) -> None:
        """send()'s own write fails, finds no connection, or its connection dies after it."""
        self._inline_done(outcome)

    def _inline_done(self, outcome: str) -> None:
        m = self.machine
        assert self.inline is not None
        gen, e = self.inline
        self.inline = None
        if outcome in ("written", "then_lost"):
            live = e.state is not EntryState.DONE
            self._call("written", lambda: m.written(gen, e, [e]), report=(gen, [e], True))
            self.sent += 1
            if live:
                self._record_writes([e])
            e.future.mark_running()
            if outcome == "then_lost":
                self.connection_lost_for(gen, None)
            return
        error = ConnectError("connection lost while writing") if outcome == "failed" else None
        self._not_written(gen, e, [e], error)

    @rule(pick=ANY_ENTRY)
    def cancel(self, pick: int) -> None:
        """future.cancel(): True only while the message is queued and was never written."""
        m = self.machine
        e = self._entry(pick)
        if e is None:
            return
        if e.future.done():
            again = e.future.cancelled()
            assert e.future.cancel() is again
            return
        assert m.pending.get(e.message_id) is e
        cancellable = e.state is EntryState.QUEUED and not e.written
        assert e.future.cancel() is cancellable
        if cancellable:
            assert e.state is EntryState.DONE
            assert m.pending.get(e.message_id) is not e
            assert e.future.cancelled()

    @rule(pick=ANY_ENTRY)
    def time_out(self, pick: int) -> None:
        """send_and_wait() timed out on a message: wherever it is, it is never written again."""
        m = self.machine
        e = self._entry(pick)
        if e is None:
            return
        message_id = e.message_id
        holder = m.pending.get(message_id)  # e, or a later message reusing its id

        def error() -> ResponseTimeout:
            return ResponseTimeout("timed out")

        actions = self._call("time_out", lambda: m.time_out(message_id, error))
        assert self.result is holder
        if holder is None:
            assert actions == []
        else:
            assert holder.state is EntryState.DONE
            forget = [Forget((message_id,))] if self.durable else []
            assert actions == [Fail((holder,), error), *forget]

    # --- the clock and the timer thread ---------------------------------------------------

    @rule(dt=st.one_of(st.floats(0.0, 2.0), st.floats(0.0, 30.0)))
    def advance(self, dt: float) -> None:
        self.now += dt
        self._timer()

    @rule(offset=st.sampled_from([-1e-3, 0.0, 0.0, 1e-3]))
    def to_next_deadline(self, offset: float) -> None:
        due = self.machine.next_deadline()
        if due is not None:
            self.now = max(self.now, due + offset)
        self._timer()

    @rule(offset=st.sampled_from([-1e-3, 0.0]))
    def to_dead_time(self, offset: float) -> None:
        """No pong comes: the timer wakes just before, or exactly at, the dead time."""
        dead_at = self.machine.dead_at
        if self.machine.status is CF and dead_at is not None:
            self.now = max(self.now, dead_at + offset)
        self._timer()

    @rule(offset=st.sampled_from([-1e-3, 0.0]))
    def to_proof_time(self, offset: float) -> None:
        """The timer wakes just before, or exactly at, confirm + reset_after."""
        proof_at = self.machine.proof_at
        if self.machine.status is CF and proof_at is not None:
            self.now = max(self.now, proof_at + offset)
        self._timer()

    @rule(writer=st.booleans())
    def internal_error(self, writer: bool) -> None:
        """A wsync thread hit a bug; if it was the writer, its batch is never reported."""
        m = self.machine
        if writer:
            self.batch = None
        live = m.is_current(m.generation)
        prev = m.status
        self._call("internal", lambda: m.on_internal_error(RuntimeError("bug"), self.now))
        assert m.ledger.writer is None
        if live and prev in LIVE:
            assert m.status is D
        else:
            assert m.status is prev

    # --- the connector --------------------------------------------------------------------

    @rule(pick=ANY_GEN, ok=st.sampled_from([True, True, False]), retryable=st.booleans())
    def open_result(self, pick: int, ok: bool, retryable: bool) -> None:
        m = self.machine
        waiting = sorted(self.unanswered_opens)
        if not waiting:
            return
        gen = (
            m.generation if pick == 0 and m.generation in waiting else waiting[pick % len(waiting)]
        )
        self.unanswered_opens.discard(gen)
        live = gen == m.generation and m.status is CG
        if ok:
            if not live:
                self._ignored("open", lambda: m.on_open_succeeded(gen, self.now))
                assert self.result is False, "a stale socket is refused: the engine closes it"
                return
            self._call("open", lambda: m.on_open_succeeded(gen, self.now))
            assert self.result is True
            assert m.status is P
            assert m.controls == [Control.CONNECT]
            self.readers.add(gen)
        else:
            error = ConnectError("connection refused")
            if not live:
                self._ignored("open", lambda: m.on_open_failed(gen, error, self.now))
                return
            self._call(
                "open",
                lambda: m.on_open_failed(gen, error, self.now, retryable=retryable),
                retryable=retryable,
            )
            assert m.status is D

    @rule(pick=ANY_GEN, go=st.booleans(), close_code=CLOSE_CODES)
    def connection_lost(self, pick: int, close_code: int | None, go: bool = True) -> None:
        """A socket closes (half the time: it ends the connection)."""
        if not go:
            return
        m = self.machine
        gens = sorted(self.opened)
        if not gens:
            return
        gen = m.generation if pick == 0 else gens[pick % len(gens)]
        self.connection_lost_for(gen, close_code)

    def connection_lost_for(self, gen: int, close_code: int | None) -> None:
        m = self.machine
        error = ConnectError("connection reset")
        lost = lambda: m.on_connection_lost(gen, error, self.now, close_code=close_code)  # noqa: E731
        if not m.is_current(gen) or m.status not in LIVE:
            self._ignored("lost", lost)
            return
        self._call("lost", lost, close_code=close_code)
        assert m.status is D

    # --- the server -----------------------------------------------------------------------

    def _frame(self, gen: int, frame: protocol.Frame) -> list[Action] | None:
        """Deliver a frame read on ``gen``; None when it had to be ignored."""
        m = self.machine
        if not self._live(gen):
            self._ignored("frame", lambda: m.on_frame(gen, frame, self.now))
            return None
        handshake = m.status is P and type(frame) in (protocol.ConnectConfirm, protocol.Error)
        return self._call("frame", lambda: m.on_frame(gen, frame, self.now), handshake=handshake)

    @rule(pick=ANY_GEN, kind=st.sampled_from(["good", "good", "good", "other_id", "refused"]))
    def confirm(self, pick: int, kind: str) -> None:
        m = self.machine
        gen = self._reader_gen(pick)
        if gen is None:
            return
        frame = protocol.ConnectConfirm(
            client_id="someone-else" if kind == "other_id" else CID,
            conversation_id=f"conv-{gen}",
            status="refused" if kind == "refused" else "confirmed",
            timestamp=TS,
        )
        prev = m.status
        actions = self._frame(gen, frame)
        if actions is None:
            return
        if prev is CF:
            assert actions == []
            self.malformed += 1
        elif kind == "good":
            assert m.status is CF
            self.confirms += 1
            self.alive_since = self.now
            assert m.next_ping_at == self.now + INTERVAL
            reset_after = self.backoff.reset_after
            if reset_after <= 0:
                self._proved()
            else:
                assert not m.proven
                assert m.attempt == self.attempt, "a confirm alone does not reset the count"
                self.proven = False
                self.proof_at = self.now + reset_after
        else:
            assert m.status is D
            assert isinstance(m.last_failure, HandshakeError)

    @rule(pick=ANY_GEN, which=ANY_ENTRY, aim=AIMS)
    def response(self, pick: int, which: int, aim: str) -> None:
        m = self.machine
        gen = self._reader_gen(pick)
        if gen is None:
            return
        message_id = self._target_id(aim, which)
        assert message_id is not None
        holder = m.pending.get(message_id)
        frame = protocol.Response(message_id=message_id, content="ok", timestamp=TS)
        prev = m.status
        actions = self._frame(gen, frame)
        if actions is None:
            return
        self.received += 1
        if holder is None:
            assert actions == [OnResponse(frame)]
        else:
            forget = [Forget((message_id,))] if self.durable else []
            assert actions == [Resolve(holder, frame), *forget, OnResponse(frame)]
        if prev is CF and not self.proven:
            self._proved()

    @rule(pick=ANY_GEN, which=ANY_ENTRY, aim=st.sampled_from(["none", *AIM_LIST]))
    def error(self, pick: int, which: int, aim: str) -> None:
        m = self.machine
        gen = self._reader_gen(pick)
        if gen is None:
            return
        message_id = None if aim == "none" else self._target_id(aim, which)
        holder = m.pending.get(message_id) if message_id is not None else None
        prev = m.status
        frame = protocol.Error(error="nope", timestamp=TS, message_id=message_id)
        actions = self._frame(gen, frame)
        if actions is None:
            return
        assert type(actions[0]) is OnError
        assert actions[0].error.message_id == message_id
        if prev is P:
            assert m.status is D
            assert isinstance(m.last_failure, HandshakeError)
        elif holder is None:
            assert len(actions) == 1
        else:
            forget = [Forget] if self.durable else []
            assert [type(a) for a in actions] == [OnError, Fail, *forget]
            assert actions[1].entries == (holder,)  # type: ignore[union-attr]

    @rule(pick=ANY_GEN, flood=st.integers(1, 20))
    def ping(self, pick: int, flood: int) -> None:
        """The server pings, maybe several times before the PONG is written: one PONG owed
        per ping, up to the cap."""
        m = self.machine
        gen = self._reader_gen(pick)
        if gen is None:
            return
        for _ in range(flood):
            owed = m.controls.count(Control.PONG)
            if self._frame(gen, protocol.Ping(timestamp=TS)) is not None:
                assert m.controls.count(Control.PONG) == min(owed + 1, MAX_PONGS_OWED)

    @rule(pick=ANY_GEN)
    def pong(self, pick: int) -> None:
        m = self.machine
        gen = self._reader_gen(pick)
        if gen is None:
            return
        prev = m.status
        if self._frame(gen, protocol.Pong(timestamp=TS)) is not None and prev is CF:
            self.alive_since = self.now
            self._proved()

    @rule(pick=ANY_GEN, decodable=st.booleans())
    def malformed(self, pick: int, decodable: bool) -> None:
        m = self.machine
        if not decodable:  # the reader could not decode it: it only counts
            m.on_malformed()
            self.malformed += 1
            return
        gen = self._reader_gen(pick)
        if gen is None:
            return
        frame = protocol.Message(client_id=CID, content="x", timestamp=TS, message_id="x")
        if self._frame(gen, frame) is not None:
            self.malformed += 1

    # --- the writer thread ----------------------------------------------------------------

    @precondition(
        lambda self: self.m is not None and self.batch is None and self.m.ledger.writer is None
    )
    @rule(limit=st.sampled_from([1, 2, 256]))
    def writer_take(self, limit: int) -> None:
        """The writer thread, woken with nobody writing, takes what there is to write."""
        m = self.machine
        gen = m.generation
        prev = m.status
        queued = [e for e in m.pending.values() if e.state is EntryState.QUEUED]
        suspects, in_flight = m.ledger.suspects, m.in_flight
        could = m.has_writes()
        controls, entries = m.take_writes(gen, self.now, limit)
        assert m.status is prev
        assert m.drain() == [], "take_writes buffers nothing"
        if not could:
            assert (controls, entries) == ([], [])
        if prev is not CF:
            assert entries == []
            assert Control.PING not in controls
        # The oldest queued messages, in send() order.
        assert entries == queued[: len(entries)]
        if suspects:  # a suspect pending: one message at a time, alone on the wire
            assert len(entries) <= 1
            assert not entries or in_flight == 0
        elif prev is CF and self.rate is None:
            assert len(entries) == min(limit, len(queued))
        assert controls == sorted(controls, key=CONTROL_ORDER.index)
        if controls and gen not in self.first_control:
            self.first_control[gen] = controls[0]
            assert controls[0] is Control.CONNECT, "connect goes first on every connection"
        assert all(e.state is EntryState.TAKEN for e in entries)
        assert m.ledger.writer is (entries if entries else None)
        assert not m.controls
        self.batch = (gen, entries)

    @rule(back=st.integers(1, 3))
    def stale_take(self, back: int) -> None:
        """A writer asking for an old generation gets nothing and takes nothing away."""
        m = self.machine
        if m.generation - back < 0:
            return
        before = self._snapshot()
        assert m.take_writes(m.generation - back, self.now) == ([], [])
        assert self._snapshot() == before

    @precondition(lambda self: self.m is not None and self.batch is not None)
    @rule()
    def writer_done(self) -> None:
        """The writer writes what it took and reports it."""
        self._writer_done("written")

    @precondition(lambda self: self.m is not None and self.batch is not None)
    @rule(outcome=st.sampled_from(["then_lost", "failed", "gone"]))
    def writer_fails(self, outcome: str) -> None:
        """The writer's write fails, finds no connection, or its connection dies after it."""
        self._writer_done(outcome)

    def _writer_done(self, outcome: str) -> None:
        """How a write ends: ``written`` (on the wire); ``then_lost`` (on the wire, then the
        connection dies); ``failed`` (the socket failed: the connection is lost, nothing
        counts as written); ``gone`` (no transport any more: nothing written)."""
        m = self.machine
        assert self.batch is not None
        gen, entries = self.batch
        self.batch = None
        if outcome in ("written", "then_lost"):
            live = [e for e in entries if e.state is not EntryState.DONE]
            actions = self._call(
                "written", lambda: m.written(gen, entries, entries), report=(gen, entries, True)
            )
            # Only a write reported after its connection's loss may count deliveries then.
            assert all(type(a) in (CountDeliveries, Fail, Log, Forget) for a in actions)
            if gen == m.generation:
                assert actions == []
            self.sent += len(entries)
            self._record_writes(live)
            if gen == m.generation:
                assert all(e.state in (EntryState.WRITTEN, EntryState.DONE) for e in entries)
            for e in entries:
                e.future.mark_running()
            if outcome == "then_lost":
                self.connection_lost_for(gen, None)
            return
        error = ConnectError("connection lost while writing") if outcome == "failed" else None
        self._not_written(gen, entries, entries, error)

    def _not_written(
        self, gen: int, owner: object, entries: list[Entry], error: ConnectError | None
    ) -> None:
        """A write put nothing on the wire; ``error``: because its connection died."""
        m = self.machine
        current = gen == m.generation
        back = [e for e in entries if e.state is EntryState.TAKEN]
        report = lambda: m.not_written(gen, owner, entries, error, self.now)  # noqa: E731
        if error is not None and m.is_current(gen) and m.status in LIVE:
            self._call("lost", report, report=(gen, entries, False))
            assert m.status is D
        else:
            actions = self._call("not_written", report, report=(gen, entries, False))
            assert actions == []
        for e in back:  # queued again first in line (or failed, if the loss gave up)
            assert e.state is not EntryState.TAKEN or not current
            assert e.state is EntryState.DONE or m.pending.get(e.message_id) is e
        assert m.ledger.writer is not owner

    # --- shortcuts toward interesting states ----------------------------------------------

    # Four rules for the same step, so that sequences reach CONFIRMED and traffic often.
    @rule()
    def progress(self) -> None:
        """Take the next step toward CONFIRMED (and then traffic), as a healthy server would."""
        self._progress()

    @rule()
    def progress_2(self) -> None:
        """The same as progress()."""
        self._progress()

    @rule()
    def progress_3(self) -> None:
        """The same as progress()."""
        self._progress()

    @rule()
    def progress_4(self) -> None:
        """The same as progress()."""
        self._progress()

    @rule(extra=st.booleans(), close_code=CLOSE_CODES)
    def bounce(self, extra: bool, close_code: int | None) -> None:
        """The server drops a confirmed connection; the client reconnects and writes again."""
        m = self.machine
        if m.status is not CF:
            return
        if extra:  # something written and unanswered when the connection drops
            self.send(False, 0)
            self._write_all()
        self.connection_lost_for(m.generation, close_code)
        for _ in range(8):
            if m.status is CF or (m.status is D and not m.trying):
                break
            self._progress()
        if m.status is CF:
            self._progress()

    def _write_all(self) -> None:
        """Finish the writes in progress, then let the writer thread take and write."""
        m = self.machine
        if self.inline is not None:
            self._inline_done("written")
        if self.batch is not None:
            self._writer_done("written")
        if m.ledger.writer is None:
            self.writer_take(256)
            self._writer_done("written")

    def _progress(self) -> None:
        m = self.machine
        if m.status is D and not m.trying:
            self.connect()
        elif m.status is D:
            self.to_next_deadline(0.0)
        elif m.status is CG:
            if m.generation in self.unanswered_opens:
                self.open_result(0, True, True)
        elif m.status is P:
            self._write_all()
            if m.status is P:
                self.confirm(0, "good")
        elif m.status is CF:
            self._write_all()
            written = [e for e in m.pending.values() if e.state is EntryState.WRITTEN]
            # The server answers the oldest, one stays unanswered; a lone suspect is answered.
            if len(written) > 1 or (written and m.ledger.suspects):
                self._answer(written[0])

    @rule()
    def quiet_then_inline(self) -> None:
        """Everything written and answered, then a send() on the fast path: it writes itself."""
        m = self.machine
        if m.status is not CF:
            return
        self._write_all()
        self.catch_up()
        if m.status is CF and not m.pending and self.inline is None and not m.controls:
            self.send(False, 0, True)

    @rule()
    def catch_up(self) -> None:
        """The server answers every message written on the current connection."""
        m = self.machine
        if m.status is not CF:
            return
        for e in [e for e in m.pending.values() if e.state is EntryState.WRITTEN]:
            self._answer(e)

    def _answer(self, e: Entry) -> None:
        m = self.machine
        frame = protocol.Response(message_id=e.message_id, content="ok", timestamp=TS)
        prev_proven = self.proven
        actions = self._frame(m.generation, frame)
        assert actions is not None
        self.received += 1
        forget = [Forget((e.message_id,))] if self.durable else []
        assert actions == [Resolve(e, frame), *forget, OnResponse(frame)]
        if not prev_proven:
            self._proved()

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def every_message_in_one_place(self) -> None:
        """The ledger's counters match the entries; each entry is pending xor done and settled."""
        if self.m is None:
            return
        m = self.m
        ledger = m.ledger
        states = [e.state for e in m.pending.values()]
        assert ledger.queued == states.count(EntryState.QUEUED) >= 0
        in_flight = states.count(EntryState.TAKEN) + states.count(EntryState.WRITTEN)
        assert ledger.in_flight == in_flight >= 0
        assert ledger.suspects == sum(1 for e in m.pending.values() if e.deliveries) >= 0
        assert (m.queued, m.in_flight) == (ledger.queued, ledger.in_flight)
        assert EntryState.DONE not in states
        for message_id, e in m.pending.items():
            assert e.message_id == message_id
            if self.max_deliveries is not None:
                assert e.deliveries < self.max_deliveries, "a poisoned message left the ledger"
        batch = self.batch[1] if self.batch and self.batch[0] == m.generation else []
        inline = [self.inline[1]] if self.inline and self.inline[0] == m.generation else []
        for e in self.entries:
            if m.pending.get(e.message_id) is e:
                assert not e.future.done(), f"{e} pending with its future settled"
                if e.state is EntryState.TAKEN:
                    assert any(e is x for x in batch + inline), f"{e} TAKEN by no write"
            else:
                assert e.state is EntryState.DONE
                assert e.future.done(), f"{e} left without its future settled"
        if m.status is not CF:
            assert in_flight == 0, "nothing is on the wire of a connection that is not confirmed"
        if m.status is CF:
            # Liveness: every queued message is still on the writer's list.
            to_write = {id(e) for e in ledger._to_write}
            assert all(
                id(e) in to_write for e in m.pending.values() if e.state is EntryState.QUEUED
            )
        if m.closed:
            assert not m.pending

    @invariant()
    def writer_token_names_the_write_in_progress(self) -> None:
        """The turn to write is None whenever no write is in progress, else that write's token."""
        if self.m is None:
            return
        writer = self.m.ledger.writer
        tokens = []
        if self.batch is not None and self.batch[1]:
            tokens.append(self.batch[1])
        if self.inline is not None:
            tokens.append(self.inline[1])
        if not tokens:
            assert writer is None
        else:
            assert writer is None or any(writer is t for t in tokens)

    @invariant()
    def one_of_each_control_owed(self) -> None:
        """At most one connect and one ping are owed, pongs up to the cap, in the order they
        are written."""
        if self.m is None:
            return
        controls = self.m.controls
        assert controls == sorted(controls, key=CONTROL_ORDER.index)
        assert controls.count(Control.CONNECT) <= 1 and controls.count(Control.PING) <= 1
        assert controls.count(Control.PONG) <= MAX_PONGS_OWED

    @invariant()
    def first_writes_follow_send_order(self) -> None:
        """The first write of every message follows send() order."""
        if self.m is None:
            return
        assert self.first_writes == sorted(self.first_writes)

    @invariant()
    def deadlines_match_status(self) -> None:
        """next_deadline() and the heartbeat and proof times agree with the status."""
        if self.m is None:
            return
        m = self.m
        due = m.next_deadline()
        assert m.proof_at == self.proof_at
        if m.status is CF:
            assert m.proven == self.proven
            assert not m.trying
            assert self.alive_since is not None
            assert m.next_ping_at is not None
            assert m.dead_at == self.alive_since + HB_TIMEOUT
            times = [m.next_ping_at, m.dead_at]
            if self.proof_at is not None:
                times.append(self.proof_at)
            assert due == min(times)
        elif m.status is P:
            assert m.trying
            assert due == self.attempt_started + CONNECT_TIMEOUT
        elif m.status is CG:
            assert m.trying
            assert due is None  # the open is bounded by its own timeout
        elif m.status is D:
            assert (due is None) == (not m.trying)
            if m.trying:
                assert self.expected_attempt is not None
                limit = self.backoff.max_attempts
                assert limit is None or self.expected_attempt <= max(limit, 0)
        else:
            assert due is None
            assert not m.trying
        if m.status in LIVE:
            assert m.generation in self.opened
            assert m.generation not in self.aborted
        if m.status not in (P, CF):
            assert not m.controls
        if m.status is not CF:
            assert (m.next_ping_at, m.dead_at, m.proof_at) == (None, None, None), (
                "heartbeat and proof only while CONFIRMED"
            )

    @invariant()
    def counters_match(self) -> None:
        """stats() agrees with what the model saw written, received and dropped."""
        if self.m is None:
            return
        m = self.m
        s = m.stats()
        assert (s.sent, s.received, s.malformed) == (self.sent, self.received, self.malformed)
        assert (s.queued, s.in_flight) == (m.queued, m.in_flight)
        assert s.reconnects == max(0, self.confirms - 1)
        assert m.giveups == self.giveups
        for count in self.completions.values():
            assert count == 1


MachineModel.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestMachineModel = MachineModel.TestCase
