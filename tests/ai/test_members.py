# ruff: noqa: N806 - X / X_val: the usual names of feature matrices
"""Members and their shared training set: float32 input, seeded row draws, determinism."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from app.ai.ensemble import Ensemble
from app.ai.members import LightGBMMember, TrainingSet, XGBoostMember, as_matrix
from tests.ai.test_ensemble import FAST, synthetic
from tests.support import ROOT


@pytest.mark.parametrize("member_type", [LightGBMMember, XGBoostMember])
def test_member_fit_predict_and_bytes_round_trip(
    member_type: type[LightGBMMember] | type[XGBoostMember],
) -> None:
    X, y = synthetic(1500, 2)
    X_val, y_val = synthetic(500, 3)
    member = member_type(FAST[member_type.kind], seed=1, subsample=0.7)
    member.fit(TrainingSet(X, y, X_val, y_val))
    pred = member.predict(as_matrix(X_val, None))
    assert pred.shape == (500,)
    assert pred.dtype == np.float64
    assert np.corrcoef(pred, y_val)[0, 1] > 0.3
    assert 1 <= member.best_iteration <= 60
    clone = member_type(FAST[member_type.kind], seed=1, subsample=0.7)
    clone.load_bytes(member.to_bytes())
    np.testing.assert_array_equal(clone.predict(as_matrix(X_val, None)), pred)


def test_members_differ_by_seed_and_subsample() -> None:
    X, y = synthetic(1500, 4)
    data = TrainingSet(X, y)
    a, b = LightGBMMember(FAST["lightgbm"], seed=1), LightGBMMember(FAST["lightgbm"], seed=2)
    a.fit(data)
    b.fit(data)
    assert not np.array_equal(a.predict(as_matrix(X, None)), b.predict(as_matrix(X, None)))


def test_features_reach_the_libraries_as_one_float32_c_matrix() -> None:
    X, y = synthetic(300, 5)
    data = TrainingSet(X, y)
    assert data.X.dtype == np.float32
    assert data.X.flags.c_contiguous
    assert data.y.dtype == np.float64
    # An already converted matrix is used as it is, not copied again.
    assert as_matrix(data.X, None) is data.X
    # A frame's columns are taken by name, in the order asked for.
    reordered = as_matrix(X[list(reversed(X.columns))], list(X.columns))
    np.testing.assert_array_equal(reordered, data.X)


def test_a_draw_is_seeded_time_ordered_and_capped() -> None:
    X, y = synthetic(1000, 6)
    data = TrainingSet(X, y)
    assert data.draw(1.0, None, seed=1) is None
    assert data.draw(0.8, 2000, seed=1) is not None
    rows = data.draw(0.8, None, seed=1)
    assert rows is not None
    assert len(rows) == 800
    assert np.all(np.diff(rows) > 0)  # distinct rows, in time order
    np.testing.assert_array_equal(rows, data.draw(0.8, None, seed=1))
    assert not np.array_equal(rows, data.draw(0.8, None, seed=2))
    capped = data.draw(0.8, 250, seed=1)
    assert capped is not None
    assert len(capped) == 250
    everything = data.draw(1.0, 250, seed=1)
    assert everything is not None
    assert len(everything) == 250


def test_a_capped_member_learns_from_its_own_rows_only() -> None:
    """Two members that draw 200 of 4000 rows with different seeds fit different models;
    the same seed, the same model."""
    X, y = synthetic(4000, 7)
    data = TrainingSet(X, y)
    params = {**FAST["xgboost"], "min_child_weight": 20.0}
    a, b, again = (XGBoostMember(params, seed, 0.8, max_rows=200) for seed in (1, 2, 1))
    for member in (a, b, again):
        member.fit(data)
    probe = as_matrix(X[:500], None)
    assert not np.array_equal(a.predict(probe), b.predict(probe))
    np.testing.assert_array_equal(a.predict(probe), again.predict(probe))


def test_an_ensemble_fits_a_matrix_given_its_feature_names() -> None:
    X, y = synthetic(2000, 8)
    X_val, y_val = synthetic(1000, 9)
    from_frame = Ensemble(n_lgbm=1, n_xgb=1, params=FAST)
    from_frame.fit(X, y, X_val, y_val)
    from_matrix = Ensemble(n_lgbm=1, n_xgb=1, params=FAST)
    with pytest.raises(ValueError, match="feature_names"):
        from_matrix.fit(as_matrix(X, None), y)
    from_matrix.fit(
        as_matrix(X, None), y, as_matrix(X_val, None), y_val, feature_names=list(X.columns)
    )
    assert from_matrix.feature_names == list(X.columns)
    np.testing.assert_array_equal(from_matrix.predict(X_val).mean, from_frame.predict(X_val).mean)


_TRAIN_AND_HASH = textwrap.dedent(
    """
    import hashlib
    from app.ai.ensemble import Ensemble
    from tests.ai.test_ensemble import synthetic
    X, y = synthetic(6000, 10)
    X_val, y_val = synthetic(2000, 11)
    ens = Ensemble(n_lgbm=2, n_xgb=2, params={"max_member_rows": 3000}, seed=4)
    ens.fit(X, y, X_val, y_val)
    print(hashlib.sha256(b"".join(m.to_bytes() for m in ens.members)).hexdigest())
    print(ens.predict(X_val).mean.tobytes().hex()[:64])
    """
)


def test_training_is_identical_between_processes() -> None:
    """Live and backtest train in different processes: the same rows, params and seed must
    give the same trees, byte for byte, and the same predictions."""
    runs = [
        subprocess.run(
            [sys.executable, "-c", _TRAIN_AND_HASH],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.split()
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    X, y = synthetic(6000, 10)
    X_val, y_val = synthetic(2000, 11)
    ens = Ensemble(n_lgbm=2, n_xgb=2, params={"max_member_rows": 3000}, seed=4)
    ens.fit(X, y, X_val, y_val)
    assert hashlib.sha256(b"".join(m.to_bytes() for m in ens.members)).hexdigest() == runs[0][0]
    assert pd.Series(ens.predict(X_val).mean).notna().all()
