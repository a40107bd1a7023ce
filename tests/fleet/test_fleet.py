"""The mixed-fleet harness: instances of every host that has a node driver (docs/NODE.md) share one
namespace on one real redis-server, with each host as the controller in turn, through write-rate
phases that cross ttl, batched and eager, with deletes. A history checker holds every read to the
bound of the strategy its newer write was made under (docs/WIRE.md), then every instance must
converge on what Redis holds, and Redis must hold every acknowledged write.

Run: python/.venv/bin/python -m pytest tests/fleet -q   (scripts/test.sh does, after building
the drivers). ACI_FLEET_HOSTS=rust,python limits the hosts; rust and python are required.
"""
from __future__ import annotations

import itertools
import os
import random
import tempfile
import threading
import time
from typing import Dict, List

import pytest

from harness import Node, Read, RedisServer, Write, available_hosts, check

TICK_MS = 250
LOCAL_TTL_MS = 3000
BATCH_INTERVAL_S = 2.5
# Slack for a loaded 2-core machine running a dozen processes: scheduling, not protocol.
SLACK_S = 1.0
BOUND = {
    "eager": SLACK_S,
    "batched": BATCH_INTERVAL_S + TICK_MS / 1000 + SLACK_S,
    "ttl": LOCAL_TTL_MS / 1000 + SLACK_S,
}
STRENGTH = {"eager": 0, "batched": 1, "ttl": 2}
KEYS = [f"k{i}" for i in range(16)]
# (fleet writes/s, seconds): up through batched to eager, then down through the hold to ttl.
PHASES = [(2, 3.0), (25, 5.0), (90, 4.0), (2, 9.0)]
REQUIRED = ("rust", "python")


@pytest.fixture(scope="module")
def hosts() -> Dict[str, List[str]]:
    h = available_hosts()
    missing = [r for r in REQUIRED if r not in h and not os.environ.get("ACI_FLEET_HOSTS")]
    assert not missing, f"node drivers missing for {missing}: build them first (scripts/test.sh does)"
    print(f"\nhosts in the fleet: {', '.join(h)}")
    return h


@pytest.fixture(scope="module")
def redis_server():
    r = RedisServer()
    yield r
    r.stop()


@pytest.fixture
def log_dir():
    d = tempfile.mkdtemp(prefix="aci-fleet-")
    yield d


def start_nodes(specs, redis_url: str, namespace: str, log_dir: str) -> List[Node]:
    """specs: (host, argv, role, name). Starts them all at once, then waits for every ready line."""
    nodes = []
    try:
        for host, argv, role, name in specs:
            flags = ["--redis", redis_url, "--namespace", namespace, "--role", role,
                     "--tick-ms", str(TICK_MS), "--local-ttl-ms", str(LOCAL_TTL_MS)]
            nodes.append(Node(host, argv, flags, log_dir, name))
        for n in nodes:
            ready = n.wait_ready(timeout=90)
            assert ready.get("protocol") == 2, f"{n.name} does not speak protocol 2: {ready}"
            assert ready.get("host") == n.host, f"{n.name} says it is {ready.get('host')}"
    except BaseException:
        for n in nodes:
            n.kill()
        raise
    return nodes


def stop_nodes(nodes: List[Node]) -> None:
    errors = []
    for n in nodes:
        try:
            n.quit()
        except Exception as e:  # keep stopping the others
            errors.append(str(e))
            n.kill()
    assert not errors, "\n".join(errors)


