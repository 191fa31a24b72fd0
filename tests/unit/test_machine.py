"""Machine: the sans-I/O connection logic, driven with explicit ``now`` values.

No threads, sockets or clock: every test feeds events and asserts the exact actions,
states and counters the machine returns. Times start at ``T0`` (away from zero).
"""

from __future__ import annotations

from datetime import datetime, timezone

from wsync import protocol
from wsync._backoff import Backoff
from wsync._errors import ClientClosed, ConnectError, ConnectTimeout, HandshakeError, ServerError
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
from wsync._values import ConnectionState, Status

T0 = 1000.0
EPS = 1e-6
CID = "client-1"
TS = datetime(2026, 11, 27, 13, 40, 30, 123000, tzinfo=timezone.utc)
PING = protocol.Ping(timestamp=TS)
PONG = protocol.Pong(timestamp=TS)


# --- helpers --------------------------------------------------------------------------------


def make_machine(**overrides: object) -> Machine:
    """A Machine with the default options (interval 30 s, timeout 60 s, connect_timeout 10 s)."""
    options: dict[str, object] = {
        "client_id": CID,
        "heartbeat_interval": 30.0,
        "heartbeat_timeout": 60.0,
        "backoff": Backoff(),
        "connect_timeout": 10.0,
        "now": T0,
    }
    options.update(overrides)
    return Machine(**options)  # type: ignore[arg-type]


def entry(message_id: str, content: str = "hello") -> Entry:
    text = f'{{"type":"message","messageId":"{message_id}"}}'
    return Entry(message_id, content, text, MessageFuture(message_id))


def confirm(
    client_id: str = CID, status: str = "confirmed", conversation_id: str = "conv-1"
) -> protocol.ConnectConfirm:
    return protocol.ConnectConfirm(
        client_id=client_id, conversation_id=conversation_id, status=status, timestamp=TS
    )


def response(message_id: str, content: str = "ok") -> protocol.Response:
    return protocol.Response(message_id=message_id, content=content, timestamp=TS)


def error_frame(text: str = "nope", message_id: str | None = None) -> protocol.Error:
    return protocol.Error(error=text, timestamp=TS, message_id=message_id)


def state(
    status: Status,
    *,
    error: str | None = None,
    attempt: int = 0,
    conversation_id: str | None = None,
) -> ConnectionState:
    return ConnectionState(
        status=status, client_id=CID, conversation_id=conversation_id, error=error, attempt=attempt
    )


def notified(actions: list[Action]) -> list[ConnectionState]:
    return [a.state for a in actions if type(a) is Notify]


def kinds(actions: list[Action]) -> list[type]:
    return [type(a) for a in actions]


def start_attempt(m: Machine, now: float) -> int:
    """Let the timer start the attempt due at ``now``; return its generation."""
    actions = m.on_timer(now)
    opens = [a for a in actions if type(a) is Open]
    assert len(opens) == 1, actions
    return opens[0].generation


def fail_attempt(m: Machine, now: float, *, retryable: bool = True) -> list[Action]:
    """Start the attempt due at ``now`` and fail its open at once."""
    gen = start_attempt(m, now)
    return m.on_open_failed(gen, ConnectError("connection refused"), now, retryable=retryable)


def open_pending(m: Machine, now: float = T0) -> int:
    """connect(), start attempt 0 and open it: PENDING. Returns the generation."""
    m.connect(now)
    gen = start_attempt(m, now)
    m.on_open_succeeded(gen, now)
    return gen


def handshake(m: Machine, gen: int, now: float, conversation_id: str = "conv-1") -> list[Action]:
    """The writer writes CONNECT, the server confirms."""
    controls, entries = m.take_writes(gen, now)
    assert controls == [Control.CONNECT]
    assert entries == []
    return m.on_frame(gen, confirm(conversation_id=conversation_id), now)


def confirmed(m: Machine, now: float = T0) -> int:
    """connect() all the way to CONFIRMED at ``now``. Returns the generation."""
    gen = open_pending(m, now)
    handshake(m, gen, now)
    assert m.status is Status.CONFIRMED
    return gen


def reconfirm(m: Machine, now: float) -> int:
    """reconnect() and confirm again at ``now``. Returns the new generation."""
    m.reconnect(now)
    gen = start_attempt(m, now)
    m.on_open_succeeded(gen, now)
    handshake(m, gen, now)
    return gen


def write(m: Machine, gen: int, now: float, limit: int = 256) -> list[Entry]:
    """The writer takes messages and writes all of them."""
    _, entries = m.take_writes(gen, now, limit)
    m.writes_done(gen, entries)
    return entries


def ids(entries: list[Entry] | tuple[Entry, ...]) -> list[str]:
    return [e.message_id for e in entries]


def lose(m: Machine, gen: int, now: float) -> list[Action]:
    return m.on_connection_lost(gen, ConnectError("connection reset"), now)


# --- tests ----------------------------------------------------------------------------------


