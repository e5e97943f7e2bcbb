"""Validation of request bodies: create and reschedule (``shared/CONTRACT.md`` sections 2 and 4),
and bulk re-drive (section 4)."""

import datetime
import functools
import ipaddress
import re
import urllib.parse
from typing import NamedTuple

import ciso8601
import falcon
import idna

from sharding.records import Payload

MAX_URL_LENGTH = 2048
DURATION_FIELDS = {"hours": 3600, "minutes": 60, "seconds": 1}
SCHEDULE_FIELDS = frozenset(DURATION_FIELDS) | {"fire_at"}
PAYLOAD_FIELDS = frozenset({"body", "content_type", "headers"})
ALLOWED_FIELDS = SCHEDULE_FIELDS | PAYLOAD_FIELDS | {"url", "retry"}
# The optional ``retry`` object of a create: field -> (least, greatest or None).
RETRY_FIELDS = {"max_attempts": (1, 100), "max_seconds": (0, None)}
# The body of POST /timers/run.
RUN_FIELDS = frozenset({"status", "host", "since", "dry_run", "cursor"})
MAX_BODY_BYTES = 16 * 1024
MAX_HEADERS = 20
MAX_HEADER_VALUE = 1024
MAX_CONTENT_TYPE = 255
# Refused in ``headers`` (shared/CONTRACT.md section 2): framing and routing fields
# the HTTP client sets, the hop-by-hop fields of RFC 9110 section 7.6.1 and
# RFC 2616 section 13.5.1, Content-Type (the ``content_type`` field sets it);
# and every ``webhook-*`` name, which Standard Webhooks reserves for the service.
FORBIDDEN_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
    "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade", "content-type"})
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
# RFC 9110 section 5.6.2: token = 1*tchar.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 section 5.5 field-content, ASCII only: visible characters, inner spaces.
_FIELD_VALUE = re.compile(r"(?:[!-~](?:[ !-~]*[!-~])?)?")
# Whitespace (Unicode, as str.isspace), C0 controls, DEL and backslashes.
_FORBIDDEN_CHARACTER = re.compile(r"[\s\x00-\x1f\x7f\\]")
# A DNS label after IDNA encoding (RFC 1123; underscores too, as in container names): 1-63 characters.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def printable(text):
    """``text`` safe to echo in an error: lone surrogates and the like escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class FieldError(falcon.HTTPBadRequest):
    """400 naming the offending field and the rule it broke.

    The JSON body is Falcon's error format plus ``field`` and ``rule``:
    ``{"title": "Invalid field", "description": "...", "field": "hours", "rule": "..."}``.
    """

    def __init__(self, field, rule):
        field = printable(field)
        super().__init__(title="Invalid field", description=f"'{field}': {rule}")
        self.field = field
        self.rule = rule

    def to_dict(self, obj_type=dict):
        """Falcon's error dict with ``field`` and ``rule`` added."""
        obj = super().to_dict(obj_type)
        obj["field"] = self.field
        obj["rule"] = self.rule
        return obj


def check_url(url):
    """Return ``url`` if it is an absolute http(s) URL with a host, at most 2048 characters.

    Raises:
        FieldError: on ``url``.
    """
    if not isinstance(url, str):
        raise FieldError("url", "must be a string")
    return _checked_url(url)


# Clients send the same few webhook URLs again and again: each is parsed once
# (the check is a pure function of the text; refusals raise and are not cached).
@functools.lru_cache(maxsize=4096)
def _checked_url(url):
    if len(url) > MAX_URL_LENGTH:
        raise FieldError("url", f"must be at most {MAX_URL_LENGTH} characters")
    if _FORBIDDEN_CHARACTER.search(url):
        raise FieldError("url", "must not contain whitespace, control characters or backslashes")
    try:
        url.encode("utf-8")
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except (ValueError, UnicodeError) as exc:
        raise FieldError("url", f"is not a valid URL ({printable(str(exc))})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise FieldError("url", "must be an absolute http or https URL")
    if not parts.hostname:
        raise FieldError("url", "must have a host")
    if port == 0:
        raise FieldError("url", "port must be 1-65535")
    check_host(parts.hostname)
    return url


def check_host(host):
    """Accept an IP literal or a DNS name whose IDNA labels are valid (RFC 1123, RFC 5891).

    A non-ASCII name must encode as urllib3 encodes it for delivery (the
    ``idna`` package, IDNA 2008, labels split at ``.`` only), so a name such
    as ``127．0．0．1`` (fullwidth dots) is refused here rather than failing at
    its fire time. An IPv6 zone id (``[fe80::1%25eth0]``) names an interface
    of the sending machine, not a destination, and is refused too.

    Raises:
        FieldError: on ``url``.
    """
    if "%" in host:
        raise FieldError("url", "host must not carry an IPv6 zone id ('%'): it names a network "
                                "interface of the sending machine, not a destination")
    ascii_host = host.rstrip(".")
    if not ascii_host.isascii():
        try:
            ascii_host = idna.encode(ascii_host.lower(), strict=True, std3_rules=True).decode("ascii")
        except UnicodeError as exc:  # idna.IDNAError is one
            raise FieldError("url", f"host is not a valid internationalized domain name "
                                    f"(IDNA 2008, RFC 5891): {printable(str(exc))}") from None
    if len(ascii_host) <= 253 and all(_LABEL.match(label) for label in ascii_host.split(".")):
        return  # a DNS name (an IPv4 literal is one too)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise FieldError("url", "host must be an IP address or a DNS name of labels of 1-63 letters, "
                                "digits, underscores and inner hyphens") from None


