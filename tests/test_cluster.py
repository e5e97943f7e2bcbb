"""The service on a real Redis Cluster (3 masters + 3 replicas, ``sharding.local_cluster``):
the contract's core cases, a burst of 400 timers, and the spread of shards over masters.

One service on the session's cluster serves every test of this module (each looks only at
its own timers); tests that need a service of their own are in ``test_cluster_ops.py``.
"""

import collections
import concurrent.futures
import datetime
import time

import pytest
import requests

from sharding.store import TimerStore, home_shard
from sharding.topology import TAGS_KEY
from tests.harness import Service, consumers_ready, empty_cluster, wait_until
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
