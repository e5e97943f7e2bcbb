"""One Huey consumer of one shard's queue.

Run: ``python -m workers.consumer <shard index>``. The pool supervisor
(``workers.pool``) starts ``TIMER_WORKERS_PER_SHARD`` of these per shard.

Each consumer runs one Huey worker thread, which takes a message only when
the consumer has room for it, ``TIMER_CONSUMER_THREADS`` webhook sender
threads (webhooks are I/O-bound) and an upkeep thread (``workers.tasks.Dispatcher``)
and, in place of Huey's scheduler, a feeder that every
``TIMER_SCHEDULER_TICK_SECONDS`` (default 0.1 s; Huey's scheduler ticks once a
second at most) moves the shard's due timers from the timer store's due index
onto its Huey queue. Several feeders on one shard are safe: taking due timers
is one atomic Lua script.

SIGTERM and SIGINT stop gracefully: claimed timers not yet sent are given
back, in-flight deliveries get ``TIMER_SHUTDOWN_SECONDS`` to finish and are
recorded; anything cut off is recovered through its lease by the coordinator.
"""

import logging
import sys
import time

from huey.consumer import BaseProcess, Consumer, Worker

from sharding import config, logs
from sharding.store import FEED_BATCH
from sharding.topology import REDIS_ERRORS
from workers import tasks
from workers.delivery import Sender


class Feeder(BaseProcess):
    """Huey consumer process that feeds due timers onto the shard's queue.

    Args:
        store: ``sharding.store.TimerStore``.
        index: the shard whose due index and queue this feeder serves.
        tick_s: seconds between feeds.
        visibility_ms: how long a fed timer stays hidden from other feeds.
        spread: consumers serving the shard's queue (each feed gives each
            a share of the due timers, see ``TimerStore.feed``).
    """

    process_name = "Feeder"

    def __init__(self, huey, stop_flag, store, index, tick_s, visibility_ms, spread):
        super().__init__(huey, stop_flag)
        self.spread = spread
        self.store = store
        self.index = index
        self.tick_s = tick_s
        self.visibility_ms = visibility_ms
        self.failing = False

    def initialize(self):
        """Log the feeder's settings (Huey's own scheduler line does not apply)."""
        self._logger.info("feeder started", extra={"shard": self.index, "tick_s": self.tick_s,
                                                   "visibility_ms": self.visibility_ms})

    def loop(self, now=None):
        """Feed every due timer (in batches), then sleep until the next tick.

        A failure is logged once until a feed succeeds again: a Redis that
        is loading its AOF or down would otherwise log one line per tick.
        """
        begun = time.monotonic()
        try:
            while self.store.feed(self.index, self.index, self.visibility_ms, self.spread) == FEED_BATCH:
                if self.stop_flag.is_set():
                    break
            if self.failing:
                self._logger.info("feeding again", extra={"shard": self.index})
                self.failing = False
        except REDIS_ERRORS as exc:
            if not self.failing:
                self._logger.warning("feeding failed", extra={"error": str(exc)})
            self.failing = True
        self.sleep_for_interval(begun, self.tick_s)


class DispatchWorker(Worker):
    """Huey worker thread that takes a message off the queue only when the consumer has room.

    A consumer whose senders are all held by slow receivers so leaves the
    shard's messages to the other consumers of its pool
    (``workers.tasks.Dispatcher.wait_for_room``).
    """

    process_name = "Worker"

    def __init__(self, huey, stop_flag, dispatcher, **options):
        super().__init__(huey, stop_flag, **options)
        self.dispatcher = dispatcher

    def loop(self, now=None):
        """Huey's loop (take a message, run it) once there is room; else return within 1 s."""
        if self.dispatcher.wait_for_room(1.0):
            super().loop(now)


class TimerConsumer(Consumer):
    """Huey ``Consumer`` whose scheduler process is a :class:`Feeder` and whose
    worker thread is a :class:`DispatchWorker` feeding ``dispatcher``."""

    def __init__(self, huey, feeder_options, dispatcher, **options):
        self.feeder_options = feeder_options
        self.dispatcher = dispatcher
        super().__init__(huey, **options)

    def _create_worker(self):
        # Huey documents overriding _create_worker and _create_scheduler.
        return DispatchWorker(huey=self.huey, stop_flag=self.stop_flag, dispatcher=self.dispatcher,
                              default_delay=self.default_delay, max_delay=self.max_delay,
                              backoff=self.backoff, max_tasks=self.max_tasks)

    def _create_scheduler(self):
        # Huey documents overriding _create_scheduler for custom schedulers.
        return Feeder(self.huey, self.stop_flag, **self.feeder_options)

    def _join_workers(self):
        # Huey's graceful stop joins its threads (which take no more messages),
        # then the dispatcher's sends in flight get what is left of the timeout.
        # What the dispatcher could not finish it logs itself; Huey's "shutdown
        # timeout elapsed" stays for its own threads.
        began = time.monotonic()
        joined = super()._join_workers()
        left = self.shutdown_timeout - (time.monotonic() - began)
        if not self.dispatcher.close(max(left, 0.0)):
            self._logger.warning("deliveries left to recovery at shutdown: cut off, or their outcomes "
                                 "not recorded (their leases bring them back)")
        return joined


def _open_shard(store, index):
    """``store.shard(index)``, retried with backoff while Redis does not answer (on a
    cluster the shard's tag is read from it; one server needs no round trip)."""
    delay = 0.05
    while True:
        try:
            return store.shard(index)
        except REDIS_ERRORS as exc:
            logging.getLogger("workers.consumer").info("waiting for redis", extra={"error": str(exc)})
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def main(argv=None):
    """Entry point: ``python -m workers.consumer SHARD``."""
    argv = sys.argv[1:] if argv is None else argv
    index = int(argv[0])
    logs.setup(f"consumer-{index}")
    # Huey logs every task at INFO; our "delivery attempt" line says more.
    logging.getLogger("huey").setLevel(logging.WARNING)
    logging.getLogger("huey.consumer").setLevel(logging.INFO)
    # Huey's start-up line about its own scheduler does not apply: the feeder logs its tick.
    logging.getLogger("huey.consumer").addFilter(
        lambda record: not str(record.msg).startswith("Scheduler runs every"))
    settings = config.load()
    store = settings.store()
    shard = _open_shard(store, index)
    sender = Sender(settings.webhook_timeout_seconds, settings.webhook_deny_networks,
                    settings.webhook_secrets)
    dispatcher = tasks.Dispatcher(store, sender, settings, settings.consumer_threads).start()
    tasks.register(shard.huey, dispatcher, index)
    consumer = TimerConsumer(
        shard.huey,
        dispatcher=dispatcher,
        feeder_options={"store": store, "index": index, "tick_s": settings.scheduler_tick_seconds,
                        "visibility_ms": int(settings.visibility_seconds * 1000),
                        "spread": settings.workers_per_shard},
        workers=1,
        worker_type="thread",
        periodic=False,
        check_worker_health=True,
        health_check_interval=1,
        # After a Redis outage, poll again within a second (Huey's default: 10 s).
        max_delay=1.0,
        graceful_signal="TERM",
        shutdown_timeout=settings.shutdown_seconds,
    )
    consumer.run()


if __name__ == "__main__":
    main()
