"""Machine: the sans-I/O connection logic, driven with explicit ``now`` values.

No threads, sockets or clock. Every event method only buffers actions; as websockets' tests
read ``events_received()`` after ``receive_data()``, each test calls an event, then drains the
buffer (:func:`drain`) and asserts the exact actions, states and counters. Times start at
``T0`` (away from zero).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone

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
    network_text,
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
from wsync._values import ConnectionState, Status

T0 = 1000.0
EPS = 1e-6
CID = "client-1"
TS = datetime(2026, 11, 27, 13, 40, 30, 123000, tzinfo=timezone.utc)
PING = protocol.Ping(timestamp=TS)
PONG = protocol.Pong(timestamp=TS)
WARNING, ERROR = logging.WARNING, logging.ERROR


# --- helpers --------------------------------------------------------------------------------


def make_machine(**overrides: object) -> Machine:
    """A Machine with the default options (interval 30 s, timeout 60 s, connect_timeout 10 s).

    ``durable=True`` unless overridden, so that ``Forget`` and ``CountDeliveries`` show.
    """
    options: dict[str, object] = {
        "client_id": CID,
        "heartbeat_interval": 30.0,
        "heartbeat_timeout": 60.0,
        "backoff": Backoff(),
        "connect_timeout": 10.0,
        "durable": True,
        "now": T0,
    }
    options.update(overrides)
    return Machine(**options)  # type: ignore[arg-type]


def entry(message_id: str, deliveries: int = 0) -> Entry:
    text = f'{{"type":"message","messageId":"{message_id}"}}'
    return Entry(message_id, text, MessageFuture(message_id), deliveries)


def drain(m: Machine) -> list[Action]:
    """The actions buffered since the last drain, without the wakes (see TestWakes)."""
    return [a for a in m.drain() if not isinstance(a, Wake)]


def send(m: Machine, *entries: Entry, now: float = T0) -> None:
    """send() each entry (not inline), dropping the actions (wakes only)."""
    for e in entries:
        assert not m.send(e, now)
    drain(m)


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
    close_code: int | None = None,
) -> ConnectionState:
    return ConnectionState(
        status=status,
        client_id=CID,
        conversation_id=conversation_id,
        error=error,
        attempt=attempt,
        close_code=close_code,
    )


def notified(actions: list[Action]) -> list[ConnectionState]:
    return [a.state for a in actions if type(a) is Notify]


def logs(actions: list[Action]) -> list[tuple[int, str]]:
    return [(a.level, a.message) for a in actions if type(a) is Log]


def kinds(actions: list[Action]) -> list[type]:
    return [type(a) for a in actions]


def start_attempt(m: Machine, now: float) -> int:
    """Let the timer start the attempt due at ``now``; return its generation."""
    m.on_timer(now)
    opens = [a for a in drain(m) if type(a) is Open]
    assert len(opens) == 1, opens
    return opens[0].generation


def fail_attempt(m: Machine, now: float, *, retryable: bool = True) -> list[Action]:
    """Start the attempt due at ``now`` and fail its open at once."""
    gen = start_attempt(m, now)
    m.on_open_failed(gen, ConnectError("connection refused"), now, retryable=retryable)
    return drain(m)


def open_pending(m: Machine, now: float = T0) -> int:
    """connect(), start attempt 0 and open it: PENDING. Returns the generation."""
    m.connect(now)
    gen = start_attempt(m, now)
    assert m.on_open_succeeded(gen, now)
    drain(m)
    return gen


def handshake(m: Machine, gen: int, now: float, conversation_id: str = "conv-1") -> list[Action]:
    """The writer writes CONNECT, the server confirms."""
    controls, entries = m.take_writes(gen, now)
    assert controls == [Control.CONNECT]
    assert entries == []
    m.written(gen, entries, entries)
    drain(m)
    m.on_frame(gen, confirm(conversation_id=conversation_id), now)
    return drain(m)


def confirmed(m: Machine, now: float = T0) -> int:
    """connect() all the way to CONFIRMED at ``now``. Returns the generation."""
    gen = open_pending(m, now)
    handshake(m, gen, now)
    assert m.status is Status.CONFIRMED
    return gen


def reopen(m: Machine, now: float) -> int:
    """Start the attempt due at ``now``, open it and confirm it. Returns the generation."""
    gen = start_attempt(m, now)
    assert m.on_open_succeeded(gen, now)
    drain(m)
    handshake(m, gen, now)
    return gen


def reconfirm(m: Machine, now: float) -> int:
    """reconnect() and confirm again at ``now``. Returns the new generation."""
    m.reconnect(now)
    drain(m)
    return reopen(m, now)


def write(m: Machine, gen: int, now: float, limit: int = 256) -> list[Entry]:
    """The writer takes messages and writes all of them."""
    _, entries = m.take_writes(gen, now, limit)
    m.written(gen, entries, entries)
    drain(m)
    return entries


def answer(m: Machine, gen: int, now: float, *entries: Entry) -> None:
    """The server answers each entry."""
    for e in entries:
        m.on_frame(gen, response(e.message_id), now)
    drain(m)


def prove(m: Machine, gen: int, now: float) -> None:
    """A pong: the confirmed connection has proven itself."""
    m.on_frame(gen, PONG, now)
    drain(m)
    assert m.proven


def trying(m: Machine, bound: int = 50) -> Iterator[int]:
    """Count while the machine is trying, at most ``bound`` times: a bug cannot hang a test."""
    for n in range(bound):
        if not m.trying:
            return
        yield n
    raise AssertionError(f"still trying after {bound} rounds")


def ids(entries: list[Entry] | tuple[Entry, ...]) -> list[str]:
    return [e.message_id for e in entries]


def lose(m: Machine, gen: int, now: float, close_code: int | None = None) -> list[Action]:
    m.on_connection_lost(gen, ConnectError("connection reset"), now, close_code=close_code)
    return drain(m)


def retrying(delay: str, attempt: int, failed: int = 0, cause: str = "connection refused") -> Log:
    """The WARNING of a failed attempt (``failed`` 0: attempt 0, or a proven connection)."""
    what = cause if failed == 0 else f"attempt {failed} failed: {cause}"
    return Log(WARNING, f"{what}; retrying in {delay} s (attempt {attempt} of 5)")


class Owner:
    """The engine's side of a MessageFuture: a cancel withdraws the message, as the engine does."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.resolve_lock = threading.Lock()
        self.actions: list[Action] = []

    def withdraw(self, future: MessageFuture) -> bool:
        held = self.m.ledger.get(future.message_id)
        if held is None or held.future is not future:
            return True
        if self.m.withdraw(future.message_id, future) is None:
            return False
        self.actions += drain(self.m)
        return True


# --- tests ----------------------------------------------------------------------------------


class TestConnect:
    def test_starts_disconnected(self) -> None:
        """A new machine is DISCONNECTED, not trying, with nothing due and nothing buffered."""
        m = make_machine()
        assert m.status is Status.DISCONNECTED
        assert m.state == state(Status.DISCONNECTED)
        assert not m.trying
        assert m.next_deadline() is None
        m.on_timer(T0 + 100)
        assert m.drain() == []

    def test_connect_schedules_immediate_attempt(self) -> None:
        """connect() buffers only a timer wake and schedules attempt 0 for now, without delay."""
        m = make_machine()
        m.connect(T0)
        assert m.drain() == [Wake.TIMER]
        assert m.trying
        assert m.next_deadline() == T0
        assert m.status is Status.DISCONNECTED

    def test_timer_starts_attempt_zero(self) -> None:
        """The due attempt is reported CONNECTING (attempt 0), then opened with connect_timeout."""
        m = make_machine()
        m.connect(T0)
        m.on_timer(T0)
        assert drain(m) == [Notify(state(Status.CONNECTING, attempt=0)), Open(1, 10.0)]
        assert m.generation == 1
        assert m.status is Status.CONNECTING

    def test_connect_while_trying_is_noop(self) -> None:
        """A second connect() while an attempt is under way changes nothing."""
        m = make_machine()
        m.connect(T0)
        start_attempt(m, T0)
        m.connect(T0 + 1)
        assert m.drain() == []
        assert m.status is Status.CONNECTING
        assert m.generation == 1

    def test_connect_while_confirmed_is_noop(self) -> None:
        """connect() on a confirmed connection buffers nothing and schedules nothing new."""
        m = make_machine()
        confirmed(m)
        m.connect(T0 + 1)
        assert m.drain() == []
        assert not m.trying
        assert m.status is Status.CONFIRMED

    def test_open_succeeded_goes_pending(self) -> None:
        """An open socket moves CONNECTING -> PENDING (attempt 0) and owes only CONNECT."""
        m = make_machine()
        m.connect(T0)
        gen = start_attempt(m, T0)
        assert m.on_open_succeeded(gen, T0 + 0.5) is True
        assert drain(m) == [Notify(state(Status.PENDING, attempt=0))]
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
        m.on_timer(T0)
        seen += [s.status for s in notified(drain(m))]
        m.on_open_succeeded(1, T0)
        seen += [s.status for s in notified(drain(m))]
        m.take_writes(1, T0)
        m.on_frame(1, confirm(), T0)
        seen += [s.status for s in notified(drain(m))]
        assert seen == [Status.CONNECTING, Status.PENDING, Status.CONFIRMED]

    def test_open_failed_reports_disconnected(self) -> None:
        """A failed open logs a WARNING and reports DISCONNECTED with its error, no Abort."""
        m = make_machine()
        m.connect(T0)
        gen = start_attempt(m, T0)
        m.on_open_failed(gen, ConnectError("connection refused"), T0)
        assert drain(m) == [
            retrying("1", 1),
            Notify(state(Status.DISCONNECTED, error="connection refused", attempt=0)),
        ]
        assert isinstance(m.last_failure, ConnectError)

    def test_connection_lost_from_confirmed(self) -> None:
        """Losing a confirmed connection aborts it, logs, and reports DISCONNECTED with why."""
        m = make_machine()
        gen = confirmed(m)
        actions = lose(m, gen, T0 + 5)
        assert actions == [
            Abort(gen, "connection reset"),
            retrying("1", 1, cause="connection reset"),
            Notify(state(Status.DISCONNECTED, error="connection reset", conversation_id="conv-1")),
        ]
        assert m.trying
        assert m.generation == gen + 1

    def test_reconnect_from_confirmed(self) -> None:
        """reconnect() aborts the old generation, reports DISCONNECTED and tries again at once."""
        m = make_machine()
        gen = confirmed(m)
        m.reconnect(T0 + 5)
        assert drain(m) == [
            Abort(gen, "reconnect requested"),
            Notify(
                state(Status.DISCONNECTED, error="reconnect requested", conversation_id="conv-1")
            ),
        ]
        assert m.next_deadline() == T0 + 5
        m.on_timer(T0 + 5)
        again = drain(m)
        assert notified(again)[0].status is Status.CONNECTING
        assert notified(again)[0].attempt == 0
        assert [a.generation for a in again if type(a) is Open] == [gen + 2]

    def test_reconnect_while_connecting_aborts_the_open(self) -> None:
        """reconnect() during CONNECTING aborts the open in flight and starts a new one."""
        m = make_machine()
        m.connect(T0)
        gen = start_attempt(m, T0)
        m.reconnect(T0 + 1)
        actions = drain(m)
        assert kinds(actions) == [Abort, Notify]
        assert actions[0] == Abort(gen, "reconnect requested")
        assert start_attempt(m, T0 + 1) > gen

    def test_reconnect_while_waiting_attempts_now_without_notify(self) -> None:
        """reconnect() during a backoff wait reports nothing and moves the attempt to now."""
        m = make_machine()
        m.connect(T0)
        fail_attempt(m, T0)
        assert m.next_deadline() == T0 + 1
        m.reconnect(T0 + 0.25)
        assert m.drain() == [Wake.TIMER]
        assert m.next_deadline() == T0 + 0.25
        m.on_timer(T0 + 0.25)
        assert notified(drain(m)) == [state(Status.CONNECTING, attempt=0)]

    def test_reconnect_when_idle_starts_trying(self) -> None:
        """reconnect() on a machine never connected behaves like connect()."""
        m = make_machine()
        m.reconnect(T0)
        assert drain(m) == []
        assert m.trying
        assert m.next_deadline() == T0

    def test_connection_lost_while_pending_is_an_attempt_failure(self) -> None:
        """A socket lost before the confirm fails the attempt: Abort, WARNING, DISCONNECTED."""
        m = make_machine()
        gen = open_pending(m)
        actions = lose(m, gen, T0 + 1)
        assert actions == [
            Abort(gen, "connection reset"),
            retrying("1", 1, cause="connection reset"),
            Notify(state(Status.DISCONNECTED, error="connection reset", attempt=0)),
        ]
        assert m.next_deadline() == T0 + 2


