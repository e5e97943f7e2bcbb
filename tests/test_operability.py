"""End-to-end tests of the operability endpoints over HTTP against the real running service:
cancelling (DELETE /timers/<id>), listing by status, Idempotency-Key, health and readiness,
Prometheus metrics, request ids, and the OpenAPI document with its /docs page
(``shared/CONTRACT.md`` sections 2 and 4)."""

import calendar
import concurrent.futures
import re
import threading
import time

import falcon
import pytest
import requests
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from api.idempotency import IdempotencyKeys
from tests.harness import consumers_ready, json_lines, wait_until

TIMEOUT = 10
DEAD_REDIS = "redis://127.0.0.1:1/0"
STATUSES = ("scheduled", "retrying", "firing", "fired", "failed", "cancelled")
RFC3339_MS = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?Z$")


# --- helpers -----------------------------------------------------------------------------------------

def _create(service, url, headers=None, **duration):
    response = requests.post(f"{service.url}/timers", json={"url": url, **duration}, headers=headers,
                             timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    return response


def _created_id(service, url, **duration):
    return _create(service, url, **duration).json()["id"]


def _delete(service, timer_id):
    return requests.delete(f"{service.url}/timers/{timer_id}", timeout=TIMEOUT)


def _list(service, **params):
    return requests.get(f"{service.url}/timers", params=params, timeout=TIMEOUT)


def _listed_ids(service, status):
    """Every id listed under ``status``, following the cursors (page size 1000)."""
    ids, cursor = [], None
    while True:
        params = {"status": status, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        response = _list(service, **params)
        assert response.status_code == 200, response.text
        page = response.json()
        ids += [timer["id"] for timer in page["timers"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


def _epoch_s(rfc3339):
    match = RFC3339_MS.match(rfc3339)
    assert match, rfc3339
    fields = (int(g) for g in match.groups()[:6])
    return calendar.timegm(tuple(fields)) + float(match.group(7) or 0)


def _assert_error(response, status, field=None):
    """``response`` is the contract's JSON error answer with ``status``, naming ``field``."""
    where = f"{response.request.method} {response.request.url}"
    assert response.status_code == status, f"{where}: {response.status_code} {response.text[:300]}"
    assert response.headers.get("Content-Type", "").startswith("application/json"), where
    body = response.json()
    assert isinstance(body.get("title"), str) and body["title"], (where, body)
    assert isinstance(body.get("description"), str) and body["description"], (where, body)
    if field is not None:
        assert field in body["description"], (where, body)
    return body


def _status(service, timer_id):
    return service.get(timer_id)["status"]


def _wait_status(service, timer_id, status, timeout=15):
    wait_until(lambda: _status(service, timer_id) == status, timeout=timeout,
               message=f"timer {timer_id} to be {status}")


def _start_api_on_dead_redis(make_service):
    """The API alone, pointed at a Redis that is not there, ready once GET /healthz answers."""
    return make_service(env={"REDIS_URL": DEAD_REDIS}).start("api", ready_path="/healthz")


# --- DELETE /timers/<id> -----------------------------------------------------------------------------

def test_cancelled_timer_reads_cancelled_and_never_fires(service, receiver):
    cancelled = _create(service, f"{receiver.url}/cancel", seconds=2).json()
    control = _created_id(service, f"{receiver.url}/control", seconds=1)
    timer_id = cancelled["id"]

    response = _delete(service, timer_id)
    assert response.status_code == 204, response.text
    assert response.content == b""
    read = service.get(timer_id)
    assert read["status"] == "cancelled"
    assert read["time_left"] == 0

    # Cancelling again is fine: still 204, still cancelled.
    again = _delete(service, timer_id)
    assert again.status_code == 204, again.text
    assert again.content == b""

    # The service delivers meanwhile (the control timer), yet never the cancelled one.
    wait_until(lambda: receiver.received(f"/control/{control}"), timeout=15, message="the control timer")
    time.sleep(max(0.0, _epoch_s(cancelled["fire_at"]) + 2 - time.time()))
    assert receiver.received(f"/cancel/{timer_id}") == []
    assert len(receiver.received(f"/control/{control}")) == 1
    read = service.get(timer_id)
    assert (read["status"], read["time_left"], read["attempts"]) == ("cancelled", 0, 0)


def test_delete_of_a_fired_timer_is_409_and_of_an_unknown_one_404(service, receiver):
    fired = _created_id(service, f"{receiver.url}/fired")
    _wait_status(service, fired, "fired")
    body = _assert_error(_delete(service, fired), 409)
    assert "fired" in body["description"]
    assert _status(service, fired) == "fired"
    assert len(receiver.received(f"/fired/{fired}")) == 1

    _assert_error(_delete(service, fired + 1000 * 1000), 404)
    _assert_error(requests.delete(f"{service.url}/timers/not-a-number", timeout=TIMEOUT), 404)


def _delete_all_at(service, ids, moment):
    """DELETE every id at ``moment`` (epoch s), each from its own thread on an already open connection.

    Returns:
        {id: status code}.
    """
    ready = threading.Barrier(len(ids))

    def cancel(timer_id):
        with requests.Session() as session:
            assert session.get(f"{service.url}/healthz", timeout=TIMEOUT).status_code == 200
            ready.wait(timeout=30)
            time.sleep(max(0.0, moment - time.time()))
            return session.delete(f"{service.url}/timers/{timer_id}", timeout=TIMEOUT).status_code

    with concurrent.futures.ThreadPoolExecutor(len(ids)) as pool:
        return dict(zip(ids, pool.map(cancel, ids), strict=True))


def test_cancel_racing_claims_is_either_cancelled_or_delivered_once(service, receiver, figures):
    count = 30
    url = f"{receiver.url}/race"
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        created = list(pool.map(lambda _: _create(service, url, seconds=2).json(), range(count)))
    ids = [timer["id"] for timer in created]
    fire_times = sorted(_epoch_s(timer["fire_at"]) for timer in created)

    # Every DELETE is sent at the same moment, timed to reach the API (30 at once take some 0.1 s)
    # while the timers are being claimed.
    codes = _delete_all_at(service, ids, fire_times[count // 2] - 0.1)
    assert set(codes.values()) <= {204, 409}, codes
    cancelled = [timer_id for timer_id, code in codes.items() if code == 204]
    too_late = [timer_id for timer_id, code in codes.items() if code == 409]

    for timer_id in too_late:
        _wait_status(service, timer_id, "fired")
    # Past every fire time by 2 s: nothing cancelled arrives late, nothing fired arrives twice.
    time.sleep(max(0.0, fire_times[-1] + 2 - time.time()))
    both = [timer_id for timer_id in cancelled if receiver.received(f"/race/{timer_id}")]
    assert both == [], f"timers answered 204 to DELETE and were delivered anyway: {both}"
    deliveries = {timer_id: len(receiver.received(f"/race/{timer_id}")) for timer_id in too_late}
    assert deliveries == {timer_id: 1 for timer_id in too_late}
    for timer_id in cancelled:
        assert _status(service, timer_id) == "cancelled"
    assert sorted(_listed_ids(service, "cancelled")) == sorted(cancelled)
    assert sorted(_listed_ids(service, "fired")) == sorted(too_late)
    figures.append(f"cancel race: {count} DELETEs at the fire time -> {len(cancelled)} cancelled (204), "
                   f"{len(too_late)} already firing/fired (409, each delivered once)")


# --- GET /timers?status=... --------------------------------------------------------------------------

def test_list_query_validation(service):
    _assert_error(_list(service), 400, "status")
    _assert_error(_list(service, status="nope"), 400, "status")
    _assert_error(_list(service, status="SCHEDULED"), 400, "status")
    for limit in ("0", "abc", "-1", "1.5", "", "\u00b2", "\u0667"):  # SUPERSCRIPT TWO, ARABIC-INDIC SEVEN
        _assert_error(_list(service, status="scheduled", limit=limit), 400, "limit")
    for name, values in (("status", ["fired", "failed"]), ("limit", ["1", "2"]), ("cursor", ["a", "b"])):
        _assert_error(_list(service, **{"status": "fired", name: values}), 400, name)
    for cursor in ("garbage", "!!!", "eyJ4IjoxfQ"):
        _assert_error(_list(service, status="scheduled", cursor=cursor), 400, "cursor")

    capped = _list(service, status="scheduled", limit=5000)
    assert capped.status_code == 200, capped.text
    assert capped.json() == {"timers": [], "next_cursor": None}
    for status in STATUSES:
        response = _list(service, status=status)
        assert response.status_code == 200, (status, response.text)
        assert response.json() == {"timers": [], "next_cursor": None}


def test_list_scheduled_pages_of_ten(service):
    created = [_created_id(service, "https://x.test/page", hours=1) for _ in range(25)]

    pages, cursors, cursor = [], [], None
    while True:
        params = {"status": "scheduled", "limit": 10, **({"cursor": cursor} if cursor else {})}
        response = _list(service, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"timers", "next_cursor"}
        pages.append(body["timers"])
        cursor = body["next_cursor"]
        cursors.append(cursor)
        if cursor is None:
            break
        assert len(pages) < 4, "more pages than timers"

    assert [len(page) for page in pages] == [10, 10, 5]
    assert [c is None for c in cursors] == [False, False, True]
    assert all(isinstance(c, str) and c for c in cursors[:2])
    listed = [timer["id"] for page in pages for timer in page]
    assert len(listed) == len(set(listed)) == 25
    assert sorted(listed) == sorted(created)
    for timer in (timer for page in pages for timer in page):
        assert timer["status"] == "scheduled"
        assert timer["url"] == "https://x.test/page"
        assert timer["time_left"] in (3600, 3599)

    # A cursor belongs to its status.
    _assert_error(_list(service, status="fired", cursor=cursors[0]), 400, "cursor")


def test_list_fired_failed_and_cancelled(service, receiver):
    receiver.script("/gone", [(404, {}, 0)])
    fired = _created_id(service, f"{receiver.url}/ok")
    failed = _created_id(service, f"{receiver.url}/gone")
    cancelled = _created_id(service, f"{receiver.url}/later", hours=1)
    pending = _created_id(service, f"{receiver.url}/later", hours=1)
    assert _delete(service, cancelled).status_code == 204
    _wait_status(service, fired, "fired")
    _wait_status(service, failed, "failed")

    def listed(status):
        response = _list(service, status=status)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["next_cursor"] is None
        return body["timers"]

    [fired_view] = listed("fired")
    assert (fired_view["id"], fired_view["status"], fired_view["attempts"]) == (fired, "fired", 1)
    [failed_view] = listed("failed")
    assert (failed_view["id"], failed_view["status"], failed_view["attempts"]) == (failed, "failed", 1)
    assert "404" in failed_view["last_error"]
    [cancelled_view] = listed("cancelled")
    assert (cancelled_view["id"], cancelled_view["status"], cancelled_view["time_left"]) == (
        cancelled, "cancelled", 0)
    assert [timer["id"] for timer in listed("scheduled")] == [pending]
    assert listed("retrying") == []
    assert listed("firing") == []


# --- Idempotency-Key ---------------------------------------------------------------------------------

def test_idempotency_key_over_http(make_service):
    service = make_service().start("api")
    body = {"url": "https://x.test/idem", "minutes": 5}

    def post(key, payload=body):
        return requests.post(f"{service.url}/timers", json=payload, headers={"Idempotency-Key": key},
                             timeout=TIMEOUT)

    first, second = post("order-1"), post("order-1")
    assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
    assert second.json()["id"] == first.json()["id"]
    assert second.json() == first.json()
    assert second.headers["Location"] == first.headers["Location"] == f"/timers/{first.json()['id']}"
    assert _listed_ids(service, "scheduled") == [first.json()["id"]]

    mismatch = post("order-1", {"url": "https://x.test/idem", "minutes": 6})
    _assert_error(mismatch, 422)
    assert _listed_ids(service, "scheduled") == [first.json()["id"]]

    other = post("order-2")
    assert other.status_code == 201, other.text
    assert other.json()["id"] != first.json()["id"]
    assert sorted(_listed_ids(service, "scheduled")) == sorted([first.json()["id"], other.json()["id"]])

    _assert_error(post("k" * 256), 400, "Idempotency-Key")
    longest = post("k" * 255)
    assert longest.status_code == 201, longest.text
    assert len(_listed_ids(service, "scheduled")) == 3


def test_idempotency_keys_store(redis_client):
    keys = IdempotencyKeys(redis_client)
    response = {"status": 201, "location": "/timers/1000", "body": {"id": 1000, "time_left": 300}}

    assert keys.begin("client", "key-1", "fp-a") is None
    with pytest.raises(falcon.HTTPConflict):
        keys.begin("client", "key-1", "fp-a")
    with pytest.raises(falcon.HTTPUnprocessableEntity):
        keys.begin("client", "key-1", "fp-b")
    # A pending key expires on its own (a first request that died must not block the key for ever).
    [stored_key] = redis_client.keys("*")
    assert 0 < redis_client.ttl(stored_key) <= 60

    keys.complete("client", "key-1", response)
    assert keys.begin("client", "key-1", "fp-a") == response
    assert keys.begin("client", "key-1", "fp-a") == response
    with pytest.raises(falcon.HTTPUnprocessableEntity):
        keys.begin("client", "key-1", "fp-b")
    # Kept for 24 h.
    assert 24 * 3600 - 5 <= redis_client.ttl(stored_key) <= 24 * 3600

    # Another client's key of the same name is its own.
    assert keys.begin("other-client", "key-1", "fp-b") is None

    # An abandoned first request (it failed) frees the key for a retry, which is then the first.
    assert keys.begin("client", "key-2", "fp-a") is None
    keys.abandon("client", "key-2", "fp-a")
    assert keys.begin("client", "key-2", "fp-a") is None
    with pytest.raises(falcon.HTTPConflict):
        keys.begin("client", "key-2", "fp-a")
    # Abandoning under another body changes nothing.
    keys.abandon("client", "key-2", "fp-b")
    with pytest.raises(falcon.HTTPConflict):
        keys.begin("client", "key-2", "fp-a")


# --- /healthz and /readyz ----------------------------------------------------------------------------

def test_healthz_and_readyz_while_redis_runs(make_service):
    service = make_service().start("api")
    health = requests.get(f"{service.url}/healthz", timeout=TIMEOUT)
    assert health.status_code == 200
    assert health.headers["Content-Type"].startswith("application/json")
    assert health.json() == {"status": "ok"}
    ready = requests.get(f"{service.url}/readyz", timeout=TIMEOUT)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready"}


def test_readyz_is_503_when_redis_is_not_there(make_service):
    dead = _start_api_on_dead_redis(make_service)
    health = requests.get(f"{dead.url}/healthz", timeout=TIMEOUT)
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    _assert_error(requests.get(f"{dead.url}/readyz", timeout=TIMEOUT), 503)


# --- /metrics ----------------------------------------------------------------------------------------

METRIC_NAMES = ("timer_created_total", "timer_fired_total", "timer_webhook_attempts_total",
                "timer_fire_lateness_seconds_count", "timer_fire_lateness_seconds_sum", "timer_shard_depth",
                "timer_http_request_duration_seconds_count")


def _scrape(service):
    response = requests.get(f"{service.url}/metrics", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return response.text, samples


def _value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_add_up_across_every_process(service, receiver, figures):
    ids = [_created_id(service, f"{receiver.url}/metrics", seconds=seconds) for seconds in (0, 1, 1)]
    for timer_id in ids:
        _wait_status(service, timer_id, "fired")
    # A consumer counts the delivery just after recording it: wait for the counter, then compare.
    wait_until(lambda: _value(_scrape(service)[1], "timer_fired_total") == 3, timeout=10,
               message="timer_fired_total to reach 3")
    text, samples = _scrape(service)

    assert _value(samples, "timer_created_total") == 3
    assert _value(samples, "timer_fired_total") == 3
    assert _value(samples, "timer_webhook_attempts_total", outcome="ok") == 3
    assert _value(samples, "timer_webhook_attempts_total", outcome="retry") in (None, 0)
    assert _value(samples, "timer_webhook_attempts_total", outcome="fail") in (None, 0)
    assert _value(samples, "timer_fire_lateness_seconds_count") == 3
    assert _value(samples, "timer_fire_lateness_seconds_bucket", le="+Inf") == 3
    assert 0 <= _value(samples, "timer_fire_lateness_seconds_sum") < 3
    assert {shard: _value(samples, "timer_shard_depth", shard=str(shard)) for shard in range(4)} == {
        0: 0, 1: 0, 2: 0, 3: 0}
    assert _value(samples, "timer_http_request_duration_seconds_count",
                  method="POST", route="/timers", status="201") == 3

    lines = [line for line in text.splitlines()
             if line.startswith(METRIC_NAMES) and not line.startswith("#")]
    figures.append("/metrics after 3 timers:")
    figures.extend(f"  {line}" for line in lines)


def test_shard_depth_counts_pending_timers(make_service):
    service = make_service().start("api")
    for _ in range(8):
        _created_id(service, "https://x.test/depth", hours=1)
    _, samples = _scrape(service)
    depths = [_value(samples, "timer_shard_depth", shard=str(shard)) for shard in range(4)]
    shards = requests.get(f"{service.url}/shards", timeout=TIMEOUT).json()["shards"]
    assert depths == [shard["scheduled"] + shard["in_flight"] for shard in shards]
    assert sum(depths) == 8


# --- X-Request-ID ------------------------------------------------------------------------------------

def test_request_id_is_echoed_and_follows_the_timer_into_the_logs(make_service, receiver):
    # Per-timer lines of successful creates and deliveries are DEBUG (their cost: docs/BENCHMARKS.md).
    service = make_service(env={"TIMER_LOG_LEVEL": "DEBUG"}).start()
    response = _create(service, f"{receiver.url}/rid", headers={"X-Request-ID": "test-req-123"})
    assert response.headers["X-Request-ID"] == "test-req-123"
    timer_id = response.json()["id"]
    wait_until(lambda: receiver.received(f"/rid/{timer_id}"), timeout=15, message="the delivery")

    def line(process, message):
        return [entry for entry in json_lines(service.logs(process))
                if entry.get("message") == message and entry.get("timer_id") == timer_id]

    created = wait_until(lambda: line("api", "timer created"), timeout=5, message="the API's log line")
    assert [entry.get("request_id") for entry in created] == ["test-req-123"]
    delivered = wait_until(lambda: line("workers", "delivery attempt"), timeout=5,
                           message="the workers' log line")
    assert [entry.get("request_id") for entry in delivered] == ["test-req-123"]

    generated = [_create(service, "https://x.test/rid", hours=1).headers["X-Request-ID"] for _ in range(2)]
    for request_id in generated:
        assert re.fullmatch(r"[A-Za-z0-9_-]{12}", request_id), request_id
    assert generated[0] != generated[1]
    read = requests.get(f"{service.url}/timers/{timer_id}", headers={"X-Request-ID": "read-1"},
                        timeout=TIMEOUT)
    assert read.headers["X-Request-ID"] == "read-1"


# --- /openapi.json and /docs -------------------------------------------------------------------------

def test_openapi_document_is_valid_3_1(make_service):
    service = make_service().start("api")
    response = requests.get(f"{service.url}/openapi.json", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    document = response.json()
    assert document["openapi"] == "3.1.0"
    validate(document)
    assert {path: sorted(ops) for path, ops in document["paths"].items()} == {
        "/timers": ["get", "post"], "/timers/{id}": ["delete", "get", "patch"], "/timers/{id}/run": ["post"],
        "/timers/run": ["post"], "/shards": ["get"],
        "/healthz": ["get", "head"], "/readyz": ["get"], "/metrics": ["get"], "/openapi.json": ["get"],
        "/docs": ["get"], "/dashboard": ["get"]}


def test_docs_page_is_served_without_external_urls(make_service):
    service = make_service().start("api")
    page = requests.get(f"{service.url}/docs", timeout=TIMEOUT)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "/docs/assets/swagger-ui-bundle.js" in page.text
    assert not re.search(r"(https?:)?//[A-Za-z0-9.-]", page.text.replace("<!DOCTYPE html>", "")), page.text
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/docs/assets/swagger-ui-bundle.js" in referenced
    for path in referenced:
        assert path.startswith("/"), path
        asset = requests.get(f"{service.url}{path}", timeout=TIMEOUT)
        assert asset.status_code == 200, path
        assert len(asset.content) > 0, path
    bundle = requests.get(f"{service.url}/docs/assets/swagger-ui-bundle.js", timeout=TIMEOUT)
    assert len(bundle.content) > 100_000
    init = requests.get(f"{service.url}/docs/init.js", timeout=TIMEOUT)
    assert init.status_code == 200
    assert "/openapi.json" in init.text
    assert "http" not in init.text


# --- access log ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "lines"), [({}, 0), ({"TIMER_ACCESS_LOG": "1"}, 1)])
def test_access_log_lines_only_with_timer_access_log(make_service, env, lines):
    service = make_service(env=env).start("api", ready_path="/healthz")
    with requests.Session() as session:
        assert session.get(f"{service.url}/shards?probe=access-log", timeout=5).status_code == 200
        # One keep-alive connection: gunicorn logs a request before it reads the next one.
        assert session.get(f"{service.url}/healthz", timeout=5).status_code == 200
    logged = [entry for entry in json_lines(service.logs("api"))
              if "probe=access-log" in str(entry.get("message", ""))]
    assert len(logged) == lines


def test_consumers_log_the_feeder_tick_not_hueys_scheduler_interval(make_service):
    service = make_service(env={"TIMER_SHARDS": "1", "TIMER_WORKERS_PER_SHARD": "1"}).start()
    started = wait_until(lambda: [e for e in json_lines(service.logs("workers"))
                                  if e.get("message") == "feeder started"], timeout=15,
                         message="the feeder's start-up line")
    assert [(e["shard"], e["tick_s"]) for e in started] == [(0, 0.1)]
    assert "Huey consumer started" in service.logs("workers")
    assert "Scheduler runs every" not in service.logs("workers")


def test_a_redis_outage_is_logged_once_per_feeder_not_every_tick(make_service, redis_server):
    service = make_service(env={"TIMER_SHARDS": "2", "TIMER_WORKERS_PER_SHARD": "1"}).start("workers")
    consumers_ready(service, 2)

    def lines(message):
        return [line for line in json_lines(service.logs("workers")) if line.get("message") == message]

    redis_server.kill9()
    # Each feeder ticks every 0.1 s; one line each for the whole outage.
    wait_until(lambda: len(lines("feeding failed")) == 2, timeout=20, message="each feeder to log the outage")
    outage_ticks = 20
    time.sleep(outage_ticks * 0.1)
    redis_server.start()
    wait_until(lambda: len(lines("feeding again")) == 2, timeout=30, message="each feeder to log it is back")
    assert len(lines("feeding failed")) == 2
