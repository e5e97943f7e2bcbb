"""The service on a real Redis Cluster (3 masters + 3 replicas, ``sharding.local_cluster``):
the contract's core cases, a burst of 400 timers, the spread of shards over masters, and
the ids of cluster creates (unique, time-ordered, proposed by the API: ``sharding.ids``).

One service on the session's cluster serves every test of this module (each looks only at
its own timers; the id tests use a store in this process on the same shards); tests that
need a service of their own are in ``test_cluster_ops.py``.
"""

import collections
import concurrent.futures
import datetime
import time

import pytest
import requests

from sharding.ids import ID_EPOCH_UNITS, PROPOSAL_WINDOW_UNITS, PROPOSED_IDS, home_shard
from sharding.shard import NotReplicated
from sharding.store import TimerStore
from sharding.topology import TAGS_KEY
from tests.harness import (
    Service,
    clock_units,
    consumers_ready,
    empty_cluster,
    in_forked_children,
    one_ms_later,
    wait_until,
)
from tests.test_delivery import settled, wait_status

SHARDS = 6


@pytest.fixture(scope="module")
def on_cluster(redis_cluster, tmp_path_factory):
    """The whole service on the cluster, 6 shards, every consumer started."""
    empty_cluster(redis_cluster)
    service = Service(None, str(tmp_path_factory.mktemp("on-cluster")), {
        "REDIS_CLUSTER_URL": redis_cluster.url, "TIMER_SHARDS": str(SHARDS), "TIMER_WORKERS_PER_SHARD": "1"})
    try:
        service.start()
        consumers_ready(service, count=SHARDS)
        yield service
    finally:
        service.stop(timeout=10)


@pytest.fixture(autouse=True)
def _fresh_receiver(receiver):
    receiver.reset()


def _delivered_once(receiver, service, timer_ids, path="/hook", timeout=30):
    """Wait until each of ``timer_ids`` is fired and every queue is empty; assert one
    webhook each, at ``path/<id>`` with ``webhook-id: <id>``."""
    wait_until(lambda: all(service.get(t)["status"] == "fired" for t in timer_ids) and settled(service),
               timeout=timeout, message="every timer fired")
    got = collections.Counter(r["headers"]["webhook-id"] for r in receiver.received()
                              if r["headers"].get("webhook-id") in {str(t) for t in timer_ids})
    assert got == {str(t): 1 for t in timer_ids}
    for request in receiver.received():
        assert request["path"].split("?")[0] == f"{path}/{request['headers']['webhook-id']}"


def test_create_read_fire_once_and_url_joining_on_a_cluster(on_cluster, receiver):
    created = requests.post(f"{on_cluster.url}/timers", json={"url": f"{receiver.url}/hook/", "seconds": 1},
                            timeout=10)
    assert created.status_code == 201, created.text
    body = created.json()
    timer_id = body["id"]
    assert created.headers["Location"] == f"/timers/{timer_id}"
    assert body["time_left"] == 1 and body["status"] == "scheduled"
    read = on_cluster.get(timer_id)
    assert (read["id"], read["status"], read["attempts"], read["last_error"]) == (
        timer_id, "scheduled", 0, None)
    assert read["time_left"] in (0, 1)

    query = on_cluster.create(f"{receiver.url}/hook?a=1", seconds=0).json()["id"]
    _delivered_once(receiver, on_cluster, [timer_id, query])
    assert [r["path"] for r in receiver.received() if r["headers"]["webhook-id"] == str(query)] == [
        f"/hook/{query}?a=1"]
    assert wait_status(on_cluster, timer_id, "fired")["attempts"] == 1

    listed = requests.get(f"{on_cluster.url}/timers?status=fired&limit=1000", timeout=10).json()
    assert {timer_id, query} <= {t["id"] for t in listed["timers"]}


