"""The Huey task that fires a batch of timers: claim, deliver, record.

The timer record is the source of truth; the queue message only says which
timers to look at. A claim (scheduled/retrying → firing, with a lease) is
atomic, so two consumers never send the same attempt, and a message that
arrives for a timer already fired, failed or cancelled does nothing.

A message holds one timer or, when many are due at once, a batch of one
shard's timers (``sharding.queues``): they are claimed in one script, sent
in order by this thread, and their outcomes recorded in one script, or
every :data:`FLUSH_S` seconds when the batch is slow, so that a delivered
timer soon reads ``fired``.
"""

import logging
import time
from typing import NamedTuple

from sharding import logs, metrics
from sharding.store import Finish
from workers.delivery import Outcome, backoff_s

log = logging.getLogger("workers.tasks")

FLUSH_S = 0.5


class Sent(NamedTuple):
    """One attempt sent and not yet recorded: what to record, and what to log."""

    finish: Finish
    outcome: Outcome
    claim: object  # sharding.store.Claim
    late_s: float


def fire_timers(timer_ids, store, sender, settings):
    """Run one delivery attempt of each of ``timer_ids`` that is due and unclaimed.

    A retry goes back into the due index (by :meth:`TimerStore.finish`); a
    message for a timer that is not yet due (a stale duplicate) is dropped,
    since the due index feeds the timer again when it is due.

    Args:
        timer_ids: ids of timers of one shard.
        store: ``sharding.store.TimerStore``.
        sender: ``workers.delivery.Sender``.
        settings: ``sharding.config.Settings``.
    Returns:
        list with, per timer, the status it was left in (``fired``,
        ``retrying``, ``failed``) or the reason nothing was sent (``early``,
        ``fired``, ``missing`` ...).
    Raises:
        redis.exceptions.RedisError: Redis unreachable; recovery redelivers.
    """
    claims = store.claim(timer_ids, settings.lease_ms)
    claimed_at = time.monotonic()
    statuses, pending = {}, []
    flushed_at = claimed_at
    try:
        for claim in claims:
            if claim.status != "firing":
                log.info("timer not claimable", extra={"timer_id": claim.timer_id, "status": claim.status})
                statuses[claim.timer_id] = claim.status
                continue
            late_s = (claim.now_ms - claim.fire_at_ms) / 1000 + time.monotonic() - claimed_at
            pending.append(_attempt(claim, late_s, sender, settings))
            if time.monotonic() - flushed_at >= FLUSH_S:
                _record(store, pending, statuses)
                pending, flushed_at = [], time.monotonic()
    finally:
        if pending:
            _record(store, pending, statuses)
    return [statuses[timer_id] for timer_id in timer_ids]


def _attempt(claim, late_s, sender, settings):
    """Send one attempt of ``claim`` (``late_s`` seconds after its fire time); returns :class:`Sent`."""
    if claim.attempt == 1:
        metrics.FIRE_LATENESS.observe(max(late_s, 0.0))
    token = logs.request_id.set(claim.request_id or None)
    try:
        outcome = sender.send(claim.url, claim.timer_id)
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the timer firing until its lease ends
        log.exception("delivery failed unexpectedly", extra={"timer_id": claim.timer_id})
        outcome = Outcome("retry", f"internal error: {type(exc).__name__}")
    finally:
        logs.request_id.reset(token)
    metrics.WEBHOOK_ATTEMPTS.labels(outcome.kind).inc()
    if outcome.kind == "ok":
        status, delay_s = "fired", 0.0
    elif outcome.kind == "retry" and claim.attempt < settings.webhook_max_attempts:
        status = "retrying"
        delay_s = outcome.retry_after_s
        if delay_s is None:
            delay_s = backoff_s(claim.attempt)
    else:
        status, delay_s = "failed", 0.0
    return Sent(Finish(claim.timer_id, claim.attempt, status, outcome.error, delay_s * 1000),
                outcome, claim, late_s)


def _record(store, pending, statuses):
    """Record the outcomes of ``pending`` attempts in one script, then log them."""
    results = store.finish([sent.finish for sent in pending])
    for (finish, outcome, claim, late_s), (applied, _) in zip(pending, results, strict=True):
        statuses[finish.timer_id] = finish.status
        if applied and finish.status == "fired":
            metrics.TIMER_FIRED.inc()
        # Successes are DEBUG: a JSON line per webhook costs as much CPU as the
        # rest of the bookkeeping (docs/BENCHMARKS.md).
        level = logging.DEBUG if outcome.kind == "ok" and applied else logging.INFO
        token = logs.request_id.set(claim.request_id or None)
        try:
            log.log(level, "delivery attempt", extra={
                "timer_id": finish.timer_id, "attempt": finish.attempt, "outcome": outcome.kind,
                "status": finish.status, "error": outcome.error, "lateness_s": round(late_s, 3),
                "applied": applied})
        finally:
            logs.request_id.reset(token)


def register(huey, store, sender, settings):
    """Register the ``fire`` task on ``huey`` (one shard's Huey) and bind its messages to it."""

    def fire(timer_ids):
        return fire_timers(timer_ids, store, sender, settings)

    task = huey.task(name="fire")(fire)
    huey.serializer.bind(task)
    return task
