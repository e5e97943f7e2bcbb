"""The benchmark harness: the real service and its baselines, side by side, in one run.

Run: ``python -m bench.run [--tiny|--quick|--full]`` (or ``--scale NAME``; the
default is ``BENCH_SCALE`` from the environment, else ``quick``). ``make bench``
and ``make bench-quick`` install the dependencies first.

It starts a real ``redis-server`` (``tests.harness.RedisServer``: AOF on, as
the embedded Redis), the service's real processes (``tests.harness.Service``:
gunicorn with ``api/gunicorn_conf.py``, the consumer pool, the coordinator)
with the default configuration (``TIMER_*`` variables from the environment
are honoured), and measures:

``create_ratio``
    ``POST /timers`` answered ``201`` per second by the API, divided by the
    same load on ``bench.baseline_app`` (same gunicorn configuration, one
    pipelined round trip of the same Redis writes). Load: ``bench.loadgen``
    (processes x threads on keep-alive ``http.client`` connections, fixed
    duration), product and baseline alternating; the figure is the median
    of the per-pair ratios.
``fire_ratio``
    webhooks delivered per second for a backlog of timers all due at one
    moment T, with the consumer pool already running (rate = delivered /
    (last arrival - T)), divided by bare ``requests`` sessions with the same
    concurrency (one process per consumer, ``TIMER_CONSUMER_THREADS`` threads
    each) sending ``POST`` with an empty body to the same receiver
    (``bench.fast_receiver``). Alternating; median of per-pair ratios. The
    backlog is sized by work time: time-bounded calibration runs of the
    baseline measure this machine's rate, and the backlog takes
    ``Scale.fire_work_s`` seconds at it.
``lateness_p50_s``, ``lateness_p99_s``, ``lateness_max_s``
    webhook arrival minus the ``fire_at`` of the ``POST /timers`` response,
    in seconds, for timers created through the API at a steady rate (half
    the product's create rate measured by ``create_ratio``) with a
    1 or 2 s delay. Timers that never arrive count as infinitely late. The
    load is open loop: if the API cannot take the rate, the rate reached is
    recorded and the target counts as not met.
``bytes_per_timer``
    growth of Redis ``INFO used_memory`` per pending timer (1 h delay,
    url ``http://127.0.0.1:9000/hook``, a generated request id (12 characters) as the API
    stores).
``recovery_s_per_million``
    seconds for ``sharding.recovery.recover`` (a full pass) to find and make
    due again N orphaned timers (hidden in the due index by the feed script,
    their queue messages never pushed), scaled to one million. N is sized by
    work time: calibration passes measure the pass rate, and N takes
    ``Scale.recovery_work_s`` seconds at it.

``cluster_create_ratio``, ``cluster_fire_ratio``
    after the single-Redis benchmarks, ``create_ratio`` and ``fire_ratio``
    again with the product's shards on a local Redis Cluster
    (``sharding.local_cluster``: 3 masters + 3 replicas, AOF on as the single
    server; ``REDIS_CLUSTER_URL`` instead of ``REDIS_URL``, every other
    setting the same, so the same ``TIMER_SHARDS`` and the same pool
    concurrency), against the same bare baselines, measured again side by
    side in alternating pairs: ``bench.baseline_app`` on the single
    ``redis-server`` (the bare stack a cluster has to come close to), and
    the bare ``requests`` senders with the pool's concurrency. The cluster's
    backlog is the size the single-Redis fire sizing chose (its calibration
    is of the same baseline); Redis CPU is that of all six nodes.

Sizes follow this machine's speed (``bench.sizing``), so that a faster
machine measures the same thing rather than shorter runs dominated by fixed
latencies; the JSON records the machine's speed (``machine_speed``: the
baselines' rates) and the sizes chosen (``sizes_chosen``).

Timers for ``fire_ratio``, ``bytes_per_timer`` and ``recovery_s_per_million``
are stored by the product's own create scripts, pipelined per shard in
batches (``store_batch``): on one server ``create.lua`` (``Shard.create``,
the script ``TimerStore.create`` runs); on the cluster, as the product does
there when it has no id to propose, ``reserve_id.lua`` then
``create_reserved.lua``, each batch a pipeline on a plain connection to the
shard's master (every key of a shard shares its slot). The same keys,
fields and values as ``TimerStore.create`` (``populate_equivalence``
checks it), which costs one or two round trips per timer and would not fit
the time budget on 2 cores (``--populate create`` uses it anyway).

Alongside, CPU milliseconds per operation (from ``/proc``) of the API, the
consumer pool, the baselines and Redis, to show where the time goes.

Output: ``bench/results/latest.json`` (machine, versions, the git commit
measured and any uncommitted product files, configuration, every run's raw
values, targets and pass/fail), PNG plots beside it, and a table on stdout.
Logs are JSON lines on stderr. Exit status: 1 when a measurement failed, or
(not for ``tiny``) when a target is missed.
"""

import argparse
import calendar
import collections
import dataclasses
import datetime
import importlib.metadata
import json
import logging
import math
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import redis
import requests

from api.middleware import new_request_id
from bench import loadgen, report
from bench.baseline_app import record_fields
from bench.fast_receiver import FastReceiver
from bench.sizing import LATENESS_SHARE_OF_CREATE_RATE, lateness_rate, steady_rate, timers_for_work
from sharding import config, logs
from sharding.balancer import LeastBusy
from sharding.ids import ID_EPOCH_UNITS
from sharding.local_cluster import LocalCluster
from sharding.recovery import recover
from sharding.store import FEED_BATCH, TimerStore, now_ms
from tests.harness import BIN, RedisServer, Service, empty_cluster, free_cluster_port, json_lines, wait_until

log = logging.getLogger("bench.run")

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
HOOK_URL = "http://127.0.0.1:9000/hook"
POPULATE_BATCH = 1000
POPULATE_AIMED_BATCH = 100
POPULATE_PROCESSES = 3
# Open-loop creates per second per load-generator connection in the lateness runs (500/s over the
# 16 connections of the old fixed rate): more connections at a higher rate, so that the load
# generator's concurrency does not set the rate reached.
LATENESS_CONNECTION_RPS = 32

# Issue 16's table.
TARGETS = {
    "create_ratio": (">=", 0.85),
    "fire_ratio": (">=", 0.85),
    "lateness_p99_s": ("<=", 0.25),
    "bytes_per_timer": ("<=", 300),
    "recovery_s_per_million": ("<=", 30),
    "cluster_create_ratio": (">=", 0.75),
    "cluster_fire_ratio": (">=", 0.75),
}
UNITS = {"create_ratio": "x", "fire_ratio": "x", "lateness_p50_s": "s", "lateness_p99_s": "s",
         "lateness_max_s": "s", "bytes_per_timer": "B", "recovery_s_per_million": "s",
         "cluster_create_ratio": "x", "cluster_fire_ratio": "x"}
CLUSTER_NOTE = ("cluster_create_ratio and cluster_fire_ratio: the product with REDIS_CLUSTER_URL on a local "
                "cluster of 3 masters + 3 replicas (AOF on), every other setting as the single-Redis run, "
                "against the same baselines measured again alternately: bench.baseline_app on the single "
                "redis-server, and bare requests senders with the pool's concurrency.")
