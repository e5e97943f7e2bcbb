"""Operating the service on a real Redis Cluster: restarts, shrinking ``TIMER_SHARDS``,
``TIMER_REDIS_WAIT_REPLICAS``, the even spread of shard tags, configuration errors, and
kill -9 of a master during a stream of creates (its replica takes over).

Each test starts a service of its own on the session's cluster (emptied first).
"""

import collections
import re
import subprocess
import sys
import threading
import time

import redis
import requests

from sharding.ids import home_shard
from sharding.store import TimerStore
from sharding.topology import TAGS_KEY
from tests.harness import (
    ROOT,
    Service,
    clean_environ,
    consumers_ready,
    free_cluster_port,
    json_lines,
    wait_until,
)
from tests.test_delivery import fire_at_epoch, settled

SIX = {"TIMER_SHARDS": "6", "TIMER_WORKERS_PER_SHARD": "1"}


def _create(service, url, count, seconds):
    ids = []
    for _ in range(count):
        response = service.create(url, seconds=seconds)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def _webhooks(receiver, ids):
    wanted = {str(t) for t in ids}
    return collections.Counter(r["headers"]["webhook-id"] for r in receiver.received()
                               if r["headers"].get("webhook-id") in wanted)


def test_restart_of_the_whole_stack_and_the_cluster_resumes_every_timer(cluster_service, receiver,
                                                                         redis_cluster):
    service = cluster_service(SIX).start()
    consumers_ready(service, count=6)
    before = _create(service, f"{receiver.url}/hook", 6, 0)
    wait_until(lambda: len(_webhooks(receiver, before)) == 6, message="timers before the stop")
    # Without consumers, every one of these comes due while nothing runs.
    service.stop("workers", "coordinator")
    ids = _create(service, f"{receiver.url}/hook", 30, 1)
    assert set(home_shard(t) for t in ids) == set(range(6))
    last_fire = max(fire_at_epoch(service.get(t)["fire_at"]) for t in ids)
    service.stop()
    redis_cluster.stop()
    redis_cluster.start()
    wait_until(lambda: time.time() > last_fire, timeout=30, message="the fire times to pass")
    assert _webhooks(receiver, ids) == {}
    service.start()
    consumers_ready(service, count=12)
    wait_until(lambda: len(_webhooks(receiver, ids)) == 30 and settled(service), timeout=30,
               message="every timer after the restart")
    assert _webhooks(receiver, ids + before) == {str(t): 1 for t in ids + before}
    assert {service.get(t)["status"] for t in ids + before} == {"fired"}


def test_shrinking_shards_on_the_cluster_loses_nothing(cluster_service, receiver):
    api_only = cluster_service(SIX).start("api")
    ids = _create(api_only, f"{receiver.url}/hook", 36, 1)
    assert set(home_shard(t) for t in ids) == set(range(6))
    api_only.stop()
    service = cluster_service({"TIMER_SHARDS": "3", "TIMER_WORKERS_PER_SHARD": "1"}).start()
    wait_until(lambda: len(_webhooks(receiver, ids)) == 36 and settled(service), timeout=30,
               message="the retired shards' timers")
    assert _webhooks(receiver, ids) == {str(t): 1 for t in ids}
    assert {service.get(t)["status"] for t in ids} == {"fired"}


def test_without_enough_replicas_a_create_is_503_and_a_retry_with_its_key_makes_no_second_timer(
        cluster_service, receiver, redis_cluster):
    # One replica per master: WAIT 2 never succeeds.
    service = cluster_service({**SIX, "TIMER_REDIS_WAIT_REPLICAS": "2"}).start()
    headers = {"Idempotency-Key": "order-7"}
    body = {"url": f"{receiver.url}/hook", "seconds": 600}
    first = requests.post(f"{service.url}/timers", json=body, headers=headers, timeout=10)
    assert first.status_code == 503, first.text
    assert first.json()["title"] == "Timer not yet replicated"
    assert first.headers["Retry-After"] == "1"
    again = requests.post(f"{service.url}/timers", json=body, headers=headers, timeout=10)
    assert again.status_code == 503, again.text
    shards = requests.get(f"{service.url}/shards", timeout=10).json()["shards"]
    assert sum(s["scheduled"] for s in shards) == 1
    timer_id = int(re.search(r"timer (\d+)", first.json()["description"]).group(1))
    service.stop()
    # With a replica enough, the retry confirms that timer: its 201, no other timer.
    one = cluster_service({**SIX, "TIMER_REDIS_WAIT_REPLICAS": "1"}).start("api")
    confirmed = requests.post(f"{one.url}/timers", json=body, headers=headers, timeout=10)
    assert confirmed.status_code == 201, confirmed.text
    assert confirmed.json()["id"] == timer_id
    assert confirmed.headers["Idempotent-Replayed"] == "true"
    replayed = requests.post(f"{one.url}/timers", json=body, headers=headers, timeout=10)
    assert (replayed.status_code, replayed.json()["id"]) == (201, timer_id)
    shards = requests.get(f"{one.url}/shards", timeout=10).json()["shards"]
    assert sum(s["scheduled"] for s in shards) == 1


