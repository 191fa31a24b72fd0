"""MessageFuture: a Future with a message id, a lighter condition and a cancel hook."""

from __future__ import annotations

import concurrent.futures
import threading
from datetime import datetime, timezone

import pytest

from tests.helpers import TIMEOUT
from wsync import MessageFuture, Response
from wsync._futures import Waiter, mark_all_running

RESPONSE = Response(
    message_id="m", content="c", timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc)
)


class TestWaiting:
    def test_result_wakes_a_waiting_thread(self) -> None:
        """A thread blocked in result() wakes when another thread sets the result."""
        future = MessageFuture("m")
        got: list[Response] = []
        waiter = threading.Thread(target=lambda: got.append(future.result(TIMEOUT)))
        waiter.start()
        future.set_result(RESPONSE)
        waiter.join(TIMEOUT)
        assert got == [RESPONSE]

    def test_many_waiters_all_wake(self) -> None:
        """Several threads waiting on one future all wake (notify_all on the lighter condition)."""
        future = MessageFuture("m")
        done = concurrent.futures.ThreadPoolExecutor(4)
        results = [done.submit(future.result, TIMEOUT) for _ in range(4)]
        future.set_result(RESPONSE)
        assert [r.result(TIMEOUT) for r in results] == [RESPONSE] * 4
        done.shutdown()

    def test_result_timeout_raises(self) -> None:
        """result(timeout) on an unresolved future raises concurrent.futures.TimeoutError."""
        # (the builtin TimeoutError only from Python 3.11 on)
        with pytest.raises(concurrent.futures.TimeoutError):
            MessageFuture("m").result(0.01)

    def test_wait_and_as_completed_work(self) -> None:
        """concurrent.futures.wait() and as_completed() accept MessageFutures."""
        futures = [MessageFuture(str(i)) for i in range(3)]
        for f in futures:
            f.set_result(RESPONSE)
        done, _ = concurrent.futures.wait(futures, TIMEOUT)
        assert done == set(futures)
        assert len(list(concurrent.futures.as_completed(futures, TIMEOUT))) == 3


class _Owner:
    """A stand-in for the engine: a resolve lock and a withdraw() that says yes or no."""

    def __init__(self, withdraws: bool = True, error: BaseException | None = None) -> None:
        self.resolve_lock = threading.Lock()
        self.withdraws = withdraws
        self.error = error
        self.asked: list[str] = []

    def withdraw(self, future: MessageFuture) -> bool:
        self.asked.append(future.message_id)
        if self.error is not None:
            raise self.error
        return self.withdraws


class TestSettle:
    def test_settle_sets_the_result_and_hands_back_the_callbacks(self) -> None:
        """settle() finishes the future and returns its done-callbacks instead of running them."""
        future = MessageFuture("m", _Owner())
        ran: list[object] = []
        future.add_done_callback(ran.append)
        callbacks = future.settle(RESPONSE, None)
        assert future.result(0) == RESPONSE
        assert ran == [] and callbacks is not None and len(callbacks) == 1

    def test_settle_of_a_done_future_returns_none(self) -> None:
        """A second settle() changes nothing and says so with None."""
        future = MessageFuture("m", _Owner())
        assert future.settle(RESPONSE, None) == []
        assert future.settle(None, RuntimeError("late")) is None
        assert future.result(0) == RESPONSE

    def test_callback_added_after_settle_runs_in_the_adding_thread(self) -> None:
        """A callback added to a finished future runs at once in the thread that adds it."""
        future = MessageFuture("m", _Owner())
        future.settle(RESPONSE, None)
        ran_on: list[str] = []
        future.add_done_callback(lambda _: ran_on.append(threading.current_thread().name))
        assert ran_on == [threading.current_thread().name]

    def test_set_result_runs_callbacks_in_the_caller(self) -> None:
        """The public set_result() runs the done-callbacks in its thread, as Future does."""
        future = MessageFuture("m")
        ran: list[object] = []
        future.add_done_callback(ran.append)
        future.set_result(RESPONSE)
        assert ran == [future]

    def test_mark_running_after_the_write(self) -> None:
        """mark_running() makes running() true, and does nothing to a finished future."""
        future = MessageFuture("m", _Owner())
        future.mark_running()
        assert future.running()
        future.mark_running()  # twice: no error
        done = MessageFuture("n", _Owner())
        done.settle(RESPONSE, None)
        done.mark_running()
        assert done.done() and not done.running()

    def test_mark_running_twice_logs_nothing(self, caplog: pytest.LogCaptureFixture) -> None:
        """A message written again (after a reconnect) is marked again without Future's
        CRITICAL "unexpected state" log."""
        future = MessageFuture("m", _Owner())
        future.mark_running()
        with caplog.at_level("DEBUG"):
            future.mark_running()
            mark_all_running([future])
        assert caplog.records == [] and future.running()

    def test_mark_all_running_marks_each(self) -> None:
        """mark_all_running() marks every future; a finished one stays not running."""
        owner, other = _Owner(), _Owner()
        futures = [MessageFuture("a", owner), MessageFuture("b", owner), MessageFuture("c", other)]
        futures[1].settle(RESPONSE, None)
        mark_all_running(futures)
        assert futures[0].running() and futures[2].running()
        assert futures[1].done() and not futures[1].running()
        mark_all_running([])  # nothing to do

    def test_a_running_future_cannot_be_cancelled_and_still_settles(self) -> None:
        """Once written (running) the owner refuses a cancel; the result still arrives and
        running() turns False with done()."""
        owner = _Owner(withdraws=False)
        future = MessageFuture("m", owner)
        future.mark_running()
        assert not future.cancel()
        assert future.running() and not future.cancelled()
        assert future.settle(RESPONSE, None) == []
        assert future.done() and not future.running()
        assert future.result(0) is RESPONSE

    def test_settle_after_a_cancel_changes_nothing(self) -> None:
        """A cancelled future refuses a late result: settle() says so with None."""
        future = MessageFuture("m", _Owner())
        assert future.cancel()
        assert future.settle(RESPONSE, None) is None
        assert future.settle(None, RuntimeError("late")) is None
        assert future.cancelled()

    def test_no_private_future_state_is_touched(self) -> None:
        """MessageFuture uses Future's public API only: no _state, _condition, _waiters or
        _done_callbacks, which a Python release may change."""
        import inspect

        from wsync import _futures

        source = inspect.getsource(_futures)
        for name in ("._state", "._condition", "._waiters", "._done_callbacks", "._invoke"):
            assert name not in source, name


