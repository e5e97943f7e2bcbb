"""Retries end to end: real receiver answers drive the timer's status and attempts."""

import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import json_lines, wait_until
from tests.test_delivery import fire_at_epoch, settled


def _fire(service, receiver, path, answers):
    receiver.script(path, answers)
    response = service.create(receiver.url + path, seconds=0)
    assert response.status_code == 201
    return response.json()["id"]


def _final(service, timer_id, timeout=15):
    return wait_until(
        lambda: (t := service.get(timer_id))["status"] in ("fired", "failed") and t,
        timeout=timeout, message=f"timer {timer_id} to finish")


def test_503_503_200_is_fired_after_three_attempts(service, receiver):
    timer_id = _fire(service, receiver, "/flaky", [(503, {}, 0), (503, {}, 0), (200, {}, 0)])
    timer = _final(service, timer_id)
    assert timer["status"] == "fired"
    assert timer["attempts"] == 3
    deliveries = receiver.received(f"/flaky/{timer_id}")
    assert len(deliveries) == 3
    assert {d["headers"]["webhook-id"] for d in deliveries} == {str(timer_id)}


def test_404_fails_after_one_attempt(service, receiver):
    timer_id = _fire(service, receiver, "/gone", [(404, {}, 0)])
    timer = _final(service, timer_id)
    assert (timer["status"], timer["attempts"], timer["last_error"]) == ("failed", 1, "HTTP 404")
    assert len(receiver.received(f"/gone/{timer_id}")) == 1


def test_302_is_not_followed_and_fails(service, receiver):
    timer_id = _fire(service, receiver, "/moved", [(302, {"Location": receiver.url + "/elsewhere"}, 0)])
    timer = _final(service, timer_id)
    assert (timer["status"], timer["attempts"]) == ("failed", 1)
    assert timer["last_error"].startswith("HTTP 302")
    assert receiver.received("/elsewhere") == []


def test_429_retry_after_delays_the_next_attempt(service, receiver):
    timer_id = _fire(service, receiver, "/busy", [(429, {"Retry-After": "2"}, 0), (200, {}, 0)])
    timer = wait_until(lambda: (t := service.get(timer_id))["status"] == "retrying" and t, timeout=5)
    assert (timer["attempts"], timer["last_error"]) == (1, "HTTP 429")
    timer = _final(service, timer_id)
    assert (timer["status"], timer["attempts"]) == ("fired", 2)
    first, second = receiver.received(f"/busy/{timer_id}")
    assert second["at"] - first["at"] >= 2.0


def test_a_retry_after_of_non_ascii_digits_is_ignored_not_fatal(service, receiver):
    # "\u00b2" (superscript two) is latin-1, so an HTTP header can carry it; it is not delay-seconds.
    timer_id = _fire(service, receiver, "/odd", [(503, {"Retry-After": "\u00b2"}, 0), (200, {}, 0)])
    timer = _final(service, timer_id)
    assert (timer["status"], timer["attempts"]) == ("fired", 2)
    assert len(receiver.received(f"/odd/{timer_id}")) == 2
    # Not retried by the safety net for bugs ("internal error"), which logs this line.
    assert "delivery failed unexpectedly" not in service.logs("workers")


def test_connection_refused_retries_until_max_attempts(make_service, receiver):
    service = make_service(env={"TIMER_WEBHOOK_MAX_ATTEMPTS": "2"}).start()
    # Port 9 on loopback: nothing listens there, so the connection is refused.
    response = service.create("http://127.0.0.1:9/hook", seconds=0)
    timer = _final(service, response.json()["id"])
    assert (timer["status"], timer["attempts"], timer["last_error"]) == ("failed", 2, "connection refused")
    # The first attempt is followed by a retry; the last one, though retryable, by nothing: "fail".
    assert _attempts_by_outcome(service) == {"retry": 1, "fail": 1}


def _attempts_by_outcome(service):
    text = requests.get(f"{service.url}/metrics", timeout=5).text
    return {sample.labels["outcome"]: sample.value
            for family in text_string_to_metric_families(text) if family.name == "timer_webhook_attempts"
            for sample in family.samples if sample.name == "timer_webhook_attempts_total" and sample.value}


