"""Retries end to end: real receiver answers drive the timer's status and attempts."""

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import wait_until


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