class TestHandshake:
    def test_confirm_for_another_client_is_handshake_failure(self) -> None:
        """A confirm with another clientId fails the attempt with HandshakeError."""
        m = make_machine()
        gen = open_pending(m)
        m.take_writes(gen, T0)
        m.on_frame(gen, confirm(client_id="someone-else"), T0 + 1)
        actions = drain(m)
        assert kinds(actions) == [Abort, Log, Notify]
        assert notified(actions)[0].status is Status.DISCONNECTED
        assert "another clientId" in (notified(actions)[0].error or "")
        assert isinstance(m.last_failure, HandshakeError)
        assert m.next_deadline() == T0 + 2

    def test_confirm_with_wrong_status_is_handshake_failure(self) -> None:
        """A confirm whose status is not 'confirmed' fails the attempt with HandshakeError."""
        m = make_machine()
        gen = open_pending(m)
        m.on_frame(gen, confirm(status="rejected"), T0 + 1)
        assert kinds(drain(m)) == [Abort, Log, Notify]
        assert isinstance(m.last_failure, HandshakeError)
        assert m.status is Status.DISCONNECTED

    def test_error_frame_while_pending_is_handshake_failure(self) -> None:
        """An error frame during PENDING calls on_error and fails the attempt (HandshakeError)."""
        m = make_machine()
        gen = open_pending(m)
        m.on_frame(gen, error_frame("go away"), T0 + 1)
        actions = drain(m)
        assert kinds(actions) == [OnError, Abort, Log, Notify]
        server_error = actions[0].error  # type: ignore[union-attr]
        assert (server_error.error, server_error.message_id) == ("go away", None)
        assert isinstance(m.last_failure, HandshakeError)
        assert m.last_failure.__cause__ is server_error
        assert m.last_failure.phase == "handshake"
        assert notified(actions)[0].status is Status.DISCONNECTED
        assert notified(actions)[0].error == "server refused the handshake: go away"

    def test_error_frame_with_message_id_while_pending_fails_no_message(self) -> None:
        """An error naming a queued message during PENDING is a handshake failure only."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = open_pending(m)
        m.on_frame(gen, error_frame("refused", message_id="a"), T0 + 1)
        assert Fail not in kinds(drain(m))
        assert m.pending == {"a": a}
        assert a.state is EntryState.QUEUED

    def test_confirm_timeout_fails_attempt_exactly(self) -> None:
        """No confirm by attempt start + connect_timeout fails the attempt then, not before."""
        m = make_machine()
        open_pending(m)
        assert m.next_deadline() == T0 + 10
        m.on_timer(T0 + 10 - EPS)
        assert m.drain() == []
        assert m.status is Status.PENDING
        m.on_timer(T0 + 10)
        assert kinds(drain(m)) == [Abort, Log, Notify]
        assert m.status is Status.DISCONNECTED
        assert "connect_timeout=10" in (m.state.error or "")
        assert type(m.last_failure) is ConnectError
        assert m.last_failure.phase == "confirm"

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
        send(m, entry("a"), entry("b"))
        gen = open_pending(m)
        assert m.take_writes(gen, T0) == ([Control.CONNECT], [])
        assert m.take_writes(gen, T0) == ([], [])
        assert m.queued == 2
        assert not m.has_writes()

    def test_take_writes_while_connecting_gives_nothing(self) -> None:
        """While CONNECTING there is nothing to write."""
        m = make_machine()
        send(m, entry("a"))
        m.connect(T0)
        gen = start_attempt(m, T0)
        assert m.take_writes(gen, T0) == ([], [])
        assert not m.has_writes()

    def test_confirm_outside_handshake_is_malformed(self) -> None:
        """A confirm on a confirmed connection changes nothing and counts as malformed."""
        m = make_machine()
        gen = confirmed(m)
        m.on_frame(gen, confirm(conversation_id="conv-2"), T0 + 1)
        assert m.drain() == []
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
            m.on_frame(gen, frame, T0)
            assert m.drain() == []
        assert m.malformed == 2

    def test_open_superseded_is_refused(self) -> None:
        """An open that succeeds after its attempt was dropped is refused (the engine closes it).

        Changed: the machine no longer returns an ``Abort`` for it; ``on_open_succeeded``
        returns False and buffers nothing.
        """
        m = make_machine()
        m.connect(T0)
        gen = start_attempt(m, T0)
        m.reconnect(T0 + 1)
        drain(m)
        assert m.on_open_succeeded(gen, T0 + 2) is False
        assert m.drain() == []
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
        for _ in trying(m):
            due = m.next_deadline()
            assert due is not None
            waits.append(due - now)
            m.on_timer(due - EPS)
            assert m.drain() == []
            now = due
            m.on_timer(now)
            actions = drain(m)
            attempts.append(notified(actions)[0].attempt)
            gen = actions[-1].generation  # type: ignore[union-attr]
            m.on_open_failed(gen, ConnectError("refused"), now)
            drain(m)
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
            m.on_timer(now)
            for action in drain(m):
                if type(action) is Notify:
                    seen.append((action.state.status, action.state.attempt))
                elif type(action) is Open:
                    gen = action.generation
            m.on_open_failed(gen, ConnectError("refused"), now)
            for s in notified(drain(m)):
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
        """After a proven connection is lost, attempt 1 waits delay(1), not zero."""
        m = make_machine()
        gen = confirmed(m)
        m.on_timer(T0 + 10)  # CONFIRMED for reset_after seconds: proven
        assert m.proven
        lose(m, gen, T0 + 50)
        assert m.next_deadline() == T0 + 51
        m.on_timer(T0 + 51 - EPS)
        assert m.drain() == []
        m.on_timer(T0 + 51)
        assert notified(drain(m)) == [state(Status.CONNECTING, attempt=1, conversation_id="conv-1")]

    def test_custom_policy(self) -> None:
        """A custom policy's delays are min(initial * factor**(n-1), max_delay)."""
        m = make_machine(backoff=Backoff(initial=0.5, factor=3.0, max_delay=5.0, max_attempts=4))
        m.connect(T0)
        now = T0
        fail_attempt(m, now)
        waits = []
        for _ in trying(m):
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

    def test_proven_connection_resets_budget(self) -> None:
        """A proven connection resets the count: after a later loss, 5 attempts wait 1..16 s.

        Changed: the confirm alone no longer resets the count (see TestProvenConnections);
        here the connection proves itself with a pong before it is lost.
        """
        m = make_machine()
        m.connect(T0)
        now = T0
        fail_attempt(m, now)
        for delay in (1.0, 2.0, 4.0):
            now += delay
            fail_attempt(m, now)
        now += 8.0
        gen = reopen(m, now)  # attempt 4 succeeds
        assert m.attempt == 4
        prove(m, gen, now)
        assert m.attempt == 0
        lose(m, gen, now)
        waits = []
        for _ in trying(m):
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
        assert kinds(actions) == [Abort, Log, Notify]
        assert logs(actions)[0][0] == ERROR
        assert not m.trying
        assert m.next_deadline() is None
        m.on_timer(T0 + 1000)
        assert m.drain() == []


class TestGiveUp:
    def _exhaust(self, m: Machine, now: float = T0) -> list[Action]:
        """Fail attempt 0 and every retry; return the actions of the last failure."""
        m.connect(now)
        last = fail_attempt(m, now)
        for _ in trying(m):
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
                error="gave up after 5 attempts: connection refused",
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
        m.on_timer(T0 + 10_000)
        assert m.drain() == []
        assert m.status is Status.DISCONNECTED

    def test_pending_failed_with_connect_error_and_forgotten(self) -> None:
        """Giving up fails every pending future with ConnectError, forgets them, logs, notifies."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        send(m, a, b)
        actions = self._exhaust(m)
        assert kinds(actions) == [Fail, Forget, Log, Notify]
        fail, forget = actions[0], actions[1]
        assert isinstance(fail, Fail)
        assert fail.entries == (a, b)
        assert fail.final
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
        send(m, entry("a"))
        m.connect(T0)
        fail_attempt(m, T0)
        gen = start_attempt(m, T0 + 1)
        m.on_open_succeeded(gen, T0 + 1)
        drain(m)
        m.on_frame(gen, confirm(client_id="other"), T0 + 1)
        actions = drain(m)
        assert kinds(actions) == [Abort, Fail, Forget, Log, Notify]
        assert type(actions[1].error()) is HandshakeError  # type: ignore[union-attr]
        assert isinstance(m.give_up_error, HandshakeError)

    def test_earlier_handshake_failure_gives_connect_error(self) -> None:
        """Only the last failure decides: an open failure after a handshake one is ConnectError."""
        m = make_machine(backoff=Backoff(max_attempts=1))
        send(m, entry("a"))
        gen = open_pending(m)
        m.on_frame(gen, confirm(client_id="other"), T0)
        drain(m)
        actions = fail_attempt(m, T0 + 1)
        fail = next(a for a in actions if type(a) is Fail)
        assert type(fail.error()) is ConnectError

    def test_non_retryable_gives_up_at_once(self) -> None:
        """A non-retryable open failure (e.g. TLS) gives up on attempt 0 with ConnectError."""
        m = make_machine()
        send(m, entry("a"))
        m.connect(T0)
        actions = fail_attempt(m, T0, retryable=False)
        assert kinds(actions) == [Fail, Forget, Log, Notify]
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
        m.connect(now)
        assert drain(m) == []
        assert m.next_deadline() == now
        m.on_timer(now)
        assert notified(drain(m))[0].attempt == 0
        m.on_open_failed(m.generation, ConnectError("refused"), now)
        drain(m)
        count = 0
        for _ in trying(m):
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
        m.reconnect(T0 + 100)
        assert drain(m) == []
        assert m.next_deadline() == T0 + 100
        m.on_timer(T0 + 100)
        assert notified(drain(m)) == [state(Status.CONNECTING, attempt=0)]

    def test_messages_sent_after_give_up_wait_for_next_confirm(self) -> None:
        """Messages sent after a give-up stay queued and are written after the next confirm."""
        m = make_machine()
        self._exhaust(m)
        late = entry("late")
        send(m, late)
        assert m.queued == 1
        gen = open_pending(m, T0 + 100)
        handshake(m, gen, T0 + 100)
        assert write(m, gen, T0 + 100) == [late]

    def test_stop_trying_keeps_the_queue(self) -> None:
        """stop_trying() while waiting to retry stops silently and keeps the queued messages."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        m.connect(T0)
        fail_attempt(m, T0)
        timeout = ConnectTimeout("not connected within 0.5 s")
        m.stop_trying(T0 + 0.5, timeout)
        assert drain(m) == []  # DISCONNECTED already: no transition to report
        assert m.state.status is Status.DISCONNECTED
        assert m.state.error == "not connected within 0.5 s"
        assert m.pending == {"a": a}
        assert a.state is EntryState.QUEUED
        assert not m.trying
        assert m.next_deadline() is None
        m.on_timer(T0 + 100)
        assert m.drain() == []

    def test_queue_kept_by_stop_trying_goes_out_after_connect(self) -> None:
        """Messages kept by stop_trying() are written after a later connect() confirms."""
        m = make_machine()
        a = entry("a")
        send(m, a)
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
        m.stop_trying(T0 + 1, ConnectTimeout("timed out"))
        assert drain(m) == [
            Abort(gen, "connect timed out"),
            Notify(state(Status.DISCONNECTED, error="timed out", attempt=0)),
        ]
        m.on_frame(gen, confirm(), T0 + 1)
        assert m.drain() == []

    def test_stop_trying_when_not_trying_is_noop(self) -> None:
        """stop_trying() on a confirmed connection changes nothing."""
        m = make_machine()
        confirmed(m)
        send(m, entry("a"))
        m.stop_trying(T0, ConnectTimeout("x"))
        assert m.drain() == []
        assert m.status is Status.CONFIRMED
        assert m.queued == 1


