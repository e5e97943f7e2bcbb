"""Prometheus metrics shared by every process, in prometheus-client's multiprocess mode.

Counters and histograms from every gunicorn worker and every consumer are
written to files in ``PROMETHEUS_MULTIPROC_DIR`` (default
``TIMER_DATA_DIR/metrics``) and summed by the API's ``/metrics``
(prometheus-client docs, "Multiprocess Mode"). The directory must be known
before prometheus_client is imported, so this module sets it first.
Processes on other hosts expose their own host's counts.
"""

import os

from sharding.config import data_dir

_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(data_dir(), "metrics")
os.makedirs(_DIR, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _DIR

from prometheus_client import (  # noqa: E402 - needs PROMETHEUS_MULTIPROC_DIR first
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily  # noqa: E402

from sharding.topology import REDIS_ERRORS  # noqa: E402

TIMER_CREATED = Counter("timer_created", "Timers created through the API.")
TIMER_FIRED = Counter("timer_fired", "Timers whose webhook got a 2xx.")
TIMER_FAILED = Counter("timer_failed", "Timers that failed for good: a permanent error, or no "
                       "attempt left in their limits (a re-drive may bring one back).")
WEBHOOK_ATTEMPTS = Counter("timer_webhook_attempts", "Webhook delivery attempts by outcome "
                           "(ok, retry, fail).", ["outcome"])
FIRE_LATENESS = Histogram(
    "timer_fire_lateness_seconds", "Seconds from a timer's fire time to its first delivery attempt.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600))
HTTP_DURATION = Histogram(
    "timer_http_request_duration_seconds", "API request durations in seconds.",
    ["method", "route", "status"])


class ShardDepthCollector:
    """Collects ``timer_shard_depth{shard}`` (pending + in flight) live from Redis at scrape time.

    Args:
        store: ``sharding.store.TimerStore``.
        count: number of live shards.
    """

    def __init__(self, store, count):
        self.store = store
        self.count = count

    def collect(self):
        """Yield one gauge family with a sample per shard whose Redis answers.

        A shard whose server fails (a cluster master being failed over) has no
        sample in this scrape; the other metrics are still served.
        """
        family = GaugeMetricFamily("timer_shard_depth", "Pending plus in-flight timers per shard.",
                                   labels=["shard"])
        for index in range(self.count):
            try:
                (pending, in_flight), = self.store.loads([index])
            except REDIS_ERRORS:
                continue
            family.add_metric([str(index)], pending + in_flight)
        yield family


def _host_registry():
    """A registry summing the metrics files of every process of this host."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def exposition(store, shard_count):
    """Prometheus text of every process's metrics plus live shard depths.

    Returns:
        (body bytes, content type).
    """
    registry = _host_registry()
    registry.register(ShardDepthCollector(store, shard_count))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def host_samples():
    """Every sample of this host's processes, summed as ``/metrics`` shows them.

    Returns:
        dict sample name → list of (labels dict, value), e.g.
        ``{"timer_created_total": [({}, 12.0)], "timer_fire_lateness_seconds_bucket":
        [({"le": "0.05"}, 3.0), ...], ...}``; histogram buckets are cumulative.
    """
    samples = {}
    for family in _host_registry().collect():
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def process_exited(pid):
    """Bookkeeping for a dead process (prometheus-client ``mark_process_dead``)."""
    multiprocess.mark_process_dead(pid)
