"""AdaptiveCache: the thread-based front end over a synchronous redis-py client."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._core import Core, TickOutput, log
from .config import CacheConfig

__all__ = ["AdaptiveCache", "LEASE_LUA", "RELEASE_LUA"]

#: Take or renew the controller lease: renew if we hold it, take it if free (SET NX PX).
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

#: Pub/Sub liveness: PING this often; no PONG within PONG_TIMEOUT means the link is dead.
PING_INTERVAL = 1.0
PONG_TIMEOUT = 3.0


def _ttl_arg(ttl: Any, default: float) -> float:
    if ttl is None:
        return float(default)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0 or ttl != ttl:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return float(ttl)


def _set_cmd(target: Any, rk: str, value: Any, ttl: float) -> Any:
    """SET key value EX|PX ttl. Sent with execute_command, redis-py's public generic call: its
    Redis.set() builds the same command but spends ~10 us of Python on option handling."""
    if ttl.is_integer():
        return target.execute_command("SET", rk, value, "EX", int(ttl))
    return target.execute_command("SET", rk, value, "PX", max(1, int(round(ttl * 1000))))


def _decode_responses(client: Any) -> Tuple[Any, bool]:
    enc = client.get_encoder()
    return enc, bool(getattr(enc, "decode_responses", False))


class AdaptiveCache:
    """A near cache over Redis whose fleet-wide invalidation strategy adapts to the write rate.

    ``AdaptiveCache(redis_client, pubsub_client=None, **config)``: ``redis_client`` is a
    ``redis.Redis``; the Pub/Sub connection is taken from ``pubsub_client`` when given (a client
    or a ``PubSub``), else from ``redis_client.pubsub()``. Settings: see :class:`CacheConfig`.
    Invalid settings raise ``ValueError`` naming the setting.

    Two background threads (daemons) run until :meth:`stop`: the tick (policy, batches,
    heartbeats, controller lease) and the Pub/Sub reader.
    """

    def __init__(self, redis_client: Any, pubsub_client: Any = None, **config: Any):
        cfg = CacheConfig.from_kwargs(**config)
        self.config = cfg
        self._default_ttl = float(cfg.default_ttl)
        self._client = redis_client
        encoder, decode = _decode_responses(redis_client)
        self._core = Core(cfg, encoder, decode)
        self._pubsub_src = pubsub_client
        self._pub_lock = threading.Lock()
        self._stop_evt = threading.Event()
        self._wake = threading.Event()
        self._subscribed = threading.Event()
        self._stopped = False
        self._drain_in_tick = False
        self._stop_lock = threading.Lock()
        self._lease = redis_client.register_script(LEASE_LUA)
        self._release = redis_client.register_script(RELEASE_LUA)
        self._ps: Any = None
        if self._core.configured_role == "auto":
            try:
                self._lease_once()
            except Exception as e:  # Redis down at start: the tick retries
                log.warning("aci-cache %s: controller lease: %s", self.instance_id, e)
        iid = self._core.instance_id
        self._ps_thread = threading.Thread(target=self._pubsub_loop, name=f"aci-pubsub-{iid}", daemon=True)
        self._tick_thread = threading.Thread(target=self._tick_loop, name=f"aci-tick-{iid}", daemon=True)
        self._ps_thread.start()
        self._tick_thread.start()
        if cfg.connect_timeout > 0:
            self._subscribed.wait(cfg.connect_timeout)

    # ------------------------------------------------------------------------------------------
    # public API

    @property
    def instance_id(self) -> str:
        return self._core.instance_id

    @property
    def strategy(self) -> str:
        """The strategy in force: ``"ttl"``, ``"batched"`` or ``"eager"``."""
        return self._core.strategy

    @property
    def stats(self) -> Dict[str, Any]:
        return self._core.stats()

    @property
    def role(self) -> str:
        return "controller" if self._core.is_controller else "follower"

    def on_switch(self, callback: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
        """Call ``callback(from, to)`` on every strategy change (from the tick thread)."""
        with self._core.lock:
            self._core.callbacks.append(callback)
        return callback

    def get(self, key: Any) -> Any:
        core = self._core
        rk = core.rkey(key)
        hit, value, token = core.lookup(rk)
        if hit:
            return value
        if token is None:  # L1 bypassed (Pub/Sub link down)
            return self._client.get(rk)
        pipe = self._client.pipeline(transaction=False)
        pipe.get(rk)
        pipe.pttl(rk)
        value, pttl = pipe.execute()
        core.fill(rk, value, pttl, token)
        return value

    def set(self, key: Any, value: Any, ttl: Optional[float] = None) -> bool:
        """SET with a TTL (``default_ttl`` seconds unless given). Under ``eager`` the write and
        its invalidation go to Redis in one pipeline; otherwise the policy batches it or leaves
        it to the TTL."""
        core = self._core
        rk = core.rkey(key)
        t = self._default_ttl if ttl is None else _ttl_arg(ttl, 0)
        norm = core.normalize(value)
        token = core.begin_write(rk)
        ok = published = False
        try:
            if core.strategy == "eager":
                with self._pub_lock:
                    seq = core.next_seq()
                    pipe = self._client.pipeline(transaction=False)
                    _set_cmd(pipe, rk, value, t)
                    pipe.publish(core.ch_inval, core.invalidate_payload([rk], "eager", seq))
                    pipe.execute()
                    core.mark_published(seq)
                published = True
                core.sent()
            else:
                _set_cmd(self._client, rk, value, t)
            ok = True
        finally:
            core.end_write(rk, norm, t, token, ok, published)
        return True

    def delete(self, key: Any) -> int:
        """DEL, and an invalidation published at once whatever the strategy."""
        core = self._core
        rk = core.rkey(key)
        core.begin_write(rk)
        published = False
        try:
            with self._pub_lock:
                seq = core.next_seq()
                pipe = self._client.pipeline(transaction=False)
                pipe.delete(rk)
                pipe.publish(core.ch_inval, core.invalidate_payload([rk], "eager", seq))
                n, _ = pipe.execute()
                core.mark_published(seq)
            published = True
            core.sent()
        finally:
            core.end_delete(rk, published)
        return int(n)

    def flush(self) -> None:
        """Publish the invalidations still waiting in a batch now (no-op under ttl/eager)."""
        chunks, flush_all = self._core.drain_for_flush()
        self._publish_invalidations([(c, "batched") for c in chunks], flush_all)

    def clear_local(self) -> None:
        """Drop this instance's local cache (never touches Redis)."""
        self._core.clear_local()

    def stop(self) -> None:
        """Stop the threads, publish what is still batched, give up the controller lease.
        Idempotent; safe to call from an on_switch callback."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop_evt.set()
        self._wake.set()
        me = threading.current_thread()
        for t in (self._tick_thread, self._ps_thread):
            if t is not me and t.is_alive():
                t.join(timeout=10)
                if t.is_alive():  # pragma: no cover
                    log.error("aci-cache %s: thread %s did not stop", self.instance_id, t.name)
        if me is self._tick_thread:
            self._drain_in_tick = True  # the tick loop drains once it returns from the callback
        else:
            self._final_drain()

    close = stop

    def __enter__(self) -> "AdaptiveCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<AdaptiveCache {self.instance_id} {self.role} {self.strategy}{' stopped' if self._stopped else ''}>"

    # ------------------------------------------------------------------------------------------
    # background work

    def _final_drain(self) -> None:
        core = self._core
        try:
            out = core.tick()
            out.strategy_update = False
            out.write_report = None
            self._publish_tick(out)
            self.flush()
        except Exception as e:
            log.warning("aci-cache %s: final drain at stop failed: %s", self.instance_id, e)
        if core.configured_role == "auto" and core.is_controller:
            try:
                self._release(keys=[core.lease_key], args=[core.instance_id])
            except Exception as e:
                log.warning("aci-cache %s: releasing the controller lease: %s", self.instance_id, e)

    def _lease_once(self) -> None:
        core = self._core
        held = self._lease(keys=[core.lease_key], args=[core.instance_id, core.lease_ms])
        core.set_role(bool(held))

    def _tick_loop(self) -> None:
        interval = self.config.tick_interval
        while not self._stop_evt.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop_evt.is_set():
                break
            try:
                self._tick_once()
            except Exception:
                log.exception("aci-cache %s: tick failed", self.instance_id)
        if self._drain_in_tick:
            self._final_drain()

    def _tick_once(self) -> None:
        core = self._core
        if core.configured_role == "auto":
            try:
                self._lease_once()
            except Exception as e:
                log.warning("aci-cache %s: controller lease: %s", self.instance_id, e)
        out = core.tick()
        self._publish_tick(out)
        core.run_callbacks(out.callbacks)

    def _publish_invalidations(self, inval: List[Tuple[List[str], str]], flush: bool) -> None:
        if not inval and not flush:
            return
        core = self._core
        try:
            with self._pub_lock:
                pipe = self._client.pipeline(transaction=False)
                last = 0
                for keys, strategy in inval:
                    last = core.next_seq()
                    pipe.publish(core.ch_inval, core.invalidate_payload(keys, strategy, last))
                if flush:
                    last = core.next_seq()
                    pipe.publish(core.ch_inval, core.flush_payload(last))
                pipe.execute()
                core.mark_published(last)
            core.sent(len(inval) + (1 if flush else 0))
        except Exception as e:
            core.publish_failed(e)

    def _publish_tick(self, out: TickOutput) -> None:
        core = self._core
        self._publish_invalidations(out.inval, out.flush)
        msgs = []
        if out.strategy_update:
            msgs.append((core.ch_strategy, core.strategy_payload()))
        if out.write_report is not None:
            msgs.append((core.ch_reports, core.report_payload(out.write_report)))
        if msgs:
            try:
                pipe = self._client.pipeline(transaction=False)
                for ch, payload in msgs:
                    pipe.publish(ch, payload)
                pipe.execute()
                core.sent(len(msgs))
            except Exception as e:
                core.publish_failed(e)

    def _new_pubsub(self) -> Any:
        src = self._pubsub_src
        if src is None:
            return self._client.pubsub()
        if hasattr(src, "get_message") and hasattr(src, "subscribe"):
            src.reset()  # a PubSub object given by the caller: reuse it
            return src
        return src.pubsub()

    def _close_pubsub(self, ps: Any, saved_retry: Any) -> None:
        if ps is None:
            return
        try:
            conn = getattr(ps, "connection", None)
            if conn is not None and saved_retry is not None:
                conn.retry = saved_retry
            ps.reset()
        except Exception:
            pass

    def _pubsub_loop(self) -> None:
        core = self._core
        channels = set(core.channels)
        backoff = 0.05
        ps: Any = None
        saved_retry: Any = None
        confirmed: set = set()
        last_ping = 0.0
        ping_pending_since: Optional[float] = None
        down_logged = False
        while not self._stop_evt.is_set():
            try:
                if ps is None:
                    ps = self._new_pubsub()
                    ps.subscribe(*core.channels)
                    # Let a dead link surface here instead of being retried silently inside
                    # redis-py while messages are lost (restored before the connection goes back
                    # to the pool).
                    conn = getattr(ps, "connection", None)
                    if conn is not None and hasattr(conn, "retry"):
                        from redis.backoff import NoBackoff
                        from redis.retry import Retry

                        saved_retry = conn.retry
                        conn.retry = Retry(NoBackoff(), 0)
                    confirmed = set()
                    last_ping = time.monotonic()
                    ping_pending_since = None
                msg = ps.get_message(timeout=0.1)
                if msg is not None:
                    kind = msg.get("type")
                    if kind == "message":
                        if core.on_message(msg.get("channel"), msg.get("data")):
                            self._wake.set()
                    elif kind == "subscribe":
                        ch = msg.get("channel")
                        if isinstance(ch, bytes):
                            ch = ch.decode("utf-8", "replace")
                        if ch in confirmed:  # redis-py reconnected and resubscribed by itself
                            confirmed = set()
                        confirmed.add(ch)
                        if confirmed >= channels:
                            core.link_resubscribed()
                            self._subscribed.set()
                            backoff = 0.05
                            if down_logged:
                                log.warning("aci-cache %s: Pub/Sub link back; local cache flushed", self.instance_id)
                            down_logged = False
                    elif kind == "pong":
                        ping_pending_since = None
                now = time.monotonic()
                if confirmed >= channels and now - last_ping >= PING_INTERVAL:
                    ps.ping()
                    last_ping = now
                    if ping_pending_since is None:
                        ping_pending_since = now
                if ping_pending_since is not None and now - ping_pending_since > PONG_TIMEOUT:
                    raise ConnectionError(f"no PONG on the Pub/Sub connection for {PONG_TIMEOUT} s")
            except Exception as e:
                if self._stop_evt.is_set():
                    break
                core.link_down()
                with core.lock:
                    core.stats_c["pubsub_errors"] += 1
                if not down_logged:
                    log.warning("aci-cache %s: Pub/Sub error (%s: %s); reconnecting", self.instance_id, type(e).__name__, e)
                    down_logged = True
                self._close_pubsub(ps, saved_retry)
                ps, saved_retry = None, None
                self._stop_evt.wait(backoff)
                backoff = min(backoff * 2, 2.0)
        with core.lock:
            core.link_up = False
        self._close_pubsub(ps, saved_retry)
