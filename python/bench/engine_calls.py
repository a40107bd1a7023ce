"""Per-call cost of the policy engine from Python (wasmtime-py component API).

Prints one line per operation: `engine-call python <op> <nanoseconds per call>`, with the same
setup as every host's engine bench (scripts/bench-engines.sh compares them row by row), each on
a fresh instance of the adaptive policy, the clock starting at T0:
  record-write      record-write("user:42"), the clock advancing 1 ms every 16 calls
  status            status (a record of six fields) after one untimed record-remote-writes(100),
                    the clock advancing 1 ms per call
  pending-batch-100 configured batched with batch-max-keys 100 (thresholds 0 and 1e12); per call
                    an untimed record-writes of user:1000..user:1099, then the timed
                    pending-batch returning those 100 keys
Options: --policy PATH (default: the packaged adaptive policy), --plain (wasmtime-py's generic
Func.__call__ instead of the cached converters), --seconds S per op (default 1).
"""

from __future__ import annotations

import argparse
import time

from aci_cache.engine import Engine


T0 = 1_700_000_000_000


def per_call(fn, seconds: float) -> float:
    """ns per call of fn(i), i counting calls from 0."""
    for i in range(200):  # warm up
        fn(i)
    n, total = 200, 0.0
    batch = 200
    while total < seconds:
        t = time.perf_counter_ns()
        for i in range(n, n + batch):
            fn(i)
        total += (time.perf_counter_ns() - t) / 1e9
        n += batch
    return total * 1e9 / (n - 200)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", default="adaptive")
    ap.add_argument("--plain", action="store_true")
    ap.add_argument("--seconds", type=float, default=1.0)
    args, _ = ap.parse_known_args()
    e = Engine(args.policy, fast=not args.plain)
    ns = per_call(lambda i: e.record_write("user:42", T0 + (i >> 4)), args.seconds)
    print(f"engine-call python record-write {ns:.0f}", flush=True)

    e = Engine(args.policy, fast=not args.plain)
    e.record_remote_writes(100, T0)
    ns = per_call(lambda i: e.status(T0 + i), args.seconds)
    print(f"engine-call python status {ns:.0f}", flush=True)

    pb = Engine(args.policy, fast=not args.plain)
    cfg = pb.default_config()
    cfg.update({"initial-strategy": "batched", "low-threshold": 0.0, "high-threshold": 1e12,
                "batch-max-keys": 100})
    pb.configure(cfg, T0)
    keys = [f"user:{1000 + i}" for i in range(100)]
    total, n = 0, 0
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline or n < 50:
        now = T0 + n
        pb.record_writes(keys, now)
        t = time.perf_counter_ns()
        b = pb.pending_batch(now)
        total += time.perf_counter_ns() - t
        n += 1
        assert len(b.keys) == 100, len(b.keys)
    print(f"engine-call python pending-batch-100 {total / n:.0f}", flush=True)


if __name__ == "__main__":
    main()
