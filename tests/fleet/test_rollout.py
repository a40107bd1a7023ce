"""Acceptance of a fleet-wide policy rollout (issue 14, docs/WIRE.md 9), end to end: Rust
(`aci node`), Python, JS and Go node drivers on one real redis-server, driven only by the `aci policy`
commands an operator runs, with reads and writes going on throughout.

- `aci policy push` of `fixed` (eager, by a signed config override) with the fleet's key: within
  2 s every instance reports the new hash and runs eager; keys buffered under `batched` just
  before the swap are published, not dropped;
- `aci policy rollback` restores `adaptive` everywhere;
- an unsigned push is refused by every instance, the reason visible in `aci policy status`;
- no read staler than the bound of the strategy its newer write was made under (history
  checker), and at the end every instance reads what Redis holds;
- a hostile (looping) policy pushed as a canary to one instance is rolled back by that instance
  and never reaches the rest of the fleet.

The L1 lives 60 s here, so only invalidations (never the local TTL) can make a reader see a
write within the bounds: a buffered key lost at a swap shows up as a stale read and a diverged
instance, not as a read that merely waited for its entry to expire.

Run: python/.venv/bin/python -m pytest tests/fleet/test_rollout.py -q -s
(`aci` from $ACI_BIN or target/debug/aci: cargo build -p aci-cli).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import subprocess
import tempfile
import threading
import time
from typing import Dict, List, Optional

import pytest

from harness import ROOT, Node, Read, RedisServer, Write, available_hosts, check

TICK_MS = 250
LOCAL_TTL_MS = 60_000
BATCH_INTERVAL_S = 2.5
SLACK_S = 1.0  # scheduling on a loaded 2-core machine, not protocol
BOUND = {
    "eager": SLACK_S,
    "batched": BATCH_INTERVAL_S + TICK_MS / 1000 + SLACK_S,
    "ttl": LOCAL_TTL_MS / 1000 + SLACK_S,
}
STRENGTH = {"eager": 0, "batched": 1, "ttl": 2}
KEYS = [f"k{i}" for i in range(16)]
POLICIES = os.path.join(ROOT, "target", "policies")
SWAP_WITHIN_S = 2.0


def aci_bin() -> str:
    b = os.environ.get("ACI_BIN") or os.path.join(ROOT, "target", "debug", "aci")
    if not os.path.exists(b):
        msg = f"{b} missing: cargo build -p aci-cli"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return b


def aci(*args: str, check_rc: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "warn")
    p = subprocess.run([aci_bin(), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check_rc and p.returncode != 0:
        raise AssertionError(f"aci {' '.join(args)} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def sha_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def policy_file(name: str) -> str:
    p = os.path.join(POLICIES, f"{name}.wasm")
    if not os.path.exists(p):
        pytest.fail(f"{p} missing: cargo xtask policies")
    return p


@pytest.fixture(scope="module")
def hosts() -> Dict[str, List[str]]:
    aci_bin()
    h = available_hosts()
    missing = [x for x in ("rust", "python", "js", "go") if x not in h]
    assert not missing, f"node drivers missing for {missing}"
    return h


@pytest.fixture(scope="module")
def redis_server():
    r = RedisServer()
    yield r
    r.stop()


@pytest.fixture
def log_dir():
    return tempfile.mkdtemp(prefix="aci-rollout-")


@pytest.fixture(scope="module")
def fleet_key():
    d = tempfile.mkdtemp(prefix="aci-rollout-key-")
    path = os.path.join(d, "fleet.key")
    aci("policy", "keygen", "--out", path)
    with open(path + ".pub") as f:
        pub = f.read().strip()
    assert len(pub) == 64, pub
    return path, pub


class Fleet:
    """Node drivers on one namespace, plus direct reads of the status records (WIRE.md 9.8)."""

    def __init__(self, redis_server: RedisServer, ns: str, log_dir: str):
        self.redis = redis_server
        self.ns = ns
        self.log_dir = log_dir
        self.nodes: List[Node] = []
        self.client = redis_server.client()

    def start(self, specs, extra_flags) -> None:
        try:
            for host, argv, role, name, flags in specs:
                fl = ["--redis", self.redis.url, "--namespace", self.ns, "--role", role, "--instance-id", name,
                      "--tick-ms", str(TICK_MS), "--local-ttl-ms", str(LOCAL_TTL_MS), *extra_flags, *flags]
                self.nodes.append(Node(host, argv, fl, self.log_dir, name))
            for n in self.nodes:
                ready = n.wait_ready(timeout=90)
                assert ready.get("host") == n.host and ready.get("instance_id") == n.name, ready
        except BaseException:
            self.kill()
            raise

    def status(self, name: str) -> Optional[dict]:
        v = self.client.get(f"aci::{self.ns}:policy:status:{name}")
        return json.loads(v) if v else None

    def statuses(self) -> Dict[str, Optional[dict]]:
        return {n.name: self.status(n.name) for n in self.nodes}

    def record(self) -> Dict[str, str]:
        return self.client.hgetall(f"aci::{self.ns}:policy:current")

    def wait(self, pred, timeout: float, what: str) -> float:
        """Seconds until pred() held; fails with the statuses after timeout."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if pred():
                return time.monotonic() - t0
            time.sleep(0.02)
        if pred():
            return time.monotonic() - t0
        raise AssertionError(f"{what}: not within {timeout} s\n" + json.dumps(self.statuses(), indent=1)
                             + "\nrecord: " + json.dumps(self.record()))

    def cli(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return aci("policy", *args, "--redis", self.redis.url, "--namespace", self.ns, **kw)

    def quit(self) -> None:
        errors = []
        for n in self.nodes:
            try:
                n.quit()
            except Exception as e:
                errors.append(str(e))
                n.kill()
        assert not errors, "\n".join(errors)

    def kill(self) -> None:
        for n in self.nodes:
            n.kill()


class Workload:
    """Writes at a given rate through random nodes and reads on every node, recording a history."""

    def __init__(self, fleet: Fleet, seed: str):
        self.fleet = fleet
        self.rnd = random.Random(seed)
        self.rate = 0.0
        self.writes: List[Write] = []
        self.reads: List[Read] = []
        self.failures: List[str] = []
        self.stop_evt = threading.Event()
        self.counter = itertools.count()
        self.key_lock = threading.Lock()  # one writer at a time: writes to a key stay serialized
        self.threads = [threading.Thread(target=self._reader, args=(n,)) for n in fleet.nodes]
        self.threads.append(threading.Thread(target=self._writer))

    def start(self, rate: float) -> "Workload":
        self.rate = rate
        for t in self.threads:
            t.start()
        return self

    def write(self, node: Node, key: str, value: Optional[str]) -> Write:
        line = f"del {key}" if value is None else f"set {key} {value} 600000"
        with self.key_lock:
            t0 = time.monotonic()
            before, res, after = node.cmds(["strategy", line, "strategy"])
            ack = time.monotonic()
            assert "error" not in res, f"{node.name}: `{line}` failed: {res}"
            weakest = max(before["strategy"], after["strategy"], key=STRENGTH.get)
            w = Write(key, value, node.name, t0, ack, BOUND["eager"] if value is None else BOUND[weakest])
            self.writes.append(w)
        return w

    def _writer(self) -> None:
        nodes = self.fleet.nodes
        next_at = time.monotonic()
        try:
            while not self.stop_evt.is_set():
                if self.rate <= 0:
                    time.sleep(0.05)
                    next_at = time.monotonic()
                    continue
                next_at += 1.0 / self.rate
                n = self.rnd.choice(nodes)
                k = self.rnd.choice(KEYS)
                value = None if self.rnd.random() < 0.1 else f"v{next(self.counter)}-{n.host}"
                self.write(n, k, value)
                time.sleep(max(0.0, next_at - time.monotonic()))
        except Exception as e:
            self.failures.append(f"writer: {e}")

    def _reader(self, n: Node) -> None:
        rnd = random.Random(n.name)
        out: List[Read] = []
        try:
            while not self.stop_evt.is_set():
                k = rnd.choice(KEYS)
                t0 = time.monotonic()
                r = n.cmd(f"get {k}")
                out.append(Read(k, r["value"], n.name, t0, time.monotonic()))
                time.sleep(0.01)
        except Exception as e:
            self.failures.append(f"reader {n.name}: {e}")
        self.reads.extend(out)

    def stop(self) -> None:
        self.stop_evt.set()
        for t in self.threads:
            t.join(30)
        assert not self.failures, "\n".join(self.failures)


def test_push_rollback_and_unsigned_push_across_a_mixed_fleet(hosts, redis_server, log_dir, fleet_key):
    key_path, pub = fleet_key
    ns = f"rollout-{random.randrange(1 << 30):x}"
    fleet = Fleet(redis_server, ns, log_dir)
    specs = [("rust", hosts["rust"], "controller", "rust-ctl", []),
             ("python", hosts["python"], "follower", "py-1", []),
             ("rust", hosts["rust"], "follower", "rust-2", []),
             ("python", hosts["python"], "follower", "py-3", []),
             ("js", hosts["js"], "follower", "js-4", []),
             ("go", hosts["go"], "follower", "go-5", [])]
    fleet.start(specs, ["--policy-public-key", pub])
    try:
        run_push_rollback_unsigned(fleet, redis_server, key_path)
    finally:
        fleet.kill()  # after a failure; a no-op after quit


def run_push_rollback_unsigned(fleet: Fleet, redis_server: RedisServer, key_path: str) -> None:
    ns = fleet.ns
    adaptive, fixed = sha_of(policy_file("adaptive")), sha_of(policy_file("fixed"))
    names = [n.name for n in fleet.nodes]
    work = Workload(fleet, ns)
    try:
        # Everyone runs its local adaptive and says so.
        fleet.wait(lambda: all(s and s["sha256"] == adaptive and s["origin"] == "local"
                               for s in fleet.statuses().values()), 5, "status records of the local policy")
        work.start(rate=25)  # between the thresholds (10, 50): batched
        fleet.wait(lambda: all(n.cmd("strategy")["strategy"] == "batched" for n in fleet.nodes), 10,
                   "the fleet reaching batched")

        # Keys every instance has cached, rewritten under batched just before the push: still in
        # their writers' batches (2.5 s) when the swap comes, so only the swap's drain publishes them.
        buffered = [f"buf{i}" for i in range(8)]
        for k in buffered:
            fleet.client.set(f"aci:{ns}:{k}", "old")
        for n in fleet.nodes:
            for k in buffered:
                assert n.cmd(f"get {k}")["value"] == "old"
        for i, k in enumerate(buffered):
            work.write(fleet.nodes[i % len(fleet.nodes)], k, f"new{i}")
        t_written = time.monotonic()
        out = fleet.cli("push", policy_file("fixed"), "--key", key_path, "--config", '{"initial-strategy":"eager"}')
        t_pushed = time.monotonic()
        # the hash from the status records (what `aci policy status` lists), the strategy in force
        # from each instance itself (a status record may be up to a heartbeat old)
        took = fleet.wait(lambda: all(s and s["sha256"] == fixed for s in fleet.statuses().values())
                          and all(n.cmd("strategy")["strategy"] == "eager" for n in fleet.nodes), SWAP_WITHIN_S,
                          "every instance on fixed/eager after the push")
        print(f"\npush: cli {t_pushed - t_written:.2f}s after the buffered writes; every instance on fixed "
              f"and eager {took:.2f}s after it returned\n{out.stdout.strip()}")
        fleet.wait(lambda: all(n.cmd(f"get {k}")["value"] == f"new{i}" for n in fleet.nodes
                               for i, k in enumerate(buffered)), 1.0, "buffered keys published at the swap")
        st = fleet.statuses()
        assert all(s["origin"] == "pushed" and s["name"] == "fixed" for s in st.values()), st

        time.sleep(1.0)  # eager traffic on the pushed policy
        fleet.cli("rollback")
        took = fleet.wait(lambda: all(s and s["sha256"] == adaptive and s["origin"] == "local"
                                      for s in fleet.statuses().values()), SWAP_WITHIN_S,
                          "every instance back on adaptive after the rollback")
        print(f"rollback: every instance on adaptive {took:.2f}s after it returned")

        # An unsigned push: every instance refuses it, says why, and keeps adaptive.
        before = int(fleet.record()["rollout"])
        fleet.cli("push", policy_file("fixed"))
        fleet.wait(lambda: all(s and (s.get("rejected") or {}).get("rollout") == before + 1
                               for s in fleet.statuses().values()), SWAP_WITHIN_S,
                   "every instance refusing the unsigned push")
        for name, s in fleet.statuses().items():
            assert s["rejected"]["reason"].startswith("unsigned"), (name, s)
            assert s["sha256"] == adaptive, (name, s)
        shown = fleet.cli("status").stdout
        for name in names:
            line = [l for l in shown.splitlines() if l.startswith(name)]
            assert line and "unsigned" in line[0], f"{name}'s refusal is not in aci policy status:\n{shown}"
        listed = json.loads(fleet.cli("status", "--json").stdout)
        assert sorted(i["id"] for i in listed["instances"]) == sorted(names), listed
        assert all(i["rejected"]["reason"].startswith("unsigned") for i in listed["instances"]), listed
        print(shown)
        time.sleep(1.0)
        work.rate = 0
        time.sleep(BOUND["batched"] + 0.5)  # every bound but ttl's has passed
    finally:
        work.stop()
    verdict = check(work.writes, work.reads)
    last: Dict[str, Write] = {}
    for w in work.writes:
        last[w.key] = w
    lost = [f"{k}: Redis has {redis_server.get(f'aci:{ns}:{k}')!r}, last acknowledged write {w.value!r}"
            for k, w in last.items() if redis_server.get(f"aci:{ns}:{k}") != w.value]
    diverged = [f"{n.name} reads {k}={got!r}, Redis has {w.value!r} (written under bound {w.bound:.2f}s)"
                for n in fleet.nodes for k, w in last.items()
                if w.bound <= BOUND["batched"] and (got := n.cmd(f"get {k}")["value"]) != w.value]
    stats = {n.name: n.cmd("stats") for n in fleet.nodes}
    fleet.quit()
    print(f"writes {verdict.writes}, reads {verdict.reads}, stale beyond bound {len(verdict.stale)}, "
          f"phantom {len(verdict.phantom)}, lost {len(lost)}, diverged {len(diverged)}")
    assert verdict.ok, "\n".join((verdict.stale + verdict.phantom)[:20])
    assert not lost, "\n".join(lost)
    assert not diverged, "\n".join(diverged[:20])
    assert all(s.get("malformed") == 0 for s in stats.values()), stats


def test_hostile_canary_is_rolled_back_and_never_reaches_the_rest(hosts, redis_server, log_dir, fleet_key):
    key_path, pub = fleet_key
    ns = f"canary-{random.randrange(1 << 30):x}"
    fleet = Fleet(redis_server, ns, log_dir)
    # `--canary 1` takes the lowest instance id: the Rust node "a-canary".
    specs = [("rust", hosts["rust"], "controller", "a-canary", ["--policy-rollback-faults", "1"]),
             ("python", hosts["python"], "follower", "b-python", []),
             ("python", hosts["python"], "follower", "c-python", []),
             ("rust", hosts["rust"], "follower", "d-rust", []),
             ("js", hosts["js"], "follower", "e-js", []),
             ("go", hosts["go"], "follower", "f-go", [])]
    fleet.start(specs, ["--policy-public-key", pub])
    try:
        run_hostile_canary(fleet, key_path)
    finally:
        fleet.kill()


def run_hostile_canary(fleet: Fleet, key_path: str) -> None:
    ns = fleet.ns
    hostile, adaptive = sha_of(policy_file("hostile")), sha_of(policy_file("adaptive"))
    rest = [n.name for n in fleet.nodes if n.name != "a-canary"]
    seen: Dict[str, set] = {n: set() for n in rest}
    stop = threading.Event()

    def sampler() -> None:  # what the rest of the fleet runs, 20 times a second
        while not stop.is_set():
            for name in rest:
                s = fleet.status(name)
                if s:
                    seen[name].add(s["sha256"])
            time.sleep(0.05)

    t = threading.Thread(target=sampler)
    t.start()
    push: Optional[subprocess.Popen] = None
    try:
        fleet.wait(lambda: all(s and s["sha256"] == adaptive for s in fleet.statuses().values()), 5,
                   "status records of the local policy")
        # The operator's push watches the canary and would promote it after a clean period.
        push = subprocess.Popen([aci_bin(), "policy", "push", policy_file("hostile"), "--redis", fleet.redis.url,
                                 "--namespace", ns, "--key", key_path, "--canary", "1", "--canary-secs", "30"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        fleet.wait(lambda: (fleet.status("a-canary") or {}).get("sha256") == hostile, 10,
                   "the canary running the pushed policy")
        rec = fleet.record()
        assert rec["canary"] == "a-canary" and rec["sha256"] == hostile, rec
        canary = fleet.nodes[0]
        canary.cmds(["set hostile:loop x"])  # the hostile policy spins on this key: fuel runs out
        took = fleet.wait(lambda: (fleet.status("a-canary") or {}).get("sha256") == adaptive, 5,
                          "the canary reverting by itself")
        fleet.wait(lambda: fleet.record().get("reason", "").startswith("auto-rollback"), 2,
                   "the fleet record rolled back by the canary")
        rec = fleet.record()
        assert rec["sha256"] == "" and rec["previous"] == hostile and rec["canary"] == "" and rec["by"] == "a-canary", rec
        assert fleet.client.hget(f"aci::{ns}:policy:bad", hostile), "the hash is not marked bad"
        fleet.wait(lambda: all(s and int(s["rollout"]) == int(rec["rollout"]) for s in fleet.statuses().values()),
                   SWAP_WITHIN_S, "everyone acting on the rollback record")
        out, err = push.communicate(timeout=10)
        assert push.returncode == 1 and "replaced before promotion" in err, (push.returncode, out, err)
        time.sleep(0.5)
        print(f"\ncanary reverted {took:.2f}s after its first fault; record: {rec.get('reason')}\n{err.strip()}")
        # The canary still serves, on adaptive.
        canary.cmd("set after ok")
        assert canary.cmd("get after")["value"] == "ok"
    finally:
        stop.set()
        t.join(10)
        if push is not None and push.poll() is None:
            push.kill()
            push.communicate()
    for name in rest:
        assert seen[name] == {adaptive}, f"{name} ran {seen[name]}: the hostile policy reached the rest of the fleet"
    for n in fleet.nodes:
        if n.host != "rust" and n.name in rest:
            assert n.cmd("stats")["policy_swaps"] == 0, f"{n.name} swapped its policy"
    fleet.quit()
