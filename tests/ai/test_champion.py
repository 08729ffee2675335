"""Champion / challenger on the synthetic market (a planted, learnable signal): the first model
is promoted, a broken challenger is not, a good one replaces a broken champion, a manual
training promotes anyway, and the nightly task says which it kept (DB, Discord, API)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest
from flask import Flask
from scipy.stats import spearmanr
from sqlalchemy import select

from app.ai.champion import MIN_GATE_SESSIONS, comparison_rows, settle
from app.ai.ensemble import ModelBundle
from app.ai.features import LABEL_COLUMN, LABEL_END_COLUMN, LABEL_HORIZON, build_features
from app.ai.store import ModelStore
from app.ai.training import fit_and_save, load_bars, train, training_window
from app.config import load_settings
from app.container import Services
from app.market.calendar import NyseCalendar
from app.market.sources import SyntheticMarketData
from app.store.orm import ModelRun
from app.tasks.training import train_models_batch
from tests.conftest import Auth
from tests.trading.test_notifier import Receiver

SYMBOLS = ["AAPL", "MSFT", "KO", "PEP", "XOM", "JPM", "WMT", "PG", "CAT", "HD", "NKE", "T"]
TODAY = date(2021, 6, 1)
FAST = {
    "lightgbm": {"num_boost_round": 80, "learning_rate": 0.1, "early_stopping_rounds": 15},
    "xgboost": {"num_boost_round": 80, "eta": 0.1, "early_stopping_rounds": 15},
}


@pytest.fixture(scope="module")
def market() -> SyntheticMarketData:
    return SyntheticMarketData(SYMBOLS, start=date(2016, 1, 4), end=date(2021, 12, 31), seed=11)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def features_for(market: SyntheticMarketData, today: date) -> tuple[date, pd.DataFrame]:
    start, end = training_window(today, 3, NyseCalendar())
    bars = load_bars(market, SYMBOLS, start, end)
    return end, build_features(bars, bars["SPY"])


def excess_model(
    market: SyntheticMarketData, today: date, horizon: int
) -> tuple[ModelBundle, pd.DataFrame]:
    """A model of the `horizon`-session excess label trained as of `today`, and its features."""
    start, end = training_window(today, 3, NyseCalendar())
    bars = load_bars(market, SYMBOLS, start, end)
    features = build_features(bars, bars["SPY"], horizon=horizon, normalisation="excess")
    model = train(
        None,
        None,
        "pooled",
        end,
        FAST,
        features=features,
        n_lgbm=1,
        n_xgb=1,
        horizon=horizon,
        normalisation="excess",
    )
    return model, features


def broken(features: pd.DataFrame, how: str) -> pd.DataFrame:
    """Labels a model can learn nothing right from: permuted across rows, or negated."""
    out = features.copy()
    known = out[LABEL_COLUMN].notna()
    if how == "inverted":
        out[LABEL_COLUMN] = -out[LABEL_COLUMN]
    else:
        rng = np.random.default_rng(0)
        out.loc[known, LABEL_COLUMN] = rng.permutation(out.loc[known, LABEL_COLUMN].to_numpy())
    return out


def train_on(features: pd.DataFrame, end: date) -> ModelBundle:
    return train(None, None, "pooled", end, FAST, features=features, n_lgbm=1, n_xgb=1)


def run_fit(svc: Services, market: Any, store: ModelStore, today: date, gated: bool) -> dict:
    # The one-session label of `features_for`: champion and challenger learn the same target.
    settings = load_settings(
        {
            "train_years": 3,
            "watchlist": ",".join(SYMBOLS),
            "ai_prediction_horizon_days": 1,
            "ai_label_normalisation": "raw",
        }
    )
    return fit_and_save(
        settings=settings,
        db=svc.db,
        market=market,
        store=store,
        today=today,
        gated=gated,
    )


@pytest.mark.parametrize("how", ["shuffled", "inverted"])
def test_first_model_is_promoted_and_a_broken_challenger_is_not(
    app: Flask, market: SyntheticMarketData, tmp_path: Path, how: str
) -> None:
    svc: Services = app.extensions["alpha_trader"]
    store = ModelStore(tmp_path / "models")
    first = run_fit(svc, market, store, TODAY, gated=True)
    assert first["kept"] == "challenger"
    assert first["gate"]["reason"] == "first model: no champion to compare with"
    assert store.current_version() == first["version"] == first["current_version"]

    later = NyseCalendar().next_session(TODAY)
    end, features = features_for(market, later)
    challenger = train_on(broken(features, how), end)
    decision = settle(store, challenger, features, {}, gated=True)
    assert decision.kept == "champion", decision
    assert store.current_version() == first["version"]  # the broken model is not served
    assert decision.challenger in store.versions()  # but kept on disk, for the record
    assert decision.sessions >= MIN_GATE_SESSIONS
    assert decision.champion_rank_ic is not None
    assert decision.challenger_rank_ic is not None
    assert decision.champion_rank_ic > 0.05 > decision.challenger_rank_ic

    # Independent figures: both models on the challenger's calibration dates after the
    # champion's last early-stopping date and the label gap, scored with scipy.
    champion = store.load(first["version"])
    meta = challenger.metadata
    dates = features.index.get_level_values("date")
    after = np.unique(dates[dates > pd.Timestamp(champion.metadata["val_end"])])
    rows = features[
        (dates > after[LABEL_HORIZON - 1])
        & (dates >= pd.Timestamp(meta["calibration_start"]))
        & (dates <= pd.Timestamp(meta["calibration_end"]))
        & features[LABEL_COLUMN].notna()
    ]
    for model, stated in (
        (champion, decision.champion_rank_ic),
        (challenger, decision.challenger_rank_ic),
    ):
        scored = rows[[LABEL_COLUMN]].assign(pred=model.predict_frame(rows)["mean"])
        daily = [
            spearmanr(g["pred"], g[LABEL_COLUMN]).statistic for _, g in scored.groupby(level="date")
        ]
        assert len(daily) == decision.sessions
        assert stated == pytest.approx(float(np.mean(daily)))

    # Recorded: the challenger's metadata and the kept champion's re-validation.
    assert store.metadata(decision.challenger)["gate"]["kept"] == "champion"
    assert store.metadata(first["version"])["last_gate"]["challenger"] == decision.challenger


def test_a_good_challenger_replaces_a_broken_champion_and_manual_training_promotes(
    app: Flask, market: SyntheticMarketData, tmp_path: Path
) -> None:
    svc: Services = app.extensions["alpha_trader"]
    store = ModelStore(tmp_path / "models")
    end, features = features_for(market, TODAY)
    bad = store.save(train_on(broken(features, "inverted"), end))
    good = run_fit(svc, market, store, TODAY, gated=True)
    assert good["kept"] == "challenger"
    assert good["gate"]["reason"].startswith("not worse")
    assert good["gate"]["champion"] == bad
    assert store.current_version() == good["version"]

    # A manual training (ungated) of a broken model is promoted, and says the gate would not.
    manual = settle(store, train_on(broken(features, "inverted"), end), features, {}, gated=False)
    assert manual.kept == "challenger"
    assert not manual.gated
    assert "the gate would have kept the champion" in manual.reason
    assert store.current_version() == manual.challenger


def test_a_champion_that_keeps_winning_does_not_turn_stale(
    market: SyntheticMarketData, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "models")
    end, features = features_for(market, TODAY)
    version = store.save(train_on(features, end))
    meta_path = tmp_path / "models" / version / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["created_at"] = (datetime.now(UTC) - timedelta(days=10)).isoformat()
    meta_path.write_text(json.dumps(meta))
    assert store.is_stale(7)
    store.mark_validated(version, datetime.now(UTC), {"kept": "champion"})
    assert not store.is_stale(7)
    assert store.metadata(version)["created_at"] == meta["created_at"]


def test_the_nightly_retrain_is_gated_and_says_which_it_kept(
    make_app: Callable[..., Flask], tmp_path: Path, receiver: Receiver
) -> None:
    app = make_app(
        WATCHLIST=",".join(SYMBOLS[:8]),
        TRAIN_YEARS=2,
        MODELS_DIR=str(tmp_path / "models"),
        BEST_PARAMS_DIR=str(tmp_path / "best"),
        CELERY_ALWAYS_EAGER=True,
        DISCORD_WEBHOOK_URL=receiver.url,
    )
    svc: Services = app.extensions["alpha_trader"]
    today = svc.venue.today()
    start, end = training_window(today, 2, NyseCalendar())
    bars = load_bars(svc.venue.market, svc.settings.watchlist, start, end)
    features = build_features(bars, bars["SPY"])
    bad = svc.models.save(train_on(broken(features, "inverted"), end))

    with app.app_context():
        fit_id = train_models_batch.apply().get()["fit_task_id"]
        result = svc.celery.AsyncResult(fit_id).get(timeout=60)
    assert result["kept"] == "challenger"
    assert result["gate"]["gated"] is True
    assert result["gate"]["champion"] == bad
    assert svc.models.current_version() == result["version"]
    assert svc.notifier.flush()
    embeds = [m["embeds"][0] for m in receiver.received]
    assert embeds[-1]["title"] == "Training: kept the challenger"
    assert bad in embeds[-1]["description"]
    with svc.db.session() as session:
        run = session.scalars(select(ModelRun).where(ModelRun.version == result["version"])).one()
        assert run.metrics["gate"]["kept"] == "challenger"

    client = app.test_client()
    report = client.get("/api/model/health", headers=Auth(client).headers()).get_json()
    assert report["champion_challenger"][0]["challenger"] == result["version"]
    assert report["champion_challenger"][0]["kept"] == "challenger"


def test_a_champion_trained_for_another_label_is_replaced(
    app: Flask, market: SyntheticMarketData, tmp_path: Path
) -> None:
    """Live refuses to trade a model whose label the settings no longer ask for; the gate
    must not keep it against a challenger trained for the settings' label."""
    svc: Services = app.extensions["alpha_trader"]
    store = ModelStore(tmp_path / "models")
    first = run_fit(svc, market, store, TODAY, gated=True)  # 1 session, raw
    challenger, features = excess_model(market, NyseCalendar().next_session(TODAY), 5)
    decision = settle(store, challenger, features, {}, gated=True)
    assert decision.kept == "challenger", decision
    assert decision.reason == "the champion was trained for another label (1-session raw)"
    assert store.current_version() == decision.challenger != first["version"]


