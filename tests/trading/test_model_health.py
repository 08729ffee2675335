"""Live model health on real bars: realised rank IC per version against scipy, the rolling
means on /metrics and GET /api/model/health, and one Discord alert per transition."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import spearmanr
from sqlalchemy import select

from app.ai.training import fit_and_save
from app.config import load_settings
from app.container import Services
from app.market.calendar import NyseCalendar
from app.market.sources import CsvMarketData
from app.store.orm import ModelDailyIC, SignalRecord
from app.tasks.celery_config import TRADING_QUEUE, beat_schedule
from app.tasks.model_health import update_model_health
from app.trading.model_health import ModelHealth, rank_ic
from app.trading.notifier import Notifier
from tests.conftest import Auth
from tests.support import SHARED_DATA
from tests.trading.test_notifier import Receiver

SYMBOLS = ["AAPL", "MSFT", "KO", "PEP", "XOM", "JPM", "WMT", "PG", "CAT", "HD"]
SESSIONS = NyseCalendar().sessions(date(2021, 1, 4), date(2021, 9, 30))
GOOD, BAD = "20210101T000000.000000Z-aaaaaaaa", "20210102T000000.000000Z-bbbbbbbb"


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The labels below are one session long (open t+1 to open t+2), as `labels` computes them."""
    return make_app(AI_PREDICTION_HORIZON_DAYS=1)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def labels(symbols: list[str] = SYMBOLS) -> pd.DataFrame:
    """open[t+2] / open[t+1] - 1 per session t, straight from the CSV files (no app code)."""
    opens = pd.DataFrame(
        {
            s: pd.read_csv(SHARED_DATA / f"{s}.csv", index_col="date", parse_dates=True)["open"]
            for s in symbols
        }
    )
    return opens.shift(-2) / opens.shift(-1) - 1


