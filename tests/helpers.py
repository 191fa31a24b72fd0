"""Shared test helpers: import them as ``from tests.helpers import TIMEOUT, FakeClock``."""

from __future__ import annotations

from typing import Final

__all__ = ["TIMEOUT", "FakeClock"]

TIMEOUT: Final = 5.0
"""Upper bound, in seconds, for any wait in a test. A passing test never reaches it."""


class FakeClock:
    """A monotonic clock that moves only when the test says so.

    Pass ``clock.now`` (or the clock itself: it is callable) where code takes a clock.
    It starts away from zero so that code mistaking 0 for "unset" shows up.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        """Return the current fake time in seconds."""
        return self._now

    __call__ = now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (>= 0) and return the new time."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward, got {seconds!r}")
        self._now += seconds
        return self._now

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"
