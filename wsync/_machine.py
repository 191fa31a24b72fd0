"""The connection logic of a client, with no I/O: events and ``now`` in, actions out.

Its one job: the protocol's lifecycle (CONNECTING, PENDING, CONFIRMED, DISCONNECTED,
CLOSED), the handshake, the heartbeat deadlines and the reconnection policy, over the
:class:`~wsync._ledger.Ledger` of messages. It must not own a thread, socket, lock or
clock, nor touch a future or call user code: the engine feeds it events under its lock,
then drains the actions it buffered (:meth:`Machine.drain`) and carries them out, as
websockets' ``Protocol`` is driven through ``receive_data()`` / ``events_received()``.

After calling any event method (``connect``, ``send``, ``on_frame``, ``on_timer``, ...)
the caller must call :meth:`Machine.drain` and carry out every action it returns, in
order; :meth:`Machine.next_deadline` then says when :meth:`Machine.on_timer` is due.
Every timing rule is therefore testable exactly and instantly with a fake clock
(tests/unit/test_machine.py).

On every confirm the ledger starts again from the oldest unanswered message, so messages
written but unanswered on a lost connection are written again first, in their original
order, then the rest: the first arrival of each message at the server follows send()
order across any number of reconnects.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable
from typing import Final

import attrs

from wsync import protocol
from wsync._backoff import Backoff
from wsync._errors import (
    ClientClosed,
    ConnectError,
    DeliveryError,
    HandshakeError,
    ServerError,
    network_text,
)
from wsync._ledger import WRITE_BATCH, Entry, EntryState, Ledger
from wsync._values import ConnectionState, Stats, Status

__all__ = [
    "Abort",
    "Action",
    "Control",
    "CountDeliveries",
    "Fail",
    "Forget",
    "Log",
    "Machine",
    "Notify",
    "OnError",
    "OnResponse",
    "Open",
    "Resolve",
    "Wake",
]


class Control(enum.Enum):
    """Control frames the writer sends before any message; at most one of each is owed."""

    CONNECT = "connect"
    PING = "ping"
    PONG = "pong"

    # Members are singletons: hash by identity, in C (Enum's own __hash__ is Python code,
    # run for every set lookup on the per-message paths).
    __hash__ = object.__hash__


class Wake(enum.Enum):
    """A thread to wake."""

    WRITER = "writer"  # something to write
    TIMER = "timer"  # the next deadline moved
    WAITERS = "waiters"  # connect()/flush() waiters: the state or the ledger changed
    # Something was written that the server answers (or the state changed): a reader that
    # parked to lend the socket to a caller reads again at once, unless a caller reads.
    READER = "reader"

    __hash__ = object.__hash__  # as Control's


# --- actions: what the engine must do -----------------------------------------------------
# Mutable slotted classes: created on the hot path (a response makes two), so no frozen
# __setattr__ detour. Nobody changes them after creation.


class _Action:
    """Equality and repr, field by field, for every action class below.

    attrs would generate both for each class when wsync is imported (about 0.3 ms apiece,
    3 ms of ``import wsync`` for ten classes); only tests and logs use them, so one shared
    pair serves them all.
    """

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]  # equal by value, so not hashable

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(
            getattr(self, f.name) == getattr(other, f.name) for f in attrs.fields(type(self))  # type: ignore[arg-type]
        )

    def __repr__(self) -> str:
        names = [f.name for f in attrs.fields(type(self))]  # type: ignore[arg-type]
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__name__}({fields})"



@attrs.define(eq=False, repr=False)
class Open(_Action):
    """Open a new connection (the timer thread does it), bounded by ``timeout``."""

    generation: int
    timeout: float


@attrs.define(eq=False, repr=False)
class Abort(_Action):
    """Tear down the connection (or cancel the open in flight) of ``generation``."""

    generation: int
    reason: str


@attrs.define(eq=False, repr=False)
class Notify(_Action):
    """Call ``on_state_change(state)``."""

    state: ConnectionState


@attrs.define(eq=False, repr=False)
class Resolve(_Action):
    """Set ``entry.future``'s result."""

    entry: Entry
    response: protocol.Response