# Closed-loop load of the create benchmarks: processes x threads of bench.loadgen.
CREATE_LOAD = {"processes": 2, "threads": 4}


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark scale. Durations in seconds.

    Backlogs are sized by work time (``bench.sizing``): ``fire_work_s`` and
    ``recovery_work_s`` are the seconds of work wanted at the rate measured
    on this machine by calibration (runs of ``fire_calibration_s`` of the bare
    ``requests`` baseline; a recovery pass over ``recovery_calibration_timers``),
    up to ``fire_max_timers`` / ``recovery_max_timers``. Lateness runs at
    half the create rate the product reached in the same run.
    ``memory_timers`` is a fixed count: bytes per timer is a size, not a speed.
    The cluster part runs ``cluster_create_pairs`` create pairs of
    ``create_duration_s`` each and ``cluster_fire_pairs`` fire pairs of the
    backlog the single-Redis fire sizing chose. ``budget_s`` is the
    single-Redis part's time budget, ``cluster_budget_s`` the cluster part's
    (starting the cluster included).
    """

    name: str
    create_duration_s: float
    create_pairs: int
    fire_calibration_s: float
    fire_work_s: float
    fire_max_timers: int
    fire_pairs: int
    lateness_duration_s: float
    lateness_runs: int
    memory_timers: int
    memory_runs: int
    recovery_calibration_timers: int
    recovery_work_s: float
    recovery_max_timers: int
    recovery_runs: int
    cluster_create_pairs: int
    cluster_fire_pairs: int
    enforce_targets: bool
    budget_s: float
    cluster_budget_s: float


# Least backlog of a fire run, whatever the calibration measured.
FIRE_MIN_TIMERS = 500
# Calibration runs per sizing; the faster counts: the machine is shared, and a size chosen on a
# slow moment would take less than the work time when the machine is quiet.
CALIBRATION_RUNS = 2

SCALES = {
    "tiny": Scale("tiny", create_duration_s=1.0, create_pairs=1, fire_calibration_s=0.5, fire_work_s=1.0,
                  fire_max_timers=10_000, fire_pairs=1, lateness_duration_s=2.0, lateness_runs=1,
                  memory_timers=5_000, memory_runs=1, recovery_calibration_timers=2_000,
                  recovery_work_s=0.3, recovery_max_timers=50_000, recovery_runs=1,
                  cluster_create_pairs=1, cluster_fire_pairs=1,
                  enforce_targets=False, budget_s=45, cluster_budget_s=20),
    "quick": Scale("quick", create_duration_s=2.0, create_pairs=5, fire_calibration_s=1.5, fire_work_s=5.0,
                   fire_max_timers=60_000, fire_pairs=3, lateness_duration_s=10.0, lateness_runs=1,
                   memory_timers=100_000, memory_runs=1, recovery_calibration_timers=30_000,
                   recovery_work_s=3.0, recovery_max_timers=400_000, recovery_runs=2,
                   cluster_create_pairs=3, cluster_fire_pairs=2,
                   enforce_targets=True, budget_s=115, cluster_budget_s=60),
    "full": Scale("full", create_duration_s=5.0, create_pairs=5, fire_calibration_s=3.0, fire_work_s=20.0,
                  fire_max_timers=250_000, fire_pairs=3, lateness_duration_s=60.0, lateness_runs=2,
                  memory_timers=1_000_000, memory_runs=1, recovery_calibration_timers=100_000,
                  recovery_work_s=10.0, recovery_max_timers=1_500_000, recovery_runs=3,
                  cluster_create_pairs=5, cluster_fire_pairs=3,
                  enforce_targets=True, budget_s=840, cluster_budget_s=240),
}


class Budget:
    """The run's time budget: a run beyond a benchmark's first is skipped when it would end
    after that benchmark's share of its part's budget (a busy machine then yields fewer runs,
    which the JSON records, rather than a harness that overruns its time).

    Two parts run one after the other: single Redis (``total_s``), then the cluster
    (``cluster_s``, from the end of the first part's budget).
    """

    # Share of its part's budget spent when each benchmark should be done (they run in this order).
    SHARES = {"create_ratio": 0.32, "fire_ratio": 0.72, "lateness": 0.84, "bytes_per_timer": 0.88,
              "recovery_s_per_million": 0.97}
    CLUSTER_SHARES = {"cluster_create_ratio": 0.4, "cluster_fire_ratio": 0.97}

    def __init__(self, total_s=math.inf, cluster_s=0.0):
        self.start(total_s, cluster_s)

    def start(self, total_s, cluster_s=0.0):
        """Start the clock: ``total_s`` seconds for the single-Redis part, then ``cluster_s``."""
        self.started = time.monotonic()
        self.total_s = total_s
        self.cluster_s = cluster_s
        self.skipped = {}

    def deadline(self, name):
        """Monotonic time by which benchmark ``name`` should be done."""
        if name in self.CLUSTER_SHARES:
            return self.started + self.total_s + self.CLUSTER_SHARES[name] * self.cluster_s
        return self.started + self.SHARES[name] * self.total_s

    def another(self, name, done, last_s):
        """Whether benchmark ``name`` may start run ``done + 1`` (its last run took ``last_s`` seconds)."""
        if done == 0:
            return True
        ok = time.monotonic() + last_s <= self.deadline(name)
        if not ok:
            self.skipped[name] = self.skipped.get(name, 0) + 1
            log.warning("run skipped to stay within the time budget", extra={
                "benchmark": name, "runs_done": done, "budget_s": self.total_s + self.cluster_s})
        return ok


BUDGET = Budget()


class BaselineService(Service):
    """``bench.baseline_app`` on the project's gunicorn configuration (a ``tests.harness.Service``)."""

    COMMANDS = {"api": [os.path.join(BIN, "gunicorn"), "-c", "api/gunicorn_conf.py",
                        "bench.baseline_app:app"]}


# ---------------------------------------------------------------- helpers


def percentile(values, q):
    """Nearest-rank percentile ``q`` (0..1) of ``values`` (inf when empty)."""
    if not values:
        return math.inf
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def parse_fire_at(text):
    """RFC 3339 ``2026-11-29T17:30:05.123Z`` → epoch milliseconds."""
    secs = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    return secs * 1000 + int(text[20:23])


def _service_env():
    # tests.harness.Service forces a few settings for tests; keep the product's
    # defaults (or what the caller set) instead.
    return {"TIMER_API_WORKERS": os.environ.get("TIMER_API_WORKERS", "2"),
            "TIMER_RECOVERY_INTERVAL_SECONDS": os.environ.get("TIMER_RECOVERY_INTERVAL_SECONDS", "5")}


def populate(store, count, shards, delay_ms, url=HOOK_URL, mode="pipeline", processes=POPULATE_PROCESSES):
    """Store ``count`` pending timers, spread over ``shards`` shards in turn.

    Args:
        store: ``sharding.store.TimerStore``.
        delay_ms: milliseconds from now (Redis clock) to the fire time: an
            int, or a callable returning it, called for every timer just
            before it is queued for sending.
        mode: ``pipeline``: the product's create scripts pipelined per shard
            (:func:`store_batch`), ``POPULATE_BATCH`` timers per batch, in
            ``processes`` forked processes;
            ``create``: ``TimerStore.create`` one by one in 4 threads.
    Returns:
        (earliest, latest) fire time the script returned, epoch ms.
    """
    if mode == "create":
        return _populate_create(store, count, shards, delay_ms, url)
    if processes <= 1 or count < 4 * POPULATE_BATCH:
        return _populate_pipelined(store, count, shards, delay_ms, url)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    shares = [count // processes + (1 if p < count % processes else 0) for p in range(processes)]

    def child(share):
        try:
            results.put(_populate_pipelined(_fresh_store(store), share, shards, delay_ms, url))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
            results.put(repr(exc))

    children = [ctx.Process(target=child, args=(share,)) for share in shares]
    for process in children:
        process.start()
    got = [results.get(timeout=3600) for _ in children]
    for process in children:
        process.join()
    failed = [g for g in got if isinstance(g, str)]
    if failed:
        raise RuntimeError(f"populating failed: {failed}")
    return min(g[0] for g in got), max(g[1] for g in got)


def _fresh_store(store):
    """A new ``TimerStore`` like ``store`` (own connections, e.g. in a forked child)."""
    return TimerStore(store.url, store.retention_ms / 1000, cluster=store.topology.declared_keys_only,
                      live_shards=store.live_shards)


def store_batch(shard, count, delay_ms, url, request_id=new_request_id):
    """Store ``count`` timers on ``shard`` with the product's create scripts, pipelined.

    On one server ``create.lua`` (``Shard.create_timer`` on a pipeline): one
    round trip. Where scripts may touch only the keys in ``KEYS`` (a cluster:
    ``topology.declared_keys_only``), the id reserved first, as ``Shard`` does there
    when it has no id to propose: ``reserve_id.lua`` for every id in one pipeline,
    then ``create_reserved.lua`` for every timer
    in a second one; both on a plain connection to the master of the shard's
    slot (``topology.on_node``), which holds every key of the shard.

    Args:
        shard: ``sharding.shard.Shard``.
        delay_ms: as :func:`populate`'s, computed per timer as it is queued.
        url: the webhook url of every timer.
        request_id: callable returning each timer's request id (default: a new one, as the API's).
    Returns:
        list of [timer id, fire time epoch ms, now epoch ms], one per timer.
    """
    def delay():
        return int(delay_ms() if callable(delay_ms) else delay_ms)

    def work(node):
        if not shard.topology.declared_keys_only:
            pipe = node.pipeline(transaction=False)
            for _ in range(count):
                shard.create_timer(url, delay(), request_id(), client=pipe)
            return pipe.execute()
        pipe = node.pipeline(transaction=False)
        for _ in range(count):
            shard.reserve_id(keys=[shard.seq_key], args=[shard.index, ID_EPOCH_UNITS], client=pipe)
        ids = pipe.execute()
        pipe = node.pipeline(transaction=False)
        for timer_id in ids:
            # The ARGV of Shard's own create on a cluster: no fire time, no longest delay, no fields.
            shard.create_reserved(keys=[shard.record_key(timer_id), shard.due_key],
                                  args=[timer_id, url, delay(), request_id(), "", ""], client=pipe)
        return pipe.execute()

    return shard.topology.on_node(shard.redis, shard.seq_key, work)


def _populate_pipelined(store, count, shards, delay_ms, url):
    earliest, latest = math.inf, -math.inf
    # A delay aimed at a moment is computed per timer before its batch is sent:
    # smaller batches keep the fire times closer to the moment aimed at.
    batch = POPULATE_AIMED_BATCH if callable(delay_ms) else POPULATE_BATCH
    done = 0
    while done < count:
        n = min(batch, count - done)
        for index, mine in enumerate(shard_shares(done, n, shards)):
            if mine:
                fires = [int(fire) for _, fire, _ in store_batch(store.shard(index), mine, delay_ms, url)]
                earliest, latest = min(earliest, *fires), max(latest, *fires)
        done += n
    return earliest, latest


def shard_shares(start, count, shards):
    """How many of the timers numbered ``start`` .. ``start + count - 1`` each shard gets, when
    timer k goes to shard ``k % shards`` (timers spread over the shards in turn).

    Returns:
        list of ``shards`` ints (index: the shard), summing to ``count``.
    """
    return [len(range((index - start) % shards, count, shards)) for index in range(shards)]


def _populate_create(store, count, shards, delay_ms, url, threads=4):
    fires = []
    lock = threading.Lock()

    def work(offset):
        mine = []
        for k in range(offset, count, threads):
            delay = int(delay_ms() if callable(delay_ms) else delay_ms)
            _, record, _ = store.create(url, delay, k % shards, new_request_id())
            mine.append(record["fire_at"])
        with lock:
            fires.extend(mine)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return min(fires), max(fires)


def tree_cpu_s(root_pids):
    """CPU seconds (user + system) used so far by ``root_pids`` and all their descendants.

    Read from ``/proc`` (Linux); None where that is not available. Processes
    that already exited are not counted.
    """
    try:
        tick = os.sysconf("SC_CLK_TCK")
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                # After "pid (comm)": state ppid ... utime (14th field) stime (15th).
                stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    except (OSError, ValueError):
        return None
    children = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, [p for p in root_pids if p in stats], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo += children.get(pid, [])
    return total


def _children_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _per_op_ms(before, after, ops):
    if before is None or after is None or not ops:
        return None
    return round((after - before) * 1000 / ops, 3)


def _wait_aof_idle(client, timeout_s=120):
    def idle():
        info = client.info("persistence")
        return not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled")
    wait_until(idle, timeout=timeout_s, interval=0.2, message="AOF rewrite to finish")


# ---------------------------------------------------------------- create_ratio


def bench_create(product, baseline, redis_pids, scale, name="create_ratio", pairs=None):
    """Alternating closed-loop ``POST /timers`` runs (load ``CREATE_LOAD``) on the product and the baseline.

    Args:
        product, baseline: started ``tests.harness.Service`` objects (their ``api``).
        redis_pids: ``{"product": [pid, ...], "baseline": [pid, ...]}``, the Redis
            servers each one writes to, for their CPU time.
        name: the benchmark's name in the time budget (``Budget``).
        pairs: how many pairs at most (default ``scale.create_pairs``).
    Returns:
        dict with ``value`` (median of per-pair product/baseline ratios) and raw values:
        requests per second, and CPU milliseconds per 201 of the API's processes and of Redis.
    """
    payload = {"seconds": 3600, "url": HOOK_URL}
    services = {"product": product, "baseline": baseline}
    for service in services.values():  # warm-up: connections, imports, caches
        loadgen.run(service.url, "/timers", payload, 0.5, **CREATE_LOAD)
    product, baseline, order = [], [], []
    last_s = 0.0
    for pair in range(scale.create_pairs if pairs is None else pairs):
        if not BUDGET.another(name, pair, last_s):
            break
        began = time.monotonic()
        # Alternate which one goes first, so a drift in background load hits both alike.
        first = ("product", "baseline") if pair % 2 == 0 else ("baseline", "product")
        got = {}
        for who in first:
            api_pid = [services[who].processes["api"].pid]
            before = tree_cpu_s(api_pid), tree_cpu_s(redis_pids[who])
            got[who] = loadgen.run(services[who].url, "/timers", payload, scale.create_duration_s,
                                   **CREATE_LOAD)
            after = tree_cpu_s(api_pid), tree_cpu_s(redis_pids[who])
            got[who]["api_cpu_ms"] = _per_op_ms(before[0], after[0], got[who]["created"])
            got[who]["redis_cpu_ms"] = _per_op_ms(before[1], after[1], got[who]["created"])
        product.append(got["product"])
        baseline.append(got["baseline"])
        order.append(list(first))
        last_s = time.monotonic() - began
    ratios = [p["rps"] / b["rps"] if b["rps"] else math.nan for p, b in zip(product, baseline, strict=True)]
    return {
        "value": statistics.median(ratios),
        "runs": len(product),
        "duration_s": scale.create_duration_s,
        "load": dict(CREATE_LOAD),
        "baseline_record_fields": list(record_fields()),
        "product_rps": [round(p["rps"], 1) for p in product],
        "baseline_rps": [round(b["rps"], 1) for b in baseline],
        "product_non_201": [p["other"] + p["errors"] for p in product],
        "baseline_non_201": [b["other"] + b["errors"] for b in baseline],
        "pair_ratios": [round(r, 4) for r in ratios],
        "order": order,
        "product_rps_median": statistics.median(p["rps"] for p in product),
        "baseline_rps_median": statistics.median(b["rps"] for b in baseline),
        "product_api_cpu_ms_per_201": [p["api_cpu_ms"] for p in product],
        "baseline_api_cpu_ms_per_201": [b["api_cpu_ms"] for b in baseline],
        "product_redis_cpu_ms_per_201": [p["redis_cpu_ms"] for p in product],
        "baseline_redis_cpu_ms_per_201": [b["redis_cpu_ms"] for b in baseline],
    }


# ---------------------------------------------------------------- fire_ratio


def consumers_started(service):
    """How many "Huey consumer started" lines the service's workers log holds."""
    return sum("Huey consumer started" in str(line.get("message", ""))
               for line in json_lines(service.logs("workers")))


def wait_idle(pids, max_cores=0.25, window_s=0.5, timeout_s=30.0):
    """Wait until ``pids`` and their descendants use less than ``max_cores`` cores over ``window_s`` seconds.

    The consumer pool keeps starting up for a while after its consumers log
    that they started; a rate measured meanwhile is the start-up's, not the
    machine's.

    Returns:
        seconds waited, or None when not idle within ``timeout_s`` (or no ``/proc``).
    """
    began = time.monotonic()
    before = tree_cpu_s(pids)
    while before is not None and time.monotonic() - began < timeout_s:
        time.sleep(window_s)
        after = tree_cpu_s(pids)
        if after is not None and after - before < max_cores * window_s:
            return round(time.monotonic() - began, 2)
        before = after
    return None


def fire_product_run(store, receiver, count, shards, populate_mode, est_rate, pool_pids=(), redis_pids=()):
    """One backlog of ``count`` timers all due at T, delivered by the running pool.

    T is the earliest fire time the create script returned. Each timer's
    delay is computed from the local clock just before it is queued in its
    pipeline, so the actual fire times spread a little after T (by the
    pipeline's latency: ``fire_spread_ms``, tens to a few hundred ms); taking
    the earliest makes the rate conservative.

    Args:
        est_rate: expected storing rate (timers/s), to put T after the last store.
        pool_pids: pids of the consumer pool and coordinator, for their CPU time.
        redis_pids: pids of the Redis servers holding the shards, for their CPU time.
    Returns:
        dict: ``rate`` (webhooks/s = delivered / (last arrival - T)), ``seconds``,
        ``delivered`` (distinct timers), ``duplicates``, ``store_rate``, ``fire_spread_ms``,
        ``backlog_late`` (True if storing ended after T: the figure is then unreliable),
        ``cpu_ms`` and ``redis_cpu_ms`` (CPU milliseconds per delivery of the pool and of
        Redis, from T to the last arrival).
    """
    receiver.reset()
    url = receiver.url + "/hook"
    aim_ms = int((time.time() + count / est_rate * 1.5 + 1.0) * 1000)
    began = time.time()
    earliest, latest = populate(store, count, shards, lambda: aim_ms - int(time.time() * 1000), url,
                                populate_mode)
    stored = time.time()
    t_fire = earliest / 1000
    late = stored > t_fire - 0.05
    if late:
        log.warning("backlog still being stored at its fire time", extra={"late_s": stored - t_fire})
    time.sleep(max(0.0, t_fire - time.time()))
    before = tree_cpu_s(pool_pids), tree_cpu_s(redis_pids)
    receiver.wait_for(count, timeout_s=max(60.0, count / 50), settle_s=0)
    after = tree_cpu_s(pool_pids), tree_cpu_s(redis_pids)
    receiver.wait_for(count, timeout_s=0)
    first = {}
    arrivals = receiver.arrivals()
    for key, at in arrivals:
        first.setdefault(key, at)
    last = max(first.values()) if first else math.nan
    seconds = last - t_fire
    delivered = len(first)
    return {"rate": delivered / seconds if delivered else 0.0, "seconds": round(seconds, 3),
            "timers": count, "delivered": delivered, "duplicates": len(arrivals) - delivered,
            "store_rate": round(count / (stored - began), 1),
            "fire_spread_ms": latest - earliest, "backlog_late": late,
            "cpu_ms": _per_op_ms(before[0], after[0], delivered),
            "redis_cpu_ms": _per_op_ms(before[1], after[1], delivered)}


def _baseline_sender(url, threads, counter, count, ready, go, start_at, stop_at):
    def work():
        session = requests.Session()
        session.trust_env = False
        with ready.get_lock():
            ready.value += 1
        go.wait()
        time.sleep(max(0.0, start_at.value - time.time()))
        while not (stop_at.value and time.time() >= stop_at.value):
            with counter.get_lock():
                k = counter.value
                counter.value += 1
            if k >= count:
                break
            try:
                session.post(f"{url}/{k + 1}", data=b"", timeout=10).close()
            except requests.RequestException:
                pass
        session.close()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def fire_baseline_run(receiver, count, processes, threads, redis_pids=(), duration_s=None):
    """``count`` bare ``requests`` POSTs (empty body) from ``processes`` x ``threads`` sessions.

    Args:
        redis_pids: pids of the Redis servers of the product (idle meanwhile), for their CPU time.
        duration_s: if given, no request starts later than ``duration_s`` seconds
            after the start (a time-bounded run, to measure the rate; ``count``
            is then an upper bound).
    Returns:
        dict: ``rate`` (requests/s = delivered / (last arrival - start)), ``seconds``,
        ``timers`` (requests sent), ``delivered``, ``cpu_ms`` (CPU milliseconds per
        request of the sender processes, start-up included) and ``redis_cpu_ms``
        (idem for Redis, from the start).
    """
    cpu_before = _children_cpu_s()
    receiver.reset()
    ctx = multiprocessing.get_context("fork")
    counter, ready = ctx.Value("q", 0), ctx.Value("i", 0)
    start_at, stop_at, go = ctx.Value("d", 0.0), ctx.Value("d", 0.0), ctx.Event()
    children = [ctx.Process(target=_baseline_sender, args=(
        receiver.url + "/hook", threads, counter, count, ready, go, start_at, stop_at))
        for _ in range(processes)]
    for child in children:
        child.start()
    wait_until(lambda: ready.value >= processes * threads, timeout=30, message="baseline senders")
    start_at.value = time.time() + 0.2
    if duration_s is not None:
        stop_at.value = start_at.value + duration_s
    go.set()
    redis_before = tree_cpu_s(redis_pids)
    # Each sender waits for every answer, so once they exit every request has arrived.
    for child in children:
        child.join(max(60.0, count / 50))
    sent = min(counter.value, count)
    receiver.wait_for(sent, timeout_s=30)
    redis_after = tree_cpu_s(redis_pids)
    cpu_after = _children_cpu_s()
    first = {}
    for key, at in receiver.arrivals():
        first.setdefault(key, at)
    seconds = (max(first.values()) if first else math.nan) - start_at.value
    run = {"rate": len(first) / seconds if first else 0.0, "seconds": round(seconds, 3),
           "timers": sent, "delivered": len(first),
           "cpu_ms": _per_op_ms(cpu_before, cpu_after, len(first)),
           "redis_cpu_ms": _per_op_ms(redis_before, redis_after, len(first))}
    if duration_s is not None:
        run["steady_rate"] = steady_rate(first.values(), start_at.value, stop_at.value)
    return run


def bench_fire(service, store, receiver, scale, settings, populate_mode, redis_pids=(), name="fire_ratio",
               pairs=None, sizing=None):
    """Alternating backlog runs: the product's pool vs bare ``requests`` with the same concurrency.

    The backlog is sized by work time: time-bounded calibration runs of the
    baseline (``scale.fire_calibration_s`` each, once the pool is idle)
    measure the machine's steady rate (``steady_rate``; the faster run
    counts), and every run's backlog takes ``scale.fire_work_s`` seconds at
    that rate (up to ``scale.fire_max_timers``).

    Args:
        redis_pids: pids of the Redis servers holding the shards, for their CPU time.
        name: the benchmark's name in the time budget (``Budget``).
        pairs: how many pairs at most (default ``scale.fire_pairs``).
        sizing: the sizing of an earlier run of the same baseline (its
            ``sizing``) to use instead of calibrating again.
    Returns:
        dict with ``value`` (median of per-pair product/baseline rate ratios), ``sizing``
        (``bench.sizing.timers_for_work``, with the calibration runs) and raw runs.
    """
    processes = settings.shards * settings.workers_per_shard
    threads = settings.consumer_threads
    wait_until(lambda: consumers_started(service) >= processes, timeout=60,
               message="every consumer to log 'Huey consumer started'")
    pool_pids = [service.processes[process].pid for process in ("workers", "coordinator")]
    idle_after_s = wait_idle(pool_pids)
    if sizing is None:
        calibration = [fire_baseline_run(receiver, scale.fire_max_timers, processes, threads,
                                         duration_s=scale.fire_calibration_s)
                       for _ in range(CALIBRATION_RUNS)]
        sizing = dict(timers_for_work(max(c["steady_rate"] for c in calibration), scale.fire_work_s,
                                      FIRE_MIN_TIMERS, scale.fire_max_timers),
                      calibration=calibration)
    sizing = dict(sizing, pool_idle_after_s=idle_after_s)
    log.info("fire backlog sized", extra=sizing)
    timers = sizing["timers"]
    est_rate = 5_000.0 if populate_mode == "pipeline" else 1_000.0
    product, baseline, order = [], [], []
    last_s = 0.0
    for pair in range(scale.fire_pairs if pairs is None else pairs):
        if not BUDGET.another(name, pair, last_s):
            break
        began = time.monotonic()
        first = ("product", "baseline") if pair % 2 == 0 else ("baseline", "product")
        for who in first:
            if who == "product":
                run = fire_product_run(store, receiver, timers, settings.shards, populate_mode, est_rate,
                                       pool_pids, redis_pids)
                est_rate = max(500.0, run["store_rate"])
                product.append(run)
            else:
                baseline.append(fire_baseline_run(receiver, timers, processes, threads, redis_pids))
            log.info("fire run", extra={"who": who, **(product[-1] if who == "product" else baseline[-1])})
            time.sleep(0.3)  # let the last outcomes be recorded before the next run
        order.append(list(first))
        last_s = time.monotonic() - began
    ratios = [p["rate"] / b["rate"] if b["rate"] else math.nan
              for p, b in zip(product, baseline, strict=True)]
    return {
        "value": statistics.median(ratios),
        "runs": len(product),
        "timers": timers,
        "sizing": sizing,
        "concurrency": {"processes": processes, "threads_per_process": threads,
                        "total": processes * threads},
        "product_rate": [round(p["rate"], 1) for p in product],
        "baseline_rate": [round(b["rate"], 1) for b in baseline],
        "product_cpu_ms_per_webhook": [p["cpu_ms"] for p in product],
        "baseline_cpu_ms_per_webhook": [b["cpu_ms"] for b in baseline],
        "pair_ratios": [round(r, 4) for r in ratios],
        "order": order,
        "product_runs": product,
        "baseline_runs": baseline,
    }


# ---------------------------------------------------------------- lateness


def lateness_run(api_url, receiver, rate, duration_s):
    """Create timers at ``rate``/s for ``duration_s`` s (1 or 2 s delay), then measure their lateness.

    Creation is open loop, on one connection per ``LATENESS_CONNECTION_RPS``
    of the rate (at least 16): when the API cannot keep up, fewer timers are
    created (``create_rate`` < ``rate``, ``rate_reached`` False); lateness is
    still measured on those that were.

    Returns:
        (summary dict, list of lateness samples in seconds).
    """
    receiver.reset()
    url = receiver.url + "/hook"
    payloads = [{"seconds": 1, "url": url}, {"seconds": 2, "url": url}]
    threads = max(8, math.ceil(rate / LATENESS_CONNECTION_RPS / 2))
    created = loadgen.run(api_url, "/timers", payloads, duration_s, processes=2, threads=threads, rate=rate,
                          collect=True)
    fire_ms = {str(b["id"]): parse_fire_at(b["fire_at"]) for b in created["bodies"]}
    receiver.wait_for(len(fire_ms), timeout_s=30)
    first = {}
    for key, at in receiver.arrivals():
        first.setdefault(key, at)
    samples = [first[k] - fire / 1000 for k, fire in fire_ms.items() if k in first]
    missing = len(fire_ms) - len(samples)
    counted = samples + [math.inf] * missing
    summary = {
        "timers": len(fire_ms), "delivered": len(samples), "missing": missing,
        "scheduled": created["scheduled"], "connections": 2 * threads,
        "create_rate": round(created["created"] / duration_s, 1),
        "create_non_201": created["other"] + created["errors"],
        "rate_reached": created["created"] >= 0.95 * created["scheduled"],
        "p50_s": percentile(counted, 0.50), "p99_s": percentile(counted, 0.99),
        "max_s": max(counted) if counted else math.inf,
        "min_s": min(samples) if samples else math.nan,
    }
    return summary, samples


def bench_lateness(api_url, receiver, scale, product_create_rps):
    """Lateness runs at half the product's create rate; figures are medians over runs of each
    run's p50, p99 and max (seconds).

    Args:
        product_create_rps: the create benchmark's median product rate (201s per second);
            the runs create at ``bench.sizing.lateness_rate`` of it.
    Raises:
        ValueError: no create rate (the create benchmark failed).
    """
    rate = lateness_rate(product_create_rps)
    runs, samples = [], []
    last_s = 0.0
    for done in range(scale.lateness_runs):
        if not BUDGET.another("lateness", done, last_s):
            break
        began = time.monotonic()
        summary, got = lateness_run(api_url, receiver, rate, scale.lateness_duration_s)
        last_s = time.monotonic() - began
        runs.append(summary)
        samples += got
        log.info("lateness run", extra=summary)
        time.sleep(0.5)
    return {
        "p50": statistics.median(r["p50_s"] for r in runs),
        "p99": statistics.median(r["p99_s"] for r in runs),
        "max": statistics.median(r["max_s"] for r in runs),
        "runs": len(runs), "rate_per_s": rate,
        "sizing": {"product_create_rps": round(product_create_rps, 1),
                   "share": LATENESS_SHARE_OF_CREATE_RATE, "rate_per_s": rate},
        "duration_s": scale.lateness_duration_s, "delay_s": [1, 2], "raw": runs,
    }, samples


# ---------------------------------------------------------------- bytes_per_timer


def bench_memory(store, client, scale, shards, populate_mode):
    """``used_memory`` growth per pending timer (1 h delay), on an emptied Redis.

    Returns:
        dict with ``value`` (median bytes per timer over runs) and raw values.
    """
    runs = []
    last_s = 0.0
    for done in range(scale.memory_runs):
        if not BUDGET.another("bytes_per_timer", done, last_s):
            break
        began_run = time.monotonic()
        client.flushall()
        _wait_aof_idle(client)
        for index in range(shards):
            store.shard(index).redis.ping()  # connections exist before "before"
        time.sleep(0.5)
        before = client.info("memory")
        began = time.monotonic()
        populate(store, scale.memory_timers, shards, 3_600_000, HOOK_URL, populate_mode)
        stored_s = time.monotonic() - began
        _wait_aof_idle(client)
        time.sleep(1.0)
        after = client.info("memory")
        run = {
            "timers": scale.memory_timers,
            "used_memory_before": before["used_memory"], "used_memory_after": after["used_memory"],
            "bytes_per_timer": (after["used_memory"] - before["used_memory"]) / scale.memory_timers,
            "dataset_bytes_per_timer": (after["used_memory_dataset"] - before["used_memory_dataset"])
            / scale.memory_timers,
            "keys": client.dbsize(), "store_seconds": round(stored_s, 2),
        }
        runs.append(run)
        log.info("memory run", extra=run)
        last_s = time.monotonic() - began_run
    return {"value": statistics.median(r["bytes_per_timer"] for r in runs), "runs": len(runs),
            "timers": scale.memory_timers, "url": HOOK_URL, "request_id_chars": len(new_request_id()),
            "raw": runs}


def populate_equivalence(store):
    """Check that :func:`populate` stores what ``TimerStore.create`` stores (same fields, same size),
    on one server or a cluster (``store``'s topology).

    Also measures what the generated request id (12 characters) adds to one record.

    Returns:
        dict: ``equal`` (same fields, same values but the fire time, and the
        same ``DUMP`` length: ``MEMORY USAGE`` also counts the allocator's
        rounding, which differs with the server's history), the records' field
        names, their ``MEMORY USAGE`` (bytes), and ``request_id_bytes``:
        ``MEMORY USAGE`` with the request id minus without (empty, as
        ``TimerStore.create`` stores by default).
    """
    rid = new_request_id()
    timer_id, _, _ = store.create(HOOK_URL, 3_600_000, 0, rid)
    shard = store.shard(0)
    (other, _, _), = store_batch(shard, 1, 3_600_000, HOOK_URL, request_id=lambda: rid)
    bare_id, _, _ = store.create(HOOK_URL, 3_600_000, 0)

    def compare(node):
        one, two = node.hgetall(shard.record_key(timer_id)), node.hgetall(shard.record_key(other))
        # Every field equal but the fire time (a few ms apart).
        same = bool(one) and set(one) == set(two) and all(one[k] == two[k] for k in one if k != b"f")
        usage = [node.memory_usage(shard.record_key(key)) for key in (timer_id, other, bare_id)]
        same = same and len(node.dump(shard.record_key(timer_id))) == len(node.dump(shard.record_key(other)))
        return {"equal": same, "fields": sorted(k.decode() for k in one),

                "memory_usage": usage[:2], "request_id_bytes": usage[0] - usage[2]}

    return shard.topology.on_node(shard.redis, shard.seq_key, compare)


# ---------------------------------------------------------------- recovery


def _hide_all(store, shards, visibility_ms):
    """Feed every due timer with the shard's feed script and drop the ids (lost messages)."""
    hidden = 0
    for index in range(shards):
        shard = store.shard(index)
        while True:
            ids = shard.feed(keys=[shard.due_key], args=[FEED_BATCH, visibility_ms])
            hidden += len(ids)
            if len(ids) < FEED_BATCH:
                break
    return hidden


def _recovery_pass(store, balancer, settings, visibility_ms):
    """Hide every due timer, then time one full ``recover`` pass.

    Returns:
        (hidden count, seconds of the pass, ``recover``'s counts).
    """
    hidden = _hide_all(store, settings.shards, visibility_ms)
    began = time.perf_counter()
    counts = recover(store, balancer, settings.shards, settings.retry_limits, visibility_ms, grace_ms=None)
    return hidden, time.perf_counter() - began, counts


def bench_recovery(store, client, scale, settings, populate_mode):
    """Time full recovery passes over N orphaned timers, N sized by work time.

    Calibration passes over ``scale.recovery_calibration_timers`` orphans
    measure the pass rate (the faster counts); more are stored until a pass takes
    ``scale.recovery_work_s`` seconds at that rate (up to
    ``scale.recovery_max_timers``), and the measured passes run over them all.

    Returns:
        dict with ``value`` (median seconds per million), ``sizing``
        (``bench.sizing.timers_for_work``, with the calibration passes) and raw values.
    """
    client.flushall()
    shards = settings.shards
    visibility_ms = int(settings.visibility_seconds * 1000)
    balancer = LeastBusy(store.loads, shards)
    stored = scale.recovery_calibration_timers
    populate(store, stored, shards, 0, HOOK_URL, populate_mode)
    time.sleep(0.01)  # every fire time is now in the past
    seconds = [_recovery_pass(store, balancer, settings, visibility_ms)[1] for _ in range(CALIBRATION_RUNS)]
    sizing = dict(timers_for_work(stored / min(seconds), scale.recovery_work_s, stored,
                                  scale.recovery_max_timers),
                  calibration={"timers": stored, "seconds": [round(t, 4) for t in seconds]})
    log.info("recovery size chosen", extra=sizing)
    timers = sizing["timers"]
    populate(store, timers - stored, shards, 0, HOOK_URL, populate_mode)
    time.sleep(0.01)
    runs = []
    last_s = 0.0
    for done in range(scale.recovery_runs):
        if not BUDGET.another("recovery_s_per_million", done, last_s):
            break
        began_run = time.monotonic()
        hidden, seconds, counts = _recovery_pass(store, balancer, settings, visibility_ms)
        now = now_ms(client)
        due = sum(client.zcount(store.shard(i).due_key, "-inf", now) for i in range(shards))
        run = {"timers": timers, "hidden": hidden, "seconds": round(seconds, 4),
               "s_per_million": seconds * 1e6 / timers, "recovered": counts["lost"],
               "due_after": due, "all_due_again": due == timers == counts["lost"] == hidden}
        runs.append(run)
        log.info("recovery run", extra=run)
        last_s = time.monotonic() - began_run
    if not all(r["all_due_again"] for r in runs):
        raise AssertionError(f"recovery did not make every orphan due again: {runs}")
    return {"value": statistics.median(r["s_per_million"] for r in runs), "runs": len(runs),
            "timers": timers, "sizing": sizing, "scaled": "linear, seconds * 1e6 / timers", "raw": runs}


# ---------------------------------------------------------------- the cluster


def bench_cluster(work, settings, redis_server, client, receiver, scale, populate_mode, fire_sizing,
                  errors, load):
    """``create_ratio`` and ``fire_ratio`` again, with the product's shards on a local Redis Cluster.

    Starts a ``sharding.local_cluster.LocalCluster`` (3 masters + 3 replicas,
    AOF on) under ``work`` and runs the product on it: ``REDIS_CLUSTER_URL``,
    every other setting as in the single-Redis run (same ``TIMER_SHARDS``,
    same pool). Its pairs are with the same baselines as the single-Redis
    figures, measured again side by side: ``bench.baseline_app`` on
    ``redis_server`` (emptied first), and the bare ``requests`` senders.
    Each benchmark is a :func:`_step` of its own (a failure is recorded in
    ``errors``, not raised); the cluster and its processes are stopped on return.

    Args:
        client: a client of ``redis_server`` with a long socket timeout.
        fire_sizing: the single-Redis fire benchmark's ``sizing``, whose
            backlog the cluster's fire runs use (None: calibrate again).
        errors, load: as :func:`_step`'s.
    Returns:
        (metrics, details, layout): ``cluster_create_ratio`` and
        ``cluster_fire_ratio`` where measured, their raw runs (as
        :func:`bench_create`'s and :func:`bench_fire`'s; the fire's with
        ``populate_equivalence`` on the cluster), and the cluster's
        ``masters``, ``nodes``, ``shards_per_master`` ({"host:port": n}) and
        ``start_s`` (seconds to start and form it).
    Raises:
        TimeoutError, subprocess.CalledProcessError: the cluster did not form.
    """
    metrics, details = {}, {}
    client.flushall()  # the single-Redis backlogs: the baseline app writes to this server
    _wait_aof_idle(client)
    began = time.monotonic()
    cluster = LocalCluster(os.path.join(work, "cluster"), free_cluster_port()).start()
    product = baseline = None
    try:
        layout = {"masters": len(cluster.masters()), "nodes": len(cluster.ports),
                  "start_s": round(time.monotonic() - began, 2)}
        log.info("local cluster started", extra=layout)
        node_pids = [process.pid for process in cluster.processes.values()]
        env = {**_service_env(), "REDIS_CLUSTER_URL": cluster.url, "REDIS_URL": ""}
        product_dir, baseline_dir = _log_dirs(work, "cluster-product", "cluster-baseline")
        product = Service(None, product_dir, env).start("api")
        baseline = BaselineService(redis_server.url, baseline_dir, _service_env()).start(
            "api", ready_path="/healthz")
        created = _step("cluster_create_ratio", errors, lambda: bench_create(
            product, baseline, {"product": node_pids, "baseline": [redis_server.process.pid]}, scale,
            name="cluster_create_ratio", pairs=scale.cluster_create_pairs), load=load)
        stop_all(baseline)
        baseline = None
        if created:
            metrics["cluster_create_ratio"], details["cluster_create_ratio"] = created["value"], created

        product.stop("api")
        empty_cluster(cluster)
        product.start("workers", "coordinator")
        store = dataclasses.replace(settings, redis_url=None, redis_cluster_url=cluster.url).store()
        sizing = dict(fire_sizing, reused_from="fire_ratio") if fire_sizing else None
        fired = _step("cluster_fire_ratio", errors, lambda: bench_fire(
            product, store, receiver, scale, settings, populate_mode, node_pids, name="cluster_fire_ratio",
            pairs=scale.cluster_fire_pairs, sizing=sizing), load=load)
        if fired:
            fired["populate_equivalence"] = _step("cluster_populate_equivalence", errors,
                                                  populate_equivalence, store)
            metrics["cluster_fire_ratio"], details["cluster_fire_ratio"] = fired["value"], fired
        layout["shards_per_master"] = dict(collections.Counter(
            store.topology.master_of(store.shard(index).seq_key) for index in range(settings.shards)))
    finally:
        for service in (product, baseline):
            if service:
                service.stop()
        cluster.stop()
    return metrics, details, layout


# ---------------------------------------------------------------- environment


def machine_info():
    """Cores, memory (bytes), CPU model, OS, load average."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "cpu model", "hardware")):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu_model": model, "memory_bytes": memory,
            "platform": platform.platform(), "loadavg_start": list(os.getloadavg())}


def product_revision():
    """The git commit measured, and which product files (api/, sharding/, workers/) differ from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True).stdout
    try:
        return {"commit": git("rev-parse", "HEAD").strip(),
                "modified": git("status", "--porcelain", "--", "api", "sharding", "workers").splitlines()}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "modified": []}


