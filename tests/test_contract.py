"""The live service against its own OpenAPI document (``shared/CONTRACT.md`` section 4, ``/openapi.json``).

A bounded, deterministic schemathesis run: every response of every documented operation
must be a non-5xx, carry a documented status code and content type, and match the
documented schema. A second test reaches, by real requests, every status code that the
document promises for the timer operations.
"""

import collections
import functools
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.harness import Service, wait_until

TIMEOUT = 10
DEAD_REDIS = "redis://127.0.0.1:1/0"
MAX_EXAMPLES = 25
# schemathesis leaves out the operation that serves the schema it loaded (GET /openapi.json).
EXPECTED_OPERATIONS = ["POST /timers", "GET /timers", "GET /timers/{id}", "PATCH /timers/{id}",
                       "DELETE /timers/{id}", "POST /timers/{id}/run", "POST /timers/run",
                       "GET /shards", "GET /healthz", "HEAD /healthz", "GET /readyz", "GET /metrics",
                       "GET /docs", "GET /dashboard"]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


FUZZ_TOKEN = "fuzz-token"


@pytest.fixture(scope="module", params=[None, FUZZ_TOKEN], ids=["open", "with-token"])
def contract_service(request, redis_server, tmp_path_factory):
    """The API alone (no consumers: generated timers must not send webhooks anywhere) on an empty
    Redis; once without and once with ``TIMER_API_TOKENS`` (requests then carry the token)."""
    if redis_server.process.poll() is not None:
        redis_server.start()
    redis_server.client().flushall()
    env = {"TIMER_API_TOKENS": request.param} if request.param else {}
    service = Service(redis_server.url, str(tmp_path_factory.mktemp("contract")), env)
    service.start("api", ready_path="/healthz")
    service.auth = {"Authorization": f"Bearer {request.param}"} if request.param else {}
    yield service
    service.stop(timeout=10)


def _conformance_failures(operation, mode, statuses, headers):
    """Run a bounded, derandomized Hypothesis test of ``operation`` in ``mode``; return its failure.

    Every response's status code is counted in ``statuses[(operation label, mode)]``.
    """
    seen = statuses.setdefault((operation.label, mode.value), collections.Counter())

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def conforms(case):
        response = case.call_and_validate(checks=CHECKS, timeout=TIMEOUT, headers=headers)
        seen[response.status_code] += 1

    try:
        conforms()
    except Exception as exc:  # noqa: BLE001 - every failure is reported, with its operation
        return f"{operation.label} ({mode.value}): {exc}"
    return None


def test_every_operation_conforms_to_the_openapi_document(contract_service, figures):
    # schemathesis.pytest.from_fixture cannot run under pytest 9 (it sets Item._nodeid, which pytest 9
    # removed), so each operation's strategy is driven by Hypothesis here; checks are schemathesis's.
    schema = schemathesis.openapi.from_url(f"{contract_service.url}/openapi.json", timeout=TIMEOUT)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert sorted(op.label for op in operations) == sorted(EXPECTED_OPERATIONS)
    # Negative cases need something to break: operations without parameters or body have none.
    runs = [(operation, mode) for operation in operations for mode in GenerationMode
            if mode.is_positive or operation.body or any(True for _ in operation.iter_parameters())]
    statuses = {}
    failures = [failure for operation, mode in runs
                if (failure := _conformance_failures(operation, mode, statuses, contract_service.auth))]
    variant = "with token" if contract_service.auth else "open"
    for (label, mode), counts in sorted(statuses.items()):
        figures.append(f"schemathesis [{variant}] {label} ({mode}): " + ", ".join(
            f"{code} x{n}" for code, n in sorted(counts.items())))
    assert not failures, "\n\n".join(failures)
    # The run reached the service's success paths, not only its error answers.
    assert statuses[("POST /timers", "positive")][201] > 0
    assert statuses[("GET /timers", "positive")][200] > 0


# --- every documented status code of the timer operations is reachable ------------------------------

def _documented(document, path, method):
    """Documented status codes of one operation, as ints (401 left out: it needs TIMER_API_TOKENS)."""
    return {int(code) for code in document["paths"][path][method]["responses"]} - {401}


