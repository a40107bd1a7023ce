"""Fixtures: a real redis-server on a free loopback port for the session (no fakes, no mocks)."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Callable, Iterator, List

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, port: int, proc: subprocess.Popen, workdir: str):
        self.host = "127.0.0.1"
        self.port = port
        self.proc = proc
        self.workdir = workdir
        self.url = f"redis://{self.host}:{port}/0"


def server_binary() -> str:
    """The server every test starts: ``ACI_REDIS_SERVER`` (e.g. Valkey's valkey-server, as
    scripts/test.sh sets it for its Valkey pass), else redis-server from PATH."""
    exe = (os.environ.get("ACI_REDIS_SERVER") or os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
           or "/usr/bin/redis-server")
    if not os.path.exists(exe):
        pytest.fail(f"{exe} not found (apt-get install -y --no-install-recommends redis-server, or set "
                    "ACI_REDIS_SERVER)")
    return exe


def cli_binary() -> str:
    """The CLI that goes with ``server_binary()``: ``ACI_REDIS_CLI``, else valkey-cli next to a
    valkey-server, else redis-cli from PATH (``--cluster create`` needs it)."""
    exe = os.environ.get("ACI_REDIS_CLI")
    if exe:
        return exe
    server = server_binary()
    near = os.path.join(os.path.dirname(server), "valkey-cli")
    if os.path.basename(server) == "valkey-server" and os.path.exists(near):
        return near
    return shutil.which("redis-cli") or "/usr/bin/redis-cli"


@pytest.fixture(scope="session")
def server_info(redis_server) -> dict:
    """INFO server of the server under test (``valkey_version`` is set on Valkey)."""
    import redis

    c = redis.Redis(host=redis_server.host, port=redis_server.port, decode_responses=True)
    try:
        return c.info("server")
    finally:
        c.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    exe = server_binary()
    workdir = tempfile.mkdtemp(prefix="aci-redis-")
    for _attempt in range(5):
        port = _free_port()
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", workdir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            proc.kill()
            proc.wait()
            continue
        if proc.poll() is None:
            break
    else:  # pragma: no cover
        pytest.fail("could not start redis-server")
    server = RedisServer(port, proc, workdir)
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def r(redis_server):
    import redis

    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    yield client
    client.close()


@pytest.fixture
def ns() -> str:
    """A namespace of its own for each test, so tests never see each other's keys or messages."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def make_cache(redis_server) -> Iterator[Callable[..., "object"]]:
    """Builds AdaptiveCache instances on fresh clients; stops them all at the end and checks
    that no thread of theirs is left running."""
    import redis

    from aci_cache import AdaptiveCache

    made: List[AdaptiveCache] = []
    clients = []

    def make(*, decode_responses: bool = False, **cfg):
        c = redis.Redis(host=redis_server.host, port=redis_server.port, decode_responses=decode_responses)
        clients.append(c)
        cache = AdaptiveCache(c, **cfg)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.stop()
    for c in clients:
        c.close()
    ids = {c.instance_id for c in made}
    left = [t.name for t in threading.enumerate() if any(i in t.name for i in ids)]
    assert not left, f"threads left running: {left}"


