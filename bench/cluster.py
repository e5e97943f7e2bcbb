"""Capacity figures on a local Redis Cluster (3 masters + 3 replicas), for docs/SCALING.md.

Run: ``python -m bench.cluster [--timers N] [--memory N] [--backlog N]``. It starts a
``sharding.local_cluster`` cluster and, for comparison, one ``redis-server``
(both AOF on, as in production), then measures on each:

* ``create``: ``TimerStore.create`` one by one from 4 threads: on one server
  one round trip, on the cluster one as well when the id this process
  proposes is taken (else two: reserve the id, then create), and on the
  cluster with ``TIMER_REDIS_WAIT_REPLICAS=1`` (the round trip that stores
  the timer also waits for the replica): microseconds per create (median latency),
  Redis CPU per create (``INFO cpu`` of the masters; replicas not counted)
  and the client's CPU per create (this process: what an API host pays);
* ``memory``: ``used_memory`` growth per pending timer (due in 1 h), in total
  and per server;
* ``webhook``: Redis CPU per delivered webhook (feed, claim, record the
  outcome) for a backlog due at once, delivered by the real consumer pool
  (6 shards, 2 consumers each) to ``bench.fast_receiver``.

Prints one JSON document. Figures vary 2-3x with the machine's load: the
per-operation CPU times are the ones to plan with.
"""

import argparse
import concurrent.futures
import json
import logging
import os
import statistics
import tempfile
import time

from bench.fast_receiver import FastReceiver
from sharding import logs
from sharding.local_cluster import LocalCluster
from sharding.store import TimerStore
from tests.harness import RedisServer, Service, free_cluster_port, wait_until

log = logging.getLogger("bench.cluster")
SHARDS = 6
HOOK = "http://127.0.0.1:9/hook"


def _cpu_s(infos):
    return sum(info["used_cpu_user"] + info["used_cpu_sys"] for info in infos.values())


def _create_many(store, count, delay_ms=lambda: 3_600_000, url=HOOK, threads=4):
    """``count`` creates from ``threads`` threads, each due ``delay_ms()`` ms later;
    returns each create's latency in seconds."""
    def work(offset):
        latencies = []
        for k in range(offset, count, threads):
            delay = delay_ms()
            began = time.perf_counter()
            store.create(url, delay, k % SHARDS)
            latencies.append(time.perf_counter() - began)
        return latencies

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return [x for part in pool.map(work, range(threads)) for x in part]


def bench_create(store, infos, count):
    """Median create latency (µs) and Redis CPU per create (ms) of ``count`` creates.

    Args:
        infos: callable section → {name: INFO section} of the servers that hold the shards.
    """
    store.register_shards(SHARDS)
    _create_many(store, 200)  # connections and scripts loaded
    before, client_before = _cpu_s(infos("cpu")), time.process_time()
    latencies = _create_many(store, count)
    after, client_after = _cpu_s(infos("cpu")), time.process_time()
    return {"creates": count, "latency_median_us": round(statistics.median(latencies) * 1e6),
            "latency_p99_us": round(sorted(latencies)[int(len(latencies) * 0.99)] * 1e6),
            "redis_cpu_ms_per_create": round((after - before) * 1000 / count, 4),
            "client_cpu_ms_per_create": round((client_after - client_before) * 1000 / count, 4)}


class Target:
    """Where the shards live for one measurement: the cluster's masters, or one server.

    Args:
        url: ``REDIS_URL`` or ``REDIS_CLUSTER_URL``.
        cluster: the url is a cluster node.
        clients: callable returning {name: plain redis-py client} of the servers
            holding the shards (the cluster's masters: replicas are not counted).
    """

    def __init__(self, url, cluster, clients):
        self.url, self.cluster, self.clients = url, cluster, clients

    def store(self, wait_replicas=0):
        """A ``TimerStore`` on it."""
        return TimerStore(self.url, cluster=self.cluster, wait_replicas=wait_replicas, live_shards=SHARDS)

    def info(self, section):
        """{name: INFO section} of every server holding shards."""
        return {name: client.info(section) for name, client in self.clients().items()}

    def flush(self):
        """Empty every server."""
        for client in self.clients().values():
            client.flushall()

    def env(self):
        """The service's environment for it."""
        return {"REDIS_CLUSTER_URL" if self.cluster else "REDIS_URL": self.url}


