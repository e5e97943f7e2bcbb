"""End to end, the scheduling API (``shared/CONTRACT.md`` sections 2-5, "since: scheduling API"):
``fire_at``, ``PATCH /timers/{id}`` and a payload (body, content type, headers) with each webhook.

Everything is real (``tests/harness.py``): gunicorn API, consumer pool, coordinator,
redis-server, and an HTTP receiver on 127.0.0.1. Every fire-time bound is measured from the
``fire_at`` the API returned.
"""

import concurrent.futures
import datetime
import json
import time

import pytest
import requests
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.harness import wait_until, whole_service
from tests.test_delivery import fire_at_epoch, settled, wait_status

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TIMEOUT = 10
# A webhook leaves within 1 s of its fire time (README "Guarantees"); the receiver's
# clock and ours are the same, so a small negative margin covers rounding only.
EARLY_S, LATE_S = -0.1, 1.5
FORBIDDEN = ["Host", "Content-Length", "content-length", "Transfer-Encoding", "Connection", "Keep-Alive",
             "Proxy-Connection", "TE", "Trailer", "Upgrade", "Content-Type", "CONTENT-TYPE", "webhook-id",
             "Webhook-Timestamp", "webhook-signature"]


@pytest.fixture(scope="module")
def live(redis_server, tmp_path_factory):
    """The whole service with a webhook secret, every consumer started, shared by this module."""
    with whole_service(redis_server, str(tmp_path_factory.mktemp("scheduling")),
                       {"TIMER_WEBHOOK_SECRET": SECRET}) as service:
        yield service


@pytest.fixture(autouse=True)
def _fresh_receiver(receiver):
    receiver.reset()


def rfc3339(epoch_s, offset_minutes=0):
    """``epoch_s`` as RFC 3339 text in the given UTC offset, with milliseconds."""
    zone = datetime.timezone(datetime.timedelta(minutes=offset_minutes))
    return datetime.datetime.fromtimestamp(epoch_s, zone).isoformat(timespec="milliseconds")


def create(service, **fields):
    """POST /timers with ``fields``; the response."""
    return requests.post(f"{service.url}/timers", json=fields, timeout=TIMEOUT)


def patch(service, timer_id, **fields):
    """PATCH /timers/<id> with ``fields``; the response."""
    return requests.patch(f"{service.url}/timers/{timer_id}", json=fields, timeout=TIMEOUT)


def created_id(response):
    assert response.status_code == 201, response.text
    return response.json()["id"]


def delivered_once(service, receiver, path, timer_id, timeout=15):
    """Wait until ``timer_id`` is fired and nothing is queued or in flight; its one delivery."""
    wait_status(service, timer_id, "fired", timeout=timeout)
    wait_until(lambda: settled(service), timeout=10, message="shards to drain")
    hits = receiver.received(f"{path}/{timer_id}")
    assert len(hits) == 1, hits
    return hits[0]


def assert_field_error(response, field):
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["field"] == field, body
    assert f"'{field}'" in body["description"], body


# --- fire_at -------------------------------------------------------------------------------------

@pytest.mark.parametrize("offset_minutes", [0, 330, -180], ids=["Z", "+05:30", "-03:00"])
def test_fire_at_a_few_seconds_ahead_fires_on_time_in_any_offset(live, receiver, offset_minutes):
    text = rfc3339(time.time() + 2, offset_minutes)
    if offset_minutes == 0:
        text = text.replace("+00:00", "Z")
    response = create(live, url=f"{receiver.url}/at", fire_at=text)
    timer_id = created_id(response)
    body = response.json()
    assert 0 <= body["time_left"] <= 2
    fire_at = fire_at_epoch(body["fire_at"])
    hit = delivered_once(live, receiver, "/at", timer_id)
    assert EARLY_S <= hit["at"] - fire_at <= LATE_S, f"arrived {hit['at'] - fire_at:.3f}s after fire_at"
    assert hit["body"] == b""
    assert "content-type" not in hit["headers"]


