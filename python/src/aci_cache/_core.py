"""Everything the thread and asyncio front ends share: the L1, the policy and its fault rule, and
the fleet protocol v2 (docs/WIRE.md). Nothing here does I/O.

The front ends (``cache.AdaptiveCache``, ``aio.AsyncAdaptiveCache``) run the *programs* below:
generators that yield I/O requests and receive their results (or have the I/O error thrown in):

  ("cmds", [args, ...])      run Redis commands (one, or a non-transactional pipeline) -> results
  ("wait", seconds)          sleep until the tick is due, woken early by ``wake`` or stop
  ("sleep", seconds)         sleep, woken early only by stop
  ("callbacks", [...])       run on_switch callbacks (the asyncio front end awaits coroutines)
  ("ps_open",) ("ps_close",) open / close the Pub/Sub connection
  ("ps_sub", [ch]) ("ps_unsub", [ch])  (un)subscribe
  ("ps_get", seconds)        the next Pub/Sub message (a redis-py dict) or None
  ("wake",)                  make the tick program run now

So the protocol is written once, and each front end is only its I/O.

Locking: ``self.lock`` guards the L1, the counters and the receiving state; it is held only for
in-memory work, never across I/O or a policy call, and no other lock is taken under it.
``self.seq_lock`` guards the seqs handed out, the publishes in flight and the flush owed (see
``_publishing``); the same rules, and neither lock is taken under the other.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Generator, List, Optional, Tuple

from . import wire
from .config import WIT_TO_PY, CacheConfig, ConfigValueError
from .engine import ConfigError as EngineConfigError
from .engine import Engine, EngineError, PolicyLoadError
from .stats import CacheStats

log = logging.getLogger("aci_cache")

_STRIPES = 1024
_MAX_SWITCH_LOG = 1000
U32_MAX = wire.U32_MAX
#: Period of the controller's strategy_update and of every instance's heartbeat (WIRE.md 3).
HEARTBEAT = 1.0
BACKOFF_MIN, BACKOFF_MAX = 0.05, 5.0
#: Faults in a row after which re-creating the policy backs off (WIRE.md 7).
FAULTS_BEFORE_BACKOFF = 3

#: Take or renew the controller lease atomically: renew if we hold it, take it if free.
LEASE_LUA = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

#: Give the lease up at stop() if we still hold it.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

Program = Generator[Tuple[Any, ...], Any, Any]


@dataclass(frozen=True)
class RunningPolicy:
    """The policy an instance runs: ``name``/``version`` from its ``describe``, ``sha256`` of the
    component's bytes (lowercase hex; its identity in a fleet rollout)."""

    name: str
    version: str
    sha256: str


class SwapRequest:
    """A validated policy instance waiting for the tick to swap it in (``Core.prepare_swap``)."""

    __slots__ = ("engine", "config", "done", "error", "info", "after")

    def __init__(self, engine: Engine, config: Dict[str, Any]):
        self.engine = engine
        self.config = config
        #: Called on the tick right after the swap (the rollout bookkeeping moves with it).
        self.after: Optional[Callable[[], None]] = None
        self.done = threading.Event()  # set once swapped in and the old one's keys are published
        self.error: Optional[BaseException] = None
        self.info = RunningPolicy(engine.name, engine.version, engine.sha256)


def _channel(ch: Any) -> Any:
    return ch.decode("utf-8", "replace") if isinstance(ch, (bytes, bytearray)) else ch


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def ttl_seconds(ttl: Any, default: float) -> float:
    if ttl is None:
        return float(default)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or None, got {type(ttl).__name__}")
    if not (math.isfinite(ttl) and ttl > 0) or ttl * 1000 >= 2 ** 62:
        raise ValueError(f"ttl must be a positive, finite number of seconds, got {ttl!r}")
    return float(ttl)


def set_cmd(rk: str, value: Any, ttl: float) -> Tuple[Any, ...]:
    if ttl.is_integer():
        return ("SET", rk, value, "EX", int(ttl))
    return ("SET", rk, value, "PX", max(1, int(round(ttl * 1000))))


def own_client(client: Any, timeout: float, retry: Any) -> Tuple[Any, Any]:
    """A client for this cache's own commands over a pool of its own, with ``timeout`` on every
    socket operation and no retries, so that a call fails within ``command_timeout`` on a frozen
    or unreachable Redis (redis-py's defaults retry three times with backoff). The user's client
    is left as it is. Returns (client, pool to disconnect at stop, or None when the client is
    used as given)."""
    pool = getattr(client, "connection_pool", None)
    kw = getattr(pool, "connection_kwargs", None)
    if pool is None or not isinstance(kw, dict) or getattr(pool, "connection_class", None) is None:
        return client, None
    kw = dict(kw)
    kw["socket_timeout"] = timeout
    kw["socket_connect_timeout"] = timeout
    kw["retry"] = retry
    for k in ("maint_notifications_pool_handler", "orig_socket_timeout", "orig_socket_connect_timeout"):
        kw.pop(k, None)
    try:
        own_pool = type(pool)(connection_class=pool.connection_class, **kw)
        return type(client)(connection_pool=own_pool), own_pool
    except Exception as e:  # an unusual client: use it as given
        log.debug("aci-cache: using the given client as is (%s)", e)
        return client, None


