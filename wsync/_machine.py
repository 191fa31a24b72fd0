"""The connection logic of a client, with no I/O: events and ``now`` in, actions out.

``Machine`` knows the protocol's states, the handshake, the heartbeat deadlines, the
reconnection policy, the order in which messages are written and where every message
is (queued, taken by the writer, written, done). It owns no thread, socket or clock:
the engine feeds it events under its lock, carries out the returned actions outside
the lock, and asks it for the next deadline. Every timing rule is therefore testable
exactly and instantly with a fake clock (tests/unit/test_machine.py).

Where a message is:

* ``QUEUED``  - waiting in ``pending``; written once CONFIRMED, in send() order;
* ``TAKEN``   - handed to the writer thread, which is writing it right now;
* ``WRITTEN`` - on the wire of the current connection, waiting for its response;
* ``DONE``    - answered, failed, withdrawn or cancelled; no longer in ``pending``.

On every confirm the writer starts again from the oldest unanswered message, so
messages written but unanswered on a lost connection are written again first, in
their original order, then the rest: the first arrival of each message at the
server follows send() order across any number of reconnects.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

import attrs

from wsync import protocol
from wsync._backoff import Backoff
from wsync._errors import ClientClosed, ConnectError, HandshakeError, ServerError
from wsync._ratelimit import TokenBucket
from wsync._values import ConnectionState, Stats, Status

if TYPE_CHECKING:
    from wsync._futures import MessageFuture

__all__ = [
    "Abort",
    "Action",
    "Control",
    "Entry",
    "EntryState",
    "Fail",
    "Forget",
    "Machine",
    "Notify",
    "OnError",
    "OnResponse",
    "Open",
    "Resolve",
]

# How many messages the writer takes at once: big enough to batch a flush into few
# syscalls, small enough that control frames (pings, pongs) are never far behind.
WRITE_BATCH: Final = 256
# ...and at most about this many bytes, so a ping never waits behind a huge backlog.
WRITE_BATCH_BYTES: Final = 256 * 1024


class Control(enum.Enum):
    """Control frames the writer sends before any message."""

    CONNECT = "connect"
    PING = "ping"
    PONG = "pong"


class EntryState(enum.IntEnum):
    QUEUED = 0
    TAKEN = 1
    WRITTEN = 2
    DONE = 3


class Entry:
    """One message the client is responsible for until it is answered or failed."""

    # The content itself is not kept: `text` holds it, and memory per queued message counts.
    __slots__ = ("future", "message_id", "state", "text")

    def __init__(self, message_id: str, content: str, text: str, future: MessageFuture) -> None:
        self.message_id = message_id
        self.text = text  # the encoded `message` frame, written as-is (resends too)
        self.future = future
        self.state = EntryState.QUEUED

    def __repr__(self) -> str:  # never the content
        return f"Entry({self.message_id!r}, {self.state.name})"


# --- actions: what the engine must do, outside its lock -------------------------------


@attrs.frozen(slots=True)
class Open:
    """Open a new connection (the timer thread does it), bounded by ``timeout``."""

    generation: int
    timeout: float


@attrs.frozen(slots=True)
class Abort:
    """Tear down the connection (or cancel the open in flight) of ``generation``."""

    generation: int
    reason: str


@attrs.frozen(slots=True)
class Notify:
    """Call ``on_state_change(state)``."""

    state: ConnectionState


@attrs.frozen(slots=True)
class Resolve:
    """Set ``entry.future``'s result."""

    entry: Entry
    response: protocol.Response


@attrs.frozen(slots=True)
class Fail:
    """Fail every entry's future with a fresh exception from ``error``.

    ``final``: the messages will never be sent (they leave a durable outbox first);
    otherwise (``close()``) they stay in a durable outbox for the next client.
    """

    entries: tuple[Entry, ...]
    error: Callable[[], BaseException]
    final: bool = True


@attrs.frozen(slots=True)
class OnResponse:
    """Call ``on_response(response)``."""

    response: protocol.Response


@attrs.frozen(slots=True)
class OnError:
    """Call ``on_error(error)``."""

    error: ServerError


@attrs.frozen(slots=True)
class Forget:
    """Remove these messages from the durable outbox (they are answered or failed)."""

    message_ids: tuple[str, ...]


Action = Open | Abort | Notify | Resolve | Fail | OnResponse | OnError | Forget


