"""Session fixtures: one real redis-server, one real Redis Cluster, one webhook receiver,
services per test."""

import pytest

from sharding.local_cluster import LocalCluster
from tests.harness import (
    Receiver,
    RedisServer,
    Service,
    consumers_ready,
    empty_cluster,
    free_cluster_port,
    whole_service,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server for the whole session (free port, temp dir, AOF on)."""
    server = RedisServer(str(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    """A client on the session's Redis, emptied before the test."""
    if redis_server.process.poll() is not None:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    return client


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real Redis Cluster for the whole session: 3 masters + 3 replicas (``sharding.local_cluster``)."""
    cluster = LocalCluster(str(tmp_path_factory.mktemp("cluster")), free_cluster_port()).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_service(redis_cluster, receiver, tmp_path):
    """Factory on the session's cluster, emptied first: ``cluster_service(env={...})`` →
    a :class:`tests.harness.Service` with ``REDIS_CLUSTER_URL`` (not started)."""
    empty_cluster(redis_cluster)
    receiver.reset()
    made = []

    def make(env=None):
        service = Service(None, str(tmp_path), {"REDIS_CLUSTER_URL": redis_cluster.url, **(env or {})})
        made.append(service)
        return service

    yield make
    for service in made:
        service.stop(timeout=10)


@pytest.fixture(scope="session")
def receiver():
    """The session's webhook receiver."""
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def make_service(redis_client, redis_server, receiver, tmp_path):
    """Factory: ``make_service(env={...})`` → a :class:`tests.harness.Service` (not started).

    Every service made here is stopped after the test; Redis starts empty and
    the receiver starts with no requests.
    """
    receiver.reset()
    made = []

    def make(env=None):
        service = Service(redis_server.url, str(tmp_path), env)
        made.append(service)
        return service

    yield make
    for service in made:
        service.stop(timeout=10)


@pytest.fixture(scope="module")
def live(redis_server, tmp_path_factory):
    """The whole service, every consumer started, shared by the tests of the module that uses it.

    One service for a module's tests keeps it fast; each test looks only at
    its own timers and waits until they have left every queue. Tests that
    start a service of their own live in other modules: this one's consumers
    would deliver their timers too.
    """
    with whole_service(redis_server, str(tmp_path_factory.mktemp("live"))) as service:
        yield service


@pytest.fixture
def service(make_service):
    """The whole service (API, consumer pool, coordinator) started with defaults, every consumer up."""
    started = make_service().start()
    consumers_ready(started)
    return started


_FIGURES = []


@pytest.fixture(scope="session")
def figures():
    """A list of text lines that the run prints at its end (benchmark-like figures)."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter):
    """Print the figures tests recorded, e.g. the chaos test's counts."""
    if _FIGURES:
        terminalreporter.section("figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