class TestCancel:
    def test_cancel_asks_the_owner_once_then_runs_callbacks(self) -> None:
        """cancel() asks the owner to withdraw the message, then runs the callbacks; a second
        cancel() does not ask again."""
        owner = _Owner()
        order: list[str] = []
        future = MessageFuture("m", owner)
        future.add_done_callback(lambda _: order.append("callback"))
        assert future.cancel()
        assert future.cancel()
        assert owner.asked == ["m"] and order == ["callback"]
        assert future.cancelled()

    def test_cancel_fails_when_the_owner_cannot_withdraw(self) -> None:
        """A message being written or written before cannot be cancelled."""
        future = MessageFuture("m", _Owner(withdraws=False))
        assert not future.cancel()
        assert not future.cancelled() and not future.done()

    def test_cancel_fails_once_running(self) -> None:
        """Once running (written), cancel() returns False."""
        future = MessageFuture("m", _Owner(withdraws=False))
        future.mark_running()
        assert not future.cancel()

    def test_cancel_wakes_waiters_with_cancelled_error(self) -> None:
        """A thread waiting in result() gets CancelledError when the future is cancelled."""
        future = MessageFuture("m", _Owner())
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                future.result(TIMEOUT)
            except BaseException as exc:
                errors.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        future.cancel()
        waiter.join(TIMEOUT)
        assert len(errors) == 1 and isinstance(errors[0], concurrent.futures.CancelledError)

    def test_cancel_is_published_after_the_withdrawal(self) -> None:
        """While the owner withdraws the message, the future is not yet seen cancelled."""
        seen: list[bool] = []

        class Owner(_Owner):
            def withdraw(self, future: MessageFuture) -> bool:
                seen.append(future.cancelled())
                return True

        future = MessageFuture("m", Owner())
        assert future.cancel()
        assert seen == [False] and future.cancelled()

    def test_an_owner_that_raises_leaves_the_future_pending(self) -> None:
        """If the withdrawal fails (a forked child, a bug), the error shows and the future is
        not cancelled: its message was not withdrawn."""
        future = MessageFuture("m", _Owner(error=RuntimeError("engine bug")))
        with pytest.raises(RuntimeError):
            future.cancel()
        assert not future.cancelled()


class TestWaiter:
    def test_result_after_settle(self) -> None:
        """A Waiter settled with a response returns it, as often as asked; done() says so."""
        waiter = Waiter("m")
        assert not waiter.done()
        assert waiter.settle(RESPONSE, None) == []
        assert waiter.done()
        assert waiter.result(0) is RESPONSE
        assert waiter.result() is RESPONSE

    def test_settles_once(self) -> None:
        """A second settle changes nothing and says so with None."""
        waiter = Waiter("m")
        error = ValueError("first")
        assert waiter.settle(None, error) == []
        assert waiter.settle(RESPONSE, None) is None
        with pytest.raises(ValueError, match="first"):
            waiter.result(0)

    def test_timeout_is_the_futures_timeout_error(self) -> None:
        """result(timeout) on an unsettled Waiter raises concurrent.futures.TimeoutError."""
        waiter = Waiter("m")
        with pytest.raises(concurrent.futures.TimeoutError):
            waiter.result(0.01)
        assert not waiter.done()

    def test_settled_from_another_thread_wakes_the_waiting_one(self) -> None:
        """A thread blocked in result() wakes when another thread settles the Waiter."""
        waiter = Waiter("m")
        started = threading.Event()
        got: list[object] = []

        def wait() -> None:
            started.set()
            got.append(waiter.result(TIMEOUT))

        thread = threading.Thread(target=wait)
        thread.start()
        assert started.wait(TIMEOUT)
        waiter.settle(RESPONSE, None)
        thread.join(TIMEOUT)
        assert got == [RESPONSE]
