"""End to end: webhooks leave on time, once, to the right URL, with the contract's headers.

Everything is real (``tests/harness.py``): gunicorn API, consumer pool,
coordinator, redis-server, and an HTTP receiver on 127.0.0.1.
"""

import collections
import datetime
import math
import threading
import time

import pytest
import requests

from tests.harness import wait_until


def fire_at_epoch(text):
    """``fire_at`` (RFC 3339 UTC, e.g. ``2026-11-29T17:30:00.250Z``) → epoch seconds."""
    when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert when.tzinfo is not None, text
    return when.timestamp()


def settled(service):
    """True when no live shard has a message queued or a delivery in flight (``GET /shards``).

    Once a timer is final (fired or failed) a duplicate webhook could only
    come from a message still queued or an attempt still in flight.
    """
    shards = requests.get(f"{service.url}/shards", timeout=5).json()["shards"]
    return all(s["queued"] == 0 and s.get("in_flight", 0) == 0 for s in shards)


@pytest.fixture(autouse=True)
def _fresh_receiver(receiver):
    receiver.reset()


def wait_status(service, timer_id, status, timeout=10):
    """Wait until GET /timers/<id> shows ``status``; return the timer."""
    return wait_until(lambda: (t := service.get(timer_id))["status"] == status and t,
                      timeout=timeout, message=f"timer {timer_id} to be {status}")


def test_one_second_timer_is_delivered_once_on_time_with_contract_headers(live, receiver):
    created = live.create(f"{receiver.url}/hook", seconds=1)
    assert created.status_code == 201, created.text
    body = created.json()
    timer_id = body["id"]
    assert isinstance(timer_id, int) and timer_id > 0
    assert created.headers["Location"] == f"/timers/{timer_id}"
    assert body["time_left"] == 1
    fire_at = fire_at_epoch(body["fire_at"])

    before = live.get(timer_id)
    assert before["time_left"] == 1
    assert before["status"] == "scheduled"
    assert before["attempts"] == 0
    assert before["last_error"] is None
    assert before["url"] == f"{receiver.url}/hook"

    path = f"/hook/{timer_id}"
    wait_until(lambda: receiver.received(path), timeout=5, message="the webhook")
    done = wait_status(live, timer_id, "fired")
    wait_until(lambda: settled(live), timeout=5, message="shards to drain")

    hits = receiver.received(path)
    assert len(hits) == 1, hits
    hit = hits[0]
    assert hit["path"] == path
    lateness = hit["at"] - fire_at
    assert -0.1 <= lateness <= 1.5, f"webhook arrived {lateness:.3f}s after its fire time"
    assert hit["body"] == b""
    assert hit["headers"]["content-length"] == "0"
    assert hit["headers"]["webhook-id"] == str(timer_id)
    assert abs(int(hit["headers"]["webhook-timestamp"]) - time.time()) <= 5
    assert "timer-service/" in hit["headers"]["user-agent"]
    assert len(receiver.received()) == 1

    assert done["time_left"] == 0
    assert done["status"] == "fired"
    assert done["attempts"] == 1
    assert done["last_error"] is None
    assert done["fire_at"] == body["fire_at"]


def test_time_left_reads_the_delay_before_firing(live, receiver):
    created = live.create(f"{receiver.url}/later", minutes=1, seconds=30)
    assert created.status_code == 201, created.text
    timer = live.get(created.json()["id"])
    assert timer["time_left"] == 90
    assert timer["status"] == "scheduled"
    assert timer["attempts"] == 0


def test_url_joining_trailing_slash_and_query(live, receiver):
    slash = live.create(f"{receiver.url}/hook/", seconds=0).json()["id"]
    query = live.create(f"{receiver.url}/h?a=1", seconds=0).json()["id"]

    wait_until(lambda: receiver.received(f"/hook/{slash}") and receiver.received(f"/h/{query}"),
               timeout=5, message="both webhooks")
    wait_status(live, slash, "fired")
    wait_status(live, query, "fired")
    wait_until(lambda: settled(live), timeout=5, message="shards to drain")

    assert [r["path"] for r in receiver.received(f"/hook/{slash}")] == [f"/hook/{slash}"]
    assert [r["path"] for r in receiver.received(f"/h/{query}")] == [f"/h/{query}?a=1"]
    assert sorted(r["path"] for r in receiver.received()) == sorted([f"/hook/{slash}", f"/h/{query}?a=1"])


