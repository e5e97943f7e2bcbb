"""The timer store's scripts on a real Redis: ids, batch claims and batch finishes."""

import time

import pytest
import redis

from sharding.ids import ID_EPOCH_UNITS, home_shard
from sharding.queues import timers_of
from sharding.records import Finish, Payload, RetryLimits
from sharding.store import QUEUED_MESSAGES_PER_CONSUMER, BeyondMaxDelay, TimerStore, now_ms
from tests.harness import ReplyDropper, clock_units, in_forked_children, one_ms_later

LIMITS = RetryLimits(max_attempts=10, max_seconds=86_400)


@pytest.fixture
def store(redis_client, redis_server):
    """A TimerStore on the session's Redis (emptied for each test by ``redis_client``)."""
    return TimerStore(redis_server.url)


def test_ids_come_from_the_redis_clock_in_100_microsecond_units(store):
    before = int(time.time() * 10_000) - ID_EPOCH_UNITS
    timer_id, _, _ = store.create("https://x.test/h", 60_000, 2)
    after = int(time.time() * 10_000) - ID_EPOCH_UNITS
    assert home_shard(timer_id) == 2
    # The Redis server runs on this machine: its clock is ours, give or take 1 s.
    assert before - 10_000 <= timer_id // 1000 <= after + 10_000
    assert timer_id < 2 ** 53


def test_a_create_after_the_server_lost_its_scripts_loads_it_and_stores_one_timer(store, redis_client):
    # A restarted or promoted server knows none of this process's scripts (NoScriptError):
    # the create loads it and runs again, and the refused first try stored nothing.
    first, _, _ = store.create("https://x.test/h", 60_000, 1)
    redis_client.script_flush()
    second, record, _ = store.create("https://x.test/h", 60_000, 1)
    assert second > first
    assert record["status"] == "scheduled"
    assert redis_client.zrange("due:{t1}", 0, -1) == [str(first).encode(), str(second).encode()]
    assert store.get(second)[0]["url"] == "https://x.test/h"


def test_a_create_whose_reply_is_lost_is_not_sent_again(store, redis_server, redis_client):
    # A create sent again after its reply was lost would store a second timer, unknown to
    # the client, that fires too: the error goes up instead (the API answers 503).
    proxy = ReplyDropper(redis_server.port)
    try:
        through_proxy = TimerStore(proxy.url)
        first, _, _ = through_proxy.create("https://x.test/h", 60_000, 1)
        proxy.drop_next_reply()
        with pytest.raises(redis.exceptions.ConnectionError):
            through_proxy.create("https://x.test/h", 60_000, 1)
        # The script ran once: one more timer, not two; and the next create works.
        assert redis_client.zcard("due:{t1}") == 2
        third, _, _ = through_proxy.create("https://x.test/h", 60_000, 1)
        assert redis_client.zcard("due:{t1}") == 3 and third > first
    finally:
        proxy.close()


def _create_many(url, count, shards, results):
    """Child process: ``count`` creates spread over ``shards`` shards; puts the ids on ``results``."""
    store = TimerStore(url)
    results.put([store.create("https://x.test/h", 60_000, k % shards)[0] for k in range(count)])


def test_ids_are_unique_over_concurrent_creates_from_several_processes(store, redis_server):
    batches = in_forked_children(_create_many, [(redis_server.url, 500, 4)] * 4)
    ids = [timer_id for batch in batches for timer_id in batch]
    assert len(ids) == 2000
    assert len(set(ids)) == 2000
    assert all(0 < timer_id < 2 ** 53 for timer_id in ids)
    # Each names its home shard; one shard's ids grow in creation order (its counter only grows).
    for batch in batches:
        assert [home_shard(i) for i in batch] == [k % 4 for k in range(500)]
        for shard in range(4):
            assert batch[shard::4] == sorted(batch[shard::4])


def test_a_timer_created_1_ms_after_another_has_a_larger_id_whatever_the_shards(store, redis_client):
    # Every ordered pair of shards, the higher first too: ids of one clock unit order by shard.
    pairs = [(a, b) for a in range(4) for b in range(4) if a != b] * 5
    for first_shard, second_shard in pairs:
        first, _, _ = store.create("https://x.test/h", 60_000, first_shard)
        one_ms_later(redis_client)
        second, _, _ = store.create("https://x.test/h", 60_000, second_shard)
        assert second > first, (first_shard, second_shard, first, second)


