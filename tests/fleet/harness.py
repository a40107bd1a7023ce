"""The mixed-fleet harness's kit: a private redis-server, node drivers of every host (docs/NODE.md)
and the history checker.

Nothing here knows a host's internals: a node is a process that speaks the node-driver protocol,
so the same checks hold every host to docs/WIRE.md.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server on a free loopback port, for one test session."""

    def __init__(self, binary: Optional[str] = None):
        self.binary = binary or os.environ.get("ACI_REDIS_SERVER") or shutil.which("redis-server") or "redis-server"
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="aci-fleet-redis-")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def client(self):
        import redis  # redis-py, from python/.venv (the harness runs there)
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def get(self, key: str) -> Optional[str]:
        return self.client().get(key)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Hosts

def _go_driver() -> Optional[List[str]]:
    if not os.path.isdir(os.path.join(ROOT, "go", "cmd", "aci-node")):
        return None
    out = os.path.join(ROOT, "target", "fleet", "aci-node-go")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    subprocess.run(["go", "build", "-o", out, "./cmd/aci-node"], cwd=os.path.join(ROOT, "go"), check=True)
    return [out]


def available_hosts() -> Dict[str, List[str]]:
    """host name -> argv prefix of its node driver, for every host whose driver exists here.
    ACI_FLEET_HOSTS=rust,python limits the set."""
    hosts: Dict[str, List[str]] = {}
    rust = os.environ.get("ACI_BIN") or os.path.join(ROOT, "target", "debug", "aci")
    if os.path.exists(rust):
        hosts["rust"] = [rust, "node"]
    py = os.path.join(ROOT, "python", ".venv", "bin", "python")
    if os.path.exists(os.path.join(ROOT, "python", "src", "aci_cache", "node.py")) and os.path.exists(py):
        hosts["python"] = [py, "-m", "aci_cache.node"]
    js = os.path.join(ROOT, "js", "bin", "aci-node.js")
    if os.path.exists(js):
        hosts["js"] = ["node", js]
    go = _go_driver()
    if go:
        hosts["go"] = go
    only = os.environ.get("ACI_FLEET_HOSTS")
    if only:
        wanted = [h.strip() for h in only.split(",") if h.strip()]
        missing = [h for h in wanted if h not in hosts]
        if missing:
            raise RuntimeError(f"ACI_FLEET_HOSTS names hosts without a driver here: {missing}")
        hosts = {h: hosts[h] for h in wanted}
    return hosts


class NodeError(RuntimeError):
    pass


class Node:
    """One node-driver process. `cmds` sends lines and waits for as many answers, in order."""

    def __init__(self, host: str, argv: Sequence[str], flags: Sequence[str], log_dir: str, name: str):
        self.host = host
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self._log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        self.proc = subprocess.Popen(list(argv) + list(flags), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, env=env, cwd=ROOT)
        self._lines: "queue.Queue[Optional[bytes]]" = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        self.instance_id: Optional[str] = None

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _answer(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise NodeError(f"{self.name}: no answer within {timeout} s\n{self.log_tail()}") from None
        if line is None:
            raise NodeError(f"{self.name}: exited with {self.proc.poll()}\n{self.log_tail()}")
        try:
            return json.loads(line)
        except ValueError:
            raise NodeError(f"{self.name}: not a JSON line: {line[:200]!r}") from None

    def wait_ready(self, timeout: float = 60) -> dict:
        r = self._answer(timeout)
        if r.get("ready") is not True:
            raise NodeError(f"{self.name}: first line is not the ready line: {r}")
        self.instance_id = r.get("instance_id")
        return r

    def cmds(self, lines: Sequence[str], timeout: float = 10) -> List[dict]:
        with self._lock:
            assert self.proc.stdin
            try:
                self.proc.stdin.write("".join(l + "\n" for l in lines).encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                raise NodeError(f"{self.name}: stdin closed\n{self.log_tail()}") from None
            return [self._answer(timeout) for _ in lines]

    def cmd(self, line: str, timeout: float = 10) -> dict:
        r = self.cmds([line], timeout)[0]
        if "error" in r:
            raise NodeError(f"{self.name}: `{line}` failed: {r['error']}")
        return r

    def quit(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            try:
                r = self.cmds(["quit"], timeout)[0]
                if r.get("bye") is not True:
                    raise NodeError(f"{self.name}: quit answered {r}")
                self.proc.wait(timeout)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
        self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def log_tail(self, n: int = 2000) -> str:
        try:
            self._log.flush()
            with open(self.log_path, "rb") as f:
                data = f.read()
            return data[-n:].decode(errors="replace")
        except OSError:
            return ""


# ------------------------------------------------------------------------------------------------
# History checker

@dataclass
class Write:
    key: str
    value: Optional[str]  # None: a delete
    node: str
    start: float
    ack: float
    bound: float  # how long after `ack` a reader elsewhere may still see an older value


@dataclass
class Read:
    key: str
    value: Optional[str]
    node: str
    start: float
    end: float


@dataclass
class Verdict:
    writes: int = 0
    reads: int = 0
    stale: List[str] = field(default_factory=list)      # staler than the newer write's bound
    phantom: List[str] = field(default_factory=list)    # a value never written, or read before it was
    max_stale_within_bound: float = 0.0                 # how late a read saw a change, within bounds

    @property
    def ok(self) -> bool:
        return not self.stale and not self.phantom


def check(writes: Sequence[Write], reads: Sequence[Read]) -> Verdict:
    """Writes to one key must be serialized (each starts after the previous one's ack), which the
    harness guarantees by writing from one thread: then their order in Redis is their order here.
    A read that returned the value of write i is stale if a later write j was acknowledged more
    than its bound before the read started. A miss (None) is the latest delete, or the state
    before the first write: judged by the most recent such state that could explain it."""
    v = Verdict(writes=len(writes), reads=len(reads))
    by_key: Dict[str, List[Write]] = {}
    for w in writes:
        by_key.setdefault(w.key, []).append(w)
    index: Dict[tuple, int] = {}
    for k, ws in by_key.items():
        for i in range(1, len(ws)):
            if ws[i].start < ws[i - 1].ack:
                raise ValueError(f"writes to {k} overlap: the checker needs them serialized")
        for i, w in enumerate(ws):
            if w.value is not None:
                if (k, w.value) in index:
                    raise ValueError(f"value {w.value} written twice to {k}: values must be unique")
                index[(k, w.value)] = i
    for r in reads:
        ws = by_key.get(r.key, [])
        if r.value is None:
            # The newest state that is "absent" and began before the read ended.
            i = -1
            for j, w in enumerate(ws):
                if w.start > r.end:
                    break
                if w.value is None:
                    i = j
        else:
            i = index.get((r.key, r.value), None)
            if i is None:
                v.phantom.append(f"{r.node} read {r.key}={r.value}, never written")
                continue
            if ws[i].start > r.end:
                v.phantom.append(f"{r.node} read {r.key}={r.value} before it was written")
                continue
        for j in range(i + 1, len(ws)):
            w = ws[j]
            if w.start > r.start:
                break
            late = r.start - w.ack
            if late > w.bound:
                v.stale.append(f"{r.node} read {r.key}={r.value} at {r.start:.3f}, "
                               f"{late:.3f}s after {w.node} wrote {w.value} (bound {w.bound:.2f}s)")
                break
            v.max_stale_within_bound = max(v.max_stale_within_bound, late)
    return v