class TestConnect:
    def test_starts_disconnected(self) -> None:
        """A new machine is DISCONNECTED, not trying, with nothing due."""
        m = make_machine()
        assert m.status is Status.DISCONNECTED
        assert m.state == state(Status.DISCONNECTED)
        assert not m.trying
        assert m.next_deadline() is None
        assert m.on_timer(T0 + 100) == []

    def test_connect_schedules_immediate_attempt(self) -> None:
        """connect() returns no action and schedules attempt 0 for now, without delay."""
        m = make_machine()
        assert m.connect(T0) == []
        assert m.trying
        assert m.next_deadline() == T0
        assert m.status is Status.DISCONNECTED

    def test_timer_starts_attempt_zero(self) -> None:
        """The due attempt is reported CONNECTING (attempt 0), then opened with connect_timeout."""
        m = make_machine()
        m.connect(T0)
        actions = m.on_timer(T0)
        assert actions == [Notify(state(Status.CONNECTING, attempt=0)), Open(1, 10.0)]
        assert m.generation == 1
        assert m.status is Status.CONNECTING

    def test_connect_while_trying_is_noop(self) -> None:
        """A second connect() while an attempt is under way changes nothing."""
        m = make_machine()
        m.connect(T0)
        start_attempt(m, T0)
        assert m.connect(T0 + 1) == []
        assert m.status is Status.CONNECTING
        assert m.generation == 1

    def test_connect_while_confirmed_is_noop(self) -> None:
        """connect() on a confirmed connection returns nothing and schedules nothing new."""
        m = make_machine()
        confirmed(m)
        assert m.connect(T0 + 1) == []
        assert not m.trying
        assert m.status is Status.CONFIRMED

    def test_open_succeeded_goes_pending(self) -> None:
        """An open socket moves CONNECTING -> PENDING (attempt 0) and queues only CONNECT."""
        m = make_machine()
        m.connect(T0)
        gen = start_attempt(m, T0)
        actions = m.on_open_succeeded(gen, T0 + 0.5)
        assert actions == [Notify(state(Status.PENDING, attempt=0))]
        assert m.take_writes(gen, T0 + 0.5) == ([Control.CONNECT], [])

    def test_confirm_goes_confirmed(self) -> None:
        """A matching connect_confirm moves PENDING -> CONFIRMED with its conversationId."""
        m = make_machine()
        gen = open_pending(m)
        actions = handshake(m, gen, T0 + 1, conversation_id="conv-9")
        assert actions == [Notify(state(Status.CONFIRMED, conversation_id="conv-9"))]
        assert m.state.conversation_id == "conv-9"
        assert not m.trying

    def test_notify_order_of_a_connection(self) -> None:
        """connect() to CONFIRMED reports CONNECTING, PENDING, CONFIRMED, in order, once each."""
        m = make_machine()
        seen: list[Status] = []
        m.connect(T0)
        seen += [s.status for s in notified(m.on_timer(T0))]
        seen += [s.status for s in notified(m.on_open_succeeded(1, T0))]
        m.take_writes(1, T0)
        seen += [s.status for s in notified(m.on_frame(1, confirm(), T0))]
        assert seen == [Status.CONNECTING, Status.PENDING, Status.CONFIRMED]

    def test_open_failed_reports_disconnected(self) -> None:
        """A failed open is reported DISCONNECTED with its error and attempt number, no Abort."""
        m = make_machine()
        m.connect(T0)
        gen = start_attempt(m, T0)
        actions = m.on_open_failed(gen, ConnectError("connection refused"), T0)
        assert actions == [
            Notify(state(Status.DISCONNECTED, error="connection refused", attempt=0))
        ]
        assert isinstance(m.last_failure, ConnectError)

    def test_connection_lost_from_confirmed(self) -> None:
        """Losing a confirmed connection aborts it and reports DISCONNECTED with the error."""
        m = make_machine()
        gen = confirmed(m)
        actions = lose(m, gen, T0 + 5)
        assert actions == [
            Abort(gen, "connection reset"),
            Notify(state(Status.DISCONNECTED, error="connection reset", conversation_id="conv-1")),
        ]
        assert m.trying
        assert m.generation == gen + 1

    def test_reconnect_from_confirmed(self) -> None:
        """reconnect() aborts the old generation, reports DISCONNECTED and tries again at once."""
        m = make_machine()
        gen = confirmed(m)
        actions = m.reconnect(T0 + 5)
        assert actions == [
            Abort(gen, "reconnect requested"),
            Notify(
                state(Status.DISCONNECTED, error="reconnect requested", conversation_id="conv-1")
            ),
        ]
        assert m.next_deadline() == T0 + 5
        again = m.on_timer(T0 + 5)
        assert notified(again)[0].status is Status.CONNECTING
        assert notified(again)[0].attempt == 0
        assert [a.generation for a in again if type(a) is Open] == [gen + 2]

    def test_reconnect_while_connecting_aborts_the_open(self) -> None:
        """reconnect() during CONNECTING aborts the open in flight and starts a new one."""
        m = make_machine()
        m.connect(T0)
        gen = start_attempt(m, T0)
        actions = m.reconnect(T0 + 1)
        assert kinds(actions) == [Abort, Notify]
        assert actions[0] == Abort(gen, "reconnect requested")
        assert start_attempt(m, T0 + 1) > gen

    def test_reconnect_while_waiting_attempts_now_without_notify(self) -> None:
        """reconnect() during a backoff wait reports nothing and moves the attempt to now."""
        m = make_machine()
        m.connect(T0)
        fail_attempt(m, T0)
        assert m.next_deadline() == T0 + 1
        assert m.reconnect(T0 + 0.25) == []
        assert m.next_deadline() == T0 + 0.25
        assert notified(m.on_timer(T0 + 0.25)) == [state(Status.CONNECTING, attempt=0)]

    def test_reconnect_when_idle_starts_trying(self) -> None:
        """reconnect() on a machine never connected behaves like connect()."""
        m = make_machine()
        assert m.reconnect(T0) == []
        assert m.trying
        assert m.next_deadline() == T0

    def test_connection_lost_while_pending_is_an_attempt_failure(self) -> None:
        """A socket lost before the confirm fails the attempt: Abort, then DISCONNECTED."""
        m = make_machine()
        gen = open_pending(m)
        actions = lose(m, gen, T0 + 1)
        assert actions == [
            Abort(gen, "connection reset"),
            Notify(state(Status.DISCONNECTED, error="connection reset", attempt=0)),
        ]
        assert m.next_deadline() == T0 + 2


class TestHandshake:
    def test_confirm_for_another_client_is_handshake_failure(self) -> None:
        """A confirm with another clientId fails the attempt with HandshakeError."""
        m = make_machine()
        gen = open_pending(m)
        m.take_writes(gen, T0)
        actions = m.on_frame(gen, confirm(client_id="someone-else"), T0 + 1)
        assert kinds(actions) == [Abort, Notify]
        assert notified(actions)[0].status is Status.DISCONNECTED
        assert "another clientId" in (notified(actions)[0].error or "")
        assert isinstance(m.last_failure, HandshakeError)
        assert m.next_deadline() == T0 + 2

    def test_confirm_with_wrong_status_is_handshake_failure(self) -> None:
        """A confirm whose status is not 'confirmed' fails the attempt with HandshakeError."""
        m = make_machine()
        gen = open_pending(m)
        actions = m.on_frame(gen, confirm(status="rejected"), T0 + 1)
        assert kinds(actions) == [Abort, Notify]
        assert isinstance(m.last_failure, HandshakeError)
        assert m.status is Status.DISCONNECTED

    def test_error_frame_while_pending_is_handshake_failure(self) -> None:
        """An error frame during PENDING calls on_error and fails the attempt (HandshakeError)."""
        m = make_machine()
        gen = open_pending(m)
        actions = m.on_frame(gen, error_frame("go away"), T0 + 1)
        assert kinds(actions) == [OnError, Abort, Notify]
        server_error = actions[0].error  # type: ignore[union-attr]
        assert (server_error.error, server_error.message_id) == ("go away", None)
        assert isinstance(m.last_failure, HandshakeError)
        assert m.last_failure.__cause__ is server_error
        assert notified(actions)[0].status is Status.DISCONNECTED

    def test_error_frame_with_message_id_while_pending_fails_no_message(self) -> None:
        """An error naming a queued message during PENDING is a handshake failure only."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        gen = open_pending(m)
        actions = m.on_frame(gen, error_frame("refused", message_id="a"), T0 + 1)
        assert Fail not in kinds(actions)
        assert m.pending == {"a": a}
        assert a.state is EntryState.QUEUED

    def test_confirm_timeout_fails_attempt_exactly(self) -> None:
        """No confirm by attempt start + connect_timeout fails the attempt then, not before."""
        m = make_machine()
        open_pending(m)
        assert m.next_deadline() == T0 + 10
        assert m.on_timer(T0 + 10 - EPS) == []
        assert m.status is Status.PENDING
        actions = m.on_timer(T0 + 10)
        assert kinds(actions) == [Abort, Notify]
        assert m.status is Status.DISCONNECTED
        assert "connect_timeout=10" in (m.state.error or "")
        assert type(m.last_failure) is ConnectError

    def test_confirm_timeout_counts_from_attempt_start(self) -> None:
        """The confirm deadline is counted from the attempt's start, not from the open."""
        m = make_machine()
        m.connect(T0)
        gen = start_attempt(m, T0)
        m.on_open_succeeded(gen, T0 + 7)
        assert m.next_deadline() == T0 + 10

    def test_take_writes_while_pending_gives_only_connect(self) -> None:
        """While PENDING the writer gets CONNECT and no message, however many are queued."""
        m = make_machine()
        m.send(entry("a"))
        m.send(entry("b"))
        gen = open_pending(m)
        assert m.take_writes(gen, T0) == ([Control.CONNECT], [])
        assert m.take_writes(gen, T0) == ([], [])
        assert m.queued == 2
        assert not m.has_writes()

    def test_take_writes_while_connecting_gives_nothing(self) -> None:
        """While CONNECTING there is nothing to write."""
        m = make_machine()
        m.send(entry("a"))
        m.connect(T0)
        gen = start_attempt(m, T0)
        assert m.take_writes(gen, T0) == ([], [])
        assert not m.has_writes()

    def test_confirm_outside_handshake_is_malformed(self) -> None:
        """A confirm on a confirmed connection changes nothing and counts as malformed."""
        m = make_machine()
        gen = confirmed(m)
        assert m.on_frame(gen, confirm(conversation_id="conv-2"), T0 + 1) == []
        assert m.status is Status.CONFIRMED
        assert m.state.conversation_id == "conv-1"
        assert m.malformed == 1

    def test_client_only_frames_are_malformed(self) -> None:
        """connect and message frames from the server are counted as malformed and ignored."""
        m = make_machine()
        gen = confirmed(m)
        frames = [
            protocol.Connect(client_id=CID, timestamp=TS),
            protocol.Message(client_id=CID, content="x", timestamp=TS, message_id="m"),
        ]
        for frame in frames:
            assert m.on_frame(gen, frame, T0) == []
        assert m.malformed == 2

    def test_open_superseded_is_aborted(self) -> None:
        """An open that succeeds after its attempt was dropped is aborted, nothing else."""
        m = make_machine()
        m.connect(T0)
        gen = start_attempt(m, T0)
        m.reconnect(T0 + 1)
        assert m.on_open_succeeded(gen, T0 + 2) == [Abort(gen, "superseded")]
        assert m.status is Status.DISCONNECTED