class TestHeartbeat:
    def test_first_ping_due_one_interval_after_confirm(self) -> None:
        """The first ping is due exactly heartbeat_interval after the confirm.

        Changed: the proof deadline (confirm + reset_after) is due first, so the timer runs
        then too; it queues nothing.
        """
        m = make_machine()
        gen = confirmed(m)
        assert m.next_deadline() == T0 + 10
        m.on_timer(T0 + 10)
        assert m.drain() == []
        assert m.next_deadline() == T0 + 30
        m.on_timer(T0 + 30 - EPS)
        assert m.drain() == []
        assert m.take_writes(gen, T0 + 30 - EPS) == ([], [])
        m.on_timer(T0 + 30)
        assert m.drain() == [Wake.WRITER]
        assert m.take_writes(gen, T0 + 30) == ([Control.PING], [])

    def test_pings_every_interval(self) -> None:
        """With pongs answered, pings are due at confirm + 30, 60, 90 s."""
        m = make_machine(backoff=Backoff(reset_after=0))  # no proof deadline in between
        gen = confirmed(m)
        due_times = []
        for _ in range(3):
            due = m.next_deadline()
            assert due is not None
            due_times.append(due)
            m.on_timer(due)
            assert m.take_writes(gen, due) == ([Control.PING], [])
            m.on_frame(gen, PONG, due)
            drain(m)
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
        drain(m)
        m.on_timer(T0 + 60 - EPS)
        assert m.drain() == []
        assert m.status is Status.CONFIRMED

    def test_dead_at_timeout_exactly(self) -> None:
        """With no pong, the connection is declared dead exactly at confirm + heartbeat_timeout."""
        m = make_machine()
        gen = confirmed(m)
        m.on_timer(T0 + 30)
        drain(m)
        m.on_timer(T0 + 60)
        assert drain(m) == [
            Abort(gen, "no pong for heartbeat_timeout=60 s"),
            retrying("1", 1, cause="no pong for heartbeat_timeout=60 s"),
            Notify(
                state(
                    Status.DISCONNECTED,
                    error="no pong for heartbeat_timeout=60 s",
                    conversation_id="conv-1",
                )
            ),
        ]
        assert m.next_deadline() == T0 + 61  # attempt 1 after delay(1)
        assert isinstance(m.last_failure, ConnectError)
        assert m.last_failure.phase == "heartbeat"

    def test_deadline_includes_dead_at(self) -> None:
        """While CONFIRMED, next_deadline() is the earlier of the next ping and the dead time."""
        m = make_machine(
            heartbeat_interval=30.0, heartbeat_timeout=20.0, backoff=Backoff(reset_after=0)
        )
        confirmed(m)
        assert m.next_deadline() == T0 + 20

    def test_pong_extends_deadline(self) -> None:
        """A pong at t moves the dead time to t + heartbeat_timeout."""
        m = make_machine()
        gen = confirmed(m)
        m.on_timer(T0 + 30)
        m.take_writes(gen, T0 + 30)
        drain(m)
        m.on_frame(gen, PONG, T0 + 45)
        assert m.drain() == [Wake.TIMER]
        assert m.dead_at == T0 + 105
        m.on_timer(T0 + 60)
        m.on_timer(T0 + 90)
        drain(m)
        m.on_timer(T0 + 105 - EPS)
        assert m.drain() == []
        assert m.status is Status.CONFIRMED
        m.on_timer(T0 + 105)
        assert kinds(drain(m)) == [Abort, Log, Notify]

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
        """A pong before the confirm changes no deadline and no rtt, and buffers nothing."""
        m = make_machine()
        gen = open_pending(m)
        m.on_frame(gen, PONG, T0 + 1)
        assert m.drain() == []
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
        """After a new confirm the ping, dead and proof times count from that confirm."""
        m = make_machine()
        confirmed(m)
        reconfirm(m, T0 + 200)
        assert m.next_ping_at == T0 + 230
        assert m.dead_at == T0 + 260
        assert m.proof_at == T0 + 210
        assert m.next_deadline() == T0 + 210

    def test_no_heartbeat_deadlines_after_loss(self) -> None:
        """After a loss no ping, dead or proof time is left, only the next attempt."""
        m = make_machine()
        gen = confirmed(m)
        m.on_timer(T0 + 30)
        lose(m, gen, T0 + 31)
        assert m.next_ping_at is None
        assert m.dead_at is None
        assert m.proof_at is None
        assert m.controls == []
        assert m.next_deadline() == T0 + 32


class TestServerPing:
    def test_ping_queues_pong(self) -> None:
        """A server ping while CONFIRMED owes a PONG and wakes the writer."""
        m = make_machine()
        gen = confirmed(m)
        m.on_frame(gen, PING, T0 + 1)
        assert m.drain() == [Wake.WRITER]
        assert m.has_writes()
        assert m.take_writes(gen, T0 + 1) == ([Control.PONG], [])

    def test_each_ping_owes_a_pong(self) -> None:
        """Two pings read before the writer runs owe two PONGs, written together."""
        m = make_machine()
        gen = confirmed(m)
        m.on_frame(gen, PING, T0 + 1)
        m.on_frame(gen, PING, T0 + 1)
        assert m.drain() == [Wake.WRITER]
        assert m.take_writes(gen, T0 + 1) == ([Control.PONG, Control.PONG], [])

    def test_ping_flood_owes_at_most_the_cap(self) -> None:
        """Any number of pings not yet answered owe at most MAX_PONGS_OWED PONGs (a ping flood
        cannot grow memory or one write), and only the first wakes the writer."""
        m = make_machine()
        gen = confirmed(m)
        m.on_frame(gen, PING, T0 + 1)
        assert m.drain() == [Wake.WRITER]
        for _ in range(1000):
            m.on_frame(gen, PING, T0 + 2)
        assert m.drain() == []
        assert m.controls == [Control.PONG] * MAX_PONGS_OWED
        assert m.take_writes(gen, T0 + 2) == ([Control.PONG] * MAX_PONGS_OWED, [])
        assert m.controls == []

    def test_controls_before_messages(self) -> None:
        """A PING and a PONG are written before any message of the same batch.

        Changed: owed controls are a set written in a fixed order (CONNECT, PING, PONG).
        """
        m = make_machine()
        gen = confirmed(m)
        a = entry("a")
        send(m, a)
        m.on_frame(gen, PING, T0 + 30)
        m.on_timer(T0 + 30)
        assert m.take_writes(gen, T0 + 30) == ([Control.PING, Control.PONG], [a])

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
        send(m, *sent)
        assert (m.queued, m.in_flight) == (4, 0)
        gen = confirmed(m)
        assert m.has_writes()
        assert write(m, gen, T0) == sent
        assert (m.queued, m.in_flight) == (0, 4)
        assert all(e.state is EntryState.WRITTEN for e in sent)

    def test_send_while_confirmed_goes_after_queue(self) -> None:
        """A message sent while CONFIRMED wakes the writer and is written after older ones."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        send(m, a)
        gen = confirmed(m)
        assert m.send(b, T0) is False
        assert m.drain() == [Wake.WRITER]
        assert write(m, gen, T0) == [a, b]

    def test_take_respects_limit(self) -> None:
        """The writer takes at most ``limit`` messages, oldest first."""
        m = make_machine()
        sent = [entry(f"m{i}") for i in range(5)]
        send(m, *sent)
        gen = confirmed(m)
        assert write(m, gen, T0, limit=2) == sent[:2]
        assert write(m, gen, T0, limit=2) == sent[2:4]
        assert write(m, gen, T0, limit=2) == sent[4:]
        assert not m.has_writes()

    def test_taken_then_written_states(self) -> None:
        """take_writes marks messages TAKEN (in flight); written() marks them WRITTEN."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        _, entries = m.take_writes(gen, T0)
        assert entries == [a]
        assert a.state is EntryState.TAKEN
        assert m.ledger.writer is entries
        assert (m.queued, m.in_flight) == (0, 1)
        m.written(gen, entries, entries)
        assert m.drain() == [Wake.READER]  # answers will follow
        assert a.state is EntryState.WRITTEN
        assert a.written
        assert m.ledger.writer is None
        assert (m.queued, m.in_flight, m.sent) == (0, 1, 1)

    def test_first_write_order_across_three_reconnects(self) -> None:
        """Across three lost connections the first write of every message follows send order."""
        m = make_machine()
        send_order: list[str] = []
        first_writes: list[str] = []
        counter = iter(range(100))

        def send_some(n: int) -> None:
            for _ in range(n):
                e = entry(f"m{next(counter)}")
                send(m, e)
                send_order.append(e.message_id)

        def write_some(gen: int, now: float, limit: int) -> list[Entry]:
            written = write(m, gen, now, limit)
            for e in written:
                if e.message_id not in first_writes:
                    first_writes.append(e.message_id)
            return written

        send_some(3)
        now = T0
        gen = confirmed(m, now)
        for _ in range(3):
            written = write_some(gen, now, 2)  # some written, some still queued
            send_some(2)
            answer(m, gen, now, written[0])  # one answered
            lose(m, gen, now)
            send_some(2)  # sent while disconnected
            now += 1
            gen = reopen(m, now)
        for _ in range(20):
            answer(m, gen, now, *write_some(gen, now, 256))
        assert not m.pending
        assert first_writes == send_order
        assert m.reconnects == 3


