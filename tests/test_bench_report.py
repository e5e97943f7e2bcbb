"""Unit tests of the benchmark report with the cluster figures (bench.run's targets, time budget and
shard split; bench.report's table): pure logic on made-up results, no Redis, no HTTP."""

import time

import pytest

from bench import report
from bench.baseline_app import record_fields
from bench.run import TARGETS, Budget, evaluate, shard_shares

SINGLE = {"create_ratio": 0.9, "fire_ratio": 0.86, "lateness_p50_s": 0.03, "lateness_p99_s": 0.2,
          "lateness_max_s": 0.3, "bytes_per_timer": 285.0, "recovery_s_per_million": 24.0}


def _create(product, baseline):
    return {"product_rps_median": product, "baseline_rps_median": baseline, "runs": 5, "duration_s": 5.0,
            "product_api_cpu_ms_per_201": [0.5], "product_redis_cpu_ms_per_201": [0.2],
            "baseline_api_cpu_ms_per_201": [0.4], "baseline_redis_cpu_ms_per_201": [0.05]}


def _fire(product, baseline):
    return {"product_rate": [product], "baseline_rate": [baseline], "runs": 3, "timers": 80_000,
            "baseline_runs": [{"seconds": 20.0}], "concurrency": {"total": 32},
            "product_cpu_ms_per_webhook": [0.5], "product_runs": [{"redis_cpu_ms": 0.1}],
            "baseline_cpu_ms_per_webhook": [0.4]}


def _document(metrics, details=None, errors=None, cluster=None):
    details = details or {}
    return {"metrics": metrics, "details": details, "targets": evaluate(metrics, details),
            "units": {"create_ratio": "x", "fire_ratio": "x", "cluster_create_ratio": "x",
                      "cluster_fire_ratio": "x"},
            "errors": errors or {}, "targets_enforced": True, "scale": "full", "wall_s": 800.0,
            "machine": {"loadavg_start": [1.0], "loadavg_end": [2.0]}, "config": {"shards": 4},
            "cluster": cluster}


def _row(table, name):
    return next(line.split() for line in table.splitlines() if line.startswith(name + " "))


def test_targets_are_the_issue_table():
    assert TARGETS == {"create_ratio": (">=", 0.85), "fire_ratio": (">=", 0.85),
                       "lateness_p99_s": ("<=", 0.25), "bytes_per_timer": ("<=", 300),
                       "recovery_s_per_million": ("<=", 30), "cluster_create_ratio": (">=", 0.75),
                       "cluster_fire_ratio": (">=", 0.75)}


def test_cluster_figures_pass_and_fail_on_their_own_thresholds():
    targets = evaluate({**SINGLE, "cluster_create_ratio": 0.75, "cluster_fire_ratio": 0.749}, {})
    assert (targets["cluster_create_ratio"]["pass"], targets["cluster_fire_ratio"]["pass"]) == (True, False)
    assert targets["cluster_fire_ratio"]["target"] == 0.75
    # 0.8 passes on the cluster but not on one server.
    targets = evaluate({**SINGLE, "create_ratio": 0.8, "cluster_create_ratio": 0.8}, {})
    assert (targets["create_ratio"]["pass"], targets["cluster_create_ratio"]["pass"]) == (False, True)


def test_a_cluster_figure_not_measured_fails_its_target():
    target = evaluate(SINGLE, {})["cluster_fire_ratio"]
    assert (target["value"], target["conditions_met"], target["pass"]) == (None, False, False)


def test_the_table_prints_single_and_cluster_rows_with_their_targets():
    metrics = {**SINGLE, "cluster_create_ratio": 0.7, "cluster_fire_ratio": 0.8}
    details = {"create_ratio": _create(900, 1000), "fire_ratio": _fire(3000, 3500),
               "cluster_create_ratio": _create(700, 1000), "cluster_fire_ratio": _fire(2800, 3500)}
    cluster = {"masters": 3, "nodes": 6, "start_s": 2.1,
               "shards_per_master": {"127.0.0.1:7000": 1, "127.0.0.1:7001": 2, "127.0.0.1:7002": 1}}
    table = report.table(_document(metrics, details, cluster=cluster))
    assert _row(table, "create_ratio")[:6] == ["create_ratio", "0.900", "x", ">=", "0.85", "PASS"]
    assert _row(table, "cluster_create_ratio")[:6] == ["cluster_create_ratio", "0.700", "x", ">=", "0.75",
                                                       "FAIL"]
    assert _row(table, "cluster_fire_ratio")[:6] == ["cluster_fire_ratio", "0.800", "x", ">=", "0.75", "PASS"]
    assert "product 700 rps / baseline 1000 rps, 5 pairs x 5 s" in table
    assert "product 2800/s / baseline 3500/s, 3 pairs x 80000 timers" in table
    assert ("cluster rows: the product's 4 shards on a local cluster of 3 masters + 3 replicas (AOF on; "
            "shards per master 2/1/1; started in 2.1 s)") in table
    assert "cpu per create (cluster: redis = its 6 nodes): product api 0.50 ms + redis 0.20 ms" in table
    assert "scale full: 6/7 targets pass" in table


def test_the_cluster_rows_say_error_when_the_cluster_did_not_start():
    table = report.table(_document(SINGLE, errors={"cluster": "TimeoutError('cluster_state:ok')"}))
    assert _row(table, "cluster_create_ratio")[1:6] == ["n/a", "x", ">=", "0.75", "ERROR"]
    assert _row(table, "cluster_fire_ratio")[1:6] == ["n/a", "x", ">=", "0.75", "ERROR"]
    assert _row(table, "fire_ratio")[5] == "PASS"
    assert "cluster rows:" not in table


def test_the_cluster_part_of_the_budget_follows_the_single_redis_part():
    budget = Budget(100.0, 50.0)
    assert budget.deadline("create_ratio") == pytest.approx(budget.started + 32.0)
    assert budget.deadline("recovery_s_per_million") == pytest.approx(budget.started + 97.0)
    assert budget.deadline("cluster_create_ratio") == pytest.approx(budget.started + 120.0)
    assert budget.deadline("cluster_fire_ratio") == pytest.approx(budget.started + 148.5)


def test_a_cluster_run_that_would_end_after_its_share_is_skipped():
    budget = Budget(0.0, 10.0)  # the cluster's create runs should be done 4 s from now
    assert budget.another("cluster_create_ratio", 0, 60.0)  # a first run always runs
    assert budget.another("cluster_create_ratio", 1, 1.0)
    assert not budget.another("cluster_create_ratio", 1, 5.0)
    assert budget.skipped == {"cluster_create_ratio": 1}
    assert budget.deadline("cluster_create_ratio") < time.monotonic() + 4.0


@pytest.mark.parametrize(("start", "count", "shards", "shares"), [
    (0, 10, 4, [3, 3, 2, 2]),
    (5, 4, 4, [1, 1, 1, 1]),
    (6, 3, 4, [1, 0, 1, 1]),
    (7, 1, 4, [0, 0, 0, 1]),
    (0, 0, 3, [0, 0, 0]),
    (3, 100, 1, [100]),
])
def test_timers_spread_over_the_shards_in_turn(start, count, shards, shares):
    assert shard_shares(start, count, shards) == shares
    expected = [0] * shards
    for k in range(start, start + count):
        expected[k % shards] += 1
    assert shares == expected


def test_the_baseline_writes_the_fields_of_the_products_bare_record():
    # Read from the create script (its HSET, the optional pairs after the fixed fields left out):
    # the same fields a bare timer's record holds (tests/test_store.py).
    assert record_fields() == ("u", "f", "s", "r")
