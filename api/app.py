"""The Falcon WSGI application.

Served by gunicorn (``api/gunicorn_conf.py``): ``gunicorn -c api/gunicorn_conf.py
'api.app:create_app()'``. The API stores timers on the least-busy shard; it
never sends webhooks.
"""

import logging

import falcon

from api import dashboard, openapi, resources
from api.auth import BearerAuth
from api.middleware import RequestContext
from api.resources import Health, Metrics, Ready, Shards, TimerCollection, TimerItem, TimerRun
from api.validation import TimerIdConverter
from sharding import config
from sharding.balancer import LeastBusy, NoShardAvailable
from sharding.shard import NotReplicated
from sharding.topology import REDIS_ERRORS

log = logging.getLogger("api")


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


def _unexpected(req, resp, exc, params):
    # Logged as JSON (Falcon's default prints a plain traceback) and answered as JSON.
    log.exception("unhandled error", extra={"path": req.path, "method": req.method})
    raise falcon.HTTPInternalServerError(description="unexpected error; see the service's log") from None


def _redis_unavailable(req, resp, exc, params):
    log.warning("redis unavailable", extra={"error": str(exc), "path": req.path})
    raise falcon.HTTPServiceUnavailable(
        title="Timer store unavailable", description=f"Redis did not answer: {type(exc).__name__}",
        retry_after=1)


def _not_replicated(req, resp, exc, params):
    log.warning("create not replicated in time", extra={"error": str(exc), "timer_id": exc.timer_id})
    raise falcon.HTTPServiceUnavailable(
        title="Timer not yet replicated",
        description=f"{exc}: it is stored and may fire, but a failover now could lose it. Retry "
                    "with the same Idempotency-Key: you get this timer once its replicas hold it, "
                    "never a second one.",
        retry_after=1)


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
    middleware = [RequestContext()]
    if settings.api_tokens:
        middleware.append(BearerAuth(settings.api_tokens))
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    # Falcon's documented way to swap a media handler ("Replacing the Default Handlers").
    app.resp_options.media_handlers.update({falcon.MEDIA_JSON: resources.JSON_MEDIA})
    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, _unexpected)
    for error in (*REDIS_ERRORS, NoShardAvailable):
        app.add_error_handler(error, _redis_unavailable)
    app.add_error_handler(NotReplicated, _not_replicated)
    app.add_route("/timers", TimerCollection(store, balancer, settings))
    app.router_options.converters["timer_id"] = TimerIdConverter
    app.add_route("/timers/run", TimerRun(store, settings))
    item = TimerItem(store, settings)
    app.add_route("/timers/{timer_id:timer_id}", item)
    app.add_route("/timers/{timer_id:timer_id}/run", item, suffix="run")
    app.add_route("/shards", Shards(store, settings))
    app.add_route("/healthz", Health())
    app.add_route("/readyz", Ready(store.topology))
    app.add_route("/metrics", Metrics(store, settings))
    openapi.add_routes(app)
    dashboard.add_routes(app, store, settings)
    return app
