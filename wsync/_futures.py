"""MessageFuture: a ``concurrent.futures.Future[Response]`` that knows its message; Waiter.

Its one job: the future ``send()`` returns, built on ``Future``'s public API only (and the
lighter :class:`Waiter` that ``send_and_wait`` keeps to itself). It must
not read or write ``Future``'s private state (``_state``, ``_condition``, ``_waiters``,
``_done_callbacks``): it keeps its own done-callbacks instead, so that the engine decides
which thread runs them (never the one reading the socket), and it asks its owner (the
engine) before a cancel, so that a message being written cannot be cancelled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError, TimeoutError
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from wsync.protocol import Response

__all__ = [
    "DoneCallback",
    "FutureOwner",
    "MessageFuture",
    "Waiter",
    "mark_all_running",
    "run_callbacks",
]

logger = logging.getLogger(__name__)

DoneCallback = Callable[["MessageFuture"], object]

# Guards the callbacks of futures that have no owner (made by hand, in tests).
_ORPHAN_LOCK = threading.Lock()


class FutureOwner(Protocol):
    """What a future needs from the client that made it."""

    #: Guards the done-callback lists of every future it owns, and every change of their
    #: state (a per-client lock, not one per future: memory per queued message counts).
    #: Held only around the state change and the list swap: no I/O, no user code.
    resolve_lock: threading.Lock

    def withdraw(self, future: MessageFuture) -> bool:
        """Withdraw the future's message for a cancel; False once it is being written."""
        ...


def run_callbacks(future: MessageFuture, callbacks: list[DoneCallback]) -> None:
    """Run done-callbacks as ``Future`` does: each in turn, an exception logged and ignored."""
    for fn in callbacks:
        try:
            fn(future)
        except Exception:
            logger.exception("exception calling callback for %r", future)


