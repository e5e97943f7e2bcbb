"""Validation of a create-timer request body (``shared/CONTRACT.md`` section 2)."""

import functools
import ipaddress
import re
import urllib.parse

import falcon
import idna

MAX_URL_LENGTH = 2048
DURATION_FIELDS = {"hours": 3600, "minutes": 60, "seconds": 1}
ALLOWED_FIELDS = frozenset(DURATION_FIELDS) | {"url"}
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
        raise FieldError(unknown, "unknown field; allowed: hours, minutes, seconds, url")
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
