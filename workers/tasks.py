"""Firing timers in a consumer: claim, deliver, record.

The timer record is the source of truth; the queue message only says which
timers to look at. A claim (scheduled/retrying → firing, with a lease) is
atomic, so two consumers never send the same attempt, and a message that
arrives for a timer already fired, failed or cancelled does nothing.

A message holds one timer or, when many are due at once, a batch of up to 16
of one shard's timers (``sharding.queues``). A consumer's :class:`Dispatcher`
runs it:

* its Huey worker thread takes a message only when the consumer has room: no
  claimed timer waiting, and a sender free or about to be (one whose send
  began less than :data:`GIVE_BACK_S` ago); it claims the message's timers in
  one script and hands them to the sender threads;
* a claimed timer that finds no sender within :data:`GIVE_BACK_S` (its
  consumer's receivers hang or drip) is released unsent (``TimerStore.release``:
  pending again, the attempt not counted) and given back to the head of its
  queue for another consumer, so a slow receiver holds up its own timers only;
* a sender that finds nothing more to send records the outcomes so far at
  once, so that a delivered timer reads ``fired`` as soon as its receiver has
  answered; in a backlog the upkeep thread records them together, in one
  script per shard every :data:`FLUSH_S` seconds;
* each claimed timer holds a lease of one attempt (webhook timeout + 5 s),
  renewed every third of it while its send runs: if the consumer dies,
  recovery takes its timers back within a lease.

A backlog so costs a consumer about one claim per 16 timers and one record
per :data:`FLUSH_S`, whatever the number of senders (docs/BENCHMARKS.md, "Fire path").
"""

import collections
import logging
import threading
import time
from typing import NamedTuple

from sharding import logs, metrics
from sharding.ids import home_shard
from sharding.queues import MAX_TIMERS_PER_MESSAGE
from sharding.records import Claim, Finish
from sharding.topology import REDIS_ERRORS
from workers.delivery import Outcome, backoff_s

log = logging.getLogger("workers.tasks")

# At most this long (seconds) between a send's end and its outcome recorded.
FLUSH_S = 0.1
# A claimed timer that waits this long (seconds) for a sender goes back to its queue.
GIVE_BACK_S = 0.1
# How often (seconds) the consumer's upkeep thread gives back, records and renews.
UPKEEP_S = 0.05
# timer_webhook_attempts_total{outcome}: by what follows the attempt, so that
# a last attempt that failed counts as "fail" even if its error was retryable.
_ATTEMPT_LABEL = {"fired": "ok", "retrying": "retry", "failed": "fail"}
# Label children made once (prometheus-client's advice; in multiprocess mode each makes a file entry).
_ATTEMPTS = {status: metrics.WEBHOOK_ATTEMPTS.labels(label) for status, label in _ATTEMPT_LABEL.items()}
_FINAL_COUNTER = {"fired": metrics.TIMER_FIRED, "failed": metrics.TIMER_FAILED}


class Sent(NamedTuple):
    """One attempt sent and not yet recorded: what to record, and what to log."""

    finish: Finish
    outcome: Outcome
    claim: Claim
    late_s: float


class Waiting(NamedTuple):
    """A claimed timer waiting for a sender: its claim, the shard whose queue it came
    from, and when it was claimed (monotonic seconds)."""

    claim: Claim
    queue_index: int
    claimed_at: float


