"""The model: features, ensemble members behind fit/predict, calibration, the model store, signals,
training, walk-forward evaluation and Optuna tuning. Imports market, store and the bottom modules;
never broker, trading, backtest or Flask."""
