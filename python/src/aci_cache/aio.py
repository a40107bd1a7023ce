"""AsyncAdaptiveCache: the asyncio front end over ``redis.asyncio``.

Same semantics and settings as :class:`~aci_cache.AdaptiveCache`; the tick and the Pub/Sub
reader are tasks on the running loop. Use ``async with AsyncAdaptiveCache(client) as cache``, or
``cache = await AsyncAdaptiveCache(client).start()`` and ``await cache.stop()``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._core import Core, TickOutput, log
from .cache import LEASE_LUA, PING_INTERVAL, PONG_TIMEOUT, RELEASE_LUA, _set_cmd, _ttl_arg
from .config import CacheConfig

__all__ = ["AsyncAdaptiveCache"]


class AsyncAdaptiveCache:
    def __init__(self, redis_client: Any, pubsub_client: Any = None, **config: Any):
        cfg = CacheConfig.from_kwargs(**config)
        self.config = cfg
        self._client = redis_client
        enc = redis_client.get_encoder()
        self._core = Core(cfg, enc, bool(getattr(enc, "decode_responses", False)))
        self._pubsub_src = pubsub_client
        self._pub_lock: Optional[asyncio.Lock] = None
        self._stop_evt: Optional[asyncio.Event] = None
        self._wake: Optional[asyncio.Event] = None
        self._subscribed: Optional[asyncio.Event] = None
        self._tasks: List[asyncio.Task] = []
        self._started = False
        self._stopped = False
        self._lease = redis_client.register_script(LEASE_LUA)
        self._release = redis_client.register_script(RELEASE_LUA)

    # ------------------------------------------------------------------------------------------
    # lifecycle

    async def start(self) -> "AsyncAdaptiveCache":
        if self._started:
            return self
        self._started = True
        self._pub_lock = asyncio.Lock()
        self._stop_evt = asyncio.Event()
        self._wake = asyncio.Event()
        self._subscribed = asyncio.Event()
        if self._core.configured_role == "auto":
            try:
                await self._lease_once()
            except Exception as e:
                log.warning("aci-cache %s: controller lease: %s", self.instance_id, e)
        iid = self._core.instance_id
        self._tasks = [
            asyncio.create_task(self._pubsub_loop(), name=f"aci-pubsub-{iid}"),
            asyncio.create_task(self._tick_loop(), name=f"aci-tick-{iid}"),
        ]
        if self.config.connect_timeout > 0:
            try:
                await asyncio.wait_for(self._subscribed.wait(), self.config.connect_timeout)
            except asyncio.TimeoutError:
                pass
        return self

    async def _ensure(self) -> None:
        if not self._started:
            await self.start()

    async def stop(self) -> None:
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        assert self._stop_evt is not None and self._wake is not None
        self._stop_evt.set()
        self._wake.set()
        me = asyncio.current_task()
        others = [t for t in self._tasks if t is not me]
        if others:
            done, pending = await asyncio.wait(others, timeout=10)
            for t in pending:  # pragma: no cover
                t.cancel()
        await self._final_drain()

    aclose = stop

    async def __aenter__(self) -> "AsyncAdaptiveCache":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------------------
    # public API

    @property
    def instance_id(self) -> str:
        return self._core.instance_id

    @property
    def strategy(self) -> str:
        return self._core.strategy

    @property
    def stats(self) -> Dict[str, Any]:
        return self._core.stats()

    @property
    def role(self) -> str:
        return "controller" if self._core.is_controller else "follower"

    def on_switch(self, callback: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
        """``callback(from, to)`` on every strategy change; a coroutine function is awaited."""
        with self._core.lock:
            self._core.callbacks.append(callback)
        return callback

    async def get(self, key: Any) -> Any:
        core = self._core
        rk = core.rkey(key)
        hit, value, token = core.lookup(rk)
        if hit:
            return value
        if not self._started:
            await self.start()
            hit, value, token = core.lookup(rk)
            if hit:
                return value
        if token is None:
            return await self._client.get(rk)
        pipe = self._client.pipeline(transaction=False)
        pipe.get(rk)
        pipe.pttl(rk)
        value, pttl = await pipe.execute()
        core.fill(rk, value, pttl, token)
        return value

    async def set(self, key: Any, value: Any, ttl: Optional[float] = None) -> bool:
        await self._ensure()
        core = self._core
        rk = core.rkey(key)
        t = _ttl_arg(ttl, self.config.default_ttl)
        norm = core.normalize(value)
        token = core.begin_write(rk)
        ok = published = False
        try:
            if core.strategy == "eager":
                assert self._pub_lock is not None
                async with self._pub_lock:
                    seq = core.next_seq()
                    pipe = self._client.pipeline(transaction=False)
                    _set_cmd(pipe, rk, value, t)
                    pipe.publish(core.ch_inval, core.invalidate_payload([rk], "eager", seq))
                    await pipe.execute()
                    core.mark_published(seq)
                published = True
                core.sent()
            else:
                await _set_cmd(self._client, rk, value, t)
            ok = True
        finally:
            core.end_write(rk, norm, t, token, ok, published)
        return True

    async def delete(self, key: Any) -> int:
        await self._ensure()
        core = self._core
        rk = core.rkey(key)
        core.begin_write(rk)
        published = False
        try:
            assert self._pub_lock is not None
            async with self._pub_lock:
                seq = core.next_seq()
                pipe = self._client.pipeline(transaction=False)
                pipe.delete(rk)
                pipe.publish(core.ch_inval, core.invalidate_payload([rk], "eager", seq))
                n, _ = await pipe.execute()
                core.mark_published(seq)
            published = True
            core.sent()
        finally:
            core.end_delete(rk, published)
        return int(n)

    async def flush(self) -> None:
        await self._ensure()
        chunks, flush_all = self._core.drain_for_flush()
        await self._publish_invalidations([(c, "batched") for c in chunks], flush_all)

    def clear_local(self) -> None:
        self._core.clear_local()

    # ------------------------------------------------------------------------------------------
    # background work

    async def _final_drain(self) -> None:
        core = self._core
        try:
            out = core.tick()
            out.strategy_update = False
            out.write_report = None
            await self._publish_tick(out)
            chunks, flush_all = core.drain_for_flush()
            await self._publish_invalidations([(c, "batched") for c in chunks], flush_all)
        except Exception as e:
            log.warning("aci-cache %s: final drain at stop failed: %s", self.instance_id, e)
        if core.configured_role == "auto" and core.is_controller:
            try:
                await self._release(keys=[core.lease_key], args=[core.instance_id])
            except Exception as e:
                log.warning("aci-cache %s: releasing the controller lease: %s", self.instance_id, e)

    async def _lease_once(self) -> None:
        core = self._core
        held = await self._lease(keys=[core.lease_key], args=[core.instance_id, core.lease_ms])
        core.set_role(bool(held))

    async def _tick_loop(self) -> None:
        assert self._stop_evt is not None and self._wake is not None
        interval = self.config.tick_interval
        while not self._stop_evt.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self._stop_evt.is_set():
                break
            try:
                await self._tick_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("aci-cache %s: tick failed", self.instance_id)

    async def _tick_once(self) -> None:
        core = self._core
        if core.configured_role == "auto":
            try:
                await self._lease_once()
            except Exception as e:
                log.warning("aci-cache %s: controller lease: %s", self.instance_id, e)
        out = core.tick()
        await self._publish_tick(out)
        for cb, old, new in out.callbacks:
            try:
                r = cb(old, new)
                if asyncio.iscoroutine(r):
                    await r
            except Exception:
                with core.lock:
                    core.stats_c["callback_errors"] += 1
                log.exception("aci-cache %s: on_switch callback failed", self.instance_id)

    async def _publish_invalidations(self, inval: List[Tuple[List[str], str]], flush: bool) -> None:
        if not inval and not flush:
            return
        core = self._core
        assert self._pub_lock is not None
        try:
            async with self._pub_lock:
                pipe = self._client.pipeline(transaction=False)
                last = 0
                for keys, strategy in inval:
                    last = core.next_seq()
                    pipe.publish(core.ch_inval, core.invalidate_payload(keys, strategy, last))
                if flush:
                    last = core.next_seq()
                    pipe.publish(core.ch_inval, core.flush_payload(last))
                await pipe.execute()
                core.mark_published(last)
            core.sent(len(inval) + (1 if flush else 0))
        except Exception as e:
            core.publish_failed(e)

    async def _publish_tick(self, out: TickOutput) -> None:
        core = self._core
        await self._publish_invalidations(out.inval, out.flush)
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
                await pipe.execute()
                core.sent(len(msgs))
            except Exception as e:
                core.publish_failed(e)

    def _new_pubsub(self) -> Any:
        src = self._pubsub_src
        if src is None:
            return self._client.pubsub()
        if hasattr(src, "get_message") and hasattr(src, "subscribe"):
            return src
        return src.pubsub()

    async def _close_pubsub(self, ps: Any, saved_retry: Any) -> None:
        if ps is None:
            return
        try:
            conn = getattr(ps, "connection", None)
            if conn is not None and saved_retry is not None:
                conn.retry = saved_retry
            if hasattr(ps, "aclose"):
                await ps.aclose()
            else:  # pragma: no cover - older redis-py
                await ps.reset()
        except Exception:
            pass

    async def _pubsub_loop(self) -> None:
        assert self._stop_evt is not None and self._subscribed is not None and self._wake is not None
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
                    await ps.subscribe(*core.channels)
                    conn = getattr(ps, "connection", None)
                    if conn is not None and hasattr(conn, "retry"):
                        from redis.asyncio.retry import Retry
                        from redis.backoff import NoBackoff

                        saved_retry = conn.retry
                        conn.retry = Retry(NoBackoff(), 0)
                    confirmed = set()
                    last_ping = time.monotonic()
                    ping_pending_since = None
                msg = await ps.get_message(timeout=0.1)
                if msg is not None:
                    kind = msg.get("type")
                    if kind == "message":
                        if core.on_message(msg.get("channel"), msg.get("data")):
                            self._wake.set()
                    elif kind == "subscribe":
                        ch = msg.get("channel")
                        if isinstance(ch, bytes):
                            ch = ch.decode("utf-8", "replace")
                        if ch in confirmed:
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
                    await ps.ping()
                    last_ping = now
                    if ping_pending_since is None:
                        ping_pending_since = now
                if ping_pending_since is not None and now - ping_pending_since > PONG_TIMEOUT:
                    raise ConnectionError(f"no PONG on the Pub/Sub connection for {PONG_TIMEOUT} s")
            except asyncio.CancelledError:
                break
            except Exception as e:
                if self._stop_evt.is_set():
                    break
                core.link_down()
                with core.lock:
                    core.stats_c["pubsub_errors"] += 1
                if not down_logged:
                    log.warning("aci-cache %s: Pub/Sub error (%s: %s); reconnecting", self.instance_id, type(e).__name__, e)
                    down_logged = True
                await self._close_pubsub(ps, saved_retry)
                ps, saved_retry = None, None
                try:
                    await asyncio.wait_for(self._stop_evt.wait(), backoff)
                except asyncio.TimeoutError:
                    pass
                backoff = min(backoff * 2, 2.0)
        with core.lock:
            core.link_up = False
        await self._close_pubsub(ps, saved_retry)