def test_fire_at_is_stored_to_the_millisecond_as_utc(live, receiver):
    # 2026-12-24T18:00:00.123456+05:30, a year from any test run or less: cut to ms, shown in UTC.
    future = datetime.datetime.now(datetime.UTC).year + 1
    response = create(live, url=f"{receiver.url}/far", fire_at=f"{future}-01-02T05:30:00.123456+05:30")
    timer_id = created_id(response)
    expected = f"{future}-01-02T00:00:00.123Z"
    assert response.json()["fire_at"] == expected
    timer = live.get(timer_id)
    assert timer["fire_at"] == expected
    assert timer["status"] == "scheduled"
    assert 0 < timer["time_left"] <= 366 * 86400


def test_a_past_fire_at_fires_at_once(live, receiver):
    before = time.time()
    response = create(live, url=f"{receiver.url}/past", fire_at="2020-01-01T00:00:00+01:00")
    timer_id = created_id(response)
    body = response.json()
    assert body["time_left"] == 0
    # Past means now: the stored fire time is the creation time, on the Redis clock (this machine's).
    fire_at = fire_at_epoch(body["fire_at"])
    assert before - 1 <= fire_at <= time.time() + 1
    hit = delivered_once(live, receiver, "/past", timer_id)
    assert EARLY_S <= hit["at"] - fire_at <= LATE_S


def test_fire_at_beyond_the_maximum_delay_is_a_400(live, receiver):
    year = 31_536_000  # TIMER_MAX_DELAY_SECONDS default
    beyond = create(live, url=f"{receiver.url}/x", fire_at=rfc3339(time.time() + year + 60))
    assert_field_error(beyond, "fire_at")
    assert "31536000" in beyond.json()["description"]
    inside = created_id(create(live, url=f"{receiver.url}/x", fire_at=rfc3339(time.time() + year - 60)))
    assert requests.delete(f"{live.url}/timers/{inside}", timeout=TIMEOUT).status_code == 204


@pytest.mark.parametrize("duration", [{"seconds": 5}, {"seconds": 0}, {"hours": 1}, {"minutes": 0}])
def test_fire_at_with_a_duration_is_a_400(live, receiver, duration):
    response = create(live, url=f"{receiver.url}/x", fire_at=rfc3339(time.time() + 60), **duration)
    assert_field_error(response, "fire_at")


@pytest.mark.parametrize("value", [
    "2026-13-01T00:00:00Z", "2026-12-24T18:00:00", "2026-12-24", 1798131600, 1798131600.5, None, True,
    "", "tomorrow", "2026-12-24T18:00Z", "20261224T180000Z", "2026-12-24T18:00:00+0100",
    "2026-02-30T00:00:00Z", "2026-12-24T24:00:00Z", "2026-12-24T18:00:00+01:00 ", "\ud800",
])
def test_a_malformed_fire_at_is_a_400_naming_it(live, receiver, value):
    assert_field_error(create(live, url=f"{receiver.url}/x", fire_at=value), "fire_at")
    assert_field_error(patch(live, 1000, fire_at=value), "fire_at")


# --- PATCH /timers/{id} ----------------------------------------------------------------------------

def test_patch_earlier_fires_once_at_the_new_time(live, receiver):
    timer_id = created_id(create(live, url=f"{receiver.url}/earlier", minutes=5))
    response = patch(live, timer_id, seconds=1)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == timer_id
    assert body["status"] == "scheduled"
    assert body["time_left"] == 1
    fire_at = fire_at_epoch(body["fire_at"])
    assert live.get(timer_id)["fire_at"] == body["fire_at"]
    hit = delivered_once(live, receiver, "/earlier", timer_id)
    assert EARLY_S <= hit["at"] - fire_at <= LATE_S


def test_patch_later_fires_once_at_the_new_time_not_the_old(live, receiver):
    old = time.time() + 2
    timer_id = created_id(create(live, url=f"{receiver.url}/later", fire_at=rfc3339(old)))
    new_text = rfc3339(old + 3, 60)
    response = patch(live, timer_id, fire_at=new_text)
    assert response.status_code == 200, response.text
    fire_at = fire_at_epoch(response.json()["fire_at"])
    assert fire_at == pytest.approx(datetime.datetime.fromisoformat(new_text).timestamp(), abs=0.001)
    hit = delivered_once(live, receiver, "/later", timer_id)
    assert EARLY_S <= hit["at"] - fire_at <= LATE_S