def _start_on_dead_redis(make_service):
    """The API alone, pointed at a Redis that is not there, ready once GET /healthz answers."""
    return make_service(env={"REDIS_URL": DEAD_REDIS}).start("api", ready_path="/healthz")


def test_every_documented_status_code_is_reachable(service, make_service, receiver):
    document = requests.get(f"{service.url}/openapi.json", timeout=TIMEOUT).json()
    hook = f"{receiver.url}/reach"
    timers = f"{service.url}/timers"
    keyed = {"Idempotency-Key": "reach-422"}
    sent = []  # (path, method, expected status, response)

    def expect(path, method, status, response):
        sent.append((path, method, status, response))

    # POST /timers: 201, 400, 409 (a first request in flight), 413, 415, 422.
    expect("/timers", "post", 201, requests.post(timers, json={"url": hook, "hours": 1}, timeout=TIMEOUT))
    expect("/timers", "post", 400, requests.post(timers, json={"url": hook, "hour": 1}, timeout=TIMEOUT))
    too_large = b"{" + b" " * (70 * 1024) + b"}"
    expect("/timers", "post", 413, requests.post(timers, data=too_large, timeout=TIMEOUT,
                                                 headers={"Content-Type": "application/json"}))
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    expect("/timers", "post", 415, requests.post(timers, data=b"url=x", headers=form, timeout=TIMEOUT))
    expect("/timers", "post", 201, requests.post(timers, json={"url": hook, "hours": 1}, headers=keyed,
                                                 timeout=TIMEOUT))
    expect("/timers", "post", 422, requests.post(timers, json={"url": hook, "hours": 2}, headers=keyed,
                                                 timeout=TIMEOUT))
    expect("/timers", "post", 409, _post_while_key_in_flight(service, hook))

    # GET /timers: 200, 400.
    expect("/timers", "get", 200, requests.get(timers, params={"status": "scheduled"}, timeout=TIMEOUT))
    expect("/timers", "get", 400, requests.get(timers, params={"status": "nope"}, timeout=TIMEOUT))

    # GET /timers/{id}: 200, 404. DELETE /timers/{id}: 204, 404, 409 (a fired timer).
    pending = requests.post(timers, json={"url": hook, "hours": 1}, timeout=TIMEOUT).json()["id"]
    fired = requests.post(timers, json={"url": hook}, timeout=TIMEOUT).json()["id"]
    expect("/timers/{id}", "get", 200, requests.get(f"{timers}/{pending}", timeout=TIMEOUT))
    expect("/timers/{id}", "get", 404, requests.get(f"{timers}/999999999", timeout=TIMEOUT))
    expect("/timers/{id}", "delete", 204, requests.delete(f"{timers}/{pending}", timeout=TIMEOUT))
    expect("/timers/{id}", "delete", 404, requests.delete(f"{timers}/999999999", timeout=TIMEOUT))
    wait_until(lambda: service.get(fired)["status"] == "fired", timeout=15, message=f"timer {fired} to fire")
    expect("/timers/{id}", "delete", 409, requests.delete(f"{timers}/{fired}", timeout=TIMEOUT))

    # PATCH /timers/{id}: 200, 400, 404, 409 (a fired timer), 413, 415.
    moved = requests.post(timers, json={"url": hook, "hours": 1}, timeout=TIMEOUT).json()["id"]
    later, done, unknown = (f"{timers}/{i}" for i in (moved, fired, 999999999))
    patch = functools.partial(requests.patch, timeout=TIMEOUT)
    expect("/timers/{id}", "patch", 200, patch(later, json={"hours": 2}))
    expect("/timers/{id}", "patch", 400, patch(later, json={"url": hook}))
    expect("/timers/{id}", "patch", 404, patch(unknown, json={"hours": 2}))
    expect("/timers/{id}", "patch", 409, patch(done, json={"hours": 2}))
    as_json = {"Content-Type": "application/json"}
    expect("/timers/{id}", "patch", 413, patch(later, data=too_large, headers=as_json))
    expect("/timers/{id}", "patch", 415, patch(later, data=b"hours=2", headers=form))
    # POST /timers/{id}/run: 202, 404, 409 (fired). POST /timers/run: 200, 400, 413, 415.
    later = requests.post(timers, json={"url": hook, "hours": 1}, timeout=TIMEOUT).json()["id"]
    expect("/timers/{id}/run", "post", 202, requests.post(f"{timers}/{later}/run", timeout=TIMEOUT))
    expect("/timers/{id}/run", "post", 404, requests.post(f"{timers}/999999999/run", timeout=TIMEOUT))
    expect("/timers/{id}/run", "post", 409, requests.post(f"{timers}/{fired}/run", timeout=TIMEOUT))
    expect("/timers/run", "post", 200, requests.post(f"{timers}/run", json={"dry_run": True},
                                                     timeout=TIMEOUT))
    expect("/timers/run", "post", 400, requests.post(f"{timers}/run", json={"dry_run": 1}, timeout=TIMEOUT))
    expect("/timers/run", "post", 413, requests.post(f"{timers}/run", data=too_large, timeout=TIMEOUT,
                                                     headers={"Content-Type": "application/json"}))
    expect("/timers/run", "post", 415, requests.post(f"{timers}/run", data=b"x", headers=form,
                                                     timeout=TIMEOUT))

    # 503 from every operation of an API whose Redis is not there.
    dead = _start_on_dead_redis(make_service).url
    expect("/timers", "post", 503, requests.post(f"{dead}/timers", json={"url": hook}, timeout=TIMEOUT))
    expect("/timers", "get", 503, requests.get(f"{dead}/timers", params={"status": "fired"}, timeout=TIMEOUT))
    expect("/timers/{id}", "get", 503, requests.get(f"{dead}/timers/{pending}", timeout=TIMEOUT))
    expect("/timers/{id}", "delete", 503, requests.delete(f"{dead}/timers/{pending}", timeout=TIMEOUT))
    expect("/timers/{id}", "patch", 503, requests.patch(f"{dead}/timers/{pending}", json={"hours": 2},
                                                        timeout=TIMEOUT))
    expect("/timers/{id}/run", "post", 503, requests.post(f"{dead}/timers/{pending}/run", timeout=TIMEOUT))
    expect("/timers/run", "post", 503, requests.post(f"{dead}/timers/run", json={}, timeout=TIMEOUT))

    wrong = [(path, method, status, response.status_code, response.text[:200])
             for path, method, status, response in sent if response.status_code != status]
    assert wrong == []
    for _, _, status, response in sent:
        if status >= 400:
            body = response.json()
            assert isinstance(body.get("title"), str) and isinstance(body.get("description"), str), body
    for path, method in [("/timers", "post"), ("/timers", "get"), ("/timers/{id}", "get"),
                         ("/timers/{id}", "patch"), ("/timers/{id}", "delete"), ("/timers/{id}/run", "post"),
                         ("/timers/run", "post")]:
        reached = {status for p, m, status, _ in sent if (p, m) == (path, method)}
        assert reached == _documented(document, path, method), (path, method)


def _post_while_key_in_flight(service, hook):
    """POST under an Idempotency-Key whose first request is still in flight.

    A first request that is in flight is indistinguishable, for the second one, from the key's
    pending state in Redis; so the pending state is put there the way the API's first request
    does (IdempotencyKeys.begin on the same scope and body) and held while the second request
    is sent over HTTP.
    """
    from api.idempotency import IdempotencyKeys, fingerprint
    from sharding.store import TimerStore

    body = {"url": hook, "minutes": 5}
    keys = IdempotencyKeys(TimerStore(service.env["REDIS_URL"]).control)
    assert keys.begin("", "reach-409", fingerprint(body)) is None
    started = time.monotonic()
    response = requests.post(f"{service.url}/timers", json=body, headers={"Idempotency-Key": "reach-409"},
                             timeout=TIMEOUT)
    assert time.monotonic() - started < 60  # still within the pending key's lifetime
    keys.abandon("", "reach-409", fingerprint(body))
    return response
