"""The engine's thread bodies: timer, writer and readers, and the send fast path's write.

Its one job: what each wsync thread does with the socket and the clock. It must not hold
public operations, user-facing argument checks or the outbox's bookkeeping (those are
``Engine``'s), and it never runs user code itself: callbacks go through the dispatcher.
``ThreadLoops`` is a mixin; ``Engine`` inherits it and owns every attribute declared below.

Threads (each named ``wsync-<role>``, daemon only as a safety net; ``close()`` joins them):

========================  ==================================================================
``wsync-reader-<n>``      one per connection: reads, decodes, feeds the machine, hands off.
                          Never runs user code; resolves a future itself only when the future
                          has no done-callbacks (no thread hop on the hot path).
``wsync-writer``          control frames first (connect, ping, pong), then messages in order,
                          batched into one ``sendall``. A long queue flush never stops the
                          reader, so a server that answers while we write cannot deadlock us.
                          (With nothing queued or in flight, ``send()`` writes its message in
                          its own thread if the socket has room at once: ``_write_inline``;
                          one writer at a time, in order, through ``_write_owner``.)
``wsync-timer``           deadlines: backoff delays, the attempt itself (a bounded, cancellable
                          open), the confirm timeout, pings and the pong timeout.
``wsync-callbacks``       every user callback, in order (see ``_dispatch``); started with
                          the first one, so a client without callbacks runs three threads.
========================  ==================================================================

One lock (``_lock``) guards the machine and the engine's bookkeeping; the conditions
that wake the writer, the timer and callers waiting in ``connect``/``flush`` all share
it. Holding it means no I/O, no user code and no waiting. Threads start with the first
``connect()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from wsync import protocol
from wsync._connection import MalformedFrame, Transport, TransportClosed
from wsync._errors import ConnectError, ProtocolError, TLSError
from wsync._handshake import Connector
from wsync._machine import Abort, Action, Control, Entry, EntryState, Forget, Machine, Open
from wsync._support import Clock, _MalformedLog
from wsync.protocol import Response

if TYPE_CHECKING:
    from wsync._dispatch import Dispatcher  # imported late by Engine.__init__, so here too

__all__ = ["ThreadLoops"]

logger = logging.getLogger("wsync")


class ThreadLoops:
    """The thread bodies of ``Engine``. Holds no state of its own: ``Engine`` sets it all."""

    # Set by Engine.__init__; see there for what each one guards or means.
    client_id: str
    _clock: Clock
    _connector: Connector
    _lock: threading.Lock
    _timer_cv: threading.Condition
    _writer_cv: threading.Condition
    _state_cv: threading.Condition
    _machine: Machine
    _dispatch: Dispatcher
    _transports: dict[int, Transport]
    _opening: int | None
    _readers: list[threading.Thread]
    _write_owner: str | None
    _closing: bool
    _closing_transports: list[Transport]
    _malformed_log: _MalformedLog
    _durable: bool
    _has_on_response: bool
    # Engine's methods the threads call.
    _apply: Callable[[list[Action]], list[tuple[Action, Transport | None]]]
    _carry_out: Callable[[list[tuple[Action, Transport | None]]], None]
    _call_on_response: Callable[[Response], None]

    if TYPE_CHECKING:

        @property
        def closing(self) -> bool: ...

    # --- the send fast path (runs in the caller of send()) --------------------------------

    def _write_inline(self, generation: int, transport: Transport | None, entry: Entry) -> None:
        """The fast path: write a message from send()'s own thread, no thread hop.

        Nobody else has the future yet, so nothing can cancel it between the state change to
        RUNNING and the write; if the write cannot happen at once, it goes back to PENDING and
        the writer thread writes the message first thing.
        """
        future = entry.future
        if not future.set_running_or_notify_cancel():
            # Cancelled after all (only a hook could: nobody else has the future yet).
            with self._lock:
                self._write_owner = None
                later = self._apply(self._machine.writes_done(generation, (), (entry,)))
                if self._machine.has_writes():
                    self._writer_cv.notify()
            self._carry_out(later)
            return
        error: TransportClosed | None = None
        written = False
        try:
            if transport is not None:
                written = transport.try_send_text(entry.text)
        except TransportClosed as exc:
            error = exc
        except BaseException:
            # A bug below: the writer takes the message over; the fast path must not wedge.
            logger.exception("internal error on the send fast path")
        with self._lock:
            self._write_owner = None
            machine = self._machine
            if written:
                later = self._apply(machine.writes_done(generation, (entry,)))
            else:
                future.unset_running()
                machine.inline_failed(generation, entry)
                later = self._apply([])
                if error is not None:
                    later += self._lost_while_writing(generation, error)
            if machine.has_writes():
                self._writer_cv.notify()
        if later:
            self._carry_out(later)

    # --- the timer thread -----------------------------------------------------------------

    def _timer_main(self) -> None:
        while True:
            try:
                self._timer_loop()
                return
            except Exception:
                self._internal_error("timer")

    def _timer_loop(self) -> None:
        machine = self._machine
        while True:
            with self._lock:
                while True:
                    if self._closing:
                        return
                    now = self._clock()
                    later = self._apply(machine.on_timer(now))
                    if later:
                        break
                    deadline = machine.next_deadline()
                    self._timer_cv.wait(None if deadline is None else max(0.0, deadline - now))
            self._carry_out(later)

    def _open(self, action: Open) -> None:
        """On the timer thread: one bounded attempt to open a socket."""
        generation = action.generation
        # A cancel aimed at an earlier attempt that had already finished must not fail this
        # one; close() cancels after setting _closing, which is checked below.
        self._connector.reset()
        with self._lock:
            if self._closing or generation != self._machine.generation:
                return
            self._opening = generation
        try:
            try:
                transport = self._connector.open(action.timeout)
            except ConnectError:
                raise
            except Exception as exc:  # a bug below us must not kill the timer thread
                logger.exception("internal error while opening a connection")
                raise ConnectError(f"internal error while opening: {type(exc).__name__}") from exc
        except ConnectError as error:
            with self._lock:
                self._opening = None
                later = self._apply(
                    self._machine.on_open_failed(
                        generation, error, self._clock(), retryable=not isinstance(error, TLSError)
                    )
                )
            logger.debug("attempt failed: %s", error)
            self._carry_out(later)
            return
        with self._lock:
            self._opening = None
            if self.closing:  # the property: close() may have run while we were opening
                later = [(Abort(generation, "client closed"), transport)]
            else:
                actions = self._machine.on_open_succeeded(generation, self._clock())
                if any(type(a) is Abort for a in actions):
                    later = [(Abort(generation, "superseded"), transport)]
                else:
                    self._transports[generation] = transport
                    reader = threading.Thread(
                        target=self._reader_main,
                        args=(generation, transport),
                        name=f"wsync-reader-{generation}",
                        daemon=True,
                    )
                    self._readers = [r for r in self._readers if r.is_alive()]
                    self._readers.append(reader)
                    reader.start()
                    later = self._apply(actions)
        self._carry_out(later)

    # --- the writer thread ----------------------------------------------------------------

    def _writer_main(self) -> None:
        while True:
            try:
                self._writer_loop()
                return
            except Exception:
                self._internal_error("writer")

    def _writer_loop(self) -> None:
        machine = self._machine
        while True:
            with self._lock:
                while True:
                    if self._closing:
                        transports = list(self._closing_transports)
                        break
                    if machine.has_writes() and self._write_owner is None:
                        now = self._clock()
                        if not machine.controls:
                            next_at = machine.next_write_at(now)
                            if next_at is not None and next_at > now:
                                self._writer_cv.wait(next_at - now)
                                continue
                        generation = machine.generation
                        controls, entries = machine.take_writes(generation, now)
                        transport = self._transports.get(generation)
                        self._write_owner = "writer"
                        break
                    self._writer_cv.wait()
            if self._closing:
                for each in transports:
                    each.send_close()
                return
            self._write(generation, transport, controls, entries)

    def _write(
        self,
        generation: int,
        transport: Transport | None,
        controls: Sequence[Control],
        entries: Sequence[Entry],
    ) -> None:
        texts: list[str] = []
        for control in controls:
            texts.append(self._control_text(control))
        written: list[Entry] = []
        skipped: list[Entry] = []
        for entry in entries:
            future = entry.future
            if entry.state is EntryState.DONE:
                ok = False  # withdrawn, abandoned or failed since it was taken
            elif future.running():
                ok = True  # written before, on a lost connection: write it again
            elif future.done():
                ok = False  # cancelled or timed out meanwhile: never written
            else:
                try:
                    ok = future.set_running_or_notify_cancel()
                except RuntimeError:
                    ok = False  # failed meanwhile (timed out): never written again
            if ok:
                texts.append(entry.text)
                written.append(entry)
            else:
                skipped.append(entry)
        error: TransportClosed | None = None
        if texts and transport is not None:
            try:
                transport.send_texts(texts)
            except TransportClosed as exc:
                error = exc
        with self._lock:
            self._write_owner = None
            # After a failed write nothing counts as written: the loss below queues it all again.
            done = written if error is None else []
            later = self._apply(self._machine.writes_done(generation, done, skipped))
            if error is not None:
                later += self._lost_while_writing(generation, error)
        self._carry_out(later)

    def _lost_while_writing(
        self, generation: int, error: TransportClosed
    ) -> list[tuple[Action, Transport | None]]:
        """A write found the connection gone. Caller holds self._lock."""
        lost = ConnectError(f"connection lost while writing: {error}")
        lost.__cause__ = error
        return self._apply(self._machine.on_connection_lost(generation, lost, self._clock()))

    def _control_text(self, control: Control) -> str:
        if control is Control.PING:
            return protocol.encode(protocol.Ping(timestamp=protocol.now()))
        if control is Control.PONG:
            return protocol.encode(protocol.Pong(timestamp=protocol.now()))
        return protocol.encode(protocol.Connect(client_id=self.client_id, timestamp=protocol.now()))

    # --- the reader threads ---------------------------------------------------------------

    def _reader_main(self, generation: int, transport: Transport) -> None:
        try:
            self._reader_loop(generation, transport)
        except Exception:
            transport.abort()
            self._internal_error("reader", generation)

    def _reader_loop(self, generation: int, transport: Transport) -> None:
        machine = self._machine
        decode = protocol.decode
        while True:
            try:
                data = transport.recv()
            except MalformedFrame as exc:
                self._malformed(str(exc))
                continue
            except TransportClosed as exc:
                lost = ConnectError(f"connection lost: {exc}")
                lost.__cause__ = exc
                with self._lock:
                    later = self._apply(machine.on_connection_lost(generation, lost, self._clock()))
                self._carry_out(later)
                return
            if type(data) is not str:
                self._malformed(f"binary frame of {len(data)} bytes")
                continue
            try:
                frame = decode(data)
            except ProtocolError as exc:
                self._malformed(f"{exc} ({len(data)} characters)")
                continue
            if type(frame) is Response:
                with self._lock:
                    self._on_response(generation, frame)
                continue
            with self._lock:
                later = self._apply(machine.on_frame(generation, frame, self._clock()))
            if later:
                self._carry_out(later)

    def _on_response(self, generation: int, frame: Response) -> None:
        """The hot path of the reader: what ``_apply(machine.on_frame(...))`` does for a response,
        without building the actions. Caller holds self._lock."""
        machine = self._machine
        if not machine.is_current(generation):
            return  # a stale connection's response: ignored, like every stale frame
        entry = machine.answer(generation, frame)
        if entry is not None:
            future = entry.future
            if not future.try_set_result_fast(frame):
                self._dispatch.put(future.set_result_safe, frame)
            if self._durable:
                self._apply([Forget((entry.message_id,))])
            if not machine.pending:
                self._state_cv.notify_all()
        if self._has_on_response:
            self._dispatch.put(self._call_on_response, frame)

    def _malformed(self, reason: str) -> None:
        with self._lock:
            self._machine.on_malformed()
        self._malformed_log.report(reason, time.monotonic())

    def _internal_error(self, role: str, generation: int | None = None) -> None:
        """A bug below: log it, treat the connection as lost, and (for a loop) pause briefly."""
        logger.exception("internal error in the %s thread", role)
        if self._closing:
            return
        with self._lock:
            if role == "writer":
                self._write_owner = None  # whatever it was writing is lost with the connection
            if generation is None:
                # The writer and timer loops restart after this: never a hot loop of errors.
                cv = self._timer_cv if role == "timer" else self._writer_cv
                cv.wait(0.1)
                generation = self._machine.generation
            error = ConnectError(f"internal error in the {role} thread")
            later = self._apply(self._machine.on_connection_lost(generation, error, self._clock()))
        self._carry_out(later)
