"""The operator's dashboard at ``/dashboard`` (``shared/CONTRACT.md`` section 8).

Server-rendered pages (Jinja2 templates in ``api/templates/``, autoescaped:
every value is shown as text) over the same store code as the API: shard
depths (``resources.shard_depths``), listing by status with the API's cursors
(``TimerStore.list``), one timer (``TimerStore.get`` and
``resources.timer_view``, so every field of the API's view is shown), and
the actions of the API: cancel (``TimerStore.cancel``, as
``DELETE /timers/<id>``), run now and re-drive one (``TimerStore.run_now``,
as ``POST /timers/<id>/run``) and re-drive all failed
(``resources.redrive_failed``, as ``POST /timers/run``). Rates and the lateness histogram come from
this host's Prometheus metrics (``sharding.metrics.host_samples``).

The page script ``api/static/dashboard.js`` (the project's own; no CDN, no
third-party code) re-fetches the page every :data:`REFRESH_SECONDS` while
the tab is visible and swaps the ``data-live`` regions, and sends actions
with ``fetch`` so that nothing reloads; without it, every page and action
still works as plain links and forms.

Security (OWASP Session Management and CSRF Prevention cheat sheets):

* With ``TIMER_API_TOKENS`` set, every page but the sign-in page and the
  static files answers a redirect to sign-in (a POST: 403) until the operator
  signs in with one of the tokens. A session is an ``itsdangerous`` signed
  cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over TLS, path
  ``/dashboard``) holding the scope of the token (``auth.client_scope``, never
  the token) and a random CSRF token; its age is checked on every request
  (``TIMER_DASHBOARD_SESSION_SECONDS``), and a session whose token is no
  longer configured is refused. The signing key is random, kept in Redis
  (``dashboard:secret``) so that every API process and host accepts it.
* Every action is a POST whose form carries the session's CSRF token
  (synchronizer token pattern); a missing or wrong one is a 403.
* Every dashboard response has a Content-Security-Policy allowing only the
  service's own origin (no inline script or style), ``nosniff``,
  ``Referrer-Policy: no-referrer`` and ``frame-ancestors 'none'``.
* ``TIMER_DASHBOARD=off`` adds no route; ``readonly`` adds no action route
  (an action is then a 404 from the server, not only a missing button).
"""

import collections
import hmac
import logging
import os
import secrets
import threading
import time

import falcon
import itsdangerous
import jinja2

from api.auth import client_scope, matches_any
from api.resources import (
    CANCEL_REFUSED,
    RUN_MAX_EXAMINED,
    RUN_REFUSED,
    decode_cursor,
    encode_cursor,
    redrive_failed,
    rfc3339_ms,
    shard_depths,
    timer_view,
)
from api.validation import FieldError, TimerIdConverter, normalize_host, url_host
from sharding import metrics
from sharding.config import SERVICE_NAME, VERSION
from sharding.ids import home_shard
from sharding.records import STATUSES
from sharding.store import now_ms

log = logging.getLogger("api.dashboard")

PREFIX = "/dashboard"
REFRESH_SECONDS = 3
PAGE = 50
# A host filter reads at most this many pages of the store's listing per request.
FILTER_SCAN_PAGES = 20
MAX_FORM_BYTES = 16 * 1024
COOKIE = "timer_dashboard"
SECRET_KEY = "dashboard:secret"
RATE_WINDOW_S = 60
# The shortest history a per-minute rate is computed from.
RATE_MIN_SPAN_S = 5
PENDING = ("scheduled", "retrying")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
# What a successful action's redirect says on the page (?done=<key>).
DONE = {"cancel": "Timer cancelled.", "run": "Timer is due now.",
        "redrive": "Timer re-driven: due now with a fresh attempt budget.", "signed-out": "Signed out."}
_TIMER_ID = TimerIdConverter()

_HERE = os.path.dirname(os.path.abspath(__file__))
STATIC_DIR = os.path.join(_HERE, "static")
TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(_HERE, "templates")),
                               autoescape=True, undefined=jinja2.StrictUndefined,
                               trim_blocks=True, lstrip_blocks=True)


class DashboardError(Exception):
    """An error shown as a dashboard page (HTML) rather than the API's JSON.

    Args:
        status: HTTP status code (int).
        title: short text; description: one sentence for the operator.
    """

    def __init__(self, status, title, description):
        super().__init__(description)
        self.status, self.title, self.description = status, title, description


_PAGE_DEFAULTS = {"csrf": "", "signed_in": False, "actions": False, "flash": ""}