def bench_memory(target, count):
    """``used_memory`` growth per pending timer (due in 1 h), in total and per server."""
    target.flush()
    store = target.store()
    store.register_shards(SHARDS)
    before = {name: info["used_memory"] for name, info in target.info("memory").items()}
    _create_many(store, count, threads=8)
    after = {name: info["used_memory"] for name, info in target.info("memory").items()}
    growth = {str(name): after[name] - before[name] for name in after}
    return {"pending_timers": count, "bytes_per_timer": round(sum(growth.values()) / count, 1),
            "growth_bytes_per_server": growth}


def bench_webhooks(target, count, workdir):
    """Redis CPU (every server holding shards) per webhook for ``count`` timers due at one moment."""
    target.flush()
    receiver = FastReceiver(f"{workdir}/arrivals").start()
    os.makedirs(workdir, exist_ok=True)
    service = Service(None, workdir, {**target.env(), "TIMER_SHARDS": str(SHARDS),
                                      "TIMER_WORKERS_PER_SHARD": "2"})
    try:
        service.start()
        wait_until(lambda: service.logs("workers").count("Huey consumer started") >= 2 * SHARDS,
                   timeout=60, message="consumers")
        aim = time.time() + count / 300 + 3
        _create_many(target.store(), count, delay_ms=lambda: max(0, int((aim - time.time()) * 1000)),
                     url=receiver.url + "/hook", threads=8)
        wait_until(lambda: time.time() >= aim, timeout=120, message="the fire time")
        before = _cpu_s(target.info("cpu"))
        got = receiver.wait_for(count, timeout_s=max(60, count / 50), settle_s=0)
        after = _cpu_s(target.info("cpu"))
        seconds = receiver.last_arrival() - aim
    finally:
        service.stop(timeout=15)
        receiver.stop()
    return {"timers": count, "delivered": got, "seconds": round(seconds, 2),
            "webhooks_per_s": round(got / seconds, 1) if seconds > 0 else None,
            "redis_cpu_ms_per_webhook": round((after - before) * 1000 / max(got, 1), 4)}


def main(argv=None):
    """Entry point: print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=4000, help="creates per create measurement")
    parser.add_argument("--memory", type=int, default=30000, help="pending timers for the memory figure")
    parser.add_argument("--backlog", type=int, default=3000, help="timers due at once for the webhook figure")
    args = parser.parse_args(argv)
    logs.setup("bench-cluster")
    workdir = tempfile.mkdtemp(prefix="bench-cluster-")
    cluster = LocalCluster(f"{workdir}/cluster", free_cluster_port()).start()
    single = RedisServer(tempfile.mkdtemp(prefix="bench-single-"))
    single.start()
    targets = {"one_server": Target(single.url, False, lambda: {"single": single.client()}),
               "cluster": Target(cluster.url, True,
                                 lambda: {port: cluster.client(port) for port in cluster.masters()})}
    try:
        figures = {"masters": len(cluster.masters()), "shards": SHARDS}
        for name, target in targets.items():
            for wait in (0, 1) if target.cluster else (0,):
                figures[f"create_{name}" + ("_wait_1" if wait else "")] = bench_create(
                    target.store(wait), target.info, args.timers)
            figures[f"memory_{name}"] = bench_memory(target, args.memory)
            figures[f"webhooks_{name}"] = bench_webhooks(target, args.backlog, f"{workdir}/{name}")
    finally:
        single.stop()
        cluster.stop()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
