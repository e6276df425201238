"""The local learning rate the aggregator's plans carry from round to round."""

import pytest

from services.aggregator.round_schedule import round_learning_rate


def test_constant_keeps_the_configured_rate_in_every_round() -> None:
    assert [round_learning_rate(3e-4, r, 12, schedule="constant", floor=0.1) for r in range(1, 13)] == [3e-4] * 12


def test_cosine_starts_at_the_rate_halves_the_way_midway_and_ends_at_the_floor() -> None:
    # Three rounds, floor 0.2: 1, then 0.2 + 0.8 * (1 + cos(pi / 2)) / 2 = 0.6, then 0.2.
    rates = [round_learning_rate(0.01, r, 3, schedule="cosine", floor=0.2) for r in (1, 2, 3)]
    assert rates == pytest.approx([0.01, 0.006, 0.002])
    # Four rounds: cos(pi / 3) = 0.5, so round 2 is 0.2 + 0.8 * 0.75 = 0.8 of the rate.
    assert round_learning_rate(1.0, 2, 4, schedule="cosine", floor=0.2) == pytest.approx(0.8)


def test_cosine_falls_every_round_symmetrically_about_the_middle() -> None:
    rates = [round_learning_rate(1.0, r, 12, schedule="cosine", floor=0.1) for r in range(1, 13)]
    assert all(later < earlier for earlier, later in zip(rates, rates[1:]))
    # cos(pi (1 - p)) = -cos(pi p): rounds r and 13 - r sum to 1 + floor.
    for r in range(1, 13):
        assert rates[r - 1] + rates[12 - r] == pytest.approx(1.1)


def test_one_round_and_the_closing_evaluation_stay_in_range() -> None:
    assert round_learning_rate(0.5, 1, 1, schedule="cosine", floor=0.1) == 0.5
    assert round_learning_rate(1.0, 13, 12, schedule="cosine", floor=0.1) == pytest.approx(0.1)


def test_an_unknown_schedule_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="'step'"):
        round_learning_rate(1.0, 2, 3, schedule="step", floor=0.1)  # type: ignore[arg-type]
