"""Celery: the app wiring (celery_app), settings and beat schedule (celery_config), and thin
@shared_task wrappers (trading, training, backtest) whose names stay "app.tasks.<name>". Tasks call
services; nothing below app.tasks imports from here."""
