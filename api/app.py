"""The Falcon WSGI application: timers and shards over HTTP.

Served by gunicorn (``api/gunicorn_conf.py``): ``gunicorn -c api/gunicorn_conf.py
'api.app:create_app()'``. The API stores timers on the least-busy shard; it
never sends webhooks.
"""

import io
import logging
import math
import time

import falcon
import falcon.media
import redis

from api.validation import parse_create
from sharding import config, queues
from sharding.balancer import LeastBusy

log = logging.getLogger("api")

MAX_BODY_BYTES = 64 * 1024
_JSON = falcon.media.JSONHandler()


def rfc3339_ms(epoch_ms):
    """Epoch milliseconds → RFC 3339 UTC text with milliseconds, e.g. ``2026-11-29T17:30:00.250Z``."""
    secs, millis = divmod(int(epoch_ms), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{millis:03d}Z"


def time_left_s(record, now_ms):
    """Whole seconds until the fire time, rounded up; never negative; 0 once cancelled."""
    if record["status"] == "cancelled":
        return 0
    return max(0, math.ceil((record["fire_at"] - now_ms) / 1000))


def timer_view(timer_id, record, now_ms):
    """The JSON representation of a timer (``shared/CONTRACT.md`` section 3)."""
    return {
        "id": timer_id,
        "time_left": time_left_s(record, now_ms),
        "status": record["status"],
        "fire_at": rfc3339_ms(record["fire_at"]),
        "url": record["url"],
        "attempts": record["attempts"],
        "last_error": record["last_error"],
    }


def serialize_error(req, resp, exception):
    """Every error as JSON in Falcon's format, always with a ``description``."""
    body = exception.to_dict()
    body.setdefault("description", _default_description(req, exception))
    resp.content_type = falcon.MEDIA_JSON
    resp.media = body


def _default_description(req, exception):
    if exception.status_code == 404:
        return f"no resource at {req.path}"
    if exception.status_code == 405:
        return f"method {req.method} is not allowed on {req.path}"
    return exception.title


def _redis_unavailable(req, resp, exc, params):
    log.warning("redis unavailable", extra={"error": str(exc), "path": req.path})
    raise falcon.HTTPServiceUnavailable(
        title="Timer store unavailable", description=f"Redis did not answer: {type(exc).__name__}",
        retry_after=1)


def read_json_body(req):
    """Read and decode a JSON request body with Falcon's JSON handler.

    Returns:
        the decoded document.
    Raises:
        falcon.HTTPUnsupportedMediaType: Content-Type is not ``application/json``.
        falcon.HTTPContentTooLarge: more than 64 KiB.
        falcon.HTTPBadRequest: empty or malformed JSON.
    """
    mime = (req.content_type or "").split(";", 1)[0].strip().lower()
    if mime != falcon.MEDIA_JSON:
        raise falcon.HTTPUnsupportedMediaType(
            description=f"Content-Type must be application/json, not {req.content_type!r}")
    too_large = falcon.HTTPContentTooLarge(
        description=f"the body must be at most {MAX_BODY_BYTES} bytes")
    if (req.content_length or 0) > MAX_BODY_BYTES:
        raise too_large
    # Without Content-Length (chunked), Falcon's bounded_stream reads nothing;
    # gunicorn decodes the chunks on the raw stream, which ends at the body's end.
    stream = req.bounded_stream if req.content_length is not None else req.stream
    raw = stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise too_large
    return _JSON.deserialize(io.BytesIO(raw), req.content_type, len(raw))


class TimerCollection:
    """``POST /timers``: create a timer."""

    def __init__(self, store, balancer, settings):
        self.store = store
        self.balancer = balancer
        self.settings = settings
        self._registered = False

    def on_post(self, req, resp):
        """Create a timer; 201 with ``Location`` and the timer's representation."""
        delay_s, url = parse_create(read_json_body(req), self.settings.max_delay_seconds)
        if not self._registered:
            # Lets a coordinator find these shards even after TIMER_SHARDS shrinks.
            self.store.register_shards(self.settings.shards)
            self._registered = True
        shard = self.balancer.choose()
        timer_id, record, now_ms = self.store.create(url, delay_s * 1000, shard)
        log.info("timer created", extra={"timer_id": timer_id, "shard": shard, "delay_s": delay_s})
        resp.status = falcon.HTTP_201
        resp.location = f"/timers/{timer_id}"
        resp.media = timer_view(timer_id, record, now_ms)


class TimerItem:
    """``GET /timers/{id}``: read a timer."""

    def __init__(self, store):
        self.store = store

    def on_get(self, req, resp, timer_id):
        """200 with the timer, 404 when unknown."""
        record, now_ms = self.store.get(timer_id)
        if record is None:
            raise falcon.HTTPNotFound(title="Timer not found", description=f"no timer with id {timer_id}")
        resp.media = timer_view(timer_id, record, now_ms)


class Shards:
    """``GET /shards``: depth of every live shard."""

    def __init__(self, store, settings):
        self.store = store
        self.settings = settings

    def on_get(self, req, resp):
        """200 with ``{"shards": [{"index", "queue", "scheduled", "queued", "in_flight"}]}``."""
        indexes = list(range(self.settings.shards))
        resp.media = {"shards": [
            {"index": i, "queue": queues.queue_name(i), "scheduled": scheduled,
             "queued": queued, "in_flight": in_flight}
            for i, (scheduled, queued, in_flight) in zip(indexes, self.store.depths(indexes), strict=True)
        ]}


def create_app(settings=None, store=None):
    """Build the WSGI app.

    Args:
        settings: ``sharding.config.Settings`` (default: from the environment).
        store: ``sharding.store.TimerStore`` (default: on the configured Redis).
    Returns:
        ``falcon.App``.
    """
    settings = settings or config.load()
    store = store or settings.store()
    balancer = LeastBusy(store.loads, settings.shards)
    app = falcon.App()
    app.req_options.strip_url_path_trailing_slash = True
    app.set_error_serializer(serialize_error)
    app.add_error_handler(redis.exceptions.RedisError, _redis_unavailable)
    app.add_route("/timers", TimerCollection(store, balancer, settings))
    app.add_route("/timers/{timer_id:int(min=1)}", TimerItem(store))
    app.add_route("/shards", Shards(store, settings))
    return app
