"""The engine: owns the machine, the transport, the outbox and the threads; carries out actions.

Its one job: the ``Engine`` object's state and lifecycle: construction, carrying out the
machine's actions (``_apply`` under the lock, ``_carry_out`` outside it), and the public
operations (connect, send, send_and_wait, flush, reconnect, close). It must not hold the
thread bodies (``_loops``, which lists the threads and the locking rules) nor standalone
helpers (``_support``; re-exported here for the code that imports them from this module).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from wsync import protocol
from wsync._backoff import Backoff
from wsync._connection import Transport
from wsync._errors import ClientClosed, ConnectError, ConnectTimeout, ResponseTimeout
from wsync._futures import MessageFuture
from wsync._handshake import Connector, redact_url
from wsync._loops import ThreadLoops
from wsync._machine import (
    Abort,
    Action,
    Entry,
    Fail,
    Forget,
    Machine,
    Notify,
    OnError,
    OnResponse,
    Open,
    Resolve,
)
from wsync._outbox import MemoryOutbox, Outbox
from wsync._support import (
    CLOSE_HANDSHAKE,
    MALFORMED_WARNINGS,
    MALFORMED_WINDOW,
    Callbacks,
    Clock,
    Deadline,
    ErrorCallback,
    ResponseCallback,
    StateCallback,
    _call_each,
    _changed,
    _MalformedLog,
    uuid4_text,
)
from wsync._values import ConnectionState, Stats, Status
from wsync.protocol import Response

__all__ = [
    "CLOSE_HANDSHAKE",
    "MALFORMED_WARNINGS",
    "MALFORMED_WINDOW",
    "Callbacks",
    "Clock",
    "ConnectError",
    "Deadline",
    "Engine",
    "ErrorCallback",
    "ResponseCallback",
    "StateCallback",
    "uuid4_text",
]

logger = logging.getLogger("wsync")

_live: weakref.WeakSet[Engine] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for engine in list(_live):
        engine.close(timeout=1.0)


atexit.register(_close_all_at_exit)


class Engine(ThreadLoops):
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
        connector: Connector,
        clock: Clock = time.monotonic,
    ) -> None:
        self.url = url
        self.client_id = client_id
        self._callbacks = weakref.ref(callbacks)
        self._has_on_state_change = callbacks.on_state_change is not None
        self._has_on_response = callbacks.on_response is not None
        self._has_on_error = callbacks.on_error is not None
        self._max_queued = max_queued
        self._clock = clock
        self._connector = connector

        self._lock = threading.Lock()  # guards everything below that changes
        self._timer_cv = threading.Condition(self._lock)
        self._writer_cv = threading.Condition(self._lock)
        self._state_cv = threading.Condition(self._lock)  # connect()/flush() waiters
        self._machine = Machine(
            client_id=client_id,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            backoff=backoff,
            connect_timeout=connect_timeout,
            rate_limit=rate_limit,
            now=clock(),
        )
        from wsync._dispatch import Dispatcher

        self._dispatch = Dispatcher(self._lock)
        self._transports: dict[int, Transport] = {}
        self._opening: int | None = None  # generation of the open in flight
        self._readers: list[threading.Thread] = []
        self._writer: threading.Thread | None = None
        self._timer: threading.Thread | None = None
        # Who writes on the socket right now: None, "writer" (a batch) or "inline" (a send()
        # on the fast path). One at a time, so frames leave in the order they were taken.
        self._write_owner: str | None = None
        self._closing = False
        self._closing_transports: list[Transport] = []  # get a close frame from the writer
        self._closed_event = threading.Event()
        self._malformed_log = _MalformedLog()
        self._forget_buffer: list[str] = []
        self._forget_scheduled = False

        self._outbox: Outbox = outbox if outbox is not None else MemoryOutbox()
        self._durable = not isinstance(self._outbox, MemoryOutbox)
        self._reserved: set[str] = set()  # durable sends between their check and enqueue
        self._forget_lock = threading.Lock()  # held while the outbox forgets a batch
        leftovers = self._outbox.claim(client_id)
        for stored in leftovers:
            self._machine.send(self._new_entry(stored.message_id, stored.content))
        if leftovers:
            logger.info("%d unanswered messages from the outbox will be sent first", len(leftovers))
        _live.add(self)

    # --- helpers ------------------------------------------------------------------------

    def _new_entry(self, message_id: str, content: str) -> Entry:
        text = protocol.encode_message_now(
            client_id=self.client_id, message_id=message_id, content=content
        )
        return Entry(message_id, content, text, MessageFuture(message_id, self._cancelled))

    def _ensure_threads(self) -> None:
        """Start the writer, timer and callbacks threads once. Caller holds self._lock."""
        assert self._lock.locked()
        if self._writer is not None:
            return
        self._dispatch.enable()
        self._writer = threading.Thread(target=self._writer_main, name="wsync-writer", daemon=True)
        self._timer = threading.Thread(target=self._timer_main, name="wsync-timer", daemon=True)
        self._writer.start()
        self._timer.start()

    def _apply(self, actions: list[Action]) -> list[tuple[Action, Transport | None]]:
        """Carry out what can be done under the lock; return the rest. Caller holds self._lock."""
        later: list[tuple[Action, Transport | None]] = []
        dispatch = self._dispatch
        for action in actions:
            kind = type(action)
            if kind is Resolve:
                assert isinstance(action, Resolve)
                future = action.entry.future
                if not future.try_set_result_fast(action.response):
                    dispatch.put(future.set_result_safe, action.response)
            elif kind is OnResponse:
                if self._has_on_response:
                    assert isinstance(action, OnResponse)
                    dispatch.put(self._call_on_response, action.response)
            elif kind is Forget:
                if self._durable:
                    assert isinstance(action, Forget)
                    self._forget_buffer.extend(action.message_ids)
                    if not self._forget_scheduled:
                        self._forget_scheduled = True
                        dispatch.put(self._flush_forgets)
            elif kind is Notify:
                assert isinstance(action, Notify)
                if action.state.status is Status.CONNECTING:
                    logger.debug("connecting (attempt %d)", action.state.attempt)
                elif action.state.status is Status.DISCONNECTED and action.state.error:
                    logger.info("disconnected: %s", action.state.error)
                else:
                    logger.info("%s", action.state.status.value)
                if self._has_on_state_change:
                    dispatch.put(self._call_on_state_change, action.state)
            elif kind is Fail:
                assert isinstance(action, Fail)
                if self._durable and action.final:
                    # Out of the file first, then the user is told: a process killed in
                    # between must not send a message its user was told never goes out.
                    later.append((action, None))
                else:
                    self._fail(action)
            elif kind is OnError:
                if self._has_on_error:
                    assert isinstance(action, OnError)
                    dispatch.put(self._call_on_error, action.error)
            elif kind is Abort:
                assert isinstance(action, Abort)
                later.append((action, self._transports.pop(action.generation, None)))
            else:
                later.append((action, None))
        machine = self._machine
        if machine.wake_writer:
            machine.wake_writer = False
            self._writer_cv.notify()
        if machine.wake_timer:
            machine.wake_timer = False
            self._timer_cv.notify()
        if machine.wake_waiters:
            machine.wake_waiters = False
            self._state_cv.notify_all()
        return later

    def _fail(self, action: Fail) -> None:
        """Fail the futures. Caller holds self._lock."""
        for entry in action.entries:
            error = action.error()
            if not entry.future.try_set_exception_fast(error):
                self._dispatch.put(entry.future.set_exception_safe, error)

    def _discard_now(self, message_ids: Sequence[str]) -> None:
        """Remove messages from the durable outbox in this thread. Caller does not hold _lock."""
        try:
            self._outbox.discard(message_ids)
        except Exception:
            logger.exception("could not remove %d messages from the outbox", len(message_ids))

    def _carry_out(self, later: list[tuple[Action, Transport | None]]) -> None:
        """Carry out actions that do I/O. Caller does not hold self._lock."""
        for action, transport in later:
            if type(action) is Fail:
                assert isinstance(action, Fail)
                self._discard_now([e.message_id for e in action.entries])
                with self._lock:
                    self._fail(action)
                continue
            if type(action) is Abort:
                assert isinstance(action, Abort)
                if transport is not None:
                    logger.debug("aborting connection %d: %s", action.generation, action.reason)
                    transport.abort()
                else:
                    with self._lock:
                        # Only the attempt still in flight; cancel() never blocks.
                        if self._opening == action.generation:
                            self._connector.cancel()
            elif type(action) is Open:
                assert isinstance(action, Open)
                self._open(action)

    # On the callbacks thread: look the callback up now (the client may be gone).

    def _call_on_state_change(self, state: ConnectionState) -> None:
        callbacks = self._callbacks()
        if callbacks is not None:
            _call_each(callbacks.on_state_change, callbacks.state_listeners, state)

    def _call_on_response(self, response: Response) -> None:
        callbacks = self._callbacks()
        if callbacks is not None:
            _call_each(callbacks.on_response, callbacks.response_listeners, response)

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
        with self._lock:
            callbacks.state_listeners = _changed(callbacks.state_listeners, on_state_change, add)
            callbacks.response_listeners = _changed(
                callbacks.response_listeners, on_response, add
            )
            self._has_on_state_change = (
                callbacks.on_state_change is not None or bool(callbacks.state_listeners)
            )
            self._has_on_response = (
                callbacks.on_response is not None or bool(callbacks.response_listeners)
            )

    def _call_on_error(self, error: Any) -> None:
        callbacks = self._callbacks()
        if callbacks is not None and callbacks.on_error is not None:
            callbacks.on_error(error)

    def _flush_forgets(self) -> None:
        """Remove answered/failed messages from the durable outbox (on the callbacks thread)."""
        with self._forget_lock:
            with self._lock:
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

    def _cancelled(self, future: MessageFuture) -> None:
        """A MessageFuture was cancelled (in the canceller's thread)."""
        with self._lock:
            holder = self._machine.pending.get(future.message_id)
            reused = holder is not None and holder.future is not future  # a newer message's id
            later = self._apply(self._machine.discard(future.message_id, future))
        self._carry_out(later)
        if self._durable and not reused:
            # Out of the file before anyone sees the future cancelled (see MessageFuture.cancel).
            self._discard_now([future.message_id])

    # --- public operations ----------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._machine.state

    @property
    def closing(self) -> bool:
        return self._closing

    def stats(self) -> Stats:
        with self._lock:
            return self._machine.stats()

    def connect(self, timeout: float | None, wait: bool) -> ConnectionState:
        deadline = Deadline(timeout)
        with self._lock:
            if self._closing:
                raise ClientClosed("client is closed")
            self._ensure_threads()
            machine = self._machine
            later = self._apply(machine.connect(self._clock()))
            confirms, giveups = machine.confirms, machine.giveups
        self._carry_out(later)
        if not wait:
            return machine.state
        with self._lock:
            while True:
                if machine.status is Status.CONFIRMED or machine.confirms > confirms:
                    return machine.state
                if machine.giveups > giveups and machine.give_up_error is not None:
                    given_up = machine.give_up_error
                    error = type(given_up)(str(given_up))
                    raise error from given_up.__cause__
                if self._closing:
                    raise ClientClosed("client was closed while connecting")
                remaining = deadline.remaining()
                if remaining is not None and remaining <= 0:
                    cause = machine.last_failure
                    timeout_error = ConnectTimeout(
                        f"not confirmed within {timeout:g} s: {redact_url(self.url)}"
                    )
                    timeout_error.__cause__ = cause
                    later = self._apply(machine.stop_trying(self._clock(), timeout_error))
                    break
                self._state_cv.wait(remaining)
        self._carry_out(later)
        raise timeout_error

    def reconnect(self) -> None:
        with self._lock:
            if self._closing:
                raise ClientClosed("client is closed")
            self._ensure_threads()
            later = self._apply(self._machine.reconnect(self._clock()))
        self._carry_out(later)

    def send(self, content: str, message_id: str | None) -> MessageFuture:
        mid = uuid4_text() if message_id is None else message_id
        entry = self._new_entry(mid, content)
        if self._durable:
            return self._send_durable(entry, content)
        with self._lock:
            self._check_can_send(mid)
            if self._write_owner is None:
                inline = self._machine.send_inline(entry, self._clock())
            else:
                self._machine.send(entry)
                inline = False
            if inline:
                self._write_owner = "inline"
                generation = self._machine.generation
                transport = self._transports.get(generation)
            else:
                if self._machine.wake_writer:
                    self._machine.wake_writer = False
                    self._writer_cv.notify()
                return entry.future
        self._write_inline(generation, transport, entry)
        return entry.future

    def _send_durable(self, entry: Entry, content: str) -> MessageFuture:
        """Journal the message before it is queued; concurrent senders share commits."""
        mid = entry.message_id
        with self._lock:
            self._check_can_send(mid)
            self._reserved.add(mid)
            reused = mid in self._forget_buffer
        try:
            if reused:
                # The id was answered a moment ago: forget the old row before adding the new.
                self._flush_forgets()
            with self._forget_lock:
                pass  # a batch being forgotten right now may hold this id: let it finish
            # On disk before send() returns, and before the writer can see it. Sends that
            # overlap in time have no order between them; each thread's order is kept.
            self._outbox.add(mid, content)
        except BaseException:
            with self._lock:
                self._reserved.discard(mid)
            raise
        with self._lock:
            self._reserved.discard(mid)
            if self._closing:
                raise ClientClosed("client is closed")  # stays in the file, like any unanswered
            self._machine.send(entry)
            self._apply([])
        return entry.future

    def _check_can_send(self, message_id: str) -> None:
        """Caller holds self._lock."""
        if self._closing:
            raise ClientClosed("client is closed")
        if message_id in self._machine.pending or message_id in self._reserved:
            raise ValueError(f"message_id {message_id!r} is already pending")
        if self._max_queued is not None and self._machine.queued >= self._max_queued:
            from wsync._errors import QueueFull

            raise QueueFull(
                f"{self._machine.queued} messages queued (max_queued={self._max_queued})"
            )

    def send_and_wait(
        self, content: str, timeout: float | None, message_id: str | None
    ) -> Response:
        future = self.send(content, message_id)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            pass
        text = f"no response to message {future.message_id} within {timeout:g} s"
        with self._lock:
            machine = self._machine
            # Still queued: withdrawn, never sent. Written: never written again. The future
            # fails in the same hold of the lock, so a writer holding the entry right now
            # finds it done and skips it.
            entry = machine.withdraw(future.message_id) or machine.abandon(future.message_id)
            later = (
                self._apply(
                    [Fail((entry,), lambda: ResponseTimeout(text)), Forget((entry.message_id,))]
                )
                if entry is not None
                else []
            )
        self._carry_out(later)
        if entry is None:
            return future.result(0)  # answered (or failed) just now
        raise ResponseTimeout(text)

    def flush(self, timeout: float | None) -> bool:
        deadline = Deadline(timeout)
        with self._lock:
            machine = self._machine
            drained = self._state_cv.wait_for(
                lambda: not machine.pending or self._closing, deadline.remaining()
            )
            if self._closing:
                return not machine.pending  # close() failed them all; nothing runs any more
            if not drained:
                return False
            if self._dispatch.on_thread():
                return True  # cannot wait for our own queue; the futures left are ours to run
            barrier = self._dispatch.barrier()
        return barrier.wait(deadline.remaining())

    def close(self, timeout: float | None, *, quiet: bool = False) -> None:
        deadline = Deadline(timeout)
        me = threading.current_thread()
        with self._lock:
            first = not self._closing
            if first:
                self._closing = True
                later = self._apply(self._machine.close())
                # The machine's Abort is carried out below, after the writer's close frame.
                self._closing_transports = [t for _, t in later if t is not None]
                self._closing_transports += self._transports.values()
                self._transports.clear()
                self._dispatch.stop()
                self._writer_cv.notify_all()
                self._timer_cv.notify_all()
                self._state_cv.notify_all()
        if not first:
            if not me.name.startswith("wsync-"):
                self._closed_event.wait(deadline.remaining())
            return
        # The writer sends a close frame and ends; give the server a moment to answer it.
        limit = deadline.remaining()
        grace = CLOSE_HANDSHAKE if limit is None else min(CLOSE_HANDSHAKE, limit / 2)
        grace_deadline = Deadline(grace)
        writer, timer = self._writer, self._timer
        if writer is not None and writer is not me:
            writer.join(grace_deadline.remaining())
        with self._lock:
            readers = list(self._readers)
        for reader in readers:
            if reader is not me:
                reader.join(grace_deadline.remaining())
        # Tear down whatever is left: sockets (wakes readers and a blocked writer), an open.
        with self._lock:
            transports = self._closing_transports + list(self._transports.values())
            self._transports.clear()
        for transport in transports:
            transport.abort()
        self._connector.cancel()
        stragglers: list[str] = []
        for thread in (writer, timer, *readers):
            if thread is None or thread is me:
                continue
            thread.join(deadline.remaining())
            if thread.is_alive():
                stragglers.append(thread.name)
        if self._dispatch.thread is None:
            self._dispatch.drain_inline()  # never connected: run the callbacks here
        elif not self._dispatch.on_thread():
            self._dispatch.thread.join(deadline.remaining())
            if self._dispatch.thread.is_alive():
                stragglers.append(self._dispatch.thread.name)
        if self._dispatch.on_thread():
            with self._lock:
                self._dispatch.put(self._release_outbox)
        else:
            self._release_outbox()
        if stragglers and not quiet:
            logger.warning("close() timed out; still running: %s", ", ".join(stragglers))
        _live.discard(self)
        self._closed_event.set()

    def _release_outbox(self) -> None:
        if self._durable and self._forget_buffer:
            self._flush_forgets()
        try:
            self._outbox.release()
        except Exception:
            logger.exception("could not release the outbox")

    def close_soon(self) -> None:
        """Close a forgotten client (its facade was garbage-collected), without waiting.

        The collector may run in any thread, even one of ours while it holds ``_lock``: so
        the close runs in a thread of its own, never in the caller.
        """
        if not self._closing:
            threading.Thread(
                target=self._close_forgotten, name="wsync-finalizer", daemon=True
            ).start()

    def _close_forgotten(self) -> None:
        try:
            self.close(timeout=1.0, quiet=True)
        except Exception:
            logger.exception("internal error while closing a forgotten client")

