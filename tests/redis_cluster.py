"""A real Redis Cluster on loopback, once per test session, for the cluster hub's tests
(and dispatch's): three masters with one replica each, every node a `redis-server` in
cluster mode on a free port with a directory of its own under a temporary folder.

The `redis_cluster` fixture is session-scoped and lazy: it starts the cluster the first
time a test asks for it and stops it at the end of the session. `cluster-node-timeout`
is short (1000 ms), so that a replica takes over a killed master within a few seconds;
`cluster-require-full-coverage no` keeps the other shards answering meanwhile, as a
deployment should (docs/scaling.md).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import free_port

MASTERS = 3
NODE_TIMEOUT_MS = 1000
START_TIMEOUT = 30.0


class ClusterNode:
    """One redis-server of the cluster: its port, directory and process."""

    def __init__(self, root: Path, port: int) -> None:
        self.port = port
        self.directory = root / str(port)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or start again, with its nodes.conf: it rejoins the cluster)."""
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--save", "", "--appendonly", "no",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--cluster-require-full-coverage", "no",
             "--cluster-replica-validity-factor", "0"],
            stdout=log, stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        """SIGKILL, as a crashed machine: no goodbye to the cluster."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cli(self, *arguments: str, timeout: float = 5) -> str:
        """redis-cli against this node; its output ('' when it cannot answer)."""
        try:
            done = subprocess.run([_binary("redis-cli"), "-p", str(self.port), *arguments],
                                  capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout.decode(errors="replace")

    def info(self, *arguments: str) -> dict[str, str]:
        """CLUSTER INFO (or INFO <section>) as a dict."""
        lines = self.cli(*arguments).splitlines()
        return dict(line.strip().split(":", 1) for line in lines if ":" in line)

    @property
    def role(self) -> str:
        return self.info("INFO", "replication").get("role", "")


class RedisCluster:
    """The running cluster: its nodes, its URL, and the faults tests inject."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes = [ClusterNode(root, port) for port in _free_ports(2 * MASTERS)]

    @property
    def url(self) -> str:
        """hub.url for the cluster hub: every node as a seed."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        _until(lambda: all(node.cli("PING").strip() == "PONG" for node in self.nodes),
               "every node answers PING")
        created = subprocess.run(
            [_binary("redis-cli"), "--cluster", "create",
             *(node.address for node in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, timeout=START_TIMEOUT, check=False)
        if created.returncode != 0:
            raise AssertionError("redis-cli --cluster create failed:\n"
                                 + created.stdout.decode(errors="replace"))
        self.wait_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def masters(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.alive and node.role == "master"]

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Every live node says cluster_state:ok and knows MASTERS masters with slots,
        each with a replica: a test that kills a master leaves it so again."""
        def healthy() -> bool:
            live = [node for node in self.nodes if node.alive]
            if len(live) != len(self.nodes):
                return False
            for node in live:
                info = node.info("CLUSTER", "INFO")
                if info.get("cluster_state") != "ok" or \
                        info.get("cluster_size") != str(MASTERS) or \
                        info.get("cluster_known_nodes") != str(len(self.nodes)):
                    return False
            failing = [node for node in live if "fail" in node.cli("CLUSTER", "NODES")]
            return not failing and len(self.masters()) == MASTERS
        _until(healthy, "the cluster is healthy", timeout)

    def node_for(self, key: str) -> ClusterNode:
        """The master that serves `key` now (asked of the cluster, not computed here)."""
        asked = self.masters()[0]
        slot = int(asked.cli("CLUSTER", "KEYSLOT", key).strip())
        for start, end, port in _slot_ranges(asked):
            if start <= slot <= end:
                return next(node for node in self.nodes if node.port == port)
        raise AssertionError(f"no master serves slot {slot}")

    def fail_over(self, master: ClusterNode) -> None:
        """SIGKILL `master` and wait until its replica serves its slots."""
        others = [node for node in self.nodes if node is not master and node.alive]
        master.kill()

        def promoted() -> bool:
            masters = [node for node in others if node.role == "master"]
            return len(masters) == MASTERS and all(
                node.info("CLUSTER", "INFO").get("cluster_state") == "ok" for node in others)
        _until(promoted, f"a replica takes over from {master.address}")

    def restore(self, node: ClusterNode) -> None:
        """Start a killed node again: it rejoins as a replica of the master that replaced
        it, and the cluster is whole again for the next test."""
        node.start()
        self.wait_healthy()


def _slot_ranges(node: ClusterNode) -> list[tuple[int, int, int]]:
    """(first slot, last slot, master port) per range, from CLUSTER SLOTS in redis-cli's
    plain output: start, end, then each node's ip, port and id on lines of their own."""
    lines = [line.strip() for line in node.cli("CLUSTER", "SLOTS").splitlines()]
    ranges = []
    index = 0
    while index + 3 < len(lines):
        if lines[index].isdigit() and lines[index + 1].isdigit() and \
                lines[index + 2].count(".") == 3:
            ranges.append((int(lines[index]), int(lines[index + 1]), int(lines[index + 3])))
            index += 4
        else:
            index += 1
    return ranges


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/test.sh installs it)")
    return path


def _free_ports(count: int) -> list[int]:
    """Free ports whose cluster bus ports (port + 10000) are in range and free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + 10000 <= 65535 and port not in ports and (port + 10000) not in ports:
            ports.append(port)
    return ports


def _until(check: object, what: str, timeout: float = START_TIMEOUT) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """Three masters and three replicas on loopback, for the whole session."""
    root = Path(tempfile.mkdtemp(prefix="taxi-redis-cluster-"))
    cluster = RedisCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
