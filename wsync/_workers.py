"""The client's background work: a :class:`Writer` thread while there is a backlog, a
:class:`Timer` on the shared timer thread, a :class:`Reader` thread per connection.

Its one job: what each wsync thread does with the socket and the clock, given its
collaborators explicitly (a :class:`Host`: the engine's lock, machine and clock, and the two
halves of a step, ``drain`` under the lock and ``carry_out`` outside it). It must not hold
public operations, argument checks or the outbox's bookkeeping (the engine's), and it never
runs user code: callbacks go through the dispatcher, futures are settled by the engine.

Threads (each named ``wsync-<role>[-<client>]``, daemon only as a safety net; ``close()``
joins them). An idle connected client runs one thread of its own, its reader:

==============================  ============================================================
``wsync-reader-<client>.<n>``   one per connection: reads, decodes, feeds the machine,
                                hands off. Never runs user code, never waits on a writer.
``wsync-writer-<client>``       only while there is something to write: control frames
                                first (connect, ping, pong), then messages in order,
                                batched into one ``sendall``; started (outside the lock) by
                                whoever wakes it when none runs, it ends once nothing is
                                left (after WRITER_IDLE seconds without messages). A long
                                queue flush never stops the reader, so a server that answers
                                while we write cannot deadlock us. (With nothing queued or
                                in flight, ``send()`` writes its message in its own thread
                                if the socket has room at once: the engine's fast path; the
                                ledger gives the turn to write to one writer at a time.)
``wsync-timer``                 ONE for the process (``_scheduler``): every client's
                                deadlines (backoff delays, attempt and confirm timeouts,
                                pings, pong timeout). Never blocks: an attempt to connect
                                goes to a connect thread.
``wsync-connect-<client>``      one per attempt (the engine's): a bounded, cancellable open;
                                then it writes the connect frame and goes on as the new
                                connection's reader (renamed ``wsync-reader-...``).
``wsync-callbacks-<client>``    every user callback, in order (``_dispatch``); started with
                                the first one.
==============================  ============================================================

Python 3.12+ starts no thread at interpreter shutdown: the work of a thread that cannot
start is done by the thread that wanted it (writes by the caller, an attempt and its
reading by the timer thread, in the exit hook's turn for that client).

One lock (the engine's) guards the machine and the engine's bookkeeping; the conditions
that wake the writer and callers waiting in ``connect``/``flush`` share it. Holding it means
no I/O, no user code and no waiting. Lock order: a client's lock, then the scheduler's.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import select
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Final, Protocol

from wsync import protocol
from wsync._connection import HANGUP, MalformedFrame, Transport, TransportClosed
from wsync._errors import ConnectError, ProtocolError
from wsync._exit import start_thread
from wsync._futures import mark_all_running
from wsync._ledger import Entry, EntryState
from wsync._machine import Control, Machine
from wsync._scheduler import Scheduler
from wsync._timers import Clock
from wsync.protocol import Response

__all__ = ["PARK_GRACE", "Host", "MalformedLog", "Reader", "Timer", "Turn", "Writer"]

logger = logging.getLogger(__name__)

# At most this many warnings about malformed frames per window; the rest are counted.
MALFORMED_WARNINGS: Final = 5
MALFORMED_WINDOW: Final = 10.0
# How long a writer thread that wrote messages waits for more before it ends. A thread start
# costs about 60-100 us; a pipelined burst (send() in a loop, messages answered in batches)
# keeps one thread for its whole length, and an idle client has none after this long. Pings
# and pongs alone end the thread at once (a heartbeat never keeps one alive).
WRITER_IDLE: Final = 1.0
# After a bug in the timer step, the client's deadlines are looked at again after this long.
RECOVER_PAUSE: Final = 0.1


class Host(Protocol):
    """What a worker needs from the engine."""

    lock: threading.Lock
    machine: Machine
    clock: Clock
    client_id: str

    @property
    def closing(self) -> bool: ...

    def drain(self) -> list[Any]:
        """Carry out under the lock what the machine buffered; return the rest.

        Caller holds ``lock``.
        """
        ...

    def carry_out(self, later: list[Any]) -> None:
        """Carry out what ``drain`` left (I/O, futures). Caller does not hold ``lock``."""
        ...

    def carry_out_timed(self, later: list[Any]) -> None:
        """``carry_out`` on the shared timer thread: nothing that can block runs there."""
        ...

    def transport(self, generation: int) -> Transport | None:
        """The open connection of ``generation``, if any. Caller holds ``lock``."""
        ...


class MalformedLog:
    """Warns about malformed frames a few times per window, then summarises with a count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # readers of two connections may overlap briefly
        self._window_start = -MALFORMED_WINDOW
        self._warned = 0
        self._suppressed = 0

    def report(self, reason: str, now: float) -> None:
        with self._lock:
            summary = 0
            if now - self._window_start >= MALFORMED_WINDOW:
                summary = self._suppressed
                elapsed = now - self._window_start
                self._window_start = now
                self._warned = 0
                self._suppressed = 0
            warn = self._warned < MALFORMED_WARNINGS
            if warn:
                self._warned += 1
            else:
                self._suppressed += 1
        if summary:
            logger.warning(
                "dropped %d more malformed frames in the last %.0f s", summary, elapsed
            )
        if warn:
            logger.warning("dropped a malformed frame: %s", reason)


