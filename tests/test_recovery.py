"""End to end: no timer is lost or fired twice across restarts, crashes and a shard shrink.

Real processes throughout (``tests/harness.py``); crashes are simulated by
signals and by removing a timer's message from its Huey schedule, which is
exactly the state a crash between storing a timer and enqueueing it leaves.
"""

import collections
import os
import signal
import time

import requests

from sharding.queues import storage_name, timers_of
from tests.harness import (
    consumers_ready,
    first_feeder_start,
    is_gone,
    json_lines,
    live_children,
    logged_at,
    wait_until,
)
from tests.test_delivery import fire_at_epoch, settled, wait_status


def create_many(service, url, delays):
    """Create one timer per delay (seconds) on one keep-alive session; return their ids."""
    ids = []
    with requests.Session() as session:
        for seconds in delays:
            response = session.post(f"{service.url}/timers", json={"url": url, "seconds": seconds},
                                    timeout=10)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
    return ids


def statuses(service, ids):
    """Counter of the statuses of ``ids``."""
    with requests.Session() as session:
        return collections.Counter(
            session.get(f"{service.url}/timers/{timer_id}", timeout=10).json()["status"] for timer_id in ids)


def deliveries(receiver, prefix):
    """Counter of receiver requests whose path starts with ``prefix``, by path."""
    return collections.Counter(r["path"] for r in receiver.received() if r["path"].startswith(prefix))


def passes(service, full):
    """The recovery passes (log lines) of ``service``'s coordinator(s), full or bounded."""
    return [line for line in json_lines(service.logs("coordinator"))
            if line.get("message") == "recovery pass" and line.get("full") is full]


def full_passes(service):
    """Number of full recovery passes the coordinator(s) of ``service`` have logged."""
    return len(passes(service, full=True))


# The feeders' visibility timeout (TIMER_QUEUE_VISIBILITY_SECONDS, default 30 s) in ms.
VISIBILITY_MS = 30_000


def orphan(redis_client, timer_id):
    """Leave ``timer_id`` pending but on no queue, as a consumer crash does.

    A feeder hides a timer in the due index for the visibility timeout while its
    message is on a queue; here it is hidden so and its message never reaches the
    queue, as if the consumer that took it had died. Only the coordinator brings
    it back before the 30 s are up. Returns the shard index it is on.
    """
    shard = timer_id % 1000
    due_key = f"due:{storage_name(shard)}"
    secs, micros = redis_client.time()
    hidden_until = secs * 1000 + micros // 1000 + VISIBILITY_MS
    assert redis_client.zadd(due_key, {str(timer_id): hidden_until}, xx=True, ch=True) == 1
    queued = redis_client.lrange(f"huey.redis.{storage_name(shard)}", 0, -1)
    assert all(timer_id not in timers_of(message) for message in queued)
    return shard


def test_timer_due_while_everything_was_stopped_fires_once_after_restart(make_service, receiver):
    service = make_service().start()
    # Due in 6 s: every process must stop before the fire time, and gets until
    # 0.5 s before it (the stop took 1.5 s here with the machine loaded: room for 3x slower).
    created = service.create(f"{receiver.url}/restart", seconds=6)
    assert created.status_code == 201, created.text
    timer_id = created.json()["id"]
    fire_at = fire_at_epoch(created.json()["fire_at"])
    path = f"/restart/{timer_id}"

    processes = dict(service.processes)
    budget = fire_at - 0.5 - time.time()
    service.stop(signum=signal.SIGINT, timeout=budget)
    assert {name: p.returncode for name, p in processes.items() if p.returncode == -signal.SIGKILL} == {}, \
        f"a process did not stop on SIGINT within {budget:.2f}s (before the fire time) and had to be killed"
    assert time.time() < fire_at, f"stopping took until {time.time() - fire_at:.2f}s after the fire time"
    assert receiver.received(path) == []

    # The service is down: nothing to poll, so wait out the fire time.
    time.sleep(max(0.0, fire_at + 0.5 - time.time()))
    assert receiver.received(path) == []
    restarted = time.time()
    service.start()

    wait_until(lambda: receiver.received(path), timeout=20, message="the overdue webhook")
    done = wait_status(service, timer_id, "fired")
    wait_until(lambda: settled(service), timeout=5, message="shards to drain")
    hits = receiver.received(path)
    assert len(hits) == 1, hits
    # Prompt: by the first feed of its shard after the restart, however long the start took.
    feeding = first_feeder_start(service.logs("workers"), timer_id % 1000, restarted)
    assert feeding is not None, "no feeder of the timer's shard logged its start"
    late = hits[0]["at"] - feeding
    assert late <= 3, f"delivered {late:.2f}s after its shard's feeder started"
    assert hits[0]["headers"]["webhook-id"] == str(timer_id)
    assert done["time_left"] == 0
    assert done["attempts"] == 1
    assert len(receiver.received()) == 1