class Dispatcher:
    """A consumer's claimed timers, its webhook sender threads, and the recording of their outcomes.

    Thread-safe; one per consumer process. :meth:`start` starts ``count``
    sender threads and one upkeep thread (daemons: a consumer killed with
    them loses nothing that recovery does not take back through the leases).

    Args:
        store: ``sharding.store.TimerStore``.
        sender: ``workers.delivery.Sender``.
        settings: ``sharding.config.Settings`` (lease, visibility, retry limits).
        count: sender threads (``TIMER_CONSUMER_THREADS``).
    """

    def __init__(self, store, sender, settings, count):
        self.store = store
        self.sender = sender
        self.settings = settings
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # senders wait for claimed timers
        self._room = threading.Condition(self._lock)  # the Huey worker waits for room
        self._ready = collections.deque()  # Waiting, oldest first
        self._idle = 0
        self._busy = {}  # sender thread id -> (claim, monotonic start of its send)
        self._done = []  # Sent, not yet recorded
        self._closing = False
        self._renewed_at = self._flushed_at = time.monotonic()
        self._threads = [threading.Thread(target=self._send_loop, name=f"sender-{k}", daemon=True)
                         for k in range(count)]
        self._threads.append(threading.Thread(target=self._upkeep_loop, name="upkeep", daemon=True))

    def start(self):
        """Start the sender and upkeep threads; returns self."""
        for thread in self._threads:
            thread.start()
        return self

    def _has_room(self):
        if self._ready or self._closing:
            return False
        now = time.monotonic()
        return self._idle > 0 or any(now - began < GIVE_BACK_S for _, began in self._busy.values())

    def wait_for_room(self, timeout_s):
        """True once the consumer may take a message; False after ``timeout_s`` seconds without room.

        Room: no claimed timer waiting for a sender, and a sender free or
        busy for less than :data:`GIVE_BACK_S` (a fast receiver's send ends
        soon; a hanging one's does not, and its consumer leaves the queue to others).
        """
        with self._lock:
            return self._room.wait_for(self._has_room, timeout_s)

    def take(self, timer_ids, queue_index):
        """Claim the due and unclaimed ones of ``timer_ids`` (one message) and queue them for the senders.

        A message for a timer that is not yet due (a stale duplicate) is
        dropped, since the due index feeds the timer again when it is due.

        Args:
            timer_ids: ids of timers of one home shard.
            queue_index: the shard whose queue the message came from.
        Returns:
            list with, per timer, ``claimed`` or the reason nothing will be
            sent (``early``, ``fired``, ``missing`` ...).
        Raises:
            redis.exceptions.RedisError: Redis unreachable; the timers come due again.
        """
        claims = self.store.claim(timer_ids, self.settings.lease_ms)
        claimed_at = time.monotonic()
        firing = [Waiting(claim, queue_index, claimed_at) for claim in claims if claim.status == "firing"]
        if firing:
            with self._lock:
                self._ready.extend(firing)
                self._work.notify(len(firing))
        stale = {claim.timer_id: claim.status for claim in claims if claim.status != "firing"}
        if stale:
            # One line per message: a lost message fed again can hold 16 such timers.
            log.info("timers not claimable", extra={"timers": stale})
        return ["claimed" if claim.status == "firing" else claim.status for claim in claims]

    def _send_loop(self):
        me = threading.get_ident()
        while True:
            with self._lock:
                self._idle += 1
                if not self._ready:
                    self._room.notify()
                while not self._ready:
                    self._work.wait()
                self._idle -= 1
                waiting = self._ready.popleft()
                self._busy[me] = (waiting.claim, time.monotonic())
                if not self._ready:
                    # This sender took the last waiting timer: room for the next message.
                    self._room.notify()
            try:
                sent = _attempt(waiting.claim, waiting.claimed_at, self.sender)
            except Exception:  # noqa: BLE001 - a bug must not cost the consumer a sender; the lease recovers the timer
                log.exception("sender failed", extra={"timer_id": waiting.claim.timer_id})
                sent = None
            with self._lock:
                del self._busy[me]
                if sent:
                    self._done.append(sent)
                # Nothing waiting to be sent: record now, so that a delivered
                # timer reads fired at once; in a backlog the upkeep batches them.
                record = self._take_done() if not self._ready else []
            if record:
                self._record(record)

    def _upkeep_loop(self):
        while True:
            time.sleep(UPKEEP_S)
            try:
                self.upkeep()
            except Exception:  # noqa: BLE001 - the upkeep must go on: it gives back, records and renews
                log.exception("consumer upkeep failed")

    def upkeep(self, everything=False):
        """Give back timers that waited too long for a sender, record outcomes, renew leases.

        Called every :data:`UPKEEP_S` seconds by the upkeep thread, and by
        :meth:`close`. A Redis error is logged and the work left for the next call.

        Args:
            everything: give back every waiting timer and record every outcome now.
        """
        now = time.monotonic()
        with self._lock:
            late = []
            while self._ready and (everything or now - self._ready[0].claimed_at >= GIVE_BACK_S):
                late.append(self._ready.popleft())
            if late:
                self._room.notify()
            record = self._take_done() if (everything or now - self._flushed_at >= FLUSH_S) else []
            renew = []
            if now - self._renewed_at >= self.settings.lease_ms / 1000 / 3:
                renew = [claim for claim, _ in self._busy.values()]
                self._renewed_at = now
        if record:
            self._record(record)
        try:
            if late:
                self._give_back(late)
            # Sends to slow receivers keep their leases; a killed consumer
            # stops renewing and recovery takes them back.
            for claims in _grouped(renew, lambda claim: home_shard(claim.timer_id)).values():
                self.store.renew(claims, self.settings.lease_ms)
        except REDIS_ERRORS as exc:
            log.warning("consumer upkeep failed", extra={"error": str(exc)})

    def _take_done(self):
        """The outcomes not yet recorded, emptied (call with the lock held)."""
        done, self._done = self._done, []
        self._flushed_at = time.monotonic()
        return done

    def _give_back(self, late):
        """Release ``late`` (:class:`Waiting`) unsent and put them back at the head of their queues.

        A timer cancelled or taken back by recovery meanwhile is no longer this
        consumer's: the release leaves it alone, and it is not given back.
        """
        visibility_ms = int(self.settings.visibility_seconds * 1000)
        released = set()
        for group in _grouped(late, lambda waiting: home_shard(waiting.claim.timer_id)).values():
            released.update(self.store.release([waiting.claim for waiting in group], visibility_ms))
        back = _grouped((w for w in late if w.claim.timer_id in released), lambda w: w.queue_index)
        for queue_index, group in back.items():
            ids = [w.claim.timer_id for w in group]
            for k in range(0, len(ids), MAX_TIMERS_PER_MESSAGE):
                self.store.give_back(queue_index, ids[k:k + MAX_TIMERS_PER_MESSAGE])
        log.info("timers given back", extra={"timers": len(released), "waited_s": GIVE_BACK_S})

    def _record(self, sent):
        """Record the outcomes of ``sent`` attempts, one script per home shard; on a Redis
        error, log it and keep the outcomes not recorded for the next upkeep."""
        for group in _grouped(sent, lambda s: home_shard(s.finish.timer_id)).values():
            try:
                _record(self.store, self.settings.retry_limits, group)
            except REDIS_ERRORS as exc:
                log.warning("recording outcomes failed", extra={"error": str(exc), "timers": len(group)})
                with self._lock:
                    self._done[:0] = group

    def close(self, timeout_s):
        """Stop for a graceful shutdown: give back waiting timers, let sends end, record them.

        Args:
            timeout_s: seconds (monotonic) the sends in flight get.
        Returns:
            True when every send ended and was recorded in time.
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._closing = True
        self.upkeep(everything=True)
        while time.monotonic() < deadline:
            with self._lock:
                busy = bool(self._busy)
            if not busy:
                break
            time.sleep(UPKEEP_S)
        self.upkeep(everything=True)
        with self._lock:
            return not self._busy and not self._done


def _grouped(items, key):
    """``items`` grouped by ``key(item)``: dict key → list of items, in their order."""
    groups = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def _attempt(claim, claimed_at, sender):
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


def _record(store, limits, pending):
    """Record the outcomes of ``pending`` attempts of one shard in one script (``limits``: the
    default ``RetryLimits``), count them, then log them."""
    results = store.finish([sent.finish for sent in pending], limits)
    # An attempt no longer applied was cut off: recovery took the timer back and counts its retry.
    # Counted once per status and batch: each increment is a locked write to the metrics file.
    counts = collections.Counter(status for applied, status, _ in results if applied)
    for status, count in counts.items():
        _ATTEMPTS[status].inc(count)
        if status in _FINAL_COUNTER:
            _FINAL_COUNTER[status].inc(count)
    for (finish, outcome, claim, late_s), (applied, status, next_ms) in zip(pending, results, strict=True):
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


def register(huey, dispatcher, index):
    """Register the ``fire`` task on ``huey`` (shard ``index``'s Huey) and bind its messages to it.

    The task hands each message's timers to ``dispatcher`` (:class:`Dispatcher`).
    """

    def fire(timer_ids):
        return dispatcher.take(timer_ids, index)

    task = huey.task(name="fire")(fire)
    huey.serializer.bind(task)
    return task
