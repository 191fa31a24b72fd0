"""MessageFuture: a ``concurrent.futures.Future[Response]`` that knows its message."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsync.protocol import Response

__all__ = ["MessageFuture"]


class MessageFuture(Future["Response"]):
    """The pending result of ``Client.send()``: resolves with the message's ``Response``.

    It fails with ``ServerError`` (an error frame naming the message), ``ConnectError``
    (reconnection gave up: the message will never be sent) or ``ClientClosed``.
    ``cancel()`` succeeds only while the message is still queued; it is then never sent.
    Done-callbacks run on the client's callbacks thread (or in the thread that adds them
    to a future already done), never on the thread that reads the socket.

    Attributes:
        message_id: the ``messageId`` of the message.
    """

    def __init__(
        self, message_id: str, on_cancel: Callable[[MessageFuture], None] | None = None
    ) -> None:
        super().__init__()
        # Future's Condition keeps its waiters in a deque that allocates a 64-slot block at
        # once (~600 bytes); a future has zero or one waiter, and Condition only appends,
        # removes, indexes [0] and takes len() of it (CPython 3.10-3.13), all of which a
        # list does, in 56 bytes. Memory per queued message is a benchmarked target.
        cond: Any = self._condition
        if type(cond._waiters) is collections.deque:
            cond._waiters = []
        self.message_id = message_id
        self._on_cancel = on_cancel
        self._cancelling = False  # a cancel() is withdrawing the message right now

    def __repr__(self) -> str:
        return f"<MessageFuture {self.message_id} {self._state.lower()}>"

    def cancel(self) -> bool:
        """Cancel the message if it is still queued; False once it was written.

        Thread-safe. A cancelled message leaves the queue (and the durable outbox) before the
        future is seen as cancelled by anyone: by the time ``result()`` raises
        ``CancelledError`` in another thread, the message is gone for good.
        """
        # Future.cancel() in three steps (Future's _state/_condition/_invoke_callbacks have been
        # stable since Python 3.2): claim the cancel under the condition, withdraw the message
        # with no lock of the future held (the engine takes its own lock, and a durable outbox
        # writes to disk), then publish CANCELLED and run the callbacks. While the cancel is
        # claimed, set_running_or_notify_cancel() refuses, so the writer cannot write it. Only
        # the call that claims it withdraws: cancelling again must not touch a later message
        # that reuses the id.
        cond: Any = self._condition
        with cond:
            state = self._state
            if state in ("RUNNING", "FINISHED"):
                return False
            if state in ("CANCELLED", "CANCELLED_AND_NOTIFIED") or self._cancelling:
                return True
            self._cancelling = True
        try:
            if self._on_cancel is not None:
                self._on_cancel(self)
        finally:
            with cond:
                self._cancelling = False
                if self._state == "PENDING":
                    self._state = "CANCELLED"
                    cond.notify_all()
                cancelled = self._state in ("CANCELLED", "CANCELLED_AND_NOTIFIED")
        if cancelled:
            self._invoke_callbacks()  # type: ignore[attr-defined]
        return cancelled

    def set_running_or_notify_cancel(self) -> bool:
        """Mark the message written (the writer calls it just before writing).

        False if it was cancelled, or a cancel is under way: it must not be written then.
        """
        cond: Any = self._condition
        with cond:
            if self._cancelling:
                return False
            return super().set_running_or_notify_cancel()

    # Resolution without a thread hop. Future.set_result() runs done-callbacks in the
    # calling thread; wsync must never run user code on its socket-reading thread. So the
    # reader resolves a future itself only when it has no done-callbacks, atomically with
    # that check under the future's own condition (Future's `_condition` and
    # `_done_callbacks` are stable since Python 3.2): a callback added concurrently then
    # sees a finished future and runs in the adding thread, as concurrent.futures promises.

    def try_set_result_fast(self, result: Response) -> bool:
        """Set the result unless a done-callback would have to run: then return False.

        True also when the future was already done (cancelled): nothing is left to do.
        """
        return self._try_finish_fast(self.set_result, result)

    def try_set_exception_fast(self, error: BaseException) -> bool:
        """Like ``try_set_result_fast``, for an exception."""
        return self._try_finish_fast(self.set_exception, error)

    def _try_finish_fast(self, finish: Callable[[Any], None], value: Any) -> bool:
        cond: Any = self._condition
        with cond:
            if self.done():
                return True
            if self._done_callbacks:  # type: ignore[attr-defined]
                return False
            finish(value)
            return True

    def unset_running(self) -> None:
        """Undo ``set_running_or_notify_cancel()`` of a message that was not written after all.

        Only the engine's fast path calls it, before ``send()`` has returned the future, so
        nobody can have observed the RUNNING state; a response cannot have come either.
        """
        cond: Any = self._condition
        with cond:
            if self._state == "RUNNING":
                self._state = "PENDING"

    def set_result_safe(self, result: Response) -> None:
        """Set the result unless the future is already done (cancelled or failed)."""
        with contextlib.suppress(Exception):  # InvalidStateError: cancelled or failed meanwhile
            self.set_result(result)

    def set_exception_safe(self, error: BaseException) -> None:
        """Set the exception unless the future is already done."""
        with contextlib.suppress(Exception):
            self.set_exception(error)