class TimerRequest(NamedTuple):
    """A valid create-timer body: ``delay_s`` (seconds from now; 0 with ``fire_at_ms``),
    ``url``, ``fire_at_ms`` (epoch ms, or None), ``payload`` (``sharding.records.Payload`` or None),
    ``retry`` (the timer's own limits, see :func:`parse_retry`, or None)."""

    delay_s: int
    url: str
    fire_at_ms: int | None = None
    payload: Payload | None = None
    retry: dict | None = None


def _object(body, allowed):
    """Check that ``body`` is a JSON object with no field outside ``allowed``."""
    if not isinstance(body, dict):
        raise falcon.HTTPBadRequest(title="Invalid body", description="the body must be a JSON object")
    if not body.keys() <= allowed:
        unknown = min(set(body) - allowed)
        raise FieldError(unknown, "unknown field; allowed: " + ", ".join(sorted(allowed)))


def parse_create(body, max_delay_seconds):
    """Validate a create-timer body.

    Args:
        body: the decoded JSON document.
        max_delay_seconds: longest accepted total delay in seconds.
    Returns:
        :class:`TimerRequest`.
    Raises:
        falcon.HTTPBadRequest: the body is not a JSON object.
        FieldError: an unknown field, a missing ``url``, a duration field that
            is not an integer >= 0 (booleans, floats, strings and null are
            not integers), a total delay above ``max_delay_seconds``, a bad
            ``fire_at`` (see :func:`parse_schedule`) or payload (see :func:`parse_payload`).
    """
    _object(body, ALLOWED_FIELDS)
    delay, fire_at_ms = parse_schedule(body, max_delay_seconds)
    if "url" not in body:
        raise FieldError("url", "is required")
    return TimerRequest(delay, check_url(body["url"]), fire_at_ms, parse_payload(body), parse_retry(body))


def parse_reschedule(body, max_delay_seconds):
    """Validate a ``PATCH /timers/{id}`` body: ``fire_at``, or ``hours``/``minutes``/``seconds`` from now.

    Returns:
        (delay in seconds: int, fire time epoch ms or None), as :func:`parse_schedule`.
    Raises:
        falcon.HTTPBadRequest: the body is not a JSON object.
        FieldError: no field, another field, or a bad one (see :func:`parse_schedule`).
    """
    _object(body, SCHEDULE_FIELDS)
    if not body:
        raise FieldError("fire_at", "give fire_at, or hours, minutes and seconds from now")
    return parse_schedule(body, max_delay_seconds)


def parse_schedule(body, max_delay_seconds):
    """The fire time of a body: ``fire_at``, or the delay ``hours``/``minutes``/``seconds``.

    Args:
        body: a JSON object.
        max_delay_seconds: longest accepted total delay in seconds (a ``fire_at``
            further away is refused by the store, on the Redis clock).
    Returns:
        (delay in seconds: int, fire time epoch ms or None): (0, ms) with
        ``fire_at``, else (delay, None).
    Raises:
        FieldError: ``fire_at`` together with a duration field, a bad
            ``fire_at`` (:func:`parse_fire_at`), a duration field that is not an
            integer >= 0, or a total delay above ``max_delay_seconds``.
    """
    if "fire_at" in body:
        given = [field for field in DURATION_FIELDS if field in body]
        if given:
            raise FieldError("fire_at", f"give either fire_at or hours/minutes/seconds, not both "
                                        f"(also given: {', '.join(given)})")
        return 0, parse_fire_at(body["fire_at"])
    delay = 0
    for field, unit in DURATION_FIELDS.items():
        value = body.get(field, 0)
        if type(value) is not int or value < 0:
            raise FieldError(field, "must be an integer >= 0")
        delay += value * unit
    if delay > max_delay_seconds:
        largest = next(f for f in DURATION_FIELDS if body.get(f))
        raise FieldError(largest, f"total delay (hours*3600 + minutes*60 + seconds) must be "
                                    f"at most {max_delay_seconds} seconds")
    return delay, None


