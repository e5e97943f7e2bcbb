"""Run now and re-drive, end to end: ``POST /timers/{id}/run`` and ``POST /timers/run``.

Real processes (gunicorn API, consumer pool, coordinator, redis-server) and a
real receiver whose scripted answers make timers fail, then recover.
"""

import concurrent.futures
import datetime
import time

import pytest
import requests

from tests.harness import Service, wait_until
from tests.test_delivery import fire_at_epoch, settled, wait_status


@pytest.fixture(autouse=True)
def _fresh_receiver(receiver):
    receiver.reset()


def _failed_once(service, receiver, path):
    """A timer whose only attempt (``retry.max_attempts`` 1) got a 503 from ``path``: its id."""
    receiver.script(path, [(503, {}, 0)])
    response = service.create(receiver.url + path, seconds=0, retry={"max_attempts": 1})
    assert response.status_code == 201, response.text
    timer = wait_status(service, response.json()["id"], "failed")
    assert (timer["attempts"], timer["last_error"], timer["next_attempt_at"]) == (1, "HTTP 503", None)
    return timer["id"]


def _run(service, timer_id):
    return requests.post(f"{service.url}/timers/{timer_id}/run", timeout=10)


def _bulk(service, **body):
    response = requests.post(f"{service.url}/timers/run", json={"status": "failed", **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_failed_timer_re_driven_is_delivered_once_with_the_same_webhook_id(live, receiver):
    timer_id = _failed_once(live, receiver, "/recovers")
    receiver.script("/recovers", [(200, {}, 0)])
    response = _run(live, timer_id)
    assert response.status_code == 202, response.text
    body = response.json()
    # Due now, a fresh budget; the attempt count and the last error are kept.
    assert (body["id"], body["status"], body["attempts"], body["last_error"]) == (
        timer_id, "retrying", 1, "HTTP 503")
    assert fire_at_epoch(body["next_attempt_at"]) <= time.time() + 0.002
    timer = wait_status(live, timer_id, "fired")
    assert (timer["attempts"], timer["last_error"], timer["next_attempt_at"]) == (2, None, None)
    wait_until(lambda: settled(live), timeout=10, message="queues to drain")
    deliveries = receiver.received(f"/recovers/{timer_id}")
    assert len(deliveries) == 2  # the failed attempt and the one delivery
    assert [d["headers"]["webhook-id"] for d in deliveries] == [str(timer_id)] * 2


def test_run_now_fires_a_one_hour_timer_at_once(live, receiver):
    timer_id = live.create(f"{receiver.url}/now", hours=1).json()["id"]
    asked = time.time()
    response = _run(live, timer_id)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["status"], body["attempts"], body["time_left"], body["next_attempt_at"]) == (
        "scheduled", 0, 0, None)
    assert fire_at_epoch(body["fire_at"]) <= time.time() + 0.002
    [delivery] = wait_until(lambda: receiver.received(f"/now/{timer_id}"), timeout=10,
                            message="the webhook of the timer run now")
    assert delivery["at"] >= asked
    assert (wait_status(live, timer_id, "fired")["attempts"]) == 1


def test_run_on_a_fired_or_cancelled_timer_is_409_and_sends_nothing(live, receiver):
    fired = live.create(f"{receiver.url}/done", seconds=0).json()["id"]
    wait_status(live, fired, "fired")
    cancelled = live.create(f"{receiver.url}/done", hours=1).json()["id"]
    assert requests.delete(f"{live.url}/timers/{cancelled}", timeout=10).status_code == 204
    for timer_id, status in ((fired, "fired"), (cancelled, "cancelled")):
        response = _run(live, timer_id)
        assert response.status_code == 409, response.text
        assert response.json()["description"] == f"timer {timer_id} is already {status}"
    assert _run(live, 999_999_999).status_code == 404
    wait_until(lambda: settled(live), timeout=10, message="queues to drain")
    assert len(receiver.received(f"/done/{fired}")) == 1
    assert receiver.received(f"/done/{cancelled}") == []
    assert live.get(fired)["status"] == "fired" and live.get(cancelled)["status"] == "cancelled"


def test_bulk_re_drive_filters_by_host_and_since_and_a_dry_run_changes_nothing(live, receiver):
    local = _failed_once(live, receiver, "/filter")
    receiver.script("/filter", [(503, {}, 0)])
    other = live.create(receiver.url.replace("127.0.0.1", "localhost") + "/filter", seconds=0,
                        retry={"max_attempts": 1}).json()["id"]
    wait_status(live, other, "failed")
    assert _bulk(live, host="nowhere.test") == {"matched": 0, "run": 0, "next_cursor": None}
    assert _bulk(live, since="2999-01-01T00:00:00Z") == {"matched": 0, "run": 0, "next_cursor": None}
    assert _bulk(live, host="LOCALHOST", dry_run=True) == {"matched": 1, "run": 0, "next_cursor": None}
    assert live.get(other)["status"] == "failed"
    receiver.script("/filter", [(200, {}, 0)])
    assert _bulk(live, host="localhost", since="2000-01-01T00:00:00+01:00")["run"] == 1
    wait_status(live, other, "fired")
    assert live.get(local)["status"] == "failed"
    response = requests.post(f"{live.url}/timers/run", json={"status": "fired"}, timeout=10)
    assert (response.status_code, response.json()["field"]) == (400, "status")


def test_bulk_re_drive_of_500_failed_timers_from_two_api_hosts_at_once_delivers_each_once(
        live, receiver, tmp_path):
    receiver.script("/bulk", [(503, {}, 0)])
    # Only the timers of this test (finished from now on): other tests leave failed timers behind.
    since = datetime.datetime.now(datetime.UTC).isoformat()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: live.create(receiver.url + "/bulk", seconds=0,
                                                  retry={"max_attempts": 1}).json()["id"], range(500)))
    wait_until(lambda: _bulk(live, since=since, dry_run=True)["matched"] == 500, timeout=60,
               message="500 failed timers")
    assert _bulk(live, since=since, dry_run=True) == {"matched": 500, "run": 0, "next_cursor": None}
    receiver.script("/bulk", [(200, {}, 0)])
    # A second API host on the same Redis; both re-drive at once.
    other = Service(live.env["REDIS_URL"], str(tmp_path)).start("api")
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda service: _bulk(service, since=since), [live, other]))
        assert sum(answer["run"] for answer in answers) == 500, answers
        assert all(answer["matched"] >= answer["run"] for answer in answers)
        nothing_left = {"matched": 0, "run": 0, "next_cursor": None}
        assert [_bulk(service, since=since) for service in (live, other)] == [nothing_left] * 2
    finally:
        other.stop(timeout=10)
    wait_until(lambda: all(live.get(i)["status"] == "fired" for i in ids), timeout=60,
               message="500 re-driven timers to fire")
    wait_until(lambda: settled(live), timeout=10, message="queues to drain")
    per_timer = {}
    for delivery in receiver.received():
        per_timer.setdefault(delivery["headers"]["webhook-id"], []).append(delivery)
    # Each: the failed attempt and exactly one delivery.
    assert sorted(int(i) for i in per_timer) == sorted(ids)
    assert {len(deliveries) for deliveries in per_timer.values()} == {2}

