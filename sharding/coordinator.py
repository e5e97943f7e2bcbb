"""The coordinator process: recovery at startup, then every few seconds.

At startup it runs a full pass of :func:`sharding.recovery.recover` (every
pending timer that no live queue holds becomes due now); afterwards a pass
every ``TIMER_RECOVERY_INTERVAL_SECONDS`` that waits
``TIMER_RECOVERY_GRACE_SECONDS`` before it treats a queued timer as lost.
Both take back expired leases and feed retired shards' timers to live ones.
Several coordinators may run, one per host: a pass runs only under a Redis
lock (redis-py ``Lock``), so two never work at the same time. Each coordinator
locks with one token for all its passes, so a lock that its failed pass left
behind (a SET that a stalled Redis applied after the client timed out) is its
own to drop.

Run: ``python -m sharding.coordinator``.
"""

import logging
import os
import socket
import time
import uuid

import redis

from sharding import metrics, process
from sharding.balancer import LeastBusy, NoShardAvailable
from sharding.recovery import recover
from sharding.topology import REDIS_ERRORS

log = logging.getLogger("sharding.coordinator")

LOCK_KEY = "timers:coordinator:lock"


def wait_for_redis(store, stop, timeout_s=None):
    """Block until Redis answers PING (retrying with backoff) or ``stop`` is set.

    Args:
        stop: ``threading.Event``.
        timeout_s: give up after this many seconds (None: never).
    Returns:
        True when Redis answered, False when stopped or timed out.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = 0.05
    while not stop.is_set():
        try:
            store.control.ping()
            return True
        except REDIS_ERRORS as exc:
            if deadline is not None and time.monotonic() > deadline:
                return False
            log.info("waiting for redis", extra={"error": str(exc)})
            stop.wait(delay)
            delay = min(delay * 2, 1.0)
    return False


def run_pass(store, balancer, settings, full, token):
    """One recovery pass under the coordinator lock.

    Args:
        token: this coordinator's lock token (str), the same for all its passes.
    Returns:
        the counts of :func:`sharding.recovery.recover`, or None when another
        coordinator holds the lock.
    Raises:
        REDIS_ERRORS: Redis failed or timed out during the pass.
        NoShardAvailable: no live shard to feed a retired shard's timers to.
    """
    lock = store.control.lock(LOCK_KEY, timeout=600 if full else 60,
                              blocking=full, blocking_timeout=30)
    if not lock.acquire(token=token, blocking=False):
        # A Redis that stalls may apply a failed pass's SET after the client gave
        # up on it: a lock left behind by this coordinator is dropped, not waited out.
        try:
            lock.do_release(token)
        except redis.exceptions.LockNotOwnedError:
            pass
        if not lock.acquire(token=token):
            return None
    try:
        grace_ms = None if full else int(settings.recovery_grace_seconds * 1000)
        return recover(store, balancer, settings.shards, settings.retry_limits,
                       int(settings.visibility_seconds * 1000), grace_ms)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("coordinator lock expired during a pass")


def main():
    """Entry point: full pass at startup, then bounded passes until SIGTERM/SIGINT."""
    settings, stop = process.start("coordinator")
    store = settings.store()
    balancer = LeastBusy(store.loads, settings.shards)
    if not wait_for_redis(store, stop):
        return
    store.register_shards(settings.shards)
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    full = True
    while not stop.is_set():
        started = time.monotonic()
        try:
            counts = run_pass(store, balancer, settings, full, token)
        except (*REDIS_ERRORS, NoShardAvailable) as exc:
            log.warning("recovery pass failed", extra={"error": str(exc)})
        else:
            if counts is not None:
                metrics.TIMER_FAILED.inc(counts["leases_failed"])
                # A pass that took something back is news (a consumer died, a message was lost).
                taken_back = counts["leases_retrying"] + counts["leases_failed"] + counts["lost"]
                level = logging.INFO if full or taken_back or counts["retired_fed"] else logging.DEBUG
                log.log(level, "recovery pass", extra={
                    "full": full, "seconds": round(time.monotonic() - started, 3), **counts})
                full = False
        stop.wait(settings.recovery_interval_seconds)
    log.info("coordinator stopped")


if __name__ == "__main__":
    main()
