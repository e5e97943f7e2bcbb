"""End-to-end tests of the HTTP API against the real running service (gunicorn, Redis,
workers, coordinator): creating and reading timers, the bad-input matrix, 404s and /shards
(``shared/CONTRACT.md`` sections 2, 3, 4 and 6)."""

import calendar
import json
import re
import time

import requests

from sharding.ids import home_shard

RFC3339_UTC = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?Z$")
MAX_BODY = 64 * 1024
TIMEOUT = 10


def _post(service, body, path="/timers", **kwargs):
    return requests.post(f"{service.url}{path}", json=body, timeout=TIMEOUT, **kwargs)


def _post_raw(service, data, content_type="application/json", path="/timers"):
    headers = {} if content_type is None else {"Content-Type": content_type}
    return requests.post(f"{service.url}{path}", data=data, headers=headers, timeout=TIMEOUT)


def _epoch_s(rfc3339):
    match = RFC3339_UTC.match(rfc3339)
    assert match, rfc3339
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = float(match.group(7) or 0)
    return calendar.timegm((year, month, day, hour, minute, second)) + fraction


def _assert_created(response):
    assert response.status_code == 201, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    timer_id = body["id"]
    assert type(timer_id) is int
    assert timer_id > 0
    assert response.headers["Location"] == f"/timers/{timer_id}"
    return body


def _error_problems(response, status, field=None):
    """What is wrong with ``response`` as the contract's error answer (empty list: nothing)."""
    problems = []
    if response.status_code != status:
        problems.append(f"status {response.status_code} (want {status})")
    content_type = response.headers.get("Content-Type", "")
    if not content_type.startswith("application/json"):
        problems.append(f"Content-Type {content_type!r}")
        return problems
    try:
        body = response.json()
    except ValueError:
        return problems + [f"body is not JSON: {response.text[:200]!r}"]
    if not isinstance(body, dict):
        return problems + [f"body is not an object: {body!r}"]
    for key in ("title", "description"):
        if not isinstance(body.get(key), str) or not body[key]:
            problems.append(f"no {key!r} in {body!r}")
    if field is not None and field not in str(body.get("description", "")):
        problems.append(f"description does not name {field!r}: {body!r}")
    return problems


def _assert_error(response, status, field=None):
    problems = _error_problems(response, status, field)
    assert not problems, f"{response.request.method} {response.request.url}: {problems}"


# --- create and read -------------------------------------------------------------------------------

