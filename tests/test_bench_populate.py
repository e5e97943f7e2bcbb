"""The benchmarks' backlog storing (bench.run.populate, store_batch) on a real redis-server and on a real
Redis Cluster: the product's create scripts pipelined, records as the product's own create makes them."""

import pytest

from bench.run import HOOK_URL, POPULATE_BATCH, populate, populate_equivalence
from sharding.ids import home_shard
from sharding.store import TimerStore
from tests.harness import empty_cluster

SHARDS = 4


@pytest.fixture(params=["one server", "cluster"])
def store(request):
    """A ``TimerStore`` of ``SHARDS`` shards on the emptied session redis-server, or on the emptied session
    cluster."""
    if request.param == "one server":
        request.getfixturevalue("redis_client")
        store = TimerStore(request.getfixturevalue("redis_server").url, live_shards=SHARDS)
    else:
        cluster = request.getfixturevalue("redis_cluster")
        empty_cluster(cluster)
        store = TimerStore(cluster.url, cluster=True, live_shards=SHARDS)
    store.register_shards(SHARDS)
    return store


def _due(store):
    """{shard index: [(timer id, score)]} of every shard's due index."""
    return {index: [(int(member), int(score)) for member, score in
                    store.shard(index).redis.zrange(store.shard(index).due_key, 0, -1, withscores=True)]
            for index in range(SHARDS)}


def test_populate_stores_timers_in_turn_over_the_shards_as_the_product_reads_them(store):
    earliest, latest = populate(store, 10, SHARDS, 3_600_000)
    due = _due(store)
    assert [len(due[index]) for index in range(SHARDS)] == [3, 3, 2, 2]
    for index, entries in due.items():
        for timer_id, score in entries:
            assert home_shard(timer_id) == index
            record, now = store.get(timer_id)
            assert (record["url"], record["status"], record["fire_at"]) == (HOOK_URL, "scheduled", score)
            assert earliest <= score <= latest
            assert 3_600_000 - 60_000 <= score - now <= 3_600_000


def test_populate_in_forked_processes_stores_every_timer_once(store):
    count = 4 * POPULATE_BATCH + 3
    populate(store, count, SHARDS, 3_600_000, processes=2)
    due = _due(store)
    ids = [timer_id for entries in due.values() for timer_id, _ in entries]
    assert (len(ids), len(set(ids))) == (count, count)
    assert sorted(len(entries) for entries in due.values()) == [1000, 1000, 1001, 1002]


def test_populated_records_equal_the_product_create(store):
    checked = populate_equivalence(store)
    assert (checked["equal"], checked["fields"]) == (True, ["f", "r", "s", "u"])
