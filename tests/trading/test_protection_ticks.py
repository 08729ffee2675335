"""Protective levels on Alpaca's price grid: cents from $1, $0.0001 below (a penny stock's
stop rounded to the cent became $0.00 and stopped a broad-universe backtest)."""

from __future__ import annotations

import pytest

from app.trading.protection import protective_levels, to_tick
from app.trading.risk import RiskLimits


@pytest.mark.parametrize(
    ("price", "expected"),
    [(100.005, 100.01), (1.0, 1.0), (1.234, 1.23), (0.99995, 1.0), (0.00475, 0.0048)],
)
def test_to_tick_rounds_half_up_to_the_cent_from_a_dollar_and_to_a_hundredth_cent_below(
    price: float, expected: float
) -> None:
    assert to_tick(price) == expected


def test_a_sub_penny_entry_keeps_a_stop_below_it_and_above_zero() -> None:
    stop, target = protective_levels(0.005, RiskLimits())
    assert 0 < stop < 0.005 < target
    assert (stop, target) == (0.0048, 0.0055)
