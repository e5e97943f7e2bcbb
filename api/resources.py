"""HTTP resources: timers, shards, health, readiness and metrics."""

import base64
import binascii
import functools
import io
import json
import logging
import math
import time

import falcon
import falcon.media
from gunicorn.http.errors import NoMoreData, ParseException

from api.idempotency import IdempotencyKeys, check_key, fingerprint
from api.validation import FieldError, parse_create, parse_reschedule, parse_run, printable, url_host
from sharding import metrics, queues
from sharding.ids import home_shard
from sharding.records import STATUSES
from sharding.store import BeyondMaxDelay, NotReplicated, now_ms
from sharding.topology import REDIS_ERRORS

log = logging.getLogger("api")

MAX_BODY_BYTES = 64 * 1024
DEFAULT_PAGE = 100
MAX_PAGE = 1000
# Header values may carry the receiver's credentials: write-only (shared/CONTRACT.md section 3).
REDACTED = "<redacted>"
# POST /timers/run: failed timers looked at per request (in pages), so one request's work is bounded.
RUN_PAGE = 500
RUN_MAX_EXAMINED = 5000
# The statuses in which a timer refuses an action (409), as the API answers them.
CANCEL_REFUSED = ("firing", "fired", "failed")
RUN_REFUSED = ("firing", "fired", "cancelled")


def _no_duplicate_keys(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        keys = [key for key, _ in pairs]
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise FieldError(duplicate, "appears more than once in the object")
    return obj


# A repeated key is ambiguous input: refused rather than silently taking the last value.
# One decoder for every request (json.loads with a hook builds a new one per call), and one
# encoder for every response: Falcon's default, json.dumps(ensure_ascii=False), builds a
# JSONEncoder per call, a quarter of the instructions of encoding a 201's body.
JSON_MEDIA = falcon.media.JSONHandler(loads=json.JSONDecoder(object_pairs_hook=_no_duplicate_keys).decode,
                                      dumps=json.JSONEncoder(ensure_ascii=False).encode)


def rfc3339_ms(epoch_ms):
    """Epoch milliseconds → RFC 3339 UTC text with milliseconds, e.g. ``2026-11-29T17:30:00.250Z``."""
    secs, millis = divmod(int(epoch_ms), 1000)
    return f"{_utc_seconds(secs)}.{millis:03d}Z"


# Timers created within one second share their fire time's second: it is formatted once.
@functools.lru_cache(maxsize=1024)
def _utc_seconds(secs):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))


def time_left_s(record, now):
    """Whole seconds until the fire time, rounded up; never negative; 0 once cancelled.

    Args:
        record: a timer record (``fire_at`` in epoch ms, ``status``).
        now: the Redis clock in epoch ms.
    """
    if record["status"] == "cancelled":
        return 0
    return max(0, math.ceil((record["fire_at"] - now) / 1000))


def timer_view(timer_id, record, now):
    """The JSON representation of a timer (``shared/CONTRACT.md`` section 3).

    A timer with a payload adds ``body`` (as given), ``content_type`` (the one
    the webhook is sent with) and ``headers`` (each value :data:`REDACTED`),
    each only when it has one. ``next_attempt_at`` is RFC 3339 UTC while
    ``retrying``, else None; ``retry`` appears only for a timer created with
    its own limits.
    """
    view = {
        "id": timer_id,
        "time_left": time_left_s(record, now),
        "status": record["status"],
        "fire_at": rfc3339_ms(record["fire_at"]),
        "url": record["url"],
        "attempts": record["attempts"],
        "last_error": record["last_error"],
        "next_attempt_at": (rfc3339_ms(record["next_attempt_at"])
                            if record["next_attempt_at"] is not None else None),
    }
    payload = record.get("payload")
    if payload is not None:
        if payload.body is not None:
            view["body"] = payload.body
        if payload.media_type is not None:
            view["content_type"] = payload.media_type
        if payload.headers:
            view["headers"] = dict.fromkeys(payload.headers, REDACTED)
    if record["retry"]:
        view["retry"] = record["retry"]
    return view


def _beyond_max_delay(max_delay_seconds):
    return FieldError("fire_at", f"must be at most {max_delay_seconds} seconds from now "
                                 "(TIMER_MAX_DELAY_SECONDS)")


def _too_large():
    return falcon.HTTPContentTooLarge(description=f"the body must be at most {MAX_BODY_BYTES} bytes")


