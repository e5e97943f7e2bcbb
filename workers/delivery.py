"""Sending one webhook delivery attempt with ``requests``, and what to do next.

Rules (``shared/CONTRACT.md`` section 5): ``POST <url>/<id>`` with an empty
body, or with the timer's payload (body, content type, headers); any 2xx is
success; connection errors, timeouts, 408, 429 and 5xx are retried with
exponential backoff and equal jitter (:func:`backoff_s`), honouring
``Retry-After`` (RFC 9110 section 10.2.3); other 4xx and every 3xx fail at
once (redirects are never followed). Whether another attempt may follow at
all (the attempt and time limits) is decided atomically by the timer store
(``sharding/lua/next_attempt.lua``).

``python -m workers.delivery --schedule`` prints the retry schedule of the
configured limits as the Markdown table of the README.
"""

import argparse
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

from sharding import config
from sharding.config import SERVICE_NAME, VERSION
from sharding.records import RETRY_FLOOR_MS
from workers.deadline import Watchdog
from workers.ssrf import DeniedDestination, guarded_adapter

USER_AGENT = f"{SERVICE_NAME}/{VERSION}"
BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 3600.0
# No wait is shorter (contract section 5); the store's deadline rule uses the same floor.
BACKOFF_FLOOR_S = RETRY_FLOOR_MS / 1000
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


def backoff_ceiling_s(attempt):
    """The longest wait in seconds after attempt number ``attempt`` (1-based): base 2 s doubling, cap 1 h."""
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(attempt - 1, 32))


def backoff_s(attempt, rng=random.random):
    """Wait in seconds before the attempt after attempt number ``attempt`` (1-based).

    Exponential backoff with *equal jitter* (Marc Brooker, AWS Architecture
    Blog, "Exponential Backoff And Jitter", 2015): half of the ceiling
    ``c = min(1 h, 2 s * 2**(attempt-1))`` plus a uniform share of the other
    half, so a wait is in ``[c/2, c]``: never below the 1 s floor
    (:data:`BACKOFF_FLOOR_S`), at least half of each wait kept, and
    consumers retrying many timers at once still spread out.

    Args:
        attempt: the number of the attempt that just failed, counted from the
            timer's last re-drive (1 for its first attempt).
        rng: source of uniform floats in [0, 1) (``random.random``; tests pass a seeded one).
    Returns:
        float seconds, in ``[max(1, c/2), c]``.
    """
    ceiling = backoff_ceiling_s(attempt)
    return max(BACKOFF_FLOOR_S, ceiling / 2 + ceiling / 2 * rng())


