"""Following policy rollouts (docs/WIRE.md 9): the rollout record, trust, fetching a pushed
component, swapping it in, status records and the automatic rollback.

``Follower`` is driven like the rest of the core: its programs yield I/O requests that the front
end runs (see ``_core``), plus two of their own:

  ("raw", args)          one Redis command whose reply is returned undecoded (a component's bytes)
  ("call", fn, args)     run ``fn(*args)`` off the event loop (compiling a component takes a while)

It runs in a thread (task) of its own, so fetching and compiling never hold up the tick.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from . import wire
from .engine import CONFIG_FIELDS, STRATEGIES, EngineError, PolicyLoadError
from .engine import ConfigError as EngineConfigError

log = logging.getLogger("aci_cache")

__all__ = [
    "MAX_COMPONENT_BYTES",
    "Record",
    "RecordError",
    "Target",
    "Trust",
    "decode_announcement",
    "parse_record",
    "signed_message",
    "LOCAL",
]

#: A pushed component larger than this is refused (WIRE.md 9.1).
MAX_COMPONENT_BYTES = 4 << 20
MAX_CONFIG_BYTES = 4096
MAX_CANARY = 1000
#: A host reads the record at least this often (WIRE.md 9.3).
RECHECK_S = 10.0
#: Status records live this long (ms) and are rewritten every heartbeat (WIRE.md 9.8).
STATUS_PX = 3000
STATUS_EVERY_S = 1.0

_HASH = re.compile(r"[0-9a-f]{64}")
_SIG = re.compile(r"[0-9a-f]{128}")
_ROLLOUT = re.compile(r"[1-9][0-9]{0,15}")
_CONFIG_KINDS = dict(CONFIG_FIELDS)

#: The compare-and-set every writer of the record uses (WIRE.md 9.2), byte for byte.
CAS_LUA = """local cur = redis.call('HGET', KEYS[1], 'rollout')
if (cur or '0') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


class RecordError(ValueError):
    """The rollout record has an invalid field (the whole record is refused)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Target:
    """What an instance runs: a hash (empty: its local policy), config overrides and signature."""

    sha256: str
    config: str = ""
    sig: str = ""

    @property
    def local(self) -> bool:
        return not self.sha256

    def same_as(self, other: "Target") -> bool:
        """The same component with the same config (docs/WIRE.md 9.3): a signature is how a
        target was approved, not part of what runs."""
        return self.sha256 == other.sha256 and self.config == other.config


LOCAL = Target("")


@dataclass(frozen=True)
class Record:
    rollout: int
    target: Target
    previous: Target
    canary: Tuple[str, ...]
    fields: Dict[str, str]

    def target_for(self, instance_id: str) -> Target:
        """WIRE.md 9.2: the target, unless a canary list leaves this instance out."""
        if not self.canary or instance_id in self.canary:
            return self.target
        return self.previous


def _text(v: Any) -> str:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8")  # UnicodeDecodeError: the caller refuses the record
    return str(v)


def parse_rollout(v: Any) -> int:
    s = _text(v)
    if not _ROLLOUT.fullmatch(s) or int(s) > wire.SEQ_MAX:
        raise RecordError("rollout", f"not an integer in 1..2^53-1: {s[:40]!r}")
    return int(s)


def parse_record(raw: Dict[Any, Any]) -> Optional[Record]:
    """The record from ``HGETALL`` (None when there is none), or :class:`RecordError`."""
    if not raw:
        return None
    try:
        h = {_text(k): _text(v) for k, v in raw.items()}
    except UnicodeDecodeError:
        raise RecordError("record", "not UTF-8") from None
    if "rollout" not in h:
        raise RecordError("rollout", "missing")
    rollout = parse_rollout(h["rollout"])

    def hash_field(name: str) -> str:
        v = h.get(name, "")
        if v and not _HASH.fullmatch(v):
            raise RecordError(name, "not 64 lowercase hex characters")
        return v

    def sig_field(name: str) -> str:
        v = h.get(name, "")
        if v and not _SIG.fullmatch(v):
            raise RecordError(name, "not 128 lowercase hex characters")
        return v

    def config_field(name: str) -> str:
        v = h.get(name, "")
        if v:
            if len(v.encode("utf-8")) > MAX_CONFIG_BYTES:
                raise RecordError(name, f"over {MAX_CONFIG_BYTES} bytes")
            try:
                obj = json.loads(v, parse_constant=_no_constant)
            except (ValueError, RecursionError):
                raise RecordError(name, "not JSON") from None
            if type(obj) is not dict:
                raise RecordError(name, "not a JSON object")
        return v

    for name, cap in (("name", 64), ("version", 64), ("by", 200), ("reason", 200)):
        if len(h.get(name, "")) > cap:
            raise RecordError(name, f"over {cap} characters")
    target = Target(hash_field("sha256"), config_field("config"), sig_field("sig"))
    previous = Target(hash_field("previous"), config_field("previous_config"), sig_field("previous_sig"))
    canary_s = h.get("canary", "")
    canary: Tuple[str, ...] = ()
    if canary_s:
        ids = canary_s.split(",")
        if len(ids) > MAX_CANARY:
            raise RecordError("canary", f"over {MAX_CANARY} instance ids")
        for i in ids:
            try:
                wire.check_instance_id(i)
            except wire.NameError_:
                raise RecordError("canary", f"{i[:70]!r} is not an instance id") from None
        canary = tuple(ids)
    return Record(rollout, target, previous, canary, h)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def config_overrides(text: str) -> Dict[str, Any]:
    """The overrides of a (record-checked) ``config`` field, or EngineConfigError naming the
    member (WIRE.md 9.4): unknown members and wrong types are refused here, values by the
    policy's own ``configure``."""
    if not text:
        return {}
    obj = json.loads(text)
    out: Dict[str, Any] = {}
    for k, v in obj.items():
        kind = _CONFIG_KINDS.get(k)
        if kind is None:
            raise EngineConfigError(k, "unknown field")
        if kind == "f64":
            ok = type(v) in (int, float)
        elif kind == "s32":
            ok = type(v) is int or (type(v) is float and v.is_integer())
        else:
            ok = v in STRATEGIES
        if not ok:
            raise EngineConfigError(k, f"wrong type or value {v!r}"[:120])
        out[k] = v
    return out


