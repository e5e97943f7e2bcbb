"""Sending one webhook delivery attempt with ``requests``, and what to do next.

Rules (``shared/CONTRACT.md`` section 5): ``POST <url>/<id>`` with an empty
body; any 2xx is success; connection errors, timeouts, 408, 429 and 5xx are
retried with exponential backoff and full jitter, honouring ``Retry-After``
(RFC 9110 section 10.2.3); other 4xx and every 3xx fail at once (redirects are
never followed).
"""

import dataclasses
import datetime
import email.utils
import errno
import http.cookiejar
import random
import threading
import time
import urllib.parse

import requests
import urllib3
from standardwebhooks.webhooks import Webhook

from sharding.config import SERVICE_NAME, VERSION
from workers.deadline import Watchdog
from workers.ssrf import DeniedDestination, guarded_adapter

USER_AGENT = f"{SERVICE_NAME}/{VERSION}"
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 3600.0
RETRYABLE_STATUS = frozenset({408, 429})
# Receivers' response bodies are read up to this size (to reuse the
# connection), never kept.
MAX_RESPONSE_READ = 64 * 1024


def webhook_url(base, timer_id):
    """``base`` with the timer id appended as one more path segment.

    ``https://x.test/hook`` and ``https://x.test/hook/`` → ``https://x.test/hook/7``;
    ``https://x.test/h?a=1`` → ``https://x.test/h/7?a=1`` (query kept, fragment dropped).
    """
    parts = urllib.parse.urlsplit(base)
    path = parts.path.rstrip("/") + "/" + str(timer_id)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def backoff_s(attempt, rng=random.random):
    """Delay in seconds before the attempt after attempt number ``attempt`` (1-based).

    Exponential backoff with full jitter (AWS Architecture Blog, "Exponential
    Backoff and Jitter"): uniform in [0, min(cap, base * 2**(attempt-1))],
    base 1 s, cap 1 h.
    """
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(attempt - 1, 32))
    return ceiling * rng()


def parse_retry_after(value, now_s=None):
    """Seconds to wait from a ``Retry-After`` header value (RFC 9110 section 10.2.3).

    Args:
        value: ``"120"`` (delay-seconds) or an HTTP-date, or None.
        now_s: current epoch seconds, for HTTP-dates (default: ``time.time()``).
    Returns:
        float seconds, at least 0 and at most 1 h; None when absent or unparsable.
    """
    if value is None:
        return None
    value = value.strip()
    # ASCII only: str.isdigit also takes "²" (latin-1, so a header can carry it), which float() refuses.
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now_s is None else now_s)
    return min(max(seconds, 0.0), BACKOFF_CAP_S)


@dataclasses.dataclass
class Outcome:
    """Result of one delivery attempt.

    ``kind``: ``ok`` (2xx), ``retry`` (retryable failure) or ``fail`` (permanent).
    ``error``: short text for the timer's ``last_error`` (empty on success).
    ``retry_after_s``: the receiver's ``Retry-After`` in seconds, if it sent one.
    """

    kind: str
    error: str = ""
    retry_after_s: float | None = None


def classify(status, retry_after=None):
    """The :class:`Outcome` of an HTTP response status code."""
    if 200 <= status < 300:
        return Outcome("ok")
    error = f"HTTP {status}"
    if 300 <= status < 400:
        return Outcome("fail", f"{error} (redirects are not followed)")
    if status in RETRYABLE_STATUS or status >= 500:
        return Outcome("retry", error, parse_retry_after(retry_after))
    return Outcome("fail", error)


def _describe(exc):
    if isinstance(exc, requests.exceptions.Timeout):
        return "timeout"
    cause = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        cause = cause.__context__ or cause.__cause__
    if "refused" in str(exc).lower():
        return "connection refused"
    return f"connection error: {type(exc).__name__}"


def signature_header(signers, msg_id, timestamp_s):
    """``webhook-signature`` for an empty body: one ``v1,<base64>`` per secret, space-separated.

    Per the Standard Webhooks spec (signed content ``<id>.<timestamp>.<body>``),
    computed by the ``standardwebhooks`` package; several secrets let
    receivers rotate keys.
    """
    when = datetime.datetime.fromtimestamp(timestamp_s, datetime.UTC)
    return " ".join(signer.sign(msg_id, when, "") for signer in signers)


class Sender:
    """Sends webhook attempts; one ``requests.Session`` per thread (connection reuse).

    Args:
        timeout_s: wall-clock deadline of one attempt in seconds: connect,
            sending the request, the response headers and the bounded body
            read (``workers.deadline``); an attempt cut off is a ``timeout``.
        deny: ``ipaddress`` networks webhooks may never reach (checked on the
            resolved address at connect time, see ``workers.ssrf``).
        secrets: Standard Webhooks secrets (``whsec_...``); with any, every
            delivery is signed with each.
    """

    def __init__(self, timeout_s, deny=(), secrets=()):
        self.timeout_s = timeout_s
        self.deny = list(deny)
        self.signers = [Webhook(secret) for secret in secrets]
        self._local = threading.local()
        self.watchdog = Watchdog()

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # No proxies or .netrc from the environment: a webhook goes
            # straight to the address its client gave.
            session.trust_env = False
            # Receivers' cookies are never kept (nor sent): deliveries are stateless.
            session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
            adapter = guarded_adapter(self.deny)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def send(self, base_url, timer_id):
        """POST an empty body to ``webhook_url(base_url, timer_id)``.

        Returns:
            :class:`Outcome`. Never raises for network, HTTP or policy errors.
        """
        msg_id, timestamp = str(timer_id), int(time.time())
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "User-Agent": USER_AGENT}
        if self.signers:
            headers["webhook-signature"] = signature_header(self.signers, msg_id, timestamp)
        with self.watchdog.attempt(self.timeout_s) as attempt:
            outcome = self._post(base_url, timer_id, headers)
        # Cut off at the deadline: whatever was read by then does not count.
        return Outcome("retry", "timeout") if attempt.expired else outcome

    def _post(self, base_url, timer_id, headers):
        try:
            # Prepared and sent as requests' "Prepared Requests" documents: no
            # per-call merging of session headers, cookies, auth and environment
            # settings, none of which a delivery uses.
            request = requests.Request("POST", webhook_url(base_url, timer_id), data=b"",
                                       headers=headers).prepare()
            with self._session().send(request, timeout=self.timeout_s, allow_redirects=False,
                                      stream=True) as response:
                response.raw.read(MAX_RESPONSE_READ)
                return classify(response.status_code, response.headers.get("Retry-After"))
        except DeniedDestination as exc:
            return Outcome("fail", f"denied by TIMER_WEBHOOK_DENY_NETWORKS: {exc}")
        except (requests.exceptions.InvalidURL, UnicodeError) as exc:
            # UnicodeError: a host name IDNA cannot encode (an empty or too long label).
            return Outcome("fail", f"invalid url: {exc}")
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            # urllib3's errors come from the body read (a receiver that stops mid-body).
            return Outcome("retry", _describe(exc))
