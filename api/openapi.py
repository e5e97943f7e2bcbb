"""The OpenAPI 3.1 document of the whole contract, and the ``/docs`` page rendering it.

``/docs`` is Swagger UI 5 from the static files bundled in the
``drf-spectacular-sidecar`` package (located without importing it, so its
declared Django dependency is never loaded): no CDN, the page works offline.
"""

import importlib.util
import os

from sharding.config import SERVICE_NAME, VERSION
from sharding.records import STATUSES


def _error(description, example_title, example_description):
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"},
        "example": {"title": example_title, "description": example_description}}}}


_BAD_REQUEST = _error("Invalid input; the body names the field and the rule.", "Invalid field",
                      "'hours': must be an integer >= 0")
_UNAUTHORIZED = {**_error("Missing or invalid bearer token (only when TIMER_API_TOKENS is set).",
                          "Unauthorized", "a valid bearer token is required"),
                 "headers": {"WWW-Authenticate": {"schema": {"type": "string"},
                                                  "example": "Bearer"}}}
_NOT_FOUND = _error("No timer with this id (unknown or malformed).", "Timer not found",
                    "no timer with id 42")
_UNAVAILABLE = {**_error("Redis did not answer.", "Timer store unavailable",
                         "Redis did not answer: ConnectionError"),
                "headers": {"Retry-After": {"schema": {"type": "integer"}}}}
_CREATE_UNAVAILABLE = {
    **_error("Redis did not answer; or, with TIMER_REDIS_WAIT_REPLICAS, the replicas of the new "
             "timer's shard did not acknowledge it within 1 s (title \"Timer not yet replicated\"): "
             "it is stored and may fire, so retry with the same Idempotency-Key, which returns "
             "that timer once its replicas hold it and never creates a second one.",
             "Timer store unavailable", "Redis did not answer: ConnectionError"),
    "headers": _UNAVAILABLE["headers"]}
_REQUEST_ID = {"X-Request-ID": {"description": "The request id (the client's, or a new one).",
                                "schema": {"type": "string"}}}
_TIMER_ID = {"name": "id", "in": "path", "required": True,
             "schema": {"type": "integer", "minimum": 1}, "example": 287533320123002}
_AUTH = [{}, {"bearer": []}]

TIMER_EXAMPLE = {"id": 287533320123002, "time_left": 345, "status": "scheduled",
                 "fire_at": "2026-11-29T17:30:00.000Z", "url": "http://127.0.0.1:9000/hook",
                 "attempts": 0, "last_error": None, "next_attempt_at": None}
PAYLOAD_TIMER_EXAMPLE = {**TIMER_EXAMPLE, "fire_at": "2026-12-24T17:00:00.000Z",
                         "body": '{"order": 42}', "content_type": "application/json",
                         "headers": {"Authorization": "<redacted>"}}
# RFC 9110 section 5.6.2 token, in the ECMA-262 regex dialect of JSON Schema.
_TOKEN = "[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_DURATION = {"hours": {"type": "integer", "minimum": 0, "default": 0},
             "minutes": {"type": "integer", "minimum": 0, "default": 0},
             "seconds": {"type": "integer", "minimum": 0, "default": 0}}
_FIRE_AT = {"type": "string", "format": "date-time", "example": "2026-12-24T18:00:00+01:00",
            "description": "RFC 3339 date-time with an offset (`Z` or `+01:00`), instead of "
                           "hours/minutes/seconds (giving both is a 400). A past time fires at once; more "
                           "than TIMER_MAX_DELAY_SECONDS from now is a 400."}
# fire_at excludes the duration fields (a 400 when both are given).
_FIRE_AT_ALONE = {"dependentSchemas": {"fire_at": {"not": {"anyOf": [
    {"required": ["hours"]}, {"required": ["minutes"]}, {"required": ["seconds"]}]}}}}
