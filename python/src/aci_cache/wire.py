"""Fleet protocol v2 (docs/WIRE.md): names, message decoding and encoding, the loss detector.

Pure functions and data structures, no I/O and no locks: the cache core calls them under its own
lock, and the conformance tests replay tests/vectors/wire/*.json against them directly.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

__all__ = [
    "ACTIONS",
    "MALFORMED_KINDS",
    "MAX_MESSAGE_BYTES",
    "MAX_MESSAGE_KEYS",
    "MAX_KEYS_PER_MESSAGE",
    "PROTOCOL_VERSION",
    "REORDER_ALLOWANCE_MS",
    "U32_MAX",
    "SEQ_MAX",
    "Malformed",
    "NameError_",
    "Names",
    "LossDetector",
    "decode",
    "decode_policy",
    "encode",
    "new_instance_id",
    "new_epoch",
    "check_instance_id",
]

PROTOCOL_VERSION = 2
MAX_MESSAGE_BYTES = 1 << 20
MAX_MESSAGE_KEYS = 100_000
#: A sender splits a batch into messages of at most this many keys (section 2.4).
MAX_KEYS_PER_MESSAGE = 10_000
U32_MAX = (1 << 32) - 1
SEQ_MAX = (1 << 53) - 1
REORDER_ALLOWANCE_MS = 250
MAX_SOURCES = 4096
STRATEGIES = ("ttl", "batched", "eager")
ACTIONS = ("invalidate", "flush", "mark", "strategy_update", "write_report", "heartbeat")
#: In the order of section 2.3 (the first that applies is the kind).
MALFORMED_KINDS = ("too-large", "not-json", "not-object", "unknown-action", "too-many-keys", "bad-field")

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


# --------------------------------------------------------------------------------------------
# Names (section 1)


class NameError_(ValueError):
    """A name refused by section 1; ``field`` is the setting (``namespace``, ``channel_prefix``,
    ``instance_id``) or ``key``."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}")
        self.field = field
        self.message = message


def _check_name(field: str, v: Any) -> str:
    # fullmatch: re's `$` would accept a trailing newline
    if not isinstance(v, str) or not _NAME.fullmatch(v):
        raise NameError_(field, f"must be 1 to 64 of A-Z a-z 0-9 . _ - (docs/WIRE.md 1.1), got {v!r}")
    return v


def check_instance_id(v: Any) -> str:
    if not isinstance(v, str) or not _ID.fullmatch(v):
        raise NameError_("instance_id", f"must be 1 to 64 of A-Z a-z 0-9 _ - (docs/WIRE.md 1.4), got {v!r}")
    return v


def new_instance_id() -> str:
    return secrets.token_hex(6)


def new_epoch() -> str:
    return secrets.token_hex(8)


class Names:
    """Every Redis name an instance uses (section 1.2, 1.3)."""

    __slots__ = ("prefix", "namespace", "instance_id", "p", "key_prefix", "reserved", "invalidation",
                 "strategy", "reports", "liveness", "lease")

    def __init__(self, prefix: str, namespace: Optional[str], instance_id: str):
        self.prefix = _check_name("channel_prefix", prefix)
        self.namespace = None if namespace is None else _check_name("namespace", namespace)
        self.instance_id = check_instance_id(instance_id)
        p = prefix if namespace is None else f"{prefix}:{namespace}"
        self.p = p
        self.key_prefix = "" if namespace is None else f"{p}:"
        self.reserved = f"{prefix}::"
        self.invalidation = f"{p}:invalidation"
        self.strategy = f"{p}:strategy"
        self.reports = f"{p}:reports"
        self.liveness = f"{p}:liveness:{instance_id}"
        self.lease = self.protocol_key("controller")

    def cluster_channels(self) -> Tuple[str, str, str, str]:
        """The channels on a Redis Cluster (docs/WIRE.md "Redis Cluster"): the same names under
        one hash tag ``{P}``, so all of them live in one slot (sharded Pub/Sub)."""
        t = "{" + self.p + "}"
        return (f"{t}:invalidation", f"{t}:strategy", f"{t}:reports", f"{t}:liveness:{self.instance_id}")

    def protocol_key(self, name: str) -> str:
        if self.namespace is None:
            return f"{self.prefix}::{name}"
        return f"{self.prefix}::{self.namespace}:{name}"

    def redis_key(self, key: str) -> str:
        """The Redis key of a user key (a ``str``; the caller converts bytes)."""
        if self.key_prefix:
            return self.key_prefix + key
        if key.startswith(self.reserved):
            raise NameError_("key", f"{key!r} is reserved: keys starting with {self.reserved!r} are the protocol's "
                                    "(docs/WIRE.md 1.2); use a namespace")
        return key


