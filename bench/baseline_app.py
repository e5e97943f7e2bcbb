"""The baseline for ``create_ratio``: the least a Falcon app must do to store a timer.

Run on the project's gunicorn configuration (same workers, threads, limits):
``gunicorn -c api/gunicorn_conf.py bench.baseline_app:app``.

``POST /timers`` parses the JSON body with Falcon's media handler, then does
in ONE pipelined round trip the same Redis writes as the product
(``sharding/store.py``): ``INCR`` of the shard's id counter, ``HSET`` of a record with the
create script's fields (read from the script itself, :func:`record_fields`:
``u`` url, ``f`` fire time, ``s`` status, ``r`` request id, ``a`` attempts if
the script stores it...) and ``ZADD`` to a due sorted set, on shards taken in
turn, with the product's hash tags. It answers ``201`` with a small JSON
body. No validation, balancing, idempotency, metrics or logging: the product
is expected to reach a good fraction of this ceiling, not to beat it.

Its keys are prefixed ``bench:`` (they never mix with the product's).
``GET /healthz`` answers 200, for readiness checks.
"""

import itertools
import os
import re
import time

import falcon
import redis

from sharding import config, ids, queues, scripts

SHARD_ID_BASE = ids.SHARD_ID_BASE
_DEFAULT_FIELDS = ("u", "f", "s", "a", "r")


def record_fields(script=None):
    """Field names of the record the product's create script writes (its first ``HSET``).

    Args:
        script: Lua text (default ``sharding/lua/create.lua``).
    Returns:
        tuple of names, e.g. ``("u", "f", "s", "r")``; the layout of the first
        version (u, f, s, a, r) when the script cannot be read.
    """
    text = script if script is not None else scripts.source("create")
    match = re.search(r"redis\.call\('HSET',\s*[^,]+,(.*?)\)\s*$", text, re.MULTILINE)
    if not match:
        return _DEFAULT_FIELDS
    args = [a.strip() for a in match.group(1).split(",")]
    # The fixed fields are quoted names; what follows them (the optional pairs a
    # timer without payload or retry does not have) is not.
    names = tuple(itertools.takewhile(bool, (a[1:-1] if re.fullmatch(r"'\w+'|\"\w+\"", a) else ""
                                             for a in args[0::2])))
    return names or _DEFAULT_FIELDS


class BaselineTimers:
    """``POST /timers``: parse, three writes in one pipeline, 201.

    Args:
        client: redis-py client.
        shards: number of due sets to spread timers over.
    """

    def __init__(self, client, shards, fields=None):
        self.client = client
        self.shards = shards
        self.fields = fields or record_fields()
        self._turn = itertools.count(os.getpid())
        self._record = itertools.count(1)

    def on_post(self, req, resp):
        """Store a timer; 201 ``{"id", "fire_at"}`` (``fire_at`` in epoch milliseconds)."""
        body = req.get_media()
        delay_s = body.get("hours", 0) * 3600 + body.get("minutes", 0) * 60 + body.get("seconds", 0)
        shard = next(self._turn) % self.shards
        fire_ms = int(time.time() * 1000) + delay_s * 1000
        tag = queues.storage_name(shard)
        member = f"{os.getpid()}:{next(self._record)}"
        values = {"u": body["url"], "f": fire_ms, "s": "scheduled", "a": 0,
                  "r": req.get_header("X-Request-ID") or ""}
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(f"bench:seq:{tag}")
        pipe.hset(f"bench:t:{tag}:{member}", mapping={name: values.get(name, "") for name in self.fields})
        pipe.zadd(f"bench:due:{tag}", {member: fire_ms})
        seq = pipe.execute()[0]
        resp.status = falcon.HTTP_201
        resp.media = {"id": seq * SHARD_ID_BASE + shard, "fire_at": fire_ms}


class Health:
    """``GET /healthz``: always 200."""

    def on_get(self, req, resp):
        """200 ``{"status": "ok"}``."""
        resp.media = {"status": "ok"}


def create_app(settings=None):
    """The baseline WSGI app on the configured Redis (``REDIS_URL``) and ``TIMER_SHARDS``."""
    settings = settings or config.load()
    client = redis.Redis.from_url(settings.effective_redis_url(), socket_timeout=5,
                                  socket_connect_timeout=5)
    app = falcon.App()
    app.add_route("/timers", BaselineTimers(client, settings.shards))
    app.add_route("/healthz", Health())
    return app


app = create_app()