def lost_error(prefix: str, exc: TransportClosed) -> ConnectError:
    """The machine's view of a connection that ended: a ConnectError from ``exc``."""
    error = ConnectError(f"{prefix}: {exc}", phase="connection")
    error.__cause__ = exc
    return error


class _Loop:
    """A loop woken through a condition on the engine's lock; a bug in the loop is logged and
    the connection dropped, never a dead thread."""

    __slots__ = ("_condition", "_host")  # one per client: no __dict__ (memory per idle client)

    role = "loop"

    def __init__(self, host: Host) -> None:
        self._host = host
        self._condition: threading.Condition | None = None

    @property
    def _cv(self) -> threading.Condition:
        """The condition the loop waits on, made on first use (an idle client has no loop:
        it saves a Condition's 1.3 KiB). Caller holds the lock."""
        cv = self._condition
        if cv is None:
            cv = self._condition = threading.Condition(self._host.lock)
        return cv

    def wake_all(self) -> None:
        """Caller holds the lock."""
        if self._condition is not None:
            self._condition.notify_all()

    def _main(self) -> None:
        while True:
            try:
                self._loop()
                return
            except Exception:
                logger.exception("internal error in the %s thread", self.role)
                if not _recover(self._host, self):
                    return

    def _loop(self) -> None:
        raise NotImplementedError


class _Run(enum.Enum):
    """The writer's state (under the engine's lock)."""

    IDLE = "idle"  # no writer thread
    ISSUED = "issued"  # a thread was made; whoever got it from wake() starts it
    BUSY = "busy"  # a writer runs (a thread, or a caller's thread when none can start)
    CLOSED = "closed"  # close() took over: no writer starts any more


