"""Where the shards live: one Redis server, or a Redis Cluster.

The timer store (``sharding.store``) asks its topology for everything that
differs between the two, so no other module tests which one it runs on:

* the control client (``timers:*`` keys: known shards, tags, the
  coordinator's lock, idempotency keys) and each shard's client;
* each shard's hash tag: on one server ``{t<i>}``; on a cluster a tag chosen
  against the slot map when the shard is first registered and kept in
  ``timers:tags`` for the life of the data (see :meth:`Cluster.tag`);
* the Huey storage of each shard's queue;
* the create strategy (``declared_keys_only``): on one server the create
  script makes the id and builds the record key from it; a cluster wants
  every key a script touches in ``KEYS``, so the API proposes the id and
  declares its record key (``create_proposed.lua``; ``sharding.ids``).
  One round trip either way, two on a cluster when a proposal is
  refused;
* the node a shard's writes go to, for ``WAIT`` on the connection of the
  write (redis-py's cluster client sends ``WAIT`` to a node of its own choosing), and what
  to do on a redirect (``MOVED``/``ASK``/``TRYAGAIN``) seen on that connection.

Errors: :data:`REDIS_ERRORS` are what a caller catches where it caught
``redis.exceptions.RedisError``; redis-py's ``RedisClusterException`` (a slot
no node serves, a refused cluster pipeline command) is not a ``RedisError``.
"""

import collections
import threading
import time

import redis
import redis.cluster
from huey.storage import RedisStorage

from sharding import queues

REDIS_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)
TAGS_KEY = "timers:tags"
_TAGS_LOCK = "timers:tags:lock"
# How many tag candidates a shard tries to find the least-loaded master:
# with M masters a random slot misses a given one with probability (1-1/M).
_TAG_CANDIDATES = 1000
_TIMEOUTS = {"socket_timeout": 5, "socket_connect_timeout": 5}
# A write answered with a redirect is retried this many times, the slot map re-read
# first and the waits doubling from 50 ms (0.75 s in all): a slot that moved is
# found at once; a slot being moved (ASK, TRYAGAIN) often has finished by then.
_REDIRECT_RETRIES = 4
# MovedError is an AskError.
_REDIRECTS = (redis.exceptions.AskError, redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)


class UnknownShard(LookupError):
    """A shard index that no process registered (so it has no tag and holds nothing)."""


class SingleServer:
    """Every shard on one Redis server (``REDIS_URL``, or the embedded Redis).

    Args:
        url: redis-py URL (``redis://``, ``rediss://``, ``unix://``).
    """

    declared_keys_only = False

    def __init__(self, url):
        self.url = url
        self.control = redis.Redis.from_url(url, **_TIMEOUTS)
        self._ready = None

    def shard_client(self, index):
        """A client of its own for shard ``index`` (own connection pool)."""
        return redis.Redis.from_url(self.url, **_TIMEOUTS)

    def tag(self, index):
        """The hash tag of shard ``index``: ``sharding.queues.storage_name``."""
        return queues.storage_name(index)

    def assign_tags(self, count):
        """Nothing to assign on one server: every tag is ``sharding.queues.storage_name``."""

    def huey_storage(self, client):
        """Keyword arguments for Huey's ``RedisStorage`` on ``client``'s pool."""
        return {"connection_pool": client.connection_pool}

    def on_node(self, client, key, work):
        """``work(node client)`` on the server holding ``key``: here ``client`` itself."""
        return work(client)

    def ping(self):
        """The readiness check: PING within 0.5 s.

        Raises:
            REDIS_ERRORS: no answer.
        """
        if self._ready is None:
            self._ready = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5,
                                               retry=None)
        return self._ready.ping()


class _Connecting:
    """A ``RedisCluster`` client made at its first use, standing in for it until then.

    redis-py reads the slot map when a cluster client is made, so one made at
    start-up fails while the cluster does not answer yet; this one is made by
    the first command (and made again by the next one if that fails), so every
    process may build its clients before the cluster is up.

    Args:
        make: callable returning the client.
    Raises (on attribute access): REDIS_ERRORS when no node answers.
    """

    def __init__(self, make):
        self._make = make
        self._client = None
        self._lock = threading.Lock()

    def __getattr__(self, name):
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make()
        return getattr(self._client, name)


class ClusterStorage(RedisStorage):
    """Huey's ``RedisStorage`` on a ``redis.cluster.RedisCluster`` client.

    Huey's storage builds its client as ``redis_client(connection_pool=...)``;
    here that "pool" is the cluster client itself, which routes every queue
    command (``LPUSH``, ``BRPOP``, ``LLEN``, ``LRANGE``) to the master of the
    queue key's slot and follows ``MOVED``/``ASK``. The blocking pop is sent to
    that node, as Redis Cluster requires for a single-key blocking command.
    """

    def redis_client(self, connection_pool):
        """The cluster client passed as ``connection_pool``."""
        return connection_pool


