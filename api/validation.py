"""Validation of a create-timer request body (``shared/CONTRACT.md`` section 2)."""

import urllib.parse

import falcon

MAX_URL_LENGTH = 2048
DURATION_FIELDS = {"hours": 3600, "minutes": 60, "seconds": 1}
ALLOWED_FIELDS = frozenset(DURATION_FIELDS) | {"url"}


class FieldError(falcon.HTTPBadRequest):
    """400 naming the offending field and the rule it broke.

    The JSON body is Falcon's error format plus ``field`` and ``rule``:
    ``{"title": "Invalid field", "description": "...", "field": "hours", "rule": "..."}``.
    """

    def __init__(self, field, rule):
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
    if len(url) > MAX_URL_LENGTH:
        raise FieldError("url", f"must be at most {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise FieldError("url", "must not contain whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise FieldError("url", f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise FieldError("url", "must be an absolute http or https URL")
    if not parts.hostname:
        raise FieldError("url", "must have a host")
    return url


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
    for field in sorted(set(body) - ALLOWED_FIELDS):
        raise FieldError(field, "unknown field; allowed: hours, minutes, seconds, url")
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
