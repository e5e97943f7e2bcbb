"""The timer store: timer records in Redis, the single source of truth.

Layout, per shard ``i`` (every key carries the hash tag ``{timers-i}``, so a
shard's keys share one Redis Cluster slot and one Lua script may touch them):

* ``timer:{timers-i}:<id>`` hash: ``url``, ``fire_at`` (epoch ms), ``status``,
  ``attempts``, ``queue`` (shard whose queue holds it), ``created_at``,
  ``updated_at``, ``lease_until``, ``next_attempt_at``, ``fired_at`` (epoch ms),
  ``last_error``.
* ``timers:due:{timers-i}`` sorted set: pending timers (``scheduled`` and
  ``retrying``) scored by the epoch ms of their next delivery attempt. This
  is the due-time index recovery reads without scanning the keyspace.
* ``timers:leases:{timers-i}`` sorted set: ``firing`` timers scored by the
  epoch ms their lease ends.

Control keys (one Redis, the ``REDIS_URL`` one): ``timers:seq`` (the id
counter) and ``timers:shards`` (every shard index ever configured).

A timer id is ``seq * 1000 + home shard``: the shard holding its record is
``id % 1000``, derivable without a lookup table; ids grow with ``seq``.
All times come from the Redis server clock (``TIME``).
"""

import dataclasses
import threading

import redis

from sharding import queues

SHARD_ID_BASE = 1000
PENDING = ("scheduled", "retrying")
FINAL = ("fired", "failed", "cancelled")

SEQ_KEY = "timers:seq"
SHARDS_KEY = "timers:shards"

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: record, due, schedule. ARGV: id, url, delay ms, message, queue shard.
_CREATE = _NOW_MS + """
local fire = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'url', ARGV[2], 'fire_at', fire, 'status', 'scheduled',
  'attempts', 0, 'queue', ARGV[5], 'created_at', now, 'updated_at', now)
redis.call('ZADD', KEYS[2], fire, ARGV[1])
redis.call('ZADD', KEYS[3], fire / 1000, ARGV[4])
return {fire, now}
"""

# KEYS: record, due, leases. ARGV: id, lease ms, early tolerance ms.
# Returns {status} when not claimable, {'early', due} when woken too soon,
# {'firing', attempts, url, fire_at, now} when claimed.
_CLAIM = _NOW_MS + """
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'scheduled' and st ~= 'retrying' then return {st or 'missing'} end
local due = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or now)
if due > now + tonumber(ARGV[3]) then return {'early', due} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local lease = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'firing', 'lease_until', lease, 'updated_at', now)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], lease, ARGV[1])
local r = redis.call('HMGET', KEYS[1], 'url', 'fire_at')
return {'firing', attempts, r[1], r[2], now}
"""

# KEYS: record, due, leases. ARGV: id, attempt, new status, last error,
# delay ms until the next attempt (retrying only). Returns {applied, next}.
# Applies only while the attempt number still matches (a fencing token): a
# late worker whose lease expired and whose timer was claimed again changes
# nothing. A late success is still taken while no newer attempt has begun.
_FINISH = _NOW_MS + """
local r = redis.call('HMGET', KEYS[1], 'status', 'attempts')
if r[2] ~= ARGV[2] then return {0, 0} end
if r[1] ~= 'firing' and not (ARGV[3] == 'fired' and (r[1] == 'scheduled' or r[1] == 'retrying')) then
  return {0, 0}
end
local next = now + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'updated_at', now, 'last_error', ARGV[4])
redis.call('HDEL', KEYS[1], 'lease_until')
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[3] == 'fired' then redis.call('HSET', KEYS[1], 'fired_at', now) end
if ARGV[3] == 'retrying' then
  redis.call('HSET', KEYS[1], 'next_attempt_at', next)
  redis.call('ZADD', KEYS[2], next, ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return {1, next}
"""

# KEYS: record, due, leases. ARGV: id, max attempts.
# A firing timer whose lease has run out goes back to retrying (due now), or
# to failed when that was its last attempt. Returns the new status or false.
_EXPIRE_LEASE = _NOW_MS + """
local r = redis.call('HMGET', KEYS[1], 'status', 'lease_until', 'attempts')
if r[1] ~= 'firing' or tonumber(r[2] or 0) > now then
  if r[1] ~= 'firing' then redis.call('ZREM', KEYS[3], ARGV[1]) end
  return false
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[1], 'lease_until')
if tonumber(r[3]) >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'updated_at', now,
    'last_error', 'lease expired on the last attempt')
  return 'failed'
end
redis.call('HSET', KEYS[1], 'status', 'retrying', 'updated_at', now,
  'next_attempt_at', now, 'last_error', 'lease expired (delivery cut off)')
redis.call('ZADD', KEYS[2], now, ARGV[1])
return 'retrying'
"""

# KEYS: record. ARGV: queue shard. Moves a pending timer to another queue.
_MOVE = """
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'scheduled' and st ~= 'retrying' then return 0 end
redis.call('HSET', KEYS[1], 'queue', ARGV[1])
return 1
"""


