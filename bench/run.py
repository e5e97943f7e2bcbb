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
    (``bench.fast_receiver``). Alternating; median of per-pair ratios.
``lateness_p50_s``, ``lateness_p99_s``, ``lateness_max_s``
    webhook arrival minus the ``fire_at`` of the ``POST /timers`` response,
    in seconds, for timers created through the API at a steady rate with a
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
    their queue messages never pushed), scaled to one million.

Timers for ``fire_ratio``, ``bytes_per_timer`` and ``recovery_s_per_million``
are stored by the product's own create script (``Shard.create``, the Lua
script ``TimerStore.create`` runs), pipelined in batches with ids reserved
by one ``INCRBY`` of the same counter: the same keys, fields and values as
``TimerStore.create``, which costs two round trips per timer and would not
fit the time budget on 2 cores (``--populate create`` uses it anyway).

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
from sharding import config, logs
from sharding.balancer import LeastBusy
from sharding.recovery import recover
from sharding.store import FEED_BATCH, TimerStore, now_ms
from tests.harness import BIN, RedisServer, Service, json_lines, wait_until

log = logging.getLogger("bench.run")

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
HOOK_URL = "http://127.0.0.1:9000/hook"
POPULATE_BATCH = 1000
POPULATE_AIMED_BATCH = 100
POPULATE_PROCESSES = 3

