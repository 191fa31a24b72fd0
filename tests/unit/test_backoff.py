"""Backoff: the reconnection policy value and its pure delay formula."""

from __future__ import annotations

import math
import random

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsync._backoff import Backoff


def _never_called() -> float:
    raise AssertionError("rand must not be called when jitter is 0")


class TestDefaults:
    def test_default_fields(self) -> None:
        """The documented defaults: 1 s initial, factor 2, 16 s cap, 5 attempts, no jitter."""
        b = Backoff()
        assert (b.initial, b.factor, b.max_delay, b.max_attempts, b.jitter) == (
            1.0,
            2.0,
            16.0,
            5,
            0.0,
        )

    def test_default_delays(self) -> None:
        """The defaults give 1, 2, 4, 8, 16 seconds before attempts 1 to 5."""
        b = Backoff()
        assert [b.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]

    def test_default_gives_up_after_five(self) -> None:
        """The default policy allows attempts 1 to 5 and none after the fifth."""
        b = Backoff()
        assert [b.gives_up_after(n) for n in range(1, 7)] == [False] * 4 + [True, True]

    def test_is_frozen(self) -> None:
        """A Backoff cannot be changed after construction."""
        b = Backoff()
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            b.initial = 2.0  # type: ignore[misc]

    def test_keyword_only(self) -> None:
        """Fields are keyword-only, so a positional call cannot mix them up."""
        with pytest.raises(TypeError):
            Backoff(1.0)  # type: ignore[misc]

    def test_equal_values_compare_equal(self) -> None:
        """Two policies with the same fields are equal and hash alike."""
        assert Backoff(initial=0.5) == Backoff(initial=0.5)
        assert hash(Backoff(initial=0.5)) == hash(Backoff(initial=0.5))