class Core:
    def __init__(self, cfg: CacheConfig, encoder: Any, decode_responses: bool, cluster: bool = False):
        self.cfg = cfg
        #: On a Redis Cluster (docs/WIRE.md "Redis Cluster"): sharded Pub/Sub on hash-tagged
        #: channels, and the topology watched every tick.
        self.cluster = cluster
        self.encoder = encoder
        self.decode_responses = decode_responses
        self._encoding = getattr(encoder, "encoding", "utf-8")
        # str values round-trip unchanged through encode/decode with strict errors
        self._str_fast = getattr(encoder, "encoding_errors", "strict") == "strict"
        self.instance_id = cfg.instance_id or wire.new_instance_id()
        self.epoch = wire.new_epoch()
        self.names = n = wire.Names(cfg.channel_prefix, cfg.namespace, self.instance_id)
        self.key_prefix = n.key_prefix
        self.ch_inval, self.ch_strategy, self.ch_reports, self.ch_live = n.invalidation, n.strategy, n.reports, n.liveness
        self.pub = "PUBLISH"
        if cluster:
            self.ch_inval, self.ch_strategy, self.ch_reports, self.ch_live = n.cluster_channels()
            self.pub = "SPUBLISH"
        # cluster topology: L1 serves only while every master owning slots is up (see _cluster)
        self.topo_ok = True
        self.topo_fp: Any = None
        self.resub_wanted = False  # the slot map changed: the subscription is over (WIRE.md 10.3)
        self.lease_key = n.lease
        self.enc = wire.Encoder(self.instance_id, self.epoch)
        self.lease_ms = max(1, int(round(cfg.controller_interval * 1000)))
        self.controller_timeout = float(cfg.controller_interval)
        self.liveness_timeout = float(cfg.liveness_timeout)
        self.max_lag = float(cfg.max_lag)
        self.local_ttl = float(cfg.local_ttl)
        self.default_ttl = float(cfg.default_ttl)
        self.max_entries = cfg.local_max_entries
        self.max_bytes = cfg.local_max_bytes
        self.configured_role = cfg.effective_role

        self.lock = threading.Lock()
        self._t0 = time.monotonic()
        self.policy_source: Any = cfg.policy if cfg.policy is not None else ("fixed" if cfg.strategy else "adaptive")
        self._local_source = self.policy_source  # what a rollout back to "local" runs
        self._local_label: Optional[str] = None
        self._local_strategy: Optional[str] = None
        self.last_fault = ""
        self.policy_label: Optional[str] = None
        self.engine: Optional[Engine] = None
        self.policy_config: Dict[str, Any] = {}
        self._make_engine()
        assert self.engine is not None
        self.policy_name = f"{self.engine.name} {self.engine.version}"
        self.policy = RunningPolicy(self.engine.name, self.engine.version, self.engine.sha256)
        # Swaps validated by prepare_swap, applied in order at the next tick (swap_in).
        self._swaps: List[SwapRequest] = []
        self.window_ms = int(self.policy_config.get("window-ms") or 5000)
        snap = self.engine.status(self.now_ms())
        self.strategy: str = snap.strategy
        self.write_rate: float = snap.write_rate
        self.faults_in_row = 0
        self.engine_born = self.now_ms()
        self.retry_engine_at = 0

        # L1: redis key -> (value, expires_at monotonic, size)
        self.l1: "OrderedDict[str, Tuple[Any, float, int]]" = OrderedDict()
        self.l1_bytes = 0
        self.stripes = [0] * _STRIPES
        self.writing: Dict[int, int] = {}  # stripe -> writes in flight
        self.flush_gen = 0
        self.link_up = False
        self.lagging = False
        self.stopping = False

        # writes since the last tick: key -> True if set() did not publish it (not eager)
        self.pending: Dict[str, bool] = {}
        self.pending_dups = 0
        self.report_count = 0
        self.remote_count = 0
        # keys of batched writes not yet covered by a published batch (for flush())
        self.unbatched: "OrderedDict[str, None]" = OrderedDict()
        self.unbatched_overflow = False

        # sending (WIRE.md 4); the seqs, in_flight, settled, need_flush and owed under seq_lock
        self.seq_lock = threading.Lock()
        self.seq = 0  # the last seq handed out (its publish may be unanswered yet)
        self.in_flight = 0  # publishes on P:invalidation holding seqs, not answered yet
        self.settled = 0  # the last seq with nothing in flight at or below it: what positions name
        self.marked = 0
        self.seq_at_tick = 0
        self.need_flush = False
        self.owed = 0  # +1 whenever a flush becomes owed: a flush planned before does not cover it
        self.last_strategy_update = -math.inf
        self.announced_strategy: Optional[str] = None
        self.last_heartbeat = -math.inf
        self.heartbeats_out: Deque[float] = deque(maxlen=16)  # wall times of unheard heartbeats

        # receiving
        self.detector = wire.LossDetector()
        self.last_msg = time.monotonic()

        # roles
        self.is_controller = self.configured_role == "controller"
        self.ctrl_strategy: Optional[str] = None
        self.ctrl_heard = -math.inf
        self.ctrl_rate = 0.0
        self.followed: Optional[str] = None  # last strategy given to follow(), None while leading
        self.led = False
        self.lease_ok = time.monotonic()
        self._subscribed_once = False
        self.subscribed = threading.Event()  # first subscription done (the sync front end waits on it)

        self.callbacks: List[Callable[[str, str], Any]] = []
        self.switch_log: List[Tuple[float, str, str]] = []
        self.n_reads = 0
        self.n_hits = 0
        self.n_writes = 0
        self.stats_c = dict(
            messages_sent=0,
            messages_received=0,
            pubsub_received=0,
            invalidations_applied=0,
            gaps=0,
            evictions=0,
            engine_faults=0,
            publish_errors=0,
            pubsub_errors=0,
            callback_errors=0,
            resubscribes=0,
            lag_suspensions=0,
            topology_suspensions=0,
            topology_changes=0,
            policy_swaps=0,
        )
        self.malformed = {k: 0 for k in wire.MALFORMED_KINDS}
        self._logged_kinds: set = set()
        # policy rollouts (WIRE.md 9); None when this instance does not follow them
        from .rollout import Follower

        self.rollout: Optional[Follower] = Follower(self) if cfg.follow_rollouts else None
        if self.rollout is not None and cluster:
            # in the channels' slot like the others (WIRE.md 10.1), or SSUBSCRIBE fails CROSSSLOT
            self.rollout.ch_policy = "{" + n.p + "}:policy"
        self.ch_policy = self.rollout.ch_policy if self.rollout is not None else None

    # ------------------------------------------------------------------------------------------
    # the policy and its fault rule (WIRE.md 7)

    def now_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def _make_engine(self) -> None:
        eng = Engine(self.policy_source, label=self.policy_label)
        if not self.policy_config:
            pc = eng.default_config()
            pc.update(self.cfg.policy_overrides())
            try:
                eng.configure(pc, self.now_ms())
            except EngineConfigError as e:
                name = WIT_TO_PY.get(e.field, e.field)
                raise ConfigValueError(name, f"{e.message} (policy field {e.field})") from None
            self.policy_config = pc
        else:  # a fresh instance after a fault: configured as before (a refusal is a fault)
            eng.configure(self.policy_config, self.now_ms())
        self.engine = eng

    def _fault(self, why: str, now: int) -> None:
        """The policy faulted: answer eager, drop the instance, retry after one window (backing
        off after FAULTS_BEFORE_BACKOFF faults in a row). Its buffered keys are lost: flush."""
        self.faults_in_row += 1
        self.last_fault = why[:160]
        n = self.faults_in_row - FAULTS_BEFORE_BACKOFF + 1
        delay = self.window_ms * (2 ** min(n, 6) if n > 0 else 1)
        self.retry_engine_at = now + delay
        self.engine = None
        self._owe_flush()
        with self.lock:
            self.stats_c["engine_faults"] += 1
            self.unbatched.clear()
            self.unbatched_overflow = False
        log.error("aci-cache %s: policy faulted (%s); eager for %d ms, then a fresh instance",
                  self.instance_id, why, delay)

    def _revive_engine(self, now: int) -> None:
        try:
            self._make_engine()
            eng = self.engine
            assert eng is not None
            self.engine_born = now
            if self.is_controller:
                self.led = False
                self.followed = None
            elif self.followed is not None:
                eng.follow(self.followed, now)
        except PolicyLoadError:
            raise
        except Exception as e:
            self._fault(f"re-creating: {type(e).__name__}: {e}", now)

    # ------------------------------------------------------------------------------------------
    # swapping the policy while serving

    def local_source(self) -> Any:
        return self._local_source

    def local_label(self) -> Optional[str]:
        return self._local_label

    def local_strategy(self) -> Optional[str]:
        return self._local_strategy

    def local_swapped(self, req: SwapRequest, strategy: Optional[str]) -> None:
        """A swap through the API: it becomes the local policy too (what a rollout back to
        "local" returns to), as in the Rust host."""
        self._local_source = req.engine.data
        self._local_label = req.engine.source
        self._local_strategy = strategy
        if self.rollout is not None:
            self.rollout.local_swapped()

    def prepare_swap(self, source: Any, *, strategy: Optional[str] = None,
                     config: Optional[Dict[str, Any]] = None, label: Optional[str] = None,
                     wit_errors: bool = False) -> SwapRequest:
        """Load, check and configure a new policy instance, off the tick (compiling takes a while).
        Nothing changes for the running one. Raises ``PolicyLoadError`` (not a usable component,
        or it faulted while being checked), ``ConfigValueError`` (its ``configure`` refused the
        settings, naming the setting), ``ValueError`` (``strategy``)."""
        if strategy is not None and strategy not in ("ttl", "batched", "eager"):
            raise ConfigValueError("strategy", f"must be ttl, batched or eager, got {strategy!r}")
        eng = Engine(source, label=label)
        try:
            pc = eng.default_config()
            pc.update(self.cfg.policy_overrides())
            if config:
                pc.update(config)
            if strategy is not None:
                pc["initial-strategy"] = strategy
            now = self.now_ms()
            try:
                eng.configure(pc, now)
            except EngineConfigError as e:
                if wit_errors:
                    raise
                name = WIT_TO_PY.get(e.field, e.field)
                raise ConfigValueError(name, f"{e.message} (policy field {e.field}, refused by {eng.name})") from None
            snap = eng.status(now)  # a policy that cannot even report is refused here, not at the tick
            del snap
        except EngineError as e:
            if isinstance(e, (PolicyLoadError, EngineConfigError)):
                raise
            raise PolicyLoadError(f"{eng.source}: faulted while being checked: {e}") from e
        return SwapRequest(eng, pc)

    def swap_now(self, req: SwapRequest) -> None:
        """Swap at once: only before the tick runs (at start), when nothing is buffered yet."""
        chunks: List[Tuple[List[str], str]] = []
        self._swap_in(req, self.now_ms(), chunks)
        req.done.set()

    def request_swap(self, req: SwapRequest) -> None:
        """Queue a prepared swap for the next tick (the front end wakes the tick)."""
        with self.lock:
            if self.stopping:
                raise RuntimeError("aci-cache: the cache is stopped; no policy swap")
            self._swaps.append(req)

    def _swap_in(self, req: SwapRequest, now: int, chunks: List[Tuple[List[str], str]]) -> None:
        """At a tick: drain the old instance (its buffered keys are published with this tick's
        messages, never dropped), hand the new one the mode, the strategy in force and the
        measured rate, and make it the policy. Never raises."""
        old = self.engine
        keys: Dict[str, None] = {}
        if old is not None:
            try:
                old.follow("eager", now)  # leaving batched makes the batch due
                b = old.pending_batch(now)
                if b.flush_all:
                    self._owe_flush()
                keys.update(dict.fromkeys(b.keys))
            except (EngineError, ValueError, TypeError) as e:
                log.warning("aci-cache %s: draining the old policy failed (%s); a flush covers its keys",
                            self.instance_id, e)
                self._owe_flush()
        with self.lock:
            # Our own record of batched keys not yet published covers what the policy held.
            overflow = self.unbatched_overflow
            keys.update(self.unbatched)
            self.unbatched.clear()
            self.unbatched_overflow = False
        if overflow:
            self._owe_flush()
        if keys and not self.need_flush:
            chunks.extend((c, "batched") for c in self.chunk_keys(list(keys)))
        eng = req.engine
        self.engine = eng
        self.policy_source = eng.data
        self.policy_label = eng.source
        self.policy_config = req.config
        self.window_ms = int(req.config.get("window-ms") or 5000)
        self.policy_name = f"{eng.name} {eng.version}"
        self.policy = req.info
        self.faults_in_row = 0
        self.retry_engine_at = 0
        self.engine_born = now
        with self.lock:
            self.stats_c["policy_swaps"] += 1
        try:
            prime = int(round(self.write_rate * self.window_ms / 1000.0))
            if prime > 0:
                eng.record_remote_writes(min(prime, U32_MAX), now)
            if self.is_controller:
                eng.follow(self.strategy, now)  # from the strategy in force, then decide
                eng.lead(now)
                self.led = True
                self.followed = None
            else:
                target = self.followed or "eager"
                eng.follow(target, now)
                self.followed = target
            snap = eng.status(now)
            self.strategy = snap.strategy
            self.write_rate = snap.write_rate
        except (EngineError, ValueError, TypeError) as e:
            self._fault(f"{type(e).__name__}: {e}", now)
        if req.after is not None:
            try:
                req.after()
            except Exception:  # pragma: no cover - bookkeeping only
                log.exception("aci-cache %s: after the policy swap", self.instance_id)
        log.info("aci-cache %s: policy swapped to %s (sha256 %s)", self.instance_id, self.policy_name,
                 eng.sha256[:12])

    # ------------------------------------------------------------------------------------------
    # keys and values

    def rkey(self, key: Any) -> str:
        t = type(key)
        if t is not str:
            if t is bytes:
                key = key.decode("utf-8")
            elif t is int or t is float:  # redis-py stores these as their text
                key = repr(key)
            else:
                raise TypeError(f"key must be a str (or bytes), got {t.__name__}: {key!r}"[:200])
        kp = self.key_prefix
        return kp + key if kp else self.names.redis_key(key)

    def normalize(self, value: Any) -> Any:
        """The value as a GET through the same client would return it (for read-your-writes)."""
        t = type(value)
        if t is str and self._str_fast:
            return value if self.decode_responses else value.encode(self._encoding)
        if t is bytes and not self.decode_responses:
            return value
        b = self.encoder.encode(value)  # raises redis DataError for None and other types
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
            l1 = self.l1
            while l1 and (len(l1) > self.max_entries or self.l1_bytes > self.max_bytes):
                _k, (_v, _e, s) = l1.popitem(last=False)
                self.l1_bytes -= s
                self.stats_c["evictions"] += 1

    def lookup(self, rk: str) -> Tuple[bool, Any, Optional[Tuple[int, int]]]:
        """L1 read. Returns (hit, value, fill token); the token is None when L1 is bypassed."""
        with self.lock:
            self.n_reads += 1
            if not self.link_up or self.lagging or not self.topo_ok:
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
        i = hash(rk) % _STRIPES
        with self.lock:
            if not self.link_up or self.lagging or not self.topo_ok or i in self.writing or token != (self.stripes[i], self.flush_gen):
                return
            self._install(rk, value, time.monotonic() + ttl)

    def begin_write(self, rk: str) -> Tuple[int, int]:
        """Before a SET/DEL: in-flight GETs of this key can no longer install (fill race)."""
        i = hash(rk) % _STRIPES
        with self.lock:
            g = self.stripes[i] + 1
            self.stripes[i] = g
            self.writing[i] = self.writing.get(i, 0) + 1
        return i, g

    def end_write(self, rk: str, value: Any, ttl: float, token: Tuple[int, int], ok: bool, published: bool,
                  sent: int = 0) -> None:
        """After a SET: read-your-writes, unless another write of the stripe overlapped this one
        (then which one Redis kept is unknown here, so neither is cached) or an invalidation came
        in between; and record the write for the next tick (and ``sent`` messages published)."""
        i, gen = token
        with self.lock:
            self.stats_c["messages_sent"] += sent
            w = self.writing[i] - 1
            if w:
                self.writing[i] = w
            else:
                del self.writing[i]
            alone = w == 0 and self.stripes[i] == gen
            # GETs that started during the write may have read the old value: void them
            self.stripes[i] += 1
            if ok and alone and self.link_up and not self.lagging and self.topo_ok:
                self._install(rk, value, time.monotonic() + (ttl if ttl < self.local_ttl else self.local_ttl))
            else:
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
    # sending (WIRE.md 4)
    #
    # A position (the inval_seq of a mark, strategy_update or write_report) names only a settled
    # seq: one whose publish, and the publish of every lower seq, Redis has answered. A position
    # sent while a publish is in flight could reach receivers before the invalidation it names
    # (on a cluster an eager write is the SET on the key's shard, then the SPUBLISH on ours; user
    # threads and tasks publish concurrently) and, past the reorder allowance, make every
    # receiver flush for a loss that is not one. So a publish on P:invalidation is counted in
    # flight from before it takes its seqs until Redis answered it: _publishing ... _settle.

    def _publishing(self, n: int, flush: bool = False) -> Tuple[int, Optional[int]]:
        """Count one publish on P:invalidation in flight and hand out its seqs: a flush's first
        if one is owed (or ``flush``), then ``n`` more. Returns (the first of the ``n``, the
        flush's seq being the one before it; None if no flush comes first, else the ``owed``
        count the flush answers). The caller then calls ``_settle`` once, whatever happens."""
        with self.seq_lock:
            self.in_flight += 1
            owed = self.owed if flush or self.need_flush else None
            if owed is not None:
                self.seq += 1
            first = self.seq + 1
            self.seq += n
        return first, owed

    def _settle(self, owed: Optional[int], err: Optional[BaseException] = None) -> None:
        """The publish counted by ``_publishing`` is over: answered, or (``err``) failed or
        abandoned mid-flight (an error, a cancelled task, a closed program). Receivers cannot
        know what they got of a failed one: a flush goes before the next invalidation."""
        with self.seq_lock:
            self.in_flight -= 1
            if err is not None:
                self.owed += 1
                self.need_flush = True
            elif owed == self.owed:  # a flush went out after everything it was owed for
                self.need_flush = False
        if err is not None:
            self._publish_failed(err, True)

    def _owe_flush(self) -> None:
        """Keys may have been lost: a flush before the next invalidation."""
        with self.seq_lock:
            self.owed += 1
            self.need_flush = True

    def position(self) -> int:
        """The ``inval_seq`` a position may name (WIRE.md 4): the last seq handed out if no
        publish is in flight, else the last one so obtained."""
        with self.seq_lock:
            if not self.in_flight:
                self.settled = self.seq
            return self.settled

    def _flush_cmd(self, seq: int, now: float) -> Tuple[Any, ...]:
        return (self.pub, self.ch_inval, self.enc.encode("flush", now, strategy="batched", seq=seq))

    def _inval_cmds(self, chunks: List[Tuple[List[str], str]],
                    flush: bool) -> Tuple[List[Tuple[Any, ...]], Optional[int]]:
        """PUBLISH commands for invalidations, preceded by a flush if one is owed (or ``flush``),
        and the ``owed`` for ``_settle``, which the caller calls unless the list is empty."""
        seq, owed = self._publishing(len(chunks), flush)
        now = time.time()
        cmds: List[Tuple[Any, ...]] = []
        enc, ch = self.enc, self.ch_inval
        try:
            if owed is not None:
                cmds.append(self._flush_cmd(seq - 1, now))
            for keys, strategy in chunks:
                cmds.append((self.pub, ch, enc.encode("invalidate", now, keys=keys, strategy=strategy, seq=seq)))
                seq += 1
        except BaseException as e:  # seqs taken and never sent: receivers will see a hole
            self._settle(owed, e)
            raise
        if not cmds:
            self._settle(None)
        return cmds, owed

    def _published(self, n: int) -> None:
        with self.lock:
            self.stats_c["messages_sent"] += n

    def _publish_failed(self, err: BaseException, inval: bool) -> None:
        with self.lock:
            self.stats_c["publish_errors"] += 1
        log.warning("aci-cache %s: publish %s (%s: %s)%s", self.instance_id,
                    "failed" if isinstance(err, Exception) else "abandoned", type(err).__name__, err,
                    "; a flush follows when Redis answers" if inval else "")

    @staticmethod
    def chunk_keys(keys: List[str]) -> List[List[str]]:
        n = wire.MAX_KEYS_PER_MESSAGE
        return [keys[i:i + n] for i in range(0, len(keys), n)]

    # ------------------------------------------------------------------------------------------
    # programs: the public operations

    # The hot operations are plan + done pairs rather than programs: a front end runs
    # ``plan.cmds`` (one round trip) between the two, which costs less than driving a generator.

    def get_plan(self, rk: str, token: Optional[Tuple[int, int]]) -> List[Tuple[Any, ...]]:
        if token is None:  # L1 bypassed (link down or lagging)
            return [("GET", rk)]
        return [("GET", rk), ("PTTL", rk)]

    def get_done(self, rk: str, token: Optional[Tuple[int, int]], res: Any) -> Any:
        if isinstance(res, BaseException):
            raise res
        if token is not None:
            self.fill(rk, res[0], res[1], token)
        return res[0]

    def set_plan(self, key: Any, value: Any, ttl: Any) -> Tuple[Any, ...]:
        """(cmds, rk, normalized value, ttl, write token, eager) for set_done."""
        rk = self.rkey(key)
        t = self.default_ttl if ttl is None else ttl_seconds(ttl, 0)
        norm = self.normalize(value)
        eager = self.strategy == "eager"
        if t.is_integer():
            cmd: Tuple[Any, ...] = ("SET", rk, value, "EX", int(t))
        else:
            cmd = ("SET", rk, value, "PX", max(1, int(round(t * 1000))))
        owed = None
        if eager:  # in flight until set_done
            seq, owed = self._publishing(1)
            now = time.time()
            pub = (self.pub, self.ch_inval, self.enc.invalidate_one(rk, "eager", seq, now))
            cmds = [cmd, pub] if owed is None else [self._flush_cmd(seq - 1, now), cmd, pub]
        else:
            cmds = [cmd]
        return cmds, rk, norm, t, self.begin_write(rk), eager, owed

    def set_done(self, plan: Tuple[Any, ...], res: Any) -> bool:
        """After set_plan's commands, whatever came of them (``res``: their results, or the
        exception, which a cancellation or an interrupt is too)."""
        cmds, rk, norm, t, token, eager, owed = plan
        if isinstance(res, BaseException):
            if eager:
                self._settle(owed, res)
            self.end_write(rk, norm, t, token, False, False)
            raise res
        if eager:
            self._settle(owed)
            self.end_write(rk, norm, t, token, True, True, len(cmds) - 1)
        else:
            self.end_write(rk, norm, t, token, True, False)
        return True

    def delete_plan(self, key: Any) -> Tuple[Any, ...]:
        rk = self.rkey(key)
        seq, owed = self._publishing(1)  # in flight until delete_done
        now = time.time()
        cmds = [] if owed is None else [self._flush_cmd(seq - 1, now)]
        cmds.append(("DEL", rk))
        cmds.append((self.pub, self.ch_inval, self.enc.invalidate_one(rk, "eager", seq, now)))
        return cmds, rk, None, 0.0, self.begin_write(rk), True, owed

    def delete_done(self, plan: Tuple[Any, ...], res: Any) -> int:
        cmds, rk, _n, _t, token, _e, owed = plan
        failed = isinstance(res, BaseException)
        self._settle(owed, res if failed else None)
        self.end_write(rk, None, 0.0, token, False, not failed, 0 if failed else len(cmds) - 1)
        if failed:
            raise res
        return int(res[len(cmds) - 2])

    def op_flush(self) -> Program:
        """Delete the data (the namespace's keys; without a namespace, the database, as the
        original did), and make every instance drop its L1 with one ``flush`` message."""
        with self.lock:
            self.pending.clear()
            self.unbatched.clear()
            self.unbatched_overflow = False
            self._flush_l1()
            self.flush_gen += 1
        if self.cluster:
            # every master's keys: the front end scans each (FLUSHDB goes to every master)
            yield ("cluster_clear", self.key_prefix + "*" if self.key_prefix else None)
        elif self.key_prefix:
            cursor: Any = 0
            pattern = self.key_prefix + "*"  # names are [A-Za-z0-9._-]: no glob character to escape
            while True:
                cursor, keys = (yield ("cmds", [("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)]))[0]
                if keys:
                    yield ("cmds", [("UNLINK", *keys)])
                if int(cursor) == 0:
                    break
        else:
            yield ("cmds", [("FLUSHDB",)])
        cmds, owed = self._inval_cmds([], True)
        try:
            yield ("cmds", cmds)
        except BaseException as e:  # failed, or abandoned (a cancelled task, a closed program)
            self._settle(owed, e)
            raise
        self._settle(owed)
        self._published(len(cmds))
        self.clear_local()

    def op_start(self) -> Program:
        """Fail fast on an unreachable Redis or bad credentials, and settle the auto role."""
        try:
            yield ("cmds", [("PING",)])
        except Exception as e:
            raise ConnectionError(f"aci-cache: Redis does not answer PING ({type(e).__name__}: {e})") from e
        if self.cluster:
            # the slot map L1 starts under: any change from it flushes what was filled meanwhile
            try:
                healthy, fp = yield ("topology",)
            except Exception:
                healthy, fp = False, None
            self.on_topology(healthy, fp)
        if self.configured_role == "auto":
            yield from self._lease()
        if self.rollout is not None:
            yield from self.rollout.start()

    def _lease(self) -> Program:
        try:
            held = (yield ("cmds", [("EVAL", LEASE_LUA, 1, self.lease_key, self.instance_id, self.lease_ms)]))[0]
        except Exception as e:
            log.warning("aci-cache %s: controller lease: %s", self.instance_id, e)
            # A lease not renewed for its whole length is someone else's by now.
            if self.is_controller and time.monotonic() - self.lease_ok > self.controller_timeout:
                self.set_role(False)
            return
        if held:
            self.lease_ok = time.monotonic()
        self.set_role(bool(held))

    def op_stop(self) -> Program:
        """The last tick: publish what is pending, give the lease up."""
        self.stopping = True
        try:
            yield from self._tick(final=True)
        except Exception as e:
            log.warning("aci-cache %s: final publish at stop failed: %s", self.instance_id, e)
        if self.configured_role == "auto" and self.is_controller:
            try:
                yield ("cmds", [("EVAL", RELEASE_LUA, 1, self.lease_key, self.instance_id)])
            except Exception as e:
                log.warning("aci-cache %s: releasing the controller lease: %s", self.instance_id, e)

    # ------------------------------------------------------------------------------------------
    # the tick

    def tick_loop(self) -> Program:
        interval = self.cfg.tick_interval
        while not self.stopping:
            yield ("wait", interval)
            if self.stopping:
                break
            try:
                yield from self._tick()
            except Exception:
                log.exception("aci-cache %s: tick failed", self.instance_id)

    def set_role(self, controller: bool) -> None:
        if controller != self.is_controller:
            log.info("aci-cache %s: now %s", self.instance_id, "controller" if controller else "follower")
            self.is_controller = controller
            self.led = False
            if not controller:
                self.ctrl_strategy = None
                self.ctrl_heard = -math.inf

    def _tick(self, final: bool = False) -> Program:
        if not final and self.cluster:
            try:
                healthy, fp = yield ("topology",)
            except Exception as e:
                healthy, fp = False, None
                log.debug("aci-cache %s: CLUSTER NODES: %s", self.instance_id, e)
            self.on_topology(healthy, fp)
        if not final and self.configured_role == "auto":
            yield from self._lease()
        mono = time.monotonic()
        now = self.now_ms()
        with self.lock:
            pending, self.pending = self.pending, {}
            dups, self.pending_dups = self.pending_dups, 0
            remote, self.remote_count = self.remote_count, 0
            reports, self.report_count = self.report_count, 0
            ctrl = self.ctrl_strategy if mono - self.ctrl_heard <= self.controller_timeout else None
            lost = self.detector.tick(now)
            if lost:
                self._lost("a sequence hole was not filled within the reorder allowance")
        chunks: List[Tuple[List[str], str]] = []
        old = self.strategy
        with self.lock:
            swaps, self._swaps = self._swaps, []
        if self.engine is None and now >= self.retry_engine_at and not swaps:
            self._revive_engine(now)
        if self.engine is not None:
            try:
                self._tick_engine(now, pending, dups, remote, ctrl, chunks)
                if self.faults_in_row and now - self.engine_born >= self.window_ms:
                    self.faults_in_row = 0
            except PolicyLoadError as e:
                self._fault(str(e), now)
            except (EngineError, ValueError, TypeError) as e:
                self._fault(f"{type(e).__name__}: {e}", now)
        for req in swaps:  # after the old instance took this tick's writes
            self._swap_in(req, now, chunks)
        if self.engine is None:
            self.strategy = "eager"
            chunks = []  # the flush (need_flush) covers every key the instance held
        # publish. The position is taken before this tick hands out seqs of its own (WIRE.md 4).
        pos = self.position()
        inval = bool(chunks) or self.need_flush
        cmds: List[Tuple[Any, ...]] = []
        # A mark when nothing went out on P:invalidation since the last tick (this tick's batch
        # included) and the position is unannounced: one per burst, none at idle.
        mark = 0
        if not inval and self.seq == self.seq_at_tick and pos > self.marked:
            cmds.append((self.pub, self.ch_inval, self.enc.encode("mark", time.time(), inval_seq=pos)))
            mark = pos
        wall = time.time()
        if not final:
            if self.is_controller:
                if self.strategy != self.announced_strategy or mono - self.last_strategy_update >= HEARTBEAT:
                    cmds.append((self.pub, self.ch_strategy, self.enc.encode(
                        "strategy_update", wall, strategy=self.strategy, write_rate=self.write_rate,
                        inval_seq=pos)))
                    self.announced_strategy = self.strategy
                    self.last_strategy_update = mono
            elif reports:
                cmds.append((self.pub, self.ch_reports, self.enc.encode(
                    "write_report", wall, count=min(reports, U32_MAX), inval_seq=pos)))
            if mono - self.last_heartbeat >= HEARTBEAT:
                cmds.append((self.pub, self.ch_live, self.enc.encode("heartbeat", wall)))
                self.last_heartbeat = mono
                self.heartbeats_out.append(wall)
            self._check_lag(wall)
        owed = None
        held = 0
        if inval:  # last: in flight from here until answered
            inval_cmds, owed = self._inval_cmds(chunks, False)
            held = len(inval_cmds)
            cmds = inval_cmds + cmds
        self.seq_at_tick = self.seq
        if cmds:
            try:
                yield ("cmds", cmds)
            except BaseException as e:  # failed, or abandoned (a cancelled task, a closed program)
                # A flush follows if invalidations went with it; a lost mark alone needs none:
                # `marked` stays behind, so the mark is sent again.
                if held:
                    self._settle(owed, e)
                else:
                    self._publish_failed(e, False)
                with self.lock:  # a heartbeat that was not sent is not late
                    if self.heartbeats_out and self.heartbeats_out[-1] == wall:
                        self.heartbeats_out.pop()
                if not isinstance(e, Exception):
                    raise
            else:
                if held:
                    self._settle(owed)
                if mark:
                    self.marked = mark
                self._published(len(cmds))
        for req in swaps:  # swapped; the old keys are published (or a flush is owed)
            req.done.set()
        if self.strategy != old:
            self._switched(old, self.strategy)
            cbs = [(cb, old, self.strategy) for cb in list(self.callbacks)]
            if cbs and not final:
                yield ("callbacks", cbs)

    def _tick_engine(self, now: int, pending: Dict[str, bool], dups: int, remote: int, ctrl: Optional[str],
                     chunks: List[Tuple[List[str], str]]) -> None:
        eng = self.engine
        assert eng is not None
        if self.is_controller:
            if not self.led:
                eng.lead(now)
                self.followed = None
                self.led = True
                # primed with the fleet rate last announced, so a takeover under load does not
                # switch down for lack of history
                prime = int(round(self.ctrl_rate * self.window_ms / 1000.0))
                if prime > 0:
                    eng.record_remote_writes(min(prime, U32_MAX), now)
            if remote:
                eng.record_remote_writes(min(remote, U32_MAX), now)
        if dups:
            # rewrites of a key within one tick move the rate; buffering a key once is enough
            eng.record_remote_writes(min(dups, U32_MAX), now)
        unpublished: List[str] = []
        after = self.strategy
        if pending:
            keys = list(pending)
            after = eng.record_write(keys[0], now) if len(keys) == 1 else eng.record_writes(keys, now)
            unpublished = [k for k, unpub in pending.items() if unpub]
            if after == "eager" and unpublished:
                # The rate crossed into eager during this tick's writes: the policy buffers none
                # of the keys counted after the switch and expects the host to have published them.
                chunks.extend((c, "eager") for c in self.chunk_keys(unpublished))
        if unpublished and (self.strategy == "batched" or after == "batched"):
            with self.lock:  # for flush(): batched writes whose batch is not published yet
                for k in unpublished:
                    self.unbatched[k] = None
                if len(self.unbatched) > wire.MAX_MESSAGE_KEYS:
                    self.unbatched.clear()
                    self.unbatched_overflow = True
        if not self.is_controller:
            # a follower starts eager and falls back to eager without a controller
            target = ctrl or "eager"
            if target != self.followed:
                eng.follow(target, now)
                self.followed = target
        snap = eng.status(now)
        if snap.batch_due or self.stopping:
            b = eng.pending_batch(now)
            cap = self.policy_config.get("batch-max-keys")
            if isinstance(cap, int) and cap > 0 and len(b.keys) > cap:
                raise EngineError(f"pending-batch returned {len(b.keys)} keys, over its cap of {cap}")
            if b.flush_all:
                self._owe_flush()
            elif b.keys:
                chunks.extend((c, "batched") for c in self.chunk_keys(b.keys))
            with self.lock:
                overflow = self.unbatched_overflow
                if not overflow and self.stopping:
                    chunks.extend((c, "batched") for c in self.chunk_keys(list(self.unbatched)))
                self.unbatched.clear()
                self.unbatched_overflow = False
            if overflow:
                self._owe_flush()
        self.write_rate = snap.write_rate
        self.strategy = snap.strategy

    def _switched(self, old: str, new: str) -> None:
        with self.lock:
            self.switch_log.append((time.time(), old, new))
            if len(self.switch_log) > _MAX_SWITCH_LOG:
                del self.switch_log[: len(self.switch_log) - _MAX_SWITCH_LOG]
        log.info("aci-cache %s: strategy %s -> %s (%.1f writes/s)", self.instance_id, old, new, self.write_rate)

    def callback_failed(self) -> None:
        with self.lock:
            self.stats_c["callback_errors"] += 1
        log.exception("aci-cache %s: on_switch callback failed", self.instance_id)

    # ------------------------------------------------------------------------------------------
    # lag (WIRE.md 5): our own messages, stamped by our clock, measure it

    def _check_lag(self, wall: float) -> None:
        with self.lock:
            out = self.heartbeats_out
            lag = wall - out[0] if out else 0.0
            if out and lag > self.max_lag + HEARTBEAT:
                out.popleft()  # a heartbeat lost with a publish error must not count forever
            self._lag(lag)

    def _lag(self, lag: float) -> None:
        if lag > self.max_lag:
            if not self.lagging:
                self.lagging = True
                self.stats_c["lag_suspensions"] += 1
                log.warning("aci-cache %s: subscription lags %.2f s: local cache suspended", self.instance_id, lag)
        elif self.lagging and lag < self.max_lag / 2:
            self.lagging = False
            self._flush_l1()
            log.warning("aci-cache %s: subscription caught up: local cache flushed and back", self.instance_id)

    # ------------------------------------------------------------------------------------------
    # receiving

    def wanted_channels(self) -> List[str]:
        ch = [self.ch_inval, self.ch_strategy, self.ch_live]
        if self.ch_policy is not None:
            ch.append(self.ch_policy)
        if self.is_controller:
            ch.append(self.ch_reports)
        return ch

    def _malformed(self, kind: str, detail: str) -> None:
        with self.lock:
            self.malformed[kind] += 1
            first = kind not in self._logged_kinds
            self._logged_kinds.add(kind)
        if first:
            log.warning("aci-cache %s: ignoring a malformed message (%s): %s (logged once per kind)",
                        self.instance_id, kind, detail[:300])

    def on_own(self, count: int, last_ts: bytes) -> None:
        """``count`` of our own messages, pre-filtered by the reader; the last one's timestamp."""
        self.last_msg = time.monotonic()
        try:
            ts: Optional[float] = float(last_ts)
        except ValueError:
            ts = None
        wall = time.time()
        with self.lock:
            self.stats_c["pubsub_received"] += count
            if ts is not None:
                out = self.heartbeats_out
                while out and out[0] <= ts:
                    out.popleft()
                self._lag(wall - ts)

    def on_message(self, data: Any) -> bool:
        """One Pub/Sub message. Never raises. True when the tick should run now."""
        self.last_msg = time.monotonic()
        ts = self.enc.own_timestamp(data) if isinstance(data, (bytes, str)) else None
        if ts is not None:  # ours: it only measures the lag
            wall = time.time()
            with self.lock:
                self.stats_c["pubsub_received"] += 1
                out = self.heartbeats_out
                while out and out[0] <= ts:
                    out.popleft()
                self._lag(wall - ts)
            return False
        try:
            m = wire.decode(data if isinstance(data, (bytes, bytearray, str)) else b"")
        except wire.Malformed as e:
            with self.lock:
                self.stats_c["pubsub_received"] += 1
            self._malformed(e.kind, e.detail)
            return False
        except Exception as e:  # defensive: nothing may escape the Pub/Sub path
            with self.lock:
                self.stats_c["pubsub_received"] += 1
            self._malformed("bad-field", f"{type(e).__name__}: {e}")
            return False
        return self.apply(m)

    def apply(self, m: Dict[str, Any]) -> bool:
        action, source = m["action"], m["source"]
        now = self.now_ms()
        with self.lock:
            self.stats_c["pubsub_received"] += 1
            if source == self.instance_id:
                return False  # ours from an earlier epoch (a re-created cache with the same id)
            self.stats_c["messages_received"] += 1
            det = self.detector
            if action == "invalidate":
                if m["seq"] is not None and det.message(source, m["epoch"], m["seq"], now):
                    self._lost(f"{source} restarted or skipped a sequence number")
                l1 = self.l1
                stripes = self.stripes
                keys = m["keys"]
                for k in keys:
                    stripes[hash(k) % _STRIPES] += 1
                    e = l1.pop(k, None)
                    if e is not None:
                        self.l1_bytes -= e[2]
                self.stats_c["invalidations_applied"] += len(keys)
                return False
            if action == "flush":
                if m["seq"] is not None and det.message(source, m["epoch"], m["seq"], now):
                    self.stats_c["gaps"] += 1
                self._flush_l1()
                return False
            pos = m.get("inval_seq")
            if pos is not None and det.position(source, m["epoch"], pos, now):
                self._lost(f"{source}'s last invalidation did not arrive")
            if action == "strategy_update":
                self.ctrl_rate = m["write_rate"]
                if self.is_controller:
                    return False  # two controllers can overlap for one lease period
                changed = m["strategy"] != self.ctrl_strategy or time.monotonic() - self.ctrl_heard > self.controller_timeout
                self.ctrl_strategy = m["strategy"]
                self.ctrl_heard = time.monotonic()
                return changed
            if action == "write_report":
                if self.is_controller:
                    self.remote_count = min(self.remote_count + m["count"], 1 << 64)
            return False

    def on_topology(self, healthy: bool, fp: Any) -> None:
        """The tick's reading of the cluster topology (or healthy=False if it could not be read,
        or a command failed on a connection): flush and stop serving L1 while a master is down,
        flush again when the masters changed (see _cluster)."""
        with self.lock:
            if not healthy:
                if self.topo_ok:
                    self.topo_ok = False
                    self.stats_c["topology_suspensions"] += 1
                    log.warning("aci-cache %s: a cluster master is failing or unreachable: local cache flushed "
                                "and suspended", self.instance_id)
                self._flush_l1()
                return
            changed = self.topo_fp is not None and fp != self.topo_fp
            self.topo_fp = fp
            if changed or not self.topo_ok:
                self._flush_l1()
                if changed:
                    self.stats_c["topology_changes"] += 1
                    self.resub_wanted = True
                if not self.topo_ok:
                    log.warning("aci-cache %s: cluster topology healthy again%s: local cache back", self.instance_id,
                                " (masters changed)" if changed else "")
                self.topo_ok = True

    def _lost(self, why: str) -> None:
        """A loss (caller holds the lock): flush L1."""
        self.stats_c["gaps"] += 1
        self._flush_l1()
        log.info("aci-cache %s: lost invalidations (%s): local cache flushed", self.instance_id, why)

    # ------------------------------------------------------------------------------------------
    # the subscription (WIRE.md 5)

    def link_down(self, err: BaseException) -> None:
        with self.lock:
            was = self.link_up
            self.link_up = False
            self._flush_l1()
            if was:
                self.stats_c["pubsub_errors"] += 1
        if was:
            log.warning("aci-cache %s: Pub/Sub link down (%s: %s); reads bypass the local cache until "
                        "resubscribed", self.instance_id, type(err).__name__, err)

    def link_resubscribed(self) -> None:
        """Subscribed (again): messages may have been lost meanwhile: flush, forget positions."""
        with self.lock:
            if self._subscribed_once:
                self.stats_c["resubscribes"] += 1
            self._subscribed_once = True
            self._flush_l1()
            self.detector.resubscribed()
            # Our heartbeats published while no subscription listened are lost for good; left
            # outstanding, a tick read their age as lag and suspended L1 ~max_lag after a
            # resubscribe for nothing (a race that flaked test_a_silent_subscription_is_presumed_dead
            # when its read came late). One published from here on is heard back and measured.
            self.heartbeats_out.clear()
            self.link_up = True
            self.last_msg = time.monotonic()
        if self.rollout is not None:
            self.rollout.on_resubscribed()
        self.subscribed.set()

    def sub_loop(self) -> Program:
        backoff = BACKOFF_MIN
        while not self.stopping:
            current: set = set()
            try:
                yield ("ps_open",)
                want = self.wanted_channels()
                yield ("ps_sub", want)
                current = set(want)
                confirmed: set = set()
                base = set(want[:3])
                self.last_msg = time.monotonic()
                up = False
                while not self.stopping:
                    if self.resub_wanted:
                        self.resub_wanted = False
                        raise ConnectionError("the cluster's slot map changed: resubscribing")
                    msg = yield ("ps_get", 0.1)
                    if msg is not None:
                        kind = msg.get("type")
                        if isinstance(kind, bytes):
                            kind = kind.decode()
                        if kind == "smessage":
                            kind = "message"
                        elif kind == "ssubscribe":
                            kind = "subscribe"
                        elif kind == "sunsubscribe":
                            ch = msg.get("channel")
                            ch = ch.decode("utf-8", "replace") if isinstance(ch, bytes) else ch
                            if ch in base:  # the server dropped us: the channel's slot moved
                                raise ConnectionError(f"the server ended our subscription to {ch} (slot moved)")
                        if kind == "message":
                            if self.ch_policy is not None and _channel(msg.get("channel")) == self.ch_policy:
                                self.last_msg = time.monotonic()
                                with self.lock:
                                    self.stats_c["pubsub_received"] += 1
                                assert self.rollout is not None
                                self.rollout.on_announcement(msg.get("data"))
                            elif self.on_message(msg.get("data")):
                                yield ("wake",)
                        elif kind == "own":
                            self.on_own(msg["count"], msg["data"])
                        elif kind == "subscribe":
                            self.last_msg = time.monotonic()
                            ch = msg.get("channel")
                            ch = ch.decode("utf-8", "replace") if isinstance(ch, bytes) else ch
                            if ch in confirmed and ch in base:  # the client resubscribed by itself
                                up = False
                                confirmed = set()
                            confirmed.add(ch)
                            if not up and confirmed >= base:
                                up = True
                                self.link_resubscribed()
                                backoff = BACKOFF_MIN
                    want = self.wanted_channels()
                    if set(want) != current:
                        add = [c for c in want if c not in current]
                        drop = [c for c in current if c not in want]
                        if add:
                            yield ("ps_sub", add)
                        if drop:
                            yield ("ps_unsub", drop)
                        current = set(want)
                    silent = time.monotonic() - self.last_msg
                    if silent > self.liveness_timeout:
                        raise ConnectionError(f"no message on the subscription for {silent:.1f} s")
            except Exception as e:
                if self.stopping:
                    break
                self.link_down(e)
                yield ("ps_close",)
                yield ("sleep", backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX)
        with self.lock:
            self.link_up = False
        yield ("ps_close",)

    # ------------------------------------------------------------------------------------------
    # stats

    def stats(self) -> CacheStats:
        with self.lock:
            d: Dict[str, Any] = dict(
                total_reads=self.n_reads,
                total_writes=self.n_writes,
                cache_hits=self.n_hits,
                cache_misses=self.n_reads - self.n_hits,
                current_strategy=self.strategy,
                write_rate=self.write_rate,
                strategy_switches=list(self.switch_log),
            )
            d.update(self.stats_c)
            d["malformed"] = sum(self.malformed.values())
            d["malformed_by_kind"] = {k: v for k, v in self.malformed.items() if v}
            d["l1_entries"] = len(self.l1)
            d["l1_bytes"] = self.l1_bytes
            d["link_up"] = self.link_up
            d["lagging"] = self.lagging
            d["topology_ok"] = self.topo_ok
            d["role"] = "controller" if self.is_controller else "follower"
            d["is_controller"] = self.is_controller
            d["configured_role"] = self.configured_role
            d["instance_id"] = self.instance_id
            d["policy"] = self.policy_name if self.engine is not None else f"{self.policy_name} (faulted)"
            d["policy_name"] = self.policy.name
            d["policy_version"] = self.policy.version
            d["policy_hash"] = self.policy.sha256
        ro = self.rollout
        if ro is not None:
            d["policy_origin"] = "local" if ro.running.target.local else "pushed"
            d["policy_rollout"] = ro.acted
            d["policy_rejected"] = ro.rejected
            d["policy_trust"] = ro.trust.kind
            d["policy_faults"] = self.stats_c["engine_faults"] - ro.fault_base
        else:
            d["policy_origin"] = "local"
            d["policy_rollout"] = 0
            d["policy_faults"] = self.stats_c["engine_faults"]
        return CacheStats(d)


class FrontEnd:
    """The read-only members both front ends share (``self._core`` is their Core)."""

    _core: Core
    _stopped: bool

    @property
    def instance_id(self) -> str:
        """This instance's id in messages (12 hex characters unless configured)."""
        return self._core.instance_id

    @property
    def strategy(self) -> str:
        """The strategy in force: ``"ttl"``, ``"batched"`` or ``"eager"``."""
        return self._core.strategy

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters (attributes, and read-only mapping access)."""
        return self._core.stats()

    @property
    def role(self) -> str:
        return "controller" if self._core.is_controller else "follower"

    @property
    def policy(self) -> RunningPolicy:
        """The policy this instance runs (name, version, sha256 of the component)."""
        return self._core.policy

    def policy_status(self) -> Dict[str, Any]:
        """This instance's policy status record (docs/WIRE.md 9.8): what it runs, from where,
        the last rollout it acted on and the last one it refused."""
        ro = self._core.rollout
        if ro is not None:
            return ro.status()
        core = self._core
        p = core.policy
        return {"id": core.instance_id, "host": "python", "name": p.name, "version": p.version, "sha256": p.sha256,
                "origin": "local", "rollout": 0, "strategy": core.strategy, "controller": core.is_controller,
                "faults": core.stats_c["engine_faults"], "trust": "none", "rejected": None,
                "timestamp": round(time.time(), 3)}

    def _swap_wait_s(self) -> float:
        """How long a swap may wait for its tick: the tick's own commands are bounded by
        ``command_timeout`` (the lease, then the publish)."""
        cfg = self._core.cfg
        return 2 * cfg.command_timeout + 4 * cfg.tick_interval + 1.0

    @property
    def is_controller(self) -> bool:
        return self._core.is_controller

    def on_switch(self, callback: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
        """Call ``callback(from, to)`` after every strategy change, from the background tick (the
        asyncio front end awaits a coroutine function's result). Usable as a decorator."""
        with self._core.lock:
            self._core.callbacks.append(callback)
        return callback

    def clear_local(self) -> None:
        """Drop this instance's local cache (never touches Redis)."""
        self._core.clear_local()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.instance_id} {self.role} {self.strategy}"
                f"{' stopped' if self._stopped else ''}>")
