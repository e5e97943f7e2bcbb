"""End to end: the operator's path, ``honcho start -f Procfile`` (what ``make run`` executes).

Embedded Redis with its AOF in ``TIMER_DATA_DIR``, Ctrl-C (SIGINT to honcho)
stops every process, and a second start on the same data directory resumes
the timers; with ``REDIS_URL`` set no Redis is started.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

import psutil
import pytest
import requests

from sharding.queues import storage_name
from tests.harness import BIN, ROOT, clean_environ, first_feeder_start, free_port, wait_until
from tests.test_delivery import fire_at_epoch


def _api_up(url):
    try:
        return requests.get(f"{url}/shards", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def run_processes(data_dir):
    """Live processes of the run on ``data_dir``: its env names it, or its command line does."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if data_dir in " ".join(proc.cmdline()) or proc.environ().get("TIMER_DATA_DIR") == data_dir:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


class Honcho:
    """``honcho start -f Procfile -p <port>`` in the repository root, output to ``log_path``."""

    def __init__(self, data_dir, log_path, redis_url=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in clean_environ().items() if k != "REDIS_URL"}
        env.update(TIMER_DATA_DIR=data_dir, PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
                   PYTHONUNBUFFERED="1")
        if redis_url:
            env["REDIS_URL"] = redis_url
        self.env = env
        self.process = None

    def start(self):
        """Start honcho and wait until the API answers."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [os.path.join(BIN, "honcho"), "start", "-f", "Procfile", "-p", str(self.port)],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until(lambda: self.process.poll() is not None or _api_up(self.url), timeout=30,
                   message="the API started by honcho")
        assert self.process.poll() is None, f"honcho exited:\n{self.log()}"
        return self

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def consumers_ready(self, count=8):
        wait_until(lambda: self.log().count("Huey consumer started") >= count, timeout=30,
                   message=f"{count} consumers to start")

    def interrupt(self, timeout=10):
        """Ctrl-C: SIGINT to honcho; return how long it took to exit by itself."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"honcho did not exit within {timeout}s of SIGINT:\n{self.log()}") from None
        return time.monotonic() - started

    def kill(self):
        """Clean-up: SIGKILL honcho's session if it still runs."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def create(self, url, seconds):
        response = requests.post(f"{self.url}/timers", json={"url": url, "seconds": seconds}, timeout=10)
        assert response.status_code == 201, response.text
        return response.json()

    def get(self, timer_id):
        response = requests.get(f"{self.url}/timers/{timer_id}", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def run_dir():
    """A short data directory (unix socket paths must stay short); removed afterwards."""
    data_dir = tempfile.mkdtemp(prefix="t", dir="/tmp")
    yield data_dir
    leftovers = run_processes(data_dir)
    for proc in leftovers:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def honchos():
    """Every Honcho made in a test; killed afterwards if still running."""
    made = []
    yield made
    for honcho in made:
        honcho.kill()


def wait_fired(honcho, timer_id, timeout=10):
    return wait_until(lambda: (t := honcho.get(timer_id))["status"] == "fired" and t, timeout=timeout,
                      message=f"timer {timer_id} to be fired")


def test_honcho_run_delivers_stops_on_ctrl_c_and_resumes_from_the_aof(run_dir, honchos, receiver, tmp_path):
    receiver.reset()
    log_path = str(tmp_path / "honcho.log")
    first = Honcho(run_dir, log_path)
    honchos.append(first)
    first.start()
    first.consumers_ready()

    timer = first.create(f"{receiver.url}/run", seconds=2)
    path = f"/run/{timer['id']}"
    wait_until(lambda: receiver.received(path), timeout=10, message="the first webhook")
    done = wait_fired(first, timer["id"])
    assert (done["time_left"], done["status"], done["attempts"]) == (0, "fired", 1)
    assert len(receiver.received(path)) == 1
    assert receiver.received(path)[0]["at"] - fire_at_epoch(timer["fire_at"]) <= 1.5

    # Due in 10 s: the whole run must be down before then (its stop took 1.2 s here, 3 s
    # with the machine loaded, so 3x slower still stops in time); checked, not assumed.
    later = first.create(f"{receiver.url}/resume", seconds=10)
    later_fire = fire_at_epoch(later["fire_at"])
    later_path = f"/resume/{later['id']}"
    took = first.interrupt(timeout=10)
    assert took <= 10
    wait_until(lambda: run_processes(run_dir) == [], timeout=15,
               message=f"no process of the run left: {run_processes(run_dir)}")
    assert time.time() < later_fire, f"stopping took until {time.time() - later_fire:.2f}s past the fire time"
    assert os.path.exists(os.path.join(run_dir, "appendonly.aof")) or os.path.isdir(
        os.path.join(run_dir, "appendonlydir")), os.listdir(run_dir)
    assert receiver.received(later_path) == []

    # Everything is down: nothing to poll, so wait out the fire time.
    time.sleep(max(0.0, later_fire + 0.5 - time.time()))
    assert receiver.received(later_path) == []
    second = Honcho(run_dir, log_path)
    honchos.append(second)
    restarted = time.time()
    second.start()

    wait_until(lambda: receiver.received(later_path), timeout=20, message="the resumed webhook")
    resumed = wait_fired(second, later["id"])
    assert (resumed["time_left"], resumed["status"], resumed["attempts"]) == (0, "fired", 1)
    feeding = first_feeder_start(second.log(), later["id"] % 1000, restarted)
    assert feeding is not None, "no feeder of the timer's shard logged its start"
    assert receiver.received(later_path)[0]["at"] - feeding <= 3
    first_timer = second.get(timer["id"])
    assert (first_timer["status"], first_timer["attempts"]) == ("fired", 1)
    wait_until(lambda: all(s["scheduled"] == 0 and s["queued"] == 0 for s in
                           requests.get(f"{second.url}/shards", timeout=5).json()["shards"]),
               timeout=5, message="the shards to drain")
    assert len(receiver.received(later_path)) == 1
    assert len(receiver.received(path)) == 1
    assert len(receiver.received()) == 2

    second.interrupt(timeout=10)
    wait_until(lambda: run_processes(run_dir) == [], timeout=15,
               message=f"no process of the run left: {run_processes(run_dir)}")


def test_honcho_run_with_redis_url_starts_no_redis(run_dir, honchos, receiver, redis_client, redis_server,
                                                    tmp_path):
    receiver.reset()
    honcho = Honcho(run_dir, str(tmp_path / "honcho.log"), redis_url=redis_server.url)
    honchos.append(honcho)
    honcho.start()
    wait_until(lambda: "REDIS_URL is set; not starting an embedded Redis" in honcho.log(), timeout=10,
               message="the redis process to log that it starts nothing")
    tree = {p.pid for p in psutil.Process(honcho.process.pid).children(recursive=True)}
    # process_iter skips a process that exits while it is read.
    redis_servers = [p.pid for p in psutil.process_iter(["name"])
                     if p.pid in tree and p.info["name"] == "redis-server"]
    assert redis_servers == []
    assert not os.path.exists(os.path.join(run_dir, "redis.sock"))
    honcho.consumers_ready()

    timer = honcho.create(f"{receiver.url}/external", seconds=1)
    timer_id = timer["id"]
    # The record lives in the REDIS_URL server.
    assert redis_client.exists(f"t:{storage_name(timer_id % 1000)}:{timer_id}") == 1
    wait_until(lambda: receiver.received(f"/external/{timer_id}"), timeout=10, message="the webhook")
    done = wait_fired(honcho, timer_id)
    assert (done["time_left"], done["status"], done["attempts"]) == (0, "fired", 1)
    assert len(receiver.received(f"/external/{timer_id}")) == 1

    honcho.interrupt(timeout=10)
    wait_until(lambda: run_processes(run_dir) == [], timeout=15,
               message=f"no process of the run left: {run_processes(run_dir)}")
    assert redis_server.process.poll() is None, "stopping the service stopped the external Redis"
    assert redis_client.ping()


def test_a_second_run_on_the_same_data_dir_refuses_to_start(run_dir, tmp_path, receiver):
    first = Honcho(run_dir, str(tmp_path / "first.log")).start()
    second = Honcho(run_dir, str(tmp_path / "second.log"))
    try:
        log = open(second.log_path, "ab")
        second.process = subprocess.Popen(
            [os.path.join(BIN, "honcho"), "start", "-f", "Procfile", "-p", str(second.port)],
            cwd=ROOT, env=second.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        second.process.wait(30)  # honcho stops the stack when its redis process exits
        assert "TIMER_DATA_DIR is in use by another service" in second.log()
        # Nothing of the second run touched the first one's Redis.
        assert "recovery pass" not in second.log()
        assert "consumer started" not in second.log()
        # The first run is untouched: its Redis still answers and timers still fire.
        first.consumers_ready()
        timer = first.create(f"{receiver.url}/first", seconds=0)
        wait_until(lambda: receiver.received(f"/first/{timer['id']}"), timeout=10, message="the webhook")
        assert requests.get(f"{first.url}/readyz", timeout=5).status_code == 200
    finally:
        second.kill()
        first.interrupt()


def test_honcho_dying_stops_every_process(run_dir, tmp_path):
    # A lost terminal: honcho and its process runners get SIGHUP and die without
    # stopping anything; our processes must stop through their parent's death.
    run = Honcho(run_dir, str(tmp_path / "honcho.log")).start()
    run.consumers_ready()
    os.killpg(run.process.pid, signal.SIGHUP)
    run.process.wait(10)
    wait_until(lambda: run_processes(run_dir) == [], timeout=15,
               message="every process of the run to stop")


@pytest.mark.parametrize("command", [
    [os.path.join(BIN, "python"), "-m", "sharding.coordinator"],
    [os.path.join(BIN, "python"), "-m", "workers.pool"],
    [os.path.join(BIN, "gunicorn"), "-c", "api/gunicorn_conf.py", "api.app:create_app()"],
], ids=["coordinator", "workers", "api"])
def test_a_process_of_another_stack_refuses_a_busy_data_dir_before_it_touches_redis(
        run_dir, tmp_path, command):
    first = Honcho(run_dir, str(tmp_path / "first.log")).start()
    try:
        first.consumers_ready()
        redis_pid = int(open(os.path.join(run_dir, "redis.pid")).read())
        before = requests.get(f"{first.url}/readyz", timeout=5).status_code
        env = dict(first.env, PORT=str(free_port()))
        # Started by this test, not by the first run's honcho: another stack.
        other = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        output = other.stdout + other.stderr
        assert other.returncode != 0, output
        assert "TIMER_DATA_DIR is in use by another service" in output
        for touched in ("recovery pass", "consumer started", "Booting worker"):
            assert touched not in output, output
        assert psutil.pid_exists(redis_pid)
        assert before == requests.get(f"{first.url}/readyz", timeout=5).status_code == 200
    finally:
        first.interrupt()


def test_kill_9_of_honcho_stops_every_process_of_the_stack(run_dir, tmp_path, figures):
    # honcho's process runners ignore SIGTERM and outlive a killed honcho: each
    # process must stop by itself when the stack's supervisor (honcho) is gone.
    run = Honcho(run_dir, str(tmp_path / "honcho.log")).start()
    run.consumers_ready()
    before = len(run_processes(run_dir))
    killed = time.monotonic()
    run.process.kill()
    run.process.wait()
    wait_until(lambda: run_processes(run_dir) == [], timeout=20,
               message=f"every process of the run to stop: {run_processes(run_dir)}")
    took = time.monotonic() - killed
    figures.append(f"kill -9 of honcho: all {before} processes of the stack gone {took:.1f} s later")