def _duration(seconds):
    """``3725`` → ``"1 h 2 min 5 s"`` (whole seconds; ``"0 s"``)."""
    seconds = round(seconds)
    parts = [(seconds // 3600, "h"), (seconds % 3600 // 60, "min"), (seconds % 60, "s")]
    return " ".join(f"{value} {unit}" for value, unit in parts if value) or "0 s"


def schedule(max_attempts, max_retry_seconds):
    """The retry schedule against a receiver that always fails with a retryable error.

    Per attempt, the range of the wait before it and of its start after the
    first attempt's (attempts taking no time, no ``Retry-After``). It applies
    the store's rule (``sharding/lua/next_attempt.lua``): no attempt starts
    more than ``max_retry_seconds`` after the first; a wait that would end
    later than 2 floors before that deadline ends at the deadline itself.

    Args:
        max_attempts: attempts before the timer is failed (>= 1).
        max_retry_seconds: the retry window from the first attempt, in seconds.
    Returns:
        list of (attempt number, (shortest wait s, longest wait s) or None for
        the first, (earliest start s, latest start s)).
    """
    deadline = float(max_retry_seconds)

    def cut(start):
        # The store's deadline rule: a wait ending past 2 floors before the deadline ends at it.
        return deadline if start > deadline - 2 * BACKOFF_FLOOR_S else start

    rows = [(1, None, (0.0, 0.0))]
    early = late = 0.0
    for attempt in range(1, max_attempts):
        if early + BACKOFF_FLOOR_S > deadline:
            break  # not even the earliest path may start another attempt
        shortest, longest = backoff_s(attempt, rng=lambda: 0.0), backoff_s(attempt, rng=lambda: 1.0)
        early = cut(early + shortest)
        late = deadline if late + BACKOFF_FLOOR_S > deadline else cut(late + longest)
        rows.append((attempt + 1, (shortest, longest), (early, late)))
    return rows


def schedule_table(max_attempts, max_retry_seconds):
    """:func:`schedule` as the Markdown table of the README (one line per row, no trailing newline)."""
    lines = ["| attempt | wait before it | starts after the first attempt |", "|---|---|---|"]
    for attempt, wait, (early, late) in schedule(max_attempts, max_retry_seconds):
        waits = "-" if wait is None else f"{_duration(wait[0])} - {_duration(wait[1])}"
        starts = _duration(early) if early == late else f"{_duration(early)} - {_duration(late)}"
        lines.append(f"| {attempt} | {waits} | {starts} |")
    return "\n".join(lines)


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


def signature_header(signers, msg_id, timestamp_s, body=""):
    """``webhook-signature`` over ``body`` (str, sent UTF-8): one ``v1,<base64>`` per secret, space-separated.

    Per the Standard Webhooks spec (signed content ``<id>.<timestamp>.<body>``),
    computed by the ``standardwebhooks`` package; several secrets let
    receivers rotate keys.
    """
    when = datetime.datetime.fromtimestamp(timestamp_s, datetime.UTC)
    return " ".join(signer.sign(msg_id, when, body) for signer in signers)


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

    def send(self, base_url, timer_id, payload=None):
        """POST to ``webhook_url(base_url, timer_id)`` an empty body, or ``payload``'s.

        Args:
            payload: ``sharding.records.Payload`` or None: its body (UTF-8), its
                ``Content-Type`` and its headers (added to the standard ones;
                the API refused any that the service sets) go with the attempt.
        Returns:
            :class:`Outcome`. Never raises for network, HTTP or policy errors.
        """
        msg_id, timestamp = str(timer_id), int(time.time())
        body = payload.body if payload and payload.body is not None else ""
        headers = {"User-Agent": USER_AGENT}
        if payload:
            headers.update(payload.headers or {})
            if payload.media_type:
                headers["Content-Type"] = payload.media_type
        headers.update({"webhook-id": msg_id, "webhook-timestamp": str(timestamp)})
        if self.signers:
            headers["webhook-signature"] = signature_header(self.signers, msg_id, timestamp, body)
        with self.watchdog.attempt(self.timeout_s) as attempt:
            outcome = self._post(base_url, timer_id, headers, body)
        # Cut off at the deadline: whatever was read by then does not count.
        return Outcome("retry", "timeout") if attempt.expired else outcome

    def _post(self, base_url, timer_id, headers, body):
        """One POST of ``body`` (text) with ``headers``, classified; see :meth:`send`."""
        try:
            # Prepared and sent as requests' "Prepared Requests" documents: no
            # per-call merging of session headers, cookies, auth and environment
            # settings, none of which a delivery uses.
            request = requests.Request("POST", webhook_url(base_url, timer_id), data=body.encode(),
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


def main(argv=None):
    """``python -m workers.delivery --schedule``: print the retry schedule of the configured limits."""
    parser = argparse.ArgumentParser(description="Webhook delivery policy.")
    parser.add_argument("--schedule", action="store_true",
                        help="print the retry schedule (TIMER_WEBHOOK_MAX_ATTEMPTS, "
                             "TIMER_WEBHOOK_MAX_RETRY_SECONDS) as a Markdown table")
    args = parser.parse_args(argv)
    if not args.schedule:
        parser.error("nothing to do: pass --schedule")
    settings = config.load()
    print(schedule_table(settings.webhook_max_attempts, settings.webhook_max_retry_seconds))


if __name__ == "__main__":
    main()