def render(resp, template, http_status=200, **context):
    """Render ``api/templates/<template>`` into ``resp`` as UTF-8 HTML with ``http_status`` (int)."""
    resp.status = falcon.code_to_http_status(http_status)
    resp.content_type = "text/html; charset=utf-8"
    resp.text = TEMPLATES.get_template(template).render(
        {**_PAGE_DEFAULTS, "service": SERVICE_NAME, "version": VERSION, "prefix": PREFIX,
         "refresh_s": REFRESH_SECONDS, **context})


def form_field(req, name):
    """The text of field ``name`` of the POSTed form ('' when absent or given twice)."""
    value = req.context.form.get(name)
    return value.strip() if isinstance(value, str) else ""


class Sessions:
    """Signed session cookies (see the module docstring).

    Args:
        control: redis-py client holding the signing key.
        tokens: the configured API tokens (empty: everyone gets an anonymous
            session, which carries only the CSRF token).
        max_age_s: session lifetime in seconds.
    """

    def __init__(self, control, tokens, max_age_s):
        self.control = control
        self.tokens = [t.encode() for t in tokens]
        self.scopes = {client_scope(t) for t in tokens}
        self.max_age_s = max_age_s
        self._serializer = None
        self._lock = threading.Lock()

    def _signer(self):
        with self._lock:
            if self._serializer is None:
                # The first process to ask creates the key; every other one reads the same.
                self.control.set(SECRET_KEY, secrets.token_hex(32), nx=True)
                self._serializer = itsdangerous.URLSafeTimedSerializer(
                    self.control.get(SECRET_KEY), salt="timer-dashboard-session")
            return self._serializer

    def read(self, req):
        """The session dict ``{"k": csrf token, "c": token scope}`` of ``req``, or None.

        None when there is no cookie, its signature is wrong, it is older than
        ``max_age_s``, or (with tokens) its token is no longer configured.
        """
        for value in req.get_cookie_values(COOKIE) or ():
            try:
                session = self._signer().loads(value, max_age=self.max_age_s)
            except itsdangerous.BadData:
                continue
            if isinstance(session, dict) and (not self.tokens or session.get("c") in self.scopes):
                return session
        return None

    def issue(self, req, resp, token=""):
        """Start a session (for ``token`` when signing in) and set its cookie; returns the session."""
        session = {"k": secrets.token_urlsafe(24), "c": client_scope(token) if token else ""}
        resp.set_cookie(COOKIE, self._signer().dumps(session), max_age=self.max_age_s, path=PREFIX,
                        secure=req.forwarded_scheme == "https", http_only=True, same_site="Strict")
        return session

    def end(self, resp):
        """Remove the session cookie."""
        resp.unset_cookie(COOKIE, path=PREFIX, same_site="Strict")

    def valid_token(self, token):
        """True when ``token`` (str) is one of the configured tokens (constant time)."""
        return matches_any(token.encode(), self.tokens)


class Guard:
    """Falcon middleware: sessions, sign-in, CSRF and security headers for ``/dashboard``.

    Sets ``req.context.session`` for dashboard pages. Raises (as dashboard
    pages) 303 to sign-in for a page without a session when tokens are set,
    403 for an action without a session or without the session's CSRF token,
    413 for a form over :data:`MAX_FORM_BYTES`.
    """

    def __init__(self, sessions):
        self.sessions = sessions

    def process_resource(self, req, resp, resource, params):
        """Check the session and, on POST, the CSRF token."""
        if not isinstance(resource, Page):
            return
        session = self.sessions.read(req)
        if session is None and not resource.public:
            if self.sessions.tokens:
                if req.method == "POST":
                    raise DashboardError(403, "Not signed in", "Sign in to the dashboard first.")
                raise falcon.HTTPSeeOther(f"{PREFIX}/signin")
            session = self.sessions.issue(req, resp)
        req.context.session = session
        if req.method == "POST":
            if (req.content_length or 0) > MAX_FORM_BYTES:
                raise DashboardError(413, "Form too large",
                                     f"A form may hold at most {MAX_FORM_BYTES} bytes.")
            form = req.get_media(default_when_empty={}) if req.content_length else {}
            req.context.form = form if isinstance(form, dict) else {}
            if not resource.public and not hmac.compare_digest(form_field(req, "csrf").encode(),
                                                               session["k"].encode()):
                raise DashboardError(403, "Refused", "The form's CSRF token is missing or wrong; "
                                                     "reload the page and try again.")

    def process_response(self, req, resp, resource, req_succeeded):
        """Security headers on every dashboard response; pages are never cached."""
        if req.path == PREFIX or req.path.startswith(PREFIX + "/"):
            resp.set_headers(SECURITY_HEADERS)
            if not req.path.startswith(f"{PREFIX}/static/"):
                resp.set_header("Cache-Control", "no-store")


