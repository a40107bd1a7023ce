"""`python -m aci_cache.node` per docs/NODE.md, as a subprocess against the test redis-server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import redis

from conftest import wait_for


class PyNode:
    def __init__(self, url: str, *flags: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "aci_cache.node", "--redis", url, *flags],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.ready = self.read()

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"node exited: {self.proc.stderr.read()[-2000:]}"
        return json.loads(line)

    def cmd(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def pynode(redis_server):
    made = []

    def start(*flags):
        n = PyNode(redis_server.url, *flags)
        made.append(n)
        return n

    yield start
    for n in made:
        n.close()


def test_ready_commands_and_quit(pynode, ns, r):
    n = pynode("--namespace", ns, "--strategy", "eager", "--tick-ms", "100", "--instance-id", "py-node_1")
    assert n.ready == {"ready": True, "instance_id": "py-node_1", "host": "python", "protocol": 2}
    assert n.cmd("set a 1") == {"ok": True}
    assert r.get(f"aci:{ns}:a") == b"1"
    assert n.cmd("set b 2 1500") == {"ok": True}
    assert 1000 < r.pttl(f"aci:{ns}:b") <= 1500
    assert n.cmd("get a") == {"value": "1"}
    assert n.cmd("get nope") == {"value": None}
    assert n.cmd("del a") == {"ok": True}
    assert n.cmd("get a") == {"value": None}
    assert n.cmd("strategy") == {"strategy": "eager"}
    assert "error" in n.cmd("frobnicate x")
    assert "error" in n.cmd("set k v notanumber")
    s = n.cmd("stats")
    for k in ("reads", "l1_hits", "l1_misses", "writes", "messages_sent", "pubsub_received", "messages_received",
              "invalidations_applied", "gaps", "malformed", "is_controller", "strategy"):
        assert k in s, k
    assert s["writes"] == 3 and s["reads"] == 3 and s["strategy"] == "eager" and s["is_controller"] is True
    # its own eager publishes come back on its subscription asynchronously (late on a loaded box)
    assert wait_for(lambda: n.cmd("stats")["pubsub_received"] >= 1, timeout=5)
    assert n.cmd("quit") == {"bye": True}
    assert n.proc.wait(10) == 0
    assert r.get(f"aci::{ns}:controller") is None  # the lease was released


@pytest.mark.parametrize("flags, word", [
    (["--role", "boss"], "--role"),
    (["--tick-ms", "abc"], "--tick-ms"),
    (["--namespace", "a:b"], "--namespace"),
    (["--instance-id", "a b"], "--instance-id"),
    (["--bogus"], "--bogus"),
    (["--strategy"], "--strategy"),
    (["--policy-public-key", "00"], "--policy-public-key"),
    (["--policy-allow-hashes", "ABC"], "--policy-allow-hashes"),
    (["--policy-rollback-faults", "0"], "--policy-rollback-faults"),
])
def test_bad_flag_is_one_line_and_exit_2(flags, word):
    p = subprocess.run([sys.executable, "-m", "aci_cache.node", *flags], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and word in p.stderr


def test_unreachable_redis_fails_fast():
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "aci_cache.node", "--redis", "redis://127.0.0.1:1"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and p.stdout == "" and "Redis" in p.stderr
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_publishes_the_pending_batch(pynode, make_cache, ns, sig):
    """A signal shuts down like quit: a reader elsewhere sees the batched write at once, not after
    the batch interval (2.5 s) or its local TTL."""
    reader = make_cache(namespace=ns, is_controller=False, local_ttl=30, decode_responses=True)
    n = pynode("--namespace", ns, "--strategy", "batched", "--role", "controller")
    assert n.cmd("set k old") == {"ok": True}
    assert wait_for(lambda: reader.strategy == "batched", timeout=3)
    assert reader.get("k") == "old"
    assert n.cmd("set k new") == {"ok": True}
    n.proc.send_signal(sig)
    assert n.proc.wait(10) == 0
    # The publish is in Redis before the node exits; its delivery to our subscriber is not
    # instant on a loaded machine. Neither the batch interval (2.5 s, and the node is gone) nor the
    # local TTL (30 s) can make this pass without that message.
    assert wait_for(lambda: reader.get("k") == "new", timeout=5)


def test_eof_shuts_down(pynode, ns, r):
    n = pynode("--namespace", ns)
    n.proc.stdin.close()
    assert n.proc.wait(10) == 0
    assert r.get(f"aci::{ns}:controller") is None


def test_policy_flags_and_command(pynode, ns, r):
    """The trust flags reach the cache: an allow-listed push is run, and `policy` reports it."""
    from test_rollout import FIXED, Pusher, sha

    h = sha(FIXED)
    n = pynode("--namespace", ns, "--policy-allow-hashes", f"{'0' * 64},{h}", "--policy-rollback-faults", "2")
    st = n.cmd("policy")
    assert st["origin"] == "local" and st["name"] == "adaptive" and st["trust"] == "allow-list"
    Pusher(r, ns).push(FIXED, signed=False)
    assert wait_for(lambda: n.cmd("policy")["sha256"] == h, timeout=3)
    st = n.cmd("policy")
    assert st["origin"] == "pushed" and st["rollout"] == 1 and st["id"] == n.ready["instance_id"]
    stats = n.cmd("stats")
    assert stats["policy_hash"] == h and stats["policy_name"] == "fixed" and stats["policy_origin"] == "pushed"
    assert stats["policy_faults"] == 0 and stats["policy_rollout"] == 1
