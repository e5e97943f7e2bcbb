"""Unit tests of pure logic (no Redis, no HTTP): webhook URLs, outcomes, backoff,
Retry-After, time_left, RFC 3339 text, least-busy choice, queue messages,
create-body validation and the home shard of an id."""

import calendar
import email.utils
import itertools
import os
import random
import threading

import falcon
import pytest
import redis

from api.resources import rfc3339_ms, time_left_s, timer_view
from api.validation import (
    MAX_URL_LENGTH,
    FieldError,
    parse_create,
    parse_fire_at,
    parse_reschedule,
    parse_retry,
    parse_run,
)
from sharding import config
from sharding.balancer import LeastBusy, NoShardAvailable
from sharding.config import DEFAULT_WEBHOOK_MAX_ATTEMPTS, DEFAULT_WEBHOOK_MAX_RETRY_SECONDS, ConfigError
from sharding.ids import home_shard
from sharding.queues import MAX_TIMERS_PER_MESSAGE, message_for, timers_of
from sharding.records import Payload
from tests.harness import ROOT
from workers.delivery import (
    backoff_ceiling_s,
    backoff_s,
    classify,
    parse_retry_after,
    schedule,
    schedule_table,
    webhook_url,
)

MAX_DELAY = 31_536_000


# --- workers.delivery.webhook_url (contract section 5) ---------------------------------------------

@pytest.mark.parametrize(("base", "expected"), [
    ("https://x.test/hook", "https://x.test/hook/7"),
    ("https://x.test/hook/", "https://x.test/hook/7"),
    ("https://x.test/h?a=1", "https://x.test/h/7?a=1"),
])
def test_webhook_url_contract_cases(base, expected):
    assert webhook_url(base, 7) == expected


def test_webhook_url_host_only_and_multiple_query_params():
    assert webhook_url("http://x.test", 42) == "http://x.test/42"
    assert webhook_url("http://x.test/", 42) == "http://x.test/42"
    assert webhook_url("http://x.test:8080/a/b/?a=1&b=2", 42) == "http://x.test:8080/a/b/42?a=1&b=2"


# --- workers.delivery.classify ----------------------------------------------------------------------

@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_classify_2xx_is_ok(status):
    outcome = classify(status)
    assert outcome.kind == "ok"
    assert outcome.error == ""
    assert outcome.retry_after_s is None


@pytest.mark.parametrize("status", [300, 301, 302, 303, 307, 308])
def test_classify_3xx_fails_without_retry(status):
    outcome = classify(status)
    assert outcome.kind == "fail"
    assert outcome.error.startswith(f"HTTP {status}")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 410, 422])
def test_classify_other_4xx_fails(status):
    outcome = classify(status)
    assert outcome.kind == "fail"
    assert outcome.error == f"HTTP {status}"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_classify_retryable(status):
    outcome = classify(status)
    assert outcome.kind == "retry"
    assert outcome.error == f"HTTP {status}"
    assert outcome.retry_after_s is None


def test_classify_retry_honours_retry_after():
    assert classify(503, "120").retry_after_s == 120.0
    assert classify(429, "7").retry_after_s == 7.0
    assert classify(503, "garbage").retry_after_s is None


# --- workers.delivery.backoff_s ---------------------------------------------------------------------

@pytest.mark.parametrize(("attempt", "ceiling"), [
    (1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 32.0), (10, 1024.0), (11, 2048.0),
    (12, 3600.0), (20, 3600.0), (1000, 3600.0),
])
def test_backoff_is_equal_jitter_between_half_the_ceiling_and_the_ceiling(attempt, ceiling):
    assert backoff_ceiling_s(attempt) == ceiling
    assert backoff_s(attempt, rng=lambda: 0.0) == ceiling / 2
    assert backoff_s(attempt, rng=lambda: 0.5) == ceiling * 3 / 4
    assert backoff_s(attempt, rng=lambda: 0.999999) == pytest.approx(ceiling, rel=1e-5)


