"""Per-call cost of the policy engine from Python (wasmtime-py component API).

Prints one line per operation: `engine-call python <op> <nanoseconds per call>`.
  record-write      record-write with a short key
  status            status (a record of six fields)
  pending-batch-100 pending-batch returning 100 keys (the batch is refilled between timed calls,
                    outside the timing)
Options: --policy PATH (default: the packaged adaptive policy), --plain (wasmtime-py's generic
Func.__call__ instead of the cached converters), --seconds S per op (default 1).
"""

from __future__ import annotations

import argparse
import time

from aci_cache.engine import Engine


def per_call(fn, seconds: float) -> float:
    for _ in range(200):  # warm up
        fn()
    n, total = 0, 0.0
    batch = 200
    while total < seconds:
        t = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        total += (time.perf_counter_ns() - t) / 1e9
        n += batch
    return total * 1e9 / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", default="adaptive")
    ap.add_argument("--plain", action="store_true")
    ap.add_argument("--seconds", type=float, default=1.0)
    args, _ = ap.parse_known_args()
    e = Engine(args.policy, fast=not args.plain)

    ns = per_call(lambda: e.record_write("user:1", 1), args.seconds)
    print(f"engine-call python record-write {ns:.0f}", flush=True)

    ns = per_call(lambda: e.status(1), args.seconds)
    print(f"engine-call python status {ns:.0f}", flush=True)

    # pending-batch returning 100 keys: a fresh engine in batched mode, 100 keys buffered, and a
    # `now` past the batch interval each time (refill is not timed).
    pb = Engine(args.policy, fast=not args.plain)
    cfg = pb.default_config()
    cfg.update({"initial-strategy": "batched", "low-threshold": 0.0, "high-threshold": 1e12,
                "batch-max-keys": 1000, "batch-interval-ms": 1})
    pb.configure(cfg, 0)
    keys = [f"user:{i}" for i in range(100)]
    now = 0
    total, n = 0, 0
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline or n < 50:
        now += 10
        pb.record_writes(keys, now)
        t = time.perf_counter_ns()
        b = pb.pending_batch(now + 5)
        total += time.perf_counter_ns() - t
        n += 1
        assert len(b.keys) == 100, len(b.keys)
    print(f"engine-call python pending-batch-100 {total / n:.0f}", flush=True)


if __name__ == "__main__":
    main()