class TestResend:
    def test_unanswered_rewritten_first_after_reconfirm(self) -> None:
        """Written-but-unanswered messages are written again first, in order, then the queue.

        Changed: after a loss they are suspects (see TestPoisonIsolation), so they go one at
        a time, each once the one before is answered; the queue then goes out in one batch.
        """
        m = make_machine()
        a, b, c, d = entry("a"), entry("b"), entry("c"), entry("d")
        send(m, a, b)
        gen = confirmed(m)
        write(m, gen, T0)
        send(m, c, d)  # queued behind a and b, not written yet
        lose(m, gen, T0 + 1)
        assert (m.queued, m.in_flight) == (4, 0)
        assert all(e.state is EntryState.QUEUED for e in (a, b, c, d))
        gen = reopen(m, T0 + 2)
        assert write(m, gen, T0 + 2) == [a]
        answer(m, gen, T0 + 2, a)
        assert write(m, gen, T0 + 2) == [b]
        answer(m, gen, T0 + 2, b)
        assert write(m, gen, T0 + 2) == [c, d]

    def test_unanswered_rewritten_in_one_batch_after_reconnect_call(self) -> None:
        """After reconnect() (which blames nothing) the unanswered go first in one batch."""
        m = make_machine()
        a, b, c = entry("a"), entry("b"), entry("c")
        send(m, a, b)
        gen = confirmed(m)
        write(m, gen, T0)
        send(m, c)
        gen = reconfirm(m, T0 + 2)
        rewritten = write(m, gen, T0 + 2)
        assert rewritten == [a, b, c]
        assert [e.text for e in rewritten[:2]] == [a.text, b.text]

    def test_answered_not_resent(self) -> None:
        """A message answered before the loss is not written again."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        send(m, a, b)
        gen = confirmed(m)
        write(m, gen, T0)
        answer(m, gen, T0, a)
        lose(m, gen, T0)
        gen = reconfirm(m, T0 + 5)
        assert write(m, gen, T0 + 5) == [b]

    def test_taken_when_lost_is_requeued(self) -> None:
        """Messages the writer had taken when the connection dropped are queued again."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0)
        lose(m, gen, T0)
        assert a.state is EntryState.QUEUED
        assert (m.queued, m.in_flight) == (1, 0)
        assert a.deliveries == 0  # its write had not reported: not blamed yet
        m.written(gen, taken, taken)  # the writer finishes on the old connection
        assert m.drain() == [CountDeliveries(("a",))]  # it was on the wire: blamed now
        assert (a.state, a.deliveries) == (EntryState.QUEUED, 1)
        assert (m.queued, m.in_flight, m.sent) == (1, 0, 1)
        gen = reconfirm(m, T0 + 5)
        assert write(m, gen, T0 + 5) == [a]

    def test_sent_counts_every_write(self) -> None:
        """stats().sent counts a message again when it is rewritten after a reconnect."""
        m = make_machine()
        send(m, entry("a"))
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
        send(m, a)
        gen = confirmed(m)
        write(m, gen, T0)
        gen = reconfirm(m, T0 + 1)
        assert write(m, gen, T0 + 1) == [a]


class TestCancelWithdrawTimeOut:
    def test_withdraw_while_queued_forgets(self) -> None:
        """Withdrawing a queued message (a cancel) removes and forgets it; it is never written."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        send(m, a, b)
        assert m.withdraw("a", a.future) is a
        assert drain(m) == [Forget(("a",))]
        assert list(m.pending) == ["b"]
        assert a.state is EntryState.DONE
        assert m.queued == 1
        gen = confirmed(m)
        assert write(m, gen, T0) == [b]

    def test_withdraw_while_taken_is_refused(self) -> None:
        """A message a writer has taken can no longer be withdrawn: it is being written.

        Changed: a cancel while TAKEN used to forget the message at once and have the writer
        skip it; now the write goes ahead and cancel() returns False.
        """
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0)
        assert m.withdraw("a", a.future) is None
        assert m.drain() == []
        assert a.state is EntryState.TAKEN
        assert (m.queued, m.in_flight) == (0, 1)
        m.written(gen, taken, taken)
        assert a.state is EntryState.WRITTEN

    def test_withdraw_after_write_does_nothing(self) -> None:
        """Withdrawing a written message does nothing: it stays in flight."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        write(m, gen, T0)
        assert m.withdraw("a", a.future) is None
        assert m.drain() == []
        assert m.pending == {"a": a}
        assert m.in_flight == 1

    def test_cancel_through_the_future(self) -> None:
        """future.cancel() withdraws a queued message; once written, cancel() is refused."""
        m = make_machine()
        owner = Owner(m)
        a = Entry("a", "text-a", MessageFuture("a", owner))
        b = Entry("b", "text-b", MessageFuture("b", owner))
        send(m, a, b)
        assert a.future.cancel()
        assert owner.actions == [Forget(("a",))]
        gen = confirmed(m)
        assert write(m, gen, T0) == [b]
        b.future.mark_running()
        assert not b.future.cancel()
        assert m.pending == {"b": b}

    def test_cancel_again_spares_later_message_with_same_id(self) -> None:
        """Cancelling an old cancelled future again leaves a later message with its id alone."""
        m = make_machine()
        owner = Owner(m)
        old = Entry("k", "text-a", MessageFuture("k", owner))
        send(m, old)
        assert old.future.cancel()
        new = Entry("k", "text-b", MessageFuture("k", owner))
        send(m, new)
        assert old.future.cancel()  # True again: concurrent.futures says so
        assert m.withdraw("k", old.future) is None  # the engine's call, if it came
        assert m.pending == {"k": new}
        assert new.state is EntryState.QUEUED

    def test_withdraw_unknown_does_nothing(self) -> None:
        """Withdrawing an id that is not pending does nothing."""
        m = make_machine()
        assert m.withdraw("nope") is None
        assert m.drain() == []

    def test_withdraw_queued(self) -> None:
        """withdraw() without a future removes a queued message and returns it."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        send(m, a, b)
        gen = confirmed(m)
        assert m.withdraw("a") is a
        assert a.state is EntryState.DONE
        assert m.queued == 1
        assert write(m, gen, T0) == [b]

    def test_withdraw_taken_or_written_returns_none(self) -> None:
        """withdraw() refuses a taken or written message."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        send(m, a, b)
        gen = confirmed(m)
        write(m, gen, T0, limit=1)
        m.take_writes(gen, T0)
        assert m.withdraw("a") is None
        assert m.withdraw("b") is None
        assert m.withdraw("zzz") is None
        assert (m.queued, m.in_flight) == (0, 2)

    def test_withdraw_requeued_written_message_refused(self) -> None:
        """A written message queued again after a loss cannot be withdrawn (cancel fails).

        Changed: it used to be withdrawable; once a message was written, cancel() fails, and
        a waiter that gives up uses time_out() instead (next test).
        """
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        write(m, gen, T0)
        lose(m, gen, T0)
        assert a.state is EntryState.QUEUED
        assert m.withdraw("a", a.future) is None
        assert m.pending == {"a": a}

    def test_time_out_requeued_message(self) -> None:
        """A written message queued again after a loss that times out is never written again."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        write(m, gen, T0)
        lose(m, gen, T0)
        assert m.time_out("a", lambda: ResponseTimeout("late")) is a
        drain(m)
        gen = reconfirm(m, T0 + 5)
        assert write(m, gen, T0 + 5) == []

    def test_time_out_written(self) -> None:
        """time_out() stops tracking a written message, fails it and forgets it, in one step."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        write(m, gen, T0)

        def error() -> ResponseTimeout:
            return ResponseTimeout("no response to message a within 1 s")

        assert m.time_out("a", error) is a
        assert drain(m) == [Fail((a,), error), Forget(("a",))]
        assert a.state is EntryState.DONE
        assert (m.queued, m.in_flight) == (0, 0)
        gen = reconfirm(m, T0 + 5)
        assert write(m, gen, T0 + 5) == []

    def test_time_out_queued(self) -> None:
        """time_out() of a queued message takes it out of the queue; a second one finds nothing."""
        m = make_machine()
        send(m, entry("a"))
        assert m.time_out("a", lambda: ResponseTimeout("x")) is not None
        assert m.queued == 0
        drain(m)
        assert m.time_out("a", lambda: ResponseTimeout("x")) is None
        assert m.drain() == []

    def test_time_out_taken_then_written(self) -> None:
        """A message timed out while taken is not marked written when the writer finishes."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0)
        m.time_out("a", lambda: ResponseTimeout("x"))
        drain(m)
        m.written(gen, taken, taken)
        assert m.drain() == [Wake.READER]  # answers will follow
        assert a.state is EntryState.DONE
        assert m.ledger.writer is None
        assert (m.queued, m.in_flight, m.sent) == (0, 0, 1)

    def test_withdraw_last_wakes_waiters(self) -> None:
        """Withdrawing the last pending message wakes flush() waiters."""
        m = make_machine()
        send(m, entry("a"))
        m.withdraw("a")
        assert Wake.WAITERS in m.drain()


class TestResponses:
    def test_response_resolves_and_forgets(self) -> None:
        """A response resolves its message, forgets it, calls on_response and wakes waiters.

        Changed: ``Resolve`` and ``Forget`` now come before ``OnResponse``.
        """
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        write(m, gen, T0)
        r = response("a")
        m.on_frame(gen, r, T0 + 1)
        actions = m.drain()
        assert Wake.WAITERS in actions
        assert [x for x in actions if not isinstance(x, Wake)] == [
            Resolve(a, r),
            Forget(("a",)),
            OnResponse(r),
        ]
        assert a.state is EntryState.DONE
        assert m.pending == {}
        assert (m.in_flight, m.received) == (0, 1)

    def test_responses_in_any_order(self) -> None:
        """Responses resolve the message with their id, whatever the order."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        send(m, a, b)
        gen = confirmed(m)
        write(m, gen, T0)
        rb, ra = response("b"), response("a")
        m.on_frame(gen, rb, T0)
        assert Resolve(b, rb) in drain(m)
        m.on_frame(gen, ra, T0)
        assert Resolve(a, ra) in drain(m)

    def test_unknown_id_only_on_response(self) -> None:
        """A response for an unknown id only calls on_response and is counted."""
        m = make_machine()
        gen = confirmed(m)
        r = response("who")
        m.on_frame(gen, r, T0)
        assert drain(m) == [OnResponse(r)]
        assert m.received == 1

    def test_duplicate_response(self) -> None:
        """A second response for the same id only calls on_response."""
        m = make_machine()
        send(m, entry("a"))
        gen = confirmed(m)
        write(m, gen, T0)
        answer(m, gen, T0, m.pending["a"])
        r2 = response("a", "again")
        m.on_frame(gen, r2, T0)
        assert drain(m) == [OnResponse(r2)]
        assert (m.received, m.in_flight, m.queued) == (2, 0, 0)

    def test_response_for_queued_message(self) -> None:
        """A response for a message queued again (not yet rewritten) resolves it and dequeues it."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        write(m, gen, T0)
        lose(m, gen, T0)
        gen = reconfirm(m, T0 + 5)
        r = response("a")
        m.on_frame(gen, r, T0 + 5)
        assert drain(m) == [Resolve(a, r), Forget(("a",)), OnResponse(r)]
        assert (m.queued, m.in_flight) == (0, 0)
        assert write(m, gen, T0 + 5) == []

    def test_response_while_taken(self) -> None:
        """A response for a taken message resolves it; the writer's report changes nothing."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0)
        answer(m, gen, T0, a)
        m.written(gen, taken, taken)
        assert m.drain() == [Wake.READER]  # answers will follow
        assert a.state is EntryState.DONE
        assert (m.queued, m.in_flight) == (0, 0)

    def test_no_forget_when_not_durable(self) -> None:
        """Without a durable outbox a response buffers no Forget."""
        m = make_machine(durable=False)
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        write(m, gen, T0)
        r = response("a")
        m.on_frame(gen, r, T0)
        assert drain(m) == [Resolve(a, r), OnResponse(r)]