def test_rank_ic_is_spearman_with_ties() -> None:
    rng = np.random.default_rng(3)
    p = rng.integers(0, 5, 40).astype(float)  # many ties
    y = p * 0.3 + rng.normal(size=40)
    assert rank_ic(list(p), list(y)) == pytest.approx(spearmanr(p, y).statistic)
    assert rank_ic([1.0, 2.0], [1.0, 2.0]) is None  # too few
    assert rank_ic([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # no spread
    assert rank_ic([1.0, 2.0, 3.0, float("nan")], [3.0, 2.0, 1.0, 0.0]) == pytest.approx(-1.0)


def _signals(day: date, version: str, predicted: dict[str, float]) -> list[SignalRecord]:
    return [
        SignalRecord(
            symbol=s,
            action="HOLD",
            predicted_return=p,
            confidence=0.5,
            dispersion=0.01,
            model_version=version,
            as_of=day,
        )
        for s, p in predicted.items()
    ]


def test_rank_ic_per_session_rolling_means_metrics_api_and_one_alert_per_transition(
    app: Flask, receiver: Receiver
) -> None:
    svc: Services = app.extensions["alpha_trader"]
    truth = labels()
    rng = np.random.default_rng(7)
    # 25 sessions of a model that ranks well, 45 of one that ranks backwards, 60 good again.
    plan = [GOOD] * 25 + [BAD] * 45 + [GOOD] * 60
    days = SESSIONS[: len(plan)]
    predictions: dict[date, dict[str, float]] = {}
    with svc.db.session() as session:
        for day, version in zip(days, plan, strict=True):
            label = truth.loc[pd.Timestamp(day)]
            sign = 1.0 if version == GOOD else -1.0
            noise = rng.normal(scale=float(label.std()), size=len(SYMBOLS))
            predictions[day] = dict(zip(SYMBOLS, sign * label.to_numpy() + noise, strict=True))
            if day == days[0]:  # an earlier cycle of the same session: its last word counts
                session.add_all(_signals(day, version, dict.fromkeys(SYMBOLS, 0.0)))
            if day == days[1]:  # another version recorded first that session: not the live one
                session.add_all(_signals(day, "older", {s: -v for s, v in label.items()}))
            session.flush()
            session.add_all(_signals(day, version, predictions[day]))
    notifier = Notifier(receiver.url, min_interval=0.0)
    health = ModelHealth(svc.db, CsvMarketData(SHARED_DATA), notifier)

    transitions = []
    for today in SESSIONS[2 : len(plan) + 2]:
        result = health.update(today)
        assert result["scored"] >= 1, today  # each new open completes one session's label
        if result["alert"]:
            transitions.append((today, result["alert"]))
    again = health.update(SESSIONS[len(plan) + 1])
    assert again["scored"] == 0
    assert again["alert"] is None
    assert notifier.flush()

    # The independent computation: scipy on returns read straight from the CSV files.
    expected = {
        day: spearmanr(
            [predictions[day][s] for s in SYMBOLS], truth.loc[pd.Timestamp(day), SYMBOLS]
        ).statistic
        for day in days
    }
    with svc.db.session() as session:
        rows = session.query(ModelDailyIC).all()
        stored = {(r.model_version, r.session_day): r for r in rows}
    assert len(rows) == len(days) + 1  # plus the "older" version's session
    for day, version in zip(days, plan, strict=True):
        row = stored[(version, day)]
        assert row.live
        assert row.n_symbols == len(SYMBOLS)
        assert row.horizon_days == 1
        assert row.rank_ic == pytest.approx(expected[day], abs=1e-12), day
        assert row.label_end == SESSIONS[SESSIONS.index(day) + 2]
    older = stored[("older", days[1])]
    assert not older.live
    older_ic = spearmanr(
        truth.loc[pd.Timestamp(days[1]), SYMBOLS] * -1, truth.loc[pd.Timestamp(days[1]), SYMBOLS]
    ).statistic
    assert older.rank_ic == pytest.approx(older_ic)

    # One alert when the 60-session live mean turned negative, one when it recovered.
    live_ics = [expected[d] for d in days]
    crossed = [
        i
        for i in range(len(days))
        if i + 1 >= 20 and (np.mean(live_ics[max(0, i - 59) : i + 1]) < 0)
    ]
    first_negative = crossed[0]
    assert [t for _, t in transitions] == ["negative", "recovered"]
    assert transitions[0][0] == SESSIONS[first_negative + 2]
    titles = [m["embeds"][0]["title"] for m in receiver.received]
    assert titles == [
        "Model health: rolling rank IC turned negative",
        "Model health: rolling rank IC positive again",
    ]

    # Prometheus text exposition on the app's /metrics.
    body = app.test_client().get("/metrics").get_data(as_text=True)
    samples = {
        (s.name, s.labels.get("model_version"), s.labels.get("window")): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name.startswith("alpha_model_rank_ic")
    }
    last20, last60 = live_ics[-20:], live_ics[-60:]
    assert samples[("alpha_model_rank_ic", "live", "20")] == pytest.approx(np.mean(last20))
    assert samples[("alpha_model_rank_ic", "live", "60")] == pytest.approx(np.mean(last60))
    assert samples[("alpha_model_rank_ic_sessions", "live", "60")] == 60
    good_ics = [expected[d] for d, v in zip(days, plan, strict=True) if v == GOOD]
    assert samples[("alpha_model_rank_ic", GOOD, "60")] == pytest.approx(np.mean(good_ics[-60:]))

    # The API: JWT required; the same figures as JSON.
    client = app.test_client()
    assert client.get("/api/model/health").status_code == 401
    answer = client.get("/api/model/health", headers=Auth(client).headers())
    assert answer.status_code == 200
    report = answer.get_json()
    assert report["horizon_days"] == 1
    windows = {w["window"]: w for w in report["live"]}
    assert windows[20]["mean"] == pytest.approx(np.mean(last20))
    assert windows[60]["sessions"] == 60
    assert windows[60]["t_stat"] == pytest.approx(
        np.mean(last60) / (np.std(last60, ddof=1) / np.sqrt(60))
    )
    assert report["alert"] == {"window": 60, "min_sessions": 20, "negative": False}
    assert report["sessions"][0]["session"] == days[-1].isoformat()
    assert len(report["sessions"]) == 60
    assert [v["model_version"] for v in report["versions"]][:2] == [GOOD, BAD]
    assert report["champion_challenger"] == []


def test_sessions_wait_for_their_labels(app: Flask) -> None:
    svc: Services = app.extensions["alpha_trader"]
    day = SESSIONS[10]
    with svc.db.session() as session:
        session.add_all(_signals(day, GOOD, {s: float(i) for i, s in enumerate(SYMBOLS)}))
    health = ModelHealth(svc.db, CsvMarketData(SHARED_DATA), Notifier(None))
    # The exit open (t+2) is not there yet on t+1: nothing scored, one session waiting.
    assert health.update(SESSIONS[11]) | {"live": None} == {
        "scored": 0,
        "waiting_for_labels": 1,
        "horizon_days": 1,
        "live": None,
        "alert": None,
    }
    assert health.update(SESSIONS[12])["scored"] == 1


def _realised_rank_ic(entry: date, exit_: date) -> float:
    """Spearman of the signals' order (SYMBOLS ranked 0, 1, ...) with open[exit] / open[entry]
    - 1, read from the CSV files (no app code)."""
    opens = {
        s: pd.read_csv(SHARED_DATA / f"{s}.csv", index_col="date", parse_dates=True)["open"]
        for s in SYMBOLS
    }
    realised = [opens[s][pd.Timestamp(exit_)] / opens[s][pd.Timestamp(entry)] - 1 for s in SYMBOLS]
    return float(spearmanr(range(len(SYMBOLS)), realised).statistic)


@pytest.mark.parametrize("horizon", [3, 21])
def test_a_longer_label_is_scored_once_its_exit_open_exists(app: Flask, horizon: int) -> None:
    """A longer horizon (AI_PREDICTION_HORIZON_DAYS; the defaults' 21 since research round 3)
    waits longer: a session's signals are scored on open[t+1+h] / open[t+1] - 1, on the day
    that open exists and not before."""
    svc: Services = app.extensions["alpha_trader"]
    day = SESSIONS[10]
    with svc.db.session() as session:
        session.add_all(_signals(day, GOOD, {s: float(i) for i, s in enumerate(SYMBOLS)}))
    longer = ModelHealth(svc.db, CsvMarketData(SHARED_DATA), Notifier(None), horizon=horizon)
    assert longer.update(SESSIONS[10 + horizon])["waiting_for_labels"] == 1
    assert longer.update(SESSIONS[10 + horizon + 1])["scored"] == 1
    with svc.db.session() as session:
        row = session.query(ModelDailyIC).filter_by(horizon_days=horizon).one()
    assert row.session_day == day
    assert row.rank_ic == pytest.approx(_realised_rank_ic(SESSIONS[11], SESSIONS[11 + horizon]))


def test_the_task_scores_through_the_app_services(
    make_app: Callable[..., Flask], receiver: Receiver
) -> None:
    """The Celery task (eager) on a sim app: labels only up to the replay session."""
    app = make_app(
        AI_PREDICTION_HORIZON_DAYS=1,
        DATA_DIR=str(SHARED_DATA),
        WATCHLIST=",".join(SYMBOLS),
        SIM_START_DATE=SESSIONS[30].isoformat(),
        CELERY_ALWAYS_EAGER=True,
        DISCORD_WEBHOOK_URL=receiver.url,
    )
    svc: Services = app.extensions["alpha_trader"]
    with svc.db.session() as session:
        for day in SESSIONS[:30]:
            ranks = {s: float(i) for i, s in enumerate(SYMBOLS)}
            session.add_all(_signals(day, GOOD, ranks))
    result = update_model_health.apply().get()
    # Sessions 0..28 have their exit open by session 30; session 29 waits for session 31.
    assert result["scored"] == 29
    assert result["waiting_for_labels"] == 1
    assert {w["window"]: w["sessions"] for w in result["live"]} == {20: 20, 60: 29}


def test_model_health_runs_daily_after_the_close_off_the_trading_queue() -> None:
    paper = load_settings(
        {
            "trading_mode": "paper",
            "alpaca_api_key": "k",
            "alpaca_api_secret": "s",
            "admin_password": "a-strong-password-123",
            "jwt_secret_key": "x" * 32,
            "secret_key": "y" * 32,
        }
    )
    for settings in (load_settings(), paper):
        entry = beat_schedule(settings)["model-health"]
        assert entry["task"] == "app.tasks.update_model_health"
        assert entry["options"]["queue"] != TRADING_QUEUE
    schedule = beat_schedule(paper)["model-health"]["schedule"]
    assert schedule.hour == {21}
    assert schedule.minute == {30}
    assert schedule.day_of_week == {1, 2, 3, 4, 5}


def test_signals_the_sim_cycle_records_are_scored(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    """End to end: a model, real sim cycles recording signals, then the realised rank IC of
    each replayed session, checked with scipy against the CSV opens."""
    app = make_app(
        AI_PREDICTION_HORIZON_DAYS=1,
        DATA_DIR=str(SHARED_DATA),
        WATCHLIST=",".join([*SYMBOLS, "SPY"]),
        MODELS_DIR=str(tmp_path / "models"),
        BEST_PARAMS_DIR=str(tmp_path / "best"),
        TRAIN_YEARS=2,
        SIM_START_DATE=SESSIONS[40].isoformat(),
    )
    svc: Services = app.extensions["alpha_trader"]
    with app.app_context():
        fit_and_save(
            settings=svc.settings,
            db=svc.db,
            market=svc.venue.market,
            store=svc.models,
            today=svc.venue.today(),
        )
        for _ in range(8):
            assert svc.trading().run_decision().status == "done"
    today = svc.venue.today()
    assert today == SESSIONS[48]
    result = ModelHealth.of(svc).update(today)
    assert result["scored"] == 7  # sessions 40..46; session 47's exit open is session 49
    assert result["waiting_for_labels"] == 1
    truth = labels([*SYMBOLS, "SPY"])
    with svc.db.session() as session:
        signals = pd.read_sql(
            select(SignalRecord.as_of, SignalRecord.symbol, SignalRecord.predicted_return),
            session.connection(),
        )
        rows = session.query(ModelDailyIC).order_by(ModelDailyIC.session_day).all()
    assert [r.session_day for r in rows] == SESSIONS[40:47]
    for row in rows:
        day = signals[signals["as_of"] == row.session_day].set_index("symbol")
        assert len(day) == len(SYMBOLS) + 1  # every watchlist symbol, SPY included
        expected = spearmanr(
            day["predicted_return"], truth.loc[pd.Timestamp(row.session_day), day.index]
        )
        assert row.n_symbols == len(day)
        assert row.rank_ic == pytest.approx(expected.statistic)