class TestBackoffSchedule:
    def test_default_schedule(self) -> None:
        """With defaults, attempts 1-5 start exactly 1, 2, 4, 8, 16 s after each failure."""
        m = make_machine()
        m.connect(T0)
        now = T0
        fail_attempt(m, now)
        waits: list[float] = []
        attempts: list[int] = []
        while m.trying:
            due = m.next_deadline()
            assert due is not None
            waits.append(due - now)
            assert m.on_timer(due - EPS) == []
            now = due
            actions = m.on_timer(now)
            attempts.append(notified(actions)[0].attempt)
            gen = actions[-1].generation  # type: ignore[union-attr]
            m.on_open_failed(gen, ConnectError("refused"), now)
        assert waits == [1.0, 2.0, 4.0, 8.0, 16.0]
        assert attempts == [1, 2, 3, 4, 5]

    def test_each_attempt_reported_connecting_with_its_number(self) -> None:
        """Every failure is DISCONNECTED with its attempt number, every attempt CONNECTING n."""
        m = make_machine()
        m.connect(T0)
        seen: list[tuple[Status, int]] = []
        now = T0
        for _ in range(3):
            due = m.next_deadline()
            assert due is not None
            now = due
            gen = 0
            for action in m.on_timer(now):
                if type(action) is Notify:
                    seen.append((action.state.status, action.state.attempt))
                elif type(action) is Open:
                    gen = action.generation
            for s in notified(m.on_open_failed(gen, ConnectError("refused"), now)):
                seen.append((s.status, s.attempt))
        assert seen == [
            (Status.CONNECTING, 0),
            (Status.DISCONNECTED, 0),
            (Status.CONNECTING, 1),
            (Status.DISCONNECTED, 1),
            (Status.CONNECTING, 2),
            (Status.DISCONNECTED, 2),
        ]

    def test_delay_counts_from_the_failure(self) -> None:
        """The wait before attempt n+1 starts when attempt n failed, not when it started."""
        m = make_machine()
        m.connect(T0)
        fail_attempt(m, T0)
        gen = start_attempt(m, T0 + 1)
        m.on_open_failed(gen, ConnectError("refused"), T0 + 4)
        assert m.next_deadline() == T0 + 4 + 2

    def test_lost_connection_waits_delay_one(self) -> None:
        """After a confirmed connection is lost, attempt 1 waits delay(1), not zero."""
        m = make_machine()
        gen = confirmed(m)
        lose(m, gen, T0 + 50)
        assert m.next_deadline() == T0 + 51
        assert m.on_timer(T0 + 51 - EPS) == []
        assert notified(m.on_timer(T0 + 51)) == [
            state(Status.CONNECTING, attempt=1, conversation_id="conv-1")
        ]

    def test_custom_policy(self) -> None:
        """A custom policy's delays are min(initial * factor**(n-1), max_delay)."""
        m = make_machine(backoff=Backoff(initial=0.5, factor=3.0, max_delay=5.0, max_attempts=4))
        m.connect(T0)
        now = T0
        fail_attempt(m, now)
        waits = []
        while m.trying:
            due = m.next_deadline()
            assert due is not None
            waits.append(due - now)
            now = due
            fail_attempt(m, now)
        assert waits == [0.5, 1.5, 4.5, 5.0]

    def test_jitter_uses_injected_rand(self) -> None:
        """With jitter the delay is moved by jitter * (2*rand() - 1) of itself."""
        draws = iter([0.0, 0.75])
        m = make_machine(backoff=Backoff(jitter=0.5), rand=lambda: next(draws))
        m.connect(T0)
        fail_attempt(m, T0)
        assert m.next_deadline() == T0 + 0.5  # 1 s * (1 - 0.5)
        fail_attempt(m, T0 + 0.5)
        assert m.next_deadline() == T0 + 0.5 + 2.5  # 2 s * (1 + 0.25)

    def test_rand_not_used_without_jitter(self) -> None:
        """Without jitter the injected rand is never called."""

        def rand() -> float:
            raise AssertionError("rand called")

        m = make_machine(rand=rand)
        m.connect(T0)
        fail_attempt(m, T0)
        assert m.next_deadline() == T0 + 1

    def test_confirm_resets_budget(self) -> None:
        """A confirm resets the count: after a later loss, 5 attempts wait 1, 2, 4, 8, 16 s."""
        m = make_machine()
        m.connect(T0)
        now = T0
        fail_attempt(m, now)
        for delay in (1.0, 2.0, 4.0):
            now += delay
            fail_attempt(m, now)
        now += 8.0
        gen = start_attempt(m, now)  # attempt 4 succeeds
        m.on_open_succeeded(gen, now)
        handshake(m, gen, now)
        assert m.attempt == 0
        lose(m, gen, now)
        waits = []
        while m.trying:
            due = m.next_deadline()
            assert due is not None
            waits.append(due - now)
            now = due
            fail_attempt(m, now)
        assert waits == [1.0, 2.0, 4.0, 8.0, 16.0]

    def test_max_attempts_none_never_gives_up(self) -> None:
        """max_attempts=None keeps trying, the delay capped at max_delay."""
        m = make_machine(backoff=Backoff(max_attempts=None))
        m.connect(T0)
        now = T0
        fail_attempt(m, now)
        waits = []
        for _ in range(40):
            due = m.next_deadline()
            assert due is not None
            waits.append(due - now)
            now = due
            fail_attempt(m, now)
        assert m.trying
        assert waits[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 16.0]
        assert set(waits[5:]) == {16.0}
        assert m.giveups == 0

    def test_max_attempts_zero_first_connect_tries_once(self) -> None:
        """max_attempts=0: connect() makes attempt 0 only, then gives up."""
        m = make_machine(backoff=Backoff(max_attempts=0))
        m.connect(T0)
        fail_attempt(m, T0)
        assert not m.trying
        assert m.next_deadline() is None
        assert m.giveups == 1

    def test_max_attempts_zero_never_reconnects(self) -> None:
        """max_attempts=0: a lost confirmed connection gives up at once, no attempt."""
        m = make_machine(backoff=Backoff(max_attempts=0))
        gen = confirmed(m)
        actions = lose(m, gen, T0 + 1)
        assert kinds(actions) == [Abort, Notify]
        assert not m.trying
        assert m.next_deadline() is None
        assert m.on_timer(T0 + 1000) == []


