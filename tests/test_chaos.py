"""Chaos: 1,000 timers fire while consumers, the API and Redis are killed.

While at least 1,000 timers come due within about 20 s across 4 shards, with a
receiver that answers a quarter of them slowly, the test kill -9s consumers
several times, restarts the API, and kill -9s Redis once and starts it again
on its AOF. Every acknowledged timer must be delivered at least once and end
``fired``; a timer may be delivered twice only if a delivery of it was cut off
(it then has more than one attempt).
"""

import collections
import concurrent.futures
import datetime
import json
import random
import signal
import threading
import time

import requests

from sharding.queues import storage_name
from tests.harness import live_children, wait_until

TIMERS = 1000


def _create_all(service, receiver):
    """Create TIMERS timers due 4..21 s from now; return {id: fire_at epoch s} of the 201s."""
    session = requests.Session()
    lock = threading.Lock()
    acknowledged = {}

    def create(i):
        path = "/slow" if i % 4 == 0 else "/fast"
        try:
            response = session.post(f"{service.url}/timers", timeout=10,
                                    json={"url": receiver.url + path, "seconds": 4 + i % 18})
        except requests.RequestException:
            return
        if response.status_code == 201:
            body = response.json()
            fire_at = datetime.datetime.fromisoformat(body["fire_at"]).timestamp()
            with lock:
                acknowledged[body["id"]] = fire_at

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(TIMERS)))
    return acknowledged


def _consumers(service):
    return live_children(service.processes["workers"].pid)


def test_chaos_every_acknowledged_timer_fires(make_service, receiver, redis_server, figures):
    receiver.script("/slow", [(200, {}, 0.3)])
    service = make_service(env={
        "TIMER_SHARDS": "4", "TIMER_WORKERS_PER_SHARD": "2", "TIMER_WEBHOOK_TIMEOUT_SECONDS": "2",
        "TIMER_RECOVERY_GRACE_SECONDS": "3", "TIMER_RECOVERY_INTERVAL_SECONDS": "1"}).start()
    wait_until(lambda: len(_consumers(service)) == 8, timeout=30, message="8 consumers")
    started = time.monotonic()
    acknowledged = _create_all(service, receiver)
    assert len(acknowledged) == TIMERS

    kills = collections.Counter()
    rng = random.Random(7)
    for at in (5, 7, 9, 11, 13, 15, 17):
        time.sleep(max(0.0, started + at - time.monotonic()))
        victim = rng.choice(_consumers(service))
        victim.kill()
        kills["consumer"] += 1
        if at == 9:
            service.stop("api")
            service.start("api")
            kills["api restart"] += 1
        if at == 13:
            redis_server.kill9()
            time.sleep(1)
            redis_server.start()
            kills["redis"] += 1

    def all_delivered():
        got = {int(r["headers"]["webhook-id"]) for r in receiver.received()}
        return set(acknowledged) <= got

    wait_until(all_delivered, timeout=90, interval=0.5, message="every timer delivered")

    def all_fired():
        statuses = redis_server.client().pipeline(transaction=False)
        for timer_id in acknowledged:
            statuses.hget(f"t:{storage_name(timer_id % 1000)}:{timer_id}", "s")
        return all(s == b"fired" for s in statuses.execute())

    wait_until(all_fired, timeout=60, interval=0.5, message="every status fired")

    deliveries = collections.Counter(int(r["headers"]["webhook-id"]) for r in receiver.received())
    first_arrival = {}
    for r in receiver.received():
        timer_id = int(r["headers"]["webhook-id"])
        first_arrival[timer_id] = min(first_arrival.get(timer_id, r["at"]), r["at"])
    duplicated = {t: n for t, n in deliveries.items() if n > 1}
    attempts = {t: service.get(t)["attempts"] for t in duplicated}
    # A second delivery needs a second claim: the first was cut off (lease expired).
    assert all(attempts[t] >= n for t, n in duplicated.items()), (duplicated, attempts)
    assert set(deliveries) == set(acknowledged)
    lateness = max(first_arrival[t] - fire_at for t, fire_at in acknowledged.items())
    result = {"timers": len(acknowledged), "kills": dict(kills),
               "duplicates": sum(n - 1 for n in duplicated.values()),
               "largest_lateness_s": round(lateness, 3)}
    figures.append("chaos: " + json.dumps(result))
    assert kills == {"consumer": 7, "api restart": 1, "redis": 1}
    service.send_signal("workers", signal.SIGTERM)