class Cluster:
    """Every shard on a Redis Cluster (``REDIS_CLUSTER_URL``: any one node).

    One ``RedisCluster`` client serves the control keys and every shard; it
    keeps a connection pool per node and follows ``MOVED``/``ASK``/``TRYAGAIN``
    itself. It is made at its first command (:class:`_Connecting`).

    Args:
        url: ``redis://`` or ``rediss://`` URL of any node (user and password allowed).
    """

    declared_keys_only = True

    def __init__(self, url):
        self.url = url
        self.control = _Connecting(lambda: redis.cluster.RedisCluster.from_url(url, **_TIMEOUTS))
        self._tags = {}
        # Key -> plain client of the master of its slot (on_node).
        self._masters = {}
        self._ready = None

    def shard_client(self, index):
        """The shared cluster client (it routes each command by its key's slot)."""
        return self.control

    def tag(self, index):
        """The hash tag of shard ``index``, as :meth:`assign_tags` stored it.

        Tags never change once stored: every record key of a shard carries its
        tag and a timer is found from its id through ``id % 1000`` and the tag.
        Raises:
            UnknownShard: shard ``index`` was never registered (an id made up
                by a client: a read answers 404 without registering anything).
        """
        if index not in self._tags:
            self._tags.update(self._stored_tags())
        if index not in self._tags:
            raise UnknownShard(index)
        return self._tags[index]

    def _stored_tags(self):
        return {int(i): tag.decode() for i, tag in self.control.hgetall(TAGS_KEY).items()}

    def assign_tags(self, count):
        """Give each of shards ``0..count-1`` that has none a tag, spreading shards evenly.

        Each new shard gets the first of ``{t<i>}``, ``{t<i>.1}``, ``{t<i>.2}`` ...
        whose slot's master holds the fewest shards now, so N shards on M
        masters land ``N // M`` or ``N // M + 1`` per master. Under a lock,
        so processes registering at once agree; stored with ``HSETNX``.
        """
        tags = self._stored_tags()
        if all(i in tags for i in range(count)):
            self._tags.update(tags)
            return
        with self.control.lock(_TAGS_LOCK, timeout=30, blocking_timeout=30):
            tags = self._stored_tags()
            load = collections.Counter({node.name: 0 for node in self.control.get_primaries()})
            load.update(self.master_of(tag) for tag in tags.values())
            for index in range(count):
                if index not in tags:
                    tags[index] = self._least_loaded_tag(index, load)
                    load[self.master_of(tags[index])] += 1
                    self.control.hsetnx(TAGS_KEY, index, tags[index])
        self._tags.update(self._stored_tags())

    def _least_loaded_tag(self, index, load):
        fewest = min(load.values())
        candidates = (f"{{t{index}.{k}}}" if k else queues.storage_name(index)
                      for k in range(_TAG_CANDIDATES))
        return next((tag for tag in candidates if load[self.master_of(tag)] == fewest),
                    queues.storage_name(index))

    def master_of(self, key):
        """Name (``host:port``) of the master serving ``key``'s slot, from the cached slot map."""
        return self.control.get_node_from_key(key).name

    def huey_storage(self, client):
        """Keyword arguments for Huey: :class:`ClusterStorage` on the cluster client."""
        return {"storage_class": ClusterStorage, "connection_pool": client}

    def on_node(self, client, key, work):
        """``work(plain client)`` on the master of ``key``'s slot; re-routed after a redirect.

        Used for writes that must share one connection with a ``WAIT``, and for
        the create, which runs on every request: the master's client is kept
        per key, found again from the slot map after a redirect or a connection
        error. A ``MOVED`` (the slot moved, or the node became a replica),
        ``ASK``/``TRYAGAIN`` (it is moving) or ``CLUSTERDOWN`` (a failover is
        under way) re-reads the slot map and tries again; the last error
        propagates. A connection error re-reads the slot map and propagates at once.
        """
        attempt = 0
        while True:
            node = self._masters.get(key)
            if node is None:
                node = self._masters[key] = self.control.get_redis_connection(
                    self.control.get_node_from_key(key))
            try:
                return work(node)
            except _REDIRECTS:
                # Refused before it ran: safe to send again.
                self._masters.clear()
                if attempt == _REDIRECT_RETRIES:
                    raise
                self._reload_slots()
                time.sleep(0.05 * 2 ** attempt)
                attempt += 1
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                # The write may have run: never resent (a create would make a second
                # timer). The next request finds the promoted replica.
                self._masters.clear()
                self._reload_slots()
                raise

    def _reload_slots(self):
        try:
            self.control.nodes_manager.initialize()
        except REDIS_ERRORS:
            pass  # no node answered: the cluster client tries again on its next command

    def ping(self):
        """The readiness check: every master answers PING within 0.5 s.

        Raises:
            REDIS_ERRORS: a master did not answer, or no node did.
        """
        if self._ready is None:
            self._ready = redis.cluster.RedisCluster.from_url(self.url, socket_timeout=0.5,
                                                              socket_connect_timeout=0.5)
        return self._ready.ping(target_nodes=redis.cluster.RedisCluster.PRIMARIES)


def connect(url, cluster=False):
    """The topology for a Redis URL: :class:`Cluster` when ``cluster``, else :class:`SingleServer`."""
    return Cluster(url) if cluster else SingleServer(url)
