"""The timer store's scripts on a real Redis: ids, batch claims and batch finishes."""

import time

import pytest

from sharding.store import ID_EPOCH_UNITS, TimerStore, home_shard


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


def test_ids_increase_across_shards_in_creation_order_and_never_repeat(store):
    ids = [store.create("https://x.test/h", 60_000, k % 4)[0] for k in range(200)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 200
    assert [home_shard(i) for i in ids] == [k % 4 for k in range(200)]


def test_a_shard_counter_ahead_of_the_clock_still_gives_unique_ids(store, redis_client):
    # E.g. the clock stepped back, or a burst outran it: the counter only grows.
    ahead = (int(time.time() * 10_000) - ID_EPOCH_UNITS) * 2
    redis_client.set(store.shard(1).seq_key, ahead)
    first, _, _ = store.create("https://x.test/h", 60_000, 1)
    second, _, _ = store.create("https://x.test/h", 60_000, 1)
    assert (first, second) == ((ahead + 1) * 1000 + 1, (ahead + 2) * 1000 + 1)
    assert store.get(second)[0]["status"] == "scheduled"
