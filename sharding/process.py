"""Start-up shared by the service's long-running processes."""

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
    logs.setup(component)
    try:
        settings = config.load()
    except config.ConfigError as exc:
        log.error("invalid configuration", extra={"error": str(exc)})
        raise SystemExit(2) from None
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return settings, stop
