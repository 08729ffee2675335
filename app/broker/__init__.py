"""Brokers and venues: AlpacaBroker and Alpaca market data, SimBroker, SimExchange, the shared rate
limiter, and the venue that picks a broker, data source and clock per mode. alpaca-py types stop
here (app/broker/alpaca*.py only); nothing here imports trading, ai, backtest or Flask."""
