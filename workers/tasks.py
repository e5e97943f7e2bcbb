"""The Huey task that fires one timer: claim, deliver, record.

The timer record is the source of truth; the queue message only says which
timer to look at. A claim (scheduled/retrying → firing, with a lease) is
atomic, so two consumers never send the same attempt, and a message that
arrives for a timer already fired, failed or cancelled does nothing.
"""

import logging

from sharding import logs, metrics
from workers.delivery import Outcome, backoff_s

log = logging.getLogger("workers.tasks")


def fire_timer(timer_id, store, sender, settings):
    """Run one delivery attempt of ``timer_id`` if it is due and unclaimed.

    A retry goes back into the due index (by :meth:`TimerStore.finish`); a
    message for a timer that is not yet due (a stale duplicate) is dropped,
    since the due index feeds the timer again when it is due.

    Args:
        store: ``sharding.store.TimerStore``.
        sender: ``workers.delivery.Sender``.
        settings: ``sharding.config.Settings``.
    Returns:
        the status the timer was left in (``fired``, ``retrying``, ``failed``),
        or the reason nothing was sent (``early``, ``fired``, ``missing`` ...).
    Raises:
        redis.exceptions.RedisError: Redis unreachable; recovery redelivers.
    """
    claim = store.claim(timer_id, settings.lease_ms)
    if claim.status != "firing":
        log.info("timer not claimable", extra={"timer_id": timer_id, "status": claim.status})
        return claim.status
    token = logs.request_id.set(claim.request_id or None)
    try:
        return _attempt(timer_id, claim, store, sender, settings)
    finally:
        logs.request_id.reset(token)


def _attempt(timer_id, claim, store, sender, settings):
    lateness_s = (claim.now_ms - claim.fire_at_ms) / 1000
    if claim.attempt == 1:
        metrics.FIRE_LATENESS.observe(max(lateness_s, 0.0))
    try:
        outcome = sender.send(claim.url, timer_id)
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the timer firing until its lease ends
        log.exception("delivery failed unexpectedly", extra={"timer_id": timer_id})
        outcome = Outcome("retry", f"internal error: {type(exc).__name__}")
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
    applied, _ = store.finish(timer_id, claim.attempt, status, outcome.error, delay_s * 1000)
    if applied and status == "fired":
        metrics.TIMER_FIRED.inc()
    log.info("delivery attempt", extra={
        "timer_id": timer_id, "attempt": claim.attempt, "outcome": outcome.kind,
        "status": status, "error": outcome.error, "lateness_s": round(lateness_s, 3),
        "applied": applied})
    return status


def register(huey, store, sender, settings):
    """Register the ``fire`` task on ``huey`` (one shard's Huey) and bind its messages to it."""

    def fire(timer_id):
        return fire_timer(timer_id, store, sender, settings)

    task = huey.task(name="fire")(fire)
    huey.serializer.bind(task)
    return task