def read_json_body(req):
    """Read and decode a JSON request body with Falcon's JSON handler.

    Returns:
        the decoded document.
    Raises:
        falcon.HTTPUnsupportedMediaType: Content-Type is not ``application/json``,
            or names a charset other than UTF-8.
        falcon.HTTPContentTooLarge: more than 64 KiB.
        falcon.HTTPBadRequest: empty or malformed JSON, a malformed chunked body, or a body
            shorter than its Content-Length (the client closed its side early).
    """
    mime, params = falcon.parse_header(req.content_type or "")
    if mime.lower() != falcon.MEDIA_JSON:
        raise falcon.HTTPUnsupportedMediaType(
            description=f"Content-Type must be application/json, not {req.content_type!r}")
    charset = params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        # RFC 8259 section 8.1: JSON between systems is UTF-8; other charsets are refused, not guessed.
        raise falcon.HTTPUnsupportedMediaType(
            description=f"the body must be UTF-8 JSON, not charset={printable(charset)!r}")
    if (req.content_length or 0) > MAX_BODY_BYTES:
        raise _too_large()
    # Without Content-Length (chunked), Falcon's bounded_stream reads nothing;
    # gunicorn decodes the chunks on the raw stream, which ends at the body's end.
    stream = req.bounded_stream if req.content_length is not None else req.stream
    try:
        raw = stream.read(MAX_BODY_BYTES + 1)
    except (ParseException, NoMoreData) as exc:
        # gunicorn's chunked decoding: a bad or missing chunk size, terminator,
        # last chunk or trailer. The connection cannot carry another request.
        reason = printable(str(exc)) or type(exc).__name__
        raise falcon.HTTPBadRequest(title="Invalid body", description=f"malformed chunked body: {reason}",
                                    headers={"Connection": "close"}) from None
    if len(raw) > MAX_BODY_BYTES:
        raise _too_large()
    if req.content_length is not None and len(raw) < req.content_length:
        # The client closed its side early: a cut-off body is never taken for a whole one.
        raise falcon.HTTPBadRequest(
            title="Invalid body", headers={"Connection": "close"},
            description=f"the body ended after {len(raw)} of its Content-Length {req.content_length} bytes")
    try:
        return JSON_MEDIA.deserialize(io.BytesIO(raw), req.content_type, len(raw))
    except RecursionError:
        raise falcon.HTTPBadRequest(title="Invalid JSON",
                                    description="the body is nested too deeply") from None