class TestErrors:
    def test_error_without_id_only_on_error(self) -> None:
        """An error frame without messageId calls on_error and nothing else."""
        m = make_machine()
        send(m, entry("a"))
        gen = confirmed(m)
        write(m, gen, T0)
        m.on_frame(gen, error_frame("busy"), T0)
        actions = drain(m)
        assert kinds(actions) == [OnError]
        err = actions[0].error  # type: ignore[union-attr]
        assert (err.error, err.timestamp, err.message_id) == ("busy", TS, None)
        assert m.status is Status.CONFIRMED
        assert m.in_flight == 1

    def test_error_with_known_id_fails_that_message_only(self) -> None:
        """An error naming a message fails only it with ServerError and forgets it."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        send(m, a, b)
        gen = confirmed(m)
        write(m, gen, T0)
        m.on_frame(gen, error_frame("bad content", "a"), T0)
        actions = drain(m)
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
        m.on_frame(gen, error_frame("?", "ghost"), T0)
        actions = drain(m)
        assert kinds(actions) == [OnError]
        assert actions[0].error.message_id == "ghost"  # type: ignore[union-attr]

    def test_error_for_queued_message(self) -> None:
        """An error naming a still-queued message fails it, and it is never written."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        send(m, a, b)
        gen = confirmed(m)
        m.on_frame(gen, error_frame("no", "b"), T0)
        assert kinds(drain(m)) == [OnError, Fail, Forget]
        assert m.queued == 1
        assert write(m, gen, T0) == [a]

    def test_error_after_response_only_on_error(self) -> None:
        """An error for a message already answered fails nothing."""
        m = make_machine()
        send(m, entry("a"))
        gen = confirmed(m)
        write(m, gen, T0)
        answer(m, gen, T0, m.pending["a"])
        m.on_frame(gen, error_frame("late", "a"), T0)
        assert kinds(drain(m)) == [OnError]


class TestClose:
    def test_close_fails_pending_with_client_closed_and_keeps_outbox(self) -> None:
        """close() ends CLOSED and fails every pending future with ClientClosed, forgetting
        nothing in the outbox; the ledger lets them go at forget_all() (after the engine
        carried the failure out, so an interrupted close() can ask again)."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        send(m, a, b)
        gen = confirmed(m)
        write(m, gen, T0, limit=1)
        m.close()
        actions = drain(m)
        assert kinds(actions) == [Abort, Notify, Fail]
        assert actions[0] == Abort(gen, "client closed")
        fail = actions[2]
        assert isinstance(fail, Fail)
        assert fail.entries == (a, b)
        assert not fail.final  # they stay in a durable outbox
        assert type(fail.error()) is ClientClosed
        assert notified(actions) == [state(Status.CLOSED, conversation_id="conv-1")]
        m.close()  # again (an interrupted close): the failure is asked for again
        assert kinds(drain(m)) == [Fail]
        m.forget_all()
        assert m.pending == {}
        assert (m.queued, m.in_flight) == (0, 0)

    def test_close_without_connection_no_abort(self) -> None:
        """close() while DISCONNECTED and idle only notifies CLOSED."""
        m = make_machine()
        m.close()
        assert drain(m) == [Notify(state(Status.CLOSED))]
        assert m.closed

    def test_close_while_connecting_aborts_open(self) -> None:
        """close() during CONNECTING aborts the open in flight; its late success is refused."""
        m = make_machine()
        m.connect(T0)
        gen = start_attempt(m, T0)
        m.close()
        assert drain(m) == [Abort(gen, "client closed"), Notify(state(Status.CLOSED))]
        assert m.on_open_succeeded(gen, T0 + 1) is False
        assert m.drain() == []
        assert m.status is Status.CLOSED

    def test_close_is_idempotent(self) -> None:
        """A second close() does nothing."""
        m = make_machine()
        m.close()
        m.drain()
        m.close()
        assert m.drain() == []

    def test_closed_is_terminal(self) -> None:
        """After close() no call starts anything again and nothing is due."""
        m = make_machine()
        gen = confirmed(m)
        m.close()
        m.drain()
        m.connect(T0)
        m.reconnect(T0)
        m.stop_trying(T0, ConnectTimeout("x"))
        m.on_timer(T0 + 1000)
        m.on_frame(gen, PING, T0)
        m.on_connection_lost(gen, ConnectError("connection reset"), T0)
        assert m.drain() == []
        assert m.next_deadline() is None
        assert not m.trying
        assert m.take_writes(gen, T0) == ([], [])
        assert m.status is Status.CLOSED

    def test_close_during_backoff_stops_attempts(self) -> None:
        """close() while waiting to retry cancels the retry."""
        m = make_machine()
        m.connect(T0)
        fail_attempt(m, T0)
        m.close()
        m.drain()
        m.on_timer(T0 + 100)
        assert m.drain() == []

    def test_writer_finishing_after_close(self) -> None:
        """The writer reporting a batch taken before close() changes no counter below zero."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0)
        m.close()
        drain(m)
        m.forget_all()
        assert m.ledger.writer is None
        m.not_written(gen, taken, taken, None, T0)
        assert m.drain() == []
        assert (m.queued, m.in_flight) == (0, 0)
        assert a.state is EntryState.DONE


class TestStaleGenerations:
    def _two_connections(self) -> tuple[Machine, int, int, Entry]:
        """A message written on a first connection, then a second confirmed one."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        old = confirmed(m)
        write(m, old, T0)
        new = reconfirm(m, T0 + 1)
        return m, old, new, a

    def test_response_from_old_generation_ignored(self) -> None:
        """A response read on an old connection is ignored entirely."""
        m, old, _, a = self._two_connections()
        m.on_frame(old, response("a"), T0 + 2)
        assert m.drain() == []
        assert m.pending == {"a": a}
        assert m.received == 0

    def test_error_from_old_generation_ignored(self) -> None:
        """An error frame read on an old connection is ignored, on_error included."""
        m, old, _, _ = self._two_connections()
        m.on_frame(old, error_frame("x", "a"), T0 + 2)
        assert m.drain() == []

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
        assert not m.proven

    def test_ping_from_old_generation_ignored(self) -> None:
        """A ping on an old connection owes no PONG."""
        m, old, new, _ = self._two_connections()
        m.take_writes(new, T0 + 1)
        m.on_frame(old, PING, T0 + 2)
        assert not m.controls

    def test_open_results_of_old_generation(self) -> None:
        """An old attempt's open success is refused and its failure ignored."""
        m = make_machine()
        m.connect(T0)
        first = start_attempt(m, T0)
        m.reconnect(T0)
        current = start_attempt(m, T0)
        m.on_open_failed(first, ConnectError("x"), T0)
        assert m.drain() == []
        assert m.on_open_succeeded(first, T0) is False
        assert m.drain() == []
        assert m.status is Status.CONNECTING
        assert m.generation == current

    def test_confirm_on_old_generation_ignored(self) -> None:
        """A confirm read on an aborted attempt's socket confirms nothing."""
        m = make_machine()
        old = open_pending(m)
        m.reconnect(T0)
        drain(m)
        m.on_frame(old, confirm(), T0)
        assert m.drain() == []
        assert m.status is Status.DISCONNECTED

    def test_written_of_old_generation(self) -> None:
        """The writer finishing on an old connection does not mark messages written."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        old = confirmed(m)
        _, taken = m.take_writes(old, T0)
        new = reconfirm(m, T0 + 1)
        m.written(old, taken, taken)
        assert drain(m) == []
        assert a.state is EntryState.QUEUED
        assert write(m, new, T0 + 1) == [a]

    def test_take_writes_of_old_generation_gives_nothing(self) -> None:
        """The writer asking for an old connection gets nothing."""
        m, old, _, _ = self._two_connections()
        send(m, entry("b"))
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
        """rate_limit=2: two messages at once, then none until their second has passed.

        Changed: the sliding window allows no more than 2 in any one-second window (the old
        token bucket let one more out every 0.5 s, about twice the rate in the first second).
        """
        m = make_machine(rate_limit=2.0)
        sent = [entry(f"m{i}") for i in range(5)]
        send(m, *sent)
        gen = confirmed(m)
        assert write(m, gen, T0) == sent[:2]
        assert write(m, gen, T0) == []
        assert m.next_write_at(T0) == T0 + 1
        assert write(m, gen, T0 + 0.5) == []
        assert write(m, gen, T0 + 1) == sent[2:4]
        assert m.next_write_at(T0 + 1) == T0 + 2
        assert write(m, gen, T0 + 2) == sent[4:]
        assert m.next_write_at(T0 + 2) is None

    def test_controls_not_limited(self) -> None:
        """A PING and a PONG are handed out even when the window is full."""
        m = make_machine(rate_limit=1.0)
        send(m, *(entry(f"m{i}") for i in range(3)))
        gen = confirmed(m)
        write(m, gen, T0 + 29)
        m.on_timer(T0 + 30)
        controls, entries = m.take_writes(gen, T0 + 30)
        assert controls == [Control.PING]
        assert len(entries) == 1  # the write at T0 + 29 left the window
        m.written(gen, entries, entries)
        m.on_frame(gen, PING, T0 + 30)
        assert m.take_writes(gen, T0 + 30) == ([Control.PONG], [])

    def test_withdrawn_messages_use_no_slot(self) -> None:
        """Messages withdrawn after being queued for the writer do not use the window."""
        m = make_machine(rate_limit=2.0)
        sent = [entry(f"m{i}") for i in range(4)]
        send(m, *sent)
        gen = confirmed(m)
        m.withdraw("m0")
        m.withdraw("m1")
        assert write(m, gen, T0) == sent[2:]

    def test_no_next_write_without_limit_or_queue(self) -> None:
        """next_write_at() is None without a limit, without a queue, or when not CONFIRMED."""
        assert make_machine().next_write_at(T0) is None
        m = make_machine(rate_limit=2.0)
        send(m, entry("a"))
        assert m.next_write_at(T0) is None  # not confirmed
        gen = confirmed(m)
        assert m.next_write_at(T0) == T0
        write(m, gen, T0)
        assert m.next_write_at(T0) is None

    def test_has_writes_ignores_rate(self) -> None:
        """has_writes() is True with a message queued even when the window is full."""
        m = make_machine(rate_limit=1.0)
        send(m, entry("a"), entry("b"))
        gen = confirmed(m)
        write(m, gen, T0)
        assert m.has_writes()
        assert m.next_write_at(T0) == T0 + 1.0

    def test_slow_rate_allows_one(self) -> None:
        """A rate below one message per second allows one message at once, then one per 1/rate s."""
        m = make_machine(rate_limit=0.5)
        send(m, entry("m0"), entry("m1"))
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
        send(m, entry("a"), entry("b"))
        assert (m.stats().queued, m.stats().in_flight) == (2, 0)
        gen = confirmed(m)
        write(m, gen, T0, limit=1)
        s = m.stats()
        assert (s.queued, s.in_flight, s.sent) == (1, 1, 1)
        answer(m, gen, T0, m.pending["a"])
        s = m.stats()
        assert (s.queued, s.in_flight, s.sent, s.received) == (1, 0, 1, 1)

    def test_reconnects_count_reconfirms_only(self) -> None:
        """reconnects counts confirms after the first, not attempts or failures."""
        m = make_machine()
        gen = confirmed(m)
        assert m.stats().reconnects == 0
        lose(m, gen, T0)
        fail_attempt(m, T0 + 1)
        reopen(m, T0 + 3)
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
        send(m, entry("a"))
        assert before.queued == 0
        assert m.stats().queued == 1


class TestWakes:
    def test_state_change_wakes_all_four_once(self) -> None:
        """A transition wakes the waiters, the timer, the writer and a parked reader, right
        after its Notify."""
        m = make_machine()
        m.connect(T0)
        m.drain()
        m.on_timer(T0)
        assert m.drain() == [
            Notify(state(Status.CONNECTING)),
            Wake.WAITERS,
            Wake.TIMER,
            Wake.WRITER,
            Wake.READER,
            Open(1, 10.0),
        ]

    def test_wakes_deduplicated_per_drain(self) -> None:
        """A thread is woken at most once per drain, and again after the next drain."""
        m = make_machine()
        confirmed(m)
        m.send(entry("a"), T0)
        m.send(entry("b"), T0)
        assert m.drain() == [Wake.WRITER]
        m.writable()  # the writer looked
        m.send(entry("c"), T0)
        assert m.drain() == [Wake.WRITER]

    def test_sends_wake_the_writer_once_until_it_looks(self) -> None:
        """Sends after a wake do not wake the writer again until it has looked (writable())."""
        m = make_machine()
        confirmed(m)
        m.send(entry("a"), T0)
        m.send(entry("b"), T0)
        assert m.drain() == [Wake.WRITER]
        m.send(entry("c"), T0)
        assert m.drain() == []  # woken already, not looked yet
        assert m.writable()
        m.send(entry("d"), T0)
        assert m.drain() == [Wake.WRITER]

    def test_a_writer_that_found_nothing_is_woken_by_the_next_send(self) -> None:
        """The writer looked and found nothing to write (the message was withdrawn): the next
        send wakes it, so no message waits for a writer asleep."""
        m = make_machine()
        confirmed(m)
        m.send(entry("a"), T0)
        assert m.drain() == [Wake.WRITER]
        assert m.withdraw("a") is not None
        m.drain()
        assert m.writable()  # the withdrawn entry is skipped when taken
        assert m.take_writes(m.generation, T0) == ([], [])
        assert not m.writable()
        m.send(entry("b"), T0)
        assert m.drain() == [Wake.WRITER]

    def test_drain_empties_the_buffer(self) -> None:
        """drain() returns each action once: a second drain is empty."""
        m = make_machine()
        m.connect(T0)
        assert m.drain() == [Wake.TIMER]
        assert m.drain() == []

    def test_send_while_disconnected_wakes_nobody(self) -> None:
        """A message queued while not CONFIRMED wakes no thread."""
        m = make_machine()
        assert m.send(entry("a"), T0) is False
        assert m.drain() == []

    def test_send_while_writer_busy_wakes_nobody(self) -> None:
        """A message sent while a write is in progress wakes nobody; the report wakes the writer."""
        m = make_machine()
        send(m, entry("a"))
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0)
        m.send(entry("b"), T0)
        assert m.drain() == []
        m.written(gen, taken, taken)
        assert m.drain() == [Wake.READER, Wake.WRITER]

    def test_answer_in_serial_mode_wakes_writer(self) -> None:
        """While suspects are pending, each answer wakes the writer: the next one may go."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        send(m, a, b)
        gen = confirmed(m)
        write(m, gen, T0)
        lose(m, gen, T0)
        gen = reopen(m, T0 + 1)
        assert write(m, gen, T0 + 1) == [a]
        m.on_frame(gen, response("a"), T0 + 1)
        assert Wake.WRITER in m.drain()


