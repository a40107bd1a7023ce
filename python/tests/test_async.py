"""AsyncAdaptiveCache over redis.asyncio, alone and in a fleet with the thread-based cache."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
import redis.asyncio as aredis

from aci_cache import AdaptiveCache, AsyncAdaptiveCache, ConfigValueError


def run(coro):
    return asyncio.run(coro)


def test_async_basic(redis_server, ns):
    async def main():
        client = aredis.Redis(host=redis_server.host, port=redis_server.port)
        async with AsyncAdaptiveCache(client, namespace=ns) as c:
            assert len(c.instance_id) == 12
            assert c.stats["link_up"]
            assert await c.get("k") is None
            assert await c.set("k", "v") is True
            assert await c.get("k") == b"v"
            assert c.stats["cache_hits"] == 1
            assert await client.get(f"aci:{ns}:k") == b"v"
            assert await c.delete("k") == 1
            assert await c.get("k") is None
            assert c.strategy in ("ttl", "batched", "eager")
            assert c.role == "controller"  # alone: the auto role takes the lease
            tasks = set(asyncio.all_tasks())
        left = [t for t in asyncio.all_tasks() if c.instance_id in t.get_name()]
        assert not left
        await client.aclose()

    run(main())


def test_async_validation():
    with pytest.raises(ConfigValueError) as ei:
        AsyncAdaptiveCache(aredis.Redis(), low_threshold=80)
    assert ei.value.field == "low_threshold"


def test_async_and_sync_instances_invalidate_each_other(redis_server, ns):
    sync_client = redis.Redis(host=redis_server.host, port=redis_server.port)
    s = AdaptiveCache(sync_client, namespace=ns, strategy="eager")

    async def main():
        client = aredis.Redis(host=redis_server.host, port=redis_server.port)
        async with AsyncAdaptiveCache(client, namespace=ns, strategy="eager") as a:
            switches = []
            a.on_switch(lambda x, y: switches.append((x, y)))
            await a.set("k", "a1")
            assert s.get("k") == b"a1"
            await a.set("k", "a2")
            deadline = time.monotonic() + 3
            while s.stats["invalidations_applied"] < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert s.get("k") == b"a2"
            assert await a.get("k") == b"a2"
            s.set("k", "s1")
            deadline = time.monotonic() + 3
            while a.stats["invalidations_applied"] < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert await a.get("k") == b"s1"
            # malformed input on the async Pub/Sub path is counted, never raised
            await client.publish(f"aci:{ns}:invalidation", "{nope")
            deadline = time.monotonic() + 3
            while a.stats["malformed"] < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert a.stats["malformed_by_kind"] == {"not-json": 1}
            assert a.stats["gaps"] == 0 and s.stats["gaps"] == 0
        await client.aclose()

    try:
        run(main())
    finally:
        s.stop()
        sync_client.close()


def test_async_batched_and_flush(redis_server, ns):
    async def main():
        c1 = aredis.Redis(host=redis_server.host, port=redis_server.port)
        c2 = aredis.Redis(host=redis_server.host, port=redis_server.port)
        async with AsyncAdaptiveCache(c1, namespace=ns, strategy="batched", batch_interval=30) as a, \
                AsyncAdaptiveCache(c2, namespace=ns, strategy="batched", batch_interval=30) as b:
            await a.set("k", "1")
            assert await b.get("k") == b"1"
            await a.set("k", "2")
            await asyncio.sleep(0.35)  # one tick: the key is in the policy's batch
            assert await b.get("k") == b"1"
            # flush(): the namespace's data is gone, and b's L1 drops it at once
            await a.flush()
            deadline = time.monotonic() + 2
            while b.stats["l1_entries"] and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert await b.get("k") is None
            await a.set("k", "3")
            assert await b.get("k") == b"3"
            await a.set("k", "4")
            await a.stop()  # the final publish carries the pending batch
            # delivery is asynchronous (slow on a loaded box); 3 s stays well under b's 5 s local TTL
            # for "3", so only that publish makes the read below see "4"
            deadline = time.monotonic() + 3
            while b.stats["invalidations_applied"] < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert await b.get("k") == b"4"
        await c1.aclose()
        await c2.aclose()

    run(main())


def test_async_pubsub_reconnects(redis_server, ns):
    async def main():
        client = aredis.Redis(host=redis_server.host, port=redis_server.port)
        async with AsyncAdaptiveCache(client, namespace=ns) as c:
            await c.set("k", "v1")
            await client.client_kill_filter(_type="pubsub")
            await client.set(f"aci:{ns}:k", "v2")
            deadline = time.monotonic() + 5
            while not (c.stats["resubscribes"] >= 1 and c.stats["link_up"]) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert c.stats["resubscribes"] >= 1 and c.stats["link_up"]
            assert await c.get("k") == b"v2"
        await client.aclose()

    run(main())


def test_async_cancelled_eager_write_is_followed_by_a_flush(redis_server, ns):
    """WIRE.md 4: an eager write abandoned mid-flight (its task cancelled while its SET + PUBLISH
    wait on a server that pauses writes) may or may not have reached Redis: it counts as a failed
    publish, so the next invalidation goes after a flush; and it is not left in flight, so the
    writer's position moves on (a mark names the last seq)."""
    r = redis.Redis(host=redis_server.host, port=redis_server.port)
    ps = r.pubsub()
    ps.subscribe(f"aci:{ns}:invalidation")
    ps.get_message(timeout=2)

    async def main():
        client = aredis.Redis(host=redis_server.host, port=redis_server.port)
        async with AsyncAdaptiveCache(client, namespace=ns, strategy="eager", is_controller=True) as a:
            await a.set("k", "v0")
            r.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
            try:
                t = asyncio.create_task(a.set("k", "v1"))
                await asyncio.sleep(0.3)
                assert not t.done(), "the write was not held: the scenario tests nothing"
                t.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await t
            finally:
                r.execute_command("CLIENT", "UNPAUSE")
            assert await a.set("k", "v2") is True
            assert await a.get("k") == b"v2"
            await asyncio.sleep(0.8)  # two ticks: the mark of the burst
            iid = a.instance_id
        await client.aclose()
        return iid

    try:
        iid = run(main())
        msgs = []
        while True:
            m = ps.get_message(timeout=0.2)
            if m is None:
                break
            if m["type"] == "message":
                msgs.append(json.loads(m["data"]))
    finally:
        ps.close()
        r.close()
    mine = [m for m in msgs if m["source"] == iid]
    sent = [m for m in mine if m["action"] != "mark"]
    flushes = [i for i, m in enumerate(sent) if m["action"] == "flush"]
    assert len(flushes) == 1, f"no flush after the cancelled write: {sent}"
    i = flushes[0]
    # before the flush: v0's invalidation, and at most the cancelled write's own, if it landed
    assert sent[0]["seq"] == 1 and all(m["seq"] == 2 for m in sent[1:i]), sent
    # then v2's, right after it (a tick may add one for the cancelled write's key)
    assert sent[i + 1]["action"] == "invalidate" and sent[i + 1]["seq"] == sent[i]["seq"] + 1, sent
    assert [m for m in mine if m["action"] == "mark"][-1]["inval_seq"] == sent[-1]["seq"], mine
