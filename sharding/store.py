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

Ids (``n * 1000 + home shard``, time-ordered across shards) and how a
cluster create proposes them: ``sharding.ids``. A shard's client, keys and
scripts: ``sharding.shard``. Records as Python values: ``sharding.records``.
"""

import threading

from sharding import queues, scripts, topology
from sharding.ids import home_shard
from sharding.records import RECORD_FIELDS, Claim, Payload, created_record, parse_record
from sharding.shard import NotReplicated, Shard

FEED_BATCH = 500
# A shard's queue is fed while it holds fewer messages than this per consumer (32
# messages of up to 16 timers: over a second of a consumer's work on a fast machine,
# a small share of the visibility timeout).
QUEUED_MESSAGES_PER_CONSUMER = 32
SHARDS_KEY = "timers:shards"


class BeyondMaxDelay(ValueError):
    """A fire time further from now (Redis clock) than the longest delay allowed."""


def now_ms(client):
    """The Redis server clock of ``client`` in epoch milliseconds."""
    secs, micros = client.time()
    return secs * 1000 + micros // 1000


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
            exc.created = created_record(exc.result, url, retry, payload)
            raise
        if not timer_id:
            raise BeyondMaxDelay(f"{at_ms} is more than {max_delay_ms} ms after {created_ms}")
        return created_record((timer_id, fire_ms, created_ms), url, retry, payload)

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
        *fields, now = shard.get(keys=[shard.record_key(timer_id)], args=RECORD_FIELDS)
        return parse_record(fields), int(now)

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
                pipe.hmget(shard.record_key(int(m)), *RECORD_FIELDS)
            for (m, sc), fields in zip(batch, pipe.execute(), strict=True):
                record = parse_record(fields)
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
            pipe.hmget(shard.record_key(timer_id), *RECORD_FIELDS)
            pipe.time()
            return pipe.execute()
        [was], fields, (secs, micros) = self.topology.on_node(shard.redis, shard.seq_key, run_on)
        return was.decode(), parse_record(fields), secs * 1000 + micros // 1000

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
            args=[timer_id, scripts.optional(at_ms), int(delay_ms), scripts.optional(max_delay_ms),
                  *RECORD_FIELDS])
        status = status.decode()
        if status == "beyond":
            raise BeyondMaxDelay(f"the fire time is more than {max_delay_ms} ms after {now}")
        return status, parse_record(fields[0]) if fields else None, int(now)

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