def signed_message(prefix: str, namespace: Optional[str], sha256: str, config: str) -> bytes:
    """The bytes an ed25519 signature covers (WIRE.md 9.5)."""
    return f"aci-cache policy v1\n{prefix}\n{namespace or ''}\n{sha256}\n{config}".encode("utf-8")


def _hex_key(field: str, v: Any, nbytes: int) -> bytes:
    if not isinstance(v, str) or not re.fullmatch(f"[0-9a-f]{{{2 * nbytes}}}", v):
        from .config import ConfigValueError

        raise ConfigValueError(field, f"must be {2 * nbytes} lowercase hex characters, got {str(v)[:80]!r}")
    return bytes.fromhex(v)


class Trust:
    """An ed25519 public key and/or an allow-list of hashes (WIRE.md 9.5)."""

    def __init__(self, public_key: Optional[str], allow_hashes: Optional[Iterable[str]]):
        self.key: Any = None
        if public_key is not None:
            raw = _hex_key("policy_public_key", public_key, 32)
            # PyNaCl (libsodium): its verification is strict as ed25519-dalek's verify_strict
            # that the Rust host uses (small-order keys and R, non-canonical S refused), so the
            # two hosts agree on every signature.
            from nacl.exceptions import CryptoError
            from nacl.signing import VerifyKey

            try:
                self.key = VerifyKey(raw)
            except (CryptoError, ValueError, TypeError) as e:  # pragma: no cover - any 32 bytes load
                from .config import ConfigValueError

                raise ConfigValueError("policy_public_key", f"not an ed25519 public key: {e}") from None
        allow = set()
        for h in allow_hashes or ():
            _hex_key("policy_allow_hashes", h, 32)
            allow.add(h)
        self.allow = frozenset(allow)

    @property
    def kind(self) -> str:
        if self.key is not None and self.allow:
            return "key+allow-list"
        if self.key is not None:
            return "key"
        if self.allow:
            return "allow-list"
        return "none"

    def check(self, target: Target, prefix: str, namespace: Optional[str]) -> Optional[str]:
        """None when the target may run, else the refusal reason of WIRE.md 9.6 step 1."""
        if target.local:
            return None
        if self.key is None and not self.allow:
            return "no policy trust configured (policy_public_key or policy_allow_hashes)"
        listed = target.sha256 in self.allow
        if listed and not target.config:
            return None
        if self.key is None or (listed and not target.sig):
            if listed:
                return "allow-listed hash pushed with a config override (only a signed push may override the config)"
            return "not in the allow-list"
        if not target.sig:
            return "unsigned: this instance requires a signature by its policy_public_key"
        from nacl.exceptions import BadSignatureError, CryptoError

        try:
            self.key.verify(signed_message(prefix, namespace, target.sha256, target.config),
                            bytes.fromhex(target.sig))
            return None
        except (BadSignatureError, CryptoError, ValueError):
            return "bad signature: not made by this instance's policy_public_key for this namespace"