def test_three_hundred_timers_due_in_the_same_second_each_fire_once(live, receiver):
    # Every timer gets the whole-second delay that puts its fire time in the
    # second starting at epoch ``due``: creating 300 takes longer than a second.
    count, threads = 300, 6
    ids, fire_times, fire_of, windows = [], [], {}, []
    lock = threading.Lock()
    errors = []

    def create(n, path, delay_of):
        with requests.Session() as session:
            for _ in range(n):
                sent = time.time()
                seconds = delay_of(sent)
                response = session.post(f"{live.url}/timers",
                                        json={"url": f"{receiver.url}{path}", "seconds": seconds}, timeout=10)
                if response.status_code != 201:
                    errors.append(response.text)
                    continue
                if path == "/probe":
                    continue  # the probe only measures the create rate
                with lock:
                    ids.append(response.json()["id"])
                    fire_times.append(fire_at_epoch(response.json()["fire_at"]))
                    fire_of[f"/burst/{ids[-1]}"] = fire_times[-1]
                    windows.append((sent + seconds, fire_times[-1], time.time() + seconds))

    def burst(each, path, delay_of):
        workers = [threading.Thread(target=create, args=(each, path, delay_of)) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    # ``due`` leaves the burst three times the time that a tenth of it (hour-long
    # timers, not due in this test) takes at this machine's speed, and 5 s at least.
    began = time.monotonic()
    burst(count // threads // 10, "/probe", lambda sent: 3600)
    due = math.ceil(time.time() + max(5.0, 3 * 10 * (time.monotonic() - began)))
    burst(count // threads, "/burst", lambda sent: math.ceil(due - sent))
    assert errors == []
    assert time.time() < due, "creating the burst took so long that it was already due"
    assert due <= min(fire_times)
    # Each fire time is the server's clock while it stored the timer, plus the delay (ms).
    assert [w for w in windows if not w[0] - 0.001 <= w[1] <= w[2] + 0.001] == []
    assert len(ids) == count
    assert len(set(ids)) == count

    wait_until(lambda: len(receiver.received()) >= count, timeout=due - time.time() + 15,
               message=f"{count} webhooks")
    wait_until(lambda: settled(live), timeout=10, message="shards to drain")

    per_id = collections.Counter(r["path"] for r in receiver.received())
    assert per_id == collections.Counter({f"/burst/{timer_id}": 1 for timer_id in ids})
    # Never early. The upper bound is loose: the receiver shares this test
    # process, so under a burst its own arrival stamps lag (seen: 1.5 s behind
    # the consumers' claim times on a loaded 2-CPU machine).
    lateness = sorted(r["at"] - fire_of[r["path"]] for r in receiver.received())
    assert lateness[0] >= -0.1, f"a webhook arrived {-lateness[0]:.3f}s before its fire time"
    assert lateness[-1] <= 5.0, f"a webhook of the burst arrived {lateness[-1]:.3f}s late"

    with requests.Session() as session:
        statuses = collections.Counter(
            session.get(f"{live.url}/timers/{timer_id}", timeout=10).json()["status"] for timer_id in ids)
    assert statuses == collections.Counter({"fired": count})


def test_zero_second_timer_fires_at_once(live, receiver):
    sent_at = time.time()
    created = live.create(f"{receiver.url}/now", seconds=0)
    answered_at = time.time()
    assert created.status_code == 201, created.text
    body = created.json()
    timer_id = body["id"]
    assert body["time_left"] == 0

    wait_until(lambda: receiver.received(f"/now/{timer_id}"), timeout=5, message="the webhook")
    done = wait_status(live, timer_id, "fired")
    wait_until(lambda: settled(live), timeout=5, message="shards to drain")
    hits = receiver.received(f"/now/{timer_id}")
    assert len(hits) == 1
    # Its fire time is the moment it was stored (server clock = ours, ms), however long
    # the create took; "at once" is measured from there.
    fire_at = fire_at_epoch(body["fire_at"])
    assert sent_at - 0.001 <= fire_at <= answered_at + 0.001
    assert hits[0]["at"] - fire_at <= 1.0
    assert done["time_left"] == 0
    assert done["attempts"] == 1


def test_receiver_answering_404_fails_the_timer_after_one_attempt(live, receiver):
    created = live.create(f"{receiver.url}/gone", seconds=1)
    assert created.status_code == 201, created.text
    timer_id = created.json()["id"]
    path = f"/gone/{timer_id}"
    receiver.script(path, [(404, {}, 0)])

    failed = wait_status(live, timer_id, "failed", timeout=8)
    wait_until(lambda: settled(live), timeout=5, message="shards to drain")

    assert failed["last_error"] == "HTTP 404"
    assert failed["attempts"] == 1
    assert failed["time_left"] == 0
    assert len(receiver.received(path)) == 1
    assert len(receiver.received()) == 1
