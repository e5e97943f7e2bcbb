"""Sizing rules of the benchmarks: sizes follow the machine's measured speed, not fixed counts.

On a machine three times faster a fixed backlog drains in a third of the
time, and fixed latencies (the feed tick, the receiver's flush interval,
start-up) weigh three times more; a fixed creation rate is a smaller share
of the capacity. So every backlog is sized to a work time at a rate
measured on the machine at hand, and lateness is measured at a fixed share
of the create rate the product reached in the same run.
"""

import math

# Lateness is measured while creating at this share of the product's measured create rate.
LATENESS_SHARE_OF_CREATE_RATE = 0.5


def timers_for_work(rate_per_s, work_s, floor, cap):
    """How many timers take ``work_s`` seconds of work at ``rate_per_s``, kept within [floor, cap].

    Args:
        rate_per_s: measured rate (timers per second, > 0; anything else gives ``floor``).
        work_s: seconds of work wanted.
        floor, cap: least and most timers (ints, floor <= cap); the cap keeps
            a very fast machine within the memory and time budget.
    Returns:
        dict: ``timers`` (int), ``rate_per_s``, ``work_s``, ``expected_s``
        (seconds that many timers take at the rate) and ``limited_by``
        (``None``, ``"floor"`` or ``"cap"``).
    """
    wanted = math.ceil(rate_per_s * work_s) if rate_per_s > 0 and math.isfinite(rate_per_s) else 0
    timers, limited_by = wanted, None
    if wanted < floor:
        timers, limited_by = floor, "floor"
    elif wanted > cap:
        timers, limited_by = cap, "cap"
    expected = timers / rate_per_s if rate_per_s > 0 and math.isfinite(rate_per_s) else math.nan
    return {"timers": timers, "rate_per_s": round(rate_per_s, 1), "work_s": work_s,
            "expected_s": round(expected, 2), "limited_by": limited_by}


def lateness_rate(product_create_rps):
    """The creation rate (timers per second, int >= 1) of the lateness runs.

    Args:
        product_create_rps: ``POST /timers`` 201s per second the product reached
            (median of the create benchmark's runs).
    Raises:
        ValueError: no usable rate (None, NaN, zero or negative).
    """
    if product_create_rps is None or not product_create_rps > 0 or not math.isfinite(product_create_rps):
        raise ValueError(f"no product create rate to take a share of: {product_create_rps!r}")
    return max(1, round(product_create_rps * LATENESS_SHARE_OF_CREATE_RATE))


def steady_rate(arrivals, start, stop, ramp_share=0.25):
    """Arrivals per second in the last ``1 - ramp_share`` of the window [start, stop].

    The first quarter (connections opening, threads starting) is left out, so
    the rate is the one a longer run settles at.

    Args:
        arrivals: arrival times (epoch seconds); start, stop: the window (epoch
            seconds, stop > start); ramp_share: share of the window left out (0..1).
    Returns:
        float, arrivals per second.
    """
    since = start + ramp_share * (stop - start)
    return sum(since <= at <= stop for at in arrivals) / (stop - since)
