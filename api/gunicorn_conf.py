"""gunicorn settings for the API, from environment variables (README, "Configuration").

Run: ``gunicorn -c api/gunicorn_conf.py 'api.app:create_app()'``.
"""

import json as _json
import os as _os

from gunicorn import glogging as _glogging
from gunicorn import util as _util

from sharding import logs as _logs
from sharding import metrics as _metrics
from sharding import process as _process

# An invalid configuration stops gunicorn with one JSON log line and status 2.
_settings = _process.load_settings("api")

# IPv6 literals need brackets in a bind address.
_host = f"[{_settings.host}]" if ":" in _settings.host else _settings.host
bind = [f"{_host}:{_settings.port}"]
workers = _settings.api_workers
# Slow or stuck clients (api/worker.py): a connection is a greenlet, not a
# thread, so clients that stall their headers or body hold up no one else.
# A request's headers must arrive within keepalive seconds (of the
# connection opening, or the previous answer), its body and answer within
# api.worker.REQUEST_DEADLINE_S of its headers; else the connection is closed.
worker_class = "api.worker.DeadlineWorker"
worker_connections = _settings.api_connections
keepalive = 5
# gunicorn's heartbeat: a worker silent this long (a stuck event loop) is restarted.
timeout = 30
graceful_timeout = max(1, int(_settings.shutdown_seconds))
# Request line and header limits (gunicorn defaults made explicit).
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
proc_name = "timer-api"
# Several services may share a host: no per-user control socket.
control_socket_disable = True

_ACCESS_LOG = _os.environ.get("TIMER_ACCESS_LOG") == "1"
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": _logs.formatter}},
    "filters": {"request_id": {"()": _logs.RequestIdFilter}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                            "filters": ["request_id"], "stream": "ext://sys.stderr"}},
    "root": {"level": _logs.level(), "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        # One JSON line per request only with TIMER_ACCESS_LOG=1: it costs
        # throughput, and a reverse proxy usually logs requests already.
        "gunicorn.access": {"level": "INFO" if _ACCESS_LOG else "WARNING",
                            "handlers": ["stderr"], "propagate": False},
    },
}


class AccessLogger(_glogging.Logger):
    """gunicorn's logger, which builds no access-log line while the access log is off.

    With ``logconfig_dict`` set, gunicorn formats every request's access
    atoms even when the ``gunicorn.access`` logger drops them (~3% of a
    request's CPU).
    """

    def access(self, resp, req, environ, request_time):
        """Log the request (gunicorn's format) only with ``TIMER_ACCESS_LOG=1``."""
        if _ACCESS_LOG:
            super().access(resp, req, environ, request_time)


logger_class = AccessLogger


def child_exit(server, worker):
    """gunicorn hook: multiprocess metrics bookkeeping for an exited worker."""
    _metrics.process_exited(worker.pid)


def on_starting(server):
    """gunicorn hook (master), before any worker: refuse a data directory another
    service holds, and stop when the stack's supervisor dies (``sharding.process``)."""
    _process.refuse_busy_data_dir(_settings)
    _process.die_with_stack()


def _json_error(sock, status_int, reason, mesg):
    """gunicorn's answer to a request it cannot parse, as JSON in Falcon's error format.

    gunicorn writes these itself (bad request line or headers, limits) as
    HTML; the contract wants every error body to be JSON.
    """
    body = _json.dumps({"title": f"{status_int} {reason}", "description": mesg or reason}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    _util.write_nonblock(sock, head.encode("latin-1") + body)


# Replaces gunicorn.util.write_error, which gunicorn's workers call for such requests.
_util.write_error = _json_error
