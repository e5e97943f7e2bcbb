"""Recovery: find timers that no live queue holds and put them back on one.

Huey never acknowledges a message: a consumer killed between popping a
message and claiming its timer loses the message. A crash may also cut a
delivery off mid-flight, a shard may be retired (``TIMER_SHARDS`` shrank) or
a queue's keys may be lost. The timer records and their indexes are the
truth, so recovery compares them with what the live queues hold:

1. ``firing`` timers whose lease ran out go back to ``retrying`` (or to
   ``failed`` after their last attempt);
2. every pending timer (``scheduled``/``retrying``) in the due index that no
   live shard's schedule or queue holds is scheduled on the least-busy live
   shard, at its due time, or now if that has passed.

Re-scheduling is idempotent (a message is a sorted-set member) and delivery
claims are atomic, so running recovery while APIs and consumers run, or
twice, never fires a timer twice.
"""

import logging
import math

from sharding import queues
from sharding.store import home_shard

log = logging.getLogger(__name__)

CHUNK = 5000


def _messages(shard, cutoff_s):
    """Timer ids in ``shard``'s queue, and in its schedule up to ``cutoff_s`` (epoch s)."""
    conn = shard.redis
    if math.isinf(cutoff_s):
        scheduled = (member for member, _ in conn.zscan_iter(shard.schedule_key, count=CHUNK))
    else:
        scheduled = conn.zrangebyscore(shard.schedule_key, "-inf", cutoff_s)
    held = {queues.timer_of(m) for m in scheduled}
    start = 0
    while True:
        batch = conn.lrange(shard.queue_key, start, start + CHUNK - 1)
        held.update(queues.timer_of(m) for m in batch)
        if len(batch) < CHUNK:
            return held
        start += CHUNK


def _pending(shard, cutoff_ms):
    """(timer id, due epoch ms) of pending timers of ``shard`` due by ``cutoff_ms``."""
    conn = shard.redis
    if math.isinf(cutoff_ms):
        for member, score in conn.zscan_iter(shard.due_key, count=CHUNK):
            yield int(member), int(score)
    else:
        for member, score in conn.zrangebyscore(shard.due_key, "-inf", cutoff_ms,
                                                start=0, num=CHUNK * 2, withscores=True):
            yield int(member), int(score)


def _expire_leases(store, indexes, now_ms, max_attempts, requeue):
    counts = {"retrying": 0, "failed": 0}
    for index in indexes:
        shard = store.shard(index)
        for member in shard.redis.zrangebyscore(shard.leases_key, "-inf", now_ms):
            timer_id = int(member)
            outcome = store.expire_lease(timer_id, max_attempts)
            if outcome:
                counts[outcome] += 1
            if outcome == "retrying":
                requeue(timer_id, now_ms)
    return counts


def recover(store, balancer, live_count, max_attempts, grace_ms=None):
    """Run one recovery pass.

    Args:
        store: ``sharding.store.TimerStore``.
        balancer: ``sharding.balancer.LeastBusy`` over the live shards.
        live_count: number N of live shards (``0..N-1``).
        max_attempts: delivery attempts before a timer is failed.
        grace_ms: None for a full pass (every pending timer, as at startup);
            else only timers overdue by more than this many milliseconds.
    Returns:
        dict of counts: ``leases_retrying``, ``leases_failed``, ``checked``,
        ``requeued``, ``held``.
    """
    secs, micros = store.control.time()
    now_ms = secs * 1000 + micros // 1000
    known = store.known_shards(live_count)
    requeued = 0

    def requeue(timer_id, due_ms):
        nonlocal requeued
        target = balancer.choose()
        if store.schedule(timer_id, target, max(due_ms, now_ms) / 1000):
            requeued += 1
            log.debug("timer requeued", extra={"timer_id": timer_id, "shard": target,
                                               "overdue_ms": max(0, now_ms - due_ms)})

    leases = _expire_leases(store, known, now_ms, max_attempts, requeue)
    cutoff_ms = math.inf if grace_ms is None else now_ms - grace_ms
    held = set()
    for index in range(live_count):
        held |= _messages(store.shard(index), cutoff_ms / 1000)
    checked = 0
    for index in known:
        for timer_id, due_ms in _pending(store.shard(index), cutoff_ms):
            checked += 1
            if timer_id not in held and home_shard(timer_id) == index:
                requeue(timer_id, due_ms)
    return {"leases_retrying": leases["retrying"], "leases_failed": leases["failed"],
            "checked": checked, "requeued": requeued, "held": len(held)}
