"""Configuration read from environment variables (12-factor).

Every setting is optional; the defaults are those of the contract
(``shared/CONTRACT.md`` section 1) and the README's configuration table.
"""

import dataclasses
import ipaddress
import os

from sharding.records import RetryLimits
from sharding.store import TimerStore

# Webhooks may never reach these (TIMER_WEBHOOK_DENY_NETWORKS default):
# link-local (cloud metadata at 169.254.169.254), "this network",
# unspecified, multicast and broadcast.
DEFAULT_DENY_NETWORKS = ("169.254.0.0/16", "fe80::/10", "0.0.0.0/8", "::/128", "224.0.0.0/4",
                         "ff00::/8", "255.255.255.255/32")

# Enough attempts that the 24 h window, not the count, ends a default schedule
# (at most 59 attempts fit in 24 h: `python -m workers.delivery --schedule`).
DEFAULT_WEBHOOK_MAX_ATTEMPTS = 60
DEFAULT_WEBHOOK_MAX_RETRY_SECONDS = 86_400

SERVICE_NAME = "timer-service"
# TIMER_DASHBOARD: the operator's dashboard with actions, without it, or without actions.
DASHBOARD_MODES = ("on", "off", "readonly")
VERSION = "0.1.0"

# Socket paths are limited to 107 bytes by sockaddr_un (unix(7)).
_MAX_UNIX_PATH = 100


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _number_env(name, default, minimum, maximum=None, kind=int):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a{'n integer' if kind is int else ' number'}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ConfigError(f"{name}={value} must be {bounds}")
    return value


def _int_env(name, default, minimum, maximum=None):
    return _number_env(name, default, minimum, maximum)


def _float_env(name, default, minimum):
    return _number_env(name, default, minimum, kind=float)


@dataclasses.dataclass(frozen=True)
class Settings:
    """All settings of one process.

    Times are in seconds unless the name says otherwise.
    """

    host: str
    port: int
    redis_url: str | None
    redis_cluster_url: str | None
    wait_replicas: int
    data_dir: str
    shards: int
    workers_per_shard: int
    consumer_threads: int
    api_workers: int
    api_connections: int
    max_delay_seconds: int
    webhook_timeout_seconds: float
    webhook_max_attempts: int
    webhook_max_retry_seconds: int
    scheduler_tick_seconds: float
    recovery_interval_seconds: float
    recovery_grace_seconds: float
    shutdown_seconds: float
    visibility_seconds: float
    retention_seconds: int
    webhook_deny_networks: tuple
    webhook_secrets: tuple
    api_tokens: tuple
    dashboard: str = "on"
    dashboard_session_seconds: int = 8 * 3600

    def store(self):
        """A ``sharding.store.TimerStore`` on this configuration's Redis or Redis Cluster."""
        if self.redis_cluster_url:
            return TimerStore(self.redis_cluster_url, self.retention_seconds, cluster=True,
                              wait_replicas=self.wait_replicas, live_shards=self.shards)
        return TimerStore(self.effective_redis_url(), self.retention_seconds,
                          wait_replicas=self.wait_replicas, live_shards=self.shards)

    @property
    def external_redis(self):
        """True when ``REDIS_URL`` or ``REDIS_CLUSTER_URL`` is set (no embedded Redis)."""
        return bool(self.redis_url or self.redis_cluster_url)

    @property
    def retry_limits(self):
        """The default :class:`sharding.records.RetryLimits` of every timer."""
        return RetryLimits(self.webhook_max_attempts, self.webhook_max_retry_seconds)

    @property
    def lease_ms(self):
        """Lease on a claimed timer in milliseconds: the webhook timeout plus margin."""
        return int((self.webhook_timeout_seconds + 5) * 1000)

    def effective_redis_url(self):
        """The Redis URL every process connects to.

        Returns ``REDIS_URL`` when set, else the unix socket of the embedded
        Redis in ``TIMER_DATA_DIR`` (shortened to a relative path when the
        absolute one would exceed the socket path limit).
        """
        if self.redis_url:
            return self.redis_url
        path = embedded_socket_path(self.data_dir)
        if len(path) > _MAX_UNIX_PATH:
            path = os.path.relpath(path)
        return f"unix://{path}"


def data_dir():
    """``TIMER_DATA_DIR`` (default ``./var``)."""
    return os.environ.get("TIMER_DATA_DIR", "").strip() or "./var"


def embedded_socket_path(data_dir):
    """Absolute path of the embedded Redis unix socket inside ``data_dir``."""
    return os.path.join(os.path.abspath(data_dir), "redis.sock")