def test_a_counter_up_to_1_ms_ahead_of_the_clock_keeps_the_order(store, redis_client):
    # A burst of 10 creates within one 100 us unit leaves the counter 0.9 ms ahead.
    redis_client.set(store.shard(3).seq_key, clock_units(redis_client) + 9)
    first, _, _ = store.create("https://x.test/h", 60_000, 3)
    one_ms_later(redis_client)
    second, _, _ = store.create("https://x.test/h", 60_000, 0)
    assert second > first


def test_a_counter_far_ahead_of_the_clock_gives_unique_increasing_ids_on_its_shard(store, redis_client):
    # E.g. the clock stepped back, or a burst outran it: the counter only grows.
    ahead = clock_units(redis_client) + 10_000_000
    redis_client.set(store.shard(1).seq_key, ahead)
    first, _, _ = store.create("https://x.test/h", 60_000, 1)
    second, _, _ = store.create("https://x.test/h", 60_000, 1)
    assert (first, second) == ((ahead + 1) * 1000 + 1, (ahead + 2) * 1000 + 1)
    assert store.get(second)[0]["status"] == "scheduled"
    # The documented exception: another shard, on the clock, gives smaller ids until the
    # clock catches up (the order promise needs counters at most 1 ms ahead).
    one_ms_later(redis_client)
    other, _, _ = store.create("https://x.test/h", 60_000, 0)
    assert other < first


def _due_now(store, shard, count):
    return [store.create("https://x.test/h", 0, shard)[0] for _ in range(count)]


def test_feed_spreads_a_trickle_one_per_message_and_batches_a_backlog(store, redis_client):
    queue = store.shard(0).queue_key
    assert store.feed(0, 0, 30_000, spread=8) == 0
    few = _due_now(store, 0, 3)
    assert store.feed(0, 0, 30_000, spread=8) == 3
    assert [timers_of(m) for m in reversed(redis_client.lrange(queue, 0, -1))] == [[i] for i in few]
    redis_client.delete(queue)
    many = _due_now(store, 0, 40)
    assert store.feed(0, 0, 30_000, spread=8) == 40
    assert [timers_of(m) for m in reversed(redis_client.lrange(queue, 0, -1))] == [
        many[k:k + 5] for k in range(0, 40, 5)]
    redis_client.delete(queue)
    backlog = _due_now(store, 0, 40)
    assert store.feed(0, 0, 30_000, spread=1) == 40
    assert [timers_of(m) for m in reversed(redis_client.lrange(queue, 0, -1))] == [
        backlog[:16], backlog[16:32], backlog[32:]]


def test_claim_a_batch_leases_each_timer_and_reports_each_timer(store, redis_client):
    due = _due_now(store, 1, 3)
    later, _, _ = store.create("https://x.test/h", 60_000, 1)
    cancelled = _due_now(store, 1, 1)[0]
    assert store.cancel(cancelled) == "scheduled"
    claims = store.claim([due[0], later, cancelled, due[1], due[2], 999_001], lease_ms=10_000)
    assert [(c.timer_id, c.status) for c in claims] == [
        (due[0], "firing"), (later, "early"), (cancelled, "cancelled"), (due[1], "firing"),
        (due[2], "firing"), (999_001, "missing")]
    assert [c.attempt for c in claims if c.status == "firing"] == [1, 1, 1]
    now = claims[0].now_ms
    leases = dict(redis_client.zrange(store.shard(1).leases_key, 0, -1, withscores=True))
    assert leases == {b"%d" % due[0]: now + 10_000, b"%d" % due[1]: now + 10_000,
                      b"%d" % due[2]: now + 10_000}
    assert store.get(later)[0]["status"] == "scheduled"
    with pytest.raises(ValueError):
        store.claim([due[0], _due_now(store, 2, 1)[0]], lease_ms=10_000)


