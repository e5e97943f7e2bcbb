"""Load script for the timer API (locust 2.47): steady creation plus reads.

Run against a running service (``make run``), e.g. 50 users for one minute::

    .venv/bin/locust -f bench/locustfile.py --host http://127.0.0.1:8000 \\
        --headless --users 50 --spawn-rate 10 --run-time 1m

Each user creates timers (``POST /timers``) and reads back the ones it
created (``GET /timers/<id>``), three reads per create, at a steady
``TIMER_LOCUST_RPS`` requests per second per user (default 2; locust's
``constant_throughput``), so ``--users`` sets the total rate. Settings, from
the environment:

* ``TIMER_LOCUST_HOOK``: the webhook base URL the timers call
  (default ``http://127.0.0.1:9000/hook``; run ``python -m bench.receiver``
  there to receive them, or let them fail: that is load on the consumers too).
* ``TIMER_LOCUST_MIN_S``, ``TIMER_LOCUST_MAX_S``: the timers' delay range in
  seconds (default 1 to 3600: most stay pending, some fire during the run).
* ``TIMER_LOCUST_RPS``: requests per second per user (default 2).
* ``TIMER_API_TOKEN``: sent as ``Authorization: Bearer`` when set (for
  services with ``TIMER_API_TOKENS``).

Reads are grouped under one name, ``/timers/[id]``, in locust's statistics.
"""

import os
import random

from locust import HttpUser, constant_throughput, task

HOOK_URL = os.environ.get("TIMER_LOCUST_HOOK", "http://127.0.0.1:9000/hook")
MIN_DELAY_S = int(os.environ.get("TIMER_LOCUST_MIN_S", "1"))
MAX_DELAY_S = int(os.environ.get("TIMER_LOCUST_MAX_S", "3600"))
RPS_PER_USER = float(os.environ.get("TIMER_LOCUST_RPS", "2"))
TOKEN = os.environ.get("TIMER_API_TOKEN", "")
KEEP_IDS = 1000


class TimerUser(HttpUser):
    """One API client: creates timers and reads them back at a steady rate."""

    wait_time = constant_throughput(RPS_PER_USER)

    def on_start(self):
        """Prepare headers and the list of this user's timer ids."""
        self.ids = []
        if TOKEN:
            self.client.headers["Authorization"] = f"Bearer {TOKEN}"

    @task(1)
    def create_timer(self):
        """``POST /timers`` with a random delay; expects 201."""
        body = {"seconds": random.randint(MIN_DELAY_S, MAX_DELAY_S), "url": HOOK_URL}
        with self.client.post("/timers", json=body, name="/timers", catch_response=True) as response:
            if response.status_code != 201:
                response.failure(f"expected 201, got {response.status_code}: {response.text[:200]}")
                return
            self.ids.append(response.json()["id"])
            del self.ids[:-KEEP_IDS]

    @task(3)
    def read_timer(self):
        """``GET /timers/<id>`` of a timer this user created; expects 200."""
        if not self.ids:
            self.create_timer()
            return
        timer_id = random.choice(self.ids)
        with self.client.get(f"/timers/{timer_id}", name="/timers/[id]", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"expected 200, got {response.status_code}")
