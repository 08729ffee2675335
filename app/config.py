"""Typed settings read from the environment (and .env when present), validated at start-up.

Every knob lives here, once. A bad value raises ConfigError, which stops start-up with one line
naming the key, so a typo never becomes a trading surprise.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.errors import ConfigError

BASE_DIR = Path(__file__).resolve().parent.parent

DEFAULT_WATCHLIST = (
    "AAPL,MSFT,GOOGL,TSLA,SPY,NVDA,AMZN,META,NFLX,AMD,JNJ,UNH,JPM,PG,CAT,XOM,V,MA,DIS,HD,KO,PEP,"
    "INTC,CSCO,CMCSA,VZ,T,MRK,PFE,ABT,NKE,WMT"
)
#: Universe files shipped with the project: UNIVERSE=broad reads universes/broad.txt.
UNIVERSES_DIR = BASE_DIR / "app" / "market" / "universes"
SIM_DEFAULT_PASSWORD = "password"  # noqa: S105 - the seed's demo password, sim mode only
MIN_JWT_SECRET_BYTES = 32
MIN_ADMIN_PASSWORD_LENGTH = 12


class TradingMode(StrEnum):
    SIM = "sim"
    PAPER = "paper"
    LIVE = "live"


class Settings(BaseSettings):
    """Every setting of the service; field names are the environment keys, case-insensitively."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # --- mode and infrastructure ---
    trading_mode: TradingMode = TradingMode.SIM
    database_url: str | None = None
    #: Where the embedded defaults keep their files: the SQLite database, the embedded Celery
    #: broker and result store, and beat's schedule.
    database_dir: Path = BASE_DIR / "database"
    redis_url: str | None = None
    celery_broker_url: str | None = None
    celery_result_backend: str | None = None
    celery_always_eager: bool = False
    data_dir: Path | None = None
    models_dir: Path = BASE_DIR / "models"
    best_params_dir: Path = BASE_DIR / "best_params"
    #: The Celery worker's own /metrics endpoint (docker: 9808); unset: none (make run's API
    #: /metrics already merges the worker's metrics through PROMETHEUS_MULTIPROC_DIR).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: How long a stopping worker waits for running tasks before it leaves them (redelivered
    #: or reconciled later): below honcho's 5 s grace, so Ctrl-C never ends in SIGKILL.
    worker_shutdown_grace_seconds: float = Field(default=4.0, gt=0)
    metrics_addr: str = "0.0.0.0"  # noqa: S104 - the worker's port inside its container
    log_level: str = "INFO"
    log_json: bool = False

    # --- Alpaca ---
    alpaca_api_key: str | None = None
    alpaca_api_secret: str | None = None
    alpaca_paper: bool = True
    alpaca_base_url: str | None = None
    alpaca_data_url: str | None = None
    alpaca_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    #: The account's request budget, shared by every process: 200 a minute on Alpaca's free
    #: plan, 1 000 with Algo Trader Plus.
    alpaca_requests_per_minute: int = Field(default=200, ge=1, le=10_000)

    #: Longest a read may spend waiting to retry (429s, 5xx, dropped connections).
    alpaca_retry_seconds: float = Field(default=15.0, ge=0, le=300)
    #: Alpaca cancels asynchronously (the shares stay held while an order is pending_cancel):
    #: how long a cancel waits for the broker's confirmation before it is reported as pending.
    cancel_confirm_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    #: The daily bars' feed: SIP, the consolidated tape the models are trained on (free for a
    #: closed session's bars once 15 minutes old); IEX is a small share of the volume and its
    #: open and close are not the official auction prints.
    alpaca_data_feed: str = Field(default="sip", pattern="^(iex|sip|delayed_sip)$")
    #: The latest trade and quote's feed: IEX, the free real-time one (SIP's needs a plan).
    alpaca_latest_feed: str = Field(default="iex", pattern="^(iex|sip|delayed_sip)$")
    #: Bar validation: a bar whose whole range lies beyond (1 + this) times the previous close,
    #: up or down, is rejected as an unadjusted split/dividend or a bad print.
    bar_max_jump: float = Field(default=0.6, gt=0, le=100)
    #: Stored sessions each incremental bar fetch re-requests to detect re-adjusted history.
    bar_overlap_sessions: int = Field(default=5, ge=0, le=60)

    # --- sim mode ---
    #: The replay starts at this session; each trading cycle advances one session.
    sim_start_date: date = date(2021, 1, 4)
    sim_starting_cash: float = Field(default=100_000.0, gt=0)
    sim_commission_bps: float = Field(default=0.0, ge=0, le=100)
    sim_slippage_bps: float = Field(default=5.0, ge=0, le=100)
    #: A live fill further than this from the backtest's modelled price is a divergence.
    divergence_fill_tolerance_bps: float = Field(default=10.0, ge=0, le=10_000)
    #: Seed of the synthetic market used when DATA_DIR is unset.
    sim_seed: int = 42
    #: In sim mode beat runs a cycle (one replayed session) this often, whatever the wall clock.
    sim_cycle_seconds: float = Field(default=20.0, ge=1, le=3600)
    #: In sim mode a worker that finds no model trains one at start.
    sim_auto_train: bool = True

    # --- API ---
    #: How long account, positions and prices answers are reused, so many API clients do not
    #: multiply broker calls.
    api_cache_seconds: float = Field(default=2.0, ge=0, le=300)

    # --- notifications ---
    discord_webhook_url: str | None = None

    # --- security ---
    #: Required outside sim mode. Unset in sim mode: a random secret made on first start and
    #: kept in DATABASE_DIR/secret_key, so no two installations share one.
    secret_key: str | None = None
    jwt_secret_key: str | None = None
    jwt_access_token_minutes: int = Field(default=60, ge=1, le=24 * 60)
    jwt_refresh_token_days: int = Field(default=7, ge=1, le=90)
    admin_username: str = "admin"
    admin_password: str | None = None
    #: Login attempts per client address, whatever the account.
    login_rate_limit: str = "10 per minute"
    #: Failed logins per account from one address before that address waits
    #: LOGIN_BACKOFF_SECONDS, doubling with each further failure (at most 15 min); another
    #: address, the real user's, is not slowed down.
    login_backoff_after: int = Field(default=5, ge=1, le=1000)
    login_backoff_seconds: float = Field(default=1.0, gt=0, le=900)
    #: When set, /metrics answers only `Authorization: Bearer <METRICS_TOKEN>`.
    metrics_token: str | None = None
    max_request_bytes: int = Field(default=1_048_576, ge=1024, le=100 * 1_048_576)
    #: Backtests queued or running at once, per user and in all: they share the training
    #: queue's worker slots with training and tuning, so beyond these POST /api/backtest/run
    #: answers 429 naming the live ones.
    backtest_max_per_user: int = Field(default=2, ge=1, le=100)
    backtest_max_queued: int = Field(default=4, ge=1, le=1000)

    # --- risk (the seed's limits; the exits chosen by research round 3, docs/research.md:
    # the seed's -5 % / +10 % are in presets/seed.env) ---
    risk_max_portfolio_exposure: float = Field(default=0.80, gt=0, le=1)
    risk_max_positions: int = Field(default=7, ge=1, le=500)
    risk_max_position_size: float = Field(default=0.10, gt=0, le=1)
    risk_stop_loss_pct: float = Field(default=-0.15, gt=-1, lt=0)
    risk_take_profit_pct: float = Field(default=0.30, gt=0)
    risk_max_daily_loss: float = Field(default=-0.02, gt=-1, lt=0)
    #: Entries are sized and checked as if they fill this much above the decision price (the
    #: gap to the next open plus slippage), so the caps still hold after the fill.
    risk_entry_gap_margin: float = Field(default=0.03, ge=0, le=0.5)
    #: false: positions the bot did not open are never sold or rebalanced by it (they count
    #: in exposure, not in RISK_MAX_POSITIONS, and are reported once).
    manage_external_positions: bool = False
    #: Broker-side protective exits: an OCO (stop-loss stop, take-profit limit, GTC) on every
    #: holding, and whole-share market-on-open orders (what OPG and OCO accept).
    protective_orders: bool = True

    # --- schedule (UTC) ---
    trading_cycle_minutes: int = Field(default=10, ge=1, le=60)
    trading_hours_utc: str = Field(default="11-23", pattern=r"^\d{1,2}-\d{1,2}$")
    #: The cycle lock's time to live; shorter than the interval so a dead worker's lock lapses
    #: before the next cycle.
    trading_lock_ttl_seconds: float = Field(default=540, gt=0)
    nightly_hour_utc: int = Field(default=23, ge=0, le=23)

    # --- strategy ---
    #: A candidate replaces the weakest holding when its expected return x confidence beats
    #: the holding's by this margin and the holding is at least STRATEGY_MIN_HOLDING_DAYS old.
    strategy_rebalance_margin: float = Field(default=0.002, ge=0, le=1)
    strategy_min_holding_days: int = Field(default=3, ge=0, le=250)
    #: Volatility sizing: a position's one-sigma daily move is about this share of equity.
    strategy_risk_budget: float = Field(default=0.002, gt=0, le=0.1)
    #: Rank entries: only the k best-scored of today's signals (the whole watchlist) may be
    #: bought, each still clearing the BUY floors; 0: every BUY signal (the seed's rule).
    #: 7 (the book, research round 3); the signal rule's 3 was rounds 1 and 2's choice.
    strategy_entry_top_k: int = Field(default=7, ge=0, le=100)
    #: signals: buy what clears the BUY floors and the confidence, sized by volatility (the
    #: seed's rule); book: hold the STRATEGY_ENTRY_TOP_K best-predicted names at the position
    #: cap, sell those out of the best 2 x k at a rebalance (app/trading/book.py).
    strategy_portfolio: str = Field(default="book", pattern="^(signals|book)$")
    #: book: sessions between rebalances; 0: the label horizon (AI_PREDICTION_HORIZON_DAYS).
    strategy_rebalance_every: int = Field(default=0, ge=0, le=252)

    # --- AI signals (defaults chosen on 2008-2015, docs/research.md; the seed's were
    # 0.005 / -0.005 / 0.7 with a 1-session label, and never traded on real data) ---
    #: Floors under the rank: predicted return over the horizon, calibrated P(sign right).
    #: With the excess label the confidence is the held-out calibrated probability of beating
    #: the watchlist over the horizon; 0.52 asks for an edge a model that knows nothing
    #: (calibrated to ~0.5) rarely shows (round 2 of docs/research.md).
    ai_signal_buy_threshold: float = Field(default=0.0001, gt=0)
    ai_signal_sell_threshold: float = Field(default=-0.005, lt=0)
    ai_confidence_threshold: float = Field(default=0.52, ge=0, le=1)
    #: Label: open[t+1+h] / open[t+1] - 1, h sessions after the next open (the seed's h = 1;
    #: round 2's 5; round 3's 21, a month).
    ai_prediction_horizon_days: int = Field(default=21, ge=1, le=60)
    #: raw | excess (minus the watchlist's mean that date) | rank (the watchlist's rank).
    ai_label_normalisation: str = Field(default="excess", pattern="^(raw|excess|rank)$")
    #: Model inputs: seed (the original columns) | extended (+ longer memory, sector relative
    #: strength, market regime: app.ai.features_extended). A model trades only under its own.
    ai_feature_set: str = Field(default="seed", pattern="^(seed|extended)$")
    model_max_age_days: int = Field(default=7, ge=1, le=365)
    #: pooled: one cross-sectional model over every symbol; per-symbol: one model each.
    model_mode: str = Field(default="pooled", pattern="^(pooled|per-symbol|per_symbol)$")
    #: Years of daily bars each training uses, ending the session before "today".
    train_years: float = Field(default=5.0, ge=1, le=20)
    #: Champion / challenger: a nightly retrain replaces the current model only when its rank
    #: IC on rows neither model trained on is at least the champion's minus this.
    model_gate_tolerance: float = Field(default=0.0, ge=0, le=0.1)
    #: Optuna storage URL; default: the service's database.
    optuna_storage: str | None = None

    watchlist: Annotated[tuple[str, ...], NoDecode] = tuple(DEFAULT_WATCHLIST.split(","))
    #: What the install trades (decision cycles, training, backtests, API and CLI defaults):
    #: "watchlist" (WATCHLIST), the name of a universe file shipped in app/market/universes
    #: ("broad": 646 US stocks, research round 3's choice), or the path of a file, one symbol
    #: a line. Sim on the synthetic demo market (no DATA_DIR) trades the watchlist.
    universe: str = "broad"

    @field_validator("watchlist", mode="before")
    @classmethod
    def _split_watchlist(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip().upper() for part in value.split(",") if part.strip()]
        return value

    @field_validator("watchlist")
    @classmethod
    def _check_watchlist(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one symbol")
        bad = [s for s in value if not _is_symbol(s)]
        if bad:
            raise ValueError(f"malformed symbols {bad}")
        if len(set(value)) != len(value):
            raise ValueError("has duplicate symbols")
        return value

    @field_validator("universe")
    @classmethod
    def _check_universe(cls, value: str) -> str:
        value = value.strip()
        path = universe_file(value)
        if path is not None:
            read_universe_file(path)
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value

    @field_validator("login_rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"is not a rate limit like '10 per minute' ({exc})") from exc
        return value

    @model_validator(mode="after")
    def _check_mode(self) -> Settings:
        if self.trading_lock_ttl_seconds >= self.trading_cycle_minutes * 60:
            raise _KeyError(
                "trading_lock_ttl_seconds", "must be shorter than TRADING_CYCLE_MINUTES"
            )
        if self.ai_signal_sell_threshold >= self.ai_signal_buy_threshold:
            raise _KeyError("ai_signal_sell_threshold", "must be below AI_SIGNAL_BUY_THRESHOLD")
        if self.risk_max_position_size > self.risk_max_portfolio_exposure:
            raise _KeyError("risk_max_position_size", "must not exceed RISK_MAX_PORTFOLIO_EXPOSURE")
        if self.backtest_max_per_user > self.backtest_max_queued:
            raise _KeyError("backtest_max_per_user", "must not exceed BACKTEST_MAX_QUEUED")
        if self.trading_mode is TradingMode.SIM:
            return self
        if not self.alpaca_api_key:
            raise _KeyError("alpaca_api_key", f"is required in {self.trading_mode} mode")
        if not self.alpaca_api_secret:
            raise _KeyError("alpaca_api_secret", f"is required in {self.trading_mode} mode")
        if self.trading_mode is TradingMode.LIVE and self.alpaca_paper:
            raise _KeyError("alpaca_paper", "must be false in live mode")
        if self.trading_mode is TradingMode.PAPER and not self.alpaca_paper:
            raise _KeyError("alpaca_paper", "must be true in paper mode")
        password = self.admin_password or ""
        if not password:
            raise _KeyError("admin_password", f"is required in {self.trading_mode} mode")
        if password == SIM_DEFAULT_PASSWORD:
            raise _KeyError("admin_password", "must not be the default password")
        if len(password) < MIN_ADMIN_PASSWORD_LENGTH:
            raise _KeyError(
                "admin_password", f"must be at least {MIN_ADMIN_PASSWORD_LENGTH} characters"
            )
        jwt_secret = self.jwt_secret_key or ""
        if len(jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise _KeyError(
                "jwt_secret_key",
                f"must be at least {MIN_JWT_SECRET_BYTES} bytes in {self.trading_mode} mode",
            )
        if not self.secret_key:
            raise _KeyError("secret_key", f"must be set in {self.trading_mode} mode")
        if len(self.secret_key.encode()) < MIN_JWT_SECRET_BYTES:
            raise _KeyError(
                "secret_key",
                f"must be at least {MIN_JWT_SECRET_BYTES} bytes in {self.trading_mode} mode",
            )
        return self

    # --- derived values ---
    @property
    def effective_admin_password(self) -> str | None:
        """The seed's admin/password exists only in sim mode."""
        if self.admin_password:
            return self.admin_password
        return SIM_DEFAULT_PASSWORD if self.trading_mode is TradingMode.SIM else None

    @property
    def uses_default_admin_password(self) -> bool:
        return self.effective_admin_password == SIM_DEFAULT_PASSWORD

    @property
    def effective_secret_key(self) -> str:
        """SECRET_KEY, or in sim mode this installation's own random one."""
        return self.secret_key or sim_secret(self.database_dir)

    @property
    def effective_jwt_secret(self) -> str:
        return self.jwt_secret_key or self.effective_secret_key

    @property
    def label(self) -> tuple[int, str]:
        """The label models must be trained for: (horizon in sessions, normalisation)."""
        return self.ai_prediction_horizon_days, self.ai_label_normalisation

    @property
    def ai_mode(self) -> str:
        """MODEL_MODE as the AI service spells it (pooled | per_symbol)."""
        return self.model_mode.replace("-", "_")

    @property
    def sql_url(self) -> str:
        """DATABASE_URL, or SQLite under DATABASE_DIR by default."""
        return self.database_url or f"sqlite:///{self.database_dir / 'alpha_trader.db'}"

    @property
    def uses_embedded_broker(self) -> bool:
        return not (self.celery_broker_url or self.redis_url)

    @property
    def broker_url(self) -> str:
        """Redis when configured; otherwise SQLite through `app.tasks.embedded_broker.Transport`."""
        if self.celery_broker_url:
            return self.celery_broker_url
        if self.redis_url:
            return self.redis_url
        return f"sqlite:///{self.database_dir / 'celery-broker.sqlite'}"

    @property
    def result_backend(self) -> str:
        if self.celery_result_backend:
            return self.celery_result_backend
        if self.redis_url:
            return self.redis_url
        return f"db+sqlite:///{self.database_dir / 'celery-results.sqlite'}"


def _is_symbol(text: str) -> bool:
    return text.replace(".", "").isalnum() and len(text) <= 10


def universe_file(value: str) -> Path | None:
    """The file UNIVERSE names: None for the watchlist, the shipped file of a universe's name,
    else the value as a path."""
    if value == "watchlist":
        return None
    shipped = UNIVERSES_DIR / f"{value}.txt"
    return shipped if value.isidentifier() and shipped.is_file() else Path(value).expanduser()


def read_universe_file(path: Path) -> tuple[str, ...]:
    """A universe file's symbols, upper-cased: one a line, blank lines and # comments ignored.
    ValueError, naming the file and line, for a malformed or repeated symbol, an empty or
    unreadable file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        names = ", ".join(sorted(p.stem for p in UNIVERSES_DIR.glob("*.txt")))
        raise ValueError(
            f"{path} is not 'watchlist', a shipped universe ({names}) or a readable file"
        ) from None
    symbols: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip().upper()
        if not text:
            continue
        if not _is_symbol(text):
            raise ValueError(f"{path} line {number}: {text!r} is not a symbol")
        if text in symbols:
            raise ValueError(f"{path} line {number}: {text} repeats line {symbols[text]}")
        symbols[text] = number
    if not symbols:
        raise ValueError(f"{path} names no symbol")
    return tuple(symbols)


def sim_secret(directory: Path) -> str:
    """The random secret of a sim installation: made once, atomically (gunicorn, the workers
    and the CLI may start together), readable by its owner only."""
    path = directory / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    draft = directory / f".secret_key.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48))
    try:
        os.link(draft, path)  # fails if another process made it first: theirs wins
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path.read_text().strip()


class _KeyError(ValueError):
    """A cross-field problem that still names the one key to fix."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read settings from the environment (and .env, or the file ENV_FILE names), applying
    `overrides` on top.

    Raises ConfigError with one line naming the key and the problem.
    """
    values = {key.lower(): value for key, value in (overrides or {}).items()}
    env_file = os.environ.get("ENV_FILE", ".env")
    try:
        return Settings(_env_file=env_file or None, **values)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _KeyError):
        return f"{cause.key.upper()} {cause.problem}"
    key = str(error["loc"][0]).upper() if error["loc"] else "settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    shown = (
        ""
        if isinstance(value, dict) or "SECRET" in key or "PASSWORD" in key
        else f" (got {value!r})"
    )
    return f"{key}: {message}{shown}"
