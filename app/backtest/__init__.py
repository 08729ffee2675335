"""Backtests: the engine replaying trading.strategy over SimBroker, walk-forward prediction,
metrics, reports, stored runs and the request that runs one. Imports trading and below; never
api, cli, tasks, the app container or Flask."""