def test_bad_input_unknown_ids_and_cancel_on_a_cluster(on_cluster, receiver):
    bad = requests.post(f"{on_cluster.url}/timers", json={"url": f"{receiver.url}/h", "hours": "1"},
                        timeout=10)
    assert bad.status_code == 400 and bad.json()["field"] == "hours"
    assert requests.post(f"{on_cluster.url}/timers", json={"url": "ftp://x.test/h"},
                         timeout=10).json()["field"] == "url"
    assert requests.get(f"{on_cluster.url}/timers/123456789", timeout=10).status_code == 404
    timer_id = on_cluster.create(f"{receiver.url}/h", seconds=60).json()["id"]
    assert requests.delete(f"{on_cluster.url}/timers/{timer_id}", timeout=10).status_code == 204
    assert on_cluster.get(timer_id)["status"] == "cancelled"
    shards = requests.get(f"{on_cluster.url}/shards", timeout=10).json()["shards"]
    assert [s["index"] for s in shards] == list(range(SHARDS))
    assert requests.get(f"{on_cluster.url}/readyz", timeout=10).status_code == 200
    assert requests.get(f"{on_cluster.url}/dashboard", timeout=10).status_code == 200
    assert "timer_shard_depth" in requests.get(f"{on_cluster.url}/metrics", timeout=10).text


def test_fire_at_payload_retry_patch_run_and_re_drive_on_a_cluster(on_cluster, receiver):
    receiver.script("/fails", [(404, {}, 0)])
    fire_at = datetime.datetime.fromtimestamp(time.time() + 600, datetime.UTC).isoformat()
    body = {"url": f"{receiver.url}/hook", "fire_at": fire_at, "body": "hello", "content_type": "text/x",
            "headers": {"X-Trace": "t-1"}, "retry": {"max_attempts": 3}}
    created = requests.post(f"{on_cluster.url}/timers", json=body, timeout=10)
    assert created.status_code == 201, created.text
    timer_id = created.json()["id"]
    assert on_cluster.get(timer_id)["time_left"] > 590
    patched = requests.patch(f"{on_cluster.url}/timers/{timer_id}", json={"seconds": 1}, timeout=10)
    assert patched.status_code == 200 and patched.json()["time_left"] == 1, patched.text
    later = on_cluster.create(f"{receiver.url}/hook", hours=1).json()["id"]
    assert requests.post(f"{on_cluster.url}/timers/{later}/run", timeout=10).status_code == 202
    _delivered_once(receiver, on_cluster, [timer_id, later])
    sent = next(r for r in receiver.received() if r["headers"]["webhook-id"] == str(timer_id))
    assert (sent["body"], sent["headers"]["content-type"], sent["headers"]["x-trace"]) == (
        b"hello", "text/x", "t-1")

    failing = on_cluster.create(f"{receiver.url}/fails", seconds=0).json()["id"]
    wait_status(on_cluster, failing, "failed")
    receiver.script("/fails", [(200, {}, 0)])
    redriven = requests.post(f"{on_cluster.url}/timers/run", json={"status": "failed"}, timeout=30)
    assert redriven.status_code == 200 and redriven.json()["run"] >= 1, redriven.text
    wait_status(on_cluster, failing, "fired")


def test_400_timers_due_in_one_second_are_each_delivered_once(on_cluster, receiver):
    session = requests.Session()

    def create(_):
        response = session.post(f"{on_cluster.url}/timers", timeout=10,
                                json={"url": f"{receiver.url}/hook", "seconds": 1})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(create, range(400)))
    assert len(set(ids)) == 400
    assert set(collections.Counter(home_shard(t) for t in ids)) == set(range(SHARDS))
    _delivered_once(receiver, on_cluster, ids, timeout=60)


def test_each_master_holds_the_keys_of_two_shards(on_cluster, redis_cluster, receiver):
    for _ in range(3 * SHARDS):
        assert on_cluster.create(f"{receiver.url}/h", seconds=600).status_code == 201
    store = TimerStore(redis_cluster.url, cluster=True)
    shard_of_tag = {tag.decode(): int(index) for index, tag in store.control.hgetall(TAGS_KEY).items()}
    assert sorted(shard_of_tag.values()) == list(range(SHARDS))
    per_master = {}
    for port in redis_cluster.masters():
        keys = [k for k in redis_cluster.client(port).scan_iter(count=1000) if k.endswith("}") or "}:" in k]
        per_master[port] = {shard_of_tag[k[k.index("{"):k.index("}") + 1]] for k in keys}
    assert sorted(len(shards) for shards in per_master.values()) == [2, 2, 2], per_master
    assert set().union(*per_master.values()) == set(range(SHARDS))


# Ids on a cluster (sharding.ids): the store in this process, on the same shards.

@pytest.fixture
def cluster_store(redis_cluster):
    """A TimerStore of this process on the cluster, its 6 shards registered."""
    redis_cluster.wait_ok()
    store = TimerStore(redis_cluster.url, cluster=True, live_shards=SHARDS)
    store.register_shards(SHARDS)
    return store


