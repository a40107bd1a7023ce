"""Fixtures: a real redis-server on a free loopback port for the session (no fakes, no mocks)."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    exe = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(exe):
        pytest.fail("redis-server not found (apt-get install -y --no-install-recommends redis-server)")
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