class Writer(_Loop):
    """The thread ``wsync-writer-<client>``, which exists only while there is something to
    write: control frames, then batches of messages.

    :meth:`wake` (under the lock) makes a thread when there is a backlog and none runs;
    :meth:`start` (outside the lock) starts it. After writing messages it lingers for
    :data:`WRITER_IDLE` seconds for more (a pipelined burst keeps one thread), then ends;
    after control frames only (a ping, a pong, the ``connect``) it ends at once.

    Args:
        host: the engine.
        name: the threads' name.
    """

    __slots__ = ("_closes_sent", "_inline", "_name", "_run", "_started", "closing_transports",
                 "thread")

    role = "writer"

    def __init__(self, host: Host, name: str) -> None:
        super().__init__(host)
        self._name = name
        self._run = _Run.IDLE
        self._inline = False  # running in a caller's thread: end as soon as nothing is due
        self.thread: threading.Thread | None = None  # the current (or next) writer thread
        # Threads started and maybe alive, weakly: a thread that ended is not kept.
        self._started: list[weakref.ref[threading.Thread]] = []
        # Connections that get a close frame when the client closes (then close() aborts
        # them), and whether a writer thread sent them.
        self.closing_transports: list[Transport] = []
        self._closes_sent = False

    @property
    def busy(self) -> bool:
        """Whether a writer runs now. Caller holds the lock."""
        return self._run is _Run.BUSY

    def wake(self) -> threading.Thread | None:
        """Something may be written: wake the writer, or make one for the caller to
        :meth:`start` outside the lock. Caller holds the lock."""
        run = self._run
        if run is _Run.BUSY:
            thread = self.thread
            if self._inline or (thread is not None and thread.is_alive()):
                self._cv.notify()
                return None
            # BUSY, yet its thread never started: an interrupt (Ctrl-C in the caller that was
            # starting it) struck between the state change and the start. A fresh one.
        host = self._host
        if run is _Run.CLOSED or host.closing or not host.machine.writable():
            return None
        # IDLE, or ISSUED by a step whose start() an interrupt skipped: a fresh thread (the
        # one issued before, if its start() still comes, sees it is not current and stays).
        thread = threading.Thread(target=self._thread_main, name=self._name, daemon=True)
        self.thread = thread
        self._run = _Run.ISSUED
        return thread

    def start(self, thread: threading.Thread) -> None:
        """Start ``thread`` (from :meth:`wake`); when no thread can start (interpreter
        shutdown), write here until nothing is left. Caller does not hold the lock."""
        host = self._host
        with host.lock:
            if self.thread is not thread or self._run is not _Run.ISSUED or host.closing:
                return
            self._run = _Run.BUSY
            self._started = [r for r in self._started if r() is not None]
            self._started.append(weakref.ref(thread))
        started = False
        try:
            started = start_thread(thread)
        except Exception:
            logger.exception("could not start the writer thread: writing in this one")
        except BaseException:
            # Interrupted while starting: if the thread did start it runs anyway (a second
            # writer would be harmless: the ledger gives the turn to write to one at a time).
            with host.lock:
                if self.thread is thread and not thread.is_alive():
                    self._ended()
            raise
        if started:
            return
        logger.debug("interpreter shutting down: the writer's work runs in %s",
                     threading.current_thread().name)
        with host.lock:
            self._inline = True
        try:
            self._main()
        finally:
            with host.lock:
                self._inline = False
                if self._run is _Run.BUSY and self.thread is thread:
                    self._ended()

    def stop(self, timeout: float | None) -> list[Transport]:
        """close(): wait up to ``timeout`` for a running writer to send its close frames and
        end; then no writer starts any more. Returns the connections that still need a close
        frame (close() sends them), none when the writer is still blocked in a write."""
        host = self._host
        with host.lock:
            if self.thread is not threading.current_thread():
                self._cv.notify_all()
                self._cv.wait_for(lambda: self._run is not _Run.BUSY, timeout)
            if self._run is _Run.BUSY:
                return []
            self._run = _Run.CLOSED
            return [] if self._closes_sent else list(self.closing_transports)

    def threads(self) -> list[threading.Thread]:
        """The writer threads that may still be alive (close() joins them). Caller holds the
        lock."""
        alive = [r() for r in self._started]
        return [t for t in alive if t is not None and t.is_alive()]

    def _ended(self) -> None:
        """The writer stops. Caller holds the lock."""
        self._run = _Run.IDLE
        self.thread = None
        self._cv.notify_all()  # close() may wait for it
        self._condition = None  # an idle client keeps no Condition (the next writer makes one)

    def _thread_main(self) -> None:
        try:
            self._main()
        finally:
            host = self._host
            with host.lock:
                if self.thread is threading.current_thread() and self._run is _Run.BUSY:
                    self._ended()

    def _loop(self) -> None:
        host = self._host
        machine = host.machine
        me = threading.current_thread()
        linger_until = 0.0  # after writing messages, wait this long for more
        while True:
            with host.lock:
                while True:
                    if host.closing:
                        transports = list(self.closing_transports)
                        self._closes_sent = True
                        break
                    if machine.writable():
                        now = host.clock()
                        if not machine.controls:
                            next_at = machine.next_write_at(now)
                            if next_at is not None and next_at > now:
                                self._cv.wait(next_at - now)
                                continue
                        generation = machine.generation
                        controls, entries = machine.take_writes(generation, now)
                        transport = host.transport(generation)
                        break
                    idle = linger_until - time.monotonic()
                    if idle <= 0 or self._inline or self.thread is not me:
                        if self.thread is me or self._inline:
                            self._ended()
                        return
                    self._cv.wait(idle)
            if host.closing:
                for each in transports:
                    each.send_close()
                with host.lock:
                    if self.thread is me or self._inline:
                        self._ended()
                return
            self.write(generation, transport, controls, entries)
            if entries:
                linger_until = time.monotonic() + WRITER_IDLE

    def write(
        self,
        generation: int,
        transport: Transport | None,
        controls: Sequence[Control],
        entries: list[Entry],
    ) -> None:
        """Write what was taken from the machine (``take_writes``) in this thread, and report
        it; the writer thread's step, also used by a connect thread for the connect frame."""
        host = self._host
        texts = [control_text(control, host.client_id) for control in controls]
        texts += [entry.text for entry in entries]
        written = False
        error: ConnectError | None = None
        try:
            if transport is not None:
                transport.send_texts(texts)
                written = True
        except TransportClosed as exc:
            error = lost_error("connection lost while writing", exc)
        finally:
            # Whatever happened, the turn to write is given back, so nothing stays wedged.
            with host.lock:
                if written:
                    host.machine.written(generation, entries, entries)
                else:
                    # After a failed write nothing counts as written: the loss queues it all
                    # again (and blames no message: it may not have reached the server).
                    host.machine.not_written(generation, entries, entries, error, host.clock())
                later = host.drain()
            host.carry_out(later)
        if written:
            mark_all_running([entry.future for entry in entries])


