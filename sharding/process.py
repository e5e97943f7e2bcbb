"""Start-up shared by the service's long-running processes.

Two process edges are handled here (README, "Running it in production"):

* **The stack's supervisor.** honcho runs each Procfile process under a
  runner of its own, a forked copy of honcho that ignores SIGTERM and
  outlives honcho when honcho is killed (``kill -9``). Each top-level
  process therefore stops when its *supervisor* dies: honcho itself when the
  parent is such a runner, else the parent (:func:`supervisor_pid`,
  :func:`die_with_stack`).
* **One service per data directory.** With the embedded Redis, every
  process of a stack shares its data directory; the embedded Redis holds
  ``TIMER_DATA_DIR/redis.lock`` and writes its own pid and its supervisor's
  into it. Another stack's processes find it there and stop before they
  connect to Redis (:func:`refuse_busy_data_dir`).
"""

import ctypes
import logging
import os
import signal
import threading

from sharding import config, logs

log = logging.getLogger("sharding.process")

LOCK_FILE = "redis.lock"
# How often a process checks that its supervisor is still alive (seconds).
SUPERVISOR_POLL_S = 0.5


def start(component, uses_redis=True):
    """Set up JSON logs, read the settings, and turn SIGTERM/SIGINT into an event.

    The process also stops when its stack's supervisor dies (:func:`die_with_stack`).

    Args:
        component: the process type, added to every log line.
        uses_redis: the process connects to Redis, so it first checks that no
            other service holds the data directory (:func:`refuse_busy_data_dir`).
    Returns:
        (``sharding.config.Settings``, ``threading.Event`` set on SIGTERM or SIGINT).
    Raises:
        SystemExit(2): the configuration is invalid (the error is logged).
        SystemExit(1): another service holds the data directory (logged).
    """
    settings = load_settings(component)
    if uses_redis:
        refuse_busy_data_dir(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    die_with_stack()
    return settings, stop


def load_settings(component):
    """Set up JSON logs for ``component`` and read the settings.

    Returns:
        ``sharding.config.Settings``.
    Raises:
        SystemExit(2): the configuration is invalid (logged as one JSON line).
    """
    logs.setup(component)
    try:
        return config.load()
    except config.ConfigError as exc:
        log.error("invalid configuration", extra={"error": str(exc)})
        raise SystemExit(2) from None


def die_with_parent():
    """Ask Linux to SIGTERM this process when its parent dies (prctl(2) PR_SET_PDEATHSIG).

    Used in children that run in a session of their own, so that a kill -9
    of their supervisor never leaves them running. A no-op elsewhere.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _stat(pid):
    """(parent pid, command line bytes) of ``pid`` from /proc; None when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The command name (field 2) may hold spaces; it ends at the last ')'.
            ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return ppid, f.read()
    except (OSError, ValueError, IndexError):
        return None


def supervisor_pid():
    """The pid of the process that supervises this process's stack.

    The parent's parent when the parent is a forked copy of it (the same
    command line: honcho's runner of this process), else the parent.
    """
    parent = os.getppid()
    parent_stat = _stat(parent)
    if parent_stat and parent_stat[0] > 1:
        grandparent_stat = _stat(parent_stat[0])
        if grandparent_stat and grandparent_stat[1] == parent_stat[1]:
            return parent_stat[0]
    return parent


def die_with_stack():
    """Stop (SIGTERM to this process) when the stack's supervisor dies, even by kill -9.

    The parent's death is signalled by Linux (:func:`die_with_parent`); when
    the supervisor is the parent's parent (honcho behind its runner), a
    daemon thread notices within :data:`SUPERVISOR_POLL_S` that the runner
    has lost it.
    """
    die_with_parent()
    parent, supervisor = os.getppid(), supervisor_pid()
    if supervisor == parent:
        return

    def watch():
        while True:
            stat = _stat(parent)
            if stat is None or stat[0] != supervisor:
                log.warning("the stack's supervisor is gone; stopping", extra={"supervisor_pid": supervisor})
                os.kill(os.getpid(), signal.SIGTERM)
                return
            threading.Event().wait(SUPERVISOR_POLL_S)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def lock_content():
    """What the embedded Redis writes into ``redis.lock``: ``"<its pid> <its supervisor's pid>"``."""
    return f"{os.getpid()} {supervisor_pid()}"


def data_dir_holder(data_dir):
    """(pid, supervisor pid) of the live embedded Redis process named in ``data_dir/redis.lock``.

    Returns:
        None when there is no lock file, it is malformed, or its process is
        gone (a stale file: the lock itself goes with its process).
    """
    try:
        with open(os.path.join(data_dir, LOCK_FILE)) as f:
            pid, supervisor = (int(part) for part in f.read().split())
    except (OSError, ValueError):
        return None
    stat = _stat(pid)
    if stat is None or b"sharding.embedded_redis" not in stat[1]:
        return None
    return pid, supervisor


def refuse_busy_data_dir(settings):
    """Exit, before any Redis connection, when another service's embedded Redis holds the data dir.

    Without ``REDIS_URL`` every process connects to ``TIMER_DATA_DIR/redis.sock``;
    a second ``make run`` on a data directory in use would otherwise run its
    recovery pass and consumers against the first one's Redis.
    Raises:
        SystemExit(1): the lock names a live embedded Redis of another stack (logged).
    """
    if settings.redis_url:
        return
    holder = data_dir_holder(settings.data_dir)
    if holder is not None and holder[1] != supervisor_pid():
        log.error("TIMER_DATA_DIR is in use by another service", extra={
            "data_dir": os.path.abspath(settings.data_dir), "holder_pid": holder[0]})
        raise SystemExit(1)
