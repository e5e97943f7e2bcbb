"""Security end to end: signed webhooks, the SSRF guard, bearer tokens, safe queue messages."""

import os
import pickle

import requests
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from sharding.queues import storage_name
from tests.harness import wait_until

SECRET_A = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_B = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


def _finished(service, timer_id):
    return wait_until(lambda: (t := service.get(timer_id))["status"] in ("fired", "failed") and t,
                      timeout=15, message=f"timer {timer_id} to finish")


def test_every_secret_signs_and_the_receiver_verifies(make_service, receiver):
    service = make_service(env={"TIMER_WEBHOOK_SECRET": f"{SECRET_A} {SECRET_B}"}).start()
    timer_id = service.create(receiver.url + "/signed", seconds=0).json()["id"]
    delivery = wait_until(lambda: receiver.received(f"/signed/{timer_id}"), timeout=10)[0]
    headers = delivery["headers"]
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(part.startswith("v1,") for part in headers["webhook-signature"].split(" "))
    for secret in (SECRET_A, SECRET_B):
        # verify() raises WebhookVerificationError on a bad signature or a stale timestamp.
        Webhook(secret).verify(delivery["body"], headers, json_parse=False)
    other = "whsec_" + "A" * 32
    try:
        Webhook(other).verify(delivery["body"], headers, json_parse=False)
    except WebhookVerificationError:
        pass
    else:
        raise AssertionError("a signature verified with a secret that was not used")
    assert headers["webhook-id"] == str(timer_id)


def test_unsigned_without_a_secret(service, receiver):
    timer_id = service.create(receiver.url + "/plain", seconds=0).json()["id"]
    delivery = wait_until(lambda: receiver.received(f"/plain/{timer_id}"), timeout=10)[0]
    assert "webhook-signature" not in delivery["headers"]


def test_cloud_metadata_address_is_refused(service):
    timer = _finished(service, service.create("http://169.254.169.254/latest/meta-data",
                                              seconds=0).json()["id"])
    assert (timer["status"], timer["attempts"]) == ("failed", 1)
    assert timer["last_error"] == ("denied by TIMER_WEBHOOK_DENY_NETWORKS: destination 169.254.169.254 "
                                   "is in the denied network 169.254.0.0/16")


def test_denied_network_gets_no_connection(make_service, receiver):
    # Deny loopback: the receiver (on 127.0.0.1) must see nothing, also via a host name.
    service = make_service(env={"TIMER_WEBHOOK_DENY_NETWORKS": "127.0.0.0/8,::1/128"}).start()
    port = receiver.url.rsplit(":", 1)[1]
    ids = [service.create(f"http://{host}:{port}/private", seconds=0).json()["id"]
           for host in ("127.0.0.1", "localhost")]
    for timer_id in ids:
        timer = _finished(service, timer_id)
        assert (timer["status"], timer["attempts"]) == ("failed", 1)
        assert "denied by TIMER_WEBHOOK_DENY_NETWORKS" in timer["last_error"]
    assert receiver.received() == []


def test_tokens_guard_timers_and_shards_only(make_service, receiver):
    service = make_service(env={"TIMER_API_TOKENS": "token-one, token-two"})
    service.start("workers", "coordinator")
    service.start("api", ready_path="/healthz")
    body = {"seconds": 60, "url": receiver.url + "/hook"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic token-one"},
                    {"Authorization": "Bearer"}):
        for method, path in (("POST", "/timers"), ("GET", "/timers/1000"), ("GET", "/shards"),
                             ("DELETE", "/timers/1000"), ("GET", "/timers?status=failed")):
            response = requests.request(method, service.url + path, json=body, headers=headers, timeout=5)
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.json()["title"] == "Unauthorized"
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert requests.get(service.url + path, timeout=5).status_code == 200, path
    ok = requests.post(service.url + "/timers", json=body, timeout=5,
                       headers={"Authorization": "Bearer token-two"})
    assert ok.status_code == 201
    read = requests.get(f"{service.url}/timers/{ok.json()['id']}", timeout=5,
                        headers={"Authorization": "Bearer token-one"})
    assert read.status_code == 200


def test_idempotency_keys_are_per_token(make_service, receiver):
    service = make_service(env={"TIMER_API_TOKENS": "token-one,token-two"})
    service.start("api", ready_path="/healthz")
    body = {"seconds": 60, "url": receiver.url + "/hook"}
    ids = [requests.post(service.url + "/timers", json=body, timeout=5,
                         headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "same"}).json()["id"]
           for token in ("token-one", "token-two", "token-one")]
    assert ids[0] != ids[1]
    assert ids[0] == ids[2]


class _WritesAFile:
    """A pickle payload that would create a file if a consumer unpickled it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_on_a_queue_is_never_executed(service, receiver, redis_client, tmp_path):
    marker = str(tmp_path / "pwned")
    queue = f"huey.redis.{storage_name(0)}"
    redis_client.lpush(queue, pickle.dumps(_WritesAFile(marker)))
    redis_client.lpush(queue, b'{"timer": "1; rm -rf /"}')
    wait_until(lambda: redis_client.llen(queue) == 0, timeout=10,
               message="the consumers to drop the bad messages")
    # The consumers keep working.
    timer_id = service.create(receiver.url + "/after", seconds=0).json()["id"]
    wait_until(lambda: receiver.received(f"/after/{timer_id}"), timeout=10)
    assert not os.path.exists(marker)


def test_requests_gunicorn_refuses_get_json_errors(service):
    for headers in ({"X-Big": "a" * 9000}, {f"X-H{i}": "v" for i in range(110)}):
        response = requests.get(service.url + "/healthz", headers=headers, timeout=5)
        assert 400 <= response.status_code < 500
        assert response.headers["Content-Type"] == "application/json"
        assert set(response.json()) == {"title", "description"}
    long_query = requests.get(service.url + "/timers?status=" + "x" * 5000, timeout=5)
    assert long_query.status_code == 414
    assert long_query.json()["title"] == "414 URI Too Long"