def test_backoff_with_a_seeded_random_source_keeps_its_bounds():
    rng = random.Random(12)
    for attempt in range(1, 60):
        ceiling = min(3600.0, 2.0 * 2 ** (attempt - 1))
        waits = [backoff_s(attempt, rng=rng.random) for _ in range(200)]
        # Never below the 1 s floor, never above the 1 h cap, at least half of each wait kept.
        assert all(max(1.0, ceiling / 2) <= w <= ceiling <= 3600.0 for w in waits)
        # Jittered: the waits spread over the upper half, not one value.
        assert max(waits) - min(waits) > ceiling / 4


def test_the_default_schedule_keeps_retrying_for_24_hours_and_no_longer():
    rows = schedule(DEFAULT_WEBHOOK_MAX_ATTEMPTS, DEFAULT_WEBHOOK_MAX_RETRY_SECONDS)
    assert DEFAULT_WEBHOOK_MAX_ATTEMPTS >= 25 and DEFAULT_WEBHOOK_MAX_RETRY_SECONDS == 86_400
    # The attempt limit never binds first: the 24 h window ends the schedule.
    assert len(rows) < DEFAULT_WEBHOOK_MAX_ATTEMPTS
    assert rows[-1][2] == (86_400, 86_400)
    assert all(late <= 86_400 for _, _, (_, late) in rows)
    assert all(wait[0] >= 1.0 and wait[1] <= 3600 for _, wait, _ in rows[1:])
    # Even with the longest waits, attempts go on until 24 h: a day-long outage is ridden out.
    assert [n for n, _, (_, late) in rows if late == 86_400][0] < len(rows)


def test_schedule_stops_at_the_attempt_limit_and_a_short_window():
    assert [n for n, _, _ in schedule(3, 86_400)] == [1, 2, 3]
    assert schedule(5, 20) == [(1, None, (0.0, 0.0)), (2, (1.0, 2.0), (1.0, 2.0)),
                               (3, (2.0, 4.0), (3.0, 6.0)), (4, (4.0, 8.0), (7.0, 14.0)),
                               (5, (8.0, 16.0), (15.0, 20.0))]
    assert schedule(10, 0) == [(1, None, (0.0, 0.0))]


def test_the_readme_schedule_table_is_the_codes_output():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    begin, end = "<!-- schedule: python -m workers.delivery --schedule -->\n", "\n<!-- /schedule -->"
    assert begin in readme and end in readme
    table = readme[readme.index(begin) + len(begin):readme.index(end)]
    assert table == schedule_table(DEFAULT_WEBHOOK_MAX_ATTEMPTS, DEFAULT_WEBHOOK_MAX_RETRY_SECONDS)


# --- workers.delivery.parse_retry_after -------------------------------------------------------------

NOW_S = calendar.timegm((2015, 10, 21, 7, 28, 0))  # Wed, 21 Oct 2015 07:28:00 GMT


def _http_date(epoch_s):
    return email.utils.formatdate(epoch_s, usegmt=True)


def test_retry_after_seconds():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(" 5 ") == 5.0


def test_retry_after_http_date_with_fixed_now():
    assert parse_retry_after(_http_date(NOW_S + 30), now_s=NOW_S) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now_s=NOW_S - 90) == 90.0


def test_retry_after_past_date_is_zero():
    assert parse_retry_after(_http_date(NOW_S - 30), now_s=NOW_S) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now_s=NOW_S + 3600) == 0.0


@pytest.mark.parametrize("value", [None, "", "garbage", "1.5", "12abc", "-5", "Wed, 21 Oct 2015 07:28:00",
                                   "\u00b2", "\u00b9\u00b2"])
def test_retry_after_absent_or_unparsable_is_none(value):
    # "-5" is not delay-seconds (RFC 9110: 1*DIGIT, ASCII digits; superscripts are latin-1, so a
    # header can carry them); a date without a zone is not an HTTP-date.
    assert parse_retry_after(value, now_s=NOW_S) is None


def test_retry_after_huge_is_capped_at_one_hour():
    assert parse_retry_after("3600") == 3600.0
    assert parse_retry_after("3601") == 3600.0
    assert parse_retry_after("999999999") == 3600.0
    assert parse_retry_after(_http_date(NOW_S + 86_400), now_s=NOW_S) == 3600.0