class Rates:
    """Per-minute rates of this host's counters, from samples taken as the overview is read.

    Keeps (monotonic seconds, {name: value}) samples of the last
    :data:`RATE_WINDOW_S` seconds (plus the one just before) in this process.
    """

    COUNTERS = {"created": ("timer_created_total", None),
                "fired": ("timer_fired_total", None),
                "failed": ("timer_webhook_attempts_total", ("outcome", "fail"))}

    def __init__(self):
        self.samples = collections.deque()
        self._lock = threading.Lock()

    @classmethod
    def values(cls, samples):
        """{created, fired, failed} counter totals from ``metrics.host_samples()``."""
        out = {}
        for key, (name, label) in cls.COUNTERS.items():
            out[key] = sum(value for labels, value in samples.get(name, ())
                           if label is None or labels.get(label[0]) == label[1])
        return out

    def per_minute(self, values, now):
        """Record ``values`` at ``now`` (monotonic s); {name: per-minute rate or None, "span_s": s}.

        None until the samples span at least :data:`RATE_MIN_SPAN_S` seconds.
        A counter that went down (every process restarted) counts as 0.
        """
        with self._lock:
            self.samples.append((now, values))
            while len(self.samples) > 1 and self.samples[1][0] <= now - RATE_WINDOW_S:
                self.samples.popleft()
            then, old = self.samples[0]
        span = now - then
        rates = {key: (max(0.0, values[key] - old[key]) * 60 / span if span >= RATE_MIN_SPAN_S else None)
                 for key in values}
        return {**rates, "span_s": span}


def lateness_buckets(samples):
    """The fire lateness histogram as [(label, count)] per bucket (not cumulative), and the total."""
    cumulative = sorted(((float(labels["le"]), value) for labels, value
                         in samples.get("timer_fire_lateness_seconds_bucket", ())), key=lambda b: b[0])
    buckets, previous, lower = [], 0.0, None
    for upper, total in cumulative:
        if upper == float("inf"):
            label = f"> {lower:g} s"
        else:
            label = f"≤ {upper:g} s"
        buckets.append((label, int(total - previous)))
        previous, lower = total, upper
    return buckets, int(previous)


class Page:
    """Base of every dashboard resource; ``public`` pages need no session."""

    public = False

    def __init__(self, store, settings, sessions):
        self.store = store
        self.settings = settings
        self.sessions = sessions
        self.actions = settings.dashboard == "on"

    def page(self, req, resp, template, http_status=200, **context):
        """Render ``template`` with what every page shows (session, actions, flash)."""
        session = getattr(req.context, "session", None)
        done = req.get_param("done")
        context.setdefault("flash", DONE.get(done, ""))
        render(resp, template, http_status, csrf=session["k"] if session else "",
               signed_in=bool(session and session.get("c")), actions=self.actions, **context)

    def indexes(self):
        """Every shard that may hold timers (as ``GET /timers`` lists them)."""
        return self.store.known_shards(self.settings.shards)


class Overview(Page):
    """``GET /dashboard``: shard depths, rates, lateness histogram, Redis memory."""

    def __init__(self, store, settings, sessions):
        super().__init__(store, settings, sessions)
        self.rates = Rates()

    def on_get(self, req, resp):
        """The overview page."""
        samples = metrics.host_samples()
        buckets, first_attempts = lateness_buckets(samples)
        shards = shard_depths(self.store, self.settings.shards)
        memory = self.store.control.info("memory")
        self.page(req, resp, "overview.html", shards=shards,
                  totals={k: sum(s[k] for s in shards) for k in ("scheduled", "queued", "in_flight")},
                  rates=self.rates.per_minute(Rates.values(samples), time.monotonic()),
                  buckets=buckets, lateness_total=first_attempts,
                  largest_bucket=max([count for _, count in buckets] + [1]),
                  memory={"used": memory.get("used_memory_human", "?"),
                          "peak": memory.get("used_memory_peak_human", "?"),
                          "max": memory.get("maxmemory_human", "0B"),
                          "policy": memory.get("maxmemory_policy", "?")},
                  as_of=rfc3339_ms(time.time() * 1000))