def home_shard(timer_id):
    """Index of the shard that holds ``timer_id``'s record (``id % 1000``)."""
    return timer_id % SHARD_ID_BASE


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
    """One shard: its own Redis connection pool, Huey queue and keys."""

    def __init__(self, index, url):
        self.index = index
        self.pool = redis.ConnectionPool.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.redis = redis.Redis(connection_pool=self.pool)
        self.huey = queues.make_huey(index, self.pool)
        tag = queues.storage_name(index)
        self.due_key = f"timers:due:{tag}"
        self.leases_key = f"timers:leases:{tag}"
        self.schedule_key = self.huey.storage.schedule_key
        self.queue_key = self.huey.storage.queue_key
        self._record_prefix = f"timer:{tag}:"
        self.create = self.redis.register_script(_CREATE)
        self.claim = self.redis.register_script(_CLAIM)
        self.finish = self.redis.register_script(_FINISH)
        self.expire_lease = self.redis.register_script(_EXPIRE_LEASE)
        self.move = self.redis.register_script(_MOVE)

    def record_key(self, timer_id):
        """Redis key of ``timer_id``'s record on this shard."""
        return self._record_prefix + str(timer_id)


class TimerStore:
    """Timer records across shards.

    Args:
        url: Redis URL of every shard and of the control keys (one server
            today; each shard still gets a connection pool of its own).
    Errors from Redis propagate as ``redis.exceptions.RedisError``.
    """

    def __init__(self, url):
        self.url = url
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

    def register_shards(self, count):
        """Record shard indexes ``0..count-1`` as known, for recovery after a shrink."""
        self.control.sadd(SHARDS_KEY, *range(count))

    def known_shards(self, count):
        """Sorted indexes of every shard ever registered, plus ``0..count-1``."""
        known = {int(i) for i in self.control.smembers(SHARDS_KEY)}
        return sorted(known | set(range(count)))

    def create(self, url, delay_ms, queue_shard):
        """Store a new timer and put it on ``queue_shard``'s schedule, atomically.

        Args:
            url: webhook base URL (already validated).
            delay_ms: milliseconds from now (Redis clock) to the fire time.
            queue_shard: index of the shard that will hold and fire it.
        Returns:
            (timer id, record dict, now epoch ms).
        """
        seq = self.control.incr(SEQ_KEY)
        timer_id = seq * SHARD_ID_BASE + queue_shard
        shard = self.shard(queue_shard)
        fire_ms, now_ms = shard.create(
            keys=[shard.record_key(timer_id), shard.due_key, shard.schedule_key],
            args=[timer_id, url, delay_ms, queues.message_for(timer_id), queue_shard],
        )
        record = {"url": url, "fire_at": fire_ms, "status": "scheduled", "attempts": 0,
                  "last_error": None}
        return timer_id, record, now_ms

    def get(self, timer_id):
        """Read a timer.

        Returns:
            (record dict with ``fire_at`` and ``attempts`` as int, now epoch ms),
            or ``(None, now)`` when there is no such timer.
        """
        shard = self.shard(home_shard(timer_id))
        pipe = shard.redis.pipeline(transaction=False)
        pipe.hgetall(shard.record_key(timer_id))
        pipe.time()
        raw, (secs, micros) = pipe.execute()
        now_ms = secs * 1000 + micros // 1000
        if not raw:
            return None, now_ms
        record = {k.decode(): v.decode() for k, v in raw.items()}
        record["fire_at"] = int(record["fire_at"])
        record["attempts"] = int(record.get("attempts", 0))
        record["last_error"] = record.get("last_error") or None
        return record, now_ms

    def claim(self, timer_id, lease_ms, early_ms=50):
        """Claim a due timer for one delivery attempt (scheduled/retrying → firing).

        Args:
            lease_ms: how long the claim holds before recovery may take it back.
            early_ms: how far before its due time a timer may still be claimed.
        Returns:
            :class:`Claim`.
        """
        shard = self.shard(home_shard(timer_id))
        res = shard.claim(keys=[shard.record_key(timer_id), shard.due_key, shard.leases_key],
                          args=[timer_id, lease_ms, early_ms])
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
        shard = self.shard(home_shard(timer_id))
        applied, next_ms = shard.finish(
            keys=[shard.record_key(timer_id), shard.due_key, shard.leases_key],
            args=[timer_id, attempt, status, last_error, int(retry_delay_ms)])
        return bool(applied), int(next_ms)

    def expire_lease(self, timer_id, max_attempts):
        """Take back a ``firing`` timer whose lease ran out.

        Returns:
            ``"retrying"``, ``"failed"``, or None when the lease still holds
            or the timer is no longer firing.
        """
        shard = self.shard(home_shard(timer_id))
        res = shard.expire_lease(keys=[shard.record_key(timer_id), shard.due_key, shard.leases_key],
                                 args=[timer_id, max_attempts])
        return res.decode() if res else None

    def schedule(self, timer_id, queue_shard, at_s):
        """Put a pending timer on ``queue_shard``'s schedule at epoch seconds ``at_s``.

        Idempotent: a timer is at most once in one schedule.
        Returns:
            True when queued; False when the timer is no longer pending.
        """
        home = self.shard(home_shard(timer_id))
        if not home.move(keys=[home.record_key(timer_id)], args=[queue_shard]):
            return False
        target = self.shard(queue_shard)
        target.redis.zadd(target.schedule_key, {queues.message_for(timer_id): at_s})
        return True

    def depths(self, indexes):
        """Per shard in ``indexes``: (scheduled, queued, in_flight) counts.

        One pipelined round trip per connection.
        """
        result = []
        for index in indexes:
            shard = self.shard(index)
            pipe = shard.redis.pipeline(transaction=False)
            pipe.zcard(shard.schedule_key)
            pipe.llen(shard.queue_key)
            pipe.zcard(shard.leases_key)
            result.append(tuple(pipe.execute()))
        return result