def run_round(hosts: Dict[str, List[str]], controller: str, redis_server: RedisServer, log_dir: str):
    ns = f"fleet-{controller}-{random.randrange(1 << 30):x}"
    specs = [(controller, hosts[controller], "controller", f"{controller}-controller")]
    specs += [(h, argv, "follower", f"{h}-follower") for h, argv in hosts.items()]
    nodes = start_nodes(specs, redis_server.url, ns, log_dir)
    ctl = nodes[0]
    writes: List[Write] = []
    reads: List[Read] = []
    seen = set()
    stop = threading.Event()
    failures: List[str] = []

    def reader(n: Node) -> None:
        rnd = random.Random(n.name)
        out: List[Read] = []
        try:
            while not stop.is_set():
                k = rnd.choice(KEYS)
                t0 = time.monotonic()
                r = n.cmd(f"get {k}")
                out.append(Read(k, r["value"], n.name, t0, time.monotonic()))
                time.sleep(0.005)
        except Exception as e:
            failures.append(f"reader {n.name}: {e}")
        reads.extend(out)

    def sampler() -> None:
        try:
            while not stop.is_set():
                seen.add(ctl.cmd("strategy")["strategy"])
                time.sleep(0.2)
        except Exception as e:
            failures.append(f"sampler: {e}")

    threads = [threading.Thread(target=reader, args=(n,)) for n in nodes]
    threads.append(threading.Thread(target=sampler))
    for t in threads:
        t.start()
    rnd = random.Random(ns)
    counter = itertools.count()
    try:
        time.sleep(1.5)  # followers hear the controller's first heartbeat
        for rate, secs in PHASES:
            t_end = time.monotonic() + secs
            next_at = time.monotonic()
            while time.monotonic() < t_end and not failures:
                next_at += 1.0 / rate
                n = rnd.choice(nodes)
                k = rnd.choice(KEYS)
                if rnd.random() < 0.1:
                    line, value = f"del {k}", None
                else:
                    value = f"v{next(counter)}-{n.host}"
                    line = f"set {k} {value} 600000"
                t0 = time.monotonic()
                before, res, after = n.cmds(["strategy", line, "strategy"])
                ack = time.monotonic()
                assert "error" not in res, f"{n.name}: `{line}` failed: {res}"
                weakest = max(before["strategy"], after["strategy"], key=STRENGTH.get)
                bound = BOUND["eager"] if value is None else BOUND[weakest]  # a delete is announced at once
                writes.append(Write(k, value, n.name, t0, ack, bound))
                time.sleep(max(0.0, next_at - time.monotonic()))
        # Every bound has passed: every instance must now read what Redis holds.
        time.sleep(max(BOUND.values()) + 0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, "\n".join(failures)

    verdict = check(writes, reads)
    last = {}
    for w in writes:
        last[w.key] = w.value
    lost = [f"{k}: Redis has {redis_server.get(f'aci:{ns}:{k}')!r}, last acknowledged write {v!r}"
            for k, v in last.items() if redis_server.get(f"aci:{ns}:{k}") != v]
    diverged = []
    for n in nodes:
        for k, v in last.items():
            got = n.cmd(f"get {k}")["value"]
            if got != v:
                diverged.append(f"{n.name} reads {k}={got!r}, Redis has {v!r}")
    stats = {n.name: n.cmd("stats") for n in nodes}
    stop_nodes(nodes)

    print(f"\n[{controller} controls] nodes {len(nodes)}, writes {verdict.writes}, reads {verdict.reads}, "
          f"strategies seen {sorted(seen, key=STRENGTH.get)}, stale beyond bound {len(verdict.stale)}, "
          f"phantom {len(verdict.phantom)}, lost {len(lost)}, diverged {len(diverged)}, "
          f"latest change seen within bounds {verdict.max_stale_within_bound:.2f}s")
    for name, s in stats.items():
        print(f"  {name}: hits {s.get('l1_hits')}/{s.get('reads')}, sent {s.get('messages_sent')}, "
              f"received {s.get('messages_received')}, gaps {s.get('gaps')}, malformed {s.get('malformed')}")
    assert verdict.ok, "\n".join((verdict.stale + verdict.phantom)[:20])
    assert not lost, "\n".join(lost)
    assert not diverged, "\n".join(diverged[:20])
    assert seen == {"ttl", "batched", "eager"}, f"the phases did not cross every strategy: {seen}"
    assert all(s.get("malformed") == 0 for s in stats.values()), "a host sent a message another refused"
    return verdict


def test_mixed_fleet_each_host_controls_in_turn(hosts, redis_server, log_dir):
    for controller in hosts:
        run_round(hosts, controller, redis_server, log_dir)


def idle_deliveries(hosts, redis_server, log_dir, n: int, seconds: float = 5.0) -> float:
    ns = f"idle-{n}-{random.randrange(1 << 30):x}"
    names = list(hosts)
    specs = [(names[i % len(names)], hosts[names[i % len(names)]], "auto", f"idle{n}-{i}-{names[i % len(names)]}")
             for i in range(n)]
    nodes = start_nodes(specs, redis_server.url, ns, log_dir)
    try:
        time.sleep(2.0)  # the lease settles, followers hear the controller
        before = [n_.cmd("stats")["pubsub_received"] for n_ in nodes]
        t0 = time.monotonic()
        time.sleep(seconds)
        after = [n_.cmd("stats")["pubsub_received"] for n_ in nodes]
        elapsed = time.monotonic() - t0
        controllers = sum(1 for n_ in nodes if n_.cmd("stats")["is_controller"])
    finally:
        stop_nodes(nodes)
    assert controllers == 1, f"{controllers} controllers in an idle fleet of {n}"
    return sum(a - b for a, b in zip(after, before)) / len(nodes) / elapsed


def test_idle_protocol_cost_does_not_grow_with_the_fleet(hosts, redis_server, log_dir):
    small = idle_deliveries(hosts, redis_server, log_dir, 5)
    large = idle_deliveries(hosts, redis_server, log_dir, 40)
    print(f"\nidle Pub/Sub deliveries per instance per second: N=5 {small:.2f}, N=40 {large:.2f} "
          f"(ratio {large / small:.2f}; v1 grew linearly with N)")
    assert small > 0, "no deliveries at all: liveness heartbeats are missing"
    assert large <= 1.5 * small