def test_finish_a_batch_records_each_outcome_and_fences_stale_attempts(store, redis_client):
    ids = _due_now(store, 3, 4)
    store.claim(ids, lease_ms=10_000)
    results = store.finish([
        Finish(ids[0], 1, "fired"), Finish(ids[1], 1, "retrying", "HTTP 503", 60_000),
        Finish(ids[2], 1, "failed", "HTTP 404"), Finish(ids[3], 2, "fired")], LIMITS)
    assert [(applied, status) for applied, status, _ in results] == [
        (True, "fired"), (True, "retrying"), (True, "failed"), (False, "firing")]
    results = [(applied, next_ms) for applied, _, next_ms in results]
    records = [store.get(i)[0] for i in ids]
    assert [(r["status"], r["attempts"], r["last_error"]) for r in records] == [
        ("fired", 1, None), ("retrying", 1, "HTTP 503"), ("failed", 1, "HTTP 404"), ("firing", 1, None)]
    shard = store.shard(3)
    assert redis_client.zscore(shard.due_key, ids[1]) == results[1][1]
    assert redis_client.zscore(shard.retries_key, ids[1]) == results[1][1]
    assert results[1][1] - results[0][1] == pytest.approx(60_000, abs=50)
    assert redis_client.zrange(shard.leases_key, 0, -1) == [b"%d" % ids[3]]
    assert redis_client.zrange(shard.done_keys["fired"], 0, -1) == [b"%d" % ids[0]]
    assert redis_client.zrange(shard.done_keys["failed"], 0, -1) == [b"%d" % ids[2]]


def test_renew_extends_leases_of_attempts_still_owned_only(store, redis_client):
    ids = _due_now(store, 2, 3)
    claims = store.claim(ids, lease_ms=1_000)
    [(applied, _, _)] = store.finish([Finish(ids[2], 1, "fired")], LIMITS)
    assert applied
    # Recovery took ids[1] back and a new attempt claimed it: the old claim must not extend it.
    redis_client.hset(store.shard(2).record_key(ids[1]), "a", 2)
    assert store.renew(claims, lease_ms=60_000) == 1
    leases = dict(redis_client.zrange(store.shard(2).leases_key, 0, -1, withscores=True))
    now = claims[0].now_ms
    assert leases[b"%d" % ids[0]] >= now + 60_000
    assert leases[b"%d" % ids[1]] == now + 1_000
    assert b"%d" % ids[2] not in leases
    assert int(redis_client.hget(store.shard(2).record_key(ids[0]), "l")) == leases[b"%d" % ids[0]]


# --- scheduling API: absolute fire times, rescheduling, payloads -------------------------------------

def test_a_payload_is_stored_only_as_far_as_it_is_given(store, redis_client):
    def fields(timer_id):
        return redis_client.hgetall(store.shard(0).record_key(timer_id))

    bare, _, _ = store.create("https://x.test/h", 60_000, 0)
    # A timer without a payload costs exactly what it did before the payload existed.
    assert sorted(fields(bare)) == [b"f", b"r", b"s", b"u"]
    body_only, _, _ = store.create("https://x.test/h", 60_000, 0, payload=Payload(body=""))
    assert sorted(fields(body_only)) == [b"b", b"f", b"r", b"s", b"u"]
    full, record, _ = store.create("https://x.test/h", 60_000, 0, payload=Payload(
        "é", "application/json", {"X-A": "1", "Authorization": "Bearer x"}))
    stored = fields(full)
    assert (stored[b"b"], stored[b"c"], stored[b"h"]) == (
        "é".encode(), b"application/json", b'{"X-A":"1","Authorization":"Bearer x"}')
    assert store.get(full)[0]["payload"] == record["payload"]
    assert store.get(bare)[0]["payload"] is None
    [claim] = store.claim([store.create("https://x.test/h", 0, 0, payload=record["payload"])[0]], 10_000)
    assert claim.payload == record["payload"]


def test_an_absolute_fire_time_is_kept_a_past_one_is_now_a_far_one_refused(store, redis_client):
    now = now_ms(redis_client)
    timer_id, record, created = store.create("https://x.test/h", 0, 1, at_ms=now + 5_000, max_delay_ms=10_000)
    assert record["fire_at"] == now + 5_000 == store.get(timer_id)[0]["fire_at"]
    assert redis_client.zscore(store.shard(1).due_key, timer_id) == now + 5_000
    past, record, created = store.create("https://x.test/h", 0, 1, at_ms=now - 60_000, max_delay_ms=10_000)
    assert record["fire_at"] == created
    seq = redis_client.get(store.shard(1).seq_key)
    with pytest.raises(BeyondMaxDelay):
        store.create("https://x.test/h", 0, 1, at_ms=now + 60_000, max_delay_ms=10_000)
    # Nothing was stored, not even an id taken.
    assert redis_client.get(store.shard(1).seq_key) == seq
    assert redis_client.zcard(store.shard(1).due_key) == 2