def encode_cursor(status, position):
    """Opaque page cursor for ``status`` after ``position`` = (score, id text)."""
    raw = json.dumps([status, position[0], position[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor, status):
    """The (score, id text) in a cursor made by :func:`encode_cursor` for ``status``.

    Raises:
        FieldError: on ``cursor`` when it is malformed or made for another status.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_status, score, member = json.loads(raw)
        valid = (isinstance(score, (int, float)) and math.isfinite(score) and isinstance(member, str)
                 and member.isascii() and member.isdigit())
    except (binascii.Error, ValueError, TypeError):
        valid = False
    if not valid:
        raise FieldError("cursor", "is not a cursor this API returned")
    if cursor_status != status:
        raise FieldError("cursor", f"was made for status {cursor_status!r}, not {status!r}")
    return float(score), member


def parse_list_query(req):
    """``status``, ``limit`` and ``cursor`` of ``GET /timers``.

    Returns:
        (status, limit capped at 1000, position or None).
    Raises:
        FieldError: a missing or unknown status, a limit that is not an
            integer >= 1 (ASCII digits), a bad cursor, or any of them given twice.
    """
    status = _single_param(req, "status")
    if status not in STATUSES:
        raise FieldError("status", "is required, one of: " + ", ".join(STATUSES))
    raw_limit = _single_param(req, "limit")
    limit = DEFAULT_PAGE
    if raw_limit is not None:
        # ASCII only: str.isdigit also takes digits such as "²" that int() refuses.
        if not (raw_limit.isascii() and raw_limit.isdigit()) or int(raw_limit) < 1:
            raise FieldError("limit", "must be an integer >= 1")
        limit = min(int(raw_limit), MAX_PAGE)
    cursor = _single_param(req, "cursor")
    return status, limit, decode_cursor(cursor, status) if cursor else None


def _single_param(req, name):
    """The query parameter ``name`` (str or None); FieldError when it is repeated."""
    value = req.params.get(name)
    if isinstance(value, list):
        raise FieldError(name, "must be given once")
    return value


def _created_response(timer_id, record, now):
    """The stored form of a create's 201 response (also kept under an Idempotency-Key)."""
    return {"status": 201, "location": f"/timers/{timer_id}", "body": timer_view(timer_id, record, now)}


class TimerCollection:
    """``POST /timers`` creates a timer; ``GET /timers`` lists timers by status."""

    def __init__(self, store, balancer, settings):
        self.store = store
        self.balancer = balancer
        self.settings = settings
        self._idempotency = None
        self._registered = False

    @property
    def idempotency(self):
        """The ``IdempotencyKeys`` on the store's control client, made at the first keyed
        request (a cluster may not answer yet when the app is built)."""
        if self._idempotency is None:
            self._idempotency = IdempotencyKeys(self.store.control)
        return self._idempotency

    def on_post(self, req, resp):
        """Create a timer: 201 with ``Location`` and the timer; replays under ``Idempotency-Key``."""
        body = read_json_body(req)
        timer = parse_create(body, self.settings.max_delay_seconds)
        key = req.get_header("Idempotency-Key")
        if key is None:
            response = self._create(req, timer)
        else:
            scope, digest = req.context.get("client", ""), fingerprint(body)
            stored = self.idempotency.begin(scope, check_key(key), digest)
            if stored is not None and not stored.get("unconfirmed"):
                resp.set_header("Idempotent-Replayed", "true")
                response = stored
            else:
                response = self._create_once(req, scope, key, digest, stored, timer)
                if stored is not None and response["location"] == stored["location"]:
                    resp.set_header("Idempotent-Replayed", "true")
        resp.status = falcon.code_to_http_status(response["status"])
        resp.location = response["location"]
        resp.media = response["body"]

    def _create_once(self, req, scope, key, digest, stored, timer):
        """Create under an idempotency key, or confirm the timer a first try left unconfirmed.

        ``stored`` is None for a first request, or the response of a create
        whose replicas did not acknowledge it in time (``unconfirmed``): if
        the replicas hold that timer now, its response is replayed; if a
        failover lost it (it was never acknowledged), a new timer is created;
        else 503 again. Either way the key never yields a second timer
        while the first exists.
        """
        try:
            if stored is None:
                response = self._create(req, timer)
            else:
                response = self._confirm(req, stored, timer)
        except NotReplicated as exc:
            self.idempotency.complete(scope, key, {**exc.response, "unconfirmed": True})
            raise
        except Exception:
            if stored is None:
                self.idempotency.abandon(scope, key, digest)
            raise
        self.idempotency.complete(scope, key, response)
        return response

    def _confirm(self, req, stored, timer):
        timer_id = int(stored["location"].rsplit("/", 1)[1])
        held = self.store.confirm(timer_id)
        if held is None:
            return self._create(req, timer)
        if not held:
            exc = NotReplicated(timer_id, 0, self.settings.wait_replicas)
            exc.response = stored
            raise exc
        return {k: v for k, v in stored.items() if k != "unconfirmed"}

    def _create(self, req, timer):
        """Store ``timer`` (``api.validation.TimerRequest``); the response to send and to replay."""
        if not self._registered:
            # Lets a coordinator find these shards even after TIMER_SHARDS shrinks.
            self.store.register_shards(self.settings.shards)
            self._registered = True
        shard = self.balancer.choose()
        max_delay = self.settings.max_delay_seconds
        try:
            timer_id, record, created = self.store.create(
                timer.url, timer.delay_s * 1000, shard, req.context.request_id, at_ms=timer.fire_at_ms,
                max_delay_ms=max_delay * 1000, payload=timer.payload, retry=timer.retry)
        except BeyondMaxDelay:
            raise _beyond_max_delay(max_delay) from None
        except REDIS_ERRORS as exc:
            # Its server failed (a master down, being failed over) or did not
            # replicate in time: the next creates go to the other shards for a moment.
            self.balancer.failed(shard)
            if isinstance(exc, NotReplicated):
                # Stored on the master, not (yet) on its replicas: 503, and with an
                # Idempotency-Key the response is kept for the retry to confirm.
                exc.response = _created_response(*exc.created)
            raise
        metrics.TIMER_CREATED.inc()
        # DEBUG: a JSON line per create costs a third of the request's CPU (docs/BENCHMARKS.md).
        log.debug("timer created", extra={"timer_id": timer_id, "shard": shard, "delay_s": timer.delay_s})
        return _created_response(timer_id, record, created)

    def on_get(self, req, resp):
        """One page of timers with the given status, and the cursor of the next page."""
        status, limit, after = parse_list_query(req)
        indexes = self.store.known_shards(self.settings.shards)
        items, position = self.store.list(status, indexes, limit, after)
        now = now_ms(self.store.control)
        resp.media = {
            "timers": [timer_view(timer_id, record, now) for timer_id, record in items],
            "next_cursor": encode_cursor(status, position) if position else None,
        }


class TimerItem:
    """``GET /timers/{id}`` reads a timer; ``PATCH`` reschedules it; ``DELETE`` cancels it;
    ``POST /timers/{id}/run`` runs it now."""

    def __init__(self, store, settings):
        self.store = store
        self.settings = settings

    @staticmethod
    def _not_found(timer_id):
        return falcon.HTTPNotFound(title="Timer not found", description=f"no timer with id {timer_id}")

    def on_get(self, req, resp, timer_id):
        """200 with the timer, 404 when unknown."""
        record, now = self.store.get(timer_id)
        if record is None:
            raise self._not_found(timer_id)
        resp.media = timer_view(timer_id, record, now)

    def on_patch(self, req, resp, timer_id):
        """200 with the rescheduled timer; 409 unless scheduled or retrying; 404 when unknown.

        Body ``{"fire_at": ...}`` or ``{"hours", "minutes", "seconds"}`` from now
        (``shared/CONTRACT.md`` section 4), validated as on create.
        """
        max_delay = self.settings.max_delay_seconds
        delay_s, fire_at_ms = parse_reschedule(read_json_body(req), max_delay)
        try:
            status, record, now = self.store.reschedule(timer_id, delay_s * 1000, fire_at_ms,
                                                        max_delay * 1000)
        except BeyondMaxDelay:
            raise _beyond_max_delay(max_delay) from None
        if record is None:
            # Not rescheduled: unknown (404), or no longer scheduled or retrying (409).
            self._refuse(timer_id, status, (status,), "Timer cannot be rescheduled")
        log.info("timer rescheduled", extra={"timer_id": timer_id, "fire_at": record["fire_at"]})
        resp.media = timer_view(timer_id, record, now)
    def _refuse(self, timer_id, status, too_late, title):
        """404 when ``status`` is ``missing``; 409 titled ``title`` when it is in ``too_late``."""
        if status == "missing":
            raise self._not_found(timer_id)
        if status in too_late:
            raise falcon.HTTPConflict(title=title, description=f"timer {timer_id} is already {status}")

    def on_delete(self, req, resp, timer_id):
        """204 when cancelled (or already), 409 once firing, fired or failed, 404 when unknown."""
        status = self.store.cancel(timer_id)
        self._refuse(timer_id, status, CANCEL_REFUSED, "Timer cannot be cancelled")
        log.info("timer cancelled", extra={"timer_id": timer_id, "was": status})
        resp.status = falcon.HTTP_204

    def on_post_run(self, req, resp, timer_id):
        """202 with the timer, now due (a failed one re-driven); 409 once firing, fired or
        cancelled; 404 when unknown (``shared/CONTRACT.md`` section 4)."""
        status, record, now = self.store.run_now(timer_id)
        self._refuse(timer_id, status, RUN_REFUSED, "Timer cannot be run")
        log.info("timer run now", extra={"timer_id": timer_id, "was": status})
        resp.status = falcon.HTTP_202
        resp.media = timer_view(timer_id, record, now)


def redrive_failed(store, indexes, host=None, since=None, dry_run=False, position=None):
    """Re-drive (or only count) failed timers, with bounded work: ``POST /timers/run``'s loop.

    Pages through the shards' failed-timer indexes (by finish time) as
    ``GET /timers?status=failed`` does, never a scan, :data:`RUN_PAGE` at a
    time, and stops once :data:`RUN_MAX_EXAMINED` timers were looked at.
    Each re-drive is one ``TimerStore.run(ids, failed_only=True)`` script per
    shard and page, which re-drives only timers still failed, so repeating
    a call, or two API hosts calling at once, re-drives each timer once.

    Args:
        store: the ``TimerStore``.
        indexes: shard indexes to read (``TimerStore.known_shards``).
        host: keep only timers whose URL has this host (lower-case, as
            ``api.validation.url_host`` gives it), or None for all.
        since: epoch ms; only timers that finished at or after it (None: all).
        dry_run: count only, change nothing.
        position: (score, id text) to go on after (a decoded cursor), or None
            to start at ``since``.
    Returns:
        (matched, run, next position or None when every failed timer was
        examined); ``run`` is 0 on a dry run.
    """
    if position is None:
        position = (since if since is not None else float("-inf"), "")
    matched = run = examined = 0
    while position is not None and examined < RUN_MAX_EXAMINED:
        items, position = store.list("failed", indexes, RUN_PAGE, position)
        examined += len(items)
        ids = [timer_id for timer_id, record in items if host is None or url_host(record["url"]) == host]
        matched += len(ids)
        if not dry_run:
            by_shard = {}
            for timer_id in ids:
                by_shard.setdefault(home_shard(timer_id), []).append(timer_id)
            run += sum(store.run(same, failed_only=True).count("failed") for same in by_shard.values())
    return matched, run, position


class TimerRun:
    """``POST /timers/run``: re-drive failed timers in bulk (``shared/CONTRACT.md`` section 4).

    The work is :func:`redrive_failed`'s, bounded per request: a
    ``next_cursor`` in the answer continues from where it stopped.
    """

    def __init__(self, store, settings):
        self.store = store
        self.settings = settings

    def on_post(self, req, resp):
        """200 ``{"matched": n, "run": n, "next_cursor": str or null}`` (``run`` is 0 on a dry run)."""
        host, since, dry_run, cursor = parse_run(read_json_body(req))
        matched, run, position = redrive_failed(
            self.store, self.store.known_shards(self.settings.shards), host, since, dry_run,
            decode_cursor(cursor, "failed") if cursor else None)
        log.info("timers re-driven", extra={"host": host, "since": since, "dry_run": dry_run,
                                            "matched": matched, "run": run})
        resp.media = {"matched": matched, "run": run,
                      "next_cursor": encode_cursor("failed", position) if position else None}


def shard_depths(store, count):
    """Depths of live shards ``0..count-1``: ``[{"index", "queue", "scheduled", "queued", "in_flight"}]``."""
    indexes = list(range(count))
    return [{"index": i, "queue": queues.queue_name(i), "scheduled": scheduled, "queued": queued,
             "in_flight": in_flight}
            for i, (scheduled, queued, in_flight) in zip(indexes, store.depths(indexes), strict=True)]


class Shards:
    """``GET /shards``: depth of every live shard."""

    def __init__(self, store, settings):
        self.store = store
        self.settings = settings

    def on_get(self, req, resp):
        """200 with ``{"shards": [{"index", "queue", "scheduled", "queued", "in_flight"}]}``."""
        resp.media = {"shards": shard_depths(self.store, self.settings.shards)}


class Health:
    """``GET /healthz`` (and ``HEAD``, for load balancers): 200 while the process serves requests."""

    def on_get(self, req, resp):
        """Always 200 ``{"status": "ok"}``."""
        resp.media = {"status": "ok"}

    # Falcon sends no body for HEAD, and keeps the headers (Content-Length included).
    on_head = on_get


class Ready:
    """``GET /readyz``: 200 when Redis answers PING within 0.5 s, else 503.

    Args:
        topology: the store's ``sharding.topology`` (on a cluster PING goes to every master).
    """

    def __init__(self, topology):
        self.topology = topology

    def on_get(self, req, resp):
        """200 ``{"status": "ready"}`` or 503 with the error."""
        try:
            self.topology.ping()
        except REDIS_ERRORS as exc:
            raise falcon.HTTPServiceUnavailable(
                title="Not ready", description=f"Redis did not answer PING: {type(exc).__name__}",
                retry_after=1) from None
        resp.media = {"status": "ready"}


class Metrics:
    """``GET /metrics``: Prometheus text from every process plus live shard depths."""

    def __init__(self, store, settings):
        self.store = store
        self.settings = settings

    def on_get(self, req, resp):
        """200 with the Prometheus text exposition format."""
        resp.data, resp.content_type = metrics.exposition(self.store, self.settings.shards)