class TimerList(Page):
    """``GET /dashboard/timers?status=&host=&cursor=``: one page of timers by status.

    Pages through ``TimerStore.list`` with the API's cursors, :data:`PAGE`
    timers at a time. A host filter keeps the timers whose URL's host is
    ``host`` from at most :data:`FILTER_SCAN_PAGES` pages per request, so a
    request never reads more than that whatever the number of timers; the
    next link goes on from where it stopped.
    """

    def on_get(self, req, resp):
        """The list page (400 for an unknown status or a bad cursor)."""
        status = req.get_param("status") or "scheduled"
        if status not in STATUSES:
            raise DashboardError(400, "Unknown status", "status must be one of: " + ", ".join(STATUSES))
        host = normalize_host((req.get_param("host") or "").strip())
        cursor = req.get_param("cursor")
        try:
            position = decode_cursor(cursor, status) if cursor else None
        except FieldError as exc:
            raise DashboardError(400, "Bad cursor", exc.description) from None
        items, scanned = [], 0
        indexes = self.indexes()
        for _ in range(FILTER_SCAN_PAGES if host else 1):
            page, position = self.store.list(status, indexes, PAGE, position)
            scanned += len(page)
            items += [item for item in page if not host or url_host(item[1]["url"]) == host]
            if position is None or len(items) >= PAGE:
                break
        now = now_ms(self.store.control)
        self.page(req, resp, "timers.html", status=status, statuses=STATUSES, host=host,
                  cursor=cursor or "", timers=[timer_view(i, r, now) for i, r in items], scanned=scanned,
                  page_size=PAGE,
                  next_cursor=encode_cursor(status, position) if position else "",
                  pending=PENDING, as_of=rfc3339_ms(now))


class Search(Page):
    """``GET /dashboard/search?id=``: go to the timer's page."""

    def on_get(self, req, resp):
        """303 to ``/dashboard/timers/<id>``; 404 page when ``id`` is not a timer id."""
        given = (req.get_param("id") or "").strip()
        timer_id = _TIMER_ID.convert(given)
        if timer_id is None:
            raise DashboardError(404, "Not a timer id", f"{given!r} is not a timer id "
                                                        "(a positive integer such as 287533320123002).")
        raise falcon.HTTPSeeOther(f"{PREFIX}/timers/{timer_id}")


class TimerPage(Page):
    """``GET /dashboard/timers/<id>``: every field of the API's view, and the actions."""

    def on_get(self, req, resp, timer_id):
        """The timer's page; 404 page when there is no such timer."""
        record, now = self.store.get(timer_id)
        if record is None:
            raise DashboardError(404, "Timer not found", f"No timer with id {timer_id}.")
        self.page(req, resp, "timer.html", timer=timer_view(timer_id, record, now),
                  shard=home_shard(timer_id), pending=PENDING, as_of=rfc3339_ms(now))


class Cancel(Page):
    """``POST /dashboard/timers/<id>/cancel``: ``TimerStore.cancel``, as ``DELETE /timers/<id>``."""

    def on_post(self, req, resp, timer_id):
        """303 to the timer's page; 404 unknown, 409 once firing, fired or failed."""
        was = self.store.cancel(timer_id)
        if was == "missing":
            raise DashboardError(404, "Timer not found", f"No timer with id {timer_id}.")
        if was in CANCEL_REFUSED:
            raise DashboardError(409, "Too late",
                                 f"Timer {timer_id} is already {was}; it cannot be cancelled.")
        log.info("timer cancelled", extra={"timer_id": timer_id, "was": was, "via": "dashboard"})
        raise falcon.HTTPSeeOther(f"{PREFIX}/timers/{timer_id}?done=cancel")


class Run(Page):
    """``POST /dashboard/timers/<id>/run``: run now (pending) or re-drive one (failed).

    ``TimerStore.run_now``, refused as ``POST /timers/<id>/run`` refuses
    (``resources.RUN_REFUSED``).
    """

    def on_post(self, req, resp, timer_id):
        """303 to the timer's page; 404 unknown, 409 once firing, fired or cancelled."""
        was, _, _ = self.store.run_now(timer_id)
        if was == "missing":
            raise DashboardError(404, "Timer not found", f"No timer with id {timer_id}.")
        if was in RUN_REFUSED:
            raise DashboardError(409, "Cannot run", f"Timer {timer_id} is already {was}; it cannot be run.")
        log.info("timer run now", extra={"timer_id": timer_id, "was": was, "via": "dashboard"})
        done = "redrive" if was == "failed" else "run"
        raise falcon.HTTPSeeOther(f"{PREFIX}/timers/{timer_id}?done={done}")