@pytest.mark.parametrize("horizon", [1, 5, 21])
def test_the_gate_skips_the_label_span_after_the_champion_saw_its_last_date(horizon: int) -> None:
    """A champion whose last seen date is d learned labels that end h + 1 sessions after d: the
    gate scores neither model on those dates (for h = 21, 22 of them, not the seed label's 2)."""
    dates = pd.bdate_range("2021-01-04", periods=120)
    index = pd.MultiIndex.from_product([dates, ["AAA", "BBB"]], names=["date", "symbol"])
    features = pd.DataFrame({LABEL_COLUMN: 0.01, LABEL_END_COLUMN: dates[0]}, index=index)
    seen = dates[39]
    label = {"horizon": horizon, "label_normalisation": "excess"}
    challenger = cast(
        ModelBundle,
        SimpleNamespace(
            metadata={
                **label,
                "calibration_start": str(dates[20].date()),
                "calibration_end": str(dates[-1].date()),
                "labels_known_by": str(dates[-1].date()),
            }
        ),
    )
    champion = cast(ModelBundle, SimpleNamespace(metadata={**label, "val_end": str(seen.date())}))
    rows = comparison_rows(features, challenger, champion)
    first = rows.index.get_level_values("date").min()
    assert first == dates[39 + horizon + 2]  # the first date after seen + (h + 1)
    assert rows.index.get_level_values("date").nunique() == 120 - (40 + horizon + 1)


def test_the_gate_judges_models_of_the_default_month_label(
    market: SyntheticMarketData, tmp_path: Path
) -> None:
    """With the defaults' 21-session excess label, a retrain a session later is still judged on
    enough dates neither model trained on, and none of them inside the champion's label span."""
    store = ModelStore(tmp_path / "models")
    champion = store.load(store.save(excess_model(market, TODAY, 21)[0]))
    challenger, features = excess_model(market, NyseCalendar().next_session(TODAY), 21)
    decision = settle(store, challenger, features, {}, gated=True)
    assert decision.gated
    assert decision.sessions >= MIN_GATE_SESSIONS, decision
    assert decision.champion_rank_ic is not None
    assert decision.challenger_rank_ic is not None
    rows = comparison_rows(features, challenger, champion)
    after = np.unique(
        features.index.get_level_values("date")[
            features.index.get_level_values("date") > pd.Timestamp(champion.metadata["val_end"])
        ]
    )
    assert rows.index.get_level_values("date").min() > after[21]  # 22 dates skipped
