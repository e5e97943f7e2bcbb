"""Least-busy shard choice.

The depth of a shard is scheduled + queued + in flight. Depths come from a
snapshot that is refreshed at most every ``refresh_s`` seconds (one pipelined
read per connection), never per request. Between refreshes each choice
counts itself into the snapshot, and ties rotate, so a burst spreads evenly.
One caller at a time refreshes the snapshot, outside the lock: the others
choose from the one they have meanwhile, so a server that hangs (a master
stopped, not down) delays only the refresh, never the creates on the other
shards.

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
        self._refreshing = False
        self._down_until = {}
        # Processes start their rotation at different places so that several
        # gunicorn workers do not all send their first timer to shard 0.
        self._turn = os.getpid()
        self._lock = threading.Lock()

    def choose(self):
        """Index of the least-busy available shard; counts the new timer into the snapshot.

        Raises:
            NoShardAvailable: no shard is available.
            REDIS_ERRORS, or what ``read_depths`` raised: the first snapshot could not be read.
        """
        now = self._clock()
        if self._depths is not None and now - self._read_at >= self._refresh_s and self._take_refresh():
            read = None
            try:
                read = self._read_snapshot(now)
            finally:
                with self._lock:
                    self._refreshing = False
                    if read is not None:
                        self._install(read, now)
        with self._lock:
            if self._depths is None:
                # Nothing to choose from yet: the first callers wait for the first read.
                self._install(self._read_snapshot(now), now)
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

    def _take_refresh(self):
        """True for the one caller that is to refresh the stale snapshot now."""
        with self._lock:
            if self._refreshing:
                return False
            self._refreshing = True
            return True

    def _read_snapshot(self, now):
        """(depth per shard or None, the indexes whose read failed), read without the lock."""
        # Shards that are down are not read until their time is up (a dead host
        # may take a connect timeout to refuse).
        wanted = [i for i in range(self._count) if self._down_until.get(i, 0.0) <= now]
        try:
            read = dict(zip(wanted, self._read(wanted), strict=True)) if wanted else {}
        except REDIS_ERRORS:
            read = {i: self._read_one(i) for i in wanted}
        depths = [None if read.get(i) is None else sum(read[i]) for i in range(self._count)]
        return depths, [i for i in wanted if read.get(i) is None]

    def _read_one(self, index):
        try:
            return self._read([index])[0]
        except REDIS_ERRORS:
            return None

    def _install(self, read, now):
        """Make ``read`` (:meth:`_read_snapshot`) the snapshot; its failed shards go down (under the lock)."""
        depths, failed = read
        for index in failed:
            self._down_until[index] = now + self._down_s
        self._depths = depths
        self._read_at = now

    def failed(self, index):
        """Leave shard ``index`` out of choices for ``down_s`` seconds (its create just failed)."""
        with self._lock:
            self._down_until[index] = self._clock() + self._down_s