def load():
    """Read the settings from ``os.environ``.

    Returns:
        Settings.
    Raises:
        ConfigError: a variable is set to a value outside its documented range,
            both ``REDIS_URL`` and ``REDIS_CLUSTER_URL`` are set, or
            ``TIMER_REDIS_WAIT_REPLICAS`` asks for replicas of the embedded Redis.
    """
    redis_url = os.environ.get("REDIS_URL", "").strip() or None
    cluster_url = os.environ.get("REDIS_CLUSTER_URL", "").strip() or None
    if redis_url and cluster_url:
        raise ConfigError("REDIS_URL and REDIS_CLUSTER_URL are both set; set one "
                          "(REDIS_URL: one Redis server, REDIS_CLUSTER_URL: a node of a Redis Cluster)")
    if cluster_url and not cluster_url.startswith(("redis://", "rediss://")):
        raise ConfigError(f"REDIS_CLUSTER_URL must be a redis:// or rediss:// URL, not {cluster_url!r}")
    wait_replicas = _int_env("TIMER_REDIS_WAIT_REPLICAS", 0, 0)
    if wait_replicas and not (redis_url or cluster_url):
        # The embedded Redis has no replicas: every create would wait 1 s, answer 503 and still fire.
        raise ConfigError(f"TIMER_REDIS_WAIT_REPLICAS={wait_replicas} needs REDIS_URL or REDIS_CLUSTER_URL "
                          "(a server with replicas); the embedded Redis has none")
    return Settings(
        host=os.environ.get("HOST", "").strip() or "127.0.0.1",
        port=_int_env("PORT", 8000, 1, 65535),
        redis_url=redis_url,
        redis_cluster_url=cluster_url,
        wait_replicas=wait_replicas,
        data_dir=data_dir(),
        shards=_int_env("TIMER_SHARDS", 4, 1, 999),
        workers_per_shard=_int_env("TIMER_WORKERS_PER_SHARD", 2, 1),
        consumer_threads=_int_env("TIMER_CONSUMER_THREADS", 4, 1),
        api_workers=_int_env("TIMER_API_WORKERS", 2, 1),
        api_connections=_int_env("TIMER_API_CONNECTIONS", 1000, 1),
        max_delay_seconds=_int_env("TIMER_MAX_DELAY_SECONDS", 31_536_000, 0),
        webhook_timeout_seconds=_float_env("TIMER_WEBHOOK_TIMEOUT_SECONDS", 10.0, 0.1),
        webhook_max_attempts=_int_env("TIMER_WEBHOOK_MAX_ATTEMPTS", DEFAULT_WEBHOOK_MAX_ATTEMPTS, 1),
        webhook_max_retry_seconds=_int_env("TIMER_WEBHOOK_MAX_RETRY_SECONDS",
                                           DEFAULT_WEBHOOK_MAX_RETRY_SECONDS, 0),
        scheduler_tick_seconds=_float_env("TIMER_SCHEDULER_TICK_SECONDS", 0.1, 0.01),
        recovery_interval_seconds=_float_env("TIMER_RECOVERY_INTERVAL_SECONDS", 5.0, 0.1),
        recovery_grace_seconds=_float_env("TIMER_RECOVERY_GRACE_SECONDS", 10.0, 0.0),
        shutdown_seconds=_float_env("TIMER_SHUTDOWN_SECONDS", 3.0, 0.0),
        visibility_seconds=_float_env("TIMER_QUEUE_VISIBILITY_SECONDS", 30.0, 1.0),
        retention_seconds=_int_env("TIMER_RETENTION_SECONDS", 7 * 86400, 1),
        webhook_deny_networks=_deny_networks(),
        webhook_secrets=tuple(os.environ.get("TIMER_WEBHOOK_SECRET", "").split()),
        api_tokens=tuple(t.strip() for t in os.environ.get("TIMER_API_TOKENS", "").split(",") if t.strip()),
        dashboard=_choice_env("TIMER_DASHBOARD", DASHBOARD_MODES),
        dashboard_session_seconds=_int_env("TIMER_DASHBOARD_SESSION_SECONDS", 8 * 3600, 60),
    )


def _choice_env(name, choices):
    """The value of ``name``, one of ``choices`` (the first is the default)."""
    raw = os.environ.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise ConfigError(f"{name}={raw!r} must be one of: {', '.join(choices)}")
    return raw


def parse_networks(text):
    """Comma-separated CIDRs → tuple of ``ipaddress`` networks.

    Raises:
        ValueError: a CIDR is invalid.
    """
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def _deny_networks():
    raw = os.environ.get("TIMER_WEBHOOK_DENY_NETWORKS")
    try:
        return parse_networks(",".join(DEFAULT_DENY_NETWORKS) if raw is None else raw)
    except ValueError as exc:
        raise ConfigError(f"TIMER_WEBHOOK_DENY_NETWORKS: {exc}") from None
