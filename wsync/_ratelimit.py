"""Token bucket for outgoing messages: pure arithmetic on an injected clock value."""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]


class TokenBucket:
    """Allows ``rate`` messages per second on average and at most ``burst`` at once.

    Pure: every method takes ``now`` (monotonic seconds) from the caller, so tests use
    a fake clock and the writer thread waits exactly until the next token, never polls.
    """

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, *, burst: float | None = None, now: float) -> None:
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate must be > 0 and finite, got {rate!r}")
        self._rate = float(rate)
        # One second's worth, but never less than one message.
        self._burst = max(1.0, float(burst if burst is not None else rate))
        self._tokens = self._burst
        self._stamp = now

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self._rate

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now

    def take(self, wanted: int, now: float) -> int:
        """Take up to ``wanted`` whole tokens; return how many were granted."""
        self._refill(now)
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted

    def give_back(self, count: int) -> None:
        """Return ``count`` tokens taken but not used."""
        self._tokens = min(self._burst, self._tokens + count)

    def next_token_at(self, now: float) -> float:
        """The monotonic time at which at least one whole token is available."""
        self._refill(now)
        if self._tokens >= 1.0:
            return now
        return now + (1.0 - self._tokens) / self._rate
