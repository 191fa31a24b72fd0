"""Small standalone helpers of the engine: constants, callback holder, ids, deadlines.

Its one job: values and helpers with no knowledge of the engine, its lock or its threads.
It must not import ``_engine`` or ``_loops``, start threads, take locks, or do I/O (apart
from logging). Everything here is re-exported from ``wsync._engine``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from wsync._values import ConnectionState
from wsync.protocol import Response

logger = logging.getLogger("wsync")

Clock = Callable[[], float]
StateCallback = Callable[[ConnectionState], Any]
ResponseCallback = Callable[[Response], Any]
ErrorCallback = Callable[[Any], Any]

# How long close() lets the server answer our close frame before tearing the socket down.
CLOSE_HANDSHAKE: Final = 1.0
# At most this many warnings about malformed frames per window; the rest are counted.
MALFORMED_WARNINGS: Final = 5
MALFORMED_WINDOW: Final = 10.0

_getrandbits = random.getrandbits


def uuid4_text() -> str:
    """A random UUID version 4, as ``str(uuid.uuid4())`` writes it, several times faster.

    Message ids must be unique, not secret: Python's own generator (re-seeded in a forked
    child) gives 122 random bits without the system call ``uuid.uuid4()`` makes for each id.
    """
    n = (_getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48)) | (0x4000 << 64) | (0x8000 << 48)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"



class Deadline:
    """One timeout shared by several waits. ``None`` means no limit."""

    __slots__ = ("_end",)

    def __init__(self, timeout: float | None) -> None:
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        if self._end is None:
            return None
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return self._end is not None and time.monotonic() >= self._end


class _MalformedLog:
    """Warns about malformed frames a few times per window, then summarises with a count."""

    def __init__(self) -> None:
        self._window_start = -MALFORMED_WINDOW
        self._warned = 0
        self._suppressed = 0

    def report(self, reason: str, now: float) -> None:
        if now - self._window_start >= MALFORMED_WINDOW:
            if self._suppressed:
                logger.warning(
                    "dropped %d more malformed frames in the last %.0f s",
                    self._suppressed,
                    now - self._window_start,
                )
            self._window_start = now
            self._warned = 0
            self._suppressed = 0
        if self._warned < MALFORMED_WARNINGS:
            self._warned += 1
            logger.warning("dropped a malformed frame: %s", reason)
        else:
            self._suppressed += 1


def _call_each(first: Callable[[Any], Any] | None, more: Sequence[Callable[[Any], Any]],
               arg: Any) -> None:
    """Call ``first`` then each of ``more`` with ``arg``; one that raises does not stop the rest."""
    for fn in (first, *more):
        if fn is not None:
            try:
                fn(arg)
            except BaseException:  # like the dispatcher: the callbacks thread outlives user code
                logger.exception("a wsync callback raised; ignored")


def _changed(items: tuple[Any, ...], fn: Any, add: bool) -> tuple[Any, ...]:
    if fn is None:
        return items
    if add:
        return (*items, fn)
    listed = list(items)
    if fn in listed:
        listed.remove(fn)  # the first one equal: a listener added twice is removed once
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