class Timer:
    """A client's deadlines (backoff delays, the attempt's and the confirm's timeouts, pings,
    the pong timeout) on the process-wide ``wsync-timer`` thread (:mod:`wsync._scheduler`).

    ``fire`` runs the machine's timer step under the client's lock and reschedules; what it
    leaves is carried out by ``host.carry_out_timed``, which never blocks (an ``Open`` goes
    to a connect thread).

    Args:
        host: the engine.
        scheduler: the process's scheduler.
    """

    __slots__ = ("_host", "_scheduler", "due")

    def __init__(self, host: Host, scheduler: Scheduler) -> None:
        self._host = host
        self._scheduler = scheduler
        self.due: float | None = None  # the scheduler's (see Job)

    def start(self) -> None:
        """Join the timer thread. Caller holds the lock."""
        self._scheduler.add(self)
        self.wake()

    def stop(self) -> threading.Thread | None:
        """Leave the timer thread; returns it when this was its last client (to join)."""
        return self._scheduler.remove(self)

    def wake(self) -> None:
        """The machine's next deadline may have moved. Caller holds the lock."""
        self._scheduler.schedule(self, self._host.machine.next_deadline())

    def fire(self) -> None:
        """On the timer thread: do what is due now, reschedule."""
        host = self._host
        with host.lock:
            if host.closing:
                return
            now = host.clock()
            try:
                host.machine.on_timer(now)
                later = host.drain()
            except Exception:
                # A bug: logged; the connection is dropped (a fresh start), retried soon.
                logger.exception("internal error in the timer thread")
                error = ConnectError("internal error in a wsync thread", phase="connection")
                host.machine.on_internal_error(error, now)
                later = host.drain()
                deadline = host.machine.next_deadline()
                self._scheduler.schedule(
                    self, now + RECOVER_PAUSE if deadline is None
                    else max(deadline, now + RECOVER_PAUSE)
                )
            else:
                self.wake()
        host.carry_out_timed(later)

    def fire_now(self) -> None:
        """Fire at once (the exit hook hands over an attempt). Caller holds the lock."""
        self._scheduler.schedule(self, self._host.clock())


