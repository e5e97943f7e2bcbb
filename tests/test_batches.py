"""Batches: the timers of one queue message are sent side by side and keep their leases.

Each test starts its own one-shard service with one consumer, so that one
message carries every timer (no other service may run beside it: its
consumers would deliver these timers too).
"""

from tests.harness import consumers_ready, wait_until
from tests.test_delivery import settled, wait_status


def test_a_hanging_receiver_does_not_hold_up_the_rest_of_its_batch(make_service, receiver):
    # One shard, one consumer: timers due together go out as one message, in due order.
    service = make_service(env={"TIMER_SHARDS": "1", "TIMER_WORKERS_PER_SHARD": "1",
                                "TIMER_CONSUMER_THREADS": "4"}).start("api", "coordinator")
    hang_s = 4.0
    receiver.script("/hang", [(200, {}, hang_s)])
    ids = [service.create(f"{receiver.url}/hang", seconds=0).json()["id"] for _ in range(2)]
    ids += [service.create(f"{receiver.url}/fast", seconds=0).json()["id"] for _ in range(6)]
    service.start("workers")  # every timer is due by now: the first feed takes all eight
    consumers_ready(service, count=1)
    wait_until(lambda: len(receiver.received()) == 8, timeout=20, message="eight webhooks")
    hung_at = min(r["at"] for r in receiver.requests if r["path"].startswith("/hang/"))
    fast_at = [r["at"] for r in receiver.requests if r["path"].startswith("/fast/")]
    # Sent one after the other, the fast ones would wait for both hanging answers (8 s);
    # side by side, every one arrives before the first hanging answer can be given.
    assert len(fast_at) == 6
    assert max(fast_at) - hung_at < hang_s
    for timer_id in ids:
        wait_status(service, timer_id, "fired", timeout=15)


def test_a_batch_waiting_longer_than_a_lease_keeps_its_leases(make_service, receiver):
    # Lease 2 s + 5 s; one sender thread sends 10 answers of 1 s one after the other (10 s).
    # Claimed all at once, the last ones would outlive their leases unless renewed; the
    # consumer claims each only when its sender is free (given back meanwhile, "scheduled"),
    # so no lease ends early and the coordinator (every 1 s) never makes one "retrying".
    service = make_service(env={"TIMER_SHARDS": "1", "TIMER_WORKERS_PER_SHARD": "1",
                                "TIMER_CONSUMER_THREADS": "1", "TIMER_WEBHOOK_TIMEOUT_SECONDS": "2"}
                           ).start("api", "coordinator")
    receiver.script("/slow", [(200, {}, 1.0)])
    ids = [service.create(f"{receiver.url}/slow", seconds=0).json()["id"] for _ in range(10)]
    service.start("workers")
    consumers_ready(service, count=1)
    seen = set()
    wait_until(lambda: seen.add(service.get(ids[-1])["status"]) or "fired" in seen, timeout=30,
               interval=0.1, message="the last timer to fire")
    assert seen <= {"scheduled", "firing", "fired"}
    timers = [wait_status(service, timer_id, "fired", timeout=15) for timer_id in ids]
    assert [t["attempts"] for t in timers] == [1] * 10
    wait_until(lambda: settled(service), timeout=10, message="nothing queued or in flight")
    assert sorted(r["path"] for r in receiver.received()) == sorted(f"/slow/{i}" for i in ids)
