"""Hardening, end to end with real processes (issue 11): slow clients, slow receivers, bad input.

* 200 stalled or dribbling client connections do not delay other clients,
  and each is closed after its documented deadline (``api/worker.py``).
* A receiver that drips its body is cut off at ``TIMER_WEBHOOK_TIMEOUT_SECONDS``
  (``workers/deadline.py``), recorded as a timeout and retried.
* Dripping and hanging receivers hold up only their own timers: a consumer
  takes a message only while a sender is free or about to be, and gives back
  the timers it claimed and found no sender for (``workers/tasks.py``).
* Malformed chunked bodies, undeliverable hosts and other charsets are 4xx.
"""

import json
import socket
import statistics
import threading
import time

import pytest
import requests

from api.worker import REQUEST_DEADLINE_S
from tests.harness import consumers_ready, json_lines, wait_until
from tests.test_delivery import fire_at_epoch

KEEPALIVE_S = 5  # api/gunicorn_conf.py: a request's headers must arrive within this
# How much later than its deadline a stalled connection may be closed on a busy machine.
CLOSE_SLACK_S = 10


def _connect(url):
    host, port = url.split("//")[1].split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _closed_by_peer(sock):
    """True once the server has closed ``sock`` (EOF or reset), without blocking."""
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _timed(call):
    began = time.monotonic()
    response = call()
    return response, time.monotonic() - began


class Stalls:
    """200 slow clients on the API: stalled headers, dribbled headers, stalled bodies.

    Each kind is a third of the connections; the dribblers send one more
    byte of their headers every 0.5 s from a thread, never the blank line.
    """

    HEADERS = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    BODY = (b"POST /timers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"seconds\":")

    def __init__(self, url, count=200):
        self.kinds = {"stalled headers": [], "dribbled headers": [], "stalled body": []}
        names = list(self.kinds)
        for i in range(count):
            self.kinds[names[i % 3]].append(_connect(url))
        self.opened = time.monotonic()
        for sock in self.kinds["stalled headers"]:
            sock.sendall(self.HEADERS)
        for sock in self.kinds["stalled body"]:
            sock.sendall(self.BODY)
        self.body_sent = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._dribble, daemon=True)
        self._thread.start()

    def _dribble(self):
        text = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
        sent = 0
        while not self._stop.wait(0.5) and sent < len(text):
            for sock in self.kinds["dribbled headers"]:
                try:
                    sock.send(text[sent:sent + 1])
                except OSError:
                    pass  # closed by the server: what the test waits for
            sent += 1

    def all(self):
        return [sock for socks in self.kinds.values() for sock in socks]

    def close(self):
        self._stop.set()
        self._thread.join()
        for sock in self.all():
            sock.close()


def test_slow_clients_do_not_delay_others_and_are_closed_at_their_deadline(service, receiver, figures):
    stalls = Stalls(service.url)
    try:
        # Every connection is accepted and stalled: the server has read what each sent.
        time.sleep(0.5)
        assert not any(_closed_by_peer(sock) for sock in stalls.all())
        health, health_s = [], []
        creates, create_s = [], []
        for _ in range(10):
            response, took = _timed(lambda: requests.get(f"{service.url}/healthz", timeout=5))
            health.append(response.status_code)
            health_s.append(took)
            response, took = _timed(lambda: requests.post(
                f"{service.url}/timers", json={"url": f"{receiver.url}/slowloris", "seconds": 3600},
                timeout=5))
            creates.append(response.status_code)
            create_s.append(took)
        assert health == [200] * 10
        assert creates == [201] * 10
        assert max(health_s) <= 1.0, health_s
        assert max(create_s) <= 1.0, create_s

        # Each stalled connection is closed after its deadline: headers within
        # the keep-alive time of the connection opening, a body within
        # REQUEST_DEADLINE_S of its headers.
        closed_at = {}

        def all_closed():
            now = time.monotonic()
            for kind, socks in stalls.kinds.items():
                for sock in socks:
                    if sock not in closed_at and _closed_by_peer(sock):
                        closed_at[sock] = (kind, now)
            return len(closed_at) == 200

        wait_until(all_closed, timeout=REQUEST_DEADLINE_S + CLOSE_SLACK_S + 5, interval=0.2,
                   message="every stalled connection to be closed by the API")
        header_close = [t - stalls.opened for kind, t in closed_at.values() if kind != "stalled body"]
        body_close = [t - stalls.body_sent for kind, t in closed_at.values() if kind == "stalled body"]
        assert min(header_close) >= KEEPALIVE_S - 0.5
        assert max(header_close) <= KEEPALIVE_S + CLOSE_SLACK_S
        assert min(body_close) >= REQUEST_DEADLINE_S - 0.5
        assert max(body_close) <= REQUEST_DEADLINE_S + CLOSE_SLACK_S
    finally:
        stalls.close()
    figures.append(
        f"slowloris: 200 stalled connections; GET /healthz max {max(health_s):.3f} s, "
        f"POST /timers max {max(create_s):.3f} s (median {statistics.median(create_s):.3f} s); "
        f"headers closed after {min(header_close):.1f}-{max(header_close):.1f} s (deadline {KEEPALIVE_S} s), "
        f"bodies after {min(body_close):.1f}-{max(body_close):.1f} s (deadline {REQUEST_DEADLINE_S} s)")


