"""How long the dashboard's pages take with many pending timers (issue 15).

Run: ``python -m bench.dashboard [--timers 100000] [--repeat 20]`` (``make bench-dashboard``).

It starts a real ``redis-server`` and the real API (``tests.harness``), stores
``--timers`` pending timers (1 h delay) with the product's own create script
pipelined (``bench.run.populate``), then measures each page:

* ``server_ms``: a ``requests`` GET from send to the last byte of the body
  (keep-alive), median and max of ``--repeat`` after two warm-ups;
* ``browser_ms``: headless Chromium's navigation timing (``loadEventEnd``:
  request, HTML, the page's CSS and script, layout), median of 5, when
  ``chromium`` and ``chromedriver`` are on PATH.

The lists read one page of 50 (a host filter at most 20 pages), whatever the
number of timers; the figures show whether that holds. Output: a table on
stdout and ``bench/results/dashboard.json``.
"""

import argparse
import html
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

import requests

from bench.run import RESULTS_DIR, populate
from sharding.store import TimerStore
from tests.harness import RedisServer, Service


def _server_ms(session, url, repeat):
    times = []
    for k in range(repeat + 2):
        started = time.perf_counter()
        response = session.get(url, timeout=60)
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, (url, response.status_code)
        if k >= 2:
            times.append(elapsed)
    return {"median": round(statistics.median(times), 1), "max": round(max(times), 1),
            "bytes": len(response.content), "rows": response.text.count("<tr data-id=")}


def _browser_ms(urls):
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver_path):
        return {}
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=ChromeService(driver_path), options=options)
    try:
        out = {}
        for name, url in urls.items():
            times = []
            for _ in range(6):
                driver.get(url)
                times.append(driver.execute_script("const n = performance.getEntriesByType('navigation')[0];"
                                                   "return n.loadEventEnd - n.startTime"))
            out[name] = round(statistics.median(times[1:]), 1)
        return out
    finally:
        driver.quit()


def run(timers, repeat, shards):
    """Populate, start the API, measure; returns the result document (a dict)."""
    data_dir = tempfile.mkdtemp(prefix="bench-dashboard-")
    redis_server = RedisServer(data_dir)
    redis_server.start()
    service = None
    try:
        store = TimerStore(redis_server.url)
        started = time.monotonic()
        populate(store, timers, shards, 3_600_000)
        populate_s = time.monotonic() - started
        service = Service(redis_server.url, data_dir, {"TIMER_SHARDS": str(shards)}).start("api")
        session = requests.Session()
        base = f"{service.url}/dashboard"
        first_page = session.get(f"{base}/timers?status=scheduled", timeout=60).text
        cursor = html.unescape(re.search(r'id="next-page" href="([^"]+)"', first_page).group(1))
        timer_id = re.search(r'<tr data-id="(\d+)"', first_page).group(1)
        urls = {"overview": base, "list, first page": f"{base}/timers?status=scheduled",
                "list, next page": service.url + cursor, "timer page": f"{base}/timers/{timer_id}",
                "list, host filter without a match": f"{base}/timers?status=scheduled&host=nomatch.test"}
        pending = sum(s for s, _, _ in store.depths(range(shards)))
        server = {name: _server_ms(session, url, repeat) for name, url in urls.items()}
        browser = _browser_ms(urls)
        return {"timers_pending": pending, "shards": shards, "populate_s": round(populate_s, 1),
                "repeat": repeat, "pages": {name: {"server_ms": server[name], "browser_ms": browser.get(name)}
                                            for name in urls}}
    finally:
        if service:
            service.stop()
        redis_server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv=None):
    """Entry point; writes ``bench/results/dashboard.json`` and prints a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args(argv)
    document = run(args.timers, args.repeat, args.shards)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, "dashboard.json"), "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
    lines = [f"{document['timers_pending']} pending timers on {document['shards']} shards "
             f"(stored in {document['populate_s']} s)",
             f"{'page':36} {'rows':>5} {'KiB':>6} {'server median ms':>17} {'max ms':>8} "
             f"{'browser load ms':>16}"]
    for name, page in document["pages"].items():
        server, browser = page["server_ms"], page["browser_ms"]
        lines.append(f"{name:36} {server['rows']:>5} {server['bytes'] / 1024:>6.1f} {server['median']:>17} "
                     f"{server['max']:>8} {browser if browser is not None else '-':>16}")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
