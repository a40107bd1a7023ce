"""State shared by the thread and asyncio front ends: the L1, the policy, the wire protocol.

Nothing here does I/O. The front ends (``cache.AdaptiveCache``, ``aio.AsyncAdaptiveCache``) do
the Redis calls and feed results and received messages in.

Locking: ``self.lock`` guards the L1, the counters and the per-sender sequence table; it is held
only for in-memory work, never across I/O or an engine call, and no other lock is taken under it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .config import WIT_TO_PY, CacheConfig, ConfigValueError
from .engine import STRATEGIES, ConfigError as EngineConfigError, Engine, EngineError, EngineFault

log = logging.getLogger("aci_cache")

MAX_MESSAGE_BYTES = 1 << 20
MAX_MESSAGE_KEYS = 100_000
#: Keys per published invalidate message, so that a message stays well under 1 MiB.
_CHUNK_BYTES = 512 << 10
_STRIPES = 1024
_MAX_SENDERS = 10_000
_MAX_SWITCH_LOG = 1000
_U32_MAX = (1 << 32) - 1
#: A non-controller reports at least this often (count 0 as a heartbeat).
REPORT_HEARTBEAT = 1.0

MALFORMED_KINDS = ("not_json", "not_object", "unknown_action", "wrong_types", "too_large", "too_many_keys")


def _dumps(obj: Dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class TickOutput:
    """What one tick decided; the front end publishes ``messages`` (in order) and then runs
    ``callbacks``. Invalidation payloads are built by ``Core.invalidation_payloads`` under the
    publish lock, so they carry consecutive seqs in publish order."""

    inval: List[Tuple[List[str], str]] = field(default_factory=list)  # (keys, strategy) per message
    flush: bool = False
    strategy_update: bool = False
    write_report: Optional[int] = None
    callbacks: List[Tuple[Callable[[str, str], Any], str, str]] = field(default_factory=list)


class Core:
    def __init__(self, cfg: CacheConfig, encoder: Any, decode_responses: bool):
        self.cfg = cfg
        self.encoder = encoder
        self.decode_responses = decode_responses
        self._encoding = getattr(encoder, "encoding", "utf-8")
        # str values round-trip unchanged through encode/decode with strict errors
        self._str_fast = getattr(encoder, "encoding_errors", "strict") == "strict"
        self.instance_id = cfg.instance_id or secrets.token_hex(6)
        self.epoch = secrets.token_hex(8)
        p = cfg.channel_prefix + (f":{cfg.namespace}" if cfg.namespace else "")
        self.prefix = p
        self.key_prefix = f"{p}:" if cfg.namespace else ""
        self.ch_inval = f"{p}:invalidation"
        self.ch_strategy = f"{p}:strategy"
        self.ch_reports = f"{p}:reports"
        self.lease_key = f"{p}:controller"
        self.channels = (self.ch_inval, self.ch_strategy, self.ch_reports)
        # Our own messages come back to us; they start with this (see the payload builders),
        # which lets the Pub/Sub thread drop them without parsing.
        self.own_prefix = f'{{"source":"{self.instance_id}","epoch":"{self.epoch}",'
        self.own_prefix_b = self.own_prefix.encode()
        self.lease_ms = max(1, int(round(cfg.controller_interval * 1000)))
        self.controller_timeout = float(cfg.controller_interval)
        self.local_ttl = float(cfg.local_ttl)
        self.max_entries = cfg.local_max_entries
        self.max_bytes = cfg.local_max_bytes
        self.configured_role = cfg.effective_role

        self.lock = threading.Lock()
        self._t0 = time.monotonic()
        self.engine, self.policy_config = self._make_engine(cfg)
        snap = self.engine.status(self.now_ms())
        self.strategy: str = snap.strategy
        self.write_rate: float = snap.write_rate

        # L1: redis key -> (value, expires_at monotonic, size)
        self.l1: "OrderedDict[str, Tuple[Any, float, int]]" = OrderedDict()
        self.l1_bytes = 0
        self.stripes = [0] * _STRIPES
        self.flush_gen = 0
        self.link_up = False

        # writes since the last tick: key -> True if set() did not publish it (not eager)
        self.pending: Dict[str, bool] = {}
        self.pending_dups = 0
        self.report_count = 0
        self.remote_count = 0
        # keys of batched writes not yet covered by a published batch (for flush())
        self.unbatched: "OrderedDict[str, None]" = OrderedDict()
        self.unbatched_overflow = False

        # publish sequence (allocated under the front end's publish lock)
        self.seq = 0
        self.published_seq = 0
        self.senders: "OrderedDict[str, List[Any]]" = OrderedDict()

        # roles
        self.is_controller = self.configured_role == "controller"
        self.became_follower_at = time.monotonic()
        self.ctrl_strategy: Optional[str] = None
        self.ctrl_heard = 0.0
        self.followed: Optional[str] = None  # last strategy given to follow(), None while leading
        self.last_report = 0.0
        self._subscribed_once = False

        self.callbacks: List[Callable[[str, str], Any]] = []
        self.switch_log: List[Tuple[float, str, str]] = []
        self.n_switches = 0
        self.n_reads = 0
        self.n_hits = 0
        self.n_writes = 0
        self.stats_c = dict(
            messages_sent=0,
            messages_received=0,
            invalidations_applied=0,
            gaps=0,
            evictions=0,
            engine_faults=0,
            publish_errors=0,
            pubsub_errors=0,
            callback_errors=0,
            resubscribes=0,
        )
        self.malformed = {k: 0 for k in MALFORMED_KINDS}
        self._logged_kinds: set = set()

    # ------------------------------------------------------------------------------------------
    # engine

    def now_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def _make_engine(self, cfg: CacheConfig) -> Tuple[Engine, Dict[str, Any]]:
        source = cfg.policy if cfg.policy is not None else ("fixed" if cfg.strategy else "adaptive")
        eng = Engine(source)
        pc = eng.default_config()
        pc.update(cfg.policy_overrides())
        try:
            eng.configure(pc, self.now_ms())
        except EngineConfigError as e:
            name = WIT_TO_PY.get(e.field, e.field)
            raise ConfigValueError(name, f"{e.message} (policy field {e.field})") from None
        return eng, pc

    def _fallback_engine(self, why: str) -> None:
        """The policy faulted: count, log, and go on with the fixed policy at ``eager``."""
        self.stats_c["engine_faults"] += 1
        log.error("aci-cache: policy %s faulted (%s); falling back to the fixed policy, eager", self.engine.name, why)
        eng = Engine("fixed")
        pc = dict(self.policy_config)
        pc["initial-strategy"] = "eager"
        try:
            eng.configure(pc, self.now_ms())
        except EngineError:
            pc = eng.default_config()
            pc["initial-strategy"] = "eager"
            eng.configure(pc, self.now_ms())
        self.engine = eng
        self.followed = None  # a fresh instance leads

    # ------------------------------------------------------------------------------------------
    # keys and values

    def rkey(self, key: Any) -> str:
        if isinstance(key, bytes):
            key = key.decode("utf-8")
        elif not isinstance(key, str):
            key = str(key)
        return self.key_prefix + key if self.key_prefix else key

    def normalize(self, value: Any) -> Any:
        """The value as a GET through the same client would return it (for read-your-writes)."""
        t = type(value)
        if t is str and self._str_fast:
            return value if self.decode_responses else value.encode(self._encoding)
        if t is bytes and not self.decode_responses:
            return value
        b = self.encoder.encode(value)
        if self.decode_responses:
            return self.encoder.decode(b, force=True)
        return b

    # ------------------------------------------------------------------------------------------
    # L1 (callers hold self.lock)

    def _drop(self, rk: str) -> None:
        e = self.l1.pop(rk, None)
        if e is not None:
            self.l1_bytes -= e[2]

    def _flush_l1(self) -> None:
        self.l1.clear()
        self.l1_bytes = 0
        self.flush_gen += 1

    def _install(self, rk: str, value: Any, expires: float) -> None:
        size = len(rk) + (len(value) if isinstance(value, (bytes, str)) else 16)
        old = self.l1.pop(rk, None)
        if old is not None:
            self.l1_bytes -= old[2]
        if size > self.max_bytes:
            return
        self.l1[rk] = (value, expires, size)
        self.l1_bytes += size
        if len(self.l1) > self.max_entries or self.l1_bytes > self.max_bytes:
            self._evict()

    def _evict(self) -> None:
        l1 = self.l1
        while l1 and (len(l1) > self.max_entries or self.l1_bytes > self.max_bytes):
            _k, (_v, _e, s) = l1.popitem(last=False)
            self.l1_bytes -= s
            self.stats_c["evictions"] += 1

    def lookup(self, rk: str) -> Tuple[bool, Any, Optional[Tuple[int, int]]]:
        """L1 read. Returns (hit, value, fill token); the token is None when L1 is bypassed."""
        with self.lock:
            self.n_reads += 1
            if not self.link_up:
                return False, None, None
            e = self.l1.get(rk)
            if e is not None:
                if e[1] > time.monotonic():
                    self.l1.move_to_end(rk)
                    self.n_hits += 1
                    return True, e[0], None
                self.l1.pop(rk)
                self.l1_bytes -= e[2]
            return False, None, (self.stripes[hash(rk) % _STRIPES], self.flush_gen)

    def fill(self, rk: str, value: Any, pttl: Any, token: Optional[Tuple[int, int]]) -> None:
        """Install a GET result unless an invalidation, write or flush raced it."""
        if token is None or value is None or not _is_int(pttl):
            return
        if pttl == -1:
            ttl = self.local_ttl
        elif pttl > 0:
            ttl = min(self.local_ttl, pttl / 1000.0)
        else:
            return
        with self.lock:
            if not self.link_up or token != (self.stripes[hash(rk) % _STRIPES], self.flush_gen):
                return
            self._install(rk, value, time.monotonic() + ttl)

    def begin_write(self, rk: str) -> Tuple[int, int]:
        """Before a SET/DEL: make in-flight GETs of this key unable to install (fill race).
        Returns the token for end_write."""
        i = hash(rk) % _STRIPES
        stripes = self.stripes
        with self.lock:
            g = stripes[i] + 1
            stripes[i] = g
        return i, g

    def end_write(self, rk: str, value: Any, ttl: float, token: Tuple[int, int], ok: bool, published: bool) -> None:
        """After a SET: read-your-writes (unless another write or invalidation came in between)
        and record the write for the next tick."""
        i, gen = token
        expires = time.monotonic() + (ttl if ttl < self.local_ttl else self.local_ttl)
        with self.lock:
            if ok and self.link_up and self.stripes[i] == gen:
                l1 = self.l1
                old = l1.get(rk)
                size = len(rk) + (len(value) if isinstance(value, (bytes, str)) else 16)
                if old is not None:
                    self.l1_bytes += size - old[2]
                    l1[rk] = (value, expires, size)
                    l1.move_to_end(rk)
                    if self.l1_bytes > self.max_bytes:
                        self._evict()
                else:
                    self._install(rk, value, expires)
            else:
                self._drop(rk)
            # _count_write, inlined
            self.n_writes += 1
            self.report_count += 1
            pending = self.pending
            prev = pending.get(rk)
            if prev is None:
                pending[rk] = not published
            else:
                self.pending_dups += 1
                if not published:
                    pending[rk] = True

    def end_delete(self, rk: str, published: bool) -> None:
        with self.lock:
            self._drop(rk)
            self._count_write(rk, published)

    def _count_write(self, rk: str, published: bool) -> None:
        self.n_writes += 1
        self.report_count += 1
        prev = self.pending.get(rk)
        if prev is None:
            self.pending[rk] = not published
        else:
            self.pending_dups += 1
            if not published:
                self.pending[rk] = True

    def clear_local(self) -> None:
        with self.lock:
            self._flush_l1()

    # ------------------------------------------------------------------------------------------
    # link state

    def link_down(self) -> None:
        with self.lock:
            if self.link_up:
                log.warning("aci-cache %s: Pub/Sub link down; reads bypass the local cache", self.instance_id)
            self.link_up = False
            self._flush_l1()

    def link_resubscribed(self) -> None:
        """All channels confirmed (again): messages may have been lost meanwhile, so flush, and
        forget the senders' sequence numbers (the flush covers whatever they sent)."""
        with self.lock:
            if self._subscribed_once:
                self.stats_c["resubscribes"] += 1
            self._subscribed_once = True
            self._flush_l1()
            self.senders.clear()
            self.link_up = True

    # ------------------------------------------------------------------------------------------
    # publishing (called by front ends under their publish lock)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def mark_published(self, seq: int) -> None:
        if seq > self.published_seq:
            self.published_seq = seq

    def invalidate_payload(self, keys: List[str], strategy: str, seq: int) -> str:
        return _dumps(
            {
                "source": self.instance_id,
                "epoch": self.epoch,
                "action": "invalidate",
                "keys": keys,
                "strategy": strategy,
                "timestamp": time.time(),
                "seq": seq,
            }
        )

    def flush_payload(self, seq: int) -> str:
        return _dumps(
            {
                "source": self.instance_id,
                "epoch": self.epoch,
                "action": "flush",
                "strategy": "batched",
                "timestamp": time.time(),
                "seq": seq,
            }
        )

    def strategy_payload(self) -> str:
        return _dumps(
            {
                "source": self.instance_id,
                "epoch": self.epoch,
                "action": "strategy_update",
                "strategy": self.strategy,
                "write_rate": self.write_rate,
                "timestamp": time.time(),
                "inval_seq": self.published_seq,
            }
        )

    def report_payload(self, count: int) -> str:
        return _dumps(
            {
                "source": self.instance_id,
                "epoch": self.epoch,
                "action": "write_report",
                "count": count,
                "timestamp": time.time(),
                "inval_seq": self.published_seq,
            }
        )

    def sent(self, n: int = 1) -> None:
        with self.lock:
            self.stats_c["messages_sent"] += n

    def publish_failed(self, err: BaseException) -> None:
        with self.lock:
            self.stats_c["publish_errors"] += 1
        log.warning("aci-cache %s: publish failed: %s", self.instance_id, err)

    @staticmethod
    def chunk_keys(keys: List[str]) -> List[List[str]]:
        out, cur, size = [], [], 0
        for k in keys:
            n = len(k) * 6 + 4  # worst case JSON escaping (\uXXXX) plus quotes and comma
            if cur and size + n > _CHUNK_BYTES:
                out.append(cur)
                cur, size = [], 0
            cur.append(k)
            size += n
        if cur:
            out.append(cur)
        return out

    # ------------------------------------------------------------------------------------------
    # the tick

    def set_role(self, controller: bool) -> None:
        """Role change (auto lease won or lost); the tick applies it to the engine."""
        if controller != self.is_controller:
            log.info("aci-cache %s: now %s", self.instance_id, "controller" if controller else "follower")
            self.is_controller = controller
            if not controller:
                self.became_follower_at = time.monotonic()
                self.ctrl_strategy = None

    def tick(self) -> TickOutput:
        out = TickOutput()
        now = self.now_ms()
        mono = time.monotonic()
        with self.lock:
            pending, self.pending = self.pending, {}
            dups, self.pending_dups = self.pending_dups, 0
            remote, self.remote_count = self.remote_count, 0
            ctrl_strategy, ctrl_heard = self.ctrl_strategy, self.ctrl_heard
        try:
            out = self._tick_engine(now, mono, pending, dups, remote, ctrl_strategy, ctrl_heard, out)
        except Exception as e:  # EngineFault, or anything unexpected on the engine path
            self._fallback_engine(f"{type(e).__name__}: {e}")
            # Keys buffered in the dead instance are unknown: everybody drops everything.
            out.flush = True
            out.inval = []
            snap = self.engine.status(now)
            self._apply_snapshot(snap, out)
        # reports and heartbeats
        if self.is_controller:
            out.strategy_update = True
        else:
            with self.lock:
                count, self.report_count = self.report_count, 0
            if count > 0 or mono - self.last_report >= REPORT_HEARTBEAT:
                out.write_report = count
                self.last_report = mono
        if self.is_controller:
            with self.lock:
                self.report_count = 0
        return out

    def _tick_engine(self, now, mono, pending, dups, remote, ctrl_strategy, ctrl_heard, out: TickOutput) -> TickOutput:
        eng = self.engine
        if remote:
            eng.record_remote_writes(min(remote, _U32_MAX), now)
        if dups:
            # Rewrites of a key within one tick: they move the rate; buffering a key once is enough.
            eng.record_remote_writes(min(dups, _U32_MAX), now)
        unpublished: List[str] = []
        after = self.strategy
        if pending:
            keys = list(pending)
            after = eng.record_write(keys[0], now) if len(keys) == 1 else eng.record_writes(keys, now)
            unpublished = [k for k, unpub in pending.items() if unpub]
            if after == "eager" and unpublished:
                # The rate crossed into eager during this tick's writes: the policy buffers none
                # of the keys counted after the switch and expects the host to have published
                # them, which set() (deciding from the last tick) did not.
                out.inval.extend((c, "eager") for c in self.chunk_keys(unpublished))
        if unpublished and (self.strategy == "batched" or after == "batched"):
            with self.lock:  # for flush(): batched writes whose batch is not published yet
                for k in unpublished:
                    self.unbatched[k] = None
                if len(self.unbatched) > MAX_MESSAGE_KEYS:
                    self.unbatched.clear()
                    self.unbatched_overflow = True
        # roles
        if self.is_controller:
            if self.followed is not None:
                eng.lead(now)
                self.followed = None
        else:
            target = None
            if ctrl_strategy is not None and mono - ctrl_heard <= self.controller_timeout:
                target = ctrl_strategy
            elif mono - max(ctrl_heard, self.became_follower_at) > self.controller_timeout:
                target = "eager"  # no controller: the safe choice
            if target is not None and target != self.followed:
                eng.follow(target, now)
                self.followed = target
        snap = eng.status(now)
        if snap.batch_due:
            b = eng.pending_batch(now)
            if b.flush_all or len(b.keys) > MAX_MESSAGE_KEYS:
                out.flush = True
            elif b.keys:
                out.inval.extend((c, "batched") for c in self.chunk_keys(b.keys))
            with self.lock:
                self.unbatched.clear()
                self.unbatched_overflow = False
        self._apply_snapshot(snap, out)
        return out

    def _apply_snapshot(self, snap: Any, out: TickOutput) -> None:
        self.write_rate = snap.write_rate
        if snap.strategy != self.strategy:
            old, new = self.strategy, snap.strategy
            self.strategy = new
            with self.lock:
                self.n_switches += 1
                self.switch_log.append((time.time(), old, new))
                if len(self.switch_log) > _MAX_SWITCH_LOG:
                    del self.switch_log[: len(self.switch_log) - _MAX_SWITCH_LOG]
                cbs = list(self.callbacks)
            log.info("aci-cache %s: strategy %s -> %s (%.1f writes/s)", self.instance_id, old, new, snap.write_rate)
            for cb in cbs:
                out.callbacks.append((cb, old, new))

    def drain_for_flush(self) -> Tuple[List[List[str]], bool]:
        """Keys of batched writes not yet published, for flush(): (chunks, flush_all)."""
        with self.lock:
            keys = list(self.unbatched)
            for k, unpub in self.pending.items():
                if unpub and self.strategy == "batched" and k not in self.unbatched:
                    keys.append(k)
            overflow = self.unbatched_overflow
            self.unbatched.clear()
            self.unbatched_overflow = False
        if overflow or len(keys) > MAX_MESSAGE_KEYS:
            return [], True
        return self.chunk_keys(keys), False

    def run_callbacks(self, cbs: List[Tuple[Callable[[str, str], Any], str, str]]) -> None:
        for cb, old, new in cbs:
            try:
                cb(old, new)
            except Exception:
                with self.lock:
                    self.stats_c["callback_errors"] += 1
                log.exception("aci-cache %s: on_switch callback failed", self.instance_id)

    # ------------------------------------------------------------------------------------------
    # receiving

    def _malformed(self, kind: str, detail: str) -> None:
        with self.lock:
            self.malformed[kind] += 1
            first = kind not in self._logged_kinds
            self._logged_kinds.add(kind)
        if first:
            log.warning("aci-cache %s: ignoring a malformed message (%s): %s (logged once per kind)",
                        self.instance_id, kind, detail)

    def on_message(self, channel: Any, data: Any) -> bool:
        """Handle one Pub/Sub message. Never raises. Returns True when the tick should run soon
        (the controller's strategy changed)."""
        try:
            return self._on_message(channel, data)
        except Exception as e:  # defensive: nothing may escape the Pub/Sub path
            self._malformed("wrong_types", f"{type(e).__name__}: {e}")
            return False

    def _on_message(self, channel: Any, data: Any) -> bool:
        if isinstance(data, bytes):
            if data.startswith(self.own_prefix_b):
                return False
        elif isinstance(data, str) and data.startswith(self.own_prefix):
            return False
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        size = len(data.encode("utf-8")) if isinstance(data, str) else len(data) if isinstance(data, (bytes, bytearray)) else 0
        if size > MAX_MESSAGE_BYTES:
            self._malformed("too_large", f"{size} bytes on {channel}")
            return False
        try:
            msg = json.loads(data)
        except (ValueError, TypeError) as e:
            self._malformed("not_json", f"on {channel}: {e}")
            return False
        if not isinstance(msg, dict):
            self._malformed("not_object", f"on {channel}: {type(msg).__name__}")
            return False
        source = msg.get("source")
        if source is not None and not isinstance(source, str):
            self._malformed("wrong_types", f"source {source!r}")
            return False
        if source == self.instance_id:
            return False
        action = msg.get("action")
        expected = {
            self.ch_inval: ("invalidate", "flush"),
            self.ch_strategy: ("strategy_update",),
            self.ch_reports: ("write_report",),
        }.get(channel, ())
        if action not in expected:
            self._malformed("unknown_action", f"{action!r} on {channel}")
            return False
        epoch = msg.get("epoch")
        if epoch is not None and not isinstance(epoch, str):
            self._malformed("wrong_types", f"epoch {epoch!r}")
            return False
        if "timestamp" in msg and not _is_num(msg["timestamp"]):
            self._malformed("wrong_types", f"timestamp {msg['timestamp']!r}")
            return False

        if action == "invalidate":
            keys = msg.get("keys")
            if not isinstance(keys, list):
                self._malformed("wrong_types", f"keys {type(keys).__name__}")
                return False
            if len(keys) > MAX_MESSAGE_KEYS:
                self._malformed("too_many_keys", f"{len(keys)} keys")
                return False
            if not all(isinstance(k, str) for k in keys):
                self._malformed("wrong_types", "a key is not a string")
                return False
        if action in ("invalidate", "flush"):
            seq = msg.get("seq")
            if seq is not None and (not _is_int(seq) or seq < 0):
                self._malformed("wrong_types", f"seq {seq!r}")
                return False
            with self.lock:
                self.stats_c["messages_received"] += 1
                if source is not None and epoch is not None and seq is not None:
                    self._check_seq(source, epoch, seq, exact=True)
                if action == "flush":
                    self._flush_l1()
                else:
                    stripes = self.stripes
                    for k in keys:
                        i = hash(k) % _STRIPES
                        stripes[i] += 1
                        e = self.l1.pop(k, None)
                        if e is not None:
                            self.l1_bytes -= e[2]
                self.stats_c["invalidations_applied"] += 1
            return False

        inval_seq = msg.get("inval_seq")
        if inval_seq is not None and (not _is_int(inval_seq) or inval_seq < 0):
            self._malformed("wrong_types", f"inval_seq {inval_seq!r}")
            return False
        if action == "strategy_update":
            strategy = msg.get("strategy")
            if strategy not in STRATEGIES:
                self._malformed("wrong_types", f"strategy {strategy!r}")
                return False
            if "write_rate" in msg and not _is_num(msg["write_rate"]):
                self._malformed("wrong_types", f"write_rate {msg['write_rate']!r}")
                return False
            with self.lock:
                self.stats_c["messages_received"] += 1
                if source is not None and epoch is not None and inval_seq is not None:
                    self._check_seq(source, epoch, inval_seq, exact=False)
                changed = strategy != self.ctrl_strategy
                self.ctrl_strategy = strategy
                self.ctrl_heard = time.monotonic()
            return changed and not self.is_controller
        # write_report
        count = msg.get("count")
        if not _is_int(count) or count < 0:
            self._malformed("wrong_types", f"count {count!r}")
            return False
        with self.lock:
            self.stats_c["messages_received"] += 1
            if source is not None and epoch is not None and inval_seq is not None:
                self._check_seq(source, epoch, inval_seq, exact=False)
            if self.is_controller:
                self.remote_count += count
        return False

    def _check_seq(self, source: str, epoch: str, seq: int, *, exact: bool) -> None:
        """Loss detection (caller holds the lock). ``exact``: an invalidation message's own seq
        (must be last + 1); otherwise an ``inval_seq`` (must not be ahead of the last seen)."""
        known = self.senders.get(source)
        if known is not None:
            self.senders.move_to_end(source)
            if known[0] != epoch:
                self._gap(f"{source} restarted (new epoch)")
            elif exact and seq != known[1] + 1:
                self._gap(f"{source} seq {seq} after {known[1]}")
            elif not exact and seq > known[1]:
                self._gap(f"{source} published seq {seq}, last received {known[1]}")
            elif not exact:
                return  # a heartbeat that is not ahead: keep the invalidation seq we have
            known[0], known[1] = epoch, seq
        else:
            self.senders[source] = [epoch, seq]
            if len(self.senders) > _MAX_SENDERS:
                self.senders.popitem(last=False)

    def _gap(self, why: str) -> None:
        self.stats_c["gaps"] += 1
        self._flush_l1()
        log.info("aci-cache %s: lost invalidations (%s): local cache flushed", self.instance_id, why)

    # ------------------------------------------------------------------------------------------
    # stats

    def stats(self) -> Dict[str, Any]:
        with self.lock:
            d: Dict[str, Any] = dict(
                total_reads=self.n_reads,
                total_writes=self.n_writes,
                cache_hits=self.n_hits,
                cache_misses=self.n_reads - self.n_hits,
            )
            d.update(self.stats_c)
            d["current_strategy"] = self.strategy
            d["write_rate"] = self.write_rate
            d["strategy_switches"] = list(self.switch_log)
            d["malformed"] = sum(self.malformed.values())
            d["malformed_by_kind"] = {k: v for k, v in self.malformed.items() if v}
            d["l1_entries"] = len(self.l1)
            d["l1_bytes"] = self.l1_bytes
            d["link_up"] = self.link_up
            d["role"] = "controller" if self.is_controller else "follower"
            d["configured_role"] = self.configured_role
            d["instance_id"] = self.instance_id
            d["policy"] = f"{self.engine.name} {self.engine.version}"
            return d
