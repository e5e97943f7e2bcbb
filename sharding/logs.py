"""Structured logging: one JSON object per line on stderr.

Built on python-json-logger; every process calls :func:`setup` once.
"""

import contextvars
import logging
import os
import sys

from pythonjsonlogger.json import JsonFormatter

# The id of the API request a log line belongs to (X-Request-ID), also set
# by consumers while they deliver the timer that request created.
request_id = contextvars.ContextVar("request_id", default=None)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"


def formatter():
    """The JSON formatter shared by our processes and gunicorn's loggers."""
    return JsonFormatter(
        LOG_FORMAT,
        rename_fields={"asctime": "ts", "levelname": "level", "name": "logger", "process": "pid"},
    )


def setup(component):
    """Send every log record of this process to stderr as JSON.

    Args:
        component: short name of the process type (``api``, ``consumer`` ...),
            added to every line as ``component``.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    handler.addFilter(_ComponentFilter(component))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level())


def level():
    """The log level name of our loggers: ``TIMER_LOG_LEVEL`` (default ``INFO``)."""
    return os.environ.get("TIMER_LOG_LEVEL", "INFO").strip().upper() or "INFO"


class _ComponentFilter(logging.Filter):
    def __init__(self, component):
        super().__init__()
        self.component = component

    def filter(self, record):
        record.component = self.component
        return True


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to a record while :data:`request_id` is set."""

    def filter(self, record):
        """Annotate ``record``; never drops it."""
        value = request_id.get()
        if value:
            record.request_id = value
        return True
