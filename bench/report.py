"""The benchmark report: the table printed to stdout and the PNG plots (matplotlib, Agg)."""

import logging
import math
import os

log = logging.getLogger("bench.report")

_ROWS = ("create_ratio", "fire_ratio", "cluster_create_ratio", "cluster_fire_ratio", "lateness_p50_s",
         "lateness_p99_s", "lateness_max_s", "bytes_per_timer", "recovery_s_per_million")
# The step whose failure also fails a row (the lateness runs give three rows; the cluster's start two).
_STEP_OF = {"lateness_p50_s": "lateness", "lateness_p99_s": "lateness", "lateness_max_s": "lateness",
            "cluster_create_ratio": "cluster", "cluster_fire_ratio": "cluster"}


def _fmt(value, unit=""):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if unit == "x":
        return f"{value:.3f}"
    if unit == "B":
        return f"{value:.1f}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def _detail(document, name):
    d = document["details"]
    if name in ("create_ratio", "cluster_create_ratio") and name in d:
        c = d[name]
        return (f"product {c['product_rps_median']:.0f} rps / baseline {c['baseline_rps_median']:.0f} rps, "
                f"{c['runs']} pairs x {c['duration_s']:g} s")
    if name in ("fire_ratio", "cluster_fire_ratio") and name in d:
        f = d[name]
        drained = _median(r["seconds"] for r in f["baseline_runs"])
        return (f"product {_median(f['product_rate']):.0f}/s / baseline {_median(f['baseline_rate']):.0f}/s, "
                f"{f['runs']} pairs x {f['timers']} timers (baseline drains in {drained:.1f} s), "
                f"{f['concurrency']['total']} threads")
    if name.startswith("lateness") and "lateness" in d:
        lt = d["lateness"]
        missing = sum(r["missing"] for r in lt["raw"])
        rate = min(r["create_rate"] for r in lt["raw"])
        return (f"{lt['runs']} run(s) x {lt['duration_s']:g} s at {lt['rate_per_s']}/s = half of "
                f"{lt['sizing']['product_create_rps']:.0f} creates/s (achieved >= {rate:.0f}/s), "
                f"missing {missing}")
    if name == "bytes_per_timer" and name in d:
        m = d[name]
        rid = (m.get("populate_equivalence") or {}).get("request_id_bytes")
        extra = f", of which the request id ~{rid} B" if rid is not None else ""
        return f"{m['runs']} run(s) x {m['timers']} pending timers{extra}"
    if name == "recovery_s_per_million" and name in d:
        r = d[name]
        seconds = _median(x["seconds"] for x in r["raw"])
        return (f"{r['runs']} run(s) x {r['timers']} orphans, median {seconds:.2f} s "
                f"(sized for {r['sizing']['work_s']:g} s)")
    return ""


def _median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def _cpu_lines(details):
    """CPU cost per operation (median over runs), where measured: on one server, then on the cluster."""
    lines = []
    for prefix, where in (("", ""), ("cluster_", " (cluster: redis = its 6 nodes)")):
        c = details.get(prefix + "create_ratio")
        if c and _median(c["product_api_cpu_ms_per_201"]) is not None:
            lines.append(
                f"cpu per create{where}: product api {_median(c['product_api_cpu_ms_per_201']):.2f} ms + "
                f"redis {_median(c['product_redis_cpu_ms_per_201']):.2f} ms; baseline api "
                f"{_median(c['baseline_api_cpu_ms_per_201']):.2f} ms + redis "
                f"{_median(c['baseline_redis_cpu_ms_per_201']):.2f} ms")
        f = details.get(prefix + "fire_ratio")
        if f and _median(f["product_cpu_ms_per_webhook"]) is not None:
            lines.append(
                f"cpu per webhook{where}: product pool {_median(f['product_cpu_ms_per_webhook']):.2f} ms + "
                f"redis {_median(r['redis_cpu_ms'] for r in f['product_runs']):.2f} ms; baseline senders "
                f"{_median(f['baseline_cpu_ms_per_webhook']):.2f} ms")
    return lines


def _cluster_lines(document):
    """What the cluster rows compared: where the shards were, and the baselines."""
    layout = document.get("cluster")
    if not layout:
        return []
    spread = "/".join(str(n) for n in sorted((layout.get("shards_per_master") or {}).values(), reverse=True))
    return [f"cluster rows: the product's {document['config']['shards']} shards on a local cluster of "
            f"{layout['masters']} masters + {layout['nodes'] - layout['masters']} replicas (AOF on; "
            f"shards per master {spread or 'n/a'}; started in {layout['start_s']:.1f} s), against the same "
            "baselines measured again side by side: bench.baseline_app on the single redis-server, bare "
            "requests senders with the pool's concurrency"]