def test_reschedule_drops_a_queued_message_through_the_claims_early_check(store, redis_client):
    timer_id, _, _ = store.create("https://x.test/h", 0, 2)
    assert store.feed(2, 2, 30_000) == 1  # a message for it is on the queue now
    shard = store.shard(2)
    # A due time left on a scheduled record (none is today) must not outlive the new fire time.
    redis_client.hset(shard.record_key(timer_id), "d", 1)
    status, record, now = store.reschedule(timer_id, delay_ms=60_000)
    assert (status, record["fire_at"], record["status"]) == ("rescheduled", now + 60_000, "scheduled")
    assert redis_client.hget(shard.record_key(timer_id), "d") is None
    assert redis_client.zscore(shard.due_key, timer_id) == now + 60_000
    [claim] = store.claim([timer_id], 10_000)
    assert (claim.status, claim.due_ms) == ("early", now + 60_000)
    assert store.get(timer_id)[0]["status"] == "scheduled"
    assert redis_client.zscore(shard.due_key, timer_id) == now + 60_000
    assert store.feed(2, 2, 30_000) == 0  # not due: the due index feeds it at the new time


def test_reschedule_moves_a_retrying_timers_next_attempt_and_nothing_else(store, redis_client):
    timer_id = _due_now(store, 3, 1)[0]
    store.claim([timer_id], 10_000)
    assert store.reschedule(timer_id, delay_ms=1_000)[:2] == ("firing", None)
    store.finish([Finish(timer_id, 1, "retrying", "HTTP 503", 3_600_000)], LIMITS)
    at = now_ms(redis_client) + 2_000
    status, record, _ = store.reschedule(timer_id, at_ms=at, max_delay_ms=10_000)
    assert (status, record["status"], record["attempts"], record["last_error"]) == (
        "rescheduled", "retrying", 1, "HTTP 503")
    shard = store.shard(3)
    assert redis_client.zscore(shard.due_key, timer_id) == at
    assert redis_client.zscore(shard.retries_key, timer_id) == at
    assert int(redis_client.hget(shard.record_key(timer_id), "d")) == at
    with pytest.raises(BeyondMaxDelay):
        store.reschedule(timer_id, at_ms=at + 3_600_000, max_delay_ms=10_000)
    assert redis_client.zscore(shard.due_key, timer_id) == at
    assert store.cancel(timer_id) == "retrying"
    assert store.reschedule(timer_id, delay_ms=0)[:2] == ("cancelled", None)
    assert store.reschedule(999_003, delay_ms=0)[:2] == ("missing", None)
def _attempt(store, timer_id, status="retrying", wait_ms=60_000, limits=LIMITS, error="HTTP 503"):
    """Claim ``timer_id`` (made due first) and record ``status`` for that attempt; returns finish's result."""
    shard = store.shard(home_shard(timer_id))
    store.shard(home_shard(timer_id)).redis.hset(shard.record_key(timer_id), "d", 0)
    [claim] = store.claim([timer_id], lease_ms=10_000)
    assert claim.status == "firing", claim
    [result] = store.finish([Finish(timer_id, claim.attempt, status, error, wait_ms, claim.now_ms)], limits)
    return claim, result


def test_a_timer_without_retry_stores_no_retry_fields_and_one_with_it_only_what_it_gave(store, redis_client):
    plain, _, _ = store.create("https://x.test/h", 60_000, 0)
    own, record, _ = store.create("https://x.test/h", 60_000, 0, retry={"max_attempts": 2})
    assert set(redis_client.hgetall(store.shard(0).record_key(plain))) == {b"u", b"f", b"s", b"r"}
    assert redis_client.hget(store.shard(0).record_key(own), "m") == b"2"
    assert redis_client.hget(store.shard(0).record_key(own), "w") is None
    assert record["retry"] == store.get(own)[0]["retry"] == {"max_attempts": 2}
    assert store.get(plain)[0]["retry"] is None


def test_a_timer_fired_at_its_first_attempt_gets_no_window_field(store, redis_client):
    timer_id, _, _ = store.create("https://x.test/h", 0, 1)
    _, (applied, status, _) = _attempt(store, timer_id, "fired", 0)
    assert (applied, status) == (True, "fired")
    assert redis_client.hget(store.shard(1).record_key(timer_id), "p") is None


