"""The original aci-cache README's snippets (seed/aci-cache-pypi-page.txt) run unchanged, except
for the Redis host/port, which point at the test server."""

from __future__ import annotations

import re
import textwrap

import pytest

from aci_cache import AdaptiveCache

QUICK_START = '''
import redis
from aci_cache import AdaptiveCache
# Wrap your existing Redis client — that's it
r = redis.Redis(host="localhost")
cache = AdaptiveCache(r)
# Use it just like Redis
cache.set("user:123", "alice")
user = cache.get("user:123")
# Check what strategy is active
print(cache.strategy) # "ttl", "batched", or "eager"
'''

MULTI_INSTANCE = '''
import redis
from aci_cache import AdaptiveCache
# Instance 1 (controller)
cache = AdaptiveCache(redis.Redis(), is_controller=True)
# Instance 2-N (followers)
cache = AdaptiveCache(redis.Redis(), is_controller=False)
'''

CONFIGURATION = '''
import redis
from aci_cache import AdaptiveCache
cache = AdaptiveCache(
redis.Redis(),
high_threshold=100, # writes/sec → eager
low_threshold=20, # writes/sec → ttl
default_ttl=30, # seconds
batch_interval=5.0, # seconds between batch flushes
namespace="my-service", # key namespace for multi-service Redis
)
'''


def _adapt(src: str, host: str, port: int) -> str:
    """Only the Redis address changes."""
    src = src.replace('redis.Redis(host="localhost")', f'redis.Redis(host="{host}", port={port})')
    src = src.replace("redis.Redis()", f'redis.Redis(host="{host}", port={port})')
    assert "localhost" not in src
    return src