def parse_fire_at(value):
    """``fire_at`` of a create or reschedule body → epoch ms (see :func:`parse_rfc3339`).

    Raises:
        FieldError: on ``fire_at``.
    """
    return parse_rfc3339("fire_at", value)


def parse_rfc3339(field, value):
    """An RFC 3339 date-time with an offset (``2026-12-24T18:00:00+01:00``, ``...Z``) → epoch ms.

    Parsed by ``ciso8601.parse_rfc3339``, a strict RFC 3339 parser: a date
    only, no offset, ISO 8601's other forms (``20261224T180000Z``, no seconds)
    and out-of-range parts (month 13, February 30, hour 24) are refused.
    Fractions below a millisecond are dropped.

    Raises:
        FieldError: on ``field``.
    """
    rule = "must be an RFC 3339 date-time with an offset, e.g. 2026-12-24T18:00:00+01:00 or ...Z"
    if not isinstance(value, str):
        raise FieldError(field, rule)
    try:
        when = ciso8601.parse_rfc3339(value)
    except ValueError as exc:
        raise FieldError(field, f"{rule} ({printable(str(exc))})") from None
    # Aware datetimes subtract without converting to UTC first, so year 1 at +01:00 cannot overflow.
    return (when - _EPOCH) // datetime.timedelta(milliseconds=1)


def parse_payload(body):
    """The optional ``body``, ``content_type`` and ``headers`` of a create body.

    Rules (``shared/CONTRACT.md`` section 2): ``body`` a string of at most 16
    KiB in UTF-8; ``content_type`` a media type (RFC 9110 section 8.3.1:
    ``type/subtype`` tokens, optional parameters) of at most 255 characters;
    ``headers`` an object of at most 20 names (RFC 9110 tokens, none of
    :data:`FORBIDDEN_HEADERS` nor ``webhook-*``, no name twice in any case)
    to values of visible ASCII with inner spaces (RFC 9110 field-content), at most 1 KiB.

    Returns:
        ``sharding.records.Payload``, or None when none of the three is given.
    Raises:
        FieldError: on ``body``, ``content_type``, ``headers`` or ``headers.<name>``.
    """
    if body.keys().isdisjoint(PAYLOAD_FIELDS):
        return None  # most timers carry no payload: no Payload built to compare with an empty one
    checks = {"body": _body, "content_type": _content_type, "headers": _headers}
    payload = Payload(**{field: check(body[field]) for field, check in checks.items() if field in body})
    return None if payload == Payload() else payload


def _body(text):
    if not isinstance(text, str):
        raise FieldError("body", "must be a string")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise FieldError("body", "must be valid Unicode text (no lone surrogates)") from None
    if size > MAX_BODY_BYTES:
        raise FieldError("body", f"must be at most {MAX_BODY_BYTES} bytes in UTF-8, not {size}")
    return text


def _content_type(value):
    if not isinstance(value, str) or len(value) > MAX_CONTENT_TYPE or not _FIELD_VALUE.fullmatch(value):
        raise FieldError("content_type", f"must be a media type of at most {MAX_CONTENT_TYPE} visible "
                                         "ASCII characters, e.g. application/json")
    kind, _, subtype = value.split(";", 1)[0].strip().partition("/")
    if not (_TOKEN.fullmatch(kind) and _TOKEN.fullmatch(subtype)):
        raise FieldError("content_type", "must be a media type type/subtype (RFC 9110 section 8.3.1), "
                                         "e.g. application/json")
    return value


