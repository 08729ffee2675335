"""Champion / challenger: a retrained model replaces the current one only when it is not worse.

Both models are scored on the same rows: the challenger's own held-out calibration dates (its
members never saw them), minus every date the champion's members saw (its training and early-
stopping dates, up to its ``val_end``) and a label gap after them, so neither model is scored on
what it trained on and every label was known when the challenger was trained (no lookahead).
The score is the mean daily cross-sectional rank IC of the predicted return, the figure training
already reports; the champion's calibrator may have seen these rows, but calibration changes
only the confidence, never the ranking. "Not worse" means challenger >= champion - tolerance
(MODEL_GATE_TOLERANCE, default 0).

When there is nothing fair to compare (no champion, a champion trained for another label or on
another feature set than the challenger, which live would refuse to trade, a champion whose
features are no longer computed, or fewer than MIN_GATE_SESSIONS shared unseen sessions) the
challenger is promoted and the decision says why. A kept champion is marked re-validated, so
it does not turn stale while it keeps beating fresh challengers.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from app.ai.ensemble import ModelBundle, daily_ic
from app.ai.features import (
    LABEL_COLUMN,
    LABEL_END_COLUMN,
    label_sessions,
    trained_feature_set,
    trained_label,
)
from app.ai.store import ModelStore, ModelStoreError

log = logging.getLogger(__name__)

#: Fewer shared unseen sessions than this is no evidence either way.
MIN_GATE_SESSIONS = 20
Kept = Literal["challenger", "champion"]


@dataclass(frozen=True)
class GateDecision:
    """What the gate kept and why; stored with the challenger's run and metadata."""

    challenger: str | None
    champion: str | None
    kept: Kept
    reason: str
    challenger_rank_ic: float | None
    champion_rank_ic: float | None
    sessions: int
    gated: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _seen_until(meta: dict[str, Any]) -> pd.Timestamp | None:
    """The last date whose rows the champion's members trained or early-stopped on."""
    last = meta.get("val_end") or meta.get("train_end")
    return pd.Timestamp(last) if last else None


def comparison_rows(
    features: pd.DataFrame, challenger: ModelBundle, champion: ModelBundle
) -> pd.DataFrame:
    """The challenger's calibration rows that the champion never saw either (see module doc)."""
    meta = challenger.metadata
    # Both were trained for the same label (checked before): its sessions are the gap.
    gap = label_sessions(trained_label(meta)[0])
    start, end = meta.get("calibration_start"), meta.get("calibration_end")
    known_by = meta.get("labels_known_by")
    seen = _seen_until(champion.metadata)
    if not (start and end and known_by) or seen is None:
        return features.iloc[0:0]
    dates = features.index.get_level_values("date")
    rows = features[
        (dates >= pd.Timestamp(start))
        & (dates <= pd.Timestamp(end))
        & (dates > seen)
        & features[LABEL_COLUMN].notna()
        & (features[LABEL_END_COLUMN] <= pd.Timestamp(known_by))
    ]
    # The champion's last labels end up to `gap` sessions after `seen` (h + 1: a 21-session
    # label overlaps 22 later dates, not the seed label's 2): skip those dates too.
    later = np.unique(dates[dates > seen])
    if len(later) <= gap:
        return features.iloc[0:0]
    return rows[rows.index.get_level_values("date") > later[gap - 1]]


def _mean_rank_ic(scored: pd.DataFrame, column: str) -> float | None:
    ics = daily_ic(scored, pred=column, label=LABEL_COLUMN)
    return float(ics["rank_ic"].mean()) if len(ics) else None


