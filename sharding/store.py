"""The timer store: timer records in Redis, the single source of truth.

Layout, per shard ``i`` (every key carries the hash tag ``{ti}``, so a
shard's keys share one Redis Cluster slot and one Lua script may touch them):

* ``t:{ti}:<id>`` hash, the timer record. Short field names keep a
  million pending timers small: ``u`` url, ``f`` fire time, ``s`` status,
  ``a`` attempts (absent until the first claim), ``r`` request id, ``d`` due time of the next attempt
  (absent: the fire time), ``l`` lease end, ``e`` last error, ``x`` finished.
  Written only when needed, so a timer that uses none costs nothing: the
  payload, ``b`` body, ``c`` content type, ``h`` headers (compact JSON
  object); ``m`` and ``w`` the timer's own attempt limit and retry window in
  seconds (its ``retry`` object), ``p`` the start of the first attempt (set at
  the first retry), ``k`` the attempts made before its last re-drive.
  Times are epoch milliseconds from the Redis clock (``TIME``). Finished
  records (fired, failed, cancelled) expire after the retention period.
* ``due:{ti}`` sorted set: every pending timer (``scheduled`` or
  ``retrying``) scored by when it is next to be put on a queue: its due time,
  or, once a feeder has put it on a queue, that moment plus the visibility
  timeout. This is the due-time index; no Huey schedule is used.
* ``lease:{ti}`` sorted set: ``firing`` timers scored by lease end.
* ``retry:{ti}`` sorted set: ``retrying`` timers by next attempt time.
* ``done:{ti}:<status>`` sorted sets, for ``fired``, ``failed`` and
  ``cancelled``: finished timers by finish time, trimmed after retention.
* ``huey.redis.{ti}``: the shard's Huey queue (a list of messages).

* ``seq:{ti}``: the shard's id counter (the last id sequence number it gave).

Control keys (on the ``REDIS_URL`` server, or anywhere on the cluster):
``timers:shards`` (every shard index ever configured), ``timers:tags`` (on a
cluster: each shard's hash tag, ``sharding.topology``).

On a Redis Cluster ``{ti}`` stands for the tag chosen for shard ``i`` when it
was registered (``{t<i>}`` or ``{t<i>.<k>}``, whichever lands it on the master
with the fewest shards); on one server it is always ``{t<i>}``.

Ids
---
A timer id is ``n * 1000 + home shard``: the shard holding its record is
``id % 1000``, derivable without a lookup table. ``n`` counts units of 100
microseconds since 2026-01-01 on the shard's Redis clock (``TIME``; "the
clock" below); the shard's counter ``seq:{ti}`` holds the last ``n`` it gave.

* One server (``lua/create.lua``): ``n`` is the larger of the counter + 1
  and the clock, made inside the create script, which builds the record key
  from it: one round trip, and no script touches another shard's keys.
* A Redis Cluster wants every key a script touches in ``KEYS``, so the
  record key, hence the id, must be known before the script runs. The API
  proposes it (``lua/create_proposed.lua``): from the shard's reply to each
  create it learns a lower bound of the shard's clock minus its own
  (``time.monotonic_ns``: the script ran before the reply came back) and
  proposes ``n_p``, its own clock now plus that bound, plus ``n_p + T + 1``
  and ``n_p + 2 (T + 1)`` (:data:`PROPOSED_IDS`, each with its record key in
  KEYS, the window T = :data:`PROPOSAL_WINDOW_UNITS` = 5 units, 0.5 ms). The
  script takes the one in ``[clock - T, clock]`` if it is above the counter,
  sets the counter to it and stores the timer: one round trip. Else (a
  process's first create on the shard, or the request was delayed more than
  1.7 ms, or another create took that unit) it reserves ``max(counter + 1, clock)``
  as ``lua/reserve_id.lua`` does and ``lua/create_reserved.lua`` stores the
  timer under it: two round trips. The proposal is never above the clock
  when the bound holds; one above it (the clock stepped back, another node
  took over the slot) is refused and the bound learnt again.

What that promises (``shared/CONTRACT.md`` section 2):

* unique: every id a shard gives is above its counter, which is then set to
  it and so only grows; the shard is in the last three digits;
* below 2**53 (exact in JavaScript) until 2054: ``n`` is at most the clock
  (plus a counter's lead, below);
* time-ordered at 1 ms: a timer created at least 1 ms after another one's
  ``201`` has a larger id, whichever shards took them. Say A was made at
  clock ``c`` (of its shard's node) with ``n_A = c + lead``; B's script ran
  at least 1 ms later, at clock ``c' >= c + 10`` (on a cluster, when B came
  1 ms plus the skew between the two nodes later). Every id is at least its
  clock minus T (T = 0 on one server: ``n >= clock``; on a cluster a
  proposal is taken only inside the window, a reserved one is ``>= clock``),
  so ``n_B >= c' - T >= c + 10 - T``, which is above ``n_A`` while
  ``lead <= 9 - T``. A proposal's lead is at most 0 (it is at most the
  clock); a reserved id's lead is ``counter + 1 - clock`` when the counter is
  at or past the clock. So the order holds while no id is made more than
  9 - T units ahead of its clock: 9 units (0.9 ms) on one server, 4 (0.4 ms)
  on a cluster, which is why T is 5 and not more; a larger T takes more
  delayed proposals but leaves less room for bursts. Creates less than 1 ms
  apart on different shards may get ids in either order (within one unit
  they are ordered by shard index).

An id is made ahead of the clock when its shard gives more than one id per
100 microsecond unit (more than 10 (one server) or 5 (cluster) creates within
one unit on one shard break the order; a sustained rate above 10,000 creates
a second on one shard makes the counter run ahead until it drains as the
clock catches up) or when the server's clock steps back (an NTP step; on a
cluster, a failover to a node whose clock is behind, and the skew between
nodes adds to the 1 ms). Ids stay unique then; only the order across shards
may lag by the counter's lead.
"""