def test_patch_of_a_finished_or_unknown_timer(live, receiver):
    fired = created_id(create(live, url=f"{receiver.url}/done", seconds=0))
    wait_status(live, fired, "fired")
    response = patch(live, fired, seconds=10)
    assert response.status_code == 409, response.text
    assert "fired" in response.json()["description"]
    cancelled = created_id(create(live, url=f"{receiver.url}/done", minutes=5))
    assert requests.delete(f"{live.url}/timers/{cancelled}", timeout=TIMEOUT).status_code == 204
    assert patch(live, cancelled, seconds=10).status_code == 409
    assert live.get(cancelled)["status"] == "cancelled"
    assert patch(live, 999_999_000, seconds=10).status_code == 404
    assert patch(live, "abc", seconds=10).status_code == 404


@pytest.mark.parametrize(("fields", "field"), [
    ({}, "fire_at"), ({"url": "http://x.test/h"}, "url"), ({"body": "x"}, "body"),
    ({"seconds": -1}, "seconds"), ({"seconds": 1.5}, "seconds"), ({"hours": 8761}, "hours"),
    ({"fire_at": "2026-12-24T18:00:00Z", "minutes": 1}, "fire_at"),
])
def test_patch_with_a_bad_body_is_a_400_and_changes_nothing(live, receiver, fields, field):
    timer_id = created_id(create(live, url=f"{receiver.url}/bad", minutes=5))
    before = live.get(timer_id)
    assert_field_error(patch(live, timer_id, **fields), field)
    assert live.get(timer_id)["fire_at"] == before["fire_at"]
    response = patch(live, timer_id, fire_at=rfc3339(time.time() + 400 * 86400))
    assert_field_error(response, "fire_at")
    assert live.get(timer_id)["fire_at"] == before["fire_at"]


def test_patch_a_retrying_timer_moves_its_next_attempt(live, receiver):
    receiver.script("/flaky", [(503, {"Retry-After": "3600"}, 0), (200, {}, 0)])
    timer_id = created_id(create(live, url=f"{receiver.url}/flaky", seconds=0))
    wait_status(live, timer_id, "retrying")
    response = patch(live, timer_id, seconds=1)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["attempts"], body["last_error"]) == ("retrying", 1, "HTTP 503")
    fire_at = fire_at_epoch(body["fire_at"])
    done = wait_status(live, timer_id, "fired", timeout=15)
    assert done["attempts"] == 2
    hits = receiver.received(f"/flaky/{timer_id}")
    assert len(hits) == 2
    assert EARLY_S <= hits[1]["at"] - fire_at <= LATE_S


def test_50_patches_racing_the_fire_time_each_win_or_lose_whole(live, receiver, figures):
    # 50 timers due at one moment; each is moved 3 s later by a PATCH sent around that moment.
    # Of the PATCH and the claim exactly one wins: 200 and the webhook at the new time, or
    # 409 and the webhook at the old time; never both, never twice.
    due_text = rfc3339(time.time() + 2)
    created = [create(live, url=f"{receiver.url}/race", fire_at=due_text) for _ in range(50)]
    ids = [created_id(response) for response in created]
    # Each timer's own fire time as the API returned it (later than asked only if creating was slow).
    old_fires = [fire_at_epoch(response.json()["fire_at"]) for response in created]
    due = fire_at_epoch(due_text)
    new_text = rfc3339(due + 3)

    def move(k, timer_id):
        # Spread over [due - 0.25 s, due + 0.25 s] so that some land before the claim, some after.
        time.sleep(max(0.0, due - 0.25 + k * 0.01 - time.time()))
        return patch(live, timer_id, fire_at=new_text)

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(move, range(50), ids))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 409}, [r.text for r in responses]
    figures.append(f"PATCH racing the fire time: {codes.count(200)} applied, {codes.count(409)} x 409")
    for timer_id in ids:
        wait_status(live, timer_id, "fired", timeout=15)
    wait_until(lambda: settled(live), timeout=10, message="shards to drain")
    for timer_id, old_fire, response in zip(ids, old_fires, responses, strict=True):
        hits = receiver.received(f"/race/{timer_id}")
        assert len(hits) == 1, (timer_id, response.status_code, hits)
        if response.status_code == 200:
            new_fire = fire_at_epoch(response.json()["fire_at"])
            assert new_fire >= due + 3 - 0.001  # the new time (later only if it had passed already)
            assert EARLY_S <= hits[0]["at"] - new_fire <= LATE_S
        else:
            assert response.json()["description"].endswith(("firing", "fired"))
            assert EARLY_S <= hits[0]["at"] - old_fire <= LATE_S