class TestDelay:
    def test_cap(self) -> None:
        """No delay exceeds max_delay, however late the attempt."""
        b = Backoff(initial=1.0, factor=2.0, max_delay=5.0)
        assert [b.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
        assert b.delay(10_000) == 5.0

    def test_factor(self) -> None:
        """Each delay is factor times the one before until the cap."""
        b = Backoff(initial=0.5, factor=3.0, max_delay=100.0)
        assert [b.delay(n) for n in range(1, 5)] == [0.5, 1.5, 4.5, 13.5]

    def test_factor_one_is_constant(self) -> None:
        """factor=1 gives the same delay before every attempt."""
        b = Backoff(initial=0.25, factor=1.0)
        assert {b.delay(n) for n in range(1, 50)} == {0.25}

    def test_zero_initial(self) -> None:
        """initial=0 retries at once, every time."""
        b = Backoff(initial=0.0)
        assert [b.delay(n) for n in range(1, 4)] == [0.0, 0.0, 0.0]

    def test_cap_below_initial(self) -> None:
        """A cap smaller than initial wins from the first attempt."""
        assert Backoff(initial=10.0, max_delay=3.0).delay(1) == 3.0

    def test_huge_attempt_does_not_overflow(self) -> None:
        """A very large attempt number gives the cap, not an OverflowError."""
        b = Backoff(initial=1.0, factor=10.0, max_delay=60.0)
        assert b.delay(10**9) == 60.0

    def test_no_jitter_never_calls_rand(self) -> None:
        """Without jitter the delay is exact and rand is not consulted."""
        assert Backoff().delay(3, rand=_never_called) == 4.0

    def test_jitter_low_bound(self) -> None:
        """rand() == 0 moves the delay down by the full jitter fraction."""
        b = Backoff(initial=4.0, factor=1.0, jitter=0.25)
        assert b.delay(1, rand=lambda: 0.0) == pytest.approx(3.0)

    def test_jitter_high_bound(self) -> None:
        """rand() just under 1 moves the delay up by almost the full jitter fraction."""
        b = Backoff(initial=4.0, factor=1.0, jitter=0.25)
        high = b.delay(1, rand=lambda: math.nextafter(1.0, 0.0))
        assert 4.0 < high <= 5.0
        assert high == pytest.approx(5.0)

    def test_jitter_midpoint_is_exact(self) -> None:
        """rand() == 0.5 leaves the delay unchanged."""
        b = Backoff(initial=4.0, factor=1.0, jitter=0.5)
        assert b.delay(1, rand=lambda: 0.5) == 4.0

    def test_jitter_applies_after_cap(self) -> None:
        """Jitter moves the capped delay, so it may exceed max_delay by the fraction."""
        b = Backoff(initial=1.0, factor=2.0, max_delay=8.0, jitter=0.5)
        assert b.delay(10, rand=lambda: 0.0) == pytest.approx(4.0)
        assert b.delay(10, rand=lambda: math.nextafter(1.0, 0.0)) == pytest.approx(12.0)

    def test_full_jitter_never_negative(self) -> None:
        """jitter=1 with rand() == 0 gives 0, never a negative delay."""
        assert Backoff(initial=2.0, jitter=1.0).delay(1, rand=lambda: 0.0) == 0.0

    def test_seeded_rand_is_repeatable(self) -> None:
        """The same seeded rand gives the same delays."""
        b = Backoff(jitter=0.3)
        first = [b.delay(n, rand=random.Random(7).random) for n in range(1, 6)]
        again = [b.delay(n, rand=random.Random(7).random) for n in range(1, 6)]
        assert first == again

    @given(
        initial=st.floats(0, 100),
        factor=st.floats(1, 10),
        max_delay=st.floats(0, 1000),
        attempt=st.integers(1, 60),
    )
    def test_formula(self, initial: float, factor: float, max_delay: float, attempt: int) -> None:
        """Without jitter the delay is min(initial * factor**(n-1), max_delay)."""
        b = Backoff(initial=initial, factor=factor, max_delay=max_delay)
        assert b.delay(attempt) == pytest.approx(min(initial * factor ** (attempt - 1), max_delay))

    @given(
        initial=st.floats(0, 100),
        factor=st.floats(1, 10),
        max_delay=st.floats(0, 1000),
        jitter=st.floats(0, 1),
        attempt=st.integers(1, 10**6),
        r=st.floats(0, 1, exclude_max=True),
    )
    def test_jitter_within_bounds(
        self,
        initial: float,
        factor: float,
        max_delay: float,
        jitter: float,
        attempt: int,
        r: float,
    ) -> None:
        """Every delay is finite, capped, and within jitter of the delay without jitter."""
        b = Backoff(initial=initial, factor=factor, max_delay=max_delay, jitter=jitter)
        base = attrs.evolve(b, jitter=0.0).delay(attempt)
        d = b.delay(attempt, rand=lambda: r)
        assert 0.0 <= base <= max_delay
        assert math.isfinite(d)
        assert base * (1 - jitter) - 1e-9 <= d <= base * (1 + jitter) + 1e-9

    @pytest.mark.parametrize("attempt", [0, -1])
    def test_attempt_below_one(self, attempt: int) -> None:
        """Attempt numbers start at 1."""
        with pytest.raises(ValueError, match="attempt"):
            Backoff().delay(attempt)

    @pytest.mark.parametrize("attempt", [1.0, "1", None, True])
    def test_attempt_not_int(self, attempt: object) -> None:
        """A non-int attempt number (bool included) is a TypeError."""
        with pytest.raises(TypeError, match="attempt"):
            Backoff().delay(attempt)  # type: ignore[arg-type]


class TestMaxAttempts:
    def test_none_never_gives_up(self) -> None:
        """max_attempts=None retries forever."""
        b = Backoff(max_attempts=None)
        assert not any(b.gives_up_after(n) for n in (1, 5, 1_000, 10**12))

    def test_zero_gives_up_at_once(self) -> None:
        """max_attempts=0 makes no attempt of its own."""
        b = Backoff(max_attempts=0)
        assert b.gives_up_after(0)
        assert b.gives_up_after(1)

    def test_gives_up_exactly_at_max(self) -> None:
        """With max_attempts=n, attempt n is the last."""
        b = Backoff(max_attempts=3)
        assert not b.gives_up_after(2)
        assert b.gives_up_after(3)
        assert b.gives_up_after(4)


class TestValidation:
    @pytest.mark.parametrize("field", ["initial", "factor", "max_delay", "jitter"])
    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_non_finite_is_value_error(self, field: str, value: float) -> None:
        """NaN and infinities are rejected with ValueError naming the field."""
        with pytest.raises(ValueError, match=field):
            Backoff(**{field: value})

    @pytest.mark.parametrize("field", ["initial", "factor", "max_delay", "jitter"])
    @pytest.mark.parametrize("value", [True, False, "1", None, [1.0], 1j])
    def test_non_number_is_type_error(self, field: str, value: object) -> None:
        """A bool, string, None or other non-real is a TypeError naming the field."""
        with pytest.raises(TypeError, match=field):
            Backoff(**{field: value})

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("initial", -0.001),
            ("factor", 0.999),
            ("factor", 0.0),
            ("max_delay", -1.0),
            ("jitter", -0.1),
            ("jitter", 1.5),
        ],
    )
    def test_out_of_range_is_value_error(self, field: str, value: float) -> None:
        """Values outside their documented range are a ValueError naming the field."""
        with pytest.raises(ValueError, match=field):
            Backoff(**{field: value})

    @pytest.mark.parametrize("value", [True, False, 1.0, 3.5, "5", math.nan])
    def test_max_attempts_not_int(self, value: object) -> None:
        """max_attempts must be an int or None; bool and float are TypeErrors."""
        with pytest.raises(TypeError, match="max_attempts"):
            Backoff(max_attempts=value)  # type: ignore[arg-type]

    def test_max_attempts_negative(self) -> None:
        """A negative max_attempts is a ValueError."""
        with pytest.raises(ValueError, match="max_attempts"):
            Backoff(max_attempts=-1)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"initial": 0},
            {"factor": 1},
            {"max_delay": 0},
            {"jitter": 0},
            {"jitter": 1},
            {"max_attempts": 0},
            {"max_attempts": None},
        ],
    )
    def test_boundary_values_accepted(self, kwargs: dict[str, object]) -> None:
        """The edges of each range, ints included, are valid."""
        Backoff(**kwargs)  # type: ignore[arg-type]

    def test_error_message_style(self) -> None:
        """Messages say what failed and the value, lowercase, without a final period."""
        with pytest.raises(ValueError) as info:
            Backoff(initial=-1.0)
        message = str(info.value)
        assert message == "initial must be >= 0, got -1.0"


