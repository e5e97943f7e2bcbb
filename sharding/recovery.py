"""Recovery: give every pending timer a live queue again.

Huey never acknowledges a message: a consumer killed between popping a
message and claiming its timer loses the message. A crash may also cut a
delivery off mid-flight, a shard may be retired (``TIMER_SHARDS`` shrank) or
a queue's keys may be lost. The timer records and their indexes are the
truth, so a recovery pass:

1. takes back ``firing`` timers whose lease ran out: they become
   ``retrying``, due now (or ``failed`` when their limits allow no further
   attempt);
2. makes due again every pending timer that a feeder put on a live queue
   (it is hidden in the due index) but that no live queue holds any more,
   once it is overdue by more than the grace period (a full pass, as at
   startup, does not wait);
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

CHUNK = 1000


def _queued_ids(shard):
    """Timer ids of every message on ``shard``'s queue."""
    held = set()
    start = 0
    while True:
        batch = shard.redis.lrange(shard.queue_key, start, start + CHUNK - 1)
        for message in batch:
            try:
                held.update(queues.timers_of(message))
            except ValueError:
                continue  # malformed: consumers drop it, it keeps no timer hidden
        if len(batch) < CHUNK:
            return held
        start += CHUNK


def _expire_leases(store, indexes, now, limits):
    counts = {"retrying": 0, "failed": 0}
    for index in indexes:
        shard = store.shard(index)
        for member in shard.redis.zrangebyscore(shard.leases_key, "-inf", now):
            outcome = store.expire_lease(int(member), limits)
            if outcome:
                counts[outcome] += 1
    return counts


def _reveal_lost(shard, now, visibility_ms, overdue_ms):
    """Make due now the timers of ``shard`` that a feeder hid (put on the queue)
    but that the queue no longer holds, once they are ``overdue_ms`` past due.

    Hidden timers are scored up to ``now + visibility_ms``, like timers that
    are merely due soon; only a hidden one has a due time in the past, which
    the script ``lua/reveal.lua`` checks in Redis, :data:`CHUNK` timers a call.
    Returns how many were made due.
    """
    ahead = shard.redis.zrangebyscore(shard.due_key, f"({now}", now + visibility_ms)
    candidates = sorted({int(m) for m in ahead} - _queued_ids(shard)) if ahead else []
    revealed = 0
    for k in range(0, len(candidates), CHUNK):
        chunk = candidates[k:k + CHUNK]
        revealed += shard.reveal(keys=[shard.due_key, *map(shard.record_key, chunk)],
                                 args=[now, overdue_ms, *chunk])
    return revealed


def _feed_retired(store, balancer, index, visibility_ms):
    fed = 0
    while True:
        count = store.feed(index, balancer.choose(), visibility_ms)
        fed += count
        if count < FEED_BATCH:
            return fed


def recover(store, balancer, live_count, limits, visibility_ms, grace_ms=None):
    """Run one recovery pass.

    Args:
        store: ``sharding.store.TimerStore``.
        balancer: ``sharding.balancer.LeastBusy`` over the live shards.
        live_count: number N of live shards (``0..N-1``).
        limits: the default ``sharding.records.RetryLimits`` (delivery attempts
            and retry window before a timer is failed).
        visibility_ms: the feeders' visibility timeout in milliseconds.
        grace_ms: how overdue a fed timer missing from its queue must be before
            it is made due again; None for a full pass (no wait, as at startup).
    Returns:
        dict of counts: ``leases_retrying``, ``leases_failed``, ``lost``
        (made due again), ``retired_fed`` (fed from retired shards),
        ``trimmed`` (listing entries past retention).
    """
    now = now_ms(store.control)
    known = store.known_shards(live_count)
    leases = _expire_leases(store, known, now, limits)
    lost = sum(_reveal_lost(store.shard(i), now, visibility_ms, grace_ms or 0) for i in range(live_count))
    retired = [i for i in known if i >= live_count]
    retired_fed = sum(_feed_retired(store, balancer, i, visibility_ms) for i in retired)
    return {"leases_retrying": leases["retrying"], "leases_failed": leases["failed"],
            "lost": lost, "retired_fed": retired_fed, "trimmed": store.trim_finished(known, now)}