def test_shard_tags_spread_nine_shards_three_per_master_and_never_change(cluster_service, redis_cluster):
    store = TimerStore(redis_cluster.url, cluster=True)
    store.register_shards(9)
    masters = collections.Counter(store.topology.master_of(store.shard(i).tag) for i in range(9))
    assert sorted(masters.values()) == [3, 3, 3]
    again = TimerStore(redis_cluster.url, cluster=True)
    again.register_shards(12)
    assert [again.shard(i).tag for i in range(9)] == [store.shard(i).tag for i in range(9)]
    grown = collections.Counter(again.topology.master_of(again.shard(i).tag) for i in range(12))
    assert sorted(grown.values()) == [4, 4, 4]
    assert len(store.control.hgetall(TAGS_KEY)) == 12


def test_both_redis_urls_set_is_a_configuration_error_at_start_up(tmp_path):
    env = dict(clean_environ(), REDIS_URL="redis://127.0.0.1:1", REDIS_CLUSTER_URL="redis://127.0.0.1:2",
               TIMER_DATA_DIR=str(tmp_path), PYTHONPATH=ROOT)
    for command in ([sys.executable, "-m", "sharding.coordinator"], [sys.executable, "-m", "workers.pool"],
                    [sys.executable, "-m", "sharding.embedded_redis"], Service.COMMANDS["api"]):
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, (command, done.stderr)
        errors = [line for line in json_lines(done.stderr) if line.get("message") == "invalid configuration"]
        assert len(errors) == 1 and "REDIS_URL and REDIS_CLUSTER_URL are both set" in errors[0]["error"]


class _Stream:
    """Creates timers from 4 threads until stopped; records every answer."""

    def __init__(self, service, url):
        self.service, self.url = service, url
        self.answers = []  # (monotonic s, status code or None, timer id or None)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(4)]

    def _run(self):
        session = requests.Session()
        while not self.stop.is_set():
            try:
                response = session.post(f"{self.service.url}/timers", timeout=15,
                                        json={"url": self.url, "seconds": 2})
                created = response.status_code == 201
                answer = (response.status_code, response.json()["id"] if created else None)
            except requests.RequestException:
                answer = (None, None)
            with self.lock:
                self.answers.append((time.monotonic(), *answer))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(20)

    def since(self, moment):
        """The answers (monotonic s, status, timer id) from ``moment`` on."""
        with self.lock:
            return [a for a in self.answers if a[0] >= moment]

    def shards_created(self, moment):
        """The shards that took a create (201) from ``moment`` on."""
        return {home_shard(t) for _, status, t in self.since(moment) if status == 201}


def _every_one_fired(service, receiver, acknowledged):
    """Wait until each acknowledged timer's webhook arrived and the queues are empty;
    returns the webhooks per id (a Counter)."""
    wanted = {str(t) for t in acknowledged}
    wait_until(lambda: set(_webhooks(receiver, acknowledged)) == wanted and settled(service), timeout=60,
               message="every acknowledged timer to fire")
    return _webhooks(receiver, acknowledged)


def test_moving_a_shards_slot_while_it_serves_loses_nothing(cluster_service, receiver, redis_cluster,
                                                             figures):
    service = cluster_service(SIX).start()
    consumers_ready(service, count=6)
    store = TimerStore(redis_cluster.url, cluster=True, live_shards=6)
    store.register_shards(6)
    slot = store.control.keyslot(store.shard(0).tag)
    home = redis_cluster.owner(slot)
    elsewhere = next(p for p in redis_cluster.masters() if p != home)
    with _Stream(service, f"{receiver.url}/hook") as stream:
        # Some of them still pending (and their keys on the move) while the slot moves.
        wait_until(lambda: len(stream.since(0)) >= 60, timeout=30, message="creates before the move")
        moved_at = time.monotonic()
        redis_cluster.move_slot(slot, elsewhere)
        done_at = time.monotonic()
        wait_until(lambda: 0 in stream.shards_created(done_at), timeout=30,
                   message="a create on the moved shard")
        wait_until(lambda: len(stream.since(done_at)) >= 60, timeout=30, message="creates after the move")
    assert redis_cluster.owner(slot) == elsewhere
    answers = stream.since(0)
    acknowledged = {t for _, status, t in answers if status == 201}
    assert {status for _, status, _ in answers} <= {201, 503}, collections.Counter(a[1] for a in answers)
    webhooks = _every_one_fired(service, receiver, acknowledged)
    assert {service.get(t)["status"] for t in acknowledged if home_shard(t) == 0} == {"fired"}
    figures.append(
        f"cluster resharding (shard 0's slot {slot} moved {home} -> {elsewhere} in "
        f"{done_at - moved_at:.2f} s while creating): acknowledged {len(acknowledged)}, delivered "
        f"{len(webhooks)}, duplicates {sum(n - 1 for n in webhooks.values())}, 5xx "
        f"{sum(1 for a in answers if a[1] != 201)} of {len(answers)} answers")
    redis_cluster.move_slot(slot, home)  # back: later tests count two shards per master