REDRIVEN_EXAMPLE = {**TIMER_EXAMPLE, "time_left": 0, "status": "retrying", "attempts": 10,
                    "last_error": "HTTP 503", "next_attempt_at": "2026-11-29T17:30:00.000Z"}


def _json(schema, example=None):
    content = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"application/json": content}


def document():
    """The OpenAPI 3.1 document (a dict)."""
    timer_ref = {"$ref": "#/components/schemas/Timer"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": SERVICE_NAME, "version": VERSION,
            "description": (
                "Webhook timers: store a timer, read how many seconds are left, and at the fire "
                "time the service sends `POST <url>/<id>` with an empty body (or the timer's `body`, "
                "`content_type` and `headers`) and the headers "
                "`webhook-id`, `webhook-timestamp`, `User-Agent` (and `webhook-signature` per "
                "Standard Webhooks when `TIMER_WEBHOOK_SECRET` is set). Any 2xx is success; "
                "connection errors, timeouts, 408, 429 and 5xx are retried with exponential "
                "backoff and equal jitter (waits of 1-2 s doubling up to 30-60 min, never "
                "below 1 s unless Retry-After asks for less, Retry-After capped at 1 h) until "
                "`TIMER_WEBHOOK_MAX_ATTEMPTS` (60) attempts or `TIMER_WEBHOOK_MAX_RETRY_SECONDS` "
                "(24 h) after the first attempt, whichever ends first, or the timer's own "
                "`retry` limits; other 4xx and every 3xx fail at once. Failed timers can be "
                "re-driven, one or in bulk."),
        },
        "paths": {
            "/timers": {
                "post": {
                    "summary": "Create a timer (also at POST /timers/)", "operationId": "createTimer",
                    "security": _AUTH,
                    "parameters": [{
                        "name": "Idempotency-Key", "in": "header", "required": False,
                        "description": "Same key and body within 24 h: the original response. "
                                       "Another body: 422. First request still running: 409.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                                   "pattern": "^[!-~]+$"}}],
                    "requestBody": {"required": True, "content": _json(
                        {"$ref": "#/components/schemas/TimerCreate"},
                        {"hours": 4, "minutes": 0, "seconds": 1, "url": "http://127.0.0.1:9000/hook"})},
                    "responses": {
                        "201": {"description": "Created (or replayed under an Idempotency-Key).",
                                "headers": {"Location": {"schema": {"type": "string"},
                                                         "example": "/timers/287533320123002"},
                                            **_REQUEST_ID},
                                "content": _json(timer_ref, TIMER_EXAMPLE)},
                        "400": _BAD_REQUEST, "401": _UNAUTHORIZED,
                        "409": _error("A request with this Idempotency-Key is in flight.",
                                      "Request in progress", "a request with this Idempotency-Key "
                                      "is still being processed"),
                        "413": _error("Body over 64 KiB.", "Content Too Large",
                                      "the body must be at most 65536 bytes"),
                        "415": _error("Content-Type is not application/json, or names a charset "
                                      "other than UTF-8.", "Unsupported Media Type",
                                      "Content-Type must be application/json"),
                        "422": _error("Idempotency-Key reused with another body.",
                                      "Idempotency-Key reused",
                                      "this Idempotency-Key was used with a different request body"),
                        "503": _CREATE_UNAVAILABLE,
                    },
                },
                "get": {
                    "summary": "List timers by status", "operationId": "listTimers", "security": _AUTH,
                    "parameters": [
                        {"name": "status", "in": "query", "required": True,
                         "schema": {"type": "string", "enum": list(STATUSES)}},
                        {"name": "limit", "in": "query", "required": False,
                         "description": "Page size; values above 1000 are capped at 1000.",
                         "schema": {"type": "integer", "minimum": 1, "default": 100}},
                        {"name": "cursor", "in": "query", "required": False,
                         "description": "`next_cursor` of the previous page.",
                         "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "A page of timers.", "headers": _REQUEST_ID,
                                "content": _json({"$ref": "#/components/schemas/TimerPage"},
                                                 {"timers": [TIMER_EXAMPLE], "next_cursor": None})},
                        "400": _BAD_REQUEST, "401": _UNAUTHORIZED, "503": _UNAVAILABLE,
                    },
                },
            },
            "/timers/{id}": {
                "get": {
                    "summary": "Read a timer", "operationId": "getTimer", "security": _AUTH,
                    "parameters": [_TIMER_ID],
                    "responses": {"200": {"description": "The timer (here one created with a payload).",
                                          "headers": _REQUEST_ID,
                                          "content": _json(timer_ref, PAYLOAD_TIMER_EXAMPLE)},
                                  "401": _UNAUTHORIZED, "404": _NOT_FOUND, "503": _UNAVAILABLE},
                },
                "patch": {
                    "summary": "Reschedule a scheduled or retrying timer", "operationId": "rescheduleTimer",
                    "security": _AUTH, "parameters": [_TIMER_ID],
                    "description": "A new `fire_at`, or `hours`/`minutes`/`seconds` from now. Atomic with "
                                   "claims: of a reschedule and the timer firing, exactly one wins (200 "
                                   "with the new time, or 409).",
                    "requestBody": {"required": True, "content": _json(
                        {"$ref": "#/components/schemas/TimerReschedule"},
                        {"fire_at": "2026-12-24T18:00:00+01:00"})},
                    "responses": {
                        "200": {"description": "The rescheduled timer.", "headers": _REQUEST_ID,
                                "content": _json(timer_ref, TIMER_EXAMPLE)},
                        "400": _BAD_REQUEST, "401": _UNAUTHORIZED, "404": _NOT_FOUND,
                        "409": _error("Not scheduled or retrying (firing, fired, failed or cancelled).",
                                      "Timer cannot be rescheduled",
                                      "timer 287533320123002 is already fired"),
                        "413": _error("Body over 64 KiB.", "Content Too Large",
                                      "the body must be at most 65536 bytes"),
                        "415": _error("Content-Type is not application/json.", "Unsupported Media Type",
                                      "Content-Type must be application/json"),
                        "503": _UNAVAILABLE},
                },
                "delete": {
                    "summary": "Cancel a timer", "operationId": "cancelTimer", "security": _AUTH,
                    "parameters": [_TIMER_ID],
                    "responses": {
                        "204": {"description": "Cancelled (or already cancelled); it never fires."},
                        "401": _UNAUTHORIZED, "404": _NOT_FOUND,
                        "409": _error("Already firing, fired or failed.", "Timer cannot be cancelled",
                                      "timer 287533320123002 is already fired"),
                        "503": _UNAVAILABLE},
                },
            },
            "/timers/{id}/run": {"post": {
                "summary": "Run a timer now, or re-drive a failed one", "operationId": "runTimer",
                "security": _AUTH, "parameters": [_TIMER_ID],
                "description": "A `scheduled` timer's fire time becomes now; a `retrying` one's next "
                               "attempt is now (both keep their attempts). A `failed` one is re-driven: "
                               "`retrying`, due now, with a fresh attempt budget and retry window; "
                               "`attempts` keeps counting and `last_error` is kept until the next attempt.",
                "responses": {
                    "202": {"description": "The timer, now due.", "headers": _REQUEST_ID,
                            "content": _json(timer_ref, REDRIVEN_EXAMPLE)},
                    "401": _UNAUTHORIZED, "404": _NOT_FOUND,
                    "409": _error("Already firing, fired or cancelled.", "Timer cannot be run",
                                  "timer 287533320123002 is already fired"),
                    "503": _UNAVAILABLE}}},
            "/timers/run": {"post": {
                "summary": "Re-drive failed timers in bulk", "operationId": "runTimers", "security": _AUTH,
                "description": "Re-drives (or, with `dry_run`, only counts) the failed timers that match, "
                               "as `POST /timers/{id}/run` does, looking at most 5000 failed timers per "
                               "request in the failed-timer index (by finish time, never a scan); "
                               "`next_cursor` continues where it stopped. Only timers still failed are "
                               "re-driven, so repeating the request, or sending it to two API hosts at "
                               "once, re-drives each timer once.",
                "requestBody": {"required": True, "content": _json(
                    {"$ref": "#/components/schemas/TimerRun"},
                    {"status": "failed", "host": "127.0.0.1", "since": "2026-11-29T00:00:00Z",
                     "dry_run": True})},
                "responses": {
                    "200": {"description": "How many matched and how many this request re-drove.",
                            "headers": _REQUEST_ID,
                            "content": _json({"$ref": "#/components/schemas/TimerRunResult"},
                                             {"matched": 12, "run": 12, "next_cursor": None})},
                    "400": _BAD_REQUEST, "401": _UNAUTHORIZED,
                    "413": _error("Body over 64 KiB.", "Content Too Large",
                                  "the body must be at most 65536 bytes"),
                    "415": _error("Content-Type is not application/json.", "Unsupported Media Type",
                                  "Content-Type must be application/json"),
                    "503": _UNAVAILABLE}}},
            "/shards": {"get": {
                "summary": "Shard depths", "operationId": "getShards", "security": _AUTH,
                "responses": {"200": {"description": "One entry per shard.", "content": _json(
                    {"$ref": "#/components/schemas/Shards"},
                    {"shards": [{"index": 0, "queue": "timers-0", "scheduled": 12, "queued": 0,
                                 "in_flight": 0}]})},
                              "401": _UNAUTHORIZED, "503": _UNAVAILABLE}}},
            "/healthz": {"get": {
                "summary": "Liveness", "operationId": "health",
                "responses": {"200": {"description": "The process serves requests.",
                                      "content": _json(_status_schema(), {"status": "ok"})}}},
                         "head": {
                "summary": "Liveness, without a body (for load balancers)", "operationId": "healthHead",
                "responses": {"200": {"description": "The process serves requests."}}}},
            "/readyz": {"get": {
                "summary": "Readiness", "operationId": "ready",
                "responses": {"200": {"description": "Redis answers.",
                                      "content": _json(_status_schema(), {"status": "ready"})},
                              "503": _error("Redis does not answer.", "Not ready",
                                            "Redis did not answer PING: ConnectionError")}}},
            "/openapi.json": {"get": {
                "summary": "This document", "operationId": "openapi",
                "responses": {"200": {"description": "The OpenAPI 3.1 document.",
                                      "content": _json({"type": "object"})}}}},
            "/docs": {"get": {
                "summary": "Swagger UI for this document (no CDN)", "operationId": "docs",
                "responses": {"200": {"description": "An HTML page.",
                                      "content": {"text/html": {"schema": {"type": "string"}}}}}}},
            "/dashboard": {"get": {
                "summary": "The operator's dashboard, an HTML page (not with TIMER_DASHBOARD=off)",
                "description": "Shard depths, rates and lateness; timers by status at /dashboard/timers; "
                               "sign-in at /dashboard/signin when TIMER_API_TOKENS is set.",
                "operationId": "dashboard",
                "responses": {
                    "200": {"description": "An HTML page.",
                            "content": {"text/html": {"schema": {"type": "string"}}}},
                    "303": {"description": "TIMER_API_TOKENS is set and there is no session: "
                                           "to the sign-in page.",
                            "headers": {"Location": {"schema": {"type": "string"},
                                                     "example": "/dashboard/signin"}}}}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics", "operationId": "metrics",
                "responses": {"200": {"description": "Prometheus text exposition format.",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "Required when TIMER_API_TOKENS is set."}},
            "schemas": {
                "TimerCreate": {
                    "type": "object", "additionalProperties": False, "required": ["url"],
                    "properties": {
                        # JSON Schema counts 1.0 as an integer; the API refuses it (400).
                        **_DURATION,
                        "fire_at": _FIRE_AT,
                        "url": {"type": "string", "format": "uri", "maxLength": 2048,
                                "pattern": "^[hH][tT][tT][pP][sS]?://[^\\s/?#]+[^\\s]*$",
                                "description": "Absolute http or https URL with a host."},
                        "body": {"type": "string", "maxLength": 16384,
                                 "description": "Sent as the webhook's body, UTF-8, at most 16 KiB (16384 "
                                                "bytes) in UTF-8; signed with it. Shown back as given."},
                        "content_type": {"type": "string", "maxLength": 255, "example": "application/json",
                                         "pattern": f"^{_TOKEN}/{_TOKEN}",
                                         "description": "Media type of the body (default with a body: "
                                                        "text/plain; charset=utf-8)."},
                        "headers": {"$ref": "#/components/schemas/WebhookHeaders"},
                        "retry": {"$ref": "#/components/schemas/RetryLimits"}},
                    **_FIRE_AT_ALONE,
                    "description": "When: `fire_at`, or the total delay hours*3600 + minutes*60 + seconds "
                                   "(default 0), at most TIMER_MAX_DELAY_SECONDS (default 365 days) from "
                                   "now. What: an optional payload (body, content_type, headers) sent with "
                                   "every attempt."},
                "TimerReschedule": {
                    "type": "object", "additionalProperties": False, "minProperties": 1,
                    "properties": {**_DURATION, "fire_at": _FIRE_AT},
                    **_FIRE_AT_ALONE,
                    "description": "`fire_at`, or a delay hours*3600 + minutes*60 + seconds from now."},
                "WebhookHeaders": {
                    "type": "object", "maxProperties": 20,
                    "propertyNames": {"pattern": f"^{_TOKEN}$"},
                    "additionalProperties": {"type": "string", "maxLength": 1024,
                                             "pattern": "^([!-~]([ !-~]*[!-~])?)?$"},
                    "example": {"Authorization": "Bearer abc123"},
                    "description": "Sent with the webhook: at most 20, RFC 9110 token names, values of "
                                   "visible ASCII (inner spaces allowed), at most 1 KiB. Refused (400 naming "
                                   "it): Host, Content-Length, Transfer-Encoding, Connection and the other "
                                   "hop-by-hop fields, Content-Type (use content_type) and webhook-*. Values "
                                   "are write-only: every view shows \"<redacted>\"."},
                "RetryLimits": {
                    "type": "object", "additionalProperties": False,
                    "description": "This timer's own limits, overriding TIMER_WEBHOOK_MAX_ATTEMPTS and "
                                   "TIMER_WEBHOOK_MAX_RETRY_SECONDS; whichever ends first ends the retries.",
                    "properties": {
                        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100,
                                         "description": "Attempts before the timer is failed."},
                        "max_seconds": {"type": "integer", "minimum": 0,
                                        "description": "No attempt starts later than this many seconds "
                                                       "after the first attempt."}}},
                "TimerRun": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "status": {"type": "string", "enum": ["failed"], "default": "failed"},
                        "host": {"type": "string", "minLength": 1,
                                 "description": "Only timers whose webhook URL has this host "
                                                "(case-insensitive, port ignored)."},
                        "since": {"type": "string", "format": "date-time",
                                  "description": "Only timers that failed at or after this RFC 3339 time."},
                        "dry_run": {"type": "boolean", "default": False,
                                    "description": "Only count: `run` is 0 and nothing changes."},
                        "cursor": {"type": "string",
                                   "description": "`next_cursor` of the previous answer."}}},
                "TimerRunResult": {
                    "type": "object", "required": ["matched", "run"],
                    "properties": {"matched": {"type": "integer", "minimum": 0},
                                   "run": {"type": "integer", "minimum": 0},
                                   "next_cursor": {"type": ["string", "null"],
                                                   "description": "Set when the request stopped at its "
                                                                  "bound: send it back as `cursor`."}}},
                "Timer": {
                    "type": "object",
                    "required": ["id", "time_left", "status", "fire_at", "url", "attempts", "last_error",
                                 "next_attempt_at"],
                    "properties": {
                        "id": {"type": "integer", "minimum": 1},
                        "time_left": {"type": "integer", "minimum": 0,
                                      "description": "Whole seconds to the fire time, rounded up."},
                        "status": {"type": "string", "enum": list(STATUSES)},
                        "fire_at": {"type": "string", "format": "date-time"},
                        "url": {"type": "string"},
                        "attempts": {"type": "integer", "minimum": 0},
                        "last_error": {"type": ["string", "null"]},
                        "body": {"type": "string", "description": "Only when created with a body."},
                        "content_type": {"type": "string",
                                         "description": "The webhook's Content-Type, when it has one."},
                        "headers": {"type": "object", "additionalProperties": {"const": "<redacted>"},
                                    "description": "Only when created with headers: the names, each "
                                                   "value redacted."},
                        "next_attempt_at": {"type": ["string", "null"], "format": "date-time",
                                            "description": "When the next attempt is due while "
                                                           "`retrying`, else null."},
                        "retry": {"$ref": "#/components/schemas/RetryLimits"}}},
                "TimerPage": {
                    "type": "object", "required": ["timers", "next_cursor"],
                    "properties": {"timers": {"type": "array", "items": timer_ref},
                                   "next_cursor": {"type": ["string", "null"]}}},
                "Shards": {
                    "type": "object", "required": ["shards"],
                    "properties": {"shards": {"type": "array", "items": {
                        "type": "object", "required": ["index", "scheduled", "queued"],
                        "properties": {"index": {"type": "integer", "minimum": 0},
                                       "queue": {"type": "string"},
                                       "scheduled": {"type": "integer", "minimum": 0},
                                       "queued": {"type": "integer", "minimum": 0},
                                       "in_flight": {"type": "integer", "minimum": 0}}}}}},
                "Error": {
                    "type": "object", "required": ["title", "description"],
                    "properties": {"title": {"type": "string"}, "description": {"type": "string"},
                                   "field": {"type": "string"}, "rule": {"type": "string"}}},
            },
        },
    }


