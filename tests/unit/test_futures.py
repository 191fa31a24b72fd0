"""MessageFuture: a Future with a message id, a lighter condition and a cancel hook."""

from __future__ import annotations

import concurrent.futures
import threading
from datetime import datetime, timezone

import pytest

from tests.helpers import TIMEOUT
from wsync import MessageFuture, Response

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


class TestFastResolution:
    def test_fast_result_when_no_callbacks(self) -> None:
        """try_set_result_fast() sets the result when no done-callback is registered."""
        future = MessageFuture("m")
        assert future.try_set_result_fast(RESPONSE)
        assert future.result(0) == RESPONSE

    def test_fast_result_refused_with_callbacks(self) -> None:
        """With a done-callback registered, the fast path declines: it must run elsewhere."""
        future = MessageFuture("m")
        future.add_done_callback(lambda _: None)
        assert not future.try_set_result_fast(RESPONSE)
        assert not future.done()

    def test_callback_added_after_fast_result_runs_in_the_adding_thread(self) -> None:
        """A callback added after resolution runs at once in the thread that adds it."""
        future = MessageFuture("m")
        future.try_set_result_fast(RESPONSE)
        ran_on: list[str] = []
        future.add_done_callback(lambda _: ran_on.append(threading.current_thread().name))
        assert ran_on == [threading.current_thread().name]


class TestCancel:
    def test_cancel_hook_runs_once_before_callbacks(self) -> None:
        """The cancel hook runs once, before done-callbacks; a second cancel() does not rerun it."""
        order: list[str] = []
        future = MessageFuture("m", lambda f: order.append(f"hook {f.message_id}"))
        future.add_done_callback(lambda _: order.append("callback"))
        assert future.cancel()
        assert future.cancel()
        assert order == ["hook m", "callback"]
        assert future.cancelled()

    def test_cancel_fails_once_running(self) -> None:
        """Once running (written), cancel() returns False and the hook does not run."""
        hooked: list[object] = []
        future = MessageFuture("m", hooked.append)
        assert future.set_running_or_notify_cancel()
        assert not future.cancel()
        assert hooked == []

    def test_cancel_wakes_waiters_with_cancelled_error(self) -> None:
        """A thread waiting in result() gets CancelledError when the future is cancelled."""
        future = MessageFuture("m")
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

    def test_cancel_is_published_after_the_hook(self) -> None:
        """While the hook withdraws the message, the future is not yet seen cancelled, nor
        can the writer start it."""
        seen: list[tuple[bool, bool]] = []

        def hook(f: MessageFuture) -> None:
            seen.append((f.cancelled(), f.set_running_or_notify_cancel()))

        future = MessageFuture("m", hook)
        assert future.cancel()
        assert seen == [(False, False)]
        assert future.cancelled()

    def test_failing_hook_still_cancels(self) -> None:
        """A hook that raises does not leave the future stuck: it is cancelled, the error shows."""

        def hook(_: MessageFuture) -> None:
            raise RuntimeError("engine bug")

        future = MessageFuture("m", hook)
        with pytest.raises(RuntimeError):
            future.cancel()
        assert future.cancelled()