# --- api.app.time_left_s and rfc3339_ms -------------------------------------------------------------

NOW_MS = 1_800_000_000_000


@pytest.mark.parametrize(("fire_in_ms", "expected"), [
    (1, 1), (999, 1), (1000, 1), (1001, 2), (1999, 2), (2000, 2), (10_000, 10), (10_001, 11),
    (0, 0), (-1, 0), (-5000, 0),
])
def test_time_left_rounds_up_and_never_negative(fire_in_ms, expected):
    for status in ("scheduled", "firing", "retrying", "fired", "failed"):
        assert time_left_s({"status": status, "fire_at": NOW_MS + fire_in_ms}, NOW_MS) == expected


def test_time_left_cancelled_is_zero():
    assert time_left_s({"status": "cancelled", "fire_at": NOW_MS + 60_000}, NOW_MS) == 0
    assert time_left_s({"status": "cancelled", "fire_at": NOW_MS - 60_000}, NOW_MS) == 0


@pytest.mark.parametrize(("epoch_ms", "text"), [
    (0, "1970-01-01T00:00:00.000Z"),
    (1, "1970-01-01T00:00:00.001Z"),
    (calendar.timegm((2026, 11, 29, 17, 30, 0)) * 1000, "2026-11-29T17:30:00.000Z"),
    (calendar.timegm((2026, 11, 29, 17, 30, 0)) * 1000 + 250, "2026-11-29T17:30:00.250Z"),
    (calendar.timegm((2024, 2, 29, 23, 59, 59)) * 1000 + 999, "2024-02-29T23:59:59.999Z"),
])
def test_rfc3339_ms(epoch_ms, text):
    assert rfc3339_ms(epoch_ms) == text


# --- sharding.balancer.LeastBusy --------------------------------------------------------------------

class FakeDepths:
    """read_depths stand-in: returns the configured (scheduled, queued, in_flight) tuples."""

    def __init__(self, depths):
        self.depths = depths
        self.calls = []

    def __call__(self, indexes):
        self.calls.append(list(indexes))
        return [self.depths[i] for i in indexes]


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_least_busy_picks_the_least_busy_shard():
    read = FakeDepths([(5, 0, 0), (1, 1, 1), (0, 2, 0), (4, 4, 4)])
    balancer = LeastBusy(read, 4, clock=FakeClock())
    assert balancer.choose() == 2  # depth 2 is the lowest (sum of scheduled, queued, in flight)
    assert read.calls == [[0, 1, 2, 3]]


def test_least_busy_counts_its_own_choices_into_the_snapshot():
    read = FakeDepths([(3, 0, 0), (0, 0, 0), (1, 0, 0)])
    balancer = LeastBusy(read, 3, clock=FakeClock())
    picks = [balancer.choose() for _ in range(7)]
    # Depths 3, 0, 1: shard 1 first, then 1 and 2 alternate until all are 3 (five picks) ...
    assert picks[0] == 1
    assert sorted(picks[:5]) == [1, 1, 1, 2, 2]
    # ... then the three-way tie rotates: two different shards.
    assert len(set(picks[5:])) == 2
    final = [3 + picks.count(0), picks.count(1), 1 + picks.count(2)]
    assert sorted(final) == [3, 4, 4]
    assert len(read.calls) == 1


def test_least_busy_burst_of_100_over_4_equal_shards_spreads_evenly():
    read = FakeDepths([(0, 0, 0)] * 4)
    balancer = LeastBusy(read, 4, clock=FakeClock())
    picks = [balancer.choose() for _ in range(100)]
    assert [picks.count(i) for i in range(4)] == [25, 25, 25, 25]
    # Every window of 4 consecutive picks covers all 4 shards (ties rotate).
    for start in range(0, 100, 4):
        assert sorted(picks[start:start + 4]) == [0, 1, 2, 3]
    assert read.calls == [[0, 1, 2, 3]]


