"""The process-wide timer: deadlines in order, moved deadlines, its one thread's life."""

from __future__ import annotations

import os
import threading

import pytest

from tests.helpers import TIMEOUT, FakeClock
from wsync import _scheduler
from wsync._scheduler import Scheduler

pytestmark = pytest.mark.timeout(30)


class _Job:
    """A job that records its firings and may reschedule itself."""

    def __init__(self, name: str = "job") -> None:
        self.name = name
        self.due: float | None = None
        self.fired = 0
        self.event = threading.Event()

    def fire(self) -> None:
        self.fired += 1
        self.event.set()

    def __repr__(self) -> str:
        return f"_Job({self.name})"


def _no_thread(thread: threading.Thread) -> bool:
    """A thread starter that starts nothing (the step is driven by the test)."""
    return True


@pytest.fixture
def sched(clock: FakeClock) -> Scheduler:
    return Scheduler(clock=clock, start=_no_thread)


class TestDeadlines:
    def test_jobs_come_due_in_deadline_order(self, sched: Scheduler, clock: FakeClock) -> None:
        """Jobs are returned once their deadline has come, earliest first."""
        a, b, c = _Job("a"), _Job("b"), _Job("c")
        for job in (a, b, c):
            sched.add(job)
        now = clock()
        sched.schedule(b, now + 2)
        sched.schedule(a, now + 1)
        sched.schedule(c, now + 3)
        assert sched.take_due(now) == ([], now + 1)
        clock.advance(2)
        assert sched.take_due(clock()) == ([a, b], now + 3)
        assert a.due is None and b.due is None
        clock.advance(5)
        assert sched.take_due(clock()) == ([c], None)

    def test_an_earlier_deadline_replaces_a_later_one(
        self, sched: Scheduler, clock: FakeClock
    ) -> None:
        """A deadline moved earlier fires then, once; the old entry never wakes the thread."""
        job = _Job()
        sched.add(job)
        now = clock()
        sched.schedule(job, now + 10)
        sched.schedule(job, now + 1)
        clock.advance(1)
        assert sched.take_due(clock()) == ([job], None)
        assert sched._heap == []

    def test_a_later_deadline_replaces_an_earlier_one(
        self, sched: Scheduler, clock: FakeClock
    ) -> None:
        """A deadline moved later fires then, not at the old time (no firing for nothing)."""
        job = _Job()
        sched.add(job)
        now = clock()
        sched.schedule(job, now + 1)
        sched.schedule(job, now + 5)
        assert job.due == now + 5
        assert sched.take_due(clock()) == ([], now + 5)  # the stale entry is not waited for
        clock.advance(5)
        assert sched.take_due(clock()) == ([job], None)

    def test_no_deadline_unschedules(self, sched: Scheduler, clock: FakeClock) -> None:
        """Scheduling None drops the deadline held."""
        job = _Job()
        sched.add(job)
        sched.schedule(job, clock() + 1)
        sched.schedule(job, None)
        clock.advance(1)
        assert sched.take_due(clock()) == ([], None)

    def test_a_past_deadline_is_due_at_once(self, sched: Scheduler, clock: FakeClock) -> None:
        """A deadline already past (an attempt due now) is due at the next step."""
        job = _Job()
        sched.add(job)
        sched.schedule(job, clock() - 5)
        assert sched.take_due(clock()) == ([job], None)

    def test_unregistered_and_removed_jobs_never_come_due(
        self, sched: Scheduler, clock: FakeClock
    ) -> None:
        """A job never added, or removed after being scheduled, is not returned."""
        kept, removed, stranger = _Job("kept"), _Job("removed"), _Job("stranger")
        sched.add(kept)
        sched.add(removed)
        sched.schedule(kept, clock() + 1)
        sched.schedule(removed, clock() + 1)
        sched.schedule(stranger, clock() + 1)
        sched.remove(removed)
        clock.advance(1)
        assert sched.take_due(clock()) == ([kept], None)

    def test_moving_deadlines_do_not_grow_the_heap(
        self, sched: Scheduler, clock: FakeClock
    ) -> None:
        """A deadline moved earlier many times leaves a bounded number of stale entries."""
        job = _Job()
        sched.add(job)
        start = clock() + 100_000
        for i in range(10_000):
            sched.schedule(job, start - i)
        assert len(sched._heap) <= 2 + 64
        clock.advance(100_000)
        assert sched.take_due(clock()) == ([job], None)