class SlowReceiver:
    """A raw TCP webhook receiver on 127.0.0.1 that answers slowly on purpose.

    ``/drip/...``: ``200`` with ``Content-Length: 100000``, then one body byte
    every ``drip_s``; ``/hang/...``: reads the request and never answers.
    Each connection is recorded as ``{"path", "opened", "closed"}`` (monotonic s;
    ``closed`` None while open): the consumer closing it ends the record.
    """

    def __init__(self, drip_s=1.0):
        self.drip_s = drip_s
        self.connections = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        record = {"path": None, "opened": time.monotonic(), "closed": None}
        with self._lock:
            self.connections.append(record)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            record["path"] = data.split(b" ", 2)[1].decode()
            if record["path"].startswith("/drip"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                conn.settimeout(self.drip_s)
                while not self._stop.is_set():
                    conn.sendall(b"x")
                    try:
                        if conn.recv(1) == b"":
                            return
                    except TimeoutError:
                        continue
            else:
                conn.settimeout(None)
                while conn.recv(4096):
                    pass
        except OSError:
            return
        finally:
            record["closed"] = time.monotonic()
            conn.close()

    def _to(self, prefix, closed):
        with self._lock:
            return [c for c in self.connections
                    if (c["closed"] is not None) == closed and (c["path"] or "").startswith(prefix)]

    def open_connections(self, prefix):
        """Connections to paths under ``prefix`` still open."""
        return self._to(prefix, closed=False)

    def finished(self, prefix):
        """Connections to paths under ``prefix`` closed by now."""
        return self._to(prefix, closed=True)

    def close(self):
        self._stop.set()
        self._server.close()


@pytest.fixture
def slow_receiver():
    server = SlowReceiver()
    yield server
    server.close()


def test_a_dripping_receiver_is_cut_off_at_the_deadline_and_retried(make_service, slow_receiver):
    timeout_s = 2.0
    service = make_service(env={"TIMER_WEBHOOK_TIMEOUT_SECONDS": str(timeout_s),
                                "TIMER_WEBHOOK_MAX_ATTEMPTS": "2"}).start()
    consumers_ready(service)
    created = service.create(f"{slow_receiver.url}/drip", seconds=0)
    assert created.status_code == 201, created.text
    timer_id = created.json()["id"]

    def failed():
        timer = service.get(timer_id)
        return timer["status"] == "failed" and timer
    # Two attempts of at most timeout_s each, and a backoff of at most 1 s between them.
    timer = wait_until(failed, timeout=2 * timeout_s + 1 + 20, message="the timer to fail after 2 attempts")
    assert (timer["attempts"], timer["last_error"]) == (2, "timeout")
    attempts = slow_receiver.finished("/drip")
    assert len(attempts) == 2
    # Each attempt's connection was closed by the consumer at its deadline, while
    # the receiver was still dripping (it would drip for 100000 s).
    durations = [c["closed"] - c["opened"] for c in attempts]
    assert all(timeout_s - 0.5 <= d <= timeout_s + 3 for d in durations), durations
    assert "delivery attempt" in service.logs("workers")
    retried = [line for line in service.logs("workers").splitlines()
               if '"delivery attempt"' in line and '"retrying"' in line]
    assert len(retried) == 1 and '"error": "timeout"' in retried[0]


def test_dripping_and_hanging_receivers_hold_up_only_their_own_timers(make_service, slow_receiver, receiver,
                                                                      figures):
    # 2 shards x 4 consumers x 5 senders: 17 slow timers per shard fill some of
    # its consumers, and the shard's pool still has free senders (20 per shard).
    service = make_service(env={"TIMER_SHARDS": "2", "TIMER_WORKERS_PER_SHARD": "4",
                                "TIMER_CONSUMER_THREADS": "5"}).start()
    consumers_ready(service)
    for _ in range(24):
        assert service.create(f"{slow_receiver.url}/drip", seconds=0).status_code == 201
    for _ in range(10):
        assert service.create(f"{slow_receiver.url}/hang", seconds=0).status_code == 201
    wait_until(lambda: len(slow_receiver.open_connections("/")) == 34, timeout=20,
               message="34 slow deliveries in flight")

    ordinary = []
    for _ in range(40):
        response = service.create(f"{receiver.url}/ordinary", seconds=1)
        assert response.status_code == 201, response.text
        ordinary.append(response.json())
    wait_until(lambda: len(receiver.received()) >= 40, timeout=30, message="the 40 ordinary webhooks")
    # The slow deliveries were still in flight when the last ordinary webhook arrived
    # (their attempts last the webhook timeout, 10 s).
    still_slow = len(slow_receiver.open_connections("/"))
    arrived = {int(r["path"].rsplit("/", 1)[1]): r["at"] for r in receiver.received()}
    lateness = [arrived[t["id"]] - fire_at_epoch(t["fire_at"]) for t in ordinary]
    assert len(receiver.received()) == 40
    assert max(lateness) <= 1.0, sorted(lateness)
    assert still_slow >= 30, f"only {still_slow} slow deliveries were left when the ordinary ones ended"
    figures.append(
        f"isolation: 24 dripping + 10 hanging receivers in flight ({still_slow} still open after the last "
        f"ordinary arrival), 2 shards x 4 consumers x 5 senders; 40 ordinary 1-s timers: "
        f"lateness p50 {statistics.median(lateness):.3f} s, max {max(lateness):.3f} s")


def test_a_consumer_gives_back_the_timers_it_has_no_free_sender_for(make_service, slow_receiver, receiver):
    # One shard, 2 consumers x 2 senders. Stored while no consumer runs, the timers
    # are fed at once as 2 messages of 3, in creation order: [hang, hang, ordinary]
    # and [hang, ordinary, ordinary]. Whichever consumer takes the first message
    # starts both hanging sends and has no sender left for its ordinary timer:
    # it must give it back for the other consumer, not keep it claimed for the
    # 10 s the hanging sends take.
    service = make_service(env={"TIMER_SHARDS": "1", "TIMER_WORKERS_PER_SHARD": "2",
                                "TIMER_CONSUMER_THREADS": "2"}).start("api")
    kinds = ["hang", "hang", "ordinary", "hang", "ordinary", "ordinary"]
    ordinary = []
    for kind in kinds:
        url = f"{slow_receiver.url}/hang" if kind == "hang" else f"{receiver.url}/claims"
        response = service.create(url, seconds=0)
        assert response.status_code == 201, response.text
        if kind == "ordinary":
            ordinary.append(response.json()["id"])
    service.start("workers")
    consumers_ready(service, 2)
    ready = time.time()
    wait_until(lambda: len(receiver.received()) == 3, timeout=30, message="the 3 ordinary webhooks")
    late = [r["at"] - ready for r in receiver.received()]
    assert sorted(int(r["path"].rsplit("/", 1)[1]) for r in receiver.received()) == sorted(ordinary)
    assert max(late) <= 1.0, late
    assert len(slow_receiver.open_connections("/hang")) == 3
    # It was given back unsent (released, its attempt not counted), then sent once by the other.
    assert any(line.get("message") == "timers given back" for line in json_lines(service.logs("workers")))
    wait_until(lambda: all(service.get(t)["status"] == "fired" for t in ordinary), timeout=10,
               message="the ordinary timers to read fired")
    assert [service.get(t)["attempts"] for t in ordinary] == [1, 1, 1]


CHUNKED_HEAD = (b"POST /timers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
BAD_CHUNKED = {
    "bad chunk size": b"zz\r\n{}\r\n0\r\n\r\n",
    "negative chunk size": b"-2\r\n{}\r\n0\r\n\r\n",
    "oversized chunk size": b"FFFFFFFFFFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n",
    "truncated chunk": b"40\r\n{\"url\": \"http://x.test/\"",
    "missing CRLF after chunk": b"2\r\n{}XX0\r\n\r\n",
    "no last chunk": b"2\r\n{}\r\n",
    "bad trailer": b"2\r\n{}\r\n0\r\nnot a header line\r\n\r\n",
}


def _raw_exchange(url, data):
    """Send ``data``, half-close, and return (status, headers text, body bytes) of the answer."""
    with _connect(url) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.decode("latin-1"), body


def test_malformed_chunked_bodies_are_400_json(service):
    for name, body in BAD_CHUNKED.items():
        status, head, payload = _raw_exchange(service.url, CHUNKED_HEAD + body)
        assert status == 400, (name, head, payload)
        assert "application/json" in head.lower(), (name, head)
        assert json.loads(payload)["title"], name
    assert "unhandled error" not in service.logs("api")
    # A well-formed chunked body still creates a timer.
    good = b'{"url": "http://127.0.0.1:9/x", "seconds": 60}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(good), good)
    status, _, payload = _raw_exchange(service.url, CHUNKED_HEAD + chunked)
    assert status == 201, payload


def test_a_body_shorter_than_its_content_length_creates_nothing(service):
    body = b'{"seconds": 3600, "url": "http://127.0.0.1:9/truncated"}'
    head = (b"POST /timers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(body) + 100))
    status, _, payload = _raw_exchange(service.url, head + body)
    assert status == 400, payload
    assert json.loads(payload)["description"] == (
        f"the body ended after {len(body)} of its Content-Length {len(body) + 100} bytes")
    listed = requests.get(f"{service.url}/timers", params={"status": "scheduled"}, timeout=5).json()
    assert listed["timers"] == []


@pytest.mark.parametrize("url", ["http://127．0．0．1:19801/x", "http://ex\u3002ample.test/x",
                                 "http://[fe80::1%25eth0]/x", "http://[fe80::1%eth0]/x"])
def test_hosts_that_cannot_be_delivered_to_are_refused_at_create(service, url):
    response = service.create(url, seconds=1)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "url"


def test_small_inconsistencies(service):
    # A charset other than UTF-8 is refused, not read as UTF-8.
    response = requests.post(f"{service.url}/timers", data='{"url": "http://x.test/h"}'.encode("utf-16"),
                             headers={"Content-Type": "application/json; charset=utf-16"}, timeout=5)
    assert response.status_code == 415, response.text
    assert "UTF-8" in response.json()["description"]
    explicit = requests.post(f"{service.url}/timers", data=b'{"url": "http://x.test/h"}',
                             headers={"Content-Type": "application/json; charset=UTF-8"}, timeout=5)
    assert explicit.status_code == 201, explicit.text
    # OPTIONS: 204 with Allow, no body labelled JSON.
    options = requests.options(f"{service.url}/timers", timeout=5)
    assert (options.status_code, options.headers["Allow"], options.content) == (204, "GET, POST", b"")
    assert "Content-Type" not in options.headers
    # HEAD /healthz for load balancers.
    head = requests.head(f"{service.url}/healthz", timeout=5)
    assert (head.status_code, head.content) == (200, b"")
    # The OpenAPI examples never send a webhook to a third-party host.
    document = requests.get(f"{service.url}/openapi.json", timeout=5).text
    assert "example.com" not in document