class TestGiveUp:
    def _exhaust(self, m: Machine, now: float = T0) -> list[Action]:
        """Fail attempt 0 and every retry; return the actions of the last failure."""
        m.connect(now)
        last = fail_attempt(m, now)
        while m.trying:
            due = m.next_deadline()
            assert due is not None
            last = fail_attempt(m, due)
        return last

    def test_gives_up_after_max_attempts(self) -> None:
        """After attempt 5 fails the machine is DISCONNECTED with error, not trying, nothing due."""
        m = make_machine()
        actions = self._exhaust(m)
        assert notified(actions) == [
            state(
                Status.DISCONNECTED,
                error="gave up after 5 reconnection attempts: connection refused",
                attempt=5,
            )
        ]
        assert not m.trying
        assert m.next_deadline() is None
        assert m.giveups == 1
        assert isinstance(m.give_up_error, ConnectError)
        assert isinstance(m.give_up_error.__cause__, ConnectError)

    def test_no_attempt_after_give_up(self) -> None:
        """Once given up, no timer ever starts another attempt."""
        m = make_machine()
        self._exhaust(m)
        assert m.on_timer(T0 + 10_000) == []
        assert m.status is Status.DISCONNECTED

    def test_pending_failed_with_connect_error_and_forgotten(self) -> None:
        """Giving up fails every pending future with ConnectError, forgets them, then notifies."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        m.send(a)
        m.send(b)
        actions = self._exhaust(m)
        assert kinds(actions) == [Fail, Forget, Notify]
        fail, forget = actions[0], actions[1]
        assert isinstance(fail, Fail)
        assert fail.entries == (a, b)
        error = fail.error()
        assert type(error) is ConnectError
        assert isinstance(error.__cause__, ConnectError)
        assert fail.error() is not error  # a fresh exception for each future
        assert forget == Forget(("a", "b"))
        assert m.pending == {}
        assert (m.queued, m.in_flight) == (0, 0)
        assert a.state is EntryState.DONE

    def test_handshake_failure_last_gives_handshake_error(self) -> None:
        """When the last failure was a handshake failure, futures fail with HandshakeError."""
        m = make_machine(backoff=Backoff(max_attempts=1))
        m.send(entry("a"))
        m.connect(T0)
        fail_attempt(m, T0)
        gen = start_attempt(m, T0 + 1)
        m.on_open_succeeded(gen, T0 + 1)
        actions = m.on_frame(gen, confirm(client_id="other"), T0 + 1)
        assert kinds(actions) == [Abort, Fail, Forget, Notify]
        assert type(actions[1].error()) is HandshakeError  # type: ignore[union-attr]
        assert isinstance(m.give_up_error, HandshakeError)

    def test_earlier_handshake_failure_gives_connect_error(self) -> None:
        """Only the last failure decides: an open failure after a handshake one is ConnectError."""
        m = make_machine(backoff=Backoff(max_attempts=1))
        m.send(entry("a"))
        gen = open_pending(m)
        m.on_frame(gen, confirm(client_id="other"), T0)
        actions = fail_attempt(m, T0 + 1)
        fail = next(a for a in actions if type(a) is Fail)
        assert type(fail.error()) is ConnectError

    def test_non_retryable_gives_up_at_once(self) -> None:
        """A non-retryable open failure (e.g. TLS) gives up on attempt 0 with ConnectError."""
        m = make_machine()
        m.send(entry("a"))
        m.connect(T0)
        actions = fail_attempt(m, T0, retryable=False)
        assert kinds(actions) == [Fail, Forget, Notify]
        assert notified(actions)[0].error == "could not connect: connection refused"
        assert not m.trying
        assert m.giveups == 1

    def test_non_retryable_mid_schedule_gives_up(self) -> None:
        """A non-retryable failure on a later attempt ends the schedule there."""
        m = make_machine()
        m.connect(T0)
        fail_attempt(m, T0)
        fail_attempt(m, T0 + 1)
        actions = fail_attempt(m, T0 + 3, retryable=False)
        assert notified(actions)[0].attempt == 2
        assert not m.trying

    def test_connect_after_give_up_starts_fresh(self) -> None:
        """connect() after giving up makes an immediate attempt 0 and then 5 more."""
        m = make_machine()
        self._exhaust(m)
        now = T0 + 100
        assert m.connect(now) == []
        assert m.next_deadline() == now
        assert notified(m.on_timer(now))[0].attempt == 0
        m.on_open_failed(m.generation, ConnectError("refused"), now)
        count = 0
        while m.trying:
            due = m.next_deadline()
            assert due is not None
            fail_attempt(m, due)
            count += 1
        assert count == 5
        assert m.giveups == 2

    def test_reconnect_after_give_up_starts_fresh(self) -> None:
        """reconnect() after giving up tries again at once."""
        m = make_machine()
        self._exhaust(m)
        assert m.reconnect(T0 + 100) == []
        assert m.next_deadline() == T0 + 100
        assert notified(m.on_timer(T0 + 100)) == [state(Status.CONNECTING, attempt=0)]

    def test_messages_sent_after_give_up_wait_for_next_confirm(self) -> None:
        """Messages sent after a give-up stay queued and are written after the next confirm."""
        m = make_machine()
        self._exhaust(m)
        late = entry("late")
        m.send(late)
        assert m.queued == 1
        gen = open_pending(m, T0 + 100)
        handshake(m, gen, T0 + 100)
        assert write(m, gen, T0 + 100) == [late]

    def test_stop_trying_keeps_the_queue(self) -> None:
        """stop_trying() while waiting to retry stops silently and keeps the queued messages."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        m.connect(T0)
        fail_attempt(m, T0)
        timeout = ConnectTimeout("not connected within 0.5 s")
        actions = m.stop_trying(T0 + 0.5, timeout)
        assert actions == []  # DISCONNECTED already: no transition to report
        assert m.state.status is Status.DISCONNECTED
        assert m.state.error == "not connected within 0.5 s"
        assert m.pending == {"a": a}
        assert a.state is EntryState.QUEUED
        assert not m.trying
        assert m.next_deadline() is None
        assert m.on_timer(T0 + 100) == []

    def test_queue_kept_by_stop_trying_goes_out_after_connect(self) -> None:
        """Messages kept by stop_trying() are written after a later connect() confirms."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        m.connect(T0)
        fail_attempt(m, T0)
        m.stop_trying(T0 + 0.5, ConnectTimeout("timed out"))
        m.connect(T0 + 1)
        gen = open_pending(m, T0 + 1)
        handshake(m, gen, T0 + 1)
        assert write(m, gen, T0 + 1) == [a]

    def test_stop_trying_aborts_attempt_in_flight(self) -> None:
        """stop_trying() during PENDING aborts that connection first."""
        m = make_machine()
        gen = open_pending(m)
        actions = m.stop_trying(T0 + 1, ConnectTimeout("timed out"))
        assert actions == [
            Abort(gen, "connect timed out"),
            Notify(state(Status.DISCONNECTED, error="timed out", attempt=0)),
        ]
        assert m.on_frame(gen, confirm(), T0 + 1) == []

    def test_stop_trying_when_not_trying_is_noop(self) -> None:
        """stop_trying() on a confirmed connection changes nothing."""
        m = make_machine()
        confirmed(m)
        m.send(entry("a"))
        assert m.stop_trying(T0, ConnectTimeout("x")) == []
        assert m.status is Status.CONFIRMED
        assert m.queued == 1


class TestHeartbeat:
    def test_first_ping_due_one_interval_after_confirm(self) -> None:
        """The first ping is due exactly heartbeat_interval after the confirm."""
        m = make_machine()
        gen = confirmed(m)
        assert m.next_deadline() == T0 + 30
        assert m.on_timer(T0 + 30 - EPS) == []
        assert m.take_writes(gen, T0 + 30 - EPS) == ([], [])
        assert m.on_timer(T0 + 30) == []
        assert m.take_writes(gen, T0 + 30) == ([Control.PING], [])

    def test_pings_every_interval(self) -> None:
        """With pongs answered, pings are due at confirm + 30, 60, 90 s."""
        m = make_machine()
        gen = confirmed(m)
        due_times = []
        for _ in range(3):
            due = m.next_deadline()
            assert due is not None
            due_times.append(due)
            m.on_timer(due)
            assert m.take_writes(gen, due) == ([Control.PING], [])
            m.on_frame(gen, PONG, due)
        assert due_times == [T0 + 30, T0 + 60, T0 + 90]

    def test_late_timer_does_not_drift(self) -> None:
        """A ping sent late still schedules the next one from its due time."""
        m = make_machine()
        confirmed(m)
        m.on_timer(T0 + 31)
        assert m.next_ping_at == T0 + 60

    def test_very_late_timer_queues_one_ping(self) -> None:
        """A timer late by more than an interval queues one ping and schedules the next later."""
        m = make_machine(heartbeat_interval=10.0, heartbeat_timeout=100.0)
        gen = confirmed(m)
        m.on_timer(T0 + 25)
        due = m.next_deadline()
        assert due is not None
        assert due > T0 + 25
        m.on_timer(T0 + 25)  # what the engine's timer loop does when due <= now
        assert m.take_writes(gen, T0 + 25) == ([Control.PING], [])

    def test_not_dead_before_timeout(self) -> None:
        """With no pong, the connection is still CONFIRMED at confirm + heartbeat_timeout - ε."""
        m = make_machine()
        gen = confirmed(m)
        m.on_timer(T0 + 30)
        m.take_writes(gen, T0 + 30)
        assert m.on_timer(T0 + 60 - EPS) == []
        assert m.status is Status.CONFIRMED

    def test_dead_at_timeout_exactly(self) -> None:
        """With no pong, the connection is declared dead exactly at confirm + heartbeat_timeout."""
        m = make_machine()
        gen = confirmed(m)
        m.on_timer(T0 + 30)
        actions = m.on_timer(T0 + 60)
        assert actions == [
            Abort(gen, "no pong for heartbeat_timeout=60 s"),
            Notify(
                state(
                    Status.DISCONNECTED,
                    error="no pong for heartbeat_timeout=60 s",
                    conversation_id="conv-1",
                )
            ),
        ]
        assert m.next_deadline() == T0 + 61  # attempt 1 after delay(1)

    def test_deadline_includes_dead_at(self) -> None:
        """While CONFIRMED, next_deadline() is the earlier of the next ping and the dead time."""
        m = make_machine(heartbeat_interval=30.0, heartbeat_timeout=20.0)
        confirmed(m)
        assert m.next_deadline() == T0 + 20

    def test_pong_extends_deadline(self) -> None:
        """A pong at t moves the dead time to t + heartbeat_timeout."""
        m = make_machine()
        gen = confirmed(m)
        m.on_timer(T0 + 30)
        m.take_writes(gen, T0 + 30)
        assert m.on_frame(gen, PONG, T0 + 45) == []
        assert m.dead_at == T0 + 105
        m.on_timer(T0 + 60)
        m.on_timer(T0 + 90)
        assert m.on_timer(T0 + 105 - EPS) == []
        assert m.status is Status.CONFIRMED
        assert kinds(m.on_timer(T0 + 105)) == [Abort, Notify]

    def test_pong_sets_last_rtt(self) -> None:
        """last_rtt is the time from the ping's due time to its pong."""
        m = make_machine()
        gen = confirmed(m)
        assert m.stats().last_rtt is None
        m.on_timer(T0 + 30)
        m.on_frame(gen, PONG, T0 + 30.25)
        assert m.last_rtt == 0.25
        assert m.stats().last_rtt == 0.25

    def test_rtt_measured_from_oldest_unanswered_ping(self) -> None:
        """With two pings unanswered, the pong's rtt counts from the first."""
        m = make_machine(heartbeat_timeout=100.0)
        gen = confirmed(m)
        m.on_timer(T0 + 30)
        m.on_timer(T0 + 60)
        m.on_frame(gen, PONG, T0 + 61)
        assert m.last_rtt == 31.0

    def test_unsolicited_pong_keeps_rtt(self) -> None:
        """A pong with no ping outstanding extends the deadline but leaves last_rtt."""
        m = make_machine()
        gen = confirmed(m)
        m.on_frame(gen, PONG, T0 + 5)
        assert m.last_rtt is None
        assert m.dead_at == T0 + 65

    def test_pong_while_pending_ignored(self) -> None:
        """A pong before the confirm changes no deadline and no rtt."""
        m = make_machine()
        gen = open_pending(m)
        assert m.on_frame(gen, PONG, T0 + 1) == []
        assert m.dead_at is None
        assert m.last_rtt is None
        assert m.next_deadline() == T0 + 10

    def test_no_ping_while_not_confirmed(self) -> None:
        """No ping is queued before the confirm, however long PENDING lasts."""
        m = make_machine(connect_timeout=100.0)
        gen = open_pending(m)
        m.take_writes(gen, T0)
        m.on_timer(T0 + 50)
        assert m.take_writes(gen, T0 + 50) == ([], [])

    def test_heartbeat_restarts_after_reconnect(self) -> None:
        """After a new confirm the ping and dead times count from that confirm."""
        m = make_machine()
        confirmed(m)
        reconfirm(m, T0 + 200)
        assert m.next_ping_at == T0 + 230
        assert m.dead_at == T0 + 260
        assert m.next_deadline() == T0 + 230

    def test_no_heartbeat_deadlines_after_loss(self) -> None:
        """After a loss no ping or dead time is left, only the next attempt."""
        m = make_machine()
        gen = confirmed(m)
        m.on_timer(T0 + 30)
        lose(m, gen, T0 + 31)
        assert m.next_ping_at is None
        assert m.dead_at is None
        assert m.controls == type(m.controls)()
        assert m.next_deadline() == T0 + 32


