"""The model: features, ensemble members behind fit/predict, calibration, the model store, signals,
training, walk-forward evaluation and Optuna tuning. Imports market, store and the bottom modules;
never broker, trading, backtest or Flask."""

import os

# OpenMP threads that spin while waiting make training 5-40x slower whenever another process
# holds one of the two cores (measured: 2 s -> 11 s with one busy neighbour). Passive waiting
# costs nothing when the machine is idle. It only takes effect before libgomp is first loaded,
# so it is set here, before any module of this package imports LightGBM or XGBoost.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