import collections
import dataclasses
import json
import threading
import time

import redis

from sharding import queues, scripts, topology

SHARD_ID_BASE = 1000
FEED_BATCH = 500
# A shard's queue is fed while it holds fewer messages than this per consumer (32
# messages of up to 16 timers: over a second of a consumer's work on a fast machine,
# a small share of the visibility timeout).
QUEUED_MESSAGES_PER_CONSUMER = 32
STATUSES = ("scheduled", "retrying", "firing", "fired", "failed", "cancelled")
FINAL = ("fired", "failed", "cancelled")
# 2026-01-01T00:00:00Z in units of 100 microseconds: ids count from there.
ID_EPOCH_UNITS = 1_767_225_600 * 10_000
# How far below the shard's clock a proposed id may be, in 100 us units (see "Ids" above).
PROPOSAL_WINDOW_UNITS = 5
# Ids a cluster create proposes, PROPOSAL_WINDOW_UNITS + 1 units apart: one of them is
# in the window whenever the lag from proposing to the script's run is 0..17 units.
PROPOSED_IDS = 3
_STRIDE = PROPOSAL_WINDOW_UNITS + 1
_UNIT_NS = 100_000
SHARDS_KEY = "timers:shards"
# How long a create waits for TIMER_REDIS_WAIT_REPLICAS replicas before 503.
WAIT_TIMEOUT_MS = 1000
# Two attempts of one timer are never closer than this, unless Retry-After asks (contract section 5).
RETRY_FLOOR_MS = 1000

_RECORD_FIELDS = ("u", "f", "s", "a", "e", "d", "m", "w", "b", "c", "h")
# What a webhook with a body but no content type is sent with (shared/CONTRACT.md section 2).
DEFAULT_CONTENT_TYPE = "text/plain; charset=utf-8"


class BeyondMaxDelay(ValueError):
    """A fire time further from now (Redis clock) than the longest delay allowed."""


@dataclasses.dataclass(frozen=True)
class Payload:
    """What a webhook carries besides its standard headers (``shared/CONTRACT.md`` section 2).

    ``body``: text sent UTF-8 encoded (None: an empty body); ``content_type``:
    its media type as given (None: :data:`DEFAULT_CONTENT_TYPE` when there is a
    body, no ``Content-Type`` otherwise); ``headers``: header name → value, or None.
    """

    body: str | None = None
    content_type: str | None = None
    headers: dict | None = None

    @property
    def media_type(self):
        """The ``Content-Type`` the webhook is sent with, or None for none."""
        if self.content_type is None and self.body is not None:
            return DEFAULT_CONTENT_TYPE
        return self.content_type

    def fields(self):
        """Record field/value pairs (``b``, ``c``, ``h``) of the parts that are given."""
        headers = json.dumps(self.headers, separators=(",", ":")) if self.headers else None
        pairs = []
        for field, value in (("b", self.body), ("c", self.content_type), ("h", headers)):
            if value is not None:
                pairs += [field, value]
        return pairs

    @classmethod
    def from_fields(cls, body, content_type, headers):
        """The payload of the record fields ``b``, ``c``, ``h`` (bytes or None); None when all are absent."""
        if body is None and content_type is None and headers is None:
            return None
        return cls(body.decode() if body is not None else None,
                   content_type.decode() if content_type is not None else None,
                   json.loads(headers) if headers is not None else None)


def _record(fields):
    """A record dict from the HMGET of :data:`_RECORD_FIELDS`, or None if absent."""
    (url, fire, status, attempts, error, due, max_attempts, max_seconds,
     body, content_type, headers) = fields
    if status is None:
        return None
    status = status.decode()
    retry = {name: int(value) for name, value in (("max_attempts", max_attempts),
                                                   ("max_seconds", max_seconds)) if value is not None}
    return {"url": url.decode(), "fire_at": int(fire), "status": status,
            "attempts": int(attempts or 0), "last_error": error.decode() if error else None,
            "next_attempt_at": int(due) if status == "retrying" and due else None,
            "retry": retry or None, "payload": Payload.from_fields(body, content_type, headers)}


def _optional(number):
    """A script argument for an optional integer: the integer, or '' for None."""
    return "" if number is None else int(number)


@dataclasses.dataclass(frozen=True)
class RetryLimits:
    """The default limits of a timer's delivery attempts (a timer's ``retry`` object overrides them).

    ``max_attempts``: attempts before the timer is failed; ``max_seconds``: no
    attempt starts later than this many seconds after the first attempt
    began. Whichever ends first ends the retries. Applied by the state-changing
    scripts (``sharding/lua/next_attempt.lua``), so the default and a timer's
    own limits take the same path.
    """

    max_attempts: int
    max_seconds: float

    def args(self):
        """The limits as the scripts' ARGV: max attempts, retry window ms, floor ms."""
        return [self.max_attempts, int(self.max_seconds * 1000), RETRY_FLOOR_MS]