class TestThread:
    def test_no_thread_until_a_job_is_added(self) -> None:
        """The timer thread starts with the first job, not before."""
        started: list[threading.Thread] = []

        def start(thread: threading.Thread) -> bool:
            started.append(thread)
            return True

        sched = Scheduler(start=start)
        assert sched.thread is None and not started
        sched.add(_Job())
        assert started and started[0].name == "wsync-timer"
        assert sched.thread is started[0]

    def test_fires_at_the_deadline_and_ends_with_the_last_job(self) -> None:
        """The thread fires a due job, and ends (joined) when its last job is removed."""
        sched = Scheduler()
        a, b = _Job("a"), _Job("b")
        sched.add(a)
        sched.add(b)
        thread = sched.thread
        assert thread is not None and thread.is_alive()
        sched.schedule(b, sched._clock())
        assert b.event.wait(TIMEOUT)
        assert sched.remove(a) is None  # b still needs it
        assert sched.remove(b) is thread
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert (a.fired, b.fired) == (0, 1)

    def test_an_earlier_deadline_wakes_the_waiting_thread(self) -> None:
        """A thread waiting for a far deadline fires a job scheduled sooner, on time."""
        sched = Scheduler()
        far, soon = _Job("far"), _Job("soon")
        sched.add(far)
        sched.add(soon)
        try:
            sched.schedule(far, sched._clock() + 3600)
            assert sched.thread is not None
            sched.schedule(soon, sched._clock())
            assert soon.event.wait(TIMEOUT)
            assert far.fired == 0
        finally:
            sched.remove(far)
            thread = sched.remove(soon)
            assert thread is not None
            thread.join(TIMEOUT)

    def test_a_new_job_after_the_last_removal_starts_a_new_thread(self) -> None:
        """Adding a job while the old thread is ending starts a fresh one; both end."""
        sched = Scheduler()
        first = _Job("first")
        sched.add(first)
        old = sched.remove(first)
        second = _Job("second")
        sched.add(second)
        new = sched.thread
        assert old is not None and new is not None and new is not old
        sched.schedule(second, sched._clock())
        assert second.event.wait(TIMEOUT)
        assert sched.remove(second) is new
        for thread in (old, new):
            thread.join(TIMEOUT)
            assert not thread.is_alive()

    def test_a_failing_job_does_not_stop_the_thread(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A job that raises is logged; the other jobs still fire."""
        sched = Scheduler()

        class Broken(_Job):
            def fire(self) -> None:
                raise RuntimeError("boom")

        broken, good = Broken("broken"), _Job("good")
        sched.add(broken)
        sched.add(good)
        now = sched._clock()
        sched.schedule(broken, now)
        sched.schedule(good, now)
        assert good.event.wait(TIMEOUT)
        sched.remove(broken)
        thread = sched.remove(good)
        assert thread is not None
        thread.join(TIMEOUT)
        assert any("internal error in the timer thread" in r.getMessage() for r in caplog.records)

    def test_no_thread_at_interpreter_shutdown(self, clock: FakeClock) -> None:
        """When no thread can start, add() leaves none and the next add() tries again."""
        answers = [False, True]
        sched = Scheduler(clock=clock, start=lambda t: answers.pop(0))
        sched.add(_Job("a"))
        assert sched.thread is None
        sched.add(_Job("b"))
        assert sched.thread is not None


class TestProcess:
    def test_one_scheduler_per_process(self) -> None:
        """Every client of the process gets the same scheduler."""
        assert _scheduler.scheduler() is _scheduler.scheduler()

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
    def test_a_forked_child_gets_a_new_scheduler(self) -> None:
        """In a child, the parent's scheduler is forgotten and a new one is made on demand."""
        parent = _scheduler.scheduler()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                ok = _scheduler.scheduler() is not parent and _scheduler._scheduler is not None
                os.write(write, b"1" if ok else b"0")
            finally:
                os._exit(0)
        os.close(write)
        try:
            assert os.read(read, 1) == b"1"
        finally:
            os.close(read)
            os.waitpid(pid, 0)
