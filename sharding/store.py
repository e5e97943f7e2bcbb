"""The timer store: timer records in Redis, the single source of truth.

Layout, per shard ``i`` (every key carries the hash tag ``{timers-i}``, so a
shard's keys share one Redis Cluster slot and one Lua script may touch them):

* ``t:{timers-i}:<id>`` hash, the timer record. Short field names keep a
  million pending timers small: ``u`` url, ``f`` fire time, ``s`` status,
  ``a`` attempts, ``c`` created, ``d`` due time of the next attempt (absent:
  the fire time), ``l`` lease end, ``e`` last error, ``x`` finished. Times
  are epoch milliseconds from the Redis clock (``TIME``). Finished records
  (fired, failed, cancelled) expire after the retention period.
* ``due:{timers-i}`` sorted set: every pending timer (``scheduled`` or
  ``retrying``) scored by when it is next to be put on a queue: its due time,
  or, once a feeder has put it on a queue, that moment plus the visibility
  timeout. This is the due-time index; no Huey schedule is used.
* ``lease:{timers-i}`` sorted set: ``firing`` timers scored by lease end.
* ``huey.redis.{timers-i}``: the shard's Huey queue (a list of messages).

Control keys (on the ``REDIS_URL`` server): ``timers:seq`` (the id counter)
and ``timers:shards`` (every shard index ever configured).

A timer id is ``seq * 1000 + home shard``: the shard holding its record is
``id % 1000``, derivable without a lookup table; ids grow with ``seq``.
"""

import dataclasses
import threading

import redis

from sharding import queues

SHARD_ID_BASE = 1000
FEED_BATCH = 500
SEQ_KEY = "timers:seq"
SHARDS_KEY = "timers:shards"

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: record, due. ARGV: id, url, delay ms. Returns {fire, now}.
_CREATE = _NOW_MS + """
local fire = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'u', ARGV[2], 'f', fire, 's', 'scheduled', 'a', 0, 'c', now)
redis.call('ZADD', KEYS[2], fire, ARGV[1])
return {fire, now}
"""

# KEYS: due. ARGV: limit, visibility ms. Takes up to limit due timers and
# hides them for the visibility timeout (a claim removes them for good; if
# their message is lost they come due again). Returns their ids.
_FEED = _NOW_MS + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local hide = now + tonumber(ARGV[2])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', hide, id) end
return ids
"""

# KEYS: record, due, leases. ARGV: id, lease ms, early tolerance ms.
# Returns {status} when not claimable, {'early', due} when not yet due,
# {'firing', attempts, url, fire, now} when claimed.
_CLAIM = _NOW_MS + """
local r = redis.call('HMGET', KEYS[1], 's', 'd', 'f', 'u')
if r[1] ~= 'scheduled' and r[1] ~= 'retrying' then return {r[1] or 'missing'} end
local due = tonumber(r[2] or r[3])
if due > now + tonumber(ARGV[3]) then
  -- A stale message: the feed that sent it hid the timer; show it again at its due time.
  redis.call('ZADD', KEYS[2], 'XX', due, ARGV[1])
  return {'early', due}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'a', 1)
local lease = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 's', 'firing', 'l', lease)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], lease, ARGV[1])
return {'firing', attempts, r[4], r[3], now}
"""

# KEYS: record, due, leases. ARGV: id, attempt, new status, last error,
# delay ms until the next attempt (retrying), retention ms (final statuses).
# Applies only while the attempt number still matches (a fencing token): a
# late worker whose lease expired and whose timer was claimed again changes
# nothing. A late success is still taken while no newer attempt has begun.
# Returns {applied, next attempt ms}.
_FINISH = _NOW_MS + """
local r = redis.call('HMGET', KEYS[1], 's', 'a')
if r[2] ~= ARGV[2] then return {0, 0} end
if r[1] ~= 'firing' and not (ARGV[3] == 'fired' and (r[1] == 'scheduled' or r[1] == 'retrying')) then
  return {0, 0}
end
local next = now + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 's', ARGV[3], 'e', ARGV[4])
redis.call('HDEL', KEYS[1], 'l')
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[3] == 'retrying' then
  redis.call('HSET', KEYS[1], 'd', next)
  redis.call('ZADD', KEYS[2], next, ARGV[1])
