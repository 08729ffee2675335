"""The exception hierarchy; app/api/errors.py turns each into the one JSON error shape."""

from __future__ import annotations


class AppError(Exception):
    """Base of every error a client may see; `status` and `code` go into the JSON answer."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationError(AppError):
    status = 400
    code = "validation_error"


class NotFoundError(AppError):
    status = 404
    code = "not_found"


class ConflictError(AppError):
    status = 409
    code = "conflict"


class TooManyTasks(AppError):
    """A cap on queued work is reached; the message names the tasks holding it."""

    status = 429
    code = "too_many_tasks"


class TemporaryError(AppError):
    """Something outside us is down or busy; trying again later may work."""

    status = 503
    code = "temporarily_unavailable"


class BrokerError(AppError):
    status = 503
    code = "broker_error"


class BrokerUnavailable(BrokerError, TemporaryError):
    """The broker did not answer in time, dropped the connection or answered 5xx."""

    code = "broker_unavailable"


class RateLimited(BrokerUnavailable):
    code = "broker_rate_limited"


class OrderRejected(BrokerError):
    """The broker (or SimBroker) refused an order: not retryable."""

    status = 422
    code = "order_rejected"


class CancelPending(BrokerUnavailable):
    """The broker took a cancel but did not confirm it in time: the order may still fill and
    its shares stay held, so nothing that needs them may be sent yet."""

    code = "cancel_pending"


class ConfigError(SystemExit):
    """A bad setting. Subclassing SystemExit makes an uncaught one print its single line and
    exit with status 1, with no traceback, from gunicorn, celery and the flask CLI alike."""

    def __init__(self, message: str) -> None:
        super().__init__(f"configuration error: {message}")
        self.message = message
