"""Least-busy shard choice.

The depth of a shard is scheduled + queued + in flight. Depths come from a
snapshot that is refreshed at most every ``refresh_s`` seconds (one pipelined
read per connection), never per request. Between refreshes each choice
counts itself into the snapshot, and ties rotate, so a burst spreads evenly.
"""

import os
import threading
import time


class LeastBusy:
    """Pick the least-busy of ``count`` shards.

    Args:
        read_depths: callable taking a list of shard indexes and returning, per
            index, a tuple of counts whose sum is the shard's depth.
        count: number N of live shards (indexes ``0..N-1``).
        refresh_s: snapshot age in seconds (monotonic clock) before re-reading.
        clock: monotonic clock in seconds, replaceable in unit tests.
    """

    def __init__(self, read_depths, count, refresh_s=0.25, clock=time.monotonic):
        self._read = read_depths
        self._count = count
        self._refresh_s = refresh_s
        self._clock = clock
        self._depths = None
        self._read_at = 0.0
        # Processes start their rotation at different places so that several
        # gunicorn workers do not all send their first timer to shard 0.
        self._turn = os.getpid()
        self._lock = threading.Lock()

    def choose(self):
        """Index of the least-busy shard; counts the new timer into the snapshot.

        Raises whatever ``read_depths`` raises when a refresh fails.
        """
        with self._lock:
            now = self._clock()
            if self._depths is None or now - self._read_at >= self._refresh_s:
                self._depths = [sum(d) for d in self._read(list(range(self._count)))]
                self._read_at = now
            lowest = min(self._depths)
            ties = [i for i, depth in enumerate(self._depths) if depth == lowest]
            choice = ties[self._turn % len(ties)]
            self._turn += 1
            self._depths[choice] += 1
            return choice
