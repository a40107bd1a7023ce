"""A mixed fleet: this package and the Rust host (`aci node`) share a namespace and keep each
other's local caches coherent over the same wire protocol (docs/WIRE.md).

`aci node` is the Rust host's node driver (docs/NODE.md: `--redis URL [--namespace NS] [--role
controller|follower|auto] [--strategy S]`, one command per line on stdin, one JSON line per
command, a ready line first). The whole-fleet check with every host is tests/fleet/; these are the
pairwise Python<->Rust checks.

The binary is ACI_BIN or target/debug/aci (`cargo build -p aci-cli`). Without it (or when it
cannot run `node` yet) these tests skip, except under CI (env CI set), where they fail.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import redis

from aci_cache import AdaptiveCache
from conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
ACI_BIN = Path(os.environ.get("ACI_BIN") or REPO / "target" / "debug" / "aci")


def _unavailable(why: str) -> None:
    msg = f"mixed fleet: {why} (build it with: cd {REPO} && cargo build -p aci-cli)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


class RustNode:
    def __init__(self, url: str, *args: str, flag: str = "--redis"):
        if not ACI_BIN.is_file():
            _unavailable(f"{ACI_BIN} not found")
        self.proc = subprocess.Popen(
            [str(ACI_BIN), "node", flag, url, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1,
        )
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.err: list = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()
        first = self._read(timeout=30)
        if first is None or not first.get("ready"):
            self.close()
            _unavailable(f"`aci node` did not get ready (first line {first!r}, stderr {''.join(self.err)[-500:]!r})")
        self.instance_id = first["instance_id"]

    @staticmethod
    def _pump(stream: Any, q: "queue.Queue[Optional[str]]") -> None:
        for line in stream:
            q.put(line)
        q.put(None)

    def _pump_err(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)

    def _read(self, timeout: float = 10) -> Optional[Dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"aci node: no answer within {timeout} s; stderr: {''.join(self.err)[-500:]}")
            if line is None:
                return None
            line = line.strip()
            if not line:
                continue
            try:
                return json.loads(line)
            except ValueError:
                continue  # not a protocol line (a log line on stdout): skip it

    def cmd(self, line: str) -> Dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = self._read()
        assert out is not None, f"aci node exited; stderr: {''.join(self.err)[-500:]}"
        return out

    def get(self, key: str) -> Any:
        return self.cmd(f"get {key}")["value"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def node(redis_server):
    nodes = []

    def start(*args: str) -> RustNode:
        n = RustNode(redis_server.url, *args)
        nodes.append(n)
        return n

    yield start
    for n in nodes:
        n.close()


def test_python_and_rust_invalidate_each_other(node, make_cache, ns, r):
    rust = node("--namespace", ns, "--strategy", "eager")
    py = make_cache(namespace=ns, strategy="eager", decode_responses=True)
    assert len(rust.instance_id) == 12 and rust.instance_id != py.instance_id

    # Rust writes, Python reads (fills its L1), Rust rewrites: Python sees the new value.
    assert rust.cmd("set k1 r1") == {"ok": True}
    assert py.get("k1") == "r1"
    assert rust.cmd("set k1 r2") == {"ok": True}
    assert wait_for(lambda: py.stats["invalidations_applied"] >= 2, timeout=3)
    assert py.get("k1") == "r2"
    assert r.get(f"aci:{ns}:k1") == b"r2"  # an invalidation never deletes from Redis

    # Python writes, Rust reads (fills its L1), Python rewrites: Rust sees the new value.
    py.set("k2", "p1")
    assert rust.get("k2") == "p1"
    assert rust.get("k2") == "p1"
    py.set("k2", "p2")
    assert wait_for(lambda: rust.get("k2") == "p2", timeout=3)

    # Deletes, both ways.
    assert rust.cmd("del k1") == {"ok": True}
    assert wait_for(lambda: py.get("k1") is None, timeout=3)
    py.delete("k2")
    assert wait_for(lambda: rust.get("k2") is None, timeout=3)

    assert rust.cmd("strategy") == {"strategy": "eager"}
    stats = rust.cmd("stats")
    assert isinstance(stats, dict)
    # Each side understood every message of the other.
    s = py.stats
    assert s["malformed"] == 0 and s["gaps"] == 0, s


def test_python_follows_a_rust_controller(node, make_cache, ns):
    rust = node("--namespace", ns, "--role", "controller", "--strategy", "batched")
    py = make_cache(namespace=ns, is_controller=False)
    assert wait_for(lambda: py.strategy == "batched", timeout=3)
    assert py.stats["malformed"] == 0


def test_rust_follows_a_python_controller(node, make_cache, ns):
    py = make_cache(namespace=ns, is_controller=True, strategy="eager")
    rust = node("--namespace", ns, "--role", "follower")
    assert wait_for(lambda: rust.cmd("strategy") == {"strategy": "eager"}, timeout=3)
    rust.cmd("set a 1")
    assert wait_for(lambda: py.stats["messages_received"] > 0, timeout=3)
    assert py.stats["malformed"] == 0
