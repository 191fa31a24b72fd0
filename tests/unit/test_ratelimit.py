"""SlidingWindow: the outgoing rate limit, checked on fake timelines (no clock, no threads).

Times are multiples of 1/8 s (exact in binary), so the window arithmetic is exact and every
window of the timeline can be counted.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsync._ratelimit import SlidingWindow

T0 = 1000.0
STEP = 0.125


def most_in_any_window(stamps: list[float], width: float) -> int:
    """The most writes in any half-open window ``[x, x + width)`` (one starts at a write)."""
    return max((sum(1 for t in stamps if s <= t < s + width) for s in stamps), default=0)


def greedy(window: SlidingWindow, seconds: float, wanted: int = 1_000) -> list[float]:
    """A writer that always has ``wanted`` messages and writes all it may at every step."""
    stamps: list[float] = []
    for k in range(int(seconds / STEP)):
        now = T0 + k * STEP
        stamps += [now] * window.take(wanted, now)
    return stamps


class TestValidation:
    @pytest.mark.parametrize("rate", [0, 0.0, -1.0, math.nan, math.inf, -math.inf])
    def test_bad_rate_is_value_error(self, rate: float) -> None:
        """A rate that is not > 0 and finite is a ValueError naming it."""
        with pytest.raises(ValueError, match="rate must be > 0 and finite"):
            SlidingWindow(rate)

    @pytest.mark.parametrize(
        ("rate", "limit", "window"),
        [(1, 1, 1.0), (2.5, 2, 1.0), (10.0, 10, 1.0), (1.5, 1, 1.0), (0.5, 1, 2.0), (0.25, 1, 4.0)],
    )
    def test_limit_and_window(self, rate: float, limit: int, window: float) -> None:
        """At least 1: floor(rate) writes per second; below 1, one write per 1/rate seconds."""
        w = SlidingWindow(rate)
        assert (w.limit, w.window, w.rate) == (limit, window, float(rate))


class TestWindow:
    def test_no_burst_in_the_first_second(self) -> None:
        """However many are wanted at once, only floor(rate) are allowed in the first second."""
        w = SlidingWindow(2.5)
        assert w.take(100, T0) == 2
        assert w.take(100, T0 + 0.999) == 0

    @pytest.mark.parametrize("rate", [1, 2, 2.5, 3, 7, 10, 100])
    def test_never_more_than_the_rate_in_any_second(self, rate: float) -> None:
        """A writer that always has messages never gets more than floor(rate) in any 1 s window."""
        stamps = greedy(SlidingWindow(rate), seconds=6)
        assert most_in_any_window(stamps, 1.0) == math.floor(rate)
        assert len(stamps) == 6 * math.floor(rate)  # and the rate is reached, not undercut

    @pytest.mark.parametrize(("rate", "period"), [(0.5, 2.0), (0.25, 4.0)])
    def test_slow_rates_one_per_period(self, rate: float, period: float) -> None:
        """A rate below 1 allows one write per 1/rate seconds, never two in one period."""
        stamps = greedy(SlidingWindow(rate), seconds=20)
        assert most_in_any_window(stamps, period) == 1
        assert len(stamps) == 20 / period
        assert all(b - a == period for a, b in itertools.pairwise(stamps))

    @given(
        rate=st.sampled_from([1, 2, 2.5, 3, 5]),
        steps=st.lists(
            st.tuples(st.integers(0, 12), st.integers(0, 4)),  # (eighths of a second, wanted)
            max_size=80,
        ),
    )
    def test_any_timeline(self, rate: float, steps: list[tuple[int, int]]) -> None:
        """On any timeline of requests, no one-second window holds more than floor(rate) writes."""
        w = SlidingWindow(rate)
        now = T0
        stamps: list[float] = []
        for gap, wanted in steps:
            now += gap * STEP
            available = w.available(now)
            granted = w.take(wanted, now)
            assert granted == min(wanted, available)
            stamps += [now] * granted
        assert most_in_any_window(stamps, 1.0) <= math.floor(rate)

    def test_slot_frees_exactly_one_window_later(self) -> None:
        """A write at t counts until t + 1 s exactly, and no longer."""
        w = SlidingWindow(1)
        assert w.take(1, T0) == 1
        assert w.available(T0 + 1 - STEP) == 0
        assert w.available(T0 + 1) == 1

    def test_next_at(self) -> None:
        """next_at() is now while a slot is free, else when the oldest write leaves the window."""
        w = SlidingWindow(2)
        assert w.next_at(T0) == T0
        w.take(1, T0)
        w.take(1, T0 + 0.25)
        assert w.next_at(T0 + 0.5) == T0 + 1
        assert w.take(1, w.next_at(T0 + 0.5)) == 1
        assert w.next_at(T0 + 1) == T0 + 1.25

    def test_take_zero(self) -> None:
        """Asking for nothing records nothing."""
        w = SlidingWindow(1)
        assert w.take(0, T0) == 0
        assert w.available(T0) == 1

    def test_memory_bounded_by_the_rate(self) -> None:
        """The window keeps at most floor(rate) times, however much traffic went through."""
        w = SlidingWindow(3)
        greedy(w, seconds=100)
        assert len(w._stamps) <= 3


class TestGiveBack:
    def test_give_back_frees_slots(self) -> None:
        """Slots taken for messages that were not written after all can be used again."""
        w = SlidingWindow(3)
        assert w.take(3, T0) == 3
        w.give_back(2)
        assert w.available(T0) == 2

    def test_give_back_forgets_the_latest(self) -> None:
        """give_back() forgets the most recent writes, so the oldest still frees first."""
        w = SlidingWindow(2)
        w.take(1, T0)
        w.take(1, T0 + 0.5)
        w.give_back(1)
        assert w.take(1, T0 + 0.75) == 1
        assert w.next_at(T0 + 0.75) == T0 + 1

    def test_give_back_more_than_taken(self) -> None:
        """Giving back more than was recorded empties the window and no more."""
        w = SlidingWindow(2)
        w.take(1, T0)
        w.give_back(5)
        assert w.available(T0) == 2