@attrs.define(eq=False, repr=False)
class Fail(_Action):
    """Fail every entry's future with a fresh exception from ``error``.

    ``final``: the messages will never be sent (they leave a durable outbox first);
    otherwise (``close()``) they stay in a durable outbox for the next client.
    """

    entries: tuple[Entry, ...]
    error: Callable[[], BaseException]
    final: bool = True


@attrs.define(eq=False, repr=False)
class OnResponse(_Action):
    """Call ``on_response(response)``."""

    response: protocol.Response


@attrs.define(eq=False, repr=False)
class OnError(_Action):
    """Call ``on_error(error)``."""

    error: ServerError


@attrs.define(eq=False, repr=False)
class Forget(_Action):
    """Remove these messages from the durable outbox (they are answered or failed)."""

    message_ids: tuple[str, ...]


@attrs.define(eq=False, repr=False)
class CountDeliveries(_Action):
    """Add one delivery to these messages in the durable outbox (see the ledger)."""

    message_ids: tuple[str, ...]


@attrs.define(eq=False, repr=False)
class Log(_Action):
    """Log ``message`` at ``level`` (never content: ids, counts and redacted causes only)."""

    level: int
    message: str


Action = (
    Open | Abort | Notify | Resolve | Fail | OnResponse | OnError | Forget | CountDeliveries
    | Log | Wake
)

_CONTROL_ORDER: Final = (Control.CONNECT, Control.PING, Control.PONG)
# Pongs owed to server pings the writer has not answered yet, at most: each ping gets its
# pong, unless the server pings faster than it reads (then the excess is answered once).
MAX_PONGS_OWED: Final = 16
_RESPONSE: Final = protocol.Response  # looked up once per incoming frame
# Enum members as plain names, for the per-message paths: on Python < 3.12 ``Wake.WRITER``
# costs a class attribute lookup through the enum machinery (about 90 ns).
_CONFIRMED: Final = Status.CONFIRMED
_WAKE_WRITER: Final = Wake.WRITER
_WAKE_TIMER: Final = Wake.TIMER
_WAKE_WAITERS: Final = Wake.WAITERS


def _with_cause(exc: BaseException, cause: BaseException | None) -> BaseException:
    exc.__cause__ = cause
    return exc


def _factory(cls: Callable[[str], BaseException], text: str) -> Callable[[], BaseException]:
    """A maker of fresh exceptions: each future gets its own (tracebacks are per raise)."""
    return lambda: cls(text)


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


