"""The Huey task that fires a batch of timers: claim, deliver, record.

The timer record is the source of truth; the queue message only says which
timers to look at. A claim (scheduled/retrying → firing, with a lease) is
atomic, so two consumers never send the same attempt, and a message that
arrives for a timer already fired, failed or cancelled does nothing.

A message holds one timer or, when many are due at once, a batch of one
shard's timers (``sharding.queues``): they are claimed in one script, sent
in parallel by the consumer's sender threads (so a slow receiver holds up
only its own webhook), and their outcomes recorded as the sends complete, in
one script every :data:`FLUSH_S` seconds at most, so that a delivered timer
soon reads ``fired``. Each claimed timer holds a lease of one attempt
(webhook timeout + 5 s), renewed every third of it while its send waits or
runs: if the consumer dies, recovery takes its timers back within a lease.
"""

import concurrent.futures
import logging
import time
from typing import NamedTuple

from sharding import logs, metrics
from sharding.store import Finish
from workers.delivery import Outcome, backoff_s

log = logging.getLogger("workers.tasks")

FLUSH_S = 0.5
# timer_webhook_attempts_total{outcome}: by what follows the attempt, so that
# a last attempt that failed counts as "fail" even if its error was retryable.
_ATTEMPT_LABEL = {"fired": "ok", "retrying": "retry", "failed": "fail"}


class Sent(NamedTuple):
    """One attempt sent and not yet recorded: what to record, and what to log."""

    finish: Finish
    outcome: Outcome
    claim: object  # sharding.store.Claim
    late_s: float


def fire_timers(timer_ids, store, sender, settings, senders):
    """Run one delivery attempt of each of ``timer_ids`` that is due and unclaimed.

    A retry goes back into the due index (by :meth:`TimerStore.finish`); a
    message for a timer that is not yet due (a stale duplicate) is dropped,
    since the due index feeds the timer again when it is due.

    Args:
        timer_ids: ids of timers of one shard.
        store: ``sharding.store.TimerStore``.
        sender: ``workers.delivery.Sender``.
        settings: ``sharding.config.Settings``.
        senders: ``concurrent.futures.Executor`` whose threads send the webhooks.
    Returns:
        list with, per timer, the status it was left in (``fired``,
        ``retrying``, ``failed``) or the reason nothing was sent (``early``,
        ``fired``, ``missing`` ...).
    Raises:
        redis.exceptions.RedisError: Redis unreachable; recovery redelivers.
    """
    claims = store.claim(timer_ids, settings.lease_ms)
    claimed_at = time.monotonic()
    statuses, sends = {}, {}
    for claim in claims:
        if claim.status == "firing":
            sends[senders.submit(_attempt, claim, claimed_at, sender, settings)] = claim
        else:
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
                # Sends waiting behind slow receivers keep their leases; a
                # killed consumer stops renewing and recovery takes them back.
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


def register(huey, store, sender, settings):
    """Register the ``fire`` task on ``huey`` (one shard's Huey) and bind its messages to it.

    The consumer's webhooks are sent by ``TIMER_CONSUMER_THREADS`` sender
    threads, shared by its Huey worker threads.
    """
    senders = concurrent.futures.ThreadPoolExecutor(settings.consumer_threads, thread_name_prefix="sender")

    def fire(timer_ids):
        return fire_timers(timer_ids, store, sender, settings, senders)

    task = huey.task(name="fire")(fire)
    huey.serializer.bind(task)
    return task