def versions(client):
    """Versions of Python, the libraries measured, and redis-server."""
    out = {"python": platform.python_version()}
    for name, dist in (("falcon", "falcon"), ("gunicorn", "gunicorn"), ("redis-py", "redis"),
                       ("huey", "huey"), ("requests", "requests"), ("matplotlib", "matplotlib"),
                       ("locust", "locust")):
        try:
            out[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["redis-server"] = client.info("server")["redis_version"]
    return out


SIZING_RULE = ("Sized by work time, not by count: each backlog takes the scale's work seconds at the "
               "rate calibration measured on this machine (fire: time-bounded runs of the bare requests "
               "baseline; recovery: passes over fewer orphans; the faster of two runs counts), within a "
               "cap; lateness creates at half the product's measured create rate; create runs are "
               "fixed-duration; bytes_per_timer is a size, measured at a fixed count.")


def machine_speed(details):
    """The machine's speed as its baselines measured it (comparable across machines).

    Returns:
        dict: ``baseline_create_rps`` (median 201s per second of ``bench.baseline_app``),
        ``baseline_fire_rate`` (median webhooks per second of the bare ``requests``
        senders over the pairs) and ``baseline_fire_rate_calibration`` (their steady
        rate in the faster time-bounded calibration run); None where not measured.
    """
    create, fire = details.get("create_ratio"), details.get("fire_ratio")
    return {
        "baseline_create_rps": round(create["baseline_rps_median"], 1) if create else None,
        "baseline_fire_rate": round(statistics.median(fire["baseline_rate"]), 1) if fire else None,
        "baseline_fire_rate_calibration": round(fire["sizing"]["rate_per_s"], 1) if fire else None,
    }


def sizes_chosen(scale, details):
    """Per benchmark, the size used in this run and the rule that chose it (see ``SIZING_RULE``)."""
    fixed = {"duration_s": scale.create_duration_s, "rule": "fixed duration per run"}
    out = {"rule": SIZING_RULE, "create_ratio": fixed, "cluster_create_ratio": fixed,
           "bytes_per_timer": {"timers": scale.memory_timers,
                               "rule": "fixed count: a size, not a speed (hash tables grow by count)"}}
    for name in ("fire_ratio", "lateness", "recovery_s_per_million", "cluster_fire_ratio"):
        if name in details:
            out[name] = details[name]["sizing"]
    return out


def evaluate(metrics, details):
    """Per target: value, comparison, threshold, whether the measurement's conditions held, and pass.

    A target passes when its value is there, meets the threshold, and the
    measurement ran as specified (for lateness: the API took the whole
    creation rate); otherwise ``note`` says why not.
    """
    out = {}
    for name, (op, threshold) in TARGETS.items():
        value = metrics.get(name)
        meets = value is not None and not math.isnan(value) and (
            value >= threshold if op == ">=" else value <= threshold)
        entry = {"value": value, "op": op, "target": threshold, "meets_threshold": bool(meets),
                 "conditions_met": value is not None}
        if name.startswith("lateness") and "lateness" in details:
            runs = details["lateness"]["raw"]
            if not all(r["rate_reached"] for r in runs):
                entry["conditions_met"] = False
                entry["note"] = (f"measured at {min(r['create_rate'] for r in runs):.0f} timers/s, not the "
                                 f"{details['lateness']['rate_per_s']}/s asked (half the reached create "
                                 "rate): the API did not keep up")
        entry["pass"] = bool(meets and entry["conditions_met"])
        out[name] = entry
    return out


# ---------------------------------------------------------------- main


def stop_all(service, timeout_s=15):
    """SIGTERM every process of ``service`` at once, then wait for each (SIGKILL after ``timeout_s``)."""
    for process in service.processes.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in service.processes.values():
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    service.processes.clear()


def _log_dirs(work, *names):
    """Make directories ``work/<name>`` for each of ``names``; return their paths in order."""
    paths = [os.path.join(work, name) for name in names]
    for path in paths:
        os.makedirs(path)
    return paths


def _step(name, errors, func, *args, load=None):
    """Run one benchmark; on failure log it, record the error and return None.

    ``load`` (a dict) gets the 1-minute load average before and after, under ``name``.
    """
    log.info("benchmark starting", extra={"benchmark": name})
    if load is not None:
        load[name] = [round(os.getloadavg()[0], 2)]
    began = time.monotonic()
    try:
        result = func(*args)
    except Exception as exc:  # noqa: BLE001 - one failed benchmark must not lose the others
        log.error("benchmark failed", extra={"benchmark": name, "error": repr(exc),
                                             "traceback": traceback.format_exc()})
        errors[name] = repr(exc)
        return None
    finally:
        if load is not None:
            load[name].append(round(os.getloadavg()[0], 2))
    log.info("benchmark done", extra={"benchmark": name, "seconds": round(time.monotonic() - began, 1)})
    return result


def run(scale, populate_mode="pipeline", results_dir=RESULTS_DIR):
    """Run every benchmark at ``scale``; write ``latest.json``, ``<scale>.json`` and plots to ``results_dir``.

    Returns:
        the result document (dict).
    """
    BUDGET.start(scale.budget_s, scale.cluster_budget_s)
    started = time.time()
    doc_machine, doc_versions, revision = machine_info(), {}, product_revision()
    settings = config.load()
    work = tempfile.mkdtemp(prefix="timer-bench-")
    redis_server = RedisServer(work)
    receiver = FastReceiver(os.path.join(work, "receiver"), processes=2)
    product = baseline = cluster_layout = None
    errors, metrics, details, load = {}, {}, {}, {}
    samples = []
    try:
        redis_server.start()
        # Our own client, with room for slow admin commands (FLUSHALL of a million keys):
        # redis-py's default socket timeout is 5 s.
        client = redis.Redis.from_url(redis_server.url, socket_timeout=600)
        store = dataclasses.replace(settings, redis_url=redis_server.url).store()
        doc_versions = versions(client)
        receiver.start()

        product_dir, baseline_dir = _log_dirs(work, "product", "baseline")
        product = Service(redis_server.url, product_dir, _service_env())
        baseline = BaselineService(redis_server.url, baseline_dir, _service_env())
        product.start("api")
        baseline.start("api", ready_path="/healthz")
        redis_pids = [redis_server.process.pid]
        created = _step("create_ratio", errors, bench_create, product, baseline,
                        {"product": redis_pids, "baseline": redis_pids}, scale, load=load)
        stop_all(baseline)
        if created:
            metrics["create_ratio"], details["create_ratio"] = created["value"], created
        client.flushall()

        product.start("workers", "coordinator")
        fired = _step("fire_ratio", errors, bench_fire, product, store, receiver, scale, settings,
                      populate_mode, redis_pids, load=load)
        if fired:
            metrics["fire_ratio"], details["fire_ratio"] = fired["value"], fired

        late = _step("lateness", errors, bench_lateness, product.url, receiver, scale,
                     created["product_rps_median"] if created else None, load=load)
        if late:
            summary, samples = late
            metrics.update(lateness_p50_s=summary["p50"], lateness_p99_s=summary["p99"],
                           lateness_max_s=summary["max"])
            details["lateness"] = summary
        stop_all(product)
        product = None

        equivalence = _step("populate_equivalence", errors, populate_equivalence, store, load=load)
        memory = _step("bytes_per_timer", errors, bench_memory, store, client, scale, settings.shards,
                       populate_mode, load=load)
        if memory:
            memory["populate_equivalence"] = equivalence
            metrics["bytes_per_timer"], details["bytes_per_timer"] = memory["value"], memory
        recovered = _step("recovery_s_per_million", errors, bench_recovery, store, client, scale, settings,
                          populate_mode, load=load)
        if recovered:
            metrics["recovery_s_per_million"] = recovered["value"]
            details["recovery_s_per_million"] = recovered

        clustered = _step("cluster", errors, bench_cluster, work, settings, redis_server, client, receiver,
                          scale, populate_mode, (fired or {}).get("sizing"), errors, load)
        if clustered:
            cluster_metrics, cluster_details, cluster_layout = clustered
            metrics.update(cluster_metrics)
            details.update(cluster_details)
    finally:
        for service in (product, baseline):
            if service:
                service.stop()
        receiver.stop()
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)

    doc_machine["loadavg_end"] = list(os.getloadavg())
    targets = evaluate(metrics, details)
    document = {
        "schema": 1,
        "scale": scale.name,
        "started_at": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 1),
        "machine": doc_machine,
        "loadavg_by_benchmark": load,
        "versions": doc_versions,
        "product": revision,
        "config": {"shards": settings.shards, "workers_per_shard": settings.workers_per_shard,
                   "consumer_threads": settings.consumer_threads, "api_workers": settings.api_workers,
                   "api_connections": settings.api_connections, "populate": populate_mode,
                   "sizes": dataclasses.asdict(scale)},
        "cluster": cluster_layout,
        "machine_speed": machine_speed(details),
        "sizes_chosen": sizes_chosen(scale, details),
        "metrics": metrics,
        "units": UNITS,
        "targets": targets,
        "all_pass": all(t["pass"] for t in targets.values()),
        "targets_enforced": scale.enforce_targets,
        "errors": errors,
        "details": details,
        "notes": [
            "Each ratio is the median of per-pair ratios; product and baseline alternate, and the "
            "pair order alternates.",
            "Timers for fire_ratio, bytes_per_timer and recovery are stored by the product's create "
            "scripts pipelined (config.populate); see bench/run.py.",
            CLUSTER_NOTE,
            "The machine may be shared: machine.loadavg_start/end and loadavg_by_benchmark (1-minute "
            "load average before and after each benchmark; 2 cores) show the background load.",
        ],
    }
    os.makedirs(results_dir, exist_ok=True)
    document["plots"] = [os.path.basename(p) for p in
                         _step("plots", errors, report.plots, document, samples, results_dir) or []]
    document["wall_s"] = round(time.time() - started, 1)
    document["runs_skipped_for_time"] = BUDGET.skipped
    document["all_pass"] = document["all_pass"] and not errors
    # latest.json, and <scale>.json so that a quick run does not hide the last full one.
    for name in ("latest.json", f"{scale.name}.json"):
        with open(os.path.join(results_dir, name), "w") as f:
            json.dump(_jsonable(document), f, indent=2)
    return document


