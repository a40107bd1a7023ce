"""Replays the language-neutral wire vectors (tests/vectors/wire/*.json, docs/WIRE.md v2) against
aci_cache.wire, with exact comparison. Format: tests/vectors/wire/make.py's docstring."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List

import pytest

from aci_cache import wire

REPO = Path(__file__).resolve().parents[2]
WIRE_DIR = Path(os.environ.get("ACI_WIRE_VECTORS_DIR") or REPO / "tests" / "vectors" / "wire")


def _cases(name: str) -> List[Dict[str, Any]]:
    return json.loads((WIRE_DIR / name).read_text(encoding="utf-8"))["cases"]


DECODE, LOSS, NAMING = _cases("decode.json"), _cases("loss.json"), _cases("naming.json")


def _payload(case: Dict[str, Any]) -> bytes:
    if "payload_hex" in case:
        data = bytes.fromhex(case["payload_hex"])
    else:
        text = case["payload"]
        if "expand_keys" in case:
            text = text.replace('"@KEYS@"', ",".join(['"k"'] * case["expand_keys"]))
        data = text.encode("utf-8")
    if "pad_to" in case:
        data += b" " * (case["pad_to"] - len(data))
    return data


def _same(want: Any, got: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and want.keys() == got.keys() and all(_same(want[k], got[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(_same(a, b) for a, b in zip(want, got))
    if isinstance(want, bool) or isinstance(got, bool):
        return want is got
    if isinstance(want, (int, float)) and want is not None:
        return isinstance(got, (int, float)) and not isinstance(got, bool) and want == got
    return want == got


@pytest.mark.parametrize("case", DECODE, ids=[c["name"] for c in DECODE])
def test_decode(case):
    data = _payload(case)
    want = case["expect"]
    for payload in (data, data.decode("utf-8", "surrogateescape")) if "payload_hex" not in case else (data,):
        try:
            got: Any = wire.decode(payload)
        except wire.Malformed as e:
            got = {"malformed": e.kind}
        if "keys_count" in want:
            assert "malformed" not in got, got
            got = {"action": got["action"], "keys_count": len(got["keys"])}
        assert _same(want, got), f"\nwant {json.dumps(want)[:500]}\ngot  {json.dumps(got)[:500]}"


@pytest.mark.parametrize("case", LOSS, ids=[c["name"] for c in LOSS])
def test_loss(case):
    d = wire.LossDetector()
    for i, ev in enumerate(case["events"]):
        do, at = ev["do"], ev["at"]
        if do == "message":
            lost = d.message(ev["source"], ev["epoch"], ev["seq"], at)
        elif do == "position":
            lost = d.position(ev["source"], ev["epoch"], ev["inval_seq"], at)
        elif do == "tick":
            lost = d.tick(at)
        elif do == "resubscribed":
            d.resubscribed()
            lost = False
        else:
            raise AssertionError(do)
        assert ("lost" if lost else "ok") == ev["expect"], f"event {i}: {ev}"


@pytest.mark.parametrize("case", NAMING, ids=[c["name"] for c in NAMING])
def test_naming(case):
    want = case["expect"]
    try:
        n = wire.Names(case["channel_prefix"], case["namespace"], case["instance_id"])
        got = {"invalidation": n.invalidation, "strategy": n.strategy, "reports": n.reports,
               "liveness": n.liveness, "lease": n.lease, "redis_key": n.redis_key(case["key"])}
    except wire.NameError_ as e:
        got = {"error": e.field}
    assert got == want


@pytest.mark.parametrize("case", [c for c in NAMING if "error" in c["expect"] and c["expect"]["error"] != "key"],
                         ids=lambda c: c["name"])
def test_naming_errors_at_construction(case, redis_server):
    """The same refusals from the public constructor: a ValueError naming the field."""
    import redis

    from aci_cache import AdaptiveCache, CacheConfig

    kw = {"channel_prefix": case["channel_prefix"], "namespace": case["namespace"], "instance_id": case["instance_id"]}
    with pytest.raises(ValueError) as ei:
        CacheConfig(**kw)
    assert getattr(ei.value, "field", None) == case["expect"]["error"]
    assert case["expect"]["error"] in str(ei.value)


def test_key_in_protocol_space_is_refused_by_the_cache(redis_server):
    import redis

    from aci_cache import AdaptiveCache

    with AdaptiveCache(redis.Redis(host=redis_server.host, port=redis_server.port), channel_prefix="wv") as c:
        for op in (lambda: c.set("wv::controller", "x"), lambda: c.get("wv::x"), lambda: c.delete("wv::")):
            with pytest.raises(ValueError) as ei:
                op()
            assert getattr(ei.value, "field", None) == "key"


def test_encoded_messages_decode_to_what_was_sent():
    e = wire.Encoder("3f2a9c1b0d4e", "9c1b0d4e3f2a9c1b")
    p = e.encode("invalidate", 1764140000.123, keys=["a", "é\n"], strategy="eager", seq=17)
    m = wire.decode(p.encode())
    assert m == {"action": "invalidate", "source": "3f2a9c1b0d4e", "epoch": "9c1b0d4e3f2a9c1b",
                 "timestamp": 1764140000.123, "keys": ["a", "é\n"], "strategy": "eager", "seq": 17}
    assert json.loads(p)["v"] == 2
    assert e.own_timestamp(p) == 1764140000.123 and e.own_timestamp(p.encode()) == 1764140000.123
    assert wire.decode(e.encode("heartbeat", 2.0))["action"] == "heartbeat"
    assert e.own_timestamp(wire.Encoder("x", "y").encode("heartbeat", 1.0)) is None


# -- section 9 (policy rollout): tests/vectors/wire/policy.json ----------------------------------

POLICY = _cases("policy.json") if (WIRE_DIR / "policy.json").is_file() else []


@pytest.mark.parametrize("case", POLICY, ids=[c["name"] for c in POLICY])
def test_policy(case):
    from nacl.signing import SigningKey

    from aci_cache.rollout import RecordError, Trust, Target, parse_record, signed_message

    want = case["expect"] if "expect" in case else None
    if case["kind"] == "announcement":
        try:
            m = wire.decode_policy(_payload(case))
            got: Any = {"rollout": m["rollout"], "source": m["source"]}
        except wire.Malformed as e:
            got = {"malformed": e.kind}
        assert _same(want, got), f"{case['name']}: want {want}, got {got}"
    elif case["kind"] == "signature":
        msg = signed_message(case["prefix"], case["namespace"], case["sha256"], case["config"])
        assert msg == case["message"].encode("utf-8")
        key = SigningKey(bytes.fromhex(case["seed"]))
        assert key.verify_key.encode().hex() == case["public_key"]
        assert key.sign(msg).signature.hex() == case["sig"]  # ed25519 is deterministic
        trust = Trust(case["public_key"], None)
        for v in case["verifies"]:
            reason = trust.check(Target(v["sha256"], v["config"], case["sig"]), v["prefix"], v["namespace"])
            assert (reason is None) == v["verifies"], f"{case['name']}: {v}: {reason}"
    elif case["kind"] == "record":
        fields = {k: v for k, v in case["fields"].items() if v is not None}
        try:
            t = parse_record(fields).target_for(case["instance"])
            got = {"sha256": t.sha256, "config": t.config, "sig": t.sig}
        except RecordError as e:
            got = {"malformed": e.field}
        assert got == want, f"{case['name']}: want {want}, got {got}"
    else:  # pragma: no cover
        pytest.fail(f"unknown case kind {case['kind']!r}")