class TestServerPing:
    def test_ping_queues_pong(self) -> None:
        """A server ping while CONFIRMED queues a PONG control and wakes the writer."""
        m = make_machine()
        gen = confirmed(m)
        m.wake_writer = False
        assert m.on_frame(gen, PING, T0 + 1) == []
        assert m.wake_writer
        assert m.has_writes()
        assert m.take_writes(gen, T0 + 1) == ([Control.PONG], [])

    def test_each_ping_gets_a_pong(self) -> None:
        """Two server pings queue two PONGs."""
        m = make_machine()
        gen = confirmed(m)
        m.on_frame(gen, PING, T0 + 1)
        m.on_frame(gen, PING, T0 + 2)
        assert m.take_writes(gen, T0 + 2) == ([Control.PONG, Control.PONG], [])

    def test_controls_before_messages(self) -> None:
        """A PONG and a PING are written before any message of the same batch."""
        m = make_machine()
        gen = confirmed(m)
        a = entry("a")
        m.send(a)
        m.on_frame(gen, PING, T0 + 30)
        m.on_timer(T0 + 30)
        assert m.take_writes(gen, T0 + 30) == ([Control.PONG, Control.PING], [a])

    def test_connect_first_while_pending(self) -> None:
        """While PENDING a server ping is answered, but only after CONNECT."""
        m = make_machine()
        gen = open_pending(m)
        m.on_frame(gen, PING, T0)
        assert m.take_writes(gen, T0) == ([Control.CONNECT, Control.PONG], [])

    def test_pong_dropped_with_connection(self) -> None:
        """A PONG not yet written when the connection drops is not written on the next one."""
        m = make_machine()
        gen = confirmed(m)
        m.on_frame(gen, PING, T0 + 1)
        lose(m, gen, T0 + 1)
        new = start_attempt(m, T0 + 2)
        m.on_open_succeeded(new, T0 + 2)
        assert m.take_writes(new, T0 + 2) == ([Control.CONNECT], [])


class TestQueueOrder:
    def test_queued_while_disconnected_written_after_confirm(self) -> None:
        """Messages sent before connecting are written after the confirm, in send order."""
        m = make_machine()
        sent = [entry(f"m{i}") for i in range(4)]
        for e in sent:
            m.send(e)
        assert (m.queued, m.in_flight) == (4, 0)
        gen = confirmed(m)
        assert m.has_writes()
        assert write(m, gen, T0) == sent
        assert (m.queued, m.in_flight) == (0, 4)
        assert all(e.state is EntryState.WRITTEN for e in sent)

    def test_send_while_confirmed_goes_after_queue(self) -> None:
        """A message sent while CONFIRMED is written after the ones queued before it."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        m.send(a)
        gen = confirmed(m)
        m.wake_writer = False
        m.send(b)
        assert m.wake_writer
        assert write(m, gen, T0) == [a, b]

    def test_take_respects_limit(self) -> None:
        """The writer takes at most ``limit`` messages, oldest first."""
        m = make_machine()
        sent = [entry(f"m{i}") for i in range(5)]
        for e in sent:
            m.send(e)
        gen = confirmed(m)
        assert write(m, gen, T0, limit=2) == sent[:2]
        assert write(m, gen, T0, limit=2) == sent[2:4]
        assert write(m, gen, T0, limit=2) == sent[4:]
        assert not m.has_writes()

    def test_taken_then_written_states(self) -> None:
        """take_writes marks messages TAKEN (in flight); writes_done marks them WRITTEN."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        gen = confirmed(m)
        _, entries = m.take_writes(gen, T0)
        assert entries == [a]
        assert a.state is EntryState.TAKEN
        assert (m.queued, m.in_flight) == (0, 1)
        assert m.writes_done(gen, entries) == []
        assert a.state is EntryState.WRITTEN
        assert (m.queued, m.in_flight, m.sent) == (0, 1, 1)

    def test_first_write_order_across_three_reconnects(self) -> None:
        """Across three reconnects the first write of every message follows send order."""
        m = make_machine()
        send_order: list[str] = []
        first_writes: list[str] = []
        counter = iter(range(100))

        def send(n: int) -> None:
            for _ in range(n):
                e = entry(f"m{next(counter)}")
                m.send(e)
                send_order.append(e.message_id)

        def write_some(gen: int, now: float, limit: int) -> None:
            for e in write(m, gen, now, limit):
                if e.message_id not in first_writes:
                    first_writes.append(e.message_id)

        send(3)
        now = T0
        gen = confirmed(m, now)
        for _ in range(3):
            write_some(gen, now, 2)  # some written, some still queued
            send(2)
            m.on_frame(gen, response(first_writes[-1]), now)  # one answered
            lose(m, gen, now)
            send(2)  # sent while disconnected
            now += 1
            gen = start_attempt(m, now)
            m.on_open_succeeded(gen, now)
            handshake(m, gen, now)
        write_some(gen, now, 256)
        assert first_writes == send_order
        assert m.reconnects == 3