def _jsonable(value):
    """Replace NaN and infinities (not JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def main(argv=None):
    """Entry point: ``python -m bench.run [--tiny|--quick|--full] [--populate pipeline|create]``."""
    parser = argparse.ArgumentParser(description="Benchmarks of the timer service against baselines.")
    group = parser.add_mutually_exclusive_group()
    helps = {"tiny": "smoke sizes, ~50 s; targets reported, never enforced",
             "quick": "smaller sizes, about 3 min (default)", "full": "full sizes, at most 18 min"}
    for name in SCALES:
        group.add_argument(f"--{name}", dest="scale", action="store_const", const=name, help=helps[name])
    group.add_argument("--scale", choices=sorted(SCALES), help="scale by name")
    parser.add_argument("--populate", choices=("pipeline", "create"), default="pipeline",
                        help="how backlogs are stored (default: the create script, pipelined)")
    parser.add_argument("--results", default=RESULTS_DIR, help="output directory")
    args = parser.parse_args(argv)
    scale_name = args.scale or os.environ.get("BENCH_SCALE", "").strip() or "quick"
    if scale_name not in SCALES:
        parser.error(f"BENCH_SCALE={scale_name!r}: choose from {', '.join(SCALES)}")
    logs.setup("bench")
    document = run(SCALES[scale_name], args.populate, args.results)
    sys.stdout.write(report.table(document) + "\n")
    if document["errors"]:
        return 1
    if document["targets_enforced"] and not document["all_pass"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