class TestInline:
    def test_inline_when_idle(self) -> None:
        """send(inline=True) on an idle confirmed connection hands the write to the caller."""
        m = make_machine()
        gen = confirmed(m)
        a = entry("a")
        assert m.send(a, T0, inline=True) is True
        assert m.drain() == []  # nobody else to wake: the caller writes
        assert a.state is EntryState.TAKEN
        assert m.ledger.writer is a
        assert (m.queued, m.in_flight) == (0, 1)
        assert not m.writable()
        m.written(gen, a, [a])
        assert a.state is EntryState.WRITTEN
        assert m.ledger.writer is None
        assert m.sent == 1

    def test_inline_refused_when_not_confirmed(self) -> None:
        """send(inline=True) before the confirm queues the message."""
        m = make_machine()
        open_pending(m)
        a = entry("a")
        assert m.send(a, T0, inline=True) is False
        assert a.state is EntryState.QUEUED
        assert m.ledger.writer is None

    def test_inline_refused_behind_the_queue(self) -> None:
        """A message never overtakes one queued before it: it is queued and the writer woken."""
        m = make_machine()
        a, b = entry("a"), entry("b")
        send(m, a)
        gen = confirmed(m)
        assert m.send(b, T0, inline=True) is False
        assert m.drain() == [Wake.WRITER]
        assert write(m, gen, T0) == [a, b]

    def test_inline_refused_while_in_flight(self) -> None:
        """With messages in flight the writer batches instead: inline is refused."""
        m = make_machine()
        send(m, entry("a"))
        gen = confirmed(m)
        write(m, gen, T0)
        assert m.send(entry("b"), T0, inline=True) is False

    def test_inline_refused_while_writer_busy(self) -> None:
        """While the writer holds the turn to write, inline is refused."""
        m = make_machine()
        send(m, entry("a"))
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0)
        b = entry("b")
        assert m.send(b, T0, inline=True) is False
        assert m.ledger.writer is taken
        assert b.state is EntryState.QUEUED

    def test_inline_refused_while_controls_owed(self) -> None:
        """A PONG owed goes first: inline is refused and the writer takes both."""
        m = make_machine()
        gen = confirmed(m)
        m.on_frame(gen, PING, T0)
        a = entry("a")
        assert m.send(a, T0, inline=True) is False
        assert m.take_writes(gen, T0) == ([Control.PONG], [a])

    def test_inline_refused_for_a_suspect(self) -> None:
        """A message with deliveries already (from a durable outbox) never goes inline."""
        m = make_machine()
        confirmed(m)
        a = entry("a", deliveries=1)
        assert m.send(a, T0, inline=True) is False
        assert m.ledger.suspects == 1

    def test_inline_refused_when_window_full(self) -> None:
        """Inline respects the rate window; the refused message waits for the next slot."""
        m = make_machine(rate_limit=1.0)
        gen = confirmed(m)
        a, b = entry("a"), entry("b")
        assert m.send(a, T0, inline=True)
        m.written(gen, a, [a])
        answer(m, gen, T0, a)
        assert m.send(b, T0 + 0.5, inline=True) is False
        assert m.next_write_at(T0 + 0.5) == T0 + 1

    def test_inline_not_written_goes_back_first(self) -> None:
        """A message the caller could not write goes back first in line, before later ones."""
        m = make_machine()
        gen = confirmed(m)
        a, b = entry("a"), entry("b")
        assert m.send(a, T0, inline=True)
        assert m.send(b, T0) is False
        drain(m)
        m.not_written(gen, a, [a], None, T0)
        assert m.drain() == [Wake.WRITER]
        assert m.ledger.writer is None
        assert a.state is EntryState.QUEUED
        assert (m.queued, m.in_flight) == (2, 0)
        assert write(m, gen, T0) == [a, b]

    def test_inline_write_lost_blames_nothing(self) -> None:
        """A failed inline write loses the connection; the message is queued again, not blamed."""
        m = make_machine()
        gen = confirmed(m)
        a = entry("a")
        assert m.send(a, T0, inline=True)
        m.not_written(gen, a, [a], ConnectError("connection lost while writing"), T0)
        actions = drain(m)
        assert kinds(actions) == [Abort, Log, Notify]
        assert a.state is EntryState.QUEUED
        assert a.deliveries == 0
        assert m.ledger.writer is None

    def test_stale_report_keeps_the_new_writers_turn(self) -> None:
        """An inline write reporting after a reconnect does not take the new writer's turn."""
        m = make_machine()
        old = confirmed(m)
        a = entry("a")
        assert m.send(a, T0, inline=True)
        new = reconfirm(m, T0 + 1)
        _, taken = m.take_writes(new, T0 + 1)
        assert taken == [a]
        m.not_written(old, a, [a], None, T0 + 1)
        assert m.ledger.writer is taken
        assert a.state is EntryState.TAKEN
        m.written(old, a, [a])
        assert m.ledger.writer is taken
        assert a.state is EntryState.TAKEN

    def test_unsend_takes_back_an_unused_turn(self) -> None:
        """A send() interrupted before writing gives the turn back and withdraws its message."""
        m = make_machine()
        gen = confirmed(m)
        a = entry("a")
        assert m.send(a, T0, inline=True)
        m.not_written(gen, a, [a], None, T0)  # what the engine's _unsend does
        assert m.withdraw("a", a.future) is a
        assert m.ledger.writer is None
        assert m.pending == {}


class Server:
    """The connector, the writer and a server that drops the connection whenever a culprit
    arrives; it answers every other message at once, in the order written."""

    def __init__(self, m: Machine, culprits: set[str], limit: int = 256) -> None:
        self.m = m
        self.culprits = culprits
        self.limit = limit
        self.now = T0
        self.gen = 0
        self.writes: Counter[str] = Counter()
        # (suspects pending, messages in flight, ids taken) for every batch the writer took
        self.batches: list[tuple[int, int, list[str]]] = []
        self.outcomes: dict[str, object] = {}
        self.actions: list[Action] = []

    def collect(self) -> None:
        for action in drain(self.m):
            self.actions.append(action)
            if type(action) is Resolve:
                self.outcomes[action.entry.message_id] = "answered"
            elif type(action) is Fail:
                for e in action.entries:
                    self.outcomes[e.message_id] = action.error()

    def step(self) -> None:
        m = self.m
        if m.status is Status.DISCONNECTED:
            due = m.next_deadline()
            assert due is not None, "the machine gave up"
            self.now = max(self.now, due)
            m.on_timer(self.now)
            self.collect()
            self.gen = m.generation
            assert m.on_open_succeeded(self.gen, self.now)
            m.take_writes(self.gen, self.now)
            m.written(self.gen, [], [])
            m.on_frame(self.gen, confirm(), self.now)
            self.collect()
            return
        assert m.status is Status.CONFIRMED
        suspects, in_flight = m.ledger.suspects, m.in_flight
        _, batch = m.take_writes(self.gen, self.now, self.limit)
        assert batch, "nothing to write while messages are pending"
        self.batches.append((suspects, in_flight, ids(batch)))
        m.written(self.gen, batch, batch)
        self.collect()
        for e in batch:
            self.writes[e.message_id] += 1
            if e.message_id in self.culprits:
                error = ConnectError("connection closed by the server")
                m.on_connection_lost(self.gen, error, self.now, close_code=1011)
                break
            m.on_frame(self.gen, response(e.message_id), self.now)
        self.collect()
        self.now += 0.01

    def run(self, *entries: Entry, steps: int = 200) -> None:
        send(self.m, *entries, now=self.now)
        self.m.connect(self.now)
        self.collect()
        for _ in range(steps):
            if not self.m.pending:
                return
            self.step()


