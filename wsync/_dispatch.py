"""The callbacks thread: runs user callbacks and slow future resolutions, in order.

User code never runs on the socket-reading thread nor under the client's lock: the
engine enqueues items while it holds its lock (so they keep the order in which the
state machine produced them) and this thread runs them after releasing it. One thread
keeps every callback in order; an exception raised by one is logged and changes nothing.
The queue shares the client's lock, so enqueueing costs no second lock.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Dispatcher"]

logger = logging.getLogger(__name__)

Item = tuple[Callable[..., Any], tuple[Any, ...]]


class Dispatcher:
    """An ordered queue of calls drained by the thread ``wsync-callbacks``.

    Args:
        lock: the client's lock; ``put`` and ``stop`` are called with it held.
        name: the thread's name.
    """

    def __init__(self, lock: threading.Lock, name: str = "wsync-callbacks") -> None:
        self._lock = lock
        self._cv = threading.Condition(lock)
        self._items: deque[Item] = deque()
        self._stopping = False
        self._enabled = False
        self._name = name
        self.thread: threading.Thread | None = None

    def enable(self) -> None:
        """Let the thread start with the first item: a client with nothing to call back never
        pays for it (an idle client's memory is mostly its threads' stacks). Caller holds the
        lock."""
        self._enabled = True
        if self._items:
            self._start()

    def _start(self) -> None:
        if self.thread is None and not self._stopping:
            self.thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self.thread.start()

    def put(self, fn: Callable[..., Any], *args: Any) -> None:
        """Enqueue ``fn(*args)``. Caller holds the lock."""
        self._items.append((fn, args))
        if len(self._items) == 1:
            if self.thread is None:
                if self._enabled:
                    self._start()
            else:
                self._cv.notify()

    def stop(self) -> None:
        """Run what is queued, then end. Caller holds the lock."""
        if self._enabled and self._items:
            self._start()  # the items queued last (CLOSED among them) still run on it
        self._stopping = True
        self._cv.notify()

    def on_thread(self) -> bool:
        """Whether the calling thread is the callbacks thread."""
        return self.thread is not None and threading.current_thread() is self.thread

    def barrier(self) -> threading.Event:
        """An event set once everything enqueued before it has run. Caller holds the lock."""
        event = threading.Event()
        if self.thread is None or (self._stopping and not self.thread.is_alive()):
            event.set()  # nothing runs items (yet, or any more)
        else:
            self.put(event.set)
        return event

    def drain_inline(self) -> None:
        """Run what is queued in the calling thread (a client whose thread never started)."""
        while True:
            with self._lock:
                if not self._items:
                    return
                batch = self._items
                self._items = deque()
            _run_items(batch)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._items and not self._stopping:
                    self._cv.wait()
                if not self._items:
                    return
                batch = self._items
                self._items = deque()
            _run_items(batch)


def _run_items(batch: deque[Item]) -> None:
    for fn, args in batch:
        try:
            fn(*args)
        except BaseException:  # SystemExit too: the callbacks thread must outlive user code
            logger.exception("a wsync callback raised; ignored")