def _proposals(store):
    return sum((store.shard(i).id_proposals.counts for i in range(SHARDS)), collections.Counter())


def _create_many_on_cluster(url, count, results):
    """Child process: ``count`` creates spread over the shards; puts (ids, proposal counts) on ``results``."""
    store = TimerStore(url, cluster=True, live_shards=SHARDS)
    ids = [store.create("https://x.test/h", 600_000, k % SHARDS)[0] for k in range(count)]
    results.put((ids, dict(_proposals(store))))


def test_cluster_ids_are_unique_over_concurrent_creates_from_several_processes_and_mostly_proposed(
        cluster_store, redis_cluster):
    batches = in_forked_children(_create_many_on_cluster, [(redis_cluster.url, 300)] * 4)
    ids = [timer_id for batch, _ in batches for timer_id in batch]
    assert len(ids) == len(set(ids)) == 1200
    assert all(0 < timer_id < 2 ** 53 for timer_id in ids)
    for batch, proposals in batches:
        assert [home_shard(i) for i in batch] == [k % SHARDS for k in range(300)]
        # One shard's ids grow in creation order, proposed or reserved.
        for shard in range(SHARDS):
            assert batch[shard::SHARDS] == sorted(batch[shard::SHARDS])
        # Only each shard's first create knows no offset; most later ones take their
        # proposal (a refused one costs a second round trip, never a wrong id).
        assert proposals["unproposed"] == SHARDS, proposals
        assert proposals["proposed"] + proposals["refused"] == 300 - SHARDS
        assert proposals["proposed"] > proposals["refused"], proposals
    assert {cluster_store.get(t)[0]["status"] for t in ids[::50]} == {"scheduled"}


def test_on_a_cluster_a_timer_created_1_ms_after_another_has_a_larger_id_whatever_the_shards(
        cluster_store, redis_cluster):
    clock = redis_cluster.client(redis_cluster.ports[0])
    for shard in range(SHARDS):  # each shard learns its offset
        cluster_store.create("https://x.test/h", 600_000, shard)
    pairs = [(a, b) for a in range(SHARDS) for b in range(SHARDS) if a != b] * 2
    for first_shard, second_shard in pairs:
        first, _, _ = cluster_store.create("https://x.test/h", 600_000, first_shard)
        one_ms_later(clock)
        second, _, _ = cluster_store.create("https://x.test/h", 600_000, second_shard)
        assert second > first, (first_shard, second_shard, first, second)
    assert _proposals(cluster_store)["proposed"] > 0


def test_on_a_cluster_a_counter_up_to_0_4_ms_ahead_of_the_clock_keeps_the_order(cluster_store, redis_cluster):
    clock = redis_cluster.client(redis_cluster.ports[0])
    for shard in (0, 3):
        cluster_store.create("https://x.test/h", 600_000, shard)
    # Shard 3's counter 3 units ahead: its next id is reserved 4 units ahead (the most
    # the window of 5 leaves), and shard 0's proposal 1 ms later may lag 5 units.
    cluster_store.control.set(cluster_store.shard(3).seq_key, clock_units(clock) + 3)
    first, _, _ = cluster_store.create("https://x.test/h", 600_000, 3)
    one_ms_later(clock)
    second, _, _ = cluster_store.create("https://x.test/h", 600_000, 0)
    assert second > first


def _propose(shard, first, proposals=PROPOSED_IDS):
    """Run create_proposed.lua on ``shard`` with the ids ``first``, ``first + 6``, ...;
    its reply [id, fire, now, clock] as integers."""
    stride = PROPOSAL_WINDOW_UNITS + 1
    keys = [shard.seq_key, shard.due_key,
            *(shard.record_key((first + k * stride) * 1000 + shard.index) for k in range(proposals))]
    return [int(v) for v in shard.create_proposed(
        keys=keys, args=[shard.index, ID_EPOCH_UNITS, first, PROPOSAL_WINDOW_UNITS, "https://x.test/h",
                         600_000, "req", "", ""], client=shard.redis)]