def _with_cause(exc: BaseException, cause: BaseException | None) -> BaseException:
    exc.__cause__ = cause
    return exc


class Machine:
    """The client's connection logic. Not thread-safe: the engine calls it under its lock.

    Args:
        client_id: this client's id (already validated).
        heartbeat_interval: seconds between pings while CONFIRMED.
        heartbeat_timeout: no pong for this long means the connection is dead.
        backoff: the reconnection policy.
        connect_timeout: bound on one attempt, from its start to the confirm.
        rate_limit: messages per second, or None.
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
        rand: Callable[[], float] = random.random,
        now: float = 0.0,
    ) -> None:
        self.client_id = client_id
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self._rand = rand
        self._bucket = TokenBucket(rate_limit, now=now) if rate_limit is not None else None

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

        # Heartbeat.
        self.next_ping_at: float | None = None
        self.dead_at: float | None = None
        self._ping_sent_at: float | None = None
        self.last_rtt: float | None = None

        # Messages.
        self.pending: dict[str, Entry] = {}  # every unanswered message, in send() order
        self._to_write: deque[Entry] = deque()  # what the writer takes next (CONFIRMED only)
        self.controls: deque[Control] = deque()
        self.queued = 0
        self.in_flight = 0  # TAKEN or WRITTEN
        self.sent = 0
        self.received = 0
        self.reconnects = 0
        self.malformed = 0

        # Set when the engine should wake a thread; the engine clears them.
        self.wake_writer = False
        self.wake_timer = False
        self.wake_waiters = False

    # --- queries ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.status is Status.CLOSED

    def stats(self) -> Stats:
        return Stats(
            sent=self.sent,
            received=self.received,
            queued=self.queued,
            in_flight=self.in_flight,
            reconnects=self.reconnects,
            malformed=self.malformed,
            last_rtt=self.last_rtt,
        )

    def next_deadline(self) -> float | None:
        """The earliest time at which ``on_timer`` has something to do, or None."""
        candidates: list[float] = []
        if self.status is Status.CONFIRMED:
            if self.next_ping_at is not None:
                candidates.append(self.next_ping_at)
            if self.dead_at is not None:
                candidates.append(self.dead_at)
        elif self.status is Status.PENDING:
            if self.attempt_deadline is not None:
                candidates.append(self.attempt_deadline)
        elif (
            self.status is Status.DISCONNECTED and self.trying and self.next_attempt_at is not None
        ):
            candidates.append(self.next_attempt_at)
        return min(candidates) if candidates else None

    def has_writes(self) -> bool:
        """Whether the writer has anything to write now (ignoring the rate limit)."""
        if self.controls:
            return True
        return self.status is Status.CONFIRMED and bool(self._to_write)

    def next_write_at(self, now: float) -> float | None:
        """When the rate limit allows the next message, if one waits for it."""
        if self._bucket is None or self.status is not Status.CONFIRMED or not self._to_write:
            return None
        return self._bucket.next_token_at(now)

    # --- state changes --------------------------------------------------------------------

    def _set_state(
        self, status: Status, actions: list[Action], *, error: str | None = None, attempt: int = 0
    ) -> None:
        self.status = status
        self.state = ConnectionState(
            status=status,
            client_id=self.client_id,
            conversation_id=self.state.conversation_id,
            error=error,
            attempt=attempt,
        )
        actions.append(Notify(self.state))
        self.wake_waiters = True
        self.wake_timer = True
        self.wake_writer = True

    def _requeue_written(self) -> None:
        """The connection is gone: everything taken or written is queued again."""
        for entry in self.pending.values():
            if entry.state is EntryState.TAKEN or entry.state is EntryState.WRITTEN:
                entry.state = EntryState.QUEUED
        self.queued += self.in_flight
        self.in_flight = 0
        self._to_write.clear()
        self.controls.clear()

    def _drop_connection(self, actions: list[Action], reason: str) -> None:
        if self._conn_open:
            actions.append(Abort(self.generation, reason))
            self._conn_open = False
        self._requeue_written()
        self.next_ping_at = self.dead_at = self._ping_sent_at = None
        self.attempt_deadline = None

    def _schedule_next_attempt(
        self, failed_attempt: int, error: BaseException, now: float, actions: list[Action],
        *, retryable: bool = True,
    ) -> None:
        """After attempt ``failed_attempt`` failed (0: a confirmed connection was lost)."""
        self.last_failure = error
        if not retryable or self.backoff.gives_up_after(failed_attempt):
            self._give_up(failed_attempt, error, actions)
            return
        self.attempt = failed_attempt + 1
        self.next_attempt_at = now + self.backoff.delay(self.attempt, self._rand)
        self._set_state(
            Status.DISCONNECTED, actions, error=str(error) or type(error).__name__,
            attempt=failed_attempt,
        )

    def _give_up(self, failed_attempt: int, error: BaseException, actions: list[Action]) -> None:
        self.trying = False
        self.next_attempt_at = None
        self.giveups += 1
        cls = HandshakeError if isinstance(error, HandshakeError) else ConnectError
        if failed_attempt == 0:
            text = f"could not connect: {error}"
        else:
            text = f"gave up after {failed_attempt} reconnection attempts: {error}"
        self.give_up_error = _with_cause(cls(text), error)
        self._fail_pending(
            lambda: _with_cause(cls(text), error), actions, forget=True
        )
        self._set_state(Status.DISCONNECTED, actions, error=text, attempt=failed_attempt)

    def _fail_pending(
        self, error: Callable[[], BaseException], actions: list[Action], *, forget: bool
    ) -> None:
        entries = tuple(self.pending.values())
        if not entries:
            return
        for entry in entries:
            entry.state = EntryState.DONE
        self.pending.clear()
        self._to_write.clear()
        self.queued = self.in_flight = 0
        actions.append(Fail(entries, error, final=forget))
        if forget:
            actions.append(Forget(tuple(e.message_id for e in entries)))

    # --- user calls ---------------------------------------------------------------------

    def connect(self, now: float) -> list[Action]:
        """``connect()``: start trying unless already connected or trying."""
        actions: list[Action] = []
        if self.closed or self.trying or self.status is Status.CONFIRMED:
            return actions
        self._start_trying(now)
        return actions

    def _start_trying(self, now: float) -> None:
        self.trying = True
        self.attempt = 0
        self.next_attempt_at = now
        self.wake_timer = True

    def reconnect(self, now: float) -> list[Action]:
        """``reconnect()``: drop the connection, try again now with a fresh budget."""
        actions: list[Action] = []
        if self.closed:
            return actions
        had_connection = self._conn_open
        self._drop_connection(actions, "reconnect requested")
        self.generation += 1  # whatever the old connection still says is ignored
        if had_connection or self.status is not Status.DISCONNECTED:
            self._set_state(Status.DISCONNECTED, actions, error="reconnect requested")
        self._start_trying(now)
        return actions

    def stop_trying(self, now: float, error: BaseException) -> list[Action]:
        """``connect(timeout=...)`` ran out: stop trying; DISCONNECTED.

        Unlike a give-up, the queue is kept: the caller chose the deadline and learns of it
        from ConnectTimeout; the messages go out after a later ``connect()``/``reconnect()``
        (or fail with ClientClosed at ``close()``), and a durable outbox keeps them.
        """
        actions: list[Action] = []
        if self.closed or not self.trying:
            return actions
        was_disconnected = self.status is Status.DISCONNECTED
        self._drop_connection(actions, "connect timed out")
        self.generation += 1
        self.trying = False
        self.next_attempt_at = None
        self.last_failure = error
        if was_disconnected:
            # Waiting for the next attempt: not a transition, so nothing to report.
            self.state = attrs.evolve(self.state, error=str(error))
            self.wake_waiters = self.wake_timer = True
        else:
            self._set_state(Status.DISCONNECTED, actions, error=str(error), attempt=self.attempt)
        return actions

    def send(self, entry: Entry) -> None:
        """Take responsibility for a new message (its id is known to be free)."""
        self.pending[entry.message_id] = entry
        self.queued += 1
        if self.status is Status.CONFIRMED:
            self._to_write.append(entry)
            self.wake_writer = True

    def send_inline(self, entry: Entry, now: float) -> bool:
        """``send()`` on the fast path: True if the caller may write ``entry`` itself, now.

        Only when nothing could be written before it: CONFIRMED, no message or control frame
        waiting, and (with a rate limit) a token at hand; the engine also makes sure no write is
        in progress. The entry is then TAKEN, exactly as if the writer had taken it; otherwise
        it is queued as by ``send()``.
        """
        if (
            self.status is Status.CONFIRMED
            and self._conn_open
            and not self.in_flight  # others in flight: the writer batches them into one sendall
            and not self._to_write
            and not self.controls
            and (self._bucket is None or self._bucket.take(1, now) == 1)
        ):
            self.pending[entry.message_id] = entry
            entry.state = EntryState.TAKEN
            self.in_flight += 1
            return True
        self.send(entry)
        return False

    def inline_failed(self, generation: int, entry: Entry) -> None:
        """The fast path wrote nothing after all: the writer writes the entry, before the rest."""
        if entry.state is not EntryState.TAKEN or self.pending.get(entry.message_id) is not entry:
            return  # answered, withdrawn, or queued again by a loss meanwhile
        entry.state = EntryState.QUEUED
        self.in_flight -= 1
        self.queued += 1
        if generation == self.generation and self.status is Status.CONFIRMED:
            self._to_write.appendleft(entry)
            self.wake_writer = True

    def withdraw(self, message_id: str) -> Entry | None:
        """Remove a message that is still queued (cancel, timeout). None if it was written."""
        entry = self.pending.get(message_id)
        if entry is None or entry.state is not EntryState.QUEUED:
            return None
        self._finish(entry)
        self._notify_if_drained()
        return entry

    def abandon(self, message_id: str) -> Entry | None:
        """Stop tracking a written message (its waiter timed out): it is never written again."""
        entry = self.pending.get(message_id)
        if entry is None:
            return None
        self._finish(entry)
        self._notify_if_drained()
        return entry

    def _finish(self, entry: Entry) -> None:
        """Take ``entry`` (which is in ``pending``) out for good: DONE, counters fixed."""
        del self.pending[entry.message_id]
        if entry.state is EntryState.QUEUED:
            self.queued -= 1  # e.g. answered before we (re)wrote it: a duplicate path
        else:
            self.in_flight -= 1
        entry.state = EntryState.DONE

    def _notify_if_drained(self) -> None:
        if not self.pending:
            self.wake_waiters = True

    def close(self) -> list[Action]:
        """``close()``: terminal. Waiting futures fail with ClientClosed; the outbox keeps them."""
        actions: list[Action] = []
        if self.closed:
            return actions
        if self._conn_open:
            # The engine sends a close frame first, then tears the socket down.
            actions.append(Abort(self.generation, "client closed"))
            self._conn_open = False
        self.generation += 1
        self.trying = False
        self.next_attempt_at = self.attempt_deadline = None
        self.next_ping_at = self.dead_at = None
        self._requeue_written()
        self._fail_pending(lambda: ClientClosed("client closed"), actions, forget=False)
        self._set_state(Status.CLOSED, actions)
        return actions

    # --- timer --------------------------------------------------------------------------

    def on_timer(self, now: float) -> list[Action]:
        """Do whatever is due at ``now``: start an attempt, time one out, ping, declare dead."""
        actions: list[Action] = []
        status = self.status
        if status is Status.DISCONNECTED:
            if self.trying and self.next_attempt_at is not None and now >= self.next_attempt_at:
                self.next_attempt_at = None
                self.generation += 1
                self._conn_open = True
                self.attempt_deadline = now + self.connect_timeout
                self._set_state(Status.CONNECTING, actions, attempt=self.attempt)
                actions.append(Open(self.generation, self.connect_timeout))
        elif status is Status.PENDING:
            if self.attempt_deadline is not None and now >= self.attempt_deadline:
                error = ConnectError(
                    f"no connect_confirm within connect_timeout={self.connect_timeout:g} s",
                    phase="confirm",
                )
                self._attempt_failed(error, now, actions)
        elif status is Status.CONFIRMED:
            if self.dead_at is not None and now >= self.dead_at:
                error = ConnectError(
                    f"no pong for heartbeat_timeout={self.heartbeat_timeout:g} s",
                    phase="heartbeat",
                )
                self._connection_lost(error, now, actions)
            elif self.next_ping_at is not None and now >= self.next_ping_at:
                self.controls.append(Control.PING)
                if self._ping_sent_at is None:
                    self._ping_sent_at = now
                # Schedule from the due time, not `now`: no drift when the timer is late,
                # but never a burst of pings either when it is very late.
                self.next_ping_at += self.heartbeat_interval
                if self.next_ping_at <= now:
                    self.next_ping_at = now + self.heartbeat_interval
                self.wake_writer = True
        return actions

    # --- the timer thread's open ----------------------------------------------------------

    def on_open_succeeded(self, generation: int, now: float) -> list[Action]:
        """The socket of ``generation`` is open: send ``connect`` first, wait for the confirm."""
        actions: list[Action] = []
        if generation != self.generation or self.status is not Status.CONNECTING:
            # Stale: a reconnect() or close() came in while opening.
            actions.append(Abort(generation, "superseded"))
            return actions
        self.controls.clear()
        self.controls.append(Control.CONNECT)
        self._set_state(Status.PENDING, actions, attempt=self.attempt)
        return actions

    def on_open_failed(
        self, generation: int, error: BaseException, now: float, *, retryable: bool = True
    ) -> list[Action]:
        """The attempt of ``generation`` could not open a socket."""
        actions: list[Action] = []
        if generation != self.generation or self.status is not Status.CONNECTING:
            return actions
        self._conn_open = False
        self._attempt_failed(error, now, actions, retryable=retryable)
        return actions

    def _attempt_failed(
        self, error: BaseException, now: float, actions: list[Action], *, retryable: bool = True
    ) -> None:
        failed = self.attempt
        self._drop_connection(actions, str(error))
        self.generation += 1
        self._schedule_next_attempt(failed, error, now, actions, retryable=retryable)

    def _connection_lost(self, error: BaseException, now: float, actions: list[Action]) -> None:
        self._drop_connection(actions, str(error))
        self.generation += 1
        self.trying = True
        self._schedule_next_attempt(0, error, now, actions)

    def on_connection_lost(
        self, generation: int, error: BaseException, now: float
    ) -> list[Action]:
        """The socket of ``generation`` closed or failed (read or write side)."""
        actions: list[Action] = []
        if generation != self.generation or not self._conn_open:
            return actions
        if self.status is Status.CONFIRMED:
            self._connection_lost(error, now, actions)
        elif self.status in (Status.PENDING, Status.CONNECTING):
            self._attempt_failed(error, now, actions)
        return actions

    # --- frames from the server -----------------------------------------------------------

    def on_malformed(self) -> None:
        self.malformed += 1

    def on_frame(self, generation: int, frame: protocol.Frame, now: float) -> list[Action]:
        """One valid frame arrived on the connection of ``generation``."""
        actions: list[Action] = []
        if generation != self.generation or not self._conn_open:
            return actions
        if type(frame) is protocol.Response:
            self._on_response(frame, actions)
        elif type(frame) is protocol.Pong:
            if self.status is Status.CONFIRMED:
                if self._ping_sent_at is not None:
                    self.last_rtt = max(0.0, now - self._ping_sent_at)
                    self._ping_sent_at = None
                self.dead_at = now + self.heartbeat_timeout
                self.wake_timer = True
        elif type(frame) is protocol.Ping:
            self.controls.append(Control.PONG)
            self.wake_writer = True
        elif type(frame) is protocol.ConnectConfirm:
            self._on_confirm(frame, now, actions)
        elif type(frame) is protocol.Error:
            self._on_error(frame, now, actions)
        else:
            # `connect` or `message`: frames only a client sends.
            self.malformed += 1
        return actions

    def _on_confirm(
        self, frame: protocol.ConnectConfirm, now: float, actions: list[Action]
    ) -> None:
        if self.status is not Status.PENDING:
            self.malformed += 1  # a confirm outside the handshake means nothing
            return
        if frame.client_id != self.client_id:
            error = HandshakeError("connect_confirm is for another clientId")
            self._attempt_failed(error, now, actions)
            return
        if frame.status != "confirmed":
            error = HandshakeError("connect_confirm status is not 'confirmed'")
            self._attempt_failed(error, now, actions)
            return
        if self.confirms:
            self.reconnects += 1
        self.confirms += 1
        self.trying = False  # a loss starts the policy again, with a fresh budget
        self.attempt = 0
        self.attempt_deadline = None
        self.last_failure = None
        self.next_ping_at = now + self.heartbeat_interval
        self.dead_at = now + self.heartbeat_timeout
        self._ping_sent_at = None
        # Resend what is unanswered, oldest first, then the queue: all of pending in order.
        self._to_write = deque(self.pending.values())
        self.state = attrs.evolve(self.state, conversation_id=frame.conversation_id)
        self._set_state(Status.CONFIRMED, actions)

    def _on_error(self, frame: protocol.Error, now: float, actions: list[Action]) -> None:
        server_error = ServerError(
            error=frame.error, timestamp=frame.timestamp, message_id=frame.message_id
        )
        actions.append(OnError(server_error))
        if self.status is Status.PENDING:
            error = HandshakeError(f"server refused the handshake: {frame.error}")
            error.__cause__ = server_error
            # A refusal of the connection: no message was written on it, none is failed.
            self._attempt_failed(error, now, actions)
            return
        if frame.message_id is None:
            return
        entry = self.abandon(frame.message_id)
        if entry is None:
            return
        actions.append(
            Fail(
                (entry,),
                lambda: ServerError(
                    error=frame.error, timestamp=frame.timestamp, message_id=frame.message_id
                ),
            )
        )
        actions.append(Forget((entry.message_id,)))

    def is_current(self, generation: int) -> bool:
        """Whether events of the connection of ``generation`` still count."""
        return generation == self.generation and self._conn_open

    def answer(self, generation: int, frame: protocol.Response) -> Entry | None:
        """A response on the connection of ``generation``: the answered entry, or None.

        What ``on_frame`` does for a response, minus the actions (the engine's hot path carries
        them out itself): None for an unknown id or a duplicate. The caller checked
        ``is_current(generation)``.
        """
        self.received += 1
        entry = self.pending.get(frame.message_id)
        if entry is not None:
            self._finish(entry)
        return entry

    def _on_response(self, frame: protocol.Response, actions: list[Action]) -> None:
        entry = self.answer(self.generation, frame)
        actions.append(OnResponse(frame))
        if entry is None:
            return  # unknown, or a duplicate of one already answered
        actions.append(Resolve(entry, frame))
        actions.append(Forget((entry.message_id,)))
        if not self.pending:
            self.wake_waiters = True

    # --- the writer -----------------------------------------------------------------------

    def take_writes(
        self, generation: int, now: float, limit: int = WRITE_BATCH
    ) -> tuple[list[Control], list[Entry]]:
        """The writer asks what to write on ``generation``: control frames, then messages."""
        if generation != self.generation:
            return [], []
        if not self._conn_open:
            self.controls.clear()  # nothing to write them on
            return [], []
        controls = list(self.controls)
        self.controls.clear()
        entries: list[Entry] = []
        if self.status is not Status.CONFIRMED or not self._to_write:
            return controls, entries
        if self._bucket is not None:
            limit = self._bucket.take(min(limit, len(self._to_write)), now)
        to_write = self._to_write
        taken = 0
        size = 0
        while to_write and taken < limit and size < WRITE_BATCH_BYTES:
            entry = to_write.popleft()
            if entry.state is not EntryState.QUEUED:
                continue  # withdrawn, cancelled or answered meanwhile
            entry.state = EntryState.TAKEN
            entries.append(entry)
            taken += 1
            size += len(entry.text)
        if self._bucket is not None and taken < limit:
            # Tokens were taken for entries that turned out to be gone: give them back.
            self._bucket.give_back(limit - taken)
        self.queued -= taken
        self.in_flight += taken
        return controls, entries

    def writes_done(
        self, generation: int, entries: Iterable[Entry], skipped: Iterable[Entry] = ()
    ) -> list[Action]:
        """The writer wrote ``entries``; ``skipped`` were cancelled before their write."""
        actions: list[Action] = []
        current = generation == self.generation
        written = 0
        for entry in entries:
            written += 1
            if entry.state is EntryState.TAKEN and current:
                entry.state = EntryState.WRITTEN
        self.sent += written
        gone: list[str] = []
        for entry in skipped:
            if self.pending.get(entry.message_id) is entry:
                self._finish(entry)
                gone.append(entry.message_id)
        if gone:
            actions.append(Forget(tuple(gone)))
            self._notify_if_drained()
        return actions

    def discard(self, message_id: str, future: object = None) -> list[Action]:
        """A future was cancelled: forget its message unless it was written already.

        With ``future``, only the message of that very future (an id may be reused later).
        """
        actions: list[Action] = []
        entry = self.pending.get(message_id)
        if entry is None or entry.state is EntryState.WRITTEN:
            return actions
        if future is not None and entry.future is not future:
            return actions
        # QUEUED, or TAKEN by the writer and not yet written: the future is cancelled, so the
        # writer skips it. Forget it now, so a durable outbox drops it before cancel() returns.
        self.abandon(message_id)
        actions.append(Forget((message_id,)))
        return actions
