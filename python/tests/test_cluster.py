"""The cache on a real local Redis Cluster (6 nodes, 3 masters + 3 replicas; Valkey too when
ACI_REDIS_SERVER points at valkey-server): sharded Pub/Sub, keys over every shard, the lease, loss
detection on resubscribe, and a master killed under load with a history check."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Dict, List, Tuple

import pytest
import redis
from redis.crc import key_slot

from aci_cache import AdaptiveCache, AsyncAdaptiveCache
from conftest import LocalCluster, wait_for


@pytest.fixture
def make_ccache(redis_cluster):
    made: List[AdaptiveCache] = []
    clients: List[Any] = []

    def make(**cfg):
        c = redis_cluster.client()
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


def keys_on_every_shard(cluster: LocalCluster, n: int = 30) -> List[str]:
    keys = [f"k{i}" for i in range(n)]
    c = cluster.client()
    try:
        shards = {c.get_node_from_key(f"aci:x:{k}").port for k in keys}
    finally:
        c.close()
    assert len(shards) == 3
    return keys


def test_eager_invalidates_across_shards_over_sharded_pubsub(redis_cluster, make_ccache, ns):
    a = make_ccache(namespace=ns, strategy="eager")
    b = make_ccache(namespace=ns, strategy="eager")
    keys = keys_on_every_shard(redis_cluster)
    for k in keys:
        a.set(k, "v1")
    assert [b.get(k) for k in keys] == [b"v1"] * len(keys)
    hits = b.stats["cache_hits"]
    assert [b.get(k) for k in keys] == [b"v1"] * len(keys)
    assert b.stats["cache_hits"] == hits + len(keys)
    for k in keys:
        a.set(k, "v2")
    assert wait_for(lambda: b.stats["invalidations_applied"] >= len(keys))
    assert [b.get(k) for k in keys] == [b"v2"] * len(keys)
    assert b.stats["gaps"] == 0 and b.stats["topology_ok"]

    # The channels are shard channels on one master (hash tag {aci:<ns>}); nothing on classic Pub/Sub.
    chan = f"{{aci:{ns}}}:invalidation"
    owner = redis_cluster.node_client(redis_cluster.master_of(chan))
    try:
        assert chan in owner.execute_command("PUBSUB", "SHARDCHANNELS", f"{{aci:{ns}}}*")
        assert owner.execute_command("PUBSUB", "SHARDNUMSUB", chan)[1] == 2
        # the rollout channel (WIRE.md 9) too, in the same slot
        assert owner.execute_command("PUBSUB", "SHARDNUMSUB", f"{{aci:{ns}}}:policy")[1] == 2
    finally:
        owner.close()
    for port in redis_cluster.ports:
        n = redis_cluster.node_client(port)
        try:
            assert not [c for c in n.execute_command("PUBSUB", "CHANNELS", "*") if ns in c]
        finally:
            n.close()


def test_batched_and_ttl_on_the_cluster(redis_cluster, make_ccache, ns):
    a = make_ccache(namespace=ns, strategy="batched", batch_interval=0.3)
    b = make_ccache(namespace=ns, strategy="batched", batch_interval=0.3)
    keys = keys_on_every_shard(redis_cluster, 12)
    for k in keys:
        a.set(k, "v1")
    assert [b.get(k) for k in keys] == [b"v1"] * len(keys)
    for k in keys:
        a.set(k, "v2")
    assert wait_for(lambda: b.stats["invalidations_applied"] >= len(keys), timeout=3)
    assert [b.get(k) for k in keys] == [b"v2"] * len(keys)

    ns2 = ns + "t"
    c = make_ccache(namespace=ns2, strategy="ttl", local_ttl=1.0)
    d = make_ccache(namespace=ns2, strategy="ttl", local_ttl=1.0)
    c.set("k", "v1")
    assert d.get("k") == b"v1"
    c.set("k", "v2")
    time.sleep(0.1)
    assert d.get("k") == b"v1"  # stale, bounded by local_ttl: ttl publishes nothing
    assert d.stats["invalidations_applied"] == 0
    assert wait_for(lambda: d.get("k") == b"v2", timeout=2)


def test_flush_and_delete_reach_every_shard(redis_cluster, make_ccache, ns):
    a = make_ccache(namespace=ns, strategy="ttl")
    b = make_ccache(namespace=ns, strategy="ttl")
    keys = keys_on_every_shard(redis_cluster, 12)
    for k in keys:
        a.set(k, "v")
    assert [b.get(k) for k in keys] == [b"v"] * len(keys)
    assert a.delete(keys[0]) == 1
    assert wait_for(lambda: b.stats["invalidations_applied"] >= 1)
    assert b.get(keys[0]) is None
    a.flush()
    raw = redis_cluster.client()
    try:
        assert [raw.get(f"aci:{ns}:{k}") for k in keys] == [None] * len(keys)
    finally:
        raw.close()
    assert wait_for(lambda: all(b.get(k) is None for k in keys), timeout=2)


def test_lease_election_on_the_cluster(make_ccache, ns):
    caches = [make_ccache(namespace=ns, controller_interval=0.8) for _ in range(3)]
    assert wait_for(lambda: sum(c.is_controller for c in caches) == 1, timeout=3)
    leader = next(c for c in caches if c.is_controller)
    rest = [c for c in caches if c is not leader]
    leader.stop()
    assert wait_for(lambda: sum(c.is_controller for c in rest) == 1, timeout=3)


def test_resubscribe_after_a_killed_subscription_flushes(redis_cluster, make_ccache, ns):
    a = make_ccache(namespace=ns, strategy="eager")
    b = make_ccache(namespace=ns, strategy="eager")
    a.set("k", "v1")
    assert b.get("k") == b"v1"
    owner = redis_cluster.node_client(redis_cluster.master_of(f"{{aci:{ns}}}:invalidation"))
    try:
        assert owner.client_kill_filter(_type="pubsub") >= 2
    finally:
        owner.close()
    raw = redis_cluster.client()
    try:
        raw.set(f"aci:{ns}:k", "v2")  # a write no message announces
    finally:
        raw.close()
    assert wait_for(lambda: b.stats["link_up"] and b.stats["resubscribes"] >= 1, timeout=5)
    assert b.get("k") == b"v2"  # L1 was flushed on resubscribe
    a.set("k", "v3")
    assert wait_for(lambda: b.get("k") == b"v3", timeout=2)


def _move_slot(cluster: LocalCluster, slot: int, src: int, dst: int) -> None:
    """Moves an empty slot from master src to master dst (what `--cluster reshard` does for it)."""
    s, d = cluster.node_client(src), cluster.node_client(dst)
    try:
        sid, did = s.execute_command("CLUSTER", "MYID"), d.execute_command("CLUSTER", "MYID")
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", sid)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", did)
        assert s.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        d.execute_command("CLUSTER", "SETSLOT", slot, "NODE", did)
        s.execute_command("CLUSTER", "SETSLOT", slot, "NODE", did)
        for port in cluster.masters():
            if port not in (src, dst):
                m = cluster.node_client(port)
                try:
                    m.execute_command("CLUSTER", "SETSLOT", slot, "NODE", did)
                finally:
                    m.close()
    finally:
        s.close()
        d.close()


def test_channel_slot_migrated_resubscribes_and_flushes(redis_cluster, make_ccache, ns):
    # Both servers end a shard subscription whose slot leaves the node (SUNSUBSCRIBE pushed to
    # the subscriber); the cache resubscribes on the new owner and flushes L1 (new slot map).
    a = make_ccache(namespace=ns, strategy="eager")
    b = make_ccache(namespace=ns, strategy="eager")
    a.set("k", "v1")
    assert b.get("k") == b"v1"
    chan = f"{{aci:{ns}}}:invalidation"
    slot = key_slot(chan.encode())
    src = redis_cluster.master_of(chan)
    dst = next(p for p in redis_cluster.masters() if p != src)
    resubs = b.stats["resubscribes"]
    _move_slot(redis_cluster, slot, src, dst)
    assert wait_for(lambda: b.stats["resubscribes"] > resubs and b.stats["link_up"], timeout=8)
    assert wait_for(lambda: b.stats["topology_changes"] >= 1 and b.stats["topology_ok"], timeout=3)
    owner = redis_cluster.node_client(dst)
    try:
        assert wait_for(lambda: owner.execute_command("PUBSUB", "SHARDNUMSUB", chan)[1] == 2, timeout=8)
    finally:
        owner.close()
    a.set("k", "v2")
    assert wait_for(lambda: b.get("k") == b"v2", timeout=2)
    assert b.stats["invalidations_applied"] >= 1


def test_asyncio_twin_on_the_cluster(redis_cluster, ns):
    from redis.asyncio.cluster import RedisCluster as AsyncCluster

    async def main():
        sync = AdaptiveCache(redis_cluster.client(), namespace=ns, strategy="eager")
        client = AsyncCluster(host="127.0.0.1", port=redis_cluster.ports[0])
        try:
            async with AsyncAdaptiveCache(client, namespace=ns, strategy="eager") as b:
                keys = keys_on_every_shard(redis_cluster, 12)
                for k in keys:
                    sync.set(k, "v1")
                assert [await b.get(k) for k in keys] == [b"v1"] * len(keys)
                for k in keys:
                    sync.set(k, "v2")
                deadline = time.monotonic() + 3
                while b.stats["invalidations_applied"] < len(keys) and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert [await b.get(k) for k in keys] == [b"v2"] * len(keys)
                await b.set("own", "x")
                assert sync.get("own") == b"x"
                assert b.stats["topology_ok"] and b.stats["link_up"]
                # its subscription killed: it resubscribes (slot map refreshed) and flushes L1
                assert await b.get(keys[0]) == b"v2" and b.stats["l1_entries"] > 0
                owner = redis_cluster.node_client(redis_cluster.master_of(f"{{aci:{ns}}}:invalidation"))
                try:
                    assert owner.client_kill_filter(_type="pubsub") >= 2
                finally:
                    owner.close()
                deadline = time.monotonic() + 5
                while not (b.stats["resubscribes"] >= 1 and b.stats["link_up"]) and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert b.stats["resubscribes"] >= 1 and b.stats["link_up"]
                assert b.stats["l1_entries"] == 0
                sync.set(keys[0], "v3")
                deadline = time.monotonic() + 2
                while await b.get(keys[0]) != b"v3" and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert await b.get(keys[0]) == b"v3"
        finally:
            sync.stop()
            await client.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("victim_kind", ["channels-master", "data-master"])
def test_a_master_killed_under_load_serves_no_stale_or_lost_value(own_cluster, ns, victim_kind):
    """Eager writer + readers over keys on every shard; a master is killed (SIGKILL) after its
    replica fell behind, the replica promoted. ``channels-master``: the master holding the fleet
    channels (and a third of the keys), so the subscriptions drop too; ``data-master``: another
    one, which only the topology watch notices. History check:
    - stale: a read that began more than BOUND after a write of a greater value was acknowledged
      returned an older one (keys whose master died are judged only on writes made after the
      failover: what their old master acknowledged may be gone);
    - lost: once the cluster is healthy again + BOUND, with writes paused, a read returned a
      value that is not what Redis holds (our L1 serving a write Redis lost)."""
    BOUND = 1.0
    cl = own_cluster
    chan = f"{{aci:{ns}}}:invalidation"
    victim = cl.master_of(chan)
    if victim_kind == "data-master":
        victim = next(p for p in cl.masters() if p != victim)
    # A long local_ttl: what keeps L1 honest through the failover must be the cache's own
    # detection, not entries ageing out.
    cfg: Dict[str, Any] = dict(namespace=ns, strategy="eager", command_timeout=0.5, liveness_timeout=2.0,
                               local_ttl=60.0, default_ttl=120)
    a = AdaptiveCache(cl.client(), **cfg)
    b = AdaptiveCache(cl.client(), **cfg)
    keys = [f"k{i}" for i in range(24)]
    on_victim = {k for k in keys if cl.master_of(f"aci:{ns}:{k}") == victim}
    assert on_victim and len(on_victim) < len(keys)
    acked: List[Tuple[float, str, int]] = []  # (ack time, key, value)
    reads: List[Tuple[float, float, str, Any, str]] = []  # (start, end, key, value, reader)
    stop = threading.Event()
    pause = threading.Event()
    seq = [0]

    def writer():
        i = 0
        while not stop.is_set():
            if pause.is_set():
                time.sleep(0.01)
                continue
            k = keys[i % len(keys)]
            i += 1
            seq[0] += 1
            v = seq[0]
            try:
                a.set(k, str(v))
                acked.append((time.monotonic(), k, v))
            except Exception:
                time.sleep(0.02)

    failures: List[BaseException] = []

    def reader(cache, name):
        try:
            read_loop(cache, name)
        except BaseException as e:  # surfaces in the test, not as a warning
            failures.append(e)

    def read_loop(cache, name):
        i = 0
        while not stop.is_set():
            k = keys[(i * 7) % len(keys)]
            i += 1
            t0 = time.monotonic()
            try:
                v = cache.get(k)
            except Exception:
                time.sleep(0.02)
                continue
            assert v is None or isinstance(v, bytes), v  # an error is raised, never returned
            reads.append((t0, time.monotonic(), k, None if v is None else int(v), name))
            time.sleep(0.0002)  # leave the GIL to the writer; thousands of reads a second are plenty

    threads = [threading.Thread(target=writer), threading.Thread(target=reader, args=(b, "b")),
               threading.Thread(target=reader, args=(a, "a"))]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        # Make the kill lose acknowledged writes, as asynchronous replication does under load:
        # the replica's link to its master is cut and cannot come back (a wrong masterauth fails
        # its handshake), the master acknowledges writes for 0.3 s more, then dies.
        for rp in cl.replicas_of(victim):
            rc = cl.node_client(rp)
            try:
                rc.config_set("masterauth", "not-the-password")
                rc.client_kill_filter(_type="master")
            finally:
                rc.close()
        time.sleep(0.3)
        # Writes stop at the kill until the truth is read below: a write after the failover
        # would overwrite what the kill lost.
        pause.set()
        killed_at = time.monotonic()
        cl.kill(victim)
        cl.wait_ok(timeout=30)
        healthy_at = time.monotonic()
        assert wait_for(lambda: a.stats["topology_ok"] and b.stats["link_up"] and b.stats["topology_ok"], timeout=10)
        recovered_at = time.monotonic()
        # phase "lost": writes still paused; every read from BOUND on must return what Redis holds
        quiet_from = time.monotonic() + BOUND
        time.sleep(BOUND)
        raw = cl.client()
        try:
            truth = {k: (lambda v: None if v is None else int(v))(raw.get(f"aci:{ns}:{k}")) for k in keys}
        finally:
            raw.close()
        time.sleep(1.0)
        quiet_to = time.monotonic()
        pause.clear()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        a.stop()
        b.stop()

    lost = [r for r in reads if quiet_from <= r[0] and r[1] <= quiet_to and r[3] != truth[r[2]]]
    # per key: ack times and the running max of values acknowledged (all, and after the failover)
    import bisect
    hist: Dict[str, Tuple[List[float], List[int]]] = {}
    for t, k, v in acked:
        if k in on_victim and t <= healthy_at:
            continue  # its old master may have lost it
        ts, mx = hist.setdefault(k, ([], []))
        ts.append(t)
        mx.append(max(v, mx[-1]) if mx else v)
    stale = []
    for start, _end, k, v, who in reads:
        ts, mx = hist.get(k, ([], []))
        i = bisect.bisect_left(ts, start - BOUND)
        if i and (v is None or v < mx[i - 1]):
            stale.append((round(start - killed_at, 3), k, v, mx[i - 1], who))
    last_before_kill: Dict[str, int] = {}
    for t, k, v in acked:
        if t < killed_at:
            last_before_kill[k] = v
    lost_writes = [k for k in on_victim if k in last_before_kill and (truth[k] or 0) < last_before_kill[k]]
    print(f"\n{victim_kind} killed under eager load: {len(acked)} writes, {len(reads)} reads, acknowledged writes "
          f"Redis lost on {len(lost_writes)} of {len(on_victim)} keys, stale beyond bound "
          f"{len(stale)}, lost values served {len(lost)}, failover {healthy_at - killed_at:.2f} s, caches back "
          f"{recovered_at - killed_at:.2f} s after the kill, topology suspensions a={a.stats['topology_suspensions']} "
          f"b={b.stats['topology_suspensions']}")
    assert not failures, failures[:3]
    assert len(acked) > 100 and len(reads) > 100
    assert [r for r in reads if quiet_from <= r[0] and r[1] <= quiet_to], "no read in the quiet window"
    assert stale == [], stale[:10]
    assert lost == [], lost[:10]
    if victim_kind == "channels-master":
        assert b.stats["resubscribes"] >= 1  # its subscription was on the killed master
    assert b.stats["topology_suspensions"] >= 1 and a.stats["topology_suspensions"] >= 1
    assert lost_writes, "the kill lost no acknowledged write: the test did not exercise the failover hazard"


def test_a_master_restarted_empty_is_noticed_within_the_node_timeout(own_cluster, ns):
    """A master killed and restarted at once comes back empty (no persistence) before anyone
    flags it failing; only the reset of a connection to it shows it. L1 must not keep serving
    what it held from that master."""
    cl = own_cluster
    chan = f"{{aci:{ns}}}:invalidation"
    victim = next(p for p in cl.masters() if p != cl.master_of(chan))
    cfg: Dict[str, Any] = dict(namespace=ns, strategy="eager", local_ttl=60.0, default_ttl=120)
    a = AdaptiveCache(cl.client(), **cfg)
    b = AdaptiveCache(cl.client(), **cfg)
    try:
        keys = [f"k{i}" for i in range(24)]
        on_victim = [k for k in keys if cl.master_of(f"aci:{ns}:{k}") == victim]
        assert on_victim
        for k in keys:
            a.set(k, "v")
        assert [b.get(k) for k in keys] == [b"v"] * len(keys)
        hits = b.stats["cache_hits"]
        assert [b.get(k) for k in keys] == [b"v"] * len(keys) and b.stats["cache_hits"] == hits + len(keys)
        restarted_at = time.monotonic()
        cl.restart(victim)
        # what the restarted master lost must stop being served within a couple of ticks
        def gone() -> bool:
            try:
                return all(c.get(k) is None for c in (a, b) for k in on_victim)
            except redis.RedisError:  # the node is not back yet: no value served either
                return False

        assert wait_for(gone, timeout=5, interval=0.005)
        took = time.monotonic() - restarted_at
        others = [k for k in keys if k not in on_victim]
        assert [b.get(k) for k in others] == [b"v"] * len(others)
        assert b.stats["topology_suspensions"] >= 1
        print(f"\nmaster restarted empty: {len(on_victim)} keys lost by Redis, no longer served after {took:.2f} s")
    finally:
        a.stop()
        b.stop()


def test_python_and_rust_hosts_share_a_fleet_on_the_cluster(redis_cluster, make_ccache, ns):
    """`aci node --cluster` (the Rust host) and this package in one namespace: the same shard
    channels (WIRE.md 10.1), eager invalidations both ways, keys on every shard."""
    from test_mixed_fleet import RustNode

    py = make_ccache(namespace=ns, strategy="eager")
    rust = RustNode(f"redis://127.0.0.1:{redis_cluster.ports[0]}", "--namespace", ns, "--strategy", "eager",
                    flag="--cluster")
    try:
        keys = keys_on_every_shard(redis_cluster, 12)
        for k in keys:
            py.set(k, "p1")
        assert [rust.get(k) for k in keys] == ["p1"] * len(keys)  # now in the Rust L1
        for k in keys:
            py.set(k, "p2")
        assert wait_for(lambda: all(rust.get(k) == "p2" for k in keys), timeout=3)
        for k in keys:
            assert rust.cmd(f"set {k} r1").get("ok", True)
        assert [py.get(k) for k in keys] == [b"r1"] * len(keys)
        for k in keys:
            rust.cmd(f"set {k} r2")
        assert wait_for(lambda: all(py.get(k) == b"r2" for k in keys), timeout=3)
        assert py.stats["gaps"] == 0
    finally:
        rust.close()


def test_a_slow_write_is_not_taken_for_a_lost_invalidation(redis_cluster, make_ccache, ns):
    """On a cluster an eager write is two round trips: the SET on the key's shard, then the
    SPUBLISH on the namespace's. While the SET hangs (here its master pauses writes; in
    production a redirect during a slot migration, a slow node), the writer's ticks go on, and a
    `mark` or `strategy_update` naming the write's seq would reach receivers before the
    invalidation: past the reorder allowance (250 ms) they would flush L1 for a loss that is not
    one. Positions name only answered seqs (docs/WIRE.md 4)."""
    c = redis_cluster.client()
    try:
        home = c.get_node_from_key(f"{{aci:{ns}}}:invalidation").port
        k, other = [f"k{i}" for i in range(200) if c.get_node_from_key(f"aci:{ns}:k{i}").port != home][:2]
        key_master = c.get_node_from_key(f"aci:{ns}:{k}").port
    finally:
        c.close()
    a = make_ccache(namespace=ns, strategy="eager", is_controller=True)
    b = make_ccache(namespace=ns, is_controller=False)
    a.set(k, "v0")
    a.set(other, "o")
    assert wait_for(lambda: b.stats["invalidations_applied"] >= 2)
    assert (b.get(k), b.get(other)) == (b"v0", b"o")
    time.sleep(0.8)  # the writer's mark for these goes out: from here on it has nothing unannounced
    before = b.stats
    node = redis_cluster.node_client(key_master)
    try:
        node.execute_command("CLIENT", "PAUSE", 1200, "WRITE")
    finally:
        node.close()
    t0 = time.monotonic()
    a.set(k, "v1")
    took = time.monotonic() - t0
    assert took >= 0.9, f"the SET was not held ({took:.3f} s): the scenario tested nothing"
    # ticks of both sides, and the receiver's reorder allowance, several times over
    assert wait_for(lambda: b.stats["invalidations_applied"] > before["invalidations_applied"], timeout=2)
    time.sleep(0.6)
    after = b.stats
    assert after["gaps"] == before["gaps"], f"a write held {took:.3f} s was taken for a loss"
    assert b.get(k) == b"v1"
    hits = b.stats["cache_hits"]
    assert b.get(other) == b"o" and b.stats["cache_hits"] == hits + 1  # L1 was not flushed


# ----------------------------------------------------------------------------------------------
# The pure parts: how command lists are cut per slot, and how CLUSTER NODES is read.

def test_commands_are_grouped_by_slot_in_order():
    from aci_cache import _cluster

    ch = "{aci:shop}:invalidation"
    cmds = [("SPUBLISH", ch, "flush"), ("SET", "aci:shop:a", "1", "EX", 10), ("SPUBLISH", ch, "inv"),
            ("GET", "aci:shop:b"), ("PTTL", "aci:shop:b"), ("PING",), ("PING",)]
    runs = _cluster.runs(cmds)
    assert [len(r) for r in runs] == [1, 1, 1, 2, 1, 1]  # SET never shares a pipeline with SPUBLISH
    assert [c for r in runs for c in r] == cmds  # order kept
    assert _cluster.slot_of(("SPUBLISH", ch, "x")) == key_slot(b"aci:shop")
    assert _cluster.slot_of(("EVAL", "script", 1, "aci::shop:controller", "id")) == key_slot(b"aci::shop:controller")


NODES = """\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master - 0 1426238318243 3 connected 10923-16383 [10924->-e7d1]
6ec2 127.0.0.1:30005@40005 slave 67ed 0 1426238316232 5 connected
824f 127.0.0.1:30006@40006 slave 292f 0 1426238317741 6 connected
e7d1 127.0.0.1:30001@40001,host-a myself,master - 0 0 1 connected 0-5460
"""


def test_topology_reads_failing_masters_and_new_epochs():
    from aci_cache import _cluster

    healthy, fp = _cluster.topology(NODES.encode())
    assert healthy and [(s, i, e) for s, i, e in fp] == [
        ("0-5460", "e7d1", "1"), ("10923-16383", "292f", "3"), ("5461-10922", "67ed", "2")]
    # a master suspected (PFAIL) or failed, or its link down: not healthy
    for flags, link in (("master,fail?", "connected"), ("master,fail", "connected"), ("master", "disconnected")):
        text = NODES.replace("67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected",
                             f"67ed 127.0.0.1:30002@40002 {flags} - 0 1426238316232 2 {link}")
        assert _cluster.topology(text)[0] is False, (flags, link)
    # a failed replica, or a failed master that owns no slot any more, does not matter
    text = NODES.replace("6ec2 127.0.0.1:30005@40005 slave", "6ec2 127.0.0.1:30005@40005 slave,fail")
    assert _cluster.topology(text) == (True, fp)
    # failover: the replica owns the slots with a new epoch -> another fingerprint
    text = (NODES.replace("67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922",
                          "67ed 127.0.0.1:30002@40002 master,fail - 0 1426238316232 2 disconnected")
            .replace("6ec2 127.0.0.1:30005@40005 slave 67ed 0 1426238316232 5 connected",
                     "6ec2 127.0.0.1:30005@40005 master - 0 1426238316232 7 connected 5461-10922"))
    healthy2, fp2 = _cluster.topology(text)
    assert healthy2 and fp2 != fp