class TestPoisonIsolation:
    def test_culprit_fails_alone_among_thirty(self) -> None:
        """A message that kills the connection fails after exactly 3 writes; its 29 neighbours
        are answered, one at a time while suspects are pending, pipelined again afterwards."""
        m = make_machine()
        msgs = [entry(f"m{i:02d}") for i in range(30)]
        server = Server(m, {"m14"}, limit=10)
        server.run(*msgs)
        assert not m.pending
        assert m.status is Status.CONFIRMED
        assert isinstance(server.outcomes["m14"], DeliveryError)
        assert server.writes["m14"] == 3
        others = [e.message_id for e in msgs if e.message_id != "m14"]
        assert all(server.outcomes[mid] == "answered" for mid in others)
        assert all(1 <= server.writes[mid] <= 2 for mid in others)
        for suspects, in_flight, taken in server.batches:
            if suspects:
                assert (in_flight, len(taken)) == (0, 1), server.batches
        assert server.batches[-1] == (0, 0, [f"m{i}" for i in range(20, 30)])

    def test_culprit_isolated_with_few_attempts(self) -> None:
        """A culprit is isolated even when max_attempts is below max_deliveries."""
        m = make_machine(backoff=Backoff(max_attempts=2))
        server = Server(m, {"m0"})
        server.run(*(entry(f"m{i}") for i in range(6)))
        assert isinstance(server.outcomes["m0"], DeliveryError)
        assert all(server.outcomes[f"m{i}"] == "answered" for i in range(1, 6))

    def test_serial_while_suspects_pending(self) -> None:
        """After a loss, the unanswered go one at a time, each after the one before is answered."""
        m = make_machine()
        a, b, c = entry("a"), entry("b"), entry("c")
        send(m, a, b)
        gen = confirmed(m)
        write(m, gen, T0)
        lose(m, gen, T0)
        assert (a.deliveries, b.deliveries, m.ledger.suspects) == (1, 1, 2)
        gen = reopen(m, T0 + 1)
        send(m, c, now=T0 + 1)
        assert write(m, gen, T0 + 1) == [a]
        assert write(m, gen, T0 + 1) == []  # a is in flight
        assert not m.writable()
        answer(m, gen, T0 + 1, a)
        assert write(m, gen, T0 + 1) == [b]
        answer(m, gen, T0 + 1, b)
        assert m.ledger.suspects == 0
        d = entry("d")
        send(m, d, now=T0 + 1)
        assert write(m, gen, T0 + 1) == [c, d]  # pipelining again

    def test_poisoned_message_actions(self) -> None:
        """The poisoned message is logged by id (never its text), failed for good and forgotten."""
        m = make_machine(max_deliveries=1)
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        write(m, gen, T0)
        actions = lose(m, gen, T0)
        text = (
            "message a was written on 1 connections, each lost before it was answered "
            "(max_deliveries=1): given up as a poison message"
        )
        assert actions[1:4] == [
            Log(WARNING, f"{text}; it will not be sent again"),
            Fail((a,), actions[2].error),  # type: ignore[union-attr]
            Forget(("a",)),
        ]
        fail = actions[2]
        assert isinstance(fail, Fail) and fail.final
        error = fail.error()
        assert type(error) is DeliveryError
        assert str(error) == text
        assert a.text not in str(actions)
        assert m.pending == {}
        assert CountDeliveries not in kinds(actions)

    def test_max_deliveries_one_fails_every_written_message(self) -> None:
        """max_deliveries=1 cannot tell a culprit from its neighbours: all written ones fail."""
        m = make_machine(max_deliveries=1)
        a, b, c = entry("a"), entry("b"), entry("c")
        send(m, a, b, c)
        gen = confirmed(m)
        write(m, gen, T0, limit=2)
        actions = lose(m, gen, T0)
        assert [f.entries for f in actions if type(f) is Fail] == [(a,), (b,)]
        assert m.pending == {"c": c}

    def test_none_never_fails(self) -> None:
        """max_deliveries=None: the culprit is written again and again and never fails (and no
        delivery is counted: nothing is written one at a time)."""
        m = make_machine(max_deliveries=None, backoff=Backoff(max_attempts=None))
        server = Server(m, {"x"})
        server.run(entry("a"), entry("x"), entry("b"), steps=60)
        assert server.writes["x"] >= 20
        assert m.pending["x"].deliveries == 0
        assert server.outcomes["a"] == "answered"
        assert "x" not in server.outcomes
        assert not any(type(a) is Fail for a in server.actions)

    def test_reconnect_does_not_count_deliveries(self) -> None:
        """reconnect() queues written messages again without counting a delivery."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        write(m, gen, T0)
        m.reconnect(T0)
        assert CountDeliveries not in kinds(drain(m))
        assert (a.deliveries, m.ledger.suspects) == (0, 0)

    def test_close_does_not_count_deliveries(self) -> None:
        """close() with messages in flight counts no delivery."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        write(m, gen, T0)
        m.close()
        assert CountDeliveries not in kinds(drain(m))
        assert a.deliveries == 0

    def test_count_deliveries_when_durable(self) -> None:
        """A loss counts one delivery for each message written, not for taken or queued ones."""
        m = make_machine()
        a, b, c = entry("a"), entry("b"), entry("c")
        send(m, a, b, c)
        gen = confirmed(m)
        write(m, gen, T0, limit=1)
        m.take_writes(gen, T0, 1)  # b taken, not written
        actions = lose(m, gen, T0)
        assert kinds(actions) == [Abort, CountDeliveries, Log, Notify]
        assert actions[1] == CountDeliveries(("a",))
        assert (a.deliveries, b.deliveries, c.deliveries) == (1, 0, 0)

    def test_a_write_that_reports_after_the_loss_counts_and_can_poison(self) -> None:
        """A write whose connection was lost before it reported counts the loss for its
        messages when it reports: counted in the outbox, or failed at max_deliveries."""
        m = make_machine(max_deliveries=3)
        a, b = entry("a", deliveries=2), entry("b")
        send(m, a, b)
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0, 256)
        assert taken == [a]  # a suspect: written alone
        lose(m, gen, T0)
        m.written(gen, taken, taken)
        actions = drain(m)
        assert kinds(actions) == [Log, Fail, Forget]
        assert isinstance(actions[1], Fail) and actions[1].entries == (a,)
        assert "a" not in m.pending
        reconfirm(m, T0 + 1)
        assert ids(write(m, m.generation, T0 + 1)) == ["b"]

    def test_a_late_write_counts_in_the_durable_outbox(self) -> None:
        """Below max_deliveries, the late count is a CountDeliveries for the outbox."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0, 256)
        lose(m, gen, T0)
        m.written(gen, taken, taken)
        assert drain(m) == [CountDeliveries(("a",))]
        assert a.deliveries == 1

    def test_no_outbox_actions_when_not_durable(self) -> None:
        """Without a durable outbox neither CountDeliveries nor Forget is buffered."""
        m = make_machine(durable=False, max_deliveries=2)
        a, b = entry("a"), entry("b")
        send(m, a, b)
        gen = confirmed(m)
        write(m, gen, T0)
        seen = lose(m, gen, T0)
        gen = reopen(m, T0 + 1)
        seen += [*drain(m)]
        write(m, gen, T0 + 1)
        seen += lose(m, gen, T0 + 1)
        assert type(next(f for f in seen if type(f) is Fail).error()) is DeliveryError
        assert CountDeliveries not in kinds(seen)
        assert Forget not in kinds(seen)

    def test_outbox_deliveries_carry_over(self) -> None:
        """A message restored with 2 deliveries is a suspect at once and fails on its next loss."""
        m = make_machine()
        a, b = entry("a", deliveries=2), entry("b")
        send(m, a, b)
        assert m.ledger.suspects == 1
        gen = confirmed(m)
        assert write(m, gen, T0) == [a]
        actions = lose(m, gen, T0)
        fail = next(f for f in actions if type(f) is Fail)
        assert type(fail.error()) is DeliveryError
        assert m.pending == {"b": b}
        assert m.ledger.suspects == 0

    def test_failed_write_blames_nothing(self) -> None:
        """A write that failed with the connection is not counted: it may not have arrived."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        _, taken = m.take_writes(gen, T0)
        m.not_written(gen, taken, taken, ConnectError("connection lost while writing"), T0)
        actions = drain(m)
        assert CountDeliveries not in kinds(actions)
        assert a.deliveries == 0
        assert a.state is EntryState.QUEUED

    def test_heartbeat_death_counts_deliveries(self) -> None:
        """A connection declared dead (no pong) blames the messages written on it."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        write(m, gen, T0)
        m.on_timer(T0 + 60)
        assert CountDeliveries(("a",)) in drain(m)
        assert a.deliveries == 1

    def test_time_out_of_a_suspect_ends_serial_mode(self) -> None:
        """A suspect that times out leaves the ledger: the others are pipelined again."""
        m = make_machine()
        a, b, c = entry("a"), entry("b"), entry("c")
        send(m, a)
        gen = confirmed(m)
        write(m, gen, T0)
        lose(m, gen, T0)
        send(m, b, c)
        m.time_out("a", lambda: ResponseTimeout("x"))
        drain(m)
        assert m.ledger.suspects == 0
        gen = reopen(m, T0 + 1)
        assert write(m, gen, T0 + 1) == [b, c]


class TestProvenConnections:
    def test_confirm_then_close_gives_up(self) -> None:
        """A server that confirms then closes gets attempts 1..5 after 1, 2, 4, 8, 16 s, then a
        give-up: DISCONNECTED with its close code."""
        m = make_machine()
        m.connect(T0)
        now = T0
        attempts: list[int] = []
        delays: list[float] = []
        for _ in trying(m):
            due = m.next_deadline()
            assert due is not None
            if now > T0:
                delays.append(due - now)
            now = due
            gen = reopen(m, now)
            attempts.append(m.attempt)
            now += 1.0  # confirmed for a second, then closed: not proven (reset_after=10)
            actions = lose(m, gen, now, close_code=4001)
        assert attempts == [0, 1, 2, 3, 4, 5]
        assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]
        assert notified(actions) == [
            state(
                Status.DISCONNECTED,
                error="gave up after 5 attempts: connection reset",
                attempt=5,
                conversation_id="conv-1",
                close_code=4001,
            )
        ]
        assert logs(actions) == [(ERROR, "gave up after 5 attempts: connection reset")]
        assert m.giveups == 1

    def test_confirm_alone_keeps_the_count(self) -> None:
        """A confirm does not reset the attempt count: its loss counts as that attempt failing."""
        m = make_machine()
        m.connect(T0)
        fail_attempt(m, T0)
        fail_attempt(m, T0 + 1)
        gen = reopen(m, T0 + 3)  # attempt 2 confirms
        assert (m.attempt, m.proven, m.state.attempt) == (2, False, 0)
        actions = lose(m, gen, T0 + 4)
        assert logs(actions) == [
            (WARNING, "attempt 2 failed: connection reset; retrying in 4 s (attempt 3 of 5)")
        ]
        assert notified(actions)[0].attempt == 2
        assert m.next_deadline() == T0 + 8

    def test_pong_proves(self) -> None:
        """A pong proves the connection: the count starts again."""
        m = make_machine()
        m.connect(T0)
        fail_attempt(m, T0)
        gen = reopen(m, T0 + 1)
        assert m.attempt == 1
        m.on_frame(gen, PONG, T0 + 2)
        assert (m.attempt, m.proven) == (0, True)
        lose(m, gen, T0 + 3)
        assert m.next_deadline() == T0 + 4  # delay(1)

    def test_response_proves(self) -> None:
        """A response proves the connection: the count starts again."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        m.connect(T0)
        fail_attempt(m, T0)
        gen = reopen(m, T0 + 1)
        write(m, gen, T0 + 1)
        answer(m, gen, T0 + 2, a)
        assert (m.attempt, m.proven) == (0, True)

    def test_reset_after_proves(self) -> None:
        """reset_after seconds CONFIRMED prove the connection, exactly then and not before."""
        m = make_machine(backoff=Backoff(reset_after=5.0))
        m.connect(T0)
        fail_attempt(m, T0)
        reopen(m, T0 + 1)
        assert m.next_deadline() == T0 + 6
        m.on_timer(T0 + 6 - EPS)
        assert (m.attempt, m.proven) == (1, False)
        m.on_timer(T0 + 6)
        assert (m.attempt, m.proven) == (0, True)
        assert m.proof_at is None
        assert m.next_deadline() == T0 + 31  # the first ping

    def test_reset_after_zero_proves_at_once(self) -> None:
        """reset_after=0: the confirm itself proves the connection."""
        m = make_machine(backoff=Backoff(reset_after=0))
        m.connect(T0)
        fail_attempt(m, T0)
        reopen(m, T0 + 1)
        assert (m.attempt, m.proven, m.proof_at) == (0, True, None)

    def test_reconnect_starts_a_fresh_count(self) -> None:
        """reconnect() starts a fresh budget even from an unproven connection."""
        m = make_machine()
        m.connect(T0)
        fail_attempt(m, T0)
        reopen(m, T0 + 1)
        m.reconnect(T0 + 2)
        drain(m)
        assert m.attempt == 0
        m.on_timer(T0 + 2)
        assert notified(drain(m))[0].attempt == 0

    def test_loss_after_reset_after_proves_without_timer(self) -> None:
        """A connection lost after reset_after seconds CONFIRMED is proven, late timer or not."""
        m = make_machine()
        m.connect(T0)
        fail_attempt(m, T0)
        fail_attempt(m, T0 + 1)
        gen = reopen(m, T0 + 3)  # attempt 2 confirms
        lose(m, gen, T0 + 20)  # CONFIRMED for 17 s; the timer thread had not run yet
        assert m.next_deadline() == T0 + 21  # delay(1): the count started again