def test_the_timers_own_max_attempts_overrides_the_default_on_the_same_path(store):
    own, _, _ = store.create("https://x.test/h", 0, 1, retry={"max_attempts": 2})
    plain, _, _ = store.create("https://x.test/h", 0, 1)
    limits = RetryLimits(max_attempts=3, max_seconds=86_400)
    assert [_attempt(store, own, limits=limits)[1][1] for _ in range(2)] == ["retrying", "failed"]
    assert [_attempt(store, plain, limits=limits)[1][1] for _ in range(3)] == [
        "retrying", "retrying", "failed"]
    record = store.get(own)[0]
    assert (record["status"], record["attempts"], record["last_error"], record["next_attempt_at"]) == (
        "failed", 2, "HTTP 503", None)


def test_a_retry_is_due_after_its_wait_and_shows_as_next_attempt_at(store):
    timer_id, _, _ = store.create("https://x.test/h", 0, 2)
    claim, (applied, status, next_ms) = _attempt(store, timer_id, wait_ms=5_000)
    assert (applied, status) == (True, "retrying")
    assert claim.now_ms + 5_000 <= next_ms <= claim.now_ms + 5_000 + 1_000
    assert store.get(timer_id)[0]["next_attempt_at"] == next_ms


def test_the_window_ends_retries_and_the_last_attempt_is_due_at_its_deadline(store, redis_client):
    timer_id, _, _ = store.create("https://x.test/h", 0, 2, retry={"max_seconds": 20})
    first, (_, status, next_ms) = _attempt(store, timer_id, wait_ms=1_000)
    assert status == "retrying"
    assert int(redis_client.hget(store.shard(2).record_key(timer_id), "p")) == first.now_ms
    # A wait that ends past the deadline is cut to end at it: the last attempt comes at the deadline.
    _, (_, status, next_ms) = _attempt(store, timer_id, wait_ms=60_000)
    assert (status, next_ms) == ("retrying", first.now_ms + 20_000)
    # At the deadline no attempt may follow.
    redis_client.hset(store.shard(2).record_key(timer_id), "p", first.now_ms - 20_000)
    _, (_, status, _) = _attempt(store, timer_id, wait_ms=1_000)
    assert status == "failed"


def test_a_zero_window_allows_no_retry(store):
    timer_id, _, _ = store.create("https://x.test/h", 0, 2, retry={"max_seconds": 0})
    assert _attempt(store, timer_id, wait_ms=0)[1][1] == "failed"


def test_run_makes_pending_timers_due_now_and_redrives_failed_ones_with_a_fresh_budget(store, redis_client):
    later, _, _ = store.create("https://x.test/h", 3_600_000, 3)
    failed, _, _ = store.create("https://x.test/h", 0, 3, retry={"max_attempts": 1})
    assert _attempt(store, failed)[1][1] == "failed"
    assert redis_client.pttl(store.shard(3).record_key(failed)) > 0
    fired, _, _ = store.create("https://x.test/h", 0, 3)
    _attempt(store, fired, "fired")
    assert store.run([later, failed, fired, 999_003]) == ["scheduled", "failed", "fired", "missing"]
    shard = store.shard(3)
    record, now = store.get(later)
    assert (record["status"], now - 1_000 <= record["fire_at"] <= now) == ("scheduled", True)
    assert redis_client.zscore(shard.due_key, later) == record["fire_at"]
    record, _ = store.get(failed)
    assert (record["status"], record["attempts"], record["last_error"]) == ("retrying", 1, "HTTP 503")
    assert redis_client.pttl(shard.record_key(failed)) == -1
    assert redis_client.zscore(shard.done_keys["failed"], failed) is None
    assert redis_client.zscore(shard.retries_key, failed) == record["next_attempt_at"]
    # A fresh budget: its own max_attempts of 1 allows one more attempt, which backs off as a first.
    claim, (_, status, _) = _attempt(store, failed)
    assert (claim.attempt, claim.in_budget, status) == (2, 1, "failed")
    assert store.get(fired)[0]["status"] == "fired"


def test_bulk_run_redrives_failed_timers_only_and_each_once(store):
    failed, _, _ = store.create("https://x.test/h", 0, 0, retry={"max_attempts": 1})
    _attempt(store, failed)
    pending, _, _ = store.create("https://x.test/h", 3_600_000, 0)
    assert store.run([failed, pending], failed_only=True) == ["failed", "scheduled"]
    assert store.run([failed, pending], failed_only=True) == ["retrying", "scheduled"]
    record = store.get(pending)[0]
    assert record["fire_at"] > store.get(failed)[1] + 3_000_000