else
  redis.call('HSET', KEYS[1], 'x', now)
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
return {1, next}
"""

# KEYS: record, due, leases. ARGV: id, max attempts, retention ms.
# A firing timer whose lease has run out goes back to retrying (due now), or
# to failed when that was its last attempt. Returns the new status or false.
_EXPIRE_LEASE = _NOW_MS + """
local r = redis.call('HMGET', KEYS[1], 's', 'l', 'a')
if r[1] ~= 'firing' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return false
end
if tonumber(r[2] or 0) > now then return false end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[1], 'l')
if tonumber(r[3]) >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 's', 'failed', 'x', now, 'e', 'lease expired on the last attempt')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 'failed'
end
redis.call('HSET', KEYS[1], 's', 'retrying', 'd', now, 'e', 'lease expired (delivery cut off)')
redis.call('ZADD', KEYS[2], now, ARGV[1])
return 'retrying'
"""


def home_shard(timer_id):
    """Index of the shard that holds ``timer_id``'s record (``id % 1000``)."""
    return timer_id % SHARD_ID_BASE


def now_ms(client):
    """The Redis server clock of ``client`` in epoch milliseconds."""
    secs, micros = client.time()
    return secs * 1000 + micros // 1000


@dataclasses.dataclass
class Claim:
    """Outcome of :meth:`TimerStore.claim`.

    ``status`` is ``firing`` when this caller now owns the delivery attempt
    number ``attempt``; ``early`` when the timer is not due until ``due_ms``;
    else the timer's current status (``missing`` if there is no record).
    Times are epoch milliseconds.
    """

    status: str
    attempt: int = 0
    url: str = ""
    fire_at_ms: int = 0
    now_ms: int = 0
    due_ms: int = 0


class Shard:
    """One shard: its own Redis connection pool, Huey queue, keys and scripts."""

    def __init__(self, index, url):
        self.index = index
        self.pool = redis.ConnectionPool.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.redis = redis.Redis(connection_pool=self.pool)
        self.huey = queues.make_huey(index, self.pool)
        tag = queues.storage_name(index)
        self.due_key = f"due:{tag}"
        self.leases_key = f"lease:{tag}"
        self.queue_key = self.huey.storage.queue_key
        self._record_prefix = f"t:{tag}:"
        self.create = self.redis.register_script(_CREATE)
        self.feed = self.redis.register_script(_FEED)
        self.claim = self.redis.register_script(_CLAIM)
        self.finish = self.redis.register_script(_FINISH)
        self.expire_lease = self.redis.register_script(_EXPIRE_LEASE)

    def record_key(self, timer_id):
        """Redis key of ``timer_id``'s record on this shard."""
        return self._record_prefix + str(timer_id)

    def timer_keys(self, timer_id):
        """[record, due index, lease index] keys, the KEYS of most scripts."""
        return [self.record_key(timer_id), self.due_key, self.leases_key]