def _created(result, url, retry, payload):
    """What :meth:`TimerStore.create` returns, from the create script's reply [id, fire, now]."""
    timer_id, fire_ms, now = result
    return int(timer_id), {"url": url, "fire_at": int(fire_ms), "status": "scheduled", "attempts": 0,
                           "last_error": None, "next_attempt_at": None, "retry": retry,
                           "payload": payload}, int(now)


def home_shard(timer_id):
    """Index of the shard that holds ``timer_id``'s record (``id % 1000``)."""
    return timer_id % SHARD_ID_BASE


def now_ms(client):
    """The Redis server clock of ``client`` in epoch milliseconds."""
    secs, micros = client.time()
    return secs * 1000 + micros // 1000


class NotReplicated(redis.exceptions.RedisError):
    """A write that fewer replicas than asked acknowledged within :data:`WAIT_TIMEOUT_MS`.

    The write stands on the master (its replicas may still receive it); a
    failover before they do may lose it. ``timer_id`` is the timer written.
    """

    def __init__(self, timer_id, acknowledged, wanted, result=None):
        super().__init__(f"{acknowledged} of {wanted} replicas acknowledged timer {timer_id} "
                         f"within {WAIT_TIMEOUT_MS} ms")
        self.timer_id = timer_id
        # A create's [id, fire ms, now ms]; TimerStore.create sets ``created``
        # to what it would have returned.
        self.result = result
        self.created = None


@dataclasses.dataclass
class Claim:
    """Outcome of :meth:`TimerStore.claim` for one timer.

    ``status`` is ``firing`` when this caller now owns the delivery attempt
    number ``attempt`` (``in_budget``: its number counted from the timer's
    last re-drive, which backoff grows with; ``previous``: ``scheduled`` or
    ``retrying``, what :meth:`TimerStore.release` restores); ``early`` when the timer is not
    due until ``due_ms``; else the timer's current status (``missing`` if
    there is no record). Times are epoch milliseconds.
    """

    timer_id: int
    status: str
    attempt: int = 0
    url: str = ""
    fire_at_ms: int = 0
    now_ms: int = 0
    due_ms: int = 0
    request_id: str = ""
    payload: Payload | None = None
    in_budget: int = 0
    previous: str = ""


@dataclasses.dataclass
class Finish:
    """The outcome of delivery attempt ``attempt`` of ``timer_id``, for :meth:`TimerStore.finish`.

    ``status``: ``fired``, ``failed`` or ``retrying`` (asked for: the
    store turns it into ``failed`` when the timer's limits allow no further
    attempt); ``last_error``: short text such as ``HTTP 503`` (empty on
    success); ``retry_delay_ms``: the wait in milliseconds from when the
    outcome is recorded (Redis clock) to the next attempt (``retrying`` only);
    ``started_ms``: when the attempt was claimed (epoch ms, Redis clock;
    0: when recorded), which starts the retry window if it was the first.
    """

    timer_id: int
    attempt: int
    status: str
    last_error: str = ""
    retry_delay_ms: int = 0
    started_ms: int = 0


