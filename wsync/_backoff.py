"""The reconnection policy: an immutable, validated value with a pure ``delay()``.

Its one job is the policy's arithmetic; it must not keep state, read a clock or draw its
own randomness (the caller passes ``rand``), so the machine's tests can replay any run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import attrs

__all__ = ["Backoff"]


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


@attrs.frozen(kw_only=True)
class Backoff:
    """How long to wait before each reconnection attempt, and how many to make.

    The delay before attempt ``n`` (1-based) is
    ``min(initial * factor ** (n - 1), max_delay)``, then moved by up to
    ``± jitter`` of itself at random. The defaults give 1, 2, 4, 8, 16 s and
    at most 5 attempts.

    The count starts again only once a confirmed connection has proven itself: it received
    a response or a pong, or stayed CONFIRMED for ``reset_after`` seconds. A server that
    confirms and then closes at once (revoked credentials, a crash loop) is a failed attempt:
    the delays grow and the policy gives up after ``max_attempts``.

    Args:
        initial: delay before the first attempt, seconds (>= 0).
        factor: growth per attempt (>= 1).
        max_delay: cap on the delay, seconds (>= 0).
        max_attempts: attempts before giving up; None retries forever; 0 never
            reconnects on its own.
        jitter: fraction in [0, 1] by which each delay may move either way.
        reset_after: seconds CONFIRMED after which a connection counts as proven even
            without a response or pong (>= 0).

    Raises:
        TypeError, ValueError: at construction, for a value of the wrong type or range.
    """

    initial: float = 1.0
    factor: float = 2.0
    max_delay: float = 16.0
    max_attempts: int | None = 5
    jitter: float = 0.0
    reset_after: float = 10.0

    def __attrs_post_init__(self) -> None:
        initial = _number("initial", self.initial)
        factor = _number("factor", self.factor)
        max_delay = _number("max_delay", self.max_delay)
        jitter = _number("jitter", self.jitter)
        if _number("reset_after", self.reset_after) < 0:
            raise ValueError(f"reset_after must be >= 0, got {self.reset_after!r}")
        if initial < 0:
            raise ValueError(f"initial must be >= 0, got {initial!r}")
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor!r}")
        if max_delay < 0:
            raise ValueError(f"max_delay must be >= 0, got {max_delay!r}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {jitter!r}")
        if self.max_attempts is not None:
            if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
                raise TypeError(
                    f"max_attempts must be an int or None, got {type(self.max_attempts).__name__}"
                )
            if self.max_attempts < 0:
                raise ValueError(f"max_attempts must be >= 0 or None, got {self.max_attempts!r}")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Return the delay in seconds before attempt number ``attempt`` (1-based).

        Args:
            attempt: the attempt number, >= 1.
            rand: returns a float in [0, 1); used only when ``jitter`` > 0.
                Inject a seeded one (``random.Random(7).random``) for repeatable delays.

        Raises:
            ValueError: ``attempt`` < 1.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            raise TypeError(f"attempt must be an int, got {type(attempt).__name__}")
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        # Cap the exponent so a huge attempt number cannot overflow the float.
        exponent = min(attempt - 1, 1024)
        try:
            base = min(self.initial * self.factor**exponent, self.max_delay)
        except OverflowError:
            base = self.max_delay
        if self.jitter:
            base *= 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return max(0.0, base)

    def gives_up_after(self, attempt: int) -> bool:
        """True when no attempt may follow attempt number ``attempt``."""
        return self.max_attempts is not None and attempt >= self.max_attempts