def test_timer_lost_between_store_and_enqueue_is_recovered_once(make_service, receiver, redis_client):
    # Due at once, so it is overdue by the coordinator's first (full) pass however
    # soon that comes: the pass that must bring it back.
    service = make_service().start("api")
    created = service.create(f"{receiver.url}/orphan", seconds=0)
    assert created.status_code == 201, created.text
    timer_id = created.json()["id"]
    path = f"/orphan/{timer_id}"

    orphan(redis_client, timer_id)
    assert service.get(timer_id)["status"] == "scheduled"

    started = time.time()
    service.start("workers", "coordinator")
    wait_until(lambda: receiver.received(path), timeout=20, message="the recovered webhook")
    done = wait_status(service, timer_id, "fired")
    wait_until(lambda: settled(service), timeout=5, message="shards to drain")

    hits = receiver.received(path)
    assert len(hits) == 1, hits
    # The pass logs once it is done, which can be after the webhook it made possible.
    full = wait_until(lambda: passes(service, full=True), timeout=10, message="the full recovery pass")
    assert [p["lost"] for p in full] == [1]
    # Measured from when the service could act (its full pass done, a feeder of the
    # shard running), not from the start-up, which a busy machine makes slow.
    feeding = first_feeder_start(service.logs("workers"), timer_id % 1000, started)
    assert feeding is not None, "no feeder of the timer's shard logged its start"
    assert hits[0]["at"] <= max(logged_at(full[0]), feeding) + 10
    assert done["attempts"] == 1
    assert len(receiver.received()) == 1


def test_timers_of_removed_shards_fire_once_after_shrinking(make_service, receiver, redis_client):
    four = make_service(env={"TIMER_SHARDS": "4"}).start("api")
    ids = create_many(four, f"{receiver.url}/shrink", [4] * 40)
    assert len(set(ids)) == 40
    shards = requests.get(f"{four.url}/shards", timeout=5).json()["shards"]
    assert [s["index"] for s in shards] == [0, 1, 2, 3]
    assert sum(s["scheduled"] for s in shards) == 40
    assert shards[2]["scheduled"] > 0 and shards[3]["scheduled"] > 0, shards
    on_removed = [timer_id for timer_id in ids if timer_id % 1000 in (2, 3)]
    assert len(on_removed) == shards[2]["scheduled"] + shards[3]["scheduled"]
    four.stop("api")

    two = make_service(env={"TIMER_SHARDS": "2"}).start()
    assert [s["index"] for s in requests.get(f"{two.url}/shards", timeout=5).json()["shards"]] == [0, 1]
    wait_until(lambda: len(deliveries(receiver, "/shrink/")) >= 40, timeout=30,
               message="all 40 webhooks")
    wait_until(lambda: statuses(two, ids) == collections.Counter({"fired": 40}), timeout=10,
               message="all 40 timers fired")
    wait_until(lambda: settled(two), timeout=5, message="live shards to drain")

    assert deliveries(receiver, "/shrink/") == collections.Counter({f"/shrink/{i}": 1 for i in ids})
    assert len(receiver.received()) == 40
    for timer_id in on_removed:
        timer = two.get(timer_id)
        assert (timer["status"], timer["attempts"], timer["time_left"]) == ("fired", 1, 0), timer


def wait_overdue(service, ids):
    """Return once every timer of ``ids`` is past its fire time (by the ``fire_at`` the API gives).

    A full recovery pass brings back only lost timers that are overdue.
    """
    latest = max(fire_at_epoch(service.get(timer_id)["fire_at"]) for timer_id in ids)
    time.sleep(max(0.0, latest + 0.1 - time.time()))


def test_running_the_coordinator_twice_never_duplicates(make_service, receiver, redis_client):
    # No feeder runs until the orphans are made: a slow create cannot let them be fed first.
    service = make_service().start("api")
    ids = create_many(service, f"{receiver.url}/twice", [1, 2, 3, 4, 5, 6] * 4)
    orphans = create_many(service, f"{receiver.url}/twice", [1, 2, 3] * 2)
    for timer_id in orphans:
        orphan(redis_client, timer_id)
    ids += orphans
    service.start("workers")
    consumers_ready(service)

    # Both full passes find the orphans overdue, however fast the start-up was.
    wait_overdue(service, orphans)
    service.start("coordinator")
    wait_until(lambda: full_passes(service) == 1, timeout=15, message="the first full recovery pass")
    assert passes(service, full=True)[0]["lost"] == len(orphans)
    service.stop("coordinator")
    service.start("coordinator")
    wait_until(lambda: full_passes(service) == 2, timeout=15, message="the second full recovery pass")

    wait_until(lambda: len(deliveries(receiver, "/twice/")) >= len(ids), timeout=20,
               message=f"all {len(ids)} webhooks")
    wait_until(lambda: statuses(service, ids) == collections.Counter({"fired": len(ids)}), timeout=10,
               message="every timer fired")
    wait_until(lambda: settled(service), timeout=5, message="shards to drain")
    assert deliveries(receiver, "/twice/") == collections.Counter({f"/twice/{i}": 1 for i in ids})
    assert len(receiver.received()) == len(ids)


