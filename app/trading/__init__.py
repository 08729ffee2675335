"""Trading: the pure strategy, the risk gate and its durable state, order placement and
reconciliation, the decision and guard cycles, the kill switch, alerts and the daily summary.
Imports ai, broker, market and store; never backtest, the app container or Flask."""
