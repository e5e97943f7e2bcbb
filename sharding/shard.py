"""One shard of the timer store: its client, Huey queue, keys and scripts (layout: ``sharding.store``)."""

import redis

from sharding import ids, queues, records, scripts

# How long a create waits for TIMER_REDIS_WAIT_REPLICAS replicas before 503.
WAIT_TIMEOUT_MS = 1000
# The create scripts' fixed arguments, encoded once (redis-py passes bytes through as they are).
_EPOCH_ARG = str(ids.ID_EPOCH_UNITS).encode()
_WINDOW_ARG = str(ids.PROPOSAL_WINDOW_UNITS).encode()


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


class Shard:
    """One shard: its client, Huey queue, keys and scripts.

    Args:
        index: the shard's index.
        topology: ``sharding.topology.SingleServer`` or ``Cluster``, which
            gives the shard its client, its hash tag, its Huey storage and the
            create strategy.
        wait_replicas: n >= 1: a create returns only after ``WAIT n`` on the
            connection of the write says n replicas hold it.
        tag: the hash tag, instead of the topology's (see :meth:`sharding.store.TimerStore._home`).
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
        self.done_keys = {status: f"done:{tag}:{status}" for status in records.FINAL}
        self.queue_key = self.huey.storage.queue_key
        self._record_prefix = f"t:{tag}:"
        (self.create, self.reserve_id, self.create_reserved, self.create_proposed, self.get, self.feed,
         self.claim, self.finish, self.renew, self.release, self.expire_lease, self.cancel, self.reschedule,
         self.run, self.confirm_write, self.reveal) = scripts.register(
            self.redis, "create", "reserve_id", "create_reserved", "create_proposed", "get", "feed", "claim",
            "finish", "renew", "release", "expire_lease", "cancel", "reschedule", "run", "confirm", "reveal")
        # Where a script may build a key from its arguments (one server), the id is
        # made inside the create script: one round trip. A cluster wants every key
        # in KEYS, so this process proposes the id (``sharding.ids``).
        self._create_with = self._create_proposed if topology.declared_keys_only else self._create_in_one
        self.id_proposals = ids.IdProposals(index, self._record_prefix)
        # Encoded once (redis-py passes bytes through as they are).
        self._index_arg = str(index).encode()

    def _create_args(self, timer):
        url, delay_ms, request_id, at_ms, max_delay_ms, fields = timer
        args = [self._record_prefix, self._index_arg, url, delay_ms, request_id, _EPOCH_ARG]
        if at_ms is not None or fields:
            args += [scripts.optional(at_ms), scripts.optional(max_delay_ms), *fields]
        return args

    def _create_in_one(self, node, timer):
        return self._write_and_wait(node, self.create, [self.seq_key, self.due_key], self._create_args(timer))

    def _create_proposed(self, node, timer):
        """Create on a cluster: ``create_proposed.lua`` with ids proposed from the learnt
        clock offset (one round trip), then, if it reserved an id instead,
        ``create_reserved.lua`` under that id (a second one).

        Returns:
            ([timer id, fire ms, now ms], replicas that acknowledged the write that
            stored the timer).
        """
        url, delay_ms, request_id, at_ms, max_delay_ms, fields = timer
        proposals = self.id_proposals
        first, record_keys = proposals.propose()
        keys = [self.seq_key, self.due_key, *record_keys]
        args = [self._index_arg, _EPOCH_ARG, scripts.optional(first), _WINDOW_ARG, url, delay_ms,
                request_id]
        if at_ms is not None or fields:
            args += [scripts.optional(at_ms), scripts.optional(max_delay_ms), *fields]
        # Without a proposal the id is only reserved: no WAIT for that.
        (timer_id, fire_ms, now, clock), acknowledged = self._write_and_wait(
            node, self.create_proposed, keys, args, wait=first is not None)
        proposals.learn(clock, first)
        if not timer_id:
            return [timer_id, fire_ms, now], acknowledged  # beyond the longest delay: nothing stored
        if fire_ms:
            proposals.counts["proposed"] += 1
            return [timer_id, fire_ms, now], acknowledged
        proposals.counts["unproposed" if first is None else "refused"] += 1
        return self._write_and_wait(node, self.create_reserved, [self.record_key(timer_id), self.due_key],
                                    [timer_id, url, delay_ms, request_id, scripts.optional(at_ms),
                                     scripts.optional(max_delay_ms), *fields])

    def create_timer(self, url, delay_ms, request_id="", client=None, at_ms=None, max_delay_ms=None,
                     fields=()):
        """Store a new timer (see :meth:`sharding.store.TimerStore.create`).

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
        wait for, the script is one ``EVALSHA`` sent once on a connection of the
        pool (:func:`sharding.scripts.run_once`; docs/BENCHMARKS.md, "Create path").
        ``wait``: False: no ``WAIT`` (a write that stores no timer).
        Returns:
            (the script's result, replicas that acknowledged; 0 when none are asked for).
        """
        wait = wait and self.wait_replicas
        try:
            if not wait:
                return scripts.run_once(node, script, keys, args), 0
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
        if status in records.FINAL:
            return self.done_keys[status]
        return {"scheduled": self.due_key, "retrying": self.retries_key,
                "firing": self.leases_key}[status]