def test_least_busy_refreshes_only_after_refresh_s():
    read = FakeDepths([(0, 0, 0), (10, 0, 0)])
    clock = FakeClock()
    balancer = LeastBusy(read, 2, refresh_s=0.25, clock=clock)
    assert balancer.choose() == 0
    assert len(read.calls) == 1

    read.depths = [(10, 0, 0), (0, 0, 0)]
    clock.now += 0.2
    assert balancer.choose() == 0  # stale snapshot still says shard 0 is emptier
    assert len(read.calls) == 1

    clock.now += 0.05  # 0.25 s since the read: refresh
    assert balancer.choose() == 1
    assert len(read.calls) == 2

    clock.now += 0.1
    assert balancer.choose() == 1
    assert len(read.calls) == 2

    clock.now += 0.15
    read.depths = [(0, 0, 0), (10, 0, 0)]
    assert balancer.choose() == 0
    assert len(read.calls) == 3
    assert read.calls == [[0, 1]] * 3


def test_least_busy_read_once_per_snapshot_during_burst():
    read = FakeDepths([(0, 0, 0)] * 3)
    clock = FakeClock()
    balancer = LeastBusy(read, 3, refresh_s=1.0, clock=clock)
    for _ in range(30):
        balancer.choose()
        clock.now += 0.25  # exact in binary floating point
    # Choices at 100.00 … 107.25: snapshots read at 100, 101, …, 107 only.
    assert read.calls == [[0, 1, 2]] * 8


def test_least_busy_refresh_error_propagates():
    def broken(indexes):
        raise ConnectionError("redis down")

    balancer = LeastBusy(broken, 4, clock=FakeClock())
    with pytest.raises(ConnectionError):
        balancer.choose()


class HangingDepths(FakeDepths):
    """FakeDepths whose reads after the first wait for ``resume`` (a master stopped, not down)."""

    def __init__(self, depths):
        super().__init__(depths)
        self.resume = threading.Event()
        self.hanging = threading.Event()

    def __call__(self, indexes):
        if self.calls:
            self.hanging.set()
            self.resume.wait()
        return super().__call__(indexes)


def test_least_busy_chooses_from_the_snapshot_while_another_caller_refreshes_it():
    read = HangingDepths([(0, 0, 0), (5, 0, 0)])
    clock = FakeClock()
    balancer = LeastBusy(read, 2, refresh_s=0.25, clock=clock)
    assert balancer.choose() == 0
    clock.now += 0.25
    refresher = threading.Thread(target=balancer.choose, daemon=True)
    refresher.start()
    assert read.hanging.wait(10)
    # The refresher waits on its read; this choice must not wait for it.
    other = []
    chooser = threading.Thread(target=lambda: other.append(balancer.choose()), daemon=True)
    chooser.start()
    chooser.join(10)
    hung = not other
    read.resume.set()
    refresher.join(10)
    chooser.join(10)
    assert not hung, "a choice waited for another caller's refresh"
    assert other == [0] and len(read.calls) == 2


class FlakyDepths(FakeDepths):
    """FakeDepths whose shards in ``down`` fail as their Redis would."""

    def __init__(self, depths, down):
        super().__init__(depths)
        self.down = set(down)

    def __call__(self, indexes):
        self.calls.append(list(indexes))
        if self.down & set(indexes):
            raise redis.exceptions.ConnectionError("master down")
        return [self.depths[i] for i in indexes]


def test_least_busy_skips_a_shard_whose_depth_read_fails_until_down_s_passed():
    read = FlakyDepths([(0, 0, 0), (5, 0, 0), (5, 0, 0)], down={0})
    clock = FakeClock()
    balancer = LeastBusy(read, 3, refresh_s=0.25, down_s=1.0, clock=clock)
    assert {balancer.choose() for _ in range(10)} == {1, 2}
    # The whole read failed, then each shard was read on its own.
    assert read.calls == [[0, 1, 2], [0], [1], [2]]
    clock.now += 0.5
    read.down.clear()
    assert balancer.choose() in (1, 2)  # refreshed, but shard 0 is still left out
    assert read.calls[-1] == [1, 2]
    clock.now += 0.5
    assert balancer.choose() == 0  # back: emptiest
    assert read.calls[-1] == [0, 1, 2]


