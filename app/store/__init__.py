"""Persistence: SQLAlchemy models, the session scope, repositories (users, history, task runs,
response cache) and migrations. Imports only config, domain and errors; nothing above it."""