class MessageFuture(Future["Response"]):
    """The pending result of ``Client.send()``: resolves with the message's ``Response``.

    It fails with ``ServerError`` (an error frame naming the message), ``ConnectError``
    (reconnection gave up: the message will never be sent), ``DeliveryError`` (a poison
    message), ``ResponseTimeout`` (``send_and_wait`` gave up on it) or ``ClientClosed``.
    ``cancel()`` succeeds only while the message is still queued; it is then never sent.
    Done-callbacks run on the client's callbacks thread (or in the thread that adds them
    to a future already done, or that cancels it), never on the thread reading the socket.

    Attributes:
        message_id: the ``messageId`` of the message.
    """

    def __init__(self, message_id: str, owner: FutureOwner | None = None) -> None:
        super().__init__()
        self.message_id = message_id
        self._owner = owner
        # Done-callbacks added while not done: None (none yet), then a list; swapped out
        # (under the owner's lock) by whoever finishes the future, who then runs them.
        self._callbacks: list[DoneCallback] | None = None
        # Written on some connection (a plain flag: marking costs no lock per message; the
        # state Future keeps stays PENDING, and cancel() asks the owner, who refuses then).
        self._written = False

    def __repr__(self) -> str:
        if self.cancelled():
            state = "cancelled"
        elif self.done():
            state = "finished"
        elif self.running():
            state = "running"
        else:
            state = "pending"
        return f"<MessageFuture {self.message_id} {state}>"

    def _lock(self) -> threading.Lock:
        return _ORPHAN_LOCK if self._owner is None else self._owner.resolve_lock

    def _take_callbacks(self) -> list[DoneCallback]:
        """Caller holds the lock and just finished the future."""
        callbacks = self._callbacks
        self._callbacks = None
        return callbacks or []

    # --- the public Future API ------------------------------------------------------------

    def add_done_callback(self, fn: DoneCallback) -> None:
        """Call ``fn(future)`` once the future is done; at once, here, if it is done already."""
        with self._lock():
            if not self.done():
                if self._callbacks is None:
                    self._callbacks = [fn]
                else:
                    self._callbacks.append(fn)
                return
        run_callbacks(self, [fn])

    def cancel(self) -> bool:
        """Cancel the message if it is still queued; False once it is being written or was.

        Thread-safe. The message leaves the queue (and a durable outbox) before anyone sees
        the future cancelled. Done-callbacks run in this thread.
        """
        owner = self._owner
        if owner is not None and not self.done() and not owner.withdraw(self):
            return False
        with self._lock():
            first = not self.done()
            cancelled = super().cancel()
            callbacks = self._take_callbacks() if cancelled and first else []
        if callbacks:
            run_callbacks(self, callbacks)
        return cancelled

    def set_result(self, result: Response) -> None:
        """Set the result and run the done-callbacks in this thread (as ``Future`` does)."""
        callbacks = self.settle(result, None)
        if callbacks is None:
            super().set_result(result)  # raises InvalidStateError, as Future does
        elif callbacks:
            run_callbacks(self, callbacks)

    def set_exception(self, exception: BaseException | None) -> None:
        """Set the exception and run the done-callbacks in this thread."""
        callbacks = self.settle(None, exception) if exception is not None else None
        if callbacks is None:
            super().set_exception(exception)
        elif callbacks:
            run_callbacks(self, callbacks)

    # --- for the engine -------------------------------------------------------------------

    def settle(
        self, result: Response | None, error: BaseException | None
    ) -> list[DoneCallback] | None:
        """Finish the future with ``result`` (or ``error``) unless it is done already.

        Runs no callback: returns those to run (the caller picks the thread), or None when
        the future was done already (answered, failed or cancelled before).
        """
        owner = self._owner
        with _ORPHAN_LOCK if owner is None else owner.resolve_lock:
            # Future's own check (one pass through its condition, not two): a future done
            # already (answered, failed, cancelled) refuses with InvalidStateError.
            try:
                if error is None:
                    assert result is not None
                    super().set_result(result)
                else:
                    super().set_exception(error)
            except InvalidStateError:
                return None
            return self._take_callbacks()

    def running(self) -> bool:
        """True once the message was written and until the future is done."""
        return self._written and not self.done()

    def mark_running(self) -> None:
        """The message was written: ``running()`` is True from now (unless done already).

        Idempotent (a message written again after a reconnect); takes no lock.
        """
        self._written = True


class Waiter:
    """The pending result of a ``send_and_wait`` message, which only its caller ever sees.

    Not a ``Future``: nobody adds callbacks to it, cancels it or passes it to
    ``concurrent.futures.wait``, so it skips what those need (a ``Condition`` and an
    ``RLock`` made per message, and their Python-level notify): a lock held until the
    result is in. The engine settles it exactly as a :class:`MessageFuture`.
    """

    __slots__ = ("_error", "_ready", "_result", "_settled", "_written", "message_id")

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self._ready = threading.Lock()
        self._ready.acquire()  # released once settled
        self._settled = False
        self._result: Response | None = None
        self._error: BaseException | None = None
        self._written = False

    def done(self) -> bool:
        return self._settled

    def mark_running(self) -> None:
        self._written = True

    def settle(
        self, result: Response | None, error: BaseException | None
    ) -> list[DoneCallback] | None:
        """As :meth:`MessageFuture.settle` (never any callbacks); None if settled already."""
        with _ORPHAN_LOCK:
            if self._settled:
                return None
            self._result, self._error = result, error
            self._settled = True
        self._ready.release()
        return []

    def result(self, timeout: float | None = None) -> Response:
        """The response, or the error raised; ``concurrent.futures.TimeoutError`` if not
        settled within ``timeout``."""
        ready = self._ready
        if not self._settled:
            if not ready.acquire(timeout=-1 if timeout is None else timeout):
                raise TimeoutError()
            ready.release()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def mark_all_running(futures: Sequence[MessageFuture | Waiter]) -> None:
    """:meth:`MessageFuture.mark_running` of each (a writer marks a whole batch it wrote)."""
    for future in futures:
        future._written = True
