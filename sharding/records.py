"""Timer records and delivery attempts as Python values (the Redis layout is in ``sharding.store``).

A record's fields are read with one ``HMGET`` of :data:`RECORD_FIELDS`
(:func:`parse_record`); a create's reply becomes the same shape
(:func:`created_record`). :class:`Claim` and :class:`Finish` carry one delivery
attempt between the store and the consumers.
"""

import dataclasses
import json

STATUSES = ("scheduled", "retrying", "firing", "fired", "failed", "cancelled")
FINAL = ("fired", "failed", "cancelled")
# Two attempts of one timer are never closer than this, unless Retry-After asks (contract section 5).
RETRY_FLOOR_MS = 1000
RECORD_FIELDS = ("u", "f", "s", "a", "e", "d", "m", "w", "b", "c", "h")
# What a webhook with a body but no content type is sent with (shared/CONTRACT.md section 2).
DEFAULT_CONTENT_TYPE = "text/plain; charset=utf-8"


@dataclasses.dataclass(frozen=True)
class Payload:
    """What a webhook carries besides its standard headers (``shared/CONTRACT.md`` section 2).

    ``body``: text sent UTF-8 encoded (None: an empty body); ``content_type``:
    its media type as given (None: :data:`DEFAULT_CONTENT_TYPE` when there is a
    body, no ``Content-Type`` otherwise); ``headers``: header name → value, or None.
    """

    body: str | None = None
    content_type: str | None = None
    headers: dict | None = None

    @property
    def media_type(self):
        """The ``Content-Type`` the webhook is sent with, or None for none."""
        if self.content_type is None and self.body is not None:
            return DEFAULT_CONTENT_TYPE
        return self.content_type

    def fields(self):
        """Record field/value pairs (``b``, ``c``, ``h``) of the parts that are given."""
        headers = json.dumps(self.headers, separators=(",", ":")) if self.headers else None
        pairs = []
        for field, value in (("b", self.body), ("c", self.content_type), ("h", headers)):
            if value is not None:
                pairs += [field, value]
        return pairs

    @classmethod
    def from_fields(cls, body, content_type, headers):
        """The payload of the record fields ``b``, ``c``, ``h`` (bytes or None); None when all are absent."""
        if body is None and content_type is None and headers is None:
            return None
        return cls(body.decode() if body is not None else None,
                   content_type.decode() if content_type is not None else None,
                   json.loads(headers) if headers is not None else None)


def parse_record(fields):
    """A record dict from the HMGET of :data:`RECORD_FIELDS`, or None if absent."""
    (url, fire, status, attempts, error, due, max_attempts, max_seconds,
     body, content_type, headers) = fields
    if status is None:
        return None
    status = status.decode()
    retry = {name: int(value) for name, value in (("max_attempts", max_attempts),
                                                   ("max_seconds", max_seconds)) if value is not None}
    return {"url": url.decode(), "fire_at": int(fire), "status": status,
            "attempts": int(attempts or 0), "last_error": error.decode() if error else None,
            "next_attempt_at": int(due) if status == "retrying" and due else None,
            "retry": retry or None, "payload": Payload.from_fields(body, content_type, headers)}


@dataclasses.dataclass(frozen=True)
class RetryLimits:
    """The default limits of a timer's delivery attempts (a timer's ``retry`` object overrides them).

    ``max_attempts``: attempts before the timer is failed; ``max_seconds``: no
    attempt starts later than this many seconds after the first attempt
    began. Whichever ends first ends the retries. Applied by the state-changing
    scripts (``sharding/lua/next_attempt.lua``), so the default and a timer's
    own limits take the same path.
    """

    max_attempts: int
    max_seconds: float

    def args(self):
        """The limits as the scripts' ARGV: max attempts, retry window ms, floor ms."""
        return [self.max_attempts, int(self.max_seconds * 1000), RETRY_FLOOR_MS]


def created_record(result, url, retry, payload):
    """What :meth:`sharding.store.TimerStore.create` returns, from the create script's [id, fire, now]."""
    timer_id, fire_ms, now = result
    return int(timer_id), {"url": url, "fire_at": int(fire_ms), "status": "scheduled", "attempts": 0,
                           "last_error": None, "next_attempt_at": None, "retry": retry,
                           "payload": payload}, int(now)


@dataclasses.dataclass
class Claim:
    """Outcome of :meth:`sharding.store.TimerStore.claim` for one timer.

    ``status`` is ``firing`` when this caller now owns the delivery attempt
    number ``attempt`` (``in_budget``: its number counted from the timer's
    last re-drive, which backoff grows with; ``previous``: ``scheduled`` or
    ``retrying``, what :meth:`sharding.store.TimerStore.release` restores); ``early`` when the timer is not
    due until ``due_ms``; else the timer's current status (``missing`` if
    there is no record). Times are epoch milliseconds.
    """

    timer_id: int
    status: str
    attempt: int = 0
    url: str = ""
    fire_at_ms: int = 0
    now_ms: int = 0
    due_ms: int = 0
    request_id: str = ""
    payload: Payload | None = None
    in_budget: int = 0
    previous: str = ""


@dataclasses.dataclass
class Finish:
    """The outcome of attempt ``attempt`` of ``timer_id``, for :meth:`sharding.store.TimerStore.finish`.

    ``status``: ``fired``, ``failed`` or ``retrying`` (asked for: the
    store turns it into ``failed`` when the timer's limits allow no further
    attempt); ``last_error``: short text such as ``HTTP 503`` (empty on
    success); ``retry_delay_ms``: the wait in milliseconds from when the
    outcome is recorded (Redis clock) to the next attempt (``retrying`` only);
    ``started_ms``: when the attempt was claimed (epoch ms, Redis clock;
    0: when recorded), which starts the retry window if it was the first.
    """

    timer_id: int
    attempt: int
    status: str
    last_error: str = ""
    retry_delay_ms: int = 0
    started_ms: int = 0
