"""Hand-written trace vectors: the semantics of wit/policy.wit, with expectations worked out by
hand (not recorded from an implementation). Run `python3 tests/vectors/handwritten.py` to rewrite
the JSON files beside it; every host replays those files.

Most vectors use FAST: a 1000 ms window, so 20 buckets of 50 ms and a rate equal to the number
of writes in the window; thresholds 10 and 50; a 500 ms hold; 200 ms batches.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULT = {"low-threshold": 10.0, "high-threshold": 50.0, "window-ms": 5000, "hold-ms": 3000,
           "batch-interval-ms": 2500, "batch-max-keys": 1000, "batch-max-bytes": 1048576,
           "initial-strategy": "ttl"}
FAST = dict(DEFAULT, **{"window-ms": 1000, "hold-ms": 500, "batch-interval-ms": 200,
                        "batch-max-keys": 100, "batch-max-bytes": 10000})
OK = {"ok": None}


def cfg(base=FAST, **kw):
    c = dict(base)
    for k, v in kw.items():
        c[k.replace("_", "-")] = v
    return c


def configure(c, now=0, expect=OK):
    return {"op": "configure", "config": c, "now": now, "expect": expect}


def err(field, message):
    return {"err": {"field": field, "message": message}}


def w(key, now, expect):
    return {"op": "record-write", "key": key, "now": now, "expect": expect}


def ws(keys, now, expect):
    return {"op": "record-writes", "keys": keys, "now": now, "expect": expect}


def remote(count, now, expect):
    return {"op": "record-remote-writes", "count": count, "now": now, "expect": expect}


def cur(now, expect):
    return {"op": "current-strategy", "now": now, "expect": expect}


def rate(now, expect):
    return {"op": "write-rate", "now": now, "expect": expect}


def batch(now, keys, flush_all=False):
    return {"op": "pending-batch", "now": now, "expect": {"keys": keys, "flush-all": flush_all}}


def status(now, strategy, write_rate, buffered=0, due=False, switches=0, following=False):
    return {"op": "status", "now": now, "expect": {
        "strategy": strategy, "write-rate": write_rate, "buffered-keys": buffered,
        "batch-due": due, "switches": switches, "following": following}}


def follow(strategy, now):
    return {"op": "follow", "strategy": strategy, "now": now}


def lead(now):
    return {"op": "lead", "now": now}


VECTORS = []


def vector(name, policy, description, steps):
    VECTORS.append({"name": name, "description": description, "policy": policy, "steps": steps})


vector("describe-and-defaults", "adaptive", "Name, version, the original's defaults, the initial state.", [
    {"op": "describe", "expect": {"name": "adaptive", "version": "0.3.0"}},
    {"op": "default-config", "expect": DEFAULT},
    status(0, "ttl", 0.0),
])

vector("tiers-up", "adaptive", "Below a quarter of low is ttl, from there to high (inclusive) batched, above high eager; up at once.", [
    configure(cfg(low_threshold=12.0)),
    ws(["k0", "k1"], 0, "ttl"),
    rate(0, 2.0),
    w("k2", 0, "batched"),  # rate 3 is not below 12 / 4: batched, and k2 is buffered
    status(0, "batched", 3.0, buffered=1, switches=1),
    ws([f"m{i}" for i in range(47)], 10, "batched"),  # rate 50 is not above high
    w("z", 10, "eager"),  # rate 51: eager at once, z is not buffered
    status(10, "eager", 51.0, buffered=48, due=True, switches=2),
    batch(10, ["k2"] + [f"m{i}" for i in range(47)]),
    batch(10, []),
])

vector("ttl-below-a-quarter-of-low", "adaptive", "Between a quarter of low and low: batched, full batch interval; down to ttl only below a quarter of low, after the hold.", [
    configure(FAST),
    remote(5, 0, "batched"),  # 5/s is below low (10) but not below 10 / 4: up at once
    w("a", 0, "batched"),
    batch(199, []),  # 6/s is not above low: the full 200 ms
    batch(200, ["a"]),
    remote(2, 600, "batched"),
    cur(999, "batched"),  # 8 writes in the window
    cur(1000, "batched"),  # the 6 at 0 left: 2/s is below 2.5, target ttl, the hold starts
    cur(1499, "batched"),
    cur(1500, "ttl"),
    status(1500, "ttl", 2.0, switches=2),
    remote(1, 1500, "batched"),  # 3/s: up at once
])

vector("hysteresis-down", "adaptive", "Down only after the target stayed lower for hold-ms; eager ends on the newest quarter of the window, ttl waits for the whole window.", [
    configure(FAST),
    remote(60, 0, "eager"),
    cur(249, "eager"),  # bucket 0 is still in the newest quarter (5 buckets, 250 ms)
    cur(250, "eager"),  # it left the quarter: min(60, 0) is below low, but the window still holds 60: target batched, the hold starts
    cur(749, "eager"),
    cur(750, "batched"),
    rate(760, 60.0),  # the window still holds the burst
    cur(1000, "batched"),  # bucket 0 left the window: target ttl, the hold starts again
    cur(1499, "batched"),
    cur(1500, "ttl"),
    status(1500, "ttl", 0.0, switches=3),
])

vector("hysteresis-down-straight", "adaptive", "Seen only once the whole window is quiet, eager goes straight to ttl after the hold.", [
    configure(FAST),
    remote(60, 0, "eager"),
    rate(1000, 0.0),  # first look after the burst: both rates are 0, target ttl, the hold starts
    cur(1499, "eager"),
    cur(1500, "ttl"),  # straight to the target, not one tier at a time
    status(1500, "ttl", 0.0, switches=2),
])

vector("no-flapping", "adaptive", "A rate oscillating around high within the hold never goes down.", [
    configure(FAST),
    remote(51, 0, "eager"),
    remote(45, 1000, "eager"),  # the 51 left: rate 45, target batched, the hold starts
    remote(10, 1200, "eager"),  # rate 55, and 55 in the newest quarter: the hold is cancelled
    cur(1249, "eager"),  # the quarter holds both reports (55 writes in 250 ms)
    cur(1250, "eager"),  # the 45 left the quarter: 10 writes in 201 ms is 49.75/s, target batched, the hold starts
    remote(45, 1300, "eager"),  # rate 100: cancelled
    cur(1749, "eager"),  # nothing in the newest quarter: the hold starts again
    cur(2248, "eager"),  # the window holds the 45 from 1300 only: target batched, still holding
    cur(2249, "batched"),
    status(2249, "batched", 45.0, switches=2),
])

vector("batch-interval-shrinks-with-rate", "adaptive", "Above low, a batch waits batch-interval-ms x low / rate (at least x low / high); fixed keeps the interval.", [
    configure(cfg(batch_interval_ms=1000, hold_ms=10000, initial_strategy="batched")),
    ws([f"a{i}" for i in range(10)], 0, "batched"),  # rate 10: not above low, the full interval
    batch(999, []),
    batch(1000, [f"a{i}" for i in range(10)]),
    ws([f"b{i}" for i in range(25)], 2000, "batched"),  # rate 25 (the a's left): 1000 x 10 / 25 = 400 ms
    status(2399, "batched", 25.0, buffered=25),
    status(2400, "batched", 25.0, buffered=25, due=True),
    batch(2400, [f"b{i}" for i in range(25)]),
    remote(40, 2500, "eager"),  # rate 65: eager; its own keys are published at once
    lead(2500),
    follow("batched", 2500),  # a follower keeps counting: its rate decides its interval
    w("c", 2500, "batched"),  # rate 66 is above high: 1000 x 10 / 50 = 200 ms at least
    batch(2699, []),
    batch(2700, ["c"]),
])

vector("batch-drains-on-interval", "fixed", "A batch is due batch-interval-ms after its first key; keys are deduplicated.", [
    configure(cfg(initial_strategy="batched")),
    w("a", 100, "batched"),
    w("b", 150, "batched"),
    w("a", 160, "batched"),
    batch(299, []),
    status(299, "batched", 3.0, buffered=2),
    batch(300, ["a", "b"]),
    batch(300, []),
    w("c", 400, "batched"),
    batch(599, []),
    batch(600, ["c"]),
])

vector("batch-drains-on-cap", "fixed", "A batch is due at batch-max-keys or batch-max-bytes; past a full batch, flush-all.", [
    configure(cfg(initial_strategy="batched", batch_max_keys=3, batch_max_bytes=100)),
    ws(["a", "b"], 0, "batched"),
    status(0, "batched", 2.0, buffered=2),
    w("c", 1, "batched"),
    status(1, "batched", 3.0, buffered=3, due=True),
    batch(1, ["a", "b", "c"]),
    ws(["x" * 60, "y" * 40], 2, "batched"),  # 100 bytes
    status(2, "batched", 5.0, buffered=2, due=True),
    batch(2, ["x" * 60, "y" * 40]),
    ws(["d", "e", "f", "g", "d"], 3, "batched"),  # g finds the batch full; d is already in
    status(3, "batched", 10.0, buffered=3, due=True),
    batch(3, ["d", "e", "f"], flush_all=True),
    batch(3, []),
])

vector("batch-drains-on-switch", "adaptive", "Leaving batched (by rate or by follow) makes buffered keys due at once.", [
    configure(FAST),
    remote(2, 0, "ttl"),
    w("p", 0, "batched"),
    w("q", 10, "batched"),
    remote(47, 20, "eager"),
    batch(20, ["p", "q"]),
    w("r", 30, "eager"),
    batch(30, []),
    follow("batched", 40),
    w("s", 50, "batched"),
    follow("ttl", 60),
    status(60, "ttl", 53.0, buffered=1, due=True, switches=4, following=True),
    batch(60, ["s"]),
    lead(70),  # deciding again: rate 53 is above high
    cur(70, "eager"),
    status(70, "eager", 53.0, switches=5),
])

vector("follow-overrides-rate", "adaptive", "A follower keeps the controller's strategy whatever it measures.", [
    configure(FAST),
    remote(100, 0, "eager"),
    follow("ttl", 10),
    remote(100, 20, "ttl"),
    w("k", 20, "ttl"),
    status(20, "ttl", 201.0, switches=2, following=True),
    lead(30),
    status(30, "eager", 201.0, switches=3),
])

vector("invalid-configs", "adaptive", "Each bad field is named; a refused config changes nothing.", [
    configure(FAST),
    remote(60, 0, "eager"),
    configure(cfg(low_threshold=50.0, high_threshold=10.0), 100,
              err("low-threshold", "must be less than high-threshold (10), got 50")),
    configure(cfg(low_threshold=10.0, high_threshold=10.0), 100,
              err("low-threshold", "must be less than high-threshold (10), got 10")),
    configure(cfg(low_threshold=-1.0), 100, err("low-threshold", "must be a finite number >= 0 (writes/s), got -1")),
    configure(cfg(low_threshold="Infinity"), 100, err("low-threshold", "must be a finite number >= 0 (writes/s), got inf")),
    configure(cfg(high_threshold="NaN"), 100, err("high-threshold", "must be a finite number >= 0 (writes/s), got NaN")),
    configure(cfg(high_threshold=-0.5), 100, err("high-threshold", "must be a finite number >= 0 (writes/s), got -0.5")),
    configure(cfg(window_ms=0), 100, err("window-ms", "must be > 0 (ms), got 0")),
    configure(cfg(window_ms=-5), 100, err("window-ms", "must be > 0 (ms), got -5")),
    configure(cfg(hold_ms=-1), 100, err("hold-ms", "must be >= 0 (ms), got -1")),
    configure(cfg(batch_interval_ms=0), 100, err("batch-interval-ms", "must be > 0 (ms), got 0")),
    configure(cfg(batch_interval_ms=-2500), 100, err("batch-interval-ms", "must be > 0 (ms), got -2500")),
    configure(cfg(batch_max_keys=0), 100, err("batch-max-keys", "must be > 0 (keys), got 0")),
    configure(cfg(batch_max_bytes=-1), 100, err("batch-max-bytes", "must be > 0 (bytes), got -1")),
    configure(cfg(low_threshold=-1.0, window_ms=0), 100, err("low-threshold", "must be a finite number >= 0 (writes/s), got -1")),
    cur(100, "eager"),  # none of the refused configs reset anything
    status(100, "eager", 60.0, switches=1),
    configure(cfg(hold_ms=0), 200),  # hold 0 is valid: no hysteresis
    status(200, "ttl", 0.0, switches=1),
])

vector("idle-decay-defaults", "adaptive", "Default config: 5 s window in 250 ms buckets (the newest quarter 1250 ms), 3 s hold, long idle gaps.", [
    remote(300, 0, "eager"),  # 300 writes / 5 s = 60/s
    cur(1249, "eager"),
    cur(1250, "eager"),  # the writes left the newest quarter: target batched, the hold starts
    cur(4249, "eager"),
    cur(4250, "batched"),
    rate(4999, 60.0),
    rate(5000, 0.0),  # they left the window: target ttl, the hold starts again
    cur(7999, "batched"),
    cur(8000, "ttl"),
    cur(1000000000, "ttl"),
    rate(1000000000, 0.0),
    remote(60, 1000000000, "batched"),
    rate(1000000000, 12.0),
])

vector("keys-edge-cases", "fixed", "Empty, non-ASCII, NUL-carrying and 10 KB keys are buffered and returned intact.", [
    configure(cfg(initial_strategy="batched", batch_max_keys=10, batch_max_bytes=100000)),
    w("", 0, "batched"),
    w("ключ", 0, "batched"),
    w("键:🔑", 0, "batched"),
    w("a\u0000b", 0, "batched"),
    w("L" * 10000, 0, "batched"),
    w("", 1, "batched"),
    status(1, "batched", 6.0, buffered=5),
    batch(200, ["", "ключ", "键:🔑", "a\u0000b", "L" * 10000]),
])

vector("clock-steps-back", "adaptive", "A now-ms older than one already seen counts as the newest one.", [
    configure(FAST),
    remote(60, 1000, "eager"),
    cur(0, "eager"),
    rate(500, 60.0),
    w("k", 10, "eager"),  # counted at 1000
    rate(1999, 61.0),
    rate(2000, 0.0),
])

vector("fixed-ignores-rate", "fixed", "The fixed policy keeps initial-strategy whatever the rate.", [
    {"op": "describe", "expect": {"name": "fixed", "version": "0.1.0"}},
    remote(1000, 0, "ttl"),
    status(0, "ttl", 200.0),
    configure(cfg(DEFAULT, initial_strategy="eager"), 10),
    w("k", 10, "eager"),
    batch(10, []),
    status(10, "eager", 0.2),
])

if __name__ == "__main__":
    for v in VECTORS:
        with open(os.path.join(HERE, v["name"] + ".json"), "w", encoding="utf-8") as f:
            json.dump(v, f, ensure_ascii=False, indent=1)
            f.write("\n")
    print(f"wrote {len(VECTORS)} vectors")