# --------------------------------------------------------------------------------------------
# Decoding (section 2)


class Malformed(Exception):
    """A refused payload; ``kind`` is one of MALFORMED_KINDS."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_loads = json.JSONDecoder(parse_constant=_reject_constant).decode
try:  # the C escaper json itself uses (ensure_ascii=False)
    from json.encoder import c_encode_basestring as _c_jstr  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    _c_jstr = None
_jstr = _c_jstr or json.encoder.encode_basestring  # type: ignore[attr-defined]


def _int(m: Dict[str, Any], name: str, lo: int, hi: int, required: bool) -> Optional[int]:
    v = m.get(name)
    if v is None:
        if required:
            raise Malformed("bad-field", f"{name} missing")
        return None
    if type(v) is int:
        if lo <= v <= hi:
            return v
    elif type(v) is float and v.is_integer() and lo <= v <= hi:
        return int(v)
    raise Malformed("bad-field", f"{name} {v!r} is not an integer in {lo}..{hi}")


def _num(m: Dict[str, Any], name: str, default: float) -> float:
    v = m.get(name)
    if v is None:
        return default
    if type(v) is int or type(v) is float:
        return v
    raise Malformed("bad-field", f"{name} {v!r} is not a number")


def _ident(m: Dict[str, Any], name: str, required: bool) -> Optional[str]:
    v = m.get(name)
    if v is None:
        if required:
            raise Malformed("bad-field", f"{name} missing")
        return None
    if type(v) is str and _ID.fullmatch(v):
        return v
    raise Malformed("bad-field", f"{name} {v!r} is not 1-64 of [A-Za-z0-9_-]")


#: Arrays and objects nested deeper than this are not-json (docs/WIRE.md 2.3), as in every host.
MAX_DEPTH = 64


def _nesting_exceeds(text: str, limit: int) -> bool:
    # Only a payload with more brackets than the limit can nest that deep: str.count runs in C,
    # so ordinary messages never pay for the character loop below.
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "[" or ch == "{":
            depth += 1
            if depth > limit:
                return True
        elif ch == "]" or ch == "}":
            depth = max(0, depth - 1)
    return False


def decode(payload: Union[bytes, bytearray, str]) -> Dict[str, Any]:
    """Decode one payload into its canonical form (the fields of its action, absent optionals as
    None; docs/WIRE.md 2.1), or raise :class:`Malformed`. Bounded work on any input.

    A JSON ``null`` member is an absent one (bad-field where the member is required)."""
    if isinstance(payload, str):
        # a str from a decode_responses client; lone surrogates come back as invalid UTF-8
        payload = payload.encode("utf-8", "surrogatepass")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise Malformed("too-large", f"{len(payload)} bytes")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as e:
        raise Malformed("not-json", f"not UTF-8: {e}") from None
    if _nesting_exceeds(text, MAX_DEPTH):
        raise Malformed("not-json", f"nested deeper than {MAX_DEPTH} levels")
    try:
        m = _loads(text)
    except (ValueError, RecursionError) as e:
        raise Malformed("not-json", str(e)[:200]) from None
    if type(m) is not dict:
        raise Malformed("not-object", type(m).__name__)
    action = m.get("action")
    if type(action) is str and action not in ACTIONS:
        raise Malformed("unknown-action", repr(action[:64]))
    keys = m.get("keys")
    if action == "invalidate" and type(keys) is list and len(keys) > MAX_MESSAGE_KEYS:
        raise Malformed("too-many-keys", f"{len(keys)} keys")
    if type(action) is not str:
        raise Malformed("bad-field", "action missing" if action is None else f"action {action!r}")
    out: Dict[str, Any] = {
        "action": action,
        "source": _ident(m, "source", True),
        "epoch": _ident(m, "epoch", False),
        "timestamp": _num(m, "timestamp", 0),
    }
    if action == "invalidate":
        if type(keys) is not list:
            raise Malformed("bad-field", "keys missing" if keys is None else "keys is not an array")
        for k in keys:
            if type(k) is not str:
                raise Malformed("bad-field", f"a key is not a string: {k!r}"[:200])
        out["keys"] = keys
        s = m.get("strategy")
        if s is not None and s not in STRATEGIES:
            raise Malformed("bad-field", f"strategy {s!r}"[:200])
        out["strategy"] = s
        out["seq"] = _int(m, "seq", 1, SEQ_MAX, False)
    elif action == "flush":
        out["seq"] = _int(m, "seq", 1, SEQ_MAX, False)
    elif action == "mark":
        out["inval_seq"] = _int(m, "inval_seq", 0, SEQ_MAX, True)
    elif action == "strategy_update":
        s = m.get("strategy")
        if s not in STRATEGIES:
            raise Malformed("bad-field", f"strategy {s!r}"[:200])
        out["strategy"] = s
        rate = _num(m, "write_rate", 0)
        out["write_rate"] = rate if rate > 0 else 0
        out["inval_seq"] = _int(m, "inval_seq", 0, SEQ_MAX, False)
    elif action == "write_report":
        out["count"] = _int(m, "count", 0, U32_MAX, True)
        out["inval_seq"] = _int(m, "inval_seq", 0, SEQ_MAX, False)
    return out


# --------------------------------------------------------------------------------------------
# Encoding


class Encoder:
    """Builds one sender's payloads. Every payload starts with ``own_prefix`` (source, epoch,
    timestamp first) so the receiving side can recognise its own messages and read their
    timestamp without parsing them."""

    __slots__ = ("own_prefix", "own_prefix_b", "_dumps")

    def __init__(self, instance_id: str, epoch: str):
        self.own_prefix = f'{{"source":"{instance_id}","epoch":"{epoch}","timestamp":'
        self.own_prefix_b = self.own_prefix.encode()
        self._dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode

    def encode(self, action: str, now: float, **fields: Any) -> str:
        body = self._dumps(fields)
        # repr of a float is the shortest round-trip text: valid JSON for finite values
        sep = "," if len(body) > 2 else ""
        return f'{self.own_prefix}{now!r},"action":"{action}","v":{PROTOCOL_VERSION}{sep}{body[1:]}'

    def invalidate_one(self, key: str, strategy: str, seq: int, now: float) -> str:
        """``encode("invalidate", now, keys=[key], strategy=strategy, seq=seq)``, faster: the
        payload of every eager write."""
        return (f'{self.own_prefix}{now!r},"action":"invalidate","v":{PROTOCOL_VERSION},"keys":[{_jstr(key)}],'
                f'"strategy":"{strategy}","seq":{seq}}}')

    def own_timestamp(self, payload: Union[bytes, str]) -> Optional[float]:
        """The timestamp of one of our own payloads, or None if it is not ours."""
        if isinstance(payload, (bytes, bytearray)):
            if not payload.startswith(self.own_prefix_b):
                return None
            start = len(self.own_prefix_b)
            end = payload.find(b",", start)
        else:
            if not payload.startswith(self.own_prefix):
                return None
            start = len(self.own_prefix)
            end = payload.find(",", start)
        try:
            return float(payload[start:end])
        except ValueError:
            return None


def encode(instance_id: str, epoch: str, action: str, now: float, **fields: Any) -> str:
    return Encoder(instance_id, epoch).encode(action, now, **fields)


# --------------------------------------------------------------------------------------------
# Loss detection (section 4)

_ALL = (1 << 64) - 1


class _Src:
    __slots__ = ("epoch", "max", "received", "hole_since")

    def __init__(self, epoch: Optional[str], mx: int, received: int):
        self.epoch = epoch
        self.max = mx
        self.received = received
        self.hole_since: Optional[int] = None


class LossDetector:
    """The reference algorithm of docs/WIRE.md section 4, per source. Times are milliseconds.
    Each call returns True when a loss is declared; the detector has then already marked every
    source's holes as filled (the caller flushes L1)."""

    def __init__(self, max_sources: int = MAX_SOURCES, allowance_ms: int = REORDER_ALLOWANCE_MS):
        self.sources: "OrderedDict[str, _Src]" = OrderedDict()
        self.max_sources = max_sources
        self.allowance_ms = allowance_ms
        self.holes = 0  # sources with a hole (tick() is a no-op at 0)

    def message(self, source: str, epoch: Optional[str], seq: int, now: int) -> bool:
        return self._see(source, epoch, seq, now, True)

    def position(self, source: str, epoch: Optional[str], inval_seq: int, now: int) -> bool:
        return self._see(source, epoch, inval_seq, now, False)

    def _see(self, source: str, epoch: Optional[str], seq: int, now: int, is_msg: bool) -> bool:
        srcs = self.sources
        s = srcs.get(source)
        if s is None:
            if len(srcs) >= self.max_sources:
                _k, old = srcs.popitem(last=False)
                if old.hole_since is not None:
                    self.holes -= 1
            srcs[source] = _Src(epoch, seq, _ALL)
            return False
        srcs.move_to_end(source)
        if s.epoch != epoch:
            s.epoch, s.max, s.received = epoch, seq, 1
            return self._lost()
        if seq > s.max:
            d = seq - s.max
            if d >= 64:
                s.max, s.received = seq, 1
                return self._lost()
            s.received = (s.received << d) & _ALL
            s.max = seq
            if is_msg:
                s.received |= 1
        else:
            d = s.max - seq
            if d >= 64:
                return False
            if is_msg:
                s.received |= 1 << d
        n = min(64, s.max)
        want = (1 << n) - 1
        if s.received & want != want:
            if s.hole_since is None:
                s.hole_since = now
                self.holes += 1
        elif s.hole_since is not None:
            s.hole_since = None
            self.holes -= 1
        return False

    def tick(self, now: int) -> bool:
        if not self.holes:
            return False
        for s in self.sources.values():
            if s.hole_since is not None and now - s.hole_since >= self.allowance_ms:
                return self._lost()
        return False

    def _lost(self) -> bool:
        for s in self.sources.values():
            s.received = _ALL
            s.hole_since = None
        self.holes = 0
        return True

    def resubscribed(self) -> None:
        self.sources.clear()
        self.holes = 0


