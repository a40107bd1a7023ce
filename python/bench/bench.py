"""The cache against raw redis-py, in one run on the same Redis.

Starts a private redis-server on a free loopback port (or uses --redis URL) and times, on one
connection each, single-threaded:
  raw-get, raw-set            redis-py GET and SET EX (what this package's set sends)
  get-l1-hit, get-l1-miss     AdaptiveCache.get served from L1 / from Redis (GET+PTTL pipeline)
  set-ttl, set-batched, set-eager   AdaptiveCache.set with the strategy forced
  set-publish-floor           SET + PUBLISH written at once on one redis-py connection, to a
                              channel that a thread of this process reads (bare socket reads,
                              discarded): the least an eager write costs, since every instance,
                              the writer included, hears every invalidation
Each op runs in many short interleaved rounds (so that load from elsewhere on the machine hits
every op alike); the median round is reported. Output, one line per op:
  bench python <op> <ns per op> <speed relative to the raw op (raw ns / op ns)>x
then the targets (issue 10): set >= 0.95x raw SET under ttl/batched, >= 0.85x under eager, L1
hit >= 50x raw GET.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List

import redis

from aci_cache import AdaptiveCache
from aci_cache.cache import _pack  # the floor packs as cheaply as the cache does


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis() -> tuple:
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    d = tempfile.mkdtemp(prefix="aci-bench-")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
    c = redis.Redis(port=port)
    for _ in range(200):
        try:
            c.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    c.close()
    return proc, port, d


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def timed(fn: Callable[[int], None], n: int) -> float:
    t = time.perf_counter_ns()
    fn(n)
    return (time.perf_counter_ns() - t) / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", help="use this Redis instead of a private redis-server")
    ap.add_argument("--ops", type=int, default=300, help="Redis round trips per op per round")
    ap.add_argument("--rounds", type=int, default=30)
    args, _ = ap.parse_known_args()

    proc = None
    if args.redis:
        url = args.redis
    else:
        proc, port, tmpdir = start_redis()
        url = f"redis://127.0.0.1:{port}/0"
    try:
        raw = redis.Redis.from_url(url)
        raw.ping()
        n = args.ops
        keys = [f"bench:k{i}" for i in range(1000)]
        for k in keys:
            raw.set(k, "v" * 32, ex=600)
        value = "v" * 32

        caches: Dict[str, AdaptiveCache] = {}
        for strategy in ("ttl", "batched", "eager"):
            caches[strategy] = AdaptiveCache(redis.Redis.from_url(url), namespace=f"bench-{strategy}",
                                             strategy=strategy, default_ttl=600)
        hit_cache = caches["ttl"]
        hit_cache.set("hot", value)
        miss_keys = [f"bench:miss{i}" for i in range(n * args.rounds + 200)]
        # the miss keys exist in Redis under the cache's namespace, never in its L1
        ms = AdaptiveCache(redis.Redis.from_url(url), namespace="bench-miss", strategy="ttl")
        pipe = raw.pipeline(transaction=False)
        for k in miss_keys:
            pipe.set(f"aci:bench-miss:{k}", value, ex=600)
        pipe.execute()

        def raw_get(m):
            g = raw.get
            for i in range(m):
                g(keys[i % 1000])

        def raw_set(m):
            s = raw.set
            for i in range(m):
                s(keys[i % 1000], value, ex=600)

        def get_hit(m):
            g = hit_cache.get
            for _ in range(m):
                g("hot")

        miss_next = [0]

        def get_miss(m):
            g = ms.get
            j = miss_next[0]
            for i in range(j, j + m):
                g(miss_keys[i])
            miss_next[0] = j + m

        def set_with(c: AdaptiveCache):
            def run(m):
                s = c.set
                for i in range(m):
                    s(keys[i % 1000], value)
            return run

        # The floor's subscriber: the cheapest reader there is, a thread on a bare socket.
        host, port_s = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        sub = socket.create_connection((host, int(port_s)))
        sub.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$11\r\nbench-floor\r\n")
        sub.recv(4096)
        threading.Thread(target=_drain, args=(sub,), daemon=True).start()
        floor_conn = raw.connection_pool.get_connection()
        floor_msg = ('{"action":"invalidate","keys":["aci:bench-eager:bench:k1"],"strategy":"eager",'
                     '"timestamp":1764140000.5,"source":"0123456789ab","epoch":"0123456789abcdef","seq":1,"v":2}')

        def set_publish_floor(m):
            c = floor_conn
            for i in range(m):
                c.send_packed_command((_pack([("SET", keys[i % 1000], value, "EX", 600),
                                              ("PUBLISH", "bench-floor", floor_msg)], c.encoder.encode),))
                c.read_response()
                c.read_response()

        ops: Dict[str, tuple] = {
            "raw-get": (raw_get, n),
            "raw-set": (raw_set, n),
            "get-l1-hit": (get_hit, n * 50),
            "get-l1-miss": (get_miss, n),
            "set-ttl": (set_with(caches["ttl"]), n),
            "set-batched": (set_with(caches["batched"]), n),
            "set-eager": (set_with(caches["eager"]), n),
            "set-publish-floor": (set_publish_floor, n),
        }
        for fn, m in ops.values():  # warm up
            fn(min(m, 200))
        samples: Dict[str, List[float]] = {k: [] for k in ops}
        for _ in range(args.rounds):
            for name, (fn, m) in ops.items():
                samples[name].append(timed(fn, m))
        med = {k: statistics.median(v) for k, v in samples.items()}
        base = {"raw-get": "raw-get", "raw-set": "raw-set", "get-l1-hit": "raw-get", "get-l1-miss": "raw-get",
                "set-ttl": "raw-set", "set-batched": "raw-set", "set-eager": "raw-set",
                "set-publish-floor": "raw-set"}
        info = raw.info("server")
        print(f"# python {sys.version.split()[0]}, redis-py {redis.__version__}, redis-server "
              f"{info.get('redis_version')}, {args.rounds} rounds, median", flush=True)
        for name in ops:
            ratio = med[base[name]] / med[name]
            print(f"bench python {name} {med[name]:.0f} {ratio:.2f}x", flush=True)
        hit_ratio = med["raw-get"] / med["get-l1-hit"]
        set_ratios = {s: med["raw-set"] / med[f"set-{s}"] for s in ("ttl", "batched", "eager")}
        ok_hit = hit_ratio >= 50
        ok_set = all(set_ratios[s] >= 0.95 for s in ("ttl", "batched"))
        ok_eager = set_ratios["eager"] >= 0.85
        print(f"# target get-l1-hit >= 50x raw GET: {hit_ratio:.1f}x {'ok' if ok_hit else 'MISSED'}")
        print("# target set >= 0.95x raw SET (ttl, batched): "
              + ", ".join(f"{s} {set_ratios[s]:.2f}x" for s in ("ttl", "batched")) + (" ok" if ok_set else " MISSED"))
        print(f"# target set >= 0.85x raw SET (eager): {set_ratios['eager']:.2f}x {'ok' if ok_eager else 'MISSED'}"
              f"; the floor is {med['raw-set'] / med['set-publish-floor']:.2f}x, eager takes "
              f"{med['set-eager'] / med['set-publish-floor']:.2f}x the floor's time")
        raw.connection_pool.release(floor_conn)
        sub.close()
        for c in caches.values():
            c.stop()
        ms.stop()
        raw.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
            shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