def test_two_coordinators_at_once_never_duplicate(make_service, receiver, redis_client):
    service = make_service().start("api")
    orphans = create_many(service, f"{receiver.url}/pair", [2] * 20)
    for timer_id in orphans:
        orphan(redis_client, timer_id)
    service.start("workers")
    consumers_ready(service)
    wait_overdue(service, orphans)
    other_host = make_service()
    service.start("coordinator")
    other_host.start("coordinator")
    wait_until(lambda: len(deliveries(receiver, "/pair/")) >= len(orphans), timeout=25,
               message=f"all {len(orphans)} webhooks")
    # Both write to the same log file (one tmp_path): two full passes, one each, one after
    # the other (a lock); the first finds every orphan.
    wait_until(lambda: len(passes(service, True)) == 2, timeout=15, message="both full passes")
    assert passes(service, True)[0]["lost"] == len(orphans)
    assert deliveries(receiver, "/pair/") == collections.Counter({f"/pair/{i}": 1 for i in orphans})
    assert statuses(service, orphans) == collections.Counter({"fired": len(orphans)})


def test_a_pass_cut_off_by_a_redis_stall_does_not_hold_up_the_next_ones(make_service, redis_server):
    # A stalled Redis applies the pass's lock SET after the coordinator gave up on it.
    service = make_service(env={"TIMER_LOG_LEVEL": "DEBUG"}).start("api", "coordinator")
    wait_until(lambda: full_passes(service) == 1, timeout=15, message="the full recovery pass")
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: "recovery pass failed" in service.logs("coordinator"), timeout=20,
                   message="a pass to fail on the stalled Redis")
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    failed = len([line for line in json_lines(service.logs("coordinator"))
                  if line.get("message") == "recovery pass failed"])
    bounded = len(passes(service, full=False))
    # Passes run every second (TIMER_RECOVERY_INTERVAL_SECONDS=1); the lock's own expiry is 60 s.
    wait_until(lambda: len(passes(service, full=False)) > bounded, timeout=15,
               message="a recovery pass after Redis came back")
    assert failed >= 1


def consumer_shards(service):
    """{consumer pid: shard} from the pool's "consumer started" log lines."""
    return {line["consumer_pid"]: line["shard"] for line in json_lines(service.logs("workers"))
            if line.get("message") == "consumer started"}


def test_kill_9_of_a_consumer_is_survived(make_service, receiver):
    service = make_service().start()
    consumers_ready(service)
    pool_process = service.processes["workers"]
    consumers = live_children(pool_process.pid)
    assert len(consumers) == 8, consumers
    victim = consumers[0]
    victim_shard = consumer_shards(service)[victim.pid]

    os.kill(victim.pid, signal.SIGKILL)
    wait_until(lambda: is_gone(victim), timeout=5, message="the consumer to die")

    def restarted():
        kids = live_children(pool_process.pid)
        return len(kids) == 8 and victim.pid not in {k.pid for k in kids} and kids

    replaced = wait_until(restarted, timeout=10, message="the pool to restart the consumer")
    assert pool_process.poll() is None, "the pool exited"
    # The pool logs a consumer's start just after forking it.
    shards = wait_until(lambda: (s := consumer_shards(service)).keys() >= {k.pid for k in replaced} and s,
                        timeout=5, message="the new consumer's start in the log")
    assert sorted(shards[k.pid] for k in replaced) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert requests.get(f"{service.url}/shards", timeout=5).status_code == 200
    consumers_ready(service, count=9)

    ids = create_many(service, f"{receiver.url}/after-kill", [1] * 8)
    assert victim_shard in {timer_id % 1000 for timer_id in ids}
    wait_until(lambda: len(deliveries(receiver, "/after-kill/")) >= 8, timeout=15, message="8 webhooks")
    wait_until(lambda: statuses(service, ids) == collections.Counter({"fired": 8}), timeout=10,
               message="all 8 timers fired")
    wait_until(lambda: settled(service), timeout=5, message="shards to drain")
    assert deliveries(receiver, "/after-kill/") == collections.Counter({f"/after-kill/{i}": 1 for i in ids})
    assert pool_process.poll() is None
    assert service.get(ids[0])["attempts"] == 1


def test_a_killed_consumers_delivery_is_taken_back_and_logged_at_info(make_service, receiver):
    # Lease = 3 s timeout + 5 s; the receiver holds the request past the timeout, so the
    # consumer is killed mid-attempt even when the kill comes seconds after the arrival.
    service = make_service(env={"TIMER_SHARDS": "1", "TIMER_WORKERS_PER_SHARD": "1",
                                "TIMER_WEBHOOK_TIMEOUT_SECONDS": "3"}).start()
    consumers_ready(service, count=1)
    receiver.script("/cut", [(200, {}, 10.0)])
    assert service.create(f"{receiver.url}/cut", seconds=0).status_code == 201
    wait_until(lambda: deliveries(receiver, "/cut/"), timeout=10, message="the first attempt to arrive")
    consumer, = live_children(service.processes["workers"].pid)
    os.kill(consumer.pid, signal.SIGKILL)
    taken_back = wait_until(lambda: [p for p in passes(service, full=False) if p["leases_retrying"]],
                            timeout=30, message="a recovery pass that takes the lease back")
    assert taken_back[0]["level"] == "INFO"
    assert taken_back[0]["leases_retrying"] == 1
