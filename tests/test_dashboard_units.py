"""The dashboard's logic without a browser: rates, the lateness histogram, hosts, sessions, settings,
the bounded bulk re-drive and its page."""

import time
import types

import falcon
import falcon.testing
import itsdangerous
import itsdangerous.timed
import pytest

from api import resources
from api.auth import client_scope
from api.dashboard import COOKIE, Rates, Sessions, lateness_buckets, render
from api.validation import normalize_host, url_host
from sharding import config
from sharding.store import TimerStore
from tests.test_store import _attempt


def test_rates_wait_for_a_span_then_give_per_minute():
    rates = Rates()
    assert rates.per_minute({"created": 0, "fired": 0, "failed": 0}, 100.0)["created"] is None
    assert rates.per_minute({"created": 4, "fired": 0, "failed": 0}, 104.0)["created"] is None
    got = rates.per_minute({"created": 10, "fired": 3, "failed": 1}, 110.0)
    assert got == {"created": 60.0, "fired": 18.0, "failed": 6.0, "span_s": 10.0}


def test_rates_cover_the_last_minute_only():
    rates = Rates()
    for t in range(0, 200, 10):
        rates.per_minute({"created": t, "fired": 0, "failed": 0}, float(t))
    # Samples at 130..190: the oldest kept is the last one at or before 190 - 60.
    got = rates.per_minute({"created": 200, "fired": 0, "failed": 0}, 200.0)
    assert (got["span_s"], got["created"]) == (60.0, 60.0)


def test_rates_a_counter_that_went_down_counts_as_zero():
    rates = Rates()
    rates.per_minute({"created": 50, "fired": 0, "failed": 0}, 0.0)
    assert rates.per_minute({"created": 2, "fired": 0, "failed": 0}, 30.0)["created"] == 0.0


def test_rates_read_the_counters_by_name_and_outcome():
    samples = {"timer_created_total": [({}, 7.0)], "timer_fired_total": [({}, 5.0)],
               "timer_webhook_attempts_total": [({"outcome": "ok"}, 5.0), ({"outcome": "retry"}, 9.0),
                                                ({"outcome": "fail"}, 2.0)]}
    assert Rates.values(samples) == {"created": 7.0, "fired": 5.0, "failed": 2.0}
    assert Rates.values({}) == {"created": 0, "fired": 0, "failed": 0}


def test_lateness_buckets_from_cumulative_counts():
    samples = {"timer_fire_lateness_seconds_bucket": [
        ({"le": "+Inf"}, 9.0), ({"le": "0.05"}, 3.0), ({"le": "1.0"}, 8.0), ({"le": "0.1"}, 5.0)]}
    assert lateness_buckets(samples) == ([("≤ 0.05 s", 3), ("≤ 0.1 s", 2), ("≤ 1 s", 3), ("> 1 s", 1)], 9)
    assert lateness_buckets({}) == ([], 0)


@pytest.mark.parametrize(("url", "host"), [
    ("https://Example.COM:8443/x", "example.com"), ("http://user:pw@a.test/", "a.test"),
    ("http://[::1]:80/", "::1"), ("https://x.test/<script>", "x.test")])
def test_url_host(url, host):
    assert url_host(url) == host


@pytest.mark.parametrize(("given", "host"), [("A.Test.", "a.test"), ("[::1]", "::1"), ("x.test", "x.test")])
def test_normalize_host(given, host):
    assert normalize_host(given) == host


def test_redrive_failed_stops_at_its_bound_and_goes_on_from_there(redis_client, redis_server, monkeypatch):
    store = TimerStore(redis_server.url)
    failed = []
    for n in range(7):
        timer_id, _, _ = store.create(f"https://{'a' if n % 2 else 'b'}.test/h", 0, n % 3,
                                      retry={"max_attempts": 1})
        assert _attempt(store, timer_id)[1][1] == "failed"
        failed.append(timer_id)
    of_a = failed[1::2]
    monkeypatch.setattr(resources, "RUN_PAGE", 2)
    monkeypatch.setattr(resources, "RUN_MAX_EXAMINED", 4)
    indexes = [0, 1, 2]
    # A dry run counts the first 4 (2 of host a) and changes nothing.
    matched, run, position = resources.redrive_failed(store, indexes, "a.test", dry_run=True)
    assert (matched, run, position is not None) == (2, 0, True)
    assert [store.get(i)[0]["status"] for i in failed] == ["failed"] * 7
    matched, run, position = resources.redrive_failed(store, indexes, "a.test")
    assert (matched, run) == (2, 2)
    matched, run, position = resources.redrive_failed(store, indexes, "a.test", position=position)
    assert (matched, run, position) == (1, 1, None)
    assert {i for i in failed if store.get(i)[0]["status"] == "retrying"} == set(of_a)
    assert resources.redrive_failed(store, indexes, "a.test") == (0, 0, None)


def _redrive_page(**context):
    resp = falcon.Response()
    render(resp, "redrive.html", **{"host": "a.test", "matched": 3, "run": 3, "confirmed": True,
                                    "cursor": "", "next_cursor": "", "bound": 5000, **context})
    return resp.text


