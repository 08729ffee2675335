"""Where a walk-forward run's bars come from, described small enough for a task message.

Workers never receive a feature frame through the broker (tens of MB for a broad universe, in
every window's message). They get this description and load the bars from their own market data
(the data directory it names, or the worker's configured source), then build the features
once per process. No shared disk is needed between hosts, only the same data. The fingerprint of
the planner's bars travels along: a worker whose bars differ (another data directory, a cache
re-adjusted since) refuses the window instead of training on different data. The feature set
(AI_FEATURE_SET) travels too, and enters the fingerprint, so a run planned on one set never
matches a worker's source described with another.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd

from app.ai.features import SEED_FEATURE_SET, build_features
from app.backtest.results import BENCHMARK_SYMBOL
from app.backtest.window import load_bars
from app.domain import BarFrame, MarketData

__all__ = ["FeatureSource", "SourceData", "fingerprint", "load_source", "source_of"]

#: Sources a worker process keeps loaded: a run's windows reuse its bars and features; the
#: bound keeps a long-lived worker from holding every run it ever served.
_KEEP = 2


@dataclass(frozen=True)
class FeatureSource:
    """The bars of a run: load_bars(market, symbols, start, end) on the market data at
    `data_dir` (None: the worker's own), whose content and `feature_set` hash to
    `fingerprint`."""

    symbols: tuple[str, ...]
    start: date
    end: date
    fingerprint: str
    data_dir: str | None = None
    feature_set: str = SEED_FEATURE_SET

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbols": list(self.symbols),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "fingerprint": self.fingerprint,
            "data_dir": self.data_dir,
            "feature_set": self.feature_set,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSource:
        return cls(
            symbols=tuple(data["symbols"]),
            start=date.fromisoformat(data["start"]),
            end=date.fromisoformat(data["end"]),
            fingerprint=str(data["fingerprint"]),
            data_dir=data.get("data_dir"),
            feature_set=str(data.get("feature_set") or SEED_FEATURE_SET),
        )


class SourceData:
    """A run's bars and the features built from them, once per label definition and feature
    set."""

    def __init__(self, bars: Mapping[str, BarFrame]) -> None:
        self.bars = bars
        self._features: dict[tuple[int, str, str], pd.DataFrame] = {}
        self._lock = threading.Lock()

    def features(
        self, horizon: int, normalisation: str, feature_set: str = SEED_FEATURE_SET
    ) -> pd.DataFrame:
        with self._lock:
            key = (horizon, normalisation, feature_set)
            feats = self._features.get(key)
            if feats is None:
                feats = build_features(
                    self.bars,
                    self.bars.get(BENCHMARK_SYMBOL),
                    horizon=horizon,
                    normalisation=normalisation,
                    feature_set=feature_set,
                )
                self._features[key] = feats
            return feats


def fingerprint(bars: Mapping[str, BarFrame], feature_set: str = SEED_FEATURE_SET) -> str:
    """A hash of every symbol's dates and values, and of the feature set: equal bars and set,
    equal fingerprint (the seed set's is the bars' alone, as before sets existed)."""
    digest = hashlib.sha256()
    if feature_set != SEED_FEATURE_SET:
        digest.update(f"feature_set={feature_set}".encode())
    for symbol in sorted(bars):
        digest.update(symbol.encode())
        frame = bars[symbol]
        digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
        digest.update(",".join(map(str, frame.columns)).encode())
    return digest.hexdigest()


def source_of(
    bars: Mapping[str, BarFrame],
    symbols: Sequence[str],
    start: date,
    end: date,
    data_dir: str | None = None,
    feature_set: str = SEED_FEATURE_SET,
) -> FeatureSource:
    """The description of bars loaded as load_bars(market, symbols, start, end), featurised
    with `feature_set`."""
    return FeatureSource(
        tuple(symbols), start, end, fingerprint(bars, feature_set), data_dir, feature_set
    )


_loaded: OrderedDict[FeatureSource, SourceData] = OrderedDict()
_loaded_lock = threading.Lock()


def load_source(source: FeatureSource, market: MarketData) -> SourceData:
    """The source's bars from `market`, memoised in this process (a worker's windows of one
    run load and featurise once). ValueError when they are not the planner's bars."""
    with _loaded_lock:
        data = _loaded.get(source)
        if data is not None:
            _loaded.move_to_end(source)
            return data
    bars = load_bars(market, source.symbols, source.start, source.end)
    found = fingerprint(bars, source.feature_set)
    if found != source.fingerprint:
        raise ValueError(
            f"the bars of {len(source.symbols)} symbols {source.start}..{source.end} here "
            f"(data dir {source.data_dir or 'of this worker'}) are not the ones the run was "
            "planned on: every worker needs the same market data"
        )
    data = SourceData(bars)
    with _loaded_lock:
        data = _loaded.setdefault(source, data)
        while len(_loaded) > _KEEP:
            _loaded.popitem(last=False)
    return data
