"""The engine: the lock, the machine's actions carried out, and the public operations.

Its one job: hold the client's lock and state, run one *step* for every event (feed the
machine under the lock, :meth:`Engine.drain` what it buffered, then
:meth:`Engine.carry_out` the rest outside the lock), and implement ``connect``,
``send``, ``send_and_wait``, ``flush``, ``reconnect`` and ``close``. It must not parse
frames, open sockets (``_handshake``/``_connection``), decide protocol rules (``_machine``),
keep message bookkeeping (``_ledger``), or run user code (``_dispatch``). The threads'
bodies live in ``_workers``; the engine creates them with itself as their host. It starts
a connect thread per attempt (``wsync-connect-<n>``, which goes on as the connection's
reader once it is open), a writer thread when there is a backlog and none runs, and joins
the process-wide timer thread (``_scheduler``) at the first ``connect()``; ``close()`` joins
every one of them (the timer thread too, when this was its last client).

Locking: one lock, ``lock``. Under it: the machine, the ledger, the dispatcher's queue,
the map of open connections; no I/O, no user code, no waiting, no future settled.
Futures are settled outside it (``Future.set_result`` notifies waiters under the future's
own condition and the callbacks it returns go to the callbacks thread); the durable
outbox is written outside it.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Final

import attrs

from wsync import _exit, _scheduler, protocol
from wsync._backoff import Backoff
from wsync._connection import Transport, TransportClosed
from wsync._dispatch import Callbacks, Dispatcher, call_each, changed
from wsync._errors import (
    ClientClosed,
    ConnectError,
    ConnectTimeout,
    HandshakeError,
    QueueFull,
    ResponseTimeout,
    TLSError,
    WsyncError,
)
from wsync._futures import DoneCallback, MessageFuture, Waiter, run_callbacks
from wsync._handshake import Connector, redact_url
from wsync._ledger import Entry
from wsync._machine import (
    Abort,
    Action,
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
from wsync._outbox import MemoryOutbox, Outbox
from wsync._timers import Clock, Deadline
from wsync._values import (
    ConnectionState,
    ResponseCallback,
    StateCallback,
    Stats,
    Status,
    uuid4_text,
)
from wsync._workers import MalformedLog, Reader, Timer, Writer, lost_error
from wsync.protocol import Response

__all__ = ["CLOSE_HANDSHAKE", "Engine"]

logger = logging.getLogger(__name__)

# How long close() lets the server answer our close frame before tearing the socket down.
CLOSE_HANDSHAKE: Final = 1.0
# At close()'s deadline, how long the callback running now may take to end, so that the
# CLOSED state change (kept in the queue) still runs before close() returns.
CLOSED_NOTICE_GRACE: Final = 0.5
# Interpreter exit: every open client is flushed and closed within this, all together.
EXIT_TIMEOUT: Final = 5.0

_numbers = itertools.count(1)  # client numbers, for thread names unique in the process
_live: weakref.WeakSet[Engine] = weakref.WeakSet()


class _Exiting:
    """The exit hook's progress, for clients whose threads cannot start any more."""

    running = False  # the exit hook runs
    focus: Engine | None = None  # the client it flushes now


def _close_all_at_exit() -> None:
    """Flush and close every open client, all within EXIT_TIMEOUT together.

    They drain in parallel, each wait taking what is left. Python 3.12+ starts no thread at
    interpreter shutdown: an attempt to connect then runs on the shared timer thread, which
    reads that connection itself until it is closed; so attempts wait for their client's
    turn here (``Engine._open`` parks them), and each client is closed once flushed, which
    frees the timer thread for the next one.
    """
    engines = [e for e in list(_live) if e.owned()]
    deadline = Deadline(EXIT_TIMEOUT)
    _Exiting.running = True
    try:
        for engine in engines:
            _Exiting.focus = engine
            engine.open_parked()
            engine.flush_for_close(deadline)
            if _exit.threads_refused():
                engine.close(max(0.1, deadline.remaining() or 0.0), flush=False)
    finally:
        _Exiting.focus = None
    for engine in engines:
        engine.close(max(0.1, deadline.remaining() or 0.0), flush=False)


def _forget_inherited() -> None:
    """In a forked child: the parent's clients are not ours (see Engine.owned)."""
    _live.clear()


_exit.register(_close_all_at_exit, after_fork_in_child=_forget_inherited)


@attrs.define
class _Teardown:
    """Abort ``transport`` (popped from the open connections under the lock)."""

    transport: Transport
    generation: int
    reason: str


@attrs.define
class _StartWriter:
    """Start the writer thread ``thread`` (made under the lock by ``Writer.wake``)."""

    thread: threading.Thread


_Later = list[Action | _Teardown | _StartWriter]

# What the shared timer thread carries out itself: nothing among them blocks.
_QUICK = (Open, Abort, _Teardown, _StartWriter, Log)