def test_redrive_page_says_when_more_may_remain():
    assert "more may remain" not in _redrive_page()
    assert "Re-drove 3 of 3 failed timers with host a.test." in _redrive_page()
    page = _redrive_page(next_cursor="abc")
    assert "Stopped after examining 5000 failed timers (the bound of one request): more may remain." in page
    assert '<input type="hidden" name="cursor" value="abc">' in page
    assert 'name="confirm"' not in page
    assert ">Run again</button>" in page
    count = _redrive_page(confirmed=False, matched=1, cursor="xyz")
    assert "1 failed timer with host a.test would be re-driven" in count
    assert '<input type="hidden" name="cursor" value="xyz">' in count
    assert '<input type="hidden" name="confirm" value="yes">' in count
    assert "more may remain" not in count
    more = _redrive_page(confirmed=False, next_cursor="abc")
    assert "Counted in the first 5000 failed timers (the bound of one request): more may remain." in more
    assert ">Count the next ones</button>" in more


def _client(sessions):
    """A minimal app issuing (``/dashboard/issue?token=``) and reading (``/dashboard/read``) sessions."""
    class Probe:
        def on_get(self, req, resp):
            sessions.issue(req, resp, req.get_param("token") or "")

        def on_get_read(self, req, resp):
            resp.media = sessions.read(req)

    app = falcon.App()
    app.add_route("/dashboard/issue", Probe())
    app.add_route("/dashboard/read", Probe(), suffix="read")
    return falcon.testing.TestClient(app)


def _issue(client, token="", https=False):
    headers = {"X-Forwarded-Proto": "https"} if https else {}
    return client.simulate_get("/dashboard/issue", params={"token": token} if token else None,
                               headers=headers).cookies[COOKIE]


def test_session_cookie_attributes(redis_client):
    client = _client(Sessions(redis_client, ["tok"], 3600))
    cookie = _issue(client, "tok")
    assert (cookie.http_only, cookie.same_site, cookie.secure, cookie.path, cookie.max_age) == (
        True, "Strict", False, "/dashboard", 3600)
    assert "tok" not in cookie.value
    assert _issue(client, "tok", https=True).secure is True


def test_session_expires_after_max_age(redis_client, monkeypatch):
    sessions = Sessions(redis_client, ["tok"], 60)
    client = _client(sessions)
    monkeypatch.setattr(itsdangerous.timed, "time", types.SimpleNamespace(time=lambda: time.time() - 61))
    old = _issue(client, "tok").value
    monkeypatch.setattr(itsdangerous.timed, "time", types.SimpleNamespace(time=lambda: time.time() - 30))
    recent = _issue(client, "tok").value
    monkeypatch.undo()
    assert client.simulate_get("/dashboard/read", cookies={COOKIE: old}).json is None
    assert client.simulate_get("/dashboard/read", cookies={COOKIE: recent}).json["c"]


def test_session_refused_when_forged_anonymous_or_its_token_removed(redis_client):
    client = _client(Sessions(redis_client, ["tok", "other"], 3600))
    value = _issue(client, "tok").value
    anonymous = _client(Sessions(redis_client, [], 3600))
    assert anonymous.simulate_get("/dashboard/read", cookies={COOKIE: value}).json["c"]
    # Another session's payload under this signature; a session signed with a guessed key.
    spliced = _issue(client, "other").value.split(".")[0] + "." + value.split(".", 1)[1]
    guessed = itsdangerous.URLSafeTimedSerializer("guess", salt="timer-dashboard-session").dumps(
        {"k": "x", "c": client_scope("tok")})
    for forged in (spliced, guessed):
        assert client.simulate_get("/dashboard/read", cookies={COOKIE: forged}).json is None
    assert client.simulate_get("/dashboard/read", cookies={COOKIE: _issue(anonymous).value}).json is None
    # The same signing key (in Redis), but "tok" is no longer configured.
    rotated = _client(Sessions(redis_client, ["other"], 3600))
    assert rotated.simulate_get("/dashboard/read", cookies={COOKIE: value}).json is None
    # Every API process shares the key: a session from one is valid in another.
    assert _client(Sessions(redis_client, ["tok"], 3600)).simulate_get(
        "/dashboard/read", cookies={COOKIE: value}).json["c"]


@pytest.mark.parametrize(("raw", "mode"), [("", "on"), ("on", "on"), ("OFF", "off"),
                                           (" readonly ", "readonly")])
def test_dashboard_setting(monkeypatch, raw, mode):
    monkeypatch.setenv("TIMER_DASHBOARD", raw)
    assert config.load().dashboard == mode


@pytest.mark.parametrize(("name", "raw"), [("TIMER_DASHBOARD", "read-only"),
                                           ("TIMER_DASHBOARD_SESSION_SECONDS", "59")])
def test_dashboard_setting_refused(monkeypatch, name, raw):
    monkeypatch.setenv(name, raw)
    with pytest.raises(config.ConfigError, match=name):
        config.load()
