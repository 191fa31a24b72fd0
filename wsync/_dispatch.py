"""The callbacks thread: the only place user code runs, in order.

Its one job: run the user's callbacks (``on_state_change``, ``on_response``,
``on_error``, listeners, futures' done-callbacks) on the thread ``wsync-callbacks-<n>``.
User code never runs on the socket-reading thread nor under the client's lock: the
engine enqueues items while it holds its lock (so they keep the order in which the
state machine produced them) and this thread runs them after releasing it. One thread
keeps every callback in order; an exception raised by one is logged and changes nothing.
The queue shares the client's lock, so enqueueing costs no second lock. It must not
touch the machine, the ledger or a socket.

It also holds :class:`Callbacks`, the user's callables, which the client owns and the
engine sees only through a weak reference.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from wsync._exit import start_thread
from wsync._values import ErrorCallback, ResponseCallback, StateCallback

__all__ = ["Callbacks", "Dispatcher", "call_each", "changed"]

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
        self.dropped = 0  # items dropped by cut(): counted in close()'s warning

    def __len__(self) -> int:
        """How many items wait (caller holds the lock)."""
        return len(self._items)

    def enable(self) -> None:
        """Let the thread start with the first item: a client with nothing to call back never
        pays for it (an idle client's memory is mostly its threads' stacks). Caller holds the
        lock."""
        self._enabled = True
        if self._items:
            self._start()

    def _start(self) -> None:
        if self.thread is None and not self._stopping:
            thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            if not start_thread(thread):
                # At interpreter shutdown no thread starts: the items wait, and close() runs
                # them in its own thread (drain_inline).
                self._enabled = False
                return
            self.thread = thread

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

    def accepting(self) -> bool:
        """Whether items put now will run (not stopping). Caller holds the lock."""
        return not self._stopping

    def cut(self, keep: Callable[[Callable[..., Any], tuple[Any, ...]], bool] | None = None) -> int:
        """Drop every item not started yet (except those ``keep`` accepts); return how many
        were dropped. Caller holds the lock.

        ``close()`` calls it at its deadline: after it returns, no further callback starts
        but the kept ones (the CLOSED state change), and with no ``keep``, none at all.
        """
        kept = deque(item for item in self._items if keep is not None and keep(*item))
        dropped = len(self._items) - len(kept)
        self._items = kept
        self._stopping = True
        self.dropped += dropped
        self._cv.notify()
        return dropped

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
                fn, args = self._items.popleft()
            _run_item(fn, args)

    def _run(self) -> None:
        # One item per hold of the lock, so that cut() also stops what is queued already.
        while True:
            with self._lock:
                while not self._items and not self._stopping:
                    self._cv.wait()
                if not self._items:
                    return
                fn, args = self._items.popleft()
            _run_item(fn, args)


def _run_item(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        fn(*args)
    except Exception:
        logger.exception("a wsync callback raised; ignored")
    except BaseException:
        # SystemExit or KeyboardInterrupt raised by a callback: logged at ERROR with its
        # traceback, and the callbacks thread goes on (the other callbacks and close() rely
        # on it). It cannot propagate anywhere useful: this thread has no caller.
        logger.exception("a wsync callback raised a BaseException; ignored")


def call_each(
    first: Callable[[Any], object] | None, more: Sequence[Callable[[Any], object]], arg: Any
) -> None:
    """Call ``first`` then each of ``more`` with ``arg``; one that raises does not stop the rest."""
    for fn in (first, *more):
        if fn is not None:
            try:
                fn(arg)
            except Exception:
                logger.exception("a wsync callback raised; ignored")


def changed(items: tuple[Any, ...], fn: Any, add: bool) -> tuple[Any, ...]:
    """``items`` with ``fn`` added, or its first equal removed (a listener added twice is
    removed once)."""
    if fn is None:
        return items
    if add:
        return (*items, fn)
    listed = list(items)
    if fn in listed:
        listed.remove(fn)
    return tuple(listed)


class Callbacks:
    """The user's callbacks. The Client holds this; the engine only a weak reference to it.

    So a callback that refers back to its owner (``self.client = Client(url,
    on_response=self.handle)``) forms no cycle through the running threads, and a forgotten
    client can still be collected and closed.
    """

    __slots__ = (
        "__weakref__", "on_error", "on_response", "on_state_change",
        "response_listeners", "state_listeners",
    )

    def __init__(
        self,
        on_state_change: StateCallback | None,
        on_response: ResponseCallback | None,
        on_error: ErrorCallback | None,
    ) -> None:
        self.on_state_change = on_state_change
        self.on_response = on_response
        self.on_error = on_error
        # Client.add_listener's, called after the callback above. Replaced whole (under the
        # engine's lock), never changed in place: the callbacks thread reads them unlocked.
        self.state_listeners: tuple[StateCallback, ...] = ()
        self.response_listeners: tuple[ResponseCallback, ...] = ()