class TestCloseCode:
    def test_close_code_in_disconnected_state(self) -> None:
        """The close code of the connection that just ended is in the DISCONNECTED state."""
        m = make_machine()
        gen = confirmed(m)
        actions = lose(m, gen, T0 + 1, close_code=1001)
        assert notified(actions)[0].close_code == 1001
        assert m.state.close_code == 1001

    def test_close_code_while_pending(self) -> None:
        """A close during the handshake reports its code too."""
        m = make_machine()
        gen = open_pending(m)
        actions = lose(m, gen, T0 + 1, close_code=1008)
        assert notified(actions) == [
            state(Status.DISCONNECTED, error="connection reset", close_code=1008)
        ]

    def test_close_code_gone_with_next_attempt(self) -> None:
        """The next state (CONNECTING) carries no close code: it belongs to the ended connection."""
        m = make_machine()
        gen = confirmed(m)
        lose(m, gen, T0 + 1, close_code=1001)
        m.on_timer(T0 + 2)
        assert notified(drain(m))[0].close_code is None

    def test_no_close_code_without_close_frame(self) -> None:
        """A failed open or a loss without a close frame reports no close code."""
        m = make_machine()
        m.connect(T0)
        assert notified(fail_attempt(m, T0))[0].close_code is None
        gen = reopen(m, T0 + 1)
        assert notified(lose(m, gen, T0 + 2))[0].close_code is None

    def test_close_code_on_give_up(self) -> None:
        """When a lost connection makes the policy give up, the close code is in that state."""
        m = make_machine(backoff=Backoff(max_attempts=0))
        gen = confirmed(m)
        lose(m, gen, T0 + 1, close_code=4003)
        assert m.state.close_code == 4003
        assert not m.trying


class TestLogs:
    def test_one_warning_per_failed_attempt(self) -> None:
        """Each failed attempt logs one WARNING with its cause and the next delay; the give-up an
        ERROR."""
        m = make_machine()
        m.connect(T0)
        seen = fail_attempt(m, T0)
        for _ in trying(m):
            due = m.next_deadline()
            assert due is not None
            seen += fail_attempt(m, due)
        assert logs(seen) == [
            (WARNING, "connection refused; retrying in 1 s (attempt 1 of 5)"),
            (WARNING, "attempt 1 failed: connection refused; retrying in 2 s (attempt 2 of 5)"),
            (WARNING, "attempt 2 failed: connection refused; retrying in 4 s (attempt 3 of 5)"),
            (WARNING, "attempt 3 failed: connection refused; retrying in 8 s (attempt 4 of 5)"),
            (WARNING, "attempt 4 failed: connection refused; retrying in 16 s (attempt 5 of 5)"),
            (ERROR, "gave up after 5 attempts: connection refused"),
        ]

    def test_give_up_error_counts_failed_messages(self) -> None:
        """The give-up ERROR says how many unanswered messages failed."""
        m = make_machine(backoff=Backoff(max_attempts=0))
        send(m, entry("a"), entry("b"))
        m.connect(T0)
        assert logs(fail_attempt(m, T0)) == [
            (ERROR, "could not connect: connection refused (2 unanswered messages failed)")
        ]

    def test_gave_up_after_one_attempt(self) -> None:
        """One attempt is named in the singular."""
        m = make_machine(backoff=Backoff(max_attempts=1))
        m.connect(T0)
        fail_attempt(m, T0)
        assert logs(fail_attempt(m, T0 + 1)) == [
            (ERROR, "gave up after 1 attempt: connection refused")
        ]

    def test_unbounded_policy_names_no_limit(self) -> None:
        """With max_attempts=None the WARNING names the attempt without 'of N'."""
        m = make_machine(backoff=Backoff(max_attempts=None, initial=0.25))
        m.connect(T0)
        assert logs(fail_attempt(m, T0)) == [
            (WARNING, "connection refused; retrying in 0.25 s (attempt 1)")
        ]

    def test_lost_proven_connection_warns(self) -> None:
        """A proven connection lost logs its cause (no attempt number) and the first delay."""
        m = make_machine()
        gen = confirmed(m)
        prove(m, gen, T0)
        assert logs(lose(m, gen, T0 + 1)) == [
            (WARNING, "connection reset; retrying in 1 s (attempt 1 of 5)")
        ]

    def test_give_up_names_a_cause_without_message(self) -> None:
        """A cause without a message is named by its type when giving up, as when retrying."""
        m = make_machine()
        m.connect(T0)
        gen = start_attempt(m, T0)
        m.on_open_failed(gen, ConnectError(""), T0, retryable=False)
        assert logs(drain(m)) == [(ERROR, "could not connect: ConnectError")]
        assert m.state.error == "could not connect: ConnectError"

    def test_user_calls_log_nothing(self) -> None:
        """connect(), reconnect(), stop_trying() and close() log nothing themselves."""
        m = make_machine()
        seen: list[Action] = []
        m.connect(T0)
        seen += drain(m)
        gen = start_attempt(m, T0)
        m.reconnect(T0)
        seen += drain(m)
        gen = start_attempt(m, T0)
        m.stop_trying(T0, ConnectTimeout("timed out"))
        seen += drain(m)
        m.close()
        seen += drain(m)
        assert logs(seen) == []
        assert gen == m.generation - 2


class TestNetworkText:
    def test_printable_unchanged(self) -> None:
        """Printable text, non-ASCII included, comes back as it is."""
        assert network_text("café ✓ ok") == "café ✓ ok"

    def test_control_characters_escaped(self) -> None:
        """Newlines, escape sequences and DEL are escaped, so no log line can be forged."""
        assert network_text("a\nb\x1b[2Jc\x7f") == "a\\x0ab\\x1b[2Jc\\x7f"

    def test_unicode_separators_escaped(self) -> None:
        """Non-printable code points beyond Latin-1 are escaped with \\u or \\U."""
        assert network_text("a\u2028b\U000e0001") == "a\\u2028b\\U000e0001"

    def test_lone_surrogate_escaped(self) -> None:
        """A lone surrogate (from surrogateescape'd bytes) is escaped: the text can be encoded."""
        text = network_text("bad\udcff")
        assert text == "bad\\udcff"
        text.encode("utf-8")

    def test_cut_to_200_with_ellipsis(self) -> None:
        """Text longer than 200 characters is cut to 200, the last one an ellipsis."""
        text = network_text("x" * 300)
        assert len(text) == 200
        assert text == "x" * 199 + "…"

    def test_200_exactly_not_cut(self) -> None:
        """Text of exactly 200 characters is left whole."""
        assert network_text("y" * 200) == "y" * 200

    def test_cut_after_escaping(self) -> None:
        """The limit applies to the escaped text: escapes cannot push it past 200."""
        text = network_text("\n" * 100)
        assert len(text) == 200
        assert text.endswith("…")

    def test_custom_limit(self) -> None:
        """The limit can be given."""
        assert network_text("abcdef", limit=4) == "abc…"

    def test_handshake_refusal_text_escaped_and_cut(self) -> None:
        """A refusal's text reaches state.error and the log escaped and cut to 200 characters."""
        m = make_machine()
        gen = open_pending(m)
        m.on_frame(gen, error_frame("\x1b[2J" + "z" * 500), T0)
        actions = drain(m)
        prefix = "server refused the handshake: "
        error = m.state.error or ""
        assert error.startswith(prefix + "\\x1b[2J")
        assert len(error) == len(prefix) + 200
        assert "\x1b" not in error
        assert all("\x1b" not in text for _, text in logs(actions))


class TestInternalError:
    def test_internal_error_drops_the_connection(self) -> None:
        """A wsync thread's bug gives up the turn to write and loses the connection."""
        m = make_machine()
        a = entry("a")
        send(m, a)
        gen = confirmed(m)
        m.take_writes(gen, T0)
        m.on_internal_error(RuntimeError("bug"), T0)
        actions = drain(m)
        assert kinds(actions) == [Abort, Log, Notify]
        assert m.ledger.writer is None
        assert m.status is Status.DISCONNECTED
        assert a.state is EntryState.QUEUED
        assert m.trying

    def test_internal_error_without_connection(self) -> None:
        """Without a connection an internal error only clears the turn to write."""
        m = make_machine()
        m.on_internal_error(RuntimeError("bug"), T0)
        assert m.drain() == []
        assert m.ledger.writer is None
        assert m.status is Status.DISCONNECTED
