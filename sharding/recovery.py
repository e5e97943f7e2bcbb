"""Recovery: give every pending timer a live queue again.

Huey never acknowledges a message: a consumer killed between popping a
message and claiming its timer loses the message. A crash may also cut a
delivery off mid-flight, a shard may be retired (``TIMER_SHARDS`` shrank) or
a queue's keys may be lost. The timer records and their indexes are the
truth, so a recovery pass:

1. takes back ``firing`` timers whose lease ran out: they become
   ``retrying``, due now (or ``failed`` after their last attempt);
2. makes due again every pending timer that a feeder put on a live queue
   (it is hidden in the due index) but that no live queue holds any more,
   once it has been hidden for longer than the grace period (a full pass, as
   at startup, does not wait);
3. feeds the due timers of retired shards (no consumer reads them) onto the
   least-busy live shards;
4. drops finished timers older than the retention period from the listing
   indexes (their records expire by themselves).

Claims are atomic, so running a pass while APIs and consumers run, or twice,
never fires a timer twice: at worst a queue carries a redundant message,
which the claim turns into a no-op.
"""

import logging

from sharding import queues
from sharding.store import FEED_BATCH, now_ms

log = logging.getLogger(__name__)

CHUNK = 5000


def _queued_ids(shard):
    """Timer ids of every message on ``shard``'s queue."""
    held = set()
    start = 0
    while True:
        batch = shard.redis.lrange(shard.queue_key, start, start + CHUNK - 1)
        held.update(queues.timer_of(m) for m in batch)
        if len(batch) < CHUNK:
            return held
        start += CHUNK


def _expire_leases(store, indexes, now, max_attempts):
    counts = {"retrying": 0, "failed": 0}
    for index in indexes:
        shard = store.shard(index)
        for member in shard.redis.zrangebyscore(shard.leases_key, "-inf", now):
            outcome = store.expire_lease(int(member), max_attempts)
            if outcome:
                counts[outcome] += 1
    return counts


def _reveal_lost(shard, now, cutoff):
    """Make due now the hidden timers of ``shard`` hidden until ``cutoff`` or
    earlier whose message is not on the queue. Returns how many."""
    hidden = shard.redis.zrangebyscore(shard.due_key, f"({now}", cutoff)
    if not hidden:
        return 0
    lost = {int(m) for m in hidden} - _queued_ids(shard)
    if lost:
        # XX: a timer claimed since the read has left the index and stays out.
        shard.redis.zadd(shard.due_key, dict.fromkeys(lost, now), xx=True)
    return len(lost)


def _feed_retired(store, balancer, index, visibility_ms):
    fed = 0
    while True:
        count = store.feed(index, balancer.choose(), visibility_ms)
        fed += count
        if count < FEED_BATCH:
            return fed


def recover(store, balancer, live_count, max_attempts, visibility_ms, grace_ms=None):
    """Run one recovery pass.

    Args:
        store: ``sharding.store.TimerStore``.
        balancer: ``sharding.balancer.LeastBusy`` over the live shards.
        live_count: number N of live shards (``0..N-1``).
        max_attempts: delivery attempts before a timer is failed.
        visibility_ms: the feeders' visibility timeout in milliseconds.
        grace_ms: how long a fed timer may be missing from its queue before it
            is made due again; None for a full pass (no wait, as at startup).
    Returns:
        dict of counts: ``leases_retrying``, ``leases_failed``, ``lost``
        (made due again), ``retired_fed`` (fed from retired shards),
        ``trimmed`` (listing entries past retention).
    """
    now = now_ms(store.control)
    known = store.known_shards(live_count)
    leases = _expire_leases(store, known, now, max_attempts)
    cutoff = now + visibility_ms - (grace_ms or 0)
    lost = sum(_reveal_lost(store.shard(i), now, cutoff) for i in range(live_count))
    retired = [i for i in known if i >= live_count]
    retired_fed = sum(_feed_retired(store, balancer, i, visibility_ms) for i in retired)
    return {"leases_retrying": leases["retrying"], "leases_failed": leases["failed"],
            "lost": lost, "retired_fed": retired_fed, "trimmed": store.trim_finished(known)}
