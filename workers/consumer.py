"""One Huey consumer of one shard's queue.

Run: ``python -m workers.consumer <shard index>``. The pool supervisor
(``workers.pool``) starts ``TIMER_WORKERS_PER_SHARD`` of these per shard.

Each consumer runs ``TIMER_CONSUMER_THREADS`` worker threads (webhooks are
I/O-bound) and its own scheduler. Huey's scheduler wakes once a second at
most; ours wakes every ``TIMER_SCHEDULER_TICK_SECONDS`` (default 0.1 s) so a
webhook leaves well within a second of its fire time. Several schedulers on
one schedule are safe: Huey pops due entries with an atomic Lua script.

SIGTERM and SIGINT stop gracefully: in-flight deliveries get
``TIMER_SHUTDOWN_SECONDS`` to finish; anything cut off is recovered through
its lease by the coordinator.
"""

import logging
import sys

from huey.consumer import Consumer, Scheduler

from sharding import config, logs
from sharding.store import TimerStore
from workers import tasks
from workers.delivery import Sender


class FineTickScheduler(Scheduler):
    """Huey's scheduler with a sub-second interval (Huey clamps to >= 1 s)."""

    def __init__(self, huey, stop_flag, interval, periodic, tick_s):
        super().__init__(huey, stop_flag, interval, periodic)
        self.interval = tick_s


class TimerConsumer(Consumer):
    """Huey ``Consumer`` whose scheduler ticks every ``tick_s`` seconds."""

    def __init__(self, huey, tick_s, **options):
        self.tick_s = tick_s
        super().__init__(huey, **options)

    def _create_scheduler(self):
        # Huey documents overriding _create_scheduler for custom schedulers.
        return FineTickScheduler(self.huey, self.stop_flag, self.scheduler_interval,
                                 self.periodic, self.tick_s)


def main(argv=None):
    """Entry point: ``python -m workers.consumer SHARD``."""
    argv = sys.argv[1:] if argv is None else argv
    index = int(argv[0])
    logs.setup(f"consumer-{index}")
    # Huey logs every task at INFO; our "delivery attempt" line says more.
    logging.getLogger("huey").setLevel(logging.WARNING)
    logging.getLogger("huey.consumer").setLevel(logging.INFO)
    settings = config.load()
    store = TimerStore(settings.effective_redis_url())
    shard = store.shard(index)
    tasks.register(shard.huey, store, Sender(settings.webhook_timeout_seconds), settings, index)
    consumer = TimerConsumer(
        shard.huey,
        tick_s=settings.scheduler_tick_seconds,
        workers=settings.consumer_threads,
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
