"""Lateness with Huey's one-second tick versus the feeder's 0.1 s tick, side by side.

Run: ``.venv/bin/python -m bench.tick`` (about two minutes). For each tick it
starts a real Redis, the service with ``TIMER_SCHEDULER_TICK_SECONDS`` set, and
the fast receiver, creates timers through the API at 200/s for 10 s, three
times, and prints the lateness (arrival - fire time, seconds) of each run as
JSON.
"""

import json
import sys
import tempfile

from bench.fast_receiver import FastReceiver
from bench.run import consumers_started, lateness_run
from tests.harness import RedisServer, Service, wait_until

TICKS_S = ("1.0", "0.1")
RATE = 200
DURATION_S = 10
RUNS = 3


def measure(tick):
    """Three lateness runs with ``TIMER_SCHEDULER_TICK_SECONDS=tick``; returns their summaries."""
    data_dir = tempfile.mkdtemp(prefix="tick", dir="/tmp")
    redis_server = RedisServer(data_dir)
    redis_server.start()
    receiver = FastReceiver(data_dir, processes=1).start()
    service = Service(redis_server.url, data_dir, {"TIMER_SCHEDULER_TICK_SECONDS": tick}).start()
    try:
        wait_until(lambda: consumers_started(service) >= 8, timeout=30, message="8 consumers")
        keep = ("p50_s", "p99_s", "max_s", "create_rate", "missing")
        runs = (lateness_run(service.url, receiver, RATE, DURATION_S)[0] for _ in range(RUNS))
        return [{k: summary[k] for k in keep} for summary in runs]
    finally:
        service.stop()
        receiver.stop()
        redis_server.stop()


def main():
    """Print ``{tick: [run summaries]}`` as JSON."""
    json.dump({tick: measure(tick) for tick in TICKS_S}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
