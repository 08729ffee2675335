"""Entry point for the worker and beat: `celery -A app.make_celery worker -B`."""

from app import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