class Shard:
    """One shard: its client, Huey queue, keys and scripts.

    Args:
        index: the shard's index.
        topology: ``sharding.topology.SingleServer`` or ``Cluster``, which
            gives the shard its client, its hash tag, its Huey storage and the
            create strategy.
        wait_replicas: n >= 1: a create returns only after ``WAIT n`` on the
            connection of the write says n replicas hold it.
        tag: the hash tag, instead of the topology's (see :meth:`TimerStore._home`).
    """

    def __init__(self, index, topology, wait_replicas=0, tag=None):
        self.index = index
        self.topology = topology
        self.wait_replicas = wait_replicas
        self.redis = topology.shard_client(index)
        self.tag = tag = tag or topology.tag(index)
        self.huey = queues.make_huey(tag, **topology.huey_storage(self.redis))
        self.due_key = f"due:{tag}"
        self.seq_key = f"seq:{tag}"
        self.leases_key = f"lease:{tag}"
        self.retries_key = f"retry:{tag}"
        self.done_keys = {status: f"done:{tag}:{status}" for status in FINAL}
        self.queue_key = self.huey.storage.queue_key
        self._record_prefix = f"t:{tag}:"
        (self.create, self.reserve_id, self.create_reserved, self.create_proposed, self.get, self.feed,
         self.claim, self.finish, self.renew, self.release, self.expire_lease, self.cancel, self.reschedule,
         self.run, self.confirm_write, self.reveal) = scripts.register(
            self.redis, "create", "reserve_id", "create_reserved", "create_proposed", "get", "feed", "claim",
            "finish", "renew", "release", "expire_lease", "cancel", "reschedule", "run", "confirm", "reveal")
        # Where a script may build a key from its arguments (one server), the id is
        # made inside the create script: one round trip. A cluster wants every key
        # in KEYS, so this process proposes the id (see "Ids" above).
        self._create_with = self._create_proposed if topology.declared_keys_only else self._create_in_one
        # This shard's clock minus ours (time.monotonic_ns) in ns, at most the true
        # difference; None until a create's reply told it.
        self._clock_offset = None
        # Cluster creates by how their id was made: "proposed" (one round trip),
        # "refused" (a proposal refused: two), "unproposed" (no offset known yet: two).
        self.id_proposals = collections.Counter()

    def _create_args(self, timer):
        url, delay_ms, request_id, at_ms, max_delay_ms, fields = timer
        args = [self._record_prefix, self.index, url, delay_ms, request_id, ID_EPOCH_UNITS]
        if at_ms is not None or fields:
            args += [_optional(at_ms), _optional(max_delay_ms), *fields]
        return args

    def _create_in_one(self, node, timer):
        return self._write_and_wait(node, self.create, [self.seq_key, self.due_key], self._create_args(timer))

    def _create_proposed(self, node, timer):
        """Create on a cluster: ``create_proposed.lua`` with an id proposed from the learnt
        clock offset (one round trip), then, if it reserved an id instead,
        ``create_reserved.lua`` under that id (a second one).

        Returns:
            ([timer id, fire ms, now ms], replicas that acknowledged the write that
            stored the timer).
        """
        url, delay_ms, request_id, at_ms, max_delay_ms, fields = timer
        offset = self._clock_offset
        # As late as may be: the lag from here to the script's run counts against the window.
        first = None if offset is None else (time.monotonic_ns() + offset) // _UNIT_NS
        proposed = () if first is None else range(first, first + PROPOSED_IDS * _STRIDE, _STRIDE)
        keys = [self.seq_key, self.due_key,
                *(self.record_key(n * SHARD_ID_BASE + self.index) for n in proposed)]
        args = [self.index, ID_EPOCH_UNITS, _optional(first), PROPOSAL_WINDOW_UNITS, url, delay_ms,
                request_id, _optional(at_ms), _optional(max_delay_ms), *fields]
        # Without a proposal the id is only reserved: no WAIT for that.
        (timer_id, fire_ms, now, clock), acknowledged = self._write_and_wait(
            node, self.create_proposed, keys, args, wait=offset is not None)
        self._learn_offset(int(clock), first)
        if not int(timer_id):
            return [timer_id, fire_ms, now], acknowledged  # beyond the longest delay: nothing stored
        if int(fire_ms):
            self.id_proposals["proposed"] += 1
            return [timer_id, fire_ms, now], acknowledged
        self.id_proposals["unproposed" if first is None else "refused"] += 1
        return self._write_and_wait(node, self.create_reserved, [self.record_key(timer_id), self.due_key],
                                    [timer_id, url, delay_ms, request_id, _optional(at_ms),
                                     _optional(max_delay_ms), *fields])

    def _learn_offset(self, clock, first):
        """Update the clock offset from a reply's ``clock`` (100 us units), received now.

        The script ran before the reply arrived, at a moment of the shard's clock
        at or after ``clock``, so ``clock`` minus our clock now is at most the true
        offset; the largest such bound is kept. A first proposal above the shard's
        clock means the offset shrank (the clock was stepped back, another node
        took over): start again from this bound.
        """
        bound = clock * _UNIT_NS - time.monotonic_ns()
        if self._clock_offset is None or first is None or first > clock:
            self._clock_offset = bound
        else:
            self._clock_offset = max(self._clock_offset, bound)

    def create_timer(self, url, delay_ms, request_id="", client=None, at_ms=None, max_delay_ms=None,
                     fields=()):
        """Store a new timer (see :meth:`TimerStore.create`).

        Args:
            client: a pipeline of this shard's server to add the create to
                (one server only; bench/ stores backlogs that way); None: run
                it now, then ``WAIT`` when ``wait_replicas`` asks for it.
            at_ms: the fire time (epoch ms) instead of ``delay_ms`` from now.
            max_delay_ms: the longest delay ``at_ms`` may be from now.
            fields: optional record fields, a flat sequence of name, value, ...
        Returns:
            [timer id, fire time epoch ms, now epoch ms] (on a pipeline: when it
            executes); the id is 0 when ``at_ms`` is beyond ``max_delay_ms`` from now.
        Raises:
            NotReplicated: fewer than ``wait_replicas`` replicas acknowledged the
                write within :data:`WAIT_TIMEOUT_MS` (the timer is stored on the master).
        """
        timer = (url, delay_ms, request_id, at_ms, max_delay_ms, fields)
        if client is not None:
            return self.create(keys=[self.seq_key, self.due_key], args=self._create_args(timer),
                               client=client)
        return self.topology.on_node(self.redis, self.seq_key, lambda node: self._create_on(node, timer))

    def _create_on(self, node, timer):
        result, acknowledged = self._create_with(node, timer)
        if int(result[0]) and acknowledged < self.wait_replicas:
            raise NotReplicated(int(result[0]), acknowledged, self.wait_replicas, result)
        return result

    def confirm(self, timer_id):
        """Whether ``wait_replicas`` replicas hold ``timer_id``'s record (a write, then ``WAIT``).

        Returns:
            True when they do, False when not within :data:`WAIT_TIMEOUT_MS`,
            None when the record does not exist.
        """
        def confirm_on(node):
            exists, acknowledged = self._write_and_wait(node, self.confirm_write,
                                                        [self.record_key(timer_id)], [])
            return None if not exists else acknowledged >= self.wait_replicas
        return self.topology.on_node(self.redis, self.seq_key, confirm_on)

    def _write_and_wait(self, node, script, keys, args, wait=True):
        """Run ``script`` (a registered ``Script``) on ``node``, then ``WAIT`` on the same connection.

        WAIT counts the replicas that hold this connection's writes (Redis
        docs, WAIT), so both go down one connection of ``node`` (a plain client
        of the shard's server), pipelined in one round trip. Without replicas to
        wait for, the script is one bare ``EVALSHA``: a pipeline's own work cost
        25,000 instructions of a create's ~630,000 (docs/BENCHMARKS.md, "Create path").
        ``wait``: False: no ``WAIT`` (a write that stores no timer).
        Returns:
            (the script's result, replicas that acknowledged; 0 when none are asked for).
        """
        wait = wait and self.wait_replicas
        try:
            if not wait:
                return node.evalsha(script.sha, len(keys), *keys, *args), 0
            pipe = node.pipeline(transaction=False)
            scripts.queue(pipe, script, keys, args)
            pipe.execute_command("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS)
            result, acknowledged = pipe.execute()
        except redis.exceptions.NoScriptError:
            # A server new to this process (a promoted replica, a restart without
            # the script): load, then run again (the refused script wrote nothing).
            node.script_load(script.script)
            return self._write_and_wait(node, script, keys, args, wait)
        return result, int(acknowledged)

    def record_key(self, timer_id):
        """Redis key of ``timer_id``'s record on this shard."""
        return self._record_prefix + str(timer_id)

    def timer_keys(self, timer_ids):
        """The KEYS of the state-changing scripts: due, leases, retries, the done
        indexes of fired, failed, cancelled, then the record of each of ``timer_ids``."""
        return [self.due_key, self.leases_key, self.retries_key, *self.done_keys.values(),
                *(self.record_key(timer_id) for timer_id in timer_ids)]

    def index_key(self, status):
        """The sorted set that lists timers of ``status`` on this shard.

        ``scheduled`` shares the due index with ``retrying`` timers, which
        listing skips.
        """
        if status in FINAL:
            return self.done_keys[status]
        return {"scheduled": self.due_key, "retrying": self.retries_key,
                "firing": self.leases_key}[status]


class TimerStore:
    """Timer records across shards.

    Args:
        url: Redis URL of every shard and of the control keys: one server
            (each shard still gets a connection pool of its own), or any node
            of a Redis Cluster when ``cluster``.
        retention_s: seconds a finished timer stays readable.
        cluster: the URL is a Redis Cluster node (``sharding.topology.Cluster``).
        wait_replicas: ``TIMER_REDIS_WAIT_REPLICAS``: replicas that must hold a
            create before it returns (``WAIT``).
        live_shards: ``TIMER_SHARDS``: on a cluster, the first use of one of
            these shards registers all of them (assigns their tags) if no process has.
    Errors from Redis propagate as ``sharding.topology.REDIS_ERRORS``.
    """

    def __init__(self, url, retention_s=7 * 86400, cluster=False, wait_replicas=0, live_shards=0):
        self.url = url
        self.live_shards = live_shards
        self.retention_ms = int(retention_s * 1000)
        self.wait_replicas = wait_replicas
        self.topology = topology.connect(url, cluster)
        self._shards = {}
        self._lock = threading.Lock()

    @property
    def control(self):
        """The client of the control keys (``timers:*``, idempotency keys, the coordinator's lock)."""
        return self.topology.control

    def shard(self, index):
        """The :class:`Shard` ``index`` (created on first use; also for retired shards).

        Raises:
            topology.UnknownShard: on a cluster, ``index`` is not a live shard
                and was never registered.
            REDIS_ERRORS: on a cluster, its tag could not be read.
        """
        shard = self._shards.get(index)
        if shard is None:
            with self._lock:
                shard = self._shards.get(index)
                if shard is None:
                    shard = self._shards[index] = self._open(index)
        return shard

    def _open(self, index):
        try:
            return Shard(index, self.topology, self.wait_replicas)
        except topology.UnknownShard:
            if index >= self.live_shards:
                raise
        self.topology.assign_tags(self.live_shards)
        return Shard(index, self.topology, self.wait_replicas)

    def _home(self, timer_id):
        """The home shard of ``timer_id``.

        An id whose shard index no process registered (on a cluster: it has no
        tag) holds nothing: it gets a shard of the default tag, not kept, on
        which every script finds no record (a read or cancel answers
        ``missing``) and registers nothing.
        """
        index = home_shard(timer_id)
        try:
            return self.shard(index)
        except topology.UnknownShard:
            return Shard(index, self.topology, self.wait_replicas, tag=queues.storage_name(index))

    def register_shards(self, count):
        """Record shard indexes ``0..count-1`` as known (for recovery after a shrink)
        and give each its hash tag (``sharding.topology``)."""
        self.topology.assign_tags(count)
        self.control.sadd(SHARDS_KEY, *range(count))

    def known_shards(self, count):
        """Sorted indexes of every shard ever registered, plus ``0..count-1``."""
        known = {int(i) for i in self.control.smembers(SHARDS_KEY)}
        return sorted(known | set(range(count)))

    def create(self, url, delay_ms, shard_index, request_id="", *, at_ms=None, max_delay_ms=None,
               payload=None, retry=None):
        """Store a new pending timer on shard ``shard_index``, atomically with its due entry.

        Args:
            url: webhook base URL (already validated).
            delay_ms: milliseconds from now (Redis clock) to the fire time.
            shard_index: the shard that will hold and fire it.
            request_id: the creating request's id, logged with every delivery.
            at_ms: the fire time in epoch ms instead of ``delay_ms`` (a past
                time means now, Redis clock).
            max_delay_ms: with ``at_ms``, how far from now it may be at most.
            payload: :class:`Payload` or None; only its given parts are stored,
                so a timer without one costs no more memory.
            retry: the timer's own limits, a dict with ``max_attempts`` and/or
                ``max_seconds`` (validated), or None for the defaults (nothing stored).
        Returns:
            (timer id, record dict as :meth:`get` returns it, now epoch ms).
        Raises:
            BeyondMaxDelay: ``at_ms`` is more than ``max_delay_ms`` from now.
            NotReplicated: ``wait_replicas`` replicas did not acknowledge it in time.
        """
        retry = retry or None
        fields = payload.fields() if payload else []
        for name, field in (("max_attempts", "m"), ("max_seconds", "w")):
            if retry and name in retry:
                fields += [field, retry[name]]
        try:
            timer_id, fire_ms, created_ms = self.shard(shard_index).create_timer(
                url, delay_ms, request_id, at_ms=at_ms, max_delay_ms=max_delay_ms, fields=fields)
        except NotReplicated as exc:
            exc.created = _created(exc.result, url, retry, payload)
            raise
        if not timer_id:
            raise BeyondMaxDelay(f"{at_ms} is more than {max_delay_ms} ms after {created_ms}")
        return _created((timer_id, fire_ms, created_ms), url, retry, payload)

    def confirm(self, timer_id):
        """Whether enough replicas hold timer ``timer_id`` (see :meth:`Shard.confirm`).

        Returns:
            True, False (not yet), or None when the timer does not exist (a
            failover lost it before any replica had it).
        """
        return self._home(timer_id).confirm(timer_id)

    def get(self, timer_id):
        """Read a timer, with its shard's clock, in one script.

        Returns:
            (record, now epoch ms), the record a dict with ``url``, ``fire_at``
            (epoch ms), ``status``, ``attempts``, ``last_error`` (None when
            empty), ``next_attempt_at`` (epoch ms while ``retrying``, else
            None), ``retry`` (the timer's own limits or None) and ``payload``
            (:class:`Payload`, None when it has none);
            ``(None, now)`` when there is no such timer.
        """
        shard = self._home(timer_id)
        *fields, now = shard.get(keys=[shard.record_key(timer_id)], args=_RECORD_FIELDS)
        return _record(fields), int(now)

    def list(self, status, indexes, limit, after=None):
        """One page of timers with ``status`` across shards ``indexes``.

        Order: by the status's index score (due time for pending timers, lease
        end for firing ones, finish time for finished ones), then by id text.
        Each page costs a few bounded range reads per shard, never a scan.

        Args:
            status: one of :data:`STATUSES`.
            limit: page size (>= 1).
            after: the (score, id) of the last timer of the previous page.
        Returns:
            ([(timer id, record)], (score, id) of the last one if more may
            follow, else None).
        """
        after = after or (float("-inf"), "")
        found = []
        for index in indexes:
            found += self._page(self.shard(index), status, after, limit + 1)
        found.sort(key=lambda item: (item[0], str(item[1])))
        page = found[:limit]
        more = len(found) > limit
        return [(timer_id, record) for _, timer_id, record in page], (
            (page[-1][0], str(page[-1][1])) if more else None)

    def _page(self, shard, status, after, want):
        """Up to ``want`` (score, id, record) of ``status`` on ``shard`` after ``after``."""
        score, member = after
        key = shard.index_key(status)
        out = []
        offset = 0
        while len(out) < want:
            batch = shard.redis.zrangebyscore(key, score, "+inf", start=offset, num=want * 2,
                                              withscores=True)
            if not batch:
                break
            offset += len(batch)
            batch = [(m, sc) for m, sc in batch if sc > score or m.decode() > member]
            pipe = shard.redis.pipeline(transaction=False)
            for m, _ in batch:
                pipe.hmget(shard.record_key(int(m)), *_RECORD_FIELDS)
            for (m, sc), fields in zip(batch, pipe.execute(), strict=True):
                record = _record(fields)
                # Expired records and retrying timers in the due index are skipped.
                if record is not None and record["status"] == status and len(out) < want:
                    out.append((sc, int(m), record))
        return out

    def feed(self, due_index, queue_index, visibility_ms, spread=1, limit=FEED_BATCH):
        """Move up to ``limit`` due timers of shard ``due_index`` onto ``queue_index``'s queue.

        The timers stay in the due index, hidden for ``visibility_ms``: a claim
        removes them; a lost message makes them due again. They go out in due
        order, split evenly into ``spread`` messages (the consumers serving the
        queue), or more so that none holds over
        ``queues.MAX_TIMERS_PER_MESSAGE`` timers. A batch costs three Redis round trips
        instead of three per timer: on 2 cores this is what lets the service
        fire 500 timers/s while it creates as many (docs/BENCHMARKS.md).
        A shard's own queue is fed only while it holds fewer than
        :data:`QUEUED_MESSAGES_PER_CONSUMER` messages per consumer (``spread``):
        a backlog waits in the due index, so that no fed timer waits out its
        visibility timeout on a long queue and is fed (and claimed in vain) a
        second time. A retired shard's timers fed to a live queue (another
        slot on a cluster) are not held back.
        Returns:
            the number of timers put on the queue.
        """
        due = self.shard(due_index)
        queue = self.shard(queue_index)
        if due_index == queue_index:
            keys, args = [due.due_key, queue.queue_key], [limit, visibility_ms,
                                                          QUEUED_MESSAGES_PER_CONSUMER * max(1, spread)]
        else:
            keys, args = [due.due_key], [limit, visibility_ms]
        ids = [int(i) for i in due.feed(keys=keys, args=args)]
        if ids:
            size = min(queues.MAX_TIMERS_PER_MESSAGE, -(-len(ids) // max(1, spread)))
            queue.redis.lpush(queue.queue_key, *(queues.message_for(ids[k:k + size])
                                                 for k in range(0, len(ids), size)))
        return len(ids)

    def give_back(self, queue_index, timer_ids):
        """Put unclaimed timers back at the head of queue ``queue_index``, as one message, to be taken next.

        For a consumer that has no sender free for them (``workers.tasks``):
        another consumer of that queue takes them at once. The queue is the
        one the message came from, which for a retired shard's timers is not
        their home shard's (``sharding.recovery`` feeds them to live queues).
        Args:
            queue_index: the shard whose queue the message was taken from.
            timer_ids: 1 to ``queues.MAX_TIMERS_PER_MESSAGE`` ids (part of that message).
        """
        queue = self.shard(queue_index)
        # Huey takes messages from the right end (BRPOP); feeds push on the left.
        queue.redis.rpush(queue.queue_key, queues.message_for(timer_ids))

    def _one_shard(self, timer_ids):
        shard = self._home(timer_ids[0])
        if any(home_shard(timer_id) != shard.index for timer_id in timer_ids):
            raise ValueError("a batch must hold timers of one shard")
        return shard

    def claim(self, timer_ids, lease_ms, early_ms=50):
        """Claim due timers of one shard for one delivery attempt each (scheduled/retrying → firing).

        One atomic script for the whole batch. Each claimed timer holds a
        lease of ``lease_ms``; a batch whose sends wait behind slow receivers
        keeps its leases with :meth:`renew`.

        Args:
            timer_ids: non-empty list of ids with the same home shard.
            lease_ms: how long one delivery attempt may take before recovery
                may take the timer back.
            early_ms: how far before its due time a ``scheduled`` timer may still
                be claimed (a ``retrying`` one never is: its due time keeps the
                1 s floor between attempts).
        Returns:
            list of :class:`Claim`, in the order of ``timer_ids``.
        Raises:
            ValueError: the ids are not all on one shard.
        """
        shard = self._one_shard(timer_ids)
        claims = []
        for timer_id, res in zip(timer_ids, shard.claim(keys=shard.timer_keys(timer_ids),
                                                         args=[lease_ms, early_ms, *timer_ids]), strict=True):
            status = res[0].decode()
            if status == "early":
                claims.append(Claim(timer_id, status, due_ms=int(res[1])))
            elif status != "firing":
                claims.append(Claim(timer_id, status))
            else:
                claims.append(Claim(timer_id, status, attempt=int(res[1]), url=res[2].decode(),
                                    fire_at_ms=int(res[3]), now_ms=int(res[4]),
                                    request_id=res[5].decode(), in_budget=int(res[6]),
                                    payload=Payload.from_fields(*res[7:10]), previous=res[10].decode()))
        return claims

    def finish(self, outcomes, limits):
        """Record the outcomes of delivery attempts on timers of one shard, in one script.

        A ``retrying`` outcome becomes ``failed`` when the timer's limits
        (its own ``retry`` object, else ``limits``) allow no further attempt.

        Args:
            outcomes: non-empty list of :class:`Finish`.
            limits: the default :class:`RetryLimits`.
        Returns:
            list of (applied, status, next attempt epoch ms), in the order of
            ``outcomes``; applied is False (and status the timer's current
            one) when the attempt no longer owns the timer.
        Raises:
            ValueError: the timers are not all on one shard.
        """
        ids = [outcome.timer_id for outcome in outcomes]
        shard = self._one_shard(ids)
        args = [self.retention_ms, *limits.args()]
        for o in outcomes:
            args += [o.timer_id, o.attempt, o.status, o.last_error, int(o.retry_delay_ms), o.started_ms]
        return [(bool(applied), status.decode(), int(next_ms))
                for applied, status, next_ms in shard.finish(keys=shard.timer_keys(ids), args=args)]

    def renew(self, claims, lease_ms):
        """Extend the leases of claimed timers of one shard that are still being delivered.

        Args:
            claims: non-empty list of :class:`Claim` (status ``firing``) of one shard.
            lease_ms: the new lease, from now (Redis clock), in milliseconds.
        Returns:
            how many leases were extended: a timer whose attempt is no longer
            the claim's (recovery took it back) keeps what it has.
        Raises:
            ValueError: the timers are not all on one shard.
        """
        return int(self._on_claims("renew", claims, lease_ms, lambda claim: (claim.timer_id, claim.attempt)))

    def release(self, claims, visibility_ms):
        """Undo claims of one shard whose attempts never started (firing → what it was before).

        For a consumer that claimed timers and had no sender free for them in
        time (``workers.tasks``): each timer is pending again, its attempt not
        counted, and hidden in the due index for ``visibility_ms`` while the
        caller gives it back to a queue (:meth:`give_back`).

        Args:
            claims: non-empty list of :class:`Claim` (status ``firing``) of one shard.
            visibility_ms: how long the timers stay hidden from feeds, in milliseconds.
        Returns:
            list of the ids whose claims were undone: one whose timer is no
            longer firing with that attempt (cancelled, or taken back by
            recovery) is left alone, and not for the caller to give back.
        Raises:
            ValueError: the timers are not all on one shard.
        """
        return [int(timer_id) for timer_id in self._on_claims(
            "release", claims, visibility_ms, lambda claim: (claim.timer_id, claim.attempt, claim.previous))]

    def _on_claims(self, script, claims, first, per_claim):
        """Run shard script ``script`` on ``claims`` (one shard) with ARGV ``first``, then
        ``per_claim(claim)`` of each; returns its reply."""
        ids = [claim.timer_id for claim in claims]
        shard = self._one_shard(ids)
        args = [first]
        for claim in claims:
            args += per_claim(claim)
        return getattr(shard, script)(keys=shard.timer_keys(ids), args=args)

    def expire_lease(self, timer_id, limits):
        """Take back a ``firing`` timer whose lease ran out.

        It is due again at once unless its limits (its own ``retry`` object,
        else the default :class:`RetryLimits` ``limits``) allow no further
        attempt; then it is failed.

        Returns:
            ``"retrying"``, ``"failed"``, or None when the lease still holds
            or the timer is no longer firing.
        """
        shard = self._home(timer_id)
        res = shard.expire_lease(keys=shard.timer_keys([timer_id]),
                                 args=[timer_id, self.retention_ms, *limits.args()])
        return res.decode() if res else None

    def run(self, timer_ids, failed_only=False):
        """Make timers of one shard due now, in one script (atomic with claims, cancels and recovery).

        A ``scheduled`` timer's fire time becomes now; a ``retrying`` one's
        next attempt is now (both keep their attempts); a ``failed`` one is
        re-driven: ``retrying``, due now, with a fresh attempt budget and
        retry window, its attempt count and last error kept. Other timers are
        left as they are.

        Args:
            timer_ids: non-empty list of ids with the same home shard.
            failed_only: leave pending timers too (bulk re-drive).
        Returns:
            list of the status each timer had (``missing`` when unknown), in
            the order of ``timer_ids``.
        Raises:
            ValueError: the ids are not all on one shard.
        """
        shard = self._one_shard(timer_ids)
        return [status.decode() for status in shard.run(keys=shard.timer_keys(timer_ids),
                                                         args=[int(failed_only), *timer_ids])]

    def run_now(self, timer_id):
        """:meth:`run` on one timer, and the timer as the run left it (one MULTI transaction).

        Returns:
            (the status it had or ``missing``, its record as :meth:`get`
            returns it or None, now epoch ms).
        """
        shard = self._home(timer_id)

        def run_on(node):
            # On a plain client of the shard's server: a cluster pipeline refuses
            # scripts and TIME, and MULTI needs one node.
            pipe = node.pipeline(transaction=True)
            shard.run(keys=shard.timer_keys([timer_id]), args=[0, timer_id], client=pipe)
            pipe.hmget(shard.record_key(timer_id), *_RECORD_FIELDS)
            pipe.time()
            return pipe.execute()
        [was], fields, (secs, micros) = self.topology.on_node(shard.redis, shard.seq_key, run_on)
        return was.decode(), _record(fields), secs * 1000 + micros // 1000

    def cancel(self, timer_id):
        """Cancel a pending timer so that it never fires.

        Returns:
            the status it had: ``scheduled`` or ``retrying`` (now cancelled),
            ``cancelled`` (already), ``firing``/``fired``/``failed`` (too late,
            unchanged) or ``missing``. Atomic with claims: of a cancel and a
            claim racing, exactly one wins.
        """
        shard = self._home(timer_id)
        return shard.cancel(keys=shard.timer_keys([timer_id]),
                            args=[timer_id, self.retention_ms]).decode()

    def reschedule(self, timer_id, delay_ms=0, at_ms=None, max_delay_ms=None):
        """Move a pending timer to a new fire time: ``delay_ms`` from now, or ``at_ms``.

        Atomic with claims and cancels: of a reschedule and a claim racing,
        exactly one wins. A queue message already sent for the timer is then
        early, and the claim drops it; the due index feeds it again at the new time.

        Args:
            delay_ms: milliseconds from now (Redis clock), when ``at_ms`` is None.
            at_ms: the new fire time in epoch ms (a past time means now).
            max_delay_ms: how far from now the new fire time may be at most (None: any).
        Returns:
            (status, record, now epoch ms): ``rescheduled`` with the record as
            :meth:`get` returns it; else the status that kept it from moving
            (``firing``, ``fired``, ``failed``, ``cancelled``, ``missing``) and None.
        Raises:
            BeyondMaxDelay: the new fire time is more than ``max_delay_ms`` from now.
        """
        shard = self._home(timer_id)
        status, now, *fields = shard.reschedule(
            keys=shard.timer_keys([timer_id]),
            args=[timer_id, _optional(at_ms), int(delay_ms), _optional(max_delay_ms), *_RECORD_FIELDS])
        status = status.decode()
        if status == "beyond":
            raise BeyondMaxDelay(f"the fire time is more than {max_delay_ms} ms after {now}")
        return status, _record(fields[0]) if fields else None, int(now)

    def trim_finished(self, indexes, now):
        """Drop finished timers older than the retention period from the done indexes.

        Args:
            now: the Redis clock in epoch ms.
        Returns:
            how many entries were removed.
        """
        cutoff = now - self.retention_ms
        removed = 0
        for index in indexes:
            shard = self.shard(index)
            pipe = shard.redis.pipeline(transaction=False)
            for key in shard.done_keys.values():
                pipe.zremrangebyscore(key, "-inf", cutoff)
            removed += sum(pipe.execute())
        return removed

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