def _status_schema():
    return {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}


_DOCS_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title} API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>
"""

# A separate script, not inline, so a strict Content-Security-Policy can allow 'self' only.
_DOCS_INIT = "window.ui = SwaggerUIBundle({url: '/openapi.json', dom_id: '#swagger-ui'});\n"


def swagger_ui_dir():
    """Directory of Swagger UI's static files inside ``drf-spectacular-sidecar``."""
    spec = importlib.util.find_spec("drf_spectacular_sidecar")
    base = list(spec.submodule_search_locations)[0]
    return os.path.join(base, "static", "drf_spectacular_sidecar", "swagger-ui-dist")


class OpenAPIDocument:
    """``GET /openapi.json``."""

    def __init__(self):
        self.document = document()

    def on_get(self, req, resp):
        """200 with the OpenAPI 3.1 document."""
        resp.media = self.document


class DocsPage:
    """``GET /docs`` (the page) and ``GET /docs/init.js`` (its start-up script)."""

    def on_get(self, req, resp):
        """The Swagger UI page."""
        resp.content_type = "text/html; charset=utf-8"
        resp.text = _DOCS_PAGE.format(title=SERVICE_NAME)

    def on_get_init(self, req, resp):
        """The script that points Swagger UI at ``/openapi.json``."""
        resp.content_type = "text/javascript; charset=utf-8"
        resp.text = _DOCS_INIT


def add_routes(app):
    """Mount ``/openapi.json``, ``/docs``, ``/docs/init.js`` and ``/docs/assets/*`` on ``app``."""
    app.add_route("/openapi.json", OpenAPIDocument())
    docs = DocsPage()
    app.add_route("/docs", docs)
    app.add_route("/docs/init.js", docs, suffix="init")
    app.add_static_route("/docs/assets", swagger_ui_dir())