class TimerStore:
    """Timer records across shards.

    Args:
        url: Redis URL of every shard and of the control keys (one server
            today; each shard still gets a connection pool of its own).
        retention_s: seconds a finished timer stays readable.
    Errors from Redis propagate as ``redis.exceptions.RedisError``.
    """

    def __init__(self, url, retention_s=7 * 86400):
        self.url = url
        self.retention_ms = int(retention_s * 1000)
        self.control = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._shards = {}
        self._lock = threading.Lock()

    def shard(self, index):
        """The :class:`Shard` ``index`` (created on first use; also for retired shards)."""
        shard = self._shards.get(index)
        if shard is None:
            with self._lock:
                shard = self._shards.setdefault(index, Shard(index, self.url))
        return shard

    def _home(self, timer_id):
        return self.shard(home_shard(timer_id))

    def register_shards(self, count):
        """Record shard indexes ``0..count-1`` as known, for recovery after a shrink."""
        self.control.sadd(SHARDS_KEY, *range(count))

    def known_shards(self, count):
        """Sorted indexes of every shard ever registered, plus ``0..count-1``."""
        known = {int(i) for i in self.control.smembers(SHARDS_KEY)}
        return sorted(known | set(range(count)))

    def create(self, url, delay_ms, shard_index):
        """Store a new pending timer on shard ``shard_index``, atomically with its due entry.

        Args:
            url: webhook base URL (already validated).
            delay_ms: milliseconds from now (Redis clock) to the fire time.
            shard_index: the shard that will hold and fire it.
        Returns:
            (timer id, record dict as :meth:`get` returns it, now epoch ms).
        """
        timer_id = self.control.incr(SEQ_KEY) * SHARD_ID_BASE + shard_index
        shard = self.shard(shard_index)
        fire_ms, created_ms = shard.create(keys=[shard.record_key(timer_id), shard.due_key],
                                           args=[timer_id, url, delay_ms])
        record = {"url": url, "fire_at": fire_ms, "status": "scheduled", "attempts": 0,
                  "last_error": None}
        return timer_id, record, created_ms

    def get(self, timer_id):
        """Read a timer.

        Returns:
            (record, now epoch ms), the record a dict with ``url``, ``fire_at``
            (epoch ms), ``status``, ``attempts`` and ``last_error`` (None when
            empty); ``(None, now)`` when there is no such timer.
        """
        shard = self._home(timer_id)
        pipe = shard.redis.pipeline(transaction=False)
        pipe.hmget(shard.record_key(timer_id), "u", "f", "s", "a", "e")
        pipe.time()
        (url, fire, status, attempts, error), (secs, micros) = pipe.execute()
        now = secs * 1000 + micros // 1000
        if status is None:
            return None, now
        return {"url": url.decode(), "fire_at": int(fire), "status": status.decode(),
                "attempts": int(attempts), "last_error": error.decode() if error else None}, now

    def feed(self, due_index, queue_index, visibility_ms, limit=FEED_BATCH):
        """Move up to ``limit`` due timers of shard ``due_index`` onto ``queue_index``'s queue.

        The timers stay in the due index, hidden for ``visibility_ms``: a claim
        removes them; a lost message makes them due again.
        Returns:
            the number of timers put on the queue.
        """
        ids = self.shard(due_index).feed(keys=[self.shard(due_index).due_key],
                                         args=[limit, visibility_ms])
        if ids:
            queue = self.shard(queue_index)
            queue.redis.lpush(queue.queue_key, *(queues.message_for(int(i)) for i in ids))
        return len(ids)

    def claim(self, timer_id, lease_ms, early_ms=50):
        """Claim a due timer for one delivery attempt (scheduled/retrying → firing).

        Args:
            lease_ms: how long the claim holds before recovery may take it back.
            early_ms: how far before its due time a timer may still be claimed.
        Returns:
            :class:`Claim`.
        """
        shard = self._home(timer_id)
        res = shard.claim(keys=shard.timer_keys(timer_id), args=[timer_id, lease_ms, early_ms])
        status = res[0].decode()
        if status == "early":
            return Claim(status, due_ms=int(res[1]))
        if status != "firing":
            return Claim(status)
        return Claim(status, attempt=int(res[1]), url=res[2].decode(),
                     fire_at_ms=int(res[3]), now_ms=int(res[4]))

    def finish(self, timer_id, attempt, status, last_error="", retry_delay_ms=0):
        """Record the outcome of delivery attempt ``attempt``.

        Args:
            status: ``fired``, ``failed`` or ``retrying``.
            last_error: short text such as ``HTTP 503`` (empty on success).
            retry_delay_ms: milliseconds from now (Redis clock) to the next
                attempt (``retrying`` only).
        Returns:
            (applied, next attempt epoch ms); applied is False when the attempt
            no longer owns the timer.
        """
        shard = self._home(timer_id)
        applied, next_ms = shard.finish(
            keys=shard.timer_keys(timer_id),
            args=[timer_id, attempt, status, last_error, int(retry_delay_ms), self.retention_ms])
        return bool(applied), int(next_ms)

    def expire_lease(self, timer_id, max_attempts):
        """Take back a ``firing`` timer whose lease ran out.

        Returns:
            ``"retrying"``, ``"failed"``, or None when the lease still holds
            or the timer is no longer firing.
        """
        shard = self._home(timer_id)
        res = shard.expire_lease(keys=shard.timer_keys(timer_id),
                                 args=[timer_id, max_attempts, self.retention_ms])
        return res.decode() if res else None

    def depths(self, indexes):
        """Per shard in ``indexes``: (scheduled, queued, in_flight) counts.

        ``scheduled`` counts pending timers (including those on the queue),
        ``queued`` the messages on the Huey queue, ``in_flight`` the leases.
        One pipelined round trip per connection.
        """
        result = []
        for index in indexes:
            shard = self.shard(index)
            pipe = shard.redis.pipeline(transaction=False)
            pipe.zcard(shard.due_key)
            pipe.llen(shard.queue_key)
            pipe.zcard(shard.leases_key)
            result.append(tuple(pipe.execute()))
        return result

    def loads(self, indexes):
        """Per shard in ``indexes``: (scheduled, in_flight), whose sum is its depth."""
        return [(scheduled, in_flight) for scheduled, _, in_flight in self.depths(indexes)]
