"""SQLAlchemy 2 tables: the service's durable record. Alembic migrations mirror this module."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RevokedToken(Base):
    """JWT blocklist used when no Redis is configured; every gunicorn worker reads it."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime] = mapped_column(default=utcnow)


class OrderRecord(Base):
    """An order as we sent it and as the broker last reported it; PENDING before it is sent."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_order_id: Mapped[str] = mapped_column(String(128), unique=True)
    broker_order_id: Mapped[str | None] = mapped_column(String(64), index=True)
    symbol: Mapped[str] = mapped_column(String(16), index=True)
    side: Mapped[str] = mapped_column(String(4))
    qty: Mapped[float | None] = mapped_column(Float)
    notional: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(24), index=True)
    filled_qty: Mapped[float] = mapped_column(Float, default=0.0)
    filled_avg_price: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(String(255))
    reject_reason: Mapped[str | None] = mapped_column(String(255))
    session_date: Mapped[date | None] = mapped_column(Date, index=True)
    cycle_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    fills: Mapped[list[FillRecord]] = relationship(back_populates="order")


class FillRecord(Base):
    __tablename__ = "fills"
    __table_args__ = (UniqueConstraint("order_id", "fill_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    #: Distinguishes fills of one order (cumulative quantity at that fill), so a fill recorded
    #: twice by reconciliation is one row.
    fill_key: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(16), index=True)
    side: Mapped[str] = mapped_column(String(4))
    qty: Mapped[float] = mapped_column(Float)
    price: Mapped[float] = mapped_column(Float)
    commission: Mapped[float] = mapped_column(Float, default=0.0)
    filled_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    order: Mapped[OrderRecord] = relationship(back_populates="fills")


class SignalRecord(Base):
    __tablename__ = "signals"

    id: Mapped[int] = mapped_column(primary_key=True)
    symbol: Mapped[str] = mapped_column(String(16), index=True)
    action: Mapped[str] = mapped_column(String(4))
    predicted_return: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)
    dispersion: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(64))
    as_of: Mapped[date | None] = mapped_column(Date, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class MissingSignal(Base):
    """A universe symbol a cycle had no signal for, and why (app/trading/missing_signals.py)."""

    __tablename__ = "missing_signals"

    id: Mapped[int] = mapped_column(primary_key=True)
    symbol: Mapped[str] = mapped_column(String(16), index=True)
    as_of: Mapped[date] = mapped_column(Date, index=True)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class EquitySnapshot(Base):
    __tablename__ = "equity_snapshots"

    id: Mapped[int] = mapped_column(primary_key=True)
    taken_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    equity: Mapped[float] = mapped_column(Float)
    cash: Mapped[float] = mapped_column(Float)
    exposure: Mapped[float] = mapped_column(Float)
    positions: Mapped[int] = mapped_column(Integer)
    daily_pnl: Mapped[float] = mapped_column(Float, default=0.0)


class RiskStateRecord(Base):
    """The single row of durable risk state; updated in a transaction, survives restarts."""

    __tablename__ = "risk_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    halted_until: Mapped[datetime | None] = mapped_column()
    halt_reason: Mapped[str | None] = mapped_column(String(255))
    session_date: Mapped[date | None] = mapped_column(Date)
    start_of_day_equity: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class RiskEvent(Base):
    __tablename__ = "risk_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    detail: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class DecisionRun(Base):
    """One row per closed session whose decision was taken: later triggers are no-ops."""

    __tablename__ = "decision_runs"

    session_date: Mapped[date] = mapped_column(Date, primary_key=True)
    orders: Mapped[int] = mapped_column(Integer, default=0)
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelRun(Base):
    __tablename__ = "model_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    mode: Mapped[str] = mapped_column(String(16))
    symbols: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    train_start: Mapped[date | None] = mapped_column(Date)
    train_end: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ModelDailyIC(Base):
    """One session's realised cross-sectional rank IC of one model version's signals, written
    once the labels of that session are known (app.trading.model_health)."""

    __tablename__ = "model_daily_ic"
    __table_args__ = (UniqueConstraint("model_version", "session_day", "horizon_days"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    session_day: Mapped[date] = mapped_column(Date, index=True)
    horizon_days: Mapped[int] = mapped_column(Integer)
    #: NULL when the cross-section had fewer than 3 labelled symbols or no spread.
    rank_ic: Mapped[float | None] = mapped_column(Float)
    n_symbols: Mapped[int] = mapped_column(Integer)
    #: The version whose signals the service recorded last that session (the one it acted on).
    live: Mapped[bool] = mapped_column(Boolean, default=True)
    label_end: Mapped[date] = mapped_column(Date)
    computed_at: Mapped[datetime] = mapped_column(default=utcnow)


class BacktestRun(Base):
    __tablename__ = "backtest_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column()


class TaskRun(Base):
    """Tasks started through the API, so GET /api/tasks/<id> can tell unknown ids from queued."""

    __tablename__ = "task_runs"
    __table_args__ = (Index("ix_task_runs_name_created", "name", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    requested_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BarRecord(Base):
    """A validated daily bar of a closed session; the incremental cache's storage."""

    __tablename__ = "bars"

    symbol: Mapped[str] = mapped_column(String(16), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    open: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)
    low: Mapped[float] = mapped_column(Float)
    close: Mapped[float] = mapped_column(Float)
    volume: Mapped[float] = mapped_column(Float)


class BarCoverage(Base):
    """The span of sessions already fetched for a symbol, so a fetch asks only for what it
    lacks; days inside it without a bar were absent upstream or rejected by validation."""

    __tablename__ = "bar_coverage"

    symbol: Mapped[str] = mapped_column(String(16), primary_key=True)
    first_day: Mapped[date] = mapped_column(Date)
    last_day: Mapped[date] = mapped_column(Date)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SimExchangeState(Base):
    """Sim mode's exchange: the SimBroker book and the replay session, one row shared by the API
    and every worker process."""

    __tablename__ = "sim_exchange"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_day: Mapped[date] = mapped_column(Date)
    book: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DivergenceRecord(Base):
    """One divergence report: the live period replayed through the backtest, and what live did
    differently (GET /api/divergence serves the latest)."""

    __tablename__ = "divergence_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    through: Mapped[date] = mapped_column(Date, index=True)
    status: Mapped[str] = mapped_column(String(16))
    differences: Mapped[int] = mapped_column(Integer, default=0)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Heartbeat(Base):
    """The last time a named piece of work happened (e.g. a trading cycle), one row per name:
    the API and the other workers read it to tell a running service from a stopped one."""

    __tablename__ = "heartbeats"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    at: Mapped[datetime] = mapped_column()
    detail: Mapped[str | None] = mapped_column(String(64))
