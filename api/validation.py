"""Validation of request bodies: create (``shared/CONTRACT.md`` section 2) and bulk re-drive (section 4)."""

import datetime
import functools
import ipaddress
import re
import urllib.parse

import falcon

MAX_URL_LENGTH = 2048
DURATION_FIELDS = {"hours": 3600, "minutes": 60, "seconds": 1}
ALLOWED_FIELDS = frozenset(DURATION_FIELDS) | {"url", "retry"}
# The optional ``retry`` object of a create: field -> (least, greatest or None).
RETRY_FIELDS = {"max_attempts": (1, 100), "max_seconds": (0, None)}
# The body of POST /timers/run.
RUN_FIELDS = ("status", "host", "since", "dry_run", "cursor")
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

    Raises:
        FieldError: on ``url``.
    """
    ascii_host = host.rstrip(".")
    if not ascii_host.isascii():
        try:
            ascii_host = ascii_host.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_host = ""
    if len(ascii_host) <= 253 and all(_LABEL.match(label) for label in ascii_host.split(".")):
        return  # a DNS name (an IPv4 literal is one too)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise FieldError("url", "host must be an IP address or a DNS name of labels of 1-63 letters, "
                                "digits, underscores and inner hyphens") from None


def parse_create(body, max_delay_seconds):
    """Validate a create-timer body.

    Args:
        body: the decoded JSON document.
        max_delay_seconds: longest accepted total delay in seconds.
    Returns:
        (delay in seconds: int, url: str).
    Raises:
        falcon.HTTPBadRequest: the body is not a JSON object.
        FieldError: an unknown field, a missing ``url``, a duration field that
            is not an integer >= 0 (booleans, floats, strings and null are
            not integers), or a total delay above ``max_delay_seconds``.
    """
    if not isinstance(body, dict):
        raise falcon.HTTPBadRequest(title="Invalid body", description="the body must be a JSON object")
    if not body.keys() <= ALLOWED_FIELDS:
        unknown = min(set(body) - ALLOWED_FIELDS)
        raise FieldError(unknown, "unknown field; allowed: hours, minutes, seconds, url, retry")
    delay = 0
    for field, unit in DURATION_FIELDS.items():
        value = body.get(field, 0)
        if type(value) is not int or value < 0:
            raise FieldError(field, "must be an integer >= 0")
        delay += value * unit
    if "url" not in body:
        raise FieldError("url", "is required")
    url = check_url(body["url"])
    if delay > max_delay_seconds:
        largest = next(f for f in DURATION_FIELDS if body.get(f))
        raise FieldError(largest, f"total delay (hours*3600 + minutes*60 + seconds) must be "
                                    f"at most {max_delay_seconds} seconds")
    return delay, url


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


def parse_rfc3339(field, value):
    """An RFC 3339 date-time with an offset (``2026-12-24T18:00:00+01:00``, ``...Z``) → epoch ms.

    Raises:
        FieldError: on ``field`` when ``value`` is not such a string.
    """
    when = None
    if isinstance(value, str) and len(value) >= 20 and value[10] in "Tt ":
        try:
            when = datetime.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        except ValueError:
            when = None
    if when is None or when.tzinfo is None:
        raise FieldError(field, "must be an RFC 3339 date-time with an offset, e.g. 2026-12-24T18:00:00Z")
    return int(when.timestamp() * 1000)


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
    if not isinstance(body, dict):
        raise falcon.HTTPBadRequest(title="Invalid body", description="the body must be a JSON object")
    unknown = sorted(set(body) - set(RUN_FIELDS))
    if unknown:
        raise FieldError(unknown[0], "unknown field; allowed: " + ", ".join(RUN_FIELDS))
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
    return (host.strip("[]").rstrip(".").lower() if host else None,
            None if since is None else parse_rfc3339("since", since), dry_run, cursor)


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