def judge(
    champion: ModelBundle | None,
    challenger: ModelBundle,
    features: pd.DataFrame,
    *,
    tolerance: float = 0.0,
    gated: bool = True,
) -> GateDecision:
    """Which of the two serves next, on the rows neither trained on. Ungated (a manual
    training), the challenger always wins, and the reason says what the gate would have done."""
    verdict = _verdict(champion, challenger, features, tolerance)
    if gated:
        return verdict
    if verdict.kept == "champion":
        reason = (
            f"promoted without the gate (the gate would have kept the champion: {verdict.reason})"
        )
        return replace(verdict, kept="challenger", reason=reason, gated=False)
    return replace(verdict, gated=False)


def _verdict(
    champion: ModelBundle | None, challenger: ModelBundle, features: pd.DataFrame, tolerance: float
) -> GateDecision:
    decision = GateDecision(
        challenger=challenger.version,
        champion=champion.version if champion else None,
        kept="challenger",
        reason="first model: no champion to compare with",
        challenger_rank_ic=None,
        champion_rank_ic=None,
        sessions=0,
        gated=True,
    )
    if champion is None:
        return decision
    if trained_label(champion.metadata) != trained_label(challenger.metadata):
        horizon, normalisation = trained_label(champion.metadata)
        reason = f"the champion was trained for another label ({horizon}-session {normalisation})"
        return replace(decision, reason=reason)
    if trained_feature_set(champion.metadata) != trained_feature_set(challenger.metadata):
        reason = (
            "the champion was trained on another feature set "
            f"({trained_feature_set(champion.metadata)})"
        )
        return replace(decision, reason=reason)
    if not set(champion.feature_columns) <= set(features.columns):
        return replace(decision, reason="the champion's features are no longer computed")
    rows = comparison_rows(features, challenger, champion)
    scored = rows[[LABEL_COLUMN]].copy()
    scored["challenger"] = challenger.predict_frame(rows)["mean"]
    scored["champion"] = champion.predict_frame(rows)["mean"]
    scored = scored.dropna()
    sessions = int(scored.index.get_level_values("date").nunique()) if len(scored) else 0
    decision = replace(decision, sessions=sessions)
    if sessions < MIN_GATE_SESSIONS:
        reason = f"only {sessions} sessions neither model trained on (< {MIN_GATE_SESSIONS})"
        return replace(decision, reason=reason)
    ch, cp = _mean_rank_ic(scored, "challenger"), _mean_rank_ic(scored, "champion")
    decision = replace(decision, challenger_rank_ic=ch, champion_rank_ic=cp)
    if ch is None or cp is None:
        return replace(decision, reason="no session with a rank IC to compare")
    figures = f"rank IC {ch:+.4f} vs champion {cp:+.4f} over {sessions} sessions"
    if ch >= cp - tolerance:
        return replace(decision, reason=f"not worse: {figures}")
    return replace(decision, kept="champion", reason=f"worse: {figures}")


def current_champion(store: ModelStore) -> ModelBundle | None:
    """The current model, or None when there is none or it cannot be loaded (then the
    challenger replaces it: a broken champion defends nothing)."""
    try:
        return store.load_current()
    except (ModelStoreError, OSError, ValueError, KeyError) as exc:
        log.warning("current model cannot be loaded (%s): the challenger will replace it", exc)
        return None


def settle(
    store: ModelStore,
    challenger: ModelBundle,
    features: pd.DataFrame,
    extra_metadata: dict[str, Any],
    *,
    tolerance: float = 0.0,
    gated: bool = True,
) -> GateDecision:
    """Judge, save the challenger (current only when it won), mark a kept champion validated."""
    champion = current_champion(store)
    decision = judge(champion, challenger, features, tolerance=tolerance, gated=gated)
    promote = decision.kept == "challenger"
    version = store.save(
        challenger, {**extra_metadata, "gate": decision.as_dict()}, promote=promote
    )
    decision = replace(decision, challenger=version)
    if not promote and champion is not None and champion.version:
        store.mark_validated(champion.version, datetime.now(UTC), decision.as_dict())
    log.info(
        "champion/challenger: kept the %s (%s); current model %s",
        decision.kept,
        decision.reason,
        store.current_version(),
    )
    return decision
