"""The consumer pool supervisor: one process that keeps every consumer alive.

Run: ``python -m workers.pool`` (the Procfile's ``workers`` process). It starts
``TIMER_WORKERS_PER_SHARD`` consumers (``workers.consumer``) for each of the
``TIMER_SHARDS`` shards and restarts any that exits, so ``kill -9`` of one
consumer neither stops honcho (which ends every process when one exits) nor
leaves a shard without consumers. SIGTERM or SIGINT is passed on to every
consumer, which finish in-flight deliveries within ``TIMER_SHUTDOWN_SECONDS``;
stragglers are killed after one more second.

Consumers are forked from this process, which has already imported
everything, so a restarted consumer is ready in milliseconds. Each runs in a
session of its own (honcho signals the pool's process group; a consumer must
get one SIGTERM, from the pool, not two) and dies with the pool.
"""

import logging
import multiprocessing
import os
import time

from sharding import metrics, process
from workers import consumer

log = logging.getLogger("workers.pool")

RESTART_DELAY_S = 0.5


class Member:
    """One consumer process of the pool (shard ``shard``, slot ``slot``)."""

    def __init__(self, shard, slot):
        self.shard = shard
        self.slot = slot
        self.process = None

    def start(self):
        """Start (or restart) the consumer process."""
        self.process = _FORK.Process(target=_run_consumer, args=(self.shard,),
                                     name=f"consumer-{self.shard}-{self.slot}")
        self.process.start()
        log.info("consumer started", extra={"shard": self.shard, "slot": self.slot,
                                             "consumer_pid": self.process.pid})


_FORK = multiprocessing.get_context("fork")


def _run_consumer(shard):
    os.setsid()
    process.die_with_parent()
    consumer.main([str(shard)])


def main():
    """Entry point: supervise consumers until SIGTERM/SIGINT, then stop them."""
    settings, stop = process.start("pool")
    members = [Member(shard, slot) for shard in range(settings.shards)
               for slot in range(settings.workers_per_shard)]
    for member in members:
        member.start()
    while not stop.wait(RESTART_DELAY_S):
        for member in members:
            code = member.process.exitcode
            if code is not None and not stop.is_set():
                log.warning("consumer exited, restarting", extra={
                    "shard": member.shard, "slot": member.slot, "returncode": code})
                metrics.process_exited(member.process.pid)
                member.start()
    for member in members:
        if member.process.is_alive():
            member.process.terminate()
    deadline = time.monotonic() + settings.shutdown_seconds + 1
    for member in members:
        member.process.join(max(deadline - time.monotonic(), 0))
        if member.process.is_alive():
            member.process.kill()
            member.process.join()
    log.info("pool stopped")


if __name__ == "__main__":
    main()