def _headers(value):
    if not isinstance(value, dict):
        raise FieldError("headers", "must be an object of header names to string values")
    if len(value) > MAX_HEADERS:
        raise FieldError("headers", f"must have at most {MAX_HEADERS} headers, not {len(value)}")
    seen = set()
    for name, text in value.items():
        field = f"headers.{name}"
        if not _TOKEN.fullmatch(name):
            raise FieldError(field, "the name must be an RFC 9110 token "
                                    "(letters, digits and !#$%&'*+-.^_`|~)")
        lower = name.lower()
        if lower in FORBIDDEN_HEADERS or lower.startswith("webhook-"):
            raise FieldError(field, f"{name} may not be set: the service sets it "
                                    "(Host, Content-Length, Content-Type via content_type, hop-by-hop "
                                    "fields and webhook-* are refused)")
        if lower in seen:
            raise FieldError(field, "is given twice (header names are case-insensitive)")
        seen.add(lower)
        if not isinstance(text, str) or len(text) > MAX_HEADER_VALUE or not _FIELD_VALUE.fullmatch(text):
            raise FieldError(field, f"the value must be a string of at most {MAX_HEADER_VALUE} visible ASCII "
                                    "characters (inner spaces allowed)")
    return dict(value) or None


def parse_retry(body):
    """Validate the optional ``retry`` object of a create body (``shared/CONTRACT.md`` section 2).

    Args:
        body: the create body (a dict, as :func:`parse_create` accepted it).
    Returns:
        dict with the given ones of ``max_attempts`` (int 1..100) and
        ``max_seconds`` (int >= 0), or None when absent or empty.
    Raises:
        FieldError: on ``retry`` when it is not an object (null too), on ``retry.<name>``
            for an unknown field or a value that is not an integer in range
            (booleans, floats, strings and null are not integers).
    """
    if "retry" not in body:
        return None
    retry = body["retry"]
    if not isinstance(retry, dict):
        raise FieldError("retry", "must be an object with max_attempts and/or max_seconds")
    unknown = sorted(set(retry) - set(RETRY_FIELDS))
    if unknown:
        raise FieldError(f"retry.{unknown[0]}", "unknown field; allowed: max_attempts, max_seconds")
    for name, (least, greatest) in RETRY_FIELDS.items():
        value = retry.get(name, least)
        if type(value) is not int or value < least or (greatest is not None and value > greatest):
            rule = f"in {least}..{greatest}" if greatest is not None else f">= {least}"
            raise FieldError(f"retry.{name}", f"must be an integer {rule}")
    return retry or None


def parse_run(body):
    """Validate the body of ``POST /timers/run`` (bulk re-drive, ``shared/CONTRACT.md`` section 4).

    Args:
        body: the decoded JSON document: ``status`` (``"failed"``, the
            default), optional ``host``, ``since`` (RFC 3339), ``dry_run``
            (boolean, default false) and ``cursor`` (``next_cursor`` of a
            previous answer).
    Returns:
        (host lower-cased or None, since epoch ms or None, dry_run bool, cursor str or None).
    Raises:
        falcon.HTTPBadRequest: the body is not a JSON object.
        FieldError: an unknown field or a value of the wrong type.
    """
    _object(body, RUN_FIELDS)
    if body.get("status", "failed") != "failed":
        raise FieldError("status", 'must be "failed": only failed timers are re-driven in bulk')
    host = body.get("host")
    if host is not None and (not isinstance(host, str) or not host):
        raise FieldError("host", "must be a non-empty string (a webhook URL's host)")
    since = body.get("since")
    dry_run = body.get("dry_run", False)
    if type(dry_run) is not bool:
        raise FieldError("dry_run", "must be a boolean")
    cursor = body.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise FieldError("cursor", "is not a cursor this API returned")
    return (normalize_host(host) if host else None,
            None if since is None else parse_rfc3339("since", since), dry_run, cursor)


def normalize_host(host):
    """``host`` as stored URLs' hosts are compared: without ``[]`` or a trailing dot, lower-case."""
    return host.strip("[]").rstrip(".").lower()


def url_host(url):
    """The host of a stored webhook URL, lower-cased, as ``host`` of ``POST /timers/run`` matches it."""
    return (urllib.parse.urlsplit(url).hostname or "").rstrip(".")


class TimerIdConverter(falcon.routing.BaseConverter):
    """Path converter for timer ids: a positive integer written in canonical decimal.

    ``"7"`` converts to 7; ``"+7"``, ``"007"``, ``"0"``, ``"-1"``, ``"7.0"`` and non-ASCII
    digits (which ``int()`` would take) are not ids, so the route does not match and the
    answer is 404 ("Unknown or malformed id", ``shared/CONTRACT.md`` section 3). See
    Falcon's "Field Converters" (``falcon.routing.BaseConverter``).
    """

    _CANONICAL = re.compile(r"[1-9][0-9]*")

    def convert(self, value):
        """``value`` (str) → int, or None when it is not a canonical positive integer."""
        return int(value) if self._CANONICAL.fullmatch(value) else None