def test_least_busy_leaves_out_a_shard_whose_create_failed_for_down_s():
    read = FakeDepths([(0, 0, 0), (3, 0, 0)])
    clock = FakeClock()
    balancer = LeastBusy(read, 2, down_s=1.0, clock=clock)
    balancer.failed(0)
    assert [balancer.choose() for _ in range(4)] == [1, 1, 1, 1]
    clock.now += 1.0
    assert balancer.choose() == 0


def test_least_busy_with_every_shard_down_raises_no_shard_available():
    balancer = LeastBusy(FlakyDepths([(0, 0, 0)] * 2, down={0, 1}), 2, clock=FakeClock())
    with pytest.raises(NoShardAvailable):
        balancer.choose()


@pytest.mark.parametrize("env, message", [
    ({"REDIS_URL": "redis://a:6379", "REDIS_CLUSTER_URL": "redis://b:6379"}, "are both set"),
    ({"REDIS_CLUSTER_URL": "unix:///tmp/r.sock"}, "must be a redis:// or rediss:// URL"),
    ({"TIMER_REDIS_WAIT_REPLICAS": "-1"}, "TIMER_REDIS_WAIT_REPLICAS=-1 must be >= 0"),
    ({"TIMER_REDIS_WAIT_REPLICAS": "1"}, "TIMER_REDIS_WAIT_REPLICAS=1 needs REDIS_URL or REDIS_CLUSTER_URL"),
])
def test_cluster_settings_refused(monkeypatch, env, message):
    for name in ("REDIS_URL", "REDIS_CLUSTER_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        config.load()


def test_cluster_settings_accepted(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_CLUSTER_URL", "rediss://svc:pw@node1:6379")
    monkeypatch.setenv("TIMER_REDIS_WAIT_REPLICAS", "1")
    settings = config.load()
    assert (settings.redis_cluster_url, settings.wait_replicas, settings.external_redis) == (
        "rediss://svc:pw@node1:6379", 1, True)


# --- sharding.queues messages -----------------------------------------------------------------------

@pytest.mark.parametrize("timer_ids", [[1], [7, 1007], [1003], [290_304_512_345_002, 290_304_512_346_002],
                                       list(range(1000, 17_000, 1000))])
def test_message_round_trip(timer_ids):
    message = message_for(timer_ids)
    assert isinstance(message, bytes)
    assert message == b'{"timers":[%s]}' % ",".join(map(str, timer_ids)).encode()
    assert message_for(timer_ids) == message  # deterministic
    assert timers_of(message) == timer_ids
    assert timers_of(message.decode()) == timer_ids


def test_timers_of_accepts_whitespace_variants():
    assert timers_of(b'{ "timers" : [ 42 , 43 ] }') == [42, 43]


@pytest.mark.parametrize("message", [
    b"", b"not json", b"42", b"[42]", b"null", b'"42"', b"{}", b'{"timers":[]}', b'{"timers":7}',
    b'{"timers":[0]}', b'{"timers":[-3]}', b'{"timers":["7"]}', b'{"timers":[true]}', b'{"timers":[1.5]}',
    b'{"timers":[null]}', b'{"timers":[7],"extra":1}', b'{"timer":7}', b'{"timers":[7,[8]]}',
    b'{"timers":[%s]}' % b",".join(b"%d" % i for i in range(1, MAX_TIMERS_PER_MESSAGE + 2)),
])
def test_timers_of_rejects_bad_messages(message):
    with pytest.raises(ValueError):
        timers_of(message)


# --- api.validation.parse_create --------------------------------------------------------------------

URL = "https://x.test/hook"


def _field_error(body, max_delay=MAX_DELAY):
    with pytest.raises(FieldError) as info:
        parse_create(body, max_delay)
    error = info.value
    assert isinstance(error, falcon.HTTPBadRequest)
    assert error.status_code == 400
    assert error.description.startswith(f"'{error.field}'")
    return error


@pytest.mark.parametrize("field", ["hours", "minutes", "seconds"])
@pytest.mark.parametrize("value", [True, False, 1.0, 1.5, 0.0, "1", "", None, [1], {"n": 1}, -1, -3600])
def test_parse_create_rejects_non_integer_or_negative_durations(field, value):
    error = _field_error({"url": URL, field: value})
    assert error.field == field
    assert field in error.description
    assert error.to_dict()["field"] == field


def test_parse_create_unknown_field_named():
    error = _field_error({"url": URL, "hour": 1})
    assert error.field == "hour"
    assert "'hour'" in error.description
    body = error.to_dict()
    assert body["title"] == "Invalid field"
    assert body["field"] == "hour"


def test_parse_create_unknown_field_even_alongside_valid_ones():
    error = _field_error({"url": URL, "seconds": 5, "callback": "x"})
    assert error.field == "callback"


def test_parse_create_missing_url():
    error = _field_error({"seconds": 5})
    assert error.field == "url"
    error = _field_error({})
    assert error.field == "url"


@pytest.mark.parametrize("url", [
    5, None, True, ["https://x.test"], {"u": 1},
    "ftp://x.test/hook", "file:///etc/passwd", "x.test/hook", "/hook", "",
    "http://", "https://", "http:///path", "http://:80/",
    "http://x.test/a b", " http://x.test/", "http://x.test/\n", "http://x.test/\t",
    "http://x.test:99999/", "http://x.test:port/",
])
def test_parse_create_bad_url(url):
    error = _field_error({"url": url, "seconds": 1})
    assert error.field == "url"
    assert "url" in error.description


def test_parse_create_url_length_limit():
    prefix = "https://x.test/"
    longest = prefix + "a" * (MAX_URL_LENGTH - len(prefix))
    assert len(longest) == 2048
    assert parse_create({"url": longest}, MAX_DELAY)[:2] == (0, longest)
    error = _field_error({"url": longest + "a"})
    assert error.field == "url"


@pytest.mark.parametrize("url", [
    "http://x.test", "https://x.test/hook", "HTTPS://X.TEST/Hook", "http://127.0.0.1:8080/h?a=1",
    "http://[::1]:9000/h", "https://user:pw@x.test/h",
])
def test_parse_create_good_urls(url):
    assert parse_create({"url": url, "seconds": 1}, MAX_DELAY)[:2] == (1, url)


@pytest.mark.parametrize(("fields", "delay"), [
    ({}, 0),
    ({"hours": 0, "minutes": 0, "seconds": 0}, 0),
    ({"seconds": 10}, 10),
    ({"minutes": 90}, 5400),
    ({"hours": 1, "minutes": 30}, 5400),
    ({"seconds": 3600}, 3600),
    ({"hours": 2, "minutes": 3, "seconds": 4}, 7384),
    ({"hours": 8760}, MAX_DELAY),
])
def test_parse_create_total_delay(fields, delay):
    assert parse_create({"url": URL, **fields}, MAX_DELAY)[:2] == (delay, URL)


def test_parse_create_delay_above_max_rejected():
    assert parse_create({"url": URL, "seconds": 100}, 100)[:2] == (100, URL)
    error = _field_error({"url": URL, "seconds": 101}, max_delay=100)
    assert error.field == "seconds"
    assert "100" in error.description
    error = _field_error({"url": URL, "hours": 8760, "seconds": 1})
    assert error.field in ("hours", "seconds")
    error = _field_error({"url": URL, "hours": 8761})
    assert error.field == "hours"
    error = _field_error({"url": URL, "minutes": 10**20})
    assert error.field == "minutes"


def test_parse_create_max_delay_zero_only_allows_zero():
    assert parse_create({"url": URL}, 0)[:2] == (0, URL)
    assert _field_error({"url": URL, "seconds": 1}, max_delay=0).field == "seconds"


@pytest.mark.parametrize("body", [[], [{"url": URL}], "x", "", 5, 1.5, True, None])
def test_parse_create_non_object_body_rejected(body):
    with pytest.raises(falcon.HTTPBadRequest) as info:
        parse_create(body, MAX_DELAY)
    assert info.value.status_code == 400
    assert not isinstance(info.value, FieldError)
    assert info.value.description


# --- sharding.ids.home_shard ----------------------------------------------------------------------

@pytest.mark.parametrize(("timer_id", "shard"), [
    (1000, 0), (1001, 1), (1003, 3), (2000, 0), (123_999, 999), (5_000_042, 42), (7, 7),
])
def test_home_shard(timer_id, shard):
    assert home_shard(timer_id) == shard


def test_home_shard_matches_id_layout():
    for seq, shard in itertools.product((1, 2, 99, 10**9), (0, 1, 3, 998, 999)):
        assert home_shard(seq * 1000 + shard) == shard


# --- workers.delivery.Sender on URLs that cannot be encoded ----------------------------------------

def test_sender_fails_a_host_idna_cannot_encode_without_raising():
    # Stored before validation refused such hosts: must fail once, not crash the consumer.
    from workers.delivery import Sender

    outcome = Sender(1.0).send("http://a..b/h", 7)
    assert outcome.kind == "fail"
    assert outcome.error.startswith("invalid url: ")


# --- api.validation.parse_fire_at and the payload (scheduling API) -----------------------------------

@pytest.mark.parametrize(("text", "epoch_ms"), [
    ("2026-12-24T18:00:00+01:00", 1_798_131_600_000),
    ("2026-12-24T17:00:00Z", 1_798_131_600_000),
    ("2026-12-24t17:00:00z", 1_798_131_600_000),
    ("2026-12-24T22:30:00+05:30", 1_798_131_600_000),
    ("2026-12-24T14:00:00-03:00", 1_798_131_600_000),
    ("2026-12-24T17:00:00.123456Z", 1_798_131_600_123),
    ("2026-12-24T17:00:00.9999+00:00", 1_798_131_600_999),
    ("1970-01-01T00:00:00Z", 0),
    ("1969-12-31T23:59:59.999Z", -1),
    ("0001-01-01T00:00:00+01:00", -62_135_600_400_000),
])
def test_parse_fire_at_is_epoch_ms_in_any_offset(text, epoch_ms):
    assert parse_fire_at(text) == epoch_ms


@pytest.mark.parametrize("text", [
    "2026-13-01T00:00:00Z", "2026-12-24T18:00:00", "2026-12-24", "20261224T180000Z", "2026-12-24T18:00Z",
    "2026-12-24T18:00:00+0100", "2026-12-24T24:00:00Z", "2026-02-30T00:00:00Z", "2026-W52-4T18:00:00Z",
    "2026-12-24T18:00:00+24:00", " 2026-12-24T18:00:00Z", "", "\ud800", "２026-12-24T18:00:00Z", 1798131600,
    None, ["2026-12-24T18:00:00Z"],
])
def test_parse_fire_at_refuses_what_is_not_rfc3339_with_an_offset(text):
    with pytest.raises(FieldError) as info:
        parse_fire_at(text)
    assert info.value.field == "fire_at"


def test_parse_create_fire_at_excludes_durations_and_payload_is_optional():
    assert parse_create({"url": URL, "fire_at": "1970-01-01T00:00:01Z"}, MAX_DELAY) == (
        0, URL, 1000, None, None)
    assert _field_error({"url": URL, "fire_at": "1970-01-01T00:00:01Z", "seconds": 0}).field == "fire_at"
    timer = parse_create({"url": URL, "body": "b", "headers": {"X-A": "a b"}, "content_type": "text/csv"},
                         MAX_DELAY)
    assert timer.payload == Payload("b", "text/csv", {"X-A": "a b"})
    assert parse_create({"url": URL, "headers": {}}, MAX_DELAY).payload is None
    reserved = _field_error({"url": URL, "headers": {"webhook-whatever": "1"}})
    assert reserved.field == "headers.webhook-whatever"


def test_parse_reschedule_takes_fire_at_or_a_delay_and_nothing_else():
    assert parse_reschedule({"fire_at": "1970-01-01T00:00:01+00:00"}, MAX_DELAY) == (0, 1000)
    assert parse_reschedule({"minutes": 2}, MAX_DELAY) == (120, None)
    for body, field in [({}, "fire_at"), ({"url": URL}, "url"), ({"headers": {}}, "headers")]:
        with pytest.raises(FieldError) as info:
            parse_reschedule(body, MAX_DELAY)
        assert info.value.field == field


def test_payload_record_fields_round_trip_and_media_type():
    full = Payload("é", "application/json", {"X-A": "1"})
    assert full.fields() == ["b", "é", "c", "application/json", "h", '{"X-A":"1"}']
    assert Payload.from_fields("é".encode(), b"application/json", b'{"X-A":"1"}') == full
    assert Payload.from_fields(None, None, None) is None
    assert Payload(body="x").media_type == "text/plain; charset=utf-8"
    assert Payload(headers={"X-A": "1"}).media_type is None
    assert Payload(content_type="text/csv").media_type == "text/csv"


def test_timer_view_redacts_every_header_value_and_adds_payload_fields_only_when_given():
    record = {"url": URL, "fire_at": 1000, "status": "scheduled", "attempts": 0, "last_error": None,
              "next_attempt_at": None, "retry": None,
              "payload": Payload("b", None, {"Authorization": "Bearer x", "X-B": "y"})}
    view = timer_view(7, record, 0)
    assert (view["body"], view["content_type"]) == ("b", "text/plain; charset=utf-8")
    assert view["headers"] == {"Authorization": "<redacted>", "X-B": "<redacted>"}
    assert "Bearer x" not in repr(view)
    bare = timer_view(7, {**record, "payload": None}, 0)
    assert set(bare) == {"id", "time_left", "status", "fire_at", "url", "attempts", "last_error",
                         "next_attempt_at"}
# --- api.validation.parse_retry / parse_run -----------------------------------------------------------

@pytest.mark.parametrize(("retry", "field"), [
    ({"max_attempts": 0}, "retry.max_attempts"), ({"max_attempts": 101}, "retry.max_attempts"),
    ({"max_attempts": 2.0}, "retry.max_attempts"), ({"max_attempts": True}, "retry.max_attempts"),
    ({"max_attempts": "3"}, "retry.max_attempts"), ({"max_attempts": None}, "retry.max_attempts"),
    ({"max_seconds": -1}, "retry.max_seconds"), ({"max_seconds": 1.5}, "retry.max_seconds"),
    ({"max_attempt": 3}, "retry.max_attempt"), ([1], "retry"), ("x", "retry"), (3, "retry"), (None, "retry"),
])
def test_parse_retry_names_the_field_and_rule(retry, field):
    with pytest.raises(FieldError) as err:
        parse_retry({"url": "https://x.test/h", "retry": retry})
    assert err.value.field == field
    assert err.value.to_dict()["description"].startswith(f"'{field}': ")


def test_parse_retry_accepts_the_bounds_and_absence():
    for retry in ({"max_attempts": 1, "max_seconds": 0}, {"max_attempts": 100}, {"max_seconds": 10**12}):
        assert parse_retry({"retry": retry}) == retry
    assert parse_retry({"url": "https://x.test/h"}) is None
    assert parse_retry({"retry": {}}) is None


def test_parse_create_accepts_a_retry_field():
    assert parse_create({"url": "https://x.test/h", "retry": {"max_attempts": 2}}, 100) == (
        0, "https://x.test/h", None, None, {"max_attempts": 2})


def test_parse_run_defaults_and_fields():
    assert parse_run({}) == (None, None, False, None)
    assert parse_run({"status": "failed", "host": "X.Test.", "since": "2026-01-01T01:00:00+01:00",
                      "dry_run": True}) == ("x.test", 1_767_225_600_000, True, None)
    assert parse_run({"since": "2026-01-01T00:00:00.5Z"})[1] == 1_767_225_600_500


@pytest.mark.parametrize(("body", "field"), [
    ({"status": "fired"}, "status"), ({"dry_run": "yes"}, "dry_run"), ({"dry_run": 0}, "dry_run"),
    ({"host": 3}, "host"), ({"host": ""}, "host"), ({"since": "2026-01-01"}, "since"),
    ({"since": "2026-01-01T00:00:00"}, "since"), ({"since": 0}, "since"), ({"limit": 3}, "limit"),
    ({"cursor": 3}, "cursor"),
])
def test_parse_run_refuses_bad_fields(body, field):
    with pytest.raises(FieldError) as err:
        parse_run(body)
    assert err.value.field == field