class TestResend:
    def test_unanswered_rewritten_first_after_reconfirm(self) -> None:
        """Written-but-unanswered messages are written again first, then the queue."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        m.send(a)
        m.send(b)
        gen = confirmed(m)
        write(m, gen, T0)
        c = entry("c")
        m.send(c)  # queued behind a and b, not written yet
        lose(m, gen, T0 + 1)
        assert (m.queued, m.in_flight) == (3, 0)
        assert all(e.state is EntryState.QUEUED for e in (a, b, c))
        gen = start_attempt(m, T0 + 2)
        m.on_open_succeeded(gen, T0 + 2)
        handshake(m, gen, T0 + 2)
        rewritten = write(m, gen, T0 + 2)
        assert rewritten == [a, b, c]
        assert [e.text for e in rewritten[:2]] == [a.text, b.text]

    def test_answered_not_resent(self) -> None:
        """A message answered before the loss is not written again."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        m.send(a)
        m.send(b)
        gen = confirmed(m)
        write(m, gen, T0)
        m.on_frame(gen, response("a"), T0)
        lose(m, gen, T0)
        gen = reconfirm(m, T0 + 5)
        assert write(m, gen, T0 + 5) == [b]

    def test_taken_when_lost_is_requeued(self) -> None:
        """Messages the writer had taken when the connection dropped are queued again."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0)
        lose(m, gen, T0)
        assert a.state is EntryState.QUEUED
        assert (m.queued, m.in_flight) == (1, 0)
        assert m.writes_done(gen, taken) == []  # the writer finishes on the old connection
        assert a.state is EntryState.QUEUED
        assert (m.queued, m.in_flight, m.sent) == (1, 0, 1)
        gen = reconfirm(m, T0 + 5)
        assert write(m, gen, T0 + 5) == [a]

    def test_sent_counts_every_write(self) -> None:
        """stats().sent counts a message again when it is rewritten after a reconnect."""
        m = make_machine()
        m.send(entry("a"))
        gen = confirmed(m)
        write(m, gen, T0)
        gen = reconfirm(m, T0 + 1)
        write(m, gen, T0 + 1)
        assert m.stats().sent == 2
        assert m.stats().reconnects == 1

    def test_resend_after_reconnect_call(self) -> None:
        """reconnect() requeues written messages exactly as a loss does."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        gen = confirmed(m)
        write(m, gen, T0)
        gen = reconfirm(m, T0 + 1)
        assert write(m, gen, T0 + 1) == [a]


class TestCancelWithdrawAbandon:
    def test_discard_while_queued_forgets(self) -> None:
        """Cancelling a queued message removes it and forgets it; it is never written."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        m.send(a)
        m.send(b)
        assert a.future.cancel()
        assert m.discard("a") == [Forget(("a",))]
        assert list(m.pending) == ["b"]
        assert a.state is EntryState.DONE
        assert m.queued == 1
        gen = confirmed(m)
        assert write(m, gen, T0) == [b]

    def test_discard_while_taken_forgets_at_once(self) -> None:
        """Cancelling a taken, unwritten message forgets it at once; the writer then skips it."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0)
        assert a.future.cancel()  # the writer has not called set_running_or_notify_cancel yet
        m.wake_waiters = False
        assert m.discard("a") == [Forget(("a",))]
        assert a.state is EntryState.DONE
        assert m.pending == {}
        assert (m.queued, m.in_flight, m.sent) == (0, 0, 0)
        assert m.wake_waiters
        assert m.writes_done(gen, [], skipped=taken) == []
        assert (m.queued, m.in_flight, m.sent) == (0, 0, 0)

    def test_discard_after_write_does_nothing(self) -> None:
        """Cancelling a written message does nothing: it stays in flight."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        gen = confirmed(m)
        write(m, gen, T0)
        assert m.discard("a") == []
        assert m.pending == {"a": a}
        assert m.in_flight == 1

    def test_cancel_again_spares_later_message_with_same_id(self) -> None:
        """Cancelling an old cancelled future again leaves a later message with its id alone."""
        m = make_machine()

        def on_cancel(future: MessageFuture) -> None:  # what the engine does
            m.discard(future.message_id, future)

        old = Entry("k", "a", "text-a", MessageFuture("k", on_cancel))
        m.send(old)
        assert old.future.cancel()
        new = Entry("k", "b", "text-b", MessageFuture("k", on_cancel))
        m.send(new)
        assert old.future.cancel()  # True again: concurrent.futures says so
        assert m.pending == {"k": new}
        assert new.state is EntryState.QUEUED

    def test_discard_unknown_does_nothing(self) -> None:
        """Cancelling an id that is not pending does nothing."""
        m = make_machine()
        assert m.discard("nope") == []

    def test_withdraw_queued(self) -> None:
        """withdraw() removes a queued message and returns it; it is never written."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        m.send(a)
        m.send(b)
        gen = confirmed(m)
        assert m.withdraw("a") is a
        assert a.state is EntryState.DONE
        assert m.queued == 1
        assert write(m, gen, T0) == [b]

    def test_withdraw_taken_or_written_returns_none(self) -> None:
        """withdraw() refuses a taken or written message."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        m.send(a)
        m.send(b)
        gen = confirmed(m)
        write(m, gen, T0, limit=1)
        m.take_writes(gen, T0)
        assert m.withdraw("a") is None
        assert m.withdraw("b") is None
        assert m.withdraw("zzz") is None
        assert (m.queued, m.in_flight) == (0, 2)

    def test_withdraw_requeued_message(self) -> None:
        """A written message queued again after a loss can be withdrawn: it is not rewritten."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        gen = confirmed(m)
        write(m, gen, T0)
        lose(m, gen, T0)
        assert m.withdraw("a") is a
        gen = reconfirm(m, T0 + 5)
        assert write(m, gen, T0 + 5) == []

    def test_abandon_written(self) -> None:
        """abandon() stops tracking a written message: it is never written again."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        gen = confirmed(m)
        write(m, gen, T0)
        assert m.abandon("a") is a
        assert a.state is EntryState.DONE
        assert (m.queued, m.in_flight) == (0, 0)
        gen = reconfirm(m, T0 + 5)
        assert write(m, gen, T0 + 5) == []

    def test_abandon_queued(self) -> None:
        """abandon() of a queued message decrements the queue."""
        m = make_machine()
        m.send(entry("a"))
        assert m.abandon("a") is not None
        assert m.queued == 0
        assert m.abandon("a") is None

    def test_abandon_taken_then_written(self) -> None:
        """A message abandoned while taken is not marked written when the writer finishes."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0)
        m.abandon("a")
        assert m.writes_done(gen, taken) == []
        assert a.state is EntryState.DONE
        assert (m.queued, m.in_flight, m.sent) == (0, 0, 1)

    def test_withdraw_last_wakes_waiters(self) -> None:
        """Withdrawing the last pending message wakes flush() waiters."""
        m = make_machine()
        m.send(entry("a"))
        m.wake_waiters = False
        m.withdraw("a")
        assert m.wake_waiters


