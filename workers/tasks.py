"""The Huey task that fires a batch of timers: claim, deliver, record.

The timer record is the source of truth; the queue message only says which
timers to look at. A claim (scheduled/retrying → firing, with a lease) is
atomic, so two consumers never send the same attempt, and a message that
arrives for a timer already fired, failed or cancelled does nothing.

A message holds one timer or, when many are due at once, a batch of one
shard's timers (``sharding.queues``). A consumer claims only as many of
them as it has free sender threads (:class:`Senders`): a Huey worker
thread takes a message only while a sender is free, reserves one sender per
timer it claims, and puts the rest back at the head of the shard's queue for
another consumer; so no claimed timer waits for a sender, and a receiver
that hangs or drips holds up its own timers only. The claimed timers are
sent in parallel, their outcomes recorded as the sends complete, in one
script every :data:`FLUSH_S` seconds at most, so that a delivered timer soon
reads ``fired``. Each claimed timer holds a lease of one attempt (webhook
timeout + 5 s), renewed every third of it while its send runs: if the
consumer dies, recovery takes its timers back within a lease.
"""

import concurrent.futures
import logging
import threading
import time
from typing import NamedTuple

from sharding import logs, metrics
from sharding.store import Finish
from workers.delivery import Outcome, backoff_s

log = logging.getLogger("workers.tasks")

FLUSH_S = 0.5
# How long a Huey worker thread holding a message waits for a sender to free
# up before it gives the whole message back to the queue.
GIVE_BACK_S = 0.1
# timer_webhook_attempts_total{outcome}: by what follows the attempt, so that
# a last attempt that failed counts as "fail" even if its error was retryable.
_ATTEMPT_LABEL = {"fired": "ok", "retrying": "retry", "failed": "fail"}


class Sent(NamedTuple):
    """One attempt sent and not yet recorded: what to record, and what to log."""

    finish: Finish
    outcome: Outcome
    claim: object  # sharding.store.Claim
    late_s: float


