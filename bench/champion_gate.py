"""How the champion / challenger gate decides on real bars: nightly retrains, broken challengers.

    .venv/bin/python -m bench.champion_gate [--dates 8]

For evenly spaced sessions T in 2017-2021 (32 symbols, 5 years, the default pooled ensemble):
the champion is trained on data before T, and three challengers on data before the next session
(a nightly retrain): a normal one, one trained on labels permuted across rows, and one trained
on negated labels. Each is judged against the champion by `app.ai.champion.judge`. Prints one
line per date and how often each challenger was promoted; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
from datetime import date

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd

from app.ai.champion import judge
from app.ai.features import LABEL_COLUMN, build_features
from app.ai.training import load_bars, train, training_window
from app.config import DEFAULT_WATCHLIST
from app.market.calendar import NyseCalendar
from app.market.sources import CsvMarketData
from tests.support import SHARED_DATA

SYMBOLS = DEFAULT_WATCHLIST.split(",")


def features_before(market: CsvMarketData, today: date) -> tuple[date, pd.DataFrame]:
    start, end = training_window(today, 5, NyseCalendar())
    bars = load_bars(market, SYMBOLS, start, end)
    return end, build_features(bars, bars["SPY"])


def broken(features: pd.DataFrame, how: str, seed: int) -> pd.DataFrame:
    out = features.copy()
    if how == "inverted":
        out[LABEL_COLUMN] = -out[LABEL_COLUMN]
        return out
    known = out[LABEL_COLUMN].notna()
    rng = np.random.default_rng(seed)
    out.loc[known, LABEL_COLUMN] = rng.permutation(out.loc[known, LABEL_COLUMN].to_numpy())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dates", type=int, default=8)
    args = parser.parse_args()
    calendar = NyseCalendar()
    market = CsvMarketData(SHARED_DATA)
    sessions = calendar.sessions(date(2017, 1, 3), date(2021, 11, 30))
    picks = [sessions[int(i)] for i in np.linspace(0, len(sessions) - 1, args.dates)]
    promoted = {"normal": 0, "shuffled": 0, "inverted": 0}
    for i, today in enumerate(picks):
        end, features = features_before(market, today)
        champion = train(None, None, "pooled", end, features=features)
        nxt = calendar.next_session(today)
        end2, features2 = features_before(market, nxt)
        line = [f"{today}"]
        for how in ("normal", "shuffled", "inverted"):
            labelled = features2 if how == "normal" else broken(features2, how, seed=i)
            challenger = train(None, None, "pooled", end2, features=labelled)
            d = judge(champion, challenger, features2)
            promoted[how] += d.kept == "challenger"
            if how == "normal":
                line.append(f"{d.sessions} sessions, champion IC {d.champion_rank_ic:+.4f}")
            line.append(f"{how} {d.challenger_rank_ic:+.4f} -> {d.kept}")
        print(" | ".join(line), flush=True)
    n = len(picks)
    print(
        f"promoted: normal {promoted['normal']}/{n}, shuffled {promoted['shuffled']}/{n}, "
        f"inverted {promoted['inverted']}/{n}"
    )


if __name__ == "__main__":
    main()