def test_expire_lease_applies_the_timers_own_limits(store, redis_client):
    own, _, _ = store.create("https://x.test/h", 0, 1, retry={"max_attempts": 1})
    plain, _, _ = store.create("https://x.test/h", 0, 1)
    store.claim([own, plain], lease_ms=0)
    assert store.expire_lease(own, LIMITS) == "failed"
    assert store.expire_lease(plain, LIMITS) == "retrying"
    assert store.get(own)[0]["last_error"] == "lease expired on the last attempt"


def test_a_retry_is_never_claimed_early(store, redis_client):
    timer_id, _, _ = store.create("https://x.test/h", 0, 1)
    _, (_, status, next_ms) = _attempt(store, timer_id, wait_ms=5_000)
    assert status == "retrying"
    [early] = store.claim([timer_id], lease_ms=10_000, early_ms=10_000)
    assert (early.status, early.due_ms) == ("early", next_ms)


def test_release_undoes_claims_never_sent_and_leaves_others_alone(store, redis_client):
    shard = store.shard(1)
    fresh, retried, expired, recovered = _due_now(store, 1, 4)
    first, _ = _attempt(store, retried, wait_ms=0)
    redis_client.hset(shard.record_key(retried), "d", 0)
    redis_client.zadd(shard.retries_key, {retried: 0})
    before = redis_client.hgetall(shard.record_key(retried))
    claims = store.claim([fresh, retried, expired, recovered], lease_ms=10_000)
    assert [(c.status, c.attempt, c.previous) for c in claims] == [
        ("firing", 1, "scheduled"), ("firing", 2, "retrying"), ("firing", 1, "scheduled"),
        ("firing", 1, "scheduled")]
    # A firing timer cannot be cancelled, but its lease can run out: recovery took `expired`
    # back (retrying), and `recovered` back and claimed again (attempt 2): neither is the claim's.
    assert store.cancel(expired) == "firing"
    redis_client.hset(shard.record_key(expired), "l", 0)
    assert store.expire_lease(expired, LIMITS) == "retrying"
    redis_client.hset(shard.record_key(recovered), "a", 2)

    assert store.release(claims, visibility_ms=30_000) == [fresh, retried]

    # Pending again as before the claim: a never-attempted timer has no 'a' field again.
    assert set(redis_client.hgetall(shard.record_key(fresh))) == {b"u", b"f", b"s", b"r"}
    assert redis_client.hgetall(shard.record_key(retried)) == before
    assert store.get(retried)[0]["attempts"] == first.attempt == 1
    # Hidden from feeds while the caller gives them back to a queue; a retry stays listed.
    now = claims[0].now_ms
    for timer_id in (fresh, retried):
        assert now + 30_000 <= redis_client.zscore(shard.due_key, timer_id) <= now + 31_000
    assert redis_client.zscore(shard.retries_key, retried) == 0
    assert redis_client.zrange(shard.leases_key, 0, -1) == [b"%d" % recovered]
    assert (store.get(expired)[0]["status"], store.get(expired)[0]["attempts"]) == ("retrying", 1)
    # Released, they are claimed again with the same attempt numbers.
    redis_client.zadd(shard.due_key, {fresh: 0, retried: 0})
    assert [(c.status, c.attempt) for c in store.claim([fresh, retried], lease_ms=10_000)] == [
        ("firing", 1), ("firing", 2)]


def test_a_shards_own_queue_is_fed_only_while_it_is_short(store, redis_client):
    shard = store.shard(0)
    due = _due_now(store, 0, 3)
    long_queue = [b'{"timers":[1000]}'] * (2 * QUEUED_MESSAGES_PER_CONSUMER)
    redis_client.lpush(shard.queue_key, *long_queue)
    # Two consumers' worth of messages queued: the backlog waits in the due index, not hidden.
    assert store.feed(0, 0, 30_000, spread=2) == 0
    assert redis_client.zrangebyscore(shard.due_key, "-inf", now_ms(redis_client)) == [b"%d" % i for i in due]
    # With room for a third consumer's messages, they are fed.
    assert store.feed(0, 0, 30_000, spread=3) == 3
    assert [timers_of(m) for m in redis_client.lrange(shard.queue_key, 0, 2)] == [[i] for i in reversed(due)]
    # A retired shard's timers fed to another shard's queue are not held back by its length.
    redis_client.zadd(shard.due_key, dict.fromkeys(due, 0))
    redis_client.lpush(store.shard(1).queue_key, *long_queue)
    assert store.feed(0, 1, 30_000, spread=1) == 3
