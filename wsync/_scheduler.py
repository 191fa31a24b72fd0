"""One process-wide timer thread, ``wsync-timer``, that runs every client's deadlines.

Its one job: call each registered :class:`Job`'s ``fire()`` once its deadline has come, from
a heap of ``(deadline, job)``, and run the thread only while some client needs it (started
with the first registered job, ended when the last one is removed; the caller that removes
the last job joins it). It must not touch a client's machine, lock or socket, and it never
holds its own lock while a job fires: a job takes its client's lock, then may reschedule
itself, so the lock order is always *client lock, then scheduler lock*. Jobs must never
block (no I/O, no connection attempt, no user code): every client shares this thread.

A forked child forgets the parent's scheduler (its thread does not exist there and its lock
may be held for ever): :func:`scheduler` makes a new one on demand.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

from wsync import _exit
from wsync._timers import Clock

__all__ = ["Job", "Scheduler", "scheduler"]

logger = logging.getLogger(__name__)

# Stale heap entries (deadlines that moved) are dropped when they outnumber the live ones
# by this much, so a client whose deadline keeps moving cannot grow the heap.
_SLACK: Final = 64


class Job(Protocol):
    """A client's deadlines, as the scheduler sees them."""

    #: The deadline the scheduler holds for this job (its earliest heap entry), or None.
    #: Written by the scheduler only, under its lock.
    due: float | None

    def fire(self) -> None:
        """Do what is due now and reschedule (on the timer thread; must never block)."""
        ...


class Scheduler:
    """Runs jobs at their deadlines on one thread.

    Args:
        clock: the monotonic clock deadlines are given in.
        name: the thread's name.
        start: starts a thread; False when the interpreter refuses (shutting down).
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        name: str = "wsync-timer",
        start: Callable[[threading.Thread], bool] = _exit.start_thread,
    ) -> None:
        self._clock = clock
        self._name = name
        self._start = start
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._jobs: set[Job] = set()
        self.thread: threading.Thread | None = None

    def __len__(self) -> int:
        """How many jobs are registered."""
        with self._lock:
            return len(self._jobs)

    def add(self, job: Job) -> None:
        """Register ``job`` (it runs nothing until scheduled); start the thread if none runs.

        May be called with a client's lock held.
        """
        with self._lock:
            self._jobs.add(job)
            job.due = None
            if self.thread is None:
                thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self.thread = thread
                if not self._start(thread):
                    # Interpreter shutdown: no deadline runs; the next add() tries again.
                    logger.debug("interpreter shutting down: no timer thread")
                    self.thread = None

    def remove(self, job: Job) -> threading.Thread | None:
        """Forget ``job``. When it was the last one, the thread is told to end and returned:
        the caller joins it (without holding any lock the jobs take)."""
        with self._lock:
            self._jobs.discard(job)
            job.due = None
            if self._jobs or self.thread is None:
                return None
            thread, self.thread = self.thread, None
            self._heap.clear()
            self._cv.notify_all()
            return thread

    def schedule(self, job: Job, when: float | None) -> None:
        """Fire ``job`` at ``when`` (None: not at all), instead of the deadline held before.

        May be called with a client's lock held; a job that is not registered is ignored.
        The entry of a deadline replaced stays in the heap, stale: the thread drops it when
        it comes (a wake-up, no firing).
        """
        if when == job.due:
            return  # the fast path of most wakes (a pong that leaves the next ping as it was)
        with self._lock:
            if job not in self._jobs or when == job.due:
                return
            job.due = when
            if when is None:
                return
            heap = self._heap
            heapq.heappush(heap, (when, next(self._seq), job))
            if len(heap) > 2 * len(self._jobs) + _SLACK:
                self._compact()
            if heap[0][2] is job:
                self._cv.notify()  # the thread's next wake-up moved earlier

    def take_due(self, now: float) -> tuple[list[Job], float | None]:
        """The jobs due at ``now`` (each unscheduled) and the next deadline after them.

        The thread's one step, public for tests with a fake clock.
        """
        with self._lock:
            return self._take_due(now)

    def _take_due(self, now: float) -> tuple[list[Job], float | None]:
        heap = self._heap
        jobs = self._jobs
        due: list[Job] = []
        while heap:
            when, _, job = heap[0]
            live = job.due == when and job in jobs
            if live and when > now:
                return due, when
            heapq.heappop(heap)  # due, or stale: a stale entry never wakes the thread
            if live:
                job.due = None
                due.append(job)
        return due, None

    def _compact(self) -> None:
        self._heap = [(j.due, next(self._seq), j) for j in self._jobs if j.due is not None]
        heapq.heapify(self._heap)

    def _run(self) -> None:
        me = threading.current_thread()
        clock = self._clock
        while True:
            with self._lock:
                while True:
                    if self.thread is not me:
                        return  # no job left (or a fork made us an orphan)
                    now = clock()
                    due, next_at = self._take_due(now)
                    if due:
                        break
                    self._cv.wait(None if next_at is None else next_at - now)
            for job in due:
                try:
                    job.fire()
                except Exception:
                    logger.exception("internal error in the timer thread")


_scheduler: Scheduler | None = None
_create_lock = threading.Lock()


def scheduler() -> Scheduler:
    """The process's scheduler (a new one in a forked child)."""
    global _scheduler
    current = _scheduler
    if current is None:
        with _create_lock:
            if _scheduler is None:
                _scheduler = Scheduler()
            current = _scheduler
    return current


def _forget_inherited() -> None:
    """In a forked child: the parent's timer thread does not exist here."""
    global _scheduler, _create_lock
    _scheduler = None
    _create_lock = threading.Lock()


_exit.on_fork_in_child(_forget_inherited)