class Redrive(Page):
    """``POST /dashboard/redrive``: re-drive every failed timer (optionally of one host).

    Form fields: ``host`` (optional), ``cursor`` (where a previous request
    stopped, optional) and ``confirm``. Without ``confirm=yes`` it only
    counts (``resources.redrive_failed`` as a dry run) and shows the count
    with a confirmation form; with it, it re-drives. Either stops after
    :data:`resources.RUN_MAX_EXAMINED` failed timers examined, as
    ``POST /timers/run`` does; the page then says more may remain and offers
    to go on from there (counting first again).
    """

    def on_post(self, req, resp):
        """The count and confirmation page, or the result page; 400 page for a bad cursor."""
        host = normalize_host(form_field(req, "host")) or None
        cursor = form_field(req, "cursor")
        try:
            position = decode_cursor(cursor, "failed") if cursor else None
        except FieldError as exc:
            raise DashboardError(400, "Bad cursor", exc.description) from None
        confirmed = form_field(req, "confirm") == "yes"
        matched, run, position = redrive_failed(self.store, self.indexes(), host, dry_run=not confirmed,
                                                position=position)
        log.info("failed timers re-driven" if confirmed else "re-drive counted",
                 extra={"host": host, "matched": matched, "run": run, "via": "dashboard"})
        self.page(req, resp, "redrive.html", host=host or "", matched=matched, run=run,
                  confirmed=confirmed, cursor=cursor,
                  next_cursor=encode_cursor("failed", position) if position else "",
                  bound=RUN_MAX_EXAMINED)


class SignIn(Page):
    """``GET``/``POST /dashboard/signin``: the sign-in form, and signing in with an API token."""

    public = True

    def on_get(self, req, resp):
        """The form (with no tokens configured: straight to the overview)."""
        if not self.settings.api_tokens:
            raise falcon.HTTPSeeOther(PREFIX)
        self.page(req, resp, "signin.html", error="")

    def on_post(self, req, resp):
        """A valid token starts a session (303 to the overview); else 401 with the form again."""
        token = form_field(req, "token")
        if not self.sessions.valid_token(token):
            log.warning("dashboard sign-in refused")
            self.page(req, resp, "signin.html", http_status=401, error="That is not a valid API token.")
            return
        self.sessions.issue(req, resp, token)
        log.info("dashboard sign-in", extra={"client": client_scope(token)})
        raise falcon.HTTPSeeOther(PREFIX)


class SignOut(Page):
    """``POST /dashboard/signout``: end the session."""

    def on_post(self, req, resp):
        """303 to the sign-in page (or the overview without tokens)."""
        self.sessions.end(resp)
        raise falcon.HTTPSeeOther(f"{PREFIX}/signin?done=signed-out" if self.settings.api_tokens
                                  else PREFIX)


def _error_page(req, resp, exc, params):
    render(resp, "error.html", exc.status, title=exc.title, description=exc.description)


def add_routes(app, store, settings):
    """Mount the dashboard on ``app`` unless ``settings.dashboard`` is ``off``.

    Routes: ``/dashboard``, ``/dashboard/timers``, ``/dashboard/timers/<id>``,
    ``/dashboard/search``, ``/dashboard/signin``, ``/dashboard/signout``,
    ``/dashboard/static/*``, and unless ``readonly`` the actions
    ``/dashboard/timers/<id>/cancel``, ``/dashboard/timers/<id>/run`` and
    ``/dashboard/redrive``. Needs the ``timer_id`` path converter on ``app``.
    """
    if settings.dashboard == "off":
        return
    sessions = Sessions(store.control, settings.api_tokens, settings.dashboard_session_seconds)
    app.add_middleware(Guard(sessions))
    app.add_error_handler(DashboardError, _error_page)
    routes = {"": Overview, "/timers": TimerList, "/search": Search,
              "/timers/{timer_id:timer_id}": TimerPage, "/signin": SignIn, "/signout": SignOut}
    if settings.dashboard == "on":
        routes.update({"/timers/{timer_id:timer_id}/cancel": Cancel,
                       "/timers/{timer_id:timer_id}/run": Run, "/redrive": Redrive})
    for path, resource in routes.items():
        app.add_route(PREFIX + path, resource(store, settings, sessions))
    app.add_static_route(f"{PREFIX}/static", STATIC_DIR)