class TestResponses:
    def test_response_resolves_and_forgets(self) -> None:
        """A response calls on_response, resolves its message and forgets it."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        gen = confirmed(m)
        write(m, gen, T0)
        r = response("a")
        m.wake_waiters = False
        assert m.on_frame(gen, r, T0 + 1) == [OnResponse(r), Resolve(a, r), Forget(("a",))]
        assert a.state is EntryState.DONE
        assert m.pending == {}
        assert (m.in_flight, m.received) == (0, 1)
        assert m.wake_waiters

    def test_responses_in_any_order(self) -> None:
        """Responses resolve the message with their id, whatever the order."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        m.send(a)
        m.send(b)
        gen = confirmed(m)
        write(m, gen, T0)
        rb, ra = response("b"), response("a")
        assert Resolve(b, rb) in m.on_frame(gen, rb, T0)
        assert Resolve(a, ra) in m.on_frame(gen, ra, T0)

    def test_unknown_id_only_on_response(self) -> None:
        """A response for an unknown id only calls on_response and is counted."""
        m = make_machine()
        gen = confirmed(m)
        r = response("who")
        assert m.on_frame(gen, r, T0) == [OnResponse(r)]
        assert m.received == 1

    def test_duplicate_response(self) -> None:
        """A second response for the same id only calls on_response."""
        m = make_machine()
        m.send(entry("a"))
        gen = confirmed(m)
        write(m, gen, T0)
        m.on_frame(gen, response("a"), T0)
        r2 = response("a", "again")
        assert m.on_frame(gen, r2, T0) == [OnResponse(r2)]
        assert (m.received, m.in_flight, m.queued) == (2, 0, 0)

    def test_response_for_queued_message(self) -> None:
        """A response for a message queued again (not yet rewritten) resolves it and dequeues it."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        gen = confirmed(m)
        write(m, gen, T0)
        lose(m, gen, T0)
        gen = reconfirm(m, T0 + 5)
        r = response("a")
        assert m.on_frame(gen, r, T0 + 5) == [OnResponse(r), Resolve(a, r), Forget(("a",))]
        assert (m.queued, m.in_flight) == (0, 0)
        assert write(m, gen, T0 + 5) == []

    def test_response_while_taken(self) -> None:
        """A response for a taken message resolves it; the writer's report changes nothing."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0)
        m.on_frame(gen, response("a"), T0)
        assert m.writes_done(gen, taken) == []
        assert a.state is EntryState.DONE
        assert (m.queued, m.in_flight) == (0, 0)


class TestErrors:
    def test_error_without_id_only_on_error(self) -> None:
        """An error frame without messageId calls on_error and nothing else."""
        m = make_machine()
        m.send(entry("a"))
        gen = confirmed(m)
        write(m, gen, T0)
        actions = m.on_frame(gen, error_frame("busy"), T0)
        assert kinds(actions) == [OnError]
        err = actions[0].error  # type: ignore[union-attr]
        assert (err.error, err.timestamp, err.message_id) == ("busy", TS, None)
        assert m.status is Status.CONFIRMED
        assert m.in_flight == 1

    def test_error_with_known_id_fails_that_message_only(self) -> None:
        """An error naming a message fails only it with ServerError and forgets it."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        m.send(a)
        m.send(b)
        gen = confirmed(m)
        write(m, gen, T0)
        actions = m.on_frame(gen, error_frame("bad content", "a"), T0)
        assert kinds(actions) == [OnError, Fail, Forget]
        fail = actions[1]
        assert isinstance(fail, Fail)
        assert fail.entries == (a,)
        error = fail.error()
        assert isinstance(error, ServerError)
        assert (error.error, error.timestamp, error.message_id) == ("bad content", TS, "a")
        assert actions[2] == Forget(("a",))
        assert m.pending == {"b": b}
        assert b.state is EntryState.WRITTEN
        assert m.in_flight == 1

    def test_error_with_unknown_id_only_on_error(self) -> None:
        """An error naming an unknown message only calls on_error."""
        m = make_machine()
        gen = confirmed(m)
        actions = m.on_frame(gen, error_frame("?", "ghost"), T0)
        assert kinds(actions) == [OnError]
        assert actions[0].error.message_id == "ghost"  # type: ignore[union-attr]

    def test_error_for_queued_message(self) -> None:
        """An error naming a still-queued message fails it, and it is never written."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        m.send(a)
        m.send(b)
        gen = confirmed(m)
        actions = m.on_frame(gen, error_frame("no", "b"), T0)
        assert kinds(actions) == [OnError, Fail, Forget]
        assert m.queued == 1
        assert write(m, gen, T0) == [a]

    def test_error_after_response_only_on_error(self) -> None:
        """An error for a message already answered fails nothing."""
        m = make_machine()
        m.send(entry("a"))
        gen = confirmed(m)
        write(m, gen, T0)
        m.on_frame(gen, response("a"), T0)
        assert kinds(m.on_frame(gen, error_frame("late", "a"), T0)) == [OnError]


class TestClose:
    def test_close_fails_pending_with_client_closed_and_keeps_outbox(self) -> None:
        """close() fails every pending future with ClientClosed, forgets nothing, ends CLOSED."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        m.send(a)
        m.send(b)
        gen = confirmed(m)
        write(m, gen, T0, limit=1)
        actions = m.close()
        assert kinds(actions) == [Abort, Fail, Notify]
        assert actions[0] == Abort(gen, "client closed")
        fail = actions[1]
        assert isinstance(fail, Fail)
        assert fail.entries == (a, b)
        assert type(fail.error()) is ClientClosed
        assert Forget not in kinds(actions)
        assert notified(actions) == [state(Status.CLOSED, conversation_id="conv-1")]
        assert m.pending == {}
        assert (m.queued, m.in_flight) == (0, 0)

    def test_close_without_connection_no_abort(self) -> None:
        """close() while DISCONNECTED and idle only notifies CLOSED."""
        m = make_machine()
        assert m.close() == [Notify(state(Status.CLOSED))]
        assert m.closed

    def test_close_while_connecting_aborts_open(self) -> None:
        """close() during CONNECTING aborts the open in flight."""
        m = make_machine()
        m.connect(T0)
        gen = start_attempt(m, T0)
        assert m.close() == [Abort(gen, "client closed"), Notify(state(Status.CLOSED))]
        assert m.on_open_succeeded(gen, T0 + 1) == [Abort(gen, "superseded")]
        assert m.status is Status.CLOSED

    def test_close_is_idempotent(self) -> None:
        """A second close() does nothing."""
        m = make_machine()
        m.close()
        assert m.close() == []

    def test_closed_is_terminal(self) -> None:
        """After close() no call starts anything again and nothing is due."""
        m = make_machine()
        gen = confirmed(m)
        m.close()
        assert m.connect(T0) == []
        assert m.reconnect(T0) == []
        assert m.stop_trying(T0, ConnectTimeout("x")) == []
        assert m.on_timer(T0 + 1000) == []
        assert m.next_deadline() is None
        assert not m.trying
        assert m.on_frame(gen, PING, T0) == []
        assert lose(m, gen, T0) == []
        assert m.take_writes(gen, T0) == ([], [])
        assert m.status is Status.CLOSED

    def test_close_during_backoff_stops_attempts(self) -> None:
        """close() while waiting to retry cancels the retry."""
        m = make_machine()
        m.connect(T0)
        fail_attempt(m, T0)
        m.close()
        assert m.on_timer(T0 + 100) == []

    def test_writer_finishing_after_close(self) -> None:
        """The writer reporting a batch taken before close() changes no counter below zero."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0)
        m.close()
        assert m.writes_done(gen, [], skipped=taken) == []
        assert (m.queued, m.in_flight) == (0, 0)
        assert a.state is EntryState.DONE