class Senders:
    """A consumer's webhook sender threads, and a count of the free ones.

    Args:
        count: sender threads (``TIMER_CONSUMER_THREADS``).
    """

    def __init__(self, count):
        self._executor = concurrent.futures.ThreadPoolExecutor(count, thread_name_prefix="sender")
        self._free = count
        self._cond = threading.Condition()

    def wait_free(self, timeout_s):
        """True as soon as a sender is free; False after ``timeout_s`` seconds without one."""
        with self._cond:
            return self._cond.wait_for(lambda: self._free > 0, timeout_s)

    def take(self, wanted, timeout_s):
        """Reserve up to ``wanted`` free senders, waiting at most ``timeout_s`` seconds for one.

        Returns:
            how many were reserved (0 when none freed up in time).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._free > 0, timeout_s):
                return 0
            taken = min(wanted, self._free)
            self._free -= taken
            return taken

    def release(self, count=1):
        """Give back ``count`` reserved senders."""
        if count:
            with self._cond:
                self._free += count
                self._cond.notify_all()

    def submit(self, fn, *args):
        """Run ``fn(*args)`` on a reserved sender, which is freed when it returns.

        Returns:
            ``concurrent.futures.Future``.
        """
        return self._executor.submit(self._run, fn, args)

    def _run(self, fn, args):
        try:
            return fn(*args)
        finally:
            self.release()


def fire_timers(timer_ids, store, sender, settings, senders, queue_index):
    """Run one delivery attempt of each of ``timer_ids`` that is due and unclaimed, as senders allow.

    The first as many timers as there are free senders (waiting at most
    :data:`GIVE_BACK_S` for one) are claimed and sent at once; the others go
    back to the head of the queue they came from, unclaimed (``TimerStore.give_back``).
    A retry goes back into the due index (by :meth:`TimerStore.finish`); a
    message for a timer that is not yet due (a stale duplicate) is dropped,
    since the due index feeds the timer again when it is due.

    Args:
        timer_ids: ids of timers of one shard.
        store: ``sharding.store.TimerStore``.
        sender: ``workers.delivery.Sender``.
        settings: ``sharding.config.Settings``.
        senders: the consumer's :class:`Senders`.
        queue_index: the shard whose queue the message came from.
    Returns:
        list with, per timer, the status it was left in (``fired``,
        ``retrying``, ``failed``), ``given back``, or the reason nothing was
        sent (``early``, ``fired``, ``missing`` ...).
    Raises:
        redis.exceptions.RedisError: Redis unreachable; recovery redelivers.
    """
    taken = senders.take(len(timer_ids), GIVE_BACK_S)
    statuses = dict.fromkeys(timer_ids[taken:], "given back")
    try:
        if statuses:
            store.give_back(queue_index, timer_ids[taken:])
        claims = store.claim(timer_ids[:taken], settings.lease_ms) if taken else []
    except BaseException:
        senders.release(taken)
        raise
    claimed_at = time.monotonic()
    sends = {}
    for claim in claims:
        if claim.status == "firing":
            sends[senders.submit(_attempt, claim, claimed_at, sender, settings)] = claim
        else:
            senders.release()
            log.info("timer not claimable", extra={"timer_id": claim.timer_id, "status": claim.status})
            statuses[claim.timer_id] = claim.status
    pending, flushed_at, renewed_at = [], claimed_at, claimed_at
    renew_s = settings.lease_ms / 1000 / 3
    try:
        while sends:
            done, _ = concurrent.futures.wait(sends, timeout=FLUSH_S,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                del sends[future]
                pending.append(future.result())
            now = time.monotonic()
            if pending and now - flushed_at >= FLUSH_S:
                _record(store, settings.retry_limits, pending, statuses)
                pending, flushed_at = [], now
            if sends and now - renewed_at >= renew_s:
                # Sends to slow receivers keep their leases; a killed
                # consumer stops renewing and recovery takes them back.
                store.renew(list(sends.values()), settings.lease_ms)
                renewed_at = now
    finally:
        if pending:
            _record(store, settings.retry_limits, pending, statuses)
    return [statuses[timer_id] for timer_id in timer_ids]


def _attempt(claim, claimed_at, sender, settings):
    """Send one attempt of ``claim`` (claimed at monotonic ``claimed_at``); returns :class:`Sent`."""
    late_s = (claim.now_ms - claim.fire_at_ms) / 1000 + time.monotonic() - claimed_at
    if claim.attempt == 1:
        metrics.FIRE_LATENESS.observe(max(late_s, 0.0))
    token = logs.request_id.set(claim.request_id or None)
    try:
        outcome = sender.send(claim.url, claim.timer_id, claim.payload)
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the timer firing until its lease ends
        log.exception("delivery failed unexpectedly", extra={"timer_id": claim.timer_id})
        outcome = Outcome("retry", f"internal error: {type(exc).__name__}")
    finally:
        logs.request_id.reset(token)
    if outcome.kind == "ok":
        status, delay_s = "fired", 0.0
    elif outcome.kind == "retry":
        # Whether the limits allow another attempt is the store's decision (TimerStore.finish).
        status = "retrying"
        delay_s = outcome.retry_after_s
        if delay_s is None:
            delay_s = backoff_s(claim.in_budget)
    else:
        status, delay_s = "failed", 0.0
    return Sent(Finish(claim.timer_id, claim.attempt, status, outcome.error, delay_s * 1000,
                       claim.now_ms), outcome, claim, late_s)


def _record(store, limits, pending, statuses):
    """Record the outcomes of ``pending`` attempts in one script (``limits``: the default
    ``RetryLimits``), count them, then log them."""
    results = store.finish([sent.finish for sent in pending], limits)
    for (finish, outcome, claim, late_s), (applied, status, next_ms) in zip(pending, results, strict=True):
        statuses[finish.timer_id] = status
        # An attempt no longer applied was cut off: recovery took the timer back and counts its retry.
        if applied:
            metrics.WEBHOOK_ATTEMPTS.labels(_ATTEMPT_LABEL[status]).inc()
            if status == "fired":
                metrics.TIMER_FIRED.inc()
            elif status == "failed":
                metrics.TIMER_FAILED.inc()
        # Successes are DEBUG: a JSON line per webhook costs as much CPU as the
        # rest of the bookkeeping (docs/BENCHMARKS.md).
        level = logging.DEBUG if outcome.kind == "ok" and applied else logging.INFO
        if not log.isEnabledFor(level):
            continue
        token = logs.request_id.set(claim.request_id or None)
        try:
            log.log(level, "delivery attempt", extra={
                "timer_id": finish.timer_id, "attempt": finish.attempt, "outcome": outcome.kind,
                "status": status, "error": outcome.error, "lateness_s": round(late_s, 3),
                "applied": applied, **({"wait_s": finish.retry_delay_ms / 1000, "next_attempt_ms": next_ms}
                                       if applied and status == "retrying" else {})})
        finally:
            logs.request_id.reset(token)


def register(huey, store, sender, settings, senders, index):
    """Register the ``fire`` task on ``huey`` (shard ``index``'s Huey) and bind its messages to it.

    The consumer's webhooks are sent by ``senders`` (:class:`Senders`),
    shared by its Huey worker threads.
    """

    def fire(timer_ids):
        return fire_timers(timer_ids, store, sender, settings, senders, index)

    task = huey.task(name="fire")(fire)
    huey.serializer.bind(task)
    return task
