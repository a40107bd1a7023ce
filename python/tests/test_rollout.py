"""Following policy rollouts (docs/WIRE.md 9) against a real redis-server: the test writes the
rollout record the way a pushing tool must (blob, compare-and-set script, announcement), and
checks what each instance runs, refuses and reports."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from nacl.signing import SigningKey

from aci_cache import ConfigValueError
from aci_cache.engine import policy_path
from aci_cache.rollout import CAS_LUA, MAX_COMPONENT_BYTES, parse_record, signed_message

from conftest import wait_for
from test_swap import _fixture_policy

FIXED = policy_path("fixed").read_bytes()
ADAPTIVE = policy_path("adaptive").read_bytes()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class Pusher:
    """What `aci policy push / rollback` writes, for one namespace (prefix `aci`)."""

    def __init__(self, r, ns: str, key: SigningKey = None):
        self.r, self.ns, self.key = r, ns, key
        self.k = f"aci::{ns}:"
        self.channel = f"aci:{ns}:policy"

    def record(self):
        return parse_record(self.r.hgetall(self.k + "policy:current"))

    def write(self, fields: dict, expected: int = None) -> int:
        cur = int(self.r.hget(self.k + "policy:current", "rollout") or 0)
        if expected is not None:
            cur = expected
        n = cur + 1
        full = {"rollout": str(n), "sha256": "", "config": "", "sig": "", "previous": "", "previous_config": "",
                "previous_sig": "", "canary": "", "name": "", "version": "", "by": "test", "reason": "push",
                "at": f"{time.time():.3f}"}
        full.update(fields)
        ann = json.dumps({"action": "policy", "rollout": n, "timestamp": time.time(), "source": "test-pusher", "v": 2})
        args = [str(cur), self.channel, ann]
        for k, v in full.items():
            args += [k, v]
        assert self.r.eval(CAS_LUA, 1, self.k + "policy:current", *args) == 1
        return n

    def sign(self, h: str, config: str, key: SigningKey = None, ns: str = None) -> str:
        key = key or self.key
        return key.sign(signed_message("aci", ns or self.ns, h, config)).signature.hex()

    def push(self, data: bytes, *, config: str = "", signed: bool = True, canary=(), store: bytes = None) -> str:
        h = sha(data)
        self.r.set(self.k + "policy:blob:" + h, data if store is None else store, nx=True)
        rec = self.record()
        prev = ("", "", "")
        if rec is not None:
            t = rec.target if not rec.canary else rec.previous
            prev = (t.sha256, t.config, t.sig)
        self.write({"sha256": h, "config": config, "sig": self.sign(h, config) if signed else "",
                    "previous": prev[0], "previous_config": prev[1], "previous_sig": prev[2],
                    "canary": ",".join(canary)})
        return h

    def rollback(self) -> None:
        rec = self.record()
        t, p = rec.target, rec.previous
        self.write({"sha256": p.sha256, "config": p.config, "sig": p.sig, "previous": t.sha256,
                    "previous_config": t.config, "previous_sig": t.sig, "reason": "rollback"})

    def status(self, instance_id: str):
        v = self.r.get(f"{self.k}policy:status:{instance_id}")
        return json.loads(v) if v else None


@pytest.fixture
def key():
    return SigningKey.generate()


def pub(key: SigningKey) -> str:
    return key.verify_key.encode().hex()


def test_signed_push_is_run_and_an_unsigned_one_refused(make_cache, ns, r, key):
    a = make_cache(namespace=ns, role="controller", policy_public_key=pub(key))
    b = make_cache(namespace=ns, role="follower", policy_public_key=pub(key))
    p = Pusher(r, ns, key)
    assert wait_for(lambda: p.status(a.instance_id) is not None, timeout=3)
    st = p.status(a.instance_id)
    assert st["origin"] == "local" and st["sha256"] == sha(ADAPTIVE) and st["host"] == "python"
    assert st["trust"] == "key" and st["rollout"] == 0 and st["rejected"] is None

    t0 = time.monotonic()
    h = p.push(FIXED, config='{"initial-strategy":"eager"}')
    assert wait_for(lambda: a.policy.sha256 == h and b.policy.sha256 == h, timeout=2), (a.policy_status(), b.policy_status())
    assert wait_for(lambda: a.strategy == "eager" and b.strategy == "eager", timeout=2), (a.strategy, b.strategy)
    assert time.monotonic() - t0 < 2.5
    assert wait_for(lambda: (p.status(a.instance_id) or {}).get("sha256") == h, timeout=2)
    st = p.status(a.instance_id)
    assert st["origin"] == "pushed" and st["rollout"] == 1 and st["name"] == "fixed" and st["strategy"] == "eager"
    assert a.stats["policy_origin"] == "pushed" and a.stats["policy_rollout"] == 1

    # unsigned: refused by both, with the reason in their status; they keep running fixed
    p.push(ADAPTIVE, signed=False)
    for c in (a, b):
        assert wait_for(lambda: (p.status(c.instance_id) or {}).get("rejected"), timeout=2), c.policy_status()
        rej = p.status(c.instance_id)["rejected"]
        assert rej["rollout"] == 2 and rej["sha256"] == sha(ADAPTIVE) and rej["reason"].startswith("unsigned")
        assert c.policy.sha256 == h
    # rollback: to what ran before the refused push's record said (fixed), then local again
    p.rollback()  # record 3: target = previous of record 2 = fixed (running already), previous = unsigned adaptive
    p.write({"sha256": "", "previous": h, "reason": "rollback"})  # back to the local policies
    assert wait_for(lambda: a.policy.sha256 == sha(ADAPTIVE) and b.policy.sha256 == sha(ADAPTIVE), timeout=2), \
        (a.policy_status(), b.policy_status())
    assert wait_for(lambda: a.stats["policy_origin"] == "local" and a.stats["policy_rollout"] == 4, timeout=1)


def test_a_record_of_the_running_target_with_another_signature_changes_nothing(make_cache, ns, r, key):
    # docs/WIRE.md 9.3: "the same target" is the same hash and config; the signature only says
    # how a target was approved (Rust, JS and Go compare the same way).
    a = make_cache(namespace=ns, role="controller", policy_public_key=pub(key))
    p = Pusher(r, ns, key)
    h = p.push(FIXED)
    assert wait_for(lambda: a.policy.sha256 == h, timeout=2), a.policy_status()
    swaps = a.stats["policy_swaps"]
    other = SigningKey.generate()
    n = p.write({"sha256": h, "sig": p.sign(h, "", key=other), "reason": "re-signed"})
    assert wait_for(lambda: a.stats["policy_rollout"] == n, timeout=2), a.policy_status()
    assert a.policy.sha256 == h and a.stats["policy_swaps"] == swaps
    assert wait_for(lambda: (p.status(a.instance_id) or {}).get("rollout") == n, timeout=2)
    assert p.status(a.instance_id)["rejected"] is None, "nothing to adopt, so nothing to refuse"


def test_refusals_name_their_reason(make_cache, ns, r, key):
    other = SigningKey.generate()
    a = make_cache(namespace=ns, role="controller", policy_public_key=pub(key))
    p = Pusher(r, ns, key)
    running = a.policy

    def refused(prefix: str, rollout: int):
        assert wait_for(lambda: ((p.status(a.instance_id) or {}).get("rejected") or {}).get("rollout") == rollout,
                        timeout=2), p.status(a.instance_id)
        reason = p.status(a.instance_id)["rejected"]["reason"]
        assert reason.startswith(prefix), reason
        assert a.policy == running

    h = sha(FIXED)
    p.write({"sha256": h, "sig": p.sign(h, "", key=other)})
    refused("bad signature", 1)
    p.write({"sha256": h, "sig": p.sign(h, "", ns=ns + "x")})  # signed for another fleet
    refused("bad signature", 2)
    p.write({"sha256": h, "sig": p.sign(h, "")})  # no blob stored
    refused("missing", 3)
    r.set(p.k + "policy:blob:" + h, ADAPTIVE)  # bytes that are not this hash
    p.write({"sha256": h, "sig": p.sign(h, "")})
    refused("hash mismatch", 4)
    big = b"\0asm" + b"\0" * MAX_COMPONENT_BYTES
    r.set(p.k + "policy:blob:" + sha(big), big)
    p.write({"sha256": sha(big), "sig": p.sign(sha(big), "")})
    refused("too large", 5)
    junk = b"\0asm\x0d\x00\x01\x00junk"
    r.set(p.k + "policy:blob:" + sha(junk), junk)
    p.write({"sha256": sha(junk), "sig": p.sign(sha(junk), "")})
    refused("invalid component", 6)
    r.delete(p.k + "policy:blob:" + h)
    r.set(p.k + "policy:blob:" + h, FIXED)
    p.write({"sha256": h, "config": '{"colour":1}', "sig": p.sign(h, '{"colour":1}')})
    refused("config: colour", 7)
    p.write({"sha256": h, "config": '{"window-ms":-5}', "sig": p.sign(h, '{"window-ms":-5}')})
    refused("config: window-ms", 8)
    r.hset(p.k + "policy:bad", h, "it looped")
    p.write({"sha256": h, "sig": p.sign(h, "")})
    refused("marked bad: it looped", 9)
    r.hdel(p.k + "policy:bad", h)
    p.write({"sha256": "ABC"})
    refused("malformed record: sha256", 10)
    # a forged announcement is only a hint, and a malformed one is counted
    r.publish(p.channel, json.dumps({"action": "policy", "rollout": 99, "source": "x"}))
    r.publish(p.channel, json.dumps({"action": "invalidate", "keys": [], "source": "x"}))
    assert wait_for(lambda: a.stats["malformed_by_kind"].get("unknown-action") == 1, timeout=2)
    # and then a good one is run
    p.write({"sha256": h, "sig": p.sign(h, "")})
    assert wait_for(lambda: a.policy.sha256 == h, timeout=2)


def test_without_trust_pushes_are_ignored_and_reported(make_cache, ns, r, key):
    a = make_cache(namespace=ns)
    p = Pusher(r, ns, key)
    p.push(FIXED)
    assert wait_for(lambda: ((p.status(a.instance_id) or {}).get("rejected") or {}).get("rollout") == 1, timeout=2)
    st = p.status(a.instance_id)
    assert st["trust"] == "none" and st["rejected"]["reason"].startswith("no policy trust configured")
    assert a.policy.name == "adaptive" and st["origin"] == "local"


def test_allow_list_and_late_joiner(make_cache, ns, r):
    p = Pusher(r, ns)
    h = p.push(FIXED, signed=False)
    # started after the push: runs it before serving
    a = make_cache(namespace=ns, policy_allow_hashes=[h])
    assert a.policy.sha256 == h and a.stats["policy_rollout"] == 1
    # allow-listed with a config override: only a signature may do that
    p.write({"sha256": h, "config": '{"initial-strategy":"eager"}'})
    assert wait_for(lambda: ((p.status(a.instance_id) or {}).get("rejected") or {}).get("rollout") == 2, timeout=2)
    assert "config override" in p.status(a.instance_id)["rejected"]["reason"]
    with pytest.raises(ConfigValueError) as ei:
        make_cache(namespace=ns, policy_allow_hashes=["ABC"])
    assert ei.value.field == "policy_allow_hashes"
    with pytest.raises(ConfigValueError) as ei:
        make_cache(namespace=ns, policy_public_key="00")
    assert ei.value.field == "policy_public_key"


def test_canary_and_automatic_rollback(make_cache, ns, r, key):
    """A hostile canary faults, rolls itself and the fleet back, and marks the hash bad: the rest
    of the fleet never loads it."""
    hostile = _fixture_policy("hostile").read_bytes()
    # the hostile policy loops on a key ending in "hostile:loop" (namespaced keys do)
    a = make_cache(namespace=ns, role="controller", policy_public_key=pub(key), instance_id="a-canary",
                   policy_rollback_faults=2, sliding_window=1.0)
    b = make_cache(namespace=ns, role="follower", policy_public_key=pub(key), instance_id="b-rest")
    p = Pusher(r, ns, key)
    h = p.push(hostile, canary=["a-canary"])
    assert wait_for(lambda: a.policy.sha256 == h, timeout=2)
    time.sleep(0.3)
    assert b.policy.sha256 == sha(ADAPTIVE) and b.stats["policy_rollout"] == 1
    for _ in range(2):
        before = a.stats["engine_faults"]
        a.set("hostile:loop", "x")
        assert wait_for(lambda: a.stats["engine_faults"] > before, timeout=5)
        # revived after a window (1 s), unless rolled back already
        wait_for(lambda: not a.stats["policy"].endswith("(faulted)"), timeout=3)
    assert wait_for(lambda: a.policy.sha256 == sha(ADAPTIVE), timeout=3)
    assert wait_for(lambda: r.hget(p.k + "policy:bad", h) is not None, timeout=2)
    assert r.hget(p.k + "policy:bad", h).startswith(b"auto-rollback: a-canary: 2 faults")
    assert wait_for(lambda: p.record().rollout == 2, timeout=2)
    rec = p.record()
    assert rec.rollout == 2 and rec.target.sha256 == "" and rec.previous.sha256 == h and not rec.canary
    assert rec.fields["by"] == "a-canary" and rec.fields["reason"].startswith("auto-rollback: a-canary")
    assert wait_for(lambda: a.stats["policy_rollout"] == 2 and b.stats["policy_rollout"] == 2, timeout=2)
    assert b.policy.sha256 == sha(ADAPTIVE) and b.stats["policy_swaps"] == 0
    # a push of it for everyone now is refused: marked bad (a push by the tool would clear it)
    p.write({"sha256": h, "sig": p.sign(h, "")})
    assert wait_for(lambda: ((p.status(b.instance_id) or {}).get("rejected") or {}).get("rollout") == 3, timeout=2)
    assert p.status(b.instance_id)["rejected"]["reason"].startswith("marked bad")
    assert b.stats["policy_swaps"] == 0


def test_a_local_swap_becomes_the_local_policy(make_cache, ns, r):
    """As in the Rust host: what swap_policy installs is what a rollout back to "local" runs."""
    p = Pusher(r, ns)
    a = make_cache(namespace=ns, role="controller", policy_allow_hashes=[sha(FIXED)])
    a.swap_policy("fixed", strategy="eager")
    assert a.strategy == "eager" and a.stats["policy_origin"] == "local"
    p.push(FIXED, signed=False)  # allow-listed: runs with the host's own config (initial ttl)
    assert wait_for(lambda: a.stats["policy_origin"] == "pushed" and a.strategy == "ttl", timeout=2)
    p.write({"sha256": "", "previous": sha(FIXED), "reason": "rollback"})
    assert wait_for(lambda: a.stats["policy_origin"] == "local" and a.strategy == "eager", timeout=2)
    assert a.policy.name == "fixed"


def test_asyncio_instance_follows_a_push(redis_server, ns, r, key):
    import asyncio

    import redis.asyncio as aredis

    from aci_cache import AsyncAdaptiveCache

    p = Pusher(r, ns, key)
    h = p.push(FIXED, config='{"initial-strategy":"batched"}')

    async def main():
        client = aredis.Redis(host=redis_server.host, port=redis_server.port)
        async with AsyncAdaptiveCache(client, namespace=ns, role="controller", policy_public_key=pub(key)) as a:
            assert a.policy.sha256 == h and a.strategy == "batched"  # a late joiner, before serving
            p.push(ADAPTIVE)
            deadline = time.monotonic() + 2
            while a.policy.sha256 != sha(ADAPTIVE) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert a.policy.sha256 == sha(ADAPTIVE) and a.stats["policy_origin"] == "pushed"
            st = a.policy_status()
            assert st["rollout"] == 2 and st["origin"] == "pushed" and st["trust"] == "key"
        await client.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("payload, kind", [
    (b'{"action":"policy","rollout":7,"source":"cli-1","v":2}', None),
    (b'{"action":"policy","rollout":7.0,"source":"cli-1","epoch":"ab","timestamp":1.5}', None),
    (b" " * (1 << 20) + b"{}", "too-large"),
    (b"\xff", "not-json"),
    (b"[" * 65 + b"]" * 65, "not-json"),
    (b"NaN", "not-json"),
    (b"[1]", "not-object"),
    (b'{"action":"invalidate","keys":[],"source":"x"}', "unknown-action"),
    (b'{"rollout":1,"source":"x"}', "bad-field"),
    (b'{"action":null,"rollout":1,"source":"x"}', "bad-field"),
    (b'{"action":"policy","source":"x"}', "bad-field"),
    (b'{"action":"policy","rollout":0,"source":"x"}', "bad-field"),
    (b'{"action":"policy","rollout":9007199254740992,"source":"x"}', "bad-field"),
    (b'{"action":"policy","rollout":1.5,"source":"x"}', "bad-field"),
    (b'{"action":"policy","rollout":1}', "bad-field"),
    (b'{"action":"policy","rollout":1,"source":"a b"}', "bad-field"),
])
def test_announcement_decoding(payload, kind):
    """WIRE.md 9.3: the checks of 2.3 in order; on P:policy only `policy` is an action."""
    from aci_cache import wire

    if kind is None:
        assert wire.decode_policy(payload)["rollout"] == 7
    else:
        with pytest.raises(wire.Malformed) as ei:
            wire.decode_policy(payload)
        assert ei.value.kind == kind


def test_record_parsing():
    from aci_cache.rollout import RecordError

    good = {"rollout": "3", "sha256": "a" * 64, "config": '{"hold-ms":1}', "sig": "b" * 128, "previous": "",
            "previous_config": "", "previous_sig": "", "canary": "x1,x2", "name": "n", "version": "v", "by": "cli",
            "reason": "push", "at": "1.5"}
    rec = parse_record(good)
    assert rec.rollout == 3 and rec.target.sha256 == "a" * 64 and rec.canary == ("x1", "x2")
    assert rec.target_for("x2") == rec.target and rec.target_for("y").local
    assert parse_record({}) is None
    for field, value in [("rollout", "0"), ("rollout", "01"), ("rollout", "9007199254740992"), ("sha256", "A" * 64),
                         ("sig", "b" * 127), ("config", "[1]"), ("config", "{"), ("config", "{" + " " * 4096 + "}"),
                         ("canary", "a,,b"), ("canary", ",".join(["i"] * 1001)), ("name", "n" * 65),
                         ("previous", "c" * 63)]:
        with pytest.raises(RecordError) as ei:
            parse_record({**good, field: value})
        assert ei.value.field == field