def wait_for(pred: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


# ----------------------------------------------------------------------------------------------
# A local Redis Cluster: 6 nodes on loopback, 3 masters + 3 replicas, a low node timeout so that a
# killed master fails over within seconds.

NODE_TIMEOUT_MS = 2000


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start_cluster() -> "LocalCluster":
    """A cluster, retried: on a busy machine a node's port can be taken between probe and bind,
    or the cluster can be slow to settle."""
    err: BaseException = RuntimeError("no attempt")
    for _ in range(3):
        try:
            return LocalCluster()
        except RuntimeError as e:
            err = e
    raise err


class LocalCluster:
    def __init__(self, n: int = 6, replicas: int = 1):
        self.exe = server_binary()
        self.cli = cli_binary()
        self.workdir = tempfile.mkdtemp(prefix="aci-cluster-")
        self.procs: dict = {}
        self.ports: List[int] = []
        atexit.register(self.close)  # no node outlives the test process, whatever fails
        try:
            for _ in range(n):
                self.ports.append(self._spawn_new())
            out = subprocess.run(
                [self.cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                 "--cluster-replicas", str(replicas), "--cluster-yes"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
            if out.returncode != 0:
                raise RuntimeError(f"--cluster create failed: {out.stdout.decode(errors='replace')[-2000:]}")
            self.wait_ok()
        except BaseException:
            self.close()
            raise

    def _args(self, port: int) -> List[str]:
        d = os.path.join(self.workdir, str(port))
        os.makedirs(d, exist_ok=True)
        return [self.exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", d, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--loglevel", "warning",
                # a replica that never synced may not be promoted: sync at once, not after 5 s
                "--repl-diskless-sync-delay", "0"]

    def _spawn_new(self) -> int:
        for _ in range(5):
            port = _free_port()
            if port + 10000 > 65535 or not _bindable(port + 10000):
                continue  # the cluster bus listens on port + 10000
            if self._spawn(port):
                return port
        raise RuntimeError("could not start a cluster node")

    def _spawn(self, port: int) -> bool:
        proc = subprocess.Popen(self._args(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if _ping(port):
                self.procs[port] = proc
                return True
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        return False

    def client(self, **kw):
        import redis.cluster

        live = [redis.cluster.ClusterNode("127.0.0.1", p) for p in self.ports if p in self.procs]
        return redis.cluster.RedisCluster(startup_nodes=live, **kw)

    def node_client(self, port: int):
        import redis

        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=2)

    def masters(self) -> List[int]:
        """Ports of the masters that own slots, as a live node sees them."""
        for port in self.ports:
            if port not in self.procs:
                continue
            c = self.node_client(port)
            try:
                nodes = c.execute_command("CLUSTER", "NODES")
            except Exception:
                continue
            finally:
                c.close()
            text = nodes if isinstance(nodes, str) else "\n".join(f"{k} {v}" for k, v in nodes.items())
            out = []
            for line in text.splitlines():
                f = line.split()
                if len(f) > 8 and "master" in f[2] and "fail" not in f[2]:
                    out.append(int(f[1].split("@")[0].rsplit(":", 1)[1]))
            return sorted(out)
        return []

    def replicas_of(self, port: int) -> List[int]:
        c = self.node_client(port)
        try:
            me = c.execute_command("CLUSTER", "MYID")
            text = c.execute_command("CLUSTER", "NODES")
        finally:
            c.close()
        out = []
        for line in str(text).splitlines():
            f = line.split()
            if len(f) > 3 and f[3] == me:
                out.append(int(f[1].split("@")[0].rsplit(":", 1)[1]))
        return out

    def master_of(self, key: str) -> int:
        c = self.client()
        try:
            return c.get_node_from_key(key).port
        finally:
            c.close()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok and 3 live nodes are the masters (after a
        kill: until a replica has been promoted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            good = True
            for port in self.procs:
                c = self.node_client(port)
                try:
                    if "cluster_state:ok" not in c.execute_command("CLUSTER", "INFO"):
                        good = False
                except Exception:
                    good = False
                finally:
                    c.close()
            masters = self.masters()
            if good and len(masters) == 3 and all(p in self.procs for p in masters) and self._replicas_synced():
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    def _replicas_synced(self) -> bool:
        for port in self.procs:
            c = self.node_client(port)
            try:
                info = c.info("replication")
            except Exception:
                return False
            finally:
                c.close()
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()

    def restart(self, port: int) -> None:
        """Kill and start again on the same port and folder (nodes.conf kept, no data: the node
        comes back empty, as a master without persistence does)."""
        self.kill(port)
        if not self._spawn(port):
            raise RuntimeError(f"node {port} did not restart")

    def close(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        for proc in self.procs.values():
            proc.wait()
        self.procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """One cluster for the tests that leave it as they found it."""
    c = start_cluster()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    """A cluster of its own for a test that breaks it (kills a master)."""
    c = start_cluster()
    try:
        yield c
    finally:
        c.close()