def decode_announcement(payload: Any) -> Dict[str, Any]:
    """A ``policy`` announcement (WIRE.md 9.3) or :class:`wire.Malformed`."""
    return wire.decode_policy(payload)


# ------------------------------------------------------------------------------------------------


class Running:
    """What the instance runs, as far as rollouts go, and how to get back to it."""

    __slots__ = ("target", "data", "overrides")

    def __init__(self, target: Target, data: Optional[bytes], overrides: Dict[str, Any]):
        self.target = target
        self.data = data  # the component's bytes (None: the local policy)
        self.overrides = overrides


class Follower:
    """The rollout duties of one instance (WIRE.md 9). ``core`` is its ``_core.Core``."""

    def __init__(self, core: Any):
        cfg = core.cfg
        self.core = core
        self.trust = Trust(cfg.policy_public_key, cfg.policy_allow_hashes)
        self.rollback_faults = cfg.policy_rollback_faults
        n = core.names
        self.prefix, self.namespace = n.prefix, n.namespace
        self.k_current = n.protocol_key("policy:current")
        self.k_bad = n.protocol_key("policy:bad")
        self.k_status = n.protocol_key(f"policy:status:{core.instance_id}")
        self.ch_policy = f"{n.p}:policy"
        self.k_blob_prefix = n.protocol_key("policy:blob:")
        self.running = Running(LOCAL, None, {})
        self.previous: Optional[Running] = None
        self.acted = 0          # the last rollout acted on
        self.read = 0           # the highest rollout read in a record
        self.announced = 0      # the highest rollout announced
        self.rejected: Optional[Dict[str, Any]] = None
        self.fault_base = 0     # engine_faults when the running policy was loaded
        self.reread = True      # read the record at the next step (start, resubscription)
        self.last_ann_read = -1e9
        self.last_check = time.monotonic()
        self.last_status = -1e9
        self.status_due = True
        self.status_strategy = ""  # the strategy in the last status record written

    # -- inputs from the subscription ------------------------------------------------------------

    def on_announcement(self, data: Any) -> None:
        try:
            m = decode_announcement(data)
        except wire.Malformed as e:
            self.core._malformed(e.kind, e.detail)
            return
        if m["rollout"] > self.announced:
            self.announced = m["rollout"]

    def local_swapped(self) -> None:
        """``swap_policy`` ran: the new policy is this instance's local one from now on."""
        self.previous = self.running
        self.running = Running(LOCAL, None, {})
        with self.core.lock:
            self.fault_base = self.core.stats_c["engine_faults"]
        self.status_due = True

    def on_resubscribed(self) -> None:
        self.reread = True  # an announcement may have been lost while not listening

    # -- the program -----------------------------------------------------------------------------

    def start(self) -> Any:
        """At start, before serving: a late joiner runs the fleet's current policy."""
        try:
            rec = yield from self._read_record()
            if rec is not None:
                yield from self._consider(rec, at_start=True)
        except Exception as e:
            log.warning("aci-cache %s: reading the rollout record at start: %s", self.core.instance_id, e)
        self.reread = False
        self.last_check = time.monotonic()

    def loop(self) -> Any:
        core = self.core
        step = min(0.1, core.cfg.tick_interval)
        while not core.stopping:
            yield ("sleep", step)
            if core.stopping:
                break
            try:
                yield from self.step()
            except Exception as e:
                self.reread = True  # whatever was being read or adopted is read again
                log.warning("aci-cache %s: policy rollout: %s: %s", core.instance_id, type(e).__name__, e)
                yield ("sleep", core.cfg.command_timeout)  # Redis is likely down: no busy retry

    def step(self) -> Any:
        core = self.core
        now = time.monotonic()
        full = False
        if self.reread:
            full, self.reread = True, False
        if self.announced > self.read and now - self.last_ann_read >= core.cfg.tick_interval:
            full = True  # at most one read per tick because of announcements
            self.last_ann_read = now
        if not full and now - self.last_check >= RECHECK_S:
            self.last_check = now
            cur = (yield ("cmds", [("HGET", self.k_current, "rollout")]))[0]
            if cur is not None:
                try:
                    full = parse_rollout(cur) != self.read
                except RecordError:
                    full = True  # read it whole: refused with its reason
        if full:
            self.last_check = now
            rec = yield from self._read_record()
            if rec is not None:
                yield from self._consider(rec)
        yield from self._check_faults()
        if self.status_due or now - self.last_status >= STATUS_EVERY_S or core.strategy != self.status_strategy:
            yield from self.write_status()

    # -- reading and adopting ----------------------------------------------------------------------

    def _read_record(self) -> Any:
        raw = (yield ("cmds", [("HGETALL", self.k_current)]))[0]
        try:
            rec = parse_record(raw or {})
        except RecordError as e:
            rollout = 0
            try:
                rollout = parse_rollout((raw or {}).get("rollout") or (raw or {}).get(b"rollout") or "")
            except RecordError:
                pass
            if rollout > self.acted or rollout == 0:
                self._reject(rollout, "", f"malformed record: {e.field}")
            if rollout:
                self.read = max(self.read, rollout)
                self.acted = max(self.acted, rollout)
            return None
        if rec is not None:
            self.read = max(self.read, rec.rollout)
        return rec

    def _reject(self, rollout: int, sha256: str, reason: str) -> None:
        self.rejected = {"rollout": rollout, "sha256": sha256, "reason": reason}
        self.status_due = True
        log.warning("aci-cache %s: policy rollout %d refused: %s", self.core.instance_id, rollout, reason)

    def _consider(self, rec: Record, at_start: bool = False) -> Any:
        if rec.rollout <= self.acted:
            return
        target = rec.target_for(self.core.instance_id)
        if target.same_as(self.running.target):
            self.acted = rec.rollout
            self.status_due = True
            return
        reason, running = yield from self._fetch_and_check(target)
        if reason is not None:
            self.acted = rec.rollout
            self._reject(rec.rollout, target.sha256, reason)
            return
        assert running is not None
        refused = yield from self._swap_to(running, at_start, rec.rollout)
        if refused is not None:
            self.acted = rec.rollout
            self._reject(rec.rollout, target.sha256, refused)
            return
        self.acted = rec.rollout

    def _fetch_and_check(self, target: Target) -> Any:
        """(None, Running with a prepared swap) or (reason, None): WIRE.md 9.6 steps 1-4."""
        core = self.core
        del core
        if target.local:  # returning to the local policy needs no trust
            return None, Running(LOCAL, None, {})
        reason = self.trust.check(target, self.prefix, self.namespace)
        if reason is not None:
            return reason, None
        bad = (yield ("cmds", [("HGET", self.k_bad, target.sha256)]))[0]
        if bad is not None:
            return f"marked bad: {_text(bad)[:160]}", None
        data = yield ("raw", ("GETRANGE", self.k_blob_prefix + target.sha256, 0, MAX_COMPONENT_BYTES))
        data = bytes(data or b"")
        if not data:
            return "missing: no component stored under this hash", None
        if len(data) > MAX_COMPONENT_BYTES:
            return f"too large: over {MAX_COMPONENT_BYTES} bytes", None
        if hashlib.sha256(data).hexdigest() != target.sha256:
            return "hash mismatch: the stored bytes do not have this SHA-256", None
        try:
            overrides = config_overrides(target.config)
        except EngineConfigError as e:
            return f"config: {e.field}: {e.message}", None
        return None, Running(target, data, overrides)

    def _prepare(self, running: Running) -> Any:
        core = self.core
        if running.data is None:
            return core.prepare_swap(core.local_source(), strategy=core.local_strategy(), label=core.local_label())
        return core.prepare_swap(running.data, config=running.overrides, wit_errors=True,
                                 label=f"pushed {running.target.sha256[:12]}")

    def _swap_to(self, running: Running, at_start: bool = False, rollout: int = 0) -> Any:
        """Compile, configure and swap in (None), or the refusal reason."""
        core = self.core
        try:
            req = yield ("call", self._prepare, (running,), {})
        except PolicyLoadError as e:
            return f"invalid component: {e}"[:300]
        except EngineConfigError as e:
            return f"config: {e.field}: {e.message}"[:300]
        except (EngineError, ValueError, TypeError) as e:
            return f"invalid component: {type(e).__name__}: {e}"[:300]
        def installed() -> None:  # on the tick, with the swap: status never mixes the two
            self.previous = self.running
            self.running = running
            self.acted = max(self.acted, rollout)
            with core.lock:
                self.fault_base = core.stats_c["engine_faults"]
            self.status_due = True

        req.after = installed
        if at_start:
            core.swap_now(req)
        else:
            core.request_swap(req)
            yield ("wake",)
            deadline = time.monotonic() + 2 * core.cfg.command_timeout + 4 * core.cfg.tick_interval + 1
            while not req.done.is_set():
                if core.stopping or time.monotonic() > deadline:
                    break
                yield ("sleep", 0.01)
        return None

    # -- automatic rollback (WIRE.md 9.7) -----------------------------------------------------------

    def _check_faults(self) -> Any:
        core = self.core
        if self.running.target.local:
            return
        with core.lock:
            faults = core.stats_c["engine_faults"] - self.fault_base
        if faults < self.rollback_faults:
            return
        bad = self.running.target
        last = core.last_fault or "fault"
        why = f"{faults} faults: {last}"
        log.error("aci-cache %s: pushed policy %s rolled back after %s", core.instance_id, bad.sha256[:12], why)
        back = self.previous or Running(LOCAL, None, {})
        reason = yield from self._swap_to(back)
        if reason is not None:  # what ran before cannot load again: the local policy then
            back = Running(LOCAL, None, {})
            yield from self._swap_to(back)
        self.previous = None  # never revert into the policy that just faulted
        self._reject(self.acted, bad.sha256, f"auto-rollback: {core.instance_id}: {why}"[:200])
        yield ("cmds", [("HSET", self.k_bad, bad.sha256, f"auto-rollback: {core.instance_id}: {why}"[:200])])
        raw = (yield ("cmds", [("HGETALL", self.k_current)]))[0]
        try:
            rec = parse_record(raw or {})
        except RecordError:
            rec = None
        if rec is None or rec.rollout != self.acted or not rec.target_for(core.instance_id).same_as(bad):
            self.reread = True
            return
        new_rollout = rec.rollout + 1
        fields = {
            "rollout": str(new_rollout),
            "sha256": rec.previous.sha256, "config": rec.previous.config, "sig": rec.previous.sig,
            "previous": bad.sha256, "previous_config": bad.config, "previous_sig": bad.sig,
            "canary": "",
            "name": core.policy.name[:64] if back.target == rec.previous else "",
            "version": core.policy.version[:64] if back.target == rec.previous else "",
            "by": core.instance_id,
            "reason": f"auto-rollback: {core.instance_id}: {why}"[:200],
            "at": f"{time.time():.3f}",
        }
        ann = core.enc.encode("policy", time.time(), rollout=new_rollout)
        args: List[Any] = [str(rec.rollout), self.ch_policy, ann]
        for k, v in fields.items():
            args += [k, v]
        done = (yield ("cmds", [("EVAL", CAS_LUA, 1, self.k_current, *args)]))[0]
        if int(done or 0) == 1 and getattr(core, "cluster", False):
            # On a cluster the script's PUBLISH is classic (the record's slot is not the
            # channel's): sharded subscribers hear the announcement only from an SPUBLISH.
            try:
                yield ("cmds", [("SPUBLISH", self.ch_policy, ann)])
            except Exception as e:
                log.warning("aci-cache %s: announcing rollout %d: %s", core.instance_id, new_rollout, e)
        if int(done or 0) == 1:
            with core.lock:
                core.stats_c["messages_sent"] += 1
            log.warning("aci-cache %s: rollout %d written: the fleet returns to %s", core.instance_id,
                        new_rollout, rec.previous.sha256[:12] or "its local policies")
        self.reread = True

    # -- status (WIRE.md 9.8) ------------------------------------------------------------------------

    def status(self) -> Dict[str, Any]:
        core = self.core
        with core.lock:
            faults = core.stats_c["engine_faults"] - self.fault_base
        p = core.policy
        return {
            "id": core.instance_id, "host": "python", "name": p.name, "version": p.version, "sha256": p.sha256,
            "origin": "local" if self.running.target.local else "pushed", "rollout": self.acted,
            "strategy": core.strategy, "controller": core.is_controller, "faults": faults,
            "trust": self.trust.kind, "rejected": self.rejected, "timestamp": round(time.time(), 3),
        }

    def write_status(self) -> Any:
        self.status_due = False
        self.last_status = time.monotonic()
        st = self.status()
        self.status_strategy = st["strategy"]  # a change of strategy is written at once too
        body = json.dumps(st, separators=(",", ":"))
        try:
            yield ("cmds", [("SET", self.k_status, body, "PX", STATUS_PX)])
        except Exception as e:
            log.debug("aci-cache %s: status record: %s", self.core.instance_id, e)