def decode_policy(payload: Union[bytes, bytearray, str]) -> Dict[str, Any]:
    """A message on ``P:policy`` (docs/WIRE.md 9.3): the checks of 2.3 in order, then only the
    ``policy`` action is known, with ``source`` and ``rollout`` required."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogatepass")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise Malformed("too-large", f"{len(payload)} bytes")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as e:
        raise Malformed("not-json", f"not UTF-8: {e}") from None
    if _nesting_exceeds(text, MAX_DEPTH):
        raise Malformed("not-json", f"nested deeper than {MAX_DEPTH} levels")
    try:
        m = _loads(text)
    except (ValueError, RecursionError) as e:
        raise Malformed("not-json", str(e)[:200]) from None
    if type(m) is not dict:
        raise Malformed("not-object", type(m).__name__)
    action = m.get("action")
    if type(action) is str and action != "policy":
        raise Malformed("unknown-action", repr(action[:64]))
    if type(action) is not str:
        raise Malformed("bad-field", "action missing" if action is None else f"action {action!r}")
    return {
        "action": action,
        "source": _ident(m, "source", True),
        "epoch": _ident(m, "epoch", False),
        "timestamp": _num(m, "timestamp", 0),
        "rollout": _int(m, "rollout", 1, SEQ_MAX, True),
    }