class Turn(enum.Enum):
    """Who reads a connection now (its :class:`Reader`'s turn to read)."""

    READER = "reader"  # the reader thread (in recv(), or about to be)
    PARKED = "parked"  # nobody: the reader thread waits, ready to lend it or to read again
    LENT = "lent"  # a caller of send_and_wait reads until it has its response


DONE: Final = EntryState.DONE
# At most this many responses one read brought are handled under one hold of the lock.
BATCH: Final = 64

# While a caller reads, the reader thread looks again this often (a thread gone without
# giving the turn back; the turn given back silently after a loop of round trips, so that
# a connection lost then is seen within this).
PARK_GRACE: Final = 0.2


class Reader:
    """The thread ``wsync-reader-<client>.<generation>``: reads one connection until it ends.

    Leader/followers. A caller of ``send_and_wait`` that just wrote its message would
    otherwise sleep until this thread reads the response and wakes it: one thread hop per
    round trip, most of a loopback round trip's cost. So whenever it has read everything
    that came, this thread *parks* (:attr:`Turn.PARKED`): it waits for the socket to have
    data (or an end) with ``poll()``, its turn to read free meanwhile. The next
    ``send_and_wait`` takes the turn (:meth:`lend`) and reads the socket itself
    (:meth:`lead`) until its response is in, carrying out every frame exactly as this
    thread would (other threads' responses, pongs, pings, errors, the connection's end);
    then it gives the turn back. A sequential caller thus reads its own responses with no
    hop at all, while the guarantees hold: nothing read is lost (the transport keeps
    partial frames for whoever reads next; an interrupt outside the wait for data drops the
    connection, so every unanswered message is sent again), no user code runs while reading
    (callbacks go to the callbacks thread), and whatever arrives while nobody leads wakes
    this thread at once (a response to ``send()``, a ping, the server closing or resetting
    the connection). While a caller leads, this thread waits for the turn back; it looks
    again every :data:`PARK_GRACE` (a caller gives it back without waking it, so that a
    loop of round trips costs it nothing).

    Args:
        host: the engine.
        generation: the connection's generation.
        transport: the open connection.
        malformed: where malformed frames are reported (rate-limited warnings).
        name: the thread's name.
    """

    def __init__(
        self,
        host: Host,
        generation: int,
        transport: Transport,
        malformed: MalformedLog,
        name: str,
    ) -> None:
        self._host = host
        self.generation = generation
        self._transport = transport
        self._malformed_log = malformed
        # The turn to read: guarded by the host's lock.
        self.turn = Turn.READER
        self.lender: threading.Thread | None = None  # the caller it is LENT to
        # While the thread waits for its turn (in poll(), outside the lock), a byte on this
        # pipe makes it look again; made with the first wait, closed when the thread ends.
        self._waiting = False
        self._watching = 0  # what the thread's wait watches the socket for (select.POLLIN...)
        self._wake_r = self._wake_w = -1
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def run_here(self) -> None:
        """Read the connection in the calling thread, until it ends (when no thread starts)."""
        self._main()

    # --- the turn to read (every method here: caller holds the host's lock) --------------

    def wake(self) -> None:
        """Something changed (a write expecting an answer, the state, the client closing):
        the thread, if it waits for its turn without watching for data (a caller had the
        turn), looks again; one that watches for data needs no wake-up: what it waits for
        wakes it."""
        if self._waiting and self._watching != select.POLLIN:
            self._waiting = False  # one byte per wait is enough
            with contextlib.suppress(OSError):  # full (a byte is there already) or closed
                os.write(self._wake_w, b"\0")

    def lend(self, caller: threading.Thread) -> bool:
        """Give ``caller`` the turn to read, if this reader is parked (or lent to ``caller``
        already: an interrupt may have kept it from giving it back)."""
        if self._host.closing:
            return False
        if self.turn is not Turn.PARKED and not (
            self.turn is Turn.LENT and self.lender is caller
        ):
            return False
        self.turn = Turn.LENT
        self.lender = caller
        return True

    def give_back(self, caller: threading.Thread) -> None:
        """``caller`` is done reading (or never started): parked again. The thread is not
        woken (the next caller may take the turn at once), unless anything else is expected
        (other messages in flight, a ping, a closing client). Idempotent: nothing happens
        unless the turn is lent to ``caller``."""
        if self.turn is not Turn.LENT or self.lender is not caller:
            return
        self.lender = None
        self.turn = Turn.PARKED
        if self._host.machine.expecting or self._host.closing:
            self.wake()

    def _take_turn(self) -> None:
        """Park, and wait for the turn, in ``poll()`` outside the lock: while PARKED, for
        data or an end on the socket; while LENT, for the caller to give the turn back
        (looking again every :data:`PARK_GRACE`: it may do so without waking this thread)
        or for an end of the connection, seen at once even then. Caller holds the lock."""
        host = self._host
        lock = host.lock
        transport = self._transport
        if self.turn is Turn.READER:
            self.turn = Turn.PARKED
        ended = False  # the connection ended while a caller read: it sees that itself
        while not host.closing:
            if self.turn is Turn.LENT:
                lender = self.lender
                if lender is None or not lender.is_alive():
                    self.lender = None  # its thread is gone (a bug): the turn is taken back
                    break
                watch, timeout = (0 if ended else HANGUP), PARK_GRACE
            elif transport.buffered():
                break  # bytes a caller read and left: the rest of a frame, or more frames
            else:
                watch, timeout = select.POLLIN, None
            if self._wake_r < 0:
                self._wake_r, self._wake_w = os.pipe()
                os.set_blocking(self._wake_r, False)
                os.set_blocking(self._wake_w, False)
            self._waiting = True
            self._watching = watch
            lock.release()
            try:
                ready = transport.wait_for_turn(self._wake_r, watch, timeout)
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
            finally:
                lock.acquire()
                self._waiting = False
            if self.turn is not Turn.LENT:
                if ready:
                    break
                ended = False
            elif ready and watch == HANGUP:
                ended = True  # (ready under POLLIN: the data the caller reads; not an end)
        self.turn = Turn.READER

    # --- reading ------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._loop()
        except Exception:
            logger.exception("internal error in the reader thread")
            self._transport.abort()
            host = self._host
            error = ConnectError("internal error in the reader thread", phase="connection")
            with host.lock:
                host.machine.on_connection_lost(self.generation, error, host.clock())
                later = host.drain()
            host.carry_out(later)

    def _close_pipe(self) -> None:
        with self._host.lock:
            fds = (self._wake_r, self._wake_w)
            self._wake_r = self._wake_w = -1
            self._waiting = False
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def _loop(self) -> None:
        try:
            self._read_all()
        finally:
            self._close_pipe()

    def _read_all(self) -> None:
        host = self._host
        transport = self._transport
        while True:
            if not transport.buffered():  # all read is handled: park until more comes
                with host.lock:
                    self._take_turn()
            data, ended = self._read(None)
            if ended:
                return
            if data is not None:
                self._handle(data)

    def _read(self, timeout: float | None) -> tuple[str | bytes | None, bool]:
        """The next message (None: a malformed one dropped, or none within ``timeout``), and
        whether the connection ended (handled here)."""
        transport = self._transport
        try:
            data = transport.recv() if timeout is None else transport.recv_within(timeout)
        except MalformedFrame as exc:
            self._malformed(str(exc))
            return None, False
        except TransportClosed as exc:
            self._lost(exc)
            return None, True
        return data, False

    def _handle(self, data: str | bytes) -> None:
        """Carry out one message read from the connection (and the responses that came with
        it)."""
        if type(data) is not str:
            self._malformed(f"binary frame of {len(data)} bytes")
            return
        decode = protocol.decode
        try:
            frame = decode(data)
        except ProtocolError as exc:
            self._malformed(f"{exc} ({len(data)} characters)")
            return
        # Responses the same read brought are handled in one go (one lock hold, one drain);
        # anything else ends the batch, so that no two pings are merged into one pong.
        frames = [frame]
        if type(frame) is Response:
            recv_buffered = self._transport.recv_buffered
            while type(frames[-1]) is Response and len(frames) < BATCH:
                more = recv_buffered()
                if more is None:
                    break
                if type(more) is not str:
                    self._malformed(f"binary frame of {len(more)} bytes")
                    continue
                try:
                    frames.append(decode(more))
                except ProtocolError as exc:
                    self._malformed(f"{exc} ({len(more)} characters)")
        host = self._host
        with host.lock:
            machine = host.machine
            now = host.clock()
            for frame in frames:
                machine.on_frame(self.generation, frame, now)
            later = host.drain()
        if later:
            host.carry_out(later)

    def _lost(self, exc: TransportClosed) -> None:
        host = self._host
        lost = lost_error("connection lost", exc)
        with host.lock:
            if exc.violation:
                host.machine.on_malformed()  # the server broke RFC 6455: we failed it
            host.machine.on_connection_lost(
                self.generation, lost, host.clock(), close_code=exc.close_code
            )
            later = host.drain()
        host.carry_out(later)

    def lead(self, entry: Entry, timeout: float | None) -> None:
        """In a caller that was :meth:`lend`-ed the turn: read until ``entry`` is
        done (its future settled, here or by close()), the timeout, or the connection's end.
        The turn is given back here, whatever happens, and again (idempotent) by the
        caller's ``Engine._end_wait`` as it leaves ``send_and_wait``: a ``finally`` entered
        before the turn was taken, so that one interrupt, wherever it strikes (even in one
        of those ``finally`` blocks), cannot leave the turn lent to a caller that no longer
        reads.

        An interrupt (Ctrl-C) while waiting for data loses nothing; anywhere else, bytes or
        a frame may be in hand, so the connection is dropped: every unanswered message is
        written again on the next one (at-least-once, as after any loss).
        """
        host = self._host
        transport = self._transport
        deadline = None if timeout is None else host.clock() + timeout
        safe = True
        try:
            while entry.state is not DONE:
                wait = PARK_GRACE if deadline is None else deadline - host.clock()
                if wait <= 0:
                    return
                safe = False
                data, ended = self._read(min(wait, PARK_GRACE))
                if ended:
                    return
                if data is not None:
                    self._handle(data)
                safe = True
        except BaseException:
            if not (safe or transport.waiting):
                transport.abort()
                error = ConnectError("a read was interrupted", phase="connection")
                with host.lock:
                    now = host.clock()
                    host.machine.repair(now)  # the interrupt may have struck a step
                    host.machine.on_connection_lost(self.generation, error, now)
                    later = host.drain()
                host.carry_out(later)
            raise
        finally:
            transport.waiting = False
            with host.lock:
                self.give_back(threading.current_thread())

    def _malformed(self, reason: str) -> None:
        host = self._host
        with host.lock:
            host.machine.on_malformed()
        self._malformed_log.report(reason, time.monotonic())


def control_text(control: Control, client_id: str) -> str:
    """The frame text of a control frame, stamped now."""
    if control is Control.PING:
        return protocol.encode(protocol.Ping(timestamp=protocol.now()))
    if control is Control.PONG:
        return protocol.encode(protocol.Pong(timestamp=protocol.now()))
    return protocol.encode(protocol.Connect(client_id=client_id, timestamp=protocol.now()))


def _recover(host: Host, loop: _Loop) -> bool:
    """After a bug in a loop: drop the connection (a fresh start), pause briefly, go on.

    Returns False when the client is closing (the loop must end).
    """
    with host.lock:
        if host.closing:
            return False
        loop._cv.wait(0.1)  # never a hot loop of errors
        machine = host.machine
        error = ConnectError("internal error in a wsync thread", phase="connection")
        machine.on_internal_error(error, host.clock())
        later = host.drain()
    host.carry_out(later)
    return True