class TestStaleGenerations:
    def _two_connections(self) -> tuple[Machine, int, int, Entry]:
        """A message written on a first connection, then a second confirmed one."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        old = confirmed(m)
        write(m, old, T0)
        new = reconfirm(m, T0 + 1)
        return m, old, new, a

    def test_response_from_old_generation_ignored(self) -> None:
        """A response read on an old connection is ignored entirely."""
        m, old, _, a = self._two_connections()
        assert m.on_frame(old, response("a"), T0 + 2) == []
        assert m.pending == {"a": a}
        assert m.received == 0

    def test_error_from_old_generation_ignored(self) -> None:
        """An error frame read on an old connection is ignored, on_error included."""
        m, old, _, _ = self._two_connections()
        assert m.on_frame(old, error_frame("x", "a"), T0 + 2) == []

    def test_loss_of_old_generation_ignored(self) -> None:
        """The old connection closing does not disturb the current one."""
        m, old, _, _ = self._two_connections()
        assert lose(m, old, T0 + 2) == []
        assert m.status is Status.CONFIRMED

    def test_pong_from_old_generation_ignored(self) -> None:
        """A pong on an old connection does not extend the current dead time."""
        m, old, _, _ = self._two_connections()
        dead_at = m.dead_at
        m.on_frame(old, PONG, T0 + 30)
        assert m.dead_at == dead_at

    def test_ping_from_old_generation_ignored(self) -> None:
        """A ping on an old connection queues no PONG."""
        m, old, new, _ = self._two_connections()
        m.take_writes(new, T0 + 1)
        m.on_frame(old, PING, T0 + 2)
        assert not m.controls

    def test_open_results_of_old_generation(self) -> None:
        """An old attempt's open success is aborted and its failure ignored."""
        m = make_machine()
        m.connect(T0)
        first = start_attempt(m, T0)
        m.reconnect(T0)
        current = start_attempt(m, T0)
        assert m.on_open_failed(first, ConnectError("x"), T0) == []
        assert m.on_open_succeeded(first, T0) == [Abort(first, "superseded")]
        assert m.status is Status.CONNECTING
        assert m.generation == current

    def test_confirm_on_old_generation_ignored(self) -> None:
        """A confirm read on an aborted attempt's socket confirms nothing."""
        m = make_machine()
        old = open_pending(m)
        m.reconnect(T0)
        assert m.on_frame(old, confirm(), T0) == []
        assert m.status is Status.DISCONNECTED

    def test_writes_done_of_old_generation(self) -> None:
        """The writer finishing on an old connection does not mark messages written."""
        m = make_machine()
        a = entry("a")
        m.send(a)
        old = confirmed(m)
        _, taken = m.take_writes(old, T0)
        new = reconfirm(m, T0 + 1)
        assert m.writes_done(old, taken) == []
        assert a.state is EntryState.QUEUED
        assert write(m, new, T0 + 1) == [a]

    def test_take_writes_of_old_generation_gives_nothing(self) -> None:
        """The writer asking for an old connection gets nothing."""
        m, old, _, _ = self._two_connections()
        m.send(entry("b"))
        assert m.take_writes(old, T0 + 2) == ([], [])
        assert m.queued == 2

    def test_take_writes_of_old_generation_keeps_current_controls(self) -> None:
        """A stale take_writes leaves the current connection's CONNECT to be written."""
        m = make_machine()
        old = confirmed(m)
        m.reconnect(T0)
        new = start_attempt(m, T0)
        m.on_open_succeeded(new, T0)
        assert m.take_writes(old, T0) == ([], [])
        assert m.take_writes(new, T0) == ([Control.CONNECT], [])


class TestRateLimit:
    def test_burst_then_rate(self) -> None:
        """rate_limit=2: two messages at once, then one every 0.5 s."""
        m = make_machine(rate_limit=2.0)
        sent = [entry(f"m{i}") for i in range(5)]
        for e in sent:
            m.send(e)
        gen = confirmed(m)
        assert write(m, gen, T0) == sent[:2]
        assert write(m, gen, T0) == []
        assert m.next_write_at(T0) == T0 + 0.5
        assert write(m, gen, T0 + 0.25) == []
        assert write(m, gen, T0 + 0.5) == sent[2:3]
        assert write(m, gen, T0 + 1.5) == sent[3:5]
        assert m.next_write_at(T0 + 1.5) is None

    def test_controls_not_limited(self) -> None:
        """A PING is handed out even when no token is left."""
        m = make_machine(rate_limit=1.0)
        for i in range(3):
            m.send(entry(f"m{i}"))
        gen = confirmed(m)
        write(m, gen, T0 + 29)
        m.on_timer(T0 + 30)
        controls, entries = m.take_writes(gen, T0 + 30)
        assert controls == [Control.PING]
        assert len(entries) == 1  # one token refilled in the second since
        m.on_frame(gen, PING, T0 + 30)
        assert m.take_writes(gen, T0 + 30) == ([Control.PONG], [])

    def test_withdrawn_messages_use_no_token(self) -> None:
        """Messages withdrawn after being queued for the writer do not consume tokens."""
        m = make_machine(rate_limit=2.0)
        sent = [entry(f"m{i}") for i in range(4)]
        for e in sent:
            m.send(e)
        gen = confirmed(m)
        m.withdraw("m0")
        m.withdraw("m1")
        assert write(m, gen, T0) == sent[2:]

    def test_no_next_write_without_limit_or_queue(self) -> None:
        """next_write_at() is None without a limit, without a queue, or when not CONFIRMED."""
        assert make_machine().next_write_at(T0) is None
        m = make_machine(rate_limit=2.0)
        m.send(entry("a"))
        assert m.next_write_at(T0) is None  # not confirmed
        gen = confirmed(m)
        assert m.next_write_at(T0) == T0
        write(m, gen, T0)
        assert m.next_write_at(T0) is None

    def test_has_writes_ignores_rate(self) -> None:
        """has_writes() is True with a message queued even when no token is left."""
        m = make_machine(rate_limit=1.0)
        m.send(entry("a"))
        m.send(entry("b"))
        gen = confirmed(m)
        write(m, gen, T0)
        assert m.has_writes()
        assert m.next_write_at(T0) == T0 + 1.0

    def test_slow_rate_bursts_one(self) -> None:
        """A rate below one message per second still allows one message at once."""
        m = make_machine(rate_limit=0.5)
        for i in range(2):
            m.send(entry(f"m{i}"))
        gen = confirmed(m)
        assert len(write(m, gen, T0)) == 1
        assert m.next_write_at(T0) == T0 + 2.0


class TestStats:
    def test_initial_stats(self) -> None:
        """A new machine's counters are all zero and last_rtt None."""
        s = make_machine().stats()
        assert (s.sent, s.received, s.queued, s.in_flight, s.reconnects, s.malformed) == (
            0,
            0,
            0,
            0,
            0,
            0,
        )
        assert s.last_rtt is None

    def test_counters_follow_messages(self) -> None:
        """queued, in_flight, sent and received follow a message through its life."""
        m = make_machine()
        m.send(entry("a"))
        m.send(entry("b"))
        assert (m.stats().queued, m.stats().in_flight) == (2, 0)
        gen = confirmed(m)
        write(m, gen, T0, limit=1)
        s = m.stats()
        assert (s.queued, s.in_flight, s.sent) == (1, 1, 1)
        m.on_frame(gen, response("a"), T0)
        s = m.stats()
        assert (s.queued, s.in_flight, s.sent, s.received) == (1, 0, 1, 1)

    def test_reconnects_count_reconfirms_only(self) -> None:
        """reconnects counts confirms after the first, not attempts or failures."""
        m = make_machine()
        gen = confirmed(m)
        assert m.stats().reconnects == 0
        lose(m, gen, T0)
        fail_attempt(m, T0 + 1)
        gen = start_attempt(m, T0 + 3)
        m.on_open_succeeded(gen, T0 + 3)
        handshake(m, gen, T0 + 3)
        assert m.stats().reconnects == 1

    def test_malformed_counts(self) -> None:
        """on_malformed() and frames only a client sends both count as malformed."""
        m = make_machine()
        gen = confirmed(m)
        m.on_malformed()
        m.on_frame(gen, protocol.Connect(client_id=CID, timestamp=TS), T0)
        assert m.stats().malformed == 2

    def test_stats_is_a_snapshot(self) -> None:
        """stats() returns a value that later changes do not alter."""
        m = make_machine()
        before = m.stats()
        m.send(entry("a"))
        assert before.queued == 0
        assert m.stats().queued == 1
