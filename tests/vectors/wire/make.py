"""Wire conformance vectors (docs/WIRE.md, protocol v2), with expectations written by hand from
the spec, not recorded from a host. `python3 tests/vectors/wire/make.py` rewrites the three JSON
files beside it; every host replays them in its own tests:

decode.json   raw payload -> the decoded message in canonical form, or the malformed kind.
  A case has `payload` (text) or `payload_hex` (raw bytes). `pad_to`: append spaces (JSON white
  space) until the payload is that many bytes. `expand_keys`: replace the text "@KEYS@" in the
  payload by that many comma-separated "k" strings (so `"@KEYS@"` in a JSON array becomes
  "k","k",...). An expectation `{"action": A, "keys_count": n}` checks only the action and the
  number of keys. The canonical form lists exactly these
  fields per action (absent optionals as null; numbers compare by value):
    invalidate      action source epoch timestamp keys strategy seq
    flush           action source epoch timestamp seq
    mark            action source epoch timestamp inval_seq
    strategy_update action source epoch timestamp strategy write_rate inval_seq
    write_report    action source epoch timestamp count inval_seq
    heartbeat       action source epoch timestamp
loss.json     loss-detector event sequences, each event with the verdict it must give.
  `do`: message | position | tick | resubscribed; `at` is the time in ms.
naming.json   (channel_prefix, namespace, instance id, key) -> Redis key, channels and lease key,
  or the configuration error's field (snake_case; a host maps it to its own spelling).
policy.json   section 9 (policy rollout), three kinds of case, by `kind`:
  `announcement`: a payload of P:policy -> {"rollout": n, "source": s} or {"malformed": kind};
  `signature`: seed (secret, hex), public key, prefix, namespace (null: none), sha256, config ->
    the exact signed message (`message`, text) and its ed25519 signature (`sig`, hex), computed
    here with the `cryptography` package (RFC 8032), not by a host; `verifies` lists
    (prefix, namespace, sha256, config) variants and whether the signature verifies for them;
  `record`: the fields of an HGETALL of K policy:current and an instance id -> the target
    {"sha256","config","sig"} that instance runs, or {"malformed": field}.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = "3f2a9c1b0d4e"
EP = "9c1b0d4e3f2a9c1b"
MIB = 1 << 20


def msg(**fields):
    return json.dumps(fields, separators=(",", ":"))


def canon(action, **f):
    shape = {
        "invalidate": ["keys", "strategy", "seq"],
        "flush": ["seq"],
        "mark": ["inval_seq"],
        "strategy_update": ["strategy", "write_rate", "inval_seq"],
        "write_report": ["count", "inval_seq"],
        "heartbeat": [],
    }[action]
    out = {"action": action, "source": f.pop("source", SRC), "epoch": f.pop("epoch", EP),
           "timestamp": f.pop("timestamp", 1.5)}
    for k in shape:
        out[k] = f.pop(k, None)
    assert not f, f"fields not in {action}'s canonical form: {f}"
    return out


def ok(name, payload, expect, **extra):
    return dict({"name": name, "payload": payload, "expect": expect}, **extra)


def bad(name, payload, kind, **extra):
    return dict({"name": name, "payload": payload, "expect": {"malformed": kind}}, **extra)


B = {"source": SRC, "epoch": EP, "timestamp": 1.5}


def decode_cases():
    c = []
    # Well-formed, one per action.
    c.append(ok("invalidate, eager, v2",
                msg(action="invalidate", keys=["aci:shop:user:1", "aci:shop:user:2"], strategy="eager", seq=17, v=2, **B),
                canon("invalidate", keys=["aci:shop:user:1", "aci:shop:user:2"], strategy="eager", seq=17)))
    c.append(ok("invalidate from the original package: no seq, no epoch",
                msg(action="invalidate", keys=["user:1"], strategy="batched", timestamp=1764140000.25, source="0123456789ab"),
                canon("invalidate", keys=["user:1"], strategy="batched", source="0123456789ab", epoch=None, timestamp=1764140000.25)))
    c.append(ok("invalidate without strategy or timestamp",
                msg(action="invalidate", keys=[], source=SRC),
                canon("invalidate", keys=[], epoch=None, timestamp=0)))
    c.append(ok("flush", msg(action="flush", strategy="batched", seq=18, v=2, **B), canon("flush", seq=18)))
    c.append(ok("flush with an unknown strategy: strategy is not read on flush",
                msg(action="flush", strategy="sometimes", seq=3, **B), canon("flush", seq=3)))
    c.append(ok("mark", msg(action="mark", inval_seq=18, v=2, **B), canon("mark", inval_seq=18)))
    c.append(ok("mark at position 0", msg(action="mark", inval_seq=0, **B), canon("mark", inval_seq=0)))
    c.append(ok("strategy_update", msg(action="strategy_update", strategy="batched", write_rate=23.5, inval_seq=18, v=2, **B),
                canon("strategy_update", strategy="batched", write_rate=23.5, inval_seq=18)))
    c.append(ok("strategy_update from the original package",
                msg(action="strategy_update", strategy="eager", write_rate=61.2, timestamp=1764140000.5, source="0123456789ab"),
                canon("strategy_update", strategy="eager", write_rate=61.2, inval_seq=None, source="0123456789ab", epoch=None,
                      timestamp=1764140000.5)))
    c.append(ok("strategy_update without write_rate reads 0",
                msg(action="strategy_update", strategy="ttl", **B), canon("strategy_update", strategy="ttl", write_rate=0)))
    c.append(ok("strategy_update with a negative write_rate reads 0",
                msg(action="strategy_update", strategy="ttl", write_rate=-5, **B),
                canon("strategy_update", strategy="ttl", write_rate=0)))
    c.append(ok("write_report", msg(action="write_report", count=12, inval_seq=4, v=2, **B),
                canon("write_report", count=12, inval_seq=4)))
    c.append(ok("heartbeat", msg(action="heartbeat", v=2, **B), canon("heartbeat")))
    # Numbers.
    c.append(ok("integers may be written as whole floats",
                '{"action":"invalidate","keys":["a"],"seq":17.0,"source":"%s","epoch":"%s","timestamp":1.5}' % (SRC, EP),
                canon("invalidate", keys=["a"], seq=17)))
    c.append(ok("integers may use an exponent",
                '{"action":"write_report","count":1.2e1,"source":"%s","epoch":"%s","timestamp":1.5}' % (SRC, EP),
                canon("write_report", count=12)))
    c.append(ok("the largest seq: 2^53-1", msg(action="flush", seq=2**53 - 1, **B), canon("flush", seq=2**53 - 1)))
    c.append(bad("seq 2^53 is out of range", msg(action="flush", seq=2**53, **B), "bad-field"))
    c.append(bad("seq 0 is out of range (seqs start at 1)", msg(action="flush", seq=0, **B), "bad-field"))
    c.append(bad("a fractional seq", '{"action":"flush","seq":17.5,"source":"%s"}' % SRC, "bad-field"))
    c.append(bad("a negative seq", msg(action="flush", seq=-1, **B), "bad-field"))
    c.append(bad("a seq given as a string", msg(action="flush", seq="17", **B), "bad-field"))
    c.append(ok("the largest count: 2^32-1", msg(action="write_report", count=2**32 - 1, **B),
                canon("write_report", count=2**32 - 1)))
    c.append(bad("count 2^32 is out of range", msg(action="write_report", count=2**32, **B), "bad-field"))
    c.append(bad("count 2^64-1 (the forged report that hung v1 controllers)",
                 msg(action="write_report", count=2**64 - 1, **B), "bad-field"))
    c.append(bad("a negative count", msg(action="write_report", count=-1, **B), "bad-field"))
    c.append(bad("write_report without count", msg(action="write_report", **B), "bad-field"))
    c.append(bad("inval_seq 2^53", msg(action="mark", inval_seq=2**53, **B), "bad-field"))
    c.append(bad("mark without inval_seq", msg(action="mark", **B), "bad-field"))
    c.append(bad("timestamp given as a string", msg(action="heartbeat", source=SRC, timestamp="now"), "bad-field"))
    c.append(bad("write_rate given as a string", msg(action="strategy_update", strategy="ttl", write_rate="5", **B), "bad-field"))
    # Strings and identities.
    c.append(bad("strategy outside the enum", msg(action="strategy_update", strategy="EAGER", **B), "bad-field"))
    c.append(bad("invalidate with a strategy outside the enum", msg(action="invalidate", keys=[], strategy="lazy", **B), "bad-field"))
    c.append(bad("strategy_update without strategy", msg(action="strategy_update", write_rate=1, **B), "bad-field"))
    c.append(bad("no source", msg(action="flush", seq=1, epoch=EP), "bad-field"))
    c.append(bad("empty source", msg(action="flush", seq=1, source="", epoch=EP), "bad-field"))
    c.append(bad("source with a space", msg(action="flush", seq=1, source="a b", epoch=EP), "bad-field"))
    c.append(bad("source of 65 characters", msg(action="flush", seq=1, source="a" * 65, epoch=EP), "bad-field"))
    c.append(ok("source of 64 characters", msg(action="heartbeat", source="a" * 64, epoch=EP, timestamp=1.5),
                canon("heartbeat", source="a" * 64)))
    c.append(bad("source given as a number", msg(action="flush", seq=1, source=12), "bad-field"))
    c.append(bad("epoch with a colon", msg(action="flush", seq=1, source=SRC, epoch="a:b"), "bad-field"))
    c.append(bad("keys not an array", msg(action="invalidate", keys="user:1", **B), "bad-field"))
    c.append(bad("a key that is not a string", msg(action="invalidate", keys=["a", 1], **B), "bad-field"))
    c.append(bad("invalidate without keys", msg(action="invalidate", **B), "bad-field"))
    c.append(ok("keys keep any characters, including colons and newlines",
                msg(action="invalidate", keys=["aci:shop:a:b", "line\nbreak", "", "\u00e9\u6f22"], **B),
                canon("invalidate", keys=["aci:shop:a:b", "line\nbreak", "", "\u00e9\u6f22"])))
    c.append(ok("unknown members are ignored",
                msg(action="heartbeat", future={"x": [1, 2]}, v=3, **B), canon("heartbeat")))
    # Actions and shapes.
    c.append(bad("unknown action", msg(action="evict", **B), "unknown-action"))
    c.append(bad("actions are case-sensitive", msg(action="Invalidate", keys=[], **B), "unknown-action"))
    c.append(bad("missing action", msg(keys=["a"], **B), "bad-field"))
    c.append(bad("action not a string", msg(action=1, **B), "bad-field"))
    c.append(bad("a JSON array", '["invalidate"]', "not-object"))
    c.append(bad("a JSON string", '"invalidate"', "not-object"))
    c.append(bad("JSON null", 'null', "not-object"))
    c.append(bad("not JSON", 'hello', "not-json"))
    c.append(bad("empty payload", '', "not-json"))
    c.append(bad("truncated JSON", '{"action":"flush"', "not-json"))
    c.append(bad("nested 65 levels deep", '{"action":"heartbeat","source":"%s","x":%s1%s}' % (SRC, "[" * 64, "]" * 64),
                 "not-json"))
    c.append(bad("nested 100,000 levels deep", '{"action":"heartbeat","source":"%s","x":%s1%s}'
                 % (SRC, "[" * 100_000, "]" * 100_000), "not-json"))
    c.append(ok("nested 64 levels deep is fine", '{"action":"heartbeat","source":"%s","epoch":"%s","timestamp":1.5,"x":%s1%s}'
                % (SRC, EP, "[" * 32 + "{\"y\":" * 31, "}" * 31 + "]" * 32), canon("heartbeat")))
    c.append(ok("brackets inside strings do not nest",
                '{"action":"heartbeat","source":"%s","epoch":"%s","timestamp":1.5,"x":"%s"}' % (SRC, EP, "[{" * 200),
                canon("heartbeat")))
    c.append(bad("trailing garbage", msg(action="heartbeat", **B) + "x", "not-json"))
    c.append(bad("NaN is not JSON", '{"action":"strategy_update","strategy":"ttl","write_rate":NaN,"source":"%s"}' % SRC, "not-json"))
    c.append(bad("Infinity is not JSON", '{"action":"heartbeat","timestamp":Infinity,"source":"%s"}' % SRC, "not-json"))
    c.append({"name": "invalid UTF-8 inside a key", "expect": {"malformed": "not-json"},
              "payload_hex": ('{"action":"invalidate","keys":["' .encode() + b"\xff\xfe" + b'"],"source":"' + SRC.encode()
                              + b'"}').hex()})
    # Explicit nulls: an optional member that is null is absent; a required one is bad-field.
    c.append(ok("null optional members read as absent",
                '{"action":"invalidate","keys":["a"],"strategy":null,"seq":null,"epoch":null,"timestamp":null,"source":"%s"}' % SRC,
                canon("invalidate", keys=["a"], epoch=None, timestamp=0)))
    c.append(ok("null write_rate and inval_seq read as absent",
                '{"action":"strategy_update","strategy":"eager","write_rate":null,"inval_seq":null,"source":"%s","epoch":"%s","timestamp":1.5}' % (SRC, EP),
                canon("strategy_update", strategy="eager", write_rate=0)))
    c.append(bad("null keys", '{"action":"invalidate","keys":null,"source":"%s"}' % SRC, "bad-field"))
    c.append(bad("null source", '{"action":"heartbeat","source":null}', "bad-field"))
    c.append(bad("null count", '{"action":"write_report","count":null,"source":"%s"}' % SRC, "bad-field"))
    c.append(bad("null action", '{"action":null,"source":"%s"}' % SRC, "bad-field"))
    c.append(bad("null strategy on strategy_update", '{"action":"strategy_update","strategy":null,"source":"%s"}' % SRC,
                 "bad-field"))
    c.append(bad("null inval_seq on mark (required there)", '{"action":"mark","inval_seq":null,"source":"%s"}' % SRC,
                 "bad-field"))
    # Sizes.
    c.append(ok("exactly 1 MiB is accepted", msg(action="heartbeat", **B), canon("heartbeat"), pad_to=MIB))
    c.append(bad("1 MiB + 1 byte is too large, even if valid JSON", msg(action="heartbeat", **B), "too-large", pad_to=MIB + 1))
    c.append(bad("too large wins over not JSON", "x", "too-large", pad_to=MIB + 1))
    c.append(bad("100,001 keys", '{"action":"invalidate","keys":["@KEYS@"],"source":"%s"}' % SRC, "too-many-keys",
                 expand_keys=100_001))
    c.append(dict(ok("100,000 keys are accepted", '{"action":"invalidate","keys":["@KEYS@"],"source":"%s"}' % SRC,
                     {"action": "invalidate", "keys_count": 100_000}), expand_keys=100_000))
    c.append(dict(ok("keys on an action that has none are ignored, however many",
                     '{"action":"heartbeat","keys":["@KEYS@"],"source":"%s","epoch":"%s","timestamp":1.5}' % (SRC, EP),
                     canon("heartbeat")), expand_keys=100_001))
    c.append(bad("too many keys wins over a bad field",
                 '{"action":"invalidate","keys":["@KEYS@"],"seq":"x","source":"%s"}' % SRC, "too-many-keys",
                 expand_keys=100_001))
    return c


def loss_cases():
    def m(at, seq, expect, source="a", epoch="e1"):
        return {"at": at, "do": "message", "source": source, "epoch": epoch, "seq": seq, "expect": expect}

    def p(at, seq, expect, source="a", epoch="e1"):
        return {"at": at, "do": "position", "source": source, "epoch": epoch, "inval_seq": seq, "expect": expect}

    def t(at, expect):
        return {"at": at, "do": "tick", "expect": expect}

    def r(at):
        return {"at": at, "do": "resubscribed", "expect": "ok"}

    return [
        {"name": "in order is fine", "events": [m(0, 1, "ok"), m(1, 2, "ok"), m(2, 3, "ok"), t(1000, "ok")]},
        {"name": "first contact at any seq is fine", "events": [m(0, 77, "ok"), m(1, 78, "ok"), t(1000, "ok")]},
        {"name": "reordered within the allowance is fine",
         "events": [m(0, 1, "ok"), m(10, 3, "ok"), t(100, "ok"), m(200, 2, "ok"), t(1000, "ok")]},
        {"name": "a hole kept 250 ms is a loss, reported once",
         "events": [m(0, 1, "ok"), m(10, 3, "ok"), t(259, "ok"), t(260, "lost"), t(1000, "ok")]},
        {"name": "a hole filled at the last moment is fine",
         "events": [m(0, 1, "ok"), m(10, 3, "ok"), m(259, 2, "ok"), t(260, "ok")]},
        {"name": "a mark reveals a lost last message",
         "events": [m(0, 1, "ok"), p(250, 2, "ok"), t(499, "ok"), t(500, "lost"),
                    m(600, 3, "ok"), p(900, 3, "ok"), t(2000, "ok")]},
        {"name": "a mark in step is no hole", "events": [m(0, 1, "ok"), m(5, 2, "ok"), p(250, 2, "ok"), t(1000, "ok")]},
        {"name": "a position first, then the messages after it",
         "events": [p(0, 5, "ok"), m(10, 6, "ok"), m(20, 7, "ok"), t(1000, "ok")]},
        {"name": "a position first, then a skipped message",
         "events": [p(0, 5, "ok"), m(10, 7, "ok"), t(259, "ok"), t(260, "lost")]},
        {"name": "a stale position is no news", "events": [m(0, 1, "ok"), m(1, 2, "ok"), p(5, 1, "ok"), t(1000, "ok")]},
        {"name": "a new epoch is a loss at once",
         "events": [m(0, 5, "ok"), m(10, 1, "lost", epoch="e2"), m(20, 2, "ok", epoch="e2"), t(1000, "ok")]},
        {"name": "a new epoch seen in a position is a loss at once",
         "events": [m(0, 5, "ok"), p(10, 0, "lost", epoch="e2"), m(20, 1, "ok", epoch="e2"), t(1000, "ok")]},
        {"name": "an epoch appearing where there was none is a new epoch",
         "events": [m(0, 5, "ok", epoch=None), m(10, 6, "lost", epoch="e1")]},
        {"name": "a jump of 64 is a loss at once, 63 waits",
         "events": [m(0, 1, "ok"), m(10, 64, "ok"), t(259, "ok"), t(260, "lost"), m(300, 128, "lost"), t(1000, "ok")]},
        {"name": "an ancient duplicate is ignored",
         "events": [m(0, 100, "ok"), m(1, 101, "ok"), m(2, 30, "ok"), t(1000, "ok")]},
        {"name": "a duplicate is harmless", "events": [m(0, 1, "ok"), m(1, 2, "ok"), m(2, 2, "ok"), t(1000, "ok")]},
        {"name": "senders are independent; a loss flushes, so every pending hole is moot",
         "events": [m(0, 1, "ok", source="a"), m(0, 1, "ok", source="b"), m(10, 3, "ok", source="a"),
                    m(100, 3, "ok", source="b"), t(260, "lost"), t(400, "ok"), m(500, 4, "ok", source="b"), t(1000, "ok")]},
        {"name": "a loss at once also clears the others' holes",
         "events": [m(0, 1, "ok", source="a"), m(5, 3, "ok", source="a"), m(6, 1, "ok", source="b", epoch="y"),
                    m(10, 9, "lost", source="b", epoch="x"),
                    m(11, 10, "ok", source="b", epoch="x"), t(1000, "ok")]},
        {"name": "resubscribing forgets every sender",
         "events": [m(0, 1, "ok"), m(10, 3, "ok"), r(20), t(300, "ok"), m(310, 9, "ok"), m(320, 10, "ok"),
                    m(330, 1, "ok", source="c", epoch="e9"), t(1000, "ok")]},
        {"name": "the same source and epoch over a long quiet spell",
         "events": [m(0, 1, "ok"), t(60_000, "ok"), m(120_000, 2, "ok"), t(200_000, "ok")]},
    ]


def naming_cases():
    def names(prefix, ns, iid):
        P = f"{prefix}:{ns}" if ns is not None else prefix
        lease = f"{prefix}::{ns}:controller" if ns is not None else f"{prefix}::controller"
        return {"invalidation": f"{P}:invalidation", "strategy": f"{P}:strategy", "reports": f"{P}:reports",
                "liveness": f"{P}:liveness:{iid}", "lease": lease}

    def ok_(name, key, redis_key, ns=None, prefix="aci", iid=SRC):
        return {"name": name, "channel_prefix": prefix, "namespace": ns, "instance_id": iid, "key": key,
                "expect": dict(names(prefix, ns, iid), redis_key=redis_key)}

    def err(name, field, key="k", ns=None, prefix="aci", iid=SRC):
        return {"name": name, "channel_prefix": prefix, "namespace": ns, "instance_id": iid, "key": key,
                "expect": {"error": field}}

    return [
        ok_("namespaced key, as the original stores it", "user:1", "aci:shop:user:1", ns="shop"),
        ok_("no namespace: the key as given", "user:1", "user:1"),
        ok_("the original README's namespace", "user:42", "aci:user-service:user:42", ns="user-service"),
        ok_("namespace of 64 characters", "k", "aci:" + "n" * 64 + ":k", ns="n" * 64),
        ok_("dots, digits, underscores", "k", "aci:a.b_9:k", ns="a.b_9"),
        ok_("a custom channel prefix", "k", "app:shop:k", ns="shop", prefix="app"),
        ok_("a configured instance id", "k", "aci:shop:k", ns="shop", iid="node-7_A"),
        ok_("a user key named like the lease is only a user key", "controller", "aci:shop:controller", ns="shop"),
        ok_("a namespaced user key may start with a colon: still not a protocol key", ":controller",
            "aci:shop::controller", ns="shop"),
        ok_("a namespaced user key may look like a protocol key: it stays in its namespace", "aci::controller",
            "aci:shop:aci::controller", ns="shop"),
        ok_("the empty key", "", "aci:shop:", ns="shop"),
        ok_("no namespace: another namespace's key is reachable on purpose", "aci:shop:user:1", "aci:shop:user:1"),
        ok_("no namespace: one colon after the prefix is a user key", "aci:controller", "aci:controller"),
        err("a colon in the namespace", "namespace", ns="a:b"),
        err("an empty namespace", "namespace", ns=""),
        err("a space in the namespace", "namespace", ns="my app"),
        err("a newline in the namespace", "namespace", ns="shop\n"),
        err("a tab in the namespace", "namespace", ns="\tshop"),
        err("a control character in the namespace", "namespace", ns="sh\u0000op"),
        err("a non-ASCII namespace", "namespace", ns="caf\u00e9"),
        err("a glob character in the namespace", "namespace", ns="shop*"),
        err("a brace in the namespace", "namespace", ns="{shop}"),
        err("a namespace of 65 characters", "namespace", ns="n" * 65),
        err("a colon in the channel prefix", "channel_prefix", prefix="a:b"),
        err("an empty channel prefix", "channel_prefix", prefix=""),
        err("no namespace: a key in the protocol key space", "key", key="aci::controller"),
        err("no namespace: any key under <prefix>::", "key", key="aci::"),
        err("no namespace, custom prefix: its protocol key space", "key", key="app::x", prefix="app"),
        err("an instance id with a colon", "instance_id", iid="a:b"),
        err("an empty instance id", "instance_id", iid=""),
        err("an instance id of 65 characters", "instance_id", iid="i" * 65),
    ]


def write(name, cases):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        json.dump({"spec": "docs/WIRE.md v2", "generated_by": "tests/vectors/wire/make.py", "cases": cases}, f,
                  indent=1, ensure_ascii=True)
        f.write("\n")


def policy_cases():
    cases = []

    def ann(name, payload, expect):
        cases.append({"kind": "announcement", "name": name, "payload": payload, "expect": expect})

    ann("a policy announcement", msg(action="policy", rollout=7, timestamp=1.5, source="cli-3f2a", v=2),
        {"rollout": 7, "source": "cli-3f2a"})
    ann("rollout as 7.0", '{"action":"policy","rollout":7.0,"source":"a"}', {"rollout": 7, "source": "a"})
    ann("the largest rollout", msg(action="policy", rollout=2 ** 53 - 1, source="a"), {"rollout": 2 ** 53 - 1, "source": "a"})
    ann("rollout 0", msg(action="policy", rollout=0, source="a"), {"malformed": "bad-field"})
    ann("rollout past 2^53-1", msg(action="policy", rollout=2 ** 53, source="a"), {"malformed": "bad-field"})
    ann("rollout as a string", msg(action="policy", rollout="7", source="a"), {"malformed": "bad-field"})
    ann("no rollout", msg(action="policy", source="a"), {"malformed": "bad-field"})
    ann("null rollout", '{"action":"policy","rollout":null,"source":"a"}', {"malformed": "bad-field"})
    ann("no source", msg(action="policy", rollout=1), {"malformed": "bad-field"})
    ann("a bad source", msg(action="policy", rollout=1, source="a:b"), {"malformed": "bad-field"})
    ann("another action on P:policy", msg(action="invalidate", keys=[], source="a"), {"malformed": "unknown-action"})
    ann("no action", msg(rollout=1, source="a"), {"malformed": "bad-field"})
    ann("not an object", "[1]", {"malformed": "not-object"})
    ann("not JSON", "policy 7", {"malformed": "not-json"})
    ann("too deep", "[" * 65 + "]" * 65, {"malformed": "not-json"})
    cases.append({"kind": "announcement", "name": "over 1 MiB", "payload": msg(action="policy", rollout=1, source="a"),
                  "pad_to": MIB + 1, "expect": {"malformed": "too-large"}})

    # Signatures (section 9.5): computed with an independent implementation.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives import serialization
    seed = bytes(range(32))
    key = Ed25519PrivateKey.from_private_bytes(seed)
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    h = "ab" * 32

    def message(prefix, ns, sha, config):
        return "aci-cache policy v1\n%s\n%s\n%s\n%s" % (prefix, ns or "", sha, config)

    for name, prefix, ns, config in [("namespace shop, no config", "aci", "shop", ""),
                                     ("no namespace, a config", "aci", None, '{"initial-strategy":"eager"}')]:
        text = message(prefix, ns, h, config)
        sig = key.sign(text.encode()).hex()
        variants = [
            {"prefix": prefix, "namespace": ns, "sha256": h, "config": config, "verifies": True},
            {"prefix": prefix, "namespace": "other", "sha256": h, "config": config, "verifies": False},
            {"prefix": "acx", "namespace": ns, "sha256": h, "config": config, "verifies": False},
            {"prefix": prefix, "namespace": ns, "sha256": "cd" * 32, "config": config, "verifies": False},
            {"prefix": prefix, "namespace": ns, "sha256": h, "config": config + " ", "verifies": False},
        ]
        cases.append({"kind": "signature", "name": name, "seed": seed.hex(), "public_key": pub, "prefix": prefix,
                      "namespace": ns, "sha256": h, "config": config, "message": text, "sig": sig, "verifies": variants})

    a, b, s64 = "aa" * 32, "bb" * 32, "11" * 64

    def rec(**f):
        base = {"rollout": "3", "sha256": a, "config": "", "sig": s64, "previous": b, "previous_config": "",
                "previous_sig": "", "canary": "", "name": "fixed", "version": "0.1.0", "by": "cli@h", "reason": "push",
                "at": "1764140000.5"}
        base.update(f)
        return {k: v for k, v in base.items() if v is not None}

    def record(name, fields, iid, expect):
        cases.append({"kind": "record", "name": name, "fields": fields, "instance": iid, "expect": expect})

    record("everyone runs the target", rec(), "i1", {"sha256": a, "config": "", "sig": s64})
    record("a canary member runs the target", rec(canary="i1,i2"), "i2", {"sha256": a, "config": "", "sig": s64})
    record("a non-member runs previous", rec(canary="i1,i2"), "i3", {"sha256": b, "config": "", "sig": ""})
    record("an empty hash: the local policy", rec(sha256="", sig=""), "i1", {"sha256": "", "config": "", "sig": ""})
    record("a config override", rec(config='{"initial-strategy":"eager"}'), "i1",
           {"sha256": a, "config": '{"initial-strategy":"eager"}', "sig": s64})
    record("no rollout", rec(rollout=None), "i1", {"malformed": "rollout"})
    record("rollout 0", rec(rollout="0"), "i1", {"malformed": "rollout"})
    record("rollout +3", rec(rollout="+3"), "i1", {"malformed": "rollout"})
    # The record script compares the text: a leading zero would never match what a host sends.
    record("rollout 03", rec(rollout="03"), "i1", {"malformed": "rollout"})
    record("upper-case hash", rec(sha256=a.upper()), "i1", {"malformed": "sha256"})
    record("short hash", rec(sha256="aa"), "i1", {"malformed": "sha256"})
    record("config not an object", rec(config="[1]"), "i1", {"malformed": "config"})
    record("config over 4096 bytes", rec(config='{"x":"' + "y" * 4096 + '"}'), "i1", {"malformed": "config"})
    record("short signature", rec(sig="11" * 63), "i1", {"malformed": "sig"})
    record("bad previous", rec(previous="zz" * 32), "i1", {"malformed": "previous"})
    record("a canary id with a colon", rec(canary="i1,a:b"), "i1", {"malformed": "canary"})
    record("an empty canary id", rec(canary="i1,,i2"), "i1", {"malformed": "canary"})
    record("a reason over 200 characters", rec(reason="r" * 201), "i1", {"malformed": "reason"})
    return cases


if __name__ == "__main__":
    write("policy.json", policy_cases())
    write("decode.json", decode_cases())
    write("loss.json", loss_cases())
    write("naming.json", naming_cases())
