"""Hand-written trace vectors of the bundled `budget` policy (its rule: wit/policy.wit), with the
helpers of ../handwritten.py. `python3 tests/vectors/budget/make.py` rewrites the JSON beside it.

They live in this subfolder, not beside the others, until every host's vector replay accepts a
third policy name (the JS and Go replays list `adaptive` and `fixed` by hand); the Rust contract
test replays them in wasm and natively, and ACI_VECTORS_DIR=tests/vectors/budget points any
host's replay here.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from handwritten import DEFAULT, FAST, batch, cfg, configure, cur, rate, remote, status, w, ws  # noqa: E402

# ttl leaves a write stale 2 s, batches wait 1 s (0.5 s on average), budget 20 stale
# key-seconds per second: ttl up to 10 writes/s, batched up to 40, eager above.
BUD = cfg(FAST, low_threshold=2.0, high_threshold=20.0, batch_interval_ms=1000)

VECTORS = [
    {"name": "budget-tiers", "policy": "budget",
     "description": "The cheapest strategy whose expected staleness (rate x seconds unannounced) fits the budget; "
                    "up at once, down after hold-ms; a longer batch interval skips batched.",
     "steps": [
         {"op": "describe", "expect": {"name": "budget", "version": "0.1.0"}},
         {"op": "default-config", "expect": DEFAULT},
         configure(BUD),
         ws([f"k{i}" for i in range(10)], 0, "ttl"),  # 10 x 2 s = 20 <= 20
         w("k10", 0, "batched"),  # 11 x 2 = 22 > 20; 11 x 0.5 = 5.5 <= 20; buffered
         status(0, "batched", 11.0, buffered=1, switches=1),
         ws([f"m{i}" for i in range(29)], 10, "batched"),  # 40 x 0.5 = 20 <= 20
         w("z", 10, "eager"),  # 41 x 0.5 = 20.5 > 20; z is not buffered
         status(10, "eager", 41.0, buffered=30, due=True, switches=2),
         batch(10, ["k10"] + [f"m{i}" for i in range(29)]),
         rate(1000, 0.0),  # the writes leave the window; the hold (500 ms) starts
         cur(1499, "eager"),
         cur(1500, "ttl"),
         # 4 s batches (2 s on average) cost as much staleness as ttl here: never batched.
         configure(cfg(BUD, batch_interval_ms=4000), 2000),
         ws([f"n{i}" for i in range(10)], 2000, "ttl"),
         w("n10", 2000, "eager"),  # 11 x 2 = 22 > 20 under ttl and under batched
         status(2000, "eager", 11.0, switches=4),
         remote(0, 2000, "eager"),
     ]},
    {"name": "budget-zero-ttl-staleness", "policy": "budget",
     "description": "low-threshold 0 (ttl leaves nothing stale) keeps ttl whatever the rate.",
     "steps": [
         configure(cfg(FAST, low_threshold=0.0, high_threshold=1.0)),
         remote(100000, 0, "ttl"),
         status(0, "ttl", 100000.0),
     ]},
]

if __name__ == "__main__":
    for v in VECTORS:
        with open(os.path.join(os.path.dirname(HERE), v["name"] + ".json"), "w", encoding="utf-8") as f:
            json.dump(v, f, ensure_ascii=False, indent=1)
            f.write("\n")
    print(f"wrote {len(VECTORS)} vectors")