def test_timeout_is_retried(make_service, receiver):
    # The second answer is immediate; 2 s leaves a busy machine room to give it in time.
    service = make_service(env={"TIMER_WEBHOOK_TIMEOUT_SECONDS": "2"}).start()
    timer_id = _fire(service, receiver, "/slow", [(200, {}, 4.0), (200, {}, 0)])
    timer = _final(service, timer_id)
    assert (timer["status"], timer["attempts"]) == ("fired", 2)
    assert len(receiver.received(f"/slow/{timer_id}")) == 2


def _failed_total(service):
    text = requests.get(f"{service.url}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "timer_failed"
               for sample in family.samples if sample.name == "timer_failed_total")


def test_an_always_503_receiver_is_retried_a_floor_apart_until_the_window_ends(make_service, receiver):
    service = make_service(env={"TIMER_WEBHOOK_MAX_RETRY_SECONDS": "20"}).start()
    receiver.script("/down", [(503, {}, 0)])
    before = time.time()
    timer_id = service.create(receiver.url + "/down", seconds=0).json()["id"]
    retrying = wait_until(lambda: (t := service.get(timer_id))["status"] == "retrying" and t, timeout=15)
    first = receiver.received(f"/down/{timer_id}")[0]["at"]
    # Equal jitter: the wait after the first attempt is 1-2 s, from when the attempt ended.
    assert first + 1 - 0.002 <= fire_at_epoch(retrying["next_attempt_at"]) <= time.time() + 2
    timer = _final(service, timer_id, timeout=60)
    failed_seen = time.time()
    arrivals = [r["at"] for r in receiver.received(f"/down/{timer_id}")]
    assert (timer["status"], timer["last_error"], timer["next_attempt_at"]) == ("failed", "HTTP 503", None)
    assert timer["attempts"] == len(arrivals)
    # The floor: no two attempts less than 1 s apart (Redis keeps milliseconds).
    assert min(b - a for a, b in zip(arrivals, arrivals[1:], strict=False)) >= 1 - 0.002, arrivals
    # The last attempt is due at the end of the 20 s window, which starts no earlier than the create;
    # the shortest waits (1, 2, 4, 8 s) fit at most 6 attempts in it.
    assert arrivals[-1] >= before + 20 and failed_seen >= before + 20
    assert 2 <= len(arrivals) <= 6
    assert _failed_total(service) == 1
    wait_until(lambda: settled(service), timeout=10, message="queues to drain")
    assert len(receiver.received(f"/down/{timer_id}")) == len(arrivals)


def test_a_timers_own_max_attempts_of_2_ends_after_two_attempts(service, receiver):
    receiver.script("/twice", [(503, {}, 0)])
    response = service.create(receiver.url + "/twice", seconds=0, retry={"max_attempts": 2})
    assert response.status_code == 201, response.text
    assert response.json()["retry"] == {"max_attempts": 2}
    timer = _final(service, response.json()["id"])
    assert (timer["status"], timer["attempts"], timer["last_error"]) == ("failed", 2, "HTTP 503")
    assert timer["retry"] == {"max_attempts": 2}
    wait_until(lambda: settled(service), timeout=10, message="queues to drain")
    first, second = receiver.received(f"/twice/{timer['id']}")
    assert second["at"] - first["at"] >= 1 - 0.002


def _retry_line(service, timer_id):
    return wait_until(lambda: [line for line in json_lines(service.logs("workers"))
                               if line.get("message") == "delivery attempt"
                               and line.get("timer_id") == timer_id and line.get("status") == "retrying"],
                      timeout=10)[0]


def test_retry_after_below_the_floor_is_honoured_and_above_the_cap_is_capped(service, receiver):
    timer_id = _fire(service, receiver, "/soon", [(503, {"Retry-After": "0"}, 0), (200, {}, 0)])
    timer = _final(service, timer_id)
    assert (timer["status"], timer["attempts"]) == ("fired", 2)
    # The receiver asked for no wait: the 1 s floor applies to backoff, not to Retry-After.
    assert _retry_line(service, timer_id)["wait_s"] == 0.0

    timer_id = _fire(service, receiver, "/later", [(503, {"Retry-After": "7200"}, 0)])
    timer = wait_until(lambda: (t := service.get(timer_id))["status"] == "retrying" and t, timeout=10)
    seen = time.time()
    [arrival] = receiver.received(f"/later/{timer_id}")
    assert _retry_line(service, timer_id)["wait_s"] == 3600.0
    assert arrival["at"] + 3600 - 0.002 <= fire_at_epoch(timer["next_attempt_at"]) <= seen + 3600
    assert requests.delete(f"{service.url}/timers/{timer_id}", timeout=5).status_code == 204