class TestResetAfter:
    def test_default(self) -> None:
        """A connection proves itself after 10 s CONFIRMED by default."""
        assert Backoff().reset_after == 10.0

    @pytest.mark.parametrize("value", [0, 0.0, 2, 3.5])
    def test_accepted(self, value: float) -> None:
        """Zero (proven at the confirm) and any positive number are valid."""
        assert Backoff(reset_after=value).reset_after == value

    def test_negative_is_value_error(self) -> None:
        """A negative reset_after is a ValueError in the house style."""
        with pytest.raises(ValueError) as info:
            Backoff(reset_after=-1)
        assert str(info.value) == "reset_after must be >= 0, got -1"

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_non_finite_is_value_error(self, value: float) -> None:
        """NaN and infinities are rejected with ValueError naming reset_after."""
        with pytest.raises(ValueError, match="reset_after"):
            Backoff(reset_after=value)

    @pytest.mark.parametrize("value", [True, "10", None, [1.0]])
    def test_non_number_is_type_error(self, value: object) -> None:
        """A bool, string, None or list is a TypeError naming reset_after."""
        with pytest.raises(TypeError, match="reset_after"):
            Backoff(reset_after=value)  # type: ignore[arg-type]

    def test_part_of_the_value(self) -> None:
        """Policies differing only in reset_after are not equal."""
        assert Backoff(reset_after=1.0) != Backoff(reset_after=2.0)
        assert attrs.evolve(Backoff(), reset_after=3.0).reset_after == 3.0
