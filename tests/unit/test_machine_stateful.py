"""Machine under random event sequences: a hypothesis state machine with a fake clock.

The test plays the engine, the connector, the writer thread and the server around one
``Machine``: no threads, no sockets, time moves only when a rule says so. It keeps its own
model of what must be true (which generation is live, which messages the writer holds,
when the connection was last known alive) and checks the machine's actions and state
against it after every step.
"""

from __future__ import annotations

import random
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
    HandshakeError,
    ResponseTimeout,
    ServerError,
)
from wsync._futures import MessageFuture
from wsync._machine import (
    Abort,
    Action,
    Control,
    Entry,
    EntryState,
    Fail,
    Forget,
    Machine,
    Notify,
    OnError,
    OnResponse,
    Open,
    Resolve,
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
# DISCONNECTED -> DISCONNECTED only when connect(timeout) runs out while waiting to retry:
# the state's error changes to the timeout's.
ALLOWED_ON_STOP = ALLOWED | {(D, D)}
LIVE = (CG, P, CF)


class MachineModel(RuleBasedStateMachine):
    """The engine, writer, connector and server around one Machine."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.m: Machine | None = None

    # --- set-up -----------------------------------------------------------------------------

    @initialize(
        max_attempts=st.sampled_from([0, 1, 3, None, None]),
        rate=st.sampled_from([None, None, 3.0]),
        jitter=st.sampled_from([0.0, 0.0, 0.5]),
        seed=st.integers(0, 2**16),
    )
    def setup(self, max_attempts: int | None, rate: float | None, jitter: float, seed: int) -> None:
        self.backoff = Backoff(
            initial=1.0, factor=2.0, max_delay=4.0, max_attempts=max_attempts, jitter=jitter
        )
        self.rate = rate
        self.m = Machine(
            client_id=CID,
            heartbeat_interval=INTERVAL,
            heartbeat_timeout=HB_TIMEOUT,
            backoff=self.backoff,
            connect_timeout=CONNECT_TIMEOUT,
            rate_limit=rate,
            rand=random.Random(seed).random,
            now=self.now,
        )
        # Messages.
        self.entries: list[Entry] = []  # every entry ever sent, in send() order
        self.index: dict[int, int] = {}  # id(entry) -> its place in self.entries
        self.completions: dict[int, int] = {}  # place -> Resolve/Fail actions naming it
        self.first_writes: list[int] = []  # places, in the order first written
        self.batch: tuple[int, list[Entry]] | None = None  # what the writer holds
        self.counter = 0
        # Connections.
        self.opened: set[int] = set()  # generations given an Open
        self.unanswered_opens: set[int] = set()  # Opens whose result is still to come
        self.readers: set[int] = set()  # generations whose socket opened
        self.aborted: set[int] = set()
        self.first_control: dict[int, Control] = {}
        self.expected_attempt: int | None = None  # number the next CONNECTING must carry
        self.attempt = 0  # number of the attempt in flight
        self.attempt_started = 0.0
        self.alive_since: float | None = None  # confirm or last pong, while CONFIRMED
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

    # --- checking every call --------------------------------------------------------------

    def _snapshot(self) -> tuple[object, ...]:
        m = self.machine
        return (
            m.status,
            m.state,
            m.generation,
            m.queued,
            m.in_flight,
            list(m.pending.items()),
            [e.state for e in self.entries],
            list(m.controls),
            m.next_deadline(),
            m.received,
            m.malformed,
            m.dead_at,
            m.trying,
            m.last_rtt,
        )

    def _call(
        self,
        rule_name: str,
        fn: Callable[[], list[Action]],
        *,
        handshake: bool = False,
        retryable: bool = True,
    ) -> list[Action]:
        """Run one machine call and check its actions against the model."""
        m = self.machine
        prev = m.status
        before = {id(e): e for e in m.pending.values()}
        actions = fn()

        # Notify: allowed edges only, at most one per call, never a silent status change.
        notifies = [a.state for a in actions if type(a) is Notify]
        assert len(notifies) <= 1, actions
        allowed = ALLOWED_ON_STOP if rule_name == "stop_trying" else ALLOWED
        status = prev
        for s in notifies:
            assert (status, s.status) in allowed, (status, s.status, rule_name)
            status = s.status
            assert s.client_id == CID
            if s.status is D:
                assert s.error, "a DISCONNECTED state always says why"
            elif s.status is CG:
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
                assert m.pending.get(e.message_id) is not e
                assert e.state is EntryState.DONE
                place = self.index[id(e)]
                self.completions[place] = self.completions.get(place, 0) + 1
                assert self.completions[place] == 1, f"{e} completed twice"
            if type(action) is Resolve:
                action.entry.future.set_result_safe(action.response)
            else:
                assert isinstance(action, Fail)
                for e in action.entries:
                    e.future.set_exception_safe(action.error())

        # Forget: never a message still pending; close() forgets nothing.
        forgotten = [mid for a in actions if type(a) is Forget for mid in a.message_ids]
        for mid in forgotten:
            assert mid not in m.pending
        fails = [a for a in actions if type(a) is Fail]
        if rule_name == "close":
            assert not forgotten
            assert len(fails) == (1 if before else 0)
            for f in fails:
                assert f.entries == tuple(before.values())
                assert type(f.error()) is ClientClosed
        else:
            for f in fails:
                assert {e.message_id for e in f.entries} <= set(forgotten)
        if rule_name == "stop_trying":
            assert not fails, "stop_trying keeps the queue"

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
                if action.reason != "superseded":
                    assert action.generation not in self.aborted, "aborted twice"
                self.aborted.add(action.generation)

        # A failure of an attempt or of a confirmed connection: retry on schedule or give up.
        failure = (
            bool(notifies)
            and notifies[-1].status is D
            and prev in LIVE
            and rule_name not in ("reconnect", "stop_trying")
        )
        server_fails = [f for f in fails if isinstance(f.error(), ServerError)]
        if failure:
            failed = 0 if prev is CF else self.attempt
            assert notifies[-1].attempt == failed
            limit = self.backoff.max_attempts
            gives_up = not retryable or (limit is not None and failed >= limit)
            self.alive_since = None
            if gives_up:
                self.giveups += 1
                assert m.giveups == self.giveups
                assert not m.trying
                assert m.next_deadline() is None
                assert not m.pending
                assert len(fails) == (1 if before else 0)
                for f in fails:
                    assert f.entries == tuple(before.values())
                    error = f.error()
                    assert type(error) is (HandshakeError if handshake else ConnectError)
                    assert error.__cause__ is not None
                self.expected_attempt = None
            else:
                assert not fails
                assert m.trying
                due = m.next_deadline()
                assert due is not None
                base = min(self.backoff.initial * self.backoff.factor**failed, 4.0)
                jitter = self.backoff.jitter
                assert base * (1 - jitter) - 1e-9 <= due - self.now <= base * (1 + jitter) + 1e-9
                self.expected_attempt = failed + 1
        elif rule_name not in ("close", "stop_trying"):
            assert fails == server_fails, "only a server error fails a message here"
        for f in server_fails:
            assert len(f.entries) == 1
            assert f.error().message_id == f.entries[0].message_id  # type: ignore[attr-defined]
        return actions

    def _ignored(self, rule_name: str, fn: Callable[[], list[Action]]) -> list[Action]:
        """Run a call that must change nothing (a stale or impossible event)."""
        before = self._snapshot()
        actions = self._call(rule_name, fn)
        assert self._snapshot() == before
        return actions

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

    def _timer(self) -> None:
        """The timer thread wakes at self.now and does what is due."""
        m = self.machine
        prev = m.status
        due = m.next_deadline()
        next_ping = m.next_ping_at
        alive = self.alive_since
        if due is None or self.now < due:
            self._ignored("timer", lambda: m.on_timer(self.now))
            return
        self._call("timer", lambda: m.on_timer(self.now))
        if prev is CF:
            assert alive is not None and next_ping is not None
            dead = self.now >= alive + HB_TIMEOUT  # exactly then, never before
            assert (m.status is D) == dead
            if not dead and self.now >= next_ping:
                assert m.controls and m.controls[-1] is Control.PING
                assert m.next_ping_at is not None
                assert m.next_ping_at > self.now, "a late timer must not queue a burst of pings"
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
        self.expected_attempt = 0
        self.alive_since = None
        if prev in LIVE:
            assert Abort(gen, "reconnect requested") in actions
            assert len([a for a in actions if type(a) is Notify]) == 1
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
        assert m.status is CL
        self.expected_attempt = None
        self.alive_since = None

    @precondition(lambda self: self.m is not None and not self.m.closed)
    @rule(reuse=st.booleans(), pick=ANY_ENTRY)
    def send_2(self, reuse: bool, pick: int) -> None:
        """The same as send(): twice as likely."""
        self.send(reuse, pick)

    @precondition(lambda self: self.m is not None and not self.m.closed)
    @rule(reuse=st.booleans(), pick=ANY_ENTRY)
    def send(self, reuse: bool, pick: int) -> None:
        m = self.machine
        free = [e.message_id for e in self.entries if e.message_id not in m.pending]
        if reuse and free:
            message_id = free[pick % len(free)]
        else:
            message_id = f"m{self.counter}"
            self.counter += 1
        future = MessageFuture(message_id, self._on_cancel)
        e = Entry(message_id, "content", f"text-{len(self.entries)}", future)
        queued = m.queued
        m.send(e)
        assert m.queued == queued + 1
        assert m.pending[message_id] is e
        self.index[id(e)] = len(self.entries)
        self.entries.append(e)

    def _on_cancel(self, future: MessageFuture) -> None:
        """MessageFuture's on_cancel: the engine calls discard() for the message."""
        message_id = future.message_id
        m = self.machine
        holder = m.pending.get(message_id)
        # Only the cancel of this very message may withdraw it, never a later one reusing its id.
        # (on_cancel runs while the cancel is claimed, before CANCELLED is published)
        assert holder is None or holder.future is future or holder.future.cancelled(), (
            f"{holder} was not cancelled"
        )
        assert future._cancelling
        was = holder.state if holder is not None else None
        actions = self._call("discard", lambda: m.discard(message_id, future))
        if was in (EntryState.QUEUED, EntryState.TAKEN) and holder is not None:
            # Queued, or taken by the writer and not yet written: forgotten at once (the writer
            # then skips the cancelled future), so a durable outbox drops it before cancel()
            # returns.
            if holder.future is future:
                assert actions == [Forget((message_id,))]
                assert holder.state is EntryState.DONE
            else:
                assert actions == []
        else:
            assert actions == []  # written: it stays in flight

    @rule(pick=ANY_ENTRY)
    def cancel(self, pick: int) -> None:
        """future.cancel(): True only while the message was never handed to a socket."""
        m = self.machine
        e = self._entry(pick)
        if e is None:
            return
        was = e.state if m.pending.get(e.message_id) is e else None
        again = e.future.cancelled()
        if not e.future.cancel():
            return  # written once (running) or settled
        if not again:
            assert was in (EntryState.QUEUED, EntryState.TAKEN), "a done future was cancelled"
            expected = EntryState.DONE if was is EntryState.QUEUED else EntryState.TAKEN
            assert e.state is expected

    @rule(pick=ANY_ENTRY)
    def withdraw(self, pick: int) -> None:
        """send_and_wait() timed out on a message: withdraw it if still queued."""
        m = self.machine
        e = self._entry(pick)
        if e is None:
            return
        holder = m.pending.get(e.message_id)  # e, or a later message reusing its id
        was = holder.state if holder is not None else None
        got = m.withdraw(e.message_id)
        if was is EntryState.QUEUED:
            assert got is holder
            assert got is not None and got.state is EntryState.DONE
            got.future.set_exception_safe(ResponseTimeout("timed out"))
        else:
            assert got is None

    @rule(pick=ANY_ENTRY)
    def abandon(self, pick: int) -> None:
        """send_and_wait() timed out on a written message: stop tracking it."""
        m = self.machine
        e = self._entry(pick)
        if e is None:
            return
        holder = m.pending.get(e.message_id)
        got = m.abandon(e.message_id)
        assert got is holder
        if got is not None:
            assert got.state is EntryState.DONE
            got.future.set_exception_safe(ResponseTimeout("timed out"))

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
        live = gen == m.generation
        if live:
            assert m.status is CG
        if ok:
            if not live:
                actions = self._ignored("open", lambda: m.on_open_succeeded(gen, self.now))
                assert actions == [Abort(gen, "superseded")]
                return
            self._call("open", lambda: m.on_open_succeeded(gen, self.now))
            assert m.status is P
            assert list(m.controls) == [Control.CONNECT]
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

    @rule(pick=ANY_GEN, go=st.booleans())
    def connection_lost(self, pick: int, go: bool = True) -> None:
        """A socket closes (half the time: it ends the connection)."""
        if not go:
            return
        m = self.machine
        gens = sorted(self.opened)
        if not gens:
            return
        gen = m.generation if pick == 0 else gens[pick % len(gens)]
        error = ConnectError("connection reset")
        if gen != m.generation or m.status not in LIVE:
            self._ignored("lost", lambda: m.on_connection_lost(gen, error, self.now))
            return
        self._call("lost", lambda: m.on_connection_lost(gen, error, self.now))
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
        actions = self._frame(gen, frame)
        if actions is None:
            return
        self.received += 1
        assert actions[0] == OnResponse(frame)
        if holder is None:
            assert actions == [OnResponse(frame)]
        else:
            assert actions == [OnResponse(frame), Resolve(holder, frame), Forget((message_id,))]

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
            assert [type(a) for a in actions] == [OnError, Fail, Forget]
            assert actions[1].entries == (holder,)  # type: ignore[union-attr]

    @rule(pick=ANY_GEN)
    def ping(self, pick: int) -> None:
        m = self.machine
        gen = self._reader_gen(pick)
        if gen is None:
            return
        if self._frame(gen, protocol.Ping(timestamp=TS)) is not None:
            assert m.controls[-1] is Control.PONG

    @rule(pick=ANY_GEN)
    def pong(self, pick: int) -> None:
        m = self.machine
        gen = self._reader_gen(pick)
        if gen is None:
            return
        prev = m.status
        if self._frame(gen, protocol.Pong(timestamp=TS)) is not None and prev is CF:
            self.alive_since = self.now

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

    @precondition(lambda self: self.m is not None and self.batch is None)
    @rule(limit=st.sampled_from([1, 2, 256]))
    def writer_take(self, limit: int) -> None:
        m = self.machine
        gen = m.generation
        prev = m.status
        queued = [e for e in m.pending.values() if e.state is EntryState.QUEUED]
        controls, entries = m.take_writes(gen, self.now, limit)
        assert m.status is prev
        if prev is not CF:
            assert entries == []
            assert Control.PING not in controls
        # The oldest queued messages, in send() order.
        assert entries == queued[: len(entries)]
        if prev is CF and self.rate is None:
            assert len(entries) == min(limit, len(queued))
        if controls and gen not in self.first_control:
            self.first_control[gen] = controls[0]
            assert controls[0] is Control.CONNECT, "connect goes first on every connection"
        assert all(e.state is EntryState.TAKEN for e in entries)
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
    @rule(lost=st.sampled_from([False, False, False, True]))
    def writer_done(self, lost: bool) -> None:
        """The writer writes what it took (skipping cancelled futures) and reports it."""
        m = self.machine
        assert self.batch is not None
        gen, entries = self.batch
        self.batch = None
        written: list[Entry] = []
        skipped: list[Entry] = []
        for e in entries:
            if e.future.running():
                ok = True  # written before, on a lost connection
            else:
                try:
                    ok = e.future.set_running_or_notify_cancel()
                except RuntimeError:
                    ok = False  # failed meanwhile
            (written if ok else skipped).append(e)
        actions = self._call("writes_done", lambda: m.writes_done(gen, written, skipped))
        self.sent += len(written)
        for e in written:
            place = self.index[id(e)]
            if place not in self.first_writes:
                self.first_writes.append(place)
            if gen == m.generation:
                assert e.state in (EntryState.WRITTEN, EntryState.DONE)
        assert all(type(a) is Forget for a in actions)
        forgotten = {mid for a in actions for mid in a.message_ids}  # type: ignore[union-attr]
        assert forgotten <= {e.message_id for e in skipped}
        if lost:  # the write failed: the writer reports the loss of its connection
            self.connection_lost_for(gen)

    def connection_lost_for(self, gen: int) -> None:
        m = self.machine
        error = ConnectError("connection lost while writing")
        if gen != m.generation or m.status not in LIVE:
            self._ignored("lost", lambda: m.on_connection_lost(gen, error, self.now))
        else:
            self._call("lost", lambda: m.on_connection_lost(gen, error, self.now))

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

    @rule(extra=st.booleans())
    def bounce(self, extra: bool) -> None:
        """The server drops a confirmed connection; the client reconnects and writes again."""
        m = self.machine
        if m.status is not CF:
            return
        if extra:  # something written and unanswered when the connection drops
            self.send(False, 0)
            if self.batch is None:
                self.writer_take(256)
                self.writer_done(False)
        self.connection_lost_for(m.generation)
        for _ in range(8):
            if m.status is CF or (m.status is D and not m.trying):
                break
            self._progress()
        if m.status is CF:
            self._progress()

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
            if self.batch is None:
                self.writer_take(256)
                self.writer_done(False)
            if m.status is P:
                self.confirm(0, "good")
        elif m.status is CF:
            if self.batch is not None:
                self.writer_done(False)
            self.writer_take(256)
            self.writer_done(False)
            written = [e for e in m.pending.values() if e.state is EntryState.WRITTEN]
            if len(written) > 1:  # the server answers the oldest, one stays unanswered
                self._answer(written[0])

    def _answer(self, e: Entry) -> None:
        m = self.machine
        frame = protocol.Response(message_id=e.message_id, content="ok", timestamp=TS)
        actions = self._frame(m.generation, frame)
        assert actions is not None
        self.received += 1
        assert actions == [OnResponse(frame), Resolve(e, frame), Forget((e.message_id,))]

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def every_message_in_one_place(self) -> None:
        """Counters match the entries; each entry is pending xor done, and done means settled."""
        if self.m is None:
            return
        m = self.m
        states = [e.state for e in m.pending.values()]
        assert m.queued == states.count(EntryState.QUEUED) >= 0
        in_flight = states.count(EntryState.TAKEN) + states.count(EntryState.WRITTEN)
        assert m.in_flight == in_flight >= 0
        assert EntryState.DONE not in states
        for message_id, e in m.pending.items():
            assert e.message_id == message_id
        held = {id(e) for e in self.batch[1]} if self.batch else set()
        for e in self.entries:
            if m.pending.get(e.message_id) is e:
                if e.state is EntryState.TAKEN:
                    assert id(e) in held and self.batch is not None
                    assert self.batch[0] == m.generation
                if e.future.done():  # only a cancel waiting for the writer's report
                    assert e.future.cancelled() and id(e) in held
            else:
                assert e.state is EntryState.DONE
                assert e.future.done(), f"{e} left without its future settled"
        if m.status is not CF:
            assert in_flight == 0, "nothing is on the wire of a connection that is not confirmed"
        if m.status is CF:
            # Liveness: every queued message is still on the writer's list.
            to_write = {id(e) for e in m._to_write}
            assert all(
                id(e) in to_write for e in m.pending.values() if e.state is EntryState.QUEUED
            )
        if m.closed:
            assert not m.pending

    @invariant()
    def first_writes_follow_send_order(self) -> None:
        """The first write of every message follows send() order."""
        if self.m is None:
            return
        assert self.first_writes == sorted(self.first_writes)

    @invariant()
    def deadlines_match_status(self) -> None:
        """next_deadline() and the heartbeat times agree with the status."""
        if self.m is None:
            return
        m = self.m
        due = m.next_deadline()
        if m.status is CF:
            assert not m.trying
            assert self.alive_since is not None
            assert m.next_ping_at is not None
            assert m.dead_at == self.alive_since + HB_TIMEOUT
            assert due == min(m.next_ping_at, m.dead_at)
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
            assert (m.next_ping_at, m.dead_at) == (None, None), "heartbeat only while CONFIRMED"

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
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestMachineModel = MachineModel.TestCase
