"""The outgoing rate limit: a sliding window, pure arithmetic on an injected clock value.

Its one job: decide how many messages may be written at ``now`` so that no window of
``window`` seconds ever holds more than ``limit`` writes. It must not know about threads,
sockets or the queue: the ledger asks it, the writer waits for :meth:`SlidingWindow.next_at`.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["SlidingWindow"]


class SlidingWindow:
    """At most ``rate`` messages written in any one-second window.

    For ``rate`` >= 1 the window is one second and holds ``floor(rate)`` writes (2.5 allows
    2 per second: never more than the rate). For ``rate`` < 1 one write per ``1 / rate``
    seconds. Unlike a token bucket it allows no burst above the limit in the first second.
    It keeps the times of the last ``limit`` writes, so memory grows with the rate, not
    with the traffic.

    Pure: every method takes ``now`` (monotonic seconds) from the caller, so tests use a fake
    clock and the writer waits exactly until the next slot, never polls.

    Args:
        rate: messages per second, > 0 and finite.
        now: the current monotonic time (unused but for symmetry with the other policies).
    """

    __slots__ = ("_stamps", "limit", "rate", "window")

    def __init__(self, rate: float, *, now: float = 0.0) -> None:
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate must be > 0 and finite, got {rate!r}")
        self.rate = float(rate)
        self.limit = max(1, int(rate))
        self.window = max(1.0, self.limit / self.rate)
        self._stamps: deque[float] = deque()

    def _expire(self, now: float) -> None:
        stamps = self._stamps
        horizon = now - self.window
        while stamps and stamps[0] <= horizon:
            stamps.popleft()

    def available(self, now: float) -> int:
        """How many messages may be written at ``now``."""
        self._expire(now)
        return self.limit - len(self._stamps)

    def take(self, wanted: int, now: float) -> int:
        """Record up to ``wanted`` writes at ``now``; return how many are allowed."""
        granted = min(wanted, self.available(now))
        self._stamps.extend([now] * granted)
        return granted

    def give_back(self, count: int) -> None:
        """Forget the last ``count`` writes recorded (taken but not written after all)."""
        for _ in range(min(count, len(self._stamps))):
            self._stamps.pop()

    def next_at(self, now: float) -> float:
        """The monotonic time at which at least one more write is allowed."""
        if self.available(now) > 0:
            return now
        return self._stamps[0] + self.window