def test_create_then_read_a_timer(service, receiver):
    url = f"{receiver.url}/hook"
    before = time.time()
    created = _assert_created(_post(service, {"url": url, "seconds": 10}))
    assert created["time_left"] == 10
    timer_id = created["id"]

    response = requests.get(f"{service.url}/timers/{timer_id}", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert {k: body[k] for k in ("id", "time_left", "status", "url", "attempts", "last_error",
                                 "next_attempt_at")} == {
        "id": timer_id, "time_left": 10, "status": "scheduled", "url": url, "attempts": 0,
        "last_error": None, "next_attempt_at": None}
    assert "retry" not in body
    fire_at = body["fire_at"]
    assert isinstance(fire_at, str)
    assert RFC3339_UTC.match(fire_at), fire_at
    after = time.time()
    # Same host: the Redis clock is the local clock.
    assert before + 10 - 1 <= _epoch_s(fire_at) <= after + 10 + 1

    # Reading by the Location header works too.
    again = requests.get(f"{service.url}/timers/{timer_id}", timeout=TIMEOUT).json()
    assert again["fire_at"] == fire_at
    assert again["id"] == timer_id


def test_create_with_and_without_trailing_slash_ids_increase(service):
    ids = []
    for i in range(6):
        path = "/timers/" if i % 2 else "/timers"
        body = _assert_created(_post(service, {"url": "https://x.test/hook", "hours": 1}, path=path))
        assert body["time_left"] == 3600
        ids.append(body["id"])
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for timer_id in ids:
        read = service.get(timer_id)
        assert read["id"] == timer_id
        assert read["status"] == "scheduled"
        assert read["time_left"] in (3600, 3599)


def test_create_zero_delay_and_minutes_over_60(service):
    zero = _assert_created(_post(service, {"url": "https://x.test/hook"}))
    assert zero["time_left"] == 0
    ninety = _assert_created(_post(service, {"url": "https://x.test/hook", "minutes": 90}))
    assert ninety["time_left"] == 5400
    # A charset parameter on the JSON media type is fine.
    charset = _assert_created(_post_raw(service, json.dumps({"url": "https://x.test/h", "seconds": 5}),
                                        content_type="application/json; charset=utf-8"))
    assert charset["time_left"] == 5


# --- bad input -------------------------------------------------------------------------------------

def _bad_input_cases(service, existing_id):
    """(name, callable returning a Response, expected status, field named in the description)."""
    url = "https://x.test/hook"
    cases = [
        ("invalid JSON", lambda: _post_raw(service, b'{"url": '), 400, None),
        ("trailing comma", lambda: _post_raw(service, b'{"url": "https://x.test/h",}'), 400, None),
        ("empty body", lambda: _post_raw(service, b""), 400, None),
        ("not UTF-8", lambda: _post_raw(service, b'{"url": "\xff\xfe"}'), 400, None),
        # Found by a fresh-eyes run: these used to answer 500.
        ("lone surrogate in url", lambda: _post_raw(
            service, b'{"seconds": 1, "url": "http://e.com/\\udfff"}'), 400, "url"),
        ("lone surrogate as a field name", lambda: _post_raw(
            service, b'{"seconds": 1, "url": "http://e.com/h", "\\ud800": 1}'), 400, None),
        ("deeply nested array", lambda: _post_raw(service, b"[" * 3000 + b"]" * 3000), 400, None),
        ("deeply nested object", lambda: _post_raw(
            service, b'{"a":' * 1500 + b"1" + b"}" * 1500), 400, None),
        ("duplicate key", lambda: _post_raw(
            service, b'{"url": "ftp://x", "url": "http://e.com/h"}'), 400, "url"),
    ]
    for raw in (b"[]", b'[{"url": "https://x.test/h"}]', b'"x"', b"5", b"1.5", b"null", b"true"):
        cases.append((f"non-object body {raw!r}", lambda raw=raw: _post_raw(service, raw), 400, None))
    for field in ("hours", "minutes", "seconds"):
        for value in (True, False, 1.5, 1.0, "1", None, [1], {"n": 1}, -1):
            body = {"url": url, field: value}
            cases.append((f"{field}={value!r}", lambda body=body: _post(service, body), 400, field))
    for body, field in [
        ({"url": url, "hour": 1}, "hour"),
        ({"url": url, "seconds": 1, "callback": "x"}, "callback"),
        ({"seconds": 5}, "url"),
        ({}, "url"),
        ({"url": 5}, "url"),
        ({"url": None}, "url"),
        ({"url": ["https://x.test"]}, "url"),
        ({"url": "ftp://x.test/hook"}, "url"),
        ({"url": "x.test/hook"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "http:///path"}, "url"),
        ({"url": "https://x.test/" + "a" * 2034}, "url"),
        ({"url": "https://x.test/a b"}, "url"),
        ({"url": "http://x.test:99999/"}, "url"),
        ({"url": "http://a..b/h"}, "url"),
        ({"url": "http://" + "a" * 300 + ".com/h"}, "url"),
        ({"url": "http://-/h"}, "url"),
        ({"url": "http://e.com:0/h"}, "url"),
        ({"url": "http://e.com\\@127.0.0.1/h"}, "url"),
        ({"url": url, "hours": 8761}, "hours"),
        ({"url": url, "seconds": 31_536_001}, "seconds"),
        ({"url": url, "seconds": 10**30}, "seconds"),
        ({"url": url, "retry": 3}, "retry"),
        ({"url": url, "retry": None}, "retry"),
        ({"url": url, "retry": {"max_attempts": 0}}, "retry.max_attempts"),
        ({"url": url, "retry": {"max_attempts": 101}}, "retry.max_attempts"),
        ({"url": url, "retry": {"max_attempts": 2.5}}, "retry.max_attempts"),
        ({"url": url, "retry": {"max_seconds": -1}}, "retry.max_seconds"),
        ({"url": url, "retry": {"max_seconds": "60"}}, "retry.max_seconds"),
        ({"url": url, "retry": {"attempts": 3}}, "retry.attempts"),
    ]:
        cases.append((f"body {json.dumps(body)[:60]}", lambda body=body: _post(service, body), 400, field))
    for body, field in [
        ({"status": "retrying"}, "status"), ({"dry_run": "false"}, "dry_run"), ({"host": 7}, "host"),
        ({"since": "yesterday"}, "since"), ({"since": "2026-01-01T00:00:00"}, "since"),
        ({"cursor": "nope"}, "cursor"), ({"hosts": "x.test"}, "hosts"),
    ]:
        cases.append((f"run {json.dumps(body)}", lambda body=body: _post(service, body, "/timers/run"), 400,
                      field))

    valid = json.dumps({"url": url, "seconds": 3600}).encode()
    too_big = valid + b" " * (MAX_BODY + 1 - len(valid))
    assert len(too_big) == MAX_BODY + 1

    cases += [
        ("Content-Type text/plain", lambda: _post_raw(service, valid, content_type="text/plain"), 415, None),
        ("Content-Type form", lambda: _post_raw(
            service, b"url=https://x.test/h", content_type="application/x-www-form-urlencoded"), 415, None),
        ("no Content-Type", lambda: _post_raw(service, valid, content_type=None), 415, None),
        ("body over 64 KiB", lambda: _post_raw(service, too_big), 413, None),
    ]
    for method in ("PUT", "PATCH", "DELETE"):
        cases.append((f"{method} /timers", lambda method=method: requests.request(
            method, f"{service.url}/timers", json={"url": url}, timeout=TIMEOUT), 405, None))
    cases.append(("PUT /timers/<id>", lambda: requests.put(
        f"{service.url}/timers/{existing_id}", json={"url": url}, timeout=TIMEOUT), 405, None))
    # PATCH reschedules (tests/test_scheduling.py): a create body is not a reschedule body.
    cases.append(("PATCH /timers/<id> with a create body", lambda: requests.patch(
        f"{service.url}/timers/{existing_id}", json={"url": url}, timeout=TIMEOUT), 400, "url"))
    return cases


def test_bad_input_matrix(service):
    existing = _assert_created(_post(service, {"url": "https://x.test/hook", "hours": 1}))["id"]
    failures = []
    for name, send, status, field in _bad_input_cases(service, existing):
        try:
            response = send()
        except requests.RequestException as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        problems = _error_problems(response, status, field)
        if problems:
            failures.append(f"{name}: {problems}")
        if status == 405:
            allow = response.headers.get("Allow", "")
            expected = "POST" if name.endswith("/timers") else "GET"
            if expected not in allow:
                failures.append(f"{name}: Allow {allow!r} does not list {expected}")
    assert not failures, "\n".join(failures)

    # After all that, the service still works and nothing was created by the bad requests.
    after = _assert_created(_post(service, {"url": "https://x.test/hook", "seconds": 30}))
    assert after["time_left"] == 30
    assert after["id"] > existing
    assert service.get(existing)["status"] == "scheduled"


def test_body_of_exactly_64_kib_is_accepted(service):
    valid = json.dumps({"url": "https://x.test/hook", "seconds": 60}).encode()
    padded = valid + b" " * (MAX_BODY - len(valid))
    assert len(padded) == MAX_BODY
    created = _assert_created(_post_raw(service, padded))
    assert created["time_left"] == 60


def test_chunked_bodies_are_read(service):
    """Transfer-Encoding: chunked (no Content-Length) is ordinary HTTP/1.1 framing (RFC 9112)."""
    valid = json.dumps({"url": "https://x.test/hook", "seconds": 60}).encode()

    def small():
        yield valid

    def big():
        yield valid
        for _ in range(20):
            yield b" " * 4096

    created = _assert_created(_post_raw(service, small()))
    assert created["time_left"] == 60
    _assert_error(_post_raw(service, big()), 413)


# --- not found -------------------------------------------------------------------------------------

def test_unknown_and_malformed_ids_are_404_json(service):
    existing = _assert_created(_post(service, {"url": "https://x.test/hook", "hours": 1}))["id"]
    unknown = [existing + 1000 * 1000, existing + 1, 999_999_999, 10**25]
    for path in [f"/timers/{i}" for i in unknown] + [
            "/timers/abc", "/timers/-1", "/timers/0", "/timers/1.5", "/timers/%20", "/nope",
            f"/timers/+{existing}", f"/timers/0{existing}", f"/timers/{existing}.0", f"/timers/%20{existing}",
            "/timers/%D9%A7"]:  # the last: ARABIC-INDIC DIGIT SEVEN, which int() reads as 7
        response = requests.get(f"{service.url}{path}", timeout=TIMEOUT)
        _assert_error(response, 404)
    html = requests.get(f"{service.url}/nope", headers={"Accept": "text/html"}, timeout=TIMEOUT)
    _assert_error(html, 404)
    html_timer = requests.get(f"{service.url}/timers/abc", headers={"Accept": "text/html"}, timeout=TIMEOUT)
    _assert_error(html_timer, 404)
    assert service.get(existing)["id"] == existing


# --- shards ----------------------------------------------------------------------------------------

def _shards(service):
    response = requests.get(f"{service.url}/shards", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["shards"], list)
    return body["shards"]


def test_shards_and_least_busy_balance(service):
    shards = _shards(service)
    assert [s["index"] for s in shards] == [0, 1, 2, 3]
    for shard in shards:
        for key in ("index", "scheduled", "queued"):
            assert type(shard[key]) is int, shard
        assert shard["scheduled"] == 0
        assert shard["queued"] == 0

    # One keep-alive connection, so one gunicorn worker: its snapshot is what it read
    # plus its own choices, exact at any pace. (Two workers with snapshots of their own
    # can leave the split 3 or more apart in a few interleavings of their requests.)
    with requests.Session() as session:
        ids = [_assert_created(session.post(f"{service.url}/timers", timeout=TIMEOUT,
                                            json={"url": "https://x.test/hook", "hours": 1}))["id"]
               for _ in range(40)]
    shards = _shards(service)
    assert [s["index"] for s in shards] == [0, 1, 2, 3]
    scheduled = [s["scheduled"] for s in shards]
    assert sum(scheduled) == 40
    assert [s["queued"] for s in shards] == [0, 0, 0, 0]
    # The id's low digits name the shard that holds it: the same split as /shards reports.
    assert scheduled == [sum(1 for i in ids if home_shard(i) == index) for index in range(4)]
    assert scheduled == [10, 10, 10, 10]


def test_shards_follow_timer_shards_setting(make_service):
    service = make_service(env={"TIMER_SHARDS": "3"}).start()
    shards = _shards(service)
    assert [(s["index"], s["scheduled"], s["queued"]) for s in shards] == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]
    ids = [_assert_created(_post(service, {"url": "https://x.test/hook", "hours": 1}))["id"]
           for _ in range(9)]
    assert {home_shard(i) for i in ids} <= {0, 1, 2}
    scheduled = [s["scheduled"] for s in _shards(service)]
    assert sum(scheduled) == 9
    assert max(scheduled) - min(scheduled) <= 2, scheduled
