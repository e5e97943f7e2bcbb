"""Least-busy shard choice.

The depth of a shard is scheduled + queued + in flight. Depths come from a
snapshot that is refreshed at most every ``refresh_s`` seconds (one pipelined
read per connection), never per request. Between refreshes each choice
counts itself into the snapshot, and ties rotate, so a burst spreads evenly.

A shard whose depth could not be read, or whose create just failed
(:meth:`LeastBusy.failed`), is skipped for ``down_s`` seconds: while one
master of a Redis Cluster is down, creates go to the shards on the others.
"""

import os
import threading
import time

from sharding.topology import REDIS_ERRORS


class NoShardAvailable(Exception):
    """Every shard is down or was refused a moment ago (the API answers 503)."""


class LeastBusy:
    """Pick the least-busy of ``count`` shards.

    Args:
        read_depths: callable taking a list of shard indexes and returning, per
            index, a tuple of counts whose sum is the shard's depth. When it
            fails with ``sharding.topology.REDIS_ERRORS`` the shards are read
            one by one, so that only those whose server fails are skipped.
        count: number N of live shards (indexes ``0..N-1``).
        refresh_s: snapshot age in seconds (monotonic clock) before re-reading.
        down_s: seconds a shard that failed is left out of choices.
        clock: monotonic clock in seconds, replaceable in unit tests.
    """

    def __init__(self, read_depths, count, refresh_s=0.25, down_s=1.0, clock=time.monotonic):
        self._read = read_depths
        self._count = count
        self._refresh_s = refresh_s
        self._down_s = down_s
        self._clock = clock
        self._depths = None
        self._read_at = 0.0
        self._down_until = {}
        # Processes start their rotation at different places so that several
        # gunicorn workers do not all send their first timer to shard 0.
        self._turn = os.getpid()
        self._lock = threading.Lock()

    def choose(self):
        """Index of the least-busy available shard; counts the new timer into the snapshot.

        Raises:
            NoShardAvailable: no shard is available.
        """
        with self._lock:
            now = self._clock()
            if self._depths is None or now - self._read_at >= self._refresh_s:
                self._refresh(now)
            # The lowest depth and its ties in one pass: this runs on every create.
            depths, down = self._depths, self._down_until
            lowest, ties = None, []
            for i, depth in enumerate(depths):
                if depth is None or (down and down.get(i, 0.0) > now):
                    continue
                if lowest is None or depth < lowest:
                    lowest, ties = depth, [i]
                elif depth == lowest:
                    ties.append(i)
            if not ties:
                raise NoShardAvailable("no shard's Redis answered a moment ago")
            choice = ties[self._turn % len(ties)]
            self._turn += 1
            depths[choice] += 1
            return choice

    def _refresh(self, now):
        # Shards that are down are not read until their time is up (a dead host
        # may take a connect timeout to refuse).
        wanted = [i for i in range(self._count) if self._down_until.get(i, 0.0) <= now]
        try:
            read = dict(zip(wanted, self._read(wanted), strict=True)) if wanted else {}
        except REDIS_ERRORS:
            read = {i: self._read_one(i, now) for i in wanted}
        self._depths = [None if read.get(i) is None else sum(read[i]) for i in range(self._count)]
        self._read_at = now

    def _read_one(self, index, now):
        try:
            return self._read([index])[0]
        except REDIS_ERRORS:
            self._down_until[index] = now + self._down_s
            return None

    def failed(self, index):
        """Leave shard ``index`` out of choices for ``down_s`` seconds (its create just failed)."""
        with self._lock:
            self._down_until[index] = self._clock() + self._down_s