def test_a_proposal_outside_the_window_or_not_above_the_counter_only_reserves_an_id(
        cluster_store, redis_cluster):
    shard = cluster_store.shard(2)
    clock = redis_cluster.client(redis_cluster.ports[0])
    cluster_store.control.set(shard.seq_key, clock_units(clock) - 100)
    reserved = []
    for first in (clock_units(clock) + 10_000,  # above the clock (1 s ahead)
                  clock_units(clock) - 10_000):  # every proposed id more than T below the clock
        before = int(cluster_store.control.get(shard.seq_key))
        timer_id, fire, _, at = _propose(shard, first)
        # Nothing stored; the id reserved as reserve_id.lua does: max(counter + 1, clock).
        assert fire == 0 and home_shard(timer_id) == 2
        assert timer_id // 1000 == max(before + 1, at) == int(cluster_store.control.get(shard.seq_key))
        assert cluster_store.get(timer_id)[0] is None
        reserved.append(timer_id)
    # A proposal inside the window but not above the counter (another create took it).
    ahead = clock_units(clock) + 1_000
    cluster_store.control.set(shard.seq_key, ahead)
    timer_id, fire, _, _ = _propose(shard, clock_units(clock))
    assert (timer_id, fire) == ((ahead + 1) * 1000 + 2, 0)
    reserved.append(timer_id)
    assert len(set(reserved)) == 3
    assert cluster_store.control.zscore(shard.due_key, reserved[0]) is None


def test_a_proposal_in_the_window_above_the_counter_stores_the_timer_under_that_id(
        cluster_store, redis_cluster):
    shard = cluster_store.shard(4)
    clock = redis_cluster.client(redis_cluster.ports[0])
    taken = []

    def proposal_taken():
        # Taken when the script runs within 3 windows (1.7 ms) of the clock read here.
        first = clock_units(clock)
        timer_id, fire, now, at = _propose(shard, first)
        taken.append((first, timer_id, fire, now, at))
        return fire != 0

    wait_until(proposal_taken, timeout=30, interval=0, message="a proposal inside the window")
    first, timer_id, fire, now, at = taken[-1]
    n = timer_id // 1000
    assert home_shard(timer_id) == 4 and fire == now + 600_000
    assert n in range(first, first + PROPOSED_IDS * (PROPOSAL_WINDOW_UNITS + 1), PROPOSAL_WINDOW_UNITS + 1)
    assert at - PROPOSAL_WINDOW_UNITS <= n <= at
    assert int(cluster_store.control.get(shard.seq_key)) == n
    assert cluster_store.get(timer_id)[0]["status"] == "scheduled"
    assert cluster_store.control.zscore(shard.due_key, timer_id) == fire
    # The id taken, proposed again alone, is not above the counter now: only reserved.
    again, fire, _, _ = _propose(shard, n, proposals=1)
    assert fire == 0 and again > timer_id


def test_a_refused_proposal_is_stored_under_the_reserved_id_and_the_offset_learnt_again(cluster_store):
    shard = cluster_store.shard(5)
    cluster_store.create("https://x.test/h", 600_000, 5)
    # As if the shard's clock had stepped back by 1 s: every proposal is above it.
    shard.id_proposals._offset += 10 ** 9
    timer_id, record, _ = cluster_store.create("https://x.test/h", 600_000, 5)
    assert shard.id_proposals.counts["refused"] == 1
    assert cluster_store.get(timer_id)[0] == record
    assert cluster_store.create("https://x.test/h", 600_000, 5)[0] > timer_id


def test_on_a_cluster_wait_follows_the_write_that_stored_the_timer(redis_cluster):
    redis_cluster.wait_ok()
    # One replica per master: WAIT 1 is met, WAIT 2 never.
    stores = {n: TimerStore(redis_cluster.url, cluster=True, live_shards=SHARDS, wait_replicas=n)
              for n in (1, 2)}
    stores[1].register_shards(SHARDS)
    for wanted, store in stores.items():
        shard = store.shard(1)
        for refused in (False, True, False):
            if refused and shard.id_proposals._offset is not None:
                shard.id_proposals._offset += 10 ** 9
            before = collections.Counter(shard.id_proposals.counts)
            try:
                timer_id, _, _ = store.create("https://x.test/h", 600_000, 1)
                assert wanted == 1
            except NotReplicated as exc:
                assert wanted == 2 and str(exc).startswith("1 of 2 replicas"), exc
                timer_id = exc.timer_id
            assert store.get(timer_id)[0]["status"] == "scheduled"
            assert sum((shard.id_proposals.counts - before).values()) == 1
        assert shard.id_proposals.counts["unproposed"] == 1 and shard.id_proposals.counts["refused"] >= 1