@pytest.fixture
def tracked(monkeypatch):
    """Every AdaptiveCache the snippet builds, to stop them afterwards (the snippets never do)."""
    made = []
    orig = AdaptiveCache.__init__

    def init(self, *a, **kw):
        orig(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(AdaptiveCache, "__init__", init)
    yield made
    for c in made:
        c.stop()


def test_quick_start(redis_server, tracked, capsys, r):
    ns: dict = {}
    exec(compile(_adapt(QUICK_START, redis_server.host, redis_server.port), "README quick start", "exec"), ns)
    assert ns["user"] == b"alice"
    assert capsys.readouterr().out.strip() in ("ttl", "batched", "eager")
    assert r.get("user:123") == b"alice"
    r.delete("user:123")
    assert len(tracked) == 1


def test_multi_instance(redis_server, tracked):
    ns: dict = {}
    exec(compile(_adapt(MULTI_INSTANCE, redis_server.host, redis_server.port), "README multi-instance", "exec"), ns)
    assert [c.role for c in tracked] == ["controller", "follower"]
    # they coordinate: the follower hears the controller's heartbeats
    from conftest import wait_for

    assert wait_for(lambda: tracked[1].stats["messages_received"] > 0, timeout=3)


def test_configuration(redis_server, tracked, r):
    ns: dict = {}
    exec(compile(_adapt(CONFIGURATION, redis_server.host, redis_server.port), "README configuration", "exec"), ns)
    cache = ns["cache"]
    cfg = cache.config
    assert (cfg.high_threshold, cfg.low_threshold, cfg.default_ttl, cfg.batch_interval, cfg.namespace) == \
        (100, 20, 30, 5.0, "my-service")
    cache.set("k", "v")
    assert r.get("aci:my-service:k") == b"v"
    assert 29_000 < r.pttl("aci:my-service:k") <= 30_000
    r.delete("aci:my-service:k")


def test_snippets_match_the_seed_page():
    """Guard against drift: the snippets above are the seed page's lines."""
    from pathlib import Path
    import os

    seed = None
    for cand in (os.environ.get("ACI_SEED_PAGE"),
                 Path(__file__).resolve().parents[3] / "shared" / "seed" / "aci-cache-pypi-page.txt",
                 Path("/work/shared/seed/aci-cache-pypi-page.txt")):
        if cand and Path(cand).is_file():
            seed = Path(cand).read_text(encoding="utf-8")
            break
    if seed is None:
        pytest.skip("seed page not available here")
    lines = set(l.strip() for l in seed.splitlines())
    for snippet in (QUICK_START, MULTI_INSTANCE, CONFIGURATION):
        for line in snippet.strip().splitlines():
            assert line.strip() in lines, line


# ---------------------------------------------------------------------------------------------
# The original 0.1.1 README (seed/aci-cache-0.1.1-README.md): its Python blocks, including the
# Observability section, run unchanged (only the Redis address is pointed at the test server).

README_QUICK = '''
import redis
from aci_cache import AdaptiveCache

r = redis.Redis(host="localhost", port=6379)
cache = AdaptiveCache(r)

cache.set("user:42", '{"name": "Alice"}')
data = cache.get("user:42")  # '{"name": "Alice"}'

print(cache.strategy)        # "ttl" | "batched" | "eager"
print(cache.stats.total_writes)
'''

README_ASYNC = '''
import redis.asyncio as aioredis
from aci_cache import AsyncAdaptiveCache

async def main():
    r = aioredis.Redis()
    async with AsyncAdaptiveCache(r) as cache:
        await cache.set("session:99", "active")
        print(await cache.get("session:99"))
'''

README_MULTI = '''
# Instance 1 — controller (monitors write rate, publishes decisions)
controller_cache = AdaptiveCache(redis.Redis(), is_controller=True)

# Instance 2, 3, … — followers
follower_cache = AdaptiveCache(redis.Redis(), is_controller=False)
'''

README_CONFIG = '''
cache = AdaptiveCache(
    redis.Redis(),
    high_threshold=100,
    low_threshold=20,
    default_ttl=30,
    namespace="user-service",
    is_controller=True,
)
'''

README_OBSERVABILITY = '''
stats = cache.stats
print(stats.total_reads)        # int
print(stats.cache_hits)         # int
print(stats.cache_misses)       # int
print(stats.total_writes)       # int
print(stats.current_strategy)   # "ttl" | "batched" | "eager"
print(stats.write_rate)         # float (writes/sec)

# React to strategy switches
cache.on_switch(lambda from_s, to_s: print(f"{from_s} → {to_s}"))
'''


def _adapt011(src: str, host: str, port: int) -> str:
    src = src.replace('redis.Redis(host="localhost", port=6379)', f'redis.Redis(host="{host}", port={port})')
    src = src.replace("redis.Redis()", f'redis.Redis(host="{host}", port={port})')
    src = src.replace("aioredis.Redis()", f'aioredis.Redis(host="{host}", port={port})')
    assert "localhost" not in src
    return src


def _run011(snippet: str, ns: dict, redis_server, name: str) -> None:
    exec(compile(_adapt011(snippet, redis_server.host, redis_server.port), name, "exec"), ns)


def test_readme_011_python_blocks(redis_server, tracked, capsys, r):
    ns: dict = {}
    _run011(README_QUICK, ns, redis_server, "README 0.1.1 quick start")
    assert ns["data"] == b'{"name": "Alice"}'
    out = capsys.readouterr().out.split()
    assert out[0] in ("ttl", "batched", "eager") and out[1] == "1"
    _run011(README_OBSERVABILITY, ns, redis_server, "README 0.1.1 observability")
    out = capsys.readouterr().out.split()
    assert out[:4] == ["1", "1", "0", "1"] and out[4] in ("ttl", "batched", "eager")
    float(out[5])
    _run011(README_MULTI, ns, redis_server, "README 0.1.1 multi-instance")
    assert ns["controller_cache"].role == "controller" and ns["follower_cache"].role == "follower"
    _run011(README_CONFIG, ns, redis_server, "README 0.1.1 configuration")
    assert ns["cache"].config.namespace == "user-service" and ns["cache"].config.high_threshold == 100
    _run011(README_ASYNC, ns, redis_server, "README 0.1.1 async")
    import asyncio

    asyncio.run(ns["main"]())
    assert capsys.readouterr().out.strip() == "b'active'"
    r.delete("user:42", "session:99")


def test_readme_011_blocks_match_the_seed():
    """Guard against drift: each block above is in the seed README, line for line."""
    from pathlib import Path
    import os

    seed = None
    for cand in (os.environ.get("ACI_SEED_README"),
                 Path(__file__).resolve().parents[3] / "shared" / "seed" / "aci-cache-0.1.1-README.md",
                 Path("/work/shared/seed/aci-cache-0.1.1-README.md")):
        if cand and Path(cand).is_file():
            seed = Path(cand).read_text(encoding="utf-8")
            break
    if seed is None:
        pytest.skip("seed README not available here")
    for block in (README_QUICK, README_ASYNC, README_MULTI, README_CONFIG, README_OBSERVABILITY):
        assert block.strip() in seed, block[:80]