# --- payload -------------------------------------------------------------------------------------

def test_body_content_type_and_headers_arrive_byte_for_byte_and_signed(live, receiver):
    text = '{"order": 42, "note": "crème brûlée ☕\\n", "emoji": "🙂"}\r\n'
    headers = {"Authorization": "Bearer s3cr3t-t0ken", "X-Trace": "a=1; b=\"two words\"", "X-Empty": ""}
    response = create(live, url=f"{receiver.url}/payload", seconds=0, body=text,
                      content_type="application/json; charset=utf-8", headers=headers)
    timer_id = created_id(response)
    hit = delivered_once(live, receiver, "/payload", timer_id)
    assert hit["body"] == text.encode("utf-8")
    got = hit["headers"]
    assert got["content-type"] == "application/json; charset=utf-8"
    assert got["content-length"] == str(len(text.encode("utf-8")))
    assert (got["authorization"], got["x-trace"], got["x-empty"]) == (
        headers["Authorization"], headers["X-Trace"], "")
    assert got["webhook-id"] == str(timer_id)
    assert "timer-service/" in got["user-agent"]
    # Standard Webhooks: the signature covers id, timestamp and this body.
    Webhook(SECRET).verify(hit["body"], got, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(hit["body"] + b" ", got, json_parse=False)


def test_a_body_without_content_type_is_sent_as_utf8_text(live, receiver):
    timer_id = created_id(create(live, url=f"{receiver.url}/text", seconds=0, body="héllo"))
    hit = delivered_once(live, receiver, "/text", timer_id)
    assert hit["body"] == "héllo".encode()
    assert hit["headers"]["content-type"] == "text/plain; charset=utf-8"
    Webhook(SECRET).verify(hit["body"], hit["headers"], json_parse=False)
    view = live.get(timer_id)
    assert (view["body"], view["content_type"]) == ("héllo", "text/plain; charset=utf-8")
    assert "headers" not in view


def test_the_payload_goes_with_every_attempt_each_signed_at_its_time(live, receiver):
    receiver.script("/again", [(503, {"Retry-After": "0"}, 0), (200, {}, 0)])
    timer_id = created_id(create(live, url=f"{receiver.url}/again", seconds=0, body="<b>retry me</b>",
                                 content_type="text/html", headers={"X-Key": "k-1"}))
    wait_status(live, timer_id, "fired", timeout=15)
    hits = receiver.received(f"/again/{timer_id}")
    assert len(hits) == 2
    for hit in hits:
        assert hit["body"] == b"<b>retry me</b>"
        assert (hit["headers"]["content-type"], hit["headers"]["x-key"]) == ("text/html", "k-1")
        Webhook(SECRET).verify(hit["body"], hit["headers"], json_parse=False)
        assert abs(int(hit["headers"]["webhook-timestamp"]) - hit["at"]) <= 1


@pytest.mark.parametrize("name", FORBIDDEN)
def test_a_forbidden_header_name_is_a_400_naming_it(live, receiver, name):
    response = create(live, url=f"{receiver.url}/x", headers={"X-Fine": "1", name: "v"})
    assert_field_error(response, f"headers.{name}")
    assert name in response.json()["description"]


@pytest.mark.parametrize(("headers", "field"), [
    ({"X Y": "1"}, "headers.X Y"), ({"X:Y": "1"}, "headers.X:Y"), ({"": "1"}, "headers."),
    ({"Ünï": "1"}, "headers.Ünï"), ({"X-A": "a\r\nInjected: 1"}, "headers.X-A"),
    ({"X-A": "é"}, "headers.X-A"),
    ({"X-A": " padded"}, "headers.X-A"), ({"X-A": "x" * 1025}, "headers.X-A"), ({"X-A": 1}, "headers.X-A"),
    ({"X-A": None}, "headers.X-A"), ({"X-A": "1", "x-a": "2"}, "headers.x-a"),
    ({f"X-{k}": "v" for k in range(21)}, "headers"), (["X-A"], "headers"), ("X-A: 1", "headers"),
])
def test_bad_headers_are_400s(live, receiver, headers, field):
    assert_field_error(create(live, url=f"{receiver.url}/x", headers=headers), field)


def test_header_limits_are_inclusive(live, receiver):
    headers = {f"X-{k}": "v" * 1024 for k in range(20)}
    timer_id = created_id(create(live, url=f"{receiver.url}/limits", seconds=0, headers=headers))
    hit = delivered_once(live, receiver, "/limits", timer_id)
    assert all(hit["headers"][name.lower()] == value for name, value in headers.items())


@pytest.mark.parametrize(("fields", "field"), [
    ({"body": "x" * 16385}, "body"), ({"body": "é" * 8193}, "body"), ({"body": 5}, "body"),
    ({"body": None}, "body"), ({"body": {"a": 1}}, "body"), ({"body": "\ud800"}, "body"),
    ({"content_type": "json"}, "content_type"), ({"content_type": ""}, "content_type"),
    ({"content_type": "text/plain\r\nX: 1"}, "content_type"), ({"content_type": 1}, "content_type"),
    ({"content_type": "a/" + "b" * 254}, "content_type"),
])
def test_a_bad_or_oversize_body_or_content_type_is_a_400(live, receiver, fields, field):
    assert_field_error(create(live, url=f"{receiver.url}/x", **fields), field)


def test_a_body_of_exactly_16_kib_is_accepted(live, receiver):
    text = "é" * 8192
    timer_id = created_id(create(live, url=f"{receiver.url}/big", seconds=0, body=text))
    assert delivered_once(live, receiver, "/big", timer_id)["body"] == text.encode()


def test_header_values_never_appear_in_any_response(live, receiver):
    secret = "Bearer never-shown-7f3a9c"
    fields = {"url": f"{receiver.url}/redacted", "minutes": 5, "body": "shown",
              "headers": {"Authorization": secret, "X-Api-Key": "key-never-shown"}}
    keyed = {"Idempotency-Key": "redaction-1"}
    responses = [requests.post(f"{live.url}/timers", json=fields, headers=keyed, timeout=TIMEOUT)]
    timer_id = created_id(responses[0])
    responses.append(requests.post(f"{live.url}/timers", json=fields, headers=keyed, timeout=TIMEOUT))
    assert responses[-1].headers.get("Idempotent-Replayed") == "true"
    responses.append(requests.get(f"{live.url}/timers/{timer_id}", timeout=TIMEOUT))
    responses.append(requests.get(f"{live.url}/timers", params={"status": "scheduled", "limit": 1000},
                                  timeout=TIMEOUT))
    responses.append(patch(live, timer_id, seconds=0))
    wait_status(live, timer_id, "fired")
    responses.append(requests.get(f"{live.url}/timers/{timer_id}", timeout=TIMEOUT))
    responses.append(requests.get(f"{live.url}/timers", params={"status": "fired", "limit": 1000},
                                  timeout=TIMEOUT))
    for response in responses:
        assert response.status_code in (200, 201), response.text
        assert secret not in response.text and "key-never-shown" not in response.text
        document = response.json()
        views = document.get("timers", [document])
        view = next(v for v in views if v["id"] == timer_id)
        assert view["headers"] == {"Authorization": "<redacted>", "X-Api-Key": "<redacted>"}
        assert view["body"] == "shown"
    # The receiver still got the real values.
    hit = receiver.received(f"/redacted/{timer_id}")[0]
    assert hit["headers"]["authorization"] == secret
    assert json.loads(responses[0].text)["content_type"] == "text/plain; charset=utf-8"