class Engine:
    """Everything a ``Client`` does, minus argument checking and the public docstrings.

    ``Client`` is a thin facade over this object, so that a forgotten client can be
    garbage-collected (the threads hold the engine, not the facade) and closed.
    """

    def __init__(
        self,
        *,
        url: str,
        client_id: str,
        callbacks: Callbacks,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        backoff: Backoff,
        connect_timeout: float,
        outbox: Outbox | None,
        max_queued: int | None,
        rate_limit: float | None,
        max_deliveries: int | None,
        max_send_size: int | None,
        connector: Connector,
        clock: Clock = time.monotonic,
    ) -> None:
        self.url = url
        self.client_id = client_id
        self.clock = clock
        self.number = next(_numbers)
        self._pid = _exit.pid
        self._callbacks = weakref.ref(callbacks)
        self._has_on_state_change = callbacks.on_state_change is not None
        self._has_on_response = callbacks.on_response is not None
        self._has_on_error = callbacks.on_error is not None
        self._max_queued = max_queued
        self._max_send_size = max_send_size
        self._connector = connector

        self.lock = threading.Lock()  # guards everything below that changes
        # Guards MessageFuture state changes and their done-callback lists (FutureOwner).
        self.resolve_lock = threading.Lock()
        self._state_cv = threading.Condition(self.lock)  # connect()/flush() waiters
        self._state_waiters = 0  # threads waiting on it (no notify, a Python loop, without)
        self._outbox: Outbox = outbox if outbox is not None else MemoryOutbox()
        self._durable = not isinstance(self._outbox, MemoryOutbox)
        self.machine = Machine(
            client_id=client_id,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            backoff=backoff,
            connect_timeout=connect_timeout,
            rate_limit=rate_limit,
            max_deliveries=max_deliveries,
            durable=self._durable,
            now=clock(),
        )
        n = self.number
        self._dispatch = Dispatcher(self.lock, name=f"wsync-callbacks-{n}")
        # The writer's thread exists only while there is a backlog; the deadlines run on the
        # process-wide timer thread; each attempt to connect on a thread of its own.
        self._writer = Writer(self, name=f"wsync-writer-{n}")
        self._timer = Timer(self, _scheduler.scheduler())
        self._started = False
        self._transports: dict[int, Transport] = {}
        self._opening: int | None = None  # generation of the open in flight
        # The latest connect thread, weakly: one that ended is not kept.
        self._connecting: weakref.ref[threading.Thread] | None = None
        # Interpreter shutdown (no thread starts): an attempt waiting for the exit hook's turn,
        # and one handed to the timer thread.
        self._parked_open: Open | None = None
        self._handed_open: Open | None = None
        self._readers: list[threading.Thread] = []
        self._reader_objs: list[Reader] = []  # the connections' readers (the turn to read)
        self._threads: set[threading.Thread] = set()  # every thread this client started
        # Futures being settled outside the lock (flush waits for them): each Resolve/Fail
        # drained and not yet carried out, by id, with the thread that drained it, so that a
        # thread an interrupt struck between the two carries its own out (_recover_owed).
        self._owed: dict[int, tuple[int, Action]] = {}
        self._closing = False
        self._close_runner: threading.Thread | None = None  # the thread running close()
        self._closed = False  # close() finished (waiters use _state_cv: no Event per client)
        self._malformed_log = MalformedLog()
        self._forget_buffer: list[str] = []
        self._forget_scheduled = False
        self._reserved: set[str] = set()  # durable sends between their check and enqueue
        self._forget_lock = threading.Lock()  # held while the outbox forgets a batch

        leftovers = self._outbox.claim(client_id)
        for stored in leftovers:
            text = protocol.encode_message_now(
                client_id=client_id, message_id=stored.message_id, content=stored.content
            )
            future = MessageFuture(stored.message_id, self)
            self.machine.send(Entry(stored.message_id, text, future, stored.deliveries), 0.0)
        self.machine.drain()
        if leftovers:
            logger.info("%d unanswered messages from the outbox will be sent first", len(leftovers))
        _live.add(self)

    # --- helpers ------------------------------------------------------------------------

    def owned(self) -> bool:
        """Whether this process owns the client (False in a forked child)."""
        return self._pid == _exit.pid

    def _check_owned(self) -> None:
        """Raise in a forked child, before any lock is taken (a lock held by a thread of
        the parent at the fork is held for ever in the child)."""
        if self._pid != _exit.pid:
            raise WsyncError(
                f"this client belongs to process {self._pid} (it was inherited through "
                "fork()): make a new Client in this process"
            )

    def _own_thread(self) -> bool:
        return threading.current_thread() in self._threads

    def _start_threads(self) -> None:
        """Join the timer thread and let the callbacks thread start, once. Caller holds
        self.lock. (The writer and connect threads start when there is work for them.)"""
        if self._started:
            return
        self._started = True
        self._dispatch.enable()
        self._timer.start()

    @property
    def closing(self) -> bool:
        return self._closing

    def transport(self, generation: int) -> Transport | None:
        """Caller holds self.lock."""
        return self._transports.get(generation)

    # --- one step: drain under the lock, carry out outside it ----------------------------

    def drain(self) -> _Later:
        """Carry out what can be done under the lock; return the rest. Caller holds self.lock."""
        later: _Later = []
        dispatch = self._dispatch
        machine = self.machine
        # The buffer is taken and every settlement in it recorded as owed before any Python
        # call returns: an interrupt (Ctrl-C in a caller) from here on cannot lose a future.
        # (Machine.drain() inlined: its return would be a point where an interrupt lands.)
        actions = machine._actions
        if not actions:
            return later
        machine._actions = []
        machine._woken.clear()
        owed = self._owed
        ident = threading.get_ident()
        for action in actions:
            if type(action) is Resolve or type(action) is Fail:
                owed[id(action)] = (ident, action)
        for action in actions:
            kind = type(action)
            if kind is Resolve:  # the common cases first: a match tries every Wake pattern
                later.append(action)
                continue
            if kind is OnResponse:
                if self._has_on_response:
                    dispatch.put(self._call_on_response, action.response)  # type: ignore[union-attr]
                continue
            match action:
                case Wake.WRITER:
                    thread = self._writer.wake()
                    if thread is not None:
                        later.append(_StartWriter(thread))  # started outside the lock
                case Wake.TIMER:
                    self._timer.wake()
                case Wake.WAITERS:
                    if self._state_waiters:
                        self._state_cv.notify_all()
                case Wake.READER:
                    for reader in self._reader_objs:
                        reader.wake()
                case Resolve() | Fail():
                    later.append(action)
                case OnResponse(response=response):
                    if self._has_on_response:
                        dispatch.put(self._call_on_response, response)
                case Notify(state=state):
                    later.append(Log(logging.DEBUG, f"state: {state.status.value}"))
                    if self._has_on_state_change:
                        dispatch.put(self._call_on_state_change, state)
                case OnError(error=error):
                    if self._has_on_error:
                        dispatch.put(self._call_on_error, error)
                case Forget(message_ids=ids):
                    self._forget_buffer.extend(ids)
                    if not self._forget_scheduled:
                        self._forget_scheduled = True
                        dispatch.put(self._flush_forgets)
                case CountDeliveries(message_ids=ids):
                    dispatch.put(self._count_deliveries, ids)
                case Abort(generation=generation, reason=reason):
                    transport = self._transports.pop(generation, None)
                    if transport is None:
                        later.append(action)  # an open in flight: cancel it
                    elif self._closing:
                        self._writer.closing_transports.append(transport)  # close frame first
                    else:
                        later.append(_Teardown(transport, generation, reason))
                case _:
                    later.append(action)
        return later

    def carry_out(self, later: _Later) -> None:
        """Carry out the actions ``drain`` left: I/O and futures. Caller does not hold the lock.

        Every action is carried out even when a ``KeyboardInterrupt`` strikes one of them (in
        a caller's thread): the rest still run, so no future is left unsettled, and the
        first interrupt is raised at the end.
        """
        interrupted: BaseException | None = None
        settled: list[int] = []
        for action in later:
            if type(action) is Resolve or type(action) is Fail:
                settled.append(id(action))
            try:
                self._carry_out_one(action)
            except Exception:
                logger.exception("internal error while carrying out %s", type(action).__name__)
            except BaseException as exc:
                if interrupted is None:
                    interrupted = exc
        if settled:
            with self.lock:
                owed = self._owed
                for key in settled:
                    owed.pop(key, None)
                if not owed and self._state_waiters:
                    self._state_cv.notify_all()
        if interrupted is not None:
            raise interrupted

    def _wait_state(
        self, timeout: float | None, predicate: Callable[[], bool] | None = None
    ) -> bool:
        """Wait on the state condition (until ``predicate``, if given), counted among its
        waiters so that state changes notify only when someone waits. Caller holds the lock."""
        self._state_waiters += 1
        try:
            if predicate is None:
                return self._state_cv.wait(timeout)
            return bool(self._state_cv.wait_for(predicate, timeout))
        finally:
            self._state_waiters -= 1

    def _recover_owed(self) -> None:
        """Carry out the settlements this thread drained and never carried out (an interrupt
        struck in between); settling is idempotent. Caller does not hold the lock."""
        ident = threading.get_ident()
        with self.lock:
            mine: _Later = [a for t, a in self._owed.values() if t == ident]
        if mine:
            self.carry_out(mine)

    def _carry_out_one(self, action: Action | _Teardown | _StartWriter) -> None:
        match action:
            case Resolve(entry=entry, response=response):
                self._settle(entry.future, response, None)
            case Fail(entries=entries, error=error, final=final):
                if self._durable and final:
                    # Out of the file first, then the user is told: a process killed in
                    # between must not send a message its user was told never goes out.
                    self._discard_now([e.message_id for e in entries])
                interrupted: BaseException | None = None
                for entry in entries:
                    try:
                        self._settle(entry.future, None, error())
                    except BaseException as exc:  # Ctrl-C: fail the others all the same
                        interrupted = interrupted or exc
                if interrupted is not None:
                    raise interrupted
            case _Teardown(transport=transport, generation=generation, reason=reason):
                logger.debug("aborting connection %d: %s", generation, reason)
                transport.abort()
            case Abort(generation=generation):
                with self.lock:
                    # Only the attempt still in flight; cancel() never blocks.
                    if self._opening == generation:
                        self._connector.cancel()
            case Open():
                self._open(action)
            case _StartWriter(thread=thread):
                self._writer.start(thread)
            case Log(level=level, message=message):
                logger.log(level, "%s", message)

    def _step_failed(self, exc: BaseException, owner: object = None) -> None:
        """A caller's machine step left by an exception: after an interrupt (Ctrl-C) the
        machine is repaired; what it buffered is carried out either way."""
        with self.lock:
            if not isinstance(exc, Exception):
                self.machine.repair(self.clock(), owner)
            later = self.drain()
        self.carry_out(later)
        self._recover_owed()

    def _settle(
        self,
        future: MessageFuture | Waiter,
        response: Response | None,
        error: BaseException | None,
    ) -> None:
        """Finish a future here; its done-callbacks go to the callbacks thread."""
        callbacks = future.settle(response, error)
        if callbacks and isinstance(future, MessageFuture):  # (a Waiter has none)
            with self.lock:
                if self._dispatch.accepting():
                    self._dispatch.put(run_callbacks, future, callbacks)
                    return
            self._run_done_callbacks(future, callbacks)

    def _run_done_callbacks(self, future: MessageFuture, callbacks: list[DoneCallback]) -> None:
        """No callbacks thread takes them (closing): run them here, unless on a reader."""
        if threading.current_thread() in self._readers:
            logger.warning("dropped %d done-callbacks of a future at close", len(callbacks))
            return
        run_callbacks(future, callbacks)

    def _discard_now(self, message_ids: Sequence[str]) -> None:
        """Remove messages from the durable outbox in this thread. Caller does not hold lock."""
        try:
            self._outbox.discard(message_ids)
        except Exception:
            logger.exception("could not remove %d messages from the outbox", len(message_ids))

    # --- the timer thread's work that may block: on other threads ---------------------------

    def carry_out_timed(self, later: _Later) -> None:
        """``carry_out`` on the shared timer thread, which must never block: what can (a
        durable outbox's rows removed when messages fail for good) goes to the callbacks
        thread, the rest is carried out here (an ``Open`` starts a connect thread)."""
        if self._handed_open is not None:
            with self.lock:
                handed, self._handed_open = self._handed_open, None
            if handed is not None:
                later = [handed, *later]
        if self._durable and any(isinstance(a, Fail) and a.final for a in later):
            slow = [a for a in later if not isinstance(a, _QUICK)]
            with self.lock:
                accepting = self._dispatch.accepting()
                if accepting:
                    self._dispatch.put(self.carry_out, slow)
            if accepting:
                later = [a for a in later if isinstance(a, _QUICK)]
        self.carry_out(later)

    def _open(self, action: Open) -> None:
        """Start one bounded attempt to open a socket on the thread ``wsync-connect-<n>``
        (the timer thread never waits for the network). When no thread can start
        (interpreter shutdown), the attempt runs here."""
        with self.lock:
            if self._closing or action.generation != self.machine.generation:
                return
            previous = None if self._connecting is None else self._connecting()
            thread = threading.Thread(
                target=self._connect_main,
                args=(action, previous),
                name=f"wsync-connect-{self.number}",
                daemon=True,
            )
            self._threads = {t for t in self._threads if t.is_alive()}
            self._threads.add(thread)
            # Started under the lock, so that close() (which reads it under the lock) never
            # finds a thread that is not started yet: one start per attempt.
            started = _exit.start_thread(thread)
            if started:
                self._connecting = weakref.ref(thread)
            else:
                self._threads.discard(thread)
        if not started:
            if _Exiting.running and _Exiting.focus is not self:
                with self.lock:
                    self._parked_open = action  # the exit hook hands it back in our turn
                return
            logger.debug("interpreter shutting down: connection %d opens in this thread",
                         action.generation)
            self._open_here(action, previous)

    def open_parked(self) -> None:
        """The exit hook's turn for this client: an attempt parked because no thread could
        start is handed to the timer thread (which opens and reads the connection)."""
        with self.lock:
            self._handed_open, self._parked_open = self._parked_open, None
            if self._handed_open is not None:
                self._timer.fire_now()

    def _connect_main(self, action: Open, previous: threading.Thread | None) -> None:
        """The thread ``wsync-connect-<n>``: one attempt, then (open) the connection's reader."""
        try:
            self._open_here(action, previous, become_reader=True)
        finally:
            with self.lock:
                self._threads.discard(threading.current_thread())

    def _open_here(
        self, action: Open, previous: threading.Thread | None, *, become_reader: bool = False
    ) -> None:
        """One bounded attempt to open a socket, in this thread; then its reader starts.

        With ``become_reader`` (a connect thread), this thread writes the connect frame
        and goes on as the connection's reader: no thread starts between the socket opening
        and the server's confirm (each start costs about 0.1 ms here).
        """
        if previous is not None and previous is not threading.current_thread():
            # The attempt before (cancelled, or done) ends first: they share the connector.
            # It is bounded by its own connect_timeout (it only opens and starts a reader).
            previous.join(action.timeout)
        generation = action.generation
        # A cancel aimed at an earlier attempt that had already finished must not fail this
        # one; close() cancels after setting _closing, which is checked below.
        self._connector.reset()
        with self.lock:
            if self._closing or generation != self.machine.generation:
                return
            self._opening = generation
        try:
            transport = self._connector.open(action.timeout)
        except ConnectError as error:
            with self.lock:
                self._opening = None
                self.machine.on_open_failed(
                    generation, error, self.clock(), retryable=not isinstance(error, TLSError)
                )
                failed = self.drain()
            self.carry_out(failed)
            return
        except BaseException:
            with self.lock:
                self._opening = None
            raise
        with self.lock:
            self._opening = None
            if self._closing or not self.machine.on_open_succeeded(generation, self.clock()):
                # close() or reconnect() came in while opening: this socket is stale.
                later: _Later = [_Teardown(transport, generation, "superseded")]
                become_reader = inline = False
            else:
                self._transports[generation] = transport
                reader = Reader(
                    self,
                    generation,
                    transport,
                    self._malformed_log,
                    name=f"wsync-reader-{self.number}.{generation}",
                )
                self._readers = [r for r in self._readers if r.is_alive()]
                self._reader_objs = [r for r in self._reader_objs if r.thread.is_alive()]
                self._reader_objs.append(reader)
                self._threads = {t for t in self._threads if t.is_alive()}
                if become_reader:
                    me = threading.current_thread()
                    me.name = reader.thread.name
                    reader.thread = me
                    self._readers.append(me)
                    self._threads.add(me)
                    self._connecting = None  # the open is over: the next attempt need not wait
                    controls, _ = self.machine.take_writes(generation, self.clock())
                    inline = True
                else:
                    inline = not _exit.start_thread(reader.thread)
                    if not inline:
                        self._readers.append(reader.thread)
                        self._threads.add(reader.thread)
                later = self.drain()
        self.carry_out(later)
        if become_reader:
            if controls:
                self._writer.write(generation, transport, controls, [])
            reader.run_here()
            return
        if not inline:
            return
        # Python 3.12+ starts no thread once the interpreter is shutting down, and the exit
        # hook's flush may open a connection then (a script that sent and ended at once): this
        # thread (the timer thread, when not even a connect thread could start) reads it
        # itself until it ends; close() aborts it at the exit deadline. Deadlines wait
        # meanwhile, which the exit's own bound makes harmless.
        logger.debug(
            "interpreter shutting down: %s reads connection %d",
            threading.current_thread().name, generation,
        )
        reader.run_here()

    # --- callbacks (on the callbacks thread: look the callback up now, the client may be gone)

    def _call_on_state_change(self, state: ConnectionState) -> None:
        callbacks = self._callbacks()
        if callbacks is not None:
            call_each(callbacks.on_state_change, callbacks.state_listeners, state)

    def _call_on_response(self, response: Response) -> None:
        callbacks = self._callbacks()
        if callbacks is not None:
            call_each(callbacks.on_response, callbacks.response_listeners, response)

    def _call_on_error(self, error: object) -> None:
        callbacks = self._callbacks()
        if callbacks is not None:
            call_each(callbacks.on_error, (), error)

    def change_listeners(
        self,
        on_state_change: StateCallback | None,
        on_response: ResponseCallback | None,
        *,
        add: bool,
    ) -> None:
        """Add (or remove) listeners called after the user's callbacks (``Client.add_listener``)."""
        callbacks = self._callbacks()
        if callbacks is None:
            return
        with self.lock:
            callbacks.state_listeners = changed(callbacks.state_listeners, on_state_change, add)
            callbacks.response_listeners = changed(
                callbacks.response_listeners, on_response, add
            )
            self._has_on_state_change = (
                callbacks.on_state_change is not None or bool(callbacks.state_listeners)
            )
            self._has_on_response = (
                callbacks.on_response is not None or bool(callbacks.response_listeners)
            )

    # --- the durable outbox (on the callbacks thread) ---------------------------------------

    def _flush_forgets(self) -> None:
        """Remove answered/failed messages from the durable outbox."""
        with self._forget_lock:
            with self.lock:
                ids = self._forget_buffer
                self._forget_buffer = []
                self._forget_scheduled = False
            if ids:
                try:
                    self._outbox.discard(ids)
                except Exception:
                    logger.exception(
                        "could not remove %d answered messages from the outbox", len(ids)
                    )

    def _count_deliveries(self, message_ids: tuple[str, ...]) -> None:
        try:
            self._outbox.count_deliveries(message_ids)
        except Exception:
            logger.exception("could not count deliveries of %d messages", len(message_ids))

    # --- FutureOwner ------------------------------------------------------------------------

    def withdraw(self, future: MessageFuture) -> bool:
        """A MessageFuture is being cancelled (in the canceller's thread): withdraw its message.

        False when the message is being written or was written: the cancel must fail.
        """
        self._check_owned()
        try:
            with self.lock:
                entry = self.machine.ledger.get(future.message_id)
                if entry is None or entry.future is not future:
                    return True  # not ours any more (done, or failed): Future.cancel() decides
                if self.machine.withdraw(future.message_id, future) is None:
                    return False  # being written, or written before: too late to cancel
                later = self.drain()
        except BaseException as exc:
            self._step_failed(exc)
            raise
        self.carry_out(later)
        if self._durable:
            # Out of the file before anyone sees the future cancelled.
            self._discard_now([future.message_id])
        return True

    # --- public operations ----------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self.machine.state

    def stats(self) -> Stats:
        self._check_owned()
        with self.lock:
            return self.machine.stats()

    def connect(self, timeout: float | None, wait: bool) -> ConnectionState:
        self._check_owned()
        deadline = Deadline(timeout)
        machine = self.machine
        try:
            with self.lock:
                if self._closing:
                    raise ClientClosed("client is closed")
                self._start_threads()
                machine.connect(self.clock())
                later = self.drain()
                confirms, giveups = machine.confirms, machine.giveups
        except BaseException as exc:
            self._step_failed(exc)
            raise
        self.carry_out(later)
        if not wait:
            return machine.state
        with self.lock:
            while True:
                if machine.status is Status.CONFIRMED or machine.confirms > confirms:
                    return machine.state
                if machine.giveups > giveups and machine.give_up_error is not None:
                    given_up = machine.give_up_error
                    cls = HandshakeError if isinstance(given_up, HandshakeError) else ConnectError
                    phase = getattr(given_up, "phase", None)
                    raise cls(str(given_up), phase=phase) from given_up.__cause__
                if self._closing:
                    raise ClientClosed("client was closed while connecting")
                remaining = deadline.remaining()
                if remaining is not None and remaining <= 0:
                    cause = machine.last_failure
                    why = str(cause) if cause is not None else "no attempt finished in time"
                    timeout_error = ConnectTimeout(
                        f"not confirmed within {timeout:g} s: {why}",
                        phase=getattr(cause, "phase", None),
                    )
                    timeout_error.__cause__ = cause
                    try:
                        machine.stop_trying(self.clock(), timeout_error)
                    except BaseException:
                        machine.repair(self.clock())
                        raise
                    later = self.drain()
                    break
                self._wait_state(remaining)
        self.carry_out(later)
        raise timeout_error

    def reconnect(self) -> None:
        self._check_owned()
        try:
            with self.lock:
                if self._closing:
                    raise ClientClosed("client is closed")
                self._start_threads()
                self.machine.reconnect(self.clock())
                later = self.drain()
        except BaseException as exc:
            self._step_failed(exc)
            raise
        self.carry_out(later)

    def send(self, content: str, message_id: str | None) -> MessageFuture:
        future = self._send(content, message_id, None)[0].future
        assert type(future) is MessageFuture
        return future

    def _send(
        self, content: str, message_id: str | None, lead: threading.Thread | None
    ) -> tuple[Entry, Reader | None]:
        """send(); with ``lead`` (send_and_wait: the calling thread), also take the turn to
        read from the parked reader of the current connection, in the same step (before the
        response can wake it): the caller gives it back with _end_wait()."""
        self._check_owned()
        mid = uuid4_text() if message_id is None else message_id
        text = protocol.encode_message_now(
            client_id=self.client_id, message_id=mid, content=content
        )
        # encode() writes ASCII JSON: characters are bytes.
        if self._max_send_size is not None and len(text) > self._max_send_size:
            raise ValueError(
                f"message {mid} is {len(text)} bytes encoded, over "
                f"max_send_size={self._max_send_size}"
            )
        # send_and_wait's message has a lighter future: only its caller ever sees it.
        entry = Entry(mid, text, MessageFuture(mid, self) if lead is None else Waiter(mid))
        if self._durable:
            self._send_durable(entry, content)
            return entry, None
        queued = False
        lent: Reader | None = None
        try:
            with self.lock:
                self._check_can_send(mid)
                queued = True  # from here on, an exception takes the message back
                inline = self.machine.send(entry, self.clock(), inline=True)
                generation = self.machine.generation
                transport = self._transports.get(generation) if inline else None
                if lead is not None:
                    lent = self._lend(generation, lead)
                later = self.drain()
            if later:
                self.carry_out(later)
            if inline:
                self._write_inline(generation, transport, entry)
        except BaseException:
            if queued:
                self._unsend(entry)
            raise
        return entry, lent

    def _lend(self, generation: int, caller: threading.Thread) -> Reader | None:
        """The parked reader of connection ``generation``, its turn now ``caller``'s, or None.
        Caller holds self.lock."""
        for reader in self._reader_objs:
            if reader.generation == generation:
                return reader if reader.lend(caller) else None
        return None

    def _end_wait(self, me: threading.Thread) -> None:
        """A send_and_wait caller leaves (however): any turn to read lent to it is given back,
        and what it drained and never carried out is carried out. Idempotent."""
        with self.lock:
            for reader in self._reader_objs:
                if reader.lender is me:  # (lead() gave it back already, as a rule)
                    reader.give_back(me)
            owed = bool(self._owed)
        if owed:
            self._recover_owed()

    def _unsend(self, entry: Entry) -> None:
        """send() is leaving by an exception (Ctrl-C) after queueing: take the message back.

        Withdrawn if still queued (the caller never got its future); one already written
        stays in flight and is answered as any other (through ``on_response``).
        """
        machine = self.machine
        with self.lock:
            machine.repair(self.clock(), entry)  # the fast path's turn to write, if unused
            machine.withdraw(entry.message_id, entry.future)
            later = self.drain()
        self.carry_out(later)
        self._recover_owed()

    def _write_inline(self, generation: int, transport: Transport | None, entry: Entry) -> None:
        """The fast path: write a message from send()'s own thread, no thread hop.

        The ledger gave this call the turn to write; whatever happens (a full socket, a lost
        connection, a Ctrl-C), ``finally`` gives it back, and a message not written goes
        back first in line for the writer thread.
        """
        written = False
        error: BaseException | None = None
        try:
            if transport is not None:
                written = transport.try_send_text(entry.text)
        except BaseException as exc:
            if isinstance(exc, TransportClosed):
                error = lost_error("connection lost while writing", exc)
            else:
                # Interrupted in the middle of a write: the stream may hold half a frame, so
                # the connection cannot be trusted; the message is written again after the
                # reconnect (at-least-once).
                error = ConnectError("a write was interrupted", phase="connection")
                if transport is not None:
                    transport.abort()
                raise
        finally:
            try:
                with self.lock:
                    if written:
                        self.machine.written(generation, entry, [entry])
                    else:
                        self.machine.not_written(generation, entry, [entry], error, self.clock())
                    later = self.drain()
            except BaseException as exc:
                self._step_failed(exc, entry)
                raise
            if later:
                self.carry_out(later)
        if written:
            entry.future.mark_running()

    def _send_durable(self, entry: Entry, content: str) -> None:
        """Journal the message before it is queued; concurrent senders share commits."""
        mid = entry.message_id
        with self.lock:
            self._check_can_send(mid)
            self._reserved.add(mid)
            reused = mid in self._forget_buffer
        added = keep = False
        try:
            if reused:
                # The id was answered a moment ago: forget the old row before adding the new.
                self._flush_forgets()
            with self._forget_lock:
                pass  # a batch being forgotten right now may hold this id: let it finish
            # On disk before send() returns, and before the writer can see it. Sends that
            # overlap in time have no order between them; each thread's order is kept.
            self._outbox.add(mid, content)
            added = True
            with self.lock:
                self._reserved.discard(mid)
                if self._closing:
                    keep = True  # stays in the file, like any message left unanswered
                    raise ClientClosed("client is closed")
                self.machine.send(entry, self.clock())
                later = self.drain()
            self.carry_out(later)
        except BaseException:
            # Interrupted (or closed) half-way: the caller gets no future, so the message is
            # not sent: out of the queue and out of the file.
            with self.lock:
                self._reserved.discard(mid)
            self._unsend(entry)
            if added and not keep:
                self._discard_now([mid])
            raise

    def _check_can_send(self, message_id: str) -> None:
        """Caller holds self.lock."""
        if self._closing:
            raise ClientClosed("client is closed")
        ledger = self.machine.ledger
        if message_id in ledger or message_id in self._reserved:
            raise ValueError(f"message_id {message_id!r} is already pending")
        if self._max_queued is not None and ledger.queued >= self._max_queued:
            raise QueueFull(f"{ledger.queued} messages queued (max_queued={self._max_queued})")

    def send_and_wait(
        self, content: str, timeout: float | None, message_id: str | None
    ) -> Response:
        deadline = Deadline(timeout)
        me = threading.current_thread()
        try:
            entry, lent = self._send(content, message_id, me)
            future = entry.future
            if lent is not None:
                # The reader was parked for us: read our own response in this thread.
                lent.lead(entry, deadline.remaining())
            return future.result(deadline.remaining())
        except concurrent.futures.TimeoutError:
            pass
        finally:
            self._end_wait(me)
        text = f"no response to message {future.message_id} within {timeout:g} s"
        try:
            with self.lock:
                # Still queued: withdrawn, never sent. Written: never written again. The
                # future fails in the same step.
                gone = self.machine.time_out(future.message_id, lambda: ResponseTimeout(text))
                later = self.drain()
        except BaseException as exc:
            self._step_failed(exc)
            raise
        self.carry_out(later)
        if gone is None:
            return future.result(0)  # answered (or failed) just now
        raise ResponseTimeout(text)

    def flush(self, timeout: float | None) -> bool:
        self._check_owned()
        return self._flush(Deadline(timeout))

    def _flush(self, deadline: Deadline) -> bool:
        machine = self.machine
        with self.lock:
            drained = self._wait_state(
                deadline.remaining(),
                lambda: (not machine.pending and not self._owed) or self._closing,
            )
            if self._closing:
                return not machine.pending  # close() failed them all; nothing runs any more
            if not drained:
                return False
            if self._dispatch.on_thread():
                return True  # cannot wait for our own queue; the futures left are ours to run
            barrier = self._dispatch.barrier()
        return barrier.wait(deadline.remaining())

    def flush_for_close(self, deadline: Deadline) -> None:
        """close(flush=True): wait for the messages to be answered, if anything can answer them.

        Nothing waits for a client that is not connected and not trying (never connected,
        gave up, or its connect() timed out): its messages cannot go out.
        """
        machine = self.machine
        with self.lock:
            if self._closing or not machine.pending:
                return
            if not machine.trying and machine.status is not Status.CONFIRMED:
                return
        self._flush(deadline)

    def close(self, timeout: float | None, *, flush: bool = True, quiet: bool = False) -> None:
        if not self.owned():
            return  # a forked child: the parent's threads and sockets are not ours to touch
        deadline = Deadline(timeout)
        me = threading.current_thread()
        if flush:
            self.flush_for_close(deadline)
        with self.lock:
            if not self._closing:
                self._closing = True
                self._writer.wake_all()
                for reader in self._reader_objs:
                    reader.wake()
                self._state_cv.notify_all()
            runner = self._close_runner
            if runner is None and not self._closed:
                self._close_runner = me
        if runner is not None or self._close_runner is not me:
            # Closed already, or closing in another thread (or in ours, from a callback).
            if not self._own_thread() and runner is not me:
                with self.lock:
                    self._wait_state(deadline.remaining(), lambda: self._closed)
            return
        try:
            # Again after an interrupt: machine.close() asks again for whatever is not done.
            with self.lock:
                self.machine.close()
                later = self.drain()
                self._dispatch.stop()  # after the CLOSED callback was queued: it still runs
            unanswered = sum(len(a.entries) for a in later if isinstance(a, Fail) and not a.final)
            self.carry_out(later)  # fails the futures left with ClientClosed
            with self.lock:
                self.machine.forget_all()
            self._stop_threads(deadline, me, quiet=quiet)
            self._report_close(unanswered)
            _live.discard(self)
            with self.lock:
                self._closed = True
                self._state_cv.notify_all()
        finally:
            with self.lock:
                self._close_runner = None  # interrupted: the next close() finishes the job

    def _stop_threads(self, deadline: Deadline, me: threading.Thread, *, quiet: bool) -> None:
        # The timer thread forgets this client (and ends if it was the last one).
        timer = self._timer.stop()
        # A running writer sends the close frames and ends; else this thread sends them.
        # Then give the server a moment to answer them.
        limit = deadline.remaining()
        grace = CLOSE_HANDSHAKE if limit is None else min(CLOSE_HANDSHAKE, limit / 2)
        grace_deadline = Deadline(grace)
        for transport in self._writer.stop(grace_deadline.remaining()):
            transport.send_close()  # best effort, bounded (about 0.25 s at most)
        with self.lock:
            writers = self._writer.threads()
            connecting = None if self._connecting is None else self._connecting()
            readers = [r for r in self._readers if r.ident is not None]
        for reader in readers:
            if reader is not me:
                reader.join(grace_deadline.remaining())
        # Tear down whatever is left: sockets (wakes readers and a blocked writer), an open.
        with self.lock:
            transports = self._writer.closing_transports + list(self._transports.values())
            self._transports.clear()
        for transport in transports:
            transport.abort()
        self._connector.cancel()
        stragglers: list[str] = []
        resolver = self._connector.resolver
        if resolver is not None:
            # A DNS lookup cannot be interrupted: one that hangs is waited for, then named.
            resolver.join(deadline.remaining())
            if resolver.is_alive():
                stragglers.append(resolver.name)
        threads = [*writers, *([connecting] if connecting is not None else [])]
        if timer is not None:
            threads.append(timer)
        for thread in (*threads, *readers):
            if thread is me:
                continue
            thread.join(deadline.remaining())
            if thread.is_alive():
                stragglers.append(thread.name)
        dispatch = self._dispatch
        if dispatch.thread is None:
            dispatch.drain_inline()  # never connected: run the callbacks here
        elif not dispatch.on_thread():
            dispatch.thread.join(deadline.remaining())
            if dispatch.thread.is_alive():
                # The deadline: drop what waits, but the CLOSED state change, and give the
                # callback running now a moment to end; then drop that too.
                with self.lock:
                    dispatch.cut(keep=self._is_closed_notice)
                dispatch.thread.join(CLOSED_NOTICE_GRACE)
                if dispatch.thread.is_alive():
                    with self.lock:
                        dispatch.cut()  # no callback starts after close() returns
                    stragglers.append(dispatch.thread.name)
        if dispatch.on_thread():
            with self.lock:
                dispatch.put(self._release_outbox)
        else:
            self._release_outbox()
        if stragglers and not quiet:
            logger.warning("close() timed out; still running: %s", ", ".join(stragglers))

    def _is_closed_notice(self, fn: object, args: tuple[object, ...]) -> bool:
        return (
            fn == self._call_on_state_change
            and isinstance(args[0], ConnectionState)
            and args[0].status is Status.CLOSED
        )

    def _report_close(self, unanswered: int) -> None:
        dropped = self._dispatch.dropped
        if not unanswered and not dropped:
            return
        parts = []
        if unanswered:
            where = (
                "they stay in the outbox file for the next client with this client_id"
                if self._durable
                else "they failed with ClientClosed"
            )
            parts.append(f"{unanswered} messages left unanswered ({where})")
        if dropped:
            parts.append(f"{dropped} callbacks dropped at the close deadline")
        logger.warning("closed %s: %s", redact_url(self.url), "; ".join(parts))

    def _release_outbox(self) -> None:
        if self._durable and self._forget_buffer:
            self._flush_forgets()
        try:
            self._outbox.release()
        except Exception:
            logger.exception("could not release the outbox")

    def close_soon(self) -> None:
        """Close a forgotten client (its facade was garbage-collected), without waiting.

        The collector may run in any thread, even one of ours while it holds ``lock``: so
        the close runs in a thread of its own, never in the caller.
        """
        if not self._closing and self.owned():
            # At interpreter shutdown no thread starts: the exit hook closes it then.
            _exit.start_thread(threading.Thread(
                target=self._close_forgotten, name=f"wsync-finalizer-{self.number}", daemon=True
            ))

    def _close_forgotten(self) -> None:
        try:
            self.close(timeout=1.0, flush=False, quiet=True)
        except Exception:
            logger.exception("internal error while closing a forgotten client")
