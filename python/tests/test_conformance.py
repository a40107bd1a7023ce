"""Replays every trace vector of tests/vectors/*.json against the policy components.

Each vector is its own test, run once through the fast value conversion and once through
wasmtime-py's generic Func.__call__, on a fresh instance each time. Results must match exactly
(floats by ==). ACI_VECTORS_DIR overrides the vector folder, ACI_POLICY_DIR the policy folder
(default: the copy packaged in aci_cache/policies).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List

import pytest

from aci_cache.engine import ConfigError, Engine, policy_path

REPO = Path(__file__).resolve().parents[2]
VECTORS_DIR = Path(os.environ.get("ACI_VECTORS_DIR") or REPO / "tests" / "vectors")
POLICY_DIR = os.environ.get("ACI_POLICY_DIR")

_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _policy(name: str) -> Path:
    return Path(POLICY_DIR) / f"{name}.wasm" if POLICY_DIR else policy_path(name)


def _load_vectors() -> List[Dict[str, Any]]:
    files = sorted(VECTORS_DIR.glob("*.json"))
    return [json.loads(f.read_text(encoding="utf-8")) | {"_file": f.name} for f in files]


VECTORS = _load_vectors()


def test_vectors_found():
    assert VECTORS, f"no trace vectors in {VECTORS_DIR}"
    names = [v["name"] for v in VECTORS]
    assert len(names) == len(set(names)), "duplicate vector names"


def _config(c: Dict[str, Any]) -> Dict[str, Any]:
    return {k: (_FLOATS[v] if isinstance(v, str) and v in _FLOATS else v) for k, v in c.items()}


def _snapshot(s) -> Dict[str, Any]:
    return {
        "strategy": s.strategy,
        "write-rate": s.write_rate,
        "buffered-keys": s.buffered_keys,
        "batch-due": s.batch_due,
        "switches": s.switches,
        "following": s.following,
    }


def _run_step(engine: Engine, step: Dict[str, Any]) -> Any:
    op = step["op"]
    now = step.get("now")
    if op == "describe":
        i = engine.describe()
        return {"name": i.name, "version": i.version}
    if op == "default-config":
        return engine.default_config()
    if op == "configure":
        try:
            engine.configure(_config(step["config"]), now)
        except ConfigError as e:
            return {"err": {"field": e.field, "message": e.message}}
        return {"ok": None}
    if op == "record-write":
        return engine.record_write(step["key"], now)
    if op == "record-writes":
        return engine.record_writes(step["keys"], now)
    if op == "record-remote-writes":
        return engine.record_remote_writes(step["count"], now)
    if op == "current-strategy":
        return engine.current_strategy(now)
    if op == "write-rate":
        return engine.write_rate(now)
    if op == "pending-batch":
        b = engine.pending_batch(now)
        return {"keys": b.keys, "flush-all": b.flush_all}
    if op == "status":
        return _snapshot(engine.status(now))
    if op == "follow":
        return engine.follow(step["strategy"], now)
    if op == "lead":
        return engine.lead(now)
    raise AssertionError(f"unknown op {op!r}")


def _same(want: Any, got: Any) -> bool:
    """Exact equality; floats by == (NaN equals NaN), types of numbers must agree on bool."""
    if isinstance(want, dict):
        return isinstance(got, dict) and want.keys() == got.keys() and all(_same(want[k], got[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(_same(a, b) for a, b in zip(want, got))
    if isinstance(want, bool) or isinstance(got, bool):
        return want is got
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, (int, float)):
        return isinstance(got, (int, float)) and want == got
    return want == got


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector: Dict[str, Any], fast: bool):
    engine = Engine(_policy(vector["policy"]), fast=fast)
    for i, step in enumerate(vector["steps"]):
        got = _run_step(engine, step)
        if "expect" in step:
            want = step["expect"]
            if not _same(want, got):
                pytest.fail(
                    f"vector {vector['name']} ({vector['_file']}), step {i} ({step['op']}"
                    f"{', now=' + str(step['now']) if 'now' in step else ''}):\n"
                    f"  want {json.dumps(want)}\n  got  {json.dumps(got)}",
                    pytrace=False,
                )