class Machine:
    """The client's connection logic. Not thread-safe: the engine calls it under its lock.

    Args:
        client_id: this client's id (already validated).
        heartbeat_interval: seconds between pings while CONFIRMED.
        heartbeat_timeout: no pong for this long means the connection is dead.
        backoff: the reconnection policy.
        connect_timeout: bound on one attempt, from its start to the confirm.
        rate_limit: at most this many messages written in any one-second window, or None.
        max_deliveries: see :class:`~wsync._ledger.Ledger`; None: no limit.
        durable: the outbox is on disk: emit ``Forget`` and ``CountDeliveries``.
        rand: randomness for the backoff jitter.
        now: the current monotonic time.
    """

    def __init__(
        self,
        *,
        client_id: str,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        backoff: Backoff,
        connect_timeout: float,
        rate_limit: float | None = None,
        max_deliveries: int | None = 3,
        durable: bool = False,
        rand: Callable[[], float] = random.random,
        now: float = 0.0,
    ) -> None:
        self.client_id = client_id
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.durable = durable
        self._rand = rand
        self.ledger = Ledger(rate_limit=rate_limit, max_deliveries=max_deliveries)

        self.status = Status.DISCONNECTED
        self.state = ConnectionState(status=Status.DISCONNECTED, client_id=client_id)
        self.generation = 0  # the connection that counts; events of older ones are ignored
        self._conn_open = False  # the connection of `generation` exists (open or opening)

        # Reconnection policy.
        self.trying = False  # attempts are being made (until confirm, give-up or stop)
        self.attempt = 0  # number of the attempt in flight or scheduled next
        self.next_attempt_at: float | None = None
        self.attempt_deadline: float | None = None
        self.last_failure: BaseException | None = None
        self.giveups = 0  # how many times the policy gave up (for connect() waiters)
        self.give_up_error: BaseException | None = None
        self.confirms = 0
        # A confirmed connection proves itself (a response, a pong, or reset_after seconds
        # CONFIRMED) before the attempt count starts again.
        self.proven = False
        self.proof_at: float | None = None

        # Heartbeat.
        self.next_ping_at: float | None = None
        self.dead_at: float | None = None
        self._ping_sent_at: float | None = None
        self.last_rtt: float | None = None

        # Control frames owed: how many of each (one connect, one ping; a pong per server
        # ping, up to MAX_PONGS_OWED: a flood of pings cannot grow one write without bound).
        self._owed: dict[Control, int] = {}
        self.reconnects = 0
        self.malformed = 0

        self._actions: list[Action] = []
        self._woken: set[Wake] = set()
        # A send() woke the writer, which has not looked (writable()) since: later sends
        # need not wake it again (under a stream of sends, most would otherwise).
        self._writer_woken = False

    # --- the action buffer ----------------------------------------------------------------

    def drain(self) -> list[Action]:
        """The actions buffered since the last call, in order; the buffer is emptied.

        The caller must carry out every one of them, in order.
        """
        actions = self._actions
        if actions:
            self._actions = []
            self._woken.clear()
        return actions

    def _wake(self, target: Wake) -> None:
        if target not in self._woken:
            self._woken.add(target)
            self._actions.append(target)

    # --- queries ------------------------------------------------------------------------

    @property
    def expecting(self) -> bool:
        """Whether an answer is awaited on the connection: messages in flight or queued, or
        a ping's pong."""
        ledger = self.ledger
        return bool(ledger.in_flight or ledger.queued or self._ping_sent_at is not None)

    @property
    def closed(self) -> bool:
        return self.status is Status.CLOSED

    @property
    def pending(self) -> dict[str, Entry]:
        """Every unanswered message, in send() order (the ledger's; do not change it)."""
        return self.ledger.pending

    @property
    def queued(self) -> int:
        return self.ledger.queued

    @property
    def in_flight(self) -> int:
        return self.ledger.in_flight

    @property
    def sent(self) -> int:
        return self.ledger.sent

    @property
    def received(self) -> int:
        return self.ledger.received

    @property
    def controls(self) -> list[Control]:
        """The control frames owed, in the order they are written."""
        owed = self._owed
        return [c for c in _CONTROL_ORDER for _ in range(owed.get(c, 0))]

    def stats(self) -> Stats:
        ledger = self.ledger
        return Stats(
            sent=ledger.sent,
            received=ledger.received,
            queued=ledger.queued,
            in_flight=ledger.in_flight,
            reconnects=self.reconnects,
            malformed=self.malformed,
            last_rtt=self.last_rtt,
        )

    def is_current(self, generation: int) -> bool:
        """Whether events of the connection of ``generation`` still count."""
        return generation == self.generation and self._conn_open

    def next_deadline(self) -> float | None:
        """The earliest time at which ``on_timer`` has something to do, or None."""
        status = self.status
        if status is Status.CONFIRMED:
            candidates = [
                t for t in (self.next_ping_at, self.dead_at, self.proof_at) if t is not None
            ]
            return min(candidates) if candidates else None
        if status is Status.PENDING:
            return self.attempt_deadline
        if status is Status.DISCONNECTED and self.trying:
            return self.next_attempt_at
        return None

    def has_writes(self) -> bool:
        """Whether a writer has anything to write now (ignoring the rate limit)."""
        if self._owed and self._conn_open:
            return True
        return self.status is _CONFIRMED and self.ledger.can_take()

    def writable(self) -> bool:
        """Whether the writer thread may take a write now: something to write, nobody writing.

        The writer thread's question before it writes or waits: a send() from now on wakes
        it again.
        """
        self._writer_woken = False
        return self.ledger.writer is None and self.has_writes()

    def next_write_at(self, now: float) -> float | None:
        """When the rate limit allows the next message, if one waits for it."""
        if self.status is not _CONFIRMED:
            return None
        return self.ledger.next_write_at(now)

    # --- state changes --------------------------------------------------------------------

    def _set_state(
        self,
        status: Status,
        *,
        error: str | None = None,
        attempt: int = 0,
        close_code: int | None = None,
    ) -> None:
        self.status = status
        self.state = ConnectionState(
            status=status,
            client_id=self.client_id,
            conversation_id=self.state.conversation_id,
            error=error,
            attempt=attempt,
            close_code=close_code,
        )
        self._actions.append(Notify(self.state))
        self._wake(Wake.WAITERS)
        self._wake(Wake.TIMER)
        self._wake(Wake.WRITER)
        self._wake(Wake.READER)

    def _drop_connection(self, reason: str, *, blame: bool = False) -> None:
        """Forget the connection of ``generation``: its messages are queued again."""
        if self._conn_open:
            self._actions.append(Abort(self.generation, reason))
            self._conn_open = False
        counted = [
            e.message_id for e in self.ledger.pending.values() if e.state is EntryState.WRITTEN
        ] if blame and self.durable else []
        poisoned = self.ledger.stop(blame=blame)
        self._owed.clear()
        self.next_ping_at = self.dead_at = self._ping_sent_at = self.proof_at = None
        self.attempt_deadline = None
        self.proven = False
        if poisoned:
            self._poisoned(poisoned)
            gone = {e.message_id for e in poisoned}
            counted = [mid for mid in counted if mid not in gone]
        if counted:
            self._actions.append(CountDeliveries(tuple(counted)))

    def _poisoned(self, entries: list[Entry]) -> None:
        limit = self.ledger.max_deliveries
        for entry in entries:
            self.ledger.finish(entry)
            mid = entry.message_id
            text = (
                f"message {mid} was written on {limit} connections, each lost before it was "
                f"answered (max_deliveries={limit}): given up as a poison message"
            )
            self._actions.append(
                Log(logging.WARNING, f"{text}; it will not be sent again")
            )
            self._actions.append(Fail((entry,), _factory(DeliveryError, text)))
        self._forget(tuple(e.message_id for e in entries))
        self._drained()

    def _forget(self, message_ids: tuple[str, ...]) -> None:
        if self.durable and message_ids:
            self._actions.append(Forget(message_ids))

    def _drained(self) -> None:
        if not self.ledger.pending:
            self._wake(Wake.WAITERS)

    def _schedule_next_attempt(
        self,
        failed_attempt: int,
        error: BaseException,
        now: float,
        *,
        retryable: bool = True,
        close_code: int | None = None,
    ) -> None:
        """After attempt ``failed_attempt`` failed (0: a proven connection was lost)."""
        self.last_failure = error
        text = str(error) or type(error).__name__
        if not retryable or self.backoff.gives_up_after(failed_attempt):
            self._give_up(failed_attempt, error, close_code=close_code)
            return
        self.attempt = failed_attempt + 1
        delay = self.backoff.delay(self.attempt, self._rand)
        self.next_attempt_at = now + delay
        limit = self.backoff.max_attempts
        of = "" if limit is None else f" of {limit}"
        # A lost connection's error says so itself ("connection lost: ...", "no pong ...").
        what = text if failed_attempt == 0 else f"attempt {failed_attempt} failed: {text}"
        self._actions.append(
            Log(logging.WARNING, f"{what}; retrying in {delay:.3g} s (attempt {self.attempt}{of})")
        )
        self._set_state(
            Status.DISCONNECTED, error=text, attempt=failed_attempt, close_code=close_code
        )

    def _give_up(
        self, failed_attempt: int, error: BaseException, *, close_code: int | None = None
    ) -> None:
        self.trying = False
        self.next_attempt_at = None
        self.giveups += 1
        cls = HandshakeError if isinstance(error, HandshakeError) else ConnectError
        phase = getattr(error, "phase", None)
        cause = str(error) or type(error).__name__
        if failed_attempt == 0:
            text = f"could not connect: {cause}"
        else:
            text = f"gave up after {_attempts(failed_attempt)}: {cause}"
        self.give_up_error = _with_cause(cls(text, phase=phase), error)
        entries = self.ledger.clear()
        if entries:
            self._actions.append(
                Fail(entries, lambda: _with_cause(cls(text, phase=phase), error), final=True)
            )
            self._forget(tuple(e.message_id for e in entries))
            text_failed = f"{text} ({len(entries)} unanswered messages failed)"
        else:
            text_failed = text
        self._actions.append(Log(logging.ERROR, text_failed))
        self._set_state(
            Status.DISCONNECTED, error=text, attempt=failed_attempt, close_code=close_code
        )

    # --- user calls ---------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """``connect()``: start trying unless already connected or trying."""
        if self.closed or self.trying or self.status is Status.CONFIRMED:
            return
        self._start_trying(now)

    def _start_trying(self, now: float) -> None:
        self.trying = True
        self.attempt = 0
        self.next_attempt_at = now
        self._wake(Wake.TIMER)

    def reconnect(self, now: float) -> None:
        """``reconnect()``: drop the connection, try again now with a fresh budget."""
        if self.closed:
            return
        had_connection = self._conn_open
        self._drop_connection("reconnect requested")
        self.generation += 1  # whatever the old connection still says is ignored
        if had_connection or self.status is not Status.DISCONNECTED:
            self._set_state(Status.DISCONNECTED, error="reconnect requested")
        self._start_trying(now)

    def stop_trying(self, now: float, error: BaseException) -> None:
        """``connect(timeout=...)`` ran out: stop trying; DISCONNECTED.

        Unlike a give-up, the queue is kept: the caller chose the deadline and learns of it
        from ConnectTimeout; the messages go out after a later ``connect()``/``reconnect()``
        (or fail with ClientClosed at ``close()``), and a durable outbox keeps them.
        """
        if self.closed or not self.trying:
            return
        was_disconnected = self.status is Status.DISCONNECTED
        self._drop_connection("connect timed out")
        self.generation += 1
        self.trying = False
        self.next_attempt_at = None
        self.last_failure = error
        if was_disconnected:
            # Waiting for the next attempt: not a transition, so nothing to report.
            self.state = attrs.evolve(self.state, error=str(error))
            self._wake(Wake.WAITERS)
            self._wake(Wake.TIMER)
        else:
            self._set_state(Status.DISCONNECTED, error=str(error), attempt=self.attempt)

    def send(self, entry: Entry, now: float, *, inline: bool = False) -> bool:
        """Take responsibility for a new message (its id is known to be free).

        With ``inline`` (``send()``'s fast path), the caller may write the message itself,
        now, if nothing could be written before it: then True is returned, the entry is
        TAKEN and the caller must report the write with :meth:`written` or
        :meth:`not_written`. Otherwise it is queued and the writer is woken.
        """
        ledger = self.ledger
        if inline and self.status is _CONFIRMED and self._conn_open and not self._owed:
            if ledger.take_inline(entry, now):
                return True  # else take_inline queued it
        else:
            ledger.add(entry)
        if ledger.open and ledger.writer is None and not self._writer_woken:
            self._writer_woken = True
            self._wake(_WAKE_WRITER)
        return False

    def withdraw(self, message_id: str, future: object = None) -> Entry | None:
        """Remove a message that is still queued (cancel). None if it was taken or written."""
        entry = self.ledger.withdraw(message_id, future)
        if entry is not None:
            self._forget((message_id,))
            self._drained()
        return entry

    def time_out(self, message_id: str, error: Callable[[], BaseException]) -> Entry | None:
        """A waiter gave up on a message: withdrawn if queued, never written again if written.

        Its future fails with ``error`` in the same step, so a writer holding the entry right
        now finds it done. None if the message is no longer in the ledger (answered, failed).
        """
        entry = self.ledger.abandon(message_id)
        if entry is not None:
            self._actions.append(Fail((entry,), error))
            self._forget((message_id,))
            self._drained()
        return entry

    def close(self) -> None:
        """``close()``: terminal. Waiting futures fail with ClientClosed; the outbox keeps them.

        The ledger keeps the failed messages until :meth:`forget_all`, which the engine calls
        once it carried the failure out: a ``close()`` interrupted in between and called
        again asks for their failure again (the second time finds the futures done at worst).
        """
        if not self.closed:
            if self._conn_open:
                # The engine sends a close frame first, then tears the socket down.
                self._actions.append(Abort(self.generation, "client closed"))
                self._conn_open = False
            self.generation += 1
            self.trying = False
            self.next_attempt_at = self.attempt_deadline = None
            self.next_ping_at = self.dead_at = self.proof_at = None
            self.ledger.stop(blame=False)
            self._owed.clear()
            self._set_state(Status.CLOSED)
        entries = tuple(self.ledger.pending.values())
        if entries:
            self._actions.append(
                Fail(entries, lambda: ClientClosed("client closed"), final=False)
            )

    def forget_all(self) -> None:
        """After ``close()``: the engine failed every message; the ledger lets them go."""
        self.ledger.clear()

    # --- timer --------------------------------------------------------------------------

    def on_timer(self, now: float) -> None:
        """Do whatever is due at ``now``: start an attempt, time one out, ping, declare dead."""
        status = self.status
        if status is Status.DISCONNECTED:
            if self.trying and self.next_attempt_at is not None and now >= self.next_attempt_at:
                self.next_attempt_at = None
                self.generation += 1
                self._conn_open = True
                self.attempt_deadline = now + self.connect_timeout
                self._set_state(Status.CONNECTING, attempt=self.attempt)
                self._actions.append(Open(self.generation, self.connect_timeout))
        elif status is Status.PENDING:
            if self.attempt_deadline is not None and now >= self.attempt_deadline:
                error = ConnectError(
                    f"no connect_confirm within connect_timeout={self.connect_timeout:g} s",
                    phase="confirm",
                )
                self._attempt_failed(error, now)
        elif status is Status.CONFIRMED:
            if self.dead_at is not None and now >= self.dead_at:
                error = ConnectError(
                    f"no pong for heartbeat_timeout={self.heartbeat_timeout:g} s",
                    phase="heartbeat",
                )
                self._connection_lost(error, now)
                return
            if self.proof_at is not None and now >= self.proof_at:
                self._prove()
            if self.next_ping_at is not None and now >= self.next_ping_at:
                self._owe(Control.PING)
                if self._ping_sent_at is None:
                    self._ping_sent_at = now
                # Schedule from the due time, not `now`: no drift when the timer is late,
                # but never a burst of pings either when it is very late.
                self.next_ping_at += self.heartbeat_interval
                if self.next_ping_at <= now:
                    self.next_ping_at = now + self.heartbeat_interval

    def _owe(self, control: Control) -> None:
        """Owe one more control frame: a connect or a ping owed twice is owed once; a pong
        is owed per server ping, up to MAX_PONGS_OWED (memory stays bounded)."""
        owed = self._owed.get(control, 0)
        if owed < (MAX_PONGS_OWED if control is Control.PONG else 1):
            self._owed[control] = owed + 1
            if not owed:
                self._wake(Wake.WRITER)  # (one owed already: the writer was woken for it)

    def _prove(self) -> None:
        """The confirmed connection proved itself: the attempt count starts again."""
        if not self.proven:
            self.proven = True
            self.proof_at = None
            self.attempt = 0

    # --- the timer thread's open ----------------------------------------------------------

    def on_open_succeeded(self, generation: int, now: float) -> bool:
        """The socket of ``generation`` is open: send ``connect`` first, wait for the confirm.

        Returns False if the socket is stale (a ``reconnect()`` or ``close()`` came in while
        opening): the caller must close it.
        """
        if generation != self.generation or self.status is not Status.CONNECTING:
            return False
        self._owed.clear()
        self._owe(Control.CONNECT)
        self._set_state(Status.PENDING, attempt=self.attempt)
        return True

    def on_open_failed(
        self, generation: int, error: BaseException, now: float, *, retryable: bool = True
    ) -> None:
        """The attempt of ``generation`` could not open a socket."""
        if generation != self.generation or self.status is not Status.CONNECTING:
            return
        self._conn_open = False
        self._attempt_failed(error, now, retryable=retryable)

    def _attempt_failed(
        self,
        error: BaseException,
        now: float,
        *,
        retryable: bool = True,
        close_code: int | None = None,
    ) -> None:
        failed = self.attempt
        self._drop_connection(str(error))
        self.generation += 1
        self._schedule_next_attempt(
            failed, error, now, retryable=retryable, close_code=close_code
        )

    def _connection_lost(
        self, error: BaseException, now: float, *, close_code: int | None = None
    ) -> None:
        # A connection that proved itself starts a fresh budget; one that did not (confirmed,
        # then closed at once) counts as the attempt that opened it failing. One whose loss
        # gave up a poison message is not the server's failure either: the culprit is gone.
        if self.proof_at is not None and now >= self.proof_at:
            self._prove()  # CONFIRMED for reset_after, though the timer had not run yet
        failed = 0 if self.proven else self.attempt
        given_up = self.ledger.poisoned_total
        self._drop_connection(str(error), blame=True)
        if self.ledger.poisoned_total > given_up:
            failed = 0
        self.generation += 1
        self.trying = True
        self._schedule_next_attempt(failed, error, now, close_code=close_code)

    def on_connection_lost(
        self,
        generation: int,
        error: BaseException,
        now: float,
        *,
        close_code: int | None = None,
    ) -> None:
        """The socket of ``generation`` closed or failed (read or write side).

        Args:
            close_code: the server's WebSocket close code, when it sent a close frame.
        """
        if generation != self.generation or not self._conn_open:
            return
        if self.status is Status.CONFIRMED:
            self._connection_lost(error, now, close_code=close_code)
        elif self.status in (Status.PENDING, Status.CONNECTING):
            self._attempt_failed(error, now, close_code=close_code)

    # --- frames from the server -----------------------------------------------------------

    def on_malformed(self) -> None:
        self.malformed += 1

    def on_frame(self, generation: int, frame: protocol.Frame, now: float) -> None:
        """One valid frame arrived on the connection of ``generation``."""
        if generation != self.generation or not self._conn_open:
            return
        kind = type(frame)
        if kind is _RESPONSE:
            self._on_response(frame, now)  # type: ignore[arg-type]
        elif kind is protocol.Pong:
            if self.status is Status.CONFIRMED:
                if self._ping_sent_at is not None:
                    self.last_rtt = max(0.0, now - self._ping_sent_at)
                    self._ping_sent_at = None
                self.dead_at = now + self.heartbeat_timeout
                self._prove()
                self._wake(Wake.TIMER)
        elif kind is protocol.Ping:
            self._owe(Control.PONG)
        elif kind is protocol.ConnectConfirm:
            self._on_confirm(frame, now)  # type: ignore[arg-type]
        elif kind is protocol.Error:
            self._on_error(frame, now)  # type: ignore[arg-type]
        else:
            # `connect` or `message`: frames only a client sends.
            self.malformed += 1

    def _on_response(self, frame: protocol.Response, now: float) -> None:
        if not self.proven and self.status is _CONFIRMED:
            self._prove()
            self._wake(_WAKE_TIMER)
        ledger = self.ledger
        actions = self._actions
        entry = ledger.answer(frame.message_id)
        if entry is not None:
            actions.append(Resolve(entry, frame))
            if self.durable:
                actions.append(Forget((entry.message_id,)))
            if not ledger.pending:
                self._wake(_WAKE_WAITERS)
            elif ledger.suspects or entry.deliveries:
                self._wake(_WAKE_WRITER)  # one at a time: the next one may go now
        actions.append(OnResponse(frame))

    def _on_confirm(self, frame: protocol.ConnectConfirm, now: float) -> None:
        if self.status is not Status.PENDING:
            self.malformed += 1  # a confirm outside the handshake means nothing
            return
        if frame.client_id != self.client_id:
            self._attempt_failed(HandshakeError("connect_confirm is for another clientId"), now)
            return
        if frame.status != "confirmed":
            self._attempt_failed(
                HandshakeError("connect_confirm status is not 'confirmed'"), now
            )
            return
        if self.confirms:
            self.reconnects += 1
        self.confirms += 1
        self.trying = False  # a loss starts the policy again
        self.attempt_deadline = None
        self.last_failure = None
        self.proven = False
        self.proof_at = now + self.backoff.reset_after
        if self.backoff.reset_after <= 0:
            self._prove()
        self.next_ping_at = now + self.heartbeat_interval
        self.dead_at = now + self.heartbeat_timeout
        self._ping_sent_at = None
        # Resend what is unanswered, oldest first, then the queue: all of pending in order.
        self.ledger.start()
        self.state = attrs.evolve(self.state, conversation_id=frame.conversation_id)
        self._set_state(Status.CONFIRMED)

    def _on_error(self, frame: protocol.Error, now: float) -> None:
        server_error = ServerError(
            error=frame.error, timestamp=frame.timestamp, message_id=frame.message_id
        )
        self._actions.append(OnError(server_error))
        if self.status is Status.PENDING:
            error = HandshakeError(f"server refused the handshake: {network_text(frame.error)}")
            error.__cause__ = server_error
            # A refusal of the connection: no message was written on it, none is failed.
            self._attempt_failed(error, now)
            return
        if frame.message_id is None:
            return
        self.time_out(
            frame.message_id,
            lambda: ServerError(
                error=frame.error, timestamp=frame.timestamp, message_id=frame.message_id
            ),
        )

    # --- writers --------------------------------------------------------------------------

    def take_writes(
        self, generation: int, now: float, limit: int = WRITE_BATCH
    ) -> tuple[list[Control], list[Entry]]:
        """The writer thread asks what to write on ``generation``: control frames, then messages.

        When messages are returned, the writer holds the turn to write (the list is its
        token) until it reports with :meth:`written` or :meth:`not_written`.
        """
        if generation != self.generation:
            return [], []
        if not self._conn_open:
            self._owed.clear()  # nothing to write them on
            return [], []
        controls = self.controls
        self._owed.clear()
        if self.status is not _CONFIRMED:
            return controls, []
        return controls, self.ledger.take(now, limit)

    def written(self, generation: int, owner: object, entries: list[Entry]) -> None:
        """The write ``owner`` (a token from take_writes/send) put ``entries`` on the wire."""
        current = generation == self.generation
        counted = self.ledger.written(owner, entries, current=current)
        if current:
            self._wake(Wake.READER)  # answers (to messages, or a ping's pong) will follow
        if counted:
            # Written on a connection already lost: that loss counts for them now.
            limit = self.ledger.max_deliveries
            poisoned = [e for e in counted if limit is not None and e.deliveries >= limit]
            still = tuple(e.message_id for e in counted if e not in poisoned)
            if self.durable and still:
                self._actions.append(CountDeliveries(still))
            if poisoned:
                self._poisoned(poisoned)
        if self.has_writes():
            self._wake(_WAKE_WRITER)

    def not_written(
        self, generation: int, owner: object, entries: list[Entry], error: BaseException | None,
        now: float,
    ) -> None:
        """The write ``owner`` wrote nothing after all; ``error``: because the connection died."""
        self.ledger.not_written(owner, entries, current=generation == self.generation)
        if error is not None:
            self.on_connection_lost(generation, error, now)
        elif self.has_writes():
            self._wake(Wake.WRITER)

    def on_internal_error(self, error: BaseException, now: float) -> None:
        """A wsync thread hit a bug: whoever wrote gives up the turn; the connection is lost."""
        self.ledger.writer = None
        if self._conn_open:
            self.on_connection_lost(self.generation, error, now)
        elif self.has_writes():
            self._wake(Wake.WRITER)

    def repair(self, now: float, owner: object = None) -> None:
        """Restore the invariants after an interrupt struck an event half-way (see
        ``Ledger.repair``); every thread is woken to look again."""
        self.ledger.repair(owner)
        if self.status is Status.DISCONNECTED and self.trying and self.next_attempt_at is None:
            self.next_attempt_at = now  # interrupted between "trying" and its schedule
        self._woken.clear()
        for target in Wake:
            self._wake(target)