def _speed_lines(document):
    """The machine's speed (its baselines' rates) and the sizes the work-time rule chose from it."""
    speed = document.get("machine_speed") or {}
    lines = []
    if speed.get("baseline_create_rps") is not None or speed.get("baseline_fire_rate") is not None:
        lines.append(f"machine speed: baseline {_fmt(speed.get('baseline_create_rps'))} creates/s, "
                     f"{_fmt(speed.get('baseline_fire_rate'))} webhooks/s (calibration "
                     f"{_fmt(speed.get('baseline_fire_rate_calibration'))}/s)")
    chosen = document.get("sizes_chosen") or {}
    sized = []
    for name, label in (("fire_ratio", "fire backlog"), ("recovery_s_per_million", "orphans")):
        if name in chosen:
            c = chosen[name]
            limit = f", {c['limited_by']}" if c["limited_by"] else ""
            sized.append(f"{label} {c['timers']} ({c['work_s']:g} s at {c['rate_per_s']:.0f}/s{limit})")
    if sized:
        lines.append("sized by work time: " + "; ".join(sized))
    return lines


def table(document):
    """The results as a fixed-width text table, with the verdict per target.

    Returns:
        str (no trailing newline).
    """
    metrics, targets, units = document["metrics"], document["targets"], document["units"]
    header = ("metric", "value", "target", "result", "runs")
    rows, notes = [], []
    for name in _ROWS:
        target = targets.get(name)
        unit = units.get(name, "")
        value = metrics.get(name)
        if target:
            verdict = "PASS" if target["pass"] else "FAIL"
            if target.get("note"):
                verdict += "*"
                notes.append(f"* {name}: {target['note']}")
            goal = f"{target['op']} {target['target']:g}"
        else:
            verdict, goal = "-", "-"
        if name in document["errors"] or _STEP_OF.get(name) in document["errors"]:
            verdict = "ERROR"
        rows.append((name, f"{_fmt(value, unit)} {unit}".strip(), goal, verdict, _detail(document, name)))
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    passed = sum(t["pass"] for t in targets.values())
    enforced = "" if document["targets_enforced"] else " (not enforced at this scale)"
    lines += notes
    lines += _cluster_lines(document)
    lines += _cpu_lines(document["details"])
    lines += _speed_lines(document)
    lines.append("")
    machine = document["machine"]
    lines.append(f"scale {document['scale']}: {passed}/{len(targets)} targets pass{enforced}; "
                 f"wall {document['wall_s']:.0f} s; load average {machine['loadavg_start'][0]:.2f}"
                 f" -> {machine['loadavg_end'][0]:.2f}")
    if document["errors"]:
        lines.append("errors: " + "; ".join(f"{k}: {v}" for k, v in document["errors"].items()))
    return "\n".join(lines)


def _throughput_bars(ax, document, name, product_key, baseline_key, ylabel):
    """Bars of benchmark ``name``'s product and baseline rates per pair on ``ax`` (matplotlib Axes)."""
    data = document["details"].get(name)
    ax.set_title(name + (f" = {document['metrics'][name]:.3f}" if data else " (no data)"))
    ax.set_ylabel(ylabel)
    if not data:
        return
    runs = range(len(data[product_key]))
    ax.bar([r - 0.2 for r in runs], data[product_key], width=0.4, label="product")
    ax.bar([r + 0.2 for r in runs], data[baseline_key], width=0.4, label="baseline")
    ax.set_xticks(list(runs), [f"pair {r + 1}" for r in runs])
    ax.legend()


def plots(document, lateness_samples, directory):
    """Draw ``throughput.png`` (product vs baseline per run, on one server above and on the
    cluster below) and ``lateness.png`` (histogram and CDF).

    Args:
        lateness_samples: every delivered timer's lateness in seconds.
    Returns:
        list of the PNG paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.4))
    panels = (("create_ratio", "product_rps", "baseline_rps", "POST /timers 201s per second"),
              ("fire_ratio", "product_rate", "baseline_rate", "webhooks delivered per second"))
    for row, prefix in enumerate(("", "cluster_")):
        for column, (name, product_key, baseline_key, ylabel) in enumerate(panels):
            _throughput_bars(axes[row][column], document, prefix + name, product_key, baseline_key, ylabel)
    fig.suptitle(f"timer-service throughput vs baselines ({document['scale']}): one Redis, then the cluster")
    fig.tight_layout()
    path = os.path.join(directory, "throughput.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    if lateness_samples:
        ordered = sorted(lateness_samples)
        axes[0].hist(ordered, bins=60)
        axes[1].plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))])
        target = document["targets"]["lateness_p99_s"]["target"]
        for ax in axes:
            ax.axvline(target, color="red", linestyle="--", label=f"target p99 {target:g} s")
            ax.legend()
        lt = document["metrics"]
        axes[1].set_title(f"CDF: p50 {_fmt(lt.get('lateness_p50_s'))} s, "
                          f"p99 {_fmt(lt.get('lateness_p99_s'))} s")
    axes[0].set_title(f"lateness histogram ({len(lateness_samples)} webhooks)")
    axes[0].set_xlabel("arrival - fire_at (s)")
    axes[0].set_ylabel("webhooks")
    axes[1].set_xlabel("arrival - fire_at (s)")
    axes[1].set_ylabel("fraction delivered")
    fig.tight_layout()
    path = os.path.join(directory, "lateness.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    log.info("plots written", extra={"paths": written})
    return written
