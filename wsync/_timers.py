"""Time helpers with no threads: the clock type and :class:`Deadline`.

Its one job: one timeout shared by several waits. It must not start threads, take locks
or sleep: the waits themselves belong to the caller (``Condition.wait``, ``Thread.join``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "Deadline"]

#: A monotonic clock in seconds (``time.monotonic`` in production, a fake one in tests).
Clock = Callable[[], float]


class Deadline:
    """One timeout shared by several waits. ``None`` means no limit."""

    __slots__ = ("_end",)

    def __init__(self, timeout: float | None) -> None:
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None for no limit."""
        if self._end is None:
            return None
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        """Whether the time is up."""
        return self._end is not None and time.monotonic() >= self._end
