"""Round 3's selection rule as code (docs/research.md, "Round 3 protocol"): each test of step 1
can exclude a configuration, and step 2 ranks by the margin over the stronger alternative with
fewer changes from the defaults first within 0.05 of the best."""

from __future__ import annotations

from typing import Any

import pytest

from bench.research_round3 import EXITS, GRID, ranking, settings_for, verdict

MOMENTUM = {"sharpe": 0.60}


def run(sharpe: float = 1.0, **overrides: Any) -> dict[str, Any]:
    real = {
        "sharpe": sharpe,
        "trades": 200,
        "exposure": 0.7,
        "max_dd": -0.30,
        "benchmarks": {"spy_buy_and_hold": {"sharpe_ratio": 0.40, "max_drawdown": -0.52}},
    }
    real.update(overrides)
    placebos = [{"sharpe": s} for s in (0.2, 0.5, 0.9)]  # median 0.5
    return {"real": real, "placebos": placebos}


def test_a_configuration_passing_every_test_is_eligible_with_its_margin() -> None:
    v = verdict(run(1.0), MOMENTUM)
    assert v["eligible"]
    assert v["placebo_sharpe"] == 0.5
    assert v["margin"] == pytest.approx(0.4)  # min(1.0 - 0.6, 1.0 - 0.5)


@pytest.mark.parametrize(
    ("overrides", "failed"),
    [
        ({"trades": 49}, "trades"),
        ({"exposure": 0.49}, "exposure"),
        ({"sharpe": 0.39}, "spy"),
        ({"max_dd": -0.53}, "drawdown"),
        ({"sharpe": 0.55}, "momentum"),
        ({"sharpe": 0.45}, "placebo"),
    ],
)
def test_each_test_excludes(overrides: dict[str, Any], failed: str) -> None:
    v = verdict(run(**overrides), MOMENTUM)
    assert not v["eligible"]
    assert failed in v["fails"]


def test_without_placebos_a_configuration_is_never_eligible() -> None:
    data = run(1.0)
    data["placebos"] = []
    v = verdict(data, MOMENTUM)
    assert v["fails"] == ["placebo"]
    assert v["margin"] is None


def test_within_005_of_the_best_fewer_changes_win() -> None:
    names = {c.name: c for c in GRID}
    default = "r3_watchlist_seed_h5_seed3_seed"  # no change
    far = "r3_broad_extended_h21_book7_wide"  # five changes
    one = "r3_watchlist_seed_h5_book7_seed"  # one change
    assert (names[default].changes, names[far].changes, names[one].changes) == (0, 5, 1)
    rows = {
        far: {"eligible": True, "margin": 0.50},
        one: {"eligible": True, "margin": 0.46},
        default: {"eligible": True, "margin": 0.30},
        "r3_broad_seed_h5_seed3_seed": {"eligible": False, "margin": 0.90},
    }
    assert ranking(rows) == [one, far, default]
    rows[one]["margin"] = 0.44  # now 0.06 behind the best
    assert ranking(rows) == [far, one, default]


@pytest.mark.parametrize("env_portfolio", ["book", "signals"])
def test_every_row_sets_its_levers_whatever_the_defaults_are(
    monkeypatch: pytest.MonkeyPatch, env_portfolio: str
) -> None:
    """Round 3 changed the defaults mid-round: a row replayed after that must run the rule it
    names, not the defaults of the day."""
    monkeypatch.setenv("STRATEGY_PORTFOLIO", env_portfolio)
    monkeypatch.setenv("STRATEGY_ENTRY_TOP_K", "5")
    monkeypatch.setenv("RISK_STOP_LOSS_PCT", "-0.07")
    for config in GRID:
        s = settings_for(config)
        book = config.portfolio == "book7"
        assert s.strategy_portfolio == ("book" if book else "signals")
        assert s.strategy_entry_top_k == (7 if book else 3)
        assert s.strategy_rebalance_every == (config.stream.horizon if book else 0)
        assert (s.risk_stop_loss_pct, s.risk_take_profit_pct) == EXITS[config.exits]
        assert (s.universe, s.ai_feature_set, s.ai_prediction_horizon_days) == (
            config.stream.universe,
            config.stream.features,
            config.stream.horizon,
        )
