"""Start-up shared by the service's long-running processes."""

import ctypes
import logging
import signal
import threading

from sharding import config, logs

log = logging.getLogger("sharding.process")


def start(component):
    """Set up JSON logs, read the settings, and turn SIGTERM/SIGINT into an event.

    Args:
        component: the process type, added to every log line.
    Returns:
        (``sharding.config.Settings``, ``threading.Event`` set on SIGTERM or SIGINT).
    Raises:
        SystemExit(2): the configuration is invalid (the error is logged).
    """
    settings = load_settings(component)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # honcho runs each process in a session of its own: if honcho dies (a lost
    # terminal sends it SIGHUP), SIGTERM reaches us through the parent's death.
    die_with_parent()
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