def test_kill_9_of_a_master_during_creates_every_acknowledged_timer_fires(
        cluster_service, receiver, redis_cluster, figures):
    service = cluster_service({**SIX, "TIMER_REDIS_WAIT_REPLICAS": "1", "TIMER_WEBHOOK_TIMEOUT_SECONDS": "2",
                               "TIMER_RECOVERY_INTERVAL_SECONDS": "1"}).start()
    consumers_ready(service, count=6)
    store = TimerStore(redis_cluster.url, cluster=True)
    # Not the node REDIS_CLUSTER_URL names: processes that restart must reach the cluster.
    victim = next(p for p in redis_cluster.masters() if p != redis_cluster.ports[0])
    victim_shards = {i for i in range(6)
                     if store.topology.master_of(store.shard(i).tag) == f"127.0.0.1:{victim}"}
    assert len(victim_shards) == 2
    with _Stream(service, f"{receiver.url}/hook") as stream:
        wait_until(lambda: len(stream.since(0)) >= 100, timeout=30, message="creates before the kill")
        killed_at = time.monotonic()
        redis_cluster.kill9(victim)
        try:
            wait_until(lambda: len(redis_cluster.masters()) == 3, timeout=60, interval=0.1,
                       message="the replica to take over")
            promoted_at = time.monotonic()
        finally:
            # Back as the new master's replica: with one replica per master, WAIT 1
            # succeeds on the failed master's shards only once it is back.
            redis_cluster.start_node(victim)

        wait_until(lambda: victim_shards <= stream.shards_created(promoted_at), timeout=60, interval=0.1,
                   message="creates to succeed again on the failed master's shards")
        recovered_at = max(min(at for at, status, t in stream.since(promoted_at)
                               if status == 201 and home_shard(t) == shard) for shard in victim_shards)
        wait_until(lambda: len(stream.since(recovered_at)) >= 100, timeout=30, message="creates after")
    answers = stream.since(0)
    during = [a for a in answers if killed_at <= a[0] <= recovered_at]
    acknowledged = {t for _, status, t in answers if status == 201}
    # The other masters' shards kept taking creates; nothing but 201 and 503 was answered.
    assert set(range(6)) - victim_shards <= {home_shard(t) for _, status, t in during if status == 201}
    assert {status for _, status, _ in answers} <= {201, 503}, collections.Counter(a[1] for a in answers)
    redis_cluster.wait_ok()
    webhooks = _every_one_fired(service, receiver, acknowledged)
    figures.append(
        f"cluster failover (kill -9 of master {victim}, TIMER_REDIS_WAIT_REPLICAS=1, 4 client threads): "
        f"acknowledged {len(acknowledged)}, delivered {len(webhooks)}, "
        f"duplicates {sum(n - 1 for n in webhooks.values())}, "
        f"5xx during failover {sum(1 for a in during if a[1] != 201)} of {len(during)} answers; "
        f"replica promoted after {promoted_at - killed_at:.1f} s, creates back on every shard after "
        f"{recovered_at - killed_at:.1f} s (old master restarted as replica at promotion)")
    assert len(webhooks) == len(acknowledged)


def test_kill_9_of_the_local_cluster_process_stops_its_nodes(tmp_path):
    # make run-cluster's supervisor: its nodes run in sessions of their own, and a new
    # user found all six left running (and the next start fighting them for the ports).
    port = free_cluster_port()
    ports = range(port, port + 6)
    env = {**clean_environ(), "TIMER_DATA_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "sharding.local_cluster", "--dir", str(tmp_path / "c"),
               "--port", str(port)]
    supervisor = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: all(_answers(p) for p in ports), timeout=60, message="the six nodes to answer")
        supervisor.kill()
        supervisor.wait(10)
        wait_until(lambda: not any(_answers(p) for p in ports), timeout=30, message="the nodes to stop")
    finally:
        supervisor.kill()
        for p in ports:
            if _answers(p):
                redis.Redis(port=p).shutdown(nosave=True)


def _answers(port):
    try:
        return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1).ping()
    except redis.exceptions.RedisError:
        return False
