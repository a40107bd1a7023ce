"""Swapping the policy of a running cache (``swap_policy``), against a real redis-server.

The property that matters: a key the old policy instance buffered (written under ``batched``,
its invalidation not yet published) is published at the swap, never dropped; and a component
that is not a usable policy is refused while the running one keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis

from aci_cache import AdaptiveCache, AsyncAdaptiveCache, ConfigValueError, PolicyLoadError
from aci_cache.engine import policy_path

from conftest import wait_for

REPO = Path(__file__).resolve().parents[2]


def _fixture_policy(name):
    p = Path(os.environ.get("ACI_POLICY_DIR") or REPO / "target" / "policies") / f"{name}.wasm"
    if not p.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"test policy {p} missing (cargo xtask policies)")
        pytest.skip(f"test policy {p} missing (cargo xtask policies)")
    return p


def _sha(name: str) -> str:
    return hashlib.sha256(policy_path(name).read_bytes()).hexdigest()


# Batches that would not be due for 30 s and L1 entries that live 60 s: within this test's few
# seconds, only the swap's drain (or an eager message) can make b see a's writes.
SLOW = dict(batch_interval=30, local_ttl=60)


def test_swap_adaptive_to_fixed_under_load_loses_no_buffered_key(make_cache, ns, r):
    a = make_cache(namespace=ns, role="controller", low_threshold=1, high_threshold=100000, **SLOW)
    b = make_cache(namespace=ns, role="follower", **SLOW)
    assert a.policy.name == "adaptive" and a.policy.sha256 == _sha("adaptive")
    before = [f"before:{i}" for i in range(40)]   # written only before the swap
    during = [f"during:{i}" for i in range(20)]   # written before, across and after it
    for k in before + during:
        r.set(f"aci:{ns}:{k}", "v0")
        assert b.get(k) == b"v0"
    # a moves to batched on its own rate
    i = 0
    while a.strategy != "batched":
        a.set("warm", str(i))
        i += 1
        time.sleep(0.02)
        assert i < 200, f"adaptive never went batched: {a.strategy}"
    for k in before:
        a.set(k, "v1")
    last = {}
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set():
            k = during[n % len(during)]
            a.set(k, f"w{n}")
            last[k] = f"w{n}"
            n += 1
            time.sleep(0.003)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.5)  # a few ticks of buffered writes
        # the batch is 30 s away: b still serves the old values of what a buffered
        assert all(b.get(k) == b"v0" for k in before)
        info = a.swap_policy("fixed", strategy="eager")
        time.sleep(0.5)  # writes go on under the new policy
    finally:
        stop.set()
        t.join()
    assert info.name == "fixed" and info.sha256 == _sha("fixed")
    assert a.policy == info and a.strategy == "eager"
    st = a.stats
    assert st["policy_name"] == "fixed" and st["policy_hash"] == _sha("fixed") and st["policy_swaps"] == 1
    assert st["engine_faults"] == 0
    expected = {k: "v1" for k in before}
    expected.update(last)
    assert wait_for(lambda: all(b.get(k) == v.encode() for k, v in expected.items()), timeout=2), \
        {k: (b.get(k), v) for k, v in expected.items() if b.get(k) != v.encode()}
    assert b.stats["gaps"] == 0  # delivered as invalidations, not rescued by a loss flush
    # the follower hears the controller's new strategy
    assert wait_for(lambda: b.strategy == "eager", timeout=3)


def test_a_bad_component_is_refused_and_the_old_policy_keeps_running(make_cache, ns, r, tmp_path):
    a = make_cache(namespace=ns, role="controller", strategy="batched", batch_interval=0.3)
    b = make_cache(namespace=ns, role="follower")
    running = a.policy
    core_module = tmp_path / "core.wasm"
    core_module.write_bytes(b"\0asm\x01\x00\x00\x00")
    cases = [
        (b"not a component", PolicyLoadError, "not a WebAssembly file"),
        (str(core_module), PolicyLoadError, "core WebAssembly module"),
        (str(tmp_path / "missing.wasm"), PolicyLoadError, "cannot read"),
        ("no-such-policy", PolicyLoadError, "not shipped"),
        (str(_fixture_policy("trap-on-load")), PolicyLoadError, "trap-on-load"),
    ]
    for source, err, text in cases:
        with pytest.raises(err) as ei:
            a.swap_policy(source)
        assert text in str(ei.value)
    with pytest.raises(ConfigValueError) as ei:
        a.swap_policy("fixed", strategy="fastest")
    assert ei.value.field == "strategy"
    assert a.policy == running and a.stats["policy_swaps"] == 0 and a.stats["engine_faults"] == 0
    # still batching with the old instance: a write reaches b's L1 by its batch
    r.set(f"aci:{ns}:k", "1")
    assert b.get("k") == b"1"
    a.set("k", "2")
    assert wait_for(lambda: b.get("k") == b"2", timeout=3)
    assert a.strategy == "batched" and a.stats["policy"].startswith("fixed")


def test_swap_out_of_a_faulted_policy_takes_effect_at_once(make_cache, ns):
    hostile = _fixture_policy("hostile")
    # no namespace: the hostile policy reacts to the literal key
    a = make_cache(channel_prefix=ns, policy=str(hostile), role="controller", sliding_window=5.0)
    a.set("hostile:trap", "x")
    assert wait_for(lambda: a.stats["engine_faults"] == 1, timeout=3)
    assert a.stats["policy"].endswith("(faulted)")
    # the retry would wait a window (5 s); the swap does not
    t0 = time.monotonic()
    info = a.swap_policy("fixed", strategy="ttl")
    assert time.monotonic() - t0 < 2
    assert info.name == "fixed" and not a.stats["policy"].endswith("(faulted)")
    assert a.strategy == "ttl"


def test_a_follower_keeps_following_after_a_swap(make_cache, ns):
    a = make_cache(namespace=ns, role="controller", strategy="eager")
    b = make_cache(namespace=ns, role="follower")
    assert wait_for(lambda: b.strategy == "eager", timeout=3)
    b.swap_policy("fixed", strategy="ttl")
    assert b.policy.name == "fixed"
    time.sleep(0.6)  # a few ticks: the controller's word still rules
    assert b.strategy == "eager"


def test_async_swap_publishes_the_buffered_keys(redis_server, ns):
    sync_client = redis.Redis(host=redis_server.host, port=redis_server.port)
    b = AdaptiveCache(sync_client, namespace=ns, role="follower", **SLOW)

    async def main():
        client = aredis.Redis(host=redis_server.host, port=redis_server.port)
        async with AsyncAdaptiveCache(client, namespace=ns, role="controller", strategy="batched", **SLOW) as a:
            await a.set("k", "1")
            assert b.get("k") == b"1"
            await a.set("k", "2")
            await asyncio.sleep(0.6)  # ticks: the key sits in the 30 s batch
            assert b.get("k") == b"1"
            info = await a.swap_policy("adaptive")
            assert info.name == "adaptive" and a.policy.sha256 == _sha("adaptive")
            assert a.stats["policy_swaps"] == 1
            deadline = time.monotonic() + 2
            while b.get("k") != b"2" and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert b.get("k") == b"2"
            with pytest.raises(PolicyLoadError):
                await a.swap_policy(b"\0asm junk")
            assert a.policy == info
        await client.aclose()

    try:
        asyncio.run(main())
    finally:
        b.stop()
        sync_client.close()
