"""Falcon middleware: request ids and request metrics."""

import functools
import re
import secrets
import time

from sharding import logs, metrics

# X-Request-ID values are echoed into logs and headers: keep them printable and short.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,64}$")


def new_request_id():
    """A fresh request id: 12 URL-safe characters (72 random bits; kept in each timer's record)."""
    return secrets.token_urlsafe(9)


@functools.lru_cache(maxsize=1024)
def _duration(method, route, status):
    # prometheus-client's advice: keep the child of a label set instead of calling labels() each time.
    return metrics.HTTP_DURATION.labels(method, route, status)


class RequestContext:
    """Gives every request an id and records its duration.

    The id is the client's ``X-Request-ID`` when it is 1-64 printable
    characters, else a fresh one; it is echoed in the response's
    ``X-Request-ID`` and added to every log line of the request
    (``sharding.logs.request_id``). Durations go to
    ``timer_http_request_duration_seconds{method, route, status}``.
    """

    def process_request(self, req, resp):
        """Assign the request id and start the clock."""
        given = req.get_header("X-Request-ID") or ""
        req.context.request_id = given if _VALID_REQUEST_ID.match(given) else new_request_id()
        req.context.started = time.monotonic()
        req.context.log_token = logs.request_id.set(req.context.request_id)

    def process_response(self, req, resp, resource, req_succeeded):
        """Echo the request id, record the duration, and clear the log context.

        ``OPTIONS`` (Falcon's default responder: 200, ``Allow``, an empty body
        labelled JSON) is answered ``204`` with ``Allow`` and no body (RFC 9110 section 9.3.7).
        """
        if req.method == "OPTIONS" and resp.status_code == 200:
            resp.status = 204
            resp.content_type = None
        resp.set_header("X-Request-ID", req.context.request_id)
        _duration(req.method, req.uri_template or "unmatched", resp.status_code).observe(
            time.monotonic() - req.context.started)
        logs.request_id.reset(req.context.log_token)