TARGETS = {
    "create_ratio": (">=", 0.8),
    "fire_ratio": (">=", 0.8),
    "lateness_p99_s": ("<=", 1.0),
    "bytes_per_timer": ("<=", 300),
    "recovery_s_per_million": ("<=", 60),
}
UNITS = {"create_ratio": "x", "fire_ratio": "x", "lateness_p50_s": "s", "lateness_p99_s": "s",
         "lateness_max_s": "s", "bytes_per_timer": "B", "recovery_s_per_million": "s"}


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark scale. Durations in seconds, rates per second."""

    name: str
    create_duration_s: float
    create_pairs: int
    fire_timers: int
    fire_pairs: int
    lateness_rate: int
    lateness_duration_s: float
    lateness_runs: int
    memory_timers: int
    memory_runs: int
    recovery_timers: int
    recovery_runs: int
    enforce_targets: bool
    budget_s: float


SCALES = {
    "tiny": Scale("tiny", create_duration_s=1.0, create_pairs=1, fire_timers=300, fire_pairs=1,
                  lateness_rate=100, lateness_duration_s=2.0, lateness_runs=1, memory_timers=5_000,
                  memory_runs=1, recovery_timers=2_000, recovery_runs=1, enforce_targets=False,
                  budget_s=45),
    "quick": Scale("quick", create_duration_s=2.0, create_pairs=5, fire_timers=3_000, fire_pairs=3,
                   lateness_rate=500, lateness_duration_s=10.0, lateness_runs=1, memory_timers=100_000,
                   memory_runs=1, recovery_timers=30_000, recovery_runs=2, enforce_targets=True,
                   budget_s=88),
    "full": Scale("full", create_duration_s=5.0, create_pairs=5, fire_timers=20_000, fire_pairs=3,
                  lateness_rate=500, lateness_duration_s=60.0, lateness_runs=2, memory_timers=1_000_000,
                  memory_runs=1, recovery_timers=200_000, recovery_runs=3, enforce_targets=True,
                  budget_s=840),
}


class Budget:
    """The run's time budget: a run beyond a benchmark's first is skipped when it would end
    after that benchmark's share of ``Scale.budget_s`` (a busy machine then yields fewer runs,
    which the JSON records, rather than a harness that overruns its time).
    """

    # Share of the budget spent when each benchmark should be done (they run in this order).
    SHARES = {"create_ratio": 0.35, "fire_ratio": 0.60, "lateness": 0.74, "bytes_per_timer": 0.85,
              "recovery_s_per_million": 0.95}

    def __init__(self, total_s=math.inf):
        self.start(total_s)

    def start(self, total_s):
        """Start the clock of a budget of ``total_s`` seconds."""
        self.started = time.monotonic()
        self.total_s = total_s
        self.skipped = {}

    def another(self, name, done, last_s):
        """Whether benchmark ``name`` may start run ``done + 1`` (its last run took ``last_s`` seconds)."""
        if done == 0:
            return True
        ok = time.monotonic() + last_s <= self.started + self.SHARES[name] * self.total_s
        if not ok:
            self.skipped[name] = self.skipped.get(name, 0) + 1
            log.warning("run skipped to stay within the time budget", extra={
                "benchmark": name, "runs_done": done, "budget_s": self.total_s})
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
        mode: ``pipeline``: the product's create script (``Shard.create``)
            pipelined, ``POPULATE_BATCH`` timers per round trip, in ``processes``
            forked processes;
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
    return TimerStore(store.url, store.retention_ms / 1000)


def _populate_pipelined(store, count, shards, delay_ms, url):
    earliest, latest = math.inf, -math.inf
    # A delay aimed at a moment is computed per timer before its batch is sent:
    # smaller batches keep the fire times closer to the moment aimed at.
    batch = POPULATE_AIMED_BATCH if callable(delay_ms) else POPULATE_BATCH
    done = 0
    while done < count:
        n = min(batch, count - done)
        pipes = {}
        for k in range(n):
            index = (done + k) % shards
            shard = store.shard(index)
            pipe = pipes.get(index)
            if pipe is None:
                pipe = pipes[index] = shard.redis.pipeline(transaction=False)
            delay = int(delay_ms() if callable(delay_ms) else delay_ms)
            shard.create_timer(url, delay, new_request_id(), client=pipe)
        for pipe in pipes.values():
            fires = [int(fire) for _, fire, _ in pipe.execute()]
            earliest, latest = min(earliest, *fires), max(latest, *fires)
        done += n
    return earliest, latest


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


def bench_create(product, baseline, redis_pid, scale, gen):
    """Alternating closed-loop ``POST /timers`` runs on the product and the baseline.

    Args:
        product, baseline: started ``tests.harness.Service`` objects (their ``api``).
        redis_pid: the Redis server's pid, for its CPU time.
    Returns:
        dict with ``value`` (median of per-pair product/baseline ratios) and raw values:
        requests per second, and CPU milliseconds per 201 of the API's processes and of Redis.
    """
    payload = {"seconds": 3600, "url": HOOK_URL}
    services = {"product": product, "baseline": baseline}
    for service in services.values():  # warm-up: connections, imports, caches
        loadgen.run(service.url, "/timers", payload, 0.5, **gen)
    product, baseline, order = [], [], []
    last_s = 0.0
    for pair in range(scale.create_pairs):
        if not BUDGET.another("create_ratio", pair, last_s):
            break
        began = time.monotonic()
        # Alternate which one goes first, so a drift in background load hits both alike.
        first = ("product", "baseline") if pair % 2 == 0 else ("baseline", "product")
        got = {}
        for who in first:
            api_pid = [services[who].processes["api"].pid]
            before = tree_cpu_s(api_pid), tree_cpu_s([redis_pid])
            got[who] = loadgen.run(services[who].url, "/timers", payload, scale.create_duration_s, **gen)
            after = tree_cpu_s(api_pid), tree_cpu_s([redis_pid])
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
        "load": dict(gen),
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


def fire_product_run(store, receiver, count, shards, populate_mode, est_rate, pool_pids=(), redis_pid=None):
    """One backlog of ``count`` timers all due at T, delivered by the running pool.

    T is the earliest fire time the create script returned. Each timer's
    delay is computed from the local clock just before it is queued in its
    pipeline, so the actual fire times spread a little after T (by the
    pipeline's latency: ``fire_spread_ms``, tens to a few hundred ms); taking
    the earliest makes the rate conservative.

    Args:
        est_rate: expected storing rate (timers/s), to put T after the last store.
        pool_pids: pids of the consumer pool and coordinator, for their CPU time.
        redis_pid: the Redis server's pid, for its CPU time.
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
    before = tree_cpu_s(pool_pids), tree_cpu_s([redis_pid])
    receiver.wait_for(count, timeout_s=max(60.0, count / 50), settle_s=0)
    after = tree_cpu_s(pool_pids), tree_cpu_s([redis_pid])
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


def _baseline_sender(url, threads, counter, count, ready, go, start_at):
    def work():
        session = requests.Session()
        session.trust_env = False
        with ready.get_lock():
            ready.value += 1
        go.wait()
        time.sleep(max(0.0, start_at.value - time.time()))
        while True:
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


def fire_baseline_run(receiver, count, processes, threads, redis_pid=None):
    """``count`` bare ``requests`` POSTs (empty body) from ``processes`` x ``threads`` sessions.

    Returns:
        dict: ``rate`` (requests/s = delivered / (last arrival - start)), ``seconds``,
        ``delivered``, ``cpu_ms`` (CPU milliseconds per request of the sender processes,
        start-up included) and ``redis_cpu_ms`` (idem for Redis, from the start).
    """
    cpu_before = _children_cpu_s()
    receiver.reset()
    ctx = multiprocessing.get_context("fork")
    counter, ready = ctx.Value("q", 0), ctx.Value("i", 0)
    start_at, go = ctx.Value("d", 0.0), ctx.Event()
    children = [ctx.Process(target=_baseline_sender, args=(
        receiver.url + "/hook", threads, counter, count, ready, go, start_at)) for _ in range(processes)]
    for child in children:
        child.start()
    wait_until(lambda: ready.value >= processes * threads, timeout=30, message="baseline senders")
    start_at.value = time.time() + 0.2
    go.set()
    redis_before = tree_cpu_s([redis_pid])
    receiver.wait_for(count, timeout_s=max(60.0, count / 50))
    redis_after = tree_cpu_s([redis_pid])
    for child in children:
        child.join(30)
    cpu_after = _children_cpu_s()
    first = {}
    for key, at in receiver.arrivals():
        first.setdefault(key, at)
    seconds = (max(first.values()) if first else math.nan) - start_at.value
    return {"rate": len(first) / seconds if first else 0.0, "seconds": round(seconds, 3),
            "timers": count, "delivered": len(first),
            "cpu_ms": _per_op_ms(cpu_before, cpu_after, len(first)),
            "redis_cpu_ms": _per_op_ms(redis_before, redis_after, len(first))}


def bench_fire(service, store, receiver, scale, settings, populate_mode, redis_pid=None):
    """Alternating backlog runs: the product's pool vs bare ``requests`` with the same concurrency.

    Returns:
        dict with ``value`` (median of per-pair product/baseline rate ratios) and raw runs.
    """
    processes = settings.shards * settings.workers_per_shard
    threads = settings.consumer_threads
    wait_until(lambda: consumers_started(service) >= processes, timeout=60,
               message="every consumer to log 'Huey consumer started'")
    est_rate = 5_000.0 if populate_mode == "pipeline" else 1_000.0
    product, baseline, order = [], [], []
    last_s = 0.0
    for pair in range(scale.fire_pairs):
        if not BUDGET.another("fire_ratio", pair, last_s):
            break
        began = time.monotonic()
        first = ("product", "baseline") if pair % 2 == 0 else ("baseline", "product")
        for who in first:
            if who == "product":
                pool_pids = [service.processes[name].pid for name in ("workers", "coordinator")]
                run = fire_product_run(store, receiver, scale.fire_timers, settings.shards,
                                       populate_mode, est_rate, pool_pids, redis_pid)
                est_rate = max(500.0, min(est_rate, run["store_rate"]))
                product.append(run)
            else:
                baseline.append(fire_baseline_run(receiver, scale.fire_timers, processes, threads,
                                                  redis_pid))
            log.info("fire run", extra={"who": who, **(product[-1] if who == "product" else baseline[-1])})
            time.sleep(0.3)  # let the last outcomes be recorded before the next run
        order.append(list(first))
        last_s = time.monotonic() - began
    ratios = [p["rate"] / b["rate"] if b["rate"] else math.nan
              for p, b in zip(product, baseline, strict=True)]
    return {
        "value": statistics.median(ratios),
        "runs": len(product),
        "timers": scale.fire_timers,
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

    Creation is open loop: when the API cannot keep up, fewer timers are
    created (``create_rate`` < ``rate``, ``rate_reached`` False); lateness is
    still measured on those that were.

    Returns:
        (summary dict, list of lateness samples in seconds).
    """
    receiver.reset()
    url = receiver.url + "/hook"
    payloads = [{"seconds": 1, "url": url}, {"seconds": 2, "url": url}]
    created = loadgen.run(api_url, "/timers", payloads, duration_s, processes=2, threads=8, rate=rate,
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
        "scheduled": created["scheduled"],
        "create_rate": round(created["created"] / duration_s, 1),
        "create_non_201": created["other"] + created["errors"],
        "rate_reached": created["created"] >= 0.95 * created["scheduled"],
        "p50_s": percentile(counted, 0.50), "p99_s": percentile(counted, 0.99),
        "max_s": max(counted) if counted else math.inf,
        "min_s": min(samples) if samples else math.nan,
    }
    return summary, samples


def bench_lateness(api_url, receiver, scale):
    """Lateness runs; figures are medians over runs of each run's p50, p99 and max (seconds)."""
    runs, samples = [], []
    last_s = 0.0
    for done in range(scale.lateness_runs):
        if not BUDGET.another("lateness", done, last_s):
            break
        began = time.monotonic()
        summary, got = lateness_run(api_url, receiver, scale.lateness_rate, scale.lateness_duration_s)
        last_s = time.monotonic() - began
        runs.append(summary)
        samples += got
        log.info("lateness run", extra=summary)
        time.sleep(0.5)
    return {
        "p50": statistics.median(r["p50_s"] for r in runs),
        "p99": statistics.median(r["p99_s"] for r in runs),
        "max": statistics.median(r["max_s"] for r in runs),
        "runs": len(runs), "rate_per_s": scale.lateness_rate,
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


def populate_equivalence(store, client):
    """Check that :func:`populate` stores what ``TimerStore.create`` stores (same fields, same size).

    Also measures what the generated request id (12 characters) adds to one record.

    Returns:
        dict: ``equal``, the records' field names, their ``MEMORY USAGE`` (bytes),
        and ``request_id_bytes``: ``MEMORY USAGE`` with the request id minus
        without (empty, as ``TimerStore.create`` stores by default).
    """
    rid = new_request_id()
    timer_id, _, _ = store.create(HOOK_URL, 3_600_000, 0, rid)
    shard = store.shard(0)
    pipe = shard.redis.pipeline(transaction=False)
    shard.create_timer(HOOK_URL, 3_600_000, rid, client=pipe)
    (other, _, _), = pipe.execute()
    one, two = client.hgetall(shard.record_key(timer_id)), client.hgetall(shard.record_key(other))
    fields = sorted(k.decode() for k in one)
    # Every field equal but the fire time (a few ms apart).
    same = bool(one) and set(one) == set(two) and all(one[k] == two[k] for k in one if k != b"f")
    usage = [client.memory_usage(shard.record_key(timer_id)), client.memory_usage(shard.record_key(other))]
    bare_id, _, _ = store.create(HOOK_URL, 3_600_000, 0)
    bare = client.memory_usage(shard.record_key(bare_id))
    return {"equal": same and usage[0] == usage[1], "fields": fields, "memory_usage": usage,
            "request_id_bytes": usage[0] - bare}


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


def bench_recovery(store, client, scale, settings, populate_mode):
    """Time full recovery passes over N orphaned timers.

    Returns:
        dict with ``value`` (median seconds per million) and raw values.
    """
    client.flushall()
    shards = settings.shards
    visibility_ms = int(settings.visibility_seconds * 1000)
    populate(store, scale.recovery_timers, shards, 0, HOOK_URL, populate_mode)
    time.sleep(0.01)  # every fire time is now in the past
    balancer = LeastBusy(store.loads, shards)
    runs = []
    last_s = 0.0
    for done in range(scale.recovery_runs):
        if not BUDGET.another("recovery_s_per_million", done, last_s):
            break
        began_run = time.monotonic()
        hidden = _hide_all(store, shards, visibility_ms)
        began = time.perf_counter()
        counts = recover(store, balancer, shards, settings.webhook_max_attempts, visibility_ms, grace_ms=None)
        seconds = time.perf_counter() - began
        now = now_ms(client)
        due = sum(client.zcount(store.shard(i).due_key, "-inf", now) for i in range(shards))
        run = {"timers": scale.recovery_timers, "hidden": hidden, "seconds": round(seconds, 4),
               "s_per_million": seconds * 1e6 / scale.recovery_timers, "recovered": counts["lost"],
               "due_after": due, "all_due_again": due == scale.recovery_timers == counts["lost"] == hidden}
        runs.append(run)
        log.info("recovery run", extra=run)
        last_s = time.monotonic() - began_run
    if not all(r["all_due_again"] for r in runs):
        raise AssertionError(f"recovery did not make every orphan due again: {runs}")
    return {"value": statistics.median(r["s_per_million"] for r in runs), "runs": len(runs),
            "timers": scale.recovery_timers, "scaled": "linear, seconds * 1e6 / timers", "raw": runs}


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
                                 f"{details['lateness']['rate_per_s']}/s asked: the API did not keep up")
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
    BUDGET.start(scale.budget_s)
    started = time.time()
    doc_machine, doc_versions, revision = machine_info(), {}, product_revision()
    settings = config.load()
    work = tempfile.mkdtemp(prefix="timer-bench-")
    redis_server = RedisServer(work)
    receiver = FastReceiver(os.path.join(work, "receiver"), processes=2)
    product = baseline = None
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

        product_dir, baseline_dir = os.path.join(work, "product"), os.path.join(work, "baseline")
        os.makedirs(product_dir)
        os.makedirs(baseline_dir)
        product = Service(redis_server.url, product_dir, _service_env())
        baseline = BaselineService(redis_server.url, baseline_dir, _service_env())
        product.start("api")
        baseline.start("api", ready_path="/healthz")
        gen = {"processes": 2, "threads": 4}
        created = _step("create_ratio", errors, bench_create, product, baseline, redis_server.process.pid,
                        scale, gen, load=load)
        stop_all(baseline)
        if created:
            metrics["create_ratio"], details["create_ratio"] = created["value"], created
        client.flushall()

        product.start("workers", "coordinator")
        fired = _step("fire_ratio", errors, bench_fire, product, store, receiver, scale, settings,
                      populate_mode, redis_server.process.pid, load=load)
        if fired:
            metrics["fire_ratio"], details["fire_ratio"] = fired["value"], fired

        late = _step("lateness", errors, bench_lateness, product.url, receiver, scale, load=load)
        if late:
            summary, samples = late
            metrics.update(lateness_p50_s=summary["p50"], lateness_p99_s=summary["p99"],
                           lateness_max_s=summary["max"])
            details["lateness"] = summary
        stop_all(product)
        product = None

        equivalence = _step("populate_equivalence", errors, populate_equivalence, store, client,
                            load=load)
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
            "script pipelined (config.populate); see bench/run.py.",
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
    helps = {"tiny": "smoke sizes, ~30 s; targets reported, never enforced",
             "quick": "smaller sizes, at most 90 s (default)", "full": "full sizes, at most 15 min"}
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
