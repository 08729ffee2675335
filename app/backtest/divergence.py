"""Divergence report: does live trading still execute what the backtest measures?

After each session the backtest is replayed over the live period so far, fed with the signals
live actually recorded (so the model is not what is compared, the execution is), starting from
the equity live started with. Every order live sent is matched with the order the backtest
modelled by (session, symbol, side, purpose); what only one side has, a quantity that differs,
and a fill price away from the modelled one are differences. Zero differences is the claim the
parity test proves on the fake; this report checks it on the real account, every day.

Sessions: a decision order is keyed by the session it was decided after; a protective exit
(stop-loss / take-profit filled inside a bar) by the session it filled in.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from typing import Any

from sqlalchemy import select

from app import metrics
from app.backtest.engine import run_backtest
from app.backtest.results import BacktestConfig, OrderLog
from app.backtest.window import load_bars
from app.config import Settings
from app.domain import BarFrame, MarketData, OrderStatus, Signal, SignalAction
from app.market.sessions import new_york_date
from app.market.universe import feature_universe
from app.store.database import Database
from app.store.divergence import save_report
from app.store.orm import EquitySnapshot, FillRecord, OrderRecord, SignalRecord
from app.trading.notifier import Notifier
from app.trading.orders import purpose_of
from app.trading.risk import RiskLimits
from app.trading.strategy import StrategyConfig

log = logging.getLogger(__name__)

#: Exits found inside a bar: keyed by their fill session, on both sides.
INTRADAY_PURPOSES = frozenset({"stop_loss", "take_profit"})
_STOP = re.compile(r"stop (\d+(?:\.\d+)?)")
#: History loaded before the first live session: the feature window plus holidays.
LOOKBACK_DAYS = 400
KINDS = ("live_only", "backtest_only", "qty", "fill_price")


@dataclass(frozen=True)
class ExecutedOrder:
    """One order as live sent it or as the backtest modelled it, keyed the same way."""

    session: date
    symbol: str
    side: str
    qty: float
    purpose: str
    fill_price: float | None = None
    client_order_id: str = ""

    @property
    def key(self) -> tuple[date, str, str, str]:
        return (self.session, self.symbol, self.side, self.purpose)


@dataclass(frozen=True)
class Difference:
    kind: str  # one of KINDS
    session: date
    symbol: str
    side: str
    purpose: str
    live: float | None
    modelled: float | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["session"] = self.session.isoformat()
        return data


@dataclass
class DivergenceReport:
    status: str  # "ok" | "diverged" | "no_live_period"
    start: date | None = None
    through: date | None = None
    live_orders: int = 0
    modelled_orders: int = 0
    differences: list[Difference] = field(default_factory=list)
    max_fill_bps: float = 0.0
    #: What the replay modelled (not serialised: the differences say what matters).
    modelled: list[ExecutedOrder] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: sum(1 for d in self.differences if d.kind == k) for k in KINDS}

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "start": self.start.isoformat() if self.start else None,
            "through": self.through.isoformat() if self.through else None,
            "live_orders": self.live_orders,
            "modelled_orders": self.modelled_orders,
            "counts": self.counts(),
            "max_fill_bps": round(self.max_fill_bps, 4),
            "differences": [d.as_dict() for d in self.differences],
        }


def live_purpose(reason: str | None, fill_price: float | None) -> str:
    """The purpose as the backtest names it: a protective OCO that filled is the leg that
    filled (its reason records the stop level: at or under it, the stop-loss filled)."""
    purpose = purpose_of(reason or "")
    if purpose != "protective" or fill_price is None:
        return purpose
    match = _STOP.search(reason or "")
    if match is None:
        return purpose
    return "stop_loss" if fill_price <= float(match.group(1)) + 1e-9 else "take_profit"


def compare(
    live: Iterable[ExecutedOrder],
    modelled: Iterable[ExecutedOrder],
    *,
    fill_tolerance_bps: float,
) -> tuple[list[Difference], float]:
    """Differences between the two order lists, and the largest fill-price gap in bps."""
    live_by = _by_key(live)
    modelled_by = _by_key(modelled)
    out: list[Difference] = []
    worst = 0.0
    for key in sorted(set(live_by) | set(modelled_by)):
        ours, theirs = live_by.get(key), modelled_by.get(key)
        if theirs is None:
            assert ours is not None
            out.append(Difference("live_only", *key, ours.qty, None, "no such modelled order"))
            continue
        if ours is None:
            out.append(Difference("backtest_only", *key, None, theirs.qty, "live never sent it"))
            continue
        if abs(ours.qty - theirs.qty) > 1e-6:
            out.append(
                Difference("qty", *key, ours.qty, theirs.qty, f"{ours.qty:g} vs {theirs.qty:g}")
            )
        if ours.fill_price and theirs.fill_price:
            bps = abs(ours.fill_price / theirs.fill_price - 1.0) * 10_000
            worst = max(worst, bps)
            if bps > fill_tolerance_bps:
                out.append(
                    Difference(
                        "fill_price",
                        *key,
                        ours.fill_price,
                        theirs.fill_price,
                        f"filled {bps:.1f} bps from the modelled price",
                    )
                )
    return out, worst


def _by_key(orders: Iterable[ExecutedOrder]) -> dict[tuple[date, str, str, str], ExecutedOrder]:
    """Orders by key; two orders under one key (a replaced protective order) add up."""
    out: dict[tuple[date, str, str, str], ExecutedOrder] = {}
    for order in orders:
        seen = out.get(order.key)
        if seen is not None:
            qty = seen.qty + order.qty
            price = None
            if seen.fill_price and order.fill_price and qty > 0:
                price = (seen.fill_price * seen.qty + order.fill_price * order.qty) / qty
            order = replace(order, qty=qty, fill_price=price or seen.fill_price)
        out[order.key] = order
    return out


def modelled_orders(orders: Iterable[OrderLog]) -> list[ExecutedOrder]:
    out = []
    for o in orders:
        purpose = purpose_of(o.reason)
        intraday = purpose in INTRADAY_PURPOSES
        if intraday and o.fill_date is None:
            continue
        out.append(
            ExecutedOrder(
                session=o.fill_date if intraday and o.fill_date else o.session,
                symbol=o.symbol,
                side=o.side,
                qty=o.qty,
                purpose=purpose,
                fill_price=o.fill_price,
                client_order_id=o.client_order_id,
            )
        )
    return out


class RecordedSignals:
    """The signals live recorded, served to the backtest session by session (the last record of
    a session and symbol wins: that is what the session's decision used)."""

    def __init__(self, by_session: Mapping[date, Mapping[str, Signal]]) -> None:
        self._by_session = by_session

    @classmethod
    def load(cls, db: Database, through: date) -> RecordedSignals:
        by_session: dict[date, dict[str, Signal]] = {}
        with db.session() as session:
            rows = session.scalars(
                select(SignalRecord)
                .where(SignalRecord.as_of.is_not(None), SignalRecord.as_of <= through)
                .order_by(SignalRecord.id)
            )
            for r in rows:
                assert r.as_of is not None
                by_session.setdefault(r.as_of, {})[r.symbol] = Signal(
                    r.symbol,
                    SignalAction(r.action),
                    r.predicted_return,
                    r.confidence,
                    r.dispersion,
                    r.model_version,
                )
        return cls(by_session)

    @property
    def sessions(self) -> list[date]:
        return sorted(self._by_session)

    def symbols(self) -> set[str]:
        return {s for signals in self._by_session.values() for s in signals}

    def __call__(self, bars: Mapping[str, BarFrame], session: date) -> Mapping[str, Signal]:
        return self._by_session.get(session, {})

    def describe(self) -> dict[str, Any]:
        return {"kind": "recorded_live_signals", "sessions": len(self._by_session)}


class DivergenceService:
    """Replays the live period through the backtest and lists what live did differently."""

    def __init__(
        self, *, settings: Settings, db: Database, market: MarketData, notifier: Notifier
    ) -> None:
        self._settings = settings
        self._db = db
        self._market = market
        self._notifier = notifier

    def publish(self, through: date) -> DivergenceReport:
        """Run, store, export the gauges, and alert when live diverged."""
        report = self.run(through)
        data = report.as_dict()
        save_report(self._db, through, data)
        metrics.record_divergence(report.counts(), report.max_fill_bps)
        if report.differences:
            lines = [
                f"{d.session} {d.side} {d.symbol} ({d.purpose}): {d.kind}, {d.detail}"
                for d in report.differences[:10]
            ]
            more = len(report.differences) - len(lines)
            self._notifier.notify(
                f"Live diverged from the backtest: {len(report.differences)} difference(s)",
                "\n".join(lines) + (f"\n... and {more} more" if more > 0 else ""),
                "error",
            )
        log.info(
            "divergence through %s: %s, %d live / %d modelled orders, %s",
            through,
            report.status,
            report.live_orders,
            report.modelled_orders,
            report.counts(),
        )
        return report

    def run(self, through: date) -> DivergenceReport:
        signals = RecordedSignals.load(self._db, through)
        sessions = signals.sessions
        if len(sessions) < 2 or sessions[0] >= through:
            return DivergenceReport(status="no_live_period", through=through)
        start = sessions[0]
        live = self.live_orders(start, through)
        tradable = sorted(signals.symbols() | {o.symbol for o in live})
        universe = feature_universe(tradable)
        config = BacktestConfig(
            symbols=tuple(tradable),
            start=start,
            end=through,
            initial_capital=self._starting_equity(),
            commission_bps=self._settings.sim_commission_bps,
            slippage_bps=self._settings.sim_slippage_bps,
            limits=RiskLimits.from_settings(self._settings),
            strategy=StrategyConfig.from_settings(self._settings),
            intraday_exits=self._settings.protective_orders,
        )
        bars = load_bars(self._market, universe, start - timedelta(days=LOOKBACK_DAYS), through)
        result = run_backtest(bars, config, signals)
        modelled = modelled_orders(result.orders)
        differences, worst = compare(
            live, modelled, fill_tolerance_bps=self._settings.divergence_fill_tolerance_bps
        )
        return DivergenceReport(
            status="diverged" if differences else "ok",
            start=start,
            through=through,
            live_orders=len(live),
            modelled_orders=len(modelled),
            differences=differences,
            max_fill_bps=worst,
            modelled=modelled,
        )

    def live_orders(self, start: date, through: date) -> list[ExecutedOrder]:
        """The bot's orders of the period, each keyed as `modelled_orders` keys the backtest's."""
        with self._db.session() as session:
            rows = session.scalars(
                select(OrderRecord).where(
                    OrderRecord.session_date.is_not(None),
                    OrderRecord.session_date >= start,
                    OrderRecord.session_date <= through,
                )
            ).all()
            first_fill = {
                order_id: filled_at
                for order_id, filled_at in session.execute(
                    select(FillRecord.order_id, FillRecord.filled_at).order_by(FillRecord.id.desc())
                )
            }
            out = []
            for r in rows:
                purpose = live_purpose(r.reason, r.filled_avg_price)
                filled = r.filled_qty > 0
                if purpose in INTRADAY_PURPOSES or purpose == "protective":
                    if not filled or r.id not in first_fill:
                        continue  # a protective order that never filled is not a trade
                    day = new_york_date(first_fill[r.id])
                    if day > through:
                        continue
                    out.append(
                        ExecutedOrder(
                            day,
                            r.symbol,
                            r.side,
                            r.filled_qty,
                            purpose,
                            r.filled_avg_price,
                            r.client_order_id,
                        )
                    )
                    continue
                if r.session_date is None or r.session_date >= through:
                    continue  # decided after the last replayed close: fills after the window
                if r.status == OrderStatus.REJECTED.value and r.broker_order_id is None:
                    continue  # refused before it left: the backtest's broker refuses it too
                out.append(
                    ExecutedOrder(
                        r.session_date,
                        r.symbol,
                        r.side,
                        r.filled_qty if filled else (r.qty or 0.0),
                        purpose,
                        r.filled_avg_price,
                        r.client_order_id,
                    )
                )
        return out

    def _starting_equity(self) -> float:
        with self._db.session() as session:
            first = session.scalar(select(EquitySnapshot.equity).order_by(EquitySnapshot.id))
        return float(first) if first else self._settings.sim_starting_cash
